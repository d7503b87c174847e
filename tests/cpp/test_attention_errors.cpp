// tests/cpp/test_attention_errors.cpp - bad input is refused with mmca::invalid_argument whose
// message names the argument, the value seen and what was expected; nothing is written on failure.
#include "attention_test_util.hpp"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>
#include <string>
#include <vector>

namespace mmca_test {
namespace {

/// Runs f, expects mmca::invalid_argument naming `argument`, and every substring in its what().
void expect_invalid(const std::function<void()>& f, const std::string& argument,
                    const std::vector<std::string>& substrings) {
    try {
        f();
        ADD_FAILURE() << "no exception; expected mmca::invalid_argument for '" << argument << "'";
    } catch (const mmca::invalid_argument& e) {
        const std::string what = e.what();
        EXPECT_EQ(e.argument(), argument) << what;
        EXPECT_NE(what.find("'" + argument + "'"), std::string::npos) << what;
        for (const auto& s : substrings) EXPECT_NE(what.find(s), std::string::npos) << "missing '" << s << "' in: " << what;
    } catch (const std::exception& e) {
        ADD_FAILURE() << "wrong exception type: " << e.what();
    }
}

/// A valid call (B 2, Hq 4, Hkv 2, L 16, D 64) to perturb one argument at a time.
struct valid_call {
    std::size_t B = 2, Hq = 4, Hkv = 2, Lq = 16, Lk = 16, D = 64;
    tensor4 q, k, v, out;
    owned_tokens tokens;
    mmca::attention_options options;

    valid_call()
        : q(random_tensor({B, Hq, Lq, D}, 1)),
          k(random_tensor({B, Hkv, Lk, D}, 2)),
          v(random_tensor({B, Hkv, Lk, D}, 3)),
          out(filled({B, Hq, Lq, D}, 7.0f)),
          tokens({make_pattern(pattern_kind::interleaved, 16, 4), make_pattern(pattern_kind::leading_image, 16, 5)},
                 16, true) {}

    void run(mmca::attention_impl impl = mmca::attention_impl::fused) {
        mmca::attention_forward<float>(q, k, v, tokens.layout(), options, out, impl);
    }
    void run_with(const tensor4& q2, const tensor4& k2, const tensor4& v2, tensor4& out2) {
        mmca::attention_forward<float>(q2, k2, v2, tokens.layout(), options, out2);
    }
};

const char* where = "mmca::attention_forward";

TEST(AttentionErrors, ValidCallPasses) {
    valid_call c;
    EXPECT_NO_THROW(c.run());
    EXPECT_NO_THROW(c.run(mmca::attention_impl::reference));
}

TEST(AttentionErrors, KeyBatchDiffersFromQueryBatch) {
    valid_call c;
    const tensor4 k = random_tensor({3, 2, 16, 64}, 9), v = random_tensor({3, 2, 16, 64}, 10);
    expect_invalid([&] { c.run_with(c.q, k, v, c.out); }, "k", {where, "[3, 2, 16, 64]", "[2, Hkv, Lk, 64]"});
}

TEST(AttentionErrors, ValueShapeDiffersFromKeyShape) {
    valid_call c;
    const tensor4 v = random_tensor({2, 2, 15, 64}, 10);
    expect_invalid([&] { c.run_with(c.q, c.k, v, c.out); }, "v", {"[2, 2, 15, 64]", "the shape of k [2, 2, 16, 64]"});
}

TEST(AttentionErrors, HeadDimMismatch) {
    valid_call c;
    const tensor4 k = random_tensor({2, 2, 16, 32}, 9), v = random_tensor({2, 2, 16, 32}, 10);
    expect_invalid([&] { c.run_with(c.q, k, v, c.out); }, "k", {"[2, 2, 16, 32]", "[2, Hkv, Lk, 64]"});
}

TEST(AttentionErrors, OutShapeDiffersFromQueryShape) {
    valid_call c;
    tensor4 out = filled({2, 4, 15, 64}, 7.0f);
    expect_invalid([&] { c.run_with(c.q, c.k, c.v, out); }, "out", {"[2, 4, 15, 64]", "the shape of q [2, 4, 16, 64]"});
    // Nothing was written.
    for (float x : out) ASSERT_EQ(x, 7.0f);
}

TEST(AttentionErrors, MissingOut) {
    valid_call c;
    expect_invalid(
        [&] {
            mmca::attention_forward<float>(c.q, c.k, c.v, c.tokens.layout(), c.options, mmca::tensor_ref<float, 4>{});
        },
        "out", {"no tensor"});
}

TEST(AttentionErrors, QueryHeadsNotAMultipleOfKvHeads) {
    valid_call c;
    const tensor4 k = random_tensor({2, 3, 16, 64}, 9), v = random_tensor({2, 3, 16, 64}, 10);
    expect_invalid([&] { c.run_with(c.q, k, v, c.out); }, "k", {"3 kv heads for 4 query heads", "divides"});
}

TEST(AttentionErrors, HeadDimAbove256) {
    valid_call c;
    const tensor4 q = random_tensor({1, 1, 2, 257}, 1), k = random_tensor({1, 1, 2, 257}, 2),
                  v = random_tensor({1, 1, 2, 257}, 3);
    tensor4 out = filled({1, 1, 2, 257}, 0.0f);
    owned_tokens tokens({sequence_of({T, T})}, 2, false);
    expect_invalid([&] { mmca::attention_forward<float>(q, k, v, tokens.layout(), c.options, out); }, "q",
                   {"head dim 257", "D <= 256"});
    // 256 itself is fine.
    const tensor4 q2 = random_tensor({1, 1, 2, 256}, 1), k2 = random_tensor({1, 1, 2, 256}, 2),
                  v2 = random_tensor({1, 1, 2, 256}, 3);
    EXPECT_NO_THROW(mmca::attention(q2, k2, v2, tokens.layout(), c.options));
}

TEST(AttentionErrors, UnknownTokenType) {
    for (int bad : {3, -1}) {
        valid_call c;
        c.tokens.types(1, 5) = static_cast<std::int8_t>(bad);
        expect_invalid([&] { c.run(); }, "token_types",
                       {"token_types[1, 5] = " + std::to_string(bad), "0 (pad), 1 (text) or 2 (image)"});
        for (float x : c.out) ASSERT_EQ(x, 7.0f) << "output written before the check";
    }
}

TEST(AttentionErrors, TokenTypesBeyondKvLenAreNotRead) {
    valid_call c;
    c.tokens.set_kv_lens({16, 10});
    c.tokens.set_q_lens({16, 10});
    c.tokens.types(1, 12) = 9;  // beyond kv_lens[1]: ignored
    EXPECT_NO_THROW(c.run());
}

TEST(AttentionErrors, TokenTypesShape) {
    valid_call c;
    owned_tokens t({make_pattern(pattern_kind::interleaved, 15, 4), make_pattern(pattern_kind::interleaved, 15, 5)}, 15,
                   false);
    expect_invalid([&] { mmca::attention_forward<float>(c.q, c.k, c.v, t.layout(), c.options, c.out); }, "token_types",
                   {"[2, 15]", "[2, 16] (B, Lk)"});
}

TEST(AttentionErrors, ImageIndexOutOfRange) {
    for (int bad : {-1, 16, 1000}) {
        valid_call c;
        std::size_t pos = 0;
        while (c.tokens.types(0, pos) != I) ++pos;
        c.tokens.image_ids(0, pos) = bad;
        expect_invalid([&] { c.run(); }, "image_ids",
                       {"image_ids[0, " + std::to_string(pos) + "] = " + std::to_string(bad), "[0, 16)"});
    }
    // With kv_lens, the bound is the sequence's length.
    valid_call c;
    c.tokens.set_kv_lens({16, 12});
    c.tokens.set_q_lens({16, 12});
    std::size_t pos = 0;
    while (c.tokens.types(1, pos) != I) ++pos;
    c.tokens.image_ids(1, pos) = 12;
    expect_invalid([&] { c.run(); }, "image_ids", {"= 12", "[0, 12)"});
}

TEST(AttentionErrors, KvLensOutOfRange) {
    for (int bad : {-1, 17}) {
        valid_call c;
        c.tokens.set_kv_lens({16, bad});
        c.tokens.set_q_lens({16, 0});
        expect_invalid([&] { c.run(); }, "kv_lens", {"kv_lens[1] = " + std::to_string(bad), "[0, 16]"});
    }
}

TEST(AttentionErrors, QLensOutOfRange) {
    {
        valid_call c;
        c.tokens.set_q_lens({17, 16});
        expect_invalid([&] { c.run(); }, "q_lens", {"q_lens[0] = 17", "Lq = 16"});
    }
    {
        valid_call c;
        c.tokens.set_q_lens({-2, 16});
        expect_invalid([&] { c.run(); }, "q_lens", {"q_lens[0] = -2"});
    }
    {  // more queries than keys
        valid_call c;
        c.tokens.set_kv_lens({16, 9});
        c.tokens.set_q_lens({16, 10});
        expect_invalid([&] { c.run(); }, "q_lens", {"q_lens[1] = 10", "kv_lens[1] = 9"});
    }
}

TEST(AttentionErrors, LengthTensorsOfWrongSize) {
    valid_call c;
    mmca::token_layout t = c.tokens.layout();
    const std::vector<std::int32_t> three = {16, 16, 16};
    t.kv_lens = mmca::tensor_ref<const std::int32_t, 1>(three.data(), {3});
    expect_invalid([&] { mmca::attention_forward<float>(c.q, c.k, c.v, t, c.options, c.out); }, "kv_lens",
                   {"[3]", "[2]"});
    t = c.tokens.layout();
    t.q_lens = mmca::tensor_ref<const std::int32_t, 1>(three.data(), {3});
    expect_invalid([&] { mmca::attention_forward<float>(c.q, c.k, c.v, t, c.options, c.out); }, "q_lens",
                   {"[3]", "[2]"});
    t = c.tokens.layout();
    const std::vector<std::int32_t> ids(2 * 15, 0);
    t.image_ids = mmca::tensor_ref<const std::int32_t, 2>(ids.data(), {2, 15});
    expect_invalid([&] { mmca::attention_forward<float>(c.q, c.k, c.v, t, c.options, c.out); }, "image_ids",
                   {"[2, 15]", "[2, 16]"});
}

TEST(AttentionErrors, BadScale) {
    for (float bad : {-1.0f, std::numeric_limits<float>::infinity(), std::nanf("")}) {
        valid_call c;
        c.options.scale = bad;
        expect_invalid([&] { c.run(); }, "scale", {"a finite value > 0"});
    }
    valid_call c;
    c.options.scale = -0.5f;
    expect_invalid([&] { c.run(); }, "scale", {"got -0.5"});
}

TEST(AttentionErrors, NonContiguousHeadDim) {
    valid_call c;
    const std::int64_t D = 64;
    mmca::tensor_ref<const float, 4> k(c.k.data(), {2, 2, 16, 32}, {2 * 16 * D, 16 * D, D, 2});
    mmca::tensor_ref<const float, 4> v(c.v.data(), {2, 2, 16, 32}, {2 * 16 * D, 16 * D, D, 2});
    const tensor4 q = random_tensor({2, 4, 16, 32}, 1);
    tensor4 out = filled({2, 4, 16, 32}, 0.0f);
    expect_invalid([&] { mmca::attention_forward<float>(q, k, v, c.tokens.layout(), c.options, out); }, "q/k/v",
                   {"contiguous"});
}

TEST(AttentionErrors, EmptyTensors) {
    valid_call c;
    // A view with a zero extent (data present, nothing in it).
    mmca::tensor_ref<const float, 4> q0(c.q.data(), {2, 4, 0, 64});
    mmca::tensor_ref<float, 4> out0(c.out.data(), {2, 4, 0, 64});
    expect_invalid([&] { mmca::attention_forward<float>(q0, c.k, c.v, c.tokens.layout(), c.options, out0); }, "q",
                   {"[2, 4, 0, 64]", "non-empty"});
    // A zero-size xtensor has no data pointer at all: it is refused too (reported as "no tensor").
    const tensor4 q00({2, 4, 0, 64});
    tensor4 out00({2, 4, 0, 64});
    EXPECT_THROW(c.run_with(q00, c.k, c.v, out00), mmca::invalid_argument);
    mmca::token_layout t = c.tokens.layout();
    t.types = {};
    expect_invalid([&] { mmca::attention_forward<float>(c.q, c.k, c.v, t, c.options, c.out); }, "token_types",
                   {"no tensor"});
}

TEST(AttentionErrors, ParseNames) {
    EXPECT_EQ(mmca::parse_attention_variant("mmca_reference"), mmca::attention_variant::mmca_reference);
    EXPECT_EQ(mmca::parse_image_visibility("latest"), mmca::image_visibility::latest);
    EXPECT_EQ(mmca::parse_attention_impl("reference"), mmca::attention_impl::reference);
    expect_invalid([] { mmca::parse_attention_variant("mmca2"); }, "variant", {"'mmca2'", "'causal_cross'"});
    expect_invalid([] { mmca::parse_image_visibility("first"); }, "policy", {"'first'", "'preceding'"});
    expect_invalid([] { mmca::parse_attention_impl("cuda"); }, "impl", {"'cuda'", "'fused'"});
}

// ------------------------------------------------------------------------------------------------
// KV cache: construction and append.

TEST(KvCacheErrors, Construction) {
    expect_invalid([] { mmca::kv_cache<float>(0, 2, 8, 64); }, "batch", {"got 0"});
    expect_invalid([] { mmca::kv_cache<float>(1, 0, 8, 64); }, "kv_heads", {"got 0"});
    expect_invalid([] { mmca::kv_cache<float>(1, 2, 0, 64); }, "capacity", {"got 0"});
    expect_invalid([] { mmca::kv_cache<float>(1, 2, 8, 300); }, "head_dim", {"got 300", "[1, 256]"});
}

/// A batch-2 cache (Hkv 2, capacity 20, D 16) holding 12 and 7 tokens, and a checker that the
/// cache still gives the same attention output as before a failed append.
struct filled_cache {
    mmca::kv_cache<float> cache{2, 2, 20, 16};
    tensor4 q = random_tensor({2, 4, 12, 16}, 21);
    tensor4 before;
    mmca::attention_options options;

    filled_cache() {
        const tensor4 k = random_tensor({2, 2, 12, 16}, 22), v = random_tensor({2, 2, 12, 16}, 23);
        owned_tokens t({sequence_of({T, T, I, I, I, T, T, I, I, T, T, T}), sequence_of({I, I, T, T, I, T, T})}, 12,
                       false);
        t.set_kv_lens({12, 7});  // used as append lens
        cache.append(k, v, t.types, {}, t.kv_lens);
        options.variant = mmca::attention_variant::mmca_reference;
        before = attend();
    }
    tensor4 attend() const {
        tensor4 out = filled(q.shape(), std::nanf(""));
        mmca::attention_forward(q, cache, options, out);
        return out;
    }
    void expect_unchanged() const {
        EXPECT_EQ(cache.length(0), 12);
        EXPECT_EQ(cache.length(1), 7);
        EXPECT_EQ(cache.last_appended(0), 12);
        EXPECT_EQ(cache.last_appended(1), 7);
        EXPECT_TRUE(bitwise_equal(attend(), before));
    }
};

TEST(KvCacheErrors, AppendPastCapacityLeavesTheCacheUnchanged) {
    filled_cache f;
    // 9 more tokens fit sequence 0 (12 + 8 = 20) but the batch asks 9: sequence 0 overflows.
    const tensor4 k = random_tensor({2, 2, 9, 16}, 31), v = random_tensor({2, 2, 9, 16}, 32);
    owned_tokens t({sequence_of(std::vector<std::int8_t>(9, T)), sequence_of(std::vector<std::int8_t>(9, T))}, 9, false);
    expect_invalid([&] { f.cache.append(k, v, t.types); }, "k",
                   {"9 new tokens for sequence 0 holding 12", "at most 8", "capacity 20"});
    f.expect_unchanged();
    // Sequence 1 would fit 9 and sequence 0 takes 8 with lens: that append succeeds.
    t.set_kv_lens({8, 9});
    EXPECT_NO_THROW(f.cache.append(k, v, t.types, {}, t.kv_lens));
    EXPECT_EQ(f.cache.length(0), 20);
    EXPECT_EQ(f.cache.length(1), 16);
    // And now the full sequence 0 refuses even one more token.
    const tensor4 k1 = random_tensor({2, 2, 1, 16}, 33), v1 = random_tensor({2, 2, 1, 16}, 34);
    owned_tokens t1({sequence_of({T}), sequence_of({T})}, 1, false);
    expect_invalid([&] { f.cache.append(k1, v1, t1.types); }, "k", {"1 new tokens for sequence 0 holding 20", "at most 0"});
    EXPECT_EQ(f.cache.length(0), 20);
    EXPECT_EQ(f.cache.length(1), 16);
}

TEST(KvCacheErrors, FailedAppendOnTheSecondSequenceWritesNothingToTheFirst) {
    filled_cache f;
    const tensor4 k = random_tensor({2, 2, 3, 16}, 31), v = random_tensor({2, 2, 3, 16}, 32);
    owned_tokens t({sequence_of({T, T, T}), sequence_of({T, T, T})}, 3, false);
    t.types(1, 2) = 5;
    expect_invalid([&] { f.cache.append(k, v, t.types); }, "token_types", {"token_types[1, 2] = 5"});
    f.expect_unchanged();
}

TEST(KvCacheErrors, BadAppendShapes) {
    filled_cache f;
    const tensor4 good = random_tensor({2, 2, 3, 16}, 40);
    owned_tokens t({sequence_of({T, I, T}), sequence_of({T, I, T})}, 3, true);
    {
        const tensor4 k = random_tensor({2, 1, 3, 16}, 41);
        expect_invalid([&] { f.cache.append(k, k, t.types); }, "k", {"[2, 1, 3, 16]", "[2, 2, Ln, 16]"});
    }
    {
        const tensor4 k = random_tensor({2, 2, 3, 8}, 41);
        expect_invalid([&] { f.cache.append(k, k, t.types); }, "k", {"[2, 2, 3, 8]", "[2, 2, Ln, 16]"});
    }
    {
        const tensor4 k = random_tensor({1, 2, 3, 16}, 41);
        expect_invalid([&] { f.cache.append(k, k, t.types); }, "k", {"[1, 2, 3, 16]"});
    }
    {
        const tensor4 v = random_tensor({2, 2, 4, 16}, 41);
        expect_invalid([&] { f.cache.append(good, v, t.types); }, "v", {"[2, 2, 4, 16]", "the shape of k [2, 2, 3, 16]"});
    }
    {
        owned_tokens t4({sequence_of({T, I, T, T}), sequence_of({T, I, T, T})}, 4, false);
        expect_invalid([&] { f.cache.append(good, good, t4.types); }, "token_types", {"[2, 4]", "[2, 3] (B, Ln)"});
    }
    {
        const std::vector<std::int32_t> ids(2 * 4, 0);
        mmca::tensor_ref<const std::int32_t, 2> bad_ids(ids.data(), {2, 4});
        expect_invalid([&] { f.cache.append(good, good, t.types, bad_ids); }, "image_ids", {"[2, 4]", "[2, 3]"});
    }
    {
        const std::vector<std::int32_t> lens = {1, 1, 1};
        mmca::tensor_ref<const std::int32_t, 1> bad_lens(lens.data(), {3});
        expect_invalid([&] { f.cache.append(good, good, t.types, {}, bad_lens); }, "lens", {"[3]", "[2]"});
    }
    {
        const std::vector<std::int32_t> lens = {1, 4};
        mmca::tensor_ref<const std::int32_t, 1> bad_lens(lens.data(), {2});
        expect_invalid([&] { f.cache.append(good, good, t.types, {}, bad_lens); }, "lens", {"lens[1] = 4", "[0, 3]"});
    }
    {
        t.image_ids(0, 1) = 20;  // capacity 20
        expect_invalid([&] { f.cache.append(good, good, t.types, t.image_ids); }, "image_ids",
                       {"image_ids[0, 1] = 20", "an image index in [0, "});
        t.image_ids(0, 1) = 0;
    }
    {
        const std::int64_t D = 16;
        mmca::tensor_ref<const float, 4> strided(good.data(), {2, 2, 3, 8}, {2 * 3 * D, 3 * D, D, 2});
        mmca::kv_cache<float> c8(2, 2, 8, 8);
        expect_invalid([&] { c8.append(strided, strided, t.types); }, "k/v", {"contiguous"});
    }
    f.expect_unchanged();
}

// append() refuses an explicit image id that attention over the cache would refuse: an id must lie
// in [0, position of the token], so no successful append can leave a cache on which attention throws.
TEST(KvCacheErrors, ImageIdThatAttentionWouldRefuseIsRefusedByAppend) {
    mmca::kv_cache<float> cache(1, 1, 16, 4);
    const tensor4 k = filled({1, 1, 3, 4}, 0.0f);
    owned_tokens t({sequence_of({T, I, I}, {-1, 10, 10})}, 3, true);
    expect_invalid([&] { cache.append(k, k, t.types, t.image_ids); }, "image_ids", {"image_ids[0, 1] = 10"});
    EXPECT_EQ(cache.length(0), 0);
    // Whatever append accepts, attention over the cache accepts too.
    owned_tokens ok({sequence_of({T, I, I}, {-1, 1, 1})}, 3, true);
    cache.append(k, k, ok.types, ok.image_ids);
    const tensor4 q = filled({1, 1, 3, 4}, 0.0f);
    tensor4 out = filled({1, 1, 3, 4}, 0.0f);
    EXPECT_NO_THROW(mmca::attention_forward(q, cache, {}, out));
}

TEST(KvCacheErrors, AttentionOverTheCacheChecksQuery) {
    filled_cache f;
    // Fewer query rows than appended tokens (12 for sequence 0).
    const tensor4 q = random_tensor({2, 4, 11, 16}, 50);
    tensor4 out = filled(q.shape(), 0.0f);
    expect_invalid([&] { mmca::attention_forward(q, f.cache, f.options, out); }, "q_lens", {"q_lens[0] = 12", "Lq = 11"});
    // Query heads not a multiple of the cache's kv heads.
    const tensor4 q3 = random_tensor({2, 3, 12, 16}, 51);
    tensor4 out3 = filled(q3.shape(), 0.0f);
    expect_invalid([&] { mmca::attention_forward(q3, f.cache, f.options, out3); }, "k", {"2 kv heads for 3 query heads"});
}

}  // namespace
}  // namespace mmca_test
