// The bf16 score GEMM (kernels/gemm_bf16.hpp) against a double reference on the same bf16
// values, within the bound its header states: shapes with tails (rows, keys, odd d), the
// d = 64 and 128 fast cases, row factors, and denormal bf16 inputs (which vdpbf16ps reads
// as zero); both the build's gemm_bf16 and the portable definition. Where the build has
// AVX512-BF16, the instructions (vdpbf16ps, vcvtneps2bf16) equal the portable definitions
// bit for bit on random bit patterns; the portable arithmetic is also checked on values
// written out by hand.

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <ssmax/kernels/gemm_bf16.hpp>
#include <string>
#include <vector>

#include "support/cpu_features.hpp"

namespace {

using ssmax::index_t;
using ssmax::testing::cpu_has_avx512_bf16;

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

/// gemm_bf16's signature: the build's GEMM or the portable one.
using gemm_function = void (*)(index_t, index_t, index_t, const std::uint32_t*, index_t,
                               const std::uint16_t*, index_t, const float*, float*, index_t);

/// Runs gemm on m rows of q and nk keys (rows of k, d apart) with factors f, and checks
/// every score against f * (q . k) in double. Keys past nk (padding to 16) must be exactly 0.
void check_gemm(gemm_function gemm, const std::vector<bfloat16>& q, const std::vector<bfloat16>& kv,
                index_t m, index_t nk, index_t d, const std::vector<float>& f) {
  const index_t nkp = ssmax::kernels::detail::round_up(nk, k::kBf16Lanes), kp = k::bf16_pairs(d);
  const index_t ldk = 2 * nkp + 32, lda = kp, lds = nkp + 16;
  std::vector<std::uint16_t> kt(static_cast<size_t>(kp * ldk), 0xFFFF);  // NaN if read unpacked
  std::vector<std::uint32_t> qp(static_cast<size_t>(m * lda));
  std::vector<float> s(static_cast<size_t>(m * lds), -1.0f);
  k::pack_kt_bf16(kv.data(), d, nk, d, nkp, ldk, kt.data());
  for (index_t r = 0; r < m; ++r) k::pack_q_bf16(q.data() + r * d, d, qp.data() + r * lda);
  gemm(m, nkp, kp, qp.data(), lda, kt.data(), ldk, f.data(), s.data(), lds);
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

/// check_gemm for the build's gemm_bf16 and for gemm_bf16_portable.
void check_scores(const std::vector<bfloat16>& q, const std::vector<bfloat16>& kv, index_t m,
                  index_t nk, index_t d, const std::vector<float>& f) {
  {
    SCOPED_TRACE("gemm_bf16");
    check_gemm(k::gemm_bf16, q, kv, m, nk, d, f);
  }
  SCOPED_TRACE("gemm_bf16_portable");
  check_gemm(k::gemm_bf16_portable, q, kv, m, nk, d, f);
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
    if (k::kHaveAvx512Bf16 && !cpu_has_avx512_bf16())
      GTEST_SKIP() << "built for AVX512-BF16, which the CPU lacks";
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

/// The bits of a float.
std::uint32_t float_bits(float x) {
  std::uint32_t w;
  std::memcpy(&w, &x, sizeof w);
  return w;
}

/// Random 16-bit halves that hit every class: a quarter with tiny
/// exponents (denormals and near the flush threshold), a quarter near 1, the rest any bits
/// (infinities and NaN included).
std::uint32_t random_half(std::mt19937& gen) {
  const std::uint32_t bits = gen() & 0xFFFFu;
  switch (gen() % 4) {
    case 0:
      return (bits & 0x807Fu) | ((gen() % 6) << 7);
    case 1:
      return (bits & 0x807Fu) | ((120 + gen() % 16) << 7);
    default:
      return bits;
  }
}

TEST_F(GemmBf16, InstructionsEqualThePortableDefinitionBitwise) {
  if (!k::kHaveAvx512Bf16) GTEST_SKIP() << "built without AVX512-BF16: only the portable one";
  std::mt19937 gen(5);
  const index_t m = 9, n = 48, kp = 37;  // a tile tail in rows and in vectors
  std::vector<std::uint32_t> a(static_cast<size_t>(m * kp));
  std::vector<std::uint16_t> b(static_cast<size_t>(kp * 2 * n));
  std::vector<float> c0(static_cast<size_t>(m * n)), f(static_cast<size_t>(m));
  for (int trial = 0; trial < 200; ++trial) {
    for (auto& w : a) w = random_half(gen) | (random_half(gen) << 16);
    for (auto& h : b) h = static_cast<std::uint16_t>(random_half(gen));
    for (auto& x : c0) {
      const std::uint32_t w = (random_half(gen) << 16) | (gen() & 0xFFFFu);
      std::memcpy(&x, &w, sizeof x);
    }
    for (index_t r = 0; r < m; ++r) f[r] = static_cast<float>(r) - 3.5f;
    const float* const factor_choices[] = {nullptr, f.data()};  // C += A B, then S = f A B
    for (const float* factors : factor_choices) {
      auto got = c0, want = c0;
      k::gemm_bf16(m, n, kp, a.data(), kp, b.data(), 2 * n, factors, got.data(), n);
      k::gemm_bf16_portable(m, n, kp, a.data(), kp, b.data(), 2 * n, factors, want.data(), n);
      for (size_t i = 0; i < got.size(); ++i) {
        if (std::isnan(got[i]) && std::isnan(want[i])) continue;
        ASSERT_EQ(float_bits(got[i]), float_bits(want[i]))
            << "output " << i << " trial " << trial << (factors ? " S = f A B" : " C += A B");
      }
    }
    std::vector<float> p(static_cast<size_t>(n) - trial % 16);
    for (auto& x : p) {
      const std::uint32_t w = (random_half(gen) << 16) | (gen() & 0xFFFFu);
      std::memcpy(&x, &w, sizeof x);
    }
    const index_t words = (static_cast<index_t>(p.size()) + 1) / 2;
    std::vector<std::uint32_t> got(static_cast<size_t>(words) + 1, 0xDEADBEEFu), want = got;
    k::pack_p_bf16(p.data(), static_cast<index_t>(p.size()), got.data());
    k::pack_p_bf16_portable(p.data(), static_cast<index_t>(p.size()), want.data());
    ASSERT_EQ(got, want) << p.size() << " weights";
    ASSERT_EQ(got.back(), 0xDEADBEEFu) << "wrote past ceil(n / 2) words";
  }
}

TEST(Bf16Arithmetic, RoundingWrittenOut) {
  const float tie_to_even = 1.0f + std::ldexp(1.0f, -8);     // halfway to 0x3F81: stays
  const float tie_to_odd = 1.0f + 3 * std::ldexp(1.0f, -8);  // halfway 0x3F81..82: up
  const float above_tie = 1.0f + std::ldexp(1.0f, -8) + std::ldexp(1.0f, -20);
  EXPECT_EQ(k::round_to_bf16_flushed(1.0f), 0x3F80u);
  EXPECT_EQ(k::round_to_bf16_flushed(tie_to_even), 0x3F80u);
  EXPECT_EQ(k::round_to_bf16_flushed(tie_to_odd), 0x3F82u);
  EXPECT_EQ(k::round_to_bf16_flushed(above_tie), 0x3F81u);
  EXPECT_EQ(k::round_to_bf16_flushed(-2.0f), 0xC000u);
  EXPECT_EQ(k::round_to_bf16_flushed(std::ldexp(1.0f, -130)), 0x0000u);   // denormal: +0
  EXPECT_EQ(k::round_to_bf16_flushed(-std::ldexp(1.0f, -130)), 0x8000u);  // -0
  EXPECT_EQ(k::round_to_bf16_flushed(std::ldexp(1.0f, -126)), 0x0080u);   // smallest normal
  EXPECT_EQ(k::round_to_bf16_flushed(std::numeric_limits<float>::max()), 0x7F80u);  // to inf
  EXPECT_EQ(k::round_to_bf16_flushed(-std::numeric_limits<float>::infinity()), 0xFF80u);
  float signalling;
  const std::uint32_t snan = 0x7FA00001u;
  std::memcpy(&signalling, &snan, sizeof signalling);
  EXPECT_EQ(k::round_to_bf16_flushed(signalling), 0x7FE0u);  // quieted, payload's high bits
  EXPECT_EQ(float_bits(k::bf16_read_flushed(0x0001u)), 0x00000000u);  // denormal read as 0
  EXPECT_EQ(float_bits(k::bf16_read_flushed(0x8040u)), 0x80000000u);  // -denormal as -0
}

TEST(Bf16Arithmetic, DotStepWrittenOut) {
  // Words hold (low, high) bf16 halves; the high products are added first.
  const std::uint32_t a = 0x4040u | (0x4000u << 16);  // low 3, high 2
  const std::uint32_t b = 0x3F80u | (0x3F00u << 16);  // low 1, high 0.5
  EXPECT_EQ(k::dpbf16_step(1.0f, a, b), 5.0f);        // 1 + 2 * 0.5 + 3 * 1
  // Rounding after each product: 2^24 + 1 (high) rounds to 2^24, then + 1 (low) again.
  const std::uint32_t one_one = 0x3F80u | (0x3F80u << 16);
  EXPECT_EQ(k::dpbf16_step(std::ldexp(1.0f, 24), one_one, one_one), std::ldexp(1.0f, 24));
  // A denormal input reads as zero: (2^-130) * 2^120 is lost whole.
  const std::uint32_t denormal_high = 0x0000u | (0x0008u << 16);  // high 2^-130
  const std::uint32_t big_high = 0x0000u | (0x7B80u << 16);       // high 2^120
  EXPECT_EQ(k::dpbf16_step(0.0f, denormal_high, big_high), 0.0f);
  // A denormal accumulator reads as zero, and a denormal result is flushed.
  EXPECT_EQ(k::dpbf16_step(std::ldexp(1.0f, -130), 0u, 0u), 0.0f);
  // (2^-103) (-2^-103) underflows to -0, and (-0) 0 keeps it -0.
  const std::uint32_t tiny = 0x8000u | (0x0C00u << 16);        // low -0, high 2^-103
  const std::uint32_t minus_tiny = 0x0000u | (0x8C00u << 16);  // low 0, high -2^-103
  EXPECT_EQ(float_bits(k::dpbf16_step(-0.0f, tiny, minus_tiny)), 0x80000000u);
  EXPECT_EQ(float_bits(k::dpbf16_step(-0.0f, tiny ^ 0x8000u, minus_tiny)), 0u);  // -0 + 0 = 0
}

}  // namespace
