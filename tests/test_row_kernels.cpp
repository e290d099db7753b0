// Row kernels on every architecture this binary targets, float and double, against the
// double reference (include/ssmax/reference/softmax.hpp) under the bound of
// support/row_check.hpp: n from 1 to 2^20 including every size around the vector width,
// random and adversarial rows, and the edge contract (-inf, +inf, NaN, m = 0).

#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <random>
#include <ssmax/kernels/row_softmax.hpp>
#include <ssmax/reference/softmax.hpp>
#include <vector>

#include "support/architectures.hpp"
#include "support/row_check.hpp"

namespace ssmax::testing {
namespace {

template <class Config>  // kernel_config<Arch, T>
class RowKernel : public kernel_test<Config> {
 protected:
  using base = kernel_test<Config>;
  using base::W;
  using typename base::arch, typename base::value_type;

  /// Runs the kernel out of place, checks it against the reference, and checks that the
  /// in-place run and the state-only run agree with it bit for bit.
  template <class T>
  void check(const std::vector<T>& x, T m, const char* what) {
    using Arch = arch;
    const index_t n = static_cast<index_t>(x.size());
    std::vector<T> y(x.size());
    const row_state<T> state = kernels::scaled_softmax_row<Arch>(x.data(), y.data(), n, m);
    const auto r = reference::scaled_softmax(x.data(), n, static_cast<double>(m));
    expect_row_matches(x.data(), n, static_cast<double>(m), y.data(), r, W, what);

    std::vector<T> in_place = x;
    const auto state2 = kernels::scaled_softmax_row<Arch>(in_place.data(), in_place.data(), n, m);
    for (index_t i = 0; i < n; ++i)
      if (!(in_place[i] == y[i] || (std::isnan(in_place[i]) && std::isnan(y[i]))))
        return ADD_FAILURE() << what << ": in-place differs at " << i;
    const auto state3 = kernels::scaled_softmax_row<Arch>(x.data(), static_cast<T*>(nullptr), n, m);
    EXPECT_EQ(state.max, state2.max);
    EXPECT_EQ(state.sum, state3.sum);

    // The state's log-sum-exp against the reference: the sum's relative bound becomes an
    // absolute bound on its log.
    const double lse_ref = reference::log_sum_exp(x.data(), n, static_cast<double>(m));
    const double lse = state.log_sum_exp();
    if (std::isfinite(lse_ref)) {
      const double eps = std::numeric_limits<T>::epsilon();
      EXPECT_NEAR(lse, lse_ref, eps * (std::abs(lse_ref) + sum_ulp(W) + kExpUlp + 4.0)) << what;
    } else if (std::isnan(lse_ref)) {
      EXPECT_TRUE(std::isnan(lse)) << what;
    } else {
      EXPECT_EQ(lse, lse_ref) << what;
    }
  }

  static std::vector<value_type> random_row(index_t n, double spread, unsigned seed) {
    using T = value_type;
    std::mt19937 rng(seed);
    std::normal_distribution<double> dist(0.0, spread);
    std::vector<T> x(static_cast<size_t>(n));
    for (auto& v : x) v = static_cast<T>(dist(rng));
    return x;
  }
};
TYPED_TEST_SUITE(RowKernel, kernel_configs, config_name);

TYPED_TEST(RowKernel, RandomRowsEverySizeAroundTheWidth) {
  using T = typename TestFixture::value_type;
  std::vector<index_t> sizes;
  for (index_t n = 1; n <= 4 * TestFixture::W + 3; ++n) sizes.push_back(n);
  for (index_t n :
       {index_t(100), 129 * TestFixture::W - 1, index_t(1000), index_t(4097), index_t(65537)})
    sizes.push_back(n);
  for (index_t n : sizes)
    for (double m : {1.0, 0.43 * std::log(static_cast<double>(n)), 2.5, 1e-3})
      this->check(this->random_row(n, 3.0, static_cast<unsigned>(n)), static_cast<T>(m), "random");
}

TYPED_TEST(RowKernel, MillionElementRow) {
  using T = typename TestFixture::value_type;
  const index_t n = 1 << 20;
  this->check(this->random_row(n, 2.0, 7), T(1), "n = 2^20");
  this->check(this->random_row(n, 2.0, 8), static_cast<T>(0.43 * std::log(double(n))),
              "n = 2^20 SSMax");
}

TYPED_TEST(RowKernel, HugeMagnitudesDoNotOverflow) {
  using T = typename TestFixture::value_type;
  const T big = std::numeric_limits<T>::max() / T(4);
  for (index_t n : {1, 3, 17, 1000}) {
    auto x = this->random_row(n, 1.0, 3);
    for (index_t i = 0; i < n; i += 2) x[i] = (i % 4 == 0) ? big : -big;
    this->check(x, T(1), "+-max/4");
    this->check(x, T(0.5), "+-max/4, m = 0.5");
    std::vector<T> huge(static_cast<size_t>(n), T(1e30));
    huge[0] = T(-1e30);
    this->check(huge, T(1), "1e30 ties");
  }
}

TYPED_TEST(RowKernel, TiesAndEqualRowsAreUniform) {
  using T = typename TestFixture::value_type;
  for (index_t n : {1, 2, 5, 64, 1001}) {
    std::vector<T> x(static_cast<size_t>(n), T(-7.25));
    this->check(x, T(1), "all equal");
    this->check(x, T(3), "all equal, m = 3");
  }
}

TYPED_TEST(RowKernel, MinusInfinityWeighsZero) {
  using T = typename TestFixture::value_type;
  const T infinity = TestFixture::inf;
  for (index_t n : {1, 2, 7, 33, 500}) {
    auto x = this->random_row(n, 2.0, 11);
    for (index_t i = 0; i < n; i += 3) x[i] = -infinity;
    std::vector<T> y(x.size());
    if (x.size() > 1) {
      this->check(x, T(1), "some -inf");
      kernels::scaled_softmax_row<typename TestFixture::arch>(x.data(), y.data(), n, T(1));
      for (index_t i = 0; i < n; i += 3) EXPECT_EQ(y[i], T(0));
    }
    std::vector<T> all(static_cast<size_t>(n), -infinity);
    this->check(all, T(1), "all -inf");
    const auto s =
        kernels::scaled_softmax_row<typename TestFixture::arch>(all.data(), y.data(), n, T(1));
    EXPECT_TRUE(s.empty());
    for (T v : y) EXPECT_EQ(v, T(0));
  }
}

TYPED_TEST(RowKernel, PlusInfinitySharesTheWeight) {
  using T = typename TestFixture::value_type;
  for (index_t n : {1, 4, 40}) {
    auto x = this->random_row(n, 2.0, 5);
    x[0] = TestFixture::inf;
    x[static_cast<size_t>(n - 1)] = TestFixture::inf;
    this->check(x, T(1), "+inf entries");
  }
}

TYPED_TEST(RowKernel, NaNMakesTheRowNaN) {
  using T = typename TestFixture::value_type;
  for (index_t n : {1, 3, 40, 1000}) {
    for (index_t at : {index_t(0), n / 2, n - 1}) {
      auto x = this->random_row(n, 2.0, 9);
      x[static_cast<size_t>(at)] = std::numeric_limits<T>::quiet_NaN();
      for (T m : {T(1), T(0)}) {
        std::vector<T> y(x.size());
        kernels::scaled_softmax_row<typename TestFixture::arch>(x.data(), y.data(), n, m);
        for (T v : y) EXPECT_TRUE(std::isnan(v)) << "n = " << n << " NaN at " << at;
      }
    }
  }
}

TYPED_TEST(RowKernel, ZeroMultiplierIsUniformOverVisible) {
  using T = typename TestFixture::value_type;
  auto x = this->random_row(37, 5.0, 13);
  x[3] = -TestFixture::inf;
  this->check(x, T(0), "m = 0");
}

// A negative multiplier (a trained SSMax b < 0 on short rows): softmax over m x of the
// visible entries, the smallest weighing most; -inf entries stay masked, +inf entries weigh
// 0, and a row whose visible entries are all +inf is empty, as the reference says.
TYPED_TEST(RowKernel, NegativeMultiplierKeepsMaskedEntriesMasked) {
  using T = typename TestFixture::value_type;
  const T infinity = TestFixture::inf;
  for (index_t n : {index_t(1), index_t(2), index_t(7), 4 * TestFixture::W + 1, index_t(1000)}) {
    for (T m : {T(-0.3), T(-1), T(-2.5)}) {
      auto x = this->random_row(n, 2.0, static_cast<unsigned>(n + 40));
      this->check(x, m, "m < 0");
      for (index_t i = 1; i < n; i += 3) x[i] = -infinity;
      this->check(x, m, "m < 0, some -inf");
      std::vector<T> y(x.size());
      kernels::scaled_softmax_row<typename TestFixture::arch>(x.data(), y.data(), n, m);
      for (index_t i = 1; i < n; i += 3) EXPECT_EQ(y[i], T(0)) << "masked entry " << i;
      if (n > 2) {
        x[2] = infinity;
        this->check(x, m, "m < 0, +inf weighs 0");
      }
      std::vector<T> all(static_cast<size_t>(n), -infinity);
      all[0] = infinity;
      this->check(all, m, "m < 0, only +inf visible");
      std::fill(all.begin(), all.end(), -infinity);
      this->check(all, m, "m < 0, all -inf");
    }
  }
}

TYPED_TEST(RowKernel, SubnormalAndUnderflowingWeights) {
  using T = typename TestFixture::value_type;
  for (index_t n : {2, 19, 300}) {
    auto x = this->random_row(n, 1.0, 17);
    for (index_t i = 1; i < n; i += 2) x[i] = x[0] - T(std::is_same<T, float>::value ? 95 : 720);
    x[0] = std::numeric_limits<T>::denorm_min();
    this->check(x, T(1), "underflow");
  }
}

TYPED_TEST(RowKernel, OutputsSumToOne) {
  using T = typename TestFixture::value_type;
  for (index_t n : {1, 9, 4096, 100003}) {
    auto x = this->random_row(n, 4.0, 21);
    std::vector<T> y(x.size());
    kernels::scaled_softmax_row<typename TestFixture::arch>(x.data(), y.data(), n, T(1));
    long double total = 0;
    for (T v : y) total += v;
    // Summing the per-weight bound of support/row_check.hpp over i: sum_i r_i = 1 and
    // sum_i r_i |t_i| = E[|t|], so the total is within this of 1, independent of n.
    const auto r = reference::scaled_softmax(x.data(), n, 1.0);
    const double mean_t = mean_abs_argument(x.data(), n, 1.0, r);
    const double eps = std::numeric_limits<T>::epsilon();
    EXPECT_NEAR(static_cast<double>(total), 1.0,
                eps * (kExpUlp + 4.0 + sum_ulp(TestFixture::W) + 4.0 * mean_t) +
                    2.0 * n * static_cast<double>(std::numeric_limits<T>::min()));
  }
}

TYPED_TEST(RowKernel, MergedStatesEqualTheWholeRow) {
  using T = typename TestFixture::value_type;
  const index_t n = 1000;
  auto x = this->random_row(n, 3.0, 23);
  for (index_t cut : {index_t(1), index_t(13), index_t(500), n - 1}) {
    using Arch = typename TestFixture::arch;
    const auto whole =
        kernels::scaled_softmax_row<Arch>(x.data(), static_cast<T*>(nullptr), n, T(2));
    const auto left =
        kernels::scaled_softmax_row<Arch>(x.data(), static_cast<T*>(nullptr), cut, T(2));
    const auto right =
        kernels::scaled_softmax_row<Arch>(x.data() + cut, static_cast<T*>(nullptr), n - cut, T(2));
    const double eps = std::numeric_limits<T>::epsilon();
    const double lse = merge(left, right).log_sum_exp();
    EXPECT_NEAR(lse, whole.log_sum_exp(), eps * (std::abs(lse) + 2 * sum_ulp(TestFixture::W) + 8));
    EXPECT_EQ(merge(left, row_state<T>{}).sum, left.sum);  // the empty state is neutral
    // A NaN state (a NaN logit) wins from either side.
    const T nan = std::numeric_limits<T>::quiet_NaN();
    EXPECT_TRUE(std::isnan(merge(row_state<T>{nan, nan}, left).max));
    EXPECT_TRUE(std::isnan(merge(left, row_state<T>{nan, nan}).max));
    EXPECT_TRUE(std::isnan(merge(row_state<T>{nan, nan}, row_state<T>{}).max));
  }
}

}  // namespace
}  // namespace ssmax::testing
