// mmca/nn/rmsnorm.hpp - root-mean-square layer norm: y = x / sqrt(mean(x²) + eps) · weight.
//
// The statistic is taken in float32 input precision but accumulated in double, so the result does
// not depend on how the sum is split; weight is a float32 vector (norm weights are tiny and are
// widened once when a model is loaded).
#pragma once

#include "mmca/core/error.hpp"
#include "mmca/core/tensor.hpp"
#include "mmca/core/threading.hpp"

#include <cmath>
#include <cstdint>

namespace mmca::nn {

/// y (N, H) = rmsnorm(x (N, H)) · weight (H). y may alias x (row by row, in place).
inline void rmsnorm_forward(tensor_ref<const float, 2> x, const float* weight, float eps, tensor_ref<float, 2> y,
                            int num_threads = 0) {
    using mmca::detail::to_text;
    const char* where = "mmca::nn::rmsnorm_forward";
    MMCA_CHECK_ARG(weight != nullptr, where, "weight", "no tensor", "an (H) float32 vector");
    MMCA_CHECK_ARG(x.inner_contiguous() && y.inner_contiguous() && y.shape == x.shape, where, "y", y.shape_text(),
                   "the shape of x " + x.shape_text() + " with contiguous rows");
    MMCA_CHECK_ARG(eps > 0.0f && std::isfinite(eps), where, "eps", to_text(eps), "a positive finite number");
    const std::int64_t N = x.shape[0], H = x.shape[1];
    parallel_for(N, N >= 64 ? num_threads : 1, [&](std::int64_t n, int) {
        const float* xr = x.ptr(n);
        float* yr = y.ptr(n);
        double sum = 0.0;
        for (std::int64_t i = 0; i < H; ++i) sum += static_cast<double>(xr[i]) * xr[i];
        const float inv = static_cast<float>(1.0 / std::sqrt(sum / static_cast<double>(H) + eps));
        for (std::int64_t i = 0; i < H; ++i) yr[i] = weight[i] * (xr[i] * inv);
    });
}

}  // namespace mmca::nn
