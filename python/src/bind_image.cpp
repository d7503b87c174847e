// python/src/bind_image.cpp - images: mmca.load_image, mmca.decode_image, mmca.resize_image,
// mmca.preprocess_image, mmca.image_hash, mmca.image_preset and mmca.image_presets.
//
// Follows docs/python.md: pixel arrays cross as views (uint8, C-contiguous, (H, W, 3); never
// copied or converted), a wrong dtype is a TypeError, a wrong shape/layout/value a ValueError,
// and the GIL is released while decoding, resizing, preprocessing and hashing. Arrays returned
// own the C++ buffer they were computed in (no copy on the way out).
#include "array_args.hpp"

#include "mmca/vision/image.hpp"
#include "mmca/vision/image_preprocess.hpp"
#include "mmca/vision/image_resize.hpp"

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace mmca::python {

namespace py = pybind11;

namespace {

/// A numpy array that owns the tensor's buffer (moved into a capsule; no copy).
template <class T, std::size_t N>
py::array_t<T> owning_array(mmca::tensor<T, N>&& t) {
    auto* owner = new mmca::tensor<T, N>(std::move(t));
    py::capsule free_owner(owner, [](void* p) { delete static_cast<mmca::tensor<T, N>*>(p); });
    std::vector<py::ssize_t> shape(owner->shape().begin(), owner->shape().end());
    return py::array_t<T>(shape, owner->data(), free_owner);
}

/// A checked (H, W, 3) uint8 C-contiguous array (the pixels of an image).
py::array require_pixels(py::handle obj, const char* where, const char* name) {
    py::array a = require_tensor(obj, {where, name, 3, "(H, W, 3)"}, py::dtype::of<std::uint8_t>(), "uint8");
    if (a.shape(2) != 3 || a.shape(0) < 1 || a.shape(1) < 1)
        raise_value_error(where, name, "shape " + shape_text(a), "(H, W, 3) with H, W >= 1 (RGB pixels)");
    return a;
}

/// A path from str or os.PathLike.
std::optional<std::string> as_path(py::handle obj) {
    if (py::isinstance<py::str>(obj)) return obj.cast<std::string>();
    if (py::hasattr(obj, "__fspath__")) {
        py::object p = py::module_::import("os").attr("fspath")(obj);
        if (py::isinstance<py::str>(p)) return p.cast<std::string>();
    }
    return std::nullopt;
}

py::array_t<std::uint8_t> load_image(py::handle path_obj) {
    const char* where = "mmca.load_image";
    const auto path = as_path(path_obj);
    if (!path) raise_type_error(where, "path", python_type_text(path_obj), "a str or os.PathLike path");
    mmca::vision::rgb_image image;
    {
        py::gil_scoped_release release;
        image = mmca::vision::load_image(*path);
    }
    return owning_array(std::move(image.pixels));
}

py::array_t<std::uint8_t> decode_image(py::handle data) {
    const char* where = "mmca.decode_image";
    if (!PyObject_CheckBuffer(data.ptr()) || py::isinstance<py::str>(data))
        raise_type_error(where, "data", python_type_text(data), "bytes, bytearray, memoryview or a uint8 numpy array");
    py::buffer buffer = py::reinterpret_borrow<py::buffer>(data);
    py::buffer_info info = buffer.request();
    if (info.itemsize != 1)
        raise_type_error(where, "data", "a buffer of " + std::to_string(info.itemsize) + "-byte items",
                         "a buffer of bytes (itemsize 1)");
    py::ssize_t expected_stride = 1;
    for (py::ssize_t d = info.ndim; d-- > 0;) {
        if (info.shape[static_cast<std::size_t>(d)] != 1 && info.strides[static_cast<std::size_t>(d)] != expected_stride)
            raise_value_error(where, "data", "a non-contiguous buffer", "a C-contiguous buffer of the encoded file");
        expected_stride *= info.shape[static_cast<std::size_t>(d)];
    }
    const auto* bytes = static_cast<const std::uint8_t*>(info.ptr);
    const auto size = static_cast<std::size_t>(info.size);
    mmca::vision::rgb_image image;
    {
        py::gil_scoped_release release;  // `info` keeps the buffer exported (and alive) meanwhile
        image = mmca::vision::decode_image(bytes, size);
    }
    return owning_array(std::move(image.pixels));
}

py::array_t<std::uint8_t> resize_image(py::handle image, std::int64_t height, std::int64_t width, int num_threads) {
    const char* where = "mmca.resize_image";
    py::array a = require_pixels(image, where, "image");
    if (num_threads < 0)
        raise_value_error(where, "num_threads", std::to_string(num_threads),
                          "a number of threads >= 1, or 0 for mmca.default_num_threads()");
    const auto view = tensor_view<const std::uint8_t, 3>(a);
    mmca::tensor<std::uint8_t, 3> out;
    {
        py::gil_scoped_release release;
        out = mmca::vision::resize_bicubic(view, height, width, num_threads);
    }
    return owning_array(std::move(out));
}

std::array<float, 3> three_floats(py::handle obj, const char* where, const char* name) {
    std::vector<double> values;
    try {
        values = obj.cast<std::vector<double>>();
    } catch (const py::cast_error&) {
        raise_type_error(where, name, python_type_text(obj), "a sequence of 3 numbers (R, G, B)");
    }
    if (values.size() != 3)
        raise_value_error(where, name, std::to_string(values.size()) + " values", "3 values (R, G, B)");
    return {static_cast<float>(values[0]), static_cast<float>(values[1]), static_cast<float>(values[2])};
}

/// The options of a preprocess call: the preset, then whatever the keywords override.
mmca::vision::preprocess_options preprocess_options_from(const std::string& preset, const std::optional<std::string>& mode,
                                                         const std::optional<std::int64_t>& size, py::handle crop,
                                                         py::handle mean, py::handle std, int num_threads) {
    const char* where = "mmca.preprocess_image";
    auto options = rethrow_as(where, [&] { return mmca::vision::image_preset(preset); });
    if (mode) options.mode = rethrow_as(where, [&] { return mmca::vision::parse_resize_mode(*mode); });
    if (size) {
        options.size = *size;
        // A size without a crop crops to a square of that size (as CLIP's processors do).
        if (crop.is_none()) options.crop_height = options.crop_width = *size;
    }
    if (!crop.is_none()) {
        if (py::isinstance<py::int_>(crop)) {
            options.crop_height = options.crop_width = crop.cast<std::int64_t>();
        } else {
            std::vector<std::int64_t> hw;
            try {
                hw = crop.cast<std::vector<std::int64_t>>();
            } catch (const py::cast_error&) {
                raise_type_error(where, "crop", python_type_text(crop), "an int or a (height, width) pair of ints");
            }
            if (hw.size() != 2)
                raise_value_error(where, "crop", std::to_string(hw.size()) + " values", "an int or (height, width)");
            options.crop_height = hw[0];
            options.crop_width = hw[1];
        }
    }
    if (!mean.is_none()) options.mean = three_floats(mean, where, "mean");
    if (!std.is_none()) options.stddev = three_floats(std, where, "std");
    options.num_threads = num_threads;
    rethrow_as(where, [&] {
        mmca::vision::detail::check_preprocess_options(options, "mmca.preprocess_image");
        return 0;
    });
    return options;
}

py::array preprocess_image(py::handle image, const std::string& preset, const std::optional<std::string>& mode,
                           const std::optional<std::int64_t>& size, py::handle crop, py::handle mean, py::handle std,
                           int num_threads, py::object out) {
    const char* where = "mmca.preprocess_image";
    const auto options = preprocess_options_from(preset, mode, size, crop, mean, std, num_threads);
    const auto [oh, ow] = options.output_size();

    // The pixels: a (H, W, 3) uint8 array used in place, or a path decoded here.
    std::optional<std::string> path;
    std::optional<py::array> pixels;
    if (!py::isinstance<py::array>(image)) {
        path = as_path(image);
        if (!path)
            raise_type_error(where, "image", python_type_text(image),
                             "a uint8 numpy array (H, W, 3) or a path (str or os.PathLike)");
    } else {
        pixels = require_pixels(image, where, "image");
    }

    py::array result;
    if (out.is_none()) {
        result = py::array_t<float>(std::vector<py::ssize_t>{3, oh, ow});
    } else {
        result = require_tensor(out, {where, "out", 3, "(3, H, W)", true}, py::dtype::of<float>(), "float32");
        if (result.shape(0) != 3 || result.shape(1) != oh || result.shape(2) != ow)
            raise_value_error(where, "out", "shape " + shape_text(result),
                              "(3, " + std::to_string(oh) + ", " + std::to_string(ow) + ")");
        if (pixels) require_no_overlap(where, result, *pixels, "image");
    }
    const auto out_ref = tensor_view<float, 3>(result);
    {
        py::gil_scoped_release release;
        if (path) {
            const mmca::vision::rgb_image decoded = mmca::vision::load_image(*path);
            mmca::vision::preprocess_image(decoded.view(), options, out_ref);
        } else {
            mmca::vision::preprocess_image(tensor_view<const std::uint8_t, 3>(*pixels), options, out_ref);
        }
    }
    return result;
}

std::uint64_t image_hash(py::handle image) {
    py::array a = require_pixels(image, "mmca.image_hash", "image");
    const auto view = tensor_view<const std::uint8_t, 3>(a);
    py::gil_scoped_release release;
    return mmca::vision::image_hash(view);
}

py::dict preset_dict(const std::string& name) {
    const auto o = rethrow_as("mmca.image_preset", [&] { return mmca::vision::image_preset(name); });
    py::dict d;
    d["mode"] = mmca::vision::to_string(o.mode);
    d["size"] = o.size;
    d["crop"] = py::make_tuple(o.crop_height, o.crop_width);
    d["mean"] = py::make_tuple(o.mean[0], o.mean[1], o.mean[2]);
    d["std"] = py::make_tuple(o.stddev[0], o.stddev[1], o.stddev[2]);
    const auto [oh, ow] = o.output_size();
    d["output_size"] = py::make_tuple(oh, ow);
    return d;
}

const char* load_image_doc = R"doc(Decode a JPEG or PNG file into RGB pixels.

Every image becomes RGB as PIL's Image.open(path).convert("RGB") does: grey is replicated, alpha
is dropped (not composited), palette images are looked up. PNG results equal PIL's exactly;
JPEG results differ from PIL's (libjpeg-turbo) by a few levels (see docs/vision.md).

Parameters:
    path: str or os.PathLike.

Returns:
    (H, W, 3) uint8 array (owns its memory).

Raises:
    TypeError: path is not a str or os.PathLike.
    ValueError: a missing or unreadable file, data that is not a complete JPEG/PNG (the message
        names the path and stb_image's reason), or a zero-sized image.
)doc";

const char* decode_image_doc = R"doc(Decode a JPEG or PNG held in memory into RGB pixels (as mmca.load_image).

Parameters:
    data: bytes, bytearray, memoryview or a C-contiguous uint8 numpy array holding the file.

Returns:
    (H, W, 3) uint8 array (owns its memory).

Raises:
    TypeError: data is not a buffer of bytes.
    ValueError: data that is not a complete JPEG/PNG, or a zero-sized image.
)doc";

const char* resize_image_doc = R"doc(Resize RGB pixels with PIL's bicubic resampling (Image.resize(size, Image.BICUBIC)).

The results equal Pillow 9.4's bit for bit: cubic kernel a = -0.5 widened by the scale when
shrinking (antialiasing), columns first then rows, 8-bit intermediate.

Parameters:
    image: (H, W, 3) uint8, C-contiguous (used in place, never copied).
    height, width: output size, 1 to 2**24.
    num_threads: 0 means mmca.default_num_threads().

Returns:
    (height, width, 3) uint8 array.

Raises:
    TypeError: image is not a uint8 numpy array.
    ValueError: a bad shape, layout or size.
)doc";

const char* preprocess_image_doc = R"doc(RGB pixels (or an image file) to the normalised (3, H, W) float32 encoder input.

Starts from the preset's options (mmca.image_presets) and applies the keywords given:
'shortest_edge_crop' resizes the shorter side to `size` (the longer to int(size * long / short),
PIL bicubic) and centre-crops `crop` with top-left ((h - ch) // 2, (w - cw) // 2), padding with
zeros where the image is smaller, as transformers 4.33.3's CLIPImageProcessor does;
'direct_square' resizes straight to size x size (QWen-VL's torchvision Resize((448, 448))).
Then (p / 255 - mean) / std per channel, in float32.

Parameters:
    image: (H, W, 3) uint8 C-contiguous array (used in place), or a path (str, os.PathLike).
    preset: 'visualchat-448' (default; shortest edge 448 + crop 448), 'qwen-vl-448' (direct
        448 x 448), 'clip-224' or 'clip-336'.
    mode: 'shortest_edge_crop' or 'direct_square'.
    size: shorter side after resizing, or the side of the square. Without `crop`, the crop
        becomes size x size.
    crop: int or (height, width) of the centre crop ('shortest_edge_crop' only).
    mean, std: 3 numbers each, for (R, G, B) rescaled to [0, 1].
    num_threads: threads of the resize; 0 means mmca.default_num_threads().
    out: float32, C-contiguous, writeable (3, H, W) array written in place and returned.

Returns:
    out, or a new (3, H, W) float32 array.

Raises:
    TypeError: image is neither a uint8 array nor a path; a wrong dtype of out; bad mean/std types.
    ValueError: a bad shape or layout, an unknown preset or mode, a non-positive size or crop,
        std <= 0, or an image file that cannot be decoded.
)doc";

const char* image_hash_doc = R"doc(64-bit FNV-1a hash of an image: of its height and width (8 little-endian bytes each), then its
pixels in (row, column, channel) order. Equal pixels give equal hashes; a cache of encoded images
keys on it.

Parameters:
    image: (H, W, 3) uint8, C-contiguous.

Returns:
    int in [0, 2**64).
)doc";

const char* image_preset_doc = R"doc(The options of a preprocessing preset as a dict: mode, size, crop (height, width), mean,
std and output_size (height, width).

Raises:
    ValueError: an unknown name (see mmca.image_presets).
)doc";

}  // namespace

void register_image(py::module_& m) {
    py::tuple names(mmca::vision::image_preset_names.size());
    for (std::size_t i = 0; i < mmca::vision::image_preset_names.size(); ++i)
        names[i] = py::str(mmca::vision::image_preset_names[i]);
    m.attr("image_presets") = names;

    m.def("load_image", &load_image, load_image_doc, py::arg("path"));
    m.def("decode_image", &decode_image, decode_image_doc, py::arg("data"));
    m.def("resize_image", &resize_image, resize_image_doc, py::arg("image"), py::arg("height"), py::arg("width"),
          py::kw_only(), py::arg("num_threads") = 0);
    m.def("preprocess_image", &preprocess_image, preprocess_image_doc, py::arg("image"),
          py::arg("preset") = "visualchat-448", py::kw_only(), py::arg("mode") = py::none(),
          py::arg("size") = py::none(), py::arg("crop") = py::none(), py::arg("mean") = py::none(),
          py::arg("std") = py::none(), py::arg("num_threads") = 0, py::arg("out") = py::none());
    m.def("image_hash", &image_hash, image_hash_doc, py::arg("image"));
    m.def("image_preset", &preset_dict, image_preset_doc, py::arg("name"));
}

}  // namespace mmca::python
