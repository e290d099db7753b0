#pragma once
// The attention backward with 16-bit storage (storage.hpp, attention_backward_storage)
// against the double reference backward run on the same (exact) 16-bit values, under the
// bound attention_backward.hpp states:
//   |g - ref| <= E + u_G (|ref| + E) + t_G,    E = kappa * magnitude + [fused] Dterm,
// kappa = eps_float (4 (d + 2) (Z + 1) + 2 n + 128) and magnitude the sums of the absolute
// values of each output's terms (the float backward's bound, tests/test_attention_backward
// .cpp), Dterm what out's 16-bit rounding adds through D_i = dout_i . out_i:
//   e_i = sum_c |dout_ic| (u_O |out_ic| + t_O) per row, then
//   dq_ic += |m| scale e_i sum_j a_ij |k_jc|,  dk_jc += scale sum_i |m_i| e_i a_ij |q_ic|,
//   dL/dm_i += 2 e_i max_j |z_ij|,  ds_h, db_h: the rows' dL/dm terms times |log n|, 1.
// u_X = 2^-8 (bfloat16) or 2^-11 (half), t_X = 2^-25 for half's denormals, both 0 for float.

#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <ssmax/attention_backward.hpp>
#include <ssmax/kernels/convert.hpp>
#include <ssmax/reference/attention.hpp>
#include <ssmax/reference/attention_backward.hpp>
#include <string>
#include <vector>

#include "attention_cases.hpp"
#include "stored_attention.hpp"

namespace ssmax::testing {

/// One backward storage combination: q, k/v, out, dout, the gradients.
template <class Q, class KV, class O, class D, class G>
struct backward_combo {
  using q = Q;
  using kv = KV;
  using out = O;
  using dout = D;
  using grad = G;
};

/// Half an ULP (relative) of a storage type, 0 for float (the float bound holds it).
template <class S>
double unit_of() {
  return out_unit<S>();
}
/// Half the smallest denormal of half (what a rounding into its denormals may add).
template <class S>
double tiny_of() {
  return std::is_same<S, f16>::value ? std::ldexp(1.0, -25) : 0.0;
}

/// Inputs of one backward problem: q, k, v, dout stored in their types, their exact
/// values, and out and lse of the reference forward stored as the kernel receives them
/// (out in O, rounded to nearest even; lse in float).
template <class C>  // backward_combo
struct stored_backward_data : random_problem {
  std::vector<double> out;  ///< the reference's (exact) out
  std::vector<typename C::q> sq;
  std::vector<typename C::kv> sk, sv;
  std::vector<typename C::dout> sdout;
  std::vector<typename C::out> sout;
  std::vector<float> lse;
  reference::attention_result fwd;

  template <class Policy>
  stored_backward_data(index_t batch, index_t nq, index_t nk, index_t heads, index_t kv_heads,
                       index_t dim, unsigned seed, const Policy& policy, const attention_mask& mask)
      : random_problem(batch, nq, nk, heads, kv_heads, dim, seed) {
    using exact = stored_data<combo<f32, f32, f32>>;  // q, k, v, dout: their stored values
    exact::store(q, sq), exact::store(k, sk), exact::store(v, sv), exact::store(dout, sdout);
    fwd = reference::attention(qv(q), kv(k), kv(v), policy, mask, scale());
    out = fwd.out;
    for (double x : fwd.out) sout.push_back(kernels::from_compute<typename C::out>(float(x)));
    for (double x : fwd.lse) lse.push_back(static_cast<float>(x));
  }
};

/// A kernel run's outputs, the gradients widened (exactly) to double.
struct backward_outputs {
  std::vector<double> dq, dk, dv, dm;
  policy_gradient pg{1};
};

/// Runs the backward on the stored data.
template <class Arch, class C, class Policy>
backward_outputs run_stored_backward(const stored_backward_data<C>& x, attention_options<Policy> o,
                                     attention_path path, int threads) {
  using G = typename C::grad;
  std::vector<G> dq(x.sq.size(), kernels::from_compute<G>(-7.0f));
  std::vector<G> dk(x.sk.size(), dq[0]), dv(x.sv.size(), dq[0]);
  backward_outputs r;
  r.dm.assign(x.lse.size(), -1.0);
  r.pg = policy_gradient(x.H);
  o.path = path;
  o.threads = threads;
  attention_gradients<G> grads{bshd_view(dq.data(), x.B, x.n_q, x.H, x.d),
                               bshd_view(dk.data(), x.B, x.n_k, x.H_kv, x.d),
                               bshd_view(dv.data(), x.B, x.n_k, x.H_kv, x.d), r.dm.data(), &r.pg};
  attention_backward<Arch>(x.qv(x.sq), x.kv(x.sk), x.kv(x.sv), x.qv(x.sout), x.qv(x.sdout),
                           x.lse.data(), grads, o);
  auto widen = [](const std::vector<G>& g) {
    std::vector<double> w;
    for (G e : g) w.push_back(kernels::to_compute(e));
    return w;
  };
  r.dq = widen(dq), r.dk = widen(dk), r.dv = widen(dv);
  return r;
}

/// The error bound E of every output (before the gradients' rounding; see the top).
struct backward_bounds {
  std::vector<double> dq, dk, dv, dm;
  std::vector<double> ds, db;
};

template <class C, class Policy>
backward_bounds bounds_of(const stored_backward_data<C>& x, const Policy& policy,
                          const attention_mask& mask, bool fused) {
  const index_t d = x.d, group = x.H / x.H_kv;
  const double scale = x.scale(), u_o = unit_of<typename C::out>();
  const double t_o = tiny_of<typename C::out>();
  backward_bounds mag{std::vector<double>(x.q.size()),
                      std::vector<double>(x.k.size()),
                      std::vector<double>(x.v.size()),
                      std::vector<double>(x.lse.size()),
                      std::vector<double>(static_cast<size_t>(x.H)),
                      std::vector<double>(static_cast<size_t>(x.H))};
  backward_bounds extra = mag;
  const auto Q = x.qv(x.q), K = x.kv(x.k), V = x.kv(x.v), G = x.qv(x.dout);
  double Z = 0.0;
  index_t n_max = 0;
  auto at_q = [&](index_t b, index_t i, index_t h) { return ((b * x.n_q + i) * x.H + h) * d; };
  auto at_k = [&](index_t b, index_t j, index_t g) { return ((b * x.n_k + j) * x.H_kv + g) * d; };
  for_each_visible_row(mask, x, [&](index_t b, index_t h, index_t i, const row_keys& row) {
    n_max = std::max(n_max, row.n);
    const double m = std::abs(policy.multiplier({row.n, row.position, h}));
    const index_t g = h / group, at = (b * x.H + h) * x.n_q + i;
    double D = 0.0, e = 0.0, zr = 0.0;
    for (index_t c = 0; c < d; ++c) {
      const double o = std::abs(x.out[at_q(b, i, h) + c]);
      D += std::abs(G(b, i, h, c)) * o;
      e += std::abs(G(b, i, h, c)) * (u_o * 1.0001 * o + t_o);
    }
    if (!fused) e = 0.0;
    for (index_t j = 0; j < x.n_k; ++j) {
      double z = 0.0;
      for (index_t c = 0; c < d; ++c) z += std::abs(Q(b, i, h, c) * K(b, j, g, c));
      Z = std::max(Z, m * scale * z);
      zr = std::max(zr, scale * z);
    }
    const auto lg = gradient_of(policy, {row.n, row.position, h}, 1.0);
    for (index_t j = 0; j < x.n_k; ++j) {
      const double a = x.fwd.weights[static_cast<size_t>(at * x.n_k + j)];
      if (a == 0.0) continue;
      double u = 0.0;
      for (index_t c = 0; c < d; ++c) u += std::abs(G(b, i, h, c) * V(b, j, g, c));
      const double dy = a * (u + D);
      for (index_t c = 0; c < d; ++c) {
        mag.dq[at_q(b, i, h) + c] += m * scale * dy * std::abs(K(b, j, g, c));
        mag.dk[at_k(b, j, g) + c] += m * scale * dy * std::abs(Q(b, i, h, c));
        mag.dv[at_k(b, j, g) + c] += a * std::abs(G(b, i, h, c));
        extra.dq[at_q(b, i, h) + c] += m * scale * e * a * std::abs(K(b, j, g, c));
        extra.dk[at_k(b, j, g) + c] += m * scale * e * a * std::abs(Q(b, i, h, c));
      }
      mag.dm[at] += 2.0 * zr * dy;
      mag.ds[h] += std::abs(lg.s) * 2.0 * zr * dy;
      mag.db[h] += std::abs(lg.b) * 2.0 * zr * dy;
    }
    extra.dm[at] = 2.0 * e * zr;
    extra.ds[h] += std::abs(lg.s) * 2.0 * e * zr;
    extra.db[h] += std::abs(lg.b) * 2.0 * e * zr;
  });
  const double kappa =
      std::numeric_limits<float>::epsilon() *
      (4.0 * static_cast<double>(d + 2) * (Z + 1.0) + 2.0 * static_cast<double>(n_max) + 128.0);
  const double tiny = 16.0 * static_cast<double>(std::numeric_limits<float>::min());
  auto total = [&](std::vector<double>& m, const std::vector<double>& add) {
    for (size_t e = 0; e < m.size(); ++e) m[e] = 1.01 * (kappa * m[e] + add[e]) + tiny;
  };
  total(mag.dq, extra.dq), total(mag.dk, extra.dk), total(mag.dv, extra.dv);
  total(mag.dm, extra.dm), total(mag.ds, extra.ds), total(mag.db, extra.db);
  return mag;
}

/// Compares one run with the reference: the gradients within E + u_G (|ref| + E) + t_G,
/// dL/dm, ds and db (double outputs) within E.
inline void expect_within(const reference::attention_backward_result& r, const backward_outputs& o,
                          const backward_bounds& e, double u_g, double t_g,
                          const std::string& what) {
  auto cmp = [&](const std::vector<double>& got, const std::vector<double>& ref,
                 const std::vector<double>& bound, const char* name) {
    int failures = 0;
    for (size_t i = 0; i < got.size(); ++i) {
      const double tol = bound[i] + u_g * (std::abs(ref[i]) + bound[i]) + t_g;
      if (!(std::abs(got[i] - ref[i]) <= tol) && failures++ < 3)
        ADD_FAILURE() << what << ": " << name << "[" << i << "] = " << got[i] << ", reference "
                      << ref[i] << ", bound " << tol;
    }
  };
  cmp(o.dq, r.dq, e.dq, "dq");
  cmp(o.dk, r.dk, e.dk, "dk");
  cmp(o.dv, r.dv, e.dv, "dv");
  cmp(o.dm, r.d_multiplier, e.dm, "dL/dm");
  cmp(o.pg.s, r.policy.s, e.ds, "ds");
  cmp(o.pg.b, r.policy.b, e.db, "db");
}

/// Both paths on one problem against the reference on the exact values.
template <class Arch, class C, class Policy>
void check_stored_backward(const stored_backward_data<C>& x, const Policy& policy,
                           const attention_mask& mask, const std::string& what) {
  const auto r = reference::attention_backward(x.qv(x.q), x.kv(x.k), x.kv(x.v), x.qv(x.dout),
                                               policy, mask, x.scale());
  const auto o = options_for(policy, mask);
  for (const bool fused : {true, false}) {
    const auto run = run_stored_backward<Arch>(
        x, o, fused ? attention_path::fused : attention_path::materialised, 1);
    expect_within(r, run, bounds_of(x, policy, mask, fused), unit_of<typename C::grad>(),
                  tiny_of<typename C::grad>(), what + (fused ? " fused" : " materialised"));
  }
}

}  // namespace ssmax::testing
