// mmca/vision/attention_pool.hpp - learned-query cross-attention pooling of image tokens.
//
//   kv = LN_kv(kv_proj(x))            x (T, Dv) image tokens → (T, E)
//   q  = LN_q(query) + q_pos          (Q, E) learned queries (+ fixed positions)
//   k  = kv + k_pos,  v = kv          (k_pos: positions of the T input tokens; v gets none)
//   out = out_proj(MHA(q·W_qᵀ + b_q, k·W_kᵀ + b_k, v·W_vᵀ + b_v))   heads of E/heads, softmax scale 1/sqrt(E/heads)
//
// W_q | W_k | W_v are the three row blocks of one [3E, E] in_proj matrix (torch.nn.MultiheadAttention).
// This is QWen-VL's resampler ("attn_pool": 256 queries, 32 heads of 128, no kv_proj bias, q_pos
// the 16×16 sin-cos table, k_pos its bicubic resize to 32×32) and the attention part of the
// `perceiver` projector. Each of the N images of a call is pooled independently; the queries'
// projection is shared by all of them.
#pragma once

#include "mmca/core/error.hpp"
#include "mmca/core/tensor.hpp"
#include "mmca/core/threading.hpp"
#include "mmca/nn/dense_attention.hpp"
#include "mmca/nn/layernorm.hpp"
#include "mmca/nn/linear.hpp"
#include "mmca/vision/encoder_layer.hpp"

#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

namespace mmca::vision {

struct attention_pool_config {
    std::int64_t queries = 0;  // Q
    std::int64_t kv_dim = 0;   // Dv, width of the input tokens
    std::int64_t width = 0;    // E
    std::int64_t heads = 0;    // E / heads = head size
    float eps = 1e-6f;         // LN_q / LN_kv eps

    std::int64_t head_dim() const { return heads > 0 ? width / heads : 0; }
    void validate(const char* where) const {
        using mmca::detail::to_text;
        MMCA_CHECK_ARG(queries > 0 && kv_dim > 0, where, "config",
                       to_text(queries) + " queries over tokens of width " + to_text(kv_dim),
                       "positive numbers");
        MMCA_CHECK_ARG(width > 0 && heads > 0 && width % heads == 0, where, "config",
                       "width " + to_text(width) + " with " + to_text(heads) + " heads",
                       "a positive width divisible by the number of heads");
        MMCA_CHECK_ARG(eps > 0.0f && std::isfinite(eps), where, "config", "eps " + to_text(eps), "a positive number");
    }
};

struct attention_pool_weights {
    std::vector<float> query;                 // (Q, E) learned queries
    nn::matrix_ref kv_proj;                   // [E, Dv]
    std::vector<float> kv_proj_bias;          // (E) or empty
    std::vector<float> ln_q_w, ln_q_b;        // (E)
    std::vector<float> ln_kv_w, ln_kv_b;      // (E)
    nn::matrix_ref in_proj;                   // [3E, E], rows q | k | v
    std::vector<float> in_proj_bias;          // (3E) or empty
    nn::matrix_ref out_proj;                  // [E, E]
    std::vector<float> out_proj_bias;         // (E) or empty
    std::vector<float> q_pos;                 // (Q, E) or empty
    std::vector<float> k_pos;                 // (T, E) or empty (T fixed by the table when present)
};

struct attention_pool_scratch {
    std::vector<float> q, qp, kv, k, kp, vp, attn;
};

/// Checks that w holds every tensor of a pool of shape `config`.
inline void check_attention_pool(const attention_pool_config& config, const attention_pool_weights& w,
                                 const char* where = "mmca::vision::attention_pool_forward") {
    config.validate(where);
    const std::int64_t Q = config.queries, E = config.width;
    detail::check_vector(w.query, Q * E, false, where, "query");
    detail::check_matrix(w.kv_proj, E, config.kv_dim, where, "kv_proj weight");
    detail::check_vector(w.kv_proj_bias, E, true, where, "kv_proj bias");
    detail::check_vector(w.ln_q_w, E, false, where, "ln_q weight");
    detail::check_vector(w.ln_q_b, E, false, where, "ln_q bias");
    detail::check_vector(w.ln_kv_w, E, false, where, "ln_kv weight");
    detail::check_vector(w.ln_kv_b, E, false, where, "ln_kv bias");
    detail::check_matrix(w.in_proj, 3 * E, E, where, "in_proj weight");
    detail::check_vector(w.in_proj_bias, 3 * E, true, where, "in_proj bias");
    detail::check_matrix(w.out_proj, E, E, where, "out_proj weight");
    detail::check_vector(w.out_proj_bias, E, true, where, "out_proj bias");
    detail::check_vector(w.q_pos, Q * E, true, where, "q_pos");
    MMCA_CHECK_ARG(w.k_pos.size() % static_cast<std::size_t>(E) == 0, where, "k_pos",
                   mmca::detail::to_text(w.k_pos.size()) + " values", "none or (T, " + mmca::detail::to_text(E) + ")");
}

namespace detail {

/// Rows [r0, r0 + rows) of a [rows_total, cols] matrix, as a matrix of their own.
inline nn::matrix_ref row_block(const nn::matrix_ref& m, std::int64_t r0, std::int64_t rows) {
    return nn::matrix_ref{m.type, static_cast<const char*>(m.data) + r0 * m.cols * nn::dtype_size(m.type), rows, m.cols};
}

}  // namespace detail

/// out (N, Q, E) = pooled x (N, T, Dv). The weights are checked by the caller (check_attention_pool).
inline void attention_pool_forward(tensor_ref<const float, 3> x, const attention_pool_config& config,
                                   const attention_pool_weights& w, tensor_ref<float, 3> out,
                                   attention_pool_scratch& scratch, int num_threads = 0) {
    using mmca::detail::to_text;
    const char* where = "mmca::vision::attention_pool_forward";
    const std::int64_t N = x.shape[0], T = x.shape[1], Q = config.queries, E = config.width, D = config.head_dim();
    MMCA_CHECK_ARG(x.shape[2] == config.kv_dim && x.contiguous(), where, "x", x.shape_text(),
                   "a contiguous (N, T, " + to_text(config.kv_dim) + ") tensor");
    if (!w.k_pos.empty())
        MMCA_CHECK_ARG(static_cast<std::int64_t>(w.k_pos.size()) == T * E, where, "x", x.shape_text(),
                       "(N, " + to_text(static_cast<std::int64_t>(w.k_pos.size()) / E) +
                           ", Dv): as many tokens as the key position table has rows");
    MMCA_CHECK_ARG(out.shape[0] == N && out.shape[1] == Q && out.shape[2] == E && out.contiguous(), where, "out",
                   out.shape_text(), "a contiguous (" + to_text(N) + ", " + to_text(Q) + ", " + to_text(E) + ") tensor");
    if (N == 0) return;
    MMCA_CHECK_ARG(T > 0, where, "x", x.shape_text(), "at least one token per image");
    const std::int64_t R = N * T;
    const float* no_bias = nullptr;
    auto bias_at = [&](std::int64_t offset) { return w.in_proj_bias.empty() ? no_bias : w.in_proj_bias.data() + offset; };

    // Queries: shared by every image.
    scratch.q.resize(static_cast<std::size_t>(Q * E));
    scratch.qp.resize(static_cast<std::size_t>(Q * E));
    tensor_ref<float, 2> q(scratch.q.data(), {Q, E}), qp(scratch.qp.data(), {Q, E});
    nn::layernorm_forward(tensor_ref<const float, 2>(w.query.data(), {Q, E}), w.ln_q_w.data(), w.ln_q_b.data(),
                          config.eps, q, num_threads);
    if (!w.q_pos.empty())
        for (std::int64_t i = 0; i < Q * E; ++i) q.data[i] += w.q_pos[static_cast<std::size_t>(i)];
    nn::linear_forward(q, detail::row_block(w.in_proj, 0, E), bias_at(0), qp, num_threads);

    // Keys and values of all images at once.
    scratch.kv.resize(static_cast<std::size_t>(R * E));
    scratch.k.resize(static_cast<std::size_t>(R * E));
    scratch.kp.resize(static_cast<std::size_t>(R * E));
    scratch.vp.resize(static_cast<std::size_t>(R * E));
    tensor_ref<float, 2> kv(scratch.kv.data(), {R, E}), k(scratch.k.data(), {R, E});
    tensor_ref<float, 2> kp(scratch.kp.data(), {R, E}), vp(scratch.vp.data(), {R, E});
    nn::linear_forward(tensor_ref<const float, 2>(x.data, {R, config.kv_dim}), w.kv_proj,
                       detail::bias_or_null(w.kv_proj_bias), kv, num_threads);
    nn::layernorm_forward(kv, w.ln_kv_w.data(), w.ln_kv_b.data(), config.eps, kv, num_threads);
    for (std::int64_t r = 0; r < R; ++r) {
        const float* src = kv.ptr(r);
        float* dst = k.ptr(r);
        const float* pos = w.k_pos.empty() ? nullptr : w.k_pos.data() + (r % T) * E;
        for (std::int64_t i = 0; i < E; ++i) dst[i] = src[i] + (pos ? pos[i] : 0.0f);
    }
    nn::linear_forward(k, detail::row_block(w.in_proj, E, E), bias_at(E), kp, num_threads);
    nn::linear_forward(kv, detail::row_block(w.in_proj, 2 * E, E), bias_at(2 * E), vp, num_threads);

    // Attention per image, then the output projection of all images at once.
    scratch.attn.resize(static_cast<std::size_t>(N * Q * E));
    tensor_ref<float, 2> attn(scratch.attn.data(), {N * Q, E});
    const float scale = 1.0f / std::sqrt(static_cast<float>(D));
    const nn::head_matrix hq{qp.data, Q, E, D, 0};
    for (std::int64_t n = 0; n < N; ++n) {
        const nn::head_matrix hk{kp.ptr(n * T), T, E, D, 0}, hv{vp.ptr(n * T), T, E, D, 0};
        nn::dense_attention(hq, hk, hv, config.heads, D, scale, tensor_ref<float, 2>(attn.ptr(n * Q), {Q, E}),
                            num_threads);
    }
    nn::linear_forward(attn, w.out_proj, detail::bias_or_null(w.out_proj_bias),
                       tensor_ref<float, 2>(out.data, {N * Q, E}), num_threads);
}

}  // namespace mmca::vision
