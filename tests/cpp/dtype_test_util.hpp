// tests/cpp/dtype_test_util.hpp - storage-type helpers shared by the C++ tests.
#pragma once

#include <cstddef>
#include <vector>

namespace mmca_test {

/// v converted element by element to the storage type T (float, mmca::float16, mmca::bfloat16).
template <class T>
std::vector<T> narrow(const std::vector<float>& v) {
    std::vector<T> out(v.size());
    for (std::size_t i = 0; i < v.size(); ++i) out[i] = T(v[i]);
    return out;
}

}  // namespace mmca_test
