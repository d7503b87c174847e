// mmca/backend/cpu/llama_backend.hpp - the CPU operations of the LLaMa-2 decoder.
//
// mmca::basic_llama_model<Backend> (mmca/language/model.hpp) holds the layer logic once; a backend
// supplies where activations live and how each operation runs on them. This one keeps activations
// in host float32 vectors, reads the (possibly f16/bf16, memory-mapped) weights in place and runs the
// mmca::nn functions and the CPU attention. mmca::llama_model<KV> is basic_llama_model over it.
//
// What a backend provides (mmca::cuda::llama_backend<T> is the other one):
//   value_type                  activation element type (float here)
//   buffer<U>                   a growable array of U where activations live: resize(n), data()
//   cache_type                  the per-layer KV cache: length(b), append(...) through the backend
//   make_cache(B, Hkv, capacity, D)
//   layer(weights, l), final_norm(weights)   weights as the ops below take them
//   load_rows, gather_rows      host float32 rows into a buffer; rows of a buffer into another
//   rmsnorm, linear, rope, add_rows, swiglu, append, attention, cross_block, logits
// A backend object is owned by one model and used from one thread at a time.
#pragma once

#include "mmca/attention/attention.hpp"
#include "mmca/attention/kv_cache.hpp"
#include "mmca/attention/types.hpp"
#include "mmca/core/tensor.hpp"
#include "mmca/language/config.hpp"
#include "mmca/language/weights.hpp"
#include "mmca/nn/cross_attention.hpp"
#include "mmca/nn/linear.hpp"
#include "mmca/nn/mlp.hpp"
#include "mmca/nn/rmsnorm.hpp"
#include "mmca/nn/rope.hpp"

#include <algorithm>
#include <cstdint>
#include <vector>

namespace mmca {
namespace cpu {

template <class KV = float>
class llama_backend {
    static_assert(is_storage_type_v<KV>, "mmca::cpu::llama_backend: KV cache storage must be float, float16 or bfloat16");

public:
    using value_type = float;
    using kv_type = KV;
    using cache_type = kv_cache<KV>;
    template <class U>
    using buffer = std::vector<U>;
    static constexpr const char* name = "cpu";

    llama_backend() = default;
    /// Nothing to prepare: the host weights are read in place at every call.
    llama_backend(const llama_config&, const llama_weights&) {}

    void set_num_threads(int n) { threads_ = n; }
    int num_threads() const { return threads_; }

    cache_type make_cache(std::int64_t batch, std::int64_t kv_heads, std::int64_t capacity,
                          std::int64_t head_dim) const {
        return cache_type(batch, kv_heads, capacity, head_dim);
    }

    // --- weights as the ops take them: the host weights themselves -------------------------------
    const llama_layer_weights& layer(const llama_weights& w, std::int64_t l) const {
        return w.layers[static_cast<std::size_t>(l)];
    }
    const std::vector<float>& final_norm(const llama_weights& w) const { return w.norm; }

    // --- data movement ------------------------------------------------------------------------------
    /// rows (N, H) of the buffer view = src rows (host float32).
    void load_rows(tensor_ref<const float, 2> src, tensor_ref<float, 2> dst) {
        for (std::int64_t n = 0; n < src.shape[0]; ++n) std::copy_n(src.ptr(n), src.shape[1], dst.ptr(n));
    }
    /// dst row r = src row rows[r], or zeros where rows[r] < 0.
    void gather_rows(tensor_ref<const float, 2> src, const std::vector<std::int64_t>& rows, tensor_ref<float, 2> dst) {
        for (std::size_t r = 0; r < rows.size(); ++r) {
            const auto i = static_cast<std::int64_t>(r);
            if (rows[r] < 0)
                std::fill_n(dst.ptr(i), dst.shape[1], 0.0f);
            else
                std::copy_n(src.ptr(rows[r]), src.shape[1], dst.ptr(i));
        }
    }
    /// Rows the residual adds of this call update (1) or leave (0), host (N).
    void set_update_rows(const std::vector<std::uint8_t>& rows) { update_ = &rows; }
    /// The RoPE table of this call's rows (host, from nn::rope_build).
    void set_rope(const nn::rope_table& table) { rope_ = &table; }

    // --- operations -------------------------------------------------------------------------------
    void rmsnorm(tensor_ref<const float, 2> x, const std::vector<float>& w, float eps, tensor_ref<float, 2> y) {
        nn::rmsnorm_forward(x, w.data(), eps, y, threads_);
    }
    void linear(tensor_ref<const float, 2> x, const nn::matrix_ref& w, const std::vector<float>& bias,
                tensor_ref<float, 2> y) {
        nn::linear_forward(x, w, bias.empty() ? nullptr : bias.data(), y, threads_);
    }
    /// Rotates x (B, heads, L, D) in place, a head-major view of (B·L, heads·D) rows.
    void rope(tensor_ref<float, 4> x) {
        nn::rope_apply(x.data, x.strides[2], x.shape[1], *rope_);
    }
    /// h += delta on the rows set_update_rows() marked.
    void add_rows(tensor_ref<float, 2> h, tensor_ref<const float, 2> delta) {
        const std::vector<std::uint8_t>& rows = *update_;
        const std::int64_t H = h.shape[1];
        for (std::int64_t n = 0; n < h.shape[0]; ++n) {
            if (!rows[static_cast<std::size_t>(n)]) continue;
            float* hr = h.ptr(n);
            const float* dr = delta.ptr(n);
            for (std::int64_t i = 0; i < H; ++i) hr[i] += dr[i];
        }
    }
    void swiglu(tensor_ref<const float, 2> x, const nn::swiglu_weights& w, tensor_ref<float, 2> y) {
        nn::swiglu_forward(x, w, y, mlp_scratch_, threads_);
    }
    void append(cache_type& cache, tensor_ref<const float, 4> k, tensor_ref<const float, 4> v,
                tensor_ref<const std::int8_t, 2> types, tensor_ref<const std::int32_t, 2> image_ids,
                tensor_ref<const std::int32_t, 1> lens) {
        cache.append(k, v, types, image_ids, lens);
    }
    void attention(tensor_ref<const float, 4> q, const cache_type& cache, const attention_options& options,
                   attention_impl impl, tensor_ref<float, 4> out) {
        attention_forward(q, cache, options, out, impl);
    }
    /// The gated cross-attention block of SPEC §2.5 on h (N, H); inputs are the host rows the call
    /// started from.
    void cross_block(tensor_ref<float, 2> h, tensor_ref<const float, 2> inputs, const nn::row_metadata& rows,
                     const nn::gated_cross_attention_weights& w, std::int64_t heads, std::int64_t kv_heads,
                     std::int64_t head_dim, float eps, image_visibility visibility, nn::cross_kv_store& store) {
        nn::gated_cross_attention_forward(h, inputs, rows, w, heads, kv_heads, head_dim, eps, visibility, store,
                                          cross_scratch_, threads_);
    }
    /// out (host float32, rows of any stride) = x · lm_headᵀ, x already normalized.
    void logits(tensor_ref<const float, 2> x, const llama_weights& w, tensor_ref<float, 2> out) {
        nn::linear_forward(x, w.lm_head, nullptr, out, threads_);
    }

private:
    int threads_ = 0;
    const std::vector<std::uint8_t>* update_ = nullptr;
    const nn::rope_table* rope_ = nullptr;
    nn::swiglu_scratch mlp_scratch_;
    nn::cross_attention_scratch cross_scratch_;
};

}  // namespace cpu
}  // namespace mmca
