// mmca/language/weights.hpp - where the parameters of a LLaMa decoder are.
//
// Matrices are matrix_refs into storage the model does not own (normally a memory-mapped
// safetensors checkpoint, kept alive by `storage`); they keep their stored dtype (float32, float16
// or bfloat16) and are widened block by block where they are used. Norm weights and biases are
// tiny and are kept as float32 copies.
#pragma once

#include "mmca/nn/cross_attention.hpp"
#include "mmca/nn/linear.hpp"
#include "mmca/nn/mlp.hpp"

#include <memory>
#include <vector>

namespace mmca {

/// One decoder layer. Hq·D = H; Hkv·D = the key/value width.
struct llama_layer_weights {
    std::vector<float> attn_norm;  // (H) input_layernorm
    nn::matrix_ref q;              // [Hq·D, H]
    nn::matrix_ref k;              // [Hkv·D, H]
    nn::matrix_ref v;              // [Hkv·D, H]
    nn::matrix_ref o;              // [H, Hq·D]
    std::vector<float> q_bias, k_bias, v_bias, o_bias;  // (out) each, or empty (LLaMa has none)
    std::vector<float> mlp_norm;   // (H) post_attention_layernorm
    nn::swiglu_weights mlp;        // gate/up [I, H], down [H, I]
};

struct llama_weights {
    nn::matrix_ref embed;                      // [V, H] token embedding
    std::vector<llama_layer_weights> layers;   // num_layers
    std::vector<float> norm;                   // (H) final RMSNorm
    nn::matrix_ref lm_head;                    // [V, H] (the embedding table when tied)
    std::vector<nn::gated_cross_attention_weights> cross_blocks;  // num_cross_blocks()
    std::shared_ptr<const void> storage;       // owner of the memory the matrices point into
};

}  // namespace mmca
