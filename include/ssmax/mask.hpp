#pragma once
// Attention masks, and THE one function that says which keys a query row sees and what
// its n is: visible_keys(). Every kernel, the reference and the tests call it, so
// "where is n computed for a padded causal row?" has one answer: here.
//
// A mask combines any of these constraints (all of them AND-ed):
//   causal        key position <= query position;
//   window w      (causal) key position > query position - w, so n = min(p + 1, w);
//   local window  (left, right), no causality needed: key position in
//                 [query position - left, query position + right] (encoders; FlashAttention's
//                 window_size); AND-ed with the others like every constraint;
//   key_lengths   per sequence: keys at positions >= key_lengths[b] are padding;
//   varlen        packed sequences given by cumulative offsets cu_seqlens_q/k[0..B]
//                 (FlashAttention's varlen convention: the tensors hold batch 1 and
//                 total_q / total_k tokens; sequence b owns rows [cu[b], cu[b+1]));
//                 positions, causality and n restart at each sequence;
//   allowed       an arbitrary boolean mask, allowed[b*stride_b + h*stride_h +
//                 i*stride_q + j] (stride 0 broadcasts; i and j index tensor rows);
//   n_override    when >= 1, the n given to the length policy for every row (visible
//                 keys are still the masked ones);
//   row_n         per query row, row_n[b * n_q + i] (i the tensor query row; packed: b = 0
//                 and i the packed row): when >= 1, the policy's n for that row, ahead of
//                 n_override (0: as if absent). For callers that hold a slice of the keys
//                 and know the row's global n (context parallelism, distributed/).
//
// Positions: key j of a sequence is at position key_offset + j (0-based, from the sequence
// start; key_offset = 0 unless the tensors hold a slice of the keys that starts later);
// query i is at position query_offset + i. query_offset = -1 (the default) puts the
// queries at the end of the sequence's keys, max(0, L - n_q) + i, which is the KV-cache
// convention (queries at T..T+n_q-1 over T+n_q keys) and FlashAttention's bottom-right
// alignment. L is the sequence's own key count: key_lengths[b] when given (a ragged decode
// batch: row i of sequence b sits at L_b - n_q + i; a right-padded prefill keeps positions
// 0..n_q-1), else key_offset + the tensor's n_k (with varlen, the sequence's packed length).
// A causal query at a position past the last key (query_offset >= n_k) sees every key:
// that is what "key position <= query position" means, not an error.
//
// n (section 2 of the paper): the number of keys the row can actually see after every
// constraint above; a row with n = 0 outputs zeros and log-sum-exp -inf.

#include <algorithm>

#include "error.hpp"
#include "index_array.hpp"

namespace ssmax {

/// Description of what each query row may attend to. Pointers are borrowed: they must
/// stay valid during the call that uses the mask. Lengths and offsets (key_lengths,
/// cu_seqlens_q, cu_seqlens_k) may point to int32 or int64 values (index_array.hpp).
struct attention_mask {
  bool causal = false;             ///< key position <= query position
  index_t window = 0;              ///< sliding window width (needs causal); 0 = none
  index_t query_offset = -1;       ///< position of query 0; -1 = max(0, L - n_q)
  index_array key_lengths{};       ///< [B] true key count per sequence; null = none
  index_array cu_seqlens_q{};      ///< [B + 1] packed query offsets; null = not packed
  index_array cu_seqlens_k{};      ///< [B + 1] packed key offsets (with cu_seqlens_q)
  index_t sequences = 0;           ///< B for packed sequences (entries of cu_* minus 1)
  const bool* allowed = nullptr;   ///< boolean mask, true = visible; null = none
  index_t allowed_stride_b = 0;    ///< allowed: elements between batch entries (0 = broadcast)
  index_t allowed_stride_h = 0;    ///< allowed: elements between heads (0 = broadcast)
  index_t allowed_stride_q = 0;    ///< allowed: elements between query rows
  index_t n_override = 0;          ///< when >= 1, the policy's n for every row
  index_t key_offset = 0;          ///< position of key 0 (a slice of a longer sequence)
  const index_t* row_n = nullptr;  ///< [B, n_q] per-row policy n when >= 1; null = none
  bool local = false;              ///< bidirectional local window (window_left, window_right)
  index_t window_left = 0;         ///< local: keys up to this many positions before the query
  index_t window_right = 0;        ///< local: keys up to this many positions after the query

  /// No constraint: every row sees every key (n = n_k).
  static attention_mask none() { return {}; }
  /// Causal; queries at positions offset..offset+n_q-1 (-1: at the end of the keys).
  static attention_mask causal_mask(index_t offset = -1) {
    attention_mask m;
    m.causal = true;
    m.query_offset = offset;
    return m;
  }
  /// Causal sliding window of w keys (the query's own key included). Pre (checked, throws
  /// argument_error naming 'w'): w >= 1 (the field's 0 means "no window": use causal_mask).
  static attention_mask sliding_window(index_t w, index_t offset = -1) {
    detail::require(w >= 1, "attention_mask::sliding_window", "w",
                    "must be >= 1 (a window of 0 keys would mean no window: use causal_mask)");
    attention_mask m = causal_mask(offset);
    m.window = w;
    return m;
  }
  /// Bidirectional local window: query at position p sees keys at positions
  /// [p - left, p + right] (no causality; 0, 0 is the query's own position). Pre (checked,
  /// throws argument_error naming 'left' or 'right'): left >= 0, right >= 0.
  static attention_mask local_window(index_t left, index_t right, index_t offset = -1) {
    detail::require(left >= 0, "attention_mask::local_window", "left", "must be >= 0");
    detail::require(right >= 0, "attention_mask::local_window", "right", "must be >= 0");
    attention_mask m;
    m.local = true;
    m.window_left = left;
    m.window_right = right;
    m.query_offset = offset;
    return m;
  }
  /// Key padding: sequence b has lengths[b] real keys, the rest are padding.
  static attention_mask key_padding(index_array lengths) {
    attention_mask m;
    m.key_lengths = lengths;
    return m;
  }
  /// A batched KV cache (tensor_view.hpp cache_view): causal, sequence b holds lengths[b]
  /// keys, and its queries sit at the end of them (decode: the one query at L_b - 1).
  static attention_mask cache(index_array lengths) {
    attention_mask m = causal_mask();
    m.key_lengths = lengths;
    return m;
  }
  /// Packed variable-length sequences (FlashAttention varlen), causal or not.
  static attention_mask varlen(index_array cu_q, index_array cu_k, index_t count,
                               bool is_causal = false) {
    attention_mask m;
    m.cu_seqlens_q = cu_q;
    m.cu_seqlens_k = cu_k;
    m.sequences = count;
    m.causal = is_causal;
    return m;
  }
  /// Arbitrary boolean mask [B, H, n_q, n_k] with the given strides (0 broadcasts).
  static attention_mask boolean(const bool* mask, index_t stride_q, index_t stride_b = 0,
                                index_t stride_h = 0) {
    attention_mask m;
    m.allowed = mask;
    m.allowed_stride_q = stride_q;
    m.allowed_stride_b = stride_b;
    m.allowed_stride_h = stride_h;
    return m;
  }
  /// This mask with the policy's n fixed to `n` for every row.
  attention_mask with_n(index_t n) const {
    attention_mask m = *this;
    m.n_override = n;
    return m;
  }
  bool packed() const { return cu_seqlens_q != nullptr; }
};

/// One sequence of a problem: where its queries and keys are in the tensors.
struct sequence_span {
  index_t tensor_batch = 0;  ///< batch index into the q/k/v/out views
  index_t q_begin = 0;       ///< first query row (tensor seq index)
  index_t q_end = 0;         ///< one past the last query row
  index_t k_begin = 0;       ///< first key row (tensor seq index)
  index_t k_end = 0;         ///< one past the last key row
  index_t offset = 0;        ///< absolute position of query q_begin
  index_t sequence = 0;      ///< sequence number (index into key_lengths)
};

/// What one query row sees: keys [begin, end) (tensor seq indices) minus those the
/// boolean mask hides, `visible` of them in all; `n` is the length the policy uses.
struct row_keys {
  index_t begin = 0;     ///< first key that may be visible
  index_t end = 0;       ///< one past the last key that may be visible
  index_t visible = 0;   ///< keys actually visible (0: the row outputs zeros)
  index_t n = 0;         ///< the policy's n: n_override, else visible
  index_t position = 0;  ///< absolute position of the query (the policy's p)
  const bool* allowed =
      nullptr;  ///< boolean row indexed by tensor key j; null = all of [begin, end)
};

/// Number of sequences: mask.sequences when packed, else the tensors' batch.
inline index_t sequence_count(const attention_mask& mask, index_t batch) {
  return mask.packed() ? mask.sequences : batch;
}

/// Sequence s of a problem whose tensors hold n_q queries and n_k keys per batch entry.
/// Pre: the mask was validated against these sizes.
inline sequence_span sequence_of(const attention_mask& mask, index_t s, index_t n_q, index_t n_k) {
  sequence_span span;
  span.sequence = s;
  if (mask.packed()) {
    span.tensor_batch = 0;
    span.q_begin = mask.cu_seqlens_q[s];
    span.q_end = mask.cu_seqlens_q[s + 1];
    span.k_begin = mask.cu_seqlens_k[s];
    span.k_end = mask.cu_seqlens_k[s + 1];
  } else {
    span.tensor_batch = s;
    span.q_end = n_q;
    span.k_end = n_k;
  }
  const index_t len_q = span.q_end - span.q_begin;
  const index_t len_k = mask.key_lengths != nullptr ? mask.key_lengths[s]
                                                    : mask.key_offset + span.k_end - span.k_begin;
  span.offset = mask.query_offset >= 0 ? mask.query_offset : std::max<index_t>(0, len_k - len_q);
  return span;
}

/// The policy's n of row i (tensor query row) of seq that sees `visible` keys: row_n's
/// entry when >= 1, else n_override when >= 1, else visible.
inline index_t policy_length(const attention_mask& mask, const sequence_span& seq, index_t i,
                             index_t visible) {
  index_t n = mask.n_override > 0 ? mask.n_override : visible;
  if (mask.row_n != nullptr) {  // [B, n_q]: packed tensors have batch 1, q_end = n_q otherwise
    const index_t given = mask.row_n[(mask.packed() ? 0 : seq.tensor_batch * seq.q_end) + i];
    if (given > 0) n = given;
  }
  return n;
}

/// THE answer to "which keys does row i (tensor query row, inside seq) of head h see, and
/// what is its n?". Cost O(1), plus O(end - begin) when a boolean mask is present and
/// count_allowed holds (without it, visible and n ignore the boolean mask: an upper bound
/// that planning code uses to find key ranges cheaply).
inline row_keys visible_keys(const attention_mask& mask, const sequence_span& seq, index_t head,
                             index_t i, bool count_allowed = true) {
  row_keys r;
  r.position = seq.offset + (i - seq.q_begin);
  const index_t k0 = mask.key_offset;                    // position of key seq.k_begin
  index_t lo = k0, hi = k0 + (seq.k_end - seq.k_begin);  // key positions [lo, hi)
  if (mask.key_lengths != nullptr) hi = std::min(hi, mask.key_lengths[seq.sequence]);
  if (mask.causal) hi = std::min(hi, r.position + 1);
  if (mask.causal && mask.window > 0) lo = std::max(lo, r.position - mask.window + 1);
  if (mask.local) {
    lo = std::max(lo, r.position - mask.window_left);
    if (mask.window_right < hi - r.position) hi = r.position + mask.window_right + 1;
  }
  if (hi < lo) hi = lo;
  r.begin = seq.k_begin + (lo - k0);
  r.end = seq.k_begin + (hi - k0);
  r.visible = hi - lo;
  if (mask.allowed != nullptr && count_allowed) {
    r.allowed = mask.allowed + seq.tensor_batch * mask.allowed_stride_b +
                head * mask.allowed_stride_h + i * mask.allowed_stride_q;
    r.visible = 0;
    for (index_t j = r.begin; j < r.end; ++j) r.visible += r.allowed[j] ? 1 : 0;
  }
  r.n = policy_length(mask, seq, i, r.visible);
  return r;
}

}  // namespace ssmax
