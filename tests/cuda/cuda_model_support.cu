// tests/cuda/cuda_model_support.cu - mmca::cuda::llama_model for the tests (see cuda_model_support.hpp).
#include "cuda_model_support.hpp"

#include "mmca/backend/cuda/llama_backend.cuh"
#include "mmca/core/dtype.hpp"

namespace mmca_cuda_test {

template <class S>
std::vector<std::vector<float>> cuda_llama_run(const mmca::llama_config& config, const mmca::llama_weights& weights,
                                               const mmca::llama_model_options& options,
                                               const std::vector<model_step>& steps) {
    mmca::cuda::llama_model<S> model(config, weights, options);
    return run_steps(model, steps);
}

template std::vector<std::vector<float>> cuda_llama_run<float>(const mmca::llama_config&, const mmca::llama_weights&,
                                                               const mmca::llama_model_options&,
                                                               const std::vector<model_step>&);
template std::vector<std::vector<float>> cuda_llama_run<mmca::float16>(const mmca::llama_config&,
                                                                       const mmca::llama_weights&,
                                                                       const mmca::llama_model_options&,
                                                                       const std::vector<model_step>&);
template std::vector<std::vector<float>> cuda_llama_run<mmca::bfloat16>(const mmca::llama_config&,
                                                                        const mmca::llama_weights&,
                                                                        const mmca::llama_model_options&,
                                                                        const std::vector<model_step>&);

}  // namespace mmca_cuda_test
