#pragma once
// The row backward kernels' error bounds (kernels/row_backward.hpp), derived there and
// applied here against the double reference (reference/softmax_backward.hpp):
//
// Arithmetic on given weights p (the kernel's and the reference's p are the same):
//   c = sum p_j g_j and zbar = sum p_j z_j carry eps (s + 1) A and eps (s + 1) B, with
//   A = sum |p_j g_j|, B = sum |p_j z_j|, s the blocked sum's ulp (kernels/row_backward.hpp:
//   blocked_sums); g_i - c, the product with p_i and with m add three roundings, so
//     |dz_i - r_i| <= eps |m| p_i ((s + 1) A + 4 |g_i - c|)
//   and each term p_i (z_i - zbar)(g_i - c) of dL/dm carries the errors of both factors
//   plus two roundings, the sum another s ulp of sum of |terms|:
//     |dm - r| <= eps sum_i p_i ((s + 1) B |g_i - c| + (s + 1) A |z_i - zbar|
//                                + (s + 4) |z_i - zbar| |g_i - c|)
// Weights recomputed from the log-sum-exp (the _lse kernel) differ from the reference's
// exact p by a relative rho_i = eps (exp_ulp + |m z_i| + |m z_i - lse| + |lse| + s + 3)
// (the argument's roundings, then the normalisation by a sum) and an
// absolute 2 n min_normal (the flush); to first order that adds
//     |m| (rho_i p_i |g_i - c| + p_i sum_j rho_j p_j |g_j|)     to dz_i,
//     sum_k rho_k p_k |z_k - zbar| |g_k - c|                    to dm
// (the derivative of the covariance form at sum p = 1), plus the flush's absolute terms,
// and second-order terms eps^2 (s + 1)^2 A B (the product of c's and zbar's errors) and
// 4 max(rho)^2 A B (the weights' sum differing from 1).
// The reference's own error (the same arithmetic in compensated double, s = 1) is added,
// which matters only for T = double. Underflow adds min_normal per output.

#include <algorithm>
#include <cmath>
#include <limits>
#include <ssmax/kernels/row_backward.hpp>
#include <vector>

#include "row_bound.hpp"

namespace ssmax::testing {

/// The blocked sums' relative error in ulp (kernels/row_backward.hpp: blocked_sums).
inline double backward_sum_ulp(index_t width) {
  return static_cast<double>(kernels::kLanesPerBlock) + std::log2(2.0 * width) + 2.0;
}

/// Bounds for one row: dz(i) for dL/dz_i, dm() for dL/dm. p is the reference's weights
/// (double); z may be null (no dL/dm); lse_given says the kernel recomputed p from lse.
template <class T>  // the kernel's element type
class backward_bound {
 public:
  backward_bound(const std::vector<double>& p, const T* z, const T* g, index_t n, double m,
                 index_t width, bool from_lse, double lse)
      : p_(p), z_(z), g_(g), n_(n), m_(m) {
    const double eps = std::numeric_limits<T>::epsilon();
    const double eps_d = std::numeric_limits<double>::epsilon();
    s_ = backward_sum_ulp(width);
    double zbar = 0.0;
    for (index_t j = 0; j < n; ++j)
      if (p[j] != 0) {
        c_ += p[j] * g[j];
        a_ += std::abs(p[j] * g[j]);
        if (z != nullptr) {
          zbar += p[j] * z[j];
          b_ += std::abs(p[j] * z[j]);
        }
      }
    zbar_ = zbar;
    rho_.assign(static_cast<size_t>(n), 0.0);
    if (from_lse)
      for (index_t j = 0; j < n; ++j)
        if (p[j] != 0) {
          const double mz = m * static_cast<double>(z[j]);
          rho_[j] = eps * (kExpUlp + std::abs(mz) + std::abs(mz - lse) + std::abs(lse) + s_ + 3.0);
          rho_max_ = std::max(rho_max_, rho_[j]);
          rho_pg_ += rho_[j] * p[j] * std::abs(static_cast<double>(g[j]));
          g_abs_ += std::abs(static_cast<double>(g[j]));
        }
    flush_ = from_lse
                 ? 2.0 * static_cast<double>(n) * static_cast<double>(std::numeric_limits<T>::min())
                 : 0.0;
    eps_ = eps;
    eps_d_ = eps_d;
    min_ = static_cast<double>(std::numeric_limits<T>::min());
  }

  double dz(index_t i) const {
    const double gc = std::abs(static_cast<double>(g_[i]) - c_);
    const double arith = eps_ * std::abs(m_) * p_[i] * ((s_ + 1.0) * a_ + 4.0 * gc);
    const double ref = eps_d_ * std::abs(m_) * p_[i] * (2.0 * a_ + 4.0 * gc);
    const double perturbed = std::abs(m_) * (rho_[i] * p_[i] * gc + p_[i] * rho_pg_);
    const double flushed = std::abs(m_) * flush_ * (gc + g_abs_ + 1.0);
    return 1.01 * (arith + ref + perturbed + flushed) + min_;
  }

  double dm() const {
    double total = 0.0, ref = 0.0;
    for (index_t i = 0; i < n_; ++i) {
      if (p_[i] == 0) continue;
      const double gc = std::abs(static_cast<double>(g_[i]) - c_);
      const double zc = std::abs(static_cast<double>(z_[i]) - zbar_);
      total += eps_ * p_[i] * ((s_ + 1.0) * b_ * gc + (s_ + 1.0) * a_ * zc + (s_ + 4.0) * zc * gc);
      total += rho_[i] * p_[i] * zc * gc + flush_ * zc * gc;
      ref += eps_d_ * p_[i] * (2.0 * b_ * gc + 2.0 * a_ * zc + 5.0 * zc * gc);
    }
    // Second order: the product of the errors of zbar and c, and of the weights' sum.
    const double second =
        (eps_ * eps_ * (s_ + 1.0) * (s_ + 1.0) + 4.0 * rho_max_ * rho_max_) * a_ * b_;
    return 1.01 * (total + ref + second) + static_cast<double>(n_) * min_;
  }

 private:
  const std::vector<double>& p_;
  const T* z_;
  const T* g_;
  index_t n_;
  double m_;
  double s_ = 0.0, c_ = 0.0, zbar_ = 0.0, a_ = 0.0, b_ = 0.0;
  std::vector<double> rho_;
  double rho_pg_ = 0.0, g_abs_ = 0.0, flush_ = 0.0, rho_max_ = 0.0;
  double eps_ = 0.0, eps_d_ = 0.0, min_ = 0.0;
};

}  // namespace ssmax::testing
