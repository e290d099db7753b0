// The flattening study (bench/study/) and the attention diagnostics (ssmax/analysis.hpp):
// tables 1 and 3 against their closed forms under tolerances derived from the row
// kernels' error bound (support/row_bound.hpp), the diagnostics against closed forms, the
// needle experiment's plumbing, and the benchmark-JSON reader.

#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <ssmax/analysis.hpp>
#include <ssmax/softmax.hpp>
#include <string>
#include <vector>

#include "study/bench_sweep.hpp"
#include "study/figure1.hpp"
#include "study/grid.hpp"
#include "study/margin.hpp"
#include "study/needle.hpp"
#include "support/architectures.hpp"
#include "support/expect_error.hpp"
#include "support/row_bound.hpp"

namespace ssmax {
namespace {

using testing::expect_rejects;

template <class T>  // float or double
using Study = testing::element_test<T>;
TYPED_TEST_SUITE(Study, testing::element_types);

/// Lanes of the default architecture, which the study's calls use.
template <class T>
constexpr index_t default_width() {
  return ssmax::detail::simd<default_arch, T>::width;
}

/// The row bound (support/row_bound.hpp) for an entry of exact weight w whose own exp
/// argument is 0 (it holds the row maximum), in a row of n entries whose mean |argument|
/// under the exact weights is mean_t.
template <class T>
double top_entry_bound(double w, double mean_t, index_t n) {
  const double eps = std::numeric_limits<T>::epsilon();
  return eps * w * (testing::kExpUlp + 4.0 + testing::sum_ulp(default_width<T>()) + 2.0 * mean_t) +
         2.0 * static_cast<double>(n) * static_cast<double>(std::numeric_limits<T>::min());
}

// --- ssmax/analysis.hpp -----------------------------------------------------------------

TYPED_TEST(Study, DiagnosticsMatchClosedForms) {
  using T = TypeParam;
  const double eps_d = std::numeric_limits<double>::epsilon();
  for (index_t n : {1, 2, 7, 1000, 100000}) {
    // Uniform row: largest 1/n at key 0, entropy log n, n effective keys. The entropy adds
    // n terms of (1/n) log n, each carrying the rounding of w = 1/n in T (relative eps_T/2,
    // which moves w log w by (1 + log n) of it) and of the log and product in double.
    const std::vector<T> uniform(static_cast<size_t>(n), T(1) / static_cast<T>(n));
    const double log_n = std::log(static_cast<double>(n));
    const double eps_t = std::numeric_limits<T>::epsilon();
    const double tol = (0.5 * eps_t * (1.0 + log_n) + 4.0 * eps_d * (1.0 + log_n));
    EXPECT_EQ(largest_weight(uniform.data(), n).key, 0);
    EXPECT_EQ(largest_weight(uniform.data(), n).weight, T(1) / static_cast<T>(n));
    EXPECT_NEAR(entropy(uniform.data(), n), log_n, tol) << n;
    EXPECT_NEAR(effective_keys(uniform.data(), n), static_cast<double>(n),
                static_cast<double>(n) * 2.0 * tol)
        << n;

    // One-hot row: entropy exactly 0, one effective key.
    std::vector<T> one_hot(static_cast<size_t>(n), T(0));
    one_hot[static_cast<size_t>(n - 1)] = T(1);
    EXPECT_EQ(entropy(one_hot.data(), n), 0.0);
    EXPECT_EQ(effective_keys(one_hot.data(), n), 1.0);
    EXPECT_EQ(largest_weight(one_hot.data(), n).key, n - 1);
    EXPECT_EQ(weight_on(one_hot.data(), n, n - 1), T(1));
  }
}

TYPED_TEST(Study, EntropyOfTheFigure1RowMatchesItsClosedForm) {
  // Softmax of [-2, ..., -2, +3]: the last key has w, the n - 1 others (1 - w) / (n - 1)
  // each, so H = -w log w - (1 - w) log((1 - w) / (n - 1)). Each weight is within its row
  // bound b_i = r_i beta_i (beta_i relative), which moves -w_i log w_i by at most
  // b_i (1 + |log w_i|); the sum of these is the tolerance.
  using T = TypeParam;
  for (index_t n : {2, 10, 1000, 1000000}) {
    const auto x = study::figure1_input<T>(n);
    std::vector<T> y(x.size());
    softmax(x.data(), y.data(), n);
    const double w = study::figure1_closed_form(n, 1.0);
    const double u = (1.0 - w) / static_cast<double>(n - 1);
    const double h = -w * std::log(w) - (1.0 - w) * std::log(u);
    const double mean_t = (1.0 - w) * 5.0;
    const double eps = std::numeric_limits<T>::epsilon();
    const double beta_top = top_entry_bound<T>(1.0, mean_t, n);  // relative, t = 0
    const double beta_low = beta_top + eps * 2.0 * 5.0;          // its |t| = 5
    const double tol = w * beta_top * (1.0 + std::abs(std::log(w))) +
                       (1.0 - w) * beta_low * (1.0 + std::abs(std::log(u))) +
                       8.0 * std::numeric_limits<double>::epsilon() * h;
    EXPECT_NEAR(entropy(y.data(), n), h, tol) << "n = " << n;
  }
}

TEST(StudyDiagnostics, BadArgumentsAreNamed) {
  const std::vector<float> w{0.25f, 0.75f};
  const std::vector<float> negative{-0.5f, 1.5f};
  // Through a volatile, so that GCC 12 does not propagate the null into the (unreachable)
  // loop and warn about reading it (-Warray-bounds false positive).
  const float* volatile null_weights = nullptr;
  const float* none = null_weights;
  expect_rejects([&] { largest_weight(none, 2); }, "w");
  expect_rejects([&] { largest_weight(w.data(), 0); }, "n");
  expect_rejects([&] { weight_on(w.data(), 2, 2); }, "key");
  expect_rejects([&] { weight_on(w.data(), 2, -1); }, "key");
  expect_rejects([&] { entropy(none, 2); }, "w");
  expect_rejects([&] { entropy(w.data(), 0); }, "n");
  expect_rejects([&] { entropy(negative.data(), 2); }, "w");
  expect_rejects([&] { effective_keys(w.data(), -1); }, "n");
  const std::vector<float> with_nan{0.5f, std::numeric_limits<float>::quiet_NaN()};
  EXPECT_TRUE(std::isnan(entropy(with_nan.data(), 2)));
  EXPECT_EQ(largest_weight(with_nan.data(), 2).weight, 0.5f);
}

// --- table 1: the paper's Figure 1 --------------------------------------------------------

// The largest output is the last entry (exp argument 0); the others have argument -5m and
// hold 1 - w of the weight, so E|t| = 5 m (1 - w). The closed form itself carries a few ulp
// of double: exp of -5m (m rounded) and the two operations around it.
TYPED_TEST(Study, Table1MatchesTheClosedForm) {
  using T = TypeParam;
  const double s = 0.43, eps_d = std::numeric_limits<double>::epsilon();
  const auto table = study::figure1_table<T>(study::log_grid(2, 1000000, 4), s);
  ASSERT_GE(table.size(), 20u);
  EXPECT_EQ(table.front().n, 2);
  EXPECT_EQ(table.back().n, 1000000);
  for (const auto& row : table) {
    const double m_ssmax = s * std::log(static_cast<double>(row.n));
    EXPECT_NEAR(row.m_ssmax, m_ssmax, 4 * eps_d * m_ssmax);
    for (auto [got, m] : {std::pair{row.softmax, 1.0}, std::pair{row.ssmax, m_ssmax}}) {
      const double w = study::figure1_closed_form(row.n, m);
      const double tol =
          top_entry_bound<T>(w, 5.0 * m * (1.0 - w), row.n) + eps_d * w * (4.0 + 2.0 * 5.0 * m);
      EXPECT_NEAR(got, w, tol) << "n = " << row.n << ", m = " << m;
    }
  }
  // The paper's point: at n = 10^6, Softmax's largest output has faded to 1.5e-4 while
  // SSMax's is within 1e-6 of 1 (both from the closed form, checked above).
  EXPECT_LT(table.back().softmax, 2e-4);
  EXPECT_GT(table.back().ssmax, 1.0 - 1e-6);
}

// --- table 3: the margin for half of the attention ----------------------------------------

// half_attention_margin's contract: the exact D* is within (hi - lo) / 2 + delta / (0.24 m)
// of the result, with hi - lo at most one ulp of T at D* and delta the row bound of the
// lone key's weight at w = 1/2 (argument 0; the other keys have argument -m D* and hold
// half of the weight, so E|t| = m D* / 2).
template <class T, class Policy>
void expect_margin_matches(const Policy& policy, index_t n) {
  const double m = policy.multiplier({n, n - 1, 0});
  const double exact = study::half_attention_margin_closed_form(n, m);
  const double got = study::half_attention_margin<T>(policy, n);
  const double ulp = std::numeric_limits<T>::epsilon() * std::max(exact, 1.0);
  const double delta = top_entry_bound<T>(0.5, 0.5 * m * exact, n);
  const double tol =
      ulp + delta / (0.24 * m) + 4.0 * std::numeric_limits<double>::epsilon() * exact;
  EXPECT_NEAR(got, exact, tol) << "n = " << n << ", m = " << m;
}

TYPED_TEST(Study, Table3MatchesTheClosedForm) {
  using T = TypeParam;
  // Up to 10^5 keys (tens of bisection steps per size): fast on SSE2 and under sanitizers.
  // The study's own table goes to 10^6 (--long: 10^7) with the same function.
  const index_t largest = 100000;
  for (index_t n : study::log_grid(2, largest, 2)) {
    expect_margin_matches<T>(softmax_policy{}, n);
    expect_margin_matches<T>(ssmax_policy(0.43), n);
    expect_margin_matches<T>(ssmax_policy(ssmax_scale_matching_softmax(1024)), n);
  }
  // Softmax's margin grows like log n; SSMax's approaches 1/s (log(n-1)/log n < 1).
  const double at_largest = study::half_attention_margin<T>(ssmax_policy(0.43), largest);
  EXPECT_LT(at_largest, 1.0 / 0.43);
  EXPECT_GT(at_largest, 0.99 / 0.43);
}

TEST(StudyMargin, BadArgumentsAreNamed) {
  expect_rejects([] { study::half_attention_margin<float>(softmax_policy{}, 1); }, "n");
  expect_rejects([] { study::half_attention_margin<float>(ssmax_policy(0.0), 10); }, "policy");
}

// --- grids -------------------------------------------------------------------------------

TEST(StudyGrid, LogGridIsIncreasingAndHitsBothEnds) {
  for (auto [lo, hi, per] :
       {std::tuple{2, 1000000, 10}, std::tuple{1, 1, 3}, std::tuple{5, 9, 50}}) {
    const auto g = study::log_grid(lo, hi, per);
    ASSERT_FALSE(g.empty());
    EXPECT_EQ(g.front(), lo);
    EXPECT_EQ(g.back(), hi);
    for (size_t i = 1; i < g.size(); ++i) EXPECT_LT(g[i - 1], g[i]);
  }
  EXPECT_EQ(study::doubling_grid(64, 512), (std::vector<index_t>{64, 128, 256, 512}));
  expect_rejects([] { study::log_grid(0, 10, 1); }, "lo");
  expect_rejects([] { study::log_grid(1, 10, 0); }, "per_decade");
}

// --- table 2: the needle -----------------------------------------------------------------

// With multiplier 0 (SSMax, s = 0) every visible key weighs 1/n: the needle's mean weight
// over the causal rows at the end (row i of n_q sees n_k - n_q + i + 1 keys) and their
// entropy follow from the mask alone, which checks the operator plumbing and n.
TEST(StudyNeedle, UniformRowsFollowTheCausalMask) {
  study::needle_setup setup;
  setup.dim = 16;
  setup.heads = 2;
  setup.queries = 3;
  study::needle_haystack hay(setup, 300);
  for (index_t n_k : {3, 40, 300})
    for (double depth : {0.0, 0.5, 1.0}) {
      const auto p = hay.measure(ssmax_policy(0.0), n_k, depth);
      double weight = 0, h = 0;
      for (index_t i = 0; i < setup.queries; ++i) {
        const double n = static_cast<double>(n_k - setup.queries + i + 1);
        weight += 1.0 / n / static_cast<double>(setup.queries);
        h += std::log(n) / static_cast<double>(setup.queries);
      }
      EXPECT_EQ(p.needle, static_cast<index_t>(std::llround(depth * (n_k - setup.queries))));
      EXPECT_NEAR(p.weight, weight, 1e-5 * weight) << n_k;
      EXPECT_NEAR(p.entropy, h, 1e-5 * (1.0 + h)) << n_k;
    }
}

// The needle's logit is the margin, the haystack's are N(0, 1): with a margin of 30 and
// 256 haystack keys (each below 30 - log(256) - 10 with overwhelming probability) the
// needle holds all but e^-10 of every row, under Softmax as under SSMax.
TEST(StudyNeedle, ALargeMarginWins) {
  study::needle_setup setup;
  setup.dim = 32;
  setup.margin = 30.0;
  study::needle_haystack hay(setup, 256);
  for (double depth : {0.0, 0.3, 1.0}) {
    const auto a = hay.measure(softmax_policy{}, 256, depth);
    const auto b = hay.measure(ssmax_policy(0.43), 256, depth);
    EXPECT_EQ(a.needle_is_top, 1.0);
    EXPECT_EQ(b.needle_is_top, 1.0);
    EXPECT_GT(a.weight_min, 1.0 - std::exp(-10.0));
    EXPECT_GT(b.weight_min, 1.0 - std::exp(-10.0));
  }
  expect_rejects([&] { hay.measure(softmax_policy{}, 257, 0.5); }, "n_k");
  expect_rejects([&] { hay.measure(softmax_policy{}, 256, 1.5); }, "depth");
}

// --- table 4: reading Google Benchmark's JSON --------------------------------------------

TEST(StudyBenchJson, ReadsTheSweepFromAReport) {
  const std::string report = R"({
    "context": {"date": "2026-01-01", "num_cpus": 2, "caches": [{"type": "Data", "size": 49152}],
                "library_build_type": "release", "note": "a \"quoted\" \\ text\u0021"},
    "benchmarks": [
      {"name": "attention/softmax/float/4096", "run_type": "iteration", "iterations": 10,
       "real_time": 1.5, "cpu_time": 1.4, "time_unit": "ms", "FLOPS": 2.5e9,
       "items_per_second": 1e6},
      {"name": "attention/ssmax/float/4096", "run_type": "iteration", "iterations": 10,
       "real_time": 1600, "cpu_time": 1500, "time_unit": "us", "FLOPS": 2.4e9},
      {"name": "attention/ssmax/float/n_k:65536/threads:2", "run_type": "iteration", "iterations": 3,
       "real_time": 2e7, "cpu_time": 2e7, "time_unit": "ns", "GFLOP/s": 3.0},
      {"name": "attention/ssmax/float/8", "run_type": "iteration", "error_occurred": true,
       "error_message": "CPU lacks this architecture", "iterations": 0, "real_time": 0,
       "cpu_time": 0, "time_unit": "ns"},
      {"name": "unrelated/4096", "run_type": "iteration", "iterations": 1, "real_time": 1,
       "cpu_time": 1, "time_unit": "ns", "flag": false, "empty": null, "list": [1, -2.5e-3]}
    ]})";
  const auto runs = study::read_benchmark_runs(report);
  ASSERT_EQ(runs.size(), 5u);
  EXPECT_EQ(runs[0].real_time_ns, 1.5e6);
  EXPECT_EQ(runs[1].real_time_ns, 1.6e6);
  EXPECT_TRUE(runs[3].error);
  const auto points = study::sweep_points(runs);
  ASSERT_EQ(points.size(), 3u);
  EXPECT_EQ(points[0].policy, "softmax");
  EXPECT_EQ(points[0].series, "attention/float");
  EXPECT_EQ(points[0].n, 4096);
  EXPECT_EQ(points[0].gflops, 2.5);
  EXPECT_EQ(points[0].items_per_second, 1e6);
  EXPECT_EQ(points[1].policy, "ssmax");
  EXPECT_EQ(points[2].n, 65536);
  EXPECT_EQ(points[2].series, "attention/float/threads:2");
  EXPECT_EQ(points[2].gflops, 3.0);
  EXPECT_EQ(study::parse_json(report).find("context")->find("note")->string,
            "a \"quoted\" \\ text!");

  // With repetitions, the median of each benchmark stands for it (named by run_name).
  const std::string repeated = R"({"benchmarks": [
    {"name": "decode/fused/ssmax/n:64/real_time", "run_name": "decode/fused/ssmax/n:64/real_time",
     "run_type": "iteration", "real_time": 5, "cpu_time": 5, "time_unit": "ns"},
    {"name": "decode/fused/ssmax/n:64/real_time_mean", "run_name": "decode/fused/ssmax/n:64/real_time",
     "run_type": "aggregate", "aggregate_name": "mean", "real_time": 6, "cpu_time": 6, "time_unit": "ns"},
    {"name": "decode/fused/ssmax/n:64/real_time_median", "run_name": "decode/fused/ssmax/n:64/real_time",
     "run_type": "aggregate", "aggregate_name": "median", "real_time": 4, "cpu_time": 4, "time_unit": "ns"}
  ]})";
  const auto medians = study::sweep_points(study::read_benchmark_runs(repeated));
  ASSERT_EQ(medians.size(), 1u);
  EXPECT_EQ(medians[0].time_ns, 4.0);
  EXPECT_EQ(medians[0].series, "decode/fused");
  EXPECT_EQ(medians[0].n, 64);

  EXPECT_THROW(study::parse_json("{\"a\": [1, 2"), study::json_error);
  EXPECT_THROW(study::parse_json("{} extra"), study::json_error);
  EXPECT_THROW(study::read_benchmark_runs("{\"context\": {}}"), study::json_error);
}

}  // namespace
}  // namespace ssmax
