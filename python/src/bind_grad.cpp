// python/src/bind_grad.cpp - mmca.grad: the backward passes of the trainable path (docs/training.md).
//
// Each function takes the forward's inputs and the gradient of its output, and returns new float32
// arrays with the gradients of the inputs and parameters. Inputs follow docs/python.md: numpy arrays
// of the exact dtype, C-contiguous, never copied (TypeError for a wrong dtype, ValueError for a bad
// shape, both naming the argument); the GIL is released around the computation.
#include "array_args.hpp"
#include "bindings.hpp"

#include "mmca/io/checkpoint.hpp"
#include "mmca/io/projector_loader.hpp"
#include "mmca/nn/activation.hpp"
#include "mmca/nn/grad/activation_backward.hpp"
#include "mmca/nn/grad/dense_attention_backward.hpp"
#include "mmca/nn/grad/embedding_backward.hpp"
#include "mmca/nn/grad/linear_backward.hpp"
#include "mmca/nn/grad/loss.hpp"
#include "mmca/nn/grad/mlp_backward.hpp"
#include "mmca/nn/grad/norm_backward.hpp"
#include "mmca/nn/grad/rope_backward.hpp"
#include "mmca/nn/lora.hpp"
#include "mmca/vision/projector_backward.hpp"

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cmath>
#include <optional>
#include <string>
#include <vector>

namespace mmca::python {

namespace py = pybind11;

namespace {

using f32 = py::array_t<float>;

py::array f32_tensor(py::handle obj, const char* where, const char* name, int ndim, const char* dims) {
    return require_tensor(obj, tensor_spec{where, name, ndim, dims}, py::dtype::of<float>(), "float32");
}

template <std::size_t N>
mmca::tensor_ref<const float, N> cview(const py::array& a) {
    return tensor_view<const float, N>(a);
}

f32 zeros(std::vector<py::ssize_t> shape) {
    f32 a(shape);
    std::fill(a.mutable_data(), a.mutable_data() + a.size(), 0.0f);
    return a;
}

template <std::size_t N>
mmca::tensor_ref<float, N> mview(f32& a) {
    return tensor_view<float, N>(a);
}

void check_threads(const char* where, int num_threads) {
    if (num_threads < 0)
        raise_value_error(where, "num_threads", std::to_string(num_threads),
                          "a number of threads >= 1, or 0 for mmca.default_num_threads()");
}

/// A weight matrix [out, in]: float32, float16, or uint16 holding bfloat16 bits.
mmca::nn::matrix_ref weight_matrix(py::handle obj, const char* where, const char* name, py::array& keep) {
    const char* expected = "a numpy.ndarray [out, in] of dtype float32, float16, or uint16 (bfloat16 bits)";
    if (!py::isinstance<py::array>(obj)) raise_type_error(where, name, python_type_text(obj), expected);
    py::array a = py::reinterpret_borrow<py::array>(obj);
    mmca::dtype t;
    if (same_dtype(a.dtype(), py::dtype::of<float>()))
        t = mmca::dtype::float32;
    else if (same_dtype(a.dtype(), py::dtype("float16")))
        t = mmca::dtype::float16;
    else if (same_dtype(a.dtype(), py::dtype::of<std::uint16_t>()))
        t = mmca::dtype::bfloat16;
    else
        raise_type_error(where, name, "dtype " + dtype_text(a.dtype()),
                         "float32, float16, or uint16 holding bfloat16 bits (arrays are never converted)");
    keep = require_tensor(a, tensor_spec{where, name, 2, "[out, in]"}, a.dtype(), dtype_text(a.dtype()));
    return mmca::nn::matrix_ref{t, keep.data(), keep.shape(0), keep.shape(1)};
}

py::tuple linear_backward(py::handle x_obj, py::handle w_obj, py::handle dy_obj, bool weight_grad, bool bias_grad,
                          int num_threads) {
    const char* where = "mmca.grad.linear_backward";
    check_threads(where, num_threads);
    py::array keep;
    const auto W = weight_matrix(w_obj, where, "weight", keep);
    py::array x = f32_tensor(x_obj, where, "x", 2, "(N, in)");
    py::array dy = f32_tensor(dy_obj, where, "dy", 2, "(N, out)");
    if (x.shape(0) != dy.shape(0) || x.shape(1) != W.cols)
        raise_value_error(where, "x", shape_text(x), "(N, " + std::to_string(W.cols) + ") with N = dy's rows");
    f32 dx({x.shape(0), x.shape(1)});
    py::object dw = py::none(), db = py::none();
    f32 dwa, dba;
    if (weight_grad) dw = dwa = zeros({W.rows, W.cols});
    if (bias_grad) db = dba = zeros({W.rows});
    {
        py::gil_scoped_release release;
        mmca::nn::linear_backward(cview<2>(x), W, cview<2>(dy), mview<2>(dx), weight_grad ? dwa.mutable_data() : nullptr,
                                  bias_grad ? dba.mutable_data() : nullptr, num_threads);
    }
    return py::make_tuple(dx, dw, db);
}

py::tuple rmsnorm_backward(py::handle x_obj, py::handle w_obj, py::handle dy_obj, float eps, int num_threads) {
    const char* where = "mmca.grad.rmsnorm_backward";
    check_threads(where, num_threads);
    py::array x = f32_tensor(x_obj, where, "x", 2, "(N, H)");
    py::array w = f32_tensor(w_obj, where, "weight", 1, "(H)");
    py::array dy = f32_tensor(dy_obj, where, "dy", 2, "(N, H)");
    if (w.shape(0) != x.shape(1)) raise_value_error(where, "weight", shape_text(w), "(" + std::to_string(x.shape(1)) + ")");
    f32 dx({x.shape(0), x.shape(1)});
    f32 dw = zeros({x.shape(1)});
    py::gil_scoped_release release;
    mmca::nn::rmsnorm_backward(cview<2>(x), static_cast<const float*>(w.data()), eps, cview<2>(dy), mview<2>(dx),
                               dw.mutable_data(), num_threads);
    py::gil_scoped_acquire acquire;
    return py::make_tuple(dx, dw);
}

py::tuple layernorm_backward(py::handle x_obj, py::handle w_obj, py::handle dy_obj, float eps, int num_threads) {
    const char* where = "mmca.grad.layernorm_backward";
    check_threads(where, num_threads);
    py::array x = f32_tensor(x_obj, where, "x", 2, "(N, D)");
    py::array w = f32_tensor(w_obj, where, "weight", 1, "(D)");
    py::array dy = f32_tensor(dy_obj, where, "dy", 2, "(N, D)");
    if (w.shape(0) != x.shape(1)) raise_value_error(where, "weight", shape_text(w), "(" + std::to_string(x.shape(1)) + ")");
    f32 dx({x.shape(0), x.shape(1)});
    f32 dw = zeros({x.shape(1)}), db = zeros({x.shape(1)});
    py::gil_scoped_release release;
    mmca::nn::layernorm_backward(cview<2>(x), static_cast<const float*>(w.data()), eps, cview<2>(dy), mview<2>(dx),
                                 dw.mutable_data(), db.mutable_data(), num_threads);
    py::gil_scoped_acquire acquire;
    return py::make_tuple(dx, dw, db);
}

py::tuple swiglu_backward(py::handle x_obj, py::handle g_obj, py::handle u_obj, py::handle d_obj, py::handle dy_obj,
                          int num_threads) {
    const char* where = "mmca.grad.swiglu_backward";
    check_threads(where, num_threads);
    py::array kg, ku, kd;
    mmca::nn::swiglu_weights w{weight_matrix(g_obj, where, "gate", kg), weight_matrix(u_obj, where, "up", ku),
                               weight_matrix(d_obj, where, "down", kd)};
    py::array x = f32_tensor(x_obj, where, "x", 2, "(N, H)");
    py::array dy = f32_tensor(dy_obj, where, "dy", 2, "(N, H)");
    if (x.shape(1) != w.gate.cols) raise_value_error(where, "x", shape_text(x), "(N, " + std::to_string(w.gate.cols) + ")");
    f32 dx({x.shape(0), x.shape(1)});
    f32 dg = zeros({w.gate.rows, w.gate.cols}), du = zeros({w.up.rows, w.up.cols}), dd = zeros({w.down.rows, w.down.cols});
    {
        py::gil_scoped_release release;
        mmca::nn::swiglu_backward_scratch s;
        rethrow_as(where, [&] {
            mmca::nn::swiglu_backward(cview<2>(x), w, cview<2>(dy), mview<2>(dx),
                                      {dg.mutable_data(), du.mutable_data(), dd.mutable_data()}, s, num_threads);
            return 0;
        });
    }
    return py::make_tuple(dx, dg, du, dd);
}

f32 rope_backward(py::handle dy_obj, py::handle pos_obj, std::int64_t heads, std::int64_t head_dim, double theta,
                  const std::string& scaling, double factor, std::int64_t max_positions,
                  std::optional<std::int64_t> total_len) {
    const char* where = "mmca.grad.rope_backward";
    py::array dy = f32_tensor(dy_obj, where, "dy", 2, "(L, heads * head_dim)");
    if (heads <= 0 || head_dim <= 0 || head_dim % 2 || dy.shape(1) != heads * head_dim)
        raise_value_error(where, "dy", shape_text(dy),
                          "(L, heads * head_dim) = (L, " + std::to_string(heads * head_dim) + ") with an even head_dim");
    auto pos = py::array_t<std::int64_t, py::array::c_style | py::array::forcecast>::ensure(pos_obj);
    if (!pos || pos.ndim() != 1 || pos.shape(0) != dy.shape(0))
        raise_value_error(where, "positions", pos ? shape_text(pos) : python_type_text(pos_obj),
                          "(" + std::to_string(dy.shape(0)) + ") integer positions");
    mmca::nn::rope_config cfg;
    cfg.head_dim = head_dim;
    cfg.theta = theta;
    if (scaling == "none") cfg.scaling = mmca::nn::rope_scaling_type::none;
    else if (scaling == "linear") cfg.scaling = mmca::nn::rope_scaling_type::linear;
    else if (scaling == "dynamic") cfg.scaling = mmca::nn::rope_scaling_type::dynamic;
    else raise_value_error(where, "scaling", "'" + scaling + "'", "'none', 'linear' or 'dynamic'");
    cfg.factor = factor;
    cfg.max_positions = max_positions;
    const std::int64_t L = dy.shape(0);
    std::int64_t total = L;
    if (total_len) total = *total_len;
    else
        for (std::int64_t i = 0; i < L; ++i) total = std::max(total, pos.data()[i] + 1);
    f32 dx({dy.shape(0), dy.shape(1)});
    std::copy_n(static_cast<const float*>(dy.data()), dy.size(), dx.mutable_data());
    mmca::nn::rope_table table;
    rethrow_as(where, [&] {
        mmca::nn::rope_build(cfg, pos.data(), L, total, table);
        return 0;
    });
    mmca::nn::rope_apply_backward(dx.mutable_data(), heads * head_dim, heads, table);
    return dx;
}

f32 activation_backward(py::handle x_obj, py::handle dy_obj, const std::string& act, int num_threads) {
    const char* where = "mmca.grad.activation_backward";
    check_threads(where, num_threads);
    py::array x = f32_tensor(x_obj, where, "x", 1, "(n) flattened pre-activations");
    py::array dy = f32_tensor(dy_obj, where, "dy", 1, "(n)");
    if (dy.shape(0) != x.shape(0)) raise_value_error(where, "dy", shape_text(dy), shape_text(x) + " like x");
    f32 dx({x.shape(0)});
    const float* xs = static_cast<const float*>(x.data());
    const float* ds = static_cast<const float*>(dy.data());
    if (act == "silu") {
        for (py::ssize_t i = 0; i < x.shape(0); ++i) dx.mutable_data()[i] = ds[i] * mmca::nn::silu_derivative(xs[i]);
        return dx;
    }
    const auto a = rethrow_as(where, [&] { return mmca::nn::parse_activation(act); });
    py::gil_scoped_release release;
    mmca::nn::activation_backward(a, xs, ds, dx.mutable_data(), x.shape(0), num_threads);
    py::gil_scoped_acquire acquire;
    return dx;
}

py::tuple cross_entropy(py::handle logits_obj, py::handle labels_obj, double normalizer, int num_threads) {
    const char* where = "mmca.grad.cross_entropy";
    check_threads(where, num_threads);
    py::array logits = f32_tensor(logits_obj, where, "logits", 2, "(L, V)");
    py::array labels = integer_metadata<std::int32_t>(labels_obj, tensor_spec{where, "labels", 1, "(L)"},
                                                      "-100 or a token id");
    if (labels.shape(0) != logits.shape(0))
        raise_value_error(where, "labels", shape_text(labels), "(" + std::to_string(logits.shape(0)) + ") like logits' rows");
    f32 d({logits.shape(0), logits.shape(1)});
    const auto* lab = static_cast<const std::int32_t*>(labels.data());
    mmca::nn::cross_entropy_result r;
    {
        py::gil_scoped_release release;
        r = rethrow_as(where, [&] {
            return mmca::nn::cross_entropy_forward_backward(cview<2>(logits), lab, mview<2>(d), normalizer, num_threads);
        });
    }
    return py::make_tuple(r.loss, d);
}

f32 embedding_backward(py::handle ids_obj, py::handle dy_obj, std::int64_t vocab, int num_threads) {
    const char* where = "mmca.grad.embedding_backward";
    check_threads(where, num_threads);
    py::array ids = integer_metadata<std::int32_t>(ids_obj, tensor_spec{where, "ids", 1, "(n)"}, "a token id");
    py::array dy = f32_tensor(dy_obj, where, "dy", 2, "(n, H)");
    if (vocab <= 0) raise_value_error(where, "vocab", std::to_string(vocab), "a positive vocabulary size");
    f32 dt = zeros({vocab, dy.shape(1)});
    const auto* id = static_cast<const std::int32_t*>(ids.data());
    rethrow_as(where, [&] {
        mmca::nn::embedding_backward(id, ids.shape(0), cview<2>(dy), mview<2>(dt), num_threads);
        return 0;
    });
    return dt;
}

py::tuple dense_attention_backward(py::handle q_obj, py::handle k_obj, py::handle v_obj, py::handle dout_obj,
                                   std::int64_t heads, std::optional<double> scale, int num_threads) {
    const char* where = "mmca.grad.dense_attention_backward";
    check_threads(where, num_threads);
    py::array q = f32_tensor(q_obj, where, "q", 2, "(Lq, heads * D)");
    py::array k = f32_tensor(k_obj, where, "k", 2, "(Lk, heads * D)");
    py::array v = f32_tensor(v_obj, where, "v", 2, "(Lk, heads * D)");
    py::array dout = f32_tensor(dout_obj, where, "dout", 2, "(Lq, heads * D)");
    const std::int64_t W = q.shape(1);
    if (heads <= 0 || W % heads) raise_value_error(where, "heads", std::to_string(heads), "a divisor of q's width");
    for (const py::array* a : {&k, &v})
        if (a->shape(1) != W || a->shape(0) != k.shape(0))
            raise_value_error(where, a == &k ? "k" : "v", shape_text(*a), "(Lk, " + std::to_string(W) + ")");
    const std::int64_t D = W / heads, Lq = q.shape(0), Lk = k.shape(0);
    const float sc = scale ? static_cast<float>(*scale) : 1.0f / std::sqrt(static_cast<float>(D));
    f32 dq({Lq, W}), dk({Lk, W}), dv({Lk, W});
    {
        py::gil_scoped_release release;
        rethrow_as(where, [&] {
            mmca::nn::dense_attention_backward(
                {static_cast<const float*>(q.data()), Lq, W, D, 0}, {static_cast<const float*>(k.data()), Lk, W, D, 0},
                {static_cast<const float*>(v.data()), Lk, W, D, 0}, heads, D, sc, cview<2>(dout),
                {dq.mutable_data(), Lq, W, D, 0}, {dk.mutable_data(), Lk, W, D, 0}, {dv.mutable_data(), Lk, W, D, 0},
                num_threads);
            return 0;
        });
    }
    return py::make_tuple(dq, dk, dv);
}

py::array to_array(const std::vector<float>& v, std::vector<py::ssize_t> shape) {
    f32 a(shape);
    std::copy(v.begin(), v.end(), a.mutable_data());
    return std::move(a);
}

/// The gradients of a projector under its checkpoint tensor names (relative to the prefix).
py::dict projector_grads_dict(const mmca::vision::projector& p, mmca::vision::projector_grads& g) {
    py::dict d;
    for (const auto& n : mmca::vision::named_projector_gradients(p, g))
        d[n.name.c_str()] = to_array(*n.values, std::vector<py::ssize_t>(n.shape.begin(), n.shape.end()));
    return d;
}

py::tuple projector_backward(const std::string& path, py::handle x_obj, py::handle dy_obj, const std::string& prefix,
                             const std::string& kind, std::optional<std::int64_t> input_tokens, bool has_cls,
                             std::int64_t heads, std::int64_t vit_heads, const std::string& vit_act, double vit_eps,
                             int num_threads) {
    const char* where = "mmca.grad.projector_backward";
    check_threads(where, num_threads);
    py::array x = f32_tensor(x_obj, where, "x", 3, "(N, T, Dv)");
    py::array dy = f32_tensor(dy_obj, where, "dy", 3, "(N, T', H)");
    mmca::vision::projector_config base;
    if (kind != "auto") base.kind = rethrow_as(where, [&] { return mmca::vision::parse_projector_kind(kind); });
    base.has_cls = has_cls;
    base.heads = heads;
    base.layer.heads = vit_heads;
    base.layer.eps = static_cast<float>(vit_eps);
    base.layer.act = rethrow_as(where, [&] { return mmca::nn::parse_activation(vit_act); });
    const auto ckpt = mmca::io::checkpoint::open(path);
    if (kind == "auto") base.kind = mmca::io::detect_projector_kind(ckpt, prefix);
    mmca::vision::projector_config config = mmca::io::deduce_projector_config(ckpt, prefix, base);
    config.input_tokens = input_tokens ? *input_tokens : config.queries + (has_cls ? 1 : 0);
    const auto p = mmca::io::load_projector(ckpt, prefix, config);
    const std::int64_t N = x.shape(0), T = x.shape(1), H = config.hidden;
    const std::int64_t To = rethrow_as(where, [&] { return p.output_tokens(T); });
    if (dy.shape(0) != N || dy.shape(1) != To || dy.shape(2) != H)
        raise_value_error(where, "dy", shape_text(dy),
                          "(" + std::to_string(N) + ", " + std::to_string(To) + ", " + std::to_string(H) + ")");
    f32 y({N, To, H}), dx({x.shape(0), x.shape(1), x.shape(2)});
    mmca::vision::projector_grads g = mmca::vision::make_projector_grads(p);
    {
        py::gil_scoped_release release;
        rethrow_as(where, [&] {
            mmca::vision::projector_tape tape;
            mmca::vision::projector_forward_tape(p, cview<3>(x), mview<3>(y), tape, num_threads);
            mmca::vision::projector_backward(p, tape, cview<3>(dy), mview<3>(dx), g, num_threads);
            return 0;
        });
    }
    return py::make_tuple(y, dx, projector_grads_dict(p, g));
}

py::array lora_merge(py::handle w_obj, py::handle a_obj, py::handle b_obj, double alpha) {
    const char* where = "mmca.grad.lora_merge";
    py::array keep;
    const mmca::nn::matrix_ref w = weight_matrix(w_obj, where, "weight", keep);
    py::array a = f32_tensor(a_obj, where, "lora_a", 2, "(r, in)");
    py::array b = f32_tensor(b_obj, where, "lora_b", 2, "(out, r)");
    if (a.shape(1) != w.cols || a.shape(0) <= 0)
        raise_value_error(where, "lora_a", "shape " + shape_text(a), "(r, " + std::to_string(w.cols) + ") with r > 0");
    if (b.shape(0) != w.rows || b.shape(1) != a.shape(0))
        raise_value_error(where, "lora_b", "shape " + shape_text(b),
                          "(" + std::to_string(w.rows) + ", " + std::to_string(a.shape(0)) + ")");
    if (!std::isfinite(alpha)) raise_value_error(where, "alpha", std::to_string(alpha), "a finite number");
    mmca::nn::lora_adapter ad;
    ad.rank = a.shape(0);
    ad.in = w.cols;
    ad.out = w.rows;
    ad.a.assign(static_cast<const float*>(a.data()), static_cast<const float*>(a.data()) + a.size());
    ad.b.assign(static_cast<const float*>(b.data()), static_cast<const float*>(b.data()) + b.size());
    f32 out({static_cast<py::ssize_t>(w.rows), static_cast<py::ssize_t>(w.cols)});
    {
        py::gil_scoped_release release;
        const auto merged = mmca::nn::lora_merge(w, ad, static_cast<float>(alpha / static_cast<double>(ad.rank)));
        std::copy(merged.begin(), merged.end(), out.mutable_data());
    }
    return out;
}

}  // namespace

void register_grad(py::module_& m) {
    py::module_ g = m.def_submodule("grad", "Backward passes of the trainable path (docs/training.md).");
    g.def("lora_merge", &lora_merge, py::arg("weight"), py::arg("lora_a"), py::arg("lora_b"), py::kw_only(),
          py::arg("alpha"),
          "W + (alpha / r) * B @ A as a new float32 [out, in] array (W float32, float16 or bfloat16 bits).");
    g.def("linear_backward", &linear_backward, py::arg("x"), py::arg("weight"), py::arg("dy"), py::kw_only(),
          py::arg("weight_grad") = true, py::arg("bias_grad") = true, py::arg("num_threads") = 0,
          "Gradients of y = x·weightᵀ + b: (dx (N, in), dweight [out, in] or None, dbias (out) or None). weight is "
          "float32, float16, or uint16 holding bfloat16 bits.");
    g.def("rmsnorm_backward", &rmsnorm_backward, py::arg("x"), py::arg("weight"), py::arg("dy"), py::kw_only(),
          py::arg("eps") = 1e-5f, py::arg("num_threads") = 0, "Gradients of RMSNorm: (dx, dweight).");
    g.def("layernorm_backward", &layernorm_backward, py::arg("x"), py::arg("weight"), py::arg("dy"), py::kw_only(),
          py::arg("eps") = 1e-5f, py::arg("num_threads") = 0, "Gradients of LayerNorm: (dx, dweight, dbias).");
    g.def("swiglu_backward", &swiglu_backward, py::arg("x"), py::arg("gate"), py::arg("up"), py::arg("down"),
          py::arg("dy"), py::kw_only(), py::arg("num_threads") = 0,
          "Gradients of down(silu(gate(x)) * up(x)): (dx, dgate, dup, ddown).");
    g.def("rope_backward", &rope_backward, py::arg("dy"), py::arg("positions"), py::kw_only(), py::arg("heads"),
          py::arg("head_dim"), py::arg("theta") = 10000.0, py::arg("scaling") = "none", py::arg("factor") = 1.0,
          py::arg("max_positions") = 2048, py::arg("total_len") = py::none(),
          "Gradient of the rotary embedding of (L, heads*head_dim) rows (HF rotate-half pairing). total_len "
          "(dynamic scaling) defaults to max(positions) + 1.");
    g.def("activation_backward", &activation_backward, py::arg("x"), py::arg("dy"), py::kw_only(),
          py::arg("activation") = "gelu", py::arg("num_threads") = 0,
          "dy * act'(x) for 'gelu' (exact), 'gelu_new'/'gelu_pytorch_tanh', 'quick_gelu' or 'silu'.");
    g.def("cross_entropy", &cross_entropy, py::arg("logits"), py::arg("labels"), py::kw_only(),
          py::arg("normalizer") = 0.0, py::arg("num_threads") = 0,
          "Shifted cross-entropy (row t predicts labels[t+1], -100 ignored, token mean): (loss, dlogits).");
    g.def("embedding_backward", &embedding_backward, py::arg("ids"), py::arg("dy"), py::kw_only(), py::arg("vocab"),
          py::arg("num_threads") = 0, "Scatter-add of dy (n, H) into a zero (vocab, H) table.");
    g.def("dense_attention_backward", &dense_attention_backward, py::arg("q"), py::arg("k"), py::arg("v"),
          py::arg("dout"), py::kw_only(), py::arg("heads"), py::arg("scale") = py::none(), py::arg("num_threads") = 0,
          "Gradients (dq, dk, dv) of bidirectional multi-head attention (heads side by side in each row).");
    g.def("projector_backward", &projector_backward, py::arg("path"), py::arg("x"), py::arg("dy"), py::kw_only(),
          py::arg("prefix") = "projection.", py::arg("kind") = "auto", py::arg("input_tokens") = py::none(),
          py::arg("has_cls") = false, py::arg("heads") = 0, py::arg("vit_heads") = 16, py::arg("vit_act") = "gelu",
          py::arg("vit_eps") = 1e-5, py::arg("num_threads") = 0,
          "Forward and backward of the projector stored at path (arguments as mmca.Projector): (y, dx, grads), "
          "grads a dict from checkpoint tensor names (without the prefix) to float32 gradients.");
}

}  // namespace mmca::python
