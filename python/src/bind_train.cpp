// python/src/bind_train.cpp - the trainer's building blocks (docs/training.md): mmca.AdamW,
// mmca.lr_schedule, mmca.warmup_steps_from_ratio, mmca.clip_grad_norm, mmca.save_safetensors,
// mmca.save_train_state and mmca.load_train_state.
//
// Follows docs/python.md: parameters and gradients cross as views (float32, C-contiguous, aligned;
// never copied or converted), the optimizer updates the caller's arrays in place, a wrong dtype
// is TypeError, bad shapes and values ValueError naming the argument, and the GIL is released
// around the element-wise work.
#include "array_args.hpp"
#include "bindings.hpp"

#include "mmca/io/safetensors_writer.hpp"
#include "mmca/train/adamw.hpp"
#include "mmca/train/lr_schedule.hpp"
#include "mmca/train/parameters.hpp"
#include "mmca/train/train_state.hpp"

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace mmca::python {

namespace py = pybind11;

namespace {

/// Checks a float32 array of any rank (C-contiguous, aligned, writeable when asked) and returns it.
py::array require_float32(py::handle obj, const char* where, const std::string& name, bool writeable) {
    if (!py::isinstance<py::array>(obj))
        raise_type_error(where, name, python_type_text(obj), "a numpy.ndarray of dtype float32");
    py::array a = py::reinterpret_borrow<py::array>(obj);
    if (!same_dtype(a.dtype(), py::dtype::of<float>()))
        raise_type_error(where, name, "dtype " + dtype_text(a.dtype()),
                         "float32 (arrays are never converted; convert with .astype() first)");
    if (!(a.flags() & py::array::c_style))
        raise_value_error(where, name,
                          "an array that is not C-contiguous (shape " + shape_text(a) + ", strides " + strides_text(a) +
                              " bytes)",
                          "a C-contiguous array (arrays are never copied; use numpy.ascontiguousarray() first)");
    if (!(a.flags() & py::detail::npy_api::NPY_ARRAY_ALIGNED_))
        raise_value_error(where, name, "an unaligned array", "an array aligned to its element size");
    if (writeable && !a.writeable()) raise_value_error(where, name, "a read-only array", "a writeable array");
    return a;
}

std::vector<std::int64_t> shape_of(const py::array& a) {
    return std::vector<std::int64_t>(a.shape(), a.shape() + a.ndim());
}

/// The (name, array) pairs of a dict (its order) or of a sequence (names "0", "1", ...).
std::vector<std::pair<std::string, py::object>> named_items(py::handle obj, const char* where, const char* name) {
    std::vector<std::pair<std::string, py::object>> out;
    if (py::isinstance<py::dict>(obj)) {
        for (auto kv : py::reinterpret_borrow<py::dict>(obj)) {
            if (!py::isinstance<py::str>(kv.first))
                raise_type_error(where, name, "a key " + python_type_text(kv.first), "str keys (tensor names)");
            out.emplace_back(kv.first.cast<std::string>(), py::reinterpret_borrow<py::object>(kv.second));
        }
        return out;
    }
    if (py::isinstance<py::array>(obj) || py::isinstance<py::str>(obj) || !py::isinstance<py::sequence>(obj))
        raise_type_error(where, name, python_type_text(obj), "a dict of name → array or a list of arrays");
    auto seq = py::reinterpret_borrow<py::sequence>(obj);
    for (std::size_t i = 0; i < seq.size(); ++i) out.emplace_back(std::to_string(i), seq[i]);
    return out;
}

/// Raises ValueError when two of the arrays share memory.
void require_disjoint(const char* where, const char* name, const std::vector<std::pair<std::string, py::array>>& arrays) {
    std::vector<std::pair<const char*, std::size_t>> spans;  // (start, index)
    for (std::size_t i = 0; i < arrays.size(); ++i)
        if (arrays[i].second.nbytes() > 0) spans.emplace_back(static_cast<const char*>(arrays[i].second.data()), i);
    std::sort(spans.begin(), spans.end());
    for (std::size_t k = 1; k < spans.size(); ++k) {
        const auto& prev = arrays[spans[k - 1].second];
        if (spans[k].first < spans[k - 1].first + prev.second.nbytes())
            raise_value_error(where, name,
                              "arrays '" + prev.first + "' and '" + arrays[spans[k].second].first + "' sharing memory",
                              "separate arrays");
    }
}

/// mmca.AdamW: a registry viewing the caller's parameter arrays, and the optimizer's state.
class adamw_object {
public:
    adamw_object(py::handle params, double lr, std::pair<double, double> betas, double eps, double weight_decay,
                 const std::vector<std::string>& no_decay, int num_threads) {
        const char* where = "mmca.AdamW";
        if (num_threads < 0)
            raise_value_error(where, "num_threads", std::to_string(num_threads),
                              "a number of threads >= 1, or 0 for mmca.default_num_threads()");
        std::vector<std::pair<std::string, py::array>> arrays;
        for (auto& item : named_items(params, where, "params"))
            arrays.emplace_back(item.first, require_float32(item.second, where, "params['" + item.first + "']", true));
        require_disjoint(where, "params", arrays);
        registry_ = std::make_unique<train::parameter_registry>();
        rethrow_as(where, [&] {
            for (auto& a : arrays) {
                registry_->add_view(a.first, shape_of(a.second), static_cast<float*>(a.second.mutable_data()), nullptr);
                arrays_.push_back(a.second);
            }
            for (const std::string& n : no_decay) {
                train::parameter* p = registry_->find(n);
                if (!p) raise_value_error(where, "no_decay", "'" + n + "'", "names of parameters");
                p->weight_decay = false;
            }
            train::adamw_options o;
            o.lr = lr;
            o.beta1 = betas.first;
            o.beta2 = betas.second;
            o.eps = eps;
            o.weight_decay = weight_decay;
            optimizer_ = std::make_unique<train::adamw>(*registry_, o, num_threads);
            return 0;
        });
    }

    void step(py::handle grads, std::optional<double> lr) {
        const char* where = "mmca.AdamW.step";
        auto items = named_items(grads, where, "grads");
        if (items.size() != registry_->size())
            raise_value_error(where, "grads", std::to_string(items.size()) + " gradients",
                              std::to_string(registry_->size()) + " (one per parameter)");
        std::vector<py::array> held;  // the checked gradient arrays, alive for the call
        std::vector<float*> pointers(registry_->size(), nullptr);
        const bool by_name = py::isinstance<py::dict>(grads);
        for (std::size_t i = 0; i < items.size(); ++i) {
            std::size_t index = i;
            if (by_name) {
                index = find_index(items[i].first);
                if (index == registry_->size())
                    raise_value_error(where, "grads", "a gradient for '" + items[i].first + "'", "parameter names");
            }
            const train::parameter& p = (*registry_)[index];
            py::array g = require_float32(items[i].second, where, "grads['" + p.name + "']", false);
            if (shape_of(g) != p.shape)
                raise_value_error(where, "grads['" + p.name + "']", "shape " + shape_text(g),
                                  mmca::detail::shape_text(p.shape) + " (the parameter's shape)");
            pointers[index] = const_cast<float*>(static_cast<const float*>(g.data()));
            held.push_back(g);
        }
        const double rate = lr ? *lr : optimizer_->options().lr;
        std::lock_guard<std::mutex> lock(mutex_);
        for (std::size_t i = 0; i < pointers.size(); ++i) (*registry_)[i].grad = pointers[i];
        try {
            py::gil_scoped_release release;
            rethrow_as(where, [&] { optimizer_->step(rate); return 0; });
        } catch (...) {
            for (auto& p : *registry_) p.grad = nullptr;
            throw;
        }
        for (auto& p : *registry_) p.grad = nullptr;
    }

    std::size_t find_index(const std::string& name) const {
        for (std::size_t i = 0; i < registry_->size(); ++i)
            if ((*registry_)[i].name == name) return i;
        return registry_->size();
    }

    /// A read-write numpy view of a moment buffer (kept alive by the optimizer object).
    static py::array moment(py::object self, const std::string& name, bool second) {
        auto& o = self.cast<adamw_object&>();
        const std::size_t i = o.find_index(name);
        if (i == o.registry_->size())
            throw py::key_error(error_text(second ? "mmca.AdamW.exp_avg_sq" : "mmca.AdamW.exp_avg", "name",
                                           "'" + name + "'", "a parameter name"));
        const train::parameter& p = (*o.registry_)[i];
        float* data = second ? o.optimizer_->exp_avg_sq(i) : o.optimizer_->exp_avg(i);
        return py::array(py::dtype::of<float>(), std::vector<py::ssize_t>(p.shape.begin(), p.shape.end()), {}, data, self);
    }

    std::vector<std::string> names() const {
        std::vector<std::string> out;
        for (const auto& p : *registry_) out.push_back(p.name);
        return out;
    }
    py::dict params() const {
        py::dict d;
        for (std::size_t i = 0; i < arrays_.size(); ++i) d[py::str((*registry_)[i].name)] = arrays_[i];
        return d;
    }

    train::parameter_registry& registry() { return *registry_; }
    train::adamw& optimizer() { return *optimizer_; }
    std::mutex& mutex() { return mutex_; }

private:
    std::unique_ptr<train::parameter_registry> registry_;
    std::unique_ptr<train::adamw> optimizer_;
    std::vector<py::array> arrays_;  // the viewed parameter arrays, kept alive
    std::mutex mutex_;
};

/// The safetensors dtype of a numpy array (None when it has none).
std::optional<io::st_dtype> st_dtype_of(const py::array& a) {
    const py::dtype dt = a.dtype();
    const char kind = dt.kind();
    const auto size = dt.itemsize();
    if (py::str(dt.attr("byteorder")).cast<std::string>() == ">") return std::nullopt;  // big-endian data
    if (kind == 'b' && size == 1) return io::st_dtype::BOOL;
    if (kind == 'u') {
        if (size == 1) return io::st_dtype::U8;
        if (size == 2) return io::st_dtype::U16;
        if (size == 4) return io::st_dtype::U32;
        if (size == 8) return io::st_dtype::U64;
    }
    if (kind == 'i') {
        if (size == 1) return io::st_dtype::I8;
        if (size == 2) return io::st_dtype::I16;
        if (size == 4) return io::st_dtype::I32;
        if (size == 8) return io::st_dtype::I64;
    }
    if (kind == 'f') {
        if (size == 2) return io::st_dtype::F16;
        if (size == 4) return io::st_dtype::F32;
        if (size == 8) return io::st_dtype::F64;
    }
    return std::nullopt;
}

void save_safetensors(const std::string& path, py::handle tensors, const std::optional<std::map<std::string, std::string>>& metadata,
                      const std::optional<std::map<std::string, std::string>>& dtypes) {
    const char* where = "mmca.save_safetensors";
    if (!py::isinstance<py::dict>(tensors))
        raise_type_error(where, "tensors", python_type_text(tensors), "a dict of name → numpy.ndarray");
    io::safetensors_writer w;
    std::vector<py::array> held;
    std::map<std::string, std::string> overrides = dtypes.value_or(std::map<std::string, std::string>{});
    for (auto& item : named_items(tensors, where, "tensors")) {
        const std::string& name = item.first;
        const std::string arg = "tensors['" + name + "']";
        if (!py::isinstance<py::array>(item.second))
            raise_type_error(where, arg, python_type_text(item.second), "a numpy.ndarray");
        py::array a = py::reinterpret_borrow<py::array>(item.second);
        std::optional<io::st_dtype> t = st_dtype_of(a);
        if (!t)
            raise_type_error(where, arg, "dtype " + dtype_text(a.dtype()),
                             "bool, (u)int8/16/32/64 or float16/32/64 in native byte order");
        auto o = overrides.find(name);
        if (o != overrides.end()) {
            if (o->second == "BF16" && *t == io::st_dtype::U16)
                t = io::st_dtype::BF16;
            else if (o->second != io::st_dtype_name(*t))
                raise_value_error(where, "dtypes", "'" + name + "': '" + o->second + "' for an array of dtype " + dtype_text(a.dtype()),
                                  "'BF16' for a uint16 array of bfloat16 bits (or the array's own safetensors dtype)");
            overrides.erase(o);
        }
        if (!(a.flags() & py::array::c_style))
            raise_value_error(where, arg, "an array that is not C-contiguous (strides " + strides_text(a) + " bytes)",
                              "a C-contiguous array (arrays are never copied; use numpy.ascontiguousarray() first)");
        rethrow_as(where, [&] { w.add(name, *t, shape_of(a), a.data()); return 0; });
        held.push_back(a);
    }
    if (!overrides.empty())
        raise_value_error(where, "dtypes", "'" + overrides.begin()->first + "'", "names of tensors in `tensors`");
    if (metadata)
        for (const auto& kv : *metadata) w.set_metadata(kv.first, kv.second);
    py::gil_scoped_release release;
    rethrow_as(where, [&] { w.write(path); return 0; });
}

double lr_schedule(std::int64_t step, double base_lr, std::int64_t total_steps, std::int64_t warmup_steps,
                   std::optional<double> warmup_ratio, double min_lr, double num_cycles) {
    const char* where = "mmca.lr_schedule";
    return rethrow_as(where, [&] {
        train::cosine_schedule s;
        s.base_lr = base_lr;
        s.total_steps = total_steps;
        s.warmup_steps = warmup_steps;
        if (warmup_ratio) {
            if (warmup_steps != 0)
                raise_value_error(where, "warmup_ratio", mmca::detail::to_text(*warmup_ratio) + " with warmup_steps = " +
                                                             std::to_string(warmup_steps),
                                  "either warmup_steps or warmup_ratio");
            s.warmup_steps = train::warmup_steps_from_ratio(*warmup_ratio, total_steps);
        }
        s.min_lr = min_lr;
        s.num_cycles = num_cycles;
        s.validate(where);
        return s.lr(step);
    });
}

double clip_grad_norm(py::handle grads, double max_norm, int num_threads) {
    const char* where = "mmca.clip_grad_norm";
    if (num_threads < 0)
        raise_value_error(where, "num_threads", std::to_string(num_threads),
                          "a number of threads >= 1, or 0 for mmca.default_num_threads()");
    std::vector<std::pair<std::string, py::array>> arrays;
    for (auto& item : named_items(grads, where, "grads"))
        arrays.emplace_back(item.first, require_float32(item.second, where, "grads['" + item.first + "']", true));
    require_disjoint(where, "grads", arrays);
    std::vector<train::float_span> spans;
    for (auto& a : arrays)
        spans.push_back(train::float_span{static_cast<float*>(a.second.mutable_data()), static_cast<std::int64_t>(a.second.size())});
    py::gil_scoped_release release;
    return rethrow_as(where, [&] { return train::clip_grad_norm(spans, max_norm, num_threads); });
}

void save_train_state(const std::string& path, adamw_object& opt, std::int64_t epoch, std::int64_t data_position,
                      const std::optional<std::string>& rng_state, const std::optional<std::map<std::string, std::string>>& config) {
    const char* where = "mmca.save_train_state";
    train::train_state s;
    s.epoch = epoch;
    s.data_position = data_position;
    if (rng_state && !train::detail::parse_rng(*rng_state, s.rng))
        raise_value_error(where, "rng_state", "text that is not a std::mt19937_64 state",
                          "None, or a state returned by mmca.load_train_state");
    if (config) s.config = *config;
    std::lock_guard<std::mutex> lock(opt.mutex());
    py::gil_scoped_release release;
    rethrow_as(where, [&] { train::save_train_state(path, opt.registry(), opt.optimizer(), s); return 0; });
}

py::dict load_train_state(const std::string& path, adamw_object& opt) {
    const char* where = "mmca.load_train_state";
    train::train_state s;
    {
        std::lock_guard<std::mutex> lock(opt.mutex());
        py::gil_scoped_release release;
        rethrow_as(where, [&] { train::load_train_state(path, opt.registry(), opt.optimizer(), s); return 0; });
    }
    py::dict d;
    d["step"] = opt.optimizer().step_count();
    d["epoch"] = s.epoch;
    d["data_position"] = s.data_position;
    d["rng_state"] = train::detail::rng_text(s.rng);
    d["config"] = s.config;
    return d;
}

}  // namespace

void register_train(py::module_& m) {
    py::class_<adamw_object>(m, "AdamW", R"doc(
AdamW with decoupled weight decay, as torch.optim.AdamW (amsgrad off), updating numpy float32
parameters in place (docs/training.md).

Parameters
----------
params : dict of str → numpy.ndarray, or list of numpy.ndarray
    float32, C-contiguous, writeable arrays; viewed, never copied (they are kept alive by the
    optimizer and updated in place). A list names its arrays "0", "1", ...
lr : float
    Learning rate of step() calls without one (default 1e-3).
betas : (float, float)
    Moment decays (default (0.9, 0.95), the reference's).
eps : float
    Added to the bias-corrected √v (default 1e-8).
weight_decay : float
    Decoupled decay p ← p·(1 − lr·wd) before the update (default 0).
no_decay : list of str
    Names of parameters without weight decay.
num_threads : int
    Threads per step (0: mmca.default_num_threads()); results do not depend on it.

Raises
------
TypeError
    An array of another dtype, or params of the wrong type.
ValueError
    A non-contiguous, unaligned or read-only array, arrays sharing memory, a bad hyperparameter.
)doc")
        .def(py::init([](py::handle params, double lr, std::pair<double, double> betas, double eps, double weight_decay,
                         const std::vector<std::string>& no_decay, int num_threads) {
                 return std::make_unique<adamw_object>(params, lr, betas, eps, weight_decay, no_decay, num_threads);
             }),
             py::arg("params"), py::kw_only(), py::arg("lr") = 1e-3, py::arg("betas") = std::make_pair(0.9, 0.95),
             py::arg("eps") = 1e-8, py::arg("weight_decay") = 0.0, py::arg("no_decay") = std::vector<std::string>{},
             py::arg("num_threads") = 0)
        .def("step", &adamw_object::step, py::arg("grads"), py::kw_only(), py::arg("lr") = py::none(), R"doc(
One update of every parameter in place.

Parameters
----------
grads : dict of str → numpy.ndarray, or list of numpy.ndarray
    float32, C-contiguous gradients, one per parameter with its shape (read, never copied).
lr : float, optional
    This update's learning rate (e.g. from mmca.lr_schedule); default: the optimizer's lr.
)doc")
        .def_property(
            "step_count", [](adamw_object& o) { return o.optimizer().step_count(); },
            [](adamw_object& o, std::int64_t n) { rethrow_as("mmca.AdamW.step_count", [&] { o.optimizer().set_step_count(n); return 0; }); },
            "Updates taken so far (the next update uses t = step_count + 1).")
        .def_property(
            "lr", [](adamw_object& o) { return o.optimizer().options().lr; },
            [](adamw_object& o, double lr) { rethrow_as("mmca.AdamW.lr", [&] { o.optimizer().set_lr(lr); return 0; }); },
            "Learning rate of step() calls without one.")
        .def_property_readonly("betas", [](adamw_object& o) {
                return std::make_pair(o.optimizer().options().beta1, o.optimizer().options().beta2); }, "(β1, β2).")
        .def_property_readonly("eps", [](adamw_object& o) { return o.optimizer().options().eps; }, "eps.")
        .def_property_readonly("weight_decay", [](adamw_object& o) { return o.optimizer().options().weight_decay; },
                               "Decoupled weight decay.")
        .def_property_readonly("names", &adamw_object::names, "Parameter names, in order.")
        .def_property_readonly("params", &adamw_object::params, "The parameter arrays (the caller's), by name.")
        .def("exp_avg", [](py::object self, const std::string& name) { return adamw_object::moment(self, name, false); },
             py::arg("name"), "A view of the first moment m of a parameter (float32, its shape).")
        .def("exp_avg_sq", [](py::object self, const std::string& name) { return adamw_object::moment(self, name, true); },
             py::arg("name"), "A view of the second moment v of a parameter (float32, its shape).");

    m.def("lr_schedule", &lr_schedule, py::arg("step"), py::arg("base_lr"), py::arg("total_steps"), py::kw_only(),
          py::arg("warmup_steps") = 0, py::arg("warmup_ratio") = py::none(), py::arg("min_lr") = 0.0,
          py::arg("num_cycles") = 0.5, R"doc(
The learning rate of the update taken after `step` updates: linear warm-up then cosine decay, as
transformers.get_cosine_schedule_with_warmup (4.33.3) (bit for bit with min_lr = 0).

Parameters
----------
step : int
    Updates already taken (>= 0); the first update uses step 0.
base_lr : float
total_steps : int
    Updates of the whole run.
warmup_steps : int
    Warm-up updates (lr · step / warmup_steps).
warmup_ratio : float, optional
    Warm-up as a fraction of total_steps, ⌈ratio · total_steps⌉ (instead of warmup_steps).
min_lr : float
    Floor of the cosine phase: min_lr + (base_lr − min_lr) · 0.5 · (1 + cos(π · 2 · num_cycles · progress)).
num_cycles : float
    Cosine periods over the decay (0.5: one half period).
)doc");
    m.def("warmup_steps_from_ratio", [](double ratio, std::int64_t total_steps) {
              return rethrow_as("mmca.warmup_steps_from_ratio", [&] { return train::warmup_steps_from_ratio(ratio, total_steps); });
          },
          py::arg("ratio"), py::arg("total_steps"),
          "Warm-up steps for a fraction of the run: ceil(ratio * total_steps), as transformers' TrainingArguments.");
    m.def("clip_grad_norm", &clip_grad_norm, py::arg("grads"), py::arg("max_norm"), py::kw_only(), py::arg("num_threads") = 0,
          R"doc(
Clips gradients in place by their global L2 norm, as torch.nn.utils.clip_grad_norm_: with the norm
over all arrays (accumulated in double), scale = max_norm / (norm + 1e-6) multiplies every
gradient when it is < 1. Returns the norm before clipping (a non-finite norm leaves the arrays alone).

Parameters
----------
grads : dict of str → numpy.ndarray, or list of numpy.ndarray
    float32, C-contiguous, writeable, not sharing memory.
max_norm : float
    > 0.
)doc");
    m.def("save_safetensors", &save_safetensors, py::arg("path"), py::arg("tensors"), py::arg("metadata") = py::none(),
          py::kw_only(), py::arg("dtypes") = py::none(), R"doc(
Writes numpy arrays as a safetensors file, atomically (a temporary file in the same folder, fsynced
and renamed over `path`; on failure the previous file stays as it was).

Parameters
----------
path : str
tensors : dict of str → numpy.ndarray
    C-contiguous arrays of dtype bool, (u)int8/16/32/64 or float16/32/64 (written without copies).
metadata : dict of str → str, optional
    The "__metadata__" map.
dtypes : dict of str → str, optional
    'BF16' for uint16 arrays that hold bfloat16 bits.
)doc");
    m.def("save_train_state", &save_train_state, py::arg("path"), py::arg("optimizer"), py::kw_only(),
          py::arg("epoch") = 0, py::arg("data_position") = 0, py::arg("rng_state") = py::none(),
          py::arg("config") = py::none(), R"doc(
Saves the optimizer's parameters, moments and step count with the run's epoch, data position,
random state (text of a C++ std::mt19937_64; None: a default-seeded engine) and config strings
to one safetensors file (docs/training.md gives the layout), atomically.
)doc");
    m.def("load_train_state", &load_train_state, py::arg("path"), py::arg("optimizer"), R"doc(
Loads a file of save_train_state into the optimizer's parameter arrays (in place), moments and
step count, after checking every tensor's presence, dtype and shape and the hyperparameters.
Returns {'step', 'epoch', 'data_position', 'rng_state', 'config'}. On error nothing is changed.
)doc");
}

}  // namespace mmca::python
