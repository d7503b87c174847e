// examples/attention_comparison.cpp - every attention variant on one chat-like sequence.
//
// Builds a two-round conversation with three images (system prompt, "### Image N:" headers, image
// tokens, questions and answers), runs each variant with the reference oracle and the fused kernel,
// and prints:
//   1. per variant: the largest |fused - reference| difference and both times;
//   2. how the variants' outputs differ, per kind of query row: text before the first image,
//      text after an image, and image rows (the rows where SPEC §2's variants disagree).
//
//   attention_comparison [--heads H] [--kv-heads HKV] [--head-dim D] [--image-tokens N] [--threads T]
#include <mmca/mmca.hpp>

#include <algorithm>
#include <array>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <random>
#include <string>
#include <utility>
#include <vector>

namespace {

struct demo_config {
    std::int64_t heads = 8;
    std::int64_t kv_heads = 4;  // grouped-query attention: two query heads per kv head
    std::int64_t head_dim = 64;
    std::int64_t image_tokens = 64;
    int threads = 0;
};

/// One named attention configuration of the demo.
struct variant_case {
    std::string name;
    mmca::attention_options options;
};

/// A run of `count` tokens of one type, with what the tokens stand for in the conversation.
struct segment {
    mmca::token_type type;
    std::int64_t count;
    const char* what;
};

/// Two chat rounds: the first shows two images, the second one more (SPEC §6 prompt format).
std::vector<segment> conversation(std::int64_t image_tokens) {
    using mmca::token_type;
    return {
        {token_type::text, 42, "BOS + system prompt"},
        {token_type::text, 6, "### Image 1:"},
        {token_type::image, image_tokens, "image 1"},
        {token_type::text, 6, "### Image 2:"},
        {token_type::image, image_tokens, "image 2"},
        {token_type::text, 24, "### Question: ... ### Answer:"},
        {token_type::text, 40, "answer + EOS"},
        {token_type::text, 7, "BOS ### Image 3:"},
        {token_type::image, image_tokens, "image 3"},
        {token_type::text, 20, "### Question: ... ### Answer:"},
        {token_type::text, 30, "answer + EOS"},
    };
}

void fill_uniform(mmca::tensor<float, 4>& t, std::uint32_t seed) {
    std::mt19937 rng(seed);
    std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
    for (auto& x : t) x = dist(rng);
}

double seconds_since(std::chrono::steady_clock::time_point t0) {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

/// Kinds of query rows, by what the variants of SPEC §2 do differently on them.
enum row_kind { text_before_image = 0, text_after_image = 1, image_row = 2, row_kinds = 3 };
const char* row_kind_name[row_kinds] = {"text before 1st image", "text after an image", "image rows"};

std::vector<row_kind> classify_rows(const std::vector<std::int8_t>& types) {
    std::vector<row_kind> kinds(types.size());
    bool seen_image = false;
    for (std::size_t j = 0; j < types.size(); ++j) {
        const bool image = types[j] == static_cast<std::int8_t>(mmca::token_type::image);
        kinds[j] = image ? image_row : (seen_image ? text_after_image : text_before_image);
        seen_image |= image;
    }
    return kinds;
}

/// Largest |a - b| over the rows of each kind (all heads).
std::array<double, row_kinds> max_diff_per_kind(const mmca::tensor<float, 4>& a, const mmca::tensor<float, 4>& b,
                                                const std::vector<row_kind>& kinds) {
    std::array<double, row_kinds> diff{};
    const std::size_t H = a.shape()[1], L = a.shape()[2], D = a.shape()[3];
    for (std::size_t h = 0; h < H; ++h)
        for (std::size_t j = 0; j < L; ++j)
            for (std::size_t d = 0; d < D; ++d) {
                const double x = std::fabs(static_cast<double>(a(0, h, j, d)) - static_cast<double>(b(0, h, j, d)));
                diff[kinds[j]] = std::max(diff[kinds[j]], x);
            }
    return diff;
}

std::string diff_text(double d) {
    if (d == 0.0) return "identical";
    char buf[32];
    std::snprintf(buf, sizeof buf, d < 1e-4 ? "%.1e" : "%.3f", d);
    return buf;
}

void usage(const char* argv0) {
    std::fprintf(stderr,
                 "usage: %s [--heads H] [--kv-heads HKV] [--head-dim D] [--image-tokens N] [--threads T]\n"
                 "  defaults: --heads 8 --kv-heads 4 --head-dim 64 --image-tokens 64 --threads 0 (all cores)\n",
                 argv0);
}

bool parse_args(int argc, char** argv, demo_config& c) {
    for (int i = 1; i < argc; ++i) {
        const std::string a = argv[i];
        if (i + 1 >= argc) return false;
        char* end = nullptr;
        const long value = std::strtol(argv[++i], &end, 10);
        if (*end != '\0' || value < 0) return false;
        if (a == "--heads") c.heads = value;
        else if (a == "--kv-heads") c.kv_heads = value;
        else if (a == "--head-dim") c.head_dim = value;
        else if (a == "--image-tokens") c.image_tokens = value;
        else if (a == "--threads") c.threads = static_cast<int>(value);
        else return false;
    }
    return c.heads > 0 && c.kv_heads > 0 && c.head_dim > 0 && c.image_tokens > 0;
}

int run(const demo_config& cfg) {
    // Token types of the conversation.
    std::vector<std::int8_t> types;
    std::printf("Sequence (one chat, two rounds, three images):\n");
    for (const segment& s : conversation(cfg.image_tokens)) {
        std::printf("  %-5s x %3lld  %s\n", s.type == mmca::token_type::image ? "image" : "text",
                    static_cast<long long>(s.count), s.what);
        types.insert(types.end(), static_cast<std::size_t>(s.count), static_cast<std::int8_t>(s.type));
    }
    const std::int64_t L = static_cast<std::int64_t>(types.size());
    const std::vector<row_kind> kinds = classify_rows(types);
    std::array<std::int64_t, row_kinds> kind_count{};
    for (row_kind k : kinds) ++kind_count[k];
    std::printf("  %lld tokens; query heads %lld, kv heads %lld, head dim %lld, threads %d\n\n",
                static_cast<long long>(L), static_cast<long long>(cfg.heads), static_cast<long long>(cfg.kv_heads),
                static_cast<long long>(cfg.head_dim), mmca::resolve_num_threads(cfg.threads));

    const auto H = static_cast<std::size_t>(cfg.heads), Hkv = static_cast<std::size_t>(cfg.kv_heads);
    const auto D = static_cast<std::size_t>(cfg.head_dim), Ls = static_cast<std::size_t>(L);
    mmca::tensor<float, 4> q(std::array<std::size_t, 4>{1, H, Ls, D});
    mmca::tensor<float, 4> k(std::array<std::size_t, 4>{1, Hkv, Ls, D});
    mmca::tensor<float, 4> v(std::array<std::size_t, 4>{1, Hkv, Ls, D});
    fill_uniform(q, 1);
    fill_uniform(k, 2);
    fill_uniform(v, 3);
    mmca::token_layout tokens;
    tokens.types = mmca::tensor_ref<const std::int8_t, 2>(types.data(), {1, L});

    auto make = [&](const char* name, mmca::attention_variant v, mmca::image_visibility p) {
        variant_case c{name, {}};
        c.options.variant = v;
        c.options.visibility = p;
        c.options.num_threads = cfg.threads;
        return c;
    };
    using mmca::attention_variant;
    using mmca::image_visibility;
    const std::vector<variant_case> cases = {
        make("causal", attention_variant::causal, image_visibility::preceding),
        make("mmca", attention_variant::mmca, image_visibility::preceding),
        make("mmca_reference", attention_variant::mmca_reference, image_visibility::preceding),
        make("causal_cross/all", attention_variant::causal_cross, image_visibility::all),
        make("causal_cross/preceding", attention_variant::causal_cross, image_visibility::preceding),
        make("causal_cross/latest", attention_variant::causal_cross, image_visibility::latest),
    };

    // 1. Fused kernel against the reference oracle, per variant.
    std::vector<mmca::tensor<float, 4>> reference_out;
    std::printf("Fused kernel vs reference oracle (float32 vs double accumulation):\n");
    std::printf("  %-24s %16s %14s %10s %9s\n", "variant", "max |fused-ref|", "reference ms", "fused ms", "speedup");
    for (const variant_case& c : cases) {
        const auto t0 = std::chrono::steady_clock::now();
        mmca::tensor<float, 4> ref = mmca::attention(q, k, v, tokens, c.options, mmca::attention_impl::reference);
        const double ref_s = seconds_since(t0);

        mmca::tensor<float, 4> fused = mmca::attention(q, k, v, tokens, c.options);  // warm-up
        std::vector<double> times;
        for (int r = 0; r < 7; ++r) {
            const auto t1 = std::chrono::steady_clock::now();
            fused = mmca::attention(q, k, v, tokens, c.options);
            times.push_back(seconds_since(t1));
        }
        std::sort(times.begin(), times.end());
        const double fused_s = times[times.size() / 2];

        double max_diff = 0.0;
        for (std::size_t e = 0; e < ref.size(); ++e)
            max_diff = std::max(max_diff, std::fabs(static_cast<double>(ref.data()[e]) - fused.data()[e]));
        std::printf("  %-24s %16.2e %14.2f %10.3f %8.0fx\n", c.name.c_str(), max_diff, ref_s * 1e3, fused_s * 1e3,
                    ref_s / fused_s);
        reference_out.push_back(std::move(ref));
    }

    // 2. How the variants differ, per kind of row.
    struct pair_case {
        int a, b;
        const char* meaning;
    };
    const pair_case pairs[] = {
        {0, 1, "MMCA splits one softmax into a text and an image softmax; image rows attend to themselves"},
        {1, 2, "the reference code leaks later images into rows before the first image and adds a text "
               "term to image rows"},
        {1, 4, "CA + CrA (preceding) keeps MMCA's text rows; image rows are no queries there (output 0)"},
        {4, 3, "policy 'all' also shows text rows the images that come after them"},
        {4, 5, "policy 'latest' hides all but the most recent image"},
    };
    std::printf("\nMax |difference| between variants (reference outputs), per kind of query row:\n");
    std::printf("  %-48s", "variants");
    for (int kk = 0; kk < row_kinds; ++kk) std::printf(" %22s", row_kind_name[kk]);
    std::printf("\n  %-48s", "(rows of that kind)");
    for (int kk = 0; kk < row_kinds; ++kk) std::printf(" %22lld", static_cast<long long>(kind_count[kk]));
    std::printf("\n");
    for (const pair_case& p : pairs) {
        const std::string label = cases[p.a].name + " vs " + cases[p.b].name;
        const auto diff = max_diff_per_kind(reference_out[p.a], reference_out[p.b], kinds);
        std::printf("  %-48s", label.c_str());
        for (int kk = 0; kk < row_kinds; ++kk) std::printf(" %22s", diff_text(diff[kk]).c_str());
        std::printf("\n      %s\n", p.meaning);
    }

    std::printf("\nTimings at LLaMa-2 7B attention shapes (H32 D128, S up to 4096) and against torch 1.13:\n"
                "  build/benchmarks/bench_attention              (Google Benchmark, every variant)\n"
                "  /usr/bin/python3 benchmarks/torch_attention.py  (torch SDPA and two-softmax MMCA vs mmca)\n");
    return 0;
}

}  // namespace

int main(int argc, char** argv) {
    demo_config cfg;
    for (int i = 1; i < argc; ++i)
        if (std::strcmp(argv[i], "-h") == 0 || std::strcmp(argv[i], "--help") == 0) {
            usage(argv[0]);
            return 0;
        }
    if (!parse_args(argc, argv, cfg)) {
        usage(argv[0]);
        return 2;
    }
    try {
        return run(cfg);
    } catch (const std::exception& e) {
        std::fprintf(stderr, "attention_comparison: %s\n", e.what());
        return 1;
    }
}
