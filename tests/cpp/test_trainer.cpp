// The visual-chat trainer (mmca/train/trainer.hpp): a run stopped after some steps and resumed
// from its train-state file equals the uninterrupted run bit for bit (losses, parameters, AdamW
// moments, data order), with gradient accumulation over epochs, clipping and the schedule, for
// the paper's trainable set and for one with gated cross-attention blocks and LoRA adapters.
#include "mmca/train/trainer.hpp"

#include "test_llama_util.hpp"

#include <gtest/gtest.h>

#include <cstring>
#include <random>

namespace {

constexpr std::int32_t kImage = 60;
constexpr std::int64_t kS = 56;

/// A visual-chat checkpoint: a small QWen ViT (4 queries of width 16), a baseline projector and a
/// LLaMa with one gated cross-attention block per layer.
std::string write_checkpoint() {
    static std::string dir;
    if (!dir.empty()) return dir;
    mmca::llama_config c = mmca_test::tiny_config();
    c.cross_attention_every = 1;
    c.cross_attention_intermediate = 12;
    dir = mmca_test::write_visual_chat_checkpoint(mmca_test::temp_path("trainer_ckpt"), c,
                                                  mmca_test::make_random_llama(c, 7), 3);
    return dir;
}

std::unique_ptr<mmca::visual_chat_model<float>> load(mmca::attention_variant v = mmca::attention_variant::mmca) {
    mmca::visual_chat_load_options o;
    o.qwen.image_size = kS;
    o.qwen.heads = 4;
    o.qwen.pool_heads = 2;
    o.options.image_token_id = kImage;
    o.options.language.batch = 2;
    o.options.language.attention.variant = v;
    o.options.language.num_threads = 1;
    return mmca::load_visual_chat_model<float>(write_checkpoint(), o);
}

/// Nine examples: a prefix, 0..2 images, a question and a supervised answer that depends on the images.
mmca::train::example_list make_data() {
    mmca::train::example_list d;
    std::mt19937 gen(11);
    std::uniform_int_distribution<int> tok(3, 50);
    std::normal_distribution<float> px(0.0f, 1.0f);
    for (int i = 0; i < 9; ++i) {
        mmca::train::training_example e;
        e.images = i % 3;
        e.ids = {1, tok(gen)};
        for (int k = 0; k < e.images; ++k) e.ids.push_back(kImage), e.ids.push_back(tok(gen));
        e.ids.push_back(tok(gen));
        e.labels.assign(e.ids.size(), mmca::ignore_label);
        for (int k = 0; k < 3; ++k) {
            const int a = 51 + (i + k) % 8;
            e.ids.push_back(a);
            e.labels.push_back(a);
        }
        e.ids.push_back(2), e.labels.push_back(2);
        e.pixels.resize(static_cast<std::size_t>(e.images * 3 * kS * kS));
        for (auto& x : e.pixels) x = px(gen);
        d.add(std::move(e));
    }
    return d;
}

mmca::train::trainer_options options(bool extras) {
    mmca::train::trainer_options o;
    o.adamw.lr = 2e-2;
    o.micro_batch = 2;
    o.accumulation = 2;   // 4 examples per step, 2 steps per epoch of 9
    o.total_steps = 7;    // 3.5 epochs
    o.max_grad_norm = 0.5;
    o.seed = 5;
    o.num_threads = 1;
    if (extras) {
        o.cross_blocks = true;
        o.lora_targets = "qv";
        o.lora_rank = 2;
        o.averaging = mmca::train::loss_averaging::token_mean;
    }
    return o;
}

struct snapshot {
    std::vector<double> losses;
    std::vector<std::vector<float>> values, m, v;
    std::int64_t epoch = 0, position = 0;
    std::vector<std::int64_t> order;
};

snapshot take(const mmca::train::visual_chat_trainer<float>& t, std::vector<double> losses) {
    snapshot s;
    s.losses = std::move(losses);
    for (std::size_t i = 0; i < t.parameters().size(); ++i) {
        const auto& p = t.parameters()[i];
        s.values.emplace_back(p.value, p.value + p.numel);
        s.m.emplace_back(t.optimizer().exp_avg(i), t.optimizer().exp_avg(i) + p.numel);
        s.v.emplace_back(t.optimizer().exp_avg_sq(i), t.optimizer().exp_avg_sq(i) + p.numel);
    }
    s.epoch = t.epoch();
    s.position = t.data_position();
    s.order = t.epoch_order();
    return s;
}

bool same_bits(const std::vector<float>& a, const std::vector<float>& b) {
    return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

void check_resume(bool extras) {
    const auto data = make_data();
    snapshot full;
    {
        auto model = load();
        mmca::train::visual_chat_trainer<float> t(*model, data.size(), options(extras));
        std::vector<double> losses;
        for (const auto& r : t.run(data)) losses.push_back(r.loss);
        ASSERT_EQ(losses.size(), 7u);
        EXPECT_TRUE(t.done());
        EXPECT_EQ(t.epoch(), 3);
        EXPECT_EQ(t.samples_seen(), 28);
        full = take(t, losses);
    }
    const std::string path = mmca_test::temp_path(extras ? "trainer_state_x.safetensors" : "trainer_state.safetensors");
    std::vector<double> losses;
    {
        auto model = load();
        mmca::train::visual_chat_trainer<float> t(*model, data.size(), options(extras));
        for (const auto& r : t.run(data, 3)) losses.push_back(r.loss);
        t.save(path, {{"note", "first half"}});
    }
    auto model = load();
    mmca::train::visual_chat_trainer<float> t(*model, data.size(), options(extras));
    const auto config = t.load(path);
    EXPECT_EQ(config.at("note"), "first half");
    EXPECT_EQ(t.step_count(), 3);
    for (const auto& r : t.run(data)) losses.push_back(r.loss);
    const snapshot resumed = take(t, losses);
    ASSERT_EQ(resumed.losses.size(), full.losses.size());
    for (std::size_t i = 0; i < full.losses.size(); ++i) EXPECT_EQ(resumed.losses[i], full.losses[i]) << "step " << i;
    ASSERT_EQ(resumed.values.size(), full.values.size());
    for (std::size_t i = 0; i < full.values.size(); ++i) {
        const std::string& name = t.parameters()[i].name;
        EXPECT_TRUE(same_bits(resumed.values[i], full.values[i])) << name;
        EXPECT_TRUE(same_bits(resumed.m[i], full.m[i])) << name;
        EXPECT_TRUE(same_bits(resumed.v[i], full.v[i])) << name;
    }
    EXPECT_EQ(resumed.epoch, full.epoch);
    EXPECT_EQ(resumed.position, full.position);
    EXPECT_EQ(resumed.order, full.order);
}

}  // namespace

TEST(VisualChatTrainer, ResumeIsBitExact) { check_resume(false); }

TEST(VisualChatTrainer, ResumeIsBitExactWithCrossBlocksAndLora) { check_resume(true); }

TEST(VisualChatTrainer, RegistersTheTrainableSetAndTrains) {
    const auto data = make_data();
    auto model = load();
    auto o = options(true);
    o.total_steps = 12;
    o.max_grad_norm = 1.0;
    std::vector<std::string> names;
    mmca::train::eval_result before, after;
    std::vector<float> logits_trained;
    {
        mmca::train::visual_chat_trainer<float> t(*model, data.size(), o);
        for (const auto& p : t.parameters()) names.push_back(p.name);
        EXPECT_EQ(names.front(), "lang_embed.weight");
        EXPECT_NE(std::find(names.begin(), names.end(), "projection.1.bias"), names.end());
        EXPECT_NE(std::find(names.begin(), names.end(), "lang_decoder.model.cross_blocks.1.attn_gate"), names.end());
        EXPECT_NE(std::find(names.begin(), names.end(), "lang_decoder.model.layers.0.self_attn.v_proj.lora_B.weight"),
                  names.end());
        EXPECT_EQ(std::find(names.begin(), names.end(), "lang_decoder.model.layers.0.self_attn.k_proj.lora_B.weight"),
                  names.end());
        EXPECT_EQ(t.parameters().get("lang_embed.weight").shape, (std::vector<std::int64_t>{61, 32}));
        before = t.evaluate(data);
        EXPECT_EQ(before.rounds, 9);
        EXPECT_EQ(before.tokens, 36);
        t.run(data);
        after = t.evaluate(data);
        EXPECT_LT(after.loss(), before.loss());
        EXPECT_GE(after.accuracy(), 0.0);
        EXPECT_LE(after.accuracy(), 1.0);
        EXPECT_EQ(t.history().size(), 12u);
        EXPECT_GT(t.history().front().grad_norm, 0.0);
        // The last step's learning rate is the schedule's at step 11 (warm-up ⌈1.2⌉ = 2).
        EXPECT_EQ(t.history().back().lr, t.schedule().lr(11));
        const std::string w = mmca_test::temp_path("trainer_weights.safetensors");
        t.save_weights(w);
        const mmca::io::safetensors_file f(w);
        EXPECT_EQ(f.tensors().size(), names.size());
    }
    // Without LoRA in the model the trained embedding, projector and blocks stay in use after the
    // trainer is gone (the model keeps the float32 copies alive).
    std::vector<float> logits;
    std::int64_t L = 0;
    const auto e = data.example(1);
    mmca::visual_sample s{e.ids, e.labels, mmca::tensor_ref<const float, 4>(e.pixels.data(), {e.images, 3, kS, kS})};
    mmca::loss_result r;
    model->forward({s}, logits, L, &r);
    EXPECT_TRUE(std::isfinite(r.mean()));
}

TEST(VisualChatTrainer, ErrorsNameTheArgument) {
    const auto data = make_data();
    auto model = load();
    auto o = options(false);
    o.micro_batch = 0;
    EXPECT_THROW(
        {
            try {
                mmca::train::visual_chat_trainer<float> t(*model, data.size(), o);
            } catch (const mmca::invalid_argument& e) {
                EXPECT_NE(std::string(e.what()).find("micro_batch"), std::string::npos) << e.what();
                throw;
            }
        },
        mmca::invalid_argument);
    o = options(false);
    EXPECT_THROW(mmca::train::visual_chat_trainer<float>(*model, 3, o), mmca::invalid_argument);  // < 4 per step
    mmca::train::visual_chat_trainer<float> t(*model, data.size(), options(false));
    const std::string path = mmca_test::temp_path("trainer_state_cfg.safetensors");
    t.save(path);
    auto other = load();
    auto o2 = options(false);
    o2.accumulation = 1;
    mmca::train::visual_chat_trainer<float> u(*other, data.size(), o2);
    try {
        u.load(path);
        FAIL() << "loaded a state of another configuration";
    } catch (const mmca::invalid_argument& e) {
        EXPECT_NE(std::string(e.what()).find("config.accumulation = '2'"), std::string::npos) << e.what();
    }
    mmca::train::example_list small;
    small.add(data.example(0));
    EXPECT_THROW(t.step(small), mmca::invalid_argument);
}
