// The exp every kernel uses (detail::simd<Arch, T>::exp): its error bound over the range
// the kernels feed it, [-80, 0] for float and [-700, 0] for double, in ulp, measured
// against long double expl on a dense grid plus the edges.

#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <limits>
#include <vector>

#include "support/architectures.hpp"
#include "support/ulp.hpp"

namespace ssmax::testing {
namespace {

/// The bound the kernels' doc comments state for exp, per element type.
template <class T>
constexpr double kExpUlpBound = 2.0;

template <class Config>
class Exp : public ::testing::Test {};
TYPED_TEST_SUITE(Exp, kernel_configs, config_name);

TYPED_TEST(Exp, WithinStatedUlpOnKernelRange) {
  using Arch = typename TypeParam::arch;
  using T = typename TypeParam::value_type;
  using S = ::ssmax::detail::simd<Arch, T>;
  SSMAX_SKIP_UNLESS_CPU_SUPPORTS(Arch);

  const T lo = std::is_same<T, float>::value ? T(-80) : T(-700);
  const index_t points = 1 << 18;
  std::vector<T> x(static_cast<size_t>(points) + S::width);
  for (index_t i = 0; i < points; ++i) x[i] = lo + (T(0) - lo) * T(i) / T(points - 1);

  double worst = 0.0;
  T worst_at = 0;
  T out[S::width];
  for (index_t i = 0; i < points; i += S::width) {
    S::store(out, S::exp(S::load(x.data() + i)));
    for (index_t k = 0; k < S::width && i + k < points; ++k) {
      const double e = ulp_error<T>(out[k], std::exp(static_cast<long double>(x[i + k])));
      if (e > worst) worst = e, worst_at = x[i + k];
    }
  }
  this->RecordProperty("max_ulp", std::to_string(worst));
  EXPECT_LE(worst, kExpUlpBound<T>) << "worst at x = " << worst_at;
  std::printf("%s max %.3f ulp at %g\n", Arch::name(), worst, double(worst_at));
}

TYPED_TEST(Exp, EdgesAreExact) {
  using Arch = typename TypeParam::arch;
  using T = typename TypeParam::value_type;
  using S = ::ssmax::detail::simd<Arch, T>;
  SSMAX_SKIP_UNLESS_CPU_SUPPORTS(Arch);
  const T inf = std::numeric_limits<T>::infinity();
  auto exp1 = [](T v) {
    T out[S::width];
    S::store(out, S::exp(S::splat(v)));
    return out[0];
  };
  EXPECT_EQ(exp1(T(0)), T(1));
  EXPECT_EQ(exp1(-inf), T(0));  // masked keys weigh exactly 0
  EXPECT_EQ(exp1(-std::numeric_limits<T>::max()), T(0));
  EXPECT_TRUE(std::isnan(exp1(std::numeric_limits<T>::quiet_NaN())));
}

}  // namespace
}  // namespace ssmax::testing
