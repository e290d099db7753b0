// The 8-bit K/V formats and their helpers (quantize.hpp): fp8 codes decoded against
// values written out by hand; every code round-trips; rounding against a brute-force
// nearest-code search (ties to even) on random floats and on every midpoint; saturation
// and NaN; the stated error bounds for float, bfloat16 and half rows; Q8_0 blocks against
// a block worked out by hand, the bound and round-to-nearest per value, zero, tiny and the
// largest blocks; bad input refused by name with nothing written.

#include <gtest/gtest.h>

#include <cmath>
#include <cstddef>
#include <cstring>
#include <limits>
#include <random>
#include <ssmax/quantize.hpp>
#include <vector>

#include "support/expect_error.hpp"

namespace {

using namespace ssmax;
using ssmax::testing::expect_rejects;

template <class F>
F code(int bits) {
  return F{static_cast<std::uint8_t>(bits)};
}

TEST(Fp8, E4m3CodesWrittenOut) {
  // sign | eeee | mmm, bias 7: normal (1 + m/8) 2^(e-7), denormal m/8 2^-6.
  EXPECT_EQ(to_float(code<fp8_e4m3>(0x00)), 0.0f);
  EXPECT_TRUE(std::signbit(to_float(code<fp8_e4m3>(0x80))));
  EXPECT_EQ(to_float(code<fp8_e4m3>(0x01)), std::ldexp(1.0f, -9));      // smallest denormal
  EXPECT_EQ(to_float(code<fp8_e4m3>(0x07)), 7 * std::ldexp(1.0f, -9));  // largest denormal
  EXPECT_EQ(to_float(code<fp8_e4m3>(0x08)), std::ldexp(1.0f, -6));      // smallest normal
  EXPECT_EQ(to_float(code<fp8_e4m3>(0x38)), 1.0f);                      // e = 7
  EXPECT_EQ(to_float(code<fp8_e4m3>(0x3C)), 1.5f);                      // m = 4
  EXPECT_EQ(to_float(code<fp8_e4m3>(0x7E)), 448.0f);                    // 1.75 2^8
  EXPECT_EQ(to_float(code<fp8_e4m3>(0xFE)), -448.0f);
  EXPECT_EQ(to_float(code<fp8_e4m3>(0x78)), 256.0f);        // e = 15 is finite
  EXPECT_TRUE(std::isnan(to_float(code<fp8_e4m3>(0x7F))));  // S.1111.111
  EXPECT_TRUE(std::isnan(to_float(code<fp8_e4m3>(0xFF))));
}

TEST(Fp8, E5m2CodesWrittenOut) {
  // sign | eeeee | mm, bias 15: normal (1 + m/4) 2^(e-15), denormal m/4 2^-14.
  EXPECT_EQ(to_float(code<fp8_e5m2>(0x01)), std::ldexp(1.0f, -16));
  EXPECT_EQ(to_float(code<fp8_e5m2>(0x04)), std::ldexp(1.0f, -14));
  EXPECT_EQ(to_float(code<fp8_e5m2>(0x3C)), 1.0f);
  EXPECT_EQ(to_float(code<fp8_e5m2>(0x3E)), 1.5f);
  EXPECT_EQ(to_float(code<fp8_e5m2>(0x7B)), 57344.0f);  // 1.75 2^15
  EXPECT_EQ(to_float(code<fp8_e5m2>(0x7C)), std::numeric_limits<float>::infinity());
  EXPECT_EQ(to_float(code<fp8_e5m2>(0xFC)), -std::numeric_limits<float>::infinity());
  for (int nan : {0x7D, 0x7E, 0x7F, 0xFD}) EXPECT_TRUE(std::isnan(to_float(code<fp8_e5m2>(nan))));
}

template <class F>
class Fp8Format : public ::testing::Test {};
using formats = ::testing::Types<fp8_e4m3, fp8_e5m2>;
TYPED_TEST_SUITE(Fp8Format, formats);

/// The finite codes of F, each with its value.
template <class F>
std::vector<std::pair<int, double>> finite_codes() {
  std::vector<std::pair<int, double>> codes;
  for (int c = 0; c < 256; ++c) {
    const float v = to_float(code<F>(c));
    if (std::isfinite(v)) codes.emplace_back(c, v);
  }
  return codes;
}

/// The code nearest x by brute force: the smallest distance, ties to the code with an
/// even mantissa (last bit 0); past the largest finite, the largest finite of x's sign.
template <class F>
int nearest_code(float x, const std::vector<std::pair<int, double>>& codes) {
  double best = std::numeric_limits<double>::infinity();
  int best_code = -1;
  for (const auto& [c, v] : codes) {
    if (std::signbit(v) != std::signbit(x)) continue;  // zeros: keep x's sign
    const double dist = std::abs(v - static_cast<double>(x));
    if (dist < best || (dist == best && (c & 1) == 0)) best = dist, best_code = c;
  }
  return best_code;
}

TYPED_TEST(Fp8Format, EveryFiniteCodeRoundTrips) {
  using F = TypeParam;
  for (const auto& [c, v] : finite_codes<F>())
    EXPECT_EQ(to_fp8<F>(static_cast<float>(v)).bits, c) << "value " << v;
}

TYPED_TEST(Fp8Format, RoundsToTheNearestCodeTiesToEven) {
  using F = TypeParam;
  const auto codes = finite_codes<F>();
  const float largest = to_float(code<F>(detail::fp8_format<F>::largest));
  std::vector<float> xs;
  for (size_t i = 0; i + 1 < codes.size(); ++i) {  // every midpoint and its neighbours
    const double a = codes[i].second, b = codes[i + 1].second;
    if (std::signbit(a) != std::signbit(b) || a == b) continue;
    const auto mid = static_cast<float>((a + b) / 2);  // exact: a few bits
    xs.insert(xs.end(), {mid, std::nextafter(mid, 0.0f), std::nextafter(mid, 1e30f),
                         std::nextafter(mid, -1e30f)});
  }
  std::mt19937 gen(3);
  std::uniform_real_distribution<float> unit(-1.0f, 1.0f);
  std::uniform_int_distribution<int> scale(-20, 17);
  for (int i = 0; i < 100000; ++i) xs.push_back(std::ldexp(unit(gen), scale(gen)));
  for (float x : xs) {
    if (std::abs(x) >= largest) continue;  // saturation: its own test
    ASSERT_EQ(to_fp8<F>(x).bits, nearest_code<F>(x, codes)) << "x = " << x;
  }
}

TYPED_TEST(Fp8Format, SaturatesAndKeepsNaN) {
  using F = TypeParam;
  const int largest = detail::fp8_format<F>::largest;
  const float top = to_float(code<F>(largest));
  for (float x : {top, std::nextafter(top, 1e30f), top * 1.1f, 1e30f,
                  std::numeric_limits<float>::infinity()}) {
    EXPECT_EQ(to_fp8<F>(x).bits, largest) << x;
    EXPECT_EQ(to_fp8<F>(-x).bits, largest | 0x80) << -x;
  }
  const float nan = std::numeric_limits<float>::quiet_NaN();
  EXPECT_TRUE(std::isnan(to_float(to_fp8<F>(nan))));
  EXPECT_TRUE(std::isnan(to_float(to_fp8<F>(-nan))));
  EXPECT_EQ(to_fp8<F>(-nan).bits & 0x80, 0x80) << "the sign is kept";
  EXPECT_EQ(to_fp8<F>(-0.0f).bits, 0x80);
  EXPECT_EQ(to_fp8<F>(std::numeric_limits<float>::denorm_min()).bits, 0x00);
}

/// The header's bound for fp8: half a step, relative for normal values, absolute below.
template <class F>
double fp8_bound(double x, double scale) {
  const bool e4m3 = std::is_same<F, fp8_e4m3>::value;
  const double relative = std::ldexp(1.0, e4m3 ? -4 : -3);
  const double absolute = std::ldexp(1.0, e4m3 ? -10 : -17);
  return relative * std::abs(x) * (1 + std::ldexp(1.0, -18)) +
         absolute * scale * (1 + std::ldexp(1.0, -23));
}

template <class F, class S>
void check_fp8_rows(float scale, unsigned seed) {
  const float top = to_float(code<F>(detail::fp8_format<F>::largest)) * scale;
  std::mt19937 gen(seed);
  std::uniform_real_distribution<float> unit(-1.0f, 1.0f);
  std::uniform_int_distribution<int> binade(-30, 0);
  const index_t n = 4096;
  std::vector<S> x(static_cast<size_t>(n));
  for (auto& v : x) v = S(std::ldexp(unit(gen), binade(gen)) * top);
  std::vector<F> q(x.size());
  std::vector<float> back(x.size());
  quantize_fp8(x.data(), n, scale, q.data());
  dequantize_fp8(q.data(), n, scale, back.data());
  for (index_t i = 0; i < n; ++i) {
    const double xi = static_cast<float>(x[i]);
    if (std::abs(xi) > top) continue;  // a 16-bit source may round past the range
    ASSERT_LE(std::abs(back[i] - xi), fp8_bound<F>(xi, scale))
        << "x = " << xi << " scale " << scale << " got " << back[i];
  }
}

TYPED_TEST(Fp8Format, RowsWithinTheStatedBound) {
  using F = TypeParam;
  for (float scale : {1.0f, 0.0123f, 3.7e3f}) {
    check_fp8_rows<F, float>(scale, 1);
    check_fp8_rows<F, Eigen::bfloat16>(scale, 2);
    check_fp8_rows<F, Eigen::half>(scale, 3);
  }
}

TYPED_TEST(Fp8Format, BadInputIsRefusedAndNothingWritten) {
  using F = TypeParam;
  const std::vector<float> x(8, 1.0f);
  std::vector<F> q(8, code<F>(0x11));
  std::vector<float> back(8, -7.0f);
  for (float scale : {0.0f, -1.0f, std::numeric_limits<float>::quiet_NaN(),
                      std::numeric_limits<float>::infinity()}) {
    expect_rejects([&] { quantize_fp8(x.data(), 8, scale, q.data()); }, "scale");
    expect_rejects([&] { dequantize_fp8(q.data(), 8, scale, back.data()); }, "scale");
  }
  expect_rejects([&] { quantize_fp8(x.data(), -1, 1.0f, q.data()); }, "n");
  expect_rejects([&] { quantize_fp8(static_cast<const float*>(nullptr), 8, 1.0f, q.data()); }, "x");
  expect_rejects([&] { dequantize_fp8(q.data(), 8, 1.0f, static_cast<float*>(nullptr)); }, "x");
  for (const F& c : q) EXPECT_EQ(c.bits, 0x11);
  for (float v : back) EXPECT_EQ(v, -7.0f);
}

TEST(Q8_0, GgmlLayout) {
  EXPECT_EQ(sizeof(block_q8_0), 34u);
  EXPECT_EQ(offsetof(block_q8_0, d), 0u);
  EXPECT_EQ(offsetof(block_q8_0, qs), 2u);
}

TEST(Q8_0, BlockWorkedOutByHand) {
  // x_c = c - 16: amax 16, 16 / 127 = 0.125984... rounds to the half 1032 2^-13 =
  // 0.1259765625 (half's step there is 2^-13); q_c = round((c - 16) / 0.1259765625):
  // c = 0: -127.006... -> -127; c = 31: 119.069... -> 119; c = 17: 7.937... -> 8;
  // c = 16: 0.
  std::vector<float> x(32);
  for (int c = 0; c < 32; ++c) x[static_cast<size_t>(c)] = static_cast<float>(c - 16);
  block_q8_0 b;
  quantize_q8_0(x.data(), 32, &b);
  EXPECT_EQ(static_cast<float>(b.d), 0.1259765625f);
  EXPECT_EQ(b.qs[0], -127);
  EXPECT_EQ(b.qs[31], 119);
  EXPECT_EQ(b.qs[17], 8);
  EXPECT_EQ(b.qs[16], 0);
}

/// Checks one quantized block against x: the scale is half(amax / 127), each q the
/// nearest integer to x / d (or +-127 where that is past 127), and the header's bound.
void check_block(const float* x, const block_q8_0& b) {
  double amax = 0;
  for (int c = 0; c < 32; ++c) amax = std::max(amax, std::abs(static_cast<double>(x[c])));
  const double d = static_cast<float>(b.d);
  EXPECT_EQ(static_cast<float>(b.d),
            static_cast<float>(Eigen::half(static_cast<float>(amax) / 127.0f)));
  const double bound = amax / 254 * (1 + std::ldexp(1.0, -10)) + std::ldexp(1.0, -18);
  for (int c = 0; c < 32; ++c) {
    const int q = b.qs[c];
    ASSERT_LE(std::abs(q), 127);
    ASSERT_LE(std::abs(d * q - x[c]), bound) << "value " << x[c] << " d " << d << " q " << q;
    if (d > 0 && std::abs(x[c] / d) < 126.5) {  // not clamped: the nearest integer
      ASSERT_LE(std::abs(x[c] / d - q), 0.5 + 1e-5) << "value " << x[c] << " d " << d;
    }
    if (d == 0) {
      ASSERT_EQ(q, 0);
    }
  }
}

TEST(Q8_0, RandomBlocksWithinTheBoundFromZeroToTheLargest) {
  std::mt19937 gen(9);
  std::uniform_real_distribution<float> unit(-1.0f, 1.0f);
  for (float amax : {0.0f, 1e-9f, 3e-6f, 1e-4f, 0.01f, 1.0f, 300.0f, 8e6f, 8321039.0f}) {
    std::vector<float> x(32 * 64);
    for (auto& v : x) v = unit(gen) * amax;
    x[5] = amax;  // each block of the row reaches amax somewhere: the first at 5
    std::vector<block_q8_0> blocks(64);
    quantize_q8_0(x.data(), static_cast<index_t>(x.size()), blocks.data());
    std::vector<float> back(x.size());
    dequantize_q8_0(blocks.data(), static_cast<index_t>(x.size()), back.data());
    for (size_t b = 0; b < blocks.size(); ++b) {
      check_block(&x[b * 32], blocks[b]);
      for (int c = 0; c < 32; ++c)
        ASSERT_EQ(back[b * 32 + c], static_cast<float>(blocks[b].d) * blocks[b].qs[c]);
    }
  }
}

TEST(Q8_0, SixteenBitRowsEqualTheirFloatValues) {
  std::mt19937 gen(4);
  std::uniform_real_distribution<float> unit(-3.0f, 3.0f);
  std::vector<Eigen::bfloat16> xb(128);
  std::vector<Eigen::half> xh(128);
  std::vector<float> fb(128), fh(128);
  for (size_t i = 0; i < 128; ++i) {
    xb[i] = Eigen::bfloat16(unit(gen)), fb[i] = static_cast<float>(xb[i]);
    xh[i] = Eigen::half(unit(gen)), fh[i] = static_cast<float>(xh[i]);
  }
  std::vector<block_q8_0> a(4), b(4);
  quantize_q8_0(xb.data(), 128, a.data());
  quantize_q8_0(fb.data(), 128, b.data());
  EXPECT_EQ(std::memcmp(a.data(), b.data(), 4 * sizeof(block_q8_0)), 0);
  quantize_q8_0(xh.data(), 128, a.data());
  quantize_q8_0(fh.data(), 128, b.data());
  EXPECT_EQ(std::memcmp(a.data(), b.data(), 4 * sizeof(block_q8_0)), 0);
}

TEST(Q8_0, BadInputIsRefusedAndNothingWritten) {
  std::vector<float> x(64, 1.0f);
  std::vector<block_q8_0> blocks(2);
  for (auto& b : blocks) b.d = Eigen::half(-5.0f), b.qs[0] = 99;
  const auto untouched = [&] {
    for (const auto& b : blocks) EXPECT_TRUE(static_cast<float>(b.d) == -5.0f && b.qs[0] == 99);
  };
  expect_rejects([&] { quantize_q8_0(x.data(), 31, blocks.data()); }, "n");
  expect_rejects([&] { quantize_q8_0(x.data(), -32, blocks.data()); }, "n");
  x[40] = std::numeric_limits<float>::quiet_NaN();  // the second block: nothing written
  expect_rejects([&] { quantize_q8_0(x.data(), 64, blocks.data()); }, "x");
  x[40] = std::numeric_limits<float>::infinity();
  expect_rejects([&] { quantize_q8_0(x.data(), 64, blocks.data()); }, "x");
  x[40] = 8321040.0f;  // 65520 * 127: its scale would round to an infinite half
  expect_rejects([&] { quantize_q8_0(x.data(), 64, blocks.data()); }, "x");
  expect_rejects([&] { quantize_q8_0(x.data(), 64, static_cast<block_q8_0*>(nullptr)); }, "blocks");
  std::vector<float> back(64, -7.0f);
  expect_rejects([&] { dequantize_q8_0(blocks.data(), 33, back.data()); }, "n");
  untouched();
  for (float v : back) EXPECT_EQ(v, -7.0f);
}

}  // namespace
