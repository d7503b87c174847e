// mmca/nn/grad/embedding_backward.hpp - backward of embedding_forward (nn/embedding.hpp).
//
//   dtable[ids[n], :] += dy[n, :]   for n in order
//
// A scatter-add into the rows of a trainable float32 table [vocab, H]. Repeated ids add up in the
// order of n, whatever the thread count: the work is cut into column chunks, each walking all n.
#pragma once

#include "mmca/core/error.hpp"
#include "mmca/core/tensor.hpp"
#include "mmca/core/threading.hpp"

#include <algorithm>
#include <cstdint>
#include <string>

namespace mmca::nn {

/// dtable (vocab, H) += scatter of dy (n, H) into the rows ids[0..n). Every id is checked first.
inline void embedding_backward(const std::int32_t* ids, std::int64_t n, tensor_ref<const float, 2> dy,
                               tensor_ref<float, 2> dtable, int num_threads = 0) {
    using mmca::detail::to_text;
    const char* where = "mmca::nn::embedding_backward";
    MMCA_CHECK_ARG(!dtable.empty() && dtable.inner_contiguous(), where, "dtable", "no tensor",
                   "a (vocab, H) float32 tensor with contiguous rows");
    const std::int64_t V = dtable.shape[0], H = dtable.shape[1];
    MMCA_CHECK_ARG(dy.shape[0] == n && dy.shape[1] == H && dy.inner_contiguous(), where, "dy", dy.shape_text(),
                   "(" + to_text(n) + ", " + to_text(H) + ") with contiguous rows");
    for (std::int64_t i = 0; i < n; ++i)
        MMCA_CHECK_ARG(ids[i] >= 0 && ids[i] < V, where, "ids", "ids[" + to_text(i) + "] = " + to_text(ids[i]),
                       "a token id in [0, " + to_text(V) + ")");
    constexpr std::int64_t chunk = 256;
    const std::int64_t chunks = (H + chunk - 1) / chunk;
    parallel_for(chunks, n * H >= (1 << 16) ? num_threads : 1, [&](std::int64_t c, int) {
        const std::int64_t i0 = c * chunk, i1 = std::min(H, i0 + chunk);
        for (std::int64_t r = 0; r < n; ++r) {
            const float* src = dy.ptr(r);
            float* dst = dtable.ptr(ids[r]);
            for (std::int64_t i = i0; i < i1; ++i) dst[i] += src[i];
        }
    });
}

}  // namespace mmca::nn
