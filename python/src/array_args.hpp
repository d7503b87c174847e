// python/src/array_args.hpp - how numpy arguments cross into mmca (shared by every binding).
//
// Two kinds of array arguments, two rules:
//   * Tensors (q, k, v, out, new keys/values): must already be numpy arrays of the exact dtype,
//     C-contiguous, aligned (and writeable for outputs). They are wrapped as tensor_ref views of
//     the numpy buffer. Nothing is ever converted or copied: a wrong dtype is a TypeError, a wrong
//     layout a ValueError, both naming the argument, what was seen and what was expected.
//   * Metadata (token types, image ids, lengths): small integer arrays, accepted in any integer
//     dtype (or as nested lists of ints) and converted to the C++ type (int8 / int32) when needed,
//     after checking that every value fits. Floating-point or boolean metadata is a TypeError.
//
// Error messages follow mmca::invalid_argument's format:
//   "<function>: argument '<name>': got <seen>; expected <expected>"
#pragma once

#include "mmca/language/generation.hpp"
#include "mmca/mmca.hpp"

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <array>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <optional>
#include <string>
#include <type_traits>
#include <vector>

namespace mmca::python {

namespace py = pybind11;

/// The text of an mmca error message (the same format as mmca::invalid_argument).
inline std::string error_text(const std::string& where, const std::string& argument, const std::string& seen,
                              const std::string& expected) {
    return where + ": argument '" + argument + "': got " + seen + "; expected " + expected;
}

/// Raises TypeError (an argument of the wrong Python type or dtype).
[[noreturn]] inline void raise_type_error(const std::string& where, const std::string& argument,
                                          const std::string& seen, const std::string& expected) {
    throw py::type_error(error_text(where, argument, seen, expected));
}

/// Raises ValueError (a bad value, shape or layout) through mmca::invalid_argument.
[[noreturn]] inline void raise_value_error(const std::string& where, const std::string& argument,
                                           const std::string& seen, const std::string& expected) {
    throw mmca::invalid_argument(where, argument, seen, expected);
}

/// Runs parse(), re-raising its mmca::invalid_argument under the Python function's name
/// (the parse_* helpers of the core name themselves as the function).
template <class Parse>
auto rethrow_as(const char* where, Parse&& parse) -> decltype(parse()) {
    try {
        return parse();
    } catch (const mmca::invalid_argument& e) {
        const std::string text = e.what();
        const auto colon = text.find(": argument '");
        throw std::invalid_argument(colon == std::string::npos ? text : where + text.substr(colon));
    }
}

/// "[2, 4, 16, 64]" for an array's shape.
inline std::string shape_text(const py::array& a) {
    std::vector<py::ssize_t> dims(a.shape(), a.shape() + a.ndim());
    return mmca::detail::shape_text(dims);
}

/// "(8192, 2048, 128, 4)" for an array's strides in bytes (as numpy prints them).
inline std::string strides_text(const py::array& a) {
    std::string s = "(";
    for (py::ssize_t d = 0; d < a.ndim(); ++d) s += (d ? ", " : "") + std::to_string(a.strides(d));
    return s + (a.ndim() == 1 ? ",)" : ")");
}

/// numpy's name of a dtype, e.g. "float64" or ">f4" for a byte-swapped float32.
inline std::string dtype_text(const py::dtype& dt) {
    const std::string name = py::str(dt.attr("name")).cast<std::string>();
    const std::string order = py::str(dt.attr("byteorder")).cast<std::string>();
    if (order == ">" || order == "<") return py::str(dt.attr("str")).cast<std::string>();  // non-native order
    return name;
}

/// "a list", "an int": the Python type of a non-array argument.
inline std::string python_type_text(py::handle obj) {
    return "an object of type '" + py::str(py::type::handle_of(obj).attr("__name__")).cast<std::string>() + "'";
}

inline bool same_dtype(const py::dtype& a, const py::dtype& b) {
    return py::detail::npy_api::get().PyArray_EquivTypes_(a.ptr(), b.ptr());
}

/// What a tensor argument must be.
struct tensor_spec {
    const char* where;        ///< public Python name of the function, e.g. "mmca.attention"
    const char* name;         ///< argument name, e.g. "q"
    int ndim;                 ///< required rank
    const char* dims;         ///< dimension names for messages, e.g. "(B, Hq, Lq, D)"
    bool writeable = false;   ///< outputs must be writeable
};

/// Checks that obj is a numpy array of dtype `dtype`, rank spec.ndim, C-contiguous and aligned
/// (and writeable when asked), and returns it. Never converts: see the file comment.
/// dtype_expected is the text for a dtype mismatch, e.g. "float32".
inline py::array require_tensor(py::handle obj, const tensor_spec& spec, const py::dtype& dtype,
                                const std::string& dtype_expected) {
    if (!py::isinstance<py::array>(obj))
        raise_type_error(spec.where, spec.name, python_type_text(obj),
                         "a numpy.ndarray of dtype " + dtype_expected + " " + spec.dims);
    py::array a = py::reinterpret_borrow<py::array>(obj);
    if (!same_dtype(a.dtype(), dtype))
        raise_type_error(spec.where, spec.name, "dtype " + dtype_text(a.dtype()),
                         dtype_expected + " (arrays are never converted; convert with .astype() first)");
    if (a.ndim() != spec.ndim)
        raise_value_error(spec.where, spec.name, std::to_string(a.ndim()) + " dimensions " + shape_text(a),
                          std::to_string(spec.ndim) + " dimensions " + spec.dims);
    if (!(a.flags() & py::array::c_style))
        raise_value_error(spec.where, spec.name,
                          "an array that is not C-contiguous (shape " + shape_text(a) + ", strides " +
                              strides_text(a) + " bytes)",
                          "a C-contiguous array (arrays are never copied; use numpy.ascontiguousarray() first)");
    if (!(a.flags() & py::detail::npy_api::NPY_ARRAY_ALIGNED_))
        raise_value_error(spec.where, spec.name, "an unaligned array", "an array aligned to its element size");
    if (spec.writeable && !a.writeable())
        raise_value_error(spec.where, spec.name, "a read-only array", "a writeable array");
    return a;
}

/// A tensor_ref of rank N over a checked C-contiguous array (no copy). T may be const.
template <class T, std::size_t N>
mmca::tensor_ref<T, N> tensor_view(const py::array& a) {
    std::array<std::int64_t, N> shape{};
    for (std::size_t d = 0; d < N; ++d) shape[d] = static_cast<std::int64_t>(a.shape(static_cast<py::ssize_t>(d)));
    // The buffer's element type was checked against T (same size and bit layout) by require_tensor.
    using raw = std::conditional_t<std::is_const_v<T>, const void*, void*>;
    raw ptr;
    if constexpr (std::is_const_v<T>)
        ptr = a.data();
    else
        ptr = const_cast<py::array&>(a).mutable_data();
    return mmca::tensor_ref<T, N>(static_cast<T*>(ptr), shape);
}

/// Raises ValueError when the bytes of `out` overlap those of `input` (an output may not alias an input).
inline void require_no_overlap(const char* where, const py::array& out, const py::array& input,
                               const char* input_name) {
    if (out.nbytes() == 0 || input.nbytes() == 0) return;
    const auto* o0 = static_cast<const char*>(out.data());
    const auto* i0 = static_cast<const char*>(input.data());
    if (o0 < i0 + input.nbytes() && i0 < o0 + out.nbytes())
        raise_value_error(where, "out", std::string("a buffer that overlaps argument '") + input_name + "'",
                          "an output array that shares no memory with the inputs");
}

namespace detail {

inline std::string element_index_text(const char* name, std::size_t flat, const py::array& a) {
    std::vector<std::size_t> idx(static_cast<std::size_t>(a.ndim()));
    for (py::ssize_t d = a.ndim(); d-- > 0;) {
        const auto extent = static_cast<std::size_t>(a.shape(d));
        idx[static_cast<std::size_t>(d)] = flat % extent;
        flat /= extent;
    }
    std::string s = std::string(name) + "[";
    for (std::size_t d = 0; d < idx.size(); ++d) s += (d ? ", " : "") + std::to_string(idx[d]);
    return s + "]";
}

/// Copies a (C-contiguous, possibly converted) integer array into a new array of Int, checking each value.
template <class Int, class Wide>
py::array narrow_integers(const py::array& a, const char* where, const char* name, const std::string& expected) {
    auto wide = py::array_t<Wide, py::array::c_style | py::array::forcecast>::ensure(a);
    if (!wide) throw py::error_already_set();
    py::array_t<Int> result(std::vector<py::ssize_t>(a.shape(), a.shape() + a.ndim()));
    const Wide* src = wide.data();
    Int* dst = result.mutable_data();
    const auto n = static_cast<std::size_t>(a.size());
    for (std::size_t i = 0; i < n; ++i) {
        const Wide x = src[i];
        bool fits;
        if constexpr (std::is_signed_v<Wide>)
            fits = x >= static_cast<Wide>(std::numeric_limits<Int>::min()) &&
                   x <= static_cast<Wide>(std::numeric_limits<Int>::max());
        else
            fits = x <= static_cast<Wide>(std::numeric_limits<Int>::max());
        if (!fits) raise_value_error(where, name, element_index_text(name, i, a) + " = " + std::to_string(x), expected);
        dst[i] = static_cast<Int>(x);
    }
    return std::move(result);
}

}  // namespace detail

/// Integer metadata (token types, image ids, lengths) as a C-contiguous array of Int: the array
/// itself when it already is one, otherwise a converted copy whose values were checked to fit Int.
/// `expected` describes the valid values, for the message when one does not fit.
template <class Int>
py::array integer_metadata(py::handle obj, const tensor_spec& spec, const std::string& expected) {
    const std::string int_name = std::is_same_v<Int, std::int8_t> ? "int8" : "int32";
    py::array a = py::isinstance<py::array>(obj) ? py::reinterpret_borrow<py::array>(obj) : py::array::ensure(obj);
    if (!a) raise_type_error(spec.where, spec.name, python_type_text(obj), "an integer array " + std::string(spec.dims));
    const char kind = a.dtype().kind();
    if (kind != 'i' && kind != 'u')
        raise_type_error(spec.where, spec.name, "dtype " + dtype_text(a.dtype()),
                         "an integer dtype (converted to " + int_name + ")");
    if (a.ndim() != spec.ndim)
        raise_value_error(spec.where, spec.name, std::to_string(a.ndim()) + " dimensions " + shape_text(a),
                          std::to_string(spec.ndim) + " dimensions " + spec.dims);
    const bool usable = same_dtype(a.dtype(), py::dtype::of<Int>()) && (a.flags() & py::array::c_style) &&
                        (a.flags() & py::detail::npy_api::NPY_ARRAY_ALIGNED_);
    if (usable) return a;
    if (kind == 'u' && a.itemsize() == 8) return detail::narrow_integers<Int, std::uint64_t>(a, spec.where, spec.name, expected);
    return detail::narrow_integers<Int, std::int64_t>(a, spec.where, spec.name, expected);
}

/// Optional metadata: nothing for None.
template <class Int>
std::optional<py::array> optional_integer_metadata(py::handle obj, const tensor_spec& spec,
                                                   const std::string& expected) {
    if (obj.is_none()) return std::nullopt;
    return integer_metadata<Int>(obj, spec, expected);
}

/// A read-only view of checked metadata (an absent tensor_ref when there is none).
template <class Int, std::size_t N>
mmca::tensor_ref<const Int, N> metadata_view(const std::optional<py::array>& a) {
    if (!a) return {};
    return tensor_view<const Int, N>(*a);
}

/// The options of an attention call from its Python arguments: variant and policy names (a policy
/// may only be given for causal_cross, default 'preceding'), scale (None: 1/sqrt(D)), num_threads
/// (0: the default). Bad names or values raise ValueError.
inline mmca::attention_options parse_attention_options(const char* where, const std::string& variant,
                                                       const std::optional<std::string>& policy,
                                                       const std::optional<double>& scale, int num_threads) {
    mmca::attention_options options;
    options.variant = rethrow_as(where, [&] { return mmca::parse_attention_variant(variant); });
    if (policy) {
        options.visibility = rethrow_as(where, [&] { return mmca::parse_image_visibility(*policy); });
        if (options.variant != mmca::attention_variant::causal_cross)
            raise_value_error(where, "policy", "'" + *policy + "' with variant '" + variant + "'",
                              "None (an image visibility policy applies to variant 'causal_cross' only)");
    }
    if (scale) {
        if (!(std::isfinite(*scale) && *scale > 0.0))
            raise_value_error(where, "scale", mmca::detail::to_text(*scale),
                              "a finite value > 0, or None for 1/sqrt(D)");
        options.scale = static_cast<float>(*scale);
        if (!(options.scale > 0.0f && std::isfinite(options.scale)))
            raise_value_error(where, "scale", mmca::detail::to_text(*scale), "a value representable as float32");
    }
    if (num_threads < 0)
        raise_value_error(where, "num_threads", std::to_string(num_threads),
                          "a number of threads >= 1, or 0 for mmca.default_num_threads()");
    options.num_threads = num_threads;
    return options;
}

/// Generation settings of the chat methods (max_new_tokens, temperature, top_k, top_p,
/// repetition_penalty, seed, eos_ids), checked; bad values raise ValueError naming the argument.
inline mmca::generation_options parse_generation_options(const char* where, std::int64_t max_new_tokens,
                                                         float temperature, std::int64_t top_k, float top_p,
                                                         float repetition_penalty, std::uint64_t seed,
                                                         const std::optional<std::vector<std::int32_t>>& eos_ids) {
    mmca::generation_options g;
    if (max_new_tokens < 0)
        raise_value_error(where, "max_new_tokens", std::to_string(max_new_tokens), "a count >= 0");
    g.max_new_tokens = max_new_tokens;
    g.sampling.temperature = temperature;
    g.sampling.top_k = top_k;
    g.sampling.top_p = top_p;
    g.sampling.repetition_penalty = repetition_penalty;
    g.sampling.seed = seed;
    if (eos_ids) g.eos_ids = *eos_ids;
    rethrow_as(where, [&] { g.sampling.validate(where); return 0; });
    return g;
}

/// The attention implementation from its name ('fused' or 'reference').
inline mmca::attention_impl parse_impl(const char* where, const std::string& impl) {
    return rethrow_as(where, [&] { return mmca::parse_attention_impl(impl); });
}

}  // namespace mmca::python
