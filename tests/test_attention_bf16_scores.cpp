// The fused prefill's bf16 score path (kernels/prefill_bf16.hpp: vdpbf16ps on a
// pair-interleaved K^T, the row factor after the dot products) against the double reference
// on the same bf16 values, within attention.hpp's bound plus vdpbf16ps's denormal flush:
// every mask kind, Softmax, SSMax and SSMax with negative multipliers, each logit feature
// (bias, ALiBi, soft-cap, sinks, all of them), odd d, a prefill block followed by a decode
// task, denormal q and k, and scores that overflow (the non-finite path); the bf16 method
// forced to dot_products (attention_options::bf16), whatever the CPU's automatic choice.
// Skipped where
// the build or the CPU lacks AVX512-BF16 (the float GEMM then serves these calls, which
// tests/test_attention_16bit.cpp covers).

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
using bf16_all = combo<bf16, bf16, bf16>;

#define SKIP_WITHOUT_BF16_SCORES()                               \
  if (!flushed_dots<Arch, bf16_all>() || !cpu_has_avx512_bf16()) \
  GTEST_SKIP() << "no AVX512-BF16 score path in this build or on this CPU"

TEST(Bf16Scores, EveryMaskPolicyAndLogitFeature) {
  SKIP_WITHOUT_BF16_SCORES();
  const logit_cases cases(40, 300, 5);
  check_signed_logit_cases<bf16_all>(
      cases, {"none", "bias", "alibi", "softcap", "sinks", "all"}, 50,
      [](const auto& data, attention_options<ssmax_policy> o, const std::string& what) {
        o.bf16 = bf16_method::dot_products;
        check_stored<Arch>(data, o, what);
      });
}

TEST(Bf16Scores, LongPrefillOutToFloatAndADecodeTail) {
  SKIP_WITHOUT_BF16_SCORES();
  // 130 rows: one kPrefillQueryBlock task (vdpbf16ps) then a 2-row decode task (dot
  // products); d = 128 and 65 (an odd pair count), out in float.
  for (index_t d : {128, 65}) {
    stored_data<combo<bf16, bf16, f32>> data(1, 130, 700, 2, 1, d, static_cast<unsigned>(d));
    attention_options<ssmax_policy> o;
    o.policy = ssmax_policy(0.43);
    o.mask = attention_mask::causal_mask();
    o.bf16 = bf16_method::dot_products;
    check_stored<Arch>(data, o, "prefill 130 x 700 d=" + std::to_string(d));
  }
}

TEST(Bf16Scores, DenormalInputsAreWithinTheFlushBound) {
  SKIP_WITHOUT_BF16_SCORES();
  // q and k hold bf16 denormals (below 2^-126), which vdpbf16ps reads as zero.
  stored_data<bf16_all> data(1, 20, 64, 1, 1, 16, 61);
  for (size_t e = 0; e < data.q.size(); e += 3) {
    data.q[e] = kernels::from_compute<bf16>(std::ldexp(1.0f, -130));
    data.exact.q[e] = kernels::to_compute(data.q[e]);
  }
  for (size_t e = 1; e < data.k.size(); e += 4) {
    data.k[e] = kernels::from_compute<bf16>(-std::ldexp(1.0f, -128));
    data.exact.k[e] = kernels::to_compute(data.k[e]);
  }
  attention_options<ssmax_policy> o;
  o.mask = attention_mask::causal_mask();
  o.bf16 = bf16_method::dot_products;
  check_stored<Arch>(data, o, "denormal q and k");
}

TEST(Bf16Scores, OverflowingScoresTakeTheNonFinitePath) {
  SKIP_WITHOUT_BF16_SCORES();
  // Key 5 is huge: its dot products overflow float, so the rows with q . k_5 > 0 put all
  // their weight on it; the non-finite path recomputes from the stored bf16 values.
  stored_data<bf16_all> data(1, 8, 40, 1, 1, 16, 62);
  // q . k_5 = 3e38 sum_c q_c: rows 0-3 all positive (+inf, the overflow), rows 4-7 all
  // negative (-inf: key 5 weighs 0).
  make_overflowing_key(data, 5, [](size_t e) { return e < 4 * 16; });
  attention_options<softmax_policy> o;
  o.scale = 1.0;
  o.bf16 = bf16_method::dot_products;
  const auto bf = run_stored<Arch>(data, o, attention_path::fused);
  const auto mat = run_stored<Arch>(data, o, attention_path::materialised);
  // Key 5 weighs 0 on the finite rows: two roundings of out to bf16 apart at most.
  const int overflowing = expect_overflowing_rows_match(
      bf, mat, 16, [](float want) { return std::ldexp(std::abs(want), -7) + 1e-6; });
  EXPECT_EQ(overflowing, 4);
}

}  // namespace
