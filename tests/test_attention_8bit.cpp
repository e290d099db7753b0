// The attention operator on 8-bit K/V caches (storage.hpp: fp8_e4m3 and fp8_e5m2 with a
// scale per tensor or per kv head, ggml's block_q8_0), K and V each in its own format (a
// Q8_0 k with a half v, an fp8 k with a Q8_0 v, ...), against the double reference on the
// dequantized values within the float bound attention.hpp states
// (support/attention_check.hpp): every mask kind, the logit extras and the policies, GQA,
// decode (dot products reading the codes in place) and chunked prefill (the packed GEMM),
// both paths, on every architecture this binary is compiled for. The dequantized values
// are written out here from the formats' definitions (quantize.hpp's to_float, float(d) *
// q), not with the kernels' conversions. Also: Q8_0 equal bit for bit to the float call on
// its dequantized values (its conversion is exact, so nothing else differs), paged pools
// equal to the contiguous cache bit for bit, NaN codes, and bad input (named errors,
// nothing written).

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <numeric>
#include <random>
#include <ssmax/attention.hpp>
#include <ssmax/paged.hpp>
#include <ssmax/quantize.hpp>
#include <string>
#include <vector>

#include "support/architectures.hpp"
#include "support/attention_cases.hpp"
#include "support/attention_check.hpp"

namespace {

using namespace ssmax;
using namespace ssmax::testing;
using ssmax::index_t;

/// One K or V tensor [B, n, H_kv, d] stored in format S: the stored elements, the fp8
/// scales, and the value of every element in double, from the format's definition.
template <class S>  // a K/V storage type
struct stored_tensor {
  std::vector<S> data;
  std::vector<float> scales;  ///< fp8: one, or one per kv head
  std::vector<double> values;
  index_t B = 0, n = 0, H_kv = 0, d = 0;

  /// The view the call takes (an fp8 view with its scale).
  tensor_view<const S> view() const {
    auto t = bshd_view(data.data(), B, n, H_kv, d / values_per_element_v<S>);
    if constexpr (is_fp8_v<S>) t.scale = {scales.data(), scales.size() > 1};
    return t;
  }
};

/// The largest finite value of an fp8 format, from its definition.
template <class F>
double fp8_largest() {
  return std::is_same<F, fp8_e4m3>::value ? 448.0 : 57344.0;
}

/// x [B, n, H_kv, d] (double) stored as S: rounded to float first, then quantized with
/// quantize.hpp's helpers (fp8: a scale of amax / largest, per tensor or per kv head);
/// values written out from the definitions.
template <class S>
stored_tensor<S> store(const std::vector<double>& x, index_t B, index_t n, index_t H_kv, index_t d,
                       bool per_head) {
  stored_tensor<S> t;
  t.B = B, t.n = n, t.H_kv = H_kv, t.d = d;
  std::vector<float> xf(x.begin(), x.end());
  t.values.resize(x.size());
  if constexpr (std::is_same<S, block_q8_0>::value) {
    t.data.resize(x.size() / kQ8_0Block);
    quantize_q8_0(xf.data(), static_cast<index_t>(xf.size()), t.data.data());
    for (size_t e = 0; e < x.size(); ++e) {
      const block_q8_0& blk = t.data[e / kQ8_0Block];
      t.values[e] = static_cast<double>(static_cast<float>(blk.d)) * blk.qs[e % kQ8_0Block];
    }
  } else if constexpr (is_fp8_v<S>) {
    t.scales.assign(per_head ? static_cast<size_t>(H_kv) : 1, 0.0f);
    for (size_t e = 0; e < x.size(); ++e) {
      float& s = t.scales[per_head ? (e / static_cast<size_t>(d)) % static_cast<size_t>(H_kv) : 0];
      s = std::max(s, static_cast<float>(std::abs(xf[e]) / fp8_largest<S>()));
    }
    t.data.resize(x.size());
    for (size_t e = 0; e < x.size(); ++e) {
      const float s =
          t.scales[per_head ? (e / static_cast<size_t>(d)) % static_cast<size_t>(H_kv) : 0];
      quantize_fp8(&xf[e], 1, s, &t.data[e]);
      t.values[e] = static_cast<double>(s) * static_cast<double>(to_float(t.data[e]));
    }
  } else {
    t.data.resize(x.size());
    for (size_t e = 0; e < x.size(); ++e) {
      t.data[e] = static_cast<S>(xf[e]);
      t.values[e] = static_cast<double>(static_cast<float>(t.data[e]));
    }
  }
  return t;
}

/// A problem with K in format K and V in format V: q in float, the reference's data (q, and
/// K and V dequantized) in double.
template <class K, class V>
struct quantized_problem {
  attention_data<double> exact;  // what the reference reads
  std::vector<float> q;
  stored_tensor<K> k;
  stored_tensor<V> v;

  quantized_problem(index_t B, index_t n_q, index_t n_k, index_t H, index_t H_kv, index_t d,
                    unsigned seed, bool per_head)
      : exact(B, n_q, n_k, H, H_kv, d, seed) {
    for (auto& x : exact.q) x = static_cast<double>(static_cast<float>(x));
    q.assign(exact.q.begin(), exact.q.end());
    k = store<K>(exact.k, B, n_k, H_kv, d, per_head);
    v = store<V>(exact.v, B, n_k, H_kv, d, per_head);
    exact.k = k.values;
    exact.v = v.values;
  }
  tensor_view<const float> qv() const {
    return bshd_view(q.data(), exact.B, exact.n_q, exact.H, exact.d);
  }

  template <class Arch, class Policy>
  attention_run<float> run(attention_options<Policy> o, attention_path path) const {
    attention_run<float> r;
    const attention_data<double>& x = exact;
    r.out.assign(static_cast<size_t>(x.B * x.n_q * x.H * x.d), -7.0f);
    r.lse.assign(static_cast<size_t>(x.B * x.H * x.n_q), -7.0f);
    attention_extras<float> extras;
    extras.lse = r.lse.data();
    if (path == attention_path::materialised) {
      r.weights.assign(static_cast<size_t>(x.B * x.H * x.n_q * x.n_k), -7.0f);
      extras.weights = r.weights.data();
    }
    o.path = path;
    attention<Arch>(qv(), k.view(), v.view(), bshd_view(r.out.data(), x.B, x.n_q, x.H, x.d), o,
                    extras);
    return r;
  }
};

template <class S>
std::string format_name() {
  if constexpr (std::is_same<S, block_q8_0>::value) return "q8_0";
  if constexpr (std::is_same<S, fp8_e4m3>::value) return "e4m3";
  if constexpr (std::is_same<S, fp8_e5m2>::value) return "e5m2";
  if constexpr (std::is_same<S, Eigen::half>::value) return "half";
  return "float";
}

/// The policies of the sweep: the multiplier reaches the kernels as a factor of each query
/// whatever the keys' format, so one of each kind (a constant, SSMax's per-head s log n + b
/// with negative entries, a position's) covers that path.
constexpr unsigned kPolicies = softmax_kind | ssmax_negative_kind | qwen_kind;

/// Every mask kind (each with one logit extra and policy, in turn; `crossed` kinds with
/// all of them) on a decode shape (one query row: dot products) and a chunked prefill (40
/// query rows over 300 keys: the GEMM on widened K^T and V), GQA 4:2, d = 64, both paths.
/// int8: with attention_options::allow_int8_dot_products (a Q8_0 k), checked within the
/// bound that adds its logits' shift (support/attention_check.hpp).
template <class Arch, class K, class V>
void check_format(bool per_head, const std::vector<std::string>& crossed, bool int8 = false,
                  index_t d = 64) {
  const std::string pair = "[k " + format_name<K>() + ", v " + format_name<V>() +
                           (per_head ? ", per-head scales" : "") + (int8 ? ", int8 dots]" : "]");
  for (const auto& shape_q_k : {std::pair<index_t, index_t>{1, 290}, {40, 300}}) {
    const index_t n_q = shape_q_k.first, n_k = shape_q_k.second;
    const index_t B = 2, H = 4, H_kv = 2;
    const quantized_problem<K, V> x(B, n_q, n_k, H, H_kv, d, 11 + static_cast<unsigned>(n_q),
                                    per_head);
    const case_shape shape{B, n_q, n_k, H};
    mask_cases masks(shape);
    const logit_extras extras(shape, 5, {0.5f, -std::numeric_limits<float>::infinity(), 2.0f});
    for_each_mask_feature_policy<kPolicies>(
        masks, logit_extras::features(), {H, 7, 40}, crossed,
        [&](const mask_case& mc, const std::string& feature, const char* policy_name,
            const auto& policy, ssmax_parameters*) {
          if (mc.packed) return;  // packed sequences take [1, total, H, d] data
          auto o = options_for(policy, mc.mask);
          o.logit = extras.options(feature, B);
          o.allow_int8_dot_products = int8;
          for (auto path : {attention_path::fused, attention_path::materialised}) {
            const auto run = x.template run<Arch>(o, path);
            expect_matches_reference(
                x.exact, o, run,
                pair + " n_q=" + std::to_string(n_q) + " " + mc.name + " " + feature + " " +
                    policy_name + (path == attention_path::fused ? " [fused]" : " [materialised]"),
                0.0, 0.0, false, 0.0, int8);
          }
        });
  }
}

template <class C>  // kernel_config<Arch, float>
using Attention8bit = kernel_test<C>;
TYPED_TEST_SUITE(Attention8bit, float_kernel_configs<attention_architectures>, config_name);

// Each mask kind once per format pair (with an extra and a policy in turn); the causal mask
// with every extra and policy for llama.cpp's cache format. Sanitizers and emulators look
// for memory errors and instructions, not rounding: there three pairs (each format as k,
// Q8_0, e4m3 and half as v; each kind once), which keeps their builds short.
TYPED_TEST(Attention8bit, FormatsMasksExtrasPoliciesAgainstTheReference) {
  using Arch = typename TypeParam::arch;
  const std::vector<std::string> each_once{"(each kind once)"};
#if defined(SSMAX_TESTS_SANITIZED) || defined(SSMAX_TESTS_EMULATED)
  check_format<Arch, fp8_e4m3, block_q8_0>(true, each_once);
  check_format<Arch, fp8_e5m2, fp8_e4m3>(false, each_once);
  check_format<Arch, block_q8_0, Eigen::half>(false, each_once);
#else
  check_format<Arch, block_q8_0, block_q8_0>(false, {"causal"});
  check_format<Arch, fp8_e4m3, fp8_e4m3>(true, each_once);
  check_format<Arch, fp8_e5m2, fp8_e5m2>(false, each_once);
  check_format<Arch, block_q8_0, Eigen::half>(false, each_once);
  check_format<Arch, Eigen::bfloat16, fp8_e5m2>(true, each_once);
#endif
}

// The opt-in int8 dot products (a Q8_0 k: q rounded to int8 blocks, q . k in integers; a
// Q8_0 v: block scales folded into the weights) within the bound that adds the logits'
// shift, d = 64 and 128, decode (where they apply) and prefill (which ignores them).
TYPED_TEST(Attention8bit, Int8DotProductsWithinTheirBound) {
  using Arch = typename TypeParam::arch;
  const std::vector<std::string> each_once{"(each kind once)"};
#if defined(SSMAX_TESTS_SANITIZED) || defined(SSMAX_TESTS_EMULATED)
  check_format<Arch, block_q8_0, block_q8_0>(false, each_once, true, 128);
#else
  check_format<Arch, block_q8_0, block_q8_0>(false, {"causal"}, true, 128);
  check_format<Arch, block_q8_0, Eigen::half>(false, each_once, true, 64);
  check_format<Arch, block_q8_0, fp8_e4m3>(true, each_once, true, 64);
#endif
}

// One query against two keys, d = 32, scale 1, Softmax: the int8 scores worked out by hand.
// q = (1, 0.3 x 31): its block's step is dq = 1 / 127 (a float), 1 reads 127 and 0.3 reads
// round(0.3 * 127) = 38; key 0 = 0.5 x code 2 (values 1), key 1 = 0.25 x code -1. So the
// integer sums are 2 (127 + 31 * 38) = 2610 and -1305, the scores fma(2610, 0.5 dq, 0) and
// fma(-1305, 0.25 dq, 0), about 10.2756 and -2.5689, where the float call has 10.3 and
// -2.575; the lse is log(e^z0 + e^z1).
TYPED_TEST(Attention8bit, Int8DotProductsOnValuesWorkedOutByHand) {
  using Arch = typename TypeParam::arch;
  const index_t d = 32;
  std::vector<float> q(d, 0.3f), v(2 * d, 1.0f), out(d);
  q[0] = 1.0f;
  std::vector<block_q8_0> keys(2);
  keys[0].d = Eigen::half(0.5f), keys[1].d = Eigen::half(0.25f);
  for (index_t i = 0; i < d; ++i) keys[0].qs[i] = 2, keys[1].qs[i] = -1;
  const float dq = 1.0f / 127.0f;
  const double z0 = std::fma(2610.0f, 0.5f * dq, 0.0f), z1 = std::fma(-1305.0f, 0.25f * dq, 0.0f);
  const double want = std::log(std::exp(z0) + std::exp(z1));
  for (bool int8 : {true, false}) {
    attention_options<> o;
    o.scale = 1.0;
    o.allow_int8_dot_products = int8;
    float lse = 0.0f;
    attention_extras<float> extras;
    extras.lse = &lse;
    attention<Arch>(bshd_view(q.data(), 1, 1, 1, d), bshd_view(keys.data(), 1, 2, 1, 1),
                    bshd_view(v.data(), 1, 2, 1, d), bshd_view(out.data(), 1, 1, 1, d), o, extras);
    const double bound = 2 * std::ldexp(1.0, -23) * (std::abs(want) + 2 + 64);
    if (int8)
      EXPECT_NEAR(lse, want, bound);
    else  // the float call's scores are 10.3 and -2.575: its lse is 0.024 away
      EXPECT_GT(std::abs(lse - want), 100 * bound);
  }
}

// A query row with an infinite or NaN value: that block's scale is NaN, so every score of
// the row is recomputed from the float query, and the row equals the call without the
// opt-in bit for bit (a half v: the same value path either way).
TYPED_TEST(Attention8bit, Int8DotProductsOnNonFiniteQueriesEqualTheFloatScores) {
  using Arch = typename TypeParam::arch;
  const index_t B = 1, n_k = 300, H = 4, H_kv = 2, d = 64;
  quantized_problem<block_q8_0, Eigen::half> x(B, 1, n_k, H, H_kv, d, 8, false);
  x.q[3] = std::numeric_limits<float>::infinity();           // head 0
  x.q[d + 40] = -std::numeric_limits<float>::infinity();     // head 1
  x.q[2 * d + 7] = std::numeric_limits<float>::quiet_NaN();  // head 2
  attention_options<ssmax_policy> o;
  o.policy = ssmax_policy(0.4);
  o.mask = attention_mask::causal_mask();
  const auto plain = x.template run<Arch>(o, attention_path::fused);
  o.allow_int8_dot_products = true;
  const auto int8 = x.template run<Arch>(o, attention_path::fused);
  // Heads 0 to 2 (head 3's row is finite and takes the integer scores).
  EXPECT_EQ(0, std::memcmp(plain.out.data(), int8.out.data(), 3 * d * sizeof(float)));
  EXPECT_EQ(0, std::memcmp(plain.lse.data(), int8.lse.data(), 3 * sizeof(float)));
  EXPECT_NE(0, std::memcmp(plain.out.data() + 3 * d, int8.out.data() + 3 * d, d * sizeof(float)));
}

// Q8_0 values are exact floats (an f16 scale times a 7-bit integer, formed exactly in
// registers): a Q8_0 call equals the float call on the dequantized values bit for bit,
// decode and prefill, both paths, lse and weights too, on architectures with FMA
// instructions. Not on scalar_arch and SSE2, whose a * b + c the compiler may contract into
// an FMA in one instantiation and not in another (key_streams.hpp, dot4_rows' contract);
// their results are checked against the reference.
TYPED_TEST(Attention8bit, Q8_0EqualsTheFloatCallOnItsValuesBitwise) {
  using Arch = typename TypeParam::arch;
  if (std::is_same<Arch, scalar_arch>::value || std::is_same<Arch, xsimd::sse2>::value)
    GTEST_SKIP() << "no FMA instructions: a * b + c may be contracted differently";
  for (index_t n_q : {1, 3, 37}) {
    const index_t B = 2, n_k = 600, H = 8, H_kv = 2, d = 128;
    const quantized_problem<block_q8_0, block_q8_0> x(B, n_q, n_k, H, H_kv, d, 3, false);
    const std::vector<float> kf(x.k.values.begin(), x.k.values.end()),
        vf(x.v.values.begin(), x.v.values.end());
    for (auto path : {attention_path::fused, attention_path::materialised}) {
      attention_options<ssmax_policy> o;
      o.policy = ssmax_policy(0.43);
      o.mask = attention_mask::causal_mask();
      const auto got = x.template run<Arch>(o, path);
      attention_run<float> want;
      want.out.assign(got.out.size(), 0.0f);
      want.lse.assign(got.lse.size(), 0.0f);
      want.weights.assign(got.weights.size(), 0.0f);
      attention_extras<float> extras;
      extras.lse = want.lse.data();
      extras.weights = want.weights.empty() ? nullptr : want.weights.data();
      o.path = path;
      attention<Arch>(x.qv(), bshd_view(kf.data(), B, n_k, H_kv, d),
                      bshd_view(vf.data(), B, n_k, H_kv, d),
                      bshd_view(want.out.data(), B, n_q, H, d), o, extras);
      const std::string what = "n_q=" + std::to_string(n_q);
      EXPECT_EQ(0, std::memcmp(got.out.data(), want.out.data(), got.out.size() * sizeof(float)))
          << what;
      EXPECT_EQ(0, std::memcmp(got.lse.data(), want.lse.data(), got.lse.size() * sizeof(float)))
          << what;
      EXPECT_EQ(0, std::memcmp(got.weights.data(), want.weights.data(),
                               got.weights.size() * sizeof(float)))
          << what;
    }
  }
}

// A NaN code (e4m3 S.1111.111, e5m2 S.11111.xx) or a Q8_0 block whose scale is NaN makes
// the values NaN, and every row that sees one NaN, as a NaN float key or value does: the
// same rows as the float call on the dequantized values, on every path.
TYPED_TEST(Attention8bit, NaNCodesGiveTheFloatCallsNaNRows) {
  using Arch = typename TypeParam::arch;
  const index_t B = 1, n_k = 300, H = 4, H_kv = 2, d = 64;
  const double nan = std::numeric_limits<double>::quiet_NaN();
  for (index_t n_q : {1, 20}) {
    quantized_problem<fp8_e4m3, block_q8_0> x(B, n_q, n_k, H, H_kv, d, 5, false);
    const size_t key = static_cast<size_t>((7 * H_kv + 0) * d + 3);  // key 7, kv head 0
    x.k.data[key].bits = 0x7f;
    x.exact.k[key] = nan;
    const size_t block = static_cast<size_t>((250 * H_kv + 1) * d);  // value 250, kv head 1
    x.v.data[block / kQ8_0Block].d = Eigen::half(std::numeric_limits<float>::quiet_NaN());
    for (index_t c = 0; c < kQ8_0Block; ++c) x.exact.v[block + static_cast<size_t>(c)] = nan;
    quantized_problem<fp8_e5m2, fp8_e5m2> y(B, n_q, n_k, H, H_kv, d, 6, true);
    const size_t key_y = static_cast<size_t>((100 * H_kv + 1) * d);  // key 100, kv head 1
    y.k.data[key_y].bits = 0xff;
    y.exact.k[key_y] = nan;
    for (auto path : {attention_path::fused, attention_path::materialised}) {
      attention_options<> o;
      o.mask = attention_mask::causal_mask();
      const auto expect_float_call_rows = [&](const attention_run<float>& got,
                                              const attention_data<double>& exact) {
        const std::vector<float> kf(exact.k.begin(), exact.k.end()),
            vf(exact.v.begin(), exact.v.end()), qf(exact.q.begin(), exact.q.end());
        std::vector<float> want(got.out.size());
        attention_options<> f = o;
        f.path = path;
        attention<Arch>(bshd_view(qf.data(), B, n_q, H, d), bshd_view(kf.data(), B, n_k, H_kv, d),
                        bshd_view(vf.data(), B, n_k, H_kv, d), bshd_view(want.data(), B, n_q, H, d),
                        f);
        index_t nans = 0;
        for (size_t e = 0; e < want.size(); ++e) {
          EXPECT_EQ(std::isnan(got.out[e]), std::isnan(want[e])) << "element " << e;
          nans += std::isnan(want[e]) ? 1 : 0;
        }
        EXPECT_GT(nans, 0);
      };
      expect_float_call_rows(x.template run<Arch>(o, path), x.exact);
      expect_float_call_rows(y.template run<Arch>(o, path), y.exact);
    }
  }
}

// The ends of the scales' range, 2^-64 and 2^64, on both paths, decode and prefill, over
// many keys (the value scale meets 1 / sum in double, so a tiny scale over a large sum is
// not rounded into float's denormals): within the bound on the exact values.
TYPED_TEST(Attention8bit, ScalesAtTheEndsOfTheirRange) {
  using Arch = typename TypeParam::arch;
  const index_t B = 1, n_k = 3000, H = 2, H_kv = 1, d = 32;
  for (float k_scale : {0x1p-64f, 0x1p64f})
    for (float v_scale : {0x1p-64f, 0x1p64f})
      for (index_t n_q : {1, 12}) {
        quantized_problem<fp8_e5m2, fp8_e4m3> x(B, n_q, n_k, H, H_kv, d, 17, false);
        // The codes stay; the scales move to the ends of the range.
        const double k_scale0 = x.k.scales[0];
        for (size_t e = 0; e < x.exact.k.size(); ++e) {
          x.exact.k[e] = static_cast<double>(k_scale) * to_float(x.k.data[e]);
          x.exact.v[e] = static_cast<double>(v_scale) * to_float(x.v.data[e]);
        }
        attention_options<> o;
        o.mask = attention_mask::causal_mask();
        x.k.scales[0] = k_scale, x.v.scales[0] = v_scale;
        // The logits of the values before the move: of order 1.
        o.scale = k_scale0 / static_cast<double>(k_scale) / std::sqrt(static_cast<double>(d));
        for (auto path : {attention_path::fused, attention_path::materialised})
          expect_matches_reference(x.exact, o, x.template run<Arch>(o, path),
                                   "k_scale " + std::to_string(k_scale) + " v_scale " +
                                       std::to_string(v_scale) + " n_q " + std::to_string(n_q));
      }
}

/// The contiguous cache [B, n, H_kv, d] of a tensor copied into a pool of num_blocks blocks
/// of `block_size` tokens through `table` [B, max_blocks]; the pool blocks no sequence owns
/// hold NaN codes, which no call may read.
template <class S>
std::vector<S> paged_copy(const stored_tensor<S>& t, index_t block_size, index_t num_blocks,
                          const std::vector<std::int32_t>& table, index_t max_blocks) {
  const index_t row = t.H_kv * t.d / values_per_element_v<S>;
  std::vector<S> pool(static_cast<size_t>(num_blocks * block_size * row));
  std::memset(static_cast<void*>(pool.data()), 0xff, pool.size() * sizeof(S));
  for (index_t b = 0; b < t.B; ++b)
    for (index_t j = 0; j < t.n; ++j) {
      const index_t page = table[static_cast<size_t>(b * max_blocks + j / block_size)];
      std::memcpy(static_cast<void*>(
                      &pool[static_cast<size_t>((page * block_size + j % block_size) * row)]),
                  &t.data[static_cast<size_t>((b * t.n + j) * row)],
                  static_cast<size_t>(row) * sizeof(S));
    }
  return pool;
}

// paged_attention over 8-bit pools equals attention on the contiguous cache (cache_view,
// the same lengths) bit for bit: decode and chunked prefill, both paths, K and V in
// different formats, per-head and per-tensor scales.
template <class Arch, class K, class V>
void check_paged_equals_contiguous(bool per_head) {
  const index_t B = 3, capacity = 530, H = 8, H_kv = 2, d = 64, block_size = 16;
  const index_t max_blocks = (capacity + block_size - 1) / block_size,
                num_blocks = B * max_blocks + 3;
  const std::vector<std::int32_t> lengths{530, 17, 301};
  std::vector<std::int32_t> ids(static_cast<size_t>(num_blocks));
  std::iota(ids.begin(), ids.end(), 0);
  std::shuffle(ids.begin(), ids.end(), std::mt19937(9));
  const std::vector<std::int32_t> table(ids.begin(), ids.begin() + B * max_blocks);
  for (index_t n_q : {1, 9}) {
    const quantized_problem<K, V> x(B, n_q, capacity, H, H_kv, d, 21, per_head);
    const std::vector<K> k_pool = paged_copy(x.k, block_size, num_blocks, table, max_blocks);
    const std::vector<V> v_pool = paged_copy(x.v, block_size, num_blocks, table, max_blocks);
    paged_kv_cache<K, V> cache;
    cache.k_pool = k_pool.data(), cache.v_pool = v_pool.data();
    cache.num_blocks = num_blocks, cache.block_size = block_size;
    cache.kv_heads = H_kv, cache.dim = d;
    cache.block_table = table.data(), cache.max_blocks = max_blocks;
    cache.cache_lengths = lengths.data();
    if constexpr (is_fp8_v<K>) cache.k_scale = x.k.view().scale;
    if constexpr (is_fp8_v<V>) cache.v_scale = x.v.view().scale;
    auto k_view =
        cache_view(x.k.data.data(), B, capacity, H_kv, d / values_per_element_v<K>, lengths.data());
    auto v_view =
        cache_view(x.v.data.data(), B, capacity, H_kv, d / values_per_element_v<V>, lengths.data());
    k_view.scale = x.k.view().scale;
    v_view.scale = x.v.view().scale;
    for (auto path : {attention_path::fused, attention_path::materialised})
      for (bool int8 : {false, true}) {
        attention_options<ssmax_policy> o;
        o.policy = ssmax_policy(0.5, -0.2);
        o.path = path;
        o.allow_int8_dot_products = int8;
        const size_t out_size = static_cast<size_t>(B * n_q * H * d);
        std::vector<float> paged(out_size), contiguous(out_size);
        std::vector<float> paged_lse(static_cast<size_t>(B * H * n_q)), lse(paged_lse.size());
        attention_extras<float> paged_extras, extras;
        paged_extras.lse = paged_lse.data();
        extras.lse = lse.data();
        paged_attention<Arch>(x.qv(), cache, bshd_view(paged.data(), B, n_q, H, d), o,
                              paged_extras);
        attention_options<ssmax_policy> c = o;
        c.mask = attention_mask::cache(lengths.data());
        attention<Arch>(x.qv(), k_view, v_view, bshd_view(contiguous.data(), B, n_q, H, d), c,
                        extras);
        EXPECT_EQ(0, std::memcmp(paged.data(), contiguous.data(), out_size * sizeof(float)))
            << "n_q=" << n_q << " int8 " << int8;
        EXPECT_EQ(0, std::memcmp(paged_lse.data(), lse.data(), lse.size() * sizeof(float)))
            << "n_q=" << n_q << " int8 " << int8;
        for (float e : paged) ASSERT_TRUE(std::isfinite(e));  // no unowned pool row was read
      }
  }
}

TYPED_TEST(Attention8bit, PagedPoolsEqualTheContiguousCacheBitwise) {
  using Arch = typename TypeParam::arch;
  check_paged_equals_contiguous<Arch, block_q8_0, block_q8_0>(false);
  check_paged_equals_contiguous<Arch, block_q8_0, Eigen::half>(false);
  check_paged_equals_contiguous<Arch, fp8_e4m3, fp8_e5m2>(true);
}

// ---- Bad input ------------------------------------------------------------------------

/// Expects call() to throw argument_error naming `argument`, its message holding `words`.
template <class Call>
void expect_error(Call&& call, const std::string& argument, const std::string& words) {
  try {
    call();
    ADD_FAILURE() << "no error for bad '" << argument << "'";
  } catch (const argument_error& e) {
    EXPECT_EQ(e.argument(), argument) << e.what();
    EXPECT_NE(std::string(e.what()).find(words), std::string::npos) << e.what();
  }
}
#define EXPECT_ARGUMENT_ERROR(call, argument, words) expect_error([&] { call; }, argument, words)

struct bad_input : ::testing::Test {
  static constexpr index_t B = 1, n = 48, H = 2, d = 64;
  std::vector<float> q = std::vector<float>(static_cast<size_t>(B * 4 * H * d), 0.5f);
  std::vector<float> out = std::vector<float>(q.size(), -3.0f);
  std::vector<block_q8_0> kq = std::vector<block_q8_0>(static_cast<size_t>(B * n * H * d / 32));
  std::vector<fp8_e4m3> k8 = std::vector<fp8_e4m3>(static_cast<size_t>(B * n * H * d));
  std::vector<float> scale{0.1f, 0.2f};
  tensor_view<const float> qv() const { return bshd_view(q.data(), B, 4, H, d); }
  tensor_view<float> ov() { return bshd_view(out.data(), B, 4, H, d); }
  tensor_view<const fp8_e4m3> fp8() const {
    auto t = bshd_view(k8.data(), B, n, H, d);
    t.scale = {scale.data(), true};
    return t;
  }
  tensor_view<const block_q8_0> q8() const { return bshd_view(kq.data(), B, n, H, d / 32); }
  void expect_untouched() {
    for (float x : out) ASSERT_EQ(x, -3.0f);
  }
};

TEST_F(bad_input, Q8_0HeadRowsMustHoldQsDimension) {
  const auto k = bshd_view(kq.data(), B, n / 2, H, d / 16);  // 4 blocks: 128 values
  EXPECT_ARGUMENT_ERROR(attention(qv(), k, k, ov()), "k", "4 Q8_0 blocks per head row");
  const auto v = bshd_view(kq.data(), B, n, H, d / 32 - 1);
  EXPECT_ARGUMENT_ERROR(attention(qv(), q8(), v, ov()), "v", "Q8_0 blocks");
  expect_untouched();
}

TEST_F(bad_input, Q8_0BlocksMustBeAligned) {
  std::vector<unsigned char> bytes(kq.size() * sizeof(block_q8_0) + 2);
  const auto* odd = reinterpret_cast<const block_q8_0*>(bytes.data() + 1);
  EXPECT_ARGUMENT_ERROR(attention(qv(), bshd_view(odd, B, n, H, d / 32), q8(), ov()), "k",
                        "aligned");
  expect_untouched();
}

TEST_F(bad_input, Fp8ScalesMustBeGivenFiniteAndPositive) {
  auto k = fp8();
  k.scale.values = nullptr;
  EXPECT_ARGUMENT_ERROR(attention(qv(), k, q8(), ov()), "k.scale", "must not be null");
  for (float bad : {0.0f, -1.0f, std::numeric_limits<float>::quiet_NaN(),
                    std::numeric_limits<float>::infinity()}) {
    scale[1] = bad;
    EXPECT_ARGUMENT_ERROR(attention(qv(), q8(), fp8(), ov()), "v.scale", "for head 1");
  }
  for (float outside : {0x1p-65f, 0x1p-140f, 0x1p65f}) {  // the range is [2^-64, 2^64]
    scale[1] = outside;
    EXPECT_ARGUMENT_ERROR(attention(qv(), fp8(), q8(), ov()), "k.scale", "[2^-64, 2^64]");
  }
  scale[1] = 0.2f;
  auto f = bshd_view(q.data(), B, 4, H, d);  // a float view with a scale
  f.scale = {scale.data()};
  EXPECT_ARGUMENT_ERROR(attention(qv(), fp8(), f, ov()), "v.scale", "only fp8 views");
  EXPECT_ARGUMENT_ERROR(attention(f, fp8(), q8(), ov()), "q.scale", "only fp8 views");
  auto o = ov();
  o.scale = {scale.data()};
  EXPECT_ARGUMENT_ERROR(attention(qv(), fp8(), q8(), o), "out.scale", "only fp8 views");
  expect_untouched();
}

TEST_F(bad_input, OutMustNotOverlapTheScales) {
  std::vector<float> buffer(out.size() + 2, -3.0f);
  auto k = fp8();
  k.scale = {buffer.data() + 5};
  buffer[5] = 0.25f;
  EXPECT_ARGUMENT_ERROR(attention(qv(), k, q8(), bshd_view(buffer.data(), B, 4, H, d)), "out",
                        "k.scale");
  EXPECT_EQ(buffer[0], -3.0f);
}

TEST_F(bad_input, PagedPoolsNameTheCacheFields) {
  const std::vector<std::int32_t> table{0, 1, 2}, lengths{40};
  paged_kv_cache<block_q8_0, fp8_e4m3> cache;
  cache.k_pool = kq.data(), cache.v_pool = k8.data();
  cache.num_blocks = 3, cache.block_size = 16, cache.kv_heads = H, cache.dim = d;
  cache.block_table = table.data(), cache.max_blocks = 3, cache.cache_lengths = lengths.data();
  EXPECT_ARGUMENT_ERROR(paged_attention(qv(), cache, ov()), "cache.v_scale", "must not be null");
  cache.v_scale = {scale.data(), true};
  scale[0] = -1.0f;
  EXPECT_ARGUMENT_ERROR(paged_attention(qv(), cache, ov()), "cache.v_scale", "finite and > 0");
  scale[0] = 0.1f;
  cache.dim = 48;
  const auto q48 = bshd_view(q.data(), B, 4, H, 48);
  EXPECT_ARGUMENT_ERROR(paged_attention(q48, cache, bshd_view(out.data(), B, 4, H, 48)),
                        "cache.dim", "multiple of 32");
  cache.dim = d;
  cache.k_scale = {scale.data()};
  EXPECT_ARGUMENT_ERROR(paged_attention(qv(), cache, ov()), "cache.k_scale", "only fp8");
  expect_untouched();
  cache.k_scale = {};
  EXPECT_NO_THROW(paged_attention(qv(), cache, ov()));
}

}  // namespace
