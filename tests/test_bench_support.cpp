// bench/support/machine_peaks.hpp: which rows of the peak and copy runs the of_peak and
// of_copy columns divide by, fed synthetic runs as Google Benchmark reports them with
// --benchmark_repetitions (each repetition's row, then mean, median, stddev and cv); and
// bench/support/ratio_reporter.hpp: which run each run is compared with.

#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "support/machine_peaks.hpp"
#include "support/ratio_reporter.hpp"

namespace {

using bench_run = benchmark::BenchmarkReporter::Run;

/// A reporter that keeps what it is given.
class capture : public benchmark::BenchmarkReporter {
 public:
  bool ReportContext(const Context&) override { return true; }
  void ReportRuns(const std::vector<bench_run>& runs) override {
    rows.insert(rows.end(), runs.begin(), runs.end());
  }
  std::vector<bench_run> rows;
};

bench_run row(const std::string& name, const char* counter, double value,
              const std::string& aggregate) {
  bench_run r;
  r.run_name.function_name = name;
  r.counters[counter] = value;
  r.counters["threads"] = 1.0;
  if (!aggregate.empty()) {
    r.run_type = bench_run::RT_Aggregate;
    r.aggregate_name = aggregate;
  }
  return r;
}

/// The rows of a benchmark run three times: repetitions 1..3, then the aggregates (cv as
/// a fraction, as the library reports it).
std::vector<bench_run> repeated(const std::string& name, const char* counter, double a, double b,
                                double c) {
  return {row(name, counter, a, ""),       row(name, counter, b, ""),
          row(name, counter, c, ""),       row(name, counter, (a + b + c) / 3, "mean"),
          row(name, counter, b, "median"), row(name, counter, 0.5, "stddev"),
          row(name, counter, 0.01, "cv")};
}

TEST(FractionReporter, RepetitionsUseTheMedianNotTheLastAggregate) {
  ssmax::bench::fraction_reporter<capture> reporter;
  reporter.ReportRuns(repeated("peak/fma/float", "GFLOPs", 99.0, 100.0, 101.0));
  EXPECT_EQ(reporter.peak_gflops(), 100.0);
  reporter.ReportRuns(repeated("copy/memcpy/256MiB", "GBs", 19.0, 20.0, 21.0));
  EXPECT_EQ(reporter.copy_gbs(), 20.0);
  reporter.ReportRuns(repeated("read/sum/256MiB", "GBs", 25.0, 26.0, 27.0));
  EXPECT_EQ(reporter.read_gbs(), 26.0);
  std::vector<bench_run> kernel = repeated("attention/fused", "GFLOPs", 54.0, 54.0, 54.0);
  for (bench_run& r : kernel) r.counters["GBs"] = 13.0;
  reporter.ReportRuns(kernel);
  const bench_run& median = reporter.rows[reporter.rows.size() - 3];
  ASSERT_EQ(median.aggregate_name, "median");
  EXPECT_DOUBLE_EQ(median.counters.at("of_peak").value, 0.54);
  EXPECT_DOUBLE_EQ(median.counters.at("of_copy").value, 0.65);
  EXPECT_DOUBLE_EQ(median.counters.at("of_read").value, 0.5);
  EXPECT_EQ(reporter.rows.back().counters.count("of_peak"), 0u);  // none on the cv row
}

TEST(FractionReporter, SingleRunsUseTheirOwnRow) {
  ssmax::bench::fraction_reporter<capture> reporter;
  reporter.ReportRuns({row("peak/fma/float", "GFLOPs", 80.0, "")});
  reporter.ReportRuns({row("attention/fused", "GFLOPs", 40.0, "")});
  EXPECT_DOUBLE_EQ(reporter.rows.back().counters.at("of_peak").value, 0.5);
}

TEST(FractionReporter, TwoThreadPeakIsItsOwnReference) {
  // Google Benchmark names a ->Threads(2)->UseRealTime() run "<name>/real_time/threads:2";
  // its GFLOPs are both threads' together.
  ssmax::bench::fraction_reporter<capture> reporter;
  reporter.ReportRuns({row("peak/fma/float", "GFLOPs", 80.0, "")});
  bench_run two = row("peak/fma/float/real_time/threads:2", "GFLOPs", 120.0, "");
  two.counters["threads"] = 2.0;
  reporter.ReportRuns({two});
  EXPECT_EQ(reporter.peak_gflops(), 80.0);
  EXPECT_EQ(reporter.peak2_gflops(), 120.0);
  EXPECT_DOUBLE_EQ(reporter.rows.back().counters.at("of_peak").value, 0.75);  // 1.5x of 2x
  bench_run kernel = row("prefill/fused/d:128/threads:2/real_time", "GFLOPs", 96.0, "");
  kernel.counters["threads"] = 2.0;
  reporter.ReportRuns({kernel});
  EXPECT_DOUBLE_EQ(reporter.rows.back().counters.at("of_peak").value, 0.6);
  EXPECT_DOUBLE_EQ(reporter.rows.back().counters.at("of_threads_peak").value, 0.8);
  reporter.ReportRuns({row("prefill/fused/d:128/threads:1/real_time", "GFLOPs", 40.0, "")});
  EXPECT_EQ(reporter.rows.back().counters.count("of_threads_peak"), 0u);
}

TEST(RatioReporter, BaselineNames) {
  using ssmax::bench::baseline_name;
  using ssmax::bench::comparison;
  const comparison any{2, "softmax", "ssmax / softmax", false};
  EXPECT_EQ(baseline_name(any, "decode/fused/ssmax/d:128"), "decode/fused/softmax/d:128");
  EXPECT_EQ(baseline_name(any, "decode/fused/softmax/d:128"), "");  // the baseline itself
  EXPECT_EQ(baseline_name(any, "peak/fma"), "");                    // no such field
  // A list with a baseline: only the listed values, against the baseline's run.
  const comparison listed{3, "bf16", "bf16 / 8-bit", true, {"q8_0", "e4m3"}};
  EXPECT_EQ(baseline_name(listed, "decode/fused/softmax/q8_0/kv:2"),
            "decode/fused/softmax/bf16/kv:2");
  EXPECT_EQ(baseline_name(listed, "decode/fused/softmax/f16/kv:2"), "");
  // A list without a baseline: the listed values, against the run that lacks the field.
  const comparison lacking{3, "", "float / 8-bit", true, {"q8_0"}};
  EXPECT_EQ(baseline_name(lacking, "decode/fused/softmax/q8_0/d:128"),
            "decode/fused/softmax/d:128");
  EXPECT_EQ(baseline_name(lacking, "decode/fused/softmax/bf16/d:128"), "");
  EXPECT_EQ(baseline_name({3, "", "none", true}, "decode/fused/softmax/bf16/d:128"), "");
}

}  // namespace
