// mmca/backend/cuda/ops/rope.cuh - rotary position embedding (HF rotate-half pairing) on the device.
//
// The cos/sin tables are built on the host by mmca::nn::rope_build (the CPU's own function: float32
// angles as HF forms them, cos/sin in float64 rounded to float32, linear / dynamic scaling) and
// uploaded, so both backends rotate by exactly the same float32 numbers. The rotation of one pair
// (i, i + D/2) is the CPU's, in float32 without fused multiply-adds:
//   y[i]       = x[i] · cos - x[i + D/2] · sin
//   y[i + D/2] = x[i + D/2] · cos + x[i] · sin
// x is a (B, H, L, D) view with any strides (D contiguous): row-major (B, H, L, D) as the attention
// backend takes q and k, or the CPU's token-major (B, L, H, D) storage passed as a strided view.
// Table row of token (b, l): b · L + l when the table has B · L rows (per-token positions), l when it
// has L rows (the same positions in every sequence).
#pragma once

#include "mmca/backend/cuda/ops/ops_common.cuh"
#include "mmca/nn/rope.hpp"

#include <cstdint>
#include <vector>

namespace mmca {
namespace cuda {

/// A rope table (cos and sin, rows × D/2 float32 each) in device memory.
struct rope_device_table {
    std::int64_t rows = 0, half = 0;
    device_buffer cos, sin;
};

/// Copies a host table (mmca::nn::rope_build) to the device on `stream` (buffers grow as needed).
inline void upload_rope_table(const nn::rope_table& host, rope_device_table& table, cudaStream_t stream = nullptr) {
    using mmca::detail::to_text;
    const char* where = "mmca::cuda::upload_rope_table";
    const std::size_t n = static_cast<std::size_t>(host.rows * host.half);
    MMCA_CHECK_ARG(host.rows >= 0 && host.half >= 0 && host.cos.size() == n && host.sin.size() == n, where, "host",
                   "a table of " + to_text(host.rows) + " × " + to_text(host.half) + " with " +
                       to_text(host.cos.size()) + " cos and " + to_text(host.sin.size()) + " sin values",
                   "rows × half values in each of cos and sin");
    upload(table.cos, host.cos, stream, false);
    upload(table.sin, host.sin, stream, false);
    table.rows = host.rows;
    table.half = host.half;
}

namespace ops_detail {

/// Where the pair (b, h, l, i) of a (B, H, L, D/2-pairs) problem lives: the offset of x[b, h, l, i]
/// (in elements) and the row of the cos/sin table. `pair` runs over B · H · L · half.
struct rope_site {
    std::int64_t offset, table_row, i;
};
__host__ __device__ inline rope_site rope_locate(std::int64_t pair, std::int64_t H, std::int64_t L, std::int64_t half,
                                                 std::int64_t sb, std::int64_t sh, std::int64_t sl,
                                                 std::int64_t table_batch_stride) {
    const std::int64_t i = pair % half;
    std::int64_t t = pair / half;
    const std::int64_t l = t % L;
    t /= L;
    const std::int64_t h = t % H;
    const std::int64_t b = t / H;
    return {b * sb + h * sh + l * sl + i, b * table_batch_stride + l, i};
}

template <class D>
__global__ void rope_kernel(D* x, std::int64_t pairs, std::int64_t H, std::int64_t L, std::int64_t half,
                            std::int64_t sb, std::int64_t sh, std::int64_t sl, std::int64_t table_batch_stride,
                            const float* __restrict__ cos_table, const float* __restrict__ sin_table) {
    const std::int64_t step = static_cast<std::int64_t>(gridDim.x) * blockDim.x;
    for (std::int64_t p = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; p < pairs; p += step) {
        const rope_site s = rope_locate(p, H, L, half, sb, sh, sl, table_batch_stride);
        const float c = cos_table[s.table_row * half + s.i], sn = sin_table[s.table_row * half + s.i];
        D* lo = x + s.offset;
        D* hi = lo + half;
        const float a = detail::to_float(*lo), b = detail::to_float(*hi);
        *lo = detail::from_float<D>(__fsub_rn(__fmul_rn(a, c), __fmul_rn(b, sn)));
        *hi = detail::from_float<D>(__fadd_rn(__fmul_rn(b, c), __fmul_rn(a, sn)));
    }
}

}  // namespace ops_detail

/// Rotates x (B, H, L, D) in place by the device table (B · L or L rows of D/2 cos and sin), on
/// `stream`. x: a device tensor of T with stride 1 along D (any other strides; the B · H · L head
/// vectors must not overlap).
template <class T>
void rope_apply(tensor_ref<T, 4> x, const rope_device_table& table, cudaStream_t stream = nullptr) {
    using D = device_type_t<T>;
    using mmca::detail::to_text;
    const char* where = "mmca::cuda::rope_apply";
    MMCA_CHECK_ARG(!x.empty(), where, "x", "no tensor", "a (B, H, L, D) device tensor");
    const std::int64_t B = x.shape[0], H = x.shape[1], L = x.shape[2], Dim = x.shape[3];
    MMCA_CHECK_ARG(B >= 0 && H >= 0 && L >= 0 && Dim > 0 && Dim % 2 == 0, where, "x", x.shape_text(),
                   "(B, H, L, D) with an even D > 0");
    MMCA_CHECK_ARG(x.inner_contiguous(), where, "x", "an element stride of " + to_text(x.strides[3]),
                   "stride 1 along D");
    MMCA_CHECK_ARG(table.half == Dim / 2, where, "table", "D/2 = " + to_text(table.half),
                   "D/2 = " + to_text(Dim / 2) + " (x is " + x.shape_text() + ")");
    MMCA_CHECK_ARG(table.rows == B * L || table.rows == L, where, "table", to_text(table.rows) + " rows",
                   to_text(B * L) + " (B · L, one per token) or " + to_text(L) + " (L, shared by the batch)");
    const std::int64_t pairs = B * H * L * (Dim / 2);
    if (pairs == 0) return;
    ops_detail::require_device_memory(x.data, where, "x");
    ops_detail::require_device_memory(table.cos.data(), where, "table");
    ops_detail::require_device_memory(table.sin.data(), where, "table");
    const std::int64_t table_batch_stride = table.rows == B * L ? L : 0;
    MMCA_CUDA_LAUNCH(ops_detail::rope_kernel<D>, ops_detail::elementwise_blocks(pairs), ops_detail::elementwise_threads,
                     0, stream, reinterpret_cast<D*>(x.data), pairs, H, L, Dim / 2, x.strides[0], x.strides[1],
                     x.strides[2], table_batch_stride, table.cos.as<const float>(), table.sin.as<const float>());
    MMCA_CUDA_CHECK(cudaGetLastError());
}

/// Rotates x (B, H, L, D) in place for per-token positions: `positions` holds B · L (or L, shared by
/// the batch) position ids in HOST memory; total_len is the sequence length the call reaches (it
/// matters only for dynamic scaling). The table is built with mmca::nn::rope_build and lives in
/// stream-ordered device memory released after the launch.
template <class T>
void rope_apply(tensor_ref<T, 4> x, const nn::rope_config& config, const std::int64_t* positions,
                std::int64_t num_positions, std::int64_t total_len, cudaStream_t stream = nullptr) {
    using mmca::detail::to_text;
    const char* where = "mmca::cuda::rope_apply";
    MMCA_CHECK_ARG(!x.empty(), where, "x", "no tensor", "a (B, H, L, D) device tensor");
    MMCA_CHECK_ARG(config.head_dim == x.shape[3], where, "config", "head_dim " + to_text(config.head_dim),
                   "the head dim of x " + x.shape_text());
    MMCA_CHECK_ARG(num_positions == x.shape[0] * x.shape[2] || num_positions == x.shape[2], where, "positions",
                   to_text(num_positions) + " positions",
                   to_text(x.shape[0] * x.shape[2]) + " (B · L) or " + to_text(x.shape[2]) + " (L)");
    MMCA_CHECK_ARG(positions != nullptr || num_positions == 0, where, "positions", "no array",
                   "B · L position ids in host memory");
    nn::rope_table host;
    nn::rope_build(config, positions, num_positions, total_len, host);
    rope_device_table table;
    table.rows = host.rows;
    table.half = host.half;
    if (num_positions > 0) {
        const std::size_t bytes = host.cos.size() * sizeof(float);
        table.cos.allocate(bytes, stream);
        table.sin.allocate(bytes, stream);
        // Pageable host memory is staged before cudaMemcpyAsync returns: `host` may die after the calls.
        MMCA_CUDA_CHECK(cudaMemcpyAsync(table.cos.data(), host.cos.data(), bytes, cudaMemcpyHostToDevice, stream));
        MMCA_CUDA_CHECK(cudaMemcpyAsync(table.sin.data(), host.sin.data(), bytes, cudaMemcpyHostToDevice, stream));
    }
    rope_apply<T>(x, table, stream);
}

}  // namespace cuda
}  // namespace mmca
