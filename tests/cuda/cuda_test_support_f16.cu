// tests/cuda/cuda_test_support_f16.cu - float16 instances of the test helpers.
#include "cuda_test_support_impl.cuh"

MMCA_CUDA_TEST_INSTANTIATE(mmca::float16)
