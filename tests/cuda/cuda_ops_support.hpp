// tests/cuda/cuda_ops_support.hpp - the host-side face of the CUDA model ops for the tests.
//
// Like cuda_test_support.hpp: the test file is plain C++; cuda_ops_support.cu holds everything that
// includes the CUDA headers. Tensors cross as float32 host tensors; each helper rounds its inputs to
// the storage type S (float, mmca::float16, mmca::bfloat16) on the host, uploads them, runs the op
// on the device (outputs start as NaN bytes, so every element must be written) and returns the
// result widened to float32. Float32 parameters (norm weights, biases) stay float32.
//
// The *_emulation functions and the validation cases need no device: they run the ops' own host /
// __host__ __device__ code (index arithmetic, GEMM argument mapping, argument checks) on the CPU.
#pragma once

#include "cuda_test_support.hpp"  // MMCA_REQUIRE_GPU, gpu_available

#include "mmca/core/tensor.hpp"
#include "mmca/nn/activation.hpp"
#include "mmca/nn/rope.hpp"

#include <cstdint>
#include <string>
#include <vector>

namespace mmca_cuda_test {

using tensor2 = mmca::tensor<float, 2>;

/// mmca::cuda::rmsnorm_forward<S>; in_place: y is x.
template <class S>
tensor2 cuda_rmsnorm(const tensor2& x, const std::vector<float>& weight, float eps, bool in_place);

/// mmca::cuda::layernorm_forward<S>; an empty weight / bias is passed as nullptr.
template <class S>
tensor2 cuda_layernorm(const tensor2& x, const std::vector<float>& weight, const std::vector<float>& bias, float eps,
                       bool in_place);

/// mmca::cuda::rope_apply<S> (per-token positions overload) on x given token-major as (B, L, H, D)
/// (the CPU layout); positions: B·L or L ids. head_major_storage: stored on the device as
/// row-major (B, H, L, D); otherwise as (B, L, H, D) and passed as a strided (B, H, L, D) view.
/// Returns (B, L, H, D).
template <class S>
tensor4 cuda_rope(const tensor4& x, const mmca::nn::rope_config& config, const std::vector<std::int64_t>& positions,
                  std::int64_t total_len, bool head_major_storage);

/// mmca::cuda::activation_forward<S> (out of place).
template <class S>
tensor2 cuda_activation(mmca::nn::activation act, const tensor2& x);

/// mmca::cuda::swiglu_forward<S>; fused_layout: gate and up are the two halves of one (N, 2I)
/// device buffer (row strides 2I) and the result is written over gate.
template <class S>
tensor2 cuda_swiglu(const tensor2& gate, const tensor2& up, bool fused_layout);

/// mmca::cuda::residual_add<S>: h + delta, on the rows r with rows[r] != 0 when rows is not empty.
template <class S>
tensor2 cuda_residual_add(const tensor2& h, const tensor2& delta, const std::vector<std::uint8_t>& rows = {});

/// mmca::cuda::embedding_forward with a table of S and an output of float (float_output) or S.
template <class S>
tensor2 cuda_embedding(const std::vector<std::int32_t>& ids, const tensor2& table, bool float_output);

/// mmca::cuda::linear_forward<S>: x (N, in) · weightᵀ + bias (empty: none). row_padding extra
/// elements at the end of every row of x, weight and y on the device (row strides > row lengths).
template <class S>
tensor2 cuda_linear(const tensor2& x, const tensor2& weight, const std::vector<float>& bias, std::int64_t row_padding);

/// mmca::cuda::extract_patches<S> of float32 images (N, C, H, W).
template <class S>
tensor2 cuda_extract_patches(const tensor4& images, std::int64_t patch);

/// mmca::cuda::patch_embedding_forward<S>: images (N, C, H, W), weight [W, C·P·P].
template <class S>
tensor2 cuda_patch_embedding(const tensor4& images, const tensor2& weight, std::int64_t patch);

// ---- no device needed --------------------------------------------------------------------------

/// The patch matrix built on the host with the unfold kernel's own index function.
tensor2 host_unfold_emulation(const tensor4& images, std::int64_t patch);

/// RoPE applied on the host with the rope kernel's own index function and the CPU's table, x given
/// token-major (B, L, H, D) and addressed as the strided (B, H, L, D) view the device would get.
tensor4 host_rope_emulation(const tensor4& x, const mmca::nn::rope_config& config,
                            const std::vector<std::int64_t>& positions, std::int64_t total_len);

/// y = x · weightᵀ computed by a plain column-major GEMM (BLAS semantics: C = op(A) · op(B)) fed
/// with the arguments linear_forward passes to cublasGemmEx, on buffers with row_padding.
tensor2 host_gemm_emulation(const tensor2& x, const tensor2& weight, std::int64_t row_padding);

/// The names of the argument-validation cases that fail on the host before any CUDA call.
std::vector<std::string> host_validation_cases();

/// Runs one case; returns the mmca::invalid_argument message ("" if nothing was thrown; any other
/// exception is reported as "other exception: ..."). `argument` receives the argument it named.
std::string host_validation_error(const std::string& name, std::string* argument = nullptr);

/// (needs a device) A host pointer passed as x / table / y: the message of the refusal.
std::string device_pointer_error(const std::string& op);

}  // namespace mmca_cuda_test
