// mmca/nn/linear.hpp - y = x · Wᵀ + b with W stored [out, in] as in the checkpoint.
//
// Weights are never converted up front: a matrix_ref points at float32, float16 or bfloat16 data
// (typically inside a memory-mapped checkpoint) and the kernels widen what they need on the fly.
//   * Few rows (decoding, N <= 8): a matrix-vector kernel streams each weight row once, widening
//     16 elements at a time in registers, for up to 4 activation rows at once. This is the
//     memory-bound case: its speed is the speed at which weight bytes arrive from memory.
//   * Many rows (prefill), built with AVX2 + FMA + F16C: mmca's packed GEMM (nn/detail/gemm_kernel.hpp):
//     a 6 × 16 register-tile micro-kernel over packed panels, K blocks of at most 256, the float16 /
//     bfloat16 -> float32 widening done while packing weight micro-panels (no separate pass). Work is
//     spread over blocks of output columns (and rows when there are few columns); every output element
//     is computed the same way whatever the thread count or the other rows, so results are bitwise
//     the same for any number of threads and for a batch and its rows one by one.
//   * Many rows without AVX2/FMA/F16C (or with MMCA_NN_HAVE_PACKED_GEMM defined to 0): the output
//     columns are cut into panels of up to 512 weight rows (forward_panel_rows). float32 panels are
//     used in place; float16/bfloat16 panels are widened into a per-thread buffer (at most 16 MiB)
//     right before Eigen's GEMM consumes them. Eigen's GEMM runs single-threaded inside each
//     output-row block (mmca::parallel_for).
// The thread count given here is the one used.
#pragma once

#include "mmca/core/dtype.hpp"
#include "mmca/core/error.hpp"
#include "mmca/core/tensor.hpp"
#include "mmca/core/threading.hpp"
#include "mmca/nn/detail/gemm_kernel.hpp"

#include <Eigen/Core>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#include <immintrin.h>
#define MMCA_NN_HAVE_AVX2 1
#else
#define MMCA_NN_HAVE_AVX2 0
#endif

namespace mmca::nn {

/// A read-only row-major matrix of runtime element type: a weight [rows, cols] as stored.
struct matrix_ref {
    dtype type = dtype::float32;
    const void* data = nullptr;  // rows * cols elements of `type`, row-major, contiguous
    std::int64_t rows = 0;       // out features (or vocabulary entries)
    std::int64_t cols = 0;       // in features (or hidden size)

    bool empty() const { return data == nullptr; }
    template <class T>
    const T* as() const {
        return static_cast<const T*>(data);
    }
    std::string shape_text() const { return "[" + std::to_string(rows) + ", " + std::to_string(cols) + "]"; }
};

template <class T>
matrix_ref make_matrix(const T* data, std::int64_t rows, std::int64_t cols) {
    static_assert(is_storage_type_v<T>, "mmca::nn::make_matrix: element type must be float, float16 or bfloat16");
    return matrix_ref{dtype_of<std::remove_const_t<T>>::value, data, rows, cols};
}

/// Element size in bytes of a storage dtype.
inline std::int64_t dtype_size(dtype t) { return t == dtype::float32 ? 4 : 2; }

/// Calls f(T{}) with T the C++ type of runtime dtype t.
template <class F>
decltype(auto) dispatch_dtype(dtype t, F&& f) {
    switch (t) {
        case dtype::float16: return f(float16{});
        case dtype::bfloat16: return f(bfloat16{});
        case dtype::float32: break;
    }
    return f(float{});
}

namespace detail {

/// Makes Eigen's matrix products run on the calling thread (process-wide, once). Built with OpenMP,
/// Eigen otherwise splits a product over all OpenMP threads whenever it is called outside a parallel
/// region, as the bodies of parallel_for are when it runs on one thread: a call asked for one thread
/// would use them all, and a row's result would depend on how Eigen split the product (on the number
/// of other rows). mmca spreads its work itself (parallel_for).
inline void eigen_products_on_calling_thread() {
#if defined(_OPENMP) && !defined(EIGEN_DONT_PARALLELIZE)
    static const bool done = [] {
        Eigen::setNbThreads(1);
        return true;
    }();
    (void)done;
#endif
}

/// Number of activation rows up to which linear_forward uses the matrix-vector kernel.
inline constexpr std::int64_t gemv_max_rows = 8;
/// Weight rows per panel of the backward's weight-gradient products.
inline constexpr std::int64_t gemm_panel_rows = 128;

/// Weight rows per GEMM panel of the forward. Each panel is one Eigen product, which packs all of
/// x again: wide panels amortise that (measured on AVX2, N = 1024, in = 1664: 128 rows 36 GFLOP/s,
/// 512 rows 51). float16/bfloat16 panels are widened into a per-thread float32 buffer, kept under
/// 16 MiB. The width depends on the shapes only, never on the thread count, so results do not
/// either.
inline std::int64_t forward_panel_rows(std::int64_t in, bool widened) {
    if (!widened) return 512;
    const std::int64_t fit = (std::int64_t{16} << 20) / (4 * std::max<std::int64_t>(in, 1));
    return std::clamp<std::int64_t>(fit / 64 * 64, 128, 512);
}
inline constexpr std::int64_t gemv_block_rows = 64;

#if MMCA_NN_HAVE_AVX2
/// Loads 16 weights starting at p as two float32 vectors.
inline void load16(const float* p, __m256& lo, __m256& hi) {
    lo = _mm256_loadu_ps(p);
    hi = _mm256_loadu_ps(p + 8);
}
inline void load16(const bfloat16* p, __m256& lo, __m256& hi) {
    // bfloat16 is the upper half of a float32: widen the 16-bit lanes and shift them up.
    const __m256i raw = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
    lo = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm256_castsi256_si128(raw)), 16));
    hi = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm256_extracti128_si256(raw, 1)), 16));
}
inline void load16(const float16* p, __m256& lo, __m256& hi) {
    lo = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    hi = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p) + 1));
}
inline float hsum(__m256 v) {
    const __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    const __m128 t = _mm_add_ps(s, _mm_movehl_ps(s, s));
    return _mm_cvtss_f32(_mm_add_ss(t, _mm_shuffle_ps(t, t, 0x55)));
}
#endif

/// out[r] = dot(w[0:n], x[r][0:n]) for r < R (R in 1..4): one weight row against R activation rows.
template <int R, class T>
inline void dot_rows(const T* w, const float* const* x, std::int64_t n, float* out) {
    std::int64_t i = 0;
    float tail[R] = {};
#if MMCA_NN_HAVE_AVX2
    __m256 acc[R][2];
    for (int r = 0; r < R; ++r) acc[r][0] = acc[r][1] = _mm256_setzero_ps();
    for (; i + 16 <= n; i += 16) {
        __m256 lo, hi;
        load16(w + i, lo, hi);
        for (int r = 0; r < R; ++r) {
            acc[r][0] = _mm256_fmadd_ps(lo, _mm256_loadu_ps(x[r] + i), acc[r][0]);
            acc[r][1] = _mm256_fmadd_ps(hi, _mm256_loadu_ps(x[r] + i + 8), acc[r][1]);
        }
    }
    for (int r = 0; r < R; ++r) tail[r] = hsum(_mm256_add_ps(acc[r][0], acc[r][1]));
#endif
    for (; i < n; ++i) {
        const float wi = static_cast<float>(w[i]);
        for (int r = 0; r < R; ++r) tail[r] += wi * x[r][i];
    }
    for (int r = 0; r < R; ++r) out[r] = tail[r];
}

/// y[n, o] = x[n, :] · W[o, :] (+ bias[o]) for o in [o0, o1), n < N <= gemv_max_rows.
template <class T>
void gemv_block(tensor_ref<const float, 2> x, const T* w, std::int64_t in, const float* bias, tensor_ref<float, 2> y,
                std::int64_t o0, std::int64_t o1) {
    const std::int64_t N = x.shape[0];
    for (std::int64_t n0 = 0; n0 < N; n0 += 4) {
        const int R = static_cast<int>(std::min<std::int64_t>(4, N - n0));
        const float* xr[4];
        for (int r = 0; r < R; ++r) xr[r] = x.ptr(n0 + r);
        float res[4];
        for (std::int64_t o = o0; o < o1; ++o) {
            const T* wr = w + o * in;
            switch (R) {
                case 1: dot_rows<1>(wr, xr, in, res); break;
                case 2: dot_rows<2>(wr, xr, in, res); break;
                case 3: dot_rows<3>(wr, xr, in, res); break;
                default: dot_rows<4>(wr, xr, in, res); break;
            }
            const float b = bias ? bias[o] : 0.0f;
            for (int r = 0; r < R; ++r) y(n0 + r, o) = res[r] + b;
        }
    }
}

using row_major_matrix = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using const_strided_map = Eigen::Map<const row_major_matrix, 0, Eigen::OuterStride<>>;
using strided_map = Eigen::Map<row_major_matrix, 0, Eigen::OuterStride<>>;

/// y[:, o0:o1] = x · W[o0:o1, :]ᵀ (+ bias) with Eigen's GEMM; panel holds the float32 weight rows.
inline void gemm_panel(tensor_ref<const float, 2> x, const float* panel, std::int64_t in, const float* bias,
                       tensor_ref<float, 2> y, std::int64_t o0, std::int64_t o1) {
    const std::int64_t N = x.shape[0], cols = o1 - o0;
    const_strided_map X(x.data, N, in, Eigen::OuterStride<>(x.strides[0]));
    Eigen::Map<const row_major_matrix> W(panel, cols, in);
    strided_map Y(y.data + o0, N, cols, Eigen::OuterStride<>(y.strides[0]));
    Y.noalias() = X * W.transpose();
    if (bias) Y.rowwise() += Eigen::Map<const Eigen::RowVectorXf>(bias + o0, cols);
}

template <class T>
void linear_typed(tensor_ref<const float, 2> x, const T* w, std::int64_t out, std::int64_t in, const float* bias,
                  tensor_ref<float, 2> y, int num_threads) {
    const std::int64_t N = x.shape[0];
    if (N == 0 || out == 0) return;
    // Small products run on the calling thread: waking a team costs more than they do.
    const double work = double(N) * double(out) * double(in);
    const int threads = work < double(1 << 18) ? 1 : resolve_num_threads(num_threads);
    if (N <= gemv_max_rows) {
        const std::int64_t blocks = (out + gemv_block_rows - 1) / gemv_block_rows;
        parallel_for(blocks, threads, [&](std::int64_t blk, int) {
            const std::int64_t o0 = blk * gemv_block_rows, o1 = std::min(out, o0 + gemv_block_rows);
            gemv_block<T>(x, w, in, bias, y, o0, o1);
        });
        return;
    }
#if MMCA_NN_HAVE_PACKED_GEMM
    gemm_packed<T>(x, w, out, in, bias, y, threads);
#else
    const std::int64_t rows = forward_panel_rows(in, !std::is_same_v<T, float>);
    const std::int64_t blocks = (out + rows - 1) / rows;
    if constexpr (std::is_same_v<T, float>) {
        parallel_for(blocks, threads, [&](std::int64_t blk, int) {
            const std::int64_t o0 = blk * rows, o1 = std::min(out, o0 + rows);
            gemm_panel(x, w + o0 * in, in, bias, y, o0, o1);
        });
    } else {
        // One widened panel per thread, reused across that thread's panels.
        std::vector<std::vector<float>> panels(static_cast<std::size_t>(threads));
        parallel_for(blocks, threads, [&](std::int64_t blk, int thread) {
            const std::int64_t o0 = blk * rows, o1 = std::min(out, o0 + rows);
            auto& panel = panels[static_cast<std::size_t>(thread)];
            panel.resize(static_cast<std::size_t>(rows * in));
            to_float(w + o0 * in, panel.data(), (o1 - o0) * in);
            gemm_panel(x, panel.data(), in, bias, y, o0, o1);
        });
    }
#endif
}

}  // namespace detail

/// y (N, out) = x (N, in) · Wᵀ (+ bias), W = weight [out, in] in float32/float16/bfloat16 storage,
/// bias (out) float32 or nullptr. x and y need contiguous rows (any row stride) and must not overlap.
inline void linear_forward(tensor_ref<const float, 2> x, const matrix_ref& weight, const float* bias,
                           tensor_ref<float, 2> y, int num_threads = 0) {
    using mmca::detail::to_text;
    const char* where = "mmca::nn::linear_forward";
    MMCA_CHECK_ARG(!weight.empty(), where, "weight", "no tensor", "an [out, in] matrix");
    MMCA_CHECK_ARG(!x.empty(), where, "x", "no tensor", "an (N, in) float32 tensor");
    MMCA_CHECK_ARG(!y.empty(), where, "y", "no tensor", "an (N, out) float32 tensor");
    MMCA_CHECK_ARG(x.shape[1] == weight.cols && x.inner_contiguous(), where, "x", x.shape_text(),
                   "(N, " + to_text(weight.cols) + ") with contiguous rows (weight is " + weight.shape_text() + ")");
    MMCA_CHECK_ARG(y.shape[0] == x.shape[0] && y.shape[1] == weight.rows && y.inner_contiguous(), where, "y",
                   y.shape_text(), "(" + to_text(x.shape[0]) + ", " + to_text(weight.rows) + ") with contiguous rows");
    detail::eigen_products_on_calling_thread();
    dispatch_dtype(weight.type, [&](auto tag) {
        using T = decltype(tag);
        detail::linear_typed<T>(x, weight.as<T>(), weight.rows, weight.cols, bias, y, num_threads);
    });
}

}  // namespace mmca::nn
