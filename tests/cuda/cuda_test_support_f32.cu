// tests/cuda/cuda_test_support_f32.cu - float32 instances of the test helpers, and the device queries.
#include "cuda_test_support_impl.cuh"

#include <sstream>

namespace mmca_cuda_test {

bool gpu_available() { return mmca::cuda::device_available(); }

std::string gpu_description() {
    if (!gpu_available()) return "";
    int dev = 0;
    cudaDeviceProp prop{};
    if (cudaGetDevice(&dev) != cudaSuccess || cudaGetDeviceProperties(&prop, dev) != cudaSuccess) return "";
    std::ostringstream os;
    os << prop.name << " (sm_" << prop.major << prop.minor << ", " << prop.multiProcessorCount << " SMs)";
    return os.str();
}

}  // namespace mmca_cuda_test

MMCA_CUDA_TEST_INSTANTIATE(float)
