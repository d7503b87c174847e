// tests/cuda/test_cuda_backward.cpp - the CUDA attention backward (and the forward's statistics)
// against the CPU oracles.
//
// Every variant / policy x every case of cuda_test_cases.hpp x float32, float16, bfloat16, with the
// statistics written by each forward kernel (tiled and rows):
//   float32:           dq, dk, dv within 1e-5 * max|ref| of the reference backward (explicit masks,
//                      double precision; max|ref| at least max|ref dv|, since dq and dk can be
//                      exactly 0); the statistics within 1e-5 of the CPU fused forward's
//   float16/bfloat16:  max|gpu - ref| <= 2 * max|plain - ref| + u * max|ref| per gradient, where
//                      `plain` is a plain backward at the same precision (P and dS rounded to the
//                      type before their products, float32 accumulation, outputs rounded)
// float16/bfloat16 cases that the tensor-core kernels serve (D <= 128, a multiple of 8) run the
// backward with both kernel families, named explicitly (ffma, tensor_cores);
// CudaBackwardAutomatic checks which family `automatic` takes, bit-for-bit against the named one.
// All device outputs start as NaN: every element of dq, dk and dv must be written.
// Without a CUDA device every test is skipped.
#include "attention_test_util.hpp"
#include "cuda_test_cases.hpp"
#include "cuda_test_support.hpp"

#include "mmca/attention/attention_backward.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <tuple>
#include <type_traits>
#include <vector>

namespace mmca_cuda_test {
namespace {

using mmca_test::all_close;
using mmca_test::bitwise_equal;

bool tiled_serves(const gpu_case& c, dtype_kind d) {
    const std::size_t chunk = d == dtype_kind::f32 ? 4 : 8;
    return c.D <= 128 && c.D % chunk == 0;
}

tensor4 upstream(const gpu_case& c) {
    return mmca_test::random_tensor({c.B, c.Hq, c.Lq, c.D}, c.seed * 7 + 5, -1.0f, 1.0f);
}

template <class S>
void check_backward(const variant_spec& variant, const gpu_case& c, dtype_kind dt) {
    const gpu_problem p = make_gpu_problem(c);
    const auto options = variant.options(0, c.scale);
    const auto layout = p.tokens.layout();
    const tensor4 q = rounded<S>(p.q), k = rounded<S>(p.k), v = rounded<S>(p.v), dout = rounded<S>(upstream(c));
    const mmca::attention_gradients ref =
        mmca::attention_backward(q, k, v, dout, layout, options, {}, mmca::attention_impl::reference);
    // dq and dk can be exactly 0 (a row with one key: its softmax has no gradient), where float32
    // leaves ~1e-8; the scale of the gradient terms is then that of dv (dout times P).
    const double floor = max_abs(ref.dv);
    double bounds[3] = {0.0, 0.0, 0.0};
    if (dt != dtype_kind::f32) {
        const grads plain = plain_backward<S>(q, k, v, dout, p.tokens, variant, c.scale);
        const tensor4* r[3] = {&ref.dq, &ref.dk, &ref.dv};
        const tensor4* pl[3] = {&plain.dq, &plain.dk, &plain.dv};
        for (int x = 0; x < 3; ++x)
            bounds[x] = 2.0 * max_abs_diff(*pl[x], *r[x]) + unit_roundoff(dt) * std::max(max_abs(*r[x]), floor);
    }
    const mmca::attention_forward_result cpu = dt == dtype_kind::f32
                                                   ? mmca::attention_with_stats(q, k, v, layout, options)
                                                   : mmca::attention_forward_result{};
    for (kernel_choice kernel : {kernel_choice::tiled, kernel_choice::rows}) {
        if (kernel == kernel_choice::tiled && !tiled_serves(c, dt)) continue;
        SCOPED_TRACE(std::string("forward kernel ") + kernel_name(kernel));
        run_options run;
        run.kernel = kernel;
        // Backward launches: (block, tensor cores); block -1 stands for the tensor-core kernels.
        std::vector<int> blocks = dt == dtype_kind::f32 && c.D <= 128 && kernel == kernel_choice::rows
                                      ? std::vector<int>{0, 32}
                                      : std::vector<int>{0};
        if (dt != dtype_kind::f32 && tiled_serves(c, dt)) blocks.push_back(-1);
        for (int block : blocks) {
            const bool tensor_cores = block < 0;
            SCOPED_TRACE(tensor_cores ? std::string("backward on tensor cores")
                                      : "backward block " + std::to_string(block));
            const auto family =
                tensor_cores ? mmca::cuda::backward_kernel::tensor_cores : mmca::cuda::backward_kernel::ffma;
            const backward_run r =
                run_backward<S>(q, k, v, dout, layout, options, run, tensor_cores ? 0 : block, family);
            EXPECT_EQ(r.kernel, family);
            const tensor4* got[3] = {&r.dq, &r.dk, &r.dv};
            const tensor4* want[3] = {&ref.dq, &ref.dk, &ref.dv};
            const char* names[3] = {"dq", "dk", "dv"};
            for (int x = 0; x < 3; ++x) {
                if (dt == dtype_kind::f32) {
                    EXPECT_TRUE(all_close(*got[x], *want[x], 1e-5, floor)) << names[x];
                } else {
                    const double error = max_abs_diff(*got[x], *want[x]);
                    EXPECT_LE(error, bounds[x]) << names[x] << ": gpu error " << error << ", max|ref| "
                                                << max_abs(*want[x]);
                }
            }
            if (dt == dtype_kind::f32) {
                EXPECT_TRUE(stats_close(r.row_max, cpu.row_max, 1e-5)) << "row_max";
                EXPECT_TRUE(stats_close(r.row_sum, cpu.row_sum, 1e-5)) << "row_sum";
                EXPECT_TRUE(stats_close(r.group_out, flat(cpu.group_out), 1e-5)) << "group_out";
                EXPECT_TRUE(all_close(r.out, cpu.out, 1e-5)) << "out";
            }
        }
    }
}

class CudaBackward : public ::testing::TestWithParam<std::tuple<variant_spec, gpu_case, dtype_kind>> {};

TEST_P(CudaBackward, MatchesCpuReference) {
    MMCA_REQUIRE_GPU();
    const auto& [variant, c, dt] = GetParam();
    switch (dt) {
        case dtype_kind::f32: check_backward<float>(variant, c, dt); break;
        case dtype_kind::f16: check_backward<mmca::float16>(variant, c, dt); break;
        case dtype_kind::bf16: check_backward<mmca::bfloat16>(variant, c, dt); break;
    }
}

INSTANTIATE_TEST_SUITE_P(Cases, CudaBackward,
                         ::testing::Combine(::testing::ValuesIn(mmca_test::all_variants()),
                                            ::testing::ValuesIn(gpu_cases()),
                                            ::testing::Values(dtype_kind::f32, dtype_kind::f16, dtype_kind::bf16)),
                         [](const auto& info) {
                             return std::get<1>(info.param).name + "_" + std::get<0>(info.param).name() + "_" +
                                    dtype_name(std::get<2>(info.param));
                         });

// Many tiles and key blocks per sequence (block skipping over long image runs).
class CudaBackwardLarge : public ::testing::TestWithParam<std::tuple<variant_spec, dtype_kind>> {};

TEST_P(CudaBackwardLarge, ManyTilesAndBlocks) {
    MMCA_REQUIRE_GPU();
    const auto& [variant, dt] = GetParam();
    const gpu_case c{"L600_D128", 1, 2, 1, 128, 600, 600, {}, {}, {pattern_kind::consecutive_images},
                     true, 0.0f, 1.0f, 43};
    if (dt == dtype_kind::f32)
        check_backward<float>(variant, c, dt);
    else
        check_backward<mmca::bfloat16>(variant, c, dt);
}

INSTANTIATE_TEST_SUITE_P(Cases, CudaBackwardLarge,
                         ::testing::Combine(::testing::ValuesIn(mmca_test::all_variants()),
                                            ::testing::Values(dtype_kind::f32, dtype_kind::bf16)),
                         [](const auto& info) {
                             return std::get<0>(info.param).name() + "_" + dtype_name(std::get<1>(info.param));
                         });

template <class S>
void check_backward_views() {
    const gpu_case c{"L150_D128_gqa21", 2, 4, 2, 128, 150, 150, {150, 101}, {150, 101},
                     {pattern_kind::interleaved, pattern_kind::leading_image}, true, 0.0f, 1.0f, 52};
    const gpu_problem p = make_gpu_problem(c);
    const auto layout = p.tokens.layout();
    const tensor4 dout = upstream(c);
    for (const auto& variant : mmca_test::all_variants()) {
        SCOPED_TRACE(variant.name());
        const auto options = variant.options();
        run_options strided;
        strided.head_major_layout = true;
        strided.own_stream = true;
        for (const auto family : {mmca::cuda::backward_kernel::ffma, mmca::cuda::backward_kernel::tensor_cores}) {
            if (family == mmca::cuda::backward_kernel::tensor_cores && std::is_same_v<S, float>) continue;
            SCOPED_TRACE(mmca::cuda::to_string(family));
            const backward_run a = run_backward<S>(p.q, p.k, p.v, dout, layout, options, {}, 0, family);
            const backward_run b = run_backward<S>(p.q, p.k, p.v, dout, layout, options, strided, 0, family);
            const backward_run again = run_backward<S>(p.q, p.k, p.v, dout, layout, options, {}, 0, family);
            for (const auto& [x, y] : {std::pair<const tensor4&, const tensor4&>{a.dq, b.dq}, {a.dk, b.dk},
                                       {a.dv, b.dv}, {a.dq, again.dq}, {a.dk, again.dk}, {a.dv, again.dv}})
                EXPECT_TRUE(bitwise_equal(x, y));
        }
    }
}

TEST(CudaBackwardViews, HeadMajorStorageOwnStreamDeterministicFloat32) {
    MMCA_REQUIRE_GPU();
    check_backward_views<float>();
}

TEST(CudaBackwardViews, HeadMajorStorageOwnStreamDeterministicBfloat16) {
    MMCA_REQUIRE_GPU();
    check_backward_views<mmca::bfloat16>();
}

// `automatic` (the default) takes the tensor-core kernels wherever they serve and the FFMA kernels
// elsewhere, and computes exactly what the family it takes computes when named.
template <class S>
void check_automatic_choice(std::size_t D, int block, mmca::cuda::backward_kernel expected) {
    const gpu_case c{"automatic", 1, 2, 1, D, 90, 90, {}, {}, {pattern_kind::interleaved}, true, 0.0f, 1.0f, 61};
    const gpu_problem p = make_gpu_problem(c);
    const auto options = mmca_test::all_variants()[1].options(0, c.scale);
    const tensor4 dout = upstream(c);
    const auto layout = p.tokens.layout();
    const backward_run got =
        run_backward<S>(p.q, p.k, p.v, dout, layout, options, {}, block, mmca::cuda::backward_kernel::automatic);
    EXPECT_EQ(got.kernel, expected) << mmca::cuda::to_string(got.kernel);
    const backward_run named = run_backward<S>(p.q, p.k, p.v, dout, layout, options, {}, block, expected);
    EXPECT_TRUE(bitwise_equal(got.dq, named.dq));
    EXPECT_TRUE(bitwise_equal(got.dk, named.dk));
    EXPECT_TRUE(bitwise_equal(got.dv, named.dv));
}

TEST(CudaBackwardAutomatic, TakesTensorCoresWhereTheyServe) {
    MMCA_REQUIRE_GPU();
    using mmca::cuda::backward_kernel;
    check_automatic_choice<mmca::bfloat16>(128, 0, backward_kernel::tensor_cores);
    check_automatic_choice<mmca::float16>(64, 0, backward_kernel::tensor_cores);
    check_automatic_choice<mmca::bfloat16>(80, 64, backward_kernel::tensor_cores);
    check_automatic_choice<mmca::bfloat16>(128, 32, backward_kernel::ffma);  // a 32-row tile asked for
    check_automatic_choice<mmca::bfloat16>(256, 0, backward_kernel::ffma);   // head dim above 128
    check_automatic_choice<mmca::float16>(36, 0, backward_kernel::ffma);     // not a multiple of 8
    check_automatic_choice<float>(128, 0, backward_kernel::ffma);            // float32 inputs
}

TEST(CudaBackwardErrors, NamesTheArgument) {
    MMCA_REQUIRE_GPU();
    const gpu_case c = gpu_cases()[1];
    const gpu_problem p = make_gpu_problem(c);
    const auto options = mmca_test::all_variants()[1].options();
    EXPECT_EQ(backward_error(p.q, p.k, p.v, p.tokens.layout(), options, ""), "");
    for (const std::string name : {"dq", "dk", "dv", "dout", "row_max", "group_out", "config.kernel"}) {
        SCOPED_TRACE(name);
        const std::string e = backward_error(p.q, p.k, p.v, p.tokens.layout(), options, name);
        EXPECT_NE(e.find("mmca::cuda::attention_backward"), std::string::npos) << e;
        EXPECT_NE(e.find("'" + name + "'"), std::string::npos) << e;
        EXPECT_NE(e.find("expected"), std::string::npos) << e;
    }
}

}  // namespace
}  // namespace mmca_cuda_test
