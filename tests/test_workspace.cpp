// The workspace: one call at a time (a second call sharing it throws, naming 'workspace',
// and writes nothing), per-thread scratch bounded by the work (options.threads beyond
// what can get work costs no memory; beyond kMaxThreads it is refused), and the public
// merge of partial (out, lse) results that split-KV callers use.

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <functional>
#include <limits>
#include <random>
#include <ssmax/attention.hpp>
#include <ssmax/attention_backward.hpp>
#include <ssmax/row_state.hpp>
#include <string>
#include <thread>
#include <vector>

namespace ssmax {
namespace {

/// A softmax policy that runs a hook (once) from inside the kernel, while the call holds
/// its workspace: the test's second caller runs there, deterministically mid-call.
struct hooked_policy {
  std::function<void()>* hook = nullptr;
  bool* fired = nullptr;
  const attention_workspace* ws = nullptr;  ///< fire only while a call holds it (the kernel)
  double multiplier(const row_position&) const {
    if (hook != nullptr && !*fired && ws->in_use()) {
      *fired = true;
      (*hook)();
    }
    return 1.0;
  }
  index_t heads() const { return 0; }
  void validate(const char*) const {}
  static constexpr const char* name() { return "hooked"; }
};

/// Options whose policy calls `hook` once, from inside the kernel that holds `ws`.
attention_options<hooked_policy> hooked_options(std::function<void()>& hook, bool& fired,
                                                const attention_workspace& ws, attention_path path,
                                                int threads) {
  attention_options<hooked_policy> o;
  o.policy.hook = &hook;
  o.policy.fired = &fired;
  o.policy.ws = &ws;
  o.path = path;
  o.threads = threads;
  return o;
}

/// Random q [1, n_q, H, d], k and v [1, n_k, H, d].
struct problem {
  index_t n_q, n_k, H, d;
  std::vector<float> q, k, v;
  problem(index_t n_q_, index_t n_k_, index_t H_, index_t d_, unsigned seed)
      : n_q(n_q_), n_k(n_k_), H(H_), d(d_) {
    std::mt19937 rng(seed);
    std::uniform_real_distribution<float> u(-1.0f, 1.0f);
    q.resize(static_cast<size_t>(n_q * H * d));
    k.resize(static_cast<size_t>(n_k * H * d));
    v.resize(k.size());
    for (auto* t : {&q, &k, &v})
      for (auto& x : *t) x = u(rng);
  }
  tensor_view<const float> qv() const { return bshd_view(q.data(), 1, n_q, H, d); }
  tensor_view<const float> kv() const { return bshd_view(k.data(), 1, n_k, H, d); }
  tensor_view<const float> vv() const { return bshd_view(v.data(), 1, n_k, H, d); }
  tensor_view<float> out(std::vector<float>& o) const {
    o.resize(q.size());
    return bshd_view(o.data(), 1, n_q, H, d);
  }
};

// Two threads share one workspace: the second calls while the first holds it (from the
// first call's policy hook, waiting for the second to finish). Before the workspace knew it
// was in use, the second call silently overwrote the first call's packed K and V (its own
// inputs have the same shapes, other values): both results were wrong.
TEST(Workspace, SecondCallerThrowsWhileFirstHoldsIt) {
  for (const attention_path path : {attention_path::fused, attention_path::materialised}) {
    const problem a(40, 300, 2, 16, 1), b(40, 300, 2, 16, 2);
    attention_workspace ws;
    std::vector<float> out_b(b.q.size(), 7.0f), lse_b(static_cast<size_t>(b.H * b.n_q), 7.0f);
    std::vector<float> dq(b.q.size(), 7.0f), dk(b.k.size(), 7.0f), dv(b.k.size(), 7.0f);
    const std::vector<float> b_out(b.q), b_dout(b.q);  // the backward's inputs
    std::string forward_error, backward_error;
    std::function<void()> hook = [&] {
      std::thread second([&] {
        attention_options<> o;
        o.path = path;
        try {
          attention_extras<float> x;
          x.lse = lse_b.data();
          attention(b.qv(), b.kv(), b.vv(), bshd_view(out_b.data(), 1, b.n_q, b.H, b.d), o, x, &ws);
        } catch (const argument_error& e) {
          forward_error = e.argument() + " | " + e.what();
        }
        try {
          attention_gradients<float> g{bshd_view(dq.data(), 1, b.n_q, b.H, b.d),
                                       bshd_view(dk.data(), 1, b.n_k, b.H, b.d),
                                       bshd_view(dv.data(), 1, b.n_k, b.H, b.d)};
          attention_backward(b.qv(), b.kv(), b.vv(), bshd_view(b_out.data(), 1, b.n_q, b.H, b.d),
                             bshd_view(b_dout.data(), 1, b.n_q, b.H, b.d), lse_b.data(), g, o, &ws);
        } catch (const argument_error& e) {
          backward_error = e.argument() + " | " + e.what();
        }
      });
      second.join();
    };
    bool fired = false;
    const auto o = hooked_options(hook, fired, ws, path, 1);
    std::vector<float> out_a, expected;
    attention(a.qv(), a.kv(), a.vv(), a.out(out_a), o, {}, &ws);
    ASSERT_TRUE(fired);
    EXPECT_FALSE(ws.in_use());

    EXPECT_EQ(
        forward_error.rfind("workspace | ssmax::attention: argument 'workspace' is in use", 0), 0u)
        << forward_error;
    EXPECT_EQ(backward_error.rfind(
                  "workspace | ssmax::attention_backward: argument 'workspace' is in use", 0),
              0u)
        << backward_error;
    for (float x : out_b) ASSERT_EQ(x, 7.0f) << "the refused call wrote its output";
    for (float x : lse_b) ASSERT_EQ(x, 7.0f);
    for (const auto* g : {&dq, &dk, &dv})
      for (float x : *g) ASSERT_EQ(x, 7.0f) << "the refused backward wrote a gradient";

    attention_options<> plain;
    plain.path = path;
    plain.threads = 1;
    attention(a.qv(), a.kv(), a.vv(), a.out(expected), plain);
    EXPECT_EQ(std::memcmp(out_a.data(), expected.data(), out_a.size() * sizeof(float)), 0)
        << "the first call's result changed";
  }
}

// A second call made from inside a multi-threaded kernel (a policy's callback on an
// OpenMP thread) throws argument_error naming 'workspace', and the first call passes the
// exception on instead of letting it escape the parallel region (std::terminate).
TEST(Workspace, ReentrantCallFromAThreadedKernelThrows) {
  for (const attention_path path : {attention_path::fused, attention_path::materialised}) {
    const problem a(16, 64, 2, 8, 3);
    attention_workspace ws;
    std::vector<float> out_a, out_b;
    std::function<void()> hook = [&] {
      attention(a.qv(), a.kv(), a.vv(), a.out(out_b), attention_options<>{}, {}, &ws);
    };
    bool fired = false;
    const auto o = hooked_options(hook, fired, ws, path, 2);
    std::string error;
    try {
      attention(a.qv(), a.kv(), a.vv(), a.out(out_a), o, {}, &ws);
    } catch (const argument_error& e) {
      error = e.argument();
    }
    EXPECT_TRUE(fired);
    EXPECT_EQ(error, "workspace");
    EXPECT_FALSE(ws.in_use()) << "the lease outlived the call";
  }
}

// A call that throws releases the workspace: the next call runs.
TEST(Workspace, ReleasedAfterEveryCall) {
  const problem a(4, 10, 1, 8, 3);
  attention_workspace ws;
  std::vector<float> out;
  attention_options<> bad;
  bad.threads = -1;
  EXPECT_THROW(attention(a.qv(), a.kv(), a.vv(), a.out(out), bad, {}, &ws), argument_error);
  EXPECT_FALSE(ws.in_use());
  attention(a.qv(), a.kv(), a.vv(), a.out(out), {}, {}, &ws);
  EXPECT_FALSE(ws.in_use());
}

// Per-thread scratch only for threads that can get work: one decode row of one head is
// one work item, so any thread count needs the bytes of one thread (before: 100000
// threads asked for gigabytes). Above kMaxThreads the call is refused.
TEST(Workspace, ThreadsBeyondTheWorkCostNoMemory) {
  const problem a(1, 700, 1, 32, 4), pre(40, 100, 1, 32, 5);
  for (const attention_path path : {attention_path::fused, attention_path::materialised})
    for (const problem* p : {&a, &pre}) {
      std::vector<float> out;
      attention_options<> one, many;
      one.path = many.path = path;
      one.threads = 1;
      many.threads = detail::kMaxThreads;
      // fused prefill of 40 rows: one task; materialised: two blocks of 32 rows.
      const index_t items = path == attention_path::materialised && p == &pre ? 2 : 1;
      one.threads = static_cast<int>(items);
      EXPECT_EQ(attention_workspace_bytes(p->qv(), p->kv(), p->vv(), p->out(out), many),
                attention_workspace_bytes(p->qv(), p->kv(), p->vv(), p->out(out), one));
    }
  // The backward: one task per (sequence, kv head); here one.
  for (const attention_path path : {attention_path::fused, attention_path::materialised}) {
    std::vector<float> out, lse(static_cast<size_t>(pre.n_q)), dq, dk(pre.k.size()),
        dv(pre.k.size());
    attention_extras<float> x;
    x.lse = lse.data();
    attention(pre.qv(), pre.kv(), pre.vv(), pre.out(out), {}, x);
    std::size_t bytes[2];
    for (int t : {0, 1}) {
      attention_options<> o;
      o.path = path;
      o.threads = t == 0 ? 1 : detail::kMaxThreads;
      attention_workspace ws;
      attention_gradients<float> g{pre.out(dq), bshd_view(dk.data(), 1, pre.n_k, 1, pre.d),
                                   bshd_view(dv.data(), 1, pre.n_k, 1, pre.d)};
      attention_backward(pre.qv(), pre.kv(), pre.vv(),
                         bshd_view<const float>(out.data(), 1, pre.n_q, 1, pre.d), pre.qv(),
                         lse.data(), g, o, &ws);
      bytes[t] = ws.capacity();
    }
    EXPECT_EQ(bytes[0], bytes[1]);
  }
}

TEST(Workspace, ThreadsAboveTheMaximumRefused) {
  const problem a(1, 10, 1, 8, 6);
  std::vector<float> out, lse(1), dq, dk(a.k.size()), dv(a.k.size());
  const std::vector<float> fwd_out(a.q), dout(a.q);
  attention_options<> o;
  o.threads = 100000;
  auto names_threads = [](const auto& call) {
    try {
      call();
    } catch (const argument_error& e) {
      return e.argument() == "options.threads";
    }
    return false;
  };
  EXPECT_TRUE(
      names_threads([&] { attention_workspace_bytes(a.qv(), a.kv(), a.vv(), a.out(out), o); }));
  EXPECT_TRUE(names_threads([&] { attention(a.qv(), a.kv(), a.vv(), a.out(out), o); }));
  attention_gradients<float> g{a.out(dq), bshd_view(dk.data(), 1, a.n_k, 1, a.d),
                               bshd_view(dv.data(), 1, a.n_k, 1, a.d)};
  EXPECT_TRUE(names_threads([&] {
    attention_backward(a.qv(), a.kv(), a.vv(), bshd_view(fwd_out.data(), 1, a.n_q, 1, a.d),
                       bshd_view(dout.data(), 1, a.n_q, 1, a.d), lse.data(), g, o);
  }));
  o.threads = detail::kMaxThreads;
  attention(a.qv(), a.kv(), a.vv(), a.out(out), o);  // the maximum itself is accepted
}

// merge_partial_outputs of the results over two halves of the keys equals one call over
// all of them (split-KV); empty partials are exact.
TEST(MergePartialOutputs, TwoKeyRangesEqualOneCall) {
  const index_t n_q = 5, n_k = 300, H = 2, d = 24, split = 110;
  const problem a(n_q, n_k, H, d, 7);
  std::vector<float> full, lse(static_cast<size_t>(H * n_q));
  attention_extras<float> x;
  x.lse = lse.data();
  attention(a.qv(), a.kv(), a.vv(), a.out(full), {}, x);

  std::vector<float> part[2], part_lse[2];
  for (int s : {0, 1}) {
    const index_t k0 = s == 0 ? 0 : split, len = s == 0 ? split : n_k - split;
    part_lse[s].resize(lse.size());
    attention_extras<float> px;
    px.lse = part_lse[s].data();
    attention(a.qv(), bshd_view<const float>(a.k.data() + k0 * H * d, 1, len, H, d),
              bshd_view<const float>(a.v.data() + k0 * H * d, 1, len, H, d), a.out(part[s]), {},
              px);
  }
  for (index_t i = 0; i < n_q; ++i)
    for (index_t h = 0; h < H; ++h) {
      const index_t at = (i * H + h) * d, row = h * n_q + i;
      std::vector<float> merged(static_cast<size_t>(d));
      const float l =
          merge_partial_outputs(part[0].data() + at, part_lse[0][row], part[1].data() + at,
                                part_lse[1][row], d, merged.data());
      EXPECT_NEAR(l, lse[row], 1e-5f * (1 + std::abs(lse[row])));
      for (index_t c = 0; c < d; ++c) EXPECT_NEAR(merged[c], full[at + c], 2e-6f);
      // In place into either input gives the same result.
      std::vector<float> in_b(part[1].begin() + at, part[1].begin() + at + d);
      merge_partial_outputs(part[0].data() + at, part_lse[0][row], in_b.data(), part_lse[1][row], d,
                            in_b.data());
      for (index_t c = 0; c < d; ++c) EXPECT_NEAR(in_b[c], merged[c], 1e-7f);
    }
}

TEST(MergePartialOutputs, EmptyPartialsAreExact) {
  const float ninf = -std::numeric_limits<float>::infinity();
  const std::vector<float> a{0.25f, -1.5f, 3.0f}, empty{9.0f, 9.0f, 9.0f};
  std::vector<float> out(3);
  EXPECT_EQ(merge_partial_outputs(empty.data(), ninf, a.data(), 1.75f, 3, out.data()), 1.75f);
  EXPECT_EQ(out, a);
  EXPECT_EQ(merge_partial_outputs(a.data(), 1.75f, empty.data(), ninf, 3, out.data()), 1.75f);
  EXPECT_EQ(out, a);
  EXPECT_EQ(merge_partial_outputs(empty.data(), ninf, empty.data(), ninf, 3, out.data()), ninf);
  EXPECT_EQ(out, (std::vector<float>{0.0f, 0.0f, 0.0f}));
  // Equal halves: the mean, log(2) above.
  const std::vector<float> b{0.75f, 0.5f, -1.0f};
  EXPECT_FLOAT_EQ(merge_partial_outputs(a.data(), 0.0f, b.data(), 0.0f, 3, out.data()),
                  std::log(2.0f));
  EXPECT_EQ(out, (std::vector<float>{0.5f, -0.5f, 1.0f}));
}

}  // namespace
}  // namespace ssmax
