#pragma once
// Comparing a row kernel's output with the double reference, under the error bound that
// kernels/row_softmax.hpp states and support/row_bound.hpp defines (derived, not tuned).

#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <ssmax/detail/simd.hpp>
#include <ssmax/kernels/row_softmax.hpp>
#include <vector>

#include "row_bound.hpp"

namespace ssmax::testing {

/// Expects kernel output y (T) to match the reference r (double) for input x and
/// multiplier m within row_bound (support/row_bound.hpp). Returns the largest error seen, in units
/// of the bound (<= 1 passes), for reporting.
template <class T>  // float or double
double expect_row_matches(const T* x, index_t n, double m, const T* y, const std::vector<double>& r,
                          index_t width, const char* what) {
  const row_bound<T> bound_of(x, n, m, r, width);
  double worst = 0.0;
  index_t failures = 0;
  for (index_t i = 0; i < n; ++i) {
    const double bound = bound_of(i);
    const double err = std::abs(static_cast<double>(y[i]) - r[i]);
    if (!(err <= bound) && failures++ < 5)
      ADD_FAILURE() << what << ": y[" << i << "] = " << y[i] << ", reference " << r[i] << ", error "
                    << err << " > bound " << bound << " (n = " << n << ", m = " << m << ")";
    worst = std::max(worst, err / bound);
  }
  return worst;
}

}  // namespace ssmax::testing
