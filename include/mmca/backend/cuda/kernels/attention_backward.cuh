// mmca/backend/cuda/kernels/attention_backward.cuh - the kernels of the CUDA attention backward.
//
// The backward recomputes each group's probabilities block by block from the forward's statistics
// (mmca/attention/stats.hpp), as the CPU fused backward does; no (L, L) buffer exists. Three steps:
//   1. attention_bwd_terms_kernel: per (active row, query head, group) the log2-scaled row max, the
//      reciprocal row sum and delta_g = dO . O_g (the softmax correction), from the stats.
//   2. attention_bwd_dq_kernel: one CTA per (tile of BQ active rows, query head) walks the key blocks
//      of the tile's range (skipping those no row sees) and accumulates dQ = scale * dS K.
//   3. attention_bwd_dkdv_kernel: one CTA per (key block, kv head, sequence) walks the query heads of
//      its group and the tiles of its sequence that see the block, and accumulates dV = P^T dO and
//      dK = scale * dS^T Q in registers; the self terms (V_j added to a row's output) add dO there.
// Both accumulation kernels recompute S = Q K^T and dP = dO V^T for a (BQ x BK) tile in shared
// memory (float32 copies of the operands, FFMA, 16 x 16 threads with a register tile each), then
//   P  = sum over the groups the key is in of  exp2(S * scale_log2 - m2_g) / l_g   (uniform: 1 / l_g)
//   dS = sum over the non-uniform groups of     P_g * (dP - delta_g)
// Neither kernel uses atomics: dQ, dK and dV are each written once per element (deterministic).
// Rows without a softmax get dQ = 0 (attention_bwd_zero_rows_kernel).
#pragma once

#include "mmca/backend/cuda/attention_plan.hpp"
#include "mmca/backend/cuda/common.cuh"
#include "mmca/backend/cuda/kernels/attention_params.cuh"
#include "mmca/backend/cuda/kernels/shared_memory.cuh"

#include <cstdint>

namespace mmca {
namespace cuda {
namespace detail {

/// Kernel arguments of the backward (by value).
template <class T>
struct attention_backward_params {
    attention_params<T> f;  // q, k, v, sizes, strides, plan arrays (out is unused)
    const T* dout = nullptr;
    T* dq = nullptr;
    T* dk = nullptr;
    T* dv = nullptr;
    std::int64_t dout_stride[3] = {0, 0, 0};
    std::int64_t dq_stride[3] = {0, 0, 0};
    std::int64_t dk_stride[3] = {0, 0, 0};
    std::int64_t dv_stride[3] = {0, 0, 0};
    const float* row_max = nullptr;    // (B, Hq, Lq, 2) forward stats
    const float* row_sum = nullptr;    // (B, Hq, Lq, 2)
    const float* group_out = nullptr;  // (B, Hq, Lq, 2, D)
    float4* terms = nullptr;           // (R, Hq, 2): {m2, 1 / l, delta, 0}
    const device_tile* seq_tiles = nullptr;    // tiles ordered by (sequence, first row)
    const std::int32_t* seq_tile_begin = nullptr;  // (B + 1) offsets into seq_tiles
    const std::int32_t* self_rows = nullptr;   // (B, Lk) query row whose output adds V at this key, or -1
    float scale = 1.0f;                        // score scale (natural units)
};

constexpr int bwd_threads = 256;

/// Step 1: one warp per (active row, head), grid-stride.
template <class T>
__global__ void __launch_bounds__(bwd_threads) attention_bwd_terms_kernel(const attention_backward_params<T> p) {
    constexpr int warps = bwd_threads / 32;
    const attention_params<T>& f = p.f;
    const int lane = threadIdx.x & 31, D = f.head_dim;
    const std::int64_t total = static_cast<std::int64_t>(f.num_rows) * f.q_heads;
    for (std::int64_t item = static_cast<std::int64_t>(blockIdx.x) * warps + threadIdx.x / 32; item < total;
         item += static_cast<std::int64_t>(gridDim.x) * warps) {
        const int r = static_cast<int>(item / f.q_heads);
        const int h = static_cast<int>(item - static_cast<std::int64_t>(r) * f.q_heads);
        const device_row_plan& plan = f.rows[r];
        const std::int64_t stat = stat_row(f, plan.batch, h, plan.row);
        const T* dout = p.dout + plan.batch * p.dout_stride[0] + h * p.dout_stride[1] + plan.row * p.dout_stride[2];
        const float* o0 = p.group_out + stat * 2 * D;
        float delta[2] = {0.0f, 0.0f};
        for (int d = lane; d < D; d += 32) {
            const float g = to_float(dout[d]);
            delta[0] = fmaf(g, o0[d], delta[0]);
            delta[1] = fmaf(g, o0[D + d], delta[1]);
        }
#pragma unroll
        for (int off = 16; off > 0; off >>= 1) {
            delta[0] += __shfl_xor_sync(0xffffffffu, delta[0], off);
            delta[1] += __shfl_xor_sync(0xffffffffu, delta[1], off);
        }
        if (lane < 2) {
            const int g = lane;
            const float mx = p.row_max[stat * 2 + g], sum = p.row_sum[stat * 2 + g];
            const bool empty = !(sum > 0.0f) || !(mx > -INFINITY);
            p.terms[item * 2 + g] = make_float4(empty ? 0.0f : mx * 1.4426950408889634f, empty ? 0.0f : 1.0f / sum,
                                                delta[g], 0.0f);
        }
    }
}

/// dQ of the rows without a softmax: zero. One warp per (row, head), grid-stride.
template <class T>
__global__ void __launch_bounds__(bwd_threads) attention_bwd_zero_rows_kernel(const attention_backward_params<T> p) {
    constexpr int warps = bwd_threads / 32;
    const attention_params<T>& f = p.f;
    const int lane = threadIdx.x & 31;
    const std::int64_t total = static_cast<std::int64_t>(f.num_fills) * f.q_heads;
    for (std::int64_t item = static_cast<std::int64_t>(blockIdx.x) * warps + threadIdx.x / 32; item < total;
         item += static_cast<std::int64_t>(gridDim.x) * warps) {
        const int index = static_cast<int>(item / f.q_heads);
        const int h = static_cast<int>(item - static_cast<std::int64_t>(index) * f.q_heads);
        const device_fill_row fr = f.fills[index];
        T* dq = p.dq + fr.batch * p.dq_stride[0] + h * p.dq_stride[1] + fr.row * p.dq_stride[2];
        for (int d = lane; d < f.head_dim; d += 32) dq[d] = from_float<T>(0.0f);
    }
}

/// Shared-memory layout of the two accumulation kernels: float32 operands with rows padded by one
/// float (DMAX + 1: the 16 key columns of a warp fall in distinct banks), the P and dS tiles, the
/// tile's row plans and terms, and the key codes of the block.
template <int DMAX, int BQ, int BK>
struct bwd_shape {
    static constexpr int stride = DMAX + 1;
    static constexpr int tile_stride = BK + 1;
    static constexpr int TR = BQ / 16;  // rows per thread in the S / dP tile
    static constexpr int TC = BK / 16;  // keys per thread
    static constexpr int DX = DMAX / 16;  // head-dim elements per thread in the accumulations
    static constexpr std::size_t floats = static_cast<std::size_t>(2 * BQ + 2 * BK) * stride + 2 * BQ * tile_stride;
    static constexpr std::size_t smem_bytes = floats * sizeof(float) + BQ * sizeof(device_row_plan) +
                                              2 * BQ * sizeof(float4) + BK * sizeof(std::int32_t);
    static_assert(floats % 4 == 0, "the row plans after the float arrays must be 16-byte aligned");
    static_assert(BQ % 16 == 0 && BK % 16 == 0 && DMAX % 16 == 0, "16 x 16 threads own the tiles");
};

/// Copies `count` rows of D elements (row r at base + r * stride) into float32 shared memory
/// rows of `sstride` floats; rows >= count and columns >= D up to DMAX become 0.
template <class T, int DMAX>
__device__ __forceinline__ void load_rows_f32(float* dst, int sstride, int rows, int count, int D,
                                              const T* base, std::int64_t stride, const std::int32_t* row_index) {
    for (int x = threadIdx.x; x < rows * DMAX; x += bwd_threads) {
        const int r = x / DMAX, d = x - r * DMAX;
        float value = 0.0f;
        if (r < count && d < D) value = to_float(base[(row_index != nullptr ? row_index[r] : r) * stride + d]);
        dst[r * sstride + d] = value;
    }
}

/// The S and dP tiles of (tile rows, key block) and from them P and dS (scaled by `scale`) into
/// shared memory. Thread (ig, jg) = (tid / 16, tid % 16) owns rows ig + 16 r and keys jg + 16 c.
template <int DMAX, int BQ, int BK>
__device__ __forceinline__ void bwd_probabilities(const float* sq, const float* sdo, const float* sk, const float* sv,
                                                  const device_row_plan* s_plan, const float4* s_terms,
                                                  const std::int32_t* s_code, int count, int k0, int seq_len, int D,
                                                  float scale_log2, float scale, float* sp, float* sds) {
    using shape = bwd_shape<DMAX, BQ, BK>;
    constexpr int TR = shape::TR, TC = shape::TC, ST = shape::stride, TS = shape::tile_stride;
    const int ig = threadIdx.x / 16, jg = threadIdx.x % 16;
    float s[TR][TC], dp[TR][TC];
#pragma unroll
    for (int r = 0; r < TR; ++r)
#pragma unroll
        for (int c = 0; c < TC; ++c) s[r][c] = dp[r][c] = 0.0f;
    for (int d = 0; d < D; ++d) {
        float qa[TR], ga[TR], kb[TC], vb[TC];
#pragma unroll
        for (int r = 0; r < TR; ++r) {
            qa[r] = sq[(ig + 16 * r) * ST + d];
            ga[r] = sdo[(ig + 16 * r) * ST + d];
        }
#pragma unroll
        for (int c = 0; c < TC; ++c) {
            kb[c] = sk[(jg + 16 * c) * ST + d];
            vb[c] = sv[(jg + 16 * c) * ST + d];
        }
#pragma unroll
        for (int r = 0; r < TR; ++r)
#pragma unroll
            for (int c = 0; c < TC; ++c) {
                s[r][c] = fmaf(qa[r], kb[c], s[r][c]);
                dp[r][c] = fmaf(ga[r], vb[c], dp[r][c]);
            }
    }
#pragma unroll
    for (int r = 0; r < TR; ++r) {
        const int i = ig + 16 * r;
        const bool row_ok = i < count;
        const device_row_plan& plan = s_plan[i < count ? i : 0];
        const float4 t0 = s_terms[2 * i], t1 = s_terms[2 * i + 1];
        const bool uniform0 = (plan.flags & plan_uniform0) != 0, uniform1 = (plan.flags & plan_uniform1) != 0;
#pragma unroll
        for (int c = 0; c < TC; ++c) {
            const int j = jg + 16 * c, key = k0 + j;
            float prob = 0.0f, grad = 0.0f;
            if (row_ok && key < seq_len) {
                const int code = s_code[j];
                const int type = key_code_type(code), id = key_code_image(code);
                const float x = s[r][c] * scale_log2;
                if (group_contains(plan, 0, key, type, id)) {
                    if (uniform0) {
                        prob += t0.y;
                    } else {
                        const float pg = exp2f(x - t0.x) * t0.y;
                        prob += pg;
                        grad += pg * (dp[r][c] - t0.z);
                    }
                }
                if (group_contains(plan, 1, key, type, id)) {
                    if (uniform1) {
                        prob += t1.y;
                    } else {
                        const float pg = exp2f(x - t1.x) * t1.y;
                        prob += pg;
                        grad += pg * (dp[r][c] - t1.z);
                    }
                }
            }
            if (sp != nullptr) sp[i * TS + j] = prob;
            sds[i * TS + j] = grad * scale;
        }
    }
}

/// True (for every thread of the CTA) when some row of the tile has a group that meets [k0, k0 + BK).
template <int BK>
__device__ __forceinline__ bool bwd_block_used(const device_row_plan* s_plan, int count, const std::int32_t* prefix,
                                               int prefix_len, int k0) {
    bool used = false;
    for (int x = threadIdx.x; x < 2 * count; x += bwd_threads) {
        const int r = x >> 1, g = x & 1;
        used = used || classify_block(s_plan[r], g, prefix, prefix_len, k0, k0 + BK) != cover_none;
    }
    return __syncthreads_or(used) != 0;
}

/// Loads a tile's row plans and terms for head h into shared memory.
template <class T, int BQ>
__device__ __forceinline__ void bwd_load_tile_rows(const attention_backward_params<T>& p, const device_tile& tile,
                                                   int h, device_row_plan* s_plan, float4* s_terms,
                                                   std::int32_t* s_rowidx) {
    for (int x = threadIdx.x; x < BQ; x += bwd_threads) {
        if (x < tile.count) {
            s_plan[x] = p.f.rows[tile.first + x];
            s_terms[2 * x] = p.terms[(static_cast<std::int64_t>(tile.first + x) * p.f.q_heads + h) * 2];
            s_terms[2 * x + 1] = p.terms[(static_cast<std::int64_t>(tile.first + x) * p.f.q_heads + h) * 2 + 1];
            s_rowidx[x] = s_plan[x].row;
        } else {
            s_terms[2 * x] = s_terms[2 * x + 1] = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
            s_rowidx[x] = 0;
        }
    }
}

/// Step 2: dQ. Grid (tiles, Hq); tiles of BQ rows (the plan's tiles).
template <class T, int DMAX, int BQ, int BK>
__global__ void __launch_bounds__(bwd_threads) attention_bwd_dq_kernel(const attention_backward_params<T> p) {
    using shape = bwd_shape<DMAX, BQ, BK>;
    constexpr int ST = shape::stride, TS = shape::tile_stride, TR = shape::TR, DX = shape::DX;
    MMCA_CUDA_DYNAMIC_SHARED(smem);
    float* sq = reinterpret_cast<float*>(smem);
    float* sdo = sq + BQ * ST;
    float* sk = sdo + BQ * ST;
    float* sv = sk + BK * ST;
    float* sds = sv + BK * ST;
    device_row_plan* s_plan = reinterpret_cast<device_row_plan*>(sds + 2 * BQ * TS);
    float4* s_terms = reinterpret_cast<float4*>(s_plan + BQ);
    std::int32_t* s_code = reinterpret_cast<std::int32_t*>(s_terms + 2 * BQ);
    __shared__ std::int32_t s_rowidx[BQ];

    const attention_params<T>& f = p.f;
    const device_tile tile = f.tiles[blockIdx.x];
    const int h = blockIdx.y, b = tile.batch, hk = h / f.group, D = f.head_dim;
    const int seq_len = f.seq_kv_len[b], prefix_len = f.kv_len + 1;
    const std::int32_t* prefix = f.type_prefix + static_cast<std::int64_t>(b) * 2 * prefix_len;
    const std::int32_t* codes = f.key_codes + static_cast<std::int64_t>(b) * f.kv_len;
    const T* k_base = f.k + b * f.k_stride[0] + hk * f.k_stride[1];
    const T* v_base = f.v + b * f.v_stride[0] + hk * f.v_stride[1];

    bwd_load_tile_rows<T, BQ>(p, tile, h, s_plan, s_terms, s_rowidx);
    __syncthreads();
    load_rows_f32<T, DMAX>(sq, ST, BQ, tile.count, D, f.q + b * f.q_stride[0] + h * f.q_stride[1], f.q_stride[2],
                           s_rowidx);
    load_rows_f32<T, DMAX>(sdo, ST, BQ, tile.count, D, p.dout + b * p.dout_stride[0] + h * p.dout_stride[1],
                           p.dout_stride[2], s_rowidx);

    const int ig = threadIdx.x % 16, dg = threadIdx.x / 16;
    float acc[TR][DX];
#pragma unroll
    for (int r = 0; r < TR; ++r)
#pragma unroll
        for (int x = 0; x < DX; ++x) acc[r][x] = 0.0f;

    const int first = tile.key_lo / BK, last = min(tile.key_hi, seq_len - 1) / BK;
    for (int blk = first; blk <= last; ++blk) {
        const int k0 = blk * BK;
        if (!bwd_block_used<BK>(s_plan, tile.count, prefix, prefix_len, k0)) continue;
        const int keys = min(BK, seq_len - k0);
        load_rows_f32<T, DMAX>(sk, ST, BK, keys, D, k_base + k0 * f.k_stride[2], f.k_stride[2], nullptr);
        load_rows_f32<T, DMAX>(sv, ST, BK, keys, D, v_base + k0 * f.v_stride[2], f.v_stride[2], nullptr);
        for (int x = threadIdx.x; x < BK; x += bwd_threads) s_code[x] = x < keys ? codes[k0 + x] : 0;
        __syncthreads();
        bwd_probabilities<DMAX, BQ, BK>(sq, sdo, sk, sv, s_plan, s_terms, s_code, tile.count, k0, seq_len, D,
                                        f.scale_log2, p.scale, nullptr, sds);
        __syncthreads();
        for (int j = 0; j < keys; ++j) {
            float kd[DX];
#pragma unroll
            for (int x = 0; x < DX; ++x) kd[x] = sk[j * ST + dg + 16 * x];
#pragma unroll
            for (int r = 0; r < TR; ++r) {
                const float w = sds[(ig + 16 * r) * TS + j];
#pragma unroll
                for (int x = 0; x < DX; ++x) acc[r][x] = fmaf(w, kd[x], acc[r][x]);
            }
        }
        __syncthreads();  // the next block's copy reuses sk, sv, s_code and sds
    }
#pragma unroll
    for (int r = 0; r < TR; ++r) {
        const int i = ig + 16 * r;
        if (i >= tile.count) continue;
        T* dq = p.dq + b * p.dq_stride[0] + h * p.dq_stride[1] + s_rowidx[i] * p.dq_stride[2];
#pragma unroll
        for (int x = 0; x < DX; ++x) {
            const int d = dg + 16 * x;
            if (d < D) dq[d] = from_float<T>(acc[r][x]);
        }
    }
}

/// Step 3: dK and dV. Grid (key blocks, Hkv, B).
template <class T, int DMAX, int BQ, int BK>
__global__ void __launch_bounds__(bwd_threads) attention_bwd_dkdv_kernel(const attention_backward_params<T> p) {
    using shape = bwd_shape<DMAX, BQ, BK>;
    constexpr int ST = shape::stride, TS = shape::tile_stride, TC = shape::TC, DX = shape::DX;
    MMCA_CUDA_DYNAMIC_SHARED(smem);
    float* sq = reinterpret_cast<float*>(smem);
    float* sdo = sq + BQ * ST;
    float* sk = sdo + BQ * ST;
    float* sv = sk + BK * ST;
    float* sp = sv + BK * ST;
    float* sds = sp + BQ * TS;
    device_row_plan* s_plan = reinterpret_cast<device_row_plan*>(sds + BQ * TS);
    float4* s_terms = reinterpret_cast<float4*>(s_plan + BQ);
    std::int32_t* s_code = reinterpret_cast<std::int32_t*>(s_terms + 2 * BQ);
    __shared__ std::int32_t s_rowidx[BQ];

    const attention_params<T>& f = p.f;
    const int k0 = blockIdx.x * BK, hk = blockIdx.y, b = blockIdx.z, D = f.head_dim;
    const int seq_len = f.seq_kv_len[b], prefix_len = f.kv_len + 1;
    const int keys = max(0, min(BK, seq_len - k0));
    const std::int32_t* prefix = f.type_prefix + static_cast<std::int64_t>(b) * 2 * prefix_len;
    const std::int32_t* codes = f.key_codes + static_cast<std::int64_t>(b) * f.kv_len;

    load_rows_f32<T, DMAX>(sk, ST, BK, keys, D, f.k + b * f.k_stride[0] + hk * f.k_stride[1] + k0 * f.k_stride[2],
                           f.k_stride[2], nullptr);
    load_rows_f32<T, DMAX>(sv, ST, BK, keys, D, f.v + b * f.v_stride[0] + hk * f.v_stride[1] + k0 * f.v_stride[2],
                           f.v_stride[2], nullptr);
    for (int x = threadIdx.x; x < BK; x += bwd_threads) s_code[x] = x < keys ? codes[k0 + x] : 0;

    const int jg = threadIdx.x % 16, dg = threadIdx.x / 16;
    float acc_k[TC][DX], acc_v[TC][DX];
#pragma unroll
    for (int c = 0; c < TC; ++c)
#pragma unroll
        for (int x = 0; x < DX; ++x) acc_k[c][x] = acc_v[c][x] = 0.0f;

    const int tiles_begin = p.seq_tile_begin[b], tiles_end = p.seq_tile_begin[b + 1];
    for (int hg = 0; hg < f.group && keys > 0; ++hg) {
        const int h = hk * f.group + hg;
        for (int t = tiles_begin; t < tiles_end; ++t) {
            const device_tile tile = p.seq_tiles[t];
            if (tile.key_hi < k0 || tile.key_lo >= k0 + BK) continue;
            __syncthreads();  // the previous tile's rows are no longer read
            bwd_load_tile_rows<T, BQ>(p, tile, h, s_plan, s_terms, s_rowidx);
            __syncthreads();
            if (!bwd_block_used<BK>(s_plan, tile.count, prefix, prefix_len, k0)) continue;
            load_rows_f32<T, DMAX>(sq, ST, BQ, tile.count, D, f.q + b * f.q_stride[0] + h * f.q_stride[1],
                                   f.q_stride[2], s_rowidx);
            load_rows_f32<T, DMAX>(sdo, ST, BQ, tile.count, D, p.dout + b * p.dout_stride[0] + h * p.dout_stride[1],
                                   p.dout_stride[2], s_rowidx);
            __syncthreads();
            bwd_probabilities<DMAX, BQ, BK>(sq, sdo, sk, sv, s_plan, s_terms, s_code, tile.count, k0, seq_len, D,
                                            f.scale_log2, p.scale, sp, sds);
            __syncthreads();
            for (int i = 0; i < tile.count; ++i) {
                float qd[DX], gd[DX];
#pragma unroll
                for (int x = 0; x < DX; ++x) {
                    qd[x] = sq[i * ST + dg + 16 * x];
                    gd[x] = sdo[i * ST + dg + 16 * x];
                }
#pragma unroll
                for (int c = 0; c < TC; ++c) {
                    const float w = sp[i * TS + jg + 16 * c], g = sds[i * TS + jg + 16 * c];
#pragma unroll
                    for (int x = 0; x < DX; ++x) {
                        acc_v[c][x] = fmaf(w, gd[x], acc_v[c][x]);
                        acc_k[c][x] = fmaf(g, qd[x], acc_k[c][x]);
                    }
                }
            }
        }
    }

    // Self terms: a row whose output adds V at this key sends its dO there (every head of the group).
#pragma unroll
    for (int c = 0; c < TC; ++c) {
        const int key = k0 + jg + 16 * c;
        if (key >= seq_len) continue;
        const int row = p.self_rows[static_cast<std::int64_t>(b) * f.kv_len + key];
        if (row < 0) continue;
        for (int hg = 0; hg < f.group; ++hg) {
            const int h = hk * f.group + hg;
            const T* dout = p.dout + b * p.dout_stride[0] + h * p.dout_stride[1] + row * p.dout_stride[2];
#pragma unroll
            for (int x = 0; x < DX; ++x) {
                const int d = dg + 16 * x;
                if (d < D) acc_v[c][x] += to_float(dout[d]);
            }
        }
    }
    // Every key of the block is written (0 past the sequence or where no row looks).
#pragma unroll
    for (int c = 0; c < TC; ++c) {
        const int key = k0 + jg + 16 * c;
        if (key >= f.kv_len) continue;
        T* dk = p.dk + b * p.dk_stride[0] + hk * p.dk_stride[1] + key * p.dk_stride[2];
        T* dv = p.dv + b * p.dv_stride[0] + hk * p.dv_stride[1] + key * p.dv_stride[2];
#pragma unroll
        for (int x = 0; x < DX; ++x) {
            const int d = dg + 16 * x;
            if (d < D) {
                dk[d] = from_float<T>(acc_k[c][x]);
                dv[d] = from_float<T>(acc_v[c][x]);
            }
        }
    }
}

}  // namespace detail
}  // namespace cuda
}  // namespace mmca
