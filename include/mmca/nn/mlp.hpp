// mmca/nn/mlp.hpp - the SwiGLU feed-forward block of LLaMa: down(silu(gate(x)) ⊙ up(x)).
#pragma once

#include "mmca/core/error.hpp"
#include "mmca/core/tensor.hpp"
#include "mmca/core/threading.hpp"
#include "mmca/nn/linear.hpp"

#include <cmath>
#include <cstdint>
#include <vector>

namespace mmca::nn {

/// Weights of one SwiGLU MLP, all [out, in] as stored.
struct swiglu_weights {
    matrix_ref gate;  // [I, H]
    matrix_ref up;    // [I, H]
    matrix_ref down;  // [H, I]
};

/// Scratch of swiglu_forward, reused across calls (grown on demand).
struct swiglu_scratch {
    std::vector<float> gate;  // (N, I)
    std::vector<float> up;    // (N, I)
};

/// silu(g) · u, elementwise, written into g.
inline void swiglu_activate(float* g, const float* u, std::int64_t n) {
    for (std::int64_t i = 0; i < n; ++i) {
        const float a = g[i];
        g[i] = a / (1.0f + std::exp(-a)) * u[i];
    }
}

/// y (N, H) = down(silu(gate(x)) ⊙ up(x)) for x (N, H). y must not overlap x.
inline void swiglu_forward(tensor_ref<const float, 2> x, const swiglu_weights& w, tensor_ref<float, 2> y,
                           swiglu_scratch& scratch, int num_threads = 0) {
    using mmca::detail::to_text;
    const char* where = "mmca::nn::swiglu_forward";
    MMCA_CHECK_ARG(!w.gate.empty() && !w.up.empty() && !w.down.empty(), where, "weights", "a missing matrix",
                   "gate [I, H], up [I, H] and down [H, I]");
    MMCA_CHECK_ARG(w.up.rows == w.gate.rows && w.up.cols == w.gate.cols && w.down.cols == w.gate.rows &&
                       w.down.rows == w.gate.cols,
                   where, "weights",
                   "gate " + w.gate.shape_text() + ", up " + w.up.shape_text() + ", down " + w.down.shape_text(),
                   "gate [I, H], up [I, H], down [H, I]");
    const std::int64_t N = x.shape[0], I = w.gate.rows;
    scratch.gate.resize(static_cast<std::size_t>(N * I));
    scratch.up.resize(static_cast<std::size_t>(N * I));
    tensor_ref<float, 2> g(scratch.gate.data(), {N, I}), u(scratch.up.data(), {N, I});
    linear_forward(x, w.gate, nullptr, g, num_threads);
    linear_forward(x, w.up, nullptr, u, num_threads);
    parallel_for(N, N >= 16 ? num_threads : 1,
                 [&](std::int64_t n, int) { swiglu_activate(g.ptr(n), u.ptr(n), I); });
    linear_forward(g, w.down, nullptr, y, num_threads);
}

}  // namespace mmca::nn
