// tests/cpp/attention_test_util.hpp - shared helpers of the attention tests: seeded random tensors,
// token-type patterns, token layouts that own their data, and the relative comparison of outputs.
//
// The comparison used everywhere: max|a - b| <= tol * max(max|b|, tiny), with b the oracle's output.
// A NaN or infinity on either side fails.
#pragma once

#include "mmca/mmca.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <random>
#include <sstream>
#include <string>
#include <vector>

namespace mmca_test {

using tensor4 = mmca::tensor<float, 4>;
using shape4 = std::array<std::size_t, 4>;

constexpr std::int8_t P = 0;  // pad
constexpr std::int8_t T = 1;  // text
constexpr std::int8_t I = 2;  // image

// ---------------------------------------------------------------------------------------------
// Random numbers: a fixed-seed generator whose uniform draws do not depend on the standard
// library's distribution implementations (so a seed means the same data everywhere).

class rng {
public:
    explicit rng(std::uint64_t seed) : gen_(seed) {}
    /// Uniform in [lo, hi).
    double uniform(double lo, double hi) {
        const double u = static_cast<double>(gen_() >> 11) * (1.0 / 9007199254740992.0);  // 53 bits
        return lo + (hi - lo) * u;
    }
    /// Uniform integer in [lo, hi] (inclusive).
    int integer(int lo, int hi) { return lo + static_cast<int>(gen_() % static_cast<std::uint64_t>(hi - lo + 1)); }

private:
    std::mt19937_64 gen_;
};

inline tensor4 random_tensor(const shape4& shape, std::uint64_t seed, float lo = -1.0f, float hi = 1.0f) {
    tensor4 t(shape);
    rng r(seed);
    for (auto& x : t) x = static_cast<float>(r.uniform(lo, hi));
    return t;
}

inline tensor4 filled(const shape4& shape, float value) {
    tensor4 t(shape);
    t.fill(value);
    return t;
}

/// Rounds every element to a storage type (float16 / bfloat16) with the library's own conversion.
template <class S>
mmca::tensor<S, 4> to_storage(const tensor4& t) {
    mmca::tensor<S, 4> out(t.shape());
    mmca::from_float(t.data(), out.data(), static_cast<std::int64_t>(t.size()));
    return out;
}

/// Widens a storage tensor back to float32.
template <class S>
tensor4 to_float32(const mmca::tensor<S, 4>& t) {
    tensor4 out(t.shape());
    for (std::size_t i = 0; i < t.size(); ++i) out.data()[i] = static_cast<float>(t.data()[i]);
    return out;
}

// ---------------------------------------------------------------------------------------------
// Comparison.

/// max|a - b| <= tol * max(max|b|, tiny); b is the oracle. Reports the worst element on failure.
inline ::testing::AssertionResult all_close(const tensor4& a, const tensor4& b, double tol, double tiny = 1e-30) {
    if (a.shape() != b.shape()) {
        std::ostringstream os;
        os << "shape mismatch: [" << a.shape()[0] << ", " << a.shape()[1] << ", " << a.shape()[2] << ", "
           << a.shape()[3] << "] vs [" << b.shape()[0] << ", " << b.shape()[1] << ", " << b.shape()[2] << ", "
           << b.shape()[3] << "]";
        return ::testing::AssertionFailure() << os.str();
    }
    double max_diff = 0.0, max_ref = 0.0;
    std::size_t worst = 0;
    for (std::size_t n = 0; n < a.size(); ++n) {
        const double x = a.data()[n], y = b.data()[n];
        if (!std::isfinite(x) || !std::isfinite(y)) {
            const std::size_t D = a.shape()[3], L = a.shape()[2], H = a.shape()[1];
            return ::testing::AssertionFailure()
                   << "non-finite value at (b, h, i, d) = (" << n / (D * L * H) << ", " << (n / (D * L)) % H << ", "
                   << (n / D) % L << ", " << n % D << "): got " << x << ", oracle " << y;
        }
        max_ref = std::max(max_ref, std::abs(y));
        if (std::abs(x - y) > max_diff) {
            max_diff = std::abs(x - y);
            worst = n;
        }
    }
    const double bound = tol * std::max(max_ref, tiny);
    if (max_diff <= bound) return ::testing::AssertionSuccess();
    const std::size_t D = a.shape()[3], L = a.shape()[2], H = a.shape()[1];
    std::ostringstream os;
    os.precision(9);
    os << "max|a-b| = " << max_diff << " > " << tol << " * max|b| (" << max_ref << ") = " << bound
       << "; worst at (b, h, i, d) = (" << worst / (D * L * H) << ", " << (worst / (D * L)) % H << ", "
       << (worst / D) % L << ", " << worst % D << "): got " << a.data()[worst] << ", oracle " << b.data()[worst];
    return ::testing::AssertionFailure() << os.str();
}

/// Bitwise equality of two float tensors (same shape).
inline ::testing::AssertionResult bitwise_equal(const tensor4& a, const tensor4& b) {
    if (a.shape() != b.shape()) return ::testing::AssertionFailure() << "shape mismatch";
    for (std::size_t n = 0; n < a.size(); ++n) {
        const float x = a.data()[n], y = b.data()[n];
        if (!(x == y) && !(std::isnan(x) && std::isnan(y)))
            return ::testing::AssertionFailure() << "element " << n << ": " << x << " vs " << y;
    }
    return ::testing::AssertionSuccess();
}

/// Copies rows [i0, i0 + n) of every (b, h) into a new (B, H, n, D) tensor.
inline tensor4 rows_of(const tensor4& t, std::size_t i0, std::size_t n) {
    tensor4 out(shape4{t.shape()[0], t.shape()[1], n, t.shape()[3]});
    for (std::size_t b = 0; b < t.shape()[0]; ++b)
        for (std::size_t h = 0; h < t.shape()[1]; ++h)
            for (std::size_t i = 0; i < n; ++i)
                for (std::size_t d = 0; d < t.shape()[3]; ++d) out(b, h, i, d) = t(b, h, i0 + i, d);
    return out;
}

/// One (1, H, 1, D) row: row i of sequence b of a (B, H, L, D) tensor.
inline tensor4 row_of(const tensor4& t, std::size_t b, std::size_t i) {
    tensor4 out(shape4{1, t.shape()[1], 1, t.shape()[3]});
    for (std::size_t h = 0; h < t.shape()[1]; ++h)
        for (std::size_t d = 0; d < t.shape()[3]; ++d) out(0, h, 0, d) = t(b, h, i, d);
    return out;
}

// ---------------------------------------------------------------------------------------------
// Token patterns.

/// Token types of one sequence and an image index per token (-1 for text and pad). Every image
/// segment gets its own index, so two image runs back to back are two images when the ids are passed.
struct token_sequence {
    std::vector<std::int8_t> types;
    std::vector<std::int32_t> ids;

    std::size_t size() const { return types.size(); }
    void add(std::int8_t type, int count, std::int32_t id = -1) {
        for (int n = 0; n < count; ++n) {
            types.push_back(type);
            ids.push_back(type == I ? id : -1);
        }
    }
};

/// The kinds of sequences the randomized tests draw.
enum class pattern_kind {
    interleaved,         // text, image, text, image, ... (starts with text)
    leading_image,       // image, text, image, text, ...
    consecutive_images,  // text, image, image (a second image right after the first), text, ...
    text_only,
    images_only,         // back-to-back images (distinct ids) and nothing else
    trailing_pad,        // interleaved, then about a fifth of the length as pad
    interior_pad,        // interleaved with short pad runs between segments
    repeated_ids,        // interleaved, image runs alternate between ids 0 and 1 (an image shown again)
};

inline const char* pattern_name(pattern_kind k) {
    switch (k) {
        case pattern_kind::interleaved: return "interleaved";
        case pattern_kind::leading_image: return "leading_image";
        case pattern_kind::consecutive_images: return "consecutive_images";
        case pattern_kind::text_only: return "text_only";
        case pattern_kind::images_only: return "images_only";
        case pattern_kind::trailing_pad: return "trailing_pad";
        case pattern_kind::interior_pad: return "interior_pad";
        case pattern_kind::repeated_ids: return "repeated_ids";
    }
    return "unknown";
}

/// A random sequence of exactly `length` tokens of the given kind (deterministic in seed).
inline token_sequence make_pattern(pattern_kind kind, int length, std::uint64_t seed) {
    rng r(seed);
    token_sequence s;
    std::int32_t next_id = 0;
    const int run_max = std::max(2, length / 5);
    auto remaining = [&] { return length - static_cast<int>(s.size()); };
    auto run = [&](int lo, int hi) { return std::min(remaining(), r.integer(lo, std::max(lo, hi))); };
    int body = length;
    if (kind == pattern_kind::trailing_pad) body = length - std::max(1, length / 5);
    switch (kind) {
        case pattern_kind::text_only: s.add(T, length); break;
        case pattern_kind::images_only:
            while (remaining() > 0) s.add(I, run(1, run_max), next_id++);
            break;
        default: {
            bool image_turn = kind == pattern_kind::leading_image;
            while (static_cast<int>(s.size()) < body) {
                const int n = std::min(body - static_cast<int>(s.size()), r.integer(1, run_max));
                if (image_turn) {
                    if (kind == pattern_kind::consecutive_images && n >= 2) {
                        s.add(I, n / 2, next_id++);
                        s.add(I, n - n / 2, next_id++);
                    } else if (kind == pattern_kind::repeated_ids) {
                        s.add(I, n, next_id++ % 2);
                    } else {
                        s.add(I, n, next_id++);
                    }
                } else {
                    s.add(T, n);
                }
                image_turn = !image_turn;
                if (kind == pattern_kind::interior_pad && static_cast<int>(s.size()) < body)
                    s.add(P, std::min(body - static_cast<int>(s.size()), r.integer(1, 3)));
            }
            s.add(P, length - body);
        }
    }
    return s;
}

/// A hand-written sequence from a type list; image ids: every maximal run of image tokens is one
/// image unless ids are given.
inline token_sequence sequence_of(const std::vector<std::int8_t>& types, const std::vector<std::int32_t>& ids = {}) {
    token_sequence s;
    s.types = types;
    if (!ids.empty()) {
        s.ids = ids;
        return s;
    }
    std::int32_t next = -1;
    for (std::size_t k = 0; k < types.size(); ++k) {
        if (types[k] == I && (k == 0 || types[k - 1] != I)) ++next;
        s.ids.push_back(types[k] == I ? next : -1);
    }
    return s;
}

/// A token layout together with the tensors it points into.
struct owned_tokens {
    mmca::tensor<std::int8_t, 2> types;
    mmca::tensor<std::int32_t, 2> image_ids;
    mmca::tensor<std::int32_t, 1> kv_lens;
    mmca::tensor<std::int32_t, 1> q_lens;
    bool with_ids = false, with_kv_lens = false, with_q_lens = false;

    /// Sequences padded with type 0 to Lk; pass ids to give explicit image indices.
    owned_tokens(const std::vector<token_sequence>& seqs, std::size_t Lk, bool explicit_ids) : with_ids(explicit_ids) {
        const std::size_t B = seqs.size();
        types = mmca::tensor<std::int8_t, 2>(std::array<std::size_t, 2>{B, Lk});
        image_ids = mmca::tensor<std::int32_t, 2>(std::array<std::size_t, 2>{B, Lk});
        types.fill(P);
        image_ids.fill(-1);
        for (std::size_t b = 0; b < B; ++b)
            for (std::size_t k = 0; k < std::min(Lk, seqs[b].size()); ++k) {
                types(b, k) = seqs[b].types[k];
                image_ids(b, k) = seqs[b].ids[k];
            }
        kv_lens = mmca::tensor<std::int32_t, 1>(std::array<std::size_t, 1>{B});
        q_lens = mmca::tensor<std::int32_t, 1>(std::array<std::size_t, 1>{B});
    }

    void set_kv_lens(const std::vector<int>& lens) {
        with_kv_lens = !lens.empty();
        for (std::size_t b = 0; b < lens.size(); ++b) kv_lens(b) = lens[b];
    }
    void set_q_lens(const std::vector<int>& lens) {
        with_q_lens = !lens.empty();
        for (std::size_t b = 0; b < lens.size(); ++b) q_lens(b) = lens[b];
    }

    mmca::token_layout layout() const {
        mmca::token_layout t;
        t.types = types;
        if (with_ids) t.image_ids = image_ids;
        if (with_kv_lens) t.kv_lens = kv_lens;
        if (with_q_lens) t.q_lens = q_lens;
        return t;
    }
};

// ---------------------------------------------------------------------------------------------
// Variants.

/// An attention variant together with its image-visibility policy (causal_cross only).
struct variant_spec {
    mmca::attention_variant variant;
    mmca::image_visibility visibility;

    std::string name() const {
        std::string n = mmca::to_string(variant);
        if (variant == mmca::attention_variant::causal_cross) n += std::string("_") + mmca::to_string(visibility);
        return n;
    }
    mmca::attention_options options(int threads = 0, float scale = 0.0f) const {
        mmca::attention_options o;
        o.variant = variant;
        o.visibility = visibility;
        o.num_threads = threads;
        o.scale = scale;
        return o;
    }
};

inline std::vector<variant_spec> all_variants() {
    using V = mmca::attention_variant;
    using Vis = mmca::image_visibility;
    return {{V::causal, Vis::preceding},       {V::mmca, Vis::preceding},
            {V::mmca_reference, Vis::preceding}, {V::causal_cross, Vis::all},
            {V::causal_cross, Vis::preceding}, {V::causal_cross, Vis::latest}};
}

inline std::ostream& operator<<(std::ostream& os, const variant_spec& v) { return os << v.name(); }

/// True when the row at position t of a sequence, by the variant's definition over the whole
/// sequence, sees a key at a position >= present_end (keys not yet present while decoding).
inline bool row_sees_beyond(const variant_spec& v, const std::vector<std::int8_t>& types, std::size_t length,
                            std::size_t t, std::size_t present_end) {
    auto any_at_or_after = [&](std::size_t from, std::int8_t type) {
        for (std::size_t k = from; k < length; ++k)
            if (types[k] == type) return true;
        return false;
    };
    auto any_before = [&](std::size_t until, std::int8_t type) {
        for (std::size_t k = 0; k < until; ++k)
            if (types[k] == type) return true;
        return false;
    };
    const std::int8_t tt = types[t];
    switch (v.variant) {
        case mmca::attention_variant::mmca_reference:
            if (tt == T && !any_before(t, I)) return any_at_or_after(present_end, I);
            if (tt == I && !any_before(t, T)) return any_at_or_after(present_end, T);
            return false;
        case mmca::attention_variant::causal_cross:
            return tt == T && v.visibility == mmca::image_visibility::all && any_at_or_after(present_end, I);
        default: return false;
    }
}

}  // namespace mmca_test

namespace mmca_test {

// ---------------------------------------------------------------------------------------------
// An oracle written in the tests, straight from SPEC §2, independent of the library's reference:
// per row, the list of key groups (a softmax or a uniform average over a set of keys) plus the
// optional self term, then sum over groups in double. Small shapes only (O(Lq·Lk·D) per head).

struct spec_group {
    bool uniform = false;
    std::vector<std::size_t> keys;
};

/// Sequence b of a token layout as the SPEC oracles read it: its key and query counts, token types
/// and image ids (explicit, or the index of each maximal run of image tokens).
struct sequence_keys {
    std::size_t kv_len = 0, q_len = 0;
    std::vector<std::int8_t> types;
    std::vector<std::int32_t> ids;
};

inline sequence_keys keys_of_sequence(const owned_tokens& tokens, std::size_t b, std::size_t Lk, std::size_t Lq) {
    sequence_keys s;
    s.kv_len = tokens.with_kv_lens ? static_cast<std::size_t>(tokens.kv_lens(b)) : Lk;
    s.q_len = tokens.with_q_lens ? static_cast<std::size_t>(tokens.q_lens(b)) : Lq;
    s.types.resize(s.kv_len);
    s.ids.assign(s.kv_len, -1);
    std::int32_t run = -1;
    for (std::size_t x = 0; x < s.kv_len; ++x) {
        s.types[x] = tokens.types(b, x);
        if (s.types[x] == I && (x == 0 || s.types[x - 1] != I)) ++run;
        if (s.types[x] == I) s.ids[x] = tokens.with_ids ? tokens.image_ids(b, x) : run;
    }
    return s;
}

/// The groups of the row at position j of a sequence of `length` valid tokens (SPEC §2.1-2.4).
inline std::vector<spec_group> spec_row_groups(const variant_spec& v, const std::int8_t* types, const std::int32_t* ids,
                                               std::size_t length, std::size_t j, bool& self_term) {
    self_term = false;
    std::vector<spec_group> groups;
    const std::int8_t tj = types[j];
    if (tj == P) return groups;
    auto collect = [&](bool uniform, auto pred) {
        spec_group g;
        g.uniform = uniform;
        for (std::size_t k = 0; k < length; ++k)
            if (pred(k)) g.keys.push_back(k);
        if (!g.keys.empty()) groups.push_back(g);
    };
    auto earlier = [&](std::int8_t type) {
        for (std::size_t k = 0; k < j; ++k)
            if (types[k] == type) return true;
        return false;
    };
    using V = mmca::attention_variant;
    switch (v.variant) {
        case V::causal: collect(false, [&](std::size_t k) { return k <= j && types[k] != P; }); break;
        case V::mmca:
            if (tj == I) {
                self_term = true;
            } else {
                collect(false, [&](std::size_t k) { return k <= j && types[k] == T; });
                collect(false, [&](std::size_t k) { return k < j && types[k] == I; });
            }
            break;
        case V::mmca_reference: {
            const std::int8_t other = tj == T ? I : T;
            if (tj == T)
                collect(false, [&](std::size_t k) { return k <= j && types[k] == T; });
            else
                self_term = true;
            if (earlier(other))
                collect(false, [&](std::size_t k) { return k < j && types[k] == other; });
            else
                collect(true, [&](std::size_t k) { return (k <= j && types[k] != P) || (k > j && types[k] == other); });
            break;
        }
        case V::causal_cross: {
            if (tj != T) break;
            collect(false, [&](std::size_t k) { return k <= j && types[k] == T; });
            std::int32_t latest = -1;
            for (std::size_t k = 0; k < j; ++k)
                if (types[k] == I) latest = ids[k];
            switch (v.visibility) {
                case mmca::image_visibility::all: collect(false, [&](std::size_t k) { return types[k] == I; }); break;
                case mmca::image_visibility::preceding:
                    collect(false, [&](std::size_t k) { return k < j && types[k] == I; });
                    break;
                case mmca::image_visibility::latest:
                    collect(false, [&](std::size_t k) { return k < j && types[k] == I && ids[k] == latest; });
                    break;
            }
            break;
        }
    }
    return groups;
}

/// The spec oracle over float32 K/V (widen storage types before calling). Image ids: as passed in
/// tokens.image_ids when with_ids, else one image per maximal run. Acc = double is the oracle;
/// Acc = float is a plain float32 implementation (the yardstick of float32 rounding error).
template <class Acc = double>
tensor4 spec_oracle(const tensor4& q, const tensor4& k, const tensor4& v, const owned_tokens& tokens,
                    const variant_spec& variant, double scale_in = 0.0) {
    const std::size_t B = q.shape()[0], Hq = q.shape()[1], Lq = q.shape()[2], D = q.shape()[3];
    const std::size_t Hkv = k.shape()[1], Lk = k.shape()[2];
    const Acc scale = scale_in == 0.0 ? static_cast<Acc>(1.0 / std::sqrt(static_cast<double>(D))) : static_cast<Acc>(scale_in);
    tensor4 out(q.shape());
    out.fill(0.0f);
    for (std::size_t b = 0; b < B; ++b) {
        const sequence_keys seq = keys_of_sequence(tokens, b, Lk, Lq);
        const std::size_t kvl = seq.kv_len, ql = seq.q_len;
        const std::vector<std::int8_t>& types = seq.types;
        const std::vector<std::int32_t>& ids = seq.ids;
        for (std::size_t i = 0; i < ql; ++i) {
            const std::size_t j = kvl - ql + i;
            bool self_term = false;
            const auto groups = spec_row_groups(variant, types.data(), ids.data(), kvl, j, self_term);
            for (std::size_t h = 0; h < Hq; ++h) {
                const std::size_t hk = h / (Hq / Hkv);
                std::vector<Acc> o(D, Acc(0));
                for (const auto& g : groups) {
                    std::vector<Acc> w(g.keys.size(), Acc(1));
                    if (!g.uniform) {
                        Acc mx = -std::numeric_limits<Acc>::infinity();
                        for (std::size_t n = 0; n < g.keys.size(); ++n) {
                            Acc s = 0;
                            for (std::size_t d = 0; d < D; ++d) s += Acc(q(b, h, i, d)) * Acc(k(b, hk, g.keys[n], d));
                            w[n] = s * scale;
                            mx = std::max(mx, w[n]);
                        }
                        for (auto& x : w) x = std::exp(x - mx);
                    }
                    Acc total = 0;
                    for (Acc x : w) total += x;
                    for (std::size_t n = 0; n < g.keys.size(); ++n)
                        for (std::size_t d = 0; d < D; ++d) o[d] += w[n] / total * Acc(v(b, hk, g.keys[n], d));
                }
                if (self_term)
                    for (std::size_t d = 0; d < D; ++d) o[d] += Acc(v(b, hk, j, d));
                for (std::size_t d = 0; d < D; ++d) out(b, h, i, d) = static_cast<float>(o[d]);
            }
        }
    }
    return out;
}

}  // namespace mmca_test
