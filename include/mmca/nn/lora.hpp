// mmca/nn/lora.hpp - a low-rank adapter (LoRA) on a frozen linear layer y = x · Wᵀ.
//
//   y = x · Wᵀ + s · (x · Aᵀ) · Bᵀ,   s = alpha / r
//
// W [out, in] stays frozen in its stored dtype; A (r, in) and B (out, r) are trainable float32.
// By the usual convention B starts at zero (the adapted layer starts equal to the frozen one) and
// A is drawn at random (see language/lora.hpp for the seeded initialisation).
//
//   lora_forward:  y += s · (x Aᵀ) Bᵀ                        (the frozen product is linear_forward's)
//   lora_backward: t = x Aᵀ,  dt = s · dy B
//                  dB += s · dyᵀ t,  dA += dtᵀ x,  dx += dt A
//   lora_merge:    W' = W + s · B A  as a new float32 [out, in] matrix
//
// The products are Eigen GEMMs on the calling thread (r is small); results do not depend on the
// thread count.
#pragma once

#include "mmca/core/dtype.hpp"
#include "mmca/core/error.hpp"
#include "mmca/core/tensor.hpp"
#include "mmca/nn/linear.hpp"

#include <Eigen/Core>

#include <cstdint>
#include <vector>

namespace mmca::nn {

/// One adapter: A (rank, in) and B (out, rank), float32, row-major.
struct lora_adapter {
    std::int64_t rank = 0, in = 0, out = 0;
    std::vector<float> a;  // (rank, in)
    std::vector<float> b;  // (out, rank)
    bool empty() const { return rank == 0; }
};

namespace detail {

inline void check_lora_shapes(const char* where, const lora_adapter& ad, std::int64_t in, std::int64_t out) {
    using mmca::detail::to_text;
    MMCA_CHECK_ARG(ad.rank > 0 && ad.in == in && ad.out == out, where, "adapter",
                   "rank " + to_text(ad.rank) + ", in " + to_text(ad.in) + ", out " + to_text(ad.out),
                   "rank > 0, in " + to_text(in) + ", out " + to_text(out));
    MMCA_CHECK_ARG(static_cast<std::int64_t>(ad.a.size()) == ad.rank * in &&
                       static_cast<std::int64_t>(ad.b.size()) == out * ad.rank,
                   where, "adapter", "A of " + to_text(ad.a.size()) + " and B of " + to_text(ad.b.size()) + " values",
                   "A (" + to_text(ad.rank) + ", " + to_text(in) + ") and B (" + to_text(out) + ", " + to_text(ad.rank) + ")");
}

}  // namespace detail

/// y (N, out) += scale · (x Aᵀ) Bᵀ for x (N, in).
inline void lora_forward(tensor_ref<const float, 2> x, const lora_adapter& ad, float scale, tensor_ref<float, 2> y) {
    const char* where = "mmca::nn::lora_forward";
    detail::check_lora_shapes(where, ad, x.shape[1], y.shape[1]);
    MMCA_CHECK_ARG(x.shape[0] == y.shape[0] && x.inner_contiguous() && y.inner_contiguous(), where, "y", y.shape_text(),
                   "as many contiguous rows as x " + x.shape_text());
    const std::int64_t N = x.shape[0], r = ad.rank;
    if (N == 0) return;
    detail::eigen_products_on_calling_thread();
    detail::const_strided_map X(x.data, N, ad.in, Eigen::OuterStride<>(x.strides[0]));
    detail::strided_map Y(y.data, N, ad.out, Eigen::OuterStride<>(y.strides[0]));
    Eigen::Map<const detail::row_major_matrix> A(ad.a.data(), r, ad.in), B(ad.b.data(), ad.out, r);
    const detail::row_major_matrix t = X * A.transpose();
    Y.noalias() += (scale * t) * B.transpose();
}

/// Backward of lora_forward: dx (N, in) += dt A (skipped when empty); da (rank, in) and db
/// (out, rank) float32 accumulators (null: not wanted).
inline void lora_backward(tensor_ref<const float, 2> x, const lora_adapter& ad, float scale,
                          tensor_ref<const float, 2> dy, tensor_ref<float, 2> dx, float* da, float* db) {
    const char* where = "mmca::nn::lora_backward";
    detail::check_lora_shapes(where, ad, ad.in, dy.shape[1]);
    MMCA_CHECK_ARG(dy.inner_contiguous(), where, "dy", dy.shape_text(), "contiguous rows");
    const std::int64_t N = dy.shape[0], r = ad.rank;
    if (!dx.empty())
        MMCA_CHECK_ARG(dx.shape[0] == N && dx.shape[1] == ad.in && dx.inner_contiguous(), where, "dx", dx.shape_text(),
                       "(" + mmca::detail::to_text(N) + ", " + mmca::detail::to_text(ad.in) + ") with contiguous rows");
    if (da || db)
        MMCA_CHECK_ARG(!x.empty() && x.shape[0] == N && x.shape[1] == ad.in && x.inner_contiguous(), where, "x",
                       x.empty() ? std::string("no tensor") : x.shape_text(),
                       "(" + mmca::detail::to_text(N) + ", " + mmca::detail::to_text(ad.in) + ") (needed for dA, dB)");
    if (N == 0) return;
    detail::eigen_products_on_calling_thread();
    detail::const_strided_map DY(dy.data, N, ad.out, Eigen::OuterStride<>(dy.strides[0]));
    Eigen::Map<const detail::row_major_matrix> A(ad.a.data(), r, ad.in), B(ad.b.data(), ad.out, r);
    const detail::row_major_matrix dt = scale * (DY * B);  // (N, r)
    if (db) {
        detail::const_strided_map X(x.data, N, ad.in, Eigen::OuterStride<>(x.strides[0]));
        const detail::row_major_matrix t = X * A.transpose();
        Eigen::Map<detail::row_major_matrix> DB(db, ad.out, r);
        DB.noalias() += scale * (DY.transpose() * t);
    }
    if (da) {
        detail::const_strided_map X(x.data, N, ad.in, Eigen::OuterStride<>(x.strides[0]));
        Eigen::Map<detail::row_major_matrix> DA(da, r, ad.in);
        DA.noalias() += dt.transpose() * X;
    }
    if (!dx.empty()) {
        detail::strided_map DX(dx.data, N, ad.in, Eigen::OuterStride<>(dx.strides[0]));
        DX.noalias() += dt * A;
    }
}

/// W + scale · B A as a new float32 [out, in] matrix (W in any storage dtype).
inline std::vector<float> lora_merge(const matrix_ref& w, const lora_adapter& ad, float scale) {
    const char* where = "mmca::nn::lora_merge";
    MMCA_CHECK_ARG(!w.empty(), where, "weight", "no tensor", "an [out, in] matrix");
    detail::check_lora_shapes(where, ad, w.cols, w.rows);
    std::vector<float> out(static_cast<std::size_t>(w.rows * w.cols));
    dispatch_dtype(w.type, [&](auto tag) {
        using T = decltype(tag);
        to_float(w.as<T>(), out.data(), w.rows * w.cols);
    });
    detail::eigen_products_on_calling_thread();
    Eigen::Map<detail::row_major_matrix> W(out.data(), w.rows, w.cols);
    Eigen::Map<const detail::row_major_matrix> A(ad.a.data(), ad.rank, ad.in), B(ad.b.data(), ad.out, ad.rank);
    W.noalias() += scale * (B * A);
    return out;
}

}  // namespace mmca::nn
