// python/src/attention_bindings.cpp - mmca.attention: one attention call on numpy arrays.
#include "array_args.hpp"
#include "bindings.hpp"

#include <optional>
#include <string>

namespace mmca::python {
namespace {

constexpr const char* where = "mmca.attention";

/// The storage type of keys and values, from k's dtype and the kv_dtype keyword.
enum class kv_storage : std::uint8_t { float32, float16, bfloat16 };

kv_storage resolve_kv_storage(py::handle k, const std::optional<std::string>& kv_dtype) {
    if (kv_dtype) {
        if (*kv_dtype == "float32") return kv_storage::float32;
        if (*kv_dtype == "float16") return kv_storage::float16;
        if (*kv_dtype == "bfloat16") return kv_storage::bfloat16;
        raise_value_error(where, "kv_dtype", "'" + *kv_dtype + "'",
                          "None (from k's dtype), 'float32', 'float16' or 'bfloat16'");
    }
    if (py::isinstance<py::array>(k)) {
        const py::dtype dt = py::reinterpret_borrow<py::array>(k).dtype();
        if (same_dtype(dt, py::dtype("float16"))) return kv_storage::float16;
        if (same_dtype(dt, py::dtype::of<std::uint16_t>()))
            raise_type_error(where, "k", "dtype uint16 without kv_dtype",
                             "float32 or float16; for bfloat16 bits stored as uint16 pass kv_dtype='bfloat16'");
    }
    return kv_storage::float32;  // anything else is checked (and refused) as float32 below
}

struct kv_dtype_info {
    py::dtype dtype;
    std::string expected;
};

kv_dtype_info kv_dtype_of(kv_storage s, const std::optional<std::string>& kv_dtype) {
    switch (s) {
        case kv_storage::float16:
            return {py::dtype("float16"), kv_dtype ? "float16 (kv_dtype='float16')" : "float16 (the dtype of k)"};
        case kv_storage::bfloat16:
            return {py::dtype::of<std::uint16_t>(), "uint16 holding bfloat16 bits (kv_dtype='bfloat16')"};
        case kv_storage::float32:
            break;
    }
    return {py::dtype::of<float>(), kv_dtype ? "float32 (kv_dtype='float32')" : "float32 or float16"};
}

template <class KV>
void run_attention(const py::array& q, const py::array& k, const py::array& v, const mmca::token_layout& tokens,
                   const mmca::attention_options& options, const py::array& out, mmca::attention_impl impl) {
    const auto q_ref = tensor_view<const float, 4>(q);
    const auto k_ref = tensor_view<const KV, 4>(k);
    const auto v_ref = tensor_view<const KV, 4>(v);
    const auto out_ref = tensor_view<float, 4>(out);
    py::gil_scoped_release release;  // every Python object is checked; only raw buffers are used from here on
    mmca::attention_forward<KV>(q_ref, k_ref, v_ref, tokens, options, out_ref, impl);
}

py::array attention(const py::object& q_obj, const py::object& k_obj, const py::object& v_obj,
                    const py::object& token_types_obj, const std::string& variant, const py::object& image_ids_obj,
                    const std::optional<std::string>& policy, const std::optional<double>& scale,
                    const std::string& impl_name, const py::object& kv_lens_obj, const py::object& q_lens_obj,
                    int num_threads, const py::object& out_obj,
                    const std::optional<std::string>& kv_dtype) {
    // Names and options first: they are cheap and their errors are the most likely ones.
    const mmca::attention_options options = parse_attention_options(where, variant, policy, scale, num_threads);
    const mmca::attention_impl impl = parse_impl(where, impl_name);

    const py::array q = require_tensor(q_obj, {where, "q", 4, "(B, Hq, Lq, D)"}, py::dtype::of<float>(), "float32");
    const kv_storage storage = resolve_kv_storage(k_obj, kv_dtype);
    const kv_dtype_info kv = kv_dtype_of(storage, kv_dtype);
    const py::array k = require_tensor(k_obj, {where, "k", 4, "(B, Hkv, Lk, D)"}, kv.dtype, kv.expected);
    const py::array v = require_tensor(v_obj, {where, "v", 4, "(B, Hkv, Lk, D)"}, kv.dtype,
                                       dtype_text(k.dtype()) + " (the dtype of k)");

    const py::array types = integer_metadata<std::int8_t>(token_types_obj, {where, "token_types", 2, "(B, Lk)"},
                                                          "0 (pad), 1 (text) or 2 (image)");
    const auto image_ids = optional_integer_metadata<std::int32_t>(
        image_ids_obj, {where, "image_ids", 2, "(B, Lk)"}, "an image index (int32)");
    const auto kv_lens =
        optional_integer_metadata<std::int32_t>(kv_lens_obj, {where, "kv_lens", 1, "(B,)"}, "a length (int32)");
    const auto q_lens =
        optional_integer_metadata<std::int32_t>(q_lens_obj, {where, "q_lens", 1, "(B,)"}, "a length (int32)");

    py::array out;
    if (out_obj.is_none()) {
        out = py::array_t<float>(std::vector<py::ssize_t>(q.shape(), q.shape() + q.ndim()));
    } else {
        out = require_tensor(out_obj, {where, "out", 4, "(B, Hq, Lq, D)", true}, py::dtype::of<float>(), "float32");
        require_no_overlap(where, out, q, "q");
        require_no_overlap(where, out, k, "k");
        require_no_overlap(where, out, v, "v");
        require_no_overlap(where, out, types, "token_types");
        if (image_ids) require_no_overlap(where, out, *image_ids, "image_ids");
        if (kv_lens) require_no_overlap(where, out, *kv_lens, "kv_lens");
        if (q_lens) require_no_overlap(where, out, *q_lens, "q_lens");
    }

    mmca::token_layout tokens;
    tokens.types = metadata_view<std::int8_t, 2>(types);
    tokens.image_ids = metadata_view<std::int32_t, 2>(image_ids);
    tokens.kv_lens = metadata_view<std::int32_t, 1>(kv_lens);
    tokens.q_lens = metadata_view<std::int32_t, 1>(q_lens);

    switch (storage) {
        case kv_storage::float32: run_attention<float>(q, k, v, tokens, options, out, impl); break;
        case kv_storage::float16: run_attention<mmca::float16>(q, k, v, tokens, options, out, impl); break;
        case kv_storage::bfloat16: run_attention<mmca::bfloat16>(q, k, v, tokens, options, out, impl); break;
    }
    return out;
}

constexpr const char* attention_doc = R"doc(
Multi-modal attention of one layer, for a batch of interleaved text/image sequences.

Computes, for every query row, the attention variant ``variant`` of the mmca library
(SPEC §2) and returns the float32 output ``[B, Hq, Lq, D]``.

Parameters
----------
q : numpy.ndarray, float32, C-contiguous, shape (B, Hq, Lq, D)
    Queries. Query row i of sequence b is the token at position ``kv_lens[b] - q_lens[b] + i``.
k, v : numpy.ndarray, shape (B, Hkv, Lk, D), C-contiguous
    Keys and values, float32 or float16 (both the same dtype); with ``kv_dtype='bfloat16'``,
    uint16 arrays holding bfloat16 bit patterns. Hq must be a multiple of Hkv (grouped-query
    attention); D <= 256.
token_types : integer array-like, shape (B, Lk)
    0 pad, 1 text, 2 image per key position (any integer dtype; converted to int8).
variant : str
    One of ``mmca.variants``: 'causal', 'mmca', 'mmca_reference', 'causal_cross'.
image_ids : integer array-like (B, Lk), optional
    Image index of each image token (converted to int32). Default: each run of image tokens
    is one image.
policy : str, optional
    Image visibility for 'causal_cross': 'all', 'preceding' (default) or 'latest'. Giving a
    policy with another variant is a ValueError.
scale : float, optional
    Score scale; default 1/sqrt(D).
impl : str
    'fused' (the fast kernel, default) or 'reference' (the explicit-mask oracle).
kv_lens, q_lens : integer array-like (B,), optional
    Valid keys / query rows per sequence (right padding); default Lk / Lq.
num_threads : int
    Threads for the fused kernel; 0 means ``mmca.default_num_threads()``.
out : numpy.ndarray, float32, C-contiguous, writeable, shape (B, Hq, Lq, D), optional
    Output buffer, written in place and returned. Must not overlap any input.
kv_dtype : str, optional
    'float32', 'float16' or 'bfloat16'; default: the dtype of k.

Returns
-------
numpy.ndarray
    ``out`` if given, otherwise a new float32 array of q's shape.

Raises
------
TypeError
    q, k, v or out is not a numpy array of the expected dtype (arrays are never converted),
    or metadata is not integer.
ValueError
    Non-C-contiguous or read-only tensors, bad shapes, names or values (the message names the
    argument, the value seen and what was expected).

Notes
-----
q, k, v and out cross without copies; the GIL is released during the computation.
)doc";

}  // namespace

void register_attention(py::module_& m) {
    m.def("attention", &attention, attention_doc, py::arg("q"), py::arg("k"), py::arg("v"), py::arg("token_types"),
          py::arg("variant"), py::kw_only(), py::arg("image_ids") = py::none(), py::arg("policy") = py::none(),
          py::arg("scale") = py::none(), py::arg("impl") = "fused", py::arg("kv_lens") = py::none(),
          py::arg("q_lens") = py::none(), py::arg("num_threads") = 0, py::arg("out") = py::none(),
          py::arg("kv_dtype") = py::none());
}

}  // namespace mmca::python
