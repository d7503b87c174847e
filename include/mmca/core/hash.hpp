// mmca/core/hash.hpp - the 64-bit FNV-1a hash, used to recognise content seen before (image caches).
#pragma once

#include <cstddef>
#include <cstdint>

namespace mmca {

inline constexpr std::uint64_t fnv1a64_offset = 0xcbf29ce484222325ull;

/// FNV-1a over n bytes, continuing from h (the offset basis for a new hash).
inline std::uint64_t fnv1a64(const void* data, std::size_t n, std::uint64_t h = fnv1a64_offset) {
    const auto* p = static_cast<const unsigned char*>(data);
    for (std::size_t i = 0; i < n; ++i) {
        h ^= p[i];
        h *= 0x100000001b3ull;
    }
    return h;
}

/// FNV-1a over the 8 little-endian bytes of v, continuing from h.
inline std::uint64_t fnv1a64_u64(std::uint64_t v, std::uint64_t h = fnv1a64_offset) {
    unsigned char bytes[8];
    for (int i = 0; i < 8; ++i) bytes[i] = static_cast<unsigned char>((v >> (8 * i)) & 0xffu);
    return fnv1a64(bytes, 8, h);
}

}  // namespace mmca
