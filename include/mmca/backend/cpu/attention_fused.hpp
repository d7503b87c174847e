// mmca/backend/cpu/attention_fused.hpp - the fused CPU attention kernel for every variant.
//
// Work item: one sequence, one kv head, and a tile of up to `tile_rows` query rows that need a
// softmax, taken with all query heads that share the kv head (grouped-query attention stacks them
// into one tile, so K/V blocks are read once per group). For each key block the tile may see:
//   S = Q_tile · K_blockᵀ           (Eigen GEMM, float32)
//   per row and group: online softmax update of (max, sum, accumulator), masked only where the
//   block is partially visible, uniform groups take weight 1 without looking at S
//   [acc_0; acc_1] += [P_0; P_1] · V_block   (one GEMM for both groups)
// Key blocks that no row of the tile can see are skipped (prefix counts of token types decide),
// and S is not computed for blocks that only uniform groups touch. No (L, L) buffer exists.
#pragma once

#include "mmca/attention/problem.hpp"
#include "mmca/attention/row_plan.hpp"
#include "mmca/core/dtype.hpp"
#include "mmca/core/threading.hpp"

#include <Eigen/Core>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <type_traits>
#include <vector>

namespace mmca {
namespace cpu {

/// Tile sizes of the fused kernel. The defaults suit AVX-512 cores with 1-2 MB of L2.
struct fused_attention_config {
    std::int32_t tile_rows = 128;  // query rows (times heads per kv head) per tile, at most
    std::int32_t key_block = 128;  // keys per block
};

namespace detail {

using row_matrix = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using const_row_map = Eigen::Map<const row_matrix, 0, Eigen::OuterStride<>>;

/// Scratch of one thread, reused across work items.
struct fused_scratch {
    row_matrix q;           // (M, D) scaled query rows of the tile
    row_matrix s;           // (M, Bk) scores of one key block
    row_matrix p;           // (2M, Bk) weights of group 0 then group 1
    row_matrix acc;         // (2M, D) accumulators of group 0 then group 1
    std::vector<float> m;   // (2M) running max per row and group
    std::vector<float> l;   // (2M) running sum per row and group
    std::vector<float> kbuf, vbuf;  // (Bk, D) widened K/V block when stored as f16/bf16
};

/// The query rows of a tile: `count` consecutive entries of a sequence's active-row list.
struct tile_desc {
    std::int32_t batch;
    std::int32_t kv_head;
    std::int32_t first;  // index into the active-row list of the sequence
    std::int32_t count;
};

template <class KV>
const_row_map key_block_view(const tensor_ref<const KV, 4>& t, std::int64_t b, std::int64_t h, std::int32_t k0,
                             std::int32_t n, std::int64_t D, std::vector<float>& buf) {
    if constexpr (std::is_same_v<KV, float>) {
        (void)buf;
        return const_row_map(t.ptr(b, h, k0), n, D, Eigen::OuterStride<>(t.strides[2]));
    } else {
        buf.resize(static_cast<std::size_t>(n) * D);
        for (std::int32_t r = 0; r < n; ++r) to_float(t.ptr(b, h, k0 + r), buf.data() + r * D, D);
        return const_row_map(buf.data(), n, D, Eigen::OuterStride<>(D));
    }
}

}  // namespace detail

/// Computes attention for a checked problem with the fused kernel. out must have q's shape.
template <class KV>
void attention_fused_forward(const attention_problem& p, tensor_ref<const float, 4> q, tensor_ref<const KV, 4> k,
                             tensor_ref<const KV, 4> v, tensor_ref<float, 4> out, int num_threads = 0,
                             const fused_attention_config& config = {}) {
    using namespace detail;
    const std::int64_t D = p.head_dim;
    const std::int64_t G = p.group_size();
    constexpr float neg_inf = -std::numeric_limits<float>::infinity();

    // Row plans per sequence, and the rows that need a softmax.
    std::vector<sequence_index> index;
    std::vector<std::vector<row_plan>> plans(p.batch);
    std::vector<std::vector<std::int32_t>> active(p.batch);  // row numbers i (not positions)
    index.reserve(p.batch);
    for (std::int64_t b = 0; b < p.batch; ++b) {
        index.emplace_back(p, b);
        plans[b].resize(p.seq_q_len[b]);
        for (std::int32_t i = 0; i < p.seq_q_len[b]; ++i) {
            plans[b][i] = plan_row(p, index[b], static_cast<std::int32_t>(p.query_position(b, i)));
            if (plans[b][i].needs_softmax()) active[b].push_back(i);
        }
    }

    // Rows without a softmax: padding and out-of-length rows are 0, self-only rows copy V_j.
    parallel_for(p.batch * p.q_heads, num_threads, [&](std::int64_t item, int) {
        const std::int64_t b = item / p.q_heads, h = item % p.q_heads;
        std::vector<float> row(D);
        for (std::int64_t i = 0; i < p.q_len; ++i) {
            const bool planned = i < p.seq_q_len[b];
            if (planned && plans[b][i].needs_softmax()) continue;
            float* o = out.ptr(b, h, i);
            if (planned && plans[b][i].self_term) {
                to_float(v.ptr(b, h / G, plans[b][i].position), o, D);
            } else {
                std::fill(o, o + D, 0.0f);
            }
        }
    });

    const std::int32_t rows_per_tile = std::max<std::int32_t>(1, config.tile_rows / static_cast<std::int32_t>(G));
    std::vector<tile_desc> tiles;
    for (std::int64_t b = 0; b < p.batch; ++b)
        for (std::int64_t hk = 0; hk < p.kv_heads; ++hk)
            for (std::int32_t first = 0; first < static_cast<std::int32_t>(active[b].size()); first += rows_per_tile)
                tiles.push_back({static_cast<std::int32_t>(b), static_cast<std::int32_t>(hk), first,
                                 std::min<std::int32_t>(rows_per_tile, static_cast<std::int32_t>(active[b].size()) - first)});

    const int threads = resolve_num_threads(num_threads);
    std::vector<fused_scratch> scratch(threads);

    parallel_for(static_cast<std::int64_t>(tiles.size()), threads, [&](std::int64_t t, int thread) {
        const tile_desc& tile = tiles[t];
        const std::int64_t b = tile.batch, hk = tile.kv_head;
        const sequence_index& seq = index[b];
        const std::int32_t R = tile.count;
        const std::int64_t M = R * G;  // tile row m = head offset (m / R) * ... see row_of below
        fused_scratch& w = scratch[thread];
        // Tile row m holds query head hk*G + m / R and row active[first + m % R].
        auto row_index = [&](std::int64_t m) { return active[b][tile.first + m % R]; };
        auto head_of = [&](std::int64_t m) { return hk * G + m / R; };
        auto plan_of = [&](std::int64_t m) -> const row_plan& { return plans[b][row_index(m)]; };

        w.q.resize(M, D);
        for (std::int64_t m = 0; m < M; ++m) {
            const float* src = q.ptr(b, head_of(m), row_index(m));
            for (std::int64_t d = 0; d < D; ++d) w.q(m, d) = src[d] * p.scale;
        }
        w.acc.setZero(2 * M, D);
        w.m.assign(2 * M, neg_inf);
        w.l.assign(2 * M, 0.0f);
        for (std::int64_t m = 0; m < M; ++m)
            if (plan_of(m).group[1].uniform) w.m[M + m] = 0.0f;  // uniform groups use score 0 throughout

        // The key range any row of the tile can see.
        std::int32_t lo = seq.length, hi = -1;
        for (std::int32_t r = 0; r < R; ++r)
            for (const key_group& g : plans[b][active[b][tile.first + r]].group)
                for (int x = 0; x < g.ranges; ++x) {
                    lo = std::min(lo, g.range[x].lo);
                    hi = std::max(hi, g.range[x].hi);
                }

        const std::int32_t Bk = M <= 8 ? std::max(config.key_block, 512) : config.key_block;
        std::vector<block_cover> covers(2 * static_cast<std::size_t>(R));
        for (std::int32_t k0 = (lo / Bk) * Bk; k0 <= hi; k0 += Bk) {
            const std::int32_t k1 = std::min(k0 + Bk, seq.length), n = k1 - k0;
            // Classify the block for every row (per position; heads share the classification).
            bool group_used[2] = {false, false}, need_scores = false;
            for (std::int32_t r = 0; r < R; ++r) {
                const row_plan& plan = plans[b][active[b][tile.first + r]];
                for (int g = 0; g < 2; ++g) {
                    const block_cover c = plan.group[g].empty() ? block_cover::none : cover(seq, plan.group[g], k0, k1);
                    covers[g * R + r] = c;
                    if (c != block_cover::none) {
                        group_used[g] = true;
                        need_scores |= !plan.group[g].uniform;
                    }
                }
            }
            if (!group_used[0] && !group_used[1]) continue;

            const const_row_map kb = key_block_view(k, b, hk, k0, n, D, w.kbuf);
            const const_row_map vb = key_block_view(v, b, hk, k0, n, D, w.vbuf);
            if (need_scores) w.s.noalias() = w.q * kb.transpose();
            w.p.resize(2 * M, n);

            for (int g = 0; g < 2; ++g) {
                if (!group_used[g]) continue;
                for (std::int64_t m = 0; m < M; ++m) {
                    const std::int32_t r = static_cast<std::int32_t>(m % R);
                    const block_cover c = covers[g * R + r];
                    float* prow = w.p.data() + (g * M + m) * n;
                    if (c == block_cover::none) {
                        std::fill(prow, prow + n, 0.0f);
                        continue;
                    }
                    const key_group& grp = plan_of(m).group[g];
                    float& l = w.l[g * M + m];
                    if (grp.uniform) {
                        std::int32_t members = 0;
                        for (std::int32_t x = 0; x < n; ++x) {
                            const bool in = c == block_cover::full || seq.in_group(grp, k0 + x);
                            prow[x] = in ? 1.0f : 0.0f;
                            members += in;
                        }
                        l += static_cast<float>(members);
                        continue;
                    }
                    Eigen::Map<Eigen::ArrayXf> pa(prow, n);
                    const float* srow = w.s.data() + m * n;
                    if (c == block_cover::full) {
                        pa = Eigen::Map<const Eigen::ArrayXf>(srow, n);
                    } else {
                        for (std::int32_t x = 0; x < n; ++x) prow[x] = seq.in_group(grp, k0 + x) ? srow[x] : neg_inf;
                    }
                    const float block_max = pa.maxCoeff();
                    if (block_max == neg_inf) {  // a partial cover with no member after all
                        pa.setZero();
                        continue;
                    }
                    float& mx = w.m[g * M + m];
                    const float new_max = std::max(mx, block_max);
                    const float rescale = std::exp(mx - new_max);  // exp(-inf) = 0 on the first block
                    pa = (pa - new_max).exp();
                    if (c != block_cover::full)
                        for (std::int32_t x = 0; x < n; ++x)
                            if (!seq.in_group(grp, k0 + x)) prow[x] = 0.0f;
                    l = l * rescale + pa.sum();
                    if (rescale != 1.0f) w.acc.row(g * M + m) *= rescale;
                    mx = new_max;
                }
            }
            if (group_used[0] && group_used[1]) {
                w.acc.noalias() += w.p * vb;
            } else {
                const std::int64_t g0 = group_used[0] ? 0 : M;
                w.acc.middleRows(g0, M).noalias() += w.p.middleRows(g0, M) * vb;
            }
        }

        for (std::int64_t m = 0; m < M; ++m) {
            const row_plan& plan = plan_of(m);
            Eigen::Map<Eigen::RowVectorXf> o(out.ptr(b, head_of(m), row_index(m)), D);
            o.setZero();
            for (int g = 0; g < 2; ++g)
                if (w.l[g * M + m] > 0.0f) o += w.acc.row(g * M + m) / w.l[g * M + m];
            if (plan.self_term) {
                w.kbuf.resize(D);
                to_float(v.ptr(b, hk, plan.position), w.kbuf.data(), D);
                o += Eigen::Map<const Eigen::RowVectorXf>(w.kbuf.data(), D);
            }
        }
    });
}

}  // namespace cpu
}  // namespace mmca
