// mmca/train/adamw.hpp - AdamW with decoupled weight decay, as torch.optim.AdamW (amsgrad off).
//
// For step t = 1, 2, ... (the count after this update), each element of each parameter:
//   p ← p · (1 − lr·wd)                         decoupled weight decay, before the Adam update
//   m ← β1·m + (1 − β1)·g
//   v ← β2·v + (1 − β2)·g·g
//   p ← p − (lr / (1 − β1^t)) · m / (√v / √(1 − β2^t) + eps)
// The scalars (1 − lr·wd, 1 − β1, lr / (1 − β1^t), √(1 − β2^t), ...) are computed in double and
// rounded to float once, as torch does when its Python floats meet float32 tensors; the element
// arithmetic is float32 in the order written above. States m (exp_avg) and v (exp_avg_sq) are
// float32, one pair per parameter, zero at the start.
//
// Defaults follow the reference's training (SPEC §8): β = (0.9, 0.95), weight decay 0, lr 1e-3.
// Work is split over threads in the registry's fixed chunks: results do not depend on num_threads.
#pragma once

#include "mmca/core/error.hpp"
#include "mmca/core/threading.hpp"
#include "mmca/train/parameters.hpp"

#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

namespace mmca::train {

struct adamw_options {
    double lr = 1e-3;            // used by step() without an explicit lr
    double beta1 = 0.9;          // decay of the first moment
    double beta2 = 0.95;         // decay of the second moment
    double eps = 1e-8;           // added to √v̂
    double weight_decay = 0.0;   // decoupled: p ← p·(1 − lr·wd)

    /// Throws mmca::invalid_argument naming the first bad field.
    void validate(const char* where) const {
        MMCA_CHECK_ARG(std::isfinite(lr) && lr >= 0.0, where, "lr", mmca::detail::to_text(lr), "a finite value >= 0");
        MMCA_CHECK_ARG(beta1 >= 0.0 && beta1 < 1.0, where, "beta1", mmca::detail::to_text(beta1), "a value in [0, 1)");
        MMCA_CHECK_ARG(beta2 >= 0.0 && beta2 < 1.0, where, "beta2", mmca::detail::to_text(beta2), "a value in [0, 1)");
        MMCA_CHECK_ARG(std::isfinite(eps) && eps >= 0.0, where, "eps", mmca::detail::to_text(eps), "a finite value >= 0");
        MMCA_CHECK_ARG(std::isfinite(weight_decay) && weight_decay >= 0.0, where, "weight_decay",
                       mmca::detail::to_text(weight_decay), "a finite value >= 0");
    }
};

/// The float32 coefficients of one AdamW update (see the file comment).
struct adamw_coefficients {
    float decay;            // 1 − lr·wd (1 for tensors without weight decay)
    float beta1, one_minus_beta1;
    float beta2, one_minus_beta2;
    float bias_correction2_sqrt;  // √(1 − β2^t)
    float eps;
    float neg_step_size;          // −lr / (1 − β1^t)

    static adamw_coefficients make(const adamw_options& o, double lr, std::int64_t t, bool decay) {
        adamw_coefficients c;
        c.decay = decay ? static_cast<float>(1.0 - lr * o.weight_decay) : 1.0f;
        c.beta1 = static_cast<float>(o.beta1);
        c.one_minus_beta1 = static_cast<float>(1.0 - o.beta1);
        c.beta2 = static_cast<float>(o.beta2);
        c.one_minus_beta2 = static_cast<float>(1.0 - o.beta2);
        const double step = static_cast<double>(t);
        c.bias_correction2_sqrt = static_cast<float>(std::sqrt(1.0 - std::pow(o.beta2, step)));
        c.eps = static_cast<float>(o.eps);
        c.neg_step_size = static_cast<float>(-(lr / (1.0 - std::pow(o.beta1, step))));
        return c;
    }
};

/// One AdamW update of elements [0, n) (the reference loop; every other path calls it).
inline void adamw_update(float* p, const float* g, float* m, float* v, std::int64_t n, const adamw_coefficients& c) {
    for (std::int64_t i = 0; i < n; ++i) {
        const float gi = g[i];
        const float pi = p[i] * c.decay;
        const float mi = m[i] * c.beta1 + c.one_minus_beta1 * gi;
        const float vi = v[i] * c.beta2 + c.one_minus_beta2 * gi * gi;
        const float denom = std::sqrt(vi) / c.bias_correction2_sqrt + c.eps;
        m[i] = mi;
        v[i] = vi;
        p[i] = pi + c.neg_step_size * (mi / denom);
    }
}

/// AdamW over the parameters of a registry, which must outlive the optimizer, stay where it is (not
/// be moved from) and not gain parameters after the optimizer's construction.
class adamw {
public:
    adamw(parameter_registry& params, const adamw_options& options = {}, int num_threads = 0)
        : params_(&params), options_(options), num_threads_(num_threads) {
        options_.validate("mmca::train::adamw");
        MMCA_CHECK_ARG(num_threads >= 0, "mmca::train::adamw", "num_threads", std::to_string(num_threads),
                       "a number of threads >= 1, or 0 for the default");
        std::vector<std::int64_t> sizes;
        for (const parameter& p : params) {
            sizes.push_back(p.numel);
            exp_avg_.emplace_back(static_cast<std::size_t>(p.numel), 0.0f);
            exp_avg_sq_.emplace_back(static_cast<std::size_t>(p.numel), 0.0f);
        }
        chunks_ = make_chunks(sizes);
    }

    /// One update with the options' learning rate.
    void step() { step(options_.lr); }

    /// One update with learning rate `lr` (from a schedule); increments step_count().
    void step(double lr) {
        const char* where = "mmca::train::adamw::step";
        MMCA_CHECK_ARG(std::isfinite(lr) && lr >= 0.0, where, "lr", mmca::detail::to_text(lr), "a finite value >= 0");
        check_registry(where);
        const std::vector<float_span> g = params_->grads(where);
        const std::int64_t t = step_ + 1;
        std::vector<adamw_coefficients> coef;
        for (const parameter& p : *params_) coef.push_back(adamw_coefficients::make(options_, lr, t, p.weight_decay));
        parallel_for(static_cast<std::int64_t>(chunks_.size()), num_threads_, [&](std::int64_t ci, int) {
            const chunk& k = chunks_[static_cast<std::size_t>(ci)];
            parameter& p = (*params_)[k.index];
            adamw_update(p.value + k.begin, g[k.index].data + k.begin, exp_avg_[k.index].data() + k.begin,
                         exp_avg_sq_[k.index].data() + k.begin, k.end - k.begin, coef[k.index]);
        });
        step_ = t;
    }

    /// Updates taken so far (t of the last update).
    std::int64_t step_count() const { return step_; }
    /// Sets the update count (a resumed run); the next update uses t = count + 1.
    void set_step_count(std::int64_t count) {
        MMCA_CHECK_ARG(count >= 0, "mmca::train::adamw::set_step_count", "count", std::to_string(count), "a count >= 0");
        step_ = count;
    }

    const adamw_options& options() const { return options_; }
    void set_lr(double lr) {
        MMCA_CHECK_ARG(std::isfinite(lr) && lr >= 0.0, "mmca::train::adamw::set_lr", "lr", mmca::detail::to_text(lr),
                       "a finite value >= 0");
        options_.lr = lr;
    }
    int num_threads() const { return num_threads_; }
    parameter_registry& parameters() { return *params_; }
    const parameter_registry& parameters() const { return *params_; }

    /// First and second moments of parameter i ((numel) floats each, registration order).
    float* exp_avg(std::size_t i) { return exp_avg_.at(i).data(); }
    const float* exp_avg(std::size_t i) const { return exp_avg_.at(i).data(); }
    float* exp_avg_sq(std::size_t i) { return exp_avg_sq_.at(i).data(); }
    const float* exp_avg_sq(std::size_t i) const { return exp_avg_sq_.at(i).data(); }

    /// Throws when the registry changed since construction.
    void check_registry(const char* where) const {
        MMCA_CHECK_ARG(params_->size() == exp_avg_.size(), where, "parameters",
                       std::to_string(params_->size()) + " parameters",
                       std::to_string(exp_avg_.size()) + " (the registry at the optimizer's construction)");
        for (std::size_t i = 0; i < exp_avg_.size(); ++i)
            MMCA_CHECK_ARG(static_cast<std::size_t>((*params_)[i].numel) == exp_avg_[i].size(), where, "parameters",
                           "parameter '" + (*params_)[i].name + "' of " + std::to_string((*params_)[i].numel) + " elements",
                           std::to_string(exp_avg_[i].size()) + " elements (its size at the optimizer's construction)");
    }

private:
    parameter_registry* params_;
    adamw_options options_;
    int num_threads_;
    std::vector<std::vector<float>> exp_avg_, exp_avg_sq_;
    std::vector<chunk> chunks_;
    std::int64_t step_ = 0;
};

}  // namespace mmca::train
