// tests/cpp/test_attention_backward.cpp - the fused CPU backward against the double-precision
// explicit-mask reference backward, and the reference backward against central finite differences.
//
// Shapes are chosen to hit the backward's structure: tiles of 128 / G rows (several per kv head, the
// last one partial), key blocks of 64 (partial last blocks), GQA groups of 2 and 1, head dims 32 / 64
// / 80 / 128 (80: padded to whole SIMD packets), odd lengths, right padding via kv_lens, sequences
// with text before the first image, several images, image-only and text-only sequences.
#include "attention_test_util.hpp"

#include "mmca/attention/attention_backward.hpp"

#include <gtest/gtest.h>

#include <cstdint>
#include <string>
#include <vector>

namespace mmca_test {
namespace {

using pk = pattern_kind;

struct backward_case {
    std::size_t B, Hq, Hkv, D, L;
    std::vector<int> kv_lens;            // empty: all L
    std::vector<pattern_kind> patterns;  // one per sequence
    std::uint64_t seed;
};

struct backward_data {
    tensor4 q, k, v, dout;
    owned_tokens tokens;
};

backward_data make_data(const backward_case& c) {
    std::vector<token_sequence> seqs;
    for (std::size_t b = 0; b < c.B; ++b) {
        const int len = c.kv_lens.empty() ? static_cast<int>(c.L) : c.kv_lens[b];
        seqs.push_back(make_pattern(c.patterns[b % c.patterns.size()], len, c.seed * 31 + b));
    }
    owned_tokens tokens(seqs, c.L, true);
    tokens.set_kv_lens(c.kv_lens);
    return {random_tensor({c.B, c.Hq, c.L, c.D}, c.seed * 7 + 1, -2.0f, 2.0f),
            random_tensor({c.B, c.Hkv, c.L, c.D}, c.seed * 7 + 2, -2.0f, 2.0f),
            random_tensor({c.B, c.Hkv, c.L, c.D}, c.seed * 7 + 3), random_tensor({c.B, c.Hq, c.L, c.D}, c.seed * 7 + 4),
            std::move(tokens)};
}

mmca::attention_gradients fused_gradients(const backward_data& x, const mmca::attention_options& options) {
    const mmca::token_layout tokens = x.tokens.layout();
    const mmca::attention_forward_result fwd = mmca::attention_with_stats(x.q, x.k, x.v, tokens, options);
    return mmca::attention_backward(x.q, x.k, x.v, x.dout, tokens, options, fwd.stats());
}

mmca::attention_gradients reference_gradients(const backward_data& x, const mmca::attention_options& options) {
    return mmca::attention_backward(x.q, x.k, x.v, x.dout, x.tokens.layout(), options, {},
                                    mmca::attention_impl::reference);
}

void expect_close(const backward_case& c, const variant_spec& v) {
    SCOPED_TRACE(v.name() + " D=" + std::to_string(c.D) + " Hq=" + std::to_string(c.Hq) +
                 " Hkv=" + std::to_string(c.Hkv) + " L=" + std::to_string(c.L));
    const backward_data x = make_data(c);
    const auto options = v.options(2);
    const auto fused = fused_gradients(x, options);
    const auto ref = reference_gradients(x, options);
    EXPECT_TRUE(all_close(fused.dq, ref.dq, 1e-4)) << "dq";
    EXPECT_TRUE(all_close(fused.dk, ref.dk, 1e-4)) << "dk";
    EXPECT_TRUE(all_close(fused.dv, ref.dv, 1e-4)) << "dv";
}

// ---------------------------------------------------------------------------------------------
// Fused against the reference.

TEST(AttentionBackward, FusedMatchesReferenceGqaOverHeadDims) {
    const std::vector<pattern_kind> layouts = {pk::interleaved, pk::consecutive_images, pk::trailing_pad};
    std::uint64_t seed = 100;
    for (std::size_t D : {32, 64, 80, 128})
        for (const auto& v : all_variants())
            expect_close({3, 4, 2, D, 131, {131, 97, 60}, layouts, ++seed}, v);
}

TEST(AttentionBackward, FusedMatchesReferenceEqualHeads) {
    const std::vector<pattern_kind> layouts = {pk::leading_image, pk::interior_pad, pk::repeated_ids};
    std::uint64_t seed = 200;
    for (std::size_t D : {32, 80})
        for (const auto& v : all_variants()) expect_close({3, 2, 2, D, 77, {77, 51, 1}, layouts, ++seed}, v);
}

TEST(AttentionBackward, FusedMatchesReferenceSingleModality) {
    std::uint64_t seed = 300;
    for (const auto& v : all_variants()) {
        expect_close({2, 4, 2, 64, 45, {45, 30}, {pk::images_only, pk::text_only}, ++seed}, v);
        expect_close({1, 1, 1, 128, 9, {}, {pk::text_only}, ++seed}, v);
    }
}

TEST(AttentionBackward, LongSequenceSeveralTiles) {
    // G = 2: tiles of 64 rows; 300 keys: four full key blocks and a partial one.
    std::uint64_t seed = 400;
    for (const auto& v : all_variants()) expect_close({1, 4, 2, 64, 300, {}, {pk::interleaved}, ++seed}, v);
}

// Queries that are only the last rows of the keys (a chunk on top of earlier tokens).
TEST(AttentionBackward, QueriesAreASuffixOfTheKeys) {
    std::vector<token_sequence> seqs = {make_pattern(pk::interleaved, 100, 1), make_pattern(pk::leading_image, 70, 2)};
    owned_tokens tokens(seqs, 100, true);
    tokens.set_kv_lens({100, 70});
    tokens.set_q_lens({40, 25});
    backward_data x{random_tensor({2, 4, 40, 64}, 21, -2.0f, 2.0f), random_tensor({2, 2, 100, 64}, 22, -2.0f, 2.0f),
                    random_tensor({2, 2, 100, 64}, 23), random_tensor({2, 4, 40, 64}, 24), tokens};
    for (const auto& v : all_variants()) {
        SCOPED_TRACE(v.name());
        const auto fused = fused_gradients(x, v.options(2));
        const auto ref = reference_gradients(x, v.options(2));
        EXPECT_TRUE(all_close(fused.dq, ref.dq, 1e-4)) << "dq";
        EXPECT_TRUE(all_close(fused.dk, ref.dk, 1e-4)) << "dk";
        EXPECT_TRUE(all_close(fused.dv, ref.dv, 1e-4)) << "dv";
    }
}

// Tile shapes other than the default: tiles of 16 rows cut the causal diagonal into many blocks
// whose packets of lanes stop at different keys (the dQ pass trims them), 40-row tiles are not a
// multiple of the SIMD packets, and 200-key blocks are longer than most sequences here.
TEST(AttentionBackward, EveryTileConfigMatchesReference) {
    const std::vector<mmca::cpu::fused_backward_config> configs = {{128, 128}, {64, 32}, {16, 24}, {40, 200}};
    const std::vector<backward_case> cases = {
        {1, 2, 1, 128, 260, {}, {pk::consecutive_images}, 61},
        {2, 8, 2, 80, 150, {150, 97}, {pk::interleaved, pk::images_only}, 62},
    };
    for (const backward_case& c : cases) {
        const backward_data x = make_data(c);
        const mmca::token_layout tokens = x.tokens.layout();
        for (const auto& v : all_variants()) {
            const auto options = v.options(2);
            const auto ref = reference_gradients(x, options);
            const mmca::attention_forward_result fwd = mmca::attention_with_stats(x.q, x.k, x.v, tokens, options);
            for (const auto& config : configs) {
                SCOPED_TRACE(v.name() + " L=" + std::to_string(c.L) + " rows " + std::to_string(config.tile_rows) +
                             " keys " + std::to_string(config.key_block));
                tensor4 dq = filled(x.q.shape(), std::nanf("")), dk = filled(x.k.shape(), std::nanf("")),
                        dv = filled(x.k.shape(), std::nanf(""));
                const mmca::tensor_ref<const float, 4> q(x.q), k(x.k), vv(x.v), dout(x.dout);
                const mmca::attention_problem p =
                    mmca::make_attention_problem("test", q, k, vv, tokens, options, mmca::tensor_ref<float, 4>(dq));
                mmca::cpu::attention_fused_backward(p, q, k, vv, dout, fwd.stats(), mmca::tensor_ref<float, 4>(dq),
                                                    mmca::tensor_ref<float, 4>(dk), mmca::tensor_ref<float, 4>(dv), 2,
                                                    config);
                EXPECT_TRUE(all_close(dq, ref.dq, 1e-4)) << "dq";
                EXPECT_TRUE(all_close(dk, ref.dk, 1e-4)) << "dk";
                EXPECT_TRUE(all_close(dv, ref.dv, 1e-4)) << "dv";
            }
        }
    }
}

// The reference code's degenerate rows of mmca_reference: image rows before any text average V
// uniformly (over earlier tokens and later text); that term sends gradient to V only.
TEST(AttentionBackward, UniformRowsSendNoGradientToQueries) {
    const auto seq = sequence_of({I, I, T, P});
    owned_tokens tokens({seq}, seq.size(), false);
    backward_data x{random_tensor({1, 2, 4, 32}, 1), random_tensor({1, 1, 4, 32}, 2), random_tensor({1, 1, 4, 32}, 3),
                    random_tensor({1, 2, 4, 32}, 4), tokens};
    const variant_spec v{mmca::attention_variant::mmca_reference, mmca::image_visibility::preceding};
    const auto fused = fused_gradients(x, v.options(1));
    const auto ref = reference_gradients(x, v.options(1));
    for (std::size_t h = 0; h < 2; ++h)
        for (std::size_t i : {0u, 1u, 3u})  // two image rows with only self + uniform terms, one pad row
            for (std::size_t d = 0; d < 32; ++d) {
                EXPECT_EQ(fused.dq(0, h, i, d), 0.0f) << "row " << i;
                EXPECT_EQ(ref.dq(0, h, i, d), 0.0f) << "row " << i;
            }
    // Text key 2 is in the uniform sets of image rows 0 ({0, 2}) and 1 ({0, 1, 2}), and is the only
    // key of text row 2's text group: dv_2 = Σ_h dO_0 / 2 + dO_1 / 3 + dO_2.
    for (std::size_t d = 0; d < 32; ++d) {
        double expected = 0.0;
        for (std::size_t h = 0; h < 2; ++h) expected += x.dout(0, h, 0, d) / 2.0 + x.dout(0, h, 1, d) / 3.0 + x.dout(0, h, 2, d);
        EXPECT_NEAR(fused.dv(0, 0, 2, d), expected, 1e-5);
        EXPECT_NEAR(ref.dv(0, 0, 2, d), expected, 1e-6);
    }
    EXPECT_TRUE(all_close(fused.dq, ref.dq, 1e-4));
    EXPECT_TRUE(all_close(fused.dk, ref.dk, 1e-4));
    EXPECT_TRUE(all_close(fused.dv, ref.dv, 1e-4));
    // Pad key 3 gets nothing.
    for (std::size_t d = 0; d < 32; ++d) {
        EXPECT_EQ(fused.dk(0, 0, 3, d), 0.0f);
        EXPECT_EQ(fused.dv(0, 0, 3, d), 0.0f);
    }
}

// ---------------------------------------------------------------------------------------------
// The forward with stats.

TEST(AttentionBackward, ForwardWithStatsWritesTheSameOutput) {
    const backward_data x = make_data({2, 4, 2, 80, 150, {150, 99}, {pk::interleaved, pk::leading_image}, 7});
    for (const auto& v : all_variants()) {
        SCOPED_TRACE(v.name());
        const auto options = v.options(2);
        const auto plain = mmca::attention(x.q, x.k, x.v, x.tokens.layout(), options);
        const auto with = mmca::attention_with_stats(x.q, x.k, x.v, x.tokens.layout(), options);
        EXPECT_TRUE(bitwise_equal(with.out, plain));
        // The output is the sum of the group outputs plus the self term (0 for rows without one).
        double worst = 0.0;
        for (std::size_t b = 0; b < 2; ++b)
            for (std::size_t h = 0; h < 4; ++h)
                for (std::size_t i = 0; i < 150; ++i)
                    for (std::size_t d = 0; d < 80; ++d) {
                        const bool image_self = x.tokens.types(b, i) == I &&
                                                (v.variant == mmca::attention_variant::mmca ||
                                                 v.variant == mmca::attention_variant::mmca_reference);
                        const double self = image_self ? x.v(b, h / 2, i, d) : 0.0;
                        worst = std::max(worst, std::abs(with.group_out(b, h, i, 0, d) + with.group_out(b, h, i, 1, d) +
                                                         self - with.out(b, h, i, d)));
                    }
        EXPECT_LT(worst, 1e-5);
    }
}

// ---------------------------------------------------------------------------------------------
// Threads: the reduction order is fixed by the work items, not by the threads.

TEST(AttentionBackward, OneAndTwoThreadsAgreeBitwise) {
    const backward_data x = make_data({2, 4, 2, 80, 261, {261, 200}, {pk::interleaved, pk::consecutive_images}, 9});
    for (const auto& v : all_variants()) {
        SCOPED_TRACE(v.name());
        const auto one = fused_gradients(x, v.options(1));
        const auto two = fused_gradients(x, v.options(2));
        const auto three = fused_gradients(x, v.options(3));
        EXPECT_TRUE(bitwise_equal(one.dq, two.dq));
        EXPECT_TRUE(bitwise_equal(one.dk, two.dk));
        EXPECT_TRUE(bitwise_equal(one.dv, two.dv));
        EXPECT_TRUE(bitwise_equal(one.dk, three.dk));
        EXPECT_TRUE(bitwise_equal(one.dv, three.dv));
    }
}

// ---------------------------------------------------------------------------------------------
// The reference backward against central finite differences of its own double forward.

TEST(AttentionBackward, ReferenceMatchesFiniteDifferences) {
    const std::size_t B = 1, Hq = 2, Hkv = 1, L = 9, D = 4;
    // Text before the first image, two images, a text row between them, a trailing pad.
    const auto seq = sequence_of({T, T, I, I, T, I, I, T, P});
    owned_tokens tokens({seq}, L, false);
    const tensor4 qf = random_tensor({B, Hq, L, D}, 11, -2.0f, 2.0f), kf = random_tensor({B, Hkv, L, D}, 12, -2.0f, 2.0f),
                  vf = random_tensor({B, Hkv, L, D}, 13), dof = random_tensor({B, Hq, L, D}, 14);
    auto dbl = [](const tensor4& t) { return std::vector<double>(t.begin(), t.end()); };
    for (const auto& v : all_variants()) {
        SCOPED_TRACE(v.name());
        const auto options = v.options(1);
        const mmca::attention_problem p =
            mmca::make_attention_problem<float>("test", qf, kf, vf, tokens.layout(), options, {});
        std::vector<double> q = dbl(qf), k = dbl(kf), vv = dbl(vf), dout = dbl(dof);
        std::vector<double> dq(q.size()), dk(k.size()), dv(vv.size()), out(q.size());
        mmca::attention_reference_backward_double(p, q.data(), k.data(), vv.data(), dout.data(), dq.data(), dk.data(),
                                                  dv.data());
        auto loss = [&] {
            std::vector<double> gq(q.size()), gk(k.size()), gv(vv.size());
            mmca::attention_reference_backward_double(p, q.data(), k.data(), vv.data(), dout.data(), gq.data(),
                                                      gk.data(), gv.data(), out.data());
            double s = 0.0;
            for (std::size_t n = 0; n < out.size(); ++n) s += out[n] * dout[n];
            return s;
        };
        const double h = 1e-5;
        auto check = [&](std::vector<double>& x, const std::vector<double>& grad, const char* name) {
            double worst = 0.0, largest = 0.0;
            for (std::size_t n = 0; n < x.size(); ++n) {
                const double keep = x[n];
                x[n] = keep + h;
                const double up = loss();
                x[n] = keep - h;
                const double down = loss();
                x[n] = keep;
                worst = std::max(worst, std::abs((up - down) / (2 * h) - grad[n]));
                largest = std::max(largest, std::abs(grad[n]));
            }
            EXPECT_GT(largest, 1e-3) << name;
            EXPECT_LT(worst, 1e-7 * std::max(1.0, largest)) << name << ": max |fd - grad| = " << worst;
        };
        check(q, dq, "dq");
        check(k, dk, "dk");
        check(vv, dv, "dv");
    }
}

// ---------------------------------------------------------------------------------------------
// Errors.

struct error_fixture {
    backward_data x = make_data({1, 2, 1, 16, 10, {}, {pk::interleaved}, 5});
    mmca::attention_options options = variant_spec{mmca::attention_variant::mmca, mmca::image_visibility::preceding}.options(1);
    mmca::attention_forward_result fwd = mmca::attention_with_stats(x.q, x.k, x.v, x.tokens.layout(), options);
    tensor4 dq = filled({1, 2, 10, 16}, 7.0f), dk = filled({1, 1, 10, 16}, 7.0f), dv = filled({1, 1, 10, 16}, 7.0f);

    void run(const tensor4& dout, const mmca::attention_stats_view& stats) {
        mmca::attention_backward(x.q, x.k, x.v, dout, x.tokens.layout(), options, stats, dq, dk, dv);
    }
};

template <class F>
void expect_argument_error(F&& f, const std::string& argument, const std::string& fragment) {
    try {
        f();
        ADD_FAILURE() << "no exception; expected one about '" << argument << "'";
    } catch (const mmca::invalid_argument& e) {
        EXPECT_EQ(e.argument(), argument) << e.what();
        EXPECT_NE(std::string(e.what()).find("mmca::attention_backward: argument '" + argument + "'"), std::string::npos)
            << e.what();
        EXPECT_NE(std::string(e.what()).find(fragment), std::string::npos) << e.what();
    }
}

TEST(AttentionBackwardErrors, ValidCallWritesGradients) {
    error_fixture f;
    f.run(f.x.dout, f.fwd.stats());
    EXPECT_NE(f.dq(0, 0, 3, 0), 7.0f);
    EXPECT_NE(f.dv(0, 0, 0, 0), 7.0f);
}

TEST(AttentionBackwardErrors, DoutShapeMismatch) {
    error_fixture f;
    const tensor4 bad = filled({1, 2, 9, 16}, 1.0f);
    expect_argument_error([&] { f.run(bad, f.fwd.stats()); }, "dout", "got [1, 2, 9, 16]");
    EXPECT_EQ(f.dq(0, 0, 0, 0), 7.0f);  // nothing written
}

TEST(AttentionBackwardErrors, GradientShapeMismatch) {
    error_fixture f;
    tensor4 bad_dk = filled({1, 2, 10, 16}, 7.0f);
    expect_argument_error([&] {
        mmca::attention_backward(f.x.q, f.x.k, f.x.v, f.x.dout, f.x.tokens.layout(), f.options, f.fwd.stats(), f.dq,
                                 bad_dk, f.dv);
    }, "dk", "the shape of k [1, 1, 10, 16]");
    tensor4 bad_dq = filled({1, 2, 10, 8}, 7.0f);
    expect_argument_error([&] {
        mmca::attention_backward(f.x.q, f.x.k, f.x.v, f.x.dout, f.x.tokens.layout(), f.options, f.fwd.stats(), bad_dq,
                                 f.dk, f.dv);
    }, "out", "[1, 2, 10, 8]");
}

TEST(AttentionBackwardErrors, MissingStats) {
    error_fixture f;
    auto stats = f.fwd.stats();
    stats.row_max = {};
    expect_argument_error([&] { f.run(f.x.dout, stats); }, "row_max", "no tensor");
    stats = f.fwd.stats();
    stats.group_out = {};
    expect_argument_error([&] { f.run(f.x.dout, stats); }, "group_out", "no tensor");
    EXPECT_EQ(f.dk(0, 0, 0, 0), 7.0f);
}

TEST(AttentionBackwardErrors, StatsOfTheWrongShape) {
    error_fixture f;
    const tensor4 small = filled({1, 2, 10, 1}, 1.0f);
    auto stats = f.fwd.stats();
    stats.row_sum = small;
    expect_argument_error([&] { f.run(f.x.dout, stats); }, "row_sum", "(B, Hq, Lq, 2)");
}

TEST(AttentionBackwardErrors, StatsNeverWritten) {
    error_fixture f;
    f.fwd.row_sum.fill(0.0f);
    expect_argument_error([&] { f.run(f.x.dout, f.fwd.stats()); }, "row_sum", "a positive sum");
    EXPECT_EQ(f.dq(0, 0, 0, 0), 7.0f);
}

TEST(AttentionBackwardErrors, ForwardWithStatsChecksStats) {
    error_fixture f;
    tensor4 out = filled({1, 2, 10, 16}, 0.0f), max = filled({1, 2, 10, 2}, 0.0f), sum = filled({1, 2, 10, 3}, 0.0f);
    mmca::tensor<float, 5> go(std::array<std::size_t, 5>{1, 2, 10, 2, 16});
    const mmca::attention_stats stats(max, sum, go);
    try {
        mmca::attention_forward_with_stats<float>(f.x.q, f.x.k, f.x.v, f.x.tokens.layout(), f.options, out, stats);
        ADD_FAILURE() << "no exception";
    } catch (const mmca::invalid_argument& e) {
        EXPECT_EQ(e.argument(), "row_sum") << e.what();
        EXPECT_NE(std::string(e.what()).find("mmca::attention_forward_with_stats"), std::string::npos) << e.what();
    }
}

}  // namespace
}  // namespace mmca_test
