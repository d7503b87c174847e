// mmca/backend/cuda/ops/rmsnorm.cuh - LLaMa's RMSNorm on the device: y = x / sqrt(mean(x²) + eps) · weight.
//
// Computes what mmca::nn::rmsnorm_forward computes, rounding where it rounds: the sum of squares is
// accumulated in float64 (each x widened to float32 first), inv = float32(1 / sqrt(sum / H + eps))
// in float64, then y = weight · (x · inv) in float32 and y is rounded to the storage type. Only the
// order of the float64 summation differs from the CPU. One block of 256 threads per row.
#pragma once

#include "mmca/backend/cuda/ops/ops_common.cuh"

#include <cmath>
#include <cstdint>

namespace mmca {
namespace cuda {
namespace ops_detail {

template <class D, int Threads>
__global__ void __launch_bounds__(Threads)
rmsnorm_kernel(const D* x, std::int64_t x_stride, const float* __restrict__ weight, float eps,
               D* y, std::int64_t y_stride, std::int64_t H) {
    __shared__ double scratch[Threads / 32];
    const std::int64_t row = blockIdx.x;
    const D* xr = x + row * x_stride;
    D* yr = y + row * y_stride;
    double sum = 0.0;
    for (std::int64_t i = threadIdx.x; i < H; i += Threads) {
        const double v = static_cast<double>(detail::to_float(xr[i]));
        sum += v * v;  // exact in float64: a float32 square has at most 48 significant bits
    }
    sum = block_sum<Threads>(sum, scratch);
    const float inv = static_cast<float>(1.0 / sqrt(sum / static_cast<double>(H) + static_cast<double>(eps)));
    // Every thread reads x[i] before it writes y[i], and all reads of the sum pass are done: y may be x.
    for (std::int64_t i = threadIdx.x; i < H; i += Threads)
        yr[i] = detail::from_float<D>(__fmul_rn(weight[i], __fmul_rn(detail::to_float(xr[i]), inv)));
}

}  // namespace ops_detail

/// y (N, H) = rmsnorm(x (N, H)) · weight (H), on `stream`. x and y: device tensors of T with
/// contiguous rows (any row stride); y may be x (in place). weight: H float32 values in device
/// memory. eps: positive and finite.
template <class T>
void rmsnorm_forward(tensor_ref<const T, 2> x, const float* weight, float eps, tensor_ref<T, 2> y,
                     cudaStream_t stream = nullptr) {
    using D = device_type_t<T>;
    using mmca::detail::to_text;
    const char* where = "mmca::cuda::rmsnorm_forward";
    ops_detail::check_rows_view(x, where, "x", "an (N, H)");
    const std::int64_t N = x.shape[0], H = x.shape[1];
    MMCA_CHECK_ARG(weight != nullptr, where, "weight", "no tensor", "an (H) = (" + to_text(H) + ") float32 device vector");
    ops_detail::check_rows_view(y, where, "y", ops_detail::pair_text(N, H));
    MMCA_CHECK_ARG(y.shape == x.shape, where, "y", y.shape_text(), "the shape of x " + x.shape_text());
    MMCA_CHECK_ARG(eps > 0.0f && std::isfinite(eps), where, "eps", to_text(eps), "a positive finite number");
    if (N == 0) return;
    ops_detail::require_device_memory(x.data, where, "x");
    ops_detail::require_device_memory(weight, where, "weight");
    ops_detail::require_device_memory(y.data, where, "y");
    constexpr int threads = ops_detail::row_threads;
    MMCA_CUDA_LAUNCH((ops_detail::rmsnorm_kernel<D, threads>), static_cast<unsigned>(N), threads, 0, stream,
                     reinterpret_cast<const D*>(x.data), ops_detail::row_stride(x), weight, eps,
                     reinterpret_cast<D*>(y.data), ops_detail::row_stride(y), H);
    MMCA_CUDA_CHECK(cudaGetLastError());
}

}  // namespace cuda
}  // namespace mmca
