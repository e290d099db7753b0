#pragma once
// The argument checks of the attention operator (attention.hpp, attention_backward.hpp,
// paged.hpp, distributed/): each view, the shapes against each other, the mask, the
// options (policy, threads, scale, logit extras, every row's multiplier) and the optional
// outputs. Each throws ssmax::argument_error naming the offending argument before anything
// is written; attention.hpp's check_attention_views runs them in order.

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <tuple>
#include <type_traits>

#include "detail/parallel.hpp"
#include "error.hpp"
#include "length_policy.hpp"
#include "logit.hpp"
#include "mask.hpp"
#include "tensor_view.hpp"

namespace ssmax::detail {

/// Offset of the last element of a view (strides validated non-negative).
template <class T>
inline index_t last_offset(const tensor_view<T>& t) {
  return (t.batch - 1) * t.stride_b + (t.seq - 1) * t.stride_s + (t.heads - 1) * t.stride_h +
         t.dim - 1;
}

/// True when no two (b, s, h, c) of a view share memory.
template <class T>
inline bool distinct_elements(const tensor_view<T>& t) {
  struct axis {
    index_t size, stride;
  };
  axis axes[3] = {{t.batch, t.stride_b}, {t.seq, t.stride_s}, {t.heads, t.stride_h}};
  std::sort(axes, axes + 3, [](const axis& x, const axis& y) { return x.stride < y.stride; });
  index_t extent = t.dim;  // the contiguous head row
  for (const axis& x : axes) {
    if (x.size <= 1) continue;
    if (x.stride < extent) return false;
    extent = x.stride * (x.size - 1) + extent;
  }
  return true;
}

template <class T>
inline void check_view(const tensor_view<T>& t, const char* fn, const char* name) {
  require(t.data != nullptr, fn, name, "must not be null (data)");
  require_lazy(t.batch >= 1 && t.seq >= 1 && t.heads >= 1 && t.dim >= 1, fn, name, [&] {
    return "must have every extent >= 1, got [" + std::to_string(t.batch) + ", " +
           std::to_string(t.seq) + ", " + std::to_string(t.heads) + ", " + std::to_string(t.dim) +
           "]";
  });
  require(t.stride_b >= 0 && t.stride_s >= 0 && t.stride_h >= 0, fn, name,
          "must have non-negative strides");
}

/// Throws argument_error naming `argument` when [p, p + count) overlaps q, k or v.
template <class Q, class KV, class U>  // element types of q, of k and v, of p
inline void require_disjoint_from_inputs(const U* p, index_t count, const char* fn,
                                         const char* argument, const tensor_view<const Q>& q,
                                         const tensor_view<const KV>& k,
                                         const tensor_view<const KV>& v) {
  require(!overlaps(p, count, q.data, last_offset(q) + 1), fn, argument, "overlaps input 'q'");
  require(!overlaps(p, count, k.data, last_offset(k) + 1), fn, argument, "overlaps input 'k'");
  require(!overlaps(p, count, v.data, last_offset(v) + 1), fn, argument, "overlaps input 'v'");
}

/// "[B, S, H, d]" of a view, for messages.
template <class T>
inline std::string shape_of(const tensor_view<T>& t) {
  return "[" + std::to_string(t.batch) + ", " + std::to_string(t.seq) + ", " +
         std::to_string(t.heads) + ", " + std::to_string(t.dim) + "]";
}

/// Step 1 of check_attention_views: each view, the shapes against each other, and out (read
/// here, never written) neither sharing memory between its elements nor with an input.
template <class Q, class KV, class O>  // element types of q, of k and v, of out
inline void check_shapes(const char* fn, const tensor_view<const Q>& q,
                         const tensor_view<const KV>& k, const tensor_view<const KV>& v,
                         const tensor_view<const O>& out) {
  check_view(q, fn, "q");
  check_view(k, fn, "k");
  check_view(v, fn, "v");
  check_view(out, fn, "out");
  require_lazy(k.dim == q.dim, fn, "k", [&] {
    return "has head dimension " + std::to_string(k.dim) + ", q has " + std::to_string(q.dim);
  });
  require_lazy(v.dim == q.dim, fn, "v", [&] {
    return "has head dimension " + std::to_string(v.dim) + ", q has " + std::to_string(q.dim);
  });
  require_lazy(k.batch == q.batch, fn, "k", [&] {
    return "has batch " + std::to_string(k.batch) + ", q has " + std::to_string(q.batch);
  });
  require_lazy(q.heads % k.heads == 0, fn, "k", [&] {
    return "has " + std::to_string(k.heads) + " heads, which does not divide q's " +
           std::to_string(q.heads);
  });
  require_lazy(v.batch == k.batch && v.seq == k.seq && v.heads == k.heads, fn, "v",
               [&] { return "has shape " + shape_of(v) + ", expected k's " + shape_of(k); });
  require_lazy(out.batch == q.batch && out.seq == q.seq && out.heads == q.heads && out.dim == q.dim,
               fn, "out",
               [&] { return "has shape " + shape_of(out) + ", expected q's " + shape_of(q); });
  require(distinct_elements(out), fn, "out", "has strides that make elements share memory");
  require_disjoint_from_inputs(out.data, last_offset(out) + 1, fn, "out", q, k, v);
}

/// Step 2a: packed sequences' offsets, each starting at 0, never decreasing, ending at the
/// tensor's token count.
inline void check_packed_offsets(const char* fn, const attention_mask& m, index_t batch,
                                 index_t total_q, index_t total_k) {
  require(batch == 1, fn, "q", "must have batch 1 with packed sequences");
  require(m.sequences >= 1, fn, "options.mask.sequences", "must be >= 1");
  for (const auto& offsets : {std::tuple{m.cu_seqlens_q, "options.mask.cu_seqlens_q", total_q},
                              std::tuple{m.cu_seqlens_k, "options.mask.cu_seqlens_k", total_k}}) {
    // Plain locals, not a structured binding: lambdas may capture them in C++17.
    const index_t* cu = std::get<0>(offsets);
    const char* name = std::get<1>(offsets);
    const index_t total = std::get<2>(offsets);
    require(cu[0] == 0, fn, name, "must start at 0");
    for (index_t s = 0; s < m.sequences; ++s)
      require_lazy(cu[s + 1] >= cu[s], fn, name, [&] {
        return "must not decrease, but entry " + std::to_string(s + 1) + " is " +
               std::to_string(cu[s + 1]) + " < " + std::to_string(cu[s]);
      });
    require_lazy(cu[m.sequences] == total, fn, name, [&] {
      return "must end at the tensor's token count " + std::to_string(total) + ", got " +
             std::to_string(cu[m.sequences]);
    });
  }
}

/// Step 2: the mask against the tensors (q: n_q and batch; k: n_k).
template <class Q, class KV>  // element types of q, of k
inline void check_mask(const char* fn, const attention_mask& m, const tensor_view<const Q>& q,
                       const tensor_view<const KV>& k) {
  require(m.window >= 0, fn, "options.mask.window", "must be >= 0");
  require(m.window == 0 || m.causal, fn, "options.mask.window", "needs options.mask.causal");
  require(!m.local || m.window_left >= 0, fn, "options.mask.window_left", "must be >= 0");
  require(!m.local || m.window_right >= 0, fn, "options.mask.window_right", "must be >= 0");
  require(m.query_offset >= -1, fn, "options.mask.query_offset", "must be >= 0, or -1 (auto)");
  require_lazy(m.query_offset <= std::numeric_limits<index_t>::max() - q.seq, fn,
               "options.mask.query_offset", [&] {
                 return "is " + std::to_string(m.query_offset) +
                        ": the last query's position + 1 would overflow the index type";
               });
  require(m.n_override >= 0, fn, "options.mask.n_override", "must be >= 0 (0: visible count)");
  require(m.key_offset >= 0, fn, "options.mask.key_offset", "must be >= 0");
  require(m.key_offset <= std::numeric_limits<index_t>::max() - k.seq, fn,
          "options.mask.key_offset", "makes the last key's position overflow the index type");
  if (m.row_n != nullptr)
    for (index_t r = 0; r < q.batch * q.seq; ++r)
      require_lazy(m.row_n[r] >= 0, fn, "options.mask.row_n", [&] {
        return "entry " + std::to_string(r) + " is " + std::to_string(m.row_n[r]) +
               ", must be >= 0 (0: visible count)";
      });
  require((m.cu_seqlens_q == nullptr) == (m.cu_seqlens_k == nullptr), fn,
          "options.mask.cu_seqlens_k", "must be given together with cu_seqlens_q");
  if (m.packed()) check_packed_offsets(fn, m, q.batch, q.seq, k.seq);
  if (m.key_lengths != nullptr)
    for (index_t s = 0; s < sequence_count(m, q.batch); ++s) {
      const index_t len =
          m.key_offset + (m.packed() ? m.cu_seqlens_k[s + 1] - m.cu_seqlens_k[s] : k.seq);
      require_lazy(
          m.key_lengths[s] >= 0 && m.key_lengths[s] <= len, fn, "options.mask.key_lengths", [&] {
            return "entry " + std::to_string(s) + " is " + std::to_string(m.key_lengths[s]) +
                   ", outside [0, " + std::to_string(len) + "]";
          });
    }
  if (m.allowed != nullptr)
    require(m.allowed_stride_b >= 0 && m.allowed_stride_h >= 0 && m.allowed_stride_q >= 0, fn,
            "options.mask.allowed", "must have non-negative strides");
}

/// Step 3b: every row's multiplier m, times the scale, is finite in T (the row API's
/// check, policy_row_multiplier, for every row the mask lets see a key); the error names
/// the first bad row in (sequence, head, row) order, with its n. Policies whose multiplier
/// is the same for every row (softmax_policy) are checked once. A row's keys depend on its
/// head only through a per-head boolean mask or bias (their stride_h); without either,
/// each row's keys, a scan of its bias row, are found once for all heads.
template <class T, class Policy, class Q, class KV>  // compute type; policy; q's, k's types
inline void check_row_multipliers(const char* fn, const Policy& policy, const attention_mask& m,
                                  const logit_options& logit, const tensor_view<const Q>& q,
                                  const tensor_view<const KV>& k, double scale) {
  auto require_row = [&](const row_position& row) {
    require_multiplier_fits<T>(fn, policy.multiplier(row), scale, row);
  };
  if constexpr (std::is_same<Policy, softmax_policy>::value) {
    require_row({1, 0, 0});
  } else {
    const bool per_head = (m.allowed != nullptr && m.allowed_stride_h != 0) ||
                          (logit.bias.data != nullptr && logit.bias.stride_h != 0);
    for (index_t s = 0; s < sequence_count(m, q.batch); ++s) {
      const sequence_span span = sequence_of(m, s, q.seq, k.seq);
      if (per_head) {
        for (index_t h = 0; h < q.heads; ++h)
          for (index_t i = span.q_begin; i < span.q_end; ++i) {
            const row_keys r = visible_keys(m, logit, span, h, i);
            if (r.visible > 0) require_row({r.n, r.position, h});
          }
        continue;
      }
      // Rows outer, heads inner: the first bad (head, row) is the smallest head that fails
      // on some row, at the first row it fails on.
      index_t bad_head = q.heads, bad_row = 0;
      for (index_t i = span.q_begin; i < span.q_end && bad_head > 0; ++i) {
        const row_keys r = visible_keys(m, logit, span, 0, i);
        if (r.visible == 0) continue;
        for (index_t h = 0; h < bad_head; ++h)
          if (!multiplier_fits<T>(policy.multiplier({r.n, r.position, h}), scale)) {
            bad_head = h, bad_row = i;
            break;
          }
      }
      if (bad_head < q.heads) {
        const row_keys r = visible_keys(m, logit, span, 0, bad_row);
        require_row({r.n, r.position, bad_head});
      }
    }
  }
}

/// Step 3: the options: the policy, the threads, the scale. Returns the resolved scale.
template <class T,            // compute type
          class Options,      // attention_options<Policy> (attention.hpp)
          class Q, class KV>  // element types of q, of k
inline double check_options(const char* fn, const Options& o, const tensor_view<const Q>& q,
                            const tensor_view<const KV>& k) {
  check_policy(o.policy, q.heads, fn);
  require(o.threads >= 0, fn, "options.threads", "must be >= 0 (0: all available)");
  require_lazy(o.threads <= kMaxThreads, fn, "options.threads",
               [&] { return "must be <= " + std::to_string(kMaxThreads); });
  const double scale = o.scale ? *o.scale : 1.0 / std::sqrt(static_cast<double>(q.dim));
  require(std::isfinite(scale) && scale >= 0.0, fn, "options.scale", "must be finite and >= 0");
  check_logit(fn, o.logit, q.batch, q.heads, q.seq, k.seq);
  check_row_multipliers<T>(fn, o.policy, o.mask, o.logit, q, k, scale);
  return scale;
}

/// Step 4: the optional outputs (or, for the backward, lse as an input): [B, H, n_q] lse
/// and [B, H, n_q, n_k] weights, each disjoint from out, each other, the inputs and the
/// logit's arrays (bias, ALiBi slopes, sinks); out disjoint from the logit's arrays too.
/// fused: the call asked for the fused path, which never forms weights.
template <class T, class Q, class KV, class O>  // compute type; element types of q, k/v, out
inline void check_extras(const char* fn, const logit_options& logit, bool fused, const T* lse,
                         const T* weights, const tensor_view<const Q>& q,
                         const tensor_view<const KV>& k, const tensor_view<const KV>& v,
                         const tensor_view<const O>& out) {
  const index_t rows = q.batch * q.heads * q.seq, out_count = last_offset(out) + 1;
  require_disjoint_from_logit(out.data, out_count, fn, "out", logit);
  if (weights != nullptr) {
    require(!fused, fn, "extras.weights",
            "needs the materialised path (the fused path never forms them)");
    const index_t count = rows * k.seq;
    require(!overlaps(weights, count, out.data, out_count), fn, "extras.weights", "overlaps 'out'");
    require_disjoint_from_inputs(weights, count, fn, "extras.weights", q, k, v);
    require_disjoint_from_logit(weights, count, fn, "extras.weights", logit);
  }
  if (lse != nullptr) {
    require(!overlaps(lse, rows, out.data, out_count), fn, "extras.lse", "overlaps 'out'");
    if (weights != nullptr)
      require(!overlaps(lse, rows, weights, rows * k.seq), fn, "extras.lse",
              "overlaps 'extras.weights'");
    require_disjoint_from_inputs(lse, rows, fn, "extras.lse", q, k, v);
    require_disjoint_from_logit(lse, rows, fn, "extras.lse", logit);
  }
}

}  // namespace ssmax::detail
