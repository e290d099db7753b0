// Example 7: one long sequence's causal SSMax attention, computed by P processes together
// (context parallelism), run with   mpirun -np 4 ./context_parallel
//
// Each rank holds a slice of the sequence's q, k and v: the zigzag layout gives rank r the
// chunks r and 2P - 1 - r of 2P, so that every rank does the same causal work. K/V slices
// travel around the ring (MPI_Isend / MPI_Irecv, overlapped with the compute), each rank
// merges its partial results, and n and positions are global: a row at position p sees
// n = p + 1 keys of the WHOLE sequence, so SSMax's m = s log n is what one machine gives.
// The backward pass (ring_attention_backward) returns this rank's dq, dk, dv and the whole
// sequence's dL/ds per head.
//
// The check: every rank's rows equal the same rows of ssmax::attention over the whole
// sequence (which each rank can afford here, at 1500 tokens) within the bound the ring
// states (distributed/ring_attention.hpp), and dL/ds equals the single-process one. The
// program exits non-zero (on every rank) if not.
#include <mpi.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>
#include <random>
#include <ssmax/distributed/ring_attention.hpp>
#include <ssmax/ssmax.hpp>
#include <vector>

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  int rank = 0, ranks = 1;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &ranks);
  const ssmax::index_t N = 1500, heads = 4, kv_heads = 2, d = 32;

  // The whole sequence (the same on every rank: same seed), [N, heads or kv_heads, d].
  std::mt19937 rng(7);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  auto random = [&](ssmax::index_t count) {
    std::vector<float> x(static_cast<std::size_t>(count));
    for (float& e : x) e = normal(rng);
    return x;
  };
  const auto q = random(N * heads * d), k = random(N * kv_heads * d), v = random(N * kv_heads * d);
  const auto dout = random(N * heads * d);

  // This rank's slice: the zigzag layout's two chunks, stored one after the other.
  const auto mine =
      ssmax::distributed::slice_of(ssmax::distributed::layout::zigzag, N, ranks, rank);
  const ssmax::index_t S = mine.length();
  auto cut = [&](const std::vector<float>& whole, ssmax::index_t row) {
    std::vector<float> part;
    for (int c = 0; c < mine.count; ++c)
      part.insert(part.end(), whole.begin() + mine.parts[c].begin * row,
                  whole.begin() + (mine.parts[c].begin + mine.parts[c].length) * row);
    return part;
  };
  const auto ql = cut(q, heads * d), kl = cut(k, kv_heads * d), vl = cut(v, kv_heads * d);
  const auto dol = cut(dout, heads * d);

  ssmax::attention_options<ssmax::ssmax_policy> options;
  options.policy = ssmax::ssmax_policy(std::vector<double>{0.30, 0.40, 0.45, 0.50});
  options.mask = ssmax::attention_mask::causal_mask();
  options.threads = 1;
  ssmax::distributed::ring_stats stats;
  ssmax::distributed::ring_context ring;
  ring.kind = ssmax::distributed::layout::zigzag;
  ring.stats = &stats;

  std::vector<float> out(ql.size()), lse(static_cast<std::size_t>(heads * S));
  ssmax::distributed::ring_attention(
      ssmax::bshd_view(ql.data(), 1, S, heads, d), ssmax::bshd_view(kl.data(), 1, S, kv_heads, d),
      ssmax::bshd_view(vl.data(), 1, S, kv_heads, d), ssmax::bshd_view(out.data(), 1, S, heads, d),
      options, lse.data(), ring);
  std::vector<float> dq(ql.size()), dk(kl.size()), dv(kl.size());
  ssmax::policy_gradient ds(heads);
  ssmax::distributed::ring_attention_backward(
      ssmax::bshd_view(ql.data(), 1, S, heads, d), ssmax::bshd_view(kl.data(), 1, S, kv_heads, d),
      ssmax::bshd_view(vl.data(), 1, S, kv_heads, d), ssmax::bshd_view(out.data(), 1, S, heads, d),
      ssmax::bshd_view(dol.data(), 1, S, heads, d), lse.data(),
      ssmax::attention_gradients<float>{ssmax::bshd_view(dq.data(), 1, S, heads, d),
                                        ssmax::bshd_view(dk.data(), 1, S, kv_heads, d),
                                        ssmax::bshd_view(dv.data(), 1, S, kv_heads, d), nullptr,
                                        &ds},
      options, ring);

  // The same on one machine, over the whole sequence.
  std::vector<float> out1(q.size()), lse1(static_cast<std::size_t>(heads * N));
  ssmax::attention(ssmax::bshd_view(q.data(), 1, N, heads, d),
                   ssmax::bshd_view(k.data(), 1, N, kv_heads, d),
                   ssmax::bshd_view(v.data(), 1, N, kv_heads, d),
                   ssmax::bshd_view(out1.data(), 1, N, heads, d), options, {lse1.data(), nullptr});
  std::vector<float> dq1(q.size()), dk1(k.size()), dv1(k.size());
  ssmax::policy_gradient ds1(heads);
  ssmax::attention_backward(
      ssmax::bshd_view(q.data(), 1, N, heads, d), ssmax::bshd_view(k.data(), 1, N, kv_heads, d),
      ssmax::bshd_view(v.data(), 1, N, kv_heads, d), ssmax::bshd_view(out1.data(), 1, N, heads, d),
      ssmax::bshd_view(dout.data(), 1, N, heads, d), lse1.data(),
      ssmax::attention_gradients<float>{ssmax::bshd_view(dq1.data(), 1, N, heads, d),
                                        ssmax::bshd_view(dk1.data(), 1, N, kv_heads, d),
                                        ssmax::bshd_view(dv1.data(), 1, N, kv_heads, d), nullptr,
                                        &ds1},
      options);

  // Compare this rank's rows. Outputs: the ring's bound (distributed/ring_attention.hpp),
  // |out - out1| <= eps max|v| (4 (2 (d + 2) Z + n + 64) + 2 |lse|), with n <= N, |lse| <=
  // max|lse1| and Z <= m_max scale max|q_i| max|k_j| (Cauchy-Schwarz) bounding every row's.
  // Gradients: within 1e-4 of their largest magnitude (tests/test_ring_attention.cpp derives
  // their exact bound; typical differences here are 1e-6 of it).
  auto norm_max = [&](const std::vector<float>& x) {
    double best = 0.0;
    for (std::size_t r = 0; r * d < x.size(); ++r) {
      double n2 = 0.0;
      for (ssmax::index_t c = 0; c < d; ++c) n2 += double(x[r * d + c]) * x[r * d + c];
      best = std::max(best, std::sqrt(n2));
    }
    return best;
  };
  auto abs_max = [](const std::vector<float>& x) {
    double best = 0.0;
    for (float e : x) best = std::max(best, std::abs(double(e)));
    return best;
  };
  const double eps = std::numeric_limits<float>::epsilon(), m_max = 0.5 * std::log(double(N));
  const double Z = m_max / std::sqrt(double(d)) * norm_max(q) * norm_max(k);
  const double tol_out = eps * abs_max(v) * (4 * (2 * (d + 2) * Z + N + 64) + 2 * abs_max(lse1));
  const double tol_dq = 1e-4 * abs_max(dq1);
  double worst_out = 0.0, worst_dq = 0.0;
  for (int c = 0; c < mine.count; ++c)
    for (ssmax::index_t i = 0; i < mine.parts[c].length; ++i) {
      const ssmax::index_t local = mine.local_begin(c) + i, global = mine.parts[c].begin + i;
      for (ssmax::index_t e = 0; e < heads * d; ++e) {
        worst_out = std::max(
            worst_out, std::abs(double(out[local * heads * d + e]) - out1[global * heads * d + e]));
        worst_dq = std::max(
            worst_dq, std::abs(double(dq[local * heads * d + e]) - dq1[global * heads * d + e]));
      }
    }
  double worst_ds = 0.0, ds_max = 0.0;
  for (ssmax::index_t h = 0; h < heads; ++h) {
    worst_ds = std::max(worst_ds, std::abs(ds.s[h] - ds1.s[h]));
    ds_max = std::max(ds_max, std::abs(ds1.s[h]));
  }
  const bool ok = worst_out <= tol_out && worst_dq <= tol_dq && worst_ds <= 1e-4 * ds_max;
  int all_ok = ok ? 1 : 0;
  MPI_Allreduce(MPI_IN_PLACE, &all_ok, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);

  for (int r = 0; r < ranks; ++r) {
    if (r == rank)
      std::printf(
          "rank %d: chunks [%ld, %ld) and [%ld, %ld), compute %.1f ms, waited %.1f ms, "
          "sent %.2f MB; |out - one machine| = %.1e (bound %.1e), |dq - one machine| = %.1e\n",
          rank, long(mine.parts[0].begin), long(mine.parts[0].begin + mine.parts[0].length),
          long(mine.parts[1].begin), long(mine.parts[1].begin + mine.parts[1].length),
          1e3 * stats.compute_seconds, 1e3 * stats.wait_seconds, stats.bytes_sent / 1e6, worst_out,
          tol_out, worst_dq);
    std::fflush(stdout);
    MPI_Barrier(MPI_COMM_WORLD);
  }
  if (rank == 0)
    std::printf(
        "the last row sees n = %ld keys over all ranks (m = s log n); dL/ds per head "
        "matches one machine to %.1e of its largest: %s\n",
        long(N), worst_ds / ds_max, all_ok ? "OK" : "FAILED");
  MPI_Finalize();
  return all_ok ? 0 : 1;
}
