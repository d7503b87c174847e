// python/src/lora_args.hpp - LoRA adapters and decoder gradients as Python dicts (docs/training.md).
//
// Adapters cross as a dict name -> float32 C-contiguous array, PEFT-style names under the
// decoder's layer prefix:  <prefix><l>.self_attn.<p>_proj.lora_A.weight (r, in)  and
// ...lora_B.weight (out, r)  for p in q, k, v, o. The targets are the projections present (the same
// in every layer), the rank is A's first dimension; the scale alpha/r takes alpha separately. The
// values are copied for the call (adapters are small). Cross-block gradients use the checkpoint's
// names: <cross_prefix><b>.{attn_norm.weight, q_proj.weight, ..., attn_gate, mlp_gate}.
#pragma once

#include "array_args.hpp"

#include "mmca/language/lora.hpp"
#include "mmca/language/train.hpp"

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <string>
#include <vector>

namespace mmca::python {

namespace py = pybind11;

inline std::string lora_name(const std::string& prefix, std::size_t layer, std::size_t p, char which) {
    return prefix + std::to_string(layer) + ".self_attn." + mmca::lora_target_names[p] + "_proj.lora_" + which +
           ".weight";
}

inline py::array_t<float> float_array(const std::vector<float>& v, std::vector<py::ssize_t> shape) {
    py::array_t<float> a(shape);
    std::copy(v.begin(), v.end(), a.mutable_data());
    return a;
}

/// Adapters (or their gradients) as a dict.
inline py::dict lora_to_dict(const mmca::llama_lora& l, const std::string& prefix) {
    py::dict d;
    for (std::size_t i = 0; i < l.layers.size(); ++i)
        for (std::size_t p = 0; p < 4; ++p) {
            if (!l.has(p)) continue;
            const auto& ad = l.layers[i][p];
            d[lora_name(prefix, i, p, 'A').c_str()] = float_array(ad.a, {ad.rank, ad.in});
            d[lora_name(prefix, i, p, 'B').c_str()] = float_array(ad.b, {ad.out, ad.rank});
        }
    return d;
}

/// Adapters from a dict (see the file comment); alpha gives the scale alpha/r.
inline mmca::llama_lora lora_from_dict(const char* where, py::handle obj, py::handle alpha_obj,
                                       const mmca::llama_config& c, const std::string& prefix) {
    if (!py::isinstance<py::dict>(obj))
        raise_type_error(where, "lora", python_type_text(obj), "a dict name -> float32 array (or None)");
    if (alpha_obj.is_none())
        raise_value_error(where, "lora_alpha", "None", "a number (the adapters' scale is lora_alpha / rank)");
    const py::dict d = py::reinterpret_borrow<py::dict>(obj);
    mmca::llama_lora l;
    l.config.alpha = py::cast<double>(alpha_obj);
    l.config.targets = 0;
    l.config.rank = 0;
    for (std::size_t p = 0; p < 4; ++p)
        if (d.contains(py::str(lora_name(prefix, 0, p, 'A')))) l.config.targets |= 1u << p;
    if (l.config.targets == 0)
        raise_value_error(where, "lora", "a dict without '" + lora_name(prefix, 0, 0, 'A') + "' (or k/v/o)",
                          "adapters named <layer>.self_attn.<q|k|v|o>_proj.lora_A.weight / lora_B.weight, "
                          "as lora_adapters() returns");
    std::size_t used = 0;
    l.layers.resize(static_cast<std::size_t>(c.num_layers));
    for (std::size_t i = 0; i < l.layers.size(); ++i)
        for (std::size_t p = 0; p < 4; ++p) {
            if (!l.has(p)) continue;
            const auto [in, out] = mmca::detail::lora_projection_shape(c, p);
            auto& ad = l.layers[i][p];
            for (char which : {'A', 'B'}) {
                const std::string name = lora_name(prefix, i, p, which);
                if (!d.contains(py::str(name)))
                    raise_value_error(where, "lora", "no '" + name + "'",
                                      "the same projections adapted in every layer");
                py::array a = require_tensor(d[py::str(name)], {where, "lora", 2, which == 'A' ? "(r, in)" : "(out, r)"},
                                             py::dtype::of<float>(), "float32");
                ++used;
                const std::int64_t r = which == 'A' ? a.shape(0) : a.shape(1);
                if (l.config.rank == 0) l.config.rank = r;
                const std::int64_t want0 = which == 'A' ? l.config.rank : out, want1 = which == 'A' ? in : l.config.rank;
                if (a.shape(0) != want0 || a.shape(1) != want1 || r <= 0)
                    raise_value_error(where, "lora", "'" + name + "' of shape " + shape_text(a),
                                      "shape (" + std::to_string(want0) + ", " + std::to_string(want1) + ")");
                const auto* v = static_cast<const float*>(a.data());
                (which == 'A' ? ad.a : ad.b).assign(v, v + a.size());
            }
            ad.rank = l.config.rank;
            ad.in = in;
            ad.out = out;
        }
    if (used != py::len(d))
        for (auto item : d) {
            const std::string name = py::cast<std::string>(item.first);
            bool known = false;
            for (std::size_t i = 0; i < l.layers.size() && !known; ++i)
                for (std::size_t p = 0; p < 4 && !known; ++p)
                    known = l.has(p) && (name == lora_name(prefix, i, p, 'A') || name == lora_name(prefix, i, p, 'B'));
            if (!known)
                raise_value_error(where, "lora", "an entry '" + name + "'",
                                  "only adapters of this decoder (" + lora_name(prefix, 0, 0, 'A') + ", ...)");
        }
    rethrow_as(where, [&] {
        mmca::check_llama_lora(c, l, "mmca::lora");
        return 0;
    });
    return l;
}

/// The cross blocks' parameter gradients, under the checkpoint's names.
inline void cross_grads_to_dict(py::dict& d, const std::vector<mmca::nn::gated_cross_attention_grads>& g,
                                const mmca::llama_weights& w, const std::string& prefix) {
    for (std::size_t b = 0; b < g.size(); ++b) {
        const auto& x = g[b];
        const auto& wb = w.cross_blocks[b];
        const std::string p = prefix + std::to_string(b) + ".";
        auto mat = [&](const char* name, const std::vector<float>& v, const mmca::nn::matrix_ref& m) {
            d[(p + name).c_str()] = float_array(v, {m.rows, m.cols});
        };
        d[(p + "attn_norm.weight").c_str()] = float_array(x.attn_norm, {static_cast<py::ssize_t>(x.attn_norm.size())});
        mat("q_proj.weight", x.q, wb.q);
        mat("k_proj.weight", x.k, wb.k);
        mat("v_proj.weight", x.v, wb.v);
        mat("o_proj.weight", x.o, wb.o);
        d[(p + "attn_gate").c_str()] = float_array({x.attn_gate}, {1});
        d[(p + "mlp_norm.weight").c_str()] = float_array(x.mlp_norm, {static_cast<py::ssize_t>(x.mlp_norm.size())});
        mat("mlp.gate_proj.weight", x.gate, wb.mlp.gate);
        mat("mlp.up_proj.weight", x.up, wb.mlp.up);
        mat("mlp.down_proj.weight", x.down, wb.mlp.down);
        d[(p + "mlp_gate").c_str()] = float_array({x.mlp_gate}, {1});
    }
}

/// Fresh adapters for a decoder (language/lora.hpp's initialisation), as a dict.
inline py::dict new_lora_dict(const char* where, const mmca::llama_config& c, std::int64_t rank, double alpha,
                              const std::string& targets, std::uint64_t seed, const std::string& prefix) {
    mmca::lora_config lc;
    lc.rank = rank;
    lc.alpha = alpha;
    lc.targets = rethrow_as(where, [&] { return mmca::parse_lora_targets(targets); });
    rethrow_as(where, [&] {
        lc.validate("mmca::lora");
        return 0;
    });
    return lora_to_dict(mmca::make_llama_lora(c, lc, seed), prefix);
}

}  // namespace mmca::python
