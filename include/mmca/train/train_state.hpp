// mmca/train/train_state.hpp - saving and resuming a training run, bit for bit.
//
//   mmca::train::train_state state;             // epoch, data-loader position, RNG, config
//   save_train_state("run/state.safetensors", params, optimizer, state);
//   ... a new process, the same model and options ...
//   load_train_state("run/state.safetensors", params, optimizer, state);
//
// The file is one safetensors file (written atomically by io/safetensors_writer.hpp):
//   <name>                        F32 [shape]  parameter values, under their own names (the file is
//                                              also a plain checkpoint of the trained tensors)
//   optimizer.exp_avg.<name>      F32 [shape]  AdamW first moment m
//   optimizer.exp_avg_sq.<name>   F32 [shape]  AdamW second moment v
//   train.step                    I64 []       optimizer updates taken (AdamW's t)
//   train.epoch                   I64 []       epochs completed
//   train.data_position           I64 []       the data loader's position within the epoch
//   __metadata__:
//     format = "mmca.train_state", format_version = "1"
//     adamw.lr, adamw.beta1, adamw.beta2, adamw.eps, adamw.weight_decay  (printed with 17
//         significant digits, so they read back exactly)
//     rng.mt19937_64 = the engine's state as written by operator<< (the standard library's text)
//     config.<key> = the caller's free-form settings
// Parameter names may not start with "optimizer." or "train." (reserved above).
//
// Loading checks the whole file before changing anything: format and version, every parameter and
// both moments present as F32 with the registry's shapes, no tensor the registry does not have,
// the counters present as I64 scalars >= 0, AdamW's betas, eps and weight decay equal to the
// optimizer's (a resumed run with other hyperparameters would not continue the saved one; the
// learning rate is not checked, schedules set it per step), and a readable RNG state. A failure
// throws mmca::invalid_argument naming the file and what is wrong, and leaves every object as it
// was. Saving at an optimizer-step boundary and loading into fresh objects of the same
// configuration continues the run exactly: the same parameters, moments, counters and random
// stream, so the remaining steps give the same bits as a run that never stopped.
#pragma once

#include "mmca/core/error.hpp"
#include "mmca/io/safetensors.hpp"
#include "mmca/io/safetensors_writer.hpp"
#include "mmca/train/adamw.hpp"
#include "mmca/train/parameters.hpp"

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <random>
#include <sstream>
#include <string>
#include <vector>

namespace mmca::train {

inline constexpr const char* train_state_format = "mmca.train_state";
inline constexpr const char* train_state_version = "1";

/// What a run needs besides parameters and optimizer to continue where it stopped.
struct train_state {
    std::int64_t epoch = 0;          // epochs completed
    std::int64_t data_position = 0;  // the data loader's position within the epoch (samples or batches)
    std::mt19937_64 rng;             // the run's random stream (shuffling, dropout, sampling)
    std::map<std::string, std::string> config;  // free-form settings, saved as metadata "config.<key>"
};

namespace detail {

inline std::string exact_text(double x) {
    char buf[40];
    std::snprintf(buf, sizeof buf, "%.17g", x);
    return buf;
}

inline std::string rng_text(const std::mt19937_64& rng) {
    std::ostringstream os;
    os << rng;
    return os.str();
}

/// Parses an engine state written by operator<<; false when the text is not one.
inline bool parse_rng(const std::string& text, std::mt19937_64& out) {
    std::istringstream is(text);
    std::mt19937_64 r;
    is >> r;
    if (is.fail()) return false;
    is >> std::ws;
    if (!is.eof()) return false;
    out = r;
    return true;
}

inline bool starts_with(const std::string& s, const char* prefix) { return s.rfind(prefix, 0) == 0; }

}  // namespace detail

/// Writes parameters, AdamW moments and step, and `state` to `path` (atomically).
inline void save_train_state(const std::string& path, const parameter_registry& params, const adamw& optimizer,
                             const train_state& state) {
    const char* where = "mmca::train::save_train_state";
    MMCA_CHECK_ARG(&optimizer.parameters() == &params, where, "optimizer",
                   "an optimizer of another parameter registry", "the optimizer of `params`");
    optimizer.check_registry(where);
    MMCA_CHECK_ARG(state.epoch >= 0, where, "state.epoch", std::to_string(state.epoch), "a count >= 0");
    MMCA_CHECK_ARG(state.data_position >= 0, where, "state.data_position", std::to_string(state.data_position),
                   "a position >= 0");
    io::safetensors_writer w;
    for (std::size_t i = 0; i < params.size(); ++i) {
        const parameter& p = params[i];
        MMCA_CHECK_ARG(!detail::starts_with(p.name, "optimizer.") && !detail::starts_with(p.name, "train."), where,
                       "params", "parameter '" + p.name + "'",
                       "names that do not start with 'optimizer.' or 'train.' (reserved in train-state files)");
        w.add(p.name, p.shape, p.value);
        w.add("optimizer.exp_avg." + p.name, p.shape, optimizer.exp_avg(i));
        w.add("optimizer.exp_avg_sq." + p.name, p.shape, optimizer.exp_avg_sq(i));
    }
    const std::int64_t step = optimizer.step_count(), epoch = state.epoch, position = state.data_position;
    w.add("train.step", {}, &step);
    w.add("train.epoch", {}, &epoch);
    w.add("train.data_position", {}, &position);
    w.set_metadata("format", train_state_format);
    w.set_metadata("format_version", train_state_version);
    const adamw_options& o = optimizer.options();
    w.set_metadata("adamw.lr", detail::exact_text(o.lr));
    w.set_metadata("adamw.beta1", detail::exact_text(o.beta1));
    w.set_metadata("adamw.beta2", detail::exact_text(o.beta2));
    w.set_metadata("adamw.eps", detail::exact_text(o.eps));
    w.set_metadata("adamw.weight_decay", detail::exact_text(o.weight_decay));
    w.set_metadata("rng.mt19937_64", detail::rng_text(state.rng));
    for (const auto& kv : state.config) w.set_metadata("config." + kv.first, kv.second);
    w.write(path);
}

/// Reads a file written by save_train_state into `params` (values copied into their buffers),
/// `optimizer` (moments and step count) and `state` (epoch, position, RNG, config). Everything
/// is checked first (see the file comment); on error nothing is changed.
inline void load_train_state(const std::string& path, parameter_registry& params, adamw& optimizer,
                             train_state& state) {
    const char* where = "mmca::train::load_train_state";
    MMCA_CHECK_ARG(&optimizer.parameters() == &params, where, "optimizer",
                   "an optimizer of another parameter registry", "the optimizer of `params`");
    optimizer.check_registry(where);
    const io::safetensors_file file(path);
    auto bad = [&](const std::string& seen, const std::string& expected) {
        throw invalid_argument(where, "path", "'" + path + "': " + seen, expected);
    };
    const auto& meta = file.metadata();
    auto meta_value = [&](const std::string& key) -> const std::string& {
        auto it = meta.find(key);
        if (it == meta.end()) bad("no metadata '" + key + "'", "a train-state file written by mmca::train::save_train_state");
        return it->second;
    };
    if (meta_value("format") != train_state_format)
        bad("metadata format = '" + meta.at("format") + "'", std::string("'") + train_state_format + "'");
    if (meta_value("format_version") != train_state_version)
        bad("format_version '" + meta.at("format_version") + "'", std::string("version ") + train_state_version);

    const adamw_options& o = optimizer.options();
    const std::pair<const char*, double> hyper[] = {
        {"adamw.beta1", o.beta1}, {"adamw.beta2", o.beta2}, {"adamw.eps", o.eps}, {"adamw.weight_decay", o.weight_decay}};
    for (const auto& h : hyper) {
        const std::string& text = meta_value(h.first);
        char* end = nullptr;
        const double saved = std::strtod(text.c_str(), &end);
        if (text.empty() || *end != '\0') bad("metadata " + std::string(h.first) + " = '" + text + "'", "a number");
        if (saved != h.second)
            bad(std::string(h.first) + " = " + text + " in the file",
                "the optimizer's value " + detail::exact_text(h.second) + " (resume with the saved hyperparameters)");
    }
    std::mt19937_64 rng;
    if (!detail::parse_rng(meta_value("rng.mt19937_64"), rng))
        bad("metadata rng.mt19937_64 that is not a std::mt19937_64 state", "the text written by operator<< of the engine");

    // Every tensor the file must hold, with its dtype and shape, checked in registration order
    // (each parameter, then its moments, then the counters); any other tensor is an error.
    struct expected_tensor {
        std::string name;
        io::st_dtype type;
        std::vector<std::int64_t> shape;
    };
    std::vector<expected_tensor> expected;
    std::map<std::string, std::size_t> expected_index;
    auto expect = [&](const std::string& name, io::st_dtype type, const std::vector<std::int64_t>& shape) {
        expected_index[name] = expected.size();
        expected.push_back(expected_tensor{name, type, shape});
    };
    for (const parameter& p : params) {
        expect(p.name, io::st_dtype::F32, p.shape);
        expect("optimizer.exp_avg." + p.name, io::st_dtype::F32, p.shape);
        expect("optimizer.exp_avg_sq." + p.name, io::st_dtype::F32, p.shape);
    }
    for (const char* counter : {"train.step", "train.epoch", "train.data_position"}) expect(counter, io::st_dtype::I64, {});
    for (const io::tensor_info& t : file.tensors())
        if (!expected_index.count(t.name))
            bad("tensor '" + t.name + "', which is not a parameter of the registry (" + std::to_string(params.size()) +
                    " parameters)",
                "the tensors of the same parameters");
    for (const expected_tensor& e : expected) {
        const io::tensor_info* t = file.find(e.name);
        if (!t) bad("no tensor '" + e.name + "'", "every parameter and its optimizer moments");
        if (t->type != e.type)
            bad("tensor '" + e.name + "' of dtype " + io::st_dtype_name(t->type), std::string("dtype ") + io::st_dtype_name(e.type));
        if (t->shape != e.shape)
            bad("tensor '" + e.name + "' of shape " + t->shape_text(),
                "shape " + mmca::detail::shape_text(e.shape) + " (the registry's)");
    }
    auto counter = [&](const char* name) {
        std::int64_t v = 0;
        std::memcpy(&v, file.find(name)->data, sizeof v);
        if (v < 0) bad(std::string(name) + " = " + std::to_string(v), "a count >= 0");
        return v;
    };
    const std::int64_t step = counter("train.step"), epoch = counter("train.epoch"),
                       position = counter("train.data_position");

    // Checked: now copy.
    for (std::size_t i = 0; i < params.size(); ++i) {
        parameter& p = params[i];
        const auto bytes = static_cast<std::size_t>(p.numel) * sizeof(float);
        if (!bytes) continue;
        std::memcpy(p.value, file.find(p.name)->data, bytes);
        std::memcpy(optimizer.exp_avg(i), file.find("optimizer.exp_avg." + p.name)->data, bytes);
        std::memcpy(optimizer.exp_avg_sq(i), file.find("optimizer.exp_avg_sq." + p.name)->data, bytes);
    }
    optimizer.set_step_count(step);
    state.epoch = epoch;
    state.data_position = position;
    state.rng = rng;
    state.config.clear();
    for (const auto& kv : meta)
        if (detail::starts_with(kv.first, "config.")) state.config[kv.first.substr(7)] = kv.second;
}

}  // namespace mmca::train
