// Context-parallel ring attention (ssmax/distributed/) against the single-process operator,
// run under mpirun with P = 1, 2, 3, 4 ranks (tests/CMakeLists.txt). Every rank runs every
// test in the same order; checks are EXPECT_*, so a failing rank still joins the collectives
// the others wait in, and an exception no check expects ends the job (main). Rank 0 prints
// gtest's report, the others their failures; any failure fails every rank's exit code.
//
// Every rank builds the same whole sequence (same seed), runs ssmax::attention and
// ssmax::attention_backward on it, cuts out its slice (layout.hpp) and runs the ring; its
// rows must match the single-process rows within these bounds, derived from the contracts:
//
// Forward. Each partial (one ring pair) obeys attention.hpp's bound for the keys it sees,
//   |out_p - exact_p| <= eps max|v| (2 (d + 2) Z + n + 64) = e_out,
//   |lse_p - exact_p| <= eps (2 (d + 2) Z + |lse| + n + 64)  = e_lse
// (Z and |lse| of the whole row bound those of any part: a part's logits are some of the
// row's, and its lse is at most the row's). The merge forms sum_p w_p out_p with
// w_p = exp(lse_p - lse); an error e in the lses changes each w_p by a relative 2 e to first
// order, so the merged output moves by at most 2 e_lse max|v| (sum w_p = 1), and the
// merge's own double arithmetic adds a few ulp of double; the final rounding to T half an
// ulp. The single-process result has its own e_out. So
//   |out_ring - out_one| <= 2 e_out + 2 e_lse max|v| + eps max|v| + (n + d) denorm_min,
//   |lse_ring - lse_one| <= 2 e_lse + eps |lse|.
//
// Backward (fed the single-process out and lse, so only the backward is compared). Both
// compute the same terms dy_ij = a_ij (u_ij - D_i) and sum them in different orders and
// blocks. Each term carries a relative error of at most
//   rho = eps (exp_ulp + 4 + 2 (d + 2) (Z + 1) + 2 |lse| + max |m z| + s),
// (the weight exp(m z - lse): the logit's dot product, the exp, the argument; u and D: d + 2
// roundings each; s = the blocked sums' ulp), and each side's sum adds s ulp of the sum of
// the terms' magnitudes. So every gradient element is within 2 rho A of the other side,
// with A the sum of its terms' magnitudes computed from the exact weights:
//   dq_i: |m| scale sum_j a_ij (|u_ij| + |D_i|) |k_j|,  dk_j: the same over i with |q_i|,
//   dv_j: sum_i a_ij |dout_i|,
//   dL/dm_i: sum_j |z_ij - z_0| a_ij (|u_ij| + |D_i|), the kernel's z_0 = (lse_i - log n_i) / m,
// and ds_h, db_h sum |log n| and 1 times dL/dm's bound over the rows of head h.

#include <gtest/gtest.h>
#include <mpi.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <ctime>
#include <functional>
#include <iomanip>
#include <iterator>
#include <limits>
#include <ostream>
#include <random>
#include <ssmax/attention_backward.hpp>
#include <ssmax/distributed/ring_attention.hpp>
#include <ssmax/reference/attention.hpp>
#include <sstream>
#include <string>
#include <tuple>
#include <vector>

namespace {

using namespace ssmax;
using distributed::layout;

int g_rank = 0, g_ranks = 1;  // set by main

/// One quantity's elements outside their bound: each element is compared, the failures
/// counted and the first few described, for one EXPECT per quantity and case.
struct outside_bound {
  const char* quantity;
  long checked = 0, failed = 0;
  std::ostringstream first;
  explicit outside_bound(const char* name) : quantity(name) {}
  /// Counts element (b, head, token, c): `within` its bound, or off by `by` against `bound`.
  void check(bool within, index_t b, index_t head, index_t token, index_t c, double by,
             double bound) {
    ++checked;
    if (!within && failed++ < 5)
      first << std::setprecision(17) << "\n  (b, head, token, c) = (" << b << ", " << head << ", "
            << token << ", " << c << "): off by " << by << ", bound " << bound;
  }
  friend std::ostream& operator<<(std::ostream& os, const outside_bound& o) {
    return os << o.failed << " of " << o.checked << ' ' << o.quantity
              << " elements outside the bound, the first:" << o.first.str();
  }
};

/// One problem's shapes.
struct shape {
  index_t N, B, H, H_kv, d;
};

/// Copies the rows of the rank's slice out of a [B, N, H, d] tensor into [B, S_r, H, d].
template <class T>
std::vector<T> cut(const std::vector<T>& whole, const shape& s, index_t heads,
                   const distributed::slice& sl) {
  std::vector<T> part;
  const index_t row = heads * s.d;
  for (index_t b = 0; b < s.B; ++b)
    for (int c = 0; c < sl.count; ++c) {
      const auto from = whole.begin() + (b * s.N + sl.parts[c].begin) * row;
      part.insert(part.end(), from, from + sl.parts[c].length * row);
    }
  return part;
}

/// Global position of the rank's local row i.
index_t global_row(const distributed::slice& sl, index_t i) {
  return i < sl.parts[0].length ? sl.parts[0].begin + i
                                : sl.parts[1].begin + (i - sl.parts[0].length);
}

/// Exact (double) weights of the whole problem and per-row quantities for the bounds.
struct exact_rows {
  std::vector<double> a;  ///< [B, H, N, N] weights
  std::vector<double> m, Z, lse, vmax;
  std::vector<index_t> n;
};

template <class T, class Policy>
exact_rows exact(const shape& s, const std::vector<T>& q, const std::vector<T>& k,
                 const std::vector<T>& v, const attention_options<Policy>& o) {
  exact_rows e;
  const index_t N = s.N, H = s.H, d = s.d, group = s.H / s.H_kv;
  const double scale = 1.0 / std::sqrt(static_cast<double>(d));
  e.a.assign(static_cast<size_t>(s.B * H * N * N), 0.0);
  const auto rows = static_cast<size_t>(s.B * H * N);
  e.m.assign(rows, 0.0), e.Z.assign(rows, 0.0), e.lse.assign(rows, 0.0), e.vmax.assign(rows, 0.0);
  e.n.assign(rows, 0);
  for (index_t b = 0; b < s.B; ++b) {
    const sequence_span span = sequence_of(o.mask, b, N, N);
    for (index_t h = 0; h < H; ++h)
      for (index_t i = 0; i < N; ++i) {
        const row_keys r = visible_keys(o.mask, span, h, i);
        const size_t at = static_cast<size_t>((b * H + h) * N + i);
        e.n[at] = r.n;
        if (r.visible == 0) continue;
        const double m = o.policy.multiplier({r.n, r.position, h});
        std::vector<double> z(static_cast<size_t>(N), 0.0);
        double mx = -1e300, Z = 0.0;
        for (index_t j = r.begin; j < r.end; ++j) {
          double dot = 0.0, ab = 0.0;
          for (index_t c = 0; c < d; ++c) {
            const double qc = q[static_cast<size_t>(((b * N + i) * H + h) * d + c)];
            const double kc = k[static_cast<size_t>(((b * N + j) * s.H_kv + h / group) * d + c)];
            dot += qc * kc;
            ab += std::abs(m * scale * qc * kc);
            e.vmax[at] =
                std::max(e.vmax[at],
                         std::abs(static_cast<double>(
                             v[static_cast<size_t>(((b * N + j) * s.H_kv + h / group) * d + c)])));
          }
          z[static_cast<size_t>(j)] = m * scale * dot;
          mx = std::max(mx, z[static_cast<size_t>(j)]);
          Z = std::max(Z, ab);
        }
        double sum = 0.0;
        for (index_t j = r.begin; j < r.end; ++j) sum += std::exp(z[static_cast<size_t>(j)] - mx);
        for (index_t j = r.begin; j < r.end; ++j)
          e.a[at * static_cast<size_t>(N) + static_cast<size_t>(j)] =
              std::exp(z[static_cast<size_t>(j)] - mx) / sum;
        e.m[at] = m, e.Z[at] = Z, e.lse[at] = mx + std::log(sum);
      }
  }
  return e;
}

/// Random values in [-1, 1].
template <class T>
std::vector<T> random_values(index_t count, unsigned seed) {
  std::mt19937 gen(seed);
  std::uniform_real_distribution<double> u(-1.0, 1.0);
  std::vector<T> x(static_cast<size_t>(count));
  for (auto& e : x) e = static_cast<T>(u(gen));
  return x;
}

template <class T, class Policy>
void run_case(const shape& s, layout kind, const attention_options<Policy>& o) {
  const double eps = std::numeric_limits<T>::epsilon();
  const index_t N = s.N, B = s.B, H = s.H, H_kv = s.H_kv, d = s.d;
  const auto q = random_values<T>(B * N * H * d, 11), k = random_values<T>(B * N * H_kv * d, 12),
             v = random_values<T>(B * N * H_kv * d, 13), dout = random_values<T>(B * N * H * d, 14);
  // The single-process operator on the whole sequence.
  std::vector<T> out1(q.size()), lse1(static_cast<size_t>(B * H * N));
  attention(bshd_view(q.data(), B, N, H, d), bshd_view(k.data(), B, N, H_kv, d),
            bshd_view(v.data(), B, N, H_kv, d), bshd_view(out1.data(), B, N, H, d), o,
            {lse1.data(), nullptr});
  std::vector<T> dq1(q.size()), dk1(k.size()), dv1(k.size());
  policy_gradient pg1(H);
  attention_backward(bshd_view(q.data(), B, N, H, d), bshd_view(k.data(), B, N, H_kv, d),
                     bshd_view(v.data(), B, N, H_kv, d), bshd_view(out1.data(), B, N, H, d),
                     bshd_view(dout.data(), B, N, H, d), lse1.data(),
                     attention_gradients<T>{bshd_view(dq1.data(), B, N, H, d),
                                            bshd_view(dk1.data(), B, N, H_kv, d),
                                            bshd_view(dv1.data(), B, N, H_kv, d), nullptr, &pg1},
                     o);
  // The ring on this rank's slice.
  const auto sl = distributed::slice_of(kind, N, g_ranks, g_rank);
  const index_t S = sl.length();
  const auto ql = cut(q, s, H, sl), kl = cut(k, s, H_kv, sl), vl = cut(v, s, H_kv, sl),
             dol = cut(dout, s, H, sl), o1l = cut(out1, s, H, sl);
  std::vector<T> out(ql.size()), lse(static_cast<size_t>(B * H * S));
  distributed::ring_context ctx;
  ctx.kind = kind;
  distributed::ring_attention(bshd_view(ql.data(), B, S, H, d), bshd_view(kl.data(), B, S, H_kv, d),
                              bshd_view(vl.data(), B, S, H_kv, d),
                              bshd_view(out.data(), B, S, H, d), o, lse.data(), ctx);
  std::vector<T> lse1l(lse.size());
  for (index_t bh = 0; bh < B * H; ++bh)
    for (index_t i = 0; i < S; ++i)
      lse1l[static_cast<size_t>(bh * S + i)] =
          lse1[static_cast<size_t>(bh * N + global_row(sl, i))];
  std::vector<T> dq(ql.size()), dk(kl.size()), dv(kl.size());
  policy_gradient pg(H);
  distributed::ring_attention_backward(
      bshd_view(ql.data(), B, S, H, d), bshd_view(kl.data(), B, S, H_kv, d),
      bshd_view(vl.data(), B, S, H_kv, d), bshd_view(o1l.data(), B, S, H, d),
      bshd_view(dol.data(), B, S, H, d), lse1l.data(),
      attention_gradients<T>{bshd_view(dq.data(), B, S, H, d), bshd_view(dk.data(), B, S, H_kv, d),
                             bshd_view(dv.data(), B, S, H_kv, d), nullptr, &pg},
      o, ctx);

  const exact_rows e = exact(s, q, k, v, o);
  const double scale = 1.0 / std::sqrt(static_cast<double>(d)), s_ulp = 40.0;
  const index_t group = H / H_kv;
  // Bound quantities per global row (b, h, i) and per key (b, g, j).
  std::vector<double> A_dq(static_cast<size_t>(B * H * N), 0.0), A_dm(A_dq.size(), 0.0),
      rho(A_dq.size(), 0.0);
  std::vector<double> A_dk(static_cast<size_t>(B * H_kv * N), 0.0), A_dv(A_dk.size(), 0.0);
  double rho_max = 0.0;
  for (index_t b = 0; b < B; ++b)
    for (index_t h = 0; h < H; ++h)
      for (index_t i = 0; i < N; ++i) {
        const size_t at = static_cast<size_t>((b * H + h) * N + i);
        if (e.m[at] == 0.0 && e.lse[at] == 0.0) continue;
        double D = 0.0, mz = 0.0;
        for (index_t c = 0; c < d; ++c)
          D += static_cast<double>(dout[static_cast<size_t>(((b * N + i) * H + h) * d + c)]) *
               out1[static_cast<size_t>(((b * N + i) * H + h) * d + c)];
        const double shift =  // the fused backward's z_0 (kernels/attention_backward.hpp)
            e.m[at] != 0
                ? (e.lse[at] - std::log(std::max<double>(1.0, static_cast<double>(e.n[at])))) /
                      e.m[at]
                : 0.0;
        for (index_t j = 0; j < N; ++j) {
          const double a = e.a[at * static_cast<size_t>(N) + static_cast<size_t>(j)];
          if (a == 0) continue;
          double u = 0.0, qk = 0.0, kn = 0.0, qn = 0.0, dn = 0.0;
          for (index_t c = 0; c < d; ++c) {
            const double qc = q[static_cast<size_t>(((b * N + i) * H + h) * d + c)];
            const double kc = k[static_cast<size_t>(((b * N + j) * H_kv + h / group) * d + c)];
            const double dc = dout[static_cast<size_t>(((b * N + i) * H + h) * d + c)];
            u += dc * v[static_cast<size_t>(((b * N + j) * H_kv + h / group) * d + c)];
            qk += qc * kc;
            kn = std::max(kn, std::abs(kc)), qn = std::max(qn, std::abs(qc)),
            dn = std::max(dn, std::abs(dc));
          }
          const double t = a * (std::abs(u) + std::abs(D));
          mz = std::max(mz, std::abs(e.m[at] * scale * qk));
          A_dq[at] += std::abs(e.m[at]) * scale * t * kn;
          A_dm[at] += std::abs(scale * qk - shift) * t;
          const size_t kj = static_cast<size_t>((b * H_kv + h / group) * N + j);
          A_dk[kj] += std::abs(e.m[at]) * scale * t * qn;
          A_dv[kj] += a * dn;
        }
        rho[at] = eps * (2.0 + 4.0 + 2.0 * (d + 2) * (e.Z[at] + 1.0) + 2.0 * std::abs(e.lse[at]) +
                         mz + s_ulp);
        rho_max = std::max(rho_max, rho[at]);
      }
  const double tiny = 64.0 * std::numeric_limits<T>::min();
  outside_bound lse_out{"lse"}, out_out{"out"}, dq_out{"dq"}, dk_out{"dk"}, dv_out{"dv"};
  // Forward and dq: this rank's rows.
  for (index_t b = 0; b < B; ++b)
    for (index_t h = 0; h < H; ++h)
      for (index_t i = 0; i < S; ++i) {
        const index_t gi = global_row(sl, i);
        const size_t at = static_cast<size_t>((b * H + h) * N + gi);
        const double n = static_cast<double>(e.n[at]), Zt = 2.0 * (d + 2) * e.Z[at];
        const double e_out = eps * e.vmax[at] * (Zt + n + 64),
                     e_lse = eps * (Zt + std::abs(e.lse[at]) + n + 64);
        const double tol_out = 2 * e_out + 2 * e_lse * e.vmax[at] + eps * e.vmax[at] +
                               (n + d) * std::numeric_limits<T>::denorm_min();
        const double l_ring = lse[static_cast<size_t>((b * H + h) * S + i)], l_one = lse1[at];
        const double tol_lse = 2 * e_lse + eps * std::abs(e.lse[at]);
        lse_out.check(l_ring == l_one || std::abs(l_ring - l_one) <= tol_lse, b, h, gi, 0,
                      std::abs(l_ring - l_one), tol_lse);
        for (index_t c = 0; c < d; ++c) {
          const size_t lo = static_cast<size_t>(((b * S + i) * H + h) * d + c),
                       go = static_cast<size_t>(((b * N + gi) * H + h) * d + c);
          const double d_out = std::abs(static_cast<double>(out[lo]) - out1[go]),
                       d_dq = std::abs(static_cast<double>(dq[lo]) - dq1[go]),
                       tol_dq = 2 * rho[at] * A_dq[at] + tiny;
          out_out.check(d_out <= tol_out, b, h, gi, c, d_out, tol_out);
          dq_out.check(d_dq <= tol_dq, b, h, gi, c, d_dq, tol_dq);
        }
      }
  // dk and dv: this rank's keys.
  for (index_t b = 0; b < B; ++b)
    for (index_t g = 0; g < H_kv; ++g)
      for (index_t j = 0; j < S; ++j) {
        const index_t gj = global_row(sl, j);
        const size_t kj = static_cast<size_t>((b * H_kv + g) * N + gj);
        for (index_t c = 0; c < d; ++c) {
          const size_t lo = static_cast<size_t>(((b * S + j) * H_kv + g) * d + c),
                       go = static_cast<size_t>(((b * N + gj) * H_kv + g) * d + c);
          const double d_dk = std::abs(static_cast<double>(dk[lo]) - dk1[go]),
                       d_dv = std::abs(static_cast<double>(dv[lo]) - dv1[go]),
                       tol_dk = 2 * rho_max * A_dk[kj] + tiny,
                       tol_dv = 2 * rho_max * A_dv[kj] + tiny;
          dk_out.check(d_dk <= tol_dk, b, g, gj, c, d_dk, tol_dk);
          dv_out.check(d_dv <= tol_dv, b, g, gj, c, d_dv, tol_dv);
        }
      }
  EXPECT_EQ(lse_out.failed, 0) << lse_out;
  EXPECT_EQ(out_out.failed, 0) << out_out;
  EXPECT_EQ(dq_out.failed, 0) << dq_out;
  EXPECT_EQ(dk_out.failed, 0) << dk_out;
  EXPECT_EQ(dv_out.failed, 0) << dv_out;
  // ds and db: every head, all-reduced over the ranks.
  for (index_t h = 0; h < H; ++h) {
    double tol_s = 0.0, tol_b = 0.0;
    for (index_t b = 0; b < B; ++b)
      for (index_t i = 0; i < N; ++i) {
        const size_t at = static_cast<size_t>((b * H + h) * N + i);
        tol_b += 2 * rho[at] * A_dm[at];
        tol_s +=
            2 * rho[at] * A_dm[at] * std::log(std::max<double>(1.0, static_cast<double>(e.n[at])));
      }
    const size_t hh = static_cast<size_t>(h);
    EXPECT_LE(std::abs(pg.s[hh] - pg1.s[hh]), tol_s + 1e-300)
        << "ds head " << h << ": " << pg.s[hh] << " vs " << pg1.s[hh];
    EXPECT_LE(std::abs(pg.b[hh] - pg1.b[hh]), tol_b + 1e-300)
        << "db head " << h << ": " << pg.b[hh] << " vs " << pg1.b[hh];
  }
}

/// The mask of a case.
struct mask_case {
  const char* name;
  bool causal;
  index_t window;
  bool padding;
  index_t left = -1, right = -1;  ///< local (left, right) window; -1: none
};

const mask_case masks[] = {{"none", false, 0, false},
                           {"causal", true, 0, false},
                           {"causal_padding", true, 0, true},
                           {"padding", false, 0, true},
                           {"window", true, 5, false},
                           {"local", false, 0, false, 4, 3},
                           {"local_padding", false, 0, true, 9, 0},
                           {"causal_local", true, 0, false, 6, 0},
                           {"local_one_side", false, 0, false, 0, 11}};
const char* const policies[] = {"softmax", "ssmax", "qwen", "mistral"};

/// A case: layout, element type (double or float), index into masks, index into policies.
using ring_case = std::tuple<layout, bool, int, int>;

/// One case: the mask and policy (index into policies) for one element type and layout.
template <class T>
void run_ring_case(layout kind, const mask_case& mc, int policy) {
  static const index_t lengths[2] = {30, 19};  // global key lengths (padding); N = 37
  const shape s{37, 2, 4, 2, 16};
  attention_mask m;
  m.causal = mc.causal;
  m.window = mc.window;
  if (mc.padding) m.key_lengths = lengths;
  if (mc.left >= 0) {
    m.local = true;
    m.window_left = mc.left, m.window_right = mc.right;
  }
  const auto run = [&](auto o) {
    o.mask = m, o.threads = 1;
    run_case<T>(s, kind, o);
  };
  attention_options<ssmax_policy> o1;
  o1.policy = ssmax_policy(std::vector<double>{0.3, 0.45, 0.6, 0.2},
                           std::vector<double>{0.0, 0.1, 0.5, 0.05});
  attention_options<qwen_logn_policy> o2;  // positions matter: m grows past position 3
  o2.policy.train_length = 4;
  attention_options<mistral_policy> o3;
  o3.policy.original_length = 8, o3.policy.beta = 0.5;
  if (policy == 0) return run(attention_options<softmax_policy>{});
  if (policy == 1) return run(o1);
  if (policy == 2) return run(o2);
  run(o3);
}

class RingMatchesSingleProcess : public ::testing::TestWithParam<ring_case> {};

TEST_P(RingMatchesSingleProcess, OutLseAndGradientsWithinTheirBounds) {
  const auto [kind, is_double, mask, policy] = GetParam();
  if (is_double)
    run_ring_case<double>(kind, masks[mask], policy);
  else
    run_ring_case<float>(kind, masks[mask], policy);
}

std::string ring_case_name(const ::testing::TestParamInfo<ring_case>& info) {
  const auto [kind, is_double, mask, policy] = info.param;
  return std::string(kind == layout::zigzag ? "zigzag_" : "contiguous_") + masks[mask].name +
         (is_double ? "_double_" : "_float_") + policies[policy];
}

INSTANTIATE_TEST_SUITE_P(EveryLayoutTypeMaskAndPolicy, RingMatchesSingleProcess,
                         ::testing::Combine(::testing::Values(layout::contiguous, layout::zigzag),
                                            ::testing::Bool(),
                                            ::testing::Range(0, int(std::size(masks))),
                                            ::testing::Range(0, int(std::size(policies)))),
                         ring_case_name);

/// Runs call (collective); every rank must throw argument_error naming `argument` (none
/// when empty), with the same message on every rank (checked against rank 0's). Returns the
/// message. The broadcast runs whatever the call did, so no rank is left waiting.
template <class Call>
std::string expect_same_error(const std::string& argument, Call&& call) {
  std::string what = "(no error)", arg;
  try {
    call();
  } catch (const argument_error& e) {
    what = e.what();
    arg = e.argument();
  }
  EXPECT_EQ(arg, argument) << "the error: " << what;
  std::string root = what;
  int length = static_cast<int>(root.size());
  MPI_Bcast(&length, 1, MPI_INT, 0, MPI_COMM_WORLD);
  root.resize(static_cast<size_t>(length));
  MPI_Bcast(root.data(), length, MPI_CHAR, 0, MPI_COMM_WORLD);
  EXPECT_EQ(root, what) << "rank 0's message against this rank's";
  return what;
}

/// Bad input on one rank or all: every rank throws the same error, none deadlocks, and no
/// call writes out or lse (TearDown). The buffers are larger than the calls read, as when
/// one rank's shapes differ.
class RingRejectsBadInput : public ::testing::Test {
 protected:
  static constexpr index_t N = 24, B = 1, H = 4, H_kv = 2, d = 8;
  const distributed::slice sl = distributed::slice_of(layout::contiguous, N, g_ranks, g_rank);
  const index_t S = sl.length();
  const bool mine = g_rank == g_ranks - 1;  ///< the rank whose input differs
  std::vector<float> q = std::vector<float>(static_cast<size_t>(B * (S + 1) * H * (d + 1)), 0.5f),
                     k = q, v = q, out = std::vector<float>(q.size(), 7.0f),
                     lse = std::vector<float>(static_cast<size_t>(B * H * (S + 1)), 7.0f);

  void run(index_t seq, index_t heads, index_t kv_heads, index_t dim, float* o, layout kind) {
    distributed::ring_context ctx;
    ctx.kind = kind;
    attention_options<softmax_policy> opt;
    opt.mask.causal = true, opt.threads = 1;
    distributed::ring_attention(bshd_view(q.data(), B, seq, heads, dim),
                                bshd_view(k.data(), B, seq, kv_heads, dim),
                                bshd_view(v.data(), B, seq, kv_heads, dim),
                                bshd_view(o, B, seq, heads, dim), opt, lse.data(), ctx);
  }
  template <class Options>
  void forward_with(Options opt) {
    opt.mask.causal = true, opt.threads = 1;
    distributed::ring_attention(bshd_view(q.data(), B, S, H, d), bshd_view(k.data(), B, S, H_kv, d),
                                bshd_view(v.data(), B, S, H_kv, d),
                                bshd_view(out.data(), B, S, H, d), opt, lse.data(),
                                distributed::ring_context{});
  }
  void TearDown() override {
    EXPECT_TRUE(std::all_of(out.begin(), out.end(), [](float x) { return x == 7.0f; }))
        << "a rejected call wrote out";
    EXPECT_TRUE(std::all_of(lse.begin(), lse.end(), [](float x) { return x == 7.0f; }))
        << "a rejected call wrote lse";
  }
};

// Slices from cache_view carry lengths the ring does not take.
TEST_F(RingRejectsBadInput, KeysFromACacheViewWithSequenceLengths) {
  expect_same_error("k", [&] {
    const std::vector<index_t> lengths(B, S);
    distributed::ring_attention(
        bshd_view(q.data(), B, S, H, d), cache_view(k.data(), B, S, H_kv, d, lengths.data()),
        cache_view(v.data(), B, S, H_kv, d, lengths.data()), bshd_view(out.data(), B, S, H, d),
        attention_options<softmax_policy>{}, lse.data(), distributed::ring_context{});
  });
}

TEST_F(RingRejectsBadInput, LseOverlappingTheKeyLengths) {
  expect_same_error("lse", [&] {
    attention_options<softmax_policy> opt;
    auto* lengths = reinterpret_cast<index_t*>(lse.data() + 2);
    const float saved[2] = {lse[2], lse[3]};
    lengths[0] = N;
    opt.mask.key_lengths = lengths;
    try {
      distributed::ring_attention(
          bshd_view(q.data(), B, S, H, d), bshd_view(k.data(), B, S, H_kv, d),
          bshd_view(v.data(), B, S, H_kv, d), bshd_view(out.data(), B, S, H, d), opt, lse.data(),
          distributed::ring_context{});
    } catch (...) {
      lse[2] = saved[0], lse[3] = saved[1];
      throw;
    }
  });
}

// A local error on the last rank only.
TEST_F(RingRejectsBadInput, NullOutOnTheLastRank) {
  expect_same_error("out",
                    [&] { run(S, H, H_kv, d, mine ? nullptr : out.data(), layout::contiguous); });
}

/// Input that differs between ranks (the last rank's): needs two ranks or more. Unchecked,
/// these would crash (MPI_ERR_TRUNCATE: float against double), hang (grads.policy on some
/// ranks: only they all-reduce ds and db) or silently mix rows.
class RingRejectsInputDifferingAcrossRanks : public RingRejectsBadInput {
 protected:
  void SetUp() override {
    if (g_ranks < 2) GTEST_SKIP() << "needs two ranks or more";
  }
};

TEST_F(RingRejectsInputDifferingAcrossRanks, Heads) {
  expect_same_error("q", [&] { run(S, mine ? 2 : H, H_kv, d, out.data(), layout::contiguous); });
}

TEST_F(RingRejectsInputDifferingAcrossRanks, KvHeads) {
  expect_same_error("k", [&] { run(S, H, mine ? 1 : H_kv, d, out.data(), layout::contiguous); });
}

TEST_F(RingRejectsInputDifferingAcrossRanks, HeadDimension) {
  expect_same_error("q",
                    [&] { run(S, H, H_kv, mine ? d + 1 : d, out.data(), layout::contiguous); });
}

TEST_F(RingRejectsInputDifferingAcrossRanks, Layout) {
  expect_same_error("context.kind", [&] {
    run(S, H, H_kv, d, out.data(), mine ? layout::zigzag : layout::contiguous);
  });
}

TEST_F(RingRejectsInputDifferingAcrossRanks, ElementType) {
  expect_same_error("q", [&] {
    if (!mine) return run(S, H, H_kv, d, out.data(), layout::contiguous);
    std::vector<double> x(q.size(), 0.5), o(q.size(), 7.0), l(lse.size(), 7.0);
    attention_options<softmax_policy> opt;
    opt.mask.causal = true, opt.threads = 1;
    const auto view = [&](double* at, index_t heads) { return bshd_view(at, B, S, heads, d); };
    distributed::ring_attention(view(x.data(), H), view(x.data(), H_kv), view(x.data(), H_kv),
                                view(o.data(), H), opt, l.data(), distributed::ring_context{});
  });
}

TEST_F(RingRejectsInputDifferingAcrossRanks, Scale) {
  expect_same_error("options.scale", [&] {
    attention_options<softmax_policy> opt;
    if (mine) opt.scale = 2.0;
    forward_with(opt);
  });
}

TEST_F(RingRejectsInputDifferingAcrossRanks, PolicyType) {
  expect_same_error("options.policy", [&] {
    if (mine) return forward_with(attention_options<ssmax_policy>{});
    forward_with(attention_options<softmax_policy>{});
  });
}

TEST_F(RingRejectsInputDifferingAcrossRanks, GradsPolicyOnSomeRanks) {
  expect_same_error("grads.policy", [&] {
    std::vector<float> dq(q.size()), dk(q.size()), dv(q.size()), dout(q.size(), 0.25f);
    attention_options<ssmax_policy> opt;
    opt.mask.causal = true, opt.threads = 1;
    policy_gradient pg(H);
    attention_gradients<float> g{
        bshd_view(dq.data(), B, S, H, d), bshd_view(dk.data(), B, S, H_kv, d),
        bshd_view(dv.data(), B, S, H_kv, d), nullptr, mine ? nullptr : &pg};
    distributed::ring_attention_backward(
        bshd_view(static_cast<const float*>(q.data()), B, S, H, d),
        bshd_view(static_cast<const float*>(k.data()), B, S, H_kv, d),
        bshd_view(static_cast<const float*>(v.data()), B, S, H_kv, d),
        bshd_view(static_cast<const float*>(out.data()), B, S, H, d),
        bshd_view(static_cast<const float*>(dout.data()), B, S, H, d), lse.data(), g, opt,
        distributed::ring_context{});
  });
}

// The last rank holds a token too many: the sizes disagree with the layout's split of their
// sum (the layout gives the extra token to rank 0).
TEST_F(RingRejectsInputDifferingAcrossRanks, SliceSizesAgainstTheLayoutsSplit) {
  expect_same_error("q",
                    [&] { run(mine ? S + 1 : S, H, H_kv, d, out.data(), layout::contiguous); });
}

// One token per rank: too few for zigzag's 2P chunks.
TEST_F(RingRejectsInputDifferingAcrossRanks, ZigzagWithTooFewTokens) {
  expect_same_error("q", [&] { run(1, H, H_kv, d, out.data(), layout::zigzag); });
}

// The same call again, its message shown (rank 0) for a reader of the log.
TEST_F(RingRejectsInputDifferingAcrossRanks, SliceSizesMessageShownOnRankZero) {
  const std::string what = expect_same_error(
      "q", [&] { run(mine ? S + 1 : S, H, H_kv, d, out.data(), layout::contiguous); });
  if (g_rank == 0) std::printf("%s\n", what.c_str());
}

/// A policy the agreement knows only by its multipliers: m = 1 + slope * p.
struct slope_policy {
  static constexpr bool learnable = false;
  double slope = 0.0;
  double multiplier(const row_position& row) const {
    return 1.0 + slope * static_cast<double>(row.position);
  }
  index_t heads() const { return 0; }
  void validate(const char*) const {}
};

using ssmax_options = attention_options<ssmax_policy>;

/// Ranks whose options differ (on the last rank) in one value that changes the result: every
/// rank throws the same argument_error naming that value; values that do not change it pass.
/// Needs two ranks or more.
class RingOptionsAcrossRanks : public ::testing::Test {
 protected:
  static constexpr index_t N = 24, B = 1, H = 4, H_kv = 2, d = 8;
  const distributed::slice sl = distributed::slice_of(layout::contiguous, N, g_ranks, g_rank);
  const index_t S = sl.length();
  const bool mine = g_rank == g_ranks - 1;
  std::vector<float> q = std::vector<float>(static_cast<size_t>(B * S * H * d), 0.5f), k = q, v = q,
                     out = std::vector<float>(q.size()), dout = std::vector<float>(q.size(), 0.25f),
                     lse = std::vector<float>(static_cast<size_t>(B * H * S));

  void SetUp() override {
    if (g_ranks < 2) GTEST_SKIP() << "needs two ranks or more";
  }
  tensor_view<const float> view(std::vector<float>& x, index_t heads) const {
    return bshd_view(static_cast<const float*>(x.data()), B, S, heads, d);
  }
  template <class Options>
  void forward(const Options& opt) {
    distributed::ring_attention(view(q, H), view(k, H_kv), view(v, H_kv),
                                bshd_view(out.data(), B, S, H, d), opt, lse.data(),
                                distributed::ring_context{});
  }
  template <class Options>
  void backward(const Options& opt) {
    std::vector<float> dq(q.size()), dk(q.size()), dv(q.size());
    policy_gradient pg(H);
    distributed::ring_attention_backward(
        view(q, H), view(k, H_kv), view(v, H_kv), view(out, H), view(dout, H), lse.data(),
        attention_gradients<float>{bshd_view(dq.data(), B, S, H, d),
                                   bshd_view(dk.data(), B, S, H_kv, d),
                                   bshd_view(dv.data(), B, S, H_kv, d), nullptr, &pg},
        opt, distributed::ring_context{});
  }
};

/// One option changed on the last rank from the options the others pass (causal, one
/// thread, ssmax with s per head and a shared b), in the forward (and then the backward).
struct option_change {
  const char* name;
  const char* argument;  ///< the argument every rank's error names; empty: no error
  std::function<void(ssmax_options&)> change;
  bool backward_too = false;
};

void PrintTo(const option_change& c, std::ostream* os) { *os << c.name; }

std::function<void(ssmax_options&)> local_window(index_t left, index_t right) {
  return [=](ssmax_options& o) {
    o.mask.local = true;
    o.mask.window_left = left, o.mask.window_right = right;
  };
}

const std::vector<float> slopes = alibi_slopes(4), sinks(4, 0.5f);

const option_change result_changes[] = {
    {"softcap", "options.logit.softcap", [](ssmax_options& o) { o.logit.softcap = 5.0; }, true},
    {"alibi_on_one_rank", "options.logit.alibi_slopes",
     [](ssmax_options& o) { o.logit.alibi_slopes = slopes.data(), o.logit.alibi_heads = 4; }},
    {"sinks", "options.logit.sinks",
     [](ssmax_options& o) { o.logit.sinks = sinks.data(), o.logit.sink_heads = 4; }},
    {"scale", "options.scale", [](ssmax_options& o) { o.scale = 0.25; }},
    {"causal", "options.mask.causal", [](ssmax_options& o) { o.mask.causal = false; }},
    {"window", "options.mask.window", [](ssmax_options& o) { o.mask.window = 3; }},
    {"local_on_one_rank", "options.mask.local", local_window(4, 4)},
    {"query_offset", "options.mask.query_offset",
     [](ssmax_options& o) { o.mask.query_offset = 0; }},
    {"n_override", "options.mask.n_override", [](ssmax_options& o) { o.mask.n_override = 9; },
     true},
    {"path", "options.path", [](ssmax_options& o) { o.path = attention_path::materialised; }},
    {"policy_s", "options.policy",
     [](ssmax_options& o) {
       o.policy.s = std::vector<double>{0.3, 0.4, 0.5, 0.61};
     },
     true},
    {"policy_b", "options.policy", [](ssmax_options& o) { o.policy.b = 0.2; }, true},
    {"policy_fixed_length", "options.policy",
     [](ssmax_options& o) { o.policy.fixed_length = 16; }}};

const option_change same_results[] = {
    {"threads", "", [](ssmax_options& o) { o.threads = 2; }, true},
    {"b_shared_or_per_head", "",
     [](ssmax_options& o) { o.policy.b = std::vector<double>(4, 0.1); }}};

class RingOptionChangedOnOneRank : public RingOptionsAcrossRanks,
                                   public ::testing::WithParamInterface<option_change> {
 protected:
  void run_changed() {
    const option_change& c = GetParam();
    ssmax_options opt;
    opt.mask.causal = true, opt.threads = 1;
    opt.policy = ssmax_policy(std::vector<double>{0.3, 0.4, 0.5, 0.6}, 0.1);
    if (mine) c.change(opt);
    expect_same_error(c.argument, [&] { forward(opt); });
    if (c.backward_too) expect_same_error(c.argument, [&] { backward(opt); });
  }
};

const auto option_change_name = [](const ::testing::TestParamInfo<option_change>& info) {
  return std::string(info.param.name) + (info.param.backward_too ? "_forward_and_backward" : "");
};

class RingRejectsOptionChangingTheResult : public RingOptionChangedOnOneRank {};

TEST_P(RingRejectsOptionChangingTheResult, SameErrorNamingItOnEveryRank) { run_changed(); }

INSTANTIATE_TEST_SUITE_P(OnTheLastRank, RingRejectsOptionChangingTheResult,
                         ::testing::ValuesIn(result_changes), option_change_name);

class RingAcceptsOptionKeepingTheResult : public RingOptionChangedOnOneRank {};

TEST_P(RingAcceptsOptionKeepingTheResult, NoErrorOnAnyRank) { run_changed(); }

INSTANTIATE_TEST_SUITE_P(OnTheLastRank, RingAcceptsOptionKeepingTheResult,
                         ::testing::ValuesIn(same_results), option_change_name);

TEST_F(RingOptionsAcrossRanks, RejectsDifferentAlibiSlopeValues) {
  std::vector<float> other_slopes = slopes;
  other_slopes[2] *= 2.0f;
  expect_same_error("options.logit.alibi_slopes", [&] {
    ssmax_options o;
    o.logit.alibi_slopes = mine ? other_slopes.data() : slopes.data(), o.logit.alibi_heads = H;
    forward(o);
  });
}

TEST_F(RingOptionsAcrossRanks, RejectsDifferentLocalLeftWindow) {
  expect_same_error("options.mask.window_left", [&] {
    ssmax_options o;
    local_window(mine ? 5 : 4, 2)(o);
    forward(o);
  });
}

TEST_F(RingOptionsAcrossRanks, RejectsDifferentLocalRightWindowInTheBackward) {
  expect_same_error("options.mask.window_right", [&] {
    ssmax_options o;
    local_window(4, mine ? 3 : 2)(o);
    backward(o);
  });
}

TEST_F(RingOptionsAcrossRanks, RejectsDifferentKeyLengths) {
  const index_t lengths[2] = {20, 17};
  expect_same_error("options.mask.key_lengths", [&] {
    ssmax_options o;
    o.mask.key_lengths = mine ? lengths + 1 : lengths;
    forward(o);
  });
}

TEST_F(RingOptionsAcrossRanks, RejectsDifferentQwenTrainLength) {
  expect_same_error("options.policy", [&] {
    attention_options<qwen_logn_policy> o;
    o.policy.train_length = mine ? 16 : 8;
    forward(o);
  });
}

TEST_F(RingOptionsAcrossRanks, RejectsDifferentMistralBeta) {
  expect_same_error("options.policy", [&] {
    attention_options<mistral_policy> o;
    o.policy.beta = mine ? 0.2 : 0.1;
    forward(o);
  });
}

TEST_F(RingOptionsAcrossRanks, RejectsDifferentLlama4AttnScale) {
  expect_same_error("options.policy", [&] {
    attention_options<llama4_temperature_policy> o;
    o.policy.attn_scale = mine ? 0.2 : 0.1;
    forward(o);
  });
}

TEST_F(RingOptionsAcrossRanks, RejectsDifferentCustomPolicyMultipliers) {
  expect_same_error("options.policy", [&] {
    attention_options<slope_policy> o;
    o.policy.slope = mine ? 0.02 : 0.01;
    forward(o);
  });
}

TEST_F(RingOptionsAcrossRanks, AcceptsTheSameCustomPolicyMultipliers) {
  expect_same_error("", [&] {
    attention_options<slope_policy> o;
    o.policy.slope = 0.01;
    forward(o);
  });
}

/// On ranks other than 0 (only rank 0 prints gtest's report): each failure, with the rank.
/// (The test's name is kept from OnTestStart: UnitTest's accessors would wait for the lock
/// gtest holds while it reports a result.)
class rank_failure_printer : public ::testing::EmptyTestEventListener {
  std::string test_;
  void OnTestStart(const ::testing::TestInfo& test) override {
    test_ = std::string(test.test_suite_name()) + "." + test.name();
  }
  void OnTestPartResult(const ::testing::TestPartResult& r) override {
    if (r.failed())
      std::fprintf(stderr, "rank %d: %s: %s:%d: Failure\n%s\n", g_rank, test_.c_str(),
                   r.file_name() ? r.file_name() : "", r.line_number(), r.message());
  }
};

}  // namespace

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  // An exception no check expects ends the job at once (mpirun stops every rank) instead of
  // leaving this rank in the next test while the others wait in the ring.
  GTEST_FLAG_SET(catch_exceptions, false);
  ::testing::InitGoogleTest(&argc, argv);
  MPI_Comm_rank(MPI_COMM_WORLD, &g_rank);
  MPI_Comm_size(MPI_COMM_WORLD, &g_ranks);
  // One test order on every rank under --gtest_shuffle (rank 0's seed): the collectives pair.
  int seed = GTEST_FLAG_GET(random_seed);
  if (seed == 0) seed = static_cast<int>(std::time(nullptr) % 99999) + 1;
  MPI_Bcast(&seed, 1, MPI_INT, 0, MPI_COMM_WORLD);
  GTEST_FLAG_SET(random_seed, seed);
  if (g_rank != 0) {
    ::testing::TestEventListeners& listeners = ::testing::UnitTest::GetInstance()->listeners();
    delete listeners.Release(listeners.default_result_printer());
    listeners.Append(new rank_failure_printer);
  }
  const int failed = RUN_ALL_TESTS() != 0 ? 1 : 0;
  int any_failed = 0;
  MPI_Allreduce(&failed, &any_failed, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
  if (g_rank == 0 && any_failed && !failed)
    std::printf("FAILED on another rank: its failures are above, prefixed by its rank\n");
  MPI_Finalize();
  return any_failed;
}
