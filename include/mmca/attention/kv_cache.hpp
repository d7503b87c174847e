// mmca/attention/kv_cache.hpp - keys, values and token metadata of past tokens, for decoding.
//
// A kv_cache holds, per sequence of a batch, up to `capacity` tokens: K and V (B, Hkv, capacity, D)
// in float32, float16 or bfloat16 storage, their token types and image indices. append() adds the
// K/V of new tokens (a prompt, a chunk of one, or one decoded token); attention_forward(q, cache, ...)
// then computes attention for exactly those new tokens over everything cached. Prefilling at once,
// in chunks or token by token gives the same rows, except where a variant lets a row see keys that
// come after it (mmca_reference's rows before the first image, causal_cross with policy `all`):
// those rows see the keys present when they are computed.
#pragma once

#include "mmca/attention/attention.hpp"
#include "mmca/attention/kv_tokens.hpp"
#include "mmca/attention/types.hpp"
#include "mmca/core/dtype.hpp"
#include "mmca/core/error.hpp"
#include "mmca/core/tensor.hpp"

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

namespace mmca {

template <class T = float>
class kv_cache {
    static_assert(is_storage_type_v<T>, "mmca::kv_cache: storage must be float, float16 or bfloat16");

public:
    using value_type = T;

    kv_cache(std::int64_t batch, std::int64_t kv_heads, std::int64_t capacity, std::int64_t head_dim)
        : batch_(batch), kv_heads_(kv_heads), capacity_(capacity), head_dim_(head_dim),
          tokens_(checked_tokens(batch, kv_heads, capacity, head_dim)) {
        keys_.assign(static_cast<std::size_t>(batch * kv_heads * capacity * head_dim), T(0.0f));
        values_.assign(keys_.size(), T(0.0f));
    }

    std::int64_t batch() const { return batch_; }
    std::int64_t kv_heads() const { return kv_heads_; }
    std::int64_t capacity() const { return capacity_; }
    std::int64_t head_dim() const { return head_dim_; }
    /// Tokens cached for sequence b.
    std::int64_t length(std::int64_t b) const { return tokens_.length(b); }
    /// Tokens added to sequence b by the most recent append().
    std::int64_t last_appended(std::int64_t b) const { return tokens_.last_appended(b); }

    /// Appends new tokens: k_new and v_new (B, Hkv, Ln, D) float32, types (B, Ln) and optionally
    /// image_ids (B, Ln) and lens (B): sequence b takes its first lens[b] new tokens (default Ln).
    /// Without image_ids, each run of image tokens is a new image, numbered after those cached.
    /// Everything is checked before anything is written: a failed append leaves the cache as it was.
    void append(tensor_ref<const float, 4> k_new, tensor_ref<const float, 4> v_new,
                tensor_ref<const std::int8_t, 2> types, tensor_ref<const std::int32_t, 2> image_ids = {},
                tensor_ref<const std::int32_t, 1> lens = {}) {
        using detail::to_text;
        const char* where = "mmca::kv_cache::append";
        MMCA_CHECK_ARG(!k_new.empty() && !v_new.empty(), where, "k/v", "no tensor", "(B, Hkv, Ln, D) float32 tensors");
        const std::int64_t Ln = k_new.shape[2];
        const std::string expected = "[" + to_text(batch_) + ", " + to_text(kv_heads_) + ", Ln, " + to_text(head_dim_) + "]";
        MMCA_CHECK_ARG(k_new.shape[0] == batch_ && k_new.shape[1] == kv_heads_ && k_new.shape[3] == head_dim_, where,
                       "k", k_new.shape_text(), expected);
        MMCA_CHECK_ARG(v_new.shape == k_new.shape, where, "v", v_new.shape_text(), "the shape of k " + k_new.shape_text());
        MMCA_CHECK_ARG(k_new.inner_contiguous() && v_new.inner_contiguous(), where, "k/v", "a strided last dimension",
                       "a contiguous last dimension (D)");
        const std::vector<std::int64_t> take = tokens_.check_append(where, Ln, types, image_ids, lens);
        for (std::int64_t b = 0; b < batch_; ++b) {
            const std::int64_t start = tokens_.length(b);
            for (std::int64_t h = 0; h < kv_heads_; ++h)
                for (std::int64_t i = 0; i < take[b]; ++i) {
                    from_float(k_new.ptr(b, h, i), key_ptr(b, h, start + i), head_dim_);
                    from_float(v_new.ptr(b, h, i), value_ptr(b, h, start + i), head_dim_);
                }
        }
        tokens_.record(types, image_ids, take);
    }

    /// Checks the metadata of `take` new tokens of sequence b without changing anything: token types
    /// in {0, 1, 2}; explicit image indices in [0, position of the token] (what attention over the
    /// cache accepts). append() checks them too; so do callers that validate a whole step before
    /// appending.
    void check_new_tokens(const char* where, tensor_ref<const std::int8_t, 2> types,
                          tensor_ref<const std::int32_t, 2> image_ids, std::int64_t b, std::int64_t take) const {
        tokens_.check_new_tokens(where, types, image_ids, b, take);
    }

    /// Forgets every cached token.
    void clear() { tokens_.clear(); }

    /// (B, Hkv, capacity, D) views of the stored keys and values.
    tensor_ref<const T, 4> keys() const { return {keys_.data(), {batch_, kv_heads_, capacity_, head_dim_}}; }
    tensor_ref<const T, 4> values() const { return {values_.data(), {batch_, kv_heads_, capacity_, head_dim_}}; }

    /// Token layout for attention over the cache: queries are the tokens of the latest append().
    token_layout tokens() const { return tokens_.tokens(); }

private:
    static kv_tokens checked_tokens(std::int64_t batch, std::int64_t kv_heads, std::int64_t capacity,
                                    std::int64_t head_dim) {
        const char* where = "mmca::kv_cache";
        MMCA_CHECK_ARG(batch > 0, where, "batch", detail::to_text(batch), "a positive number of sequences");
        MMCA_CHECK_ARG(kv_heads > 0, where, "kv_heads", detail::to_text(kv_heads), "a positive number of heads");
        MMCA_CHECK_ARG(capacity > 0, where, "capacity", detail::to_text(capacity), "a positive number of tokens");
        MMCA_CHECK_ARG(head_dim > 0 && head_dim <= 256, where, "head_dim", detail::to_text(head_dim),
                       "a head dimension in [1, 256]");
        return kv_tokens(batch, capacity);
    }
    T* key_ptr(std::int64_t b, std::int64_t h, std::int64_t i) {
        return keys_.data() + ((b * kv_heads_ + h) * capacity_ + i) * head_dim_;
    }
    T* value_ptr(std::int64_t b, std::int64_t h, std::int64_t i) {
        return values_.data() + ((b * kv_heads_ + h) * capacity_ + i) * head_dim_;
    }

    std::int64_t batch_, kv_heads_, capacity_, head_dim_;
    kv_tokens tokens_;                      // token types, image indices, lengths
    std::vector<T> keys_, values_;          // (B, Hkv, capacity, D)
};

/// Attention for the tokens of the cache's latest append(): q is (B, Hq, Lq, D) with
/// Lq >= the largest count appended; row i of sequence b is its i-th new token.
template <class T>
void attention_forward(tensor_ref<const float, 4> q, const kv_cache<T>& cache, const attention_options& options,
                       tensor_ref<float, 4> out, attention_impl impl = attention_impl::fused) {
    attention_forward<T>(q, cache.keys(), cache.values(), cache.tokens(), options, out, impl);
}

}  // namespace mmca
