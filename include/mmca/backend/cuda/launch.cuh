// mmca/backend/cuda/launch.cuh - how mmca's host code launches a kernel.
//
//   MMCA_CUDA_LAUNCH(kernel, grid, block, dynamic_smem, stream, arguments...);
//
// A template-id with commas goes in parentheses: MMCA_CUDA_LAUNCH((k<T, 4>), grid, ...). Under nvcc
// this is `kernel<<<grid, block, dynamic_smem, stream>>>(arguments...)`: asynchronous, errors through
// cudaGetLastError. Under the host warp emulator of the tests (MMCA_CUDA_WARP_EMULATION,
// tests/cuda_emulation/warp_emulation.hpp) the same statement runs the whole grid on the CPU before it
// returns, so that the host code of the backend (ops, model, library) runs without a GPU.
#pragma once

#if defined(MMCA_CUDA_WARP_EMULATION)
#define MMCA_CUDA_LAUNCH(kernel, grid, block, dynamic_smem, stream, ...) \
    ::mmca::cuda::emulation::emulate_launch_on((stream), kernel, (grid), (block), (dynamic_smem), __VA_ARGS__)
#else
#define MMCA_CUDA_LAUNCH(kernel, grid, block, dynamic_smem, stream, ...) \
    kernel<<<(grid), (block), (dynamic_smem), (stream)>>>(__VA_ARGS__)
#endif
