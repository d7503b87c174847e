// mmca/nn/grad/norm_backward.hpp - backward of RMSNorm (nn/rmsnorm.hpp) and LayerNorm (nn/layernorm.hpp).
//
// The row statistics are recomputed from x exactly as the forward takes them (double sums, the
// inverse rounded to float32). With r the inverse, g = dy ⊙ weight:
//   RMSNorm    y = w ⊙ x·r                dx = r·g - x · r³ · mean(g ⊙ x)
//                                         dw += Σ_rows dy ⊙ x·r
//   LayerNorm  x̂ = (x - mean)·r, y = w ⊙ x̂ + b
//                                         dx = r · (g - mean(g) - x̂ · mean(g ⊙ x̂))
//                                         dw += Σ_rows dy ⊙ x̂,  db += Σ_rows dy
// The per-row sums are taken in double. Weight gradients are summed over rows in row order inside
// column chunks (one chunk per work item), so they do not depend on the thread count; they are
// added to what the destinations hold (null: frozen, skipped). dx may alias dy (row by row).
#pragma once

#include "mmca/core/error.hpp"
#include "mmca/core/tensor.hpp"
#include "mmca/core/threading.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

namespace mmca::nn {

namespace detail {

inline void check_norm_backward(const char* where, tensor_ref<const float, 2> x, tensor_ref<const float, 2> dy,
                                tensor_ref<float, 2> dx, float eps) {
    MMCA_CHECK_ARG(x.inner_contiguous() && x.shape[1] > 0, where, "x", x.shape_text(), "(N, D) with contiguous rows, D > 0");
    MMCA_CHECK_ARG(dy.inner_contiguous() && dy.shape == x.shape, where, "dy", dy.shape_text(),
                   "the shape of x " + x.shape_text() + " with contiguous rows");
    if (!dx.empty())
        MMCA_CHECK_ARG(dx.inner_contiguous() && dx.shape == x.shape, where, "dx", dx.shape_text(),
                       "the shape of x " + x.shape_text() + " with contiguous rows");
    MMCA_CHECK_ARG(eps > 0.0f && std::isfinite(eps), where, "eps", mmca::detail::to_text(eps), "a positive finite number");
}

/// Columns per work item of the weight-gradient sums.
inline constexpr std::int64_t norm_grad_chunk = 256;

}  // namespace detail

/// Backward of rmsnorm_forward(x, weight, eps). dx (N, H) is overwritten (or added to with
/// accumulate_dx; empty: not wanted); dweight (H) += Σ dy ⊙ x·r unless null.
inline void rmsnorm_backward(tensor_ref<const float, 2> x, const float* weight, float eps, tensor_ref<const float, 2> dy,
                             tensor_ref<float, 2> dx, float* dweight, int num_threads = 0, bool accumulate_dx = false) {
    const char* where = "mmca::nn::rmsnorm_backward";
    MMCA_CHECK_ARG(weight != nullptr, where, "weight", "no tensor", "an (H) float32 vector");
    detail::check_norm_backward(where, x, dy, dx, eps);
    const std::int64_t N = x.shape[0], H = x.shape[1];
    std::vector<float> inv(static_cast<std::size_t>(N));
    const int threads = N >= 64 ? num_threads : 1;
    parallel_for(N, threads, [&](std::int64_t n, int) {
        const float* xr = x.ptr(n);
        double sum = 0.0;
        for (std::int64_t i = 0; i < H; ++i) sum += static_cast<double>(xr[i]) * xr[i];
        inv[n] = static_cast<float>(1.0 / std::sqrt(sum / static_cast<double>(H) + eps));
    });
    if (dweight) {
        const std::int64_t chunks = (H + detail::norm_grad_chunk - 1) / detail::norm_grad_chunk;
        parallel_for(chunks, N >= 64 ? num_threads : 1, [&](std::int64_t c, int) {
            const std::int64_t i0 = c * detail::norm_grad_chunk, i1 = std::min(H, i0 + detail::norm_grad_chunk);
            for (std::int64_t i = i0; i < i1; ++i) {
                double s = 0.0;
                for (std::int64_t n = 0; n < N; ++n) s += static_cast<double>(dy(n, i)) * (x(n, i) * inv[n]);
                dweight[i] += static_cast<float>(s);
            }
        });
    }
    if (dx.empty()) return;
    parallel_for(N, threads, [&](std::int64_t n, int) {
        const float* xr = x.ptr(n);
        const float* dr = dy.ptr(n);
        float* out = dx.ptr(n);
        const double r = inv[n];
        double dot = 0.0;
        for (std::int64_t i = 0; i < H; ++i) dot += static_cast<double>(dr[i]) * weight[i] * xr[i];
        const double c = r * r * r * dot / static_cast<double>(H);
        for (std::int64_t i = 0; i < H; ++i) {
            const float v = static_cast<float>(r * (static_cast<double>(dr[i]) * weight[i]) - c * xr[i]);
            out[i] = accumulate_dx ? out[i] + v : v;
        }
    });
}

/// Backward of layernorm_forward(x, weight, bias, eps). weight may be null (1); dweight and dbias
/// (D) are accumulators or null. dx as in rmsnorm_backward.
inline void layernorm_backward(tensor_ref<const float, 2> x, const float* weight, float eps,
                               tensor_ref<const float, 2> dy, tensor_ref<float, 2> dx, float* dweight, float* dbias,
                               int num_threads = 0, bool accumulate_dx = false) {
    const char* where = "mmca::nn::layernorm_backward";
    detail::check_norm_backward(where, x, dy, dx, eps);
    const std::int64_t N = x.shape[0], D = x.shape[1];
    std::vector<float> mean(static_cast<std::size_t>(N)), inv(static_cast<std::size_t>(N));
    const int threads = N >= 64 ? num_threads : 1;
    parallel_for(N, threads, [&](std::int64_t n, int) {
        const float* xr = x.ptr(n);
        double sum = 0.0;
        for (std::int64_t i = 0; i < D; ++i) sum += xr[i];
        const double m = sum / static_cast<double>(D);
        double sq = 0.0;
        for (std::int64_t i = 0; i < D; ++i) {
            const double d = xr[i] - m;
            sq += d * d;
        }
        inv[n] = static_cast<float>(1.0 / std::sqrt(sq / static_cast<double>(D) + eps));
        mean[n] = static_cast<float>(m);
    });
    if (dweight || dbias) {
        const std::int64_t chunks = (D + detail::norm_grad_chunk - 1) / detail::norm_grad_chunk;
        parallel_for(chunks, threads, [&](std::int64_t c, int) {
            const std::int64_t i0 = c * detail::norm_grad_chunk, i1 = std::min(D, i0 + detail::norm_grad_chunk);
            for (std::int64_t i = i0; i < i1; ++i) {
                double sw = 0.0, sb = 0.0;
                for (std::int64_t n = 0; n < N; ++n) {
                    const double g = dy(n, i);
                    sw += g * ((x(n, i) - mean[n]) * inv[n]);
                    sb += g;
                }
                if (dweight) dweight[i] += static_cast<float>(sw);
                if (dbias) dbias[i] += static_cast<float>(sb);
            }
        });
    }
    if (dx.empty()) return;
    parallel_for(N, threads, [&](std::int64_t n, int) {
        const float* xr = x.ptr(n);
        const float* dr = dy.ptr(n);
        float* out = dx.ptr(n);
        const double r = inv[n];
        const float m = mean[n];
        double sg = 0.0, sgx = 0.0;
        for (std::int64_t i = 0; i < D; ++i) {
            const double g = static_cast<double>(dr[i]) * (weight ? weight[i] : 1.0f);
            sg += g;
            sgx += g * ((xr[i] - m) * r);
        }
        sg /= static_cast<double>(D);
        sgx /= static_cast<double>(D);
        for (std::int64_t i = 0; i < D; ++i) {
            const double g = static_cast<double>(dr[i]) * (weight ? weight[i] : 1.0f);
            const float v = static_cast<float>(r * (g - sg - ((xr[i] - m) * r) * sgx));
            out[i] = accumulate_dx ? out[i] + v : v;
        }
    });
}

}  // namespace mmca::nn
