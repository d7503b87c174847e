// mmca/backend/cuda/library.hpp - the CUDA attention for code that is not compiled with nvcc.
//
// Plain C++ (no CUDA header): declarations of the compiled library mmca::cuda (CMake target
// mmca_cuda, built from library.cu beside this header when CUDA is enabled), which holds the
// instantiations of the CUDA templates for float32, float16 and bfloat16. Tensors are described by
// device_view (a device pointer, an element type, shape and strides in elements); the token layout
// and options are the CPU API's. Same validation and error messages as the templates
// (mmca::invalid_argument); mmca::cuda::lib::runtime_error for a failed CUDA call.
//
//   mmca::cuda::lib::attention_forward(q, k, v, tokens, options, out, stream, &stats)
//   mmca::cuda::lib::attention_backward(q, k, v, dout, tokens, options, stats, dq, dk, dv, stream)
//   mmca::cuda::lib::llama_model model(config, weights, options, element::bfloat16);   // the decoder
//   auto chat = mmca::cuda::lib::load_visual_chat_model(path, load, element::bfloat16); // the whole model
//   mmca::cuda::lib::qwen_vit vit(host_encoder, element::float16); vit.encode(images, out); // one encoder
#pragma once

#include "mmca/attention/stats.hpp"
#include "mmca/attention/types.hpp"
#include "mmca/backend/cuda/backward_kernel.hpp"
#include "mmca/core/tensor.hpp"
#include "mmca/language/config.hpp"
#include "mmca/language/model.hpp"
#include "mmca/language/weights.hpp"
#include "mmca/model/visual_chat.hpp"
#include "mmca/model/visual_chat_loader.hpp"
#include "mmca/vision/clip_vit.hpp"
#include "mmca/vision/qwen_vit.hpp"

#include <array>
#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

namespace mmca {
namespace cuda {
namespace lib {

/// Element type of a device tensor.
enum class element : std::uint8_t { float32, float16, bfloat16 };

inline const char* to_string(element e) {
    switch (e) {
        case element::float32: return "float32";
        case element::float16: return "float16";
        case element::bfloat16: return "bfloat16";
    }
    return "unknown";
}

/// A (B, H, L, D) tensor in device memory (strides in elements; the last dimension contiguous).
struct device_view {
    void* data = nullptr;
    element type = element::float32;
    std::array<std::int64_t, 4> shape{};
    std::array<std::int64_t, 4> strides{};

    /// A row-major view.
    static device_view contiguous(void* data, element type, const std::array<std::int64_t, 4>& shape) {
        device_view v;
        v.data = data;
        v.type = type;
        v.shape = shape;
        v.strides = {shape[1] * shape[2] * shape[3], shape[2] * shape[3], shape[3], 1};
        return v;
    }
};

/// A CUDA runtime call failed (the message names the call and the CUDA error).
class runtime_error : public std::runtime_error {
public:
    using std::runtime_error::runtime_error;
};

/// True when a CUDA device is usable (never throws).
bool device_available() noexcept;
/// "NVIDIA H200 (sm_90, 132 SMs)", or "" without a device.
std::string device_description();
/// Waits for the work queued on `stream` (a cudaStream_t; null: the legacy default stream).
void synchronize(void* stream = nullptr);

/// The fused attention forward of every variant (mmca::cuda::attention_forward); with stats (device
/// float32, contiguous), also the statistics for the backward. q, k, v and out share one element type.
void attention_forward(const device_view& q, const device_view& k, const device_view& v, const token_layout& tokens,
                       const attention_options& options, const device_view& out, void* stream = nullptr,
                       const attention_stats* stats = nullptr);

/// The attention backward (mmca::cuda::attention_backward): dq, dk, dv from dout and the stats that
/// attention_forward wrote for the same inputs; `kernel` as attention_backward_config::kernel.
void attention_backward(const device_view& q, const device_view& k, const device_view& v, const device_view& dout,
                        const token_layout& tokens, const attention_options& options,
                        const attention_stats_view& stats, const device_view& dq, const device_view& dk,
                        const device_view& dv, void* stream = nullptr,
                        backward_kernel kernel = backward_kernel::automatic);

/// The LLaMa-2 decoder on the current device (mmca::cuda::llama_model<T>, mmca/backend/cuda/
/// llama_backend.cuh) with its element type chosen at run time. Same calls and checks as
/// mmca::llama_model; the tensors passed here are host memory (embeddings and logits float32), the
/// weights, activations and KV caches live on the device. Not safe to call from two threads at once.
class llama_model {
public:
    /// Copies the weights to the device as `type` (float32, float16 or bfloat16).
    llama_model(const llama_config& config, const llama_weights& weights, const llama_model_options& options,
                element type);
    llama_model(llama_model&&) noexcept;
    llama_model& operator=(llama_model&&) noexcept;
    ~llama_model();

    element type() const;
    const llama_config& config() const;
    const llama_model_options& options() const;
    std::int64_t batch() const;
    std::int64_t context() const;
    std::int64_t length(std::int64_t b = 0) const;
    void reset();
    void set_attention(const attention_options& a);

    void forward(tensor_ref<const float, 3> embeddings, tensor_ref<const std::int8_t, 2> types,
                 tensor_ref<const std::int32_t, 2> image_ids, tensor_ref<const std::int32_t, 1> lens,
                 tensor_ref<float, 3> logits, logits_mode mode = logits_mode::all);
    void forward_tokens(tensor_ref<const std::int32_t, 2> ids, tensor_ref<const std::int32_t, 1> lens,
                        tensor_ref<float, 3> logits, logits_mode mode = logits_mode::all);
    /// Token embeddings (on the host, from the host weights): out (N, H) for ids[0..n).
    void embed(const std::int32_t* ids, std::int64_t n, tensor_ref<float, 2> out) const;

    struct impl;

private:
    std::unique_ptr<impl> impl_;
};

/// The QWen-VL ViT on the current device (mmca::cuda::qwen_vit<T>, mmca/backend/cuda/vision.cuh)
/// with its element type chosen at run time. Built from a host encoder, whose weights it copies (the
/// host encoder is not needed afterwards). Images and features are host float32 tensors, as for
/// mmca::vision::qwen_vit::encode. Not safe to call from two threads at once.
class qwen_vit {
public:
    qwen_vit(const vision::qwen_vit& host, element type);
    qwen_vit(qwen_vit&&) noexcept;
    qwen_vit& operator=(qwen_vit&&) noexcept;
    ~qwen_vit();

    element type() const;
    const vision::qwen_vit_config& config() const;
    /// out (N, Q, E) = the features of images (N, 3, S, S); both contiguous.
    void encode(tensor_ref<const float, 4> images, tensor_ref<float, 3> out);

    struct impl;

private:
    std::unique_ptr<impl> impl_;
};

/// The CLIP vision tower on the current device (mmca::cuda::clip_vit<T>), element type chosen at
/// run time; as qwen_vit, for mmca::vision::clip_vit.
class clip_vit {
public:
    clip_vit(const vision::clip_vit& host, element type);
    clip_vit(clip_vit&&) noexcept;
    clip_vit& operator=(clip_vit&&) noexcept;
    ~clip_vit();

    element type() const;
    const vision::clip_vit_config& config() const;
    /// out (N, 1 + G², W) = hidden state `which` of images (N, C, S, S); both contiguous.
    void encode(tensor_ref<const float, 4> images, tensor_ref<float, 3> out,
                vision::clip_output which = vision::clip_output::last_hidden_state);

    struct impl;

private:
    std::unique_ptr<impl> impl_;
};

/// The visual-chat model with its decoder on the device (mmca::cuda::visual_chat_model<T>, element
/// type chosen at run time): mmca::basic_visual_chat_model over lib::llama_model, whose tower runs its
/// vision encoder (QWen-VL or CLIP) on the device and the projector on the host.
using visual_chat_model = basic_visual_chat_model<llama_model>;

/// A ready visual-chat model from a reference-named checkpoint (mmca::load_visual_chat_model's
/// checkpoint and options), decoder and encoder copied to the device as `type`.
std::unique_ptr<visual_chat_model> load_visual_chat_model(const std::string& path, const visual_chat_load_options& load,
                                                          element type);

/// True when the model's vision encoder runs on the device (QWen-VL and CLIP encoders both do), false
/// when the tower is not one that load_visual_chat_model made.
bool encoder_on_device(const visual_chat_model& model);

}  // namespace lib
}  // namespace cuda
}  // namespace mmca
