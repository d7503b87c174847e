// tests/cpp/test_kv_cache.cpp - attention over a KV cache: prefill at once, token by token and in
// chunks, against the reference run on the keys present at each step and against one full prefill.
//
// Contract (kv_cache.hpp): attention for the tokens of the latest append over everything cached.
// Rows equal the full prefill except rows that by definition see later keys (mmca_reference's text
// rows before the first image and image rows before the first text; causal_cross `all`); every row
// equals the reference evaluated on the prefix present when it is computed.
#include "attention_test_util.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

namespace mmca_test {
namespace {

constexpr std::size_t B = 2, Hq = 4, Hkv = 2, D = 64, capacity = 80;

/// A batch of two interleaved sequences (text, image, text, image, text) of 70 and 53 tokens.
/// With consecutive = true, image runs touch (two images back to back) and ids are explicit.
struct cache_data {
    std::vector<token_sequence> seqs;
    std::vector<int> lengths;
    std::size_t Lmax;
    bool explicit_ids;
    tensor4 q, k, v;  // (B, Hq, Lmax, D), (B, Hkv, Lmax, D) x 2

    explicit cache_data(bool consecutive, std::uint64_t seed = 5) : explicit_ids(consecutive) {
        rng r(seed);
        for (int len : {70, 53}) {
            token_sequence s;
            std::int32_t id = 0;
            while (static_cast<int>(s.size()) < len) {
                const int rest = len - static_cast<int>(s.size());
                s.add(T, std::min(rest, r.integer(2, 9)));
                if (static_cast<int>(s.size()) >= len) break;
                const int n = std::min(len - static_cast<int>(s.size()), r.integer(6, 16));
                s.add(I, n, id++);
                if (consecutive && static_cast<int>(s.size()) < len)
                    s.add(I, std::min(len - static_cast<int>(s.size()), r.integer(3, 8)), id++);
            }
            seqs.push_back(s);
            lengths.push_back(len);
        }
        Lmax = 70;
        q = random_tensor({B, Hq, Lmax, D}, seed * 3 + 1, -1.5f, 1.5f);
        k = random_tensor({B, Hkv, Lmax, D}, seed * 3 + 2, -1.5f, 1.5f);
        v = random_tensor({B, Hkv, Lmax, D}, seed * 3 + 3);
    }

    owned_tokens full_tokens() const {
        owned_tokens t(seqs, Lmax, explicit_ids);
        t.set_kv_lens(lengths);
        t.set_q_lens(lengths);
        return t;
    }
};

/// Collects rows to compare in one shot: (1, H, rows, D) tensors of what the cache gave and what
/// the oracle gives for the same rows.
struct row_pairs {
    std::vector<tensor4> got, want;
    void add(const tensor4& g, const tensor4& w) {
        got.push_back(g);
        want.push_back(w);
    }
    static tensor4 stack(const std::vector<tensor4>& rows) {
        tensor4 t({1, rows.empty() ? 1 : rows[0].shape()[1], rows.size(), rows.empty() ? 1 : rows[0].shape()[3]});
        for (std::size_t n = 0; n < rows.size(); ++n)
            for (std::size_t h = 0; h < t.shape()[1]; ++h)
                for (std::size_t d = 0; d < t.shape()[3]; ++d) t(0, h, n, d) = rows[n](0, h, 0, d);
        return t;
    }
    ::testing::AssertionResult close(double tol) const { return all_close(stack(got), stack(want), tol); }
};

struct schedule_result {
    std::size_t rows_checked_against_full = 0;
    std::size_t rows_seeing_later_keys = 0;
};

/// Feeds the cache in chunks of the given sizes (cycled; one chunk of Lmax for a full prefill) and
/// checks every step. S is the cache's storage type; the oracle gets K/V rounded the same way.
template <class S>
schedule_result run_schedule(mmca::kv_cache<S>& cache, const variant_spec& variant, const cache_data& d,
                             const std::vector<int>& chunks) {
    schedule_result result;
    const auto options = variant.options();
    const mmca::tensor<S, 4> ks = to_storage<S>(d.k), vs = to_storage<S>(d.v);
    const owned_tokens full = d.full_tokens();
    const tensor4 full_ref = mmca::attention<S>(d.q, ks, vs, full.layout(), options, mmca::attention_impl::reference);
    row_pairs against_full;

    std::size_t s = 0, step = 0;
    while (s < d.Lmax) {
        const std::size_t n = std::min<std::size_t>(chunks[step % chunks.size()], d.Lmax - s);
        std::vector<int> count(B);
        for (std::size_t b = 0; b < B; ++b)
            count[b] = std::max(0, std::min(static_cast<int>(s + n), d.lengths[b]) - static_cast<int>(s));
        // The new tokens: K/V, types, image ids and how many each sequence takes.
        tensor4 k_new = filled({B, Hkv, n, D}, 0.0f), v_new = filled({B, Hkv, n, D}, 0.0f);
        tensor4 q_new = filled({B, Hq, n, D}, 0.0f);
        std::vector<token_sequence> new_seqs(B);
        for (std::size_t b = 0; b < B; ++b) {
            for (std::size_t i = 0; i < n; ++i) {
                const bool valid = static_cast<int>(i) < count[b];
                new_seqs[b].types.push_back(valid ? d.seqs[b].types[s + i] : P);
                new_seqs[b].ids.push_back(valid ? d.seqs[b].ids[s + i] : -1);
                if (!valid) continue;
                for (std::size_t dd = 0; dd < D; ++dd) {
                    for (std::size_t h = 0; h < Hkv; ++h) {
                        k_new(b, h, i, dd) = d.k(b, h, s + i, dd);
                        v_new(b, h, i, dd) = d.v(b, h, s + i, dd);
                    }
                    for (std::size_t h = 0; h < Hq; ++h) q_new(b, h, i, dd) = d.q(b, h, s + i, dd);
                }
            }
        }
        owned_tokens appended(new_seqs, n, d.explicit_ids);
        appended.set_kv_lens(count);  // the per-sequence counts, as append's lens
        if (d.explicit_ids)
            cache.append(k_new, v_new, appended.types, appended.image_ids, appended.kv_lens);
        else
            cache.append(k_new, v_new, appended.types, {}, appended.kv_lens);

        tensor4 out = filled({B, Hq, n, D}, std::nanf(""));
        mmca::attention_forward(q_new, cache, options, out);

        // The reference on the keys present now: kv_len = keys cached, q_len = the new tokens.
        std::vector<int> present(B);
        for (std::size_t b = 0; b < B; ++b) {
            present[b] = std::min(static_cast<int>(s), d.lengths[b]) + count[b];
            EXPECT_EQ(cache.length(b), present[b]);
            EXPECT_EQ(cache.last_appended(b), count[b]);
        }
        owned_tokens prefix(d.seqs, d.Lmax, d.explicit_ids);
        prefix.set_kv_lens(present);
        prefix.set_q_lens(count);
        const tensor4 prefix_ref =
            mmca::attention<S>(q_new, ks, vs, prefix.layout(), options, mmca::attention_impl::reference);
        EXPECT_TRUE(all_close(out, prefix_ref, 1e-5)) << "step " << step << ": tokens [" << s << ", " << s + n << ")";

        for (std::size_t b = 0; b < B; ++b)
            for (int i = 0; i < count[b]; ++i) {
                const std::size_t t = s + i;
                if (row_sees_beyond(variant, d.seqs[b].types, d.lengths[b], t, present[b])) {
                    ++result.rows_seeing_later_keys;
                    continue;
                }
                against_full.add(row_of(out, b, i), row_of(full_ref, b, t));
                ++result.rows_checked_against_full;
            }
        s += n;
        ++step;
    }
    EXPECT_TRUE(against_full.close(1e-5)) << "rows that see no later key must equal the full prefill";
    return result;
}

const std::vector<int> token_by_token = {1};
const std::vector<int> odd_chunks = {4, 9, 1, 30, 3, 17};  // boundaries at 4, 13, 14, 44, 47, 64 (inside image runs)
const std::vector<int> other_chunks = {5, 17, 1, 40};

bool sees_later_keys(const variant_spec& v) {
    return v.variant == mmca::attention_variant::mmca_reference ||
           (v.variant == mmca::attention_variant::causal_cross && v.visibility == mmca::image_visibility::all);
}

// ------------------------------------------------------------------------------------------------

class KvCache : public ::testing::TestWithParam<std::tuple<variant_spec, bool>> {};

std::string cache_name(const ::testing::TestParamInfo<std::tuple<variant_spec, bool>>& info) {
    return std::get<0>(info.param).name() + (std::get<1>(info.param) ? "_consecutive_images" : "_image_runs");
}

TEST_P(KvCache, PrefillAtOnceEqualsAttentionWithoutCache) {
    const auto& [variant, consecutive] = GetParam();
    const cache_data d(consecutive);
    mmca::kv_cache<float> cache(B, Hkv, capacity, D);
    const auto r = run_schedule(cache, variant, d, {static_cast<int>(d.Lmax)});
    EXPECT_EQ(r.rows_seeing_later_keys, 0u);  // everything is present at once
    // And the cache's rows equal the cache-less fused call on the same tensors.
    const owned_tokens full = d.full_tokens();
    const tensor4 without = mmca::attention(d.q, d.k, d.v, full.layout(), variant.options());
    tensor4 with = filled(d.q.shape(), std::nanf(""));
    mmca::attention_forward(d.q, cache, variant.options(), with);
    EXPECT_TRUE(all_close(with, without, 1e-5));
}

TEST_P(KvCache, TokenByToken) {
    const auto& [variant, consecutive] = GetParam();
    const cache_data d(consecutive);
    mmca::kv_cache<float> cache(B, Hkv, capacity, D);
    const auto r = run_schedule(cache, variant, d, token_by_token);
    EXPECT_EQ(r.rows_checked_against_full + r.rows_seeing_later_keys, 70u + 53u);
    if (sees_later_keys(variant)) {
        EXPECT_GT(r.rows_seeing_later_keys, 0u) << "the data should exercise such rows";
    }
}

TEST_P(KvCache, ChunkedPrefill) {
    const auto& [variant, consecutive] = GetParam();
    const cache_data d(consecutive);
    mmca::kv_cache<float> cache(B, Hkv, capacity, D);
    run_schedule(cache, variant, d, odd_chunks);
    cache.clear();
    run_schedule(cache, variant, d, other_chunks);
}

TEST_P(KvCache, ClearThenReuse) {
    const auto& [variant, consecutive] = GetParam();
    const cache_data d(consecutive), other(consecutive, 77);
    mmca::kv_cache<float> cache(B, Hkv, capacity, D);
    run_schedule(cache, variant, other, odd_chunks);
    cache.clear();
    for (std::size_t b = 0; b < B; ++b) {
        EXPECT_EQ(cache.length(b), 0);
        EXPECT_EQ(cache.last_appended(b), 0);
    }
    run_schedule(cache, variant, d, token_by_token);
    cache.clear();
    run_schedule(cache, variant, d, {static_cast<int>(d.Lmax)});
}

INSTANTIATE_TEST_SUITE_P(Variants, KvCache,
                         ::testing::Combine(::testing::ValuesIn(all_variants()), ::testing::Bool()), cache_name);

// ------------------------------------------------------------------------------------------------
// float16 / bfloat16 cache storage against the reference given the same rounded values.

enum class storage { f16, bf16 };

class KvCacheStorage : public ::testing::TestWithParam<std::tuple<variant_spec, storage>> {};

TEST_P(KvCacheStorage, TokenByTokenAndChunked) {
    const auto& [variant, s] = GetParam();
    const cache_data d(true);
    if (s == storage::f16) {
        mmca::kv_cache<mmca::float16> cache(B, Hkv, capacity, D);
        run_schedule(cache, variant, d, token_by_token);
        cache.clear();
        run_schedule(cache, variant, d, odd_chunks);
    } else {
        mmca::kv_cache<mmca::bfloat16> cache(B, Hkv, capacity, D);
        run_schedule(cache, variant, d, token_by_token);
        cache.clear();
        run_schedule(cache, variant, d, odd_chunks);
    }
}

TEST(KvCacheStorageValues, StoredValuesAreTheRoundedInputs) {
    const cache_data d(false);
    mmca::kv_cache<mmca::bfloat16> cache(B, Hkv, capacity, D);
    owned_tokens full = d.full_tokens();
    cache.append(d.k, d.v, full.types, {}, full.kv_lens);
    const auto rounded = to_storage<mmca::bfloat16>(d.k);
    const auto keys = cache.keys();
    ASSERT_EQ(keys.shape[2], static_cast<std::int64_t>(capacity));
    for (std::size_t b = 0; b < B; ++b)
        for (std::size_t h = 0; h < Hkv; ++h)
            for (int i = 0; i < d.lengths[b]; ++i)
                for (std::size_t dd = 0; dd < D; ++dd)
                    ASSERT_EQ(static_cast<float>(keys(b, h, i, dd)), static_cast<float>(rounded(b, h, i, dd)));
    // bfloat16 really rounds: at least one key differs from its float32 value.
    bool any_rounded = false;
    for (std::size_t n = 0; n < d.k.size(); ++n) any_rounded |= static_cast<float>(rounded.data()[n]) != d.k.data()[n];
    EXPECT_TRUE(any_rounded);
}

INSTANTIATE_TEST_SUITE_P(Variants, KvCacheStorage,
                         ::testing::Combine(::testing::ValuesIn(all_variants()),
                                            ::testing::Values(storage::f16, storage::bf16)),
                         [](const auto& info) {
                             return std::get<0>(info.param).name() +
                                    (std::get<1>(info.param) == storage::f16 ? "_f16" : "_bf16");
                         });

// ------------------------------------------------------------------------------------------------
// Image numbering and metadata of the cache.

TEST(KvCacheImages, RunsAreNumberedAcrossAppendsAndAfterClear) {
    mmca::kv_cache<float> cache(1, 1, 16, 4);
    auto append = [&](std::vector<std::int8_t> types) {
        owned_tokens t({sequence_of(types)}, types.size(), false);
        const tensor4 part = random_tensor({1, 1, types.size(), 4}, 4);
        cache.append(part, part, t.types);
    };
    append({T, I, I});  // image 0 starts at 1
    append({I, T, I});  // position 3 continues image 0 across the append; 5 starts image 1
    append({I, I, T});  // 6, 7 continue image 1
    const auto tokens = cache.tokens();
    const std::vector<std::int32_t> expected = {-1, 0, 0, 0, -1, 1, 1, 1, -1};
    for (std::size_t x = 0; x < expected.size(); ++x) EXPECT_EQ(tokens.image_ids(0, x), expected[x]) << "position " << x;
    EXPECT_EQ(tokens.kv_lens(0), 9);
    EXPECT_EQ(tokens.q_lens(0), 3);
    cache.clear();
    append({I, I, T});  // numbering restarts at 0
    EXPECT_EQ(cache.tokens().image_ids(0, 0), 0);
    EXPECT_EQ(cache.tokens().image_ids(0, 1), 0);
    EXPECT_EQ(cache.tokens().image_ids(0, 2), -1);
    EXPECT_EQ(cache.length(0), 3);
}

TEST(KvCacheImages, ExplicitIdsKeepBackToBackImagesApart) {
    // text, image 0 (2 tokens), image 1 (2 tokens) back to back, then a decoded text token: under
    // `latest` it must see image 1 only; without ids the four image tokens would be one image.
    const std::size_t L = 6, Dh = 6;
    tensor4 k = filled({1, 1, L, Dh}, 0.0f), v = filled({1, 1, L, Dh}, 0.0f);
    for (std::size_t x = 0; x < L; ++x) v(0, 0, x, x) = 1.0f;  // V = identity: output = weights
    for (bool with_ids : {true, false}) {
        mmca::kv_cache<float> cache(1, 1, 8, Dh);
        owned_tokens prompt({sequence_of({T, I, I, I, I}, {-1, 0, 0, 1, 1})}, 5, with_ids);
        const tensor4 k5 = rows_of(k, 0, 5), v5 = rows_of(v, 0, 5);
        if (with_ids)
            cache.append(k5, v5, prompt.types, prompt.image_ids);
        else
            cache.append(k5, v5, prompt.types);
        owned_tokens next({sequence_of({T})}, 1, false);
        const tensor4 k1 = rows_of(k, 5, 1), v1 = rows_of(v, 5, 1);
        cache.append(k1, v1, next.types);
        const tensor4 q = filled({1, 1, 1, Dh}, 0.0f);
        tensor4 out = filled({1, 1, 1, Dh}, std::nanf(""));
        mmca::attention_options o;
        o.variant = mmca::attention_variant::causal_cross;
        o.visibility = mmca::image_visibility::latest;
        mmca::attention_forward(q, cache, o, out);
        const std::vector<double> expected = with_ids ? std::vector<double>{0.5, 0, 0, 0.5, 0.5, 0.5}
                                                      : std::vector<double>{0.5, 0.25, 0.25, 0.25, 0.25, 0.5};
        for (std::size_t x = 0; x < L; ++x)
            EXPECT_NEAR(out(0, 0, 0, x), expected[x], 1e-6) << (with_ids ? "explicit ids" : "runs") << ", key " << x;
    }
}

TEST(KvCacheImages, DecodedTextTokenBeforeAnyImage) {
    // mmca_reference, decode phase with no cached image: evaluated on the keys present, the image
    // term of the new text token is the uniform average over every cached token and itself.
    const std::size_t Dh = 4;
    mmca::kv_cache<float> cache(1, 1, 8, Dh);
    tensor4 v = filled({1, 1, 4, Dh}, 0.0f);
    for (std::size_t x = 0; x < 4; ++x) v(0, 0, x, x) = 1.0f;
    const tensor4 k = filled({1, 1, 4, Dh}, 0.0f);
    owned_tokens prompt({sequence_of({T, T, T, T})}, 4, false);
    cache.append(k, v, prompt.types);
    const tensor4 q = filled({1, 1, 4, Dh}, 0.0f);
    tensor4 out = filled({1, 1, 4, Dh}, std::nanf(""));
    mmca::attention_options o;
    o.variant = mmca::attention_variant::mmca_reference;
    mmca::attention_forward(q, cache, o, out);
    // Row 3: text softmax over {0..3} (1/4 each) + uniform over {0..3} (1/4 each).
    for (std::size_t x = 0; x < 4; ++x) EXPECT_NEAR(out(0, 0, 3, x), 0.5, 1e-6);
    // Row 1: text {0, 1} (1/2) + uniform over {0, 1} (1/2): present keys 2, 3 are text, not images.
    EXPECT_NEAR(out(0, 0, 1, 0), 1.0, 1e-6);
    EXPECT_NEAR(out(0, 0, 1, 1), 1.0, 1e-6);
    EXPECT_NEAR(out(0, 0, 1, 2), 0.0, 1e-6);
}


TEST(KvTokens, PartialTakesPerSequenceAndRefusedAppendChangesNothing) {
    // The token side both caches (host and device) keep: sequence 0 takes 3 new tokens, sequence 1
    // takes 1 (lens); an append past the capacity is refused before anything changes.
    mmca::kv_tokens book(2, 5);
    const std::vector<std::int8_t> types = {T, I, I, I, T, T};  // (2, 3)
    const std::vector<std::int32_t> lens = {3, 1};
    const mmca::tensor_ref<const std::int8_t, 2> types_ref(types.data(), {2, 3});
    const mmca::tensor_ref<const std::int32_t, 1> lens_ref(lens.data(), {2});
    const std::vector<std::int64_t> take = book.check_append("test", 3, types_ref, {}, lens_ref);
    EXPECT_EQ(take, (std::vector<std::int64_t>{3, 1}));
    book.record(types_ref, {}, take);
    const mmca::token_layout t = book.tokens();
    EXPECT_EQ(t.kv_lens(0), 3);
    EXPECT_EQ(t.kv_lens(1), 1);
    EXPECT_EQ(t.q_lens(0), 3);
    EXPECT_EQ(t.q_lens(1), 1);
    const std::vector<std::int32_t> ids0 = {-1, 0, 0}, ids1 = {0};
    for (std::int64_t x = 0; x < 3; ++x) EXPECT_EQ(t.image_ids(0, x), ids0[x]) << "sequence 0, position " << x;
    EXPECT_EQ(t.image_ids(1, 0), ids1[0]);
    EXPECT_EQ(t.types(1, 0), I);

    // 3 more tokens fit sequence 1 (1 + 3 <= 5) but not sequence 0 (3 + 3 > 5).
    try {
        (void)book.check_append("test", 3, types_ref, {}, {});
        FAIL() << "an append past the capacity was accepted";
    } catch (const mmca::invalid_argument& e) {
        const std::string what = e.what();
        EXPECT_NE(what.find("3 new tokens for sequence 0 holding 3"), std::string::npos) << what;
        EXPECT_NE(what.find("at most 2"), std::string::npos) << what;
    }
    EXPECT_EQ(book.length(0), 3);
    EXPECT_EQ(book.length(1), 1);
    EXPECT_EQ(book.last_appended(0), 3);

    // A second image run in sequence 1 continues image 0 (its last cached token is an image token).
    const std::vector<std::int8_t> more = {T, I};  // (2, 1)
    const mmca::tensor_ref<const std::int8_t, 2> more_ref(more.data(), {2, 1});
    book.record(more_ref, {}, book.check_append("test", 1, more_ref, {}, {}));
    EXPECT_EQ(book.tokens().image_ids(1, 1), 0);
    EXPECT_EQ(book.tokens().image_ids(0, 3), -1);
    book.clear();
    EXPECT_EQ(book.length(0), 0);
    EXPECT_EQ(book.tokens().image_ids(1, 0), -1);
}

}  // namespace
}  // namespace mmca_test
