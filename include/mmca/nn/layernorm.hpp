// mmca/nn/layernorm.hpp - layer normalisation: y = (x - mean(x)) / sqrt(var(x) + eps) · weight + bias.
//
// Used by the vision encoders (eps 1e-6 in the QWen-VL ViT, 1e-5 in CLIP) and the projectors
// (eps 1e-12). The statistics of a row are accumulated in double, in two passes (mean, then the
// mean squared deviation: the biased variance, as torch.nn.LayerNorm takes it), so they do not
// depend on how a row is split. weight and bias are float32 vectors (either may be absent: 1 / 0).
#pragma once

#include "mmca/core/error.hpp"
#include "mmca/core/tensor.hpp"
#include "mmca/core/threading.hpp"

#include <cmath>
#include <cstdint>

namespace mmca::nn {

/// y (N, D) = layernorm(x (N, D)) · weight (D) + bias (D). y may alias x (row by row, in place).
inline void layernorm_forward(tensor_ref<const float, 2> x, const float* weight, const float* bias, float eps,
                              tensor_ref<float, 2> y, int num_threads = 0) {
    using mmca::detail::to_text;
    const char* where = "mmca::nn::layernorm_forward";
    MMCA_CHECK_ARG(x.inner_contiguous() && y.inner_contiguous() && y.shape == x.shape, where, "y", y.shape_text(),
                   "the shape of x " + x.shape_text() + " with contiguous rows");
    MMCA_CHECK_ARG(eps > 0.0f && std::isfinite(eps), where, "eps", to_text(eps), "a positive finite number");
    const std::int64_t N = x.shape[0], D = x.shape[1];
    MMCA_CHECK_ARG(D > 0, where, "x", x.shape_text(), "(N, D) with D > 0");
    parallel_for(N, N >= 64 ? num_threads : 1, [&](std::int64_t n, int) {
        const float* xr = x.ptr(n);
        float* yr = y.ptr(n);
        double sum = 0.0;
        for (std::int64_t i = 0; i < D; ++i) sum += xr[i];
        const double mean = sum / static_cast<double>(D);
        double sq = 0.0;
        for (std::int64_t i = 0; i < D; ++i) {
            const double d = xr[i] - mean;
            sq += d * d;
        }
        const float inv = static_cast<float>(1.0 / std::sqrt(sq / static_cast<double>(D) + eps));
        const float m = static_cast<float>(mean);
        for (std::int64_t i = 0; i < D; ++i) {
            const float v = (xr[i] - m) * inv;
            yr[i] = (weight ? weight[i] * v : v) + (bias ? bias[i] : 0.0f);
        }
    });
}

}  // namespace mmca::nn
