// mmca/backend/cpu/attention_fused.hpp - the fused CPU attention kernel for every variant.
//
// Work item: one sequence, one kv head, and a tile of query rows that need a softmax, taken with
// all query heads that share the kv head (grouped-query attention stacks them into one tile, so
// each K/V block is read once per group). Scores are kept transposed, S^T (keys × tile rows), so
// that everything a row's online softmax needs (max, sum, rescale, masks) runs down SIMD lanes
// of tile rows. For each key block the tile can see:
//   S^T  = K_block · Q_tileᵀ                       register-blocked micro-kernel (6-8 keys × 2 packets)
//   per group g: mask where the block is only partly visible, uniform rows take score 0,
//   online update of (max, sum) per row, P_g^T = exp(S^T − max)
//   acc_g += P_gᵀ · V_block                        register-blocked micro-kernel (6-8 rows × 2 packets)
// Key blocks that no row of the tile can see are skipped (prefix counts of token types decide),
// and S^T is not computed for blocks that only uniform groups touch. No (L, L) buffer exists.
// Q_tileᵀ, S^T and P^T, and the K/V rows the micro-kernels read, have row strides of an odd number of
// cache lines (spread_stride): the column strips each micro-kernel pass reuses then stay in L1.
// K/V rows whose own stride is an even number of lines (D = 128 in float32) or that are stored in
// 16 bits are widened/copied once per thread and kv head, block by block (head_rows).
// Tiles of at most 8 rows (decode steps) read each K and V row once: dot products and axpys,
// software-pipelined so that the K rows of one block and the V rows of the block before stream
// together (decode_tile).
#pragma once

#include "mmca/attention/problem.hpp"
#include "mmca/attention/row_plan.hpp"
#include "mmca/attention/stats.hpp"
#include "mmca/core/dtype.hpp"
#include "mmca/core/threading.hpp"

#include <Eigen/Core>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <new>
#include <type_traits>
#include <vector>

namespace mmca {
namespace cpu {

/// Tile sizes of the fused kernel. With D = 128, a tile of 128 rows over 64-key blocks works on
/// about 0.3-0.4 MB (Qᵀ, the accumulators of both groups, the block's K, V, scores and weights), which
/// stays in a 512 KiB L2; with 128-key blocks (about 0.5 MB) it spills from it, and a Zen 3 core
/// ran most layouts slower, by up to about 25% (docs/attention.md).
struct fused_attention_config {
    std::int32_t tile_rows = 128;  // query rows (times heads per kv head) per tile, at most
    std::int32_t key_block = 64;   // keys per block (512 for tiles of at most 8 rows)
};

namespace detail {

using packet = float_packet;
constexpr int packet_size = float_packet_size;
/// Allocates on 64-byte cache-line boundaries, so that a micro-kernel's 16-float column strip of a
/// buffer whose row stride is a whole number of lines is one line per row, not two.
template <class T>
struct line_allocator {
    using value_type = T;
    static constexpr std::align_val_t alignment{64};
    line_allocator() = default;
    template <class U>
    line_allocator(const line_allocator<U>&) noexcept {}
    T* allocate(std::size_t n) { return static_cast<T*>(::operator new(n * sizeof(T), alignment)); }
    void deallocate(T* p, std::size_t) noexcept { ::operator delete(p, alignment); }
    template <class U>
    bool operator==(const line_allocator<U>&) const noexcept { return true; }
    template <class U>
    bool operator!=(const line_allocator<U>&) const noexcept { return false; }
};
using aligned_floats = std::vector<float, line_allocator<float>>;

inline std::int64_t round_up(std::int64_t x, std::int64_t m) { return (x + m - 1) / m * m; }

/// A row stride (in floats) of at least n whose rows spread over every set of the L1 cache.
/// A stride of an even number of 64-byte lines, e.g. 128 floats (512 bytes), sends the same
/// column of 128 rows to 1/8 of the sets of a 32 KiB 8-way L1, so a (128 × 16) column strip
/// (8 KiB) that should stay in L1 keeps being evicted; one line more per row, an odd number of
/// lines, spreads the strip over all sets. Strides that are not whole lines are kept.
inline std::int64_t spread_stride(std::int64_t n) {
    constexpr std::int64_t line = 64 / static_cast<std::int64_t>(sizeof(float));
    return n % line == 0 && (n / line) % 2 == 0 ? n + line : n;
}

/// e^x lane by lane for the shifted scores of a softmax (x <= 0 there), 0 for x below -87 (and
/// -inf). Same reduction and polynomial as Eigen's pexp (Cephes), so results agree with it bit for
/// bit on [-87, 88], but 2^n is written straight into the exponent field instead of through
/// pldexp's general scaling, about a third fewer instructions. Lanes whose e^x would be under
/// 2^-125 (nothing a sum that holds e^0 = 1 can notice) are flushed to zero.
template <class Packet = packet>
inline Packet exp_or_zero(const Packet& x) {
    using namespace Eigen::internal;
    if constexpr (unpacket_traits<Packet>::size == 1) {
        return x < -87.0f ? 0.0f : std::exp(std::min(x, 88.0f));
    } else {
        using packet = Packet;
        using int_packet = typename unpacket_traits<packet>::integer_packet;
        const packet lo = pset1<packet>(-87.0f);
        const packet c = pmin(pmax(x, lo), pset1<packet>(88.0f));
        const packet n = pfloor(pmadd(c, pset1<packet>(1.44269504088896341f), pset1<packet>(0.5f)));
        packet r = pmadd(n, pset1<packet>(-0.693359375f), c);
        r = pmadd(n, pset1<packet>(2.12194440e-4f), r);
        const packet r2 = pmul(r, r), r3 = pmul(r2, r);
        packet y = pmadd(pset1<packet>(1.9875691500e-4f), r, pset1<packet>(1.3981999507e-3f));
        packet y1 = pmadd(pset1<packet>(4.1665795894e-2f), r, pset1<packet>(1.6666665459e-1f));
        const packet y2 = padd(r, pset1<packet>(1.0f));
        y = pmadd(y, r, pset1<packet>(8.3334519073e-3f));
        y1 = pmadd(y1, r, pset1<packet>(5.0000001201e-1f));
        y = pmadd(y, r3, y1);
        y = pmadd(y, r2, y2);
        // n is in [-125, 127]: 2^n is the float with biased exponent n + 127 and no mantissa.
        const int_packet e = padd(pcast<packet, int_packet>(n), pset1<int_packet>(127));
        const packet scale = preinterpret<packet>(plogical_shift_left<23>(e));
        return pselect(pcmp_lt(x, lo), pset1<packet>(0.0f), pmul(y, scale));
    }
}

// Register blocking of the micro-kernels: `register_rows` rows of 2 packets of accumulators, plus two
// packets of operands and one broadcast, must fit the register file (16 vector registers on
// AVX2/SSE/NEON: 6 rows; 32 on AVX-512: 8 rows).
constexpr int register_rows = packet_size >= 16 ? 8 : 6;

/// St[i][m] = Σ_d K[i][d] · Qt[d][m] for NI keys and 2 packets of rows starting at Qt/St column 0;
/// with lane_max, lane_max[m] = max(lane_max[m], max_i St[i][m]).
template <int NI>
inline void scores_tile(const float* K, std::int64_t k_stride, std::int64_t D, const float* Qt, std::int64_t ldq,
                        float* St, std::int64_t lds, float* lane_max) {
    using namespace Eigen::internal;
    packet acc[NI][2];
    for (int i = 0; i < NI; ++i) acc[i][0] = acc[i][1] = pset1<packet>(0.0f);
    for (std::int64_t d = 0; d < D; ++d) {
        const packet q0 = ploadu<packet>(Qt + d * ldq), q1 = ploadu<packet>(Qt + d * ldq + packet_size);
        for (int i = 0; i < NI; ++i) {
            const packet kb = pset1<packet>(K[i * k_stride + d]);
            acc[i][0] = pmadd(kb, q0, acc[i][0]);
            acc[i][1] = pmadd(kb, q1, acc[i][1]);
        }
    }
    for (int i = 0; i < NI; ++i) {
        pstoreu(St + i * lds, acc[i][0]);
        pstoreu(St + i * lds + packet_size, acc[i][1]);
    }
    if (lane_max != nullptr) {
        packet m0 = ploadu<packet>(lane_max), m1 = ploadu<packet>(lane_max + packet_size);
        for (int i = 0; i < NI; ++i) {
            m0 = pmax(m0, acc[i][0]);
            m1 = pmax(m1, acc[i][1]);
        }
        pstoreu(lane_max, m0);
        pstoreu(lane_max + packet_size, m1);
    }
}

/// True while `left` rows (or keys) should still be taken register_rows at a time. The rest goes in
/// blocks of 4, whose 8 accumulators still hide the FMA latency, so that at most 3 rows are left to
/// the narrow blocks whose short dependency chains run at a fraction of the FMA rate: with 6 rows
/// per block, 128 = 6·20 + 4·2 rather than 6·21 + 1 + 1.
constexpr bool take_full_block(std::int64_t left) {
    return left >= register_rows && !(register_rows == 6 && left == 8);
}

/// The largest entry of lane_keys over the packets that hold lanes [m, m + count): how many keys
/// of the block those lanes see (n when lane_keys is null).
inline std::int64_t keys_of_lanes(const std::int64_t* lane_keys, std::int64_t n, std::int64_t m, std::int64_t count) {
    if (lane_keys == nullptr) return n;
    std::int64_t most = 0;
    for (std::int64_t j = m / packet_size; j * packet_size < m + count; ++j) most = std::max(most, lane_keys[j]);
    return most;
}

/// For a key block [k0, k0 + n) and lane_end (ldm entries: one past the last key position each lane
/// sees), writes into lane_keys (ldm / packet_size entries) how many keys of the block each packet of
/// lanes needs, and returns it.
inline const std::int64_t* packet_key_counts(const std::int32_t* lane_end, std::int64_t ldm, std::int32_t k0,
                                             std::int64_t n, std::int64_t* lane_keys) {
    for (std::int64_t j = 0; j < ldm / packet_size; ++j) {
        std::int32_t end = 0;
        for (std::int64_t m = j * packet_size; m < (j + 1) * packet_size; ++m) end = std::max(end, lane_end[m]);
        lane_keys[j] = std::clamp<std::int64_t>(end - k0, 0, n);
    }
    return lane_keys;
}

/// St (n × ldm, row stride ld) = K (n × D, row stride k_stride) · Qt (D × ldm, row stride ld); ldm a
/// multiple of 2 packets, ld >= ldm. With lane_keys (one entry per packet of lanes), the lanes of
/// packet j only need the first lane_keys[j] keys: a column strip skips the keys none of its lanes
/// sees, and leaves those scores unwritten. With lane_max (ldm entries, -inf or a running value),
/// lane_max[m] also receives the largest score of lane m.
inline void scores_transposed(const float* K, std::int64_t k_stride, std::int64_t n, std::int64_t D, const float* Qt,
                              std::int64_t ldm, float* St, std::int64_t ld, const std::int64_t* lane_keys = nullptr,
                              float* lane_max = nullptr) {
    for (std::int64_t m = 0; m < ldm; m += 2 * packet_size) {
        const std::int64_t keys = keys_of_lanes(lane_keys, n, m, 2 * packet_size);
        float* mx = lane_max == nullptr ? nullptr : lane_max + m;
        std::int64_t i = 0;
        for (; take_full_block(keys - i); i += register_rows)
            scores_tile<register_rows>(K + i * k_stride, k_stride, D, Qt + m, ld, St + i * ld + m, ld, mx);
        for (; i + 4 <= keys; i += 4)
            scores_tile<4>(K + i * k_stride, k_stride, D, Qt + m, ld, St + i * ld + m, ld, mx);
        for (; i < keys; ++i) scores_tile<1>(K + i * k_stride, k_stride, D, Qt + m, ld, St + i * ld + m, ld, mx);
    }
}

/// acc[m][d] += Σ_x Pt[x][m] · V[x][d] for MI rows m and NP packets of columns d.
template <int MI, int NP>
inline void values_tile(const float* Pt, std::int64_t ldp, std::int64_t n, const float* V, std::int64_t v_stride,
                        float* acc, std::int64_t lda) {
    using namespace Eigen::internal;
    packet a[MI][NP];
    for (int i = 0; i < MI; ++i)
        for (int c = 0; c < NP; ++c) a[i][c] = ploadu<packet>(acc + i * lda + c * packet_size);
    for (std::int64_t x = 0; x < n; ++x) {
        packet v[NP];
        for (int c = 0; c < NP; ++c) v[c] = ploadu<packet>(V + x * v_stride + c * packet_size);
        const float* p = Pt + x * ldp;
        for (int i = 0; i < MI; ++i) {
            const packet pb = pset1<packet>(p[i]);
            for (int c = 0; c < NP; ++c) a[i][c] = pmadd(pb, v[c], a[i][c]);
        }
    }
    for (int i = 0; i < MI; ++i)
        for (int c = 0; c < NP; ++c) pstoreu(acc + i * lda + c * packet_size, a[i][c]);
}

/// acc (rows × Dp) += Ptᵀ · V for Dp a multiple of one packet. Column strips of V (Bk × 2 packets)
/// are the outer loop so that each strip stays in L1 while every row tile passes over it. With
/// lane_keys (as for scores_transposed), a row tile reads only the keys its lanes see; Pt must hold
/// zeros for its lanes up to that count.
inline void accumulate_values(const float* Pt, std::int64_t ldp, std::int64_t n, const float* V, std::int64_t v_stride,
                              std::int64_t Dp, float* acc, std::int64_t rows, const std::int64_t* lane_keys = nullptr) {
    auto strip = [&](auto columns, std::int64_t d) {
        constexpr int NP = decltype(columns)::value;
        auto tile = [&](auto tile_rows, std::int64_t m) {
            constexpr int MI = decltype(tile_rows)::value;
            const std::int64_t keys = keys_of_lanes(lane_keys, n, m, MI);
            if (keys > 0) values_tile<MI, NP>(Pt + m, ldp, keys, V + d, v_stride, acc + m * Dp + d, Dp);
        };
        std::int64_t m = 0;
        for (; take_full_block(rows - m); m += register_rows) tile(std::integral_constant<int, register_rows>{}, m);
        for (; m + 4 <= rows; m += 4) tile(std::integral_constant<int, 4>{}, m);
        for (; m + 2 <= rows; m += 2) tile(std::integral_constant<int, 2>{}, m);
        for (; m < rows; ++m) tile(std::integral_constant<int, 1>{}, m);
    };
    std::int64_t d = 0;
    for (; d + 2 * packet_size <= Dp; d += 2 * packet_size) strip(std::integral_constant<int, 2>{}, d);
    for (; d < Dp; d += packet_size) strip(std::integral_constant<int, 1>{}, d);
}

/// Per-row description of one group, laid out across tile rows so masks are computed lane-wise.
/// Positions fit exactly in float (sequences are far below 2^24 tokens).
struct group_lanes {
    aligned_floats lo[2], hi[2];     // (ldm) range bounds (inclusive); empty range: lo = 1, hi = 0
    aligned_floats type_ok[2][3];    // (ldm) 1 where a token of type t belongs to range r, else 0
    aligned_floats image_id[2];      // (ldm) image filter of range r, -1 for none
    aligned_floats uniform;          // (ldm) all-ones bits where the row's group is uniform
    bool any_uniform = false;
    int ranges = 0;                  // the most ranges of any lane's group
};

/// The float32 rows of K and V of one (sequence, kv head), at a row stride that spreads over the L1
/// sets (spread_stride), packed one key block at a time when a tile first needs it. Consecutive
/// tiles of a thread mostly share their kv head, so each K/V row is widened or copied about once
/// per thread instead of once per tile.
struct head_rows {
    std::int64_t batch = -1, kv_head = -1, length = 0, ld = 0, block = 0;
    aligned_floats rows[2];                  // (length, ld) K and V, allocated when first packed
    std::vector<std::uint8_t> packed[2];     // per key block of K and of V: rows are in place

    /// Makes this hold (b, h) of a sequence of `length` keys cut in blocks of Bk; forgets other heads.
    void bind(std::int64_t b, std::int64_t h, std::int64_t n, std::int64_t Bk, std::int64_t Dp) {
        if (b == batch && h == kv_head && n == length && Bk == block && spread_stride(Dp) == ld) return;
        batch = b;
        kv_head = h;
        length = n;
        block = Bk;
        ld = spread_stride(Dp);
        for (auto& p : packed) p.assign(static_cast<std::size_t>((n + Bk - 1) / Bk), 0);
    }
};

/// Σ V over the keys [0, k) of each token type of one (sequence, kv head), in double, for the groups
/// that are averaged_by_prefix. A type's sums are made the first time a group needs them:
/// (length + 1) × D doubles, 2 MiB for 2048 keys at D = 128.
struct type_prefix_sums {
    std::int64_t batch = -1, kv_head = -1, length = -1, dim = 0;
    std::vector<double> sums[3];  // per token type, (length + 1, dim); empty until needed
    std::vector<float> row;

    void bind(std::int64_t b, std::int64_t h, std::int64_t n, std::int64_t D) {
        if (b == batch && h == kv_head && n == length && D == dim) return;
        batch = b;
        kv_head = h;
        length = n;
        dim = D;
        for (auto& t : sums) t.clear();
    }

    template <class KV>
    const double* of_type(const tensor_ref<const KV, 4>& v, const sequence_index& seq, int t) {
        std::vector<double>& p = sums[t];
        if (p.empty()) {
            p.assign(static_cast<std::size_t>((length + 1) * dim), 0.0);
            row.resize(static_cast<std::size_t>(dim));
            for (std::int64_t k = 0; k < length; ++k) {
                const double* prev = p.data() + k * dim;
                double* next = p.data() + (k + 1) * dim;
                if (seq.types[k] != t) {
                    std::copy(prev, prev + dim, next);
                    continue;
                }
                to_float(v.ptr(batch, kv_head, k), row.data(), dim);
                for (std::int64_t d = 0; d < dim; ++d) next[d] = prev[d] + static_cast<double>(row[d]);
            }
        }
        return p.data();
    }
};

/// Scratch of one thread, reused across work items.
struct fused_scratch {
    aligned_floats qt;          // (D, ldm) scaled query rows of the tile, transposed
    aligned_floats qrows;       // (M, Dp) scaled query rows of a decode tile (at most 8 rows)
    aligned_floats st;          // (Bk, ldm) scores of one key block, transposed
    aligned_floats pt[2];       // (Bk, ldm) weights per group, transposed
    aligned_floats acc[2];      // (ldm, Dp) accumulators per group
    aligned_floats mx[2], sum[2];             // (ldm) running max and sum per group
    aligned_floats block_max;                 // key metadata of a decode block (3 Bk)
    aligned_floats scores_max;                // (ldm) largest score per lane of the current block
    aligned_floats kbuf, vbuf;  // (Dp) widened K/V row of a decode tile
    std::vector<std::int32_t> lane_end;   // (ldm) one past the last key position a tile row sees
    std::vector<std::int64_t> lane_keys;  // (ldm / packet_size) keys of the current block a packet of lanes sees
    group_lanes lanes[2];
    head_rows kv;               // K and V of the current (sequence, kv head), packed block by block
    type_prefix_sums prefix;    // per-type prefix sums of V of the current (sequence, kv head)
    std::vector<double> vsum;   // (D) Σ V over one averaged group's keys
};

/// The query rows of a tile: `count` consecutive entries of a sequence's active-row list.
struct tile_desc {
    std::int32_t batch;
    std::int32_t kv_head;
    std::int32_t first;  // index into the active-row list of the sequence
    std::int32_t count;
};

/// Row plans of every sequence of a problem, and the tiles of rows that need a softmax.
struct fused_plan {
    std::vector<sequence_index> index;              // (B) token-type index per sequence
    std::vector<std::vector<row_plan>> plans;       // (B, q_len[b]) plan of query row i
    std::vector<std::vector<std::int32_t>> active;  // (B, ·) row numbers i (not positions) that need a softmax
    std::vector<tile_desc> tiles;                   // per sequence, per kv head, consecutive active rows
};

/// Plans every row and cuts the active rows of each (sequence, kv head) into tiles of at most
/// tile_rows rows × heads per kv head.
inline fused_plan make_fused_plan(const attention_problem& p, std::int32_t tile_rows) {
    fused_plan f;
    f.plans.resize(p.batch);
    f.active.resize(p.batch);
    f.index.reserve(p.batch);
    for (std::int64_t b = 0; b < p.batch; ++b) {
        f.index.emplace_back(p, b);
        f.plans[b].resize(p.seq_q_len[b]);
        for (std::int32_t i = 0; i < p.seq_q_len[b]; ++i) {
            f.plans[b][i] = plan_row(p, f.index[b], static_cast<std::int32_t>(p.query_position(b, i)));
            if (f.plans[b][i].needs_softmax()) f.active[b].push_back(i);
        }
    }
    const std::int32_t rows_per_tile = std::max<std::int32_t>(1, tile_rows / static_cast<std::int32_t>(p.group_size()));
    for (std::int64_t b = 0; b < p.batch; ++b) {
        const auto rows = static_cast<std::int32_t>(f.active[b].size());
        for (std::int64_t hk = 0; hk < p.kv_heads; ++hk)
            for (std::int32_t first = 0; first < rows; first += rows_per_tile)
                f.tiles.push_back({static_cast<std::int32_t>(b), static_cast<std::int32_t>(hk), first,
                                   std::min(rows_per_tile, rows - first)});
    }
    return f;
}

/// The plan of row r (0 <= r < tile.count) of a tile.
inline const row_plan& tile_row_plan(const fused_plan& f, const tile_desc& tile, std::int32_t r) {
    return f.plans[tile.batch][f.active[tile.batch][tile.first + r]];
}

/// True for a uniform group whose keys are whole position ranges of some token types (no image
/// filter): its term is an average of V that the prefill takes from per-type prefix sums of V
/// (type_prefix_sums) instead of passing over its keys. These are mmca_reference's rows before the
/// first image (or the first text), whose uniform group reaches to the end of the sequence.
inline bool averaged_by_prefix(const key_group& g) {
    if (!g.uniform) return false;
    for (int r = 0; r < g.ranges; ++r)
        if (g.range[r].image_id >= 0) return false;
    return true;
}

/// The key positions [*lo, *hi] that some row of the tile can see (*lo > *hi when none); with
/// skip_averaged, groups that are averaged_by_prefix do not count.
inline void tile_key_span(const fused_plan& f, const tile_desc& tile, std::int32_t* lo, std::int32_t* hi,
                          bool skip_averaged = false) {
    *lo = f.index[tile.batch].length;
    *hi = -1;
    for (std::int32_t r = 0; r < tile.count; ++r)
        for (const key_group& g : tile_row_plan(f, tile, r).group) {
            if (skip_averaged && averaged_by_prefix(g)) continue;
            for (int x = 0; x < g.ranges; ++x) {
                *lo = std::min(*lo, g.range[x].lo);
                *hi = std::max(*hi, g.range[x].hi);
            }
        }
}

/// How the rows of a tile meet the keys [k0, k1): used[g] when some row's group g sees a key of the
/// block, masked[g] when some row's group g does not see all of it, need_scores when a non-uniform
/// group sees a key (uniform groups take score 0).
struct block_use {
    bool used[2] = {false, false};
    bool masked[2] = {false, false};
    bool need_scores = false;
    bool any() const { return used[0] || used[1]; }
    /// True when some used group does not see the whole block: the block cuts through the tile's
    /// rows (the causal diagonal, the edge of an image), and rows see different key counts of it.
    bool cut() const { return (used[0] && masked[0]) || (used[1] && masked[1]); }
};

inline block_use classify_block(const fused_plan& f, const tile_desc& tile, std::int32_t k0, std::int32_t k1,
                                bool skip_averaged = false) {
    block_use u;
    const sequence_index& seq = f.index[tile.batch];
    for (std::int32_t r = 0; r < tile.count; ++r) {
        const row_plan& plan = tile_row_plan(f, tile, r);
        for (int g = 0; g < 2; ++g) {
            const bool skip = plan.group[g].empty() || (skip_averaged && averaged_by_prefix(plan.group[g]));
            const block_cover c = skip ? block_cover::none : cover(seq, plan.group[g], k0, k1);
            u.masked[g] |= c != block_cover::full;
            if (c != block_cover::none) {
                u.used[g] = true;
                u.need_scores |= !plan.group[g].uniform;
            }
        }
    }
    return u;
}

/// True where K/V rows of float storage can be read in place by the micro-kernels: whole packets,
/// and a row stride that spreads over the L1 sets.
template <class KV>
bool rows_in_place(const tensor_ref<const KV, 4>& t, std::int64_t D, std::int64_t Dp) {
    return std::is_same_v<KV, float> && D == Dp && spread_stride(t.strides[2]) == t.strides[2];
}

/// Widens (or copies) rows k0 .. k0 + n of a (b, h) slice of K or V into dst, rows of stride ld with
/// the columns past D zeroed.
template <class KV>
void widen_rows(const tensor_ref<const KV, 4>& t, std::int64_t b, std::int64_t h, std::int64_t k0, std::int64_t n,
                std::int64_t D, std::int64_t ld, float* dst) {
    for (std::int64_t r = 0; r < n; ++r) {
        to_float(t.ptr(b, h, k0 + r), dst + r * ld, D);
        std::fill(dst + r * ld + D, dst + (r + 1) * ld, 0.0f);
    }
}

/// Pointer to a (n × D) block of K or V as float32 rows of stride *stride: in place where
/// rows_in_place, else widened/copied into buf (rows of spread_stride(Dp)).
template <class KV>
const float* block_rows(const tensor_ref<const KV, 4>& t, std::int64_t b, std::int64_t h, std::int64_t k0,
                        std::int64_t n, std::int64_t D, std::int64_t Dp, aligned_floats& buf, std::int64_t* stride) {
    if constexpr (std::is_same_v<KV, float>) {
        if (rows_in_place(t, D, Dp)) {
            *stride = t.strides[2];
            return t.ptr(b, h, k0);
        }
    }
    const std::int64_t ld = spread_stride(Dp);
    buf.resize(static_cast<std::size_t>(n * ld));
    widen_rows(t, b, h, k0, n, D, ld, buf.data());
    *stride = ld;
    return buf.data();
}

/// As block_rows, for the key block starting at k0 (a multiple of the bound block size) of the head
/// bound to hr; which = 0 for K, 1 for V. The block is packed the first time it is asked for.
template <class KV>
const float* head_block_rows(const tensor_ref<const KV, 4>& t, int which, std::int64_t k0, std::int64_t n,
                             std::int64_t D, std::int64_t Dp, head_rows& hr, std::int64_t* stride) {
    if constexpr (std::is_same_v<KV, float>) {
        if (rows_in_place(t, D, Dp)) {
            *stride = t.strides[2];
            return t.ptr(hr.batch, hr.kv_head, k0);
        }
    }
    aligned_floats& rows = hr.rows[which];
    if (static_cast<std::int64_t>(rows.size()) < hr.length * hr.ld)
        rows.resize(static_cast<std::size_t>(hr.length * hr.ld));
    float* dst = rows.data() + k0 * hr.ld;
    std::uint8_t& packed = hr.packed[which][static_cast<std::size_t>(k0 / hr.block)];
    if (!packed) {
        widen_rows(t, hr.batch, hr.kv_head, k0, n, D, hr.ld, dst);
        packed = 1;
    }
    *stride = hr.ld;
    return dst;
}

inline void fill_lanes(group_lanes& lanes, std::int64_t ldm) {
    for (int r = 0; r < 2; ++r) {
        lanes.lo[r].assign(ldm, 1.0f);
        lanes.hi[r].assign(ldm, 0.0f);
        lanes.image_id[r].assign(ldm, -1.0f);
        for (auto& t : lanes.type_ok[r]) t.assign(ldm, 0.0f);
    }
    lanes.uniform.assign(ldm, 0.0f);
    lanes.any_uniform = false;
    lanes.ranges = 0;
}

inline void set_lane(group_lanes& lanes, std::int64_t m, const key_group& g) {
    lanes.ranges = std::max<int>(lanes.ranges, g.ranges);
    for (int r = 0; r < g.ranges; ++r) {
        const key_range& kr = g.range[r];
        lanes.lo[r][m] = static_cast<float>(kr.lo);
        lanes.hi[r][m] = static_cast<float>(kr.hi);
        lanes.image_id[r][m] = static_cast<float>(kr.image_id);
        for (int t = 0; t < 3; ++t) lanes.type_ok[r][t][m] = ((kr.types >> t) & 1u) ? 1.0f : 0.0f;
    }
    if (g.uniform) {
        const std::uint32_t ones = 0xffffffffu;
        std::memcpy(&lanes.uniform[m], &ones, sizeof ones);
        lanes.any_uniform = true;
    }
}

/// The group description of the lanes m .. m + packet_size, loaded once for a pass over the keys.
struct lane_packet {
    packet lo[2], hi[2], id[2], type_ok[2][3];
    int ranges = 0;

    lane_packet(const group_lanes& lanes, std::int64_t m) : ranges(lanes.ranges) {
        using namespace Eigen::internal;
        for (int r = 0; r < ranges; ++r) {
            lo[r] = ploadu<packet>(lanes.lo[r].data() + m);
            hi[r] = ploadu<packet>(lanes.hi[r].data() + m);
            id[r] = ploadu<packet>(lanes.image_id[r].data() + m);
            for (int t = 0; t < 3; ++t)
                type_ok[r][t] = pcmp_lt(pset1<packet>(0.0f), ploadu<packet>(lanes.type_ok[r][t].data() + m));
        }
    }

    /// All-ones bits in the lanes whose group contains the key at position kpos (broadcast) of type t
    /// and image index kid (broadcast).
    packet members(int t, packet kpos, packet kid) const {
        using namespace Eigen::internal;
        const packet zero = pset1<packet>(0.0f);
        packet member = pcmp_lt(zero, zero);  // all false
        for (int r = 0; r < ranges; ++r) {
            packet in = pand(pand(pcmp_le(lo[r], kpos), pcmp_le(kpos, hi[r])), type_ok[r][t]);
            in = pand(in, por(pcmp_lt(id[r], zero), pcmp_eq(id[r], kid)));
            member = por(member, in);
        }
        return member;
    }
};

/// All-ones bits in the lanes m .. m + packet_size whose group contains the key at position kpos
/// (broadcast) of type t and image index kid (broadcast).
inline packet lane_members(const group_lanes& lanes, std::int64_t m, int t, packet kpos, packet kid) {
    return lane_packet(lanes, m).members(t, kpos, kid);
}

/// One online-softmax step of a group over a key block, one packet of lanes at a time.
/// St/Pt are (n × ldm) of row stride ld; mx/sum (ldm) are updated; acc rows are rescaled; Pt receives
/// the weights. With lane_keys (see scores_transposed), the lanes of packet j read only the first
/// lane_keys[j] scores and take weight 0 for the other keys of the block. scores_max, when given, is
/// each lane's largest score of the block (from scores_transposed): an unmasked block without
/// uniform lanes then goes straight from St to the weights.
inline void softmax_block(const float* St, float* Pt, std::int64_t n, std::int64_t ldm, std::int64_t ld, bool masked,
                          const group_lanes& lanes, const sequence_index& seq, std::int64_t k0, float* mx, float* sum,
                          float* acc, std::int64_t Dp, const std::int64_t* lane_keys = nullptr,
                          const float* scores_max = nullptr) {
    using namespace Eigen::internal;
    const packet neg_inf = pset1<packet>(-std::numeric_limits<float>::infinity());
    const packet zero = pset1<packet>(0.0f);
    const bool direct = scores_max != nullptr && !masked && !lanes.any_uniform;
    const std::int8_t* types = seq.types + k0;
    const std::int32_t* image_ids = seq.image_ids + k0;
    for (std::int64_t m = 0; m < ldm; m += packet_size) {
        const std::int64_t keys = lane_keys == nullptr ? n : lane_keys[m / packet_size];
        // Where the exponentials read the (masked) scores from, and their block maximum.
        const float* scores = Pt;
        packet block_max = neg_inf;
        if (direct) {
            scores = St;
            block_max = ploadu<packet>(scores_max + m);
        } else if (keys > 0) {
            const lane_packet group(lanes, m);
            const packet uniform = ploadu<packet>(lanes.uniform.data() + m);
            for (std::int64_t x = 0; x < keys; ++x) {
                packet s = ploadu<packet>(St + x * ld + m);
                if (lanes.any_uniform) s = pselect(uniform, zero, s);
                if (masked) {
                    const packet kpos = pset1<packet>(static_cast<float>(k0 + x));
                    const packet kid = pset1<packet>(static_cast<float>(image_ids[x]));
                    s = pselect(group.members(types[x], kpos, kid), s, neg_inf);
                }
                pstoreu(Pt + x * ld + m, s);
                block_max = pmax(block_max, s);
            }
        }
        // New running max; rows that have seen no key yet keep -inf and use 0 as the shift.
        const packet old_max = ploadu<packet>(mx + m);
        const packet new_max = pmax(old_max, block_max);
        const packet shift = pselect(pcmp_eq(new_max, neg_inf), zero, new_max);
        pstoreu(mx + m, new_max);
        const packet alpha = exp_or_zero(psub(old_max, shift));  // 0 when old_max = -inf
        float a[packet_size];
        pstoreu(a, alpha);
        for (int i = 0; i < packet_size; ++i)
            if (a[i] != 1.0f) {
                float* row = acc + (m + i) * Dp;
                for (std::int64_t d = 0; d < Dp; ++d) row[d] *= a[i];
            }
        packet total = pmul(ploadu<packet>(sum + m), alpha);
        for (std::int64_t x = 0; x < keys; ++x) {
            const packet s = ploadu<packet>(scores + x * ld + m);
            const packet p = exp_or_zero(psub(s, shift));
            pstoreu(Pt + x * ld + m, p);
            total = padd(total, p);
        }
        for (std::int64_t x = keys; x < n; ++x) pstoreu(Pt + x * ld + m, zero);
        pstoreu(sum + m, total);
    }
}

/// Float copies of the key metadata of one block, padded to whole packets: position (-1 in the
/// padding, so no range holds it), token type and image index.
inline void block_key_info(const sequence_index& seq, std::int64_t k0, std::int64_t n, std::int64_t np, float* pos,
                           float* type, float* id) {
    for (std::int64_t x = 0; x < np; ++x) {
        const bool real = x < n;
        pos[x] = real ? static_cast<float>(k0 + x) : -1.0f;
        type[x] = real ? static_cast<float>(seq.types[k0 + x]) : 0.0f;
        id[x] = real ? static_cast<float>(seq.image_ids[k0 + x]) : -1.0f;
    }
}

/// All-ones bits in the keys x .. x + packet_size of a block that belong to group g (keys across
/// lanes, the transpose of lane_members).
inline packet key_members(const key_group& g, const float* pos, const float* type, const float* id, std::int64_t x) {
    using namespace Eigen::internal;
    const packet kpos = ploadu<packet>(pos + x), ktype = ploadu<packet>(type + x), kid = ploadu<packet>(id + x);
    const packet none = pcmp_lt(kpos, kpos);
    packet member = none;
    for (int r = 0; r < g.ranges; ++r) {
        const key_range& kr = g.range[r];
        packet in = pand(pcmp_le(pset1<packet>(static_cast<float>(kr.lo)), kpos),
                         pcmp_le(kpos, pset1<packet>(static_cast<float>(kr.hi))));
        packet typed = none;
        for (int t = 1; t < 3; ++t)
            if ((kr.types >> t) & 1u) typed = por(typed, pcmp_eq(ktype, pset1<packet>(static_cast<float>(t))));
        in = pand(in, typed);
        if (kr.image_id >= 0) in = pand(in, pcmp_eq(kid, pset1<packet>(static_cast<float>(kr.image_id))));
        member = por(member, in);
    }
    return member;
}

/// Σ_d a[d]·b[d] over Dp (a multiple of one packet) elements; a may be in storage type.
template <class T>
inline float dot_packets(const T* a, const float* b, std::int64_t Dp) {
    using namespace Eigen::internal;
    packet s0 = pset1<packet>(0.0f), s1 = s0;
    std::int64_t d = 0;
    for (; d + 2 * packet_size <= Dp; d += 2 * packet_size) {
        s0 = pmadd(load_float_packet(a + d), ploadu<packet>(b + d), s0);
        s1 = pmadd(load_float_packet(a + d + packet_size), ploadu<packet>(b + d + packet_size), s1);
    }
    if (d < Dp) s0 = pmadd(load_float_packet(a + d), ploadu<packet>(b + d), s0);
    return predux(padd(s0, s1));
}

/// out[0] = Σ_d a0[d]·b[d], out[1] = Σ_d a1[d]·b[d] over Dp (a multiple of one packet) elements,
/// each packet of b loaded once; a0 and a1 may be in storage type.
template <class T>
inline void dot2_packets(const T* a0, const T* a1, const float* b, std::int64_t Dp, float* out) {
    using namespace Eigen::internal;
    packet s0 = pset1<packet>(0.0f), s1 = s0, t0 = s0, t1 = s0;
    std::int64_t d = 0;
    for (; d + 2 * packet_size <= Dp; d += 2 * packet_size) {
        const packet b0 = ploadu<packet>(b + d), b1 = ploadu<packet>(b + d + packet_size);
        s0 = pmadd(load_float_packet(a0 + d), b0, s0);
        t0 = pmadd(load_float_packet(a1 + d), b0, t0);
        s1 = pmadd(load_float_packet(a0 + d + packet_size), b1, s1);
        t1 = pmadd(load_float_packet(a1 + d + packet_size), b1, t1);
    }
    if (d < Dp) {
        const packet b0 = ploadu<packet>(b + d);
        s0 = pmadd(load_float_packet(a0 + d), b0, s0);
        t0 = pmadd(load_float_packet(a1 + d), b0, t0);
    }
    out[0] = predux(padd(s0, s1));
    out[1] = predux(padd(t0, t1));
}

/// acc[d] += w0 · row0[d] + w1 · row1[d] over Dp (a multiple of one packet) elements, acc loaded
/// and stored once for both rows; the rows may be in storage type.
template <class T>
inline void axpy2_packets(float w0, const T* row0, float w1, const T* row1, float* acc, std::int64_t Dp) {
    using namespace Eigen::internal;
    const packet c0 = pset1<packet>(w0), c1 = pset1<packet>(w1);
    for (std::int64_t d = 0; d < Dp; d += packet_size) {
        const packet a = pmadd(c0, load_float_packet(row0 + d), ploadu<packet>(acc + d));
        pstoreu(acc + d, pmadd(c1, load_float_packet(row1 + d), a));
    }
}

/// acc[d] += weight · row[d] over Dp (a multiple of one packet) elements; row may be in storage type.
template <class T>
inline void axpy_packets(float weight, const T* row, float* acc, std::int64_t Dp) {
    using namespace Eigen::internal;
    const packet c = pset1<packet>(weight);
    for (std::int64_t d = 0; d < Dp; d += packet_size)
        pstoreu(acc + d, pmadd(c, load_float_packet(row + d), ploadu<packet>(acc + d)));
}

/// A bfloat16 row read two packets at a time: 2·packet_size values are packet_size 32-bit lanes
/// whose low halves (the even elements) widen with one shift and whose high halves (the odd
/// elements) with one mask, with no shuffle. Dot products and accumulators of such rows work in
/// the de-interleaved order (per group of 2·packet_size elements: the even ones, then the odd
/// ones; `deinterleave_pairs` / `interleave_pairs`).
struct bf16_pairs {
    const bfloat16* p;
};

#if defined(EIGEN_VECTORIZE_AVX512)
#define MMCA_CPU_HAVE_BF16_PAIRS 1
inline void load_bf16_pairs(const bfloat16* p, packet& even, packet& odd) {
    const __m512i x = _mm512_loadu_si512(p);
    even = _mm512_castsi512_ps(_mm512_slli_epi32(x, 16));
    odd = _mm512_castsi512_ps(_mm512_and_si512(x, _mm512_set1_epi32(static_cast<int>(0xFFFF0000u))));
}
#elif defined(EIGEN_VECTORIZE_AVX) && defined(__AVX2__)
#define MMCA_CPU_HAVE_BF16_PAIRS 1
inline void load_bf16_pairs(const bfloat16* p, packet& even, packet& odd) {
    const __m256i x = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
    even = _mm256_castsi256_ps(_mm256_slli_epi32(x, 16));
    odd = _mm256_castsi256_ps(_mm256_and_si256(x, _mm256_set1_epi32(static_cast<int>(0xFFFF0000u))));
}
#else
#define MMCA_CPU_HAVE_BF16_PAIRS 0
#endif

#if MMCA_CPU_HAVE_BF16_PAIRS
/// Dp a multiple of 2 packets; b in de-interleaved order.
inline float dot_packets(bf16_pairs a, const float* b, std::int64_t Dp) {
    using namespace Eigen::internal;
    packet s0 = pset1<packet>(0.0f), s1 = s0, e, o;
    for (std::int64_t d = 0; d < Dp; d += 2 * packet_size) {
        load_bf16_pairs(a.p + d, e, o);
        s0 = pmadd(e, ploadu<packet>(b + d), s0);
        s1 = pmadd(o, ploadu<packet>(b + d + packet_size), s1);
    }
    return predux(padd(s0, s1));
}

inline void dot2_packets(bf16_pairs a0, bf16_pairs a1, const float* b, std::int64_t Dp, float* out) {
    using namespace Eigen::internal;
    packet s0 = pset1<packet>(0.0f), s1 = s0, t0 = s0, t1 = s0, e, o;
    for (std::int64_t d = 0; d < Dp; d += 2 * packet_size) {
        const packet b0 = ploadu<packet>(b + d), b1 = ploadu<packet>(b + d + packet_size);
        load_bf16_pairs(a0.p + d, e, o);
        s0 = pmadd(e, b0, s0);
        s1 = pmadd(o, b1, s1);
        load_bf16_pairs(a1.p + d, e, o);
        t0 = pmadd(e, b0, t0);
        t1 = pmadd(o, b1, t1);
    }
    out[0] = predux(padd(s0, s1));
    out[1] = predux(padd(t0, t1));
}

/// acc in de-interleaved order.
inline void axpy_packets(float weight, bf16_pairs row, float* acc, std::int64_t Dp) {
    using namespace Eigen::internal;
    const packet c = pset1<packet>(weight);
    packet e, o;
    for (std::int64_t d = 0; d < Dp; d += 2 * packet_size) {
        load_bf16_pairs(row.p + d, e, o);
        pstoreu(acc + d, pmadd(c, e, ploadu<packet>(acc + d)));
        pstoreu(acc + d + packet_size, pmadd(c, o, ploadu<packet>(acc + d + packet_size)));
    }
}

inline void axpy2_packets(float w0, bf16_pairs row0, float w1, bf16_pairs row1, float* acc, std::int64_t Dp) {
    using namespace Eigen::internal;
    const packet c0 = pset1<packet>(w0), c1 = pset1<packet>(w1);
    packet e0, o0, e1, o1;
    for (std::int64_t d = 0; d < Dp; d += 2 * packet_size) {
        load_bf16_pairs(row0.p + d, e0, o0);
        load_bf16_pairs(row1.p + d, e1, o1);
        pstoreu(acc + d, pmadd(c1, e1, pmadd(c0, e0, ploadu<packet>(acc + d))));
        pstoreu(acc + d + packet_size, pmadd(c1, o1, pmadd(c0, o0, ploadu<packet>(acc + d + packet_size))));
    }
}
#endif

/// Reorders n floats (a multiple of 2·packet_size) in place between the natural order and the
/// de-interleaved order of bf16_pairs; tmp holds 2·packet_size floats.
inline void deinterleave_pairs(float* x, std::int64_t n, float* tmp) {
    for (std::int64_t g = 0; g < n; g += 2 * packet_size) {
        for (int j = 0; j < packet_size; ++j) {
            tmp[j] = x[g + 2 * j];
            tmp[packet_size + j] = x[g + 2 * j + 1];
        }
        std::copy(tmp, tmp + 2 * packet_size, x + g);
    }
}
inline void interleave_pairs(float* x, std::int64_t n, float* tmp) {
    for (std::int64_t g = 0; g < n; g += 2 * packet_size) {
        for (int j = 0; j < packet_size; ++j) {
            tmp[2 * j] = x[g + j];
            tmp[2 * j + 1] = x[g + packet_size + j];
        }
        std::copy(tmp, tmp + 2 * packet_size, x + g);
    }
}

/// Asks for the cache lines of `bytes` bytes from p ahead of their use.
inline void prefetch_row(const void* p, std::int64_t bytes) {
    const char* c = static_cast<const char*>(p);
    for (std::int64_t o = 0; o < bytes; o += 64) Eigen::internal::prefetch(c + o);
}

/// The float32 row r of a (b, h) slice of K or V with Dp readable floats: in place for float storage
/// with D == Dp, else widened (and zero-padded) into buf.
template <class KV>
const float* float_row(const tensor_ref<const KV, 4>& t, std::int64_t b, std::int64_t h, std::int64_t r,
                       std::int64_t D, std::int64_t Dp, float* buf) {
    if constexpr (std::is_same_v<KV, float>) {
        if (D == Dp) return t.ptr(b, h, r);
    }
    to_float(t.ptr(b, h, r), buf, D);
    std::fill(buf + D, buf + Dp, 0.0f);
    return buf;
}

/// One online-softmax step of the rows of a decode tile over a key block whose scores are in st
/// (M rows of stride Bk, keys across lanes, -inf past the block's n keys): masks, new maxima, the
/// rescale of acc and sum, and the weights into pt (M rows of stride Bk).
inline void decode_softmax(const float* st, float* const* pt, std::int64_t k0, std::int64_t n, std::int64_t M,
                           std::int64_t Bk, const block_use& use, const row_plan* const* row_plans, fused_scratch& w,
                           const sequence_index& seq, std::int64_t Dp) {
    using namespace Eigen::internal;
    const std::int64_t np = round_up(n, packet_size);
    const packet neg_inf = pset1<packet>(-std::numeric_limits<float>::infinity());
    const packet zero = pset1<packet>(0.0f);
    const bool any_masked = use.cut();
    float* pos = w.block_max.data();
    float* type = pos + Bk;
    float* id = type + Bk;
    if (any_masked) block_key_info(seq, k0, n, np, pos, type, id);
    for (int g = 0; g < 2; ++g) {
        if (!use.used[g]) continue;
        for (std::int64_t m = 0; m < M; ++m) {
            const key_group& grp = row_plans[m]->group[g];
            float* p = pt[g] + m * Bk;
            if (grp.empty()) {
                std::fill(p, p + np, 0.0f);
                continue;
            }
            const float* s = st + m * Bk;
            packet bmax = neg_inf;
            for (std::int64_t x = 0; x < np; x += packet_size) {
                packet sx = ploadu<packet>(s + x);
                if (grp.uniform) sx = pselect(pcmp_eq(sx, neg_inf), neg_inf, zero);
                if (use.masked[g]) sx = pselect(key_members(grp, pos, type, id, x), sx, neg_inf);
                pstoreu(p + x, sx);
                bmax = pmax(bmax, sx);
            }
            const float old_max = w.mx[g][m];
            const float new_max = std::max(old_max, predux_max(bmax));
            const float shift = new_max == -std::numeric_limits<float>::infinity() ? 0.0f : new_max;
            const float alpha = std::exp(old_max - shift);  // 0 when old_max = -inf
            w.mx[g][m] = new_max;
            if (alpha != 1.0f) {
                w.sum[g][m] *= alpha;
                float* a = w.acc[g].data() + m * Dp;
                for (std::int64_t d = 0; d < Dp; ++d) a[d] *= alpha;
            }
            const packet sh = pset1<packet>(shift);
            packet total = zero;
            for (std::int64_t x = 0; x < np; x += packet_size) {
                const packet sx = ploadu<packet>(p + x);
                const packet e = exp_or_zero(psub(sx, sh));
                pstoreu(p + x, e);
                total = padd(total, e);
            }
            w.sum[g][m] += predux(total);
        }
    }
}

/// Every key block of a tile of at most 8 query rows (a decode step, or the last rows of a chunk).
/// Memory-bound: each K and V row is read once and used by every row of the tile. The blocks are
/// software-pipelined so that K and V stream together: while the scores of block j are computed,
/// V of block j-1 (whose weights are known) is accumulated; the softmax of block j then rescales
/// acc, which already holds every block before j. Scores and weights are kept per row with keys
/// across SIMD lanes (rows of stride Bk), so masks, maxima and exponentials take one packet per
/// packet_size keys.
template <class KV>
void decode_tile(const tensor_ref<const KV, 4>& k, const tensor_ref<const KV, 4>& v, const fused_plan& fp,
                 const tile_desc& tile, std::int32_t lo, std::int32_t hi, std::int64_t Bk, std::int64_t D,
                 std::int64_t Dp, std::int64_t M, const row_plan* const* row_plans, fused_scratch& w) {
    using namespace Eigen::internal;
    const std::int64_t b = tile.batch, hk = tile.kv_head;
    const sequence_index& seq = fp.index[b];
    w.kbuf.resize(static_cast<std::size_t>(Dp));
    w.vbuf.resize(static_cast<std::size_t>(Dp));
    w.block_max.resize(static_cast<std::size_t>(3 * Bk));
    w.st.resize(static_cast<std::size_t>(M * Bk));
    for (auto& pt : w.pt) pt.resize(static_cast<std::size_t>(2 * M * Bk));  // two blocks in flight

    struct block {
        std::int64_t k0 = 0, n = 0;  // n = 0: nothing to accumulate
        block_use use;
    };
    // A single row reads K and V in place, widening in registers; several rows widen each K/V row
    // once into an L1 buffer.
    const bool direct = M == 1 && D == Dp;
    // Rows are asked for a few rows ahead of use: the cores' own prefetchers leave part of the
    // bandwidth of two interleaved streams unused while the widening and FMAs run.
    constexpr std::int64_t prefetch_rows = 8;
    const std::int64_t row_bytes = D * static_cast<std::int64_t>(sizeof(KV));
    // row(t, r): how the direct path reads row r of K or V (a pointer, or bf16_pairs).
    auto run_blocks = [&](auto row) {
        block prev;
        int parity = 0;
        for (std::int64_t k0 = (lo / Bk) * Bk;; k0 += Bk) {
            block cur;
            if (k0 <= hi) {
                cur.k0 = k0;
                cur.use = classify_block(fp, tile, static_cast<std::int32_t>(k0),
                                         static_cast<std::int32_t>(std::min<std::int64_t>(k0 + Bk, seq.length)));
                if (cur.use.any()) cur.n = std::min<std::int64_t>(Bk, seq.length - k0);
            } else if (prev.n == 0) {
                break;
            }
            float* st = w.st.data();
            const std::int64_t np = round_up(cur.n, packet_size);
            for (std::int64_t m = 0; m < M; ++m) {
                std::fill(st + m * Bk + cur.n, st + m * Bk + np, -std::numeric_limits<float>::infinity());
                if (!cur.use.need_scores) std::fill(st + m * Bk, st + m * Bk + cur.n, 0.0f);
            }
            float* prev_pt[2] = {w.pt[0].data() + (parity ^ 1) * M * Bk, w.pt[1].data() + (parity ^ 1) * M * Bk};
            const std::int64_t n_scores = cur.use.need_scores ? cur.n : 0;
            // Scores of keys x, x + 1 of the current block (count 1 or 2).
            auto score_keys = [&](std::int64_t x, std::int64_t count) {
                if (direct && count == 2) {  // one row: widen in registers, q read once for both keys
                    dot2_packets(row(k, cur.k0 + x), row(k, cur.k0 + x + 1), w.qrows.data(), Dp, st + x);
                    return;
                }
                for (std::int64_t j = x; j < x + count; ++j) {
                    if (direct) {
                        st[j] = dot_packets(row(k, cur.k0 + j), w.qrows.data(), Dp);
                    } else {  // several rows: widen once
                        const float* wide = float_row(k, b, hk, cur.k0 + j, D, Dp, w.kbuf.data());
                        for (std::int64_t m = 0; m < M; ++m)
                            st[m * Bk + j] = dot_packets(wide, w.qrows.data() + m * Dp, Dp);
                    }
                }
            };
            // V of keys x, x + 1 of the previous block into the accumulators (rows nobody weighs are
            // not read).
            auto add_values = [&](std::int64_t x, std::int64_t count) {
                if (direct) {
                    const auto row0 = row(v, prev.k0 + x);
                    const auto row1 = row(v, prev.k0 + x + count - 1);  // row0 again when count is 1
                    for (int g = 0; g < 2; ++g) {
                        if (!prev.use.used[g]) continue;
                        const float w0 = prev_pt[g][x], w1 = count == 2 ? prev_pt[g][x + 1] : 0.0f;
                        if (w0 != 0.0f && w1 != 0.0f)
                            axpy2_packets(w0, row0, w1, row1, w.acc[g].data(), Dp);
                        else if (w0 != 0.0f)
                            axpy_packets(w0, row0, w.acc[g].data(), Dp);
                        else if (w1 != 0.0f)
                            axpy_packets(w1, row1, w.acc[g].data(), Dp);
                    }
                    return;
                }
                for (std::int64_t j = x; j < x + count; ++j) {
                    bool any = false;
                    for (int g = 0; g < 2; ++g)
                        for (std::int64_t m = 0; m < M && prev.use.used[g]; ++m) any |= prev_pt[g][m * Bk + j] != 0.0f;
                    if (!any) continue;
                    const float* wide = float_row(v, b, hk, prev.k0 + j, D, Dp, w.vbuf.data());
                    for (int g = 0; g < 2; ++g) {
                        if (!prev.use.used[g]) continue;
                        for (std::int64_t m = 0; m < M; ++m) {
                            const float weight = prev_pt[g][m * Bk + j];
                            if (weight != 0.0f) axpy_packets(weight, wide, w.acc[g].data() + m * Dp, Dp);
                        }
                    }
                }
            };
            for (std::int64_t x = 0; x < std::max(n_scores, prev.n); x += 2) {
                for (std::int64_t j = x; j < x + 2; ++j) {
                    if (j + prefetch_rows < n_scores) prefetch_row(k.ptr(b, hk, cur.k0 + j + prefetch_rows), row_bytes);
                    if (j + prefetch_rows < prev.n) prefetch_row(v.ptr(b, hk, prev.k0 + j + prefetch_rows), row_bytes);
                }
                if (x < n_scores) score_keys(x, std::min<std::int64_t>(2, n_scores - x));
                if (x < prev.n) add_values(x, std::min<std::int64_t>(2, prev.n - x));
            }
            if (cur.n > 0) {
                float* cur_pt[2] = {w.pt[0].data() + parity * M * Bk, w.pt[1].data() + parity * M * Bk};
                decode_softmax(st, cur_pt, cur.k0, cur.n, M, Bk, cur.use, row_plans, w, seq, Dp);
            }
            prev = cur;
            parity ^= 1;
        }
    };
#if MMCA_CPU_HAVE_BF16_PAIRS
    if constexpr (std::is_same_v<KV, bfloat16>) {
        if (direct && D % (2 * packet_size) == 0) {
            float tmp[2 * packet_size];
            deinterleave_pairs(w.qrows.data(), D, tmp);
            run_blocks([&](const tensor_ref<const KV, 4>& t, std::int64_t r) { return bf16_pairs{t.ptr(b, hk, r)}; });
            for (int g = 0; g < 2; ++g) interleave_pairs(w.acc[g].data(), D, tmp);
            return;
        }
    }
#endif
    run_blocks([&](const tensor_ref<const KV, 4>& t, std::int64_t r) { return t.ptr(b, hk, r); });
}

}  // namespace detail

/// Computes attention for a checked problem with the fused kernel. out must have q's shape.
/// When stats is given (shapes checked by check_attention_stats), it receives each row's softmax
/// statistics and per-group outputs for the backward (mmca/attention/stats.hpp).
template <class KV>
void attention_fused_forward(const attention_problem& p, tensor_ref<const float, 4> q, tensor_ref<const KV, 4> k,
                             tensor_ref<const KV, 4> v, tensor_ref<float, 4> out, int num_threads = 0,
                             const fused_attention_config& config = {}, const attention_stats* stats = nullptr) {
    using namespace detail;
    const std::int64_t D = p.head_dim;
    const std::int64_t Dp = round_up(D, packet_size);
    const std::int64_t G = p.group_size();
    constexpr float neg_inf = -std::numeric_limits<float>::infinity();

    // Row plans per sequence, the rows that need a softmax, and their tiles.
    const fused_plan fp = make_fused_plan(p, config.tile_rows);
    const auto& index = fp.index;
    const auto& plans = fp.plans;
    const auto& active = fp.active;
    const auto& tiles = fp.tiles;

    // Rows without a softmax: padding and out-of-length rows are 0, self-only rows copy V_j.
    parallel_for(p.batch * p.q_heads, num_threads, [&](std::int64_t item, int) {
        const std::int64_t b = item / p.q_heads, h = item % p.q_heads;
        for (std::int64_t i = 0; i < p.q_len; ++i) {
            const bool planned = i < p.seq_q_len[b];
            if (planned && plans[b][i].needs_softmax()) continue;
            float* o = out.ptr(b, h, i);
            if (planned && plans[b][i].self_term)
                to_float(v.ptr(b, h / G, plans[b][i].position), o, D);
            else
                std::fill(o, o + D, 0.0f);
            if (stats) {
                for (std::int64_t g = 0; g < 2; ++g) {
                    stats->row_max(b, h, i, g) = neg_inf;
                    stats->row_sum(b, h, i, g) = 0.0f;
                    std::fill(stats->group_out.ptr(b, h, i, g), stats->group_out.ptr(b, h, i, g) + D, 0.0f);
                }
            }
        }
    });

    const int threads = resolve_num_threads(num_threads);
    std::vector<fused_scratch> scratch(threads);

    parallel_for(static_cast<std::int64_t>(tiles.size()), threads, [&](std::int64_t t, int thread) {
        const tile_desc& tile = tiles[t];
        const std::int64_t b = tile.batch, hk = tile.kv_head;
        const sequence_index& seq = index[b];
        const std::int32_t R = tile.count;
        const std::int64_t M = R * G;
        const bool small = M <= 8;  // decode steps: matrix-vector products
        const std::int64_t ldm = round_up(M, small ? packet_size : 2 * packet_size);
        const std::int64_t lds = spread_stride(ldm);  // row stride of qt, st and pt
        fused_scratch& w = scratch[thread];
        // Tile row m holds query head hk*G + m / R and row active[first + m % R].
        auto row_index = [&](std::int64_t m) { return active[b][tile.first + m % R]; };
        auto plan_of = [&](std::int64_t m) -> const row_plan& { return plans[b][row_index(m)]; };

        if (small) {
            w.qrows.assign(static_cast<std::size_t>(M * Dp), 0.0f);
            for (std::int64_t m = 0; m < M; ++m) {
                const float* src = q.ptr(b, hk * G + m / R, row_index(m));
                for (std::int64_t d = 0; d < D; ++d) w.qrows[m * Dp + d] = src[d] * p.scale;
            }
        } else {
            w.qt.assign(static_cast<std::size_t>(D * lds), 0.0f);
            for (std::int64_t m = 0; m < M; ++m) {
                const float* src = q.ptr(b, hk * G + m / R, row_index(m));
                for (std::int64_t d = 0; d < D; ++d) w.qt[d * lds + m] = src[d] * p.scale;
            }
        }
        for (int g = 0; g < 2; ++g) {
            w.acc[g].assign(static_cast<std::size_t>(ldm * Dp), 0.0f);
            w.mx[g].assign(ldm, neg_inf);
            w.sum[g].assign(ldm, 0.0f);
            if (small) continue;
            fill_lanes(w.lanes[g], ldm);
            for (std::int64_t m = 0; m < M; ++m) {
                const key_group& grp = plan_of(m).group[g];
                if (!averaged_by_prefix(grp)) {
                    set_lane(w.lanes[g], m, grp);
                    continue;
                }
                // The state the block loop would reach (every score 0): max 0, sum = the key count,
                // acc = Σ V over the keys. The lane stays out of the block loop's group.
                w.prefix.bind(b, hk, seq.length, D);
                w.vsum.assign(static_cast<std::size_t>(D), 0.0);
                std::int64_t count = 0;
                for (int r = 0; r < grp.ranges; ++r) {
                    const key_range& kr = grp.range[r];
                    for (int t = 1; t < 3; ++t) {
                        if (!((kr.types >> t) & 1u)) continue;
                        const double* ps = w.prefix.of_type(v, seq, t);
                        const double* upper = ps + (kr.hi + 1) * D;
                        const double* lower = ps + kr.lo * D;
                        for (std::int64_t d = 0; d < D; ++d) w.vsum[d] += upper[d] - lower[d];
                        count += seq.count[t][kr.hi + 1] - seq.count[t][kr.lo];
                    }
                }
                for (std::int64_t d = 0; d < D; ++d) w.acc[g][m * Dp + d] = static_cast<float>(w.vsum[d]);
                w.mx[g][m] = 0.0f;
                w.sum[g][m] = static_cast<float>(count);
            }
        }
        const row_plan* row_plans[8] = {};
        if (small)
            for (std::int64_t m = 0; m < M; ++m) row_plans[m] = &plan_of(m);

        // The key range any row of the tile can see.
        std::int32_t lo = 0, hi = -1;
        tile_key_span(fp, tile, &lo, &hi, !small);

        const auto Bk = static_cast<std::int32_t>(small ? round_up(std::max(config.key_block, 512), packet_size) : config.key_block);
        if (small) {
            decode_tile(k, v, fp, tile, lo, hi, Bk, D, Dp, M, row_plans, w);
        } else {
            w.scores_max.resize(static_cast<std::size_t>(ldm));
            w.lane_keys.resize(static_cast<std::size_t>(ldm / packet_size));
            w.lane_end.assign(static_cast<std::size_t>(ldm), 0);  // padding lanes see nothing
            for (std::int64_t m = 0; m < M; ++m)
                for (const key_group& g : plan_of(m).group)
                    for (int r = 0; r < g.ranges && !averaged_by_prefix(g); ++r)
                        w.lane_end[m] = std::max(w.lane_end[m], g.range[r].hi + 1);
            w.kv.bind(b, hk, seq.length, Bk, Dp);
            w.st.resize(static_cast<std::size_t>(Bk * lds));
            for (auto& pt : w.pt) pt.resize(static_cast<std::size_t>(Bk * lds));
        }
        for (std::int32_t k0 = (lo / Bk) * Bk; k0 <= hi && !small; k0 += Bk) {
            const std::int32_t k1 = std::min(k0 + Bk, seq.length), n = k1 - k0;
            // Classify the block for every row position (heads share the classification).
            const block_use use = classify_block(fp, tile, k0, k1, true);
            if (!use.any()) continue;
            const bool* used = use.used;
            const bool* masked = use.masked;
            const bool need_scores = use.need_scores;

            // On a block that cuts through the tile's rows (the diagonal of a causal tile), each packet of
            // lanes works only on the keys up to the last one any of its lanes sees.
            const bool cut = use.cut();
            const std::int64_t* lane_keys = cut ? packet_key_counts(w.lane_end.data(), ldm, k0, n, w.lane_keys.data())
                                                : nullptr;
            std::int64_t ks = 0, vs = 0;
            const float* kb = need_scores ? head_block_rows(k, 0, k0, n, D, Dp, w.kv, &ks) : nullptr;
            const float* vb = head_block_rows(v, 1, k0, n, D, Dp, w.kv, &vs);
            // On a block that every row sees whole, the score kernel also takes each lane's maximum.
            float* scores_max = nullptr;
            if (!cut && need_scores) {
                std::fill(w.scores_max.begin(), w.scores_max.end(), neg_inf);
                scores_max = w.scores_max.data();
            }
            if (need_scores)
                scores_transposed(kb, ks, n, D, w.qt.data(), ldm, w.st.data(), lds, lane_keys, scores_max);
            else
                std::fill(w.st.begin(), w.st.begin() + n * lds, 0.0f);
            for (int g = 0; g < 2; ++g) {
                if (!used[g]) continue;
                softmax_block(w.st.data(), w.pt[g].data(), n, ldm, lds, masked[g], w.lanes[g], seq, k0, w.mx[g].data(),
                              w.sum[g].data(), w.acc[g].data(), Dp, lane_keys, scores_max);
                accumulate_values(w.pt[g].data(), lds, n, vb, vs, Dp, w.acc[g].data(), M, lane_keys);
            }
        }

        for (std::int64_t m = 0; m < M; ++m) {
            const row_plan& plan = plan_of(m);
            float* o = out.ptr(b, hk * G + m / R, row_index(m));
            std::fill(o, o + D, 0.0f);
            for (int g = 0; g < 2; ++g) {
                const float s = w.sum[g][m];
                if (s <= 0.0f) continue;
                const float* a = w.acc[g].data() + m * Dp;
                for (std::int64_t d = 0; d < D; ++d) o[d] += a[d] / s;
            }
            if (plan.self_term) {
                w.kbuf.resize(D);
                to_float(v.ptr(b, hk, plan.position), w.kbuf.data(), D);
                for (std::int64_t d = 0; d < D; ++d) o[d] += w.kbuf[d];
            }
        }
        if (stats) {
            for (std::int64_t m = 0; m < M; ++m) {
                const std::int64_t h = hk * G + m / R, i = row_index(m);
                for (int g = 0; g < 2; ++g) {
                    const float s = w.sum[g][m];
                    stats->row_max(b, h, i, g) = w.mx[g][m];
                    stats->row_sum(b, h, i, g) = s;
                    float* go = stats->group_out.ptr(b, h, i, g);
                    const float* a = w.acc[g].data() + m * Dp;
                    for (std::int64_t d = 0; d < D; ++d) go[d] = s > 0.0f ? a[d] / s : 0.0f;
                }
            }
        }
    });
}

}  // namespace cpu
}  // namespace mmca
