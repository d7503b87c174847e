// tests/cuda/cuda_test_support_bf16.cu - bfloat16 instances of the test helpers.
#include "cuda_test_support_impl.cuh"

MMCA_CUDA_TEST_INSTANTIATE(mmca::bfloat16)
