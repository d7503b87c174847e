// mmca/backend/cuda/ops/ops_common.cuh - what the CUDA model ops share: argument checks of row
// views, the device-pointer check, launch sizes, index decompositions and the block reduction.
//
// Conventions of every op in mmca/backend/cuda/ops/:
//   * activations are tensor_refs of float, mmca::float16 or mmca::bfloat16 (or __half /
//     __nv_bfloat16) in DEVICE memory; arithmetic is float32 (norm statistics float64, as on the CPU);
//   * a 2-D activation (N, D) needs contiguous rows (stride 1 along D) and may have any row stride;
//   * arguments are validated on the host before anything touches the device: first shapes and
//     values (no CUDA call), then that the pointers are device memory; a failure throws
//     mmca::invalid_argument naming the function, the argument, the value seen and what was expected;
//   * every launch is asynchronous on the caller's stream; CUDA errors throw mmca::cuda::cuda_error.
#pragma once

#include "mmca/backend/cuda/common.cuh"
#include "mmca/core/error.hpp"
#include "mmca/core/tensor.hpp"

#include <cstdint>
#include <limits>
#include <string>

namespace mmca {
namespace cuda {
namespace ops_detail {

/// Threads per block of the row kernels (norms) and of the elementwise kernels.
inline constexpr int row_threads = 256;
inline constexpr int elementwise_threads = 256;
/// Most blocks an elementwise (grid-stride) launch uses; the loop covers the rest.
inline constexpr std::int64_t max_elementwise_blocks = 65535;

/// Blocks of a grid-stride launch over `total` elements (total > 0).
inline unsigned elementwise_blocks(std::int64_t total) {
    const std::int64_t blocks = (total + elementwise_threads - 1) / elementwise_threads;
    return static_cast<unsigned>(blocks < max_elementwise_blocks ? blocks : max_elementwise_blocks);
}

/// Throws when p is not memory the device can read (plain host memory or an unknown pointer).
inline void require_device_memory(const void* p, const char* where, const char* argument) {
    cudaPointerAttributes attributes{};
    const cudaError_t code = cudaPointerGetAttributes(&attributes, p);
    if (code != cudaSuccess) {
        cudaGetLastError();  // clear the error of the failed query
        throw invalid_argument(where, argument, "a pointer the CUDA runtime does not know",
                               "device (or managed) memory");
    }
    if (attributes.type == cudaMemoryTypeUnregistered || attributes.type == cudaMemoryTypeHost)
        throw invalid_argument(where, argument, "a host pointer", "device (or managed) memory");
}

/// Checks that t is a present 2-D view with contiguous rows whose sizes fit a CUDA launch.
/// `expected` describes the wanted shape in the message ("(N, 4096)").
template <class U>
void check_rows_view(const tensor_ref<U, 2>& t, const char* where, const char* argument, const std::string& expected) {
    MMCA_CHECK_ARG(!t.empty(), where, argument, "no tensor", expected + " device tensor");
    MMCA_CHECK_ARG(t.shape[0] >= 0 && t.shape[1] >= 0, where, argument, t.shape_text(), expected);
    MMCA_CHECK_ARG(t.inner_contiguous(), where, argument,
                   t.shape_text() + " with an element stride of " + mmca::detail::to_text(t.strides[1]),
                   expected + " with contiguous rows (stride 1 along the last dimension)");
    MMCA_CHECK_ARG(t.shape[0] <= 1 || t.strides[0] >= t.shape[1], where, argument,
                   t.shape_text() + " with a row stride of " + mmca::detail::to_text(t.strides[0]),
                   expected + " with rows that do not overlap (row stride >= row length)");
    MMCA_CHECK_ARG(t.shape[0] <= std::numeric_limits<int>::max(), where, argument, t.shape_text(),
                   expected + " with at most 2^31 - 1 rows");
}

/// The row stride of a 2-D view as the kernels use it (rows of a one-row view may have any stride).
template <class U>
std::int64_t row_stride(const tensor_ref<U, 2>& t) {
    return t.shape[0] <= 1 ? t.shape[1] : t.strides[0];
}

/// "(a, b)" for messages.
inline std::string pair_text(std::int64_t a, std::int64_t b) {
    return "(" + mmca::detail::to_text(a) + ", " + mmca::detail::to_text(b) + ")";
}

/// Element (row, col) of a flat index over rows of `cols` elements.
struct row_col {
    std::int64_t row, col;
};
__host__ __device__ inline row_col split_index(std::int64_t index, std::int64_t cols) {
    return {index / cols, index % cols};
}

/// Sum of v over the block (blockDim.x == Threads, a multiple of 32), returned to every thread.
/// `scratch` holds Threads / 32 doubles of shared memory; it may be reused right after the call.
/// Deterministic: the same data and launch give the same bits.
template <int Threads>
__device__ __forceinline__ double block_sum(double v, double* scratch) {
    static_assert(Threads % 32 == 0 && Threads <= 1024, "block_sum: Threads must be a multiple of 32, at most 1024");
    for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
    const int lane = static_cast<int>(threadIdx.x) & 31, warp = static_cast<int>(threadIdx.x) >> 5;
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    double total = 0.0;
    for (int w = 0; w < Threads / 32; ++w) total += scratch[w];
    __syncthreads();  // every thread has read scratch before anyone writes it again
    return total;
}

}  // namespace ops_detail
}  // namespace cuda
}  // namespace mmca
