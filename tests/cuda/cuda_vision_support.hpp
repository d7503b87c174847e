// tests/cuda/cuda_vision_support.hpp - the vision encoder, the dense attention and the visual-chat
// model on the GPU, for the tests (test_cuda_vision.cpp is plain C++; cuda_vision_support.cu
// instantiates the CUDA templates for S = float, float16, bfloat16).
//
// The visual-chat runs are the script of tests/cpp/visual_chat_script.hpp, so the CPU model and the
// GPU model run exactly the same calls.
#pragma once

#include "visual_chat_script.hpp"  // chat_script_result, run_chat_script, script_images

#include "mmca/model/visual_chat.hpp"
#include "mmca/model/visual_chat_loader.hpp"
#include "mmca/vision/clip_vit.hpp"
#include "mmca/vision/qwen_vit.hpp"

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace mmca_cuda_test {

using mmca_test::chat_script_result;
using mmca_test::run_chat_script;
using mmca_test::script_images;

/// Heads side by side in a row-major host matrix (mmca::nn::head_matrix's layout).
struct host_heads {
    std::vector<float> values;
    std::int64_t rows = 0, row_stride = 0, head_stride = 0, offset = 0;
};

/// out (q.rows, heads · D) of mmca::cuda::dense_attention<S> on copies of q, k, v converted to S;
/// fused = false keeps it on the unfused path (dense_attention_scratch::fused).
template <class S>
std::vector<float> cuda_dense_attention_run(const host_heads& q, const host_heads& k, const host_heads& v,
                                            std::int64_t heads, std::int64_t head_dim, float scale,
                                            bool fused = true);

/// (n, Q, E) of mmca::cuda::qwen_vit<S> built from `host`, for n images (n, 3, S, S).
template <class S>
std::vector<float> cuda_qwen_encode(const mmca::vision::qwen_vit& host, const std::vector<float>& images,
                                    std::int64_t n);

/// (n, 1 + G², W) of mmca::cuda::clip_vit<S> built from `host`: hidden state `which` of n images
/// (n, C, size, size); size 0: the encoder's image size.
template <class S>
std::vector<float> cuda_clip_encode(const mmca::vision::clip_vit& host, const std::vector<float>& images,
                                    std::int64_t n, mmca::vision::clip_output which,
                                    std::int64_t size = 0);

/// embed() of mmca::cuda::encoder_projector_tower<S> made from `host`, for n images; *on_device
/// receives encoder_on_device().
template <class S>
std::vector<float> cuda_tower_embed(std::unique_ptr<mmca::encoder_projector_tower> host,
                                    const std::vector<float>& images, std::int64_t n, bool* on_device);

/// The script on mmca::cuda::load_visual_chat_model<S>(path, ·) with batch 2 and batch 1.
template <class S>
chat_script_result cuda_chat_script(const std::string& path, const mmca::visual_chat_load_options& load,
                                    std::int32_t P, std::int64_t image_size, const std::vector<float>& images);

}  // namespace mmca_cuda_test
