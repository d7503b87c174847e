// mmca/io/mapped_file.hpp - a whole file mapped read-only into memory (POSIX mmap).
//
// Pages are read from disk when first touched and shared with the page cache, so a model's
// weights are viewed in place: nothing is copied and untouched tensors cost nothing.
#pragma once

#include "mmca/core/error.hpp"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstring>
#include <string>

namespace mmca::io {

class mapped_file {
public:
    /// Maps `path` read-only. Throws mmca::invalid_argument (argument 'path') when the file cannot
    /// be opened, is not a regular file, or cannot be mapped. An empty file maps to size() == 0.
    explicit mapped_file(const std::string& path) : path_(path) {
        const char* where = "mmca::io::mapped_file";
        const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
        if (fd < 0)
            throw invalid_argument(where, "path", "'" + path + "' (" + std::strerror(errno) + ")",
                                   "a readable file");
        struct stat st {};
        if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
            ::close(fd);
            throw invalid_argument(where, "path", "'" + path + "' (not a regular file)", "a readable file");
        }
        size_ = static_cast<std::uint64_t>(st.st_size);
        if (size_ > 0) {
            void* p = ::mmap(nullptr, static_cast<std::size_t>(size_), PROT_READ, MAP_PRIVATE, fd, 0);
            if (p == MAP_FAILED) {
                const int err = errno;
                ::close(fd);
                throw invalid_argument(where, "path", "'" + path + "' (mmap failed: " + std::strerror(err) + ")",
                                       "a file that can be memory-mapped");
            }
            data_ = static_cast<const unsigned char*>(p);
        }
        ::close(fd);  // the mapping stays valid without the descriptor
    }

    mapped_file(const mapped_file&) = delete;
    mapped_file& operator=(const mapped_file&) = delete;
    ~mapped_file() {
        if (data_) ::munmap(const_cast<unsigned char*>(data_), static_cast<std::size_t>(size_));
    }

    const unsigned char* data() const { return data_; }
    std::uint64_t size() const { return size_; }
    const std::string& path() const { return path_; }

private:
    std::string path_;
    const unsigned char* data_ = nullptr;
    std::uint64_t size_ = 0;
};

}  // namespace mmca::io
