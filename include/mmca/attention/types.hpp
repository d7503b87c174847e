// mmca/attention/types.hpp - what an attention call is asked to compute.
//
// The variants are those of SPEC §2 (docs/attention.md explains each row rule):
//   causal          one softmax over earlier non-pad tokens
//   mmca            text rows: softmax over earlier text + softmax over earlier images; image rows: V_j
//   mmca_reference  the reference code's behaviour, degenerate rows included (uniform averages)
//   causal_cross    image rows removed from the query side; text rows: text softmax + image softmax
//                   over the images allowed by an image_visibility policy
#pragma once

#include "mmca/core/error.hpp"
#include "mmca/core/tensor.hpp"

#include <cstdint>
#include <string>

namespace mmca {

/// Token type per position (SPEC §1). Stored as int8 in token-type tensors.
enum class token_type : std::int8_t { pad = 0, text = 1, image = 2 };

enum class attention_variant : std::uint8_t { causal, mmca, mmca_reference, causal_cross };

/// Which image tokens a text row of causal_cross (and of the gated cross-attention block) sees.
enum class image_visibility : std::uint8_t {
    all,        ///< every image of the sequence, including later ones (the paper's figure)
    preceding,  ///< images whose tokens precede the row
    latest,     ///< only the most recent preceding image (Flamingo-style)
};

/// Which implementation computes the call: the explicit-mask oracle or the fused kernel.
enum class attention_impl : std::uint8_t { fused, reference };

inline const char* to_string(attention_variant v) {
    switch (v) {
        case attention_variant::causal: return "causal";
        case attention_variant::mmca: return "mmca";
        case attention_variant::mmca_reference: return "mmca_reference";
        case attention_variant::causal_cross: return "causal_cross";
    }
    return "unknown";
}

inline const char* to_string(image_visibility p) {
    switch (p) {
        case image_visibility::all: return "all";
        case image_visibility::preceding: return "preceding";
        case image_visibility::latest: return "latest";
    }
    return "unknown";
}

inline const char* to_string(attention_impl i) {
    return i == attention_impl::fused ? "fused" : "reference";
}

inline attention_variant parse_attention_variant(const std::string& name) {
    if (name == "causal") return attention_variant::causal;
    if (name == "mmca") return attention_variant::mmca;
    if (name == "mmca_reference") return attention_variant::mmca_reference;
    if (name == "causal_cross") return attention_variant::causal_cross;
    throw invalid_argument("mmca::parse_attention_variant", "variant", "'" + name + "'",
                           "one of 'causal', 'mmca', 'mmca_reference', 'causal_cross'");
}

inline image_visibility parse_image_visibility(const std::string& name) {
    if (name == "all") return image_visibility::all;
    if (name == "preceding") return image_visibility::preceding;
    if (name == "latest") return image_visibility::latest;
    throw invalid_argument("mmca::parse_image_visibility", "policy", "'" + name + "'",
                           "one of 'all', 'preceding', 'latest'");
}

inline attention_impl parse_attention_impl(const std::string& name) {
    if (name == "fused") return attention_impl::fused;
    if (name == "reference") return attention_impl::reference;
    throw invalid_argument("mmca::parse_attention_impl", "impl", "'" + name + "'", "'fused' or 'reference'");
}

/// Options of one attention call.
struct attention_options {
    attention_variant variant = attention_variant::mmca;
    image_visibility visibility = image_visibility::preceding;  ///< causal_cross only
    float scale = 0.0f;   ///< score scale; 0 means 1/sqrt(D)
    int num_threads = 0;  ///< 0: the default number of threads (OpenMP's)
};

/// The token side of an attention call, per sequence of the batch (all views, no copies).
///
/// Query row i of sequence b sits at absolute position kv_len[b] - q_len[b] + i: the queries are
/// the last q_len[b] tokens of the key sequence (a full prefill has q_len == kv_len; a decode step
/// on top of a KV cache has q_len == 1). Rows i >= q_len[b] and key columns >= kv_len[b] are padding.
struct token_layout {
    tensor_ref<const std::int8_t, 2> types;       ///< (B, Lk) token_type per key position
    tensor_ref<const std::int32_t, 2> image_ids;  ///< (B, Lk) image index per image token, or absent:
                                                  ///< then each maximal run of image tokens is one image
    tensor_ref<const std::int32_t, 1> kv_lens;    ///< (B) valid keys per sequence, or absent: all Lk
    tensor_ref<const std::int32_t, 1> q_lens;     ///< (B) valid queries per sequence, or absent:
                                                  ///< min(Lq, kv_len[b]) (a padded prefill needs only kv_lens)
};

/// Checks the metadata of `take` new tokens of sequence b that follow `cached` tokens, without
/// changing anything: token types in {0, 1, 2}; explicit image indices in [0, position of the token]
/// (what attention over a cache accepts). Both backends' models validate a whole step with it first.
inline void check_new_tokens(const char* where, tensor_ref<const std::int8_t, 2> types,
                             tensor_ref<const std::int32_t, 2> image_ids, std::int64_t b, std::int64_t take,
                             std::int64_t cached) {
    using detail::to_text;
    for (std::int64_t i = 0; i < take; ++i) {
        const std::int8_t t = types(b, i);
        MMCA_CHECK_ARG(t >= 0 && t <= 2, where, "token_types",
                       "token_types[" + to_text(b) + ", " + to_text(i) + "] = " + to_text(int(t)),
                       "0 (pad), 1 (text) or 2 (image)");
        if (t == 2 && !image_ids.empty())
            MMCA_CHECK_ARG(image_ids(b, i) >= 0 && image_ids(b, i) <= cached + i, where, "image_ids",
                           "image_ids[" + to_text(b) + ", " + to_text(i) + "] = " + to_text(image_ids(b, i)),
                           "an image index in [0, " + to_text(cached + i) + "]");
    }
}

}  // namespace mmca
