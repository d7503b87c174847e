// mmca/model/visual_chat.hpp - the visual-chat model: images + token ids → logits and loss (SPEC §1, §6).
//
//   images (N, 3, S, S) ─ vision tower (frozen encoder → trainable projector) ─→ (N, T, H)
//   token ids with <image> placeholders ─ trainable token embedding ─→ (L, H)
//   splice: the i-th placeholder becomes the T rows of image i            ─→ (L', H), token types,
//                                                                           image ids, labels
//   LLaMa-2 decoder (attention variant of the options) → final RMSNorm → lm_head → logits (fp32)
//   loss = mean cross-entropy of the shifted positions whose label is not −100
//
// Pairing of images and placeholders: in order by default; image_order::reverse reproduces the
// reference code, which pairs the i-th placeholder with the i-th image from the end (SPEC §6),
// for checkpoints trained that way. Image tokens take positions like text tokens (T each), and
// each image of a sequence gets its own image id (numbered across the conversation, so the
// visibility policies of the attention see which image a token belongs to). Labels of image rows
// are −100.
//
// Images already embedded are not embedded again: the tower's output for an image is kept in a
// cache keyed by a 64-bit hash of the preprocessed pixels (capacity configurable; least recently
// used first out), so a chat that shows an image again, or a later round, reuses it.
//
// A model object is not safe to call from two threads at once (it owns caches and scratch).
#pragma once

#include "mmca/core/error.hpp"
#include "mmca/core/labels.hpp"
#include "mmca/core/hash.hpp"
#include "mmca/core/tensor.hpp"
#include "mmca/language/generation.hpp"
#include "mmca/language/model.hpp"
#include "mmca/nn/grad/loss.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <list>
#include <memory>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

namespace mmca {

/// Encoder + projector: preprocessed images (N, 3, S, S) → (N, T, H) rows ready to be spliced.
class vision_tower {
public:
    virtual ~vision_tower() = default;
    virtual std::int64_t image_size() const = 0;        ///< S
    virtual std::int64_t tokens_per_image() const = 0;  ///< T
    virtual std::int64_t width() const = 0;             ///< H, the language model's hidden size
    /// out (N, T, H) = projector(encoder(images (N, 3, S, S))).
    virtual void embed(tensor_ref<const float, 4> images, tensor_ref<float, 3> out, int num_threads) = 0;
};

/// How images pair with the <image> placeholders of a sequence.
enum class image_order : std::uint8_t {
    in_order,  ///< image i replaces the i-th placeholder (SPEC §6)
    reverse,   ///< image n−1−i replaces the i-th placeholder (the reference code's pairing)
};

inline const char* to_string(image_order o) { return o == image_order::reverse ? "reverse" : "in_order"; }


/// One sequence after the splice.
struct spliced_sequence {
    std::vector<float> embeddings;         ///< (L', H)
    std::vector<std::int8_t> types;        ///< (L') 1 text, 2 image
    std::vector<std::int32_t> image_ids;   ///< (L') image id of image rows, −1 elsewhere
    std::vector<std::int32_t> labels;      ///< (L') −100 on image rows; empty when no labels were given
    std::vector<std::int64_t> image_rows;  ///< (n) first row of each image, in image order
    std::int64_t length() const { return static_cast<std::int64_t>(types.size()); }
};

/// Splices images into a token sequence.
///   ids (L), labels (L) or empty, image_rows (n, T, H): the embedded images of this sequence,
///   embed_text(ids, count, out (count, H)): the token embedding,
///   first_image_id: the id of the sequence's first image here (images already in a cache count).
/// Errors: a placeholder count different from n; labels of another length.
template <class EmbedText>
spliced_sequence splice_images(const std::vector<std::int32_t>& ids, const std::vector<std::int32_t>& labels,
                               tensor_ref<const float, 3> image_rows, std::int64_t width, std::int32_t image_token_id,
                               image_order order, std::int32_t first_image_id, EmbedText&& embed_text,
                               const char* where = "mmca::splice_images") {
    using detail::to_text;
    const std::int64_t L = static_cast<std::int64_t>(ids.size());
    const std::int64_t n = image_rows.empty() ? 0 : image_rows.shape[0];
    const std::int64_t T = image_rows.empty() ? 0 : image_rows.shape[1];
    MMCA_CHECK_ARG(labels.empty() || static_cast<std::int64_t>(labels.size()) == L, where, "labels",
                   to_text(labels.size()) + " labels", "none or one per token id (" + to_text(L) + ")");
    if (n > 0)
        MMCA_CHECK_ARG(image_rows.shape[2] == width && image_rows.contiguous(), where, "images",
                       "embedded images " + image_rows.shape_text(), "(n, T, " + to_text(width) + ") rows");
    const std::int64_t placeholders = std::count(ids.begin(), ids.end(), image_token_id);
    MMCA_CHECK_ARG(placeholders == n, where, "images", to_text(n) + " image" + (n == 1 ? "" : "s"),
                   to_text(placeholders) + " (the number of <image> placeholders, id " + to_text(image_token_id) +
                       ", in the token ids)");
    spliced_sequence s;
    const std::int64_t Lp = L + n * (T - 1);
    s.embeddings.resize(static_cast<std::size_t>(Lp * width));
    s.types.assign(static_cast<std::size_t>(Lp), 1);
    s.image_ids.assign(static_cast<std::size_t>(Lp), -1);
    if (!labels.empty()) s.labels.assign(static_cast<std::size_t>(Lp), ignore_label);
    s.image_rows.assign(static_cast<std::size_t>(n), 0);
    std::int64_t row = 0, seen = 0, i = 0;
    while (i < L) {
        if (ids[i] == image_token_id) {
            const std::int64_t img = order == image_order::reverse ? n - 1 - seen : seen;
            std::copy_n(image_rows.ptr(img, 0), T * width, s.embeddings.data() + row * width);
            std::fill_n(s.types.data() + row, T, std::int8_t{2});
            std::fill_n(s.image_ids.data() + row, T, static_cast<std::int32_t>(first_image_id + seen));
            s.image_rows[static_cast<std::size_t>(img)] = row;
            row += T;
            ++seen;
            ++i;
            continue;
        }
        std::int64_t j = i;
        while (j < L && ids[j] != image_token_id) ++j;
        embed_text(ids.data() + i, j - i, tensor_ref<float, 2>(s.embeddings.data() + row * width, {j - i, width}));
        if (!labels.empty()) std::copy(labels.begin() + i, labels.begin() + j, s.labels.begin() + row);
        row += j - i;
        i = j;
    }
    return s;
}

/// Mean cross-entropy of a batch: row t of sequence b predicts labels[b][t + 1]; rows whose next
/// label is −100 (or beyond the sequence) do not count. Returns {sum of losses, count}; the mean
/// is sum / count, and 0 when nothing is supervised (never NaN).
struct loss_result {
    double sum = 0.0;
    std::int64_t count = 0;
    double mean() const { return count > 0 ? sum / static_cast<double>(count) : 0.0; }
};

/// logits (B, L, V); labels[b] of length ≤ L (the sequence's own length).
inline loss_result shifted_cross_entropy(tensor_ref<const float, 3> logits,
                                         const std::vector<std::vector<std::int32_t>>& labels,
                                         const char* where = "mmca::shifted_cross_entropy") {
    using detail::to_text;
    const std::int64_t B = logits.shape[0], L = logits.shape[1], V = logits.shape[2];
    MMCA_CHECK_ARG(static_cast<std::int64_t>(labels.size()) == B, where, "labels", to_text(labels.size()) + " sequences",
                   to_text(B) + " (the batch of the logits)");
    loss_result r;
    for (std::int64_t b = 0; b < B; ++b) {
        const auto& lab = labels[static_cast<std::size_t>(b)];
        const std::int64_t n = static_cast<std::int64_t>(lab.size());
        MMCA_CHECK_ARG(n <= L, where, "labels", "sequence " + to_text(b) + " of " + to_text(n) + " labels",
                       "at most " + to_text(L) + " (the logits' length)");
        if (n == 0) continue;
        const auto c = nn::cross_entropy_forward_backward(
            tensor_ref<const float, 2>(logits.ptr(b, 0), {n, V}, {logits.strides[1], 1}), lab.data(), {});
        r.sum += c.loss_sum;
        r.count += c.count;
    }
    return r;
}

struct visual_chat_options {
    llama_model_options language;                ///< batch, context, attention variant, threads
    std::int32_t image_token_id = 32001;         ///< "<image>" (SPEC §6)
    std::int64_t max_images = 8;                 ///< images per sequence
    image_order order = image_order::in_order;
    std::int64_t image_cache_capacity = 32;      ///< embedded images kept (0: no cache)
};

/// One sequence of a batch: token ids with placeholders, labels (or empty), its images (n, 3, S, S).
struct visual_sample {
    std::vector<std::int32_t> ids;
    std::vector<std::int32_t> labels;
    tensor_ref<const float, 4> images;
};

/// The visual-chat model over a language model LM: mmca::basic_llama_model on any backend
/// (visual_chat_model<KV> is the CPU one, mmca::cuda::visual_chat_model<T> the GPU one) or any type
/// with the same host-facing calls (config, options, batch, context, length, embed, forward, reset),
/// such as mmca::cuda::lib::llama_model. The tower, the splice, the image cache and the chat rounds
/// are this one code whatever LM is; the tower's rows and the logits are host float32.
template <class LM>
class basic_visual_chat_model {
public:
    using language_model = LM;

    /// Builds the language model from its config and weights (with options.language).
    basic_visual_chat_model(std::unique_ptr<vision_tower> tower, llama_config config, llama_weights weights,
                            visual_chat_options options = {})
        : tower_(std::move(tower)), lm_(std::move(config), std::move(weights), options.language), options_(options) {
        check();
    }
    /// Takes a language model built by the caller; options.language becomes the model's options.
    basic_visual_chat_model(std::unique_ptr<vision_tower> tower, LM language, visual_chat_options options = {})
        : tower_(std::move(tower)), lm_(std::move(language)), options_(options) {
        options_.language = lm_.options();
        check();
    }

    // The generator refers to the language model: the object stays where it was made.
    basic_visual_chat_model(const basic_visual_chat_model&) = delete;
    basic_visual_chat_model& operator=(const basic_visual_chat_model&) = delete;

    LM& language() { return lm_; }
    const LM& language() const { return lm_; }
    vision_tower& tower() { return *tower_; }
    const vision_tower& tower() const { return *tower_; }
    const visual_chat_options& options() const { return options_; }
    void set_image_order(image_order o) { options_.order = o; }
    /// Images run through the tower so far (cache hits do not count).
    std::int64_t images_embedded() const { return images_embedded_; }
    std::int64_t cached_images() const { return static_cast<std::int64_t>(cache_.size()); }
    void clear_image_cache() {
        cache_.clear();
        lru_.clear();
    }

    /// out (N, T, H): the tower's rows of each image, from the cache where the same pixels were seen.
    /// Images not cached are embedded together in one batch.
    void embed_images(tensor_ref<const float, 4> images, tensor_ref<float, 3> out, int num_threads = -1) {
        using detail::to_text;
        const char* where = "mmca::visual_chat_model::embed_images";
        const std::int64_t S = tower_->image_size(), T = tower_->tokens_per_image(), H = tower_->width();
        const std::int64_t N = images.empty() ? 0 : images.shape[0];
        if (N == 0) return;
        MMCA_CHECK_ARG(images.shape[1] == 3 && images.shape[2] == S && images.shape[3] == S && images.contiguous(), where,
                       "images", images.shape_text(),
                       "contiguous (N, 3, " + to_text(S) + ", " + to_text(S) + ") preprocessed images");
        MMCA_CHECK_ARG(out.shape[0] == N && out.shape[1] == T && out.shape[2] == H && out.contiguous(), where, "out",
                       out.shape_text(), "(" + to_text(N) + ", " + to_text(T) + ", " + to_text(H) + ")");
        const std::int64_t per = 3 * S * S;
        std::vector<std::uint64_t> keys(static_cast<std::size_t>(N));
        std::vector<std::int64_t> missing;
        for (std::int64_t i = 0; i < N; ++i) {
            keys[i] = fnv1a64(images.ptr(i), static_cast<std::size_t>(per) * sizeof(float));
            auto it = cache_.find(keys[i]);
            if (it != cache_.end()) {
                std::copy(it->second.rows.begin(), it->second.rows.end(), out.ptr(i));
                lru_.splice(lru_.begin(), lru_, it->second.lru);
                continue;
            }
            // The same new image twice in one call is embedded once.
            bool dup = false;
            for (std::int64_t m : missing) dup = dup || keys[m] == keys[i];
            if (!dup) missing.push_back(i);
        }
        if (!missing.empty()) {
            std::vector<float> batch(static_cast<std::size_t>(missing.size() * per));
            for (std::size_t m = 0; m < missing.size(); ++m)
                std::copy_n(images.ptr(missing[m]), per, batch.data() + m * per);
            std::vector<float> rows(static_cast<std::size_t>(missing.size() * T * H));
            const std::int64_t M = static_cast<std::int64_t>(missing.size());
            tower_->embed(tensor_ref<const float, 4>(batch.data(), {M, 3, S, S}),
                          tensor_ref<float, 3>(rows.data(), {M, T, H}), threads(num_threads));
            images_embedded_ += M;
            for (std::int64_t m = 0; m < M; ++m) {
                const float* src = rows.data() + m * T * H;
                for (std::int64_t i = 0; i < N; ++i)
                    if (keys[i] == keys[missing[m]]) std::copy_n(src, T * H, out.ptr(i));
                remember(keys[missing[m]], src, T * H);
            }
        }
    }

    /// Splices one sequence: its images are embedded (through the cache) and numbered from
    /// first_image_id.
    spliced_sequence splice(const std::vector<std::int32_t>& ids, const std::vector<std::int32_t>& labels,
                            tensor_ref<const float, 4> images, std::int32_t first_image_id = 0, int num_threads = -1,
                            const char* where = "mmca::visual_chat_model::splice") {
        using detail::to_text;
        const std::int64_t n = images.empty() ? 0 : images.shape[0];
        MMCA_CHECK_ARG(first_image_id + n <= options_.max_images, where, "images",
                       to_text(first_image_id + n) + " images in the sequence (" + to_text(first_image_id) +
                           " earlier + " + to_text(n) + " new)",
                       "at most " + to_text(options_.max_images) + " (max_images)");
        const std::int64_t T = tower_->tokens_per_image(), H = tower_->width();
        // Count check before any encoder work.
        const std::int64_t placeholders = std::count(ids.begin(), ids.end(), options_.image_token_id);
        MMCA_CHECK_ARG(placeholders == n, where, "images", to_text(n) + " image" + (n == 1 ? "" : "s"),
                       to_text(placeholders) + " (the number of <image> placeholders, id " +
                           to_text(options_.image_token_id) + ", in the token ids)");
        for (std::size_t i = 0; i < ids.size(); ++i)
            MMCA_CHECK_ARG(ids[i] >= 0 && ids[i] < lm_.config().vocab_size, where, "ids",
                           "ids[" + to_text(i) + "] = " + to_text(ids[i]),
                           "a token id in [0, " + to_text(lm_.config().vocab_size) + ")");
        rows_.resize(static_cast<std::size_t>(n * T * H));
        tensor_ref<float, 3> rows(rows_.data(), {n, T, H});
        if (n > 0) embed_images(images, rows, num_threads);
        return splice_images(ids, labels, tensor_ref<const float, 3>(rows_.data(), {n, T, H}), H,
                             options_.image_token_id, options_.order, first_image_id,
                             [&](const std::int32_t* t, std::int64_t c, tensor_ref<float, 2> o) { lm_.embed(t, c, o); },
                             where);
    }

    /// Runs a batch of up to batch() samples from scratch (the caches are cleared first) and returns
    /// the spliced sequences; logits (B, Lmax, V) where Lmax is the longest spliced length (rows
    /// past a sequence's length are 0). With `loss`, the mean shifted cross-entropy is filled in.
    std::vector<spliced_sequence> forward(const std::vector<visual_sample>& samples, std::vector<float>& logits,
                                          std::int64_t& max_length, loss_result* loss = nullptr) {
        using detail::to_text;
        const char* where = "mmca::visual_chat_model::forward";
        const std::int64_t B = lm_.batch(), H = lm_.config().hidden_size, V = lm_.config().vocab_size;
        MMCA_CHECK_ARG(!samples.empty() && static_cast<std::int64_t>(samples.size()) <= B, where, "samples",
                       to_text(samples.size()) + " sequences", "1 to " + to_text(B) + " (the model's batch)");
        std::vector<spliced_sequence> seqs;
        seqs.reserve(samples.size());
        for (const auto& s : samples) seqs.push_back(splice(s.ids, s.labels, s.images, 0, -1, where));
        max_length = 0;
        for (const auto& s : seqs) max_length = std::max(max_length, s.length());
        MMCA_CHECK_ARG(max_length <= lm_.context(), where, "samples",
                       "a spliced sequence of " + to_text(max_length) + " tokens",
                       "at most " + to_text(lm_.context()) + " (the model's context)");
        const std::int64_t L = std::max<std::int64_t>(max_length, 1);
        std::vector<float> emb(static_cast<std::size_t>(B * L * H), 0.0f);
        std::vector<std::int8_t> types(static_cast<std::size_t>(B * L), 0);
        std::vector<std::int32_t> ids(static_cast<std::size_t>(B * L), -1), lens(static_cast<std::size_t>(B), 0);
        for (std::size_t b = 0; b < seqs.size(); ++b) {
            const auto& s = seqs[b];
            std::copy(s.embeddings.begin(), s.embeddings.end(), emb.begin() + b * L * H);
            std::copy(s.types.begin(), s.types.end(), types.begin() + b * L);
            std::copy(s.image_ids.begin(), s.image_ids.end(), ids.begin() + b * L);
            lens[b] = static_cast<std::int32_t>(s.length());
        }
        logits.assign(static_cast<std::size_t>(B * L * V), 0.0f);
        generator_.reset();  // clears the model's caches
        std::fill(images_in_cache_.begin(), images_in_cache_.end(), 0);
        lm_.forward(tensor_ref<const float, 3>(emb.data(), {B, L, H}), tensor_ref<const std::int8_t, 2>(types.data(), {B, L}),
                    tensor_ref<const std::int32_t, 2>(ids.data(), {B, L}),
                    tensor_ref<const std::int32_t, 1>(lens.data(), {B}), tensor_ref<float, 3>(logits.data(), {B, L, V}),
                    logits_mode::all);
        for (std::size_t b = 0; b < seqs.size(); ++b)
            images_in_cache_[b] = static_cast<std::int32_t>(seqs[b].image_rows.size());
        if (loss) {
            std::vector<std::vector<std::int32_t>> labels;
            for (const auto& s : seqs) labels.push_back(s.labels);
            labels.resize(static_cast<std::size_t>(B));
            *loss = shifted_cross_entropy(tensor_ref<const float, 3>(logits.data(), {B, L, V}), labels, where);
        }
        return seqs;
    }

    /// Appends tokens (with placeholders) and their images to sequence 0's cache (a chat round or
    /// a decode step) and writes the logits of the last new token into last_logits (V).
    void append(const std::vector<std::int32_t>& ids, tensor_ref<const float, 4> images, float* last_logits,
                int num_threads = -1) {
        using detail::to_text;
        const char* where = "mmca::visual_chat_model::append";
        MMCA_CHECK_ARG(lm_.batch() == 1, where, "model", "a model of batch " + to_text(lm_.batch()),
                       "a model of batch 1 (a chat holds one conversation)");
        MMCA_CHECK_ARG(!ids.empty(), where, "ids", "no tokens", "at least one token");
        const std::int64_t H = lm_.config().hidden_size, V = lm_.config().vocab_size;
        spliced_sequence s = splice(ids, {}, images, images_in_cache_[0], num_threads, where);
        const std::int64_t L = s.length();
        MMCA_CHECK_ARG(lm_.length(0) + L <= lm_.context(), where, "ids",
                       to_text(L) + " new tokens after splicing (" + to_text(lm_.length(0)) + " cached)",
                       "at most " + to_text(lm_.context() - lm_.length(0)) + " (the room left in the context of " +
                           to_text(lm_.context()) + ")");
        lm_.forward(tensor_ref<const float, 3>(s.embeddings.data(), {1, L, H}),
                    tensor_ref<const std::int8_t, 2>(s.types.data(), {1, L}),
                    tensor_ref<const std::int32_t, 2>(s.image_ids.data(), {1, L}), {},
                    tensor_ref<float, 3>(last_logits, {1, 1, V}), logits_mode::last);
        images_in_cache_[0] += static_cast<std::int32_t>(s.image_rows.size());
    }

    /// One chat round on sequence 0: prefills ids (with placeholders) and their images after the
    /// conversation so far, then generates the answer (streamed through on_token; returning false
    /// stops early). Rounds reuse the cache: a round runs only its own tokens.
    generation_result round(const std::vector<std::int32_t>& ids, tensor_ref<const float, 4> images,
                            const generation_options& options,
                            const std::function<bool(std::int32_t)>& on_token = {}) {
        return generator_.round(ids, options, on_token, [&](const std::vector<std::int32_t>& feed, float* logits) {
            append(feed, images, logits);
        });
    }

    /// Every token of the conversation so far (prompts with placeholders, answers).
    const std::vector<std::int32_t>& history() const { return generator_.history(); }

    /// Images held by sequence b's cache.
    std::int32_t images_in_context(std::int64_t b = 0) const { return images_in_cache_.at(static_cast<std::size_t>(b)); }

    /// Forgets the conversation (the image cache stays).
    void reset() {
        generator_.reset();  // clears the model's caches
        std::fill(images_in_cache_.begin(), images_in_cache_.end(), 0);
    }

private:
    struct cache_entry {
        std::vector<float> rows;
        std::list<std::uint64_t>::iterator lru;
    };

    /// Checks the tower and the options against the language model, and sizes the per-sequence
    /// image counts (both constructors end here).
    void check() {
        using detail::to_text;
        const char* where = "mmca::visual_chat_model";
        MMCA_CHECK_ARG(tower_ != nullptr, where, "tower", "no vision tower", "an encoder + projector");
        MMCA_CHECK_ARG(tower_->width() == lm_.config().hidden_size, where, "tower",
                       "image rows of width " + to_text(tower_->width()),
                       "the language model's hidden size " + to_text(lm_.config().hidden_size));
        MMCA_CHECK_ARG(options_.max_images > 0, where, "max_images", to_text(options_.max_images), "a positive count");
        MMCA_CHECK_ARG(options_.image_cache_capacity >= 0, where, "image_cache_capacity",
                       to_text(options_.image_cache_capacity), "a count >= 0");
        MMCA_CHECK_ARG(options_.image_token_id >= 0 && options_.image_token_id < lm_.config().vocab_size, where,
                       "image_token_id", to_text(options_.image_token_id),
                       "a token id of the vocabulary [0, " + to_text(lm_.config().vocab_size) + ")");
        images_in_cache_.assign(static_cast<std::size_t>(lm_.batch()), 0);
    }

    int threads(int requested) const { return requested >= 0 ? requested : lm_.options().num_threads; }

    void remember(std::uint64_t key, const float* rows, std::int64_t n) {
        if (options_.image_cache_capacity == 0) return;
        while (static_cast<std::int64_t>(cache_.size()) >= options_.image_cache_capacity) {
            cache_.erase(lru_.back());
            lru_.pop_back();
        }
        lru_.push_front(key);
        cache_[key] = cache_entry{std::vector<float>(rows, rows + n), lru_.begin()};
    }

    std::unique_ptr<vision_tower> tower_;
    LM lm_;
    basic_generator<LM> generator_{lm_};
    visual_chat_options options_;
    std::unordered_map<std::uint64_t, cache_entry> cache_;
    std::list<std::uint64_t> lru_;
    std::vector<float> rows_;
    std::vector<std::int32_t> images_in_cache_;
    std::int64_t images_embedded_ = 0;
};

/// The visual-chat model on the CPU, with KV caches of KV (float, float16 or bfloat16).
template <class KV = float>
using visual_chat_model = basic_visual_chat_model<llama_model<KV>>;

}  // namespace mmca
