// mmca/attention/kv_tokens.hpp - the token side of a KV cache, shared by the host and device caches.
//
// A kv_tokens holds, per sequence of a batch, the token types and image indices of up to `capacity`
// cached tokens, how many tokens are cached and how many the latest append added. It checks the
// token side of an append (shapes, counts, capacity, types, image indices) before anything changes,
// numbers images, and gives the token_layout that attention over the cache takes: the keys are the
// cached tokens, the queries the latest append's. mmca::kv_cache and mmca::cuda::kv_cache store K
// and V (on the host or on the device) and keep their tokens in one of these.
#pragma once

#include "mmca/attention/types.hpp"
#include "mmca/core/error.hpp"
#include "mmca/core/tensor.hpp"

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

namespace mmca {

class kv_tokens {
public:
    /// Empty bookkeeping for `batch` sequences of up to `capacity` tokens (both positive: the cache
    /// that owns it checks its arguments first).
    kv_tokens(std::int64_t batch, std::int64_t capacity)
        : batch_(batch),
          capacity_(capacity),
          types_(static_cast<std::size_t>(batch * capacity), 0),
          image_ids_(types_.size(), -1),
          lengths_(static_cast<std::size_t>(batch), 0),
          appended_(lengths_.size(), 0),
          images_(lengths_.size(), 0) {}

    std::int64_t batch() const { return batch_; }
    std::int64_t capacity() const { return capacity_; }
    /// Tokens cached for sequence b.
    std::int64_t length(std::int64_t b) const { return lengths_.at(static_cast<std::size_t>(b)); }
    /// Tokens added to sequence b by the most recent append.
    std::int64_t last_appended(std::int64_t b) const { return appended_.at(static_cast<std::size_t>(b)); }

    /// Checks the token side of an append of Ln new tokens per sequence: types (B, Ln), optional
    /// image_ids (B, Ln) and lens (B). Returns how many tokens each sequence takes (lens[b], or Ln).
    /// Throws mmca::invalid_argument, naming the argument, before anything changes.
    std::vector<std::int64_t> check_append(const char* where, std::int64_t Ln, tensor_ref<const std::int8_t, 2> types,
                                           tensor_ref<const std::int32_t, 2> image_ids,
                                           tensor_ref<const std::int32_t, 1> lens) const {
        using detail::to_text;
        MMCA_CHECK_ARG(!types.empty() && types.shape[0] == batch_ && types.shape[1] == Ln, where, "token_types",
                       types.shape_text(), "[" + to_text(batch_) + ", " + to_text(Ln) + "] (B, Ln)");
        if (!image_ids.empty())
            MMCA_CHECK_ARG(image_ids.shape == types.shape, where, "image_ids", image_ids.shape_text(),
                           "the shape of token_types " + types.shape_text());
        if (!lens.empty())
            MMCA_CHECK_ARG(lens.shape[0] == batch_, where, "lens", lens.shape_text(), "[" + to_text(batch_) + "]");
        std::vector<std::int64_t> take(static_cast<std::size_t>(batch_));
        for (std::int64_t b = 0; b < batch_; ++b) {
            const std::int64_t n = lens.empty() ? Ln : lens(b);
            const std::int64_t held = lengths_[static_cast<std::size_t>(b)];
            MMCA_CHECK_ARG(n >= 0 && n <= Ln, where, "lens", "lens[" + to_text(b) + "] = " + to_text(n),
                           "a count in [0, " + to_text(Ln) + "]");
            MMCA_CHECK_ARG(held + n <= capacity_, where, "k",
                           to_text(n) + " new tokens for sequence " + to_text(b) + " holding " + to_text(held),
                           "at most " + to_text(capacity_ - held) + " (cache capacity " + to_text(capacity_) +
                               " tokens)");
            check_new_tokens(where, types, image_ids, b, n);
            take[static_cast<std::size_t>(b)] = n;
        }
        return take;
    }

    /// Checks the metadata of `take` new tokens of sequence b without changing anything: token types
    /// in {0, 1, 2}; explicit image indices in [0, position of the token] (what attention over the
    /// cache accepts).
    void check_new_tokens(const char* where, tensor_ref<const std::int8_t, 2> types,
                          tensor_ref<const std::int32_t, 2> image_ids, std::int64_t b, std::int64_t take) const {
        mmca::check_new_tokens(where, types, image_ids, b, take, lengths_.at(static_cast<std::size_t>(b)));
    }

    /// Records an append that check_append accepted (take as it returned). Without image_ids each
    /// run of image tokens is a new image, numbered after those cached; a run that continues the
    /// cached tokens' last image keeps its number.
    void record(tensor_ref<const std::int8_t, 2> types, tensor_ref<const std::int32_t, 2> image_ids,
                const std::vector<std::int64_t>& take) {
        for (std::int64_t b = 0; b < batch_; ++b) {
            const auto sb = static_cast<std::size_t>(b);
            const std::int64_t start = lengths_[sb];
            for (std::int64_t i = 0; i < take[sb]; ++i) {
                const auto pos = static_cast<std::size_t>(b * capacity_ + start + i);
                const std::int8_t t = types(b, i);
                types_[pos] = t;
                std::int32_t id = -1;
                if (t == static_cast<std::int8_t>(token_type::image)) {
                    if (!image_ids.empty()) {
                        id = image_ids(b, i);
                    } else {
                        const bool continues = start + i > 0 && types_[pos - 1] == t;
                        id = continues ? image_ids_[pos - 1] : images_[sb];
                    }
                    images_[sb] = std::max(images_[sb], id + 1);
                }
                image_ids_[pos] = id;
            }
            lengths_[sb] = static_cast<std::int32_t>(start + take[sb]);
            appended_[sb] = static_cast<std::int32_t>(take[sb]);
        }
    }

    /// Forgets every token.
    void clear() {
        std::fill(lengths_.begin(), lengths_.end(), 0);
        std::fill(appended_.begin(), appended_.end(), 0);
        std::fill(images_.begin(), images_.end(), 0);
        std::fill(types_.begin(), types_.end(), 0);
        std::fill(image_ids_.begin(), image_ids_.end(), -1);
    }

    /// Token layout for attention over the cache: the keys are the cached tokens, the queries the
    /// tokens of the latest append (views into this object).
    token_layout tokens() const {
        token_layout t;
        t.types = tensor_ref<const std::int8_t, 2>(types_.data(), {batch_, capacity_});
        t.image_ids = tensor_ref<const std::int32_t, 2>(image_ids_.data(), {batch_, capacity_});
        t.kv_lens = tensor_ref<const std::int32_t, 1>(lengths_.data(), {batch_});
        t.q_lens = tensor_ref<const std::int32_t, 1>(appended_.data(), {batch_});
        return t;
    }

private:
    std::int64_t batch_, capacity_;
    std::vector<std::int8_t> types_;       // (B, capacity)
    std::vector<std::int32_t> image_ids_;  // (B, capacity), -1 for tokens that are not image tokens
    std::vector<std::int32_t> lengths_;    // (B) tokens cached
    std::vector<std::int32_t> appended_;   // (B) tokens of the latest append
    std::vector<std::int32_t> images_;     // (B) images numbered so far
};

}  // namespace mmca
