// mmca/io/name_map.hpp - tensor names of LLaMa decoders in the checkpoints mmca reads (SPEC §9).
//
//   HF LLaMa-2                     model.embed_tokens.weight, model.layers.N.*, model.norm.weight, lm_head.weight
//   reference visual-chat model    lang_embed.weight (the trained copy of the embedding, used for
//                                  every text token), lang_decoder.model.layers.N.*,
//                                  lang_decoder.model.norm.weight, lang_decoder.lm_head.weight
// Per layer N: input_layernorm.weight, self_attn.{q,k,v,o}_proj.weight (optional .bias),
// post_attention_layernorm.weight, mlp.{gate,up,down}_proj.weight.
// mmca's gated cross-attention blocks (SPEC §2.5) live under <cross_prefix>N.: attn_norm.weight,
// {q,k,v,o}_proj.weight, attn_gate, mlp_norm.weight, mlp.{gate,up,down}_proj.weight, mlp_gate.
#pragma once

#include "mmca/core/error.hpp"
#include "mmca/io/checkpoint.hpp"

#include <cstdint>
#include <string>

namespace mmca::io {

struct llama_name_map {
    std::string name;          // "hf" or "visual_chat"
    std::string embed;         // token embedding [V, H]
    std::string layer_prefix;  // + N + "." + suffix
    std::string norm;          // final RMSNorm (H)
    std::string lm_head;       // [V, H]
    std::string cross_prefix;  // + N + "." + suffix, gated cross-attention blocks

    std::string layer(std::int64_t i, const std::string& suffix) const {
        return layer_prefix + std::to_string(i) + "." + suffix;
    }
    std::string cross(std::int64_t i, const std::string& suffix) const {
        return cross_prefix + std::to_string(i) + "." + suffix;
    }
};

inline llama_name_map hf_llama_names() {
    return {"hf", "model.embed_tokens.weight", "model.layers.", "model.norm.weight", "lm_head.weight",
            "model.cross_blocks."};
}

inline llama_name_map visual_chat_names() {
    return {"visual_chat", "lang_embed.weight", "lang_decoder.model.layers.", "lang_decoder.model.norm.weight",
            "lang_decoder.lm_head.weight", "lang_decoder.model.cross_blocks."};
}

/// A map by name: "hf" or "visual_chat".
inline llama_name_map llama_names(const std::string& name) {
    if (name == "hf") return hf_llama_names();
    if (name == "visual_chat") return visual_chat_names();
    throw invalid_argument("mmca::io::llama_names", "names", "'" + name + "'", "'hf', 'visual_chat' or 'auto'");
}

/// The map whose final norm the checkpoint contains (HF first).
inline llama_name_map detect_llama_names(const checkpoint& ckpt) {
    for (const auto& m : {hf_llama_names(), visual_chat_names()})
        if (ckpt.find(m.norm)) return m;
    throw invalid_argument("mmca::io::detect_llama_names", "checkpoint",
                           "neither 'model.norm.weight' nor 'lang_decoder.model.norm.weight' in " + ckpt.describe(),
                           "an HF LLaMa or a reference visual-chat checkpoint");
}

}  // namespace mmca::io
