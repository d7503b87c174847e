// python/src/llama_binding.hpp - what mmca.LlamaModel (CPU, module _core) and mmca.cuda.LlamaModel
// (GPU, module _cuda) share: argument parsing, the inference methods and their docstrings.
//
// The methods are templates over the Python object, which provides
//   visit(f)   calls f(holder) on the model holder (no lock: for immutable properties);
//   locked(f)  the same under the object's mutex (calls that use the caches);
// and whose holder has `model` (a basic_llama_model or mmca::cuda::lib::llama_model: forward,
// forward_tokens, config, batch, context, length) and `chat` (a basic_generator over it).
// Follows docs/python.md: tensors cross as views, the GIL is released around model calls.
#pragma once

#include "array_args.hpp"

#include "mmca/language/config.hpp"
#include "mmca/language/generation.hpp"
#include "mmca/language/model.hpp"

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace mmca::python {

namespace py = pybind11;

inline py::dict config_to_dict(const mmca::llama_config& c) {
    py::dict d;
    d["vocab_size"] = c.vocab_size;
    d["hidden_size"] = c.hidden_size;
    d["intermediate_size"] = c.intermediate_size;
    d["num_hidden_layers"] = c.num_layers;
    d["num_attention_heads"] = c.num_heads;
    d["num_key_value_heads"] = c.num_kv_heads;
    d["head_dim"] = c.head_dim();
    d["max_position_embeddings"] = c.max_positions;
    d["rms_norm_eps"] = c.rms_norm_eps;
    d["rope_theta"] = c.rope_theta;
    if (c.rope_scaling == mmca::nn::rope_scaling_type::none)
        d["rope_scaling"] = py::none();
    else {
        py::dict s;
        s["type"] = mmca::nn::to_string(c.rope_scaling);
        s["factor"] = c.rope_factor;
        d["rope_scaling"] = s;
    }
    d["bos_token_id"] = c.bos_token_id;
    d["eos_token_id"] = c.eos_token_id;
    d["tie_word_embeddings"] = c.tie_word_embeddings;
    d["cross_attention_every"] = c.cross_attention_every;
    d["cross_attention_intermediate"] = c.cross_attention_intermediate;
    return d;
}

inline mmca::logits_mode parse_logits(const char* where, const std::string& s) {
    if (s == "all") return mmca::logits_mode::all;
    if (s == "last") return mmca::logits_mode::last;
    if (s == "none") return mmca::logits_mode::none;
    raise_value_error(where, "logits", "'" + s + "'", "'all', 'last' or 'none'");
}

inline py::array new_or_out(const char* where, py::object out, const std::vector<py::ssize_t>& shape) {
    if (out.is_none()) return py::array_t<float>(shape);
    tensor_spec spec{where, "out", static_cast<int>(shape.size()), "(B, L or 1, V)", true};
    py::array a = require_tensor(out, spec, py::dtype::of<float>(), "float32");
    for (std::size_t d = 0; d < shape.size(); ++d)
        if (a.shape(static_cast<py::ssize_t>(d)) != shape[d])
            raise_value_error(where, "out", "shape " + shape_text(a), "shape " + mmca::detail::shape_text(shape));
    return a;
}

template <class Object>
py::object llama_forward(const std::string& name, Object& self, py::handle embeddings, py::handle token_types,
                         py::handle image_ids, py::handle lens, const std::string& logits, py::object out) {
    const std::string where_text = name + ".forward";
    const char* where = where_text.c_str();
    const mmca::logits_mode mode = parse_logits(where, logits);
    py::array e = require_tensor(embeddings, {where, "embeddings", 3, "(B, L, H)"}, py::dtype::of<float>(), "float32");
    py::array t = integer_metadata<std::int8_t>(token_types, {where, "token_types", 2, "(B, L)"}, "0, 1 or 2");
    auto ids = optional_integer_metadata<std::int32_t>(image_ids, {where, "image_ids", 2, "(B, L)"}, "an int32 image index");
    auto ln = optional_integer_metadata<std::int32_t>(lens, {where, "lens", 1, "(B,)"}, "an int32 count");
    const std::int64_t B = e.shape(0), L = e.shape(1);
    const std::int64_t V = self.visit([](auto& h) { return h.model.config().vocab_size; });
    py::object result = py::none();
    mmca::tensor_ref<float, 3> out_ref;
    if (mode != mmca::logits_mode::none) {
        py::array o = new_or_out(where, out, {B, mode == mmca::logits_mode::all ? L : 1, V});
        require_no_overlap(where, o, e, "embeddings");
        out_ref = tensor_view<float, 3>(o);
        result = o;
    }
    const auto e_ref = tensor_view<const float, 3>(e);
    const auto t_ref = tensor_view<const std::int8_t, 2>(t);
    const auto i_ref = metadata_view<std::int32_t, 2>(ids);
    const auto l_ref = metadata_view<std::int32_t, 1>(ln);
    {
        py::gil_scoped_release release;
        self.locked([&](auto& h) { h.model.forward(e_ref, t_ref, i_ref, l_ref, out_ref, mode); });
    }
    return result;
}

template <class Object>
py::object llama_forward_tokens(const std::string& name, Object& self, py::handle ids, py::handle lens,
                                const std::string& logits, py::object out) {
    const std::string where_text = name + ".forward_tokens";
    const char* where = where_text.c_str();
    const mmca::logits_mode mode = parse_logits(where, logits);
    py::array a = integer_metadata<std::int32_t>(ids, {where, "ids", 2, "(B, L)"}, "an int32 token id");
    auto ln = optional_integer_metadata<std::int32_t>(lens, {where, "lens", 1, "(B,)"}, "an int32 count");
    const std::int64_t B = a.shape(0), L = a.shape(1);
    const std::int64_t V = self.visit([](auto& h) { return h.model.config().vocab_size; });
    py::object result = py::none();
    mmca::tensor_ref<float, 3> out_ref;
    if (mode != mmca::logits_mode::none) {
        py::array o = new_or_out(where, out, {B, mode == mmca::logits_mode::all ? L : 1, V});
        out_ref = tensor_view<float, 3>(o);
        result = o;
    }
    const auto a_ref = tensor_view<const std::int32_t, 2>(a);
    const auto l_ref = metadata_view<std::int32_t, 1>(ln);
    {
        py::gil_scoped_release release;
        self.locked([&](auto& h) { h.model.forward_tokens(a_ref, l_ref, out_ref, mode); });
    }
    return result;
}

template <class Object>
py::tuple llama_chat(const std::string& name, Object& self, const std::vector<std::int32_t>& prompt,
                     std::int64_t max_new_tokens, float temperature, std::int64_t top_k, float top_p,
                     float repetition_penalty, std::uint64_t seed, const std::optional<std::vector<std::int32_t>>& eos_ids) {
    const std::string where = name + ".chat";
    const mmca::generation_options g = parse_generation_options(where.c_str(), max_new_tokens, temperature, top_k,
                                                                top_p, repetition_penalty, seed, eos_ids);
    mmca::generation_result r;
    {
        py::gil_scoped_release release;
        r = self.locked([&](auto& h) { return h.chat.round(prompt, g); });
    }
    return py::make_tuple(py::cast(r.tokens), mmca::to_string(r.reason));
}

/// Defines config, batch, context, length, reset, forward, forward_tokens and chat on a LlamaModel
/// class; name: its Python name ("mmca.LlamaModel"), used in error messages.
template <class Object>
void def_llama_inference(py::class_<Object>& cls, const std::string& name) {
    cls.def_property_readonly("config", [](Object& s) { return s.visit([](auto& h) { return config_to_dict(h.model.config()); }); },
                              "The model's config as a dict (HF key names).")
        .def_property_readonly("batch", [](Object& s) { return s.visit([](auto& h) { return h.model.batch(); }); },
                               "Sequences per call (B).")
        .def_property_readonly("context", [](Object& s) { return s.visit([](auto& h) { return h.model.context(); }); },
                               "Tokens each sequence may hold.")
        .def("length", [name](Object& s, std::int64_t b) {
                if (b < 0 || b >= s.visit([](auto& h) { return h.model.batch(); }))
                    throw py::index_error(error_text(name + ".length", "b", std::to_string(b), "a sequence index in [0, batch)"));
                return s.locked([&](auto& h) { return h.model.length(b); });
            }, py::arg("b") = 0, "Tokens cached for sequence b.")
        .def("reset", [](Object& s) { s.locked([](auto& h) { h.chat.reset(); }); },
             "Forgets every cached token (a new conversation).")
        .def("forward",
             [name](Object& s, py::handle e, py::handle t, py::handle i, py::handle l, const std::string& logits,
                    py::object out) { return llama_forward(name, s, e, t, i, l, logits, std::move(out)); },
             py::arg("embeddings"), py::arg("token_types"), py::kw_only(), py::arg("image_ids") = py::none(),
             py::arg("lens") = py::none(), py::arg("logits") = "all", py::arg("out") = py::none(), R"doc(
Runs new tokens through the decoder, appending them to the cache.

Parameters
----------
embeddings : numpy.ndarray, float32 (B, L, H)
    Input hidden states (token embeddings and spliced image rows).
token_types : integer array (B, L)
    0 pad, 1 text, 2 image.
image_ids : integer array (B, L), optional
    Image index per image token (default: each run of image tokens is a new image).
lens : integer array (B,), optional
    Valid rows per sequence (right padding).
logits : {'all', 'last', 'none'}
    Rows that get logits: all (B, L, V), the last new token (B, 1, V), or none (returns None).
out : numpy.ndarray, float32, optional
    Where to write the logits.
)doc")
        .def("forward_tokens",
             [name](Object& s, py::handle ids, py::handle lens, const std::string& logits, py::object out) {
                 return llama_forward_tokens(name, s, ids, lens, logits, std::move(out));
             },
             py::arg("ids"), py::kw_only(), py::arg("lens") = py::none(), py::arg("logits") = "all",
             py::arg("out") = py::none(), "Embeds text token ids (B, L) and runs forward(); returns logits as forward() does.")
        .def("chat",
             [name](Object& s, const std::vector<std::int32_t>& prompt, std::int64_t max_new_tokens, float temperature,
                    std::int64_t top_k, float top_p, float repetition_penalty, std::uint64_t seed,
                    const std::optional<std::vector<std::int32_t>>& eos_ids) {
                 return llama_chat(name, s, prompt, max_new_tokens, temperature, top_k, top_p, repetition_penalty,
                                   seed, eos_ids);
             },
             py::arg("prompt"), py::kw_only(), py::arg("max_new_tokens") = 128, py::arg("temperature") = 0.0f,
             py::arg("top_k") = 0, py::arg("top_p") = 1.0f, py::arg("repetition_penalty") = 1.0f, py::arg("seed") = 0,
             py::arg("eos_ids") = py::none(), R"doc(
One chat round (batch 1): prefills only the new prompt tokens on top of the cached conversation,
then generates until an EOS token or max_new_tokens. temperature 0 is greedy.

Returns
-------
(tokens, reason) : (list of int, str)
    The answer (with its EOS token when one ended it) and 'eos', 'max_new_tokens' or 'context_full'.
)doc");
}

}  // namespace mmca::python
