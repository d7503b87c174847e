// mmca/train/parameters.hpp - the trainable tensors of a model: named float32 values and gradients.
//
//   mmca::train::parameter_registry params;
//   params.add_view("projection.0.weight", {h, v}, proj.weight_data());   // model-owned value,
//                                                                          // gradient owned here
//   params.add("lang_embed.delta", {n, h});                                // owned value and gradient
//   ...backward accumulates into params[i].grad...
//   double norm = params.clip_grad_norm(1.0);    // PyTorch clip_grad_norm_ semantics
//   optimizer.step(lr);
//   params.zero_grad();
//
// Determinism: every element-wise pass is split into fixed chunks of chunk_elements elements
// (parameter by parameter, in registration order) that do not depend on the thread count, and the
// gradient norm is a sum of squares in double accumulated serially inside each chunk, then over
// chunks in order. Results are therefore bitwise the same for any number of threads.
#pragma once

#include "mmca/core/error.hpp"
#include "mmca/core/threading.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <deque>
#include <map>
#include <string>
#include <vector>

namespace mmca::train {

/// Elements per work item of the element-wise passes (64 KiB of float32).
inline constexpr std::int64_t chunk_elements = std::int64_t(1) << 14;

/// One trainable tensor.
struct parameter {
    std::string name;
    std::vector<std::int64_t> shape;  // row-major; {} is a scalar
    std::int64_t numel = 0;           // product of shape
    float* value = nullptr;           // (numel) the weights
    float* grad = nullptr;            // (numel) d loss / d value, accumulated by backward passes
    bool weight_decay = true;         // whether AdamW decays this tensor (biases and norms often do not)
};

/// A contiguous run of floats (a gradient, a parameter).
struct float_span {
    float* data = nullptr;
    std::int64_t size = 0;  // elements
};

/// One work item of the element-wise passes: elements [begin, end) of tensor `index`.
struct chunk {
    std::size_t index;
    std::int64_t begin, end;
};

/// The chunks of tensors of the given sizes, in order (see the file comment).
inline std::vector<chunk> make_chunks(const std::vector<std::int64_t>& sizes) {
    std::vector<chunk> out;
    for (std::size_t i = 0; i < sizes.size(); ++i)
        for (std::int64_t b = 0; b < sizes[i]; b += chunk_elements)
            out.push_back(chunk{i, b, std::min(sizes[i], b + chunk_elements)});
    return out;
}

/// The global L2 norm of the tensors `grads`, √(Σ g²), accumulated in double (deterministic for
/// any num_threads; 0 uses mmca::default_num_threads()).
inline double global_grad_norm(const std::vector<float_span>& grads, int num_threads = 0) {
    std::vector<std::int64_t> sizes;
    for (const float_span& g : grads) {
        MMCA_CHECK_ARG(g.data != nullptr || g.size == 0, "mmca::train::global_grad_norm", "grads",
                       "a null gradient of " + std::to_string(g.size) + " elements", "gradient buffers");
        sizes.push_back(g.size);
    }
    const std::vector<chunk> chunks = make_chunks(sizes);
    std::vector<double> partial(chunks.size(), 0.0);
    parallel_for(static_cast<std::int64_t>(chunks.size()), num_threads, [&](std::int64_t c, int) {
        const chunk& k = chunks[static_cast<std::size_t>(c)];
        const float* g = grads[k.index].data;
        double s = 0.0;
        for (std::int64_t i = k.begin; i < k.end; ++i) s += static_cast<double>(g[i]) * static_cast<double>(g[i]);
        partial[static_cast<std::size_t>(c)] = s;
    });
    double total = 0.0;
    for (double s : partial) total += s;
    return std::sqrt(total);
}

/// Scales every gradient by `factor` in place (fixed chunks; any num_threads gives the same bits).
inline void scale_gradients(const std::vector<float_span>& grads, float factor, int num_threads = 0) {
    std::vector<std::int64_t> sizes;
    for (const float_span& g : grads) sizes.push_back(g.size);
    const std::vector<chunk> chunks = make_chunks(sizes);
    parallel_for(static_cast<std::int64_t>(chunks.size()), num_threads, [&](std::int64_t c, int) {
        const chunk& k = chunks[static_cast<std::size_t>(c)];
        float* g = grads[k.index].data;
        for (std::int64_t i = k.begin; i < k.end; ++i) g[i] *= factor;
    });
}

/// Clips gradients by their global L2 norm as torch.nn.utils.clip_grad_norm_ does: with
/// norm = global_grad_norm(grads), scale = max_norm / (norm + 1e-6), and the gradients are
/// multiplied by (float)scale when scale < 1. Returns the norm before clipping. A non-finite norm
/// leaves the gradients unchanged (torch would multiply them by NaN); callers test it with
/// std::isfinite and skip the step.
inline double clip_grad_norm(const std::vector<float_span>& grads, double max_norm, int num_threads = 0) {
    MMCA_CHECK_ARG(std::isfinite(max_norm) && max_norm > 0.0, "mmca::train::clip_grad_norm", "max_norm",
                   mmca::detail::to_text(max_norm), "a finite value > 0");
    const double norm = global_grad_norm(grads, num_threads);
    const double scale = max_norm / (norm + 1e-6);
    if (std::isfinite(norm) && scale < 1.0) scale_gradients(grads, static_cast<float>(scale), num_threads);
    return norm;
}

/// The trainable tensors of a model, by name, in registration order (the order of every pass and
/// of checkpoints). Buffers are either owned by the registry or viewed (model-owned); parameters
/// never move once added, so references and pointers to them stay valid.
class parameter_registry {
public:
    parameter_registry() = default;
    parameter_registry(const parameter_registry&) = delete;
    parameter_registry& operator=(const parameter_registry&) = delete;
    parameter_registry(parameter_registry&&) = default;
    parameter_registry& operator=(parameter_registry&&) = default;

    /// A parameter whose value and gradient the registry owns: value copied from `init`
    /// (numel floats) when given, zero otherwise; gradient zero.
    parameter& add(const std::string& name, const std::vector<std::int64_t>& shape, const float* init = nullptr) {
        const std::int64_t n = checked_numel("mmca::train::parameter_registry::add", name, shape);
        std::vector<float>& value = storage_.emplace_back(static_cast<std::size_t>(n), 0.0f);
        if (init && n) std::memcpy(value.data(), init, static_cast<std::size_t>(n) * sizeof(float));
        std::vector<float>& grad = storage_.emplace_back(static_cast<std::size_t>(n), 0.0f);
        return push(name, shape, n, value.data(), grad.data());
    }

    /// A parameter viewing model-owned buffers `value` and `grad` (numel floats each; the model
    /// keeps them alive and in place). `grad` may be null when the caller sets parameter::grad
    /// before any pass that reads gradients (those passes refuse a null gradient).
    parameter& add_view(const std::string& name, const std::vector<std::int64_t>& shape, float* value, float* grad) {
        const char* where = "mmca::train::parameter_registry::add_view";
        const std::int64_t n = checked_numel(where, name, shape);
        MMCA_CHECK_ARG(value != nullptr || n == 0, where, "value", "a null pointer for parameter '" + name + "'",
                       "the parameter's buffer of " + std::to_string(n) + " floats");
        MMCA_CHECK_ARG(grad == nullptr || n == 0 || grad + n <= value || value + n <= grad, where, "grad",
                       "a buffer overlapping the value of parameter '" + name + "'",
                       "a gradient buffer separate from the value");
        return push(name, shape, n, value, grad);
    }

    /// A parameter viewing the model-owned `value`, with a gradient owned by the registry (zero).
    parameter& add_view_with_own_grad(const std::string& name, const std::vector<std::int64_t>& shape, float* value) {
        const std::int64_t n = checked_numel("mmca::train::parameter_registry::add_view_with_own_grad", name, shape);
        MMCA_CHECK_ARG(value != nullptr || n == 0, "mmca::train::parameter_registry::add_view_with_own_grad", "value",
                       "a null pointer for parameter '" + name + "'",
                       "the parameter's buffer of " + std::to_string(n) + " floats");
        std::vector<float>& grad = storage_.emplace_back(static_cast<std::size_t>(n), 0.0f);
        return push(name, shape, n, value, grad.data());
    }

    std::size_t size() const { return params_.size(); }
    bool empty() const { return params_.empty(); }
    parameter& operator[](std::size_t i) { return params_[i]; }
    const parameter& operator[](std::size_t i) const { return params_[i]; }
    auto begin() { return params_.begin(); }
    auto end() { return params_.end(); }
    auto begin() const { return params_.begin(); }
    auto end() const { return params_.end(); }

    /// The parameter called `name`, or nullptr.
    parameter* find(const std::string& name) {
        auto it = index_.find(name);
        return it == index_.end() ? nullptr : &params_[it->second];
    }
    const parameter* find(const std::string& name) const {
        auto it = index_.find(name);
        return it == index_.end() ? nullptr : &params_[it->second];
    }
    /// The parameter called `name`; throws mmca::invalid_argument when there is none.
    parameter& get(const std::string& name) {
        parameter* p = find(name);
        MMCA_CHECK_ARG(p != nullptr, "mmca::train::parameter_registry::get", "name", "'" + name + "'",
                       "the name of one of the " + std::to_string(size()) + " registered parameters");
        return *p;
    }

    /// Elements over all parameters.
    std::int64_t numel() const {
        std::int64_t n = 0;
        for (const parameter& p : params_) n += p.numel;
        return n;
    }

    /// The gradients, in registration order (throws when one is null).
    std::vector<float_span> grads(const char* where = "mmca::train::parameter_registry") const {
        std::vector<float_span> out;
        for (const parameter& p : params_) {
            MMCA_CHECK_ARG(p.grad != nullptr || p.numel == 0, where, "parameters",
                           "parameter '" + p.name + "' without a gradient buffer", "parameter::grad set");
            out.push_back(float_span{p.grad, p.numel});
        }
        return out;
    }

    /// Sets every gradient to zero.
    void zero_grad(int num_threads = 0) {
        const std::vector<float_span> g = grads("mmca::train::parameter_registry::zero_grad");
        std::vector<std::int64_t> sizes;
        for (const float_span& s : g) sizes.push_back(s.size);
        const std::vector<chunk> chunks = make_chunks(sizes);
        parallel_for(static_cast<std::int64_t>(chunks.size()), num_threads, [&](std::int64_t c, int) {
            const chunk& k = chunks[static_cast<std::size_t>(c)];
            std::memset(g[k.index].data + k.begin, 0, static_cast<std::size_t>(k.end - k.begin) * sizeof(float));
        });
    }

    /// The global L2 norm of all gradients (see global_grad_norm).
    double grad_norm(int num_threads = 0) const {
        return global_grad_norm(grads("mmca::train::parameter_registry::grad_norm"), num_threads);
    }

    /// Clips all gradients by their global norm (see clip_grad_norm); returns the norm before clipping.
    double clip_grad_norm(double max_norm, int num_threads = 0) {
        return train::clip_grad_norm(grads("mmca::train::parameter_registry::clip_grad_norm"), max_norm, num_threads);
    }

private:
    std::int64_t checked_numel(const char* where, const std::string& name, const std::vector<std::int64_t>& shape) const {
        MMCA_CHECK_ARG(!name.empty(), where, "name", "''", "a non-empty parameter name");
        MMCA_CHECK_ARG(index_.find(name) == index_.end(), where, "name", "'" + name + "', which is already registered",
                       "unique parameter names");
        std::int64_t n = 1;
        for (std::int64_t d : shape) {
            MMCA_CHECK_ARG(d >= 0, where, "shape", mmca::detail::shape_text(shape) + " for parameter '" + name + "'",
                           "non-negative dimensions");
            MMCA_CHECK_ARG(!__builtin_mul_overflow(n, d, &n), where, "shape",
                           mmca::detail::shape_text(shape) + " for parameter '" + name + "'", "an element count that fits int64");
        }
        return n;
    }

    parameter& push(const std::string& name, const std::vector<std::int64_t>& shape, std::int64_t n, float* value,
                    float* grad) {
        index_[name] = params_.size();
        parameter& p = params_.emplace_back();
        p.name = name;
        p.shape = shape;
        p.numel = n;
        p.value = value;
        p.grad = grad;
        return p;
    }

    std::deque<parameter> params_;
    std::deque<std::vector<float>> storage_;  // owned values and gradients
    std::map<std::string, std::size_t> index_;
};

}  // namespace mmca::train
