// mmca/attention/stats.hpp - what the forward keeps for the backward, per query row and key group.
//
// A row of every variant is a sum of at most two group terms (SPEC §2) plus, for image rows of
// mmca / mmca_reference, V_j itself. For group g (0: the row's own-modality or causal group,
// 1: the other-modality or cross group, as in row_plan) the forward records
//   row_max[g]  max over the group's keys of the scaled score S = scale·q·k (0 for a uniform group,
//               whose scores are taken as 0; -inf for an empty group)
//   row_sum[g]  Σ exp(S - row_max[g]) over the group's keys (the key count for a uniform group,
//               0 for an empty group)
//   group_out[g] the group's term O_g = Σ_k P_g[k] V_k with P_g = exp(S - row_max[g]) / row_sum[g]
// so that the backward recomputes P_g block by block from (row_max, row_sum) and gets the softmax
// correction rowsum(dO ⊙ O_g) from group_out without a pass over the keys.
#pragma once

#include "mmca/attention/problem.hpp"
#include "mmca/core/error.hpp"
#include "mmca/core/tensor.hpp"

#include <cstdint>
#include <string>
#include <type_traits>

namespace mmca {

/// Per-row softmax statistics and per-group outputs of a forward call (views, no ownership).
/// T is float (written by the forward) or const float (read by the backward).
template <class T>
struct basic_attention_stats {
    tensor_ref<T, 4> row_max;    ///< (B, Hq, Lq, 2) max scaled score per group
    tensor_ref<T, 4> row_sum;    ///< (B, Hq, Lq, 2) Σ exp(S - row_max) per group
    tensor_ref<T, 5> group_out;  ///< (B, Hq, Lq, 2, D) per-group output O_g (normalised)

    basic_attention_stats() = default;
    basic_attention_stats(tensor_ref<T, 4> max, tensor_ref<T, 4> sum, tensor_ref<T, 5> out)
        : row_max(max), row_sum(sum), group_out(out) {}
    /// Read-only stats from writeable ones.
    template <class U, class = std::enable_if_t<std::is_same_v<const U, T> && !std::is_same_v<U, T>>>
    basic_attention_stats(const basic_attention_stats<U>& other)  // NOLINT(google-explicit-constructor)
        : row_max(other.row_max), row_sum(other.row_sum), group_out(other.group_out) {}
};

using attention_stats = basic_attention_stats<float>;             ///< written by the forward
using attention_stats_view = basic_attention_stats<const float>;  ///< read by the backward

/// Checks that stats has the shapes of a checked problem: row_max and row_sum (B, Hq, Lq, 2),
/// group_out (B, Hq, Lq, 2, D) with a contiguous last dimension. `where` names the public function.
template <class T>
void check_attention_stats(const char* where, const attention_problem& p, const basic_attention_stats<T>& stats) {
    using detail::to_text;
    // The expected shapes as text, built only for a message (this check runs on every training step).
    auto bhl = [&] { return to_text(p.batch) + ", " + to_text(p.q_heads) + ", " + to_text(p.q_len); };
    auto rows = [&] { return "[" + bhl() + ", 2] (B, Hq, Lq, 2)"; };
    auto outs = [&] { return "[" + bhl() + ", 2, " + to_text(p.head_dim) + "] (B, Hq, Lq, 2, D)"; };
    auto rows_ok = [&](const tensor_ref<T, 4>& t) {
        return t.shape[0] == p.batch && t.shape[1] == p.q_heads && t.shape[2] == p.q_len && t.shape[3] == 2;
    };
    MMCA_CHECK_ARG(!stats.row_max.empty(), where, "row_max", "no tensor", "a float32 " + rows() + " tensor");
    MMCA_CHECK_ARG(!stats.row_sum.empty(), where, "row_sum", "no tensor", "a float32 " + rows() + " tensor");
    MMCA_CHECK_ARG(!stats.group_out.empty(), where, "group_out", "no tensor", "a float32 " + outs() + " tensor");
    MMCA_CHECK_ARG(rows_ok(stats.row_max), where, "row_max", stats.row_max.shape_text(), rows());
    MMCA_CHECK_ARG(rows_ok(stats.row_sum), where, "row_sum", stats.row_sum.shape_text(), rows());
    const auto& go = stats.group_out;
    MMCA_CHECK_ARG(go.shape[0] == p.batch && go.shape[1] == p.q_heads && go.shape[2] == p.q_len && go.shape[3] == 2 &&
                       go.shape[4] == p.head_dim,
                   where, "group_out", go.shape_text(), outs());
    MMCA_CHECK_ARG(go.inner_contiguous(), where, "group_out", "a non-contiguous last dimension",
                   "the last dimension (D) contiguous");
}

}  // namespace mmca
