// mmca/core/dtype.hpp - storage element types and their conversion to the float32 compute type.
//
// Activations are computed in float32. Keys and values (and later weights) may be
// stored as float16 or bfloat16 and are widened block by block where they are used.
#pragma once

#include <Eigen/Core>

#if defined(__F16C__) || defined(__AVX2__) || defined(__AVX512F__)
#include <immintrin.h>
#endif

#include <cstdint>
#include <cstring>
#include <string>
#include <type_traits>

namespace mmca {

using float16 = Eigen::half;
using bfloat16 = Eigen::bfloat16;

/// Runtime tag of a storage type (used by bindings and error messages).
enum class dtype : std::uint8_t { float32, float16, bfloat16 };

inline const char* dtype_name(dtype t) {
    switch (t) {
        case dtype::float32: return "float32";
        case dtype::float16: return "float16";
        case dtype::bfloat16: return "bfloat16";
    }
    return "unknown";
}

template <class T>
struct dtype_of;
template <>
struct dtype_of<float> {
    static constexpr dtype value = dtype::float32;
};
template <>
struct dtype_of<float16> {
    static constexpr dtype value = dtype::float16;
};
template <>
struct dtype_of<bfloat16> {
    static constexpr dtype value = dtype::bfloat16;
};

/// True for the element types mmca accepts as storage of keys, values and weights.
template <class T>
inline constexpr bool is_storage_type_v =
    std::is_same_v<std::remove_const_t<T>, float> || std::is_same_v<std::remove_const_t<T>, float16> ||
    std::is_same_v<std::remove_const_t<T>, bfloat16>;

/// Widens n elements of a storage type to float32 (a plain copy for float). Uses F16C / AVX2
/// conversions 8 at a time where the compiler targets them: this sits on the decode path.
template <class T>
inline void to_float(const T* src, float* dst, std::int64_t n) {
    static_assert(is_storage_type_v<T>, "mmca: storage type must be float, float16 or bfloat16");
    std::int64_t i = 0;
    if constexpr (std::is_same_v<T, float>) {
        std::memcpy(dst, src, static_cast<std::size_t>(n) * sizeof(float));
        return;
    } else if constexpr (std::is_same_v<T, float16>) {
#if defined(__F16C__)
        for (; i + 8 <= n; i += 8)
            _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i))));
#endif
    } else {
#if defined(__AVX2__)
        // bfloat16 is the high half of a float32: zero-extend to 32 bits and shift left by 16.
        for (; i + 8 <= n; i += 8) {
            const __m256i wide = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i)));
            _mm256_storeu_ps(dst + i, _mm256_castsi256_ps(_mm256_slli_epi32(wide, 16)));
        }
#endif
    }
    for (; i < n; ++i) dst[i] = static_cast<float>(src[i]);
}

/// The float32 SIMD packet of Eigen's build (8 lanes on AVX2, 16 on AVX-512).
using float_packet = Eigen::internal::packet_traits<float>::type;
inline constexpr int float_packet_size = Eigen::internal::packet_traits<float>::size;

/// One float_packet of consecutive elements of a storage type starting at p, widened exactly in
/// registers (no round trip through memory where the compiler targets F16C / AVX2 / AVX-512).
template <class T>
inline float_packet load_float_packet(const T* p) {
    static_assert(is_storage_type_v<T>, "mmca: storage type must be float, float16 or bfloat16");
    if constexpr (std::is_same_v<T, float>) {
        return Eigen::internal::ploadu<float_packet>(p);
    } else {
#if defined(EIGEN_VECTORIZE_AVX512)
        static_assert(float_packet_size == 16, "mmca: AVX-512 float packets are 16 lanes");
        const __m256i raw = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
        if constexpr (std::is_same_v<T, bfloat16>)
            return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(raw), 16));
        else
            return _mm512_cvtph_ps(raw);
#elif defined(EIGEN_VECTORIZE_AVX) && defined(__AVX2__) && defined(__F16C__)
        static_assert(float_packet_size == 8, "mmca: AVX float packets are 8 lanes");
        const __m128i raw = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
        if constexpr (std::is_same_v<T, bfloat16>)
            return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(raw), 16));
        else
            return _mm256_cvtph_ps(raw);
#else
        float wide[float_packet_size];
        to_float(p, wide, float_packet_size);
        return Eigen::internal::ploadu<float_packet>(wide);
#endif
    }
}

/// Narrows n float32 values to a storage type (round to nearest even).
template <class T>
inline void from_float(const float* src, T* dst, std::int64_t n) {
    static_assert(is_storage_type_v<T>, "mmca: storage type must be float, float16 or bfloat16");
    if constexpr (std::is_same_v<T, float>) {
        for (std::int64_t i = 0; i < n; ++i) dst[i] = src[i];
    } else {
        Eigen::Map<Eigen::Array<T, Eigen::Dynamic, 1>>(dst, n) =
            Eigen::Map<const Eigen::ArrayXf>(src, n).template cast<T>();
    }
}

}  // namespace mmca
