// Example 6: choosing the SIMD architecture at run time.
//
// ssmax is header-only, so its kernels are compiled for whatever the including translation
// unit targets: built for baseline x86-64, a program runs SSE2 code even on an AVX-512
// machine; built with -march=native, it may not start on an older one. To ship one binary
// that uses the best the CPU has, compile the kernel once per architecture
// (kernels_*.cpp, each with its own flags) and let xsimd::dispatch pick one at run time.
//
// This file is compiled for baseline x86-64. It validates the arguments (the dispatcher is
// noexcept), runs the dispatched kernel on a batch of rows, then runs every compiled
// architecture the CPU supports and compares each with ssmax's portable scalar path. It
// exits non-zero if any result is off.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

#include "kernels.hpp"

namespace {

/// Largest |a_i - b_i| relative to the larger of the two (weights are compared with
/// themselves; both paths flush weights below n * FLT_MIN to 0, hence the tiny floor).
double worst_relative(const std::vector<float>& a, const std::vector<float>& b) {
  double worst = 0.0;
  for (std::size_t i = 0; i < a.size(); ++i) {
    const double scale = std::max(std::abs(double(a[i])), std::abs(double(b[i])));
    worst = std::max(worst, std::abs(double(a[i]) - b[i]) / std::max(scale, 1e-30));
  }
  return worst;
}

}  // namespace

int main() {
  const ssmax::index_t rows = 64, n = 4096;
  const double s = 0.43;
  std::mt19937 rng(6);
  std::normal_distribution<float> logit(0.0f, 2.0f);
  std::vector<float> x(static_cast<std::size_t>(rows * n)), y(x.size()), expected(x.size());
  for (float& v : x) v = logit(rng);

  // The portable scalar path, compiled here for baseline x86-64, is the reference. It also
  // validates every row's arguments (throwing ssmax::argument_error) before the dispatcher
  // runs: the dispatched kernels then cannot throw.
  for (ssmax::index_t r = 0; r < rows; ++r)
    ssmax::scalable_softmax<ssmax::scalar_arch>(x.data() + r * n, expected.data() + r * n, n, s);

  // xsimd::dispatch walks dispatch_archs (widest first) and calls the functor with the
  // first architecture the CPU supports.
  const char* chosen =
      xsimd::dispatch<dispatch_archs>([](auto arch) { return decltype(arch)::name(); })();
  xsimd::dispatch<dispatch_archs>(ssmax_rows{})(x.data(), y.data(), rows, n, s);
  const double dispatched_error = worst_relative(y, expected);
  std::printf("compiled for: avx512bw, fma3+avx2, sse2; this translation unit: %s\n",
              ssmax::default_arch::name());
  std::printf("dispatched to: %s (SSMax of %td rows x %td)\n", chosen, rows, n);

  // Every architecture the CPU can run must agree with the scalar path to a relative 1e-4
  // (each path is within a few dozen float ulp of the exact weights here).
  const double tolerance = 1e-4;
  bool ok = dispatched_error <= tolerance;
  dispatch_archs::for_each([&](auto arch) {
    using Arch = decltype(arch);
    if (!ssmax::cpu_supports<Arch>()) {
      std::printf("  %-10s not supported by this CPU, skipped\n", Arch::name());
      return;
    }
    std::vector<float> z(x.size());
    ssmax_rows{}(arch, x.data(), z.data(), rows, n, s);
    const double error = worst_relative(z, expected);
    std::printf("  %-10s max relative difference from scalar: %.2e\n", Arch::name(), error);
    ok = ok && error <= tolerance;
  });
  std::printf("%s\n", ok ? "OK" : "FAILED");
  return ok ? 0 : 1;
}
