// mmca/backend/cuda/kernels/attention_params.cuh - the one struct that crosses from the host into
// the attention kernels: device pointers, strides, sizes and the plan arrays of attention_plan.hpp.
#pragma once

#include "mmca/backend/cuda/attention_plan.hpp"

#include <cstdint>

namespace mmca {
namespace cuda {
namespace detail {

/// Kernel arguments (passed by value). T is the device element type: float, __half or __nv_bfloat16.
template <class T>
struct attention_params {
    const T* q = nullptr;  // (B, Hq, Lq, D)
    const T* k = nullptr;  // (B, Hkv, Lk, D)
    const T* v = nullptr;  // (B, Hkv, Lk, D)
    T* out = nullptr;      // (B, Hq, Lq, D)
    std::int64_t q_stride[3] = {0, 0, 0};    // elements between neighbours along (B, H, L)
    std::int64_t k_stride[3] = {0, 0, 0};
    std::int64_t v_stride[3] = {0, 0, 0};
    std::int64_t out_stride[3] = {0, 0, 0};
    std::int32_t batch = 0, q_heads = 0, kv_heads = 0, group = 1;  // group = Hq / Hkv
    std::int32_t q_len = 0, kv_len = 0, head_dim = 0;
    float scale_log2 = 0.0f;  // score scale times log2(e): softmaxes run on exp2

    const device_row_plan* rows = nullptr;  // (R) active rows
    std::int32_t num_rows = 0;
    const device_fill_row* fills = nullptr;  // (F) rows without a softmax
    std::int32_t num_fills = 0;
    const device_tile* tiles = nullptr;  // (T) tiled kernel only
    std::int32_t num_tiles = 0;
    const std::int32_t* key_codes = nullptr;    // (B, Lk) key_code(type, image id)
    const std::int32_t* type_prefix = nullptr;  // (B, 2, Lk + 1)
    const std::int32_t* seq_kv_len = nullptr;   // (B)
    std::int32_t bound_entries = 0;  // tiled kernel: prefix counts cached per block boundary in shared
                                     // memory (entries per type; 0: read them from type_prefix)
    std::int32_t head_major = 0;     // tiled kernel: CTA b is (head b / T, tile b % T), else (tile b / Hq, head b % Hq)

    float* partial = nullptr;  // (R, Hq, splits, 2, D + 2) rows kernel with splits > 1: per group m, l, acc[D]
    std::int32_t splits = 1;

    // Optional statistics for the backward (mmca/attention/stats.hpp), contiguous float32, all
    // three set or all null: per (b, h, row, group) the max scaled score (natural-log units, as on
    // the CPU), the sum of exp(S - max) and the normalised group output (D floats).
    float* stat_max = nullptr;  // (B, Hq, Lq, 2)
    float* stat_sum = nullptr;  // (B, Hq, Lq, 2)
    float* stat_out = nullptr;  // (B, Hq, Lq, 2, D)
};

/// The sizes of a checked problem in the kernel arguments.
template <class D>
void set_problem_params(attention_params<D>& params, const attention_problem& problem) {
    params.batch = static_cast<std::int32_t>(problem.batch);
    params.q_heads = static_cast<std::int32_t>(problem.q_heads);
    params.kv_heads = static_cast<std::int32_t>(problem.kv_heads);
    params.group = static_cast<std::int32_t>(problem.group_size());
    params.q_len = static_cast<std::int32_t>(problem.q_len);
    params.kv_len = static_cast<std::int32_t>(problem.kv_len);
    params.head_dim = static_cast<std::int32_t>(problem.head_dim);
    params.scale_log2 = problem.scale * 1.4426950408889634f;
}

/// A plan's arrays (wherever they live: device copies for a launch, the plan's own vectors for the
/// emulated kernels of the tests) in the kernel arguments.
template <class D>
void set_plan_arrays(attention_params<D>& params, const attention_plan& plan, const device_row_plan* rows,
                     const device_fill_row* fills, const device_tile* tiles, const std::int32_t* key_codes,
                     const std::int32_t* prefix, const std::int32_t* seq_len) {
    params.rows = rows;
    params.num_rows = static_cast<std::int32_t>(plan.rows.size());
    params.fills = fills;
    params.num_fills = static_cast<std::int32_t>(plan.fills.size());
    params.tiles = tiles;
    params.num_tiles = static_cast<std::int32_t>(plan.tiles.size());
    params.key_codes = key_codes;
    params.type_prefix = prefix;
    params.seq_kv_len = seq_len;
}

/// Heads side by side in a row-major matrix: head h of row r starts at data + r · row_stride +
/// h · head_stride.
template <class T>
struct head_rows_view {
    const T* data = nullptr;
    std::int64_t row_stride = 0;
    std::int64_t head_stride = 0;
};

/// The tensor, size and scale arguments of unmasked multi-head attention (every one of Lq query rows
/// sees all Lk keys) over heads laid side by side in row-major matrices, as one sequence (B = 1)
/// whose heads are the attention's heads; out (Lq, heads · head_dim) has rows of out_row_stride.
/// The plan arrays (build_dense_attention_plan) are the caller's to set.
template <class T>
attention_params<T> dense_attention_params(const head_rows_view<T>& q, const head_rows_view<T>& k,
                                           const head_rows_view<T>& v, T* out, std::int64_t out_row_stride,
                                           std::int32_t heads, std::int32_t head_dim, std::int32_t Lq,
                                           std::int32_t Lk, float scale) {
    attention_params<T> p{};
    p.q = q.data;
    p.k = k.data;
    p.v = v.data;
    p.out = out;
    const std::int64_t strides[4][2] = {{q.head_stride, q.row_stride},
                                        {k.head_stride, k.row_stride},
                                        {v.head_stride, v.row_stride},
                                        {head_dim, out_row_stride}};
    std::int64_t* dst[4] = {p.q_stride, p.k_stride, p.v_stride, p.out_stride};
    for (int t = 0; t < 4; ++t) {
        dst[t][0] = 0;
        dst[t][1] = strides[t][0];
        dst[t][2] = strides[t][1];
    }
    p.batch = 1;
    p.q_heads = p.kv_heads = heads;
    p.group = 1;
    p.q_len = Lq;
    p.kv_len = Lk;
    p.head_dim = head_dim;
    p.scale_log2 = scale * 1.4426950408889634f;
    p.splits = 1;
    return p;
}

/// Index of (b, h, row) in the (B, Hq, Lq) prefix of the stats arrays.
template <class T>
__host__ __device__ inline std::int64_t stat_row(const attention_params<T>& p, int b, int h, int row) {
    return (static_cast<std::int64_t>(b) * p.q_heads + h) * p.q_len + row;
}

/// ln 2: converts a row maximum of the log2-scaled scores the kernels use to natural-log units.
constexpr float stat_ln2 = 0.69314718055994531f;

}  // namespace detail
}  // namespace cuda
}  // namespace mmca
