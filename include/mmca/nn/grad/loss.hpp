// mmca/nn/grad/loss.hpp - the language-modelling loss (SPEC §1) and its gradient, in one pass.
//
// logits (L, V) are float32; labels (L) are the unshifted labels of the same rows (HF convention):
// row t predicts labels[t + 1], and is supervised when t + 1 < L and labels[t + 1] != -100. With
// lse_t = log Σ_v exp(logits[t, v]) and c the number of supervised rows (or the given normalizer,
// for a token mean over a batch cut into several calls):
//   loss           = Σ_supervised (lse_t - logits[t, labels[t + 1]]) / c
//   dlogits[t, :]  = (softmax(logits[t, :]) - onehot(labels[t + 1])) / c   (supervised rows)
//                  = 0                                                     (all other rows)
// With nothing supervised the loss and the gradient are 0 (no 0/0). Row statistics are taken in
// double; per-row losses are summed in row order, so the result does not depend on the thread count.
// dlogits may be the logits' own buffer (each row is read before it is overwritten).
#pragma once

#include "mmca/core/error.hpp"
#include "mmca/core/labels.hpp"
#include "mmca/core/tensor.hpp"
#include "mmca/core/threading.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

namespace mmca::nn {


struct cross_entropy_result {
    double loss = 0.0;        // loss_sum / normalizer (0 when nothing is supervised)
    double loss_sum = 0.0;    // Σ over supervised rows of -log p(label)
    std::int64_t count = 0;   // supervised rows of this call
};

/// Loss of logits (L, V) against labels (L) and, unless dlogits is empty, its gradient (L, V).
/// normalizer > 0 replaces the call's own supervised count as the divisor (a batch-wide token count).
inline cross_entropy_result cross_entropy_forward_backward(tensor_ref<const float, 2> logits, const std::int32_t* labels,
                                                           tensor_ref<float, 2> dlogits, double normalizer = 0.0,
                                                           int num_threads = 0) {
    using mmca::detail::to_text;
    const char* where = "mmca::nn::cross_entropy_forward_backward";
    const std::int64_t L = logits.shape[0], V = logits.shape[1];
    MMCA_CHECK_ARG(logits.inner_contiguous() && (L == 0 || (logits.data && V > 0)), where, "logits",
                   logits.shape_text(), "(L, V) float32 with contiguous rows and V > 0");
    MMCA_CHECK_ARG(L == 0 || labels != nullptr, where, "labels", "no data", "(L) int32 labels");
    if (!dlogits.empty())
        MMCA_CHECK_ARG(dlogits.shape == logits.shape && dlogits.inner_contiguous(), where, "dlogits",
                       dlogits.shape_text(), "the shape of logits " + logits.shape_text() + " with contiguous rows");
    MMCA_CHECK_ARG(normalizer >= 0.0 && std::isfinite(normalizer), where, "normalizer", to_text(normalizer),
                   "0 (the supervised count of this call) or a positive token count");
    cross_entropy_result res;
    for (std::int64_t t = 0; t < L; ++t) {
        MMCA_CHECK_ARG(labels[t] == ignore_label || (labels[t] >= 0 && labels[t] < V), where, "labels",
                       "labels[" + to_text(t) + "] = " + to_text(labels[t]),
                       "-100 or a token id in [0, " + to_text(V) + ")");
        if (t > 0 && labels[t] != ignore_label) ++res.count;
    }
    const double den = normalizer > 0.0 ? normalizer : static_cast<double>(res.count);
    const double inv_den = den > 0.0 ? 1.0 / den : 0.0;
    std::vector<double> row_loss(static_cast<std::size_t>(L), 0.0);
    parallel_for(L, L >= 4 && double(L) * double(V) >= double(1 << 16) ? num_threads : 1, [&](std::int64_t t, int) {
        const bool supervised = t + 1 < L && labels[t + 1] != ignore_label;
        float* d = dlogits.empty() ? nullptr : dlogits.ptr(t);
        if (!supervised) {
            if (d) std::fill(d, d + V, 0.0f);
            return;
        }
        const float* x = logits.ptr(t);
        const std::int32_t y = labels[t + 1];
        float mx = x[0];
        for (std::int64_t v = 1; v < V; ++v) mx = std::max(mx, x[v]);
        double sum = 0.0;
        for (std::int64_t v = 0; v < V; ++v) sum += std::exp(static_cast<double>(x[v]) - mx);
        const double lse = mx + std::log(sum);
        row_loss[static_cast<std::size_t>(t)] = lse - x[y];
        if (!d) return;
        for (std::int64_t v = 0; v < V; ++v) {
            const double p = std::exp(static_cast<double>(x[v]) - lse);
            d[v] = static_cast<float>((p - (v == y ? 1.0 : 0.0)) * inv_den);
        }
    });
    for (double l : row_loss) res.loss_sum += l;
    res.loss = res.loss_sum * inv_den;
    return res;
}

}  // namespace mmca::nn
