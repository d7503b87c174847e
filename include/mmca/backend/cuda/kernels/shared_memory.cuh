// mmca/backend/cuda/kernels/shared_memory.cuh - the declaration of a kernel's dynamic shared memory.
//
//   MMCA_CUDA_DYNAMIC_SHARED(smem);   // unsigned char smem[], 16-byte aligned, the launch's dynamic size
//
// On the device this is the usual `extern __shared__ __align__(16) unsigned char smem[]`. Under the
// host warp emulator of the tests (MMCA_CUDA_WARP_EMULATION, tests/cuda_emulation/warp_emulation.hpp)
// it is a pointer to the emulated CTA's dynamic shared memory, which an extern array cannot express.
#pragma once

#if defined(MMCA_CUDA_WARP_EMULATION)
#define MMCA_CUDA_DYNAMIC_SHARED(name) unsigned char* const name = ::mmca::cuda::emulation::dynamic_shared()
#else
#define MMCA_CUDA_DYNAMIC_SHARED(name) extern __shared__ __align__(16) unsigned char name[]
#endif
