// python/src/bind_attention_backward.cpp - mmca.attention_with_stats and mmca.attention_backward:
// the training side of attention (float32 q, k, v), with the argument rules of array_args.hpp.
#include "array_args.hpp"
#include "bindings.hpp"

#include "mmca/attention/attention_backward.hpp"

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace mmca::python {
namespace {

/// The checked arrays of one call: tensors (views of the numpy buffers) and token metadata.
struct checked_call {
    py::array q, k, v;
    py::array types;
    std::optional<py::array> image_ids, kv_lens, q_lens;
    mmca::attention_options options;

    mmca::token_layout tokens() const {
        mmca::token_layout t;
        t.types = metadata_view<std::int8_t, 2>(types);
        t.image_ids = metadata_view<std::int32_t, 2>(image_ids);
        t.kv_lens = metadata_view<std::int32_t, 1>(kv_lens);
        t.q_lens = metadata_view<std::int32_t, 1>(q_lens);
        return t;
    }
};

checked_call check_call(const char* where, const py::object& q, const py::object& k, const py::object& v,
                        const py::object& token_types, const std::string& variant, const py::object& image_ids,
                        const std::optional<std::string>& policy, const std::optional<double>& scale,
                        const py::object& kv_lens, const py::object& q_lens, int num_threads) {
    checked_call c;
    c.options = parse_attention_options(where, variant, policy, scale, num_threads);
    const py::dtype f32 = py::dtype::of<float>();
    c.q = require_tensor(q, {where, "q", 4, "(B, Hq, Lq, D)"}, f32, "float32");
    c.k = require_tensor(k, {where, "k", 4, "(B, Hkv, Lk, D)"}, f32, "float32");
    c.v = require_tensor(v, {where, "v", 4, "(B, Hkv, Lk, D)"}, f32, "float32");
    c.types = integer_metadata<std::int8_t>(token_types, {where, "token_types", 2, "(B, Lk)"},
                                            "0 (pad), 1 (text) or 2 (image)");
    c.image_ids = optional_integer_metadata<std::int32_t>(image_ids, {where, "image_ids", 2, "(B, Lk)"},
                                                          "an image index (int32)");
    c.kv_lens = optional_integer_metadata<std::int32_t>(kv_lens, {where, "kv_lens", 1, "(B,)"}, "a length (int32)");
    c.q_lens = optional_integer_metadata<std::int32_t>(q_lens, {where, "q_lens", 1, "(B,)"}, "a length (int32)");
    return c;
}

std::vector<py::ssize_t> dims(const py::array& a) { return std::vector<py::ssize_t>(a.shape(), a.shape() + a.ndim()); }

/// New (row_max, row_sum, group_out) arrays for q of shape (B, Hq, Lq, D).
py::tuple new_stats(const py::array& q) {
    std::vector<py::ssize_t> rows = dims(q);
    std::vector<py::ssize_t> outs = rows;
    rows[3] = 2;
    outs.insert(outs.begin() + 3, 2);
    return py::make_tuple(py::array_t<float>(rows), py::array_t<float>(rows), py::array_t<float>(outs));
}

mmca::attention_stats stats_view(const py::tuple& s) {
    return mmca::attention_stats(tensor_view<float, 4>(s[0].cast<py::array>()),
                                 tensor_view<float, 4>(s[1].cast<py::array>()),
                                 tensor_view<float, 5>(s[2].cast<py::array>()));
}

mmca::attention_stats_view stats_const_view(const py::tuple& s) {
    return mmca::attention_stats_view(tensor_view<const float, 4>(s[0].cast<py::array>()),
                                      tensor_view<const float, 4>(s[1].cast<py::array>()),
                                      tensor_view<const float, 5>(s[2].cast<py::array>()));
}

py::tuple attention_with_stats(const py::object& q_obj, const py::object& k_obj, const py::object& v_obj,
                               const py::object& token_types, const std::string& variant,
                               const py::object& image_ids, const std::optional<std::string>& policy,
                               const std::optional<double>& scale, const py::object& kv_lens,
                               const py::object& q_lens, int num_threads) {
    constexpr const char* where = "mmca.attention_with_stats";
    const checked_call c = check_call(where, q_obj, k_obj, v_obj, token_types, variant, image_ids, policy, scale,
                                      kv_lens, q_lens, num_threads);
    py::array out = py::array_t<float>(dims(c.q));
    const py::tuple stats = new_stats(c.q);
    const auto q = tensor_view<const float, 4>(c.q);
    const auto k = tensor_view<const float, 4>(c.k);
    const auto v = tensor_view<const float, 4>(c.v);
    const auto o = tensor_view<float, 4>(out);
    const mmca::attention_stats s = stats_view(stats);
    const mmca::token_layout tokens = c.tokens();
    rethrow_as(where, [&] {
        py::gil_scoped_release release;
        mmca::attention_forward_with_stats<float>(q, k, v, tokens, c.options, o, s);
        return 0;
    });
    return py::make_tuple(out, stats);
}

py::tuple attention_backward(const py::object& q_obj, const py::object& k_obj, const py::object& v_obj,
                             const py::object& dout_obj, const py::object& token_types, const std::string& variant,
                             const py::object& image_ids, const std::optional<std::string>& policy,
                             const std::optional<double>& scale, const py::object& kv_lens, const py::object& q_lens,
                             int num_threads, const std::string& impl_name, const py::object& stats_obj) {
    constexpr const char* where = "mmca.attention_backward";
    const checked_call c = check_call(where, q_obj, k_obj, v_obj, token_types, variant, image_ids, policy, scale,
                                      kv_lens, q_lens, num_threads);
    const mmca::attention_impl impl = parse_impl(where, impl_name);
    const py::array dout =
        require_tensor(dout_obj, {where, "dout", 4, "(B, Hq, Lq, D)"}, py::dtype::of<float>(), "float32");

    // The stats: given (from attention_with_stats), or computed here by the fused forward.
    py::tuple stats;
    bool run_forward = false;
    if (!stats_obj.is_none()) {
        if (!py::isinstance<py::tuple>(stats_obj) || py::len(stats_obj) != 3)
            raise_type_error(where, "stats", python_type_text(stats_obj),
                             "None or the tuple (row_max, row_sum, group_out) of mmca.attention_with_stats");
        const py::tuple given = py::reinterpret_borrow<py::tuple>(stats_obj);
        const py::dtype f32 = py::dtype::of<float>();
        stats = py::make_tuple(require_tensor(given[0], {where, "row_max", 4, "(B, Hq, Lq, 2)"}, f32, "float32"),
                               require_tensor(given[1], {where, "row_sum", 4, "(B, Hq, Lq, 2)"}, f32, "float32"),
                               require_tensor(given[2], {where, "group_out", 5, "(B, Hq, Lq, 2, D)"}, f32, "float32"));
    } else if (impl == mmca::attention_impl::fused) {
        stats = new_stats(c.q);
        run_forward = true;
    }

    py::array dq = py::array_t<float>(dims(c.q)), dk = py::array_t<float>(dims(c.k)),
              dv = py::array_t<float>(dims(c.k));
    const auto q = tensor_view<const float, 4>(c.q);
    const auto k = tensor_view<const float, 4>(c.k);
    const auto v = tensor_view<const float, 4>(c.v);
    const auto g = tensor_view<const float, 4>(dout);
    const auto dq_ref = tensor_view<float, 4>(dq);
    const auto dk_ref = tensor_view<float, 4>(dk);
    const auto dv_ref = tensor_view<float, 4>(dv);
    const mmca::attention_stats written = run_forward ? stats_view(stats) : mmca::attention_stats{};
    const mmca::attention_stats_view s = stats.size() == 3 ? stats_const_view(stats) : mmca::attention_stats_view{};
    const mmca::token_layout tokens = c.tokens();
    rethrow_as(where, [&] {
        py::gil_scoped_release release;
        if (run_forward) {
            // Only the stats are needed; the output goes to dq, which the backward overwrites.
            mmca::attention_forward_with_stats<float>(q, k, v, tokens, c.options, dq_ref, written);
        }
        mmca::attention_backward(q, k, v, g, tokens, c.options, s, dq_ref, dk_ref, dv_ref, impl);
        return 0;
    });
    return py::make_tuple(dq, dk, dv);
}

constexpr const char* with_stats_doc = R"doc(
Attention (fused kernel, float32) that also returns what mmca.attention_backward needs.

Arguments as for mmca.attention (q, k, v float32 only; no impl, out or kv_dtype).

Returns
-------
(out, stats)
    out: float32 (B, Hq, Lq, D), the same values as mmca.attention.
    stats: the tuple (row_max, row_sum, group_out) of float32 arrays; per query row and key group
    g (0: the row's own-modality or causal group, 1: the other-modality or cross group):
    row_max (B, Hq, Lq, 2) the largest scaled score of the group (0 for a uniform-average group,
    -inf for an empty one), row_sum (B, Hq, Lq, 2) the sum of exp(S - row_max) over the group, and
    group_out (B, Hq, Lq, 2, D) the group's term of the output.
)doc";

constexpr const char* backward_doc = R"doc(
Gradients of attention: (dq, dk, dv) of the loss sum(dout * out) for out = mmca.attention(...).

Parameters
----------
q, k, v : numpy.ndarray, float32, C-contiguous
    As for mmca.attention: q (B, Hq, Lq, D), k and v (B, Hkv, Lk, D).
dout : numpy.ndarray, float32, C-contiguous, shape (B, Hq, Lq, D)
    Gradient of the loss with respect to the attention output.
token_types, variant, image_ids, policy, scale, kv_lens, q_lens, num_threads
    As for mmca.attention (and the same values as the forward).
impl : str
    'fused' (default) or 'reference' (explicit masks, double precision; ignores stats).
stats : tuple, optional
    (row_max, row_sum, group_out) from mmca.attention_with_stats for the same inputs. When None,
    the fused implementation runs the forward with stats first.

Returns
-------
(dq, dk, dv)
    float32 arrays of the shapes of q, k and v. Grouped-query kv heads sum over their query heads.
    Uniform-average groups (mmca_reference's degenerate rows) send gradient to v only.

Notes
-----
Arrays cross without copies; the GIL is released during the computation; results do not
depend on num_threads.
)doc";

}  // namespace

void register_attention_backward(py::module_& m) {
    m.def("attention_with_stats", &attention_with_stats, with_stats_doc, py::arg("q"), py::arg("k"), py::arg("v"),
          py::arg("token_types"), py::arg("variant"), py::kw_only(), py::arg("image_ids") = py::none(),
          py::arg("policy") = py::none(), py::arg("scale") = py::none(), py::arg("kv_lens") = py::none(),
          py::arg("q_lens") = py::none(), py::arg("num_threads") = 0);
    m.def("attention_backward", &attention_backward, backward_doc, py::arg("q"), py::arg("k"), py::arg("v"),
          py::arg("dout"), py::arg("token_types"), py::arg("variant"), py::kw_only(), py::arg("image_ids") = py::none(),
          py::arg("policy") = py::none(), py::arg("scale") = py::none(), py::arg("kv_lens") = py::none(),
          py::arg("q_lens") = py::none(), py::arg("num_threads") = 0, py::arg("impl") = "fused",
          py::arg("stats") = py::none());
}

}  // namespace mmca::python
