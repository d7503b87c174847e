// python/src/bind_llama.cpp - the LLaMa decoder, its checkpoints and generation (mmca.LlamaModel,
// mmca.SafetensorsFile, mmca.llama_preset, mmca.estimate_llama_memory, mmca.read_llama_config).
//
// Follows docs/python.md: tensors cross as views (float32, C-contiguous; never copied), metadata is
// converted after a range check, wrong dtypes are TypeError, bad shapes/values ValueError, the GIL is
// released around model calls, and views into C++ memory keep their owner alive.
#include "array_args.hpp"
#include "llama_binding.hpp"
#include "lora_args.hpp"

#include "mmca/io/checkpoint.hpp"
#include "mmca/io/llama_config_json.hpp"
#include "mmca/io/llama_loader.hpp"
#include "mmca/io/safetensors.hpp"
#include "mmca/language/generation.hpp"
#include "mmca/language/memory.hpp"
#include "mmca/language/model.hpp"
#include "mmca/language/presets.hpp"

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <variant>
#include <vector>

namespace mmca::python {

namespace py = pybind11;

namespace {

/// A config from a preset name or an HF-style dict (parsed by the same code as config.json).
mmca::llama_config config_from(py::handle obj, const char* where) {
    if (py::isinstance<py::str>(obj))
        return rethrow_as(where, [&] { return mmca::llama_preset(obj.cast<std::string>()); });
    if (py::isinstance<py::dict>(obj)) {
        const std::string text = py::module_::import("json").attr("dumps")(obj).cast<std::string>();
        return mmca::io::parse_llama_config(text, "config dict");
    }
    raise_type_error(where, "config", python_type_text(obj), "a preset name ('llama2-7b', ...) or a config dict");
}

mmca::dtype parse_dtype(const char* where, const char* name, const std::string& s) {
    if (s == "float32") return mmca::dtype::float32;
    if (s == "float16") return mmca::dtype::float16;
    if (s == "bfloat16") return mmca::dtype::bfloat16;
    raise_value_error(where, name, "'" + s + "'", "'float32', 'float16' or 'bfloat16'");
}

template <class KV>
struct llama_holder {
    mmca::llama_model<KV> model;
    mmca::generator<KV> chat;
    explicit llama_holder(mmca::llama_model<KV>&& m) : model(std::move(m)), chat(model) {}
};

/// mmca.LlamaModel: a model with its KV cache (of a runtime-chosen dtype) and a chat generator.
class llama_object {
public:
    template <class KV>
    explicit llama_object(std::unique_ptr<llama_holder<KV>> h) : holder_(std::move(h)) {}

    template <class F>
    decltype(auto) visit(F&& f) {
        return std::visit([&](auto& h) -> decltype(auto) { return f(*h); }, holder_);
    }
    template <class F>
    decltype(auto) locked(F&& f) {
        std::lock_guard<std::mutex> lock(mutex_);
        return visit(std::forward<F>(f));
    }
    std::mutex& mutex() { return mutex_; }
    std::string kv_dtype() {
        return visit([](auto& h) {
            using KV = typename std::decay_t<decltype(h.model)>::kv_type;
            return std::string(mmca::dtype_name(mmca::dtype_of<KV>::value));
        });
    }

private:
    std::variant<std::unique_ptr<llama_holder<float>>, std::unique_ptr<llama_holder<mmca::float16>>,
                 std::unique_ptr<llama_holder<mmca::bfloat16>>>
        holder_;
    std::mutex mutex_;
};

std::unique_ptr<llama_object> make_llama(const std::string& path, const std::string& kv_dtype, std::int64_t context,
                                         std::int64_t batch, const std::string& variant,
                                         const std::optional<std::string>& policy, const std::string& impl,
                                         int num_threads, const std::string& names, const std::string& config_path) {
    const char* where = "mmca.LlamaModel";
    mmca::llama_model_options options;
    options.batch = batch;
    options.context = context;
    options.attention = parse_attention_options(where, variant, policy, std::nullopt, num_threads);
    options.impl = parse_impl(where, impl);
    options.num_threads = num_threads;
    mmca::io::llama_load_options load;
    load.names = names;
    load.config_path = config_path;
    const mmca::dtype kv = parse_dtype(where, "kv_dtype", kv_dtype);
    py::gil_scoped_release release;
    auto [config, weights] = mmca::io::load_llama(path, load);
    switch (kv) {
        case mmca::dtype::float16:
            return std::make_unique<llama_object>(std::make_unique<llama_holder<mmca::float16>>(
                mmca::llama_model<mmca::float16>(config, std::move(weights), options)));
        case mmca::dtype::bfloat16:
            return std::make_unique<llama_object>(std::make_unique<llama_holder<mmca::bfloat16>>(
                mmca::llama_model<mmca::bfloat16>(config, std::move(weights), options)));
        case mmca::dtype::float32: break;
    }
    return std::make_unique<llama_object>(
        std::make_unique<llama_holder<float>>(mmca::llama_model<float>(config, std::move(weights), options)));
}

/// The training path of the decoder (language/train.hpp) on whole sequences from position 0.
py::dict backward(llama_object& self, py::handle embeddings, py::handle token_types, py::handle dlogits_obj,
                  py::handle image_ids, py::handle lens, bool cross_blocks, py::object lora_obj, py::object lora_alpha) {
    const char* where = "mmca.LlamaModel.backward";
    py::array e = require_tensor(embeddings, {where, "embeddings", 3, "(B, L, H)"}, py::dtype::of<float>(), "float32");
    py::array t = integer_metadata<std::int8_t>(token_types, {where, "token_types", 2, "(B, L)"}, "0, 1 or 2");
    py::array dl = require_tensor(dlogits_obj, {where, "dlogits", 3, "(B, L, V)"}, py::dtype::of<float>(), "float32");
    auto ids = optional_integer_metadata<std::int32_t>(image_ids, {where, "image_ids", 2, "(B, L)"}, "an int32 image index");
    auto ln = optional_integer_metadata<std::int32_t>(lens, {where, "lens", 1, "(B,)"}, "an int32 count");
    const std::int64_t B = e.shape(0), L = e.shape(1), H = e.shape(2);
    const auto names = mmca::io::hf_llama_names();
    py::dict grads, out;
    self.visit([&](auto& h) {
        const auto& c = h.model.config();
        const auto& w = h.model.weights();
        const std::int64_t V = c.vocab_size;
        if (dl.shape(0) != B || dl.shape(1) != L || dl.shape(2) != V)
            raise_value_error(where, "dlogits", "shape " + shape_text(dl),
                              "(" + std::to_string(B) + ", " + std::to_string(L) + ", " + std::to_string(V) + ")");
        if (cross_blocks && c.num_cross_blocks() == 0)
            raise_value_error(where, "cross_blocks", "True", "False for a decoder without gated cross-attention blocks");
        std::optional<mmca::llama_lora> lora;
        if (!lora_obj.is_none()) lora = lora_from_dict(where, lora_obj, lora_alpha, c, names.layer_prefix);
        const mmca::llama_lora* lp = lora ? &*lora : nullptr;
        mmca::llama_grads g = mmca::make_llama_grads(w, lp, cross_blocks);
        py::array_t<float> logits({B, L, V}), demb({B, L, H});
        const auto e_ref = tensor_view<const float, 3>(e);
        const auto t_ref = tensor_view<const std::int8_t, 2>(t);
        const auto i_ref = metadata_view<std::int32_t, 2>(ids);
        const auto l_ref = metadata_view<std::int32_t, 1>(ln);
        const auto d_ref = tensor_view<const float, 3>(dl);
        mmca::tensor_ref<float, 3> lo(logits.mutable_data(), {B, L, V}), de(demb.mutable_data(), {B, L, H});
        {
            py::gil_scoped_release release;
            std::lock_guard<std::mutex> lock(self.mutex());
            rethrow_as(where, [&] {
                mmca::llama_tape tape;
                const auto& ao = h.model.options().attention;
                const int threads = h.model.options().num_threads;
                mmca::llama_forward_train(c, w, ao, e_ref, t_ref, i_ref, l_ref, lo, tape, threads, lp);
                mmca::llama_backward(c, w, ao, tape, d_ref, de, threads, &g, lp);
                return 0;
            });
        }
        if (lora) grads = lora_to_dict(g.lora, names.layer_prefix);
        cross_grads_to_dict(grads, g.cross_blocks, w, names.cross_prefix);
        out["logits"] = logits;
        out["dembeddings"] = demb;
    });
    out["grads"] = grads;
    return out;
}

py::array embed(llama_object& self, py::handle ids) {
    const char* where = "mmca.LlamaModel.embed";
    py::array a = py::isinstance<py::array>(ids) ? py::reinterpret_borrow<py::array>(ids) : py::array::ensure(ids);
    if (!a) raise_type_error(where, "ids", python_type_text(ids), "an integer array");
    const int nd = static_cast<int>(a.ndim());
    if (nd < 1 || nd > 2) raise_value_error(where, "ids", std::to_string(nd) + " dimensions", "(L,) or (B, L)");
    py::array c = integer_metadata<std::int32_t>(a, {where, "ids", nd, "(L,) or (B, L)"}, "an int32 token id");
    const std::int64_t H = self.visit([](auto& h) { return h.model.config().hidden_size; });
    std::vector<py::ssize_t> shape(c.shape(), c.shape() + nd);
    shape.push_back(static_cast<py::ssize_t>(H));
    py::array_t<float> out(shape);
    const std::int64_t n = c.size();
    const auto* p = static_cast<const std::int32_t*>(c.data());
    float* o = out.mutable_data();
    self.locked([&](auto& h) { h.model.embed(p, n, mmca::tensor_ref<float, 2>(o, {n, H})); });
    return out;
}

// ---- safetensors ------------------------------------------------------------------------------

py::dtype numpy_dtype(mmca::io::st_dtype t) {
    using mmca::io::st_dtype;
    switch (t) {
        case st_dtype::BOOL: return py::dtype("bool");
        case st_dtype::U8: case st_dtype::F8_E4M3: case st_dtype::F8_E5M2: return py::dtype("uint8");
        case st_dtype::I8: return py::dtype("int8");
        case st_dtype::I16: return py::dtype("int16");
        case st_dtype::U16: case st_dtype::BF16: return py::dtype("uint16");  // bfloat16: raw bits
        case st_dtype::F16: return py::dtype("float16");
        case st_dtype::I32: return py::dtype("int32");
        case st_dtype::U32: return py::dtype("uint32");
        case st_dtype::F32: return py::dtype("float32");
        case st_dtype::I64: return py::dtype("int64");
        case st_dtype::U64: return py::dtype("uint64");
        case st_dtype::F64: return py::dtype("float64");
    }
    return py::dtype("uint8");
}

py::array tensor_of(py::object self_obj, const std::string& name) {
    auto& f = self_obj.cast<mmca::io::safetensors_file&>();
    const mmca::io::tensor_info* t = f.find(name);
    if (!t) {
        throw py::key_error(error_text("mmca.SafetensorsFile.tensor", "name", "'" + name + "'",
                                       "one of the file's " + std::to_string(f.tensors().size()) + " tensor names"));
    }
    std::vector<py::ssize_t> shape(t->shape.begin(), t->shape.end());
    py::array view(numpy_dtype(t->type), shape, static_cast<const void*>(t->data), self_obj);
    view.attr("setflags")(py::arg("write") = false);
    return view;
}

}  // namespace

void bind_llama(py::module_& m) {
    py::class_<llama_object> llama_class(m, "LlamaModel", R"doc(
A LLaMa-2 decoder read from a safetensors checkpoint (memory-mapped, viewed in place), with a KV
cache per layer and a chat generator whose cache survives across rounds.

Parameters
----------
path : str
    A checkpoint folder (model.safetensors.index.json or model.safetensors), a .safetensors file,
    or an index .json. config.json is read from the same folder unless config_path is given.
kv_dtype : {'float32', 'float16', 'bfloat16'}
    Storage of the KV cache (compute is float32).
context : int
    Tokens each sequence may hold; 0: max_position_embeddings.
batch : int
    Sequences decoded side by side.
variant, policy, impl, num_threads
    Attention settings, as in mmca.attention.
names : {'auto', 'hf', 'visual_chat'}
    Tensor names (HF LLaMa or the reference visual-chat checkpoint).

Raises
------
ValueError
    Unreadable or invalid checkpoint/config (the message names the file, tensor or key).
)doc");
    llama_class
        .def(py::init(&make_llama), py::arg("path"), py::kw_only(), py::arg("kv_dtype") = "float32",
             py::arg("context") = 0, py::arg("batch") = 1, py::arg("variant") = "mmca",
             py::arg("policy") = py::none(), py::arg("impl") = "fused", py::arg("num_threads") = 0,
             py::arg("names") = "auto", py::arg("config_path") = "")
        .def_property_readonly("kv_dtype", &llama_object::kv_dtype, "Storage dtype of the KV cache.")
        .def("backward", &backward, py::arg("embeddings"), py::arg("token_types"), py::arg("dlogits"), py::kw_only(),
             py::arg("image_ids") = py::none(), py::arg("lens") = py::none(), py::arg("cross_blocks") = true,
             py::arg("lora") = py::none(), py::arg("lora_alpha") = py::none(), R"doc(
The training path (docs/training.md): runs whole sequences from position 0 with a tape (the KV cache
is not touched) and back-propagates dlogits (B, L, V), the gradient of a loss with respect to the
logits. The decoder's own weights are frozen. cross_blocks: gradients of the gated cross-attention
blocks' parameters ('model.cross_blocks.N.*'); lora: adapters on q/k/v/o (a dict as lora_adapters()
returns, with lora_alpha), whose '...lora_A.weight' / '...lora_B.weight' get gradients. Returns a dict:
logits (B, L, V), dembeddings (B, L, H) (image rows included), grads (name -> float32 array).
)doc")
        .def("lora_adapters",
             [](llama_object& self, std::int64_t rank, double alpha, const std::string& targets, std::uint64_t seed) {
                 return self.visit([&](auto& h) {
                     return new_lora_dict("mmca.LlamaModel.lora_adapters", h.model.config(), rank, alpha, targets, seed,
                                          mmca::io::hf_llama_names().layer_prefix);
                 });
             },
             py::kw_only(), py::arg("rank") = 8, py::arg("alpha") = 16.0, py::arg("targets") = "qv", py::arg("seed") = 0,
             R"doc(Fresh LoRA adapters for q/k/v/o (targets: letters of 'qkvo' or 'all'): a dict
'model.layers.N.self_attn.P_proj.lora_A.weight' (rank, in), uniform on +-1/sqrt(in) from seed, and
'...lora_B.weight' (out, rank), zero. Merge them for inference with mmca.grad.lora_merge.)doc")
        .def("embed", &embed, py::arg("ids"), "Token embeddings (..., H) float32 of ids (L,) or (B, L).");
    def_llama_inference(llama_class, "mmca.LlamaModel");

    py::class_<mmca::io::safetensors_file>(m, "SafetensorsFile", R"doc(
A safetensors file, memory-mapped and fully validated on opening. tensor(name) returns a read-only
numpy view of the mapped bytes (no copy; bfloat16 as uint16 bit patterns) that keeps the file open.
)doc")
        .def(py::init([](const std::string& path) {
                 py::gil_scoped_release release;
                 return std::make_unique<mmca::io::safetensors_file>(path);
             }),
             py::arg("path"))
        .def("names", [](const mmca::io::safetensors_file& f) {
                std::vector<std::string> n;
                for (const auto& t : f.tensors()) n.push_back(t.name);
                return n;
            }, "Tensor names in file order.")
        .def_property_readonly("metadata", &mmca::io::safetensors_file::metadata, "The '__metadata__' map.")
        .def("dtype", [](const mmca::io::safetensors_file& f, const std::string& name) {
                const auto* t = f.find(name);
                if (!t) throw py::key_error(error_text("mmca.SafetensorsFile.dtype", "name", "'" + name + "'", "a tensor name"));
                return std::string(mmca::io::st_dtype_name(t->type));
            }, py::arg("name"), "The safetensors dtype of a tensor ('F32', 'BF16', ...).")
        .def("tensor", &tensor_of, py::arg("name"), "A read-only zero-copy numpy view of a tensor.");

    m.def("llama_preset", [](const std::string& name) {
            return config_to_dict(rethrow_as("mmca.llama_preset", [&] { return mmca::llama_preset(name); }));
        }, py::arg("name"), "The config of 'llama2-7b', 'llama2-13b' or 'llama2-70b' as a dict.");
    m.def("read_llama_config", [](const std::string& path) { return config_to_dict(mmca::io::read_llama_config(path)); },
          py::arg("path"), "Parses an HF LLaMa config.json into a dict of the keys mmca uses.");
    m.def("estimate_llama_memory",
          [](py::handle config, const std::string& weight_dtype, const std::string& kv_dtype, std::int64_t batch,
             std::int64_t context, std::int64_t prefill_tokens, std::int64_t image_tokens) {
              const char* where = "mmca.estimate_llama_memory";
              const auto c = config_from(config, where);
              const auto est = mmca::estimate_llama_memory(c, parse_dtype(where, "weight_dtype", weight_dtype),
                                                           parse_dtype(where, "kv_dtype", kv_dtype), batch, context,
                                                           prefill_tokens, image_tokens);
              py::dict d;
              d["parameters"] = est.parameters;
              d["weight_bytes"] = est.weight_bytes;
              d["norm_copy_bytes"] = est.norm_copy_bytes;
              d["kv_cache_bytes"] = est.kv_cache_bytes;
              d["cross_kv_bytes"] = est.cross_kv_bytes;
              d["activation_bytes"] = est.activation_bytes;
              d["logits_last_bytes"] = est.logits_last_bytes;
              d["logits_all_bytes"] = est.logits_all_bytes;
              d["total_bytes"] = est.total_bytes();
              return d;
          },
          py::arg("config"), py::kw_only(), py::arg("weight_dtype") = "bfloat16", py::arg("kv_dtype") = "float32",
          py::arg("batch") = 1, py::arg("context") = 0, py::arg("prefill_tokens") = 512, py::arg("image_tokens") = -1,
          "Bytes a model and its KV cache need (a preset name or config dict), before loading anything.");
}

}  // namespace mmca::python
