// mmca/attention/attention_backward.hpp - gradients of attention for training (float32).
//
//   mmca::attention_forward_with_stats(q, k, v, tokens, options, out, stats)   (attention.hpp)
//   mmca::attention_backward(q, k, v, dout, tokens, options, stats, dq, dk, dv, impl)
//   mmca::attention_with_stats(q, k, v, tokens, options)        owning forward: out and its stats
//   mmca::attention_backward(q, k, v, dout, tokens, options, stats, impl)   owning: {dq, dk, dv}
//
// The backward gives the gradients of L = Σ dout ⊙ out with respect to q (B, Hq, Lq, D) and k, v
// (B, Hkv, Lk, D), for the same token layout and options as the forward. The fused implementation
// recomputes each group's probabilities from the stats of attention_forward_with_stats (row max and
// sum per group) and takes rowsum(dO ⊙ O_g) from its per-group outputs; the reference one ignores
// the stats and works from explicit masks in double precision. A uniform-average group (the
// reference code's degenerate rows of mmca_reference) sends gradient to V only: its weights do not
// depend on the scores. Grouped-query kv heads sum the gradients of all their query heads.
#pragma once

#include "mmca/attention/attention.hpp"
#include "mmca/attention/problem.hpp"
#include "mmca/attention/reference_backward.hpp"
#include "mmca/attention/stats.hpp"
#include "mmca/attention/types.hpp"
#include "mmca/backend/cpu/attention_backward.hpp"
#include "mmca/core/error.hpp"
#include "mmca/core/tensor.hpp"

#include <array>
#include <cstddef>
#include <cstdint>
#include <limits>

namespace mmca {

/// Computes dq (q's shape), dk and dv (k's shape) of attention for the upstream gradient dout
/// (q's shape). impl = fused needs the stats written by attention_forward_with_stats for the same
/// q, k, v, tokens and options; impl = reference ignores them. Throws mmca::invalid_argument
/// (naming the argument, the value seen and what was expected) before writing anything.
inline void attention_backward(tensor_ref<const float, 4> q, tensor_ref<const float, 4> k,
                               tensor_ref<const float, 4> v, tensor_ref<const float, 4> dout,
                               const token_layout& tokens, const attention_options& options,
                               const attention_stats_view& stats, tensor_ref<float, 4> dq, tensor_ref<float, 4> dk,
                               tensor_ref<float, 4> dv, attention_impl impl = attention_impl::fused) {
    constexpr const char* where = "mmca::attention_backward";
    MMCA_CHECK_ARG(!dq.empty(), where, "dq", "no tensor", "a (B, Hq, Lq, D) float32 tensor");
    const attention_problem p = make_attention_problem(where, q, k, v, tokens, options, dq);
    MMCA_CHECK_ARG(!dout.empty(), where, "dout", "no tensor", "a (B, Hq, Lq, D) float32 tensor");
    MMCA_CHECK_ARG(dout.shape == q.shape && dout.inner_contiguous(), where, "dout", dout.shape_text(),
                   "the shape of q " + q.shape_text() + " with a contiguous last dimension");
    for (const auto& [name, grad] : {std::pair<const char*, const tensor_ref<float, 4>&>{"dk", dk}, {"dv", dv}}) {
        MMCA_CHECK_ARG(!grad.empty(), where, name, "no tensor", "a (B, Hkv, Lk, D) float32 tensor");
        MMCA_CHECK_ARG(grad.shape == k.shape && grad.inner_contiguous(), where, name, grad.shape_text(),
                       "the shape of k " + k.shape_text() + " with a contiguous last dimension");
    }
    if (impl == attention_impl::reference) {
        attention_reference_backward(p, q, k, v, dout, dq, dk, dv);
        return;
    }
    check_attention_stats(where, p, stats);
    cpu::attention_fused_backward(p, q, k, v, dout, stats, dq, dk, dv, options.num_threads, {}, where);
}

/// The output of a forward call together with what its backward needs.
struct attention_forward_result {
    tensor<float, 4> out;        ///< (B, Hq, Lq, D)
    tensor<float, 4> row_max;    ///< (B, Hq, Lq, 2)
    tensor<float, 4> row_sum;    ///< (B, Hq, Lq, 2)
    tensor<float, 5> group_out;  ///< (B, Hq, Lq, 2, D)

    attention_stats_view stats() const {
        return attention_stats_view(tensor_ref<const float, 4>(row_max.data(), dims4(row_max.shape())),
                                    tensor_ref<const float, 4>(row_sum.data(), dims4(row_sum.shape())),
                                    tensor_ref<const float, 5>(group_out.data(), dims5(group_out.shape())));
    }

private:
    template <class S>
    static std::array<std::int64_t, 4> dims4(const S& s) {
        return {static_cast<std::int64_t>(s[0]), static_cast<std::int64_t>(s[1]), static_cast<std::int64_t>(s[2]),
                static_cast<std::int64_t>(s[3])};
    }
    template <class S>
    static std::array<std::int64_t, 5> dims5(const S& s) {
        return {static_cast<std::int64_t>(s[0]), static_cast<std::int64_t>(s[1]), static_cast<std::int64_t>(s[2]),
                static_cast<std::int64_t>(s[3]), static_cast<std::int64_t>(s[4])};
    }
};

/// The gradients of one backward call.
struct attention_gradients {
    tensor<float, 4> dq;  ///< (B, Hq, Lq, D)
    tensor<float, 4> dk;  ///< (B, Hkv, Lk, D)
    tensor<float, 4> dv;  ///< (B, Hkv, Lk, D)
};

/// attention_forward_with_stats into new tensors (float32 K/V).
inline attention_forward_result attention_with_stats(tensor_ref<const float, 4> q, tensor_ref<const float, 4> k,
                                                     tensor_ref<const float, 4> v, const token_layout& tokens,
                                                     const attention_options& options) {
    MMCA_CHECK_ARG(!q.empty(), "mmca::attention_with_stats", "q", "no tensor", "a (B, Hq, Lq, D) float32 tensor");
    const auto B = static_cast<std::size_t>(q.shape[0]), H = static_cast<std::size_t>(q.shape[1]),
               L = static_cast<std::size_t>(q.shape[2]), D = static_cast<std::size_t>(q.shape[3]);
    attention_forward_result r;
    r.out = tensor<float, 4>(std::array<std::size_t, 4>{B, H, L, D});
    r.row_max = tensor<float, 4>(std::array<std::size_t, 4>{B, H, L, 2});
    r.row_sum = tensor<float, 4>(std::array<std::size_t, 4>{B, H, L, 2});
    r.group_out = tensor<float, 5>(std::array<std::size_t, 5>{B, H, L, 2, D});
    const std::array<std::int64_t, 4> rows{q.shape[0], q.shape[1], q.shape[2], 2};
    const attention_stats stats(tensor_ref<float, 4>(r.row_max.data(), rows), tensor_ref<float, 4>(r.row_sum.data(), rows),
                                tensor_ref<float, 5>(r.group_out.data(), {q.shape[0], q.shape[1], q.shape[2], 2, q.shape[3]}));
    attention_forward_with_stats<float>(q, k, v, tokens, options, tensor_ref<float, 4>(r.out), stats);
    return r;
}

/// attention_backward into new tensors.
inline attention_gradients attention_backward(tensor_ref<const float, 4> q, tensor_ref<const float, 4> k,
                                              tensor_ref<const float, 4> v, tensor_ref<const float, 4> dout,
                                              const token_layout& tokens, const attention_options& options,
                                              const attention_stats_view& stats,
                                              attention_impl impl = attention_impl::fused) {
    MMCA_CHECK_ARG(!q.empty(), "mmca::attention_backward", "q", "no tensor", "a (B, Hq, Lq, D) float32 tensor");
    MMCA_CHECK_ARG(!k.empty(), "mmca::attention_backward", "k", "no tensor", "a (B, Hkv, Lk, D) float32 tensor");
    auto shape_of = [](const std::array<std::int64_t, 4>& s) {
        return std::array<std::size_t, 4>{static_cast<std::size_t>(s[0]), static_cast<std::size_t>(s[1]),
                                          static_cast<std::size_t>(s[2]), static_cast<std::size_t>(s[3])};
    };
    attention_gradients g;
    g.dq = tensor<float, 4>(shape_of(q.shape));
    g.dk = tensor<float, 4>(shape_of(k.shape));
    g.dv = tensor<float, 4>(shape_of(k.shape));
    attention_backward(q, k, v, dout, tokens, options, stats, tensor_ref<float, 4>(g.dq), tensor_ref<float, 4>(g.dk),
                       tensor_ref<float, 4>(g.dv), impl);
    return g;
}

}  // namespace mmca
