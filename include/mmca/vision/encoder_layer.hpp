// mmca/vision/encoder_layer.hpp - the pre-LN transformer encoder layer of the vision side.
//
//   x += out(Attn(LN1(x)));   x += fc2(act(fc1(LN2(x))))
//
// with bidirectional multi-head attention inside each sequence (scale 1/sqrt(W/heads)). One
// implementation serves the 48 blocks of the QWen-VL ViT (fused qkv, per-head interleaved,
// exact GELU, eps 1e-6), the layers of HF CLIP (separate q/k/v, quick-GELU, eps 1e-5) and the
// `vit` projector. The q/k/v projections of a call land in one (rows, 3W) buffer and the attention
// reads its heads in place from there, whatever the layout:
//   separate                     q, k, v matrices [W, W] (+ biases), written to columns [0,W), [W,2W), [2W,3W)
//   fused_blocked                one [3W, W] matrix, rows q | k | v (torch.nn.MultiheadAttention)
//   fused_interleaved_per_head   one [3W, W] matrix, rows h·3D + [0,D) q, +[D,2D) k, +[2D,3D) v (QWen-VL)
// Matrices keep their stored dtype (see nn/linear.hpp); norms and biases are float32.
#pragma once

#include "mmca/core/error.hpp"
#include "mmca/core/tensor.hpp"
#include "mmca/core/threading.hpp"
#include "mmca/nn/activation.hpp"
#include "mmca/nn/dense_attention.hpp"
#include "mmca/nn/layernorm.hpp"
#include "mmca/nn/linear.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

namespace mmca::vision {

struct encoder_layer_config {
    std::int64_t width = 0;      // W
    std::int64_t heads = 0;      // W / heads = head size
    std::int64_t mlp_width = 0;  // fc1 output
    float eps = 1e-6f;           // LayerNorm eps
    nn::activation act = nn::activation::gelu_erf;

    std::int64_t head_dim() const { return heads > 0 ? width / heads : 0; }
    void validate(const char* where) const {
        using mmca::detail::to_text;
        MMCA_CHECK_ARG(width > 0 && heads > 0 && width % heads == 0, where, "config",
                       "width " + to_text(width) + " with " + to_text(heads) + " heads",
                       "a positive width divisible by the number of heads");
        MMCA_CHECK_ARG(mlp_width > 0, where, "config", "mlp_width " + to_text(mlp_width), "a positive number");
        MMCA_CHECK_ARG(eps > 0.0f && std::isfinite(eps), where, "config", "eps " + to_text(eps), "a positive number");
    }
};

enum class qkv_layout : std::uint8_t { separate, fused_blocked, fused_interleaved_per_head };

/// Where the heads of q, k and v sit in a row of the (rows, 3W) qkv buffer of an encoder layer:
/// head h of q starts at column q_offset + h · head_stride (likewise k, v).
struct qkv_columns {
    std::int64_t q_offset, k_offset, v_offset, head_stride;
};

inline qkv_columns qkv_columns_of(qkv_layout layout, std::int64_t width, std::int64_t head_dim) {
    if (layout == qkv_layout::fused_interleaved_per_head) return {0, head_dim, 2 * head_dim, 3 * head_dim};
    return {0, width, 2 * width, head_dim};  // q | k | v blocks: separate matrices or torch's fused one
}

struct encoder_layer_weights {
    std::vector<float> ln1_w, ln1_b, ln2_w, ln2_b;  // (W) each
    qkv_layout layout = qkv_layout::separate;
    nn::matrix_ref qkv;               // [3W, W] (fused layouts)
    std::vector<float> qkv_bias;      // (3W) or empty
    nn::matrix_ref q, k, v;           // [W, W] each (separate layout)
    std::vector<float> q_bias, k_bias, v_bias;  // (W) each or empty
    nn::matrix_ref out;               // [W, W]
    std::vector<float> out_bias;      // (W) or empty
    nn::matrix_ref fc1;               // [M, W]
    std::vector<float> fc1_bias;      // (M) or empty
    nn::matrix_ref fc2;               // [W, M]
    std::vector<float> fc2_bias;      // (W) or empty
};

/// Work buffers of encoder_layer_forward, grown on demand and reused across layers and calls.
struct encoder_scratch {
    std::vector<float> normed, qkv, attn, proj, hidden;
};

namespace detail {

inline const float* bias_or_null(const std::vector<float>& b) { return b.empty() ? nullptr : b.data(); }

inline void check_matrix(const nn::matrix_ref& m, std::int64_t rows, std::int64_t cols, const char* where,
                         const char* name) {
    MMCA_CHECK_ARG(!m.empty() && m.rows == rows && m.cols == cols, where, name,
                   m.empty() ? std::string("no matrix") : m.shape_text(),
                   "a [" + mmca::detail::to_text(rows) + ", " + mmca::detail::to_text(cols) + "] matrix");
}

inline void check_vector(const std::vector<float>& v, std::int64_t n, bool optional, const char* where,
                         const char* name) {
    MMCA_CHECK_ARG((optional && v.empty()) || static_cast<std::int64_t>(v.size()) == n, where, name,
                   mmca::detail::to_text(v.size()) + " values",
                   (optional ? "none or " : "") + mmca::detail::to_text(n) + " values");
}

/// out (rows, W) += y (rows, W).
inline void add_rows(float* out, const float* y, std::int64_t n, int num_threads) {
    constexpr std::int64_t chunk = 1 << 14;
    const std::int64_t chunks = (n + chunk - 1) / chunk;
    parallel_for(chunks, chunks > 1 ? num_threads : 1, [&](std::int64_t c, int) {
        const std::int64_t i1 = std::min(n, (c + 1) * chunk);
        for (std::int64_t i = c * chunk; i < i1; ++i) out[i] += y[i];
    });
}

}  // namespace detail

/// Checks that w holds every tensor of an encoder layer of shape `config`.
inline void check_encoder_layer(const encoder_layer_config& config, const encoder_layer_weights& w,
                                const char* where = "mmca::vision::encoder_layer_forward") {
    config.validate(where);
    const std::int64_t W = config.width, M = config.mlp_width;
    detail::check_vector(w.ln1_w, W, false, where, "ln1 weight");
    detail::check_vector(w.ln1_b, W, false, where, "ln1 bias");
    detail::check_vector(w.ln2_w, W, false, where, "ln2 weight");
    detail::check_vector(w.ln2_b, W, false, where, "ln2 bias");
    if (w.layout == qkv_layout::separate) {
        detail::check_matrix(w.q, W, W, where, "q weight");
        detail::check_matrix(w.k, W, W, where, "k weight");
        detail::check_matrix(w.v, W, W, where, "v weight");
        detail::check_vector(w.q_bias, W, true, where, "q bias");
        detail::check_vector(w.k_bias, W, true, where, "k bias");
        detail::check_vector(w.v_bias, W, true, where, "v bias");
    } else {
        detail::check_matrix(w.qkv, 3 * W, W, where, "qkv weight");
        detail::check_vector(w.qkv_bias, 3 * W, true, where, "qkv bias");
    }
    detail::check_matrix(w.out, W, W, where, "out weight");
    detail::check_vector(w.out_bias, W, true, where, "out bias");
    detail::check_matrix(w.fc1, M, W, where, "fc1 weight");
    detail::check_vector(w.fc1_bias, M, true, where, "fc1 bias");
    detail::check_matrix(w.fc2, W, M, where, "fc2 weight");
    detail::check_vector(w.fc2_bias, W, true, where, "fc2 bias");
}

/// x (N, T, W): N independent sequences of T tokens, updated in place by one layer.
/// The weights are checked once by the caller (check_encoder_layer); the shape of x here.
inline void encoder_layer_forward(tensor_ref<float, 3> x, const encoder_layer_config& config,
                                  const encoder_layer_weights& w, encoder_scratch& scratch, int num_threads = 0) {
    using mmca::detail::to_text;
    const char* where = "mmca::vision::encoder_layer_forward";
    const std::int64_t N = x.shape[0], T = x.shape[1], W = config.width, M = config.mlp_width;
    const std::int64_t heads = config.heads, D = config.head_dim();
    MMCA_CHECK_ARG(x.shape[2] == W && x.contiguous(), where, "x", x.shape_text(),
                   "a contiguous (N, T, " + to_text(W) + ") tensor");
    if (N == 0 || T == 0) return;
    const std::int64_t R = N * T;
    scratch.normed.resize(static_cast<std::size_t>(R * W));
    scratch.qkv.resize(static_cast<std::size_t>(R * 3 * W));
    scratch.attn.resize(static_cast<std::size_t>(R * W));
    scratch.proj.resize(static_cast<std::size_t>(R * W));
    tensor_ref<float, 2> xs(x.data, {R, W});
    tensor_ref<float, 2> normed(scratch.normed.data(), {R, W});
    tensor_ref<float, 2> attn(scratch.attn.data(), {R, W});
    tensor_ref<float, 2> proj(scratch.proj.data(), {R, W});

    // Attention half.
    nn::layernorm_forward(xs, w.ln1_w.data(), w.ln1_b.data(), config.eps, normed, num_threads);
    float* qkv = scratch.qkv.data();
    if (w.layout == qkv_layout::separate) {
        const nn::matrix_ref* mats[3] = {&w.q, &w.k, &w.v};
        const std::vector<float>* biases[3] = {&w.q_bias, &w.k_bias, &w.v_bias};
        for (int i = 0; i < 3; ++i)
            nn::linear_forward(normed, *mats[i], detail::bias_or_null(*biases[i]),
                               tensor_ref<float, 2>(qkv + i * W, {R, W}, {3 * W, 1}), num_threads);
    } else {
        nn::linear_forward(normed, w.qkv, detail::bias_or_null(w.qkv_bias), tensor_ref<float, 2>(qkv, {R, 3 * W}),
                           num_threads);
    }
    const qkv_columns cols = qkv_columns_of(w.layout, W, D);
    const float scale = 1.0f / std::sqrt(static_cast<float>(D));
    for (std::int64_t n = 0; n < N; ++n) {
        const float* base = qkv + n * T * 3 * W;
        nn::head_matrix hq{base, T, 3 * W, cols.head_stride, cols.q_offset},
            hk{base, T, 3 * W, cols.head_stride, cols.k_offset}, hv{base, T, 3 * W, cols.head_stride, cols.v_offset};
        nn::dense_attention(hq, hk, hv, heads, D, scale, tensor_ref<float, 2>(attn.ptr(n * T), {T, W}), num_threads);
    }
    nn::linear_forward(attn, w.out, detail::bias_or_null(w.out_bias), proj, num_threads);
    detail::add_rows(x.data, proj.data, R * W, num_threads);

    // MLP half.
    scratch.hidden.resize(static_cast<std::size_t>(R * M));
    tensor_ref<float, 2> hidden(scratch.hidden.data(), {R, M});
    nn::layernorm_forward(xs, w.ln2_w.data(), w.ln2_b.data(), config.eps, normed, num_threads);
    nn::linear_forward(normed, w.fc1, detail::bias_or_null(w.fc1_bias), hidden, num_threads);
    nn::activate_inplace(config.act, hidden.data, R * M, num_threads);
    nn::linear_forward(hidden, w.fc2, detail::bias_or_null(w.fc2_bias), proj, num_threads);
    detail::add_rows(x.data, proj.data, R * W, num_threads);
}

}  // namespace mmca::vision
