// Length policies: each multiplier against its formula from ../shared/PAPER.md evaluated
// at points where the formula has a closed value, and every forbidden parameter rejected
// with an error naming it.

#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <ssmax/length_policy.hpp>
#include <vector>

#include "support/expect_error.hpp"

namespace ssmax {
namespace {

const double nan = std::numeric_limits<double>::quiet_NaN();
const double inf = std::numeric_limits<double>::infinity();

using testing::expect_rejects;

TEST(SoftmaxPolicy, IsOneEverywhere) {
  for (index_t n : {1, 2, 1000000}) EXPECT_EQ(softmax_policy{}.multiplier({n, n - 1, 0}), 1.0);
}

TEST(SsmaxPolicy, IsSLogNPlusB) {
  const ssmax_policy p(0.43, 0.25);
  EXPECT_EQ(p.multiplier({1, 0, 0}), 0.25);  // log 1 = 0: only the bias remains
  // n = e^k makes log n = k exactly representable up to rounding of exp.
  for (int k : {1, 3, 10}) {
    const auto n = static_cast<index_t>(std::round(std::exp(k)));
    EXPECT_DOUBLE_EQ(p.multiplier({n, 0, 0}), 0.43 * std::log(double(n)) + 0.25);
  }
  // n^(s z) = exp(m z): the defining identity of SSMax.
  const index_t n = 4096;
  const double z = 1.7;
  EXPECT_NEAR(std::pow(double(n), 0.43 * z), std::exp(ssmax_policy(0.43).multiplier({n, 0, 0}) * z),
              1e-12 * std::pow(double(n), 0.43 * z));
}

TEST(SsmaxPolicy, PerHeadParameters) {
  const std::vector<double> scales{0.1, 0.2, 0.3};
  const ssmax_policy p(scales, 0.0);
  EXPECT_EQ(p.heads(), 3);
  for (index_t h = 0; h < 3; ++h)
    EXPECT_DOUBLE_EQ(p.multiplier({100, 99, h}), 0.1 * double(h + 1) * std::log(100.0));
  EXPECT_NO_THROW(detail::check_policy(p, 3, "test"));
  expect_rejects([&] { detail::check_policy(p, 4, "test"); }, "policy");
  EXPECT_EQ(ssmax_policy(0.5).heads(), 0);  // one value serves any head count
  EXPECT_EQ(ssmax_policy(0.5, scales).heads(), 3);
}

TEST(SsmaxPolicy, FixedLengthIgnoresVisibleCount) {
  const ssmax_policy p(0.5, 0.0, 1024);
  EXPECT_DOUBLE_EQ(p.multiplier({1, 0, 0}), 0.5 * std::log(1024.0));
  EXPECT_DOUBLE_EQ(p.multiplier({7, 6, 0}), p.multiplier({70000, 69999, 0}));
}

TEST(SsmaxPolicy, ScaleMatchingSoftmaxGivesMultiplierOne) {
  for (index_t n_train : {2, 1024, 8192}) {
    const ssmax_policy p(ssmax_scale_matching_softmax(n_train));
    EXPECT_NEAR(p.multiplier({n_train, n_train - 1, 0}), 1.0, 4e-16);
    EXPECT_GT(p.multiplier({2 * n_train, 0, 0}), 1.0);  // sharper beyond the training length
  }
  expect_rejects([] { ssmax_scale_matching_softmax(1); }, "n_train");
}

TEST(SsmaxPolicy, RejectsForbiddenParameters) {
  for (double bad : {nan, inf, -inf}) {  // any finite value, negative ones included, is valid
    expect_rejects([&] { ssmax_policy(bad).validate("t"); }, "policy.s");
    expect_rejects([&] { ssmax_policy(0.4, bad).validate("t"); }, "policy.b");
  }
  const std::vector<double> two{0.1, 0.2}, three{0.1, 0.2, 0.3}, none;
  expect_rejects([&] { ssmax_policy(two, three).validate("t"); }, "policy.b");
  expect_rejects([&] { ssmax_policy(none, 0.0).validate("t"); }, "policy.s");
  const std::vector<double> negative{0.1, -0.2}, not_finite{0.1, nan};
  ssmax_policy(negative, -1.5).validate("t");  // trained parameters: any finite sign
  expect_rejects([&] { ssmax_policy(not_finite).validate("t"); }, "policy.s");
  expect_rejects([] { ssmax_policy(0.4, 0.0, -5).validate("t"); }, "policy.fixed_length");
}

TEST(QwenPolicy, LogRatioClampedAtOne) {
  const qwen_logn_policy p{2048};
  EXPECT_EQ(p.multiplier({1, 0, 0}), 1.0);
  EXPECT_EQ(p.multiplier({2048, 2047, 0}), 1.0);
  // p + 1 = L^2 gives log(L^2) / log(L) = 2.
  EXPECT_DOUBLE_EQ(p.multiplier({1, 2048 * 2048 - 1, 0}), 2.0);
  expect_rejects([] { qwen_logn_policy{1}.validate("t"); }, "policy.train_length");
}

TEST(Llama4Policy, StepsEveryFloorScalePositions) {
  const llama4_temperature_policy p{8192, 0.1};
  EXPECT_EQ(p.multiplier({1, 0, 0}), 1.0);
  EXPECT_EQ(p.multiplier({1, 8190, 0}), 1.0);  // (p + 1) / 8192 < 1
  EXPECT_DOUBLE_EQ(p.multiplier({1, 8191, 0}), 1.0 + 0.1 * std::log(2.0));
  EXPECT_DOUBLE_EQ(p.multiplier({1, 3 * 8192 - 1, 0}), 1.0 + 0.1 * std::log(4.0));
  expect_rejects([] { llama4_temperature_policy{0, 0.1}.validate("t"); }, "policy.floor_scale");
  expect_rejects([] { llama4_temperature_policy{8, nan}.validate("t"); }, "policy.attn_scale");
}

TEST(MistralPolicy, StepsEveryOriginalLength) {
  const mistral_policy p{16384, 0.1};
  EXPECT_EQ(p.multiplier({1, 16383, 0}), 1.0);
  EXPECT_DOUBLE_EQ(p.multiplier({1, 16384, 0}), 1.0 + 0.1 * std::log(2.0));
  expect_rejects([] { mistral_policy{0, 0.1}.validate("t"); }, "policy.original_length");
  expect_rejects([] { mistral_policy{4, -1.0}.validate("t"); }, "policy.beta");
}

TEST(AllPolicies, MultiplierNonNegativeAndFiniteForHugeN) {
  const index_t huge = index_t(1) << 40;
  EXPECT_TRUE(std::isfinite(ssmax_policy(10.0, 3.0).multiplier({huge, huge - 1, 0})));
  EXPECT_TRUE(std::isfinite(qwen_logn_policy{}.multiplier({huge, huge - 1, 0})));
  EXPECT_TRUE(std::isfinite(llama4_temperature_policy{}.multiplier({huge, huge - 1, 0})));
  EXPECT_TRUE(std::isfinite(mistral_policy{}.multiplier({huge, huge - 1, 0})));
}

}  // namespace
}  // namespace ssmax
