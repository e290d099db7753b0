#pragma once
// Reference row operations in double precision: the oracles the tests compare every
// kernel against. Written for reading, not for speed.
//
//   scaled_softmax(x, m)_i = exp(m x_i - M) / sum_j exp(m x_j - M),  M = max_j m x_j
//   log_sum_exp(x, m)      = M + log(sum_j exp(m x_j - M))
//
// with the library's contract for the edges: -inf entries weigh 0, a row of only -inf is
// all zeros, +inf entries share the weight, NaN anywhere makes the row NaN, and m = 0
// spreads the weight evenly over the entries that are not -inf. A negative m is softmax over
// m x_i of the entries that are not -inf: -inf entries are masked whatever the sign of m.

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "../detail/compensated_sum.hpp"
#include "../error.hpp"

namespace ssmax::reference {

/// The reference sums with Neumaier's compensation (detail::compensated_sum), so it stays
/// more accurate than the double kernels it checks, even at n = 10^6.
using detail::compensated_sum;

/// The entry of x[0, n) whose m x_i is largest among those that are not -inf (masked
/// whatever the sign of m): the largest for m > 0, the smallest for m < 0; -inf when every
/// entry is -inf. Pre: m != 0, no NaN. (With m < 0 a row whose visible entries are all
/// +inf has m x = -inf everywhere: zeros and lse -inf, as the kernels give.)
template <class T>  // element type of the input (float or double), widened exactly
double pivot_entry(const T* x, index_t n, double m) {
  const double inf = std::numeric_limits<double>::infinity();
  double best = -inf;
  for (index_t i = 0; i < n; ++i) {
    const double xi = static_cast<double>(x[i]);
    if (xi != -inf && (best == -inf || (m > 0.0 ? xi > best : xi < best))) best = xi;
  }
  return best;
}

/// m (x_i - pivot) for an entry that is not -inf (exact zero at the pivot, no offset
/// cancelling), -inf for a -inf entry.
inline double shifted_entry(double xi, double pivot, double m) {
  const double inf = std::numeric_limits<double>::infinity();
  return xi == -inf ? -inf : m * (xi - pivot);
}

/// softmax(m x) of x[0, n) in double. Pre: n >= 1, m finite (any sign).
template <class T>  // element type of the input (float or double), widened exactly
std::vector<double> scaled_softmax(const T* x, index_t n, double m) {
  const double inf = std::numeric_limits<double>::infinity();
  std::vector<double> y(static_cast<size_t>(n), 0.0);

  bool has_nan = false;
  for (index_t i = 0; i < n; ++i) has_nan = has_nan || std::isnan(static_cast<double>(x[i]));
  if (has_nan) return std::vector<double>(y.size(), std::numeric_limits<double>::quiet_NaN());

  // m = 0 spreads the weight over the entries that are not -inf (unless one is +inf).
  if (m == 0.0) {
    index_t top = 0, count = 0;
    for (index_t i = 0; i < n; ++i) top += x[i] == inf, count += x[i] != -inf;
    for (index_t i = 0; i < n; ++i)
      if (top > 0 ? x[i] == inf : x[i] != -inf)
        y[i] = 1.0 / static_cast<double>(top > 0 ? top : count);
    return y;
  }
  const double pivot = pivot_entry(x, n, m);
  // Nothing visible (or m < 0 and only +inf entries: m x = -inf everywhere). A finite pivot
  // never empties the row: its own shifted entry is exactly 0.
  if (pivot == -inf || (std::isinf(pivot) && m * pivot == -inf)) return y;
  if (std::isinf(pivot)) {  // m > 0, x_pivot = +inf: the +inf entries share the weight
    index_t count = 0;
    for (index_t i = 0; i < n; ++i) count += x[i] == pivot;
    for (index_t i = 0; i < n; ++i)
      if (x[i] == pivot) y[i] = 1.0 / static_cast<double>(count);
    return y;
  }
  compensated_sum sum;
  for (index_t i = 0; i < n; ++i) {
    y[i] = std::exp(shifted_entry(static_cast<double>(x[i]), pivot, m));
    sum.add(y[i]);
  }
  for (auto& w : y) w /= sum.value();
  return y;
}

/// log(sum_i exp(m x_i)) in double over the entries that are not -inf. Pre: n >= 1, m
/// finite (any sign).
template <class T>  // element type of the input (float or double), widened exactly
double log_sum_exp(const T* x, index_t n, double m) {
  const double inf = std::numeric_limits<double>::infinity();
  for (index_t i = 0; i < n; ++i)
    if (std::isnan(static_cast<double>(x[i]))) return std::numeric_limits<double>::quiet_NaN();
  if (m == 0.0) {
    index_t visible = 0, top = 0;
    for (index_t i = 0; i < n; ++i) visible += x[i] != -inf, top += x[i] == inf;
    if (top > 0) return inf;
    return visible > 0 ? std::log(static_cast<double>(visible)) : -inf;
  }
  const double pivot = pivot_entry(x, n, m);
  if (std::isinf(pivot)) return pivot == -inf ? -inf : m * pivot;  // none visible / +-inf
  compensated_sum sum;
  for (index_t i = 0; i < n; ++i)
    sum.add(std::exp(shifted_entry(static_cast<double>(x[i]), pivot, m)));
  return m * pivot + std::log(sum.value());
}

}  // namespace ssmax::reference
