// The logit's extras (logit.hpp: additive bias, ALiBi, soft-cap, sinks), the bidirectional
// local window and per-row n (mask.hpp), against the double reference, which computes the
// logit from attention.hpp's formula: every feature x policy x mask kind, both paths, one
// and several threads (bitwise the same), float and double; then the properties the
// formula implies (c -> infinity is no cap, a -inf sink is none, zero slopes and a zero bias
// are none, a -inf bias is the boolean mask with the same n).

#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <memory>
#include <random>
#include <ssmax/attention.hpp>
#include <string>
#include <type_traits>
#include <vector>

#include "support/attention_cases.hpp"
#include "support/attention_check.hpp"

namespace ssmax::testing {
namespace {

// The default architecture only: the features live outside the SIMD inner loops, whose
// every width test_attention covers (and keeps this file's compile time short).
template <class T>  // float or double
class LogitTest : public ::testing::Test {};
using element_types_here = ::testing::Types<float, double>;
TYPED_TEST_SUITE(LogitTest, element_types_here);

constexpr index_t B = 2, n_q = 9, n_k = 21, H = 4;
const float kNegInf = -std::numeric_limits<float>::infinity();

constexpr case_shape kShape{B, n_q, n_k, H};

/// The extras every case shares: a bias with some -inf entries (one row hidden entirely),
/// ALiBi slopes, per-head sinks (one of them -inf: no sink).
logit_extras extras() { return logit_extras(kShape, 3, {0.5f, -1.0f, 2.0f, kNegInf}); }

/// Runs both paths with 1 and 3 threads: each against the reference, the two thread counts
/// bitwise equal.
template <class T, class Policy>  // float or double; a length policy
void check_case(const attention_data<T>& data, attention_options<Policy> o,
                const std::string& what) {
  for (auto path : {attention_path::fused, attention_path::materialised}) {
    o.threads = 1;
    const auto one = run_attention<default_arch>(data, o, path);
    const std::string w = what + (path == attention_path::fused ? " [fused]" : " [materialised]");
    expect_matches_reference(data, o, one, w);
    o.threads = 3;
    const auto three = run_attention<default_arch>(data, o, path);
    EXPECT_EQ(one.out, three.out) << w << " threads";
    EXPECT_EQ(one.lse, three.lse) << w << " threads";
  }
}

TYPED_TEST(LogitTest, EveryFeatureTimesPolicyTimesMask) {
  using T = TypeParam;
  const logit_extras in = extras();
  const mask_cases masks(kShape);
  unsigned seed = 0;
  // Softmax, SSMax with per-head s and b (m > 0, and m < 0 on some rows) and one
  // position-dependent peer, crossed with every feature on these mask kinds; the other
  // kinds take one feature x policy each, in turn.
  const std::vector<std::string> crossed = {
      "none",         "causal",  "window",        "local",   "local-zero-width",
      "local-causal", "padding", "varlen-causal", "boolean", "row-n"};
  for_each_mask_feature_policy<softmax_kind | ssmax_per_head_kind | ssmax_negative_kind |
                               llama4_kind>(
      masks, logit_extras::features(), {H, 4, 32}, crossed,
      [&](const mask_case& mc, const std::string& feature, const std::string& pname,
          const auto& policy, ssmax_parameters*) {
        attention_data<T> data(masks.batch_of(mc), n_q, n_k, H, 2, 8, ++seed);
        attention_options<std::decay_t<decltype(policy)>> o = options_for(policy, mc.mask);
        o.logit = in.options(feature, masks.batch_of(mc));  // packed: a [1, ...] bias
        check_case(data, o, mc.name + " x " + feature + " x " + pname);
      });
}

TYPED_TEST(LogitTest, PackedSequencesTakeAPackedBias) {
  using T = TypeParam;
  static const index_t cu_q[] = {0, 4, 9}, cu_k[] = {0, 10, 21};
  const logit_extras in = extras();  // its first H * n_q * n_k entries: a [1, H, n_q, n_k] bias
  attention_data<T> data(1, n_q, n_k, H, 1, 16, 5);
  attention_options<ssmax_policy> o;
  o.mask = attention_mask::varlen(cu_q, cu_k, 2, true);
  o.logit.bias = logit_bias::dense(in.bias.data(), 1, H, n_q, n_k);
  o.logit.softcap = 2.0;
  check_case(data, o, "varlen + bias");
}

TYPED_TEST(LogitTest, LongRowsCrossKeyBlocksAndDecodeChunks) {
  using T = TypeParam;
  std::vector<float> slopes = alibi_slopes(3), sinks = {1.0f, -0.5f, 3.0f};
  attention_data<T> prefill(1, 70, 600, 3, 1, 32, 8), decode(1, 1, 5000, 3, 3, 32, 9);
  for (const auto* data : {&prefill, &decode}) {
    attention_options<ssmax_policy> o;
    o.policy = ssmax_policy(0.43, -0.5);
    o.mask = attention_mask::causal_mask();
    o.logit.alibi_slopes = slopes.data(), o.logit.alibi_heads = 3;
    o.logit.softcap = 3.0;
    o.logit.sinks = sinks.data(), o.logit.sink_heads = 3;
    check_case(*data, o, "long rows n_k=" + std::to_string(data->n_k));
  }
}

// ---------------------------------------------------------------------------------------
// Properties of the formula.

/// Expects the call with `with` to match the reference of `without` (the same function).
template <class T, class Policy>  // float or double; a length policy
void expect_same_function(const attention_data<T>& data, attention_options<Policy> with,
                          const attention_options<Policy>& without, const std::string& what) {
  for (auto path : {attention_path::fused, attention_path::materialised}) {
    const auto run = run_attention<default_arch>(data, with, path);
    expect_matches_reference(data, without, run,
                             what + (path == attention_path::fused ? " [fused]" : " [mat]"));
  }
}

TYPED_TEST(LogitTest, LimitsThatAreTheFeatureAbsent) {
  using T = TypeParam;
  attention_data<T> data(B, n_q, n_k, H, 2, 16, 21);
  attention_options<ssmax_policy> plain;
  plain.policy = ssmax_policy(0.5, -0.3);
  plain.mask = attention_mask::causal_mask();

  auto capped = plain;  // c -> infinity: c tanh(x / c) = x (1 - x^2 / 3c^2 ...)
  capped.logit.softcap = 1e9;
  expect_same_function(data, capped, plain, "softcap 1e9");

  const std::vector<float> zero_slopes(H, 0.0f), zero_bias(B * H * n_q * n_k, 0.0f);
  auto alibi = plain;
  alibi.logit.alibi_slopes = zero_slopes.data(), alibi.logit.alibi_heads = H;
  expect_same_function(data, alibi, plain, "zero slopes");
  auto biased = plain;
  biased.logit.bias = logit_bias::dense(zero_bias.data(), B, H, n_q, n_k);
  expect_same_function(data, biased, plain, "zero bias");

  // A -inf sink is no sink: the same path, bit for bit.
  const std::vector<float> no_sinks(H, kNegInf);
  auto sunk = plain;
  sunk.logit.sinks = no_sinks.data(), sunk.logit.sink_heads = H;
  for (auto path : {attention_path::fused, attention_path::materialised}) {
    const auto a = run_attention<default_arch>(data, sunk, path);
    const auto b = run_attention<default_arch>(data, plain, path);
    EXPECT_EQ(a.out, b.out);
    EXPECT_EQ(a.lse, b.lse);
    EXPECT_EQ(a.weights, b.weights);
  }
}

TYPED_TEST(LogitTest, MinusInfinityBiasIsTheBooleanMask) {
  using T = TypeParam;
  attention_data<T> data(B, n_q, n_k, H, 1, 8, 31);
  std::unique_ptr<bool[]> allowed(new bool[static_cast<size_t>(B * H * n_q * n_k)]);
  std::vector<float> bias(static_cast<size_t>(B * H * n_q * n_k));
  std::mt19937 gen(4);
  for (size_t e = 0; e < bias.size(); ++e) {
    allowed[e] = gen() % 3 != 0;
    bias[e] = allowed[e] ? 0.0f : kNegInf;
  }
  for (index_t j = 0; j < n_k; ++j) allowed[static_cast<size_t>(j)] = false, bias[j] = kNegInf;
  attention_options<ssmax_policy> boolean, additive;
  boolean.policy = additive.policy = ssmax_policy(0.6, -0.4);  // n decides m, and its sign
  boolean.mask = attention_mask::boolean(allowed.get(), n_k, H * n_q * n_k, n_q * n_k);
  additive.logit.bias = logit_bias::dense(bias.data(), B, H, n_q, n_k);
  // The same n for every row.
  for (index_t b = 0; b < B; ++b)
    for (index_t h = 0; h < H; ++h)
      for (index_t i = 0; i < n_q; ++i) {
        const sequence_span seq = sequence_of(boolean.mask, b, n_q, n_k);
        const row_keys x = visible_keys(boolean.mask, seq, h, i);
        const row_keys y = visible_keys(additive.mask, additive.logit, seq, h, i);
        ASSERT_EQ(x.visible, y.visible);
        ASSERT_EQ(x.n, y.n);
      }
  expect_same_function(data, additive, boolean, "-inf bias");
  // A row the bias hides entirely outputs zeros and lse -inf, as the boolean mask's does.
  const auto run = run_attention<default_arch>(data, additive, attention_path::fused);
  EXPECT_EQ(run.lse[0], -std::numeric_limits<T>::infinity());
}

TYPED_TEST(LogitTest, RowsWhoseKeysAllWeighZeroTakeTheSink) {
  using T = TypeParam;
  // Every key scores -inf (q > 0, k = -inf): the row sees 5 keys that all weigh 0. With a
  // sink the whole weight is the sink's: out = 0 and lse = m sink, m = 0.5 log 5 + 0.2
  // (the formula with every exp(m z) = 0); without one, zeros and lse -inf.
  attention_data<T> data(1, 1, 5, 1, 1, 4, 5);
  for (auto& x : data.q) x = std::abs(x) + T(0.1);
  for (auto& x : data.k) x = -std::numeric_limits<T>::infinity();
  const float sink = 0.7f;
  attention_options<ssmax_policy> o;
  o.policy = ssmax_policy(0.5, 0.2);
  const double m = 0.5 * std::log(5.0) + 0.2;
  for (auto path : {attention_path::fused, attention_path::materialised}) {
    o.logit = {};
    const auto plain = run_attention<default_arch>(data, o, path);
    for (T x : plain.out) EXPECT_EQ(x, T(0));
    EXPECT_EQ(plain.lse[0], -std::numeric_limits<T>::infinity());
    o.logit.sinks = &sink, o.logit.sink_heads = 1;
    const auto with = run_attention<default_arch>(data, o, path);
    for (T x : with.out) EXPECT_EQ(x, T(0));
    EXPECT_NEAR(double(with.lse[0]), m * double(sink), 4 * std::numeric_limits<T>::epsilon());
  }
}

TEST(Logit, AlibiSlopesAreTheStandardGeometricSequence) {
  const auto eight = alibi_slopes(8);
  ASSERT_EQ(eight.size(), 8u);
  for (index_t h = 0; h < 8; ++h) EXPECT_EQ(eight[h], std::exp2(-static_cast<float>(h + 1)));
  // 12 heads: the 8 slopes of P = 8, then the even-indexed slopes of 16 (2^-0.5, 2^-1.5, ...).
  const auto twelve = alibi_slopes(12);
  ASSERT_EQ(twelve.size(), 12u);
  for (index_t h = 0; h < 8; ++h) EXPECT_EQ(twelve[h], eight[h]);
  for (index_t e = 0; e < 4; ++e)
    EXPECT_FLOAT_EQ(twelve[8 + e], static_cast<float>(std::exp2(-0.5 - 1.0 * e)));
}

TEST(Logit, PerRowNReplacesTheVisibleCount) {
  static const index_t row_n[] = {5, 0, 7, 1};  // [B = 2, n_q = 2]
  attention_mask m = attention_mask::causal_mask();
  m.row_n = row_n;
  m.n_override = 3;
  for (index_t b = 0; b < 2; ++b) {
    const sequence_span seq = sequence_of(m, b, 2, 4);
    for (index_t i = 0; i < 2; ++i) {
      const index_t given = row_n[b * 2 + i];
      EXPECT_EQ(visible_keys(m, seq, 0, i).n, given > 0 ? given : 3);
    }
  }
}

}  // namespace
}  // namespace ssmax::testing
