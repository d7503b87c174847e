// mmca/io/llama_config_json.hpp - llama_config from an HF config.json.
//
// Keys read (HF LlamaConfig names): vocab_size, hidden_size, intermediate_size, num_hidden_layers,
// num_attention_heads, num_key_value_heads (default: num_attention_heads), max_position_embeddings
// (default 2048), rms_norm_eps (default 1e-6), rope_theta (default 10000), rope_scaling (null or
// {"type": "linear" | "dynamic", "factor": > 1}), bos_token_id, eos_token_id, tie_word_embeddings,
// hidden_act (must be "silu"), and mmca's own cross_attention_every / cross_attention_intermediate.
// The first five are required. A present key of the wrong JSON type is an error, not a default.
#pragma once

#include "mmca/core/error.hpp"
#include "mmca/io/checkpoint.hpp"
#include "mmca/language/config.hpp"

#include <nlohmann/json.hpp>

#include <string>

namespace mmca::io {

/// Parses config.json text (`source` names it in messages).
inline llama_config parse_llama_config(const std::string& text, const std::string& source = "config.json") {
    const char* where = "mmca::io::parse_llama_config";
    const nlohmann::json j = detail::parse_json_strict(text.data(), text.data() + text.size(), source, "config", 16);
    auto bad = [&](const std::string& key, const std::string& seen, const std::string& expected) {
        throw invalid_argument(where, key, source + ": " + seen, expected);
    };
    if (!j.is_object()) bad("config", "a " + std::string(j.type_name()), "a JSON object");
    llama_config c;
    auto get_int = [&](const char* key, std::int64_t& out, bool required) {
        if (!j.contains(key) || j[key].is_null()) {
            if (required) bad(key, "no '" + std::string(key) + "'", "an integer");
            return;
        }
        if (!j[key].is_number_integer()) bad(key, j[key].dump(), "an integer");
        out = j[key].get<std::int64_t>();
    };
    auto get_num = [&](const char* key, double& out) {
        if (!j.contains(key) || j[key].is_null()) return;
        if (!j[key].is_number()) bad(key, j[key].dump(), "a number");
        out = j[key].get<double>();
    };
    get_int("vocab_size", c.vocab_size, true);
    get_int("hidden_size", c.hidden_size, true);
    get_int("intermediate_size", c.intermediate_size, true);
    get_int("num_hidden_layers", c.num_layers, true);
    get_int("num_attention_heads", c.num_heads, true);
    c.num_kv_heads = c.num_heads;
    get_int("num_key_value_heads", c.num_kv_heads, false);
    c.max_positions = 2048;
    get_int("max_position_embeddings", c.max_positions, false);
    c.rms_norm_eps = 1e-6;
    get_num("rms_norm_eps", c.rms_norm_eps);
    get_num("rope_theta", c.rope_theta);
    std::int64_t bos = c.bos_token_id, eos = c.eos_token_id;
    get_int("bos_token_id", bos, false);
    get_int("eos_token_id", eos, false);
    c.bos_token_id = static_cast<std::int32_t>(bos);
    c.eos_token_id = static_cast<std::int32_t>(eos);
    if (j.contains("tie_word_embeddings") && !j["tie_word_embeddings"].is_null()) {
        if (!j["tie_word_embeddings"].is_boolean()) bad("tie_word_embeddings", j["tie_word_embeddings"].dump(), "true or false");
        c.tie_word_embeddings = j["tie_word_embeddings"].get<bool>();
    }
    if (j.contains("hidden_act") && j["hidden_act"] != "silu")
        bad("hidden_act", j["hidden_act"].dump(), "\"silu\" (LLaMa's SwiGLU)");
    if (j.contains("rope_scaling") && !j["rope_scaling"].is_null()) {
        const auto& s = j["rope_scaling"];
        if (!s.is_object() || s.size() != 2 || !s.contains("type") || !s.contains("factor"))
            bad("rope_scaling", s.dump(), "null or {\"type\": \"linear\" | \"dynamic\", \"factor\": number > 1}");
        if (s["type"] == "linear")
            c.rope_scaling = nn::rope_scaling_type::linear;
        else if (s["type"] == "dynamic")
            c.rope_scaling = nn::rope_scaling_type::dynamic;
        else
            bad("rope_scaling.type", s["type"].dump(), "\"linear\" or \"dynamic\"");
        if (!s["factor"].is_number()) bad("rope_scaling.factor", s["factor"].dump(), "a number > 1");
        c.rope_factor = s["factor"].get<double>();
    }
    get_int("cross_attention_every", c.cross_attention_every, false);
    get_int("cross_attention_intermediate", c.cross_attention_intermediate, false);
    const std::string where_source = std::string(where) + " (" + source + ")";
    c.validate(where_source.c_str());
    return c;
}

/// Reads and parses a config.json file.
inline llama_config read_llama_config(const std::string& path) {
    return parse_llama_config(detail::read_text_file(path, "mmca::io::read_llama_config", 10'000'000), path);
}

}  // namespace mmca::io
