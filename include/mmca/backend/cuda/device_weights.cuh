// mmca/backend/cuda/device_weights.cuh - model weights and activation buffers in device memory,
// shared by the CUDA models (the LLaMa-2 decoder, the vision encoder).
//
// Matrices are converted once, on upload, from the checkpoint's storage dtype to the model's
// element type T; norm weights and biases stay float32, as on the CPU.
#pragma once

#include "mmca/backend/cuda/common.cuh"
#include "mmca/backend/cuda/ops/gemm.cuh"
#include "mmca/core/dtype.hpp"
#include "mmca/core/tensor.hpp"
#include "mmca/nn/linear.hpp"

#include <algorithm>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace mmca {
namespace cuda {

/// A growable device array of U (the activation buffers of the CUDA model): contents are not kept
/// when it grows.
template <class U>
class device_array {
public:
    void resize(std::size_t n) {
        if (n * sizeof(U) > buffer_.bytes()) buffer_.allocate(n * sizeof(U));
        size_ = n;
    }
    U* data() const { return buffer_.as<U>(); }
    std::size_t size() const { return size_; }

private:
    device_buffer buffer_;
    std::size_t size_ = 0;
};

/// A weight matrix [rows, cols] of T in device memory.
template <class T>
struct device_matrix {
    device_buffer data;
    std::int64_t rows = 0, cols = 0;
    tensor_ref<const T, 2> view() const { return {data.as<const T>(), {rows, cols}}; }
};

/// Float32 values (a norm weight or a bias) in device memory; empty when absent.
struct device_vector {
    device_buffer data;
    std::int64_t size = 0;
    const float* get() const { return size == 0 ? nullptr : data.as<const float>(); }
};

/// Converts a host matrix of any storage dtype to T (in slices, so the staging stays small) and
/// copies it to the device.
template <class T>
device_matrix<T> upload_matrix(const nn::matrix_ref& m) {
    device_matrix<T> d;
    d.rows = m.rows;
    d.cols = m.cols;
    const std::size_t n = static_cast<std::size_t>(m.rows * m.cols);
    if (n == 0) return d;
    d.data.allocate(n * sizeof(T));
    if (m.type == dtype_of<T>::value) {
        MMCA_CUDA_CHECK(cudaMemcpy(d.data.data(), m.data, n * sizeof(T), cudaMemcpyHostToDevice));
        return d;
    }
    constexpr std::size_t slice = std::size_t{1} << 22;
    std::vector<T> staging(std::min(n, slice));
    nn::dispatch_dtype(m.type, [&](auto tag) {
        using S = decltype(tag);
        const S* src = m.as<S>();
        for (std::size_t at = 0; at < n; at += slice) {
            const std::size_t count = std::min(slice, n - at);
            for (std::size_t i = 0; i < count; ++i) staging[i] = T(static_cast<float>(src[at + i]));
            MMCA_CUDA_CHECK(cudaMemcpy(d.data.template as<T>() + at, staging.data(), count * sizeof(T), cudaMemcpyHostToDevice));
        }
    });
    return d;
}

inline device_vector upload_vector(const std::vector<float>& v) {
    device_vector d;
    d.size = static_cast<std::int64_t>(v.size());
    if (v.empty()) return d;
    d.data.allocate(v.size() * sizeof(float));
    MMCA_CUDA_CHECK(cudaMemcpy(d.data.data(), v.data(), v.size() * sizeof(float), cudaMemcpyHostToDevice));
    return d;
}

/// A (rows, cols) float32 host table (positions) as a device matrix of T.
template <class T>
device_matrix<T> upload_table(const std::vector<float>& values, std::int64_t rows, std::int64_t cols) {
    return upload_matrix<T>(nn::matrix_ref{dtype::float32, values.data(), rows, cols});
}

/// The cuBLAS handle of a model, after checking that there is a device to put the model on; `model`
/// names it in the error ("mmca::cuda::llama_model: no usable CUDA device ...").
inline std::unique_ptr<cublas_handle> make_model_handle(const char* model) {
    int count = 0;
    const cudaError_t code = cudaGetDeviceCount(&count);
    if (code != cudaSuccess) {
        cudaGetLastError();
        throw cuda_error(std::string(model) + ": no usable CUDA device (cudaGetDeviceCount)", code);
    }
    if (count == 0) throw cuda_error(std::string(model) + ": no CUDA device", cudaErrorNoDevice);
    return std::make_unique<cublas_handle>();
}

}  // namespace cuda
}  // namespace mmca
