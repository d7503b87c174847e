// tests/cuda/cuda_model_support.hpp - runs the LLaMa-2 decoder on the GPU for the tests.
//
// The test file is plain C++; cuda_model_support.cu instantiates mmca::cuda::llama_model<S>. A run
// is a list of forward() calls (a prompt, chunks, single decode tokens, later rounds) on one model,
// so the device KV caches carry over from call to call exactly as in a chat. run_steps() is the
// same host code for both models: the CPU run and the GPU run differ only in the model type.
#pragma once

#include "mmca/core/tensor.hpp"
#include "mmca/language/config.hpp"
#include "mmca/language/model.hpp"
#include "mmca/language/weights.hpp"

#include <cstdint>
#include <vector>

namespace mmca_cuda_test {

/// One forward() call: L new positions per sequence of a batch of B.
struct model_step {
    std::int64_t length = 0;            // L
    std::vector<float> embeddings;      // (B, L, H)
    std::vector<std::int8_t> types;     // (B, L)
    std::vector<std::int32_t> lens;     // (B): sequence b takes its first lens[b] positions
};

/// The logits (B, L, V) of every step, from forward(..., logits_mode::all).
template <class Model>
std::vector<std::vector<float>> run_steps(Model& model, const std::vector<model_step>& steps) {
    const std::int64_t B = model.batch(), H = model.config().hidden_size, V = model.config().vocab_size;
    std::vector<std::vector<float>> out;
    for (const auto& s : steps) {
        const std::int64_t L = s.length;
        std::vector<float> logits(static_cast<std::size_t>(B * L * V));
        model.forward(mmca::tensor_ref<const float, 3>(s.embeddings.data(), {B, L, H}),
                      mmca::tensor_ref<const std::int8_t, 2>(s.types.data(), {B, L}), {},
                      mmca::tensor_ref<const std::int32_t, 1>(s.lens.data(), {B}),
                      mmca::tensor_ref<float, 3>(logits.data(), {B, L, V}), mmca::logits_mode::all);
        out.push_back(std::move(logits));
    }
    return out;
}

/// run_steps on a fresh mmca::cuda::llama_model<S> (weights converted to S on the device).
template <class S>
std::vector<std::vector<float>> cuda_llama_run(const mmca::llama_config& config, const mmca::llama_weights& weights,
                                               const mmca::llama_model_options& options,
                                               const std::vector<model_step>& steps);

}  // namespace mmca_cuda_test
