// mmca/io/safetensors_writer.hpp - writes safetensors files, atomically.
//
//   mmca::io::safetensors_writer w;
//   w.add("proj.weight", {out, in}, weights);        // F32; the bytes are read by write()
//   w.add("step", {}, &step);                        // I64 scalar
//   w.add("emb", mmca::io::st_dtype::BF16, {v, h}, bf16_bits);
//   w.set_metadata("format", "pt");
//   w.write("out/model.safetensors");
//
// Layout written (the one io/safetensors.hpp reads and validates):
//   [N as 8 bytes little-endian][N bytes of JSON][data buffer]
// The JSON object's keys come sorted by byte value ("__metadata__", a map of strings, sorts among
// them); each tensor entry is {"data_offsets":[begin,end],"dtype":"F32","shape":[...]} with offsets
// relative to the data buffer. The header is padded with spaces (JSON whitespace) so that 8 + N is
// a multiple of 8. In the data buffer tensors are ordered by element size, largest first, then by
// name: every tensor then starts at a multiple of its element size, so a mapped file gives aligned
// typed views. Tensors of any safetensors dtype may be written; data is taken as little-endian
// (the host order: big-endian hosts are refused at compile time).
//
// Atomicity: the file is written to a temporary file in the destination's folder
// (".<name>.tmp-<pid>-<n>", created exclusively), fsynced, renamed over the destination, and the
// folder is fsynced. On any failure the temporary file is removed and the destination is left as
// it was; after a crash a reader finds either the old file or the complete new one (at worst next
// to a stray temporary file, which never has the destination's name).
#pragma once

#include "mmca/core/error.hpp"
#include "mmca/io/safetensors.hpp"

#include <nlohmann/json.hpp>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <map>
#include <memory>
#include <string>
#include <vector>

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "mmca's safetensors writer assumes a little-endian host");

namespace mmca::io {

namespace detail {

/// The folder part of a path ("." for a bare name).
inline std::string writer_parent_directory(const std::string& path) {
    const auto slash = path.find_last_of('/');
    return slash == std::string::npos ? std::string(".") : path.substr(0, slash == 0 ? 1 : slash);
}

/// Writes all `size` bytes to fd (retrying short writes and EINTR); false with errno set on failure.
inline bool write_all(int fd, const unsigned char* data, std::uint64_t size) {
    constexpr std::uint64_t max_call = std::uint64_t(1) << 30;  // one write() call moves at most 1 GiB
    while (size > 0) {
        const ssize_t n = ::write(fd, data, static_cast<std::size_t>(std::min(size, max_call)));
        if (n < 0) {
            if (errno == EINTR) continue;
            return false;
        }
        if (n == 0) {
            errno = EIO;
            return false;
        }
        data += n;
        size -= static_cast<std::uint64_t>(n);
    }
    return true;
}

/// fsync of a folder, so that a rename inside it is durable. Folders that refuse fsync (some file
/// systems answer EINVAL) are accepted: the rename has happened either way.
inline void fsync_directory(const std::string& dir) {
    const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) return;
    (void)::fsync(fd);
    ::close(fd);
}

}  // namespace detail

/// Collects tensors and metadata, then writes them as one safetensors file with write().
class safetensors_writer {
public:
    /// Adds a tensor of dtype `type` and shape `shape` (row-major; {} is a scalar) whose
    /// numel × element-size bytes start at `data`. The bytes are borrowed: they are read by
    /// write() and must stay valid and unchanged until then. `data` may be null only for an
    /// empty tensor. Names must be unique, non-empty and not "__metadata__".
    void add(const std::string& name, st_dtype type, const std::vector<std::int64_t>& shape, const void* data) {
        add_entry(name, type, shape, data, nullptr);
    }
    void add(const std::string& name, const std::vector<std::int64_t>& shape, const float* data) {
        add(name, st_dtype::F32, shape, data);
    }
    void add(const std::string& name, const std::vector<std::int64_t>& shape, const std::int64_t* data) {
        add(name, st_dtype::I64, shape, data);
    }

    /// Like add(), but copies the bytes now (for temporaries).
    void add_copy(const std::string& name, st_dtype type, const std::vector<std::int64_t>& shape, const void* data) {
        const std::uint64_t bytes = checked_bytes("mmca::io::safetensors_writer::add_copy", name, type, shape);
        MMCA_CHECK_ARG(data != nullptr || bytes == 0, "mmca::io::safetensors_writer::add_copy", "data",
                       "a null pointer for tensor '" + name + "' of " + std::to_string(bytes) + " bytes",
                       "a pointer to the tensor's bytes");
        auto owned = std::make_shared<std::vector<unsigned char>>(static_cast<std::size_t>(bytes));
        if (bytes) std::memcpy(owned->data(), data, static_cast<std::size_t>(bytes));
        add_entry(name, type, shape, owned->data(), owned);
    }

    /// Sets one "__metadata__" entry (replacing an earlier value of the same key).
    void set_metadata(const std::string& key, const std::string& value) { metadata_[key] = value; }

    std::size_t size() const { return entries_.size(); }
    bool contains(const std::string& name) const {
        return std::any_of(entries_.begin(), entries_.end(), [&](const entry& e) { return e.name == name; });
    }

    /// The header text that write() puts after the 8-byte length (JSON padded with spaces).
    std::string header() const {
        const char* where = "mmca::io::safetensors_writer::write";
        std::vector<const entry*> order = data_order();
        nlohmann::json j = nlohmann::json::object();
        std::uint64_t offset = 0;
        for (const entry* e : order) {
            j[e->name] = {{"dtype", st_dtype_name(e->type)},
                          {"shape", e->shape},
                          {"data_offsets", {offset, offset + e->bytes}}};
            offset += e->bytes;
        }
        if (!metadata_.empty()) j["__metadata__"] = metadata_;
        std::string text;
        try {
            text = j.dump();
        } catch (const nlohmann::json::exception& e) {
            throw invalid_argument(where, "names", std::string("a tensor name or metadata text that is not valid UTF-8 (") +
                                                       e.what() + ")",
                                   "UTF-8 names, metadata keys and values");
        }
        while ((8 + text.size()) % 8 != 0) text.push_back(' ');
        MMCA_CHECK_ARG(text.size() <= safetensors_max_header, where, "names",
                       "a header of " + std::to_string(text.size()) + " bytes",
                       "at most " + std::to_string(safetensors_max_header) + " bytes");
        return text;
    }

    /// Writes the file at `path` atomically (see the file comment). Throws mmca::invalid_argument
    /// (argument 'path') naming the path and the system's error when a step fails.
    void write(const std::string& path) const {
        const char* where = "mmca::io::safetensors_writer::write";
        const auto slash = path.find_last_of('/');
        const std::string base = slash == std::string::npos ? path : path.substr(slash + 1);
        MMCA_CHECK_ARG(!base.empty() && base != "." && base != "..", where, "path", "'" + path + "'",
                       "a file path (not a folder)");
        const std::string dir = detail::writer_parent_directory(path);
        const std::string text = header();

        static std::atomic<unsigned> counter{0};
        const std::string tmp = (slash == std::string::npos ? std::string() : path.substr(0, slash + 1)) + "." + base +
                                ".tmp-" + std::to_string(::getpid()) + "-" + std::to_string(counter++);
        const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
        if (fd < 0)
            throw invalid_argument(where, "path",
                                   "'" + path + "' (cannot create '" + tmp + "': " + std::strerror(errno) + ")",
                                   "a path in a writable folder");
        auto fail = [&](const std::string& what) {
            const int err = errno;
            ::close(fd);
            ::unlink(tmp.c_str());
            throw invalid_argument(where, "path", "'" + path + "' (" + what + ": " + std::strerror(err) + ")",
                                   "a path in a writable folder with room for the file");
        };
        unsigned char length[8];
        std::uint64_t n = text.size();
        for (int i = 0; i < 8; ++i) length[i] = static_cast<unsigned char>((n >> (8 * i)) & 0xff);
        if (!detail::write_all(fd, length, 8) ||
            !detail::write_all(fd, reinterpret_cast<const unsigned char*>(text.data()), text.size()))
            fail("writing the header of '" + tmp + "'");
        for (const entry* e : data_order())
            if (e->bytes && !detail::write_all(fd, static_cast<const unsigned char*>(e->data), e->bytes))
                fail("writing tensor '" + e->name + "' to '" + tmp + "'");
        if (::fsync(fd) != 0) fail("fsync of '" + tmp + "'");
        if (::close(fd) != 0) {
            const int err = errno;
            ::unlink(tmp.c_str());
            throw invalid_argument(where, "path", "'" + path + "' (closing '" + tmp + "': " + std::strerror(err) + ")",
                                   "a path in a writable folder with room for the file");
        }
        if (::rename(tmp.c_str(), path.c_str()) != 0) {
            const int err = errno;
            ::unlink(tmp.c_str());
            throw invalid_argument(where, "path",
                                   "'" + path + "' (renaming '" + tmp + "' over it: " + std::strerror(err) + ")",
                                   "a path that is a file or does not exist yet");
        }
        detail::fsync_directory(dir);
    }

private:
    struct entry {
        std::string name;
        st_dtype type;
        std::vector<std::int64_t> shape;
        const void* data;
        std::uint64_t bytes;
        std::shared_ptr<std::vector<unsigned char>> owned;  // set by add_copy
    };

    static std::uint64_t checked_bytes(const char* where, const std::string& name, st_dtype type,
                                       const std::vector<std::int64_t>& shape) {
        std::uint64_t numel = 1;
        for (std::int64_t d : shape) {
            MMCA_CHECK_ARG(d >= 0, where, "shape", mmca::detail::shape_text(shape) + " for tensor '" + name + "'",
                           "non-negative dimensions");
            MMCA_CHECK_ARG(!detail::mul_overflows(numel, static_cast<std::uint64_t>(d), numel), where, "shape",
                           mmca::detail::shape_text(shape) + " for tensor '" + name + "' (element count overflows)",
                           "a shape whose element count fits 64 bits");
        }
        std::uint64_t bytes = 0;
        MMCA_CHECK_ARG(!detail::mul_overflows(numel, st_dtype_size(type), bytes), where, "shape",
                       mmca::detail::shape_text(shape) + " for tensor '" + name + "' (byte count overflows)",
                       "a shape whose byte count fits 64 bits");
        return bytes;
    }

    void add_entry(const std::string& name, st_dtype type, const std::vector<std::int64_t>& shape, const void* data,
                   std::shared_ptr<std::vector<unsigned char>> owned) {
        const char* where = "mmca::io::safetensors_writer::add";
        MMCA_CHECK_ARG(!name.empty() && name != "__metadata__", where, "name", "'" + name + "'",
                       "a non-empty tensor name other than '__metadata__'");
        MMCA_CHECK_ARG(!contains(name), where, "name", "'" + name + "', which was already added", "unique tensor names");
        MMCA_CHECK_ARG(static_cast<int>(type) <= static_cast<int>(st_dtype::F64), where, "type",
                       std::to_string(static_cast<int>(type)), "a safetensors dtype");
        const std::uint64_t bytes = checked_bytes(where, name, type, shape);
        MMCA_CHECK_ARG(data != nullptr || bytes == 0, where, "data",
                       "a null pointer for tensor '" + name + "' of " + std::to_string(bytes) + " bytes",
                       "a pointer to the tensor's bytes");
        std::uint64_t total = bytes;
        for (const entry& e : entries_)
            MMCA_CHECK_ARG(!__builtin_add_overflow(total, e.bytes, &total), where, "shape",
                           mmca::detail::shape_text(shape) + " for tensor '" + name + "' (file size overflows)",
                           "tensors whose total size fits 64 bits");
        entries_.push_back(entry{name, type, shape, data, bytes, std::move(owned)});
    }

    /// Tensors in the order of the data buffer: element size descending, then name.
    std::vector<const entry*> data_order() const {
        std::vector<const entry*> order;
        for (const entry& e : entries_) order.push_back(&e);
        std::sort(order.begin(), order.end(), [](const entry* a, const entry* b) {
            const auto sa = st_dtype_size(a->type), sb = st_dtype_size(b->type);
            return sa != sb ? sa > sb : a->name < b->name;
        });
        return order;
    }

    std::vector<entry> entries_;
    std::map<std::string, std::string> metadata_;
};

/// Writes `tensors` (name → F32 data of the given shape, borrowed) and `metadata` to `path`
/// atomically; a shorthand for safetensors_writer.
struct f32_tensor_view {
    std::vector<std::int64_t> shape;
    const float* data = nullptr;
};
inline void save_safetensors(const std::string& path, const std::map<std::string, f32_tensor_view>& tensors,
                             const std::map<std::string, std::string>& metadata = {}) {
    safetensors_writer w;
    for (const auto& kv : tensors) w.add(kv.first, kv.second.shape, kv.second.data);
    for (const auto& kv : metadata) w.set_metadata(kv.first, kv.second);
    w.write(path);
}

}  // namespace mmca::io
