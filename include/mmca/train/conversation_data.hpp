// mmca/train/conversation_data.hpp - training examples from the blended conversation format.
//
//   mmca::text::tokenizer tok("tokenizer.model");
//   mmca::train::conversation_data_options o;
//   o.split = "train";
//   o.image_size = model->tower().image_size();
//   mmca::train::conversation_dataset<mmca::text::tokenizer> data("blend.json", tok, o);
//   trainer.step(data);
//
// Reads the JSON written by mmca-blend / mmca::data::blend (docs/chat.md, "Output format"): an
// object with "format": "mmca-blend" and the splits "train" and "eval", each a list of samples
// {"images": [paths], "rounds": [{"question", "answer", "images"}]}. Every conversation is checked
// and tokenized with the template of SPEC §6 when the data set is made (ids and labels are kept,
// a few bytes per token); images are decoded and preprocessed when an example is built, from
// <image_root>/<path> (image_root empty: the JSON file's folder). The tokenizer is any type with
// the interface of mmca::text::tokenizer (encode, bos_id, eos_id, image_id, ...), so this header
// does not need SentencePiece by itself.
#pragma once

#include "mmca/core/error.hpp"
#include "mmca/text/conversation.hpp"
#include "mmca/train/trainer.hpp"
#include "mmca/vision/image.hpp"
#include "mmca/vision/image_preprocess.hpp"

#include <nlohmann/json.hpp>

#include <cstdint>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

namespace mmca::train {

struct conversation_data_options {
    std::string split = "train";            ///< "train" or "eval"
    std::string image_root;                 ///< folder the image paths are relative to; empty: the file's folder
    std::int64_t image_size = 448;          ///< the model's image size (the preset's rule at this size)
    vision::preprocess_options image = vision::visualchat_448();
    text::conversation_options conversation;  ///< system prompt, image numbering
    std::int64_t limit = 0;                 ///< the first `limit` samples of the split; 0: all
};

template <class Tokenizer>
class conversation_dataset : public example_source {
public:
    conversation_dataset(const std::string& path, const Tokenizer& tokenizer, conversation_data_options options = {})
        : options_(std::move(options)) {
        using mmca::detail::to_text;
        const char* where = "mmca::train::conversation_dataset";
        MMCA_CHECK_ARG(options_.split == "train" || options_.split == "eval", where, "split", "'" + options_.split + "'",
                       "'train' or 'eval'");
        MMCA_CHECK_ARG(options_.image_size > 0, where, "image_size", to_text(options_.image_size), "a positive size");
        MMCA_CHECK_ARG(options_.limit >= 0, where, "limit", to_text(options_.limit), "a count >= 0 (0: all)");
        const auto [oh, ow] = options_.image.output_size();
        if (oh != options_.image_size || ow != options_.image_size)
            options_.image.size = options_.image.crop_height = options_.image.crop_width = options_.image_size;
        root_ = options_.image_root;
        if (root_.empty()) {
            const auto slash = path.find_last_of('/');
            root_ = slash == std::string::npos ? "." : path.substr(0, slash);
        }
        std::ifstream in(path, std::ios::binary);
        MMCA_CHECK_ARG(in.good(), where, "path", "'" + path + "'", "a readable JSON file written by mmca-blend");
        nlohmann::json j;
        try {
            j = nlohmann::json::parse(in);
        } catch (const nlohmann::json::exception& e) {
            throw invalid_argument(where, "path", "'" + path + "', which is not JSON (" + e.what() + ")",
                                   "a JSON file written by mmca-blend");
        }
        MMCA_CHECK_ARG(j.is_object() && j.value("format", std::string()) == "mmca-blend", where, "path",
                       "'" + path + "' without \"format\": \"mmca-blend\"", "the blended conversation format (docs/chat.md)");
        MMCA_CHECK_ARG(j.contains(options_.split) && j[options_.split].is_array(), where, "split",
                       "'" + options_.split + "', which '" + path + "' does not have as a list", "a split of the file");
        const auto& list = j[options_.split];
        const std::size_t n = options_.limit > 0 ? std::min<std::size_t>(list.size(), static_cast<std::size_t>(options_.limit))
                                                 : list.size();
        for (std::size_t i = 0; i < n; ++i) {
            const auto& s = list[i];
            auto bad = [&](const std::string& what) {
                throw invalid_argument(where, "path", "'" + path + "': " + options_.split + "[" + to_text(i) + "] " + what,
                                       "samples {\"images\": [paths], \"rounds\": [{\"question\", \"answer\", \"images\"}]}");
            };
            if (!s.is_object() || !s.contains("images") || !s["images"].is_array() || !s.contains("rounds") ||
                !s["rounds"].is_array() || s["rounds"].empty())
                bad("is not a sample with images and rounds");
            entry e;
            for (const auto& im : s["images"]) {
                if (!im.is_string()) bad("has an image path that is not a string");
                e.images.push_back(im.get<std::string>());
            }
            std::vector<text::chat_round> rounds;
            std::int64_t shown = 0;
            for (const auto& r : s["rounds"]) {
                if (!r.is_object() || !r.contains("question") || !r["question"].is_string() || !r.contains("answer") ||
                    !r["answer"].is_string() || !r.contains("images") || !r["images"].is_number_integer())
                    bad("has a round without string question/answer and integer images");
                text::chat_round cr;
                cr.question = r["question"].get<std::string>();
                cr.answer = r["answer"].get<std::string>();
                cr.num_images = r["images"].get<std::int32_t>();
                shown += cr.num_images;
                rounds.push_back(std::move(cr));
            }
            if (shown != static_cast<std::int64_t>(e.images.size()))
                bad("shows " + to_text(shown) + " images in its rounds but lists " + to_text(e.images.size()));
            const text::tokenized_conversation t = text::tokenize_conversation(tokenizer, rounds, options_.conversation);
            e.ids = t.input_ids;
            e.labels = t.labels;
            e.rounds = static_cast<std::int64_t>(rounds.size());
            entries_.push_back(std::move(e));
        }
    }

    std::int64_t size() const override { return static_cast<std::int64_t>(entries_.size()); }

    training_example example(std::int64_t index) const override {
        using mmca::detail::to_text;
        MMCA_CHECK_ARG(index >= 0 && index < size(), "mmca::train::conversation_dataset::example", "index", to_text(index),
                       "an index in [0, " + to_text(size()) + ")");
        const entry& e = entries_[static_cast<std::size_t>(index)];
        training_example x;
        x.ids = e.ids;
        x.labels = e.labels;
        x.images = static_cast<std::int64_t>(e.images.size());
        const std::int64_t S = options_.image_size;
        x.pixels.resize(static_cast<std::size_t>(x.images * 3 * S * S));
        for (std::size_t i = 0; i < e.images.size(); ++i) {
            const vision::rgb_image img = vision::load_image(root_ + "/" + e.images[i]);
            vision::preprocess_image(img.view(), options_.image,
                                     tensor_ref<float, 3>(x.pixels.data() + static_cast<std::int64_t>(i) * 3 * S * S, {3, S, S}));
        }
        return x;
    }

    /// Rounds of example `index` (its supervised answers).
    std::int64_t rounds(std::int64_t index) const { return entries_.at(static_cast<std::size_t>(index)).rounds; }
    /// Image paths of example `index`, as the file lists them.
    const std::vector<std::string>& image_paths(std::int64_t index) const {
        return entries_.at(static_cast<std::size_t>(index)).images;
    }

private:
    struct entry {
        std::vector<std::int32_t> ids, labels;
        std::vector<std::string> images;
        std::int64_t rounds = 0;
    };
    conversation_data_options options_;
    std::string root_;
    std::vector<entry> entries_;
};

}  // namespace mmca::train
