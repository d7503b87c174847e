// mmca/vision/position.hpp - position tables of the vision side.
//
//   sincos_2d(grid, dim)           the fixed 2D sin-cos table of a grid × grid layout: for the
//                                  token at flat index p = r·grid + c and ω_i = 10000^(−i/(dim/4)),
//                                  i < dim/4, the row is [sin(c·ω), cos(c·ω), sin(r·ω), cos(r·ω)]
//                                  (QWen-VL's resampler and the perceiver projector).
//   bicubic_resize_table(t, …)     a (grid_in², dim) table resampled to (grid_out², dim) as
//                                  torch.nn.functional.interpolate(mode="bicubic",
//                                  align_corners=False) does on the (dim, grid, grid) image: cubic
//                                  convolution with A = −0.75, source coordinate
//                                  (o + ½)·grid_in/grid_out − ½, taps clamped to the border.
// Both are computed in double and rounded to float32 once.
#pragma once

#include "mmca/core/error.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

namespace mmca::vision {

/// (grid², dim) float32 2D sin-cos table; dim must be a multiple of 4.
inline std::vector<float> sincos_2d(std::int64_t grid, std::int64_t dim) {
    using mmca::detail::to_text;
    const char* where = "mmca::vision::sincos_2d";
    MMCA_CHECK_ARG(grid > 0, where, "grid", to_text(grid), "a positive grid size");
    MMCA_CHECK_ARG(dim > 0 && dim % 4 == 0, where, "dim", to_text(dim), "a positive multiple of 4");
    const std::int64_t quarter = dim / 4;
    std::vector<double> omega(static_cast<std::size_t>(quarter));
    for (std::int64_t i = 0; i < quarter; ++i)
        omega[i] = 1.0 / std::pow(10000.0, static_cast<double>(i) / static_cast<double>(quarter));
    std::vector<float> table(static_cast<std::size_t>(grid * grid * dim));
    for (std::int64_t r = 0; r < grid; ++r)
        for (std::int64_t c = 0; c < grid; ++c) {
            float* row = table.data() + (r * grid + c) * dim;
            for (std::int64_t i = 0; i < quarter; ++i) {
                row[i] = static_cast<float>(std::sin(static_cast<double>(c) * omega[i]));
                row[quarter + i] = static_cast<float>(std::cos(static_cast<double>(c) * omega[i]));
                row[2 * quarter + i] = static_cast<float>(std::sin(static_cast<double>(r) * omega[i]));
                row[3 * quarter + i] = static_cast<float>(std::cos(static_cast<double>(r) * omega[i]));
            }
        }
    return table;
}

namespace detail {

/// The side s of an s×s grid of n cells, or -1 when n is not a perfect square.
inline std::int64_t grid_side(std::int64_t n) {
    if (n <= 0) return -1;
    auto s = static_cast<std::int64_t>(std::llround(std::sqrt(static_cast<double>(n))));
    while (s * s > n) --s;
    while ((s + 1) * (s + 1) <= n) ++s;
    return s * s == n ? s : -1;
}

/// The four taps and weights of torch's bicubic interpolation for output index o.
struct cubic_taps {
    std::int64_t index[4];
    double weight[4];
};

inline double cubic_near(double x, double a) { return ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0; }  // |x| <= 1
inline double cubic_far(double x, double a) { return ((a * x - 5.0 * a) * x + 8.0 * a) * x - 4.0 * a; }  // 1 < |x| < 2

inline std::vector<cubic_taps> bicubic_taps(std::int64_t in, std::int64_t out) {
    constexpr double a = -0.75;
    const double scale = static_cast<double>(in) / static_cast<double>(out);
    std::vector<cubic_taps> taps(static_cast<std::size_t>(out));
    for (std::int64_t o = 0; o < out; ++o) {
        const double src = scale * (static_cast<double>(o) + 0.5) - 0.5;
        const double f = std::floor(src);
        const double t = src - f;
        const auto i0 = static_cast<std::int64_t>(f);
        auto& tp = taps[static_cast<std::size_t>(o)];
        tp.weight[0] = cubic_far(t + 1.0, a);
        tp.weight[1] = cubic_near(t, a);
        tp.weight[2] = cubic_near(1.0 - t, a);
        tp.weight[3] = cubic_far(2.0 - t, a);
        for (int k = 0; k < 4; ++k) tp.index[k] = std::clamp<std::int64_t>(i0 - 1 + k, 0, in - 1);
    }
    return taps;
}

}  // namespace detail

/// (grid_out², dim) = bicubic resample of table (grid_in², dim), row index r·grid + c.
inline std::vector<float> bicubic_resize_table(const float* table, std::int64_t grid_in, std::int64_t dim,
                                               std::int64_t grid_out) {
    using mmca::detail::to_text;
    const char* where = "mmca::vision::bicubic_resize_table";
    MMCA_CHECK_ARG(table != nullptr, where, "table", "no data", "a (grid_in², dim) float32 table");
    MMCA_CHECK_ARG(grid_in > 0 && grid_out > 0, where, "grid", to_text(grid_in) + " -> " + to_text(grid_out),
                   "positive grid sizes");
    MMCA_CHECK_ARG(dim > 0, where, "dim", to_text(dim), "a positive width");
    const auto taps = detail::bicubic_taps(grid_in, grid_out);
    // Columns first (grid_in rows × grid_out columns), then rows, in double.
    std::vector<double> mid(static_cast<std::size_t>(grid_in * grid_out * dim), 0.0);
    for (std::int64_t r = 0; r < grid_in; ++r)
        for (std::int64_t c = 0; c < grid_out; ++c) {
            double* dst = mid.data() + (r * grid_out + c) * dim;
            const auto& tp = taps[static_cast<std::size_t>(c)];
            for (int k = 0; k < 4; ++k) {
                const float* src = table + (r * grid_in + tp.index[k]) * dim;
                for (std::int64_t i = 0; i < dim; ++i) dst[i] += tp.weight[k] * src[i];
            }
        }
    std::vector<float> out(static_cast<std::size_t>(grid_out * grid_out * dim));
    std::vector<double> acc(static_cast<std::size_t>(dim));
    for (std::int64_t r = 0; r < grid_out; ++r)
        for (std::int64_t c = 0; c < grid_out; ++c) {
            std::fill(acc.begin(), acc.end(), 0.0);
            const auto& tp = taps[static_cast<std::size_t>(r)];
            for (int k = 0; k < 4; ++k) {
                const double* src = mid.data() + (tp.index[k] * grid_out + c) * dim;
                for (std::int64_t i = 0; i < dim; ++i) acc[i] += tp.weight[k] * src[i];
            }
            float* dst = out.data() + (r * grid_out + c) * dim;
            for (std::int64_t i = 0; i < dim; ++i) dst[i] = static_cast<float>(acc[i]);
        }
    return out;
}

}  // namespace mmca::vision
