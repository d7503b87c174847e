// mmca/attention/problem.hpp - validation of an attention call and the checked description
// that both implementations (reference and fused) and both backends start from.
#pragma once

#include "mmca/attention/types.hpp"
#include "mmca/core/error.hpp"
#include "mmca/core/tensor.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

namespace mmca {

/// Checked sizes and per-sequence token metadata of one attention call.
struct attention_problem {
    std::int64_t batch = 0;     // B
    std::int64_t q_heads = 0;   // Hq
    std::int64_t kv_heads = 0;  // Hkv (Hq % Hkv == 0)
    std::int64_t q_len = 0;     // Lq (tensor extent)
    std::int64_t kv_len = 0;    // Lk (tensor extent)
    std::int64_t head_dim = 0;  // D
    float scale = 0.0f;         // score scale actually used
    attention_variant variant = attention_variant::mmca;
    image_visibility visibility = image_visibility::preceding;
    std::vector<std::int32_t> seq_q_len;   // (B) valid query rows per sequence
    std::vector<std::int32_t> seq_kv_len;  // (B) valid keys per sequence
    std::vector<std::int8_t> types;        // (B, Lk) token types, pad beyond seq_kv_len
    std::vector<std::int32_t> image_ids;   // (B, Lk) image index of image tokens, -1 elsewhere

    std::int64_t group_size() const { return q_heads / kv_heads; }
    /// Absolute key position of query row i of sequence b.
    std::int64_t query_position(std::int64_t b, std::int64_t i) const { return seq_kv_len[b] - seq_q_len[b] + i; }
    std::int8_t type(std::int64_t b, std::int64_t k) const { return types[b * kv_len + k]; }
    std::int32_t image_id(std::int64_t b, std::int64_t k) const { return image_ids[b * kv_len + k]; }
};

namespace detail {

inline std::string dims4(const char* a, const char* b, const char* c, const char* d) {
    return std::string("[") + a + ", " + b + ", " + c + ", " + d + "]";
}

}  // namespace detail

/// Validates q (B, Hq, Lq, D), k and v (B, Hkv, Lk, D), out (B, Hq, Lq, D) and the token layout,
/// and returns the checked problem. `where` names the public function for error messages.
template <class KV>
attention_problem make_attention_problem(const char* where, tensor_ref<const float, 4> q, tensor_ref<const KV, 4> k,
                                         tensor_ref<const KV, 4> v, const token_layout& tokens,
                                         const attention_options& options, tensor_ref<float, 4> out) {
    using detail::shape_text;
    using detail::to_text;
    MMCA_CHECK_ARG(!q.empty(), where, "q", "no tensor", "a (B, Hq, Lq, D) float32 tensor");
    MMCA_CHECK_ARG(!k.empty(), where, "k", "no tensor", "a (B, Hkv, Lk, D) tensor");
    MMCA_CHECK_ARG(!v.empty(), where, "v", "no tensor", "a (B, Hkv, Lk, D) tensor");
    attention_problem p;
    p.batch = q.shape[0];
    p.q_heads = q.shape[1];
    p.q_len = q.shape[2];
    p.head_dim = q.shape[3];
    p.kv_heads = k.shape[1];
    p.kv_len = k.shape[2];
    MMCA_CHECK_ARG(p.batch > 0 && p.q_heads > 0 && p.q_len > 0 && p.head_dim > 0, where, "q", q.shape_text(),
                   "a non-empty (B, Hq, Lq, D) tensor");
    MMCA_CHECK_ARG(p.head_dim <= 256, where, "q", "head dim " + to_text(p.head_dim), "head dim D <= 256");
    MMCA_CHECK_ARG(k.shape[0] == p.batch && k.shape[3] == p.head_dim && p.kv_heads > 0 && p.kv_len > 0, where, "k",
                   k.shape_text(), detail::dims4(to_text(p.batch).c_str(), "Hkv", "Lk", to_text(p.head_dim).c_str()));
    MMCA_CHECK_ARG(v.shape == k.shape, where, "v", v.shape_text(), "the shape of k " + k.shape_text());
    MMCA_CHECK_ARG(p.q_heads % p.kv_heads == 0, where, "k",
                   to_text(p.kv_heads) + " kv heads for " + to_text(p.q_heads) + " query heads",
                   "a number of kv heads that divides the number of query heads");
    MMCA_CHECK_ARG(q.inner_contiguous() && k.inner_contiguous() && v.inner_contiguous(), where, "q/k/v",
                   "a non-contiguous head dimension", "the last dimension (D) contiguous");
    MMCA_CHECK_ARG(out.empty() || (out.shape == q.shape && out.inner_contiguous()), where, "out", out.shape_text(),
                   "the shape of q " + q.shape_text() + " with a contiguous last dimension");

    const auto& tt = tokens.types;
    MMCA_CHECK_ARG(!tt.empty(), where, "token_types", "no tensor", "an int8 (B, Lk) tensor");
    MMCA_CHECK_ARG(tt.shape[0] == p.batch && tt.shape[1] == p.kv_len, where, "token_types", tt.shape_text(),
                   "[" + to_text(p.batch) + ", " + to_text(p.kv_len) + "] (B, Lk)");
    if (!tokens.image_ids.empty())
        MMCA_CHECK_ARG(tokens.image_ids.shape == tt.shape, where, "image_ids", tokens.image_ids.shape_text(),
                       "the shape of token_types " + tt.shape_text());
    if (!tokens.kv_lens.empty())
        MMCA_CHECK_ARG(tokens.kv_lens.shape[0] == p.batch, where, "kv_lens", tokens.kv_lens.shape_text(),
                       "[" + to_text(p.batch) + "] (one length per sequence)");
    if (!tokens.q_lens.empty())
        MMCA_CHECK_ARG(tokens.q_lens.shape[0] == p.batch, where, "q_lens", tokens.q_lens.shape_text(),
                       "[" + to_text(p.batch) + "] (one length per sequence)");

    p.variant = options.variant;
    p.visibility = options.visibility;
    MMCA_CHECK_ARG(std::isfinite(options.scale) && options.scale >= 0.0f, where, "scale", to_text(options.scale),
                   "a finite value > 0, or 0 for 1/sqrt(D)");
    p.scale = options.scale > 0.0f ? options.scale : 1.0f / std::sqrt(static_cast<float>(p.head_dim));

    p.seq_q_len.resize(p.batch);
    p.seq_kv_len.resize(p.batch);
    p.types.assign(p.batch * p.kv_len, static_cast<std::int8_t>(token_type::pad));
    p.image_ids.assign(p.batch * p.kv_len, -1);
    for (std::int64_t b = 0; b < p.batch; ++b) {
        const std::int64_t kvl = tokens.kv_lens.empty() ? p.kv_len : tokens.kv_lens(b);
        const std::int64_t ql = tokens.q_lens.empty() ? std::min(p.q_len, kvl) : tokens.q_lens(b);
        MMCA_CHECK_ARG(kvl >= 0 && kvl <= p.kv_len, where, "kv_lens", "kv_lens[" + to_text(b) + "] = " + to_text(kvl),
                       "a length in [0, " + to_text(p.kv_len) + "]");
        MMCA_CHECK_ARG(ql >= 0 && ql <= p.q_len && ql <= kvl, where, "q_lens",
                       "q_lens[" + to_text(b) + "] = " + to_text(ql),
                       "a length in [0, min(Lq = " + to_text(p.q_len) + ", kv_lens[" + to_text(b) +
                           "] = " + to_text(kvl) + ")]");
        p.seq_q_len[b] = static_cast<std::int32_t>(ql);
        p.seq_kv_len[b] = static_cast<std::int32_t>(kvl);
        std::int32_t next_image = 0;
        for (std::int64_t kk = 0; kk < kvl; ++kk) {
            const std::int8_t t = tt(b, kk);
            MMCA_CHECK_ARG(t >= 0 && t <= 2, where, "token_types",
                           "token_types[" + to_text(b) + ", " + to_text(kk) + "] = " + to_text(int(t)),
                           "0 (pad), 1 (text) or 2 (image)");
            p.types[b * p.kv_len + kk] = t;
            if (t != static_cast<std::int8_t>(token_type::image)) continue;
            std::int32_t id;
            if (tokens.image_ids.empty()) {
                const bool starts_run = kk == 0 || tt(b, kk - 1) != static_cast<std::int8_t>(token_type::image);
                if (starts_run) ++next_image;
                id = next_image - 1;
            } else {
                id = tokens.image_ids(b, kk);
                MMCA_CHECK_ARG(id >= 0 && id < kvl, where, "image_ids",
                               "image_ids[" + to_text(b) + ", " + to_text(kk) + "] = " + to_text(id),
                               "an image index in [0, " + to_text(kvl) + ") for an image token");
            }
            p.image_ids[b * p.kv_len + kk] = id;
        }
    }
    return p;
}

}  // namespace mmca
