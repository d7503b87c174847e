// tests/cpp/naive_llama_backend.hpp - a second backend of mmca::basic_llama_model, written from plain
// loops: double accumulation, an explicit RoPE rotation, the reference attention and a buffer type of
// its own. Tests drive the model's layer loop (and what is built on it, the visual-chat model) with it
// and compare against the CPU backend.
#pragma once

#include "mmca/attention/kv_cache.hpp"
#include "mmca/language/model.hpp"
#include "mmca/nn/cross_attention.hpp"

#include <cmath>
#include <vector>

namespace mmca_test {

using mmca::tensor_ref;

/// An activation buffer that is not a std::vector (the model may only use resize and data).
template <class U>
class plain_buffer {
public:
    void resize(std::size_t n) { values_.resize(n); }
    U* data() { return values_.data(); }

private:
    std::vector<U> values_;
};

/// Row r of a weight matrix widened to double.
inline std::vector<double> weight_row(const mmca::nn::matrix_ref& m, std::int64_t r) {
    std::vector<double> row(static_cast<std::size_t>(m.cols));
    mmca::nn::dispatch_dtype(m.type, [&](auto tag) {
        using S = decltype(tag);
        const S* p = m.as<S>() + r * m.cols;
        for (std::int64_t c = 0; c < m.cols; ++c) row[static_cast<std::size_t>(c)] = static_cast<float>(p[c]);
    });
    return row;
}

class naive_backend {
public:
    using value_type = float;
    using kv_type = float;
    using cache_type = mmca::kv_cache<float>;
    template <class U>
    using buffer = plain_buffer<U>;

    naive_backend() = default;
    naive_backend(const mmca::llama_config&, const mmca::llama_weights&) {}

    void set_num_threads(int) {}
    cache_type make_cache(std::int64_t b, std::int64_t h, std::int64_t c, std::int64_t d) const { return {b, h, c, d}; }
    const mmca::llama_layer_weights& layer(const mmca::llama_weights& w, std::int64_t l) const {
        return w.layers[static_cast<std::size_t>(l)];
    }
    const std::vector<float>& final_norm(const mmca::llama_weights& w) const { return w.norm; }

    void load_rows(tensor_ref<const float, 2> src, tensor_ref<float, 2> dst) {
        for (std::int64_t r = 0; r < src.shape[0]; ++r)
            for (std::int64_t c = 0; c < src.shape[1]; ++c) dst(r, c) = src(r, c);
    }
    void gather_rows(tensor_ref<const float, 2> src, const std::vector<std::int64_t>& rows, tensor_ref<float, 2> dst) {
        for (std::size_t r = 0; r < rows.size(); ++r)
            for (std::int64_t c = 0; c < src.shape[1]; ++c)
                dst(static_cast<std::int64_t>(r), c) = rows[r] < 0 ? 0.0f : src(rows[r], c);
    }
    void set_update_rows(const std::vector<std::uint8_t>& rows) { update_ = rows; }
    void set_rope(const mmca::nn::rope_table& t) { rope_ = t; }

    void rmsnorm(tensor_ref<const float, 2> x, const std::vector<float>& w, float eps, tensor_ref<float, 2> y) {
        for (std::int64_t r = 0; r < x.shape[0]; ++r) {
            double ss = 0.0;
            for (std::int64_t c = 0; c < x.shape[1]; ++c) ss += double(x(r, c)) * x(r, c);
            const double inv = 1.0 / std::sqrt(ss / double(x.shape[1]) + eps);
            for (std::int64_t c = 0; c < x.shape[1]; ++c)
                y(r, c) = static_cast<float>(w[static_cast<std::size_t>(c)] * (x(r, c) * inv));
        }
    }
    void linear(tensor_ref<const float, 2> x, const mmca::nn::matrix_ref& w, const std::vector<float>& bias,
                tensor_ref<float, 2> y) {
        for (std::int64_t o = 0; o < w.rows; ++o) {
            const std::vector<double> row = weight_row(w, o);
            for (std::int64_t n = 0; n < x.shape[0]; ++n) {
                double acc = bias.empty() ? 0.0 : bias[static_cast<std::size_t>(o)];
                for (std::int64_t i = 0; i < w.cols; ++i) acc += row[static_cast<std::size_t>(i)] * x(n, i);
                y(n, o) = static_cast<float>(acc);
            }
        }
    }
    /// x (B, heads, L, D); table row of (b, l) is b·L + l.
    void rope(tensor_ref<float, 4> x) {
        const std::int64_t L = x.shape[2], half = x.shape[3] / 2;
        for (std::int64_t b = 0; b < x.shape[0]; ++b)
            for (std::int64_t h = 0; h < x.shape[1]; ++h)
                for (std::int64_t l = 0; l < L; ++l)
                    for (std::int64_t i = 0; i < half; ++i) {
                        const auto t = static_cast<std::size_t>((b * L + l) * half + i);
                        const double c = rope_.cos[t], s = rope_.sin[t];
                        const double a = x(b, h, l, i), z = x(b, h, l, i + half);
                        x(b, h, l, i) = static_cast<float>(a * c - z * s);
                        x(b, h, l, i + half) = static_cast<float>(z * c + a * s);
                    }
    }
    void add_rows(tensor_ref<float, 2> h, tensor_ref<const float, 2> delta) {
        for (std::int64_t r = 0; r < h.shape[0]; ++r)
            if (update_[static_cast<std::size_t>(r)])
                for (std::int64_t c = 0; c < h.shape[1]; ++c) h(r, c) += delta(r, c);
    }
    void swiglu(tensor_ref<const float, 2> x, const mmca::nn::swiglu_weights& w, tensor_ref<float, 2> y) {
        const std::int64_t N = x.shape[0], I = w.gate.rows;
        std::vector<float> g(static_cast<std::size_t>(N * I)), u(g.size());
        tensor_ref<float, 2> gv(g.data(), {N, I}), uv(u.data(), {N, I});
        linear(x, w.gate, {}, gv);
        linear(x, w.up, {}, uv);
        for (std::size_t i = 0; i < g.size(); ++i) g[i] = static_cast<float>(g[i] / (1.0 + std::exp(-double(g[i]))) * u[i]);
        linear(gv, w.down, {}, y);
    }
    void append(cache_type& cache, tensor_ref<const float, 4> k, tensor_ref<const float, 4> v,
                tensor_ref<const std::int8_t, 2> types, tensor_ref<const std::int32_t, 2> ids,
                tensor_ref<const std::int32_t, 1> lens) {
        cache.append(k, v, types, ids, lens);
    }
    void attention(tensor_ref<const float, 4> q, const cache_type& cache, const mmca::attention_options& options,
                   mmca::attention_impl, tensor_ref<float, 4> out) {
        ++attention_calls;
        mmca::attention_forward(q, cache, options, out, mmca::attention_impl::reference);
    }
    void cross_block(tensor_ref<float, 2> h, tensor_ref<const float, 2> inputs, const mmca::nn::row_metadata& rows,
                     const mmca::nn::gated_cross_attention_weights& w, std::int64_t heads, std::int64_t kv_heads,
                     std::int64_t head_dim, float eps, mmca::image_visibility visibility, mmca::nn::cross_kv_store& store) {
        ++cross_calls;
        mmca::nn::gated_cross_attention_forward(h, inputs, rows, w, heads, kv_heads, head_dim, eps, visibility, store,
                                                scratch_, 1);
    }
    void logits(tensor_ref<const float, 2> x, const mmca::llama_weights& w, tensor_ref<float, 2> out) {
        linear(x, w.lm_head, {}, out);
    }

    int attention_calls = 0, cross_calls = 0;

private:
    std::vector<std::uint8_t> update_;
    mmca::nn::rope_table rope_;
    mmca::nn::cross_attention_scratch scratch_;
};

}  // namespace mmca_test
