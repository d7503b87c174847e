// python/src/bind_vision.cpp - the vision encoders (mmca.QwenViT, mmca.ClipViT, mmca.clip_vit_preset):
// preprocessed images (N, C, S, S) float32 to image features, read from a safetensors checkpoint.
//
// Follows docs/python.md: images cross as views (float32, C-contiguous; never copied), a wrong dtype
// is TypeError, bad shapes/values ValueError naming the argument, the GIL is released while an
// encoder runs. Encoders keep no state between calls (each call has its own work buffers), so
// several threads may encode with one encoder at once.
#include "array_args.hpp"
#include "bindings.hpp"
#include "vision_args.hpp"

#include "mmca/vision/position.hpp"

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

// ---- QWen-VL ViT ------------------------------------------------------------------------------

struct qwen_object {
    mmca::vision::qwen_vit encoder;
    int num_threads;
};

std::unique_ptr<qwen_object> make_qwen(const std::string& path, const std::string& prefix, std::int64_t image_size,
                                       std::int64_t heads, std::int64_t pool_heads, double eps, int num_threads) {
    const char* where = "mmca.QwenViT";
    check_num_threads(where, num_threads);
    return std::make_unique<qwen_object>(
        qwen_object{load_qwen_vit_arg(where, path, prefix, image_size, heads, pool_heads, eps), num_threads});
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

std::unique_ptr<clip_object> make_clip(const std::string& path, const std::string& prefix, py::handle config,
                                       int num_threads) {
    const char* where = "mmca.ClipViT";
    check_num_threads(where, num_threads);
    return std::make_unique<clip_object>(clip_object{load_clip_vit_arg(where, path, prefix, config), num_threads});
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
