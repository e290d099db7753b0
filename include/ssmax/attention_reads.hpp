#pragma once
// The memory an attention call touches, for its argument checks (attention_checks.hpp): a
// view's extent (last_offset) and whether its elements are distinct, the names the caller
// gave its inputs, the arrays a call reads besides q, k and v (the mask's lengths and
// offsets, a paged cache's table, the logit options' arrays), and the checks that no
// output overlaps any of them.

#include <algorithm>
#include <string>

#include "error.hpp"
#include "index_array.hpp"
#include "logit.hpp"
#include "mask.hpp"
#include "storage.hpp"
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

/// The names the caller gave q, k and v, for messages: paged_attention reads its keys and
/// values from cache.k_pool and cache.v_pool.
struct input_names {
  const char* q = "q";
  const char* k = "k";
  const char* v = "v";
  const char* k_scale = "k.scale";  ///< an fp8 k's scale (tensor_view::scale)
  const char* v_scale = "v.scale";
};

/// Throws argument_error naming `argument` when [p, p + count) overlaps q, k or v.
template <class Q, class K, class V, class U>  // element types of q, k, v, of p
inline void require_disjoint_from_inputs(const U* p, index_t count, const char* fn,
                                         const char* argument, const tensor_view<const Q>& q,
                                         const tensor_view<const K>& k,
                                         const tensor_view<const V>& v,
                                         const input_names& names = {}) {
  const auto check = [&](const auto& t, const char* name) {
    require_lazy(!overlaps(p, count, t.data, last_offset(t) + 1), fn, argument,
                 [&] { return std::string("overlaps input '") + name + "'"; });
  };
  check(q, names.q);
  check(k, names.k);
  check(v, names.v);
}

/// An array a call reads besides q, k, v and the logit options (logit.hpp), by the name the
/// caller knows it: the mask's lengths, offsets, per-row n and boolean mask, a view's
/// seq_lengths, a paged cache's block table and lengths.
struct read_array {
  const void* data = nullptr;
  index_t bytes = 0;
  const char* name = "";
};

/// The arrays of one call that no output may overlap (at most kMax).
struct read_arrays {
  static constexpr int kMax = 12;
  read_array items[kMax];
  int count = 0;

  void add(const void* data, index_t bytes, const char* name) {
    if (data != nullptr && bytes > 0 && count < kMax) items[count++] = {data, bytes, name};
  }
  /// An fp8 view's scale array (nothing for other views).
  template <class T>  // the view's element type
  void add_scale(const tensor_view<const T>& t, const char* name) {
    if constexpr (is_fp8_v<T>)
      add(t.scale.values, (t.scale.per_head ? t.heads : 1) * index_t(sizeof(float)), name);
  }
  void add(const index_array& a, index_t entries, const char* name) {
    add(a.data(), entries * a.element_bytes(), name);
  }
};

/// The arrays mask m reads for q [batch, n_q, heads, d] over n_k keys per batch entry.
/// key_lengths_name: what the caller called the key lengths. Pre: check_mask passed.
inline read_arrays mask_arrays(const attention_mask& m, index_t batch, index_t heads, index_t n_q,
                               index_t n_k,
                               const char* key_lengths_name = "options.mask.key_lengths") {
  read_arrays r;
  const index_t sequences = sequence_count(m, batch);
  r.add(m.key_lengths, sequences, key_lengths_name);
  if (m.packed()) {
    r.add(m.cu_seqlens_q, sequences + 1, "options.mask.cu_seqlens_q");
    r.add(m.cu_seqlens_k, sequences + 1, "options.mask.cu_seqlens_k");
  }
  r.add(m.row_n, batch * n_q * static_cast<index_t>(sizeof(index_t)), "options.mask.row_n");
  if (m.allowed != nullptr)
    r.add(m.allowed,
          (batch - 1) * m.allowed_stride_b + (heads - 1) * m.allowed_stride_h +
              (n_q - 1) * m.allowed_stride_q + n_k,
          "options.mask.allowed");
  return r;
}

/// mask_arrays of a call over q and k, the key lengths named as the caller gave them:
/// "k.seq_lengths" when they came from k (mask_with_view_lengths).
template <class Q, class KV>  // element types of q, of k
inline read_arrays call_reads(const attention_mask& m, const tensor_view<const Q>& q,
                              const tensor_view<const KV>& k) {
  const bool from_k = k.seq_lengths != nullptr && m.key_lengths == k.seq_lengths;
  return mask_arrays(m, q.batch, q.heads, q.seq, k.seq,
                     from_k ? "k.seq_lengths" : "options.mask.key_lengths");
}

/// Throws argument_error naming `argument` when [p, p + count) overlaps one of `reads`.
template <class U>  // element type of the output
inline void require_disjoint_from_reads(const U* p, index_t count, const char* fn,
                                        const char* argument, const read_arrays& reads) {
  for (int i = 0; i < reads.count; ++i) {
    const read_array& a = reads.items[i];
    require_lazy(!overlaps(reinterpret_cast<const unsigned char*>(p),
                           count * static_cast<index_t>(sizeof(U)),
                           static_cast<const unsigned char*>(a.data), a.bytes),
                 fn, argument, [&] { return std::string("overlaps input '") + a.name + "'"; });
  }
}

}  // namespace ssmax::detail
