// mmca/backend/cuda/kernels/mma_sm80.cuh - the few PTX instructions of Ampere (sm_80) and later
// that the tiled attention kernel uses: asynchronous global-to-shared copies (cp.async), 8x8
// shared-memory matrix loads (ldmatrix) and the warp-wide m16n8k16 tensor-core product (mma.sync)
// with 16-bit inputs and float32 accumulators. Hopper (sm_90) runs them as they are.
//
// Fragment layout of mma.m16n8k16 (lane = 4 * group + quad, group in [0, 8), quad in [0, 4)):
//   A (16 x 16, row major)  a[0]: (group,     2quad..+1)   a[1]: (group + 8, 2quad..+1)
//                           a[2]: (group,   8+2quad..+1)   a[3]: (group + 8, 8+2quad..+1)
//   B (16 x 8, k x n)       b[0]: (k = 2quad..+1, n = group)   b[1]: (k = 8+2quad..+1, n = group)
//   C (16 x 8, float)       c[0], c[1]: (group, 2quad..+1)     c[2], c[3]: (group + 8, 2quad..+1)
// Each 32-bit register of A or B holds two 16-bit values, the lower index in the lower half.
// On targets older than sm_80 these functions trap; the host never launches such code there.
//
// Under MMCA_CUDA_WARP_EMULATION (tests/cuda_emulation/warp_emulation.hpp, included first) the host
// emulator provides shared_address, the cp.async, ldmatrix and mma functions with these signatures,
// and this header defines only pack_pair.
#pragma once

#include "mmca/backend/cuda/kernels/shared_memory.cuh"

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <type_traits>

namespace mmca {
namespace cuda {
namespace detail {

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
#define MMCA_CUDA_SM80_OR_TRAP() __trap()
#define MMCA_CUDA_HAS_SM80 0
#else
#define MMCA_CUDA_SM80_OR_TRAP() (void)0
#define MMCA_CUDA_HAS_SM80 1
#endif

#if !defined(MMCA_CUDA_WARP_EMULATION)

__device__ __forceinline__ std::uint32_t shared_address(const void* p) {
    return static_cast<std::uint32_t>(__cvta_generic_to_shared(p));
}

/// 16-byte asynchronous copy global -> shared, cached in L2 only.
__device__ __forceinline__ void cp_async_16(void* smem, const void* gmem) {
#if MMCA_CUDA_HAS_SM80
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(shared_address(smem)), "l"(gmem) : "memory");
#else
    MMCA_CUDA_SM80_OR_TRAP();
#endif
}

/// 4-byte asynchronous copy global -> shared (cached in L1 and L2).
__device__ __forceinline__ void cp_async_4(void* smem, const void* gmem) {
#if MMCA_CUDA_HAS_SM80
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4;\n" ::"r"(shared_address(smem)), "l"(gmem) : "memory");
#else
    MMCA_CUDA_SM80_OR_TRAP();
#endif
}

__device__ __forceinline__ void cp_async_commit() {
#if MMCA_CUDA_HAS_SM80
    asm volatile("cp.async.commit_group;\n" ::: "memory");
#endif
}

/// Waits until at most `pending` committed groups of this thread are still in flight.
template <int pending>
__device__ __forceinline__ void cp_async_wait() {
#if MMCA_CUDA_HAS_SM80
    asm volatile("cp.async.wait_group %0;\n" ::"n"(pending) : "memory");
#endif
}

/// Four 8x8 matrices of 16-bit values; lane l gives the address of row l % 8 of matrix l / 8.
__device__ __forceinline__ void ldmatrix_x4(std::uint32_t (&r)[4], const void* smem_row) {
#if MMCA_CUDA_HAS_SM80
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(shared_address(smem_row)));
#else
    MMCA_CUDA_SM80_OR_TRAP();
#endif
}

/// Same, each matrix transposed on the way (lane gets (row 2(l%4)+{0,1}, column l/4)).
__device__ __forceinline__ void ldmatrix_x4_trans(std::uint32_t (&r)[4], const void* smem_row) {
#if MMCA_CUDA_HAS_SM80
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(shared_address(smem_row)));
#else
    MMCA_CUDA_SM80_OR_TRAP();
#endif
}

/// c += a * b on tensor cores, 16-bit inputs of type T (__half or __nv_bfloat16), float32 c.
template <class T>
__device__ __forceinline__ void mma_16816(float (&c)[4], const std::uint32_t (&a)[4], std::uint32_t b0,
                                          std::uint32_t b1) {
#if MMCA_CUDA_HAS_SM80
    if constexpr (std::is_same_v<T, __half>) {
        asm volatile(
            "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
            "{%0, %1, %2, %3};\n"
            : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
            : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
    } else {
        asm volatile(
            "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
            "{%0, %1, %2, %3};\n"
            : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
            : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
    }
#else
    MMCA_CUDA_SM80_OR_TRAP();
#endif
}

#endif  // !MMCA_CUDA_WARP_EMULATION

/// Two floats rounded to a packed pair of 16-bit values (first in the lower half).
template <class T>
__device__ __forceinline__ std::uint32_t pack_pair(float lo, float hi) {
    if constexpr (std::is_same_v<T, __half>) {
        const __half2 h = __floats2half2_rn(lo, hi);
        return *reinterpret_cast<const std::uint32_t*>(&h);
    } else {
        const __nv_bfloat162 h = __floats2bfloat162_rn(lo, hi);
        return *reinterpret_cast<const std::uint32_t*>(&h);
    }
}

}  // namespace detail
}  // namespace cuda
}  // namespace mmca
