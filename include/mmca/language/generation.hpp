// mmca/language/generation.hpp - sampling and multi-round generation on top of llama_model.
//
//   mmca::sampler       turns a row of logits into a token: greedy, or temperature / top-k / top-p
//                       sampling after a repetition penalty, from a seeded generator (same seed, same
//                       tokens)
//   mmca::generator     drives a model (batch 1): prefill a round's tokens, then decode until an EOS
//                       token or a length limit. Its KV cache survives across rounds: a new round
//                       prefills only its own tokens (plus the previous round's last token, which was
//                       sampled but never fed).
//
// The order of the logit transforms is HF transformers': repetition penalty (over every token of
// the conversation so far), temperature, top-k, top-p, then a draw from the softmax.
#pragma once

#include "mmca/core/error.hpp"
#include "mmca/core/tensor.hpp"
#include "mmca/language/model.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>
#include <numeric>
#include <random>
#include <string>
#include <unordered_set>
#include <vector>

namespace mmca {

struct sampling_options {
    float temperature = 0.0f;         ///< 0: greedy (argmax); otherwise logits are divided by it
    std::int64_t top_k = 0;           ///< keep the k most likely tokens (ties at the k-th kept); 0: all
    float top_p = 1.0f;               ///< keep the smallest set of most likely tokens whose mass reaches top_p
    float repetition_penalty = 1.0f;  ///< > 1 discourages tokens already in the conversation
    std::uint64_t seed = 0;           ///< seed of the random generator (sampling only)

    void validate(const char* where) const {
        using detail::to_text;
        MMCA_CHECK_ARG(temperature >= 0.0f && std::isfinite(temperature), where, "temperature", to_text(temperature),
                       "0 (greedy) or a positive finite number");
        MMCA_CHECK_ARG(top_k >= 0, where, "top_k", to_text(top_k), "0 (off) or a positive count");
        MMCA_CHECK_ARG(top_p > 0.0f && top_p <= 1.0f, where, "top_p", to_text(top_p), "a number in (0, 1]");
        MMCA_CHECK_ARG(repetition_penalty > 0.0f && std::isfinite(repetition_penalty), where, "repetition_penalty",
                       to_text(repetition_penalty), "a positive finite number (1: off)");
    }
};

class sampler {
public:
    explicit sampler(sampling_options options = {}) : options_(options), rng_(options.seed) {
        options_.validate("mmca::sampler");
    }

    const sampling_options& options() const { return options_; }

    /// Picks the next token from logits[0..V); `history` are the tokens the repetition penalty
    /// applies to. logits are not modified.
    std::int32_t sample(const float* logits, std::int64_t V, const std::vector<std::int32_t>& history) {
        const char* where = "mmca::sampler::sample";
        MMCA_CHECK_ARG(V > 0, where, "logits", "an empty row", "at least one logit");
        scores_.assign(logits, logits + V);
        if (options_.repetition_penalty != 1.0f) {
            seen_.assign(static_cast<std::size_t>(V), 0);
            for (std::int32_t t : history) {
                if (t < 0 || t >= V || seen_[t]) continue;
                seen_[t] = 1;
                float& s = scores_[t];
                s = s < 0.0f ? s * options_.repetition_penalty : s / options_.repetition_penalty;
            }
        }
        if (options_.temperature == 0.0f)
            return static_cast<std::int32_t>(std::max_element(scores_.begin(), scores_.end()) - scores_.begin());
        for (float& s : scores_) s /= options_.temperature;
        // Candidates sorted by score, highest first (ties by token id).
        order_.resize(static_cast<std::size_t>(V));
        std::iota(order_.begin(), order_.end(), 0);
        std::stable_sort(order_.begin(), order_.end(), [&](std::int32_t a, std::int32_t b) { return scores_[a] > scores_[b]; });
        std::size_t keep = order_.size();
        if (options_.top_k > 0 && static_cast<std::size_t>(options_.top_k) < keep) {
            const float kth = scores_[order_[options_.top_k - 1]];
            keep = static_cast<std::size_t>(options_.top_k);
            while (keep < order_.size() && scores_[order_[keep]] == kth) ++keep;  // ties with the k-th stay
        }
        // Softmax over the kept candidates (double), then the top-p cut.
        probs_.resize(keep);
        const double mx = scores_[order_[0]];
        double sum = 0.0;
        for (std::size_t i = 0; i < keep; ++i) sum += (probs_[i] = std::exp(double(scores_[order_[i]]) - mx));
        if (options_.top_p < 1.0f) {
            double mass = 0.0;
            std::size_t cut = 0;
            while (cut < keep) {
                mass += probs_[cut] / sum;
                ++cut;
                if (mass >= options_.top_p) break;
            }
            keep = std::max<std::size_t>(cut, 1);
            sum = 0.0;
            for (std::size_t i = 0; i < keep; ++i) sum += probs_[i];
        }
        const double u = std::uniform_real_distribution<double>(0.0, 1.0)(rng_) * sum;
        double acc = 0.0;
        for (std::size_t i = 0; i < keep; ++i) {
            acc += probs_[i];
            if (u < acc) return order_[i];
        }
        return order_[keep - 1];
    }

private:
    sampling_options options_;
    std::mt19937_64 rng_;
    std::vector<float> scores_;
    std::vector<std::int32_t> order_;
    std::vector<double> probs_;
    std::vector<std::uint8_t> seen_;
};

struct generation_options {
    std::int64_t max_new_tokens = 128;     ///< length limit of one round's answer
    std::vector<std::int32_t> eos_ids;     ///< tokens that end an answer; empty: the config's eos_token_id
    sampling_options sampling;
};

enum class stop_reason : std::uint8_t { eos, max_new_tokens, context_full };

inline const char* to_string(stop_reason r) {
    switch (r) {
        case stop_reason::eos: return "eos";
        case stop_reason::max_new_tokens: return "max_new_tokens";
        case stop_reason::context_full: return "context_full";
    }
    return "unknown";
}

struct generation_result {
    std::vector<std::int32_t> tokens;  ///< the answer, including the EOS token when it ended it
    stop_reason reason = stop_reason::max_new_tokens;
    std::int64_t prefilled = 0;        ///< tokens run through the model before the first new token
};

/// Multi-round text generation for a batch-1 model (a basic_llama_model on any backend). One
/// generator per conversation; the model's cache holds the conversation (call reset() for a new one).
template <class Model>
class basic_generator {
public:
    explicit basic_generator(Model& model) : model_(model) {}

    /// Starts a new conversation (clears the model's cache).
    void reset() {
        model_.reset();
        pending_.clear();
        history_.clear();
    }

    /// Every token of the conversation so far (prompts and answers).
    const std::vector<std::int32_t>& history() const { return history_; }

    /// Runs a round's prompt through the model: prefill(ids, logits (V)) must append ids to the
    /// model's cache and write the logits of the last one (the visual-chat model splices images in
    /// here). By default the ids are embedded as text.
    using prefill_fn = std::function<void(const std::vector<std::int32_t>& ids, float* last_logits)>;

    /// One round: prefills `prompt` (after the previous answer's last token), then generates.
    /// on_token(id) is called for each new token; returning false stops the round early.
    generation_result round(const std::vector<std::int32_t>& prompt, const generation_options& options,
                            const std::function<bool(std::int32_t)>& on_token = {}, const prefill_fn& prefill = {}) {
        const char* where = "mmca::generator::round";
        MMCA_CHECK_ARG(model_.batch() == 1, where, "model", "a model of batch " + detail::to_text(model_.batch()),
                       "a model of batch 1 (generation runs one conversation)");
        MMCA_CHECK_ARG(options.max_new_tokens >= 0, where, "max_new_tokens", detail::to_text(options.max_new_tokens),
                       "a count >= 0");
        sampler pick(options.sampling);
        std::vector<std::int32_t> eos = options.eos_ids;
        if (eos.empty() && model_.config().eos_token_id >= 0) eos.push_back(model_.config().eos_token_id);

        std::vector<std::int32_t> feed = pending_;
        feed.insert(feed.end(), prompt.begin(), prompt.end());
        generation_result result;
        const std::int64_t V = model_.config().vocab_size;
        logits_.resize(static_cast<std::size_t>(V));
        tensor_ref<float, 3> out(logits_.data(), {1, 1, V});
        // With nothing to feed there are no logits to sample the first token from.
        MMCA_CHECK_ARG(!feed.empty(), where, "prompt", "no tokens (and no pending token from a previous round)",
                       "the tokens of the new round");
        // Throws (changing nothing) when the round does not fit the context.
        if (prefill)
            prefill(feed, logits_.data());
        else
            step(feed, out);
        pending_.clear();
        history_.insert(history_.end(), prompt.begin(), prompt.end());
        result.prefilled = static_cast<std::int64_t>(feed.size());
        for (std::int64_t t = 0; t < options.max_new_tokens; ++t) {
            const std::int32_t next = pick.sample(logits_.data(), V, history_);
            result.tokens.push_back(next);
            history_.push_back(next);
            const bool stop_here = on_token && !on_token(next);
            if (std::find(eos.begin(), eos.end(), next) != eos.end()) {
                pending_ = {next};
                result.reason = stop_reason::eos;
                return result;
            }
            if (stop_here || t + 1 == options.max_new_tokens) {
                pending_ = {next};
                result.reason = stop_reason::max_new_tokens;
                return result;
            }
            if (model_.length(0) + 1 > model_.context()) {
                pending_ = {next};
                result.reason = stop_reason::context_full;
                return result;
            }
            step({next}, out);
        }
        result.reason = stop_reason::max_new_tokens;
        return result;
    }

private:
    void step(const std::vector<std::int32_t>& ids, tensor_ref<float, 3> out) {
        tensor_ref<const std::int32_t, 2> view(ids.data(), {1, static_cast<std::int64_t>(ids.size())});
        model_.forward_tokens(view, {}, out, logits_mode::last);
    }

    Model& model_;
    std::vector<std::int32_t> pending_;  // sampled but not yet fed (the previous answer's last token)
    std::vector<std::int32_t> history_;
    std::vector<float> logits_;
};

/// Generation on the CPU model with a KV cache of KV.
template <class KV = float>
using generator = basic_generator<llama_model<KV>>;

}  // namespace mmca
