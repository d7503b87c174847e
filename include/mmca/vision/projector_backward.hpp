// mmca/vision/projector_backward.hpp - training the projectors of SPEC §4: forwards that keep what
// the backward needs (a "tape"), and the backwards to the image features and to every parameter.
//
//   encoder_layer_forward_tape / encoder_layer_backward     the pre-LN encoder layer (vit projector)
//   attention_pool_forward_tape / attention_pool_backward   learned-query pooling (perceiver)
//   projector_forward_tape / projector_backward             baseline, vit, perceiver
//
// The forwards run the very calls of encoder_layer_forward, attention_pool_forward and
// projector::project (same shapes, same order: one image at a time), so their outputs are bitwise
// those of the inference path. Gradients are float32 and are added to the accumulators of a *_grads
// struct; an empty accumulator is a frozen parameter and is skipped. make_*_grads gives zeroed
// accumulators for every parameter present. The fixed positional tables of the perceiver get none.
// Images are processed in order, so gradients summed over images do not depend on the thread count.
#pragma once

#include "mmca/core/error.hpp"
#include "mmca/core/tensor.hpp"
#include "mmca/core/threading.hpp"
#include "mmca/nn/activation.hpp"
#include "mmca/nn/dense_attention.hpp"
#include "mmca/nn/grad/activation_backward.hpp"
#include "mmca/nn/grad/dense_attention_backward.hpp"
#include "mmca/nn/grad/linear_backward.hpp"
#include "mmca/nn/grad/norm_backward.hpp"
#include "mmca/nn/layernorm.hpp"
#include "mmca/nn/linear.hpp"
#include "mmca/vision/attention_pool.hpp"
#include "mmca/vision/encoder_layer.hpp"
#include "mmca/vision/projector.hpp"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

namespace mmca::vision {

namespace detail {

/// Zeros of the size of a vector parameter (none for an absent one).
inline std::vector<float> zeros_like(const std::vector<float>& v) { return std::vector<float>(v.size(), 0.0f); }
inline std::vector<float> zeros_like(const nn::matrix_ref& m) {
    return m.empty() ? std::vector<float>{} : std::vector<float>(static_cast<std::size_t>(m.rows * m.cols), 0.0f);
}
inline float* grad_or_null(std::vector<float>& g) { return g.empty() ? nullptr : g.data(); }

}  // namespace detail

// ---------------------------------------------------------------------------------------------
// Encoder layer

/// What encoder_layer_backward needs of a forward over R = N·T rows.
struct encoder_layer_tape {
    std::int64_t sequences = 0, tokens = 0;  // N, T
    std::vector<float> x0;      // (R, W) input of the layer
    std::vector<float> n1;      // (R, W) LN1(x0)
    std::vector<float> qkv;     // (R, 3W) q/k/v projections (layout as in encoder_layer_forward)
    std::vector<float> attn;    // (R, W) attention output (heads side by side)
    std::vector<float> x1;      // (R, W) x0 + out(attn)
    std::vector<float> n2;      // (R, W) LN2(x1)
    std::vector<float> hidden;  // (R, M) fc1(n2), before the activation
    std::vector<float> act;     // (R, M) act(hidden)
};

/// Gradient accumulators of an encoder layer, one per tensor of encoder_layer_weights.
struct encoder_layer_grads {
    std::vector<float> ln1_w, ln1_b, ln2_w, ln2_b;
    std::vector<float> qkv, qkv_bias;   // fused layouts
    std::vector<float> q, k, v, q_bias, k_bias, v_bias;  // separate layout
    std::vector<float> out, out_bias, fc1, fc1_bias, fc2, fc2_bias;
};

inline encoder_layer_grads make_encoder_layer_grads(const encoder_layer_weights& w) {
    using detail::zeros_like;
    encoder_layer_grads g;
    g.ln1_w = zeros_like(w.ln1_w), g.ln1_b = zeros_like(w.ln1_b);
    g.ln2_w = zeros_like(w.ln2_w), g.ln2_b = zeros_like(w.ln2_b);
    if (w.layout == qkv_layout::separate) {
        g.q = zeros_like(w.q), g.k = zeros_like(w.k), g.v = zeros_like(w.v);
        g.q_bias = zeros_like(w.q_bias), g.k_bias = zeros_like(w.k_bias), g.v_bias = zeros_like(w.v_bias);
    } else {
        g.qkv = zeros_like(w.qkv), g.qkv_bias = zeros_like(w.qkv_bias);
    }
    g.out = zeros_like(w.out), g.out_bias = zeros_like(w.out_bias);
    g.fc1 = zeros_like(w.fc1), g.fc1_bias = zeros_like(w.fc1_bias);
    g.fc2 = zeros_like(w.fc2), g.fc2_bias = zeros_like(w.fc2_bias);
    return g;
}

/// encoder_layer_forward(x, config, w) that also fills `tape`. The weights are checked by the caller.
inline void encoder_layer_forward_tape(tensor_ref<float, 3> x, const encoder_layer_config& config,
                                       const encoder_layer_weights& w, encoder_layer_tape& tape, int num_threads = 0) {
    using mmca::detail::to_text;
    const char* where = "mmca::vision::encoder_layer_forward_tape";
    const std::int64_t N = x.shape[0], T = x.shape[1], W = config.width, M = config.mlp_width;
    const std::int64_t heads = config.heads, D = config.head_dim();
    MMCA_CHECK_ARG(x.shape[2] == W && x.contiguous(), where, "x", x.shape_text(),
                   "a contiguous (N, T, " + to_text(W) + ") tensor");
    const std::int64_t R = N * T;
    tape.sequences = N;
    tape.tokens = T;
    tape.x0.assign(x.data, x.data + R * W);
    tape.n1.resize(static_cast<std::size_t>(R * W));
    tape.qkv.resize(static_cast<std::size_t>(R * 3 * W));
    tape.attn.resize(static_cast<std::size_t>(R * W));
    tape.n2.resize(static_cast<std::size_t>(R * W));
    tape.hidden.resize(static_cast<std::size_t>(R * M));
    if (R == 0) return;
    std::vector<float> proj(static_cast<std::size_t>(R * W));
    tensor_ref<float, 2> xs(x.data, {R, W}), n1(tape.n1.data(), {R, W}), attn(tape.attn.data(), {R, W});
    tensor_ref<float, 2> pr(proj.data(), {R, W});

    nn::layernorm_forward(xs, w.ln1_w.data(), w.ln1_b.data(), config.eps, n1, num_threads);
    float* qkv = tape.qkv.data();
    if (w.layout == qkv_layout::separate) {
        const nn::matrix_ref* mats[3] = {&w.q, &w.k, &w.v};
        const std::vector<float>* biases[3] = {&w.q_bias, &w.k_bias, &w.v_bias};
        for (int i = 0; i < 3; ++i)
            nn::linear_forward(n1, *mats[i], detail::bias_or_null(*biases[i]),
                               tensor_ref<float, 2>(qkv + i * W, {R, W}, {3 * W, 1}), num_threads);
    } else {
        nn::linear_forward(n1, w.qkv, detail::bias_or_null(w.qkv_bias), tensor_ref<float, 2>(qkv, {R, 3 * W}),
                           num_threads);
    }
    const qkv_columns lay = qkv_columns_of(w.layout, W, D);
    const float scale = 1.0f / std::sqrt(static_cast<float>(D));
    for (std::int64_t n = 0; n < N; ++n) {
        const float* base = qkv + n * T * 3 * W;
        nn::head_matrix hq{base, T, 3 * W, lay.head_stride, lay.q_offset},
            hk{base, T, 3 * W, lay.head_stride, lay.k_offset}, hv{base, T, 3 * W, lay.head_stride, lay.v_offset};
        nn::dense_attention(hq, hk, hv, heads, D, scale, tensor_ref<float, 2>(attn.ptr(n * T), {T, W}), num_threads);
    }
    nn::linear_forward(attn, w.out, detail::bias_or_null(w.out_bias), pr, num_threads);
    detail::add_rows(x.data, proj.data(), R * W, num_threads);
    tape.x1.assign(x.data, x.data + R * W);

    tensor_ref<float, 2> n2(tape.n2.data(), {R, W}), hidden(tape.hidden.data(), {R, M});
    nn::layernorm_forward(xs, w.ln2_w.data(), w.ln2_b.data(), config.eps, n2, num_threads);
    nn::linear_forward(n2, w.fc1, detail::bias_or_null(w.fc1_bias), hidden, num_threads);
    tape.act = tape.hidden;
    nn::activate_inplace(config.act, tape.act.data(), R * M, num_threads);
    nn::linear_forward(tensor_ref<const float, 2>(tape.act.data(), {R, M}), w.fc2, detail::bias_or_null(w.fc2_bias),
                       pr, num_threads);
    detail::add_rows(x.data, proj.data(), R * W, num_threads);
}

/// Backward of one encoder layer. d (R, W), R = N·T of the tape: on entry the gradient of the
/// layer's output, on return that of its input. Parameter gradients are added to g.
inline void encoder_layer_backward(const encoder_layer_config& config, const encoder_layer_weights& w,
                                   const encoder_layer_tape& tape, tensor_ref<float, 2> d, encoder_layer_grads& g,
                                   int num_threads = 0) {
    using mmca::detail::to_text;
    using detail::grad_or_null;
    const char* where = "mmca::vision::encoder_layer_backward";
    const std::int64_t N = tape.sequences, T = tape.tokens, R = N * T, W = config.width, M = config.mlp_width;
    const std::int64_t heads = config.heads, D = config.head_dim();
    MMCA_CHECK_ARG(d.shape[0] == R && d.shape[1] == W && d.contiguous(), where, "d", d.shape_text(),
                   "a contiguous (" + to_text(R) + ", " + to_text(W) + ") tensor (the rows of the tape)");
    if (R == 0) return;
    using cref = tensor_ref<const float, 2>;
    std::vector<float> dact(static_cast<std::size_t>(R * M)), dn(static_cast<std::size_t>(R * W));
    tensor_ref<float, 2> dA(dact.data(), {R, M}), dN(dn.data(), {R, W});

    // MLP half: x2 = x1 + fc2(act(fc1(LN2(x1)))).
    nn::linear_backward(cref(tape.act.data(), {R, M}), w.fc2, d, dA, grad_or_null(g.fc2), grad_or_null(g.fc2_bias),
                        num_threads);
    nn::activation_backward(config.act, tape.hidden.data(), dact.data(), dact.data(), R * M, num_threads);
    nn::linear_backward(cref(tape.n2.data(), {R, W}), w.fc1, dA, dN, grad_or_null(g.fc1), grad_or_null(g.fc1_bias),
                        num_threads);
    nn::layernorm_backward(cref(tape.x1.data(), {R, W}), w.ln2_w.data(), config.eps, dN, d, grad_or_null(g.ln2_w),
                           grad_or_null(g.ln2_b), num_threads, true);

    // Attention half: x1 = x0 + out(MHA(qkv(LN1(x0)))).
    std::vector<float> dattn(static_cast<std::size_t>(R * W)), dqkv(static_cast<std::size_t>(R * 3 * W));
    tensor_ref<float, 2> dAttn(dattn.data(), {R, W});
    nn::linear_backward(cref(tape.attn.data(), {R, W}), w.out, d, dAttn, grad_or_null(g.out),
                        grad_or_null(g.out_bias), num_threads);
    const qkv_columns lay = qkv_columns_of(w.layout, W, D);
    const float scale = 1.0f / std::sqrt(static_cast<float>(D));
    for (std::int64_t n = 0; n < N; ++n) {
        const float* base = tape.qkv.data() + n * T * 3 * W;
        float* dbase = dqkv.data() + n * T * 3 * W;
        nn::head_matrix hq{base, T, 3 * W, lay.head_stride, lay.q_offset},
            hk{base, T, 3 * W, lay.head_stride, lay.k_offset}, hv{base, T, 3 * W, lay.head_stride, lay.v_offset};
        nn::head_matrix_grad gq{dbase, T, 3 * W, lay.head_stride, lay.q_offset},
            gk{dbase, T, 3 * W, lay.head_stride, lay.k_offset}, gv{dbase, T, 3 * W, lay.head_stride, lay.v_offset};
        nn::dense_attention_backward(hq, hk, hv, heads, D, scale, cref(dAttn.ptr(n * T), {T, W}), gq, gk, gv,
                                     num_threads);
    }
    const cref n1(tape.n1.data(), {R, W});
    if (w.layout == qkv_layout::separate) {
        const nn::matrix_ref* mats[3] = {&w.q, &w.k, &w.v};
        std::vector<float>* gw[3] = {&g.q, &g.k, &g.v};
        std::vector<float>* gb[3] = {&g.q_bias, &g.k_bias, &g.v_bias};
        for (int i = 0; i < 3; ++i)
            nn::linear_backward(n1, *mats[i], cref(dqkv.data() + i * W, {R, W}, {3 * W, 1}), dN,
                                grad_or_null(*gw[i]), grad_or_null(*gb[i]), num_threads, i > 0);
    } else {
        nn::linear_backward(n1, w.qkv, cref(dqkv.data(), {R, 3 * W}), dN, grad_or_null(g.qkv),
                            grad_or_null(g.qkv_bias), num_threads);
    }
    nn::layernorm_backward(cref(tape.x0.data(), {R, W}), w.ln1_w.data(), config.eps, dN, d, grad_or_null(g.ln1_w),
                           grad_or_null(g.ln1_b), num_threads, true);
}

// ---------------------------------------------------------------------------------------------
// Attention pool

/// What attention_pool_backward needs of a forward over N images of T tokens (R = N·T rows).
struct attention_pool_tape {
    std::int64_t images = 0, tokens = 0;  // N, T
    std::vector<float> x;       // (R, Dv) input tokens
    std::vector<float> q;       // (Q, E) LN_q(query) + q_pos
    std::vector<float> qp;      // (Q, E) projected queries
    std::vector<float> kv_pre;  // (R, E) kv_proj(x)
    std::vector<float> kv;      // (R, E) LN_kv(kv_pre)
    std::vector<float> k;       // (R, E) kv + k_pos
    std::vector<float> kp, vp;  // (R, E) projected keys / values
    std::vector<float> attn;    // (N·Q, E) attention output before out_proj
};

/// Gradient accumulators of an attention pool (the positional tables are fixed: none).
struct attention_pool_grads {
    std::vector<float> query, kv_proj, kv_proj_bias, ln_q_w, ln_q_b, ln_kv_w, ln_kv_b;
    std::vector<float> in_proj, in_proj_bias, out_proj, out_proj_bias;
};

inline attention_pool_grads make_attention_pool_grads(const attention_pool_weights& w) {
    using detail::zeros_like;
    attention_pool_grads g;
    g.query = zeros_like(w.query);
    g.kv_proj = zeros_like(w.kv_proj), g.kv_proj_bias = zeros_like(w.kv_proj_bias);
    g.ln_q_w = zeros_like(w.ln_q_w), g.ln_q_b = zeros_like(w.ln_q_b);
    g.ln_kv_w = zeros_like(w.ln_kv_w), g.ln_kv_b = zeros_like(w.ln_kv_b);
    g.in_proj = zeros_like(w.in_proj), g.in_proj_bias = zeros_like(w.in_proj_bias);
    g.out_proj = zeros_like(w.out_proj), g.out_proj_bias = zeros_like(w.out_proj_bias);
    return g;
}

/// attention_pool_forward(x, config, w, out) that also fills `tape`. Weights checked by the caller.
inline void attention_pool_forward_tape(tensor_ref<const float, 3> x, const attention_pool_config& config,
                                        const attention_pool_weights& w, tensor_ref<float, 3> out,
                                        attention_pool_tape& tape, int num_threads = 0) {
    using mmca::detail::to_text;
    const char* where = "mmca::vision::attention_pool_forward_tape";
    const std::int64_t N = x.shape[0], T = x.shape[1], Q = config.queries, E = config.width, D = config.head_dim();
    const std::int64_t Dv = config.kv_dim;
    MMCA_CHECK_ARG(x.shape[2] == Dv && x.contiguous(), where, "x", x.shape_text(),
                   "a contiguous (N, T, " + to_text(Dv) + ") tensor");
    if (!w.k_pos.empty())
        MMCA_CHECK_ARG(static_cast<std::int64_t>(w.k_pos.size()) == T * E, where, "x", x.shape_text(),
                       "(N, " + to_text(static_cast<std::int64_t>(w.k_pos.size()) / E) +
                           ", Dv): as many tokens as the key position table has rows");
    MMCA_CHECK_ARG(out.shape[0] == N && out.shape[1] == Q && out.shape[2] == E && out.contiguous(), where, "out",
                   out.shape_text(), "a contiguous (" + to_text(N) + ", " + to_text(Q) + ", " + to_text(E) + ") tensor");
    MMCA_CHECK_ARG(N == 0 || T > 0, where, "x", x.shape_text(), "at least one token per image");
    const std::int64_t R = N * T;
    tape.images = N;
    tape.tokens = T;
    tape.x.assign(x.data, x.data + R * Dv);
    for (auto* v : {&tape.q, &tape.qp}) v->resize(static_cast<std::size_t>(Q * E));
    for (auto* v : {&tape.kv_pre, &tape.kv, &tape.k, &tape.kp, &tape.vp}) v->resize(static_cast<std::size_t>(R * E));
    tape.attn.resize(static_cast<std::size_t>(N * Q * E));
    if (N == 0) return;
    const float* no_bias = nullptr;
    auto bias_at = [&](std::int64_t o) { return w.in_proj_bias.empty() ? no_bias : w.in_proj_bias.data() + o; };

    tensor_ref<float, 2> q(tape.q.data(), {Q, E}), qp(tape.qp.data(), {Q, E});
    nn::layernorm_forward(tensor_ref<const float, 2>(w.query.data(), {Q, E}), w.ln_q_w.data(), w.ln_q_b.data(),
                          config.eps, q, num_threads);
    if (!w.q_pos.empty())
        for (std::int64_t i = 0; i < Q * E; ++i) q.data[i] += w.q_pos[static_cast<std::size_t>(i)];
    nn::linear_forward(q, detail::row_block(w.in_proj, 0, E), bias_at(0), qp, num_threads);

    tensor_ref<float, 2> kv_pre(tape.kv_pre.data(), {R, E}), kv(tape.kv.data(), {R, E}), k(tape.k.data(), {R, E});
    tensor_ref<float, 2> kp(tape.kp.data(), {R, E}), vp(tape.vp.data(), {R, E});
    nn::linear_forward(tensor_ref<const float, 2>(tape.x.data(), {R, Dv}), w.kv_proj,
                       detail::bias_or_null(w.kv_proj_bias), kv_pre, num_threads);
    nn::layernorm_forward(kv_pre, w.ln_kv_w.data(), w.ln_kv_b.data(), config.eps, kv, num_threads);
    for (std::int64_t r = 0; r < R; ++r) {
        const float* pos = w.k_pos.empty() ? nullptr : w.k_pos.data() + (r % T) * E;
        for (std::int64_t i = 0; i < E; ++i) k(r, i) = kv(r, i) + (pos ? pos[i] : 0.0f);
    }
    nn::linear_forward(k, detail::row_block(w.in_proj, E, E), bias_at(E), kp, num_threads);
    nn::linear_forward(kv, detail::row_block(w.in_proj, 2 * E, E), bias_at(2 * E), vp, num_threads);

    tensor_ref<float, 2> attn(tape.attn.data(), {N * Q, E});
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

/// Backward of the pool: dout (N·Q, E) the gradient of its output; dx (N·T, Dv) receives that of
/// the input tokens (empty: not wanted). Parameter gradients are added to g.
inline void attention_pool_backward(const attention_pool_config& config, const attention_pool_weights& w,
                                    const attention_pool_tape& tape, tensor_ref<const float, 2> dout,
                                    tensor_ref<float, 2> dx, attention_pool_grads& g, int num_threads = 0) {
    using mmca::detail::to_text;
    using detail::grad_or_null;
    const char* where = "mmca::vision::attention_pool_backward";
    const std::int64_t N = tape.images, T = tape.tokens, R = N * T, Q = config.queries, E = config.width;
    const std::int64_t D = config.head_dim(), Dv = config.kv_dim;
    MMCA_CHECK_ARG(dout.shape[0] == N * Q && dout.shape[1] == E && dout.inner_contiguous(), where, "dout",
                   dout.shape_text(), "(" + to_text(N * Q) + ", " + to_text(E) + ") with contiguous rows");
    if (N == 0) return;
    using cref = tensor_ref<const float, 2>;
    auto block_grad = [&](std::vector<float>& gv, std::int64_t offset) {
        return gv.empty() ? nullptr : gv.data() + offset;
    };
    std::vector<float> dattn(static_cast<std::size_t>(N * Q * E));
    tensor_ref<float, 2> dAttn(dattn.data(), {N * Q, E});
    nn::linear_backward(cref(tape.attn.data(), {N * Q, E}), w.out_proj, dout, dAttn, grad_or_null(g.out_proj),
                        grad_or_null(g.out_proj_bias), num_threads);

    std::vector<float> dqp(static_cast<std::size_t>(Q * E), 0.0f), dqp_n(static_cast<std::size_t>(Q * E));
    std::vector<float> dkp(static_cast<std::size_t>(R * E)), dvp(static_cast<std::size_t>(R * E));
    const float scale = 1.0f / std::sqrt(static_cast<float>(D));
    const nn::head_matrix hq{tape.qp.data(), Q, E, D, 0};
    const nn::head_matrix_grad gq{dqp_n.data(), Q, E, D, 0};
    for (std::int64_t n = 0; n < N; ++n) {
        const nn::head_matrix hk{tape.kp.data() + n * T * E, T, E, D, 0}, hv{tape.vp.data() + n * T * E, T, E, D, 0};
        const nn::head_matrix_grad gk{dkp.data() + n * T * E, T, E, D, 0}, gv{dvp.data() + n * T * E, T, E, D, 0};
        nn::dense_attention_backward(hq, hk, hv, config.heads, D, scale, cref(dAttn.ptr(n * Q), {Q, E}), gq, gk, gv,
                                     num_threads);
        for (std::int64_t i = 0; i < Q * E; ++i) dqp[static_cast<std::size_t>(i)] += dqp_n[static_cast<std::size_t>(i)];
    }

    // Keys and values: v = kv, k = kv + k_pos, kv = LN_kv(kv_proj(x)).
    std::vector<float> dkv(static_cast<std::size_t>(R * E)), dkv_pre(static_cast<std::size_t>(R * E));
    tensor_ref<float, 2> dKV(dkv.data(), {R, E}), dKVpre(dkv_pre.data(), {R, E});
    nn::linear_backward(cref(tape.kv.data(), {R, E}), detail::row_block(w.in_proj, 2 * E, E), cref(dvp.data(), {R, E}),
                        dKV, block_grad(g.in_proj, 2 * E * E), block_grad(g.in_proj_bias, 2 * E), num_threads);
    nn::linear_backward(cref(tape.k.data(), {R, E}), detail::row_block(w.in_proj, E, E), cref(dkp.data(), {R, E}), dKV,
                        block_grad(g.in_proj, E * E), block_grad(g.in_proj_bias, E), num_threads, true);
    nn::layernorm_backward(cref(tape.kv_pre.data(), {R, E}), w.ln_kv_w.data(), config.eps, dKV, dKVpre,
                           grad_or_null(g.ln_kv_w), grad_or_null(g.ln_kv_b), num_threads);
    if (!dx.empty())
        MMCA_CHECK_ARG(dx.shape[0] == R && dx.shape[1] == Dv && dx.inner_contiguous(), where, "dx", dx.shape_text(),
                       "(" + to_text(R) + ", " + to_text(Dv) + ") with contiguous rows");
    nn::linear_backward(cref(tape.x.data(), {R, Dv}), w.kv_proj, dKVpre, dx, grad_or_null(g.kv_proj),
                        grad_or_null(g.kv_proj_bias), num_threads);

    // Queries: q = LN_q(query) + q_pos.
    std::vector<float> dq(static_cast<std::size_t>(Q * E));
    tensor_ref<float, 2> dQ(dq.data(), {Q, E});
    nn::linear_backward(cref(tape.q.data(), {Q, E}), detail::row_block(w.in_proj, 0, E), cref(dqp.data(), {Q, E}), dQ,
                        block_grad(g.in_proj, 0), block_grad(g.in_proj_bias, 0), num_threads);
    tensor_ref<float, 2> dquery;
    if (!g.query.empty()) dquery = tensor_ref<float, 2>(g.query.data(), {Q, E});
    nn::layernorm_backward(cref(w.query.data(), {Q, E}), w.ln_q_w.data(), config.eps, dQ, dquery,
                           grad_or_null(g.ln_q_w), grad_or_null(g.ln_q_b), num_threads, true);
}

// ---------------------------------------------------------------------------------------------
// Projector

/// What projector_backward needs of a forward over N images.
struct projector_tape {
    std::int64_t images = 0, tokens = 0;  // N, T (tokens per image in)
    std::vector<float> input;     // (N, T, Dv) the image features (contiguous copy)
    std::vector<float> features;  // vit: (N, T, Dv) the encoder layer's output (input of the Linear)
    std::vector<float> pre_norm;  // baseline/vit: (N, T, H) Linear output; perceiver: (N, Q, H) pooled rows
    std::vector<float> normed;    // perceiver: (N, Q, H) LN(pooled), input of the final Linear
    std::vector<encoder_layer_tape> layers;  // vit: one per image
    std::vector<attention_pool_tape> pools;  // perceiver: one per image
};

/// Gradient accumulators of a projector (every parameter is trainable in the paper).
struct projector_grads {
    std::vector<float> linear, linear_bias, norm_w, norm_b;
    encoder_layer_grads layer;  // vit
    attention_pool_grads pool;  // perceiver
};

inline projector_grads make_projector_grads(const projector& p) {
    using detail::zeros_like;
    const auto& w = p.weights();
    projector_grads g;
    g.linear = zeros_like(w.linear), g.linear_bias = zeros_like(w.linear_bias);
    g.norm_w = zeros_like(w.norm_w), g.norm_b = zeros_like(w.norm_b);
    if (p.kind() == projector_kind::vit) g.layer = make_encoder_layer_grads(w.layer);
    if (p.kind() == projector_kind::perceiver) g.pool = make_attention_pool_grads(w.pool);
    return g;
}

namespace detail {

inline attention_pool_config pool_config_of(const projector_config& c) {
    return attention_pool_config{c.queries, c.vision_dim, c.hidden, c.attention_heads(), c.eps};
}

}  // namespace detail

/// p.project(in, out) that also fills `tape` (same results, bit for bit).
inline void projector_forward_tape(const projector& p, tensor_ref<const float, 3> in, tensor_ref<float, 3> out,
                                   projector_tape& tape, int num_threads = 0) {
    using mmca::detail::to_text;
    const char* where = "mmca::vision::projector_forward_tape";
    const auto& c = p.config();
    const auto& w = p.weights();
    const std::int64_t Dv = c.vision_dim, H = c.hidden;
    MMCA_CHECK_ARG(!in.empty() || in.numel() == 0, where, "in", "no data", "an (N, T, Dv) float32 tensor");
    MMCA_CHECK_ARG(in.shape[2] == Dv && in.inner_contiguous(), where, "in", in.shape_text(),
                   "(N, T, " + to_text(Dv) + ") with contiguous rows");
    const std::int64_t N = in.shape[0], T = in.shape[1], T_out = c.output_tokens(T, where);
    MMCA_CHECK_ARG(out.shape[0] == N && out.shape[1] == T_out && out.shape[2] == H && out.inner_contiguous(), where,
                   "out", out.shape_text(),
                   "(" + to_text(N) + ", " + to_text(T_out) + ", " + to_text(H) + ") with contiguous rows");
    tape = projector_tape{};
    tape.images = N;
    tape.tokens = T;
    tape.input.resize(static_cast<std::size_t>(N * T * Dv));
    for (std::int64_t n = 0; n < N; ++n)
        for (std::int64_t t = 0; t < T; ++t) std::copy_n(in.ptr(n, t), Dv, tape.input.data() + (n * T + t) * Dv);
    tape.pre_norm.resize(static_cast<std::size_t>(N * T_out * H));
    const float* lin_bias = detail::bias_or_null(w.linear_bias);
    for (std::int64_t n = 0; n < N; ++n) {
        const tensor_ref<float, 2> y(out.ptr(n), {T_out, H}, {out.strides[1], out.strides[2]});
        const tensor_ref<float, 2> pre(tape.pre_norm.data() + n * T_out * H, {T_out, H});
        float* x_n = tape.input.data() + n * T * Dv;
        switch (c.kind) {
            case projector_kind::baseline:
                nn::linear_forward(tensor_ref<const float, 2>(x_n, {T, Dv}), w.linear, lin_bias, pre, num_threads);
                nn::layernorm_forward(pre, w.norm_w.data(), w.norm_b.data(), c.eps, y, num_threads);
                break;
            case projector_kind::vit: {
                if (n == 0) {
                    tape.features = tape.input;
                    tape.layers.resize(static_cast<std::size_t>(N));
                }
                float* f = tape.features.data() + n * T * Dv;
                encoder_layer_forward_tape(tensor_ref<float, 3>(f, {1, T, Dv}), c.layer, w.layer,
                                           tape.layers[static_cast<std::size_t>(n)], num_threads);
                nn::linear_forward(tensor_ref<const float, 2>(f, {T, Dv}), w.linear, lin_bias, pre, num_threads);
                nn::layernorm_forward(pre, w.norm_w.data(), w.norm_b.data(), c.eps, y, num_threads);
                break;
            }
            case projector_kind::perceiver: {
                if (n == 0) {
                    tape.pools.resize(static_cast<std::size_t>(N));
                    tape.normed.resize(static_cast<std::size_t>(N * T_out * H));
                }
                const std::int64_t Tk = c.key_tokens(), skip = c.has_cls ? 1 : 0;
                attention_pool_forward_tape(tensor_ref<const float, 3>(x_n + skip * Dv, {1, Tk, Dv}),
                                            detail::pool_config_of(c), w.pool,
                                            tensor_ref<float, 3>(pre.data, {1, T_out, H}),
                                            tape.pools[static_cast<std::size_t>(n)], num_threads);
                const tensor_ref<float, 2> nm(tape.normed.data() + n * T_out * H, {T_out, H});
                nn::layernorm_forward(pre, w.norm_w.data(), w.norm_b.data(), c.eps, nm, num_threads);
                nn::linear_forward(nm, w.linear, lin_bias, y, num_threads);
                break;
            }
        }
    }
}

/// Backward of projector_forward_tape: dout (N, T', H) the gradient of the projection; dx (N, T, Dv)
/// receives that of the image features (empty: not wanted; a dropped CLS row gets 0). Parameter
/// gradients are added to g (make_projector_grads).
inline void projector_backward(const projector& p, const projector_tape& tape, tensor_ref<const float, 3> dout,
                               tensor_ref<float, 3> dx, projector_grads& g, int num_threads = 0) {
    using mmca::detail::to_text;
    using detail::grad_or_null;
    const char* where = "mmca::vision::projector_backward";
    const auto& c = p.config();
    const auto& w = p.weights();
    const std::int64_t N = tape.images, T = tape.tokens, Dv = c.vision_dim, H = c.hidden;
    const std::int64_t T_out = N > 0 ? c.output_tokens(T, where) : 0;
    MMCA_CHECK_ARG(dout.shape[0] == N && dout.shape[1] == T_out && dout.shape[2] == H && dout.inner_contiguous(),
                   where, "dout", dout.shape_text(),
                   "(" + to_text(N) + ", " + to_text(T_out) + ", " + to_text(H) + ") with contiguous rows (the tape's)");
    if (!dx.empty())
        MMCA_CHECK_ARG(dx.shape[0] == N && dx.shape[1] == T && dx.shape[2] == Dv && dx.inner_contiguous(), where, "dx",
                       dx.shape_text(),
                       "(" + to_text(N) + ", " + to_text(T) + ", " + to_text(Dv) + ") with contiguous rows");
    using cref = tensor_ref<const float, 2>;
    std::vector<float> dz(static_cast<std::size_t>(T_out * H)), din(static_cast<std::size_t>(T * Dv));
    tensor_ref<float, 2> dZ(dz.data(), {T_out, H});
    for (std::int64_t n = 0; n < N; ++n) {
        const cref dy(dout.ptr(n), {T_out, H}, {dout.strides[1], dout.strides[2]});
        const cref pre(tape.pre_norm.data() + n * T_out * H, {T_out, H});
        const float* x_n = tape.input.data() + n * T * Dv;
        tensor_ref<float, 2> dIn(din.data(), {T, Dv});
        switch (c.kind) {
            case projector_kind::baseline:
            case projector_kind::vit: {
                nn::layernorm_backward(pre, w.norm_w.data(), c.eps, dy, dZ, grad_or_null(g.norm_w),
                                       grad_or_null(g.norm_b), num_threads);
                const float* lin_in = c.kind == projector_kind::vit ? tape.features.data() + n * T * Dv : x_n;
                nn::linear_backward(cref(lin_in, {T, Dv}), w.linear, dZ, dIn, grad_or_null(g.linear),
                                    grad_or_null(g.linear_bias), num_threads);
                if (c.kind == projector_kind::vit)
                    encoder_layer_backward(c.layer, w.layer, tape.layers[static_cast<std::size_t>(n)], dIn, g.layer,
                                           num_threads);
                break;
            }
            case projector_kind::perceiver: {
                const cref nm(tape.normed.data() + n * T_out * H, {T_out, H});
                nn::linear_backward(nm, w.linear, dy, dZ, grad_or_null(g.linear), grad_or_null(g.linear_bias),
                                    num_threads);
                nn::layernorm_backward(pre, w.norm_w.data(), c.eps, dZ, dZ, grad_or_null(g.norm_w),
                                       grad_or_null(g.norm_b), num_threads);
                const std::int64_t Tk = c.key_tokens(), skip = c.has_cls ? 1 : 0;
                if (skip) std::fill_n(din.data(), Dv, 0.0f);
                attention_pool_backward(detail::pool_config_of(c), w.pool, tape.pools[static_cast<std::size_t>(n)], dZ,
                                        tensor_ref<float, 2>(din.data() + skip * Dv, {Tk, Dv}), g.pool, num_threads);
                break;
            }
        }
        if (!dx.empty())
            for (std::int64_t t = 0; t < T; ++t) std::copy_n(din.data() + t * Dv, Dv, dx.ptr(n, t));
    }
}

/// One parameter gradient of a projector under its checkpoint name (relative to the prefix).
struct named_gradient {
    std::string name;
    std::vector<float>* values;
    std::vector<std::int64_t> shape;
};

/// The non-empty gradients of g under the projector's checkpoint tensor names (relative to the
/// prefix, e.g. "0.weight" for "projection.0.weight"), in a fixed order.
inline std::vector<named_gradient> named_projector_gradients(const projector& p, projector_grads& g) {
    const auto& c = p.config();
    const std::int64_t Dv = c.vision_dim, H = c.hidden;
    std::vector<named_gradient> out;
    auto put = [&](const char* name, std::vector<float>& v, std::vector<std::int64_t> shape) {
        if (!v.empty()) out.push_back(named_gradient{name, &v, std::move(shape)});
    };
    switch (c.kind) {
        case projector_kind::baseline:
            put("0.weight", g.linear, {H, Dv}), put("0.bias", g.linear_bias, {H});
            put("1.weight", g.norm_w, {H}), put("1.bias", g.norm_b, {H});
            break;
        case projector_kind::vit: {
            const std::int64_t M = c.layer.mlp_width;
            auto& L = g.layer;
            put("vis_layer.layer_norm1.weight", L.ln1_w, {Dv}), put("vis_layer.layer_norm1.bias", L.ln1_b, {Dv});
            put("vis_layer.self_attn.q_proj.weight", L.q, {Dv, Dv}), put("vis_layer.self_attn.q_proj.bias", L.q_bias, {Dv});
            put("vis_layer.self_attn.k_proj.weight", L.k, {Dv, Dv}), put("vis_layer.self_attn.k_proj.bias", L.k_bias, {Dv});
            put("vis_layer.self_attn.v_proj.weight", L.v, {Dv, Dv}), put("vis_layer.self_attn.v_proj.bias", L.v_bias, {Dv});
            put("vis_layer.self_attn.out_proj.weight", L.out, {Dv, Dv});
            put("vis_layer.self_attn.out_proj.bias", L.out_bias, {Dv});
            put("vis_layer.layer_norm2.weight", L.ln2_w, {Dv}), put("vis_layer.layer_norm2.bias", L.ln2_b, {Dv});
            put("vis_layer.mlp.fc1.weight", L.fc1, {M, Dv}), put("vis_layer.mlp.fc1.bias", L.fc1_bias, {M});
            put("vis_layer.mlp.fc2.weight", L.fc2, {Dv, M}), put("vis_layer.mlp.fc2.bias", L.fc2_bias, {Dv});
            put("projection.0.weight", g.linear, {H, Dv}), put("projection.0.bias", g.linear_bias, {H});
            put("projection.1.weight", g.norm_w, {H}), put("projection.1.bias", g.norm_b, {H});
            break;
        }
        case projector_kind::perceiver: {
            auto& P = g.pool;
            put("query", P.query, {c.queries, H});
            put("kv_proj.weight", P.kv_proj, {H, Dv}), put("kv_proj.bias", P.kv_proj_bias, {H});
            put("ln_q.weight", P.ln_q_w, {H}), put("ln_q.bias", P.ln_q_b, {H});
            put("ln_kv.weight", P.ln_kv_w, {H}), put("ln_kv.bias", P.ln_kv_b, {H});
            put("attn.in_proj_weight", P.in_proj, {3 * H, H}), put("attn.in_proj_bias", P.in_proj_bias, {3 * H});
            put("attn.out_proj.weight", P.out_proj, {H, H}), put("attn.out_proj.bias", P.out_proj_bias, {H});
            put("projection.0.weight", g.norm_w, {H}), put("projection.0.bias", g.norm_b, {H});
            put("projection.1.weight", g.linear, {H, H}), put("projection.1.bias", g.linear_bias, {H});
            break;
        }
    }
    return out;
}

}  // namespace mmca::vision
