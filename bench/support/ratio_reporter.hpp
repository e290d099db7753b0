#pragma once
// A console reporter that, after the usual table, prints ratios between benchmarks of the
// same run: "this architecture against scalar", "SSMax against Softmax". Speed targets are
// stated as such ratios because absolute times on a shared 2-core machine are noise.
//
// Benchmark names are '/'-separated fields, e.g. "row/ssmax/float/avx512f/4096". A
// comparison names a field and its baseline value; each run is divided by the run whose
// name differs only in that field, which holds the baseline, or (a comparison with an empty
// baseline and a list of values) whose name lacks the field: "/bf16" runs against the float
// run of the same shape. A list of values with a baseline limits the runs compared to those
// values: "/q8_0" and "/e4m3" runs against the "/bf16" run, not "/f16" against it.

#include <benchmark/benchmark.h>

#include <algorithm>
#include <cstddef>
#include <cstdio>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "run.hpp"

namespace ssmax::bench {

/// One ratio column: runs are compared with the run whose field `field` is `baseline`, or,
/// when `baseline` is empty, with the run whose name lacks that field; the runs compared are
/// those whose field is one of `values` (with a baseline and no values: every other value).
struct comparison {
  std::size_t field;     ///< index of the '/'-separated name field that varies
  std::string baseline;  ///< value of that field in the baseline run; empty: no such field
  std::string label;     ///< column heading, e.g. "x scalar"
  bool speedup;          ///< true: baseline time / time (higher is faster); false: time / baseline
  std::vector<std::string> values = {};  ///< the field values compared (see above)
};

inline std::vector<std::string> split_name(const std::string& name) {
  std::vector<std::string> fields;
  std::size_t start = 0;
  for (std::size_t i = 0; i <= name.size(); ++i)
    if (i == name.size() || name[i] == '/') {
      fields.push_back(name.substr(start, i - start));
      start = i + 1;
    }
  return fields;
}

inline std::string join_name(const std::vector<std::string>& fields) {
  std::string out;
  for (std::size_t i = 0; i < fields.size(); ++i) out += (i ? "/" : "") + fields[i];
  return out;
}

/// The name of the run that the run `name` is compared with under c, or "" when c does not
/// compare it (no such field, the baseline's own value, or a value not in c.values).
inline std::string baseline_name(const comparison& c, const std::string& name) {
  auto fields = split_name(name);
  if (c.field >= fields.size() || fields[c.field] == c.baseline) return "";
  const bool listed =
      std::find(c.values.begin(), c.values.end(), fields[c.field]) != c.values.end();
  if (!listed && (c.baseline.empty() || !c.values.empty())) return "";
  if (c.baseline.empty())
    fields.erase(fields.begin() + static_cast<std::ptrdiff_t>(c.field));
  else
    fields[c.field] = c.baseline;
  return join_name(fields);
}

class ratio_reporter : public benchmark::ConsoleReporter {
 public:
  explicit ratio_reporter(std::vector<comparison> comparisons)
      : comparisons_(std::move(comparisons)) {}

  void ReportRuns(const std::vector<Run>& runs) override {
    ConsoleReporter::ReportRuns(runs);
    for (const auto& run : runs) {
      if (run.error_occurred) continue;
      const std::string name = run.run_name.str();
      if (run.run_type == Run::RT_Iteration) {
        if (times_.count(name) == 0) order_.push_back(name);
        times_[name] = run.GetAdjustedRealTime();
      } else if (run.aggregate_name == "median") {  // with repetitions: the median, not the last
        if (times_.count(name) == 0) order_.push_back(name);  // aggregates only: no iterations
        times_[name] = run.GetAdjustedRealTime();
      }
    }
  }

  void Finalize() override {
    ConsoleReporter::Finalize();
    for (const auto& c : comparisons_) {
      std::printf("\n%-48s %12s\n", "benchmark", c.label.c_str());
      for (const auto& name : order_) {
        const auto base = times_.find(baseline_name(c, name));
        if (base == times_.end()) continue;
        const double t = times_[name];
        std::printf("%-48s %12.3f\n", name.c_str(),
                    c.speedup ? base->second / t : t / base->second);
      }
    }
    std::fflush(stdout);
  }

 private:
  std::vector<comparison> comparisons_;
  std::map<std::string, double> times_;
  std::vector<std::string> order_;
};

/// main() body shared by the bench executables: the ratio tables after the console one.
inline int run_with_ratios(int argc, char** argv, std::vector<comparison> comparisons) {
  return run_with<ratio_reporter>(argc, argv, std::move(comparisons));
}

}  // namespace ssmax::bench
