// python/src/bindings.hpp - the parts of the private extension module mmca._core.
#pragma once

#include <pybind11/pybind11.h>

namespace mmca::python {

/// mmca.attention (attention_bindings.cpp).
void register_attention(pybind11::module_& m);

/// mmca.attention_with_stats, mmca.attention_backward (bind_attention_backward.cpp).
void register_attention_backward(pybind11::module_& m);

/// mmca.KVCache (kv_cache_bindings.cpp).
void register_kv_cache(pybind11::module_& m);

/// mmca.LlamaModel, mmca.SafetensorsFile, presets and memory estimates (bind_llama.cpp).
void bind_llama(pybind11::module_& m);

/// mmca.Tokenizer, mmca.render_conversation, mmca.tokenize_conversation, mmca.blend (bind_text.cpp).
void register_text(pybind11::module_& m);

/// mmca.load_image, decode_image, resize_image, preprocess_image, image_hash, image presets (bind_image.cpp).
void register_image(pybind11::module_& m);

/// mmca.Projector (bind_projector.cpp).
void register_projector(pybind11::module_& m);

/// mmca.VisualChatModel (bind_visual_chat.cpp).
void register_visual_chat(pybind11::module_& m);

/// mmca.QwenViT, mmca.ClipViT, mmca.clip_vit_preset (bind_vision.cpp).
void register_vision(pybind11::module_& m);

/// mmca.grad: backward passes of the trainable path (bind_grad.cpp).
void register_grad(pybind11::module_& m);

/// mmca.AdamW, lr_schedule, clip_grad_norm, save_safetensors, save/load_train_state (bind_train.cpp).
void register_train(pybind11::module_& m);

/// mmca.synthetic_sample (bind_data.cpp).
void register_data(pybind11::module_& m);
/// mmca.Trainer, mmca.ConversationData (bind_trainer.cpp).
void register_trainer(pybind11::module_& m);

}  // namespace mmca::python
