// mmca/backend/cuda/library.cu - the one translation unit of the compiled CUDA library (CMake target
// mmca_cuda): the functions of library.hpp, each dispatching to the header templates for float32,
// float16 and bfloat16. Consumers that compile with nvcc can use the templates directly instead.
#include "mmca/backend/cuda/library.hpp"

#include "mmca/backend/cuda/attention_backward.cuh"
#include "mmca/backend/cuda/attention_fused.cuh"
#include "mmca/core/error.hpp"

#include <string>

namespace mmca {
namespace cuda {
namespace lib {
namespace {

template <class T>
tensor_ref<const T, 4> as_const(const device_view& v) {
    return tensor_ref<const T, 4>(static_cast<const T*>(v.data), v.shape, v.strides);
}

template <class T>
tensor_ref<T, 4> as_mutable(const device_view& v) {
    return tensor_ref<T, 4>(static_cast<T*>(v.data), v.shape, v.strides);
}

void check_type(const char* where, const char* name, const device_view& v, element want) {
    if (v.data == nullptr) return;  // the templates report a missing tensor
    MMCA_CHECK_ARG(v.type == want, where, name, to_string(v.type),
                   std::string("the element type of q (") + to_string(want) + ")");
}

/// Runs f with the storage type of e (float, mmca::float16, mmca::bfloat16); CUDA failures become
/// lib::runtime_error so that callers need no CUDA header.
template <class F>
void dispatch(element e, F&& f) {
    try {
        switch (e) {
            case element::float32: f(float{}); return;
            case element::float16: f(float16{}); return;
            case element::bfloat16: f(bfloat16{}); return;
        }
    } catch (const cuda_error& err) {
        throw runtime_error(err.what());
    }
    throw mmca::invalid_argument("mmca::cuda::lib", "q", "an unknown element type", "float32, float16 or bfloat16");
}

}  // namespace

bool device_available() noexcept { return mmca::cuda::device_available(); }

std::string device_description() {
    if (!device_available()) return "";
    int dev = 0;
    cudaDeviceProp prop{};
    if (cudaGetDevice(&dev) != cudaSuccess || cudaGetDeviceProperties(&prop, dev) != cudaSuccess) return "";
    return std::string(prop.name) + " (sm_" + std::to_string(prop.major) + std::to_string(prop.minor) + ", " +
           std::to_string(prop.multiProcessorCount) + " SMs)";
}

void synchronize(void* stream) {
    const cudaError_t code = cudaStreamSynchronize(static_cast<cudaStream_t>(stream));
    if (code != cudaSuccess) throw runtime_error(cuda_error("cudaStreamSynchronize", code).what());
}

void attention_forward(const device_view& q, const device_view& k, const device_view& v, const token_layout& tokens,
                       const attention_options& options, const device_view& out, void* stream,
                       const attention_stats* stats) {
    constexpr const char* where = "mmca::cuda::attention_forward";
    check_type(where, "k", k, q.type);
    check_type(where, "v", v, q.type);
    check_type(where, "out", out, q.type);
    dispatch(q.type, [&](auto tag) {
        using T = decltype(tag);
        const auto s = static_cast<cudaStream_t>(stream);
        if (stats != nullptr)
            mmca::cuda::attention_forward_with_stats<T>(as_const<T>(q), as_const<T>(k), as_const<T>(v), tokens, options,
                                                        as_mutable<T>(out), *stats, s);
        else
            mmca::cuda::attention_forward<T>(as_const<T>(q), as_const<T>(k), as_const<T>(v), tokens, options,
                                             as_mutable<T>(out), s);
    });
}

void attention_backward(const device_view& q, const device_view& k, const device_view& v, const device_view& dout,
                        const token_layout& tokens, const attention_options& options,
                        const attention_stats_view& stats, const device_view& dq, const device_view& dk,
                        const device_view& dv, void* stream) {
    constexpr const char* where = "mmca::cuda::attention_backward";
    check_type(where, "k", k, q.type);
    check_type(where, "v", v, q.type);
    check_type(where, "dout", dout, q.type);
    check_type(where, "dq", dq, q.type);
    check_type(where, "dk", dk, q.type);
    check_type(where, "dv", dv, q.type);
    dispatch(q.type, [&](auto tag) {
        using T = decltype(tag);
        mmca::cuda::attention_backward<T>(as_const<T>(q), as_const<T>(k), as_const<T>(v), as_const<T>(dout), tokens,
                                          options, stats, as_mutable<T>(dq), as_mutable<T>(dk), as_mutable<T>(dv),
                                          static_cast<cudaStream_t>(stream));
    });
}

}  // namespace lib
}  // namespace cuda
}  // namespace mmca
