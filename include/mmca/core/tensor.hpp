// mmca/core/tensor.hpp - host tensors at the API and the non-owning view that reaches kernels.
//
// Owning host data is an xtensor container (mmca::tensor<T, N>); existing buffers are wrapped
// without a copy by mmca::adapt (an xtensor adaptor). Kernels never see xtensor types: every
// argument crosses into them as a tensor_ref (pointer, shape, strides in elements), the one
// plain struct shared by the CPU and CUDA backends and the Python bindings.
#pragma once

#include "mmca/core/error.hpp"

#include <xtensor/xadapt.hpp>
#include <xtensor/xtensor.hpp>

#include <array>
#include <cstddef>
#include <cstdint>
#include <string>
#include <type_traits>

namespace mmca {

/// Owning, row-major host tensor of rank N.
template <class T, std::size_t N>
using tensor = xt::xtensor<T, N, xt::layout_type::row_major>;

/// Wraps an existing row-major buffer of the given shape as an xtensor adaptor (no copy, no ownership).
template <class T, std::size_t N>
auto adapt(T* data, const std::array<std::size_t, N>& shape) {
    std::size_t size = 1;
    for (auto s : shape) size *= s;
    return xt::adapt(data, size, xt::no_ownership(), shape);
}

/// Non-owning view of a strided tensor of rank N: what crosses from host code into kernels.
/// Strides are in elements. A default-constructed view is "absent" (data == nullptr).
template <class T, std::size_t N>
struct tensor_ref {
    T* data = nullptr;
    std::array<std::int64_t, N> shape{};    // elements per dimension
    std::array<std::int64_t, N> strides{};  // elements between neighbours per dimension

    tensor_ref() = default;

    /// A contiguous row-major view of data with the given shape.
    tensor_ref(T* ptr, const std::array<std::int64_t, N>& dims) : data(ptr), shape(dims) {
        std::int64_t s = 1;
        for (std::size_t d = N; d-- > 0;) {
            strides[d] = s;
            s *= dims[d];
        }
    }

    tensor_ref(T* ptr, const std::array<std::int64_t, N>& dims, const std::array<std::int64_t, N>& st)
        : data(ptr), shape(dims), strides(st) {}

    /// A view of any xtensor container or adaptor of rank N (xt::xtensor, xt::xarray, mmca::adapt(...)).
    template <class E, class = std::enable_if_t<std::is_convertible_v<decltype(std::declval<E&>().data()), T*>>,
              class = decltype(std::declval<E&>().strides())>
    tensor_ref(E& expr) : data(expr.data()) {  // NOLINT(google-explicit-constructor): views convert implicitly
        if (expr.dimension() != N)
            throw invalid_argument("mmca::tensor_ref", "tensor", "rank " + std::to_string(expr.dimension()),
                                   "rank " + std::to_string(N));
        for (std::size_t d = 0; d < N; ++d) {
            shape[d] = static_cast<std::int64_t>(expr.shape()[d]);
            strides[d] = static_cast<std::int64_t>(expr.strides()[d]);
        }
        // xtensor reports stride 0 on dimensions of extent 1; give them the row-major value.
        std::int64_t s = 1;
        for (std::size_t d = N; d-- > 0;) {
            if (shape[d] == 1) strides[d] = s;
            s *= shape[d];
        }
    }

    /// Read-only view of a mutable view.
    template <class U, class = std::enable_if_t<std::is_same_v<const U, T> && !std::is_same_v<U, T>>>
    tensor_ref(const tensor_ref<U, N>& other)  // NOLINT(google-explicit-constructor)
        : data(other.data), shape(other.shape), strides(other.strides) {}

    bool empty() const { return data == nullptr; }
    std::int64_t size(std::size_t d) const { return shape[d]; }
    std::int64_t numel() const {
        std::int64_t n = 1;
        for (auto s : shape) n *= s;
        return n;
    }
    /// True when the innermost dimension is contiguous (stride 1 or extent 1).
    bool inner_contiguous() const { return N == 0 || strides[N - 1] == 1 || shape[N - 1] == 1; }
    /// True when the whole tensor is a dense row-major block.
    bool contiguous() const {
        std::int64_t s = 1;
        for (std::size_t d = N; d-- > 0;) {
            if (shape[d] != 1 && strides[d] != s) return false;
            s *= shape[d];
        }
        return true;
    }

    /// Element access; indices are not checked (kernels validate once at the boundary).
    template <class... I>
    T& operator()(I... idx) const {
        static_assert(sizeof...(I) == N, "mmca::tensor_ref: wrong number of indices");
        const std::array<std::int64_t, N> ix{static_cast<std::int64_t>(idx)...};
        std::int64_t off = 0;
        for (std::size_t d = 0; d < N; ++d) off += ix[d] * strides[d];
        return data[off];
    }

    /// Pointer to the element at the given leading indices (the rest zero).
    template <class... I>
    T* ptr(I... idx) const {
        static_assert(sizeof...(I) <= N, "mmca::tensor_ref: too many indices");
        const std::array<std::int64_t, sizeof...(I)> ix{static_cast<std::int64_t>(idx)...};
        std::int64_t off = 0;
        for (std::size_t d = 0; d < sizeof...(I); ++d) off += ix[d] * strides[d];
        return data + off;
    }

    std::string shape_text() const { return detail::shape_text(shape); }
};

template <class T, std::size_t N>
tensor_ref<T, N> make_ref(T* data, const std::array<std::int64_t, N>& shape) {
    return tensor_ref<T, N>(data, shape);
}

}  // namespace mmca
