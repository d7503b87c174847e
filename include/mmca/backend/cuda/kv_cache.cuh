// mmca/backend/cuda/kv_cache.cuh - a KV cache whose keys and values live on the GPU, for decoding.
//
// Same contract as mmca::kv_cache (mmca/attention/kv_cache.hpp): per sequence of a batch up to
// `capacity` tokens; append() adds the K/V of new tokens (a prompt, a chunk, one decoded token) and
// attention_forward(q, cache, ...) computes attention for exactly those new tokens over everything
// cached. Here K and V are (B, Hkv, capacity, D) device arrays of T, appended on the device by a copy
// kernel on the caller's stream; token types, image indices and lengths stay on the host (they
// drive the host-side planning of every call).
#pragma once

#include "mmca/attention/kv_tokens.hpp"
#include "mmca/attention/types.hpp"
#include "mmca/backend/cuda/attention_fused.cuh"
#include "mmca/backend/cuda/common.cuh"
#include "mmca/core/error.hpp"
#include "mmca/core/tensor.hpp"

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

namespace mmca {
namespace cuda {
namespace detail {

/// Copies new rows into the cache: dst(b, h, start[b] + i, :) = src(b, h, i, :) for i < take[b].
/// Grid: (Ln, Hkv, B); start_take is (B, 2) on the device.
template <class T>
__global__ void __launch_bounds__(128) kv_append_kernel(const T* k_new, const T* v_new, std::int64_t ks0,
                                                        std::int64_t ks1, std::int64_t ks2, std::int64_t vs0,
                                                        std::int64_t vs1, std::int64_t vs2, T* keys, T* values,
                                                        std::int32_t kv_heads, std::int32_t capacity,
                                                        std::int32_t head_dim, const std::int32_t* start_take) {
    const int i = blockIdx.x, h = blockIdx.y, b = blockIdx.z;
    const int start = start_take[2 * b], take = start_take[2 * b + 1];
    if (i >= take) return;
    const std::int64_t dst = ((static_cast<std::int64_t>(b) * kv_heads + h) * capacity + start + i) * head_dim;
    const T* ks = k_new + b * ks0 + h * ks1 + i * ks2;
    const T* vs = v_new + b * vs0 + h * vs1 + i * vs2;
    for (int d = threadIdx.x; d < head_dim; d += blockDim.x) {
        keys[dst + d] = ks[d];
        values[dst + d] = vs[d];
    }
}

}  // namespace detail

template <class T = float>
class kv_cache {
public:
    using value_type = T;
    using device_type = device_type_t<T>;

    /// Allocates (B, Hkv, capacity, D) keys and values on the current device (zeroed).
    kv_cache(std::int64_t batch, std::int64_t kv_heads, std::int64_t capacity, std::int64_t head_dim)
        : batch_(batch), kv_heads_(kv_heads), capacity_(capacity), head_dim_(head_dim),
          tokens_(checked_tokens(batch, kv_heads, capacity, head_dim)) {
        const std::size_t bytes = static_cast<std::size_t>(batch * kv_heads * capacity * head_dim) * sizeof(T);
        keys_.allocate(bytes);
        values_.allocate(bytes);
        MMCA_CUDA_CHECK(cudaMemset(keys_.data(), 0, bytes));
        MMCA_CUDA_CHECK(cudaMemset(values_.data(), 0, bytes));
        MMCA_CUDA_CHECK(cudaDeviceSynchronize());  // appends may run on a non-blocking stream
        start_take_.allocate(static_cast<std::size_t>(2 * batch) * sizeof(std::int32_t));
    }

    std::int64_t batch() const { return batch_; }
    std::int64_t kv_heads() const { return kv_heads_; }
    std::int64_t capacity() const { return capacity_; }
    std::int64_t head_dim() const { return head_dim_; }
    std::int64_t length(std::int64_t b) const { return tokens_.length(b); }
    std::int64_t last_appended(std::int64_t b) const { return tokens_.last_appended(b); }

    /// Appends new tokens: k_new and v_new (B, Hkv, Ln, D) on the device; types (B, Ln), optional
    /// image_ids (B, Ln) and lens (B) on the host (sequence b takes its first lens[b] tokens).
    /// Without image_ids each run of image tokens is a new image, numbered after those cached.
    /// Everything is checked before anything is written. The copy runs on `stream`.
    void append(tensor_ref<const T, 4> k_new, tensor_ref<const T, 4> v_new, tensor_ref<const std::int8_t, 2> types,
                tensor_ref<const std::int32_t, 2> image_ids = {}, tensor_ref<const std::int32_t, 1> lens = {},
                cudaStream_t stream = nullptr) {
        using mmca::detail::to_text;
        const char* where = "mmca::cuda::kv_cache::append";
        MMCA_CHECK_ARG(!k_new.empty() && !v_new.empty(), where, "k/v", "no tensor", "(B, Hkv, Ln, D) device tensors");
        const std::int64_t Ln = k_new.shape[2];
        const std::string expected =
            "[" + to_text(batch_) + ", " + to_text(kv_heads_) + ", Ln, " + to_text(head_dim_) + "]";
        MMCA_CHECK_ARG(k_new.shape[0] == batch_ && k_new.shape[1] == kv_heads_ && k_new.shape[3] == head_dim_, where,
                       "k", k_new.shape_text(), expected);
        MMCA_CHECK_ARG(v_new.shape == k_new.shape, where, "v", v_new.shape_text(), "the shape of k " + k_new.shape_text());
        MMCA_CHECK_ARG(k_new.inner_contiguous() && v_new.inner_contiguous(), where, "k/v", "a strided last dimension",
                       "a contiguous last dimension (D)");
        const std::vector<std::int64_t> take = tokens_.check_append(where, Ln, types, image_ids, lens);
        detail::check_device_pointer(k_new.data, where, "k");
        detail::check_device_pointer(v_new.data, where, "v");
        std::vector<std::int32_t> start_take(2 * static_cast<std::size_t>(batch_));
        for (std::int64_t b = 0; b < batch_; ++b) {
            start_take[2 * b] = static_cast<std::int32_t>(tokens_.length(b));
            start_take[2 * b + 1] = static_cast<std::int32_t>(take[b]);
        }

        if (Ln > 0) {
            MMCA_CUDA_CHECK(cudaMemcpyAsync(start_take_.data(), start_take.data(), start_take.size() * sizeof(std::int32_t),
                                            cudaMemcpyHostToDevice, stream));
            const dim3 grid(static_cast<unsigned>(Ln), static_cast<unsigned>(kv_heads_), static_cast<unsigned>(batch_));
            MMCA_CUDA_LAUNCH(detail::kv_append_kernel<device_type>, grid, 128, 0, stream,
                             reinterpret_cast<const device_type*>(k_new.data),
                             reinterpret_cast<const device_type*>(v_new.data), k_new.strides[0], k_new.strides[1],
                             k_new.strides[2], v_new.strides[0], v_new.strides[1], v_new.strides[2],
                             keys_.as<device_type>(), values_.as<device_type>(), static_cast<std::int32_t>(kv_heads_),
                             static_cast<std::int32_t>(capacity_), static_cast<std::int32_t>(head_dim_),
                             start_take_.as<std::int32_t>());
            MMCA_CUDA_CHECK(cudaGetLastError());
        }
        tokens_.record(types, image_ids, take);
    }

    /// Forgets every cached token (the device arrays are kept).
    void clear() { tokens_.clear(); }

    /// (B, Hkv, capacity, D) device views of the stored keys and values.
    tensor_ref<const T, 4> keys() const {
        return {keys_.as<const T>(), {batch_, kv_heads_, capacity_, head_dim_}};
    }
    tensor_ref<const T, 4> values() const {
        return {values_.as<const T>(), {batch_, kv_heads_, capacity_, head_dim_}};
    }

    /// Host token layout for attention over the cache: the queries are the latest append's tokens.
    token_layout tokens() const { return tokens_.tokens(); }

private:
    static kv_tokens checked_tokens(std::int64_t batch, std::int64_t kv_heads, std::int64_t capacity,
                                    std::int64_t head_dim) {
        const char* where = "mmca::cuda::kv_cache";
        using mmca::detail::to_text;
        MMCA_CHECK_ARG(batch > 0, where, "batch", to_text(batch), "a positive number of sequences");
        MMCA_CHECK_ARG(kv_heads > 0, where, "kv_heads", to_text(kv_heads), "a positive number of heads");
        MMCA_CHECK_ARG(capacity > 0, where, "capacity", to_text(capacity), "a positive number of tokens");
        MMCA_CHECK_ARG(head_dim > 0 && head_dim <= 256, where, "head_dim", to_text(head_dim),
                       "a head dimension in [1, 256]");
        return kv_tokens(batch, capacity);
    }

    std::int64_t batch_, kv_heads_, capacity_, head_dim_;
    kv_tokens tokens_;                     // token types, image indices, lengths (host)
    device_buffer keys_, values_;          // (B, Hkv, capacity, D) device
    device_buffer start_take_;             // (B, 2) device: where the current append writes
};

/// Attention for the tokens of the cache's latest append(): q and out are (B, Hq, Lq, D) device
/// tensors with Lq >= the largest count appended; row i of sequence b is its i-th new token.
template <class T>
void attention_forward(tensor_ref<const T, 4> q, const kv_cache<T>& cache, const attention_options& options,
                       tensor_ref<T, 4> out, cudaStream_t stream = nullptr, const attention_config& config = {}) {
    attention_forward<T>(q, cache.keys(), cache.values(), cache.tokens(), options, out, stream, config);
}

}  // namespace cuda
}  // namespace mmca
