// The attention backward with 16-bit storage (attention_backward.hpp, storage.hpp): q, k,
// v, out and dout in bfloat16 or half (and mixes with float), gradients accumulated in
// float and stored in the caller's type, against the double reference backward run on the
// same 16-bit values under the bound attention_backward.hpp states
// (support/stored_backward.hpp): both paths, every mask kind, Softmax and SSMax with
// learnable per-head s and b (m < 0 rows included), GQA, long rows over several key
// blocks; threads 1 and 2 bitwise equal; float and bfloat16 gradients of one call agree to
// one rounding; bad input named, nothing written.

#include <gtest/gtest.h>

#include "support/attention_cases.hpp"
#include "support/expect_error.hpp"
#include "support/stored_backward.hpp"

namespace {

using namespace ssmax;
using namespace ssmax::testing;
using ssmax::index_t;

/// The mask cases' shape: 2 batch entries, 4 queries, 6 keys, 4 heads (GQA 4:2 below).
constexpr case_shape kMaskShape{2, 4, 6, 4};

/// Every mask kind x Softmax and SSMax (scalar; learnable per-head s and b as initialised,
/// as trained with m < 0 on short rows, with a fixed n) x d = 5 and 16.
template <class Arch, class C>
void check_masks_and_policies(const std::string& types) {
  const mask_cases masks(kMaskShape);
  unsigned seed = 1;
  for (const auto& mc : masks)
    for_each_policy<softmax_and_ssmax>(
        {4, 2, 32}, [&](const char* policy_name, const auto& policy) {
          for (index_t d : {5, 16}) {
            const stored_backward_data<C> x(masks.batch_of(mc), kMaskShape.n_q, kMaskShape.n_k, 4,
                                            2, d, ++seed, policy, mc.mask);
            check_stored_backward<Arch>(
                x, policy, mc.mask,
                types + " " + mc.name + "/" + policy_name + "/d" + std::to_string(d));
          }
        });
}

template <class Arch, class C>
void check_long_rows(const std::string& types) {
  // More keys than kernels::kKeyBlock, more queries than a query block (GEMM path, packing).
  const ssmax_policy policy(std::vector<double>{0.43, 0.3}, std::vector<double>{0.1, -0.2});
  const auto causal = attention_mask::causal_mask();
  const stored_backward_data<C> x(1, 70, 600, 2, 1, 64, 3, policy, causal);
  check_stored_backward<Arch>(x, policy, causal, types + " long causal ssmax d=64");
  const auto window = attention_mask::sliding_window(300);
  const stored_backward_data<C> y(1, 70, 600, 4, 2, 37, 4, softmax_policy{}, window);
  check_stored_backward<Arch>(y, softmax_policy{}, window, types + " long window softmax d=37");
}

template <class Arch, class C>
void check_threads_bitwise() {
  const ssmax_policy policy(0.5, 0.2);
  const auto mask = attention_mask::causal_mask();
  const stored_backward_data<C> x(2, 40, 300, 4, 2, 24, 9, policy, mask);
  const auto o = options_for(policy, mask);
  for (auto path : {attention_path::fused, attention_path::materialised}) {
    const auto one = run_stored_backward<Arch>(x, o, path, 1);
    const auto two = run_stored_backward<Arch>(x, o, path, 2);
    EXPECT_EQ(one.dq, two.dq);
    EXPECT_EQ(one.dk, two.dk);
    EXPECT_EQ(one.dv, two.dv);
    EXPECT_EQ(one.dm, two.dm);
    EXPECT_EQ(one.pg.s, two.pg.s);
    EXPECT_EQ(one.pg.b, two.pg.b);
  }
}

using all_bf16 = backward_combo<bf16, bf16, bf16, bf16, bf16>;
using bf16_float_grads = backward_combo<bf16, bf16, bf16, bf16, f32>;
using all_f16 = backward_combo<f16, f16, f16, f16, f16>;
using mixed = backward_combo<f16, bf16, f32, bf16, bf16>;  // q, kv, out, dout, grads

template <class Config>  // kernel_config<Arch, float>
using Backward16 = kernel_test<Config>;
TYPED_TEST_SUITE(Backward16, float_kernel_configs<attention_architectures>, config_name);

TYPED_TEST(Backward16, Bf16EveryMaskAndPolicyBothPaths) {
  check_masks_and_policies<typename TypeParam::arch, all_bf16>("[bf16]");
}

TYPED_TEST(Backward16, Bf16LongRowsCrossKeyBlocks) {
  check_long_rows<typename TypeParam::arch, all_bf16>("[bf16]");
}

TYPED_TEST(Backward16, Bf16ThreadsDoNotMatter) {
  check_threads_bitwise<typename TypeParam::arch, all_bf16>();
}

template <class Config>  // kernel_config<Arch, float>
using Backward16Widest = kernel_test<Config>;
TYPED_TEST_SUITE(Backward16Widest, float_kernel_configs<std::tuple<widest_architecture>>,
                 config_name);

TYPED_TEST(Backward16Widest, OtherCombinations) {
  using A = typename TypeParam::arch;
  check_masks_and_policies<A, bf16_float_grads>("[bf16, float grads]");
  check_masks_and_policies<A, all_f16>("[f16]");
  check_masks_and_policies<A, mixed>("[q f16, kv bf16, out f32, dout bf16, grads bf16]");
  check_long_rows<A, all_f16>("[f16]");
  check_long_rows<A, mixed>("[mixed]");
  check_threads_bitwise<A, all_f16>();
}

TYPED_TEST(Backward16Widest, Bf16GradientsAreTheFloatGradientsRoundedOnce) {
  // The same call with float and with bfloat16 gradients: the accumulation is the same, so
  // each bfloat16 gradient is its float one rounded to nearest even.
  using A = typename TypeParam::arch;
  const ssmax_policy policy(0.43, 0.1);
  const auto mask = attention_mask::causal_mask();
  const stored_backward_data<all_bf16> x(1, 30, 300, 4, 2, 32, 5, policy, mask);
  const stored_backward_data<bf16_float_grads> y(1, 30, 300, 4, 2, 32, 5, policy, mask);
  const auto o = options_for(policy, mask);
  for (auto path : {attention_path::fused, attention_path::materialised}) {
    const auto g16 = run_stored_backward<A>(x, o, path, 1);
    const auto g32 = run_stored_backward<A>(y, o, path, 1);
    auto rounded = [](const std::vector<double>& g) {
      std::vector<double> r;
      for (double e : g)
        r.push_back(kernels::to_compute(kernels::from_compute<bf16>(static_cast<float>(e))));
      return r;
    };
    EXPECT_EQ(g16.dq, rounded(g32.dq));
    EXPECT_EQ(g16.dk, rounded(g32.dk));
    EXPECT_EQ(g16.dv, rounded(g32.dv));
    EXPECT_EQ(g16.dm, g32.dm);
  }
}

TEST(Backward16Errors, BadInputIsNamedAndNothingIsWritten) {
  const auto mask = attention_mask::causal_mask();
  const stored_backward_data<all_bf16> x(1, 4, 6, 2, 1, 8, 31, softmax_policy{}, mask);
  const bf16 marker = kernels::from_compute<bf16>(-7.0f);
  std::vector<bf16> dq(x.sq.size(), marker), dk(x.sk.size(), marker), dv(x.sv.size(), marker);
  auto grads = [&] {
    return attention_gradients<bf16>{bshd_view(dq.data(), 1, 4, 2, 8),
                                     bshd_view(dk.data(), 1, 6, 1, 8),
                                     bshd_view(dv.data(), 1, 6, 1, 8)};
  };
  auto untouched = [&] {
    for (const auto* g : {&dq, &dk, &dv})
      for (bf16 e : *g) ASSERT_EQ(kernels::bits_of(e), kernels::bits_of(marker));
  };
  const auto q = x.qv(x.sq), k = x.kv(x.sk), v = x.kv(x.sv), out = x.qv(x.sout);
  const auto dout = x.qv(x.sdout);
  expect_rejects([&] { attention_backward(q, k, v, out, dout, nullptr, grads()); }, "lse");
  expect_rejects(
      [&] {
        attention_backward(q, k, v, out, bshd_view(x.sdout.data(), 1, 3, 2, 8), x.lse.data(),
                           grads());
      },
      "dout");
  {
    auto g = grads();
    g.dk = bshd_view(dk.data(), 1, 5, 1, 8);
    expect_rejects([&] { attention_backward(q, k, v, out, dout, x.lse.data(), g); }, "grads.dk");
  }
  {
    auto g = grads();  // dv over dq (the same type)
    g.dv = bshd_view(dq.data(), 1, 6, 1, 8);
    expect_rejects([&] { attention_backward(q, k, v, out, dout, x.lse.data(), g); }, "grads.dv");
  }
  {  // a float gradient over a bfloat16 input (mixed types: byte ranges compared)
    std::vector<float> fq(x.sq.size()), fv(x.sv.size());
    attention_gradients<float> g{
        bshd_view(fq.data(), 1, 4, 2, 8),
        bshd_view(reinterpret_cast<float*>(const_cast<bf16*>(x.sk.data())), 1, 6, 1, 8),
        bshd_view(fv.data(), 1, 6, 1, 8)};
    expect_rejects([&] { attention_backward(q, k, v, out, dout, x.lse.data(), g); }, "grads.dk");
  }
  attention_options<ssmax_policy> bad;
  bad.policy = ssmax_policy(std::nan(""));
  expect_rejects([&] { attention_backward(q, k, v, out, dout, x.lse.data(), grads(), bad); },
                 "policy.s");
  untouched();
}

}  // namespace
