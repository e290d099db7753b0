#pragma once
// Threading helpers: OpenMP when the consumer compiles with it (_OPENMP), a plain serial
// loop otherwise. Work items never depend on which thread runs them, so results are
// bitwise identical for any thread count.

#include <algorithm>
#include <atomic>
#include <exception>

#include "../error.hpp"

#ifdef _OPENMP
#include <omp.h>
#endif

namespace ssmax::detail {

/// The largest options.threads a public call accepts (attention.hpp validates it): far
/// above any machine's cores, low enough that per-thread scratch cannot explode.
inline constexpr int kMaxThreads = 4096;

/// Threads a call asking for `requested` (0 = all available) will use: at most what the
/// OpenMP runtime can run (omp_get_thread_limit), 1 without OpenMP. Pre: requested in
/// [0, kMaxThreads].
inline int resolve_threads(int requested) {
#ifdef _OPENMP
  const int available = omp_get_max_threads();
  return std::max(1, std::min(requested > 0 ? requested : available, omp_get_thread_limit()));
#else
  (void)requested;
  return 1;
#endif
}

/// Threads worth starting for `work` independent items: min(threads, work), at least 1.
/// Plans carve per-thread scratch for this many threads only.
inline int threads_for(int threads, index_t work) {
  return static_cast<int>(std::max<index_t>(1, std::min<index_t>(threads, work)));
}

/// Runs body(item, thread) for item in [0, count) on `threads` threads (thread in
/// [0, threads_for(threads, count))), items handed out one at a time in order. An exception
/// thrown by body (a user policy's multiplier() is called inside the kernels) never
/// escapes a parallel region, which would terminate the program: the first one is kept,
/// the items not yet started are skipped, and it is rethrown here once every thread has
/// stopped (outputs may then be partly written).
template <class Body>  // callable as body(index item, int thread)
void parallel_for(index_t count, int threads, Body&& body) {
  threads = threads_for(threads, count);
#ifdef _OPENMP
  if (threads > 1 && count > 1) {
    std::exception_ptr error;
    std::atomic<bool> failed{false};
#pragma omp parallel for schedule(dynamic, 1) num_threads(threads)
    for (index_t item = 0; item < count; ++item) {
      if (failed.load(std::memory_order_relaxed)) continue;
      try {
        body(item, omp_get_thread_num());
      } catch (...) {
#pragma omp critical(ssmax_parallel_for_error)
        if (!error) error = std::current_exception();
        failed.store(true, std::memory_order_relaxed);
      }
    }
    if (error) std::rethrow_exception(error);
    return;
  }
#else
  (void)threads;
#endif
  for (index_t item = 0; item < count; ++item) body(item, 0);
}

}  // namespace ssmax::detail
