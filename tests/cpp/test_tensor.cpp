// tests/cpp/test_tensor.cpp - mmca::tensor_ref: views of xtensor containers and adaptors without
// copies, strides in elements, rank checks, and the plain (pointer, shape[, strides]) constructors.
#include "attention_test_util.hpp"

#include <gtest/gtest.h>

#include <xtensor/xarray.hpp>

#include <array>
#include <cstdint>
#include <numeric>
#include <string>
#include <vector>

namespace mmca_test {
namespace {

using arr3 = std::array<std::int64_t, 3>;
using arr4 = std::array<std::int64_t, 4>;

TEST(TensorRef, DefaultIsAbsent) {
    mmca::tensor_ref<float, 2> r;
    EXPECT_TRUE(r.empty());
    EXPECT_EQ(r.data, nullptr);
}

TEST(TensorRef, FromTensorSharesDataAndReportsRowMajorStrides) {
    mmca::tensor<float, 3> t(std::array<std::size_t, 3>{2, 3, 4});
    std::iota(t.begin(), t.end(), 0.0f);
    mmca::tensor_ref<float, 3> r(t);
    EXPECT_EQ(r.data, t.data());
    EXPECT_EQ(r.shape, (arr3{2, 3, 4}));
    EXPECT_EQ(r.strides, (arr3{12, 4, 1}));
    EXPECT_EQ(r.numel(), 24);
    EXPECT_EQ(r.size(1), 3);
    EXPECT_TRUE(r.contiguous());
    EXPECT_TRUE(r.inner_contiguous());
    EXPECT_FALSE(r.empty());
    EXPECT_EQ(r(1, 2, 3), t(1, 2, 3));
    EXPECT_EQ(r(1, 2, 3), 23.0f);
    EXPECT_EQ(r.ptr(1, 1), t.data() + 16);
    EXPECT_EQ(r.shape_text(), "[2, 3, 4]");
    r(0, 1, 2) = -5.0f;  // writes through the view land in the tensor
    EXPECT_EQ(t(0, 1, 2), -5.0f);
}

TEST(TensorRef, ConstViewOfConstTensor) {
    mmca::tensor<float, 2> t(std::array<std::size_t, 2>{3, 5});
    std::iota(t.begin(), t.end(), 1.0f);
    const auto& ct = t;
    mmca::tensor_ref<const float, 2> r(ct);
    EXPECT_EQ(r.data, t.data());
    EXPECT_EQ(r(2, 4), 15.0f);
    // A mutable view converts to a const view of the same memory.
    mmca::tensor_ref<float, 2> m(t);
    mmca::tensor_ref<const float, 2> c = m;
    EXPECT_EQ(c.data, t.data());
    EXPECT_EQ(c.strides, m.strides);
}

TEST(TensorRef, FromAdaptIsZeroCopy) {
    std::vector<float> buffer(2 * 3 * 4 * 5);
    std::iota(buffer.begin(), buffer.end(), 0.0f);
    auto a = mmca::adapt(buffer.data(), std::array<std::size_t, 4>{2, 3, 4, 5});
    EXPECT_EQ(a.data(), buffer.data());
    mmca::tensor_ref<float, 4> r(a);
    EXPECT_EQ(r.data, buffer.data());
    EXPECT_EQ(r.shape, (arr4{2, 3, 4, 5}));
    EXPECT_EQ(r.strides, (arr4{60, 20, 5, 1}));
    EXPECT_EQ(r(1, 2, 3, 4), buffer.back());
    r(0, 0, 0, 1) = 42.0f;
    EXPECT_EQ(buffer[1], 42.0f);
    a(1, 0, 0, 0) = 7.0f;  // and the adaptor writes into the same buffer
    EXPECT_EQ(buffer[60], 7.0f);
    EXPECT_EQ(r(1, 0, 0, 0), 7.0f);
    // const buffers give const views.
    const std::vector<float>& cb = buffer;
    auto ca = mmca::adapt(cb.data(), std::array<std::size_t, 4>{2, 3, 4, 5});
    mmca::tensor_ref<const float, 4> cr(ca);
    EXPECT_EQ(cr.data, buffer.data());
}

TEST(TensorRef, ExtentOneDimensionsGetRowMajorStrides) {
    // xtensor reports stride 0 on dimensions of extent 1; the view gives them the row-major value.
    mmca::tensor<float, 4> t(std::array<std::size_t, 4>{1, 3, 1, 5});
    mmca::tensor_ref<float, 4> r(t);
    EXPECT_EQ(r.strides, (arr4{15, 5, 5, 1}));
    EXPECT_TRUE(r.contiguous());
    std::vector<float> buffer(7);
    auto a = mmca::adapt(buffer.data(), std::array<std::size_t, 4>{1, 1, 1, 7});
    mmca::tensor_ref<float, 4> ra(a);
    EXPECT_EQ(ra.strides, (arr4{7, 7, 7, 1}));
    EXPECT_EQ(ra.data, buffer.data());
}

TEST(TensorRef, RankMismatchIsRefused) {
    mmca::tensor<float, 3> t3(std::array<std::size_t, 3>{2, 3, 4});
    try {
        mmca::tensor_ref<float, 4> r(t3);
        ADD_FAILURE() << "no exception";
    } catch (const mmca::invalid_argument& e) {
        const std::string what = e.what();
        EXPECT_EQ(e.argument(), "tensor");
        EXPECT_NE(what.find("mmca::tensor_ref"), std::string::npos) << what;
        EXPECT_NE(what.find("rank 3"), std::string::npos) << what;
        EXPECT_NE(what.find("expected rank 4"), std::string::npos) << what;
    }
    xt::xarray<float> dynamic = xt::zeros<float>({4, 4});
    EXPECT_THROW((mmca::tensor_ref<float, 4>(dynamic)), mmca::invalid_argument);
    xt::xarray<float> dynamic4 = xt::zeros<float>({1, 2, 3, 4});
    mmca::tensor_ref<float, 4> ok(dynamic4);
    EXPECT_EQ(ok.shape, (arr4{1, 2, 3, 4}));
    EXPECT_EQ(ok.data, dynamic4.data());
    std::vector<float> buffer(6);
    auto a2 = mmca::adapt(buffer.data(), std::array<std::size_t, 2>{2, 3});
    EXPECT_THROW((mmca::tensor_ref<float, 3>(a2)), mmca::invalid_argument);
}

TEST(TensorRef, PointerShapeConstructorIsRowMajor) {
    std::vector<float> buffer(24);
    std::iota(buffer.begin(), buffer.end(), 0.0f);
    mmca::tensor_ref<float, 3> r(buffer.data(), {4, 3, 2});
    EXPECT_EQ(r.strides, (arr3{6, 2, 1}));
    EXPECT_EQ(r(3, 1, 1), 21.0f);
    auto m = mmca::make_ref(buffer.data(), arr3{2, 2, 6});
    EXPECT_EQ(m.strides, (arr3{12, 6, 1}));
    EXPECT_EQ(m(1, 1, 5), 23.0f);
}

TEST(TensorRef, ExplicitStridesDescribeTransposedAndPaddedViews) {
    // A (2, 4) buffer seen as its transpose (4, 2): strides {1, 4}.
    std::vector<float> buffer = {0, 1, 2, 3, 10, 11, 12, 13};
    mmca::tensor_ref<float, 2> t(buffer.data(), {4, 2}, {1, 4});
    EXPECT_EQ(t(3, 1), 13.0f);
    EXPECT_EQ(t(2, 0), 2.0f);
    EXPECT_FALSE(t.inner_contiguous());
    EXPECT_FALSE(t.contiguous());
    // Rows of 3 inside rows of 4 (padding at the end of each row).
    mmca::tensor_ref<float, 2> p(buffer.data(), {2, 3}, {4, 1});
    EXPECT_TRUE(p.inner_contiguous());
    EXPECT_FALSE(p.contiguous());
    EXPECT_EQ(p(1, 2), 12.0f);
    EXPECT_EQ(p.ptr(1), buffer.data() + 4);
}

TEST(TensorRef, AttentionOnAdaptedBuffersWritesInPlace) {
    // The public entry point takes views: out adapted over a caller's buffer is written in place.
    const std::size_t L = 9, Dh = 8;
    std::vector<float> q(L * Dh), k(L * Dh), v(L * Dh), out(L * Dh, -1.0f);
    rng r(3);
    for (auto* buf : {&q, &k, &v})
        for (auto& x : *buf) x = static_cast<float>(r.uniform(-1, 1));
    const std::array<std::size_t, 4> shape{1, 1, L, Dh};
    auto qa = mmca::adapt(q.data(), shape);
    auto ka = mmca::adapt(k.data(), shape);
    auto va = mmca::adapt(v.data(), shape);
    auto oa = mmca::adapt(out.data(), shape);
    owned_tokens tokens({sequence_of({T, T, I, I, T, T, T, I, T})}, L, false);
    mmca::attention_options o;
    mmca::attention_forward<float>(qa, ka, va, tokens.layout(), o, oa);
    tensor4 qt(shape), kt(shape), vt(shape);
    std::copy(q.begin(), q.end(), qt.begin());
    std::copy(k.begin(), k.end(), kt.begin());
    std::copy(v.begin(), v.end(), vt.begin());
    const tensor4 expected = mmca::attention(qt, kt, vt, tokens.layout(), o, mmca::attention_impl::reference);
    tensor4 got(shape);
    std::copy(out.begin(), out.end(), got.begin());
    EXPECT_TRUE(all_close(got, expected, 1e-5));
}

}  // namespace
}  // namespace mmca_test
