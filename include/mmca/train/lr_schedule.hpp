// mmca/train/lr_schedule.hpp - linear warm-up then cosine decay of the learning rate.
//
// The reference trains with transformers' get_scheduler("cosine"), i.e.
// get_cosine_schedule_with_warmup (transformers 4.33.3), a LambdaLR whose factor at step s is
//   s < W:  s / max(1, W)
//   else:   max(0, 0.5 · (1 + cos(π · cycles · 2 · progress))),  progress = (s − W) / max(1, T − W)
// and whose learning rate is base_lr · factor. Here s is the number of optimizer updates already
// taken (LambdaLR starts at s = 0, so with W > 0 the first update uses lr 0), W the warm-up steps
// and T the total number of updates; cycles = 0.5 is one half cosine from base_lr to 0. Past T the
// formula is kept as is (the cosine rises again), like transformers.
//
// min_lr generalises the decay: the cosine phase gives min_lr + (base_lr − min_lr) · factor,
// which is transformers' value exactly (bit for bit) when min_lr = 0, the default.
#pragma once

#include "mmca/core/error.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>

namespace mmca::train {

struct cosine_schedule {
    double base_lr = 1e-3;
    std::int64_t warmup_steps = 0;  // W
    std::int64_t total_steps = 1;   // T
    double min_lr = 0.0;            // the floor of the cosine phase
    double num_cycles = 0.5;        // cosine periods over [W, T]; 0.5 decays once to min_lr

    /// Throws mmca::invalid_argument naming the first bad field.
    void validate(const char* where = "mmca::train::cosine_schedule") const {
        MMCA_CHECK_ARG(std::isfinite(base_lr) && base_lr >= 0.0, where, "base_lr", mmca::detail::to_text(base_lr),
                       "a finite value >= 0");
        MMCA_CHECK_ARG(warmup_steps >= 0, where, "warmup_steps", std::to_string(warmup_steps), "a count >= 0");
        MMCA_CHECK_ARG(total_steps >= 0, where, "total_steps", std::to_string(total_steps), "a count >= 0");
        MMCA_CHECK_ARG(std::isfinite(min_lr) && min_lr >= 0.0 && min_lr <= base_lr, where, "min_lr",
                       mmca::detail::to_text(min_lr), "a value in [0, base_lr = " + mmca::detail::to_text(base_lr) + "]");
        MMCA_CHECK_ARG(std::isfinite(num_cycles) && num_cycles >= 0.0, where, "num_cycles", mmca::detail::to_text(num_cycles),
                       "a finite value >= 0");
    }

    /// The multiplier of base_lr at step `step` (transformers' lr_lambda).
    double factor(std::int64_t step) const {
        MMCA_CHECK_ARG(step >= 0, "mmca::train::cosine_schedule", "step", std::to_string(step), "a step >= 0");
        if (step < warmup_steps)
            return static_cast<double>(step) / static_cast<double>(std::max<std::int64_t>(1, warmup_steps));
        const double progress = static_cast<double>(step - warmup_steps) /
                                static_cast<double>(std::max<std::int64_t>(1, total_steps - warmup_steps));
        const double pi = 3.141592653589793;  // math.pi
        return std::max(0.0, 0.5 * (1.0 + std::cos(pi * num_cycles * 2.0 * progress)));
    }

    /// The learning rate of the update taken when `step` updates have been taken already.
    double lr(std::int64_t step) const {
        const double f = factor(step);
        if (step < warmup_steps) return base_lr * f;
        return min_lr + (base_lr - min_lr) * f;
    }
    double operator()(std::int64_t step) const { return lr(step); }
};

/// Warm-up steps for a fraction of the run (e.g. 0.1 for the paper's 10%): ⌈ratio · total_steps⌉,
/// computed in double as transformers' TrainingArguments.get_warmup_steps (4.33.3) does.
inline std::int64_t warmup_steps_from_ratio(double ratio, std::int64_t total_steps) {
    MMCA_CHECK_ARG(std::isfinite(ratio) && ratio >= 0.0 && ratio <= 1.0, "mmca::train::warmup_steps_from_ratio", "ratio",
                   mmca::detail::to_text(ratio), "a fraction in [0, 1]");
    MMCA_CHECK_ARG(total_steps >= 0, "mmca::train::warmup_steps_from_ratio", "total_steps", std::to_string(total_steps),
                   "a count >= 0");
    return static_cast<std::int64_t>(std::ceil(static_cast<double>(total_steps) * ratio));
}

}  // namespace mmca::train
