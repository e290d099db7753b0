#pragma once
// The argument checks of the attention operator (attention.hpp, attention_backward.hpp,
// paged.hpp, distributed/): each view, the shapes against each other, the mask, the
// options (policy, threads, scale, logit extras, every row's multiplier) and the optional
// outputs. Each throws ssmax::argument_error naming the offending argument before anything
// is written; attention.hpp's check_attention_views runs them in order. What memory a call
// reads, and the checks that no output overlaps it: attention_reads.hpp.

#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <tuple>
#include <type_traits>

#include "attention_options.hpp"
#include "attention_reads.hpp"
#include "detail/parallel.hpp"
#include "error.hpp"
#include "index_array.hpp"
#include "length_policy.hpp"
#include "logit.hpp"
#include "mask.hpp"
#include "storage.hpp"
#include "tensor_view.hpp"

namespace ssmax::detail {

/// Checks one view: data not null, every extent >= 1, strides non-negative (argument_error
/// naming it as `name`).
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

/// A key or value view's head dimension in values: dim, or dim * 32 for block_q8_0.
template <class T>
inline index_t head_values(const tensor_view<T>& t) {
  return t.dim * values_per_element_v<T>;
}

/// The range of an fp8 view's scales: [2^-64, 2^64], so that a key scale folded into the
/// query factor (m scale k_scale, rounded to float) is a normal float for any m scale in
/// [2^-62, 2^63]; vLLM's scales (amax / 448 or / 57344) lie far inside it.
inline constexpr double kFp8ScaleMin = 0x1p-64, kFp8ScaleMax = 0x1p64;

/// What a key or value view's storage type requires beyond check_view (argument_error
/// naming the view as `name`, or its scale as `scale_name`): an fp8 view carries a scale,
/// one value or one per head, each in [kFp8ScaleMin, kFp8ScaleMax]; no other view carries
/// one; a block_q8_0 view's data is aligned to its 2-byte blocks.
template <class T>
inline void check_kv_storage(const tensor_view<const T>& t, const char* fn, const char* name,
                             const char* scale_name) {
  if constexpr (is_fp8_v<T>) {
    require(t.scale.values != nullptr, fn, scale_name,
            "must not be null: an fp8 view's values are scale * code");
    const index_t count = t.scale.per_head ? t.heads : 1;
    for (index_t h = 0; h < count; ++h) {
      const float x = t.scale.values[h];
      require_lazy(x >= kFp8ScaleMin && x <= kFp8ScaleMax, fn, scale_name, [&] {
        return "must be finite and > 0, in [2^-64, 2^64], got " + real_to_string(x) +
               (t.scale.per_head ? " for head " + std::to_string(h) : std::string());
      });
    }
  } else {
    require(t.scale.values == nullptr, fn, scale_name, "must be null: only fp8 views take a scale");
  }
  if constexpr (std::is_same<T, block_q8_0>::value)
    require(reinterpret_cast<std::uintptr_t>(t.data) % alignof(block_q8_0) == 0, fn, name,
            "must point to 2-byte aligned block_q8_0 blocks");
}

/// True when a view carries sequence lengths (tensor_view::seq_lengths, cache_view).
template <class Q, class K, class V, class O>  // element types of q, k, v, out
inline bool views_carry_lengths(const tensor_view<const Q>& q, const tensor_view<const K>& k,
                                const tensor_view<const V>& v, const tensor_view<const O>& out) {
  return q.seq_lengths != nullptr || k.seq_lengths != nullptr || v.seq_lengths != nullptr ||
         out.seq_lengths != nullptr;
}

/// The mask a call runs with: m, its key_lengths those k carries (cache_view). Throws
/// argument_error, before anything is written, when q or out carry lengths (only keys and
/// values have them), when v's differ from k's, when the mask is packed, or when
/// m.key_lengths is set and differs from them in some entry.
template <class Q, class K, class V, class O>  // element types of q, k, v, out
inline attention_mask mask_with_view_lengths(const char* fn, const attention_mask& m,
                                             const tensor_view<const Q>& q,
                                             const tensor_view<const K>& k,
                                             const tensor_view<const V>& v,
                                             const tensor_view<const O>& out) {
  require(q.seq_lengths == nullptr, fn, "q",
          "carries seq_lengths (a cache_view): only k and v may");
  require(out.seq_lengths == nullptr, fn, "out",
          "carries seq_lengths (a cache_view): only k and v may");
  check_view(k, fn, "k");
  check_view(v, fn, "v");
  require(k.seq_lengths != nullptr, fn, "k",
          "carries no seq_lengths while v does: view both with cache_view and the same lengths");
  require(!m.packed(), fn, "k",
          "carries seq_lengths (a cache_view), which packed sequences (cu_seqlens) do not take");
  for (index_t b = 0; b < k.batch; ++b) {
    const index_t len = k.seq_lengths[b];
    require_lazy(len >= 0 && len <= k.seq, fn, "k", [&] {
      return "carries seq_lengths entry " + std::to_string(b) + " = " + std::to_string(len) +
             (len < 0 ? ", which is negative"
                      : ", beyond the view's " + std::to_string(k.seq) +
                            " rows (a cache_view spans the longest length when it is made: "
                            "make the view again after the lengths grow past it)");
    });
    require(v.seq_lengths != nullptr, fn, "v",
            "carries no seq_lengths while k does: view both with cache_view and the same "
            "lengths");
    require_lazy(v.seq_lengths[b] == len, fn, "v", [&] {
      return "carries other seq_lengths than k (entry " + std::to_string(b) + ": " +
             std::to_string(v.seq_lengths[b]) + " against k's " + std::to_string(len) +
             "): view both with cache_view and the same lengths";
    });
    require_lazy(m.key_lengths == nullptr || m.key_lengths[b] == len, fn,
                 "options.mask.key_lengths", [&] {
                   return "entry " + std::to_string(b) + " is " + std::to_string(m.key_lengths[b]) +
                          ", but k carries seq_lengths " + std::to_string(len) +
                          " there (cache_view): they must agree";
                 });
  }
  attention_mask merged = m;
  merged.key_lengths = k.seq_lengths;
  return merged;
}

/// "[B, S, H, d]" of a view, for messages.
template <class T>
inline std::string shape_of(const tensor_view<T>& t) {
  return "[" + std::to_string(t.batch) + ", " + std::to_string(t.seq) + ", " +
         std::to_string(t.heads) + ", " + std::to_string(t.dim) + "]";
}

/// Step 1 of check_attention_views: each view, the shapes against each other, and out (read
/// here, never written) neither sharing memory between its elements nor with an input.
template <class Q, class K, class V, class O>  // element types of q, k, v, out
inline void check_shapes(const char* fn, const tensor_view<const Q>& q,
                         const tensor_view<const K>& k, const tensor_view<const V>& v,
                         const tensor_view<const O>& out, const input_names& names = {}) {
  check_view(q, fn, "q");
  check_view(k, fn, names.k);
  check_view(v, fn, names.v);
  check_view(out, fn, "out");
  check_kv_storage(k, fn, names.k, names.k_scale);
  check_kv_storage(v, fn, names.v, names.v_scale);
  require(q.scale.values == nullptr, fn, "q.scale", "must be null: only fp8 views take a scale");
  require(out.scale.values == nullptr, fn, "out.scale",
          "must be null: only fp8 views take a scale");
  const auto dimension_of = [](const auto& t) {
    using T = std::remove_const_t<std::remove_reference_t<decltype(*t.data)>>;
    if (values_per_element_v<T> == 1) return "head dimension " + std::to_string(t.dim);
    return std::to_string(t.dim) + " Q8_0 blocks per head row (" + std::to_string(head_values(t)) +
           " values)";
  };
  require_lazy(head_values(k) == q.dim, fn, names.k, [&] {
    return "has " + dimension_of(k) + ", q has head dimension " + std::to_string(q.dim);
  });
  require_lazy(head_values(v) == q.dim, fn, names.v, [&] {
    return "has " + dimension_of(v) + ", q has head dimension " + std::to_string(q.dim);
  });
  require_lazy(k.batch == q.batch, fn, names.k, [&] {
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
  require_disjoint_from_inputs(out.data, last_offset(out) + 1, fn, "out", q, k, v, names);
}

/// Step 2, packed sequences: the offsets, each starting at 0, never decreasing, ending at the
/// tensor's token count.
inline void check_packed_offsets(const char* fn, const attention_mask& m, index_t batch,
                                 index_t total_q, index_t total_k) {
  require(batch == 1, fn, "q", "must have batch 1 with packed sequences");
  require(m.sequences >= 1, fn, "options.mask.sequences", "must be >= 1");
  for (const auto& offsets : {std::tuple{m.cu_seqlens_q, "options.mask.cu_seqlens_q", total_q},
                              std::tuple{m.cu_seqlens_k, "options.mask.cu_seqlens_k", total_k}}) {
    // Plain locals, not a structured binding: lambdas may capture them in C++17.
    const index_array cu = std::get<0>(offsets);
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

/// Step 3, the multipliers: every row's multiplier m, times the scale, is finite in T (the row
/// API's check, policy_row_multiplier, for every row the mask lets see a key); the error names the
/// first bad row in (sequence, head, row) order, with its n. Policies whose multiplier is the same
/// for every row (softmax_policy) are checked once. A row's keys depend on its head only through a
/// per-head boolean mask or bias (their stride_h); without either, each row's keys, a scan of its
/// bias row, are found once for all heads.
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

/// Step 3: the options: the policy, the threads, the bf16 method, the scale. Returns the resolved
/// scale.
template <class T,            // compute type
          class Options,      // attention_options<Policy> (attention.hpp)
          class Q, class KV>  // element types of q, of k
inline double check_options(const char* fn, const Options& o, const tensor_view<const Q>& q,
                            const tensor_view<const KV>& k) {
  check_policy(o.policy, q.heads, fn);
  require(o.threads >= 0, fn, "options.threads", "must be >= 0 (0: all available)");
  require(o.bf16 == bf16_method::automatic || o.bf16 == bf16_method::dot_products ||
              o.bf16 == bf16_method::float_gemm,
          fn, "options.bf16", "must be bf16_method::automatic, dot_products or float_gemm");
  require_lazy(o.threads <= kMaxThreads, fn, "options.threads",
               [&] { return "must be <= " + std::to_string(kMaxThreads); });
  const double scale = o.scale ? *o.scale : 1.0 / std::sqrt(static_cast<double>(q.dim));
  require(std::isfinite(scale) && scale >= 0.0, fn, "options.scale", "must be finite and >= 0");
  check_logit(fn, o.logit, q.batch, q.heads, q.seq, k.seq);
  check_row_multipliers<T>(fn, o.policy, o.mask, o.logit, q, k, scale);
  return scale;
}

/// Step 4: the optional outputs (or, for the backward, lse as an input): [B, H, n_q] lse
/// and [B, H, n_q, n_k] weights, each disjoint from out, each other, the inputs, the
/// logit's arrays (bias, ALiBi slopes, sinks) and every other array the call reads
/// (`reads`: the mask's, a paged cache's); out disjoint from the logit's arrays and
/// `reads` too. fused: the call asked for the fused path, which never forms weights. n_k:
/// the weights' keys per row (k.seq, or a paged cache's logical key count).
template <class T, class Q, class K, class V,
          class O>  // compute type; element types of q, k, v, out
inline void check_extras(const char* fn, const logit_options& logit, bool fused, const T* lse,
                         const T* weights, const tensor_view<const Q>& q,
                         const tensor_view<const K>& k, const tensor_view<const V>& v,
                         const tensor_view<const O>& out, index_t n_k, const read_arrays& reads,
                         const input_names& names = {}) {
  const index_t rows = q.batch * q.heads * q.seq, out_count = last_offset(out) + 1;
  require_disjoint_from_logit(out.data, out_count, fn, "out", logit);
  require_disjoint_from_reads(out.data, out_count, fn, "out", reads);
  if (weights != nullptr) {
    require(!fused, fn, "extras.weights",
            "needs the materialised path (the fused path never forms them)");
    const index_t count = rows * n_k;
    require(!overlaps(weights, count, out.data, out_count), fn, "extras.weights", "overlaps 'out'");
    require_disjoint_from_inputs(weights, count, fn, "extras.weights", q, k, v, names);
    require_disjoint_from_logit(weights, count, fn, "extras.weights", logit);
    require_disjoint_from_reads(weights, count, fn, "extras.weights", reads);
  }
  if (lse != nullptr) {
    require(!overlaps(lse, rows, out.data, out_count), fn, "extras.lse", "overlaps 'out'");
    if (weights != nullptr)
      require(!overlaps(lse, rows, weights, rows * n_k), fn, "extras.lse",
              "overlaps 'extras.weights'");
    require_disjoint_from_inputs(lse, rows, fn, "extras.lse", q, k, v, names);
    require_disjoint_from_logit(lse, rows, fn, "extras.lse", logit);
    require_disjoint_from_reads(lse, rows, fn, "extras.lse", reads);
  }
}

}  // namespace ssmax::detail
