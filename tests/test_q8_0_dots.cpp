// The opt-in int8 scores of a Q8_0 key cache (kernels/q8_0_dots.hpp): the query's rounding
// to int8 blocks within its stated bound (zero, tiny, non-finite blocks too), and
// dot4_rows_q8_0 on every architecture this binary is compiled for equal, bit for bit, to
// the header's contract written out here (exact integer sums, then fma(float(I_b),
// float(d_k) * d_q, acc) block by block), on codes that include -128 and +-127 and on
// scales from denormal halves to 65504.

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <ssmax/kernels/q8_0_dots.hpp>
#include <vector>

#include "support/architectures.hpp"

namespace {

using ssmax::block_q8_0;
using ssmax::index_t;
using ssmax::kQ8_0Block;
namespace k = ssmax::kernels::detail;

TEST(QuantizeQuery, EachValueWithinHalfItsBlocksStep) {
  std::mt19937 gen(3);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  const index_t d = 128;
  for (float magnitude : {1e-30f, 1e-3f, 1.0f, 3e4f, 1e36f}) {
    std::vector<float> x(d);
    for (float& e : x) e = magnitude * normal(gen);
    x[5] = 0.0f;
    std::vector<std::int8_t> qs(d);
    std::vector<float> scales(d / kQ8_0Block);
    k::quantize_query_q8_0(x.data(), d, qs.data(), scales.data());
    for (index_t b = 0; b < d / kQ8_0Block; ++b) {
      double amax = 0.0;
      for (index_t i = 0; i < kQ8_0Block; ++i)
        amax = std::max(amax, std::abs(static_cast<double>(x[b * kQ8_0Block + i])));
      const double dq = scales[b];
      EXPECT_LE(std::abs(dq - amax / 127), amax / 127 * std::ldexp(1.0, -23)) << magnitude;
      for (index_t i = 0; i < kQ8_0Block; ++i) {
        const index_t c = b * kQ8_0Block + i;
        EXPECT_LE(std::abs(qs[c]), 127);
        EXPECT_LE(std::abs(static_cast<double>(x[c]) - dq * qs[c]),
                  dq / 2 * (1 + std::ldexp(1.0, -20)))
            << "magnitude " << magnitude << " value " << c;
      }
    }
  }
}

TEST(QuantizeQuery, ZeroTinyAndNonFiniteBlocks) {
  std::vector<float> x(4 * kQ8_0Block, 0.0f);
  // Block 1: values below 127 * 2^-150, where max|x| / 127 underflows to zero.
  x[kQ8_0Block + 3] = 20 * std::numeric_limits<float>::denorm_min();
  x[kQ8_0Block + 4] = -7 * std::numeric_limits<float>::denorm_min();
  x[2 * kQ8_0Block + 1] = std::numeric_limits<float>::infinity();   // block 2
  x[3 * kQ8_0Block + 9] = std::numeric_limits<float>::quiet_NaN();  // block 3
  std::vector<std::int8_t> qs(x.size(), 99);
  std::vector<float> scales(4, -1.0f);
  k::quantize_query_q8_0(x.data(), static_cast<index_t>(x.size()), qs.data(), scales.data());
  EXPECT_EQ(scales[0], 0.0f);
  for (index_t i = 0; i < kQ8_0Block; ++i) EXPECT_EQ(qs[i], 0);
  EXPECT_EQ(scales[1], std::numeric_limits<float>::denorm_min());
  EXPECT_EQ(qs[kQ8_0Block + 3], 20);
  EXPECT_EQ(qs[kQ8_0Block + 4], -7);
  EXPECT_TRUE(std::isnan(scales[2]));
  EXPECT_TRUE(std::isnan(scales[3]));
}

/// The contract of dot4_rows_q8_0, written out: exact integer sums per block, then one
/// rounded product and one fma per block, in block order.
float contract_score(const std::int8_t* q, const float* dq, const block_q8_0* key, index_t blocks) {
  float acc = 0.0f;
  for (index_t b = 0; b < blocks; ++b) {
    std::int64_t sum = 0;
    for (index_t i = 0; i < kQ8_0Block; ++i)
      sum += std::int64_t{q[b * kQ8_0Block + i]} * key[b].qs[i];
    const float dk = static_cast<float>(key[b].d);
    acc = std::fma(static_cast<float>(sum), dk * dq[b], acc);
  }
  return acc;
}

template <class C>  // kernel_config<Arch, float>
using Q8_0Dots = ssmax::testing::kernel_test<C>;
TYPED_TEST_SUITE(Q8_0Dots,
                 ssmax::testing::float_kernel_configs<ssmax::testing::tested_architectures>,
                 ssmax::testing::config_name);

template <class Arch, index_t R>
void check_rows(std::mt19937& gen, index_t blocks) {
  std::uniform_int_distribution<int> code(-128, 127), q_code(-127, 127), pick(0, 9);
  std::uniform_int_distribution<int> half_bits(0x0001, 0x7bff);  // positive finite halves
  std::vector<std::int8_t> q(static_cast<size_t>(R * blocks * kQ8_0Block));
  std::vector<float> dq(static_cast<size_t>(R * blocks));
  for (auto& e : q)
    e = static_cast<std::int8_t>(pick(gen) == 0 ? (pick(gen) < 5 ? 127 : -127) : q_code(gen));
  for (auto& e : dq) e = std::ldexp(1.0f + static_cast<float>(pick(gen)) / 10, pick(gen) - 12);
  std::vector<block_q8_0> keys(static_cast<size_t>(4 * blocks));
  for (auto& blk : keys) {
    std::uint16_t bits = static_cast<std::uint16_t>(half_bits(gen));
    if (pick(gen) == 0) bits = 0x7bff;   // 65504
    if (pick(gen) == 0) bits |= 0x8000;  // negative scales are legal halves
    blk.d = ssmax::kernels::from_bits<Eigen::half>(bits);
    for (auto& c : blk.qs) c = static_cast<std::int8_t>(pick(gen) == 0 ? -128 : code(gen));
  }
  k::q8_0_query rows[R];
  for (index_t r = 0; r < R; ++r)
    rows[r] = {q.data() + r * blocks * kQ8_0Block, dq.data() + r * blocks};
  const block_q8_0* four[4];
  for (int u = 0; u < 4; ++u) four[u] = keys.data() + u * blocks;
  float out[R * 4];
  k::dot4_rows_q8_0<Arch, R>(rows, four, blocks, out);
  for (index_t r = 0; r < R; ++r)
    for (int u = 0; u < 4; ++u) {
      const float want = contract_score(rows[r].qs, rows[r].d, four[u], blocks);
      EXPECT_EQ(0, std::memcmp(&out[r * 4 + u], &want, sizeof want))
          << "R " << R << " row " << r << " key " << u << ": " << out[r * 4 + u] << " vs " << want;
    }
}

TYPED_TEST(Q8_0Dots, ScoresEqualTheContractBitwise) {
  using Arch = typename TypeParam::arch;
  std::mt19937 gen(7);
  for (index_t blocks : {1, 2, 4, 8})
    for (int trial = 0; trial < 20; ++trial) {
      check_rows<Arch, 1>(gen, blocks);
      check_rows<Arch, 2>(gen, blocks);
      check_rows<Arch, 3>(gen, blocks);
      check_rows<Arch, 4>(gen, blocks);
    }
}

// The extreme integer sums: every code at its end (-128 keys against -127 and 127 queries).
TYPED_TEST(Q8_0Dots, ExtremeCodesSumExactly) {
  using Arch = typename TypeParam::arch;
  std::vector<std::int8_t> q(kQ8_0Block, -127);
  const float dq = 1.0f;
  block_q8_0 key{};
  key.d = ssmax::kernels::from_bits<Eigen::half>(0x3c00);  // 1.0
  for (auto& c : key.qs) c = -128;
  const k::q8_0_query row{q.data(), &dq};
  const block_q8_0* four[4] = {&key, &key, &key, &key};
  float out[4];
  k::dot4_rows_q8_0<Arch, 1>(&row, four, 1, out);
  EXPECT_EQ(out[0], 32.0f * 127 * 128);
  for (auto& c : q) c = 127;
  k::dot4_rows_q8_0<Arch, 1>(&row, four, 1, out);
  EXPECT_EQ(out[3], -32.0f * 127 * 128);
}

}  // namespace
