// mmca/backend/cuda/backward_kernel.hpp - which kernels compute the CUDA attention backward.
//
// Plain C++ (no CUDA header): shared by the templates (attention_backward.cuh) and the compiled
// library's declarations (library.hpp).
#pragma once

#include <cstdint>

namespace mmca {
namespace cuda {

/// Which kernels compute the block products of the attention backward.
enum class backward_kernel : std::uint8_t {
    automatic,     ///< tensor_cores where they serve, else ffma
    tensor_cores,  ///< mma.sync on float16 / bfloat16: head dim <= 128 and a multiple of 8, rows of q, k, v
                   ///< and dout 16-byte aligned, sm_80 or newer
    ffma,          ///< float32 FFMA on copies in shared memory: every element type, head dims up to 256
};

inline const char* to_string(backward_kernel k) {
    switch (k) {
        case backward_kernel::automatic: return "automatic";
        case backward_kernel::tensor_cores: return "tensor_cores";
        case backward_kernel::ffma: return "ffma";
    }
    return "unknown";
}

}  // namespace cuda
}  // namespace mmca
