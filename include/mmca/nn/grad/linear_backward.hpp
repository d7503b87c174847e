// mmca/nn/grad/linear_backward.hpp - backward of y = x · Wᵀ + b (nn/linear.hpp), W stored [out, in].
//
//   dx  = dy · W          (N, in)    overwritten, or added to when accumulate_dx is set
//   dW += dyᵀ · x         [out, in]  float32, skipped when the destination is null (a frozen weight)
//   db += Σ_n dy[n, :]    (out)      float32, skipped when null
//
// Weight gradients are always added to what the destination holds, so successive calls (micro-batches)
// accumulate; zero the buffers before the first. The weight keeps its stored dtype (float32, float16,
// bfloat16) and is widened in panels as in the forward:
//   * dx: the in-columns are cut into panels of 128; a panel W[:, c0:c1] is read in place (float32)
//     or widened into a per-thread buffer (out × 128 floats), then one GEMM writes dx[:, c0:c1].
//   * dW: the out-rows are cut into panels of 128; one GEMM adds dy[:, o0:o1]ᵀ · x to dW[o0:o1, :],
//     and db[o0:o1] gets the column sums of dy (taken in double, rows in order).
// Every output element is produced by exactly one work item whose shape does not depend on the
// thread count, so results are bitwise the same for any number of threads.
#pragma once

#include "mmca/core/dtype.hpp"
#include "mmca/core/error.hpp"
#include "mmca/core/tensor.hpp"
#include "mmca/core/threading.hpp"
#include "mmca/nn/linear.hpp"

#include <Eigen/Core>

#include <algorithm>
#include <cstdint>
#include <vector>

namespace mmca::nn {

namespace detail {

/// Columns of W per work item of the dx product.
inline constexpr std::int64_t backward_panel_cols = 128;

template <class T>
void linear_backward_dx_typed(tensor_ref<const float, 2> dy, const T* w, std::int64_t out, std::int64_t in,
                              tensor_ref<float, 2> dx, bool accumulate, int threads) {
    const std::int64_t N = dy.shape[0];
    const std::int64_t blocks = (in + backward_panel_cols - 1) / backward_panel_cols;
    std::vector<std::vector<float>> panels(static_cast<std::size_t>(threads));
    parallel_for(blocks, threads, [&](std::int64_t blk, int thread) {
        const std::int64_t c0 = blk * backward_panel_cols, c1 = std::min(in, c0 + backward_panel_cols);
        const std::int64_t cols = c1 - c0;
        const_strided_map DY(dy.data, N, out, Eigen::OuterStride<>(dy.strides[0]));
        strided_map DX(dx.data + c0, N, cols, Eigen::OuterStride<>(dx.strides[0]));
        const float* wp = nullptr;
        std::int64_t wstride = in;
        if constexpr (std::is_same_v<T, float>) {
            wp = w + c0;
        } else {
            auto& panel = panels[static_cast<std::size_t>(thread)];
            panel.resize(static_cast<std::size_t>(out * cols));
            for (std::int64_t o = 0; o < out; ++o) to_float(w + o * in + c0, panel.data() + o * cols, cols);
            wp = panel.data();
            wstride = cols;
        }
        const_strided_map Wb(wp, out, cols, Eigen::OuterStride<>(wstride));
        if (accumulate)
            DX.noalias() += DY * Wb;
        else
            DX.noalias() = DY * Wb;
    });
}

inline void linear_backward_dw(tensor_ref<const float, 2> x, tensor_ref<const float, 2> dy, std::int64_t out,
                               std::int64_t in, float* dweight, float* dbias, int threads) {
    const std::int64_t N = dy.shape[0];
    const std::int64_t blocks = (out + gemm_panel_rows - 1) / gemm_panel_rows;
    parallel_for(blocks, threads, [&](std::int64_t blk, int) {
        const std::int64_t o0 = blk * gemm_panel_rows, o1 = std::min(out, o0 + gemm_panel_rows);
        if (dweight) {
            const_strided_map DY(dy.data + o0, N, o1 - o0, Eigen::OuterStride<>(dy.strides[0]));
            const_strided_map X(x.data, N, in, Eigen::OuterStride<>(x.strides[0]));
            Eigen::Map<row_major_matrix> DW(dweight + o0 * in, o1 - o0, in);
            DW.noalias() += DY.transpose() * X;
        }
        if (dbias) {
            for (std::int64_t o = o0; o < o1; ++o) {
                double s = 0.0;
                for (std::int64_t n = 0; n < N; ++n) s += dy(n, o);
                dbias[o] += static_cast<float>(s);
            }
        }
    });
}

}  // namespace detail

/// Backward of linear_forward. dy (N, out); x (N, in) is needed only when dweight is given. dx
/// (N, in) may be empty (no input gradient wanted); it must not overlap dy or x. dweight [out, in]
/// and dbias (out) are float32 accumulators, or null for a frozen parameter.
inline void linear_backward(tensor_ref<const float, 2> x, const matrix_ref& weight, tensor_ref<const float, 2> dy,
                            tensor_ref<float, 2> dx, float* dweight, float* dbias, int num_threads = 0,
                            bool accumulate_dx = false) {
    using mmca::detail::to_text;
    const char* where = "mmca::nn::linear_backward";
    MMCA_CHECK_ARG(!weight.empty(), where, "weight", "no tensor", "an [out, in] matrix");
    MMCA_CHECK_ARG(!dy.empty() || dy.numel() == 0, where, "dy", "no tensor", "an (N, out) float32 tensor");
    MMCA_CHECK_ARG(dy.shape[1] == weight.rows && dy.inner_contiguous(), where, "dy", dy.shape_text(),
                   "(N, " + to_text(weight.rows) + ") with contiguous rows (weight is " + weight.shape_text() + ")");
    const std::int64_t N = dy.shape[0], out = weight.rows, in = weight.cols;
    if (!dx.empty())
        MMCA_CHECK_ARG(dx.shape[0] == N && dx.shape[1] == in && dx.inner_contiguous(), where, "dx", dx.shape_text(),
                       "(" + to_text(N) + ", " + to_text(in) + ") with contiguous rows");
    if (dweight)
        MMCA_CHECK_ARG(!x.empty() && x.shape[0] == N && x.shape[1] == in && x.inner_contiguous(), where, "x",
                       x.empty() ? std::string("no tensor") : x.shape_text(),
                       "(" + to_text(N) + ", " + to_text(in) + ") with contiguous rows (needed for the weight gradient)");
    if (N == 0) return;
    detail::eigen_products_on_calling_thread();
    const double work = double(N) * double(out) * double(in);
    const int threads = work < double(1 << 18) ? 1 : resolve_num_threads(num_threads);
    if (!dx.empty())
        dispatch_dtype(weight.type, [&](auto tag) {
            using T = decltype(tag);
            detail::linear_backward_dx_typed<T>(dy, weight.as<T>(), out, in, dx, accumulate_dx, threads);
        });
    if (dweight || dbias) detail::linear_backward_dw(x, dy, out, in, dweight, dbias, threads);
}

}  // namespace mmca::nn
