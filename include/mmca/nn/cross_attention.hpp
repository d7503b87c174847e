// mmca/nn/cross_attention.hpp - the gated cross-attention block of SPEC §2.5 (Flamingo-style CrA).
//
// A block with its own parameters, run before every N-th decoder layer. Only text rows change:
//   h += tanh(attn_gate) · o(xattn(q(RMSNorm_a(h)), K_img, V_img))
//   h += tanh(mlp_gate)  · down(silu(gate(x)) ⊙ up(x)),   x = RMSNorm_m(h)
// K_img / V_img are k(e) / v(e) of the projected image tokens e (the image rows of the model's
// input embeddings, not normalised: the projector ends with a LayerNorm). Text row j attends, in one
// softmax, to the image tokens allowed by the image_visibility policy:
//   all        every image token of the sequence present when the row is computed
//   preceding  image tokens at positions < j
//   latest     the tokens of the most recent image before j
// A text row that sees no image gets 0 from the attention term. With both gates at 0 (their
// initial value) the block is the identity, so the language model starts unchanged.
// Image-token keys and values persist across calls in a cross_kv_store (one per block), so a
// decode step or a later chat round sees the images of earlier rounds.
#pragma once

#include "mmca/attention/types.hpp"
#include "mmca/core/error.hpp"
#include "mmca/core/tensor.hpp"
#include "mmca/core/threading.hpp"
#include "mmca/nn/linear.hpp"
#include "mmca/nn/mlp.hpp"
#include "mmca/nn/rmsnorm.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

namespace mmca::nn {

/// Parameters of one gated cross-attention block (H hidden, Hq·D = H, Hkv·D kv width).
struct gated_cross_attention_weights {
    std::vector<float> attn_norm;  // (H) RMSNorm weight before the cross-attention
    matrix_ref q;                  // [Hq·D, H]
    matrix_ref k;                  // [Hkv·D, H]
    matrix_ref v;                  // [Hkv·D, H]
    matrix_ref o;                  // [H, Hq·D]
    float attn_gate = 0.0f;        // alpha of the attention term (tanh applied)
    std::vector<float> mlp_norm;   // (H)
    swiglu_weights mlp;            // gate/up [I, H], down [H, I]
    float mlp_gate = 0.0f;         // alpha of the MLP term (tanh applied)
};

/// Keys/values of the image tokens seen so far, per sequence.
struct cross_kv_store {
    struct sequence {
        std::vector<float> keys;             // (M, Hkv·D)
        std::vector<float> values;           // (M, Hkv·D)
        std::vector<std::int64_t> position;  // (M) position of each image token
        std::vector<std::int32_t> image_id;  // (M)
    };
    std::vector<sequence> seqs;  // (B)
    void clear() {
        for (auto& s : seqs) s = sequence{};
    }
};

/// Rows of one call: row n belongs to sequence seq[n], sits at position pos[n], has token type
/// type[n] (0 pad, 1 text, 2 image) and image id image_id[n] (image rows), valid[n] != 0 when it is
/// a real token (not right padding).
struct row_metadata {
    const std::int64_t* seq = nullptr;
    const std::int64_t* pos = nullptr;
    const std::int8_t* type = nullptr;
    const std::int32_t* image_id = nullptr;
    const std::uint8_t* valid = nullptr;
};

struct cross_attention_scratch {
    std::vector<float> xn, q, kv, attn, proj;
    swiglu_scratch mlp;
};

namespace detail {

/// Indices of the stored image tokens that a text row at position j sees under the policy.
inline void cross_visible(const cross_kv_store::sequence& seq, std::int64_t j, image_visibility visibility,
                          std::vector<std::int64_t>& visible) {
    const std::int64_t M = static_cast<std::int64_t>(seq.position.size());
    std::int32_t latest = -1;
    std::int64_t latest_pos = -1;
    for (std::int64_t m = 0; m < M; ++m)
        if (seq.position[m] < j && seq.position[m] > latest_pos) latest_pos = seq.position[m], latest = seq.image_id[m];
    visible.clear();
    for (std::int64_t m = 0; m < M; ++m) {
        const bool ok = visibility == image_visibility::all
                            ? true
                            : visibility == image_visibility::preceding ? seq.position[m] < j
                                                                         : (seq.position[m] < j && seq.image_id[m] == latest);
        if (ok) visible.push_back(m);
    }
}

/// One head of one text row: p[t] = softmax_t(q·k_t·scale) over the visible tokens (double), and
/// out (D) += Σ_t p[t]·v_t. off is the kv head's column offset in the stored rows of width Wkv.
inline void cross_attend_head(const float* qv, const cross_kv_store::sequence& seq, const std::vector<std::int64_t>& visible,
                              std::int64_t off, std::int64_t D, std::int64_t Wkv, float scale, std::vector<double>& p,
                              float* outv) {
    double mx = -std::numeric_limits<double>::infinity();
    for (std::size_t t = 0; t < visible.size(); ++t) {
        const float* kv = seq.keys.data() + visible[t] * Wkv + off;
        double dot = 0.0;
        for (std::int64_t d = 0; d < D; ++d) dot += static_cast<double>(qv[d]) * kv[d];
        p[t] = dot * scale;
        mx = std::max(mx, p[t]);
    }
    double sum = 0.0;
    for (auto& x : p) sum += (x = std::exp(x - mx));
    for (auto& x : p) x /= sum;
    if (!outv) return;
    for (std::size_t t = 0; t < visible.size(); ++t) {
        const float* vv = seq.values.data() + visible[t] * Wkv + off;
        const float wgt = static_cast<float>(p[t]);
        for (std::int64_t d = 0; d < D; ++d) outv[d] += wgt * vv[d];
    }
}

}  // namespace detail

/// Runs one block on h (N, H) in place. `inputs` (N, H) are the call's input embeddings (their image
/// rows become keys/values, appended to `store`). heads/kv_heads/head_dim give the attention shape.
inline void gated_cross_attention_forward(tensor_ref<float, 2> h, tensor_ref<const float, 2> inputs,
                                          const row_metadata& rows, const gated_cross_attention_weights& w,
                                          std::int64_t heads, std::int64_t kv_heads, std::int64_t head_dim,
                                          float eps, image_visibility visibility, cross_kv_store& store,
                                          cross_attention_scratch& s, int num_threads = 0) {
    const std::int64_t N = h.shape[0], H = h.shape[1], D = head_dim, Wq = heads * D, Wkv = kv_heads * D;
    const std::int64_t group = heads / kv_heads;
    // 1. Keys/values of the new image rows.
    std::vector<std::int64_t> image_rows;
    for (std::int64_t n = 0; n < N; ++n)
        if (rows.valid[n] && rows.type[n] == 2) image_rows.push_back(n);
    if (!image_rows.empty()) {
        const std::int64_t M = static_cast<std::int64_t>(image_rows.size());
        std::vector<float> e(static_cast<std::size_t>(M * H));
        for (std::int64_t m = 0; m < M; ++m) std::copy_n(inputs.ptr(image_rows[m]), H, e.data() + m * H);
        s.kv.resize(static_cast<std::size_t>(2 * M * Wkv));
        tensor_ref<const float, 2> ev(e.data(), {M, H});
        tensor_ref<float, 2> kr(s.kv.data(), {M, Wkv}), vr(s.kv.data() + M * Wkv, {M, Wkv});
        linear_forward(ev, w.k, nullptr, kr, num_threads);
        linear_forward(ev, w.v, nullptr, vr, num_threads);
        for (std::int64_t m = 0; m < M; ++m) {
            auto& seq = store.seqs[static_cast<std::size_t>(rows.seq[image_rows[m]])];
            seq.keys.insert(seq.keys.end(), kr.ptr(m), kr.ptr(m) + Wkv);
            seq.values.insert(seq.values.end(), vr.ptr(m), vr.ptr(m) + Wkv);
            seq.position.push_back(rows.pos[image_rows[m]]);
            seq.image_id.push_back(rows.image_id[image_rows[m]]);
        }
    }
    // 2. Attention of text rows over the visible image tokens.
    s.xn.resize(static_cast<std::size_t>(N * H));
    s.q.resize(static_cast<std::size_t>(N * Wq));
    s.attn.assign(static_cast<std::size_t>(N * Wq), 0.0f);
    s.proj.resize(static_cast<std::size_t>(N * H));
    tensor_ref<float, 2> xn(s.xn.data(), {N, H}), q(s.q.data(), {N, Wq}), attn(s.attn.data(), {N, Wq}),
        proj(s.proj.data(), {N, H});
    rmsnorm_forward(h, w.attn_norm.data(), eps, xn, num_threads);
    linear_forward(xn, w.q, nullptr, q, num_threads);
    const float scale = 1.0f / std::sqrt(static_cast<float>(D));
    std::int64_t stored = 0;
    for (const auto& sq : store.seqs) stored = std::max<std::int64_t>(stored, static_cast<std::int64_t>(sq.position.size()));
    const int att_threads = double(N) * double(stored) * double(Wq) < double(1 << 18) ? 1 : num_threads;
    parallel_for(N, att_threads, [&](std::int64_t n, int) {
        if (!rows.valid[n] || rows.type[n] != 1) return;
        const auto& seq = store.seqs[static_cast<std::size_t>(rows.seq[n])];
        std::vector<std::int64_t> visible;
        detail::cross_visible(seq, rows.pos[n], visibility, visible);
        if (visible.empty()) return;
        std::vector<double> p(visible.size());
        for (std::int64_t hq = 0; hq < heads; ++hq)
            detail::cross_attend_head(q.ptr(n) + hq * D, seq, visible, (hq / group) * D, D, Wkv, scale, p,
                                      attn.ptr(n) + hq * D);
    });
    linear_forward(attn, w.o, nullptr, proj, num_threads);
    const float ga = std::tanh(w.attn_gate);
    for (std::int64_t n = 0; n < N; ++n) {
        if (!rows.valid[n] || rows.type[n] != 1) continue;
        for (std::int64_t i = 0; i < H; ++i) h(n, i) += ga * proj(n, i);
    }
    // 3. Gated MLP on text rows.
    rmsnorm_forward(h, w.mlp_norm.data(), eps, xn, num_threads);
    swiglu_forward(xn, w.mlp, proj, s.mlp, num_threads);
    const float gm = std::tanh(w.mlp_gate);
    for (std::int64_t n = 0; n < N; ++n) {
        if (!rows.valid[n] || rows.type[n] != 1) continue;
        for (std::int64_t i = 0; i < H; ++i) h(n, i) += gm * proj(n, i);
    }
}

}  // namespace mmca::nn
