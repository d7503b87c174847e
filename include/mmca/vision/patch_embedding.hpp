// mmca/vision/patch_embedding.hpp - a ViT's patch embedding (Conv2d, kernel = stride = P) as one GEMM.
//
// A convolution whose kernel equals its stride sees each P×P patch once, so it is a matrix product:
// every patch is copied into one row of C·P·P values in (channel, kh, kw) order — the order of a
// conv weight [W, C, P, P] read as a matrix [W, C·P·P] in place — and
//
//   out (N·G², W) = patches (N·G², C·P·P) · weightᵀ        G = S / P patches per side,
//
// with row n·G² + r·G + c for the patch at patch-row r, patch-column c of image n (the order of
// Conv2d's output flattened as x.flatten(2).transpose(1, 2)). The weight keeps its stored dtype.
#pragma once

#include "mmca/core/error.hpp"
#include "mmca/core/tensor.hpp"
#include "mmca/core/threading.hpp"
#include "mmca/nn/linear.hpp"

#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

namespace mmca::vision {

/// Checks that images is (N, channels, size, size) with N >= 1 and a contiguous innermost dimension.
inline void check_images(tensor_ref<const float, 4> images, std::int64_t channels, std::int64_t size,
                         const char* where) {
    using mmca::detail::to_text;
    const std::string expected = "(N, " + to_text(channels) + ", " + to_text(size) + ", " + to_text(size) +
                                 ") float32 images with N >= 1";
    MMCA_CHECK_ARG(!images.empty(), where, "images", "no tensor", expected);
    MMCA_CHECK_ARG(images.shape[0] >= 1, where, "images", "shape " + images.shape_text(), expected);
    MMCA_CHECK_ARG(images.shape[1] == channels, where, "images",
                   "shape " + images.shape_text() + " (" + to_text(images.shape[1]) + " channels)", expected);
    MMCA_CHECK_ARG(images.shape[2] == size && images.shape[3] == size, where, "images",
                   "shape " + images.shape_text() + " (" + to_text(images.shape[2]) + "×" +
                       to_text(images.shape[3]) + " pixels)",
                   expected);
    MMCA_CHECK_ARG(images.inner_contiguous(), where, "images",
                   "a pixel stride of " + to_text(images.strides[3]) + " elements", "contiguous image rows");
}

/// patches (N·G², C·P·P) = every P×P patch of images (N, C, G·P, G·P) as one row, (c, kh, kw) order.
inline void extract_patches(tensor_ref<const float, 4> images, std::int64_t patch, tensor_ref<float, 2> patches,
                            int num_threads = 0) {
    using mmca::detail::to_text;
    const char* where = "mmca::vision::extract_patches";
    const std::int64_t N = images.shape[0], C = images.shape[1], S = images.shape[2];
    MMCA_CHECK_ARG(patch > 0 && S % patch == 0 && images.shape[3] == S, where, "patch", to_text(patch),
                   "a patch size dividing the square image side " + to_text(S));
    MMCA_CHECK_ARG(images.inner_contiguous(), where, "images", "a pixel stride of " + to_text(images.strides[3]),
                   "contiguous image rows");
    const std::int64_t G = S / patch, K = C * patch * patch;
    MMCA_CHECK_ARG(patches.shape[0] == N * G * G && patches.shape[1] == K && patches.inner_contiguous(), where,
                   "patches", patches.shape_text(),
                   "(" + to_text(N * G * G) + ", " + to_text(K) + ") with contiguous rows");
    // One work item per (image, patch row): G patches of C·P image rows of P pixels each.
    parallel_for(N * G, N * G >= 8 ? num_threads : 1, [&](std::int64_t item, int) {
        const std::int64_t n = item / G, r = item % G;
        for (std::int64_t c = 0; c < G; ++c) {
            float* dst = patches.ptr(n * G * G + r * G + c);
            for (std::int64_t ch = 0; ch < C; ++ch)
                for (std::int64_t kh = 0; kh < patch; ++kh) {
                    const float* src = images.ptr(n, ch, r * patch + kh) + c * patch;
                    std::memcpy(dst + (ch * patch + kh) * patch, src, static_cast<std::size_t>(patch) * sizeof(float));
                }
        }
    });
}

/// out (N·G², W) = patch embedding of images (N, C, S, S) by a conv weight viewed as [W, C·P·P]
/// (no bias). `patches` is scratch space, resized as needed.
inline void patch_embedding_forward(tensor_ref<const float, 4> images, const nn::matrix_ref& weight,
                                    std::int64_t patch, tensor_ref<float, 2> out, std::vector<float>& patches,
                                    int num_threads = 0) {
    using mmca::detail::to_text;
    const char* where = "mmca::vision::patch_embedding_forward";
    const std::int64_t N = images.shape[0], C = images.shape[1], S = images.shape[2];
    MMCA_CHECK_ARG(patch > 0 && S % patch == 0, where, "patch", to_text(patch),
                   "a patch size dividing the image side " + to_text(S));
    const std::int64_t G = S / patch, K = C * patch * patch;
    MMCA_CHECK_ARG(weight.cols == K, where, "weight", weight.shape_text(),
                   "[W, " + to_text(K) + "] (a conv weight [W, " + to_text(C) + ", " + to_text(patch) + ", " +
                       to_text(patch) + "] viewed as a matrix)");
    patches.resize(static_cast<std::size_t>(N * G * G * K));
    tensor_ref<float, 2> rows(patches.data(), {N * G * G, K});
    extract_patches(images, patch, rows, num_threads);
    nn::linear_forward(rows, weight, nullptr, out, num_threads);
}

}  // namespace mmca::vision
