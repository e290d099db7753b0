// The AVX512-BF16 score GEMM (kernels/gemm_bf16.hpp) against a double reference on the
// same bf16 values, within the bound its header states: shapes with tails (rows, keys,
// odd d), the d = 64 and 128 fast cases, row factors, and denormal bf16 inputs (which
// vdpbf16ps reads as zero). Skipped when not compiled for AVX512-BF16 or when the CPU
// lacks it.

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <random>
#include <ssmax/kernels/gemm_bf16.hpp>
#include <string>
#include <vector>

#include "support/cpu_features.hpp"

namespace {

using ssmax::index_t;
using ssmax::testing::cpu_has_avx512_bf16;

#ifdef SSMAX_HAVE_AVX512BF16

using Eigen::bfloat16;
namespace k = ssmax::kernels::detail;

/// The header's bound for one score: |f| (gamma_{d+1} sum |q_c k_c| + 2^-126 d (max|q| +
/// max|k| + 2)).
double score_bound(const bfloat16* q, const bfloat16* kr, index_t d, double f) {
  const double u = std::ldexp(1.0, -24), gamma = (d + 1) * u / (1 - (d + 1) * u);
  double abs_sum = 0, mq = 0, mk = 0;
  for (index_t c = 0; c < d; ++c) {
    const double qc = static_cast<float>(q[c]), kc = static_cast<float>(kr[c]);
    abs_sum += std::abs(qc * kc);
    mq = std::max(mq, std::abs(qc)), mk = std::max(mk, std::abs(kc));
  }
  return std::abs(f) * (gamma * abs_sum + std::ldexp(1.0, -126) * d * (mq + mk + 2));
}

/// Runs gemm_bf16 on m rows of q and nk keys (rows of k, d apart) with factors f, and
/// checks every score against f * (q . k) in double. Keys past nk (padding to 16) must be
/// exactly 0.
void check_scores(const std::vector<bfloat16>& q, const std::vector<bfloat16>& kv, index_t m,
                  index_t nk, index_t d, const std::vector<float>& f) {
  const index_t nkp = ssmax::kernels::detail::round_up(nk, k::kBf16Lanes), kp = k::bf16_pairs(d);
  const index_t ldk = 2 * nkp + 32, lda = kp, lds = nkp + 16;
  std::vector<std::uint16_t> kt(static_cast<size_t>(kp * ldk), 0xFFFF);  // NaN if read unpacked
  std::vector<std::uint32_t> qp(static_cast<size_t>(m * lda));
  std::vector<float> s(static_cast<size_t>(m * lds), -1.0f);
  k::pack_kt_bf16(kv.data(), d, nk, d, nkp, ldk, kt.data());
  for (index_t r = 0; r < m; ++r) k::pack_q_bf16(q.data() + r * d, d, qp.data() + r * lda);
  k::gemm_bf16(m, nkp, kp, qp.data(), lda, kt.data(), ldk, f.data(), s.data(), lds);
  for (index_t r = 0; r < m; ++r)
    for (index_t j = 0; j < nkp; ++j) {
      const float got = s[r * lds + j];
      if (j >= nk) {
        ASSERT_EQ(got, 0.0f) << "padding key " << j << " row " << r;
        continue;
      }
      double exact = 0;
      for (index_t c = 0; c < d; ++c)
        exact +=
            double(static_cast<float>(q[r * d + c])) * double(static_cast<float>(kv[j * d + c]));
      exact *= f[r];
      const double bound = score_bound(&q[r * d], &kv[j * d], d, f[r]);
      ASSERT_LE(std::abs(got - exact), bound)
          << "row " << r << " key " << j << " d " << d << " got " << got << " exact " << exact;
    }
}

/// n bf16 values uniform in [-amp, amp].
std::vector<bfloat16> random_bf16(index_t n, float amp, std::mt19937& gen) {
  std::uniform_real_distribution<float> u(-amp, amp);
  std::vector<bfloat16> x(static_cast<size_t>(n));
  for (auto& v : x) v = bfloat16(u(gen));
  return x;
}

class GemmBf16 : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!cpu_has_avx512_bf16()) GTEST_SKIP() << "the CPU lacks avx512_bf16";
  }
};

TEST_F(GemmBf16, ShapesWithinBound) {
  std::mt19937 gen(7);
  for (index_t d : {1, 2, 3, 17, 64, 127, 128, 256})
    for (index_t m : {1, 5, 8, 13, 16})
      for (index_t nk : {1, 15, 16, 33, 48, 256}) {
        const auto q = random_bf16(m * d, 2.0f, gen), kv = random_bf16(nk * d, 2.0f, gen);
        std::vector<float> f(static_cast<size_t>(m));
        for (index_t r = 0; r < m; ++r) f[r] = 0.125f * static_cast<float>(r + 1) - 0.5f;
        check_scores(q, kv, m, nk, d, f);
        if (HasFatalFailure()) return;
      }
}

TEST_F(GemmBf16, FactorAppliedAfterTheDotProducts) {
  // f = 1 + 2^-12 is not a bf16: a kernel that rounded f * q to bf16 would be off by
  // 2^-12 relative, far beyond the bound (about d 2^-24 = 2^-17 relative).
  std::mt19937 gen(3);
  const index_t d = 128, m = 8, nk = 32;
  const auto kv = random_bf16(nk * d, 1.0f, gen);
  std::vector<bfloat16> q(static_cast<size_t>(m * d), bfloat16(0.0f));
  for (index_t r = 0; r < m; ++r) q[r * d + r] = bfloat16(1.0f);  // scores are keys' entries
  const std::vector<float> f(static_cast<size_t>(m), 1.0f + std::ldexp(1.0f, -12));
  check_scores(q, kv, m, nk, d, f);
}

TEST_F(GemmBf16, DenormalInputsWithinBound) {
  // bf16 denormals (below 2^-126) next to large values: vdpbf16ps reads them as zero, which
  // the bound's second term covers; and products that underflow float.
  std::mt19937 gen(11);
  const index_t d = 64, m = 9, nk = 40;
  auto q = random_bf16(m * d, 1.0f, gen), kv = random_bf16(nk * d, 1.0f, gen);
  std::uniform_int_distribution<int> pick(0, 3);
  for (auto& x : q)
    if (pick(gen) == 0) x = bfloat16(std::ldexp(static_cast<float>(x), -127));   // denormal
  for (index_t j = 0; j < nk; ++j) kv[j * d] = bfloat16(std::ldexp(1.0f, 100));  // large
  for (auto& x : kv)
    if (pick(gen) == 0) x = bfloat16(std::ldexp(static_cast<float>(x), -120));  // tiny
  check_scores(q, kv, m, nk, d, std::vector<float>(static_cast<size_t>(m), 1.0f));
  // A row whose only product is a denormal q times a large k: 2^-130 2^120 = 2^-10 exactly,
  // which a DAZ input loses whole; only the bound's denormal term (2^-126 d 2^120 = 4)
  // covers it, so the bound is not loose by accident.
  std::vector<bfloat16> q1(static_cast<size_t>(d), bfloat16(0.0f));
  q1[0] = bfloat16(std::ldexp(1.0f, -130));
  std::vector<bfloat16> k1(static_cast<size_t>(16 * d), bfloat16(0.0f));
  for (index_t j = 0; j < 16; ++j) k1[j * d] = bfloat16(std::ldexp(1.0f, 120));
  check_scores(q1, k1, 1, 16, d, {1.0f});
}

#else

TEST(GemmBf16, NotCompiled) {
  GTEST_SKIP() << "built without AVX512-BF16 (__AVX512BF16__)"
               << (cpu_has_avx512_bf16() ? "; the CPU has it: build with -march=native" : "");
}

#endif

}  // namespace
