#pragma once
// The main() body every bench executable shares: Google Benchmark's flags, then the
// registered benchmarks through the executable's own console reporter.

#include <benchmark/benchmark.h>

#include <utility>

namespace ssmax::bench {

/// Parses the command line, runs the registered benchmarks through a Reporter built from
/// args after the flags are parsed, and returns main()'s exit status (1 for an unknown flag).
template <class Reporter,  // a benchmark::BenchmarkReporter (ConsoleReporter and kin)
          class... Args>   // Reporter's constructor arguments
int run_with(int argc, char** argv, Args&&... args) {
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  Reporter reporter(std::forward<Args>(args)...);
  benchmark::RunSpecifiedBenchmarks(&reporter);
  benchmark::Shutdown();
  return 0;
}

}  // namespace ssmax::bench
