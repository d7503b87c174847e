// mmca/core/error.hpp - the exception type of the library and the checks that raise it.
//
// Every precondition at the API boundary is checked with MMCA_CHECK_ARG, whose
// message names the function, the argument, the value seen and what was expected:
//   mmca::attention_forward: argument 'k': shape [2, 3, 16, 64] is not valid; expected [2, Hkv, Lk, 64] ...
#pragma once

#include <cstddef>
#include <sstream>
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

/// Streams any value (or a container of values) into a string for error messages.
template <class T>
std::string to_text(const T& value) {
    std::ostringstream os;
    os << value;
    return os.str();
}

template <class Container>
std::string shape_text(const Container& shape) {
    std::ostringstream os;
    os << '[';
    bool first = true;
    for (auto s : shape) {
        if (!first) os << ", ";
        os << s;
        first = false;
    }
    os << ']';
    return os.str();
}

}  // namespace detail
}  // namespace mmca

/// Throws mmca::invalid_argument(where, argument, seen, expected) when cond is false.
/// seen and expected are only evaluated on failure.
#define MMCA_CHECK_ARG(cond, where, argument, seen, expected)                          \
    do {                                                                               \
        if (!(cond)) throw ::mmca::invalid_argument((where), (argument), (seen), (expected)); \
    } while (0)
