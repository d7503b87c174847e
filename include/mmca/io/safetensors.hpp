// mmca/io/safetensors.hpp - safetensors checkpoints, memory-mapped and viewed in place.
//
// File layout: an 8-byte little-endian header length N, N bytes of UTF-8 JSON, then the data
// buffer. The JSON maps each tensor name to {"dtype", "shape", "data_offsets": [begin, end]}
// (offsets relative to the buffer), plus an optional "__metadata__" map of strings.
//
// Opening a file checks everything before any tensor is handed out, so a tensor view can never
// reach outside the mapping:
//   * the file holds at least 8 bytes, N <= 100 MB and N <= file size - 8, and the header is a JSON
//     object (no duplicate keys, nesting depth <= 8) that starts with '{';
//   * every entry has exactly the keys dtype, shape, data_offsets with a known dtype, a shape of
//     non-negative integers and two unsigned integer offsets begin <= end;
//   * end - begin == product(shape) × element size (without overflow);
//   * sorted by begin, the tensors tile the buffer: the first starts at 0, each starts where the
//     previous one ends (no overlap, no gap), and the last ends at the end of the file;
// The format does not promise alignment: tensor_info::aligned() says whether a tensor's data sits at
// a multiple of its element size (the official writer orders tensors so that it does); consumers
// that need typed access copy the rare misaligned tensor (see io/llama_loader.hpp).
// Tensors of any safetensors dtype are indexed; only F32, F16 and BF16 can be viewed as mmca
// tensors (others raise "unsupported dtype" when used).
#pragma once

#include "mmca/core/dtype.hpp"
#include "mmca/core/error.hpp"
#include "mmca/io/mapped_file.hpp"
#include "mmca/nn/linear.hpp"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <map>
#include <memory>
#include <string>
#include <vector>

namespace mmca::io {

/// The largest header accepted (as the format's reference implementation does).
inline constexpr std::uint64_t safetensors_max_header = 100'000'000;

/// Element types of the safetensors format.
enum class st_dtype : std::uint8_t { BOOL, U8, I8, F8_E5M2, F8_E4M3, I16, U16, F16, BF16, I32, U32, F32, I64, U64, F64 };

inline const char* st_dtype_name(st_dtype t) {
    static const char* names[] = {"BOOL", "U8",  "I8",  "F8_E5M2", "F8_E4M3", "I16", "U16", "F16",
                                  "BF16", "I32", "U32", "F32",     "I64",     "U64", "F64"};
    return names[static_cast<int>(t)];
}

inline std::uint64_t st_dtype_size(st_dtype t) {
    switch (t) {
        case st_dtype::BOOL: case st_dtype::U8: case st_dtype::I8: case st_dtype::F8_E5M2: case st_dtype::F8_E4M3:
            return 1;
        case st_dtype::I16: case st_dtype::U16: case st_dtype::F16: case st_dtype::BF16: return 2;
        case st_dtype::I32: case st_dtype::U32: case st_dtype::F32: return 4;
        case st_dtype::I64: case st_dtype::U64: case st_dtype::F64: return 8;
    }
    return 0;
}

inline bool parse_st_dtype(const std::string& s, st_dtype& out) {
    for (int i = 0; i <= static_cast<int>(st_dtype::F64); ++i)
        if (s == st_dtype_name(static_cast<st_dtype>(i))) {
            out = static_cast<st_dtype>(i);
            return true;
        }
    return false;
}

/// One tensor of a checkpoint: where its bytes are and what they are.
struct tensor_info {
    std::string name;
    st_dtype type = st_dtype::F32;
    std::vector<std::int64_t> shape;
    std::uint64_t begin = 0, end = 0;  // offsets in the data buffer
    const unsigned char* data = nullptr;
    std::string file;                   // path of the file holding it

    std::int64_t numel() const {
        std::int64_t n = 1;
        for (auto s : shape) n *= s;
        return n;
    }
    std::string shape_text() const { return detail::shape_text(shape); }
    /// True for F32, F16 and BF16, the dtypes mmca computes with.
    bool supported() const { return type == st_dtype::F32 || type == st_dtype::F16 || type == st_dtype::BF16; }
    /// True when data sits at a multiple of the element size (typed pointers may be used).
    bool aligned() const { return reinterpret_cast<std::uintptr_t>(data) % st_dtype_size(type) == 0; }
    dtype storage_type() const {
        return type == st_dtype::F16 ? dtype::float16 : type == st_dtype::BF16 ? dtype::bfloat16 : dtype::float32;
    }
};

namespace detail {

[[noreturn]] inline void bad_file(const std::string& path, const std::string& seen, const std::string& expected) {
    throw invalid_argument("mmca::io::safetensors_file", "file", "'" + path + "': " + seen, expected);
}

/// Parses JSON text, rejecting duplicate object keys and nesting deeper than max_depth.
inline nlohmann::json parse_json_strict(const char* begin, const char* end, const std::string& path,
                                        const std::string& what, int max_depth = 8) {
    using json = nlohmann::json;
    std::vector<std::vector<std::string>> keys;  // keys seen in each open object
    std::string duplicate;
    auto cb = [&](int depth, json::parse_event_t event, json& parsed) {
        if (depth > max_depth) {
            duplicate = "\x01";
            return false;
        }
        switch (event) {
            case json::parse_event_t::object_start: keys.emplace_back(); break;
            case json::parse_event_t::object_end:
                if (!keys.empty()) keys.pop_back();
                break;
            case json::parse_event_t::key: {
                const std::string k = parsed.get<std::string>();
                if (!keys.empty()) {
                    auto& seen = keys.back();
                    if (std::find(seen.begin(), seen.end(), k) != seen.end() && duplicate.empty()) duplicate = k;
                    seen.push_back(k);
                }
                break;
            }
            default: break;
        }
        return true;
    };
    json j;
    try {
        j = json::parse(begin, end, cb);
    } catch (const json::exception& e) {
        bad_file(path, what + " that is not valid JSON (" + e.what() + ")", "a JSON " + what);
    }
    if (duplicate == "\x01")
        bad_file(path, what + " nested deeper than " + std::to_string(max_depth) + " levels", "a flat JSON " + what);
    if (!duplicate.empty()) bad_file(path, what + " with the key '" + duplicate + "' twice", "unique keys");
    return j;
}

inline bool mul_overflows(std::uint64_t a, std::uint64_t b, std::uint64_t& out) {
    return __builtin_mul_overflow(a, b, &out);
}

}  // namespace detail

/// One safetensors file, mapped and validated.
class safetensors_file {
public:
    explicit safetensors_file(const std::string& path) : map_(std::make_shared<mapped_file>(path)) { parse(); }

    const std::string& path() const { return map_->path(); }
    const std::vector<tensor_info>& tensors() const { return tensors_; }
    const std::map<std::string, std::string>& metadata() const { return metadata_; }
    /// The mapping; tensor views stay valid as long as it lives.
    std::shared_ptr<const mapped_file> mapping() const { return map_; }

    /// The tensor called `name`, or nullptr.
    const tensor_info* find(const std::string& name) const {
        auto it = index_.find(name);
        return it == index_.end() ? nullptr : &tensors_[it->second];
    }

private:
    void parse() {
        using detail::bad_file;
        using json = nlohmann::json;
        const std::string& p = map_->path();
        const std::uint64_t size = map_->size();
        if (size < 8) bad_file(p, "a file of " + std::to_string(size) + " bytes", "at least 8 bytes (the header length)");
        std::uint64_t n = 0;
        for (int i = 7; i >= 0; --i) n = (n << 8) | map_->data()[i];  // little-endian
        if (n > safetensors_max_header)
            bad_file(p, "a header length of " + std::to_string(n) + " bytes",
                     "at most " + std::to_string(safetensors_max_header) + " bytes");
        if (n > size - 8)
            bad_file(p, "a header length of " + std::to_string(n) + " bytes in a file of " + std::to_string(size) + " bytes",
                     "a header that fits in the file (truncated file?)");
        if (n < 2 || map_->data()[8] != '{')
            bad_file(p, "a header that does not start with '{'", "a JSON object");
        const char* hb = reinterpret_cast<const char*>(map_->data() + 8);
        const json header = detail::parse_json_strict(hb, hb + n, p, "header");
        if (!header.is_object()) bad_file(p, "a header that is not a JSON object", "a JSON object");
        const std::uint64_t data_start = 8 + n, buffer = size - data_start;

        for (auto it = header.begin(); it != header.end(); ++it) {
            const std::string& name = it.key();
            const json& e = it.value();
            if (name == "__metadata__") {
                if (!e.is_object()) bad_file(p, "'__metadata__' that is not an object", "a map of strings");
                for (auto m = e.begin(); m != e.end(); ++m) {
                    if (!m.value().is_string())
                        bad_file(p, "'__metadata__' entry '" + m.key() + "' that is not a string", "a map of strings");
                    metadata_[m.key()] = m.value().get<std::string>();
                }
                continue;
            }
            const std::string where_t = "tensor '" + name + "'";
            if (!e.is_object() || e.size() != 3 || !e.contains("dtype") || !e.contains("shape") ||
                !e.contains("data_offsets"))
                bad_file(p, where_t + " described by " + e.dump().substr(0, 200),
                         "an object with exactly 'dtype', 'shape' and 'data_offsets'");
            tensor_info t;
            t.name = name;
            t.file = p;
            if (!e["dtype"].is_string() || !parse_st_dtype(e["dtype"].get<std::string>(), t.type))
                bad_file(p, where_t + " with dtype " + e["dtype"].dump(),
                         "one of BOOL, U8, I8, F8_E5M2, F8_E4M3, I16, U16, F16, BF16, I32, U32, F32, I64, U64, F64");
            const json& shape = e["shape"];
            if (!shape.is_array()) bad_file(p, where_t + " with shape " + shape.dump(), "a list of integers");
            std::uint64_t numel = 1;
            for (const json& d : shape) {
                if (!d.is_number_unsigned() || d.get<std::uint64_t>() > static_cast<std::uint64_t>(INT64_MAX))
                    bad_file(p, where_t + " with shape " + shape.dump(), "a list of non-negative integers");
                t.shape.push_back(static_cast<std::int64_t>(d.get<std::uint64_t>()));
                if (detail::mul_overflows(numel, d.get<std::uint64_t>(), numel))
                    bad_file(p, where_t + " with shape " + shape.dump() + " (element count overflows)", "a valid shape");
            }
            const json& off = e["data_offsets"];
            if (!off.is_array() || off.size() != 2 || !off[0].is_number_unsigned() || !off[1].is_number_unsigned())
                bad_file(p, where_t + " with data_offsets " + off.dump(), "[begin, end] with unsigned integers");
            t.begin = off[0].get<std::uint64_t>();
            t.end = off[1].get<std::uint64_t>();
            if (t.begin > t.end)
                bad_file(p, where_t + " with data_offsets " + off.dump(), "begin <= end");
            if (t.end > buffer)
                bad_file(p, where_t + " with data_offsets " + off.dump() + " past the end of a " +
                                std::to_string(buffer) + "-byte data buffer",
                         "offsets inside the data buffer (truncated file?)");
            std::uint64_t bytes = 0;
            if (detail::mul_overflows(numel, st_dtype_size(t.type), bytes) || bytes != t.end - t.begin)
                bad_file(p, where_t + " of " + std::to_string(t.end - t.begin) + " bytes for dtype " +
                                st_dtype_name(t.type) + " and shape " + shape.dump(),
                         std::to_string(numel) + " elements × " + std::to_string(st_dtype_size(t.type)) + " bytes");
            tensors_.push_back(std::move(t));
        }
        // The tensors must tile the buffer exactly (sorted by begin; zero-size tensors may sit anywhere).
        std::vector<std::size_t> order(tensors_.size());
        for (std::size_t i = 0; i < order.size(); ++i) order[i] = i;
        std::sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) {
            return tensors_[a].begin != tensors_[b].begin ? tensors_[a].begin < tensors_[b].begin
                                                          : tensors_[a].end < tensors_[b].end;
        });
        std::uint64_t expect = 0;
        std::string prev = "the start of the buffer";
        for (std::size_t i : order) {
            const tensor_info& t = tensors_[i];
            if (t.begin == t.end && t.begin <= expect) continue;  // empty tensors occupy nothing
            if (t.begin < expect)
                bad_file(p, "tensor '" + t.name + "' at bytes [" + std::to_string(t.begin) + ", " + std::to_string(t.end) +
                                ") overlapping " + prev,
                         "tensors that do not overlap");
            if (t.begin > expect)
                bad_file(p, "a gap of " + std::to_string(t.begin - expect) + " bytes before tensor '" + t.name + "'",
                         "tensors that cover the data buffer without gaps");
            expect = t.end;
            prev = "tensor '" + t.name + "' ending at " + std::to_string(t.end);
        }
        if (expect != buffer)
            bad_file(p, "tensors covering " + std::to_string(expect) + " of " + std::to_string(buffer) + " buffer bytes",
                     "tensors that cover the whole data buffer (trailing bytes or a truncated header?)");
        for (std::size_t i = 0; i < tensors_.size(); ++i) {
            tensor_info& t = tensors_[i];
            t.data = map_->data() + data_start + t.begin;
            index_[t.name] = i;
        }
    }

    std::shared_ptr<mapped_file> map_;
    std::vector<tensor_info> tensors_;
    std::map<std::string, std::size_t> index_;
    std::map<std::string, std::string> metadata_;
};

}  // namespace mmca::io
