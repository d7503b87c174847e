// mmca/backend/cuda/ops/residual.cuh - the residual connection h += delta on the device.
//
// In float32 (h and delta widened, summed, rounded to the storage type once), as the CPU's
// h[i] += d[i]. A grid-stride kernel over (N, D) views with contiguous rows; optionally only on the
// rows a device mask selects (the decoder's causal_cross image rows keep their input).
#pragma once

#include "mmca/backend/cuda/ops/ops_common.cuh"

#include <cstdint>

namespace mmca {
namespace cuda {
namespace ops_detail {

template <class D>
__global__ void residual_add_kernel(D* h, std::int64_t h_stride, const D* delta, std::int64_t delta_stride,
                                    const std::uint8_t* update, std::int64_t total, std::int64_t cols) {
    const std::int64_t step = static_cast<std::int64_t>(gridDim.x) * blockDim.x;
    for (std::int64_t e = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; e < total; e += step) {
        const row_col rc = split_index(e, cols);
        if (update != nullptr && !update[rc.row]) continue;
        D* p = h + rc.row * h_stride + rc.col;
        *p = detail::from_float<D>(__fadd_rn(detail::to_float(*p), detail::to_float(delta[rc.row * delta_stride + rc.col])));
    }
}

}  // namespace ops_detail

/// h (N, D) += delta (N, D), on `stream`, on the rows r with update[r] != 0 (update: N bytes in
/// device memory), or on every row when update is nullptr. Device tensors of T with contiguous rows
/// (any row strides); delta must not overlap h.
template <class T>
void residual_add(tensor_ref<T, 2> h, tensor_ref<const T, 2> delta, const std::uint8_t* update,
                  cudaStream_t stream = nullptr) {
    using D = device_type_t<T>;
    const char* where = "mmca::cuda::residual_add";
    ops_detail::check_rows_view(h, where, "h", "an (N, D)");
    ops_detail::check_rows_view(delta, where, "delta", ops_detail::pair_text(h.shape[0], h.shape[1]));
    MMCA_CHECK_ARG(delta.shape == h.shape, where, "delta", delta.shape_text(), "the shape of h " + h.shape_text());
    const std::int64_t total = h.shape[0] * h.shape[1];
    if (total == 0) return;
    ops_detail::require_device_memory(h.data, where, "h");
    ops_detail::require_device_memory(delta.data, where, "delta");
    if (update != nullptr) ops_detail::require_device_memory(update, where, "update");
    MMCA_CUDA_LAUNCH(ops_detail::residual_add_kernel<D>, ops_detail::elementwise_blocks(total),
                     ops_detail::elementwise_threads, 0, stream, reinterpret_cast<D*>(h.data),
                     ops_detail::row_stride(h), reinterpret_cast<const D*>(delta.data), ops_detail::row_stride(delta),
                     update, total, h.shape[1]);
    MMCA_CUDA_CHECK(cudaGetLastError());
}

/// h (N, D) += delta (N, D) on every row.
template <class T>
void residual_add(tensor_ref<T, 2> h, tensor_ref<const T, 2> delta, cudaStream_t stream = nullptr) {
    residual_add<T>(h, delta, nullptr, stream);
}

}  // namespace cuda
}  // namespace mmca
