#pragma once
// Study table 1, the paper's Figure 1: a row of n logits, every one -2 except the last,
// +3 (a gap of 5), and the largest output of Softmax and of SSMax (s = 0.43) against n.
// Softmax's falls towards 0 as n grows (the attention "fades"); SSMax's stays near 1.
//
// Closed form (the check the tests run): with multiplier m, the last entry's weight is
//   w(n, m) = 1 / (1 + (n - 1) exp(-5 m)),   m = 1 (Softmax) or s log n (SSMax),
// and it is the largest output whenever m > 0.

#include <cmath>
#include <ssmax/analysis.hpp>
#include <ssmax/softmax.hpp>
#include <vector>

namespace ssmax::study {

/// The Figure 1 input of size n: n - 1 entries equal to low, then one equal to high.
template <class T>  // float or double
std::vector<T> figure1_input(index_t n, T low = T(-2), T high = T(3)) {
  ssmax::detail::require(n >= 1, "figure1_input", "n", "must be >= 1");
  std::vector<T> x(static_cast<size_t>(n), low);
  x.back() = high;
  return x;
}

/// Closed form of the largest output for the Figure 1 input with a gap (high - low) and
/// multiplier m >= 0: 1 / (1 + (n - 1) exp(-gap m)). Exact up to a few ulp of double.
inline double figure1_closed_form(index_t n, double m, double gap = 5.0) {
  return 1.0 / (1.0 + static_cast<double>(n - 1) * std::exp(-gap * m));
}

/// One row of table 1: the largest Softmax and SSMax outputs, as the library computes them.
struct figure1_point {
  index_t n = 0;       ///< size of the input
  double softmax = 0;  ///< largest output of softmax(x)
  double ssmax = 0;    ///< largest output of SSMax(x) with the given s
  double m_ssmax = 0;  ///< SSMax's multiplier s log n
};

/// Runs the library's softmax and SSMax (scale s) on figure1_input(n) in precision T and
/// returns their largest outputs (ssmax::largest_weight).
/// Pre (checked by the library): n >= 1, s finite and >= 0.
template <class T>  // float or double: the precision the library computes in
figure1_point figure1_at(index_t n, double s) {
  const std::vector<T> x = figure1_input<T>(n);
  std::vector<T> y(x.size());
  figure1_point p;
  p.n = n;
  ssmax::softmax(x.data(), y.data(), n);
  p.softmax = static_cast<double>(largest_weight(y.data(), n).weight);
  ssmax::scalable_softmax(x.data(), y.data(), n, s);
  p.ssmax = static_cast<double>(largest_weight(y.data(), n).weight);
  p.m_ssmax = ssmax_policy(s).multiplier({n, n - 1, 0});
  return p;
}

/// Table 1 over the sizes ns.
template <class T>  // float or double
std::vector<figure1_point> figure1_table(const std::vector<index_t>& ns, double s) {
  std::vector<figure1_point> out;
  out.reserve(ns.size());
  for (index_t n : ns) out.push_back(figure1_at<T>(n, s));
  return out;
}

}  // namespace ssmax::study
