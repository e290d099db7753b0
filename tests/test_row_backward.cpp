// Row backward (softmax_backward.hpp, kernels/row_backward.hpp): the double reference
// against central finite differences of the forward reference, every kernel on every
// architecture (float and double) against the reference under the bounds of
// support/backward_bound.hpp, masked (-inf) entries, and the API's error contract and
// SSMax parameter gradients (ds = log(n) dm, db = dm, fixed_length's n).

#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <random>
#include <ssmax/reference/softmax.hpp>
#include <ssmax/reference/softmax_backward.hpp>
#include <ssmax/softmax.hpp>
#include <ssmax/softmax_backward.hpp>
#include <utility>
#include <vector>

#include "support/architectures.hpp"
#include "support/backward_bound.hpp"
#include "support/expect_error.hpp"

namespace ssmax::testing {
namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();

std::vector<double> normal_row(index_t n, double mean, double spread, unsigned seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<double> dist(mean, spread);
  std::vector<double> x(static_cast<size_t>(n));
  for (auto& v : x) v = dist(rng);
  return x;
}

template <class T>
std::vector<T> cast(const std::vector<double>& x) {
  return std::vector<T>(x.begin(), x.end());
}

// ---------------------------------------------------------------------------------------
// Finite differences. L(z, m) = sum_i g_i softmax(m z)_i in double (reference::
// scaled_softmax). A central difference with step h has truncation error h^2 |L'''| / 6 and
// rounding error (2 e_L + |L'| e_x) / (2 h), with e_L the error of evaluating L (a few ulp
// of sum |g_i p_i| <= max|g|: 8 eps max|g|) and e_x = eps |x| the rounding of x + h.
// Third derivatives: along z_k, each weight is a logistic function of m z_k scaled by a
// constant (|sigma'''| <= 1/8), so |L'''| <= m^3 max|g| / 4; along m, L is an expectation
// under the exponential family with statistic z, whose third derivative is bounded by
// 16 max|g| R^3 with R the range of the finite z. h = cbrt(eps) / scale balances the two.

double loss(const std::vector<double>& z, const std::vector<double>& g, double m) {
  const auto p = reference::scaled_softmax(z.data(), static_cast<index_t>(z.size()), m);
  reference::compensated_sum L;
  for (size_t i = 0; i < z.size(); ++i) L.add(g[i] * p[i]);
  return L.value();
}

struct difference {
  double value;      ///< the central difference
  double tolerance;  ///< its derived error bound
};

template <class F>  // double -> double
difference central_difference(F&& f, double x, double third_derivative, double f_error,
                              double derivative_guess, double scale) {
  const double eps = std::numeric_limits<double>::epsilon();
  const double h = std::cbrt(eps) / scale;
  const double value = (f(x + h) - f(x - h)) / (2.0 * h);
  const double tol =
      h * h * third_derivative / 6.0 +
      (2.0 * f_error + std::abs(derivative_guess) * eps * (std::abs(x) + h)) / (2.0 * h);
  return {value, 2.0 * tol};  // the factor 2 covers the bounds' neglected higher orders
}

double max_abs(const std::vector<double>& v) {
  double m = 0.0;
  for (double x : v) m = std::max(m, std::abs(x));
  return m;
}

double finite_range(const std::vector<double>& z) {
  double lo = kInf, hi = -kInf;
  for (double v : z)
    if (std::isfinite(v)) lo = std::min(lo, v), hi = std::max(hi, v);
  return hi > lo ? hi - lo : 0.0;
}

/// Checks reference dz and dm of row z at multiplier m against finite differences.
void check_reference_by_differences(const std::vector<double>& z, const std::vector<double>& g,
                                    double m, const char* what) {
  const double eps = std::numeric_limits<double>::epsilon();
  const index_t n = static_cast<index_t>(z.size());
  const auto r = reference::scaled_softmax_backward(z.data(), g.data(), n, m);
  const double g_max = max_abs(g), f_err = 8.0 * eps * g_max;
  for (index_t k = 0; k < n; ++k) {
    if (!std::isfinite(z[k])) {
      EXPECT_EQ(r.dz[k], 0.0) << what << ": masked entry " << k;
      continue;
    }
    auto f = [&](double zk) {
      auto zz = z;
      zz[k] = zk;
      return loss(zz, g, m);
    };
    if (m == 0.0) {  // L does not depend on z at m = 0
      EXPECT_EQ(r.dz[k], 0.0) << what;
      continue;
    }
    const double am = std::abs(m);  // the bounds use |m|: m < 0 is a trained b < 0
    const auto d = central_difference(f, z[k], am * am * am * g_max / 4.0, f_err, r.dz[k], am);
    EXPECT_NEAR(r.dz[k], d.value, d.tolerance) << what << ": dL/dz[" << k << "], n = " << n;
  }
  const double R = finite_range(z);
  auto f = [&](double mm) { return loss(z, g, mm); };
  const double scale = std::max(1.0, R);
  const auto d = central_difference(f, m, 16.0 * g_max * R * R * R, f_err, r.d_multiplier, scale);
  EXPECT_NEAR(r.d_multiplier, d.value, d.tolerance) << what << ": dL/dm, n = " << n;
}

TEST(RowBackwardReference, MatchesFiniteDifferences) {
  for (index_t n : {1, 2, 3, 8, 33}) {
    for (double m : {1.0, 0.43 * std::log(static_cast<double>(n)) + 0.1, 2.5, 0.0, -0.7, -2.0}) {
      const auto z = normal_row(n, 0.5, 1.5, static_cast<unsigned>(n));
      const auto g = normal_row(n, 0.0, 1.0, static_cast<unsigned>(n + 100));
      check_reference_by_differences(z, g, m, "random");
    }
  }
}

TEST(RowBackwardReference, MaskedEntriesHaveZeroGradientAndNoNaN) {
  for (index_t n : {2, 5, 17}) {
    auto z = normal_row(n, 0.0, 1.0, 3);
    const auto g = normal_row(n, 0.0, 1.0, 4);
    for (index_t i = 0; i < n; i += 2) z[i] = -kInf;
    check_reference_by_differences(z, g, 1.3, "masked");
    check_reference_by_differences(z, g, -1.3, "masked, m < 0");
    const auto r = reference::scaled_softmax_backward(z.data(), g.data(), n, 1.3);
    EXPECT_TRUE(std::isfinite(r.d_multiplier));
    std::vector<double> all(static_cast<size_t>(n), -kInf);
    const auto empty = reference::scaled_softmax_backward(all.data(), g.data(), n, 1.3);
    EXPECT_EQ(empty.d_multiplier, 0.0);
    for (double v : empty.dz) EXPECT_EQ(v, 0.0);
  }
}

TEST(RowBackwardReference, LargeOffsetDoesNotCancel) {
  // dL/dm is invariant under z -> z + C (sum of dL/dy is 0): the shifted row's gradient
  // must equal the unshifted one within the rounding of the shift itself.
  const index_t n = 40;
  const auto z = normal_row(n, 0.0, 1.0, 8);
  const auto g = normal_row(n, 0.0, 1.0, 9);
  auto shifted = z;
  for (auto& v : shifted) v += 1e6;
  const auto a = reference::scaled_softmax_backward(z.data(), g.data(), n, 1.0);
  const auto b = reference::scaled_softmax_backward(shifted.data(), g.data(), n, 1.0);
  const double eps = std::numeric_limits<double>::epsilon();
  // Each shifted z_i is off by up to eps 1e6 / 2, which moves the weights by that much
  // relative and dL/dm by about max|g| times that.
  EXPECT_NEAR(a.d_multiplier, b.d_multiplier, 8.0 * eps * 1e6 * max_abs(g));
}

// ---------------------------------------------------------------------------------------
// Kernels on every architecture against the reference.

template <class Config>  // kernel_config<Arch, T>
class RowBackwardKernel : public kernel_test<Config> {
 protected:
  using base = kernel_test<Config>;
  using base::W;
  using typename base::arch, typename base::value_type;

  /// Runs both kernels on row z (T) with upstream g at multiplier m and checks them.
  void check(const std::vector<value_type>& z, const std::vector<value_type>& g, value_type m,
             const char* what) {
    using T = value_type;
    const index_t n = static_cast<index_t>(z.size());
    // From the forward output y (computed by the forward kernel, as a user would).
    std::vector<T> y(z.size()), dz(z.size());
    const auto state = kernels::scaled_softmax_row<arch>(z.data(), y.data(), n, m);
    const double dm =
        kernels::scaled_softmax_row_backward<arch>(z.data(), y.data(), g.data(), dz.data(), n, m);
    const std::vector<double> yd(y.begin(), y.end());
    const auto r = reference::softmax_backward_from_weights(y.data(), z.data(), g.data(), n,
                                                            static_cast<double>(m));
    const backward_bound<T> bound(yd, z.data(), g.data(), n, m, W, false, 0.0);
    compare(dz, dm, r, bound, what, "from y");

    // In place over g gives the same bits.
    auto g_copy = g;
    kernels::scaled_softmax_row_backward<arch>(z.data(), y.data(), g_copy.data(), g_copy.data(), n,
                                               m);
    for (index_t i = 0; i < n; ++i) EXPECT_EQ(g_copy[i], dz[i]) << what << ": in place at " << i;

    // From the log-sum-exp, against the reference that recomputes p exactly.
    const double lse_ref = reference::log_sum_exp(z.data(), n, static_cast<double>(m));
    const T lse = static_cast<T>(lse_ref);
    std::vector<T> dz2(z.size());
    const double dm2 =
        kernels::scaled_softmax_row_backward_lse<arch>(z.data(), lse, g.data(), dz2.data(), n, m);
    const auto r2 =
        reference::scaled_softmax_backward(z.data(), g.data(), n, static_cast<double>(m));
    const auto p = reference::scaled_softmax(z.data(), n, static_cast<double>(m));
    const backward_bound<T> bound2(p, z.data(), g.data(), n, m, W, true, lse_ref);
    compare(dz2, dm2, r2, bound2, what, "from lse");
    (void)state;
  }

  void compare(const std::vector<value_type>& dz, double dm,
               const reference::row_backward_result& r, const backward_bound<value_type>& bound,
               const char* what, const char* path) {
    index_t failures = 0;
    for (size_t i = 0; i < dz.size(); ++i) {
      const double err = std::abs(static_cast<double>(dz[i]) - r.dz[i]);
      if (!(err <= bound.dz(static_cast<index_t>(i))) && failures++ < 5)
        ADD_FAILURE() << what << " (" << path << "): dz[" << i << "] = " << dz[i] << ", reference "
                      << r.dz[i] << ", error " << err << " > " << bound.dz(static_cast<index_t>(i))
                      << " (n = " << dz.size() << ")";
    }
    const double err = std::abs(dm - r.d_multiplier);
    EXPECT_LE(err, bound.dm()) << what << " (" << path << "): dm = " << dm << ", reference "
                               << r.d_multiplier << " (n = " << dz.size() << ")";
  }
};
TYPED_TEST_SUITE(RowBackwardKernel, kernel_configs, config_name);

TYPED_TEST(RowBackwardKernel, RandomRowsEverySizeAroundTheWidth) {
  using T = typename TestFixture::value_type;
  std::vector<index_t> sizes;
  for (index_t n = 1; n <= 4 * TestFixture::W + 3; ++n) sizes.push_back(n);
  for (index_t n : {index_t(100), 65 * TestFixture::W + 1, index_t(1000), index_t(65537)})
    sizes.push_back(n);
  for (index_t n : sizes)
    for (double m : {1.0, 0.43 * std::log(static_cast<double>(n)), 2.5, 0.0, -0.8}) {
      const auto z = cast<T>(normal_row(n, 0.3, 2.0, static_cast<unsigned>(n)));
      const auto g = cast<T>(normal_row(n, 0.0, 1.0, static_cast<unsigned>(n + 7)));
      this->check(z, g, static_cast<T>(m), "random");
    }
}

TYPED_TEST(RowBackwardKernel, LargeOffsetAndSpread) {
  using T = typename TestFixture::value_type;
  for (index_t n : {5, 64, 999}) {
    const auto z = cast<T>(normal_row(n, 300.0, 1.0, 21));
    const auto g = cast<T>(normal_row(n, 2.0, 3.0, 22));
    this->check(z, g, T(1), "offset 300");
    const auto wide = cast<T>(normal_row(n, 0.0, 30.0, 23));
    this->check(wide, g, T(1.5), "spread 30");
  }
}

TYPED_TEST(RowBackwardKernel, MaskedEntriesGiveZeroNeverNaN) {
  using T = typename TestFixture::value_type;
  for (index_t n : {1, 2, 7, 33, 500}) {
    auto z = cast<T>(normal_row(n, 0.0, 2.0, 11));
    const auto g = cast<T>(normal_row(n, 0.0, 1.0, 12));
    for (index_t i = 0; i < n; i += 3) z[i] = -TestFixture::inf;
    for (T m : {T(1), T(0.7), T(0), T(-0.9)}) {
      if (n > 1) this->check(z, g, m, "some -inf");
      std::vector<T> y(z.size()), dz(z.size());
      kernels::scaled_softmax_row<typename TestFixture::arch>(z.data(), y.data(), n, m);
      const double dm = kernels::scaled_softmax_row_backward<typename TestFixture::arch>(
          z.data(), y.data(), g.data(), dz.data(), n, m);
      EXPECT_TRUE(std::isfinite(dm));
      for (index_t i = 0; i < n; i += 3) EXPECT_EQ(dz[i], T(0));
      const T lse = static_cast<T>(reference::log_sum_exp(z.data(), n, static_cast<double>(m)));
      const double dm2 = kernels::scaled_softmax_row_backward_lse<typename TestFixture::arch>(
          z.data(), lse, g.data(), dz.data(), n, m);
      EXPECT_TRUE(std::isfinite(dm2));
      for (index_t i = 0; i < n; i += 3) EXPECT_EQ(dz[i], T(0));
    }
    std::vector<T> all(static_cast<size_t>(n), -TestFixture::inf), dz(all.size(), T(7));
    const double dm = kernels::scaled_softmax_row_backward_lse<typename TestFixture::arch>(
        all.data(), -TestFixture::inf, g.data(), dz.data(), n, T(1));
    EXPECT_EQ(dm, 0.0);
    for (T v : dz) EXPECT_EQ(v, T(0));
  }
}

// ---------------------------------------------------------------------------------------
// Public API.

TEST(RowBackwardApi, SsmaxParameterGradientsMatchFiniteDifferences) {
  // L(s, b) = sum g_i ssmax(z; s, b)_i; dL/ds and dL/db by central differences in s and b,
  // each a 1-D function of m = s log n + b (so the m bound applies, scaled by log n or 1).
  const double eps = std::numeric_limits<double>::epsilon();
  // b < 0 (as trained): m < 0 at n = 2 and 9, > 0 at 64.
  for (auto [n, b] : {std::pair<index_t, double>{2, 0.2},
                      {9, 0.2},
                      {64, 0.2},
                      {2, -0.9},
                      {9, -1.5},
                      {64, -0.5}}) {
    const auto z = normal_row(n, 0.0, 1.0, 31);
    const auto g = normal_row(n, 0.0, 1.0, 32);
    const double s = 0.43, logn = std::log(static_cast<double>(n));
    std::vector<double> y(z.size()), dz(z.size());
    ssmax::scalable_softmax(z.data(), y.data(), n, s, b);
    const auto grad = scalable_softmax_backward(z.data(), y.data(), g.data(), dz.data(), n, s, b);
    EXPECT_DOUBLE_EQ(grad.s, logn * grad.multiplier);
    EXPECT_DOUBLE_EQ(grad.b, grad.multiplier);
    const double R = finite_range(z), g_max = max_abs(g), f_err = 8.0 * eps * g_max;
    const auto ds = central_difference([&](double ss) { return loss(z, g, ss * logn + b); }, s,
                                       16.0 * g_max * std::pow(R * logn, 3), f_err, grad.s,
                                       std::max(1.0, R * logn));
    EXPECT_NEAR(grad.s, ds.value, ds.tolerance + 64 * eps * std::abs(grad.s)) << "n = " << n;
    const auto db = central_difference([&](double bb) { return loss(z, g, s * logn + bb); }, b,
                                       16.0 * g_max * R * R * R, f_err, grad.b, std::max(1.0, R));
    EXPECT_NEAR(grad.b, db.value, db.tolerance + 64 * eps * std::abs(grad.b)) << "n = " << n;
  }
}

TEST(RowBackwardApi, FixedLengthUsesThatLogAndPerHeadParameters) {
  const index_t n = 10;
  const auto z = normal_row(n, 0.0, 1.0, 41);
  const auto g = normal_row(n, 0.0, 1.0, 42);
  const std::vector<double> s = {0.3, 0.5}, b = {0.0, 0.1};
  ssmax_policy policy(s, b, 128);
  std::vector<double> y(z.size()), dz(z.size());
  const row_position where{n, n - 1, 1};
  policy_softmax(policy, z.data(), y.data(), n, where);
  const auto grad =
      policy_softmax_backward(policy, z.data(), y.data(), g.data(), dz.data(), n, where);
  EXPECT_DOUBLE_EQ(grad.s, std::log(128.0) * grad.multiplier);
  EXPECT_DOUBLE_EQ(grad.b, grad.multiplier);
  const auto r =
      reference::scaled_softmax_backward(z.data(), g.data(), n, policy.multiplier(where));
  const backward_bound<double> bound(y, z.data(), g.data(), n, policy.multiplier(where),
                                     ::ssmax::detail::simd<default_arch, double>::width, false,
                                     0.0);
  EXPECT_NEAR(grad.multiplier, r.d_multiplier, bound.dm() + 1e-13 * max_abs(g));

  policy_gradient total(2);
  total.add(where.head, grad);
  EXPECT_EQ(total.s[0], 0.0);
  EXPECT_EQ(total.s[1], grad.s);
  const auto soft =
      policy_softmax_backward(softmax_policy{}, z.data(), y.data(), g.data(), dz.data(), n);
  EXPECT_EQ(soft.s, 0.0);
  EXPECT_EQ(soft.b, 0.0);
}

TEST(RowBackwardApi, PlainSoftmaxBackwardAndLseAgree) {
  const index_t n = 50;
  const auto z = cast<float>(normal_row(n, 0.0, 2.0, 51));
  const auto g = cast<float>(normal_row(n, 0.0, 1.0, 52));
  std::vector<float> y(z.size()), a(z.size()), b(z.size());
  const auto state = softmax(z.data(), y.data(), n);
  softmax_backward(y.data(), g.data(), a.data(), n);
  scaled_softmax_backward_lse(z.data(), state.log_sum_exp(), g.data(), b.data(), n, 1.0f);
  const auto r = reference::scaled_softmax_backward(z.data(), g.data(), n, 1.0);
  const auto p = reference::scaled_softmax(z.data(), n, 1.0);
  const backward_bound<float> bound(p, z.data(), g.data(), n, 1.0,
                                    ::ssmax::detail::simd<default_arch, float>::width, true,
                                    static_cast<double>(state.log_sum_exp()));
  // softmax_backward reads the forward's y (within row_bound of p): its error is the
  // arithmetic bound plus (g_i - c) times the weight error, below the lse path's bound
  // plus a y-error allowance of 64 eps p_i.
  for (index_t i = 0; i < n; ++i) {
    EXPECT_NEAR(b[i], r.dz[i], bound.dz(i)) << i;
    EXPECT_NEAR(a[i], r.dz[i], bound.dz(i) + 64 * 1.2e-7 * p[i] * (std::abs(g[i]) + 3)) << i;
  }
}

TEST(RowBackwardApi, RejectsBadArguments) {
  std::vector<float> x(8, 0.5f), y(8, 0.125f), g(8, 1.0f), dx(8);
  float* null = nullptr;
  expect_rejects([&] { softmax_backward(null, g.data(), dx.data(), 8); }, "y");
  expect_rejects([&] { softmax_backward(y.data(), null, dx.data(), 8); }, "g");
  expect_rejects([&] { softmax_backward(y.data(), g.data(), null, 8); }, "dx");
  expect_rejects([&] { softmax_backward(y.data(), g.data(), dx.data(), 0); }, "n");
  expect_rejects([&] { softmax_backward(y.data(), g.data(), y.data() + 1, 4); }, "dx");
  expect_rejects([&] { scaled_softmax_backward(null, y.data(), g.data(), dx.data(), 8, 1.0f); },
                 "x");
  expect_rejects([&] { scaled_softmax_backward(x.data(), y.data(), g.data(), x.data(), 8, 1.0f); },
                 "dx");
  expect_rejects(
      [&] {
        scaled_softmax_backward(x.data(), y.data(), g.data(), dx.data(), 8,
                                -std::numeric_limits<float>::infinity());
      },
      "multiplier");
  expect_rejects(
      [&] {
        scaled_softmax_backward_lse(x.data(), std::numeric_limits<float>::quiet_NaN(), g.data(),
                                    dx.data(), 8, 1.0f);
      },
      "lse");
  expect_rejects([&] { scaled_softmax_backward_lse(x.data(), 1.0f, g.data(), g.data(), 8, 1.0f); },
                 "dx");
  expect_rejects(
      [&] { scalable_softmax_backward(x.data(), y.data(), g.data(), dx.data(), 8, std::nan("")); },
      "s");
  expect_rejects(
      [&] {
        const std::vector<double> two = {0.1, 0.2};
        policy_softmax_backward(ssmax_policy(two), x.data(), y.data(), g.data(), dx.data(), 8,
                                row_position{8, 7, 2});
      },
      "where.head");
  expect_rejects([] { (void)policy_gradient(-1); }, "heads");
  EXPECT_EQ(policy_gradient{0}.heads(), 0);
}

}  // namespace
}  // namespace ssmax::testing
