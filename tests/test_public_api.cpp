// The public API as a new user meets it: errors that name what
// the caller wrote, one multiplier check for the row API and the operator, per-head
// parameters that outlive their vector, and a user's learnable length policy whose
// parameters get their gradients (against central finite differences).

#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <ssmax/attention.hpp>
#include <ssmax/attention_backward.hpp>
#include <ssmax/softmax.hpp>
#include <ssmax/softmax_backward.hpp>
#include <string>
#include <vector>

#include "support/expect_error.hpp"

namespace {

using namespace ssmax;
using ssmax::index_t;
using ssmax::testing::expect_rejects;

std::vector<double> wave(index_t count, double step, int seed) {
  std::vector<double> x(static_cast<size_t>(count));
  for (index_t i = 0; i < count; ++i)
    x[static_cast<size_t>(i)] = std::sin(0.7 * static_cast<double>(i * seed + 1)) * step;
  return x;
}

template <class T>
std::vector<T> as(const std::vector<double>& x) {
  return std::vector<T>(x.begin(), x.end());
}

/// The function and argument an argument_error names, from what().
std::string message_of(void (*call)()) {
  try {
    call();
  } catch (const argument_error& e) {
    return e.what();
  }
  return "no error";
}

TEST(PublicApi, ScalableSoftmaxErrorsNameTheCallersWords) {
  EXPECT_EQ(message_of([] {
              float x[4] = {1, 2, 3, 4}, y[4];
              scalable_softmax(x, y, 4, std::nan(""));
            }).rfind("ssmax::scalable_softmax: argument 's'", 0),
            0u);
  EXPECT_EQ(message_of([] {
              float x[4] = {1, 2, 3, 4}, y[4];
              scalable_softmax(x, y, 4, 0.5, std::nan(""));
            }).rfind("ssmax::scalable_softmax: argument 'b'", 0),
            0u);
  EXPECT_EQ(message_of([] {
              float x[4] = {1, 2, 3, 4}, y[4];
              scalable_softmax(x, y, 4, 1e39);
            }).rfind("ssmax::scalable_softmax: argument 's'", 0),
            0u);
  EXPECT_EQ(message_of([] {
              float x[4] = {1, 2, 3, 4}, y[4] = {}, g[4] = {}, dx[4];
              scalable_softmax_backward(x, y, g, dx, 4, std::nan(""));
            }).rfind("ssmax::scalable_softmax_backward: argument 's'", 0),
            0u);
}

/// A float attention call whose SSMax scale s = 1e39 makes s log n overflow float.
struct huge_scale_call {
  index_t B = 1, n = 6, H = 2, d = 4;
  std::vector<float> q = as<float>(wave(B * n * H * d, 1.0, 3));
  std::vector<float> out = std::vector<float>(q.size(), 7.0f);
  std::vector<float> lse = std::vector<float>(static_cast<size_t>(B * H * n), 7.0f);
  attention_options<ssmax_policy> options;
  huge_scale_call() {
    options.policy = ssmax_policy(1e39);
    options.mask = attention_mask::causal_mask();
  }
  tensor_view<const float> in() const { return bshd_view(q.data(), B, n, H, d); }
  bool untouched() const {
    for (float x : out)
      if (x != 7.0f) return false;
    for (float x : lse)
      if (x != 7.0f) return false;
    return true;
  }
};

TEST(PublicApi, HugeScaleIsRejectedByTheRowApiAndTheOperatorAlike) {
  huge_scale_call c;
  std::vector<float> y(6, 7.0f);
  expect_rejects([&] { policy_softmax(c.options.policy, c.q.data(), y.data(), 6); }, "policy");
  for (attention_path path : {attention_path::fused, attention_path::materialised}) {
    c.options.path = path;
    attention_extras<float> extras;
    extras.lse = c.lse.data();
    expect_rejects(
        [&] {
          attention(c.in(), c.in(), c.in(), bshd_view(c.out.data(), c.B, c.n, c.H, c.d), c.options,
                    extras);
        },
        "policy");
    EXPECT_TRUE(c.untouched());
    std::vector<float> g(3 * c.q.size(), 7.0f);
    attention_gradients<float> grads{bshd_view(g.data(), c.B, c.n, c.H, c.d),
                                     bshd_view(g.data() + c.q.size(), c.B, c.n, c.H, c.d),
                                     bshd_view(g.data() + 2 * c.q.size(), c.B, c.n, c.H, c.d)};
    expect_rejects(
        [&] {
          const auto out = bshd_view(static_cast<const float*>(c.out.data()), c.B, c.n, c.H, c.d);
          attention_backward(c.in(), c.in(), c.in(), out, c.in(), c.lse.data(), grads, c.options);
        },
        "policy");
    for (float x : g) EXPECT_EQ(x, 7.0f);
  }
  // Within float, the logit scale still matters: m * scale must fit too.
  c.options.policy = ssmax_policy(1e37);
  c.options.scale = 1e3;
  expect_rejects(
      [&] {
        attention(c.in(), c.in(), c.in(), bshd_view(c.out.data(), c.B, c.n, c.H, c.d), c.options);
      },
      "policy");
  EXPECT_TRUE(c.untouched());
}

/// What a helper returns: options whose per-head s came from a vector now destroyed.
attention_options<ssmax_policy> options_from_a_helper(index_t heads) {
  std::vector<double> s;
  for (index_t h = 0; h < heads; ++h) s.push_back(0.3 + 0.1 * static_cast<double>(h));
  attention_options<ssmax_policy> o;
  o.policy = ssmax_policy(s);
  return o;
}

TEST(PublicApi, PerHeadValuesOutliveTheirVectorAndViewsSeeUpdates) {
  const index_t n = 5, H = 3, d = 4;
  const std::vector<float> x = as<float>(wave(n * H * d, 1.5, 5));
  const auto in = bshd_view(x.data(), 1, n, H, d);
  std::vector<float> a(x.size()), b(x.size()), c(x.size());
  attention(in, in, in, bshd_view(a.data(), 1, n, H, d), options_from_a_helper(H));
  double values[] = {0.3, 0.4, 0.5};
  attention_options<ssmax_policy> live;
  live.policy = ssmax_policy(per_head::view(values, H));
  attention(in, in, in, bshd_view(b.data(), 1, n, H, d), live);
  EXPECT_EQ(a, b);
  values[1] = 2.0;  // a training step updates s in place; the view sees it
  attention(in, in, in, bshd_view(c.data(), 1, n, H, d), live);
  EXPECT_NE(b, c);
  attention_options<ssmax_policy> updated;
  updated.policy = ssmax_policy(std::vector<double>{0.3, 2.0, 0.5});
  attention(in, in, in, bshd_view(b.data(), 1, n, H, d), updated);
  EXPECT_EQ(b, c);
}

/// A user's learnable policy: m = t sqrt(n) + c, with t in the gradient's s slot and c in
/// its b slot (partials: dm/dt = sqrt(n), dm/dc = 1).
struct sqrt_length_policy {
  static constexpr bool learnable = true;
  double t = 0.4, c = 0.2;
  double multiplier(const row_position& row) const {
    return t * std::sqrt(static_cast<double>(row.visible)) + c;
  }
  multiplier_partials partials(const row_position& row) const {
    return {std::sqrt(static_cast<double>(row.visible)), 1.0};
  }
  index_t heads() const { return 0; }
  void validate(const char*) const {}
};

TEST(PublicApi, UserLearnablePolicyGetsFiniteDifferenceGradients) {
  const index_t B = 2, n_q = 4, n_k = 6, H = 2, H_kv = 1, d = 5;
  const std::vector<double> q = wave(B * n_q * H * d, 1.0, 3), k = wave(B * n_k * H_kv * d, 1.0, 7);
  const std::vector<double> v = wave(B * n_k * H_kv * d, 1.0, 11);
  const std::vector<double> w = wave(B * n_q * H * d, 1.0, 13);  // L = sum(w * out)
  const auto qv = bshd_view(q.data(), B, n_q, H, d);
  const auto kv = bshd_view(k.data(), B, n_k, H_kv, d);
  const auto vv = bshd_view(v.data(), B, n_k, H_kv, d);
  attention_options<sqrt_length_policy> o;
  o.mask = attention_mask::causal_mask();
  auto loss = [&](double t, double c) {
    attention_options<sqrt_length_policy> p = o;
    p.policy.t = t, p.policy.c = c;
    std::vector<double> out(q.size());
    attention(qv, kv, vv, bshd_view(out.data(), B, n_q, H, d), p);
    double sum = 0.0;
    for (size_t i = 0; i < out.size(); ++i) sum += w[i] * out[i];
    return sum;
  };
  const double h = 1e-5;
  const double dt = (loss(0.4 + h, 0.2) - loss(0.4 - h, 0.2)) / (2 * h);
  const double dc = (loss(0.4, 0.2 + h) - loss(0.4, 0.2 - h)) / (2 * h);
  ASSERT_GT(std::abs(dt), 1e-3);  // the check can fail: the gradient is far from 0

  for (attention_path path : {attention_path::fused, attention_path::materialised}) {
    o.path = path;
    std::vector<double> out(q.size()), lse(static_cast<size_t>(B * H * n_q));
    attention_extras<double> extras;
    extras.lse = lse.data();
    attention(qv, kv, vv, bshd_view(out.data(), B, n_q, H, d), o, extras);
    std::vector<double> dq(q.size()), dk(k.size()), dv(v.size());
    policy_gradient pg(H);
    attention_gradients<double> grads{bshd_view(dq.data(), B, n_q, H, d),
                                      bshd_view(dk.data(), B, n_k, H_kv, d),
                                      bshd_view(dv.data(), B, n_k, H_kv, d)};
    grads.policy = &pg;
    attention_backward(qv, kv, vv, bshd_view(static_cast<const double*>(out.data()), B, n_q, H, d),
                       bshd_view(w.data(), B, n_q, H, d), lse.data(), grads, o);
    EXPECT_NEAR(pg.s[0] + pg.s[1], dt, 1e-6 * (1 + std::abs(dt)));
    EXPECT_NEAR(pg.b[0] + pg.b[1], dc, 1e-6 * (1 + std::abs(dc)));
  }

  // The row backward uses the same partials.
  const std::vector<double> x = wave(8, 2.0, 3), g = wave(8, 1.0, 5);
  std::vector<double> y(8), dx(8);
  policy_softmax(o.policy, x.data(), y.data(), 8);
  const row_gradient r =
      policy_softmax_backward(o.policy, x.data(), y.data(), g.data(), dx.data(), 8);
  EXPECT_DOUBLE_EQ(r.s, std::sqrt(8.0) * r.multiplier);
  EXPECT_DOUBLE_EQ(r.b, r.multiplier);
}

}  // namespace
