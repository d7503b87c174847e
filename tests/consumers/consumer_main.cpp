// consumer_main.cpp - the program every consumer project (find_package, add_subdirectory,
// pkg-config) builds: one causal attention call whose output is known by hand.
//
// B = 1, H = 1, L = 2 text tokens, D = 1, scale = 1:
//   q = (1, 1), k = (0, ln 3), v = (2, 6)
//   row 0 sees key 0 only                      -> out = v0 = 2
//   row 1 scores (0, ln 3), softmax (1/4, 3/4) -> out = 2/4 + 3*6/4 = 5
#include <mmca/mmca.hpp>

#include <array>
#include <cmath>
#include <cstdint>
#include <cstdio>

int main() {
    const std::array<float, 2> q{1.0f, 1.0f};
    const std::array<float, 2> k{0.0f, std::log(3.0f)};
    const std::array<float, 2> v{2.0f, 6.0f};
    const std::array<std::int8_t, 2> types{1, 1};  // text, text

    const std::array<std::int64_t, 4> shape{1, 1, 2, 1};  // (B, H, L, D)
    mmca::token_layout tokens;
    tokens.types = mmca::tensor_ref<const std::int8_t, 2>(types.data(), {1, 2});
    mmca::attention_options options;
    options.variant = mmca::attention_variant::causal;
    options.scale = 1.0f;

    const auto out = mmca::attention(mmca::tensor_ref<const float, 4>(q.data(), shape),
                                     mmca::tensor_ref<const float, 4>(k.data(), shape),
                                     mmca::tensor_ref<const float, 4>(v.data(), shape), tokens, options);
    const float row0 = out(0, 0, 0, 0);
    const float row1 = out(0, 0, 1, 0);
    std::printf("mmca %s: causal rows = (%.6f, %.6f), expected (2, 5)\n", mmca::version, row0, row1);
    if (std::fabs(row0 - 2.0f) > 1e-5f || std::fabs(row1 - 5.0f) > 1e-5f) {
        std::printf("mismatch\n");
        return 1;
    }
    return 0;
}
