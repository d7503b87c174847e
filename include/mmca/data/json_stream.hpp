// mmca/data/json_stream.hpp - element-by-element reading of large JSON files in bounded memory.
//
// json_scanner reads a file through a fixed 1 MiB buffer and finds the byte range of each value
// without building it: strings (with their escapes) are skipped, brackets counted. The caller parses
// each element's text on its own (nlohmann::json), so memory holds one element at a time, and may
// keep the element's byte range to read it again later with read_range().
//
//   for_each_array_element(path, f)      top-level [ e0, e1, ... ]: f(index, offset, text)
//   for_each_object_member(path, key, f) top-level { ..., key: { k0: v0, ... }, ... }: f(k, offset, text)
//
// The scanner checks the structure it walks through (brackets, commas, colons, strings that end,
// nothing after the top-level value); the text of each element is checked by the caller's parser.
// A structural error throws mmca::invalid_argument naming the file and the byte offset.
#pragma once

#include "mmca/core/error.hpp"

#include <nlohmann/json.hpp>

#include <cstdint>
#include <cstdio>
#include <sys/types.h>
#include <memory>
#include <string>
#include <vector>

namespace mmca::data {

/// Sequential reader of one JSON file that reports byte offsets.
class json_scanner {
public:
    json_scanner(const std::string& path, std::string where, std::string argument)
        : path_(path), where_(std::move(where)), argument_(std::move(argument)), file_(std::fopen(path.c_str(), "rb"), &std::fclose),
          buffer_(std::size_t(1) << 20) {
        if (!file_) fail_open();
        // A UTF-8 byte order mark before the value is allowed (and skipped).
        if (peek() == 0xEF) {
            get();
            if (get() != 0xBB || get() != 0xBF) fail("a stray byte 0xEF at the start", "a JSON value");
        }
    }

    const std::string& path() const { return path_; }
    /// Absolute offset of the next byte.
    std::uint64_t offset() const { return base_ + pos_; }

    /// Next byte (0..255) or -1 at the end, without consuming it.
    int peek() {
        if (pos_ == size_ && !refill()) return -1;
        return static_cast<unsigned char>(buffer_[pos_]);
    }
    int get() {
        const int c = peek();
        if (c >= 0) {
            ++pos_;
            if (capture_) capture_->push_back(static_cast<char>(c));
        }
        return c;
    }
    void skip_whitespace() {
        for (int c = peek(); c == ' ' || c == '\t' || c == '\n' || c == '\r'; c = peek()) get();
    }
    void expect(char wanted, const char* expected) {
        skip_whitespace();
        const std::uint64_t at = offset();
        const int c = get();
        if (c != static_cast<unsigned char>(wanted)) fail_at(at, describe(c), expected);
    }

    /// Skips one value, returning its start offset; its text is appended to `text` when given.
    std::uint64_t skip_value(std::string* text = nullptr) {
        skip_whitespace();
        const std::uint64_t start = offset();
        capture_ = text;
        const int c = peek();
        if (c == '"') {
            skip_string();
        } else if (c == '{' || c == '[') {
            // Brackets are only counted; whether they match in kind is checked by the element parser.
            std::int64_t depth = 0;
            do {
                const std::uint64_t at = offset();
                const int d = peek();
                if (d < 0) fail_at(at, "the end of the file inside a value that starts at byte " + std::to_string(start),
                                   "a complete JSON value");
                if (d == '"') {
                    skip_string();
                    continue;
                }
                get();
                if (d == '{' || d == '[') ++depth;
                if (d == '}' || d == ']') --depth;
            } while (depth > 0);
        } else if (c == '-' || (c >= '0' && c <= '9') || c == 't' || c == 'f' || c == 'n') {
            for (int d = peek(); d >= 0 && d != ',' && d != ']' && d != '}' && d != ' ' && d != '\t' && d != '\n' && d != '\r';
                 d = peek())
                get();
        } else {
            capture_ = nullptr;
            fail_at(start, describe(c), "a JSON value");
        }
        capture_ = nullptr;
        return start;
    }

    /// Reads a string token and returns its decoded value.
    std::string read_string() {
        skip_whitespace();
        const std::uint64_t at = offset();
        if (peek() != '"') fail_at(at, describe(peek()), "a string (an object key)");
        std::string raw;
        skip_value(&raw);
        const nlohmann::json j = nlohmann::json::parse(raw, nullptr, false);
        if (j.is_discarded() || !j.is_string()) fail_at(at, "an invalid string", "a JSON string");
        return j.get<std::string>();
    }

    /// After the top-level value: only whitespace may follow.
    void expect_end() {
        skip_whitespace();
        if (peek() >= 0) fail_at(offset(), describe(peek()), "the end of the file after the top-level value");
    }

    [[noreturn]] void fail_at(std::uint64_t at, const std::string& seen, const std::string& expected) const {
        throw invalid_argument(where_, argument_, "'" + path_ + "' that is not valid JSON: byte " + std::to_string(at) + ": " + seen,
                               expected);
    }
    [[noreturn]] void fail(const std::string& seen, const std::string& expected) const { fail_at(offset(), seen, expected); }

    static std::string describe(int c) {
        if (c < 0) return "the end of the file";
        if (c >= 0x20 && c < 0x7F) return std::string("'") + static_cast<char>(c) + "'";
        return "byte 0x" + std::string(1, "0123456789abcdef"[c >> 4]) + "0123456789abcdef"[c & 15];
    }

private:
    bool refill() {
        base_ += size_;
        pos_ = 0;
        size_ = std::fread(buffer_.data(), 1, buffer_.size(), file_.get());
        if (size_ == 0 && std::ferror(file_.get()))
            throw invalid_argument(where_, argument_, "'" + path_ + "': a read error at byte " + std::to_string(base_),
                                   "a readable file");
        return size_ > 0;
    }
    void skip_string() {
        const std::uint64_t start = offset();
        get();  // the opening quote
        for (;;) {
            const int c = get();
            if (c < 0) fail_at(start, "a string that does not end", "a closing '\"'");
            if (c == '\\') {
                if (get() < 0) fail_at(start, "a string that does not end", "a closing '\"'");
            } else if (c == '"') {
                return;
            }
        }
    }
    [[noreturn]] void fail_open() const {
        throw invalid_argument(where_, argument_, "'" + path_ + "', which cannot be opened", "a readable JSON file");
    }

    std::string path_, where_, argument_;
    std::unique_ptr<std::FILE, int (*)(std::FILE*)> file_;
    std::vector<char> buffer_;
    std::size_t pos_ = 0, size_ = 0;
    std::uint64_t base_ = 0;
    std::string* capture_ = nullptr;
};

/// Calls f(index, offset, text) for each element of the top-level array of `path`; text is the
/// element's JSON text. `where`/`argument` name the caller in error messages.
template <class F>
void for_each_array_element(const std::string& path, const std::string& where, const std::string& argument, F&& f) {
    json_scanner s(path, where, argument);
    s.expect('[', "a JSON array ('[') as the top-level value");
    s.skip_whitespace();
    std::uint64_t index = 0;
    std::string text;
    if (s.peek() == ']') {
        s.get();
    } else {
        for (;;) {
            text.clear();
            const std::uint64_t at = s.skip_value(&text);
            f(index++, at, text);
            s.skip_whitespace();
            const std::uint64_t sep_at = s.offset();
            const int c = s.get();
            if (c == ']') break;
            if (c != ',') s.fail_at(sep_at, json_scanner::describe(c), "',' or ']' after an array element");
        }
    }
    s.expect_end();
}

/// Calls f(key, offset, text) for each member of the object that is the value of `key` in the
/// top-level object of `path` (MIMIC-IT's {"meta": ..., "data": {id: {...}}}). Other top-level
/// members are skipped. A file without `key`, or whose `key` is not an object, is an error.
template <class F>
void for_each_object_member(const std::string& path, const std::string& key, const std::string& where,
                            const std::string& argument, F&& f) {
    json_scanner s(path, where, argument);
    s.expect('{', "a JSON object ('{') as the top-level value");
    bool found = false;
    std::string text;
    s.skip_whitespace();
    if (s.peek() == '}') {
        s.get();
    } else {
        for (;;) {
            const std::string name = s.read_string();
            s.expect(':', "':' after an object key");
            s.skip_whitespace();
            if (name == key && !found) {
                found = true;
                s.expect('{', ("an object as the value of \"" + key + "\"").c_str());
                s.skip_whitespace();
                if (s.peek() == '}') {
                    s.get();
                } else {
                    for (;;) {
                        const std::string member = s.read_string();
                        s.expect(':', "':' after an object key");
                        text.clear();
                        const std::uint64_t at = s.skip_value(&text);
                        f(member, at, text);
                        s.skip_whitespace();
                        const std::uint64_t sep_at = s.offset();
                        const int c = s.get();
                        if (c == '}') break;
                        if (c != ',') s.fail_at(sep_at, json_scanner::describe(c), "',' or '}' after an object member");
                    }
                }
            } else {
                s.skip_value();
            }
            s.skip_whitespace();
            const std::uint64_t sep_at = s.offset();
            const int c = s.get();
            if (c == '}') break;
            if (c != ',') s.fail_at(sep_at, json_scanner::describe(c), "',' or '}' after an object member");
        }
    }
    s.expect_end();
    if (!found)
        throw invalid_argument(where, argument, "'" + path + "' without a top-level \"" + key + "\" member",
                               "a JSON object with a \"" + key + "\" object");
}

/// Random access to byte ranges of a file (elements found by a scan, read again later).
class file_ranges {
public:
    file_ranges(const std::string& path, const std::string& where, const std::string& argument)
        : path_(path), file_(std::fopen(path.c_str(), "rb"), &std::fclose) {
        if (!file_) throw invalid_argument(where, argument, "'" + path + "', which cannot be opened", "a readable file");
    }
    /// Bytes [offset, offset + length) of the file.
    std::string read(std::uint64_t offset, std::uint64_t length) {
        std::string text(static_cast<std::size_t>(length), '\0');
        if (fseeko(file_.get(), static_cast<off_t>(offset), SEEK_SET) != 0 ||
            std::fread(text.data(), 1, text.size(), file_.get()) != text.size())
            throw invalid_argument("mmca::data::file_ranges::read", "offset",
                                   "bytes [" + std::to_string(offset) + ", " + std::to_string(offset + length) + ") of '" +
                                       path_ + "', which cannot be read",
                                   "a range inside the file (was it changed while it was being read?)");
        return text;
    }

private:
    std::string path_;
    std::unique_ptr<std::FILE, int (*)(std::FILE*)> file_;
};

}  // namespace mmca::data
