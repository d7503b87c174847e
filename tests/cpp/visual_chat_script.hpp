// tests/cpp/visual_chat_script.hpp - one scripted use of a visual-chat model, written once as a
// template over the model type, so that models over different decoders (the CPU one, the plain-loop
// test backend, the GPU one) run exactly the same calls and their records can be compared: a batch
// forward of two sequences with labels and images, two greedy chat rounds with images on a batch-1
// model, one more append.
#pragma once

#include "mmca/core/tensor.hpp"
#include "mmca/language/generation.hpp"
#include "mmca/model/visual_chat.hpp"

#include <cstdint>
#include <random>
#include <vector>

namespace mmca_test {

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

/// The script's images: 3 random images of side S.
inline std::vector<float> script_images(std::int64_t S) {
    std::mt19937 g(17);
    std::normal_distribution<float> nd;
    std::vector<float> v(static_cast<std::size_t>(3 * 3 * S * S));
    for (auto& x : v) x = nd(g);
    return v;
}

/// The batch of the script's forward: two sequences with labels, 2 and 1 of the 3 images (side S).
inline std::vector<mmca::visual_sample> script_samples(std::int32_t P, std::int64_t S, const std::vector<float>& images) {
    using mmca::tensor_ref;
    std::vector<mmca::visual_sample> samples(2);
    samples[0].ids = {1, 5, P, 9, 12, P, 4, 2};
    samples[0].labels = {-100, -100, -100, -100, 12, -100, 4, 2};
    samples[0].images = tensor_ref<const float, 4>(images.data(), {2, 3, S, S});
    samples[1].ids = {1, P, 7, 8};
    samples[1].labels = {-100, -100, 7, 8};
    samples[1].images = tensor_ref<const float, 4>(images.data() + 2 * 3 * S * S, {1, 3, S, S});
    return samples;
}

/// The script on a batch-2 model (forward) and a batch-1 model (rounds and append); P is the image
/// token id, images hold 3 images of side S.
template <class Model>
chat_script_result run_chat_script(Model& batch2, Model& batch1, std::int32_t P, std::int64_t S,
                                   const std::vector<float>& images) {
    using mmca::tensor_ref;
    chat_script_result r;
    mmca::loss_result loss;
    batch2.forward(script_samples(P, S, images), r.forward_logits, r.forward_length, &loss);
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

}  // namespace mmca_test
