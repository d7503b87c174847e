// tests/cpp/llama_steps.hpp - a multi-round chat as a list of forward() calls, run on any
// mmca::basic_llama_model (CPU, CUDA, a test backend) and compared row by row. No GoogleTest here:
// the CUDA tests' .cu files include it too.
#pragma once

#include "mmca/core/tensor.hpp"
#include "mmca/language/model.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

namespace mmca_test {

/// One forward() call of a model with a batch of B: L new positions per sequence.
struct model_step {
    std::int64_t length = 0;            // L
    std::vector<float> embeddings;      // (B, L, H)
    std::vector<std::int8_t> types;     // (B, L)
    std::vector<std::int32_t> lens;     // (B): sequence b takes its first lens[b] positions
};

/// The logits (B, L, V) of every step, from forward(..., logits_mode::all) on one model (its caches
/// carry over from step to step). Any basic_llama_model (CPU, CUDA, a test backend).
template <class Model>
std::vector<std::vector<float>> run_steps(Model& model, const std::vector<model_step>& steps) {
    const std::int64_t B = model.batch(), H = model.config().hidden_size, V = model.config().vocab_size;
    std::vector<std::vector<float>> out;
    for (const auto& s : steps) {
        const std::int64_t L = s.length;
        std::vector<float> logits(static_cast<std::size_t>(B * L * V));
        model.forward(mmca::tensor_ref<const float, 3>(s.embeddings.data(), {B, L, H}),
                      mmca::tensor_ref<const std::int8_t, 2>(s.types.data(), {B, L}), {},
                      mmca::tensor_ref<const std::int32_t, 1>(s.lens.data(), {B}),
                      mmca::tensor_ref<float, 3>(logits.data(), {B, L, V}), mmca::logits_mode::all);
        out.push_back(std::move(logits));
    }
    return out;
}

/// A chat over two sequences (B = 2): round 1 is a prompt with two images (sequence 1 shorter,
/// padded), then a chunk of text on top of the cache, three decode steps and a second round with
/// one more image. Embeddings are N(0, 1).
inline std::vector<model_step> chat_steps(std::int64_t H, unsigned seed) {
    std::mt19937 gen(seed);
    std::normal_distribution<float> nd(0.0f, 1.0f);
    auto step = [&](const std::vector<std::vector<std::int8_t>>& seqs) {
        model_step s;
        for (const auto& q : seqs) s.length = std::max<std::int64_t>(s.length, static_cast<std::int64_t>(q.size()));
        s.embeddings.resize(static_cast<std::size_t>(2 * s.length * H));
        for (auto& x : s.embeddings) x = nd(gen);
        s.types.assign(static_cast<std::size_t>(2 * s.length), 0);
        for (std::size_t b = 0; b < seqs.size(); ++b) {
            std::copy(seqs[b].begin(), seqs[b].end(), s.types.begin() + static_cast<std::ptrdiff_t>(b * s.length));
            s.lens.push_back(static_cast<std::int32_t>(seqs[b].size()));
        }
        return s;
    };
    auto run = [](std::vector<std::int8_t>& v, int type, int n) { v.insert(v.end(), n, static_cast<std::int8_t>(type)); };
    std::vector<std::int8_t> a, b;
    run(a, 1, 5), run(a, 2, 16), run(a, 1, 7), run(a, 2, 16), run(a, 1, 4);
    run(b, 2, 16), run(b, 1, 9);
    std::vector<model_step> steps{step({a, b})};
    std::vector<std::int8_t> ca(6, 1), cb(3, 1);
    steps.push_back(step({ca, cb}));
    for (int i = 0; i < 3; ++i) steps.push_back(step({{1}, {1}}));
    std::vector<std::int8_t> ra, rb;
    run(ra, 1, 3), run(ra, 2, 16), run(ra, 1, 5);
    run(rb, 1, 4);
    steps.push_back(step({ra, rb}));
    return steps;
}

/// max |got - want| / max |want| over the rows each step's lens mark valid (rows past a sequence's
/// length are not written); infinity when got has a non-finite value there.
inline double worst_step_error(const std::vector<model_step>& steps, const std::vector<std::vector<float>>& got,
                               const std::vector<std::vector<float>>& want, std::int64_t V, std::size_t s) {
    double diff = 0.0, scale = 0.0;
    const std::int64_t L = steps[s].length;
    for (std::size_t b = 0; b < steps[s].lens.size(); ++b)
        for (std::int64_t i = 0; i < steps[s].lens[b]; ++i)
            for (std::int64_t v = 0; v < V; ++v) {
                const auto at = static_cast<std::size_t>((static_cast<std::int64_t>(b) * L + i) * V + v);
                if (!std::isfinite(got[s][at])) return INFINITY;
                diff = std::max(diff, std::fabs(double(got[s][at]) - double(want[s][at])));
                scale = std::max(scale, std::fabs(double(want[s][at])));
            }
    return diff / std::max(scale, 1e-30);
}

}  // namespace mmca_test
