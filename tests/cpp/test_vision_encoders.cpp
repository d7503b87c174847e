// tests/cpp/test_vision_encoders.cpp - the QWen-VL ViT and the HF CLIP vision tower: loading,
// refused inputs, batches against single images, thread counts, and the patch embedding against a
// plain convolution. Numerical agreement with PyTorch / HF transformers is checked by
// tests/python/test_vision_encoders.py.
#include "test_llama_util.hpp"

#include "mmca/io/vision_loader.hpp"
#include "mmca/vision/clip_vit.hpp"
#include "mmca/vision/patch_embedding.hpp"
#include "mmca/vision/qwen_vit.hpp"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <random>
#include <set>
#include <string>
#include <vector>

namespace {

using mmca_test::st_tensor;

/// Named random tensors, written as one safetensors file.
struct tensor_set {
    std::vector<st_tensor> tensors;
    std::mt19937 rng{1234};

    void add(const std::string& name, const std::vector<std::int64_t>& shape, float scale, float offset = 0.0f,
             const std::string& dtype = "F32") {
        std::int64_t n = 1;
        for (auto s : shape) n *= s;
        std::normal_distribution<float> d(0.0f, 1.0f);
        std::vector<float> v(static_cast<std::size_t>(n));
        for (auto& x : v) x = offset + scale * d(rng);
        add_values(name, shape, v, dtype);
    }
    void add_values(const std::string& name, const std::vector<std::int64_t>& shape, const std::vector<float>& v,
                    const std::string& dtype = "F32") {
        tensors.push_back({name, dtype, shape, mmca_test::float_bytes(v, dtype)});
    }
    void drop(const std::string& name) {
        for (auto it = tensors.begin(); it != tensors.end(); ++it)
            if (it->name == name) {
                tensors.erase(it);
                return;
            }
        ADD_FAILURE() << "no tensor " << name;
    }
    void reshape(const std::string& name, const std::vector<std::int64_t>& shape, float scale) {
        drop(name);
        add(name, shape, scale);
    }
    std::string write(const std::string& file) const {
        const std::string path = mmca_test::temp_path(file);
        mmca_test::write_safetensors(path, tensors);
        return path;
    }
};

mmca::vision::qwen_vit_config small_qwen() {
    mmca::vision::qwen_vit_config c;
    c.image_size = 56;  // 4×4 patches
    c.patch_size = 14;
    c.width = 32;
    c.layers = 2;
    c.heads = 4;
    c.mlp_width = 48;
    c.output_dim = 16;
    c.queries = 4;
    c.pool_heads = 2;
    c.pos_grid = 3;
    return c;
}

tensor_set qwen_tensors(const mmca::vision::qwen_vit_config& c, const std::string& dtype = "F32",
                        bool pos_embed = true, const std::string& prefix = "vis_encoder.") {
    tensor_set t;
    const std::int64_t W = c.width, E = c.output_dim, M = c.mlp_width, P = c.patch_size;
    auto norm = [&](const std::string& n, std::int64_t d) {
        t.add(n + ".weight", {d}, 0.2f, 1.0f);
        t.add(n + ".bias", {d}, 0.1f);
    };
    t.add(prefix + "conv1.weight", {W, 3, P, P}, 0.05f, 0.0f, dtype);
    t.add(prefix + "positional_embedding", {c.pos_grid * c.pos_grid, W}, 0.5f);
    norm(prefix + "ln_pre", W);
    for (std::int64_t l = 0; l < c.layers; ++l) {
        const std::string p = prefix + "transformer.resblocks." + std::to_string(l) + ".";
        norm(p + "ln_1", W);
        norm(p + "ln_2", W);
        t.add(p + "attn.in_proj.weight", {3 * W, W}, 0.1f, 0.0f, dtype);
        t.add(p + "attn.in_proj.bias", {3 * W}, 0.1f);
        t.add(p + "attn.out_proj.weight", {W, W}, 0.1f, 0.0f, dtype);
        t.add(p + "attn.out_proj.bias", {W}, 0.1f);
        t.add(p + "mlp.c_fc.weight", {M, W}, 0.1f, 0.0f, dtype);
        t.add(p + "mlp.c_fc.bias", {M}, 0.1f);
        t.add(p + "mlp.c_proj.weight", {W, M}, 0.1f, 0.0f, dtype);
        t.add(p + "mlp.c_proj.bias", {W}, 0.1f);
    }
    const std::int64_t g = c.query_grid();
    t.add(prefix + "attn_pool.query", {c.queries, E}, 0.5f);
    if (pos_embed) t.add_values(prefix + "attn_pool.pos_embed", {c.queries, E}, mmca::vision::sincos_2d(g, E));
    t.add(prefix + "attn_pool.kv_proj.weight", {E, W}, 0.1f, 0.0f, dtype);
    norm(prefix + "attn_pool.ln_q", E);
    norm(prefix + "attn_pool.ln_kv", E);
    t.add(prefix + "attn_pool.attn.in_proj_weight", {3 * E, E}, 0.1f, 0.0f, dtype);
    t.add(prefix + "attn_pool.attn.in_proj_bias", {3 * E}, 0.1f);
    t.add(prefix + "attn_pool.attn.out_proj.weight", {E, E}, 0.1f, 0.0f, dtype);
    t.add(prefix + "attn_pool.attn.out_proj.bias", {E}, 0.1f);
    norm(prefix + "ln_post", E);
    t.add("lang_decoder.model.norm.weight", {8}, 0.1f, 1.0f);  // other parts of a visual-chat checkpoint
    return t;
}

mmca::vision::clip_vit_config small_clip() {
    mmca::vision::clip_vit_config c;
    c.image_size = 42;  // 3×3 patches + CLS = 10 tokens
    c.patch_size = 14;
    c.hidden_size = 24;
    c.intermediate_size = 40;
    c.num_layers = 3;
    c.num_heads = 3;
    return c;
}

tensor_set clip_tensors(const mmca::vision::clip_vit_config& c, const std::string& prefix = "vision_model.") {
    tensor_set t;
    const std::int64_t W = c.hidden_size, I = c.intermediate_size, P = c.patch_size;
    auto norm = [&](const std::string& n, std::int64_t d) {
        t.add(n + ".weight", {d}, 0.2f, 1.0f);
        t.add(n + ".bias", {d}, 0.1f);
    };
    auto linear = [&](const std::string& n, std::int64_t out, std::int64_t in) {
        t.add(n + ".weight", {out, in}, 0.1f);
        t.add(n + ".bias", {out}, 0.1f);
    };
    t.add(prefix + "embeddings.class_embedding", {W}, 0.5f);
    t.add(prefix + "embeddings.patch_embedding.weight", {W, c.num_channels, P, P}, 0.05f);
    t.add(prefix + "embeddings.position_embedding.weight", {c.tokens(), W}, 0.5f);
    norm(prefix + "pre_layrnorm", W);
    for (std::int64_t l = 0; l < c.num_layers; ++l) {
        const std::string p = prefix + "encoder.layers." + std::to_string(l) + ".";
        norm(p + "layer_norm1", W);
        norm(p + "layer_norm2", W);
        for (const char* m : {"q_proj", "k_proj", "v_proj", "out_proj"}) linear(p + "self_attn." + m, W, W);
        linear(p + "mlp.fc1", I, W);
        linear(p + "mlp.fc2", W, I);
    }
    norm(prefix + "post_layernorm", W);
    return t;
}

std::vector<float> random_images(std::int64_t n, std::int64_t c, std::int64_t s, std::uint32_t seed) {
    std::mt19937 rng(seed);
    std::uniform_real_distribution<float> d(-2.0f, 2.0f);
    std::vector<float> v(static_cast<std::size_t>(n * c * s * s));
    for (auto& x : v) x = d(rng);
    return v;
}

std::vector<float> encode(const mmca::vision::qwen_vit& m, const std::vector<float>& images, std::int64_t n,
                          int threads = 1) {
    const auto& c = m.config();
    std::vector<float> out(static_cast<std::size_t>(n * c.queries * c.output_dim));
    m.encode(mmca::tensor_ref<const float, 4>(images.data(), {n, 3, c.image_size, c.image_size}),
             mmca::tensor_ref<float, 3>(out.data(), {n, c.queries, c.output_dim}), threads);
    return out;
}

std::vector<float> encode(const mmca::vision::clip_vit& m, const std::vector<float>& images, std::int64_t n,
                          mmca::vision::clip_output which, int threads = 1) {
    const auto& c = m.config();
    std::vector<float> out(static_cast<std::size_t>(n * c.tokens() * c.hidden_size));
    m.encode(mmca::tensor_ref<const float, 4>(images.data(), {n, c.num_channels, c.image_size, c.image_size}),
             mmca::tensor_ref<float, 3>(out.data(), {n, c.tokens(), c.hidden_size}), which, threads);
    return out;
}

bool bitwise_equal(const float* a, const float* b, std::size_t n) { return std::memcmp(a, b, n * sizeof(float)) == 0; }

/// Runs f, expecting mmca::invalid_argument for `argument` whose message contains every fragment.
void expect_refused(const std::function<void()>& f, const std::string& argument,
                    const std::vector<std::string>& fragments) {
    try {
        f();
        ADD_FAILURE() << "no exception; expected one for argument '" << argument << "'";
    } catch (const mmca::invalid_argument& e) {
        EXPECT_EQ(e.argument(), argument) << e.what();
        for (const auto& s : fragments) EXPECT_NE(std::string(e.what()).find(s), std::string::npos) << e.what() << " / " << s;
    }
}

// ---------------------------------------------------------------------------------------------
// Patch embedding

TEST(PatchEmbedding, MatchesPlainConvolution) {
    const std::int64_t N = 2, C = 3, P = 4, G = 3, S = G * P, W = 5;
    const auto images = random_images(N, C, S, 7);
    std::vector<float> weight(static_cast<std::size_t>(W * C * P * P));
    std::mt19937 rng(3);
    std::normal_distribution<float> d(0.0f, 1.0f);
    for (auto& x : weight) x = d(rng);
    std::vector<float> out(static_cast<std::size_t>(N * G * G * W)), scratch;
    mmca::vision::patch_embedding_forward(mmca::tensor_ref<const float, 4>(images.data(), {N, C, S, S}),
                                          mmca::nn::make_matrix(weight.data(), W, C * P * P), P,
                                          mmca::tensor_ref<float, 2>(out.data(), {N * G * G, W}), scratch, 1);
    for (std::int64_t n = 0; n < N; ++n)
        for (std::int64_t r = 0; r < G; ++r)
            for (std::int64_t c = 0; c < G; ++c)
                for (std::int64_t o = 0; o < W; ++o) {
                    double acc = 0.0;
                    for (std::int64_t ch = 0; ch < C; ++ch)
                        for (std::int64_t kh = 0; kh < P; ++kh)
                            for (std::int64_t kw = 0; kw < P; ++kw)
                                acc += double(weight[((o * C + ch) * P + kh) * P + kw]) *
                                       images[((n * C + ch) * S + r * P + kh) * S + c * P + kw];
                    EXPECT_NEAR(out[((n * G + r) * G + c) * W + o], acc, 1e-4) << n << " " << r << " " << c << " " << o;
                }
}

TEST(PatchEmbedding, StridedImagesAreRead) {
    // An image batch whose images and rows are padded (row stride S + 3): same result as dense.
    const std::int64_t N = 2, C = 3, P = 2, S = 4, W = 3, RS = S + 3;
    const auto dense = random_images(N, C, S, 9);
    std::vector<float> padded(static_cast<std::size_t>(N * C * S * RS), 99.0f);
    for (std::int64_t i = 0; i < N * C * S; ++i)
        std::memcpy(&padded[static_cast<std::size_t>(i * RS)], &dense[static_cast<std::size_t>(i * S)], S * sizeof(float));
    std::vector<float> weight(static_cast<std::size_t>(W * C * P * P), 0.5f);
    std::vector<float> a(static_cast<std::size_t>(N * 4 * W)), b(a.size()), scratch;
    const auto wm = mmca::nn::make_matrix(weight.data(), W, C * P * P);
    mmca::vision::patch_embedding_forward(mmca::tensor_ref<const float, 4>(dense.data(), {N, C, S, S}), wm, P,
                                          mmca::tensor_ref<float, 2>(a.data(), {N * 4, W}), scratch, 1);
    mmca::vision::patch_embedding_forward(
        mmca::tensor_ref<const float, 4>(padded.data(), {N, C, S, S}, {C * S * RS, S * RS, RS, 1}), wm, P,
        mmca::tensor_ref<float, 2>(b.data(), {N * 4, W}), scratch, 1);
    EXPECT_TRUE(bitwise_equal(a.data(), b.data(), a.size()));
}

// ---------------------------------------------------------------------------------------------
// QWen-VL ViT

TEST(QwenViT, DeducesConfigFromShapes) {
    const auto c = small_qwen();
    const auto path = qwen_tensors(c).write("qwen_deduce.safetensors");
    const auto ckpt = mmca::io::checkpoint::open(path);
    mmca::vision::qwen_vit_config base;
    base.image_size = 56;
    base.heads = 4;
    base.pool_heads = 2;
    const auto d = mmca::io::deduce_qwen_vit_config(ckpt, "vis_encoder.", base);
    EXPECT_EQ(d.width, 32);
    EXPECT_EQ(d.patch_size, 14);
    EXPECT_EQ(d.layers, 2);
    EXPECT_EQ(d.mlp_width, 48);
    EXPECT_EQ(d.output_dim, 16);
    EXPECT_EQ(d.queries, 4);
    EXPECT_EQ(d.pos_grid, 3);
    EXPECT_EQ(d.heads, 4);
    EXPECT_EQ(d.pool_heads, 2);
    EXPECT_EQ(d.image_size, 56);
    const auto model = mmca::io::load_qwen_vit(ckpt, "vis_encoder.", d);
    EXPECT_EQ(model.positions().size(), static_cast<std::size_t>(16 * 32));  // resized 3×3 -> 4×4
    EXPECT_EQ(model.weights().pool.k_pos.size(), static_cast<std::size_t>(16 * 16));
}

TEST(QwenViT, DefaultConfigIsQwenVL) {
    const mmca::vision::qwen_vit_config c;
    c.validate();
    EXPECT_EQ(c.tokens(), 1024);
    EXPECT_EQ(c.query_grid(), 16);
    EXPECT_EQ(c.width / c.heads, 104);
    EXPECT_EQ(c.output_dim / c.pool_heads, 128);
}

TEST(QwenViT, BatchEqualsSingleImagesBitwise) {
    // 16 queries: the images of a batch share the matrix products; 4 queries: they go one at a time.
    auto batched = small_qwen();
    batched.queries = 16;
    for (const auto& c : {batched, small_qwen()})
    for (const std::string dtype : {"F32", "BF16"}) {
        const auto model = mmca::io::load_qwen_vit(
            mmca::io::checkpoint::open(qwen_tensors(c, dtype).write("qwen_batch_" + dtype + ".safetensors")),
            "vis_encoder.", c);
        EXPECT_EQ(model.images_per_call(3), c.queries == 16 ? 3 : 1);
        const std::int64_t N = 3, per_image = 3 * c.image_size * c.image_size, per_out = c.queries * c.output_dim;
        const auto images = random_images(N, 3, c.image_size, 11);
        const auto batch = encode(model, images, N);
        for (std::int64_t n = 0; n < N; ++n) {
            const std::vector<float> one(images.begin() + n * per_image, images.begin() + (n + 1) * per_image);
            const auto single = encode(model, one, 1);
            EXPECT_TRUE(bitwise_equal(single.data(), batch.data() + n * per_out, static_cast<std::size_t>(per_out)))
                << dtype << " queries " << c.queries << " image " << n;
        }
        for (float x : batch) ASSERT_TRUE(std::isfinite(x));
    }
}

TEST(QwenViT, OneAndTwoThreadsAgreeBitwise) {
    // Large enough for the matrix products and attention to use both threads.
    auto c = small_qwen();
    c.image_size = 112;  // 8×8 patches
    c.width = 64;
    c.mlp_width = 256;
    c.queries = 16;
    c.output_dim = 32;
    const auto model = mmca::io::load_qwen_vit(
        mmca::io::checkpoint::open(qwen_tensors(c).write("qwen_threads.safetensors")), "vis_encoder.", c);
    const auto images = random_images(2, 3, c.image_size, 12);
    const auto a = encode(model, images, 2, 1), b = encode(model, images, 2, 2);
    EXPECT_TRUE(bitwise_equal(a.data(), b.data(), a.size()));
}

TEST(QwenViT, StoredPosEmbedEqualsTheSinCosTable) {
    // attn_pool.pos_embed holds the sin-cos table; a checkpoint without it gets the same table.
    const auto c = small_qwen();
    const auto with = mmca::io::load_qwen_vit(
        mmca::io::checkpoint::open(qwen_tensors(c, "F32", true).write("qwen_pos_with.safetensors")), "vis_encoder.", c);
    const auto without = mmca::io::load_qwen_vit(
        mmca::io::checkpoint::open(qwen_tensors(c, "F32", false).write("qwen_pos_without.safetensors")), "vis_encoder.", c);
    EXPECT_EQ(with.weights().pool.q_pos, without.weights().pool.q_pos);
    EXPECT_EQ(with.weights().pool.k_pos, without.weights().pool.k_pos);
    const auto images = random_images(1, 3, c.image_size, 13);
    const auto a = encode(with, images, 1), b = encode(without, images, 1);
    EXPECT_TRUE(bitwise_equal(a.data(), b.data(), a.size()));
}

TEST(QwenViT, NoResizeWhenTheGridsMatch) {
    auto c = small_qwen();
    c.pos_grid = 4;
    c.queries = 16;
    const auto t = qwen_tensors(c);
    const auto model = mmca::io::load_qwen_vit(mmca::io::checkpoint::open(t.write("qwen_same_grid.safetensors")),
                                               "vis_encoder.", c);
    EXPECT_EQ(model.positions(), model.weights().positions);
    EXPECT_EQ(model.weights().pool.k_pos, model.weights().pool.q_pos);
}

TEST(QwenViT, RefusesWrongImages) {
    const auto c = small_qwen();
    const auto model = mmca::io::load_qwen_vit(
        mmca::io::checkpoint::open(qwen_tensors(c).write("qwen_errors.safetensors")), "vis_encoder.", c);
    std::vector<float> out(static_cast<std::size_t>(2 * c.queries * c.output_dim));
    const mmca::tensor_ref<float, 3> out_ref(out.data(), {1, c.queries, c.output_dim});
    const auto small = random_images(1, 3, 42, 1);
    expect_refused([&] { model.encode(mmca::tensor_ref<const float, 4>(small.data(), {1, 3, 42, 42}), out_ref, 1); },
                   "images", {"qwen_vit::encode", "[1, 3, 42, 42]", "(N, 3, 56, 56)"});
    const auto four = random_images(1, 4, 56, 1);
    expect_refused([&] { model.encode(mmca::tensor_ref<const float, 4>(four.data(), {1, 4, 56, 56}), out_ref, 1); },
                   "images", {"4 channels", "(N, 3, 56, 56)"});
    const auto good = random_images(2, 3, 56, 1);
    expect_refused([&] { model.encode(mmca::tensor_ref<const float, 4>(good.data(), {2, 3, 56, 56}), out_ref, 1); },
                   "out", {"[1, 4, 16]", "(2, 4, 16)"});
}

TEST(QwenViT, RefusesMissingAndMisshapenTensors) {
    const auto c = small_qwen();
    {
        auto t = qwen_tensors(c);
        t.drop("vis_encoder.transformer.resblocks.1.mlp.c_proj.bias");
        const auto ckpt = mmca::io::checkpoint::open(t.write("qwen_missing.safetensors"));
        expect_refused([&] { mmca::io::load_qwen_vit(ckpt, "vis_encoder.", c); }, "checkpoint",
                       {"load_qwen_vit", "vis_encoder.transformer.resblocks.1.mlp.c_proj.bias", "missing"});
    }
    {
        auto t = qwen_tensors(c);
        t.reshape("vis_encoder.attn_pool.kv_proj.weight", {16, 30}, 0.1f);
        const auto ckpt = mmca::io::checkpoint::open(t.write("qwen_shape.safetensors"));
        expect_refused([&] { mmca::io::load_qwen_vit(ckpt, "vis_encoder.", c); }, "checkpoint",
                       {"vis_encoder.attn_pool.kv_proj.weight", "[16, 30]", "[16, 32]"});
    }
    {
        // The learned table has 10 rows: not a square grid.
        auto t = qwen_tensors(c);
        t.reshape("vis_encoder.positional_embedding", {10, 32}, 0.1f);
        const auto ckpt = mmca::io::checkpoint::open(t.write("qwen_posgrid.safetensors"));
        expect_refused([&] { mmca::io::deduce_qwen_vit_config(ckpt); }, "checkpoint",
                       {"vis_encoder.positional_embedding", "[10, 32]", "square"});
    }
    {
        // The wrong prefix: the first tensor looked for is named.
        const auto ckpt = mmca::io::checkpoint::open(qwen_tensors(c).write("qwen_prefix.safetensors"));
        expect_refused([&] { mmca::io::load_qwen_vit(ckpt, "transformer.visual."); }, "checkpoint",
                       {"transformer.visual.conv1.weight", "missing"});
    }
}

TEST(QwenViT, RefusesBadConfigs) {
    auto c = small_qwen();
    c.image_size = 50;
    expect_refused([&] { c.validate("t"); }, "config", {"image_size 50", "patch_size 14"});
    c = small_qwen();
    c.queries = 5;
    expect_refused([&] { c.validate("t"); }, "config", {"queries 5", "square"});
    c = small_qwen();
    c.heads = 5;
    expect_refused([&] { c.validate("t"); }, "config", {"width 32 with 5 heads"});
}

// ---------------------------------------------------------------------------------------------
// CLIP

TEST(ClipViT, PresetsAndConfigJson) {
    const auto l224 = mmca::vision::clip_vit_preset("vit-l-14-224");
    EXPECT_EQ(l224.tokens(), 257);
    EXPECT_EQ(mmca::vision::clip_vit_preset("openai/clip-vit-large-patch14-336").tokens(), 577);
    expect_refused([] { mmca::vision::clip_vit_preset("vit-b-32"); }, "name", {"vit-b-32"});

    const auto nested = mmca::io::parse_clip_vision_config(
        R"({"model_type": "clip", "projection_dim": 768, "vision_config": {"hidden_size": 1024, "intermediate_size": 4096,
            "num_hidden_layers": 24, "num_attention_heads": 16, "image_size": 336, "patch_size": 14,
            "hidden_act": "quick_gelu", "layer_norm_eps": 1e-05}})");
    EXPECT_EQ(nested.hidden_size, 1024);
    EXPECT_EQ(nested.image_size, 336);
    EXPECT_EQ(nested.tokens(), 577);
    const auto defaults = mmca::io::parse_clip_vision_config(R"({"hidden_act": "gelu"})");
    EXPECT_EQ(defaults.hidden_size, 768);
    EXPECT_EQ(defaults.patch_size, 32);
    EXPECT_EQ(defaults.num_layers, 12);
    EXPECT_EQ(defaults.hidden_act, mmca::nn::activation::gelu_erf);
    expect_refused([] { mmca::io::parse_clip_vision_config(R"({"hidden_size": "wide"})"); }, "hidden_size",
                   {"\"wide\"", "an integer"});
    expect_refused([] { mmca::io::parse_clip_vision_config(R"({"hidden_act": "relu"})"); }, "hidden_act",
                   {"relu"});
    expect_refused([] { mmca::io::parse_clip_vision_config(R"({"image_size": 100, "patch_size": 14})"); }, "config",
                   {"image_size 100"});
}

TEST(ClipViT, DeducesConfigFromShapes) {
    const auto c = small_clip();
    const auto ckpt = mmca::io::checkpoint::open(clip_tensors(c).write("clip_deduce.safetensors"));
    mmca::vision::clip_vit_config base;
    base.num_heads = 3;
    const auto d = mmca::io::deduce_clip_vit_config(ckpt, "vision_model.", base);
    EXPECT_EQ(d.hidden_size, 24);
    EXPECT_EQ(d.image_size, 42);
    EXPECT_EQ(d.patch_size, 14);
    EXPECT_EQ(d.num_layers, 3);
    EXPECT_EQ(d.intermediate_size, 40);
    EXPECT_EQ(d.num_heads, 3);
    EXPECT_EQ(d.tokens(), 10);
}

TEST(ClipViT, BatchEqualsSingleImagesAndThreadsAgree) {
    const auto c = small_clip();
    const auto model = mmca::io::load_clip_vit(
        mmca::io::checkpoint::open(clip_tensors(c).write("clip_batch.safetensors")), "vision_model.", c);
    const std::int64_t N = 3, per_image = 3 * c.image_size * c.image_size, per_out = c.tokens() * c.hidden_size;
    const auto images = random_images(N, 3, c.image_size, 21);
    for (auto which : {mmca::vision::clip_output::last_hidden_state, mmca::vision::clip_output::penultimate}) {
        const auto batch = encode(model, images, N, which, 1);
        const auto two = encode(model, images, N, which, 2);
        EXPECT_TRUE(bitwise_equal(batch.data(), two.data(), batch.size())) << mmca::vision::to_string(which);
        for (std::int64_t n = 0; n < N; ++n) {
            const std::vector<float> one(images.begin() + n * per_image, images.begin() + (n + 1) * per_image);
            const auto single = encode(model, one, 1, which);
            EXPECT_TRUE(bitwise_equal(single.data(), batch.data() + n * per_out, static_cast<std::size_t>(per_out)))
                << mmca::vision::to_string(which) << " image " << n;
        }
    }
}

TEST(ClipViT, PenultimateIsTheOutputOfLayerLMinusOne) {
    const auto c = small_clip();
    auto shorter = c;
    shorter.num_layers = c.num_layers - 1;
    const auto ckpt = mmca::io::checkpoint::open(clip_tensors(c).write("clip_penultimate.safetensors"));
    const auto full = mmca::io::load_clip_vit(ckpt, "vision_model.", c);
    const auto cut = mmca::io::load_clip_vit(ckpt, "vision_model.", shorter);
    EXPECT_EQ(full.layers_run(mmca::vision::clip_output::penultimate), 2);
    const auto images = random_images(2, 3, c.image_size, 22);
    const auto a = encode(full, images, 2, mmca::vision::clip_output::penultimate);
    const auto b = encode(cut, images, 2, mmca::vision::clip_output::last_hidden_state);
    const auto last = encode(full, images, 2, mmca::vision::clip_output::last_hidden_state);
    EXPECT_TRUE(bitwise_equal(a.data(), b.data(), a.size()));
    EXPECT_FALSE(bitwise_equal(a.data(), last.data(), a.size()));
}

TEST(ClipViT, RefusesWrongInputsAndCheckpoints) {
    const auto c = small_clip();
    auto t = clip_tensors(c);
    const auto model = mmca::io::load_clip_vit(mmca::io::checkpoint::open(t.write("clip_errors.safetensors")),
                                               "vision_model.", c);
    std::vector<float> out(static_cast<std::size_t>(c.tokens() * c.hidden_size));
    const mmca::tensor_ref<float, 3> out_ref(out.data(), {1, c.tokens(), c.hidden_size});
    const auto big = random_images(1, 3, 56, 1);
    expect_refused([&] { model.encode(mmca::tensor_ref<const float, 4>(big.data(), {1, 3, 56, 56}), out_ref); },
                   "images", {"clip_vit::encode", "[1, 3, 56, 56]", "(N, 3, 42, 42)"});
    const auto grey = random_images(1, 1, 42, 1);
    expect_refused([&] { model.encode(mmca::tensor_ref<const float, 4>(grey.data(), {1, 1, 42, 42}), out_ref); },
                   "images", {"1 channels"});
    expect_refused([] { mmca::vision::parse_clip_output("pooled"); }, "output", {"pooled", "penultimate"});

    auto missing = clip_tensors(c);
    missing.drop("vision_model.encoder.layers.2.self_attn.v_proj.bias");
    const auto ckpt = mmca::io::checkpoint::open(missing.write("clip_missing.safetensors"));
    expect_refused([&] { mmca::io::load_clip_vit(ckpt, "vision_model.", c); }, "checkpoint",
                   {"load_clip_vit", "vision_model.encoder.layers.2.self_attn.v_proj.bias", "missing"});
    auto misshapen = clip_tensors(c);
    misshapen.reshape("vision_model.embeddings.position_embedding.weight", {9, 24}, 0.1f);
    const auto ckpt2 = mmca::io::checkpoint::open(misshapen.write("clip_shape.safetensors"));
    expect_refused([&] { mmca::io::load_clip_vit(ckpt2, "vision_model.", c); }, "checkpoint",
                   {"vision_model.embeddings.position_embedding.weight", "[9, 24]", "[10, 24]"});
    // A wrapped checkpoint (LLaVA-style prefix) loads with its prefix.
    const auto wrapped = mmca::io::checkpoint::open(
        clip_tensors(c, "model.vision_tower.vision_tower.vision_model.").write("clip_wrapped.safetensors"));
    EXPECT_NO_THROW(mmca::io::load_clip_vit(wrapped, "model.vision_tower.vision_tower.vision_model.", c));
}

}  // namespace
