// python/src/vision_args.hpp - the arguments of the vision encoders, shared by mmca.QwenViT /
// mmca.ClipViT (bind_vision.cpp) and mmca.cuda.QwenViT / mmca.cuda.ClipViT (bind_cuda.cpp): loading
// a host encoder from a checkpoint and its options, and checking images and outputs. Follows
// array_args.hpp's rules and messages.
#pragma once

#include "array_args.hpp"

#include "mmca/io/checkpoint.hpp"
#include "mmca/io/vision_loader.hpp"
#include "mmca/nn/activation.hpp"
#include "mmca/vision/clip_vit.hpp"
#include "mmca/vision/qwen_vit.hpp"

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cmath>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace mmca::python {

namespace py = pybind11;

/// The images argument: float32 (N, C, S, S), C-contiguous, with the encoder's C and S.
inline py::array checked_images(const char* where, py::handle images, std::int64_t channels, std::int64_t size) {
    const std::string dims = "(N, " + std::to_string(channels) + ", " + std::to_string(size) + ", " +
                             std::to_string(size) + ")";
    py::array a = require_tensor(images, {where, "images", 4, dims.c_str()}, py::dtype::of<float>(), "float32");
    if (a.shape(0) < 1 || a.shape(1) != channels || a.shape(2) != size || a.shape(3) != size)
        raise_value_error(where, "images", "shape " + shape_text(a), dims + " with N >= 1");
    return a;
}

/// A new (dims) float32 array, or `out` checked to be one.
inline py::array output_array(const char* where, py::object out, const std::vector<py::ssize_t>& shape,
                              const char* dims) {
    if (out.is_none()) return py::array_t<float>(shape);
    py::array a = require_tensor(out, {where, "out", static_cast<int>(shape.size()), dims, true}, py::dtype::of<float>(),
                                 "float32");
    for (std::size_t d = 0; d < shape.size(); ++d)
        if (a.shape(static_cast<py::ssize_t>(d)) != shape[d])
            raise_value_error(where, "out", "shape " + shape_text(a), "shape " + mmca::detail::shape_text(shape));
    return a;
}

/// The QWen-VL encoder of a checkpoint, its shape read from the tensors and completed by the options
/// (image side, heads, resampler heads, LayerNorm eps). Called with the GIL held; releases it while
/// the checkpoint is read.
inline mmca::vision::qwen_vit load_qwen_vit_arg(const char* where, const std::string& path, const std::string& prefix,
                                                std::int64_t image_size, std::int64_t heads, std::int64_t pool_heads,
                                                double eps) {
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
    return mmca::io::load_qwen_vit(ckpt, prefix, config);
}

/// The CLIP tower of a checkpoint. config: None (shapes from the tensors, heads = hidden_size / 64),
/// a preset name, the path of an HF config.json, or a dict of CLIPVisionConfig keys. Called with
/// the GIL held; releases it while files are read.
inline mmca::vision::clip_vit load_clip_vit_arg(const char* where, const std::string& path, const std::string& prefix,
                                                py::handle config) {
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
    if (given) return mmca::io::load_clip_vit(ckpt, prefix, *given);
    mmca::vision::clip_vit_config base;
    base.num_heads = 0;  // hidden_size / 64
    const auto deduced = mmca::io::deduce_clip_vit_config(ckpt, prefix, base);
    return mmca::io::load_clip_vit(ckpt, prefix, deduced);
}

/// The encoders' config as dicts (mmca.QwenViT.config, mmca.ClipViT.config and their CUDA twins).
inline py::dict qwen_config_dict(const mmca::vision::qwen_vit_config& c) {
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

inline py::dict clip_config_dict(const mmca::vision::clip_vit_config& c) {
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

}  // namespace mmca::python
