// tests/cpp/test_projector.cpp - the projectors of SPEC §4: a hand-computed baseline, loading by the
// reference checkpoint's names, error paths, and batches that equal image-by-image calls bitwise.
// (Agreement with independent PyTorch implementations is tested in tests/python/test_projectors.py.)
#include "mmca/io/projector_loader.hpp"
#include "mmca/vision/projector.hpp"

#include "test_llama_util.hpp"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>
#include <string>
#include <vector>

namespace {

using mmca::vision::projector;
using mmca::vision::projector_config;
using mmca::vision::projector_kind;
using mmca_test::st_tensor;

std::vector<float> random_values(std::mt19937& rng, std::int64_t n, float scale, float offset = 0.0f) {
    std::normal_distribution<float> d(0.0f, 1.0f);
    std::vector<float> v(static_cast<std::size_t>(n));
    for (auto& x : v) x = offset + scale * d(rng);
    return v;
}

st_tensor tensor(const std::string& name, std::vector<std::int64_t> shape, const std::vector<float>& values,
                 const std::string& dtype = "F32") {
    return st_tensor{name, dtype, std::move(shape), mmca_test::float_bytes(values, dtype)};
}

/// Random tensors of a projector of `c` under the reference names (prefix "projection.").
std::vector<st_tensor> random_projector_tensors(const projector_config& c, std::uint32_t seed,
                                                const std::string& dtype = "F32") {
    std::mt19937 rng(seed);
    const std::int64_t Dv = c.vision_dim, H = c.hidden;
    const std::string p = "projection.";
    std::vector<st_tensor> t;
    auto mat = [&](const std::string& n, std::int64_t r, std::int64_t cols) {
        t.push_back(tensor(p + n, {r, cols}, random_values(rng, r * cols, 1.0f / std::sqrt(float(cols))), dtype));
    };
    auto vec = [&](const std::string& n, std::int64_t len, float scale, float offset = 0.0f) {
        t.push_back(tensor(p + n, {len}, random_values(rng, len, scale, offset), dtype));
    };
    switch (c.kind) {
        case projector_kind::baseline:
            mat("0.weight", H, Dv);
            vec("0.bias", H, 0.1f);
            vec("1.weight", H, 0.1f, 1.0f);
            vec("1.bias", H, 0.1f);
            break;
        case projector_kind::vit: {
            const std::int64_t M = c.layer.mlp_width;
            const std::string l = "vis_layer.";
            vec(l + "layer_norm1.weight", Dv, 0.1f, 1.0f);
            vec(l + "layer_norm1.bias", Dv, 0.1f);
            for (const char* m : {"q_proj", "k_proj", "v_proj", "out_proj"}) {
                mat(l + "self_attn." + m + ".weight", Dv, Dv);
                vec(l + "self_attn." + m + ".bias", Dv, 0.1f);
            }
            vec(l + "layer_norm2.weight", Dv, 0.1f, 1.0f);
            vec(l + "layer_norm2.bias", Dv, 0.1f);
            mat(l + "mlp.fc1.weight", M, Dv);
            vec(l + "mlp.fc1.bias", M, 0.1f);
            mat(l + "mlp.fc2.weight", Dv, M);
            vec(l + "mlp.fc2.bias", Dv, 0.1f);
            mat("projection.0.weight", H, Dv);
            vec("projection.0.bias", H, 0.1f);
            vec("projection.1.weight", H, 0.1f, 1.0f);
            vec("projection.1.bias", H, 0.1f);
            break;
        }
        case projector_kind::perceiver:
            t.push_back(tensor(p + "query", {c.queries, H}, random_values(rng, c.queries * H, 0.5f), dtype));
            mat("kv_proj.weight", H, Dv);
            vec("kv_proj.bias", H, 0.1f);
            for (const char* n : {"ln_q", "ln_kv"}) {
                vec(std::string(n) + ".weight", H, 0.1f, 1.0f);
                vec(std::string(n) + ".bias", H, 0.1f);
            }
            mat("attn.in_proj_weight", 3 * H, H);
            vec("attn.in_proj_bias", 3 * H, 0.1f);
            mat("attn.out_proj.weight", H, H);
            vec("attn.out_proj.bias", H, 0.1f);
            vec("projection.0.weight", H, 0.1f, 1.0f);
            vec("projection.0.bias", H, 0.1f);
            mat("projection.1.weight", H, H);
            vec("projection.1.bias", H, 0.1f);
            break;
    }
    return t;
}

std::string write_file(const std::vector<st_tensor>& tensors, const std::string& name) {
    const std::string path = mmca_test::temp_path(name + ".safetensors");
    mmca_test::write_safetensors(path, tensors);
    return path;
}

projector_config small_config(projector_kind kind) {
    projector_config c;
    c.kind = kind;
    c.vision_dim = 12;
    c.hidden = 20;
    c.layer = {12, 3, 28, 1e-5f, mmca::nn::activation::quick_gelu};
    c.queries = 9;
    c.heads = 4;
    c.input_tokens = 17;  // 1 CLS + a 4 × 4 grid
    c.has_cls = true;
    return c;
}

template <class F>
std::string error_of(F&& f) {
    try {
        f();
    } catch (const mmca::invalid_argument& e) {
        return e.what();
    }
    return "no error";
}

TEST(Projector, BaselineHandComputed) {
    // W = [[1, 0], [0, 1], [1, 1]], b = [1, -1, 0.5], LayerNorm weight [1, 2, 0.5], bias [0, 1, -1].
    // x = [-3, 0.5]:  Wx + b = [-2, -0.5, -2], mean -1.5, variance 0.5, normalised [-1/√2, √2, -1/√2]
    //   -> [-1/√2, 1 + 2√2, -1 - 1/(2√2)].
    // x = [1, 2]:     Wx + b = [2, 1, 3.5] -> [-0.16222142, -1.2710999, -0.35111432] (float64 by hand).
    const std::vector<float> W = {1, 0, 0, 1, 1, 1};
    const std::vector<st_tensor> tensors = {tensor("projection.0.weight", {3, 2}, W),
                                            tensor("projection.0.bias", {3}, {1, -1, 0.5f}),
                                            tensor("projection.1.weight", {3}, {1, 2, 0.5f}),
                                            tensor("projection.1.bias", {3}, {0, 1, -1})};
    const auto ckpt = mmca::io::checkpoint::open(write_file(tensors, "baseline_hand"));
    EXPECT_EQ(mmca::io::detect_projector_kind(ckpt), projector_kind::baseline);
    projector p = mmca::io::load_projector(ckpt);
    EXPECT_EQ(p.config().vision_dim, 2);
    EXPECT_EQ(p.config().hidden, 3);
    EXPECT_EQ(p.output_tokens(5), 5);

    const std::vector<float> x = {-3.0f, 0.5f, 1.0f, 2.0f};
    std::vector<float> y(6, 0.0f);
    p.project(mmca::tensor_ref<const float, 3>(x.data(), {1, 2, 2}), mmca::tensor_ref<float, 3>(y.data(), {1, 2, 3}), 1);
    const double r = 1.0 / std::sqrt(2.0);
    const std::vector<double> expected = {-r, 1.0 + 2.0 * std::sqrt(2.0), -1.0 - r / 2.0,
                                          -0.16222142, -1.2710999, -0.35111432};
    for (std::size_t i = 0; i < y.size(); ++i) EXPECT_NEAR(y[i], expected[i], 2e-6) << "element " << i;
}

TEST(Projector, ConfigDeducedFromShapes) {
    for (auto kind : {projector_kind::baseline, projector_kind::vit, projector_kind::perceiver}) {
        const projector_config c = small_config(kind);
        const auto ckpt = mmca::io::checkpoint::open(write_file(random_projector_tensors(c, 7), "deduce"));
        EXPECT_EQ(mmca::io::detect_projector_kind(ckpt), kind);
        projector_config base;
        base.kind = kind;
        const projector_config d = mmca::io::deduce_projector_config(ckpt, "projection.", base);
        EXPECT_EQ(d.vision_dim, 12);
        EXPECT_EQ(d.hidden, 20);
        if (kind == projector_kind::vit) {
            EXPECT_EQ(d.layer.width, 12);
            EXPECT_EQ(d.layer.mlp_width, 28);
        }
        if (kind == projector_kind::perceiver) {
            EXPECT_EQ(d.queries, 9);
        }
    }
}

TEST(Projector, BatchEqualsSingleImagesBitwise) {
    const std::int64_t N = 3;
    for (auto kind : {projector_kind::baseline, projector_kind::vit, projector_kind::perceiver}) {
        for (const std::string dtype : {"F32", "BF16"}) {
            const projector_config c = small_config(kind);
            const auto ckpt = mmca::io::checkpoint::open(write_file(random_projector_tensors(c, 11, dtype), "batch"));
            projector p = mmca::io::load_projector(ckpt, "projection.", c);
            const std::int64_t T = c.input_tokens, Dv = c.vision_dim, H = c.hidden, To = p.output_tokens(T);
            std::mt19937 rng(3);
            const std::vector<float> x = random_values(rng, N * T * Dv, 1.0f);
            std::vector<float> batch(static_cast<std::size_t>(N * To * H), -1.0f);
            p.project(mmca::tensor_ref<const float, 3>(x.data(), {N, T, Dv}),
                      mmca::tensor_ref<float, 3>(batch.data(), {N, To, H}), 2);
            for (std::int64_t n = 0; n < N; ++n) {
                std::vector<float> one(static_cast<std::size_t>(To * H), -2.0f);
                p.project(mmca::tensor_ref<const float, 3>(x.data() + n * T * Dv, {1, T, Dv}),
                          mmca::tensor_ref<float, 3>(one.data(), {1, To, H}), 1);
                EXPECT_EQ(std::memcmp(one.data(), batch.data() + n * To * H, one.size() * sizeof(float)), 0)
                    << mmca::vision::to_string(kind) << " " << dtype << " image " << n;
                for (float v : one) ASSERT_TRUE(std::isfinite(v));
            }
        }
    }
}

TEST(Projector, StridedInputEqualsDense) {
    for (auto kind : {projector_kind::baseline, projector_kind::vit, projector_kind::perceiver}) {
        const projector_config c = small_config(kind);
        const auto ckpt = mmca::io::checkpoint::open(write_file(random_projector_tensors(c, 5), "strided"));
        projector p = mmca::io::load_projector(ckpt, "projection.", c);
        const std::int64_t N = 2, T = c.input_tokens, Dv = c.vision_dim, H = c.hidden, To = p.output_tokens(T);
        const std::int64_t row = Dv + 3;  // rows with a gap of 3 floats
        std::mt19937 rng(9);
        std::vector<float> padded = random_values(rng, N * T * row, 1.0f), dense(static_cast<std::size_t>(N * T * Dv));
        for (std::int64_t r = 0; r < N * T; ++r)
            std::copy(padded.begin() + r * row, padded.begin() + r * row + Dv, dense.begin() + r * Dv);
        std::vector<float> a(static_cast<std::size_t>(N * To * H)), b(a.size());
        p.project(mmca::tensor_ref<const float, 3>(dense.data(), {N, T, Dv}), mmca::tensor_ref<float, 3>(a.data(), {N, To, H}), 1);
        p.project(mmca::tensor_ref<const float, 3>(padded.data(), {N, T, Dv}, {T * row, row, 1}),
                  mmca::tensor_ref<float, 3>(b.data(), {N, To, H}), 1);
        EXPECT_EQ(a, b) << mmca::vision::to_string(kind);
    }
}

TEST(Projector, PerceiverDropsTheClsToken) {
    const projector_config c = small_config(projector_kind::perceiver);
    const auto ckpt = mmca::io::checkpoint::open(write_file(random_projector_tensors(c, 21), "cls"));
    projector with_cls = mmca::io::load_projector(ckpt, "projection.", c);
    projector_config nc = c;
    nc.has_cls = false;
    nc.input_tokens = 16;
    projector without_cls = mmca::io::load_projector(ckpt, "projection.", nc);
    EXPECT_EQ(with_cls.output_tokens(17), 9);
    EXPECT_EQ(without_cls.output_tokens(16), 9);
    std::mt19937 rng(4);
    std::vector<float> x = random_values(rng, 17 * 12, 1.0f);
    std::vector<float> a(9 * 20), b(9 * 20);
    with_cls.project(mmca::tensor_ref<const float, 3>(x.data(), {1, 17, 12}), mmca::tensor_ref<float, 3>(a.data(), {1, 9, 20}), 1);
    without_cls.project(mmca::tensor_ref<const float, 3>(x.data() + 12, {1, 16, 12}),
                        mmca::tensor_ref<float, 3>(b.data(), {1, 9, 20}), 1);
    EXPECT_EQ(a, b);  // the CLS row is never read
}

TEST(Projector, PerceiverStoredPositionsAreUsed) {
    projector_config c = small_config(projector_kind::perceiver);
    c.has_cls = false;
    c.input_tokens = 9;  // key grid = query grid: pos_k = pos_q
    auto tensors = random_projector_tensors(c, 31);
    const auto plain = mmca::io::checkpoint::open(write_file(tensors, "pos_plain"));
    const auto table = mmca::vision::sincos_2d(3, 20);
    tensors.push_back(tensor("projection.pos_embed", {9, 20}, table));
    const auto same = mmca::io::checkpoint::open(write_file(tensors, "pos_same"));
    std::vector<float> other = table;
    for (auto& v : other) v *= 0.5f;
    tensors.back() = tensor("projection.pos_embed", {9, 20}, other);
    const auto changed = mmca::io::checkpoint::open(write_file(tensors, "pos_changed"));
    std::mt19937 rng(2);
    const std::vector<float> x = random_values(rng, 9 * 12, 1.0f);
    auto run = [&](const mmca::io::checkpoint& ckpt) {
        projector p = mmca::io::load_projector(ckpt, "projection.", c);
        std::vector<float> y(9 * 20);
        p.project(mmca::tensor_ref<const float, 3>(x.data(), {1, 9, 12}), mmca::tensor_ref<float, 3>(y.data(), {1, 9, 20}), 1);
        return y;
    };
    EXPECT_EQ(run(plain), run(same));
    EXPECT_NE(run(plain), run(changed));
}

TEST(Projector, WrongInputWidthIsRefused) {
    for (auto kind : {projector_kind::baseline, projector_kind::vit, projector_kind::perceiver}) {
        const projector_config c = small_config(kind);
        const auto ckpt = mmca::io::checkpoint::open(write_file(random_projector_tensors(c, 1), "width"));
        projector p = mmca::io::load_projector(ckpt, "projection.", c);
        std::vector<float> x(17 * 13), y(17 * 20);
        const std::string msg = error_of([&] {
            p.project(mmca::tensor_ref<const float, 3>(x.data(), {1, 17, 13}),
                      mmca::tensor_ref<float, 3>(y.data(), {1, p.output_tokens(17), 20}), 1);
        });
        EXPECT_NE(msg.find("mmca::vision::projector::project: argument 'in'"), std::string::npos) << msg;
        EXPECT_NE(msg.find("[1, 17, 13]"), std::string::npos) << msg;
        EXPECT_NE(msg.find("(N, T, 12)"), std::string::npos) << msg;
    }
}

TEST(Projector, WrongOutputShapeIsRefused) {
    const projector_config c = small_config(projector_kind::perceiver);
    const auto ckpt = mmca::io::checkpoint::open(write_file(random_projector_tensors(c, 1), "outshape"));
    projector p = mmca::io::load_projector(ckpt, "projection.", c);
    std::vector<float> x(17 * 12), y(17 * 20);
    const std::string msg = error_of([&] {
        p.project(mmca::tensor_ref<const float, 3>(x.data(), {1, 17, 12}), mmca::tensor_ref<float, 3>(y.data(), {1, 17, 20}), 1);
    });
    EXPECT_NE(msg.find("argument 'out'"), std::string::npos) << msg;
    EXPECT_NE(msg.find("(1, 9, 20)"), std::string::npos) << msg;
}

TEST(Projector, PerceiverWrongTokenCountIsRefused) {
    const projector_config c = small_config(projector_kind::perceiver);
    const auto ckpt = mmca::io::checkpoint::open(write_file(random_projector_tensors(c, 1), "tokens"));
    projector p = mmca::io::load_projector(ckpt, "projection.", c);
    std::vector<float> x(16 * 12), y(9 * 20);
    const std::string msg = error_of([&] {
        p.project(mmca::tensor_ref<const float, 3>(x.data(), {1, 16, 12}), mmca::tensor_ref<float, 3>(y.data(), {1, 9, 20}), 1);
    });
    EXPECT_NE(msg.find("argument 'input_tokens': got 16"), std::string::npos) << msg;
    EXPECT_NE(msg.find("expected 17 tokens"), std::string::npos) << msg;
    EXPECT_NE(error_of([&] { (void)p.output_tokens(18); }).find("input_tokens"), std::string::npos);

    // A token count that is not a square grid (after the CLS token) cannot have key positions.
    projector_config bad = c;
    bad.input_tokens = 16;  // 1 CLS + 15
    const std::string m2 = error_of([&] { (void)mmca::io::load_projector(ckpt, "projection.", bad); });
    EXPECT_NE(m2.find("argument 'input_tokens': got 16 with a CLS token"), std::string::npos) << m2;
}

TEST(Projector, MissingTensorIsNamed) {
    for (auto kind : {projector_kind::baseline, projector_kind::vit, projector_kind::perceiver}) {
        const projector_config c = small_config(kind);
        auto tensors = random_projector_tensors(c, 1);
        // Remove a required tensor: the final LayerNorm's weight of each kind.
        const std::string gone = kind == projector_kind::baseline ? "projection.1.weight"
                                 : kind == projector_kind::vit    ? "projection.vis_layer.layer_norm2.bias"
                                                                  : "projection.attn.in_proj_weight";
        tensors.erase(std::remove_if(tensors.begin(), tensors.end(), [&](const st_tensor& t) { return t.name == gone; }),
                      tensors.end());
        const auto ckpt = mmca::io::checkpoint::open(write_file(tensors, "missing"));
        const std::string msg = error_of([&] { (void)mmca::io::load_projector(ckpt, "projection.", c); });
        EXPECT_NE(msg.find("mmca::io::load_projector: argument 'checkpoint'"), std::string::npos) << msg;
        EXPECT_NE(msg.find("no tensor '" + gone + "'"), std::string::npos) << msg;
        EXPECT_NE(msg.find("missing tensor"), std::string::npos) << msg;
        // So does the overload that deduces the config (with what the shapes do not say from c).
        projector_config base = c;
        base.vision_dim = base.hidden = 1;
        const std::string m2 = error_of([&] {
            (void)mmca::io::load_projector(ckpt, "projection.", mmca::io::deduce_projector_config(ckpt, "projection.", base));
        });
        EXPECT_NE(m2.find("no tensor '" + gone + "'"), std::string::npos) << m2;
    }
}

TEST(Projector, WrongShapeIsNamed) {
    const projector_config c = small_config(projector_kind::perceiver);
    auto tensors = random_projector_tensors(c, 1);
    for (auto& t : tensors)
        if (t.name == "projection.ln_kv.bias") t = tensor(t.name, {19}, std::vector<float>(19, 0.0f));
    const auto ckpt = mmca::io::checkpoint::open(write_file(tensors, "shape"));
    const std::string msg = error_of([&] { (void)mmca::io::load_projector(ckpt, "projection.", c); });
    EXPECT_NE(msg.find("tensor 'projection.ln_kv.bias' of shape [19]"), std::string::npos) << msg;
    EXPECT_NE(msg.find("shape [20]"), std::string::npos) << msg;
}

TEST(Projector, NoProjectorUnderPrefix) {
    const projector_config c = small_config(projector_kind::baseline);
    const auto ckpt = mmca::io::checkpoint::open(write_file(random_projector_tensors(c, 1), "prefix"));
    const std::string msg = error_of([&] { (void)mmca::io::load_projector(ckpt, "proj."); });
    EXPECT_NE(msg.find("'proj.0.weight'"), std::string::npos) << msg;
    EXPECT_NE(msg.find("under the prefix 'proj.'"), std::string::npos) << msg;
}

TEST(Projector, InvalidConfigsAreRefused) {
    projector_config c = small_config(projector_kind::perceiver);
    c.heads = 0;  // H / 128 with H = 20: no heads
    EXPECT_NE(error_of([&] { c.validate("test"); }).find("argument 'heads'"), std::string::npos);
    c = small_config(projector_kind::perceiver);
    c.queries = 10;
    EXPECT_NE(error_of([&] { c.validate("test"); }).find("argument 'queries': got 10"), std::string::npos);
    c = small_config(projector_kind::vit);
    c.layer.width = 15;
    EXPECT_NE(error_of([&] { c.validate("test"); }).find("argument 'layer.width': got 15"), std::string::npos);
    EXPECT_NE(error_of([&] { (void)mmca::vision::parse_projector_kind("mlp"); }).find("\"mlp\""), std::string::npos);
    EXPECT_EQ(mmca::vision::parse_projector_kind("perceiver"), projector_kind::perceiver);
}

}  // namespace
