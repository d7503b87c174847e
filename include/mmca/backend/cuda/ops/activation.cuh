// mmca/backend/cuda/ops/activation.cuh - the pointwise activations on the device: LLaMa's SwiGLU
// gate silu(a) · b and the vision side's GELU (exact erf), GELU (tanh) and quick-GELU.
//
// The formulas and their operation order are those of mmca::nn::swiglu_activate and
// mmca::nn::activate, in float32 without fused multiply-adds; expf / erff / tanhf are CUDA's
// (within 2 ulp of the correctly rounded value), so float32 results differ from the CPU's by a few
// ulp at most. Grid-stride kernels over the elements of (N, D) views with contiguous rows.
#pragma once

#include "mmca/backend/cuda/ops/ops_common.cuh"
#include "mmca/nn/activation.hpp"

#include <cstdint>

namespace mmca {
namespace cuda {
namespace ops_detail {

/// silu(a) · b = a / (1 + exp(-a)) · b.
__device__ __forceinline__ float swiglu_value(float a, float b) {
    return __fmul_rn(__fdiv_rn(a, __fadd_rn(1.0f, expf(-a))), b);
}

/// The activation a of x, as mmca::nn::activate computes it.
__device__ __forceinline__ float activation_value(nn::activation a, float x) {
    switch (a) {
        case nn::activation::gelu_tanh: {
            const float k = 0.7978845608028654f;  // sqrt(2/pi)
            const float cube = __fmul_rn(__fmul_rn(__fmul_rn(0.044715f, x), x), x);
            return __fmul_rn(__fmul_rn(0.5f, x), __fadd_rn(1.0f, tanhf(__fmul_rn(k, __fadd_rn(x, cube)))));
        }
        case nn::activation::quick_gelu: return __fdiv_rn(x, __fadd_rn(1.0f, expf(__fmul_rn(-1.702f, x))));
        case nn::activation::gelu_erf: break;
    }
    return __fmul_rn(__fmul_rn(0.5f, x), __fadd_rn(1.0f, erff(__fmul_rn(x, 0.70710678118654752f))));
}

template <class D>
__global__ void swiglu_kernel(const D* gate, std::int64_t gate_stride, const D* up, std::int64_t up_stride, D* out,
                              std::int64_t out_stride, std::int64_t total, std::int64_t cols) {
    const std::int64_t step = static_cast<std::int64_t>(gridDim.x) * blockDim.x;
    for (std::int64_t e = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; e < total; e += step) {
        const row_col rc = split_index(e, cols);
        const float a = detail::to_float(gate[rc.row * gate_stride + rc.col]);
        const float b = detail::to_float(up[rc.row * up_stride + rc.col]);
        out[rc.row * out_stride + rc.col] = detail::from_float<D>(swiglu_value(a, b));
    }
}

template <class D>
__global__ void activation_kernel(nn::activation act, const D* x, std::int64_t x_stride, D* y, std::int64_t y_stride,
                                  std::int64_t total, std::int64_t cols) {
    const std::int64_t step = static_cast<std::int64_t>(gridDim.x) * blockDim.x;
    for (std::int64_t e = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; e < total; e += step) {
        const row_col rc = split_index(e, cols);
        y[rc.row * y_stride + rc.col] =
            detail::from_float<D>(activation_value(act, detail::to_float(x[rc.row * x_stride + rc.col])));
    }
}

}  // namespace ops_detail

/// out (N, I) = silu(gate (N, I)) ⊙ up (N, I), on `stream`. Device tensors of T with contiguous
/// rows (any row strides, so gate and up may be the two halves of one fused (N, 2I) projection);
/// out may be gate or up (the same view), no other overlap.
template <class T>
void swiglu_forward(tensor_ref<const T, 2> gate, tensor_ref<const T, 2> up, tensor_ref<T, 2> out,
                    cudaStream_t stream = nullptr) {
    using D = device_type_t<T>;
    const char* where = "mmca::cuda::swiglu_forward";
    ops_detail::check_rows_view(gate, where, "gate", "an (N, I)");
    const std::int64_t N = gate.shape[0], I = gate.shape[1];
    ops_detail::check_rows_view(up, where, "up", ops_detail::pair_text(N, I));
    MMCA_CHECK_ARG(up.shape == gate.shape, where, "up", up.shape_text(), "the shape of gate " + gate.shape_text());
    ops_detail::check_rows_view(out, where, "out", ops_detail::pair_text(N, I));
    MMCA_CHECK_ARG(out.shape == gate.shape, where, "out", out.shape_text(), "the shape of gate " + gate.shape_text());
    const std::int64_t total = N * I;
    if (total == 0) return;
    ops_detail::require_device_memory(gate.data, where, "gate");
    ops_detail::require_device_memory(up.data, where, "up");
    ops_detail::require_device_memory(out.data, where, "out");
    MMCA_CUDA_LAUNCH(ops_detail::swiglu_kernel<D>, ops_detail::elementwise_blocks(total),
                     ops_detail::elementwise_threads, 0, stream, reinterpret_cast<const D*>(gate.data),
                     ops_detail::row_stride(gate), reinterpret_cast<const D*>(up.data), ops_detail::row_stride(up),
                     reinterpret_cast<D*>(out.data), ops_detail::row_stride(out), total, I);
    MMCA_CUDA_CHECK(cudaGetLastError());
}

/// y (N, D) = act(x (N, D)) elementwise (gelu_erf, gelu_tanh or quick_gelu), on `stream`. Device
/// tensors of T with contiguous rows; y may be x (in place).
template <class T>
void activation_forward(nn::activation act, tensor_ref<const T, 2> x, tensor_ref<T, 2> y,
                        cudaStream_t stream = nullptr) {
    using D = device_type_t<T>;
    using mmca::detail::to_text;
    const char* where = "mmca::cuda::activation_forward";
    MMCA_CHECK_ARG(act == nn::activation::gelu_erf || act == nn::activation::gelu_tanh ||
                       act == nn::activation::quick_gelu,
                   where, "act", to_text(static_cast<int>(act)), "gelu_erf, gelu_tanh or quick_gelu");
    ops_detail::check_rows_view(x, where, "x", "an (N, D)");
    ops_detail::check_rows_view(y, where, "y", ops_detail::pair_text(x.shape[0], x.shape[1]));
    MMCA_CHECK_ARG(y.shape == x.shape, where, "y", y.shape_text(), "the shape of x " + x.shape_text());
    const std::int64_t total = x.shape[0] * x.shape[1];
    if (total == 0) return;
    ops_detail::require_device_memory(x.data, where, "x");
    ops_detail::require_device_memory(y.data, where, "y");
    MMCA_CUDA_LAUNCH(ops_detail::activation_kernel<D>, ops_detail::elementwise_blocks(total),
                     ops_detail::elementwise_threads, 0, stream, act, reinterpret_cast<const D*>(x.data),
                     ops_detail::row_stride(x), reinterpret_cast<D*>(y.data), ops_detail::row_stride(y), total,
                     x.shape[1]);
    MMCA_CUDA_CHECK(cudaGetLastError());
}

}  // namespace cuda
}  // namespace mmca
