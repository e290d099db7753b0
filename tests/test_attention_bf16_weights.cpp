// The opt-in bf16 P V of the fused prefill (attention_options::allow_bf16_weights;
// kernels/gemm_bf16.hpp, bf16_values: the weights rounded to bf16 pairs, O += P V through
// vdpbf16ps on a pair-packed V) against the double reference on the same bf16 values,
// within attention.hpp's bound plus the rounding of each weight (2^-8 sum_j a_ij |v_jc|)
// and the flush of denormals: every mask kind, Softmax, SSMax and negative multipliers,
// the logit features, q and out in bf16 or float, odd d and odd key counts, scores that
// overflow; the materialised path ignores the permission; results do not depend on the
// thread count; and the permission changes the results (so these tests run the path).
// The bf16 method is forced to dot_products (attention_options::bf16), which the bf16
// weights need, whatever the CPU's automatic choice.
// Skipped where the build or the CPU lacks AVX512-BF16.

#include <gtest/gtest.h>

#include <limits>
#include <random>
#include <string>

#include "support/cpu_features.hpp"
#include "support/stored_attention.hpp"

namespace {

using namespace ssmax;
using namespace ssmax::testing;
using ssmax::index_t;
using Arch = widest_architecture;

/// The unit roundoff of a weight rounded to bf16 (8 significand bits, to nearest even).
const double kBf16WeightUnit = std::ldexp(1.0, -8);

template <class C>  // combo<Q, KV, O>
constexpr bool takes_bf16_weights() {
  return kernels::detail::bf16_weights_path<
      Arch, float,
      kernels::storage_set<typename C::q, typename C::kv, typename C::kv, typename C::out>>;
}

#define SKIP_WITHOUT_BF16_WEIGHTS(C)                      \
  if (!takes_bf16_weights<C>() || !cpu_has_avx512_bf16()) \
  GTEST_SKIP() << "no AVX512-BF16 P V path in this build or on this CPU"

/// The fused path with the permission against the reference (the rounded weights'
/// bound), and the materialised path with it against the unchanged bound.
template <class C, class Policy>  // combo; a length policy
void check_bf16_weights(const stored_data<C>& data, attention_options<Policy> o,
                        const std::string& what) {
  using O = typename C::out;
  o.allow_bf16_weights = true;
  o.bf16 = bf16_method::dot_products;
  const std::string types =
      std::string(" [q ") + type_name(typename C::q{}) + ", out " + type_name(O{}) + "]";
  const auto fused = run_stored<Arch>(data, o, attention_path::fused);
  expect_matches_reference(data.exact, o, fused, what + types + " fused", out_unit<O>(),
                           out_tiny<O>(), flushed_dots<Arch, C>(), kBf16WeightUnit);
  const auto mat = run_stored<Arch>(data, o, attention_path::materialised);
  expect_matches_reference(data.exact, o, mat, what + types + " materialised", out_unit<O>(),
                           out_tiny<O>());
}

template <class C>  // combo<Q, bf16, O>
void every_mask_policy_and_feature() {
  const logit_cases cases(40, 301, 7);  // an odd key count: the last pair is half padding
  check_signed_logit_cases<C>(cases, {"none", "bias+alibi", "softcap+sinks"}, 70,
                              [](const auto& data, const attention_options<ssmax_policy>& o,
                                 const std::string& what) { check_bf16_weights(data, o, what); });
}

TEST(Bf16Weights, EveryMaskPolicyAndFeatureAllBf16) {
  using C = combo<bf16, bf16, bf16>;
  SKIP_WITHOUT_BF16_WEIGHTS(C);
  every_mask_policy_and_feature<C>();
}

TEST(Bf16Weights, EveryMaskPolicyAndFeatureFloatQAndOut) {
  // Float q: the float score GEMM on the widened K^T, then the bf16 P V.
  using C = combo<f32, bf16, f32>;
  SKIP_WITHOUT_BF16_WEIGHTS(C);
  every_mask_policy_and_feature<C>();
}

TEST(Bf16Weights, LongPrefillOddDimensionsAndADecodeTail) {
  using C = combo<bf16, bf16, f32>;
  SKIP_WITHOUT_BF16_WEIGHTS(C);
  // 131 rows: one 128-row prefill task (the bf16 P V) then a 3-row decode task (dot
  // products, in float); d = 128, 65 and 17; 701 keys (an odd count, three key blocks).
  for (index_t d : {128, 65, 17}) {
    stored_data<C> data(1, 131, 701, 2, 1, d, static_cast<unsigned>(d));
    attention_options<ssmax_policy> o;
    o.policy = ssmax_policy(0.43);
    o.mask = attention_mask::causal_mask();
    check_bf16_weights(data, o, "prefill 131 x 701 d=" + std::to_string(d));
  }
}

TEST(Bf16Weights, ThePermissionChangesTheFusedResultsOnly) {
  using C = combo<bf16, bf16, f32>;
  SKIP_WITHOUT_BF16_WEIGHTS(C);
  stored_data<C> data(1, 200, 300, 2, 2, 64, 91);
  auto exact = options_for(ssmax_policy(0.5), attention_mask::causal_mask());
  exact.bf16 = bf16_method::dot_products;
  attention_options<ssmax_policy> allowed = exact;
  allowed.allow_bf16_weights = true;
  const auto a = run_stored<Arch>(data, exact, attention_path::fused);
  const auto b = run_stored<Arch>(data, allowed, attention_path::fused);
  // The rounded weights move the outputs (by up to 2^-8 relative), never the lse.
  index_t differ = 0;
  for (size_t e = 0; e < a.out.size(); ++e) differ += a.out[e] != b.out[e];
  EXPECT_GT(differ, static_cast<index_t>(a.out.size() / 4));
  EXPECT_EQ(a.lse, b.lse);
  const auto ma = run_stored<Arch>(data, exact, attention_path::materialised);
  const auto mb = run_stored<Arch>(data, allowed, attention_path::materialised);
  EXPECT_EQ(ma.out, mb.out);
}

TEST(Bf16Weights, ResultsDoNotDependOnTheThreadCount) {
  using C = combo<bf16, bf16, bf16>;
  SKIP_WITHOUT_BF16_WEIGHTS(C);
  stored_data<C> data(2, 300, 300, 4, 2, 64, 93);
  auto o = options_for(ssmax_policy(0.5), attention_mask::causal_mask());
  o.allow_bf16_weights = true;
  o.bf16 = bf16_method::dot_products;
  o.threads = 1;
  const auto one = run_stored<Arch>(data, o, attention_path::fused);
  o.threads = 3;
  const auto three = run_stored<Arch>(data, o, attention_path::fused);
  EXPECT_EQ(one.out, three.out);
  EXPECT_EQ(one.lse, three.lse);
}

TEST(Bf16Weights, OverflowingScoresTakeTheNonFinitePath) {
  using C = combo<bf16, bf16, f32>;
  SKIP_WITHOUT_BF16_WEIGHTS(C);
  // Key 5 is huge: the rows whose dot product with it overflows to +inf put all their
  // weight on it (a weight of 1, exact in bf16), the others give it 0.
  stored_data<C> data(1, 70, 80, 1, 1, 16, 95);
  make_overflowing_key(data, 5, [](size_t e) { return e % 32 < 16; });
  attention_options<softmax_policy> o;
  o.scale = 1.0;
  o.allow_bf16_weights = true;
  o.bf16 = bf16_method::dot_products;
  const auto got = run_stored<Arch>(data, o, attention_path::fused);
  const auto mat = run_stored<Arch>(data, o, attention_path::materialised);
  // Rows where key 5 weighs 0: the rounded weights' 2^-8 sum_j a_j |v_j| <= 2^-8 max|v|,
  // plus the float bound eps max|v| (2 (d + 2) Z + n + 64) with n <= 80 and Z <= d = 16
  // (|q|, |k| <= 1 on the other keys); twice that from the materialised (exact-path) row.
  double vmax = 0.0;
  for (double x : data.exact.v) vmax = std::max(vmax, std::abs(x));
  const double eps = std::numeric_limits<float>::epsilon();
  const double finite_bound = kBf16WeightUnit * vmax + 2 * eps * vmax * (2 * 18 * 16 + 80 + 64);
  const int overflowing =
      expect_overflowing_rows_match(got, mat, 16, [&](float) { return 2 * finite_bound; });
  EXPECT_GT(overflowing, 10);
}

}  // namespace
