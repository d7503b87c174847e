// python/src/kv_cache_bindings.cpp - mmca.KVCache: mmca::kv_cache<T> for float32, float16 and bfloat16 storage.
#include "array_args.hpp"
#include "bindings.hpp"

#include <algorithm>
#include <mutex>
#include <optional>
#include <string>
#include <type_traits>
#include <variant>

namespace mmca::python {
namespace {

using any_cache = std::variant<mmca::kv_cache<float>, mmca::kv_cache<mmca::float16>, mmca::kv_cache<mmca::bfloat16>>;

any_cache make_cache(std::int64_t batch, std::int64_t kv_heads, std::int64_t capacity, std::int64_t head_dim,
                     const std::string& dtype) {
    if (dtype == "float32") return mmca::kv_cache<float>(batch, kv_heads, capacity, head_dim);
    if (dtype == "float16") return mmca::kv_cache<mmca::float16>(batch, kv_heads, capacity, head_dim);
    if (dtype == "bfloat16") return mmca::kv_cache<mmca::bfloat16>(batch, kv_heads, capacity, head_dim);
    raise_value_error("mmca.KVCache", "dtype", "'" + dtype + "'", "'float32', 'float16' or 'bfloat16'");
}

/// The dtype name from a string or anything numpy.dtype() accepts (numpy has no bfloat16: pass the string).
std::string dtype_name(py::handle dtype) {
    if (py::isinstance<py::str>(dtype)) return dtype.cast<std::string>();
    try {
        return py::str(py::dtype::from_args(py::reinterpret_borrow<py::object>(dtype)).attr("name")).cast<std::string>();
    } catch (const py::error_already_set&) {
        raise_type_error("mmca.KVCache", "dtype", python_type_text(dtype),
                         "'float32', 'float16', 'bfloat16' or a numpy dtype");
    }
}

/// numpy dtype of the cache's storage as seen from Python (bfloat16 bits appear as uint16).
template <class T>
py::dtype storage_dtype() {
    if constexpr (std::is_same_v<T, float>)
        return py::dtype::of<float>();
    else if constexpr (std::is_same_v<T, mmca::float16>)
        return py::dtype("float16");
    else
        return py::dtype::of<std::uint16_t>();
}

/// The Python-side object: one cache of a storage type chosen at run time.
///
/// The GIL is released while appending and computing attention, so two Python threads could
/// reach the same cache at once; the mutex serialises every access to the cache's state. It is
/// only ever taken with the GIL released, and let go before the GIL is taken back, so the two
/// locks cannot deadlock and a thread waiting for the cache does not stall other Python threads.
class kv_cache_object {
public:
    kv_cache_object(std::int64_t batch, std::int64_t kv_heads, std::int64_t capacity, std::int64_t head_dim,
                    std::string dtype)
        : cache_(make_cache(batch, kv_heads, capacity, head_dim, dtype)), dtype_(std::move(dtype)) {}

    const std::string& dtype() const { return dtype_; }

    /// Calls f(cache) with the concrete kv_cache<T>, holding the mutex.
    template <class F>
    decltype(auto) locked(F&& f) {
        std::lock_guard<std::mutex> lock(mutex_);
        return std::visit(std::forward<F>(f), cache_);
    }

    /// Calls f(cache) without locking: for the sizes, which never change.
    template <class F>
    decltype(auto) visit(F&& f) const {
        return std::visit(std::forward<F>(f), cache_);
    }

private:
    any_cache cache_;
    std::string dtype_;
    std::mutex mutex_;
};

std::int64_t batch_of(const kv_cache_object& c) {
    return c.visit([](const auto& cache) { return cache.batch(); });
}

void append(kv_cache_object& self, const py::object& k_obj, const py::object& v_obj,
            const py::object& token_types_obj, const py::object& image_ids_obj, const py::object& lens_obj) {
    constexpr const char* where = "mmca.KVCache.append";
    const py::array k = require_tensor(k_obj, {where, "k", 4, "(B, Hkv, Ln, D)"}, py::dtype::of<float>(), "float32");
    const py::array v = require_tensor(v_obj, {where, "v", 4, "(B, Hkv, Ln, D)"}, py::dtype::of<float>(), "float32");
    const py::array types = integer_metadata<std::int8_t>(token_types_obj, {where, "token_types", 2, "(B, Ln)"},
                                                          "0 (pad), 1 (text) or 2 (image)");
    const auto image_ids = optional_integer_metadata<std::int32_t>(
        image_ids_obj, {where, "image_ids", 2, "(B, Ln)"}, "an image index (int32)");
    const auto lens =
        optional_integer_metadata<std::int32_t>(lens_obj, {where, "lens", 1, "(B,)"}, "a count of tokens (int32)");

    const auto k_ref = tensor_view<const float, 4>(k);
    const auto v_ref = tensor_view<const float, 4>(v);
    const auto types_ref = metadata_view<std::int8_t, 2>(types);
    const auto ids_ref = metadata_view<std::int32_t, 2>(image_ids);
    const auto lens_ref = metadata_view<std::int32_t, 1>(lens);
    py::gil_scoped_release release;
    self.locked([&](auto& cache) { cache.append(k_ref, v_ref, types_ref, ids_ref, lens_ref); });
}

py::array attention(kv_cache_object& self, const py::object& q_obj, const std::string& variant,
                    const std::optional<std::string>& policy, const std::optional<double>& scale,
                    const std::string& impl_name, int num_threads, const py::object& out_obj) {
    constexpr const char* where = "mmca.KVCache.attention";
    const mmca::attention_options options = parse_attention_options(where, variant, policy, scale, num_threads);
    const mmca::attention_impl impl = parse_impl(where, impl_name);
    const py::array q = require_tensor(q_obj, {where, "q", 4, "(B, Hq, Lq, D)"}, py::dtype::of<float>(), "float32");
    py::array out;
    if (out_obj.is_none()) {
        out = py::array_t<float>(std::vector<py::ssize_t>(q.shape(), q.shape() + q.ndim()));
    } else {
        out = require_tensor(out_obj, {where, "out", 4, "(B, Hq, Lq, D)", true}, py::dtype::of<float>(), "float32");
        require_no_overlap(where, out, q, "q");
    }
    const auto q_ref = tensor_view<const float, 4>(q);
    const auto out_ref = tensor_view<float, 4>(out);
    {
        py::gil_scoped_release release;
        self.locked([&](auto& cache) { mmca::attention_forward(q_ref, cache, options, out_ref, impl); });
    }
    return out;
}

/// A read-only numpy view of the keys or values storage (B, Hkv, capacity, D); its base is the
/// KVCache object, so the cache lives at least as long as any view of it.
py::array storage_view(py::object self_obj, bool keys) {
    auto& self = self_obj.cast<kv_cache_object&>();
    py::array view = self.visit([&](const auto& cache) {
        using T = typename std::decay_t<decltype(cache)>::value_type;
        const auto ref = keys ? cache.keys() : cache.values();
        std::vector<py::ssize_t> shape(4), strides(4);
        for (std::size_t d = 0; d < 4; ++d) {
            shape[d] = static_cast<py::ssize_t>(ref.shape[d]);
            strides[d] = static_cast<py::ssize_t>(ref.strides[d] * static_cast<std::int64_t>(sizeof(T)));
        }
        return py::array(storage_dtype<T>(), shape, strides, static_cast<const void*>(ref.data), self_obj);
    });
    view.attr("setflags")(py::arg("write") = false);  // the cache is written through append() only
    return view;
}

py::array lengths_of(kv_cache_object& self, bool last_appended) {
    std::vector<std::int64_t> counts;
    {
        py::gil_scoped_release release;
        self.locked([&](const auto& cache) {
            for (std::int64_t b = 0; b < cache.batch(); ++b)
                counts.push_back(last_appended ? cache.last_appended(b) : cache.length(b));
        });
    }
    py::array_t<std::int64_t> result(static_cast<py::ssize_t>(counts.size()));
    std::copy(counts.begin(), counts.end(), result.mutable_data());
    return std::move(result);
}

std::int64_t checked_sequence(const kv_cache_object& self, std::int64_t b, const char* where) {
    const std::int64_t batch = batch_of(self);
    if (b < 0 || b >= batch)
        throw py::index_error(error_text(where, "b", std::to_string(b),
                                         "a sequence index in [0, " + std::to_string(batch) + ")"));
    return b;
}

constexpr const char* class_doc = R"doc(
Keys, values and token metadata of past tokens, for decoding (wraps mmca::kv_cache<T>).

KVCache(batch, kv_heads, capacity, head_dim, dtype="float32")

Holds, per sequence of a batch, up to ``capacity`` tokens: keys and values of shape
(batch, kv_heads, capacity, head_dim) stored as float32, float16 or bfloat16, with their token
types and image indices. ``append()`` adds new tokens (a prompt, a chunk of one, or one decoded
token); ``attention()`` then computes attention for exactly those new tokens over everything cached.
Prefilling at once, in chunks or token by token gives the same rows, except where a variant lets a
row see keys that come after it (mmca_reference's rows before the first image, causal_cross with
policy 'all'): those rows see the keys present when they are computed.

``dtype`` is 'float32', 'float16' or 'bfloat16' (or numpy.float32 / numpy.float16).
)doc";

constexpr const char* append_doc = R"doc(
Appends new tokens to every sequence.

Parameters
----------
k, v : numpy.ndarray, float32, C-contiguous, shape (batch, kv_heads, Ln, head_dim)
    Keys and values of the new tokens (converted to the cache's storage type while copied in).
token_types : integer array-like (batch, Ln)
    0 pad, 1 text, 2 image.
image_ids : integer array-like (batch, Ln), optional
    Image index of each new image token; default: each run of image tokens is a new image,
    numbered after those already cached.
lens : integer array-like (batch,), optional
    Sequence b takes its first lens[b] new tokens (default Ln).

Everything is checked before anything is written: a failed append (ValueError, e.g. more tokens
than the capacity left) leaves the cache as it was. The GIL is released while copying.
)doc";

constexpr const char* attention_doc = R"doc(
Attention for the tokens of the latest append() over everything cached.

Parameters
----------
q : numpy.ndarray, float32, C-contiguous, shape (batch, Hq, Lq, head_dim)
    Queries of the new tokens: row i of sequence b is its i-th new token; Lq must be at least
    the largest count appended; Hq a multiple of kv_heads.
variant, policy, scale, impl, num_threads, out :
    As for mmca.attention.

Returns
-------
numpy.ndarray
    ``out`` if given, otherwise a new float32 array of q's shape. Rows beyond a sequence's
    appended count are 0.
)doc";

}  // namespace

void register_kv_cache(py::module_& m) {
    py::class_<kv_cache_object>(m, "KVCache", class_doc)
        .def(py::init([](std::int64_t batch, std::int64_t kv_heads, std::int64_t capacity, std::int64_t head_dim,
                         const py::object& dtype) {
                 return new kv_cache_object(batch, kv_heads, capacity, head_dim, dtype_name(dtype));
             }),
             py::arg("batch"), py::arg("kv_heads"), py::arg("capacity"), py::arg("head_dim"),
             py::arg("dtype") = "float32")
        .def("append", &append, append_doc, py::arg("k"), py::arg("v"), py::arg("token_types"), py::kw_only(),
             py::arg("image_ids") = py::none(), py::arg("lens") = py::none())
        .def("attention", &attention, attention_doc, py::arg("q"), py::arg("variant"), py::kw_only(),
             py::arg("policy") = py::none(), py::arg("scale") = py::none(), py::arg("impl") = "fused",
             py::arg("num_threads") = 0, py::arg("out") = py::none())
        .def(
            "length",
            [](kv_cache_object& self, std::int64_t b) {
                checked_sequence(self, b, "mmca.KVCache.length");
                py::gil_scoped_release release;
                return self.locked([&](const auto& cache) { return cache.length(b); });
            },
            py::arg("b"), "Tokens cached for sequence b.")
        .def(
            "clear",
            [](kv_cache_object& self) {
                py::gil_scoped_release release;
                self.locked([](auto& cache) { cache.clear(); });
            },
            "Forgets every cached token (the capacity and storage stay).")
        .def_property_readonly(
            "lengths", [](kv_cache_object& self) { return lengths_of(self, false); },
            "Tokens cached per sequence: a new int64 array of shape (batch,).")
        .def_property_readonly(
            "last_appended", [](kv_cache_object& self) { return lengths_of(self, true); },
            "Tokens added per sequence by the latest append(): a new int64 array of shape (batch,).")
        .def_property_readonly(
            "keys", [](py::object self) { return storage_view(std::move(self), true); },
            "Read-only view (no copy) of the key storage, shape (batch, kv_heads, capacity, head_dim):\n"
            "float32, float16, or uint16 holding bfloat16 bits. Positions >= length(b) hold stale or zero\n"
            "data. The view keeps the cache alive and shows later appends.")
        .def_property_readonly(
            "values", [](py::object self) { return storage_view(std::move(self), false); },
            "Read-only view (no copy) of the value storage; see keys.")
        .def_property_readonly(
            "capacity", [](const kv_cache_object& self) { return self.visit([](const auto& c) { return c.capacity(); }); },
            "Tokens each sequence can hold.")
        .def_property_readonly(
            "batch", [](const kv_cache_object& self) { return batch_of(self); }, "Number of sequences.")
        .def_property_readonly(
            "kv_heads", [](const kv_cache_object& self) { return self.visit([](const auto& c) { return c.kv_heads(); }); },
            "Number of key/value heads.")
        .def_property_readonly(
            "head_dim", [](const kv_cache_object& self) { return self.visit([](const auto& c) { return c.head_dim(); }); },
            "Head dimension D.")
        .def_property_readonly("dtype", &kv_cache_object::dtype,
                               "Storage type name: 'float32', 'float16' or 'bfloat16'.")
        .def("__repr__", [](const kv_cache_object& self) {
            return self.visit([&](const auto& c) {
                return "mmca.KVCache(batch=" + std::to_string(c.batch()) + ", kv_heads=" + std::to_string(c.kv_heads()) +
                       ", capacity=" + std::to_string(c.capacity()) + ", head_dim=" + std::to_string(c.head_dim()) +
                       ", dtype='" + self.dtype() + "')";
            });
        });
}

}  // namespace mmca::python
