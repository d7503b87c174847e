// mmca/nn/grad/mlp_backward.hpp - backward of the SwiGLU MLP (nn/mlp.hpp): y = down(silu(g) ⊙ u),
// g = gate(x), u = up(x).
//
//   da = dy · W_down                     dW_down += dyᵀ · a,  a = silu(g) ⊙ u
//   dg = da ⊙ u ⊙ silu'(g),  du = da ⊙ silu(g)
//   dx = dg · W_gate + du · W_up         dW_gate += dgᵀ · x,  dW_up += duᵀ · x
//
// g and u are recomputed from x (two GEMMs) rather than kept from the forward: the MLP's
// intermediates are the largest activations of a decoder layer.
#pragma once

#include "mmca/core/error.hpp"
#include "mmca/core/tensor.hpp"
#include "mmca/core/threading.hpp"
#include "mmca/nn/grad/activation_backward.hpp"
#include "mmca/nn/grad/linear_backward.hpp"
#include "mmca/nn/mlp.hpp"

#include <cmath>
#include <cstdint>
#include <vector>

namespace mmca::nn {

/// float32 gradient accumulators of a SwiGLU MLP's weights, each [out, in] like its weight, or
/// null (frozen).
struct swiglu_grads {
    float* gate = nullptr;  // [I, H]
    float* up = nullptr;    // [I, H]
    float* down = nullptr;  // [H, I]
};

/// Work buffers of swiglu_backward, grown on demand.
struct swiglu_backward_scratch {
    std::vector<float> gate, up, act, dgate, dup;  // (N, I) each
};

/// Backward of swiglu_forward(x, w, y). dx (N, H) is overwritten (or added to with accumulate_dx;
/// empty: not wanted). Weight gradients are added to the non-null accumulators of grads.
inline void swiglu_backward(tensor_ref<const float, 2> x, const swiglu_weights& w, tensor_ref<const float, 2> dy,
                            tensor_ref<float, 2> dx, const swiglu_grads& grads, swiglu_backward_scratch& s,
                            int num_threads = 0, bool accumulate_dx = false) {
    using mmca::detail::to_text;
    const char* where = "mmca::nn::swiglu_backward";
    MMCA_CHECK_ARG(!w.gate.empty() && !w.up.empty() && !w.down.empty(), where, "weights", "a missing matrix",
                   "gate [I, H], up [I, H] and down [H, I]");
    MMCA_CHECK_ARG(w.up.rows == w.gate.rows && w.up.cols == w.gate.cols && w.down.cols == w.gate.rows &&
                       w.down.rows == w.gate.cols,
                   where, "weights",
                   "gate " + w.gate.shape_text() + ", up " + w.up.shape_text() + ", down " + w.down.shape_text(),
                   "gate [I, H], up [I, H], down [H, I]");
    MMCA_CHECK_ARG(dy.shape == x.shape, where, "dy", dy.shape_text(), "the shape of x " + x.shape_text());
    const std::int64_t N = x.shape[0], I = w.gate.rows;
    for (auto* v : {&s.gate, &s.up, &s.act, &s.dgate, &s.dup}) v->resize(static_cast<std::size_t>(N * I));
    tensor_ref<float, 2> g(s.gate.data(), {N, I}), u(s.up.data(), {N, I}), a(s.act.data(), {N, I});
    tensor_ref<float, 2> dg(s.dgate.data(), {N, I}), du(s.dup.data(), {N, I});
    linear_forward(x, w.gate, nullptr, g, num_threads);
    linear_forward(x, w.up, nullptr, u, num_threads);
    for (std::int64_t i = 0; i < N * I; ++i) {
        const float gi = g.data[i];
        a.data[i] = gi / (1.0f + std::exp(-gi)) * u.data[i];
    }
    // da into dg, then split into the gate and up gradients.
    linear_backward(a, w.down, dy, dg, grads.down, nullptr, num_threads);
    parallel_for(N, N >= 16 ? num_threads : 1, [&](std::int64_t n, int) {
        for (std::int64_t i = n * I; i < (n + 1) * I; ++i) {
            const float gi = g.data[i], da = dg.data[i];
            du.data[i] = da * (gi / (1.0f + std::exp(-gi)));
            dg.data[i] = da * u.data[i] * silu_derivative(gi);
        }
    });
    tensor_ref<float, 2> none;
    linear_backward(x, w.gate, dg, dx.empty() ? none : dx, grads.gate, nullptr, num_threads, accumulate_dx);
    linear_backward(x, w.up, du, dx.empty() ? none : dx, grads.up, nullptr, num_threads, true);
}

}  // namespace mmca::nn
