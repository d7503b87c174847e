// mmca/vision/projector.hpp - the trainable projector from image features to the LM's width (SPEC §4).
//
//   baseline    y = LN_1e-12( x · Wᵀ + b )                                 (N, T, Dv) -> (N, T, H)
//   vit         y = LN_1e-12( enc(x) · Wᵀ + b ), enc one pre-LN encoder layer of width Dv
//                                                                          (N, T, Dv) -> (N, T, H)
//   perceiver   kv = LN_kv( x' · Wkvᵀ + bkv ),  x' = x without its CLS row when it has one
//               q = LN_q(query) + pos_q,  k = kv + pos_k,  v = kv
//               y = Linear_H→H( LN_1e-12( MHA(q, k, v) ) )                (N, T, Dv) -> (N, Q, H)
//
// The perceiver's positions are fixed 2D sin-cos tables (vision/position.hpp): pos_q is the table
// of the √Q × √Q grid of queries; pos_k is that table bicubic-resampled to the g × g grid of the
// image tokens (g² = T without CLS; pos_k = pos_q when g = √Q). Both are made once, when the
// projector is built, for the token count the config names; other counts are refused.
//
// Images are projected one at a time (in a batch of N each image goes through exactly the same
// calls as alone, so results do not depend on the batch); the thread count is used inside each
// image's matrix products and attention. Matrices keep their stored dtype (nn/linear.hpp).
#pragma once

#include "mmca/core/error.hpp"
#include "mmca/core/tensor.hpp"
#include "mmca/nn/activation.hpp"
#include "mmca/nn/layernorm.hpp"
#include "mmca/nn/linear.hpp"
#include "mmca/vision/attention_pool.hpp"
#include "mmca/vision/encoder_layer.hpp"
#include "mmca/vision/position.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace mmca::vision {

enum class projector_kind : std::uint8_t { baseline, vit, perceiver };

inline const char* to_string(projector_kind k) {
    switch (k) {
        case projector_kind::vit: return "vit";
        case projector_kind::perceiver: return "perceiver";
        case projector_kind::baseline: break;
    }
    return "baseline";
}

inline projector_kind parse_projector_kind(const std::string& name,
                                           const char* where = "mmca::vision::parse_projector_kind") {
    if (name == "baseline") return projector_kind::baseline;
    if (name == "vit") return projector_kind::vit;
    if (name == "perceiver") return projector_kind::perceiver;
    throw invalid_argument(where, "kind", "\"" + name + "\"", "one of \"baseline\", \"vit\", \"perceiver\"");
}

struct projector_config {
    projector_kind kind = projector_kind::baseline;
    std::int64_t vision_dim = 4096;    // Dv: width of the image features (QWen-VL ViT: 4096, CLIP ViT-L: 1024)
    std::int64_t hidden = 4096;        // H: width of the language model
    float eps = 1e-12f;                // the projector's own LayerNorms (final norm; perceiver LN_q, LN_kv)

    // perceiver
    std::int64_t input_tokens = 256;   // T per image, CLS included when has_cls (fixes pos_k's grid)
    bool has_cls = false;              // row 0 of each image is a CLS token, dropped
    std::int64_t queries = 256;        // Q learned queries (a square number: they form a √Q × √Q grid)
    std::int64_t heads = 0;            // attention heads; 0: H / 128

    // vit: the encoder layer run on the image tokens (width must be vision_dim). The reference builds
    // it from the vision config: QWen-VL (bigG config) 16 heads, MLP 8192, exact GELU; CLIP ViT-L
    // 16 heads, MLP 4096, quick GELU; LayerNorm eps 1e-5 for both.
    encoder_layer_config layer{4096, 16, 8192, 1e-5f, nn::activation::gelu_erf};

    /// Heads of the perceiver's attention (heads, or H / 128 when heads is 0).
    std::int64_t attention_heads() const { return heads > 0 ? heads : hidden / 128; }
    /// Image tokens the perceiver attends to (input_tokens without the CLS token).
    std::int64_t key_tokens() const { return input_tokens - (has_cls ? 1 : 0); }

    /// Tokens out per image for t tokens in (checks t for the perceiver).
    std::int64_t output_tokens(std::int64_t t, const char* where = "mmca::vision::projector::output_tokens") const {
        using mmca::detail::to_text;
        if (kind != projector_kind::perceiver) {
            MMCA_CHECK_ARG(t > 0, where, "input_tokens", to_text(t), "a positive number of tokens");
            return t;
        }
        MMCA_CHECK_ARG(t == input_tokens, where, "input_tokens", to_text(t),
                       to_text(input_tokens) + " tokens per image (the perceiver's key positions are made for " +
                           (has_cls ? "1 CLS + " + to_text(key_tokens()) : to_text(key_tokens())) + " tokens)");
        return queries;
    }

    void validate(const char* where) const {
        using mmca::detail::to_text;
        MMCA_CHECK_ARG(vision_dim > 0, where, "vision_dim", to_text(vision_dim), "a positive width");
        MMCA_CHECK_ARG(hidden > 0, where, "hidden", to_text(hidden), "a positive width");
        MMCA_CHECK_ARG(eps > 0.0f && std::isfinite(eps), where, "eps", to_text(eps), "a positive finite number");
        if (kind == projector_kind::vit) {
            layer.validate(where);
            MMCA_CHECK_ARG(layer.width == vision_dim, where, "layer.width", to_text(layer.width),
                           "the vision width " + to_text(vision_dim));
        }
        if (kind == projector_kind::perceiver) {
            const std::int64_t h = attention_heads();
            MMCA_CHECK_ARG(heads >= 0 && h > 0 && hidden % h == 0, where, "heads",
                           heads == 0 ? "0 (H / 128 with H = " + to_text(hidden) + ")" : to_text(heads),
                           "a number of heads dividing H = " + to_text(hidden) + " (0: H / 128, for H a multiple of 128)");
            MMCA_CHECK_ARG(hidden % 4 == 0, where, "hidden", to_text(hidden),
                           "a multiple of 4 (the 2D sin-cos positions of the perceiver)");
            MMCA_CHECK_ARG(queries > 0 && detail::grid_side(queries) > 0, where, "queries", to_text(queries),
                           "a positive square number (the queries form a square grid)");
            MMCA_CHECK_ARG(key_tokens() > 0 && detail::grid_side(key_tokens()) > 0, where, "input_tokens",
                           to_text(input_tokens) + (has_cls ? " with a CLS token" : " without a CLS token"),
                           "a square number of image tokens (after dropping the CLS token)");
        }
    }
};

/// Every tensor of a projector. Matrices are [out, in] in their stored dtype; vectors float32.
struct projector_weights {
    // baseline, vit: Linear(Dv -> H) then LayerNorm(H). perceiver: LayerNorm(H) then Linear(H -> H).
    nn::matrix_ref linear;             // [H, Dv] (perceiver: [H, H])
    std::vector<float> linear_bias;    // (H) or empty
    std::vector<float> norm_w, norm_b; // (H)
    encoder_layer_weights layer;       // vit: the encoder layer (width Dv)
    attention_pool_weights pool;       // perceiver: queries, kv_proj, LN_q, LN_kv, MHA. Empty q_pos / k_pos
                                       // are filled in by the projector (sin-cos tables); q_pos may also
                                       // be given (a checkpoint's stored table), k_pos is then derived from it.
    std::shared_ptr<const void> storage;  // keeps the memory the matrices point into alive
};

class projector {
public:
    projector(projector_config config, projector_weights weights)
        : config_(std::move(config)), weights_(std::move(weights)) {
        const char* where = "mmca::vision::projector";
        config_.validate(where);
        const std::int64_t Dv = config_.vision_dim, H = config_.hidden;
        const projector_kind kind = config_.kind;
        const std::int64_t in = kind == projector_kind::perceiver ? H : Dv;
        detail::check_matrix(weights_.linear, H, in, where, "linear weight");
        detail::check_vector(weights_.linear_bias, H, true, where, "linear bias");
        detail::check_vector(weights_.norm_w, H, false, where, "norm weight");
        detail::check_vector(weights_.norm_b, H, false, where, "norm bias");
        if (kind == projector_kind::vit) check_encoder_layer(config_.layer, weights_.layer, where);
        if (kind == projector_kind::perceiver) {
            pool_config_ = attention_pool_config{config_.queries, Dv, H, config_.attention_heads(), config_.eps};
            auto& p = weights_.pool;
            const std::int64_t grid_q = detail::grid_side(config_.queries);
            const std::int64_t grid_k = detail::grid_side(config_.key_tokens());
            if (p.q_pos.empty()) p.q_pos = sincos_2d(grid_q, H);
            detail::check_vector(p.q_pos, config_.queries * H, false, where, "query positions");
            if (p.k_pos.empty())
                p.k_pos = grid_k == grid_q ? p.q_pos : bicubic_resize_table(p.q_pos.data(), grid_q, H, grid_k);
            detail::check_vector(p.k_pos, config_.key_tokens() * H, false, where, "key positions");
            check_attention_pool(pool_config_, p, where);
        }
    }

    const projector_config& config() const { return config_; }
    const projector_weights& weights() const { return weights_; }
    /// The weights for a trainer that points trainable tensors at its own float32 copies (same shapes).
    projector_weights& mutable_weights() { return weights_; }
    projector_kind kind() const { return config_.kind; }

    /// Tokens out per image for input_tokens in (the perceiver accepts only config().input_tokens).
    std::int64_t output_tokens(std::int64_t input_tokens) const { return config_.output_tokens(input_tokens); }

    /// out (N, T', H) = projection of in (N, T, Dv); T' = output_tokens(T). Rows of in and out must be
    /// contiguous (any other strides) and out may not overlap in. Uses the object's work buffers:
    /// one call at a time per projector.
    void project(tensor_ref<const float, 3> in, tensor_ref<float, 3> out, int num_threads = 0) {
        using mmca::detail::to_text;
        const char* where = "mmca::vision::projector::project";
        const std::int64_t Dv = config_.vision_dim, H = config_.hidden;
        MMCA_CHECK_ARG(!in.empty() || in.numel() == 0, where, "in", "no data", "an (N, T, Dv) float32 tensor");
        MMCA_CHECK_ARG(!out.empty() || out.numel() == 0, where, "out", "no data", "an (N, T', H) float32 tensor");
        MMCA_CHECK_ARG(in.shape[2] == Dv && in.inner_contiguous(), where, "in", in.shape_text(),
                       "(N, T, " + to_text(Dv) + ") with contiguous rows");
        const std::int64_t N = in.shape[0], T = in.shape[1];
        const std::int64_t T_out = config_.output_tokens(T, where);
        MMCA_CHECK_ARG(out.shape[0] == N && out.shape[1] == T_out && out.shape[2] == H && out.inner_contiguous(),
                       where, "out", out.shape_text(),
                       "(" + to_text(N) + ", " + to_text(T_out) + ", " + to_text(H) + ") with contiguous rows");
        if (N == 0) return;
        MMCA_CHECK_ARG(!overlaps(in, out), where, "out", "a buffer that overlaps 'in'",
                       "an output that shares no memory with the input");
        for (std::int64_t n = 0; n < N; ++n) {
            const tensor_ref<const float, 2> x(in.ptr(n), {T, Dv}, {in.strides[1], in.strides[2]});
            const tensor_ref<float, 2> y(out.ptr(n), {T_out, H}, {out.strides[1], out.strides[2]});
            switch (config_.kind) {
                case projector_kind::baseline: linear_then_norm(x, y, num_threads); break;
                case projector_kind::vit: vit_image(x, y, num_threads); break;
                case projector_kind::perceiver: perceiver_image(in, n, y, num_threads); break;
            }
        }
    }

private:
    template <class A, class B>
    static bool overlaps(const tensor_ref<A, 3>& a, const tensor_ref<B, 3>& b) {
        if (a.numel() == 0 || b.numel() == 0) return false;
        auto span = [](const auto& t) {
            std::int64_t hi = 0;
            for (int d = 0; d < 3; ++d) hi += (t.shape[d] - 1) * t.strides[d];
            return std::make_pair(reinterpret_cast<const char*>(t.data),
                                  reinterpret_cast<const char*>(t.data + hi + 1));
        };
        const auto [a0, a1] = span(a);
        const auto [b0, b1] = span(b);
        return a0 < b1 && b0 < a1;
    }

    /// y (T, H) = LN(x (T, Dv) · Wᵀ + b).
    void linear_then_norm(tensor_ref<const float, 2> x, tensor_ref<float, 2> y, int num_threads) const {
        const auto& w = weights_;
        nn::linear_forward(x, w.linear, detail::bias_or_null(w.linear_bias), y, num_threads);
        nn::layernorm_forward(y, w.norm_w.data(), w.norm_b.data(), config_.eps, y, num_threads);
    }

    void vit_image(tensor_ref<const float, 2> x, tensor_ref<float, 2> y, int num_threads) {
        const std::int64_t T = x.shape[0], Dv = config_.vision_dim;
        tokens_.resize(static_cast<std::size_t>(T * Dv));
        for (std::int64_t t = 0; t < T; ++t) {
            const float* src = x.ptr(t);
            std::copy(src, src + Dv, tokens_.data() + t * Dv);
        }
        encoder_layer_forward(tensor_ref<float, 3>(tokens_.data(), {1, T, Dv}), config_.layer, weights_.layer,
                              layer_scratch_, num_threads);
        linear_then_norm(tensor_ref<const float, 2>(tokens_.data(), {T, Dv}), y, num_threads);
    }

    void perceiver_image(tensor_ref<const float, 3> in, std::int64_t n, tensor_ref<float, 2> y, int num_threads) {
        const std::int64_t Q = config_.queries, H = config_.hidden, Tk = config_.key_tokens();
        const std::int64_t Dv = config_.vision_dim;
        tensor_ref<const float, 3> x(in.ptr(n, config_.has_cls ? 1 : 0), {1, Tk, Dv}, in.strides);
        if (!x.contiguous()) {  // rows with gaps between them: gather the image's rows
            keys_.resize(static_cast<std::size_t>(Tk * Dv));
            for (std::int64_t t = 0; t < Tk; ++t) std::copy(x.ptr(0, t), x.ptr(0, t) + Dv, keys_.data() + t * Dv);
            x = tensor_ref<const float, 3>(keys_.data(), {1, Tk, Dv});
        }
        tokens_.resize(static_cast<std::size_t>(Q * H));
        const tensor_ref<float, 3> pooled(tokens_.data(), {1, Q, H});
        attention_pool_forward(x, pool_config_, weights_.pool, pooled, pool_scratch_, num_threads);
        const tensor_ref<float, 2> p(tokens_.data(), {Q, H});
        nn::layernorm_forward(p, weights_.norm_w.data(), weights_.norm_b.data(), config_.eps, p, num_threads);
        nn::linear_forward(p, weights_.linear, detail::bias_or_null(weights_.linear_bias), y, num_threads);
    }

    projector_config config_;
    projector_weights weights_;
    attention_pool_config pool_config_{};
    std::vector<float> tokens_;  // vit: (T, Dv) copy of an image's tokens; perceiver: (Q, H) pooled rows
    std::vector<float> keys_;    // perceiver: (T', Dv) image tokens gathered from a strided input
    encoder_scratch layer_scratch_;
    attention_pool_scratch pool_scratch_;
};

}  // namespace mmca::vision
