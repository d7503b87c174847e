// tests/cuda/cuda_vision_support.hpp - the vision encoder, the dense attention and the visual-chat
// model on the GPU, for the tests (test_cuda_vision.cpp is plain C++; cuda_vision_support.cu
// instantiates the CUDA templates for S = float, float16, bfloat16).
//
// The visual-chat runs are scripts (a batch forward with labels, two chat rounds with images, one
// more append) written once, as templates over the model type, so the CPU model and the GPU model
// run exactly the same calls.
#pragma once

#include "mmca/model/visual_chat.hpp"
#include "mmca/model/visual_chat_loader.hpp"
#include "mmca/vision/qwen_vit.hpp"

#include <cstdint>
#include <string>
#include <vector>

namespace mmca_cuda_test {

/// Heads side by side in a row-major host matrix (mmca::nn::head_matrix's layout).
struct host_heads {
    std::vector<float> values;
    std::int64_t rows = 0, row_stride = 0, head_stride = 0, offset = 0;
};

/// out (q.rows, heads · D) of mmca::cuda::dense_attention<S> on copies of q, k, v converted to S.
template <class S>
std::vector<float> cuda_dense_attention_run(const host_heads& q, const host_heads& k, const host_heads& v,
                                            std::int64_t heads, std::int64_t head_dim, float scale);

/// (n, Q, E) of mmca::cuda::qwen_vit<S> built from `host`, for n images (n, 3, S, S).
template <class S>
std::vector<float> cuda_qwen_encode(const mmca::vision::qwen_vit& host, const std::vector<float>& images,
                                    std::int64_t n);

/// What the visual-chat script records.
struct chat_script_result {
    std::vector<float> forward_logits;               // (2, L, V) of the batch forward
    std::int64_t forward_length = 0;                 // L
    double loss = 0.0;                               // its mean shifted cross-entropy
    std::int64_t loss_count = 0;
    std::vector<std::vector<std::int32_t>> answers;  // greedy tokens of each chat round
    std::vector<float> last_logits;                  // (V) after one more append
    std::int64_t cached_tokens = 0;                  // the decoder's cache length at the end
};

/// The script's images: 3 images of side S.
std::vector<float> script_images(std::int64_t S);

/// The script on a batch-2 model (forward) and a batch-1 model (rounds and append); P is the image
/// token id, images hold 3 images of side S.
template <class Model>
chat_script_result run_chat_script(Model& batch2, Model& batch1, std::int32_t P, std::int64_t S,
                                   const std::vector<float>& images) {
    using mmca::tensor_ref;
    chat_script_result r;
    std::vector<mmca::visual_sample> samples(2);
    samples[0].ids = {1, 5, P, 9, 12, P, 4, 2};
    samples[0].labels = {-100, -100, -100, -100, 12, -100, 4, 2};
    samples[0].images = tensor_ref<const float, 4>(images.data(), {2, 3, S, S});
    samples[1].ids = {1, P, 7, 8};
    samples[1].labels = {-100, -100, 7, 8};
    samples[1].images = tensor_ref<const float, 4>(images.data() + 2 * 3 * S * S, {1, 3, S, S});
    mmca::loss_result loss;
    batch2.forward(samples, r.forward_logits, r.forward_length, &loss);
    r.loss = loss.mean();
    r.loss_count = loss.count;

    mmca::generation_options g;
    g.max_new_tokens = 4;
    g.eos_ids = {-1};
    const std::vector<std::vector<std::int32_t>> prompts = {{1, 7, P, 9}, {1, 4, P, P, 5, 6}};
    const std::int64_t first[2] = {0, 1}, count[2] = {1, 2};
    for (int round = 0; round < 2; ++round) {
        const tensor_ref<const float, 4> imgs(images.data() + first[round] * 3 * S * S, {count[round], 3, S, S});
        r.answers.push_back(batch1.round(prompts[round], imgs, g).tokens);
    }
    r.last_logits.assign(static_cast<std::size_t>(batch1.language().config().vocab_size), 0.0f);
    batch1.append({3, 4}, {}, r.last_logits.data());
    r.cached_tokens = batch1.language().length(0);
    return r;
}

/// The script on mmca::cuda::load_visual_chat_model<S>(path, ·) with batch 2 and batch 1.
template <class S>
chat_script_result cuda_chat_script(const std::string& path, const mmca::visual_chat_load_options& load,
                                    std::int32_t P, std::int64_t image_size, const std::vector<float>& images);

}  // namespace mmca_cuda_test
