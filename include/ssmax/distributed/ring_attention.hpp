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

#include <type_traits>

#include "ring_call.hpp"

namespace ssmax::distributed {

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
