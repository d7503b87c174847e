// mmca/backend/cuda/kernels/attention_backward_mma.cuh - the tensor-core kernels of the CUDA
// attention backward (16-bit inputs, head dims up to 128, sm_80 or newer).
//
// The same three steps as kernels/attention_backward.cuh (the terms kernel there runs first and
// gives each (active row, head, group) its log2-scaled max m2, reciprocal sum 1/l and
// delta = dO . O_g), with every block product on mma.sync m16n8k16 in the fragment layout of the
// forward's tiled kernel (kernels/mma_sm80.cuh):
//
//   dQ kernel, one CTA of 4 warps per (tile of 64 active rows, query head); warp w owns rows
//   16w .. 16w + 15. Per key block [k0, k0 + 64) that a non-uniform group of some row meets:
//       S  = Q Kᵀ,  dP = dO Vᵀ                      (16 x 64 per warp, operands by ldmatrix)
//       dS = scale · Σ_g [key in g] P_g ∘ (dP − delta_g),  P_g = 2^(S·scale·log2e − m2_g) / l_g
//       dQ += dS K                                  (dS rounded to the input type, K by ldmatrix.trans)
//
//   dK/dV kernel, one CTA of 4 warps per (key block of 64, kv head, sequence); warp w owns keys
//   k0 + 16w .. k0 + 16w + 15. Per query head of the kv head's group and per tile of the sequence
//   whose key range meets the block, in two halves of 32 rows (fewer live registers):
//       Sᵀ = K Qᵀ,  dPᵀ = V dOᵀ                     (16 keys x 32 rows per warp)
//       Pᵀ  = Σ_g [key in g] P_g                    (uniform groups: 1 / l_g)
//       dSᵀ = scale · Σ_{g non-uniform} [key in g] P_g ∘ (dP − delta_g)
//       dV += Pᵀ dO,  dK += dSᵀ Q                   (P and dS rounded to the input type)
//   then the self terms (rows whose output adds V_j send dO to dV at j), as the float kernels do.
//
// Group membership per (row, key) is decided the way the forward decides it: each (row, group) is
// classified against the key block as none / full / partial from prefix counts of token types, and
// only partial ones test keys one by one. Each gradient element is written once (no atomics): the
// results are deterministic. Operands are copied to shared memory with cp.async (single-buffered:
// about 77 KB per CTA at D = 128, so that several CTAs share an SM).
#pragma once

#include "mmca/backend/cuda/attention_plan.hpp"
#include "mmca/backend/cuda/common.cuh"
#include "mmca/backend/cuda/kernels/attention_backward.cuh"
#include "mmca/backend/cuda/kernels/attention_params.cuh"
#include "mmca/backend/cuda/kernels/mma_sm80.cuh"

#include <cstddef>
#include <cstdint>

namespace mmca {
namespace cuda {
namespace detail {

/// Compile-time shape of the tensor-core backward for 16-bit element type T and padded head dim DP.
template <class T, int DP>
struct bwd_mma_shape {
    static_assert(sizeof(T) == 2, "the tensor-core backward takes 16-bit inputs");
    static_assert(DP % 16 == 0 && DP >= 16 && DP <= 128, "tensor-core backward: padded head dim 16..128, step 16");
    static constexpr int threads = 128;
    static constexpr int warps = 4;
    static constexpr int rows = 64;            // query rows per tile (16 per warp in the dQ kernel)
    static constexpr int keys = 64;            // keys per block (16 per warp in the dK/dV kernel)
    static constexpr int chunk = 8;            // elements per 16-byte copy
    static constexpr int stride = DP + chunk;  // shared row stride: conflict-free ldmatrix
    static constexpr int col_tiles = 8;        // 8-wide column tiles of a warp's 16 x 64 S (or Sᵀ)
    static constexpr int dim_tiles = DP / 8;   // 8-wide column tiles of a warp's accumulators
    /// Q, dO, K and V tiles, the tile's row plans and terms, the key codes of the block and the
    /// (group, row) covers.
    static constexpr std::size_t smem_bytes = 4u * 64u * stride * sizeof(T) + rows * sizeof(device_row_plan) +
                                              2u * rows * sizeof(float4) + keys * sizeof(std::int32_t) + 2u * rows;
};

/// The shared memory of both kernels, carved from the dynamic buffer (bwd_mma_shape::smem_bytes).
template <class T, int DP>
struct bwd_mma_smem {
    static constexpr int stride = bwd_mma_shape<T, DP>::stride;
    T* q;                   // (64, stride) Q rows of the tile
    T* dout;                // (64, stride) dO rows of the tile
    T* k;                   // (64, stride) K rows of the key block
    T* v;                   // (64, stride) V rows of the key block
    device_row_plan* plan;  // (64) row plans of the tile
    float4* terms;          // (64, 2) {m2, 1 / l, delta, 0} per row and group
    std::int32_t* code;     // (64) key codes of the block
    std::int8_t* cover;     // (2, 64) how each (group, row) meets the block

    __device__ explicit bwd_mma_smem(unsigned char* smem) {
        q = reinterpret_cast<T*>(smem);
        dout = q + 64 * stride;
        k = dout + 64 * stride;
        v = k + 64 * stride;
        plan = reinterpret_cast<device_row_plan*>(v + 64 * stride);
        terms = reinterpret_cast<float4*>(plan + 64);
        code = reinterpret_cast<std::int32_t*>(terms + 2 * 64);
        cover = reinterpret_cast<std::int8_t*>(code + 64);
    }
};

/// Copies `rows` rows of DP elements into shared memory rows of `stride` elements with cp.async;
/// source(r) is row r's first element, or null for a row of zeros. Columns from head_dim on are
/// zero (head_dim a multiple of 8). Does not commit.
template <int DP, int STRIDE, class T, class Source>
__device__ __forceinline__ void bwd_copy_rows(T* dst, int rows, int head_dim, const Source& source) {
    constexpr int CHUNK = 8, CPR = DP / CHUNK;
    for (int c = threadIdx.x; c < rows * CPR; c += 128) {
        const int r = c / CPR, cc = c - r * CPR;
        T* d = dst + r * STRIDE + cc * CHUNK;
        const T* s = source(r);
        if (s != nullptr && cc * CHUNK < head_dim)
            cp_async_16(d, s + cc * CHUNK);
        else
            *reinterpret_cast<uint4*>(d) = make_uint4(0u, 0u, 0u, 0u);
    }
}

/// The row plans and terms (head h) of a tile into shared memory; rows past the tile's count get
/// empty plans (members of nothing) and zero terms.
template <class T>
__device__ __forceinline__ void bwd_mma_load_rows(const attention_backward_params<T>& p, const device_tile& tile, int h,
                                                  device_row_plan* s_plan, float4* s_terms) {
    constexpr int words = static_cast<int>(sizeof(device_row_plan) / sizeof(std::int32_t));
    const std::int32_t* src = reinterpret_cast<const std::int32_t*>(p.f.rows + tile.first);
    std::int32_t* dst = reinterpret_cast<std::int32_t*>(s_plan);
    for (int x = threadIdx.x; x < 64 * words; x += 128) dst[x] = x / words < tile.count ? src[x] : 0;
    if (threadIdx.x < 128) {
        const int r = threadIdx.x >> 1, g = threadIdx.x & 1;
        s_terms[2 * r + g] = r < tile.count
                                 ? p.terms[(static_cast<std::int64_t>(tile.first + r) * p.f.q_heads + h) * 2 + g]
                                 : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    }
}

/// The weight and gradient contributions of one (row, key) pair: prob = Σ_g [key in g] P_g and
/// grad = Σ_{g non-uniform} [key in g] P_g (dp − delta_g), for a log2-scaled score x.
__device__ __forceinline__ void bwd_pair(const device_row_plan& plan, const float4 (&terms)[2],
                                         const std::int8_t (&cover)[2], int key, int code, float x, float dp,
                                         float& prob, float& grad) {
    prob = 0.0f;
    grad = 0.0f;
#pragma unroll
    for (int g = 0; g < 2; ++g) {
        if (cover[g] == cover_none) continue;
        if (cover[g] == cover_partial &&
            !group_contains(plan, g, key, key_code_type(code), key_code_image(code)))
            continue;
        const float4 t = terms[g];
        if (plan.flags & (g == 0 ? plan_uniform0 : plan_uniform1)) {
            prob += t.y;
        } else {
            const float pg = exp2f(x - t.x) * t.y;
            prob += pg;
            grad += pg * (dp - t.z);
        }
    }
}

/// S (or Sᵀ) and dP (or dPᵀ) of a warp: 16 rows of `a_rows` / `g_rows` (row stride STRIDE, the
/// warp's first row) against the 8 NT rows of `b_rows` / `v_rows`.
template <class T, int DP, int STRIDE, int NT>
__device__ __forceinline__ void bwd_mma_scores(const T* a_rows, const T* g_rows, const T* b_rows, const T* v_rows,
                                               float (&s)[NT][4], float (&dp)[NT][4]) {
    const int lane = threadIdx.x & 31;
#pragma unroll
    for (int nt = 0; nt < NT; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e) s[nt][e] = dp[nt][e] = 0.0f;
#pragma unroll
    for (int kstep = 0; kstep < DP / 16; ++kstep) {
        std::uint32_t a[4], g[4];
        const int a_off = (lane & 15) * STRIDE + kstep * 16 + (lane >> 4) * 8;
        ldmatrix_x4(a, a_rows + a_off);
        ldmatrix_x4(g, g_rows + a_off);
#pragma unroll
        for (int nt = 0; nt < NT; nt += 2) {
            const int b_off = (nt * 8 + (lane >> 4) * 8 + (lane & 7)) * STRIDE + kstep * 16 + ((lane >> 3) & 1) * 8;
            std::uint32_t kb[4], vb[4];
            ldmatrix_x4(kb, b_rows + b_off);
            mma_16816<T>(s[nt], a, kb[0], kb[1]);
            mma_16816<T>(s[nt + 1], a, kb[2], kb[3]);
            ldmatrix_x4(vb, v_rows + b_off);
            mma_16816<T>(dp[nt], g, vb[0], vb[1]);
            mma_16816<T>(dp[nt + 1], g, vb[2], vb[3]);
        }
    }
}

/// acc (16 x DP per warp) += W X: W (16 x 8 NT) in the C-fragment layout of bwd_mma_scores, rounded
/// to T; X the 8 NT rows of `x_rows` (row stride STRIDE), read transposed by ldmatrix.
template <class T, int DP, int STRIDE, int NT>
__device__ __forceinline__ void bwd_mma_accumulate(const float (&w)[NT][4], const T* x_rows, float (&acc)[DP / 8][4]) {
    const int lane = threadIdx.x & 31;
#pragma unroll
    for (int kc = 0; kc < NT / 2; ++kc) {
        std::uint32_t a[4];
        a[0] = pack_pair<T>(w[2 * kc][0], w[2 * kc][1]);
        a[1] = pack_pair<T>(w[2 * kc][2], w[2 * kc][3]);
        a[2] = pack_pair<T>(w[2 * kc + 1][0], w[2 * kc + 1][1]);
        a[3] = pack_pair<T>(w[2 * kc + 1][2], w[2 * kc + 1][3]);
#pragma unroll
        for (int dt = 0; dt < DP / 8; dt += 2) {
            std::uint32_t xb[4];
            ldmatrix_x4_trans(xb, x_rows + (kc * 16 + ((lane >> 3) & 1) * 8 + (lane & 7)) * STRIDE + dt * 8 +
                                      (lane >> 4) * 8);
            mma_16816<T>(acc[dt], a, xb[0], xb[1]);
            mma_16816<T>(acc[dt + 1], a, xb[2], xb[3]);
        }
    }
}

/// dQ. Grid (tiles, Hq), 128 threads; tiles of 64 rows (a plan built with tile_rows = 64).
template <class T, int DP>
__global__ void __launch_bounds__(128) attention_bwd_dq_mma_kernel(const attention_backward_params<T> p) {
    using shape = bwd_mma_shape<T, DP>;
    constexpr int BM = shape::rows, BK = shape::keys, STRIDE = shape::stride, DT = shape::dim_tiles;
    MMCA_CUDA_DYNAMIC_SHARED(smem);
    const bwd_mma_smem<T, DP> sm(smem);

    const attention_params<T>& f = p.f;
    const device_tile tile = f.tiles[blockIdx.x];
    const int h = blockIdx.y, b = tile.batch, hk = h / f.group, D = f.head_dim;
    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
    const int seq_len = f.seq_kv_len[b], prefix_len = f.kv_len + 1;
    const std::int32_t* prefix = f.type_prefix + static_cast<std::int64_t>(b) * 2 * prefix_len;
    const std::int32_t* codes = f.key_codes + static_cast<std::int64_t>(b) * f.kv_len;
    const T* q_base = f.q + b * f.q_stride[0] + h * f.q_stride[1];
    const T* do_base = p.dout + b * p.dout_stride[0] + h * p.dout_stride[1];
    const T* k_base = f.k + b * f.k_stride[0] + hk * f.k_stride[1];
    const T* v_base = f.v + b * f.v_stride[0] + hk * f.v_stride[1];

    bwd_mma_load_rows(p, tile, h, sm.plan, sm.terms);
    __syncthreads();
    bwd_copy_rows<DP, STRIDE>(sm.q, BM, D, [&](int r) -> const T* {
        return r < tile.count ? q_base + sm.plan[r].row * f.q_stride[2] : nullptr;
    });
    bwd_copy_rows<DP, STRIDE>(sm.dout, BM, D, [&](int r) -> const T* {
        return r < tile.count ? do_base + sm.plan[r].row * p.dout_stride[2] : nullptr;
    });
    cp_async_commit();

    const int group_id = lane >> 2, quad = lane & 3;
    const int r0 = warp * 16 + group_id;
    float acc[DT][4];
#pragma unroll
    for (int dt = 0; dt < DT; ++dt)
#pragma unroll
        for (int e = 0; e < 4; ++e) acc[dt][e] = 0.0f;

    // Thread tid classifies (row tid % 64, group tid / 64) against each block.
    const int class_row = tid & (BM - 1), class_group = tid >> 6;
    const int first = tile.key_lo / BK, last = min(tile.key_hi, seq_len - 1) / BK;
    for (int blk = first; blk <= last; ++blk) {
        const int k0 = blk * BK;
        std::int8_t c = cover_none;
        if (class_row < tile.count)
            c = classify_block(sm.plan[class_row], class_group, prefix, prefix_len, k0, k0 + BK);
        const bool scored = c != cover_none &&
                            !(sm.plan[class_row].flags & (class_group == 0 ? plan_uniform0 : plan_uniform1));
        __syncthreads();  // every warp is done with the previous block's covers, K, V and codes
        sm.cover[class_group * BM + class_row] = c;
        // Uniform groups send no gradient to Q: a block only they meet is skipped.
        if (!__syncthreads_or(scored)) continue;
        const int keys = min(BK, seq_len - k0);
        bwd_copy_rows<DP, STRIDE>(sm.k, BK, D, [&](int r) -> const T* {
            return r < keys ? k_base + static_cast<std::int64_t>(k0 + r) * f.k_stride[2] : nullptr;
        });
        bwd_copy_rows<DP, STRIDE>(sm.v, BK, D, [&](int r) -> const T* {
            return r < keys ? v_base + static_cast<std::int64_t>(k0 + r) * f.v_stride[2] : nullptr;
        });
        if (tid < BK) sm.code[tid] = tid < keys ? codes[k0 + tid] : 0;
        cp_async_commit();
        cp_async_wait<0>();
        __syncthreads();

        float s[8][4], dp[8][4];
        bwd_mma_scores<T, DP, STRIDE, 8>(sm.q + warp * 16 * STRIDE, sm.dout + warp * 16 * STRIDE, sm.k, sm.v, s, dp);
#pragma unroll
        for (int hr = 0; hr < 2; ++hr) {
            const int row = r0 + 8 * hr;
            const device_row_plan& plan = sm.plan[row];
            const float4 terms[2] = {sm.terms[2 * row], sm.terms[2 * row + 1]};
            std::int8_t cover[2] = {sm.cover[row], sm.cover[BM + row]};
            // Uniform groups take no part in dS.
            if (plan.flags & plan_uniform0) cover[0] = cover_none;
            if (plan.flags & plan_uniform1) cover[1] = cover_none;
#pragma unroll
            for (int nt = 0; nt < 8; ++nt)
#pragma unroll
                for (int e = 0; e < 2; ++e) {
                    const int local = nt * 8 + 2 * quad + e;
                    float prob, grad;
                    bwd_pair(plan, terms, cover, k0 + local, sm.code[local], s[nt][2 * hr + e] * f.scale_log2,
                             dp[nt][2 * hr + e], prob, grad);
                    s[nt][2 * hr + e] = grad * p.scale;
                }
        }
        bwd_mma_accumulate<T, DP, STRIDE, 8>(s, sm.k, acc);
    }
    cp_async_wait<0>();  // a tile that met no block still committed its Q / dO copy

#pragma unroll
    for (int hr = 0; hr < 2; ++hr) {
        const int row = r0 + 8 * hr;
        if (row >= tile.count) continue;
        T* dq = p.dq + b * p.dq_stride[0] + h * p.dq_stride[1] + sm.plan[row].row * p.dq_stride[2];
#pragma unroll
        for (int dt = 0; dt < DT; ++dt) {
            const int d = dt * 8 + 2 * quad;
            if (d < D) store_pair(dq + d, acc[dt][2 * hr], acc[dt][2 * hr + 1]);
        }
    }
}

/// dK and dV. Grid (key blocks of 64, Hkv, B), 128 threads.
template <class T, int DP>
__global__ void __launch_bounds__(128) attention_bwd_dkdv_mma_kernel(const attention_backward_params<T> p) {
    using shape = bwd_mma_shape<T, DP>;
    constexpr int BM = shape::rows, BK = shape::keys, STRIDE = shape::stride, DT = shape::dim_tiles;
    MMCA_CUDA_DYNAMIC_SHARED(smem);
    const bwd_mma_smem<T, DP> sm(smem);

    const attention_params<T>& f = p.f;
    const int k0 = blockIdx.x * BK, hk = blockIdx.y, b = blockIdx.z, D = f.head_dim;
    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
    const int seq_len = f.seq_kv_len[b], prefix_len = f.kv_len + 1;
    const int keys = max(0, min(BK, seq_len - k0));
    const std::int32_t* prefix = f.type_prefix + static_cast<std::int64_t>(b) * 2 * prefix_len;
    const std::int32_t* codes = f.key_codes + static_cast<std::int64_t>(b) * f.kv_len;
    const T* k_base = f.k + b * f.k_stride[0] + hk * f.k_stride[1];
    const T* v_base = f.v + b * f.v_stride[0] + hk * f.v_stride[1];

    bwd_copy_rows<DP, STRIDE>(sm.k, BK, D, [&](int r) -> const T* {
        return r < keys ? k_base + static_cast<std::int64_t>(k0 + r) * f.k_stride[2] : nullptr;
    });
    bwd_copy_rows<DP, STRIDE>(sm.v, BK, D, [&](int r) -> const T* {
        return r < keys ? v_base + static_cast<std::int64_t>(k0 + r) * f.v_stride[2] : nullptr;
    });
    if (tid < BK) sm.code[tid] = tid < keys ? codes[k0 + tid] : 0;
    cp_async_commit();

    const int group_id = lane >> 2, quad = lane & 3;
    const int key_row0 = warp * 16 + group_id;  // the thread's keys: key_row0 and key_row0 + 8 of the block
    float acc_k[DT][4], acc_v[DT][4];
#pragma unroll
    for (int dt = 0; dt < DT; ++dt)
#pragma unroll
        for (int e = 0; e < 4; ++e) acc_k[dt][e] = acc_v[dt][e] = 0.0f;

    const int class_row = tid & (BM - 1), class_group = tid >> 6;
    const int tiles_begin = p.seq_tile_begin[b], tiles_end = p.seq_tile_begin[b + 1];
    for (int hg = 0; hg < f.group && keys > 0; ++hg) {
        const int h = hk * f.group + hg;
        const T* q_base = f.q + b * f.q_stride[0] + h * f.q_stride[1];
        const T* do_base = p.dout + b * p.dout_stride[0] + h * p.dout_stride[1];
        for (int t = tiles_begin; t < tiles_end; ++t) {
            const device_tile tile = p.seq_tiles[t];
            if (tile.key_hi < k0 || tile.key_lo >= k0 + BK) continue;
            __syncthreads();  // every warp is done with the previous tile's rows
            bwd_mma_load_rows(p, tile, h, sm.plan, sm.terms);
            __syncthreads();
            std::int8_t c = cover_none;
            if (class_row < tile.count)
                c = classify_block(sm.plan[class_row], class_group, prefix, prefix_len, k0, k0 + BK);
            sm.cover[class_group * BM + class_row] = c;
            if (!__syncthreads_or(c != cover_none)) continue;
            bwd_copy_rows<DP, STRIDE>(sm.q, BM, D, [&](int r) -> const T* {
                return r < tile.count ? q_base + sm.plan[r].row * f.q_stride[2] : nullptr;
            });
            bwd_copy_rows<DP, STRIDE>(sm.dout, BM, D, [&](int r) -> const T* {
                return r < tile.count ? do_base + sm.plan[r].row * p.dout_stride[2] : nullptr;
            });
            cp_async_commit();
            cp_async_wait<0>();
            __syncthreads();

            // The tile's rows in two halves of 32, so that Sᵀ and dPᵀ take 32 registers beside the
            // 8 DP / 4 of the accumulators.
#pragma unroll 1
            for (int half = 0; half < 2; ++half) {
                const int row0 = half * 32;
                float s[4][4], dp[4][4];
                bwd_mma_scores<T, DP, STRIDE, 4>(sm.k + warp * 16 * STRIDE, sm.v + warp * 16 * STRIDE,
                                                 sm.q + row0 * STRIDE, sm.dout + row0 * STRIDE, s, dp);
#pragma unroll
                for (int hr = 0; hr < 2; ++hr) {
                    const int local = key_row0 + 8 * hr;
                    const int key = k0 + local, code = sm.code[local];
#pragma unroll
                    for (int nt = 0; nt < 4; ++nt)
#pragma unroll
                        for (int e = 0; e < 2; ++e) {
                            const int row = row0 + nt * 8 + 2 * quad + e;
                            const float4 terms[2] = {sm.terms[2 * row], sm.terms[2 * row + 1]};
                            const std::int8_t cover[2] = {sm.cover[row], sm.cover[BM + row]};
                            float prob, grad;
                            bwd_pair(sm.plan[row], terms, cover, key, code, s[nt][2 * hr + e] * f.scale_log2,
                                     dp[nt][2 * hr + e], prob, grad);
                            s[nt][2 * hr + e] = prob;
                            dp[nt][2 * hr + e] = grad * p.scale;
                        }
                }
                bwd_mma_accumulate<T, DP, STRIDE, 4>(s, sm.dout + row0 * STRIDE, acc_v);
                bwd_mma_accumulate<T, DP, STRIDE, 4>(dp, sm.q + row0 * STRIDE, acc_k);
            }
        }
    }
    cp_async_wait<0>();  // a block no tile meets still committed its K / V copy

    // Self terms: a row whose output adds V at this key sends its dO there (every head of the group).
#pragma unroll
    for (int hr = 0; hr < 2; ++hr) {
        const int key = k0 + key_row0 + 8 * hr;
        if (key >= seq_len) continue;
        const int row = p.self_rows[static_cast<std::int64_t>(b) * f.kv_len + key];
        if (row < 0) continue;
        for (int hg = 0; hg < f.group; ++hg) {
            const int h = hk * f.group + hg;
            const T* dout = p.dout + b * p.dout_stride[0] + h * p.dout_stride[1] + row * p.dout_stride[2];
#pragma unroll
            for (int dt = 0; dt < DT; ++dt) {
                const int d = dt * 8 + 2 * quad;
                if (d < D) {
                    acc_v[dt][2 * hr] += to_float(dout[d]);
                    acc_v[dt][2 * hr + 1] += to_float(dout[d + 1]);
                }
            }
        }
    }
    // Every key of the block is written (0 past the sequence or where no row looks).
#pragma unroll
    for (int hr = 0; hr < 2; ++hr) {
        const int key = k0 + key_row0 + 8 * hr;
        if (key >= f.kv_len) continue;
        T* dk = p.dk + b * p.dk_stride[0] + hk * p.dk_stride[1] + key * p.dk_stride[2];
        T* dv = p.dv + b * p.dv_stride[0] + hk * p.dv_stride[1] + key * p.dv_stride[2];
#pragma unroll
        for (int dt = 0; dt < DT; ++dt) {
            const int d = dt * 8 + 2 * quad;
            if (d < D) {
                store_pair(dk + d, acc_k[dt][2 * hr], acc_k[dt][2 * hr + 1]);
                store_pair(dv + d, acc_v[dt][2 * hr], acc_v[dt][2 * hr + 1]);
            }
        }
    }
}

}  // namespace detail
}  // namespace cuda
}  // namespace mmca
