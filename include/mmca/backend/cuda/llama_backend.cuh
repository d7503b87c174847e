// mmca/backend/cuda/llama_backend.cuh - the LLaMa-2 decoder on a GPU, with the CPU's layer code.
//
//   auto [config, weights] = mmca::io::load_llama("llama-2-7b-hf");
//   mmca::cuda::llama_model<mmca::bfloat16> model(config, std::move(weights), options);
//   model.forward_tokens(ids, lens, logits, mmca::logits_mode::last);   // logits: host float32
//
// mmca::cuda::llama_model<T> is mmca::basic_llama_model (mmca/language/model.hpp) over the backend
// below: the same forward(), caches and chat rounds as the CPU model, with activations, weights and
// the KV caches in device memory of T (float, float16 or bfloat16). The caller's tensors stay on the
// host: input embeddings (float32) are converted and uploaded, logits (float32, from a float32-output
// GEMM) come back to the host. Token types, image ids and positions are host metadata, as for
// mmca::cuda::kv_cache.
//
// Per layer: cuBLAS linear layers (float32 accumulation), RMSNorm, RoPE from the CPU's table,
// SwiGLU, the fused CUDA attention over the device cache, and residual adds that leave causal_cross
// image rows untouched (cuda::residual_add with a row mask). Norm weights and biases are float32 on
// the device; matrices are converted once, at construction, from the checkpoint's dtype to T
// (device_weights.cuh). The device copies do not follow later changes of model.mutable_weights().
//
// Gated cross-attention blocks (SPEC §2.5) run on the host: h is copied down, the CPU block runs
// with the host weights and h goes back up. That keeps them exact and available, at the cost of two
// transfers of (N, H) per block.
//
// attention_impl::reference has no CUDA counterpart: the fused CUDA kernel runs for either impl.
// Every call synchronizes with the host when it returns logits or runs a cross block; the backend
// uses the default stream.
#pragma once

#include "mmca/backend/cuda/common.cuh"
#include "mmca/backend/cuda/device_weights.cuh"
#include "mmca/backend/cuda/kv_cache.cuh"
#include "mmca/backend/cuda/ops/ops.cuh"
#include "mmca/core/dtype.hpp"
#include "mmca/language/model.hpp"
#include "mmca/nn/cross_attention.hpp"

#include <cstdint>
#include <memory>
#include <type_traits>
#include <vector>

namespace mmca {
namespace cuda {

namespace llama_detail {

template <class T>
struct device_mlp {
    device_matrix<T> gate, up, down;
};

template <class T>
struct device_layer {
    device_vector attn_norm, mlp_norm, q_bias, k_bias, v_bias, o_bias;
    device_matrix<T> q, k, v, o;
    device_mlp<T> mlp;
};

}  // namespace llama_detail

/// The CUDA backend of mmca::basic_llama_model (the interface is described in
/// mmca/backend/cpu/llama_backend.hpp). T: activation, weight and KV cache type on the device.
template <class T = float>
class llama_backend {
    static_assert(is_storage_type_v<T>, "mmca::cuda::llama_backend: T must be float, float16 or bfloat16");
    using D = device_type_t<T>;

public:
    using value_type = T;
    using kv_type = T;
    using cache_type = kv_cache<T>;
    template <class U>
    using buffer = device_array<U>;
    using layer_weights = llama_detail::device_layer<T>;
    static constexpr const char* name = "cuda";

    llama_backend() = default;
    /// Copies the weights the layers use (not the token embedding: forward_tokens embeds on the host)
    /// to the current device, converting matrices to T.
    llama_backend(const llama_config& config, const llama_weights& w)
        : handle_(make_model_handle("mmca::cuda::llama_model")), lm_head_(upload_matrix<T>(w.lm_head)),
          norm_(upload_vector(w.norm)) {
        (void)config;
        layers_.reserve(w.layers.size());
        for (const auto& h : w.layers) {
            layer_weights d;
            d.attn_norm = upload_vector(h.attn_norm);
            d.mlp_norm = upload_vector(h.mlp_norm);
            d.q_bias = upload_vector(h.q_bias);
            d.k_bias = upload_vector(h.k_bias);
            d.v_bias = upload_vector(h.v_bias);
            d.o_bias = upload_vector(h.o_bias);
            d.q = upload_matrix<T>(h.q);
            d.k = upload_matrix<T>(h.k);
            d.v = upload_matrix<T>(h.v);
            d.o = upload_matrix<T>(h.o);
            d.mlp.gate = upload_matrix<T>(h.mlp.gate);
            d.mlp.up = upload_matrix<T>(h.mlp.up);
            d.mlp.down = upload_matrix<T>(h.mlp.down);
            layers_.push_back(std::move(d));
        }
    }

    void set_num_threads(int n) { threads_ = n; }  // the host-side cross blocks' threads

    cache_type make_cache(std::int64_t batch, std::int64_t kv_heads, std::int64_t capacity,
                          std::int64_t head_dim) const {
        return cache_type(batch, kv_heads, capacity, head_dim);
    }

    const layer_weights& layer(const llama_weights&, std::int64_t l) const {
        return layers_.at(static_cast<std::size_t>(l));
    }
    const device_vector& final_norm(const llama_weights&) const { return norm_; }

    /// dst (device rows of T) = src (host float32 rows).
    void load_rows(tensor_ref<const float, 2> src, tensor_ref<T, 2> dst) {
        const std::int64_t rows = src.shape[0], cols = src.shape[1];
        staging_.resize(static_cast<std::size_t>(rows * cols));
        for (std::int64_t r = 0; r < rows; ++r)
            for (std::int64_t c = 0; c < cols; ++c) staging_[r * cols + c] = T(src(r, c));
        if (rows > 0)
            MMCA_CUDA_CHECK(cudaMemcpy2D(dst.data, dst.strides[0] * sizeof(T), staging_.data(), cols * sizeof(T),
                                         cols * sizeof(T), rows, cudaMemcpyHostToDevice));
    }
    void gather_rows(tensor_ref<const T, 2> src, const std::vector<std::int64_t>& rows, tensor_ref<T, 2> dst) {
        const std::size_t bytes = static_cast<std::size_t>(src.shape[1]) * sizeof(T);
        for (std::size_t r = 0; r < rows.size(); ++r) {
            T* to = dst.ptr(static_cast<std::int64_t>(r));
            if (rows[r] < 0)
                MMCA_CUDA_CHECK(cudaMemsetAsync(to, 0, bytes, nullptr));
            else
                MMCA_CUDA_CHECK(cudaMemcpyAsync(to, src.ptr(rows[r]), bytes, cudaMemcpyDeviceToDevice, nullptr));
        }
    }
    void set_update_rows(const std::vector<std::uint8_t>& rows) {
        upload(update_, rows, nullptr, false);
        rows_ = static_cast<std::int64_t>(rows.size());
    }
    void set_rope(const nn::rope_table& table) { upload_rope_table(table, rope_, nullptr); }

    void rmsnorm(tensor_ref<const T, 2> x, const device_vector& w, float eps, tensor_ref<T, 2> y) {
        rmsnorm_forward<T>(x, w.get(), eps, y, nullptr);
    }
    void linear(tensor_ref<const T, 2> x, const device_matrix<T>& w, const device_vector& bias,
                tensor_ref<T, 2> y) {
        linear_forward<T>(*handle_, x, w.view(), bias.get(), y, nullptr);
    }
    void rope(tensor_ref<T, 4> x) { rope_apply<T>(x, rope_, nullptr); }
    void add_rows(tensor_ref<T, 2> h, tensor_ref<const T, 2> delta) {
        MMCA_CHECK_ARG(h.shape[0] == rows_, "mmca::cuda::llama_backend::add_rows", "h", h.shape_text(),
                       "(" + mmca::detail::to_text(rows_) + ", H): the rows set_update_rows() described");
        if (h.shape[0] == 0) return;
        residual_add<T>(h, delta, update_.as<const std::uint8_t>(), nullptr);
    }
    void swiglu(tensor_ref<const T, 2> x, const llama_detail::device_mlp<T>& w, tensor_ref<T, 2> y) {
        const std::int64_t N = x.shape[0], I = w.gate.rows;
        gate_.resize(static_cast<std::size_t>(N * I));
        up_.resize(static_cast<std::size_t>(N * I));
        tensor_ref<T, 2> g(gate_.data(), {N, I}), u(up_.data(), {N, I});
        linear_forward<T>(*handle_, x, w.gate.view(), nullptr, g, nullptr);
        linear_forward<T>(*handle_, x, w.up.view(), nullptr, u, nullptr);
        swiglu_forward<T>(g, u, g, nullptr);
        linear_forward<T>(*handle_, g, w.down.view(), nullptr, y, nullptr);
    }
    void append(cache_type& cache, tensor_ref<const T, 4> k, tensor_ref<const T, 4> v,
                tensor_ref<const std::int8_t, 2> types, tensor_ref<const std::int32_t, 2> image_ids,
                tensor_ref<const std::int32_t, 1> lens) {
        cache.append(k, v, types, image_ids, lens, nullptr);
    }
    void attention(tensor_ref<const T, 4> q, const cache_type& cache, const attention_options& options, attention_impl,
                   tensor_ref<T, 4> out) {
        attention_forward<T>(q, cache, options, out, nullptr);
    }
    /// The gated cross-attention block, on the host (see the top of this file).
    void cross_block(tensor_ref<T, 2> h, tensor_ref<const float, 2> inputs, const nn::row_metadata& rows,
                     const nn::gated_cross_attention_weights& w, std::int64_t heads, std::int64_t kv_heads,
                     std::int64_t head_dim, float eps, image_visibility visibility, nn::cross_kv_store& store) {
        const std::int64_t N = h.shape[0], H = h.shape[1];
        staging_.resize(static_cast<std::size_t>(N * H));
        host_rows_.resize(static_cast<std::size_t>(N * H));
        MMCA_CUDA_CHECK(cudaMemcpy2D(staging_.data(), H * sizeof(T), h.data, h.strides[0] * sizeof(T), H * sizeof(T), N,
                                     cudaMemcpyDeviceToHost));
        for (std::size_t i = 0; i < host_rows_.size(); ++i) host_rows_[i] = static_cast<float>(staging_[i]);
        nn::gated_cross_attention_forward(tensor_ref<float, 2>(host_rows_.data(), {N, H}), inputs, rows, w, heads,
                                          kv_heads, head_dim, eps, visibility, store, cross_scratch_, threads_);
        load_rows(tensor_ref<const float, 2>(host_rows_.data(), {N, H}), h);
    }
    /// out (host float32 rows) = x · lm_headᵀ, computed with a float32 result on the device.
    void logits(tensor_ref<const T, 2> x, const llama_weights&, tensor_ref<float, 2> out) {
        const std::int64_t M = x.shape[0], V = lm_head_.rows, H = lm_head_.cols;
        if (M == 0) return;
        logits_.resize(static_cast<std::size_t>(M * V));
        const ops_detail::gemm_argument_set g = ops_detail::gemm_arguments(M, H, V, H, x.strides[0], V);
        constexpr cudaDataType_t type = ops_detail::cuda_data_type<D>::value;
        const float alpha = 1.0f, beta = 0.0f;
        MMCA_CUBLAS_CHECK(cublasSetStream(handle_->get(), nullptr));
        MMCA_CUBLAS_CHECK(cublasGemmEx(handle_->get(), CUBLAS_OP_T, CUBLAS_OP_N, ops_detail::to_int(g.m),
                                       ops_detail::to_int(g.n), ops_detail::to_int(g.k), &alpha, lm_head_.data.data(),
                                       type, ops_detail::to_int(g.lda), x.data, type, ops_detail::to_int(g.ldb), &beta,
                                       logits_.data(), CUDA_R_32F, ops_detail::to_int(g.ldc), CUBLAS_COMPUTE_32F,
                                       CUBLAS_GEMM_DEFAULT));
        MMCA_CUDA_CHECK(cudaMemcpy2D(out.data, out.strides[0] * sizeof(float), logits_.data(), V * sizeof(float),
                                     V * sizeof(float), M, cudaMemcpyDeviceToHost));
    }

private:
    std::unique_ptr<cublas_handle> handle_;
    device_matrix<T> lm_head_;
    device_vector norm_;
    std::vector<layer_weights> layers_;
    rope_device_table rope_;
    device_buffer update_;
    std::int64_t rows_ = 0;
    device_array<T> gate_, up_;
    device_array<float> logits_;
    std::vector<T> staging_;
    std::vector<float> host_rows_;
    nn::cross_attention_scratch cross_scratch_;
    int threads_ = 0;
};

/// The LLaMa-2 decoder on the current CUDA device (activations, weights and KV caches of T).
template <class T = float>
using llama_model = basic_llama_model<llama_backend<T>>;

}  // namespace cuda
}  // namespace mmca
