// mmca/nn/grad/rope_backward.hpp - backward of rope_apply (nn/rope.hpp).
//
// RoPE is a rotation of each pair (i, i + D/2) by the angle of the row, so its gradient is the
// inverse rotation (by minus the angle) of the output gradient:
//   dx[i]       =  dy[i] · cos + dy[i + D/2] · sin
//   dx[i + D/2] = -dy[i] · sin + dy[i + D/2] · cos
// The same rope_table serves both directions, so linear and dynamic-NTK scaling (applied when the
// table is built, rope_build) carry over unchanged: build the table with the forward's positions and
// total length.
#pragma once

#include "mmca/core/error.hpp"
#include "mmca/nn/rope.hpp"

#include <cstdint>

namespace mmca::nn {

/// Turns, in place, the output gradient of rope_apply(x, row_stride, heads, table) into the input
/// gradient: `heads` heads of D = 2·table.half values in each of the table.rows rows of g.
inline void rope_apply_backward(float* g, std::int64_t row_stride, std::int64_t heads, const rope_table& table) {
    const char* where = "mmca::nn::rope_apply_backward";
    MMCA_CHECK_ARG(table.rows == 0 || g != nullptr, where, "g", "no data", "the gradient of the rotated rows");
    MMCA_CHECK_ARG(row_stride >= heads * 2 * table.half, where, "row_stride", mmca::detail::to_text(row_stride),
                   "at least heads · D = " + mmca::detail::to_text(heads * 2 * table.half));
    const std::int64_t half = table.half, D = 2 * half;
    for (std::int64_t r = 0; r < table.rows; ++r) {
        const float* c = table.cos.data() + r * half;
        const float* s = table.sin.data() + r * half;
        for (std::int64_t h = 0; h < heads; ++h) {
            float* v = g + r * row_stride + h * D;
            for (std::int64_t i = 0; i < half; ++i) {
                const float a = v[i], b = v[i + half];
                v[i] = a * c[i] + b * s[i];
                v[i + half] = b * c[i] - a * s[i];
            }
        }
    }
}

}  // namespace mmca::nn
