// tests/cuda/test_cuda_decode.cpp - the device KV cache: prefill, chunked prefill and token-by-token
// decoding give the rows of one full prefill (computed by the CPU reference), except rows that by
// their variant see keys that are not yet present (SPEC §2.3 / §2.4; mmca_test::row_sees_beyond).
// Without a CUDA device every test is skipped.
#include "attention_test_util.hpp"
#include "cuda_test_cases.hpp"
#include "cuda_test_support.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <string>
#include <tuple>
#include <vector>

namespace mmca_cuda_test {
namespace {

using mmca_test::all_close;

struct decode_data {
    std::size_t B, Hq, Hkv, D, L;
    std::vector<mmca_test::token_sequence> seqs;  // one per sequence, each of length L
    tensor4 q, k, v;                              // full-sequence tensors
};

decode_data make_decode_data(std::size_t B, std::size_t Hq, std::size_t Hkv, std::size_t D, std::size_t L,
                             std::uint64_t seed) {
    decode_data d{B, Hq, Hkv, D, L, {}, {}, {}, {}};
    const pattern_kind kinds[] = {pattern_kind::interleaved, pattern_kind::leading_image,
                                  pattern_kind::consecutive_images};
    for (std::size_t b = 0; b < B; ++b)
        d.seqs.push_back(mmca_test::make_pattern(kinds[(b + seed) % 3], static_cast<int>(L), seed * 17 + b));
    d.q = mmca_test::random_tensor({B, Hq, L, D}, seed * 5 + 1);
    d.k = mmca_test::random_tensor({B, Hkv, L, D}, seed * 5 + 2);
    d.v = mmca_test::random_tensor({B, Hkv, L, D}, seed * 5 + 3);
    return d;
}

/// Rows [t0, t0 + n) of every (b, h) of a (B, H, L, D) tensor.
tensor4 slice_rows(const tensor4& t, std::size_t t0, std::size_t n) { return mmca_test::rows_of(t, t0, n); }

template <class S>
void check_chunks(const variant_spec& variant, const std::vector<std::size_t>& chunks, kernel_choice kernel,
                  int splits) {
    const decode_data d = make_decode_data(2, 4, 2, 64, 150, 3);
    const tensor4 q = rounded<S>(d.q), k = rounded<S>(d.k), v = rounded<S>(d.v);
    // The full prefill on the CPU (reference implementation, on the values the GPU sees).
    mmca_test::owned_tokens full_tokens(d.seqs, d.L, true);
    const auto options = variant.options();
    const tensor4 full = mmca::attention(q, k, v, full_tokens.layout(), options, mmca::attention_impl::reference);

    device_cache<S> cache(static_cast<std::int64_t>(d.B), static_cast<std::int64_t>(d.Hkv),
                          static_cast<std::int64_t>(d.L), static_cast<std::int64_t>(d.D));
    std::size_t t0 = 0;
    for (std::size_t n : chunks) {
        n = std::min(n, d.L - t0);
        if (n == 0) break;
        mmca::tensor<std::int8_t, 2> types(std::array<std::size_t, 2>{d.B, n});
        mmca::tensor<std::int32_t, 2> ids(std::array<std::size_t, 2>{d.B, n});
        for (std::size_t b = 0; b < d.B; ++b)
            for (std::size_t i = 0; i < n; ++i) {
                types(b, i) = d.seqs[b].types[t0 + i];
                ids(b, i) = d.seqs[b].ids[t0 + i];
            }
        cache.append(slice_rows(k, t0, n), slice_rows(v, t0, n), types, &ids);
        run_options run;
        run.kernel = kernel;
        run.splits = splits;
        const tensor4 out = cache.attend(slice_rows(q, t0, n), options, run);
        for (std::size_t b = 0; b < d.B; ++b)
            for (std::size_t i = 0; i < n; ++i) {
                const std::size_t t = t0 + i;
                if (mmca_test::row_sees_beyond(variant, d.seqs[b].types, d.L, t, t0 + n)) continue;
                const tensor4 got = mmca_test::row_of(out, b, i), want = mmca_test::row_of(full, b, t);
                if constexpr (std::is_same_v<S, float>) {
                    ASSERT_TRUE(all_close(got, want, 1e-5)) << "sequence " << b << " position " << t;
                } else {
                    // One row: at most a few units of the type's roundoff of the output size.
                    const double tol = 8.0 * unit_roundoff(std::is_same_v<S, mmca::float16> ? dtype_kind::f16
                                                                                             : dtype_kind::bf16);
                    ASSERT_TRUE(all_close(got, want, tol)) << "sequence " << b << " position " << t;
                }
            }
        t0 += n;
    }
    EXPECT_EQ(cache.length(0), static_cast<std::int64_t>(t0));
}

class CudaDecode : public ::testing::TestWithParam<std::tuple<variant_spec, dtype_kind>> {};

TEST_P(CudaDecode, PromptThenTokenByToken) {
    MMCA_REQUIRE_GPU();
    const auto& [variant, dt] = GetParam();
    std::vector<std::size_t> chunks{70};
    chunks.resize(chunks.size() + 80, 1);
    for (kernel_choice kernel : {kernel_choice::automatic, kernel_choice::rows}) {
        SCOPED_TRACE(kernel_name(kernel));
        if (dt == dtype_kind::f32)
            check_chunks<float>(variant, chunks, kernel, kernel == kernel_choice::rows ? 3 : 0);
        else
            check_chunks<mmca::bfloat16>(variant, chunks, kernel, kernel == kernel_choice::rows ? 3 : 0);
    }
}

TEST_P(CudaDecode, ChunkedPrefill) {
    MMCA_REQUIRE_GPU();
    const auto& [variant, dt] = GetParam();
    const std::vector<std::size_t> chunks{37, 1, 64, 5, 43};
    for (kernel_choice kernel : {kernel_choice::tiled, kernel_choice::rows}) {
        SCOPED_TRACE(kernel_name(kernel));
        if (dt == dtype_kind::f32)
            check_chunks<float>(variant, chunks, kernel, 0);
        else
            check_chunks<mmca::bfloat16>(variant, chunks, kernel, 0);
    }
}

INSTANTIATE_TEST_SUITE_P(Cases, CudaDecode,
                         ::testing::Combine(::testing::ValuesIn(mmca_test::all_variants()),
                                            ::testing::Values(dtype_kind::f32, dtype_kind::bf16)),
                         [](const auto& info) {
                             return std::get<0>(info.param).name() + "_" + dtype_name(std::get<1>(info.param));
                         });

TEST(CudaDecodeBatch, SequencesOfDifferentLengths) {
    MMCA_REQUIRE_GPU();
    // Sequence 0 takes a 50-token prompt, sequence 1 a 20-token prompt (lens), then both decode.
    const decode_data d = make_decode_data(2, 4, 1, 128, 80, 9);
    const variant_spec variant = mmca_test::all_variants()[1];  // mmca
    const auto options = variant.options();
    device_cache<float> cache(2, 1, 80, 128);
    const std::size_t prompt[2] = {50, 20};
    mmca::tensor<std::int8_t, 2> types(std::array<std::size_t, 2>{2, 50});
    mmca::tensor<std::int32_t, 2> ids(std::array<std::size_t, 2>{2, 50});
    mmca::tensor<std::int32_t, 1> lens(std::array<std::size_t, 1>{2});
    types.fill(0);
    ids.fill(-1);
    for (std::size_t b = 0; b < 2; ++b) {
        lens(b) = static_cast<std::int32_t>(prompt[b]);
        for (std::size_t i = 0; i < prompt[b]; ++i) {
            types(b, i) = d.seqs[b].types[i];
            ids(b, i) = d.seqs[b].ids[i];
        }
    }
    cache.append(slice_rows(d.k, 0, 50), slice_rows(d.v, 0, 50), types, &ids, &lens);
    EXPECT_EQ(cache.length(0), 50);
    EXPECT_EQ(cache.length(1), 20);
    // One decode step: token prompt[b] of each sequence.
    tensor4 k1(std::array<std::size_t, 4>{2, 1, 1, 128}), v1(k1.shape()), q1(std::array<std::size_t, 4>{2, 4, 1, 128});
    mmca::tensor<std::int8_t, 2> t1(std::array<std::size_t, 2>{2, 1});
    mmca::tensor<std::int32_t, 2> i1(std::array<std::size_t, 2>{2, 1});
    for (std::size_t b = 0; b < 2; ++b) {
        for (std::size_t x = 0; x < 128; ++x) {
            k1(b, 0, 0, x) = d.k(b, 0, prompt[b], x);
            v1(b, 0, 0, x) = d.v(b, 0, prompt[b], x);
            for (std::size_t h = 0; h < 4; ++h) q1(b, h, 0, x) = d.q(b, h, prompt[b], x);
        }
        t1(b, 0) = d.seqs[b].types[prompt[b]];
        i1(b, 0) = d.seqs[b].ids[prompt[b]];
    }
    cache.append(k1, v1, t1, &i1);
    const tensor4 out = cache.attend(q1, options);
    for (std::size_t b = 0; b < 2; ++b) {
        std::vector<mmca_test::token_sequence> one{d.seqs[b]};
        one[0].types.resize(prompt[b] + 1);
        one[0].ids.resize(prompt[b] + 1);
        mmca_test::owned_tokens tokens(one, prompt[b] + 1, true);
        tensor4 qb(std::array<std::size_t, 4>{1, 4, prompt[b] + 1, 128});
        tensor4 kb(std::array<std::size_t, 4>{1, 1, prompt[b] + 1, 128}), vb(kb.shape());
        for (std::size_t t = 0; t <= prompt[b]; ++t)
            for (std::size_t x = 0; x < 128; ++x) {
                kb(0, 0, t, x) = d.k(b, 0, t, x);
                vb(0, 0, t, x) = d.v(b, 0, t, x);
                for (std::size_t h = 0; h < 4; ++h) qb(0, h, t, x) = d.q(b, h, t, x);
            }
        const tensor4 full = mmca::attention(qb, kb, vb, tokens.layout(), options, mmca::attention_impl::reference);
        EXPECT_TRUE(all_close(mmca_test::row_of(out, b, 0), mmca_test::row_of(full, 0, prompt[b]), 1e-5))
            << "sequence " << b;
    }
}

}  // namespace
}  // namespace mmca_cuda_test
