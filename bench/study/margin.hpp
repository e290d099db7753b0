#pragma once
// Study table 3, the view of the paper's Figure 3: how far ahead of the others a key must
// be to receive half of the attention. The row holds n - 1 logits equal to 0 and one equal
// to D; under a multiplier m the lone key's weight is
//   w(D) = 1 / (1 + (n - 1) exp(-m D)),
// which is 1/2 at D* = log(n - 1) / m. Softmax (m = 1) needs D* = log(n - 1), growing like
// log n; SSMax (m = s log n) needs log(n - 1) / (s log n), which tends to 1/s.
//
// The study does not use that formula: it finds D* by bisection, each probe a row that the
// library's policy_softmax computes, so the table shows what the kernels do. The tests
// compare it with the closed form.

#include <cmath>
#include <ssmax/analysis.hpp>
#include <ssmax/softmax.hpp>
#include <vector>

namespace ssmax::study {

/// The exact margin log(n - 1) / m for a row of length n >= 2 under multiplier m > 0.
inline double half_attention_margin_closed_form(index_t n, double m) {
  return std::log(static_cast<double>(n - 1)) / m;
}

/// The margin D at which the library gives one key, ahead of n - 1 keys at 0 by D, weight
/// 1/2 under `policy` (a row that sees all n keys: position n - 1, head 0).
///
/// Bisection on D in precision T until the bracket [lo, hi] (weight(lo) < 1/2 <=
/// weight(hi), as computed) has no T between its ends; returns its midpoint. When every
/// computed weight is within delta of the exact one, the exact D* is within
/// (hi - lo) / 2 + delta / (0.24 m) of the result (w'(D) = m w (1 - w) >= 0.24 m for
/// w in [0.4, 0.6]).
/// Pre (checked): n >= 2; the policy's multiplier at n is finite and > 0.
template <class T,       // float or double: the precision of the rows
          class Policy>  // a length policy (length_policy.hpp)
double half_attention_margin(const Policy& policy, index_t n) {
  constexpr const char* fn = "half_attention_margin";
  ssmax::detail::require(n >= 2, fn, "n", "must be >= 2 (one key alone always gets weight 1)");
  const double m = policy.multiplier({n, n - 1, 0});
  ssmax::detail::require(std::isfinite(m) && m > 0.0, fn, "policy",
                         "must give a finite multiplier > 0 at this n");
  std::vector<T> x(static_cast<size_t>(n), T(0)), y(x.size());
  auto weight = [&](T d) {
    x.back() = d;
    policy_softmax(policy, x.data(), y.data(), n);
    return weight_on(y.data(), n, n - 1);
  };
  T lo = T(0), hi = T(1);
  if (weight(lo) >= T(0.5)) return 0.0;  // n = 2: no margin needed
  while (weight(hi) < T(0.5)) {
    lo = hi;
    hi *= T(2);
  }
  for (int i = 0; i < 200; ++i) {
    const T mid = lo + (hi - lo) / T(2);
    if (mid <= lo || mid >= hi) break;  // no T strictly between: converged
    (weight(mid) < T(0.5) ? lo : hi) = mid;
  }
  return 0.5 * (static_cast<double>(lo) + static_cast<double>(hi));
}

}  // namespace ssmax::study
