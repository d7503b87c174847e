// mmca/attention/reference_backward.hpp - the oracle of the backward: gradients from explicit masks.
//
// For the loss L = Σ dO ⊙ O, with O_i = Σ_g Σ_k P_g[i,k] V_k (the groups of mmca/attention/reference.hpp,
// whose one-key softmax {j} is the self term V_j of image rows), each row i and group g gives
//   dV_k += P_g[i,k] dO_i
//   softmax group:  dS_g[i,k] = P_g[i,k] (dO_i·V_k − Σ_k' P_g[i,k'] dO_i·V_k')
//                   dQ_i += scale Σ_k dS_g[i,k] K_k,   dK_k += scale dS_g[i,k] Q_i
//   uniform group:  its weights do not depend on the scores, so it sends nothing to Q or K.
// Everything is in double precision, straight over the (Lq, Lk) masks; slow on purpose.
#pragma once

#include "mmca/attention/problem.hpp"
#include "mmca/attention/reference.hpp"
#include "mmca/core/tensor.hpp"

#include <algorithm>
#include <cstdint>
#include <vector>

namespace mmca {

/// The reference backward on dense row-major double arrays: q, dout, dq (B, Hq, Lq, D); k, v, dk, dv
/// (B, Hkv, Lk, D). Writes dq, dk, dv (gradients of Σ dout ⊙ out) and, when out is not null, the
/// forward output out (B, Hq, Lq, D). p gives the sizes, scale and token layout.
inline void attention_reference_backward_double(const attention_problem& p, const double* q, const double* k,
                                                const double* v, const double* dout, double* dq, double* dk,
                                                double* dv, double* out = nullptr) {
    const std::int64_t D = p.head_dim, Lq = p.q_len, Lk = p.kv_len;
    const double scale = p.scale;
    const std::int64_t q_size = p.batch * p.q_heads * Lq * D, kv_size = p.batch * p.kv_heads * Lk * D;
    std::fill(dq, dq + q_size, 0.0);
    std::fill(dk, dk + kv_size, 0.0);
    std::fill(dv, dv + kv_size, 0.0);
    if (out) std::fill(out, out + q_size, 0.0);
    std::vector<double> scores(Lk), dp(Lk), weights(Lk);
    for (std::int64_t b = 0; b < p.batch; ++b) {
        const explicit_masks masks = build_explicit_masks(p, b);
        for (std::int64_t h = 0; h < p.q_heads; ++h) {
            const std::int64_t hk = h / p.group_size();
            const double* K = k + (b * p.kv_heads + hk) * Lk * D;
            const double* V = v + (b * p.kv_heads + hk) * Lk * D;
            double* dK = dk + (b * p.kv_heads + hk) * Lk * D;
            double* dV = dv + (b * p.kv_heads + hk) * Lk * D;
            for (std::int64_t i = 0; i < Lq; ++i) {
                const std::int64_t row = ((b * p.q_heads + h) * Lq + i) * D;
                const double* Qi = q + row;
                const double* dOi = dout + row;
                double* dQi = dq + row;
                for (std::int64_t kk = 0; kk < Lk; ++kk) {
                    double s = 0.0, g = 0.0;
                    for (std::int64_t d = 0; d < D; ++d) {
                        s += Qi[d] * K[kk * D + d];
                        g += dOi[d] * V[kk * D + d];
                    }
                    scores[kk] = s * scale;
                    dp[kk] = g;
                }
                for (const auto& group : masks.group) {
                    const mask_entry* mask = group.data() + i * Lk;
                    if (!reference_group_weights(mask, scores.data(), Lk, weights.data())) continue;
                    double delta = 0.0;  // Σ_k P[k] dP[k] = dO_i · O_g
                    for (std::int64_t kk = 0; kk < Lk; ++kk) delta += weights[kk] * dp[kk];
                    for (std::int64_t kk = 0; kk < Lk; ++kk) {
                        const double w = weights[kk];
                        if (w == 0.0) continue;
                        for (std::int64_t d = 0; d < D; ++d) dV[kk * D + d] += w * dOi[d];
                        if (out)
                            for (std::int64_t d = 0; d < D; ++d) out[row + d] += w * V[kk * D + d];
                        if (mask[kk] != mask_entry::softmax) continue;
                        const double ds = w * (dp[kk] - delta) * scale;
                        for (std::int64_t d = 0; d < D; ++d) {
                            dQi[d] += ds * K[kk * D + d];
                            dK[kk * D + d] += ds * Qi[d];
                        }
                    }
                }
            }
        }
    }
}

/// The reference backward on float tensors: computes dq (q's shape), dk and dv (k's shape) for the
/// upstream gradient dout (q's shape) in double precision and rounds them to float.
inline void attention_reference_backward(const attention_problem& p, tensor_ref<const float, 4> q,
                                         tensor_ref<const float, 4> k, tensor_ref<const float, 4> v,
                                         tensor_ref<const float, 4> dout, tensor_ref<float, 4> dq,
                                         tensor_ref<float, 4> dk, tensor_ref<float, 4> dv) {
    auto dense = [](const tensor_ref<const float, 4>& t) {
        std::vector<double> x(static_cast<std::size_t>(t.numel()));
        std::size_t n = 0;
        for (std::int64_t a = 0; a < t.shape[0]; ++a)
            for (std::int64_t b = 0; b < t.shape[1]; ++b)
                for (std::int64_t c = 0; c < t.shape[2]; ++c)
                    for (std::int64_t d = 0; d < t.shape[3]; ++d) x[n++] = t(a, b, c, d);
        return x;
    };
    auto store = [](const std::vector<double>& x, const tensor_ref<float, 4>& t) {
        std::size_t n = 0;
        for (std::int64_t a = 0; a < t.shape[0]; ++a)
            for (std::int64_t b = 0; b < t.shape[1]; ++b)
                for (std::int64_t c = 0; c < t.shape[2]; ++c)
                    for (std::int64_t d = 0; d < t.shape[3]; ++d) t(a, b, c, d) = static_cast<float>(x[n++]);
    };
    const std::vector<double> qd = dense(q), kd = dense(k), vd = dense(v), dod = dense(dout);
    std::vector<double> dqd(qd.size()), dkd(kd.size()), dvd(vd.size());
    attention_reference_backward_double(p, qd.data(), kd.data(), vd.data(), dod.data(), dqd.data(), dkd.data(),
                                        dvd.data());
    store(dqd, dq);
    store(dkd, dk);
    store(dvd, dv);
}

}  // namespace mmca
