// mmca/backend/cuda/common.cuh - what every part of the CUDA backend shares: error handling,
// storage types, device buffers and element conversions.
//
// Element types: the host API takes tensor_refs of float, mmca::float16 or mmca::bfloat16 (Eigen's
// half types, which have the bit layout of __half and __nv_bfloat16) or of CUDA's own __half and
// __nv_bfloat16. Kernels see only float, __half and __nv_bfloat16 (storage_traits<T>::device).
//
// Eigen under nvcc: unless Eigen/Core was included before this header, EIGEN_NO_CUDA is defined here,
// so that Eigen's host code is not annotated __host__ __device__ (which nvcc warns about). The CUDA
// backend never uses Eigen in device code.
#pragma once

#if !defined(EIGEN_CORE_H) && !defined(EIGEN_NO_CUDA)
#define EIGEN_NO_CUDA
#endif

#include "mmca/backend/cuda/launch.cuh"
#include "mmca/core/dtype.hpp"
#include "mmca/core/error.hpp"
#include "mmca/core/tensor.hpp"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

namespace mmca {
namespace cuda {

/// A failed CUDA runtime call (out of memory, launch failure, no device, ...).
class cuda_error : public std::runtime_error {
public:
    cuda_error(const std::string& what, cudaError_t code)
        : std::runtime_error(what + ": " + cudaGetErrorName(code) + " (" + cudaGetErrorString(code) + ")"),
          code_(code) {}
    cudaError_t code() const noexcept { return code_; }

private:
    cudaError_t code_;
};

inline void check_cuda(cudaError_t code, const char* what) {
    if (code != cudaSuccess) throw cuda_error(what, code);
}

}  // namespace cuda
}  // namespace mmca

/// Throws mmca::cuda::cuda_error naming the call when a CUDA runtime call fails.
#define MMCA_CUDA_CHECK(call) ::mmca::cuda::check_cuda((call), #call)

namespace mmca {
namespace cuda {

/// The device element type of a storage type.
template <class T>
struct storage_traits;
template <>
struct storage_traits<float> {
    using device = float;
    static constexpr dtype tag = dtype::float32;
};
template <>
struct storage_traits<float16> {
    using device = __half;
    static constexpr dtype tag = dtype::float16;
};
template <>
struct storage_traits<bfloat16> {
    using device = __nv_bfloat16;
    static constexpr dtype tag = dtype::bfloat16;
};
template <>
struct storage_traits<__half> {
    using device = __half;
    static constexpr dtype tag = dtype::float16;
};
template <>
struct storage_traits<__nv_bfloat16> {
    using device = __nv_bfloat16;
    static constexpr dtype tag = dtype::bfloat16;
};

template <class T>
using device_type_t = typename storage_traits<std::remove_const_t<T>>::device;

static_assert(sizeof(float16) == sizeof(__half) && sizeof(bfloat16) == sizeof(__nv_bfloat16),
              "mmca: Eigen's half types must have the size of CUDA's");

/// Owning device allocation. Plain (cudaMalloc / cudaFree) by default; stream-ordered
/// (cudaMallocAsync / cudaFreeAsync on `stream`) when made with a stream, so that a buffer of a
/// one-shot call can be released right after the launch that reads it.
class device_buffer {
public:
    device_buffer() = default;
    explicit device_buffer(std::size_t bytes) { allocate(bytes); }
    device_buffer(std::size_t bytes, cudaStream_t stream) { allocate(bytes, stream); }
    device_buffer(const device_buffer&) = delete;
    device_buffer& operator=(const device_buffer&) = delete;
    device_buffer(device_buffer&& other) noexcept { swap(other); }
    device_buffer& operator=(device_buffer&& other) noexcept {
        device_buffer(std::move(other)).swap(*this);
        return *this;
    }
    ~device_buffer() { release(); }

    void allocate(std::size_t bytes) {
        release();
        if (bytes == 0) return;
        MMCA_CUDA_CHECK(cudaMalloc(&ptr_, bytes));
        bytes_ = bytes;
    }
    void allocate(std::size_t bytes, cudaStream_t stream) {
        release();
        if (bytes == 0) return;
        MMCA_CUDA_CHECK(cudaMallocAsync(&ptr_, bytes, stream));
        bytes_ = bytes;
        ordered_ = true;
        stream_ = stream;
    }
    void release() noexcept {
        if (ptr_ != nullptr) {
            if (ordered_)
                cudaFreeAsync(ptr_, stream_);
            else
                cudaFree(ptr_);
        }
        ptr_ = nullptr;
        bytes_ = 0;
        ordered_ = false;
        stream_ = nullptr;
    }
    void swap(device_buffer& other) noexcept {
        std::swap(ptr_, other.ptr_);
        std::swap(bytes_, other.bytes_);
        std::swap(ordered_, other.ordered_);
        std::swap(stream_, other.stream_);
    }

    void* data() const { return ptr_; }
    template <class U>
    U* as() const {
        return static_cast<U*>(ptr_);
    }
    std::size_t bytes() const { return bytes_; }

private:
    void* ptr_ = nullptr;
    std::size_t bytes_ = 0;
    bool ordered_ = false;
    cudaStream_t stream_ = nullptr;
};

/// Copies a host vector into a device buffer (growing it when needed) on `stream`. Pageable host
/// memory is staged before cudaMemcpyAsync returns, so the vector may die right after the call.
template <class U>
void upload(device_buffer& buffer, const std::vector<U>& host, cudaStream_t stream, bool stream_ordered) {
    const std::size_t bytes = host.size() * sizeof(U);
    if (bytes == 0) return;
    if (buffer.bytes() < bytes) {
        if (stream_ordered)
            buffer.allocate(bytes, stream);
        else
            buffer.allocate(bytes);
    }
    MMCA_CUDA_CHECK(cudaMemcpyAsync(buffer.data(), host.data(), bytes, cudaMemcpyHostToDevice, stream));
}

/// Compute capability (major * 10 + minor) and multiprocessor count of the current device.
struct device_properties {
    int compute_capability = 0;
    int multiprocessors = 0;
    int max_shared_per_block = 0;  // opt-in limit, bytes
};

inline device_properties current_device_properties() {
    int dev = 0;
    MMCA_CUDA_CHECK(cudaGetDevice(&dev));
    device_properties p;
    int major = 0, minor = 0;
    MMCA_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev));
    MMCA_CUDA_CHECK(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev));
    MMCA_CUDA_CHECK(cudaDeviceGetAttribute(&p.multiprocessors, cudaDevAttrMultiProcessorCount, dev));
    MMCA_CUDA_CHECK(cudaDeviceGetAttribute(&p.max_shared_per_block, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev));
    p.compute_capability = major * 10 + minor;
    return p;
}

/// True when at least one CUDA device is usable (no driver or no device: false, never a throw).
inline bool device_available() {
    int count = 0;
    if (cudaGetDeviceCount(&count) != cudaSuccess) {
        cudaGetLastError();  // clear the sticky-free error state of the failed query
        return false;
    }
    return count > 0;
}

namespace detail {

// Element conversions of device code. All arithmetic is float32.
__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }

template <class T>
__device__ __forceinline__ T from_float(float x);
template <>
__device__ __forceinline__ float from_float<float>(float x) {
    return x;
}
template <>
__device__ __forceinline__ __half from_float<__half>(float x) {
    return __float2half_rn(x);
}
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float x) {
    return __float2bfloat16_rn(x);
}

/// Stores two neighbouring output elements (d, d + 1) at p (aligned to two elements).
__device__ __forceinline__ void store_pair(float* p, float a, float b) { *reinterpret_cast<float2*>(p) = make_float2(a, b); }
__device__ __forceinline__ void store_pair(__half* p, float a, float b) {
    *reinterpret_cast<__half2*>(p) = __floats2half2_rn(a, b);
}
__device__ __forceinline__ void store_pair(__nv_bfloat16* p, float a, float b) {
    *reinterpret_cast<__nv_bfloat162*>(p) = __floats2bfloat162_rn(a, b);
}

inline std::int64_t ceil_div(std::int64_t a, std::int64_t b) { return (a + b - 1) / b; }

}  // namespace detail
}  // namespace cuda
}  // namespace mmca
