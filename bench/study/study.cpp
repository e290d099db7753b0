// The flattening study: Softmax attention fades as the context grows, SSMax holds.
// Prints four tables, writes their CSV (and plot-ready CSV) to an output directory, and
// leaves the plotting to bench/study/plots.gp (scripts/study.sh runs everything).
//
//   1  the paper's Figure 1: largest output of Softmax / SSMax on [-2, ..., -2, +3]
//   2  a needle through the multi-head attention operator: weight on it, entropy
//   3  the view of Figure 3: the margin a key needs to receive half of the attention
//   4  the performance sweep, read from a Google Benchmark JSON report (--bench-json)
//
// Every number comes from the library's kernels and operator; the closed forms printed
// beside tables 1 and 3 are checks (tests/test_study.cpp asserts them).
//
//   ssmax_study [--out DIR] [--long] [--bench-json FILE] [--parts 1,2,3,4]
//               [--s 0.144,0.3,0.43] [--margin 5] [--dim 64] [--heads 4] [--max-keys N]

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "study/bench_sweep.hpp"
#include "study/figure1.hpp"
#include "study/grid.hpp"
#include "study/margin.hpp"
#include "study/needle.hpp"

namespace {

using ssmax::index_t;
namespace study = ssmax::study;
using clock_type = std::chrono::steady_clock;

struct options {
  std::string out = "out/study";
  bool long_run = false;
  std::string bench_json;
  std::set<int> parts{1, 2, 3, 4};
  std::vector<double> s{0.0, 0.3, 0.43};  // 0: 1 / log 1024, SSMax equal to Softmax at 1024
  double margin = 5.0;
  index_t dim = 0, heads = 0, max_keys = 0;  // 0: default for the run's length
};

const char* kUsage =
    "usage: ssmax_study [--out DIR] [--long] [--bench-json FILE] [--parts 1,2,3,4]\n"
    "                   [--s LIST] [--margin X] [--dim D] [--heads H] [--max-keys N]\n"
    "  --out DIR         where the CSV files go (default out/study)\n"
    "  --long            the long sweep: n to 10^7 in tables 1 and 3, n_k to 2^20 and\n"
    "                    d = 128 in table 2 (several minutes)\n"
    "  --bench-json FILE read the performance sweep (table 4) from a Google Benchmark\n"
    "                    JSON report; without it table 4 is skipped\n"
    "  --parts LIST      which tables to compute (default 1,2,3,4)\n"
    "  --s LIST          SSMax scales for tables 2 and 3 (default 1/log(1024),0.3,0.43)\n"
    "  --margin X        the needle's logit over N(0,1) haystack logits (default 5)\n"
    "  --dim D, --heads H, --max-keys N   needle sizes (default 64, 4, 131072;\n"
    "                    --long: 128, 2, 1048576)\n";

std::vector<double> parse_list(const std::string& text) {
  std::vector<double> out;
  std::stringstream ss(text);
  std::string item;
  while (std::getline(ss, item, ',')) out.push_back(std::stod(item));
  return out;
}

options parse(int argc, char** argv) {
  options o;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) throw std::invalid_argument(a + " needs a value");
      return argv[++i];
    };
    if (a == "--out")
      o.out = value();
    else if (a == "--long")
      o.long_run = true;
    else if (a == "--bench-json")
      o.bench_json = value();
    else if (a == "--parts") {
      o.parts.clear();
      for (double p : parse_list(value())) o.parts.insert(static_cast<int>(p));
    } else if (a == "--s")
      o.s = parse_list(value());
    else if (a == "--margin")
      o.margin = std::stod(value());
    else if (a == "--dim")
      o.dim = std::stoll(value());
    else if (a == "--heads")
      o.heads = std::stoll(value());
    else if (a == "--max-keys")
      o.max_keys = std::stoll(value());
    else if (a == "--help" || a == "-h") {
      std::cout << kUsage;
      std::exit(0);
    } else {
      throw std::invalid_argument("unknown argument " + a);
    }
  }
  for (double& s : o.s)
    if (s == 0.0) s = ssmax::ssmax_scale_matching_softmax(1024);
  return o;
}

/// Progress on stderr, with the time since the study started. tick() reports only when
/// two seconds have passed since the last line, for loops whose steps are quick.
class progress {
 public:
  void operator()(const std::string& what) const {
    last_ = clock_type::now();
    const double t = std::chrono::duration<double>(last_ - start_).count();
    std::fflush(stdout);  // keep the tables and the progress in order when both are piped
    std::fprintf(stderr, "[study %6.1fs] %s\n", t, what.c_str());
  }
  void tick(const std::string& what) const {
    if (clock_type::now() - last_ > std::chrono::seconds(2)) (*this)(what);
  }

 private:
  clock_type::time_point start_ = clock_type::now();
  mutable clock_type::time_point last_ = start_;
};

std::string fmt(const char* f, double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, f, v);
  return buf;
}

std::string s_label(double s) { return "ssmax_s" + fmt("%.3g", s); }

std::ofstream open_csv(const options& o, const std::string& name) {
  const std::string path = o.out + "/" + name;
  std::ofstream f(path);
  if (!f) throw std::runtime_error("cannot write " + path);
  f.precision(10);
  return f;
}

// ---------------------------------------------------------------------------------------
// Table 1: the paper's Figure 1.
void table1(const options& o, const progress& say) {
  const double s = 0.43;
  const auto ns = study::log_grid(2, o.long_run ? 10000000 : 1000000, o.long_run ? 20 : 10);
  say("table 1: Figure 1 input, " + std::to_string(ns.size()) +
      " sizes up to n = " + std::to_string(ns.back()));
  std::vector<study::figure1_point> rows;
  for (size_t i = 0; i < ns.size(); ++i) {
    rows.push_back(study::figure1_at<float>(ns[i], s));
    say.tick("table 1: n = " + std::to_string(ns[i]) + " (" + std::to_string(i + 1) + "/" +
             std::to_string(ns.size()) + ")");
  }

  std::printf("\nTable 1 - the paper's Figure 1: x = [-2, ..., -2, +3] of size n, s = 0.43.\n");
  std::printf(
      "Largest output, computed by the library in float; closed form 1/(1+(n-1)e^(-5m)).\n");
  std::printf("%10s  %12s %12s  %12s %12s\n", "n", "softmax", "(closed)", "ssmax", "(closed)");
  auto f = open_csv(o, "figure1.csv");
  f << "n,softmax,ssmax,softmax_closed_form,ssmax_closed_form,ssmax_multiplier\n";
  const index_t decade_step = o.long_run ? 20 : 10;
  for (size_t i = 0; i < rows.size(); ++i) {
    const auto& r = rows[i];
    const double cs = study::figure1_closed_form(r.n, 1.0);
    const double cm = study::figure1_closed_form(r.n, r.m_ssmax);
    f << r.n << ',' << r.softmax << ',' << r.ssmax << ',' << cs << ',' << cm << ',' << r.m_ssmax
      << '\n';
    if (i % static_cast<size_t>(decade_step / 2) == 0 || i + 1 == rows.size())
      std::printf("%10td  %12.6g %12.6g  %12.6g %12.6g\n", r.n, r.softmax, cs, r.ssmax, cm);
  }
}

// ---------------------------------------------------------------------------------------
// Table 2: the needle, through the attention operator.
struct needle_series {
  std::string label;
  std::vector<study::needle_point> points;
};

template <class Policy>
void needle_run(study::needle_haystack& hay, const Policy& policy, const std::vector<index_t>& keys,
                const std::vector<double>& depths, needle_series& out) {
  for (index_t n_k : keys)
    for (double depth : depths) out.points.push_back(hay.measure(policy, n_k, depth));
}

void table2(const options& o, const progress& say) {
  study::needle_setup setup;
  setup.dim = o.dim > 0 ? o.dim : (o.long_run ? 128 : 64);
  setup.heads = o.heads > 0 ? o.heads : (o.long_run ? 2 : 4);
  setup.margin = o.margin;
  const index_t max_keys = o.max_keys > 0 ? o.max_keys : (o.long_run ? index_t(1) << 20 : 131072);
  const auto keys = study::doubling_grid(64, max_keys);
  const std::vector<double> depths = o.long_run ? std::vector<double>{0.0, 0.25, 0.5, 0.75, 1.0}
                                                : std::vector<double>{0.1, 0.5, 0.9};

  say("table 2: drawing " + std::to_string(max_keys) + " keys x " + std::to_string(setup.heads) +
      " heads x d = " + std::to_string(setup.dim));
  study::needle_haystack hay(setup, max_keys);

  std::vector<needle_series> series;
  series.push_back({"softmax", {}});
  for (double s : o.s) series.push_back({s_label(s), {}});
  // One n_k at a time across every policy, so that progress shows the length reached.
  for (size_t ki = 0; ki < keys.size(); ++ki) {
    const std::vector<index_t> one{keys[ki]};
    needle_run(hay, ssmax::softmax_policy{}, one, depths, series[0]);
    for (size_t si = 0; si < o.s.size(); ++si)
      needle_run(hay, ssmax::ssmax_policy(o.s[si]), one, depths, series[si + 1]);
    say.tick("table 2: n_k = " + std::to_string(keys[ki]) + " done (" + std::to_string(ki + 1) +
             "/" + std::to_string(keys.size()) + ")");
  }
  say("table 2: done");

  // Long format: everything.
  auto f = open_csv(o, "needle.csv");
  f << "policy,keys,depth,needle,weight,weight_min,weight_max,largest,entropy,effective_keys,"
       "needle_is_top\n";
  for (const auto& se : series)
    for (const auto& p : se.points)
      f << se.label << ',' << p.keys << ',' << p.depth << ',' << p.needle << ',' << p.weight << ','
        << p.weight_min << ',' << p.weight_max << ',' << p.largest << ',' << p.entropy << ','
        << p.effective_keys << ',' << p.needle_is_top << '\n';

  // Plot-ready: per n_k, each policy's needle weight (mean over rows and depths, then the
  // smallest and largest over them), and each policy's mean entropy.
  const size_t nd = depths.size();
  auto w = open_csv(o, "needle_weight.csv");
  auto e = open_csv(o, "needle_entropy.csv");
  w << "keys";
  e << "keys,log(n)";
  for (const auto& se : series) {
    w << ',' << se.label << ',' << se.label << "_min," << se.label << "_max";
    e << ',' << se.label;
  }
  w << '\n';
  e << '\n';

  std::printf("\nTable 2 - a needle through the attention operator (materialised path, float).\n");
  std::printf(
      "H = %td heads x %td causal query rows at the end of n_k keys, d = %td; haystack logits\n"
      "N(0,1), needle logit %.3g; needle at depths",
      setup.heads, setup.queries, setup.dim, setup.margin);
  for (double d : depths) std::printf(" %.2g", d);
  std::printf(" of the context.\nWeight on the needle (mean over rows and depths):\n%9s", "n_k");
  for (const auto& se : series) std::printf(" %14s", se.label.c_str());
  std::printf("\n");
  std::vector<std::string> entropy_lines;
  for (size_t ki = 0; ki < keys.size(); ++ki) {
    w << keys[ki];
    e << keys[ki] << ',' << std::log(static_cast<double>(keys[ki]));
    std::printf("%9td", keys[ki]);
    std::string eline = fmt("%9.0f", static_cast<double>(keys[ki])) +
                        fmt(" %8.3f", std::log(static_cast<double>(keys[ki])));
    for (const auto& se : series) {
      double mean = 0, lo = 1, hi = 0, h = 0;
      for (size_t di = 0; di < nd; ++di) {
        const auto& p = se.points[ki * nd + di];
        mean += p.weight / nd;
        lo = std::min(lo, p.weight_min);
        hi = std::max(hi, p.weight_max);
        h += p.entropy / nd;
      }
      w << ',' << mean << ',' << lo << ',' << hi;
      e << ',' << h;
      std::printf(" %14.4g", mean);
      eline += fmt(" %14.3f", h);
    }
    w << '\n';
    e << '\n';
    std::printf("\n");
    entropy_lines.push_back(eline);
  }
  std::printf("Entropy of the attention rows in nats (mean; log n is the uniform row's):\n%9s %8s",
              "n_k", "log n");
  for (const auto& se : series) std::printf(" %14s", se.label.c_str());
  std::printf("\n");
  for (const auto& l : entropy_lines) std::printf("%s\n", l.c_str());
}

// ---------------------------------------------------------------------------------------
// Table 3: the margin for half of the attention.
void table3(const options& o, const progress& say) {
  const auto ns = study::log_grid(2, o.long_run ? 10000000 : 1000000, o.long_run ? 10 : 5);
  say("table 3: bisection for the half-attention margin, " + std::to_string(ns.size()) +
      " sizes x " + std::to_string(o.s.size() + 1) + " policies");
  auto f = open_csv(o, "margin.csv");
  f << "n,softmax,softmax_closed_form";
  for (double s : o.s) f << ',' << s_label(s) << ',' << s_label(s) << "_closed_form";
  f << '\n';
  std::printf(
      "\nTable 3 - the view of Figure 3: the margin D one key needs over n - 1 equal keys\n");
  std::printf(
      "to receive half of the attention (bisection on rows the library computes, float).\n");
  std::printf(
      "Closed form log(n-1)/m: Softmax grows like log n, SSMax tends to 1/s.\n%10s %10s %10s", "n",
      "softmax", "(closed)");
  for (double s : o.s) std::printf(" %14s %9s", s_label(s).c_str(), "(closed)");
  std::printf("\n");
  for (size_t i = 0; i < ns.size(); ++i) {
    const index_t n = ns[i];
    const double d0 = study::half_attention_margin<float>(ssmax::softmax_policy{}, n);
    const double c0 = study::half_attention_margin_closed_form(n, 1.0);
    f << n << ',' << d0 << ',' << c0;
    std::string line =
        fmt("%10.0f", static_cast<double>(n)) + fmt(" %10.4f", d0) + fmt(" %10.4f", c0);
    for (double s : o.s) {
      const ssmax::ssmax_policy policy(s);
      const double d = study::half_attention_margin<float>(policy, n);
      const double c =
          study::half_attention_margin_closed_form(n, policy.multiplier({n, n - 1, 0}));
      f << ',' << d << ',' << c;
      line += fmt(" %14.4f", d) + fmt(" %9.4f", c);
    }
    f << '\n';
    if (i % 2 == 0 || i + 1 == ns.size()) std::printf("%s\n", line.c_str());
    say.tick("table 3: n = " + std::to_string(n) + " (" + std::to_string(i + 1) + "/" +
             std::to_string(ns.size()) + ")");
  }
  std::printf("%10s %10s %10s", "n -> inf", "inf", "inf");
  for (double s : o.s) std::printf(" %14s %9.4f", "1/s", 1.0 / s);
  std::printf("\n");
  say("table 3: done");
}

// ---------------------------------------------------------------------------------------
// Table 4: the performance sweep from the benchmark's JSON.
void table4(const options& o, const progress& say) {
  if (o.bench_json.empty()) {
    say("table 4: skipped (no --bench-json)");
    return;
  }
  std::ifstream in(o.bench_json);
  if (!in) throw std::runtime_error("cannot read " + o.bench_json);
  std::stringstream text;
  text << in.rdbuf();
  const auto points = study::sweep_points(study::read_benchmark_runs(text.str()));
  say("table 4: " + std::to_string(points.size()) + " runs read from " + o.bench_json);
  if (points.empty()) return;

  // Columns: one per (series, policy), in first-seen order; rows: n.
  std::vector<std::string> columns;
  std::map<std::string, std::map<long long, study::sweep_point>> by_column;
  std::set<long long> ns;
  bool any_flops = false;
  for (const auto& p : points) {
    const std::string c = p.series + "/" + p.policy;
    if (!by_column.count(c)) columns.push_back(c);
    by_column[c][p.n] = p;
    ns.insert(p.n);
    any_flops = any_flops || p.gflops > 0;
  }
  const char* rate_name = any_flops ? "GFLOP/s" : "G items/s";
  auto rate = [&](const study::sweep_point& p) {
    return any_flops ? p.gflops : p.items_per_second / 1e9;
  };

  auto f = open_csv(o, "bench.csv");
  f << "series,policy,n,time_ns," << (any_flops ? "gflops" : "gitems_per_s") << '\n';
  for (const auto& p : points)
    f << p.series << ',' << p.policy << ',' << p.n << ',' << p.time_ns << ',' << rate(p) << '\n';
  // Plot labels: the column names without the fields every column shares (those go to
  // the plot's subtitle, bench_title.txt).
  std::vector<std::vector<std::string>> split;
  for (const auto& c : columns) split.push_back(study::detail::split_fields(c));
  std::vector<std::string> shared;
  for (const auto& field : split.front())
    if (std::all_of(split.begin(), split.end(), [&](const auto& fs) {
          return std::find(fs.begin(), fs.end(), field) != fs.end();
        }))
      shared.push_back(field);
  std::vector<std::string> labels;
  for (const auto& fs : split) {
    std::string label;
    for (const auto& field : fs)
      if (columns.size() == 1 || std::find(shared.begin(), shared.end(), field) == shared.end())
        label += (label.empty() ? "" : "/") + field;
    labels.push_back(label);
  }
  std::string subtitle;
  for (const auto& field : shared) subtitle += (subtitle.empty() ? "" : ", ") + field;
  auto fm = open_csv(o, "bench_title.txt");
  fm << subtitle << '\n' << rate_name << '\n';

  auto ft = open_csv(o, "bench_time.csv");
  auto fr = open_csv(o, "bench_rate.csv");
  ft << "n";
  fr << "n";
  for (const auto& l : labels) {
    ft << ',' << l;
    fr << ',' << l;
  }
  ft << '\n';
  fr << '\n';

  std::printf("\nTable 4 - performance across context lengths (%s), from %s.\n", rate_name,
              o.bench_json.c_str());
  std::printf("Time per call in microseconds, then %s; ssmax/softmax is the time ratio.\n",
              rate_name);
  for (const auto& c : columns) std::printf("  [%zu] %s\n", &c - columns.data(), c.c_str());
  std::printf("%10s", "n");
  for (size_t i = 0; i < columns.size(); ++i)
    std::printf(" %11s %9s", ("[" + std::to_string(i) + "] us").c_str(), rate_name);
  std::printf("\n");
  for (long long n : ns) {
    ft << n;
    fr << n;
    std::printf("%10lld", n);
    for (const auto& c : columns) {
      const auto it = by_column[c].find(n);
      if (it == by_column[c].end()) {
        ft << ",NaN";
        fr << ",NaN";
        std::printf(" %11s %9s", "-", "-");
        continue;
      }
      ft << ',' << it->second.time_ns / 1e3;
      fr << ',' << rate(it->second);
      std::printf(" %11.4g %9.4g", it->second.time_ns / 1e3, rate(it->second));
    }
    ft << '\n';
    fr << '\n';
    std::printf("\n");
  }
  // SSMax / Softmax time ratio for each series that has both.
  std::set<std::string> series;
  for (const auto& p : points) series.insert(p.series);
  for (const auto& s : series) {
    const auto sm = by_column.find(s + "/softmax"), ss = by_column.find(s + "/ssmax");
    if (sm == by_column.end() || ss == by_column.end()) continue;
    std::printf("ssmax/softmax time, %s:", s.c_str());
    for (const auto& [n, p] : ss->second)
      if (const auto it = sm->second.find(n); it != sm->second.end())
        std::printf(" %lld:%.3f", n, p.time_ns / it->second.time_ns);
    std::printf("\n");
  }
}

}  // namespace

int main(int argc, char** argv) {
  try {
    const options o = parse(argc, argv);
    std::filesystem::create_directories(o.out);
    const progress say;
    if (o.parts.count(1)) table1(o, say);
    if (o.parts.count(2)) table2(o, say);
    if (o.parts.count(3)) table3(o, say);
    if (o.parts.count(4)) table4(o, say);
    std::fflush(stdout);
    say("CSV written to " + o.out + "/");
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "ssmax_study: %s\n%s", e.what(), kUsage);
    return 1;
  }
}
