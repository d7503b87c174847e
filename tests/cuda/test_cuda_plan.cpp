// tests/cuda/test_cuda_plan.cpp - the host side of the CUDA backend, which needs no GPU: the plan
// arrays of attention_plan.hpp and the membership / block-classification functions the kernels
// call, checked against row_plan.hpp (the planning the CPU fused kernel uses). These tests run on
// every machine, with or without a device.
#include "attention_test_util.hpp"
#include "mmca/backend/cuda/attention_plan.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <string>
#include <tuple>
#include <vector>

namespace {

using mmca_test::pattern_kind;
using mmca_test::variant_spec;

struct plan_case {
    std::string name;
    std::size_t Lq, Lk;
    std::vector<int> kv_lens, q_lens;
    std::vector<pattern_kind> patterns;
    bool explicit_ids;
};

std::vector<plan_case> plan_cases() {
    using pk = pattern_kind;
    return {
        {"interleaved_L300", 300, 300, {}, {}, {pk::interleaved}, true},
        {"leading_image_L257", 257, 257, {}, {}, {pk::leading_image}, true},
        {"consecutive_run_ids_L200", 200, 200, {}, {}, {pk::consecutive_images}, false},
        {"padding_two_lengths", 180, 180, {180, 97}, {180, 97}, {pk::trailing_pad, pk::interior_pad}, true},
        {"suffix_queries", 40, 250, {250, 120}, {40, 3}, {pk::interleaved, pk::images_only}, true},
        {"text_only_and_empty", 70, 70, {70, 0}, {70, 0}, {pk::text_only, pk::interleaved}, true},
    };
}

class CudaPlan : public ::testing::TestWithParam<std::tuple<variant_spec, plan_case>> {};

TEST_P(CudaPlan, MatchesRowPlansAndCovers) {
    const auto& [variant, c] = GetParam();
    const std::size_t B = std::max<std::size_t>(1, std::max(c.kv_lens.size(), c.patterns.size()));
    std::vector<mmca_test::token_sequence> seqs;
    for (std::size_t b = 0; b < B; ++b) {
        const int len = c.kv_lens.empty() ? static_cast<int>(c.Lk) : c.kv_lens[b];
        seqs.push_back(mmca_test::make_pattern(c.patterns[b % c.patterns.size()], len, 77 + b));
    }
    mmca_test::owned_tokens tokens(seqs, c.Lk, c.explicit_ids);
    tokens.set_kv_lens(c.kv_lens);
    tokens.set_q_lens(c.q_lens);
    const mmca_test::tensor4 q = mmca_test::filled({B, 1, c.Lq, 8}, 0.0f), k = mmca_test::filled({B, 1, c.Lk, 8}, 0.0f);
    const mmca::attention_problem p = mmca::make_attention_problem<float>(
        "test", q, k, k, tokens.layout(), variant.options(), mmca::tensor_ref<float, 4>());
    const mmca::cuda::attention_plan plan = mmca::cuda::build_attention_plan(p, 64);
    const std::int64_t prefix_len = p.kv_len + 1;

    // Every (b, i) is either an active row or a fill row, exactly once, in order.
    std::size_t active = 0, fill = 0;
    for (std::int64_t b = 0; b < p.batch; ++b) {
        const mmca::sequence_index seq(p, b);
        const std::int32_t* prefix = plan.type_prefix.data() + b * 2 * prefix_len;
        for (std::int32_t i = 0; i < static_cast<std::int32_t>(p.q_len); ++i) {
            if (i >= p.seq_q_len[b]) {
                ASSERT_LT(fill, plan.fills.size());
                EXPECT_EQ(plan.fills[fill].batch, b);
                EXPECT_EQ(plan.fills[fill].row, i);
                EXPECT_EQ(plan.fills[fill].source, -1);
                ++fill;
                continue;
            }
            const mmca::row_plan rp = mmca::plan_row(p, seq, static_cast<std::int32_t>(p.query_position(b, i)));
            if (!rp.needs_softmax()) {
                ASSERT_LT(fill, plan.fills.size());
                EXPECT_EQ(plan.fills[fill].row, i);
                EXPECT_EQ(plan.fills[fill].source, rp.self_term ? rp.position : -1);
                ++fill;
                continue;
            }
            ASSERT_LT(active, plan.rows.size());
            const mmca::cuda::device_row_plan& dp = plan.rows[active++];
            EXPECT_EQ(dp.batch, b);
            EXPECT_EQ(dp.row, i);
            EXPECT_EQ(dp.position, rp.position);
            EXPECT_EQ((dp.flags & mmca::cuda::plan_self_term) != 0, rp.self_term);
            for (int g = 0; g < 2; ++g) {
                const int bit = g == 0 ? mmca::cuda::plan_uniform0 : mmca::cuda::plan_uniform1;
                EXPECT_EQ((dp.flags & bit) != 0, rp.group[g].uniform);
                // Membership of every key.
                for (std::int32_t key = 0; key < seq.length; ++key) {
                    const bool want = !rp.group[g].empty() && seq.in_group(rp.group[g], key);
                    const std::int32_t code = plan.key_codes[b * p.kv_len + key];
                    ASSERT_EQ(mmca::cuda::key_code_type(code), seq.types[key]);
                    ASSERT_EQ(mmca::cuda::key_code_image(code), seq.image_ids[key]);
                    const bool got = mmca::cuda::group_contains(dp, g, key, mmca::cuda::key_code_type(code),
                                                                mmca::cuda::key_code_image(code));
                    ASSERT_EQ(got, want) << "row " << i << " group " << g << " key " << key;
                }
                // Block classification for both block sizes of the tiled kernel.
                for (std::int32_t bk : {32, 64}) {
                    for (std::int32_t k0 = 0; k0 < seq.length; k0 += bk) {
                        const std::int8_t cover =
                            mmca::cuda::classify_block(dp, g, prefix, static_cast<std::int32_t>(prefix_len), k0, k0 + bk);
                        // The tiled kernel's form: range edges plus counts at the block boundaries.
                        const mmca::cuda::range_edges edges[2] = {
                            mmca::cuda::make_range_edges(dp.range[g][0], prefix, static_cast<std::int32_t>(prefix_len)),
                            mmca::cuda::make_range_edges(dp.range[g][1], prefix, static_cast<std::int32_t>(prefix_len))};
                        auto boundary = [&](int t, std::int32_t key) {
                            return prefix[t * prefix_len + std::min<std::int64_t>(key, p.kv_len)];
                        };
                        ASSERT_EQ(mmca::cuda::classify_block_edges(dp.range[g], edges, k0, k0 + bk, boundary), cover)
                            << "row " << i << " group " << g << " block " << k0;
                        std::int32_t members = 0;
                        for (std::int32_t key = k0; key < std::min(k0 + bk, seq.length); ++key)
                            members += seq.in_group(rp.group[g], key) && !rp.group[g].empty();
                        if (cover == mmca::cuda::cover_none) {
                            ASSERT_EQ(members, 0) << "row " << i << " group " << g << " block " << k0;
                        } else if (cover == mmca::cuda::cover_full) {
                            ASSERT_EQ(members, bk) << "row " << i << " group " << g << " block " << k0;
                        }
                        if (k0 + bk <= seq.length && !rp.group[g].empty()) {
                            const mmca::block_cover cpu = mmca::cover(seq, rp.group[g], k0, k0 + bk);
                            ASSERT_EQ(static_cast<int>(cover), static_cast<int>(cpu))
                                << "row " << i << " group " << g << " block " << k0;
                        }
                    }
                }
            }
        }
    }
    EXPECT_EQ(active, plan.rows.size());
    EXPECT_EQ(fill, plan.fills.size());

    // Tiles: every active row in exactly one tile; the tile's key range holds all its members.
    std::vector<int> covered(plan.rows.size(), 0);
    for (const auto& tile : plan.tiles) {
        ASSERT_GE(tile.count, 1);
        ASSERT_LE(tile.count, 64);
        for (std::int32_t r = 0; r < tile.count; ++r) {
            const auto& row = plan.rows[tile.first + r];
            ++covered[tile.first + r];
            EXPECT_EQ(row.batch, tile.batch);
            for (const auto& group : row.range)
                for (const auto& kr : group)
                    if (kr.types != 0u) {
                        EXPECT_GE(kr.lo, tile.key_lo);
                        EXPECT_LE(kr.hi, tile.key_hi);
                    }
        }
    }
    for (int n : covered) EXPECT_EQ(n, 1);
    for (std::size_t t = 1; t < plan.tiles.size(); ++t)
        EXPECT_GE(plan.tiles[t - 1].key_hi - plan.tiles[t - 1].key_lo, plan.tiles[t].key_hi - plan.tiles[t].key_lo);
}

INSTANTIATE_TEST_SUITE_P(Cases, CudaPlan,
                         ::testing::Combine(::testing::ValuesIn(mmca_test::all_variants()),
                                            ::testing::ValuesIn(plan_cases())),
                         [](const auto& info) {
                             return std::get<1>(info.param).name + "_" + std::get<0>(info.param).name();
                         });

// The plan of unmasked attention: every row's group 0 holds every key (block covers full, the last
// block partial where it runs past Lk), group 1 is empty, and the tiles cover each row once.
TEST(CudaDensePlan, EveryRowSeesEveryKey) {
    for (const auto& [Lq, Lk] : {std::pair<std::int64_t, std::int64_t>{70, 70}, {33, 150}, {128, 64}, {1, 1}}) {
        SCOPED_TRACE(std::to_string(Lq) + " x " + std::to_string(Lk));
        const mmca::cuda::attention_plan plan = mmca::cuda::build_dense_attention_plan(Lq, Lk, 64);
        ASSERT_EQ(plan.rows.size(), static_cast<std::size_t>(Lq));
        EXPECT_TRUE(plan.fills.empty());
        const auto prefix_len = static_cast<std::int32_t>(Lk + 1);
        std::vector<int> covered(static_cast<std::size_t>(Lq), 0);
        for (const mmca::cuda::device_tile& t : plan.tiles) {
            EXPECT_EQ(t.key_lo, 0);
            EXPECT_EQ(t.key_hi, Lk - 1);
            for (std::int32_t r = 0; r < t.count; ++r) ++covered[static_cast<std::size_t>(t.first + r)];
        }
        for (int n : covered) EXPECT_EQ(n, 1);
        for (std::int64_t i = 0; i < Lq; ++i) {
            const mmca::cuda::device_row_plan& row = plan.rows[static_cast<std::size_t>(i)];
            EXPECT_EQ(row.row, i);
            EXPECT_EQ(row.flags, 0);
            for (std::int32_t k = 0; k < Lk; ++k) {
                const std::int32_t code = plan.key_codes[static_cast<std::size_t>(k)];
                ASSERT_TRUE(mmca::cuda::group_contains(row, 0, k, mmca::cuda::key_code_type(code),
                                                       mmca::cuda::key_code_image(code)));
                ASSERT_FALSE(mmca::cuda::group_contains(row, 1, k, mmca::cuda::key_code_type(code),
                                                        mmca::cuda::key_code_image(code)));
            }
            for (std::int32_t k0 = 0; k0 < Lk; k0 += 64) {
                const std::int8_t c = mmca::cuda::classify_block(row, 0, plan.type_prefix.data(), prefix_len, k0, k0 + 64);
                EXPECT_EQ(c, k0 + 64 <= Lk ? mmca::cuda::cover_full : mmca::cuda::cover_partial) << "block " << k0;
                EXPECT_EQ(mmca::cuda::classify_block(row, 1, plan.type_prefix.data(), prefix_len, k0, k0 + 64),
                          mmca::cuda::cover_none);
            }
        }
    }
}

}  // namespace
