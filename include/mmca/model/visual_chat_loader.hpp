// mmca/model/visual_chat_loader.hpp - a visual-chat model from one checkpoint with the reference names.
//
//   auto model = mmca::load_visual_chat_model<float>("dsvl-checkpoint/", load_options);
//
// The checkpoint (a .safetensors file, a folder, or a sharded index) holds, as SPEC §9 names them:
//   vis_encoder.*            the frozen vision encoder: QWen-VL's ViT (vis_encoder.conv1.weight, …) or
//                            an HF CLIP vision tower (vis_encoder.vision_model.*)
//   projection.*             the trainable projector (baseline, vit or perceiver; kind from the names)
//   lang_decoder.model.*     the frozen LLaMa-2 decoder, lang_decoder.lm_head.weight its head
//   lang_embed.weight        the trained copy of the token embedding (used for every token)
// The shapes of the encoder and projector are read from their tensors; the decoder's from the
// LLaMa config.json (next to the checkpoint unless given). Everything stays memory-mapped and in
// its stored dtype. Every tensor is checked before a model exists.
#pragma once

#include "mmca/core/error.hpp"
#include "mmca/io/checkpoint.hpp"
#include "mmca/io/llama_loader.hpp"
#include "mmca/io/projector_loader.hpp"
#include "mmca/io/vision_loader.hpp"
#include "mmca/model/visual_chat.hpp"
#include "mmca/vision/clip_vit.hpp"
#include "mmca/vision/projector.hpp"
#include "mmca/vision/qwen_vit.hpp"

#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace mmca {

enum class vision_encoder_kind : std::uint8_t { qwen_vit, clip_vit };

inline const char* to_string(vision_encoder_kind k) { return k == vision_encoder_kind::clip_vit ? "clip_vit" : "qwen_vit"; }

/// A frozen encoder (QWen-VL ViT or CLIP) followed by a projector: the vision tower of the model.
class encoder_projector_tower : public vision_tower {
public:
    encoder_projector_tower(vision::qwen_vit encoder, vision::projector projector)
        : qwen_(std::move(encoder)), projector_(std::move(projector)) {
        check("mmca::encoder_projector_tower", qwen_->config().output_dim, qwen_->config().queries);
    }
    encoder_projector_tower(vision::clip_vit encoder, vision::projector projector,
                            vision::clip_output layer = vision::clip_output::last_hidden_state)
        : clip_(std::move(encoder)), clip_layer_(layer), projector_(std::move(projector)) {
        check("mmca::encoder_projector_tower", clip_->config().hidden_size, clip_->config().tokens());
    }

    vision_encoder_kind encoder_kind() const { return qwen_ ? vision_encoder_kind::qwen_vit : vision_encoder_kind::clip_vit; }
    const vision::projector& projector() const { return projector_; }
    vision::projector& mutable_projector() { return projector_; }
    const std::optional<vision::qwen_vit>& qwen() const { return qwen_; }
    const std::optional<vision::clip_vit>& clip() const { return clip_; }
    vision::clip_output clip_layer() const { return clip_layer_; }

    std::int64_t image_size() const override {
        return qwen_ ? qwen_->config().image_size : clip_->config().image_size;
    }
    /// Tokens of the encoder per image (before the projector).
    std::int64_t encoder_tokens() const { return qwen_ ? qwen_->config().queries : clip_->config().tokens(); }
    std::int64_t encoder_width() const { return qwen_ ? qwen_->config().output_dim : clip_->config().hidden_size; }
    std::int64_t tokens_per_image() const override { return projector_.output_tokens(encoder_tokens()); }
    std::int64_t width() const override { return projector_.config().hidden; }

    void embed(tensor_ref<const float, 4> images, tensor_ref<float, 3> out, int num_threads) override {
        const std::int64_t N = images.shape[0], T = encoder_tokens(), Dv = encoder_width();
        features_.resize(static_cast<std::size_t>(N * T * Dv));
        tensor_ref<float, 3> f(features_.data(), {N, T, Dv});
        encode(images, f, num_threads);
        projector_.project(f, out, num_threads);
    }

    /// out (N, encoder_tokens(), encoder_width()) = the frozen encoder's features of images.
    void encode(tensor_ref<const float, 4> images, tensor_ref<float, 3> out, int num_threads) const {
        if (qwen_)
            qwen_->encode(images, out, num_threads);
        else
            clip_->encode(images, out, clip_layer_, num_threads);
    }

private:
    void check(const char* where, std::int64_t encoder_width, std::int64_t encoder_tokens) const {
        using detail::to_text;
        MMCA_CHECK_ARG(projector_.config().vision_dim == encoder_width, where, "projector",
                       "a projector of input width " + to_text(projector_.config().vision_dim),
                       "the encoder's output width " + to_text(encoder_width));
        projector_.config().output_tokens(encoder_tokens, where);  // throws when the token count does not fit
    }

    std::optional<vision::qwen_vit> qwen_;
    std::optional<vision::clip_vit> clip_;
    vision::clip_output clip_layer_ = vision::clip_output::last_hidden_state;
    vision::projector projector_;
    std::vector<float> features_;
};

struct visual_chat_load_options {
    std::string config_path;                      ///< the LLaMa config.json; empty: next to the checkpoint
    std::string encoder_prefix = "vis_encoder.";  ///< QWen ViT tensors, or CLIP's under <prefix>vision_model.
    std::string projector_prefix = "projection.";
    /// What tensor shapes do not say, and overrides: QWen's image_size (448), heads (16), pool_heads
    /// (32) and eps; CLIP's heads (0: width / 64), eps and activation; the projector's perceiver
    /// heads (0: H / 128) and vit layer heads / activation / eps. Sizes are read from the checkpoint.
    vision::qwen_vit_config qwen;
    vision::clip_vit_config clip{};
    vision::projector_config projector;
    vision::clip_output clip_layer = vision::clip_output::last_hidden_state;  ///< CLIP output used
    visual_chat_options options;                  ///< batch, context, attention, image token, …

    visual_chat_load_options() { clip.num_heads = 0; }
};

/// Which encoder a checkpoint holds under `prefix`.
inline vision_encoder_kind detect_vision_encoder(const io::checkpoint& ckpt, const std::string& prefix) {
    if (ckpt.find(prefix + "conv1.weight")) return vision_encoder_kind::qwen_vit;
    if (ckpt.find(prefix + "vision_model.embeddings.patch_embedding.weight")) return vision_encoder_kind::clip_vit;
    throw invalid_argument("mmca::load_visual_chat_model", "checkpoint",
                           "neither '" + prefix + "conv1.weight' nor '" + prefix +
                               "vision_model.embeddings.patch_embedding.weight' in " + ckpt.describe(),
                           "a QWen-VL ViT or a CLIP vision tower under the prefix '" + prefix + "'");
}

/// The vision tower (encoder + projector) of a checkpoint.
inline std::unique_ptr<encoder_projector_tower> load_vision_tower(const io::checkpoint& ckpt,
                                                                  const visual_chat_load_options& load = {}) {
    const std::string& ep = load.encoder_prefix;
    vision::projector_config base = load.projector;
    base.kind = io::detect_projector_kind(ckpt, load.projector_prefix);
    if (detect_vision_encoder(ckpt, ep) == vision_encoder_kind::qwen_vit) {
        vision::qwen_vit encoder = io::load_qwen_vit(ckpt, ep, io::deduce_qwen_vit_config(ckpt, ep, load.qwen));
        base.input_tokens = encoder.config().queries;
        base.has_cls = false;
        auto proj = io::load_projector(ckpt, load.projector_prefix, io::deduce_projector_config(ckpt, load.projector_prefix, base));
        return std::make_unique<encoder_projector_tower>(std::move(encoder), std::move(proj));
    }
    const std::string cp = ep + "vision_model.";
    vision::clip_vit encoder = io::load_clip_vit(ckpt, cp, io::deduce_clip_vit_config(ckpt, cp, load.clip));
    base.input_tokens = encoder.config().tokens();
    base.has_cls = true;
    auto proj = io::load_projector(ckpt, load.projector_prefix, io::deduce_projector_config(ckpt, load.projector_prefix, base));
    return std::make_unique<encoder_projector_tower>(std::move(encoder), std::move(proj), load.clip_layer);
}

/// What a visual-chat checkpoint holds: its vision tower (on the host) and the decoder's config and
/// weights (memory-mapped), every tensor checked. The models on any backend are built from these.
struct visual_chat_parts {
    std::unique_ptr<encoder_projector_tower> tower;
    llama_config config;
    llama_weights weights;
};

inline visual_chat_parts load_visual_chat_parts(const std::string& path, const visual_chat_load_options& load = {}) {
    const io::checkpoint ckpt = io::checkpoint::open(path);
    visual_chat_parts parts;
    parts.tower = load_vision_tower(ckpt, load);
    io::llama_load_options lo;
    lo.config_path = load.config_path;
    lo.names = "visual_chat";
    auto [config, weights] = io::load_llama(path, lo);
    parts.config = std::move(config);
    parts.weights = std::move(weights);
    return parts;
}

/// A ready visual-chat model (caches allocated) from a reference-named checkpoint.
template <class KV = float>
std::unique_ptr<visual_chat_model<KV>> load_visual_chat_model(const std::string& path,
                                                              const visual_chat_load_options& load = {}) {
    visual_chat_parts parts = load_visual_chat_parts(path, load);
    return std::make_unique<visual_chat_model<KV>>(std::move(parts.tower), std::move(parts.config),
                                                   std::move(parts.weights), load.options);
}

}  // namespace mmca
