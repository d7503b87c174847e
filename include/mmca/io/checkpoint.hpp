// mmca/io/checkpoint.hpp - a checkpoint made of one or several safetensors files.
//
//   auto ckpt = mmca::io::checkpoint::open("path/to/model");   // a folder, a .safetensors file,
//                                                                // or a model.safetensors.index.json
//   const mmca::io::tensor_info& t = ckpt.get("model.norm.weight");
//
// A folder is opened through its model.safetensors.index.json when present (a sharded checkpoint:
// {"metadata": {...}, "weight_map": {tensor name: shard file name}}), otherwise its model.safetensors.
// Shards are opened once each, must be plain file names in the index's folder, and must contain
// every tensor the index assigns to them.
#pragma once

#include "mmca/core/error.hpp"
#include "mmca/io/safetensors.hpp"

#include <nlohmann/json.hpp>

#include <fstream>
#include <map>
#include <memory>
#include <sstream>
#include <string>
#include <sys/stat.h>
#include <vector>

namespace mmca::io {

namespace detail {

inline bool is_directory(const std::string& path) {
    struct stat st {};
    return ::stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}
inline bool is_file(const std::string& path) {
    struct stat st {};
    return ::stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}
inline std::string parent_directory(const std::string& path) {
    const auto slash = path.find_last_of('/');
    return slash == std::string::npos ? std::string(".") : path.substr(0, slash == 0 ? 1 : slash);
}
inline std::string join_path(const std::string& dir, const std::string& name) {
    return dir.empty() || dir.back() == '/' ? dir + name : dir + "/" + name;
}
inline bool ends_with(const std::string& s, const std::string& suffix) {
    return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

/// Reads a small text file (configs, indexes) whole; at most max_bytes.
inline std::string read_text_file(const std::string& path, const char* where, std::uint64_t max_bytes = 100'000'000) {
    mapped_file f(path);
    if (f.size() > max_bytes)
        throw invalid_argument(where, "path", "'" + path + "' of " + std::to_string(f.size()) + " bytes",
                               "a file of at most " + std::to_string(max_bytes) + " bytes");
    return std::string(reinterpret_cast<const char*>(f.data()), static_cast<std::size_t>(f.size()));
}

}  // namespace detail

class checkpoint {
public:
    /// Opens a folder, a single .safetensors file, or a model.safetensors.index.json.
    static checkpoint open(const std::string& path) {
        const char* where = "mmca::io::checkpoint::open";
        if (detail::is_directory(path)) {
            const std::string index = detail::join_path(path, "model.safetensors.index.json");
            const std::string single = detail::join_path(path, "model.safetensors");
            if (detail::is_file(index)) return open_index(index);
            if (detail::is_file(single)) return open_file(single);
            throw invalid_argument(where, "path", "folder '" + path + "' without model.safetensors.index.json or model.safetensors",
                                   "a checkpoint folder, a .safetensors file or an index .json");
        }
        if (detail::ends_with(path, ".json")) return open_index(path);
        return open_file(path);
    }

    static checkpoint open_file(const std::string& path) {
        checkpoint c;
        c.files_.push_back(std::make_shared<safetensors_file>(path));
        for (const auto& t : c.files_.front()->tensors()) c.index_[t.name] = &t;
        return c;
    }

    static checkpoint open_index(const std::string& index_path) {
        const char* where = "mmca::io::checkpoint::open_index";
        const std::string text = detail::read_text_file(index_path, where);
        const nlohmann::json j = io::detail::parse_json_strict(text.data(), text.data() + text.size(), index_path, "index");
        auto bad = [&](const std::string& seen, const std::string& expected) {
            throw invalid_argument(where, "index", "'" + index_path + "': " + seen, expected);
        };
        if (!j.is_object() || !j.contains("weight_map") || !j["weight_map"].is_object())
            bad("no 'weight_map' object", "{\"weight_map\": {tensor name: shard file name}}");
        checkpoint c;
        const std::string dir = detail::parent_directory(index_path);
        std::map<std::string, std::shared_ptr<safetensors_file>> shards;
        for (auto it = j["weight_map"].begin(); it != j["weight_map"].end(); ++it) {
            if (!it.value().is_string()) bad("weight_map entry '" + it.key() + "' that is not a string", "a shard file name");
            const std::string file = it.value().get<std::string>();
            if (file.empty() || file.find('/') != std::string::npos || file.find('\\') != std::string::npos ||
                file == "." || file == "..")
                bad("shard name '" + file + "' for tensor '" + it.key() + "'",
                    "a plain file name in the index's folder (no path separators)");
            auto& shard = shards[file];
            if (!shard) {
                shard = std::make_shared<safetensors_file>(detail::join_path(dir, file));
                c.files_.push_back(shard);
            }
            const tensor_info* t = shard->find(it.key());
            if (!t) bad("tensor '" + it.key() + "' assigned to shard '" + file + "', which does not contain it",
                        "every tensor of the weight_map in its shard");
            c.index_[it.key()] = t;
        }
        if (c.files_.empty()) bad("an empty weight_map", "at least one tensor");
        return c;
    }

    /// The tensor called `name`, or nullptr.
    const tensor_info* find(const std::string& name) const {
        auto it = index_.find(name);
        return it == index_.end() ? nullptr : it->second;
    }

    /// The tensor called `name`; throws mmca::invalid_argument naming it when it is missing.
    const tensor_info& get(const std::string& name) const {
        const tensor_info* t = find(name);
        if (!t)
            throw invalid_argument("mmca::io::checkpoint", "checkpoint", "no tensor '" + name + "' (" +
                                       std::to_string(index_.size()) + " tensors in " + describe() + ")",
                                   "a checkpoint that contains '" + name + "'");
        return *t;
    }

    std::vector<std::string> names() const {
        std::vector<std::string> out;
        for (const auto& kv : index_) out.push_back(kv.first);
        return out;
    }
    std::size_t size() const { return index_.size(); }
    const std::vector<std::shared_ptr<safetensors_file>>& files() const { return files_; }

    /// An owner that keeps every mapping alive (for views handed to a model).
    std::shared_ptr<const void> storage() const {
        return std::make_shared<std::vector<std::shared_ptr<safetensors_file>>>(files_);
    }

    std::string describe() const {
        if (files_.size() == 1) return "'" + files_.front()->path() + "'";
        return std::to_string(files_.size()) + " shards";
    }

private:
    std::vector<std::shared_ptr<safetensors_file>> files_;
    std::map<std::string, const tensor_info*> index_;
};

}  // namespace mmca::io
