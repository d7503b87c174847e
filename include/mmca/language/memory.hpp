// mmca/language/memory.hpp - what a model and its KV cache need, computed from the config alone.
//
//   auto m = mmca::estimate_llama_memory(mmca::llama2_7b_config(), mmca::dtype::bfloat16,
//                                        mmca::dtype::float32, /*batch=*/1, /*context=*/4096);
//   m.total_bytes()   // before anything is loaded or allocated
//
// Counts what llama_model holds: the weight matrices in their stored dtype (mapped, not copied),
// float32 copies of norm weights, the per-layer KV caches (plus their token metadata), and the
// float32 scratch of a forward call over `prefill_tokens` rows per sequence, and, when the config has
// gated cross-attention blocks, the image keys and values each block keeps (float32 K and V of width
// Hkv·D, a position and an image id per image token) for `image_tokens` image tokens per sequence
// (default: the whole context, the upper bound). Logits are the caller's buffer and are reported
// apart (one row per sequence for logits_mode::last, all rows for all).
#pragma once

#include "mmca/core/dtype.hpp"
#include "mmca/core/error.hpp"
#include "mmca/language/config.hpp"

#include <cstdint>

namespace mmca {

struct llama_memory_estimate {
    std::int64_t parameters = 0;           ///< number of weights (matrices, norms, cross blocks)
    std::int64_t weight_bytes = 0;         ///< weights in the stored dtype (the mapped checkpoint)
    std::int64_t norm_copy_bytes = 0;      ///< float32 copies of norm weights
    std::int64_t kv_cache_bytes = 0;       ///< K and V of every layer for batch × context tokens, plus metadata
    std::int64_t cross_kv_bytes = 0;       ///< image K and V of the cross-attention blocks (batch × image_tokens)
    std::int64_t activation_bytes = 0;     ///< scratch of one forward call of batch × prefill_tokens rows
    std::int64_t logits_last_bytes = 0;    ///< logits of one row per sequence (float32)
    std::int64_t logits_all_bytes = 0;     ///< logits of every prefill row (float32)

    /// Weights + caches + scratch + last-row logits: the resident size of a generating model.
    std::int64_t total_bytes() const {
        return weight_bytes + norm_copy_bytes + kv_cache_bytes + cross_kv_bytes + activation_bytes + logits_last_bytes;
    }
};

inline std::int64_t dtype_bytes(dtype t) { return t == dtype::float32 ? 4 : 2; }

/// Memory of a llama_model<KV> with weights stored as `weights` and a KV cache of dtype `kv`.
inline llama_memory_estimate estimate_llama_memory(const llama_config& c, dtype weights, dtype kv,
                                                   std::int64_t batch = 1, std::int64_t context = 0,
                                                   std::int64_t prefill_tokens = 512, std::int64_t image_tokens = -1) {
    const char* where = "mmca::estimate_llama_memory";
    c.validate(where);
    if (context == 0) context = c.max_positions;
    MMCA_CHECK_ARG(batch > 0, where, "batch", detail::to_text(batch), "a positive number");
    MMCA_CHECK_ARG(context > 0, where, "context", detail::to_text(context), "a positive number (0: max positions)");
    MMCA_CHECK_ARG(prefill_tokens > 0, where, "prefill_tokens", detail::to_text(prefill_tokens), "a positive number");
    if (image_tokens < 0) image_tokens = context;
    MMCA_CHECK_ARG(image_tokens <= context, where, "image_tokens", detail::to_text(image_tokens),
                   "at most the context (" + detail::to_text(context) + "; -1: the context)");
    const std::int64_t H = c.hidden_size, I = c.intermediate_size, V = c.vocab_size, D = c.head_dim();
    const std::int64_t Wq = c.num_heads * D, Wkv = c.num_kv_heads * D, Ic = c.cross_intermediate();
    const std::int64_t layer_matrices = Wq * H + 2 * Wkv * H + H * Wq + 3 * H * I;
    const std::int64_t cross_matrices = Wq * H + 2 * Wkv * H + H * Wq + 3 * H * Ic;
    const std::int64_t nc = c.num_cross_blocks();
    const std::int64_t matrices = V * H * (c.tie_word_embeddings ? 1 : 2) + c.num_layers * layer_matrices +
                                  nc * cross_matrices;
    const std::int64_t norms = H + c.num_layers * 2 * H + nc * (2 * H + 2);
    llama_memory_estimate m;
    m.parameters = matrices + norms;
    m.weight_bytes = (matrices + norms) * dtype_bytes(weights);
    m.norm_copy_bytes = norms * 4;
    // K and V (dtype kv) plus token type (1 byte) and image id (4 bytes) per cached position.
    m.kv_cache_bytes = c.num_layers * batch * context * (2 * Wkv * dtype_bytes(kv) + 5);
    // Cross-attention blocks: float32 K and V plus a position (8 bytes) and image id (4) per image token.
    m.cross_kv_bytes = nc * batch * image_tokens * (2 * Wkv * 4 + 12);
    const std::int64_t N = batch * prefill_tokens;
    // hidden, xn, proj (H each), q + qh + ah (Wq each), k, v, kh, vh (Wkv each), gate + up (I each),
    // plus the input copy when cross blocks exist, and RoPE cos/sin (D/2 each).
    std::int64_t floats_per_row = 3 * H + 3 * Wq + 4 * Wkv + 2 * std::max(I, nc ? Ic : 0) + D;
    if (nc) floats_per_row += H + H + Wq;
    m.activation_bytes = N * floats_per_row * 4;
    m.logits_last_bytes = batch * V * 4;
    m.logits_all_bytes = N * V * 4;
    return m;
}

}  // namespace mmca
