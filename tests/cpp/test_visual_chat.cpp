// The visual-chat model's own logic (mmca/model/visual_chat.hpp): splicing images into token
// sequences (in order and reversed), token types, image ids and labels; the shifted cross-entropy;
// the image cache; a batch forward against separate runs; chat rounds on the cache against a full
// recompute; errors that change nothing; the same model over a second language-model backend
// (basic_visual_chat_model over the plain-loop backend of naive_llama_backend.hpp). The vision tower here is a small stand-in whose rows are
// a fixed function of the pixels; the real encoders and projectors are checked against their
// oracles in tests/python, and the assembled model in tests/python/test_visual_chat.py.
#include "naive_llama_backend.hpp"
#include "test_llama_util.hpp"
#include "visual_chat_script.hpp"

#include "mmca/io/llama_loader.hpp"
#include "mmca/model/visual_chat.hpp"

#include <gtest/gtest.h>

#include <cmath>
#include <memory>
#include <random>
#include <vector>

namespace {

using mmca::tensor_ref;

/// rows[n, t, h] = a[t, h] · mean(image n) + b[t, h] · image n's pixel (t·H + h) mod P.
class stand_in_tower : public mmca::vision_tower {
public:
    stand_in_tower(std::int64_t S, std::int64_t T, std::int64_t H, int* calls) : S_(S), T_(T), H_(H), calls_(calls) {
        std::mt19937 g(5);
        std::normal_distribution<float> nd;
        a_.resize(static_cast<std::size_t>(T * H));
        b_.resize(a_.size());
        for (auto& x : a_) x = nd(g);
        for (auto& x : b_) x = nd(g);
    }
    std::int64_t image_size() const override { return S_; }
    std::int64_t tokens_per_image() const override { return T_; }
    std::int64_t width() const override { return H_; }
    void embed(tensor_ref<const float, 4> images, tensor_ref<float, 3> out, int) override {
        ++*calls_;
        const std::int64_t P = 3 * S_ * S_;
        for (std::int64_t n = 0; n < images.shape[0]; ++n) {
            const float* px = images.ptr(n);
            double mean = 0;
            for (std::int64_t i = 0; i < P; ++i) mean += px[i];
            mean /= double(P);
            for (std::int64_t i = 0; i < T_ * H_; ++i) out.ptr(n)[i] = a_[i] * float(mean) + b_[i] * px[i % P];
        }
    }

private:
    std::int64_t S_, T_, H_;
    int* calls_;
    std::vector<float> a_, b_;
};

std::vector<float> random_images(std::int64_t n, std::int64_t S, unsigned seed) {
    std::mt19937 g(seed);
    std::normal_distribution<float> nd;
    std::vector<float> v(static_cast<std::size_t>(n * 3 * S * S));
    for (auto& x : v) x = nd(g);
    return v;
}

double rel(const float* a, const float* b, std::int64_t n) {
    double num = 0, den = 0;
    for (std::int64_t i = 0; i < n; ++i) {
        num = std::max(num, std::abs(double(a[i]) - b[i]));
        den = std::max(den, std::abs(double(b[i])));
    }
    return num / std::max(den, 1e-30);
}

TEST(VisualChatSplice, HandCaseInOrderAndReversed) {
    const std::int64_t T = 2, H = 2;
    const std::int32_t P = 99;
    const std::vector<float> rows = {10, 11, 12, 13, /* image 1 */ 20, 21, 22, 23};
    const std::vector<std::int32_t> ids = {7, P, 8, 9, P, 3}, labels = {-100, -100, 8, 9, -100, 3};
    auto embed = [](const std::int32_t* t, std::int64_t c, tensor_ref<float, 2> o) {
        for (std::int64_t i = 0; i < c; ++i) o(i, 0) = float(t[i]), o(i, 1) = -float(t[i]);
    };
    const auto s = mmca::splice_images(ids, labels, tensor_ref<const float, 3>(rows.data(), {2, T, H}), H, P,
                                       mmca::image_order::in_order, 5, embed);
    ASSERT_EQ(s.length(), 8);
    EXPECT_EQ(s.embeddings, (std::vector<float>{7, -7, 10, 11, 12, 13, 8, -8, 9, -9, 20, 21, 22, 23, 3, -3}));
    EXPECT_EQ(s.types, (std::vector<std::int8_t>{1, 2, 2, 1, 1, 2, 2, 1}));
    EXPECT_EQ(s.image_ids, (std::vector<std::int32_t>{-1, 5, 5, -1, -1, 6, 6, -1}));
    EXPECT_EQ(s.labels, (std::vector<std::int32_t>{-100, -100, -100, 8, 9, -100, -100, 3}));
    EXPECT_EQ(s.image_rows, (std::vector<std::int64_t>{1, 5}));
    // The reference code's pairing: the first placeholder takes the last image.
    const auto r = mmca::splice_images(ids, {}, tensor_ref<const float, 3>(rows.data(), {2, T, H}), H, P,
                                       mmca::image_order::reverse, 0, embed);
    EXPECT_EQ(r.embeddings, (std::vector<float>{7, -7, 20, 21, 22, 23, 8, -8, 9, -9, 10, 11, 12, 13, 3, -3}));
    EXPECT_EQ(r.image_ids, (std::vector<std::int32_t>{-1, 0, 0, -1, -1, 1, 1, -1}));  // numbered by placeholder
    EXPECT_EQ(r.image_rows, (std::vector<std::int64_t>{5, 1}));
    EXPECT_TRUE(r.labels.empty());
    // One image for two placeholders: the error names the images and both counts.
    try {
        mmca::splice_images(ids, labels, tensor_ref<const float, 3>(rows.data(), {1, T, H}), H, P,
                            mmca::image_order::in_order, 0, embed);
        FAIL() << "no error";
    } catch (const mmca::invalid_argument& e) {
        EXPECT_EQ(e.argument(), "images");
        EXPECT_NE(std::string(e.what()).find("1 image;"), std::string::npos) << e.what();
        EXPECT_NE(std::string(e.what()).find("2 (the number of <image> placeholders"), std::string::npos) << e.what();
    }
}

TEST(VisualChatLoss, ShiftedCrossEntropyHandCase) {
    // B = 2, L = 3, V = 2. Sequence 0: labels [-100, 1, 0]: rows 0 and 1 count.
    // Sequence 1: labels [-100, -100]: nothing counts.
    const std::vector<float> logits = {0.0f, 1.0f, 2.0f, -1.0f, 9.0f, 9.0f, /* b1 */ 1, 2, 3, 4, 5, 6};
    const auto r = mmca::shifted_cross_entropy(tensor_ref<const float, 3>(logits.data(), {2, 3, 2}),
                                               {{-100, 1, 0}, {-100, -100}});
    const double l0 = std::log(std::exp(0.0) + std::exp(1.0)) - 1.0;   // row 0 → label 1
    const double l1 = std::log(std::exp(2.0) + std::exp(-1.0)) - 2.0;  // row 1 → label 0
    EXPECT_EQ(r.count, 2);
    EXPECT_NEAR(r.mean(), (l0 + l1) / 2, 1e-12);
    const auto none = mmca::shifted_cross_entropy(tensor_ref<const float, 3>(logits.data(), {2, 3, 2}),
                                                  {{-100, -100, -100}, {}});
    EXPECT_EQ(none.count, 0);
    EXPECT_EQ(none.mean(), 0.0);  // no NaN when nothing is supervised
    EXPECT_THROW(mmca::shifted_cross_entropy(tensor_ref<const float, 3>(logits.data(), {2, 3, 2}), {{-100, 5}, {}}),
                 mmca::invalid_argument);
}

class VisualChatModel : public ::testing::Test {
protected:
    static constexpr std::int64_t S = 4, T = 3;
    static void SetUpTestSuite() {
        auto r = mmca_test::make_random_llama(mmca_test::tiny_config(), 11);
        dir_ = new std::string(mmca_test::write_llama(r, mmca_test::temp_path("visual_chat_llama")));
    }
    static void TearDownTestSuite() { delete dir_; }

    template <class Model = mmca::visual_chat_model<float>>
    std::unique_ptr<Model> make(std::int64_t batch = 1, mmca::attention_variant v = mmca::attention_variant::mmca) {
        auto [config, weights] = mmca::io::load_llama(*dir_);
        mmca::visual_chat_options o;
        o.language.batch = batch;
        o.language.attention.variant = v;
        o.image_token_id = static_cast<std::int32_t>(config.vocab_size - 1);
        o.max_images = 4;
        auto tower = std::make_unique<stand_in_tower>(S, T, config.hidden_size, &calls_);
        return std::make_unique<Model>(std::move(tower), std::move(config), std::move(weights), o);
    }
    int calls_ = 0;
    static std::string* dir_;
};
std::string* VisualChatModel::dir_ = nullptr;

TEST_F(VisualChatModel, ImageCacheEmbedsEachImageOnce) {
    auto m = make();
    auto imgs = random_images(3, S, 1);
    // Image 2 repeats image 0.
    std::copy_n(imgs.data(), 3 * S * S, imgs.data() + 2 * 3 * S * S);
    const std::int64_t H = m->tower().width();
    std::vector<float> out(3 * T * H), again(3 * T * H);
    m->embed_images(tensor_ref<const float, 4>(imgs.data(), {3, 3, S, S}), tensor_ref<float, 3>(out.data(), {3, T, H}));
    EXPECT_EQ(m->images_embedded(), 2);
    EXPECT_EQ(calls_, 1);  // one batch
    EXPECT_TRUE(std::equal(out.begin(), out.begin() + T * H, out.begin() + 2 * T * H));
    m->embed_images(tensor_ref<const float, 4>(imgs.data(), {3, 3, S, S}), tensor_ref<float, 3>(again.data(), {3, T, H}));
    EXPECT_EQ(m->images_embedded(), 2);
    EXPECT_EQ(calls_, 1);
    EXPECT_EQ(out, again);
}

TEST_F(VisualChatModel, BatchForwardEqualsSeparateRunsAndLoss) {
    auto batched = make(2);
    auto single = make(1);
    const std::int32_t P = batched->options().image_token_id;
    const auto imgs = random_images(3, S, 2);
    const std::vector<mmca::visual_sample> samples = mmca_test::script_samples(P, S, imgs);
    std::vector<float> logits;
    std::int64_t L = 0;
    mmca::loss_result loss;
    const auto seqs = batched->forward(samples, logits, L, &loss);
    EXPECT_EQ(L, 8 + 2 * (T - 1));
    const std::int64_t V = batched->language().config().vocab_size;
    mmca::loss_result total;
    for (int b = 0; b < 2; ++b) {
        std::vector<float> one;
        std::int64_t L1 = 0;
        mmca::loss_result l1;
        single->forward({samples[b]}, one, L1, &l1);
        EXPECT_EQ(L1, seqs[b].length());
        EXPECT_LT(rel(logits.data() + b * L * V, one.data(), L1 * V), 1e-5) << b;
        total.sum += l1.sum;
        total.count += l1.count;
    }
    // Token mean over the batch: 3 supervised rows in sequence 0 (12, 4, 2), 2 in sequence 1.
    EXPECT_EQ(loss.count, 5);
    EXPECT_NEAR(loss.mean(), total.sum / double(total.count), 1e-6);
    EXPECT_TRUE(std::isfinite(loss.mean()));
}

// Variants whose rows see only earlier keys (mmca_reference lets rows before the first image see later
// images, SPEC §2.3, so its cached rounds differ from a recompute by design).
TEST_F(VisualChatModel, ChatRoundsOnTheCacheEqualFullRecompute) {
    for (auto v : {mmca::attention_variant::mmca, mmca::attention_variant::causal,
                   mmca::attention_variant::causal_cross}) {
        auto chat = make(1, v);
        auto full = make(1, v);
        const std::int32_t P = chat->options().image_token_id;
        const auto imgs = random_images(3, S, 3);
        const std::int64_t V = chat->language().config().vocab_size;
        const std::vector<std::int32_t> r1 = {1, 3, P, 6, P, 8}, r2 = {9, 1, 4, P, 5};
        std::vector<float> last(V);
        chat->append(r1, tensor_ref<const float, 4>(imgs.data(), {2, 3, S, S}), last.data());
        EXPECT_EQ(chat->images_in_context(), 2);
        chat->append(r2, tensor_ref<const float, 4>(imgs.data() + 2 * 3 * S * S, {1, 3, S, S}), last.data());
        EXPECT_EQ(chat->images_in_context(), 3);
        std::vector<std::int32_t> all = r1;
        all.insert(all.end(), r2.begin(), r2.end());
        mmca::visual_sample s{all, {}, tensor_ref<const float, 4>(imgs.data(), {3, 3, S, S})};
        std::vector<float> logits;
        std::int64_t L = 0;
        full->forward({s}, logits, L);
        EXPECT_EQ(chat->language().length(0), L);
        EXPECT_LT(rel(last.data(), logits.data() + (L - 1) * V, V), 1e-5) << mmca::to_string(v);
    }
}

TEST_F(VisualChatModel, GreedyRoundsEqualArgmaxOfRecomputedLogits) {
    auto chat = make();
    auto full = make();
    const std::int32_t P = chat->options().image_token_id;
    const std::int64_t V = chat->language().config().vocab_size;
    const auto imgs = random_images(2, S, 6);
    mmca::generation_options g;
    g.max_new_tokens = 4;
    g.eos_ids = {-1};  // never stops early: every round has 4 tokens
    std::vector<std::int32_t> convo;
    std::vector<float> conv_images;
    const std::vector<std::vector<std::int32_t>> prompts = {{1, 7, P, 9}, {1, 4, P, 5, 6}};
    for (int r = 0; r < 2; ++r) {
        std::vector<std::int32_t> streamed;
        const auto res = chat->round(prompts[r], tensor_ref<const float, 4>(imgs.data() + r * 3 * S * S, {1, 3, S, S}), g,
                                     [&](std::int32_t t) { return streamed.push_back(t), true; });
        EXPECT_EQ(res.tokens, streamed);
        ASSERT_EQ(res.tokens.size(), 4u);
        // Oracle: each answer token is the argmax of a full recompute of everything before it.
        convo.insert(convo.end(), prompts[r].begin(), prompts[r].end());
        conv_images.insert(conv_images.end(), imgs.begin() + r * 3 * S * S, imgs.begin() + (r + 1) * 3 * S * S);
        for (std::int32_t t : res.tokens) {
            mmca::visual_sample s{convo, {}, tensor_ref<const float, 4>(conv_images.data(), {r + 1, 3, S, S})};
            std::vector<float> logits;
            std::int64_t L = 0;
            full->forward({s}, logits, L);
            const float* row = logits.data() + (L - 1) * V;
            EXPECT_EQ(t, std::max_element(row, row + V) - row) << "round " << r;
            convo.push_back(t);
        }
    }
    // The cache held the conversation: round 2 ran only its own tokens (+ the pending last answer token).
    EXPECT_EQ(chat->history().size(), convo.size());
}

// The visual-chat model is templated on its language model: over the plain-loop backend (which a
// GPU model stands in for) the script of visual_chat_script.hpp (a batch forward with loss, greedy
// chat rounds with images on the cache, one more append) records what the CPU model records.
TEST_F(VisualChatModel, SecondLanguageBackendMatchesCpu) {
    using naive_chat = mmca::basic_visual_chat_model<mmca::basic_llama_model<mmca_test::naive_backend>>;
    const auto imgs = mmca_test::script_images(S);
    for (auto v : {mmca::attention_variant::mmca, mmca::attention_variant::causal_cross}) {
        auto cpu2 = make(2, v), cpu1 = make(1, v);
        auto naive2 = make<naive_chat>(2, v), naive1 = make<naive_chat>(1, v);
        const std::int32_t P = cpu2->options().image_token_id;
        const auto want = mmca_test::run_chat_script(*cpu2, *cpu1, P, S, imgs);
        const auto got = mmca_test::run_chat_script(*naive2, *naive1, P, S, imgs);
        ASSERT_EQ(got.forward_length, want.forward_length);
        EXPECT_LT(rel(got.forward_logits.data(), want.forward_logits.data(),
                      static_cast<std::int64_t>(want.forward_logits.size())),
                  1e-4)
            << mmca::to_string(v);
        EXPECT_EQ(got.loss_count, want.loss_count);
        EXPECT_NEAR(got.loss, want.loss, 1e-4);
        EXPECT_EQ(got.answers, want.answers) << mmca::to_string(v);
        EXPECT_LT(rel(got.last_logits.data(), want.last_logits.data(),
                      static_cast<std::int64_t>(want.last_logits.size())),
                  1e-4)
            << mmca::to_string(v);
        EXPECT_EQ(got.cached_tokens, want.cached_tokens);
        EXPECT_EQ(naive1->images_in_context(), 3);
    }
}

TEST_F(VisualChatModel, BadInputChangesNothing) {
    auto m = make();
    const std::int32_t P = m->options().image_token_id;
    const std::int64_t V = m->language().config().vocab_size;
    const auto imgs = random_images(5, S, 4);
    std::vector<float> last(V);
    m->append({1, P, 4}, tensor_ref<const float, 4>(imgs.data(), {1, 3, S, S}), last.data());
    const std::int64_t before = m->language().length(0);
    const std::int64_t embedded = m->images_embedded();
    auto expect_error = [&](auto&& call, const std::string& argument, const std::string& text) {
        try {
            call();
            ADD_FAILURE() << "no error";
        } catch (const mmca::invalid_argument& e) {
            EXPECT_EQ(e.argument(), argument) << e.what();
            EXPECT_NE(std::string(e.what()).find(text), std::string::npos) << e.what();
        }
        EXPECT_EQ(m->language().length(0), before);
        EXPECT_EQ(m->images_in_context(), 1);
        EXPECT_EQ(m->images_embedded(), embedded);
    };
    // Two images for one placeholder.
    expect_error([&] { m->append({P, 4}, tensor_ref<const float, 4>(imgs.data(), {2, 3, S, S}), last.data()); },
                 "images", "2 images");
    // More images than max_images (4) over the conversation.
    expect_error([&] { m->append({P, P, P, P}, tensor_ref<const float, 4>(imgs.data(), {4, 3, S, S}), last.data()); },
                 "images", "at most 4");
    // Images of the wrong size.
    std::vector<float> big(3 * 5 * 5);
    expect_error([&] { m->append({P}, tensor_ref<const float, 4>(big.data(), {1, 3, 5, 5}), last.data()); }, "images",
                 "(N, 3, 4, 4)");
    // A token id outside the vocabulary.
    expect_error([&] { m->append({static_cast<std::int32_t>(V + 3)}, {}, last.data()); }, "ids", "ids[0] = " + std::to_string(V + 3));
    // More tokens than the context holds (128).
    expect_error([&] { m->append(std::vector<std::int32_t>(200, 5), {}, last.data()); }, "ids", "room left");
}

}  // namespace
