// benchmarks/bench_attention.cpp - timing of mmca attention (Google Benchmark).
//
// Families (names are what --benchmark_filter matches; benchmarks/make_tables.py parses them):
//   prefill/<variant>/<impl>/<layout>/S:<S>/threads:<t>    B1 H32 D128, Lq = Lk = S, f32 K/V
//   decode/<variant>/<dtype>/<layout>/Lk:4096/threads:<t>  one new text token (Lq = 1) over a kv_cache
//                                                          holding 4096 tokens, H32 D128
//   kv_read/<dtype>/Lk:4096/threads:<t>                    one streaming pass over buffers the size of
//                                                          that cache's K and V (the floor of a decode step)
//   fma_peak/threads:<t>                                   register-only FMA loop: the core's fp32 peak
//   backward/<variant>/<layout>/S:<S>/threads:<t>          one fused attention_backward call (dq, dk, dv
//                                                          from the forward's stats), B1 H32 D128, S <= 2048
//
// Layouts (token types of the S positions, periodic, starting with an image):
//   text    every token is text
//   chat    256 image + 192 text tokens, repeated
//   image   256 image + 64 text tokens, repeated ("image-heavy")
// causal_cross runs with image_visibility::preceding. The reference (double-precision oracle,
// O(H·S²·D) with no tiling) is registered only for S <= 1024.
//
// Counters: GFLOPS counts useful work only: 4·D flops (one multiply-add for Q·Kᵀ, one for P·V) per
// (row, key) pair that has non-zero weight in the variant, summed over heads. The pair count comes
// from mmca::build_explicit_masks on the benchmarked token pattern, once per benchmark, outside
// the timed loop. The backward counts 10·D flops per such pair (the five products S, dP, dV, dK,
// dQ; the usual 2.5 times the forward), whatever it recomputes. Decode and kv_read report bytes_per_second over the K and V bytes of the cache.
// Each decode step is paired with an untimed streaming pass over its cache's K and V bytes:
// counters read_seconds (mean time of that pass) and vs_read (decode time / read time, summed
// over the iterations), a ratio that machine-wide memory traffic moves much less than either time.
#include <mmca/attention/attention_backward.hpp>
#include <mmca/mmca.hpp>

#include <benchmark/benchmark.h>

#if defined(_OPENMP)
#include <omp.h>
#endif
#if defined(__FMA__) || defined(__AVX512F__)
#include <immintrin.h>
#endif

#include <array>
#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <tuple>
#include <vector>

namespace {

constexpr std::int64_t kHeads = 32;      // H (query heads = kv heads, as in LLaMa-2 7B)
constexpr std::int64_t kHeadDim = 128;   // D
constexpr std::int64_t kDecodeLen = 4096;  // Lk of the decode benchmarks

// ---------------------------------------------------------------------------------------------
// Token layouts

enum class layout_kind { text, chat, image };

const char* layout_name(layout_kind l) {
    switch (l) {
        case layout_kind::text: return "text";
        case layout_kind::chat: return "chat";
        case layout_kind::image: return "image";
    }
    return "unknown";
}

/// Token types of positions [0, S): periodic blocks of 256 image tokens followed by text.
std::vector<std::int8_t> make_types(layout_kind layout, std::int64_t S) {
    const std::int8_t text = static_cast<std::int8_t>(mmca::token_type::text);
    const std::int8_t image = static_cast<std::int8_t>(mmca::token_type::image);
    std::vector<std::int8_t> types(static_cast<std::size_t>(S), text);
    if (layout == layout_kind::text) return types;
    const std::int64_t image_tokens = 256;
    const std::int64_t text_tokens = layout == layout_kind::chat ? 192 : 64;
    const std::int64_t period = image_tokens + text_tokens;
    for (std::int64_t i = 0; i < S; ++i) types[i] = (i % period) < image_tokens ? image : text;
    return types;
}

const char* dtype_label(mmca::dtype t) {
    switch (t) {
        case mmca::dtype::float32: return "f32";
        case mmca::dtype::float16: return "f16";
        case mmca::dtype::bfloat16: return "bf16";
    }
    return "unknown";
}

// ---------------------------------------------------------------------------------------------
// Inputs, made once per shape and shared by the benchmarks that use it

/// Fills n floats with uniform values in [-1, 1) from a fixed-seed xorshift generator.
void fill_uniform(float* dst, std::int64_t n, std::uint64_t seed) {
    std::uint64_t x = seed * 0x9E3779B97F4A7C15ull + 1;
    for (std::int64_t i = 0; i < n; ++i) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        dst[i] = static_cast<float>(static_cast<double>(x >> 11) * (2.0 / 9007199254740992.0) - 1.0);
    }
}

mmca::tensor<float, 4> random_tensor(std::int64_t heads, std::int64_t len, std::uint64_t seed) {
    mmca::tensor<float, 4> t(std::array<std::size_t, 4>{1, static_cast<std::size_t>(heads),
                                                       static_cast<std::size_t>(len), static_cast<std::size_t>(kHeadDim)});
    fill_uniform(t.data(), static_cast<std::int64_t>(t.size()), seed);
    return t;
}

/// q, k, v (1, H, S, D) and an output buffer for one sequence length.
struct prefill_inputs {
    mmca::tensor<float, 4> q, k, v, out;
    explicit prefill_inputs(std::int64_t S)
        : q(random_tensor(kHeads, S, 1)), k(random_tensor(kHeads, S, 2)), v(random_tensor(kHeads, S, 3)),
          out(random_tensor(kHeads, S, 4)) {}
};

prefill_inputs& inputs_for(std::int64_t S) {
    static std::map<std::int64_t, std::unique_ptr<prefill_inputs>> cache;
    auto& slot = cache[S];
    if (!slot) slot = std::make_unique<prefill_inputs>(S);
    return *slot;
}

mmca::attention_options options_for(mmca::attention_variant variant, int threads) {
    mmca::attention_options o;
    o.variant = variant;
    o.visibility = mmca::image_visibility::preceding;  // causal_cross policy
    o.num_threads = threads;
    return o;
}

/// Number of (row, key) pairs with non-zero weight (in either key group) of a checked problem
/// with one sequence: what the useful-FLOP counters count.
std::int64_t useful_pairs(const mmca::attention_problem& p) {
    const mmca::explicit_masks m = mmca::build_explicit_masks(p, 0);
    std::int64_t pairs = 0;
    for (std::size_t e = 0; e < m.group[0].size(); ++e)
        pairs += m.group[0][e] != mmca::mask_entry::excluded || m.group[1][e] != mmca::mask_entry::excluded;
    return pairs;
}

/// Pair counts are a property of (variant, layout, S) and are shared by impls and thread counts.
std::int64_t prefill_pairs(mmca::attention_variant variant, layout_kind layout, std::int64_t S,
                           const mmca::attention_problem& p) {
    static std::map<std::tuple<int, int, std::int64_t>, std::int64_t> counts;
    const auto key = std::make_tuple(static_cast<int>(variant), static_cast<int>(layout), S);
    auto it = counts.find(key);
    if (it == counts.end()) it = counts.emplace(key, useful_pairs(p)).first;
    return it->second;
}

/// flops_per_dim: flops per (row, key) pair and per head dimension (4 for a forward, 10 for a backward).
void set_flop_counters(benchmark::State& state, std::int64_t pairs, double flops_per_dim = 4.0) {
    const double gflop = flops_per_dim * static_cast<double>(kHeadDim) * static_cast<double>(kHeads) *
                         static_cast<double>(pairs) * 1e-9;
    state.counters["GFLOPS"] = benchmark::Counter(gflop, benchmark::Counter::kIsIterationInvariantRate);
    state.counters["useful_GFLOP"] = gflop;
}

/// Runs the reference with a given OpenMP thread count (it parallelises over heads with the default).
class omp_threads_scope {
public:
    explicit omp_threads_scope(int threads) {
#if defined(_OPENMP)
        previous_ = omp_get_max_threads();
        omp_set_num_threads(threads);
#else
        (void)threads;
#endif
    }
    ~omp_threads_scope() {
#if defined(_OPENMP)
        omp_set_num_threads(previous_);
#endif
    }
    omp_threads_scope(const omp_threads_scope&) = delete;
    omp_threads_scope& operator=(const omp_threads_scope&) = delete;

private:
    int previous_ = 1;
};

/// One sequence of S tokens of a layout with the shared inputs of that length, the options of a
/// variant and thread count, and its checked problem; sets the benchmark's flop counters.
struct sequence_case {
    prefill_inputs& in;
    const std::vector<std::int8_t> types;
    mmca::token_layout tokens;
    const mmca::attention_options options;
    const mmca::tensor_ref<const float, 4> q, k, v;
    const mmca::tensor_ref<float, 4> out;

    sequence_case(benchmark::State& state, mmca::attention_variant variant, layout_kind layout, std::int64_t S,
                  int threads, double flops_per_dim = 4.0)
        : in(inputs_for(S)), types(make_types(layout, S)), options(options_for(variant, threads)), q(in.q), k(in.k),
          v(in.v), out(in.out) {
        tokens.types = mmca::tensor_ref<const std::int8_t, 2>(types.data(), {1, S});
        const mmca::attention_problem p = mmca::make_attention_problem("bench", q, k, v, tokens, options, out);
        set_flop_counters(state, prefill_pairs(variant, layout, S, p), flops_per_dim);
    }
    sequence_case(const sequence_case&) = delete;  // tokens points into types
    sequence_case& operator=(const sequence_case&) = delete;
};

// ---------------------------------------------------------------------------------------------
// prefill

void bm_prefill(benchmark::State& state, mmca::attention_variant variant, mmca::attention_impl impl,
                layout_kind layout, std::int64_t S, int threads) {
    const sequence_case c(state, variant, layout, S, threads);

    omp_threads_scope scope(threads);
    for (auto _ : state) {
        mmca::attention_forward<float>(c.q, c.k, c.v, c.tokens, c.options, c.out, impl);
        benchmark::DoNotOptimize(c.in.out.data());
        benchmark::ClobberMemory();
    }
}

// ---------------------------------------------------------------------------------------------
// backward: dq, dk, dv of one fused call, from the stats of a forward made outside the timed loop

void bm_backward(benchmark::State& state, mmca::attention_variant variant, layout_kind layout, std::int64_t S,
                 int threads) {
    const sequence_case c(state, variant, layout, S, threads, 10.0);
    const mmca::attention_forward_result fwd = mmca::attention_with_stats(c.q, c.k, c.v, c.tokens, c.options);
    const mmca::tensor<float, 4> dout = random_tensor(kHeads, S, 5);
    mmca::tensor<float, 4> dq = random_tensor(kHeads, S, 6), dk = random_tensor(kHeads, S, 7),
                           dv = random_tensor(kHeads, S, 8);
    for (auto _ : state) {
        mmca::attention_backward(c.q, c.k, c.v, mmca::tensor_ref<const float, 4>(dout), c.tokens, c.options, fwd.stats(),
                                 mmca::tensor_ref<float, 4>(dq), mmca::tensor_ref<float, 4>(dk),
                                 mmca::tensor_ref<float, 4>(dv));
        benchmark::DoNotOptimize(dq.data());
        benchmark::ClobberMemory();
    }
}

/// Sum of a[i] + b[i] over [0, n): the fastest way found on the benchmark machines to read two
/// buffers once. Each thread takes a contiguous share of both and reads it as four streams (the two
/// halves of its part of a and of b), one cache line of each per step. On the 2-core Zen 3 machine
/// this reads 15-25% faster than the same share as two streams (a and b in order), which is what a
/// decode step sees; docs/benchmarks.md has the measurements. 16 partial sums per stream pair keep
/// the loop bound by memory rather than by the latency of one accumulator.
float stream_sum(const float* a, const float* b, std::int64_t n, int threads) {
    constexpr std::int64_t line = 16;  // floats per 64-byte cache line
    const std::int64_t lines = n / line;
    float total = 0.0f;
#if defined(_OPENMP)
#pragma omp parallel num_threads(threads) reduction(+ : total)
#endif
    {
#if defined(_OPENMP)
        const std::int64_t t = omp_get_thread_num(), T = omp_get_num_threads();
#else
        const std::int64_t t = 0, T = 1;
#endif
        const std::int64_t begin = lines * t / T, end = lines * (t + 1) / T, half = (end - begin) / 2;
        float acc[line] = {};
        const float* a0 = a + begin * line;
        const float* a1 = a0 + half * line;
        const float* b0 = b + begin * line;
        const float* b1 = b0 + half * line;
        for (std::int64_t i = 0; i < half * line; i += line)
            for (std::int64_t j = 0; j < line; ++j) acc[j] += (a0[i + j] + a1[i + j]) + (b0[i + j] + b1[i + j]);
        for (std::int64_t i = (begin + 2 * half) * line; i < end * line; ++i) acc[0] += a[i] + b[i];
        for (std::int64_t j = 0; j < line; ++j) total += acc[j];
    }
    (void)threads;
    for (std::int64_t i = lines * line; i < n; ++i) total += a[i] + b[i];
    return total;
}

// ---------------------------------------------------------------------------------------------
// decode: Lq = 1 over a kv_cache of kDecodeLen tokens

/// A filled cache whose latest append is one text token, and that token's query.
template <class T>
struct decode_state {
    mmca::kv_cache<T> cache{1, kHeads, kDecodeLen, kHeadDim};
    mmca::tensor<float, 4> q = random_tensor(kHeads, 1, 11);
    mmca::tensor<float, 4> out = random_tensor(kHeads, 1, 12);

    explicit decode_state(layout_kind layout) {
        const std::int64_t prompt = kDecodeLen - 1;
        std::vector<std::int8_t> types = make_types(layout, prompt);
        {
            mmca::tensor<float, 4> k = random_tensor(kHeads, prompt, 13), v = random_tensor(kHeads, prompt, 14);
            cache.append(mmca::tensor_ref<const float, 4>(k), mmca::tensor_ref<const float, 4>(v),
                         mmca::tensor_ref<const std::int8_t, 2>(types.data(), {1, prompt}));
        }
        mmca::tensor<float, 4> k = random_tensor(kHeads, 1, 15), v = random_tensor(kHeads, 1, 16);
        const std::int8_t text = static_cast<std::int8_t>(mmca::token_type::text);
        cache.append(mmca::tensor_ref<const float, 4>(k), mmca::tensor_ref<const float, 4>(v),
                     mmca::tensor_ref<const std::int8_t, 2>(&text, {1, 1}));
    }
};

/// Holds one decode_state at a time (a cache is up to 128 MiB); rebuilt when the benchmark
/// asks for another layout or storage type.
template <class T>
decode_state<T>& decode_state_for(layout_kind layout) {
    static std::unique_ptr<decode_state<T>> state;
    static layout_kind current = layout_kind::text;
    if (!state || current != layout) {
        state.reset();
        state = std::make_unique<decode_state<T>>(layout);
        current = layout;
    }
    return *state;
}

std::int64_t kv_bytes(mmca::dtype t) {
    const std::int64_t element = t == mmca::dtype::float32 ? 4 : 2;
    return 2 * kHeads * kDecodeLen * kHeadDim * element;
}

template <class T>
void bm_decode(benchmark::State& state, mmca::attention_variant variant, layout_kind layout, int threads) {
    decode_state<T>& d = decode_state_for<T>(layout);
    const mmca::attention_options options = options_for(variant, threads);
    const mmca::tensor_ref<const float, 4> q(d.q);
    const mmca::tensor_ref<float, 4> out(d.out);

    const mmca::attention_problem p = mmca::make_attention_problem(
        "bench", q, d.cache.keys(), d.cache.values(), d.cache.tokens(), options, out);
    set_flop_counters(state, useful_pairs(p));

    // Each timed decode step is followed by an untimed streaming pass over the same cache bytes
    // (stream_sum, as kv_read), so that the floor is measured right beside the step it bounds, under
    // the same memory traffic from the rest of the machine.
    const std::int64_t floats = kv_bytes(mmca::dtype_of<T>::value) / 2 / static_cast<std::int64_t>(sizeof(float));
    const auto* keys = reinterpret_cast<const float*>(d.cache.keys().ptr(0, 0, 0));
    const auto* values = reinterpret_cast<const float*>(d.cache.values().ptr(0, 0, 0));
    using clock = std::chrono::steady_clock;
    double decode_seconds = 0.0, read_seconds = 0.0;
    for (auto _ : state) {
        const auto t0 = clock::now();
        mmca::attention_forward(q, d.cache, options, out);
        benchmark::DoNotOptimize(d.out.data());
        benchmark::ClobberMemory();
        const auto t1 = clock::now();
        benchmark::DoNotOptimize(stream_sum(keys, values, floats, threads));
        const auto t2 = clock::now();
        const double step = std::chrono::duration<double>(t1 - t0).count();
        decode_seconds += step;
        read_seconds += std::chrono::duration<double>(t2 - t1).count();
        state.SetIterationTime(step);
    }
    state.SetBytesProcessed(static_cast<std::int64_t>(state.iterations()) * kv_bytes(mmca::dtype_of<T>::value));
    state.counters["read_seconds"] = read_seconds / static_cast<double>(state.iterations());
    state.counters["vs_read"] = decode_seconds / read_seconds;
}

// ---------------------------------------------------------------------------------------------
// kv_read: one pass over two buffers of the size of a decode cache's K and V

void bm_kv_read(benchmark::State& state, mmca::dtype t, int threads) {
    const std::int64_t n = kv_bytes(t) / 2 / static_cast<std::int64_t>(sizeof(float));  // floats per buffer
    std::vector<float> a(static_cast<std::size_t>(n)), b(static_cast<std::size_t>(n));
    fill_uniform(a.data(), n, 21);
    fill_uniform(b.data(), n, 22);
    for (auto _ : state) benchmark::DoNotOptimize(stream_sum(a.data(), b.data(), n, threads));
    state.SetBytesProcessed(static_cast<std::int64_t>(state.iterations()) * kv_bytes(t));
}

// ---------------------------------------------------------------------------------------------
// fma_peak: fp32 fused multiply-adds from registers, the ceiling for the GFLOPS counters

/// Runs `iterations` rounds of 10 independent vector FMAs; returns the flops done.
double fma_loop(std::int64_t iterations, float* sink) {
#if defined(__AVX512F__)
    using vec = __m512;
    constexpr int width = 16;
    auto set1 = [](float x) { return _mm512_set1_ps(x); };
    auto fma = [](vec a, vec b, vec c) { return _mm512_fmadd_ps(a, b, c); };
    auto reduce = [](vec a) { return _mm512_reduce_add_ps(a); };
#elif defined(__FMA__)
    using vec = __m256;
    constexpr int width = 8;
    auto set1 = [](float x) { return _mm256_set1_ps(x); };
    auto fma = [](vec a, vec b, vec c) { return _mm256_fmadd_ps(a, b, c); };
    auto reduce = [](vec a) {
        alignas(32) float t[8];
        _mm256_store_ps(t, a);
        return t[0] + t[1] + t[2] + t[3] + t[4] + t[5] + t[6] + t[7];
    };
#else
    using vec = float;
    constexpr int width = 1;
    auto set1 = [](float x) { return x; };
    auto fma = [](vec a, vec b, vec c) { return a * b + c; };
    auto reduce = [](vec a) { return a; };
#endif
    constexpr int chains = 10;  // FMA latency (4) x ports (2), plus slack
    vec acc[chains];
    for (int c = 0; c < chains; ++c) acc[c] = set1(0.01f * static_cast<float>(c));
    const vec mul = set1(0.999999f), add = set1(1e-6f);
    for (std::int64_t i = 0; i < iterations; ++i)
        for (int c = 0; c < chains; ++c) acc[c] = fma(acc[c], mul, add);
    float s = 0.0f;
    for (int c = 0; c < chains; ++c) s += reduce(acc[c]);
    *sink = s;
    return 2.0 * width * chains * static_cast<double>(iterations);
}

void bm_fma_peak(benchmark::State& state, int threads) {
    constexpr std::int64_t iterations = 1 << 22;
    double flops = 0.0;
    for (auto _ : state) {
        float sink[8] = {};
        double done = 0.0;
#if defined(_OPENMP)
#pragma omp parallel num_threads(threads) reduction(+ : done)
        done += fma_loop(iterations, &sink[omp_get_thread_num() % 8]);
#else
        done = fma_loop(iterations, &sink[0]);
#endif
        benchmark::DoNotOptimize(sink);
        flops = done;
    }
    state.counters["GFLOPS"] = benchmark::Counter(flops * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
}

// ---------------------------------------------------------------------------------------------
// Registration

void register_all() {
    using mmca::attention_variant;
    const attention_variant variants[] = {attention_variant::causal, attention_variant::mmca,
                                          attention_variant::mmca_reference, attention_variant::causal_cross};
    const layout_kind layouts[] = {layout_kind::text, layout_kind::chat, layout_kind::image};
    const std::int64_t lengths[] = {512, 1024, 2048, 4096};
    const int thread_counts[] = {1, 2};

    for (int threads : thread_counts)
        benchmark::RegisterBenchmark(("fma_peak/threads:" + std::to_string(threads)).c_str(), bm_fma_peak, threads)
            ->UseRealTime()
            ->MinTime(0.2)
            ->Unit(benchmark::kMillisecond);

    for (attention_variant variant : variants)
        for (mmca::attention_impl impl : {mmca::attention_impl::fused, mmca::attention_impl::reference})
            for (layout_kind layout : layouts)
                for (std::int64_t S : lengths)
                    for (int threads : thread_counts) {
                        const bool reference = impl == mmca::attention_impl::reference;
                        if (reference && S > 1024) continue;  // the oracle takes minutes beyond this
                        const std::string name = std::string("prefill/") + mmca::to_string(variant) + "/" +
                                                 mmca::to_string(impl) + "/" + layout_name(layout) +
                                                 "/S:" + std::to_string(S) + "/threads:" + std::to_string(threads);
                        benchmark::RegisterBenchmark(name.c_str(), bm_prefill, variant, impl, layout, S, threads)
                            ->UseRealTime()
                            ->MinTime(reference ? 0.01 : 0.5)  // one iteration of the reference is seconds
                            ->Unit(benchmark::kMillisecond);
                    }

    for (attention_variant variant : variants)
        for (layout_kind layout : layouts)
            for (std::int64_t S : lengths)
                for (int threads : thread_counts) {
                    if (S > 2048) continue;
                    const std::string name = std::string("backward/") + mmca::to_string(variant) + "/" +
                                             layout_name(layout) + "/S:" + std::to_string(S) +
                                             "/threads:" + std::to_string(threads);
                    benchmark::RegisterBenchmark(name.c_str(), bm_backward, variant, layout, S, threads)
                        ->UseRealTime()
                        ->MinTime(0.5)
                        ->Unit(benchmark::kMillisecond);
                }

    auto register_decode = [&](auto tag, mmca::dtype t) {
        using T = decltype(tag);
        for (layout_kind layout : layouts)
            for (attention_variant variant : variants)
                for (int threads : thread_counts) {
                    const std::string name = std::string("decode/") + mmca::to_string(variant) + "/" + dtype_label(t) +
                                             "/" + layout_name(layout) + "/Lk:" + std::to_string(kDecodeLen) +
                                             "/threads:" + std::to_string(threads);
                    benchmark::RegisterBenchmark(name.c_str(), bm_decode<T>, variant, layout, threads)
                        ->UseManualTime()
                        ->MinTime(0.3)
                        ->Unit(benchmark::kMicrosecond);
                }
        for (int threads : thread_counts) {
            const std::string name = std::string("kv_read/") + dtype_label(t) + "/Lk:" + std::to_string(kDecodeLen) +
                                     "/threads:" + std::to_string(threads);
            benchmark::RegisterBenchmark(name.c_str(), bm_kv_read, t, threads)
                ->UseRealTime()
                ->MinTime(0.3)
                ->Unit(benchmark::kMicrosecond);
        }
    };
    register_decode(float{}, mmca::dtype::float32);
    register_decode(mmca::float16{}, mmca::dtype::float16);
    register_decode(mmca::bfloat16{}, mmca::dtype::bfloat16);
}

}  // namespace

int main(int argc, char** argv) {
    register_all();
    benchmark::Initialize(&argc, argv);
    if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
    benchmark::RunSpecifiedBenchmarks();
    benchmark::Shutdown();
    return 0;
}
