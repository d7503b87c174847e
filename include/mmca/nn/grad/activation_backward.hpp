// mmca/nn/grad/activation_backward.hpp - derivatives of the pointwise activations of nn/activation.hpp
// and of SiLU (the gate of SwiGLU), evaluated in float32 from the pre-activation x:
//   gelu_erf     Φ(x) + x·φ(x),  Φ(x) = ½(1 + erf(x/√2)), φ(x) = exp(-x²/2)/√(2π)
//   gelu_tanh    ½(1 + t) + ½x(1 - t²)·√(2/π)(1 + 3·0.044715x²),  t = tanh(√(2/π)(x + 0.044715x³))
//   quick_gelu   s + 1.702·x·s(1 - s),  s = σ(1.702x)
//   silu         s(1 + x(1 - s)),       s = σ(x)
#pragma once

#include "mmca/core/error.hpp"
#include "mmca/core/threading.hpp"
#include "mmca/nn/activation.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>

namespace mmca::nn {

/// d act(x) / dx.
inline float activation_derivative(activation a, float x) {
    switch (a) {
        case activation::gelu_tanh: {
            const float k = 0.7978845608028654f;  // sqrt(2/pi)
            const float t = std::tanh(k * (x + 0.044715f * x * x * x));
            return 0.5f * (1.0f + t) + 0.5f * x * (1.0f - t * t) * k * (1.0f + 3.0f * 0.044715f * x * x);
        }
        case activation::quick_gelu: {
            const float s = 1.0f / (1.0f + std::exp(-1.702f * x));
            return s + 1.702f * x * s * (1.0f - s);
        }
        case activation::gelu_erf: break;
    }
    const float cdf = 0.5f * (1.0f + std::erf(x * 0.70710678118654752f));
    const float pdf = 0.3989422804014327f * std::exp(-0.5f * x * x);  // 1/sqrt(2 pi)
    return cdf + x * pdf;
}

/// d silu(x) / dx, silu(x) = x·σ(x).
inline float silu_derivative(float x) {
    const float s = 1.0f / (1.0f + std::exp(-x));
    return s * (1.0f + x * (1.0f - s));
}

/// dx[i] = dy[i] · act'(x[i]) for i < n (x: the pre-activation values). dx may alias dy.
inline void activation_backward(activation a, const float* x, const float* dy, float* dx, std::int64_t n,
                                int num_threads = 0) {
    const char* where = "mmca::nn::activation_backward";
    MMCA_CHECK_ARG(n == 0 || (x && dy && dx), where, x ? (dy ? "dx" : "dy") : "x", "no data",
                   "n = " + mmca::detail::to_text(n) + " float32 values");
    constexpr std::int64_t chunk = 1 << 14;
    const std::int64_t chunks = (n + chunk - 1) / chunk;
    parallel_for(chunks, chunks > 1 ? num_threads : 1, [&](std::int64_t c, int) {
        const std::int64_t i1 = std::min(n, (c + 1) * chunk);
        for (std::int64_t i = c * chunk; i < i1; ++i) dx[i] = dy[i] * activation_derivative(a, x[i]);
    });
}

}  // namespace mmca::nn
