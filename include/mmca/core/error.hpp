// mmca/core/error.hpp - the exception type of the library and the checks that raise it.
//
// Every precondition at the API boundary is checked with MMCA_CHECK_ARG, whose
// message names the function, the argument, the value seen and what was expected:
//   mmca::attention_forward: argument 'k': shape [2, 3, 16, 64] is not valid; expected [2, Hkv, Lk, 64] ...
#pragma once

#include <cstddef>
#include <cstdio>
#include <sstream>
#include <type_traits>
#include <stdexcept>
#include <string>
#include <vector>

namespace mmca {

/// Raised for any bad argument (shape, dtype, range, count). Derives from
/// std::invalid_argument, so Python sees a ValueError.
class invalid_argument : public std::invalid_argument {
public:
    invalid_argument(const std::string& where, const std::string& argument,
                     const std::string& seen, const std::string& expected)
        : std::invalid_argument(where + ": argument '" + argument + "': got " + seen +
                                "; expected " + expected),
          argument_(argument) {}

    /// The name of the offending argument, e.g. "k" or "token_types".
    const std::string& argument() const noexcept { return argument_; }

private:
    std::string argument_;
};

namespace detail {

/// Text of any value for error messages, as `std::ostream << value` prints it. Numbers and strings
/// are formatted without iostreams (printf's %g is what a default ostream prints for floating
/// point), so that a message can be built even in a process whose libraries interpose parts of
/// the C++ stream library; other types go through an ostringstream.
template <class T>
std::string to_text(const T& value) {
    using U = std::decay_t<T>;
    if constexpr (std::is_same_v<U, char> || std::is_same_v<U, signed char> || std::is_same_v<U, unsigned char>) {
        return std::string(1, static_cast<char>(value));
    } else if constexpr (std::is_same_v<U, bool>) {
        return value ? "1" : "0";
    } else if constexpr (std::is_integral_v<U>) {
        return std::to_string(value);
    } else if constexpr (std::is_floating_point_v<U>) {
        char buffer[64];
        std::snprintf(buffer, sizeof(buffer), "%g", static_cast<double>(value));
        return buffer;
    } else if constexpr (std::is_convertible_v<const U&, std::string>) {
        return std::string(value);
    } else {
        std::ostringstream os;
        os << value;
        return os.str();
    }
}

template <class Container>
std::string shape_text(const Container& shape) {
    std::string text = "[";
    bool first = true;
    for (auto s : shape) {
        if (!first) text += ", ";
        text += to_text(s);
        first = false;
    }
    return text + "]";
}

}  // namespace detail
}  // namespace mmca

/// Throws mmca::invalid_argument(where, argument, seen, expected) when cond is false.
/// seen and expected are only evaluated on failure.
#define MMCA_CHECK_ARG(cond, where, argument, seen, expected)                          \
    do {                                                                               \
        if (!(cond)) throw ::mmca::invalid_argument((where), (argument), (seen), (expected)); \
    } while (0)
