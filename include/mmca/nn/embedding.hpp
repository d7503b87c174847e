// mmca/nn/embedding.hpp - token embedding: rows of a [vocab, H] table, widened to float32.
#pragma once

#include "mmca/core/dtype.hpp"
#include "mmca/core/error.hpp"
#include "mmca/core/tensor.hpp"
#include "mmca/nn/linear.hpp"

#include <cstdint>
#include <string>

namespace mmca::nn {

/// out (N, H) = table[ids[n], :] for n < N. Every id is checked against [0, vocab) first.
inline void embedding_forward(const std::int32_t* ids, std::int64_t n, const matrix_ref& table,
                              tensor_ref<float, 2> out) {
    using mmca::detail::to_text;
    const char* where = "mmca::nn::embedding_forward";
    MMCA_CHECK_ARG(!table.empty(), where, "table", "no tensor", "a [vocab, H] matrix");
    MMCA_CHECK_ARG(out.shape[0] == n && out.shape[1] == table.cols && out.inner_contiguous(), where, "out",
                   out.shape_text(), "(" + to_text(n) + ", " + to_text(table.cols) + ")");
    for (std::int64_t i = 0; i < n; ++i)
        MMCA_CHECK_ARG(ids[i] >= 0 && ids[i] < table.rows, where, "ids",
                       "ids[" + to_text(i) + "] = " + to_text(ids[i]),
                       "a token id in [0, " + to_text(table.rows) + ")");
    dispatch_dtype(table.type, [&](auto tag) {
        using T = decltype(tag);
        for (std::int64_t i = 0; i < n; ++i) to_float(table.as<T>() + ids[i] * table.cols, out.ptr(i), table.cols);
    });
}

}  // namespace mmca::nn
