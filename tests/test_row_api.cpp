// The public row API (softmax.hpp): argument checking with errors naming the argument and
// no partial writes, the policy plumbing, and the properties of SSMax derived from its
// definition (../shared/PAPER.md section 1 and Figure 1).

#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <random>
#include <ssmax/reference/softmax.hpp>
#include <ssmax/softmax.hpp>
#include <vector>

#include "support/architectures.hpp"
#include "support/expect_error.hpp"
#include "support/row_check.hpp"

namespace ssmax {
namespace {

using testing::expect_rejects;

template <class T>  // float or double
using RowApi = testing::element_test<T>;
TYPED_TEST_SUITE(RowApi, testing::element_types);

TYPED_TEST(RowApi, BadArgumentsAreNamedAndNothingIsWritten) {
  using T = TypeParam;
  std::vector<T> x(8, T(1)), y(8, T(-42));
  const T nan = std::numeric_limits<T>::quiet_NaN(), inf = std::numeric_limits<T>::infinity();
  expect_rejects([&] { softmax(static_cast<const T*>(nullptr), y.data(), 8); }, "x");
  expect_rejects([&] { softmax(x.data(), static_cast<T*>(nullptr), 8); }, "y");
  expect_rejects([&] { softmax(x.data(), y.data(), 0); }, "n");
  // Through a volatile, so GCC 12 does not propagate -3 into the (unreachable) kernel and
  // warn about a negative memset bound there (-Wstringop-overflow false positive).
  volatile index_t negative = -3;
  expect_rejects([&] { softmax(x.data(), y.data(), negative); }, "n");
  expect_rejects([&] { softmax(x.data(), x.data() + 1, 4); }, "y");  // partial overlap
  expect_rejects([&] { scaled_softmax(x.data(), y.data(), 8, -inf); }, "multiplier");
  expect_rejects([&] { scaled_softmax(x.data(), y.data(), 8, nan); }, "multiplier");
  expect_rejects([&] { scalable_softmax(x.data(), y.data(), 8, -inf); }, "s");
  expect_rejects([&] { scalable_softmax(x.data(), y.data(), 8, 0.5, nan); }, "b");
  const std::vector<double> two_heads{0.1, 0.2};
  expect_rejects(
      [&] {
        policy_softmax(ssmax_policy(two_heads), x.data(), y.data(), 8, {8, 7, 2});
      },
      "where.head");
  expect_rejects([&] { policy_softmax(qwen_logn_policy{0}, x.data(), y.data(), 8); },
                 "policy.train_length");
  expect_rejects([&] { log_sum_exp(static_cast<const T*>(nullptr), 8); }, "x");
  expect_rejects([&] { row_state_of(x.data(), 0); }, "n");
  for (T v : y) EXPECT_EQ(v, T(-42));  // untouched by every rejected call
}

TYPED_TEST(RowApi, InPlaceEqualsOutOfPlace) {
  using T = TypeParam;
  std::vector<T> x(101);
  for (size_t i = 0; i < x.size(); ++i) x[i] = static_cast<T>(std::sin(double(i)) * 4);
  std::vector<T> y(x.size());
  softmax(x.data(), y.data(), 101);
  softmax(x.data(), 101);
  EXPECT_EQ(x, y);
}

// With s log n = 1, SSMax is Softmax: within the row bound against the Softmax reference
// (the multiplier is 1 up to a rounding of log, which the bound's 2|t_i| term covers), and
// bit for bit where the multiplier rounds to exactly 1 in T.
TYPED_TEST(RowApi, SsmaxWithUnitMultiplierIsSoftmax) {
  using T = TypeParam;
  for (index_t n : {2, 10, 1000, 65536}) {
    std::vector<T> x(static_cast<size_t>(n));
    std::mt19937 rng(1);
    std::normal_distribution<double> d(0, 2);
    for (auto& v : x) v = static_cast<T>(d(rng));
    std::vector<T> a(x.size()), b(x.size());
    const double s = 1.0 / std::log(double(n));
    scalable_softmax(x.data(), a.data(), n, s);
    softmax(x.data(), b.data(), n);
    testing::expect_row_matches(x.data(), n, 1.0, a.data(),
                                reference::scaled_softmax(x.data(), n, 1.0),
                                detail::simd<default_arch, T>::width, "SSMax, s log n = 1");
    if (static_cast<T>(ssmax_policy(s).multiplier({n, n - 1, 0})) == T(1)) {
      EXPECT_EQ(a, b) << n;
    }
  }
}

// The paper's Figure 1 input: every entry -2 except the last, +3. The largest weight has
// the closed form 1 / (1 + (n - 1) exp(-5 m)), m = 1 for Softmax and s log n for SSMax.
TYPED_TEST(RowApi, FigureOneMatchesClosedForm) {
  using T = TypeParam;
  const double s = 0.43;
  for (index_t n = 2; n <= 1000000; n = n * 3 + 1) {
    std::vector<T> x(static_cast<size_t>(n), T(-2));
    x.back() = T(3);
    std::vector<T> y(x.size());
    for (bool scalable : {false, true}) {
      const double m = scalable ? s * std::log(double(n)) : 1.0;
      if (scalable)
        scalable_softmax(x.data(), y.data(), n, s);
      else
        softmax(x.data(), y.data(), n);
      const double closed = 1.0 / (1.0 + double(n - 1) * std::exp(-5.0 * m));
      // The row bound of support/row_check.hpp at the largest weight (t = 0) and E|t| <= 5m.
      const double eps = std::numeric_limits<T>::epsilon();
      const double bound =
          eps * closed *
          (testing::kExpUlp + 4 + testing::sum_ulp(detail::simd<default_arch, T>::width) + 10 * m);
      EXPECT_NEAR(y.back(), closed, bound) << "n = " << n << (scalable ? " SSMax" : " Softmax");
    }
  }
}

TYPED_TEST(RowApi, SsmaxKeepsFocusWhereSoftmaxFades) {
  using T = TypeParam;
  auto top = [](index_t n, bool scalable) {
    std::vector<T> x(static_cast<size_t>(n), T(-2));
    x.back() = T(3);
    if (scalable)
      scalable_softmax(x.data(), x.data(), n, 0.43);
    else
      softmax(x.data(), n);
    return x.back();
  };
  // Softmax's top weight falls monotonically with n; SSMax's rises once s*5 > 1.
  EXPECT_GT(top(100, false), top(100000, false));
  EXPECT_LT(top(100, true), top(100000, true));
  EXPECT_GT(top(100000, true), 0.99);
}

TYPED_TEST(RowApi, LogSumExpMatchesReference) {
  using T = TypeParam;
  std::vector<T> x(777);
  for (size_t i = 0; i < x.size(); ++i) x[i] = static_cast<T>(std::cos(double(i)) * 30);
  for (T m : {T(0), T(0.5), T(1), T(3)}) {
    const double ref = reference::log_sum_exp(x.data(), 777, double(m));
    const double eps = std::numeric_limits<T>::epsilon();
    EXPECT_NEAR(log_sum_exp(x.data(), 777, m), ref,
                eps * (std::abs(ref) + testing::sum_ulp(detail::simd<default_arch, T>::width) + 6));
  }
  std::vector<T> masked(5, -std::numeric_limits<T>::infinity());
  EXPECT_EQ(log_sum_exp(masked.data(), 5), -std::numeric_limits<T>::infinity());
}

}  // namespace
}  // namespace ssmax
