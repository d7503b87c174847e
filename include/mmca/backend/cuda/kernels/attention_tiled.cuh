// mmca/backend/cuda/kernels/attention_tiled.cuh - the fused forward kernel for prefill-sized calls.
//
// One CTA of 4 warps computes one tile (up to 64 active query rows of one sequence, see
// attention_plan.hpp) for one query head; each warp owns 16 rows. Per row and per key group the
// warp keeps an online-softmax state (running max m, partial sum l, accumulator o (16 x D)), so
// the two MMCA softmaxes run side by side in ONE pass over the key blocks of the tile's key range:
//
//   for each key block [k0, k0 + BK) that some row of the tile can see (classify: prefix counts of
//   token types decide none / full / partial per row and group, no mask is ever materialised):
//       S = Q_w K^T * scale * log2(e)            16 x BK per warp (tensor cores, or FFMA for float)
//       for each group g the warp's rows use in this block:
//           where the block is only partly visible: S_g = member(row, key) ? S : -inf   (0: uniform)
//           m_g' = max(m_g, rowmax S_g);  o_g *= 2^(m_g - m_g');  P = 2^(S_g - m_g');  l_g += rowsum P
//           o_g += P V                            (P rounded to the input type for tensor cores)
//   out = o_0 / l_0 + o_1 / l_1 (+ V_j for rows with a self term)
//
// K/V blocks are double-buffered in shared memory with cp.async: the next used block is found and
// its copy started before the current block is computed. 16-bit types use mma.sync m16n8k16 with
// ldmatrix operands (BK = 64); float32 keeps the same register layout but computes with FFMA
// (BK = 32; no TF32, so it matches the CPU within float32 rounding).
#pragma once

#include "mmca/backend/cuda/attention_plan.hpp"
#include "mmca/backend/cuda/common.cuh"
#include "mmca/backend/cuda/kernels/attention_params.cuh"
#include "mmca/backend/cuda/kernels/mma_sm80.cuh"

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <type_traits>

namespace mmca {
namespace cuda {
namespace detail {

/// Compile-time shape of the tiled kernel for element type T and padded head dim DP.
template <class T, int DP>
struct tiled_shape {
    static_assert(DP % 16 == 0 && DP >= 16 && DP <= 128, "tiled kernel: padded head dim must be 16..128, step 16");
    static constexpr int threads = 128;
    static constexpr int warps = 4;
    static constexpr int rows = 64;                              // BM: query rows per tile (16 per warp)
    static constexpr bool tensor_cores = sizeof(T) == 2;
    static constexpr int keys = tensor_cores ? 64 : 32;          // BK: keys per block
    static constexpr int chunk = 16 / static_cast<int>(sizeof(T));  // elements per 16-byte copy
    static constexpr int stride = DP + chunk;                    // shared row stride: conflict-free ldmatrix / float4
    static constexpr int chunks_per_row = DP / chunk;
    static constexpr int key_tiles = keys / 8;                   // NT: 8-key column tiles of S
    static constexpr int dim_tiles = DP / 8;                     // DT: 8-wide column tiles of o
    /// Shared memory besides the block-boundary table (2 * bound_entries int32 at the end).
    static constexpr std::size_t smem_bytes =
        (static_cast<std::size_t>(rows) + 4u * keys) * stride * sizeof(T)  // Q, K[2], V[2]
        + rows * sizeof(device_row_plan)                                   // plans of the tile
        + rows * 4u * sizeof(range_edges)                                  // edges [row][group][range]
        + 2u * keys * sizeof(std::int32_t)                                 // key codes [slot][key]
        + 6u * rows;                                                       // covers [3 slots][group][row]
};

constexpr int tiled_rows = 64;                        // active rows per tile (the plan's tile_rows)
constexpr std::size_t max_bound_table_bytes = 16384;  // block-boundary table in shared memory, at most

/// The padded head dim of the tiled kernel instance that serves D (0: none).
inline int tiled_head_dim(std::int64_t D) {
    if (D <= 64) return 64;
    if (D <= 80) return 80;
    if (D <= 112) return 112;
    if (D <= 128) return 128;
    return 0;
}

template <class T>
std::size_t tiled_smem_bytes(int dp) {
    switch (dp) {
        case 64: return tiled_shape<T, 64>::smem_bytes;
        case 80: return tiled_shape<T, 80>::smem_bytes;
        case 112: return tiled_shape<T, 112>::smem_bytes;
        case 128: return tiled_shape<T, 128>::smem_bytes;
        default: return 0;
    }
}

/// Keys per block of the tiled kernel for device element type D.
template <class D>
constexpr std::int32_t tiled_block_keys() {
    return tiled_shape<D, 64>::keys;
}

/// Shared memory of a tiled-kernel launch: the block-boundary prefix counts go into shared memory
/// when the longest tile range allows (bound_entries per token type, else 0); smem is the launch's
/// dynamic size, smem_limit the most any launch of the instance asks for on a device with
/// max_shared_per_block bytes per block (the kernel's opt-in attribute).
struct tiled_launch_memory {
    std::int32_t bound_entries = 0;
    std::size_t smem = 0, smem_limit = 0;
};

template <class D>
tiled_launch_memory tiled_launch_memory_for(const attention_plan& plan, int dp, std::size_t max_shared_per_block) {
    const std::int32_t block = tiled_block_keys<D>();
    std::int32_t entries = 0;
    for (const device_tile& t : plan.tiles) entries = std::max(entries, t.key_hi / block - t.key_lo / block + 2);
    const std::size_t base = tiled_smem_bytes<D>(dp);
    const std::size_t with_table = base + 2u * static_cast<std::size_t>(entries) * sizeof(std::int32_t);
    const bool fits = entries * 2 * sizeof(std::int32_t) <= max_bound_table_bytes && with_table <= max_shared_per_block;
    tiled_launch_memory m;
    m.bound_entries = fits ? entries : 0;
    m.smem = fits ? with_table : base;
    m.smem_limit = std::min<std::size_t>(base + max_bound_table_bytes, max_shared_per_block);
    return m;
}

/// STATS: also write the statistics for the backward (a separate instance, so that the plain
/// forward keeps its register allocation).
template <class T, int DP, bool STATS = false>
__global__ void __launch_bounds__(128) attention_tiled_kernel(const attention_params<T> p) {
    using shape = tiled_shape<T, DP>;
    constexpr int BM = shape::rows, BK = shape::keys, STRIDE = shape::stride, NT = shape::key_tiles,
                  DT = shape::dim_tiles, CHUNK = shape::chunk, CPR = shape::chunks_per_row, THREADS = shape::threads;
    const float neg_inf = -INFINITY;

    MMCA_CUDA_DYNAMIC_SHARED(smem);
    T* s_q = reinterpret_cast<T*>(smem);                  // (BM, STRIDE)
    T* s_k = s_q + BM * STRIDE;                           // (2, BK, STRIDE)
    T* s_v = s_k + 2 * BK * STRIDE;                       // (2, BK, STRIDE)
    device_row_plan* s_plan = reinterpret_cast<device_row_plan*>(s_v + 2 * BK * STRIDE);  // (BM)
    range_edges* s_edge = reinterpret_cast<range_edges*>(s_plan + BM);                     // (BM, 2, 2)
    std::int32_t* s_code = reinterpret_cast<std::int32_t*>(s_edge + BM * 4);               // (2, BK)
    std::int8_t* s_cover = reinterpret_cast<std::int8_t*>(s_code + 2 * BK);                // (3, 2, BM)
    std::int32_t* s_bound = reinterpret_cast<std::int32_t*>(s_cover + 6 * BM);             // (2, bound_entries)

    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
    // CTA order (attention_config::order): tile-major starts the heaviest tiles of every head
    // first; head-major runs a few heads' tiles at a time, which then share their K/V in L2.
    int tile_index, h;
    if (p.head_major) {
        h = blockIdx.x / p.num_tiles;
        tile_index = blockIdx.x - h * p.num_tiles;
    } else {
        tile_index = blockIdx.x / p.q_heads;
        h = blockIdx.x - tile_index * p.q_heads;
    }
    const device_tile tile = p.tiles[tile_index];
    const int b = tile.batch, hk = h / p.group;
    const int seq_len = p.seq_kv_len[b];
    const int prefix_len = p.kv_len + 1;
    const std::int32_t* prefix = p.type_prefix + static_cast<std::int64_t>(b) * 2 * prefix_len;
    const std::int32_t* key_codes = p.key_codes + static_cast<std::int64_t>(b) * p.kv_len;
    const T* q_base = p.q + b * p.q_stride[0] + h * p.q_stride[1];
    const T* k_base = p.k + b * p.k_stride[0] + hk * p.k_stride[1];
    const T* v_base = p.v + b * p.v_stride[0] + hk * p.v_stride[1];
    const int first_block = tile.key_lo / BK, last_block = tile.key_hi / BK;
    const int bound_entries = p.bound_entries;

    // The tile's row plans (rows past the tile's count: all-zero plans, members of nothing).
    {
        constexpr int words = static_cast<int>(sizeof(device_row_plan) / sizeof(std::int32_t));
        const std::int32_t* src = reinterpret_cast<const std::int32_t*>(p.rows + tile.first);
        std::int32_t* dst = reinterpret_cast<std::int32_t*>(s_plan);
        for (int x = tid; x < BM * words; x += THREADS) dst[x] = x / words < tile.count ? src[x] : 0;
    }
    // Prefix counts at every block boundary of the tile's key range.
    if (bound_entries > 0) {
        const int n = last_block - first_block + 2;
        for (int x = tid; x < 2 * n; x += THREADS) {
            const int t = x / n, i = x - t * n;
            s_bound[t * bound_entries + i] = prefix[t * prefix_len + min((first_block + i) * BK, p.kv_len)];
        }
    }
    __syncthreads();
    // Each thread classifies one (row, group) for every block: r = tid % BM, g = tid / BM.
    const int my_class_row = tid & (BM - 1), my_class_group = tid / BM;
#pragma unroll
    for (int ri = 0; ri < 2; ++ri)
        s_edge[(my_class_row * 2 + my_class_group) * 2 + ri] =
            make_range_edges(s_plan[my_class_row].range[my_class_group][ri], prefix, prefix_len);

    // Q rows of the tile, gathered by row index; padding columns and missing rows are zero.
    for (int c = tid; c < BM * CPR; c += THREADS) {
        const int r = c / CPR, cc = c - r * CPR;
        T* dst = s_q + r * STRIDE + cc * CHUNK;
        if (r < tile.count && cc * CHUNK < p.head_dim)
            cp_async_16(dst, q_base + s_plan[r].row * p.q_stride[2] + cc * CHUNK);
        else
            *reinterpret_cast<uint4*>(dst) = make_uint4(0u, 0u, 0u, 0u);
    }
    cp_async_commit();

    // Classifies the block at k0 for every (row, group) into s_cover[slot] (3 slots: the block being
    // classified, the block whose data is in flight, and the block some warp may still compute);
    // true when any row uses the block. The barrier inside also tells that every warp has finished
    // the block before the current one, so its K/V buffer may be refilled.
    // Reads only shared memory (plans, range edges, block boundaries) unless the boundary table did
    // not fit, then two prefix entries per type from global memory.
    auto classify = [&](int k0, int slot) -> bool {
        std::int8_t c = cover_ignore;
        if (my_class_row < tile.count) {
            const device_row_plan& plan = s_plan[my_class_row];
            const range_edges(&edges)[2] =
                *reinterpret_cast<const range_edges(*)[2]>(s_edge + (my_class_row * 2 + my_class_group) * 2);
            auto boundary = [&](int t, int k) -> std::int32_t {
                if (bound_entries > 0) return s_bound[t * bound_entries + k / BK - first_block];
                return prefix[t * prefix_len + min(k, p.kv_len)];
            };
            c = classify_block_edges(plan.range[my_class_group], edges, k0, k0 + BK, boundary);
        }
        s_cover[(slot * 2 + my_class_group) * BM + my_class_row] = c;
        return __syncthreads_or(c == cover_full || c == cover_partial) != 0;
    };

    // Starts the copy of the key block at k0 into buffer `slot`; keys past the sequence are zero.
    auto load_block = [&](int k0, int slot) {
        T* dk = s_k + slot * BK * STRIDE;
        T* dv = s_v + slot * BK * STRIDE;
        for (int c = tid; c < BK * CPR; c += THREADS) {
            const int r = c / CPR, cc = c - r * CPR;
            const int key = k0 + r;
            const int off = r * STRIDE + cc * CHUNK;
            if (key < seq_len && cc * CHUNK < p.head_dim) {
                cp_async_16(dk + off, k_base + key * p.k_stride[2] + cc * CHUNK);
                cp_async_16(dv + off, v_base + key * p.v_stride[2] + cc * CHUNK);
            } else {
                *reinterpret_cast<uint4*>(dk + off) = make_uint4(0u, 0u, 0u, 0u);
                *reinterpret_cast<uint4*>(dv + off) = make_uint4(0u, 0u, 0u, 0u);
            }
        }
        for (int x = tid; x < BK; x += THREADS) {
            const int key = k0 + x;
            if (key < seq_len)
                cp_async_4(s_code + slot * BK + x, key_codes + key);
            else
                s_code[slot * BK + x] = 0;  // pad, no image
        }
        cp_async_commit();
    };

    // Per-thread state: rows r0 = 16 warp + group_id and r1 = r0 + 8 of the warp's tile rows.
    const int group_id = lane >> 2, quad = lane & 3;
    const int r0 = warp * 16 + group_id, r1 = r0 + 8;
    float o[2][DT][4];
    float m[2][2], l[2][2];
#pragma unroll
    for (int g = 0; g < 2; ++g) {
#pragma unroll
        for (int dt = 0; dt < DT; ++dt)
#pragma unroll
            for (int e = 0; e < 4; ++e) o[g][dt][e] = 0.0f;
        m[g][0] = m[g][1] = neg_inf;
        l[g][0] = l[g][1] = 0.0f;
    }

    // One key block for this warp's 16 rows.
    auto compute_block = [&](int k0, int slot, int cover_slot) {
        const int my_row = warp * 16 + (lane & 15), my_group = lane >> 4;
        const std::int8_t c = s_cover[(cover_slot * 2 + my_group) * BM + my_row];
        const bool my_uniform = (s_plan[my_row].flags & (my_group == 0 ? plan_uniform0 : plan_uniform1)) != 0;
        const bool my_used = c == cover_full || c == cover_partial;
        const unsigned used_bits = __ballot_sync(0xffffffffu, my_used);
        if (used_bits == 0u) return;
        const unsigned masked_bits =
            __ballot_sync(0xffffffffu, c == cover_none || c == cover_partial || (my_uniform && c == cover_full));
        const unsigned score_bits = __ballot_sync(0xffffffffu, my_used && !my_uniform);

        const T* ks = s_k + slot * BK * STRIDE;
        const T* vs = s_v + slot * BK * STRIDE;

        float s[NT][4];
#pragma unroll
        for (int nt = 0; nt < NT; ++nt)
#pragma unroll
            for (int e = 0; e < 4; ++e) s[nt][e] = 0.0f;
        if (score_bits != 0u) {
            if constexpr (shape::tensor_cores) {
#pragma unroll
                for (int kstep = 0; kstep < DP / 16; ++kstep) {
                    std::uint32_t a[4];
                    ldmatrix_x4(a, s_q + (warp * 16 + (lane & 15)) * STRIDE + kstep * 16 + (lane >> 4) * 8);
#pragma unroll
                    for (int nt = 0; nt < NT; nt += 2) {
                        std::uint32_t kb[4];
                        ldmatrix_x4(kb, ks + (nt * 8 + (lane >> 4) * 8 + (lane & 7)) * STRIDE + kstep * 16 +
                                            ((lane >> 3) & 1) * 8);
                        mma_16816<T>(s[nt], a, kb[0], kb[1]);
                        mma_16816<T>(s[nt + 1], a, kb[2], kb[3]);
                    }
                }
            } else {
#pragma unroll 4
                for (int d = 0; d < DP; d += 4) {
                    const float4 qa = *reinterpret_cast<const float4*>(s_q + r0 * STRIDE + d);
                    const float4 qb = *reinterpret_cast<const float4*>(s_q + r1 * STRIDE + d);
#pragma unroll
                    for (int nt = 0; nt < NT; ++nt)
#pragma unroll
                        for (int e = 0; e < 2; ++e) {
                            const float4 kv =
                                *reinterpret_cast<const float4*>(ks + (nt * 8 + 2 * quad + e) * STRIDE + d);
                            float sa = s[nt][e], sb = s[nt][2 + e];
                            sa = fmaf(qa.x, kv.x, sa);
                            sa = fmaf(qa.y, kv.y, sa);
                            sa = fmaf(qa.z, kv.z, sa);
                            sa = fmaf(qa.w, kv.w, sa);
                            sb = fmaf(qb.x, kv.x, sb);
                            sb = fmaf(qb.y, kv.y, sb);
                            sb = fmaf(qb.z, kv.z, sb);
                            sb = fmaf(qb.w, kv.w, sb);
                            s[nt][e] = sa;
                            s[nt][2 + e] = sb;
                        }
                }
            }
#pragma unroll
            for (int nt = 0; nt < NT; ++nt)
#pragma unroll
                for (int e = 0; e < 4; ++e) s[nt][e] *= p.scale_log2;
        }

#pragma unroll
        for (int g = 0; g < 2; ++g) {
            const unsigned half_bits = g == 0 ? (used_bits & 0xffffu) : (used_bits >> 16);
            if (half_bits == 0u) continue;
            const bool masked = (g == 0 ? (masked_bits & 0xffffu) : (masked_bits >> 16)) != 0u;
            float x[NT][4];
            if (masked) {
                const int bit = g == 0 ? plan_uniform0 : plan_uniform1;
                const device_row_plan& pa = s_plan[r0];
                const device_row_plan& pb = s_plan[r1];
                const device_key_range a0 = pa.range[g][0], a1 = pa.range[g][1];
                const device_key_range b0 = pb.range[g][0], b1 = pb.range[g][1];
                const bool uniform_a = (pa.flags & bit) != 0, uniform_b = (pb.flags & bit) != 0;
#pragma unroll
                for (int nt = 0; nt < NT; ++nt)
#pragma unroll
                    for (int e = 0; e < 2; ++e) {
                        const int local = nt * 8 + 2 * quad + e;
                        const int key = k0 + local;
                        const int code = s_code[slot * BK + local];
                        const int type = key_code_type(code), id = key_code_image(code);
                        const bool in_a = range_contains(a0, key, type, id) || range_contains(a1, key, type, id);
                        const bool in_b = range_contains(b0, key, type, id) || range_contains(b1, key, type, id);
                        x[nt][e] = in_a ? (uniform_a ? 0.0f : s[nt][e]) : neg_inf;
                        x[nt][2 + e] = in_b ? (uniform_b ? 0.0f : s[nt][2 + e]) : neg_inf;
                    }
            } else {
#pragma unroll
                for (int nt = 0; nt < NT; ++nt)
#pragma unroll
                    for (int e = 0; e < 4; ++e) x[nt][e] = s[nt][e];
            }

            // Online softmax update of both rows of the thread (each row lives in a quad of lanes).
            float mx[2] = {neg_inf, neg_inf};
#pragma unroll
            for (int nt = 0; nt < NT; ++nt) {
                mx[0] = fmaxf(mx[0], fmaxf(x[nt][0], x[nt][1]));
                mx[1] = fmaxf(mx[1], fmaxf(x[nt][2], x[nt][3]));
            }
            float shift[2], alpha[2];
#pragma unroll
            for (int hr = 0; hr < 2; ++hr) {
                mx[hr] = fmaxf(mx[hr], __shfl_xor_sync(0xffffffffu, mx[hr], 1));
                mx[hr] = fmaxf(mx[hr], __shfl_xor_sync(0xffffffffu, mx[hr], 2));
                const float new_max = fmaxf(m[g][hr], mx[hr]);
                shift[hr] = new_max == neg_inf ? 0.0f : new_max;
                alpha[hr] = exp2f(m[g][hr] - shift[hr]);  // 0 while the row has seen no key
                m[g][hr] = new_max;
                l[g][hr] *= alpha[hr];
            }
            // Rescale the accumulators unless no row of the warp raised its maximum (the common case
            // once a row has seen a few blocks).
            if (__any_sync(0xffffffffu, alpha[0] != 1.0f || alpha[1] != 1.0f)) {
#pragma unroll
                for (int dt = 0; dt < DT; ++dt) {
                    o[g][dt][0] *= alpha[0];
                    o[g][dt][1] *= alpha[0];
                    o[g][dt][2] *= alpha[1];
                    o[g][dt][3] *= alpha[1];
                }
            }
#pragma unroll
            for (int nt = 0; nt < NT; ++nt)
#pragma unroll
                for (int e = 0; e < 4; ++e) {
                    x[nt][e] = exp2f(x[nt][e] - shift[e >> 1]);  // exp2(-inf) = 0 for non-members
                    l[g][e >> 1] += x[nt][e];
                }

            // o_g += P V.
            if constexpr (shape::tensor_cores) {
#pragma unroll
                for (int kc = 0; kc < BK / 16; ++kc) {
                    std::uint32_t a[4];
                    a[0] = pack_pair<T>(x[2 * kc][0], x[2 * kc][1]);
                    a[1] = pack_pair<T>(x[2 * kc][2], x[2 * kc][3]);
                    a[2] = pack_pair<T>(x[2 * kc + 1][0], x[2 * kc + 1][1]);
                    a[3] = pack_pair<T>(x[2 * kc + 1][2], x[2 * kc + 1][3]);
#pragma unroll
                    for (int dt = 0; dt < DT; dt += 2) {
                        std::uint32_t vb[4];
                        ldmatrix_x4_trans(vb, vs + (kc * 16 + ((lane >> 3) & 1) * 8 + (lane & 7)) * STRIDE + dt * 8 +
                                                  (lane >> 4) * 8);
                        mma_16816<T>(o[g][dt], a, vb[0], vb[1]);
                        mma_16816<T>(o[g][dt + 1], a, vb[2], vb[3]);
                    }
                }
            } else {
#pragma unroll
                for (int nt = 0; nt < NT; ++nt)
#pragma unroll
                    for (int e = 0; e < 2; ++e)
#pragma unroll
                        for (int j = 0; j < 4; ++j) {
                            // Key nt*8 + 2j + e: its weights live in lane (group_id, quad = j).
                            const int src = (lane & ~3) | j;
                            const float pa = __shfl_sync(0xffffffffu, x[nt][e], src);
                            const float pb = __shfl_sync(0xffffffffu, x[nt][2 + e], src);
                            const T* vrow = vs + (nt * 8 + 2 * j + e) * STRIDE + 2 * quad;
#pragma unroll
                            for (int dt = 0; dt < DT; ++dt) {
                                const float2 vv = *reinterpret_cast<const float2*>(vrow + dt * 8);
                                o[g][dt][0] = fmaf(pa, vv.x, o[g][dt][0]);
                                o[g][dt][1] = fmaf(pa, vv.y, o[g][dt][1]);
                                o[g][dt][2] = fmaf(pb, vv.x, o[g][dt][2]);
                                o[g][dt][3] = fmaf(pb, vv.y, o[g][dt][3]);
                            }
                        }
            }
        }
    };

    // The key blocks of the tile's range, skipping those no row sees; the next used block is copied
    // while the current one is computed. Two barriers per block: the one in classify (every warp is
    // done with the previous block, whose buffers the next copy reuses) and the one that publishes
    // the current block's copy.
    int block = first_block;
    int slot = 0, cover_slot = 0;
    while (block <= last_block && !classify(block * BK, cover_slot)) ++block;
    if (block <= last_block) load_block(block * BK, slot);
    while (block <= last_block) {
        const int next_cover = cover_slot == 2 ? 0 : cover_slot + 1;
        int next = block + 1;
        while (next <= last_block && !classify(next * BK, next_cover)) ++next;
        if (next <= last_block) {
            load_block(next * BK, slot ^ 1);
            cp_async_wait<1>();
        } else {
            cp_async_wait<0>();
        }
        __syncthreads();
        compute_block(block * BK, slot, cover_slot);
        block = next;
        slot ^= 1;
        cover_slot = next_cover;
    }
    cp_async_wait<0>();  // a tile whose rows see no block still committed its Q copy

    // Epilogue: finish the row sums, normalise each group, add the self term, store.
#pragma unroll
    for (int g = 0; g < 2; ++g)
#pragma unroll
        for (int hr = 0; hr < 2; ++hr) {
            l[g][hr] += __shfl_xor_sync(0xffffffffu, l[g][hr], 1);
            l[g][hr] += __shfl_xor_sync(0xffffffffu, l[g][hr], 2);
        }
#pragma unroll
    for (int hr = 0; hr < 2; ++hr) {
        const int r = hr == 0 ? r0 : r1;
        if (r >= tile.count) continue;
        const device_row_plan& plan = s_plan[r];
        const float inv0 = l[0][hr] > 0.0f ? 1.0f / l[0][hr] : 0.0f;
        const float inv1 = l[1][hr] > 0.0f ? 1.0f / l[1][hr] : 0.0f;
        T* out_row = p.out + b * p.out_stride[0] + h * p.out_stride[1] + plan.row * p.out_stride[2];
        const T* self_row = (plan.flags & plan_self_term) ? v_base + plan.position * p.v_stride[2] : nullptr;
#pragma unroll
        for (int dt = 0; dt < DT; ++dt) {
            const int d = dt * 8 + 2 * quad;
            if (d >= p.head_dim) continue;
            float lo = o[0][dt][2 * hr] * inv0 + o[1][dt][2 * hr] * inv1;
            float hi = o[0][dt][2 * hr + 1] * inv0 + o[1][dt][2 * hr + 1] * inv1;
            if (self_row != nullptr) {
                lo += to_float(self_row[d]);
                hi += to_float(self_row[d + 1]);
            }
            store_pair(out_row + d, lo, hi);
        }
        if constexpr (STATS) {
            // Statistics for the backward: row max (natural-log units), row sum and O_g per group.
            const std::int64_t stat = stat_row(p, b, h, plan.row);
            if (quad == 0) {
#pragma unroll
                for (int g = 0; g < 2; ++g) {
                    const bool empty = !(l[g][hr] > 0.0f);
                    p.stat_max[stat * 2 + g] = empty ? neg_inf : m[g][hr] * stat_ln2;
                    p.stat_sum[stat * 2 + g] = empty ? 0.0f : l[g][hr];
                }
            }
            float* stat_out = p.stat_out + stat * 2 * p.head_dim;
#pragma unroll
            for (int dt = 0; dt < DT; ++dt) {
                const int d = dt * 8 + 2 * quad;
                if (d >= p.head_dim) continue;
                stat_out[d] = o[0][dt][2 * hr] * inv0;
                stat_out[d + 1] = o[0][dt][2 * hr + 1] * inv0;
                stat_out[p.head_dim + d] = o[1][dt][2 * hr] * inv1;
                stat_out[p.head_dim + d + 1] = o[1][dt][2 * hr + 1] * inv1;
            }
        }
    }
}

}  // namespace detail
}  // namespace cuda
}  // namespace mmca
