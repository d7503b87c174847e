// tests/cuda_emulation/test_warp_emulation.cpp - the host warp emulator and, through it, the CUDA
// attention kernels on the CPU (no GPU needed; compiled by the host compiler).
//
// 1. The emulated primitives against hand-computed expectations: ldmatrix (plain and transposed),
//    mma m16n8k16 against a plain matrix product, shuffles, ballots, CTA barrier reductions, the
//    deferred cp.async copies, and the deadlock / missing-lane errors.
// 2. attention_tiled_kernel<T, DP> (tensor cores for __half / __nv_bfloat16, FFMA for float) and the
//    row kernel (one or three key splits, with the combine kernel), with their parameters filled on
//    the host exactly as mmca::cuda::attention_operator fills them, and the rows without a softmax
//    written by attention_fill_kernel, all emulated; compared with the CPU
//    reference under the rule of the GPU tests (tests/cuda/test_cuda_attention.cpp):
//      float32:           max|out - ref| <= 1e-5 * max|ref|
//      float16/bfloat16:  max|out - ref32| <= 2 * max|plain - ref32| + u * max|ref32|
//    and the statistics of the STATS instance against mmca::attention_with_stats (float32).
#include "warp_emulation.hpp"  // first: before any mmca CUDA header

#include "mmca/attention/attention_backward.hpp"
#include "mmca/backend/cuda/attention_plan.hpp"
#include "mmca/backend/cuda/kernels/attention_params.cuh"
#include "mmca/backend/cuda/kernels/attention_rows.cuh"
#include "mmca/backend/cuda/kernels/attention_tiled.cuh"
#include "mmca/backend/cuda/kernels/mma_sm80.cuh"
#include "mmca/nn/dense_attention.hpp"

#include "attention_test_util.hpp"
#include "cuda_test_cases.hpp"
#include "emulation_support.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <tuple>
#include <vector>

namespace {

namespace em = mmca::cuda::emulation;
namespace cd = mmca::cuda::detail;

// ---------------------------------------------------------------------------------------------
// Primitive kernels (each thread writes what it saw to out[thread]).
// ---------------------------------------------------------------------------------------------

struct matrix_params {
    const std::uint16_t* matrix = nullptr;  // 16 x 16, row major (global)
    std::uint32_t* out = nullptr;           // (32 lanes, 4 registers)
    bool trans = false;
};

/// One warp: copies the 16 x 16 matrix to shared memory (row stride 24 elements, as the tiled
/// kernel pads), then ldmatrix_x4 with lane l addressing row l % 16, column block (l / 16) * 8:
/// matrices 0..3 = rows 0-7 / 8-15 of columns 0-7, then of columns 8-15.
__global__ void ldmatrix_kernel(const matrix_params p) {
    constexpr int stride = 24;
    MMCA_CUDA_DYNAMIC_SHARED(smem);
    auto* s = reinterpret_cast<std::uint16_t*>(smem);
    const int lane = static_cast<int>(threadIdx.x);
    for (int x = lane; x < 256; x += 32) s[(x / 16) * stride + x % 16] = p.matrix[x];
    __syncthreads();
    std::uint32_t r[4];
    const std::uint16_t* row = s + (lane & 15) * stride + (lane >> 4) * 8;
    if (p.trans)
        cd::ldmatrix_x4_trans(r, row);
    else
        cd::ldmatrix_x4(r, row);
    for (int j = 0; j < 4; ++j) p.out[lane * 4 + j] = r[j];
}

std::uint32_t element(const std::vector<std::uint16_t>& m, int row, int col) {
    return m[static_cast<std::size_t>(row * 16 + col)];
}

std::vector<std::uint16_t> numbered_matrix() {
    std::vector<std::uint16_t> m(256);
    for (int r = 0; r < 16; ++r)
        for (int c = 0; c < 16; ++c) m[static_cast<std::size_t>(r * 16 + c)] = static_cast<std::uint16_t>(r * 256 + c);
    return m;
}

TEST(WarpEmulationPrimitives, LdmatrixX4) {
    const std::vector<std::uint16_t> m = numbered_matrix();
    std::vector<std::uint32_t> out(128, 0);
    em::emulate_launch(ldmatrix_kernel, 1, 32, 16 * 24 * 2, matrix_params{m.data(), out.data(), false});
    for (int lane = 0; lane < 32; ++lane)
        for (int j = 0; j < 4; ++j) {
            const int row = (j % 2) * 8 + lane / 4, col = (j / 2) * 8 + 2 * (lane % 4);
            const std::uint32_t want = element(m, row, col) | (element(m, row, col + 1) << 16);
            EXPECT_EQ(out[static_cast<std::size_t>(lane * 4 + j)], want) << "lane " << lane << " matrix " << j;
        }
}

TEST(WarpEmulationPrimitives, LdmatrixX4Trans) {
    const std::vector<std::uint16_t> m = numbered_matrix();
    std::vector<std::uint32_t> out(128, 0);
    em::emulate_launch(ldmatrix_kernel, 1, 32, 16 * 24 * 2, matrix_params{m.data(), out.data(), true});
    for (int lane = 0; lane < 32; ++lane)
        for (int j = 0; j < 4; ++j) {
            // Matrix j holds rows (j % 2) * 8.., columns (j / 2) * 8..; transposed: the lane gets
            // (row 2 (l % 4), column l / 4) and (row 2 (l % 4) + 1, column l / 4) of it.
            const int row = (j % 2) * 8 + 2 * (lane % 4), col = (j / 2) * 8 + lane / 4;
            const std::uint32_t want = element(m, row, col) | (element(m, row + 1, col) << 16);
            EXPECT_EQ(out[static_cast<std::size_t>(lane * 4 + j)], want) << "lane " << lane << " matrix " << j;
        }
}

template <class T>
struct mma_params {
    const float* a = nullptr;  // 16 x 16 row major
    const float* b = nullptr;  // 16 x 8 (k x n) row major
    const float* c = nullptr;  // 16 x 8 initial accumulator
    float* out = nullptr;      // 16 x 8
    bool via_ldmatrix = false;
};

/// One warp: c += a * b with the fragments built by the documented layout (or, with via_ldmatrix,
/// loaded as the tiled kernel loads Q and K: A row major, B from an (n x k) row-major copy of b).
template <class T>
__global__ void mma_kernel(const mma_params<T> p) {
    const int lane = static_cast<int>(threadIdx.x), group = lane / 4, quad = lane % 4;
    auto pair = [](float lo, float hi) { return cd::pack_pair<T>(lo, hi); };
    std::uint32_t a[4], b[2];
    if (!p.via_ldmatrix) {
        auto A = [&](int r, int k) { return p.a[r * 16 + k]; };
        auto B = [&](int k, int n) { return p.b[k * 8 + n]; };
        a[0] = pair(A(group, 2 * quad), A(group, 2 * quad + 1));
        a[1] = pair(A(group + 8, 2 * quad), A(group + 8, 2 * quad + 1));
        a[2] = pair(A(group, 8 + 2 * quad), A(group, 8 + 2 * quad + 1));
        a[3] = pair(A(group + 8, 8 + 2 * quad), A(group + 8, 8 + 2 * quad + 1));
        b[0] = pair(B(2 * quad, group), B(2 * quad + 1, group));
        b[1] = pair(B(8 + 2 * quad, group), B(8 + 2 * quad + 1, group));
    } else {
        constexpr int stride = 24;
        MMCA_CUDA_DYNAMIC_SHARED(smem);
        T* sa = reinterpret_cast<T*>(smem);
        T* sk = sa + 16 * stride;  // rows n = 0..7 of b^T, then 8 zero rows
        for (int x = lane; x < 256; x += 32) {
            const int r = x / 16, k = x % 16;
            sa[r * stride + k] = cd::from_float<T>(p.a[x]);
            sk[r * stride + k] = cd::from_float<T>(r < 8 ? p.b[k * 8 + r] : 0.0f);
        }
        __syncthreads();
        cd::ldmatrix_x4(a, sa + (lane & 15) * stride + (lane >> 4) * 8);
        std::uint32_t kb[4];
        cd::ldmatrix_x4(kb, sk + ((lane >> 4) * 8 + (lane & 7)) * stride + ((lane >> 3) & 1) * 8);
        b[0] = kb[0];
        b[1] = kb[1];
    }
    float c[4];
    for (int e = 0; e < 4; ++e) c[e] = p.c[(group + (e / 2) * 8) * 8 + 2 * quad + e % 2];
    cd::mma_16816<T>(c, a, b[0], b[1]);
    for (int e = 0; e < 4; ++e) p.out[(group + (e / 2) * 8) * 8 + 2 * quad + e % 2] = c[e];
}

template <class T>
void check_mma(bool via_ldmatrix) {
    // Small integers and halves: exact in both 16-bit types and in the float sums.
    mmca_test::rng r(via_ldmatrix ? 7 : 3);
    std::vector<float> a(256), b(128), c(128), out(128, std::numeric_limits<float>::quiet_NaN());
    for (float& x : a) x = static_cast<float>(r.integer(-8, 8)) * 0.5f;
    for (float& x : b) x = static_cast<float>(r.integer(-8, 8));
    for (float& x : c) x = static_cast<float>(r.integer(-100, 100));
    em::emulate_launch(mma_kernel<T>, 1, 32, 2 * 16 * 24 * sizeof(T),
                       mma_params<T>{a.data(), b.data(), c.data(), out.data(), via_ldmatrix});
    for (int i = 0; i < 16; ++i)
        for (int n = 0; n < 8; ++n) {
            const auto at = [](int r, int col, int cols) { return static_cast<std::size_t>(r * cols + col); };
            double want = c[at(i, n, 8)];
            for (int k = 0; k < 16; ++k) want += static_cast<double>(a[at(i, k, 16)]) * b[at(k, n, 8)];
            EXPECT_EQ(out[at(i, n, 8)], static_cast<float>(want)) << "(" << i << ", " << n << ")";
        }
}

TEST(WarpEmulationPrimitives, Mma16816Half) { check_mma<__half>(false); }
TEST(WarpEmulationPrimitives, Mma16816Bfloat16) { check_mma<__nv_bfloat16>(false); }
TEST(WarpEmulationPrimitives, Mma16816FedByLdmatrixHalf) { check_mma<__half>(true); }
TEST(WarpEmulationPrimitives, Mma16816FedByLdmatrixBfloat16) { check_mma<__nv_bfloat16>(true); }

struct warp_params {
    int* out = nullptr;  // (threads, 8)
};

/// Two warps: shuffles (xor, index, up, down, with width 8), ballots, any / all, syncthreads_or /
/// and / count, and two half-warp teams shuffling with disjoint masks at the same time.
__global__ void warp_ops_kernel(const warp_params p) {
    const int t = static_cast<int>(threadIdx.x), lane = t & 31, warp = t >> 5;
    int* o = p.out + t * 8;
    o[0] = __shfl_xor_sync(0xffffffffu, t * 10, 5);
    o[1] = static_cast<int>(__ballot_sync(0xffffffffu, lane % 3 == 0));
    o[2] = __shfl_sync(0xffffffffu, t, (lane + 7) % 32, 8);
    o[3] = __shfl_up_sync(0xffffffffu, t, 2, 16) + 1000 * __shfl_down_sync(0xffffffffu, t, 3, 16);
    o[4] = __any_sync(0xffffffffu, lane == 17 && warp == 1) + 2 * __all_sync(0xffffffffu, lane < 32);
    o[5] = __syncthreads_or(t == 40) + 2 * __syncthreads_and(t != 3) + 4 * __syncthreads_count(lane < 4);
    const unsigned team = 0xffffu << (16 * ((lane >> 4) & 1));
    float v = static_cast<float>(t);
    for (int off = 8; off > 0; off >>= 1) v += __shfl_xor_sync(team, v, off, 16);
    o[6] = static_cast<int>(v);
    o[7] = static_cast<int>(blockIdx.x * 100 + blockDim.x + gridDim.x * 1000);
}

TEST(WarpEmulationPrimitives, ShufflesBallotsAndBarrierReductions) {
    std::vector<int> out(64 * 8 * 2, -1);
    em::emulate_launch(warp_ops_kernel, 2, 64, 0, warp_params{out.data()});
    std::vector<int> second(out.begin() + 64 * 8, out.end());
    out.resize(64 * 8);
    // Second launch block: same thread results except the block index.
    em::emulate_launch(warp_ops_kernel, 1, 64, 0, warp_params{second.data()});
    unsigned ballot = 0;
    for (int l = 0; l < 32; l += 3) ballot |= 1u << l;
    for (int t = 0; t < 64; ++t) {
        const int lane = t % 32, warp = t / 32;
        const int* o = out.data() + t * 8;
        SCOPED_TRACE("thread " + std::to_string(t));
        EXPECT_EQ(o[0], (t ^ 5) * 10);
        EXPECT_EQ(static_cast<unsigned>(o[1]), ballot);
        EXPECT_EQ(o[2], warp * 32 + (lane & ~7) + ((lane + 7) % 32) % 8);
        const int seg = lane & ~15;
        const int up = lane - 2 >= seg ? t - 2 : t, down = lane + 3 < seg + 16 ? t + 3 : t;
        EXPECT_EQ(o[3], up + 1000 * down);
        EXPECT_EQ(o[4], (warp == 1 ? 1 : 0) + 2);
        EXPECT_EQ(o[5], 1 + 0 + 4 * 8);
        int team_sum = 0;
        for (int x = 0; x < 16; ++x) team_sum += warp * 32 + (lane & 16) + x;
        EXPECT_EQ(o[6], team_sum);
        EXPECT_EQ(o[7], 1 * 100 + 64 + 2 * 1000);  // the last block wrote last
        EXPECT_EQ(second[static_cast<std::size_t>(t * 8 + 7)], 64 + 1000);
    }
}

struct copy_params {
    const float* src = nullptr;  // 4 floats, 16-byte aligned
    float* out = nullptr;        // (32, 3)
};

/// cp.async lands at the wait that retires its group: before it, shared memory still holds poison.
__global__ void cp_async_kernel(const copy_params p) {
    MMCA_CUDA_DYNAMIC_SHARED(smem);
    float* s = reinterpret_cast<float*>(smem);
    const int t = static_cast<int>(threadIdx.x);
    if (t == 0) {
        cd::cp_async_16(s, p.src);
        cd::cp_async_commit();
        cd::cp_async_16(s + 4, p.src);
        cd::cp_async_commit();
        p.out[0] = s[0];  // not landed yet: poison
        cd::cp_async_wait<1>();
        p.out[1] = s[0] + s[4];  // first group landed, second not: NaN
        cd::cp_async_wait<0>();
        p.out[2] = s[0] + s[7];
    }
}

TEST(WarpEmulationPrimitives, CpAsyncLandsAtWaitAndSharedMemoryStartsAsNaN) {
    alignas(16) const float src[4] = {1.0f, 2.0f, 3.0f, 4.0f};
    std::vector<float> out(3, 0.0f);
    em::emulate_launch(cp_async_kernel, 1, 32, 64, copy_params{src, out.data()});
    EXPECT_TRUE(std::isnan(out[0]));
    EXPECT_TRUE(std::isnan(out[1]));
    EXPECT_EQ(out[2], 5.0f);
}

struct deadlock_params {
    int mode = 0;
    int* out = nullptr;
};

/// mode 0: lanes 0-15 shuffle over the full mask while lanes 16-31 go to __syncthreads.
/// mode 1: lanes 16-31 exit instead. mode 2: lanes disagree on the collective (ballot vs shuffle).
__global__ void broken_collective_kernel(const deadlock_params p) {
    const int lane = static_cast<int>(threadIdx.x) & 31;
    if (lane < 16) {
        p.out[lane] = p.mode == 2 ? static_cast<int>(__ballot_sync(0xffffffffu, 1))
                                  : __shfl_xor_sync(0xffffffffu, lane, 1);
    } else if (p.mode == 0) {
        __syncthreads();
    } else if (p.mode == 2) {
        p.out[lane] = __shfl_xor_sync(0xffffffffu, lane, 1);
    }
}

TEST(WarpEmulationPrimitives, CollectiveOfHalfAWarpThrowsInsteadOfHanging) {
    std::vector<int> out(64, 0);
    for (int mode = 0; mode < 3; ++mode) {
        SCOPED_TRACE("mode " + std::to_string(mode));
        std::string message;
        try {
            em::emulate_launch(broken_collective_kernel, 1, 64, 0, deadlock_params{mode, out.data()});
        } catch (const em::emulation_error& e) {
            message = e.what();
        }
        ASSERT_FALSE(message.empty()) << "no error";
        const char* expected[3] = {"deadlock", "exited", "different collectives"};
        EXPECT_NE(message.find(expected[mode]), std::string::npos) << message;
    }
    // The emulator is usable again after a failed launch.
    std::vector<int> ok(64 * 8, 0);
    em::emulate_launch(warp_ops_kernel, 1, 64, 0, warp_params{ok.data()});
    EXPECT_EQ(ok[0], 50);
}

// ---------------------------------------------------------------------------------------------
// The tiled forward kernel.
// ---------------------------------------------------------------------------------------------

using mmca_emulation_test::dtype_kind;
using mmca_emulation_test::emulation_cases;
using mmca_emulation_test::gpu_case;
using mmca_emulation_test::shape_view;
using mmca_emulation_test::shape_view_mut;
using mmca_emulation_test::storage_copy;
using mmca_emulation_test::storage_of;
using mmca_emulation_test::tensor4;
using mmca_emulation_test::variant_spec;

struct forward_result {
    tensor4 out;
    tensor4 row_max, row_sum, group_out;  // STATS instance only; group_out as (B, Hq, Lq, 2 D)
    std::size_t ctas = 0;
};

/// Launches the tiled kernel instance for padded head dim DP.
template <class D, int DP, bool STATS>
void launch_tiled(const cd::attention_params<D>& params, std::size_t smem) {
    const auto blocks = static_cast<unsigned>(params.num_tiles * params.q_heads);
    em::emulate_launch(cd::attention_tiled_kernel<D, DP, STATS>, blocks, cd::tiled_shape<D, DP>::threads, smem, params);
}

template <class D, bool STATS>
void launch_tiled_dim(int dp, const cd::attention_params<D>& params, std::size_t smem) {
    switch (dp) {
        case 64: launch_tiled<D, 64, STATS>(params, smem); break;
        case 80: launch_tiled<D, 80, STATS>(params, smem); break;
        case 112: launch_tiled<D, 112, STATS>(params, smem); break;
        default: launch_tiled<D, 128, STATS>(params, smem); break;
    }
}

using cd::tiled_head_dim;
using cd::tiled_rows;
using cd::tiled_smem_bytes;

/// The forward of mmca::cuda::attention_operator<S> with the tiled kernel (row_splits = 0) or the
/// row kernel with row_splits key splits (and the combine kernel when there are several), every
/// kernel emulated: q, k, v are rounded to the storage type; out (and the stats) start as NaN.
template <class D>
forward_result run_tiled_emulated(const tensor4& q, const tensor4& k, const tensor4& v,
                                  const mmca::token_layout& tokens, const mmca::attention_options& options,
                                  bool with_stats, bool bound_table = true, int row_splits = 0) {
    using S = typename storage_of<D>::type;
    const mmca::tensor<S, 4> qs = storage_copy<S>(q), ks = storage_copy<S>(k), vs = storage_copy<S>(v);
    mmca::tensor<S, 4> outs(q.shape());
    for (S& x : outs) x = static_cast<S>(std::numeric_limits<float>::quiet_NaN());

    const mmca::tensor_ref<const S, 4> qr(qs), kr(ks), vr(vs);
    const mmca::tensor_ref<S, 4> outr(outs);
    const mmca::attention_problem problem =
        mmca::make_attention_problem<S>("emulated tiled forward", shape_view(qr), kr, vr, tokens, options,
                                        shape_view_mut(outr));
    const mmca::cuda::attention_plan plan = mmca::cuda::build_attention_plan(problem, tiled_rows);

    cd::attention_params<D> params =
        mmca_emulation_test::host_attention_params<D, S>(problem, plan, qr, kr, vr, outr);

    const std::size_t B = q.shape()[0], H = q.shape()[1], L = q.shape()[2], Dh = q.shape()[3];
    forward_result r;
    const float nan = std::numeric_limits<float>::quiet_NaN();
    if (with_stats) {
        r.row_max = mmca_test::filled({B, H, L, 2}, nan);
        r.row_sum = mmca_test::filled({B, H, L, 2}, nan);
        r.group_out = mmca_test::filled({B, H, L, 2 * Dh}, nan);
        params.stat_max = r.row_max.data();
        params.stat_sum = r.row_sum.data();
        params.stat_out = r.group_out.data();
    }

    // Block-boundary table as attention_operator::initialize sizes it (the emulator's limit, an sm_90
    // device's); bound_table = false takes the path without it.
    const int dp = tiled_head_dim(problem.head_dim);
    cd::tiled_launch_memory memory = cd::tiled_launch_memory_for<D>(plan, dp, em::detail::max_dynamic_shared_bytes);
    if (!bound_table) memory = {0, tiled_smem_bytes<D>(dp), memory.smem_limit};
    params.bound_entries = memory.bound_entries;
    const std::size_t smem = memory.smem;

    if (params.num_fills > 0) {
        // Grid-stride over (fill row, head) items; a small grid so that the stride loop runs.
        constexpr int warps = cd::fill_kernel_threads / 32;
        const std::int64_t items = static_cast<std::int64_t>(params.num_fills) * params.q_heads;
        const auto blocks = static_cast<unsigned>(std::min<std::int64_t>(cd::ceil_div(items, warps), 2));
        em::emulate_launch(cd::attention_fill_kernel<D>, blocks, cd::fill_kernel_threads, 0, params);
    }
    if (params.num_rows > 0 && row_splits > 0) {
        // attention_operator::run for the row kernel: one CTA per (active row, head, split).
        params.splits = row_splits;
        std::vector<float> partial;
        if (row_splits > 1) {
            partial.assign(static_cast<std::size_t>(params.num_rows) * static_cast<std::size_t>(params.q_heads) *
                               static_cast<std::size_t>(row_splits) * 2u * static_cast<std::size_t>(Dh + 2),
                           std::numeric_limits<float>::quiet_NaN());
            params.partial = partial.data();
        }
        const dim3 grid(static_cast<unsigned>(params.num_rows), static_cast<unsigned>(params.q_heads),
                        static_cast<unsigned>(row_splits));
        if (Dh <= 64)
            em::emulate_launch(cd::attention_rows_kernel<D, 4>, grid, cd::rows_kernel_threads, 0, params);
        else if (Dh <= 128)
            em::emulate_launch(cd::attention_rows_kernel<D, 8>, grid, cd::rows_kernel_threads, 0, params);
        else
            em::emulate_launch(cd::attention_rows_kernel<D, 16>, grid, cd::rows_kernel_threads, 0, params);
        if (row_splits > 1)
            em::emulate_launch(cd::attention_combine_kernel<D>,
                               dim3(static_cast<unsigned>(params.num_rows), static_cast<unsigned>(params.q_heads)), 128,
                               0, params);
        r.ctas = static_cast<std::size_t>(params.num_rows) * static_cast<std::size_t>(params.q_heads) *
                 static_cast<std::size_t>(row_splits);
    } else if (params.num_rows > 0) {
        if (with_stats)
            launch_tiled_dim<D, true>(dp, params, smem);
        else
            launch_tiled_dim<D, false>(dp, params, smem);
        r.ctas = static_cast<std::size_t>(params.num_tiles) * static_cast<std::size_t>(params.q_heads);
    }
    r.out = mmca_test::to_float32(outs);
    return r;
}

template <class D>
void check_forward(const variant_spec& variant, const gpu_case& c, dtype_kind dt, int row_splits = 0) {
    using S = typename storage_of<D>::type;
    const mmca_cuda_test::gpu_problem p = mmca_cuda_test::make_gpu_problem(c);
    const auto options = variant.options(0, c.scale);
    const auto layout = p.tokens.layout();
    const tensor4 q = mmca_cuda_test::rounded<S>(p.q), k = mmca_cuda_test::rounded<S>(p.k),
                  v = mmca_cuda_test::rounded<S>(p.v);
    const tensor4 ref = mmca::attention(q, k, v, layout, options, mmca::attention_impl::reference);
    const forward_result r = run_tiled_emulated<D>(q, k, v, layout, options, false, true, row_splits);
    EXPECT_TRUE(mmca_cuda_test::zero_rows_are_zero(r.out, p.tokens));
    if (dt == dtype_kind::f32) {
        EXPECT_TRUE(mmca_test::all_close(r.out, ref, 1e-5));
    } else {
        const tensor4 plain = mmca_cuda_test::plain_low_precision<S>(q, k, v, p.tokens, variant, c.scale);
        const double plain_error = mmca_cuda_test::max_abs_diff(plain, ref);
        const double bound = 2.0 * plain_error + mmca_cuda_test::unit_roundoff(dt) * mmca_cuda_test::max_abs(ref);
        const double error = mmca_cuda_test::max_abs_diff(r.out, ref);
        EXPECT_LE(error, bound) << "emulated error " << error << ", plain " << mmca_cuda_test::dtype_name(dt)
                                << " error " << plain_error << ", max|ref| " << mmca_cuda_test::max_abs(ref);
    }
}

class EmulatedTiledForward : public ::testing::TestWithParam<std::tuple<variant_spec, gpu_case, dtype_kind>> {};

TEST_P(EmulatedTiledForward, MatchesCpuReference) {
    const auto& [variant, c, dt] = GetParam();
    switch (dt) {
        case dtype_kind::f32: check_forward<float>(variant, c, dt); break;
        case dtype_kind::f16: check_forward<__half>(variant, c, dt); break;
        case dtype_kind::bf16: check_forward<__nv_bfloat16>(variant, c, dt); break;
    }
}

INSTANTIATE_TEST_SUITE_P(Cases, EmulatedTiledForward,
                         ::testing::Combine(::testing::ValuesIn(mmca_test::all_variants()),
                                            ::testing::ValuesIn(emulation_cases()),
                                            ::testing::Values(dtype_kind::f32, dtype_kind::f16, dtype_kind::bf16)),
                         [](const auto& info) {
                             return std::get<1>(info.param).name + "_" + std::get<0>(info.param).name() + "_" +
                                    mmca_cuda_test::dtype_name(std::get<2>(info.param));
                         });

// The row kernel (decode steps and short tiles; D up to 256) with one key split and with three
// (partial states merged by the combine kernel).
class EmulatedRowsForward
    : public ::testing::TestWithParam<std::tuple<variant_spec, gpu_case, dtype_kind, int>> {};

TEST_P(EmulatedRowsForward, MatchesCpuReference) {
    const auto& [variant, c, dt, splits] = GetParam();
    switch (dt) {
        case dtype_kind::f32: check_forward<float>(variant, c, dt, splits); break;
        case dtype_kind::f16: check_forward<__half>(variant, c, dt, splits); break;
        case dtype_kind::bf16: check_forward<__nv_bfloat16>(variant, c, dt, splits); break;
    }
}

std::vector<gpu_case> row_kernel_cases() {
    using pk = mmca_test::pattern_kind;
    std::vector<gpu_case> cases = {emulation_cases()[0], emulation_cases()[5], emulation_cases()[7]};
    cases.push_back({"decode_Lk150_D256", 2, 2, 1, 256, 1, 150, {150, 90}, {1, 1}, {pk::interleaved, pk::leading_image},
                     true, 0.0f, 1.0f, 23});
    return cases;
}

INSTANTIATE_TEST_SUITE_P(Cases, EmulatedRowsForward,
                         ::testing::Combine(::testing::ValuesIn(mmca_test::all_variants()),
                                            ::testing::ValuesIn(row_kernel_cases()),
                                            ::testing::Values(dtype_kind::f32, dtype_kind::bf16),
                                            ::testing::Values(1, 3)),
                         [](const auto& info) {
                             return std::get<1>(info.param).name + "_" + std::get<0>(info.param).name() + "_" +
                                    mmca_cuda_test::dtype_name(std::get<2>(info.param)) + "_splits" +
                                    std::to_string(std::get<3>(info.param));
                         });

// ---------------------------------------------------------------------------------------------
// The STATS instance and the path without the block-boundary table.
// ---------------------------------------------------------------------------------------------

class EmulatedTiledStats : public ::testing::TestWithParam<std::tuple<variant_spec, gpu_case>> {};

TEST_P(EmulatedTiledStats, MatchCpuFusedForward) {
    const auto& [variant, c] = GetParam();
    const mmca_cuda_test::gpu_problem p = mmca_cuda_test::make_gpu_problem(c);
    const auto options = variant.options(0, c.scale);
    const auto layout = p.tokens.layout();
    const mmca::attention_forward_result cpu = mmca::attention_with_stats(p.q, p.k, p.v, layout, options);
    const forward_result r = run_tiled_emulated<float>(p.q, p.k, p.v, layout, options, true);
    EXPECT_TRUE(mmca_test::all_close(r.out, cpu.out, 1e-5)) << "out";
    EXPECT_TRUE(mmca_cuda_test::stats_close(r.row_max, cpu.row_max, 1e-5)) << "row_max";
    EXPECT_TRUE(mmca_cuda_test::stats_close(r.row_sum, cpu.row_sum, 1e-5)) << "row_sum";
    EXPECT_TRUE(mmca_cuda_test::stats_close(r.group_out, mmca_cuda_test::flat(cpu.group_out), 1e-5)) << "group_out";
}

INSTANTIATE_TEST_SUITE_P(Cases, EmulatedTiledStats,
                         ::testing::Combine(::testing::ValuesIn(mmca_test::all_variants()),
                                            ::testing::Values(emulation_cases()[2], emulation_cases()[5])),
                         [](const auto& info) {
                             return std::get<1>(info.param).name + "_" + std::get<0>(info.param).name();
                         });

TEST(EmulatedTiledForwardPaths, WithoutBoundaryTableMatchesWithIt) {
    const gpu_case c = emulation_cases()[2];
    const mmca_cuda_test::gpu_problem p = mmca_cuda_test::make_gpu_problem(c);
    const auto layout = p.tokens.layout();
    for (const auto& variant : mmca_test::all_variants()) {
        SCOPED_TRACE(variant.name());
        const auto options = variant.options();
        using mmca_cuda_test::rounded;
        const tensor4 q = rounded<mmca::bfloat16>(p.q), k = rounded<mmca::bfloat16>(p.k),
                      v = rounded<mmca::bfloat16>(p.v);
        const forward_result with = run_tiled_emulated<__nv_bfloat16>(q, k, v, layout, options, false, true);
        const forward_result without = run_tiled_emulated<__nv_bfloat16>(q, k, v, layout, options, false, false);
        EXPECT_EQ(std::memcmp(with.out.data(), without.out.data(), with.out.size() * sizeof(float)), 0);
    }
}

// ---------------------------------------------------------------------------------------------
// Unmasked attention (the fused path of cuda::dense_attention): the tiled kernel with the plan of
// build_dense_attention_plan against mmca::nn::dense_attention, under the GPU test's rule
// (tests/cuda/test_cuda_vision.cpp: max|out - ref| / max|ref| within 1e-5, 2e-3, 1.6e-2).
// ---------------------------------------------------------------------------------------------

struct host_heads {
    std::vector<float> values;
    std::int64_t rows, row_stride, head_stride, offset;
};

host_heads random_heads(std::int64_t rows, std::int64_t row_stride, std::int64_t head_stride, unsigned seed) {
    std::mt19937 g(seed);
    std::normal_distribution<float> nd;
    host_heads h{std::vector<float>(static_cast<std::size_t>(rows * row_stride)), rows, row_stride, head_stride, 0};
    for (float& x : h.values) x = nd(g);
    return h;
}

template <class D>
void check_dense(std::int64_t Lq, std::int64_t Lk, std::int64_t heads, std::int64_t Dh, bool interleaved,
                 double tol) {
    using S = typename storage_of<D>::type;
    const std::int64_t W = heads * Dh;
    auto round_values = [](host_heads& h) {
        for (float& x : h.values) x = static_cast<float>(static_cast<S>(x));
    };
    host_heads q, k, v;
    if (interleaved) {  // one (L, 3W) qkv buffer, per head [q | k | v]: QWen-VL's encoder
        q = random_heads(Lq, 3 * W, 3 * Dh, 3);
        round_values(q);
        k = v = q;
        k.offset = Dh;
        v.offset = 2 * Dh;
    } else {  // separate matrices, Lq != Lk: the resampler
        q = random_heads(Lq, W, Dh, 4);
        k = random_heads(Lk, W, Dh, 5);
        v = random_heads(Lk, W, Dh, 6);
        round_values(q);
        round_values(k);
        round_values(v);
    }
    const float scale = 1.0f / std::sqrt(static_cast<float>(Dh));
    std::vector<float> want(static_cast<std::size_t>(Lq * W));
    auto cpu = [](const host_heads& h) {
        return mmca::nn::head_matrix{h.values.data(), h.rows, h.row_stride, h.head_stride, h.offset};
    };
    mmca::nn::dense_attention(cpu(q), cpu(k), cpu(v), heads, Dh, scale, mmca::tensor_ref<float, 2>(want.data(), {Lq, W}));

    auto storage = [](const host_heads& h) {
        std::vector<S> s(h.values.size());
        for (std::size_t i = 0; i < s.size(); ++i) s[i] = static_cast<S>(h.values[i]);
        return s;
    };
    const std::vector<S> qs = storage(q), ks = storage(k), vs = storage(v);
    std::vector<S> outs(static_cast<std::size_t>(Lq * W), static_cast<S>(std::numeric_limits<float>::quiet_NaN()));
    auto view = [](const std::vector<S>& s, const host_heads& h) {
        return cd::head_rows_view<D>{reinterpret_cast<const D*>(s.data()) + h.offset, h.row_stride, h.head_stride};
    };
    const mmca::cuda::attention_plan plan = mmca::cuda::build_dense_attention_plan(Lq, Lk, tiled_rows);
    cd::attention_params<D> params = cd::dense_attention_params<D>(
        view(qs, q), view(ks, k), view(vs, v), reinterpret_cast<D*>(outs.data()), W, static_cast<std::int32_t>(heads),
        static_cast<std::int32_t>(Dh), static_cast<std::int32_t>(Lq), static_cast<std::int32_t>(Lk), scale);
    cd::set_plan_arrays(params, plan, plan.rows.data(), plan.fills.data(), plan.tiles.data(), plan.key_codes.data(),
                        plan.type_prefix.data(), plan.seq_kv_len.data());
    const int dp = tiled_head_dim(Dh);
    const cd::tiled_launch_memory memory = cd::tiled_launch_memory_for<D>(plan, dp, em::detail::max_dynamic_shared_bytes);
    params.bound_entries = memory.bound_entries;
    launch_tiled_dim<D, false>(dp, params, memory.smem);

    double diff = 0.0, scale_ref = 0.0;
    for (std::size_t i = 0; i < want.size(); ++i) {
        const double got = static_cast<float>(outs[i]);
        diff = std::isfinite(got) ? std::max(diff, std::abs(got - want[i])) : INFINITY;
        scale_ref = std::max(scale_ref, static_cast<double>(std::abs(want[i])));
    }
    EXPECT_LE(diff / scale_ref, tol) << "Lq " << Lq << ", Lk " << Lk << ", " << heads << " heads of " << Dh;
}

TEST(EmulatedDenseAttention, TiledKernelWithTheDensePlanMatchesCpu) {
    // QWen-VL's encoder (heads of 104, interleaved qkv) on 70 tokens, and its resampler (queries
    // over more keys, heads of 128); CLIP's heads of 64.
    check_dense<float>(70, 70, 2, 104, true, 1e-5);
    check_dense<float>(33, 150, 2, 128, false, 1e-5);
    check_dense<__half>(70, 70, 2, 104, true, 2e-3);
    check_dense<__half>(33, 150, 2, 128, false, 2e-3);
    check_dense<__nv_bfloat16>(70, 70, 2, 104, true, 1.6e-2);
    check_dense<__nv_bfloat16>(33, 150, 2, 128, false, 1.6e-2);
    check_dense<__nv_bfloat16>(130, 130, 1, 64, true, 1.6e-2);
}

}  // namespace
