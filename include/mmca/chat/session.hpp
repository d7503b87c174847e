// mmca/chat/session.hpp - a multi-round, multi-image conversation with a visual-chat model.
//
//   mmca::text::tokenizer tok("tokenizer.model");
//   auto model = mmca::load_visual_chat_model<float>("checkpoint/", load);
//   mmca::chat_session<float> chat(*model, tok);
//   auto a = chat.ask("What is in the picture?", {"cat.jpg"}, [](const std::string& piece) {
//       std::cout << piece << std::flush; return true; });
//   auto b = chat.ask("And what colour is it?", {});          // a round without images
//   chat.clear();                                              // a new conversation
//
// A round renders the template of SPEC §6 for the question alone (system prompt on the first round
// only; "### Image N:" numbered over the whole conversation), tokenizes it with BOS in front,
// decodes and preprocesses its images, embeds them (one at a time, reporting progress; an image
// shown before is taken from the model's cache), and generates the answer on top of the KV cache:
// a round runs only its own tokens. The answer streams out as text pieces as soon as they decode
// to complete UTF-8. The generated EOS closes the answer in the cache, as in training data.
//
// Everything that can be checked is checked before the cache changes: the image count (at most the
// model's max_images over the conversation), each image file (missing, unreadable, truncated,
// zero-sized), the question (no "<image>" or "### Image:" text of its own) and the context left.
//
// Needs SentencePiece (target mmca::text).
#pragma once

#include "mmca/core/error.hpp"
#include "mmca/core/tensor.hpp"
#include "mmca/language/generation.hpp"
#include "mmca/model/visual_chat.hpp"
#include "mmca/text/conversation.hpp"
#include "mmca/text/tokenizer.hpp"
#include "mmca/vision/image.hpp"
#include "mmca/vision/image_preprocess.hpp"

#include <chrono>
#include <cstdint>
#include <functional>
#include <string>
#include <utility>
#include <vector>

namespace mmca {

struct chat_session_options {
    text::conversation_options conversation;                        ///< system prompt, image numbering
    vision::preprocess_options image = vision::visualchat_448();    ///< size must be the model's image size
    generation_options generation;                                  ///< sampling, max_new_tokens, EOS
};

/// One answered round.
struct chat_answer {
    std::string text;                  ///< the answer (special tokens left out)
    std::vector<std::int32_t> tokens;  ///< generated ids, the EOS included when it ended the answer
    stop_reason reason = stop_reason::max_new_tokens;
    std::int64_t prompt_tokens = 0;    ///< ids of the round's prompt (placeholders counted once)
    std::int64_t images = 0;           ///< images shown with the question
    double encode_seconds = 0.0;       ///< time spent embedding the round's images
    double seconds = 0.0;              ///< time of the whole round
};

/// A conversation with a visual-chat model of any language-model backend (Model:
/// mmca::basic_visual_chat_model<LM>); chat_session<KV> is the one over the CPU model.
template <class Model>
class basic_chat_session {
public:
    /// on_text(piece) receives answer text as it is generated; returning false stops the round.
    using text_callback = std::function<bool(const std::string& piece)>;
    /// on_image(done, total) is called before each image is embedded and once at the end (done = total).
    using image_callback = std::function<void(std::int64_t done, std::int64_t total)>;

    basic_chat_session(Model& model, const text::tokenizer& tok, chat_session_options options = {})
        : model_(model), tok_(tok), options_(std::move(options)) {
        using detail::to_text;
        const char* where = "mmca::chat_session";
        const auto [oh, ow] = options_.image.output_size();
        const std::int64_t S = model_.tower().image_size();
        MMCA_CHECK_ARG(oh == S && ow == S, where, "image", "preprocessing to " + to_text(oh) + "x" + to_text(ow) + " pixels",
                       to_text(S) + "x" + to_text(S) + " (the model's image size)");
        MMCA_CHECK_ARG(tok_.image_id() == model_.options().image_token_id, where, "tokenizer",
                       "\"<image>\" with id " + to_text(tok_.image_id()),
                       "the model's image_token_id " + to_text(model_.options().image_token_id));
        MMCA_CHECK_ARG(tok_.vocab_size() <= model_.language().config().vocab_size, where, "tokenizer",
                       to_text(tok_.vocab_size()) + " token ids",
                       "at most the model's vocabulary (" + to_text(model_.language().config().vocab_size) + ")");
        options_.generation.sampling.validate(where);
        model_.reset();
    }

    const chat_session_options& options() const { return options_; }
    chat_session_options& options() { return options_; }
    std::int64_t rounds() const { return rounds_; }
    std::int64_t images_shown() const { return images_; }
    Model& model() { return model_; }

    /// Forgets the conversation (the model's image cache stays).
    void clear() {
        model_.reset();
        rounds_ = 0;
        images_ = 0;
    }

    /// Asks a question about the images in `image_paths` (0..n files, shown before the question).
    chat_answer ask(const std::string& question, const std::vector<std::string>& image_paths,
                    const text_callback& on_text = {}, const image_callback& on_image = {}) {
        const char* where = "mmca::chat_session::ask";
        check_image_count(static_cast<std::int64_t>(image_paths.size()), where);
        std::vector<vision::rgb_image> images;
        images.reserve(image_paths.size());
        for (const auto& p : image_paths) images.push_back(vision::load_image(p));
        return ask(question, images, on_text, on_image);
    }

    /// Asks a question about decoded images.
    chat_answer ask(const std::string& question, const std::vector<vision::rgb_image>& images,
                    const text_callback& on_text = {}, const image_callback& on_image = {}) {
        using clock = std::chrono::steady_clock;
        const auto t0 = clock::now();
        const char* where = "mmca::chat_session::ask";
        const std::int64_t n = static_cast<std::int64_t>(images.size());
        check_image_count(n, where);
        MMCA_CHECK_ARG(!question.empty(), where, "question", "an empty question", "some text");

        // The round's prompt: BOS + instruction (no answer, no EOS).
        text::conversation_options conv = options_.conversation;
        conv.system_prompt = conv.system_prompt && rounds_ == 0;
        conv.first_image_number = conv.first_image_number + static_cast<std::int32_t>(images_);
        text::chat_round round{question, "", static_cast<std::int32_t>(n)};
        text::tokenized_conversation t = text::tokenize_conversation(tok_, {round}, conv);
        std::vector<std::int32_t> prompt(t.input_ids.begin(), t.input_ids.end() - 1);  // drop the EOS

        // Pixels of every image before anything changes.
        const std::int64_t S = model_.tower().image_size();
        pixels_.resize(static_cast<std::size_t>(n * 3 * S * S));
        for (std::int64_t i = 0; i < n; ++i) {
            tensor_ref<float, 3> dst(pixels_.data() + i * 3 * S * S, {3, S, S});
            vision::preprocess_image(images[static_cast<std::size_t>(i)].view(), options_.image, dst);
        }
        const tensor_ref<const float, 4> batch(pixels_.data(), {n, 3, S, S});
        check_room(static_cast<std::int64_t>(prompt.size()) + n * (model_.tower().tokens_per_image() - 1), where);

        // Embed the images one by one (cache hits are free), reporting progress.
        const auto te = clock::now();
        const std::int64_t T = model_.tower().tokens_per_image(), H = model_.tower().width();
        rows_.resize(static_cast<std::size_t>(T * H));
        for (std::int64_t i = 0; i < n; ++i) {
            if (on_image) on_image(i, n);
            model_.embed_images(tensor_ref<const float, 4>(pixels_.data() + i * 3 * S * S, {1, 3, S, S}),
                                tensor_ref<float, 3>(rows_.data(), {1, T, H}));
        }
        if (on_image && n > 0) on_image(n, n);
        chat_answer answer;
        answer.encode_seconds = std::chrono::duration<double>(clock::now() - te).count();

        // Generate, streaming text pieces that decode to complete UTF-8.
        std::size_t emitted = 0;
        std::vector<std::int32_t> so_far;
        auto stream = [&](std::int32_t id) {
            so_far.push_back(id);
            if (!on_text) return true;
            const std::string text = tok_.decode(so_far, /*skip_special=*/true);
            if (text.size() <= emitted || ends_incomplete(text)) return true;
            const bool go_on = on_text(text.substr(emitted));
            emitted = text.size();
            return go_on;
        };
        const generation_result r = model_.round(prompt, batch, options_.generation, stream);
        answer.tokens = r.tokens;
        answer.reason = r.reason;
        answer.text = tok_.decode(r.tokens, /*skip_special=*/true);
        if (on_text && answer.text.size() > emitted) on_text(answer.text.substr(emitted));
        answer.prompt_tokens = static_cast<std::int64_t>(prompt.size());
        answer.images = n;
        ++rounds_;
        images_ += n;
        answer.seconds = std::chrono::duration<double>(clock::now() - t0).count();
        return answer;
    }

private:
    void check_image_count(std::int64_t n, const char* where) const {
        using detail::to_text;
        const std::int64_t max = model_.options().max_images;
        MMCA_CHECK_ARG(images_ + n <= max, where, "images",
                       to_text(n) + " new image" + (n == 1 ? "" : "s") + " after " + to_text(images_) +
                           " in this conversation",
                       "at most " + to_text(max) + " images per conversation (max_images; clear() starts a new one)");
    }

    void check_room(std::int64_t spliced, const char* where) const {
        using detail::to_text;
        const std::int64_t left = model_.language().context() - model_.language().length(0);
        MMCA_CHECK_ARG(spliced + 1 <= left, where, "question",
                       "a round of " + to_text(spliced) + " tokens after splicing",
                       "at most " + to_text(left - 1) + " (the room left in the context of " +
                           to_text(model_.language().context()) + " tokens; clear() starts a new conversation)");
    }

    /// True when text ends inside a UTF-8 sequence (or with U+FFFD from a partial byte sequence).
    static bool ends_incomplete(const std::string& text) {
        if (text.size() >= 3 && text.compare(text.size() - 3, 3, "\xEF\xBF\xBD") == 0) return true;
        std::size_t i = text.size(), back = 0;
        while (i > 0 && back < 4 && (static_cast<unsigned char>(text[i - 1]) & 0xC0) == 0x80) --i, ++back;
        if (i == 0) return back > 0;
        const auto lead = static_cast<unsigned char>(text[i - 1]);
        const std::size_t need = lead >= 0xF0 ? 3 : lead >= 0xE0 ? 2 : lead >= 0xC0 ? 1 : 0;
        return back < need;
    }

    Model& model_;
    const text::tokenizer& tok_;
    chat_session_options options_;
    std::int64_t rounds_ = 0;
    std::int64_t images_ = 0;
    std::vector<float> pixels_, rows_;
};

/// A conversation with the CPU visual-chat model (KV caches of KV).
template <class KV = float>
using chat_session = basic_chat_session<visual_chat_model<KV>>;

}  // namespace mmca
