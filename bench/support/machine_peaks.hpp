#pragma once
// The machine's own limits, measured in the same run as the kernels so that each kernel
// also reads as a fraction of them:
//   peak/fma/float       the 1-thread FMA peak: a register-blocked xsimd FMA loop (GFLOPs)
//   peak/fma/float/threads:2  the same loop on 2 threads at once (GFLOPs of both): what
//                        the machine's cores give together (its of_peak: 1.0 is 2x)
//   copy/memcpy/256MiB   a plain memory copy's bandwidth (GBs: bytes read + written per
//                        second, STREAM's convention)
//   read/sum/256MiB      one thread's read bandwidth: a 256 MiB array summed in vectors
//                        (GBs: bytes read per second), what a decode that only reads K
//                        and V can reach
//   peak/dpbf16/bf16     with AVX512-BF16 only: the 1-thread bf16 dot-product peak, a
//                        register-blocked vdpbf16ps loop, 2 flops per bf16 product (GFLOPs)
// and a reporter that adds, to every run with those counters,
//   of_peak       GFLOPs / (threads x the 1-thread FMA peak)
//   of_threads_peak  runs with threads = 2: GFLOPs / the 2-thread FMA peak (how far a
//                 2-thread kernel is from what the two cores give at all)
//   of_bf16_peak  runs with a "bf16" name field: GFLOPs / (threads x the bf16 peak)
//   of_copy       GBs / the copy bandwidth
//   of_read       GBs / the read bandwidth
// (a column appears only when its limit was measured earlier in the same run).

#include <benchmark/benchmark.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>
#include <xsimd/xsimd.hpp>

#ifdef __AVX512BF16__
#include <immintrin.h>
#endif

namespace ssmax::bench {

/// The 1-thread FMA peak of the widest vector this binary is compiled for, float.
inline void fma_peak(benchmark::State& state) {
  using B = xsimd::batch<float>;  // the widest vector this binary is compiled for
  // Independent chains: at least FMA latency x FMA units (4 x 2 on current x86 cores), and
  // few enough that they, x and y stay in registers (32 vector registers with AVX-512,
  // else 16: 16 chains spilled to the stack on AVX2 and measured 55 GFLOP/s, 12 chains 97).
  constexpr int kAcc = sizeof(B) >= 64 ? 16 : 12;
  B acc[kAcc];
  for (int a = 0; a < kAcc; ++a) acc[a] = B(1.0f + 1e-3f * static_cast<float>(a));
  const B x(0.999999f), y(1e-7f);
  const std::int64_t iters = 1 << 20;
  for (auto _ : state) {
    for (std::int64_t i = 0; i < iters; ++i)
      for (int a = 0; a < kAcc; ++a) acc[a] = xsimd::fma(acc[a], x, y);
    for (int a = 0; a < kAcc; ++a) benchmark::DoNotOptimize(acc[a]);
  }
  const double flops = 2.0 * B::size * kAcc * static_cast<double>(iters);
  // Counters are summed over the threads of a ->Threads(n) run: GFLOPs of all of them. Each
  // thread counts its own iterations (kIsIterationInvariant would multiply every thread's
  // count by the iterations of all threads: 2x the 2-thread peak).
  state.counters["GFLOPs"] = benchmark::Counter(
      flops * 1e-9 * static_cast<double>(state.iterations()), benchmark::Counter::kIsRate);
  state.counters["threads"] = state.thread_index() == 0 ? state.threads() : 0;
}

#ifdef __AVX512BF16__
/// The 1-thread bf16 dot-product peak: independent vdpbf16ps chains (latency x units, as
/// fma_peak), each instruction 16 lanes x 2 products x 2 flops.
inline void bf16_dot_peak(benchmark::State& state) {
  constexpr int kAcc = 16;
  __m512 acc[kAcc];
  for (int a = 0; a < kAcc; ++a) acc[a] = _mm512_set1_ps(1e-3f * static_cast<float>(a));
  const __m512bh x = _mm512_cvtne2ps_pbh(_mm512_set1_ps(0.5f), _mm512_set1_ps(0.25f));
  const __m512bh y = _mm512_cvtne2ps_pbh(_mm512_set1_ps(1e-7f), _mm512_set1_ps(-1e-7f));
  const std::int64_t iters = 1 << 20;
  for (auto _ : state) {
    for (std::int64_t i = 0; i < iters; ++i)
      for (int a = 0; a < kAcc; ++a) acc[a] = _mm512_dpbf16_ps(acc[a], x, y);
    for (int a = 0; a < kAcc; ++a) benchmark::DoNotOptimize(acc[a]);
  }
  const double flops = 2.0 * 32 * kAcc * static_cast<double>(iters);
  state.counters["GFLOPs"] =
      benchmark::Counter(flops * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
}
#endif

/// Registers bf16_dot_peak as "peak/dpbf16/bf16" where the binary targets AVX512-BF16
/// (after register_fma_peak, before the runs it is a fraction of); elsewhere nothing.
inline void register_bf16_peak() {
#ifdef __AVX512BF16__
  benchmark::RegisterBenchmark("peak/dpbf16/bf16", bf16_dot_peak)->Unit(benchmark::kMillisecond);
#endif
}

/// True when one of name's '/'-separated fields is exactly field.
inline bool has_field(const std::string& name, const std::string& field) {
  return ("/" + name + "/").find("/" + field + "/") != std::string::npos;
}

/// The bandwidth of a 256 MiB memcpy, counting bytes read and written.
inline void memory_copy(benchmark::State& state) {
  const std::size_t bytes = std::size_t(256) << 20;
  std::vector<char> src(bytes, 1), dst(bytes, 0);
  for (auto _ : state) {
    std::memcpy(dst.data(), src.data(), bytes);
    benchmark::ClobberMemory();
  }
  state.counters["GBs"] =
      benchmark::Counter(2.0 * bytes * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
}

/// The read bandwidth of one thread: a 256 MiB array of 32-bit integers summed into four
/// vector accumulators (independent loads in flight), counting bytes read.
inline void memory_read(benchmark::State& state) {
  using B = xsimd::batch<std::int32_t>;  // the widest vector this binary is compiled for
  const std::size_t bytes = std::size_t(256) << 20, count = bytes / sizeof(std::int32_t);
  std::vector<std::int32_t> src(count, 1);
  constexpr std::size_t W = B::size;
  for (auto _ : state) {
    B s0(0), s1(0), s2(0), s3(0);
    for (std::size_t i = 0; i + 4 * W <= count; i += 4 * W) {
      s0 += B::load_unaligned(&src[i]);
      s1 += B::load_unaligned(&src[i + W]);
      s2 += B::load_unaligned(&src[i + 2 * W]);
      s3 += B::load_unaligned(&src[i + 3 * W]);
    }
    benchmark::DoNotOptimize((s0 + s1) + (s2 + s3));
  }
  state.counters["GBs"] =
      benchmark::Counter(bytes * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
}

/// Registers fma_peak as "peak/fma/float" and, on 2 threads at once (wall-clock time),
/// "peak/fma/float/threads:2"; register them first, so that they run before the runs they
/// are a fraction of.
inline void register_fma_peak() {
  benchmark::RegisterBenchmark("peak/fma/float", fma_peak)->Unit(benchmark::kMillisecond);
  benchmark::RegisterBenchmark("peak/fma/float", fma_peak)
      ->Unit(benchmark::kMillisecond)
      ->Threads(2)
      ->UseRealTime();
}

/// The thread count a name's "threads:<n>" field gives (Google Benchmark's ->Threads
/// suffix and the runs' own), 1 without one.
inline int name_threads(const std::string& name) {
  const auto at = ("/" + name).rfind("/threads:");
  return at == std::string::npos ? 1 : std::atoi(name.c_str() + at + 8);
}

/// Registers memory_copy as "copy/memcpy/256MiB" (after register_fma_peak, before the rest).
inline void register_memory_copy() {
  benchmark::RegisterBenchmark("copy/memcpy/256MiB", memory_copy)->Unit(benchmark::kMillisecond);
}

/// Registers memory_read as "read/sum/256MiB" (after register_fma_peak, before the rest).
inline void register_memory_read() {
  benchmark::RegisterBenchmark("read/sum/256MiB", memory_read)->Unit(benchmark::kMillisecond);
}

/// True when a row of the peak or copy run gives the reference value: each repetition's
/// own row, then (with --benchmark_repetitions) the median aggregate, which arrives after
/// them and so is the one later benchmarks divide by. Never the mean, stddev or cv rows
/// (the cv row, last of the aggregates, once made of_peak read 5.4k).
inline bool is_reference_row(const benchmark::BenchmarkReporter::Run& r) {
  return r.run_type == benchmark::BenchmarkReporter::Run::RT_Iteration ||
         r.aggregate_name == "median";
}

/// True when a row gets the of_peak and of_copy columns: not a coefficient-of-variation
/// aggregate (a ratio of ratios, not a rate).
inline bool gets_fractions(const benchmark::BenchmarkReporter::Run& r) {
  return r.run_type == benchmark::BenchmarkReporter::Run::RT_Iteration || r.aggregate_name != "cv";
}

/// Base, plus the of_peak and of_copy columns computed from the peak and copy runs of the
/// same run (counters arrive finished: rates are already per second).
template <class Base>  // benchmark::ConsoleReporter, or a reporter derived from it
class fraction_reporter : public Base {
 public:
  using Base::Base;
  using Run = benchmark::BenchmarkReporter::Run;

  void ReportRuns(const std::vector<Run>& runs) override {
    std::vector<Run> copy = runs;
    for (auto& r : copy) {
      const std::string name = r.benchmark_name();
      auto gf = r.counters.find("GFLOPs");
      auto gb = r.counters.find("GBs");
      if (is_reference_row(r)) {
        if (name.rfind("peak/fma/", 0) == 0 && gf != r.counters.end())
          (name_threads(name) == 2 ? peak2_gflops_ : peak_gflops_) = gf->second.value;
        if (name.rfind("peak/dpbf16/", 0) == 0 && gf != r.counters.end())
          bf16_gflops_ = gf->second.value;
        if (name.rfind("copy/", 0) == 0 && gb != r.counters.end()) copy_gbs_ = gb->second.value;
        if (name.rfind("read/", 0) == 0 && gb != r.counters.end()) read_gbs_ = gb->second.value;
      }
      if (!gets_fractions(r)) continue;
      auto th = r.counters.find("threads");
      if (gf != r.counters.end() && th != r.counters.end() && peak_gflops_ > 0) {
        r.counters["of_peak"] = gf->second.value / (peak_gflops_ * th->second.value);
      }
      if (gf != r.counters.end() && th != r.counters.end() && th->second.value == 2 &&
          peak2_gflops_ > 0 && name.rfind("peak/", 0) != 0) {
        r.counters["of_threads_peak"] = gf->second.value / peak2_gflops_;
      }
      if (gf != r.counters.end() && th != r.counters.end() && bf16_gflops_ > 0 &&
          has_field(name, "bf16") && name.rfind("peak/", 0) != 0) {
        r.counters["of_bf16_peak"] = gf->second.value / (bf16_gflops_ * th->second.value);
      }
      if (gb != r.counters.end() && name.rfind("copy/", 0) != 0 && copy_gbs_ > 0) {
        r.counters["of_copy"] = gb->second.value / copy_gbs_;
      }
      if (gb != r.counters.end() && name.rfind("read/", 0) != 0 && read_gbs_ > 0) {
        r.counters["of_read"] = gb->second.value / read_gbs_;
      }
    }
    Base::ReportRuns(copy);
  }

  double peak_gflops() const { return peak_gflops_; }    ///< the peak in use (for tests)
  double peak2_gflops() const { return peak2_gflops_; }  ///< the 2-thread peak (for tests)
  double copy_gbs() const { return copy_gbs_; }          ///< the copy rate in use (for tests)
  double read_gbs() const { return read_gbs_; }          ///< the read rate in use (for tests)
  double bf16_gflops() const { return bf16_gflops_; }    ///< the bf16 peak in use (for tests)

 private:
  double peak_gflops_ = 0.0;   // 1-thread FMA peak, from the peak run
  double peak2_gflops_ = 0.0;  // 2-thread FMA peak (both threads' GFLOPs together)
  double copy_gbs_ = 0.0;      // copy bandwidth (read + write), from the copy run
  double read_gbs_ = 0.0;      // one thread's read bandwidth, from the read run
  double bf16_gflops_ = 0.0;   // 1-thread bf16 dot-product peak, from its peak run
};

}  // namespace ssmax::bench
