// mmca/backend/cpu/attention_backward.hpp - the fused CPU backward of every attention variant.
//
// Gradients of L = Σ dO ⊙ O for O_i = Σ_g O_g,i (+ V_j for rows with a self term), recomputing the
// probabilities of each group block by block from the forward's statistics (mmca/attention/stats.hpp):
//   P_g  = exp(S − row_max_g) / row_sum_g        S = scale·q·k, uniform groups take S = 0
//   dP   = dO · Vᵀ                                (the same for both groups)
//   dS_g = P_g ⊙ (dP − δ_g),  δ_g = dO · O_g      (0 for a uniform group: its weights ignore S)
//   dV  += Σ_g P_gᵀ dO,  dK += scale Σ_g dS_gᵀ Q,  dQ += scale Σ_g dS_g K,  dV_j += dO_j for self terms
// Rows are the fused forward's tiles (a sequence, a kv head, up to tile_rows rows × the query heads
// that share the kv head), packed once: scale·Q and dO transposed (keys × rows products keep rows in
// SIMD lanes, as in the forward), Q and dO as rows, per-lane masks, row statistics and δ_g.
// Two passes, each owning what it writes, so that no sum depends on the number of threads:
//   dQ:     one work item per tile, over the key blocks the tile can see, in key order;
//   dK, dV: one work item per (sequence, kv head, key block), over the tiles of that kv head that
//           see the block, in tile order (grouped-query heads are stacked inside each tile).
// S and dP are computed in both passes (7 block products against the forward's 2). Blocks no row of
// a tile sees are skipped; blocks that only uniform groups touch need neither S nor dP.
// No (L, L) buffer exists.
#pragma once

#include "mmca/attention/problem.hpp"
#include "mmca/attention/row_plan.hpp"
#include "mmca/attention/stats.hpp"
#include "mmca/backend/cpu/attention_fused.hpp"
#include "mmca/core/error.hpp"
#include "mmca/core/threading.hpp"

#include <Eigen/Core>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <type_traits>
#include <vector>

namespace mmca {
namespace cpu {

/// Tile sizes of the fused backward.
struct fused_backward_config {
    std::int32_t tile_rows = 128;  // query rows (times heads per kv head) per tile, at most
    std::int32_t key_block = 64;   // keys per block
};

namespace detail {

/// C[i][c] += Σ_x A[i][x] · B[x][c] for NI rows of A/C and NP packets of columns.
template <int NI, int NP>
inline void product_tile(const float* A, std::int64_t lda, std::int64_t inner, const float* B, std::int64_t ldb,
                         float* C, std::int64_t ldc) {
    using namespace Eigen::internal;
    packet acc[NI][NP];
    for (int i = 0; i < NI; ++i)
        for (int c = 0; c < NP; ++c) acc[i][c] = ploadu<packet>(C + i * ldc + c * packet_size);
    for (std::int64_t x = 0; x < inner; ++x) {
        packet b[NP];
        for (int c = 0; c < NP; ++c) b[c] = ploadu<packet>(B + x * ldb + c * packet_size);
        for (int i = 0; i < NI; ++i) {
            const packet a = pset1<packet>(A[i * lda + x]);
            for (int c = 0; c < NP; ++c) acc[i][c] = pmadd(a, b[c], acc[i][c]);
        }
    }
    for (int i = 0; i < NI; ++i)
        for (int c = 0; c < NP; ++c) pstoreu(C + i * ldc + c * packet_size, acc[i][c]);
}

/// C (n × cols) += A (n × inner, row stride lda) · B (inner × cols, row stride ldb); cols a multiple
/// of one packet. Each element of C is summed over x in increasing order.
inline void accumulate_product(const float* A, std::int64_t lda, std::int64_t n, std::int64_t inner, const float* B,
                               std::int64_t ldb, std::int64_t cols, float* C, std::int64_t ldc) {
    auto strip = [&](auto columns, std::int64_t c) {
        constexpr int NP = decltype(columns)::value;
        std::int64_t i = 0;
        for (; i + register_rows <= n; i += register_rows)
            product_tile<register_rows, NP>(A + i * lda, lda, inner, B + c, ldb, C + i * ldc + c, ldc);
        for (; i + 2 <= n; i += 2) product_tile<2, NP>(A + i * lda, lda, inner, B + c, ldb, C + i * ldc + c, ldc);
        for (; i < n; ++i) product_tile<1, NP>(A + i * lda, lda, inner, B + c, ldb, C + i * ldc + c, ldc);
    };
    std::int64_t c = 0;
    for (; c + 2 * packet_size <= cols; c += 2 * packet_size) strip(std::integral_constant<int, 2>{}, c);
    for (; c < cols; c += packet_size) strip(std::integral_constant<int, 1>{}, c);
}

/// One packed tile of the backward (see the file comment); m indexes the tile's rows × heads.
struct backward_tile {
    std::int64_t M = 0, ldm = 0;          // rows × heads, and that rounded up to 2 packets
    std::int64_t ld = 0, ldr = 0;         // spread_stride(ldm), spread_stride(Dp): row strides
    std::int32_t lo = 0, hi = -1;         // key positions some row of the tile sees
    aligned_floats qt;                    // (D, ld) scale·q, transposed
    aligned_floats dot;                   // (D, ld) dO, transposed
    aligned_floats qrows;                 // (M, ldr) q
    aligned_floats dorows;                // (M, ldr) dO
    aligned_floats mx[2], inv_sum[2];     // (ldm) row max and 1 / row sum per group (0 when empty)
    aligned_floats delta[2];              // (ldm) dO · O_g per group
    group_lanes lanes[2];
    std::vector<std::int32_t> score_end;  // (ldm) one past the last key of a lane's softmax (not uniform)
                                          // groups: the keys that send gradient to its q (0 for none)
    std::vector<std::int32_t> key_end;    // (ldm) one past the last key of any of a lane's groups (uniform
                                          // ones too): the keys whose dK, dV the lane adds to (0 for none)
};

/// Scratch of one thread of the backward, reused across work items.
struct backward_scratch {
    aligned_floats st, dpt, psum, dst;      // (Bk, ld) scores, dP, Σ_g P_g, dS (all transposed)
    aligned_floats kbuf, vbuf;              // (Bk, spread_stride(Dp)) K/V block of the dK/dV pass
    head_rows kv;                           // K/V of the current kv head in the dQ pass
    aligned_floats acc_a, acc_b;            // dQ (M, Dp), or dK and dV (Bk, Dp)
    std::vector<std::int64_t> lane_keys;    // (ldm / packet_size) keys of a cut block a packet of lanes needs
};

/// The probabilities P_g of a block (keys × lanes) from the row statistics, 0 on lanes whose group
/// does not contain the key (uniform lanes take S = 0), and what the backward needs of them: added
/// into psum (Σ_g P_g, for dV) when psum is not null, and dS_g = P_g ⊙ (dP − δ_g) added into dSt on
/// the lanes whose group is not uniform when dSt is not null (dPt is then read). St, dPt, psum and
/// dSt are (n × ldm) of row stride ld. With lane_keys (as for scores_transposed), the lanes of
/// packet j cover only the first lane_keys[j] keys and nothing is written past them.
inline void accumulate_group_terms(const float* St, const float* dPt, float* psum, float* dSt, std::int64_t n,
                                   std::int64_t ldm, std::int64_t ld, bool masked, const group_lanes& lanes,
                                   const sequence_index& seq, std::int64_t k0, const float* mx, const float* inv_sum,
                                   const float* delta, const std::int64_t* lane_keys = nullptr) {
    using namespace Eigen::internal;
    const packet zero = pset1<packet>(0.0f);
    const std::int8_t* types = seq.types + k0;
    const std::int32_t* image_ids = seq.image_ids + k0;
    // One packet of lanes at a time: its group tests and row values are loaded once.
    for (std::int64_t m = 0; m < ldm; m += packet_size) {
        const std::int64_t keys = lane_keys == nullptr ? n : lane_keys[m / packet_size];
        if (keys <= 0) continue;
        const lane_packet group(lanes, m);
        const packet shift = ploadu<packet>(mx + m), scale = ploadu<packet>(inv_sum + m);
        const packet d = ploadu<packet>(delta + m), uniform = ploadu<packet>(lanes.uniform.data() + m);
        for (std::int64_t x = 0; x < keys; ++x) {
            const std::int64_t at = x * ld + m;
            packet s = ploadu<packet>(St + at);
            if (lanes.any_uniform) s = pselect(uniform, zero, s);
            packet pr = pmul(exp_or_zero(psub(s, shift)), scale);
            if (masked) {
                const packet kpos = pset1<packet>(static_cast<float>(k0 + x));
                const packet kid = pset1<packet>(static_cast<float>(image_ids[x]));
                pr = pselect(group.members(types[x], kpos, kid), pr, zero);
            }
            if (psum) pstoreu(psum + at, padd(ploadu<packet>(psum + at), pr));
            if (dSt) {
                packet ds = pmul(pr, psub(ploadu<packet>(dPt + at), d));
                if (lanes.any_uniform) ds = pselect(uniform, zero, ds);
                pstoreu(dSt + at, padd(ploadu<packet>(dSt + at), ds));
            }
        }
    }
}

}  // namespace detail

/// Checks, for every row and group that the plans say is not empty, that the stats hold a finite
/// max and a positive finite sum (stats of another call, or never written, are refused).
inline void check_backward_stats(const char* where, const attention_problem& p, const detail::fused_plan& fp,
                                 const attention_stats_view& stats) {
    using mmca::detail::to_text;
    for (std::int64_t b = 0; b < p.batch; ++b)
        for (std::int32_t i : fp.active[b])
            for (std::int64_t h = 0; h < p.q_heads; ++h)
                for (int g = 0; g < 2; ++g) {
                    if (fp.plans[b][i].group[g].empty()) continue;
                    const float mx = stats.row_max(b, h, i, g), sum = stats.row_sum(b, h, i, g);
                    const std::string at = "[" + to_text(b) + ", " + to_text(h) + ", " + to_text(i) + ", " +
                                           to_text(g) + "]";
                    MMCA_CHECK_ARG(std::isfinite(mx), where, "row_max", "row_max" + at + " = " + to_text(mx),
                                   "a finite max for a row whose group " + to_text(g) +
                                       " has keys (the stats of attention_forward_with_stats for the same inputs)");
                    MMCA_CHECK_ARG(std::isfinite(sum) && sum > 0.0f, where, "row_sum",
                                   "row_sum" + at + " = " + to_text(sum),
                                   "a positive sum for a row whose group " + to_text(g) +
                                       " has keys (the stats of attention_forward_with_stats for the same inputs)");
                }
}

/// Computes dq (q's shape), dk and dv (k's shape) for a checked problem and the upstream gradient
/// dout, from the stats the fused forward wrote for the same inputs. `where` names the public
/// function for the stats check. Results do not depend on num_threads.
inline void attention_fused_backward(const attention_problem& p, tensor_ref<const float, 4> q,
                                     tensor_ref<const float, 4> k, tensor_ref<const float, 4> v,
                                     tensor_ref<const float, 4> dout, const attention_stats_view& stats,
                                     tensor_ref<float, 4> dq, tensor_ref<float, 4> dk, tensor_ref<float, 4> dv,
                                     int num_threads = 0, const fused_backward_config& config = {},
                                     const char* where = "mmca::cpu::attention_fused_backward") {
    using namespace detail;
    const std::int64_t D = p.head_dim;
    const std::int64_t Dp = round_up(D, packet_size);
    const std::int64_t G = p.group_size();
    const fused_plan fp = make_fused_plan(p, config.tile_rows);
    check_backward_stats(where, p, fp, stats);
    const auto& plans = fp.plans;
    const auto& active = fp.active;
    const std::int64_t tile_count = static_cast<std::int64_t>(fp.tiles.size());

    // Rows without a softmax get dq = 0; keys past a sequence's length get dk = dv = 0.
    parallel_for(p.batch * p.q_heads, num_threads, [&](std::int64_t item, int) {
        const std::int64_t b = item / p.q_heads, h = item % p.q_heads;
        for (std::int64_t i = 0; i < p.q_len; ++i)
            if (!(i < p.seq_q_len[b] && plans[b][i].needs_softmax())) std::fill(dq.ptr(b, h, i), dq.ptr(b, h, i) + D, 0.0f);
        if (h >= p.kv_heads) return;
        for (std::int64_t kk = p.seq_kv_len[b]; kk < p.kv_len; ++kk) {
            std::fill(dk.ptr(b, h, kk), dk.ptr(b, h, kk) + D, 0.0f);
            std::fill(dv.ptr(b, h, kk), dv.ptr(b, h, kk) + D, 0.0f);
        }
    });

    // Pack every tile once.
    std::vector<backward_tile> packed(static_cast<std::size_t>(tile_count));
    parallel_for(tile_count, num_threads, [&](std::int64_t t, int) {
        const tile_desc& tile = fp.tiles[t];
        backward_tile& w = packed[t];
        const std::int64_t b = tile.batch, hk = tile.kv_head, R = tile.count;
        w.M = R * G;
        w.ldm = round_up(w.M, 2 * packet_size);
        w.ld = spread_stride(w.ldm);
        w.ldr = spread_stride(Dp);
        tile_key_span(fp, tile, &w.lo, &w.hi);
        w.qt.assign(static_cast<std::size_t>(D * w.ld), 0.0f);
        w.dot.assign(static_cast<std::size_t>(D * w.ld), 0.0f);
        w.qrows.assign(static_cast<std::size_t>(w.M * w.ldr), 0.0f);
        w.dorows.assign(static_cast<std::size_t>(w.M * w.ldr), 0.0f);
        for (int g = 0; g < 2; ++g) {
            w.mx[g].assign(w.ldm, 0.0f);
            w.inv_sum[g].assign(w.ldm, 0.0f);
            w.delta[g].assign(w.ldm, 0.0f);
            fill_lanes(w.lanes[g], w.ldm);
        }
        w.score_end.assign(static_cast<std::size_t>(w.ldm), 0);
        w.key_end.assign(static_cast<std::size_t>(w.ldm), 0);
        for (std::int64_t m = 0; m < w.M; ++m) {
            const std::int64_t h = hk * G + m / R, i = active[b][tile.first + m % R];
            const row_plan& plan = plans[b][i];
            const float* qs = q.ptr(b, h, i);
            const float* gs = dout.ptr(b, h, i);
            for (std::int64_t d = 0; d < D; ++d) {
                w.qt[d * w.ld + m] = qs[d] * p.scale;
                w.dot[d * w.ld + m] = gs[d];
                w.qrows[m * w.ldr + d] = qs[d];
                w.dorows[m * w.ldr + d] = gs[d];
            }
            for (int g = 0; g < 2; ++g) {
                set_lane(w.lanes[g], m, plan.group[g]);
                if (plan.group[g].empty()) continue;
                for (int r = 0; r < plan.group[g].ranges; ++r) {
                    const std::int32_t end = plan.group[g].range[r].hi + 1;
                    w.key_end[m] = std::max(w.key_end[m], end);
                    if (!plan.group[g].uniform) w.score_end[m] = std::max(w.score_end[m], end);
                }
                w.mx[g][m] = stats.row_max(b, h, i, g);
                w.inv_sum[g][m] = 1.0f / stats.row_sum(b, h, i, g);
                const float* og = stats.group_out.ptr(b, h, i, g);
                double delta = 0.0;
                for (std::int64_t d = 0; d < D; ++d) delta += double(gs[d]) * double(og[d]);
                w.delta[g][m] = static_cast<float>(delta);
            }
        }
    });

    const int threads = resolve_num_threads(num_threads);
    std::vector<backward_scratch> scratch(threads);
    const std::int32_t Bk = std::max<std::int32_t>(1, config.key_block);

    // dQ: one work item per tile.
    parallel_for(tile_count, threads, [&](std::int64_t t, int thread) {
        const tile_desc& tile = fp.tiles[t];
        const backward_tile& pk = packed[t];
        const std::int64_t b = tile.batch, hk = tile.kv_head, R = tile.count, ldm = pk.ldm, ld = pk.ld;
        const sequence_index& seq = fp.index[b];
        backward_scratch& w = scratch[thread];
        w.acc_a.assign(static_cast<std::size_t>(pk.M * Dp), 0.0f);
        for (auto* buf : {&w.st, &w.dpt, &w.dst}) buf->resize(static_cast<std::size_t>(Bk * ld));
        w.lane_keys.resize(static_cast<std::size_t>(ldm / packet_size));
        w.kv.bind(b, hk, seq.length, Bk, Dp);
        for (std::int32_t k0 = pk.hi < 0 ? 0 : (pk.lo / Bk) * Bk; k0 <= pk.hi; k0 += Bk) {
            const std::int32_t k1 = std::min(k0 + Bk, seq.length), n = k1 - k0;
            const block_use use = classify_block(fp, tile, k0, k1);
            if (!use.need_scores) continue;  // only softmax groups send gradient to Q
            // On a block that cuts through the tile (the causal diagonal, the edges of an image), each
            // packet of lanes works only up to the last key its softmax groups see, as in the forward.
            const bool cut = use.cut();
            const std::int64_t* lane_keys =
                cut ? packet_key_counts(pk.score_end.data(), ldm, k0, n, w.lane_keys.data()) : nullptr;
            std::int64_t ks = 0, vs = 0;
            const float* kb = head_block_rows(k, 0, k0, n, D, Dp, w.kv, &ks);
            const float* vb = head_block_rows(v, 1, k0, n, D, Dp, w.kv, &vs);
            scores_transposed(kb, ks, n, D, pk.qt.data(), ldm, w.st.data(), ld, lane_keys);
            scores_transposed(vb, vs, n, D, pk.dot.data(), ldm, w.dpt.data(), ld, lane_keys);
            std::fill(w.dst.begin(), w.dst.begin() + n * ld, 0.0f);  // zeros past lane_keys, as accumulate_values needs
            for (int g = 0; g < 2; ++g) {
                if (!use.used[g]) continue;
                accumulate_group_terms(w.st.data(), w.dpt.data(), nullptr, w.dst.data(), n, ldm, ld, use.masked[g],
                                       pk.lanes[g], seq, k0, pk.mx[g].data(), pk.inv_sum[g].data(),
                                       pk.delta[g].data(), lane_keys);
            }
            accumulate_values(w.dst.data(), ld, n, kb, ks, Dp, w.acc_a.data(), pk.M, lane_keys);
        }
        for (std::int64_t m = 0; m < pk.M; ++m) {
            float* o = dq.ptr(b, hk * G + m / R, active[b][tile.first + m % R]);
            const float* a = w.acc_a.data() + m * Dp;
            for (std::int64_t d = 0; d < D; ++d) o[d] = a[d] * p.scale;
        }
    });

    // dK, dV: one work item per (sequence, kv head, key block); tiles of a (sequence, kv head) are
    // consecutive in fp.tiles.
    std::vector<std::int64_t> first_tile(p.batch * p.kv_heads + 1, tile_count);
    for (std::int64_t t = tile_count; t-- > 0;)
        first_tile[fp.tiles[t].batch * p.kv_heads + fp.tiles[t].kv_head] = t;
    for (std::int64_t x = p.batch * p.kv_heads; x-- > 0;) first_tile[x] = std::min(first_tile[x], first_tile[x + 1]);
    struct key_item {
        std::int32_t batch, kv_head, k0;
    };
    std::vector<key_item> items;
    for (std::int64_t b = 0; b < p.batch; ++b)
        for (std::int64_t hk = 0; hk < p.kv_heads; ++hk)
            for (std::int32_t k0 = 0; k0 < p.seq_kv_len[b]; k0 += Bk)
                items.push_back({static_cast<std::int32_t>(b), static_cast<std::int32_t>(hk), k0});

    parallel_for(static_cast<std::int64_t>(items.size()), threads, [&](std::int64_t item, int thread) {
        const std::int64_t b = items[item].batch, hk = items[item].kv_head;
        const std::int32_t k0 = items[item].k0;
        const sequence_index& seq = fp.index[b];
        const std::int32_t k1 = std::min(k0 + Bk, seq.length), n = k1 - k0;
        backward_scratch& w = scratch[thread];
        w.acc_a.assign(static_cast<std::size_t>(n * Dp), 0.0f);  // dK
        w.acc_b.assign(static_cast<std::size_t>(n * Dp), 0.0f);  // dV
        std::int64_t ks = 0, vs = 0;
        const float* kb = block_rows(k, b, hk, k0, n, D, Dp, w.kbuf, &ks);
        const float* vb = block_rows(v, b, hk, k0, n, D, Dp, w.vbuf, &vs);
        const std::int64_t hk_index = b * p.kv_heads + hk;
        for (std::int64_t t = first_tile[hk_index]; t < first_tile[hk_index + 1]; ++t) {
            const backward_tile& pk = packed[t];
            if (pk.hi < k0 || pk.lo >= k1) continue;
            const tile_desc& tile = fp.tiles[t];
            const block_use use = classify_block(fp, tile, k0, k1);
            if (!use.any()) continue;
            const std::int64_t ldm = pk.ldm, ld = pk.ld;
            for (auto* buf : {&w.st, &w.dpt, &w.psum, &w.dst}) buf->resize(static_cast<std::size_t>(Bk * ld));
            // On a cut block each packet of lanes stops at the last key any of its groups sees; psum and
            // dS stay 0 past it, which is what accumulate_product reads there.
            const bool cut = use.cut();
            w.lane_keys.resize(static_cast<std::size_t>(ldm / packet_size));
            const std::int64_t* lane_keys =
                cut ? packet_key_counts(pk.key_end.data(), ldm, k0, n, w.lane_keys.data()) : nullptr;
            if (use.need_scores) {
                scores_transposed(kb, ks, n, D, pk.qt.data(), ldm, w.st.data(), ld, lane_keys);
                scores_transposed(vb, vs, n, D, pk.dot.data(), ldm, w.dpt.data(), ld, lane_keys);
                std::fill(w.dst.begin(), w.dst.begin() + n * ld, 0.0f);
            } else {
                std::fill(w.st.begin(), w.st.begin() + n * ld, 0.0f);
            }
            std::fill(w.psum.begin(), w.psum.begin() + n * ld, 0.0f);
            for (int g = 0; g < 2; ++g) {
                if (!use.used[g]) continue;
                accumulate_group_terms(w.st.data(), w.dpt.data(), w.psum.data(),
                                       use.need_scores ? w.dst.data() : nullptr, n, ldm, ld, use.masked[g],
                                       pk.lanes[g], seq, k0, pk.mx[g].data(), pk.inv_sum[g].data(),
                                       pk.delta[g].data(), lane_keys);
            }
            accumulate_product(w.psum.data(), ld, n, pk.M, pk.dorows.data(), pk.ldr, Dp, w.acc_b.data(), Dp);
            if (use.need_scores)
                accumulate_product(w.dst.data(), ld, n, pk.M, pk.qrows.data(), pk.ldr, Dp, w.acc_a.data(), Dp);
        }
        // Self terms: an image row j of mmca / mmca_reference outputs V_j itself, so dV_j += dO_j.
        const std::int64_t first_row = p.seq_kv_len[b] - p.seq_q_len[b];
        for (std::int32_t x = 0; x < n; ++x) {
            const std::int64_t i = k0 + x - first_row;
            if (i < 0 || i >= p.seq_q_len[b] || !plans[b][i].self_term) continue;
            for (std::int64_t h = hk * G; h < (hk + 1) * G; ++h) {
                const float* g = dout.ptr(b, h, i);
                for (std::int64_t d = 0; d < D; ++d) w.acc_b[x * Dp + d] += g[d];
            }
        }
        for (std::int32_t x = 0; x < n; ++x) {
            float* ok = dk.ptr(b, hk, k0 + x);
            float* ov = dv.ptr(b, hk, k0 + x);
            for (std::int64_t d = 0; d < D; ++d) {
                ok[d] = w.acc_a[x * Dp + d] * p.scale;
                ov[d] = w.acc_b[x * Dp + d];
            }
        }
    });
}

}  // namespace cpu
}  // namespace mmca
