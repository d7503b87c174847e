// tests/cuda/test_cuda_errors.cpp - what the CUDA entry points refuse, and how: can_implement
// answers with a status, initialize throws mmca::invalid_argument naming the argument (the same
// checks as the CPU entry points). Without a CUDA device every test is skipped.
#include "attention_test_util.hpp"
#include "cuda_test_support.hpp"

#include <gtest/gtest.h>

#include <string>
#include <vector>

namespace mmca_cuda_test {
namespace {

struct small_problem {
    tensor4 q, k, v;
    mmca_test::owned_tokens tokens;
};

small_problem make_small(std::size_t Hq, std::size_t Hkv, std::size_t D, std::size_t Lq, std::size_t Lk) {
    std::vector<mmca_test::token_sequence> seqs{
        mmca_test::make_pattern(mmca_test::pattern_kind::interleaved, static_cast<int>(Lk), 5)};
    return {mmca_test::random_tensor({1, Hq, Lq, D}, 1), mmca_test::random_tensor({1, Hkv, Lk, D}, 2),
            mmca_test::random_tensor({1, Hkv, Lk, D}, 3), mmca_test::owned_tokens(seqs, Lk, true)};
}

TEST(CudaErrors, CanImplementAnswersWithAStatus) {
    MMCA_REQUIRE_GPU();
    const auto options = mmca_test::all_variants()[1].options();
    {
        const small_problem p = make_small(4, 2, 64, 20, 20);
        EXPECT_EQ(can_implement<mmca::bfloat16>(p.q, p.k, p.v, p.tokens.layout(), options, kernel_choice::tiled),
                  "success");
        EXPECT_EQ(can_implement<float>(p.q, p.k, p.v, p.tokens.layout(), options, kernel_choice::automatic), "success");
    }
    {
        const small_problem p = make_small(2, 1, 256, 10, 10);
        EXPECT_EQ(can_implement<mmca::float16>(p.q, p.k, p.v, p.tokens.layout(), options, kernel_choice::tiled),
                  "unsupported_layout");
        EXPECT_EQ(can_implement<mmca::float16>(p.q, p.k, p.v, p.tokens.layout(), options, kernel_choice::rows),
                  "success");
    }
    {
        const small_problem p = make_small(3, 2, 64, 10, 10);  // 3 query heads over 2 kv heads
        EXPECT_EQ(can_implement<float>(p.q, p.k, p.v, p.tokens.layout(), options, kernel_choice::automatic),
                  "invalid_argument");
    }
}

TEST(CudaErrors, InitializeNamesTheArgument) {
    MMCA_REQUIRE_GPU();
    const auto options = mmca_test::all_variants()[0].options();
    {
        const small_problem p = make_small(3, 2, 64, 10, 10);
        const std::string e = initialize_error<float>(p.q, p.k, p.v, p.tokens.layout(), options);
        EXPECT_NE(e.find("mmca::cuda::attention_forward"), std::string::npos) << e;
        EXPECT_NE(e.find("'k'"), std::string::npos) << e;
    }
    {
        // Token types of the wrong length.
        const small_problem p = make_small(2, 2, 64, 10, 10);
        const small_problem other = make_small(2, 2, 64, 12, 12);
        const std::string e = initialize_error<mmca::bfloat16>(p.q, p.k, p.v, other.tokens.layout(), options);
        EXPECT_NE(e.find("'token_types'"), std::string::npos) << e;
    }
    {
        // A type value out of range.
        small_problem p = make_small(2, 2, 64, 10, 10);
        p.tokens.types(0, 3) = 7;
        const std::string e = initialize_error<float>(p.q, p.k, p.v, p.tokens.layout(), options);
        EXPECT_NE(e.find("'token_types'"), std::string::npos) << e;
    }
    {
        // The tiled kernel asked for where it cannot run.
        const small_problem p = make_small(2, 1, 256, 10, 10);
        const std::string e =
            initialize_error<float>(p.q, p.k, p.v, p.tokens.layout(), options, kernel_choice::tiled);
        EXPECT_NE(e.find("'config.kernel'"), std::string::npos) << e;
    }
    {
        const small_problem p = make_small(2, 2, 64, 10, 10);
        EXPECT_EQ(initialize_error<float>(p.q, p.k, p.v, p.tokens.layout(), options), "");
    }
}

}  // namespace
}  // namespace mmca_cuda_test
