// mmca/nn/dense_attention.hpp - bidirectional multi-head attention without a mask (vision side).
//
//   out[i, h·D:(h+1)·D] = Σ_j softmax_j(scale · q_h[i] · k_h[j]) · v_h[j]
//
// for every query row i and head h, each query attending to every key. This is the attention of
// the ViT blocks (1024 patch tokens), of the resampler / perceiver (256 learned queries over the
// image tokens) and of CLIP. Heads are addressed in place inside wider matrices: head h of a
// head_matrix occupies columns [h·head_stride + offset, … + D) of each row, so a fused,
// per-head-interleaved qkv projection (QWen-VL: q, k, v of a head side by side) or separate q/k/v
// projections are both read without reshuffling.
//
// The work is cut into (head, block of query rows) items; each computes its score block
// S = Q_h Kᵀ_h with Eigen's GEMM into a per-thread buffer (query_block × Lk floats), takes the
// row softmax in float32 (max-subtracted, Eigen's vectorised exp) and multiplies by V_h. No
// (Lq × Lk) matrix larger than one query block exists at any time.
#pragma once

#include "mmca/core/error.hpp"
#include "mmca/core/tensor.hpp"
#include "mmca/core/threading.hpp"
#include "mmca/nn/linear.hpp"

#include <Eigen/Core>

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

namespace mmca::nn {

/// Heads laid side by side in a row-major float32 matrix of `rows` rows.
struct head_matrix {
    const float* data = nullptr;
    std::int64_t rows = 0;        // tokens
    std::int64_t row_stride = 0;  // floats between consecutive rows
    std::int64_t head_stride = 0; // floats between head h and head h+1 within a row
    std::int64_t offset = 0;      // column of head 0
    const float* head(std::int64_t h) const { return data + offset + h * head_stride; }
};

/// Query rows per work item of dense_attention.
inline constexpr std::int64_t dense_attention_query_block = 128;

/// out (Lq, heads·D) row-major (row stride out.strides[0]) = multi-head attention of q over k/v.
/// scale is usually 1/sqrt(D). out must not overlap q, k or v.
inline void dense_attention(const head_matrix& q, const head_matrix& k, const head_matrix& v, std::int64_t heads,
                            std::int64_t head_dim, float scale, tensor_ref<float, 2> out, int num_threads = 0) {
    using mmca::detail::to_text;
    const char* where = "mmca::nn::dense_attention";
    MMCA_CHECK_ARG(heads > 0 && head_dim > 0, where, "heads", to_text(heads) + " heads of " + to_text(head_dim),
                   "a positive number of heads and head size");
    for (const auto* m : {&q, &k, &v}) {
        const char* name = m == &q ? "q" : (m == &k ? "k" : "v");
        MMCA_CHECK_ARG(m->data != nullptr && m->rows > 0, where, name, "an empty matrix", "at least one row");
        MMCA_CHECK_ARG(m->offset >= 0 && m->head_stride >= head_dim &&
                           m->offset + (heads - 1) * m->head_stride + head_dim <= m->row_stride,
                       where, name,
                       "row stride " + to_text(m->row_stride) + ", head stride " + to_text(m->head_stride) +
                           ", offset " + to_text(m->offset),
                       to_text(heads) + " heads of " + to_text(head_dim) + " columns inside each row");
    }
    MMCA_CHECK_ARG(v.rows == k.rows, where, "v", to_text(v.rows) + " rows", "as many rows as k (" + to_text(k.rows) + ")");
    MMCA_CHECK_ARG(out.shape[0] == q.rows && out.shape[1] == heads * head_dim && out.inner_contiguous(), where, "out",
                   out.shape_text(), "(" + to_text(q.rows) + ", " + to_text(heads * head_dim) + ") with contiguous rows");

    detail::eigen_products_on_calling_thread();
    using matrix = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
    using cmap = Eigen::Map<const matrix, 0, Eigen::OuterStride<>>;
    using map = Eigen::Map<matrix, 0, Eigen::OuterStride<>>;
    const std::int64_t Lq = q.rows, Lk = k.rows, D = head_dim;
    const std::int64_t qb = dense_attention_query_block;
    const std::int64_t blocks = (Lq + qb - 1) / qb;
    const double work = double(heads) * double(Lq) * double(Lk) * double(D);
    const int threads = work < double(1 << 18) ? 1 : resolve_num_threads(num_threads);
    std::vector<matrix> scores(static_cast<std::size_t>(threads));
    parallel_for(heads * blocks, threads, [&](std::int64_t item, int thread) {
        const std::int64_t h = item / blocks, i0 = (item % blocks) * qb, rows = std::min(qb, Lq - i0);
        cmap Q(q.head(h) + i0 * q.row_stride, rows, D, Eigen::OuterStride<>(q.row_stride));
        cmap K(k.head(h), Lk, D, Eigen::OuterStride<>(k.row_stride));
        cmap V(v.head(h), Lk, D, Eigen::OuterStride<>(v.row_stride));
        matrix& S = scores[static_cast<std::size_t>(thread)];
        S.resize(rows, Lk);
        S.noalias() = (Q * scale) * K.transpose();
        for (std::int64_t r = 0; r < rows; ++r) {
            auto row = S.row(r).array();
            row = (row - row.maxCoeff()).exp();
            row /= row.sum();
        }
        map O(out.ptr(i0) + h * D, rows, D, Eigen::OuterStride<>(out.strides[0]));
        O.noalias() = S * V;
    });
}

}  // namespace mmca::nn
