// tests/cpp/test_attention_hand.cpp - small cases whose attention weights are written by hand.
//
// V is the identity (D = L, v[k] = e_k), so output row j IS the weight vector of row j: the sum of
// its group weights (and 1 at j for a self term). With q = 0 every softmax is uniform and the
// expected weights are literal fractions; with q_j = a_j e_0, k_k = c_k e_0 and scale 1 the score is
// S[j][k] = a_j c_k and the expected weights are written as the key sets of each group (SPEC §2),
// evaluated with std::exp here. Both the reference and the fused implementation are checked.
#include "attention_test_util.hpp"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

namespace mmca_test {
namespace {

using mmca::attention_impl;
using mmca::attention_variant;
using mmca::image_visibility;
using matrix = std::vector<std::vector<double>>;

constexpr variant_spec causal{attention_variant::causal, image_visibility::preceding};
constexpr variant_spec mmca_paper{attention_variant::mmca, image_visibility::preceding};
constexpr variant_spec mmca_ref{attention_variant::mmca_reference, image_visibility::preceding};
constexpr variant_spec cross_all{attention_variant::causal_cross, image_visibility::all};
constexpr variant_spec cross_preceding{attention_variant::causal_cross, image_visibility::preceding};
constexpr variant_spec cross_latest{attention_variant::causal_cross, image_visibility::latest};

const std::vector<double> a_coef = {0.5, -1.0, 0.8, 1.5, 2.0, -0.7, 1.1, 0.3};  // q_j = a_j e_0
const std::vector<double> c_coef = {1.0, -0.5, 2.0, 0.3, -1.2, 0.7, 1.6, 0.9};  // k_k = c_k e_0

struct hand_run {
    const token_sequence* seq;
    variant_spec variant;
    bool zero_q = true;          // q = 0: uniform softmaxes
    float scale = 1.0f;
    bool explicit_ids = false;
    int kv_len = -1, q_len = -1, Lq = -1;  // -1: full prefill of the whole sequence
    std::size_t Hq = 1, Hkv = 1;
};

/// Runs one hand case; returns the (Lq x L) weight matrix read from head 0 and checks that every
/// query head gives the same rows.
matrix run_weights(const hand_run& r, attention_impl impl) {
    const std::size_t L = r.seq->size(), D = L;
    const std::size_t Lq = r.Lq < 0 ? L : static_cast<std::size_t>(r.Lq);
    tensor4 q = filled({1, r.Hq, Lq, D}, 0.0f), k = filled({1, r.Hkv, L, D}, 0.0f), v = filled({1, r.Hkv, L, D}, 0.0f);
    const std::size_t first = (r.kv_len < 0 ? L : r.kv_len) - (r.q_len < 0 ? Lq : r.q_len);
    for (std::size_t h = 0; h < r.Hq; ++h)
        for (std::size_t i = 0; i < Lq; ++i)
            if (!r.zero_q && first + i < L) q(0, h, i, 0) = static_cast<float>(a_coef[first + i]);
    for (std::size_t h = 0; h < r.Hkv; ++h)
        for (std::size_t x = 0; x < L; ++x) {
            k(0, h, x, 0) = static_cast<float>(c_coef[x]);
            v(0, h, x, x) = 1.0f;
        }
    owned_tokens tokens({*r.seq}, L, r.explicit_ids);
    if (r.kv_len >= 0) tokens.set_kv_lens({r.kv_len});
    if (r.q_len >= 0) tokens.set_q_lens({r.q_len});
    const tensor4 out = mmca::attention(q, k, v, tokens.layout(), r.variant.options(0, r.scale), impl);
    matrix w(Lq, std::vector<double>(L));
    for (std::size_t i = 0; i < Lq; ++i)
        for (std::size_t x = 0; x < L; ++x) {
            w[i][x] = out(0, 0, i, x);
            for (std::size_t h = 1; h < r.Hq; ++h) EXPECT_EQ(out(0, h, i, x), out(0, 0, i, x)) << "head " << h;
        }
    return w;
}

void expect_weights(const matrix& got, const matrix& expected, const std::string& what, double tol = 1e-6) {
    ASSERT_EQ(got.size(), expected.size()) << what;
    for (std::size_t i = 0; i < got.size(); ++i) {
        ASSERT_EQ(got[i].size(), expected[i].size()) << what;
        for (std::size_t x = 0; x < got[i].size(); ++x)
            EXPECT_NEAR(got[i][x], expected[i][x], tol) << what << ": row " << i << ", key " << x;
    }
}

/// Checks both implementations against the expected weights.
void check(const hand_run& r, const matrix& expected) {
    for (auto impl : {attention_impl::reference, attention_impl::fused})
        expect_weights(run_weights(r, impl), expected, r.variant.name() + " / " + mmca::to_string(impl));
}

// Weights from key sets, for the non-zero score cases.
struct group_rule {
    bool uniform;
    std::vector<int> keys;
};
group_rule soft(std::vector<int> keys) { return {false, std::move(keys)}; }
group_rule uni(std::vector<int> keys) { return {true, std::move(keys)}; }
struct row_rule {
    std::vector<group_rule> groups;
    int self = -1;  // position of a one-hot self term, or -1
};

/// Expected weights of rows at positions first..first+rules.size()-1, scores S = scale * a_j c_k.
matrix weights_from_rules(const std::vector<row_rule>& rules, std::size_t L, double scale, std::size_t first = 0) {
    matrix w(rules.size(), std::vector<double>(L, 0.0));
    for (std::size_t i = 0; i < rules.size(); ++i) {
        const std::size_t j = first + i;
        for (const auto& g : rules[i].groups) {
            double total = 0.0;
            for (int x : g.keys) total += g.uniform ? 1.0 : std::exp(scale * a_coef[j] * c_coef[x]);
            for (int x : g.keys) w[i][x] += (g.uniform ? 1.0 : std::exp(scale * a_coef[j] * c_coef[x])) / total;
        }
        if (rules[i].self >= 0) w[i][rules[i].self] += 1.0;
    }
    return w;
}

const double h2 = 1.0 / 2, h3 = 1.0 / 3, h4 = 1.0 / 4, h5 = 1.0 / 5, h6 = 1.0 / 6;

// Pattern A: positions 0..6 = text, text, image, image, text, text, pad (one image).
const token_sequence pattern_a = sequence_of({T, T, I, I, T, T, P});
// Pattern B: image, image, text, image, image, text, text, pad (two images: {0,1} and {3,4}).
const token_sequence pattern_b = sequence_of({I, I, T, I, I, T, T, P});
// Pattern C: text, then two images back to back ({1,2} id 0 and {3,4} id 1), then text.
const token_sequence pattern_c = sequence_of({T, I, I, I, I, T}, {-1, 0, 0, 1, 1, -1});

// ------------------------------------------------------------------------------------------------
// q = 0: every softmax is uniform over its group.

TEST(HandWeights, PatternA_Causal) {
    check({&pattern_a, causal}, {
        {1, 0, 0, 0, 0, 0, 0},               // row 0: {0}
        {h2, h2, 0, 0, 0, 0, 0},             // row 1: {0, 1}
        {h3, h3, h3, 0, 0, 0, 0},            // row 2: image rows are like text: {0..2}
        {h4, h4, h4, h4, 0, 0, 0},           // row 3: {0..3}
        {h5, h5, h5, h5, h5, 0, 0},          // row 4: {0..4}
        {h6, h6, h6, h6, h6, h6, 0},         // row 5: {0..5}
        {0, 0, 0, 0, 0, 0, 0},               // row 6: pad row -> 0
    });
}

TEST(HandWeights, PatternA_Mmca) {
    check({&pattern_a, mmca_paper}, {
        {1, 0, 0, 0, 0, 0, 0},               // row 0: text {0}; no earlier image: image term empty
        {h2, h2, 0, 0, 0, 0, 0},             // row 1: text {0, 1}
        {0, 0, 1, 0, 0, 0, 0},               // row 2: image row -> V_2
        {0, 0, 0, 1, 0, 0, 0},               // row 3: image row -> V_3
        {h3, h3, h2, h2, h3, 0, 0},          // row 4: text {0, 1, 4} + image {2, 3} (sum 2)
        {h4, h4, h2, h2, h4, h4, 0},         // row 5: text {0, 1, 4, 5} + image {2, 3}
        {0, 0, 0, 0, 0, 0, 0},               // row 6: pad
    });
}

TEST(HandWeights, PatternA_MmcaReference) {
    check({&pattern_a, mmca_ref}, {
        {1 + h3, 0, h3, h3, 0, 0, 0},        // row 0: text {0} + uniform over {k <= 0} U {later images 2, 3}
        {h2 + h4, h2 + h4, h4, h4, 0, 0, 0}, // row 1: text {0, 1} + uniform over {0, 1} U {2, 3}
        {h2, h2, 1, 0, 0, 0, 0},             // row 2: self + text softmax over earlier text {0, 1}
        {h2, h2, 0, 1, 0, 0, 0},             // row 3: self + earlier text {0, 1} (image 2 not in it)
        {h3, h3, h2, h2, h3, 0, 0},          // row 4: as mmca (an earlier image exists)
        {h4, h4, h2, h2, h4, h4, 0},         // row 5: as mmca
        {0, 0, 0, 0, 0, 0, 0},               // row 6: pad
    });
}

TEST(HandWeights, PatternA_CausalCrossAll) {
    check({&pattern_a, cross_all}, {
        {1, 0, h2, h2, 0, 0, 0},             // row 0: text {0} + every image of the sample {2, 3}
        {h2, h2, h2, h2, 0, 0, 0},           // row 1: text {0, 1} + {2, 3}
        {0, 0, 0, 0, 0, 0, 0},               // row 2: image rows are not queries
        {0, 0, 0, 0, 0, 0, 0},               // row 3: image rows are not queries
        {h3, h3, h2, h2, h3, 0, 0},          // row 4: text {0, 1, 4} + {2, 3}
        {h4, h4, h2, h2, h4, h4, 0},         // row 5: text {0, 1, 4, 5} + {2, 3}
        {0, 0, 0, 0, 0, 0, 0},               // row 6: pad
    });
}

TEST(HandWeights, PatternA_CausalCrossPrecedingAndLatest) {
    const matrix expected = {
        {1, 0, 0, 0, 0, 0, 0},               // row 0: text {0}; no preceding image
        {h2, h2, 0, 0, 0, 0, 0},             // row 1: text {0, 1}
        {0, 0, 0, 0, 0, 0, 0},               // row 2: image row
        {0, 0, 0, 0, 0, 0, 0},               // row 3: image row
        {h3, h3, h2, h2, h3, 0, 0},          // row 4: text {0, 1, 4} + the one preceding image {2, 3}
        {h4, h4, h2, h2, h4, h4, 0},         // row 5: text {0, 1, 4, 5} + {2, 3}
        {0, 0, 0, 0, 0, 0, 0},               // row 6: pad
    };
    check({&pattern_a, cross_preceding}, expected);
    check({&pattern_a, cross_latest}, expected);
}

TEST(HandWeights, PatternB_Causal) {
    matrix expected(8, std::vector<double>(8, 0.0));
    for (int j = 0; j < 7; ++j)  // row j: uniform over {0..j}; row 7 is pad
        for (int x = 0; x <= j; ++x) expected[j][x] = 1.0 / (j + 1);
    check({&pattern_b, causal}, expected);
}

TEST(HandWeights, PatternB_Mmca) {
    check({&pattern_b, mmca_paper}, {
        {1, 0, 0, 0, 0, 0, 0, 0},            // row 0: image -> V_0
        {0, 1, 0, 0, 0, 0, 0, 0},            // row 1: image -> V_1
        {h2, h2, 1, 0, 0, 0, 0, 0},          // row 2: text {2} + image {0, 1}
        {0, 0, 0, 1, 0, 0, 0, 0},            // row 3: image -> V_3
        {0, 0, 0, 0, 1, 0, 0, 0},            // row 4: image -> V_4
        {h4, h4, h2, h4, h4, h2, 0, 0},      // row 5: text {2, 5} + images {0, 1, 3, 4}
        {h4, h4, h3, h4, h4, h3, h3, 0},     // row 6: text {2, 5, 6} + images {0, 1, 3, 4}
        {0, 0, 0, 0, 0, 0, 0, 0},            // row 7: pad
    });
}

TEST(HandWeights, PatternB_MmcaReference) {
    check({&pattern_b, mmca_ref}, {
        {1 + h4, 0, h4, 0, 0, h4, h4, 0},    // row 0: self + uniform over {0} U {later text 2, 5, 6}
        {h5, 1 + h5, h5, 0, 0, h5, h5, 0},   // row 1: self + uniform over {0, 1} U {2, 5, 6}
        {h2, h2, 1, 0, 0, 0, 0, 0},          // row 2: text {2} + image softmax over {0, 1}
        {0, 0, 1, 1, 0, 0, 0, 0},            // row 3: self + earlier text {2}
        {0, 0, 1, 0, 1, 0, 0, 0},            // row 4: self + earlier text {2}
        {h4, h4, h2, h4, h4, h2, 0, 0},      // row 5: as mmca
        {h4, h4, h3, h4, h4, h3, h3, 0},     // row 6: as mmca
        {0, 0, 0, 0, 0, 0, 0, 0},            // row 7: pad
    });
}

TEST(HandWeights, PatternB_CausalCross) {
    check({&pattern_b, cross_all}, {
        {0, 0, 0, 0, 0, 0, 0, 0},            // row 0: image row
        {0, 0, 0, 0, 0, 0, 0, 0},            // row 1: image row
        {h4, h4, 1, h4, h4, 0, 0, 0},        // row 2: text {2} + all images {0, 1, 3, 4} (3, 4 come later)
        {0, 0, 0, 0, 0, 0, 0, 0},            // row 3: image row
        {0, 0, 0, 0, 0, 0, 0, 0},            // row 4: image row
        {h4, h4, h2, h4, h4, h2, 0, 0},      // row 5: text {2, 5} + {0, 1, 3, 4}
        {h4, h4, h3, h4, h4, h3, h3, 0},     // row 6: text {2, 5, 6} + {0, 1, 3, 4}
        {0, 0, 0, 0, 0, 0, 0, 0},            // row 7: pad
    });
    check({&pattern_b, cross_preceding}, {
        {0, 0, 0, 0, 0, 0, 0, 0},            // row 0: image row
        {0, 0, 0, 0, 0, 0, 0, 0},            // row 1: image row
        {h2, h2, 1, 0, 0, 0, 0, 0},          // row 2: text {2} + preceding images {0, 1}
        {0, 0, 0, 0, 0, 0, 0, 0},            // row 3: image row
        {0, 0, 0, 0, 0, 0, 0, 0},            // row 4: image row
        {h4, h4, h2, h4, h4, h2, 0, 0},      // row 5: text {2, 5} + {0, 1, 3, 4}
        {h4, h4, h3, h4, h4, h3, h3, 0},     // row 6: text {2, 5, 6} + {0, 1, 3, 4}
        {0, 0, 0, 0, 0, 0, 0, 0},            // row 7: pad
    });
    check({&pattern_b, cross_latest}, {
        {0, 0, 0, 0, 0, 0, 0, 0},            // row 0: image row
        {0, 0, 0, 0, 0, 0, 0, 0},            // row 1: image row
        {h2, h2, 1, 0, 0, 0, 0, 0},          // row 2: text {2} + latest image {0, 1}
        {0, 0, 0, 0, 0, 0, 0, 0},            // row 3: image row
        {0, 0, 0, 0, 0, 0, 0, 0},            // row 4: image row
        {0, 0, h2, h2, h2, h2, 0, 0},        // row 5: text {2, 5} + latest image {3, 4} only
        {0, 0, h3, h2, h2, h3, h3, 0},       // row 6: text {2, 5, 6} + {3, 4}
        {0, 0, 0, 0, 0, 0, 0, 0},            // row 7: pad
    });
}

TEST(HandWeights, PatternC_ConsecutiveImagesNeedExplicitIds) {
    hand_run latest{&pattern_c, cross_latest};
    latest.explicit_ids = true;
    check(latest, {
        {1, 0, 0, 0, 0, 0},                  // row 0: text {0}; no image yet
        {0, 0, 0, 0, 0, 0},                  // rows 1-4: image rows
        {0, 0, 0, 0, 0, 0},
        {0, 0, 0, 0, 0, 0},
        {0, 0, 0, 0, 0, 0},
        {h2, 0, 0, h2, h2, h2},              // row 5: text {0, 5} + image 1 = {3, 4} (image 0 = {1, 2} hidden)
    });
    latest.explicit_ids = false;             // without ids, {1..4} is one run, so one image
    check(latest, {
        {1, 0, 0, 0, 0, 0},
        {0, 0, 0, 0, 0, 0},
        {0, 0, 0, 0, 0, 0},
        {0, 0, 0, 0, 0, 0},
        {0, 0, 0, 0, 0, 0},
        {h2, h4, h4, h4, h4, h2},            // row 5: text {0, 5} + {1, 2, 3, 4}
    });
    hand_run all{&pattern_c, cross_all};
    all.explicit_ids = true;
    check(all, {
        {1, h4, h4, h4, h4, 0},              // row 0: text {0} + both (later) images {1..4}
        {0, 0, 0, 0, 0, 0},
        {0, 0, 0, 0, 0, 0},
        {0, 0, 0, 0, 0, 0},
        {0, 0, 0, 0, 0, 0},
        {h2, h4, h4, h4, h4, h2},            // row 5: text {0, 5} + {1..4}
    });
    hand_run ref{&pattern_c, mmca_ref};
    ref.explicit_ids = true;
    check(ref, {
        {1 + h5, h5, h5, h5, h5, 0},         // row 0: text {0} + uniform over {0} U {1, 2, 3, 4}
        {1, 1, 0, 0, 0, 0},                  // row 1: self + earlier text {0}
        {1, 0, 1, 0, 0, 0},                  // row 2: self + {0}
        {1, 0, 0, 1, 0, 0},                  // row 3: self + {0}
        {1, 0, 0, 0, 1, 0},                  // row 4: self + {0}
        {h2, h4, h4, h4, h4, h2},            // row 5: text {0, 5} + images {1..4}
    });
}

// ------------------------------------------------------------------------------------------------
// Lengths: keys beyond kv_len take no part (even in the uniform rows that see later keys), query
// rows beyond q_len are zero, and queries are the last q_len tokens.

TEST(HandWeights, KvLenCutsLaterKeysFromDegenerateRows) {
    // Types beyond kv_len = 5 are image tokens: they must not join row 0's uniform image term.
    const token_sequence s = sequence_of({T, T, I, I, T, I, I});
    hand_run r{&s, mmca_ref};
    r.kv_len = 5;
    r.q_len = 5;
    r.Lq = 7;
    check(r, {
        {1 + h3, 0, h3, h3, 0, 0, 0},        // row 0: text {0} + uniform over {0} U {2, 3} (5, 6 cut)
        {h2 + h4, h2 + h4, h4, h4, 0, 0, 0}, // row 1: text {0, 1} + uniform over {0..3}
        {h2, h2, 1, 0, 0, 0, 0},             // row 2: self + text {0, 1}
        {h2, h2, 0, 1, 0, 0, 0},             // row 3: self + text {0, 1}
        {h3, h3, h2, h2, h3, 0, 0},          // row 4: text {0, 1, 4} + image {2, 3}
        {0, 0, 0, 0, 0, 0, 0},               // row 5: beyond q_len -> 0
        {0, 0, 0, 0, 0, 0, 0},               // row 6: beyond q_len -> 0
    });
    hand_run cross{&s, cross_all};
    cross.kv_len = 5;
    cross.q_len = 5;
    check(cross, {
        {1, 0, h2, h2, 0, 0, 0},             // row 0: text {0} + all images within kv_len {2, 3}
        {h2, h2, h2, h2, 0, 0, 0},           // row 1: text {0, 1} + {2, 3}
        {0, 0, 0, 0, 0, 0, 0},               // row 2: image row
        {0, 0, 0, 0, 0, 0, 0},               // row 3: image row
        {h3, h3, h2, h2, h3, 0, 0},          // row 4: text {0, 1, 4} + {2, 3}
        {0, 0, 0, 0, 0, 0, 0},               // rows 5, 6: beyond q_len
        {0, 0, 0, 0, 0, 0, 0},
    });
}

TEST(HandWeights, SuffixQueriesSitAtTheEndOfTheKeys) {
    // q_len = 2 of kv_len = 7 with Lq = 3: query rows are positions 5 and 6 (pad); row 2 is beyond q_len.
    hand_run r{&pattern_a, mmca_paper};
    r.q_len = 2;
    r.Lq = 3;
    check(r, {
        {h4, h4, h2, h2, h4, h4, 0},         // row 0 = position 5: text {0, 1, 4, 5} + image {2, 3}
        {0, 0, 0, 0, 0, 0, 0},               // row 1 = position 6: pad
        {0, 0, 0, 0, 0, 0, 0},               // row 2: beyond q_len
    });
    // Without q_lens, Lq = 2 queries are the last two tokens (positions 5, 6).
    hand_run s{&pattern_a, mmca_ref};
    s.Lq = 2;
    check(s, {
        {h4, h4, h2, h2, h4, h4, 0},         // position 5
        {0, 0, 0, 0, 0, 0, 0},               // position 6: pad
    });
}

TEST(HandWeights, GroupedQueryHeadsShareTheirKvHead) {
    // Hq = 4 over Hkv = 2: query heads 0, 1 read kv head 0 and heads 2, 3 read kv head 1. V of kv
    // head 1 is 3 * identity, so heads 2 and 3 give three times the weights of heads 0 and 1.
    const std::size_t L = 7;
    tensor4 q = filled({1, 4, L, L}, 0.0f), k = filled({1, 2, L, L}, 0.0f), v = filled({1, 2, L, L}, 0.0f);
    for (std::size_t x = 0; x < L; ++x) {
        v(0, 0, x, x) = 1.0f;
        v(0, 1, x, x) = 3.0f;
    }
    owned_tokens tokens({pattern_a}, L, false);
    const matrix expected = {
        {h3, h3, h2, h2, h3, 0, 0},          // row 4 of mmca (see PatternA_Mmca)
    };
    for (auto impl : {attention_impl::reference, attention_impl::fused}) {
        const tensor4 out = mmca::attention(q, k, v, tokens.layout(), mmca_paper.options(), impl);
        for (std::size_t h = 0; h < 4; ++h)
            for (std::size_t x = 0; x < L; ++x)
                EXPECT_NEAR(out(0, h, 4, x), (h < 2 ? 1.0 : 3.0) * expected[0][x], 1e-6)
                    << mmca::to_string(impl) << " head " << h << " key " << x;
    }
}

// ------------------------------------------------------------------------------------------------
// Non-zero scores: S[j][k] = scale * a_j * c_k; each row's groups are written as key sets.

TEST(HandScores, PatternA_AllVariants) {
    const std::size_t L = 7;
    auto run = [&](variant_spec v, const std::vector<row_rule>& rules) {
        hand_run r{&pattern_a, v};
        r.zero_q = false;
        check(r, weights_from_rules(rules, L, 1.0));
    };
    run(causal, {
        {{soft({0})}}, {{soft({0, 1})}}, {{soft({0, 1, 2})}}, {{soft({0, 1, 2, 3})}},
        {{soft({0, 1, 2, 3, 4})}}, {{soft({0, 1, 2, 3, 4, 5})}}, {},   // row 6: pad
    });
    run(mmca_paper, {
        {{soft({0})}},                          // row 0: text {0}
        {{soft({0, 1})}},                       // row 1: text {0, 1}
        {{}, 2},                                // row 2: V_2
        {{}, 3},                                // row 3: V_3
        {{soft({0, 1, 4}), soft({2, 3})}},      // row 4: text + image softmaxes
        {{soft({0, 1, 4, 5}), soft({2, 3})}},   // row 5
        {},                                     // row 6: pad
    });
    run(mmca_ref, {
        {{soft({0}), uni({0, 2, 3})}},          // row 0: uniform average ignores the scores
        {{soft({0, 1}), uni({0, 1, 2, 3})}},    // row 1
        {{soft({0, 1})}, 2},                    // row 2: self + text softmax over {0, 1}
        {{soft({0, 1})}, 3},                    // row 3: self + text softmax over {0, 1}
        {{soft({0, 1, 4}), soft({2, 3})}},      // row 4
        {{soft({0, 1, 4, 5}), soft({2, 3})}},   // row 5
        {},                                     // row 6: pad
    });
    run(cross_all, {
        {{soft({0}), soft({2, 3})}},            // row 0: later image visible under `all`
        {{soft({0, 1}), soft({2, 3})}},         // row 1
        {}, {},                                 // rows 2, 3: image rows
        {{soft({0, 1, 4}), soft({2, 3})}},      // row 4
        {{soft({0, 1, 4, 5}), soft({2, 3})}},   // row 5
        {},                                     // row 6: pad
    });
    for (auto v : {cross_preceding, cross_latest})
        run(v, {
            {{soft({0})}}, {{soft({0, 1})}}, {}, {},
            {{soft({0, 1, 4}), soft({2, 3})}}, {{soft({0, 1, 4, 5}), soft({2, 3})}}, {},
        });
}

TEST(HandScores, PatternB_AllVariants) {
    const std::size_t L = 8;
    auto run = [&](variant_spec v, const std::vector<row_rule>& rules) {
        hand_run r{&pattern_b, v};
        r.zero_q = false;
        check(r, weights_from_rules(rules, L, 1.0));
    };
    run(mmca_paper, {
        {{}, 0}, {{}, 1},                               // rows 0, 1: V_j
        {{soft({2}), soft({0, 1})}},                    // row 2
        {{}, 3}, {{}, 4},                               // rows 3, 4: V_j
        {{soft({2, 5}), soft({0, 1, 3, 4})}},           // row 5
        {{soft({2, 5, 6}), soft({0, 1, 3, 4})}},        // row 6
        {},                                             // row 7: pad
    });
    run(mmca_ref, {
        {{uni({0, 2, 5, 6})}, 0},                       // row 0: self + uniform over {0} U later text
        {{uni({0, 1, 2, 5, 6})}, 1},                    // row 1: self + uniform over {0, 1} U later text
        {{soft({2}), soft({0, 1})}},                    // row 2
        {{soft({2})}, 3},                               // row 3: self + text softmax {2}
        {{soft({2})}, 4},                               // row 4
        {{soft({2, 5}), soft({0, 1, 3, 4})}},           // row 5
        {{soft({2, 5, 6}), soft({0, 1, 3, 4})}},        // row 6
        {},
    });
    run(cross_all, {
        {}, {}, {{soft({2}), soft({0, 1, 3, 4})}}, {}, {},
        {{soft({2, 5}), soft({0, 1, 3, 4})}}, {{soft({2, 5, 6}), soft({0, 1, 3, 4})}}, {},
    });
    run(cross_preceding, {
        {}, {}, {{soft({2}), soft({0, 1})}}, {}, {},
        {{soft({2, 5}), soft({0, 1, 3, 4})}}, {{soft({2, 5, 6}), soft({0, 1, 3, 4})}}, {},
    });
    run(cross_latest, {
        {}, {}, {{soft({2}), soft({0, 1})}}, {}, {},
        {{soft({2, 5}), soft({3, 4})}}, {{soft({2, 5, 6}), soft({3, 4})}}, {},
    });
}

TEST(HandScores, DefaultScaleIsInverseSqrtD) {
    // D = L = 7: scale 0 means 1/sqrt(7).
    hand_run r{&pattern_a, mmca_ref};
    r.zero_q = false;
    r.scale = 0.0f;
    check(r, weights_from_rules(
                 {
                     {{soft({0}), uni({0, 2, 3})}},
                     {{soft({0, 1}), uni({0, 1, 2, 3})}},
                     {{soft({0, 1})}, 2},
                     {{soft({0, 1})}, 3},
                     {{soft({0, 1, 4}), soft({2, 3})}},
                     {{soft({0, 1, 4, 5}), soft({2, 3})}},
                     {},
                 },
                 7, 1.0 / std::sqrt(7.0)));
}

TEST(HandScores, SuffixRowsUseTheirAbsolutePositions) {
    // Queries are positions 4 and 5 (q_len 2, kv_len 6 of pattern A): their scores use a_4, a_5.
    hand_run r{&pattern_a, cross_latest};
    r.zero_q = false;
    r.kv_len = 6;
    r.q_len = 2;
    r.Lq = 2;
    check(r, weights_from_rules({{{soft({0, 1, 4}), soft({2, 3})}}, {{soft({0, 1, 4, 5}), soft({2, 3})}}}, 7, 1.0, 4));
}

}  // namespace
}  // namespace mmca_test
