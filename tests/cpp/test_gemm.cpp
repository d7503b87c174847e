// tests/cpp/test_gemm.cpp - the prefill GEMM of nn::linear_forward (nn/detail/gemm_kernel.hpp).
//
// Oracle: a float64 loop over the stored (rounded) weights. Tolerance: float32 accumulation,
// |y - ref| <= 1e-5 · sqrt(in) · Σ_k |x·w| (+ a tiny absolute floor for all-zero sums). Shapes cover
// edge tiles in both dimensions (N not a multiple of 6, out not a multiple of 16), several K blocks
// (in > 256, not a multiple of the block), every weight dtype, bias or not, 1 and 2 threads (bitwise
// equal), and the N thresholds around the matrix-vector / GEMM switch.
#include "dtype_test_util.hpp"

#include "mmca/nn/detail/gemm_kernel.hpp"
#include "mmca/nn/linear.hpp"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <string>
#include <vector>

namespace {

std::vector<float> random_floats(std::size_t n, unsigned seed, float scale = 1.0f) {
    std::mt19937 gen(seed);
    std::normal_distribution<float> dist(0.0f, scale);
    std::vector<float> v(n);
    for (auto& x : v) x = dist(gen);
    return v;
}

template <class T>
const char* dtype_name() {
    if constexpr (std::is_same_v<T, float>) return "f32";
    else if constexpr (std::is_same_v<T, mmca::bfloat16>) return "bf16";
    else return "f16";
}

std::vector<float> run_linear(const std::vector<float>& x, std::int64_t N, std::int64_t in, const mmca::nn::matrix_ref& w,
                              const float* bias, int threads, std::int64_t y_stride = -1) {
    const std::int64_t out = w.rows;
    if (y_stride < 0) y_stride = out;
    std::vector<float> y(static_cast<std::size_t>(N * y_stride), -123.0f);
    mmca::nn::linear_forward(mmca::tensor_ref<const float, 2>(x.data(), {N, in}), w, bias,
                             mmca::tensor_ref<float, 2>(y.data(), {N, out}, {y_stride, 1}), threads);
    return y;
}

/// Checks linear_forward against float64 for one shape; returns the 1-thread output.
template <class T>
void check_shape(std::int64_t N, std::int64_t in, std::int64_t out, bool with_bias, unsigned seed) {
    SCOPED_TRACE(std::string(dtype_name<T>()) + " N=" + std::to_string(N) + " in=" + std::to_string(in) +
                 " out=" + std::to_string(out) + (with_bias ? " bias" : ""));
    const auto x = random_floats(static_cast<std::size_t>(N * in), seed);
    const std::vector<T> w = mmca_test::narrow<T>(random_floats(static_cast<std::size_t>(out * in), seed + 1, 0.2f));
    const auto b = random_floats(static_cast<std::size_t>(out), seed + 2);
    const float* bias = with_bias ? b.data() : nullptr;
    const auto wm = mmca::nn::make_matrix(w.data(), out, in);

    const auto y1 = run_linear(x, N, in, wm, bias, 1);
    const auto y2 = run_linear(x, N, in, wm, bias, 2);
    ASSERT_EQ(std::memcmp(y1.data(), y2.data(), y1.size() * sizeof(float)), 0) << "1 and 2 threads differ";
    const auto again = run_linear(x, N, in, wm, bias, 2);
    ASSERT_EQ(std::memcmp(y1.data(), again.data(), y1.size() * sizeof(float)), 0) << "run to run";

    int bad = 0;
    for (std::int64_t n = 0; n < N; ++n)
        for (std::int64_t o = 0; o < out; ++o) {
            double s = bias ? double(bias[o]) : 0.0, mag = bias ? std::fabs(double(bias[o])) : 0.0;
            for (std::int64_t k = 0; k < in; ++k) {
                const double p = double(x[n * in + k]) * double(float(w[o * in + k]));
                s += p;
                mag += std::fabs(p);
            }
            const double tol = 1e-5 * std::sqrt(double(in)) * mag + 1e-30;
            const double got = y1[n * out + o];
            if (!(std::fabs(got - s) <= tol) && bad++ < 5)
                ADD_FAILURE() << "y(" << n << ", " << o << ") = " << got << ", float64 " << s << ", tolerance " << tol;
        }
    EXPECT_EQ(bad, 0);
}

template <class T>
void check_all_shapes() {
    unsigned seed = 100;
    for (std::int64_t N : {9, 13, 64, 100, 257})
        for (std::int64_t in : {1, 7, 64, 100, 320, 600})
            for (std::int64_t out : {1, 15, 16, 17, 100, 513}) {
                // Keep the float64 oracle affordable: the largest combinations only with bias.
                const bool big = N * in * out > 20'000'000;
                if (!big) check_shape<T>(N, in, out, false, seed++);
                check_shape<T>(N, in, out, true, seed++);
            }
}

}  // namespace

TEST(Gemm, Float32WeightsMatchFloat64) { check_all_shapes<float>(); }
TEST(Gemm, BFloat16WeightsMatchFloat64) { check_all_shapes<mmca::bfloat16>(); }
TEST(Gemm, Float16WeightsMatchFloat64) { check_all_shapes<mmca::float16>(); }

TEST(Gemm, AroundTheMatrixVectorSwitch) {
    const std::int64_t g = mmca::nn::detail::gemv_max_rows;
    for (std::int64_t N : {g - 1, g, g + 1, g + 2})
        for (bool bias : {false, true}) {
            check_shape<float>(N, 67, 131, bias, 7);
            check_shape<mmca::bfloat16>(N, 300, 40, bias, 8);
            check_shape<mmca::float16>(N, 19, 300, bias, 9);
        }
}

TEST(Gemm, LargeEnoughForTwoThreadsAndManyKBlocks) {
    // Above the size where linear_forward runs single-threaded, several K blocks of unequal count.
    check_shape<float>(70, 1100, 300, true, 11);
    check_shape<mmca::bfloat16>(70, 1100, 300, false, 12);
    check_shape<mmca::float16>(33, 777, 1030, true, 13);
}

TEST(Gemm, RowsDoNotDependOnTheOtherRows) {
    // A row's result is the same whatever the batch around it (and whichever tile it falls in).
    const std::int64_t N = 41, in = 530, out = 77;
    const auto x = random_floats(static_cast<std::size_t>(N * in), 21);
    const auto w = mmca_test::narrow<mmca::bfloat16>(random_floats(static_cast<std::size_t>(out * in), 22, 0.2f));
    const auto b = random_floats(static_cast<std::size_t>(out), 23);
    const auto wm = mmca::nn::make_matrix(w.data(), out, in);
    const auto all = run_linear(x, N, in, wm, b.data(), 2);
    for (std::int64_t start : {0, 5, 17, 29}) {
        const std::int64_t rows = 9 + start % 7;  // above the matrix-vector switch
        const std::vector<float> sub(x.begin() + start * in, x.begin() + (start + rows) * in);
        const auto part = run_linear(sub, rows, in, wm, b.data(), 1);
        EXPECT_EQ(std::memcmp(part.data(), all.data() + start * out, part.size() * sizeof(float)), 0) << start;
    }
}

TEST(Gemm, StridedOutputRowsAreLeftAloneBeyondOut) {
    const std::int64_t N = 23, in = 45, out = 37, stride = 50;
    const auto x = random_floats(static_cast<std::size_t>(N * in), 31);
    const auto w = random_floats(static_cast<std::size_t>(out * in), 32);
    const auto wm = mmca::nn::make_matrix(w.data(), out, in);
    const auto y = run_linear(x, N, in, wm, nullptr, 2, stride);
    const auto packed = run_linear(x, N, in, wm, nullptr, 1);
    for (std::int64_t n = 0; n < N; ++n) {
        EXPECT_EQ(std::memcmp(y.data() + n * stride, packed.data() + n * out, out * sizeof(float)), 0) << n;
        for (std::int64_t o = out; o < stride; ++o) EXPECT_EQ(y[n * stride + o], -123.0f);
    }
}

#if MMCA_NN_HAVE_PACKED_GEMM
TEST(Gemm, KBlocksDependOnInOnly) {
    EXPECT_EQ(mmca::nn::detail::gemm_kc(1), 1);
    EXPECT_EQ(mmca::nn::detail::gemm_kc(256), 256);
    EXPECT_EQ(mmca::nn::detail::gemm_kc(257), 129);
    EXPECT_EQ(mmca::nn::detail::gemm_kc(4096), 256);
    EXPECT_EQ(mmca::nn::detail::gemm_kc(1664), 238);
}
#endif
