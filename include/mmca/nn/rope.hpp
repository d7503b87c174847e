// mmca/nn/rope.hpp - rotary position embedding with HF's rotate-half pairing.
//
// Dimension i of a head (i < D/2) is rotated together with dimension i + D/2 (HF checkpoints store
// q/k permuted for this pairing) by the angle pos · inv_freq[i], inv_freq[i] = theta^(-2i/D):
//   y[i]       = x[i] · cos - x[i + D/2] · sin
//   y[i + D/2] = x[i + D/2] · cos + x[i] · sin
// Scaling (LLaMa config "rope_scaling"):
//   linear   positions are divided by `factor` (position interpolation);
//   dynamic  NTK-aware: when the sequence is longer than max_positions, theta grows to
//            theta · (factor · L / max_positions - (factor - 1))^(D / (D - 2)), L = the total
//            sequence length of the call (cached tokens included). Rows computed earlier keep the
//            rotation they were computed with, as in HF transformers' cached implementation.
// Angles are formed in float32 exactly as HF does (float inverse frequencies times float
// positions); cos and sin are then taken in double and rounded.
#pragma once

#include "mmca/core/error.hpp"
#include "mmca/core/tensor.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

namespace mmca::nn {

enum class rope_scaling_type : std::uint8_t { none, linear, dynamic };

inline const char* to_string(rope_scaling_type t) {
    switch (t) {
        case rope_scaling_type::none: return "none";
        case rope_scaling_type::linear: return "linear";
        case rope_scaling_type::dynamic: return "dynamic";
    }
    return "unknown";
}

struct rope_config {
    std::int64_t head_dim = 128;       // D (even)
    double theta = 10000.0;            // base
    rope_scaling_type scaling = rope_scaling_type::none;
    double factor = 1.0;               // scaling factor (> 1 when scaling != none)
    std::int64_t max_positions = 2048; // positions the model was trained on (dynamic scaling)
};

/// cos/sin of the angles of N positions: (N, D/2) each.
struct rope_table {
    std::int64_t rows = 0, half = 0;
    std::vector<float> cos, sin;
};

/// Fills `table` for the given positions; total_len is the sequence length the call reaches
/// (it only matters for dynamic scaling).
inline void rope_build(const rope_config& cfg, const std::int64_t* positions, std::int64_t n, std::int64_t total_len,
                       rope_table& table) {
    using mmca::detail::to_text;
    const char* where = "mmca::nn::rope_build";
    MMCA_CHECK_ARG(cfg.head_dim > 0 && cfg.head_dim % 2 == 0, where, "head_dim", to_text(cfg.head_dim),
                   "a positive even number");
    MMCA_CHECK_ARG(cfg.theta > 0.0, where, "theta", to_text(cfg.theta), "a positive base");
    const std::int64_t D = cfg.head_dim, half = D / 2;
    double base = cfg.theta;
    if (cfg.scaling == rope_scaling_type::dynamic && total_len > cfg.max_positions) {
        const double ratio = cfg.factor * static_cast<double>(total_len) / static_cast<double>(cfg.max_positions) -
                             (cfg.factor - 1.0);
        base = cfg.theta * std::pow(ratio, static_cast<double>(D) / static_cast<double>(D - 2));
    }
    std::vector<float> inv_freq(static_cast<std::size_t>(half));
    const float base_f = static_cast<float>(base);
    for (std::int64_t i = 0; i < half; ++i)
        inv_freq[i] = 1.0f / std::pow(base_f, static_cast<float>(2 * i) / static_cast<float>(D));
    table.rows = n;
    table.half = half;
    table.cos.resize(static_cast<std::size_t>(n * half));
    table.sin.resize(static_cast<std::size_t>(n * half));
    const float inv_factor_div = static_cast<float>(cfg.factor);
    for (std::int64_t r = 0; r < n; ++r) {
        float t = static_cast<float>(positions[r]);
        if (cfg.scaling == rope_scaling_type::linear) t = t / inv_factor_div;
        for (std::int64_t i = 0; i < half; ++i) {
            const float angle = t * inv_freq[i];
            table.cos[r * half + i] = static_cast<float>(std::cos(static_cast<double>(angle)));
            table.sin[r * half + i] = static_cast<float>(std::sin(static_cast<double>(angle)));
        }
    }
}

/// Rotates, in place, `heads` heads of D = 2·table.half values in each of the table.rows rows of x
/// (row r starts at x + r·row_stride, head h at + h·D).
inline void rope_apply(float* x, std::int64_t row_stride, std::int64_t heads, const rope_table& table) {
    const std::int64_t half = table.half, D = 2 * half;
    for (std::int64_t r = 0; r < table.rows; ++r) {
        const float* c = table.cos.data() + r * half;
        const float* s = table.sin.data() + r * half;
        for (std::int64_t h = 0; h < heads; ++h) {
            float* v = x + r * row_stride + h * D;
            for (std::int64_t i = 0; i < half; ++i) {
                const float a = v[i], b = v[i + half];
                v[i] = a * c[i] - b * s[i];
                v[i + half] = b * c[i] + a * s[i];
            }
        }
    }
}

}  // namespace mmca::nn
