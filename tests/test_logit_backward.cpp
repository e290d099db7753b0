// The attention backward with the logit's extras (logit.hpp: additive bias, ALiBi,
// soft-cap, sinks) on every mask kind (support/attention_cases.hpp), SSMax with m < 0 rows:
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

#include "support/attention_cases.hpp"
#include "support/expect_error.hpp"

namespace ssmax::testing {
namespace {

constexpr index_t B = 2, n_q = 5, n_k = 7, H = 2, H_kv = 1, d = 3;

constexpr case_shape kShape{B, n_q, n_k, H};
const double kScale = 0.6;

/// The extras: a bias with -inf entries (one row hidden entirely), finite sinks (the
/// differences move them), a soft-cap of 1.2, and ALiBi slopes steeper than the standard
/// ones for 2 heads (1/16, 1/256), so that the bias they add moves these short rows.
logit_extras extras() {
  logit_extras e(kShape, 17, {0.7f, -0.4f}, 1.2);
  e.slopes = {0.5f, 0.25f};
  return e;
}

/// Inputs for one mask case: packed sequences take one batch entry.
random_problem problem_for(const mask_case& mc) {
  return random_problem(mc.packed ? 1 : B, n_q, n_k, H, H_kv, d, 17);
}

/// Options with the features named in `feature` (packed sequences: a [1, ...] bias).
template <class Policy>
attention_options<Policy> options_with_features(const Policy& policy, const mask_case& mc,
                                                const logit_extras& in,
                                                const std::string& feature) {
  attention_options<Policy> o = options_for(policy, mc.mask);
  o.logit = in.options(feature, mc.packed ? 1 : B);
  o.scale = kScale;
  return o;
}

/// L = sum dout . out by the reference forward.
template <class Policy>
double loss(const random_problem& pr, const attention_options<Policy>& o) {
  const auto r = reference::attention(pr.qv(pr.q), pr.kv(pr.k), pr.kv(pr.v), o.policy, o.mask,
                                      kScale, o.logit);
  double L = 0.0;
  for (size_t e = 0; e < r.out.size(); ++e) L += r.out[e] * pr.dout[e];
  return L;
}

/// Calls f(mask case, feature, policy, parameters) for every mask kind x logit feature,
/// the kinds other than causal, local, padding and a batch-shared boolean mask with one
/// feature each, in turn; the policy SSMax with per-head s and b, m < 0 on some rows, and
/// parameters the s and b it views.
template <class F>
void for_each_case(F&& f) {
  const mask_cases masks(kShape);
  for_each_mask_feature_policy<ssmax_negative_kind>(
      masks, logit_extras::features(), {H, 2, 32},
      {"causal", "local", "padding", "boolean-batch-shared"},
      [&](const mask_case& mc, const std::string& feature, const char*, const auto& policy,
          ssmax_parameters* parameters) { f(mc, feature, policy, parameters); });
}

TEST(LogitBackwardReference, MatchesFiniteDifferences) {
  const double eps = std::numeric_limits<double>::epsilon();
  const logit_extras in = extras();
  for_each_case([&](const mask_case& mc, const std::string& feature, const auto& policy,
                    ssmax_parameters* p) {
    random_problem pr = problem_for(mc);
    auto o = options_with_features(policy, mc, in, feature);
    std::vector<float> sinks = in.sinks;  // moved by the differences below
    if (o.logit.sinks != nullptr) o.logit.sinks = sinks.data();
    const auto r = reference::attention_backward(pr.qv(pr.q), pr.kv(pr.k), pr.kv(pr.v),
                                                 pr.qv(pr.dout), o.policy, o.mask, kScale, o.logit);
    const double L0 = std::abs(loss(pr, o)) + 1.0;
    const std::string what = feature + " x " + mc.name;
    auto check = [&](auto& x, double analytic, const std::string& name) {
      using X = std::remove_reference_t<decltype(x)>;
      const X x0 = x;
      auto fd = [&](double h) {
        x = static_cast<X>(x0 + h);
        const double up = loss(pr, o);
        x = static_cast<X>(x0 - h);
        const double down = loss(pr, o);
        x = x0;
        return (up - down) / (2.0 * h);
      };
      // Float parameters (the sinks) move by exactly representable steps.
      const double h = std::is_same<X, float>::value ? 1.0 / 256 : 1e-4;
      const double one = fd(h), two = fd(2 * h);
      const double tol = 4.0 * std::abs(two - one) / 3.0 + 4.0 * 64.0 * eps * L0 / h;
      EXPECT_NEAR(analytic, one, tol) << what << ": " << name;
    };
    for (size_t e = 0; e < pr.q.size(); ++e) check(pr.q[e], r.dq[e], "dq" + std::to_string(e));
    for (size_t e = 0; e < pr.k.size(); ++e) check(pr.k[e], r.dk[e], "dk" + std::to_string(e));
    for (size_t e = 0; e < pr.v.size(); ++e) check(pr.v[e], r.dv[e], "dv" + std::to_string(e));
    for (index_t h = 0; h < H; ++h) {
      if (p != nullptr) {
        check(p->s[h], r.policy.s[h], "ds" + std::to_string(h));
        check(p->b[h], r.policy.b[h], "db" + std::to_string(h));
      }
      if (o.logit.sinks != nullptr) check(sinks[h], r.d_sinks[h], "dsink" + std::to_string(h));
    }
  });
}

/// Runs one kernel path on the reference forward's out and lse (rounded to T).
template <class T>
struct run_result {
  std::vector<T> dq, dk, dv;
  std::vector<double> dm, d_sinks;
  policy_gradient pg{H};
};

template <class T, class Policy>
run_result<T> run(const random_problem& pr, const attention_options<Policy>& o) {
  const auto fwd = reference::attention(pr.qv(pr.q), pr.kv(pr.k), pr.kv(pr.v), o.policy, o.mask,
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
  attention_gradients<T> g{bshd_view(r.dq.data(), pr.B, n_q, H, d),
                           bshd_view(r.dk.data(), pr.B, n_k, H_kv, d),
                           bshd_view(r.dv.data(), pr.B, n_k, H_kv, d), r.dm.data(), &r.pg};
  if (o.logit.sinks != nullptr) g.d_sinks = r.d_sinks.data();
  attention_backward(pr.qv(q), pr.kv(k), pr.kv(v), pr.qv(out), pr.qv(dout), lse.data(), g, o);
  return r;
}

template <class T>  // float or double
class LogitBackwardKernel : public ::testing::Test {};
using element_types_here = ::testing::Types<float, double>;
TYPED_TEST_SUITE(LogitBackwardKernel, element_types_here);

/// Z: the largest |m z| over the rows' seen keys, bias and sink included.
template <class Policy>
double largest_logit(const random_problem& pr, const attention_options<Policy>& o) {
  double Z = 0.0;
  reference::for_each_logit_row(
      pr.qv(pr.q), pr.kv(pr.k), o.mask, o.logit, kScale,
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
  const logit_extras in = extras();
  for_each_case([&](const mask_case& mc, const std::string& feature, const auto& policy,
                    ssmax_parameters*) {
    const random_problem pr = problem_for(mc);
    auto o = options_with_features(policy, mc, in, feature);
    const auto r = reference::attention_backward(pr.qv(pr.q), pr.kv(pr.k), pr.kv(pr.v),
                                                 pr.qv(pr.dout), o.policy, o.mask, kScale, o.logit);
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
      const std::string w = feature + " x " + mc.name +
                            (path == attention_path::fused ? " fused " : " materialised ");
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
  });
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
  const random_problem pr(B, n_q, n_k, H, H_kv, d, 17);
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
        attention_backward(pr.qv(q), pr.kv(k), pr.kv(k), pr.qv(out), pr.qv(dout), lse.data(), g,
                           attention_options<softmax_policy>{});
      },
      "grads.d_sinks");
  for (float x : dq) EXPECT_EQ(x, 7.0f);
  EXPECT_EQ(d_sinks[0], 7.0);
}

}  // namespace
}  // namespace ssmax::testing
