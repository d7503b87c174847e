// mmca/nn/grad/dense_attention_backward.hpp - backward of dense_attention (nn/dense_attention.hpp).
//
// For each head, with P = softmax_rows(scale · Q Kᵀ) recomputed exactly as the forward does it:
//   dV = Pᵀ dO,   dP = dO Vᵀ,   dS = P ⊙ (dP - rowsum(dP ⊙ P)),
//   dQ = scale · dS K,   dK = scale · dSᵀ Q
// Gradients are written (not added) into head matrices of the same layouts as the inputs, so a
// fused qkv buffer's gradient comes back in the same fused layout. One work item per head walks
// the query blocks in order (dK, dV are sums over query rows), so results do not depend on the
// thread count.
#pragma once

#include "mmca/core/error.hpp"
#include "mmca/core/tensor.hpp"
#include "mmca/core/threading.hpp"
#include "mmca/nn/dense_attention.hpp"
#include "mmca/nn/linear.hpp"

#include <Eigen/Core>

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

namespace mmca::nn {

/// A writable head_matrix (the gradient of one).
struct head_matrix_grad {
    float* data = nullptr;
    std::int64_t rows = 0;
    std::int64_t row_stride = 0;
    std::int64_t head_stride = 0;
    std::int64_t offset = 0;
    float* head(std::int64_t h) const { return data + offset + h * head_stride; }
    head_matrix view() const { return head_matrix{data, rows, row_stride, head_stride, offset}; }
};

/// Backward of dense_attention(q, k, v, heads, head_dim, scale, out): dout (Lq, heads·D) is the
/// gradient of out; dq, dk, dv receive the gradients of q, k, v (overwritten, head columns only).
/// The gradients must not overlap q, k, v or dout.
inline void dense_attention_backward(const head_matrix& q, const head_matrix& k, const head_matrix& v,
                                     std::int64_t heads, std::int64_t head_dim, float scale,
                                     tensor_ref<const float, 2> dout, const head_matrix_grad& dq,
                                     const head_matrix_grad& dk, const head_matrix_grad& dv, int num_threads = 0) {
    using mmca::detail::to_text;
    const char* where = "mmca::nn::dense_attention_backward";
    MMCA_CHECK_ARG(heads > 0 && head_dim > 0, where, "heads", to_text(heads) + " heads of " + to_text(head_dim),
                   "a positive number of heads and head size");
    const head_matrix views[6] = {q, k, v, dq.view(), dk.view(), dv.view()};
    const char* names[6] = {"q", "k", "v", "dq", "dk", "dv"};
    for (int i = 0; i < 6; ++i) {
        const head_matrix& m = views[i];
        MMCA_CHECK_ARG(m.data != nullptr && m.rows > 0, where, names[i], "an empty matrix", "at least one row");
        MMCA_CHECK_ARG(m.offset >= 0 && m.head_stride >= head_dim &&
                           m.offset + (heads - 1) * m.head_stride + head_dim <= m.row_stride,
                       where, names[i],
                       "row stride " + to_text(m.row_stride) + ", head stride " + to_text(m.head_stride) +
                           ", offset " + to_text(m.offset),
                       to_text(heads) + " heads of " + to_text(head_dim) + " columns inside each row");
    }
    MMCA_CHECK_ARG(v.rows == k.rows, where, "v", to_text(v.rows) + " rows", "as many rows as k (" + to_text(k.rows) + ")");
    MMCA_CHECK_ARG(dq.rows == q.rows && dk.rows == k.rows && dv.rows == v.rows, where, "dq",
                   "gradients of " + to_text(dq.rows) + ", " + to_text(dk.rows) + ", " + to_text(dv.rows) + " rows",
                   "the rows of q, k, v (" + to_text(q.rows) + ", " + to_text(k.rows) + ", " + to_text(v.rows) + ")");
    MMCA_CHECK_ARG(dout.shape[0] == q.rows && dout.shape[1] == heads * head_dim && dout.inner_contiguous(), where,
                   "dout", dout.shape_text(),
                   "(" + to_text(q.rows) + ", " + to_text(heads * head_dim) + ") with contiguous rows");

    detail::eigen_products_on_calling_thread();
    using matrix = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
    using cmap = Eigen::Map<const matrix, 0, Eigen::OuterStride<>>;
    using map = Eigen::Map<matrix, 0, Eigen::OuterStride<>>;
    const std::int64_t Lq = q.rows, Lk = k.rows, D = head_dim;
    const std::int64_t qb = dense_attention_query_block;
    const double work = double(heads) * double(Lq) * double(Lk) * double(D);
    const int threads = work < double(1 << 16) ? 1 : resolve_num_threads(num_threads);
    struct buffers {
        matrix P, dP;
    };
    std::vector<buffers> bufs(static_cast<std::size_t>(threads));
    parallel_for(heads, threads, [&](std::int64_t h, int thread) {
        cmap K(k.head(h), Lk, D, Eigen::OuterStride<>(k.row_stride));
        cmap V(v.head(h), Lk, D, Eigen::OuterStride<>(v.row_stride));
        map dK(dk.head(h), Lk, D, Eigen::OuterStride<>(dk.row_stride));
        map dV(dv.head(h), Lk, D, Eigen::OuterStride<>(dv.row_stride));
        dK.setZero();
        dV.setZero();
        buffers& b = bufs[static_cast<std::size_t>(thread)];
        for (std::int64_t i0 = 0; i0 < Lq; i0 += qb) {
            const std::int64_t rows = std::min(qb, Lq - i0);
            cmap Q(q.head(h) + i0 * q.row_stride, rows, D, Eigen::OuterStride<>(q.row_stride));
            cmap dO(dout.ptr(i0) + h * D, rows, D, Eigen::OuterStride<>(dout.strides[0]));
            map dQ(dq.head(h) + i0 * dq.row_stride, rows, D, Eigen::OuterStride<>(dq.row_stride));
            b.P.resize(rows, Lk);
            b.P.noalias() = (Q * scale) * K.transpose();
            for (std::int64_t r = 0; r < rows; ++r) {
                auto row = b.P.row(r).array();
                row = (row - row.maxCoeff()).exp();
                row /= row.sum();
            }
            dV.noalias() += b.P.transpose() * dO;
            b.dP.resize(rows, Lk);
            b.dP.noalias() = dO * V.transpose();
            for (std::int64_t r = 0; r < rows; ++r) {
                const float dot = b.dP.row(r).dot(b.P.row(r));
                b.dP.row(r).array() = b.P.row(r).array() * (b.dP.row(r).array() - dot);
            }
            dQ.noalias() = (b.dP * K) * scale;
            dK.noalias() += (b.dP.transpose() * Q) * scale;
        }
    });
}

}  // namespace mmca::nn
