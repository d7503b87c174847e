// mmca/language/train.hpp - the LLaMa-2 decoder's forward with a tape, and its backward to the inputs.
//
//   mmca::llama_tape tape;
//   mmca::llama_forward_train(config, weights, attention, embeddings, types, image_ids, lens, logits, tape);
//   ... dlogits from the loss ...
//   mmca::llama_backward(config, weights, attention, tape, dlogits, dembeddings);
//
// The decoder is frozen in the paper's training (SPEC §1, §8): its weights get no gradients, but
// the gradient of the loss flows through every layer to the input embeddings — the projected image
// rows and the trainable token embedding. Two optional trainable additions:
//   * LoRA adapters on q/k/v/o (language/lora.hpp): pass the same llama_lora to the forward and
//     the backward; the backward adds dA/dB to grads->lora (the frozen W still gets none).
//   * gated cross-attention blocks (SPEC §2.5, nn/grad/cross_attention_backward.hpp): their
//     parameters get gradients in grads->cross_blocks (one entry per block, or none: frozen), and
//     the image rows' keys/values send gradient back to the input embeddings. The forward here runs whole sequences from position 0
// (no KV cache) and keeps, per layer, the residual stream before each RMSNorm, the rotated q, k and
// v, and the attention's per-group statistics and outputs (mmca::attention_forward_with_stats).
// The backward recomputes the MLP's gate/up products and the attention probabilities from them.
//
// Per layer (SPEC §5):  h' = h + o(Attn(RoPE(q(n1)), RoPE(k(n1)), v(n1))), n1 = RMSNorm(h)
//                       h'' = h' + down(silu(gate(n2)) ⊙ up(n2)),        n2 = RMSNorm(h')
// Under causal_cross the image rows keep their input through every layer (SPEC §2.4), so their
// residual branches carry no gradient; rows past a sequence's length are padding and get none.
// A gated cross-attention block runs before every cross_attention_every-th layer, as in llama_model.
#pragma once

#include "mmca/attention/attention.hpp"
#include "mmca/attention/attention_backward.hpp"
#include "mmca/attention/stats.hpp"
#include "mmca/attention/types.hpp"
#include "mmca/core/error.hpp"
#include "mmca/core/tensor.hpp"
#include "mmca/language/config.hpp"
#include "mmca/language/lora.hpp"
#include "mmca/language/weights.hpp"
#include "mmca/nn/cross_attention.hpp"
#include "mmca/nn/grad/cross_attention_backward.hpp"
#include "mmca/nn/grad/linear_backward.hpp"
#include "mmca/nn/grad/mlp_backward.hpp"
#include "mmca/nn/grad/norm_backward.hpp"
#include "mmca/nn/grad/rope_backward.hpp"
#include "mmca/nn/linear.hpp"
#include "mmca/nn/lora.hpp"
#include "mmca/nn/mlp.hpp"
#include "mmca/nn/rmsnorm.hpp"
#include "mmca/nn/rope.hpp"

#include <cstdint>
#include <vector>

namespace mmca {

/// What llama_backward needs of a forward call.
struct llama_tape {
    struct layer {
        std::vector<float> h_in;       // (N, H) residual stream entering the layer
        std::vector<float> h_mid;      // (N, H) after the attention residual
        std::vector<float> q, k, v;    // (B, Hq|Hkv, L, D) rotated q, k and v
        std::vector<float> out;        // (B, Hq, L, D) attention output
        std::vector<float> row_max, row_sum, group_out;  // attention statistics
    };
    std::int64_t batch = 0, length = 0;
    std::vector<layer> layers;
    std::vector<float> h_final;           // (N, H) before the final RMSNorm
    std::vector<std::int8_t> types;       // (B, L) as given (padding rows 0)
    std::vector<std::int32_t> image_ids;  // (B, L) or empty
    std::vector<std::int32_t> lens;       // (B)
    std::vector<std::uint8_t> updated;    // (N) rows whose residual branches count
    nn::rope_table rope;
    // Gated cross-attention blocks (empty without them).
    std::vector<nn::cross_attention_tape> cross;  // one per block
    std::vector<std::int64_t> row_seq, row_pos;   // (N)
    std::vector<std::int32_t> row_image;          // (N) image id of image rows (runs numbered when none given)
    std::vector<std::uint8_t> row_valid;          // (N)
    // LoRA adapters the forward ran with (0: none).
    std::int64_t lora_rank = 0;
    unsigned lora_targets = 0;
};

/// Gradient accumulators of the trainable additions to the frozen decoder (added to, never reset).
struct llama_grads {
    std::vector<nn::gated_cross_attention_grads> cross_blocks;  ///< one per block, or empty: blocks frozen
    llama_lora lora;  ///< dA in .a, dB in .b (make_llama_lora_grads), or no layers: no adapters
};

/// Zeroed accumulators: the cross blocks' parameters (when the weights have blocks and
/// `cross_blocks`), and the adapters of `lora` (when given).
inline llama_grads make_llama_grads(const llama_weights& w, const llama_lora* lora = nullptr, bool cross_blocks = true) {
    llama_grads g;
    if (cross_blocks)
        for (const auto& b : w.cross_blocks) g.cross_blocks.push_back(nn::make_gated_cross_attention_grads(b));
    if (lora) g.lora = make_llama_lora_grads(*lora);
    return g;
}

namespace detail {

inline void check_train_config(const llama_config& c, const llama_weights& w, const char* where) {
    c.validate(where);
    MMCA_CHECK_ARG(static_cast<std::int64_t>(w.cross_blocks.size()) == c.num_cross_blocks(), where, "weights",
                   to_text(w.cross_blocks.size()) + " gated cross-attention blocks",
                   to_text(c.num_cross_blocks()) + " (cross_attention_every " + to_text(c.cross_attention_every) + ")");
    MMCA_CHECK_ARG(static_cast<std::int64_t>(w.layers.size()) == c.num_layers, where, "weights",
                   to_text(w.layers.size()) + " layers", to_text(c.num_layers) + " layers");
}

inline nn::row_metadata train_rows(const llama_tape& t) {
    return nn::row_metadata{t.row_seq.data(), t.row_pos.data(), t.types.data(), t.row_image.data(), t.row_valid.data()};
}

/// Adds the adapter of projection p (if any) to y = x·Wᵀ.
inline void lora_add(const llama_lora* lora, std::size_t layer, std::size_t p, tensor_ref<const float, 2> x,
                     tensor_ref<float, 2> y) {
    if (lora && lora->has(p)) nn::lora_forward(x, lora->layers[layer][p], lora->config.scale(), y);
}

inline token_layout train_tokens(const llama_tape& t) {
    token_layout tl;
    tl.types = tensor_ref<const std::int8_t, 2>(t.types.data(), {t.batch, t.length});
    if (!t.image_ids.empty()) tl.image_ids = tensor_ref<const std::int32_t, 2>(t.image_ids.data(), {t.batch, t.length});
    tl.kv_lens = tensor_ref<const std::int32_t, 1>(t.lens.data(), {t.batch});
    tl.q_lens = tl.kv_lens;
    return tl;
}

}  // namespace detail

/// Forward of whole sequences: embeddings (B, L, H), types (B, L) (0 pad, 1 text, 2 image),
/// image_ids (B, L) or absent, lens (B) or absent (all L). Writes logits (B, L, V) (rows past a
/// sequence's length are 0) and fills the tape. lora: adapters on the attention projections, or
/// null; they must stay unchanged until llama_backward has run.
inline void llama_forward_train(const llama_config& c, const llama_weights& w, const attention_options& attention,
                                tensor_ref<const float, 3> embeddings, tensor_ref<const std::int8_t, 2> types,
                                tensor_ref<const std::int32_t, 2> image_ids, tensor_ref<const std::int32_t, 1> lens,
                                tensor_ref<float, 3> logits, llama_tape& tape, int num_threads = 0,
                                const llama_lora* lora = nullptr) {
    using detail::to_text;
    const char* where = "mmca::llama_forward_train";
    detail::check_train_config(c, w, where);
    if (lora) check_llama_lora(c, *lora, where);
    const std::int64_t B = embeddings.shape[0], L = embeddings.shape[1], H = c.hidden_size, V = c.vocab_size;
    const std::int64_t N = B * L, Hq = c.num_heads, Hkv = c.num_kv_heads, D = c.head_dim();
    const std::int64_t Wq = Hq * D, Wkv = Hkv * D;
    MMCA_CHECK_ARG(embeddings.shape[2] == H && embeddings.contiguous(), where, "embeddings", embeddings.shape_text(),
                   "a contiguous (B, L, " + to_text(H) + ") tensor");
    MMCA_CHECK_ARG(L <= c.max_positions, where, "embeddings", to_text(L) + " positions",
                   "at most max_position_embeddings (" + to_text(c.max_positions) + ")");
    MMCA_CHECK_ARG(!types.empty() && types.shape[0] == B && types.shape[1] == L, where, "token_types",
                   types.shape_text(), "(" + to_text(B) + ", " + to_text(L) + ")");
    if (!image_ids.empty())
        MMCA_CHECK_ARG(image_ids.shape[0] == B && image_ids.shape[1] == L, where, "image_ids", image_ids.shape_text(),
                       "(" + to_text(B) + ", " + to_text(L) + ") like token_types");
    MMCA_CHECK_ARG(logits.shape[0] == B && logits.shape[1] == L && logits.shape[2] == V && logits.contiguous(), where,
                   "logits", logits.shape_text(), "a contiguous (" + to_text(B) + ", " + to_text(L) + ", " + to_text(V) + ")");
    tape.batch = B;
    tape.length = L;
    tape.lens.assign(static_cast<std::size_t>(B), static_cast<std::int32_t>(L));
    if (!lens.empty()) {
        MMCA_CHECK_ARG(lens.shape[0] == B, where, "lens", lens.shape_text(), "(" + to_text(B) + ")");
        for (std::int64_t b = 0; b < B; ++b) {
            MMCA_CHECK_ARG(lens(b) >= 0 && lens(b) <= L, where, "lens", "lens[" + to_text(b) + "] = " + to_text(lens(b)),
                           "a count in [0, " + to_text(L) + "]");
            tape.lens[static_cast<std::size_t>(b)] = lens(b);
        }
    }
    const bool keep_images = attention.variant == attention_variant::causal_cross;
    tape.types.assign(static_cast<std::size_t>(N), 0);
    tape.updated.assign(static_cast<std::size_t>(N), 0);
    tape.image_ids.clear();
    if (!image_ids.empty()) tape.image_ids.assign(static_cast<std::size_t>(N), -1);
    std::vector<std::int64_t> positions(static_cast<std::size_t>(N));
    for (std::int64_t b = 0; b < B; ++b)
        for (std::int64_t i = 0; i < L; ++i) {
            const std::int64_t n = b * L + i;
            positions[n] = i;
            if (i >= tape.lens[static_cast<std::size_t>(b)]) continue;
            tape.types[n] = types(b, i);
            if (!image_ids.empty()) tape.image_ids[n] = image_ids(b, i);
            tape.updated[n] = !(keep_images && types(b, i) == 2);
        }
    nn::rope_build(c.rope(), positions.data(), N, L, tape.rope);
    tape.lora_rank = lora ? lora->config.rank : 0;
    tape.lora_targets = lora ? lora->config.targets : 0u;
    // Row metadata of the cross blocks (as llama_model numbers images when no ids are given: each
    // run of image rows is a new image).
    const std::int64_t blocks = c.num_cross_blocks();
    tape.cross.clear();
    tape.row_seq.assign(static_cast<std::size_t>(N), 0);
    tape.row_pos = positions;
    tape.row_image.assign(static_cast<std::size_t>(N), -1);
    tape.row_valid.assign(static_cast<std::size_t>(N), 0);
    for (std::int64_t b = 0; b < B; ++b) {
        std::int32_t next = 0;
        for (std::int64_t i = 0; i < L; ++i) {
            const std::int64_t n = b * L + i;
            tape.row_seq[n] = b;
            tape.row_valid[n] = i < tape.lens[static_cast<std::size_t>(b)];
            if (!tape.row_valid[n] || tape.types[n] != 2) continue;
            if (!image_ids.empty())
                tape.row_image[n] = image_ids(b, i);
            else
                tape.row_image[n] = (i > 0 && tape.types[n - 1] == 2) ? tape.row_image[n - 1] : next++;
        }
    }
    if (blocks > 0) tape.cross.resize(static_cast<std::size_t>(blocks));
    std::vector<float> h(embeddings.data, embeddings.data + N * H), xn(N * H), proj(N * H);
    std::vector<float> q(N * Wq), k(N * Wkv), v(N * Wkv);
    nn::swiglu_scratch mlp;
    tensor_ref<float, 2> hr(h.data(), {N, H}), xr(xn.data(), {N, H}), pr(proj.data(), {N, H});
    tensor_ref<float, 2> qr(q.data(), {N, Wq}), kr(k.data(), {N, Wkv}), vr(v.data(), {N, Wkv});
    const float eps = static_cast<float>(c.rms_norm_eps);
    auto bias = [](const std::vector<float>& b) { return b.empty() ? nullptr : b.data(); };
    auto add_residual = [&]() {
        for (std::int64_t n = 0; n < N; ++n)
            if (tape.updated[n])
                for (std::int64_t i = 0; i < H; ++i) h[n * H + i] += proj[n * H + i];
    };
    const token_layout tokens = detail::train_tokens(tape);
    const nn::row_metadata meta = detail::train_rows(tape);
    const tensor_ref<const float, 2> inputs(embeddings.data, {N, H});
    tape.layers.resize(static_cast<std::size_t>(c.num_layers));
    std::size_t block = 0;
    for (std::int64_t l = 0; l < c.num_layers; ++l) {
        if (c.cross_block_before(l)) {
            nn::gated_cross_attention_forward_tape(hr, inputs, meta, B, w.cross_blocks[block], Hq, Hkv, D, eps,
                                                   attention.visibility, tape.cross[block], num_threads);
            ++block;
        }
        const auto& lw = w.layers[static_cast<std::size_t>(l)];
        auto& t = tape.layers[static_cast<std::size_t>(l)];
        const auto li = static_cast<std::size_t>(l);
        t.h_in = h;
        nn::rmsnorm_forward(hr, lw.attn_norm.data(), eps, xr, num_threads);
        nn::linear_forward(xr, lw.q, bias(lw.q_bias), qr, num_threads);
        nn::linear_forward(xr, lw.k, bias(lw.k_bias), kr, num_threads);
        nn::linear_forward(xr, lw.v, bias(lw.v_bias), vr, num_threads);
        detail::lora_add(lora, li, 0, xr, qr);
        detail::lora_add(lora, li, 1, xr, kr);
        detail::lora_add(lora, li, 2, xr, vr);
        nn::rope_apply(q.data(), Wq, Hq, tape.rope);
        nn::rope_apply(k.data(), Wkv, Hkv, tape.rope);
        t.q.resize(static_cast<std::size_t>(N * Wq));
        t.k.resize(static_cast<std::size_t>(N * Wkv));
        t.v.resize(static_cast<std::size_t>(N * Wkv));
        for (std::int64_t b = 0; b < B; ++b)
            for (std::int64_t i = 0; i < L; ++i) {
                const std::int64_t n = b * L + i;
                for (std::int64_t hd = 0; hd < Hq; ++hd)
                    std::copy_n(q.data() + n * Wq + hd * D, D, t.q.data() + ((b * Hq + hd) * L + i) * D);
                for (std::int64_t hd = 0; hd < Hkv; ++hd) {
                    std::copy_n(k.data() + n * Wkv + hd * D, D, t.k.data() + ((b * Hkv + hd) * L + i) * D);
                    std::copy_n(v.data() + n * Wkv + hd * D, D, t.v.data() + ((b * Hkv + hd) * L + i) * D);
                }
            }
        t.out.assign(static_cast<std::size_t>(N * Wq), 0.0f);
        t.row_max.resize(static_cast<std::size_t>(B * Hq * L * 2));
        t.row_sum.resize(t.row_max.size());
        t.group_out.resize(static_cast<std::size_t>(B * Hq * L * 2 * D));
        const attention_stats stats(tensor_ref<float, 4>(t.row_max.data(), {B, Hq, L, 2}),
                                    tensor_ref<float, 4>(t.row_sum.data(), {B, Hq, L, 2}),
                                    tensor_ref<float, 5>(t.group_out.data(), {B, Hq, L, 2, D}));
        attention_options ao = attention;
        ao.num_threads = num_threads;
        attention_forward_with_stats(tensor_ref<const float, 4>(t.q.data(), {B, Hq, L, D}),
                                     tensor_ref<const float, 4>(t.k.data(), {B, Hkv, L, D}),
                                     tensor_ref<const float, 4>(t.v.data(), {B, Hkv, L, D}), tokens, ao,
                                     tensor_ref<float, 4>(t.out.data(), {B, Hq, L, D}), stats);
        for (std::int64_t b = 0; b < B; ++b)
            for (std::int64_t i = 0; i < L; ++i)
                for (std::int64_t hd = 0; hd < Hq; ++hd)
                    std::copy_n(t.out.data() + ((b * Hq + hd) * L + i) * D, D, q.data() + (b * L + i) * Wq + hd * D);
        nn::linear_forward(qr, lw.o, bias(lw.o_bias), pr, num_threads);
        detail::lora_add(lora, li, 3, qr, pr);
        add_residual();
        t.h_mid = h;
        nn::rmsnorm_forward(hr, lw.mlp_norm.data(), eps, xr, num_threads);
        nn::swiglu_forward(xr, lw.mlp, pr, mlp, num_threads);
        add_residual();
    }
    tape.h_final = h;
    nn::rmsnorm_forward(hr, w.norm.data(), eps, xr, num_threads);
    tensor_ref<float, 2> out(logits.data, {N, V});
    nn::linear_forward(xr, w.lm_head, nullptr, out, num_threads);
    for (std::int64_t n = 0; n < N; ++n)
        if (n % L >= tape.lens[static_cast<std::size_t>(n / L)]) std::fill_n(out.ptr(n), V, 0.0f);
}

/// Backward of llama_forward_train: dlogits (B, L, V) → dembeddings (B, L, H) (overwritten). The
/// decoder's own weights are frozen: no gradients for them. grads (may be null): the cross blocks'
/// and the adapters' gradients are added to its non-empty parts. lora: the adapters the forward ran
/// with (null when it ran without).
inline void llama_backward(const llama_config& c, const llama_weights& w, const attention_options& attention,
                           const llama_tape& tape, tensor_ref<const float, 3> dlogits, tensor_ref<float, 3> dembeddings,
                           int num_threads = 0, llama_grads* grads = nullptr, const llama_lora* lora = nullptr) {
    using detail::to_text;
    const char* where = "mmca::llama_backward";
    detail::check_train_config(c, w, where);
    MMCA_CHECK_ARG((lora ? lora->config.rank : 0) == tape.lora_rank &&
                       (lora ? lora->config.targets : 0u) == tape.lora_targets,
                   where, "lora",
                   lora ? "adapters of rank " + to_text(lora->config.rank) + ", targets " + to_text(lora->config.targets)
                        : std::string("no adapters"),
                   tape.lora_rank ? "the adapters of the forward call (rank " + to_text(tape.lora_rank) + ", targets " +
                                        to_text(tape.lora_targets) + ")"
                                  : std::string("no adapters (the forward ran without)"));
    if (lora) check_llama_lora(c, *lora, where);
    MMCA_CHECK_ARG(static_cast<std::int64_t>(tape.cross.size()) == c.num_cross_blocks(), where, "tape",
                   to_text(tape.cross.size()) + " cross-attention blocks", "the tape of a forward call of this model");
    const bool cross_grads = grads && !grads->cross_blocks.empty();
    if (grads && !grads->cross_blocks.empty())
        MMCA_CHECK_ARG(static_cast<std::int64_t>(grads->cross_blocks.size()) == c.num_cross_blocks(), where, "grads",
                       to_text(grads->cross_blocks.size()) + " cross-block accumulators",
                       "none (frozen) or one per block (" + to_text(c.num_cross_blocks()) + ")");
    llama_lora* lora_grads = grads && !grads->lora.layers.empty() ? &grads->lora : nullptr;
    if (lora_grads) {
        MMCA_CHECK_ARG(lora != nullptr, where, "grads", "LoRA gradient accumulators", "none when no adapters are given");
        check_llama_lora(c, *lora_grads, where);
        MMCA_CHECK_ARG(lora_grads->config.rank == lora->config.rank && lora_grads->config.targets == lora->config.targets,
                       where, "grads", "LoRA accumulators of rank " + to_text(lora_grads->config.rank),
                       "accumulators shaped like the adapters (make_llama_lora_grads)");
    }
    const std::int64_t B = tape.batch, L = tape.length, H = c.hidden_size, V = c.vocab_size;
    const std::int64_t N = B * L, Hq = c.num_heads, Hkv = c.num_kv_heads, D = c.head_dim();
    const std::int64_t Wq = Hq * D, Wkv = Hkv * D;
    MMCA_CHECK_ARG(static_cast<std::int64_t>(tape.layers.size()) == c.num_layers, where, "tape",
                   to_text(tape.layers.size()) + " layers", "the tape of a forward call of this model");
    MMCA_CHECK_ARG(dlogits.shape[0] == B && dlogits.shape[1] == L && dlogits.shape[2] == V && dlogits.contiguous(),
                   where, "dlogits", dlogits.shape_text(), "a contiguous (" + to_text(B) + ", " + to_text(L) + ", " + to_text(V) + ")");
    MMCA_CHECK_ARG(dembeddings.shape[0] == B && dembeddings.shape[1] == L && dembeddings.shape[2] == H &&
                       dembeddings.contiguous(),
                   where, "dembeddings", dembeddings.shape_text(),
                   "a contiguous (" + to_text(B) + ", " + to_text(L) + ", " + to_text(H) + ")");
    const float eps = static_cast<float>(c.rms_norm_eps);
    std::vector<float> dh(N * H), dx(N * H), dbranch(N * H), dq(N * Wq), dk(N * Wkv), dv(N * Wkv);
    std::vector<float> dqh(N * Wq), dkh(N * Wkv), dvh(N * Wkv), dout(N * Wq);
    tensor_ref<float, 2> dhr(dh.data(), {N, H}), dxr(dx.data(), {N, H}), dbr(dbranch.data(), {N, H});

    // Head: logits = RMSNorm(h) · lm_headᵀ.
    nn::linear_backward({}, w.lm_head, tensor_ref<const float, 2>(dlogits.data, {N, V}), dxr, nullptr, nullptr,
                        num_threads);
    nn::rmsnorm_backward(tensor_ref<const float, 2>(tape.h_final.data(), {N, H}), w.norm.data(), eps, dxr, dhr, nullptr,
                         num_threads);
    // Gradient of a residual branch: rows that were not updated (padding, causal_cross images) get none.
    auto branch_grad = [&]() {
        for (std::int64_t n = 0; n < N; ++n)
            for (std::int64_t i = 0; i < H; ++i) dbranch[n * H + i] = tape.updated[n] ? dh[n * H + i] : 0.0f;
    };
    nn::swiglu_backward_scratch mlp_scratch;
    std::vector<float> xn(N * H), dinputs(N * H, 0.0f), orows;
    tensor_ref<float, 2> xr(xn.data(), {N, H});
    const token_layout tokens = detail::train_tokens(tape);
    const nn::row_metadata meta = detail::train_rows(tape);
    std::size_t block = static_cast<std::size_t>(c.num_cross_blocks());
    const float lscale = lora ? lora->config.scale() : 0.0f;
    // Backward of projection p's adapter: dx += dt·A, dA/dB into the accumulators.
    auto lora_back = [&](std::size_t layer, std::size_t p, tensor_ref<const float, 2> x, tensor_ref<const float, 2> dy,
                         tensor_ref<float, 2> dxp) {
        if (!lora || !lora->has(p)) return;
        nn::lora_adapter* g = lora_grads ? &lora_grads->layers[layer][p] : nullptr;
        nn::lora_backward(x, lora->layers[layer][p], lscale, dy, dxp, g ? g->a.data() : nullptr,
                          g ? g->b.data() : nullptr);
    };
    for (std::int64_t l = c.num_layers - 1; l >= 0; --l) {
        const auto& lw = w.layers[static_cast<std::size_t>(l)];
        const auto& t = tape.layers[static_cast<std::size_t>(l)];
        const auto li = static_cast<std::size_t>(l);
        const tensor_ref<const float, 2> h_mid(t.h_mid.data(), {N, H}), h_in(t.h_in.data(), {N, H});
        // MLP half: h'' = h' + mlp(RMSNorm(h')).
        branch_grad();
        nn::rmsnorm_forward(h_mid, lw.mlp_norm.data(), eps, xr, num_threads);
        nn::swiglu_backward(xr, lw.mlp, dbr, dxr, nn::swiglu_grads{}, mlp_scratch, num_threads);
        nn::rmsnorm_backward(h_mid, lw.mlp_norm.data(), eps, dxr, dxr, nullptr, num_threads);
        for (std::int64_t i = 0; i < N * H; ++i) dh[i] += dx[i];
        // Attention half: h' = h + o(attn).
        branch_grad();
        nn::linear_backward({}, lw.o, dbr, tensor_ref<float, 2>(dout.data(), {N, Wq}), nullptr, nullptr, num_threads);
        if (lora && lora->has(3)) {  // the o adapter's input: the attention output as rows
            orows.resize(static_cast<std::size_t>(N * Wq));
            for (std::int64_t b = 0; b < B; ++b)
                for (std::int64_t i = 0; i < L; ++i)
                    for (std::int64_t hd = 0; hd < Hq; ++hd)
                        std::copy_n(t.out.data() + ((b * Hq + hd) * L + i) * D, D, orows.data() + (b * L + i) * Wq + hd * D);
            lora_back(li, 3, tensor_ref<const float, 2>(orows.data(), {N, Wq}), dbr, tensor_ref<float, 2>(dout.data(), {N, Wq}));
        }
        for (std::int64_t b = 0; b < B; ++b)  // rows → (B, Hq, L, D)
            for (std::int64_t i = 0; i < L; ++i)
                for (std::int64_t hd = 0; hd < Hq; ++hd)
                    std::copy_n(dout.data() + (b * L + i) * Wq + hd * D, D, dqh.data() + ((b * Hq + hd) * L + i) * D);
        std::vector<float> dattn(dqh);
        const attention_stats_view stats(tensor_ref<const float, 4>(t.row_max.data(), {B, Hq, L, 2}),
                                         tensor_ref<const float, 4>(t.row_sum.data(), {B, Hq, L, 2}),
                                         tensor_ref<const float, 5>(t.group_out.data(), {B, Hq, L, 2, D}));
        attention_options ao = attention;
        ao.num_threads = num_threads;
        attention_backward(tensor_ref<const float, 4>(t.q.data(), {B, Hq, L, D}),
                           tensor_ref<const float, 4>(t.k.data(), {B, Hkv, L, D}),
                           tensor_ref<const float, 4>(t.v.data(), {B, Hkv, L, D}),
                           tensor_ref<const float, 4>(dattn.data(), {B, Hq, L, D}), tokens, ao, stats,
                           tensor_ref<float, 4>(dqh.data(), {B, Hq, L, D}), tensor_ref<float, 4>(dkh.data(), {B, Hkv, L, D}),
                           tensor_ref<float, 4>(dvh.data(), {B, Hkv, L, D}));
        for (std::int64_t b = 0; b < B; ++b)  // (B, heads, L, D) → rows
            for (std::int64_t i = 0; i < L; ++i) {
                const std::int64_t n = b * L + i;
                for (std::int64_t hd = 0; hd < Hq; ++hd)
                    std::copy_n(dqh.data() + ((b * Hq + hd) * L + i) * D, D, dq.data() + n * Wq + hd * D);
                for (std::int64_t hd = 0; hd < Hkv; ++hd) {
                    std::copy_n(dkh.data() + ((b * Hkv + hd) * L + i) * D, D, dk.data() + n * Wkv + hd * D);
                    std::copy_n(dvh.data() + ((b * Hkv + hd) * L + i) * D, D, dv.data() + n * Wkv + hd * D);
                }
            }
        nn::rope_apply_backward(dq.data(), Wq, Hq, tape.rope);
        nn::rope_apply_backward(dk.data(), Wkv, Hkv, tape.rope);
        nn::linear_backward({}, lw.q, tensor_ref<const float, 2>(dq.data(), {N, Wq}), dxr, nullptr, nullptr, num_threads);
        nn::linear_backward({}, lw.k, tensor_ref<const float, 2>(dk.data(), {N, Wkv}), dxr, nullptr, nullptr, num_threads,
                            /*accumulate_dx=*/true);
        nn::linear_backward({}, lw.v, tensor_ref<const float, 2>(dv.data(), {N, Wkv}), dxr, nullptr, nullptr, num_threads,
                            /*accumulate_dx=*/true);
        if (lora && (lora->has(0) || lora->has(1) || lora->has(2))) {
            nn::rmsnorm_forward(h_in, lw.attn_norm.data(), eps, xr, num_threads);  // the adapters' input
            lora_back(li, 0, xr, tensor_ref<const float, 2>(dq.data(), {N, Wq}), dxr);
            lora_back(li, 1, xr, tensor_ref<const float, 2>(dk.data(), {N, Wkv}), dxr);
            lora_back(li, 2, xr, tensor_ref<const float, 2>(dv.data(), {N, Wkv}), dxr);
        }
        nn::rmsnorm_backward(h_in, lw.attn_norm.data(), eps, dxr, dxr, nullptr, num_threads);
        for (std::int64_t i = 0; i < N * H; ++i) dh[i] += dx[i];
        if (c.cross_block_before(l)) {
            --block;
            nn::gated_cross_attention_backward(meta, w.cross_blocks[block], Hq, Hkv, D, eps, attention.visibility,
                                               tape.cross[block], dhr, tensor_ref<float, 2>(dinputs.data(), {N, H}),
                                               cross_grads ? &grads->cross_blocks[block] : nullptr, num_threads);
        }
    }
    for (std::int64_t i = 0; i < N * H; ++i) dembeddings.data[i] = dh[i] + dinputs[i];
}

}  // namespace mmca
