// mmca/nn/detail/gemm_kernel.hpp - packed AVX2/FMA GEMM behind nn::linear_forward's prefill path.
//
//   y[n, o] = Σ_k x[n, k] · W[o, k] (+ bias[o])    x (N, in) float32, W [out, in] float32/float16/bfloat16
//
// The GotoBLAS/BLIS structure, with x as the left operand (rows) and Wᵀ as the right one (columns):
//   * micro-kernel: a register tile of 6 rows × 16 columns (12 ymm accumulators); per k it broadcasts
//     6 values of x and loads 16 packed weights (two ymm), 12 FMAs.
//   * x is packed once per call (all of it, shared read-only by the threads) into row micro-panels:
//     for each block of K (kc values) and each group of 6 rows, kc × 6 floats, k-major; rows past N
//     are zero.
//   * W is packed per work item and per K block into column micro-panels (kc × 16 floats, k-major)
//     in a per-thread buffer, widening float16 (F16C) and bfloat16 (16-bit shift) in the packing
//     itself; columns past `out` are zero. One packed W block (kc × up to gemm_nc columns) is
//     reused by every row of the work item; one micro-panel (kc × 16, 16 KiB) stays in L1 while
//     the rows of an MC block (gemm_mc × kc of x, in L2) stream past it.
//   * Work items are blocks of output columns (and, when there are few columns, of rows), spread with
//     mmca::parallel_for: no item shares a buffer it writes with another.
// Numerics: every output element is computed the same way whatever N, the thread count or the item
// it falls in: for each K block (boundaries depend on `in` only) an FMA chain over k in increasing
// order, the blocks' partial sums added in order to y, then the bias. Results are bitwise the same
// for any thread count and any number of other rows (a batch equals its rows computed one by one).
// Edge tiles run the same kernel on zero-padded panels and copy the valid part out.
#pragma once

#include "mmca/core/dtype.hpp"
#include "mmca/core/tensor.hpp"
#include "mmca/core/threading.hpp"

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <new>
#include <type_traits>

// MMCA_NN_HAVE_PACKED_GEMM may be defined to 0 beforehand to use the Eigen path of linear_forward.
#if !defined(MMCA_NN_HAVE_PACKED_GEMM)
#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#define MMCA_NN_HAVE_PACKED_GEMM 1
#else
#define MMCA_NN_HAVE_PACKED_GEMM 0
#endif
#endif
#if MMCA_NN_HAVE_PACKED_GEMM
#include <immintrin.h>
#endif

namespace mmca::nn::detail {

/// Register tile: rows of x (MR) × output columns (NR).
inline constexpr std::int64_t gemm_mr = 6;
inline constexpr std::int64_t gemm_nr = 16;
/// Largest K block. The actual block splits `in` evenly (a function of `in` only).
inline constexpr std::int64_t gemm_kc_max = 256;
/// Rows of x per MC block (multiple of gemm_mr): gemm_mc × kc floats of packed x stay in L2.
inline constexpr std::int64_t gemm_mc = 120;
/// Largest number of output columns per work item (multiple of gemm_nr).
inline constexpr std::int64_t gemm_nc_max = 256;

/// K block length for a given `in`: `in` cut into equal blocks of at most gemm_kc_max.
inline std::int64_t gemm_kc(std::int64_t in) {
    const std::int64_t blocks = (in + gemm_kc_max - 1) / gemm_kc_max;
    return blocks <= 1 ? in : (in + blocks - 1) / blocks;
}

/// A 64-byte aligned float buffer that only grows (its contents are not kept when it does).
class gemm_buffer {
public:
    float* get(std::int64_t n) {
        if (n > size_) {
            data_.reset(static_cast<float*>(std::aligned_alloc(64, round_bytes(n))));
            if (!data_) throw std::bad_alloc();
            size_ = n;
        }
        return data_.get();
    }
    /// Frees the buffer when it holds more than `keep` floats.
    void trim(std::int64_t keep) {
        if (size_ > keep) {
            data_.reset();
            size_ = 0;
        }
    }

private:
    struct deleter {
        void operator()(float* p) const { std::free(p); }
    };
    static std::size_t round_bytes(std::int64_t n) {
        return (static_cast<std::size_t>(n) * sizeof(float) + 63) / 64 * 64;
    }
    std::unique_ptr<float, deleter> data_;
    std::int64_t size_ = 0;
};

#if MMCA_NN_HAVE_PACKED_GEMM

/// 8 consecutive weights as float32 (exact widening).
inline __m256 gemm_load8(const float* p) { return _mm256_loadu_ps(p); }
inline __m256 gemm_load8(const bfloat16* p) {
    const __m128i raw = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(raw), 16));
}
inline __m256 gemm_load8(const float16* p) {
    return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}

/// In-register transpose of an 8 × 8 float block: r[i][j] -> r[j][i].
inline void gemm_transpose8(__m256 r[8]) {
    const __m256 t0 = _mm256_unpacklo_ps(r[0], r[1]), t1 = _mm256_unpackhi_ps(r[0], r[1]);
    const __m256 t2 = _mm256_unpacklo_ps(r[2], r[3]), t3 = _mm256_unpackhi_ps(r[2], r[3]);
    const __m256 t4 = _mm256_unpacklo_ps(r[4], r[5]), t5 = _mm256_unpackhi_ps(r[4], r[5]);
    const __m256 t6 = _mm256_unpacklo_ps(r[6], r[7]), t7 = _mm256_unpackhi_ps(r[6], r[7]);
    const __m256 s0 = _mm256_shuffle_ps(t0, t2, 0x44), s1 = _mm256_shuffle_ps(t0, t2, 0xEE);
    const __m256 s2 = _mm256_shuffle_ps(t1, t3, 0x44), s3 = _mm256_shuffle_ps(t1, t3, 0xEE);
    const __m256 s4 = _mm256_shuffle_ps(t4, t6, 0x44), s5 = _mm256_shuffle_ps(t4, t6, 0xEE);
    const __m256 s6 = _mm256_shuffle_ps(t5, t7, 0x44), s7 = _mm256_shuffle_ps(t5, t7, 0xEE);
    r[0] = _mm256_permute2f128_ps(s0, s4, 0x20);
    r[1] = _mm256_permute2f128_ps(s1, s5, 0x20);
    r[2] = _mm256_permute2f128_ps(s2, s6, 0x20);
    r[3] = _mm256_permute2f128_ps(s3, s7, 0x20);
    r[4] = _mm256_permute2f128_ps(s0, s4, 0x31);
    r[5] = _mm256_permute2f128_ps(s1, s5, 0x31);
    r[6] = _mm256_permute2f128_ps(s2, s6, 0x31);
    r[7] = _mm256_permute2f128_ps(s3, s7, 0x31);
}

/// Packs W[c0 : c0+nc, k0 : k0+kc] (row stride `in`) into ceil(nc / 16) column micro-panels of
/// kc × 16 floats: dst[p·kc·16 + k·16 + j] = W[c0 + 16p + j, k0 + k], 0 past column nc.
template <class T>
void gemm_pack_w(const T* w, std::int64_t in, std::int64_t c0, std::int64_t nc, std::int64_t k0, std::int64_t kc,
                 float* dst) {
    const std::int64_t panels = (nc + gemm_nr - 1) / gemm_nr;
    for (std::int64_t p = 0; p < panels; ++p) {
        float* panel = dst + p * kc * gemm_nr;
        for (std::int64_t half = 0; half < 2; ++half) {
            const std::int64_t j0 = p * gemm_nr + half * 8;  // first column of this half, relative to c0
            const std::int64_t valid = std::clamp<std::int64_t>(nc - j0, 0, 8);
            float* out = panel + half * 8;
            if (valid == 0) {
                for (std::int64_t k = 0; k < kc; ++k) _mm256_store_ps(out + k * gemm_nr, _mm256_setzero_ps());
                continue;
            }
            const T* rows[8];
            for (std::int64_t j = 0; j < 8; ++j) rows[j] = w + (c0 + j0 + std::min(j, valid - 1)) * in + k0;
            std::int64_t k = 0;
            for (; k + 8 <= kc; k += 8) {
                __m256 r[8];
                for (std::int64_t j = 0; j < 8; ++j) r[j] = j < valid ? gemm_load8(rows[j] + k) : _mm256_setzero_ps();
                gemm_transpose8(r);
                for (std::int64_t t = 0; t < 8; ++t) _mm256_store_ps(out + (k + t) * gemm_nr, r[t]);
            }
            for (; k < kc; ++k)
                for (std::int64_t j = 0; j < 8; ++j)
                    out[k * gemm_nr + j] = j < valid ? static_cast<float>(rows[j][k]) : 0.0f;
        }
    }
}

/// Packs rows [r0, r0 + 6) of x, columns [k0, k0 + kc), as kc × 6 floats (k-major); rows >= N are 0.
inline void gemm_pack_x_panel(tensor_ref<const float, 2> x, std::int64_t r0, std::int64_t k0, std::int64_t kc,
                              float* dst) {
    const std::int64_t N = x.shape[0];
    const std::int64_t valid = std::min<std::int64_t>(gemm_mr, N - r0);
    if (valid == gemm_mr) {
        const float* p[gemm_mr];
        for (std::int64_t i = 0; i < gemm_mr; ++i) p[i] = x.ptr(r0 + i) + k0;
        for (std::int64_t k = 0; k < kc; ++k)
            for (std::int64_t i = 0; i < gemm_mr; ++i) dst[k * gemm_mr + i] = p[i][k];
        return;
    }
    for (std::int64_t k = 0; k < kc; ++k)
        for (std::int64_t i = 0; i < gemm_mr; ++i) dst[k * gemm_mr + i] = i < valid ? x(r0 + i, k0 + k) : 0.0f;
}

/// The 6 × 16 micro-kernel: acc = Σ_k a[k·6 + i] · b[k·16 + j] (k increasing), then
/// c = acc (first) or c + acc, then + bias[j] (when bias is given: the last K block). Writes rows
/// < rows and columns < cols of c (row stride ldc).
inline void gemm_kernel_6x16(std::int64_t kc, const float* a, const float* b, float* c, std::int64_t ldc,
                             std::int64_t rows, std::int64_t cols, bool first, const float* bias) {
    __m256 c00 = _mm256_setzero_ps(), c01 = _mm256_setzero_ps();
    __m256 c10 = _mm256_setzero_ps(), c11 = _mm256_setzero_ps();
    __m256 c20 = _mm256_setzero_ps(), c21 = _mm256_setzero_ps();
    __m256 c30 = _mm256_setzero_ps(), c31 = _mm256_setzero_ps();
    __m256 c40 = _mm256_setzero_ps(), c41 = _mm256_setzero_ps();
    __m256 c50 = _mm256_setzero_ps(), c51 = _mm256_setzero_ps();
    if (!first)  // the partial sums read back at the end
        for (std::int64_t i = 0; i < rows; ++i) {
            _mm_prefetch(reinterpret_cast<const char*>(c + i * ldc), _MM_HINT_T0);
            _mm_prefetch(reinterpret_cast<const char*>(c + i * ldc + gemm_nr - 1), _MM_HINT_T0);
        }
#pragma GCC unroll 4
    for (std::int64_t k = 0; k < kc; ++k) {
        const __m256 b0 = _mm256_load_ps(b), b1 = _mm256_load_ps(b + 8);
        __m256 av = _mm256_broadcast_ss(a);
        c00 = _mm256_fmadd_ps(av, b0, c00);
        c01 = _mm256_fmadd_ps(av, b1, c01);
        av = _mm256_broadcast_ss(a + 1);
        c10 = _mm256_fmadd_ps(av, b0, c10);
        c11 = _mm256_fmadd_ps(av, b1, c11);
        av = _mm256_broadcast_ss(a + 2);
        c20 = _mm256_fmadd_ps(av, b0, c20);
        c21 = _mm256_fmadd_ps(av, b1, c21);
        av = _mm256_broadcast_ss(a + 3);
        c30 = _mm256_fmadd_ps(av, b0, c30);
        c31 = _mm256_fmadd_ps(av, b1, c31);
        av = _mm256_broadcast_ss(a + 4);
        c40 = _mm256_fmadd_ps(av, b0, c40);
        c41 = _mm256_fmadd_ps(av, b1, c41);
        av = _mm256_broadcast_ss(a + 5);
        c50 = _mm256_fmadd_ps(av, b0, c50);
        c51 = _mm256_fmadd_ps(av, b1, c51);
        a += gemm_mr;
        b += gemm_nr;
    }
    const __m256 acc[gemm_mr][2] = {{c00, c01}, {c10, c11}, {c20, c21}, {c30, c31}, {c40, c41}, {c50, c51}};
    if (rows == gemm_mr && cols == gemm_nr) {
        const __m256 bias0 = bias ? _mm256_loadu_ps(bias) : _mm256_setzero_ps();
        const __m256 bias1 = bias ? _mm256_loadu_ps(bias + 8) : _mm256_setzero_ps();
        for (std::int64_t i = 0; i < gemm_mr; ++i) {
            float* ci = c + i * ldc;
            __m256 v0 = acc[i][0], v1 = acc[i][1];
            if (!first) {
                v0 = _mm256_add_ps(_mm256_loadu_ps(ci), v0);
                v1 = _mm256_add_ps(_mm256_loadu_ps(ci + 8), v1);
            }
            if (bias) {
                v0 = _mm256_add_ps(v0, bias0);
                v1 = _mm256_add_ps(v1, bias1);
            }
            _mm256_storeu_ps(ci, v0);
            _mm256_storeu_ps(ci + 8, v1);
        }
        return;
    }
    // Edge tile: the same sums, then the same additions one element at a time.
    alignas(32) float tile[gemm_mr][gemm_nr];
    for (std::int64_t i = 0; i < gemm_mr; ++i) {
        _mm256_store_ps(tile[i], acc[i][0]);
        _mm256_store_ps(tile[i] + 8, acc[i][1]);
    }
    for (std::int64_t i = 0; i < rows; ++i) {
        float* ci = c + i * ldc;
        for (std::int64_t j = 0; j < cols; ++j) {
            float v = tile[i][j];
            if (!first) v = ci[j] + v;
            if (bias) v = v + bias[j];
            ci[j] = v;
        }
    }
}

/// Buffers of the calling thread: packed x (per call) and packed W blocks (per work item).
inline gemm_buffer& gemm_x_buffer() {
    thread_local gemm_buffer buffer;
    return buffer;
}
inline gemm_buffer& gemm_w_buffer() {
    thread_local gemm_buffer buffer;
    return buffer;
}

/// y = x · Wᵀ (+ bias) with the packed kernel; x (N, in), y (N, out), rows contiguous, no overlap.
template <class T>
void gemm_packed(tensor_ref<const float, 2> x, const T* w, std::int64_t out, std::int64_t in, const float* bias,
                 tensor_ref<float, 2> y, int threads) {
    const std::int64_t N = x.shape[0];
    if (N == 0 || out == 0) return;
    if (in == 0) {  // empty sums: y = bias (or 0)
        for (std::int64_t n = 0; n < N; ++n)
            for (std::int64_t o = 0; o < out; ++o) y(n, o) = bias ? bias[o] : 0.0f;
        return;
    }
    const std::int64_t kc_max = gemm_kc(in);
    const std::int64_t kblocks = (in + kc_max - 1) / kc_max;
    const std::int64_t row_panels = (N + gemm_mr - 1) / gemm_mr;
    const std::int64_t Np = row_panels * gemm_mr;

    // Pack all of x: K block b starts at xp + k0·Np; its row panel r at + r·6·kc.
    gemm_buffer& xbuf = gemm_x_buffer();
    float* const xp = xbuf.get(Np * in);
    {
        const std::int64_t group = 16;  // row panels per packing item
        const std::int64_t items = (row_panels + group - 1) / group;
        parallel_for(items, static_cast<int>(std::min<std::int64_t>(threads, items)), [&](std::int64_t item, int) {
            const std::int64_t p1 = std::min(row_panels, (item + 1) * group);
            for (std::int64_t kb = 0; kb < kblocks; ++kb) {
                const std::int64_t k0 = kb * kc_max, kc = std::min(kc_max, in - k0);
                for (std::int64_t p = item * group; p < p1; ++p)
                    gemm_pack_x_panel(x, p * gemm_mr, k0, kc, xp + k0 * Np + p * gemm_mr * kc);
            }
        });
    }

    // Work items: column blocks of up to gemm_nc_max (as many as a multiple of the thread count when
    // there are enough columns), and row blocks when the columns alone give too few items.
    const std::int64_t col_panels = (out + gemm_nr - 1) / gemm_nr;
    std::int64_t col_blocks = (col_panels * gemm_nr + gemm_nc_max - 1) / gemm_nc_max;
    if (threads > 1) col_blocks = std::min(col_panels, (col_blocks + threads - 1) / threads * threads);
    const std::int64_t panels_per_block = (col_panels + col_blocks - 1) / col_blocks;
    col_blocks = (col_panels + panels_per_block - 1) / panels_per_block;
    std::int64_t row_blocks = 1;
    if (threads > 1 && col_blocks < 2 * threads)
        row_blocks = std::min(row_panels, (2 * threads + col_blocks - 1) / col_blocks);
    const std::int64_t rpanels_per_block = (row_panels + row_blocks - 1) / row_blocks;
    row_blocks = (row_panels + rpanels_per_block - 1) / rpanels_per_block;

    const std::int64_t ldc = y.strides[0];
    parallel_for(col_blocks * row_blocks, threads, [&](std::int64_t item, int) {
        const std::int64_t cb = item / row_blocks, rb = item % row_blocks;
        const std::int64_t c0 = cb * panels_per_block * gemm_nr;
        const std::int64_t nc = std::min(out - c0, panels_per_block * gemm_nr);
        const std::int64_t npanels = (nc + gemm_nr - 1) / gemm_nr;
        const std::int64_t r0 = rb * rpanels_per_block * gemm_mr;
        const std::int64_t r1 = std::min(Np, r0 + rpanels_per_block * gemm_mr);
        float* const wp = gemm_w_buffer().get(npanels * gemm_nr * kc_max);
        for (std::int64_t kb = 0; kb < kblocks; ++kb) {
            const std::int64_t k0 = kb * kc_max, kc = std::min(kc_max, in - k0);
            const bool first = kb == 0;
            const float* const bias_here = (kb + 1 == kblocks && bias) ? bias + c0 : nullptr;
            gemm_pack_w(w, in, c0, nc, k0, kc, wp);
            const float* const xb = xp + k0 * Np;
            for (std::int64_t ic = r0; ic < r1; ic += gemm_mc) {
                const std::int64_t ic1 = std::min(r1, ic + gemm_mc);
                for (std::int64_t p = 0; p < npanels; ++p) {
                    const float* const bp = wp + p * kc * gemm_nr;
                    const std::int64_t cols = std::min(gemm_nr, nc - p * gemm_nr);
                    const float* const bias_p = bias_here ? bias_here + p * gemm_nr : nullptr;
                    for (std::int64_t ir = ic; ir < ic1; ir += gemm_mr) {
                        const std::int64_t rows = std::min(gemm_mr, N - ir);
                        gemm_kernel_6x16(kc, xb + ir * kc, bp, y.data + ir * ldc + c0 + p * gemm_nr, ldc, rows, cols,
                                         first, bias_p);
                    }
                }
            }
        }
    });
    xbuf.trim(std::int64_t{16} << 20);  // keep at most 64 MiB of packed x between calls
}

#endif  // MMCA_NN_HAVE_PACKED_GEMM

}  // namespace mmca::nn::detail
