#pragma once
// Reference row operations in double precision: the oracles the tests compare every
// kernel against. Written for reading, not for speed.
//
//   scaled_softmax(x, m)_i = exp(m x_i - M) / sum_j exp(m x_j - M),  M = max_j m x_j
//   log_sum_exp(x, m)      = M + log(sum_j exp(m x_j - M))
//
// with the library's contract for the edges: -inf entries weigh 0, a row of only -inf is
// all zeros, +inf entries share the weight, NaN anywhere makes the row NaN, and m = 0
// spreads the weight evenly over the entries that are not -inf.

#include <cmath>
#include <limits>
#include <vector>

#include "../detail/compensated_sum.hpp"
#include "../error.hpp"

namespace ssmax::reference {

/// The reference sums with Neumaier's compensation (detail::compensated_sum), so it stays
/// more accurate than the double kernels it checks, even at n = 10^6.
using detail::compensated_sum;

/// softmax(m x) of x[0, n) in double. Pre: n >= 1, m finite and >= 0.
template <class T>  // element type of the input (float or double), widened exactly
std::vector<double> scaled_softmax(const T* x, index_t n, double m) {
  const double inf = std::numeric_limits<double>::infinity();
  std::vector<double> y(static_cast<size_t>(n), 0.0);

  double x_max = -inf;
  bool has_nan = false;
  for (index_t i = 0; i < n; ++i) {
    has_nan = has_nan || std::isnan(static_cast<double>(x[i]));
    if (x[i] > x_max) x_max = x[i];
  }
  if (has_nan) return std::vector<double>(y.size(), std::numeric_limits<double>::quiet_NaN());
  if (x_max == -inf) return y;  // nothing visible: zeros

  // Which entries share the weight when it cannot be spread by exp: the +inf entries,
  // or (m = 0) every visible entry.
  if (x_max == inf || m == 0.0) {
    index_t count = 0;
    for (index_t i = 0; i < n; ++i) count += (x_max == inf ? x[i] == inf : x[i] != -inf);
    for (index_t i = 0; i < n; ++i)
      if (x_max == inf ? x[i] == inf : x[i] != -inf) y[i] = 1.0 / static_cast<double>(count);
    return y;
  }

  compensated_sum sum;
  for (index_t i = 0; i < n; ++i) {
    y[i] = std::exp(m * (static_cast<double>(x[i]) - x_max));
    sum.add(y[i]);
  }
  for (auto& w : y) w /= sum.value();
  return y;
}

/// log(sum_i exp(m x_i)) in double. Pre: n >= 1, m finite and >= 0.
template <class T>  // element type of the input (float or double), widened exactly
double log_sum_exp(const T* x, index_t n, double m) {
  const double inf = std::numeric_limits<double>::infinity();
  double x_max = -inf;
  for (index_t i = 0; i < n; ++i) {
    if (std::isnan(static_cast<double>(x[i]))) return std::numeric_limits<double>::quiet_NaN();
    if (x[i] > x_max) x_max = x[i];
  }
  if (x_max == -inf) return -inf;
  if (x_max == inf) return inf;
  if (m == 0.0) {
    index_t visible = 0;
    for (index_t i = 0; i < n; ++i) visible += x[i] != -inf;
    return std::log(static_cast<double>(visible));
  }
  compensated_sum sum;
  for (index_t i = 0; i < n; ++i) sum.add(std::exp(m * (static_cast<double>(x[i]) - x_max)));
  return m * x_max + std::log(sum.value());
}

}  // namespace ssmax::reference
