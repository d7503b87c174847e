// mmca/text/tokenizer.hpp - the LLaMa SentencePiece tokenizer with DeepSpeed-VisualChat's added tokens.
//
// Ids (V = the SentencePiece model's piece count, 32000 for LLaMa):
//   0 .. V-1   SentencePiece pieces (LLaMa: 0 <unk>, 1 <s> = BOS, 2 </s> = EOS, 3..258 byte pieces)
//   V + 0      "### Image:"   (32000 for LLaMa)  the image header of the token-level numbering path
//   V + 1      "<image>"      (32001)            one image placeholder; the splice replaces it
//   V + 2      "<PAD>"        (32002)            present in the vocabulary; padding itself uses EOS
//
// encode() first cuts the text at every occurrence of an added token (leftmost, longest match), then
// hands each piece of text between them to SentencePiece separately, the way HF's slow LLaMa
// tokenizer does: every such piece gets the model's dummy-prefix "▁" of its own. Optionally, the
// whitespace on both sides of an added token is dropped, as transformers <= 4.33 does for tokens
// added as plain strings (what the reference training code saw; see docs/chat.md, "Tokenizer").
//
// This header needs SentencePiece (Debian libsentencepiece-dev): link the CMake target mmca::text.
#pragma once

#include "mmca/core/error.hpp"

#include <sentencepiece_processor.h>

#include <array>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace mmca::text {

/// The texts of the added tokens, in id order (id = base vocabulary size + index).
inline constexpr std::array<std::string_view, 3> added_token_texts{"### Image:", "<image>", "<PAD>"};

struct tokenizer_options {
    /// Drop the whitespace (space, \t, \n, \r, \v, \f) right before and right after each added token
    /// before SentencePiece sees the text around it. transformers <= 4.33 does this for tokens added
    /// as plain strings, so the reference checkpoints were trained on such sequences. Off by default:
    /// the text then reaches the model exactly as the template writes it.
    bool strip_whitespace_around_added_tokens = false;
};

/// A loaded tokenizer. Copies share the (immutable) SentencePiece model; every method is const and
/// may be called from several threads at once.
class tokenizer {
public:
    /// Loads a SentencePiece model file (LLaMa's tokenizer.model).
    explicit tokenizer(const std::string& model_path, tokenizer_options options = {}) : options_(options) {
        const char* where = "mmca::text::tokenizer";
        auto sp = std::make_shared<sentencepiece::SentencePieceProcessor>();
        const auto status = sp->Load(model_path);
        MMCA_CHECK_ARG(status.ok(), where, "model_path", "'" + model_path + "' (" + status.ToString() + ")",
                       "a readable SentencePiece model file such as LLaMa's tokenizer.model");
        const int bos = sp->bos_id(), eos = sp->eos_id();
        MMCA_CHECK_ARG(bos >= 0 && eos >= 0, where, "model_path",
                       "'" + model_path + "' with bos_id " + std::to_string(bos) + " and eos_id " + std::to_string(eos),
                       "a model that defines BOS and EOS pieces (spm_train --bos_id/--eos_id)");
        // An added token must not already be a piece of the model, or its id would be ambiguous.
        for (auto text : added_token_texts) {
            const int id = sp->PieceToId(std::string(text));
            MMCA_CHECK_ARG(id == sp->unk_id() || sp->IdToPiece(id) != text, where, "model_path",
                           "'" + model_path + "' which already has a piece '" + std::string(text) + "' (id " +
                               std::to_string(id) + ")",
                           "a model without the added tokens \"### Image:\", \"<image>\", \"<PAD>\"");
        }
        sp_ = std::move(sp);
    }

    /// Number of SentencePiece pieces (32000 for LLaMa).
    std::int32_t base_vocab_size() const { return static_cast<std::int32_t>(sp_->GetPieceSize()); }
    /// Pieces plus the three added tokens (32003 for LLaMa): the rows of the embedding table.
    std::int32_t vocab_size() const { return base_vocab_size() + static_cast<std::int32_t>(added_token_texts.size()); }

    std::int32_t bos_id() const { return static_cast<std::int32_t>(sp_->bos_id()); }
    std::int32_t eos_id() const { return static_cast<std::int32_t>(sp_->eos_id()); }
    std::int32_t unk_id() const { return static_cast<std::int32_t>(sp_->unk_id()); }
    /// Padding id of batches: EOS, as in the reference (the "<PAD>" token exists but is not used for it).
    std::int32_t pad_id() const { return eos_id(); }

    /// "### Image:" (32000 for LLaMa).
    std::int32_t image_header_id() const { return base_vocab_size() + 0; }
    /// "<image>" (32001 for LLaMa).
    std::int32_t image_id() const { return base_vocab_size() + 1; }
    /// "<PAD>" (32002 for LLaMa).
    std::int32_t pad_token_id() const { return base_vocab_size() + 2; }

    const tokenizer_options& options() const { return options_; }

    /// Token ids of `text`: added tokens as whole pieces, the rest through SentencePiece. BOS first
    /// and EOS last when asked.
    std::vector<std::int32_t> encode(std::string_view text, bool add_bos = false, bool add_eos = false) const {
        std::vector<std::int32_t> ids;
        if (add_bos) ids.push_back(bos_id());
        std::vector<std::pair<std::string_view, int>> parts = split_added_tokens(text);
        std::vector<int> piece_ids;
        for (const auto& [part, added] : parts) {
            if (added >= 0) {
                ids.push_back(base_vocab_size() + added);
                continue;
            }
            if (part.empty()) continue;
            piece_ids.clear();
            const auto status = sp_->Encode(part, &piece_ids);
            MMCA_CHECK_ARG(status.ok(), "mmca::text::tokenizer::encode", "text", status.ToString(),
                           "text that SentencePiece can encode");
            ids.insert(ids.end(), piece_ids.begin(), piece_ids.end());
        }
        if (add_eos) ids.push_back(eos_id());
        return ids;
    }

    /// Text of `ids`. Runs of SentencePiece ids are decoded together (so byte-fallback pieces such as
    /// <0xE2><0x82><0xAC> become "€", and each run's leading dummy-prefix space is removed, which
    /// undoes encode()); added tokens become their text. BOS, EOS and "<PAD>" are dropped when
    /// skip_special is true, otherwise written as "<s>", "</s>" and "<PAD>".
    std::string decode(const std::vector<std::int32_t>& ids, bool skip_special = false) const {
        const char* where = "mmca::text::tokenizer::decode";
        std::string out;
        std::vector<int> run;
        auto flush = [&] {
            if (run.empty()) return;
            std::string piece_text;
            const auto status = sp_->Decode(run, &piece_text);
            MMCA_CHECK_ARG(status.ok(), where, "ids", status.ToString(), "ids SentencePiece can decode");
            out += piece_text;
            run.clear();
        };
        for (std::size_t i = 0; i < ids.size(); ++i) {
            const std::int32_t id = ids[i];
            MMCA_CHECK_ARG(id >= 0 && id < vocab_size(), where, "ids",
                           "ids[" + std::to_string(i) + "] = " + std::to_string(id),
                           "an id in [0, " + std::to_string(vocab_size()) + ")");
            const bool special = id == bos_id() || id == eos_id() || id == pad_token_id();
            if (id < base_vocab_size() && !special) {
                run.push_back(id);
                continue;
            }
            flush();
            if (special && skip_special) continue;
            out += id_to_piece(id);
        }
        flush();
        return out;
    }

    /// The piece of an id: SentencePiece's piece ("▁the", "<0x0A>", "<s>") or an added token's text.
    std::string id_to_piece(std::int32_t id) const {
        MMCA_CHECK_ARG(id >= 0 && id < vocab_size(), "mmca::text::tokenizer::id_to_piece", "id", std::to_string(id),
                       "an id in [0, " + std::to_string(vocab_size()) + ")");
        if (id >= base_vocab_size()) return std::string(added_token_texts[static_cast<std::size_t>(id - base_vocab_size())]);
        return sp_->IdToPiece(id);
    }

    /// The id of a piece or added token, or -1 when the vocabulary has none.
    std::int32_t piece_to_id(std::string_view piece) const {
        for (std::size_t a = 0; a < added_token_texts.size(); ++a)
            if (piece == added_token_texts[a]) return base_vocab_size() + static_cast<std::int32_t>(a);
        const int id = sp_->PieceToId(piece);
        if (id == sp_->unk_id() && sp_->IdToPiece(id) != piece) return -1;
        return static_cast<std::int32_t>(id);
    }

    /// `text` cut into pieces: (text, -1) for plain text, ("", a) for added token a. With
    /// strip_whitespace_around_added_tokens, the text pieces lose the whitespace next to added tokens.
    std::vector<std::pair<std::string_view, int>> split_added_tokens(std::string_view text) const {
        std::vector<std::pair<std::string_view, int>> parts;
        std::size_t start = 0, pos = 0;
        while (pos < text.size()) {
            int match = -1;
            std::size_t match_len = 0;
            for (std::size_t a = 0; a < added_token_texts.size(); ++a) {
                const auto& t = added_token_texts[a];
                if (t.size() > match_len && text.compare(pos, t.size(), t) == 0) {
                    match = static_cast<int>(a);
                    match_len = t.size();
                }
            }
            if (match < 0) {
                ++pos;
                continue;
            }
            if (pos > start) parts.emplace_back(text.substr(start, pos - start), -1);
            parts.emplace_back(std::string_view(), match);
            pos += match_len;
            start = pos;
        }
        if (start < text.size()) parts.emplace_back(text.substr(start), -1);
        if (options_.strip_whitespace_around_added_tokens) {
            auto is_space = [](char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f'; };
            for (std::size_t i = 0; i < parts.size(); ++i) {
                if (parts[i].second >= 0) continue;
                std::string_view& s = parts[i].first;
                if (i + 1 < parts.size())
                    while (!s.empty() && is_space(s.back())) s.remove_suffix(1);
                if (i > 0)
                    while (!s.empty() && is_space(s.front())) s.remove_prefix(1);
            }
        }
        return parts;
    }

private:
    std::shared_ptr<const sentencepiece::SentencePieceProcessor> sp_;
    tokenizer_options options_;
};

}  // namespace mmca::text
