// basic_llama_model over a second backend. mmca::llama_model (the CPU backend: packed GEMM, fused
// attention) and the CUDA model share one layer loop; this test drives that loop with a backend
// made of plain loops (naive_llama_backend.hpp: double accumulation, explicit RoPE rotation, the
// reference attention, its own buffer type) and checks that both give the same logits over a multi-round
// chat of two padded sequences with images, for every attention variant, with biases and with gated
// cross-attention blocks. It fails when the model leans on anything the backend interface
// (mmca/backend/cpu/llama_backend.hpp) does not carry, or when an op of the CPU backend is wrong.
#include "llama_steps.hpp"
#include "naive_llama_backend.hpp"
#include "test_llama_util.hpp"

#include "mmca/language/model.hpp"

#include <gtest/gtest.h>

#include <string>

namespace {

using mmca_test::naive_backend;

void expect_backends_agree(const mmca::llama_config& c, bool bias, mmca::attention_variant variant,
                           mmca::image_visibility visibility, unsigned seed) {
    const auto r = mmca_test::make_random_llama(c, seed, 0.08f, bias);
    const std::string dir = mmca_test::write_llama(r, mmca_test::temp_path("backend_" + std::to_string(seed)));
    auto [config, weights] = mmca::io::load_llama(dir);
    mmca::llama_model_options o;
    o.batch = 2;
    o.attention.variant = variant;
    o.attention.visibility = visibility;
    const auto steps = mmca_test::chat_steps(config.hidden_size, seed);
    mmca::llama_model<float> cpu(config, weights, o);
    mmca::basic_llama_model<naive_backend> naive(config, weights, o);
    const auto want = mmca_test::run_steps(naive, steps);
    const auto got = mmca_test::run_steps(cpu, steps);
    for (std::size_t s = 0; s < steps.size(); ++s)
        EXPECT_LE(mmca_test::worst_step_error(steps, got, want, config.vocab_size, s), 1e-4)
            << mmca::to_string(variant) << ", call " << s;
    // Every call ran every layer's attention through the backend (and the cross blocks, if any).
    EXPECT_EQ(naive.backend().attention_calls, static_cast<int>(steps.size() * config.num_layers));
    EXPECT_EQ(naive.backend().cross_calls, static_cast<int>(steps.size() * config.num_cross_blocks()));
}

TEST(LlamaBackend, NaiveBackendMatchesCpuEveryVariant) {
    mmca::llama_config c = mmca_test::tiny_config(4, 2, 2);
    c.max_positions = 160;
    const mmca::attention_variant variants[] = {mmca::attention_variant::causal, mmca::attention_variant::mmca,
                                                mmca::attention_variant::mmca_reference,
                                                mmca::attention_variant::causal_cross};
    unsigned seed = 60;
    for (auto v : variants) expect_backends_agree(c, false, v, mmca::image_visibility::preceding, seed++);
}

TEST(LlamaBackend, NaiveBackendMatchesCpuWithBiasesAndCrossBlocks) {
    mmca::llama_config c = mmca_test::tiny_config(4, 1, 3);
    c.max_positions = 160;
    c.cross_attention_every = 2;
    c.cross_attention_intermediate = 30;
    expect_backends_agree(c, true, mmca::attention_variant::mmca, mmca::image_visibility::latest, 70);
    expect_backends_agree(c, true, mmca::attention_variant::causal_cross, mmca::image_visibility::all, 71);
}

}  // namespace
