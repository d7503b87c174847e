// mmca/language/presets.hpp - the LLaMa-2 shapes of SPEC §5 as ready configs.
#pragma once

#include "mmca/core/error.hpp"
#include "mmca/language/config.hpp"

#include <string>

namespace mmca {

/// LLaMa-2 7B: H 4096, 32 layers, 32/32 heads, SwiGLU 11008, vocab 32000, 4096 positions.
inline llama_config llama2_7b_config() { return llama_config{}; }

/// LLaMa-2 13B: H 5120, 40 layers, 40/40 heads, SwiGLU 13824.
inline llama_config llama2_13b_config() {
    llama_config c;
    c.hidden_size = 5120;
    c.intermediate_size = 13824;
    c.num_layers = 40;
    c.num_heads = c.num_kv_heads = 40;
    return c;
}

/// LLaMa-2 70B: H 8192, 80 layers, 64 query / 8 kv heads (grouped-query), SwiGLU 28672.
inline llama_config llama2_70b_config() {
    llama_config c;
    c.hidden_size = 8192;
    c.intermediate_size = 28672;
    c.num_layers = 80;
    c.num_heads = 64;
    c.num_kv_heads = 8;
    return c;
}

/// A preset by name: "llama2-7b", "llama2-13b" or "llama2-70b".
inline llama_config llama_preset(const std::string& name) {
    if (name == "llama2-7b") return llama2_7b_config();
    if (name == "llama2-13b") return llama2_13b_config();
    if (name == "llama2-70b") return llama2_70b_config();
    throw invalid_argument("mmca::llama_preset", "name", "'" + name + "'",
                           "one of 'llama2-7b', 'llama2-13b', 'llama2-70b'");
}

}  // namespace mmca
