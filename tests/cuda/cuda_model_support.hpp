// tests/cuda/cuda_model_support.hpp - runs the LLaMa-2 decoder on the GPU for the tests.
//
// The test file is plain C++; cuda_model_support.cu instantiates mmca::cuda::llama_model<S>. A run
// is a list of forward() calls (a prompt, chunks, single decode tokens, later rounds) on one model,
// so the device KV caches carry over from call to call exactly as in a chat. run_steps()
// (tests/cpp/llama_steps.hpp) is the same host code for both models: the CPU run and the GPU run
// differ only in the model type.
#pragma once

#include "llama_steps.hpp"  // model_step, run_steps

#include "mmca/language/config.hpp"
#include "mmca/language/model.hpp"
#include "mmca/language/weights.hpp"

#include <vector>

namespace mmca_cuda_test {

using mmca_test::model_step;
using mmca_test::run_steps;

/// run_steps on a fresh mmca::cuda::llama_model<S> (weights converted to S on the device).
template <class S>
std::vector<std::vector<float>> cuda_llama_run(const mmca::llama_config& config, const mmca::llama_weights& weights,
                                               const mmca::llama_model_options& options,
                                               const std::vector<model_step>& steps);

}  // namespace mmca_cuda_test
