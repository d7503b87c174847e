// mmca/attention/row_plan.hpp - the key groups of each query row as ranges, for the fast paths.
//
// The fused kernels never build a mask: each query row gets a row_plan (up to two key groups,
// each a union of at most two position ranges filtered by token type and, for the `latest`
// policy, by image index) plus prefix counts of token types, from which a kernel decides per
// key block whether a group sees all of the block, part of it, or nothing of it.
#pragma once

#include "mmca/attention/problem.hpp"

#include <algorithm>
#include <cstdint>
#include <vector>

namespace mmca {

/// Bit set of token types: bit t set means type t belongs to the range.
enum type_bits : std::uint8_t { bits_text = 1u << 1, bits_image = 1u << 2, bits_tokens = bits_text | bits_image };

/// Keys k with lo <= k <= hi whose type is in `types` (and whose image index is image_id, if >= 0).
struct key_range {
    std::int32_t lo = 0, hi = -1;  // inclusive; empty when lo > hi
    std::uint8_t types = 0;
    std::int32_t image_id = -1;
};

/// One softmax group of a row: the union of up to two key ranges. A uniform group averages V over
/// its keys with equal weights (the reference code's rows whose scores vanish next to finfo.min).
struct key_group {
    key_range range[2];
    std::int8_t ranges = 0;
    bool uniform = false;

    bool empty() const { return ranges == 0; }
    void add(std::int32_t lo, std::int32_t hi, std::uint8_t types, std::int32_t image_id = -1) {
        if (lo <= hi) range[ranges++] = key_range{lo, hi, types, image_id};
    }
};

/// What a query row computes: sum over its non-empty groups, plus V_j itself when self_term is set.
struct row_plan {
    std::int32_t position = 0;  // absolute key position j of the row
    key_group group[2];
    bool self_term = false;

    bool needs_softmax() const { return !group[0].empty() || !group[1].empty(); }
};

/// Per-sequence index over token types: prefix counts and the last image/text before each position.
struct sequence_index {
    std::int32_t length = 0;
    std::vector<std::int32_t> count[3];       // count[t][k]: tokens of type t in [0, k)
    std::vector<std::int32_t> prev_image;     // prev_image[j]: last image position < j, or -1
    std::vector<std::int32_t> prev_text;      // prev_text[j]: last text position < j, or -1
    std::vector<std::int32_t> first_of_image; // first_of_image[id]: first position of image id
    const std::int8_t* types = nullptr;       // (L) token types of the sequence
    const std::int32_t* image_ids = nullptr;  // (L) image index per image token, -1 elsewhere

    sequence_index(const attention_problem& p, std::int64_t b)
        : length(p.seq_kv_len[b]), types(p.types.data() + b * p.kv_len), image_ids(p.image_ids.data() + b * p.kv_len) {
        for (auto& c : count) c.assign(length + 1, 0);
        prev_image.assign(length + 1, -1);
        prev_text.assign(length + 1, -1);
        first_of_image.assign(length, -1);
        for (std::int32_t k = 0; k < length; ++k) {
            for (int t = 0; t < 3; ++t) count[t][k + 1] = count[t][k] + (types[k] == t);
            prev_image[k + 1] = types[k] == 2 ? k : prev_image[k];
            prev_text[k + 1] = types[k] == 1 ? k : prev_text[k];
            if (types[k] == 2 && first_of_image[image_ids[k]] < 0) first_of_image[image_ids[k]] = k;
        }
    }

    /// Number of keys in [lo, hi] whose type is in `bits`.
    std::int32_t count_in(std::int32_t lo, std::int32_t hi, std::uint8_t bits) const {
        if (lo > hi) return 0;
        std::int32_t n = 0;
        for (int t = 1; t < 3; ++t)
            if (bits & (1u << t)) n += count[t][hi + 1] - count[t][lo];
        return n;
    }

    bool in_range(const key_range& r, std::int32_t k) const {
        return k >= r.lo && k <= r.hi && ((r.types >> types[k]) & 1u) && (r.image_id < 0 || image_ids[k] == r.image_id);
    }
    bool in_group(const key_group& g, std::int32_t k) const {
        for (int r = 0; r < g.ranges; ++r)
            if (in_range(g.range[r], k)) return true;
        return false;
    }
};

/// The plan of the row at absolute position j of an indexed sequence (SPEC §2).
inline row_plan plan_row(const attention_problem& p, const sequence_index& s, std::int32_t j) {
    row_plan plan;
    plan.position = j;
    const std::int8_t tj = s.types[j];
    const std::int32_t last = s.length - 1;
    if (tj == 0) return plan;  // pad rows output 0
    const bool text_row = tj == 1;
    switch (p.variant) {
        case attention_variant::causal:
            plan.group[0].add(0, j, bits_tokens);
            break;
        case attention_variant::mmca:
            if (text_row) {
                plan.group[0].add(0, j, bits_text);
                plan.group[1].add(0, j - 1, bits_image);
            } else {
                plan.self_term = true;
            }
            break;
        case attention_variant::mmca_reference: {
            std::uint8_t other = text_row ? bits_image : bits_text;
            const bool has_earlier = (text_row ? s.prev_image[j] : s.prev_text[j]) >= 0;
            if (text_row)
                plan.group[0].add(0, j, bits_text);
            else
                plan.self_term = true;
            if (has_earlier) {
                plan.group[1].add(0, j - 1, other);
            } else {
                plan.group[1].uniform = true;
                plan.group[1].add(0, j, bits_tokens);
                plan.group[1].add(j + 1, last, other);
            }
            break;
        }
        case attention_variant::causal_cross:
            if (!text_row) break;  // image rows are not queries
            plan.group[0].add(0, j, bits_text);
            if (p.visibility == image_visibility::all) {
                plan.group[1].add(0, last, bits_image);
            } else if (p.visibility == image_visibility::preceding) {
                plan.group[1].add(0, j - 1, bits_image);
            } else if (s.prev_image[j] >= 0) {
                const std::int32_t id = s.image_ids[s.prev_image[j]];
                plan.group[1].add(s.first_of_image[id], j - 1, bits_image, id);
            }
            break;
    }
    // Drop groups with no key at all (an empty group contributes 0).
    for (auto& g : plan.group) {
        std::int32_t n = 0;
        for (int r = 0; r < g.ranges; ++r) n += s.count_in(g.range[r].lo, g.range[r].hi, g.range[r].types);
        if (n == 0) g = key_group{};
    }
    return plan;
}

/// How a group of one row meets a key block: not at all, every key of the block, or some keys.
enum class block_cover : std::uint8_t { none, full, partial };

inline block_cover cover(const sequence_index& s, const key_group& g, std::int32_t k0, std::int32_t k1) {
    // k1 exclusive
    std::int32_t hit = 0;
    bool full = false;
    for (int r = 0; r < g.ranges; ++r) {
        const key_range& kr = g.range[r];
        const std::int32_t a = std::max(kr.lo, k0), e = std::min(kr.hi, k1 - 1);
        const std::int32_t n = s.count_in(a, e, kr.types);
        if (n == 0) continue;
        ++hit;
        full = a == k0 && e == k1 - 1 && n == k1 - k0 && kr.image_id < 0;
    }
    if (hit == 0) return block_cover::none;
    return hit == 1 && full ? block_cover::full : block_cover::partial;
}

}  // namespace mmca
