// Backward benchmarks: the attention backward (fused and materialised, Softmax and SSMax,
// causal prefill, 8 heads, float) next to the forward of the same shape, and the row
// backward next to the row forward, in one run; plus the machine's 1-thread FMA peak
// (measured first, as bench_attention does; support/machine_peaks.hpp) so each attention
// run also reads as a fraction of it.
//
// Names: "<pass>/<impl>/<policy>/d:<d>/n:<n>/threads:<t>" with pass forward or backward;
// "row/<pass>/<variant>/float/n:<n>" for rows.
// Counters:
//   GFLOPs    forward 4 n_q n_k d per head, backward 10 n_q n_k d per head (scores again,
//             dP = dout V^T, dq, dk, dv: five n_q x n_k x d products), causal halves both
//   of_peak   GFLOPs / (threads x the FMA peak)
//   extra_MB  workspace beyond inputs and outputs
//   GBs       rows: bytes read and written per second
// After the table, "backward / forward" gives each backward's time over its forward's.
//
//   bench_attention_backward --benchmark_filter='peak|n:2048/' --benchmark_min_time=1

#include <benchmark/benchmark.h>

#include <cmath>
#include <random>
#include <ssmax/attention.hpp>
#include <ssmax/attention_backward.hpp>
#include <ssmax/softmax.hpp>
#include <ssmax/softmax_backward.hpp>
#include <string>
#include <vector>

#include "support/machine_peaks.hpp"
#include "support/ratio_reporter.hpp"

namespace {

using ssmax::index_t;

constexpr index_t kHeads = 8;

/// One causal prefill problem, [1, n, H, d] float, with the forward's out and lse.
struct problem {
  index_t n, d;
  std::vector<float> q, k, v, out, dout, lse, dq, dk, dv;
  problem(index_t len, index_t dim) : n(len), d(dim) {
    std::mt19937 gen(1);
    std::uniform_real_distribution<float> u(-1.0f, 1.0f);
    const auto size = static_cast<size_t>(n * kHeads * d);
    for (auto* t : {&q, &k, &v, &dout}) {
      t->resize(size);
      for (auto& x : *t) x = u(gen);
    }
    out.resize(size);
    dq.resize(size);
    dk.resize(size);
    dv.resize(size);
    lse.resize(static_cast<size_t>(kHeads * n));
  }
  ssmax::tensor_view<const float> view(const std::vector<float>& x) const {
    return ssmax::bshd_view(x.data(), 1, n, kHeads, d);
  }
  ssmax::tensor_view<float> view(std::vector<float>& x) {
    return ssmax::bshd_view(x.data(), 1, n, kHeads, d);
  }
};

template <class Policy>
void run_attention(benchmark::State& state, bool backward, ssmax::attention_path path, index_t n,
                   index_t d, int threads) {
  problem t(n, d);
  ssmax::attention_options<Policy> o;
  o.mask = ssmax::attention_mask::causal_mask();
  o.threads = threads;
  o.path = path;
  ssmax::attention_extras<float> extras;
  extras.lse = t.lse.data();
  ssmax::attention_workspace ws, backward_ws;  // separate, so extra_MB is each pass's own
  ssmax::attention(t.view(t.q), t.view(t.k), t.view(t.v), t.view(t.out), o, extras, &ws);
  ssmax::policy_gradient pg(kHeads);
  const ssmax::attention_gradients<float> grads{t.view(t.dq), t.view(t.dk), t.view(t.dv), nullptr,
                                                &pg};
  for (auto _ : state) {
    if (backward)
      ssmax::attention_backward(t.view(t.q), t.view(t.k), t.view(t.v), t.view(t.out),
                                t.view(t.dout), static_cast<const float*>(t.lse.data()), grads, o,
                                &backward_ws);
    else
      ssmax::attention(t.view(t.q), t.view(t.k), t.view(t.v), t.view(t.out), o, extras, &ws);
    benchmark::DoNotOptimize(t.dq.data());
    benchmark::DoNotOptimize(t.out.data());
  }
  const double pairs = 0.5 * static_cast<double>(n) * static_cast<double>(n);
  const double flops = (backward ? 10.0 : 4.0) * pairs * static_cast<double>(d) * kHeads;
  using benchmark::Counter;
  state.counters["GFLOPs"] = Counter(flops * 1e-9, Counter::kIsIterationInvariantRate);
  state.counters["extra_MB"] =
      static_cast<double>(backward ? backward_ws.capacity() : ws.capacity()) / (1 << 20);
  state.counters["threads"] = threads;
}

/// Rows: forward ssmax, backward from y, backward from the log-sum-exp.
void run_row(benchmark::State& state, int variant, index_t n) {
  std::mt19937 gen(2);
  std::normal_distribution<float> u(0.0f, 2.0f);
  std::vector<float> x(static_cast<size_t>(n)), y(x.size()), g(x.size()), dx(x.size());
  for (auto& e : x) e = u(gen);
  for (auto& e : g) e = u(gen);
  const float m = static_cast<float>(0.43 * std::log(static_cast<double>(n)));
  const float lse = ssmax::scaled_softmax(x.data(), y.data(), n, m).log_sum_exp();
  double streams = 2;  // forward: x in, y out
  for (auto _ : state) {
    if (variant == 0) {
      ssmax::scaled_softmax(x.data(), y.data(), n, m);
    } else if (variant == 1) {
      benchmark::DoNotOptimize(
          ssmax::scaled_softmax_backward(x.data(), y.data(), g.data(), dx.data(), n, m));
      streams = 7;  // pass 1 reads y, g, x; pass 2 reads y, g, x, writes dx
    } else {
      benchmark::DoNotOptimize(
          ssmax::scaled_softmax_backward_lse(x.data(), lse, g.data(), dx.data(), n, m));
      streams = 7;  // pass 1 reads x, g, writes dx; pass 2 reads dx, g, x, writes dx
    }
    benchmark::DoNotOptimize(dx.data());
    benchmark::DoNotOptimize(y.data());
  }
  state.counters["GBs"] =
      benchmark::Counter(streams * static_cast<double>(n) * sizeof(float) * 1e-9,
                         benchmark::Counter::kIsIterationInvariantRate);
}

void register_all() {
  ssmax::bench::register_fma_peak();
  for (index_t d : {64, 128})
    for (index_t n : {512, 2048})
      for (int threads : {1, 2}) {
        const std::string tail = "/d:" + std::to_string(d) + "/n:" + std::to_string(n) +
                                 "/threads:" + std::to_string(threads);
        for (bool ss : {false, true})
          for (auto path : {ssmax::attention_path::fused, ssmax::attention_path::materialised})
            for (bool backward : {false, true}) {
              const std::string name =
                  std::string(backward ? "backward" : "forward") + "/" +
                  (path == ssmax::attention_path::fused ? "fused" : "materialised") + "/" +
                  (ss ? "ssmax" : "softmax") + tail;
              benchmark::RegisterBenchmark(
                  name.c_str(),
                  [=](benchmark::State& s) {
                    if (ss)
                      run_attention<ssmax::ssmax_policy>(s, backward, path, n, d, threads);
                    else
                      run_attention<ssmax::softmax_policy>(s, backward, path, n, d, threads);
                  })
                  ->Unit(benchmark::kMillisecond)
                  ->UseRealTime();
            }
      }
  for (index_t n : {4096, 1 << 20}) {
    const std::string tail = "/float/n:" + std::to_string(n);
    benchmark::RegisterBenchmark(("row/forward/ssmax" + tail).c_str(),
                                 [=](benchmark::State& s) { run_row(s, 0, n); });
    benchmark::RegisterBenchmark(("row/backward/ssmax" + tail).c_str(),
                                 [=](benchmark::State& s) { run_row(s, 1, n); });
    benchmark::RegisterBenchmark(("row/backward-lse/ssmax" + tail).c_str(),
                                 [=](benchmark::State& s) { run_row(s, 2, n); });
  }
}

}  // namespace

int main(int argc, char** argv) {
  register_all();
  // The ratio tables, plus of_peak from the peak run of the same run.
  using reporter = ssmax::bench::fraction_reporter<ssmax::bench::ratio_reporter>;
  return ssmax::bench::run_with<reporter>(
      argc, argv,
      std::vector<ssmax::bench::comparison>{
          {0, "forward", "backward / forward (time)", false},
          {1, "forward", "row backward / forward (time)", false}});
}
