// tests/cuda/cuda_backward_support_f32.cu - float32 instances of the backward test helpers, and the
// argument-error helper.
#include "cuda_backward_support_impl.cuh"

namespace mmca_cuda_test {

std::string backward_error(const tensor4& q, const tensor4& k, const tensor4& v, const mmca::token_layout& tokens,
                           const mmca::attention_options& options, const std::string& broken) {
    using dt = detail::device_tensor<float>;
    auto dims = dt::dims_of;
    auto wrong = [&](std::array<std::int64_t, 4> d, const char* name) {
        if (broken == name) d[3] += 1;
        return d;
    };
    const dt dq_in = dt::upload(q), dk_in = dt::upload(k), dv_in = dt::upload(v);
    const dt dout = dt::poisoned(wrong(dims(q), "dout"));
    const dt dq = dt::poisoned(wrong(dims(q), "dq")), dk = dt::poisoned(wrong(dims(k), "dk")),
             dv = dt::poisoned(wrong(dims(k), "dv"));
    const auto B = static_cast<std::int64_t>(q.shape()[0]), H = static_cast<std::int64_t>(q.shape()[1]),
               L = static_cast<std::int64_t>(q.shape()[2]), D = static_cast<std::int64_t>(q.shape()[3]);
    const detail::device_stats st(B, H, broken == "row_max" ? L + 1 : L, broken == "group_out" ? D + 1 : D);
    mmca::attention_stats stats = st.stats();
    if (broken == "group_out") stats.row_max = mmca::tensor_ref<float, 4>(stats.row_max.data, {B, H, L, 2});
    if (broken == "group_out") stats.row_sum = mmca::tensor_ref<float, 4>(stats.row_sum.data, {B, H, L, 2});
    if (broken == "row_max") stats.row_sum = mmca::tensor_ref<float, 4>(stats.row_sum.data, {B, H, L, 2});
    if (broken == "row_max") stats.group_out = mmca::tensor_ref<float, 5>(stats.group_out.data, {B, H, L, 2, D});
    mmca::cuda::attention_backward_config config;
    if (broken == "config.kernel") config.kernel = mmca::cuda::backward_kernel::tensor_cores;  // float32 inputs
    try {
        mmca::cuda::attention_backward<float>(dq_in.cref(), dk_in.cref(), dv_in.cref(), dout.cref(), tokens, options,
                                              mmca::attention_stats_view(stats), dq.ref(), dk.ref(), dv.ref(), nullptr,
                                              config);
        MMCA_CUDA_CHECK(cudaDeviceSynchronize());
    } catch (const mmca::invalid_argument& e) {
        return e.what();
    }
    return "";
}

}  // namespace mmca_cuda_test

MMCA_CUDA_BACKWARD_TEST_INSTANTIATE(float)
