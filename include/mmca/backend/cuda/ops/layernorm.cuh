// mmca/backend/cuda/ops/layernorm.cuh - LayerNorm on the device:
// y = (x - mean(x)) / sqrt(var(x) + eps) · weight + bias (biased variance, as torch.nn.LayerNorm).
//
// Computes what mmca::nn::layernorm_forward computes, rounding where it rounds: mean and the mean
// squared deviation are accumulated in float64 in two passes, inv = float32(1 / sqrt(var + eps)),
// m = float32(mean), then v = (x - m) · inv, y = weight · v + bias in float32 (no fused
// multiply-add), and y is rounded to the storage type. One block of 256 threads per row.
#pragma once

#include "mmca/backend/cuda/ops/ops_common.cuh"

#include <cmath>
#include <cstdint>

namespace mmca {
namespace cuda {
namespace ops_detail {

template <class D, int Threads>
__global__ void __launch_bounds__(Threads)
layernorm_kernel(const D* x, std::int64_t x_stride, const float* __restrict__ weight,
                 const float* __restrict__ bias, float eps, D* y, std::int64_t y_stride, std::int64_t dim) {
    __shared__ double scratch[Threads / 32];
    const std::int64_t row = blockIdx.x;
    const D* xr = x + row * x_stride;
    D* yr = y + row * y_stride;
    double sum = 0.0;
    for (std::int64_t i = threadIdx.x; i < dim; i += Threads) sum += static_cast<double>(detail::to_float(xr[i]));
    sum = block_sum<Threads>(sum, scratch);
    const double mean = sum / static_cast<double>(dim);
    double sq = 0.0;
    for (std::int64_t i = threadIdx.x; i < dim; i += Threads) {
        const double d = static_cast<double>(detail::to_float(xr[i])) - mean;
        sq = __dadd_rn(sq, __dmul_rn(d, d));
    }
    sq = block_sum<Threads>(sq, scratch);
    const float inv = static_cast<float>(1.0 / sqrt(sq / static_cast<double>(dim) + static_cast<double>(eps)));
    const float m = static_cast<float>(mean);
    // Both statistics are complete before any y is written, and each thread reads x[i] before it
    // writes y[i]: y may be x.
    for (std::int64_t i = threadIdx.x; i < dim; i += Threads) {
        const float v = __fmul_rn(__fsub_rn(detail::to_float(xr[i]), m), inv);
        const float scaled = weight != nullptr ? __fmul_rn(weight[i], v) : v;
        yr[i] = detail::from_float<D>(__fadd_rn(scaled, bias != nullptr ? bias[i] : 0.0f));
    }
}

}  // namespace ops_detail

/// y (N, D) = layernorm(x (N, D)) · weight (D) + bias (D), on `stream`. x and y: device tensors of
/// T with contiguous rows (any row stride), D > 0; y may be x (in place). weight and bias: D float32
/// values in device memory, or nullptr (1 and 0). eps: positive and finite.
template <class T>
void layernorm_forward(tensor_ref<const T, 2> x, const float* weight, const float* bias, float eps,
                       tensor_ref<T, 2> y, cudaStream_t stream = nullptr) {
    using Dev = device_type_t<T>;
    using mmca::detail::to_text;
    const char* where = "mmca::cuda::layernorm_forward";
    ops_detail::check_rows_view(x, where, "x", "an (N, D)");
    const std::int64_t N = x.shape[0], dim = x.shape[1];
    MMCA_CHECK_ARG(dim > 0, where, "x", x.shape_text(), "(N, D) with D > 0");
    ops_detail::check_rows_view(y, where, "y", ops_detail::pair_text(N, dim));
    MMCA_CHECK_ARG(y.shape == x.shape, where, "y", y.shape_text(), "the shape of x " + x.shape_text());
    MMCA_CHECK_ARG(eps > 0.0f && std::isfinite(eps), where, "eps", to_text(eps), "a positive finite number");
    if (N == 0) return;
    ops_detail::require_device_memory(x.data, where, "x");
    if (weight != nullptr) ops_detail::require_device_memory(weight, where, "weight");
    if (bias != nullptr) ops_detail::require_device_memory(bias, where, "bias");
    ops_detail::require_device_memory(y.data, where, "y");
    constexpr int threads = ops_detail::row_threads;
    MMCA_CUDA_LAUNCH((ops_detail::layernorm_kernel<Dev, threads>), static_cast<unsigned>(N), threads, 0, stream,
                     reinterpret_cast<const Dev*>(x.data), ops_detail::row_stride(x), weight, bias, eps,
                     reinterpret_cast<Dev*>(y.data), ops_detail::row_stride(y), dim);
    MMCA_CUDA_CHECK(cudaGetLastError());
}

}  // namespace cuda
}  // namespace mmca
