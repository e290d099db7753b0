#pragma once
// Study part 4: the performance sweep across context lengths, read from Google Benchmark's
// JSON report. Each benchmark name is split at '/': the field "softmax" or "ssmax" is the
// policy, the context length n is the field "n:<number>" ("n_k:" and "keys:" also count),
// else the last field that is a plain number, and the remaining fields name the series
// (e.g. "prefill/fused/d:64/threads:1" or "float/avx512f").

#include <algorithm>
#include <cctype>
#include <map>
#include <string>
#include <vector>

#include "bench_json.hpp"

namespace ssmax::study {

/// One benchmark run placed in the sweep.
struct sweep_point {
  std::string series;  ///< name without the policy and n fields, e.g. "attention/fused/float"
  std::string policy;  ///< "softmax" or "ssmax"
  long long n = 0;     ///< context length
  double time_ns = 0;  ///< real time per iteration
  double gflops = 0;   ///< GFLOP/s from a FLOP counter, 0 when the benchmark reports none
  double items_per_second = 0;  ///< items_per_second counter, 0 when absent
};

namespace detail {

inline std::vector<std::string> split_fields(const std::string& name) {
  std::vector<std::string> out;
  std::string field;
  for (char c : name) {
    if (c == '/') {
      out.push_back(field);
      field.clear();
    } else {
      field += c;
    }
  }
  out.push_back(field);
  return out;
}

/// The number a field holds ("4096" or "n_k:4096"), or -1.
inline long long field_number(const std::string& f) {
  const size_t colon = f.rfind(':');
  const std::string digits = colon == std::string::npos ? f : f.substr(colon + 1);
  if (digits.empty() || !std::all_of(digits.begin(), digits.end(), [](char c) {
        return std::isdigit(static_cast<unsigned char>(c));
      }))
    return -1;
  return std::stoll(digits);
}

}  // namespace detail

/// The Softmax / SSMax runs of a report, in report order. With repetitions, only each
/// benchmark's median (else its mean) is kept; runs with errors and names without a policy
/// field or a length are left out.
inline std::vector<sweep_point> sweep_points(const std::vector<benchmark_run>& runs) {
  std::string aggregate;  // the aggregate to keep: "median", else "mean", else none
  for (const char* wanted : {"median", "mean"})
    if (aggregate.empty() && std::any_of(runs.begin(), runs.end(), [&](const benchmark_run& r) {
          return r.run_type == "aggregate" && r.aggregate == wanted;
        }))
      aggregate = wanted;
  std::vector<sweep_point> out;
  for (const benchmark_run& r : runs) {
    if (r.error) continue;
    if (aggregate.empty() ? r.run_type != "iteration" : r.aggregate != aggregate) continue;
    std::vector<std::string> fields = detail::split_fields(r.run_name);
    if (!fields.empty() && (fields.back() == "real_time" || fields.back() == "manual_time"))
      fields.pop_back();  // how the time was measured, not part of the series
    sweep_point p;
    // n: a field "n:<number>" (or "n_k:" / "keys:"), else the last plain number.
    int n_at = -1;
    for (int i = 0; i < static_cast<int>(fields.size()) && n_at < 0; ++i)
      for (const char* key : {"n:", "n_k:", "keys:"})
        if (fields[i].rfind(key, 0) == 0 && detail::field_number(fields[i]) >= 0) n_at = i;
    for (int i = static_cast<int>(fields.size()) - 1; i >= 0 && n_at < 0; --i)
      if (detail::field_number(fields[i]) >= 0 && fields[i].find(':') == std::string::npos)
        n_at = i;
    int policy_at = -1;
    for (int i = 0; i < static_cast<int>(fields.size()); ++i)
      if (fields[i] == "softmax" || fields[i] == "ssmax") policy_at = i;
    if (n_at < 0 || policy_at < 0) continue;
    p.n = detail::field_number(fields[n_at]);
    p.policy = fields[policy_at];
    for (int i = 0; i < static_cast<int>(fields.size()); ++i)
      if (i != n_at && i != policy_at) p.series += (p.series.empty() ? "" : "/") + fields[i];
    p.time_ns = r.real_time_ns;
    for (const auto& [key, value] : r.counters) {
      std::string k = key;
      std::transform(k.begin(), k.end(), k.begin(),
                     [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
      if (k.find("gflop") != std::string::npos)
        p.gflops = value;
      else if (k.find("flop") != std::string::npos)
        p.gflops = value / 1e9;
    }
    if (const auto it = r.counters.find("items_per_second"); it != r.counters.end())
      p.items_per_second = it->second;
    out.push_back(p);
  }
  return out;
}

}  // namespace ssmax::study
