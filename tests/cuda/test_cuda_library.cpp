// tests/cuda/test_cuda_library.cpp - the compiled library mmca::cuda (library.hpp) from a translation
// unit that the host compiler builds without nvcc: forward with statistics and backward through the
// library against the CPU oracles, and its argument checks. Device memory comes from the CUDA
// runtime's C API (cuda_runtime_api.h, a plain C header).
#include "attention_test_util.hpp"
#include "cuda_test_support.hpp"

#include "mmca/attention/attention_backward.hpp"
#include "mmca/backend/cuda/library.hpp"

#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <array>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

namespace {

using mmca::cuda::lib::device_view;
using mmca::cuda::lib::element;
using mmca_test::all_close;
using tensor4 = mmca::tensor<float, 4>;

/// A float32 device copy of a host tensor (or NaN bytes), freed with the object.
struct device_f32 {
    void* ptr = nullptr;
    std::array<std::int64_t, 4> shape{};
    std::size_t bytes = 0;
    explicit device_f32(const std::array<std::int64_t, 4>& s, const float* host = nullptr) : shape(s) {
        bytes = static_cast<std::size_t>(s[0] * s[1] * s[2] * s[3]) * sizeof(float);
        EXPECT_EQ(cudaMalloc(&ptr, bytes), cudaSuccess);
        if (host != nullptr)
            EXPECT_EQ(cudaMemcpy(ptr, host, bytes, cudaMemcpyHostToDevice), cudaSuccess);
        else
            EXPECT_EQ(cudaMemset(ptr, 0xff, bytes), cudaSuccess);
    }
    ~device_f32() { cudaFree(ptr); }
    device_f32(const device_f32&) = delete;
    device_f32& operator=(const device_f32&) = delete;
    device_view view() const { return device_view::contiguous(ptr, element::float32, shape); }
    tensor4 download() const {
        tensor4 t(std::array<std::size_t, 4>{static_cast<std::size_t>(shape[0]), static_cast<std::size_t>(shape[1]),
                                             static_cast<std::size_t>(shape[2]), static_cast<std::size_t>(shape[3])});
        EXPECT_EQ(cudaMemcpy(t.data(), ptr, bytes, cudaMemcpyDeviceToHost), cudaSuccess);
        return t;
    }
};

std::array<std::int64_t, 4> dims(const tensor4& t) {
    return {static_cast<std::int64_t>(t.shape()[0]), static_cast<std::int64_t>(t.shape()[1]),
            static_cast<std::int64_t>(t.shape()[2]), static_cast<std::int64_t>(t.shape()[3])};
}

TEST(CudaLibrary, ForwardWithStatsAndBackwardMatchTheCpu) {
    MMCA_REQUIRE_GPU();
    EXPECT_TRUE(mmca::cuda::lib::device_available());
    EXPECT_FALSE(mmca::cuda::lib::device_description().empty());
    const std::size_t B = 1, H = 4, Hkv = 2, L = 150, D = 64;
    const auto seq = mmca_test::make_pattern(mmca_test::pattern_kind::interleaved, static_cast<int>(L), 7);
    const mmca_test::owned_tokens tokens({seq}, L, true);
    const tensor4 q = mmca_test::random_tensor({B, H, L, D}, 1), k = mmca_test::random_tensor({B, Hkv, L, D}, 2),
                  v = mmca_test::random_tensor({B, Hkv, L, D}, 3), g = mmca_test::random_tensor({B, H, L, D}, 4);
    for (const auto& variant : mmca_test::all_variants()) {
        SCOPED_TRACE(variant.name());
        const auto options = variant.options();
        const auto layout = tokens.layout();
        device_f32 dq_in(dims(q), q.data()), dk_in(dims(k), k.data()), dv_in(dims(v), v.data()), dg(dims(g), g.data());
        device_f32 out(dims(q)), dq(dims(q)), dk(dims(k)), dv(dims(v));
        const std::array<std::int64_t, 4> rows{1, 4, 150, 2};
        const std::array<std::int64_t, 5> outs{1, 4, 150, 2, 64};
        void *m = nullptr, *s = nullptr, *o = nullptr;
        ASSERT_EQ(cudaMalloc(&m, 150 * 4 * 2 * sizeof(float)), cudaSuccess);
        ASSERT_EQ(cudaMalloc(&s, 150 * 4 * 2 * sizeof(float)), cudaSuccess);
        ASSERT_EQ(cudaMalloc(&o, 150 * 4 * 2 * 64 * sizeof(float)), cudaSuccess);
        const mmca::attention_stats stats(mmca::tensor_ref<float, 4>(static_cast<float*>(m), rows),
                                          mmca::tensor_ref<float, 4>(static_cast<float*>(s), rows),
                                          mmca::tensor_ref<float, 5>(static_cast<float*>(o), outs));
        mmca::cuda::lib::attention_forward(dq_in.view(), dk_in.view(), dv_in.view(), layout, options, out.view(),
                                           nullptr, &stats);
        mmca::cuda::lib::attention_backward(dq_in.view(), dk_in.view(), dv_in.view(), dg.view(), layout, options,
                                            mmca::attention_stats_view(stats), dq.view(), dk.view(), dv.view());
        mmca::cuda::lib::synchronize();
        const tensor4 ref_out = mmca::attention(q, k, v, layout, options, mmca::attention_impl::reference);
        const mmca::attention_gradients ref =
            mmca::attention_backward(q, k, v, g, layout, options, {}, mmca::attention_impl::reference);
        EXPECT_TRUE(all_close(out.download(), ref_out, 1e-5));
        EXPECT_TRUE(all_close(dq.download(), ref.dq, 1e-5));
        EXPECT_TRUE(all_close(dk.download(), ref.dk, 1e-5));
        EXPECT_TRUE(all_close(dv.download(), ref.dv, 1e-5));
        cudaFree(m);
        cudaFree(s);
        cudaFree(o);
    }
}

TEST(CudaLibrary, RefusesMixedElementTypes) {
    MMCA_REQUIRE_GPU();
    const auto seq = mmca_test::make_pattern(mmca_test::pattern_kind::text_only, 8, 1);
    const mmca_test::owned_tokens tokens({seq}, 8, true);
    const tensor4 q = mmca_test::random_tensor({1, 2, 8, 16}, 1);
    device_f32 a(dims(q), q.data()), b(dims(q), q.data()), c(dims(q), q.data()), out(dims(q));
    device_view k = b.view();
    k.type = element::bfloat16;
    try {
        mmca::cuda::lib::attention_forward(a.view(), k, c.view(), tokens.layout(), {}, out.view());
        FAIL() << "a bfloat16 k with a float32 q was accepted";
    } catch (const mmca::invalid_argument& e) {
        const std::string what = e.what();
        EXPECT_NE(what.find("'k'"), std::string::npos) << what;
        EXPECT_NE(what.find("bfloat16"), std::string::npos) << what;
        EXPECT_NE(what.find("float32"), std::string::npos) << what;
    }
}

}  // namespace
