// The bf16 prefill's two methods (attention_options::bf16, attention.hpp): float_gemm (q
// and k widened while packing, the float GEMM) equals the same call on float tensors of
// the same values bit for bit, and declines the opt-in bf16 weights; dot_products
// (vdpbf16ps, where the build and the CPU have AVX512-BF16) gives other roundings within
// the bound (test_attention_bf16_scores.cpp checks that bound); automatic follows the CPU
// rule of detail/cpu.hpp, which is checked here against /proc/cpuinfo's vendor; a bad
// method is refused by name.

#include <gtest/gtest.h>

#include <fstream>
#include <random>
#include <ssmax/ssmax.hpp>
#include <string>
#include <vector>

#include "support/cpu_features.hpp"
#include "support/expect_error.hpp"
#include "support/stored_attention.hpp"

namespace {

using namespace ssmax;
using namespace ssmax::testing;
using ssmax::index_t;
using Arch = widest_architecture;
using bf16_in = combo<bf16, bf16, f32>;

/// A causal SSMax prefill with GQA: one kPrefillQueryBlock task and a decode tail.
struct prefill_case {
  static constexpr index_t B = 2, n_q = 131, n_k = 400, H = 4, H_kv = 2, d = 64;
  stored_data<bf16_in> data{B, n_q, n_k, H, H_kv, d, 17};
  std::vector<float> q_float, k_float, v_float;  // the same values in float

  prefill_case() {
    for (const auto& [from, to] :
         {std::pair{&data.q, &q_float}, std::pair{&data.k, &k_float}, std::pair{&data.v, &v_float}})
      for (bf16 x : *from) to->push_back(static_cast<float>(x));
  }

  static attention_options<ssmax_policy> options(bf16_method method, int threads) {
    attention_options<ssmax_policy> o;
    o.policy = ssmax_policy(0.4, -0.2);
    o.mask = attention_mask::causal_mask();
    o.threads = threads;
    o.bf16 = method;
    o.path = attention_path::fused;
    return o;
  }

  std::vector<float> run_bf16(const attention_options<ssmax_policy>& o) const {
    std::vector<float> out(static_cast<size_t>(B * n_q * H * d), -7.0f);
    attention<Arch>(
        bshd_view(data.q.data(), B, n_q, H, d), bshd_view(data.k.data(), B, n_k, H_kv, d),
        bshd_view(data.v.data(), B, n_k, H_kv, d), bshd_view(out.data(), B, n_q, H, d), o);
    return out;
  }

  std::vector<float> run_float(attention_options<ssmax_policy> o) const {
    o.bf16 = bf16_method::automatic;  // no bf16 tensor: no effect
    std::vector<float> out(static_cast<size_t>(B * n_q * H * d), -7.0f);
    attention<Arch>(
        bshd_view(q_float.data(), B, n_q, H, d), bshd_view(k_float.data(), B, n_k, H_kv, d),
        bshd_view(v_float.data(), B, n_k, H_kv, d), bshd_view(out.data(), B, n_q, H, d), o);
    return out;
  }
};

/// True when the CPU and the build both have vdpbf16ps for this call.
bool has_dot_products() { return flushed_dots<Arch, bf16_in>() && cpu_has_avx512_bf16(); }

TEST(Bf16Method, FloatGemmEqualsTheFloatCallBitwise) {
  const prefill_case c;
  for (int threads : {1, 2})
    for (bool allow_weights : {false, true}) {  // float_gemm declines the bf16 weights
      auto o = prefill_case::options(bf16_method::float_gemm, threads);
      o.allow_bf16_weights = allow_weights;
      EXPECT_EQ(c.run_bf16(o), c.run_float(o))
          << threads << " threads, bf16 weights " << (allow_weights ? "allowed" : "not allowed");
    }
}

TEST(Bf16Method, DotProductsRoundOtherwiseWhereTheCpuHasThem) {
  if (!has_dot_products()) GTEST_SKIP() << "no vdpbf16ps in this build or on this CPU";
  const prefill_case c;
  const auto dots = c.run_bf16(prefill_case::options(bf16_method::dot_products, 1));
  const auto widened = c.run_bf16(prefill_case::options(bf16_method::float_gemm, 1));
  EXPECT_NE(dots, widened) << "the method changed no rounding: is it applied?";
  EXPECT_EQ(dots, c.run_bf16(prefill_case::options(bf16_method::dot_products, 2)))
      << "thread count changed the dot-product result";
}

/// The CPU vendor as /proc/cpuinfo names it, or "" when it has none (not x86).
std::string cpu_vendor() {
  std::ifstream in("/proc/cpuinfo");
  std::string word;
  while (in >> word)
    if (word == "vendor_id") {
      in >> word >> word;  // ":" then the vendor
      return word;
    }
  return "";
}

/// True when this binary is for x86 (under an emulator /proc/cpuinfo is the host's).
constexpr bool x86_build() {
#if defined(__x86_64__) || defined(__i386__)
  return true;
#else
  return false;
#endif
}

TEST(Bf16Method, AutomaticTakesDotProductsOnAmdOnly) {
  const bool amd = x86_build() && cpu_vendor() == "AuthenticAMD";
  EXPECT_EQ(ssmax::detail::bf16_dot_products_outrun_fma(), amd) << "vendor " << cpu_vendor();
  const prefill_case c;
  const auto chosen = amd ? bf16_method::dot_products : bf16_method::float_gemm;
  for (int threads : {1, 2})
    EXPECT_EQ(c.run_bf16(prefill_case::options(bf16_method::automatic, threads)),
              c.run_bf16(prefill_case::options(chosen, threads)))
        << threads << " threads";
}

TEST(Bf16Method, AnUnknownMethodIsRefusedByName) {
  const prefill_case c;
  auto o = prefill_case::options(static_cast<bf16_method>(7), 1);
  std::vector<float> out(static_cast<size_t>(c.B * c.n_q * c.H * c.d), -7.0f);
  expect_rejects(
      [&] {
        attention<Arch>(bshd_view(c.data.q.data(), c.B, c.n_q, c.H, c.d),
                        bshd_view(c.data.k.data(), c.B, c.n_k, c.H_kv, c.d),
                        bshd_view(c.data.v.data(), c.B, c.n_k, c.H_kv, c.d),
                        bshd_view(out.data(), c.B, c.n_q, c.H, c.d), o);
      },
      "options.bf16");
  for (float x : out) ASSERT_EQ(x, -7.0f) << "written before the error";
}

}  // namespace
