#pragma once
// What the attention kernels share before any arithmetic: the validated problem, the
// block constants, and the plans' layout of the caller's workspace (a bump arena, the
// size of every packed buffer).
//
// Nothing here validates: the public API (attention.hpp) has checked every argument.

#include <algorithm>
#include <cstddef>

#include "../detail/sanitizer.hpp"
#include "../length_policy.hpp"
#include "../logit.hpp"
#include "../mask.hpp"
#include "../tensor_view.hpp"
#include "../workspace.hpp"
#include "gemm.hpp"

namespace ssmax::kernels {

/// Scratch rows of a decode task of the fused kernel: its at most kDotMaxRows query rows
/// times the heads it takes together (whole GQA groups where they fit).
inline constexpr index_t kDecodeScratchRows = 64;
/// Query rows per task of the fused backward.
inline constexpr index_t kBackwardQueryBlock = 64;
/// Query rows per prefill task of the fused kernel (more than kDotMaxRows rows, one head):
/// each packed K^T / V block read from L2 serves 128 query rows (measured against 64:
/// docs/performance.md, "Constants and the measurements behind them").
inline constexpr index_t kPrefillQueryBlock = 128;
/// Query rows per task of the materialised kernel.
inline constexpr index_t kMaterialisedQueryBlock = 32;
/// Keys per block: the inner loop of both kernels.
inline constexpr index_t kKeyBlock = 256;
/// Keys per chunk of one head when a task with few rows splits its keys (flash-decoding):
/// a task of h heads takes max(1, kDecodeChunk / kKeyBlock / h) key blocks per chunk. A
/// multiple of kKeyBlock, fixed, so that results never depend on the thread count.
inline constexpr index_t kDecodeChunk = 2048;
/// Tasks with at most this many rows split their keys into chunks.
inline constexpr index_t kSplitMaxRows = 16;
/// Blocks with at most this many rows use dot products instead of the packed GEMM.
inline constexpr index_t kDotMaxRows = 3;

/// The storage types of one call's tensors (storage.hpp, attention_storage): q, k, v, out.
/// The kernels compute in the problem's T and convert on the way in (kernels/convert.hpp)
/// and on the final store to out.
template <class Q,  // element type of q
          class K,  // element type of k
          class V,  // element type of v
          class O>  // element type of out
struct storage_set {
  using q = Q;
  using k = K;
  using v = V;
  using out = O;
};

/// A paged KV cache's block table (paged.hpp). When set, the problem's k and v view the
/// pools (row stride_s apart, head stride_h apart, stride_b unused; seq is the longest
/// cache) and key row j of batch entry b lives at pool row table[b * max_blocks + j /
/// block_size] * block_size + j % block_size, in both pools: the kernels find each key
/// block's rows through the table (attention_problem::block_rows) and read them in place.
struct kv_pages {
  index_array table{};     ///< [B, max_blocks], or null: k and v are plain views
  index_t max_blocks = 0;  ///< entries per row of table
  index_t block_size = 0;  ///< tokens per page
};

/// Where one kv head's key (or value) rows of a sequence live, from some key on: row j at
/// base + offset_of(j), strided, or through a paged cache's table (attention_problem::block_rows
/// gives the offsets).
template <class K>  // storage type of the keys or values
struct key_rows {
  const K* base = nullptr;
  detail::row_map offset_of;
  /// The same rows from row j0 on.
  key_rows from(index_t j0) const {
    const detail::row_map& at = offset_of;
    if (at.offsets != nullptr) return {base, detail::row_map{at.stride, at.offsets + j0}};
    return {base + j0 * at.stride, detail::row_map{at.stride}};
  }
};

/// A validated attention call, as the kernels receive it.
template <class T,                            // compute type: float or double (compute_t)
          class Policy,                       // a length policy (length_policy.hpp)
          class S = storage_set<T, T, T, T>>  // storage types of q, k, v and out
struct attention_problem {
  using storage = S;
  tensor_view<const typename S::q> q;  ///< [B, n_q, H, d]
  tensor_view<const typename S::k> k;  ///< [B, n_k, H_kv, d] (d / 32 blocks for block_q8_0)
  tensor_view<const typename S::v> v;  ///< [B, n_k, H_kv, d] (d / 32 blocks for block_q8_0)
  tensor_view<typename S::out> out;    ///< [B, n_q, H, d]
  const Policy* policy = nullptr;
  attention_mask mask;
  logit_options logit;              ///< bias, ALiBi, soft-cap, sinks (logit.hpp); none by default
  double scale = 1.0;               ///< logit scale (1/sqrt(d) by default)
  T* lse = nullptr;                 ///< [B, H, n_q] or null (compute type)
  T* weights = nullptr;             ///< [B, H, n_q, n_k] or null (materialised only; compute type)
  int threads = 1;                  ///< threads to use (>= 1)
  kv_pages pages;                   ///< a paged cache's block table, or none
  bool allow_bf16_weights = false;  ///< attention_options::allow_bf16_weights
  bool bf16_dot_products = false;   ///< attention_options::bf16 resolved: vdpbf16ps allowed
  bool allow_int8_dot_products = false;  ///< attention_options::allow_int8_dot_products

  index_t sequences() const { return sequence_count(mask, q.batch); }
  /// Sequence s, its keys ending at its key_lengths entry when the mask has them: the
  /// kernels read no key row past a sequence's own length (padding, or a paged cache's
  /// block-table entries and pool rows the sequence does not own).
  sequence_span span(index_t s) const {
    sequence_span seq = sequence_of(mask, s, q.seq, k.seq);
    if (mask.key_lengths != nullptr)
      seq.k_end = seq.k_begin + std::clamp<index_t>(mask.key_lengths[s] - mask.key_offset, 0,
                                                    seq.k_end - seq.k_begin);
    return seq;
  }
  /// Sequence s with every key row of the tensors, padding included (what the backward
  /// writes key gradients to).
  sequence_span full_span(index_t s) const { return sequence_of(mask, s, q.seq, k.seq); }
  index_t kv_head(index_t h) const { return h / (q.heads / k.heads); }  ///< g(h)
  /// Which keys query row i of head h in seq sees, and its n (mask and bias: logit.hpp).
  row_keys keys_of(const sequence_span& seq, index_t h, index_t i) const {
    return visible_keys(mask, logit, seq, h, i);
  }
  /// Index of query row i of head h in batch b in the per-row outputs [B, H, n_q] (lse,
  /// dL/dm); the weights' row starts at row_index(b, h, i) * n_k.
  index_t row_index(index_t b, index_t h, index_t i) const { return (b * q.heads + h) * q.seq + i; }

  /// Key row kb of batch entry b, kv head g (the first row of a key block).
  const typename S::k* k_row(index_t b, index_t kb, index_t g) const {
    return pages.table == nullptr ? k.row(b, kb, g)
                                  : k.data + g * k.stride_h + pool_row(b, kb) * k.stride_s;
  }
  /// Value row kb of batch entry b, kv head g.
  const typename S::v* v_row(index_t b, index_t kb, index_t g) const {
    return pages.table == nullptr ? v.row(b, kb, g)
                                  : v.data + g * v.stride_h + pool_row(b, kb) * v.stride_s;
  }
  /// The rows of the keys [kb, kb + nk) counted from k_row(b, kb, g)'s (and v_row's: the
  /// pools share the table), written to rows[0, nk) when paged; null, meaning consecutive
  /// rows, otherwise. Wrap in row_map{k.stride_s, ...} (v.stride_s for values) to read them.
  const index_t* block_rows(index_t b, index_t kb, index_t nk, index_t* rows) const {
    if (pages.table == nullptr) return nullptr;
    const index_t first = pool_row(b, kb);
    for (index_t j = 0; j < nk; ++j) rows[j] = pool_row(b, kb + j) - first;
    return rows;
  }
  /// The factor of kv head g's keys: the fp8 view's scale (value = scale * code), else 1.
  /// The kernels read the codes and fold it into each query (query_factor).
  double k_scale(index_t g) const {
    if constexpr (is_fp8_v<typename S::k>) return static_cast<double>(k.scale.of_head(g));
    (void)g;
    return 1.0;
  }
  /// The factor of kv head g's values: the fp8 view's scale, else 1. The kernels read the
  /// codes and apply it to each output row with its normalisation (finish_row).
  double v_scale(index_t g) const {
    if constexpr (is_fp8_v<typename S::v>) return static_cast<double>(v.scale.of_head(g));
    (void)g;
    return 1.0;
  }

 private:
  /// Row of key j of batch entry b in the pools (head 0).
  index_t pool_row(index_t b, index_t j) const {
    const index_t page = pages.table[b * pages.max_blocks + j / pages.block_size];
    return page * pages.block_size + j % pages.block_size;
  }
};

namespace detail {

/// Bump allocator over a workspace; with a null base it only counts bytes. Buffers start
/// kWorkspaceAlignment bytes apart. In AddressSanitizer builds every buffer is followed by
/// a poisoned gap of kAsanGap bytes, so that a write past a carved buffer is reported
/// instead of landing silently in the next one.
class arena {
 public:
  explicit arena(unsigned char* base) : base_(base) {}
  template <class U>  // trivially constructible element type
  U* take(index_t count) {
    used_ = (used_ + kAlign - 1) / kAlign * kAlign;
    U* p = base_ != nullptr ? reinterpret_cast<U*>(base_ + used_) : nullptr;
    used_ += static_cast<std::size_t>(count) * sizeof(U);
    if (ssmax::detail::kAsan) {
      if (base_ != nullptr) ssmax::detail::poison(base_ + used_, kAsanGap);
      used_ += kAsanGap;
    }
    return p;
  }
  /// Bytes the buffers taken so far span, rounded up to the alignment.
  std::size_t used() const { return (used_ + kAlign - 1) / kAlign * kAlign; }
  /// True when the arena only counts bytes (no base): take() returns null.
  bool counting() const { return base_ == nullptr; }

 private:
  static constexpr std::size_t kAlign = ssmax::detail::kWorkspaceAlignment;
  static constexpr std::size_t kAsanGap = 64;
  unsigned char* base_;
  std::size_t used_ = 0;
};

/// A kernel's plan with its buffers carved from ws, which must hold plan_bytes<Plan>(args...)
/// bytes. Plan::carve(args..., arena&) lays the buffers out, and only counts them when the
/// arena is counting.
template <class Plan, class... Args>  // a kernel's plan; the arguments of its carve
inline Plan carve_plan(attention_workspace& ws, const Args&... args) {
  Plan plan;
  ssmax::detail::unpoison(ws.data(), ws.capacity());  // the previous call's gaps
  arena a(ws.data());
  plan.carve(args..., a);
  return plan;
}

/// Workspace bytes carve_plan<Plan>(ws, args...) needs.
template <class Plan, class... Args>  // a kernel's plan; the arguments of its carve
inline std::size_t plan_bytes(const Args&... args) {
  Plan plan;
  arena a(nullptr);
  plan.carve(args..., a);
  return a.used();
}

// The size of every packed buffer, in elements, for w lanes (the architecture's vector
// width) and head dimension d. Every plan carves its buffers with these, so that a buffer
// and the kernel that fills it cannot disagree.

/// One packed K^T block (pack_kt of at most kKeyBlock keys, row stride
/// kt_stride(round_up(nk, w), w)): d rows of kt_stride(round_up(kKeyBlock, w), w).
inline index_t packed_kt_elements(index_t d, index_t w) {
  return d * kt_stride(round_up(kKeyBlock, w), w);
}
/// One zero-padded V block (pad_rows of at most kKeyBlock rows): kKeyBlock rows of
/// round_up(d, w).
inline index_t padded_v_elements(index_t d, index_t w) { return kKeyBlock * round_up(d, w); }
/// Row stride of a block's scores: round_up(kKeyBlock, w) (the GEMM writes whole vectors)
/// plus one vector, so that rows 1 KiB apart do not alias in the cache.
inline index_t score_stride(index_t w) { return round_up(kKeyBlock, w) + w; }

}  // namespace detail
}  // namespace ssmax::kernels
