// mmca/nn/activation.hpp - the pointwise activations of the vision side, applied in place.
//
//   gelu_erf     x · ½(1 + erf(x/√2))   exact GELU (QWen-VL ViT, torch.nn.GELU())
//   gelu_tanh    ½x(1 + tanh(√(2/π)(x + 0.044715x³)))   (GELU(approximate="tanh"))
//   quick_gelu   x · σ(1.702x)           (OpenAI CLIP, HF "quick_gelu")
#pragma once

#include "mmca/core/error.hpp"
#include "mmca/core/threading.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>

namespace mmca::nn {

enum class activation : std::uint8_t { gelu_erf, gelu_tanh, quick_gelu };

inline const char* to_string(activation a) {
    switch (a) {
        case activation::gelu_tanh: return "gelu_tanh";
        case activation::quick_gelu: return "quick_gelu";
        case activation::gelu_erf: break;
    }
    return "gelu_erf";
}

/// The activation named by an HF config's hidden_act ("gelu", "gelu_new"/"gelu_pytorch_tanh", "quick_gelu").
inline activation parse_activation(const std::string& name, const char* where = "mmca::nn::parse_activation") {
    if (name == "gelu") return activation::gelu_erf;
    if (name == "gelu_new" || name == "gelu_pytorch_tanh") return activation::gelu_tanh;
    if (name == "quick_gelu") return activation::quick_gelu;
    throw invalid_argument(where, "hidden_act", "\"" + name + "\"",
                           "one of \"gelu\", \"gelu_new\", \"gelu_pytorch_tanh\", \"quick_gelu\"");
}

inline float activate(activation a, float x) {
    switch (a) {
        case activation::gelu_tanh: {
            const float k = 0.7978845608028654f;  // sqrt(2/pi)
            return 0.5f * x * (1.0f + std::tanh(k * (x + 0.044715f * x * x * x)));
        }
        case activation::quick_gelu: return x / (1.0f + std::exp(-1.702f * x));
        case activation::gelu_erf: break;
    }
    return 0.5f * x * (1.0f + std::erf(x * 0.70710678118654752f));
}

/// x[i] = act(x[i]) for i < n, spread over threads in chunks.
inline void activate_inplace(activation a, float* x, std::int64_t n, int num_threads = 0) {
    constexpr std::int64_t chunk = 1 << 14;
    const std::int64_t chunks = (n + chunk - 1) / chunk;
    parallel_for(chunks, chunks > 1 ? num_threads : 1, [&](std::int64_t c, int) {
        const std::int64_t i1 = std::min(n, (c + 1) * chunk);
        for (std::int64_t i = c * chunk; i < i1; ++i) x[i] = activate(a, x[i]);
    });
}

}  // namespace mmca::nn
