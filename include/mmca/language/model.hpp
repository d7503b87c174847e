// mmca/language/model.hpp - the LLaMa-2 decoder with a KV cache, under every attention variant.
//
//   mmca::llama_model<KV> model(config, weights, options);     // KV: float, float16 or bfloat16 cache
//   model.forward(embeddings, token_types, image_ids, lens, logits, mmca::logits_mode::last);
//   model.forward_tokens(ids, lens, logits, mmca::logits_mode::all);
//
// A call processes the *new* tokens of each sequence: their K/V are appended to the per-layer caches
// and their rows attend to everything cached. A full prefill, a chunked prefill, token-by-token
// decoding and later chat rounds are all the same call. The model takes input embeddings with a
// token type per position (0 pad, 1 text, 2 image) so that the visual-chat model can splice image
// rows in; forward_tokens embeds text ids itself.
//
// Per layer (SPEC §5):  h += o(Attn(RMSNorm(h)));  h += down(silu(gate(x)) ⊙ up(x)), x = RMSNorm(h)
// with RoPE on q and k at the absolute position of each token (cached tokens + index in the call).
// Under causal_cross the image rows keep their input hidden state through every layer (SPEC §2.4):
// they only provide keys and values. Gated cross-attention blocks (SPEC §2.5) run before every
// cross_attention_every-th layer when the config asks for them.
//
// The layer logic is written once, in basic_llama_model<Backend>; the backend decides where the
// activations and caches live and runs each operation. llama_model<KV> is the CPU decoder
// (mmca/backend/cpu/llama_backend.hpp); mmca::cuda::llama_model<T> runs the same code on a GPU
// (mmca/backend/cuda/llama_backend.cuh).
//
// A model object is not safe to call from two threads at once (it owns its caches and scratch).
#pragma once

#include "mmca/attention/attention.hpp"
#include "mmca/attention/kv_cache.hpp"
#include "mmca/attention/types.hpp"
#include "mmca/backend/cpu/llama_backend.hpp"
#include "mmca/core/dtype.hpp"
#include "mmca/core/error.hpp"
#include "mmca/core/tensor.hpp"
#include "mmca/core/threading.hpp"
#include "mmca/language/config.hpp"
#include "mmca/language/weights.hpp"
#include "mmca/nn/cross_attention.hpp"
#include "mmca/nn/embedding.hpp"
#include "mmca/nn/linear.hpp"
#include "mmca/nn/mlp.hpp"
#include "mmca/nn/rmsnorm.hpp"
#include "mmca/nn/rope.hpp"

#include <algorithm>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace mmca {

/// Which rows of a forward call get logits.
enum class logits_mode : std::uint8_t {
    all,   ///< every row: logits (B, L, V)
    last,  ///< the last new token of each sequence: logits (B, 1, V) (zeros for a sequence with no new token)
    none,  ///< no logits (prefill of a prompt whose next token is known)
};

struct llama_model_options {
    std::int64_t batch = 1;    ///< sequences decoded side by side (the caches' B)
    std::int64_t context = 0;  ///< tokens each sequence may hold; 0: config.max_positions
    attention_options attention;  ///< variant (default mmca), causal_cross visibility, threads (scale is 1/sqrt(D))
    attention_impl impl = attention_impl::fused;
    int num_threads = 0;       ///< threads of the linear layers and attention; 0: OpenMP's default
};

/// The decoder over a backend (mmca/backend/cpu/llama_backend.hpp says what a backend provides):
/// the layer logic below is the only copy, whether activations live in host memory or on a GPU.
template <class Backend>
class basic_llama_model {
public:
    using backend_type = Backend;
    using kv_type = typename Backend::kv_type;
    using value_type = typename Backend::value_type;  ///< activation element type
    using cache_type = typename Backend::cache_type;

    basic_llama_model(llama_config config, llama_weights weights, llama_model_options options = {})
        : config_(std::move(config)), weights_(std::move(weights)), options_(options) {
        const char* where = "mmca::llama_model";
        config_.validate(where);
        if (options_.context == 0) options_.context = config_.max_positions;
        MMCA_CHECK_ARG(options_.batch > 0, where, "batch", detail::to_text(options_.batch), "a positive number");
        MMCA_CHECK_ARG(options_.context > 0, where, "context", detail::to_text(options_.context),
                       "a positive number of tokens (0: max_position_embeddings)");
        check_weights(where);
        backend_ = Backend(config_, weights_);
        const std::int64_t B = options_.batch;
        caches_.reserve(static_cast<std::size_t>(config_.num_layers));
        for (std::int64_t l = 0; l < config_.num_layers; ++l)
            caches_.push_back(backend_.make_cache(B, config_.num_kv_heads, options_.context, config_.head_dim()));
        stores_.resize(weights_.cross_blocks.size());
        for (auto& s : stores_) s.seqs.resize(static_cast<std::size_t>(B));
        images_.assign(static_cast<std::size_t>(B), 0);
        last_image_.assign(static_cast<std::size_t>(B), -1);
    }

    const llama_config& config() const { return config_; }
    const llama_weights& weights() const { return weights_; }
    /// The weights for a trainer that points trainable tensors at its own float32 copies (the
    /// shapes and dtypes it sets must stay those the model was checked with). A backend that copies
    /// the weights (the CUDA one) does so at construction and does not see later changes.
    llama_weights& mutable_weights() { return weights_; }
    const llama_model_options& options() const { return options_; }
    std::int64_t batch() const { return options_.batch; }
    std::int64_t context() const { return options_.context; }
    /// Tokens cached for sequence b.
    std::int64_t length(std::int64_t b = 0) const {
        MMCA_CHECK_ARG(b >= 0 && b < batch(), "mmca::llama_model::length", "b", detail::to_text(b),
                       "a sequence index in [0, " + detail::to_text(batch()) + ")");
        return caches_.front().length(b);
    }
    const cache_type& cache(std::int64_t layer) const { return caches_.at(static_cast<std::size_t>(layer)); }
    void set_attention(const attention_options& a) { options_.attention = a; }
    void set_num_threads(int n) { options_.num_threads = n; }
    /// The backend running the layers (the CUDA one holds its device copies of the weights).
    Backend& backend() { return backend_; }

    /// Forgets every cached token (a new conversation).
    void reset() {
        for (auto& c : caches_) c.clear();
        for (auto& s : stores_) s.clear();
        std::fill(images_.begin(), images_.end(), 0);
        std::fill(last_image_.begin(), last_image_.end(), -1);
    }

    /// out (N, H) = token embedding of ids[0..n).
    void embed(const std::int32_t* ids, std::int64_t n, tensor_ref<float, 2> out) const {
        nn::embedding_forward(ids, n, weights_.embed, out);
    }

    /// Runs the new tokens through the decoder.
    ///   embeddings (B, L, H) float32: input hidden states (token embeddings, spliced image rows)
    ///   types      (B, L) int8: 0 pad, 1 text, 2 image
    ///   image_ids  (B, L) int32 or absent: image index per image token; absent: every run of image
    ///              tokens is a new image, numbered after those already cached (a run continues
    ///              across calls when the last cached token is an image)
    ///   lens       (B) int32 or absent: sequence b takes its first lens[b] rows (right padding)
    ///   logits     float32 (B, L, V) for logits_mode::all, (B, 1, V) for last, absent for none
    /// Everything is checked before anything changes: after an error the caches are as they were.
    void forward(tensor_ref<const float, 3> embeddings, tensor_ref<const std::int8_t, 2> types,
                 tensor_ref<const std::int32_t, 2> image_ids, tensor_ref<const std::int32_t, 1> lens,
                 tensor_ref<float, 3> logits, logits_mode mode = logits_mode::all) {
        using detail::to_text;
        const char* where = "mmca::llama_model::forward";
        const std::int64_t B = batch(), H = config_.hidden_size, V = config_.vocab_size;
        MMCA_CHECK_ARG(!embeddings.empty(), where, "embeddings", "no tensor", "a (B, L, H) float32 tensor");
        const std::int64_t L = embeddings.shape[1];
        MMCA_CHECK_ARG(embeddings.shape[0] == B && embeddings.shape[2] == H && embeddings.inner_contiguous(), where,
                       "embeddings", embeddings.shape_text(),
                       "(" + to_text(B) + ", L, " + to_text(H) + ") with a contiguous last dimension");
        MMCA_CHECK_ARG(!types.empty() && types.shape[0] == B && types.shape[1] == L, where, "token_types",
                       types.shape_text(), "(" + to_text(B) + ", " + to_text(L) + ")");
        if (!image_ids.empty())
            MMCA_CHECK_ARG(image_ids.shape == types.shape, where, "image_ids", image_ids.shape_text(),
                           "the shape of token_types " + types.shape_text());
        if (!lens.empty()) MMCA_CHECK_ARG(lens.shape[0] == B, where, "lens", lens.shape_text(), "(" + to_text(B) + ")");
        std::vector<std::int32_t> take(static_cast<std::size_t>(B));
        for (std::int64_t b = 0; b < B; ++b) {
            take[b] = lens.empty() ? static_cast<std::int32_t>(L) : lens(b);
            MMCA_CHECK_ARG(take[b] >= 0 && take[b] <= L, where, "lens", "lens[" + to_text(b) + "] = " + to_text(take[b]),
                           "a count in [0, " + to_text(L) + "]");
            const std::int64_t cached = caches_.front().length(b);
            MMCA_CHECK_ARG(cached + take[b] <= context(), where, "embeddings",
                           "a sequence of " + to_text(cached + take[b]) + " tokens (sequence " + to_text(b) + ": " +
                               to_text(cached) + " cached + " + to_text(take[b]) + " new)",
                           "at most " + to_text(context()) + " tokens (the model's context; max_position_embeddings " +
                               to_text(config_.max_positions) + ")");
            check_new_tokens(where, types, image_ids, b, take[b], cached);
        }
        if (mode == logits_mode::all)
            MMCA_CHECK_ARG(!logits.empty() && logits.shape[0] == B && logits.shape[1] == L && logits.shape[2] == V &&
                               logits.inner_contiguous(),
                           where, "logits", logits.empty() ? std::string("no tensor") : logits.shape_text(),
                           "(" + to_text(B) + ", " + to_text(L) + ", " + to_text(V) + ") float32 for logits 'all'");
        if (mode == logits_mode::last)
            MMCA_CHECK_ARG(!logits.empty() && logits.shape[0] == B && logits.shape[1] == 1 && logits.shape[2] == V &&
                               logits.inner_contiguous(),
                           where, "logits", logits.empty() ? std::string("no tensor") : logits.shape_text(),
                           "(" + to_text(B) + ", 1, " + to_text(V) + ") float32 for logits 'last'");

        run(embeddings, types, image_ids, take, logits, mode);
    }

    /// Embeds text token ids (B, L) int32 (all rows text, right padding by lens) and runs forward().
    void forward_tokens(tensor_ref<const std::int32_t, 2> ids, tensor_ref<const std::int32_t, 1> lens,
                        tensor_ref<float, 3> logits, logits_mode mode = logits_mode::all) {
        using detail::to_text;
        const char* where = "mmca::llama_model::forward_tokens";
        const std::int64_t B = batch(), H = config_.hidden_size;
        MMCA_CHECK_ARG(!ids.empty() && ids.shape[0] == B && ids.inner_contiguous(), where, "ids",
                       ids.empty() ? std::string("no tensor") : ids.shape_text(), "(" + to_text(B) + ", L) int32");
        const std::int64_t L = ids.shape[1];
        if (!lens.empty()) MMCA_CHECK_ARG(lens.shape[0] == B, where, "lens", lens.shape_text(), "(" + to_text(B) + ")");
        token_embeddings_.resize(static_cast<std::size_t>(B * L * H));
        token_types_.assign(static_cast<std::size_t>(B * L), 0);
        for (std::int64_t b = 0; b < B; ++b) {
            const std::int64_t n = lens.empty() ? L : std::clamp<std::int64_t>(lens(b), 0, L);
            nn::embedding_forward(ids.ptr(b), n, weights_.embed,
                                  tensor_ref<float, 2>(token_embeddings_.data() + b * L * H, {n, H}));
            std::fill_n(token_embeddings_.data() + (b * L + n) * H, (L - n) * H, 0.0f);
            std::fill_n(token_types_.data() + b * L, n, std::int8_t{1});
        }
        forward(tensor_ref<const float, 3>(token_embeddings_.data(), {B, L, H}),
                tensor_ref<const std::int8_t, 2>(token_types_.data(), {B, L}), {}, lens, logits, mode);
    }

private:
    using buffer_type = typename Backend::template buffer<value_type>;

    void check_weights(const char* where) const {
        using detail::to_text;
        const std::int64_t H = config_.hidden_size, I = config_.intermediate_size, V = config_.vocab_size;
        const std::int64_t Wq = config_.num_heads * config_.head_dim(), Wkv = config_.num_kv_heads * config_.head_dim();
        auto mat = [&](const nn::matrix_ref& m, std::int64_t r, std::int64_t c, const std::string& name) {
            MMCA_CHECK_ARG(!m.empty() && m.rows == r && m.cols == c, where, "weights",
                           name + (m.empty() ? std::string(" missing") : " of shape " + m.shape_text()),
                           name + " of shape [" + to_text(r) + ", " + to_text(c) + "]");
        };
        auto vec = [&](const std::vector<float>& v, std::int64_t n, const std::string& name, bool optional) {
            if (optional && v.empty()) return;
            MMCA_CHECK_ARG(static_cast<std::int64_t>(v.size()) == n, where, "weights",
                           name + " of " + to_text(v.size()) + " values", name + " of " + to_text(n) + " values");
        };
        mat(weights_.embed, V, H, "embed");
        mat(weights_.lm_head, V, H, "lm_head");
        vec(weights_.norm, H, "norm", false);
        MMCA_CHECK_ARG(static_cast<std::int64_t>(weights_.layers.size()) == config_.num_layers, where, "weights",
                       to_text(weights_.layers.size()) + " layers", to_text(config_.num_layers) + " layers");
        for (std::size_t l = 0; l < weights_.layers.size(); ++l) {
            const auto& w = weights_.layers[l];
            const std::string p = "layers." + to_text(l) + ".";
            vec(w.attn_norm, H, p + "attn_norm", false);
            vec(w.mlp_norm, H, p + "mlp_norm", false);
            mat(w.q, Wq, H, p + "q");
            mat(w.k, Wkv, H, p + "k");
            mat(w.v, Wkv, H, p + "v");
            mat(w.o, H, Wq, p + "o");
            vec(w.q_bias, Wq, p + "q_bias", true);
            vec(w.k_bias, Wkv, p + "k_bias", true);
            vec(w.v_bias, Wkv, p + "v_bias", true);
            vec(w.o_bias, H, p + "o_bias", true);
            mat(w.mlp.gate, I, H, p + "mlp.gate");
            mat(w.mlp.up, I, H, p + "mlp.up");
            mat(w.mlp.down, H, I, p + "mlp.down");
        }
        MMCA_CHECK_ARG(static_cast<std::int64_t>(weights_.cross_blocks.size()) == config_.num_cross_blocks(), where,
                       "weights", to_text(weights_.cross_blocks.size()) + " cross-attention blocks",
                       to_text(config_.num_cross_blocks()) + " (cross_attention_every " +
                           to_text(config_.cross_attention_every) + ")");
        const std::int64_t Ic = config_.cross_intermediate();
        for (std::size_t c = 0; c < weights_.cross_blocks.size(); ++c) {
            const auto& w = weights_.cross_blocks[c];
            const std::string p = "cross_blocks." + to_text(c) + ".";
            vec(w.attn_norm, H, p + "attn_norm", false);
            vec(w.mlp_norm, H, p + "mlp_norm", false);
            mat(w.q, Wq, H, p + "q");
            mat(w.k, Wkv, H, p + "k");
            mat(w.v, Wkv, H, p + "v");
            mat(w.o, H, Wq, p + "o");
            mat(w.mlp.gate, Ic, H, p + "mlp.gate");
            mat(w.mlp.up, Ic, H, p + "mlp.up");
            mat(w.mlp.down, H, Ic, p + "mlp.down");
        }
    }

    void run(tensor_ref<const float, 3> embeddings, tensor_ref<const std::int8_t, 2> types,
             tensor_ref<const std::int32_t, 2> user_image_ids, const std::vector<std::int32_t>& take,
             tensor_ref<float, 3> logits, logits_mode mode) {
        const std::int64_t B = batch(), L = embeddings.shape[1], N = B * L, H = config_.hidden_size;
        const std::int64_t Hq = config_.num_heads, Hkv = config_.num_kv_heads, D = config_.head_dim();
        const std::int64_t Wq = Hq * D, Wkv = Hkv * D, V = config_.vocab_size;
        const bool keep_images = options_.attention.variant == attention_variant::causal_cross;
        backend_.set_num_threads(options_.num_threads);

        // Row metadata (host): sequence, absolute position, type, image id, validity.
        row_seq_.resize(N);
        row_pos_.resize(N);
        row_type_.resize(N);
        row_valid_.resize(N);
        row_update_.resize(N);
        image_ids_.assign(static_cast<std::size_t>(N), -1);
        std::int64_t total_len = 0;
        for (std::int64_t b = 0; b < B; ++b) {
            const std::int64_t cached = caches_.front().length(b);
            total_len = std::max(total_len, cached + take[b]);
            for (std::int64_t i = 0; i < L; ++i) {
                const std::int64_t n = b * L + i;
                const bool valid = i < take[b];
                row_seq_[n] = b;
                row_pos_[n] = cached + i;
                row_type_[n] = valid ? types(b, i) : std::int8_t{0};
                row_valid_[n] = valid ? 1 : 0;
                // Rows a layer updates: every valid row except causal_cross image rows (SPEC §2.4).
                row_update_[n] = valid && !(keep_images && row_type_[n] == 2) ? 1 : 0;
                if (!valid || row_type_[n] != 2) continue;
                std::int32_t id;
                if (!user_image_ids.empty()) {
                    id = user_image_ids(b, i);
                } else {
                    const bool continues = i > 0 ? row_type_[n - 1] == 2 : (cached > 0 && last_image_[b] >= 0);
                    id = continues ? (i > 0 ? image_ids_[n - 1] : last_image_[b]) : images_[b];
                }
                image_ids_[n] = id;
                images_[b] = std::max(images_[b], id + 1);
            }
        }
        // The last cached token's image id, for runs that continue into the next call.
        for (std::int64_t b = 0; b < B; ++b)
            if (take[b] > 0) last_image_[b] = image_ids_[b * L + take[b] - 1];
        backend_.set_update_rows(row_update_);

        // Hidden states (N, H) in the backend's memory; the untouched inputs stay on the host for the
        // gated cross-attention blocks.
        hidden_.resize(static_cast<std::size_t>(N * H));
        tensor_ref<value_type, 2> h(hidden_.data(), {N, H});
        for (std::int64_t b = 0; b < B; ++b)
            backend_.load_rows(tensor_ref<const float, 2>(embeddings.ptr(b), {L, H}, {embeddings.strides[1], 1}),
                               tensor_ref<value_type, 2>(h.ptr(b * L), {L, H}));
        if (!weights_.cross_blocks.empty()) {
            inputs_.resize(static_cast<std::size_t>(N * H));
            for (std::int64_t n = 0; n < N; ++n) std::copy_n(embeddings.ptr(n / L, n % L), H, inputs_.data() + n * H);
        }

        // RoPE angles of every row.
        nn::rope_build(config_.rope(), row_pos_.data(), N, total_len, rope_);
        backend_.set_rope(rope_);

        xn_.resize(static_cast<std::size_t>(N * H));
        proj_.resize(static_cast<std::size_t>(N * H));
        q_.resize(static_cast<std::size_t>(N * Wq));
        k_.resize(static_cast<std::size_t>(N * Wkv));
        v_.resize(static_cast<std::size_t>(N * Wkv));
        a_.resize(static_cast<std::size_t>(N * Wq));
        tensor_ref<value_type, 2> xn(xn_.data(), {N, H}), proj(proj_.data(), {N, H}), q(q_.data(), {N, Wq}),
            k(k_.data(), {N, Wkv}), v(v_.data(), {N, Wkv}), a(a_.data(), {N, Wq});
        // The same rows seen head-major, (B, heads, L, D), as the attention and the caches take them.
        auto heads = [&](value_type* p, std::int64_t n_heads) {
            const std::int64_t W = n_heads * D;
            return tensor_ref<value_type, 4>(p, {B, n_heads, L, D}, {L * W, D, W, 1});
        };
        const tensor_ref<value_type, 4> qh = heads(q_.data(), Hq), kh = heads(k_.data(), Hkv),
                                        vh = heads(v_.data(), Hkv), ah = heads(a_.data(), Hq);
        const tensor_ref<const std::int32_t, 2> ids_view(image_ids_.data(), {B, L});
        const tensor_ref<const std::int32_t, 1> take_view(take.data(), {B});
        const tensor_ref<const std::int8_t, 2> types_view(row_type_.data(), {B, L});

        const nn::row_metadata meta{row_seq_.data(), row_pos_.data(), row_type_.data(), image_ids_.data(),
                                    row_valid_.data()};
        std::size_t block = 0;
        const float eps = static_cast<float>(config_.rms_norm_eps);
        attention_options ao = options_.attention;
        // Tiny attention calls (decode steps of small models) stay on the calling thread.
        ao.num_threads = double(N) * double(total_len) * double(Wq) < double(1 << 18) ? 1 : options_.num_threads;
        for (std::int64_t l = 0; l < config_.num_layers; ++l) {
            if (config_.cross_block_before(l)) {
                backend_.cross_block(h, tensor_ref<const float, 2>(inputs_.data(), {N, H}), meta,
                                     weights_.cross_blocks[block], Hq, Hkv, D, eps, options_.attention.visibility,
                                     stores_[block]);
                ++block;
            }
            const auto& w = backend_.layer(weights_, l);
            backend_.rmsnorm(h, w.attn_norm, eps, xn);
            backend_.linear(xn, w.q, w.q_bias, q);
            backend_.linear(xn, w.k, w.k_bias, k);
            backend_.linear(xn, w.v, w.v_bias, v);
            backend_.rope(qh);
            backend_.rope(kh);
            auto& cache = caches_[static_cast<std::size_t>(l)];
            backend_.append(cache, kh, vh, types_view, ids_view, take_view);
            backend_.attention(qh, cache, ao, options_.impl, ah);
            backend_.linear(a, w.o, w.o_bias, proj);
            backend_.add_rows(h, proj);
            backend_.rmsnorm(h, w.mlp_norm, eps, xn);
            backend_.swiglu(xn, w.mlp, proj);
            backend_.add_rows(h, proj);
        }

        if (mode == logits_mode::none) return;
        const auto& final_norm = backend_.final_norm(weights_);
        if (mode == logits_mode::all) {
            backend_.rmsnorm(h, final_norm, eps, xn);
            if (logits.strides[0] == L * logits.strides[1]) {
                // rows (b, i) -> b·L + i
                backend_.logits(xn, weights_, tensor_ref<float, 2>(logits.data, {N, V}, {logits.strides[1], 1}));
            } else {
                for (std::int64_t b = 0; b < B; ++b)
                    backend_.logits(tensor_ref<const value_type, 2>(xn.ptr(b * L), {L, H}), weights_,
                                    tensor_ref<float, 2>(logits.ptr(b), {L, V}, {logits.strides[1], 1}));
            }
            return;
        }
        // last: the final new row of each sequence (a zero row for a sequence without new tokens).
        last_index_.assign(static_cast<std::size_t>(B), -1);
        for (std::int64_t b = 0; b < B; ++b)
            if (take[b] > 0) last_index_[b] = b * L + take[b] - 1;
        last_rows_.resize(static_cast<std::size_t>(B * H));
        tensor_ref<value_type, 2> lr(last_rows_.data(), {B, H});
        backend_.gather_rows(h, last_index_, lr);
        backend_.rmsnorm(lr, final_norm, eps, lr);
        tensor_ref<float, 2> out(logits.data, {B, V}, {logits.strides[0], 1});
        backend_.logits(lr, weights_, out);
        for (std::int64_t b = 0; b < B; ++b)
            if (take[b] == 0) std::fill_n(out.ptr(b), V, 0.0f);
    }

    llama_config config_;
    llama_weights weights_;
    llama_model_options options_;
    Backend backend_;
    std::vector<cache_type> caches_;           // one per layer
    std::vector<nn::cross_kv_store> stores_;   // one per gated cross-attention block
    std::vector<std::int32_t> images_;         // (B) images numbered so far
    std::vector<std::int32_t> last_image_;     // (B) image id of the last cached token, -1 when it is no image
    // Scratch, reused across calls (sized for the largest call so far). Activations live where the
    // backend keeps them; the row metadata and the cross blocks' inputs stay on the host.
    buffer_type hidden_, xn_, proj_, q_, k_, v_, a_, last_rows_;
    std::vector<float> inputs_, token_embeddings_;
    std::vector<std::int8_t> token_types_, row_type_;
    std::vector<std::int64_t> row_seq_, row_pos_, last_index_;
    std::vector<std::int32_t> image_ids_;
    std::vector<std::uint8_t> row_valid_, row_update_;
    nn::rope_table rope_;
};

/// The decoder on the CPU with a KV cache of float, float16 or bfloat16.
template <class KV = float>
using llama_model = basic_llama_model<cpu::llama_backend<KV>>;

}  // namespace mmca
