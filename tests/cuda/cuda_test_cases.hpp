// tests/cuda/cuda_test_cases.hpp - shapes, random problems and error measures shared by the CUDA
// tests (and the emulated kernels of tests/cuda_emulation): the case table, the plain
// low-precision oracles of the forward and the backward (the "same precision" baselines of the
// float16 / bfloat16 checks), the rows that must be exactly zero and the comparison of statistics.
#pragma once

#include "attention_test_util.hpp"
#include "cuda_test_support.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

namespace mmca_cuda_test {

using mmca_test::owned_tokens;
using mmca_test::pattern_kind;
using mmca_test::variant_spec;

struct gpu_case {
    std::string name;
    std::size_t B, Hq, Hkv, D, Lq, Lk;
    std::vector<int> kv_lens;             // empty: absent (all Lk)
    std::vector<int> q_lens;              // empty: absent (all Lq)
    std::vector<pattern_kind> patterns;   // one per sequence (cycled)
    bool explicit_ids = true;
    float scale = 0.0f;                   // 0: 1/sqrt(D)
    float qk_range = 1.0f;                // q and k uniform in [-qk_range, qk_range)
    std::uint64_t seed = 1;
};

inline std::ostream& operator<<(std::ostream& os, const gpu_case& c) { return os << c.name; }

struct gpu_problem {
    tensor4 q, k, v;
    owned_tokens tokens;
};

inline gpu_problem make_gpu_problem(const gpu_case& c) {
    std::vector<mmca_test::token_sequence> seqs;
    for (std::size_t b = 0; b < c.B; ++b) {
        const int len = c.kv_lens.empty() ? static_cast<int>(c.Lk) : c.kv_lens[b];
        seqs.push_back(mmca_test::make_pattern(c.patterns[b % c.patterns.size()], len, c.seed * 131 + b));
    }
    owned_tokens tokens(seqs, c.Lk, c.explicit_ids);
    tokens.set_kv_lens(c.kv_lens);
    tokens.set_q_lens(c.q_lens);
    return {mmca_test::random_tensor({c.B, c.Hq, c.Lq, c.D}, c.seed * 7 + 1, -c.qk_range, c.qk_range),
            mmca_test::random_tensor({c.B, c.Hkv, c.Lk, c.D}, c.seed * 7 + 2, -c.qk_range, c.qk_range),
            mmca_test::random_tensor({c.B, c.Hkv, c.Lk, c.D}, c.seed * 7 + 3, -1.0f, 1.0f), std::move(tokens)};
}

/// The case table: every structural corner of the two kernels (tiles of 64 rows, key blocks of 64
/// (16-bit) or 32 (float) keys, padded head dims, GQA, per-sequence lengths, suffix queries).
inline std::vector<gpu_case> gpu_cases() {
    using pk = pattern_kind;
    return {
        {"L1_text", 1, 2, 1, 64, 1, 1, {}, {}, {pk::text_only}, true, 0.0f, 1.0f, 11},
        {"L37_D80_gqa21_interleaved", 1, 4, 2, 80, 37, 37, {}, {}, {pk::interleaved}, true, 0.0f, 1.0f, 12},
        {"L130_D104_leading_image", 1, 2, 2, 104, 130, 130, {}, {}, {pk::leading_image}, true, 0.0f, 1.0f, 13},
        {"L200_D128_gqa41_lengths", 2, 8, 2, 128, 200, 200, {200, 131}, {200, 131},
         {pk::consecutive_images, pk::text_only}, true, 0.0f, 1.0f, 14},
        {"L257_D64_padding", 2, 4, 4, 64, 257, 257, {257, 190}, {257, 190}, {pk::trailing_pad, pk::interior_pad},
         true, 0.0f, 1.0f, 15},
        {"Lk300_Lq45_suffix_queries", 2, 4, 2, 64, 45, 300, {300, 160}, {45, 7}, {pk::interleaved, pk::leading_image},
         true, 0.0f, 1.0f, 16},
        {"L96_images_only", 1, 2, 1, 64, 96, 96, {}, {}, {pk::images_only}, true, 0.0f, 1.0f, 17},
        {"L150_D128_run_ids_consecutive", 1, 4, 1, 128, 150, 150, {}, {}, {pk::consecutive_images}, false, 0.0f, 1.0f,
         18},
        {"L90_D72_sharp_scores", 1, 2, 1, 72, 90, 90, {}, {}, {pk::interleaved}, true, 1.0f, 2.0f, 19},
        {"L70_D36_rows_for_16bit", 1, 2, 2, 36, 70, 70, {}, {}, {pk::leading_image}, true, 0.0f, 1.0f, 20},
        {"L40_D256_rows_only", 1, 2, 1, 256, 40, 40, {}, {}, {pk::interleaved}, true, 0.0f, 1.0f, 21},
        {"B3_mixed_and_empty", 3, 2, 1, 64, 33, 33, {33, 0, 5}, {33, 0, 5},
         {pk::interleaved, pk::text_only, pk::images_only}, true, 0.0f, 1.0f, 22},
        {"decode_Lk700_gqa41", 2, 8, 2, 128, 1, 700, {700, 515}, {1, 1}, {pk::interleaved, pk::trailing_pad}, true,
         0.0f, 1.0f, 23},
    };
}

enum class dtype_kind { f32, f16, bf16 };

inline const char* dtype_name(dtype_kind d) {
    switch (d) {
        case dtype_kind::f32: return "f32";
        case dtype_kind::f16: return "f16";
        case dtype_kind::bf16: return "bf16";
    }
    return "unknown";
}

/// Rounds every element to the storage type S and back (the values the GPU actually sees).
template <class S>
tensor4 rounded(const tensor4& t) {
    if constexpr (std::is_same_v<S, float>) {
        return t;
    } else {
        return mmca_test::to_float32(mmca_test::to_storage<S>(t));
    }
}

template <class S>
float round_to(float x) {
    return static_cast<float>(static_cast<S>(x));
}

/// Calls row(b, i, j, groups, self_term) for every query row i (key position j) of every sequence
/// b, with the row's SPEC key groups (attention_test_util.hpp) under `variant`.
template <class Row>
void for_each_spec_row(const owned_tokens& tokens, const variant_spec& variant, std::size_t B, std::size_t Lk,
                       std::size_t Lq, const Row& row) {
    for (std::size_t b = 0; b < B; ++b) {
        const mmca_test::sequence_keys seq = mmca_test::keys_of_sequence(tokens, b, Lk, Lq);
        const std::size_t kvl = seq.kv_len, ql = seq.q_len;
        for (std::size_t i = 0; i < ql; ++i) {
            const std::size_t j = kvl - ql + i;
            bool self_term = false;
            const auto groups = mmca_test::spec_row_groups(variant, seq.types.data(), seq.ids.data(), kvl, j, self_term);
            row(b, i, j, groups, self_term);
        }
    }
}

/// A plain attention at the precision of S: scores in float32 rounded to S, softmax in float32,
/// weights rounded to S, products accumulated in float32, output rounded to S. Same row groups as
/// the SPEC oracle of attention_test_util.hpp.
template <class S>
tensor4 plain_low_precision(const tensor4& q, const tensor4& k, const tensor4& v, const owned_tokens& tokens,
                            const variant_spec& variant, double scale_in) {
    const std::size_t B = q.shape()[0], Hq = q.shape()[1], Lq = q.shape()[2], D = q.shape()[3];
    const std::size_t Hkv = k.shape()[1], Lk = k.shape()[2];
    const float scale = scale_in == 0.0 ? 1.0f / std::sqrt(static_cast<float>(D)) : static_cast<float>(scale_in);
    tensor4 out(q.shape());
    out.fill(0.0f);
    for_each_spec_row(tokens, variant, B, Lk, Lq, [&](std::size_t b, std::size_t i, std::size_t j, const auto& groups,
                                                      bool self_term) {
        for (std::size_t h = 0; h < Hq; ++h) {
            const std::size_t hk = h / (Hq / Hkv);
            std::vector<float> o(D, 0.0f);
            for (const auto& g : groups) {
                std::vector<float> w(g.keys.size(), 0.0f);
                if (!g.uniform) {
                    float mx = -std::numeric_limits<float>::infinity();
                    for (std::size_t n = 0; n < g.keys.size(); ++n) {
                        float s = 0.0f;
                        for (std::size_t d = 0; d < D; ++d) s += q(b, h, i, d) * k(b, hk, g.keys[n], d);
                        w[n] = round_to<S>(s * scale);
                        mx = std::max(mx, w[n]);
                    }
                    for (auto& x : w) x = std::exp(x - mx);
                } else {
                    std::fill(w.begin(), w.end(), 1.0f);
                }
                float total = 0.0f;
                for (float x : w) total += x;
                for (std::size_t n = 0; n < g.keys.size(); ++n) {
                    const float p = round_to<S>(w[n] / total);
                    for (std::size_t d = 0; d < D; ++d) o[d] += p * v(b, hk, g.keys[n], d);
                }
            }
            if (self_term)
                for (std::size_t d = 0; d < D; ++d) o[d] += v(b, hk, j, d);
            for (std::size_t d = 0; d < D; ++d) out(b, h, i, d) = round_to<S>(o[d]);
        }
    });
    return out;
}

/// max |a - b| (NaN or infinity anywhere: +infinity).
inline double max_abs_diff(const tensor4& a, const tensor4& b) {
    double worst = 0.0;
    for (std::size_t n = 0; n < a.size(); ++n) {
        const double x = a.data()[n], y = b.data()[n];
        if (!std::isfinite(x) || !std::isfinite(y)) return std::numeric_limits<double>::infinity();
        worst = std::max(worst, std::abs(x - y));
    }
    return worst;
}

inline double max_abs(const tensor4& a) {
    double m = 0.0;
    for (std::size_t n = 0; n < a.size(); ++n) m = std::max(m, static_cast<double>(std::abs(a.data()[n])));
    return m;
}

/// Unit roundoff of the storage type (2^-24, 2^-11, 2^-8).
inline double unit_roundoff(dtype_kind d) {
    switch (d) {
        case dtype_kind::f32: return std::ldexp(1.0, -24);
        case dtype_kind::f16: return std::ldexp(1.0, -11);
        case dtype_kind::bf16: return std::ldexp(1.0, -8);
    }
    return 0.0;
}

/// Out-of-length query rows and pad rows must be exactly zero.
inline ::testing::AssertionResult zero_rows_are_zero(const tensor4& out, const owned_tokens& tokens) {
    const std::size_t B = out.shape()[0], H = out.shape()[1], Lq = out.shape()[2], D = out.shape()[3];
    const std::size_t Lk = tokens.types.shape()[1];
    for (std::size_t b = 0; b < B; ++b) {
        const std::size_t kvl = tokens.with_kv_lens ? static_cast<std::size_t>(tokens.kv_lens(b)) : Lk;
        const std::size_t ql = tokens.with_q_lens ? static_cast<std::size_t>(tokens.q_lens(b)) : Lq;
        for (std::size_t i = 0; i < Lq; ++i) {
            const bool zero = i >= ql || tokens.types(b, kvl - ql + i) == mmca_test::P;
            if (!zero) continue;
            for (std::size_t h = 0; h < H; ++h)
                for (std::size_t d = 0; d < D; ++d)
                    if (out(b, h, i, d) != 0.0f)
                        return ::testing::AssertionFailure() << "row " << i << " of sequence " << b << " head " << h
                                                             << " should be 0, element " << d << " is "
                                                             << out(b, h, i, d);
        }
    }
    return ::testing::AssertionSuccess();
}

struct grads {
    tensor4 dq, dk, dv;
};

/// A plain backward at the precision of S over the SPEC row groups of attention_test_util.hpp: P and
/// dS rounded to S before their products, float32 accumulation, gradients rounded to S.
template <class S>
grads plain_backward(const tensor4& q, const tensor4& k, const tensor4& v, const tensor4& dout,
                     const owned_tokens& tokens, const variant_spec& variant, double scale_in) {
    const std::size_t B = q.shape()[0], Hq = q.shape()[1], Lq = q.shape()[2], D = q.shape()[3];
    const std::size_t Hkv = k.shape()[1], Lk = k.shape()[2];
    const float scale = scale_in == 0.0 ? 1.0f / std::sqrt(static_cast<float>(D)) : static_cast<float>(scale_in);
    grads g{tensor4(q.shape()), tensor4(k.shape()), tensor4(k.shape())};
    g.dq.fill(0.0f);
    g.dk.fill(0.0f);
    g.dv.fill(0.0f);
    for_each_spec_row(tokens, variant, B, Lk, Lq, [&](std::size_t b, std::size_t i, std::size_t j, const auto& groups,
                                                      bool self_term) {
        for (std::size_t h = 0; h < Hq; ++h) {
            const std::size_t hk = h / (Hq / Hkv);
            for (const auto& grp : groups) {
                const std::size_t n_keys = grp.keys.size();
                std::vector<float> p(n_keys, 1.0f / static_cast<float>(n_keys));
                if (!grp.uniform) {
                    float mx = -std::numeric_limits<float>::infinity();
                    for (std::size_t n = 0; n < n_keys; ++n) {
                        float s = 0.0f;
                        for (std::size_t d = 0; d < D; ++d) s += q(b, h, i, d) * k(b, hk, grp.keys[n], d);
                        p[n] = s * scale;
                        mx = std::max(mx, p[n]);
                    }
                    float total = 0.0f;
                    for (auto& x : p) total += (x = std::exp(x - mx));
                    for (auto& x : p) x /= total;
                }
                std::vector<float> o(D, 0.0f);
                for (std::size_t n = 0; n < n_keys; ++n)
                    for (std::size_t d = 0; d < D; ++d) o[d] += round_to<S>(p[n]) * v(b, hk, grp.keys[n], d);
                float delta = 0.0f;
                for (std::size_t d = 0; d < D; ++d) delta += dout(b, h, i, d) * o[d];
                for (std::size_t n = 0; n < n_keys; ++n) {
                    const std::size_t key = grp.keys[n];
                    const float pr = round_to<S>(p[n]);
                    float dp = 0.0f;
                    for (std::size_t d = 0; d < D; ++d) {
                        dp += dout(b, h, i, d) * v(b, hk, key, d);
                        g.dv(b, hk, key, d) += pr * dout(b, h, i, d);
                    }
                    if (grp.uniform) continue;
                    const float ds = round_to<S>(p[n] * (dp - delta)) * scale;
                    for (std::size_t d = 0; d < D; ++d) {
                        g.dq(b, h, i, d) += ds * k(b, hk, key, d);
                        g.dk(b, hk, key, d) += ds * q(b, h, i, d);
                    }
                }
            }
            if (self_term)
                for (std::size_t d = 0; d < D; ++d) g.dv(b, hk, j, d) += dout(b, h, i, d);
        }
    });
    for (tensor4* t : {&g.dq, &g.dk, &g.dv})
        for (std::size_t n = 0; n < t->size(); ++n) t->data()[n] = round_to<S>(t->data()[n]);
    return g;
}

/// The statistics of two forwards agree: same empty groups (-inf max, 0 sum), finite values within
/// tol relative to the largest magnitude of the array.
inline ::testing::AssertionResult stats_close(const tensor4& gpu, const tensor4& cpu, double tol) {
    double worst = 0.0, scale = 0.0;
    for (std::size_t n = 0; n < cpu.size(); ++n)
        if (std::isfinite(cpu.data()[n])) scale = std::max(scale, static_cast<double>(std::abs(cpu.data()[n])));
    for (std::size_t n = 0; n < cpu.size(); ++n) {
        const float a = gpu.data()[n], b = cpu.data()[n];
        if (std::isinf(b)) {
            if (!(a == b)) return ::testing::AssertionFailure() << "element " << n << ": " << a << ", expected " << b;
            continue;
        }
        if (!std::isfinite(a)) return ::testing::AssertionFailure() << "element " << n << ": " << a << ", expected " << b;
        worst = std::max(worst, static_cast<double>(std::abs(a - b)));
    }
    if (worst <= tol * std::max(scale, 1e-30)) return ::testing::AssertionSuccess();
    return ::testing::AssertionFailure() << "max diff " << worst << " > " << tol << " * " << scale;
}

inline tensor4 flat(const mmca::tensor<float, 5>& t) {
    tensor4 r(std::array<std::size_t, 4>{t.shape()[0], t.shape()[1], t.shape()[2], t.shape()[3] * t.shape()[4]});
    std::copy(t.data(), t.data() + t.size(), r.data());
    return r;
}

}  // namespace mmca_cuda_test
