// mmca/backend/cuda/vision.cuh - the vision encoders (QWen-VL, CLIP) on a GPU, and the vision tower around them.
//
//   mmca::vision::qwen_vit host = mmca::io::load_qwen_vit(ckpt, "vis_encoder.", config);
//   mmca::cuda::qwen_vit<mmca::bfloat16> vit(host);          // weights copied to the device as T
//   vit.encode(images, out);                                 // host float32 in and out
//
// mmca::cuda::qwen_vit<T> computes what mmca::vision::qwen_vit computes (SPEC §3; see
// mmca/vision/qwen_vit.hpp), with activations of T on the device:
//   x = patches · conv1ᵀ + pos, ln_pre          cuBLAS GEMM over the unfolded patches, residual add
//   48 × pre-LN encoder layer                    LayerNorm, qkv GEMM (+ bias), dense attention per
//                                                image (cuda::dense_attention), out GEMM, residual;
//                                                LayerNorm, fc1 GEMM, GELU, fc2 GEMM, residual
//   resampler (attn_pool), ln_post               kv_proj GEMM, LayerNorm, + key positions, k and v
//                                                GEMMs, dense attention of the learned queries
//                                                per image, out_proj GEMM, LayerNorm
// The learned queries' side of the resampler (LN_q(query) + q_pos, then its q projection) depends
// on the weights only: it is computed once on the host at construction, in float32, and uploaded.
// The images of a call go through the layers up to max_images_per_call at a time; attention runs
// per image. GEMMs accumulate in float32 (no TF32); norms and biases are float32; the resized
// position tables are made by the host encoder and uploaded as T.
//
//   mmca::cuda::clip_vit<T> clip(host_clip);               // mmca::vision::clip_vit (HF CLIPVisionModel)
//   clip.encode(images, out, mmca::vision::clip_output::penultimate);
//
// mmca::cuda::clip_vit<T> computes what mmca::vision::clip_vit computes (mmca/vision/clip_vit.hpp):
//   x = [cls ; patches · patch_embeddingᵀ] + position_embedding      per image: the patch GEMM, its rows
//                                                                    moved one row down, row 0 set to 0,
//                                                                    then + a position table whose row 0
//                                                                    holds cls + position 0 (host, fp32)
//   pre_layrnorm, L (L - 1 for the penultimate state) pre-LN layers  encoder_layer_forward as above
//
// mmca::cuda::encoder_projector_tower<T> is a mmca::vision_tower (host float32 in and out) whose
// encoder (QWen-VL or CLIP) runs on the device and whose projector (trainable, small) runs on the
// host. The visual-chat model on the GPU (visual_chat.cuh) uses it.
#pragma once

#include "mmca/backend/cuda/common.cuh"
#include "mmca/backend/cuda/device_weights.cuh"
#include "mmca/backend/cuda/ops/ops.cuh"
#include "mmca/core/error.hpp"
#include "mmca/core/tensor.hpp"
#include "mmca/model/visual_chat_loader.hpp"
#include "mmca/nn/layernorm.hpp"
#include "mmca/nn/linear.hpp"
#include "mmca/vision/clip_vit.hpp"
#include "mmca/vision/qwen_vit.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <memory>
#include <utility>
#include <vector>

namespace mmca {
namespace cuda {

/// An encoder layer's weights on the device (mmca::vision::encoder_layer_weights).
template <class T>
struct device_encoder_layer {
    device_vector ln1_w, ln1_b, ln2_w, ln2_b;
    vision::qkv_layout layout = vision::qkv_layout::separate;
    device_matrix<T> qkv, q, k, v, out, fc1, fc2;
    device_vector qkv_bias, q_bias, k_bias, v_bias, out_bias, fc1_bias, fc2_bias;
};

template <class T>
device_encoder_layer<T> upload_encoder_layer(const vision::encoder_layer_weights& w) {
    device_encoder_layer<T> d;
    d.ln1_w = upload_vector(w.ln1_w);
    d.ln1_b = upload_vector(w.ln1_b);
    d.ln2_w = upload_vector(w.ln2_w);
    d.ln2_b = upload_vector(w.ln2_b);
    d.layout = w.layout;
    if (w.layout == vision::qkv_layout::separate) {
        d.q = upload_matrix<T>(w.q);
        d.k = upload_matrix<T>(w.k);
        d.v = upload_matrix<T>(w.v);
        d.q_bias = upload_vector(w.q_bias);
        d.k_bias = upload_vector(w.k_bias);
        d.v_bias = upload_vector(w.v_bias);
    } else {
        d.qkv = upload_matrix<T>(w.qkv);
        d.qkv_bias = upload_vector(w.qkv_bias);
    }
    d.out = upload_matrix<T>(w.out);
    d.out_bias = upload_vector(w.out_bias);
    d.fc1 = upload_matrix<T>(w.fc1);
    d.fc1_bias = upload_vector(w.fc1_bias);
    d.fc2 = upload_matrix<T>(w.fc2);
    d.fc2_bias = upload_vector(w.fc2_bias);
    return d;
}

/// Work buffers of encoder_layer_forward, grown on demand.
template <class T>
struct encoder_layer_scratch {
    device_array<T> normed, qkv, attn, proj, hidden;
    dense_attention_scratch attention;
};

/// x (N·Tn, W) of N sequences of Tn tokens (device rows of T), updated in place by one pre-LN
/// encoder layer (mmca::vision::encoder_layer_forward).
template <class T>
void encoder_layer_forward(const cublas_handle& handle, tensor_ref<T, 2> x, std::int64_t N, std::int64_t Tn,
                           const vision::encoder_layer_config& config, const device_encoder_layer<T>& w,
                           encoder_layer_scratch<T>& s, cudaStream_t stream = nullptr) {
    const std::int64_t R = N * Tn, W = config.width, M = config.mlp_width, heads = config.heads;
    const std::int64_t D = config.head_dim();
    if (R == 0) return;
    s.normed.resize(static_cast<std::size_t>(R * W));
    s.qkv.resize(static_cast<std::size_t>(R * 3 * W));
    s.attn.resize(static_cast<std::size_t>(R * W));
    s.proj.resize(static_cast<std::size_t>(R * W));
    s.hidden.resize(static_cast<std::size_t>(R * M));
    const tensor_ref<T, 2> normed(s.normed.data(), {R, W}), attn(s.attn.data(), {R, W}), proj(s.proj.data(), {R, W});
    const tensor_ref<T, 2> hidden(s.hidden.data(), {R, M});
    T* qkv = s.qkv.data();

    // Attention half.
    layernorm_forward<T>(x, w.ln1_w.get(), w.ln1_b.get(), config.eps, normed, stream);
    if (w.layout == vision::qkv_layout::separate) {
        const device_matrix<T>* mats[3] = {&w.q, &w.k, &w.v};
        const device_vector* biases[3] = {&w.q_bias, &w.k_bias, &w.v_bias};
        for (int i = 0; i < 3; ++i)
            linear_forward<T>(handle, normed, mats[i]->view(), biases[i]->get(),
                              tensor_ref<T, 2>(qkv + i * W, {R, W}, {3 * W, 1}), stream);
    } else {
        linear_forward<T>(handle, normed, w.qkv.view(), w.qkv_bias.get(), tensor_ref<T, 2>(qkv, {R, 3 * W}), stream);
    }
    const vision::qkv_columns cols = vision::qkv_columns_of(w.layout, W, D);
    const float scale = 1.0f / std::sqrt(static_cast<float>(D));
    for (std::int64_t n = 0; n < N; ++n) {
        const T* base = qkv + n * Tn * 3 * W;
        const device_heads<T> hq{base, Tn, 3 * W, cols.head_stride, cols.q_offset},
            hk{base, Tn, 3 * W, cols.head_stride, cols.k_offset}, hv{base, Tn, 3 * W, cols.head_stride, cols.v_offset};
        dense_attention<T>(handle, hq, hk, hv, heads, D, scale, tensor_ref<T, 2>(attn.ptr(n * Tn), {Tn, W}),
                           s.attention, stream);
    }
    linear_forward<T>(handle, attn, w.out.view(), w.out_bias.get(), proj, stream);
    residual_add<T>(x, proj, stream);

    // MLP half.
    layernorm_forward<T>(x, w.ln2_w.get(), w.ln2_b.get(), config.eps, normed, stream);
    linear_forward<T>(handle, normed, w.fc1.view(), w.fc1_bias.get(), hidden, stream);
    activation_forward<T>(config.act, hidden, hidden, stream);
    linear_forward<T>(handle, hidden, w.fc2.view(), w.fc2_bias.get(), proj, stream);
    residual_add<T>(x, proj, stream);
}

/// Runs contiguous float32 host images (N, C, H, W) through `run` at most max_images at a time:
/// `run(pixels, n)` gets n images copied to the device and returns device rows of T, per_image
/// values for each image, which are copied back and written to out (N · per_image floats) as float32.
template <class T, class Run>
void encode_host_images(tensor_ref<const float, 4> images, float* out, std::int64_t per_image, std::int64_t max_images,
                        device_array<float>& pixels, std::vector<T>& host, Run&& run) {
    const std::int64_t N = images.shape[0], C = images.shape[1], H = images.shape[2], W = images.shape[3];
    const std::int64_t pixels_per_image = C * H * W;
    for (std::int64_t n0 = 0; n0 < N; n0 += max_images) {
        const std::int64_t n = std::min(max_images, N - n0);
        pixels.resize(static_cast<std::size_t>(n * pixels_per_image));
        MMCA_CUDA_CHECK(cudaMemcpy(pixels.data(), images.ptr(n0),
                                   static_cast<std::size_t>(n * pixels_per_image) * sizeof(float), cudaMemcpyHostToDevice));
        const T* rows = run(tensor_ref<const float, 4>(pixels.data(), {n, C, H, W}), n);
        host.resize(static_cast<std::size_t>(n * per_image));
        MMCA_CUDA_CHECK(cudaMemcpy(host.data(), rows, host.size() * sizeof(T), cudaMemcpyDeviceToHost));
        float* dst = out + n0 * per_image;
        for (std::size_t i = 0; i < host.size(); ++i) dst[i] = static_cast<float>(host[i]);
    }
}

/// The QWen-VL ViT on the current device, activations and matrices of T (float, float16 or
/// bfloat16). Built from a host encoder (whose weights and resized tables it copies); the host
/// encoder is not needed afterwards. Not safe to call from two threads at once (it owns scratch).
template <class T = float>
class qwen_vit {
    static_assert(is_storage_type_v<T>, "mmca::cuda::qwen_vit: T must be float, float16 or bfloat16");

public:
    explicit qwen_vit(const vision::qwen_vit& host) : config_(host.config()), handle_(make_model_handle("mmca::cuda::qwen_vit")) {
        const vision::qwen_vit_weights& w = host.weights();
        const std::int64_t W = config_.width, E = config_.output_dim, Q = config_.queries, T_ = config_.tokens();
        patch_embed_ = upload_matrix<T>(w.patch_embed);
        positions_ = upload_table<T>(host.positions(), T_, W);
        ln_pre_w_ = upload_vector(w.ln_pre_w);
        ln_pre_b_ = upload_vector(w.ln_pre_b);
        ln_post_w_ = upload_vector(w.ln_post_w);
        ln_post_b_ = upload_vector(w.ln_post_b);
        blocks_.reserve(w.blocks.size());
        for (const auto& b : w.blocks) blocks_.push_back(upload_encoder_layer<T>(b));

        // The resampler. Its queries' projection depends on the weights only: made here, on the host.
        const vision::attention_pool_weights& p = w.pool;
        std::vector<float> q(static_cast<std::size_t>(Q * E)), qp(q.size());
        nn::layernorm_forward(tensor_ref<const float, 2>(p.query.data(), {Q, E}), p.ln_q_w.data(), p.ln_q_b.data(),
                              config_.eps, tensor_ref<float, 2>(q.data(), {Q, E}));
        for (std::size_t i = 0; i < q.size(); ++i) q[i] += p.q_pos[i];
        const float* in_bias = p.in_proj_bias.empty() ? nullptr : p.in_proj_bias.data();
        nn::linear_forward(tensor_ref<const float, 2>(q.data(), {Q, E}), vision::detail::row_block(p.in_proj, 0, E),
                           in_bias, tensor_ref<float, 2>(qp.data(), {Q, E}));
        pool_queries_ = upload_table<T>(qp, Q, E);
        key_positions_ = upload_table<T>(p.k_pos, T_, E);
        kv_proj_ = upload_matrix<T>(p.kv_proj);
        kv_proj_bias_ = upload_vector(p.kv_proj_bias);
        ln_kv_w_ = upload_vector(p.ln_kv_w);
        ln_kv_b_ = upload_vector(p.ln_kv_b);
        k_proj_ = upload_matrix<T>(vision::detail::row_block(p.in_proj, E, E));
        v_proj_ = upload_matrix<T>(vision::detail::row_block(p.in_proj, 2 * E, E));
        if (in_bias != nullptr) {
            k_bias_ = upload_vector(std::vector<float>(in_bias + E, in_bias + 2 * E));
            v_bias_ = upload_vector(std::vector<float>(in_bias + 2 * E, in_bias + 3 * E));
        }
        out_proj_ = upload_matrix<T>(p.out_proj);
        out_proj_bias_ = upload_vector(p.out_proj_bias);
    }

    const vision::qwen_vit_config& config() const { return config_; }

    /// At most this many images share the work buffers (as on the CPU).
    static constexpr std::int64_t max_images_per_call = vision::qwen_vit::max_images_per_call;

    /// out (N, Q, E) float32 host = encoding of images (N, 3, S, S) float32 host. out contiguous.
    void encode(tensor_ref<const float, 4> images, tensor_ref<float, 3> out) {
        using mmca::detail::to_text;
        const char* where = "mmca::cuda::qwen_vit::encode";
        const std::int64_t S = config_.image_size, Q = config_.queries, E = config_.output_dim;
        MMCA_CHECK_ARG(!images.empty() && images.shape[1] == 3 && images.shape[2] == S && images.shape[3] == S &&
                           images.contiguous(),
                       where, "images", images.empty() ? std::string("no tensor") : images.shape_text(),
                       "contiguous (N, 3, " + to_text(S) + ", " + to_text(S) + ") float32 images");
        const std::int64_t N = images.shape[0];
        MMCA_CHECK_ARG(out.shape[0] == N && out.shape[1] == Q && out.shape[2] == E && out.contiguous(), where, "out",
                       out.shape_text(),
                       "a contiguous (" + to_text(N) + ", " + to_text(Q) + ", " + to_text(E) + ") float32 tensor");
        encode_host_images<T>(images, out.data, Q * E, max_images_per_call, pixels_, host_,
                              [&](tensor_ref<const float, 4> pixels, std::int64_t n) {
                                  encode_device(pixels, n);
                                  return pooled_.data();
                              });
    }

private:
    /// pooled_ (n·Q, E) = the encoding of n images already on the device.
    void encode_device(tensor_ref<const float, 4> pixels, std::int64_t n) {
        const std::int64_t W = config_.width, T_ = config_.tokens(), Q = config_.queries, E = config_.output_dim;
        const std::int64_t R = n * T_;
        x_.resize(static_cast<std::size_t>(R * W));
        const tensor_ref<T, 2> x(x_.data(), {R, W});
        patch_embedding_forward<T>(*handle_, pixels, patch_embed_.view(), config_.patch_size, x, nullptr);
        for (std::int64_t i = 0; i < n; ++i)
            residual_add<T>(tensor_ref<T, 2>(x.ptr(i * T_), {T_, W}), positions_.view(), nullptr, nullptr);
        layernorm_forward<T>(x, ln_pre_w_.get(), ln_pre_b_.get(), config_.eps, x, nullptr);
        const vision::encoder_layer_config block = config_.block_config();
        for (const auto& b : blocks_) encoder_layer_forward<T>(*handle_, x, n, T_, block, b, layer_scratch_, nullptr);

        // Resampler: kv = LN_kv(kv_proj(x)); k = kv + k_pos; kp, vp; attention of the queries per image.
        kv_.resize(static_cast<std::size_t>(R * E));
        k_.resize(kv_.size());
        kp_.resize(kv_.size());
        vp_.resize(kv_.size());
        const tensor_ref<T, 2> kv(kv_.data(), {R, E}), k(k_.data(), {R, E}), kp(kp_.data(), {R, E}),
            vp(vp_.data(), {R, E});
        linear_forward<T>(*handle_, x, kv_proj_.view(), kv_proj_bias_.get(), kv, nullptr);
        layernorm_forward<T>(kv, ln_kv_w_.get(), ln_kv_b_.get(), config_.eps, kv, nullptr);
        MMCA_CUDA_CHECK(cudaMemcpyAsync(k.data, kv.data, static_cast<std::size_t>(R * E) * sizeof(T),
                                        cudaMemcpyDeviceToDevice, nullptr));
        for (std::int64_t i = 0; i < n; ++i)
            residual_add<T>(tensor_ref<T, 2>(k.ptr(i * T_), {T_, E}), key_positions_.view(), nullptr, nullptr);
        linear_forward<T>(*handle_, k, k_proj_.view(), k_bias_.get(), kp, nullptr);
        linear_forward<T>(*handle_, kv, v_proj_.view(), v_bias_.get(), vp, nullptr);
        attn_.resize(static_cast<std::size_t>(n * Q * E));
        pooled_.resize(attn_.size());
        const tensor_ref<T, 2> attn(attn_.data(), {n * Q, E}), pooled(pooled_.data(), {n * Q, E});
        const std::int64_t heads = config_.pool_heads, D = E / heads;
        const float scale = 1.0f / std::sqrt(static_cast<float>(D));
        const device_heads<T> hq{pool_queries_.view().data, Q, E, D, 0};
        for (std::int64_t i = 0; i < n; ++i) {
            const device_heads<T> hk{kp.ptr(i * T_), T_, E, D, 0}, hv{vp.ptr(i * T_), T_, E, D, 0};
            dense_attention<T>(*handle_, hq, hk, hv, heads, D, scale, tensor_ref<T, 2>(attn.ptr(i * Q), {Q, E}),
                               layer_scratch_.attention, nullptr);
        }
        linear_forward<T>(*handle_, attn, out_proj_.view(), out_proj_bias_.get(), pooled, nullptr);
        layernorm_forward<T>(pooled, ln_post_w_.get(), ln_post_b_.get(), config_.eps, pooled, nullptr);
    }

    vision::qwen_vit_config config_;
    std::unique_ptr<cublas_handle> handle_;
    device_matrix<T> patch_embed_, positions_, pool_queries_, key_positions_, kv_proj_, k_proj_, v_proj_, out_proj_;
    device_vector ln_pre_w_, ln_pre_b_, ln_post_w_, ln_post_b_, kv_proj_bias_, ln_kv_w_, ln_kv_b_, k_bias_, v_bias_,
        out_proj_bias_;
    std::vector<device_encoder_layer<T>> blocks_;
    encoder_layer_scratch<T> layer_scratch_;
    device_array<float> pixels_;
    device_array<T> x_, kv_, k_, kp_, vp_, attn_, pooled_;
    std::vector<T> host_;
};

/// The CLIP vision tower (HF CLIPVisionModel) on the current device, activations and matrices of T
/// (float, float16 or bfloat16). Built from a host encoder, whose weights it copies; the host encoder
/// is not needed afterwards. Not safe to call from two threads at once (it owns scratch).
template <class T = float>
class clip_vit {
    static_assert(is_storage_type_v<T>, "mmca::cuda::clip_vit: T must be float, float16 or bfloat16");

public:
    explicit clip_vit(const vision::clip_vit& host)
        : config_(host.config()), layers_run_{host.layers_run(vision::clip_output::last_hidden_state),
                                              host.layers_run(vision::clip_output::penultimate)},
          handle_(make_model_handle("mmca::cuda::clip_vit")) {
        const vision::clip_vit_weights& w = host.weights();
        const std::int64_t W = config_.hidden_size, T_ = config_.tokens();
        patch_embed_ = upload_matrix<T>(w.patch_embed);
        // Row 0 of every image is the class embedding: folded into the position table (in float32,
        // as the host adds them), so that the embedding rows are patches, a zero row, + one table.
        std::vector<float> table = w.position_embedding;
        for (std::size_t d = 0; d < static_cast<std::size_t>(W); ++d) table[d] += w.class_embedding[d];
        positions_ = upload_table<T>(table, T_, W);
        pre_ln_w_ = upload_vector(w.pre_ln_w);
        pre_ln_b_ = upload_vector(w.pre_ln_b);
        layers_.reserve(w.layers.size());
        for (const auto& l : w.layers) layers_.push_back(upload_encoder_layer<T>(l));
    }

    const vision::clip_vit_config& config() const { return config_; }

    /// Images that go through the layers together (the work buffers hold this many).
    static constexpr std::int64_t max_images_per_call = 8;

    /// Layers run for `which`: L for the last hidden state, L - 1 for the penultimate one.
    std::int64_t layers_run(vision::clip_output which) const {
        return which == vision::clip_output::penultimate ? layers_run_[1] : layers_run_[0];
    }

    /// out (N, 1 + G², W) float32 host = hidden state `which` of images (N, C, S, S) float32 host.
    void encode(tensor_ref<const float, 4> images, tensor_ref<float, 3> out,
                vision::clip_output which = vision::clip_output::last_hidden_state) {
        using mmca::detail::to_text;
        const char* where = "mmca::cuda::clip_vit::encode";
        const std::int64_t S = config_.image_size, C = config_.num_channels, T_ = config_.tokens(),
                           W = config_.hidden_size;
        MMCA_CHECK_ARG(!images.empty() && images.shape[1] == C && images.shape[2] == S && images.shape[3] == S &&
                           images.contiguous(),
                       where, "images", images.empty() ? std::string("no tensor") : images.shape_text(),
                       "contiguous (N, " + to_text(C) + ", " + to_text(S) + ", " + to_text(S) + ") float32 images");
        const std::int64_t N = images.shape[0];
        MMCA_CHECK_ARG(out.shape[0] == N && out.shape[1] == T_ && out.shape[2] == W && out.contiguous(), where, "out",
                       out.shape_text(),
                       "a contiguous (" + to_text(N) + ", " + to_text(T_) + ", " + to_text(W) + ") float32 tensor");
        const std::int64_t layers = layers_run(which);
        encode_host_images<T>(images, out.data, T_ * W, max_images_per_call, pixels_, host_,
                              [&](tensor_ref<const float, 4> pixels, std::int64_t n) {
                                  encode_device(pixels, n, layers);
                                  return x_.data();
                              });
    }

private:
    /// x_ (n·(1 + G²), W) = the hidden state after `layers` layers of n images already on the device.
    void encode_device(tensor_ref<const float, 4> pixels, std::int64_t n, std::int64_t layers) {
        const std::int64_t W = config_.hidden_size, T_ = config_.tokens(), G2 = T_ - 1;
        patches_.resize(static_cast<std::size_t>(n * G2 * W));
        x_.resize(static_cast<std::size_t>(n * T_ * W));
        patch_embedding_forward<T>(*handle_, pixels, patch_embed_.view(), config_.patch_size,
                                   tensor_ref<T, 2>(patches_.data(), {n * G2, W}), nullptr);
        // Image i's patch rows go to rows i·T + 1 .. of x; its row i·T (the class row) is zeroed.
        const std::size_t row = static_cast<std::size_t>(W) * sizeof(T);
        MMCA_CUDA_CHECK(cudaMemcpy2DAsync(x_.data() + W, T_ * row, patches_.data(), G2 * row, G2 * row,
                                          static_cast<std::size_t>(n), cudaMemcpyDeviceToDevice, nullptr));
        MMCA_CUDA_CHECK(cudaMemset2DAsync(x_.data(), T_ * row, 0, row, static_cast<std::size_t>(n), nullptr));
        const tensor_ref<T, 2> x(x_.data(), {n * T_, W});
        for (std::int64_t i = 0; i < n; ++i)
            residual_add<T>(tensor_ref<T, 2>(x.ptr(i * T_), {T_, W}), positions_.view(), nullptr, nullptr);
        layernorm_forward<T>(x, pre_ln_w_.get(), pre_ln_b_.get(), config_.layer_norm_eps, x, nullptr);
        const vision::encoder_layer_config layer = config_.layer_config();
        for (std::int64_t l = 0; l < layers; ++l)
            encoder_layer_forward<T>(*handle_, x, n, T_, layer, layers_[static_cast<std::size_t>(l)], layer_scratch_,
                                     nullptr);
    }

    vision::clip_vit_config config_;
    std::int64_t layers_run_[2];  // last hidden state, penultimate
    std::unique_ptr<cublas_handle> handle_;
    device_matrix<T> patch_embed_, positions_;
    device_vector pre_ln_w_, pre_ln_b_;
    std::vector<device_encoder_layer<T>> layers_;
    encoder_layer_scratch<T> layer_scratch_;
    device_array<float> pixels_;
    device_array<T> patches_, x_;
    std::vector<T> host_;
};

/// A vision tower whose encoder (QWen-VL or CLIP) runs on the device (as T) and whose projector runs
/// on the host. Built from the host tower that a checkpoint loads (mmca::load_vision_tower), which
/// it keeps for its projector.
template <class T = float>
class encoder_projector_tower : public vision_tower {
public:
    explicit encoder_projector_tower(std::unique_ptr<mmca::encoder_projector_tower> host) : host_(std::move(host)) {
        MMCA_CHECK_ARG(host_ != nullptr, "mmca::cuda::encoder_projector_tower", "host", "no tower",
                       "the host encoder + projector tower of a checkpoint");
        if (host_->qwen()) vit_ = std::make_unique<qwen_vit<T>>(*host_->qwen());
        if (host_->clip()) clip_ = std::make_unique<clip_vit<T>>(*host_->clip());
    }

    /// True when the encoder runs on the device (both QWen-VL and CLIP do).
    bool encoder_on_device() const { return vit_ != nullptr || clip_ != nullptr; }
    mmca::encoder_projector_tower& host() { return *host_; }
    const mmca::encoder_projector_tower& host() const { return *host_; }

    std::int64_t image_size() const override { return host_->image_size(); }
    std::int64_t tokens_per_image() const override { return host_->tokens_per_image(); }
    std::int64_t width() const override { return host_->width(); }

    void embed(tensor_ref<const float, 4> images, tensor_ref<float, 3> out, int num_threads) override {
        if (!vit_ && !clip_) return host_->embed(images, out, num_threads);
        const std::int64_t N = images.shape[0], Tn = host_->encoder_tokens(), Dv = host_->encoder_width();
        features_.resize(static_cast<std::size_t>(N * Tn * Dv));
        tensor_ref<float, 3> f(features_.data(), {N, Tn, Dv});
        if (vit_)
            vit_->encode(images, f);
        else
            clip_->encode(images, f, host_->clip_layer());
        host_->mutable_projector().project(f, out, num_threads);
    }

private:
    std::unique_ptr<mmca::encoder_projector_tower> host_;
    std::unique_ptr<qwen_vit<T>> vit_;
    std::unique_ptr<clip_vit<T>> clip_;
    std::vector<float> features_;
};

}  // namespace cuda
}  // namespace mmca
