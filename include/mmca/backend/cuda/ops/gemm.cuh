// mmca/backend/cuda/ops/gemm.cuh - the linear layer y = x · Wᵀ + bias on the device through cuBLAS.
//
// W is stored [out, in] as in the checkpoint (mmca::nn::linear_forward's convention). x, W and y
// share one storage type T; bias is float32 (as on the CPU) or absent. Every product is computed
// with float32 accumulation (cublasGemmEx, CUBLAS_COMPUTE_32F; the handle's math mode is
// CUBLAS_DEFAULT_MATH | CUBLAS_MATH_DISALLOW_REDUCED_PRECISION_REDUCTION, so float32 products never
// use TF32 and 16-bit products never reduce in 16 bits). Rounding:
//   float32            y = x·Wᵀ (cuBLAS), then y += bias in float32 (the CPU's order);
//   16-bit, no bias    y = round(x·Wᵀ) (cuBLAS rounds its float32 result once);
//   16-bit, bias       x·Wᵀ into a float32 stream-ordered scratch, then y = round(acc + bias),
//                      so the bias is added before the only rounding.
// Row-major y = x · Wᵀ is, column-major, yᵀ (out × N) = W (op T of the in × out matrix the storage
// of W is) · xᵀ (in × N): cublasGemmEx(OP_T, OP_N, m = out, n = N, k = in, W, lda = row stride of
// W, x, ldb = row stride of x, y, ldc = row stride of y). gemm_arguments() computes exactly these.
#pragma once

#include "mmca/backend/cuda/ops/ops_common.cuh"

#include <cublas_v2.h>

#include <cstdint>
#include <limits>
#include <stdexcept>
#include <string>
#include <utility>

namespace mmca {
namespace cuda {

/// A failed cuBLAS call.
class cublas_error : public std::runtime_error {
public:
    cublas_error(const std::string& what, cublasStatus_t status)
        : std::runtime_error(what + ": " + cublasGetStatusName(status) + " (" + cublasGetStatusString(status) + ")"),
          status_(status) {}
    cublasStatus_t status() const noexcept { return status_; }

private:
    cublasStatus_t status_;
};

inline void check_cublas(cublasStatus_t status, const char* what) {
    if (status != CUBLAS_STATUS_SUCCESS) throw cublas_error(what, status);
}

}  // namespace cuda
}  // namespace mmca

/// Throws mmca::cuda::cublas_error naming the call when a cuBLAS call fails.
#define MMCA_CUBLAS_CHECK(call) ::mmca::cuda::check_cublas((call), #call)

namespace mmca {
namespace cuda {

/// Owns a cuBLAS handle (created on the current device) set up for mmca's products: default math
/// (no TF32) and no reduced-precision reductions. Not copyable, movable. The stream is set per call,
/// so one handle serves any stream, one call at a time (cuBLAS handles are not thread-safe).
class cublas_handle {
public:
    cublas_handle() {
        MMCA_CUBLAS_CHECK(cublasCreate(&handle_));
        const cublasStatus_t mode = cublasSetMathMode(
            handle_, static_cast<cublasMath_t>(CUBLAS_DEFAULT_MATH | CUBLAS_MATH_DISALLOW_REDUCED_PRECISION_REDUCTION));
        if (mode != CUBLAS_STATUS_SUCCESS) {
            cublasDestroy(handle_);
            handle_ = nullptr;
            check_cublas(mode, "cublasSetMathMode");
        }
    }
    cublas_handle(const cublas_handle&) = delete;
    cublas_handle& operator=(const cublas_handle&) = delete;
    cublas_handle(cublas_handle&& other) noexcept : handle_(std::exchange(other.handle_, nullptr)) {}
    cublas_handle& operator=(cublas_handle&& other) noexcept {
        if (this != &other) {
            reset();
            handle_ = std::exchange(other.handle_, nullptr);
        }
        return *this;
    }
    ~cublas_handle() { reset(); }

    cublasHandle_t get() const noexcept { return handle_; }

private:
    void reset() noexcept {
        if (handle_ != nullptr) cublasDestroy(handle_);
        handle_ = nullptr;
    }
    cublasHandle_t handle_ = nullptr;
};

namespace ops_detail {

template <class D>
struct cuda_data_type;
template <>
struct cuda_data_type<float> {
    static constexpr cudaDataType_t value = CUDA_R_32F;
};
template <>
struct cuda_data_type<__half> {
    static constexpr cudaDataType_t value = CUDA_R_16F;
};
template <>
struct cuda_data_type<__nv_bfloat16> {
    static constexpr cudaDataType_t value = CUDA_R_16BF;
};

/// The column-major GEMM C (m × n) = op(A) (m × k) · op(B) (k × n) that computes a row-major
/// y (rows × out) = x (rows × in) · Wᵀ: A = W with op T, B = x with op N, C = y.
struct gemm_argument_set {
    std::int64_t m, n, k;        // out, rows, in
    std::int64_t lda, ldb, ldc;  // row strides of W, x, y (at least the row length, at least 1)
};

inline gemm_argument_set gemm_arguments(std::int64_t rows, std::int64_t in, std::int64_t out, std::int64_t w_stride,
                                        std::int64_t x_stride, std::int64_t y_stride) {
    auto ld = [](std::int64_t stride, std::int64_t row_length) {
        const std::int64_t least = row_length > 1 ? row_length : 1;
        return stride > least ? stride : least;
    };
    return {out, rows, in, ld(w_stride, in), ld(x_stride, in), ld(y_stride, out)};
}

/// y[r, c] = y[r, c] + bias[c] in float32 (float32 storage; a template so the header can be included
/// by several translation units).
template <class F>
__global__ void bias_add_kernel(F* y, std::int64_t y_stride, const float* __restrict__ bias, std::int64_t total,
                                std::int64_t cols) {
    const std::int64_t step = static_cast<std::int64_t>(gridDim.x) * blockDim.x;
    for (std::int64_t e = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; e < total; e += step) {
        const row_col rc = split_index(e, cols);
        F* p = y + rc.row * y_stride + rc.col;
        *p = __fadd_rn(*p, bias[rc.col]);
    }
}

/// y[r, c] = round(acc[r, c] + bias[c]); acc is a dense (rows, cols) float32 scratch.
template <class D>
__global__ void bias_round_kernel(const float* __restrict__ acc, const float* __restrict__ bias, D* __restrict__ y,
                                  std::int64_t y_stride, std::int64_t total, std::int64_t cols) {
    const std::int64_t step = static_cast<std::int64_t>(gridDim.x) * blockDim.x;
    for (std::int64_t e = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; e < total; e += step) {
        const row_col rc = split_index(e, cols);
        y[rc.row * y_stride + rc.col] = detail::from_float<D>(__fadd_rn(acc[e], bias[rc.col]));
    }
}

inline int to_int(std::int64_t v) { return static_cast<int>(v); }

/// The host-side checks of linear_forward (shapes, contiguous rows, int-sized cuBLAS arguments;
/// no CUDA call) and the GEMM arguments they lead to.
template <class T>
gemm_argument_set check_linear_arguments(tensor_ref<const T, 2> x, tensor_ref<const T, 2> weight, tensor_ref<T, 2> y) {
    using mmca::detail::to_text;
    const char* where = "mmca::cuda::linear_forward";
    ops_detail::check_rows_view(weight, where, "weight", "an [out, in]");
    const std::int64_t out = weight.shape[0], in = weight.shape[1];
    ops_detail::check_rows_view(x, where, "x", "(N, " + to_text(in) + ")");
    MMCA_CHECK_ARG(x.shape[1] == in, where, "x", x.shape_text(),
                   "(N, " + to_text(in) + ") (weight is " + weight.shape_text() + ")");
    const std::int64_t N = x.shape[0];
    ops_detail::check_rows_view(y, where, "y", ops_detail::pair_text(N, out));
    MMCA_CHECK_ARG(y.shape[0] == N && y.shape[1] == out, where, "y", y.shape_text(), ops_detail::pair_text(N, out));
    const ops_detail::gemm_argument_set g = ops_detail::gemm_arguments(
        N, in, out, ops_detail::row_stride(weight), ops_detail::row_stride(x), ops_detail::row_stride(y));
    constexpr std::int64_t int_max = std::numeric_limits<int>::max();
    MMCA_CHECK_ARG(g.m <= int_max && g.k <= int_max && g.lda <= int_max, where, "weight",
                   weight.shape_text() + " with a row stride of " + to_text(g.lda), "sizes and strides below 2^31");
    MMCA_CHECK_ARG(g.ldb <= int_max, where, "x", "a row stride of " + to_text(g.ldb), "a row stride below 2^31");
    MMCA_CHECK_ARG(g.ldc <= int_max, where, "y", "a row stride of " + to_text(g.ldc), "a row stride below 2^31");
    return g;
}

}  // namespace ops_detail

/// y (N, out) = x (N, in) · Wᵀ + bias, on `stream`, with `handle`. x, weight [out, in] and y:
/// device tensors of T with contiguous rows (any row strides); y must not overlap x or weight.
/// bias: out float32 values in device memory, or nullptr. Sizes and row strides must fit in int.
template <class T>
void linear_forward(const cublas_handle& handle, tensor_ref<const T, 2> x, tensor_ref<const T, 2> weight,
                    const float* bias, tensor_ref<T, 2> y, cudaStream_t stream = nullptr) {
    using D = device_type_t<T>;
    const char* where = "mmca::cuda::linear_forward";
    MMCA_CHECK_ARG(handle.get() != nullptr, where, "handle", "a moved-from cublas_handle", "a live cuBLAS handle");
    const ops_detail::gemm_argument_set g = ops_detail::check_linear_arguments<T>(x, weight, y);
    const std::int64_t N = x.shape[0], out = weight.shape[0];
    if (N == 0 || out == 0) return;
    ops_detail::require_device_memory(x.data, where, "x");
    ops_detail::require_device_memory(weight.data, where, "weight");
    ops_detail::require_device_memory(y.data, where, "y");
    if (bias != nullptr) ops_detail::require_device_memory(bias, where, "bias");

    constexpr cudaDataType_t type = ops_detail::cuda_data_type<D>::value;
    constexpr bool is_float = std::is_same_v<D, float>;
    const float alpha = 1.0f, beta = 0.0f;
    MMCA_CUBLAS_CHECK(cublasSetStream(handle.get(), stream));
    const std::int64_t total = N * out;
    if (is_float || bias == nullptr) {
        MMCA_CUBLAS_CHECK(cublasGemmEx(handle.get(), CUBLAS_OP_T, CUBLAS_OP_N, ops_detail::to_int(g.m),
                                       ops_detail::to_int(g.n), ops_detail::to_int(g.k), &alpha, weight.data, type,
                                       ops_detail::to_int(g.lda), x.data, type, ops_detail::to_int(g.ldb), &beta,
                                       y.data, type, ops_detail::to_int(g.ldc), CUBLAS_COMPUTE_32F,
                                       CUBLAS_GEMM_DEFAULT));
        if constexpr (is_float) {
            if (bias != nullptr) {
                MMCA_CUDA_LAUNCH(ops_detail::bias_add_kernel<float>, ops_detail::elementwise_blocks(total),
                                 ops_detail::elementwise_threads, 0, stream, reinterpret_cast<float*>(y.data), g.ldc,
                                 bias, total, out);
                MMCA_CUDA_CHECK(cudaGetLastError());
            }
        }
        return;
    }
    // 16-bit with a bias: accumulate into float32, add the bias, round once.
    device_buffer acc(static_cast<std::size_t>(total) * sizeof(float), stream);
    MMCA_CUBLAS_CHECK(cublasGemmEx(handle.get(), CUBLAS_OP_T, CUBLAS_OP_N, ops_detail::to_int(g.m),
                                   ops_detail::to_int(g.n), ops_detail::to_int(g.k), &alpha, weight.data, type,
                                   ops_detail::to_int(g.lda), x.data, type, ops_detail::to_int(g.ldb), &beta,
                                   acc.data(), CUDA_R_32F, ops_detail::to_int(out), CUBLAS_COMPUTE_32F,
                                   CUBLAS_GEMM_DEFAULT));
    MMCA_CUDA_LAUNCH(ops_detail::bias_round_kernel<D>, ops_detail::elementwise_blocks(total),
                     ops_detail::elementwise_threads, 0, stream, acc.as<const float>(), bias,
                     reinterpret_cast<D*>(y.data), g.ldc, total, out);
    MMCA_CUDA_CHECK(cudaGetLastError());
}

}  // namespace cuda
}  // namespace mmca
