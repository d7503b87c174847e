// mmca/vision/image_resize.hpp - bicubic resampling of 8-bit images with the results of PIL's
// Image.resize(size, Image.BICUBIC) (Pillow 9.4, libImaging/Resample.c), pixel for pixel.
//
// What PIL computes, and this file too:
//   * Separable: columns first (each row of the input becomes out_width pixels), then rows;
//     the intermediate image is 8-bit (rounded and clipped), as PIL's is. A pass whose size does
//     not change is skipped (it would be the identity anyway).
//   * Per axis, in → out pixels: scale = in / out; the kernel is the cubic convolution kernel
//     with a = −0.5, widened by filterscale = max(scale, 1) when shrinking (antialiasing):
//     support = 2·filterscale input pixels on each side. Output pixel o is centred on input
//     coordinate (o + ½)·scale; its taps are the inputs i in [trunc(centre − support + ½),
//     trunc(centre + support + ½)) clipped to [0, in), with weight k((i − centre + ½)/filterscale),
//     normalised to sum 1 (no border padding: taps outside the image are dropped and the rest
//     renormalised).
//   * Weights become fixed point with 22 fractional bits (rounded half away from zero); each
//     output is (Σ pixel·weight + 2²¹) >> 22 clipped to [0, 255].
//
// A window of the output can be computed alone (resize_bicubic(src, h, w, window)): the pixels
// equal those of the full resize, since each output pixel depends only on its own taps. The
// preprocessing resize-then-centre-crop uses it to compute only the kept pixels.
#pragma once

#include "mmca/core/error.hpp"
#include "mmca/core/tensor.hpp"
#include "mmca/core/threading.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

namespace mmca::vision {

/// A rectangle of output pixels: rows [top, top + height), columns [left, left + width).
struct pixel_window {
    std::int64_t top = 0;
    std::int64_t left = 0;
    std::int64_t height = 0;
    std::int64_t width = 0;
};

namespace detail {

/// Fractional bits of the fixed-point weights (8-bit pixels, 2 bits of headroom for the
/// kernel's negative lobes, in 32-bit sums).
inline constexpr int resample_precision_bits = 22;

/// The cubic convolution kernel with a = −0.5 (zero outside |x| < 2).
inline double bicubic_kernel(double x) {
    constexpr double a = -0.5;
    if (x < 0.0) x = -x;
    if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0;
    if (x < 2.0) return (((x - 5.0) * x + 8.0) * x - 4.0) * a;
    return 0.0;
}

/// The taps of one axis resampled from in_size to out_size pixels, for the outputs
/// [first, first + count).
struct resample_taps {
    std::int64_t ksize = 0;             // weights stored per output (the most any output uses)
    std::vector<std::int64_t> start;    // (count,) first input pixel of each output
    std::vector<std::int64_t> length;   // (count,) number of input pixels each output uses
    std::vector<std::int32_t> weights;  // (count, ksize) fixed point, resample_precision_bits
};

inline resample_taps bicubic_taps(std::int64_t in_size, std::int64_t out_size, std::int64_t first,
                                  std::int64_t count) {
    const double scale = static_cast<double>(in_size) / static_cast<double>(out_size);
    const double filterscale = std::max(scale, 1.0);
    const double support = 2.0 * filterscale;
    const double inv_filterscale = 1.0 / filterscale;
    resample_taps taps;
    taps.ksize = static_cast<std::int64_t>(std::ceil(support)) * 2 + 1;
    taps.start.resize(static_cast<std::size_t>(count));
    taps.length.resize(static_cast<std::size_t>(count));
    taps.weights.assign(static_cast<std::size_t>(count * taps.ksize), 0);
    std::vector<double> w(static_cast<std::size_t>(taps.ksize));
    constexpr double one = static_cast<double>(std::int64_t{1} << resample_precision_bits);
    for (std::int64_t n = 0; n < count; ++n) {
        const double center = (static_cast<double>(first + n) + 0.5) * scale;
        // Truncation toward zero, then clipping to the image (PIL's rule for the tap range).
        const std::int64_t lo = std::max<std::int64_t>(static_cast<std::int64_t>(center - support + 0.5), 0);
        const std::int64_t hi = std::min<std::int64_t>(static_cast<std::int64_t>(center + support + 0.5), in_size);
        const std::int64_t len = hi - lo;
        double sum = 0.0;
        for (std::int64_t j = 0; j < len; ++j) {
            const double wj = bicubic_kernel((static_cast<double>(j + lo) - center + 0.5) * inv_filterscale);
            w[static_cast<std::size_t>(j)] = wj;
            sum += wj;
        }
        std::int32_t* out = taps.weights.data() + n * taps.ksize;
        for (std::int64_t j = 0; j < len; ++j) {
            const double wj = sum != 0.0 ? w[static_cast<std::size_t>(j)] / sum : w[static_cast<std::size_t>(j)];
            out[j] = static_cast<std::int32_t>(wj < 0.0 ? -0.5 + wj * one : 0.5 + wj * one);
        }
        taps.start[static_cast<std::size_t>(n)] = lo;
        taps.length[static_cast<std::size_t>(n)] = len;
    }
    return taps;
}

/// (sum + ½) >> precision, clipped to [0, 255]; sum already holds the ½.
inline std::uint8_t clip_fixed_to_u8(std::int32_t sum) {
    if (sum <= 0) return 0;
    const std::int32_t v = sum >> resample_precision_bits;
    return static_cast<std::uint8_t>(v > 255 ? 255 : v);
}

/// Rows processed per work item of the parallel passes.
inline constexpr std::int64_t resample_rows_per_item = 8;

}  // namespace detail

/// The pixels `window` of src (H, W, C) resized to (out_height, out_width, C) with PIL's bicubic
/// resampling (see the file comment); returns (window.height, window.width, C). src may have any
/// strides; C is 1 to 4. num_threads: 0 means default_num_threads().
inline tensor<std::uint8_t, 3> resize_bicubic(tensor_ref<const std::uint8_t, 3> src, std::int64_t out_height,
                                              std::int64_t out_width, const pixel_window& window,
                                              int num_threads = 0) {
    using mmca::detail::to_text;
    const char* where = "mmca::vision::resize_bicubic";
    const std::int64_t H = src.shape[0], W = src.shape[1], C = src.shape[2];
    MMCA_CHECK_ARG(src.data != nullptr && H > 0 && W > 0 && C >= 1 && C <= 4, where, "src",
                   "shape " + src.shape_text(), "(H, W, C) with H, W >= 1 and 1 <= C <= 4");
    constexpr std::int64_t max_side = std::int64_t{1} << 24;
    MMCA_CHECK_ARG(out_height >= 1 && out_height <= max_side, where, "out_height", to_text(out_height),
                   "1 to 2^24 pixels");
    MMCA_CHECK_ARG(out_width >= 1 && out_width <= max_side, where, "out_width", to_text(out_width),
                   "1 to 2^24 pixels");
    MMCA_CHECK_ARG(window.top >= 0 && window.left >= 0 && window.height >= 1 && window.width >= 1 &&
                       window.top + window.height <= out_height && window.left + window.width <= out_width,
                   where, "window",
                   "rows [" + to_text(window.top) + ", " + to_text(window.top + window.height) + "), columns [" +
                       to_text(window.left) + ", " + to_text(window.left + window.width) + ")",
                   "a non-empty window inside the " + to_text(out_height) + "x" + to_text(out_width) + " output");

    const std::int64_t out_h = window.height, out_w = window.width;
    const std::int64_t row_items_out = (out_h + detail::resample_rows_per_item - 1) / detail::resample_rows_per_item;
    tensor<std::uint8_t, 3> result = tensor<std::uint8_t, 3>::from_shape(
        {static_cast<std::size_t>(out_h), static_cast<std::size_t>(out_w), static_cast<std::size_t>(C)});

    constexpr std::int32_t half = std::int32_t{1} << (detail::resample_precision_bits - 1);  // rounds the sums

    // Vertical taps decide which input rows the horizontal pass must produce: [row0, row1).
    const bool resize_rows = out_height != H;
    const bool resize_cols = out_width != W;
    detail::resample_taps vtaps;
    std::int64_t row0 = window.top, row1 = window.top + out_h;
    if (resize_rows) {
        vtaps = detail::bicubic_taps(H, out_height, window.top, out_h);
        row0 = vtaps.start.front();
        row1 = vtaps.start.back() + vtaps.length.back();
        for (std::int64_t n = 0; n < out_h; ++n) {
            row0 = std::min(row0, vtaps.start[static_cast<std::size_t>(n)]);
            row1 = std::max(row1, vtaps.start[static_cast<std::size_t>(n)] + vtaps.length[static_cast<std::size_t>(n)]);
        }
    }

    // Horizontal pass: input rows [row0, row1) → tmp (row1 - row0, out_w, C), contiguous.
    const std::int64_t tmp_rows = row1 - row0;
    std::vector<std::uint8_t> tmp(static_cast<std::size_t>(tmp_rows * out_w * C));
    const std::int64_t tmp_row_stride = out_w * C;
    if (resize_cols) {
        const detail::resample_taps htaps = detail::bicubic_taps(W, out_width, window.left, out_w);
        const bool packed_rgb = C == 3 && src.strides[1] == 3 && src.strides[2] == 1;
        const std::int64_t items = (tmp_rows + detail::resample_rows_per_item - 1) / detail::resample_rows_per_item;
        parallel_for(items, num_threads, [&](std::int64_t item, int) {
            const std::int64_t r_end = std::min(tmp_rows, (item + 1) * detail::resample_rows_per_item);
            for (std::int64_t r = item * detail::resample_rows_per_item; r < r_end; ++r) {
                const std::uint8_t* in_row = src.ptr(row0 + r);
                std::uint8_t* out_row = tmp.data() + r * tmp_row_stride;
                if (packed_rgb) {  // the common layout: 3 interleaved channels, contiguous pixels
                    for (std::int64_t x = 0; x < out_w; ++x) {
                        const std::int32_t* k = htaps.weights.data() + x * htaps.ksize;
                        const std::uint8_t* p = in_row + htaps.start[static_cast<std::size_t>(x)] * 3;
                        const std::int64_t len = htaps.length[static_cast<std::size_t>(x)];
                        std::int32_t r0 = half, g0 = half, b0 = half;
                        for (std::int64_t j = 0; j < len; ++j, p += 3) {
                            r0 += static_cast<std::int32_t>(p[0]) * k[j];
                            g0 += static_cast<std::int32_t>(p[1]) * k[j];
                            b0 += static_cast<std::int32_t>(p[2]) * k[j];
                        }
                        out_row[x * 3 + 0] = detail::clip_fixed_to_u8(r0);
                        out_row[x * 3 + 1] = detail::clip_fixed_to_u8(g0);
                        out_row[x * 3 + 2] = detail::clip_fixed_to_u8(b0);
                    }
                    continue;
                }
                for (std::int64_t x = 0; x < out_w; ++x) {
                    const std::int32_t* k = htaps.weights.data() + x * htaps.ksize;
                    const std::uint8_t* p = in_row + htaps.start[static_cast<std::size_t>(x)] * src.strides[1];
                    const std::int64_t len = htaps.length[static_cast<std::size_t>(x)];
                    std::int32_t acc[4];
                    for (std::int64_t c = 0; c < C; ++c) acc[c] = half;
                    for (std::int64_t j = 0; j < len; ++j, p += src.strides[1])
                        for (std::int64_t c = 0; c < C; ++c) acc[c] += static_cast<std::int32_t>(p[c * src.strides[2]]) * k[j];
                    for (std::int64_t c = 0; c < C; ++c) out_row[x * C + c] = detail::clip_fixed_to_u8(acc[c]);
                }
            }
        });
    } else {
        const bool packed = src.strides[2] == 1 && src.strides[1] == C;
        for (std::int64_t r = 0; r < tmp_rows; ++r) {
            std::uint8_t* out_row = tmp.data() + r * tmp_row_stride;
            if (packed) {
                std::memcpy(out_row, src.ptr(row0 + r, window.left), static_cast<std::size_t>(tmp_row_stride));
                continue;
            }
            for (std::int64_t x = 0; x < out_w; ++x)
                for (std::int64_t c = 0; c < C; ++c) out_row[x * C + c] = src(row0 + r, window.left + x, c);
        }
    }

    // Vertical pass: tmp → result, one output row at a time, accumulating whole rows.
    if (!resize_rows) {
        std::memcpy(result.data(), tmp.data(), tmp.size());
        return result;
    }
    parallel_for(row_items_out, num_threads, [&](std::int64_t item, int) {
        std::vector<std::int32_t> acc(static_cast<std::size_t>(tmp_row_stride));
        const std::int64_t y_end = std::min(out_h, (item + 1) * detail::resample_rows_per_item);
        for (std::int64_t y = item * detail::resample_rows_per_item; y < y_end; ++y) {
            std::fill(acc.begin(), acc.end(), half);
            const std::int32_t* k = vtaps.weights.data() + y * vtaps.ksize;
            const std::int64_t first = vtaps.start[static_cast<std::size_t>(y)] - row0;
            const std::int64_t len = vtaps.length[static_cast<std::size_t>(y)];
            for (std::int64_t j = 0; j < len; ++j) {
                const std::uint8_t* in_row = tmp.data() + (first + j) * tmp_row_stride;
                const std::int32_t kj = k[j];
                for (std::int64_t i = 0; i < tmp_row_stride; ++i) acc[static_cast<std::size_t>(i)] += in_row[i] * kj;
            }
            std::uint8_t* out_row = result.data() + y * tmp_row_stride;
            for (std::int64_t i = 0; i < tmp_row_stride; ++i)
                out_row[i] = detail::clip_fixed_to_u8(acc[static_cast<std::size_t>(i)]);
        }
    });
    return result;
}

/// src (H, W, C) resized to (out_height, out_width, C) with PIL's bicubic resampling.
inline tensor<std::uint8_t, 3> resize_bicubic(tensor_ref<const std::uint8_t, 3> src, std::int64_t out_height,
                                              std::int64_t out_width, int num_threads = 0) {
    return resize_bicubic(src, out_height, out_width, pixel_window{0, 0, out_height, out_width}, num_threads);
}

}  // namespace mmca::vision
