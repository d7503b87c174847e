// mmca/model/visual_chat_train.hpp - loss and gradients of the visual-chat model's trainable parts.
//
//   mmca::visual_chat_grads g = mmca::make_visual_chat_grads(model);   // projector + token embedding
//   mmca::loss_result r = mmca::visual_chat_loss_and_gradients(model, batch, g);
//
// In the paper's regime (SPEC §1, §8) the vision encoder and the LLaMa decoder are frozen and the
// projector and the copied token embedding (lang_embed) train. One call runs a batch of samples
// (token ids with <image> placeholders, labels with −100 where not supervised, images) through
//   encoder (frozen, no tape) → projector (taped) → splice → decoder (taped, llama_forward_train)
//   → mean shifted cross-entropy over the batch's supervised tokens
// and back: the decoder's backward gives the gradient of every spliced row; text rows scatter into
// the embedding gradient, image rows go through the projector's backward. Gradients are ADDED to
// g (gradient accumulation over micro-batches); a part whose buffers are empty is frozen and skipped.
// Optional decoder additions (language/train.hpp): the gated cross-attention blocks' parameters
// (make_visual_chat_grads(..., cross_blocks = true)) and LoRA adapters on q/k/v/o (pass the
// adapters to visual_chat_loss_and_gradients; their dA/dB land in g.decoder.lora).
// The loss of a micro-batch is its token mean; for accumulation over micro-batches pass the
// token count of the whole step as `normalizer`, so the sum of the calls is the step's token mean.
#pragma once

#include "mmca/core/error.hpp"
#include "mmca/core/tensor.hpp"
#include "mmca/language/train.hpp"
#include "mmca/model/visual_chat.hpp"
#include "mmca/model/visual_chat_loader.hpp"
#include "mmca/nn/grad/embedding_backward.hpp"
#include "mmca/nn/grad/loss.hpp"
#include "mmca/vision/projector_backward.hpp"

#include <cstdint>
#include <vector>

namespace mmca {

/// Gradient accumulators of the trainable parts (empty: frozen).
struct visual_chat_grads {
    std::vector<float> embed;          ///< (V, H): the token embedding lang_embed
    bool train_projector = true;
    vision::projector_grads projector;  ///< every projector parameter
    llama_grads decoder;               ///< cross blocks' parameters and LoRA adapters (empty: none)
};

template <class KV>
visual_chat_grads make_visual_chat_grads(const visual_chat_model<KV>& m, bool embedding = true, bool projector = true,
                                         bool cross_blocks = false, const llama_lora* lora = nullptr) {
    visual_chat_grads g;
    const auto& c = m.language().config();
    if (embedding) g.embed.assign(static_cast<std::size_t>(c.vocab_size * c.hidden_size), 0.0f);
    g.train_projector = projector;
    const auto* tower = dynamic_cast<const encoder_projector_tower*>(&m.tower());
    if (projector && tower) g.projector = vision::make_projector_grads(tower->projector());
    g.decoder = make_llama_grads(m.language().weights(), lora, cross_blocks);
    return g;
}

/// Number of supervised positions of a batch (rows whose next label is not −100).
inline std::int64_t supervised_tokens(const std::vector<visual_sample>& samples) {
    std::int64_t n = 0;
    for (const auto& s : samples)
        for (std::size_t t = 1; t < s.labels.size(); ++t) n += s.labels[t] != ignore_label;
    return n;
}

/// Loss of a batch and the gradients of the trainable parts, added to g. normalizer: the divisor of
/// the loss (0: this batch's supervised token count). lora: adapters on the decoder's attention
/// projections (null: none); their gradients go to g.decoder.lora when it has layers.
template <class KV>
loss_result visual_chat_loss_and_gradients(visual_chat_model<KV>& m, const std::vector<visual_sample>& samples,
                                           visual_chat_grads& g, double normalizer = 0.0, int num_threads = -1,
                                           const llama_lora* lora = nullptr) {
    using detail::to_text;
    const char* where = "mmca::visual_chat_loss_and_gradients";
    auto* tower = dynamic_cast<encoder_projector_tower*>(&m.tower());
    MMCA_CHECK_ARG(tower != nullptr, where, "model", "a model whose vision tower is not an encoder + projector",
                   "a model made by load_visual_chat_model (or with an encoder_projector_tower)");
    const auto& config = m.language().config();
    const std::int64_t H = config.hidden_size, V = config.vocab_size;
    const int threads = num_threads >= 0 ? num_threads : m.language().options().num_threads;
    MMCA_CHECK_ARG(!samples.empty(), where, "samples", "no samples", "at least one sample");
    MMCA_CHECK_ARG(g.embed.empty() || static_cast<std::int64_t>(g.embed.size()) == V * H, where, "grads",
                   "an embedding gradient of " + to_text(g.embed.size()) + " values",
                   "none (frozen) or (V, H) = " + to_text(V * H));
    const std::int64_t S = tower->image_size(), Te = tower->encoder_tokens(), Dv = tower->encoder_width();
    const std::int64_t T = tower->tokens_per_image();
    const std::int32_t P = m.options().image_token_id;

    // Every image of the batch through the frozen encoder, then the taped projector.
    std::int64_t n_images = 0;
    for (const auto& s : samples) {
        const std::int64_t n = s.images.empty() ? 0 : s.images.shape[0];
        const std::int64_t placeholders = std::count(s.ids.begin(), s.ids.end(), P);
        MMCA_CHECK_ARG(placeholders == n, where, "images", to_text(n) + " image" + (n == 1 ? "" : "s"),
                       to_text(placeholders) + " (the number of <image> placeholders in the token ids)");
        MMCA_CHECK_ARG(n <= m.options().max_images, where, "images", to_text(n) + " images in a sample",
                       "at most " + to_text(m.options().max_images) + " (max_images)");
        if (n > 0)
            MMCA_CHECK_ARG(s.images.shape[1] == 3 && s.images.shape[2] == S && s.images.shape[3] == S &&
                               s.images.contiguous(),
                           where, "images", s.images.shape_text(),
                           "contiguous (N, 3, " + to_text(S) + ", " + to_text(S) + ") preprocessed images");
        MMCA_CHECK_ARG(s.labels.empty() || s.labels.size() == s.ids.size(), where, "labels",
                       to_text(s.labels.size()) + " labels", "none or one per token id (" + to_text(s.ids.size()) + ")");
        n_images += n;
    }
    std::vector<float> pixels(static_cast<std::size_t>(n_images * 3 * S * S));
    {
        std::int64_t at = 0;
        for (const auto& s : samples) {
            const std::int64_t n = s.images.empty() ? 0 : s.images.shape[0];
            if (n > 0) std::copy_n(s.images.data, n * 3 * S * S, pixels.data() + at * 3 * S * S);
            at += n;
        }
    }
    std::vector<float> features(static_cast<std::size_t>(n_images * Te * Dv)), rows(static_cast<std::size_t>(n_images * T * H));
    vision::projector_tape ptape;
    if (n_images > 0) {
        tower->encode(tensor_ref<const float, 4>(pixels.data(), {n_images, 3, S, S}),
                      tensor_ref<float, 3>(features.data(), {n_images, Te, Dv}), threads);
        vision::projector_forward_tape(tower->projector(), tensor_ref<const float, 3>(features.data(), {n_images, Te, Dv}),
                                       tensor_ref<float, 3>(rows.data(), {n_images, T, H}), ptape, threads);
    }

    // Splice every sample; pad to the longest.
    std::vector<spliced_sequence> seqs;
    std::int64_t Lmax = 1, at = 0;
    for (const auto& s : samples) {
        const std::int64_t n = s.images.empty() ? 0 : s.images.shape[0];
        seqs.push_back(splice_images(s.ids, s.labels, tensor_ref<const float, 3>(rows.data() + at * T * H, {n, T, H}), H, P,
                                     m.options().order, 0,
                                     [&](const std::int32_t* t, std::int64_t c, tensor_ref<float, 2> o) { m.language().embed(t, c, o); },
                                     where));
        at += n;
        Lmax = std::max(Lmax, seqs.back().length());
    }
    MMCA_CHECK_ARG(Lmax <= config.max_positions, where, "samples", "a spliced sequence of " + to_text(Lmax) + " tokens",
                   "at most max_position_embeddings (" + to_text(config.max_positions) + ")");
    const std::int64_t B = static_cast<std::int64_t>(samples.size()), L = Lmax;
    std::vector<float> emb(static_cast<std::size_t>(B * L * H), 0.0f);
    std::vector<std::int8_t> types(static_cast<std::size_t>(B * L), 0);
    std::vector<std::int32_t> ids(static_cast<std::size_t>(B * L), -1), lens(static_cast<std::size_t>(B));
    for (std::int64_t b = 0; b < B; ++b) {
        const auto& s = seqs[static_cast<std::size_t>(b)];
        std::copy(s.embeddings.begin(), s.embeddings.end(), emb.begin() + b * L * H);
        std::copy(s.types.begin(), s.types.end(), types.begin() + b * L);
        std::copy(s.image_ids.begin(), s.image_ids.end(), ids.begin() + b * L);
        lens[static_cast<std::size_t>(b)] = static_cast<std::int32_t>(s.length());
    }

    // Decoder forward with its tape, the loss and its gradient.
    std::vector<float> logits(static_cast<std::size_t>(B * L * V));
    llama_tape tape;
    llama_forward_train(config, m.language().weights(), m.language().options().attention,
                        tensor_ref<const float, 3>(emb.data(), {B, L, H}), tensor_ref<const std::int8_t, 2>(types.data(), {B, L}),
                        tensor_ref<const std::int32_t, 2>(ids.data(), {B, L}), tensor_ref<const std::int32_t, 1>(lens.data(), {B}),
                        tensor_ref<float, 3>(logits.data(), {B, L, V}), tape, threads, lora);
    loss_result loss;
    std::int64_t count = 0;
    for (const auto& s : seqs)
        for (std::size_t t = 1; t < s.labels.size(); ++t) count += s.labels[t] != ignore_label;
    const double divisor = normalizer > 0.0 ? normalizer : static_cast<double>(count);
    std::vector<float> dlogits(logits.size(), 0.0f);
    for (std::int64_t b = 0; b < B; ++b) {
        const auto& s = seqs[static_cast<std::size_t>(b)];
        if (s.labels.empty()) continue;
        const std::int64_t n = s.length();
        const auto r = nn::cross_entropy_forward_backward(
            tensor_ref<const float, 2>(logits.data() + b * L * V, {n, V}), s.labels.data(),
            tensor_ref<float, 2>(dlogits.data() + b * L * V, {n, V}), divisor > 0.0 ? divisor : 1.0, threads);
        loss.sum += r.loss_sum;
        loss.count += r.count;
    }
    if (count == 0) return loss;  // nothing supervised: no gradient

    std::vector<float> demb(emb.size());
    llama_backward(config, m.language().weights(), m.language().options().attention, tape,
                   tensor_ref<const float, 3>(dlogits.data(), {B, L, V}), tensor_ref<float, 3>(demb.data(), {B, L, H}),
                   threads, &g.decoder, lora);

    // Text rows into the embedding gradient; image rows into the projector's backward.
    std::vector<float> drows(rows.size(), 0.0f);
    at = 0;
    for (std::int64_t b = 0; b < B; ++b) {
        const auto& smp = samples[static_cast<std::size_t>(b)];
        const auto& s = seqs[static_cast<std::size_t>(b)];
        const std::int64_t n = smp.images.empty() ? 0 : smp.images.shape[0];
        std::vector<std::int32_t> text_ids;
        std::vector<float> text_grad;
        std::int64_t row = 0;
        for (std::int32_t id : smp.ids) {
            if (id == P) {
                row += T;
                continue;
            }
            text_ids.push_back(id);
            text_grad.insert(text_grad.end(), demb.begin() + (b * L + row) * H, demb.begin() + (b * L + row + 1) * H);
            ++row;
        }
        if (!g.embed.empty() && !text_ids.empty())
            nn::embedding_backward(text_ids.data(), static_cast<std::int64_t>(text_ids.size()),
                                   tensor_ref<const float, 2>(text_grad.data(), {static_cast<std::int64_t>(text_ids.size()), H}),
                                   tensor_ref<float, 2>(g.embed.data(), {V, H}), threads);
        for (std::int64_t i = 0; i < n; ++i)
            std::copy_n(demb.data() + (b * L + s.image_rows[static_cast<std::size_t>(i)]) * H, T * H,
                        drows.data() + (at + i) * T * H);
        at += n;
    }
    if (g.train_projector && n_images > 0)
        vision::projector_backward(tower->projector(), ptape, tensor_ref<const float, 3>(drows.data(), {n_images, T, H}),
                                   {}, g.projector, threads);
    return loss;
}

}  // namespace mmca
