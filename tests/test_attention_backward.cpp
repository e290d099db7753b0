// Attention backward (attention_backward.hpp, kernels/attention_backward.hpp):
// 1. the double reference (reference/attention_backward.hpp) against central finite
//    differences of the forward reference, for dq, dk, dv, ds_h and db_h, every mask kind
//    x every policy, GQA;
// 2. both kernel paths, float and double, on every architecture, against the reference
//    under the bound below, and fused against materialised;
// 3. thread-count independence, the end-to-end chain with ssmax::attention, and the
//    error contract.
//
// Kernel bound. Each output is a sum of terms (listed in reference/attention_backward.hpp)
// whose factors are the weights a (within eps (2 (d + 2) Z + n + 64) relative: the
// forward's contract, attention.hpp), dot products u = dout . v and D (d roundings each),
// and one or two products; summing adds at most n roundings. So each output is within
//   eps (4 (d + 2) (Z + 1) + 2 n + 128) * magnitude
// of the exact value, with magnitude the same sum over the absolute values of the terms'
// factors (magnitudes() below) and Z = max over rows and keys of sum_c |m scale q_c k_c|.

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

#include "support/architectures.hpp"
#include "support/attention_cases.hpp"
#include "support/expect_error.hpp"

namespace ssmax::testing {
namespace {

/// The mask cases' shape: 2 batch entries, 4 queries, 6 keys, 2 heads.
constexpr case_shape kMaskShape{2, 4, 6, 2};
/// Policy steps of 2, so that the multiplier changes within these short rows.
constexpr policy_sizes kPolicySizes{2, 2, 32};

double max_abs(const std::vector<double>& x) {
  double m = 0.0;
  for (double e : x) m = std::max(m, std::abs(e));
  return m;
}

/// L = sum dout . out with the reference forward.
template <class Policy>
double loss(const random_problem& pr, const Policy& policy, const attention_mask& mask,
            double scale) {
  const auto r = reference::attention(pr.qv(pr.q), pr.kv(pr.k), pr.kv(pr.v), policy, mask, scale);
  reference::compensated_sum L;
  for (size_t e = 0; e < r.out.size(); ++e) L.add(r.out[e] * pr.dout[e]);
  return L.value();
}

// ---------------------------------------------------------------------------------------
// 1. Reference against finite differences.
//
// Along one parameter, each row's scaled logits y = m z move linearly with rate w, and its
// loss term is sum_j u_j softmax(y)_j (u_j = dout . v_j): its third derivative is a third
// cumulant, at most 8 max|u| range(w)^3 (tests/test_row_backward.cpp); the bound below
// takes 16 for margin and sums over the rows the parameter reaches:
//   q entry: one row, w_j = m scale k_jc          -> range <= 2 m scale max|k|
//   k entry: every row of its heads, one logit     -> range <= m scale max|q| per row
//   v entry: L is linear in v                      -> 0
//   s_h:     every row of head h, w_j = log(n) z_j -> range <= 2 log(n) max|z|
//   b_h:     every row of head h, w_j = z_j        -> range <= 2 max|z|
// L is evaluated with error about eps (n_k + d + 16 + 4 max|m z|) sum|dout| max|v|; the
// step minimises h^2 M3 / 6 + f_err / h, and the tolerance is twice that total.

struct fd_bound {
  double third;  ///< bound on |L'''| along the parameter
};

template <class Policy>
void check_by_differences(random_problem pr, const Policy& policy, std::vector<double>* s_values,
                          std::vector<double>* b_values, const attention_mask& mask,
                          const std::string& what) {
  const double eps = std::numeric_limits<double>::epsilon();
  const double scale = 1.0 / std::sqrt(static_cast<double>(pr.d));
  const auto r = reference::attention_backward(pr.qv(pr.q), pr.kv(pr.k), pr.kv(pr.v),
                                               pr.qv(pr.dout), policy, mask, scale);
  const double qmax = max_abs(pr.q), kmax = max_abs(pr.k), vmax = max_abs(pr.v);
  const double umax = static_cast<double>(pr.d) * max_abs(pr.dout) * vmax;
  const double zmax = scale * static_cast<double>(pr.d) * qmax * kmax;
  const double n_max = static_cast<double>(std::max<index_t>({pr.n_k, mask.n_override, 32}));
  const double m_max = 3.0 * std::log(n_max) + 2.0;  // above every multiplier used here
  const double rows = static_cast<double>(pr.B * pr.n_q * pr.H);
  double dout_sum = 0.0;
  for (double e : pr.dout) dout_sum += std::abs(e);
  const double f_err =
      eps * (static_cast<double>(pr.n_k + pr.d) + 16.0 + 4.0 * m_max * zmax) * dout_sum * vmax;

  auto check = [&](double& x, double analytic, double third, const std::string& name) {
    const double h = third > 0 ? std::cbrt(3.0 * f_err / third) : 0.5;
    const double x0 = x;
    x = x0 + h;
    const double up = loss(pr, policy, mask, scale);
    x = x0 - h;
    const double down = loss(pr, policy, mask, scale);
    x = x0;
    const double fd = (up - down) / (2.0 * h);
    const double tol = 2.0 * (h * h * third / 6.0 +
                              (2.0 * f_err + std::abs(analytic) * eps * std::abs(x0)) / (2.0 * h));
    EXPECT_NEAR(analytic, fd, tol) << what << ": " << name;
  };
  const double third_q = 16.0 * umax * std::pow(2.0 * m_max * scale * kmax, 3);
  const double third_k = rows * 16.0 * umax * std::pow(m_max * scale * qmax, 3);
  for (size_t e = 0; e < pr.q.size(); ++e)
    check(pr.q[e], r.dq[e], third_q, "dq[" + std::to_string(e) + "]");
  for (size_t e = 0; e < pr.k.size(); ++e)
    check(pr.k[e], r.dk[e], third_k, "dk[" + std::to_string(e) + "]");
  for (size_t e = 0; e < pr.v.size(); ++e)
    check(pr.v[e], r.dv[e], 0.0, "dv[" + std::to_string(e) + "]");
  const double third_s = rows * 16.0 * umax * std::pow(2.0 * std::log(n_max) * zmax, 3);
  const double third_b = rows * 16.0 * umax * std::pow(2.0 * zmax, 3);
  for (index_t h = 0; h < pr.H; ++h) {
    if (s_values != nullptr)
      check((*s_values)[h], r.policy.s[h], third_s, "ds[" + std::to_string(h) + "]");
    if (b_values != nullptr)
      check((*b_values)[h], r.policy.b[h], third_b, "db[" + std::to_string(h) + "]");
  }
}

TEST(AttentionBackwardReference, MatchesFiniteDifferencesForEveryMaskAndPolicy) {
  const mask_cases masks(kMaskShape);
  for (const auto& mc : masks) {
    const random_problem pr(masks.batch_of(mc), kMaskShape.n_q, kMaskShape.n_k, 2, 1, 3, 11);
    // The per-head policies view their s and b: the differences move them in place.
    for_each_policy_with_parameters(
        kPolicySizes, [&](const char* name, const auto& policy, ssmax_parameters* p) {
          check_by_differences(pr, policy, p ? &p->s : nullptr, p ? &p->b : nullptr, mc.mask,
                               mc.name + "/" + name);
        });
  }
}

TEST(AttentionBackwardReference, SsmaxGradientIsLogNTimesRowGradient) {
  // ds_h = sum over rows of log(n_row) dL/dm_row with n the visible count (causal: p + 1),
  // or fixed_length when the policy sets one.
  const random_problem pr(1, 5, 5, 2, 2, 4, 5);
  const std::vector<double> s = {0.43, 0.7};
  for (index_t fixed : {index_t(0), index_t(64)}) {
    const ssmax_policy policy(s, 0.0, fixed);
    const auto r =
        reference::attention_backward(pr.qv(pr.q), pr.kv(pr.k), pr.kv(pr.v), pr.qv(pr.dout), policy,
                                      attention_mask::causal_mask(), 0.5);
    for (index_t h = 0; h < 2; ++h) {
      double ds = 0.0, db = 0.0;
      for (index_t i = 0; i < 5; ++i) {
        const double n = fixed > 0 ? static_cast<double>(fixed) : static_cast<double>(i + 1);
        ds += std::log(n) * r.d_multiplier[h * 5 + i];
        db += r.d_multiplier[h * 5 + i];
      }
      EXPECT_NEAR(r.policy.s[h], ds, 1e-14 * (1 + std::abs(ds)));
      EXPECT_NEAR(r.policy.b[h], db, 1e-14 * (1 + std::abs(db)));
    }
  }
}

// ---------------------------------------------------------------------------------------
// 2. Kernels against the reference.

/// Magnitudes (sums of absolute terms) of every reference output; see the top.
struct magnitudes {
  std::vector<double> dq, dk, dv, dm;
  double ds_h[8] = {}, db_h[8] = {};
  double Z = 0.0;
  index_t n = 0;
};

template <class Policy>
magnitudes magnitudes_of(const random_problem& pr, const Policy& policy, const attention_mask& mask,
                         double scale) {
  magnitudes g;
  g.dq.assign(pr.q.size(), 0.0);
  g.dk.assign(pr.k.size(), 0.0);
  g.dv.assign(pr.v.size(), 0.0);
  g.dm.assign(static_cast<size_t>(pr.B * pr.H * pr.n_q), 0.0);
  const auto fwd = reference::attention(pr.qv(pr.q), pr.kv(pr.k), pr.kv(pr.v), policy, mask, scale);
  const index_t group = pr.H / pr.H_kv, d = pr.d;
  auto Q = pr.qv(pr.q), K = pr.kv(pr.k), V = pr.kv(pr.v), G = pr.qv(pr.dout);
  for_each_visible_row(mask, pr, [&](index_t b, index_t h, index_t i, const row_keys& row) {
    g.n = std::max(g.n, row.n);
    const double m = std::abs(policy.multiplier({row.n, row.position, h}));  // m < 0 too
    const index_t gk = h / group, at = (b * pr.H + h) * pr.n_q + i;
    double D = 0.0, zr = 0.0;
    for (index_t c = 0; c < d; ++c)
      D += std::abs(G(b, i, h, c) * fwd.out[((b * pr.n_q + i) * pr.H + h) * d + c]);
    for (index_t j = 0; j < pr.n_k; ++j) {
      double z = 0.0;
      for (index_t c = 0; c < d; ++c) z += std::abs(Q(b, i, h, c) * K(b, j, gk, c));
      g.Z = std::max(g.Z, m * scale * z);
      zr = std::max(zr, scale * z);
    }
    const auto lg = gradient_of(policy, {row.n, row.position, h}, 1.0);
    for (index_t j = 0; j < pr.n_k; ++j) {
      const double a = fwd.weights[static_cast<size_t>(at * pr.n_k + j)];
      if (a == 0.0) continue;
      double u = 0.0;
      for (index_t c = 0; c < d; ++c) u += std::abs(G(b, i, h, c) * V(b, j, gk, c));
      const double dy = a * (u + D);
      for (index_t c = 0; c < d; ++c) {
        g.dq[((b * pr.n_q + i) * pr.H + h) * d + c] += m * scale * dy * std::abs(K(b, j, gk, c));
        g.dk[((b * pr.n_k + j) * pr.H_kv + gk) * d + c] += m * scale * dy * std::abs(Q(b, i, h, c));
        g.dv[((b * pr.n_k + j) * pr.H_kv + gk) * d + c] += a * std::abs(G(b, i, h, c));
      }
      g.dm[at] += 2.0 * zr * dy;
      g.ds_h[h] += std::abs(lg.s) * 2.0 * zr * dy;
      g.db_h[h] += std::abs(lg.b) * 2.0 * zr * dy;
    }
  });
  return g;
}

template <class Config>  // kernel_config<Arch, T>
class AttentionBackwardKernel : public kernel_test<Config> {
 protected:
  using base = kernel_test<Config>;
  using typename base::arch;
  using T = typename base::value_type;

  struct outputs {
    std::vector<T> dq, dk, dv;
    std::vector<double> dm;
    policy_gradient pg{1};
  };

  /// Runs one path on the reference forward's out and lse (rounded to T), so that the
  /// backward is tested on its own.
  template <class Policy>
  outputs run(const random_problem& pr, const Policy& policy, const attention_mask& mask,
              attention_path path, int threads) {
    const double scale = 1.0 / std::sqrt(static_cast<double>(pr.d));
    const auto fwd =
        reference::attention(pr.qv(pr.q), pr.kv(pr.k), pr.kv(pr.v), policy, mask, scale);
    auto to_t = [](const std::vector<double>& x) { return std::vector<T>(x.begin(), x.end()); };
    const auto q = to_t(pr.q), k = to_t(pr.k), v = to_t(pr.v), dout = to_t(pr.dout);
    const auto out = to_t(fwd.out), lse = to_t(fwd.lse);
    outputs o;
    o.dq.assign(q.size(), T(-1));
    o.dk.assign(k.size(), T(-1));
    o.dv.assign(v.size(), T(-1));
    o.dm.assign(lse.size(), -1.0);
    o.pg = policy_gradient(pr.H);
    attention_options<Policy> opt;
    opt.policy = policy;
    opt.mask = mask;
    opt.path = path;
    opt.threads = threads;
    attention_gradients<T> grads{bshd_view(o.dq.data(), pr.B, pr.n_q, pr.H, pr.d),
                                 bshd_view(o.dk.data(), pr.B, pr.n_k, pr.H_kv, pr.d),
                                 bshd_view(o.dv.data(), pr.B, pr.n_k, pr.H_kv, pr.d), o.dm.data(),
                                 &o.pg};
    attention_backward<arch>(pr.qv(q), pr.kv(k), pr.kv(v), pr.qv(out), pr.qv(dout), lse.data(),
                             grads, opt);
    return o;
  }

  template <class Policy>
  void check(const random_problem& pr, const Policy& policy, const attention_mask& mask,
             const std::string& what) {
    const double scale = 1.0 / std::sqrt(static_cast<double>(pr.d));
    const auto r = reference::attention_backward(pr.qv(pr.q), pr.kv(pr.k), pr.kv(pr.v),
                                                 pr.qv(pr.dout), policy, mask, scale);
    const auto mag = magnitudes_of(pr, policy, mask, scale);
    const double eps = std::numeric_limits<T>::epsilon();
    const double kappa = eps * (4.0 * static_cast<double>(pr.d + 2) * (mag.Z + 1.0) +
                                2.0 * static_cast<double>(mag.n) + 128.0);
    const double tiny = 16.0 * static_cast<double>(std::numeric_limits<T>::min());
    for (auto path : {attention_path::fused, attention_path::materialised}) {
      const std::string w = what + (path == attention_path::fused ? "/fused" : "/materialised");
      const auto o = run(pr, policy, mask, path, 1);
      auto cmp = [&](const std::vector<T>& got, const std::vector<double>& ref,
                     const std::vector<double>& m, const char* name) {
        int failures = 0;
        for (size_t e = 0; e < got.size(); ++e)
          if (!(std::abs(got[e] - ref[e]) <= kappa * m[e] + tiny) && failures++ < 3)
            ADD_FAILURE() << w << ": " << name << "[" << e << "] = " << got[e] << ", reference "
                          << ref[e] << ", bound " << kappa * m[e] + tiny;
      };
      cmp(o.dq, r.dq, mag.dq, "dq");
      cmp(o.dk, r.dk, mag.dk, "dk");
      cmp(o.dv, r.dv, mag.dv, "dv");
      for (size_t e = 0; e < o.dm.size(); ++e)
        EXPECT_NEAR(o.dm[e], r.d_multiplier[e], kappa * mag.dm[e] + tiny)
            << w << ": dm[" << e << "]";
      for (index_t h = 0; h < pr.H; ++h) {
        EXPECT_NEAR(o.pg.s[h], r.policy.s[h], kappa * mag.ds_h[h] + tiny)
            << w << ": ds[" << h << "]";
        EXPECT_NEAR(o.pg.b[h], r.policy.b[h], kappa * mag.db_h[h] + tiny)
            << w << ": db[" << h << "]";
      }
    }
  }
};
TYPED_TEST_SUITE(AttentionBackwardKernel, kernel_configs, config_name);

TYPED_TEST(AttentionBackwardKernel, EveryMaskTimesEveryPolicyBothPaths) {
  const mask_cases masks(kMaskShape);
  for (const auto& mc : masks)
    for_each_policy(kPolicySizes, [&](const char* name, const auto& policy) {
      for (index_t d : {3, 16}) {
        const random_problem pr(masks.batch_of(mc), kMaskShape.n_q, kMaskShape.n_k, 2, 1, d, 21);
        this->check(pr, policy, mc.mask, mc.name + "/" + name + "/d" + std::to_string(d));
      }
    });
}

TYPED_TEST(AttentionBackwardKernel, LongerRowsCrossKeyBlocks) {
  // More keys than kernels::kKeyBlock and more queries than a query block; causal SSMax.
  const random_problem pr(1, 70, 600, 2, 1, 8, 3);
  this->check(pr, ssmax_policy(0.43, 0.1), attention_mask::causal_mask(), "long causal");
  this->check(pr, softmax_policy{}, attention_mask::sliding_window(300), "long window");
}

TYPED_TEST(AttentionBackwardKernel, TinyMultipliersKeepDlDmAccurate) {
  // The fused path's dL/dm = sum_j (z_j - z_0) dy_j with z_0 = (lse - log n) / m; a shift of
  // lse / m would sit log(n) / m (1e7 here) away from every logit and lose dL/dm to rounding.
  const random_problem pr(1, 24, 24, 2, 1, 8, 9);
  this->check(pr, ssmax_policy(1e-7, 0.0), attention_mask::causal_mask(), "m = 1e-7 log n");
  this->check(pr, ssmax_policy(1e-4, 0.0), attention_mask::none(), "m = 1e-4 log n");
}

TYPED_TEST(AttentionBackwardKernel, FusedEqualsMaterialisedAndThreadsDoNotMatter) {
  using Element = typename TestFixture::T;
  const random_problem pr(2, 40, 300, 4, 2, 8, 9);
  const ssmax_policy policy(0.5, 0.2);
  const auto mask = attention_mask::causal_mask();
  const auto f1 = this->run(pr, policy, mask, attention_path::fused, 1);
  const auto f2 = this->run(pr, policy, mask, attention_path::fused, 2);
  const auto m1 = this->run(pr, policy, mask, attention_path::materialised, 1);
  const auto m2 = this->run(pr, policy, mask, attention_path::materialised, 2);
  EXPECT_EQ(f1.dq, f2.dq);
  EXPECT_EQ(f1.dk, f2.dk);
  EXPECT_EQ(f1.dv, f2.dv);
  EXPECT_EQ(f1.dm, f2.dm);
  EXPECT_EQ(m1.dq, m2.dq);
  EXPECT_EQ(m1.dk, m2.dk);
  EXPECT_EQ(f1.pg.s, f2.pg.s);
  // Fused against materialised: each is within the bound of the reference (checked
  // above), so they are within twice the bound of each other.
  const double scale = 1.0 / std::sqrt(8.0);
  const auto mag = magnitudes_of(pr, policy, mask, scale);
  const double eps = std::numeric_limits<Element>::epsilon();
  const double kappa =
      eps * (4.0 * 10.0 * (mag.Z + 1.0) + 2.0 * static_cast<double>(mag.n) + 128.0);
  for (size_t e = 0; e < f1.dq.size(); ++e)
    ASSERT_NEAR(f1.dq[e], m1.dq[e], 2 * kappa * mag.dq[e] + 1e-30) << e;
  for (size_t e = 0; e < f1.dk.size(); ++e)
    ASSERT_NEAR(f1.dk[e], m1.dk[e], 2 * kappa * mag.dk[e] + 1e-30) << e;
  for (size_t e = 0; e < f1.dv.size(); ++e)
    ASSERT_NEAR(f1.dv[e], m1.dv[e], 2 * kappa * mag.dv[e] + 1e-30) << e;
}

// ---------------------------------------------------------------------------------------
// 3. End to end and the error contract.

TEST(AttentionBackwardApi, ChainsWithTheForwardOperator) {
  // The forward's own out and lse (float) feed the fused backward; the result is within the
  // float bound of the reference.
  const random_problem pr(2, 9, 13, 2, 1, 8, 4);
  std::vector<float> q(pr.q.begin(), pr.q.end()), k(pr.k.begin(), pr.k.end()),
      v(pr.v.begin(), pr.v.end()), dout(pr.dout.begin(), pr.dout.end());
  std::vector<float> out(q.size()), lse(static_cast<size_t>(2 * 2 * 9));
  std::vector<float> dq(q.size()), dk(k.size()), dv(v.size());
  attention_options<ssmax_policy> opt;
  opt.policy = ssmax_policy(0.43, 0.2);
  opt.mask = attention_mask::causal_mask();
  attention_extras<float> extras;
  extras.lse = lse.data();
  attention(pr.qv(q), pr.kv(k), pr.kv(v), bshd_view(out.data(), 2, 9, 2, 8), opt, extras);
  policy_gradient pg(2);
  attention_backward(pr.qv(q), pr.kv(k), pr.kv(v), pr.qv(out), pr.qv(dout), lse.data(),
                     attention_gradients<float>{bshd_view(dq.data(), 2, 9, 2, 8),
                                                bshd_view(dk.data(), 2, 13, 1, 8),
                                                bshd_view(dv.data(), 2, 13, 1, 8), nullptr, &pg},
                     opt);
  const double scale = 1.0 / std::sqrt(8.0);
  const auto r = reference::attention_backward(pr.qv(pr.q), pr.kv(pr.k), pr.kv(pr.v),
                                               pr.qv(pr.dout), opt.policy, opt.mask, scale);
  const auto mag = magnitudes_of(pr, opt.policy, opt.mask, scale);
  const double kappa = std::numeric_limits<float>::epsilon() *
                       (4.0 * 10.0 * (mag.Z + 1.0) + 2.0 * static_cast<double>(mag.n) + 128.0);
  for (size_t e = 0; e < dq.size(); ++e)
    EXPECT_NEAR(dq[e], r.dq[e], kappa * mag.dq[e] + 1e-30) << e;
  for (size_t e = 0; e < dk.size(); ++e)
    EXPECT_NEAR(dk[e], r.dk[e], kappa * mag.dk[e] + 1e-30) << e;
  for (index_t h = 0; h < 2; ++h) EXPECT_NEAR(pg.s[h], r.policy.s[h], kappa * mag.ds_h[h] + 1e-30);
}

TEST(AttentionBackwardApi, RejectsBadArguments) {
  const index_t B = 1, n = 4, H = 2, d = 3;
  std::vector<float> q(B * n * H * d, 0.1f), k = q, v = q, out = q, dout = q, lse(B * H * n);
  std::vector<float> dq = q, dk = q, dv = q;
  auto Q = bshd_view(static_cast<const float*>(q.data()), B, n, H, d);
  auto K = bshd_view(static_cast<const float*>(k.data()), B, n, H, d);
  auto V = bshd_view(static_cast<const float*>(v.data()), B, n, H, d);
  auto O = bshd_view(static_cast<const float*>(out.data()), B, n, H, d);
  auto G = bshd_view(static_cast<const float*>(dout.data()), B, n, H, d);
  auto grads = [&] {
    return attention_gradients<float>{bshd_view(dq.data(), B, n, H, d),
                                      bshd_view(dk.data(), B, n, H, d),
                                      bshd_view(dv.data(), B, n, H, d)};
  };
  expect_rejects([&] { attention_backward(Q, K, V, O, G, nullptr, grads()); }, "lse");
  expect_rejects(
      [&] {
        attention_backward(Q, K, V, O, bshd_view(dout.data(), B, n - 1, H, d), lse.data(), grads());
      },
      "dout");
  {
    auto g = grads();
    g.dk = bshd_view(dk.data(), B, n - 1, H, d);
    expect_rejects([&] { attention_backward(Q, K, V, O, G, lse.data(), g); }, "grads.dk");
  }
  {
    auto g = grads();
    g.dv = bshd_view(dq.data(), B, n, H, d);
    expect_rejects([&] { attention_backward(Q, K, V, O, G, lse.data(), g); }, "grads.dv");
  }
  {
    auto g = grads();
    g.dq = bshd_view(q.data(), B, n, H, d);
    expect_rejects([&] { attention_backward(Q, K, V, O, G, lse.data(), g); }, "grads.dq");
  }
  {
    policy_gradient wrong(3);
    auto g = grads();
    g.policy = &wrong;
    expect_rejects([&] { attention_backward(Q, K, V, O, G, lse.data(), g); }, "grads.policy");
  }
  for (float* aliased : {lse.data(), dout.data(), q.data()}) {  // d_multiplier over an input
    auto g = grads();
    g.d_multiplier = reinterpret_cast<double*>(aliased);
    expect_rejects([&] { attention_backward(Q, K, V, O, G, lse.data(), g); }, "grads.d_multiplier");
  }
  attention_options<ssmax_policy> bad;
  bad.policy = ssmax_policy(std::nan(""));
  expect_rejects([&] { attention_backward(Q, K, V, O, G, lse.data(), grads(), bad); }, "policy.s");
}

}  // namespace
}  // namespace ssmax::testing
