// Concurrent calls: several std::threads calling the public API at once on shared,
// read-only inputs (and a shared per-head parameter array) each get results bit-identical
// to a single-threaded call; attention calls also use OpenMP threads inside (a different
// count per caller: results do not depend on it). CI runs this file under ThreadSanitizer
// (preset tsan, with libomp's Archer tool for OpenMP), which also checks that no call
// writes shared state.

#include <gtest/gtest.h>

#include <atomic>
#include <cmath>
#include <cstring>
#include <random>
#include <ssmax/attention.hpp>
#include <ssmax/softmax.hpp>
#include <thread>
#include <vector>

namespace ssmax {
namespace {

constexpr int kThreads = 4;
constexpr int kRounds = 3;

/// True when a and b hold the same bytes (NaN-safe, unlike ==).
template <class T>  // float or double
bool same_bits(const std::vector<T>& a, const std::vector<T>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(T)) == 0;
}

/// Runs work(thread) on kThreads threads at once; returns how many calls reported a
/// mismatch (work returns the number it found).
template <class Work>  // callable as int work(int thread)
int run_on_threads(Work&& work) {
  std::atomic<int> mismatches{0};
  std::atomic<int> ready{0};
  std::vector<std::thread> pool;
  for (int t = 0; t < kThreads; ++t)
    pool.emplace_back([&, t] {
      ready.fetch_add(1);
      while (ready.load() < kThreads) std::this_thread::yield();  // start together
      mismatches.fetch_add(work(t));
    });
  for (auto& th : pool) th.join();
  return mismatches.load();
}

/// Every row function, on a set of shared rows, from kThreads threads at once.
template <class T>  // float or double
void check_row_api_concurrently() {
  std::mt19937 rng(42);
  std::normal_distribution<double> d(0.0, 3.0);
  std::vector<std::vector<T>> rows;
  for (index_t n : {1, 7, 100, 1000, 4099}) {
    std::vector<T> x(static_cast<size_t>(n));
    for (auto& v : x) v = static_cast<T>(d(rng));
    x[0] = -std::numeric_limits<T>::infinity();
    rows.push_back(std::move(x));
  }
  const std::vector<double> per_head_s{0.3, 0.43, 0.6};  // shared, read by every thread
  const ssmax_policy policy(per_head_s);

  // Everything one thread computes for every row, in a fixed order.
  auto compute = [&] {
    std::vector<std::vector<T>> results;
    for (const auto& x : rows) {
      const auto n = static_cast<index_t>(x.size());
      std::vector<T> y(x.size());
      softmax(x.data(), y.data(), n);
      results.push_back(y);
      scalable_softmax(x.data(), y.data(), n, 0.43);
      results.push_back(y);
      for (index_t h = 0; h < 3; ++h) {
        policy_softmax(policy, x.data(), y.data(), n, {n, n - 1, h});
        results.push_back(y);
      }
      const auto state = row_state_of(x.data(), n, T(2));
      results.push_back({state.max, state.sum, log_sum_exp(x.data(), n, T(0.5))});
    }
    return results;
  };
  const auto expected = compute();
  const int mismatches = run_on_threads([&](int) {
    int bad = 0;
    for (int round = 0; round < kRounds; ++round) {
      const auto got = compute();
      for (size_t r = 0; r < expected.size(); ++r) bad += same_bits(got[r], expected[r]) ? 0 : 1;
    }
    return bad;
  });
  EXPECT_EQ(mismatches, 0);
}

TEST(Concurrency, RowApiFloatFromManyThreads) { check_row_api_concurrently<float>(); }
TEST(Concurrency, RowApiDoubleFromManyThreads) { check_row_api_concurrently<double>(); }

/// The attention operator from kThreads callers at once, each with its own outputs and
/// workspace and 1 to 3 OpenMP threads of its own, over shared q, k, v, mask arrays and
/// per-head scales: causal GQA with SSMax per head, and padded keys on both kernels.
template <class T>  // float or double
void check_attention_concurrently() {
  const index_t B = 2, n_q = 37, n_k = 150, H = 4, H_kv = 2, d = 24;
  std::mt19937 rng(7);
  std::uniform_real_distribution<double> u(-1.0, 1.0);
  std::vector<T> q(static_cast<size_t>(B * n_q * H * d)),
      k(static_cast<size_t>(B * n_k * H_kv * d));
  std::vector<T> v(k.size());
  for (auto* t : {&q, &k, &v})
    for (auto& x : *t) x = static_cast<T>(u(rng));
  const std::vector<double> scales{0.2, 0.3, 0.4, 0.5};
  const index_t lengths[] = {150, 61};

  // One call: out and lse of case c on `threads` OpenMP threads.
  auto compute = [&](int c, int threads, attention_workspace& ws) {
    std::vector<T> out(q.size()), lse(static_cast<size_t>(B * H * n_q));
    attention_options<ssmax_policy> o;
    o.policy = ssmax_policy(scales);
    o.threads = threads;
    o.mask = c == 0 ? attention_mask::causal_mask() : attention_mask::key_padding(lengths);
    o.path = c == 2 ? attention_path::materialised : attention_path::fused;
    attention_extras<T> extras;
    extras.lse = lse.data();
    attention(bshd_view(q.data(), B, n_q, H, d), bshd_view(k.data(), B, n_k, H_kv, d),
              bshd_view(v.data(), B, n_k, H_kv, d), bshd_view(out.data(), B, n_q, H, d), o, extras,
              &ws);
    out.insert(out.end(), lse.begin(), lse.end());
    return out;
  };
  std::vector<std::vector<T>> expected;
  attention_workspace serial;
  for (int c = 0; c < 3; ++c) expected.push_back(compute(c, 1, serial));

  const int mismatches = run_on_threads([&](int t) {
    attention_workspace ws;  // one per caller
    int bad = 0;
    for (int round = 0; round < kRounds; ++round)
      for (int c = 0; c < 3; ++c)
        bad += same_bits(compute(c, 1 + (t + round) % 3, ws), expected[static_cast<size_t>(c)]) ? 0
                                                                                                : 1;
    return bad;
  });
  EXPECT_EQ(mismatches, 0);
}

TEST(Concurrency, AttentionFloatFromManyThreads) { check_attention_concurrently<float>(); }
TEST(Concurrency, AttentionDoubleFromManyThreads) { check_attention_concurrently<double>(); }

}  // namespace
}  // namespace ssmax
