#pragma once
// The row kernels' error bound (kernels/row_softmax.hpp), without GoogleTest, so that the
// tests (support/row_check.hpp) and the fuzz targets (fuzz/) apply one definition:
//   |y_i - r_i| <= eps * r_i * (exp_ulp + 4 + sum_ulp + 2 E[|t|] + 2 |t_i|) + 2 n min_normal
// where r is the double reference, t_i = m (x_i - pivot) the exp argument (pivot: the
// largest x for m >= 0, the smallest visible one for m < 0), E[|t|] =
// sum_i r_i |t_i| (the sum's error is the weighted mean of its terms' errors), sum_ulp the
// blocked summation bound, exp_ulp the exp bound of tests/test_exp.cpp, 4 ulp for forming
// the argument's and the multiplier's roundings and the final scaling, and the last term the
// weights below n min_normal that the kernel flushes to 0 (kernels::flush_threshold).

#include <algorithm>
#include <cmath>
#include <limits>
#include <ssmax/kernels/row_softmax.hpp>
#include <vector>

namespace ssmax::testing {

/// exp's bound in ulp, as tests/test_exp.cpp asserts it.
inline constexpr double kExpUlp = 2.0;

/// The blocked summation's relative error bound in ulp for a vector of `width` lanes.
inline double sum_ulp(index_t width) {
  return static_cast<double>(kernels::kLanesPerBlock) + std::log2(4.0 * width) + 2.0;
}

/// The exp's pivot: max_i x_i for m >= 0; for m < 0 the smallest x_i that is not -inf
/// (masked entries stay masked whatever the sign of m), so that t_i = m (x_i - pivot) <= 0.
template <class T>  // float or double
double argument_pivot(const T* x, index_t n, double m) {
  const double inf = std::numeric_limits<double>::infinity();
  double pivot = m < 0.0 ? inf : -inf;
  for (index_t k = 0; k < n; ++k) {
    const double xk = static_cast<double>(x[k]);
    pivot = m < 0.0 ? (xk > -inf ? std::min(pivot, xk) : pivot) : std::max(pivot, xk);
  }
  return pivot;
}

/// E[|t|] = sum_i r_i |t_i|: the mean exp argument under the reference weights r.
template <class T>  // float or double
double mean_abs_argument(const T* x, index_t n, double m, const std::vector<double>& r) {
  const double pivot = argument_pivot(x, n, m);
  double mean = 0.0;
  for (index_t i = 0; i < n; ++i) {
    const double t = m * (static_cast<double>(x[i]) - pivot);
    if (std::isfinite(t) && r[i] > 0) mean += r[i] * std::abs(t);
  }
  return mean;
}

/// The bound above for one row: bound(i) is the largest |y_i - r_i| the kernel may show for
/// input x[0, n) (T), multiplier m and reference r, on an architecture `width` lanes wide.
template <class T>  // float or double
class row_bound {
 public:
  row_bound(const T* x, index_t n, double m, const std::vector<double>& r, index_t width)
      : x_(x),
        n_(n),
        m_(m),
        r_(r),
        width_(width),
        mean_t_(mean_abs_argument(x, n, m, r)),
        pivot_(argument_pivot(x, n, m)) {}

  double operator()(index_t i) const {
    const double eps = std::numeric_limits<T>::epsilon();
    const double t = m_ * (static_cast<double>(x_[i]) - pivot_);
    const double arg = std::isfinite(t) ? std::abs(t) : 0.0;  // -inf entries have r_i = 0
    // r_i = 0 (a weight below double's range) has no relative part, even where |t_i| is so
    // large that 2 |t_i| overflows and 0 * inf would make the bound NaN.
    const double relative =
        r_[i] > 0.0 ? eps * r_[i] * (kExpUlp + 4.0 + sum_ulp(width_) + 2.0 * mean_t_ + 2.0 * arg)
                    : 0.0;
    return relative +
           2.0 * static_cast<double>(n_) * static_cast<double>(std::numeric_limits<T>::min());
  }

 private:
  const T* x_;
  index_t n_;
  double m_;
  const std::vector<double>& r_;
  index_t width_;
  double mean_t_;
  double pivot_;  ///< argument_pivot: max x for m >= 0, min visible x for m < 0
};

}  // namespace ssmax::testing
