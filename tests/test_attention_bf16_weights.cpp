// The opt-in bf16 P V of the fused prefill (attention_options::allow_bf16_weights;
// kernels/gemm_bf16.hpp, bf16_values: the weights rounded to bf16 pairs, O += P V through
// vdpbf16ps on a pair-packed V) against the double reference on the same bf16 values,
// within attention.hpp's bound plus the rounding of each weight (2^-8 sum_j a_ij |v_jc|)
// and the flush of denormals: every mask kind, Softmax, SSMax and negative multipliers,
// the logit features, q and out in bf16 or float, odd d and odd key counts, scores that
// overflow; the materialised path ignores the permission; results do not depend on the
// thread count; and the permission changes the results (so these tests run the path).
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
      Arch, float, kernels::storage_set<typename C::q, typename C::kv, typename C::out>>;
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
  unsigned seed = 70;
  for (const auto& mc : cases.masks)
    for (const char* feature : {"none", "bias+alibi", "softcap+sinks"})
      for_each_signed_policy([&](const char* pname, const ssmax_policy& policy) {
        const index_t batch = mc.packed ? 1 : logit_cases::B, d = seed % 2 ? 64 : 37;
        stored_data<C> data(batch, cases.n_q, cases.n_k, logit_cases::H, 2, d, ++seed);
        attention_options<ssmax_policy> o;
        o.policy = policy;
        o.mask = mc.mask;
        cases.apply(feature, batch, o.logit);
        check_bf16_weights(data, o,
                           mc.name + " x " + feature + " x " + pname + " d=" + std::to_string(d));
      });
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
  attention_options<ssmax_policy> exact;
  exact.policy = ssmax_policy(0.5);
  exact.mask = attention_mask::causal_mask();
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
  attention_options<ssmax_policy> o;
  o.policy = ssmax_policy(0.5);
  o.mask = attention_mask::causal_mask();
  o.allow_bf16_weights = true;
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
  for (index_t c = 0; c < 16; ++c) {
    data.k[static_cast<size_t>(5 * 16 + c)] = kernels::from_compute<bf16>(3e38f);
    data.exact.k[static_cast<size_t>(5 * 16 + c)] = kernels::to_compute(data.k[5 * 16 + c]);
  }
  for (size_t e = 0; e < data.q.size(); ++e) {
    const float x = std::abs(kernels::to_compute(data.q[e])) * (e % 32 < 16 ? 1.0f : -1.0f);
    data.q[e] = kernels::from_compute<bf16>(x);
    data.exact.q[e] = kernels::to_compute(data.q[e]);
  }
  attention_options<softmax_policy> o;
  o.scale = 1.0;
  o.allow_bf16_weights = true;
  const auto got = run_stored<Arch>(data, o, attention_path::fused);
  const auto mat = run_stored<Arch>(data, o, attention_path::materialised);
  // Rows where key 5 weighs 0: the rounded weights' 2^-8 sum_j a_j |v_j| <= 2^-8 max|v|,
  // plus the float bound eps max|v| (2 (d + 2) Z + n + 64) with n <= 80 and Z <= d = 16
  // (|q|, |k| <= 1 on the other keys).
  double vmax = 0.0;
  for (double x : data.exact.v) vmax = std::max(vmax, std::abs(x));
  const double eps = std::numeric_limits<float>::epsilon();
  const double finite_bound = kBf16WeightUnit * vmax + 2 * eps * vmax * (2 * 18 * 16 + 80 + 64);
  int overflowing = 0;
  for (index_t i = 0; i < 70; ++i) {
    const bool inf_row = std::isinf(mat.lse[static_cast<size_t>(i)]);
    overflowing += inf_row;
    EXPECT_EQ(std::isinf(got.lse[static_cast<size_t>(i)]), inf_row) << "row " << i;
    for (index_t c = 0; c < 16; ++c) {
      const float g = got.out[static_cast<size_t>(i * 16 + c)];
      const float want = mat.out[static_cast<size_t>(i * 16 + c)];
      if (inf_row)  // all the weight on key 5: its value, exactly
        EXPECT_EQ(g, want) << "row " << i;
      else  // key 5 weighs 0: within the bound above of the materialised (exact-path) row
        EXPECT_NEAR(g, want, 2 * finite_bound) << "row " << i;
    }
  }
  EXPECT_GT(overflowing, 10);
}

}  // namespace
