#pragma once
// Context-parallel ("ring") attention over MPI: P ranks each hold a slice of one sequence's
// q, k and v (layout.hpp: contiguous, or zigzag for causal load balance), and together
// compute what ssmax::attention and ssmax::attention_backward compute on the whole sequence.
//
// Forward (ring_attention). At step t = 0..P-1 rank r holds the K/V slice of rank r - t;
// it sends that slice on to rank r + 1 and receives the next one from rank r - 1 with
// MPI_Isend / MPI_Irecv while it attends its queries to the slice at hand (one
// ssmax::attention call per pair of its query chunk and the slice's key chunk; pairs that
// causality, a window or key padding leave empty are skipped), then merges the partial
// (out, lse) into its running result (row_state.hpp, merge_partial_outputs).
//
// n and positions are global: every call gets the keys' global position (mask.key_offset),
// the queries' (mask.query_offset) and each row's n over the WHOLE sequence (mask.row_n,
// from visible_keys on the whole sequence: causal, window, local window, key padding with
// global lengths, n_override), so every length policy gives each row the multiplier it gets
// on one machine, and ALiBi and the windows see global distances.
//
// Backward (ring_attention_backward). The K/V slices travel the same ring; with the global
// out and lse of the forward, each pair's fused backward gives this slice's share of dq,
// dk, dv and dL/dm exactly (a_j = exp(m z_j - lse) is the global weight). dq stays home;
// dk and dv accumulate in a buffer that travels one step behind its slice (received while
// the next pair computes) and comes home after P steps. Per-head dL/ds and dL/db are summed
// over ranks (MPI_Allreduce).
//
// Accuracy against the single-process operator on the whole sequence: each partial obeys
// the operator's bound for its keys, merging in double adds a few ulp of double, and a
// partial lse's error e moves the merged output by at most 2 e max|v| (the bound:
// docs/numerics.md, "Context parallelism"; tests/test_ring_attention.cpp checks it).
//
// Arguments: every rank calls with the same communicator, batch, heads, d, element type (float
// or double), options, and the slice layout.hpp assigns it of the N tokens all ranks hold
// together; q and k have the same rows (self-attention: key i and query i are the same token).
// Supported masks: none, causal, causal window, local (left, right) window, key padding (global
// lengths), n_override; not boolean masks or packed sequences. Logit: scale, soft-cap, ALiBi;
// not an additive bias or sinks. Every rank checks its own arguments, then all agree
// (agreement.hpp: one MPI_Allgather of a record of the shapes and of every option value that
// changes the result) BEFORE any ring message: a bad argument on any rank, or ranks that pass
// different values, throws the same ssmax::argument_error on every rank, naming the argument
// and the rank, and nothing is written.

#include <algorithm>
#include <type_traits>
#include <utility>
#include <vector>

#include "../attention.hpp"
#include "../attention_backward.hpp"
#include "agreement.hpp"
#include "layout.hpp"
#include "ring.hpp"

namespace ssmax::distributed {

namespace detail {

using ssmax::detail::require;

/// True when T, the element type of out, is one the ring computes in (float or double)
/// and every other view's element type is T (const or not). The ring has no 16-bit storage.
template <class T, class... Views>  // out's element type; the other views' element types
inline constexpr bool ring_views_v = (std::is_same<T, float>::value ||
                                      std::is_same<T, double>::value) &&
                                     (std::is_same<std::remove_const_t<Views>, T>::value && ...);

/// Rows [begin, begin + length) of a view.
template <class T>  // element type, possibly const
tensor_view<T> rows_of(tensor_view<T> t, index_t begin, index_t length) {
  t.data += begin * t.stride_s;
  t.seq = length;
  return t;
}

/// The mask features the ring supports; the fields it sets itself must be unset.
inline void check_ring_mask(const char* fn, const attention_mask& m, index_t batch) {
  require(m.allowed == nullptr, fn, "options.mask.allowed",
          "is not supported by the ring (each rank holds a slice of the keys)");
  require(!m.packed(), fn, "options.mask.cu_seqlens_q",
          "is not supported by the ring (one sequence per batch entry)");
  require(m.row_n == nullptr, fn, "options.mask.row_n", "must be null: the ring sets it");
  require(m.key_offset == 0, fn, "options.mask.key_offset", "must be 0: the ring sets it");
  require(m.query_offset == -1 || m.query_offset == 0, fn, "options.mask.query_offset",
          "must be -1 or 0: the ring attends a sequence to itself");
  if (m.key_lengths != nullptr)
    for (index_t b = 0; b < batch; ++b)
      require(m.key_lengths[b] >= 0, fn, "options.mask.key_lengths", "has a negative entry");
}

/// Slices carry no lengths: each rank's k and v hold its slice of every sequence, and the
/// global lengths are options.mask.key_lengths.
template <class T>  // element type
inline void check_ring_slices(const char* fn, const tensor_view<const T>& k,
                              const tensor_view<const T>& v) {
  require(k.seq_lengths == nullptr, fn, "k",
          "carries seq_lengths (a cache_view), which the ring does not take: pass the "
          "sequences' lengths as options.mask.key_lengths");
  require(v.seq_lengths == nullptr, fn, "v",
          "carries seq_lengths (a cache_view), which the ring does not take: pass the "
          "sequences' lengths as options.mask.key_lengths");
}

/// Throws argument_error naming `argument` when the output [p, p + count) overlaps the
/// global key lengths (which the local checks, run without them, do not see).
template <class U>  // the output's element type
inline void require_disjoint_from_lengths(const U* p, index_t count, const char* fn,
                                          const char* argument, const attention_mask& m,
                                          index_t batch) {
  ssmax::detail::read_arrays lengths;
  lengths.add(m.key_lengths, batch, "options.mask.key_lengths");
  ssmax::detail::require_disjoint_from_reads(p, count, fn, argument, lengths);
}

/// The logit's extras the ring supports (logit.hpp): the soft-cap and ALiBi (positions come
/// from the mask); an additive bias [.., n_k] and sinks (which each pair would add again)
/// are refused.
inline void check_ring_logit(const char* fn, const logit_options& o) {
  require(o.bias.data == nullptr, fn, "options.logit.bias",
          "is not supported by the ring (each rank holds a slice of the keys)");
  require(o.sinks == nullptr, fn, "options.logit.sinks",
          "is not supported by the ring (every pair of ranks would add the sink)");
}

/// What one ring call knows after the agreement: every rank's slice, the global n of each
/// of this rank's query rows, and the buffers' sizes.
template <class T, class Policy>  // element type; a length policy
struct ring_call {
  const char* fn = nullptr;
  attention_options<Policy> options;  ///< the caller's (mask positions set per pair)
  int rank = 0, ranks = 1;
  index_t total = 0;  ///< N, tokens over all ranks
  index_t batch = 0, kv_heads = 0, dim = 0;
  index_t max_length = 0;                   ///< largest key length (key padding), else N
  std::vector<slice> slices;                ///< every rank's
  std::vector<std::vector<index_t>> row_n;  ///< per own chunk c: [B, length] global n

  const slice& own() const { return slices[static_cast<size_t>(rank)]; }
  /// Elements of one K (or V) slice of rank `who` in a ring buffer.
  index_t kv_elements(int who) const {
    return batch * slices[static_cast<size_t>(who)].length() * kv_heads * dim;
  }
  /// Elements of the largest K (or V) slice.
  index_t max_kv_elements() const {
    index_t m = 0;
    for (int r = 0; r < ranks; ++r) m = std::max(m, kv_elements(r));
    return m;
  }
  /// True when no row of query chunk qc sees a key of key chunk kc.
  bool empty_pair(const chunk& qc, const chunk& kc) const {
    const attention_mask& m = options.mask;
    if (kc.begin >= max_length) return true;
    const index_t q_last = qc.begin + qc.length - 1, k_last = kc.begin + kc.length - 1;
    if (m.causal && kc.begin > q_last) return true;
    if (m.causal && m.window > 0 && k_last < qc.begin - m.window + 1) return true;
    return m.local && (kc.begin > q_last + m.window_right || k_last < qc.begin - m.window_left);
  }
  /// The options of the call for query chunk c of this rank and key chunk kc: global
  /// positions, global n, key lengths clamped to the chunk (lengths: B entries of scratch).
  attention_options<Policy> pair_options(int c, const chunk& kc,
                                         std::vector<index_t>& lengths) const {
    attention_options<Policy> o = options;
    o.mask.query_offset = own().parts[c].begin;
    o.mask.key_offset = kc.begin;
    o.mask.row_n = row_n[static_cast<size_t>(c)].data();
    if (options.mask.key_lengths != nullptr) {
      lengths.resize(static_cast<size_t>(batch));
      for (index_t b = 0; b < batch; ++b)
        lengths[static_cast<size_t>(b)] =
            std::min(options.mask.key_lengths[b], kc.begin + kc.length);
      o.mask.key_lengths = lengths.data();
    }
    return o;
  }
};

/// The agreement (agreement.hpp) and the call's setup, shared by forward (forward true) and
/// backward; collective.
template <class T, class Policy, class LocalCheck>  // element type; policy; () -> void
ring_call<T, Policy> start_call(const char* fn, const tensor_view<const T>& q,
                                const tensor_view<const T>& k,
                                const attention_options<Policy>& options, const ring_context& ctx,
                                index_t bytes_per_token, bool forward, bool policy_grad,
                                LocalCheck&& local_check) {
  ring_call<T, Policy> c;
  c.fn = fn;
  MPI_Comm_rank(ctx.comm, &c.rank);
  MPI_Comm_size(ctx.comm, &c.ranks);
  const auto all = agree(fn, ctx.comm, local_check, [&] {
    return make_record(q, k, options, ctx.kind, forward, policy_grad);
  });
  c.total = check_ring(all, fn, bytes_per_token);
  if constexpr (!builtin_policy<Policy>)
    agree_policy_values(fn, ctx.comm, options.policy, q.heads, c.total, options.mask.n_override);
  c.options = options;
  c.options.mask.query_offset = -1;
  c.batch = q.batch, c.kv_heads = k.heads, c.dim = q.dim;
  c.max_length = all[0][f_lengths_max] >= 0 ? all[0][f_lengths_max] : c.total;
  for (int r = 0; r < c.ranks; ++r) c.slices.push_back(slice_of(ctx.kind, c.total, c.ranks, r));
  for (int p = 0; p < c.own().count; ++p) {  // global n: visible_keys over the whole sequence
    const chunk qc = c.own().parts[p];
    attention_mask whole = options.mask;
    whole.query_offset = qc.begin;
    std::vector<index_t> n(static_cast<size_t>(c.batch * qc.length));
    for (index_t b = 0; b < c.batch; ++b) {
      const sequence_span span = sequence_of(whole, b, qc.length, c.total);
      for (index_t i = 0; i < qc.length; ++i)
        n[static_cast<size_t>(b * qc.length + i)] = visible_keys(whole, span, 0, i, false).n;
    }
    c.row_n.push_back(std::move(n));
  }
  return c;
}

/// The local checks of a forward call (throw argument_error; run inside the agreement).
template <class T, class Policy>  // element type; a length policy
void check_local_forward(const char* fn, const tensor_view<const T>& q,
                         const tensor_view<const T>& k, const tensor_view<const T>& v,
                         const tensor_view<T>& out, const attention_options<Policy>& options,
                         T* lse) {
  attention_options<Policy> local = options;
  local.mask.key_lengths = nullptr;  // global lengths: checked against N after the agreement
  ssmax::detail::check_attention<T>(fn, q, k, v, out, local, lse, nullptr);
  require(k.seq == q.seq, fn, "k", "must have q's rows (the same tokens: self-attention)");
  require_disjoint_from_lengths(out.data, ssmax::detail::last_offset(out) + 1, fn, "out",
                                options.mask, q.batch);
  require_disjoint_from_lengths(lse, lse != nullptr ? q.batch * q.heads * q.seq : 0, fn, "lse",
                                options.mask, q.batch);
  check_ring_slices(fn, k, v);
  check_ring_mask(fn, options.mask, q.batch);
  check_ring_logit(fn, options.logit);
}

/// Copies a [B, S, H_kv, d] view into contiguous memory.
template <class T>  // element type
void pack(const tensor_view<const T>& t, T* to) {
  for (index_t b = 0; b < t.batch; ++b)
    for (index_t s = 0; s < t.seq; ++s)
      for (index_t h = 0; h < t.heads; ++h, to += t.dim)
        std::copy(t.row(b, s, h), t.row(b, s, h) + t.dim, to);
}

/// K and V views of a ring buffer holding rank `who`'s slice ([K | V], each [B, S, H_kv, d]).
template <class T, class Policy, class U>  // element type; policy; T or const T
std::pair<tensor_view<U>, tensor_view<U>> kv_views(const ring_call<T, Policy>& c, U* buf, int who) {
  const index_t S = c.slices[static_cast<size_t>(who)].length();
  return {bshd_view(buf, c.batch, S, c.kv_heads, c.dim),
          bshd_view(buf + c.kv_elements(who), c.batch, S, c.kv_heads, c.dim)};
}

/// The K/V slices going around the ring, in two buffers ([K | V], each [B, S, H_kv, d]): at
/// step t the one at hand holds rank (rank - t)'s slice while the next arrives in the other.
template <class T, class Policy>  // element type; a length policy
class kv_ring {
 public:
  kv_ring(const ring_call<T, Policy>& c, const tensor_view<const T>& k,
          const tensor_view<const T>& v, MPI_Comm comm, int tag, ring_stats& stats)
      : c_(c), channel_(comm, tag, stats) {
    for (auto& b : buf_) b.resize(static_cast<size_t>(2 * c.max_kv_elements()));
    pack(k, buf_[0].data());
    pack(v, buf_[0].data() + c.kv_elements(c.rank));
  }
  /// Starts step t: passes the slice at hand on to rank + 1 and starts receiving the next
  /// one from rank - 1 (none at the last step). Returns the rank whose slice is at hand.
  int begin(int t) {
    t_ = t;
    const int who = (c_.rank - t + c_.ranks) % c_.ranks, next = (who - 1 + c_.ranks) % c_.ranks;
    const index_t bytes = sizeof(T);
    if (t + 1 < c_.ranks) {
      channel_.receive(buf_[1 - t % 2].data(), 2 * c_.kv_elements(next) * bytes);
      channel_.send(buf_[t % 2].data(), 2 * c_.kv_elements(who) * bytes);
    }
    return who;
  }
  /// The slice at hand.
  const T* current() const { return buf_[t_ % 2].data(); }
  /// The channel, for progress calls during the compute.
  ring_channel& channel() { return channel_; }
  /// Ends the step: waits for the next slice (and for the send of this one).
  void end() {
    if (t_ + 1 < c_.ranks) channel_.wait();
  }

 private:
  const ring_call<T, Policy>& c_;
  ring_channel channel_;
  std::vector<T> buf_[2];
  int t_ = 0;
};

/// Runs body(c_q, p_k, kc) for every non-empty pair of this rank's query chunk c_q and the
/// key chunk p_k of rank who's slice, timing it as compute and letting MPI progress after
/// each pair.
template <class T, class Policy, class Body>  // element type; policy; callable as above
void for_each_pair(const ring_call<T, Policy>& c, int who, ring_channel& ch, ring_stats& stats,
                   Body&& body) {
  const slice& ks = c.slices[static_cast<size_t>(who)];
  for (int cq = 0; cq < c.own().count; ++cq)
    for (int pk = 0; pk < ks.count; ++pk) {
      if (c.empty_pair(c.own().parts[cq], ks.parts[pk])) continue;
      const double t0 = now();
      body(cq, pk, ks.parts[pk]);
      stats.compute_seconds += now() - t0;
      ch.progress();
    }
}

/// Times a ring call into ctx.stats (or a local object when null): total_seconds on exit.
class call_clock {
 public:
  explicit call_clock(const ring_context& ctx)
      : stats_(ctx.stats != nullptr ? ctx.stats : &local_), start_(now()) {}
  ~call_clock() { stats_->total_seconds += now() - start_; }
  call_clock(const call_clock&) = delete;
  call_clock& operator=(const call_clock&) = delete;
  ring_stats& stats() { return *stats_; }

 private:
  ring_stats local_;
  ring_stats* stats_;
  double start_;
};

/// Bytes one token of a rank's K/V ring message holds (K and V, every batch entry).
template <class T>  // element type
index_t bytes_per_token(const tensor_view<const T>& q, const tensor_view<const T>& k) {
  return 2 * k.heads * k.dim * q.batch * static_cast<index_t>(sizeof(T));
}

/// A rank's running forward result: per row (b, h, i) the merged output [B, H, S, d] and
/// log-sum-exp [B, H, S], in double; empty (lse -inf, output 0) until a partial arrives.
template <class T>  // element type of the partials and of the final output
class running_result {
 public:
  explicit running_result(const tensor_view<const T>& q)
      : B_(q.batch),
        H_(q.heads),
        S_(q.seq),
        d_(q.dim),
        out_(static_cast<size_t>(B_ * H_ * S_ * d_), 0.0),
        lse_(static_cast<size_t>(B_ * H_ * S_), -std::numeric_limits<double>::infinity()) {}
  /// Merges a partial over rows [q0, q0 + len): out [B, len, H, d], lse [B, H, len].
  void merge(index_t q0, index_t len, const T* out, const T* lse) {
    for (index_t b = 0; b < B_; ++b)
      for (index_t h = 0; h < H_; ++h)
        for (index_t i = 0; i < len; ++i) {
          const auto row = static_cast<size_t>((b * H_ + h) * S_ + q0 + i);
          double* acc = &out_[row * static_cast<size_t>(d_)];
          lse_[row] = merge_partial_outputs(acc, lse_[row], out + ((b * len + i) * H_ + h) * d_,
                                            lse[(b * H_ + h) * len + i], d_, acc);
        }
  }
  /// Writes the result, rounded to T, into out and (when not null) lse [B, H, S].
  void write(const tensor_view<T>& out, T* lse) const {
    for (index_t b = 0; b < B_; ++b)
      for (index_t h = 0; h < H_; ++h)
        for (index_t i = 0; i < S_; ++i) {
          const auto row = static_cast<size_t>((b * H_ + h) * S_ + i);
          T* o = out.row(b, i, h);
          for (index_t e = 0; e < d_; ++e)
            o[e] = static_cast<T>(out_[row * static_cast<size_t>(d_) + static_cast<size_t>(e)]);
          if (lse != nullptr) lse[row] = static_cast<T>(lse_[row]);
        }
  }

 private:
  index_t B_, H_, S_, d_;
  std::vector<double> out_, lse_;
};

/// One ring step of the forward: every pair of this rank's query chunks and the key chunks
/// of rank who's slice (K/V in kv) is attended and merged into result.
template <class Arch, class T, class Policy>  // architecture; element type; policy
void forward_step(const ring_call<T, Policy>& c, int who, const T* kv,
                  const tensor_view<const T>& q, running_result<T>& result, ring_channel& ch,
                  ring_stats& stats, attention_workspace& ws) {
  const index_t B = c.batch, H = q.heads, d = c.dim;
  const auto views = kv_views(c, kv, who);
  std::vector<T> part, part_lse;
  std::vector<index_t> lengths;
  for_each_pair(c, who, ch, stats, [&](int cq, int pk, const chunk& kc) {
    const chunk qc = c.own().parts[cq];
    const index_t q0 = c.own().local_begin(cq),
                  k0 = c.slices[static_cast<size_t>(who)].local_begin(pk);
    part.resize(static_cast<size_t>(B * qc.length * H * d));
    part_lse.resize(static_cast<size_t>(B * H * qc.length));
    attention<Arch, T>(rows_of(q, q0, qc.length), rows_of(views.first, k0, kc.length),
                       rows_of(views.second, k0, kc.length),
                       bshd_view(part.data(), B, qc.length, H, d), c.pair_options(cq, kc, lengths),
                       {part_lse.data(), nullptr}, &ws);
    result.merge(q0, qc.length, part.data(), part_lse.data());
  });
}

}  // namespace detail

/// Context-parallel attention forward: this rank's share of ssmax::attention over the whole
/// sequence (see the top of this header). q [B, S_r, H, d], k and v [B, S_r, H_kv, d] and
/// out [B, S_r, H, d] hold this rank's slice (layout.hpp, ctx.kind); lse, when not null,
/// receives the rows' global log-sum-exp [B, H, S_r] (what the backward needs). Collective
/// over ctx.comm. Throws argument_error, the same on every rank, on any bad argument.
template <class Arch = default_arch,      // xsimd architecture tag or scalar_arch
          class T,                        // float or double
          class Policy = softmax_policy,  // a length policy
          std::enable_if_t<detail::ring_views_v<T>, int> = 0>  // else the overload below
void ring_attention(ssmax::detail::identity_t<tensor_view<const T>> q,
                    ssmax::detail::identity_t<tensor_view<const T>> k,
                    ssmax::detail::identity_t<tensor_view<const T>> v, tensor_view<T> out,
                    const attention_options<Policy>& options, T* lse, const ring_context& ctx,
                    attention_workspace* workspace = nullptr) {
  const char* fn = "distributed::ring_attention";
  detail::call_clock clock(ctx);
  const auto c =
      detail::start_call(fn, q, k, options, ctx, detail::bytes_per_token(q, k), true, false,
                         [&] { detail::check_local_forward(fn, q, k, v, out, options, lse); });
  attention_workspace local_ws;
  attention_workspace& ws = workspace != nullptr ? *workspace : local_ws;
  detail::running_result<T> result(q);
  detail::kv_ring<T, Policy> ring(c, k, v, ctx.comm, 1, clock.stats());
  for (int t = 0; t < c.ranks; ++t) {
    const int who = ring.begin(t);
    detail::forward_step<Arch>(c, who, ring.current(), q, result, ring.channel(), clock.stats(),
                               ws);
    ring.end();
  }
  result.write(out, lse);
}

/// Views the ring does not take (Eigen::bfloat16 or Eigen::half storage, mixed element
/// types, a const out): one readable compile error instead of a failed match against the
/// overload above.
template <class Arch = default_arch,  // xsimd architecture tag or scalar_arch
          class Q, class K, class V,  // the element types of q, k, v
          class O,                    // the element type of out
          class... Rest,              // options, lse, ctx, workspace
          std::enable_if_t<!detail::ring_views_v<O, Q, K, V>, int> = 0>
void ring_attention(const tensor_view<Q>&, const tensor_view<K>&, const tensor_view<V>&,
                    const tensor_view<O>&, const Rest&...) {
  static_assert(detail::ring_views_v<O, Q, K, V>,
                "ssmax::distributed::ring_attention: q, k, v and out must all view float or all "
                "view double, out writable (the ring has no 16-bit storage: convert "
                "Eigen::bfloat16 or Eigen::half views to float)");
}

namespace detail {

/// The local checks of a backward call (throw argument_error; run inside the agreement).
template <class T, class Policy>  // element type; a length policy
void check_local_backward(const char* fn, const tensor_view<const T>& q,
                          const tensor_view<const T>& k, const tensor_view<const T>& v,
                          const tensor_view<const T>& out, const tensor_view<const T>& dout,
                          const T* lse, const attention_gradients<T>& grads,
                          const attention_options<Policy>& options) {
  attention_options<Policy> local = options;
  local.mask.key_lengths = nullptr;  // global lengths: checked against N after the agreement
  ssmax::detail::check_attention_backward(fn, q, k, v, out, dout, lse, grads, local);
  require(k.seq == q.seq, fn, "k", "must have q's rows (the same tokens: self-attention)");
  require(grads.d_multiplier == nullptr, fn, "grads.d_multiplier",
          "is not supported by the ring (use grads.policy)");
  const tensor_view<T>* gradients[3] = {&grads.dq, &grads.dk, &grads.dv};
  const char* names[3] = {"grads.dq", "grads.dk", "grads.dv"};
  for (int a = 0; a < 3; ++a)
    require_disjoint_from_lengths(gradients[a]->data, ssmax::detail::last_offset(*gradients[a]) + 1,
                                  fn, names[a], options.mask, q.batch);
  check_ring_slices(fn, k, v);
  check_ring_mask(fn, options.mask, q.batch);
  check_ring_logit(fn, options.logit);
}

/// dst[e] += src[e] for e < count.
template <class T>  // element type
void add_to(T* dst, const T* src, index_t count) {
  for (index_t e = 0; e < count; ++e) dst[e] += src[e];
}

/// One ring step of the backward: every pair of this rank's query chunks and the key chunks
/// of rank who's slice (K/V in kv) adds to dq (this rank's [B, S_r, H, d]) and to dkv
/// (rank who's [dK | dV], zeroed here), and to grad.
template <class Arch, class T, class Policy>  // architecture; element type; policy
void backward_step(const ring_call<T, Policy>& c, int who, const T* kv,
                   const tensor_view<const T>& q, const tensor_view<const T>& out,
                   const tensor_view<const T>& dout, const std::vector<std::vector<T>>& lse, T* dq,
                   T* dkv, policy_gradient& grad, ring_channel& ch, ring_stats& stats,
                   attention_workspace& ws) {
  const index_t B = c.batch, H = q.heads, d = c.dim, H_kv = c.kv_heads, S = q.seq;
  const auto views = kv_views(c, kv, who);
  const auto dviews = kv_views(c, dkv, who);
  std::fill(dkv, dkv + 2 * c.kv_elements(who), T(0));
  std::vector<T> gq, gk, gv;
  std::vector<index_t> lengths;
  for_each_pair(c, who, ch, stats, [&](int cq, int pk, const chunk& kc) {
    const chunk qc = c.own().parts[cq];
    const index_t q0 = c.own().local_begin(cq),
                  k0 = c.slices[static_cast<size_t>(who)].local_begin(pk);
    gq.resize(static_cast<size_t>(B * qc.length * H * d));
    gk.resize(static_cast<size_t>(B * kc.length * H_kv * d));
    gv.resize(gk.size());
    attention_gradients<T> g{bshd_view(gq.data(), B, qc.length, H, d),
                             bshd_view(gk.data(), B, kc.length, H_kv, d),
                             bshd_view(gv.data(), B, kc.length, H_kv, d), nullptr, &grad};
    attention_options<Policy> o = c.pair_options(cq, kc, lengths);
    o.path = attention_path::fused;  // the weights from the global lse (materialised: local)
    attention_backward<Arch, T>(rows_of(q, q0, qc.length), rows_of(views.first, k0, kc.length),
                                rows_of(views.second, k0, kc.length), rows_of(out, q0, qc.length),
                                rows_of(dout, q0, qc.length), lse[static_cast<size_t>(cq)].data(),
                                g, o, &ws);
    for (index_t b = 0; b < B; ++b) {
      add_to(dq + (b * S + q0) * H * d, gq.data() + b * qc.length * H * d, qc.length * H * d);
      add_to(dviews.first.row(b, k0, 0), gk.data() + b * kc.length * H_kv * d,
             kc.length * H_kv * d);
      add_to(dviews.second.row(b, k0, 0), gv.data() + b * kc.length * H_kv * d,
             kc.length * H_kv * d);
    }
  });
}

/// Writes a contiguous [B, S, H, d] buffer into a view.
template <class T>  // element type
void unpack(const T* from, const tensor_view<T>& t) {
  for (index_t b = 0; b < t.batch; ++b)
    for (index_t s = 0; s < t.seq; ++s)
      for (index_t h = 0; h < t.heads; ++h, from += t.dim)
        std::copy(from, from + t.dim, t.row(b, s, h));
}

}  // namespace detail

/// Context-parallel attention backward: this rank's share of ssmax::attention_backward over
/// the whole sequence (see the top of this header). q, k, v, options, ctx: the forward's;
/// out and lse: what ring_attention wrote on this rank (the global result); dout = dL/dout of
/// this rank's rows. grads.dq, dk, dv receive this rank's rows; grads.policy, when set, is
/// added the per-head dL/ds and dL/db of the WHOLE sequence (the same on every rank);
/// grads.d_multiplier must be null. Always the fused backward. Collective over ctx.comm.
template <class Arch = default_arch,      // xsimd architecture tag or scalar_arch
          class T,                        // float or double
          class Policy = softmax_policy,  // a length policy
          std::enable_if_t<detail::ring_views_v<T>, int> = 0>  // else the overload below
void ring_attention_backward(ssmax::detail::identity_t<tensor_view<const T>> q,
                             ssmax::detail::identity_t<tensor_view<const T>> k,
                             ssmax::detail::identity_t<tensor_view<const T>> v,
                             ssmax::detail::identity_t<tensor_view<const T>> out,
                             ssmax::detail::identity_t<tensor_view<const T>> dout,
                             ssmax::detail::identity_t<const T*> lse, attention_gradients<T> grads,
                             const attention_options<Policy>& options, const ring_context& ctx,
                             attention_workspace* workspace = nullptr) {
  const char* fn = "distributed::ring_attention_backward";
  detail::call_clock clock(ctx);
  ring_stats& stats = clock.stats();
  const auto c = detail::start_call(
      fn, q, k, options, ctx, detail::bytes_per_token(q, k), false, grads.policy != nullptr,
      [&] { detail::check_local_backward(fn, q, k, v, out, dout, lse, grads, options); });
  const index_t S = q.seq, H = q.heads, d = q.dim, B = q.batch, bytes = sizeof(T);
  attention_workspace local_ws;
  attention_workspace& ws = workspace != nullptr ? *workspace : local_ws;
  std::vector<std::vector<T>> chunk_lse;  // per own chunk: [B, H, length], contiguous
  for (int cq = 0; cq < c.own().count; ++cq) {
    const chunk qc = c.own().parts[cq];
    const index_t q0 = c.own().local_begin(cq);
    std::vector<T> l(static_cast<size_t>(B * H * qc.length));
    for (index_t bh = 0; bh < B * H; ++bh)
      std::copy(lse + bh * S + q0, lse + bh * S + q0 + qc.length, l.begin() + bh * qc.length);
    chunk_lse.push_back(std::move(l));
  }
  const auto size = static_cast<size_t>(2 * c.max_kv_elements());
  std::vector<T> acc[2] = {std::vector<T>(size), std::vector<T>(size)}, part(size);
  std::vector<T> dq(static_cast<size_t>(B * S * H * d), T(0));
  policy_gradient grad(H);
  detail::kv_ring<T, Policy> ring(c, k, v, ctx.comm, 2, stats);
  detail::ring_channel acc_ring(ctx.comm, 3, stats);
  int sent = -1;  // the accumulator buffer last sent
  for (int t = 0; t < c.ranks; ++t) {
    const int who = ring.begin(t), into = sent == 0 ? 1 : 0;
    if (t > 0) acc_ring.receive(acc[into].data(), 2 * c.kv_elements(who) * bytes);
    detail::backward_step<Arch>(c, who, ring.current(), q, out, dout, chunk_lse, dq.data(),
                                part.data(), grad, ring.channel(), stats, ws);
    ring.end();
    if (t > 0) acc_ring.wait_receive();
    if (t == 0) std::fill(acc[into].begin(), acc[into].end(), T(0));
    detail::add_to(acc[into].data(), part.data(), 2 * c.kv_elements(who));
    if (c.ranks > 1) {
      if (sent >= 0) acc_ring.wait_send();
      acc_ring.send(acc[into].data(), 2 * c.kv_elements(who) * bytes);
      sent = into;
    }
  }
  const T* home = acc[0].data();
  if (c.ranks > 1) {  // the own slice's accumulator comes back from the left
    home = acc[1 - sent].data();
    acc_ring.receive(acc[1 - sent].data(), 2 * c.kv_elements(c.rank) * bytes);
    acc_ring.wait();
  }
  detail::unpack(home, grads.dk);
  detail::unpack(home + c.kv_elements(c.rank), grads.dv);
  detail::unpack(dq.data(), grads.dq);
  if (grads.policy != nullptr) {
    std::vector<double> sums(grad.s);
    sums.insert(sums.end(), grad.b.begin(), grad.b.end());
    MPI_Allreduce(MPI_IN_PLACE, sums.data(), static_cast<int>(sums.size()), MPI_DOUBLE, MPI_SUM,
                  ctx.comm);
    for (index_t h = 0; h < H; ++h)
      grads.policy->add(h, {0.0, sums[static_cast<size_t>(h)], sums[static_cast<size_t>(H + h)]});
  }
}

/// Views the backward does not take (Eigen::bfloat16 or Eigen::half storage, mixed element
/// types): one readable compile error instead of a failed match against the overload above.
template <class Arch = default_arch,  // xsimd architecture tag or scalar_arch
          class Q, class K, class V,  // the element types of q, k, v
          class O, class D,           // the element types of out and dout
          class... Rest,              // lse, grads, options, ctx, workspace
          std::enable_if_t<!detail::ring_views_v<std::remove_const_t<O>, Q, K, V, D>, int> = 0>
void ring_attention_backward(const tensor_view<Q>&, const tensor_view<K>&, const tensor_view<V>&,
                             const tensor_view<O>&, const tensor_view<D>&, const Rest&...) {
  static_assert(detail::ring_views_v<std::remove_const_t<O>, Q, K, V, D>,
                "ssmax::distributed::ring_attention_backward: q, k, v, out and dout must all view "
                "float or all view double (the ring has no 16-bit storage: convert "
                "Eigen::bfloat16 or Eigen::half views to float)");
}

}  // namespace ssmax::distributed
