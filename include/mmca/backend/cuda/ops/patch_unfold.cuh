// mmca/backend/cuda/ops/patch_unfold.cuh - a ViT's patch unfold on the device, so that the patch
// embedding (Conv2d, kernel = stride = P, no bias) is unfold + one GEMM (ops/gemm.cuh).
//
// The order is mmca::vision::extract_patches': image n's patch at patch-row r, patch-column c is row
// n·Gh·Gw + r·Gw + c of the output, and that row holds the patch's C·P·P pixels in (channel, kh, kw)
// order, the order of a conv weight [W, C, P, P] read as a matrix [W, C·P·P]. Images are float32
// (N, C, Hpx, Wpx) with any strides, Gh = Hpx / P, Gw = Wpx / P (square images: Gh = Gw = G, the
// CPU's case); the patches are rounded to the storage type of the GEMM. One thread per output element.
#pragma once

#include "mmca/backend/cuda/ops/ops_common.cuh"

#include <cstdint>

namespace mmca {
namespace cuda {
namespace ops_detail {

/// Sizes and image strides of one unfold.
struct unfold_shape {
    std::int64_t channels, patch, grid_h, grid_w;  // C, P, Gh, Gw
    std::int64_t sn, sc, sh, sw;                   // image strides (elements)
};

/// Offset in the images of element (row, k) of the patch matrix.
__host__ __device__ inline std::int64_t unfold_source(const unfold_shape& s, std::int64_t row, std::int64_t k) {
    const std::int64_t pp = s.patch * s.patch;
    const std::int64_t ch = k / pp, kh = (k / s.patch) % s.patch, kw = k % s.patch;
    const std::int64_t per_image = s.grid_h * s.grid_w;
    const std::int64_t n = row / per_image, rc = row % per_image;
    const std::int64_t r = rc / s.grid_w, c = rc % s.grid_w;
    return n * s.sn + ch * s.sc + (r * s.patch + kh) * s.sh + (c * s.patch + kw) * s.sw;
}

template <class D>
__global__ void unfold_kernel(const float* __restrict__ images, unfold_shape s, D* __restrict__ patches,
                              std::int64_t patch_stride, std::int64_t total, std::int64_t cols) {
    const std::int64_t step = static_cast<std::int64_t>(gridDim.x) * blockDim.x;
    for (std::int64_t e = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; e < total; e += step) {
        const row_col rc = split_index(e, cols);
        patches[rc.row * patch_stride + rc.col] = detail::from_float<D>(images[unfold_source(s, rc.row, rc.col)]);
    }
}

}  // namespace ops_detail

/// patches (N·Gh·Gw, C·P·P) = every P×P patch of images (N, C, Gh·P, Gw·P) as one row, (c, kh, kw)
/// order, on `stream`. images: float32 device tensor, any strides; patches: a device tensor of T with
/// contiguous rows.
template <class T>
void extract_patches(tensor_ref<const float, 4> images, std::int64_t patch, tensor_ref<T, 2> patches,
                     cudaStream_t stream = nullptr) {
    using D = device_type_t<T>;
    using mmca::detail::to_text;
    const char* where = "mmca::cuda::extract_patches";
    MMCA_CHECK_ARG(!images.empty(), where, "images", "no tensor", "an (N, C, H, W) float32 device tensor");
    const std::int64_t N = images.shape[0], C = images.shape[1], Hpx = images.shape[2], Wpx = images.shape[3];
    MMCA_CHECK_ARG(N >= 0 && C > 0 && Hpx > 0 && Wpx > 0, where, "images", images.shape_text(),
                   "(N, C, H, W) with C, H, W > 0");
    MMCA_CHECK_ARG(patch > 0 && Hpx % patch == 0 && Wpx % patch == 0, where, "patch", to_text(patch),
                   "a patch size dividing the image sides " + to_text(Hpx) + " and " + to_text(Wpx));
    const std::int64_t Gh = Hpx / patch, Gw = Wpx / patch, K = C * patch * patch, rows = N * Gh * Gw;
    ops_detail::check_rows_view(patches, where, "patches", ops_detail::pair_text(rows, K));
    MMCA_CHECK_ARG(patches.shape[0] == rows && patches.shape[1] == K, where, "patches", patches.shape_text(),
                   ops_detail::pair_text(rows, K) + " (N·Gh·Gw, C·P·P)");
    const std::int64_t total = rows * K;
    if (total == 0) return;
    ops_detail::require_device_memory(images.data, where, "images");
    ops_detail::require_device_memory(patches.data, where, "patches");
    const ops_detail::unfold_shape s{C, patch, Gh, Gw, images.strides[0], images.strides[1], images.strides[2],
                                     images.strides[3]};
    MMCA_CUDA_LAUNCH(ops_detail::unfold_kernel<D>, ops_detail::elementwise_blocks(total),
                     ops_detail::elementwise_threads, 0, stream, images.data, s, reinterpret_cast<D*>(patches.data),
                     ops_detail::row_stride(patches), total, K);
    MMCA_CUDA_CHECK(cudaGetLastError());
}

}  // namespace cuda
}  // namespace mmca
