// mmca/language/lora.hpp - LoRA adapters on the attention projections q/k/v/o of the LLaMa layers.
//
//   mmca::lora_config lc;  lc.rank = 8;  lc.alpha = 16;  lc.targets = mmca::lora_q | mmca::lora_v;
//   mmca::llama_lora lora = mmca::make_llama_lora(config, lc, /*seed=*/0);
//   mmca::llama_forward_train(..., tape, threads, &lora);          // training (language/train.hpp)
//   mmca::llama_weights merged = mmca::merge_lora(config, weights, lora);  // inference
//
// Each adapted projection W [out, in] gets y = x·Wᵀ + (alpha/r)·(x·Aᵀ)·Bᵀ (nn/lora.hpp), with
// A (r, in) and B (out, r) trainable float32; the frozen W gets no gradient.
//
// Initialisation: B = 0, so the adapted model starts equal to the frozen one; A is uniform on
// [−1/√in, 1/√in] (the bound of PEFT's kaiming_uniform_(a=√5)), drawn from std::mt19937_64(seed)
// with u = (x >> 11)·2⁻⁵³ (53-bit mantissa) so the values are the same on every platform, in the
// order layer, projection (q, k, v, o), row, column.
//
// Inference merges instead of adding a branch to the decoding path: merge_lora returns weights
// whose adapted matrices are float32 copies W' = W + (alpha/r)·B·A (the others stay views of the
// original storage), which every forward path (KV cache, generation, chat) runs unchanged and at
// the speed of the frozen model.
#pragma once

#include "mmca/core/error.hpp"
#include "mmca/language/config.hpp"
#include "mmca/language/weights.hpp"
#include "mmca/nn/lora.hpp"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <memory>
#include <random>
#include <string>
#include <utility>
#include <vector>

namespace mmca {

/// Projections that can carry an adapter (a bit set).
enum lora_target : unsigned { lora_q = 1u, lora_k = 2u, lora_v = 4u, lora_o = 8u };
inline constexpr unsigned lora_all_targets = lora_q | lora_k | lora_v | lora_o;
inline constexpr const char* lora_target_names[4] = {"q", "k", "v", "o"};

struct lora_config {
    std::int64_t rank = 8;
    double alpha = 16.0;
    unsigned targets = lora_q | lora_v;  ///< any non-empty subset of lora_all_targets
    float scale() const { return static_cast<float>(alpha / static_cast<double>(rank)); }

    void validate(const char* where) const {
        using detail::to_text;
        MMCA_CHECK_ARG(rank > 0, where, "rank", to_text(rank), "a positive rank");
        MMCA_CHECK_ARG(std::isfinite(alpha), where, "alpha", to_text(alpha), "a finite number");
        MMCA_CHECK_ARG(targets != 0 && (targets & ~lora_all_targets) == 0, where, "targets", to_text(targets),
                       "a non-empty subset of q, k, v, o (bits 1, 2, 4, 8)");
    }
};

/// Parses "qv", "q,k,v,o", "all"... into a target set.
inline unsigned parse_lora_targets(const std::string& s, const char* where = "mmca::parse_lora_targets") {
    if (s == "all") return lora_all_targets;
    unsigned t = 0;
    for (char ch : s) {
        if (ch == ',' || ch == ' ') continue;
        const unsigned bit = ch == 'q' ? lora_q : ch == 'k' ? lora_k : ch == 'v' ? lora_v : ch == 'o' ? lora_o : 0u;
        MMCA_CHECK_ARG(bit != 0, where, "targets", "'" + s + "'", "letters among q, k, v, o (e.g. 'qv'), or 'all'");
        t |= bit;
    }
    MMCA_CHECK_ARG(t != 0, where, "targets", "'" + s + "'", "at least one of q, k, v, o");
    return t;
}

/// Adapters of every layer: layers[l][p] for p = 0 q, 1 k, 2 v, 3 o (empty when not a target).
struct llama_lora {
    lora_config config;
    std::vector<std::array<nn::lora_adapter, 4>> layers;
    bool has(std::size_t p) const { return (config.targets >> p) & 1u; }
};

namespace detail {

/// (in, out) of projection p (0 q, 1 k, 2 v, 3 o).
inline std::pair<std::int64_t, std::int64_t> lora_projection_shape(const llama_config& c, std::size_t p) {
    const std::int64_t H = c.hidden_size, Wq = c.num_heads * c.head_dim(), Wkv = c.num_kv_heads * c.head_dim();
    switch (p) {
        case 0: return {H, Wq};
        case 1:
        case 2: return {H, Wkv};
        default: return {Wq, H};
    }
}

}  // namespace detail

/// Fresh adapters: A uniform on ±1/√in from seed, B = 0 (see the header comment).
inline llama_lora make_llama_lora(const llama_config& c, const lora_config& lc, std::uint64_t seed = 0) {
    const char* where = "mmca::make_llama_lora";
    c.validate(where);
    lc.validate(where);
    llama_lora l;
    l.config = lc;
    l.layers.resize(static_cast<std::size_t>(c.num_layers));
    std::mt19937_64 gen(seed);
    for (auto& layer : l.layers)
        for (std::size_t p = 0; p < 4; ++p) {
            if (!l.has(p)) continue;
            const auto [in, out] = detail::lora_projection_shape(c, p);
            auto& ad = layer[p];
            ad.rank = lc.rank;
            ad.in = in;
            ad.out = out;
            ad.a.resize(static_cast<std::size_t>(lc.rank * in));
            ad.b.assign(static_cast<std::size_t>(out * lc.rank), 0.0f);
            const double bound = 1.0 / std::sqrt(static_cast<double>(in));
            for (auto& x : ad.a) {
                const double u = static_cast<double>(gen() >> 11) * (1.0 / 9007199254740992.0);
                x = static_cast<float>((2.0 * u - 1.0) * bound);
            }
        }
    return l;
}

/// Checks that the adapters fit the config (shapes, targets, one entry per layer).
inline void check_llama_lora(const llama_config& c, const llama_lora& l, const char* where) {
    using detail::to_text;
    l.config.validate(where);
    MMCA_CHECK_ARG(static_cast<std::int64_t>(l.layers.size()) == c.num_layers, where, "lora",
                   to_text(l.layers.size()) + " layers of adapters", to_text(c.num_layers) + " (one per decoder layer)");
    for (std::size_t i = 0; i < l.layers.size(); ++i)
        for (std::size_t p = 0; p < 4; ++p) {
            const auto& ad = l.layers[i][p];
            const std::string name = "layers." + to_text(i) + "." + lora_target_names[p] + "_proj";
            if (!l.has(p)) {
                MMCA_CHECK_ARG(ad.empty(), where, "lora", name + " has an adapter", "none (not among the targets)");
                continue;
            }
            const auto [in, out] = detail::lora_projection_shape(c, p);
            MMCA_CHECK_ARG(ad.rank == l.config.rank && ad.in == in && ad.out == out &&
                               static_cast<std::int64_t>(ad.a.size()) == ad.rank * in &&
                               static_cast<std::int64_t>(ad.b.size()) == out * ad.rank,
                           where, "lora",
                           name + ": rank " + to_text(ad.rank) + ", A of " + to_text(ad.a.size()) + ", B of " +
                               to_text(ad.b.size()) + " values",
                           "rank " + to_text(l.config.rank) + ", A (" + to_text(l.config.rank) + ", " + to_text(in) +
                               "), B (" + to_text(out) + ", " + to_text(l.config.rank) + ")");
        }
}

/// Zeroed gradient accumulators shaped like the adapters (dA in .a, dB in .b).
inline llama_lora make_llama_lora_grads(const llama_lora& l) {
    llama_lora g = l;
    for (auto& layer : g.layers)
        for (auto& ad : layer) {
            std::fill(ad.a.begin(), ad.a.end(), 0.0f);
            std::fill(ad.b.begin(), ad.b.end(), 0.0f);
        }
    return g;
}

/// Weights with every adapted projection replaced by a float32 W + (alpha/r)·B·A (the merged
/// matrices are owned by the result's storage, which also keeps the original storage alive).
inline llama_weights merge_lora(const llama_config& c, const llama_weights& w, const llama_lora& l) {
    const char* where = "mmca::merge_lora";
    check_llama_lora(c, l, where);
    MMCA_CHECK_ARG(static_cast<std::int64_t>(w.layers.size()) == c.num_layers, where, "weights",
                   detail::to_text(w.layers.size()) + " layers", detail::to_text(c.num_layers) + " layers");
    struct owner {
        std::shared_ptr<const void> base;
        std::vector<std::vector<float>> merged;
    };
    auto own = std::make_shared<owner>();
    own->base = w.storage;
    own->merged.reserve(l.layers.size() * 4);
    llama_weights out = w;
    const float s = l.config.scale();
    for (std::size_t i = 0; i < l.layers.size(); ++i) {
        auto& lw = out.layers[i];
        nn::matrix_ref* mats[4] = {&lw.q, &lw.k, &lw.v, &lw.o};
        for (std::size_t p = 0; p < 4; ++p) {
            if (!l.has(p)) continue;
            own->merged.push_back(nn::lora_merge(*mats[p], l.layers[i][p], s));
            *mats[p] = nn::make_matrix(own->merged.back().data(), mats[p]->rows, mats[p]->cols);
        }
    }
    out.storage = std::shared_ptr<const void>(own, own.get());
    return out;
}

}  // namespace mmca
