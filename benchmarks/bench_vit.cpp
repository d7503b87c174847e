// benchmarks/bench_vit.cpp - speed of the QWen-VL vision encoder at full size (1.9B parameters).
//
//   bench_vit [--threads 1,2] [--batch 1,4] [--layers 48] [--repeats 1]
//
// Builds the QWen-VL ViT of DeepSpeed-VisualChat (448×448 input, 1664 wide, 48 blocks, MLP 8192,
// resampler to 256 × 4096) with random bfloat16 weights generated in memory (3.8 GB), and encodes
// `batch` random images per call. Per thread count it prints:
//   * the FMA peak of the machine (benchmarks/fma_peak.hpp: register-only FMA chains);
//   * seconds per image, and the efficiency of the whole encoder: useful FLOPs / time / FMA peak,
//     where the useful FLOPs are 2·rows·in·out of every linear layer (patch embedding, qkv, out,
//     MLP, resampler projections) plus 4·Lq·Lk·D per head of every attention (scores and values);
//   * for reference, one linear layer of the encoder's largest shape alone (fc1: 1024·batch rows,
//     1664 -> 8192) with bfloat16 and float32 weights: what nn::linear_forward reaches by itself.
// Timings are medians of `repeats` calls (the weights are already in memory; no warm-up call).
#include "mmca/nn/linear.hpp"
#include "mmca/vision/qwen_vit.hpp"

#include "fma_peak.hpp"

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

namespace {

using clock_type = std::chrono::steady_clock;

double seconds_since(clock_type::time_point t0) { return std::chrono::duration<double>(clock_type::now() - t0).count(); }

double median(std::vector<double> v) {
    std::sort(v.begin(), v.end());
    return v[v.size() / 2];
}

std::vector<int> split_ints(const std::string& s) {
    std::vector<int> out;
    std::size_t a = 0;
    while (a <= s.size()) {
        const std::size_t b = s.find(',', a);
        out.push_back(std::atoi(s.substr(a, b == std::string::npos ? std::string::npos : b - a).c_str()));
        if (b == std::string::npos) break;
        a = b + 1;
    }
    return out;
}

/// Random weights of every matrix of the encoder, bfloat16 in memory, plus the float32 vectors.
struct random_qwen_vit {
    std::vector<std::vector<mmca::bfloat16>> blobs;
    std::uint64_t state = 88172645463325252ull;

    float next(float scale) {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        return scale * (float(state >> 40) / float(1 << 24) - 0.5f);
    }
    mmca::nn::matrix_ref matrix(std::int64_t rows, std::int64_t cols, float scale) {
        blobs.emplace_back(static_cast<std::size_t>(rows * cols));
        for (auto& x : blobs.back()) x = mmca::bfloat16(next(scale));
        return mmca::nn::make_matrix<mmca::bfloat16>(blobs.back().data(), rows, cols);
    }
    std::vector<float> vec(std::int64_t n, float scale, float offset) {
        std::vector<float> v(static_cast<std::size_t>(n));
        for (auto& x : v) x = offset + next(scale);
        return v;
    }

    mmca::vision::qwen_vit_weights make(const mmca::vision::qwen_vit_config& c) {
        const std::int64_t W = c.width, M = c.mlp_width, E = c.output_dim;
        mmca::vision::qwen_vit_weights w;
        w.patch_embed = matrix(W, 3 * c.patch_size * c.patch_size, 0.05f);
        w.positions = vec(c.pos_grid * c.pos_grid * W, 0.1f, 0.0f);
        w.ln_pre_w = vec(W, 0.1f, 1.0f);
        w.ln_pre_b = vec(W, 0.1f, 0.0f);
        w.blocks.resize(static_cast<std::size_t>(c.layers));
        for (auto& b : w.blocks) {
            b.ln1_w = vec(W, 0.1f, 1.0f);
            b.ln1_b = vec(W, 0.1f, 0.0f);
            b.ln2_w = vec(W, 0.1f, 1.0f);
            b.ln2_b = vec(W, 0.1f, 0.0f);
            b.layout = mmca::vision::qkv_layout::fused_interleaved_per_head;
            b.qkv = matrix(3 * W, W, 0.05f);
            b.qkv_bias = vec(3 * W, 0.02f, 0.0f);
            b.out = matrix(W, W, 0.05f);
            b.out_bias = vec(W, 0.02f, 0.0f);
            b.fc1 = matrix(M, W, 0.05f);
            b.fc1_bias = vec(M, 0.02f, 0.0f);
            b.fc2 = matrix(W, M, 0.02f);
            b.fc2_bias = vec(W, 0.02f, 0.0f);
        }
        auto& p = w.pool;
        p.query = vec(c.queries * E, 0.5f, 0.0f);
        p.kv_proj = matrix(E, W, 0.05f);
        p.ln_q_w = vec(E, 0.1f, 1.0f);
        p.ln_q_b = vec(E, 0.1f, 0.0f);
        p.ln_kv_w = vec(E, 0.1f, 1.0f);
        p.ln_kv_b = vec(E, 0.1f, 0.0f);
        p.in_proj = matrix(3 * E, E, 0.03f);
        p.in_proj_bias = vec(3 * E, 0.02f, 0.0f);
        p.out_proj = matrix(E, E, 0.03f);
        p.out_proj_bias = vec(E, 0.02f, 0.0f);
        w.ln_post_w = vec(E, 0.1f, 1.0f);
        w.ln_post_b = vec(E, 0.1f, 0.0f);
        return w;
    }
};

/// Useful FLOPs of encoding n images in one call (linear layers + attention; see the file comment).
double useful_flops(const mmca::vision::qwen_vit_config& c, std::int64_t n) {
    const double T = double(c.tokens()), W = double(c.width), M = double(c.mlp_width), E = double(c.output_dim);
    const double Q = double(c.queries), K = 3.0 * c.patch_size * c.patch_size;
    const double patch = 2 * T * K * W;
    const double block = 2 * T * (3 * W * W + W * W + 2 * W * M) + 4 * T * T * W;
    const double pool = 2 * T * W * E + 2 * 2 * T * E * E + 4 * Q * T * E + 2 * Q * E * E;
    return double(n) * (patch + double(c.layers) * block + pool) + 2 * Q * E * E;  // + the shared query projection
}

/// Seconds of one fc1-shaped linear layer (rows × 1664 -> 8192) with weights of type Wt.
template <class Wt>
double linear_seconds(std::int64_t rows, std::int64_t in, std::int64_t out, int threads) {
    std::vector<Wt> w(static_cast<std::size_t>(in * out));
    for (std::size_t i = 0; i < w.size(); ++i) w[i] = Wt(float(i % 97) * 1e-3f - 0.05f);
    std::vector<float> x(static_cast<std::size_t>(rows * in), 0.25f), y(static_cast<std::size_t>(rows * out));
    const auto wm = mmca::nn::make_matrix<Wt>(w.data(), out, in);
    std::vector<double> t;
    for (int rep = 0; rep < 3; ++rep) {
        const auto t0 = clock_type::now();
        mmca::nn::linear_forward(mmca::tensor_ref<const float, 2>(x.data(), {rows, in}), wm, nullptr,
                                 mmca::tensor_ref<float, 2>(y.data(), {rows, out}), threads);
        t.push_back(seconds_since(t0));
    }
    return median(t);
}

}  // namespace

int main(int argc, char** argv) {
    std::string threads_arg = "1,2", batch_arg = "1,4";
    std::int64_t layers = 48;
    int repeats = 1;
    for (int i = 1; i + 1 < argc; i += 2) {
        const std::string a = argv[i], v = argv[i + 1];
        if (a == "--threads") threads_arg = v;
        else if (a == "--batch") batch_arg = v;
        else if (a == "--layers") layers = std::atoll(v.c_str());
        else if (a == "--repeats") repeats = std::max(1, std::atoi(v.c_str()));
        else {
            std::fprintf(stderr, "unknown option %s\n", a.c_str());
            return 2;
        }
    }
    mmca::vision::qwen_vit_config c;  // QWen-VL's encoder
    c.layers = layers;
    auto t0 = clock_type::now();
    random_qwen_vit gen;
    mmca::vision::qwen_vit encoder(c, gen.make(c));
    std::int64_t params = 0;
    for (const auto& b : gen.blobs) params += static_cast<std::int64_t>(b.size());
    std::printf("QWen-VL ViT: %lld blocks, %.2fB matrix parameters (bfloat16), built in %.1f s\n", (long long)c.layers,
                params / 1e9, seconds_since(t0));

    const std::int64_t S = c.image_size, Q = c.queries, E = c.output_dim;
    const auto batches = split_ints(batch_arg);
    const std::int64_t max_batch = *std::max_element(batches.begin(), batches.end());
    std::vector<float> images(static_cast<std::size_t>(max_batch * 3 * S * S));
    for (std::size_t i = 0; i < images.size(); ++i) images[i] = float((i * 2654435761u) % 2000) / 1000.0f - 1.0f;
    std::vector<float> out(static_cast<std::size_t>(max_batch * Q * E));

    struct row {
        int threads;
        std::int64_t batch;
        double peak, s_per_image, gflops, linear_bf16, linear_f32;
    };
    std::vector<row> rows;
    for (int t : split_ints(threads_arg)) {
        const double peak = mmca_bench::fma_peak(t);
        std::printf("threads %d: FMA peak %.1f GFLOP/s\n", t, peak);
        for (int b : batches) {
            std::vector<double> times;
            for (int rep = 0; rep < repeats; ++rep) {
                t0 = clock_type::now();
                encoder.encode(mmca::tensor_ref<const float, 4>(images.data(), {b, 3, S, S}),
                               mmca::tensor_ref<float, 3>(out.data(), {b, Q, E}), t);
                times.push_back(seconds_since(t0));
            }
            const double s = median(times);
            row r{t, b, peak, s / b, useful_flops(c, b) / s / 1e9, 0.0, 0.0};
            const std::int64_t lin_rows = c.tokens() * b;
            r.linear_bf16 = 2.0 * lin_rows * c.width * c.mlp_width /
                            linear_seconds<mmca::bfloat16>(lin_rows, c.width, c.mlp_width, t) / 1e9;
            r.linear_f32 = 2.0 * lin_rows * c.width * c.mlp_width /
                           linear_seconds<float>(lin_rows, c.width, c.mlp_width, t) / 1e9;
            std::printf("threads %d, batch %d: %.2f s/image, %.1f GFLOP/s = %.0f%% of peak; fc1 alone: bf16 %.1f "
                        "GFLOP/s (%.0f%%), f32 %.1f GFLOP/s (%.0f%%)\n",
                        t, b, r.s_per_image, r.gflops, 100 * r.gflops / peak, r.linear_bf16, 100 * r.linear_bf16 / peak,
                        r.linear_f32, 100 * r.linear_f32 / peak);
            std::fflush(stdout);
            rows.push_back(r);
        }
    }
    std::printf("\n| threads | images per call | s / image | encoder GFLOP/s | %% of FMA peak | FMA peak GFLOP/s | "
                "fc1 alone bf16 (%% peak) | fc1 alone f32 (%% peak) |\n|---|---|---|---|---|---|---|---|\n");
    for (const auto& r : rows)
        std::printf("| %d | %lld | %.2f | %.1f | %.0f%% | %.1f | %.1f (%.0f%%) | %.1f (%.0f%%) |\n", r.threads,
                    (long long)r.batch, r.s_per_image, r.gflops, 100 * r.gflops / r.peak, r.peak, r.linear_bf16,
                    100 * r.linear_bf16 / r.peak, r.linear_f32, 100 * r.linear_f32 / r.peak);
    return 0;
}
