// mmca/vision/clip_vit.hpp - the vision tower of HF CLIP (CLIPVisionModel): images (N, C, S, S) -> (N, 1 + G², W).
//
//   x_0 = [cls ; patches(images) · patch_embeddingᵀ] + position_embedding     (N, 1 + G², W), G = S / P
//   h_0 = pre_layrnorm(x_0)
//   h_l = layer_l(h_{l-1})          pre-LN encoder layers: separate q/k/v/out projections with biases,
//                                   quick-GELU MLP, LayerNorm eps 1e-5 (OpenAI CLIP ViT-L/14)
//
// HF's hidden_states are (h_0, …, h_L); last_hidden_state is h_L (post_layernorm only touches the
// pooled CLS row, which is not computed here); "penultimate" is hidden_states[-2] = h_{L-1}, the
// features LLaVA and the DeepSpeed-VisualChat scripts take. Only the layers the chosen output needs
// are run.
//
// The images of a call go through the layers one at a time (1 + G² rows per matrix product; 257 for
// ViT-L/14 at 224, enough rows for the GEMM kernels to run at full speed). Batching them would make
// an image's features depend on its neighbours in the batch: with a row count that is not a
// multiple of the kernels' register block (1 + G² never is a multiple of 4), where a row lands in
// the blocks changes the order of its sums. Image by image, a batch gives bitwise the results of
// single images.
#pragma once

#include "mmca/core/error.hpp"
#include "mmca/core/tensor.hpp"
#include "mmca/nn/activation.hpp"
#include "mmca/nn/layernorm.hpp"
#include "mmca/nn/linear.hpp"
#include "mmca/vision/encoder_layer.hpp"
#include "mmca/vision/patch_embedding.hpp"

#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace mmca::vision {

/// Shape of a CLIP vision tower, with the field meanings of HF's CLIPVisionConfig. Defaults: ViT-L/14 at 224.
struct clip_vit_config {
    std::int64_t image_size = 224;          // S
    std::int64_t patch_size = 14;           // P
    std::int64_t num_channels = 3;          // C
    std::int64_t hidden_size = 1024;        // W
    std::int64_t intermediate_size = 4096;  // MLP hidden width
    std::int64_t num_layers = 24;           // L (num_hidden_layers)
    std::int64_t num_heads = 16;            // num_attention_heads
    float layer_norm_eps = 1e-5f;
    nn::activation hidden_act = nn::activation::quick_gelu;

    std::int64_t grid() const { return patch_size > 0 ? image_size / patch_size : 0; }  // G
    std::int64_t tokens() const { return grid() * grid() + 1; }                        // CLS + G² per image

    encoder_layer_config layer_config() const {
        return {hidden_size, num_heads, intermediate_size, layer_norm_eps, hidden_act};
    }

    void validate(const char* where = "mmca::vision::clip_vit_config::validate") const {
        using mmca::detail::to_text;
        MMCA_CHECK_ARG(patch_size > 0 && image_size > 0 && image_size % patch_size == 0, where, "config",
                       "image_size " + to_text(image_size) + " with patch_size " + to_text(patch_size),
                       "a positive image size that is a multiple of the positive patch size");
        MMCA_CHECK_ARG(num_channels > 0, where, "config", "num_channels " + to_text(num_channels),
                       "a positive number of channels");
        MMCA_CHECK_ARG(num_layers >= 1, where, "config", "num_hidden_layers " + to_text(num_layers),
                       "at least 1 layer");
        layer_config().validate(where);
    }
};

/// ViT-L/14 presets of OpenAI CLIP: "vit-l-14-224" (openai/clip-vit-large-patch14, 257 tokens) and
/// "vit-l-14-336" (openai/clip-vit-large-patch14-336, 577 tokens). The HF model ids are accepted too.
inline clip_vit_config clip_vit_preset(const std::string& name) {
    clip_vit_config c;
    if (name == "vit-l-14-224" || name == "openai/clip-vit-large-patch14") return c;
    if (name == "vit-l-14-336" || name == "openai/clip-vit-large-patch14-336") {
        c.image_size = 336;
        return c;
    }
    throw invalid_argument("mmca::vision::clip_vit_preset", "name", "\"" + name + "\"",
                           "\"vit-l-14-224\" or \"vit-l-14-336\" (or the HF ids openai/clip-vit-large-patch14[-336])");
}

/// Which of HF's hidden states encode() returns.
enum class clip_output : std::uint8_t {
    last_hidden_state,  // h_L: the output of the last layer
    penultimate,        // h_{L-1} = hidden_states[-2]: the output of the next-to-last layer
};

inline const char* to_string(clip_output o) {
    return o == clip_output::penultimate ? "penultimate" : "last_hidden_state";
}

inline clip_output parse_clip_output(const std::string& name, const char* where = "mmca::vision::parse_clip_output") {
    if (name == "last_hidden_state") return clip_output::last_hidden_state;
    if (name == "penultimate") return clip_output::penultimate;
    throw invalid_argument(where, "output", "\"" + name + "\"", "\"last_hidden_state\" or \"penultimate\"");
}

/// Parameters of a CLIP vision tower. Matrices point into storage kept alive by `storage`.
struct clip_vit_weights {
    nn::matrix_ref patch_embed;                // [W, C·P·P]: embeddings.patch_embedding.weight [W, C, P, P]
    std::vector<float> class_embedding;        // (W)
    std::vector<float> position_embedding;     // (1 + G², W)
    std::vector<float> pre_ln_w, pre_ln_b;     // (W) pre_layrnorm
    std::vector<encoder_layer_weights> layers; // num_layers layers (layout separate, with biases)
    std::shared_ptr<const void> storage;       // owner of the memory the matrices point into
};

class clip_vit {
public:
    clip_vit(clip_vit_config config, clip_vit_weights weights) : config_(config), weights_(std::move(weights)) {
        using mmca::detail::to_text;
        const char* where = "mmca::vision::clip_vit";
        config_.validate(where);
        const std::int64_t W = config_.hidden_size, P = config_.patch_size;
        detail::check_matrix(weights_.patch_embed, W, config_.num_channels * P * P, where,
                             "patch_embed (embeddings.patch_embedding.weight)");
        detail::check_vector(weights_.class_embedding, W, false, where, "class_embedding");
        detail::check_vector(weights_.position_embedding, config_.tokens() * W, false, where,
                             "position_embedding");
        detail::check_vector(weights_.pre_ln_w, W, false, where, "pre_layrnorm weight");
        detail::check_vector(weights_.pre_ln_b, W, false, where, "pre_layrnorm bias");
        MMCA_CHECK_ARG(static_cast<std::int64_t>(weights_.layers.size()) == config_.num_layers, where, "layers",
                       to_text(weights_.layers.size()) + " layers", to_text(config_.num_layers) + " (num_hidden_layers)");
        for (const auto& l : weights_.layers) check_encoder_layer(config_.layer_config(), l, where);
    }

    const clip_vit_config& config() const { return config_; }
    const clip_vit_weights& weights() const { return weights_; }

    /// Layers run for `which`: L for the last hidden state, L - 1 for the penultimate one.
    std::int64_t layers_run(clip_output which) const {
        return which == clip_output::penultimate ? config_.num_layers - 1 : config_.num_layers;
    }

    /// out (N, 1 + G², W) = hidden state `which` of images (N, C, S, S) float32. out must be contiguous.
    void encode(tensor_ref<const float, 4> images, tensor_ref<float, 3> out,
                clip_output which = clip_output::last_hidden_state, int num_threads = 0) const {
        using mmca::detail::to_text;
        const char* where = "mmca::vision::clip_vit::encode";
        const std::int64_t W = config_.hidden_size, T = config_.tokens(), G2 = T - 1;
        check_images(images, config_.num_channels, config_.image_size, where);
        const std::int64_t N = images.shape[0];
        MMCA_CHECK_ARG(out.shape[0] == N && out.shape[1] == T && out.shape[2] == W && out.contiguous(), where, "out",
                       "shape " + out.shape_text() + (out.contiguous() ? "" : " (not contiguous)"),
                       "a contiguous (" + to_text(N) + ", " + to_text(T) + ", " + to_text(W) + ") float32 tensor");

        std::vector<float> patch_rows(static_cast<std::size_t>(G2 * W)), patches;
        encoder_scratch scratch;
        const encoder_layer_config layer = config_.layer_config();
        const std::int64_t run = layers_run(which);
        for (std::int64_t n = 0; n < N; ++n) {
            // Embeddings, written straight into out: row 0 is the class embedding.
            tensor_ref<const float, 4> image(images.ptr(n), {1, images.shape[1], images.shape[2], images.shape[3]},
                                             images.strides);
            patch_embedding_forward(image, weights_.patch_embed, config_.patch_size,
                                    tensor_ref<float, 2>(patch_rows.data(), {G2, W}), patches, num_threads);
            parallel_for(T, T >= 64 ? num_threads : 1, [&](std::int64_t t, int) {
                float* dst = out.ptr(n, t);
                const float* src = t == 0 ? weights_.class_embedding.data() : patch_rows.data() + (t - 1) * W;
                const float* pos = weights_.position_embedding.data() + t * W;
                for (std::int64_t i = 0; i < W; ++i) dst[i] = src[i] + pos[i];
            });
            tensor_ref<float, 2> rows(out.ptr(n), {T, W});
            nn::layernorm_forward(rows, weights_.pre_ln_w.data(), weights_.pre_ln_b.data(), config_.layer_norm_eps,
                                  rows, num_threads);
            tensor_ref<float, 3> x(out.ptr(n), {1, T, W});
            for (std::int64_t l = 0; l < run; ++l)
                encoder_layer_forward(x, layer, weights_.layers[static_cast<std::size_t>(l)], scratch, num_threads);
        }
    }

private:
    clip_vit_config config_;
    clip_vit_weights weights_;
};

}  // namespace mmca::vision
