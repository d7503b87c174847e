// mmca/text/conversation.hpp - the DeepSpeed-VisualChat conversation template (SPEC §6).
//
// A conversation is a list of rounds (question, answer, number of images shown with the question).
// Round r renders as
//     [system prompt, round 0 only]
//     "### Image N:\n<image>\n"  once per image of the round, N counting images over the conversation
//     "\n### Question:\n{Q}\n\n### Answer:\n"   after images, or
//     "### Question:\n{Q}\n\n### Answer:\n"     in a round without images
//     {A}
// and tokenizes as  BOS, ids of the instruction, ids of the answer, EOS. Labels are -100 on BOS and
// on the instruction (system prompt and image rows included); the answer ids and the EOS carry
// their own id as label.
//
// Two ways to number the images (docs/chat.md, "Conversation template"):
//   string_level (default): the text itself says "### Image 2:", which SentencePiece tokenizes as
//       plain text. The reference does this for its blended data sets (LLaVA-Otter, Sparkles, CGD).
//   token_level: every round is rendered with the added token "### Image:" (no number); after
//       tokenization each of those ids is replaced by the ids of "### Image N:" encoded on its own
//       (so with its own dummy-prefix "▁"), N counting over the conversation. The reference does this
//       for its randomly concatenated single-image data sets (LLaVA, VQA).
//
// tokenize_conversation works with any tokenizer type that has encode(text), bos_id(), eos_id(),
// image_header_id() and image_id() as mmca::text::tokenizer has; this header itself does not need
// SentencePiece.
#pragma once

#include "mmca/core/error.hpp"
#include "mmca/core/labels.hpp"

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace mmca::text {

/// The system prompt that starts the first round.
inline constexpr std::string_view default_system_prompt =
    "You are a helpful language and vision assistant. You are able to understand the visual content that the "
    "user provides, and assist the user with a variety of tasks using natural language.\n\n";


/// One question/answer exchange, with the images shown right before the question.
struct chat_round {
    std::string question;
    std::string answer;
    std::int32_t num_images = 0;  ///< images introduced in this round (0..8)
};

enum class image_numbering {
    string_level,  ///< "### Image N:" written into the text (default)
    token_level,   ///< "### Image:" added token, replaced by the ids of "### Image N:" after tokenization
};

struct conversation_options {
    bool system_prompt = true;                              ///< start round 0 with default_system_prompt
    image_numbering numbering = image_numbering::string_level;
    std::int32_t first_image_number = 1;                    ///< N of the conversation's first image
};

/// Token ids and labels of a whole conversation.
struct tokenized_conversation {
    std::vector<std::int32_t> input_ids;        ///< (L,)
    std::vector<std::int32_t> labels;           ///< (L,) id where supervised, -100 elsewhere
    std::vector<std::int64_t> image_positions;  ///< (num_images,) positions of the "<image>" ids, ascending
    std::vector<std::int64_t> round_starts;     ///< (rounds,) position of each round's BOS
    std::int32_t num_images = 0;                ///< number of "<image>" placeholders

    std::size_t size() const { return input_ids.size(); }
};

namespace detail {

inline void check_rounds(const char* where, const std::vector<chat_round>& rounds, const conversation_options& options) {
    MMCA_CHECK_ARG(options.first_image_number >= 0, where, "options.first_image_number",
                   std::to_string(options.first_image_number), "a number >= 0");
    for (std::size_t r = 0; r < rounds.size(); ++r) {
        const chat_round& round = rounds[r];
        const std::string name = "rounds[" + std::to_string(r) + "]";
        MMCA_CHECK_ARG(round.num_images >= 0 && round.num_images <= 8, where, name + ".num_images",
                       std::to_string(round.num_images), "0..8 images per round");
        // The image rows are the template's: a placeholder written into a question or answer would
        // make the count of "<image>" ids disagree with the count of images.
        for (const std::string* text : {&round.question, &round.answer}) {
            for (std::string_view token : {std::string_view("<image>"), std::string_view("### Image:")}) {
                MMCA_CHECK_ARG(text->find(token) == std::string::npos, where,
                               name + (text == &round.question ? ".question" : ".answer"),
                               "text containing \"" + std::string(token) + "\"",
                               "text without the added tokens \"<image>\" and \"### Image:\"");
            }
        }
    }
}

}  // namespace detail

/// The instruction text of one round: system prompt (when `first` and asked for), image rows
/// numbered from `first_image_number` (or with the bare "### Image:" for token_level), question and
/// "### Answer:\n". The answer is not part of it.
inline std::string render_instruction(const chat_round& round, bool first, std::int32_t first_image_number,
                                      const conversation_options& options = {}) {
    std::string s;
    if (first && options.system_prompt) s += default_system_prompt;
    for (std::int32_t i = 0; i < round.num_images; ++i) {
        if (options.numbering == image_numbering::string_level)
            s += "### Image " + std::to_string(first_image_number + i) + ":\n<image>\n";
        else
            s += "### Image:\n<image>\n";
    }
    if (round.num_images > 0) s += "\n";
    s += "### Question:\n" + round.question + "\n\n### Answer:\n";
    return s;
}

/// The whole conversation as text (instructions and answers; no BOS/EOS markers).
inline std::string render_conversation(const std::vector<chat_round>& rounds, const conversation_options& options = {}) {
    detail::check_rounds("mmca::text::render_conversation", rounds, options);
    std::string s;
    std::int32_t next_image = options.first_image_number;
    for (std::size_t r = 0; r < rounds.size(); ++r) {
        s += render_instruction(rounds[r], r == 0, next_image, options);
        s += rounds[r].answer;
        next_image += rounds[r].num_images;
    }
    return s;
}

/// Token ids, labels and image placeholder positions of a conversation (see the file comment).
///
/// Each round's instruction and answer are tokenized together, as in the reference, and the labels
/// start after the ids of the instruction alone. When the instruction's ids are not a prefix of the
/// joint ids (a piece spanning the boundary; impossible with LLaMa's vocabulary, where "\n" is a byte
/// piece), the answer is tokenized on its own instead.
template <class Tokenizer>
tokenized_conversation tokenize_conversation(const Tokenizer& tok, const std::vector<chat_round>& rounds,
                                             const conversation_options& options = {}) {
    const char* where = "mmca::text::tokenize_conversation";
    detail::check_rounds(where, rounds, options);
    const std::int32_t bos = tok.bos_id(), eos = tok.eos_id();
    const std::int32_t header = tok.image_header_id(), image = tok.image_id();

    tokenized_conversation out;
    std::int32_t next_image = options.first_image_number;
    for (std::size_t r = 0; r < rounds.size(); ++r) {
        const chat_round& round = rounds[r];
        const std::string instruction = render_instruction(round, r == 0, next_image, options);
        std::vector<std::int32_t> prompt_ids = tok.encode(instruction);
        std::vector<std::int32_t> joint_ids = tok.encode(instruction + round.answer);
        bool prefix = joint_ids.size() >= prompt_ids.size();
        for (std::size_t i = 0; prefix && i < prompt_ids.size(); ++i) prefix = joint_ids[i] == prompt_ids[i];
        std::vector<std::int32_t> answer_ids;
        if (prefix)
            answer_ids.assign(joint_ids.begin() + static_cast<std::ptrdiff_t>(prompt_ids.size()), joint_ids.end());
        else
            answer_ids = tok.encode(round.answer);

        if (options.numbering == image_numbering::token_level) {
            std::vector<std::int32_t> numbered;
            std::int32_t n = next_image;
            for (std::int32_t id : prompt_ids) {
                if (id != header) {
                    numbered.push_back(id);
                    continue;
                }
                const std::vector<std::int32_t> row = tok.encode("### Image " + std::to_string(n++) + ":");
                numbered.insert(numbered.end(), row.begin(), row.end());
            }
            prompt_ids = std::move(numbered);
        }

        out.round_starts.push_back(static_cast<std::int64_t>(out.input_ids.size()));
        out.input_ids.push_back(bos);
        out.labels.push_back(ignore_label);
        for (std::int32_t id : prompt_ids) {
            if (id == image) out.image_positions.push_back(static_cast<std::int64_t>(out.input_ids.size()));
            out.input_ids.push_back(id);
            out.labels.push_back(ignore_label);
        }
        for (std::int32_t id : answer_ids) {
            out.input_ids.push_back(id);
            out.labels.push_back(id);
        }
        out.input_ids.push_back(eos);
        out.labels.push_back(eos);
        next_image += round.num_images;
    }
    out.num_images = static_cast<std::int32_t>(out.image_positions.size());
    MMCA_CHECK_ARG(out.num_images == next_image - options.first_image_number, where, "rounds",
                   std::to_string(out.num_images) + " \"<image>\" ids after tokenization",
                   std::to_string(next_image - options.first_image_number) +
                       " (the sum of num_images; does the tokenizer know the added token \"<image>\"?)");
    return out;
}

}  // namespace mmca::text
