// mmca/io/vision_loader.hpp - the vision encoders from safetensors checkpoints, viewed in place.
//
//   auto ckpt = mmca::io::checkpoint::open("visual-chat.safetensors");
//   mmca::vision::qwen_vit qwen = mmca::io::load_qwen_vit(ckpt);                    // "vis_encoder." names
//   mmca::vision::clip_vit clip = mmca::io::load_clip_vit(ckpt, "vision_model.");   // HF CLIP names
//
// QWen-VL ViT (SPEC §9; prefix "vis_encoder." in visual-chat checkpoints, "transformer.visual." in
// QWen-VL's own), names after the prefix:
//   conv1.weight [W, 3, P, P]   positional_embedding [g0², W]   ln_pre.{weight,bias}
//   transformer.resblocks.N.{ln_1,ln_2}.{weight,bias}
//   transformer.resblocks.N.attn.in_proj.{weight [3W, W], bias}   (per-head interleaved q|k|v)
//   transformer.resblocks.N.attn.out_proj.{weight,bias}   transformer.resblocks.N.mlp.{c_fc,c_proj}.{weight,bias}
//   attn_pool.query [Q, E]   attn_pool.pos_embed [Q, E] (optional: the 2D sin-cos table when absent)
//   attn_pool.kv_proj.weight [E, W] (+ optional bias)   attn_pool.ln_q / ln_kv.{weight,bias}
//   attn_pool.attn.in_proj_weight [3E, E], attn_pool.attn.in_proj_bias, attn_pool.attn.out_proj.{weight,bias}
//   ln_post.{weight,bias}                                  (QWen-VL's final `proj` is not used)
// HF CLIP vision tower (prefix "vision_model." for CLIPVisionModel and CLIPModel checkpoints; wrapped
// models add their own, e.g. "model.vision_tower.vision_tower.vision_model."), names after the prefix:
//   embeddings.class_embedding [W]   embeddings.patch_embedding.weight [W, C, P, P]
//   embeddings.position_embedding.weight [1 + G², W]   pre_layrnorm.{weight,bias}
//   encoder.layers.N.{layer_norm1,layer_norm2}.{weight,bias}
//   encoder.layers.N.self_attn.{q_proj,k_proj,v_proj,out_proj}.{weight,bias}   encoder.layers.N.mlp.{fc1,fc2}.{weight,bias}
//   (post_layernorm, which HF applies to the pooled CLS row only, is not used)
//
// The checkpoint stays memory-mapped; matrices keep their stored dtype (F32, F16 or BF16). Every
// tensor the config implies is checked (present, shape, dtype) before an encoder exists; errors name
// the tensor. The deduce_* functions read the shape-visible fields of a config from the tensors
// (widths, patch size, layer count, position grid, queries); what shapes do not show (heads, image
// size of a QWen ViT, eps, activation) comes from `base`.
#pragma once

#include "mmca/core/error.hpp"
#include "mmca/io/checkpoint.hpp"
#include "mmca/io/llama_loader.hpp"
#include "mmca/nn/activation.hpp"
#include "mmca/vision/clip_vit.hpp"
#include "mmca/vision/qwen_vit.hpp"

#include <nlohmann/json.hpp>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace mmca::io {

namespace detail {

/// A conv weight [rows, C, P, P] viewed as the matrix [rows, C·P·P].
inline nn::matrix_ref conv_matrix(const checkpoint& ckpt, const std::string& name, std::int64_t rows, std::int64_t C,
                                  std::int64_t P, llama_storage* storage, const char* where) {
    const tensor_info& t = checked_tensor(ckpt, name, {rows, C, P, P}, where);
    return nn::matrix_ref{t.storage_type(), aligned_data(t, storage), rows, C * P * P};
}

/// A small float32 copy of a tensor of exactly `shape`.
inline std::vector<float> table(const checkpoint& ckpt, const std::string& name, const std::vector<std::int64_t>& shape,
                                const char* where) {
    return widened(checked_tensor(ckpt, name, shape, where));
}

/// The shape of tensor `name`, which must exist with `rank` dimensions.
inline const std::vector<std::int64_t>& shape_of(const checkpoint& ckpt, const std::string& name, std::size_t rank,
                                                 const char* where, const std::string& what) {
    const tensor_info* t = ckpt.find(name);
    if (!t)
        throw invalid_argument(where, "checkpoint", "no tensor '" + name + "' in " + ckpt.describe(),
                               "a tensor '" + name + "' (" + what + ", missing tensor)");
    if (t->shape.size() != rank)
        throw invalid_argument(where, "checkpoint", "tensor '" + name + "' of shape " + t->shape_text(),
                               std::to_string(rank) + " dimensions (" + what + ")");
    return t->shape;
}

/// Number of consecutive layers l = 0, 1, … for which `prefix + l + suffix` exists.
inline std::int64_t count_layers(const checkpoint& ckpt, const std::string& prefix, const std::string& suffix) {
    std::int64_t n = 0;
    while (ckpt.find(prefix + std::to_string(n) + suffix)) ++n;
    return n;
}

}  // namespace detail

// ---------------------------------------------------------------------------------------------
// QWen-VL ViT
// ---------------------------------------------------------------------------------------------

/// A config whose widths, patch size, layer count, MLP width, position grid, queries and output
/// width are read from the checkpoint's shapes; image_size, heads, pool_heads and eps come from base
/// (pool_heads 0: E / 128, QWen-VL's rule).
inline vision::qwen_vit_config deduce_qwen_vit_config(const checkpoint& ckpt, const std::string& prefix = "vis_encoder.",
                                                      vision::qwen_vit_config base = {}) {
    const char* where = "mmca::io::deduce_qwen_vit_config";
    using mmca::detail::to_text;
    vision::qwen_vit_config c = base;
    const auto& conv = detail::shape_of(ckpt, prefix + "conv1.weight", 4, where, "the patch embedding [W, 3, P, P]");
    if (conv[1] != 3 || conv[2] != conv[3])
        throw invalid_argument(where, "checkpoint", "tensor '" + prefix + "conv1.weight' of shape " +
                                                        mmca::detail::shape_text(conv),
                               "[W, 3, P, P] (a square patch over 3 channels)");
    c.width = conv[0];
    c.patch_size = conv[2];
    const auto& pos = detail::shape_of(ckpt, prefix + "positional_embedding", 2, where, "the learned positions [g0², W]");
    c.pos_grid = vision::detail::grid_side(pos[0]);
    if (c.pos_grid <= 0)
        throw invalid_argument(where, "checkpoint", "tensor '" + prefix + "positional_embedding' of shape " +
                                                        mmca::detail::shape_text(pos),
                               "[g0², W]: a square number of rows");
    c.layers = detail::count_layers(ckpt, prefix + "transformer.resblocks.", ".mlp.c_fc.weight");
    if (c.layers > 0)
        c.mlp_width = detail::shape_of(ckpt, prefix + "transformer.resblocks.0.mlp.c_fc.weight", 2, where,
                                       "the MLP's first matrix [M, W]")[0];
    const auto& query = detail::shape_of(ckpt, prefix + "attn_pool.query", 2, where, "the resampler's queries [Q, E]");
    c.queries = query[0];
    c.output_dim = query[1];
    if (base.pool_heads == 0) c.pool_heads = c.output_dim / 128;
    c.validate((std::string(where) + " (" + prefix + "*)").c_str());
    return c;
}

/// Views of every weight of a QWen-VL ViT of shape `config` under `prefix`.
inline vision::qwen_vit_weights load_qwen_vit_weights(const checkpoint& ckpt, const vision::qwen_vit_config& config,
                                                      const std::string& prefix = "vis_encoder.") {
    const char* where = "mmca::io::load_qwen_vit";
    config.validate(where);
    const std::int64_t W = config.width, M = config.mlp_width, E = config.output_dim, Q = config.queries;
    const std::int64_t P = config.patch_size, g0 = config.pos_grid;
    auto storage = std::make_shared<llama_storage>();
    storage->files = ckpt.storage();
    auto matrix = [&](const std::string& name, std::int64_t rows, std::int64_t cols) {
        return detail::matrix(ckpt, prefix + name, rows, cols, storage.get(), where);
    };
    auto vec = [&](const std::string& name, std::int64_t n) { return detail::vector(ckpt, prefix + name, n, where); };

    vision::qwen_vit_weights w;
    w.patch_embed = detail::conv_matrix(ckpt, prefix + "conv1.weight", W, 3, P, storage.get(), where);
    w.positions = detail::table(ckpt, prefix + "positional_embedding", {g0 * g0, W}, where);
    w.ln_pre_w = vec("ln_pre.weight", W);
    w.ln_pre_b = vec("ln_pre.bias", W);
    w.blocks.resize(static_cast<std::size_t>(config.layers));
    for (std::int64_t l = 0; l < config.layers; ++l) {
        auto& b = w.blocks[static_cast<std::size_t>(l)];
        const std::string p = "transformer.resblocks." + std::to_string(l) + ".";
        b.ln1_w = vec(p + "ln_1.weight", W);
        b.ln1_b = vec(p + "ln_1.bias", W);
        b.ln2_w = vec(p + "ln_2.weight", W);
        b.ln2_b = vec(p + "ln_2.bias", W);
        b.layout = vision::qkv_layout::fused_interleaved_per_head;
        b.qkv = matrix(p + "attn.in_proj.weight", 3 * W, W);
        b.qkv_bias = vec(p + "attn.in_proj.bias", 3 * W);
        b.out = matrix(p + "attn.out_proj.weight", W, W);
        b.out_bias = vec(p + "attn.out_proj.bias", W);
        b.fc1 = matrix(p + "mlp.c_fc.weight", M, W);
        b.fc1_bias = vec(p + "mlp.c_fc.bias", M);
        b.fc2 = matrix(p + "mlp.c_proj.weight", W, M);
        b.fc2_bias = vec(p + "mlp.c_proj.bias", W);
    }
    auto& pool = w.pool;
    pool.query = detail::table(ckpt, prefix + "attn_pool.query", {Q, E}, where);
    if (ckpt.find(prefix + "attn_pool.pos_embed"))
        pool.q_pos = detail::table(ckpt, prefix + "attn_pool.pos_embed", {Q, E}, where);
    pool.kv_proj = matrix("attn_pool.kv_proj.weight", E, W);
    pool.kv_proj_bias = detail::optional_vector(ckpt, prefix + "attn_pool.kv_proj.bias", E, where);
    pool.ln_q_w = vec("attn_pool.ln_q.weight", E);
    pool.ln_q_b = vec("attn_pool.ln_q.bias", E);
    pool.ln_kv_w = vec("attn_pool.ln_kv.weight", E);
    pool.ln_kv_b = vec("attn_pool.ln_kv.bias", E);
    pool.in_proj = matrix("attn_pool.attn.in_proj_weight", 3 * E, E);
    pool.in_proj_bias = vec("attn_pool.attn.in_proj_bias", 3 * E);
    pool.out_proj = matrix("attn_pool.attn.out_proj.weight", E, E);
    pool.out_proj_bias = vec("attn_pool.attn.out_proj.bias", E);
    w.ln_post_w = vec("ln_post.weight", E);
    w.ln_post_b = vec("ln_post.bias", E);
    w.storage = storage;
    return w;
}

/// A QWen-VL ViT of shape `config` from the tensors under `prefix`.
inline vision::qwen_vit load_qwen_vit(const checkpoint& ckpt, const std::string& prefix,
                                      const vision::qwen_vit_config& config) {
    return vision::qwen_vit(config, load_qwen_vit_weights(ckpt, config, prefix));
}

/// A QWen-VL ViT whose shape is deduced from the checkpoint (image_size, heads, eps: QWen-VL's).
inline vision::qwen_vit load_qwen_vit(const checkpoint& ckpt, const std::string& prefix = "vis_encoder.") {
    return load_qwen_vit(ckpt, prefix, deduce_qwen_vit_config(ckpt, prefix));
}

// ---------------------------------------------------------------------------------------------
// HF CLIP vision tower
// ---------------------------------------------------------------------------------------------

/// A CLIP vision config from HF JSON text: a CLIPVisionConfig (config.json of a CLIPVisionModel) or a
/// CLIPConfig whose "vision_config" holds it. Keys read: hidden_size, intermediate_size,
/// num_hidden_layers, num_attention_heads, num_channels, image_size, patch_size, layer_norm_eps,
/// hidden_act; a missing key takes HF's CLIPVisionConfig default (768, 3072, 12, 12, 3, 224, 32,
/// 1e-5, "quick_gelu"). A present key of the wrong JSON type is an error.
inline vision::clip_vit_config parse_clip_vision_config(const std::string& text,
                                                        const std::string& source = "config.json") {
    const char* where = "mmca::io::parse_clip_vision_config";
    const nlohmann::json root = detail::parse_json_strict(text.data(), text.data() + text.size(), source, "config", 16);
    auto bad = [&](const std::string& key, const std::string& seen, const std::string& expected) {
        throw invalid_argument(where, key, source + ": " + seen, expected);
    };
    if (!root.is_object()) bad("config", "a " + std::string(root.type_name()), "a JSON object");
    const bool nested = root.contains("vision_config") && !root["vision_config"].is_null();
    if (nested && !root["vision_config"].is_object())
        bad("vision_config", root["vision_config"].dump(), "a JSON object (a CLIPVisionConfig)");
    const nlohmann::json& j = nested ? root["vision_config"] : root;
    vision::clip_vit_config c;
    c.hidden_size = 768;
    c.intermediate_size = 3072;
    c.num_layers = 12;
    c.num_heads = 12;
    c.num_channels = 3;
    c.image_size = 224;
    c.patch_size = 32;
    c.layer_norm_eps = 1e-5f;
    c.hidden_act = nn::activation::quick_gelu;
    auto get_int = [&](const char* key, std::int64_t& out) {
        if (!j.contains(key) || j[key].is_null()) return;
        if (!j[key].is_number_integer()) bad(key, j[key].dump(), "an integer");
        out = j[key].get<std::int64_t>();
    };
    get_int("hidden_size", c.hidden_size);
    get_int("intermediate_size", c.intermediate_size);
    get_int("num_hidden_layers", c.num_layers);
    get_int("num_attention_heads", c.num_heads);
    get_int("num_channels", c.num_channels);
    get_int("image_size", c.image_size);
    get_int("patch_size", c.patch_size);
    if (j.contains("layer_norm_eps") && !j["layer_norm_eps"].is_null()) {
        if (!j["layer_norm_eps"].is_number()) bad("layer_norm_eps", j["layer_norm_eps"].dump(), "a number");
        c.layer_norm_eps = j["layer_norm_eps"].get<float>();
    }
    if (j.contains("hidden_act") && !j["hidden_act"].is_null()) {
        if (!j["hidden_act"].is_string()) bad("hidden_act", j["hidden_act"].dump(), "a string");
        c.hidden_act = nn::parse_activation(j["hidden_act"].get<std::string>(), where);
    }
    c.validate((std::string(where) + " (" + source + ")").c_str());
    return c;
}

/// Reads and parses a CLIP config.json file.
inline vision::clip_vit_config read_clip_vision_config(const std::string& path) {
    return parse_clip_vision_config(detail::read_text_file(path, "mmca::io::read_clip_vision_config", 10'000'000), path);
}

/// A config whose width, channels, patch size, image size, layer count and MLP width are read from
/// the checkpoint's shapes; heads, eps and activation come from base (ViT-L/14's by default;
/// num_heads 0: hidden_size / 64, the head size of OpenAI's CLIP ViTs).
inline vision::clip_vit_config deduce_clip_vit_config(const checkpoint& ckpt, const std::string& prefix = "vision_model.",
                                                      vision::clip_vit_config base = {}) {
    const char* where = "mmca::io::deduce_clip_vit_config";
    vision::clip_vit_config c = base;
    const std::string conv_name = prefix + "embeddings.patch_embedding.weight";
    const auto& conv = detail::shape_of(ckpt, conv_name, 4, where, "the patch embedding [W, C, P, P]");
    if (conv[2] != conv[3])
        throw invalid_argument(where, "checkpoint", "tensor '" + conv_name + "' of shape " + mmca::detail::shape_text(conv),
                               "[W, C, P, P] (a square patch)");
    c.hidden_size = conv[0];
    c.num_channels = conv[1];
    c.patch_size = conv[2];
    if (base.num_heads == 0) c.num_heads = c.hidden_size / 64;
    const std::string pos_name = prefix + "embeddings.position_embedding.weight";
    const auto& pos = detail::shape_of(ckpt, pos_name, 2, where, "the positions [1 + G², W]");
    const std::int64_t G = vision::detail::grid_side(pos[0] - 1);
    if (G <= 0)
        throw invalid_argument(where, "checkpoint", "tensor '" + pos_name + "' of shape " + mmca::detail::shape_text(pos),
                               "[1 + G², W] (a class token and a square grid of patches)");
    c.image_size = G * c.patch_size;
    c.num_layers = detail::count_layers(ckpt, prefix + "encoder.layers.", ".mlp.fc1.weight");
    if (c.num_layers > 0)
        c.intermediate_size = detail::shape_of(ckpt, prefix + "encoder.layers.0.mlp.fc1.weight", 2, where,
                                               "the MLP's first matrix [I, W]")[0];
    c.validate((std::string(where) + " (" + prefix + "*)").c_str());
    return c;
}

/// Views of every weight of a CLIP vision tower of shape `config` under `prefix`.
inline vision::clip_vit_weights load_clip_vit_weights(const checkpoint& ckpt, const vision::clip_vit_config& config,
                                                      const std::string& prefix = "vision_model.") {
    const char* where = "mmca::io::load_clip_vit";
    config.validate(where);
    const std::int64_t W = config.hidden_size, I = config.intermediate_size;
    auto storage = std::make_shared<llama_storage>();
    storage->files = ckpt.storage();
    auto matrix = [&](const std::string& name, std::int64_t rows, std::int64_t cols) {
        return detail::matrix(ckpt, prefix + name, rows, cols, storage.get(), where);
    };
    auto vec = [&](const std::string& name, std::int64_t n) { return detail::vector(ckpt, prefix + name, n, where); };

    vision::clip_vit_weights w;
    w.patch_embed = detail::conv_matrix(ckpt, prefix + "embeddings.patch_embedding.weight", W, config.num_channels,
                                        config.patch_size, storage.get(), where);
    w.class_embedding = vec("embeddings.class_embedding", W);
    w.position_embedding = detail::table(ckpt, prefix + "embeddings.position_embedding.weight", {config.tokens(), W}, where);
    w.pre_ln_w = vec("pre_layrnorm.weight", W);
    w.pre_ln_b = vec("pre_layrnorm.bias", W);
    w.layers.resize(static_cast<std::size_t>(config.num_layers));
    for (std::int64_t l = 0; l < config.num_layers; ++l) {
        auto& L = w.layers[static_cast<std::size_t>(l)];
        const std::string p = "encoder.layers." + std::to_string(l) + ".";
        L.ln1_w = vec(p + "layer_norm1.weight", W);
        L.ln1_b = vec(p + "layer_norm1.bias", W);
        L.ln2_w = vec(p + "layer_norm2.weight", W);
        L.ln2_b = vec(p + "layer_norm2.bias", W);
        L.layout = vision::qkv_layout::separate;
        L.q = matrix(p + "self_attn.q_proj.weight", W, W);
        L.k = matrix(p + "self_attn.k_proj.weight", W, W);
        L.v = matrix(p + "self_attn.v_proj.weight", W, W);
        L.q_bias = vec(p + "self_attn.q_proj.bias", W);
        L.k_bias = vec(p + "self_attn.k_proj.bias", W);
        L.v_bias = vec(p + "self_attn.v_proj.bias", W);
        L.out = matrix(p + "self_attn.out_proj.weight", W, W);
        L.out_bias = vec(p + "self_attn.out_proj.bias", W);
        L.fc1 = matrix(p + "mlp.fc1.weight", I, W);
        L.fc1_bias = vec(p + "mlp.fc1.bias", I);
        L.fc2 = matrix(p + "mlp.fc2.weight", W, I);
        L.fc2_bias = vec(p + "mlp.fc2.bias", W);
    }
    w.storage = storage;
    return w;
}

/// A CLIP vision tower of shape `config` from the tensors under `prefix`.
inline vision::clip_vit load_clip_vit(const checkpoint& ckpt, const std::string& prefix,
                                      const vision::clip_vit_config& config) {
    return vision::clip_vit(config, load_clip_vit_weights(ckpt, config, prefix));
}

/// A CLIP vision tower whose shape is deduced from the checkpoint (heads, eps, activation: ViT-L/14's).
inline vision::clip_vit load_clip_vit(const checkpoint& ckpt, const std::string& prefix = "vision_model.") {
    return load_clip_vit(ckpt, prefix, deduce_clip_vit_config(ckpt, prefix));
}

}  // namespace mmca::io
