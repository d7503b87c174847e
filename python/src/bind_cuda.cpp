// python/src/bind_cuda.cpp - mmca._cuda: the CUDA attention (forward with statistics, backward) on
// device tensors that Python already owns, through the compiled library mmca::cuda (library.hpp).
//
// Device tensors cross without copies: a torch.Tensor on a CUDA device (data_ptr(), shape, stride(),
// dtype; float32, float16 and bfloat16) or any object with __cuda_array_interface__ (CuPy, Numba;
// float32 and float16). Token metadata is host data (int8 types, int32 ids and lengths, C-contiguous,
// read through the buffer protocol; mmca/cuda.py converts other integer arrays and lists first).
// Calls are asynchronous on
// `stream` (an int cudaStream_t; 0: the legacy default stream, which torch's default stream is);
// errors in the arguments raise before anything is launched. The models (LlamaModel, VisualChatModel)
// and the vision encoders (QwenViT, ClipViT) take and return host numpy arrays as their CPU
// counterparts do. Built only when CUDA is enabled.
#include "array_args.hpp"
#include "llama_binding.hpp"
#include "vision_args.hpp"
#include "visual_chat_binding.hpp"

#include "mmca/backend/cuda/library.hpp"
#include "mmca/io/llama_loader.hpp"
#include "mmca/language/generation.hpp"

#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <array>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

namespace mmca::python {
namespace {

using mmca::cuda::lib::device_view;
using mmca::cuda::lib::element;

/// A device tensor argument: pointer, element type, shape and strides in elements.
struct device_arg {
    void* data = nullptr;
    element type = element::float32;
    std::vector<std::int64_t> shape, strides;
};

element element_of(const std::string& name, const char* where, const char* arg) {
    if (name == "torch.float32" || name == "<f4") return element::float32;
    if (name == "torch.float16" || name == "<f2") return element::float16;
    if (name == "torch.bfloat16") return element::bfloat16;
    raise_type_error(where, arg, "dtype " + name, "float32, float16 or bfloat16");
}

/// Reads a device tensor from a torch tensor or a __cuda_array_interface__ object.
device_arg device_tensor_arg(py::handle obj, const char* where, const char* arg, int ndim) {
    device_arg d;
    if (py::hasattr(obj, "data_ptr") && py::hasattr(obj, "stride") && py::hasattr(obj, "is_cuda")) {
        if (!obj.attr("is_cuda").cast<bool>())
            raise_value_error(where, arg, "a tensor on " + py::str(obj.attr("device")).cast<std::string>(),
                              "a tensor on a CUDA device");
        d.data = reinterpret_cast<void*>(obj.attr("data_ptr")().cast<std::uintptr_t>());
        d.type = element_of(py::str(obj.attr("dtype")).cast<std::string>(), where, arg);
        for (auto s : obj.attr("shape")) d.shape.push_back(s.cast<std::int64_t>());
        for (auto s : obj.attr("stride")()) d.strides.push_back(s.cast<std::int64_t>());
    } else if (py::hasattr(obj, "__cuda_array_interface__")) {
        const py::dict cai = obj.attr("__cuda_array_interface__");
        d.data = reinterpret_cast<void*>(cai["data"].cast<py::tuple>()[0].cast<std::uintptr_t>());
        const std::string typestr = cai["typestr"].cast<std::string>();
        d.type = element_of(typestr, where, arg);
        const std::int64_t item = d.type == element::float32 ? 4 : 2;
        for (auto s : cai["shape"]) d.shape.push_back(s.cast<std::int64_t>());
        if (!cai.contains("strides") || cai["strides"].is_none()) {
            d.strides.assign(d.shape.size(), 1);
            for (std::size_t i = d.shape.size(); i-- > 1;) d.strides[i - 1] = d.strides[i] * d.shape[i];
        } else {
            for (auto s : cai["strides"]) {
                const auto bytes = s.cast<std::int64_t>();
                if (bytes % item != 0)
                    raise_value_error(where, arg, "a stride of " + std::to_string(bytes) + " bytes",
                                      "strides that are multiples of the element size");
                d.strides.push_back(bytes / item);
            }
        }
    } else {
        raise_type_error(where, arg, python_type_text(obj),
                         "a CUDA torch.Tensor or an object with __cuda_array_interface__");
    }
    if (static_cast<int>(d.shape.size()) != ndim)
        raise_value_error(where, arg, std::to_string(d.shape.size()) + " dimensions " + mmca::detail::shape_text(d.shape),
                          std::to_string(ndim) + " dimensions");
    return d;
}

device_view view4(const device_arg& d) {
    device_view v;
    v.data = d.data;
    v.type = d.type;
    for (int i = 0; i < 4; ++i) {
        v.shape[static_cast<std::size_t>(i)] = d.shape[static_cast<std::size_t>(i)];
        v.strides[static_cast<std::size_t>(i)] = d.strides[static_cast<std::size_t>(i)];
    }
    return v;
}

/// A float32 statistics tensor of rank N (device memory, contiguous: checked by the library).
template <std::size_t N>
mmca::tensor_ref<float, N> stats_ref(py::handle obj, const char* where, const char* arg) {
    const device_arg d = device_tensor_arg(obj, where, arg, static_cast<int>(N));
    if (d.type != element::float32) raise_type_error(where, arg, mmca::cuda::lib::to_string(d.type), "float32");
    std::array<std::int64_t, N> shape{}, strides{};
    for (std::size_t i = 0; i < N; ++i) {
        shape[i] = d.shape[i];
        strides[i] = d.strides[i];
    }
    return mmca::tensor_ref<float, N>(static_cast<float*>(d.data), shape, strides);
}

/// A C-contiguous host buffer of Int with N dimensions (token metadata; mmca.cuda's Python layer
/// converts lists and other integer dtypes before the call). Uses the buffer protocol only.
template <class Int, std::size_t N>
mmca::tensor_ref<const Int, N> metadata_buffer(const py::object& obj, const char* where, const char* arg,
                                               std::vector<py::buffer_info>& keep) {
    if (obj.is_none()) return {};
    if (!PyObject_CheckBuffer(obj.ptr()))
        raise_type_error(where, arg, python_type_text(obj), "a C-contiguous integer array");
    py::buffer_info info = py::reinterpret_borrow<py::buffer>(obj).request();
    const char* int_name = sizeof(Int) == 1 ? "int8" : "int32";
    if (info.itemsize != static_cast<py::ssize_t>(sizeof(Int)) || info.format.empty() ||
        std::string("bBhHiIlLqQ").find(info.format.back()) == std::string::npos)
        raise_type_error(where, arg, "format '" + info.format + "'", std::string("an array of ") + int_name);
    if (info.ndim != static_cast<py::ssize_t>(N))
        raise_value_error(where, arg, std::to_string(info.ndim) + " dimensions", std::to_string(N) + " dimensions");
    std::array<std::int64_t, N> shape{};
    py::ssize_t expect = info.itemsize;
    for (std::size_t d = N; d-- > 0;) {
        shape[d] = static_cast<std::int64_t>(info.shape[d]);
        if (info.shape[d] > 1 && info.strides[d] != expect)
            raise_value_error(where, arg, "a strided array", "a C-contiguous array");
        expect *= info.shape[d];
    }
    const auto* data = static_cast<const Int*>(info.ptr);
    keep.push_back(std::move(info));
    return mmca::tensor_ref<const Int, N>(data, shape);
}

/// The token layout of a call from its host metadata (buffers kept alive in `keep`).
mmca::token_layout parse_tokens(const char* where, const py::object& types, const py::object& ids,
                                const py::object& kv_lens, const py::object& q_lens, std::vector<py::buffer_info>& keep) {
    if (types.is_none()) raise_type_error(where, "token_types", "None", "an int8 array (B, Lk)");
    mmca::token_layout t;
    t.types = metadata_buffer<std::int8_t, 2>(types, where, "token_types", keep);
    t.image_ids = metadata_buffer<std::int32_t, 2>(ids, where, "image_ids", keep);
    t.kv_lens = metadata_buffer<std::int32_t, 1>(kv_lens, where, "kv_lens", keep);
    t.q_lens = metadata_buffer<std::int32_t, 1>(q_lens, where, "q_lens", keep);
    return t;
}

void cuda_attention(const py::object& q, const py::object& k, const py::object& v, const py::object& out,
                    const py::object& token_types, const std::string& variant, const py::object& image_ids,
                    const std::optional<std::string>& policy, const std::optional<double>& scale,
                    const py::object& kv_lens, const py::object& q_lens, const py::object& row_max,
                    const py::object& row_sum, const py::object& group_out, std::uintptr_t stream) {
    constexpr const char* where = "mmca.cuda.attention";
    const mmca::attention_options options = parse_attention_options(where, variant, policy, scale, 0);
    std::vector<py::buffer_info> keep;
    const mmca::token_layout layout = parse_tokens(where, token_types, image_ids, kv_lens, q_lens, keep);
    const device_view dq = view4(device_tensor_arg(q, where, "q", 4)), dk = view4(device_tensor_arg(k, where, "k", 4)),
                      dv = view4(device_tensor_arg(v, where, "v", 4)), dout = view4(device_tensor_arg(out, where, "out", 4));
    const int given = !row_max.is_none() + !row_sum.is_none() + !group_out.is_none();
    if (given != 0 && given != 3)
        raise_value_error(where, "row_max", std::to_string(given) + " of row_max, row_sum, group_out",
                          "all three statistics tensors or none");
    std::optional<mmca::attention_stats> stats;
    if (given == 3)
        stats.emplace(stats_ref<4>(row_max, where, "row_max"), stats_ref<4>(row_sum, where, "row_sum"),
                      stats_ref<5>(group_out, where, "group_out"));
    py::gil_scoped_release release;
    mmca::cuda::lib::attention_forward(dq, dk, dv, layout, options, dout, reinterpret_cast<void*>(stream),
                                       stats ? &*stats : nullptr);
}

void cuda_attention_backward(const py::object& q, const py::object& k, const py::object& v, const py::object& dout,
                             const py::object& row_max, const py::object& row_sum, const py::object& group_out,
                             const py::object& dq, const py::object& dk, const py::object& dv,
                             const py::object& token_types, const std::string& variant, const py::object& image_ids,
                             const std::optional<std::string>& policy, const std::optional<double>& scale,
                             const py::object& kv_lens, const py::object& q_lens, std::uintptr_t stream,
                             const std::string& kernel) {
    constexpr const char* where = "mmca.cuda.attention_backward";
    const mmca::attention_options options = parse_attention_options(where, variant, policy, scale, 0);
    mmca::cuda::backward_kernel choice = mmca::cuda::backward_kernel::automatic;
    if (kernel == "tensor_cores")
        choice = mmca::cuda::backward_kernel::tensor_cores;
    else if (kernel == "ffma")
        choice = mmca::cuda::backward_kernel::ffma;
    else if (kernel != "automatic")
        throw mmca::invalid_argument(where, "kernel", "'" + kernel + "'", "'automatic', 'tensor_cores' or 'ffma'");
    std::vector<py::buffer_info> keep;
    const mmca::token_layout layout = parse_tokens(where, token_types, image_ids, kv_lens, q_lens, keep);
    const mmca::attention_stats stats(stats_ref<4>(row_max, where, "row_max"), stats_ref<4>(row_sum, where, "row_sum"),
                                      stats_ref<5>(group_out, where, "group_out"));
    const device_view vq = view4(device_tensor_arg(q, where, "q", 4)), vk = view4(device_tensor_arg(k, where, "k", 4)),
                      vv = view4(device_tensor_arg(v, where, "v", 4)),
                      vg = view4(device_tensor_arg(dout, where, "dout", 4)),
                      vdq = view4(device_tensor_arg(dq, where, "dq", 4)), vdk = view4(device_tensor_arg(dk, where, "dk", 4)),
                      vdv = view4(device_tensor_arg(dv, where, "dv", 4));
    py::gil_scoped_release release;
    mmca::cuda::lib::attention_backward(vq, vk, vv, vg, layout, options, mmca::attention_stats_view(stats), vdq, vdk,
                                        vdv, reinterpret_cast<void*>(stream), choice);
}

// ---- the decoder on the GPU ------------------------------------------------------------------------

struct cuda_llama_holder {
    mmca::cuda::lib::llama_model model;
    mmca::basic_generator<mmca::cuda::lib::llama_model> chat;
    explicit cuda_llama_holder(mmca::cuda::lib::llama_model&& m) : model(std::move(m)), chat(model) {}
};

/// A held object behind one Python object, with the visit / locked interface of the shared binding
/// code (llama_binding.hpp, visual_chat_binding.hpp): one call at a time under the mutex.
template <class Held>
class locked_holder {
public:
    explicit locked_holder(std::unique_ptr<Held> h) : held_(std::move(h)) {}

    template <class F>
    decltype(auto) visit(F&& f) {
        return f(*held_);
    }
    template <class F>
    decltype(auto) locked(F&& f) {
        std::lock_guard<std::mutex> lock(mutex_);
        return f(*held_);
    }

private:
    std::unique_ptr<Held> held_;
    std::mutex mutex_;
};

/// mmca.cuda.LlamaModel: mmca::cuda::lib::llama_model and a chat generator over it.
using cuda_llama_object = locked_holder<cuda_llama_holder>;

/// The element type named by a model's `dtype` argument.
element element_of_dtype(const char* where, const std::string& dtype) {
    if (dtype == "float16") return element::float16;
    if (dtype == "bfloat16") return element::bfloat16;
    if (dtype != "float32") raise_value_error(where, "dtype", "'" + dtype + "'", "'float32', 'float16' or 'bfloat16'");
    return element::float32;
}

std::unique_ptr<cuda_llama_object> make_cuda_llama(const std::string& path, const std::string& dtype,
                                                   std::int64_t context, std::int64_t batch, const std::string& variant,
                                                   const std::optional<std::string>& policy, const std::string& names,
                                                   const std::string& config_path) {
    constexpr const char* where = "mmca.cuda.LlamaModel";
    mmca::llama_model_options options;
    options.batch = batch;
    options.context = context;
    options.attention = parse_attention_options(where, variant, policy, std::nullopt, 0);
    const element type = element_of_dtype(where, dtype);
    mmca::io::llama_load_options load;
    load.names = names;
    load.config_path = config_path;
    py::gil_scoped_release release;
    auto [config, weights] = mmca::io::load_llama(path, load);
    return std::make_unique<cuda_llama_object>(
        std::make_unique<cuda_llama_holder>(mmca::cuda::lib::llama_model(config, weights, options, type)));
}

// ---- the visual-chat model on the GPU -----------------------------------------------------------------

/// mmca.cuda.VisualChatModel: mmca::cuda::lib::visual_chat_model (decoder and QWen-VL encoder on the
/// device, projector on the host).
class cuda_visual_chat_object : public locked_holder<mmca::cuda::lib::visual_chat_model> {
public:
    static constexpr const char* python_name = "mmca.cuda.VisualChatModel";
    using locked_holder::locked_holder;
};

std::unique_ptr<cuda_visual_chat_object> make_cuda_visual_chat(
    const std::string& path, const std::string& dtype, const std::string& config, const std::string& variant,
    const std::optional<std::string>& policy, std::int64_t batch, std::int64_t context, std::int32_t image_token_id,
    std::int64_t max_images, const std::string& image_order, std::int64_t image_cache, const std::string& clip_layer,
    std::int64_t image_size, std::int64_t vision_heads, std::int64_t pool_heads, std::int64_t projector_heads,
    std::int64_t projector_layer_heads, const std::string& projector_act, int num_threads) {
    const char* where = cuda_visual_chat_object::python_name;
    const element type = element_of_dtype(where, dtype);
    const mmca::visual_chat_load_options load = parse_visual_chat_load(
        where, config, variant, policy, batch, context, image_token_id, max_images, image_order, image_cache, clip_layer,
        image_size, vision_heads, pool_heads, projector_heads, projector_layer_heads, projector_act, num_threads);
    py::gil_scoped_release release;
    return std::make_unique<cuda_visual_chat_object>(mmca::cuda::lib::load_visual_chat_model(path, load, type));
}

// ---- the vision encoders on the GPU -------------------------------------------------------------------

/// mmca.cuda.QwenViT / mmca.cuda.ClipViT: a device encoder (one call at a time under the mutex).
template <class Encoder>
struct cuda_encoder_object {
    Encoder encoder;
    std::mutex mutex;
};
using cuda_qwen_object = cuda_encoder_object<mmca::cuda::lib::qwen_vit>;
using cuda_clip_object = cuda_encoder_object<mmca::cuda::lib::clip_vit>;

std::unique_ptr<cuda_qwen_object> make_cuda_qwen(const std::string& path, const std::string& prefix,
                                                 const std::string& dtype, std::int64_t image_size, std::int64_t heads,
                                                 std::int64_t pool_heads, double eps) {
    constexpr const char* where = "mmca.cuda.QwenViT";
    const element type = element_of_dtype(where, dtype);
    const mmca::vision::qwen_vit host = load_qwen_vit_arg(where, path, prefix, image_size, heads, pool_heads, eps);
    py::gil_scoped_release release;
    return std::unique_ptr<cuda_qwen_object>(new cuda_qwen_object{mmca::cuda::lib::qwen_vit(host, type), {}});
}

std::unique_ptr<cuda_clip_object> make_cuda_clip(const std::string& path, const std::string& prefix,
                                                 const std::string& dtype, py::handle config) {
    constexpr const char* where = "mmca.cuda.ClipViT";
    const element type = element_of_dtype(where, dtype);
    const mmca::vision::clip_vit host = load_clip_vit_arg(where, path, prefix, config);
    py::gil_scoped_release release;
    return std::unique_ptr<cuda_clip_object>(new cuda_clip_object{mmca::cuda::lib::clip_vit(host, type), {}});
}

py::array cuda_qwen_encode(cuda_qwen_object& self, py::handle images, py::object out) {
    constexpr const char* where = "mmca.cuda.QwenViT.encode";
    const auto& c = self.encoder.config();
    py::array a = checked_images(where, images, 3, c.image_size);
    py::array o = output_array(where, std::move(out), {a.shape(0), c.queries, c.output_dim}, "(N, Q, E)");
    require_no_overlap(where, o, a, "images");
    const auto in = tensor_view<const float, 4>(a);
    const auto res = tensor_view<float, 3>(o);
    {
        py::gil_scoped_release release;
        std::lock_guard<std::mutex> lock(self.mutex);
        self.encoder.encode(in, res);
    }
    return o;
}

py::array cuda_clip_encode(cuda_clip_object& self, py::handle images, const std::string& output, py::object out) {
    constexpr const char* where = "mmca.cuda.ClipViT.encode";
    const auto which = rethrow_as(where, [&] { return mmca::vision::parse_clip_output(output); });
    const auto& c = self.encoder.config();
    py::array a = checked_images(where, images, c.num_channels, c.image_size);
    py::array o = output_array(where, std::move(out), {a.shape(0), c.tokens(), c.hidden_size}, "(N, 1 + G², W)");
    require_no_overlap(where, o, a, "images");
    const auto in = tensor_view<const float, 4>(a);
    const auto res = tensor_view<float, 3>(o);
    {
        py::gil_scoped_release release;
        std::lock_guard<std::mutex> lock(self.mutex);
        self.encoder.encode(in, res, which);
    }
    return o;
}

}  // namespace
}  // namespace mmca::python

PYBIND11_MODULE(_cuda, m) {
    namespace py = pybind11;
    using namespace mmca::python;
    m.doc() = "mmca's CUDA attention on device tensors (torch CUDA tensors, __cuda_array_interface__ objects)";
    py::register_exception<mmca::cuda::lib::runtime_error>(m, "CudaError", PyExc_RuntimeError);
    m.def("available", &mmca::cuda::lib::device_available, "True when a CUDA device is usable.");
    m.def("device", &mmca::cuda::lib::device_description, "The current device, e.g. 'NVIDIA H200 (sm_90, 132 SMs)'.");
    m.def(
        "synchronize", [](std::uintptr_t stream) { mmca::cuda::lib::synchronize(reinterpret_cast<void*>(stream)); },
        "Waits for the work queued on a stream (an int cudaStream_t; 0: the default stream).", py::arg("stream") = 0);
    m.def("attention", &cuda_attention,
          "Fused attention of `variant` into `out` on the GPU (every variant of mmca.attention); with row_max, "
          "row_sum (B, Hq, Lq, 2) and group_out (B, Hq, Lq, 2, D) float32 device tensors, also the statistics "
          "for attention_backward. Asynchronous on `stream`.",
          py::arg("q"), py::arg("k"), py::arg("v"), py::arg("out"), py::arg("token_types"), py::arg("variant"),
          py::kw_only(), py::arg("image_ids") = py::none(), py::arg("policy") = py::none(),
          py::arg("scale") = py::none(), py::arg("kv_lens") = py::none(), py::arg("q_lens") = py::none(),
          py::arg("row_max") = py::none(), py::arg("row_sum") = py::none(), py::arg("group_out") = py::none(),
          py::arg("stream") = 0);
    m.def("attention_backward", &cuda_attention_backward,
          "Gradients dq, dk, dv of attention for the upstream gradient dout, from the statistics that "
          "attention() wrote for the same inputs. kernel: 'automatic', 'tensor_cores' (float16/bfloat16, head "
          "dim <= 128 and a multiple of 8, sm_80+) or 'ffma'. Asynchronous on `stream`.",
          py::arg("q"), py::arg("k"), py::arg("v"), py::arg("dout"), py::arg("row_max"), py::arg("row_sum"),
          py::arg("group_out"), py::arg("dq"), py::arg("dk"), py::arg("dv"), py::arg("token_types"),
          py::arg("variant"), py::kw_only(), py::arg("image_ids") = py::none(), py::arg("policy") = py::none(),
          py::arg("scale") = py::none(), py::arg("kv_lens") = py::none(), py::arg("q_lens") = py::none(),
          py::arg("stream") = 0, py::arg("kernel") = "automatic");

    py::class_<cuda_qwen_object>(m, "QwenViT", R"doc(
The QWen-VL vision encoder on the GPU: mmca.QwenViT's encoder (same checkpoint, options and shapes)
with its weights and activations in device memory of `dtype`. Images and features are numpy float32
arrays on the host, exactly as for mmca.QwenViT.

Parameters
----------
path, prefix, image_size, heads, pool_heads, eps
    As for mmca.QwenViT.
dtype : {'float32', 'float16', 'bfloat16'}
    Element type of the weights and activations on the device (GEMMs and LayerNorm statistics
    accumulate in float32).
)doc")
        .def(py::init(&make_cuda_qwen), py::arg("path"), py::arg("prefix") = "vis_encoder.", py::kw_only(),
             py::arg("dtype") = "float32", py::arg("image_size") = 448, py::arg("heads") = 16,
             py::arg("pool_heads") = 0, py::arg("eps") = 1e-6)
        .def_property_readonly("config", [](const cuda_qwen_object& s) { return qwen_config_dict(s.encoder.config()); },
                               "The encoder's shape as a dict (as mmca.QwenViT.config).")
        .def_property_readonly("image_size", [](const cuda_qwen_object& s) { return s.encoder.config().image_size; },
                               "Input side S in pixels.")
        .def_property_readonly("output_shape", [](const cuda_qwen_object& s) {
                return py::make_tuple(s.encoder.config().queries, s.encoder.config().output_dim);
            }, "(Q, E): the features of one image.")
        .def_property_readonly("dtype", [](const cuda_qwen_object& s) {
                return std::string(mmca::cuda::lib::to_string(s.encoder.type()));
            }, "Element type on the device.")
        .def("encode", &cuda_qwen_encode, py::arg("images"), py::kw_only(), py::arg("out") = py::none(),
             "Encodes preprocessed images (N, 3, S, S) float32 into features (N, Q, E) float32 (returned, or "
             "written to `out`), at most 8 images at a time on the device. Returns when the features are on "
             "the host.");

    py::class_<cuda_clip_object>(m, "ClipViT", R"doc(
The CLIP vision tower on the GPU: mmca.ClipViT's tower (same checkpoint, config and outputs) with its
weights and activations in device memory of `dtype`. Images and hidden states are numpy float32
arrays on the host, exactly as for mmca.ClipViT.

Parameters
----------
path, prefix, config
    As for mmca.ClipViT.
dtype : {'float32', 'float16', 'bfloat16'}
    Element type of the weights and activations on the device (GEMMs and LayerNorm statistics
    accumulate in float32).
)doc")
        .def(py::init(&make_cuda_clip), py::arg("path"), py::arg("prefix") = "vision_model.", py::kw_only(),
             py::arg("dtype") = "float32", py::arg("config") = py::none())
        .def_property_readonly("config", [](const cuda_clip_object& s) { return clip_config_dict(s.encoder.config()); },
                               "The tower's config as a dict (as mmca.ClipViT.config).")
        .def_property_readonly("image_size", [](const cuda_clip_object& s) { return s.encoder.config().image_size; },
                               "Input side S in pixels.")
        .def_property_readonly("dtype", [](const cuda_clip_object& s) {
                return std::string(mmca::cuda::lib::to_string(s.encoder.type()));
            }, "Element type on the device.")
        .def("encode", &cuda_clip_encode, py::arg("images"), py::arg("output") = "last_hidden_state", py::kw_only(),
             py::arg("out") = py::none(),
             "Encodes preprocessed images (N, C, S, S) float32 into hidden state `output` ('last_hidden_state' "
             "or 'penultimate', as mmca.ClipViT.encode), (N, 1 + (S/P)², W) float32 (returned, or written to "
             "`out`), at most 8 images at a time on the device.");

    py::class_<cuda_llama_object> llama_class(m, "LlamaModel", R"doc(
The LLaMa-2 decoder on the GPU: the layer code of mmca.LlamaModel over cuBLAS and mmca's CUDA
kernels, with weights, activations and KV caches in device memory of `dtype`. Inputs and logits are
numpy arrays on the host (float32), exactly as for mmca.LlamaModel.

Parameters
----------
path : str
    A checkpoint folder, .safetensors file or index .json (as mmca.LlamaModel).
dtype : {'float32', 'float16', 'bfloat16'}
    Element type of the weights, activations and KV cache on the device (GEMMs accumulate in
    float32; logits are float32).
context, batch, variant, policy, names, config_path
    As for mmca.LlamaModel (the CUDA model always runs the fused attention).

Gated cross-attention blocks, when the config has them, run on the host (a round trip of the hidden
states per block).
)doc");
    llama_class.def(py::init(&make_cuda_llama), py::arg("path"), py::kw_only(), py::arg("dtype") = "float32",
                    py::arg("context") = 0, py::arg("batch") = 1, py::arg("variant") = "mmca",
                    py::arg("policy") = py::none(), py::arg("names") = "auto", py::arg("config_path") = "")
        .def_property_readonly("dtype", [](cuda_llama_object& s) {
                return std::string(mmca::cuda::lib::to_string(s.visit([](auto& h) { return h.model.type(); })));
            }, "Element type on the device.");
    def_llama_inference(llama_class, "mmca.cuda.LlamaModel");

    py::class_<cuda_visual_chat_object> chat_class(m, "VisualChatModel", R"doc(
The visual-chat model on the GPU: mmca.VisualChatModel's splice, image cache, batch forward and chat
rounds over the GPU decoder (weights, activations and KV caches in device memory of `dtype`), with a
vision encoder (QWen-VL or CLIP) on the device too; the projector runs on the host. Images,
token ids and logits are numpy arrays on the host, exactly as for mmca.VisualChatModel.

Parameters
----------
path : str
    A visual-chat checkpoint (as mmca.VisualChatModel).
dtype : {'float32', 'float16', 'bfloat16'}
    Element type on the device (GEMMs accumulate in float32; logits are float32).
config, variant, policy, batch, context, image_token_id, max_images, image_order, image_cache,
clip_layer, image_size, vision_heads, pool_heads, projector_heads, projector_layer_heads,
projector_act, num_threads
    As for mmca.VisualChatModel (num_threads: the host-side projector and cross blocks).

Training (loss_and_grads) is the CPU model's.
)doc");
    chat_class.def(py::init(&make_cuda_visual_chat), py::arg("path"), py::kw_only(), py::arg("dtype") = "float32",
                   py::arg("config") = "", py::arg("variant") = "mmca", py::arg("policy") = py::none(),
                   py::arg("batch") = 1, py::arg("context") = 0, py::arg("image_token_id") = 32001,
                   py::arg("max_images") = 8, py::arg("image_order") = "in_order", py::arg("image_cache") = 32,
                   py::arg("clip_layer") = "last_hidden_state", py::arg("image_size") = 0,
                   py::arg("vision_heads") = 0, py::arg("pool_heads") = 0, py::arg("projector_heads") = 0,
                   py::arg("projector_layer_heads") = 0, py::arg("projector_act") = "gelu", py::arg("num_threads") = 0)
        .def_property_readonly("dtype", [](cuda_visual_chat_object& s) {
                return std::string(mmca::cuda::lib::to_string(s.visit([](auto& m) { return m.language().type(); })));
            }, "Element type on the device.")
        .def_property_readonly("encoder_on_device", [](cuda_visual_chat_object& s) {
                return s.visit([](auto& m) { return mmca::cuda::lib::encoder_on_device(m); });
            }, "True when the vision encoder runs on the GPU (QWen-VL and CLIP encoders both do).");
    def_visual_chat_inference(chat_class);
}
