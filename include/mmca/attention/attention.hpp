// mmca/attention/attention.hpp - the public attention entry points.
//
//   mmca::attention_forward(q, k, v, tokens, options, out, impl)   writes into out (no allocation)
//   mmca::attention(q, k, v, tokens, options, impl)                returns a new (B, Hq, Lq, D) tensor
//   mmca::attention_forward_with_stats(q, k, v, tokens, options, out, stats)
//                                                                  also keeps what the backward needs
//
// q is float32 (B, Hq, Lq, D); k and v are (B, Hkv, Lk, D) in float32, float16 or bfloat16 storage;
// compute is float32 (the reference implementation accumulates in double).
#pragma once

#include "mmca/attention/problem.hpp"
#include "mmca/attention/reference.hpp"
#include "mmca/attention/stats.hpp"
#include "mmca/attention/types.hpp"
#include "mmca/backend/cpu/attention_fused.hpp"
#include "mmca/core/tensor.hpp"

#include <cstddef>
#include <type_traits>

namespace mmca {

/// Computes attention of the variant in `options` into out (q's shape). Throws mmca::invalid_argument
/// (naming the argument, the value seen and what was expected) before writing anything.
template <class KV>
void attention_forward(tensor_ref<const float, 4> q, tensor_ref<const KV, 4> k, tensor_ref<const KV, 4> v,
                       const token_layout& tokens, const attention_options& options, tensor_ref<float, 4> out,
                       attention_impl impl = attention_impl::fused) {
    static_assert(is_storage_type_v<KV>, "mmca::attention_forward: K/V storage must be float, float16 or bfloat16");
    MMCA_CHECK_ARG(!out.empty(), "mmca::attention_forward", "out", "no tensor", "a (B, Hq, Lq, D) float32 tensor");
    const attention_problem p = make_attention_problem("mmca::attention_forward", q, k, v, tokens, options, out);
    if (impl == attention_impl::reference)
        attention_reference_forward(p, q, k, v, out, options.num_threads);
    else
        cpu::attention_fused_forward(p, q, k, v, out, options.num_threads);
}

/// attention_forward with the fused kernel that also writes, per query row and key group, the
/// softmax statistics and group outputs the backward needs (mmca/attention/stats.hpp): row_max and
/// row_sum (B, Hq, Lq, 2), group_out (B, Hq, Lq, 2, D). Without stats, use attention_forward.
template <class KV>
void attention_forward_with_stats(tensor_ref<const float, 4> q, tensor_ref<const KV, 4> k, tensor_ref<const KV, 4> v,
                                  const token_layout& tokens, const attention_options& options,
                                  tensor_ref<float, 4> out, const attention_stats& stats) {
    static_assert(is_storage_type_v<KV>,
                  "mmca::attention_forward_with_stats: K/V storage must be float, float16 or bfloat16");
    constexpr const char* where = "mmca::attention_forward_with_stats";
    MMCA_CHECK_ARG(!out.empty(), where, "out", "no tensor", "a (B, Hq, Lq, D) float32 tensor");
    const attention_problem p = make_attention_problem(where, q, k, v, tokens, options, out);
    check_attention_stats(where, p, stats);
    cpu::attention_fused_forward(p, q, k, v, out, options.num_threads, cpu::fused_attention_config{}, &stats);
}

/// Same as attention_forward, returning a new float32 tensor of q's shape.
template <class KV>
tensor<float, 4> attention(tensor_ref<const float, 4> q, tensor_ref<const KV, 4> k, tensor_ref<const KV, 4> v,
                           const token_layout& tokens, const attention_options& options,
                           attention_impl impl = attention_impl::fused) {
    MMCA_CHECK_ARG(!q.empty(), "mmca::attention", "q", "no tensor", "a (B, Hq, Lq, D) float32 tensor");
    tensor<float, 4> out(std::array<std::size_t, 4>{static_cast<std::size_t>(q.shape[0]), static_cast<std::size_t>(q.shape[1]),
                                                    static_cast<std::size_t>(q.shape[2]), static_cast<std::size_t>(q.shape[3])});
    attention_forward<KV>(q, k, v, tokens, options, tensor_ref<float, 4>(out), impl);
    return out;
}

/// Overload for xtensor containers/adaptors of float K/V (deduces nothing from templates).
inline tensor<float, 4> attention(tensor_ref<const float, 4> q, tensor_ref<const float, 4> k,
                                  tensor_ref<const float, 4> v, const token_layout& tokens,
                                  const attention_options& options, attention_impl impl = attention_impl::fused) {
    return attention<float>(q, k, v, tokens, options, impl);
}

}  // namespace mmca
