// tests/cuda_emulation/test_emulated_backward.cpp - the kernels of the CUDA attention backward on the
// CPU, through the warp emulator (no GPU needed; compiled by the host compiler).
//
// The terms and zero-row kernels, then either the tensor-core kernels (kernels/attention_backward_mma.cuh,
// __half / __nv_bfloat16) or the FFMA kernels (kernels/attention_backward.cuh, float32 here), with the
// parameters filled on the host as mmca::cuda::attention_backward_operator fills them and the
// statistics of the CPU fused forward. Compared with the CPU reference backward under the rule of the
// GPU tests (tests/cuda/test_cuda_backward.cpp):
//   float32:           max|g - ref| <= 1e-5 * max(max|ref|, max|ref dv|)
//   float16/bfloat16:  max|g - ref| <= 2 * max|plain - ref| + u * max(max|ref|, max|ref dv|)
// where `plain` rounds P and dS to the type before their products. Every gradient starts as NaN, so
// an element no kernel writes fails the comparison. Two runs must agree bit for bit.
#include "warp_emulation.hpp"  // first: before any mmca CUDA header

#include "mmca/attention/attention_backward.hpp"
#include "mmca/attention/stats.hpp"
#include "mmca/backend/cuda/attention_plan.hpp"
#include "mmca/backend/cuda/kernels/attention_backward.cuh"
#include "mmca/backend/cuda/kernels/attention_backward_mma.cuh"
#include "mmca/backend/cuda/kernels/attention_params.cuh"
#include "mmca/backend/cuda/kernels/attention_tiled.cuh"

#include "attention_test_util.hpp"
#include "cuda_test_cases.hpp"
#include "emulation_support.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <string>
#include <tuple>
#include <vector>

namespace {

namespace em = mmca::cuda::emulation;
namespace cd = mmca::cuda::detail;
using mmca_emulation_test::dtype_kind;
using mmca_emulation_test::gpu_case;
using mmca_emulation_test::shape_view;
using mmca_emulation_test::shape_view_mut;
using mmca_emulation_test::storage_copy;
using mmca_emulation_test::storage_of;
using mmca_emulation_test::tensor4;
using mmca_emulation_test::variant_spec;

struct gradients {
    tensor4 dq, dk, dv;
};

/// Fills a storage tensor with NaN.
template <class S>
void poison(mmca::tensor<S, 4>& t) {
    for (S& x : t) x = static_cast<S>(std::numeric_limits<float>::quiet_NaN());
}

template <class D, int DP>
void launch_mma(const cd::attention_backward_params<D>& p) {
    using shape = cd::bwd_mma_shape<D, DP>;
    const cd::attention_params<D>& f = p.f;
    if (f.num_tiles > 0)
        em::emulate_launch(cd::attention_bwd_dq_mma_kernel<D, DP>, dim3(f.num_tiles, f.q_heads), shape::threads,
                           shape::smem_bytes, p);
    const auto blocks = static_cast<unsigned>(cd::ceil_div(f.kv_len, shape::keys));
    if (blocks > 0 && f.batch > 0)
        em::emulate_launch(cd::attention_bwd_dkdv_mma_kernel<D, DP>, dim3(blocks, f.kv_heads, f.batch),
                           shape::threads, shape::smem_bytes, p);
}

template <class D, int DMAX, int BQ, int BK>
void launch_ffma(const cd::attention_backward_params<D>& p) {
    using shape = cd::bwd_shape<DMAX, BQ, BK>;
    const cd::attention_params<D>& f = p.f;
    if (f.num_tiles > 0)
        em::emulate_launch(cd::attention_bwd_dq_kernel<D, DMAX, BQ, BK>, dim3(f.num_tiles, f.q_heads),
                           cd::bwd_threads, shape::smem_bytes, p);
    const auto blocks = static_cast<unsigned>(cd::ceil_div(f.kv_len, BK));
    if (blocks > 0 && f.batch > 0)
        em::emulate_launch(cd::attention_bwd_dkdv_kernel<D, DMAX, BQ, BK>, dim3(blocks, f.kv_heads, f.batch),
                           cd::bwd_threads, shape::smem_bytes, p);
}

/// mmca::cuda::attention_backward_operator<S>::initialize + run with every kernel emulated: the
/// tensor-core kernels (16-bit D, head dim <= 128) or the FFMA kernels. q, k, v, dout are rounded to
/// the storage type; the statistics are those of the CPU fused forward on the rounded inputs.
template <class D>
gradients run_backward_emulated(const tensor4& q, const tensor4& k, const tensor4& v, const tensor4& dout,
                                const mmca::token_layout& tokens, const mmca::attention_options& options,
                                bool tensor_cores) {
    using S = typename storage_of<D>::type;
    const mmca::tensor<S, 4> qs = storage_copy<S>(q), ks = storage_copy<S>(k), vs = storage_copy<S>(v),
                             gs = storage_copy<S>(dout);
    mmca::tensor<S, 4> dqs(q.shape()), dks(k.shape()), dvs(k.shape());
    poison(dqs);
    poison(dks);
    poison(dvs);
    const mmca::tensor_ref<const S, 4> qr(qs), kr(ks), vr(vs), gr(gs);
    const mmca::tensor_ref<S, 4> dqr(dqs), dkr(dks), dvr(dvs);
    const mmca::attention_problem problem = mmca::make_attention_problem<S>(
        "emulated attention backward", shape_view(qr), kr, vr, tokens, options, shape_view_mut(dqr));

    // The forward's statistics, float32 and contiguous as the device stats.
    const tensor4 qf = mmca_test::to_float32(qs), kf = mmca_test::to_float32(ks), vf = mmca_test::to_float32(vs);
    const mmca::attention_forward_result fwd = mmca::attention_with_stats(qf, kf, vf, tokens, options);

    // attention_backward_operator::initialize: block size, plan, self rows, tiles by sequence.
    const int dmax = problem.head_dim <= 64 ? 64 : problem.head_dim <= 128 ? 128 : 256;
    const int block = tensor_cores || dmax <= 128 ? 64 : 32;
    const mmca::cuda::attention_plan plan = mmca::cuda::build_attention_plan(problem, block);
    const std::int64_t Lk = problem.kv_len;
    std::vector<std::int32_t> self_rows(static_cast<std::size_t>(problem.batch * Lk), -1);
    for (const mmca::cuda::device_row_plan& r : plan.rows)
        if (r.flags & mmca::cuda::plan_self_term) self_rows[static_cast<std::size_t>(r.batch * Lk + r.position)] = r.row;
    for (const mmca::cuda::device_fill_row& fr : plan.fills)
        if (fr.source >= 0) self_rows[static_cast<std::size_t>(fr.batch * Lk + fr.source)] = fr.row;
    std::vector<mmca::cuda::device_tile> seq_tiles = plan.tiles;
    std::stable_sort(seq_tiles.begin(), seq_tiles.end(), [](const auto& x, const auto& y) {
        return x.batch != y.batch ? x.batch < y.batch : x.first < y.first;
    });
    std::vector<std::int32_t> seq_begin(static_cast<std::size_t>(problem.batch + 1), 0);
    for (const auto& t : seq_tiles) ++seq_begin[static_cast<std::size_t>(t.batch) + 1];
    for (std::size_t b = 1; b < seq_begin.size(); ++b) seq_begin[b] += seq_begin[b - 1];
    std::vector<float4> terms(plan.rows.size() * static_cast<std::size_t>(problem.q_heads) * 2u);

    cd::attention_backward_params<D> p{};
    p.f = mmca_emulation_test::host_attention_params<D, S>(problem, plan, qr, kr, vr, dqr);
    p.dout = reinterpret_cast<const D*>(gr.data);
    p.dq = reinterpret_cast<D*>(dqr.data);
    p.dk = reinterpret_cast<D*>(dkr.data);
    p.dv = reinterpret_cast<D*>(dvr.data);
    for (int d = 0; d < 3; ++d) {
        p.dout_stride[d] = gr.strides[d];
        p.dq_stride[d] = dqr.strides[d];
        p.dk_stride[d] = dkr.strides[d];
        p.dv_stride[d] = dvr.strides[d];
    }
    p.row_max = fwd.row_max.data();
    p.row_sum = fwd.row_sum.data();
    p.group_out = fwd.group_out.data();
    p.terms = terms.data();
    p.seq_tiles = seq_tiles.data();
    p.seq_tile_begin = seq_begin.data();
    p.self_rows = self_rows.data();
    p.scale = problem.scale;

    // attention_backward_operator::run (small grids, so that the grid-stride loops run).
    constexpr int warps = cd::bwd_threads / 32;
    auto blocks_for = [](std::int64_t items) {
        return static_cast<unsigned>(std::min<std::int64_t>(cd::ceil_div(items, warps), 2));
    };
    if (p.f.num_rows > 0)
        em::emulate_launch(cd::attention_bwd_terms_kernel<D>,
                           blocks_for(static_cast<std::int64_t>(p.f.num_rows) * p.f.q_heads), cd::bwd_threads, 0, p);
    if (p.f.num_fills > 0)
        em::emulate_launch(cd::attention_bwd_zero_rows_kernel<D>,
                           blocks_for(static_cast<std::int64_t>(p.f.num_fills) * p.f.q_heads), cd::bwd_threads, 0,
                           p);
    if constexpr (sizeof(D) == 2) {
        if (tensor_cores) {
            switch (cd::tiled_head_dim(problem.head_dim)) {
                case 64: launch_mma<D, 64>(p); break;
                case 80: launch_mma<D, 80>(p); break;
                case 112: launch_mma<D, 112>(p); break;
                default: launch_mma<D, 128>(p); break;
            }
        }
    }
    if (!tensor_cores) {
        if (dmax == 64)
            launch_ffma<D, 64, 64, 64>(p);
        else if (dmax == 128)
            launch_ffma<D, 128, 64, 64>(p);
        else
            launch_ffma<D, 256, 32, 32>(p);
    }
    return {mmca_test::to_float32(dqs), mmca_test::to_float32(dks), mmca_test::to_float32(dvs)};
}

tensor4 upstream(const gpu_case& c) {
    return mmca_test::random_tensor({c.B, c.Hq, c.Lq, c.D}, c.seed * 7 + 5, -1.0f, 1.0f);
}

template <class D>
void check_backward(const variant_spec& variant, const gpu_case& c, dtype_kind dt, bool tensor_cores) {
    using S = typename storage_of<D>::type;
    const mmca_cuda_test::gpu_problem pr = mmca_cuda_test::make_gpu_problem(c);
    const auto options = variant.options(0, c.scale);
    const auto layout = pr.tokens.layout();
    using mmca_cuda_test::rounded;
    const tensor4 q = rounded<S>(pr.q), k = rounded<S>(pr.k), v = rounded<S>(pr.v), dout = rounded<S>(upstream(c));
    const mmca::attention_gradients ref =
        mmca::attention_backward(q, k, v, dout, layout, options, {}, mmca::attention_impl::reference);
    const gradients got = run_backward_emulated<D>(q, k, v, dout, layout, options, tensor_cores);
    // dq and dk can be exactly 0 (a row with one key has no softmax gradient): their scale is dv's.
    const double floor = mmca_cuda_test::max_abs(ref.dv);
    const tensor4* g[3] = {&got.dq, &got.dk, &got.dv};
    const tensor4* want[3] = {&ref.dq, &ref.dk, &ref.dv};
    const char* names[3] = {"dq", "dk", "dv"};
    if (dt == dtype_kind::f32) {
        for (int x = 0; x < 3; ++x) EXPECT_TRUE(mmca_test::all_close(*g[x], *want[x], 1e-5, floor)) << names[x];
        return;
    }
    const mmca_cuda_test::grads plain = mmca_cuda_test::plain_backward<S>(q, k, v, dout, pr.tokens, variant, c.scale);
    const tensor4* pl[3] = {&plain.dq, &plain.dk, &plain.dv};
    for (int x = 0; x < 3; ++x) {
        const double scale = std::max(mmca_cuda_test::max_abs(*want[x]), floor);
        const double bound =
            2.0 * mmca_cuda_test::max_abs_diff(*pl[x], *want[x]) + mmca_cuda_test::unit_roundoff(dt) * scale;
        const double error = mmca_cuda_test::max_abs_diff(*g[x], *want[x]);
        EXPECT_LE(error, bound) << names[x] << ": emulated error " << error << ", max|ref| " << scale;
    }
}

/// (variant, case, element type): float32 runs the FFMA kernels, float16 / bfloat16 the tensor-core
/// kernels.
class EmulatedBackward : public ::testing::TestWithParam<std::tuple<variant_spec, gpu_case, dtype_kind>> {};

TEST_P(EmulatedBackward, MatchesCpuReference) {
    const auto& [variant, c, dt] = GetParam();
    switch (dt) {
        case dtype_kind::f32: check_backward<float>(variant, c, dt, false); break;
        case dtype_kind::f16: check_backward<__half>(variant, c, dt, true); break;
        case dtype_kind::bf16: check_backward<__nv_bfloat16>(variant, c, dt, true); break;
    }
}

INSTANTIATE_TEST_SUITE_P(Cases, EmulatedBackward,
                         ::testing::Combine(::testing::ValuesIn(mmca_test::all_variants()),
                                            ::testing::ValuesIn(mmca_emulation_test::emulation_cases()),
                                            ::testing::Values(dtype_kind::f32, dtype_kind::f16, dtype_kind::bf16)),
                         [](const auto& info) {
                             return std::get<1>(info.param).name + "_" + std::get<0>(info.param).name() + "_" +
                                    mmca_cuda_test::dtype_name(std::get<2>(info.param));
                         });

// Several tiles and key blocks per sequence (the dK/dV kernel's walk over tiles, block skipping).
TEST(EmulatedBackwardLarge, ManyTilesAndBlocksOnTensorCores) {
    const gpu_case c{"L300_D64", 1, 2, 1, 64, 300, 300, {}, {}, {mmca_test::pattern_kind::consecutive_images},
                     true, 0.0f, 1.0f, 43};
    for (const auto& variant : mmca_test::all_variants()) {
        SCOPED_TRACE(variant.name());
        check_backward<__nv_bfloat16>(variant, c, dtype_kind::bf16, true);
    }
}

// No atomics: two runs agree bit for bit.
TEST(EmulatedBackwardDeterminism, TwoRunsAreBitwiseEqual) {
    const gpu_case c = mmca_emulation_test::emulation_cases()[2];
    const mmca_cuda_test::gpu_problem pr = mmca_cuda_test::make_gpu_problem(c);
    const auto layout = pr.tokens.layout();
    const auto options = mmca_test::all_variants()[1].options();
    const tensor4 dout = upstream(c);
    const gradients a = run_backward_emulated<__nv_bfloat16>(pr.q, pr.k, pr.v, dout, layout, options, true);
    const gradients b = run_backward_emulated<__nv_bfloat16>(pr.q, pr.k, pr.v, dout, layout, options, true);
    for (const auto& [x, y] : {std::pair<const tensor4&, const tensor4&>{a.dq, b.dq}, {a.dk, b.dk}, {a.dv, b.dv}})
        EXPECT_EQ(std::memcmp(x.data(), y.data(), x.size() * sizeof(float)), 0);
}

}  // namespace
