// Backward passes of the trainable path (nn/grad/*, vision/projector_backward.hpp).
//
// Oracle: central finite differences of double-precision forwards written here from the formulas
// (independent of the library's float code). For a scalar s = Σ dy ⊙ f(θ) with random dy, the
// difference quotient (s(θ + h) - s(θ - h)) / 2h with h = 1e-5 in double has truncation error
// ~h²·|f'''| ≈ 1e-10 and rounding error ~1e-16/h ≈ 1e-11, far below what is checked: the float32
// gradients must agree within 2e-4 of max |reference gradient| (float32 sums of a few hundred terms
// carry ~1e-6 relative error; a wrong term or a missing factor shows as O(1)).
// The projectors, whose double forward would be a second copy of the model, are checked with
// directional derivatives of the library's float32 forward (h = 1e-2, tolerance 1e-2: float
// rounding of s is ~1e-7·|s| / h ≈ 1e-5, truncation ~h² ≈ 1e-4); PyTorch autograd checks them
// tightly in tests/python/test_nn_backward_torch.py.
#include "mmca/nn/grad/activation_backward.hpp"
#include "mmca/nn/grad/dense_attention_backward.hpp"
#include "mmca/nn/grad/embedding_backward.hpp"
#include "mmca/nn/grad/linear_backward.hpp"
#include "mmca/nn/grad/loss.hpp"
#include "mmca/nn/grad/mlp_backward.hpp"
#include "mmca/nn/grad/norm_backward.hpp"
#include "mmca/nn/grad/rope_backward.hpp"
#include "mmca/vision/projector_backward.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <random>
#include <vector>

namespace {

using vecf = std::vector<float>;
using vecd = std::vector<double>;
template <std::size_t N>
using fref = mmca::tensor_ref<float, N>;
template <std::size_t N>
using cref = mmca::tensor_ref<const float, N>;

vecf randn(std::size_t n, unsigned seed, float scale = 1.0f) {
    std::mt19937 gen(seed);
    std::normal_distribution<float> d(0.0f, scale);
    vecf v(n);
    for (auto& x : v) x = d(gen);
    return v;
}
vecd widen(const vecf& v) { return vecd(v.begin(), v.end()); }

/// Central differences of loss() with respect to every element of p (h = 1e-5, double).
vecd numgrad(const std::function<double()>& loss, vecd& p, double h = 1e-5) {
    vecd g(p.size());
    for (std::size_t i = 0; i < p.size(); ++i) {
        const double keep = p[i];
        p[i] = keep + h;
        const double a = loss();
        p[i] = keep - h;
        const double b = loss();
        p[i] = keep;
        g[i] = (a - b) / (2 * h);
    }
    return g;
}

/// max |a - b| / max |b|.
double rel_err(const vecf& a, const vecd& b) {
    EXPECT_EQ(a.size(), b.size());
    double num = 0, den = 0;
    for (std::size_t i = 0; i < a.size(); ++i) {
        num = std::max(num, std::abs(a[i] - b[i]));
        den = std::max(den, std::abs(b[i]));
    }
    return den > 0 ? num / den : num;
}
double dot(const vecd& a, const vecd& b) {
    double s = 0;
    for (std::size_t i = 0; i < a.size(); ++i) s += a[i] * b[i];
    return s;
}

constexpr double tol = 2e-4;

// ---- double forwards ----
vecd linear_d(const vecd& x, const vecd& w, const vecd* b, int N, int in, int out) {
    vecd y(static_cast<std::size_t>(N * out));
    for (int n = 0; n < N; ++n)
        for (int o = 0; o < out; ++o) {
            double s = b ? (*b)[o] : 0.0;
            for (int i = 0; i < in; ++i) s += x[n * in + i] * w[o * in + i];
            y[n * out + o] = s;
        }
    return y;
}

template <class T>
void linear_case(int N, int in, int out, unsigned seed) {
    vecf x = randn(N * in, seed), wf = randn(out * in, seed + 1, 0.2f), b = randn(out, seed + 2), dy = randn(N * out, seed + 3);
    std::vector<T> w(wf.size());
    for (std::size_t i = 0; i < w.size(); ++i) w[i] = T(wf[i]);
    vecd wd(w.size());
    for (std::size_t i = 0; i < w.size(); ++i) wd[i] = static_cast<float>(w[i]);
    const auto W = mmca::nn::make_matrix(w.data(), out, in);
    vecf dx(N * in), dw(out * in, 0.0f), db(out, 0.0f);
    mmca::nn::linear_backward(cref<2>(x.data(), {N, in}), W, cref<2>(dy.data(), {N, out}), fref<2>(dx.data(), {N, in}),
                              dw.data(), db.data(), 1);
    vecd xd = widen(x), bd = widen(b), dyd = widen(dy);
    if (N * in * out <= 20000) {
        auto loss = [&] { return dot(linear_d(xd, wd, &bd, N, in, out), dyd); };
        EXPECT_LT(rel_err(dx, numgrad(loss, xd)), tol);
        EXPECT_LT(rel_err(dw, numgrad(loss, wd)), tol);
        EXPECT_LT(rel_err(db, numgrad(loss, bd)), tol);
    } else {
        // s is linear in each of x, W, b, so its difference quotients are exactly these sums
        // (the small cases check the same against central differences); the sums themselves are
        // cheap where the differences would take minutes.
        vecd gx(N * in, 0.0), gw(out * in, 0.0), gb(out, 0.0);
        for (int n = 0; n < N; ++n)
            for (int o = 0; o < out; ++o) {
                const double g = dyd[n * out + o];
                gb[o] += g;
                for (int i = 0; i < in; ++i) {
                    gx[n * in + i] += g * wd[o * in + i];
                    gw[o * in + i] += g * xd[n * in + i];
                }
            }
        EXPECT_LT(rel_err(dx, gx), tol);
        EXPECT_LT(rel_err(dw, gw), tol);
        EXPECT_LT(rel_err(db, gb), tol);
    }

    // Accumulation: a second call adds the same gradients again; dx accumulates when asked.
    vecf dw2 = dw, db2 = db, dx2 = dx;
    mmca::nn::linear_backward(cref<2>(x.data(), {N, in}), W, cref<2>(dy.data(), {N, out}), fref<2>(dx2.data(), {N, in}),
                              dw2.data(), db2.data(), 1, true);
    for (std::size_t i = 0; i < dw.size(); ++i) EXPECT_NEAR(dw2[i], 2 * dw[i], 1e-5 * (1 + std::abs(dw[i])));
    for (std::size_t i = 0; i < db.size(); ++i) EXPECT_NEAR(db2[i], 2 * db[i], 1e-5 * (1 + std::abs(db[i])));
    for (std::size_t i = 0; i < dx.size(); ++i) EXPECT_NEAR(dx2[i], 2 * dx[i], 1e-5 * (1 + std::abs(dx[i])));

    // Frozen weight: no destinations, same dx.
    vecf dx3(N * in, 7.0f);
    mmca::nn::linear_backward(cref<2>(), W, cref<2>(dy.data(), {N, out}), fref<2>(dx3.data(), {N, in}), nullptr,
                              nullptr, 1);
    EXPECT_EQ(dx3, dx);
}

}  // namespace

TEST(LinearBackward, Float32MatchesFiniteDifferences) {
    linear_case<float>(5, 37, 19, 1);
    linear_case<float>(11, 131, 130, 2);  // two panels in both directions
}

TEST(LinearBackward, HalfStorageMatchesFiniteDifferences) {
    linear_case<mmca::bfloat16>(3, 45, 21, 3);
    linear_case<mmca::bfloat16>(9, 260, 129, 4);
    linear_case<mmca::float16>(4, 29, 17, 5);
}

TEST(LinearBackward, ThreadCountDoesNotChangeBits) {
    const int N = 70, in = 300, out = 270;
    vecf x = randn(N * in, 9), wf = randn(out * in, 10, 0.1f), dy = randn(N * out, 11);
    std::vector<mmca::bfloat16> wb(wf.begin(), wf.end());
    for (int storage = 0; storage < 2; ++storage) {
        const auto W = storage == 0 ? mmca::nn::make_matrix(wf.data(), out, in) : mmca::nn::make_matrix(wb.data(), out, in);
        vecf res[2][3];
        for (int t = 0; t < 2; ++t) {
            res[t][0].assign(N * in, 0.0f);
            res[t][1].assign(out * in, 0.0f);
            res[t][2].assign(out, 0.0f);
            mmca::nn::linear_backward(cref<2>(x.data(), {N, in}), W, cref<2>(dy.data(), {N, out}),
                                      fref<2>(res[t][0].data(), {N, in}), res[t][1].data(), res[t][2].data(), t + 1);
        }
        for (int k = 0; k < 3; ++k) EXPECT_EQ(res[0][k], res[1][k]);
    }
}

TEST(LinearBackward, RejectsBadShapes) {
    vecf w(6), dy(4), dx(6);
    const auto W = mmca::nn::make_matrix(w.data(), 2, 3);
    EXPECT_THROW(mmca::nn::linear_backward(cref<2>(), W, cref<2>(dy.data(), {1, 4}), fref<2>(dx.data(), {1, 3}),
                                           nullptr, nullptr),
                 mmca::invalid_argument);
    EXPECT_THROW(mmca::nn::linear_backward(cref<2>(), W, cref<2>(dy.data(), {2, 2}), fref<2>(dx.data(), {2, 3}),
                                           dx.data(), nullptr),  // weight gradient without x
                 mmca::invalid_argument);
}

namespace {
double ce_d(const vecd& logits, const std::vector<std::int32_t>& labels, int L, int V, double den) {
    double s = 0;
    for (int t = 0; t + 1 < L; ++t) {
        if (labels[t + 1] == -100) continue;
        double mx = -1e300, sum = 0;
        for (int v = 0; v < V; ++v) mx = std::max(mx, logits[t * V + v]);
        for (int v = 0; v < V; ++v) sum += std::exp(logits[t * V + v] - mx);
        s += mx + std::log(sum) - logits[t * V + labels[t + 1]];
    }
    return den > 0 ? s / den : 0.0;
}
}  // namespace

TEST(CrossEntropy, LossAndGradientMatchFiniteDifferences) {
    const int L = 7, V = 23;
    vecf logits = randn(L * V, 20, 3.0f);
    std::vector<std::int32_t> labels = {5, -100, 3, 22, -100, 0, 7};  // supervised rows 1, 2, 4, 5
    vecf d(L * V);
    const auto r = mmca::nn::cross_entropy_forward_backward(cref<2>(logits.data(), {L, V}), labels.data(),
                                                            fref<2>(d.data(), {L, V}), 0.0, 1);
    EXPECT_EQ(r.count, 4);
    vecd ld = widen(logits);
    EXPECT_NEAR(r.loss, ce_d(ld, labels, L, V, 4), 1e-6);
    EXPECT_LT(rel_err(d, numgrad([&] { return ce_d(ld, labels, L, V, 4); }, ld)), tol);
    for (int v = 0; v < V; ++v) EXPECT_EQ(d[6 * V + v], 0.0f);  // the last row predicts nothing

    // A batch-wide normalizer, and the gradient written over the logits themselves.
    vecf inplace = logits;
    const auto r2 = mmca::nn::cross_entropy_forward_backward(cref<2>(inplace.data(), {L, V}), labels.data(),
                                                             fref<2>(inplace.data(), {L, V}), 10.0, 1);
    EXPECT_NEAR(r2.loss, ce_d(ld, labels, L, V, 10), 1e-6);
    for (int i = 0; i < L * V; ++i) EXPECT_NEAR(inplace[i], d[i] * 0.4f, 1e-7);
}

TEST(CrossEntropy, NothingSupervisedGivesZeroNotNaN) {
    const int L = 3, V = 5;
    vecf logits = randn(L * V, 21), d(L * V, 1.0f);
    std::vector<std::int32_t> labels = {1, -100, -100};
    const auto r = mmca::nn::cross_entropy_forward_backward(cref<2>(logits.data(), {L, V}), labels.data(),
                                                            fref<2>(d.data(), {L, V}));
    EXPECT_EQ(r.loss, 0.0);
    EXPECT_EQ(r.count, 0);
    for (float x : d) EXPECT_EQ(x, 0.0f);
    labels[2] = 5;  // out of range
    EXPECT_THROW(mmca::nn::cross_entropy_forward_backward(cref<2>(logits.data(), {L, V}), labels.data(),
                                                          fref<2>(d.data(), {L, V})),
                 mmca::invalid_argument);
}

TEST(NormBackward, RmsNormMatchesFiniteDifferences) {
    const int N = 5, H = 33;
    const float eps = 1e-5f;
    vecf x = randn(N * H, 30), w = randn(H, 31), dy = randn(N * H, 32);
    for (auto& v : w) v += 1.0f;
    vecf dx(N * H), dw(H, 0.0f);
    mmca::nn::rmsnorm_backward(cref<2>(x.data(), {N, H}), w.data(), eps, cref<2>(dy.data(), {N, H}),
                               fref<2>(dx.data(), {N, H}), dw.data(), 1);
    vecd xd = widen(x), wd = widen(w), dyd = widen(dy);
    auto loss = [&] {
        double s = 0;
        for (int n = 0; n < N; ++n) {
            double ms = 0;
            for (int i = 0; i < H; ++i) ms += xd[n * H + i] * xd[n * H + i];
            const double r = 1 / std::sqrt(ms / H + eps);
            for (int i = 0; i < H; ++i) s += dyd[n * H + i] * wd[i] * xd[n * H + i] * r;
        }
        return s;
    };
    EXPECT_LT(rel_err(dx, numgrad(loss, xd)), tol);
    EXPECT_LT(rel_err(dw, numgrad(loss, wd)), tol);
}

namespace {
double layernorm_loss(const vecd& x, const vecd& w, const vecd& b, const vecd& dy, int N, int D, double eps) {
    double s = 0;
    for (int n = 0; n < N; ++n) {
        double m = 0, v = 0;
        for (int i = 0; i < D; ++i) m += x[n * D + i];
        m /= D;
        for (int i = 0; i < D; ++i) v += (x[n * D + i] - m) * (x[n * D + i] - m);
        const double r = 1 / std::sqrt(v / D + eps);
        for (int i = 0; i < D; ++i) s += dy[n * D + i] * (w[i] * (x[n * D + i] - m) * r + b[i]);
    }
    return s;
}
}  // namespace

TEST(NormBackward, LayerNormMatchesFiniteDifferencesAndAccumulates) {
    const int N = 6, D = 27;
    const float eps = 1e-6f;
    vecf x = randn(N * D, 40, 2.0f), w = randn(D, 41), b = randn(D, 42), dy = randn(N * D, 43);
    vecf dx(N * D, 1.0f), dw(D, 0.0f), db(D, 0.0f);
    mmca::nn::layernorm_backward(cref<2>(x.data(), {N, D}), w.data(), eps, cref<2>(dy.data(), {N, D}),
                                 fref<2>(dx.data(), {N, D}), dw.data(), db.data(), 1, true);
    vecd xd = widen(x), wd = widen(w), bd = widen(b), dyd = widen(dy);
    auto loss = [&] { return layernorm_loss(xd, wd, bd, dyd, N, D, eps); };
    vecd gx = numgrad(loss, xd);
    for (auto& g : gx) g += 1.0;  // accumulate_dx added to the 1s already there
    EXPECT_LT(rel_err(dx, gx), tol);
    EXPECT_LT(rel_err(dw, numgrad(loss, wd)), tol);
    EXPECT_LT(rel_err(db, numgrad(loss, bd)), tol);
}

TEST(NormBackward, ThreadCountDoesNotChangeBits) {
    const int N = 200, D = 600;
    vecf x = randn(N * D, 50), w = randn(D, 51), dy = randn(N * D, 52);
    vecf r[2][4];
    for (int t = 0; t < 2; ++t) {
        r[t][0].assign(N * D, 0.0f), r[t][1].assign(D, 0.0f), r[t][2].assign(D, 0.0f), r[t][3].assign(N * D, 0.0f);
        mmca::nn::layernorm_backward(cref<2>(x.data(), {N, D}), w.data(), 1e-6f, cref<2>(dy.data(), {N, D}),
                                     fref<2>(r[t][0].data(), {N, D}), r[t][1].data(), r[t][2].data(), t + 1);
        mmca::nn::rmsnorm_backward(cref<2>(x.data(), {N, D}), w.data(), 1e-5f, cref<2>(dy.data(), {N, D}),
                                   fref<2>(r[t][3].data(), {N, D}), r[t][1].data(), t + 1);
    }
    for (int k = 0; k < 4; ++k) EXPECT_EQ(r[0][k], r[1][k]);
}

TEST(SwigluBackward, MatchesFiniteDifferences) {
    const int N = 4, H = 9, I = 13;
    vecf x = randn(N * H, 60), g = randn(I * H, 61, 0.4f), u = randn(I * H, 62, 0.4f), dn = randn(H * I, 63, 0.3f),
         dy = randn(N * H, 64);
    mmca::nn::swiglu_weights w{mmca::nn::make_matrix(g.data(), I, H), mmca::nn::make_matrix(u.data(), I, H),
                               mmca::nn::make_matrix(dn.data(), H, I)};
    vecf dx(N * H), dg(I * H, 0.0f), du(I * H, 0.0f), dd(H * I, 0.0f);
    mmca::nn::swiglu_backward_scratch s;
    mmca::nn::swiglu_backward(cref<2>(x.data(), {N, H}), w, cref<2>(dy.data(), {N, H}), fref<2>(dx.data(), {N, H}),
                              {dg.data(), du.data(), dd.data()}, s, 1);
    vecd xd = widen(x), gd = widen(g), ud = widen(u), dd_ = widen(dn), dyd = widen(dy);
    auto loss = [&] {
        vecd a = linear_d(xd, gd, nullptr, N, H, I), b = linear_d(xd, ud, nullptr, N, H, I);
        for (std::size_t i = 0; i < a.size(); ++i) a[i] = a[i] / (1 + std::exp(-a[i])) * b[i];
        return dot(linear_d(a, dd_, nullptr, N, I, H), dyd);
    };
    EXPECT_LT(rel_err(dx, numgrad(loss, xd)), tol);
    EXPECT_LT(rel_err(dg, numgrad(loss, gd)), tol);
    EXPECT_LT(rel_err(du, numgrad(loss, ud)), tol);
    EXPECT_LT(rel_err(dd, numgrad(loss, dd_)), tol);
    // Frozen MLP: input gradient only.
    vecf dx2(N * H);
    mmca::nn::swiglu_backward(cref<2>(x.data(), {N, H}), w, cref<2>(dy.data(), {N, H}), fref<2>(dx2.data(), {N, H}),
                              {}, s, 1);
    EXPECT_EQ(dx2, dx);
}

TEST(ActivationBackward, MatchesFiniteDifferences) {
    vecf x = randn(200, 70, 2.5f), dy = randn(200, 71);
    for (auto a : {mmca::nn::activation::gelu_erf, mmca::nn::activation::gelu_tanh, mmca::nn::activation::quick_gelu}) {
        vecf dx(200);
        mmca::nn::activation_backward(a, x.data(), dy.data(), dx.data(), 200, 1);
        vecd xd = widen(x), dyd = widen(dy);
        auto f = [a](double v) {
            switch (a) {
                case mmca::nn::activation::gelu_tanh:
                    return 0.5 * v * (1 + std::tanh(std::sqrt(2 / M_PI) * (v + 0.044715 * v * v * v)));
                case mmca::nn::activation::quick_gelu: return v / (1 + std::exp(-1.702 * v));
                default: return 0.5 * v * (1 + std::erf(v / std::sqrt(2.0)));
            }
        };
        auto loss = [&] {
            double s = 0;
            for (std::size_t i = 0; i < xd.size(); ++i) s += dyd[i] * f(xd[i]);
            return s;
        };
        EXPECT_LT(rel_err(dx, numgrad(loss, xd)), tol) << mmca::nn::to_string(a);
    }
    for (float v : {-3.0f, -0.5f, 0.0f, 0.7f, 4.0f}) {
        const double h = 1e-5, s = 1 / (1 + std::exp(-double(v)));
        const double num = ((v + h) / (1 + std::exp(-(v + h))) - (v - h) / (1 + std::exp(-(v - h)))) / (2 * h);
        EXPECT_NEAR(mmca::nn::silu_derivative(v), num, 1e-6) << s;
    }
}

TEST(RopeBackward, IsTheTransposeOfTheRotationForEveryScaling) {
    const int rows = 5, heads = 3, D = 8, stride = heads * D + 2;
    std::vector<std::int64_t> pos = {0, 3, 9, 17, 2};
    for (auto scaling : {mmca::nn::rope_scaling_type::none, mmca::nn::rope_scaling_type::linear,
                         mmca::nn::rope_scaling_type::dynamic}) {
        mmca::nn::rope_config cfg;
        cfg.head_dim = D;
        cfg.scaling = scaling;
        cfg.factor = 2.0;
        cfg.max_positions = 8;
        mmca::nn::rope_table t;
        mmca::nn::rope_build(cfg, pos.data(), rows, 20, t);
        vecf x = randn(rows * stride, 80), g = randn(rows * stride, 81);
        vecf rx = x, bg = g;
        mmca::nn::rope_apply(rx.data(), stride, heads, t);
        mmca::nn::rope_apply_backward(bg.data(), stride, heads, t);
        // Linear map R: <R x, g> = <x, Rᵀ g> (columns outside the heads are left alone by both).
        double a = 0, b = 0;
        for (int r = 0; r < rows; ++r)
            for (int i = 0; i < heads * D; ++i) {
                a += double(rx[r * stride + i]) * g[r * stride + i];
                b += double(x[r * stride + i]) * bg[r * stride + i];
            }
        EXPECT_NEAR(a, b, 1e-4 * (1 + std::abs(a)));
        // Rᵀ R = identity: the backward undoes the forward.
        mmca::nn::rope_apply_backward(rx.data(), stride, heads, t);
        for (std::size_t i = 0; i < x.size(); ++i) EXPECT_NEAR(rx[i], x[i], 1e-5);
        // And it is not the forward itself (the sign of the angle matters).
        vecf fg = g;
        mmca::nn::rope_apply(fg.data(), stride, heads, t);
        EXPECT_NE(fg, bg);
    }
}

TEST(EmbeddingBackward, ScatterAddsRepeatedIdsDeterministically) {
    const int V = 11, H = 600, n = 9;
    std::vector<std::int32_t> ids = {3, 0, 3, 10, 3, 7, 0, 5, 3};
    vecf dy = randn(n * H, 90);
    vecf t1(V * H, 0.5f), t2(V * H, 0.5f), ref(V * H, 0.5f);
    for (int i = 0; i < n; ++i)
        for (int c = 0; c < H; ++c) ref[ids[i] * H + c] += dy[i * H + c];
    mmca::nn::embedding_backward(ids.data(), n, cref<2>(dy.data(), {n, H}), fref<2>(t1.data(), {V, H}), 1);
    mmca::nn::embedding_backward(ids.data(), n, cref<2>(dy.data(), {n, H}), fref<2>(t2.data(), {V, H}), 2);
    EXPECT_EQ(t1, ref);
    EXPECT_EQ(t2, ref);
    ids[4] = 11;
    EXPECT_THROW(mmca::nn::embedding_backward(ids.data(), n, cref<2>(dy.data(), {n, H}), fref<2>(t1.data(), {V, H})),
                 mmca::invalid_argument);
}

TEST(DenseAttentionBackward, MatchesFiniteDifferencesInAnInterleavedLayout) {
    // q/k/v of 2 heads of 5 interleaved per head (QWen-VL layout) in one (rows, 30) buffer.
    const int heads = 2, D = 5, Lq = 7, stride = 3 * heads * D;
    vecf qkv = randn(Lq * stride, 100), dout = randn(Lq * heads * D, 101);
    const float scale = 0.4f;
    mmca::nn::head_matrix hq{qkv.data(), Lq, stride, 3 * D, 0}, hk{qkv.data(), Lq, stride, 3 * D, D},
        hv{qkv.data(), Lq, stride, 3 * D, 2 * D};
    vecf g(qkv.size(), 9.0f);
    mmca::nn::head_matrix_grad gq{g.data(), Lq, stride, 3 * D, 0}, gk{g.data(), Lq, stride, 3 * D, D},
        gv{g.data(), Lq, stride, 3 * D, 2 * D};
    mmca::nn::dense_attention_backward(hq, hk, hv, heads, D, scale, cref<2>(dout.data(), {Lq, heads * D}), gq, gk, gv, 1);
    vecd p = widen(qkv), dd = widen(dout);
    auto loss = [&] {
        double s = 0;
        for (int h = 0; h < heads; ++h)
            for (int i = 0; i < Lq; ++i) {
                vecd sc(Lq);
                double mx = -1e300, sum = 0;
                for (int j = 0; j < Lq; ++j) {
                    double t = 0;
                    for (int d = 0; d < D; ++d) t += p[i * stride + h * 3 * D + d] * p[j * stride + h * 3 * D + D + d];
                    sc[j] = t * scale;
                    mx = std::max(mx, sc[j]);
                }
                for (auto& v : sc) sum += (v = std::exp(v - mx));
                for (int d = 0; d < D; ++d) {
                    double o = 0;
                    for (int j = 0; j < Lq; ++j) o += sc[j] / sum * p[j * stride + h * 3 * D + 2 * D + d];
                    s += o * dd[i * heads * D + h * D + d];
                }
            }
        return s;
    };
    EXPECT_LT(rel_err(g, numgrad(loss, p)), tol);
}

TEST(DenseAttentionBackward, ThreadCountDoesNotChangeBits) {
    const int heads = 4, D = 16, Lq = 150, Lk = 140, W = heads * D;
    vecf q = randn(Lq * W, 110), k = randn(Lk * W, 111), v = randn(Lk * W, 112), dout = randn(Lq * W, 113);
    vecf r[2][3];
    for (int t = 0; t < 2; ++t) {
        r[t][0].assign(Lq * W, 0), r[t][1].assign(Lk * W, 0), r[t][2].assign(Lk * W, 0);
        mmca::nn::dense_attention_backward({q.data(), Lq, W, D, 0}, {k.data(), Lk, W, D, 0}, {v.data(), Lk, W, D, 0},
                                           heads, D, 0.25f, cref<2>(dout.data(), {Lq, W}), {r[t][0].data(), Lq, W, D, 0},
                                           {r[t][1].data(), Lk, W, D, 0}, {r[t][2].data(), Lk, W, D, 0}, t + 1);
    }
    for (int i = 0; i < 3; ++i) EXPECT_EQ(r[0][i], r[1][i]);
}

// ---- projectors ----
namespace {

struct owned_projector {
    std::vector<vecf> store;
    mmca::nn::matrix_ref mat(int rows, int cols, unsigned seed) {
        store.push_back(randn(rows * cols, seed, 1.0f / std::sqrt(float(cols))));
        return mmca::nn::make_matrix(store.back().data(), rows, cols);
    }
};
vecf vec_around(int n, unsigned seed, float base) {
    vecf v = randn(n, seed, 0.1f);
    for (auto& x : v) x += base;
    return v;
}

mmca::vision::projector make_test_projector(mmca::vision::projector_kind kind, owned_projector& o) {
    mmca::vision::projector_config c;
    c.kind = kind;
    c.vision_dim = 12;
    c.hidden = 16;
    mmca::vision::projector_weights w;
    const int Dv = 12, H = 16;
    if (kind == mmca::vision::projector_kind::perceiver) {
        c.input_tokens = 10, c.has_cls = true, c.queries = 4, c.heads = 2;
        auto& p = w.pool;
        p.query = randn(4 * H, 200, 0.5f);
        p.kv_proj = o.mat(H, Dv, 201);
        p.kv_proj_bias = vec_around(H, 202, 0), p.ln_q_w = vec_around(H, 203, 1), p.ln_q_b = vec_around(H, 204, 0);
        p.ln_kv_w = vec_around(H, 205, 1), p.ln_kv_b = vec_around(H, 206, 0);
        p.in_proj = o.mat(3 * H, H, 207), p.in_proj_bias = vec_around(3 * H, 208, 0);
        p.out_proj = o.mat(H, H, 209), p.out_proj_bias = vec_around(H, 210, 0);
        w.linear = o.mat(H, H, 211);
    } else {
        w.linear = o.mat(H, Dv, 212);
    }
    if (kind == mmca::vision::projector_kind::vit) {
        c.layer = {Dv, 3, 20, 1e-5f, mmca::nn::activation::quick_gelu};
        auto& L = w.layer;
        L.ln1_w = vec_around(Dv, 220, 1), L.ln1_b = vec_around(Dv, 221, 0);
        L.ln2_w = vec_around(Dv, 222, 1), L.ln2_b = vec_around(Dv, 223, 0);
        L.q = o.mat(Dv, Dv, 224), L.k = o.mat(Dv, Dv, 225), L.v = o.mat(Dv, Dv, 226);
        L.q_bias = vec_around(Dv, 227, 0), L.k_bias = vec_around(Dv, 228, 0), L.v_bias = vec_around(Dv, 229, 0);
        L.out = o.mat(Dv, Dv, 230), L.out_bias = vec_around(Dv, 231, 0);
        L.fc1 = o.mat(20, Dv, 232), L.fc1_bias = vec_around(20, 233, 0);
        L.fc2 = o.mat(Dv, 20, 234), L.fc2_bias = vec_around(Dv, 235, 0);
    }
    w.linear_bias = vec_around(H, 240, 0), w.norm_w = vec_around(H, 241, 1), w.norm_b = vec_around(H, 242, 0);
    return mmca::vision::projector(c, w);
}

/// s = Σ dy ⊙ project(x) with the library's float32 forward.
double project_dot(mmca::vision::projector& p, const vecf& x, int N, int T, const vecf& dy) {
    const int To = static_cast<int>(p.output_tokens(T)), H = static_cast<int>(p.config().hidden);
    vecf y(N * To * H);
    p.project(cref<3>(x.data(), {N, T, p.config().vision_dim}), fref<3>(y.data(), {N, To, H}), 1);
    double s = 0;
    for (std::size_t i = 0; i < y.size(); ++i) s += double(y[i]) * dy[i];
    return s;
}

/// Checks <grad, dir> against the central difference of s along dir, for a parameter stored in v.
void check_direction(mmca::vision::projector& p, float* v, const vecf& grad, unsigned seed,
                     const std::function<double()>& s, const char* name) {
    ASSERT_FALSE(grad.empty()) << name;
    const vecf dir = randn(grad.size(), seed);
    const float h = 1e-2f;
    vecf keep(v, v + grad.size());
    for (std::size_t i = 0; i < grad.size(); ++i) v[i] = keep[i] + h * dir[i];
    const double a = s();
    for (std::size_t i = 0; i < grad.size(); ++i) v[i] = keep[i] - h * dir[i];
    const double b = s();
    std::copy(keep.begin(), keep.end(), v);
    double an = 0, gn = 0;
    for (std::size_t i = 0; i < grad.size(); ++i) an += double(grad[i]) * dir[i], gn += double(grad[i]) * grad[i];
    const double num = (a - b) / (2 * h);
    // Tolerance: 2e-3 of the largest possible |<grad, dir>| scale, plus the float32 rounding of s.
    EXPECT_NEAR(an, num, 2e-3 * std::sqrt(gn * grad.size()) + 1e-6 * (std::abs(a) + std::abs(b)) / h) << name;
    (void)p;
}

void projector_case(mmca::vision::projector_kind kind) {
    owned_projector o;
    auto p = make_test_projector(kind, o);
    const int N = 2, T = kind == mmca::vision::projector_kind::perceiver ? 10 : 5, Dv = 12, H = 16;
    const int To = static_cast<int>(p.output_tokens(T));
    vecf x = randn(N * T * Dv, 250), dy = randn(N * To * H, 251);
    vecf y1(N * To * H), y2(N * To * H);
    p.project(cref<3>(x.data(), {N, T, Dv}), fref<3>(y1.data(), {N, To, H}), 1);
    mmca::vision::projector_tape tape;
    mmca::vision::projector_forward_tape(p, cref<3>(x.data(), {N, T, Dv}), fref<3>(y2.data(), {N, To, H}), tape, 1);
    EXPECT_EQ(y1, y2);  // the tape's forward is the inference forward, bit for bit
    auto g = mmca::vision::make_projector_grads(p);
    vecf dx(N * T * Dv);
    mmca::vision::projector_backward(p, tape, cref<3>(dy.data(), {N, To, H}), fref<3>(dx.data(), {N, T, Dv}), g, 1);
    auto s = [&] { return project_dot(p, x, N, T, dy); };
    check_direction(p, x.data(), dx, 300, s, "x");
    auto& w = const_cast<mmca::vision::projector_weights&>(p.weights());
    auto mat = [](const mmca::nn::matrix_ref& m) { return const_cast<float*>(m.as<float>()); };
    check_direction(p, mat(w.linear), g.linear, 301, s, "linear");
    check_direction(p, w.linear_bias.data(), g.linear_bias, 302, s, "linear_bias");
    check_direction(p, w.norm_w.data(), g.norm_w, 303, s, "norm_w");
    check_direction(p, w.norm_b.data(), g.norm_b, 304, s, "norm_b");
    if (kind == mmca::vision::projector_kind::vit) {
        auto& L = w.layer;
        auto& G = g.layer;
        check_direction(p, L.ln1_w.data(), G.ln1_w, 310, s, "ln1_w");
        check_direction(p, L.ln2_b.data(), G.ln2_b, 311, s, "ln2_b");
        check_direction(p, mat(L.q), G.q, 312, s, "q");
        check_direction(p, mat(L.k), G.k, 313, s, "k");
        check_direction(p, mat(L.v), G.v, 314, s, "v");
        check_direction(p, L.q_bias.data(), G.q_bias, 315, s, "q_bias");  // (the k bias cancels in the softmax: 0)
        check_direction(p, mat(L.out), G.out, 316, s, "out");
        check_direction(p, mat(L.fc1), G.fc1, 317, s, "fc1");
        check_direction(p, L.fc1_bias.data(), G.fc1_bias, 318, s, "fc1_bias");
        check_direction(p, mat(L.fc2), G.fc2, 319, s, "fc2");
    }
    if (kind == mmca::vision::projector_kind::perceiver) {
        auto& P = w.pool;
        auto& G = g.pool;
        for (int t = 0; t < Dv; ++t) EXPECT_EQ(dx[t], 0.0f);  // the dropped CLS row
        check_direction(p, P.query.data(), G.query, 320, s, "query");
        check_direction(p, mat(P.kv_proj), G.kv_proj, 321, s, "kv_proj");
        check_direction(p, P.kv_proj_bias.data(), G.kv_proj_bias, 322, s, "kv_proj_bias");
        check_direction(p, P.ln_q_w.data(), G.ln_q_w, 323, s, "ln_q_w");
        check_direction(p, P.ln_kv_b.data(), G.ln_kv_b, 324, s, "ln_kv_b");
        check_direction(p, mat(P.in_proj), G.in_proj, 325, s, "in_proj");
        check_direction(p, P.in_proj_bias.data(), G.in_proj_bias, 326, s, "in_proj_bias");
        check_direction(p, mat(P.out_proj), G.out_proj, 327, s, "out_proj");
    }
    // Frozen parameters (empty accumulators) are skipped; the input gradient is unchanged.
    mmca::vision::projector_grads frozen;
    vecf dx2(N * T * Dv);
    mmca::vision::projector_backward(p, tape, cref<3>(dy.data(), {N, To, H}), fref<3>(dx2.data(), {N, T, Dv}), frozen, 1);
    EXPECT_EQ(dx2, dx);
    EXPECT_TRUE(frozen.linear.empty() && frozen.layer.fc1.empty() && frozen.pool.query.empty());
}

}  // namespace

TEST(ProjectorBackward, Baseline) { projector_case(mmca::vision::projector_kind::baseline); }
TEST(ProjectorBackward, Vit) { projector_case(mmca::vision::projector_kind::vit); }
TEST(ProjectorBackward, Perceiver) { projector_case(mmca::vision::projector_kind::perceiver); }
