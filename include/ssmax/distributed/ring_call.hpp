#pragma once
// The plumbing of a ring call (ring_attention.hpp has the algorithm and the entry points):
// the call's setup after the agreement (start_call), the K/V slices going around the ring
// (kv_ring), the walk over the non-empty (query chunk, key chunk) pairs of a step
// (for_each_pair), the running merged result of the forward, and one forward or backward
// step.

#include <algorithm>
#include <type_traits>
#include <utility>
#include <vector>

#include "../attention.hpp"
#include "../attention_backward.hpp"
#include "agreement.hpp"
#include "layout.hpp"
#include "ring.hpp"
#include "ring_checks.hpp"

namespace ssmax::distributed::detail {

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

}  // namespace ssmax::distributed::detail
