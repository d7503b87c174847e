// The SentencePiece tokenizer with the added tokens, against spm_encode and hand-written ids.
#include "mmca/text/tokenizer.hpp"

#include "text_test_util.hpp"

#include <gtest/gtest.h>

#include <string>
#include <vector>

namespace {

using mmca::text::tokenizer;
using mmca_text_test::concat;
using mmca_text_test::newline_id;
using mmca_text_test::spm_encode_ids;
using ids = std::vector<std::int32_t>;

TEST(Tokenizer, VocabularyLayout) {
    MMCA_REQUIRE_SPM_MODELS();
    const tokenizer tok(mmca_text_test::trained_models()->llama);
    EXPECT_EQ(tok.base_vocab_size(), 500);
    EXPECT_EQ(tok.vocab_size(), 503);
    EXPECT_EQ(tok.unk_id(), 0);
    EXPECT_EQ(tok.bos_id(), 1);
    EXPECT_EQ(tok.eos_id(), 2);
    EXPECT_EQ(tok.pad_id(), 2);  // padding uses EOS
    EXPECT_EQ(tok.image_header_id(), 500);
    EXPECT_EQ(tok.image_id(), 501);
    EXPECT_EQ(tok.pad_token_id(), 502);
    EXPECT_EQ(tok.id_to_piece(500), "### Image:");
    EXPECT_EQ(tok.id_to_piece(501), "<image>");
    EXPECT_EQ(tok.id_to_piece(502), "<PAD>");
    EXPECT_EQ(tok.id_to_piece(1), "<s>");
    EXPECT_EQ(tok.id_to_piece(newline_id), "<0x0A>");
    EXPECT_EQ(tok.piece_to_id("<image>"), 501);
    EXPECT_EQ(tok.piece_to_id("<0x0A>"), newline_id);
    EXPECT_EQ(tok.piece_to_id("no such piece"), -1);
}

TEST(Tokenizer, PlainTextMatchesSpmEncode) {
    MMCA_REQUIRE_SPM_MODELS();
    for (const std::string& model : {mmca_text_test::trained_models()->llama, mmca_text_test::trained_models()->plain}) {
        const tokenizer tok(model);
        for (const std::string text : {"the cat sits on the red mat.", "What is shown in picture 12?",
                                       "zebra \xE2\x82\xAC caf\xC3\xA9 x", "  two  spaces", "### Image 3:"}) {
            EXPECT_EQ(tok.encode(text), spm_encode_ids(model, text)) << model << ": " << text;
        }
    }
}

TEST(Tokenizer, ByteFallbackPiecesByHand) {
    MMCA_REQUIRE_SPM_MODELS();
    const tokenizer tok(mmca_text_test::trained_models()->plain);
    // "€" is not in the training text: its three UTF-8 bytes become byte pieces 3 + byte.
    EXPECT_EQ(tok.encode("\xE2\x82\xAC"), (ids{3 + 0xE2, 3 + 0x82, 3 + 0xAC}));
    EXPECT_EQ(tok.decode({3 + 0xE2, 3 + 0x82, 3 + 0xAC}), "\xE2\x82\xAC");
    EXPECT_EQ(tok.encode("\n"), (ids{newline_id}));
}

TEST(Tokenizer, AddedTokensAreWholePieces) {
    MMCA_REQUIRE_SPM_MODELS();
    const std::string model = mmca_text_test::trained_models()->plain;
    const tokenizer tok(model);
    EXPECT_EQ(tok.encode("### Image:\n<image>\nthe cat<PAD>"),
              concat({{500, newline_id, 501, newline_id}, spm_encode_ids(model, "the cat"), {502}}));
    EXPECT_EQ(tok.encode("<image><image>"), (ids{501, 501}));
    // Numbered headers and partial tokens are plain text.
    EXPECT_EQ(tok.encode("### Image 1:"), spm_encode_ids(model, "### Image 1:"));
    EXPECT_EQ(tok.encode("<image"), spm_encode_ids(model, "<image"));
    EXPECT_EQ(tok.encode("the <PAD"), spm_encode_ids(model, "the <PAD"));
    EXPECT_EQ(tok.encode("a cat", true, true), concat({{1}, spm_encode_ids(model, "a cat"), {2}}));
    EXPECT_TRUE(tok.encode("").empty());
}

TEST(Tokenizer, EachTextPieceGetsItsOwnDummyPrefix) {
    MMCA_REQUIRE_SPM_MODELS();
    const std::string model = mmca_text_test::trained_models()->llama;
    const tokenizer tok(model);
    // As HF's slow LLaMa tokenizer: SentencePiece sees "the cat" and "the dog" separately.
    EXPECT_EQ(tok.encode("the cat<image>the dog"),
              concat({spm_encode_ids(model, "the cat"), {501}, spm_encode_ids(model, "the dog")}));
    const ids first = spm_encode_ids(model, "the dog");
    ASSERT_FALSE(first.empty());
    EXPECT_EQ(tok.id_to_piece(first.front()).rfind("\xE2\x96\x81", 0), 0u) << "the dummy prefix '▁' starts the piece";
}

TEST(Tokenizer, StripWhitespaceAroundAddedTokensOption) {
    MMCA_REQUIRE_SPM_MODELS();
    const std::string model = mmca_text_test::trained_models()->llama;
    const tokenizer strip(model, {true});
    EXPECT_EQ(strip.encode("a cat \n<image>\n\n what ### Image:\n<image>"),
              concat({spm_encode_ids(model, "a cat"), {501}, spm_encode_ids(model, "what"), {500, 501}}));
    const tokenizer keep(model);
    EXPECT_EQ(keep.encode("a cat <image>"), concat({spm_encode_ids(model, "a cat "), {501}}));
}

TEST(Tokenizer, DecodeUndoesEncode) {
    MMCA_REQUIRE_SPM_MODELS();
    for (const std::string& model : {mmca_text_test::trained_models()->llama, mmca_text_test::trained_models()->plain}) {
        const tokenizer tok(model);
        for (const std::string text :
             {"the cat sits.", "### Image 1:\n<image>\n\n### Question:\nWhat is it?\n\n### Answer:\nA zebra \xE2\x82\xAC.",
              "<image><PAD>### Image:", "line\n\nbreaks \n", "caf\xC3\xA9 x<image>\xE2\x82\xAC"}) {
            EXPECT_EQ(tok.decode(tok.encode(text)), text) << model;
        }
    }
}

TEST(Tokenizer, DecodeSpecialTokens) {
    MMCA_REQUIRE_SPM_MODELS();
    const tokenizer tok(mmca_text_test::trained_models()->llama);
    ids x = tok.encode("the cat", true, true);
    x.push_back(502);
    EXPECT_EQ(tok.decode(x), "<s>the cat</s><PAD>");
    EXPECT_EQ(tok.decode(x, true), "the cat");
    EXPECT_EQ(tok.decode({501, 500}, true), "<image>### Image:");  // image tokens are content
}

TEST(Tokenizer, Errors) {
    MMCA_REQUIRE_SPM_MODELS();
    try {
        tokenizer bad("/nonexistent/tokenizer.model");
        FAIL() << "no exception";
    } catch (const mmca::invalid_argument& e) {
        EXPECT_EQ(e.argument(), "model_path");
        EXPECT_NE(std::string(e.what()).find("/nonexistent/tokenizer.model"), std::string::npos) << e.what();
    }
    const tokenizer tok(mmca_text_test::trained_models()->llama);
    try {
        tok.decode({5, 503});
        FAIL() << "no exception";
    } catch (const mmca::invalid_argument& e) {
        EXPECT_NE(std::string(e.what()).find("ids[1] = 503"), std::string::npos) << e.what();
        EXPECT_NE(std::string(e.what()).find("[0, 503)"), std::string::npos) << e.what();
    }
    EXPECT_THROW(tok.decode({-1}), mmca::invalid_argument);
    EXPECT_THROW(tok.id_to_piece(503), mmca::invalid_argument);
}

}  // namespace
