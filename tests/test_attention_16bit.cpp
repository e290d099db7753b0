// The attention operator with 16-bit storage (storage.hpp) on the widest architecture
// this binary is compiled for: all 27 combinations of q, k/v and out in float,
// Eigen::bfloat16 and Eigen::half, both paths, decode (1 to 3 query rows: dot products
// reading K and V in place) and prefill (K^T and V widened while packing), every mask
// kind, Softmax, SSMax and SSMax with a per-head bias, GQA, against the double reference
// on the exact input values within the bound attention.hpp states
// (support/stored_attention.hpp); the Eigen one-head overloads; bad input (named errors,
// nothing written). tests/test_attention_16bit_archs.cpp covers the other architectures.

#include <gtest/gtest.h>

#include "support/expect_error.hpp"
#include "support/stored_attention.hpp"

namespace {

using namespace ssmax;
using namespace ssmax::testing;
using ssmax::index_t;

template <class C>  // kernel_config<Arch, float>
using Attention16 = kernel_test<C>;
TYPED_TEST_SUITE(Attention16, float_kernel_configs<std::tuple<widest_architecture>>, config_name);

// All 27 combinations; under a sanitizer (which looks for memory errors, not rounding, and
// runs this test 10x slower) or an emulator, the nine pairwise ones, which still send every
// storage type through every kernel.
#if defined(SSMAX_TESTS_SANITIZED) || defined(SSMAX_TESTS_EMULATED)
using widest_combinations = pairwise_combinations;
#else
using widest_combinations = every_combination;
#endif

TYPED_TEST(Attention16, CombinationsMaskPolicyAndPath) {
  check_all<typename TypeParam::arch>(widest_combinations{});
}

TYPED_TEST(Attention16, LongDecodeAndPrefill) {
  check_long_decode_and_prefill<typename TypeParam::arch>();
}

TYPED_TEST(Attention16, NonFiniteInputs) { check_non_finite_inputs<typename TypeParam::arch>(); }

TEST(Attention16Eigen, OneHeadOverloadsEqualTheViews) {
  stored_data<combo<bf16, bf16, bf16>> data(1, 5, 40, 1, 1, 16, 41);
  using M = row_matrix<bf16>;
  const Eigen::Map<const M> q(data.q.data(), 5, 16), k(data.k.data(), 40, 16),
      v(data.v.data(), 40, 16);
  M out(5, 16), want(5, 16);
  attention(q, k, v, out);
  attention(bshd_view(data.q.data(), 1, 5, 1, 16), bshd_view(data.k.data(), 1, 40, 1, 16),
            bshd_view(data.v.data(), 1, 40, 1, 16), bshd_view(want.data(), 1, 5, 1, 16));
  for (index_t e = 0; e < out.size(); ++e)
    EXPECT_EQ(kernels::bits_of(out.data()[e]), kernels::bits_of(want.data()[e]));
  stored_data<combo<f16, f16, f16>> half_data(1, 5, 40, 1, 1, 16, 42);
  using H = row_matrix<f16>;
  H out16(5, 16);
  attention(Eigen::Map<const H>(half_data.q.data(), 5, 16),
            Eigen::Map<const H>(half_data.k.data(), 40, 16),
            Eigen::Map<const H>(half_data.v.data(), 40, 16), out16);
  attention_run<float> run;
  for (index_t e = 0; e < out16.size(); ++e)
    run.out.push_back(kernels::to_compute(out16.data()[e]));
  expect_matches_reference(half_data.exact, attention_options<>{}, run, "Eigen half",
                           out_unit<f16>(), out_tiny<f16>());
}

TEST(Attention16Errors, BadInputIsNamedAndNothingIsWritten) {
  stored_data<combo<bf16, f16, bf16>> data(1, 3, 8, 2, 1, 8, 31);
  const auto& x = data.exact;
  std::vector<bf16> out(x.q.size(), kernels::from_compute<bf16>(-7.0f));
  const auto q = bshd_view(data.q.data(), 1, 3, 2, 8);
  const auto k = bshd_view(data.k.data(), 1, 8, 1, 8);
  const auto v = bshd_view(data.v.data(), 1, 8, 1, 8);
  const auto o = bshd_view(out.data(), 1, 3, 2, 8);
  auto untouched = [&] {
    for (bf16 e : out) ASSERT_EQ(kernels::to_compute(e), -7.0f);
  };
  expect_rejects([&] { attention(q, bshd_view(data.k.data(), 1, 8, 1, 4), v, o); }, "k");
  untouched();
  expect_rejects([&] { attention(q, k, bshd_view(data.v.data(), 1, 7, 1, 8), o); }, "v");
  untouched();
  // out overlapping q (the same bytes viewed as out's type).
  expect_rejects(
      [&] {
        attention(q, k, v, bshd_view(reinterpret_cast<bf16*>(data.q.data()) + 0, 1, 3, 2, 8));
      },
      "out");
  std::vector<float> lse(6);
  attention_extras<float> extras;
  extras.weights = lse.data();
  attention_options<> fused;
  fused.path = attention_path::fused;
  expect_rejects([&] { attention(q, k, v, o, fused, extras); }, "extras.weights");
  untouched();
  attention_options<> bad_scale;
  bad_scale.scale = -1.0;
  expect_rejects([&] { attention(q, k, v, o, bad_scale); }, "options.scale");
  expect_rejects([&] { attention_workspace_bytes(q, k, v, o, bad_scale); }, "options.scale");
  untouched();
}

}  // namespace
