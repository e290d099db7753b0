// The attention backward with the logit's extras (logit.hpp: additive bias, ALiBi,
// soft-cap, sinks) and local windows:
// 1. the double reference (reference/attention_backward.hpp) against central finite
//    differences of the forward reference, for dq, dk, dv, d_sinks, ds_h and db_h (b < 0
//    included: rows with m < 0);
// 2. both kernel paths, float and double, against the reference, and one against three
//    threads bit for bit;
// 3. dL/dm of a row with a sink at tiny multipliers against its exact value;
// 4. d_sinks without sinks is refused.
//
// Finite differences: the central difference at step h has error c h^2 + r / h (c the
// third derivative over 6, r the loss's rounding); the step-2h difference's has 4 c h^2, so
// |fd(2h) - fd(h)| / 3 estimates the truncation, and the tolerance is four times that
// plus 4 r / h with r = 64 eps |L| (the reference loss sums O(n d) terms exactly rounded).
// Kernels: the bound of test_attention_backward.cpp, eps (4 (d + 2) (Z + 1) + 2 n + 128)
// times the magnitude, taken norm-wise here (the largest |reference| of each output, plus
// 1), Z the largest |m z| of a row including the bias and the sink.

#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <random>
#include <ssmax/attention.hpp>
#include <ssmax/attention_backward.hpp>
#include <ssmax/reference/attention.hpp>
#include <ssmax/reference/attention_backward.hpp>
#include <string>
#include <vector>

#include "support/expect_error.hpp"

namespace ssmax::testing {
namespace {

constexpr index_t B = 2, n_q = 5, n_k = 7, H = 2, H_kv = 1, d = 3;
const float kNegInf = -std::numeric_limits<float>::infinity();

/// Inputs in double, [B, S, H, d], and the logit's extras (their own float storage).
struct problem {
  std::vector<double> q, k, v, dout;
  std::vector<float> bias, slopes{0.5f, 0.25f}, sinks{0.7f, -0.4f};
  problem() : bias(static_cast<size_t>(B * H * n_q * n_k)) {
    std::mt19937 rng(17);
    std::normal_distribution<double> dist(0.0, 1.0);
    for (auto* x : {&q, &dout}) {
      x->resize(static_cast<size_t>(B * n_q * H * d));
      for (auto& e : *x) e = dist(rng);
    }
    for (auto* x : {&k, &v}) {
      x->resize(static_cast<size_t>(B * n_k * H_kv * d));
      for (auto& e : *x) e = dist(rng);
    }
    for (auto& e : bias) e = rng() % 4 == 0 ? kNegInf : static_cast<float>(dist(rng));
  }
  logit_options logit(const std::string& which) const {
    logit_options o;
    const bool all = which == "all";
    if (all || which == "bias") o.bias = logit_bias::dense(bias.data(), B, H, n_q, n_k);
    if (all || which == "alibi") o.alibi_slopes = slopes.data(), o.alibi_heads = H;
    if (all || which == "softcap") o.softcap = 1.2;
    if (all || which == "sinks") o.sinks = sinks.data(), o.sink_heads = H;
    return o;
  }
};

template <class T>
tensor_view<const T> qview(const std::vector<T>& x) {
  return bshd_view(x.data(), B, n_q, H, d);
}
template <class T>
tensor_view<const T> kview(const std::vector<T>& x) {
  return bshd_view(x.data(), B, n_k, H_kv, d);
}

const double kScale = 0.6;

/// L = sum dout . out by the reference forward.
double loss(const problem& pr, const ssmax_policy& policy, const attention_mask& mask,
            const logit_options& logit) {
  const auto r =
      reference::attention(qview(pr.q), kview(pr.k), kview(pr.v), policy, mask, kScale, logit);
  double L = 0.0;
  for (size_t e = 0; e < r.out.size(); ++e) L += r.out[e] * pr.dout[e];
  return L;
}

std::vector<attention_mask> masks() {
  static const index_t lengths[] = {7, 3};
  static bool allowed[H * n_q * n_k];
  for (index_t e = 0; e < H * n_q * n_k; ++e) allowed[e] = e % 3 != 1;
  return {attention_mask::causal_mask(), attention_mask::local_window(1, 2),
          attention_mask::key_padding(lengths),
          attention_mask::boolean(allowed, n_k, 0, n_q * n_k)};
}

TEST(LogitBackwardReference, MatchesFiniteDifferences) {
  const double eps = std::numeric_limits<double>::epsilon();
  for (const char* feature : {"bias", "alibi", "softcap", "sinks", "all"})
    for (const auto& mask : masks()) {
      problem pr;
      std::vector<double> s = {0.5, -0.3}, b = {-0.8, 0.4};  // m < 0 on some rows
      const ssmax_policy policy(per_head::view(s.data(), H), per_head::view(b.data(), H));
      logit_options logit = pr.logit(feature);
      std::vector<float> sinks = pr.sinks;  // moved by the differences below
      if (logit.sinks != nullptr) logit.sinks = sinks.data();
      const auto r = reference::attention_backward(qview(pr.q), kview(pr.k), kview(pr.v),
                                                   qview(pr.dout), policy, mask, kScale, logit);
      const double L0 = std::abs(loss(pr, policy, mask, logit)) + 1.0;
      auto check = [&](auto& x, double analytic, const std::string& name) {
        using X = std::remove_reference_t<decltype(x)>;
        const X x0 = x;
        auto fd = [&](double h) {
          x = static_cast<X>(x0 + h);
          const double up = loss(pr, policy, mask, logit);
          x = static_cast<X>(x0 - h);
          const double down = loss(pr, policy, mask, logit);
          x = x0;
          return (up - down) / (2.0 * h);
        };
        // Float parameters (the sinks) move by exactly representable steps.
        const double h = std::is_same<X, float>::value ? 1.0 / 256 : 1e-4;
        const double one = fd(h), two = fd(2 * h);
        const double tol = 4.0 * std::abs(two - one) / 3.0 + 4.0 * 64.0 * eps * L0 / h;
        EXPECT_NEAR(analytic, one, tol) << feature << ": " << name;
      };
      for (size_t e = 0; e < pr.q.size(); ++e) check(pr.q[e], r.dq[e], "dq" + std::to_string(e));
      for (size_t e = 0; e < pr.k.size(); ++e) check(pr.k[e], r.dk[e], "dk" + std::to_string(e));
      for (size_t e = 0; e < pr.v.size(); ++e) check(pr.v[e], r.dv[e], "dv" + std::to_string(e));
      for (index_t h = 0; h < H; ++h) {
        check(s[h], r.policy.s[h], "ds" + std::to_string(h));
        check(b[h], r.policy.b[h], "db" + std::to_string(h));
        if (logit.sinks != nullptr) check(sinks[h], r.d_sinks[h], "dsink" + std::to_string(h));
      }
    }
}

/// Runs one kernel path on the reference forward's out and lse (rounded to T).
template <class T>
struct run_result {
  std::vector<T> dq, dk, dv;
  std::vector<double> dm, d_sinks;
  policy_gradient pg{H};
};

template <class T>
run_result<T> run(const problem& pr, const attention_options<ssmax_policy>& o) {
  const auto fwd = reference::attention(qview(pr.q), kview(pr.k), kview(pr.v), o.policy, o.mask,
                                        kScale, o.logit);
  auto to_t = [](const std::vector<double>& x) { return std::vector<T>(x.begin(), x.end()); };
  const auto q = to_t(pr.q), k = to_t(pr.k), v = to_t(pr.v), dout = to_t(pr.dout);
  const auto out = to_t(fwd.out), lse = to_t(fwd.lse);
  run_result<T> r;
  r.dq.assign(q.size(), T(-1));
  r.dk.assign(k.size(), T(-1));
  r.dv.assign(v.size(), T(-1));
  r.dm.assign(lse.size(), -1.0);
  r.d_sinks.assign(H, -1.0);
  attention_gradients<T> g{bshd_view(r.dq.data(), B, n_q, H, d),
                           bshd_view(r.dk.data(), B, n_k, H_kv, d),
                           bshd_view(r.dv.data(), B, n_k, H_kv, d), r.dm.data(), &r.pg};
  if (o.logit.sinks != nullptr) g.d_sinks = r.d_sinks.data();
  attention_backward(qview(q), kview(k), kview(v), qview(out), qview(dout), lse.data(), g, o);
  return r;
}

template <class T>  // float or double
class LogitBackwardKernel : public ::testing::Test {};
using element_types_here = ::testing::Types<float, double>;
TYPED_TEST_SUITE(LogitBackwardKernel, element_types_here);

/// Z: the largest |m z| over the rows' seen keys, bias and sink included.
double largest_logit(const problem& pr, const attention_options<ssmax_policy>& o) {
  double Z = 0.0;
  reference::for_each_logit_row(
      qview(pr.q), kview(pr.k), o.mask, o.logit, kScale,
      [&](index_t, index_t h, index_t, index_t, const row_keys& row, const std::vector<double>& z) {
        const double m = std::abs(o.policy.multiplier({row.n, row.position, h}));
        for (double zj : z)
          if (std::isfinite(zj)) Z = std::max(Z, m * std::abs(zj));
        if (o.logit.sinks != nullptr) Z = std::max(Z, m * std::abs(o.logit.sinks[h]));
      });
  return Z;
}

TYPED_TEST(LogitBackwardKernel, BothPathsMatchTheReference) {
  using T = TypeParam;
  const double eps = std::numeric_limits<T>::epsilon();
  for (const char* feature : {"bias", "alibi", "softcap", "sinks", "all"})
    for (const auto& mask : masks()) {
      const problem pr;
      attention_options<ssmax_policy> o;
      o.policy = ssmax_policy(std::vector<double>{0.5, -0.3}, std::vector<double>{-0.8, 0.4});
      o.mask = mask;
      o.logit = pr.logit(feature);
      o.scale = kScale;
      const auto r = reference::attention_backward(qview(pr.q), kview(pr.k), kview(pr.v),
                                                   qview(pr.dout), o.policy, mask, kScale, o.logit);
      const double kappa = eps * (4.0 * (d + 2) * (largest_logit(pr, o) + 1.0) + 2.0 * n_k + 128.0);
      auto near = [&](const auto& got, const std::vector<double>& want, const std::string& w) {
        double size = 1.0;
        for (double x : want) size = std::max(size, std::abs(x));
        for (size_t e = 0; e < want.size(); ++e)
          ASSERT_NEAR(static_cast<double>(got[e]), want[e], kappa * size) << w << "[" << e << "]";
      };
      for (auto path : {attention_path::fused, attention_path::materialised}) {
        o.path = path;
        o.threads = 1;
        const auto got = run<T>(pr, o);
        const std::string w =
            std::string(feature) + (path == attention_path::fused ? " fused " : " materialised ");
        near(got.dq, r.dq, w + "dq");
        near(got.dk, r.dk, w + "dk");
        near(got.dv, r.dv, w + "dv");
        near(got.dm, r.d_multiplier, w + "dm");
        near(got.pg.s, r.policy.s, w + "ds");
        near(got.pg.b, r.policy.b, w + "db");
        if (o.logit.sinks != nullptr) near(got.d_sinks, r.d_sinks, w + "dsink");
        o.threads = 3;
        const auto again = run<T>(pr, o);
        EXPECT_EQ(got.dq, again.dq) << w;
        EXPECT_EQ(got.dk, again.dk) << w;
        EXPECT_EQ(got.d_sinks, again.d_sinks) << w;
      }
    }
}

TEST(LogitBackwardSinks, RowsKeepDlDmAtTinyMultipliers) {
  // One row, 3 keys, d = 64, a sink, m = b (s = 0) tiny; out and lse from the forward, in
  // float. dL/dm = sum_j z_j dy_j + sink dy_sink with D = dout . out as stored: its error
  // e = sum_c |dout_c| |out_c - exact_c| enters as 2 e max(|z|, |sink|) at most when the
  // fused shift z_0 sits among the logits. The old shift (lse - log n) / m ignored the
  // sink's term and sat near log(1 + 1/n) / m: 4% off at m = 1e-6, 28% with a bf16 out at
  // m = 1e-3 (a new user's report). The exact value is written out here in double.
  const index_t n = 3, dim = 64;
  std::mt19937 gen(1);
  std::normal_distribution<float> normal;
  std::vector<float> q(dim), k(n * dim), v(n * dim), dout(dim);
  for (auto* t : {&q, &k, &v, &dout})
    for (auto& x : *t) x = normal(gen);
  const float sink = 0.5f;
  for (double m : {1e-3, 1e-6}) {
    attention_options<ssmax_policy> o;
    o.policy = ssmax_policy(0.0, m);
    o.logit.sinks = &sink, o.logit.sink_heads = 1;
    const auto Q = bshd_view(static_cast<const float*>(q.data()), 1, 1, 1, dim);
    const auto K = bshd_view(static_cast<const float*>(k.data()), 1, n, 1, dim);
    const auto V = bshd_view(static_cast<const float*>(v.data()), 1, n, 1, dim);
    std::vector<float> out(dim);
    float lse = 0.0f;
    attention(Q, K, V, bshd_view(out.data(), 1, 1, 1, dim), o, {&lse, nullptr});
    // Exact, in double: z_j, u_j = dout . v_j, a_j, the exact out and dL/dm.
    const double scale = 1.0 / std::sqrt(static_cast<double>(dim));
    double z[n], u[n], den = std::exp(m * sink), zmax = std::abs(sink);
    for (index_t j = 0; j < n; ++j) {
      double qk = 0.0, dv = 0.0;
      for (index_t c = 0; c < dim; ++c)
        qk += double(q[c]) * k[j * dim + c], dv += double(dout[c]) * v[j * dim + c];
      z[j] = scale * qk, u[j] = dv, den += std::exp(m * z[j]),
      zmax = std::max(zmax, std::abs(z[j]));
    }
    double D = 0.0, dm = 0.0, e = 0.0;
    for (index_t j = 0; j < n; ++j) D += std::exp(m * z[j]) / den * u[j];
    for (index_t j = 0; j < n; ++j) dm += z[j] * std::exp(m * z[j]) / den * (u[j] - D);
    dm -= sink * std::exp(m * sink) / den * D;
    for (index_t c = 0; c < dim; ++c) {
      double exact = 0.0;
      for (index_t j = 0; j < n; ++j) exact += std::exp(m * z[j]) / den * v[j * dim + c];
      e += std::abs(double(dout[c])) * std::abs(out[c] - exact);
    }
    const double eps = std::numeric_limits<float>::epsilon();
    const double bound = 2 * e * zmax + eps * (4.0 * (dim + 2) * (zmax + 1.0) + 2.0 * n + 128.0) *
                                            (std::abs(dm) + 1.0);
    for (auto path : {attention_path::fused, attention_path::materialised}) {
      o.path = path;
      std::vector<float> dq(dim), dk(n * dim), dvv(n * dim);
      double got = 0.0;
      attention_gradients<float> g{bshd_view(dq.data(), 1, 1, 1, dim),
                                   bshd_view(dk.data(), 1, n, 1, dim),
                                   bshd_view(dvv.data(), 1, n, 1, dim), &got};
      attention_backward(Q, K, V, bshd_view(static_cast<const float*>(out.data()), 1, 1, 1, dim),
                         bshd_view(static_cast<const float*>(dout.data()), 1, 1, 1, dim), &lse, g,
                         o);
      EXPECT_NEAR(got, dm, bound) << "m = " << m
                                  << (path == attention_path::fused ? " fused" : " materialised");
    }
  }
}

TEST(LogitBackwardErrors, SinkGradientNeedsSinks) {
  const problem pr;
  std::vector<float> q(pr.q.begin(), pr.q.end()), k(pr.k.begin(), pr.k.end()), lse(B * H * n_q);
  const std::vector<float> out(q.size(), 0.0f), dout(q.size(), 1.0f);
  std::vector<float> dq(q.size(), 7.0f), dk(k.size(), 7.0f), dv(k.size(), 7.0f);
  std::vector<double> d_sinks(H, 7.0);
  attention_gradients<float> g{bshd_view(dq.data(), B, n_q, H, d),
                               bshd_view(dk.data(), B, n_k, H_kv, d),
                               bshd_view(dv.data(), B, n_k, H_kv, d)};
  g.d_sinks = d_sinks.data();
  expect_rejects(
      [&] {
        attention_backward(qview(q), kview(k), kview(k), qview(out), qview(dout), lse.data(), g,
                           attention_options<softmax_policy>{});
      },
      "grads.d_sinks");
  for (float x : dq) EXPECT_EQ(x, 7.0f);
  EXPECT_EQ(d_sinks[0], 7.0);
}

}  // namespace
}  // namespace ssmax::testing
