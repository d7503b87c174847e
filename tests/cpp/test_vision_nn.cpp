// Shared pieces of the vision side against plain float64 loops written from their definitions:
// LayerNorm, the activations, dense multi-head attention (blocked and per-head-interleaved heads),
// the pre-LN encoder layer, the attention pool, the 2D sin-cos table and the bicubic table resize.
#include "mmca/nn/activation.hpp"
#include "mmca/nn/dense_attention.hpp"
#include "mmca/nn/layernorm.hpp"
#include "mmca/vision/attention_pool.hpp"
#include "mmca/vision/encoder_layer.hpp"
#include "mmca/vision/position.hpp"

#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

namespace {

using mmca::tensor_ref;
using dvec = std::vector<double>;

std::vector<float> randn(std::size_t n, std::uint32_t seed, float scale = 1.0f, float mean = 0.0f) {
    std::mt19937 g(seed);
    std::normal_distribution<float> d(mean, scale);
    std::vector<float> v(n);
    for (auto& x : v) x = d(g);
    return v;
}

double max_rel(const std::vector<float>& a, const dvec& b) {
    double num = 0.0, den = 0.0;
    for (std::size_t i = 0; i < a.size(); ++i) {
        num = std::max(num, std::abs(double(a[i]) - b[i]));
        den = std::max(den, std::abs(b[i]));
    }
    return num / std::max(den, 1e-30);
}

// y (n, o) = x (n, i) · Wᵀ + b, in double.
dvec ref_linear(const dvec& x, std::int64_t n, std::int64_t in, const std::vector<float>& w, std::int64_t out,
                const std::vector<float>& b) {
    dvec y(static_cast<std::size_t>(n * out));
    for (std::int64_t r = 0; r < n; ++r)
        for (std::int64_t o = 0; o < out; ++o) {
            double s = b.empty() ? 0.0 : b[o];
            for (std::int64_t i = 0; i < in; ++i) s += x[r * in + i] * double(w[o * in + i]);
            y[r * out + o] = s;
        }
    return y;
}

dvec ref_layernorm(const dvec& x, std::int64_t n, std::int64_t d, const std::vector<float>& w,
                   const std::vector<float>& b, double eps) {
    dvec y(x.size());
    for (std::int64_t r = 0; r < n; ++r) {
        double mean = 0.0, var = 0.0;
        for (std::int64_t i = 0; i < d; ++i) mean += x[r * d + i];
        mean /= double(d);
        for (std::int64_t i = 0; i < d; ++i) var += (x[r * d + i] - mean) * (x[r * d + i] - mean);
        var /= double(d);
        for (std::int64_t i = 0; i < d; ++i) y[r * d + i] = (x[r * d + i] - mean) / std::sqrt(var + eps) * w[i] + b[i];
    }
    return y;
}

// Multi-head attention: q (Lq, H·D), k/v (Lk, H·D), heads blocked, in double.
dvec ref_mha(const dvec& q, const dvec& k, const dvec& v, std::int64_t Lq, std::int64_t Lk, std::int64_t H,
             std::int64_t D) {
    dvec out(static_cast<std::size_t>(Lq * H * D), 0.0);
    const double scale = 1.0 / std::sqrt(double(D));
    for (std::int64_t h = 0; h < H; ++h)
        for (std::int64_t i = 0; i < Lq; ++i) {
            dvec s(static_cast<std::size_t>(Lk));
            double mx = -1e300, sum = 0.0;
            for (std::int64_t j = 0; j < Lk; ++j) {
                double t = 0.0;
                for (std::int64_t d = 0; d < D; ++d) t += q[i * H * D + h * D + d] * k[j * H * D + h * D + d];
                s[j] = t * scale;
                mx = std::max(mx, s[j]);
            }
            for (auto& t : s) sum += (t = std::exp(t - mx));
            for (std::int64_t j = 0; j < Lk; ++j)
                for (std::int64_t d = 0; d < D; ++d) out[i * H * D + h * D + d] += s[j] / sum * v[j * H * D + h * D + d];
        }
    return out;
}

dvec widen(const std::vector<float>& v) { return dvec(v.begin(), v.end()); }

TEST(VisionNn, LayerNormMatchesDefinition) {
    const std::int64_t N = 7, D = 37;
    auto x = randn(N * D, 1, 3.0f, 5.0f), w = randn(D, 2), b = randn(D, 3);
    std::vector<float> y(x.size());
    mmca::nn::layernorm_forward(tensor_ref<const float, 2>(x.data(), {N, D}), w.data(), b.data(), 1e-6f,
                                tensor_ref<float, 2>(y.data(), {N, D}));
    EXPECT_LT(max_rel(y, ref_layernorm(widen(x), N, D, w, b, 1e-6)), 1e-6);
    // In place, and without weight / bias.
    std::vector<float> z = x;
    mmca::nn::layernorm_forward(tensor_ref<const float, 2>(z.data(), {N, D}), nullptr, nullptr, 1e-5f,
                                tensor_ref<float, 2>(z.data(), {N, D}));
    EXPECT_LT(max_rel(z, ref_layernorm(widen(x), N, D, std::vector<float>(D, 1.0f), std::vector<float>(D, 0.0f), 1e-5)),
              1e-6);
    EXPECT_THROW(mmca::nn::layernorm_forward(tensor_ref<const float, 2>(x.data(), {N, D}), w.data(), b.data(), 0.0f,
                                             tensor_ref<float, 2>(y.data(), {N, D})),
                 mmca::invalid_argument);
}

TEST(VisionNn, ActivationsMatchDefinitions) {
    const std::vector<float> xs = {-4.0f, -1.5f, -0.3f, 0.0f, 0.2f, 1.0f, 2.5f, 6.0f};
    for (float x : xs) {
        const double d = x;
        EXPECT_NEAR(mmca::nn::activate(mmca::nn::activation::gelu_erf, x), 0.5 * d * (1.0 + std::erf(d / std::sqrt(2.0))), 1e-6);
        EXPECT_NEAR(mmca::nn::activate(mmca::nn::activation::quick_gelu, x), d / (1.0 + std::exp(-1.702 * d)), 1e-6);
        EXPECT_NEAR(mmca::nn::activate(mmca::nn::activation::gelu_tanh, x),
                    0.5 * d * (1.0 + std::tanh(std::sqrt(2.0 / M_PI) * (d + 0.044715 * d * d * d))), 1e-6);
    }
    EXPECT_EQ(mmca::nn::parse_activation("quick_gelu"), mmca::nn::activation::quick_gelu);
    EXPECT_EQ(mmca::nn::parse_activation("gelu"), mmca::nn::activation::gelu_erf);
    EXPECT_THROW(mmca::nn::parse_activation("relu"), mmca::invalid_argument);
}

TEST(VisionNn, DenseAttentionBlockedAndInterleaved) {
    const std::int64_t Lq = 150, Lk = 61, H = 3, D = 20;  // more query rows than one block
    auto q = randn(Lq * H * D, 4), k = randn(Lk * H * D, 5), v = randn(Lk * H * D, 6);
    const dvec want = ref_mha(widen(q), widen(k), widen(v), Lq, Lk, H, D);
    for (int threads : {1, 2}) {
        std::vector<float> out(Lq * H * D);
        mmca::nn::dense_attention({q.data(), Lq, H * D, D, 0}, {k.data(), Lk, H * D, D, 0}, {v.data(), Lk, H * D, D, 0},
                                  H, D, 1.0f / std::sqrt(float(D)), tensor_ref<float, 2>(out.data(), {Lq, H * D}), threads);
        EXPECT_LT(max_rel(out, want), 1e-5) << threads;
    }
    // The same heads read from one (L, 3·H·D) buffer with q|k|v of each head side by side.
    const std::int64_t L = Lk;
    std::vector<float> packed(L * 3 * H * D);
    for (std::int64_t r = 0; r < L; ++r)
        for (std::int64_t h = 0; h < H; ++h)
            for (std::int64_t d = 0; d < D; ++d) {
                packed[r * 3 * H * D + h * 3 * D + d] = q[r * H * D + h * D + d];
                packed[r * 3 * H * D + h * 3 * D + D + d] = k[r * H * D + h * D + d];
                packed[r * 3 * H * D + h * 3 * D + 2 * D + d] = v[r * H * D + h * D + d];
            }
    std::vector<float> out(L * H * D);
    mmca::nn::dense_attention({packed.data(), L, 3 * H * D, 3 * D, 0}, {packed.data(), L, 3 * H * D, 3 * D, D},
                              {packed.data(), L, 3 * H * D, 3 * D, 2 * D}, H, D, 1.0f / std::sqrt(float(D)),
                              tensor_ref<float, 2>(out.data(), {L, H * D}));
    const dvec wq = widen(q);
    const dvec want2 = ref_mha(dvec(wq.begin(), wq.begin() + L * H * D), widen(k), widen(v), L, L, H, D);
    EXPECT_LT(max_rel(out, want2), 1e-5);
    // A head that does not fit in the row is refused, naming the argument.
    try {
        mmca::nn::dense_attention({q.data(), Lq, H * D, D, 1}, {k.data(), Lk, H * D, D, 0}, {v.data(), Lk, H * D, D, 0},
                                  H, D, 1.0f, tensor_ref<float, 2>(out.data(), {Lq, H * D}));
        FAIL() << "no error";
    } catch (const mmca::invalid_argument& e) {
        EXPECT_EQ(e.argument(), "q");
    }
}

struct layer_data {
    std::int64_t W, H, M;
    std::vector<float> ln1w, ln1b, ln2w, ln2b, wq, wk, wv, bq, bk, bv, wo, bo, w1, b1, w2, b2;
    layer_data(std::int64_t w, std::int64_t h, std::int64_t m, std::uint32_t s) : W(w), H(h), M(m) {
        ln1w = randn(W, s + 1, 0.2f, 1.0f), ln1b = randn(W, s + 2, 0.1f), ln2w = randn(W, s + 3, 0.2f, 1.0f);
        ln2b = randn(W, s + 4, 0.1f);
        const float sw = 1.0f / std::sqrt(float(W));
        wq = randn(W * W, s + 5, sw), wk = randn(W * W, s + 6, sw), wv = randn(W * W, s + 7, sw);
        bq = randn(W, s + 8, 0.1f), bk = randn(W, s + 9, 0.1f), bv = randn(W, s + 10, 0.1f);
        wo = randn(W * W, s + 11, sw), bo = randn(W, s + 12, 0.1f);
        w1 = randn(M * W, s + 13, sw), b1 = randn(M, s + 14, 0.1f);
        w2 = randn(W * M, s + 15, 1.0f / std::sqrt(float(M))), b2 = randn(W, s + 16, 0.1f);
    }
    // x (T, W) one sequence, in double.
    dvec reference(const dvec& x, std::int64_t T, mmca::nn::activation act, double eps) const {
        dvec h = ref_layernorm(x, T, W, ln1w, ln1b, eps);
        dvec a = ref_mha(ref_linear(h, T, W, wq, W, bq), ref_linear(h, T, W, wk, W, bk), ref_linear(h, T, W, wv, W, bv),
                         T, T, H, W / H);
        dvec o = ref_linear(a, T, W, wo, W, bo);
        dvec y = x;
        for (std::size_t i = 0; i < y.size(); ++i) y[i] += o[i];
        dvec f = ref_linear(ref_layernorm(y, T, W, ln2w, ln2b, eps), T, W, w1, M, b1);
        for (auto& t : f) t = mmca::nn::activate(act, float(t));
        dvec g = ref_linear(f, T, M, w2, W, b2);
        for (std::size_t i = 0; i < y.size(); ++i) y[i] += g[i];
        return y;
    }
};

TEST(VisionNn, EncoderLayerEveryLayoutMatchesDefinition) {
    const std::int64_t W = 24, H = 3, M = 40, T = 9, N = 2, D = W / H;
    const layer_data L(W, H, M, 100);
    const auto x = randn(N * T * W, 7);
    using mmca::vision::qkv_layout;
    for (auto layout : {qkv_layout::separate, qkv_layout::fused_blocked, qkv_layout::fused_interleaved_per_head}) {
        mmca::vision::encoder_layer_weights w;
        w.ln1_w = L.ln1w, w.ln1_b = L.ln1b, w.ln2_w = L.ln2w, w.ln2_b = L.ln2b;
        w.layout = layout;
        std::vector<float> fused(3 * W * W), fused_bias(3 * W);
        if (layout == qkv_layout::separate) {
            w.q = mmca::nn::make_matrix(L.wq.data(), W, W), w.k = mmca::nn::make_matrix(L.wk.data(), W, W);
            w.v = mmca::nn::make_matrix(L.wv.data(), W, W);
            w.q_bias = L.bq, w.k_bias = L.bk, w.v_bias = L.bv;
        } else {
            for (std::int64_t h = 0; h < H; ++h)
                for (int part = 0; part < 3; ++part) {
                    const auto& src = part == 0 ? L.wq : (part == 1 ? L.wk : L.wv);
                    const auto& bsrc = part == 0 ? L.bq : (part == 1 ? L.bk : L.bv);
                    for (std::int64_t d = 0; d < D; ++d) {
                        const std::int64_t row = layout == qkv_layout::fused_blocked ? part * W + h * D + d
                                                                                      : h * 3 * D + part * D + d;
                        std::copy_n(src.data() + (h * D + d) * W, W, fused.data() + row * W);
                        fused_bias[row] = bsrc[h * D + d];
                    }
                }
            w.qkv = mmca::nn::make_matrix(fused.data(), 3 * W, W);
            w.qkv_bias = fused_bias;
        }
        w.out = mmca::nn::make_matrix(L.wo.data(), W, W), w.out_bias = L.bo;
        w.fc1 = mmca::nn::make_matrix(L.w1.data(), M, W), w.fc1_bias = L.b1;
        w.fc2 = mmca::nn::make_matrix(L.w2.data(), W, M), w.fc2_bias = L.b2;
        const mmca::vision::encoder_layer_config cfg{W, H, M, 1e-5f, mmca::nn::activation::quick_gelu};
        mmca::vision::check_encoder_layer(cfg, w);
        std::vector<float> y = x;
        mmca::vision::encoder_scratch scratch;
        mmca::vision::encoder_layer_forward(tensor_ref<float, 3>(y.data(), {N, T, W}), cfg, w, scratch, 2);
        for (std::int64_t n = 0; n < N; ++n) {
            const dvec want = L.reference(dvec(x.begin() + n * T * W, x.begin() + (n + 1) * T * W), T,
                                          mmca::nn::activation::quick_gelu, 1e-5);
            const std::vector<float> got(y.begin() + n * T * W, y.begin() + (n + 1) * T * W);
            EXPECT_LT(max_rel(got, want), 2e-5) << int(layout) << " sequence " << n;
        }
    }
}

TEST(VisionNn, EncoderLayerChecksWeights) {
    mmca::vision::encoder_layer_weights w;
    const mmca::vision::encoder_layer_config cfg{8, 2, 16, 1e-6f, mmca::nn::activation::gelu_erf};
    try {
        mmca::vision::check_encoder_layer(cfg, w);
        FAIL() << "no error";
    } catch (const mmca::invalid_argument& e) {
        EXPECT_NE(std::string(e.what()).find("ln1 weight"), std::string::npos) << e.what();
    }
    const mmca::vision::encoder_layer_config bad{10, 3, 16, 1e-6f, mmca::nn::activation::gelu_erf};
    EXPECT_THROW(bad.validate("t"), mmca::invalid_argument);
}

TEST(VisionNn, AttentionPoolMatchesDefinition) {
    const std::int64_t Q = 5, Dv = 14, E = 16, H = 2, T = 9, N = 3;
    mmca::vision::attention_pool_weights w;
    w.query = randn(Q * E, 1);
    const auto kvw = randn(E * Dv, 2, 0.3f), inw = randn(3 * E * E, 3, 0.25f), outw = randn(E * E, 4, 0.25f);
    w.kv_proj = mmca::nn::make_matrix(kvw.data(), E, Dv);
    w.kv_proj_bias = randn(E, 5, 0.1f);
    w.ln_q_w = randn(E, 6, 0.2f, 1.0f), w.ln_q_b = randn(E, 7, 0.1f);
    w.ln_kv_w = randn(E, 8, 0.2f, 1.0f), w.ln_kv_b = randn(E, 9, 0.1f);
    w.in_proj = mmca::nn::make_matrix(inw.data(), 3 * E, E);
    w.in_proj_bias = randn(3 * E, 10, 0.1f);
    w.out_proj = mmca::nn::make_matrix(outw.data(), E, E);
    w.out_proj_bias = randn(E, 11, 0.1f);
    w.q_pos = randn(Q * E, 12, 0.5f);
    w.k_pos = randn(T * E, 13, 0.5f);
    const mmca::vision::attention_pool_config cfg{Q, Dv, E, H, 1e-6f};
    mmca::vision::check_attention_pool(cfg, w);
    const auto x = randn(N * T * Dv, 14);
    std::vector<float> out(N * Q * E);
    mmca::vision::attention_pool_scratch scratch;
    mmca::vision::attention_pool_forward(tensor_ref<const float, 3>(x.data(), {N, T, Dv}), cfg, w,
                                         tensor_ref<float, 3>(out.data(), {N, Q, E}), scratch);
    // Reference, one image at a time.
    auto slice = [](const std::vector<float>& v, std::int64_t r0, std::int64_t rows, std::int64_t cols) {
        return std::vector<float>(v.begin() + r0 * cols, v.begin() + (r0 + rows) * cols);
    };
    dvec q = ref_layernorm(widen(w.query), Q, E, w.ln_q_w, w.ln_q_b, 1e-6);
    for (std::int64_t i = 0; i < Q * E; ++i) q[i] += w.q_pos[i];
    const dvec qp = ref_linear(q, Q, E, slice(inw, 0, E, E), E, slice(w.in_proj_bias, 0, E, 1));
    for (std::int64_t n = 0; n < N; ++n) {
        const dvec kv = ref_layernorm(ref_linear(widen(slice(x, n * T, T, Dv)), T, Dv, kvw, E, w.kv_proj_bias), T, E,
                                      w.ln_kv_w, w.ln_kv_b, 1e-6);
        dvec k = kv;
        for (std::int64_t i = 0; i < T * E; ++i) k[i] += w.k_pos[i];
        const dvec kp = ref_linear(k, T, E, slice(inw, E, E, E), E, slice(w.in_proj_bias, E, E, 1));
        const dvec vp = ref_linear(kv, T, E, slice(inw, 2 * E, E, E), E, slice(w.in_proj_bias, 2 * E, E, 1));
        const dvec want = ref_linear(ref_mha(qp, kp, vp, Q, T, H, E / H), Q, E, outw, E, w.out_proj_bias);
        EXPECT_LT(max_rel(slice(out, n * Q, Q, E), want), 2e-5) << n;
    }
    // The key position table fixes the token count.
    std::vector<float> x2(N * (T + 1) * Dv);
    std::vector<float> out2(N * Q * E);
    EXPECT_THROW(mmca::vision::attention_pool_forward(tensor_ref<const float, 3>(x2.data(), {N, T + 1, Dv}), cfg, w,
                                                      tensor_ref<float, 3>(out2.data(), {N, Q, E}), scratch),
                 mmca::invalid_argument);
}

TEST(VisionNn, SinCosTableFollowsFormula) {
    const std::int64_t grid = 3, dim = 8;
    const auto t = mmca::vision::sincos_2d(grid, dim);
    ASSERT_EQ(t.size(), std::size_t(grid * grid * dim));
    // Row p = r·3 + c = 5 → r = 1, c = 2; ω = (1, 10000^(-1/2) = 0.01).
    const float* row = t.data() + 5 * dim;
    const double want[8] = {std::sin(2.0), std::sin(0.02), std::cos(2.0), std::cos(0.02),
                            std::sin(1.0), std::sin(0.01), std::cos(1.0), std::cos(0.01)};
    for (int i = 0; i < 8; ++i) EXPECT_NEAR(row[i], want[i], 1e-7) << i;
    EXPECT_THROW(mmca::vision::sincos_2d(3, 6), mmca::invalid_argument);
}

TEST(VisionNn, BicubicTableResizeHandCases) {
    // Same size: the identity. Constant tables stay constant (the weights sum to 1).
    const auto t = randn(4 * 4 * 3, 9);
    const auto same = mmca::vision::bicubic_resize_table(t.data(), 4, 3, 4);
    for (std::size_t i = 0; i < t.size(); ++i) EXPECT_FLOAT_EQ(same[i], t[i]);
    const std::vector<float> c(2 * 2 * 2, 0.75f);
    for (float v : mmca::vision::bicubic_resize_table(c.data(), 2, 2, 5)) EXPECT_NEAR(v, 0.75f, 1e-7);
    // 1D check along a row of a 2×2 grid doubled to 4×4: output column 0 samples x = -0.25, whose
    // taps are clamped to column 0 twice and column 1 twice: w(1.75) + w(0.75) on column 0.
    const std::vector<float> g = {0.0f, 1.0f, 0.0f, 1.0f};  // (r, c) = c
    const auto up = mmca::vision::bicubic_resize_table(g.data(), 2, 1, 4);
    const double a = -0.75;
    auto far = [&](double x) { return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a; };
    auto near = [&](double x) { return ((a + 2) * x - (a + 3)) * x * x + 1; };
    // src = -0.25 → floor -1, t = 0.75: taps -2,-1,0,1 → clamped 0,0,0,1.
    const double w1 = far(0.75 + 1.0) + near(0.75) + near(0.25);
    EXPECT_NEAR(up[0], 1.0 - w1, 1e-6);
    EXPECT_NEAR(up[4], up[0], 1e-6);  // every row the same
}

}  // namespace
