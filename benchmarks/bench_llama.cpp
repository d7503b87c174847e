// benchmarks/bench_llama.cpp - prefill and decode speed of a LLaMa-2-7B-shaped layer stack.
//
//   bench_llama [--layers 2] [--prefill 512] [--decode 16] [--threads 1,2] [--dtype f32,bf16]
//
// Builds `layers` decoder layers of LLaMa-2 7B's shape (H 4096, 32 heads × 128, SwiGLU 11008) with
// random weights stored as float32 or bfloat16, and measures in the same run:
//   * the FMA peak of the machine (register-only FMA chains, per thread count) and the read
//     bandwidth of memory (summing a 1 GiB buffer);
//   * prefill: one forward call over `prefill` tokens (logits off), per layer; the GEMM share is
//     compared with the FMA peak (FLOPs = 2 · tokens · weights of the layer's matrices);
//   * decode: single-token steps on top of the prefilled cache, per layer; compared with
//     (weight bytes of a layer) / (measured bandwidth), the time just to stream its weights once.
// A full 32-layer model is extrapolated as 32 × per-layer time + the lm_head product (measured
// separately as a [32000, 4096] linear of the same dtype). Timings are medians of repeats.
//
//   bench_llama --checkpoint DIR [--prompt 32] [--decode 8] [--context 512] [--threads 2]
//
// instead loads a real checkpoint (memory-mapped, weights used in place; KV cache bf16), prefills a
// prompt, decodes greedily, and prints the times, the memory estimate and the peak RSS.
#include "mmca/io/llama_loader.hpp"
#include "mmca/language/generation.hpp"
#include "mmca/language/memory.hpp"
#include "mmca/language/model.hpp"
#include "mmca/nn/linear.hpp"

#include "fma_peak.hpp"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include <sys/resource.h>

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#endif
#if defined(_OPENMP)
#include <omp.h>
#endif

namespace {

using clock_type = std::chrono::steady_clock;

double seconds_since(clock_type::time_point t0) {
    return std::chrono::duration<double>(clock_type::now() - t0).count();
}

double median(std::vector<double> v) {
    std::sort(v.begin(), v.end());
    return v[v.size() / 2];
}

std::vector<std::string> split(const std::string& s) {
    std::vector<std::string> out;
    std::size_t a = 0;
    while (a <= s.size()) {
        const std::size_t b = s.find(',', a);
        out.push_back(s.substr(a, b == std::string::npos ? std::string::npos : b - a));
        if (b == std::string::npos) break;
        a = b + 1;
    }
    return out;
}

using mmca_bench::fma_peak;

/// GB/s reading a 1 GiB buffer (sum of floats) on `threads` threads.
double read_bandwidth(int threads, std::vector<float>& buf) {
    std::vector<double> times;
    for (int rep = 0; rep < 5; ++rep) {
        const auto t0 = clock_type::now();
        double total = 0;
        const std::int64_t n = static_cast<std::int64_t>(buf.size());
#pragma omp parallel for num_threads(threads) reduction(+ : total) schedule(static)
        for (std::int64_t i = 0; i < n; i += 8) {
            float s = 0;
            for (int j = 0; j < 8; ++j) s += buf[i + j];
            total += s;
        }
        times.push_back(seconds_since(t0));
        if (total == 1.2345) std::printf(" ");
    }
    return double(buf.size()) * 4 / median(times) / 1e9;
}

template <class W>
struct random_stack {
    std::vector<std::vector<W>> blobs;  // storage of every matrix
    mmca::llama_weights weights;

    random_stack(const mmca::llama_config& c) {
        std::uint64_t state = 88172645463325252ull;
        auto fill = [&](std::int64_t rows, std::int64_t cols, float scale) {
            blobs.emplace_back(static_cast<std::size_t>(rows * cols));
            auto& b = blobs.back();
            for (auto& x : b) {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                x = W(scale * (float(state >> 40) / float(1 << 24) - 0.5f));
            }
            return mmca::nn::make_matrix<W>(b.data(), rows, cols);
        };
        const std::int64_t H = c.hidden_size, I = c.intermediate_size, V = c.vocab_size;
        weights.lm_head = fill(V, H, 0.05f);
        weights.embed = weights.lm_head;  // the benchmark passes embeddings; the table is only checked
        weights.norm.assign(static_cast<std::size_t>(H), 1.0f);
        weights.layers.resize(static_cast<std::size_t>(c.num_layers));
        for (auto& L : weights.layers) {
            L.attn_norm.assign(static_cast<std::size_t>(H), 1.0f);
            L.mlp_norm.assign(static_cast<std::size_t>(H), 1.0f);
            L.q = fill(H, H, 0.05f);
            L.k = fill(H, H, 0.05f);
            L.v = fill(H, H, 0.05f);
            L.o = fill(H, H, 0.05f);
            L.mlp.gate = fill(I, H, 0.05f);
            L.mlp.up = fill(I, H, 0.05f);
            L.mlp.down = fill(H, I, 0.05f);
        }
    }
};

struct result_row {
    std::string dtype;
    int threads;
    double prefill_layer_s, prefill_tok_s, gemm_gflops, decode_layer_s, stream_layer_s, lm_head_s;
};

template <class W>
result_row bench(const mmca::llama_config& c, int threads, std::int64_t prefill, std::int64_t decode, double peak,
                 double bw_gbs, const char* name) {
    random_stack<W> stack(c);
    const std::int64_t H = c.hidden_size;
    mmca::llama_model_options o;
    o.attention.variant = mmca::attention_variant::causal;
    o.context = prefill + decode + 1;
    o.num_threads = threads;
    mmca::llama_model<float> model(c, stack.weights, o);
    std::vector<float> e(static_cast<std::size_t>(prefill * H));
    for (std::size_t i = 0; i < e.size(); ++i) e[i] = float((i * 2654435761u) % 1000) / 1000.0f - 0.5f;
    std::vector<std::int8_t> types(static_cast<std::size_t>(prefill), 1);
    std::vector<double> pre;
    for (int rep = 0; rep < 2; ++rep) {
        model.reset();
        const auto t0 = clock_type::now();
        model.forward(mmca::tensor_ref<const float, 3>(e.data(), {1, prefill, H}),
                      mmca::tensor_ref<const std::int8_t, 2>(types.data(), {1, prefill}), {}, {}, {},
                      mmca::logits_mode::none);
        pre.push_back(seconds_since(t0));
    }
    std::vector<double> dec;
    for (std::int64_t s = 0; s < decode; ++s) {
        const auto t0 = clock_type::now();
        model.forward(mmca::tensor_ref<const float, 3>(e.data() + s * H, {1, 1, H}),
                      mmca::tensor_ref<const std::int8_t, 2>(types.data(), {1, 1}), {}, {}, {}, mmca::logits_mode::none);
        dec.push_back(seconds_since(t0));
    }
    // lm_head [32000, 4096] for one token, same dtype.
    std::vector<float> x(static_cast<std::size_t>(H), 0.5f), y(static_cast<std::size_t>(c.vocab_size));
    std::vector<double> lm;
    for (int rep = 0; rep < 5; ++rep) {
        const auto t0 = clock_type::now();
        mmca::nn::linear_forward(mmca::tensor_ref<const float, 2>(x.data(), {1, H}),
                                 stack.weights.lm_head, nullptr,
                                 mmca::tensor_ref<float, 2>(y.data(), {1, c.vocab_size}), threads);
        lm.push_back(seconds_since(t0));
    }
    const double layers = double(c.num_layers);
    const double matrices = 4.0 * H * H + 3.0 * H * c.intermediate_size;  // per layer (7B: MHA, q=k=v=o=H×H)
    result_row r;
    r.dtype = name;
    r.threads = threads;
    r.prefill_layer_s = median(pre) / layers;
    r.prefill_tok_s = double(prefill) / (r.prefill_layer_s * 32 + 0.0);
    r.gemm_gflops = 2.0 * prefill * matrices / r.prefill_layer_s / 1e9;
    r.decode_layer_s = median(dec) / layers;
    r.stream_layer_s = matrices * sizeof(W) / (bw_gbs * 1e9);
    r.lm_head_s = median(lm);
    std::printf("%-5s threads %d: prefill %.3f s/layer (%.1f GFLOP/s = %.0f%% of FMA peak %.0f), "
                "decode %.2f ms/layer (weights stream in %.2f ms: ratio %.2f), lm_head %.2f ms\n",
                name, threads, r.prefill_layer_s, r.gemm_gflops, 100 * r.gemm_gflops / peak, peak,
                r.decode_layer_s * 1e3, r.stream_layer_s * 1e3, r.decode_layer_s / r.stream_layer_s, r.lm_head_s * 1e3);
    std::fflush(stdout);
    return r;
}

double peak_rss_gib() {
    struct rusage ru {};
    getrusage(RUSAGE_SELF, &ru);
    return double(ru.ru_maxrss) / (1024.0 * 1024.0);  // ru_maxrss is in KiB on Linux
}

int run_checkpoint(const std::string& dir, std::int64_t prompt, std::int64_t decode, std::int64_t context, int threads) {
    mmca::llama_model_options o;
    o.context = context;
    o.num_threads = threads;
    o.attention.variant = mmca::attention_variant::causal;
    auto t0 = clock_type::now();
    auto model = mmca::io::load_llama_model<mmca::bfloat16>(dir, o);
    const double load_s = seconds_since(t0);
    const auto& c = model.config();
    const auto est = mmca::estimate_llama_memory(c, model.weights().layers[0].q.type, mmca::dtype::bfloat16, 1, context,
                                                 prompt);
    std::printf("loaded %s in %.2f s (%lld layers, weights %s); estimate: weights %.2f GiB + KV %.2f GiB + scratch %.2f GiB"
                " = %.2f GiB; RSS after load %.2f GiB\n",
                dir.c_str(), load_s, (long long)c.num_layers, mmca::dtype_name(model.weights().layers[0].q.type),
                est.weight_bytes / 1073741824.0, est.kv_cache_bytes / 1073741824.0, est.activation_bytes / 1073741824.0,
                est.total_bytes() / 1073741824.0, peak_rss_gib());
    mmca::generator<mmca::bfloat16> gen(model);
    std::vector<std::int32_t> ids(static_cast<std::size_t>(prompt));
    for (std::int64_t i = 0; i < prompt; ++i) ids[i] = static_cast<std::int32_t>(1 + (i * 7919) % (c.vocab_size - 1));
    mmca::generation_options g;
    g.max_new_tokens = 1;
    g.eos_ids = {-1};
    t0 = clock_type::now();
    gen.round(ids, g);  // prefill + the first token
    const double prefill_s = seconds_since(t0);
    g.max_new_tokens = decode;
    t0 = clock_type::now();
    const auto r = gen.round({}, g);
    const double decode_s = seconds_since(t0);
    std::printf("prefill %lld tokens: %.2f s (%.1f tok/s); decode %zu tokens: %.2f s (%.2f tok/s); peak RSS %.2f GiB\n",
                (long long)prompt, prefill_s, prompt / prefill_s, r.tokens.size(), decode_s, r.tokens.size() / decode_s,
                peak_rss_gib());
    return 0;
}

}  // namespace

int main(int argc, char** argv) {
    std::int64_t layers = 2, prefill = 512, decode = 16;
    std::string threads_arg = "1,2", dtype_arg = "f32,bf16", checkpoint;
    std::int64_t prompt = 32, context = 512;
    for (int i = 1; i + 1 < argc; i += 2) {
        const std::string a = argv[i], v = argv[i + 1];
        if (a == "--layers") layers = std::atoll(v.c_str());
        else if (a == "--prefill") prefill = std::atoll(v.c_str());
        else if (a == "--decode") decode = std::atoll(v.c_str());
        else if (a == "--threads") threads_arg = v;
        else if (a == "--dtype") dtype_arg = v;
        else if (a == "--checkpoint") checkpoint = v;
        else if (a == "--prompt") prompt = std::atoll(v.c_str());
        else if (a == "--context") context = std::atoll(v.c_str());
        else {
            std::fprintf(stderr, "unknown option %s\n", a.c_str());
            return 2;
        }
    }
    if (!checkpoint.empty()) return run_checkpoint(checkpoint, prompt, decode, context, std::atoi(threads_arg.c_str()));
    mmca::llama_config c = mmca::llama_config{};  // LLaMa-2 7B
    c.num_layers = layers;
    std::printf("LLaMa-2-7B-shaped stack: %lld layers, prefill %lld tokens, %lld decode steps\n", (long long)layers,
                (long long)prefill, (long long)decode);
    std::vector<float> buf(std::size_t(1) << 28, 1.0f);  // 1 GiB
    std::vector<result_row> rows;
    for (const auto& ts : split(threads_arg)) {
        const int t = std::atoi(ts.c_str());
        const double peak = fma_peak(t), bw = read_bandwidth(t, buf);
        std::printf("threads %d: FMA peak %.0f GFLOP/s, read bandwidth %.1f GB/s\n", t, peak, bw);
        for (const auto& d : split(dtype_arg)) {
            if (d == "f32") rows.push_back(bench<float>(c, t, prefill, decode, peak, bw, "f32"));
            if (d == "bf16") rows.push_back(bench<mmca::bfloat16>(c, t, prefill, decode, peak, bw, "bf16"));
        }
    }
    std::printf("\n| weights | threads | prefill s/layer | prefill GFLOP/s | decode ms/layer | weight-stream ms/layer | "
                "decode / stream | 32-layer prefill tok/s | 32-layer decode tok/s |\n|---|---|---|---|---|---|---|---|---|\n");
    for (const auto& r : rows)
        std::printf("| %s | %d | %.3f | %.1f | %.2f | %.2f | %.2f | %.1f | %.2f |\n", r.dtype.c_str(), r.threads,
                    r.prefill_layer_s, r.gemm_gflops, r.decode_layer_s * 1e3, r.stream_layer_s * 1e3,
                    r.decode_layer_s / r.stream_layer_s, double(prefill) / (32 * r.prefill_layer_s),
                    1.0 / (32 * r.decode_layer_s + r.lm_head_s));
    return 0;
}
