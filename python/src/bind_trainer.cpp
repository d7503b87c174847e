// python/src/bind_trainer.cpp - mmca.Trainer and mmca.ConversationData (mmca/train/trainer.hpp,
// mmca/train/conversation_data.hpp; docs/training.md, "The trainer").
//
// A Trainer holds float32 copies of the trainable tensors of a VisualChatModel (which then uses
// them) and steps AdamW over a data set: a ConversationData (the blended conversation format) or
// a list of examples {ids, labels, images}. Steps and evaluations release the GIL and hold the
// model's lock.
#include "array_args.hpp"
#include "text_args.hpp"
#include "bindings.hpp"
#include "visual_chat_object.hpp"

#include "mmca/text/tokenizer.hpp"
#include "mmca/train/conversation_data.hpp"
#include "mmca/train/trainer.hpp"

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <memory>
#include <optional>
#include <string>
#include <variant>
#include <vector>

namespace mmca::python {

namespace py = pybind11;

namespace {

using conversation_data = mmca::train::conversation_dataset<mmca::text::tokenizer>;

std::string fs_path(const py::handle& p) { return py::str(py::module_::import("os").attr("fspath")(p)); }

std::vector<std::int32_t> int_list(py::handle obj, const char* where, const std::string& argument) {
    py::array_t<std::int32_t, py::array::c_style | py::array::forcecast> a;
    try {
        a = py::array_t<std::int32_t, py::array::c_style | py::array::forcecast>::ensure(obj);
    } catch (const py::error_already_set&) {
    }
    if (!a || a.ndim() != 1)
        raise_type_error(where, argument, std::string(py::str(py::type::of(obj).attr("__name__"))), "a 1-D sequence of integers");
    return std::vector<std::int32_t>(a.data(), a.data() + a.size());
}

/// A list of dicts {ids, labels, images: (n, 3, S, S) float32 or None} as in-memory examples.
std::shared_ptr<mmca::train::example_list> examples_of(py::handle list, const char* where) {
    auto out = std::make_shared<mmca::train::example_list>();
    std::size_t i = 0;
    for (py::handle item : list) {
        const std::string arg = "data[" + std::to_string(i++) + "]";
        if (!py::isinstance<py::dict>(item)) raise_type_error(where, arg, "a non-dict", "a dict {ids, labels, images}");
        py::dict d = py::reinterpret_borrow<py::dict>(item);
        if (!d.contains("ids") || !d.contains("labels"))
            raise_value_error(where, arg, "a dict without 'ids' or 'labels'", "a dict {ids, labels, images}");
        mmca::train::training_example e;
        e.ids = int_list(d["ids"], where, arg + "['ids']");
        e.labels = int_list(d["labels"], where, arg + "['labels']");
        if (d.contains("images") && !d["images"].is_none()) {
            py::object im = d["images"];
            if (!py::isinstance<py::array>(im) || py::array(im).dtype().kind() != 'f' || py::array(im).itemsize() != 4)
                raise_type_error(where, arg + "['images']", "a non-float32 value", "a float32 (n, 3, S, S) array or None");
            py::array_t<float, py::array::c_style | py::array::forcecast> a(im);
            if (a.ndim() != 4 || a.shape(1) != 3)
                raise_value_error(where, arg + "['images']", "an array of " + std::to_string(a.ndim()) + " dimensions",
                                  "(n, 3, S, S) preprocessed images");
            e.images = a.shape(0);
            e.pixels.assign(a.data(), a.data() + a.size());
        }
        out->add(std::move(e));
    }
    return out;
}

std::shared_ptr<const mmca::train::example_source> data_of(py::handle obj, const char* where) {
    if (py::isinstance<conversation_data>(obj)) return obj.cast<std::shared_ptr<conversation_data>>();
    if (py::isinstance<py::list>(obj) || py::isinstance<py::tuple>(obj)) return examples_of(obj, where);
    raise_type_error(where, "data", std::string(py::str(py::type::of(obj).attr("__name__"))),
                     "a ConversationData or a list of dicts {ids, labels, images}");
}

py::dict record_dict(const mmca::train::step_record& r) {
    py::dict d;
    d["step"] = r.step;
    d["loss"] = r.loss;
    d["lr"] = r.lr;
    d["grad_norm"] = r.grad_norm;
    d["samples"] = r.samples;
    d["tokens"] = r.tokens;
    d["skipped"] = r.skipped;
    return d;
}

py::array_t<float> copy_array(const float* p, const std::vector<std::int64_t>& shape) {
    py::array_t<float> a(std::vector<py::ssize_t>(shape.begin(), shape.end()));
    std::copy_n(p, a.size(), a.mutable_data());
    return a;
}

class trainer_object {
public:
    template <class KV>
    using ptr = std::unique_ptr<mmca::train::visual_chat_trainer<KV>>;

    trainer_object(py::object model, std::shared_ptr<const mmca::train::example_source> data,
                   const mmca::train::trainer_options& o)
        : model_(std::move(model)), object_(&model_.cast<visual_chat_object&>()), data_(std::move(data)) {
        std::lock_guard<std::mutex> lock(object_->mutex());
        object_->visit([&](auto& m) {
            using KV = typename std::remove_reference_t<decltype(m.language())>::kv_type;
            trainer_ = std::make_unique<mmca::train::visual_chat_trainer<KV>>(m, data_->size(), o);
        });
    }

    template <class F>
    decltype(auto) visit(F&& f) {
        return std::visit([&](auto& t) -> decltype(auto) { return f(*t); }, trainer_);
    }
    /// f(trainer) with the GIL released and the model's lock held.
    template <class F>
    decltype(auto) locked(F&& f) {
        py::gil_scoped_release release;
        std::lock_guard<std::mutex> lock(object_->mutex());
        return visit(std::forward<F>(f));
    }
    const mmca::train::example_source& data() const { return *data_; }

private:
    py::object model_;
    visual_chat_object* object_;
    std::shared_ptr<const mmca::train::example_source> data_;
    std::variant<ptr<float>, ptr<mmca::float16>, ptr<mmca::bfloat16>> trainer_;
};

std::unique_ptr<trainer_object> make_trainer(py::object model, py::object data, bool projector, bool embedding,
                                             bool cross_blocks, std::optional<std::string> lora, std::int64_t lora_rank,
                                             double lora_alpha, std::uint64_t lora_seed, double lr,
                                             std::pair<double, double> betas, double eps, double weight_decay,
                                             double warmup_ratio, std::optional<std::int64_t> warmup_steps, double min_lr,
                                             double max_grad_norm, std::int64_t micro_batch, std::int64_t accumulation,
                                             const std::string& loss_averaging, std::int64_t epochs, std::int64_t total_steps,
                                             std::uint64_t seed, bool shuffle, int num_threads,
                                             std::optional<std::string> progress, std::int64_t log_every) {
    const char* where = "mmca.Trainer";
    if (!py::isinstance<visual_chat_object>(model))
        raise_type_error(where, "model", std::string(py::str(py::type::of(model).attr("__name__"))), "a VisualChatModel");
    auto d = data_of(data, where);
    mmca::train::trainer_options o;
    o.projector = projector;
    o.embedding = embedding;
    o.cross_blocks = cross_blocks;
    o.lora_targets = lora.value_or("");
    o.lora_rank = lora_rank;
    o.lora_alpha = lora_alpha;
    o.lora_seed = lora_seed;
    o.adamw.lr = lr;
    o.adamw.beta1 = betas.first;
    o.adamw.beta2 = betas.second;
    o.adamw.eps = eps;
    o.adamw.weight_decay = weight_decay;
    o.warmup_ratio = warmup_ratio;
    o.warmup_steps = warmup_steps.value_or(-1);
    o.min_lr = min_lr;
    o.max_grad_norm = max_grad_norm;
    o.micro_batch = micro_batch;
    o.accumulation = accumulation;
    if (loss_averaging == "micro_batch_mean")
        o.averaging = mmca::train::loss_averaging::micro_batch_mean;
    else if (loss_averaging == "token_mean")
        o.averaging = mmca::train::loss_averaging::token_mean;
    else
        raise_value_error(where, "loss_averaging", "'" + loss_averaging + "'", "'micro_batch_mean' or 'token_mean'");
    o.epochs = epochs;
    o.total_steps = total_steps;
    o.seed = seed;
    o.shuffle = shuffle;
    o.num_threads = num_threads;
    auto t = rethrow_as(where, [&] { return std::make_unique<trainer_object>(model, d, o); });
    if (progress) {
        mmca::train::progress_options p;
        if (*progress == "auto")
            p.display = mmca::train::progress_options::mode::automatic;
        else if (*progress == "bar")
            p.display = mmca::train::progress_options::mode::bar;
        else if (*progress == "plain")
            p.display = mmca::train::progress_options::mode::plain;
        else
            raise_value_error(where, "progress", "'" + *progress + "'", "None, 'auto', 'bar' or 'plain'");
        p.log_every = log_every;
        t->visit([&](auto& tr) {
            p.total_steps = tr.total_steps();
            rethrow_as(where, [&] { tr.set_progress(p); return 0; });
        });
    }
    return t;
}

py::dict eval_dict(const mmca::train::eval_result& r) {
    py::dict d;
    d["loss"] = r.loss();
    d["tokens"] = r.tokens;
    d["rounds"] = r.rounds;
    d["correct"] = r.correct;
    d["accuracy"] = r.accuracy();
    d["round_correct"] = py::cast(std::vector<bool>(r.round_correct.begin(), r.round_correct.end()));
    d["example_rounds"] = py::cast(r.example_rounds);
    return d;
}

std::shared_ptr<conversation_data> make_conversation_data(py::object path, const mmca::text::tokenizer& tok,
                                                          const std::string& split, py::object image_root,
                                                          std::int64_t image_size, const std::string& preset,
                                                          bool system_prompt, const std::string& numbering,
                                                          std::int64_t limit) {
    const char* where = "mmca.ConversationData";
    mmca::train::conversation_data_options o;
    o.split = split;
    o.image_root = image_root.is_none() ? std::string() : fs_path(image_root);
    o.image_size = image_size;
    o.image = rethrow_as(where, [&] { return mmca::vision::image_preset(preset); });
    o.conversation.system_prompt = system_prompt;
    o.conversation.numbering = parse_image_numbering(where, numbering);
    o.limit = limit;
    const std::string p = fs_path(path);
    py::gil_scoped_release release;
    return rethrow_as(where, [&] { return std::make_shared<conversation_data>(p, tok, o); });
}

}  // namespace

void register_trainer(py::module_& m) {
    py::class_<conversation_data, std::shared_ptr<conversation_data>>(m, "ConversationData", R"doc(
Training examples from the blended conversation format (mmca.blend / mmca-blend, docs/chat.md): the
conversations of one split, tokenized with the template of SPEC §6 (labels on the answers and their
EOS); images are decoded and preprocessed (preset's rule at image_size) when an example is built,
from image_root/<path> (default: the JSON file's folder).)doc")
        .def(py::init(&make_conversation_data), py::arg("path"), py::arg("tokenizer"), py::kw_only(),
             py::arg("split") = "train", py::arg("image_root") = py::none(), py::arg("image_size") = 448,
             py::arg("preset") = "visualchat-448", py::arg("system_prompt") = true, py::arg("numbering") = "string_level",
             py::arg("limit") = 0)
        .def("__len__", [](const conversation_data& d) { return d.size(); })
        .def("example",
             [](const conversation_data& d, std::int64_t i) {
                 const auto e = rethrow_as("mmca.ConversationData.example", [&] { return d.example(i); });
                 py::dict out;
                 out["ids"] = py::array_t<std::int32_t>(static_cast<py::ssize_t>(e.ids.size()), e.ids.data());
                 out["labels"] = py::array_t<std::int32_t>(static_cast<py::ssize_t>(e.labels.size()), e.labels.data());
                 const std::int64_t S = e.images > 0 ? static_cast<std::int64_t>(std::llround(
                                                           std::sqrt(static_cast<double>(e.pixels.size() / e.images / 3))))
                                                     : 0;
                 py::array_t<float> px({static_cast<py::ssize_t>(e.images), py::ssize_t{3}, static_cast<py::ssize_t>(S),
                                        static_cast<py::ssize_t>(S)});
                 std::copy(e.pixels.begin(), e.pixels.end(), px.mutable_data());
                 out["images"] = px;
                 return out;
             },
             py::arg("index"), "Example `index`: ids, labels (int32) and images (n, 3, S, S) float32.")
        .def("rounds", [](const conversation_data& d, std::int64_t i) {
            return rethrow_as("mmca.ConversationData.rounds", [&] {
                MMCA_CHECK_ARG(i >= 0 && i < d.size(), "mmca.ConversationData.rounds", "index", std::to_string(i), "an index of the data set");
                return d.rounds(i);
            });
        }, py::arg("index"))
        .def("image_paths", [](const conversation_data& d, std::int64_t i) {
            return rethrow_as("mmca.ConversationData.image_paths", [&] {
                MMCA_CHECK_ARG(i >= 0 && i < d.size(), "mmca.ConversationData.image_paths", "index", std::to_string(i), "an index of the data set");
                return d.image_paths(i);
            });
        }, py::arg("index"));

    py::class_<trainer_object>(m, "Trainer", R"doc(
Trains a VisualChatModel (SPEC §8): float32 copies of the trainable tensors (the projector and the
token embedding lang_embed by default; optionally the gated cross-attention blocks and LoRA adapters
on q/k/v/o), which the model then uses; AdamW with warm-up then cosine, gradient clipping, gradient
accumulation; a deterministic data order (seed). save()/load() write and read the run's state
(parameters, AdamW moments, step, epoch, data position) so that a resumed run equals an
uninterrupted one bit for bit. data: a ConversationData or a list of dicts {ids, labels, images}.)doc")
        .def(py::init(&make_trainer), py::arg("model"), py::arg("data"), py::kw_only(), py::arg("projector") = true,
             py::arg("embedding") = true, py::arg("cross_blocks") = false, py::arg("lora") = py::none(),
             py::arg("lora_rank") = 8, py::arg("lora_alpha") = 16.0, py::arg("lora_seed") = 0, py::arg("lr") = 1e-3,
             py::arg("betas") = std::make_pair(0.9, 0.95), py::arg("eps") = 1e-8, py::arg("weight_decay") = 0.0,
             py::arg("warmup_ratio") = 0.1, py::arg("warmup_steps") = py::none(), py::arg("min_lr") = 0.0,
             py::arg("max_grad_norm") = 1.0, py::arg("micro_batch") = 1, py::arg("accumulation") = 1,
             py::arg("loss_averaging") = "micro_batch_mean", py::arg("epochs") = 1, py::arg("total_steps") = 0,
             py::arg("seed") = 0, py::arg("shuffle") = true, py::arg("num_threads") = -1, py::arg("progress") = py::none(),
             py::arg("log_every") = 10, py::keep_alive<1, 2>())
        .def("step",
             [](trainer_object& t) {
                 const auto r = t.locked([&](auto& tr) { return rethrow_as("mmca.Trainer.step", [&] { return tr.step(t.data()); }); });
                 return record_dict(r);
             },
             "One optimizer step; returns {step, loss, lr, grad_norm, samples, tokens, skipped}.")
        .def("run",
             [](trainer_object& t, std::int64_t max_steps) {
                 const auto rs = t.locked([&](auto& tr) {
                     return rethrow_as("mmca.Trainer.run", [&] { return tr.run(t.data(), max_steps); });
                 });
                 py::list out;
                 for (const auto& r : rs) out.append(record_dict(r));
                 return out;
             },
             py::arg("max_steps") = 0, "Steps until total_steps (at most max_steps more when > 0); returns the records.")
        .def("evaluate",
             [](trainer_object& t, py::object data, std::int64_t limit) {
                 std::shared_ptr<const mmca::train::example_source> d;
                 if (!data.is_none()) d = data_of(data, "mmca.Trainer.evaluate");
                 const auto r = t.locked([&](auto& tr) {
                     return rethrow_as("mmca.Trainer.evaluate", [&] { return tr.evaluate(d ? *d : t.data(), limit); });
                 });
                 return eval_dict(r);
             },
             py::arg("data") = py::none(), py::arg("limit") = 0,
             R"doc(Loss (token mean) and answer accuracy on data (default: the training data; limit: the first
examples only). A round is correct when greedy decoding from the true prefix reproduces its answer and
EOS. Returns {loss, tokens, rounds, correct, accuracy, round_correct, example_rounds}.)doc")
        .def("save",
             [](trainer_object& t, py::object path, std::optional<std::map<std::string, std::string>> config) {
                 const std::string p = fs_path(path);
                 t.locked([&](auto& tr) { rethrow_as("mmca.Trainer.save", [&] { tr.save(p, config.value_or(std::map<std::string, std::string>{})); return 0; }); });
             },
             py::arg("path"), py::arg("config") = py::none(),
             "Writes the run's state (a train-state safetensors file, atomically); config: extra metadata strings.")
        .def("load",
             [](trainer_object& t, py::object path) {
                 const std::string p = fs_path(path);
                 return t.locked([&](auto& tr) { return rethrow_as("mmca.Trainer.load", [&] { return tr.load(p); }); });
             },
             py::arg("path"), "Resumes from a state written by save() with the same configuration; returns its config.")
        .def("save_weights",
             [](trainer_object& t, py::object path, std::optional<std::map<std::string, std::string>> metadata) {
                 const std::string p = fs_path(path);
                 t.locked([&](auto& tr) {
                     rethrow_as("mmca.Trainer.save_weights", [&] { tr.save_weights(p, metadata.value_or(std::map<std::string, std::string>{})); return 0; });
                 });
             },
             py::arg("path"), py::arg("metadata") = py::none(),
             "Writes the trained tensors (float32, checkpoint names) as a safetensors file.")
        .def("parameter",
             [](trainer_object& t, const std::string& name) {
                 return t.visit([&](auto& tr) {
                     const auto& p = rethrow_as("mmca.Trainer.parameter", [&]() -> const mmca::train::parameter& { return tr.parameters().get(name); });
                     return copy_array(p.value, p.shape);
                 });
             },
             py::arg("name"), "A copy of a trainable tensor.")
        .def("exp_avg",
             [](trainer_object& t, const std::string& name) {
                 return t.visit([&](auto& tr) {
                     auto& ps = tr.parameters();
                     const auto& p = rethrow_as("mmca.Trainer.exp_avg", [&]() -> const mmca::train::parameter& { return ps.get(name); });
                     std::size_t i = 0;
                     while (ps[i].name != name) ++i;
                     return copy_array(tr.optimizer().exp_avg(i), p.shape);
                 });
             },
             py::arg("name"), "A copy of AdamW's first moment of a tensor.")
        .def("exp_avg_sq",
             [](trainer_object& t, const std::string& name) {
                 return t.visit([&](auto& tr) {
                     auto& ps = tr.parameters();
                     const auto& p = rethrow_as("mmca.Trainer.exp_avg_sq", [&]() -> const mmca::train::parameter& { return ps.get(name); });
                     std::size_t i = 0;
                     while (ps[i].name != name) ++i;
                     return copy_array(tr.optimizer().exp_avg_sq(i), p.shape);
                 });
             },
             py::arg("name"), "A copy of AdamW's second moment of a tensor.")
        .def_property_readonly("names", [](trainer_object& t) {
            return t.visit([](auto& tr) {
                std::vector<std::string> n;
                for (const auto& p : tr.parameters()) n.push_back(p.name);
                return n;
            });
        })
        .def_property_readonly("step_count", [](trainer_object& t) { return t.visit([](auto& tr) { return tr.step_count(); }); })
        .def_property_readonly("total_steps", [](trainer_object& t) { return t.visit([](auto& tr) { return tr.total_steps(); }); })
        .def_property_readonly("steps_per_epoch", [](trainer_object& t) { return t.visit([](auto& tr) { return tr.steps_per_epoch(); }); })
        .def_property_readonly("samples_seen", [](trainer_object& t) { return t.visit([](auto& tr) { return tr.samples_seen(); }); })
        .def_property_readonly("epoch", [](trainer_object& t) { return t.visit([](auto& tr) { return tr.epoch(); }); })
        .def_property_readonly("data_position", [](trainer_object& t) { return t.visit([](auto& tr) { return tr.data_position(); }); })
        .def_property_readonly("done", [](trainer_object& t) { return t.visit([](auto& tr) { return tr.done(); }); })
        .def_property_readonly("epoch_order", [](trainer_object& t) { return t.visit([](auto& tr) { return tr.epoch_order(); }); })
        .def_property_readonly("history", [](trainer_object& t) {
            py::list out;
            t.visit([&](auto& tr) {
                for (const auto& r : tr.history()) out.append(record_dict(r));
            });
            return out;
        })
        .def("lr_at", [](trainer_object& t, std::int64_t step) { return t.visit([&](auto& tr) { return tr.schedule().lr(step); }); },
             py::arg("step"), "The schedule's learning rate for the update after `step` updates.");
}

}  // namespace mmca::python
