// The storage types (storage.hpp) and their conversions (kernels/convert.hpp): every one of
// the 65536 bit patterns of each 16-bit type against an independent formula (the value
// from its fields, with ldexp in double), rounding to nearest even at every midpoint and
// next to it, and the vector conversions against the scalar ones on every architecture
// this binary is compiled for and the CPU has.

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <ssmax/kernels/convert.hpp>
#include <ssmax/reference/softmax.hpp>
#include <ssmax/softmax.hpp>
#include <ssmax/storage.hpp>
#include <vector>

#include "support/architectures.hpp"
#include "support/expect_error.hpp"
#include "support/row_bound.hpp"

namespace ssmax {
namespace {

using kernels::bits_of;
using kernels::from_bits;
using kernels::from_compute;
using kernels::to_compute;

/// The fields of a 16-bit format: exponent bits, mantissa bits.
template <class S>  // Eigen::bfloat16 or Eigen::half
struct format {
  static constexpr int exponent_bits = std::is_same<S, Eigen::half>::value ? 5 : 8;
  static constexpr int mantissa_bits = std::is_same<S, Eigen::half>::value ? 10 : 7;
  static constexpr int bias = (1 << (exponent_bits - 1)) - 1;

  /// The value of bit pattern b from its fields (NaN for NaN patterns).
  static double value(std::uint16_t b) {
    const int sign = b >> 15, e = (b >> mantissa_bits) & ((1 << exponent_bits) - 1);
    const int m = b & ((1 << mantissa_bits) - 1);
    double mag;
    if (e == (1 << exponent_bits) - 1)
      mag = m == 0 ? std::numeric_limits<double>::infinity()
                   : std::numeric_limits<double>::quiet_NaN();
    else if (e == 0)
      mag = std::ldexp(static_cast<double>(m), 1 - bias - mantissa_bits);
    else
      mag = std::ldexp(static_cast<double>(m + (1 << mantissa_bits)), e - bias - mantissa_bits);
    return sign != 0 ? -mag : mag;
  }
  static bool is_nan(std::uint16_t b) { return std::isnan(value(b)); }
  /// The quiet bit of a NaN pattern.
  static constexpr std::uint16_t quiet = 1u << (mantissa_bits - 1);
};

std::uint32_t bits(float f) {
  std::uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return u;
}

template <class S>
using Storage16 = ::testing::Test;
using sixteen_bit = ::testing::Types<Eigen::bfloat16, Eigen::half>;
TYPED_TEST_SUITE(Storage16, sixteen_bit);

TYPED_TEST(Storage16, WideningIsExactForEveryPattern) {
  using S = TypeParam;
  using F = format<S>;
  for (std::uint32_t b = 0; b < 65536; ++b) {
    const auto h = static_cast<std::uint16_t>(b);
    const float got = to_compute(from_bits<S>(h));
    const double want = F::value(h);
    if (std::isnan(want)) {
      ASSERT_TRUE(std::isnan(got)) << std::hex << b;
      // bfloat16: the float's top half, bit for bit; half: made quiet, payload kept.
      const std::uint32_t want_bits =
          std::is_same<S, Eigen::bfloat16>::value
              ? b << 16
              : ((b & 0x8000u) << 16) | 0x7fc00000u | ((b & 0x3ffu) << 13);
      EXPECT_EQ(bits(got), want_bits) << std::hex << b;
      EXPECT_EQ(std::signbit(got), (b & 0x8000u) != 0) << std::hex << b;
    } else {
      ASSERT_EQ(static_cast<double>(got), want) << std::hex << b;
      EXPECT_EQ(std::signbit(got), std::signbit(want)) << std::hex << b;
    }
  }
}

TYPED_TEST(Storage16, NarrowingRoundsToNearestEvenEverywhere) {
  using S = TypeParam;
  using F = format<S>;
  for (std::uint32_t b = 0; b < 65536; ++b) {
    const auto h = static_cast<std::uint16_t>(b);
    const double x = F::value(h);
    if (std::isnan(x)) {
      const std::uint16_t got = bits_of(from_compute<S>(to_compute(from_bits<S>(h))));
      EXPECT_TRUE(F::is_nan(got)) << std::hex << b;
      EXPECT_EQ(got, h | F::quiet) << "NaN keeps sign and payload, made quiet: " << std::hex << b;
      continue;
    }
    // Each value converts back to itself.
    ASSERT_EQ(bits_of(from_compute<S>(static_cast<float>(x))), h) << std::hex << b;
    // The midpoint to the next pattern of larger magnitude (exact in float: at most 12
    // significant bits), and the floats either side of it.
    const auto next = static_cast<std::uint16_t>(h + 1);
    const double y = F::value(next);
    if (std::isinf(x) || std::isinf(y)) continue;  // NarrowingOfExtremes
    const auto mid = static_cast<float>((x + y) / 2);
    ASSERT_EQ(static_cast<double>(mid), (x + y) / 2) << std::hex << b;
    const std::uint16_t even = (h & 1u) == 0 ? h : next;
    EXPECT_EQ(bits_of(from_compute<S>(mid)), even) << "tie, pattern " << std::hex << b;
    const float below = std::nextafter(mid, static_cast<float>(x));
    const float above = std::nextafter(mid, static_cast<float>(y));
    EXPECT_EQ(bits_of(from_compute<S>(below)), h) << std::hex << b;
    EXPECT_EQ(bits_of(from_compute<S>(above)), next) << std::hex << b;
  }
}

TYPED_TEST(Storage16, NarrowingOfExtremes) {
  using S = TypeParam;
  const float inf = std::numeric_limits<float>::infinity();
  const std::uint16_t top = std::is_same<S, Eigen::half>::value ? 0x7bffu : 0x7f7fu;
  const double largest = format<S>::value(top), ulp = largest - format<S>::value(top - 1);
  // Past the largest finite by half an ULP (a tie: to the even pattern, inf) or more: inf.
  const auto overflow = static_cast<float>(largest + ulp / 2);
  ASSERT_EQ(static_cast<double>(overflow), largest + ulp / 2);
  EXPECT_EQ(to_compute(from_compute<S>(overflow)), inf);
  EXPECT_EQ(to_compute(from_compute<S>(-overflow)), -inf);
  EXPECT_EQ(static_cast<double>(to_compute(from_compute<S>(std::nextafter(overflow, 0.0f)))),
            largest);
  EXPECT_EQ(to_compute(from_compute<S>(inf)), inf);
  EXPECT_EQ(to_compute(from_compute<S>(-inf)), -inf);
  EXPECT_EQ(to_compute(from_compute<S>(std::numeric_limits<float>::max())), inf);
  EXPECT_EQ(bits_of(from_compute<S>(-0.0f)), 0x8000u);
  // Float denormals: the smallest rounds to +0, the largest to bfloat16's smallest normal
  // (half: to 0).
  const float tiny = std::numeric_limits<float>::denorm_min();
  EXPECT_EQ(bits_of(from_compute<S>(tiny)), 0u);
  const float sub = std::nextafter(std::numeric_limits<float>::min(), 0.0f);
  EXPECT_EQ(static_cast<double>(to_compute(from_compute<S>(sub))),
            (std::is_same<S, Eigen::bfloat16>::value
                 ? static_cast<double>(std::numeric_limits<float>::min())
                 : 0.0));
}

/// Eigen's own conversion agrees (a second, independent implementation) on random floats.
TYPED_TEST(Storage16, AgreesWithEigenOnRandomFloats) {
  using S = TypeParam;
  std::mt19937 gen(5);
  std::uniform_int_distribution<std::uint32_t> u;
  for (int i = 0; i < 200000; ++i) {
    std::uint32_t b = u(gen);
    float f;
    std::memcpy(&f, &b, sizeof f);
    if (std::isnan(f)) continue;
    EXPECT_EQ(bits_of(from_compute<S>(f)), bits_of(S(f))) << std::hex << b;
  }
}

TEST(StorageTraits, CombinationsAndComputeTypes) {
  using bf = Eigen::bfloat16;
  using hf = Eigen::half;
  static_assert(std::is_same<compute_t<bf>, float>::value &&
                    std::is_same<compute_t<const hf>, float>::value &&
                    std::is_same<compute_t<double>, double>::value,
                "compute types");
  static_assert(is_16bit_v<const bf> && !is_16bit_v<float> && is_storage_type_v<hf> &&
                    !is_storage_type_v<int>,
                "traits");
  static_assert(attention_storage<const bf, const hf, const hf, float>::supported &&
                    std::is_same<attention_storage<const bf, const hf, const hf, float>::compute,
                                 float>::value,
                "bf16 q, f16 k/v, float out");
  static_assert(
      std::is_same<attention_storage<double, double, double, double>::compute, double>::value,
      "double");
  static_assert(!attention_storage<double, double, double, bf>::supported, "16-bit out, double in");
  static_assert(attention_storage<float, bf, hf, float>::supported, "k and v may differ");
  static_assert(attention_storage<float, block_q8_0, hf, bf>::supported &&
                    attention_storage<hf, const fp8_e4m3, fp8_e5m2, float>::supported,
                "8-bit k and v");
  static_assert(!attention_storage<fp8_e4m3, float, float, float>::supported &&
                    !attention_storage<float, float, float, block_q8_0>::supported &&
                    !attention_storage<double, block_q8_0, double, double>::supported,
                "8-bit formats are for k and v of a float call");
  static_assert(
      !attention_backward_storage<float, block_q8_0, block_q8_0, float, float, float>::supported &&
          !attention_backward_storage<float, bf, hf, float, float, float>::supported &&
          attention_backward_storage<float, bf, bf, float, float, float>::supported,
      "the backward reads one 16- or 32-bit k and v type");
  static_assert(!is_storage_type_v<fp8_e4m3> && is_kv_storage_type_v<const block_q8_0> &&
                    values_per_element_v<block_q8_0> == 32 && values_per_element_v<fp8_e5m2> == 1,
                "8-bit traits");
  static_assert(!attention_storage<float, float, float, const float>::supported, "const out");
  std::uint16_t raw[2] = {0x3f80, 0x3c00};
  EXPECT_EQ(to_compute(*as_bfloat16(raw)), 1.0f);
  EXPECT_EQ(to_compute(*as_half(raw + 1)), 1.0f);
}

// Vector conversions against the scalar ones, per architecture.
template <class Config>  // kernel_config<Arch, float>
class VectorConvert : public testing::kernel_test<Config> {};
TYPED_TEST_SUITE(VectorConvert, testing::float_kernel_configs<testing::tested_architectures>,
                 testing::config_name);

template <class Arch, class S>
void expect_vector_matches_scalar() {
  constexpr index_t W = ssmax::detail::simd<Arch, float>::width;
  // Loads: every pattern.
  std::vector<S> in(65536 + W);
  for (std::uint32_t b = 0; b < in.size(); ++b) in[b] = from_bits<S>(static_cast<std::uint16_t>(b));
  float lanes[W];
  for (std::size_t i = 0; i + W <= in.size(); i += W) {
    ssmax::detail::simd<Arch, float>::store(lanes, kernels::load_compute<Arch>(in.data() + i));
    for (index_t l = 0; l < W; ++l)
      ASSERT_EQ(bits(lanes[l]), bits(to_compute(in[i + l]))) << std::hex << i + l;
  }
  // Stores: the midpoints and their neighbours of every pattern, NaNs, denormals, random.
  std::vector<float> x;
  for (std::uint32_t b = 0; b < 65535; ++b) {
    const float a = to_compute(from_bits<S>(static_cast<std::uint16_t>(b)));
    const float c = to_compute(from_bits<S>(static_cast<std::uint16_t>(b + 1)));
    if (std::isnan(a) || std::isnan(c) || std::isinf(a) || std::isinf(c) ||
        (b & 0x7fffu) == 0x7fffu) {
      x.push_back(a);
      continue;
    }
    const float mid = static_cast<float>((static_cast<double>(a) + c) / 2);
    x.insert(x.end(), {a, mid, std::nextafter(mid, a), std::nextafter(mid, c)});
  }
  std::mt19937 gen(3);
  std::uniform_int_distribution<std::uint32_t> u;
  for (int i = 0; i < 100000; ++i) {
    const std::uint32_t b = u(gen);
    float f;
    std::memcpy(&f, &b, sizeof f);
    x.push_back(f);
  }
  while (x.size() % W != 0) x.push_back(0.0f);
  std::vector<S> out(W);
  for (std::size_t i = 0; i < x.size(); i += W) {
    kernels::store_storage<Arch>(out.data(), ssmax::detail::simd<Arch, float>::load(x.data() + i));
    for (index_t l = 0; l < W; ++l)
      ASSERT_EQ(bits_of(out[l]), bits_of(from_compute<S>(x[i + l])))
          << "float " << std::hex << bits(x[i + l]);
  }
}

TYPED_TEST(VectorConvert, BFloat16MatchesScalar) {
  expect_vector_matches_scalar<typename TypeParam::arch, Eigen::bfloat16>();
}
TYPED_TEST(VectorConvert, HalfMatchesScalar) {
  expect_vector_matches_scalar<typename TypeParam::arch, Eigen::half>();
}

/// The row API on 16-bit rows: computed in float on the exact values, y rounded once.
template <class Arch, class S>
void expect_rows_match() {
  constexpr index_t W = ssmax::detail::simd<Arch, float>::width;
  const double unit =
      std::is_same<S, Eigen::half>::value ? std::ldexp(1.0, -11) : std::ldexp(1.0, -8);
  const double tiny = std::is_same<S, Eigen::half>::value ? std::ldexp(1.0, -25) : 0.0;
  std::mt19937 gen(11);
  std::uniform_real_distribution<float> u(-6.0f, 6.0f);
  for (index_t n : {1, 7, 100, 3000}) {
    std::vector<S> x(static_cast<size_t>(n)), y(x.size());
    std::vector<float> exact(x.size());
    for (size_t i = 0; i < x.size(); ++i)
      x[i] = from_compute<S>(u(gen)), exact[i] = to_compute(x[i]);
    const double m = ssmax_policy(0.4, 0.1).multiplier({n, n - 1, 0});
    const auto r = reference::scaled_softmax(exact.data(), n, m);
    const auto state = scalable_softmax<Arch>(x.data(), y.data(), n, 0.4, 0.1);
    static_assert(std::is_same<decltype(state), const row_state<float>>::value, "float state");
    const testing::row_bound<float> bound_of(exact.data(), n, m, r, W);
    for (index_t i = 0; i < n; ++i) {
      const double b = bound_of(i), want = r[static_cast<size_t>(i)];
      EXPECT_LE(std::abs(static_cast<double>(to_compute(y[static_cast<size_t>(i)])) - want),
                b + unit * (want + b) + tiny)
          << "n = " << n << ", i = " << i;
    }
    EXPECT_NEAR(state.log_sum_exp(), reference::log_sum_exp(exact.data(), n, m),
                1e-5 * (1 + std::abs(reference::log_sum_exp(exact.data(), n, m))));
    // In place gives the same bits; softmax is the multiplier-1 case.
    std::vector<S> in_place = x;
    scalable_softmax<Arch>(in_place.data(), in_place.data(), n, 0.4, 0.1);
    for (size_t i = 0; i < x.size(); ++i) ASSERT_EQ(bits_of(in_place[i]), bits_of(y[i]));
    softmax<Arch>(x.data(), y.data(), n);
    const auto r1 = reference::scaled_softmax(exact.data(), n, 1.0);
    for (size_t i = 0; i < x.size(); ++i)
      EXPECT_NEAR(to_compute(y[i]), r1[i], 1e-5 * r1[i] + unit * r1[i] + tiny + 1e-37);
  }
}

TYPED_TEST(VectorConvert, RowApiOnBFloat16Rows) {
  expect_rows_match<typename TypeParam::arch, Eigen::bfloat16>();
}
TYPED_TEST(VectorConvert, RowApiOnHalfRows) {
  expect_rows_match<typename TypeParam::arch, Eigen::half>();
}

TEST(RowApi16, BadArgumentsAreNamedAndNothingIsWritten) {
  using bf = Eigen::bfloat16;
  std::vector<bf> x(8, from_compute<bf>(1.0f)), y(8, from_compute<bf>(-42.0f));
  testing::expect_rejects([&] { softmax(static_cast<const bf*>(nullptr), y.data(), 8); }, "x");
  testing::expect_rejects([&] { softmax(x.data(), x.data() + 1, 4); }, "y");
  // Any finite s and multiplier are legal (negative ones included); non-finite ones are not.
  testing::expect_rejects([&] { scalable_softmax(x.data(), y.data(), 8, std::nan("")); }, "s");
  testing::expect_rejects(
      [&] { scaled_softmax(x.data(), y.data(), 8, std::numeric_limits<float>::infinity()); },
      "multiplier");
  for (bf e : y) EXPECT_EQ(to_compute(e), -42.0f);
}

}  // namespace
}  // namespace ssmax
