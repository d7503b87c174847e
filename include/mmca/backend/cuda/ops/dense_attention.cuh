// mmca/backend/cuda/ops/dense_attention.cuh - unmasked multi-head attention on the device (the
// vision encoder's self-attention and its resampler's cross-attention; mmca::nn::dense_attention on
// the CPU):
//
//   out[:, h] = softmax(scale · q_h · k_hᵀ) · v_h        for each head h, every query row sees every key
//
// Heads are read in place from row-major matrices where they sit side by side (device_heads: the
// fused qkv buffer of an encoder layer, any layout). Two paths:
//
// Fused (head dims up to 128 whose rows, head offsets and strides are whole 16-byte chunks, sm_80 or
// newer): the tiled attention kernel (kernels/attention_tiled.cuh; tensor cores for 16-bit types)
// with the plan of build_dense_attention_plan(), in which every row's one key group is all Lk
// keys. One pass, online softmax, no (Lq, Lk) buffer; the plan is uploaded once per (Lq, Lk) and
// kept in the scratch.
//
// Otherwise, per call, for all heads at once:
//   scores (heads, Lq, Lk) float32 = scale · q · kᵀ      one strided-batched cuBLAS GEMM, float32 accumulation
//   p = softmax(scores) per row                          one block per row: max, float64 sum of exp, normalise
//   out_h = p_h · v_h                                    one strided-batched GEMM, written into out's columns
// p is kept in float32 for float32 storage and rounded to T otherwise (the GEMM's inputs share a
// type). The (heads, Lq, Lk) scratch is the caller's (dense_attention_scratch), so repeated calls
// do not allocate; it is heads · Lq · Lk · (4 + sizeof(T)) bytes (64 MiB for 16 heads of 1024 tokens
// in float32).
#pragma once

#include "mmca/backend/cuda/attention_fused.cuh"
#include "mmca/backend/cuda/attention_plan.hpp"
#include "mmca/backend/cuda/device_weights.cuh"
#include "mmca/backend/cuda/kernels/attention_params.cuh"
#include "mmca/backend/cuda/kernels/attention_tiled.cuh"
#include "mmca/backend/cuda/ops/gemm.cuh"
#include "mmca/backend/cuda/ops/ops_common.cuh"

#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <type_traits>

namespace mmca {
namespace cuda {

/// Heads laid side by side in a row-major device matrix of `rows` rows (as mmca::nn::head_matrix):
/// head h of row r starts at data + r · row_stride + offset + h · head_stride.
template <class T>
struct device_heads {
    const T* data = nullptr;
    std::int64_t rows = 0;
    std::int64_t row_stride = 0;
    std::int64_t head_stride = 0;
    std::int64_t offset = 0;
};

/// Work space of dense_attention, grown on demand: the scores of the unfused path, the device plan
/// of the fused one (for the last (Lq, Lk) it served).
struct dense_attention_scratch {
    device_array<float> scores;
    device_buffer probs;
    attention_plan plan;
    std::int64_t plan_q = -1, plan_k = -1;
    device_buffer rows, fills, tiles, key_codes, prefix, seq_len;
    bool fused = true;  ///< false: always the unfused path (tests compare the two)
};

namespace ops_detail {

/// Largest v over the block (blockDim.x == Threads), returned to every thread.
template <int Threads>
__device__ __forceinline__ float block_max(float v, float* scratch) {
    for (int offset = 16; offset > 0; offset >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, offset));
    const int lane = static_cast<int>(threadIdx.x) & 31, warp = static_cast<int>(threadIdx.x) >> 5;
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    float m = scratch[0];
    for (int w = 1; w < Threads / 32; ++w) m = fmaxf(m, scratch[w]);
    __syncthreads();
    return m;
}

/// p[row] = softmax(scores[row]) over cols values; one block per row. p may alias scores (float).
template <class D, int Threads>
__global__ void __launch_bounds__(Threads)
softmax_rows_kernel(const float* scores, D* p, std::int64_t cols) {
    __shared__ float max_scratch[Threads / 32];
    __shared__ double sum_scratch[Threads / 32];
    const std::int64_t row = blockIdx.x;
    const float* s = scores + row * cols;
    D* out = p + row * cols;
    float m = -INFINITY;
    for (std::int64_t i = threadIdx.x; i < cols; i += Threads) m = fmaxf(m, s[i]);
    m = block_max<Threads>(m, max_scratch);
    double sum = 0.0;
    for (std::int64_t i = threadIdx.x; i < cols; i += Threads) sum += static_cast<double>(expf(s[i] - m));
    sum = block_sum<Threads>(sum, sum_scratch);
    const float inv = static_cast<float>(1.0 / sum);
    // Every thread has read its values of s for both statistics before the first write.
    for (std::int64_t i = threadIdx.x; i < cols; i += Threads) out[i] = detail::from_float<D>(expf(s[i] - m) * inv);
}

template <class T>
void check_heads(const device_heads<T>& m, std::int64_t heads, std::int64_t head_dim, const char* where,
                 const char* name) {
    using mmca::detail::to_text;
    MMCA_CHECK_ARG(m.data != nullptr && m.rows > 0, where, name, "an empty matrix", "at least one row");
    MMCA_CHECK_ARG(m.offset >= 0 && m.head_stride >= head_dim &&
                       m.offset + (heads - 1) * m.head_stride + head_dim <= m.row_stride,
                   where, name,
                   "row stride " + to_text(m.row_stride) + ", head stride " + to_text(m.head_stride) + ", offset " +
                       to_text(m.offset),
                   to_text(heads) + " heads of " + to_text(head_dim) + " values inside each row");
    MMCA_CHECK_ARG(m.rows <= std::numeric_limits<int>::max() && m.row_stride <= std::numeric_limits<int>::max(),
                   where, name, to_text(m.rows) + " rows of stride " + to_text(m.row_stride),
                   "sizes below 2^31 (cuBLAS arguments)");
}

/// True when the fused path serves the call: a tiled-kernel head dim, 16-byte chunks everywhere,
/// sm_80 or newer, enough shared memory.
template <class D>
bool dense_fused_applies(const device_heads<D>& q, const device_heads<D>& k, const device_heads<D>& v,
                         const D* out, std::int64_t out_row_stride, std::int64_t head_dim) {
    constexpr std::int64_t chunk = 16 / static_cast<std::int64_t>(sizeof(D));
    const int dp = detail::tiled_head_dim(head_dim);
    if (dp == 0 || head_dim % chunk != 0 || out_row_stride % chunk != 0) return false;
    if (reinterpret_cast<std::uintptr_t>(out) % 16u != 0u) return false;
    for (const device_heads<D>* m : {&q, &k, &v})
        if (reinterpret_cast<std::uintptr_t>(m->data) % 16u != 0u || m->offset % chunk != 0 ||
            m->head_stride % chunk != 0 || m->row_stride % chunk != 0)
            return false;
    const device_properties props = current_device_properties();
    return props.compute_capability >= 80 &&
           detail::tiled_smem_bytes<D>(dp) <= static_cast<std::size_t>(props.max_shared_per_block);
}

template <class D, int DP>
void launch_dense_tiled(const detail::attention_params<D>& params, const detail::tiled_launch_memory& memory,
                        cudaStream_t stream) {
    auto kernel = detail::attention_tiled_kernel<D, DP, false>;
    MMCA_CUDA_CHECK(
        cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(memory.smem_limit)));
    const auto blocks = static_cast<unsigned>(static_cast<std::int64_t>(params.num_tiles) * params.q_heads);
    MMCA_CUDA_LAUNCH(kernel, blocks, (detail::tiled_shape<D, DP>::threads), memory.smem, stream, params);
    MMCA_CUDA_CHECK(cudaGetLastError());
}

/// The fused path of dense_attention (arguments checked, dense_fused_applies true).
template <class D>
void dense_attention_fused(const device_heads<D>& q, const device_heads<D>& k, const device_heads<D>& v,
                           std::int64_t heads, std::int64_t head_dim, float scale, D* out, std::int64_t out_row_stride,
                           dense_attention_scratch& scratch, cudaStream_t stream) {
    const std::int64_t Lq = q.rows, Lk = k.rows;
    if (scratch.plan_q != Lq || scratch.plan_k != Lk) {
        scratch.plan = build_dense_attention_plan(Lq, Lk, detail::tiled_rows);
        upload(scratch.rows, scratch.plan.rows, stream, false);
        upload(scratch.tiles, scratch.plan.tiles, stream, false);
        upload(scratch.key_codes, scratch.plan.key_codes, stream, false);
        upload(scratch.prefix, scratch.plan.type_prefix, stream, false);
        upload(scratch.seq_len, scratch.plan.seq_kv_len, stream, false);
        scratch.plan_q = Lq;
        scratch.plan_k = Lk;
    }
    auto view = [](const device_heads<D>& m) {
        return detail::head_rows_view<D>{m.data + m.offset, m.row_stride, m.head_stride};
    };
    detail::attention_params<D> params = detail::dense_attention_params<D>(
        view(q), view(k), view(v), out, out_row_stride, static_cast<std::int32_t>(heads),
        static_cast<std::int32_t>(head_dim), static_cast<std::int32_t>(Lq), static_cast<std::int32_t>(Lk), scale);
    detail::set_plan_params(params, scratch.plan, scratch.rows, scratch.fills, scratch.tiles, scratch.key_codes,
                            scratch.prefix, scratch.seq_len);
    const int dp = detail::tiled_head_dim(head_dim);
    const detail::tiled_launch_memory memory = detail::tiled_memory<D>(scratch.plan, dp);
    params.bound_entries = memory.bound_entries;
    switch (dp) {
        case 64: launch_dense_tiled<D, 64>(params, memory, stream); break;
        case 80: launch_dense_tiled<D, 80>(params, memory, stream); break;
        case 112: launch_dense_tiled<D, 112>(params, memory, stream); break;
        default: launch_dense_tiled<D, 128>(params, memory, stream); break;
    }
}

}  // namespace ops_detail

/// out (Lq, heads · head_dim) = multi-head attention of q (Lq rows) over k and v (Lk rows each),
/// every row seeing every key, on `stream`. q, k, v: device_heads of T in device memory; out: a
/// device tensor of T with contiguous rows that does not overlap them. scale: usually
/// 1/sqrt(head_dim).
template <class T>
void dense_attention(const cublas_handle& handle, const device_heads<T>& q, const device_heads<T>& k,
                     const device_heads<T>& v, std::int64_t heads, std::int64_t head_dim, float scale,
                     tensor_ref<T, 2> out, dense_attention_scratch& scratch, cudaStream_t stream = nullptr) {
    using D = device_type_t<T>;
    using mmca::detail::to_text;
    const char* where = "mmca::cuda::dense_attention";
    MMCA_CHECK_ARG(handle.get() != nullptr, where, "handle", "a moved-from cublas_handle", "a live cuBLAS handle");
    MMCA_CHECK_ARG(heads > 0 && head_dim > 0, where, "heads", to_text(heads) + " heads of " + to_text(head_dim),
                   "a positive number of heads and head size");
    ops_detail::check_heads(q, heads, head_dim, where, "q");
    ops_detail::check_heads(k, heads, head_dim, where, "k");
    ops_detail::check_heads(v, heads, head_dim, where, "v");
    MMCA_CHECK_ARG(v.rows == k.rows, where, "v", to_text(v.rows) + " rows", to_text(k.rows) + " (the rows of k)");
    MMCA_CHECK_ARG(std::isfinite(scale), where, "scale", to_text(scale), "a finite number");
    const std::int64_t Lq = q.rows, Lk = k.rows;
    ops_detail::check_rows_view(out, where, "out", ops_detail::pair_text(Lq, heads * head_dim));
    MMCA_CHECK_ARG(out.shape[0] == Lq && out.shape[1] == heads * head_dim, where, "out", out.shape_text(),
                   ops_detail::pair_text(Lq, heads * head_dim));
    ops_detail::require_device_memory(q.data, where, "q");
    ops_detail::require_device_memory(k.data, where, "k");
    ops_detail::require_device_memory(v.data, where, "v");
    ops_detail::require_device_memory(out.data, where, "out");

    if (scratch.fused) {
        const device_heads<D> dq{reinterpret_cast<const D*>(q.data), q.rows, q.row_stride, q.head_stride, q.offset};
        const device_heads<D> dk{reinterpret_cast<const D*>(k.data), k.rows, k.row_stride, k.head_stride, k.offset};
        const device_heads<D> dv{reinterpret_cast<const D*>(v.data), v.rows, v.row_stride, v.head_stride, v.offset};
        D* o = reinterpret_cast<D*>(out.data);
        const std::int64_t ld = ops_detail::row_stride(out);
        if (ops_detail::dense_fused_applies<D>(dq, dk, dv, o, ld, head_dim)) {
            ops_detail::dense_attention_fused<D>(dq, dk, dv, heads, head_dim, scale, o, ld, scratch, stream);
            return;
        }
    }

    const std::size_t cells = static_cast<std::size_t>(heads * Lq * Lk);
    scratch.scores.resize(cells);
    constexpr bool is_float = std::is_same_v<D, float>;
    if (!is_float && scratch.probs.bytes() < cells * sizeof(D)) scratch.probs.allocate(cells * sizeof(D));
    float* scores = scratch.scores.data();
    D* probs = is_float ? reinterpret_cast<D*>(scores) : scratch.probs.as<D>();

    constexpr cudaDataType_t type = ops_detail::cuda_data_type<D>::value;
    const auto i32 = [](std::int64_t x) { return static_cast<int>(x); };
    MMCA_CUBLAS_CHECK(cublasSetStream(handle.get(), stream));
    // Column-major, per head: scoresᶜ (Lk × Lq) = k_hᶜᵀ (Lk × D) · q_hᶜ (D × Lq); row-major that is
    // scores (Lq × Lk) = q_h · k_hᵀ.
    const float alpha = scale, zero = 0.0f, one = 1.0f;
    MMCA_CUBLAS_CHECK(cublasGemmStridedBatchedEx(
        handle.get(), CUBLAS_OP_T, CUBLAS_OP_N, i32(Lk), i32(Lq), i32(head_dim), &alpha, k.data + k.offset, type,
        i32(k.row_stride), k.head_stride, q.data + q.offset, type, i32(q.row_stride), q.head_stride, &zero, scores,
        CUDA_R_32F, i32(Lk), Lq * Lk, i32(heads), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
    constexpr int threads = ops_detail::row_threads;
    MMCA_CUDA_LAUNCH((ops_detail::softmax_rows_kernel<D, threads>), static_cast<unsigned>(heads * Lq), threads, 0,
                     stream, scores, probs, Lk);
    MMCA_CUDA_CHECK(cudaGetLastError());
    // outᶜ_h (D × Lq) = v_hᶜ (D × Lk) · pᶜ_h (Lk × Lq): row-major out_h (Lq × D) = p_h · v_h, written
    // at column h · head_dim of out.
    MMCA_CUBLAS_CHECK(cublasGemmStridedBatchedEx(
        handle.get(), CUBLAS_OP_N, CUBLAS_OP_N, i32(head_dim), i32(Lq), i32(Lk), &one, v.data + v.offset, type,
        i32(v.row_stride), v.head_stride, probs, type, i32(Lk), Lq * Lk, &zero, out.data, type,
        i32(ops_detail::row_stride(out)), head_dim, i32(heads), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
}

}  // namespace cuda
}  // namespace mmca
