#pragma once
// Comparing a row kernel's output with the double reference, under the error bound that
// kernels/row_softmax.hpp states. The bound is derived, not tuned:
//   |y_i - r_i| <= eps * r_i * (exp_ulp + 4 + sum_ulp + 2 E[|t|] + 2 |t_i|) + 2 n min_normal
// where r is the reference, t_i = m (x_i - max) the exp argument, E[|t|] = sum_i r_i |t_i|
// (the sum's error is the weighted mean of its terms' errors), sum_ulp the blocked
// summation bound, exp_ulp the exp bound of tests/test_exp.cpp, 4 ulp for forming the
// argument's and the multiplier's roundings and the final scaling, and the last term the
// weights below n min_normal that the kernel flushes to 0 (kernels::flush_threshold).

#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <ssmax/detail/simd.hpp>
#include <ssmax/kernels/row_softmax.hpp>
#include <vector>

namespace ssmax::testing {

/// exp's bound in ulp, as tests/test_exp.cpp asserts it.
inline constexpr double kExpUlp = 2.0;

/// The blocked summation's relative error bound in ulp for a vector of `width` lanes.
inline double sum_ulp(index width) {
  return static_cast<double>(kernels::kLanesPerBlock) + std::log2(4.0 * width) + 2.0;
}

/// E[|t|] = sum_i r_i |t_i|: the mean exp argument under the reference weights r.
template <class T>  // float or double
double mean_abs_argument(const T* x, index n, double m, const std::vector<double>& r) {
  double x_max = -std::numeric_limits<double>::infinity();
  for (index k = 0; k < n; ++k) x_max = std::max(x_max, static_cast<double>(x[k]));
  double mean = 0.0;
  for (index i = 0; i < n; ++i) {
    const double t = m * (static_cast<double>(x[i]) - x_max);
    if (std::isfinite(t) && r[i] > 0) mean += r[i] * std::abs(t);
  }
  return mean;
}

/// Expects kernel output y (T) to match the reference r (double) for input x and
/// multiplier m within the bound above. Returns the largest error seen, in units of the
/// bound (<= 1 passes), for reporting.
template <class T>  // float or double
double expect_row_matches(const T* x, index n, double m, const T* y, const std::vector<double>& r,
                          index width, const char* what) {
  const double eps = std::numeric_limits<T>::epsilon();
  double x_max = -std::numeric_limits<double>::infinity();
  for (index i = 0; i < n; ++i) x_max = std::max(x_max, static_cast<double>(x[i]));
  auto arg = [&](index i) {
    const double t = m * (static_cast<double>(x[i]) - x_max);
    return std::isfinite(t) ? std::abs(t) : 0.0;  // -inf entries have r_i = 0 exactly
  };
  const double mean_t = mean_abs_argument(x, n, m, r);

  double worst = 0.0;
  index failures = 0;
  for (index i = 0; i < n; ++i) {
    const double bound =
        eps * r[i] * (kExpUlp + 4.0 + sum_ulp(width) + 2.0 * mean_t + 2.0 * arg(i)) +
        2.0 * static_cast<double>(n) * static_cast<double>(std::numeric_limits<T>::min());
    const double err = std::abs(static_cast<double>(y[i]) - r[i]);
    if (!(err <= bound) && failures++ < 5)
      ADD_FAILURE() << what << ": y[" << i << "] = " << y[i] << ", reference " << r[i] << ", error "
                    << err << " > bound " << bound << " (n = " << n << ", m = " << m << ")";
    worst = std::max(worst, err / bound);
  }
  return worst;
}

}  // namespace ssmax::testing
