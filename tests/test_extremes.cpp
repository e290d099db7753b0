// Extreme inputs and their documented answers (softmax.hpp's and attention.hpp's contracts;
// docs/preconditions.md lists them): logits of +-1e30, +-inf and NaN, all-equal rows, rows
// of n = 2^24 floats, very large and very small SSMax scales, subnormal logits and
// multipliers, single-entry rows, and length-policy positions near the largest index.
// At the attention level: empty batch entries, fully masked rows, d = 1, far more keys than
// queries, huge, tiny and equal logits, values near the largest finite value. Every expected value
// is derived: from the double references, under the bounds of support/row_bound.hpp and
// support/attention_check.hpp, or from the closed form the contract states.

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <random>
#include <ssmax/reference/softmax.hpp>
#include <ssmax/softmax.hpp>
#include <vector>

#include "support/architectures.hpp"
#include "support/attention_check.hpp"
#include "support/expect_error.hpp"
#include "support/row_check.hpp"

namespace ssmax::testing {
namespace {

template <class Config>  // kernel_config<Arch, T>
class Extremes : public kernel_test<Config> {
 protected:
  using base = kernel_test<Config>;
  using base::W;
  using typename base::arch, typename base::value_type;

  /// softmax(m x) through the public API on this architecture.
  static std::vector<value_type> run(const std::vector<value_type>& x, value_type m) {
    std::vector<value_type> y(x.size(), value_type(-42));
    scaled_softmax<arch>(x.data(), y.data(), static_cast<index_t>(x.size()), m);
    return y;
  }

  /// The contract for any row: all NaN when x holds a NaN; otherwise no NaN, no subnormal
  /// output, and every weight within the row bound of the double reference.
  static std::vector<value_type> check(const std::vector<value_type>& x, value_type m,
                                       const std::string& what) {
    const auto y = run(x, m);
    const auto n = static_cast<index_t>(x.size());
    bool has_nan = false;
    for (value_type v : x) has_nan = has_nan || std::isnan(v);
    for (index_t i = 0; i < n; ++i) {
      if (has_nan) {
        EXPECT_TRUE(std::isnan(y[i])) << what << ": y[" << i << "]";
        continue;
      }
      EXPECT_FALSE(std::isnan(y[i])) << what << ": y[" << i << "]";
      EXPECT_NE(std::fpclassify(y[i]), FP_SUBNORMAL) << what << ": y[" << i << "] = " << y[i];
    }
    if (!has_nan) {
      const auto r = reference::scaled_softmax(x.data(), n, static_cast<double>(m));
      expect_row_matches(x.data(), n, static_cast<double>(m), y.data(), r, W, what.c_str());
    }
    return y;
  }

  static std::vector<value_type> normal_row(index_t n, double sigma, unsigned seed) {
    std::mt19937 rng(seed);
    std::normal_distribution<double> d(0.0, sigma);
    std::vector<value_type> x(static_cast<size_t>(n));
    for (auto& v : x) v = static_cast<value_type>(d(rng));
    return x;
  }

  /// Row lengths around this architecture's vector and unrolled-loop boundaries.
  static std::vector<index_t> lengths() { return {1, 2, W - 1 + (W == 1), W + 1, 4 * W + 3, 1000}; }
};
TYPED_TEST_SUITE(Extremes, kernel_configs, config_name);

// +-1e30 (and +-max) logits never overflow: the maximum is subtracted first, so the largest
// entries share the weight and entries 2e30 below weigh exactly 0, for Softmax and SSMax.
TYPED_TEST(Extremes, HugeLogitsDoNotOverflow) {
  using T = typename TestFixture::value_type;
  for (index_t n : TestFixture::lengths()) {
    for (T big : {T(1e30), std::numeric_limits<T>::max()}) {
      auto x = TestFixture::normal_row(n, 1.0, 3);
      for (index_t i = 0; i < n; ++i) x[static_cast<size_t>(i)] += (i % 3 == 0) ? big : -big;
      for (double m : {1.0, 0.43 * std::log(static_cast<double>(n)), 1e-3, 1e20}) {
        const auto y = TestFixture::check(x, static_cast<T>(m), "+-big");
        for (index_t i = 0; i < n; ++i)
          if (i % 3 != 0) {
            EXPECT_EQ(y[static_cast<size_t>(i)], T(0)) << "n = " << n;
          }
      }
    }
  }
}

// +inf entries share the weight equally and everything else gets 0 (the limit of softmax);
// -inf entries weigh 0; a row of only -inf is all zeros with log-sum-exp -inf; +inf and
// -inf together are not NaN.
TYPED_TEST(Extremes, InfinitiesHaveTheirLimits) {
  using T = typename TestFixture::value_type;
  using Arch = typename TestFixture::arch;
  const T plus_inf = TestFixture::inf;
  for (index_t n : TestFixture::lengths()) {
    if (n < 2) continue;  // SingleEntryRows covers n = 1
    auto x = TestFixture::normal_row(n, 5.0, 4);
    x[0] = plus_inf;
    x.back() = -plus_inf;
    for (T m : {T(1), T(0), T(1e30)}) {
      const auto y = TestFixture::check(x, m, "+inf and -inf");
      EXPECT_EQ(y[0], T(1)) << "the lone +inf takes all the weight, n = " << n;
    }
    std::vector<T> minus(x.size(), -plus_inf);
    for (T m : {T(1), T(0)}) {
      const auto y = TestFixture::check(minus, m, "all -inf");
      for (T v : y) EXPECT_EQ(v, T(0));
      EXPECT_EQ(log_sum_exp<Arch>(minus.data(), n, m), -plus_inf);
      EXPECT_TRUE(row_state_of<Arch>(minus.data(), n, m).empty());
    }
    EXPECT_EQ(log_sum_exp<Arch>(x.data(), n), plus_inf);
  }
}

// One NaN anywhere, even beside +-inf or in an all -inf row, makes every weight and the
// log-sum-exp NaN, on every code path (vector body, unrolled loop, tail, uniform rows).
TYPED_TEST(Extremes, NaNAnywhereMakesEverythingNaN) {
  using T = typename TestFixture::value_type;
  using Arch = typename TestFixture::arch;
  for (index_t n : TestFixture::lengths()) {
    for (index_t at : {index_t(0), n / 2, n - 1}) {
      auto x = TestFixture::normal_row(n, 1.0, 5);
      x[static_cast<size_t>(at)] = TestFixture::nan;
      std::vector<T> minus(x.size(), -TestFixture::inf), plus(x.size(), TestFixture::inf);
      minus[static_cast<size_t>(at)] = TestFixture::nan;
      plus[static_cast<size_t>(at)] = TestFixture::nan;
      for (T m : {T(1), T(0), T(1e30)}) {
        TestFixture::check(x, m, "NaN");
        TestFixture::check(minus, m, "NaN among -inf");
        TestFixture::check(plus, m, "NaN among +inf");
        EXPECT_TRUE(std::isnan(log_sum_exp<Arch>(x.data(), n, m)));
        EXPECT_TRUE(std::isnan(log_sum_exp<Arch>(minus.data(), n, m)));
      }
    }
  }
}

// A row of n equal finite logits gets n equal weights, each 1/n rounded once to T, whatever
// the value (0, +-1e30, +-max, subnormal) and the multiplier (one rounding of 1/n to T,
// through double on the common path: within eps of 1/n); its state is {m x, n}.
TYPED_TEST(Extremes, AllEqualRowsAreExactlyUniform) {
  using T = typename TestFixture::value_type;
  using Arch = typename TestFixture::arch;
  const T lim = std::numeric_limits<T>::max();
  for (index_t n : TestFixture::lengths()) {
    for (T v :
         {T(0), T(-7.25), T(1e30), T(-1e30), lim, -lim, std::numeric_limits<T>::denorm_min()}) {
      for (T m : {T(1), T(0), T(1e-30), T(1e30)}) {
        std::vector<T> x(static_cast<size_t>(n), v);
        const auto y = TestFixture::check(x, m, "all equal");
        const double exact = 1.0 / static_cast<double>(n);
        for (T w : y) {
          EXPECT_EQ(w, y[0]);
          EXPECT_LE(std::abs(static_cast<double>(w) - exact),
                    exact * std::numeric_limits<T>::epsilon())
              << "n = " << n << ", x = " << v << ", m = " << m;
        }
        const auto state = row_state_of<Arch>(x.data(), n, m);
        EXPECT_EQ(state.sum, static_cast<T>(n));
        if (std::isfinite(m * v)) {
          EXPECT_EQ(state.max, m == T(0) ? T(0) : m * v);
        }
      }
    }
  }
}

// A single-entry row is {1} for any finite or +inf entry, {0} for -inf, {NaN} for NaN.
TYPED_TEST(Extremes, SingleEntryRows) {
  using T = typename TestFixture::value_type;
  using Arch = typename TestFixture::arch;
  for (T v : {T(0), T(1e30), -std::numeric_limits<T>::max(), TestFixture::inf}) {
    T y = T(-42);
    softmax<Arch>(&v, &y, 1);
    EXPECT_EQ(y, T(1)) << "x = " << v;
  }
  T minus = -TestFixture::inf, y = T(-42);
  softmax<Arch>(&minus, &y, 1);
  EXPECT_EQ(y, T(0));
  T not_a_number = TestFixture::nan;
  softmax<Arch>(&not_a_number, &y, 1);
  EXPECT_TRUE(std::isnan(y));
}

// Subnormal logits behave as the tiny numbers they are (nearly uniform weights); a
// subnormal multiplier is a valid m > 0; weights that would be subnormal are flushed to 0,
// so no output is ever subnormal.
TYPED_TEST(Extremes, SubnormalLogitsAndMultipliers) {
  using T = typename TestFixture::value_type;
  const T tiny = std::numeric_limits<T>::denorm_min();
  const T small = std::numeric_limits<T>::min() / T(8);  // subnormal too
  for (index_t n : TestFixture::lengths()) {
    std::vector<T> x(static_cast<size_t>(n));
    for (index_t i = 0; i < n; ++i) x[static_cast<size_t>(i)] = (i % 2 ? tiny : -small) * T(i % 5);
    TestFixture::check(x, T(1), "subnormal logits");
    TestFixture::check(x, T(1e30), "subnormal logits, m = 1e30");
    const auto wide = TestFixture::normal_row(n, 50.0, 6);
    TestFixture::check(wide, tiny, "subnormal multiplier");
    TestFixture::check(wide, small, "subnormal multiplier");
    // exp(-200) in float and exp(-1500) in double are below the smallest normal number.
    std::vector<T> spread(static_cast<size_t>(n), T(0));
    for (index_t i = 1; i < n; i += 2)
      spread[static_cast<size_t>(i)] = -static_cast<T>(std::is_same<T, float>::value ? 90 : 715);
    const auto y = TestFixture::check(spread, T(1), "underflowing weights");
    for (index_t i = 1; i < n; i += 2) EXPECT_EQ(y[static_cast<size_t>(i)], T(0));
  }
}

// SSMax over the whole range of s: s -> 0 tends to uniform weights (m underflows to 0 in
// float at s = 1e-300: exactly uniform), huge s to all the weight on the largest logit; s
// so large that s log n exceeds T's range is rejected naming 'policy', before any write.
TYPED_TEST(Extremes, VeryLargeAndVerySmallScales) {
  using T = typename TestFixture::value_type;
  using Arch = typename TestFixture::arch;
  for (index_t n : TestFixture::lengths()) {
    if (n < 2) continue;  // log 1 = 0: every s gives m = 0
    auto x = TestFixture::normal_row(n, 3.0, 7);
    const double log_n = std::log(static_cast<double>(n));
    for (double s : {1e-300, 1e-30, 1e-8, 0.43, 1e8, 1e30}) {
      std::vector<T> y(x.size(), T(-42));
      scalable_softmax<Arch>(x.data(), y.data(), n, s);
      const T m = static_cast<T>(s * log_n);  // the multiplier the kernel runs with
      const auto r = reference::scaled_softmax(x.data(), n, static_cast<double>(m));
      expect_row_matches(x.data(), n, static_cast<double>(m), y.data(), r, TestFixture::W, "ssmax");
    }
    // The largest logit (normal_row has no ties) takes everything at s = 1e30.
    std::vector<T> y(x.size());
    scalable_softmax<Arch>(x.data(), y.data(), n, 1e30);
    const auto top = std::max_element(x.begin(), x.end()) - x.begin();
    EXPECT_EQ(y[static_cast<size_t>(top)], T(1));

    std::vector<T> untouched(x.size(), T(-42));
    if (std::is_same<T, float>::value) {  // s finite, s log n beyond the largest float
      const double too_big = 2.0 * static_cast<double>(std::numeric_limits<T>::max()) / log_n;
      expect_rejects([&] { scalable_softmax<Arch>(x.data(), untouched.data(), n, too_big); }, "s");
      expect_rejects([&] { scalable_softmax<Arch>(x.data(), untouched.data(), n, 0.43, 1e39); },
                     "b");  // b alone beyond the largest float
    }
    const double lim = std::numeric_limits<double>::max();  // s log n + b overflows double
    expect_rejects([&] { scalable_softmax<Arch>(x.data(), untouched.data(), n, lim, lim); },
                   std::is_same<T, float>::value ? "b" : "s");  // in float, b alone overflows
    expect_rejects(
        [&] {
          scalable_softmax<Arch>(x.data(), untouched.data(), n, 0.43,
                                 std::numeric_limits<double>::infinity());
        },
        "b");  // b = +inf: not finite
    for (T v : untouched) EXPECT_EQ(v, T(-42));
  }
}

// Positions near the largest index: the position policies' multipliers stay finite and
// no integer arithmetic overflows (UndefinedBehaviorSanitizer checks this in CI).
TEST(ExtremePositions, PoliciesAtTheLargestPosition) {
  const index_t last = std::numeric_limits<index_t>::max();
  const row_position far{1, last, 0};
  EXPECT_EQ(qwen_logn_policy{}.multiplier(far),
            std::log(static_cast<double>(last) + 1.0) / std::log(8192.0));
  EXPECT_TRUE(std::isfinite(llama4_temperature_policy{}.multiplier(far)));
  EXPECT_TRUE(std::isfinite(mistral_policy{}.multiplier(far)));
  EXPECT_EQ(ssmax_policy(0.5).multiplier({last, last, 0}),
            0.5 * std::log(static_cast<double>(last)));
  std::vector<float> x{1.0F, 2.0F}, y(2);
  policy_softmax(qwen_logn_policy{}, x.data(), y.data(), 2, far);
  policy_softmax(llama4_temperature_policy{}, x.data(), y.data(), 2, far);
  expect_rejects(
      [&] {
        policy_softmax(softmax_policy{}, x.data(), y.data(), 2, {2, -2, 0});
      },
      "where.position");
  expect_rejects(
      [&] {
        policy_softmax(softmax_policy{}, x.data(), y.data(), 2, {-2, 1, 0});
      },
      "where.visible");
  // A Llama 4 temperature whose multiplier overflows float at this position.
  llama4_temperature_policy hot;
  hot.attn_scale = 1e38;
  expect_rejects([&] { policy_softmax(hot, x.data(), y.data(), 2, far); }, "policy");
}

// n = 2^24 floats: log n and the weights' sum are formed in double, so the weights of an
// equal row are exactly 2^-24, a random row meets the same n-independent bound as short
// rows, and its weights sum to 1 within the sum of the per-weight bounds.
template <class Arch>  // xsimd architecture tag or scalar_arch
void check_long_float_row() {
  if (!cpu_supports<Arch>()) GTEST_SKIP() << "CPU lacks " << Arch::name();
  constexpr index_t n = index_t(1) << 24;
  constexpr index_t W = ::ssmax::detail::simd<Arch, float>::width;
  std::vector<float> x(static_cast<size_t>(n), 3.5F), y(x.size());
  softmax<Arch>(x.data(), y.data(), n);
  EXPECT_EQ(std::count(y.begin(), y.end(), std::ldexp(1.0F, -24)), n);

  std::mt19937 rng(24);
  std::normal_distribution<float> d(0.0F, 2.0F);
  for (auto& v : x) v = d(rng);
  const auto where = row_position{n, n - 1, 0};
  policy_softmax<Arch>(ssmax_policy(0.43), x.data(), y.data(), n, where);
  const double m = static_cast<float>(0.43 * std::log(static_cast<double>(n)));
  const auto r = reference::scaled_softmax(x.data(), n, m);
  EXPECT_LE(expect_row_matches(x.data(), n, m, y.data(), r, W, "n = 2^24"), 1.0);

  const row_bound<float> bound(x.data(), n, m, r, W);
  ::ssmax::detail::compensated_sum total, slack;
  for (index_t i = 0; i < n; ++i) {
    total.add(static_cast<double>(y[static_cast<size_t>(i)]));
    slack.add(bound(i));
  }
  EXPECT_NEAR(total.value(), 1.0, slack.value());
  EXPECT_NEAR(log_sum_exp<Arch>(x.data(), n, static_cast<float>(m)),
              reference::log_sum_exp(x.data(), n, m),
              std::numeric_limits<float>::epsilon() *
                  (std::abs(reference::log_sum_exp(x.data(), n, m)) + sum_ulp(W) + kExpUlp + 4.0));
}

// On the widest architecture of the build (the native and baseline presets give two).
TEST(ExtremeLength, FloatRowOf2To24) { check_long_float_row<default_arch>(); }

// Attention-level extremes, on the widest architecture of the build (test_attention.cpp
// covers every architecture on ordinary inputs). Each compares both kernels with
// reference::attention under the bound of support/attention_check.hpp.
template <class T>  // float or double
using AttentionExtremes = element_test<T>;
TYPED_TEST_SUITE(AttentionExtremes, element_types);

// Packed sequences with empty entries (no queries, no keys, or neither): empty sequences
// produce nothing, queries without keys are fully masked rows (zeros, log-sum-exp -inf).
TYPED_TEST(AttentionExtremes, EmptyBatchEntriesAndFullyMaskedRows) {
  using T = TypeParam;
  const index_t cu_q[] = {0, 0, 3, 3, 5, 9};    // sequence query counts 0, 3, 0, 2, 4
  const index_t cu_k[] = {0, 4, 4, 4, 10, 10};  // sequence key counts 4, 0, 0, 6, 0
  attention_data<T> data(1, 9, 10, 4, 2, 8, 31);
  for (bool causal : {false, true}) {
    attention_options<ssmax_policy> o;
    o.mask = attention_mask::varlen(cu_q, cu_k, 5, causal);
    check_both_paths<default_arch>(data, o, causal ? "varlen causal" : "varlen");
    const auto run = run_attention<default_arch>(data, o, attention_path::fused);
    const T minus_inf = -std::numeric_limits<T>::infinity();
    for (index_t i : {0, 1, 2, 5, 6, 7, 8})  // rows of the sequences without keys
      for (index_t h = 0; h < 4; ++h) {
        EXPECT_EQ(run.lse[static_cast<size_t>(h * 9 + i)], minus_inf) << "row " << i;
        for (index_t c = 0; c < 8; ++c)
          EXPECT_EQ(run.out[static_cast<size_t>((i * 4 + h) * 8 + c)], T(0)) << "row " << i;
      }
  }
  // A boolean mask that hides every key of some rows, with a fixed n for the policy.
  attention_data<T> square(2, 6, 6, 2, 1, 4, 32);
  bool hidden[6 * 6];  // [n_q, n_k], broadcast over batch and heads; odd rows see nothing
  for (index_t i = 0; i < 6; ++i)
    for (index_t j = 0; j < 6; ++j) hidden[i * 6 + j] = (i % 2 == 0) && j <= i;
  attention_options<ssmax_policy> o;
  o.mask = attention_mask::boolean(hidden, 6).with_n(4096);
  check_both_paths<default_arch>(square, o, "rows with every key hidden");
}

// d = 1 and far more keys than queries (one query over 2^16 keys), with SSMax's n from the
// mask and from a fixed length of 2^24.
TYPED_TEST(AttentionExtremes, HeadDimensionOneAndManyKeys) {
  using T = TypeParam;
  attention_data<T> data(1, 2, 1 << 16, 2, 1, 1, 33);
  attention_options<ssmax_policy> o;
  o.mask = attention_mask::causal_mask();
  check_both_paths<default_arch>(data, o, "d = 1, n_k = 2^16");
  o.mask = o.mask.with_n(index_t(1) << 24);
  check_both_paths<default_arch>(data, o, "d = 1, n_k = 2^16, n = 2^24");
}

// A KV cache at the largest legal offset (the last query's position + 1 is the largest
// index): causal rows see every key and a window hides them all (zeros), positions reach
// the policies without overflow, and the answer matches the reference; a larger offset is
// rejected (test_attention_errors.cpp).
TYPED_TEST(AttentionExtremes, QueriesAtTheLargestOffset) {
  using T = TypeParam;
  attention_data<T> data(1, 3, 40, 2, 1, 8, 36);
  const index_t offset = std::numeric_limits<index_t>::max() - 3;
  attention_options<qwen_logn_policy> qwen;
  qwen.mask = attention_mask::causal_mask(offset);
  check_both_paths<default_arch>(data, qwen, "Qwen at the largest offset");
  attention_options<llama4_temperature_policy> llama;
  llama.mask = attention_mask::sliding_window(25, offset);
  check_both_paths<default_arch>(data, llama, "Llama 4, window 25, at the largest offset");
}

// Large logits (weights one-hot up to rounding), all-equal keys (exactly uniform weights),
// subnormal queries (logits ~ 0: uniform), and SSMax scales from 1e-300 to 1e4.
TYPED_TEST(AttentionExtremes, LargeTinyAndEqualLogits) {
  using T = TypeParam;
  attention_data<T> big(1, 4, 300, 2, 2, 16, 34);
  for (auto& x : big.q) x *= T(1000);
  for (auto& x : big.k) x *= T(1000);
  check_both_paths<default_arch>(big, attention_options<ssmax_policy>{}, "logits ~ 1e6");

  attention_data<T> equal(1, 3, 200, 1, 1, 8, 35);
  for (index_t j = 0; j < 200; ++j)
    for (index_t c = 0; c < 8; ++c)
      equal.k[static_cast<size_t>(j * 8 + c)] = equal.k[static_cast<size_t>(c)];
  check_both_paths<default_arch>(equal, attention_options<softmax_policy>{}, "equal keys");

  attention_data<T> tiny(1, 3, 50, 1, 1, 8, 36);
  for (auto& x : tiny.q) x *= std::numeric_limits<T>::denorm_min();
  check_both_paths<default_arch>(tiny, attention_options<ssmax_policy>{}, "subnormal queries");

  for (double s : {1e-300, 1e-8, 1e4}) {
    attention_options<ssmax_policy> o;
    o.policy = ssmax_policy(s);
    check_both_paths<default_arch>(big, o, "s = " + std::to_string(s));
  }
}

// Values near the largest finite value: the fused path's running output sum_j p_j v_j
// (p_j <= 1) overflows there while out, a weighted mean of the values, does not; both
// paths must give the finite answer (the fused path recomputes such rows with normalised
// weights: kernels/online_softmax.hpp, recompute_normalised). Prefill with a decode tail,
// split decode, GQA, sinks and a soft-cap, and all-equal values (out is that value).
TYPED_TEST(AttentionExtremes, ValuesNearTheLargestFinite) {
  using T = TypeParam;
  const T big = std::numeric_limits<T>::max() / 4;
  attention_data<T> prefill(1, 131, 600, 4, 2, 16, 37);
  for (auto& x : prefill.v) x *= big;
  attention_options<ssmax_policy> causal;
  causal.mask = attention_mask::causal_mask();
  check_both_paths<default_arch>(prefill, causal, "max/4 values, causal prefill");
  attention_data<T> decode(2, 1, 5000, 4, 2, 16, 38);  // split into chunks
  for (auto& x : decode.v) x *= big;
  check_both_paths<default_arch>(decode, attention_options<ssmax_policy>{}, "max/4 values, decode");
  const std::vector<float> sinks = {0.5f, -1.0f, 2.0f, 0.0f};
  attention_options<ssmax_policy> extras = causal;
  extras.logit.sinks = sinks.data(), extras.logit.sink_heads = 4;
  extras.logit.softcap = 3.0;
  check_both_paths<default_arch>(prefill, extras, "max/4 values, sinks and soft-cap");
  attention_data<T> equal(1, 70, 300, 1, 1, 8, 39);
  for (auto& x : equal.v) x = std::numeric_limits<T>::max() * T(0.9);
  for (auto path : {attention_path::fused, attention_path::materialised}) {
    const auto run = run_attention<default_arch>(equal, attention_options<softmax_policy>{}, path);
    for (T x : run.out)  // the weights sum to 1 within n eps
      EXPECT_NEAR(x, equal.v[0], equal.v[0] * 400 * std::numeric_limits<T>::epsilon());
  }
}

// Values at the largest finite value itself: the weights sum to 1 only within n eps, so
// their mean can round past it; out is then that largest value (of the values' sign), not
// inf, on both paths, prefill and split decode, while a visible inf value still gives inf.
TYPED_TEST(AttentionExtremes, ValuesAtTheLargestFiniteStayFinite) {
  using T = TypeParam;
  const T top = std::numeric_limits<T>::max();
  struct shape {
    index_t n_q, n_k, d;
  };
  for (const shape sh : {shape{1, 7, 1}, shape{50, 300, 3}, shape{1, 3000, 2}})
    for (unsigned seed = 0; seed < 24; ++seed) {
      attention_data<T> data(1, sh.n_q, sh.n_k, 2, 1, sh.d, seed);
      const auto column_value = [&](size_t e) { return (e % sh.d) % 2 ? -top : top; };
      for (size_t e = 0; e < data.v.size(); ++e) data.v[e] = column_value(e);
      attention_options<softmax_policy> o;
      if (sh.n_q > 1) o.mask = attention_mask::causal_mask();
      for (auto path : {attention_path::fused, attention_path::materialised}) {
        const auto run = run_attention<default_arch>(data, o, path);
        for (size_t e = 0; e < run.out.size(); ++e) {
          const T want = column_value(e);  // every value of the column is want
          ASSERT_TRUE(std::isfinite(run.out[e])) << "seed " << seed << " element " << e;
          ASSERT_NEAR(run.out[e], want, top * 4000 * std::numeric_limits<T>::epsilon())
              << "seed " << seed << " element " << e;
        }
      }
      data.v[0] = std::numeric_limits<T>::infinity();  // key 0, column 0: visible to all
      for (auto path : {attention_path::fused, attention_path::materialised}) {
        const auto run = run_attention<default_arch>(data, o, path);
        ASSERT_EQ(run.out[0], std::numeric_limits<T>::infinity()) << "seed " << seed;
      }
    }
}

// The same rows with v in another layout than k ([B, H, S, d] against k's [B, S, H, d]), so
// that their row strides differ: the normalised recompute reads each value row through v's
// own stride, and the result equals the same call with v in k's layout bit for bit.
TYPED_TEST(AttentionExtremes, ValuesNearTheLargestFiniteInTheirOwnLayout) {
  using T = TypeParam;
  const T big = std::numeric_limits<T>::max() / 4;
  for (index_t n_q : {1, 2, 131}) {  // decode (dot products), prefill (packed V)
    attention_data<T> data(2, n_q, 300, 4, 2, 16, 40);
    for (auto& x : data.v) x = std::abs(x) * big;  // one sign: the running sums overflow
    std::vector<T> v_bhsd(data.v.size());
    const auto v_bshd = data.vv();
    const auto v_heads_major = bhsd_view(v_bhsd.data(), data.B, data.H_kv, data.n_k, data.d);
    for (index_t b = 0; b < data.B; ++b)
      for (index_t j = 0; j < data.n_k; ++j)
        for (index_t g = 0; g < data.H_kv; ++g)
          std::copy(v_bshd.row(b, j, g), v_bshd.row(b, j, g) + data.d, v_heads_major.row(b, j, g));
    attention_options<ssmax_policy> options;
    options.mask = attention_mask::causal_mask();
    check_both_paths<default_arch>(data, options, "max/4 values of one sign");
    for (auto path : {attention_path::fused, attention_path::materialised}) {
      options.path = path;
      const auto want = run_attention<default_arch>(data, options, path);
      auto got = data.make_out();
      attention<default_arch>(data.qv(), data.kv(), tensor_view<const T>(v_heads_major),
                              data.outv(got), options);
      for (size_t e = 0; e < got.size(); ++e)
        ASSERT_EQ(got[e], want.out[e])
            << "n_q " << n_q << " path " << static_cast<int>(path) << " element " << e;
    }
  }
}

}  // namespace
}  // namespace ssmax::testing
