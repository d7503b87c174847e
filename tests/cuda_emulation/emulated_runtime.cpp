// tests/cuda_emulation/emulated_runtime.cpp - the part of the CUDA runtime and of cuBLAS that mmca's
// CUDA backend calls, implemented on the host for the emulated test suite (mmca_cuda_tests_emulated).
//
// Linked instead of libcudart and libcublas: the backend's host code (ops, model, library, tests)
// runs unchanged, its kernels run in the warp emulator (MMCA_CUDA_LAUNCH under
// MMCA_CUDA_WARP_EMULATION) and these functions stand in for the runtime:
//   - one device, reported as an sm_90 part with 132 multiprocessors and 227 KiB of opt-in shared
//     memory per block (so every kernel family the backend picks by architecture is exercised);
//   - device memory is host memory from cudaMalloc / cudaMallocAsync, filled with 0xFF bytes and
//     followed by a guard page (see allocate()). Every allocation is recorded, so
//     cudaPointerGetAttributes tells device from host pointers, and copies, memsets and GEMM
//     operands are checked to lie inside one live allocation (an out-of-range or host pointer where
//     the device needs its own memory is an error, as a GPU would fault or memcheck would report);
//   - all work is synchronous on the calling thread: streams are tokens, synchronisation is a no-op;
//   - cublasGemmEx / cublasGemmStridedBatchedEx compute in float32 (Eigen) from float32, float16 or
//     bfloat16 operands and round the result to the output type, like CUBLAS_COMPUTE_32F.
// Errors are returned as the runtime would (cudaErrorInvalidValue, CUBLAS_STATUS_INVALID_VALUE, ...),
// with a line on stderr saying which argument was wrong.
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime_api.h>

#include <Eigen/Core>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <new>

#include <sys/mman.h>
#include <unistd.h>

namespace {

constexpr int emulated_major = 9;
constexpr int emulated_minor = 0;
constexpr int emulated_multiprocessors = 132;
constexpr int emulated_shared_optin = 232448;  // bytes per block, sm_90
constexpr std::size_t allocation_alignment = 256;

/// One cudaMalloc: `bytes` at `start`, which is placed so that the allocation (rounded up to 256
/// bytes) ends where a PROT_NONE guard page begins.
struct allocation {
    std::size_t bytes = 0;
    void* mapping = nullptr;
    std::size_t mapping_bytes = 0;
};

struct allocations {
    std::mutex mutex;
    std::map<std::uintptr_t, allocation> live;  // start -> allocation
};

allocations& memory() {
    static allocations a;
    return a;
}

std::size_t page_bytes() {
    static const std::size_t page = static_cast<std::size_t>(sysconf(_SC_PAGESIZE));
    return page;
}

std::size_t round_up(std::size_t n, std::size_t to) { return (n + to - 1) / to * to; }

cudaError_t report(cudaError_t code, const char* function, const char* what) {
    std::fprintf(stderr, "mmca emulated CUDA runtime: %s: %s\n", function, what);
    return code;
}

/// True when [p, p + bytes) lies inside one live allocation (bytes = 0: p inside or at its end).
bool inside_allocation(const void* p, std::size_t bytes) {
    const auto a = reinterpret_cast<std::uintptr_t>(p);
    allocations& m = memory();
    std::lock_guard<std::mutex> lock(m.mutex);
    auto it = m.live.upper_bound(a);
    if (it == m.live.begin()) return false;
    --it;
    const std::uintptr_t end = it->first + it->second.bytes;
    return a >= it->first && a <= end && bytes <= end - a;
}

// Device memory that catches what compute-sanitizer's memcheck would on a GPU, as far as the host
// can: an access past the end of the 256-byte-rounded allocation hits the guard page and stops the
// process there (SIGSEGV, with the kernel's frame on the stack); a write into the rounding slack
// between the requested size and the guard, or into the 256 bytes before the start, is found when
// the allocation is freed (those bytes must still hold the fill byte) and aborts with a message.
// Not caught: reads of those bytes (they read as NaN), writes of the fill byte itself, and
// accesses further before the start.
constexpr unsigned char fill_byte = 0xFF;  // NaN in float32, float16 and bfloat16
constexpr std::size_t head_canary_bytes = 256;  // checked at free like the tail slack

cudaError_t allocate(void** p, std::size_t bytes, const char* function) {
    if (p == nullptr) return report(cudaErrorInvalidValue, function, "devPtr is null");
    *p = nullptr;
    if (bytes == 0) return cudaSuccess;
    const std::size_t rounded = round_up(bytes, allocation_alignment);
    const std::size_t data = round_up(rounded + head_canary_bytes, page_bytes());
    const std::size_t total = data + page_bytes();
    void* mapping = mmap(nullptr, total, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (mapping == MAP_FAILED) return report(cudaErrorMemoryAllocation, function, "out of host memory");
    auto* base = static_cast<unsigned char*>(mapping);
    if (mprotect(base + data, page_bytes(), PROT_NONE) != 0) {
        munmap(mapping, total);
        return report(cudaErrorMemoryAllocation, function, "mprotect of the guard page failed");
    }
    // Fresh device memory holds garbage: NaN-looking bytes show reads of memory nothing wrote.
    std::memset(base, fill_byte, data);
    unsigned char* start = base + data - rounded;
    allocations& m = memory();
    std::lock_guard<std::mutex> lock(m.mutex);
    m.live[reinterpret_cast<std::uintptr_t>(start)] = allocation{bytes, mapping, total};
    *p = start;
    return cudaSuccess;
}

cudaError_t release(void* p, const char* function) {
    if (p == nullptr) return cudaSuccess;
    allocation a;
    allocations& m = memory();
    {
        std::lock_guard<std::mutex> lock(m.mutex);
        auto it = m.live.find(reinterpret_cast<std::uintptr_t>(p));
        if (it == m.live.end()) return report(cudaErrorInvalidValue, function, "not the start of a live allocation");
        a = it->second;
        m.live.erase(it);
    }
    const auto* head = static_cast<const unsigned char*>(p) - head_canary_bytes;
    for (std::size_t i = 0; i < head_canary_bytes; ++i)
        if (head[i] != fill_byte) {
            std::fprintf(stderr,
                         "mmca emulated CUDA runtime: %s: byte %zu before the start of an allocation of %zu "
                         "bytes was written (an out-of-bounds device write)\n",
                         function, head_canary_bytes - i, a.bytes);
            std::abort();
        }
    const auto* tail = static_cast<const unsigned char*>(p) + a.bytes;
    const std::size_t slack = round_up(a.bytes, allocation_alignment) - a.bytes;
    for (std::size_t i = 0; i < slack; ++i)
        if (tail[i] != fill_byte) {
            std::fprintf(stderr,
                         "mmca emulated CUDA runtime: %s: byte %zu past the end of an allocation of %zu "
                         "bytes was written (an out-of-bounds device write)\n",
                         function, i, a.bytes);
            std::abort();
        }
    munmap(a.mapping, a.mapping_bytes);
    return cudaSuccess;
}

cudaError_t copy(void* dst, const void* src, std::size_t count, cudaMemcpyKind kind, const char* function) {
    if (count == 0) return cudaSuccess;
    const bool dst_device = kind == cudaMemcpyHostToDevice || kind == cudaMemcpyDeviceToDevice;
    const bool src_device = kind == cudaMemcpyDeviceToHost || kind == cudaMemcpyDeviceToDevice;
    if (kind != cudaMemcpyHostToDevice && kind != cudaMemcpyDeviceToHost && kind != cudaMemcpyDeviceToDevice &&
        kind != cudaMemcpyHostToHost && kind != cudaMemcpyDefault)
        return report(cudaErrorInvalidMemcpyDirection, function, "unknown cudaMemcpyKind");
    if (dst_device && !inside_allocation(dst, count))
        return report(cudaErrorInvalidValue, function, "dst: not count bytes of one device allocation");
    if (src_device && !inside_allocation(src, count))
        return report(cudaErrorInvalidValue, function, "src: not count bytes of one device allocation");
    if (dst == nullptr || src == nullptr) return report(cudaErrorInvalidValue, function, "null pointer");
    std::memmove(dst, src, count);
    return cudaSuccess;
}

cudaError_t copy_2d(void* dst, std::size_t dpitch, const void* src, std::size_t spitch, std::size_t width,
                    std::size_t height, cudaMemcpyKind kind, const char* function) {
    if (width == 0 || height == 0) return cudaSuccess;
    if (dpitch < width || spitch < width)
        return report(cudaErrorInvalidPitchValue, function, "dpitch and spitch must be at least width");
    // Check the whole span first, so that a bad call copies nothing.
    const std::size_t dst_span = (height - 1) * dpitch + width, src_span = (height - 1) * spitch + width;
    const bool dst_device = kind == cudaMemcpyHostToDevice || kind == cudaMemcpyDeviceToDevice;
    const bool src_device = kind == cudaMemcpyDeviceToHost || kind == cudaMemcpyDeviceToDevice;
    if (dst_device && !inside_allocation(dst, dst_span))
        return report(cudaErrorInvalidValue, function, "dst: the rows do not lie inside one device allocation");
    if (src_device && !inside_allocation(src, src_span))
        return report(cudaErrorInvalidValue, function, "src: the rows do not lie inside one device allocation");
    for (std::size_t r = 0; r < height; ++r) {
        const cudaError_t code = copy(static_cast<unsigned char*>(dst) + r * dpitch,
                                      static_cast<const unsigned char*>(src) + r * spitch, width, kind, function);
        if (code != cudaSuccess) return code;
    }
    return cudaSuccess;
}

cudaError_t fill(void* p, int value, std::size_t count, const char* function) {
    if (count == 0) return cudaSuccess;
    if (!inside_allocation(p, count))
        return report(cudaErrorInvalidValue, function, "devPtr: not count bytes of one device allocation");
    std::memset(p, value, count);
    return cudaSuccess;
}

// ---- cuBLAS ------------------------------------------------------------------------------------

float load_element(const void* base, cudaDataType type, std::int64_t index) {
    switch (type) {
        case CUDA_R_32F:
            return static_cast<const float*>(base)[index];
        case CUDA_R_16F:
            return __half2float(static_cast<const __half*>(base)[index]);
        case CUDA_R_16BF:
            return __bfloat162float(static_cast<const __nv_bfloat16*>(base)[index]);
        default:
            return 0.0f;
    }
}

void store_element(void* base, cudaDataType type, std::int64_t index, float v) {
    switch (type) {
        case CUDA_R_32F:
            static_cast<float*>(base)[index] = v;
            break;
        case CUDA_R_16F:
            static_cast<__half*>(base)[index] = __float2half_rn(v);
            break;
        case CUDA_R_16BF:
            static_cast<__nv_bfloat16*>(base)[index] = __float2bfloat16_rn(v);
            break;
        default:
            break;
    }
}

std::size_t element_bytes(cudaDataType type) { return type == CUDA_R_32F ? 4u : 2u; }

bool supported(cudaDataType type) { return type == CUDA_R_32F || type == CUDA_R_16F || type == CUDA_R_16BF; }

cublasStatus_t gemm_fail(const char* what) {
    std::fprintf(stderr, "mmca emulated cuBLAS: %s\n", what);
    return CUBLAS_STATUS_INVALID_VALUE;
}

/// Bytes spanned by a column-major rows x cols matrix with leading dimension ld.
std::size_t span_bytes(std::int64_t rows, std::int64_t cols, std::int64_t ld, cudaDataType type) {
    if (rows == 0 || cols == 0) return 0;
    return static_cast<std::size_t>((cols - 1) * ld + rows) * element_bytes(type);
}

/// C = alpha op(A) op(B) + beta C for `batch` matrices (column-major, as cuBLAS).
cublasStatus_t gemm(cublasOperation_t transa, cublasOperation_t transb, int m, int n, int k, const void* alpha,
                    const void* A, cudaDataType Atype, int lda, long long strideA, const void* B, cudaDataType Btype,
                    int ldb, long long strideB, const void* beta, void* C, cudaDataType Ctype, int ldc,
                    long long strideC, int batch, cublasComputeType_t compute) {
    if (compute != CUBLAS_COMPUTE_32F && compute != CUBLAS_COMPUTE_32F_FAST_16F &&
        compute != CUBLAS_COMPUTE_32F_FAST_16BF && compute != CUBLAS_COMPUTE_32F_FAST_TF32)
        return gemm_fail("computeType: only the float32 compute types are emulated");
    if (!supported(Atype) || !supported(Btype) || !supported(Ctype))
        return gemm_fail("Atype/Btype/Ctype: only CUDA_R_32F, CUDA_R_16F and CUDA_R_16BF are emulated");
    if ((transa != CUBLAS_OP_N && transa != CUBLAS_OP_T) || (transb != CUBLAS_OP_N && transb != CUBLAS_OP_T))
        return gemm_fail("transa/transb: only CUBLAS_OP_N and CUBLAS_OP_T are emulated");
    if (m < 0 || n < 0 || k < 0 || batch < 0) return gemm_fail("m, n, k and batchCount must be >= 0");
    const std::int64_t a_rows = transa == CUBLAS_OP_N ? m : k, a_cols = transa == CUBLAS_OP_N ? k : m;
    const std::int64_t b_rows = transb == CUBLAS_OP_N ? k : n, b_cols = transb == CUBLAS_OP_N ? n : k;
    if (lda < std::max<std::int64_t>(1, a_rows)) return gemm_fail("lda is smaller than the rows of A");
    if (ldb < std::max<std::int64_t>(1, b_rows)) return gemm_fail("ldb is smaller than the rows of B");
    if (ldc < std::max(1, m)) return gemm_fail("ldc is smaller than m");
    if (m == 0 || n == 0 || batch == 0) return CUBLAS_STATUS_SUCCESS;
    const float a = *static_cast<const float*>(alpha), b = *static_cast<const float*>(beta);
    Eigen::MatrixXf opA(m, k), opB(k, n), c(m, n);
    for (int g = 0; g < batch; ++g) {
        const auto* Ag = static_cast<const unsigned char*>(A) + g * strideA * static_cast<long long>(element_bytes(Atype));
        const auto* Bg = static_cast<const unsigned char*>(B) + g * strideB * static_cast<long long>(element_bytes(Btype));
        auto* Cg = static_cast<unsigned char*>(C) + g * strideC * static_cast<long long>(element_bytes(Ctype));
        if (k > 0 && !inside_allocation(Ag, span_bytes(a_rows, a_cols, lda, Atype)))
            return gemm_fail("A: the matrix does not lie inside one device allocation");
        if (k > 0 && !inside_allocation(Bg, span_bytes(b_rows, b_cols, ldb, Btype)))
            return gemm_fail("B: the matrix does not lie inside one device allocation");
        if (!inside_allocation(Cg, span_bytes(m, n, ldc, Ctype)))
            return gemm_fail("C: the matrix does not lie inside one device allocation");
        for (int p = 0; p < k; ++p)
            for (int i = 0; i < m; ++i)
                opA(i, p) = load_element(Ag, Atype, transa == CUBLAS_OP_N ? i + static_cast<std::int64_t>(p) * lda
                                                                          : p + static_cast<std::int64_t>(i) * lda);
        for (int j = 0; j < n; ++j)
            for (int p = 0; p < k; ++p)
                opB(p, j) = load_element(Bg, Btype, transb == CUBLAS_OP_N ? p + static_cast<std::int64_t>(j) * ldb
                                                                          : j + static_cast<std::int64_t>(p) * ldb);
        c.noalias() = opA * opB;
        for (int j = 0; j < n; ++j)
            for (int i = 0; i < m; ++i) {
                const std::int64_t at = i + static_cast<std::int64_t>(j) * ldc;
                // beta = 0: C is not read (it may hold anything, NaN included), as in cuBLAS.
                const float prior = b == 0.0f ? 0.0f : b * load_element(Cg, Ctype, at);
                store_element(Cg, Ctype, at, a * c(i, j) + prior);
            }
    }
    return CUBLAS_STATUS_SUCCESS;
}

}  // namespace

struct cublasContext {
    cudaStream_t stream = nullptr;
    cublasMath_t mode = CUBLAS_DEFAULT_MATH;
};

extern "C" {

// ---- errors --------------------------------------------------------------------------------------
cudaError_t cudaGetLastError(void) { return cudaSuccess; }
cudaError_t cudaPeekAtLastError(void) { return cudaSuccess; }

const char* cudaGetErrorName(cudaError_t error) {
    switch (error) {
        case cudaSuccess:
            return "cudaSuccess";
        case cudaErrorInvalidValue:
            return "cudaErrorInvalidValue";
        case cudaErrorMemoryAllocation:
            return "cudaErrorMemoryAllocation";
        case cudaErrorInvalidMemcpyDirection:
            return "cudaErrorInvalidMemcpyDirection";
        case cudaErrorInvalidDevice:
            return "cudaErrorInvalidDevice";
        case cudaErrorInvalidPitchValue:
            return "cudaErrorInvalidPitchValue";
        default:
            return "cudaErrorUnknown";
    }
}

const char* cudaGetErrorString(cudaError_t error) {
    switch (error) {
        case cudaSuccess:
            return "no error";
        case cudaErrorInvalidValue:
            return "invalid argument";
        case cudaErrorMemoryAllocation:
            return "out of memory";
        case cudaErrorInvalidMemcpyDirection:
            return "invalid copy direction for memcpy";
        case cudaErrorInvalidDevice:
            return "invalid device ordinal";
        case cudaErrorInvalidPitchValue:
            return "invalid pitch argument";
        default:
            return "unknown error";
    }
}

// ---- the device ----------------------------------------------------------------------------------
cudaError_t cudaGetDeviceCount(int* count) {
    if (count == nullptr) return report(cudaErrorInvalidValue, "cudaGetDeviceCount", "count is null");
    *count = 1;
    return cudaSuccess;
}

cudaError_t cudaGetDevice(int* device) {
    if (device == nullptr) return report(cudaErrorInvalidValue, "cudaGetDevice", "device is null");
    *device = 0;
    return cudaSuccess;
}

cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attr, int device) {
    if (value == nullptr) return report(cudaErrorInvalidValue, "cudaDeviceGetAttribute", "value is null");
    if (device != 0) return report(cudaErrorInvalidDevice, "cudaDeviceGetAttribute", "device is not 0");
    switch (attr) {
        case cudaDevAttrComputeCapabilityMajor:
            *value = emulated_major;
            return cudaSuccess;
        case cudaDevAttrComputeCapabilityMinor:
            *value = emulated_minor;
            return cudaSuccess;
        case cudaDevAttrMultiProcessorCount:
            *value = emulated_multiprocessors;
            return cudaSuccess;
        case cudaDevAttrMaxSharedMemoryPerBlockOptin:
            *value = emulated_shared_optin;
            return cudaSuccess;
        case cudaDevAttrWarpSize:
            *value = 32;
            return cudaSuccess;
        default:
            return report(cudaErrorInvalidValue, "cudaDeviceGetAttribute", "attribute not emulated");
    }
}

cudaError_t cudaGetDeviceProperties(cudaDeviceProp* prop, int device) {
    if (prop == nullptr) return report(cudaErrorInvalidValue, "cudaGetDeviceProperties", "prop is null");
    if (device != 0) return report(cudaErrorInvalidDevice, "cudaGetDeviceProperties", "device is not 0");
    std::memset(prop, 0, sizeof *prop);
    std::snprintf(prop->name, sizeof prop->name, "mmca warp emulator (sm_%d%d)", emulated_major, emulated_minor);
    prop->major = emulated_major;
    prop->minor = emulated_minor;
    prop->multiProcessorCount = emulated_multiprocessors;
    prop->sharedMemPerBlockOptin = emulated_shared_optin;
    prop->sharedMemPerBlock = 48 * 1024;
    prop->warpSize = 32;
    prop->maxThreadsPerBlock = 1024;
    prop->totalGlobalMem = std::size_t{16} << 30;
    return cudaSuccess;
}

cudaError_t cudaDeviceSynchronize(void) { return cudaSuccess; }

// ---- streams -------------------------------------------------------------------------------------
cudaError_t cudaStreamCreateWithFlags(cudaStream_t* stream, unsigned int) {
    if (stream == nullptr) return report(cudaErrorInvalidValue, "cudaStreamCreateWithFlags", "pStream is null");
    *stream = reinterpret_cast<cudaStream_t>(new char);
    return cudaSuccess;
}

cudaError_t cudaStreamDestroy(cudaStream_t stream) {
    delete reinterpret_cast<char*>(stream);
    return cudaSuccess;
}

cudaError_t cudaStreamSynchronize(cudaStream_t) { return cudaSuccess; }

// ---- memory --------------------------------------------------------------------------------------
cudaError_t cudaMalloc(void** devPtr, size_t size) { return allocate(devPtr, size, "cudaMalloc"); }
cudaError_t cudaMallocAsync(void** devPtr, size_t size, cudaStream_t) {
    return allocate(devPtr, size, "cudaMallocAsync");
}
cudaError_t cudaFree(void* devPtr) { return release(devPtr, "cudaFree"); }
cudaError_t cudaFreeAsync(void* devPtr, cudaStream_t) { return release(devPtr, "cudaFreeAsync"); }

cudaError_t cudaMemcpy(void* dst, const void* src, size_t count, cudaMemcpyKind kind) {
    return copy(dst, src, count, kind, "cudaMemcpy");
}
cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t count, cudaMemcpyKind kind, cudaStream_t) {
    return copy(dst, src, count, kind, "cudaMemcpyAsync");
}
cudaError_t cudaMemset(void* devPtr, int value, size_t count) { return fill(devPtr, value, count, "cudaMemset"); }
cudaError_t cudaMemsetAsync(void* devPtr, int value, size_t count, cudaStream_t) {
    return fill(devPtr, value, count, "cudaMemsetAsync");
}

cudaError_t cudaMemcpy2D(void* dst, size_t dpitch, const void* src, size_t spitch, size_t width, size_t height,
                         cudaMemcpyKind kind) {
    return copy_2d(dst, dpitch, src, spitch, width, height, kind, "cudaMemcpy2D");
}
cudaError_t cudaMemcpy2DAsync(void* dst, size_t dpitch, const void* src, size_t spitch, size_t width, size_t height,
                              cudaMemcpyKind kind, cudaStream_t) {
    return copy_2d(dst, dpitch, src, spitch, width, height, kind, "cudaMemcpy2DAsync");
}
cudaError_t cudaMemset2DAsync(void* devPtr, size_t pitch, int value, size_t width, size_t height, cudaStream_t) {
    if (width == 0 || height == 0) return cudaSuccess;
    if (pitch < width) return report(cudaErrorInvalidPitchValue, "cudaMemset2DAsync", "pitch must be at least width");
    if (!inside_allocation(devPtr, (height - 1) * pitch + width))
        return report(cudaErrorInvalidValue, "cudaMemset2DAsync", "the rows do not lie inside one device allocation");
    for (std::size_t r = 0; r < height; ++r) std::memset(static_cast<unsigned char*>(devPtr) + r * pitch, value, width);
    return cudaSuccess;
}

cudaError_t cudaPointerGetAttributes(cudaPointerAttributes* attributes, const void* ptr) {
    if (attributes == nullptr) return report(cudaErrorInvalidValue, "cudaPointerGetAttributes", "attributes is null");
    std::memset(attributes, 0, sizeof *attributes);
    if (ptr != nullptr && inside_allocation(ptr, 0)) {
        attributes->type = cudaMemoryTypeDevice;
        attributes->device = 0;
        attributes->devicePointer = const_cast<void*>(ptr);
    } else {
        attributes->type = cudaMemoryTypeUnregistered;
        attributes->device = -2;
    }
    return cudaSuccess;
}

// ---- kernels -------------------------------------------------------------------------------------
cudaError_t cudaFuncSetAttribute(const void* func, cudaFuncAttribute attr, int value) {
    if (func == nullptr) return report(cudaErrorInvalidValue, "cudaFuncSetAttribute", "func is null");
    if (attr == cudaFuncAttributeMaxDynamicSharedMemorySize && (value < 0 || value > emulated_shared_optin))
        return report(cudaErrorInvalidValue, "cudaFuncSetAttribute",
                      "cudaFuncAttributeMaxDynamicSharedMemorySize above the device's opt-in limit");
    return cudaSuccess;
}

// ---- cuBLAS --------------------------------------------------------------------------------------
cublasStatus_t cublasCreate_v2(cublasHandle_t* handle) {
    if (handle == nullptr) return gemm_fail("cublasCreate: handle is null");
    *handle = new (std::nothrow) cublasContext;
    return *handle == nullptr ? CUBLAS_STATUS_ALLOC_FAILED : CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasDestroy_v2(cublasHandle_t handle) {
    if (handle == nullptr) return CUBLAS_STATUS_NOT_INITIALIZED;
    delete handle;
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasSetStream_v2(cublasHandle_t handle, cudaStream_t stream) {
    if (handle == nullptr) return CUBLAS_STATUS_NOT_INITIALIZED;
    handle->stream = stream;
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasSetMathMode(cublasHandle_t handle, cublasMath_t mode) {
    if (handle == nullptr) return CUBLAS_STATUS_NOT_INITIALIZED;
    handle->mode = mode;
    return CUBLAS_STATUS_SUCCESS;
}

const char* cublasGetStatusName(cublasStatus_t status) {
    switch (status) {
        case CUBLAS_STATUS_SUCCESS:
            return "CUBLAS_STATUS_SUCCESS";
        case CUBLAS_STATUS_NOT_INITIALIZED:
            return "CUBLAS_STATUS_NOT_INITIALIZED";
        case CUBLAS_STATUS_ALLOC_FAILED:
            return "CUBLAS_STATUS_ALLOC_FAILED";
        case CUBLAS_STATUS_INVALID_VALUE:
            return "CUBLAS_STATUS_INVALID_VALUE";
        case CUBLAS_STATUS_NOT_SUPPORTED:
            return "CUBLAS_STATUS_NOT_SUPPORTED";
        default:
            return "CUBLAS_STATUS_INTERNAL_ERROR";
    }
}

const char* cublasGetStatusString(cublasStatus_t status) {
    switch (status) {
        case CUBLAS_STATUS_SUCCESS:
            return "success";
        case CUBLAS_STATUS_NOT_INITIALIZED:
            return "the library was not initialized";
        case CUBLAS_STATUS_ALLOC_FAILED:
            return "the resource allocation failed";
        case CUBLAS_STATUS_INVALID_VALUE:
            return "an invalid numeric value was used as an argument";
        case CUBLAS_STATUS_NOT_SUPPORTED:
            return "the functionality requested is not supported";
        default:
            return "an internal operation failed";
    }
}

cublasStatus_t cublasGemmEx(cublasHandle_t handle, cublasOperation_t transa, cublasOperation_t transb, int m, int n,
                            int k, const void* alpha, const void* A, cudaDataType Atype, int lda, const void* B,
                            cudaDataType Btype, int ldb, const void* beta, void* C, cudaDataType Ctype, int ldc,
                            cublasComputeType_t computeType, cublasGemmAlgo_t) {
    if (handle == nullptr) return CUBLAS_STATUS_NOT_INITIALIZED;
    return gemm(transa, transb, m, n, k, alpha, A, Atype, lda, 0, B, Btype, ldb, 0, beta, C, Ctype, ldc, 0, 1,
                computeType);
}

cublasStatus_t cublasGemmStridedBatchedEx(cublasHandle_t handle, cublasOperation_t transa, cublasOperation_t transb,
                                          int m, int n, int k, const void* alpha, const void* A, cudaDataType Atype,
                                          int lda, long long int strideA, const void* B, cudaDataType Btype, int ldb,
                                          long long int strideB, const void* beta, void* C, cudaDataType Ctype,
                                          int ldc, long long int strideC, int batchCount,
                                          cublasComputeType_t computeType, cublasGemmAlgo_t) {
    if (handle == nullptr) return CUBLAS_STATUS_NOT_INITIALIZED;
    return gemm(transa, transb, m, n, k, alpha, A, Atype, lda, strideA, B, Btype, ldb, strideB, beta, C, Ctype, ldc,
                strideC, batchCount, computeType);
}

}  // extern "C"
