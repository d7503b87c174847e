// mmca/nn/grad/cross_attention_backward.hpp - backward of the gated cross-attention block
// (nn/cross_attention.hpp, SPEC §2.5).
//
// Forward on the text rows T (valid, type 1), with e the image rows of the input embeddings:
//   a  = RMSNorm_a(h);  q = a·Wqᵀ;  K = e·Wkᵀ;  V = e·Wvᵀ
//   c  = per head softmax_{visible}(q·Kᵀ/√D)·V;  p = c·Woᵀ;  h1 = h + tanh(α_a)·p   (T rows)
//   m  = swiglu(RMSNorm_m(h1));                              h2 = h1 + tanh(α_m)·m  (T rows)
// Backward, given dh2:
//   dα_m = (1 − tanh²α_m)·Σ_T dh2·m;  dm = tanh(α_m)·dh2 on T;  dh1 = dh2 + RMSNorm_mᵀ(swigluᵀ(dm))
//   dα_a = (1 − tanh²α_a)·Σ_T dh1·p;  dp = tanh(α_a)·dh1 on T;  dc = dp·Wo
//   per row and head, P the probabilities: dP = dc·Vᵀ, dS = P ⊙ (dP − Σ P⊙dP),
//   dq = dS·K/√D, dK += dSᵀ·q/√D, dV += Pᵀ·dc
//   dh = dh1 + RMSNorm_aᵀ(dq·Wq);  de = dK·Wk + dV·Wv (added to the image rows' input gradient)
// Weight gradients are added to the non-empty accumulators of gated_cross_attention_grads (a null
// grads pointer: the block is frozen, only input gradients flow). The probabilities are recomputed
// from the taped q and keys, in double, exactly as the forward computed them.
#pragma once

#include "mmca/core/error.hpp"
#include "mmca/core/tensor.hpp"
#include "mmca/core/threading.hpp"
#include "mmca/nn/cross_attention.hpp"
#include "mmca/nn/grad/linear_backward.hpp"
#include "mmca/nn/grad/mlp_backward.hpp"
#include "mmca/nn/grad/norm_backward.hpp"

#include <cmath>
#include <cstdint>
#include <vector>

namespace mmca::nn {

/// float32 gradient accumulators of one block's parameters (shapes of the weights).
struct gated_cross_attention_grads {
    std::vector<float> attn_norm;      // (H)
    std::vector<float> q, k, v, o;     // like the weights
    float attn_gate = 0.0f;
    std::vector<float> mlp_norm;       // (H)
    std::vector<float> gate, up, down; // the MLP's weights
    float mlp_gate = 0.0f;
};

inline gated_cross_attention_grads make_gated_cross_attention_grads(const gated_cross_attention_weights& w) {
    gated_cross_attention_grads g;
    auto z = [](const matrix_ref& m) { return std::vector<float>(static_cast<std::size_t>(m.rows * m.cols), 0.0f); };
    g.attn_norm.assign(w.attn_norm.size(), 0.0f);
    g.mlp_norm.assign(w.mlp_norm.size(), 0.0f);
    g.q = z(w.q);
    g.k = z(w.k);
    g.v = z(w.v);
    g.o = z(w.o);
    g.gate = z(w.mlp.gate);
    g.up = z(w.mlp.up);
    g.down = z(w.mlp.down);
    return g;
}

/// What the block's backward needs of its forward.
struct cross_attention_tape {
    std::vector<float> h_in, h_mid;       // (N, H) entering the block, after the attention term
    std::vector<float> q, attn;           // (N, Hq·D) queries, attention output before o
    std::vector<float> proj, mlp;         // (N, H) o(attn) and the MLP output (before the gates)
    cross_kv_store store;                 // keys/values of the image rows, per sequence
    std::vector<std::vector<std::int64_t>> image_rows;  // per sequence: row of each stored token
    std::vector<float> image_inputs;      // (M, H) the input rows of the stored tokens, in store order
};

/// Forward of one block on h (N, H) in place, as gated_cross_attention_forward over a fresh store
/// (every image row of the call gives keys/values), keeping the tape. `batch` sequences.
inline void gated_cross_attention_forward_tape(tensor_ref<float, 2> h, tensor_ref<const float, 2> inputs,
                                               const row_metadata& rows, std::int64_t batch,
                                               const gated_cross_attention_weights& w, std::int64_t heads,
                                               std::int64_t kv_heads, std::int64_t head_dim, float eps,
                                               image_visibility visibility, cross_attention_tape& t,
                                               int num_threads = 0) {
    const std::int64_t N = h.shape[0], H = h.shape[1], D = head_dim, Wq = heads * D;
    t.h_in.assign(h.data, h.data + N * H);
    t.store.seqs.assign(static_cast<std::size_t>(batch), cross_kv_store::sequence{});
    t.image_rows.assign(static_cast<std::size_t>(batch), {});
    t.image_inputs.clear();
    for (std::int64_t n = 0; n < N; ++n)
        if (rows.valid[n] && rows.type[n] == 2) t.image_rows[static_cast<std::size_t>(rows.seq[n])].push_back(n);
    for (const auto& r : t.image_rows)
        for (std::int64_t n : r) t.image_inputs.insert(t.image_inputs.end(), inputs.ptr(n), inputs.ptr(n) + H);
    // The inference forward computes the attention term; the tape takes its intermediates.
    cross_attention_scratch s;
    gated_cross_attention_weights attn_only = w;
    attn_only.mlp_gate = 0.0f;
    // Run the block with the MLP gate at 0 to obtain h1 = h + tanh(α_a)·p and the scratch (q, attn,
    // proj); the MLP term is then added here with the real gate.
    gated_cross_attention_forward(h, inputs, rows, attn_only, heads, kv_heads, head_dim, eps, visibility, t.store, s,
                                  num_threads);
    t.q = s.q;
    t.attn = s.attn;
    // s.proj holds the MLP output (the block reuses the buffer); recompute the attention's o(attn).
    t.proj.resize(static_cast<std::size_t>(N * H));
    linear_forward(tensor_ref<const float, 2>(t.attn.data(), {N, Wq}), w.o, nullptr,
                   tensor_ref<float, 2>(t.proj.data(), {N, H}), num_threads);
    t.mlp = s.proj;
    const float gm = std::tanh(w.mlp_gate);
    // h now holds h1 + tanh(0)·m = h1 (adding 0·m leaves the bits alone except for −0): the taped h_mid.
    t.h_mid.assign(h.data, h.data + N * H);
    for (std::int64_t n = 0; n < N; ++n) {
        if (!rows.valid[n] || rows.type[n] != 1) continue;
        for (std::int64_t i = 0; i < H; ++i) h(n, i) += gm * t.mlp[static_cast<std::size_t>(n * H + i)];
    }
}

/// Backward of gated_cross_attention_forward_tape. dh (N, H): the gradient of the block's output on
/// entry, of its input on return. dinputs (N, H): the image rows' key/value gradients are added.
/// grads: accumulators of the block's parameters, or null (frozen).
inline void gated_cross_attention_backward(const row_metadata& rows, const gated_cross_attention_weights& w,
                                           std::int64_t heads, std::int64_t kv_heads, std::int64_t head_dim, float eps,
                                           image_visibility visibility, const cross_attention_tape& t,
                                           tensor_ref<float, 2> dh, tensor_ref<float, 2> dinputs,
                                           gated_cross_attention_grads* grads, int num_threads = 0) {
    using mmca::detail::to_text;
    const char* where = "mmca::nn::gated_cross_attention_backward";
    const std::int64_t N = dh.shape[0], H = dh.shape[1], D = head_dim, Wq = heads * D, Wkv = kv_heads * D;
    const std::int64_t group = heads / kv_heads;
    MMCA_CHECK_ARG(static_cast<std::int64_t>(t.h_in.size()) == N * H && static_cast<std::int64_t>(t.q.size()) == N * Wq,
                   where, "tape", to_text(t.h_in.size()) + " taped values", "the tape of a forward over (" + to_text(N) +
                   ", " + to_text(H) + ")");
    MMCA_CHECK_ARG(dinputs.shape[0] == N && dinputs.shape[1] == H && dinputs.contiguous(), where, "dinputs",
                   dinputs.shape_text(), "a contiguous (" + to_text(N) + ", " + to_text(H) + ")");
    if (grads) {
        auto same = [&](const std::vector<float>& g, std::size_t n, const char* name) {
            MMCA_CHECK_ARG(g.size() == n, where, "grads", std::string(name) + " of " + to_text(g.size()) + " values",
                           to_text(n) + " values (make_gated_cross_attention_grads)");
        };
        same(grads->attn_norm, w.attn_norm.size(), "attn_norm");
        same(grads->mlp_norm, w.mlp_norm.size(), "mlp_norm");
        same(grads->q, static_cast<std::size_t>(w.q.rows * w.q.cols), "q");
        same(grads->k, static_cast<std::size_t>(w.k.rows * w.k.cols), "k");
        same(grads->v, static_cast<std::size_t>(w.v.rows * w.v.cols), "v");
        same(grads->o, static_cast<std::size_t>(w.o.rows * w.o.cols), "o");
        same(grads->gate, static_cast<std::size_t>(w.mlp.gate.rows * w.mlp.gate.cols), "gate");
        same(grads->up, static_cast<std::size_t>(w.mlp.up.rows * w.mlp.up.cols), "up");
        same(grads->down, static_cast<std::size_t>(w.mlp.down.rows * w.mlp.down.cols), "down");
    }
    auto ptr = [&](std::vector<float> gated_cross_attention_grads::*m) -> float* {
        return grads ? (grads->*m).data() : nullptr;
    };
    auto text = [&](std::int64_t n) { return rows.valid[n] && rows.type[n] == 1; };
    std::vector<float> branch(static_cast<std::size_t>(N * H)), dx(static_cast<std::size_t>(N * H)),
        xn(static_cast<std::size_t>(N * H));
    tensor_ref<float, 2> br(branch.data(), {N, H}), dxr(dx.data(), {N, H}), xr(xn.data(), {N, H});

    // A gated term out = in + tanh(α)·y on text rows: the upstream gradient of y (into `branch`) and
    // dL/dα = (1 - tanh²α) Σ dout·y.
    auto gated_term = [&](float gate, const std::vector<float>& y) {
        double sum = 0.0;
        for (std::int64_t n = 0; n < N; ++n)
            for (std::int64_t i = 0; i < H; ++i) {
                const std::size_t k = static_cast<std::size_t>(n * H + i);
                branch[k] = text(n) ? gate * dh.data[k] : 0.0f;
                if (text(n)) sum += static_cast<double>(dh.data[k]) * y[k];
            }
        return static_cast<float>((1.0 - double(gate) * gate) * sum);
    };

    // MLP term: h2 = h1 + tanh(α_m)·m on text rows.
    const float gm = std::tanh(w.mlp_gate), ga = std::tanh(w.attn_gate);
    const float d_mlp_gate = gated_term(gm, t.mlp);
    if (grads) grads->mlp_gate += d_mlp_gate;
    const tensor_ref<const float, 2> h_mid(t.h_mid.data(), {N, H}), h_in(t.h_in.data(), {N, H});
    rmsnorm_forward(h_mid, w.mlp_norm.data(), eps, xr, num_threads);
    swiglu_backward_scratch mlp_scratch;
    swiglu_backward(xr, w.mlp, br, dxr,
                    grads ? swiglu_grads{grads->gate.data(), grads->up.data(), grads->down.data()} : swiglu_grads{},
                    mlp_scratch, num_threads);
    rmsnorm_backward(h_mid, w.mlp_norm.data(), eps, dxr, dxr, grads ? grads->mlp_norm.data() : nullptr, num_threads);
    for (std::int64_t i = 0; i < N * H; ++i) dh.data[i] += dx[static_cast<std::size_t>(i)];

    // Attention term: h1 = h + tanh(α_a)·o(c) on text rows.
    const float d_attn_gate = gated_term(ga, t.proj);
    if (grads) grads->attn_gate += d_attn_gate;
    std::vector<float> dc(static_cast<std::size_t>(N * Wq)), dq(static_cast<std::size_t>(N * Wq), 0.0f);
    linear_backward(tensor_ref<const float, 2>(t.attn.data(), {N, Wq}), w.o, br, tensor_ref<float, 2>(dc.data(), {N, Wq}),
                    ptr(&gated_cross_attention_grads::o), nullptr, num_threads);

    // Softmax attention per sequence (its rows and its keys/values belong to it alone).
    const std::int64_t B = static_cast<std::int64_t>(t.store.seqs.size());
    std::vector<std::vector<std::int64_t>> seq_rows(static_cast<std::size_t>(B));
    for (std::int64_t n = 0; n < N; ++n)
        if (text(n)) seq_rows[static_cast<std::size_t>(rows.seq[n])].push_back(n);
    std::vector<std::vector<float>> dk(static_cast<std::size_t>(B)), dv(static_cast<std::size_t>(B));
    const float scale = 1.0f / std::sqrt(static_cast<float>(D));
    parallel_for(B, num_threads, [&](std::int64_t b, int) {
        const auto& seq = t.store.seqs[static_cast<std::size_t>(b)];
        auto& dkb = dk[static_cast<std::size_t>(b)];
        auto& dvb = dv[static_cast<std::size_t>(b)];
        dkb.assign(seq.keys.size(), 0.0f);
        dvb.assign(seq.values.size(), 0.0f);
        std::vector<std::int64_t> visible;
        std::vector<double> p, dp;
        for (std::int64_t n : seq_rows[static_cast<std::size_t>(b)]) {
            detail::cross_visible(seq, rows.pos[n], visibility, visible);
            if (visible.empty()) continue;
            p.resize(visible.size());
            dp.resize(visible.size());
            for (std::int64_t hq = 0; hq < heads; ++hq) {
                const std::int64_t off = (hq / group) * D;
                const float* qv = t.q.data() + n * Wq + hq * D;
                const float* dov = dc.data() + n * Wq + hq * D;
                detail::cross_attend_head(qv, seq, visible, off, D, Wkv, scale, p, nullptr);
                double s = 0.0;
                for (std::size_t j = 0; j < visible.size(); ++j) {
                    const float* vv = seq.values.data() + visible[j] * Wkv + off;
                    double acc = 0.0;
                    for (std::int64_t d = 0; d < D; ++d) acc += static_cast<double>(dov[d]) * vv[d];
                    dp[j] = acc;
                    s += p[j] * acc;
                }
                float* dqv = dq.data() + n * Wq + hq * D;
                for (std::size_t j = 0; j < visible.size(); ++j) {
                    const std::int64_t m = visible[j];
                    const double ds = p[j] * (dp[j] - s) * scale;
                    const float* kv = seq.keys.data() + m * Wkv + off;
                    float* dkv = dkb.data() + m * Wkv + off;
                    float* dvv = dvb.data() + m * Wkv + off;
                    for (std::int64_t d = 0; d < D; ++d) {
                        dqv[d] += static_cast<float>(ds * kv[d]);
                        dkv[d] += static_cast<float>(ds * qv[d]);
                        dvv[d] += static_cast<float>(p[j] * dov[d]);
                    }
                }
            }
        }
    });

    // q = RMSNorm_a(h)·Wqᵀ.
    rmsnorm_forward(h_in, w.attn_norm.data(), eps, xr, num_threads);
    linear_backward(xr, w.q, tensor_ref<const float, 2>(dq.data(), {N, Wq}), dxr, ptr(&gated_cross_attention_grads::q), nullptr, num_threads);
    rmsnorm_backward(h_in, w.attn_norm.data(), eps, dxr, dxr, grads ? grads->attn_norm.data() : nullptr, num_threads);
    for (std::int64_t i = 0; i < N * H; ++i) dh.data[i] += dx[static_cast<std::size_t>(i)];

    // K = e·Wkᵀ, V = e·Wvᵀ for the image rows e of the inputs (taped in store order).
    std::int64_t M = 0;
    for (const auto& r : t.image_rows) M += static_cast<std::int64_t>(r.size());
    if (M == 0) return;
    std::vector<float> dkc(static_cast<std::size_t>(M * Wkv)),
        dvc(static_cast<std::size_t>(M * Wkv)), de(static_cast<std::size_t>(M * H));
    std::int64_t at = 0;
    for (std::int64_t b = 0; b < B; ++b) {
        const auto& r = t.image_rows[static_cast<std::size_t>(b)];
        const std::int64_t m = static_cast<std::int64_t>(r.size());
        std::copy_n(dk[static_cast<std::size_t>(b)].data(), m * Wkv, dkc.data() + at * Wkv);
        std::copy_n(dv[static_cast<std::size_t>(b)].data(), m * Wkv, dvc.data() + at * Wkv);
        at += m;
    }
    MMCA_CHECK_ARG(static_cast<std::int64_t>(t.image_inputs.size()) == M * H, where, "tape",
                   to_text(t.image_inputs.size()) + " taped input values", to_text(M * H) + " (" + to_text(M) + " image rows)");
    const tensor_ref<const float, 2> er(t.image_inputs.data(), {M, H});
    tensor_ref<float, 2> der(de.data(), {M, H});
    linear_backward(er, w.k, tensor_ref<const float, 2>(dkc.data(), {M, Wkv}), der, ptr(&gated_cross_attention_grads::k), nullptr, num_threads);
    linear_backward(er, w.v, tensor_ref<const float, 2>(dvc.data(), {M, Wkv}), der, ptr(&gated_cross_attention_grads::v), nullptr, num_threads,
                    /*accumulate_dx=*/true);
    at = 0;
    for (std::int64_t b = 0; b < B; ++b)
        for (std::int64_t n : t.image_rows[static_cast<std::size_t>(b)]) {
            float* d = dinputs.ptr(n);
            for (std::int64_t i = 0; i < H; ++i) d[i] += de[static_cast<std::size_t>(at * H + i)];
            ++at;
        }
}

}  // namespace mmca::nn
