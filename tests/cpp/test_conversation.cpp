// The conversation template (SPEC §6): rendered text by hand, token ids against spm_encode.
#include "mmca/text/conversation.hpp"
#include "mmca/text/tokenizer.hpp"

#include "text_test_util.hpp"

#include <gtest/gtest.h>

#include <string>
#include <vector>

namespace {

using mmca::text::chat_round;
using mmca::text::conversation_options;
using mmca::text::image_numbering;
using mmca::text::tokenizer;
using mmca_text_test::concat;
using mmca_text_test::newline_id;
using mmca_text_test::spm_encode_ids;
using ids = std::vector<std::int32_t>;

const std::string system_prompt =
    "You are a helpful language and vision assistant. You are able to understand the visual content that the "
    "user provides, and assist the user with a variety of tasks using natural language.\n\n";

// Round 0 shows two images, round 1 none, round 2 one.
const std::vector<chat_round> three_rounds = {
    {"What is shown?", "Two cats.", 2},
    {"What colour is the mat?", "Red.", 0},
    {"And now?", "A dog on a chair.", 1},
};

TEST(Conversation, RenderedTextByHand) {
    const std::string expected = system_prompt +
                                 "### Image 1:\n<image>\n"
                                 "### Image 2:\n<image>\n"
                                 "\n### Question:\nWhat is shown?\n\n### Answer:\nTwo cats."
                                 "### Question:\nWhat colour is the mat?\n\n### Answer:\nRed."
                                 "### Image 3:\n<image>\n"
                                 "\n### Question:\nAnd now?\n\n### Answer:\nA dog on a chair.";
    EXPECT_EQ(mmca::text::render_conversation(three_rounds), expected);

    conversation_options o;
    o.system_prompt = false;
    o.first_image_number = 4;
    EXPECT_EQ(mmca::text::render_conversation({{"Q?", "A.", 1}}, o),
              "### Image 4:\n<image>\n\n### Question:\nQ?\n\n### Answer:\nA.");
    o.numbering = image_numbering::token_level;
    EXPECT_EQ(mmca::text::render_conversation({{"Q?", "A.", 2}}, o),
              "### Image:\n<image>\n### Image:\n<image>\n\n### Question:\nQ?\n\n### Answer:\nA.");
    EXPECT_EQ(mmca::text::render_instruction({"Q?", "ignored", 0}, true, 1),
              system_prompt + "### Question:\nQ?\n\n### Answer:\n");
}

TEST(Conversation, StringLevelIdsAndLabels) {
    MMCA_REQUIRE_SPM_MODELS();
    const std::string model = mmca_text_test::trained_models()->plain;
    const tokenizer tok(model);
    const auto out = mmca::text::tokenize_conversation(tok, three_rounds);

    // Round by round: BOS, the instruction pieces between "<image>" ids, the answer, EOS.
    const ids r0_prompt = concat({{1}, spm_encode_ids(model, system_prompt + "### Image 1:\n"), {501},
                                  spm_encode_ids(model, "\n### Image 2:\n"), {501},
                                  spm_encode_ids(model, "\n\n### Question:\nWhat is shown?\n\n### Answer:\n")});
    const ids r0_answer = concat({spm_encode_ids(model, "Two cats."), {2}});
    const ids r1_prompt = concat({{1}, spm_encode_ids(model, "### Question:\nWhat colour is the mat?\n\n### Answer:\n")});
    const ids r1_answer = concat({spm_encode_ids(model, "Red."), {2}});
    const ids r2_prompt = concat({{1}, spm_encode_ids(model, "### Image 3:\n"), {501},
                                  spm_encode_ids(model, "\n\n### Question:\nAnd now?\n\n### Answer:\n")});
    const ids r2_answer = concat({spm_encode_ids(model, "A dog on a chair."), {2}});
    EXPECT_EQ(out.input_ids, concat({r0_prompt, r0_answer, r1_prompt, r1_answer, r2_prompt, r2_answer}));

    ids labels;
    for (const auto* part : {&r0_prompt, &r0_answer, &r1_prompt, &r1_answer, &r2_prompt, &r2_answer}) {
        const bool supervised = part == &r0_answer || part == &r1_answer || part == &r2_answer;
        for (auto id : *part) labels.push_back(supervised ? id : -100);
    }
    EXPECT_EQ(out.labels, labels);

    const auto n0 = static_cast<std::int64_t>(r0_prompt.size() + r0_answer.size());
    const auto n1 = static_cast<std::int64_t>(r1_prompt.size() + r1_answer.size());
    EXPECT_EQ(out.round_starts, (std::vector<std::int64_t>{0, n0, n0 + n1}));
    ASSERT_EQ(out.num_images, 3);
    std::vector<std::int64_t> expected_positions;
    for (std::size_t i = 0; i < out.input_ids.size(); ++i)
        if (out.input_ids[i] == 501) expected_positions.push_back(static_cast<std::int64_t>(i));
    EXPECT_EQ(out.image_positions, expected_positions);
    EXPECT_EQ(out.image_positions[2], n0 + n1 + 1 + static_cast<std::int64_t>(spm_encode_ids(model, "### Image 3:\n").size()));
}

TEST(Conversation, TokenLevelNumberingRewritesHeaderIds) {
    MMCA_REQUIRE_SPM_MODELS();
    const std::string model = mmca_text_test::trained_models()->plain;
    const tokenizer tok(model);
    conversation_options o;
    o.numbering = image_numbering::token_level;
    const auto out = mmca::text::tokenize_conversation(tok, three_rounds, o);
    // The "### Image:" id (500) of each image row becomes the ids of "### Image N:" encoded alone.
    const ids expected = concat({
        {1}, spm_encode_ids(model, system_prompt), spm_encode_ids(model, "### Image 1:"), {newline_id, 501, newline_id},
        spm_encode_ids(model, "### Image 2:"), {newline_id, 501},
        spm_encode_ids(model, "\n\n### Question:\nWhat is shown?\n\n### Answer:\n"), spm_encode_ids(model, "Two cats."), {2},
        {1}, spm_encode_ids(model, "### Question:\nWhat colour is the mat?\n\n### Answer:\n"), spm_encode_ids(model, "Red."), {2},
        {1}, spm_encode_ids(model, "### Image 3:"), {newline_id, 501},
        spm_encode_ids(model, "\n\n### Question:\nAnd now?\n\n### Answer:\n"), spm_encode_ids(model, "A dog on a chair."), {2},
    });
    EXPECT_EQ(out.input_ids, expected);
    EXPECT_EQ(out.num_images, 3);
    for (std::size_t i = 0; i < out.input_ids.size(); ++i) EXPECT_NE(out.input_ids[i], 500) << i;
    // The supervised tokens are exactly the three answers and their EOS.
    ids supervised;
    for (std::size_t i = 0; i < out.labels.size(); ++i)
        if (out.labels[i] != -100) {
            EXPECT_EQ(out.labels[i], out.input_ids[i]);
            supervised.push_back(out.labels[i]);
        }
    EXPECT_EQ(supervised, concat({spm_encode_ids(model, "Two cats."), {2}, spm_encode_ids(model, "Red."), {2},
                                  spm_encode_ids(model, "A dog on a chair."), {2}}));
}

TEST(Conversation, LlamaModelDecodesBackToTheText) {
    MMCA_REQUIRE_SPM_MODELS();
    const tokenizer tok(mmca_text_test::trained_models()->llama);
    const auto out = mmca::text::tokenize_conversation(tok, three_rounds);
    EXPECT_EQ(tok.decode(out.input_ids, true), mmca::text::render_conversation(three_rounds));
    // BOS starts each round; answers are supervised and decode to the answer text.
    for (std::size_t r = 0; r < out.round_starts.size(); ++r) {
        const auto start = static_cast<std::size_t>(out.round_starts[r]);
        const auto end = r + 1 < out.round_starts.size() ? static_cast<std::size_t>(out.round_starts[r + 1]) : out.size();
        EXPECT_EQ(out.input_ids[start], 1);
        EXPECT_EQ(out.labels[start], -100);
        EXPECT_EQ(out.input_ids[end - 1], 2);
        EXPECT_EQ(out.labels[end - 1], 2);
        ids answer;
        for (std::size_t i = start; i + 1 < end; ++i)
            if (out.labels[i] != -100) answer.push_back(out.input_ids[i]);
        EXPECT_EQ(tok.decode(answer), three_rounds[r].answer);
    }
}

TEST(Conversation, RoundWithoutImagesAndNoSystemPrompt) {
    MMCA_REQUIRE_SPM_MODELS();
    const std::string model = mmca_text_test::trained_models()->plain;
    const tokenizer tok(model);
    conversation_options o;
    o.system_prompt = false;
    const auto out = mmca::text::tokenize_conversation(tok, {{"What is it?", "A cat.", 0}}, o);
    EXPECT_EQ(out.input_ids, concat({{1}, spm_encode_ids(model, "### Question:\nWhat is it?\n\n### Answer:\nA cat."), {2}}));
    EXPECT_EQ(out.num_images, 0);
    EXPECT_TRUE(out.image_positions.empty());
}

TEST(Conversation, Errors) {
    MMCA_REQUIRE_SPM_MODELS();
    const tokenizer tok(mmca_text_test::trained_models()->plain);
    try {
        mmca::text::tokenize_conversation(tok, {{"ok", "ok", 1}, {"look <image> here", "a", 0}});
        FAIL() << "no exception";
    } catch (const mmca::invalid_argument& e) {
        EXPECT_EQ(e.argument(), "rounds[1].question");
    }
    EXPECT_THROW(mmca::text::render_conversation({{"q", "### Image: 2", 0}}), mmca::invalid_argument);
    try {
        mmca::text::render_conversation({{"q", "a", 9}});
        FAIL() << "no exception";
    } catch (const mmca::invalid_argument& e) {
        EXPECT_EQ(e.argument(), "rounds[0].num_images");
        EXPECT_NE(std::string(e.what()).find("got 9"), std::string::npos) << e.what();
    }
}

}  // namespace
