// python/src/bind_vision.cpp - the vision encoders (mmca.QwenViT, mmca.ClipViT, mmca.clip_vit_preset):
// preprocessed images (N, C, S, S) float32 to image features, read from a safetensors checkpoint.
//
// Follows docs/python.md: images cross as views (float32, C-contiguous; never copied), a wrong dtype
// is TypeError, bad shapes/values ValueError naming the argument, the GIL is released while an
// encoder runs. Encoders keep no state between calls (each call has its own work buffers), so
// several threads may encode with one encoder at once.
#include "array_args.hpp"
#include "bindings.hpp"

#include "mmca/io/checkpoint.hpp"
#include "mmca/io/vision_loader.hpp"
#include "mmca/nn/activation.hpp"
#include "mmca/vision/clip_vit.hpp"
#include "mmca/vision/position.hpp"
#include "mmca/vision/qwen_vit.hpp"

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <cmath>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace mmca::python {

namespace py = pybind11;

namespace {

void check_num_threads(const char* where, int num_threads) {
    if (num_threads < 0)
        raise_value_error(where, "num_threads", std::to_string(num_threads),
                          "a number of threads >= 1, or 0 for mmca.default_num_threads()");
}

/// The images argument: float32 (N, C, S, S), C-contiguous, with the encoder's C and S.
py::array checked_images(const char* where, py::handle images, std::int64_t channels, std::int64_t size) {
    const std::string dims = "(N, " + std::to_string(channels) + ", " + std::to_string(size) + ", " +
                             std::to_string(size) + ")";
    py::array a = require_tensor(images, {where, "images", 4, dims.c_str()}, py::dtype::of<float>(), "float32");
    if (a.shape(0) < 1 || a.shape(1) != channels || a.shape(2) != size || a.shape(3) != size)
        raise_value_error(where, "images", "shape " + shape_text(a), dims + " with N >= 1");
    return a;
}

/// A new (dims) float32 array, or `out` checked to be one.
py::array output_array(const char* where, py::object out, const std::vector<py::ssize_t>& shape, const char* dims) {
    if (out.is_none()) return py::array_t<float>(shape);
    py::array a = require_tensor(out, {where, "out", static_cast<int>(shape.size()), dims, true}, py::dtype::of<float>(),
                                 "float32");
    for (std::size_t d = 0; d < shape.size(); ++d)
        if (a.shape(static_cast<py::ssize_t>(d)) != shape[d])
            raise_value_error(where, "out", "shape " + shape_text(a), "shape " + mmca::detail::shape_text(shape));
    return a;
}

// ---- QWen-VL ViT ------------------------------------------------------------------------------

struct qwen_object {
    mmca::vision::qwen_vit encoder;
    int num_threads;
};

py::dict qwen_config_dict(const mmca::vision::qwen_vit_config& c) {
    py::dict d;
    d["image_size"] = c.image_size;
    d["patch_size"] = c.patch_size;
    d["width"] = c.width;
    d["layers"] = c.layers;
    d["heads"] = c.heads;
    d["mlp_width"] = c.mlp_width;
    d["output_dim"] = c.output_dim;
    d["queries"] = c.queries;
    d["pool_heads"] = c.pool_heads;
    d["pos_grid"] = c.pos_grid;
    d["eps"] = c.eps;
    d["tokens"] = c.tokens();
    return d;
}

std::unique_ptr<qwen_object> make_qwen(const std::string& path, const std::string& prefix, std::int64_t image_size,
                                       std::int64_t heads, std::int64_t pool_heads, double eps, int num_threads) {
    const char* where = "mmca.QwenViT";
    check_num_threads(where, num_threads);
    if (image_size <= 0) raise_value_error(where, "image_size", std::to_string(image_size), "a positive size in pixels");
    if (heads <= 0) raise_value_error(where, "heads", std::to_string(heads), "a positive number of heads");
    if (pool_heads < 0)
        raise_value_error(where, "pool_heads", std::to_string(pool_heads), "a positive number of heads, or 0 for E / 128");
    if (!(eps > 0.0 && std::isfinite(eps))) raise_value_error(where, "eps", mmca::detail::to_text(eps), "a positive finite number");
    mmca::vision::qwen_vit_config base;
    base.image_size = image_size;
    base.heads = heads;
    base.pool_heads = pool_heads;
    base.eps = static_cast<float>(eps);
    py::gil_scoped_release release;
    const auto ckpt = mmca::io::checkpoint::open(path);
    const auto config = mmca::io::deduce_qwen_vit_config(ckpt, prefix, base);
    return std::make_unique<qwen_object>(qwen_object{mmca::io::load_qwen_vit(ckpt, prefix, config), num_threads});
}

py::array qwen_encode(qwen_object& self, py::handle images, py::object out) {
    const char* where = "mmca.QwenViT.encode";
    const auto& c = self.encoder.config();
    py::array a = checked_images(where, images, 3, c.image_size);
    const py::ssize_t N = a.shape(0);
    py::array o = output_array(where, out, {N, c.queries, c.output_dim}, "(N, Q, E)");
    require_no_overlap(where, o, a, "images");
    const auto in = tensor_view<const float, 4>(a);
    const auto res = tensor_view<float, 3>(o);
    {
        py::gil_scoped_release release;
        self.encoder.encode(in, res, self.num_threads);
    }
    return o;
}

// ---- CLIP ---------------------------------------------------------------------------------------

struct clip_object {
    mmca::vision::clip_vit encoder;
    int num_threads;
};

py::dict clip_config_dict(const mmca::vision::clip_vit_config& c) {
    py::dict d;
    d["hidden_size"] = c.hidden_size;
    d["intermediate_size"] = c.intermediate_size;
    d["num_hidden_layers"] = c.num_layers;
    d["num_attention_heads"] = c.num_heads;
    d["num_channels"] = c.num_channels;
    d["image_size"] = c.image_size;
    d["patch_size"] = c.patch_size;
    d["layer_norm_eps"] = c.layer_norm_eps;
    d["hidden_act"] = c.hidden_act == mmca::nn::activation::quick_gelu  ? "quick_gelu"
                      : c.hidden_act == mmca::nn::activation::gelu_erf ? "gelu"
                                                                        : "gelu_new";
    d["tokens"] = c.tokens();
    return d;
}

std::unique_ptr<clip_object> make_clip(const std::string& path, const std::string& prefix, py::handle config,
                                       int num_threads) {
    const char* where = "mmca.ClipViT";
    check_num_threads(where, num_threads);
    std::optional<mmca::vision::clip_vit_config> given;
    if (py::isinstance<py::dict>(config)) {
        const std::string text = py::module_::import("json").attr("dumps")(config).cast<std::string>();
        given = rethrow_as(where, [&] { return mmca::io::parse_clip_vision_config(text, "config dict"); });
    } else if (py::isinstance<py::str>(config)) {
        const std::string name = config.cast<std::string>();
        if (name.size() > 5 && name.compare(name.size() - 5, 5, ".json") == 0) {
            py::gil_scoped_release release;
            given = mmca::io::read_clip_vision_config(name);
        } else {
            given = rethrow_as(where, [&] { return mmca::vision::clip_vit_preset(name); });
        }
    } else if (!config.is_none()) {
        raise_type_error(where, "config", python_type_text(config),
                         "None, a preset name, a path to config.json, or a dict of CLIPVisionConfig keys");
    }
    py::gil_scoped_release release;
    const auto ckpt = mmca::io::checkpoint::open(path);
    if (given) return std::make_unique<clip_object>(clip_object{mmca::io::load_clip_vit(ckpt, prefix, *given), num_threads});
    mmca::vision::clip_vit_config base;
    base.num_heads = 0;  // hidden_size / 64
    const auto deduced = mmca::io::deduce_clip_vit_config(ckpt, prefix, base);
    return std::make_unique<clip_object>(clip_object{mmca::io::load_clip_vit(ckpt, prefix, deduced), num_threads});
}

py::array clip_encode(clip_object& self, py::handle images, const std::string& output, py::object out) {
    const char* where = "mmca.ClipViT.encode";
    const auto which = rethrow_as(where, [&] { return mmca::vision::parse_clip_output(output); });
    const auto& c = self.encoder.config();
    py::array a = checked_images(where, images, c.num_channels, c.image_size);
    const py::ssize_t N = a.shape(0);
    py::array o = output_array(where, out, {N, c.tokens(), c.hidden_size}, "(N, 1 + G², W)");
    require_no_overlap(where, o, a, "images");
    const auto in = tensor_view<const float, 4>(a);
    const auto res = tensor_view<float, 3>(o);
    {
        py::gil_scoped_release release;
        self.encoder.encode(in, res, which, self.num_threads);
    }
    return o;
}

}  // namespace

void register_vision(py::module_& m) {
    py::class_<qwen_object>(m, "QwenViT", R"doc(
The QWen-VL vision encoder (SPEC §3) read from a safetensors checkpoint (memory-mapped, matrices
viewed in place): images (N, 3, S, S) -> features (N, Q, E); for QWen-VL S = 448, Q = 256, E = 4096.

The widths, patch size, layer count, learned position grid and resampler queries are read from the
tensor shapes; what shapes do not show is given here.

Parameters
----------
path : str
    A checkpoint folder, .safetensors file or index .json.
prefix : str
    Name prefix of the encoder's tensors ('vis_encoder.' in the visual-chat checkpoint,
    'transformer.visual.' in QWen-VL's).
image_size : int
    Input side S in pixels (a multiple of the patch size).
heads : int
    Attention heads of the encoder blocks (QWen-VL: 16 of 104).
pool_heads : int
    Attention heads of the resampler (0: E / 128, QWen-VL's rule).
eps : float
    LayerNorm eps.
num_threads : int
    Threads per call (0: mmca.default_num_threads()).

Raises
------
ValueError
    Unreadable checkpoint, missing or misshapen tensor (the message names it), bad option.
)doc")
        .def(py::init(&make_qwen), py::arg("path"), py::arg("prefix") = "vis_encoder.", py::kw_only(),
             py::arg("image_size") = 448, py::arg("heads") = 16, py::arg("pool_heads") = 0, py::arg("eps") = 1e-6,
             py::arg("num_threads") = 0)
        .def_property_readonly("config", [](const qwen_object& s) { return qwen_config_dict(s.encoder.config()); },
                               "The encoder's shape as a dict (tokens: patch tokens per image).")
        .def_property_readonly("image_size", [](const qwen_object& s) { return s.encoder.config().image_size; },
                               "Input side S in pixels.")
        .def_property_readonly("output_shape", [](const qwen_object& s) {
                return py::make_tuple(s.encoder.config().queries, s.encoder.config().output_dim);
            }, "(Q, E): the features of one image.")
        .def_property(
            "num_threads", [](const qwen_object& s) { return s.num_threads; },
            [](qwen_object& s, int n) {
                check_num_threads("mmca.QwenViT.num_threads", n);
                s.num_threads = n;
            },
            "Threads per call (0: the default).")
        .def("encode", &qwen_encode, py::arg("images"), py::kw_only(), py::arg("out") = py::none(), R"doc(
Encodes preprocessed images.

Parameters
----------
images : numpy.ndarray, float32 (N, 3, S, S)
    Normalised RGB images, C-contiguous (never copied).
out : numpy.ndarray, float32 (N, Q, E), optional
    Where to write the result (returned).

Returns
-------
numpy.ndarray, float32 (N, Q, E)
)doc");

    py::class_<clip_object>(m, "ClipViT", R"doc(
The vision tower of HF CLIP (CLIPVisionModel) read from a safetensors checkpoint (memory-mapped,
matrices viewed in place): images (N, C, S, S) -> hidden states (N, 1 + (S/P)², W), CLS row first;
ViT-L/14 at 224: (N, 257, 1024).

Parameters
----------
path : str
    A checkpoint folder, .safetensors file or index .json.
prefix : str
    Name prefix of the tower's tensors ('vision_model.' for CLIPVisionModel and CLIPModel checkpoints).
config : None, str or dict
    None: shapes from the tensors, heads = hidden_size / 64, eps 1e-5, quick_gelu. A str: a preset
    ('vit-l-14-224', 'vit-l-14-336') or the path of an HF config.json (CLIPVisionConfig or CLIPConfig).
    A dict: HF CLIPVisionConfig keys (missing keys take HF's defaults).
num_threads : int
    Threads per call (0: mmca.default_num_threads()).

Raises
------
ValueError
    Unreadable checkpoint, missing or misshapen tensor (the message names it), bad config.
)doc")
        .def(py::init(&make_clip), py::arg("path"), py::arg("prefix") = "vision_model.", py::kw_only(),
             py::arg("config") = py::none(), py::arg("num_threads") = 0)
        .def_property_readonly("config", [](const clip_object& s) { return clip_config_dict(s.encoder.config()); },
                               "The tower's config as a dict (HF key names; tokens: 1 + (S/P)²).")
        .def_property_readonly("image_size", [](const clip_object& s) { return s.encoder.config().image_size; },
                               "Input side S in pixels.")
        .def_property(
            "num_threads", [](const clip_object& s) { return s.num_threads; },
            [](clip_object& s, int n) {
                check_num_threads("mmca.ClipViT.num_threads", n);
                s.num_threads = n;
            },
            "Threads per call (0: the default).")
        .def("encode", &clip_encode, py::arg("images"), py::arg("output") = "last_hidden_state", py::kw_only(),
             py::arg("out") = py::none(), R"doc(
Encodes preprocessed images.

Parameters
----------
images : numpy.ndarray, float32 (N, C, S, S)
    Normalised images, C-contiguous (never copied).
output : {'last_hidden_state', 'penultimate'}
    HF's last_hidden_state (the last layer's output, without post_layernorm) or hidden_states[-2]
    (the next-to-last layer's output, as LLaVA uses; one layer less is run).
out : numpy.ndarray, float32 (N, 1 + (S/P)², W), optional
    Where to write the result (returned).

Returns
-------
numpy.ndarray, float32 (N, 1 + (S/P)², W)
)doc");

    m.def("sincos_2d", [](std::int64_t grid, std::int64_t dim) {
            std::vector<float> t = rethrow_as("mmca.sincos_2d", [&] { return mmca::vision::sincos_2d(grid, dim); });
            py::array_t<float> out({static_cast<py::ssize_t>(grid * grid), static_cast<py::ssize_t>(dim)});
            std::copy(t.begin(), t.end(), out.mutable_data());
            return out;
        }, py::arg("grid"), py::arg("dim"), R"doc(
The (grid², dim) float32 2D sin-cos table of a grid × grid layout (SPEC §3): for the token at
p = r·grid + c and ω_i = 10000^(−i/(dim/4)), row p is [sin(c·ω), cos(c·ω), sin(r·ω), cos(r·ω)].
)doc");
    m.def("bicubic_resize_table", [](py::handle table, std::int64_t grid_out) {
            const char* where = "mmca.bicubic_resize_table";
            py::array a = require_tensor(table, {where, "table", 2, "(g², D)"}, py::dtype::of<float>(), "float32");
            const std::int64_t rows = a.shape(0), dim = a.shape(1);
            const std::int64_t g = mmca::vision::detail::grid_side(rows);
            if (g <= 0 || dim <= 0) raise_value_error(where, "table", "shape " + shape_text(a), "(g², D): a square number of rows");
            if (grid_out <= 0) raise_value_error(where, "grid_out", std::to_string(grid_out), "a positive grid side");
            std::vector<float> t;
            {
                py::gil_scoped_release release;
                t = mmca::vision::bicubic_resize_table(static_cast<const float*>(a.data()), g, dim, grid_out);
            }
            py::array_t<float> out({static_cast<py::ssize_t>(grid_out * grid_out), static_cast<py::ssize_t>(dim)});
            std::copy(t.begin(), t.end(), out.mutable_data());
            return out;
        }, py::arg("table"), py::arg("grid_out"), R"doc(
A (g², D) position table resampled to (grid_out², D) as torch.nn.functional.interpolate(mode="bicubic",
align_corners=False) does on its (D, g, g) image (how QWen-VL resizes its position tables).
)doc");
    m.def("clip_vit_preset", [](const std::string& name) {
            return clip_config_dict(rethrow_as("mmca.clip_vit_preset", [&] { return mmca::vision::clip_vit_preset(name); }));
        }, py::arg("name"), "The config of 'vit-l-14-224' or 'vit-l-14-336' as a dict (HF key names).");
}

}  // namespace mmca::python
