// mmca/backend/cuda/kernels/attention_rows.cuh - the row kernel (decode steps, and every shape the
// tiled kernel does not take: head dims above 128, unaligned tensors, pre-sm_80 devices), the
// split combine and the kernel that writes the rows without a softmax.
//
// Row kernel: one CTA of 256 threads per (active row, query head, key split). The threads form 16
// teams of 16 lanes; team t walks the keys lo + t, lo + t + 16, ... of the split's slice of the
// row's key range, lane x of a team holding head-dim elements x, x + 16, ... . Each team keeps one
// online-softmax state per key group (a key may belong to both groups: the uniform group of
// mmca_reference overlaps the text group), and the 16 team states are merged in shared memory at
// the end. With one split the CTA writes the output row; with several (flash-decoding style, for
// few long rows) it writes (m, l, acc) per group to a workspace that attention_combine_kernel merges.
#pragma once

#include "mmca/backend/cuda/attention_plan.hpp"
#include "mmca/backend/cuda/common.cuh"
#include "mmca/backend/cuda/kernels/attention_params.cuh"

#include <cstdint>

namespace mmca {
namespace cuda {
namespace detail {

constexpr int rows_kernel_threads = 256;
constexpr int rows_team_lanes = 16;
constexpr int rows_teams = rows_kernel_threads / rows_team_lanes;

/// The inclusive key range [lo, hi] that holds every key of the row's groups.
__device__ __forceinline__ void row_key_range(const device_row_plan& plan, int& lo, int& hi) {
    lo = 0x7fffffff;
    hi = -1;
#pragma unroll
    for (int g = 0; g < 2; ++g)
#pragma unroll
        for (int r = 0; r < 2; ++r)
            if (plan.range[g][r].types != 0u) {
                lo = min(lo, plan.range[g][r].lo);
                hi = max(hi, plan.range[g][r].hi);
            }
}

/// Threads 0 and 1 write the max (natural-log units) and sum of groups 0 and 1 of a row to the
/// statistics, when the call asked for them (max and sum in log2 units, as the kernels keep them).
template <class T>
__device__ __forceinline__ void write_group_stats(const attention_params<T>& p, std::int64_t stat,
                                                  const float (&group_max)[2], const float (&group_sum)[2]) {
    if (p.stat_max == nullptr || threadIdx.x >= 2) return;
    const int g = threadIdx.x;
    const bool empty = group_max[g] == -INFINITY || group_sum[g] <= 0.0f;
    p.stat_max[stat * 2 + g] = empty ? -INFINITY : group_max[g] * stat_ln2;
    p.stat_sum[stat * 2 + g] = empty ? 0.0f : group_sum[g];
}

/// DL: head-dim elements per lane (the kernel serves D <= 16 * DL).
template <class T, int DL>
__global__ void __launch_bounds__(rows_kernel_threads) attention_rows_kernel(const attention_params<T> p) {
    constexpr int LANES = rows_team_lanes, TEAMS = rows_teams, DMAX = LANES * DL;
    const float neg_inf = -INFINITY;
    __shared__ float s_m[TEAMS][2], s_l[TEAMS][2];
    __shared__ float s_acc[TEAMS][2][DMAX];

    const int row_index = blockIdx.x, h = blockIdx.y, split = blockIdx.z, splits = gridDim.z;
    const device_row_plan plan = p.rows[row_index];
    const int b = plan.batch, hk = h / p.group, D = p.head_dim;
    const int team = threadIdx.x / LANES, lt = threadIdx.x % LANES;
    const unsigned team_mask = 0xffffu << (16 * (team & 1));
    const bool uniform0 = (plan.flags & plan_uniform0) != 0, uniform1 = (plan.flags & plan_uniform1) != 0;

    const T* q_row = p.q + b * p.q_stride[0] + h * p.q_stride[1] + plan.row * p.q_stride[2];
    const T* k_base = p.k + b * p.k_stride[0] + hk * p.k_stride[1];
    const T* v_base = p.v + b * p.v_stride[0] + hk * p.v_stride[1];
    const std::int32_t* key_codes = p.key_codes + static_cast<std::int64_t>(b) * p.kv_len;

    float q[DL];
#pragma unroll
    for (int i = 0; i < DL; ++i) {
        const int d = lt + LANES * i;
        q[i] = d < D ? to_float(q_row[d]) * p.scale_log2 : 0.0f;
    }

    int lo, hi;
    row_key_range(plan, lo, hi);
    const int span = hi - lo + 1;
    const int per_split = (span + splits - 1) / splits;
    const int k_first = lo + split * per_split;
    const int k_last = min(hi, k_first + per_split - 1);

    float m[2] = {neg_inf, neg_inf}, l[2] = {0.0f, 0.0f};
    float acc[2][DL];
#pragma unroll
    for (int i = 0; i < DL; ++i) acc[0][i] = acc[1][i] = 0.0f;

    for (int key = k_first + team; key <= k_last; key += TEAMS) {
        const int code = key_codes[key];
        const int type = key_code_type(code), id = key_code_image(code);
        const bool in0 = group_contains(plan, 0, key, type, id);
        const bool in1 = group_contains(plan, 1, key, type, id);
        if (!in0 && !in1) continue;  // the whole team skips the key
        float score = 0.0f;
        if ((in0 && !uniform0) || (in1 && !uniform1)) {
            const T* k_row = k_base + key * p.k_stride[2];
#pragma unroll
            for (int i = 0; i < DL; ++i) {
                const int d = lt + LANES * i;
                if (d < D) score = fmaf(q[i], to_float(k_row[d]), score);
            }
#pragma unroll
            for (int off = LANES / 2; off > 0; off >>= 1) score += __shfl_xor_sync(team_mask, score, off, LANES);
        }
        const T* v_row = v_base + key * p.v_stride[2];
        float v[DL];
#pragma unroll
        for (int i = 0; i < DL; ++i) {
            const int d = lt + LANES * i;
            v[i] = d < D ? to_float(v_row[d]) : 0.0f;
        }
#pragma unroll
        for (int g = 0; g < 2; ++g) {
            if (!(g == 0 ? in0 : in1)) continue;
            const float s = (g == 0 ? uniform0 : uniform1) ? 0.0f : score;
            const float new_max = fmaxf(m[g], s);
            const float alpha = exp2f(m[g] - new_max);
            const float w = exp2f(s - new_max);
            l[g] = l[g] * alpha + w;
#pragma unroll
            for (int i = 0; i < DL; ++i) acc[g][i] = fmaf(w, v[i], acc[g][i] * alpha);
            m[g] = new_max;
        }
    }

    // Merge the team states.
    if (lt == 0) {
        s_m[team][0] = m[0];
        s_m[team][1] = m[1];
        s_l[team][0] = l[0];
        s_l[team][1] = l[1];
    }
#pragma unroll
    for (int i = 0; i < DL; ++i) {
        s_acc[team][0][lt + LANES * i] = acc[0][i];
        s_acc[team][1][lt + LANES * i] = acc[1][i];
    }
    __syncthreads();

    float group_max[2], group_sum[2];
#pragma unroll
    for (int g = 0; g < 2; ++g) {
        float mx = neg_inf;
        for (int t = 0; t < TEAMS; ++t) mx = fmaxf(mx, s_m[t][g]);
        float sum = 0.0f;
        if (mx != neg_inf)
            for (int t = 0; t < TEAMS; ++t) sum += s_l[t][g] * exp2f(s_m[t][g] - mx);
        group_max[g] = mx;
        group_sum[g] = sum;
    }
    if (splits == 1) {
        T* out_row = p.out + b * p.out_stride[0] + h * p.out_stride[1] + plan.row * p.out_stride[2];
        const T* self_row = (plan.flags & plan_self_term) ? v_base + plan.position * p.v_stride[2] : nullptr;
        const std::int64_t stat = stat_row(p, b, h, plan.row);
        write_group_stats(p, stat, group_max, group_sum);
        for (int d = threadIdx.x; d < D; d += rows_kernel_threads) {
            float value = self_row != nullptr ? to_float(self_row[d]) : 0.0f;
#pragma unroll
            for (int g = 0; g < 2; ++g) {
                float term = 0.0f;
                if (group_max[g] != neg_inf && group_sum[g] > 0.0f) {
                    float o = 0.0f;
                    for (int t = 0; t < TEAMS; ++t) o += s_acc[t][g][d] * exp2f(s_m[t][g] - group_max[g]);
                    term = o / group_sum[g];
                }
                value += term;
                if (p.stat_out != nullptr) p.stat_out[(stat * 2 + g) * D + d] = term;
            }
            out_row[d] = from_float<T>(value);
        }
    } else {
        // Workspace record of (row, head, split): per group [m, l, acc[0..D)].
        float* record = p.partial + ((static_cast<std::int64_t>(row_index) * p.q_heads + h) * splits + split) * 2 * (D + 2);
        for (int x = threadIdx.x; x < 2 * (D + 2); x += rows_kernel_threads) {
            const int g = x / (D + 2), y = x - g * (D + 2);
            float value;
            if (y == 0) {
                value = group_max[g];
            } else if (y == 1) {
                value = group_sum[g];
            } else {
                const int d = y - 2;
                float o = 0.0f;
                if (group_max[g] != neg_inf)
                    for (int t = 0; t < TEAMS; ++t) o += s_acc[t][g][d] * exp2f(s_m[t][g] - group_max[g]);
                value = o;
            }
            record[x] = value;
        }
    }
}

/// Merges the split records of each (active row, head) into the output row. Grid: (R, Hq).
template <class T>
__global__ void __launch_bounds__(128) attention_combine_kernel(const attention_params<T> p) {
    const float neg_inf = -INFINITY;
    const int row_index = blockIdx.x, h = blockIdx.y, splits = p.splits, D = p.head_dim;
    const device_row_plan plan = p.rows[row_index];
    const int b = plan.batch, hk = h / p.group;
    const float* records = p.partial + (static_cast<std::int64_t>(row_index) * p.q_heads + h) * splits * 2 * (D + 2);
    float group_max[2] = {neg_inf, neg_inf}, group_sum[2] = {0.0f, 0.0f};
    for (int g = 0; g < 2; ++g) {
        for (int s = 0; s < splits; ++s) group_max[g] = fmaxf(group_max[g], records[(s * 2 + g) * (D + 2)]);
        if (group_max[g] == neg_inf) continue;
        for (int s = 0; s < splits; ++s) {
            const float* rec = records + (s * 2 + g) * (D + 2);
            if (rec[0] != neg_inf) group_sum[g] += rec[1] * exp2f(rec[0] - group_max[g]);
        }
    }
    T* out_row = p.out + b * p.out_stride[0] + h * p.out_stride[1] + plan.row * p.out_stride[2];
    const T* self_row =
        (plan.flags & plan_self_term) ? p.v + b * p.v_stride[0] + hk * p.v_stride[1] + plan.position * p.v_stride[2]
                                      : nullptr;
    const std::int64_t stat = stat_row(p, b, h, plan.row);
    write_group_stats(p, stat, group_max, group_sum);
    for (int d = threadIdx.x; d < D; d += blockDim.x) {
        float value = self_row != nullptr ? to_float(self_row[d]) : 0.0f;
        for (int g = 0; g < 2; ++g) {
            float term = 0.0f;
            if (group_max[g] != neg_inf && group_sum[g] > 0.0f) {
                float o = 0.0f;
                for (int s = 0; s < splits; ++s) {
                    const float* rec = records + (s * 2 + g) * (D + 2);
                    if (rec[0] != neg_inf) o += rec[2 + d] * exp2f(rec[0] - group_max[g]);
                }
                term = o / group_sum[g];
            }
            value += term;
            if (p.stat_out != nullptr) p.stat_out[(stat * 2 + g) * D + d] = term;
        }
        out_row[d] = from_float<T>(value);
    }
}

/// Rows without a softmax: zero, or a copy of V at the row's own position (MMCA image rows). One
/// warp per (row, head), grid-stride: MMCA prompts have many such rows, each only D elements.
constexpr int fill_kernel_threads = 256;

template <class T>
__global__ void __launch_bounds__(fill_kernel_threads) attention_fill_kernel(const attention_params<T> p) {
    constexpr int warps = fill_kernel_threads / 32;
    const int lane = threadIdx.x & 31;
    const std::int64_t total = static_cast<std::int64_t>(p.num_fills) * p.q_heads;
    for (std::int64_t item = static_cast<std::int64_t>(blockIdx.x) * warps + threadIdx.x / 32; item < total;
         item += static_cast<std::int64_t>(gridDim.x) * warps) {
        const int index = static_cast<int>(item / p.q_heads);
        const int h = static_cast<int>(item - static_cast<std::int64_t>(index) * p.q_heads);
        const device_fill_row f = p.fills[index];
        const int hk = h / p.group;
        T* out_row = p.out + f.batch * p.out_stride[0] + h * p.out_stride[1] + f.row * p.out_stride[2];
        const T* src =
            f.source >= 0 ? p.v + f.batch * p.v_stride[0] + hk * p.v_stride[1] + f.source * p.v_stride[2] : nullptr;
        for (int d = lane; d < p.head_dim; d += 32) out_row[d] = src != nullptr ? src[d] : from_float<T>(0.0f);
        if (p.stat_max != nullptr) {
            // No softmax: both groups are empty.
            const std::int64_t stat = stat_row(p, f.batch, h, f.row);
            if (lane < 2) {
                p.stat_max[stat * 2 + lane] = -INFINITY;
                p.stat_sum[stat * 2 + lane] = 0.0f;
            }
            for (int d = lane; d < 2 * p.head_dim; d += 32) p.stat_out[stat * 2 * p.head_dim + d] = 0.0f;
        }
    }
}

}  // namespace detail
}  // namespace cuda
}  // namespace mmca
