// The attention operator with 16-bit storage on every architecture this binary is
// compiled for but the widest (tests/test_attention_16bit.cpp has that one, with all 27
// combinations): the nine combinations that hold every pair of types of (q, k/v, out),
// every mask kind, policy and path, long decodes and prefill, non-finite inputs.

#include <gtest/gtest.h>

#include "support/stored_attention.hpp"

namespace {

using namespace ssmax::testing;

template <class C>  // kernel_config<Arch, float>
using Attention16Archs = kernel_test<C>;
TYPED_TEST_SUITE(Attention16Archs, float_kernel_configs<other_architectures>, config_name);

TYPED_TEST(Attention16Archs, PairwiseCombinationsMaskPolicyAndPath) {
  check_all<typename TypeParam::arch>(pairwise_combinations{});
}

TYPED_TEST(Attention16Archs, LongDecodeAndPrefill) {
  check_long_decode_and_prefill<typename TypeParam::arch>();
}

TYPED_TEST(Attention16Archs, NonFiniteInputs) {
  check_non_finite_inputs<typename TypeParam::arch>();
}

}  // namespace
