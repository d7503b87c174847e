// mmca/backend/cuda/ops/patch_embedding.cuh - a ViT's patch embedding (Conv2d, kernel = stride = P,
// no bias) on the device as unfold (ops/patch_unfold.cuh) + one GEMM (ops/gemm.cuh), the same
// decomposition as mmca::vision::patch_embedding_forward.
#pragma once

#include "mmca/backend/cuda/ops/gemm.cuh"
#include "mmca/backend/cuda/ops/patch_unfold.cuh"

#include <cstdint>

namespace mmca {
namespace cuda {

/// out (N·Gh·Gw, W) = patch embedding of images (N, C, Gh·P, Gw·P) (float32, device) by a conv
/// weight viewed as [W, C·P·P] (device, T), on `stream`. The patch matrix lives in stream-ordered
/// device memory released after the GEMM.
template <class T>
void patch_embedding_forward(const cublas_handle& handle, tensor_ref<const float, 4> images,
                             tensor_ref<const T, 2> weight, std::int64_t patch, tensor_ref<T, 2> out,
                             cudaStream_t stream = nullptr) {
    using mmca::detail::to_text;
    const char* where = "mmca::cuda::patch_embedding_forward";
    MMCA_CHECK_ARG(!images.empty(), where, "images", "no tensor", "an (N, C, H, W) float32 device tensor");
    const std::int64_t N = images.shape[0], C = images.shape[1], Hpx = images.shape[2], Wpx = images.shape[3];
    MMCA_CHECK_ARG(patch > 0 && Hpx > 0 && Wpx > 0 && Hpx % patch == 0 && Wpx % patch == 0, where, "patch",
                   to_text(patch), "a patch size dividing the image sides of " + images.shape_text());
    const std::int64_t K = C * patch * patch, rows = N * (Hpx / patch) * (Wpx / patch);
    MMCA_CHECK_ARG(!weight.empty() && weight.shape[1] == K, where, "weight", weight.shape_text(),
                   "[W, " + to_text(K) + "] (a conv weight [W, " + to_text(C) + ", " + to_text(patch) + ", " +
                       to_text(patch) + "] viewed as a matrix)");
    ops_detail::check_rows_view(out, where, "out", ops_detail::pair_text(rows, weight.shape[0]));
    MMCA_CHECK_ARG(out.shape[0] == rows && out.shape[1] == weight.shape[0], where, "out", out.shape_text(),
                   ops_detail::pair_text(rows, weight.shape[0]));
    if (rows == 0) return;
    device_buffer scratch(static_cast<std::size_t>(rows * K) * sizeof(T), stream);
    tensor_ref<T, 2> patches(scratch.as<T>(), {rows, K});
    extract_patches<T>(images, patch, patches, stream);
    linear_forward<T>(handle, tensor_ref<const T, 2>(patches), weight, nullptr, out, stream);
}

}  // namespace cuda
}  // namespace mmca
