// tests/cuda/cuda_test_support_impl.cuh - definitions of cuda_test_support.hpp, included by one
// .cu file per storage type (cuda_test_support_f32.cu, _f16.cu, _bf16.cu), which instantiate them.
#pragma once

#include "cuda_test_support.hpp"

#include "mmca/backend/cuda/attention_fused.cuh"
#include "mmca/backend/cuda/kv_cache.cuh"
#include "mmca/core/dtype.hpp"

#include <array>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

namespace mmca_cuda_test {
namespace detail {

inline mmca::cuda::attention_kernel to_kernel(kernel_choice k) {
    switch (k) {
        case kernel_choice::tiled: return mmca::cuda::attention_kernel::tiled;
        case kernel_choice::rows: return mmca::cuda::attention_kernel::rows;
        default: return mmca::cuda::attention_kernel::automatic;
    }
}

inline mmca::cuda::cta_order to_order(const std::string& order) {
    if (order == "tile_major") return mmca::cuda::cta_order::tile_major;
    if (order == "head_major") return mmca::cuda::cta_order::head_major;
    return mmca::cuda::cta_order::automatic;
}

/// A (B, H, L, D) tensor of S on the device, row-major or stored head-major as (B, L, H, D).
template <class S>
struct device_tensor {
    mmca::cuda::device_buffer buffer;
    std::array<std::int64_t, 4> shape{}, strides{};

    device_tensor(const std::array<std::int64_t, 4>& dims, bool head_major) : shape(dims) {
        const std::int64_t H = dims[1], L = dims[2], D = dims[3];
        if (head_major)
            strides = {L * H * D, D, H * D, 1};
        else
            strides = {H * L * D, L * D, D, 1};
        buffer.allocate(static_cast<std::size_t>(numel()) * sizeof(S));
    }
    std::int64_t numel() const { return shape[0] * shape[1] * shape[2] * shape[3]; }

    static std::array<std::int64_t, 4> dims_of(const tensor4& t) {
        return {static_cast<std::int64_t>(t.shape()[0]), static_cast<std::int64_t>(t.shape()[1]),
                static_cast<std::int64_t>(t.shape()[2]), static_cast<std::int64_t>(t.shape()[3])};
    }

    static device_tensor upload(const tensor4& t, bool head_major = false) {
        device_tensor dt(dims_of(t), head_major);
        std::vector<S> host(static_cast<std::size_t>(dt.numel()));
        for (std::int64_t b = 0; b < dt.shape[0]; ++b)
            for (std::int64_t h = 0; h < dt.shape[1]; ++h)
                for (std::int64_t i = 0; i < dt.shape[2]; ++i)
                    for (std::int64_t d = 0; d < dt.shape[3]; ++d)
                        host[b * dt.strides[0] + h * dt.strides[1] + i * dt.strides[2] + d] =
                            static_cast<S>(t(b, h, i, d));
        MMCA_CUDA_CHECK(cudaMemcpy(dt.buffer.data(), host.data(), host.size() * sizeof(S), cudaMemcpyHostToDevice));
        // A pageable copy may still be in flight when cudaMemcpy returns; the kernels may run on
        // a non-blocking stream, which does not wait for the legacy default stream.
        MMCA_CUDA_CHECK(cudaDeviceSynchronize());
        return dt;
    }

    /// A tensor of the given shape filled with NaN bytes.
    static device_tensor poisoned(const std::array<std::int64_t, 4>& dims, bool head_major = false) {
        device_tensor dt(dims, head_major);
        MMCA_CUDA_CHECK(cudaMemset(dt.buffer.data(), 0xff, static_cast<std::size_t>(dt.numel()) * sizeof(S)));
        MMCA_CUDA_CHECK(cudaDeviceSynchronize());
        return dt;
    }

    tensor4 download() const {
        std::vector<S> host(static_cast<std::size_t>(numel()));
        MMCA_CUDA_CHECK(cudaMemcpy(host.data(), buffer.data(), host.size() * sizeof(S), cudaMemcpyDeviceToHost));
        tensor4 t(std::array<std::size_t, 4>{static_cast<std::size_t>(shape[0]), static_cast<std::size_t>(shape[1]),
                                             static_cast<std::size_t>(shape[2]), static_cast<std::size_t>(shape[3])});
        for (std::int64_t b = 0; b < shape[0]; ++b)
            for (std::int64_t h = 0; h < shape[1]; ++h)
                for (std::int64_t i = 0; i < shape[2]; ++i)
                    for (std::int64_t d = 0; d < shape[3]; ++d)
                        t(b, h, i, d) =
                            static_cast<float>(host[b * strides[0] + h * strides[1] + i * strides[2] + d]);
        return t;
    }

    mmca::tensor_ref<const S, 4> cref() const { return {buffer.as<const S>(), shape, strides}; }
    mmca::tensor_ref<S, 4> ref() const { return {buffer.as<S>(), shape, strides}; }
};

/// A stream for one test call (the default stream unless asked otherwise).
struct test_stream {
    cudaStream_t stream = nullptr;
    explicit test_stream(bool own) {
        if (own) MMCA_CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
    }
    ~test_stream() {
        if (stream != nullptr) cudaStreamDestroy(stream);
    }
    void synchronize() const {
        MMCA_CUDA_CHECK(cudaStreamSynchronize(stream));
        MMCA_CUDA_CHECK(cudaGetLastError());
    }
};

}  // namespace detail

template <class S>
tensor4 run_attention(const tensor4& q, const tensor4& k, const tensor4& v, const mmca::token_layout& tokens,
                      const mmca::attention_options& options, const run_options& run, run_report* report) {
    using dt = detail::device_tensor<S>;
    const dt dq = dt::upload(q, run.head_major_layout), dk = dt::upload(k, run.head_major_layout),
             dv = dt::upload(v, run.head_major_layout);
    const dt dout = dt::poisoned(dt::dims_of(q), run.head_major_layout);
    detail::test_stream stream(run.own_stream);
    mmca::cuda::attention_operator<S> op;
    mmca::cuda::attention_config config;
    config.kernel = detail::to_kernel(run.kernel);
    config.splits = run.splits;
    config.order = detail::to_order(run.order);
    op.initialize({dq.cref(), dk.cref(), dv.cref(), tokens, options, dout.ref()}, config, stream.stream);
    op.run(stream.stream);
    stream.synchronize();
    if (report != nullptr) {
        report->kernel = mmca::cuda::to_string(op.kernel());
        report->splits = op.splits();
        report->order = mmca::cuda::to_string(op.order());
    }
    return dout.download();
}

template <class S>
tensor4 run_attention_forward(const tensor4& q, const tensor4& k, const tensor4& v, const mmca::token_layout& tokens,
                              const mmca::attention_options& options) {
    using dt = detail::device_tensor<S>;
    const dt dq = dt::upload(q), dk = dt::upload(k), dv = dt::upload(v);
    const dt dout = dt::poisoned(dt::dims_of(q));
    mmca::cuda::attention_forward<S>(dq.cref(), dk.cref(), dv.cref(), tokens, options, dout.ref());
    MMCA_CUDA_CHECK(cudaDeviceSynchronize());
    return dout.download();
}

template <class S>
std::string can_implement(const tensor4& q, const tensor4& k, const tensor4& v, const mmca::token_layout& tokens,
                          const mmca::attention_options& options, kernel_choice kernel) {
    using dt = detail::device_tensor<S>;
    const dt dq = dt::upload(q), dk = dt::upload(k), dv = dt::upload(v);
    const dt dout = dt::poisoned(dt::dims_of(q));
    mmca::cuda::attention_config config;
    config.kernel = detail::to_kernel(kernel);
    return mmca::cuda::to_string(mmca::cuda::attention_operator<S>::can_implement(
        {dq.cref(), dk.cref(), dv.cref(), tokens, options, dout.ref()}, config));
}

template <class S>
std::string initialize_error(const tensor4& q, const tensor4& k, const tensor4& v, const mmca::token_layout& tokens,
                             const mmca::attention_options& options, kernel_choice kernel) {
    using dt = detail::device_tensor<S>;
    const dt dq = dt::upload(q), dk = dt::upload(k), dv = dt::upload(v);
    const dt dout = dt::poisoned(dt::dims_of(q));
    mmca::cuda::attention_config config;
    config.kernel = detail::to_kernel(kernel);
    try {
        mmca::cuda::attention_operator<S> op;
        op.initialize({dq.cref(), dk.cref(), dv.cref(), tokens, options, dout.ref()}, config);
    } catch (const mmca::invalid_argument& e) {
        return e.what();
    }
    return "";
}

template <class S>
struct device_cache<S>::impl {
    mmca::cuda::kv_cache<S> cache;
    impl(std::int64_t b, std::int64_t h, std::int64_t c, std::int64_t d) : cache(b, h, c, d) {}
};

template <class S>
device_cache<S>::device_cache(std::int64_t batch, std::int64_t kv_heads, std::int64_t capacity, std::int64_t head_dim)
    : impl_(std::make_unique<impl>(batch, kv_heads, capacity, head_dim)) {}

template <class S>
device_cache<S>::~device_cache() = default;

template <class S>
void device_cache<S>::append(const tensor4& k_new, const tensor4& v_new, const mmca::tensor<std::int8_t, 2>& types,
                             const mmca::tensor<std::int32_t, 2>* ids, const mmca::tensor<std::int32_t, 1>* lens) {
    using dt = detail::device_tensor<S>;
    const dt dk = dt::upload(k_new), dv = dt::upload(v_new);
    mmca::tensor_ref<const std::int32_t, 2> id_ref;
    mmca::tensor_ref<const std::int32_t, 1> len_ref;
    if (ids != nullptr) id_ref = mmca::tensor_ref<const std::int32_t, 2>(*ids);
    if (lens != nullptr) len_ref = mmca::tensor_ref<const std::int32_t, 1>(*lens);
    impl_->cache.append(dk.cref(), dv.cref(), mmca::tensor_ref<const std::int8_t, 2>(types), id_ref, len_ref);
    MMCA_CUDA_CHECK(cudaDeviceSynchronize());
}

template <class S>
tensor4 device_cache<S>::attend(const tensor4& q, const mmca::attention_options& options, const run_options& run,
                                run_report* report) {
    using dt = detail::device_tensor<S>;
    const dt dq = dt::upload(q);
    const dt dout = dt::poisoned(dt::dims_of(q));
    mmca::cuda::attention_operator<S> op;
    mmca::cuda::attention_config config;
    config.kernel = detail::to_kernel(run.kernel);
    config.splits = run.splits;
    const auto& c = impl_->cache;
    op.initialize({dq.cref(), c.keys(), c.values(), c.tokens(), options, dout.ref()}, config);
    op.run();
    MMCA_CUDA_CHECK(cudaDeviceSynchronize());
    if (report != nullptr) {
        report->kernel = mmca::cuda::to_string(op.kernel());
        report->splits = op.splits();
    }
    return dout.download();
}

template <class S>
std::int64_t device_cache<S>::length(std::int64_t b) const {
    return impl_->cache.length(b);
}

}  // namespace mmca_cuda_test

#define MMCA_CUDA_TEST_INSTANTIATE(S)                                                                               \
    namespace mmca_cuda_test {                                                                                      \
    template tensor4 run_attention<S>(const tensor4&, const tensor4&, const tensor4&, const mmca::token_layout&,    \
                                      const mmca::attention_options&, const run_options&, run_report*);            \
    template tensor4 run_attention_forward<S>(const tensor4&, const tensor4&, const tensor4&,                       \
                                              const mmca::token_layout&, const mmca::attention_options&);           \
    template std::string can_implement<S>(const tensor4&, const tensor4&, const tensor4&, const mmca::token_layout&, \
                                          const mmca::attention_options&, kernel_choice);                           \
    template std::string initialize_error<S>(const tensor4&, const tensor4&, const tensor4&,                        \
                                             const mmca::token_layout&, const mmca::attention_options&,             \
                                             kernel_choice);                                                        \
    template class device_cache<S>;                                                                                 \
    }
