// python/src/visual_chat_binding.hpp - what mmca.VisualChatModel (CPU, module _core) and
// mmca.cuda.VisualChatModel (GPU, module _cuda) share: image and token arguments, the inference
// methods (embed_images, forward, append, chat, reset) and their docstrings.
//
// The methods are templates over the Python object, which provides
//   python_name  its Python name ("mmca.VisualChatModel"), for error messages;
//   visit(f)     calls f(model) on the mmca::basic_visual_chat_model it holds (no lock);
//   locked(f)    the same under the object's mutex (calls that use the caches).
// Follows docs/python.md: images are read in place, the GIL is released around model calls.
#pragma once

#include "array_args.hpp"
#include "bindings.hpp"

#include "mmca/model/visual_chat.hpp"
#include "mmca/model/visual_chat_loader.hpp"
#include "mmca/nn/activation.hpp"
#include "mmca/vision/clip_vit.hpp"

#include <pybind11/functional.h>
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace mmca::python {

namespace py = pybind11;

/// The load options of a VisualChatModel constructor's arguments (see its docstring).
inline mmca::visual_chat_load_options parse_visual_chat_load(
    const char* where, const std::string& config, const std::string& variant, const std::optional<std::string>& policy,
    std::int64_t batch, std::int64_t context, std::int32_t image_token_id, std::int64_t max_images,
    const std::string& image_order, std::int64_t image_cache, const std::string& clip_layer, std::int64_t image_size,
    std::int64_t vision_heads, std::int64_t pool_heads, std::int64_t projector_heads, std::int64_t projector_layer_heads,
    const std::string& projector_act, int num_threads) {
    mmca::visual_chat_load_options load;
    load.config_path = config;
    if (image_size < 0 || vision_heads < 0 || pool_heads < 0 || projector_heads < 0 || projector_layer_heads < 0)
        raise_value_error(where, "image_size / heads",
                          std::to_string(image_size) + " / " + std::to_string(vision_heads) + ", " +
                              std::to_string(pool_heads) + ", " + std::to_string(projector_heads) + ", " +
                              std::to_string(projector_layer_heads),
                          "counts >= 0 (0: the default)");
    if (image_size > 0) load.qwen.image_size = image_size;
    if (vision_heads > 0) load.qwen.heads = load.clip.num_heads = vision_heads;
    if (pool_heads > 0) load.qwen.pool_heads = pool_heads;
    load.projector.heads = projector_heads;
    if (projector_layer_heads > 0) load.projector.layer.heads = projector_layer_heads;
    load.projector.layer.act = rethrow_as(where, [&] { return mmca::nn::parse_activation(projector_act); });
    load.clip_layer = rethrow_as(where, [&] { return mmca::vision::parse_clip_output(clip_layer); });
    auto& o = load.options;
    o.language.batch = batch;
    o.language.context = context;
    o.language.attention = parse_attention_options(where, variant, policy, std::nullopt, num_threads);
    o.language.num_threads = num_threads;
    o.image_token_id = image_token_id;
    o.max_images = max_images;
    o.image_cache_capacity = image_cache;
    if (image_order == "in_order")
        o.order = mmca::image_order::in_order;
    else if (image_order == "reverse")
        o.order = mmca::image_order::reverse;
    else
        raise_value_error(where, "image_order", "'" + image_order + "'", "'in_order' (SPEC §6) or 'reverse' (the reference code)");
    return load;
}

/// An (n, 3, S, S) float32 image batch (or None: no images), read in place.
inline std::pair<std::optional<py::array>, mmca::tensor_ref<const float, 4>> image_batch(py::handle obj, const char* where,
                                                                                 const char* name) {
    if (obj.is_none()) return {std::nullopt, {}};
    py::array a = require_tensor(obj, {where, name, 4, "(n, 3, S, S)"}, py::dtype::of<float>(), "float32");
    return {a, tensor_view<const float, 4>(a)};
}

inline std::vector<std::int32_t> token_list(py::handle obj, const char* where, const char* name) {
    py::array a = integer_metadata<std::int32_t>(obj, {where, name, 1, "(L,)"}, "an int32 token id");
    const auto* p = static_cast<const std::int32_t*>(a.data());
    return std::vector<std::int32_t>(p, p + a.size());
}

template <class Object>
py::array visual_chat_embed_images(Object& self, py::handle images) {
    const std::string w = std::string(Object::python_name) + ".embed_images";
    const char* where = w.c_str();
    auto [keep, view] = image_batch(images, where, "images");
    if (!keep) raise_type_error(where, "images", "None", "a float32 (n, 3, S, S) array");
    const auto [T, H] = self.visit([](auto& m) { return std::make_pair(m.tower().tokens_per_image(), m.tower().width()); });
    const std::int64_t n = view.shape[0];
    py::array_t<float> out({static_cast<py::ssize_t>(n), static_cast<py::ssize_t>(T), static_cast<py::ssize_t>(H)});
    mmca::tensor_ref<float, 3> o(out.mutable_data(), {n, T, H});
    py::gil_scoped_release release;
    self.locked([&](auto& m) { m.embed_images(view, o); });
    return out;
}

/// The batch samples of forward-style arguments (ids, images, labels lists), with the arrays kept alive.
inline std::vector<mmca::visual_sample> samples_of(const char* where, py::list ids, py::object images, py::object labels,
                                            std::vector<py::array>& keep) {
    const std::size_t B = py::len(ids);
    if (!images.is_none() && py::len(images) != B)
        raise_value_error(where, "images", std::to_string(py::len(images)) + " entries",
                          std::to_string(B) + " (one (n, 3, S, S) array or None per sequence)");
    if (!labels.is_none() && py::len(labels) != B)
        raise_value_error(where, "labels", std::to_string(py::len(labels)) + " entries",
                          std::to_string(B) + " (one label sequence per sequence)");
    std::vector<mmca::visual_sample> samples(B);
    for (std::size_t b = 0; b < B; ++b) {
        samples[b].ids = token_list(ids[b], where, "ids");
        if (!labels.is_none()) samples[b].labels = token_list(py::list(labels)[b], where, "labels");
        if (!images.is_none()) {
            auto [a, view] = image_batch(py::list(images)[b], where, "images");
            if (a) keep.push_back(*a);
            samples[b].images = view;
        }
    }
    return samples;
}

template <class Object>
py::dict visual_chat_forward(Object& self, py::list ids, py::object images, py::object labels) {
    const std::string w = std::string(Object::python_name) + ".forward";
    const char* where = w.c_str();
    std::vector<py::array> keep;
    const auto samples = samples_of(where, ids, images, labels, keep);
    const std::size_t B = samples.size();
    std::vector<float> logits;
    std::int64_t L = 0;
    mmca::loss_result loss;
    std::vector<mmca::spliced_sequence> seqs;
    std::int64_t Bm = 0, V = 0;
    {
        py::gil_scoped_release release;
        self.locked([&](auto& m) {
            seqs = m.forward(samples, logits, L, &loss);
            Bm = m.language().batch();
            V = m.language().config().vocab_size;
        });
    }
    const std::int64_t Lr = std::max<std::int64_t>(L, 1);
    py::array_t<float> out({static_cast<py::ssize_t>(B), static_cast<py::ssize_t>(Lr), static_cast<py::ssize_t>(V)});
    std::copy_n(logits.data(), static_cast<std::size_t>(B) * Lr * V, out.mutable_data());
    (void)Bm;
    py::array_t<std::int8_t> types({static_cast<py::ssize_t>(B), static_cast<py::ssize_t>(Lr)});
    py::array_t<std::int32_t> image_ids({static_cast<py::ssize_t>(B), static_cast<py::ssize_t>(Lr)});
    py::array_t<std::int32_t> lab({static_cast<py::ssize_t>(B), static_cast<py::ssize_t>(Lr)});
    std::fill_n(types.mutable_data(), B * Lr, std::int8_t{0});
    std::fill_n(image_ids.mutable_data(), B * Lr, -1);
    std::fill_n(lab.mutable_data(), B * Lr, mmca::ignore_label);
    py::list lengths;
    for (std::size_t b = 0; b < B; ++b) {
        const auto& s = seqs[b];
        std::copy(s.types.begin(), s.types.end(), types.mutable_data() + b * Lr);
        std::copy(s.image_ids.begin(), s.image_ids.end(), image_ids.mutable_data() + b * Lr);
        std::copy(s.labels.begin(), s.labels.end(), lab.mutable_data() + b * Lr);
        lengths.append(s.length());
    }
    py::dict d;
    d["logits"] = out;
    d["loss"] = loss.mean();
    d["count"] = loss.count;
    d["lengths"] = lengths;
    d["token_types"] = types;
    d["image_ids"] = image_ids;
    d["labels"] = lab;
    return d;
}

template <class Object>
py::array visual_chat_append(Object& self, py::handle ids, py::object images) {
    const std::string w = std::string(Object::python_name) + ".append";
    const char* where = w.c_str();
    const auto t = token_list(ids, where, "ids");
    auto [keep, view] = image_batch(images, where, "images");
    const std::int64_t V = self.visit([](auto& m) { return m.language().config().vocab_size; });
    py::array_t<float> out(static_cast<py::ssize_t>(V));
    float* o = out.mutable_data();
    py::gil_scoped_release release;
    self.locked([&](auto& m) { m.append(t, view, o); });
    return out;
}

template <class Object>
py::tuple visual_chat_round(Object& self, py::handle ids, py::object images, std::int64_t max_new_tokens,
                     float temperature, std::int64_t top_k, float top_p, float repetition_penalty, std::uint64_t seed,
                     const std::optional<std::vector<std::int32_t>>& eos_ids,
                     const std::optional<std::function<py::object(std::int32_t)>>& on_token) {
    const std::string w = std::string(Object::python_name) + ".chat";
    const char* where = w.c_str();
    const auto t = token_list(ids, where, "ids");
    auto [keep, view] = image_batch(images, where, "images");
    const mmca::generation_options g =
        parse_generation_options(where, max_new_tokens, temperature, top_k, top_p, repetition_penalty, seed, eos_ids);
    std::function<bool(std::int32_t)> stream;
    if (on_token) {
        // The callback runs Python: take the GIL for it; a Python exception ends the round and is re-raised.
        stream = [&](std::int32_t id) {
            py::gil_scoped_acquire acquire;
            return (*on_token)(id).ptr() != Py_False;  // only an explicit False stops
        };
    }
    mmca::generation_result r;
    {
        py::gil_scoped_release release;
        r = self.locked([&](auto& m) { return m.round(t, view, g, stream); });
    }
    return py::make_tuple(py::cast(r.tokens), mmca::to_string(r.reason));
}

/// Defines the properties (image_size, tokens_per_image, hidden_size, vocab_size, batch, context,
/// image_token_id, images_embedded, cached_images, images_in_context, length) and the inference
/// methods (embed_images, forward, append, chat, reset, clear_image_cache) on a VisualChatModel class.
template <class Object>
void def_visual_chat_inference(py::class_<Object>& cls) {
    cls.def_property_readonly("image_size", [](Object& s) { return s.visit([](auto& m) { return m.tower().image_size(); }); })
        .def_property_readonly("tokens_per_image",
                               [](Object& s) { return s.visit([](auto& m) { return m.tower().tokens_per_image(); }); })
        .def_property_readonly("hidden_size", [](Object& s) {
            return s.visit([](auto& m) { return m.language().config().hidden_size; });
        })
        .def_property_readonly("vocab_size", [](Object& s) {
            return s.visit([](auto& m) { return m.language().config().vocab_size; });
        })
        .def_property_readonly("batch", [](Object& s) { return s.visit([](auto& m) { return m.language().batch(); }); })
        .def_property_readonly("context", [](Object& s) { return s.visit([](auto& m) { return m.language().context(); }); })
        .def_property_readonly("image_token_id",
                               [](Object& s) { return s.visit([](auto& m) { return m.options().image_token_id; }); })
        .def_property_readonly("images_embedded", [](Object& s) { return s.locked([](auto& m) { return m.images_embedded(); }); },
                               "Images run through the vision tower so far (cache hits do not count).")
        .def_property_readonly("cached_images", [](Object& s) { return s.locked([](auto& m) { return m.cached_images(); }); })
        .def_property_readonly("images_in_context", [](Object& s) { return s.locked([](auto& m) { return m.images_in_context(0); }); })
        .def_property_readonly("length", [](Object& s) { return s.locked([](auto& m) { return m.language().length(0); }); },
                               "Tokens cached for sequence 0 (after splicing).")
        .def("embed_images", &visual_chat_embed_images<Object>, py::arg("images"),
             "(n, T, H) float32: the projector's rows of each image (cached by content).")
        .def("forward", &visual_chat_forward<Object>, py::arg("ids"), py::arg("images") = py::none(), py::arg("labels") = py::none(),
             R"doc(Runs up to `batch` sequences from scratch (the cache is cleared first).
ids: a list of token-id sequences; images: a list of (n_b, 3, S, S) float32 arrays or None per
sequence (or None); labels: a list of label sequences (-100: not supervised) or None. Returns a dict:
logits (B, L, V) float32 over the spliced sequences (L the longest), loss (mean shifted
cross-entropy; 0.0 when nothing is supervised), count, lengths, token_types, image_ids, labels.)doc")
        .def("append", &visual_chat_append<Object>, py::arg("ids"), py::arg("images") = py::none(),
             "Appends ids (with placeholders) and their images to the cache; returns the last token's logits (V,).")
        .def("chat", &visual_chat_round<Object>, py::arg("ids"), py::arg("images") = py::none(), py::kw_only(),
             py::arg("max_new_tokens") = 128, py::arg("temperature") = 0.0f, py::arg("top_k") = 0, py::arg("top_p") = 1.0f,
             py::arg("repetition_penalty") = 1.0f, py::arg("seed") = 0, py::arg("eos_ids") = py::none(),
             py::arg("on_token") = py::none(),
             R"doc(One chat round on the cache: prefills ids and images after the conversation so far, then
generates. on_token(id) is called for each new token (returning False stops; None goes on). Returns (tokens, reason).)doc")
        .def("reset", [](Object& s) { s.locked([](auto& m) { m.reset(); }); },
             "Forgets the conversation (the image cache stays).")
        .def("clear_image_cache", [](Object& s) { s.locked([](auto& m) { m.clear_image_cache(); }); });
}

}  // namespace mmca::python
