// tests/cuda/cuda_test_support.hpp - the host-side face of the CUDA backend for the tests.
//
// The test files are plain C++ (compiled by the host compiler, with GoogleTest and the CPU oracle);
// everything that touches the device lives in cuda_test_support_*.cu, one translation unit per
// element type, behind the functions declared here. Tensors cross as float32 host tensors: the
// helpers round them to the storage type S (float, mmca::float16, mmca::bfloat16) on the host,
// upload, run the CUDA backend, and widen the result back to float32.
#pragma once

#include "mmca/attention/types.hpp"
#include "mmca/backend/cuda/backward_kernel.hpp"
#include "mmca/core/tensor.hpp"

#include <cstdint>
#include <memory>
#include <string>

namespace mmca_cuda_test {

using tensor4 = mmca::tensor<float, 4>;

/// True when a CUDA device can be used (no driver, no device: false).
bool gpu_available();
/// "NVIDIA H100 80GB HBM3 (sm_90, 132 SMs)" or "" without a device.
std::string gpu_description();

/// Skips the current test when no GPU is present (the CPU-only CI machines). For test files (gtest).
#define MMCA_REQUIRE_GPU()                                                   \
    do {                                                                     \
        if (!::mmca_cuda_test::gpu_available()) GTEST_SKIP() << "no CUDA device"; \
    } while (0)

enum class kernel_choice { automatic, tiled, rows };

inline const char* kernel_name(kernel_choice k) {
    switch (k) {
        case kernel_choice::automatic: return "automatic";
        case kernel_choice::tiled: return "tiled";
        case kernel_choice::rows: return "rows";
    }
    return "unknown";
}

struct run_options {
    kernel_choice kernel = kernel_choice::automatic;
    int splits = 0;                 // rows kernel: key splits (0: automatic)
    bool head_major_layout = false; // store q/k/v/out as (B, L, H, D) in memory and pass strided views
    bool own_stream = false;        // run on a created stream instead of the default stream
    std::string order = "automatic";  // tiled kernel's CTA order: "automatic", "tile_major", "head_major"
};

/// What the backend chose for a call.
struct run_report {
    std::string kernel;  // "tiled" or "rows"
    int splits = 1;
    std::string order;  // "tile_major" or "head_major"
};

/// mmca::cuda::attention_operator<S> on q, k, v rounded to S; returns the output widened to float.
/// The device output starts as NaN (every element must be written).
template <class S>
tensor4 run_attention(const tensor4& q, const tensor4& k, const tensor4& v, const mmca::token_layout& tokens,
                      const mmca::attention_options& options, const run_options& run = {}, run_report* report = nullptr);

/// The one-shot entry point mmca::cuda::attention_forward<S> (stream-ordered plan buffers).
template <class S>
tensor4 run_attention_forward(const tensor4& q, const tensor4& k, const tensor4& v, const mmca::token_layout& tokens,
                              const mmca::attention_options& options);

/// mmca::cuda::attention_operator<S>::can_implement for the given shapes and kernel, as a string
/// ("success", "unsupported_layout", ...). Tensors are allocated on the device, never computed on.
template <class S>
std::string can_implement(const tensor4& q, const tensor4& k, const tensor4& v, const mmca::token_layout& tokens,
                          const mmca::attention_options& options, kernel_choice kernel);

/// Runs initialize() on device tensors of the given shapes and returns the message of the
/// mmca::invalid_argument it throws ("" when it accepts the call).
template <class S>
std::string initialize_error(const tensor4& q, const tensor4& k, const tensor4& v, const mmca::token_layout& tokens,
                             const mmca::attention_options& options, kernel_choice kernel = kernel_choice::automatic);

/// The forward with statistics and the backward of one call, widened to float32.
struct backward_run {
    tensor4 out;        ///< (B, Hq, Lq, D)
    tensor4 row_max;    ///< (B, Hq, Lq, 2)
    tensor4 row_sum;    ///< (B, Hq, Lq, 2)
    tensor4 group_out;  ///< (B, Hq, Lq, 2 * D): group 0's D values, then group 1's
    tensor4 dq, dk, dv;
    mmca::cuda::backward_kernel kernel = mmca::cuda::backward_kernel::automatic;  ///< the kernels that ran
};

/// mmca::cuda::attention_forward_with_stats<S> (run.kernel picks the forward kernel) followed by
/// mmca::cuda::attention_backward<S> with dout; inputs rounded to S. All device outputs start as
/// NaN. block: attention_backward_config::block (0 automatic); kernel: attention_backward_config::kernel
/// (the FFMA kernels unless asked otherwise, so that each family is tested by name).
template <class S>
backward_run run_backward(const tensor4& q, const tensor4& k, const tensor4& v, const tensor4& dout,
                          const mmca::token_layout& tokens, const mmca::attention_options& options,
                          const run_options& run = {}, int block = 0,
                          mmca::cuda::backward_kernel kernel = mmca::cuda::backward_kernel::ffma);

/// The message of the mmca::invalid_argument that mmca::cuda::attention_backward<float> throws when
/// `broken` names one of its arguments to pass with a wrong shape ("dq", "dk", "dv", "dout",
/// "row_max", "group_out") or "config.kernel" (tensor cores asked for float32 inputs); "" when it
/// accepts the call.
std::string backward_error(const tensor4& q, const tensor4& k, const tensor4& v, const mmca::token_layout& tokens,
                           const mmca::attention_options& options, const std::string& broken);

/// A mmca::cuda::kv_cache<S> driven with float32 host tensors.
template <class S>
class device_cache {
public:
    device_cache(std::int64_t batch, std::int64_t kv_heads, std::int64_t capacity, std::int64_t head_dim);
    ~device_cache();
    device_cache(const device_cache&) = delete;
    device_cache& operator=(const device_cache&) = delete;

    /// k_new, v_new (B, Hkv, Ln, D); types (B, Ln); ids and lens optional (empty tensors: absent).
    void append(const tensor4& k_new, const tensor4& v_new, const mmca::tensor<std::int8_t, 2>& types,
                const mmca::tensor<std::int32_t, 2>* ids = nullptr, const mmca::tensor<std::int32_t, 1>* lens = nullptr);
    /// Attention of the latest append's tokens; q is (B, Hq, Lq, D).
    tensor4 attend(const tensor4& q, const mmca::attention_options& options, const run_options& run = {},
                   run_report* report = nullptr);
    std::int64_t length(std::int64_t b) const;

private:
    struct impl;
    std::unique_ptr<impl> impl_;
};

}  // namespace mmca_cuda_test
