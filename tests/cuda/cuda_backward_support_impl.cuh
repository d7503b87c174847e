// tests/cuda/cuda_backward_support_impl.cuh - the backward helpers of cuda_test_support.hpp, included
// by one .cu file per storage type (cuda_backward_support_f32.cu, _f16.cu, _bf16.cu), which
// instantiate them; separate from the forward helpers so that the translation units compile in
// parallel.
#pragma once

#include "cuda_test_support_impl.cuh"

#include "mmca/backend/cuda/attention_backward.cuh"

#include <array>
#include <cstdint>
#include <string>

namespace mmca_cuda_test {

namespace detail {

/// Device float32 statistics of a (B, Hq, Lq) problem with head dim D, NaN-filled.
struct device_stats {
    mmca::cuda::device_buffer max_buf, sum_buf, out_buf;
    std::array<std::int64_t, 4> rows{};
    std::array<std::int64_t, 5> outs{};

    device_stats(std::int64_t B, std::int64_t H, std::int64_t L, std::int64_t D) {
        rows = {B, H, L, 2};
        outs = {B, H, L, 2, D};
        const auto n = static_cast<std::size_t>(B * H * L * 2);
        max_buf.allocate(n * sizeof(float));
        sum_buf.allocate(n * sizeof(float));
        out_buf.allocate(n * static_cast<std::size_t>(D) * sizeof(float));
        MMCA_CUDA_CHECK(cudaMemset(max_buf.data(), 0xff, n * sizeof(float)));
        MMCA_CUDA_CHECK(cudaMemset(sum_buf.data(), 0xff, n * sizeof(float)));
        MMCA_CUDA_CHECK(cudaMemset(out_buf.data(), 0xff, n * static_cast<std::size_t>(D) * sizeof(float)));
        MMCA_CUDA_CHECK(cudaDeviceSynchronize());
    }
    mmca::attention_stats stats() const {
        return {mmca::tensor_ref<float, 4>(max_buf.as<float>(), rows), mmca::tensor_ref<float, 4>(sum_buf.as<float>(), rows),
                mmca::tensor_ref<float, 5>(out_buf.as<float>(), outs)};
    }
    static tensor4 download(const mmca::cuda::device_buffer& buf, std::size_t B, std::size_t H, std::size_t L,
                            std::size_t W) {
        tensor4 t(std::array<std::size_t, 4>{B, H, L, W});
        MMCA_CUDA_CHECK(cudaMemcpy(t.data(), buf.data(), t.size() * sizeof(float), cudaMemcpyDeviceToHost));
        return t;
    }
};

}  // namespace detail

template <class S>
backward_run run_backward(const tensor4& q, const tensor4& k, const tensor4& v, const tensor4& dout,
                          const mmca::token_layout& tokens, const mmca::attention_options& options,
                          const run_options& run, int block, mmca::cuda::backward_kernel kernel) {
    using dt = detail::device_tensor<S>;
    const bool hm = run.head_major_layout;
    const dt dq_in = dt::upload(q, hm), dk_in = dt::upload(k, hm), dv_in = dt::upload(v, hm), g = dt::upload(dout, hm);
    const dt out = dt::poisoned(dt::dims_of(q), hm);
    const dt dq = dt::poisoned(dt::dims_of(q), hm), dk = dt::poisoned(dt::dims_of(k), hm),
             dv = dt::poisoned(dt::dims_of(k), hm);
    const auto B = q.shape()[0], H = q.shape()[1], L = q.shape()[2], D = q.shape()[3];
    const detail::device_stats st(static_cast<std::int64_t>(B), static_cast<std::int64_t>(H),
                                  static_cast<std::int64_t>(L), static_cast<std::int64_t>(D));
    detail::test_stream stream(run.own_stream);
    mmca::cuda::attention_config config;
    config.kernel = detail::to_kernel(run.kernel);
    config.splits = run.splits;
    mmca::cuda::attention_forward_with_stats<S>(dq_in.cref(), dk_in.cref(), dv_in.cref(), tokens, options, out.ref(),
                                                st.stats(), stream.stream, config);
    mmca::cuda::attention_backward_config bconfig;
    bconfig.block = block;
    bconfig.kernel = kernel;
    mmca::cuda::attention_backward_operator<S> op;
    op.initialize(mmca::cuda::attention_backward_arguments<S>{dq_in.cref(), dk_in.cref(), dv_in.cref(), g.cref(),
                                                              tokens, options, mmca::attention_stats_view(st.stats()),
                                                              dq.ref(), dk.ref(), dv.ref()},
                  bconfig, stream.stream, true);
    op.run(stream.stream);
    stream.synchronize();
    backward_run r;
    r.kernel = op.kernel();
    r.out = out.download();
    r.row_max = detail::device_stats::download(st.max_buf, B, H, L, 2);
    r.row_sum = detail::device_stats::download(st.sum_buf, B, H, L, 2);
    r.group_out = detail::device_stats::download(st.out_buf, B, H, L, 2 * D);
    r.dq = dq.download();
    r.dk = dk.download();
    r.dv = dv.download();
    return r;
}

}  // namespace mmca_cuda_test

#define MMCA_CUDA_BACKWARD_TEST_INSTANTIATE(S)                                                                      \
    namespace mmca_cuda_test {                                                                                      \
    template backward_run run_backward<S>(const tensor4&, const tensor4&, const tensor4&, const tensor4&,           \
                                          const mmca::token_layout&, const mmca::attention_options&,                \
                                          const run_options&, int, mmca::cuda::backward_kernel);                    \
    }
