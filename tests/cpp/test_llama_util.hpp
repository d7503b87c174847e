// tests/cpp/test_llama_util.hpp - helpers of the LLaMa / safetensors tests: a minimal safetensors
// writer (so that tests can also write files that lie), deterministic random checkpoints, and a
// naive float64 LLaMa forward used as an oracle for the model's own code.
#pragma once

#include "mmca/core/dtype.hpp"
#include "mmca/io/llama_loader.hpp"
#include "mmca/language/config.hpp"

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <map>
#include <random>
#include <string>
#include <vector>

#include <sys/stat.h>
#include <unistd.h>

namespace mmca_test {

/// A tensor to write: name, safetensors dtype, shape and raw little-endian bytes.
struct st_tensor {
    std::string name;
    std::string dtype;
    std::vector<std::int64_t> shape;
    std::vector<unsigned char> bytes;
};

inline std::vector<unsigned char> float_bytes(const std::vector<float>& v, const std::string& dtype) {
    std::vector<unsigned char> out;
    if (dtype == "F32") {
        out.resize(v.size() * 4);
        std::memcpy(out.data(), v.data(), out.size());
    } else if (dtype == "BF16" || dtype == "F16") {
        out.resize(v.size() * 2);
        for (std::size_t i = 0; i < v.size(); ++i) {
            std::uint16_t bits;
            if (dtype == "BF16") {
                const mmca::bfloat16 b(v[i]);
                std::memcpy(&bits, &b, 2);
            } else {
                const mmca::float16 h(v[i]);
                std::memcpy(&bits, &h, 2);
            }
            std::memcpy(out.data() + 2 * i, &bits, 2);
        }
    }
    return out;
}

/// The header JSON the writer would produce for these tensors (data laid out in order).
inline nlohmann::json st_header(const std::vector<st_tensor>& tensors) {
    nlohmann::json h = nlohmann::json::object();
    std::uint64_t off = 0;
    for (const auto& t : tensors) {
        h[t.name] = {{"dtype", t.dtype}, {"shape", t.shape}, {"data_offsets", {off, off + t.bytes.size()}}};
        off += t.bytes.size();
    }
    return h;
}

/// Writes a file: 8-byte length, header text padded with spaces to a multiple of 8, then `data`.
inline void write_raw(const std::string& path, const std::string& header_text, const std::vector<unsigned char>& data,
                      bool pad = true) {
    std::string text = header_text;
    while (pad && (8 + text.size()) % 8 != 0) text.push_back(' ');
    std::ofstream f(path, std::ios::binary | std::ios::trunc);
    const std::uint64_t n = text.size();
    unsigned char len[8];
    for (int i = 0; i < 8; ++i) len[i] = static_cast<unsigned char>((n >> (8 * i)) & 0xff);
    f.write(reinterpret_cast<const char*>(len), 8);
    f.write(text.data(), static_cast<std::streamsize>(text.size()));
    f.write(reinterpret_cast<const char*>(data.data()), static_cast<std::streamsize>(data.size()));
}

inline void write_safetensors(const std::string& path, const std::vector<st_tensor>& tensors) {
    std::vector<unsigned char> data;
    for (const auto& t : tensors) data.insert(data.end(), t.bytes.begin(), t.bytes.end());
    write_raw(path, st_header(tensors).dump(), data);
}

inline std::string temp_path(const std::string& name) {
    return ::testing::TempDir() + "mmca_llama_" + std::to_string(::getpid()) + "_" + name;
}

/// A small random LLaMa: float weights by name (the oracle's copy) plus the config.
struct random_llama {
    mmca::llama_config config;
    std::map<std::string, std::vector<float>> weights;
    std::map<std::string, std::vector<std::int64_t>> shapes;
};

inline random_llama make_random_llama(const mmca::llama_config& c, std::uint32_t seed, float scale = 0.08f,
                                      bool with_bias = false) {
    random_llama r;
    r.config = c;
    std::mt19937 gen(seed);
    std::normal_distribution<float> nd(0.0f, 1.0f);
    auto add = [&](const std::string& name, std::vector<std::int64_t> shape, float s, float mean = 0.0f) {
        std::int64_t n = 1;
        for (auto d : shape) n *= d;
        std::vector<float> v(static_cast<std::size_t>(n));
        for (auto& x : v) x = mean + s * nd(gen);
        r.weights[name] = v;
        r.shapes[name] = shape;
    };
    const std::int64_t H = c.hidden_size, I = c.intermediate_size, V = c.vocab_size, D = c.head_dim();
    const std::int64_t Wq = c.num_heads * D, Wkv = c.num_kv_heads * D;
    const auto names = mmca::io::hf_llama_names();
    add(names.embed, {V, H}, 1.0f);
    add(names.norm, {H}, 0.1f, 1.0f);
    if (!c.tie_word_embeddings) add(names.lm_head, {V, H}, scale);
    for (std::int64_t l = 0; l < c.num_layers; ++l) {
        add(names.layer(l, "input_layernorm.weight"), {H}, 0.1f, 1.0f);
        add(names.layer(l, "post_attention_layernorm.weight"), {H}, 0.1f, 1.0f);
        add(names.layer(l, "self_attn.q_proj.weight"), {Wq, H}, scale * 3);
        add(names.layer(l, "self_attn.k_proj.weight"), {Wkv, H}, scale * 3);
        add(names.layer(l, "self_attn.v_proj.weight"), {Wkv, H}, scale);
        add(names.layer(l, "self_attn.o_proj.weight"), {H, Wq}, scale);
        if (with_bias) {
            add(names.layer(l, "self_attn.q_proj.bias"), {Wq}, 0.1f);
            add(names.layer(l, "self_attn.k_proj.bias"), {Wkv}, 0.1f);
            add(names.layer(l, "self_attn.v_proj.bias"), {Wkv}, 0.1f);
            add(names.layer(l, "self_attn.o_proj.bias"), {H}, 0.1f);
        }
        add(names.layer(l, "mlp.gate_proj.weight"), {I, H}, scale);
        add(names.layer(l, "mlp.up_proj.weight"), {I, H}, scale);
        add(names.layer(l, "mlp.down_proj.weight"), {H, I}, scale);
    }
    for (std::int64_t b = 0; b < c.num_cross_blocks(); ++b) {
        const std::int64_t Ic = c.cross_intermediate();
        add(names.cross(b, "attn_norm.weight"), {H}, 0.1f, 1.0f);
        add(names.cross(b, "q_proj.weight"), {Wq, H}, scale * 3);
        add(names.cross(b, "k_proj.weight"), {Wkv, H}, scale * 3);
        add(names.cross(b, "v_proj.weight"), {Wkv, H}, scale);
        add(names.cross(b, "o_proj.weight"), {H, Wq}, scale);
        add(names.cross(b, "attn_gate"), {1}, 0.0f, 0.7f);
        add(names.cross(b, "mlp_norm.weight"), {H}, 0.1f, 1.0f);
        add(names.cross(b, "mlp.gate_proj.weight"), {Ic, H}, scale);
        add(names.cross(b, "mlp.up_proj.weight"), {Ic, H}, scale);
        add(names.cross(b, "mlp.down_proj.weight"), {H, Ic}, scale);
        add(names.cross(b, "mlp_gate"), {1}, 0.0f, -0.4f);
    }
    return r;
}

/// Rounds every weight to the dtype (so float32 and bf16 files hold the same values).
inline void round_weights(random_llama& r, const std::string& dtype) {
    for (auto& kv : r.weights)
        for (auto& x : kv.second)
            x = dtype == "BF16" ? float(mmca::bfloat16(x)) : dtype == "F16" ? float(mmca::float16(x)) : x;
}

inline std::string config_json(const mmca::llama_config& c) {
    nlohmann::json j = {{"vocab_size", c.vocab_size},
                        {"hidden_size", c.hidden_size},
                        {"intermediate_size", c.intermediate_size},
                        {"num_hidden_layers", c.num_layers},
                        {"num_attention_heads", c.num_heads},
                        {"num_key_value_heads", c.num_kv_heads},
                        {"max_position_embeddings", c.max_positions},
                        {"rms_norm_eps", c.rms_norm_eps},
                        {"rope_theta", c.rope_theta},
                        {"bos_token_id", c.bos_token_id},
                        {"eos_token_id", c.eos_token_id},
                        {"tie_word_embeddings", c.tie_word_embeddings},
                        {"hidden_act", "silu"},
                        {"model_type", "llama"}};
    if (c.rope_scaling != mmca::nn::rope_scaling_type::none)
        j["rope_scaling"] = {{"type", mmca::nn::to_string(c.rope_scaling)}, {"factor", c.rope_factor}};
    else
        j["rope_scaling"] = nullptr;
    if (c.cross_attention_every > 0) {
        j["cross_attention_every"] = c.cross_attention_every;
        j["cross_attention_intermediate"] = c.cross_attention_intermediate;
    }
    return j.dump(2);
}

/// Writes the model as <dir>/model.safetensors + <dir>/config.json; returns dir.
inline std::string write_llama(const random_llama& r, const std::string& dir, const std::string& dtype = "F32") {
    ::mkdir(dir.c_str(), 0755);
    std::vector<st_tensor> tensors;
    for (const auto& kv : r.weights)
        tensors.push_back({kv.first, dtype, r.shapes.at(kv.first), float_bytes(kv.second, dtype)});
    write_safetensors(dir + "/model.safetensors", tensors);
    std::ofstream(dir + "/config.json") << config_json(r.config);
    return dir;
}

/// A tiny config for tests.
inline mmca::llama_config tiny_config(std::int64_t heads = 4, std::int64_t kv_heads = 2, std::int64_t layers = 2) {
    mmca::llama_config c;
    c.vocab_size = 61;
    c.hidden_size = 8 * heads;
    c.intermediate_size = 45;
    c.num_layers = layers;
    c.num_heads = heads;
    c.num_kv_heads = kv_heads;
    c.max_positions = 128;
    c.rms_norm_eps = 1e-5;
    c.eos_token_id = 2;
    return c;
}

/// Random float32 tensors for a test checkpoint, drawn in call order from one generator: put (given
/// values), rnd (normal values: mean + s · N(0, 1)), norm (a LayerNorm: weight around 1, bias
/// around 0).
struct random_tensor_list {
    std::vector<st_tensor> tensors;
    std::mt19937 gen;
    std::normal_distribution<float> nd{0.0f, 1.0f};

    explicit random_tensor_list(std::uint32_t seed) : gen(seed) {}

    void put(const std::string& name, std::vector<std::int64_t> shape, const std::vector<float>& v) {
        tensors.push_back({name, "F32", std::move(shape), float_bytes(v, "F32")});
    }
    void rnd(const std::string& name, std::vector<std::int64_t> shape, float s, float mean = 0.0f) {
        std::int64_t n = 1;
        for (auto d : shape) n *= d;
        std::vector<float> v(static_cast<std::size_t>(n));
        for (auto& x : v) x = mean + s * nd(gen);
        put(name, std::move(shape), v);
    }
    void norm(const std::string& name, std::int64_t d) {
        rnd(name + ".weight", {d}, 0.2f, 1.0f);
        rnd(name + ".bias", {d}, 0.1f);
    }
};

/// The language side of a visual-chat checkpoint (SPEC §9): r's LLaMa under lang_decoder.*, and a
/// copy of its token embedding as lang_embed.weight.
inline void add_visual_chat_language(random_tensor_list& t, const random_llama& r) {
    for (const auto& kv : r.weights) {
        if (kv.first == "model.embed_tokens.weight") t.put("lang_embed.weight", r.shapes.at(kv.first), kv.second);
        t.put("lang_decoder." + kv.first, r.shapes.at(kv.first), kv.second);
    }
}

/// A small QWen-VL ViT under vis_encoder.*: patch 14, width 32, a 3 x 3 position table (resized to
/// the image's patch grid at load), 2 blocks with MLP width 48, and a resampler to 4 tokens of
/// width E.
inline void add_tiny_qwen_vit(random_tensor_list& t, std::int64_t E) {
    const std::int64_t W = 32, M = 48, P = 14;
    const std::string p = "vis_encoder.";
    t.rnd(p + "conv1.weight", {W, 3, P, P}, 0.05f);
    t.rnd(p + "positional_embedding", {9, W}, 0.5f);
    t.norm(p + "ln_pre", W);
    for (int l = 0; l < 2; ++l) {
        const std::string b = p + "transformer.resblocks." + std::to_string(l) + ".";
        t.norm(b + "ln_1", W);
        t.norm(b + "ln_2", W);
        t.rnd(b + "attn.in_proj.weight", {3 * W, W}, 0.1f);
        t.rnd(b + "attn.in_proj.bias", {3 * W}, 0.1f);
        t.rnd(b + "attn.out_proj.weight", {W, W}, 0.1f);
        t.rnd(b + "attn.out_proj.bias", {W}, 0.1f);
        t.rnd(b + "mlp.c_fc.weight", {M, W}, 0.1f);
        t.rnd(b + "mlp.c_fc.bias", {M}, 0.1f);
        t.rnd(b + "mlp.c_proj.weight", {W, M}, 0.1f);
        t.rnd(b + "mlp.c_proj.bias", {W}, 0.1f);
    }
    t.rnd(p + "attn_pool.query", {4, E}, 0.5f);
    t.rnd(p + "attn_pool.kv_proj.weight", {E, W}, 0.1f);
    t.norm(p + "attn_pool.ln_q", E);
    t.norm(p + "attn_pool.ln_kv", E);
    t.rnd(p + "attn_pool.attn.in_proj_weight", {3 * E, E}, 0.1f);
    t.rnd(p + "attn_pool.attn.in_proj_bias", {3 * E}, 0.1f);
    t.rnd(p + "attn_pool.attn.out_proj.weight", {E, E}, 0.1f);
    t.rnd(p + "attn_pool.attn.out_proj.bias", {E}, 0.1f);
    t.norm(p + "ln_post", E);
}

/// A visual-chat checkpoint folder (model.safetensors + config.json): r's LLaMa (config c), a small
/// QWen-VL ViT with 4 queries of width 16 (add_tiny_qwen_vit) and a baseline projector (Linear 16 → H
/// + LayerNorm), random from `seed`. Returns dir.
inline std::string write_visual_chat_checkpoint(const std::string& dir, const mmca::llama_config& c,
                                                const random_llama& r, std::uint32_t seed) {
    ::mkdir(dir.c_str(), 0755);
    random_tensor_list t(seed);
    add_visual_chat_language(t, r);
    const std::int64_t E = 16, H = c.hidden_size;
    add_tiny_qwen_vit(t, E);
    t.rnd("projection.0.weight", {H, E}, 0.2f);
    t.rnd("projection.0.bias", {H}, 0.1f);
    t.rnd("projection.1.weight", {H}, 0.1f, 1.0f);
    t.rnd("projection.1.bias", {H}, 0.1f);
    write_safetensors(dir + "/model.safetensors", t.tensors);
    std::ofstream(dir + "/config.json") << config_json(c);
    return dir;
}

}  // namespace mmca_test
