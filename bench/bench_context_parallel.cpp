// Context-parallel ring attention (ssmax/distributed/): per rank, the compute time, the bytes
// sent, and how much of the communication the compute hid. Run with mpirun:
//   mpirun -np 4 build/bench/bench/bench_context_parallel [--n 4096] [--heads 8] [--kv-heads 2]
//          [--dim 64] [--reps 3] [--layout zigzag|contiguous] [--noncausal] [--threads 1]
//
// Plain timers (Google Benchmark does not fit a collective call across processes). For each
// pass (forward, backward) it reports, per rank, the median over --reps of
//   compute   time inside the attention kernels and merges;
//   wait      time blocked on ring messages after the compute (communication NOT hidden);
//   bytes     payload this rank sent;
//   alone     the same ring exchange (same steps and message sizes) with no compute;
//   hidden    1 - wait / alone, clamped to [0, 1]: the share of the communication the
//             compute covered.
// A line per rank goes to stdout as CSV (pass,P,rank,compute_ms,wait_ms,total_ms,bytes,
// alone_ms,hidden), preceded by a header on rank 0.

#include <mpi.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <ssmax/distributed/ring_attention.hpp>
#include <string>
#include <utility>
#include <vector>

namespace {

using namespace ssmax;

struct config {
  index_t n = 4096, heads = 8, kv_heads = 2, dim = 64;
  int reps = 3, threads = 1;
  bool causal = true;
  distributed::layout kind = distributed::layout::zigzag;
};

config parse(int argc, char** argv) {
  config c;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    const char* next = i + 1 < argc ? argv[i + 1] : "0";
    if (a == "--n")
      c.n = std::atol(next), ++i;
    else if (a == "--heads")
      c.heads = std::atol(next), ++i;
    else if (a == "--kv-heads")
      c.kv_heads = std::atol(next), ++i;
    else if (a == "--dim")
      c.dim = std::atol(next), ++i;
    else if (a == "--reps")
      c.reps = std::atoi(next), ++i;
    else if (a == "--threads")
      c.threads = std::atoi(next), ++i;
    else if (a == "--noncausal")
      c.causal = false;
    else if (a == "--layout")
      c.kind = std::strcmp(next, "contiguous") == 0 ? distributed::layout::contiguous
                                                    : distributed::layout::zigzag,
      ++i;
  }
  return c;
}

/// Seconds one ring pass of the given per-step message sizes takes with no compute.
double ring_alone(const std::vector<std::int64_t>& bytes_per_step, std::int64_t max_bytes) {
  std::vector<char> a(static_cast<size_t>(max_bytes)), b(a.size());
  distributed::ring_stats st;
  distributed::detail::ring_channel ch(MPI_COMM_WORLD, 9, st);
  MPI_Barrier(MPI_COMM_WORLD);
  const double t0 = MPI_Wtime();
  for (size_t t = 0; t + 1 < bytes_per_step.size(); ++t) {
    ch.receive(b.data(), bytes_per_step[t + 1]);
    ch.send(a.data(), bytes_per_step[t]);
    ch.wait();
    std::swap(a, b);
  }
  return MPI_Wtime() - t0;
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

/// The ring's alpha-beta model on this machine: the median time of one ring step (send to
/// rank + 1, receive from rank - 1, no compute) with 8 bytes (alpha) and with 4 MiB (alpha +
/// 4 MiB / beta), over 21 repetitions.
std::pair<double, double> alpha_beta() {
  auto step = [](std::int64_t bytes) {
    std::vector<double> t;
    for (int rep = 0; rep < 21; ++rep) t.push_back(ring_alone({bytes, bytes}, bytes));
    return median(t);
  };
  const double small = step(8), large = step(std::int64_t(1) << 22);
  return {small, static_cast<double>(std::int64_t(1) << 22) / std::max(large - small, 1e-9)};
}

struct sample {
  double compute, wait, total, alone;
  std::int64_t bytes;
};

void report(const char* pass, int ranks, int rank, const std::vector<sample>& s) {
  std::vector<double> c, w, t, a;
  for (const auto& x : s)
    c.push_back(x.compute), w.push_back(x.wait), t.push_back(x.total), a.push_back(x.alone);
  const double alone = median(a), wait = median(w);
  const double hidden = alone > 0 ? std::clamp(1.0 - wait / alone, 0.0, 1.0) : 1.0;
  for (int r = 0; r < ranks; ++r) {
    if (r == rank)
      std::printf("%s,%d,%d,%.2f,%.2f,%.2f,%lld,%.2f,%.2f\n", pass, ranks, rank, 1e3 * median(c),
                  1e3 * wait, 1e3 * median(t), static_cast<long long>(s[0].bytes), 1e3 * alone,
                  hidden);
    std::fflush(stdout);
    MPI_Barrier(MPI_COMM_WORLD);
  }
}

}  // namespace

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  int rank = 0, ranks = 1;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &ranks);
  const config c = parse(argc, argv);
  const auto sl = distributed::slice_of(c.kind, c.n, ranks, rank);
  const index_t S = sl.length(), B = 1, H = c.heads, Hk = c.kv_heads, d = c.dim;
  std::mt19937 gen(static_cast<unsigned>(rank + 1));
  std::uniform_real_distribution<float> u(-1.f, 1.f);
  std::vector<float> q(static_cast<size_t>(S * H * d)), k(static_cast<size_t>(S * Hk * d)),
      v(k.size()), out(q.size()), dout(q.size()), lse(static_cast<size_t>(H * S)), dq(q.size()),
      dk(k.size()), dv(k.size());
  for (auto* x : {&q, &k, &v, &dout})
    for (auto& e : *x) e = u(gen);
  attention_options<ssmax_policy> o;
  o.policy = ssmax_policy(0.43);
  o.mask.causal = c.causal;
  o.threads = c.threads;
  policy_gradient pg(H);
  attention_workspace ws;
  // The per-step message sizes of the ring: forward sends K and V of the slice at hand;
  // the backward also sends dK and dV (the same bytes again).
  std::vector<std::int64_t> step_bytes;
  std::int64_t largest = 0;
  for (int t = 0; t < ranks; ++t) {
    const auto who = distributed::slice_of(c.kind, c.n, ranks, (rank - t + ranks) % ranks);
    step_bytes.push_back(2 * who.length() * Hk * d * static_cast<std::int64_t>(sizeof(float)));
    largest = std::max(largest, step_bytes.back());
  }
  if (rank == 0)
    std::printf(
        "# n=%lld heads=%lld kv_heads=%lld d=%lld layout=%s causal=%d threads=%d ranks=%d\n"
        "pass,P,rank,compute_ms,wait_ms,total_ms,bytes_sent,alone_ms,hidden\n",
        static_cast<long long>(c.n), static_cast<long long>(H), static_cast<long long>(Hk),
        static_cast<long long>(d), c.kind == distributed::layout::zigzag ? "zigzag" : "contiguous",
        c.causal ? 1 : 0, c.threads, ranks);
  if (ranks > 1) {
    const auto ab = alpha_beta();
    if (rank == 0)
      std::printf("# ring step, no compute: alpha = %.1f us, beta = %.2f GB/s\n", 1e6 * ab.first,
                  ab.second / 1e9);
  }
  std::vector<sample> fwd, bwd;
  for (int rep = 0; rep <= c.reps; ++rep) {  // rep 0 warms up
    distributed::ring_stats sf, sb;
    distributed::ring_context ctx;
    ctx.kind = c.kind;
    ctx.stats = &sf;
    MPI_Barrier(MPI_COMM_WORLD);
    distributed::ring_attention(bshd_view(q.data(), B, S, H, d), bshd_view(k.data(), B, S, Hk, d),
                                bshd_view(v.data(), B, S, Hk, d), bshd_view(out.data(), B, S, H, d),
                                o, lse.data(), ctx, &ws);
    const double alone_f = ring_alone(step_bytes, largest);
    ctx.stats = &sb;
    MPI_Barrier(MPI_COMM_WORLD);
    distributed::ring_attention_backward(
        bshd_view(q.data(), B, S, H, d), bshd_view(k.data(), B, S, Hk, d),
        bshd_view(v.data(), B, S, Hk, d), bshd_view(out.data(), B, S, H, d),
        bshd_view(dout.data(), B, S, H, d), lse.data(),
        attention_gradients<float>{bshd_view(dq.data(), B, S, H, d),
                                   bshd_view(dk.data(), B, S, Hk, d),
                                   bshd_view(dv.data(), B, S, Hk, d), nullptr, &pg},
        o, ctx, &ws);
    // Backward alone: the K/V ring plus the dK/dV ring (same sizes, one step later).
    const double alone_b = ring_alone(step_bytes, largest) * 2.0;
    if (rep == 0) continue;
    fwd.push_back({sf.compute_seconds, sf.wait_seconds, sf.total_seconds, alone_f, sf.bytes_sent});
    bwd.push_back({sb.compute_seconds, sb.wait_seconds, sb.total_seconds, alone_b, sb.bytes_sent});
  }
  report("forward", ranks, rank, fwd);
  report("backward", ranks, rank, bwd);
  MPI_Finalize();
  return 0;
}
