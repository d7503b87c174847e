// tests/cuda_emulation/emulation_support.hpp - what the emulated-kernel tests share: storage types
// of the device element types, float shape views for make_attention_problem, and the small cases.
// Include after warp_emulation.hpp (it names CUDA's __half and __nv_bfloat16).
#pragma once

#include "attention_test_util.hpp"
#include "cuda_test_cases.hpp"

#include "mmca/attention/problem.hpp"
#include "mmca/backend/cuda/attention_plan.hpp"
#include "mmca/backend/cuda/kernels/attention_params.cuh"
#include "mmca/core/dtype.hpp"
#include "mmca/core/tensor.hpp"

#include <type_traits>
#include <vector>

namespace mmca_emulation_test {

using mmca_cuda_test::dtype_kind;
using mmca_cuda_test::gpu_case;
using mmca_test::pattern_kind;
using mmca_test::variant_spec;
using tensor4 = mmca::tensor<float, 4>;

/// The host (storage) type of a device element type.
template <class D>
struct storage_of;
template <>
struct storage_of<float> {
    using type = float;
};
template <>
struct storage_of<__half> {
    using type = mmca::float16;
};
template <>
struct storage_of<__nv_bfloat16> {
    using type = mmca::bfloat16;
};

/// The storage copy of a float tensor (float: unchanged).
template <class S>
mmca::tensor<S, 4> storage_copy(const tensor4& t) {
    if constexpr (std::is_same_v<S, float>)
        return t;
    else
        return mmca_test::to_storage<S>(t);
}

/// Float views with the shape and strides of a view of another element type (the checks of
/// make_attention_problem read shapes only).
template <class U>
mmca::tensor_ref<const float, 4> shape_view(const mmca::tensor_ref<U, 4>& t) {
    return mmca::tensor_ref<const float, 4>(reinterpret_cast<const float*>(t.data), t.shape, t.strides);
}
template <class U>
mmca::tensor_ref<float, 4> shape_view_mut(const mmca::tensor_ref<U, 4>& t) {
    return mmca::tensor_ref<float, 4>(reinterpret_cast<float*>(t.data), t.shape, t.strides);
}

/// The kernel arguments that mmca::cuda's host launchers make for a planned problem (as
/// detail::fill_tensor_params in attention_fused.cuh, which launches with <<< >>> and cannot be
/// compiled here, then set_problem_params and set_plan_arrays), with host pointers.
template <class D, class S>
mmca::cuda::detail::attention_params<D> host_attention_params(const mmca::attention_problem& problem,
                                                              const mmca::cuda::attention_plan& plan,
                                                              const mmca::tensor_ref<const S, 4>& q,
                                                              const mmca::tensor_ref<const S, 4>& k,
                                                              const mmca::tensor_ref<const S, 4>& v,
                                                              const mmca::tensor_ref<S, 4>& out) {
    mmca::cuda::detail::attention_params<D> params{};
    params.q = reinterpret_cast<const D*>(q.data);
    params.k = reinterpret_cast<const D*>(k.data);
    params.v = reinterpret_cast<const D*>(v.data);
    params.out = reinterpret_cast<D*>(out.data);
    for (int d = 0; d < 3; ++d) {
        params.q_stride[d] = q.strides[d];
        params.k_stride[d] = k.strides[d];
        params.v_stride[d] = v.strides[d];
        params.out_stride[d] = out.strides[d];
    }
    mmca::cuda::detail::set_problem_params(params, problem);
    mmca::cuda::detail::set_plan_arrays(params, plan, plan.rows.data(), plan.fills.data(), plan.tiles.data(),
                                        plan.key_codes.data(), plan.type_prefix.data(), plan.seq_kv_len.data());
    params.splits = 1;
    return params;
}

/// Small cases (S <= 200, H <= 2): images, pads, GQA, padded head dims, lengths not multiples of
/// 64 and per-sequence lengths.
inline std::vector<gpu_case> emulation_cases() {
    using pk = pattern_kind;
    return {
        {"L37_D80_gqa21_interleaved", 1, 2, 1, 80, 37, 37, {}, {}, {pk::interleaved}, true, 0.0f, 1.0f, 12},
        {"L130_D64_leading_image", 1, 2, 2, 64, 130, 130, {}, {}, {pk::leading_image}, true, 0.0f, 1.0f, 13},
        {"L150_D128_gqa21_lengths_pad", 2, 2, 1, 128, 150, 150, {150, 97}, {150, 97},
         {pk::consecutive_images, pk::trailing_pad}, true, 0.0f, 1.0f, 14},
        {"L90_D72_sharp_scores", 1, 2, 1, 72, 90, 90, {}, {}, {pk::interleaved}, true, 1.0f, 2.0f, 19},
        {"L70_D40_interior_pad", 1, 1, 1, 40, 70, 70, {}, {}, {pk::interior_pad}, true, 0.0f, 1.0f, 20},
        {"Lk200_Lq45_suffix_queries", 2, 2, 1, 64, 45, 200, {200, 120}, {45, 7}, {pk::interleaved, pk::leading_image},
         true, 0.0f, 1.0f, 16},
        {"L96_D112_images_only_run_ids", 1, 2, 1, 112, 96, 96, {}, {}, {pk::images_only}, false, 0.0f, 1.0f, 17},
        {"B3_mixed_and_empty", 3, 2, 1, 64, 33, 33, {33, 0, 5}, {33, 0, 5},
         {pk::interleaved, pk::text_only, pk::images_only}, true, 0.0f, 1.0f, 22},
    };
}

}  // namespace mmca_emulation_test
