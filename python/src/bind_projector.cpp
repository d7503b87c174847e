// python/src/bind_projector.cpp - the projectors of SPEC §4 (mmca.Projector): image features
// (N, T, Dv) to the language model's width (N, T', H), read from a safetensors checkpoint.
//
// Follows docs/python.md: the input crosses as a view (float32, C-contiguous; never copied), a wrong
// dtype is TypeError, bad shapes/values ValueError, the GIL is released around the projection, and
// one projector runs one call at a time (its work buffers are shared by its calls).
#include "array_args.hpp"
#include "bindings.hpp"

#include "mmca/io/checkpoint.hpp"
#include "mmca/io/projector_loader.hpp"
#include "mmca/nn/activation.hpp"
#include "mmca/vision/projector.hpp"

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

namespace mmca::python {

namespace py = pybind11;

namespace {

/// mmca.Projector: a projector and the lock that serialises its calls.
class projector_object {
public:
    explicit projector_object(mmca::vision::projector p, int num_threads)
        : projector_(std::move(p)), num_threads_(num_threads) {}

    const mmca::vision::projector& get() const { return projector_; }
    int num_threads() const { return num_threads_; }

    void project(mmca::tensor_ref<const float, 3> in, mmca::tensor_ref<float, 3> out) {
        std::lock_guard<std::mutex> lock(mutex_);
        projector_.project(in, out, num_threads_);
    }

private:
    mmca::vision::projector projector_;
    int num_threads_;
    std::mutex mutex_;
};

std::unique_ptr<projector_object> make_projector(const std::string& path, const std::string& prefix,
                                                 const std::string& kind, std::optional<std::int64_t> input_tokens,
                                                 bool has_cls, std::int64_t heads, std::int64_t vit_heads,
                                                 const std::string& vit_act, double vit_eps, int num_threads) {
    const char* where = "mmca.Projector";
    if (num_threads < 0)
        raise_value_error(where, "num_threads", std::to_string(num_threads),
                          "a number of threads >= 1, or 0 for mmca.default_num_threads()");
    if (heads < 0)
        raise_value_error(where, "heads", std::to_string(heads), "a number of heads >= 1, or 0 for H / 128");
    if (input_tokens && *input_tokens <= 0)
        raise_value_error(where, "input_tokens", std::to_string(*input_tokens),
                          "a positive number of tokens per image, or None");
    if (!(vit_eps > 0.0 && std::isfinite(vit_eps)))
        raise_value_error(where, "vit_eps", mmca::detail::to_text(vit_eps), "a positive finite number");
    mmca::vision::projector_config base;
    if (kind != "auto") base.kind = rethrow_as(where, [&] { return mmca::vision::parse_projector_kind(kind); });
    base.has_cls = has_cls;
    base.heads = heads;
    base.layer.heads = vit_heads;
    base.layer.eps = static_cast<float>(vit_eps);
    base.layer.act = rethrow_as(where, [&] { return mmca::nn::parse_activation(vit_act); });
    py::gil_scoped_release release;
    const auto ckpt = mmca::io::checkpoint::open(path);
    if (kind == "auto") base.kind = mmca::io::detect_projector_kind(ckpt, prefix);
    mmca::vision::projector_config config = mmca::io::deduce_projector_config(ckpt, prefix, base);
    config.input_tokens = input_tokens ? *input_tokens : config.queries + (has_cls ? 1 : 0);
    return std::make_unique<projector_object>(mmca::io::load_projector(ckpt, prefix, config), num_threads);
}

py::array project(projector_object& self, py::handle x, py::object out) {
    const char* where = "mmca.Projector.project";
    const auto& c = self.get().config();
    py::array a = require_tensor(x, {where, "x", 3, "(N, T, Dv)"}, py::dtype::of<float>(), "float32");
    if (a.shape(2) != c.vision_dim)
        raise_value_error(where, "x", "shape " + shape_text(a),
                          "(N, T, " + std::to_string(c.vision_dim) + "): Dv is the projector's vision width");
    const std::int64_t N = a.shape(0), T = a.shape(1);
    const std::int64_t T_out = rethrow_as(where, [&] { return c.output_tokens(T); });
    const std::vector<py::ssize_t> shape = {N, T_out, c.hidden};
    py::array o;
    if (out.is_none()) {
        o = py::array_t<float>(shape);
    } else {
        o = require_tensor(out, {where, "out", 3, "(N, T', H)", true}, py::dtype::of<float>(), "float32");
        for (std::size_t d = 0; d < 3; ++d)
            if (o.shape(static_cast<py::ssize_t>(d)) != shape[d])
                raise_value_error(where, "out", "shape " + shape_text(o), "shape " + mmca::detail::shape_text(shape));
        require_no_overlap(where, o, a, "x");
    }
    const auto in_ref = tensor_view<const float, 3>(a);
    const auto out_ref = tensor_view<float, 3>(o);
    {
        py::gil_scoped_release release;
        self.project(in_ref, out_ref);
    }
    return o;
}

py::dict config_dict(const mmca::vision::projector_config& c) {
    py::dict d;
    d["kind"] = mmca::vision::to_string(c.kind);
    d["vision_dim"] = c.vision_dim;
    d["hidden"] = c.hidden;
    d["eps"] = c.eps;
    if (c.kind == mmca::vision::projector_kind::perceiver) {
        d["queries"] = c.queries;
        d["heads"] = c.attention_heads();
        d["input_tokens"] = c.input_tokens;
        d["has_cls"] = c.has_cls;
    }
    if (c.kind == mmca::vision::projector_kind::vit) {
        py::dict l;
        l["width"] = c.layer.width;
        l["heads"] = c.layer.heads;
        l["mlp_width"] = c.layer.mlp_width;
        l["eps"] = c.layer.eps;
        l["act"] = mmca::nn::to_string(c.layer.act);
        d["layer"] = l;
    }
    return d;
}

}  // namespace

void register_projector(py::module_& m) {
    py::class_<projector_object>(m, "Projector", R"doc(
A projector from image features to the language model's width (SPEC §4), read from a safetensors
checkpoint by the reference model's tensor names (memory-mapped, matrices viewed in place).

    baseline    Linear(Dv -> H) -> LayerNorm(H)                         (N, T, Dv) -> (N, T, H)
    vit         encoder layer (width Dv) -> Linear(Dv -> H) -> LayerNorm (N, T, Dv) -> (N, T, H)
    perceiver   Q learned queries attending to the image tokens, -> LayerNorm -> Linear(H -> H)
                                                                        (N, T, Dv) -> (N, Q, H)

Parameters
----------
path : str
    A checkpoint folder, .safetensors file or index .json.
prefix : str
    Name prefix of the projector's tensors ('projection.' in the reference checkpoint).
kind : {'auto', 'baseline', 'vit', 'perceiver'}
    'auto' tells the kind from the tensor names present.
input_tokens : int, optional
    perceiver: tokens per image, CLS included (default: Q, plus 1 with has_cls).
has_cls : bool
    perceiver: token 0 of each image is a CLS token, dropped.
heads : int
    perceiver: attention heads (0: H / 128).
vit_heads, vit_act, vit_eps
    vit: the encoder layer's heads, activation (HF hidden_act: 'gelu', 'quick_gelu', 'gelu_new',
    'gelu_pytorch_tanh') and LayerNorm eps.
num_threads : int
    Threads per call (0: mmca.default_num_threads()).

Raises
------
ValueError
    Unreadable checkpoint, missing or misshapen tensor (the message names it), bad option.
)doc")
        .def(py::init(&make_projector), py::arg("path"), py::arg("prefix") = "projection.", py::arg("kind") = "auto",
             py::kw_only(), py::arg("input_tokens") = py::none(), py::arg("has_cls") = false, py::arg("heads") = 0,
             py::arg("vit_heads") = 16, py::arg("vit_act") = "gelu", py::arg("vit_eps") = 1e-5,
             py::arg("num_threads") = 0)
        .def_property_readonly("kind", [](const projector_object& p) { return std::string(mmca::vision::to_string(p.get().kind())); },
                               "'baseline', 'vit' or 'perceiver'.")
        .def_property_readonly("vision_dim", [](const projector_object& p) { return p.get().config().vision_dim; },
                               "Width of the image features (Dv).")
        .def_property_readonly("hidden", [](const projector_object& p) { return p.get().config().hidden; },
                               "Width of the output rows (H).")
        .def_property_readonly("num_threads", &projector_object::num_threads, "Threads per call (0: the default).")
        .def_property_readonly("config", [](const projector_object& p) { return config_dict(p.get().config()); },
                               "The projector's config as a dict.")
        .def("output_tokens", [](const projector_object& p, std::int64_t t) {
                return rethrow_as("mmca.Projector.output_tokens", [&] { return p.get().output_tokens(t); });
            }, py::arg("input_tokens"), "Rows out per image for input_tokens rows in (T for baseline/vit, Q for perceiver).")
        .def("project", &project, py::arg("x"), py::kw_only(), py::arg("out") = py::none(), R"doc(
Projects image features.

Parameters
----------
x : numpy.ndarray, float32 (N, T, Dv)
    Features of N images, C-contiguous (never copied).
out : numpy.ndarray, float32 (N, T', H), optional
    Where to write the result (returned).

Returns
-------
numpy.ndarray, float32 (N, T', H)
)doc");
}

}  // namespace mmca::python
