// mmca/io/llama_loader.hpp - a LLaMa decoder from a safetensors checkpoint, viewed in place.
//
//   auto model = mmca::io::load_llama_model<mmca::bfloat16>("llama-2-7b-hf", options);
//
// The checkpoint stays memory-mapped; matrices keep their stored dtype (F32, F16 or BF16) and are
// never converted as a whole. Every tensor the config implies is checked (present, rank, shape,
// dtype) before a model exists; the error names the tensor, what it is and what was expected.
#pragma once

#include "mmca/core/error.hpp"
#include "mmca/io/checkpoint.hpp"
#include "mmca/io/llama_config_json.hpp"
#include "mmca/io/name_map.hpp"
#include "mmca/language/model.hpp"
#include "mmca/language/weights.hpp"

#include <cstring>
#include <memory>
#include <string>
#include <vector>

namespace mmca::io {

/// What a loaded model's weights point into: the mapped files, plus aligned copies of the rare
/// tensors a file stores at an offset that is not a multiple of their element size.
struct llama_storage {
    std::shared_ptr<const void> files;
    std::vector<std::vector<std::uint64_t>> copies;
};

namespace detail {

/// The tensor `name` of exactly `shape` in F32/F16/BF16; errors name `where` as the function.
inline const tensor_info& checked_tensor(const checkpoint& ckpt, const std::string& name,
                                         const std::vector<std::int64_t>& shape,
                                         const char* where = "mmca::io::load_llama_weights") {
    const tensor_info* t = ckpt.find(name);
    if (!t)
        throw invalid_argument(where, "checkpoint", "no tensor '" + name + "' in " + ckpt.describe(),
                               "a tensor '" + name + "' of shape " + mmca::detail::shape_text(shape) +
                                   " (missing tensor)");
    if (!t->supported())
        throw invalid_argument(where, "checkpoint",
                               "tensor '" + name + "' of dtype " + st_dtype_name(t->type) + " (unsupported dtype)",
                               "F32, F16 or BF16");
    if (t->shape != shape)
        throw invalid_argument(where, "checkpoint", "tensor '" + name + "' of shape " + t->shape_text(),
                               "shape " + mmca::detail::shape_text(shape) + " (from the config)");
    return *t;
}

/// The tensor's bytes in place, or an aligned copy kept in `storage` when they are misaligned.
inline const void* aligned_data(const tensor_info& t, llama_storage* storage) {
    if (t.aligned()) return t.data;
    std::vector<std::uint64_t> copy(static_cast<std::size_t>((t.end - t.begin + 7) / 8));
    std::memcpy(copy.data(), t.data, static_cast<std::size_t>(t.end - t.begin));
    storage->copies.push_back(std::move(copy));
    return storage->copies.back().data();
}

inline nn::matrix_ref matrix(const checkpoint& ckpt, const std::string& name, std::int64_t rows, std::int64_t cols,
                             llama_storage* storage, const char* where = "mmca::io::load_llama_weights") {
    const tensor_info& t = checked_tensor(ckpt, name, {rows, cols}, where);
    return nn::matrix_ref{t.storage_type(), aligned_data(t, storage), rows, cols};
}

inline std::vector<float> widened(const tensor_info& t) {
    std::vector<float> out(static_cast<std::size_t>(t.numel()));
    nn::dispatch_dtype(t.storage_type(), [&](auto tag) {
        using T = decltype(tag);
        std::vector<T> tmp(static_cast<std::size_t>(t.numel()));
        if (!tmp.empty()) std::memcpy(tmp.data(), t.data, tmp.size() * sizeof(T));  // any alignment
        to_float(tmp.data(), out.data(), t.numel());
    });
    return out;
}

inline std::vector<float> vector(const checkpoint& ckpt, const std::string& name, std::int64_t n,
                                 const char* where = "mmca::io::load_llama_weights") {
    return widened(checked_tensor(ckpt, name, {n}, where));
}

/// An optional bias: empty when absent, checked when present.
inline std::vector<float> optional_vector(const checkpoint& ckpt, const std::string& name, std::int64_t n,
                                          const char* where = "mmca::io::load_llama_weights") {
    return ckpt.find(name) ? vector(ckpt, name, n, where) : std::vector<float>{};
}

/// A scalar stored as shape [] or [1].
inline float scalar(const checkpoint& ckpt, const std::string& name) {
    const tensor_info* t = ckpt.find(name);
    if (t && t->shape.empty()) return widened(checked_tensor(ckpt, name, {}))[0];
    return widened(checked_tensor(ckpt, name, {1}))[0];
}

}  // namespace detail

/// Views of every weight of `config` in `ckpt` under the names of `names`.
inline llama_weights load_llama_weights(const checkpoint& ckpt, const llama_config& config, const llama_name_map& names) {
    config.validate("mmca::io::load_llama_weights");
    using detail::vector;
    const std::int64_t H = config.hidden_size, I = config.intermediate_size, V = config.vocab_size;
    const std::int64_t Wq = config.num_heads * config.head_dim(), Wkv = config.num_kv_heads * config.head_dim();
    llama_weights w;
    auto storage = std::make_shared<llama_storage>();
    storage->files = ckpt.storage();
    auto matrix = [&](const checkpoint& c, const std::string& name, std::int64_t rows, std::int64_t cols) {
        return detail::matrix(c, name, rows, cols, storage.get());
    };
    w.embed = matrix(ckpt, names.embed, V, H);
    w.norm = vector(ckpt, names.norm, H);
    if (config.tie_word_embeddings && !ckpt.find(names.lm_head))
        w.lm_head = w.embed;
    else
        w.lm_head = matrix(ckpt, names.lm_head, V, H);
    w.layers.resize(static_cast<std::size_t>(config.num_layers));
    for (std::int64_t l = 0; l < config.num_layers; ++l) {
        auto& L = w.layers[static_cast<std::size_t>(l)];
        auto n = [&](const char* suffix) { return names.layer(l, suffix); };
        L.attn_norm = vector(ckpt, n("input_layernorm.weight"), H);
        L.mlp_norm = vector(ckpt, n("post_attention_layernorm.weight"), H);
        L.q = matrix(ckpt, n("self_attn.q_proj.weight"), Wq, H);
        L.k = matrix(ckpt, n("self_attn.k_proj.weight"), Wkv, H);
        L.v = matrix(ckpt, n("self_attn.v_proj.weight"), Wkv, H);
        L.o = matrix(ckpt, n("self_attn.o_proj.weight"), H, Wq);
        L.q_bias = detail::optional_vector(ckpt, n("self_attn.q_proj.bias"), Wq);
        L.k_bias = detail::optional_vector(ckpt, n("self_attn.k_proj.bias"), Wkv);
        L.v_bias = detail::optional_vector(ckpt, n("self_attn.v_proj.bias"), Wkv);
        L.o_bias = detail::optional_vector(ckpt, n("self_attn.o_proj.bias"), H);
        L.mlp.gate = matrix(ckpt, n("mlp.gate_proj.weight"), I, H);
        L.mlp.up = matrix(ckpt, n("mlp.up_proj.weight"), I, H);
        L.mlp.down = matrix(ckpt, n("mlp.down_proj.weight"), H, I);
    }
    const std::int64_t Ic = config.cross_intermediate();
    w.cross_blocks.resize(static_cast<std::size_t>(config.num_cross_blocks()));
    for (std::int64_t c = 0; c < config.num_cross_blocks(); ++c) {
        auto& X = w.cross_blocks[static_cast<std::size_t>(c)];
        auto n = [&](const char* suffix) { return names.cross(c, suffix); };
        X.attn_norm = vector(ckpt, n("attn_norm.weight"), H);
        X.q = matrix(ckpt, n("q_proj.weight"), Wq, H);
        X.k = matrix(ckpt, n("k_proj.weight"), Wkv, H);
        X.v = matrix(ckpt, n("v_proj.weight"), Wkv, H);
        X.o = matrix(ckpt, n("o_proj.weight"), H, Wq);
        X.attn_gate = detail::scalar(ckpt, n("attn_gate"));
        X.mlp_norm = vector(ckpt, n("mlp_norm.weight"), H);
        X.mlp.gate = matrix(ckpt, n("mlp.gate_proj.weight"), Ic, H);
        X.mlp.up = matrix(ckpt, n("mlp.up_proj.weight"), Ic, H);
        X.mlp.down = matrix(ckpt, n("mlp.down_proj.weight"), H, Ic);
        X.mlp_gate = detail::scalar(ckpt, n("mlp_gate"));
    }
    w.storage = storage;
    return w;
}

struct llama_load_options {
    std::string config_path;  ///< config.json; empty: "config.json" next to the checkpoint
    std::string names = "auto";  ///< "auto", "hf" or "visual_chat"
};

/// Config + weights of a checkpoint (path: folder, .safetensors file or index .json).
/// For a visual-chat checkpoint whose vocabulary was extended (SPEC §6: 32000 + 3 added tokens), the
/// vocabulary size is taken from its embedding when lm_head has the same number of rows.
inline std::pair<llama_config, llama_weights> load_llama(const std::string& path, const llama_load_options& load = {}) {
    const checkpoint ckpt = checkpoint::open(path);
    std::string config_path = load.config_path;
    if (config_path.empty())
        config_path = detail::join_path(detail::is_directory(path) ? path : detail::parent_directory(path), "config.json");
    llama_config config = read_llama_config(config_path);
    const llama_name_map names = load.names == "auto" ? detect_llama_names(ckpt) : llama_names(load.names);
    if (names.name == "visual_chat") {
        const tensor_info* e = ckpt.find(names.embed);
        const tensor_info* h = ckpt.find(names.lm_head);
        if (e && h && e->shape.size() == 2 && h->shape.size() == 2 && e->shape[0] == h->shape[0] &&
            e->shape[0] != config.vocab_size)
            config.vocab_size = e->shape[0];
    }
    llama_weights weights = load_llama_weights(ckpt, config, names);
    return {config, std::move(weights)};
}

/// A ready model (caches allocated) from a checkpoint.
template <class KV = float>
llama_model<KV> load_llama_model(const std::string& path, const llama_model_options& options = {},
                                 const llama_load_options& load = {}) {
    auto [config, weights] = load_llama(path, load);
    return llama_model<KV>(std::move(config), std::move(weights), options);
}

}  // namespace mmca::io
