// tests/cuda/cuda_backward_support_bf16.cu - bfloat16 instances of the backward test helpers.
#include "cuda_backward_support_impl.cuh"

MMCA_CUDA_BACKWARD_TEST_INSTANTIATE(mmca::bfloat16)
