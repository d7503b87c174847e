// mmca/train/grad_accumulation.hpp - several micro-batches per optimizer step.
//
// A step of A micro-batches; micro-batch i has n_i label tokens and summed token loss S_i
// (cross-entropy summed over its label tokens). Two ways to average:
//
//   micro_batch_mean (default; the reference's, DeepSpeed divides each micro-batch's token-mean
//   loss by the accumulation count):
//     step loss  = (1/A) · Σ_i S_i / n_i
//     scale_i    = 1 / (A · n_i)     (d step loss / d S_i; 0 for a micro-batch without label tokens)
//   token_mean (every label token of the step weighs the same, whatever micro-batch holds it):
//     step loss  = Σ_i S_i / Σ_i n_i
//     scale_i    = 1 / N,  N = Σ_i n_i  (the caller counts the step's label tokens beforehand)
//
// The backward pass of micro-batch i seeds d loss / d logits with scale_i per label token (or,
// equivalently, backpropagates the micro-batch's token-mean loss times A·n_i·scale_i), and
// gradients accumulate into parameter::grad over the A micro-batches; the optimizer steps once.
//
//   mmca::train::grad_accumulation acc(4);
//   for (each micro-batch) {
//       ...forward, backward with acc.loss_scale(n_i, step_tokens)...
//       if (acc.add(S_i, n_i)) { clip; optimizer.step(lr); params.zero_grad(); log(acc.step_loss()); }
//   }
#pragma once

#include "mmca/core/error.hpp"

#include <cmath>
#include <cstdint>
#include <string>

namespace mmca::train {

enum class loss_averaging {
    micro_batch_mean,  // mean over micro-batches of each one's token mean (the reference's)
    token_mean,        // mean over all label tokens of the step
};

inline const char* to_string(loss_averaging a) {
    return a == loss_averaging::micro_batch_mean ? "micro_batch_mean" : "token_mean";
}

class grad_accumulation {
public:
    explicit grad_accumulation(std::int64_t micro_batches_per_step,
                               loss_averaging averaging = loss_averaging::micro_batch_mean)
        : per_step_(micro_batches_per_step), averaging_(averaging) {
        MMCA_CHECK_ARG(micro_batches_per_step >= 1, "mmca::train::grad_accumulation", "micro_batches_per_step",
                       std::to_string(micro_batches_per_step), "a count >= 1");
    }

    /// The factor for the gradient of a micro-batch's summed token loss (see the file comment).
    /// step_tokens (N) is read for token_mean only.
    double loss_scale(std::int64_t micro_tokens, std::int64_t step_tokens = 0) const {
        const char* where = "mmca::train::grad_accumulation::loss_scale";
        MMCA_CHECK_ARG(micro_tokens >= 0, where, "micro_tokens", std::to_string(micro_tokens), "a count >= 0");
        if (averaging_ == loss_averaging::micro_batch_mean)
            return micro_tokens == 0 ? 0.0 : 1.0 / (static_cast<double>(per_step_) * static_cast<double>(micro_tokens));
        MMCA_CHECK_ARG(step_tokens >= micro_tokens, where, "step_tokens", std::to_string(step_tokens),
                       "the step's label tokens, at least micro_tokens = " + std::to_string(micro_tokens));
        return step_tokens == 0 ? 0.0 : 1.0 / static_cast<double>(step_tokens);
    }

    /// Records one micro-batch (summed token loss, label tokens); true when it completes a step,
    /// after which step_loss() and step_tokens() describe that step.
    bool add(double loss_sum, std::int64_t tokens) {
        MMCA_CHECK_ARG(tokens >= 0, "mmca::train::grad_accumulation::add", "tokens", std::to_string(tokens),
                       "a count >= 0");
        if (averaging_ == loss_averaging::micro_batch_mean)
            acc_loss_ += tokens == 0 ? 0.0 : loss_sum / static_cast<double>(tokens);
        else
            acc_loss_ += loss_sum;
        acc_tokens_ += tokens;
        if (++micro_ < per_step_) return false;
        if (averaging_ == loss_averaging::micro_batch_mean)
            step_loss_ = acc_loss_ / static_cast<double>(per_step_);
        else
            step_loss_ = acc_tokens_ == 0 ? 0.0 : acc_loss_ / static_cast<double>(acc_tokens_);
        step_tokens_ = acc_tokens_;
        micro_ = 0;
        acc_loss_ = 0.0;
        acc_tokens_ = 0;
        return true;
    }

    /// Micro-batches recorded in the step under way (0 at a step boundary).
    std::int64_t micro_batch() const { return micro_; }
    std::int64_t micro_batches_per_step() const { return per_step_; }
    loss_averaging averaging() const { return averaging_; }
    /// The loss of the last completed step (0 before the first).
    double step_loss() const { return step_loss_; }
    /// The label tokens of the last completed step.
    std::int64_t step_tokens() const { return step_tokens_; }

private:
    std::int64_t per_step_;
    loss_averaging averaging_;
    std::int64_t micro_ = 0;
    double acc_loss_ = 0.0;
    std::int64_t acc_tokens_ = 0;
    double step_loss_ = 0.0;
    std::int64_t step_tokens_ = 0;
};

}  // namespace mmca::train
