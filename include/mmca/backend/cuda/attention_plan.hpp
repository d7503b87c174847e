// mmca/backend/cuda/attention_plan.hpp - the per-row plan arrays that the CUDA attention kernels read.
//
// The CUDA kernels never see an attention_problem: the host turns it (with the same plan_row() the
// CPU fused kernel uses) into a few flat arrays of plain structs, uploads them, and the kernels
// decide everything per key block from them:
//   rows   (R)            device_row_plan of every query row that needs a softmax ("active" rows)
//   fills  (F)            device_fill_row of every other row: zero, or a copy of V_j (MMCA image rows)
//   tiles  (T)            device_tile: up to tile_rows consecutive active rows of one sequence and the
//                         key range any of them can see; heaviest tiles first
//   key_codes     (B, Lk)     int32 per key: (image index + 1) * 4 + token type (see key_code())
//   type_prefix   (B, 2, Lk+1) int32 prefix counts of text (0) and image (1) keys: [b][t][k] = count in [0, k)
//   seq_kv_len    (B)         valid keys per sequence
// This header is plain C++ (it compiles without nvcc); the small functions marked MMCA_HOST_DEVICE
// are the ones the kernels call, so host tests can check them against row_plan.hpp's cover().
#pragma once

#include "mmca/attention/problem.hpp"
#include "mmca/attention/row_plan.hpp"

#include <algorithm>
#include <cstdint>
#include <vector>

#if defined(__CUDACC__)
#define MMCA_HOST_DEVICE __host__ __device__
#else
#define MMCA_HOST_DEVICE
#endif

namespace mmca {
namespace cuda {

/// Keys k with lo <= k <= hi whose type bit is set in `types` (bit t = token type t; 0: unused
/// range) and, when image_id >= 0, whose image index equals image_id.
struct device_key_range {
    std::int32_t lo = 0, hi = -1;
    std::int32_t image_id = -1;
    std::uint32_t types = 0;
};

/// Flags of a device_row_plan.
enum device_plan_flags : std::int32_t {
    plan_self_term = 1,  ///< add V_j to the row's output
    plan_uniform0 = 2,   ///< group 0 is a uniform average (score 0 for every member)
    plan_uniform1 = 4,   ///< group 1 is a uniform average
};

/// One active query row: where its query and output live, and its two key groups (each the union
/// of up to two ranges). 80 bytes, 16-byte aligned, copied to shared memory by the tiled kernel.
struct alignas(16) device_row_plan {
    std::int32_t position = 0;  // absolute key position j of the row
    std::int32_t row = 0;       // query row index i in q / out
    std::int32_t batch = 0;     // sequence b
    std::int32_t flags = 0;     // device_plan_flags
    device_key_range range[2][2];  // [group][range]
};
static_assert(sizeof(device_row_plan) == 80, "device_row_plan is copied as 20 int32 words");

/// A row that needs no softmax: out(b, h, row, :) = 0 (source < 0) or V(b, h / G, source, :).
struct device_fill_row {
    std::int32_t batch = 0;
    std::int32_t row = 0;
    std::int32_t source = -1;
};

/// Up to tile_rows consecutive entries of the active-row array, all of one sequence, and the
/// inclusive key range [key_lo, key_hi] that holds every key any of those rows can see.
struct alignas(16) device_tile {
    std::int32_t batch = 0;
    std::int32_t first = 0;  // index of the tile's first row in the active-row array
    std::int32_t count = 0;  // rows in the tile (1..tile_rows)
    std::int32_t key_lo = 0, key_hi = -1;
    std::int32_t reserved[3] = {0, 0, 0};
};

/// How the rows of a key block meet a group: the same three cases as mmca::block_cover.
enum device_cover : std::int8_t { cover_none = 0, cover_full = 1, cover_partial = 2, cover_ignore = 3 };

/// One int32 per key: its token type (bits 0-1) and image index + 1 (bits 2-31; 0 for text and pad),
/// so that a kernel reads what membership needs with one 4-byte load.
MMCA_HOST_DEVICE inline std::int32_t key_code(std::int32_t type, std::int32_t image_id) {
    return (image_id + 1) * 4 + type;
}
MMCA_HOST_DEVICE inline std::int32_t key_code_type(std::int32_t code) { return code & 3; }
MMCA_HOST_DEVICE inline std::int32_t key_code_image(std::int32_t code) { return (code >> 2) - 1; }

/// Keys of [lo, hi] whose type is in `types`, from a sequence's prefix counts (2, kv_len + 1).
MMCA_HOST_DEVICE inline std::int32_t count_keys(const std::int32_t* prefix, std::int32_t prefix_len, std::int32_t lo,
                                                std::int32_t hi, std::uint32_t types) {
    if (lo > hi) return 0;
    std::int32_t n = 0;
    if (types & 2u) n += prefix[hi + 1] - prefix[lo];
    if (types & 4u) n += prefix[prefix_len + hi + 1] - prefix[prefix_len + lo];
    return n;
}

/// How group g of a row meets the key block [k0, k1): none, full (every key of the block is a
/// softmax member: no mask needed) or partial. k1 is NOT clamped to the sequence length: a block
/// that runs past the last key is never full, because the kernels compute whole blocks.
MMCA_HOST_DEVICE inline std::int8_t classify_block(const device_row_plan& plan, int g, const std::int32_t* prefix,
                                                   std::int32_t prefix_len, std::int32_t k0, std::int32_t k1) {
    int hit = 0;
    bool full = false;
    for (int r = 0; r < 2; ++r) {
        const device_key_range& kr = plan.range[g][r];
        if (kr.types == 0) continue;
        const std::int32_t a = kr.lo > k0 ? kr.lo : k0;
        const std::int32_t e = kr.hi < k1 - 1 ? kr.hi : k1 - 1;
        const std::int32_t n = count_keys(prefix, prefix_len, a, e, kr.types);
        if (n == 0) continue;
        ++hit;
        full = a == k0 && e == k1 - 1 && n == k1 - k0 && kr.image_id < 0;
    }
    if (hit == 0) return cover_none;
    return hit == 1 && full ? cover_full : cover_partial;
}

/// Prefix counts of text (index 0) and image (index 1) keys at a range's ends: before lo, and
/// before hi + 1. With them, and the counts at the block boundaries, a block is classified without
/// reading the prefix arrays (what the tiled kernel does per key block).
struct range_edges {
    std::int32_t lo[2] = {0, 0};
    std::int32_t hi1[2] = {0, 0};
};

MMCA_HOST_DEVICE inline range_edges make_range_edges(const device_key_range& kr, const std::int32_t* prefix,
                                                      std::int32_t prefix_len) {
    range_edges e;
    if (kr.types == 0) return e;
    for (int t = 0; t < 2; ++t) {
        e.lo[t] = prefix[t * prefix_len + kr.lo];
        e.hi1[t] = prefix[t * prefix_len + kr.hi + 1];
    }
    return e;
}

/// classify_block() from range edges and the prefix counts at the block's boundaries:
/// boundary(t, k) is the count of keys of type t (0 text, 1 image) before k, for k = k0 and k1.
template <class Boundary>
MMCA_HOST_DEVICE inline std::int8_t classify_block_edges(const device_key_range (&ranges)[2],
                                                         const range_edges (&edges)[2], std::int32_t k0,
                                                         std::int32_t k1, const Boundary& boundary) {
    int hit = 0;
    bool full = false;
    for (int r = 0; r < 2; ++r) {
        const device_key_range& kr = ranges[r];
        if (kr.types == 0) continue;
        const std::int32_t a = kr.lo > k0 ? kr.lo : k0;
        const std::int32_t e1 = kr.hi + 1 < k1 ? kr.hi + 1 : k1;
        if (a >= e1) continue;
        std::int32_t n = 0;
        for (int t = 0; t < 2; ++t) {
            if (!(kr.types & (2u << t))) continue;
            const std::int32_t at_end = e1 == kr.hi + 1 ? edges[r].hi1[t] : boundary(t, k1);
            const std::int32_t at_start = a == kr.lo ? edges[r].lo[t] : boundary(t, k0);
            n += at_end - at_start;
        }
        if (n == 0) continue;
        ++hit;
        full = a == k0 && e1 == k1 && n == k1 - k0 && kr.image_id < 0;
    }
    if (hit == 0) return cover_none;
    return hit == 1 && full ? cover_full : cover_partial;
}

/// True when key k (of the given type and image index) belongs to the key range.
MMCA_HOST_DEVICE inline bool range_contains(const device_key_range& kr, std::int32_t k, std::int32_t type,
                                            std::int32_t image_id) {
    return k >= kr.lo && k <= kr.hi && ((kr.types >> type) & 1u) && (kr.image_id < 0 || kr.image_id == image_id);
}

/// True when key k belongs to group g of the row.
MMCA_HOST_DEVICE inline bool group_contains(const device_row_plan& plan, int g, std::int32_t k, std::int32_t type,
                                            std::int32_t image_id) {
    return range_contains(plan.range[g][0], k, type, image_id) || range_contains(plan.range[g][1], k, type, image_id);
}

/// The host side of one attention call: everything the kernels read besides q, k, v and out.
struct attention_plan {
    std::int64_t batch = 0, q_len = 0, kv_len = 0;
    std::int32_t tile_rows = 0;              // rows per tile the tiles were cut for
    std::int32_t max_active_rows = 0;        // most active rows in one sequence
    std::int64_t active_keys = 0;            // sum over active rows of the keys in their key range
    std::vector<device_row_plan> rows;       // (R)
    std::vector<device_fill_row> fills;      // (F)
    std::vector<device_tile> tiles;          // (T) heaviest first
    std::vector<std::int8_t> key_types;      // (B, Lk) (host only)
    std::vector<std::int32_t> key_image_ids; // (B, Lk) (host only)
    std::vector<std::int32_t> key_codes;     // (B, Lk) key_code(type, image id)
    std::vector<std::int32_t> type_prefix;   // (B, 2, Lk + 1)
    std::vector<std::int32_t> seq_kv_len;    // (B)
};

/// Converts the row_plan of plan_row() to the device form.
inline device_row_plan to_device_plan(const row_plan& plan, std::int32_t batch, std::int32_t row) {
    device_row_plan d;
    d.position = plan.position;
    d.row = row;
    d.batch = batch;
    d.flags = plan.self_term ? plan_self_term : 0;
    for (int g = 0; g < 2; ++g) {
        const key_group& group = plan.group[g];
        if (group.uniform && !group.empty()) d.flags |= g == 0 ? plan_uniform0 : plan_uniform1;
        for (int r = 0; r < group.ranges; ++r) {
            const key_range& kr = group.range[r];
            d.range[g][r].lo = kr.lo;
            d.range[g][r].hi = kr.hi;
            d.range[g][r].image_id = kr.image_id;
            d.range[g][r].types = kr.types;
        }
    }
    return d;
}

/// Builds the plan arrays of a checked problem; tiles hold up to tile_rows active rows.
inline attention_plan build_attention_plan(const attention_problem& p, std::int32_t tile_rows) {
    attention_plan plan;
    plan.batch = p.batch;
    plan.q_len = p.q_len;
    plan.kv_len = p.kv_len;
    plan.tile_rows = tile_rows;
    const std::int64_t Lk = p.kv_len, prefix_len = Lk + 1;
    plan.key_types = p.types;
    plan.key_image_ids = p.image_ids;
    plan.key_codes.resize(p.types.size());
    for (std::size_t x = 0; x < p.types.size(); ++x) plan.key_codes[x] = key_code(p.types[x], p.image_ids[x]);
    plan.type_prefix.assign(static_cast<std::size_t>(p.batch * 2 * prefix_len), 0);
    plan.seq_kv_len = p.seq_kv_len;

    for (std::int64_t b = 0; b < p.batch; ++b) {
        const sequence_index seq(p, b);
        std::int32_t* prefix = plan.type_prefix.data() + b * 2 * prefix_len;
        // Counts stay flat past the sequence end (the types there are pad).
        for (std::int64_t k = 0; k < Lk; ++k) {
            const std::int8_t t = p.type(b, k);
            prefix[k + 1] = prefix[k] + (t == static_cast<std::int8_t>(token_type::text));
            prefix[prefix_len + k + 1] = prefix[prefix_len + k] + (t == static_cast<std::int8_t>(token_type::image));
        }
        const std::size_t first_active = plan.rows.size();
        for (std::int32_t i = 0; i < static_cast<std::int32_t>(p.q_len); ++i) {
            if (i >= p.seq_q_len[b]) {
                plan.fills.push_back({static_cast<std::int32_t>(b), i, -1});
                continue;
            }
            const row_plan rp = plan_row(p, seq, static_cast<std::int32_t>(p.query_position(b, i)));
            if (!rp.needs_softmax()) {
                plan.fills.push_back({static_cast<std::int32_t>(b), i, rp.self_term ? rp.position : -1});
                continue;
            }
            plan.rows.push_back(to_device_plan(rp, static_cast<std::int32_t>(b), i));
        }
        const auto active = static_cast<std::int32_t>(plan.rows.size() - first_active);
        plan.max_active_rows = std::max(plan.max_active_rows, active);
        for (std::int32_t first = 0; first < active; first += tile_rows) {
            device_tile tile;
            tile.batch = static_cast<std::int32_t>(b);
            tile.first = static_cast<std::int32_t>(first_active) + first;
            tile.count = std::min(tile_rows, active - first);
            tile.key_lo = static_cast<std::int32_t>(Lk);
            tile.key_hi = -1;
            for (std::int32_t r = 0; r < tile.count; ++r) {
                const device_row_plan& row = plan.rows[tile.first + r];
                std::int32_t lo = static_cast<std::int32_t>(Lk), hi = -1;
                for (const auto& group : row.range)
                    for (const auto& kr : group)
                        if (kr.types != 0) {
                            lo = std::min(lo, kr.lo);
                            hi = std::max(hi, kr.hi);
                        }
                tile.key_lo = std::min(tile.key_lo, lo);
                tile.key_hi = std::max(tile.key_hi, hi);
                plan.active_keys += hi >= lo ? hi - lo + 1 : 0;
            }
            plan.tiles.push_back(tile);
        }
    }
    // Heaviest tiles first, so that the long causal tiles do not all start last.
    std::stable_sort(plan.tiles.begin(), plan.tiles.end(), [](const device_tile& a, const device_tile& b) {
        return a.key_hi - a.key_lo > b.key_hi - b.key_lo;
    });
    return plan;
}

/// The plan of unmasked attention (every one of Lq query rows sees every one of Lk keys: the
/// vision encoders' self-attention and their resampler's cross-attention) for the tiled kernel: one
/// sequence of text keys, each row's group 0 the whole key range, tiles of tile_rows rows.
inline attention_plan build_dense_attention_plan(std::int64_t Lq, std::int64_t Lk, std::int32_t tile_rows) {
    attention_plan plan;
    plan.batch = 1;
    plan.q_len = Lq;
    plan.kv_len = Lk;
    plan.tile_rows = tile_rows;
    const auto text = static_cast<std::int8_t>(token_type::text);
    plan.key_types.assign(static_cast<std::size_t>(Lk), text);
    plan.key_image_ids.assign(static_cast<std::size_t>(Lk), -1);
    plan.key_codes.assign(static_cast<std::size_t>(Lk), key_code(text, -1));
    plan.type_prefix.assign(static_cast<std::size_t>(2 * (Lk + 1)), 0);
    for (std::int64_t k = 0; k <= Lk; ++k) plan.type_prefix[static_cast<std::size_t>(k)] = static_cast<std::int32_t>(k);
    plan.seq_kv_len = {static_cast<std::int32_t>(Lk)};
    plan.rows.resize(static_cast<std::size_t>(Lq));
    for (std::int64_t i = 0; i < Lq; ++i) {
        device_row_plan& r = plan.rows[static_cast<std::size_t>(i)];
        r.position = static_cast<std::int32_t>(Lk - 1);
        r.row = static_cast<std::int32_t>(i);
        r.range[0][0] = {0, static_cast<std::int32_t>(Lk - 1), -1, 1u << text};
    }
    plan.max_active_rows = static_cast<std::int32_t>(Lq);
    plan.active_keys = Lq * Lk;
    for (std::int64_t first = 0; first < Lq; first += tile_rows) {
        device_tile t;
        t.first = static_cast<std::int32_t>(first);
        t.count = static_cast<std::int32_t>(std::min<std::int64_t>(tile_rows, Lq - first));
        t.key_lo = 0;
        t.key_hi = static_cast<std::int32_t>(Lk - 1);
        plan.tiles.push_back(t);
    }
    return plan;
}

}  // namespace cuda
}  // namespace mmca
