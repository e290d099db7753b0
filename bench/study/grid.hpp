#pragma once
// Sample points for the study's sweeps: integers spaced evenly on a log axis.

#include <algorithm>
#include <cmath>
#include <ssmax/error.hpp>
#include <vector>

namespace ssmax::study {

/// Integers from lo to hi (both included) with about per_decade points per factor of 10,
/// evenly spaced in log n, rounded and without duplicates, increasing.
/// Pre (checked): 1 <= lo <= hi; per_decade >= 1.
inline std::vector<index_t> log_grid(index_t lo, index_t hi, int per_decade) {
  ssmax::detail::require(lo >= 1 && lo <= hi, "log_grid", "lo", "must be in [1, hi]");
  ssmax::detail::require(per_decade >= 1, "log_grid", "per_decade", "must be >= 1");
  const double decades = std::log10(static_cast<double>(hi) / static_cast<double>(lo));
  const int steps = std::max(1, static_cast<int>(std::ceil(decades * per_decade)));
  std::vector<index_t> out;
  for (int i = 0; i <= steps; ++i) {
    const double v = static_cast<double>(lo) * std::pow(10.0, decades * i / steps);
    const index_t n = std::clamp<index_t>(static_cast<index_t>(std::llround(v)), lo, hi);
    if (out.empty() || n > out.back()) out.push_back(n);
  }
  if (out.back() != hi) out.push_back(hi);
  return out;
}

/// lo, 2 lo, 4 lo, ... up to hi (included when a power-of-two multiple of lo).
/// Pre (checked): 1 <= lo <= hi.
inline std::vector<index_t> doubling_grid(index_t lo, index_t hi) {
  ssmax::detail::require(lo >= 1 && lo <= hi, "doubling_grid", "lo", "must be in [1, hi]");
  std::vector<index_t> out;
  for (index_t n = lo; n <= hi; n *= 2) out.push_back(n);
  return out;
}

}  // namespace ssmax::study
