// benchmarks/fma_peak.hpp - the fp32 FMA peak of this machine, the yardstick of the GEMM-bound benchmarks.
//
//   double gflops = mmca_bench::fma_peak(threads);
//
// Ten independent chains of 8-wide fused multiply-adds per thread, from registers only (no memory
// traffic): the most fp32 FLOP/s the cores can retire. Best of three runs of 50M iterations.
// Returns 0 where the compiler does not target AVX2 + FMA.
#pragma once

#include <algorithm>
#include <chrono>
#include <cstdio>

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#endif

namespace mmca_bench {

/// GFLOP/s of independent FMA chains in registers on `threads` threads.
inline double fma_peak(int threads) {
#if defined(__AVX2__) && defined(__FMA__)
    using clock_type = std::chrono::steady_clock;
    const long iters = 50'000'000;
    double best = 0;
    for (int rep = 0; rep < 3; ++rep) {
        const auto t0 = clock_type::now();
        float sink = 0;
#pragma omp parallel num_threads(threads) reduction(+ : sink)
        {
            __m256 a[10];
            for (int i = 0; i < 10; ++i) a[i] = _mm256_set1_ps(1.0f + 1e-7f * i);
            const __m256 m = _mm256_set1_ps(0.9999999f), c = _mm256_set1_ps(1e-7f);
            for (long it = 0; it < iters; ++it)
                for (int i = 0; i < 10; ++i) a[i] = _mm256_fmadd_ps(a[i], m, c);
            float tmp[8];
            __m256 s = a[0];
            for (int i = 1; i < 10; ++i) s = _mm256_add_ps(s, a[i]);
            _mm256_storeu_ps(tmp, s);
            sink += tmp[0];
        }
        const double t = std::chrono::duration<double>(clock_type::now() - t0).count();
        if (sink == 12345.0f) std::printf(" ");
        best = std::max(best, double(threads) * iters * 10 * 16 / t / 1e9);
    }
    return best;
#else
    (void)threads;
    return 0.0;
#endif
}

}  // namespace mmca_bench
