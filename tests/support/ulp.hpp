#pragma once
// Error measures in units in the last place of the element type.

#include <cmath>
#include <limits>

namespace ssmax::testing {

/// Spacing of T at the magnitude of `exact` (for subnormal results, the smallest spacing).
template <class T>  // float or double
double ulp_of(double exact) {
  const double a = std::abs(exact);
  const double smallest = std::numeric_limits<T>::denorm_min();
  if (a < std::numeric_limits<T>::min()) return smallest;
  int e = 0;
  std::frexp(a, &e);  // a = f * 2^e with f in [0.5, 1)
  return std::ldexp(1.0, e - std::numeric_limits<T>::digits);
}

/// |computed - exact| in ulp of T at exact.
template <class T>  // float or double
double ulp_error(T computed, long double exact) {
  return static_cast<double>(std::abs(static_cast<long double>(computed) - exact)) /
         ulp_of<T>(static_cast<double>(exact));
}

}  // namespace ssmax::testing
