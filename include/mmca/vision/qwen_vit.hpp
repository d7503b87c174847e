// mmca/vision/qwen_vit.hpp - the QWen-VL vision encoder (SPEC §3): images (N, 3, S, S) -> (N, Q, E).
//
//   x   = patches(images) · conv1ᵀ + pos          (N, G², W)   G = S / P; conv1 [W, 3, P, P] as a GEMM
//   x   = ln_pre(x)
//   x   = block_L(… block_1(x))                    48 pre-LN encoder layers (per-head interleaved qkv,
//                                                  exact GELU, LayerNorm eps 1e-6)
//   y   = attn_pool(x)                             (N, Q, E)    learned-query cross-attention
//   out = ln_post(y)
//
// pos is the learned (g0², W) table bicubic-resized to G×G (g0 = 16, G = 32 for 448-pixel input);
// the resampler's query positions are the 2D sin-cos table of its √Q × √Q query grid (stored in
// checkpoints as attn_pool.pos_embed) and its key positions that table bicubic-resized to G×G.
// Both resized tables depend only on the config, so they are made once, when the encoder is built.
// QWen-VL's own final E×E projection is not part of this encoder (the visual-chat model does not
// use it).
//
// The images of a call go through the linear layers together, up to 8 at a time (n·G² rows, n·Q in
// the resampler's output projection), when G² and Q are multiples of 8 of at least 16 (QWen-VL:
// 1024 and 256): every row then lands at the same place in the GEMM kernels' register blocks as in
// a call with its image alone, so a batch gives bitwise the results of single images. Other shapes
// go image by image, to keep that property. Attention always runs per image. Matrices keep their
// stored dtype (float32, float16 or bfloat16, nn/linear.hpp).
#pragma once

#include "mmca/core/error.hpp"
#include "mmca/core/tensor.hpp"
#include "mmca/nn/activation.hpp"
#include "mmca/nn/layernorm.hpp"
#include "mmca/nn/linear.hpp"
#include "mmca/vision/attention_pool.hpp"
#include "mmca/vision/encoder_layer.hpp"
#include "mmca/vision/patch_embedding.hpp"
#include "mmca/vision/position.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace mmca::vision {

/// Shape of a QWen-VL ViT. Defaults: the encoder of QWen-VL / DeepSpeed-VisualChat (1.9B parameters).
struct qwen_vit_config {
    std::int64_t image_size = 448;   // S: input images are S×S
    std::int64_t patch_size = 14;    // P: conv kernel and stride
    std::int64_t width = 1664;       // W
    std::int64_t layers = 48;        // encoder blocks
    std::int64_t heads = 16;         // attention heads of the blocks (W / heads = 104)
    std::int64_t mlp_width = 8192;   // MLP hidden width
    std::int64_t output_dim = 4096;  // E: width of the resampler and of the output
    std::int64_t queries = 256;      // Q: resampler queries, a square number (√Q × √Q grid)
    std::int64_t pool_heads = 32;    // resampler heads (E / pool_heads = 128)
    std::int64_t pos_grid = 16;      // g0: the learned position table has g0² rows
    float eps = 1e-6f;               // every LayerNorm

    std::int64_t grid() const { return patch_size > 0 ? image_size / patch_size : 0; }  // G
    std::int64_t tokens() const { return grid() * grid(); }                            // G² per image
    std::int64_t query_grid() const { return detail::grid_side(queries); }             // √Q

    encoder_layer_config block_config() const { return {width, heads, mlp_width, eps, nn::activation::gelu_erf}; }
    attention_pool_config pool_config() const { return {queries, width, output_dim, pool_heads, eps}; }

    void validate(const char* where = "mmca::vision::qwen_vit_config::validate") const {
        using mmca::detail::to_text;
        MMCA_CHECK_ARG(patch_size > 0 && image_size > 0 && image_size % patch_size == 0, where, "config",
                       "image_size " + to_text(image_size) + " with patch_size " + to_text(patch_size),
                       "a positive image size that is a multiple of the positive patch size");
        MMCA_CHECK_ARG(layers >= 0, where, "config", "layers " + to_text(layers), "a number of layers >= 0");
        block_config().validate(where);
        MMCA_CHECK_ARG(output_dim > 0 && output_dim % 4 == 0, where, "config", "output_dim " + to_text(output_dim),
                       "a positive multiple of 4 (the width of the resampler's 2D sin-cos positions)");
        MMCA_CHECK_ARG(query_grid() > 0, where, "config", "queries " + to_text(queries),
                       "a positive square number (the queries form a square grid)");
        pool_config().validate(where);
        MMCA_CHECK_ARG(pos_grid > 0, where, "config", "pos_grid " + to_text(pos_grid),
                       "a positive side of the learned position grid");
    }
};

/// Parameters of a QWen-VL ViT. Matrices point into storage kept alive by `storage` (usually a
/// memory-mapped checkpoint); vectors are float32 copies.
struct qwen_vit_weights {
    nn::matrix_ref patch_embed;               // [W, 3·P·P]: conv1.weight [W, 3, P, P] viewed in place
    std::vector<float> positions;             // (g0², W) learned position table, as stored
    std::vector<float> ln_pre_w, ln_pre_b;    // (W)
    std::vector<encoder_layer_weights> blocks;  // `layers` blocks (QWen-VL: fused_interleaved_per_head)
    attention_pool_weights pool;              // q_pos: (Q, E) stored attn_pool.pos_embed, or empty for
                                              // the sin-cos table; k_pos: empty (made by qwen_vit)
    std::vector<float> ln_post_w, ln_post_b;  // (E)
    std::shared_ptr<const void> storage;      // owner of the memory the matrices point into
};

/// The encoder, ready to run: weights checked, resized position tables made.
class qwen_vit {
public:
    qwen_vit(qwen_vit_config config, qwen_vit_weights weights) : config_(config), weights_(std::move(weights)) {
        using mmca::detail::to_text;
        const char* where = "mmca::vision::qwen_vit";
        config_.validate(where);
        const std::int64_t W = config_.width, E = config_.output_dim, P = config_.patch_size, G = config_.grid();
        const std::int64_t g0 = config_.pos_grid, gq = config_.query_grid();
        detail::check_matrix(weights_.patch_embed, W, 3 * P * P, where, "patch_embed (conv1.weight)");
        detail::check_vector(weights_.positions, g0 * g0 * W, false, where, "positions (positional_embedding)");
        detail::check_vector(weights_.ln_pre_w, W, false, where, "ln_pre weight");
        detail::check_vector(weights_.ln_pre_b, W, false, where, "ln_pre bias");
        detail::check_vector(weights_.ln_post_w, E, false, where, "ln_post weight");
        detail::check_vector(weights_.ln_post_b, E, false, where, "ln_post bias");
        MMCA_CHECK_ARG(static_cast<std::int64_t>(weights_.blocks.size()) == config_.layers, where, "blocks",
                       to_text(weights_.blocks.size()) + " blocks", to_text(config_.layers) + " (config.layers)");
        for (const auto& b : weights_.blocks) check_encoder_layer(config_.block_config(), b, where);

        positions_ = g0 == G ? weights_.positions : bicubic_resize_table(weights_.positions.data(), g0, W, G);
        attention_pool_weights& pool = weights_.pool;
        if (pool.q_pos.empty()) pool.q_pos = sincos_2d(gq, E);
        MMCA_CHECK_ARG(pool.k_pos.empty(), where, "pool.k_pos", to_text(pool.k_pos.size()) + " values",
                       "none (the key positions are the query positions resized to the patch grid)");
        detail::check_vector(pool.q_pos, gq * gq * E, false, where, "pool.q_pos (attn_pool.pos_embed)");
        pool.k_pos = gq == G ? pool.q_pos : bicubic_resize_table(pool.q_pos.data(), gq, E, G);
        check_attention_pool(config_.pool_config(), pool, where);
    }

    const qwen_vit_config& config() const { return config_; }
    const qwen_vit_weights& weights() const { return weights_; }
    /// (G², W) learned positions at the patch grid (the stored table resized once).
    const std::vector<float>& positions() const { return positions_; }

    /// Images that go through the linear layers together in a call of N (see the file comment): up to
    /// max_images_per_call when the row counts allow it, otherwise 1.
    std::int64_t images_per_call(std::int64_t N) const {
        const std::int64_t T = config_.tokens(), Q = config_.queries;
        return T % 8 == 0 && T >= 16 && Q % 8 == 0 && Q >= 16 ? std::min(N, max_images_per_call) : 1;
    }

    /// At most this many images share the work buffers (QWen-VL: 1024 × 8192 floats of MLP hidden
    /// state, 32 MiB, per image).
    static constexpr std::int64_t max_images_per_call = 8;

    /// out (N, Q, E) = encoding of images (N, 3, S, S) float32. out must be contiguous.
    void encode(tensor_ref<const float, 4> images, tensor_ref<float, 3> out, int num_threads = 0) const {
        using mmca::detail::to_text;
        const char* where = "mmca::vision::qwen_vit::encode";
        const std::int64_t S = config_.image_size, Q = config_.queries, E = config_.output_dim;
        check_images(images, 3, S, where);
        const std::int64_t N = images.shape[0];
        MMCA_CHECK_ARG(out.shape[0] == N && out.shape[1] == Q && out.shape[2] == E && out.contiguous(), where, "out",
                       "shape " + out.shape_text() + (out.contiguous() ? "" : " (not contiguous)"),
                       "a contiguous (" + to_text(N) + ", " + to_text(Q) + ", " + to_text(E) + ") float32 tensor");
        const std::int64_t group = images_per_call(N);
        work_buffers work;
        for (std::int64_t n0 = 0; n0 < N; n0 += group) {
            const std::int64_t n = std::min(group, N - n0);
            tensor_ref<const float, 4> part(images.ptr(n0), {n, 3, S, S}, images.strides);
            encode_group(part, tensor_ref<float, 3>(out.ptr(n0), {n, Q, E}), work, num_threads);
        }
    }

private:
    struct work_buffers {
        std::vector<float> x, patches;  // (n·G², W), (n·G², 3·P·P)
        encoder_scratch blocks;
        attention_pool_scratch pool;
    };

    /// out (n, Q, E) for images (n, 3, S, S), both checked by encode.
    void encode_group(tensor_ref<const float, 4> images, tensor_ref<float, 3> out, work_buffers& work,
                      int num_threads) const {
        const std::int64_t N = images.shape[0], W = config_.width, T = config_.tokens();
        const std::int64_t Q = config_.queries, E = config_.output_dim;
        work.x.resize(static_cast<std::size_t>(N * T * W));
        tensor_ref<float, 2> rows(work.x.data(), {N * T, W});
        patch_embedding_forward(images, weights_.patch_embed, config_.patch_size, rows, work.patches, num_threads);
        parallel_for(N * T, N * T >= 64 ? num_threads : 1, [&](std::int64_t r, int) {
            float* dst = rows.ptr(r);
            const float* pos = positions_.data() + (r % T) * W;
            for (std::int64_t i = 0; i < W; ++i) dst[i] += pos[i];
        });
        nn::layernorm_forward(rows, weights_.ln_pre_w.data(), weights_.ln_pre_b.data(), config_.eps, rows, num_threads);

        tensor_ref<float, 3> xs(work.x.data(), {N, T, W});
        const encoder_layer_config block = config_.block_config();
        for (const auto& b : weights_.blocks) encoder_layer_forward(xs, block, b, work.blocks, num_threads);

        attention_pool_forward(xs, config_.pool_config(), weights_.pool, out, work.pool, num_threads);
        tensor_ref<float, 2> pooled(out.data, {N * Q, E});
        nn::layernorm_forward(pooled, weights_.ln_post_w.data(), weights_.ln_post_b.data(), config_.eps, pooled,
                              num_threads);
    }

    qwen_vit_config config_;
    qwen_vit_weights weights_;
    std::vector<float> positions_;  // (G², W)
};

}  // namespace mmca::vision
