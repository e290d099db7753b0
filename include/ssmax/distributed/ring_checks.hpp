#pragma once
// The local argument checks of a ring call (ring_attention.hpp), run on every rank inside
// the agreement (agreement.hpp) before any ring message: the operator's own checks without
// the global key lengths, then what the ring adds (self-attention slices without lengths,
// the masks and logit extras it supports, outputs apart from the global lengths).

#include "../attention.hpp"
#include "../attention_backward.hpp"

namespace ssmax::distributed::detail {

using ssmax::detail::require;

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

}  // namespace ssmax::distributed::detail
