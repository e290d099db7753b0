#pragma once
// The architectures and element types every kernel test runs over: scalar_arch plus each
// xsimd architecture this test binary is compiled for (filtered at compile time), as a
// ::testing::Types list of kernel_config<Arch, T>. A test skips at run time when the CPU
// lacks the architecture.

#include <gtest/gtest.h>

#include <limits>
#include <ssmax/detail/simd.hpp>
#include <string>
#include <tuple>
#include <type_traits>

namespace ssmax::testing {

/// One point of the test matrix.
template <class ArchT,  // xsimd architecture tag or scalar_arch
          class T>      // float or double
struct kernel_config {
  using arch = ArchT;
  using value_type = T;
};

// Representative architectures: each register width, with and without FMA. Wider x86
// tags (avx512bw/dq/cd) add instructions these kernels do not use, so they would retest
// avx512f's code. On ARM, neon64 (AArch64's Advanced SIMD, float and double); 32-bit ARM's
// xsimd::neon (float only) is no target of ours.
using candidate_architectures =
    std::tuple<scalar_arch, xsimd::avx512f, xsimd::fma3<xsimd::avx2>, xsimd::avx2, xsimd::avx,
               xsimd::sse4_2, xsimd::sse2, xsimd::neon64>;

namespace detail {

template <class Out, class In>
struct supported_only;
template <class... Out>
struct supported_only<std::tuple<Out...>, std::tuple<>> {
  using type = std::tuple<Out...>;
};
template <class... Out, class A, class... In>
struct supported_only<std::tuple<Out...>, std::tuple<A, In...>>
    : supported_only<std::conditional_t<A::supported(), std::tuple<Out..., A>, std::tuple<Out...>>,
                     std::tuple<In...>> {};

template <class Archs, class... Ts>
struct cross;
template <class... Archs, class... Ts>
struct cross<std::tuple<Archs...>, Ts...> {
  template <class T>
  using for_type = std::tuple<kernel_config<Archs, T>...>;
  using type = decltype(std::tuple_cat(std::declval<for_type<Ts>>()...));
};

template <class Tuple>
struct to_gtest;
template <class... Cs>
struct to_gtest<std::tuple<Cs...>> {
  using type = ::testing::Types<Cs...>;
};

}  // namespace detail

/// The architectures this binary was compiled for, scalar_arch first.
using tested_architectures =
    typename detail::supported_only<std::tuple<>, candidate_architectures>::type;

/// Every (architecture, float/double) pair, as gtest typed-test parameters.
using kernel_configs = typename detail::to_gtest<
    typename detail::cross<tested_architectures, float, double>::type>::type;

/// (Arch, float) for each architecture of a tuple, as gtest typed-test parameters: the
/// tests of float-computing code (16-bit storage, conversions).
template <class Archs>  // std::tuple of architecture tags
using float_kernel_configs =
    typename detail::to_gtest<typename detail::cross<Archs, float>::type>::type;

/// Names typed tests "avx512f_float" rather than "7".
struct config_name {
  template <class C>
  static std::string GetName(int) {
    return std::string(C::arch::name()) + "_" +
           (std::is_same<typename C::value_type, float>::value ? "float" : "double");
  }
};

/// Skips the current test when the CPU cannot run Arch.
#define SSMAX_SKIP_UNLESS_CPU_SUPPORTS(Arch)                                          \
  do {                                                                                \
    if (!::ssmax::cpu_supports<Arch>()) GTEST_SKIP() << "CPU lacks " << Arch::name(); \
  } while (0)

/// Base of a fixture typed over kernel_configs (or attention_configs): the configuration's
/// architecture and element type, the lane count W of its vectors, its infinity and NaN,
/// and a skip of every test when the CPU lacks the architecture. A fixture deriving from
/// it names what its own members use:
///   using base = kernel_test<Config>;
///   using base::W;
///   using typename base::arch, typename base::value_type;
template <class Config>  // kernel_config<Arch, T>
class kernel_test : public ::testing::Test {
 protected:
  using arch = typename Config::arch;
  using value_type = typename Config::value_type;
  static constexpr index_t W = ::ssmax::detail::simd<arch, value_type>::width;
  static constexpr value_type inf = std::numeric_limits<value_type>::infinity();
  static constexpr value_type nan = std::numeric_limits<value_type>::quiet_NaN();

  void SetUp() override { SSMAX_SKIP_UNLESS_CPU_SUPPORTS(arch); }
};

/// The element types of the tests typed over float and double only (no architecture), and
/// their fixture: `template <class T> using Suite = element_test<T>;` then
/// TYPED_TEST_SUITE(Suite, element_types).
using element_types = ::testing::Types<float, double>;
template <class T>  // float or double
class element_test : public ::testing::Test {};

}  // namespace ssmax::testing
