// tests/cuda/test_cuda_attention.cpp - the CUDA attention kernels against the CPU oracle.
//
// Every variant / policy x every case of cuda_test_cases.hpp x float32, float16, bfloat16, each run
// through both kernels (tiled and rows) where the shape allows:
//   float32:           max|gpu - ref| <= 1e-5 * max|ref|, ref = the library's reference (double)
//   float16/bfloat16:  max|gpu - ref32| <= 2 * max|plain - ref32| + u * max|ref32|, where ref32 is the
//                      reference on the rounded inputs and `plain` a plain implementation at the same
//                      precision (plain_low_precision), u the unit roundoff of the type.
// All outputs start as NaN on the device; pad and out-of-length rows must be exactly zero.
// Without a CUDA device every test is skipped.
#include "attention_test_util.hpp"
#include "cuda_test_cases.hpp"
#include "cuda_test_support.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <string>
#include <tuple>
#include <type_traits>
#include <vector>

namespace mmca_cuda_test {
namespace {

using mmca_test::all_close;
using mmca_test::bitwise_equal;

/// Whether the tiled kernel serves a case at this storage type (the rows kernel serves all).
bool tiled_serves(const gpu_case& c, dtype_kind d) {
    const std::size_t chunk = d == dtype_kind::f32 ? 4 : 8;
    return c.D <= 128 && c.D % chunk == 0;
}

template <class S>
void check_case(const variant_spec& variant, const gpu_case& c, dtype_kind dt) {
    const gpu_problem p = make_gpu_problem(c);
    const auto options = variant.options(0, c.scale);
    const auto layout = p.tokens.layout();
    const tensor4 q = rounded<S>(p.q), k = rounded<S>(p.k), v = rounded<S>(p.v);
    const tensor4 ref = mmca::attention(q, k, v, layout, options, mmca::attention_impl::reference);
    double bound = 0.0, plain_error = 0.0;
    if (dt != dtype_kind::f32) {
        const tensor4 plain = plain_low_precision<S>(q, k, v, p.tokens, variant, c.scale);
        plain_error = max_abs_diff(plain, ref);
        bound = 2.0 * plain_error + unit_roundoff(dt) * max_abs(ref);
    }
    for (kernel_choice kernel : {kernel_choice::tiled, kernel_choice::rows}) {
        SCOPED_TRACE(std::string("kernel ") + kernel_name(kernel));
        const std::string can = can_implement<S>(q, k, v, layout, options, kernel);
        if (kernel == kernel_choice::tiled && !tiled_serves(c, dt)) {
            EXPECT_EQ(can, "unsupported_layout");
            continue;
        }
        ASSERT_EQ(can, "success");
        run_report report;
        run_options run;
        run.kernel = kernel;
        const tensor4 out = run_attention<S>(q, k, v, layout, options, run, &report);
        EXPECT_EQ(report.kernel, kernel_name(kernel));
        EXPECT_TRUE(zero_rows_are_zero(out, p.tokens));
        if (dt == dtype_kind::f32) {
            EXPECT_TRUE(all_close(out, ref, 1e-5));
        } else {
            const double error = max_abs_diff(out, ref);
            EXPECT_LE(error, bound) << "gpu error " << error << ", plain " << dtype_name(dt) << " error " << plain_error
                                    << ", max|ref| " << max_abs(ref);
        }
    }
}

class CudaAttention : public ::testing::TestWithParam<std::tuple<variant_spec, gpu_case, dtype_kind>> {};

TEST_P(CudaAttention, MatchesCpuReference) {
    MMCA_REQUIRE_GPU();
    const auto& [variant, c, dt] = GetParam();
    switch (dt) {
        case dtype_kind::f32: check_case<float>(variant, c, dt); break;
        case dtype_kind::f16: check_case<mmca::float16>(variant, c, dt); break;
        case dtype_kind::bf16: check_case<mmca::bfloat16>(variant, c, dt); break;
    }
}

INSTANTIATE_TEST_SUITE_P(Cases, CudaAttention,
                         ::testing::Combine(::testing::ValuesIn(mmca_test::all_variants()),
                                            ::testing::ValuesIn(gpu_cases()),
                                            ::testing::Values(dtype_kind::f32, dtype_kind::f16, dtype_kind::bf16)),
                         [](const auto& info) {
                             return std::get<1>(info.param).name + "_" + std::get<0>(info.param).name() + "_" +
                                    dtype_name(std::get<2>(info.param));
                         });

// ---------------------------------------------------------------------------------------------
// A larger problem: many tiles and key blocks, block skipping across long image runs.

class CudaAttentionLarge : public ::testing::TestWithParam<std::tuple<variant_spec, dtype_kind>> {};

TEST_P(CudaAttentionLarge, ManyTilesAndBlocks) {
    MMCA_REQUIRE_GPU();
    const auto& [variant, dt] = GetParam();
    const gpu_case c{"L1100_D128", 1, 4, 2, 128, 1100, 1100, {}, {}, {pattern_kind::consecutive_images},
                     true, 0.0f, 1.0f, 41};
    if (dt == dtype_kind::f32)
        check_case<float>(variant, c, dt);
    else
        check_case<mmca::bfloat16>(variant, c, dt);
}

INSTANTIATE_TEST_SUITE_P(Cases, CudaAttentionLarge,
                         ::testing::Combine(::testing::ValuesIn(mmca_test::all_variants()),
                                            ::testing::Values(dtype_kind::f32, dtype_kind::bf16)),
                         [](const auto& info) {
                             return std::get<0>(info.param).name() + "_" + dtype_name(std::get<1>(info.param));
                         });

// ---------------------------------------------------------------------------------------------
// Strided views, streams, splits, the one-shot entry point, determinism.

gpu_case layout_case() {
    return {"L150_D128_gqa21", 2, 4, 2, 128, 150, 150, {150, 101}, {150, 101},
            {pattern_kind::interleaved, pattern_kind::leading_image}, true, 0.0f, 1.0f, 51};
}

template <class S>
void check_views_and_streams() {
    const gpu_case c = layout_case();
    const gpu_problem p = make_gpu_problem(c);
    const auto layout = p.tokens.layout();
    for (const auto& variant : mmca_test::all_variants()) {
        SCOPED_TRACE(variant.name());
        const auto options = variant.options();
        for (kernel_choice kernel : {kernel_choice::tiled, kernel_choice::rows}) {
            SCOPED_TRACE(kernel_name(kernel));
            run_options plain;
            plain.kernel = kernel;
            run_options strided = plain;
            strided.head_major_layout = true;
            strided.own_stream = true;
            const tensor4 a = run_attention<S>(p.q, p.k, p.v, layout, options, plain);
            const tensor4 b = run_attention<S>(p.q, p.k, p.v, layout, options, strided);
            const tensor4 again = run_attention<S>(p.q, p.k, p.v, layout, options, plain);
            EXPECT_TRUE(bitwise_equal(a, b)) << "(B, L, H, D) storage changes the result";
            EXPECT_TRUE(bitwise_equal(a, again)) << "two runs differ";
        }
        const tensor4 op = run_attention<S>(p.q, p.k, p.v, layout, options);
        const tensor4 one_shot = run_attention_forward<S>(p.q, p.k, p.v, layout, options);
        EXPECT_TRUE(bitwise_equal(op, one_shot));
    }
}

TEST(CudaAttentionViews, HeadMajorStorageOwnStreamAndOneShotFloat32) {
    MMCA_REQUIRE_GPU();
    check_views_and_streams<float>();
}

TEST(CudaAttentionViews, HeadMajorStorageOwnStreamAndOneShotBfloat16) {
    MMCA_REQUIRE_GPU();
    check_views_and_streams<mmca::bfloat16>();
}

TEST(CudaAttentionSplits, SplitCountsAgree) {
    MMCA_REQUIRE_GPU();
    const gpu_case c{"decode_Lk900", 2, 4, 2, 128, 3, 900, {900, 400}, {3, 2},
                     {pattern_kind::consecutive_images, pattern_kind::interleaved}, true, 0.0f, 1.0f, 61};
    const gpu_problem p = make_gpu_problem(c);
    const auto layout = p.tokens.layout();
    for (const auto& variant : mmca_test::all_variants()) {
        SCOPED_TRACE(variant.name());
        const auto options = variant.options();
        const tensor4 ref = mmca::attention(p.q, p.k, p.v, layout, options, mmca::attention_impl::reference);
        for (int splits : {1, 2, 3, 7, 0}) {
            SCOPED_TRACE("splits " + std::to_string(splits));
            run_options run;
            run.kernel = kernel_choice::rows;
            run.splits = splits;
            run_report report;
            const tensor4 out = run_attention<float>(p.q, p.k, p.v, layout, options, run, &report);
            if (splits > 0) {
                EXPECT_EQ(report.splits, splits);
            }
            EXPECT_TRUE(all_close(out, ref, 1e-5));
        }
    }
}

// The tiled kernel's CTA order changes which CTA runs when, never what one computes: head-major and
// tile-major dispatch give the same bits (and tile-major is held to the CPU reference above).
template <class S>
void check_cta_orders() {
    const gpu_case c{"L700_gqa21", 2, 4, 2, 128, 700, 700, {700, 450}, {},
                     {pattern_kind::interleaved, pattern_kind::leading_image}, true, 0.0f, 1.0f, 71};
    const gpu_problem p = make_gpu_problem(c);
    const auto layout = p.tokens.layout();
    for (const auto& variant : mmca_test::all_variants()) {
        SCOPED_TRACE(variant.name());
        const auto options = variant.options();
        run_options run;
        run.kernel = kernel_choice::tiled;
        run_report automatic, tile, head;
        const tensor4 a = run_attention<S>(p.q, p.k, p.v, layout, options, run, &automatic);
        run.order = "tile_major";
        const tensor4 t = run_attention<S>(p.q, p.k, p.v, layout, options, run, &tile);
        run.order = "head_major";
        const tensor4 h = run_attention<S>(p.q, p.k, p.v, layout, options, run, &head);
        EXPECT_EQ(automatic.order, "tile_major");  // at most 19 tiles x 4 heads: far below 48 CTAs per SM
        EXPECT_EQ(tile.order, "tile_major");
        EXPECT_EQ(head.order, "head_major");
        EXPECT_TRUE(bitwise_equal(a, t));
        EXPECT_TRUE(bitwise_equal(h, t));
        const tensor4 q = rounded<S>(p.q), k = rounded<S>(p.k), v = rounded<S>(p.v);
        const tensor4 ref = mmca::attention(q, k, v, layout, options, mmca::attention_impl::reference);
        const double bound = std::is_same_v<S, float> ? 1e-5 * std::max(1.0, max_abs(ref)) : 0.1;
        EXPECT_LE(max_abs_diff(h, ref), bound) << "head-major output far from the reference";
    }
}

TEST(CudaAttentionOrder, HeadMajorAndTileMajorAgreeFloat32) {
    MMCA_REQUIRE_GPU();
    check_cta_orders<float>();
}

TEST(CudaAttentionOrder, HeadMajorAndTileMajorAgreeBfloat16) {
    MMCA_REQUIRE_GPU();
    check_cta_orders<mmca::bfloat16>();
}

TEST(CudaAttentionChoice, AutomaticTakesTiledForPrefillAndRowsForDecode) {
    MMCA_REQUIRE_GPU();
    const auto options = mmca_test::all_variants()[1].options();  // mmca
    {
        const gpu_problem p = make_gpu_problem(layout_case());
        run_report report;
        run_attention<mmca::bfloat16>(p.q, p.k, p.v, p.tokens.layout(), options, {}, &report);
        EXPECT_EQ(report.kernel, "tiled");
    }
    {
        const gpu_problem p = make_gpu_problem(gpu_cases().back());  // decode_Lk700_gqa41
        run_report report;
        run_attention<mmca::bfloat16>(p.q, p.k, p.v, p.tokens.layout(), options, {}, &report);
        EXPECT_EQ(report.kernel, "rows");
    }
}

}  // namespace
}  // namespace mmca_cuda_test
