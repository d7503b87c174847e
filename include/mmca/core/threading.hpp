// mmca/core/threading.hpp - the one place where mmca starts parallel work.
//
// Work is spread over OpenMP threads when the library is compiled with OpenMP
// (the CMake target mmca::mmca adds it when available) and runs serially otherwise.
#pragma once

#include <cstdint>

#if defined(_OPENMP)
#include <omp.h>
#endif

namespace mmca {

/// Number of threads a call with num_threads = 0 uses.
inline int default_num_threads() {
#if defined(_OPENMP)
    return omp_get_max_threads();
#else
    return 1;
#endif
}

/// Resolves a user's thread request: 0 means "the default", anything else is clamped to >= 1.
inline int resolve_num_threads(int requested) {
    return requested <= 0 ? default_num_threads() : requested;
}

/// Calls body(item, thread_index) for item in [0, count), spread over num_threads threads
/// with dynamic scheduling (work items of attention differ in cost: causal tiles near the
/// end of a sequence see more keys than those at the start).
template <class Body>
void parallel_for(std::int64_t count, int num_threads, Body&& body) {
    const int threads = resolve_num_threads(num_threads);
#if defined(_OPENMP)
    if (threads > 1 && count > 1) {
#pragma omp parallel for schedule(dynamic, 1) num_threads(threads)
        for (std::int64_t i = 0; i < count; ++i) body(i, omp_get_thread_num());
        return;
    }
#endif
    (void)threads;
    for (std::int64_t i = 0; i < count; ++i) body(i, 0);
}

}  // namespace mmca
