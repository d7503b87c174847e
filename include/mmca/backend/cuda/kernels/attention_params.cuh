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

    float* partial = nullptr;  // (R, Hq, splits, 2, D + 2) rows kernel with splits > 1: per group m, l, acc[D]
    std::int32_t splits = 1;

    // Optional statistics for the backward (mmca/attention/stats.hpp), contiguous float32, all
    // three set or all null: per (b, h, row, group) the max scaled score (natural-log units, as on
    // the CPU), the sum of exp(S - max) and the normalised group output (D floats).
    float* stat_max = nullptr;  // (B, Hq, Lq, 2)
    float* stat_sum = nullptr;  // (B, Hq, Lq, 2)
    float* stat_out = nullptr;  // (B, Hq, Lq, 2, D)
};

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
