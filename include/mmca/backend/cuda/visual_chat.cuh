// mmca/backend/cuda/visual_chat.cuh - the visual-chat model on a GPU.
//
//   auto model = mmca::cuda::load_visual_chat_model<mmca::bfloat16>("dsvl-checkpoint/", load);
//   model->round(ids, images, generation, on_token);               // as the CPU model
//
// mmca::cuda::visual_chat_model<T> is mmca::basic_visual_chat_model (mmca/model/visual_chat.hpp)
// over the GPU decoder mmca::cuda::llama_model<T>: the splice, the image cache, the batch forward
// with its loss and the chat rounds are the CPU model's code. Its tower is
// mmca::cuda::encoder_projector_tower<T> (vision.cuh): a QWen-VL encoder on the device, the
// projector on the host. Images, token ids and logits stay host arrays (float32 pixels and logits).
// Training (the backward through the decoder) is the CPU model's (mmca/model/visual_chat_train.hpp).
#pragma once

#include "mmca/backend/cuda/llama_backend.cuh"
#include "mmca/backend/cuda/vision.cuh"
#include "mmca/model/visual_chat.hpp"
#include "mmca/model/visual_chat_loader.hpp"

#include <memory>
#include <string>
#include <utility>

namespace mmca {
namespace cuda {

/// The visual-chat model with the decoder (activations, weights, KV caches) on the device as T.
template <class T = float>
using visual_chat_model = basic_visual_chat_model<llama_model<T>>;

/// A ready GPU visual-chat model from a reference-named checkpoint (mmca::load_visual_chat_model's
/// checkpoint and options): the decoder and a QWen-VL encoder copied to the device as T.
template <class T = float>
std::unique_ptr<visual_chat_model<T>> load_visual_chat_model(const std::string& path,
                                                             const visual_chat_load_options& load = {}) {
    visual_chat_parts parts = load_visual_chat_parts(path, load);
    auto tower = std::make_unique<encoder_projector_tower<T>>(std::move(parts.tower));
    return std::make_unique<visual_chat_model<T>>(std::move(tower), std::move(parts.config), std::move(parts.weights),
                                                  load.options);
}

}  // namespace cuda
}  // namespace mmca
