// tests/cuda/test_cuda_vision.cpp - the vision side on the GPU against the CPU:
//   * mmca::cuda::dense_attention (the encoder's self-attention in QWen-VL's interleaved qkv layout,
//     the resampler's cross-attention) against mmca::nn::dense_attention on the same values;
//   * mmca::cuda::qwen_vit<S> against mmca::vision::qwen_vit on a small random encoder;
//   * mmca::cuda::clip_vit<S> against mmca::vision::clip_vit (both outputs, more images than one
//     device batch), and mmca::cuda::encoder_projector_tower<S> with a CLIP encoder against the
//     host tower;
//   * the compiled library's mmca::cuda::lib::qwen_vit / clip_vit in every element type;
//   * mmca::cuda::visual_chat_model<S> (GPU encoder + GPU decoder) against mmca::visual_chat_model
//     on one checkpoint: a batch forward with its loss, two greedy chat rounds with images, one
//     more append.
//
// Tolerances, norm-wise (max |gpu - cpu| <= tol · max |cpu|). Inputs are rounded to S for both
// sides. float32: 1e-5 for the attention op, 1e-4 for the encoder and the model (the CPU model's
// bound against HF). 16-bit attention: about twice one rounding of the output plus the rounding
// of the probabilities (2^-11 for float16, 2^-8 for bfloat16): 2e-3 / 1.6e-2. 16-bit encoder and
// model: 1e-2 / 6e-2, as for the decoder alone (test_cuda_model.cpp).
#include "cuda_test_support.hpp"
#include "cuda_vision_support.hpp"
#include "test_llama_util.hpp"

#include "mmca/backend/cuda/library.hpp"
#include "mmca/core/dtype.hpp"
#include "mmca/model/visual_chat_loader.hpp"
#include "mmca/nn/dense_attention.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <deque>
#include <memory>
#include <random>
#include <string>
#include <utility>
#include <vector>

namespace mmca_cuda_test {
namespace {

using mmca::tensor_ref;

double norm_error(const std::vector<float>& got, const std::vector<float>& want) {
    if (got.size() != want.size()) return INFINITY;
    double diff = 0.0, scale = 0.0;
    for (std::size_t i = 0; i < want.size(); ++i) {
        if (!std::isfinite(got[i])) return INFINITY;
        diff = std::max(diff, std::fabs(double(got[i]) - double(want[i])));
        scale = std::max(scale, std::fabs(double(want[i])));
    }
    return diff / std::max(scale, 1e-30);
}

template <class S>
std::vector<float> rounded(std::vector<float> v) {
    for (auto& x : v) x = static_cast<float>(S(x));
    return v;
}

host_heads random_heads(std::int64_t rows, std::int64_t row_stride, std::int64_t head_stride, std::int64_t offset,
                        unsigned seed) {
    std::mt19937 g(seed);
    std::normal_distribution<float> nd;
    host_heads h{std::vector<float>(static_cast<std::size_t>(rows * row_stride)), rows, row_stride, head_stride, offset};
    for (auto& x : h.values) x = nd(g);
    return h;
}

mmca::nn::head_matrix cpu_heads(const host_heads& h) {
    return {h.values.data(), h.rows, h.row_stride, h.head_stride, h.offset};
}

template <class S>
void expect_dense_attention(std::int64_t Lq, std::int64_t Lk, std::int64_t heads, std::int64_t D, bool interleaved,
                            double tol, bool fused = true) {
    const std::int64_t W = heads * D;
    host_heads q, k, v;
    if (interleaved) {  // one (L, 3W) qkv buffer, per head [q | k | v]: QWen-VL's encoder
        host_heads qkv = random_heads(Lq, 3 * W, 3 * D, 0, 3);
        qkv.values = rounded<S>(qkv.values);
        q = k = v = qkv;
        k.offset = D;
        v.offset = 2 * D;
    } else {  // separate matrices, Lq != Lk: the resampler
        q = random_heads(Lq, W, D, 0, 4);
        k = random_heads(Lk, W, D, 0, 5);
        v = random_heads(Lk, W, D, 0, 6);
        q.values = rounded<S>(q.values);
        k.values = rounded<S>(k.values);
        v.values = rounded<S>(v.values);
    }
    const float scale = 1.0f / std::sqrt(static_cast<float>(D));
    std::vector<float> want(static_cast<std::size_t>(Lq * W));
    mmca::nn::dense_attention(cpu_heads(q), cpu_heads(k), cpu_heads(v), heads, D, scale,
                              tensor_ref<float, 2>(want.data(), {Lq, W}));
    const auto got = cuda_dense_attention_run<S>(q, k, v, heads, D, scale, fused);
    EXPECT_LE(norm_error(got, want), tol) << "Lq " << Lq << ", Lk " << Lk << ", " << heads << " heads of " << D
                                          << (fused ? "" : ", unfused");
}

TEST(CudaDenseAttention, MatchesCpuInEveryStorageType) {
    MMCA_REQUIRE_GPU();
    // QWen-VL's encoder (16 heads of 104) on 256 tokens, and its resampler (256 queries, heads of 128),
    // on the fused path (the tiled kernel) and on the unfused one (cuBLAS + softmax).
    for (bool fused : {true, false}) {
        expect_dense_attention<float>(256, 256, 16, 104, true, 1e-5, fused);
        expect_dense_attention<float>(64, 200, 4, 128, false, 1e-5, fused);
        expect_dense_attention<mmca::float16>(256, 256, 16, 104, true, 2e-3, fused);
        expect_dense_attention<mmca::float16>(64, 200, 4, 128, false, 2e-3, fused);
        expect_dense_attention<mmca::bfloat16>(256, 256, 16, 104, true, 1.6e-2, fused);
        expect_dense_attention<mmca::bfloat16>(64, 200, 4, 128, false, 1.6e-2, fused);
    }
    // Heads the fused path does not take (36 values: not whole 16-byte chunks; 160: over 128) go
    // the unfused way.
    expect_dense_attention<mmca::bfloat16>(50, 50, 2, 36, false, 1.6e-2);
    expect_dense_attention<float>(40, 70, 2, 160, false, 1e-5);
}

TEST(CudaDenseAttention, BadArgumentsNameTheArgument) {
    MMCA_REQUIRE_GPU();
    host_heads q = random_heads(4, 16, 8, 0, 1), k = random_heads(5, 16, 8, 0, 2), v = random_heads(6, 16, 8, 0, 3);
    try {
        cuda_dense_attention_run<float>(q, k, v, 2, 8, 0.3f);
        FAIL() << "no error";
    } catch (const mmca::invalid_argument& e) {
        EXPECT_EQ(e.argument(), "v") << e.what();
        EXPECT_NE(std::string(e.what()).find("6 rows"), std::string::npos) << e.what();
    }
    v = random_heads(5, 16, 8, 0, 3);
    try {
        cuda_dense_attention_run<float>(q, k, v, 3, 8, 0.3f);  // 3 heads of 8 do not fit rows of 16
        FAIL() << "no error";
    } catch (const mmca::invalid_argument& e) {
        EXPECT_EQ(e.argument(), "q") << e.what();
    }
}

constexpr std::int32_t kImage = 60;
constexpr std::int64_t kS = 56;  // 4 x 4 patches of 14

/// A visual-chat checkpoint: a small QWen ViT (4 queries of width 16), a baseline projector and a
/// small LLaMa (heads of 64, so the decoder uses the tensor-core attention kernels).
std::string write_checkpoint() {
    static std::string dir;
    if (!dir.empty()) return dir;
    mmca::llama_config c = mmca_test::tiny_config(4, 2, 2);
    c.hidden_size = 256;
    c.intermediate_size = 344;
    c.vocab_size = 101;
    c.max_positions = 256;
    dir = mmca_test::write_visual_chat_checkpoint(mmca_test::temp_path("cuda_visual_chat"), c,
                                                  mmca_test::make_random_llama(c, 41), 5);
    return dir;
}

mmca::visual_chat_load_options load_options(mmca::attention_variant variant) {
    mmca::visual_chat_load_options o;
    o.qwen.image_size = kS;
    o.qwen.heads = 4;
    o.qwen.pool_heads = 2;
    o.options.image_token_id = kImage;
    o.options.language.attention.variant = variant;
    o.options.language.num_threads = 1;
    return o;
}

template <class S>
void expect_encoder_matches_cpu(double tol) {
    const auto parts = mmca::load_visual_chat_parts(write_checkpoint(), load_options(mmca::attention_variant::mmca));
    ASSERT_TRUE(parts.tower->qwen().has_value());
    const mmca::vision::qwen_vit& vit = *parts.tower->qwen();
    const auto& c = vit.config();
    const auto images = script_images(kS);
    std::vector<float> want(static_cast<std::size_t>(3 * c.queries * c.output_dim));
    vit.encode(tensor_ref<const float, 4>(images.data(), {3, 3, kS, kS}),
               tensor_ref<float, 3>(want.data(), {3, c.queries, c.output_dim}), 1);
    const auto got = cuda_qwen_encode<S>(vit, images, 3);
    EXPECT_LE(norm_error(got, want), tol);
}

TEST(CudaQwenVit, Float32MatchesCpu) {
    MMCA_REQUIRE_GPU();
    expect_encoder_matches_cpu<float>(1e-4);
}
TEST(CudaQwenVit, Float16MatchesCpu) {
    MMCA_REQUIRE_GPU();
    expect_encoder_matches_cpu<mmca::float16>(1e-2);
}
TEST(CudaQwenVit, Bfloat16MatchesCpu) {
    MMCA_REQUIRE_GPU();
    expect_encoder_matches_cpu<mmca::bfloat16>(6e-2);
}

/// Random float32 values, owned by a store that the weights keep alive.
struct random_store {
    std::shared_ptr<std::deque<std::vector<float>>> owned = std::make_shared<std::deque<std::vector<float>>>();
    std::mt19937 rng;
    explicit random_store(unsigned seed) : rng(seed) {}
    std::vector<float> values(std::int64_t n, float scale, float mean = 0.0f) {
        std::normal_distribution<float> nd;
        std::vector<float> v(static_cast<std::size_t>(n));
        for (auto& x : v) x = mean + scale * nd(rng);
        return v;
    }
    mmca::nn::matrix_ref matrix(std::int64_t rows, std::int64_t cols, float scale) {
        owned->push_back(values(rows * cols, scale));  // a deque keeps earlier elements in place
        return {mmca::dtype::float32, owned->back().data(), rows, cols};
    }
};

constexpr std::int64_t kClipSize = 42;  // 3 × 3 patches of 14 + CLS = 10 tokens
constexpr std::int64_t kClipWidth = 64;

/// A CLIP vision tower (HF layout: separate q/k/v/out with biases, quick GELU) of random weights:
/// 3 layers, width 64, 4 heads of 16, MLP 80.
mmca::vision::clip_vit random_clip(unsigned seed) {
    mmca::vision::clip_vit_config c;
    c.image_size = kClipSize;
    c.patch_size = 14;
    c.hidden_size = kClipWidth;
    c.intermediate_size = 80;
    c.num_layers = 3;
    c.num_heads = 4;
    const std::int64_t W = c.hidden_size, I = c.intermediate_size, P = c.patch_size;
    random_store r(seed);
    mmca::vision::clip_vit_weights w;
    w.patch_embed = r.matrix(W, c.num_channels * P * P, 0.05f);
    w.class_embedding = r.values(W, 0.5f);
    w.position_embedding = r.values(c.tokens() * W, 0.5f);
    w.pre_ln_w = r.values(W, 0.2f, 1.0f);
    w.pre_ln_b = r.values(W, 0.1f);
    for (std::int64_t l = 0; l < c.num_layers; ++l) {
        mmca::vision::encoder_layer_weights L;
        L.ln1_w = r.values(W, 0.2f, 1.0f);
        L.ln1_b = r.values(W, 0.1f);
        L.ln2_w = r.values(W, 0.2f, 1.0f);
        L.ln2_b = r.values(W, 0.1f);
        L.layout = mmca::vision::qkv_layout::separate;
        L.q = r.matrix(W, W, 0.1f);
        L.k = r.matrix(W, W, 0.1f);
        L.v = r.matrix(W, W, 0.1f);
        L.out = r.matrix(W, W, 0.1f);
        L.q_bias = r.values(W, 0.1f);
        L.k_bias = r.values(W, 0.1f);
        L.v_bias = r.values(W, 0.1f);
        L.out_bias = r.values(W, 0.1f);
        L.fc1 = r.matrix(I, W, 0.1f);
        L.fc1_bias = r.values(I, 0.1f);
        L.fc2 = r.matrix(W, I, 0.1f);
        L.fc2_bias = r.values(W, 0.1f);
        w.layers.push_back(std::move(L));
    }
    w.storage = r.owned;
    return mmca::vision::clip_vit(c, std::move(w));
}

/// A host tower: random_clip(seed) taking its penultimate state, and a baseline projector (64 -> 48).
std::unique_ptr<mmca::encoder_projector_tower> random_clip_tower(unsigned seed) {
    random_store r(seed + 100);
    mmca::vision::projector_config pc;
    pc.kind = mmca::vision::projector_kind::baseline;
    pc.vision_dim = kClipWidth;
    pc.hidden = 48;
    pc.eps = 1e-5f;
    mmca::vision::projector_weights pw;
    pw.linear = r.matrix(pc.hidden, kClipWidth, 0.1f);
    pw.linear_bias = r.values(pc.hidden, 0.1f);
    pw.norm_w = r.values(pc.hidden, 0.2f, 1.0f);
    pw.norm_b = r.values(pc.hidden, 0.1f);
    pw.storage = r.owned;
    return std::make_unique<mmca::encoder_projector_tower>(random_clip(seed), mmca::vision::projector(pc, pw),
                                                           mmca::vision::clip_output::penultimate);
}

std::vector<float> random_pixels(std::int64_t n, std::int64_t size, unsigned seed) {
    std::mt19937 g(seed);
    std::uniform_real_distribution<float> u(-2.0f, 2.0f);
    std::vector<float> v(static_cast<std::size_t>(n * 3 * size * size));
    for (auto& x : v) x = u(g);
    return v;
}

template <class S>
void expect_clip_matches_cpu(double tol) {
    const mmca::vision::clip_vit clip = random_clip(7);
    const auto& c = clip.config();
    constexpr std::int64_t n = 9;  // more than one device batch (max_images_per_call = 8)
    const auto images = random_pixels(n, kClipSize, 8);
    for (auto which : {mmca::vision::clip_output::last_hidden_state, mmca::vision::clip_output::penultimate}) {
        std::vector<float> want(static_cast<std::size_t>(n * c.tokens() * c.hidden_size));
        clip.encode(tensor_ref<const float, 4>(images.data(), {n, 3, kClipSize, kClipSize}),
                    tensor_ref<float, 3>(want.data(), {n, c.tokens(), c.hidden_size}), which, 1);
        const auto got = cuda_clip_encode<S>(clip, images, n, which);
        EXPECT_LE(norm_error(got, want), tol) << mmca::vision::to_string(which);
    }
}

TEST(CudaClipVit, Float32MatchesCpu) {
    MMCA_REQUIRE_GPU();
    expect_clip_matches_cpu<float>(1e-4);
}
TEST(CudaClipVit, SixteenBitMatchesCpu) {
    MMCA_REQUIRE_GPU();
    expect_clip_matches_cpu<mmca::float16>(1e-2);
    expect_clip_matches_cpu<mmca::bfloat16>(6e-2);
}

TEST(CudaClipVit, BadImagesNameTheArgument) {
    MMCA_REQUIRE_GPU();
    const mmca::vision::clip_vit clip = random_clip(7);
    try {
        cuda_clip_encode<float>(clip, random_pixels(2, 28, 1), 2, mmca::vision::clip_output::last_hidden_state, 28);
        FAIL() << "no error";
    } catch (const mmca::invalid_argument& e) {
        EXPECT_EQ(e.argument(), "images") << e.what();
        EXPECT_NE(std::string(e.what()).find("[2, 3, 28, 28]"), std::string::npos) << e.what();
        EXPECT_NE(std::string(e.what()).find("(N, 3, 42, 42)"), std::string::npos) << e.what();
    }
}

TEST(CudaEncoderProjectorTower, ClipEncoderRunsOnTheDeviceAndMatchesTheHostTower) {
    MMCA_REQUIRE_GPU();
    auto host = random_clip_tower(11);
    const std::int64_t n = 3, t = host->tokens_per_image(), w = host->width();
    const auto images = random_pixels(n, kClipSize, 12);
    std::vector<float> want(static_cast<std::size_t>(n * t * w));
    host->embed(tensor_ref<const float, 4>(images.data(), {n, 3, kClipSize, kClipSize}),
                tensor_ref<float, 3>(want.data(), {n, t, w}), 1);
    bool on_device = false;
    const auto got = cuda_tower_embed<float>(random_clip_tower(11), images, n, &on_device);
    EXPECT_TRUE(on_device);
    EXPECT_LE(norm_error(got, want), 1e-4);
    const auto half = cuda_tower_embed<mmca::bfloat16>(random_clip_tower(11), images, n, &on_device);
    EXPECT_LE(norm_error(half, want), 6e-2);
}

// The compiled library's encoders (mmca::cuda::lib::qwen_vit / clip_vit, element type chosen at
// run time) against the CPU encoders, with the templates' tolerances.
TEST(CudaLibraryEncoders, QwenAndClipMatchCpuInEveryElementType) {
    MMCA_REQUIRE_GPU();
    using mmca::cuda::lib::element;
    const auto parts = mmca::load_visual_chat_parts(write_checkpoint(), load_options(mmca::attention_variant::mmca));
    ASSERT_TRUE(parts.tower->qwen().has_value());
    const mmca::vision::qwen_vit& vit = *parts.tower->qwen();
    const auto& qc = vit.config();
    const auto images = script_images(kS);
    std::vector<float> want(static_cast<std::size_t>(3 * qc.queries * qc.output_dim));
    vit.encode(tensor_ref<const float, 4>(images.data(), {3, 3, kS, kS}),
               tensor_ref<float, 3>(want.data(), {3, qc.queries, qc.output_dim}), 1);

    const mmca::vision::clip_vit clip = random_clip(7);
    const auto& cc = clip.config();
    constexpr std::int64_t n = 9;
    const auto pixels = random_pixels(n, kClipSize, 8);
    std::vector<float> want_clip(static_cast<std::size_t>(n * cc.tokens() * cc.hidden_size));
    clip.encode(tensor_ref<const float, 4>(pixels.data(), {n, 3, kClipSize, kClipSize}),
                tensor_ref<float, 3>(want_clip.data(), {n, cc.tokens(), cc.hidden_size}),
                mmca::vision::clip_output::penultimate, 1);

    for (auto [type, tol] : {std::pair{element::float32, 1e-4}, std::pair{element::float16, 1e-2},
                             std::pair{element::bfloat16, 6e-2}}) {
        mmca::cuda::lib::qwen_vit lib_vit(vit, type);
        EXPECT_EQ(lib_vit.type(), type);
        EXPECT_EQ(lib_vit.config().queries, qc.queries);
        std::vector<float> got(want.size());
        lib_vit.encode(tensor_ref<const float, 4>(images.data(), {3, 3, kS, kS}),
                       tensor_ref<float, 3>(got.data(), {3, qc.queries, qc.output_dim}));
        EXPECT_LE(norm_error(got, want), tol) << mmca::cuda::lib::to_string(type);

        mmca::cuda::lib::clip_vit lib_clip(clip, type);
        std::vector<float> got_clip(want_clip.size());
        lib_clip.encode(tensor_ref<const float, 4>(pixels.data(), {n, 3, kClipSize, kClipSize}),
                        tensor_ref<float, 3>(got_clip.data(), {n, cc.tokens(), cc.hidden_size}),
                        mmca::vision::clip_output::penultimate);
        EXPECT_LE(norm_error(got_clip, want_clip), tol) << mmca::cuda::lib::to_string(type);
    }
}

// Runs without a GPU: the element type is checked before any device work.
TEST(CudaLibraryEncoders, UnknownElementTypeNamesTheArgument) {
    const mmca::vision::clip_vit clip = random_clip(7);
    try {
        mmca::cuda::lib::clip_vit lib_clip(clip, static_cast<mmca::cuda::lib::element>(9));
        FAIL() << "no error";
    } catch (const mmca::invalid_argument& e) {
        EXPECT_EQ(e.argument(), "type") << e.what();
        EXPECT_NE(std::string(e.what()).find("float32, float16 or bfloat16"), std::string::npos) << e.what();
    }
}

// Runs only without a GPU: construction is a runtime_error that names the missing device.
TEST(CudaLibraryEncoders, WithoutADeviceConstructionIsARuntimeError) {
    if (mmca::cuda::lib::device_available()) GTEST_SKIP() << "a CUDA device is present";
    const mmca::vision::clip_vit clip = random_clip(7);
    try {
        mmca::cuda::lib::clip_vit lib_clip(clip, mmca::cuda::lib::element::bfloat16);
        FAIL() << "no error";
    } catch (const mmca::cuda::lib::runtime_error& e) {
        EXPECT_NE(std::string(e.what()).find("CUDA device"), std::string::npos) << e.what();
    }
}

template <class S>
void expect_chat_matches_cpu(mmca::attention_variant variant, double tol, bool same_tokens) {
    const std::string path = write_checkpoint();
    const auto load = load_options(variant);
    mmca::visual_chat_load_options two = load, one = load;
    two.options.language.batch = 2;
    one.options.language.batch = 1;
    auto cpu2 = mmca::load_visual_chat_model<float>(path, two);
    auto cpu1 = mmca::load_visual_chat_model<float>(path, one);
    const auto images = script_images(kS);
    const auto want = run_chat_script(*cpu2, *cpu1, kImage, kS, images);
    const auto got = cuda_chat_script<S>(path, load, kImage, kS, images);
    ASSERT_EQ(got.forward_length, want.forward_length);
    EXPECT_LE(norm_error(got.forward_logits, want.forward_logits), tol) << mmca::to_string(variant);
    EXPECT_EQ(got.loss_count, want.loss_count);
    EXPECT_NEAR(got.loss, want.loss, 10 * tol * std::max(1.0, std::fabs(want.loss)));
    EXPECT_EQ(got.cached_tokens, want.cached_tokens);
    if (same_tokens) {
        EXPECT_EQ(got.answers, want.answers) << mmca::to_string(variant);
        EXPECT_LE(norm_error(got.last_logits, want.last_logits), tol) << mmca::to_string(variant);
    }
}

TEST(CudaVisualChatModel, Float32MatchesCpuEveryVariant) {
    MMCA_REQUIRE_GPU();
    for (auto v : {mmca::attention_variant::causal, mmca::attention_variant::mmca,
                   mmca::attention_variant::mmca_reference, mmca::attention_variant::causal_cross})
        expect_chat_matches_cpu<float>(v, 1e-4, true);
}

// In 16 bits a greedy answer may take another token where two logits are within rounding of each
// other, after which the conversations differ; the batch forward is compared.
TEST(CudaVisualChatModel, SixteenBitForwardMatchesCpu) {
    MMCA_REQUIRE_GPU();
    expect_chat_matches_cpu<mmca::float16>(mmca::attention_variant::mmca, 1e-2, false);
    expect_chat_matches_cpu<mmca::bfloat16>(mmca::attention_variant::mmca, 6e-2, false);
}

}  // namespace
}  // namespace mmca_cuda_test
