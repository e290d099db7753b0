#pragma once
// Reference row backward in double precision: the oracle the row backward kernels are
// compared with, itself checked against central finite differences in
// tests/test_row_backward.cpp. Written for reading, not for speed.
//
// p = softmax(m z) over a row of n logits z, upstream g = dL/dp (../shared/PAPER.md
// section 5):
//   c = sum_j p_j g_j,   dL/dy_i = p_i (g_i - c),   dL/dz_i = m dL/dy_i,
//   dL/dm = sum_i z_i dL/dy_i = sum_i p_i (z_i - zbar) (g_i - c),   zbar = sum_j p_j z_j.
// The two forms of dL/dm agree when sum p = 1; the second is used because it does not
// cancel when the logits share a large offset. Entries with p_i = 0 (masked, z_i = -inf)
// contribute 0.

#include <cmath>
#include <vector>

#include "../detail/compensated_sum.hpp"
#include "../error.hpp"
#include "softmax.hpp"

namespace ssmax::reference {

/// What the row backward produces.
struct row_backward_result {
  std::vector<double> dz;     ///< dL/dz_i, n entries
  double d_multiplier = 0.0;  ///< dL/dm (0 when z was not given)
};

/// Backward from given weights p (double or widened from T), logits z (nullptr: dL/dm is
/// not computed) and upstream g. Pre: n >= 1, m finite.
template <class P,  // element type of p (float or double), widened exactly
          class T>  // element type of z and g (float or double), widened exactly
row_backward_result softmax_backward_from_weights(const P* p, const T* z, const T* g, index_t n,
                                                  double m) {
  compensated_sum c_sum, zbar_sum;
  for (index_t j = 0; j < n; ++j) {
    if (p[j] == 0) continue;
    c_sum.add(static_cast<double>(p[j]) * static_cast<double>(g[j]));
    if (z != nullptr) zbar_sum.add(static_cast<double>(p[j]) * static_cast<double>(z[j]));
  }
  const double c = c_sum.value(), zbar = zbar_sum.value();

  row_backward_result r;
  r.dz.assign(static_cast<size_t>(n), 0.0);
  compensated_sum dm;
  for (index_t i = 0; i < n; ++i) {
    if (p[i] == 0) continue;
    const double dy = static_cast<double>(p[i]) * (static_cast<double>(g[i]) - c);
    r.dz[static_cast<size_t>(i)] = m * dy;
    if (z != nullptr) dm.add(dy * (static_cast<double>(z[i]) - zbar));
  }
  r.d_multiplier = dm.value();
  return r;
}

/// Backward of p = softmax(m z) with p recomputed in double from z (reference::
/// scaled_softmax: -inf entries weigh 0, a row of only -inf gives zeros).
/// Pre: n >= 1, m finite (any sign), z finite or -inf.
template <class T>  // element type of z and g (float or double), widened exactly
row_backward_result scaled_softmax_backward(const T* z, const T* g, index_t n, double m) {
  const std::vector<double> p = scaled_softmax(z, n, m);
  return softmax_backward_from_weights(p.data(), z, g, n, m);
}

}  // namespace ssmax::reference
