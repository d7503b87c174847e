// mmca/io/projector_loader.hpp - a projector (SPEC §4) from a checkpoint, viewed in place.
//
//   auto ckpt = mmca::io::checkpoint::open("dsvl-checkpoint");
//   mmca::vision::projector p = mmca::io::load_projector(ckpt);            // kind and sizes from the tensors
//   mmca::vision::projector q = mmca::io::load_projector(ckpt, "projection.", config);  // a config to check against
//
// Tensor names below `prefix` (the reference model's `projection.` module):
//   baseline   0.weight [H, Dv], 0.bias [H]                      Linear
//              1.weight [H], 1.bias [H]                          LayerNorm (eps 1e-12)
//   vit        vis_layer.layer_norm1.{weight,bias} [Dv]          the encoder layer (HF CLIPEncoderLayer)
//              vis_layer.self_attn.{q,k,v,out}_proj.weight [Dv, Dv], .bias [Dv]
//              vis_layer.layer_norm2.{weight,bias} [Dv]
//              vis_layer.mlp.fc1.weight [M, Dv], .bias [M];  vis_layer.mlp.fc2.weight [Dv, M], .bias [Dv]
//              projection.0.weight [H, Dv], .bias [H]            Linear
//              projection.1.{weight,bias} [H]                    LayerNorm (eps 1e-12)
//   perceiver  query [Q, H]                                      learned queries
//              pos_embed [Q, H]                                  optional: the stored sin-cos table of the queries
//              kv_proj.weight [H, Dv], .bias [H]
//              ln_q.{weight,bias} [H], ln_kv.{weight,bias} [H]
//              attn.in_proj_weight [3H, H], attn.in_proj_bias [3H]   (torch.nn.MultiheadAttention, rows q | k | v)
//              attn.out_proj.weight [H, H], .bias [H]
//              projection.0.{weight,bias} [H]                    LayerNorm (eps 1e-12)
//              projection.1.weight [H, H], .bias [H]             Linear
// Biases of Linear layers may be absent (then there is none); every other tensor must be present.
// What the shapes do not say comes from the config: the vit layer's heads, activation and eps; the
// perceiver's heads (default H / 128), its tokens per image and whether they start with a CLS token.
#pragma once

#include "mmca/core/error.hpp"
#include "mmca/io/checkpoint.hpp"
#include "mmca/io/llama_loader.hpp"
#include "mmca/vision/projector.hpp"

#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace mmca::io {

namespace detail {

inline constexpr const char* projector_where = "mmca::io::load_projector";

/// The shape of tensor `name`, which must exist and have `rank` dimensions.
inline std::vector<std::int64_t> projector_tensor_shape(const checkpoint& ckpt, const std::string& name,
                                                        std::size_t rank, const char* what) {
    const tensor_info* t = ckpt.find(name);
    if (!t)
        throw invalid_argument(projector_where, "checkpoint", "no tensor '" + name + "' in " + ckpt.describe(),
                               "a tensor '" + name + "' (" + what + "; missing tensor)");
    if (t->shape.size() != rank)
        throw invalid_argument(projector_where, "checkpoint", "tensor '" + name + "' of shape " + t->shape_text(),
                               std::to_string(rank) + " dimensions (" + what + ")");
    return t->shape;
}

}  // namespace detail

/// The kind of projector stored under prefix, from the names present: `vis_layer.*` (vit), `query` or
/// `kv_proj.weight` (perceiver), `0.weight` (baseline).
inline vision::projector_kind detect_projector_kind(const checkpoint& ckpt, const std::string& prefix = "projection.") {
    if (ckpt.find(prefix + "vis_layer.layer_norm1.weight")) return vision::projector_kind::vit;
    if (ckpt.find(prefix + "query") || ckpt.find(prefix + "kv_proj.weight")) return vision::projector_kind::perceiver;
    if (ckpt.find(prefix + "0.weight")) return vision::projector_kind::baseline;
    throw invalid_argument(detail::projector_where, "checkpoint",
                           "none of '" + prefix + "0.weight', '" + prefix + "vis_layer.layer_norm1.weight', '" + prefix +
                               "query' in " + ckpt.describe(),
                           "a baseline, vit or perceiver projector under the prefix '" + prefix + "'");
}

/// base with the sizes of a base.kind projector read from the tensor shapes: Dv, H, and the vit
/// layer's width and MLP width, or the perceiver's number of queries. The rest of base is kept.
inline vision::projector_config deduce_projector_config(const checkpoint& ckpt, const std::string& prefix = "projection.",
                                                        vision::projector_config base = {}) {
    using vision::projector_kind;
    auto shape = [&](const std::string& name, std::size_t rank, const char* what) {
        return detail::projector_tensor_shape(ckpt, prefix + name, rank, what);
    };
    switch (base.kind) {
        case projector_kind::baseline: {
            const auto w = shape("0.weight", 2, "the Linear weight [H, Dv]");
            base.hidden = w[0];
            base.vision_dim = w[1];
            break;
        }
        case projector_kind::vit: {
            const auto w = shape("projection.0.weight", 2, "the Linear weight [H, Dv]");
            const auto fc1 = shape("vis_layer.mlp.fc1.weight", 2, "the encoder layer's fc1 weight [M, Dv]");
            base.hidden = w[0];
            base.vision_dim = w[1];
            base.layer.width = w[1];
            base.layer.mlp_width = fc1[0];
            break;
        }
        case projector_kind::perceiver: {
            const auto q = shape("query", 2, "the learned queries [Q, H]");
            const auto kv = shape("kv_proj.weight", 2, "the kv_proj weight [H, Dv]");
            base.queries = q[0];
            base.hidden = kv[0];
            base.vision_dim = kv[1];
            break;
        }
    }
    return base;
}

/// Views of every tensor of a projector of `config` under `prefix` (each checked: present, shape,
/// dtype; the error names the tensor).
inline vision::projector_weights load_projector_weights(const checkpoint& ckpt, const vision::projector_config& config,
                                                        const std::string& prefix = "projection.") {
    using vision::projector_kind;
    const char* where = detail::projector_where;
    config.validate(where);
    const std::int64_t Dv = config.vision_dim, H = config.hidden;
    auto storage = std::make_shared<llama_storage>();
    storage->files = ckpt.storage();
    auto matrix = [&](const std::string& name, std::int64_t rows, std::int64_t cols) {
        return detail::matrix(ckpt, prefix + name, rows, cols, storage.get(), where);
    };
    auto vec = [&](const std::string& name, std::int64_t n) { return detail::vector(ckpt, prefix + name, n, where); };
    auto bias = [&](const std::string& name, std::int64_t n) {
        return detail::optional_vector(ckpt, prefix + name, n, where);
    };
    auto table = [&](const std::string& name, std::int64_t rows, std::int64_t cols) {
        return detail::widened(detail::checked_tensor(ckpt, prefix + name, {rows, cols}, where));
    };
    vision::projector_weights w;
    switch (config.kind) {
        case projector_kind::baseline:
            w.linear = matrix("0.weight", H, Dv);
            w.linear_bias = bias("0.bias", H);
            w.norm_w = vec("1.weight", H);
            w.norm_b = vec("1.bias", H);
            break;
        case projector_kind::vit: {
            const std::int64_t M = config.layer.mlp_width;
            auto& L = w.layer;
            L.layout = vision::qkv_layout::separate;
            L.ln1_w = vec("vis_layer.layer_norm1.weight", Dv);
            L.ln1_b = vec("vis_layer.layer_norm1.bias", Dv);
            L.q = matrix("vis_layer.self_attn.q_proj.weight", Dv, Dv);
            L.q_bias = bias("vis_layer.self_attn.q_proj.bias", Dv);
            L.k = matrix("vis_layer.self_attn.k_proj.weight", Dv, Dv);
            L.k_bias = bias("vis_layer.self_attn.k_proj.bias", Dv);
            L.v = matrix("vis_layer.self_attn.v_proj.weight", Dv, Dv);
            L.v_bias = bias("vis_layer.self_attn.v_proj.bias", Dv);
            L.out = matrix("vis_layer.self_attn.out_proj.weight", Dv, Dv);
            L.out_bias = bias("vis_layer.self_attn.out_proj.bias", Dv);
            L.ln2_w = vec("vis_layer.layer_norm2.weight", Dv);
            L.ln2_b = vec("vis_layer.layer_norm2.bias", Dv);
            L.fc1 = matrix("vis_layer.mlp.fc1.weight", M, Dv);
            L.fc1_bias = bias("vis_layer.mlp.fc1.bias", M);
            L.fc2 = matrix("vis_layer.mlp.fc2.weight", Dv, M);
            L.fc2_bias = bias("vis_layer.mlp.fc2.bias", Dv);
            w.linear = matrix("projection.0.weight", H, Dv);
            w.linear_bias = bias("projection.0.bias", H);
            w.norm_w = vec("projection.1.weight", H);
            w.norm_b = vec("projection.1.bias", H);
            break;
        }
        case projector_kind::perceiver: {
            const std::int64_t Q = config.queries;
            auto& P = w.pool;
            P.query = table("query", Q, H);
            if (ckpt.find(prefix + "pos_embed")) P.q_pos = table("pos_embed", Q, H);
            P.kv_proj = matrix("kv_proj.weight", H, Dv);
            P.kv_proj_bias = bias("kv_proj.bias", H);
            P.ln_q_w = vec("ln_q.weight", H);
            P.ln_q_b = vec("ln_q.bias", H);
            P.ln_kv_w = vec("ln_kv.weight", H);
            P.ln_kv_b = vec("ln_kv.bias", H);
            P.in_proj = matrix("attn.in_proj_weight", 3 * H, H);
            P.in_proj_bias = bias("attn.in_proj_bias", 3 * H);
            P.out_proj = matrix("attn.out_proj.weight", H, H);
            P.out_proj_bias = bias("attn.out_proj.bias", H);
            w.norm_w = vec("projection.0.weight", H);
            w.norm_b = vec("projection.0.bias", H);
            w.linear = matrix("projection.1.weight", H, H);
            w.linear_bias = bias("projection.1.bias", H);
            break;
        }
    }
    w.storage = storage;
    return w;
}

/// A projector of exactly `config` (kind and sizes must match the checkpoint).
inline vision::projector load_projector(const checkpoint& ckpt, const std::string& prefix,
                                        const vision::projector_config& config) {
    return vision::projector(config, load_projector_weights(ckpt, config, prefix));
}

/// A projector whose kind and sizes come from the checkpoint (detect_projector_kind,
/// deduce_projector_config); what the shapes do not say keeps projector_config's defaults.
inline vision::projector load_projector(const checkpoint& ckpt, const std::string& prefix = "projection.") {
    vision::projector_config base;
    base.kind = detect_projector_kind(ckpt, prefix);
    return load_projector(ckpt, prefix, deduce_projector_config(ckpt, prefix, base));
}

}  // namespace mmca::io
