// mmca/backend/cuda/ops/embedding.cuh - token embedding on the device: rows of a [vocab, H] table.
//
// The ids are given in HOST memory: every id is checked against [0, vocab) on the host (the same
// check and message as mmca::nn::embedding_forward) before anything is uploaded, so a bad id is an
// mmca::invalid_argument, never a device fault. They are then copied to stream-ordered device
// memory (released after the launch) and gathered by a grid-stride kernel. The table and the output
// may have different storage types (a float16 / bfloat16 table widened to float32 as on the CPU, or
// kept in its own type, which is an exact copy).
#pragma once

#include "mmca/backend/cuda/ops/ops_common.cuh"

#include <cstdint>

namespace mmca {
namespace cuda {
namespace ops_detail {

template <class DT, class DO>
__global__ void embedding_kernel(const std::int32_t* __restrict__ ids, const DT* __restrict__ table,
                                 std::int64_t table_stride, DO* __restrict__ out, std::int64_t out_stride,
                                 std::int64_t total, std::int64_t cols) {
    const std::int64_t step = static_cast<std::int64_t>(gridDim.x) * blockDim.x;
    for (std::int64_t e = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; e < total; e += step) {
        const row_col rc = split_index(e, cols);
        const std::int64_t id = ids[rc.row];
        out[rc.row * out_stride + rc.col] = detail::from_float<DO>(detail::to_float(table[id * table_stride + rc.col]));
    }
}

}  // namespace ops_detail

/// out (n, H) = table[ids[i], :] for i < n, on `stream`. ids: n token ids in HOST memory, each in
/// [0, vocab). table (vocab, H) and out (n, H): device tensors with contiguous rows.
template <class T, class O>
void embedding_forward(const std::int32_t* ids, std::int64_t n, tensor_ref<const T, 2> table, tensor_ref<O, 2> out,
                       cudaStream_t stream = nullptr) {
    using DT = device_type_t<T>;
    using DO = device_type_t<O>;
    using mmca::detail::to_text;
    const char* where = "mmca::cuda::embedding_forward";
    ops_detail::check_rows_view(table, where, "table", "a [vocab, H]");
    const std::int64_t vocab = table.shape[0], H = table.shape[1];
    MMCA_CHECK_ARG(n >= 0, where, "n", to_text(n), "a token count >= 0");
    MMCA_CHECK_ARG(ids != nullptr || n == 0, where, "ids", "no array", to_text(n) + " token ids in host memory");
    ops_detail::check_rows_view(out, where, "out", ops_detail::pair_text(n, H));
    MMCA_CHECK_ARG(out.shape[0] == n && out.shape[1] == H, where, "out", out.shape_text(), ops_detail::pair_text(n, H));
    for (std::int64_t i = 0; i < n; ++i)
        MMCA_CHECK_ARG(ids[i] >= 0 && ids[i] < vocab, where, "ids", "ids[" + to_text(i) + "] = " + to_text(ids[i]),
                       "a token id in [0, " + to_text(vocab) + ")");
    const std::int64_t total = n * H;
    if (total == 0) return;
    ops_detail::require_device_memory(table.data, where, "table");
    ops_detail::require_device_memory(out.data, where, "out");
    device_buffer device_ids(static_cast<std::size_t>(n) * sizeof(std::int32_t), stream);
    // Pageable host memory is staged before cudaMemcpyAsync returns: ids may change after the call.
    MMCA_CUDA_CHECK(cudaMemcpyAsync(device_ids.data(), ids, static_cast<std::size_t>(n) * sizeof(std::int32_t),
                                    cudaMemcpyHostToDevice, stream));
    MMCA_CUDA_LAUNCH((ops_detail::embedding_kernel<DT, DO>), ops_detail::elementwise_blocks(total),
                     ops_detail::elementwise_threads, 0, stream, device_ids.as<const std::int32_t>(),
                     reinterpret_cast<const DT*>(table.data), ops_detail::row_stride(table),
                     reinterpret_cast<DO*>(out.data), ops_detail::row_stride(out), total, H);
    MMCA_CUDA_CHECK(cudaGetLastError());
}

}  // namespace cuda
}  // namespace mmca
