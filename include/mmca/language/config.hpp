// mmca/language/config.hpp - the shape of a LLaMa-2 decoder (what config.json says).
#pragma once

#include "mmca/core/error.hpp"
#include "mmca/nn/rope.hpp"

#include <cmath>
#include <cstdint>
#include <string>

namespace mmca {

/// Sizes and constants of a LLaMa(-2) decoder. Defaults are LLaMa-2 7B's.
struct llama_config {
    std::int64_t vocab_size = 32000;         // V
    std::int64_t hidden_size = 4096;         // H
    std::int64_t intermediate_size = 11008;  // I (SwiGLU inner size)
    std::int64_t num_layers = 32;
    std::int64_t num_heads = 32;             // Hq
    std::int64_t num_kv_heads = 32;          // Hkv (Hq % Hkv == 0; < Hq is grouped-query attention)
    std::int64_t max_positions = 4096;       // positions trained on; the default context of a model
    double rms_norm_eps = 1e-5;
    double rope_theta = 10000.0;
    nn::rope_scaling_type rope_scaling = nn::rope_scaling_type::none;
    double rope_factor = 1.0;                // > 1 when rope_scaling != none
    std::int32_t bos_token_id = 1;
    std::int32_t eos_token_id = 2;
    bool tie_word_embeddings = false;        // lm_head shares the embedding table
    // Gated cross-attention blocks (SPEC §2.5): one before layers 0, N, 2N, ... when N > 0.
    std::int64_t cross_attention_every = 0;
    std::int64_t cross_attention_intermediate = 0;  // inner size of their MLP; 0: intermediate_size

    std::int64_t head_dim() const { return num_heads > 0 ? hidden_size / num_heads : 0; }
    std::int64_t num_cross_blocks() const {
        return cross_attention_every > 0 ? (num_layers + cross_attention_every - 1) / cross_attention_every : 0;
    }
    /// True when a gated cross-attention block runs before layer `layer`.
    bool cross_block_before(std::int64_t layer) const {
        return cross_attention_every > 0 && layer % cross_attention_every == 0;
    }
    std::int64_t cross_intermediate() const {
        return cross_attention_intermediate > 0 ? cross_attention_intermediate : intermediate_size;
    }

    nn::rope_config rope() const {
        nn::rope_config r;
        r.head_dim = head_dim();
        r.theta = rope_theta;
        r.scaling = rope_scaling;
        r.factor = rope_factor;
        r.max_positions = max_positions;
        return r;
    }

    /// Throws mmca::invalid_argument naming the first inconsistent field.
    void validate(const char* where = "mmca::llama_config") const {
        using detail::to_text;
        auto positive = [&](std::int64_t v, const char* name) {
            MMCA_CHECK_ARG(v > 0, where, name, to_text(v), "a positive integer");
        };
        positive(vocab_size, "vocab_size");
        positive(hidden_size, "hidden_size");
        positive(intermediate_size, "intermediate_size");
        positive(num_layers, "num_hidden_layers");
        positive(num_heads, "num_attention_heads");
        positive(num_kv_heads, "num_key_value_heads");
        positive(max_positions, "max_position_embeddings");
        MMCA_CHECK_ARG(hidden_size % num_heads == 0, where, "num_attention_heads", to_text(num_heads),
                       "a divisor of hidden_size " + to_text(hidden_size));
        MMCA_CHECK_ARG(num_heads % num_kv_heads == 0, where, "num_key_value_heads", to_text(num_kv_heads),
                       "a divisor of num_attention_heads " + to_text(num_heads));
        MMCA_CHECK_ARG(head_dim() % 2 == 0 && head_dim() <= 256, where, "head_dim",
                       to_text(head_dim()) + " (hidden_size / num_attention_heads)", "an even number <= 256");
        MMCA_CHECK_ARG(rms_norm_eps > 0.0 && std::isfinite(rms_norm_eps), where, "rms_norm_eps", to_text(rms_norm_eps),
                       "a positive finite number");
        MMCA_CHECK_ARG(rope_theta > 0.0 && std::isfinite(rope_theta), where, "rope_theta", to_text(rope_theta),
                       "a positive finite number");
        if (rope_scaling != nn::rope_scaling_type::none)
            MMCA_CHECK_ARG(rope_factor > 1.0 && std::isfinite(rope_factor), where, "rope_scaling.factor",
                           to_text(rope_factor), "a finite number > 1");
        MMCA_CHECK_ARG(bos_token_id >= -1 && bos_token_id < vocab_size, where, "bos_token_id", to_text(bos_token_id),
                       "a token id in [0, vocab_size) or -1 (none)");
        MMCA_CHECK_ARG(eos_token_id >= -1 && eos_token_id < vocab_size, where, "eos_token_id", to_text(eos_token_id),
                       "a token id in [0, vocab_size) or -1 (none)");
        MMCA_CHECK_ARG(cross_attention_every >= 0, where, "cross_attention_every", to_text(cross_attention_every),
                       "0 (no gated cross-attention blocks) or a positive layer interval");
        MMCA_CHECK_ARG(cross_attention_intermediate >= 0, where, "cross_attention_intermediate",
                       to_text(cross_attention_intermediate), "0 (intermediate_size) or a positive size");
    }
};

}  // namespace mmca
