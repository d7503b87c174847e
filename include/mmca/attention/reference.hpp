// mmca/attention/reference.hpp - the oracle: every variant computed from explicit masks.
//
// For each sequence the two key groups of every query row are written out as (Lq, Lk) mask
// matrices, straight from the rules of SPEC §2, then each row takes a softmax (or, for the
// reference code's degenerate rows, a uniform average) over each group in double precision.
// O(Lq·Lk) memory and no tiling: slow on purpose, and short enough to check by reading.
#pragma once

#include "mmca/attention/problem.hpp"
#include "mmca/core/dtype.hpp"
#include "mmca/core/threading.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

namespace mmca {

/// Membership of key column k in a group of query row i: excluded, softmax member, or member of
/// a uniform average (the reference code's rows whose scores vanish next to finfo.min).
enum class mask_entry : std::uint8_t { excluded = 0, softmax = 1, uniform = 2 };

/// The two group masks of one sequence: group[g][i * Lk + k], g in {0, 1}.
struct explicit_masks {
    std::int64_t rows = 0, cols = 0;
    std::vector<mask_entry> group[2];
};

/// Builds the explicit masks of sequence b of a checked problem (rows: Lq, cols: Lk).
inline explicit_masks build_explicit_masks(const attention_problem& p, std::int64_t b) {
    explicit_masks m;
    m.rows = p.q_len;
    m.cols = p.kv_len;
    for (auto& g : m.group) g.assign(m.rows * m.cols, mask_entry::excluded);
    constexpr std::int8_t pad = 0, text = 1, image = 2;
    const std::int64_t L = p.seq_kv_len[b];
    auto t = [&](std::int64_t k) { return p.type(b, k); };
    auto set = [&](int g, std::int64_t i, std::int64_t k, mask_entry e) { m.group[g][i * m.cols + k] = e; };

    for (std::int64_t i = 0; i < p.seq_q_len[b]; ++i) {
        const std::int64_t j = p.query_position(b, i);
        const std::int8_t tj = t(j);
        if (tj == pad) continue;
        bool earlier_image = false, earlier_text = false;
        std::int64_t latest_image_pos = -1;
        for (std::int64_t k = 0; k < j; ++k) {
            earlier_image |= t(k) == image;
            earlier_text |= t(k) == text;
            if (t(k) == image) latest_image_pos = k;
        }
        for (std::int64_t k = 0; k < L; ++k) {
            const std::int8_t tk = t(k);
            switch (p.variant) {
                case attention_variant::causal:
                    if (k <= j && tk != pad) set(0, i, k, mask_entry::softmax);
                    break;
                case attention_variant::mmca:
                    if (tj == text) {
                        if (k <= j && tk == text) set(0, i, k, mask_entry::softmax);
                        if (k < j && tk == image) set(1, i, k, mask_entry::softmax);
                    } else if (k == j) {
                        set(0, i, k, mask_entry::softmax);  // an image row attends to itself only
                    }
                    break;
                case attention_variant::mmca_reference: {
                    // Group 0: text rows' text term; image rows' one-hot self term.
                    if (tj == text && k <= j && tk == text) set(0, i, k, mask_entry::softmax);
                    if (tj == image && k == j) set(0, i, k, mask_entry::softmax);
                    // Group 1: the term over the other modality.
                    const std::int8_t other = tj == text ? image : text;
                    const bool has_earlier = tj == text ? earlier_image : earlier_text;
                    if (has_earlier) {
                        if (k < j && tk == other) set(1, i, k, mask_entry::softmax);
                    } else if ((k <= j && tk != pad) || (k > j && tk == other)) {
                        set(1, i, k, mask_entry::uniform);
                    }
                    break;
                }
                case attention_variant::causal_cross:
                    if (tj != text) break;  // image rows are not queries
                    if (k <= j && tk == text) set(0, i, k, mask_entry::softmax);
                    if (tk == image) {
                        const bool visible =
                            p.visibility == image_visibility::all ||
                            (p.visibility == image_visibility::preceding && k < j) ||
                            (p.visibility == image_visibility::latest && k < j && latest_image_pos >= 0 &&
                             p.image_id(b, k) == p.image_id(b, latest_image_pos));
                        if (visible) set(1, i, k, mask_entry::softmax);
                    }
                    break;
            }
        }
    }
    return m;
}

/// Normalised weights of one group of a row over n keys: a softmax of `scores` over the keys marked
/// softmax, or equal weights over the keys marked uniform. Returns false (weights untouched) for an
/// empty group, which contributes 0.
inline bool reference_group_weights(const mask_entry* row, const double* scores, std::int64_t n, double* weights) {
    double max_score = -std::numeric_limits<double>::infinity();
    bool any = false;
    for (std::int64_t kk = 0; kk < n; ++kk) {
        if (row[kk] == mask_entry::excluded) continue;
        any = true;
        max_score = std::max(max_score, row[kk] == mask_entry::uniform ? 0.0 : scores[kk]);
    }
    if (!any) return false;
    double total = 0.0;
    for (std::int64_t kk = 0; kk < n; ++kk) {
        weights[kk] = row[kk] == mask_entry::excluded  ? 0.0
                      : row[kk] == mask_entry::uniform ? 1.0
                                                       : std::exp(scores[kk] - max_score);
        total += weights[kk];
    }
    for (std::int64_t kk = 0; kk < n; ++kk) weights[kk] /= total;
    return true;
}

/// Computes attention with the explicit-mask oracle. out must have q's shape.
template <class KV>
void attention_reference_forward(const attention_problem& p, tensor_ref<const float, 4> q, tensor_ref<const KV, 4> k,
                                 tensor_ref<const KV, 4> v, tensor_ref<float, 4> out, int num_threads = 0) {
    const std::int64_t D = p.head_dim;
    for (std::int64_t b = 0; b < p.batch; ++b) {
        const explicit_masks masks = build_explicit_masks(p, b);
        parallel_for(p.q_heads, num_threads, [&](std::int64_t h, int) {
            const std::int64_t hk = h / p.group_size();
            std::vector<double> scores(p.kv_len), weights(p.kv_len), kf(D), vf(D), acc(D);
            std::vector<float> tmp(D);
            for (std::int64_t i = 0; i < p.q_len; ++i) {
                std::fill(acc.begin(), acc.end(), 0.0);
                for (std::int64_t kk = 0; kk < p.kv_len; ++kk) {
                    to_float(k.ptr(b, hk, kk), tmp.data(), D);
                    double s = 0.0;
                    for (std::int64_t d = 0; d < D; ++d) s += double(q(b, h, i, d)) * double(tmp[d]);
                    scores[kk] = s * double(p.scale);
                }
                for (const auto& group : masks.group) {
                    const mask_entry* row = group.data() + i * p.kv_len;
                    if (!reference_group_weights(row, scores.data(), p.kv_len, weights.data())) continue;
                    for (std::int64_t kk = 0; kk < p.kv_len; ++kk) {
                        if (weights[kk] == 0.0) continue;
                        to_float(v.ptr(b, hk, kk), tmp.data(), D);
                        for (std::int64_t d = 0; d < D; ++d) acc[d] += weights[kk] * double(tmp[d]);
                    }
                }
                for (std::int64_t d = 0; d < D; ++d) out(b, h, i, d) = static_cast<float>(acc[d]);
            }
        });
    }
}

}  // namespace mmca
