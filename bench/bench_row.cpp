// Row kernels across context lengths: softmax and SSMax, float and double, every
// architecture this binary targets against the scalar std::exp path, in one run.
// After the usual table it prints "x scalar" (speedup of each SIMD path over scalar at the
// same n) and "ssmax / softmax" (time ratio at the same architecture and n).
//
//   build/bench/bench/bench_row [--benchmark_filter=float/.*/4096]

#include <benchmark/benchmark.h>

#include <cmath>
#include <random>
#include <ssmax/softmax.hpp>
#include <string>
#include <tuple>
#include <vector>

#include "support/ratio_reporter.hpp"

namespace {

using ssmax::index_t;

template <class T>
std::vector<T> logits(index_t n) {
  std::mt19937 rng(42);
  std::normal_distribution<double> d(0.0, 3.0);
  std::vector<T> x(static_cast<size_t>(n));
  for (auto& v : x) v = static_cast<T>(d(rng));
  return x;
}

template <class Arch, class T, bool Scalable>
void row_benchmark(benchmark::State& state) {
  if (!ssmax::cpu_supports<Arch>()) return state.SkipWithError("CPU lacks this architecture");
  const index_t n = state.range(0);
  const auto x = logits<T>(n);
  std::vector<T> y(x.size());
  for (auto _ : state) {
    if constexpr (Scalable)
      ssmax::scalable_softmax<Arch>(x.data(), y.data(), n, 0.43);
    else
      ssmax::softmax<Arch>(x.data(), y.data(), n);
    benchmark::DoNotOptimize(y.data());
    benchmark::ClobberMemory();
  }
  state.SetItemsProcessed(state.iterations() * n);
  state.SetBytesProcessed(state.iterations() * n * 2 * static_cast<index_t>(sizeof(T)));
}

template <class Arch, class T>
void register_arch() {
  if constexpr (Arch::supported()) {
    const std::string type = std::is_same<T, float>::value ? "float" : "double";
    const std::string tail = type + "/" + Arch::name();
    auto apply = [](benchmark::internal::Benchmark* b) {
      b->RangeMultiplier(4)->Range(64, 1 << 20);
      b->Arg(1000000);
    };
    apply(benchmark::RegisterBenchmark(("row/softmax/" + tail).c_str(),
                                       row_benchmark<Arch, T, false>));
    apply(
        benchmark::RegisterBenchmark(("row/ssmax/" + tail).c_str(), row_benchmark<Arch, T, true>));
  }
}

template <class T, class... Archs>
void register_all(std::tuple<Archs...>*) {
  (register_arch<Archs, T>(), ...);
}

}  // namespace

int main(int argc, char** argv) {
  using archs = std::tuple<ssmax::scalar_arch, xsimd::sse2, xsimd::fma3<xsimd::avx2>,
                           xsimd::avx512f, xsimd::neon64>;
  register_all<float>(static_cast<archs*>(nullptr));
  register_all<double>(static_cast<archs*>(nullptr));
  return ssmax::bench::run_with_ratios(
      argc, argv, {{3, "scalar", "x scalar", true}, {1, "softmax", "ssmax / softmax", false}});
}
