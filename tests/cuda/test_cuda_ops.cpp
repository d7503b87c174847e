// tests/cuda/test_cuda_ops.cpp - the CUDA model ops (mmca/backend/cuda/ops/) against the CPU
// implementations (mmca::nn, mmca::vision) on random inputs.
//
// Tolerances: float32 storage within 1e-5 of the CPU result, norm-wise (max |gpu - cpu| <=
// 1e-5 · max |cpu|). float16 / bfloat16 storage: within twice the error of a plain CPU
// implementation at the same precision (inputs rounded to the type, the CPU op in float32, the
// output rounded) plus one unit roundoff of the largest output:
//   max |gpu - ref| <= 2 · max |plain - ref| + u · max |ref|,   ref = the CPU op on float32 inputs.
// Ops that only move or convert data (embedding gather, patch unfold) must match exactly.
// Device tests start with MMCA_REQUIRE_GPU() and are skipped without a GPU; CudaOpsHost.* need no
// device (argument validation, and the kernels' index arithmetic and GEMM argument mapping run on
// the host).
#include "attention_test_util.hpp"
#include "cuda_ops_support.hpp"

#include "mmca/nn/activation.hpp"
#include "mmca/nn/embedding.hpp"
#include "mmca/nn/layernorm.hpp"
#include "mmca/nn/linear.hpp"
#include "mmca/nn/mlp.hpp"
#include "mmca/nn/rmsnorm.hpp"
#include "mmca/nn/rope.hpp"
#include "mmca/vision/patch_embedding.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <map>
#include <sstream>
#include <string>
#include <type_traits>
#include <vector>

namespace mmca_cuda_test {
namespace {

using mmca::tensor_ref;

// ---- data ------------------------------------------------------------------------------------

tensor2 random2(std::size_t rows, std::size_t cols, std::uint64_t seed, float lo = -1.0f, float hi = 1.0f) {
    tensor2 t(std::array<std::size_t, 2>{rows, cols});
    mmca_test::rng r(seed);
    for (auto& v : t) v = static_cast<float>(r.uniform(lo, hi));
    return t;
}

std::vector<float> random_vector(std::size_t n, std::uint64_t seed, float lo, float hi) {
    std::vector<float> v(n);
    mmca_test::rng r(seed);
    for (auto& x : v) x = static_cast<float>(r.uniform(lo, hi));
    return v;
}

/// Every element rounded to S and widened back (a copy for float).
template <class S, class Tensor>
Tensor rounded(const Tensor& t) {
    Tensor out = t;
    for (auto& v : out) v = static_cast<float>(static_cast<S>(v));
    return out;
}

template <class T, std::size_t N>
tensor_ref<const float, N> cview(const mmca::tensor<T, N>& t) {
    std::array<std::int64_t, N> shape{};
    for (std::size_t d = 0; d < N; ++d) shape[d] = static_cast<std::int64_t>(t.shape()[d]);
    return tensor_ref<const float, N>(t.data(), shape);
}
template <class T, std::size_t N>
tensor_ref<float, N> view(mmca::tensor<T, N>& t) {
    std::array<std::int64_t, N> shape{};
    for (std::size_t d = 0; d < N; ++d) shape[d] = static_cast<std::int64_t>(t.shape()[d]);
    return tensor_ref<float, N>(t.data(), shape);
}

// ---- comparison ------------------------------------------------------------------------------

/// Unit roundoff of a storage type: half the distance from 1 to the next number.
template <class S>
double unit_roundoff() {
    if constexpr (std::is_same_v<S, float>) return std::ldexp(1.0, -24);
    if constexpr (std::is_same_v<S, mmca::float16>) return std::ldexp(1.0, -11);
    return std::ldexp(1.0, -8);  // bfloat16
}

template <class S>
const char* type_name() {
    if constexpr (std::is_same_v<S, float>) return "float32";
    if constexpr (std::is_same_v<S, mmca::float16>) return "float16";
    return "bfloat16";
}

template <class Tensor>
double max_abs(const Tensor& t) {
    double m = 0.0;
    for (float v : t) m = std::max(m, static_cast<double>(std::fabs(v)));
    return m;
}

/// max |a - b|; infinity when a value is not finite or the shapes differ.
template <class Tensor>
double max_abs_diff(const Tensor& a, const Tensor& b) {
    if (a.shape() != b.shape()) return INFINITY;
    double m = 0.0;
    for (std::size_t i = 0; i < a.size(); ++i) {
        const float x = a.data()[i], y = b.data()[i];
        if (!std::isfinite(x) || !std::isfinite(y)) return INFINITY;
        m = std::max(m, std::fabs(static_cast<double>(x) - static_cast<double>(y)));
    }
    return m;
}

/// The bound a device result of storage S must meet (see the file comment).
template <class S, class Tensor>
double error_bound(const Tensor& ref, const Tensor& plain) {
    const double scale = std::max(max_abs(ref), 1e-30);
    if constexpr (std::is_same_v<S, float>) {
        (void)plain;
        return 1e-5 * scale;
    } else {
        return 2.0 * max_abs_diff(plain, ref) + unit_roundoff<S>() * scale;
    }
}

template <class S, class Tensor>
void expect_within_bound(const Tensor& gpu, const Tensor& ref, const Tensor& plain, const std::string& what) {
    const double err = max_abs_diff(gpu, ref), bound = error_bound<S>(ref, plain);
    EXPECT_LE(err, bound) << what << " (" << type_name<S>() << "): max |gpu - cpu| = " << err << ", bound " << bound
                          << ", max |cpu| = " << max_abs(ref) << ", plain error " << max_abs_diff(plain, ref);
}

template <class Tensor>
void expect_equal(const Tensor& gpu, const Tensor& expected, const std::string& what) {
    EXPECT_EQ(max_abs_diff(gpu, expected), 0.0) << what;
}

// ---- CPU oracles (float32 in, float32 out) ---------------------------------------------------

tensor2 cpu_rmsnorm(const tensor2& x, const std::vector<float>& w, float eps) {
    tensor2 y = x;
    mmca::nn::rmsnorm_forward(cview(x), w.data(), eps, view(y), 1);
    return y;
}

tensor2 cpu_layernorm(const tensor2& x, const std::vector<float>& w, const std::vector<float>& b, float eps) {
    tensor2 y = x;
    mmca::nn::layernorm_forward(cview(x), w.empty() ? nullptr : w.data(), b.empty() ? nullptr : b.data(), eps, view(y),
                                1);
    return y;
}

/// x (B, L, H, D) token-major; positions B·L, or L shared by every sequence.
tensor4 cpu_rope(const tensor4& x, const mmca::nn::rope_config& c, const std::vector<std::int64_t>& positions,
                 std::int64_t total_len) {
    const std::int64_t B = static_cast<std::int64_t>(x.shape()[0]), L = static_cast<std::int64_t>(x.shape()[1]),
                       H = static_cast<std::int64_t>(x.shape()[2]), D = static_cast<std::int64_t>(x.shape()[3]);
    std::vector<std::int64_t> all = positions;
    if (static_cast<std::int64_t>(positions.size()) == L && B > 1) {
        all.clear();
        for (std::int64_t b = 0; b < B; ++b) all.insert(all.end(), positions.begin(), positions.end());
    }
    mmca::nn::rope_table table;
    mmca::nn::rope_build(c, all.data(), B * L, total_len, table);
    tensor4 y = x;
    mmca::nn::rope_apply(y.data(), H * D, H, table);
    return y;
}

tensor2 cpu_activation(mmca::nn::activation a, const tensor2& x) {
    tensor2 y = x;
    mmca::nn::activate_inplace(a, y.data(), static_cast<std::int64_t>(y.size()), 1);
    return y;
}

tensor2 cpu_swiglu(const tensor2& g, const tensor2& u) {
    tensor2 y = g;
    mmca::nn::swiglu_activate(y.data(), u.data(), static_cast<std::int64_t>(y.size()));
    return y;
}

tensor2 cpu_residual(const tensor2& h, const tensor2& d) {
    tensor2 y = h;
    for (std::size_t i = 0; i < y.size(); ++i) y.data()[i] += d.data()[i];
    return y;
}

tensor2 cpu_linear(const tensor2& x, const tensor2& w, const std::vector<float>& bias) {
    tensor2 y(std::array<std::size_t, 2>{x.shape()[0], w.shape()[0]});
    const auto weight = mmca::nn::make_matrix(w.data(), static_cast<std::int64_t>(w.shape()[0]),
                                              static_cast<std::int64_t>(w.shape()[1]));
    mmca::nn::linear_forward(cview(x), weight, bias.empty() ? nullptr : bias.data(), view(y), 1);
    return y;
}

tensor2 cpu_patches(const tensor4& images, std::int64_t patch) {
    const std::int64_t N = static_cast<std::int64_t>(images.shape()[0]), C = static_cast<std::int64_t>(images.shape()[1]),
                       S = static_cast<std::int64_t>(images.shape()[2]), G = S / patch;
    tensor2 out(std::array<std::size_t, 2>{static_cast<std::size_t>(N * G * G), static_cast<std::size_t>(C * patch * patch)});
    mmca::vision::extract_patches(cview(images), patch, view(out), 1);
    return out;
}

tensor2 cpu_patch_embedding(const tensor4& images, const tensor2& w, std::int64_t patch) {
    const std::int64_t N = static_cast<std::int64_t>(images.shape()[0]), S = static_cast<std::int64_t>(images.shape()[2]),
                       G = S / patch;
    tensor2 out(std::array<std::size_t, 2>{static_cast<std::size_t>(N * G * G), w.shape()[0]});
    const auto weight = mmca::nn::make_matrix(w.data(), static_cast<std::int64_t>(w.shape()[0]),
                                              static_cast<std::int64_t>(w.shape()[1]));
    std::vector<float> scratch;
    mmca::vision::patch_embedding_forward(cview(images), weight, patch, view(out), scratch, 1);
    return out;
}

std::string shape_name(std::size_t a, std::size_t b) {
    std::ostringstream os;
    os << "(" << a << ", " << b << ")";
    return os.str();
}

// ---- device tests, per storage type ------------------------------------------------------------

template <class S>
class CudaOps : public ::testing::Test {};
using storage_types = ::testing::Types<float, mmca::float16, mmca::bfloat16>;
TYPED_TEST_SUITE(CudaOps, storage_types);

// Row counts include 1, odd counts and counts above the 256 threads of a block; widths the head
// dims 80 / 104, the ViT width 1664 and LLaMa-13B's 5120.
const std::vector<std::array<std::size_t, 2>> norm_shapes{{1, 80}, {3, 104}, {257, 80}, {5, 1664}, {2, 5120}, {4, 3}};

TYPED_TEST(CudaOps, RmsNorm) {
    MMCA_REQUIRE_GPU();
    using S = TypeParam;
    std::uint64_t seed = 100;
    for (const auto& s : norm_shapes)
        for (bool in_place : {false, true}) {
            const tensor2 x = random2(s[0], s[1], ++seed, -2.0f, 2.0f);
            const std::vector<float> w = random_vector(s[1], ++seed, 0.5f, 1.5f);
            const float eps = 1e-5f;
            const tensor2 ref = cpu_rmsnorm(x, w, eps);
            const tensor2 plain = rounded<S>(cpu_rmsnorm(rounded<S>(x), w, eps));
            const tensor2 gpu = cuda_rmsnorm<S>(x, w, eps, in_place);
            expect_within_bound<S>(gpu, ref, plain, "rmsnorm " + shape_name(s[0], s[1]) + (in_place ? " in place" : ""));
        }
}

TYPED_TEST(CudaOps, LayerNorm) {
    MMCA_REQUIRE_GPU();
    using S = TypeParam;
    std::uint64_t seed = 200;
    for (const auto& s : norm_shapes)
        for (int variant = 0; variant < 3; ++variant) {
            // An offset mean makes the two-pass variance matter.
            const tensor2 x = random2(s[0], s[1], ++seed, 1.0f, 4.0f);
            const std::vector<float> w = variant == 2 ? std::vector<float>{} : random_vector(s[1], ++seed, -1.5f, 1.5f);
            const std::vector<float> b = variant == 1 ? std::vector<float>{} : random_vector(s[1], ++seed, -0.5f, 0.5f);
            const float eps = variant == 0 ? 1e-6f : 1e-12f;
            const tensor2 ref = cpu_layernorm(x, w, b, eps);
            const tensor2 plain = rounded<S>(cpu_layernorm(rounded<S>(x), w, b, eps));
            const tensor2 gpu = cuda_layernorm<S>(x, w, b, eps, variant == 1);
            expect_within_bound<S>(gpu, ref, plain,
                                   "layernorm " + shape_name(s[0], s[1]) + " variant " + std::to_string(variant));
        }
}

TYPED_TEST(CudaOps, Rope) {
    MMCA_REQUIRE_GPU();
    using S = TypeParam;
    struct rope_case {
        std::size_t B, L, H, D;
        mmca::nn::rope_scaling_type scaling;
        bool shared_positions;
    };
    const std::vector<rope_case> cases{{2, 5, 3, 80, mmca::nn::rope_scaling_type::none, false},
                                       {1, 17, 2, 104, mmca::nn::rope_scaling_type::none, false},
                                       {3, 9, 4, 128, mmca::nn::rope_scaling_type::linear, false},
                                       {2, 33, 2, 64, mmca::nn::rope_scaling_type::dynamic, false},
                                       {3, 7, 5, 80, mmca::nn::rope_scaling_type::none, true}};
    std::uint64_t seed = 300;
    for (const auto& c : cases)
        for (bool head_major : {false, true}) {
            const tensor4 x = mmca_test::random_tensor({c.B, c.L, c.H, c.D}, ++seed);
            mmca::nn::rope_config config;
            config.head_dim = static_cast<std::int64_t>(c.D);
            config.scaling = c.scaling;
            config.factor = c.scaling == mmca::nn::rope_scaling_type::none ? 1.0 : 2.0;
            config.max_positions = 16;
            // Per-token positions with a different offset per sequence (a cache of earlier tokens).
            std::vector<std::int64_t> positions;
            const std::size_t sequences = c.shared_positions ? 1 : c.B;
            for (std::size_t b = 0; b < sequences; ++b)
                for (std::size_t l = 0; l < c.L; ++l) positions.push_back(static_cast<std::int64_t>(7 * b + l + 1000 * (b % 2)));
            const std::int64_t total_len = static_cast<std::int64_t>(c.L + 7 * c.B + 1000);
            const tensor4 ref = cpu_rope(x, config, positions, total_len);
            const tensor4 plain = rounded<S>(cpu_rope(rounded<S>(x), config, positions, total_len));
            const tensor4 gpu = cuda_rope<S>(x, config, positions, total_len, head_major);
            std::ostringstream what;
            what << "rope B=" << c.B << " L=" << c.L << " H=" << c.H << " D=" << c.D << " scaling "
                 << mmca::nn::to_string(c.scaling) << (c.shared_positions ? " shared positions" : "")
                 << (head_major ? " (B, H, L, D) storage" : " (B, L, H, D) storage");
            expect_within_bound<S>(gpu, ref, plain, what.str());
        }
}

TYPED_TEST(CudaOps, Activations) {
    MMCA_REQUIRE_GPU();
    using S = TypeParam;
    std::uint64_t seed = 400;
    for (const auto& s : std::vector<std::array<std::size_t, 2>>{{1, 1}, {3, 104}, {257, 80}, {64, 1023}})
        for (auto act : {mmca::nn::activation::gelu_erf, mmca::nn::activation::gelu_tanh,
                         mmca::nn::activation::quick_gelu}) {
            const tensor2 x = random2(s[0], s[1], ++seed, -6.0f, 6.0f);
            const tensor2 ref = cpu_activation(act, x);
            const tensor2 plain = rounded<S>(cpu_activation(act, rounded<S>(x)));
            const tensor2 gpu = cuda_activation<S>(act, x);
            expect_within_bound<S>(gpu, ref, plain, std::string(mmca::nn::to_string(act)) + " " + shape_name(s[0], s[1]));
        }
}

TYPED_TEST(CudaOps, SwiGlu) {
    MMCA_REQUIRE_GPU();
    using S = TypeParam;
    std::uint64_t seed = 500;
    for (const auto& s : std::vector<std::array<std::size_t, 2>>{{1, 80}, {7, 104}, {300, 344}})
        for (bool fused : {false, true}) {
            const tensor2 g = random2(s[0], s[1], ++seed, -8.0f, 8.0f), u = random2(s[0], s[1], ++seed, -2.0f, 2.0f);
            const tensor2 ref = cpu_swiglu(g, u);
            const tensor2 plain = rounded<S>(cpu_swiglu(rounded<S>(g), rounded<S>(u)));
            const tensor2 gpu = cuda_swiglu<S>(g, u, fused);
            expect_within_bound<S>(gpu, ref, plain, "swiglu " + shape_name(s[0], s[1]) + (fused ? " fused" : ""));
        }
}

TYPED_TEST(CudaOps, ResidualAdd) {
    MMCA_REQUIRE_GPU();
    using S = TypeParam;
    std::uint64_t seed = 600;
    for (const auto& s : std::vector<std::array<std::size_t, 2>>{{1, 80}, {9, 104}, {257, 1664}}) {
        const tensor2 h = random2(s[0], s[1], ++seed, -4.0f, 4.0f), d = random2(s[0], s[1], ++seed);
        const tensor2 ref = cpu_residual(h, d);
        const tensor2 plain = rounded<S>(cpu_residual(rounded<S>(h), rounded<S>(d)));
        const tensor2 gpu = cuda_residual_add<S>(h, d);
        expect_within_bound<S>(gpu, ref, plain, "residual add " + shape_name(s[0], s[1]));
        // Both add the same rounded numbers in float32 and round once.
        expect_equal(gpu, plain, "residual add " + shape_name(s[0], s[1]) + " vs the plain implementation");
        // With a row mask (the decoder's causal_cross image rows): masked rows keep h.
        std::vector<std::uint8_t> rows(s[0]);
        for (std::size_t r = 0; r < s[0]; ++r) rows[r] = r % 3 != 1;
        const tensor2 masked = cuda_residual_add<S>(h, d, rows);
        tensor2 want = plain;
        const tensor2 kept = rounded<S>(h);
        for (std::size_t r = 0; r < s[0]; ++r)
            if (!rows[r])
                for (std::size_t c = 0; c < s[1]; ++c) want(r, c) = kept(r, c);
        expect_equal(masked, want, "masked residual add " + shape_name(s[0], s[1]));
    }
}

TYPED_TEST(CudaOps, Embedding) {
    MMCA_REQUIRE_GPU();
    using S = TypeParam;
    const tensor2 table = random2(37, 104, 700);
    const std::vector<std::int32_t> ids{0, 36, 5, 5, 17, 1, 36, 0, 12, 29, 3};
    // The CPU's gather of the rounded table (what a table stored as S holds).
    const tensor2 stored = rounded<S>(table);
    tensor2 expected(std::array<std::size_t, 2>{ids.size(), table.shape()[1]});
    const auto matrix = mmca::nn::make_matrix(stored.data(), 37, 104);
    mmca::nn::embedding_forward(ids.data(), static_cast<std::int64_t>(ids.size()), matrix, view(expected));
    expect_equal(cuda_embedding<S>(ids, table, true), expected, std::string("embedding to float32, table ") + type_name<S>());
    expect_equal(cuda_embedding<S>(ids, table, false), expected, std::string("embedding, table and output ") + type_name<S>());
}

TYPED_TEST(CudaOps, Linear) {
    MMCA_REQUIRE_GPU();
    using S = TypeParam;
    struct linear_case {
        std::size_t N, in, out;
        bool bias;
        std::int64_t padding;
    };
    const std::vector<linear_case> cases{{1, 64, 33, false, 0},   {1, 80, 104, true, 3},   {7, 80, 104, true, 0},
                                         {7, 104, 80, false, 5},  {130, 1664, 72, true, 0}, {257, 128, 344, true, 1},
                                         {33, 4096, 40, false, 0}};
    std::uint64_t seed = 800;
    for (const auto& c : cases) {
        const tensor2 x = random2(c.N, c.in, ++seed), w = random2(c.out, c.in, ++seed, -0.5f, 0.5f);
        const std::vector<float> bias = c.bias ? random_vector(c.out, ++seed, -2.0f, 2.0f) : std::vector<float>{};
        const tensor2 ref = cpu_linear(x, w, bias);
        const tensor2 plain = rounded<S>(cpu_linear(rounded<S>(x), rounded<S>(w), bias));
        const tensor2 gpu = cuda_linear<S>(x, w, bias, c.padding);
        std::ostringstream what;
        what << "linear N=" << c.N << " in=" << c.in << " out=" << c.out << (c.bias ? " bias" : "") << " padding "
             << c.padding;
        expect_within_bound<S>(gpu, ref, plain, what.str());
    }
}

TYPED_TEST(CudaOps, PatchUnfold) {
    MMCA_REQUIRE_GPU();
    using S = TypeParam;
    const std::vector<std::pair<mmca_test::shape4, std::int64_t>> cases{
        {{1, 3, 28, 28}, 14}, {{2, 3, 42, 42}, 14}, {{3, 2, 10, 10}, 5}, {{1, 3, 7, 7}, 7}};
    std::uint64_t seed = 900;
    for (const auto& [shape, patch] : cases) {
        const tensor4 images = mmca_test::random_tensor(shape, ++seed);
        const tensor2 gpu = cuda_extract_patches<S>(images, patch);
        expect_equal(gpu, rounded<S>(cpu_patches(images, patch)), "unfold " + std::to_string(shape[2]) + " / " +
                                                                         std::to_string(patch));
    }
}

TYPED_TEST(CudaOps, PatchEmbedding) {
    MMCA_REQUIRE_GPU();
    using S = TypeParam;
    std::uint64_t seed = 1000;
    for (const auto& [shape, patch, width] :
         std::vector<std::tuple<mmca_test::shape4, std::int64_t, std::size_t>>{{{2, 3, 28, 28}, 14, 40},
                                                                              {{1, 3, 42, 42}, 14, 104}}) {
        const tensor4 images = mmca_test::random_tensor(shape, ++seed);
        const tensor2 w = random2(width, static_cast<std::size_t>(3 * patch * patch), ++seed, -0.1f, 0.1f);
        const tensor2 ref = cpu_patch_embedding(images, w, patch);
        const tensor2 plain = rounded<S>(cpu_patch_embedding(rounded<S>(images), rounded<S>(w), patch));
        const tensor2 gpu = cuda_patch_embedding<S>(images, w, patch);
        expect_within_bound<S>(gpu, ref, plain, "patch embedding " + std::to_string(shape[2]) + " / " +
                                                    std::to_string(patch) + " -> " + std::to_string(width));
    }
}

TEST(CudaOpsDevice, HostPointersAreRefused) {
    MMCA_REQUIRE_GPU();
    for (const auto& [op, argument] : std::vector<std::pair<std::string, std::string>>{
             {"rmsnorm", "'x'"}, {"linear", "'weight'"}, {"embedding", "'out'"}}) {
        const std::string e = device_pointer_error(op);
        EXPECT_NE(e.find("mmca::cuda::"), std::string::npos) << op << ": " << e;
        EXPECT_NE(e.find(argument), std::string::npos) << op << ": " << e;
        EXPECT_NE(e.find("device"), std::string::npos) << op << ": " << e;
    }
}

// ---- no device needed ------------------------------------------------------------------------

TEST(CudaOpsHost, ValidationNamesTheArgument) {
    const std::map<std::string, std::string> argument_of{
        {"rmsnorm_y_shape", "y"},         {"rmsnorm_eps", "eps"},
        {"rmsnorm_weight", "weight"},     {"rmsnorm_x_strided", "x"},
        {"layernorm_empty_rows", "x"},    {"layernorm_eps", "eps"},
        {"layernorm_x_missing", "x"},     {"rope_odd_head_dim", "head_dim"},
        {"rope_positions_count", "positions"}, {"rope_head_dim_mismatch", "config"},
        {"rope_table_rows", "table"},     {"swiglu_up_shape", "up"},
        {"swiglu_out_shape", "out"},      {"activation_kind", "act"},
        {"activation_y_shape", "y"},      {"residual_delta_shape", "delta"},
        {"embedding_id_out_of_range", "ids"}, {"embedding_negative_id", "ids"},
        {"embedding_out_shape", "out"},   {"linear_x_shape", "x"},
        {"linear_y_shape", "y"},          {"linear_weight_missing", "weight"},
        {"unfold_patch", "patch"},        {"unfold_patches_shape", "patches"}};
    const auto cases = host_validation_cases();
    EXPECT_EQ(cases.size(), argument_of.size());
    for (const auto& name : cases) {
        std::string argument;
        const std::string e = host_validation_error(name, &argument);
        ASSERT_FALSE(e.empty()) << name << ": nothing was thrown";
        EXPECT_EQ(e.rfind("mmca::", 0), 0u) << name << ": " << e;
        EXPECT_NE(e.find("; expected "), std::string::npos) << name << ": " << e;
        const auto it = argument_of.find(name);
        ASSERT_NE(it, argument_of.end()) << name;
        EXPECT_EQ(argument, it->second) << name << ": " << e;
    }
    // The out-of-range id is named with its index and value.
    const std::string e = host_validation_error("embedding_id_out_of_range");
    EXPECT_NE(e.find("ids[2] = 8"), std::string::npos) << e;
    EXPECT_NE(e.find("[0, 8)"), std::string::npos) << e;
}

TEST(CudaOpsHost, UnfoldIndexingMatchesCpu) {
    std::uint64_t seed = 1100;
    for (const auto& [shape, patch] : std::vector<std::pair<mmca_test::shape4, std::int64_t>>{
             {{1, 3, 28, 28}, 14}, {{2, 3, 42, 42}, 14}, {{3, 2, 10, 10}, 5}, {{1, 1, 4, 4}, 1}}) {
        const tensor4 images = mmca_test::random_tensor(shape, ++seed);
        expect_equal(host_unfold_emulation(images, patch), cpu_patches(images, patch),
                     "unfold indexing " + std::to_string(shape[2]) + " / " + std::to_string(patch));
    }
}

TEST(CudaOpsHost, RopeIndexingMatchesCpu) {
    mmca::nn::rope_config config;
    std::uint64_t seed = 1200;
    for (const auto& s : std::vector<mmca_test::shape4>{{2, 5, 3, 80}, {1, 17, 2, 104}, {3, 4, 2, 8}})
        for (bool shared : {false, true}) {
            config.head_dim = static_cast<std::int64_t>(s[3]);
            const tensor4 x = mmca_test::random_tensor(s, ++seed);
            std::vector<std::int64_t> positions;
            for (std::size_t b = 0; b < (shared ? 1 : s[0]); ++b)
                for (std::size_t l = 0; l < s[1]; ++l) positions.push_back(static_cast<std::int64_t>(3 * b + l));
            const tensor4 ref = cpu_rope(x, config, positions, 64);
            EXPECT_LE(max_abs_diff(host_rope_emulation(x, config, positions, 64), ref), 1e-6 * max_abs(ref))
                << "rope indexing D=" << s[3] << (shared ? " shared positions" : "");
        }
}

TEST(CudaOpsHost, GemmArgumentsMatchLinear) {
    std::uint64_t seed = 1300;
    for (const auto& [N, in, out] : std::vector<std::array<std::size_t, 3>>{{1, 64, 33}, {7, 80, 104}, {20, 104, 9}})
        for (std::int64_t padding : {0, 3}) {
            const tensor2 x = random2(N, in, ++seed), w = random2(out, in, ++seed);
            const tensor2 ref = cpu_linear(x, w, {});
            EXPECT_LE(max_abs_diff(host_gemm_emulation(x, w, padding), ref), 1e-5 * max_abs(ref))
                << "gemm arguments N=" << N << " in=" << in << " out=" << out << " padding " << padding;
        }
}

TEST(CudaOpsHost, RoundingBound) {
    EXPECT_EQ(unit_roundoff<mmca::float16>(), 1.0 / 2048.0);
    EXPECT_EQ(unit_roundoff<mmca::bfloat16>(), 1.0 / 256.0);
    // Rounding to the type moves a value by at most u relative.
    const tensor2 x = random2(16, 104, 1400, -3.0f, 3.0f);
    EXPECT_LE(max_abs_diff(rounded<mmca::bfloat16>(x), x), unit_roundoff<mmca::bfloat16>() * max_abs(x));
    EXPECT_LE(max_abs_diff(rounded<mmca::float16>(x), x), unit_roundoff<mmca::float16>() * max_abs(x));
    EXPECT_EQ(max_abs_diff(rounded<float>(x), x), 0.0);
    // The plain bfloat16 RMSNorm is a few unit roundoffs from the float32 one, so the bound is
    // neither vacuous nor below what rounding alone causes.
    const std::vector<float> w = random_vector(104, 1401, 0.5f, 1.5f);
    const tensor2 ref = cpu_rmsnorm(x, w, 1e-5f);
    const tensor2 plain = rounded<mmca::bfloat16>(cpu_rmsnorm(rounded<mmca::bfloat16>(x), w, 1e-5f));
    const double u = unit_roundoff<mmca::bfloat16>(), scale = max_abs(ref);
    EXPECT_GT(max_abs_diff(plain, ref), 0.0);
    EXPECT_LE(max_abs_diff(plain, ref), 8.0 * u * scale);
    EXPECT_GE(error_bound<mmca::bfloat16>(ref, plain), u * scale);
    EXPECT_EQ(error_bound<float>(ref, plain), 1e-5 * scale);
}

}  // namespace
}  // namespace mmca_cuda_test
