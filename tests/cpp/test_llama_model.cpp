// The LLaMa decoder with its KV cache: prefill = chunked prefill = token by token (for every variant
// whose rows only see earlier keys), batches with right padding = separate runs, causal_cross image
// rows keep their input, in-place bf16 weights = float32 weights of the same values, gated
// cross-attention blocks, errors that leave the cache unchanged, generation (pinned greedy output on
// a fixed checkpoint, seeded sampling, EOS, multi-round cache reuse), presets and memory estimates.
// Logits against HF transformers are checked in tests/python/test_llama_hf.py.
#include "test_llama_util.hpp"

#include "mmca/io/llama_loader.hpp"
#include "mmca/language/generation.hpp"
#include "mmca/language/memory.hpp"
#include "mmca/language/model.hpp"
#include "mmca/language/presets.hpp"

#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

namespace {

using mmca::tensor_ref;

struct sequence {
    std::vector<std::int8_t> types;
    std::vector<float> embeddings;  // (L, H)
};

sequence make_sequence(const mmca::llama_model<float>& m, const std::vector<std::pair<int, int>>& layout, unsigned seed) {
    sequence s;
    for (auto [t, n] : layout) s.types.insert(s.types.end(), n, static_cast<std::int8_t>(t));
    const std::int64_t L = static_cast<std::int64_t>(s.types.size()), H = m.config().hidden_size;
    s.embeddings.resize(static_cast<std::size_t>(L * H));
    std::mt19937 g(seed);
    std::uniform_int_distribution<int> tok(0, static_cast<int>(m.config().vocab_size) - 1);
    std::normal_distribution<float> nd;
    for (std::int64_t i = 0; i < L; ++i) {
        if (s.types[i] == 2) {
            for (std::int64_t h = 0; h < H; ++h) s.embeddings[i * H + h] = nd(g);
        } else {
            const std::int32_t id = tok(g);
            m.embed(&id, 1, tensor_ref<float, 2>(s.embeddings.data() + i * H, {1, H}));
        }
    }
    return s;
}

/// Runs rows [a, b) of a batch-1 sequence; returns their logits (b - a, V).
template <class KV>
std::vector<float> run(mmca::llama_model<KV>& m, const sequence& s, std::int64_t a, std::int64_t b) {
    const std::int64_t H = m.config().hidden_size, V = m.config().vocab_size, n = b - a;
    std::vector<float> logits(static_cast<std::size_t>(n * V));
    m.forward(tensor_ref<const float, 3>(s.embeddings.data() + a * H, {1, n, H}),
              tensor_ref<const std::int8_t, 2>(s.types.data() + a, {1, n}), {}, {},
              tensor_ref<float, 3>(logits.data(), {1, n, V}));
    return logits;
}

double rel(const std::vector<float>& a, const std::vector<float>& b) {
    double num = 0, den = 0;
    for (std::size_t i = 0; i < a.size(); ++i) {
        num = std::max(num, std::abs(double(a[i]) - b[i]));
        den = std::max(den, std::abs(double(b[i])));
    }
    return num / std::max(den, 1e-30);
}

mmca::llama_model_options opts(mmca::attention_variant v, mmca::image_visibility p = mmca::image_visibility::preceding,
                               std::int64_t batch = 1) {
    mmca::llama_model_options o;
    o.attention.variant = v;
    o.attention.visibility = p;
    o.batch = batch;
    return o;
}

class LlamaModel : public ::testing::Test {
protected:
    static void SetUpTestSuite() {
        auto r = mmca_test::make_random_llama(mmca_test::tiny_config(4, 2, 3), 21);
        dir_ = mmca_test::write_llama(r, mmca_test::temp_path("model_f32"));
        mmca_test::round_weights(r, "BF16");
        dir_rounded_ = mmca_test::write_llama(r, mmca_test::temp_path("model_rounded_f32"));
        dir_bf16_ = mmca_test::write_llama(r, mmca_test::temp_path("model_bf16"), "BF16");
    }
    static inline std::string dir_, dir_rounded_, dir_bf16_;
    const std::vector<std::pair<int, int>> layout_ = {{1, 4}, {2, 5}, {1, 3}, {2, 4}, {1, 6}, {2, 2}, {1, 3}};
};

TEST_F(LlamaModel, PrefillChunksAndTokenByTokenAgree) {
    struct vcase {
        mmca::attention_variant v;
        mmca::image_visibility p;
    };
    for (auto c : {vcase{mmca::attention_variant::causal, mmca::image_visibility::preceding},
                   vcase{mmca::attention_variant::mmca, mmca::image_visibility::preceding},
                   vcase{mmca::attention_variant::causal_cross, mmca::image_visibility::preceding},
                   vcase{mmca::attention_variant::causal_cross, mmca::image_visibility::latest}}) {
        SCOPED_TRACE(std::string(mmca::to_string(c.v)) + "/" + mmca::to_string(c.p));
        auto full = mmca::io::load_llama_model<float>(dir_, opts(c.v, c.p));
        const sequence s = make_sequence(full, layout_, 5);
        const std::int64_t L = static_cast<std::int64_t>(s.types.size());
        const auto want = run(full, s, 0, L);
        EXPECT_EQ(full.length(), L);

        auto chunked = mmca::io::load_llama_model<float>(dir_, opts(c.v, c.p));
        std::vector<float> got;
        for (auto [a, b] : std::vector<std::pair<int, int>>{{0, 6}, {6, 7}, {7, 15}, {15, 16}, {16, static_cast<int>(L)}}) {
            auto part = run(chunked, s, a, b);
            got.insert(got.end(), part.begin(), part.end());
        }
        EXPECT_LT(rel(got, want), 1e-5);

        auto steps = mmca::io::load_llama_model<float>(dir_, opts(c.v, c.p));
        got.clear();
        for (std::int64_t i = 0; i < L; ++i) {
            auto part = run(steps, s, i, i + 1);
            got.insert(got.end(), part.begin(), part.end());
        }
        EXPECT_LT(rel(got, want), 1e-5);

        // The variants really differ (the comparison above is not vacuous).
        auto other = mmca::io::load_llama_model<float>(
            dir_, opts(c.v == mmca::attention_variant::mmca ? mmca::attention_variant::causal : mmca::attention_variant::mmca));
        EXPECT_GT(rel(run(other, s, 0, L), want), 1e-2);
    }
}

TEST_F(LlamaModel, FusedKernelMatchesReferenceAttentionForEveryVariant) {
    for (auto v : {mmca::attention_variant::causal, mmca::attention_variant::mmca, mmca::attention_variant::mmca_reference,
                   mmca::attention_variant::causal_cross}) {
        auto o = opts(v, mmca::image_visibility::all);
        auto fused = mmca::io::load_llama_model<float>(dir_, o);
        o.impl = mmca::attention_impl::reference;
        auto ref = mmca::io::load_llama_model<float>(dir_, o);
        const sequence s = make_sequence(fused, layout_, 7);
        const auto L = static_cast<std::int64_t>(s.types.size());
        EXPECT_LT(rel(run(fused, s, 0, L), run(ref, s, 0, L)), 1e-5) << mmca::to_string(v);
    }
}

TEST_F(LlamaModel, CausalCrossImageRowsKeepTheirInput) {
    auto m = mmca::io::load_llama_model<float>(dir_, opts(mmca::attention_variant::causal_cross, mmca::image_visibility::all));
    const sequence s = make_sequence(m, layout_, 9);
    const auto L = static_cast<std::int64_t>(s.types.size());
    const auto logits = run(m, s, 0, L);
    const auto& c = m.config();
    const auto& w = m.weights();
    const std::int64_t H = c.hidden_size, V = c.vocab_size;
    for (std::int64_t i = 0; i < L; ++i) {
        if (s.types[i] != 2) continue;
        // logits = lm_head(RMSNorm(e)) in float64: the decoder layers left the row alone.
        double ms = 0;
        for (std::int64_t h = 0; h < H; ++h) ms += double(s.embeddings[i * H + h]) * s.embeddings[i * H + h];
        const double inv = 1.0 / std::sqrt(ms / H + c.rms_norm_eps);
        const float* head = w.lm_head.as<float>();
        for (std::int64_t v = 0; v < V; ++v) {
            double acc = 0;
            for (std::int64_t h = 0; h < H; ++h) acc += double(head[v * H + h]) * w.norm[h] * s.embeddings[i * H + h] * inv;
            EXPECT_NEAR(logits[i * V + v], acc, 1e-4 * (1 + std::abs(acc)));
        }
    }
}

TEST_F(LlamaModel, BatchWithRightPaddingEqualsSeparateRuns) {
    auto single = mmca::io::load_llama_model<float>(dir_, opts(mmca::attention_variant::mmca));
    const sequence s0 = make_sequence(single, layout_, 11);
    const sequence s1 = make_sequence(single, {{1, 3}, {2, 6}, {1, 5}}, 12);
    const std::int64_t L0 = static_cast<std::int64_t>(s0.types.size()), L1 = static_cast<std::int64_t>(s1.types.size());
    const std::int64_t H = single.config().hidden_size, V = single.config().vocab_size, L = std::max(L0, L1);
    const auto want0 = run(single, s0, 0, L0);
    single.reset();
    EXPECT_EQ(single.length(), 0);
    const auto want1 = run(single, s1, 0, L1);

    auto batch = mmca::io::load_llama_model<float>(dir_, opts(mmca::attention_variant::mmca, mmca::image_visibility::preceding, 2));
    std::vector<float> e(static_cast<std::size_t>(2 * L * H), 0.0f);
    std::vector<std::int8_t> t(static_cast<std::size_t>(2 * L), 0);
    std::copy(s0.embeddings.begin(), s0.embeddings.end(), e.begin());
    std::copy(s1.embeddings.begin(), s1.embeddings.end(), e.begin() + L * H);
    std::copy(s0.types.begin(), s0.types.end(), t.begin());
    std::copy(s1.types.begin(), s1.types.end(), t.begin() + L);
    const std::vector<std::int32_t> lens = {static_cast<std::int32_t>(L0), static_cast<std::int32_t>(L1)};
    std::vector<float> logits(static_cast<std::size_t>(2 * L * V));
    batch.forward(tensor_ref<const float, 3>(e.data(), {2, L, H}), tensor_ref<const std::int8_t, 2>(t.data(), {2, L}), {},
                  tensor_ref<const std::int32_t, 1>(lens.data(), {2}), tensor_ref<float, 3>(logits.data(), {2, L, V}));
    EXPECT_LT(rel(std::vector<float>(logits.begin(), logits.begin() + L0 * V), want0), 1e-5);
    EXPECT_LT(rel(std::vector<float>(logits.begin() + L * V, logits.begin() + (L + L1) * V), want1), 1e-5);
    EXPECT_EQ(batch.length(0), L0);
    EXPECT_EQ(batch.length(1), L1);
    // logits 'last' picks row lens[b] - 1 of each sequence.
    batch.reset();
    std::vector<float> last(static_cast<std::size_t>(2 * V));
    batch.forward(tensor_ref<const float, 3>(e.data(), {2, L, H}), tensor_ref<const std::int8_t, 2>(t.data(), {2, L}), {},
                  tensor_ref<const std::int32_t, 1>(lens.data(), {2}), tensor_ref<float, 3>(last.data(), {2, 1, V}),
                  mmca::logits_mode::last);
    EXPECT_LT(rel(std::vector<float>(last.begin(), last.begin() + V), std::vector<float>(want0.end() - V, want0.end())), 1e-5);
    EXPECT_LT(rel(std::vector<float>(last.begin() + V, last.end()), std::vector<float>(want1.end() - V, want1.end())), 1e-5);
}

TEST_F(LlamaModel, Bf16WeightsInPlaceEqualFloat32OfTheSameValues) {
    auto f32 = mmca::io::load_llama_model<float>(dir_rounded_, opts(mmca::attention_variant::mmca));
    auto bf16 = mmca::io::load_llama_model<float>(dir_bf16_, opts(mmca::attention_variant::mmca));
    EXPECT_EQ(bf16.weights().layers[0].q.type, mmca::dtype::bfloat16);
    const sequence s = make_sequence(f32, layout_, 13);
    const auto L = static_cast<std::int64_t>(s.types.size());
    EXPECT_LT(rel(run(bf16, s, 0, L), run(f32, s, 0, L)), 1e-5);
    // Decode steps (the matrix-vector path) too.
    f32.reset();
    bf16.reset();
    for (std::int64_t i = 0; i < 5; ++i) EXPECT_LT(rel(run(bf16, s, i, i + 1), run(f32, s, i, i + 1)), 1e-5);
}

TEST_F(LlamaModel, HalfPrecisionKvCacheStaysClose) {
    auto f32 = mmca::io::load_llama_model<float>(dir_, opts(mmca::attention_variant::mmca));
    auto bf16 = mmca::io::load_llama_model<mmca::bfloat16>(dir_, opts(mmca::attention_variant::mmca));
    auto f16 = mmca::io::load_llama_model<mmca::float16>(dir_, opts(mmca::attention_variant::mmca));
    const sequence s = make_sequence(f32, layout_, 15);
    const auto L = static_cast<std::int64_t>(s.types.size());
    const auto want = run(f32, s, 0, L);
    EXPECT_LT(rel(run(bf16, s, 0, L), want), 3e-2);
    EXPECT_LT(rel(run(f16, s, 0, L), want), 3e-3);
}

TEST_F(LlamaModel, BadInputIsRefusedAndLeavesTheCacheAlone) {
    mmca::llama_model_options o = opts(mmca::attention_variant::mmca);
    o.context = 20;
    auto m = mmca::io::load_llama_model<float>(dir_, o);
    const sequence s = make_sequence(m, layout_, 17);  // 27 tokens
    run(m, s, 0, 15);
    auto expect_error = [&](auto&& f, const std::string& needle) {
        try {
            f();
            ADD_FAILURE() << "no error; expected '" << needle << "'";
        } catch (const mmca::invalid_argument& e) {
            EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
        }
        EXPECT_EQ(m.length(), 15);
    };
    expect_error([&] { run(m, s, 15, 21); }, "a sequence of 21 tokens (sequence 0: 15 cached + 6 new)");
    std::vector<std::int8_t> bad_types(s.types.begin() + 15, s.types.begin() + 18);
    bad_types[1] = 3;
    const std::int64_t H = m.config().hidden_size, V = m.config().vocab_size;
    std::vector<float> logits(3 * V);
    expect_error([&] {
        m.forward(tensor_ref<const float, 3>(s.embeddings.data() + 15 * H, {1, 3, H}),
                  tensor_ref<const std::int8_t, 2>(bad_types.data(), {1, 3}), {}, {}, tensor_ref<float, 3>(logits.data(), {1, 3, V}));
    }, "token_types[0, 1] = 3");
    expect_error([&] {
        m.forward(tensor_ref<const float, 3>(s.embeddings.data(), {1, 3, H - 1}),
                  tensor_ref<const std::int8_t, 2>(s.types.data(), {1, 3}), {}, {}, tensor_ref<float, 3>(logits.data(), {1, 3, V}));
    }, "argument 'embeddings'");
    expect_error([&] {
        m.forward(tensor_ref<const float, 3>(s.embeddings.data(), {1, 3, H}),
                  tensor_ref<const std::int8_t, 2>(s.types.data(), {1, 3}), {}, {}, tensor_ref<float, 3>(logits.data(), {1, 2, V}));
    }, "argument 'logits'");
    const std::int32_t lens[] = {4};
    expect_error([&] {
        m.forward(tensor_ref<const float, 3>(s.embeddings.data(), {1, 3, H}),
                  tensor_ref<const std::int8_t, 2>(s.types.data(), {1, 3}), {}, tensor_ref<const std::int32_t, 1>(lens, {1}),
                  tensor_ref<float, 3>(logits.data(), {1, 3, V}));
    }, "lens[0] = 4");
    const std::int32_t ids[] = {5, 61};
    expect_error([&] {
        m.forward_tokens(tensor_ref<const std::int32_t, 2>(ids, {1, 2}), {}, tensor_ref<float, 3>(logits.data(), {1, 2, V}));
    }, "ids[1] = 61");
    // After all that, the model continues as if nothing happened.
    auto fresh = mmca::io::load_llama_model<float>(dir_, o);
    run(fresh, s, 0, 15);
    EXPECT_LT(rel(run(m, s, 15, 20), run(fresh, s, 15, 20)), 1e-6);
}

TEST_F(LlamaModel, GatedCrossAttentionBlocks) {
    auto c = mmca_test::tiny_config(4, 2, 3);
    c.cross_attention_every = 2;  // blocks before layers 0 and 2
    c.cross_attention_intermediate = 24;
    auto r = mmca_test::make_random_llama(c, 23);
    const std::string dir = mmca_test::write_llama(r, mmca_test::temp_path("cross"));
    auto m = mmca::io::load_llama_model<float>(dir, opts(mmca::attention_variant::causal));
    EXPECT_EQ(m.weights().cross_blocks.size(), 2u);
    const sequence s = make_sequence(m, layout_, 19);
    const auto L = static_cast<std::int64_t>(s.types.size());
    const auto want = run(m, s, 0, L);
    auto steps = mmca::io::load_llama_model<float>(dir, opts(mmca::attention_variant::causal));
    std::vector<float> got;
    for (std::int64_t i = 0; i < L; ++i) {
        auto p = run(steps, s, i, i + 1);
        got.insert(got.end(), p.begin(), p.end());
    }
    EXPECT_LT(rel(got, want), 1e-5);  // image keys/values persist across calls
    // Zero gates: the blocks are the identity and the model equals the plain decoder.
    for (std::int64_t b = 0; b < 2; ++b) {
        r.weights[mmca::io::hf_llama_names().cross(b, "attn_gate")] = {0.0f};
        r.weights[mmca::io::hf_llama_names().cross(b, "mlp_gate")] = {0.0f};
    }
    auto zero = mmca::io::load_llama_model<float>(mmca_test::write_llama(r, mmca_test::temp_path("cross0")),
                                                  opts(mmca::attention_variant::causal));
    auto plain_r = r;
    plain_r.config.cross_attention_every = 0;
    auto plain = mmca::io::load_llama_model<float>(mmca_test::write_llama(plain_r, mmca_test::temp_path("cross_plain")),
                                                   opts(mmca::attention_variant::causal));
    const auto z = run(zero, s, 0, L);
    EXPECT_EQ(z, run(plain, s, 0, L));
    EXPECT_GT(rel(z, want), 1e-3);
}

// ---- generation ------------------------------------------------------------------------------

/// The fixed checkpoint of tests/python/llama_hf_oracle.py (fixed_state_dict): every weight from an
/// integer hash of (index of the tensor in sorted name order, element index).
std::string write_fixed_checkpoint() {
    mmca::llama_config c;
    c.vocab_size = 64;
    c.hidden_size = 32;
    c.intermediate_size = 48;
    c.num_layers = 2;
    c.num_heads = 4;
    c.num_kv_heads = 2;
    c.max_positions = 64;
    mmca_test::random_llama r = mmca_test::make_random_llama(c, 0);
    std::uint64_t index = 0;
    for (auto& [name, values] : r.weights) {  // std::map: sorted by name, as Python's sorted()
        for (std::uint64_t i = 0; i < values.size(); ++i) {
            std::uint64_t h = (i * 2654435761ull + index * 40503ull + 12345ull) & 0xffffffffull;
            h ^= h >> 15;
            h = (h * 2246822519ull) & 0xffffffffull;
            h ^= h >> 13;
            const float u = static_cast<float>(double(h) / 4294967296.0 * 2.0 - 1.0);
            const bool norm = name.size() >= 11 && name.compare(name.size() - 11, 11, "norm.weight") == 0;
            values[i] = norm ? 1.0f + 0.25f * u : name.find("embed_tokens") != std::string::npos ? u : 0.3f * u;
        }
        ++index;
    }
    return mmca_test::write_llama(r, mmca_test::temp_path("fixed"));
}

TEST(LlamaGreedy, FixedCheckpointOutputIsPinned) {
    // Pinned from HF transformers 4.33.3 on the same weights (tests/python/test_llama_hf.py checks
    // that HF still produces exactly this list).
    const std::vector<std::int32_t> pinned = {39, 39, 39, 17, 35, 54, 25, 35, 40, 20, 36, 15, 6, 39, 44, 22};
    auto m = mmca::io::load_llama_model<float>(write_fixed_checkpoint(), opts(mmca::attention_variant::causal));
    mmca::generator<float> gen(m);
    mmca::generation_options g;
    g.max_new_tokens = static_cast<std::int64_t>(pinned.size());
    const auto r = gen.round({1, 7, 30, 12, 5}, g);
    EXPECT_EQ(r.tokens, pinned);
    EXPECT_EQ(r.reason, mmca::stop_reason::max_new_tokens);
    EXPECT_EQ(r.prefilled, 5);
}

TEST_F(LlamaModel, SamplingIsSeededAndHonoursItsOptions) {
    auto m = mmca::io::load_llama_model<float>(dir_, opts(mmca::attention_variant::causal));
    mmca::generator<float> gen(m);
    mmca::generation_options g;
    g.max_new_tokens = 12;
    g.eos_ids = {-5};  // never produced: run to the limit
    g.sampling.temperature = 1.3f;
    g.sampling.top_p = 0.9f;
    g.sampling.seed = 42;
    const auto a = gen.round({1, 4, 9}, g);
    gen.reset();
    const auto b = gen.round({1, 4, 9}, g);
    EXPECT_EQ(a.tokens, b.tokens);
    gen.reset();
    g.sampling.seed = 43;
    const auto c = gen.round({1, 4, 9}, g);
    EXPECT_NE(a.tokens, c.tokens);
    // top_k = 1 is greedy whatever the temperature.
    gen.reset();
    g.sampling.top_k = 1;
    const auto k1 = gen.round({1, 4, 9}, g);
    gen.reset();
    mmca::generation_options greedy;
    greedy.max_new_tokens = 12;
    greedy.eos_ids = {-5};
    EXPECT_EQ(k1.tokens, gen.round({1, 4, 9}, greedy).tokens);
    // A strong repetition penalty never repeats a token when others are available.
    gen.reset();
    greedy.sampling.repetition_penalty = 1e6f;
    const auto rp = gen.round({1, 4, 9}, greedy);
    std::vector<std::int32_t> seen = {1, 4, 9};
    for (auto t : rp.tokens) {
        EXPECT_EQ(std::count(seen.begin(), seen.end(), t), 0) << t;
        seen.push_back(t);
    }
    EXPECT_THROW(mmca::sampler(mmca::sampling_options{-1.0f}), mmca::invalid_argument);
}

TEST_F(LlamaModel, SamplerTransformsMatchTheirDefinitions) {
    const std::vector<float> logits = {2.0f, 1.0f, 0.5f, 3.0f, -1.0f};
    // top_k 2: only tokens 3 and 0 are ever drawn; top_p 0.5: only token 3 (p = 0.61).
    mmca::sampling_options o;
    o.temperature = 1.0f;
    o.top_k = 2;
    o.seed = 1;
    mmca::sampler s(o);
    std::vector<int> counts(5, 0);
    for (int i = 0; i < 4000; ++i) ++counts[s.sample(logits.data(), 5, {})];
    EXPECT_EQ(counts[1] + counts[2] + counts[4], 0);
    const double p3 = std::exp(3.0) / (std::exp(3.0) + std::exp(2.0));
    EXPECT_NEAR(counts[3] / 4000.0, p3, 0.03);
    o.top_k = 0;
    o.top_p = 0.5f;
    mmca::sampler sp(o);
    for (int i = 0; i < 200; ++i) EXPECT_EQ(sp.sample(logits.data(), 5, {}), 3);
    // Repetition penalty: positive logits are divided, negative ones multiplied.
    mmca::sampling_options r;
    r.repetition_penalty = 4.0f;
    mmca::sampler sr(r);
    EXPECT_EQ(sr.sample(logits.data(), 5, {3}), 0);  // 3 -> 0.75 < 2
}

TEST_F(LlamaModel, EosStopsAndRoundsReuseTheCache) {
    auto m = mmca::io::load_llama_model<float>(dir_, opts(mmca::attention_variant::causal));
    mmca::generator<float> gen(m);
    mmca::generation_options g;
    g.max_new_tokens = 6;
    g.eos_ids = {-5};
    const auto first = gen.round({1, 4, 9, 16}, g);
    ASSERT_EQ(first.tokens.size(), 6u);
    // The same greedy run with the 3rd token as EOS stops right there.
    gen.reset();
    mmca::generation_options e = g;
    e.eos_ids = {first.tokens[2]};
    const auto stopped = gen.round({1, 4, 9, 16}, e);
    EXPECT_EQ(stopped.reason, mmca::stop_reason::eos);
    ASSERT_GE(stopped.tokens.size(), 1u);
    EXPECT_EQ(stopped.tokens.back(), first.tokens[2]);

    // Round 2 prefills only its own tokens (+ the pending last answer token) ...
    gen.reset();
    gen.round({1, 4, 9, 16}, g);
    const std::int64_t before = m.length();
    const auto second = gen.round({1, 20, 21}, g);
    EXPECT_EQ(second.prefilled, 4);
    EXPECT_EQ(m.length(), before + 4 + 5);
    // ... and answers exactly as a model that re-encodes the whole history at once.
    auto fresh = mmca::io::load_llama_model<float>(dir_, opts(mmca::attention_variant::causal));
    mmca::generator<float> gen2(fresh);
    std::vector<std::int32_t> history = {1, 4, 9, 16};
    history.insert(history.end(), first.tokens.begin(), first.tokens.end());
    history.insert(history.end(), {1, 20, 21});
    EXPECT_EQ(gen2.round(history, g).tokens, second.tokens);
}

TEST(LlamaPresets, ShapesParametersAndMemory) {
    EXPECT_EQ(mmca::estimate_llama_memory(mmca::llama_preset("llama2-7b"), mmca::dtype::bfloat16, mmca::dtype::float32).parameters,
              6738415616);
    EXPECT_EQ(mmca::estimate_llama_memory(mmca::llama_preset("llama2-13b"), mmca::dtype::bfloat16, mmca::dtype::float32).parameters,
              13015864320);
    EXPECT_EQ(mmca::estimate_llama_memory(mmca::llama_preset("llama2-70b"), mmca::dtype::bfloat16, mmca::dtype::float32).parameters,
              68976648192);
    const auto c70 = mmca::llama2_70b_config();
    EXPECT_EQ(c70.num_kv_heads, 8);
    EXPECT_EQ(c70.head_dim(), 128);
    const auto m7 = mmca::estimate_llama_memory(mmca::llama2_7b_config(), mmca::dtype::bfloat16, mmca::dtype::bfloat16, 1, 4096);
    EXPECT_EQ(m7.weight_bytes, 2 * 6738415616);
    // K and V: 32 layers × 4096 tokens × 2 × 4096 values × 2 bytes (+ 5 bytes of metadata per token and layer).
    EXPECT_EQ(m7.kv_cache_bytes, 32ll * 4096 * (2 * 4096 * 2 + 5));
    const auto m70 = mmca::estimate_llama_memory(c70, mmca::dtype::float16, mmca::dtype::float32, 2, 1000);
    EXPECT_EQ(m70.kv_cache_bytes, 80ll * 2 * 1000 * (2 * 1024 * 4 + 5));  // grouped-query: 8 kv heads × 128
    EXPECT_GT(m70.total_bytes(), m70.weight_bytes + m70.kv_cache_bytes);
    EXPECT_EQ(m70.cross_kv_bytes, 0);
    // Gated cross-attention before every 4th layer: 8 blocks of 7B, 3 images of 256 tokens per sequence.
    auto xc = mmca::llama2_7b_config();
    xc.cross_attention_every = 4;
    const auto mx = mmca::estimate_llama_memory(xc, mmca::dtype::bfloat16, mmca::dtype::bfloat16, 2, 4096, 512, 768);
    EXPECT_EQ(mx.cross_kv_bytes, 8ll * 2 * 768 * (2 * 4096 * 4 + 12));
    EXPECT_EQ(mx.total_bytes(), mx.weight_bytes + mx.norm_copy_bytes + mx.kv_cache_bytes + mx.cross_kv_bytes +
                                    mx.activation_bytes + mx.logits_last_bytes);
    // The default counts every context token as a possible image token.
    EXPECT_EQ(mmca::estimate_llama_memory(xc, mmca::dtype::bfloat16, mmca::dtype::bfloat16, 1, 1000).cross_kv_bytes,
              8ll * 1000 * (2 * 4096 * 4 + 12));
    EXPECT_THROW(mmca::estimate_llama_memory(xc, mmca::dtype::bfloat16, mmca::dtype::bfloat16, 1, 1000, 512, 1001),
                 mmca::invalid_argument);
    EXPECT_THROW(mmca::llama_preset("llama3-8b"), mmca::invalid_argument);
    EXPECT_THROW(mmca::estimate_llama_memory(mmca::llama2_7b_config(), mmca::dtype::float32, mmca::dtype::float32, 0),
                 mmca::invalid_argument);
}

}  // namespace
