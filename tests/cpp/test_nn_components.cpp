// Components of the LLaMa decoder (mmca/nn) against plain float64 loops written from their
// definitions: Linear (every storage dtype, matrix-vector and GEMM paths, bias, strided rows),
// RMSNorm, RoPE (HF rotate-half pairing, linear and dynamic-NTK scaling), SwiGLU, embedding, and
// the gated cross-attention block.
#include "dtype_test_util.hpp"

#include "mmca/nn/cross_attention.hpp"
#include "mmca/nn/embedding.hpp"
#include "mmca/nn/linear.hpp"
#include "mmca/nn/mlp.hpp"
#include "mmca/nn/rmsnorm.hpp"
#include "mmca/nn/rope.hpp"

#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

namespace {

std::vector<float> randn(std::size_t n, std::uint32_t seed, float scale = 1.0f) {
    std::mt19937 g(seed);
    std::normal_distribution<float> d(0.0f, scale);
    std::vector<float> v(n);
    for (auto& x : v) x = d(g);
    return v;
}

double max_rel(const std::vector<float>& a, const std::vector<double>& b) {
    double num = 0.0, den = 0.0;
    for (std::size_t i = 0; i < a.size(); ++i) {
        num = std::max(num, std::abs(double(a[i]) - b[i]));
        den = std::max(den, std::abs(b[i]));
    }
    return num / std::max(den, 1e-30);
}

template <class T>
void check_linear(std::int64_t N, std::int64_t in, std::int64_t out, bool bias, int threads) {
    const auto x = randn(static_cast<std::size_t>(N * in), 1);
    const auto wf = randn(static_cast<std::size_t>(out * in), 2, 0.1f);
    const auto b = randn(static_cast<std::size_t>(out), 3);
    const std::vector<T> w = mmca_test::narrow<T>(wf);
    // Oracle: the stored (rounded) weights in float64.
    std::vector<double> ref(static_cast<std::size_t>(N * out));
    for (std::int64_t n = 0; n < N; ++n)
        for (std::int64_t o = 0; o < out; ++o) {
            double s = bias ? b[o] : 0.0;
            for (std::int64_t i = 0; i < in; ++i) s += double(x[n * in + i]) * double(float(w[o * in + i]));
            ref[n * out + o] = s;
        }
    std::vector<float> y(static_cast<std::size_t>(N * out), -7.0f);
    mmca::nn::linear_forward(mmca::tensor_ref<const float, 2>(x.data(), {N, in}), mmca::nn::make_matrix(w.data(), out, in),
                             bias ? b.data() : nullptr, mmca::tensor_ref<float, 2>(y.data(), {N, out}), threads);
    EXPECT_LT(max_rel(y, ref), 2e-6) << "N=" << N << " in=" << in << " out=" << out;
}

TEST(NnLinear, MatchesFloat64ForEveryDtypeAndPath) {
    for (int threads : {1, 2})
        for (std::int64_t N : {1, 3, 4, 5, 8, 9, 37})
            for (bool bias : {false, true}) {
                check_linear<float>(N, 67, 131, bias, threads);
                check_linear<mmca::bfloat16>(N, 64, 129, bias, threads);
                check_linear<mmca::float16>(N, 19, 300, bias, threads);
            }
}

TEST(NnLinear, StridedRowsAndErrors) {
    const std::int64_t N = 12, in = 16, out = 10;
    auto x = randn(static_cast<std::size_t>(N * 20), 4);  // rows of 20, first 16 used
    auto w = randn(static_cast<std::size_t>(out * in), 5);
    std::vector<float> y(static_cast<std::size_t>(N * 32), 0.0f);
    mmca::nn::linear_forward(mmca::tensor_ref<const float, 2>(x.data(), {N, in}, {20, 1}),
                             mmca::nn::make_matrix(w.data(), out, in), nullptr,
                             mmca::tensor_ref<float, 2>(y.data(), {N, out}, {32, 1}), 1);
    for (std::int64_t n = 0; n < N; ++n)
        for (std::int64_t o = 0; o < out; ++o) {
            double s = 0;
            for (std::int64_t i = 0; i < in; ++i) s += double(x[n * 20 + i]) * w[o * in + i];
            EXPECT_NEAR(y[n * 32 + o], s, 1e-4);
        }
    EXPECT_THROW(mmca::nn::linear_forward(mmca::tensor_ref<const float, 2>(x.data(), {N, 15}),
                                          mmca::nn::make_matrix(w.data(), out, in), nullptr,
                                          mmca::tensor_ref<float, 2>(y.data(), {N, out}), 1),
                 mmca::invalid_argument);
    EXPECT_THROW(mmca::nn::linear_forward(mmca::tensor_ref<const float, 2>(x.data(), {N, in}),
                                          mmca::nn::make_matrix(w.data(), out, in), nullptr,
                                          mmca::tensor_ref<float, 2>(y.data(), {N, out + 1}), 1),
                 mmca::invalid_argument);
}

TEST(NnRmsNorm, MatchesDefinitionInPlaceToo) {
    const std::int64_t N = 70, H = 33;
    auto x = randn(static_cast<std::size_t>(N * H), 6, 3.0f);
    auto w = randn(static_cast<std::size_t>(H), 7);
    std::vector<double> ref(x.size());
    for (std::int64_t n = 0; n < N; ++n) {
        double ms = 0;
        for (std::int64_t i = 0; i < H; ++i) ms += double(x[n * H + i]) * x[n * H + i];
        ms /= H;
        for (std::int64_t i = 0; i < H; ++i) ref[n * H + i] = w[i] * x[n * H + i] / std::sqrt(ms + 1e-5);
    }
    std::vector<float> y(x.size());
    mmca::nn::rmsnorm_forward(mmca::tensor_ref<const float, 2>(x.data(), {N, H}), w.data(), 1e-5f,
                              mmca::tensor_ref<float, 2>(y.data(), {N, H}), 2);
    EXPECT_LT(max_rel(y, ref), 1e-6);
    mmca::nn::rmsnorm_forward(mmca::tensor_ref<const float, 2>(x.data(), {N, H}), w.data(), 1e-5f,
                              mmca::tensor_ref<float, 2>(x.data(), {N, H}), 1);
    EXPECT_EQ(x, y);
    EXPECT_THROW(mmca::nn::rmsnorm_forward(mmca::tensor_ref<const float, 2>(x.data(), {N, H}), w.data(), 0.0f,
                                           mmca::tensor_ref<float, 2>(y.data(), {N, H})),
                 mmca::invalid_argument);
}

// RoPE against the complex-number form: pairs (x[i], x[i + D/2]) rotate by pos · theta'^(-2i/D).
void check_rope(mmca::nn::rope_scaling_type scaling, double factor, std::int64_t total_len) {
    mmca::nn::rope_config cfg;
    cfg.head_dim = 16;
    cfg.theta = 500.0;
    cfg.scaling = scaling;
    cfg.factor = factor;
    cfg.max_positions = 32;
    const std::int64_t heads = 3, D = cfg.head_dim, half = D / 2;
    const std::vector<std::int64_t> pos = {0, 1, 7, 31, 40, 77};
    const std::int64_t N = static_cast<std::int64_t>(pos.size());
    auto x = randn(static_cast<std::size_t>(N * heads * D), 8);
    auto y = x;
    mmca::nn::rope_table table;
    mmca::nn::rope_build(cfg, pos.data(), N, total_len, table);
    mmca::nn::rope_apply(y.data(), heads * D, heads, table);
    double base = cfg.theta;
    if (scaling == mmca::nn::rope_scaling_type::dynamic && total_len > cfg.max_positions)
        base *= std::pow(factor * total_len / cfg.max_positions - (factor - 1), double(D) / (D - 2));
    for (std::int64_t r = 0; r < N; ++r)
        for (std::int64_t h = 0; h < heads; ++h)
            for (std::int64_t i = 0; i < half; ++i) {
                double p = double(pos[r]);
                if (scaling == mmca::nn::rope_scaling_type::linear) p /= factor;
                const double angle = p * std::pow(base, -2.0 * i / D);
                const std::size_t o = static_cast<std::size_t>((r * heads + h) * D);
                const double a = x[o + i], b = x[o + i + half];
                EXPECT_NEAR(y[o + i], a * std::cos(angle) - b * std::sin(angle), 2e-5);
                EXPECT_NEAR(y[o + i + half], b * std::cos(angle) + a * std::sin(angle), 2e-5);
            }
}

TEST(NnRope, RotateHalfPairingAndScalings) {
    check_rope(mmca::nn::rope_scaling_type::none, 1.0, 78);
    check_rope(mmca::nn::rope_scaling_type::linear, 4.0, 78);
    check_rope(mmca::nn::rope_scaling_type::dynamic, 2.0, 78);  // longer than max_positions: theta grows
    check_rope(mmca::nn::rope_scaling_type::dynamic, 2.0, 20);  // within max_positions: unscaled
}

TEST(NnSwiGlu, MatchesDefinition) {
    const std::int64_t N = 11, H = 24, I = 37;
    auto x = randn(static_cast<std::size_t>(N * H), 9);
    auto g = randn(static_cast<std::size_t>(I * H), 10, 0.2f), u = randn(static_cast<std::size_t>(I * H), 11, 0.2f),
         d = randn(static_cast<std::size_t>(H * I), 12, 0.2f);
    mmca::nn::swiglu_weights w{mmca::nn::make_matrix(g.data(), I, H), mmca::nn::make_matrix(u.data(), I, H),
                               mmca::nn::make_matrix(d.data(), H, I)};
    std::vector<float> y(static_cast<std::size_t>(N * H));
    mmca::nn::swiglu_scratch s;
    mmca::nn::swiglu_forward(mmca::tensor_ref<const float, 2>(x.data(), {N, H}), w,
                             mmca::tensor_ref<float, 2>(y.data(), {N, H}), s, 2);
    std::vector<double> ref(y.size());
    for (std::int64_t n = 0; n < N; ++n) {
        std::vector<double> a(static_cast<std::size_t>(I));
        for (std::int64_t i = 0; i < I; ++i) {
            double gs = 0, us = 0;
            for (std::int64_t k = 0; k < H; ++k) gs += double(g[i * H + k]) * x[n * H + k], us += double(u[i * H + k]) * x[n * H + k];
            a[i] = gs / (1 + std::exp(-gs)) * us;
        }
        for (std::int64_t k = 0; k < H; ++k) {
            double s2 = 0;
            for (std::int64_t i = 0; i < I; ++i) s2 += double(d[k * I + i]) * a[i];
            ref[n * H + k] = s2;
        }
    }
    EXPECT_LT(max_rel(y, ref), 1e-5);
}

TEST(NnEmbedding, RowsWidenedAndIdsChecked) {
    const std::int64_t V = 7, H = 5;
    auto t = randn(static_cast<std::size_t>(V * H), 13);
    auto tb = mmca_test::narrow<mmca::bfloat16>(t);
    const std::int32_t ids[] = {3, 0, 6, 3};
    std::vector<float> out(4 * H);
    mmca::nn::embedding_forward(ids, 4, mmca::nn::make_matrix(tb.data(), V, H), mmca::tensor_ref<float, 2>(out.data(), {4, H}));
    for (int n = 0; n < 4; ++n)
        for (int i = 0; i < H; ++i) EXPECT_EQ(out[n * H + i], float(tb[ids[n] * H + i]));
    const std::int32_t bad[] = {1, 7};
    try {
        mmca::nn::embedding_forward(bad, 2, mmca::nn::make_matrix(tb.data(), V, H),
                                    mmca::tensor_ref<float, 2>(out.data(), {2, H}));
        FAIL() << "no error for an id past the vocabulary";
    } catch (const mmca::invalid_argument& e) {
        EXPECT_NE(std::string(e.what()).find("ids[1] = 7"), std::string::npos) << e.what();
        EXPECT_NE(std::string(e.what()).find("[0, 7)"), std::string::npos) << e.what();
    }
}

// The gated cross-attention block against a float64 loop over the same rows, per policy.
TEST(NnGatedCrossAttention, MatchesDefinitionPerPolicyAndZeroGatesAreIdentity) {
    const std::int64_t H = 16, Hq = 4, Hkv = 2, D = 4, I = 20;
    const std::vector<std::int8_t> type = {1, 2, 2, 1, 1, 2, 2, 2, 1, 1, 0};
    const std::vector<std::int32_t> img = {-1, 0, 0, -1, -1, 1, 1, 1, -1, -1, -1};
    const std::int64_t N = static_cast<std::int64_t>(type.size());
    std::vector<std::int64_t> seq(N, 0), pos(N);
    std::vector<std::uint8_t> valid(N, 1);
    valid[N - 1] = 0;
    for (std::int64_t n = 0; n < N; ++n) pos[n] = n;
    auto e = randn(static_cast<std::size_t>(N * H), 20);
    auto h0 = randn(static_cast<std::size_t>(N * H), 21);
    auto wq = randn(H * H, 22, 0.3f), wk = randn(Hkv * D * H, 23, 0.3f), wv = randn(Hkv * D * H, 24, 0.3f),
         wo = randn(H * H, 25, 0.3f), wg = randn(I * H, 26, 0.3f), wu = randn(I * H, 27, 0.3f), wd = randn(H * I, 28, 0.3f);
    mmca::nn::gated_cross_attention_weights w;
    w.attn_norm = randn(H, 29, 0.1f);
    w.mlp_norm = randn(H, 30, 0.1f);
    for (auto& x : w.attn_norm) x += 1;
    for (auto& x : w.mlp_norm) x += 1;
    w.q = mmca::nn::make_matrix(wq.data(), H, H);
    w.k = mmca::nn::make_matrix(wk.data(), Hkv * D, H);
    w.v = mmca::nn::make_matrix(wv.data(), Hkv * D, H);
    w.o = mmca::nn::make_matrix(wo.data(), H, H);
    w.mlp = {mmca::nn::make_matrix(wg.data(), I, H), mmca::nn::make_matrix(wu.data(), I, H),
             mmca::nn::make_matrix(wd.data(), H, I)};
    mmca::nn::row_metadata meta{seq.data(), pos.data(), type.data(), img.data(), valid.data()};
    auto run = [&](float ga, float gm, mmca::image_visibility vis) {
        w.attn_gate = ga;
        w.mlp_gate = gm;
        std::vector<float> h = h0;
        mmca::nn::cross_kv_store store;
        store.seqs.resize(1);
        mmca::nn::cross_attention_scratch s;
        mmca::nn::gated_cross_attention_forward(mmca::tensor_ref<float, 2>(h.data(), {N, H}),
                                                mmca::tensor_ref<const float, 2>(e.data(), {N, H}), meta, w, Hq, Hkv, D,
                                                1e-5f, vis, store, s, 1);
        return h;
    };
    EXPECT_EQ(run(0.0f, 0.0f, mmca::image_visibility::all), h0);
    auto matvec = [](const std::vector<float>& W, std::int64_t rows, std::int64_t cols, const std::vector<double>& x) {
        std::vector<double> y(static_cast<std::size_t>(rows), 0.0);
        for (std::int64_t r = 0; r < rows; ++r)
            for (std::int64_t c = 0; c < cols; ++c) y[r] += double(W[r * cols + c]) * x[c];
        return y;
    };
    auto norm = [&](const std::vector<double>& x, const std::vector<float>& g) {
        double ms = 0;
        for (double v : x) ms += v * v;
        ms /= double(x.size());
        std::vector<double> y(x.size());
        for (std::size_t i = 0; i < x.size(); ++i) y[i] = g[i] * x[i] / std::sqrt(ms + 1e-5);
        return y;
    };
    for (auto vis : {mmca::image_visibility::all, mmca::image_visibility::preceding, mmca::image_visibility::latest}) {
        const float ga = 0.8f, gm = -0.6f;
        auto got = run(ga, gm, vis);
        for (std::int64_t n = 0; n < N; ++n) {
            std::vector<double> h(h0.begin() + n * H, h0.begin() + (n + 1) * H);
            if (valid[n] && type[n] == 1) {
                auto q = matvec(wq, H, H, norm(h, w.attn_norm));
                std::vector<double> att(static_cast<std::size_t>(H), 0.0);
                std::int32_t latest = -1;
                for (std::int64_t m = 0; m < n; ++m)
                    if (type[m] == 2) latest = img[m];
                for (std::int64_t hq = 0; hq < Hq; ++hq) {
                    std::vector<std::pair<double, std::vector<double>>> kv;
                    for (std::int64_t m = 0; m < N; ++m) {
                        if (!valid[m] || type[m] != 2) continue;
                        const bool ok = vis == mmca::image_visibility::all ? true
                                        : vis == mmca::image_visibility::preceding ? m < n
                                                                                   : (m < n && img[m] == latest);
                        if (!ok) continue;
                        std::vector<double> em(e.begin() + m * H, e.begin() + (m + 1) * H);
                        auto k = matvec(wk, Hkv * D, H, em), v = matvec(wv, Hkv * D, H, em);
                        const std::int64_t g = hq / (Hq / Hkv);
                        double s = 0;
                        for (std::int64_t d = 0; d < D; ++d) s += q[hq * D + d] * k[g * D + d];
                        kv.push_back({s / 2.0, std::vector<double>(v.begin() + g * D, v.begin() + (g + 1) * D)});
                    }
                    if (kv.empty()) continue;
                    double mx = -1e300, z = 0;
                    for (auto& p : kv) mx = std::max(mx, p.first);
                    for (auto& p : kv) z += std::exp(p.first - mx);
                    for (auto& p : kv)
                        for (std::int64_t d = 0; d < D; ++d) att[hq * D + d] += std::exp(p.first - mx) / z * p.second[d];
                }
                auto o = matvec(wo, H, H, att);
                for (std::int64_t i = 0; i < H; ++i) h[i] += std::tanh(ga) * o[i];
                auto x = norm(h, w.mlp_norm);
                auto gg = matvec(wg, I, H, x), uu = matvec(wu, I, H, x);
                for (std::int64_t i = 0; i < I; ++i) gg[i] = gg[i] / (1 + std::exp(-gg[i])) * uu[i];
                auto dd = matvec(wd, H, I, gg);
                for (std::int64_t i = 0; i < H; ++i) h[i] += std::tanh(gm) * dd[i];
            }
            for (std::int64_t i = 0; i < H; ++i)
                EXPECT_NEAR(got[n * H + i], h[i], 1e-4 * (1 + std::abs(h[i]))) << "row " << n << " policy " << mmca::to_string(vis);
        }
    }
}

}  // namespace
