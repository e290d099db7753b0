// Context-parallel ring attention (ssmax/distributed/) against the single-process operator,
// run under mpirun with P = 1, 2, 3, 4 ranks (tests/CMakeLists.txt). A plain main: every
// rank runs every case, reports its failures, and the exit code is non-zero when any rank
// saw one.
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

#include <mpi.h>

#include <cmath>
#include <cstdio>
#include <limits>
#include <random>
#include <ssmax/attention_backward.hpp>
#include <ssmax/distributed/ring_attention.hpp>
#include <ssmax/reference/attention.hpp>
#include <string>
#include <vector>

namespace {

using namespace ssmax;
using distributed::layout;

int g_rank = 0, g_ranks = 1, g_failures = 0;

void fail(const std::string& what) {
  if (g_failures < 20) std::fprintf(stderr, "rank %d: FAIL %s\n", g_rank, what.c_str());
  ++g_failures;
}

/// The mask of a case.
struct mask_case {
  const char* name;
  bool causal;
  index_t window;
  bool padding;
  index_t left = -1, right = -1;  ///< local (left, right) window; -1: none
};

/// One problem: shapes and mask.
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
void run_case(const std::string& name, const shape& s, layout kind,
              const attention_options<Policy>& o) {
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
        if (!(l_ring == l_one || std::abs(l_ring - l_one) <= 2 * e_lse + eps * std::abs(e.lse[at])))
          fail(name + ": lse row " + std::to_string(gi) + " " + std::to_string(l_ring) + " vs " +
               std::to_string(l_one));
        for (index_t c = 0; c < d; ++c) {
          const size_t lo = static_cast<size_t>(((b * S + i) * H + h) * d + c),
                       go = static_cast<size_t>(((b * N + gi) * H + h) * d + c);
          if (!(std::abs(static_cast<double>(out[lo]) - out1[go]) <= tol_out))
            fail(name + ": out row " + std::to_string(gi) + " differs by " +
                 std::to_string(std::abs(static_cast<double>(out[lo]) - out1[go])) + " > " +
                 std::to_string(tol_out));
          if (!(std::abs(static_cast<double>(dq[lo]) - dq1[go]) <= 2 * rho[at] * A_dq[at] + tiny))
            fail(name + ": dq row " + std::to_string(gi) + " differs by " +
                 std::to_string(std::abs(static_cast<double>(dq[lo]) - dq1[go])));
        }
      }
  for (index_t b = 0; b < B; ++b)
    for (index_t g = 0; g < H_kv; ++g)
      for (index_t j = 0; j < S; ++j) {
        const index_t gj = global_row(sl, j);
        const size_t kj = static_cast<size_t>((b * H_kv + g) * N + gj);
        for (index_t c = 0; c < d; ++c) {
          const size_t lo = static_cast<size_t>(((b * S + j) * H_kv + g) * d + c),
                       go = static_cast<size_t>(((b * N + gj) * H_kv + g) * d + c);
          if (!(std::abs(static_cast<double>(dk[lo]) - dk1[go]) <= 2 * rho_max * A_dk[kj] + tiny))
            fail(name + ": dk key " + std::to_string(gj) + " differs by " +
                 std::to_string(std::abs(static_cast<double>(dk[lo]) - dk1[go])));
          if (!(std::abs(static_cast<double>(dv[lo]) - dv1[go]) <= 2 * rho_max * A_dv[kj] + tiny))
            fail(name + ": dv key " + std::to_string(gj) + " differs by " +
                 std::to_string(std::abs(static_cast<double>(dv[lo]) - dv1[go])));
        }
      }
  for (index_t h = 0; h < H; ++h) {
    double tol_s = 0.0, tol_b = 0.0;
    for (index_t b = 0; b < B; ++b)
      for (index_t i = 0; i < N; ++i) {
        const size_t at = static_cast<size_t>((b * H + h) * N + i);
        tol_b += 2 * rho[at] * A_dm[at];
        tol_s +=
            2 * rho[at] * A_dm[at] * std::log(std::max<double>(1.0, static_cast<double>(e.n[at])));
      }
    if (!(std::abs(pg.s[static_cast<size_t>(h)] - pg1.s[static_cast<size_t>(h)]) <= tol_s + 1e-300))
      fail(name + ": ds head " + std::to_string(h) + " " +
           std::to_string(pg.s[static_cast<size_t>(h)]) + " vs " +
           std::to_string(pg1.s[static_cast<size_t>(h)]));
    if (!(std::abs(pg.b[static_cast<size_t>(h)] - pg1.b[static_cast<size_t>(h)]) <= tol_b + 1e-300))
      fail(name + ": db head " + std::to_string(h) + " " +
           std::to_string(pg.b[static_cast<size_t>(h)]) + " vs " +
           std::to_string(pg1.b[static_cast<size_t>(h)]));
  }
}

/// Runs call (collective); every rank must throw argument_error naming `argument`, with
/// the same message on every rank (checked by comparing with rank 0's).
template <class Call>
void expect_same_error(const std::string& name, const std::string& argument, Call&& call) {
  std::string what = "(no error)", arg;
  try {
    call();
  } catch (const argument_error& e) {
    what = e.what();
    arg = e.argument();
  }
  if (arg != argument) fail(name + ": expected argument '" + argument + "', got: " + what);
  std::string root = what;
  int length = static_cast<int>(root.size());
  MPI_Bcast(&length, 1, MPI_INT, 0, MPI_COMM_WORLD);
  root.resize(static_cast<size_t>(length));
  MPI_Bcast(root.data(), length, MPI_CHAR, 0, MPI_COMM_WORLD);
  if (root != what) fail(name + ": rank 0 says '" + root + "', this rank '" + what + "'");
  if (g_rank == 0 && g_ranks > 1 && name == "print") std::printf("%s\n", what.c_str());
}

/// Bad input on one rank or all: the same error on every rank, no deadlock, nothing written.
void bad_input() {
  const index_t N = 24, B = 1, H = 4, H_kv = 2, d = 8;
  const auto sl = distributed::slice_of(layout::contiguous, N, g_ranks, g_rank);
  const index_t S = sl.length();
  const int last = g_ranks - 1;
  std::vector<float> q(static_cast<size_t>(B * (S + 1) * H * (d + 1)), 0.5f), k(q), v(q),
      out(q.size(), 7.0f), lse(static_cast<size_t>(B * H * (S + 1)), 7.0f);
  auto run = [&](index_t seq, index_t heads, index_t kv_heads, index_t dim, float* o, layout kind) {
    distributed::ring_context ctx;
    ctx.kind = kind;
    attention_options<softmax_policy> opt;
    opt.mask.causal = true, opt.threads = 1;
    distributed::ring_attention(bshd_view(q.data(), B, seq, heads, dim),
                                bshd_view(k.data(), B, seq, kv_heads, dim),
                                bshd_view(v.data(), B, seq, kv_heads, dim),
                                bshd_view(o, B, seq, heads, dim), opt, lse.data(), ctx);
  };
  const bool mine = g_rank == last;
  // Slices from cache_view carry lengths the ring does not take; lse over the key lengths.
  expect_same_error("k carries seq_lengths", "k", [&] {
    const std::vector<index_t> lengths(B, S);
    distributed::ring_attention(
        bshd_view(q.data(), B, S, H, d), cache_view(k.data(), B, S, H_kv, d, lengths.data()),
        cache_view(v.data(), B, S, H_kv, d, lengths.data()), bshd_view(out.data(), B, S, H, d),
        attention_options<softmax_policy>{}, lse.data(), distributed::ring_context{});
  });
  expect_same_error("lse over the key lengths", "lse", [&] {
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
  // A local error on the last rank only (null out).
  expect_same_error("null out", "out",
                    [&] { run(S, H, H_kv, d, mine ? nullptr : out.data(), layout::contiguous); });
  if (g_ranks > 1) {
    expect_same_error("heads differ", "q",
                      [&] { run(S, mine ? 2 : H, H_kv, d, out.data(), layout::contiguous); });
    expect_same_error("kv heads differ", "k",
                      [&] { run(S, H, mine ? 1 : H_kv, d, out.data(), layout::contiguous); });
    expect_same_error("d differs", "q",
                      [&] { run(S, H, H_kv, mine ? d + 1 : d, out.data(), layout::contiguous); });
    expect_same_error("layout differs", "context.kind", [&] {
      run(S, H, H_kv, d, out.data(), mine ? layout::zigzag : layout::contiguous);
    });
  }
  if (g_ranks > 1) {
    // Unchecked, these would crash (MPI_ERR_TRUNCATE: float against double), hang
    // (grads.policy on some ranks: only they all-reduce ds and db) or silently mix rows.
    expect_same_error("element type differs", "q", [&] {
      if (!mine) return run(S, H, H_kv, d, out.data(), layout::contiguous);
      std::vector<double> x(q.size(), 0.5), o(q.size(), 7.0), l(lse.size(), 7.0);
      attention_options<softmax_policy> opt;
      opt.mask.causal = true, opt.threads = 1;
      const auto view = [&](double* at, index_t heads) { return bshd_view(at, B, S, heads, d); };
      distributed::ring_attention(view(x.data(), H), view(x.data(), H_kv), view(x.data(), H_kv),
                                  view(o.data(), H), opt, l.data(), distributed::ring_context{});
    });
    const auto forward_with = [&](auto opt) {
      opt.mask.causal = true, opt.threads = 1;
      distributed::ring_attention(
          bshd_view(q.data(), B, S, H, d), bshd_view(k.data(), B, S, H_kv, d),
          bshd_view(v.data(), B, S, H_kv, d), bshd_view(out.data(), B, S, H, d), opt, lse.data(),
          distributed::ring_context{});
    };
    expect_same_error("scale differs", "options.scale", [&] {
      attention_options<softmax_policy> opt;
      if (mine) opt.scale = 2.0;
      forward_with(opt);
    });
    expect_same_error("policy type differs", "options.policy", [&] {
      if (mine) return forward_with(attention_options<ssmax_policy>{});
      forward_with(attention_options<softmax_policy>{});
    });
    expect_same_error("grads.policy on some ranks", "grads.policy", [&] {
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
    // The last rank holds a token too many: the sizes disagree with the layout's split of
    // their sum (the layout gives the extra token to rank 0).
    expect_same_error("slice sizes", "q",
                      [&] { run(mine ? S + 1 : S, H, H_kv, d, out.data(), layout::contiguous); });
    // One token per rank: too few for zigzag's 2P chunks.
    expect_same_error("zigzag too short", "q",
                      [&] { run(1, H, H_kv, d, out.data(), layout::zigzag); });
  }
  for (float x : out)
    if (x != 7.0f) {
      fail("bad input wrote out");
      break;
    }
  for (float x : lse)
    if (x != 7.0f) {
      fail("bad input wrote lse");
      break;
    }
  if (g_ranks > 1)
    expect_same_error("print", "q",
                      [&] { run(mine ? S + 1 : S, H, H_kv, d, out.data(), layout::contiguous); });
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

/// Ranks whose options differ in one value that changes the result: every rank throws the
/// same argument_error naming that value; values that do not change it (threads, one shared
/// s against the same s per head) pass.
void ranks_that_disagree() {
  if (g_ranks < 2) return;
  const index_t N = 24, B = 1, H = 4, H_kv = 2, d = 8;
  const auto sl = distributed::slice_of(layout::contiguous, N, g_ranks, g_rank);
  const index_t S = sl.length();
  const bool mine = g_rank == g_ranks - 1;
  std::vector<float> q(static_cast<size_t>(B * S * H * d), 0.5f), k(q), v(q), out(q.size()),
      dout(q.size(), 0.25f), lse(static_cast<size_t>(B * H * S));
  const auto view = [&](std::vector<float>& x, index_t heads) {
    return bshd_view(static_cast<const float*>(x.data()), B, S, heads, d);
  };
  const auto forward = [&](auto opt) {
    distributed::ring_attention(view(q, H), view(k, H_kv), view(v, H_kv),
                                bshd_view(out.data(), B, S, H, d), opt, lse.data(),
                                distributed::ring_context{});
  };
  const auto backward = [&](auto opt) {
    std::vector<float> dq(q.size()), dk(q.size()), dv(q.size());
    policy_gradient pg(H);
    distributed::ring_attention_backward(
        view(q, H), view(k, H_kv), view(v, H_kv), view(out, H), view(dout, H), lse.data(),
        attention_gradients<float>{bshd_view(dq.data(), B, S, H, d),
                                   bshd_view(dk.data(), B, S, H_kv, d),
                                   bshd_view(dv.data(), B, S, H_kv, d), nullptr, &pg},
        opt, distributed::ring_context{});
  };
  using ssmax_options = attention_options<ssmax_policy>;
  // Runs forward (and backward when both) with options that differ on the last rank only.
  const auto differ = [&](const std::string& name, const std::string& argument, auto change,
                          bool both = false) {
    auto opt = attention_options<ssmax_policy>{};
    opt.mask.causal = true, opt.threads = 1;
    opt.policy = ssmax_policy(std::vector<double>{0.3, 0.4, 0.5, 0.6}, 0.1);
    if (mine) change(opt);
    expect_same_error(name, argument, [&] { forward(opt); });
    if (both) expect_same_error(name + " (backward)", argument, [&] { backward(opt); });
  };
  differ(
      "softcap", "options.logit.softcap", [](ssmax_options& o) { o.logit.softcap = 5.0; }, true);
  const std::vector<float> slopes = alibi_slopes(H);
  std::vector<float> other_slopes = slopes;
  other_slopes[2] *= 2.0f;
  differ("alibi on one rank", "options.logit.alibi_slopes",
         [&](ssmax_options& o) { o.logit.alibi_slopes = slopes.data(), o.logit.alibi_heads = H; });
  expect_same_error("alibi slope values", "options.logit.alibi_slopes", [&] {
    ssmax_options o;
    o.logit.alibi_slopes = mine ? other_slopes.data() : slopes.data(), o.logit.alibi_heads = H;
    forward(o);
  });
  const std::vector<float> sinks(static_cast<size_t>(H), 0.5f);
  differ("sinks", "options.logit.sinks",
         [&](ssmax_options& o) { o.logit.sinks = sinks.data(), o.logit.sink_heads = H; });
  differ("scale", "options.scale", [](ssmax_options& o) { o.scale = 0.25; });
  differ("causal", "options.mask.causal", [](ssmax_options& o) { o.mask.causal = false; });
  differ("window", "options.mask.window", [](ssmax_options& o) { o.mask.window = 3; });
  const auto local = [](index_t left, index_t right) {
    return [=](ssmax_options& o) {
      o.mask.local = true;
      o.mask.window_left = left, o.mask.window_right = right;
    };
  };
  differ("local on one rank", "options.mask.local", local(4, 4));
  expect_same_error("local left", "options.mask.window_left", [&] {
    ssmax_options o;
    local(mine ? 5 : 4, 2)(o);
    forward(o);
  });
  expect_same_error("local right (backward)", "options.mask.window_right", [&] {
    ssmax_options o;
    local(4, mine ? 3 : 2)(o);
    backward(o);
  });
  differ("query_offset", "options.mask.query_offset",
         [](ssmax_options& o) { o.mask.query_offset = 0; });
  differ(
      "n_override", "options.mask.n_override", [](ssmax_options& o) { o.mask.n_override = 9; },
      true);
  const index_t lengths[2] = {20, 17};
  expect_same_error("key lengths", "options.mask.key_lengths", [&] {
    ssmax_options o;
    o.mask.key_lengths = mine ? lengths + 1 : lengths;
    forward(o);
  });
  differ("path", "options.path", [](ssmax_options& o) { o.path = attention_path::materialised; });
  differ(
      "policy s", "options.policy",
      [](ssmax_options& o) {
        o.policy.s = std::vector<double>{0.3, 0.4, 0.5, 0.61};
      },
      true);
  differ(
      "policy b", "options.policy", [](ssmax_options& o) { o.policy.b = 0.2; }, true);
  differ("policy fixed_length", "options.policy",
         [](ssmax_options& o) { o.policy.fixed_length = 16; });
  expect_same_error("qwen train_length", "options.policy", [&] {
    attention_options<qwen_logn_policy> o;
    o.policy.train_length = mine ? 16 : 8;
    forward(o);
  });
  expect_same_error("mistral beta", "options.policy", [&] {
    attention_options<mistral_policy> o;
    o.policy.beta = mine ? 0.2 : 0.1;
    forward(o);
  });
  expect_same_error("llama4 attn_scale", "options.policy", [&] {
    attention_options<llama4_temperature_policy> o;
    o.policy.attn_scale = mine ? 0.2 : 0.1;
    forward(o);
  });
  expect_same_error("custom policy values", "options.policy", [&] {
    attention_options<slope_policy> o;
    o.policy.slope = mine ? 0.02 : 0.01;
    forward(o);
  });
  // The same result: no error.
  expect_same_error("custom policy agrees", "", [&] {
    attention_options<slope_policy> o;
    o.policy.slope = 0.01;
    forward(o);
  });
  differ(
      "threads", "", [](ssmax_options& o) { o.threads = 2; }, true);
  differ("b shared or per head", "",
         [](ssmax_options& o) { o.policy.b = std::vector<double>(4, 0.1); });
}

/// Every mask and policy for one element type and layout.
template <class T>
void run_all(layout kind) {
  const char* lname = kind == layout::zigzag ? "zigzag" : "contiguous";
  const mask_case masks[] = {{"none", false, 0, false},
                             {"causal", true, 0, false},
                             {"causal+padding", true, 0, true},
                             {"padding", false, 0, true},
                             {"window", true, 5, false},
                             {"local", false, 0, false, 4, 3},
                             {"local+padding", false, 0, true, 9, 0},
                             {"causal+local", true, 0, false, 6, 0},
                             {"local-one-side", false, 0, false, 0, 11}};
  const index_t lengths[2] = {30, 19};  // global key lengths (padding); N = 37
  const shape s{37, 2, 4, 2, 16};
  for (const mask_case& mc : masks) {
    attention_mask m;
    m.causal = mc.causal;
    m.window = mc.window;
    if (mc.padding) m.key_lengths = lengths;
    if (mc.left >= 0) {
      m.local = true;
      m.window_left = mc.left, m.window_right = mc.right;
    }
    const std::string base =
        std::string(lname) + "/" + mc.name + "/" + (sizeof(T) == 4 ? "float" : "double");
    attention_options<softmax_policy> o0;
    o0.mask = m, o0.threads = 1;
    run_case<T>(base + "/softmax", s, kind, o0);
    attention_options<ssmax_policy> o1;
    o1.mask = m, o1.threads = 1;
    o1.policy = ssmax_policy(std::vector<double>{0.3, 0.45, 0.6, 0.2},
                             std::vector<double>{0.0, 0.1, 0.5, 0.05});
    run_case<T>(base + "/ssmax", s, kind, o1);
    attention_options<qwen_logn_policy> o2;  // positions matter: m grows past position 3
    o2.mask = m, o2.threads = 1, o2.policy.train_length = 4;
    run_case<T>(base + "/qwen", s, kind, o2);
    attention_options<mistral_policy> o3;
    o3.mask = m, o3.threads = 1, o3.policy.original_length = 8, o3.policy.beta = 0.5;
    run_case<T>(base + "/mistral", s, kind, o3);
  }
}

}  // namespace

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  MPI_Comm_rank(MPI_COMM_WORLD, &g_rank);
  MPI_Comm_size(MPI_COMM_WORLD, &g_ranks);
  for (layout kind : {layout::contiguous, layout::zigzag}) {
    run_all<float>(kind);
    run_all<double>(kind);
  }
  bad_input();
  ranks_that_disagree();
  int total = 0;
  MPI_Allreduce(&g_failures, &total, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
  if (g_rank == 0) std::printf("%d failures over %d ranks\n", total, g_ranks);
  MPI_Finalize();
  return total == 0 ? 0 : 1;
}
