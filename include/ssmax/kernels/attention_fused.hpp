#pragma once
// Fused streaming attention (FlashAttention-style online softmax over key blocks), in
// three phases (attention_fused, at the bottom):
//   1. pack_keys_and_values: K^T and V packed once per (sequence, kv head, key block), for
//      the prefill tasks;
//   2. each task (fused_plan.hpp has how the work is cut) runs prefill_task or decode_task
//      over its key blocks, then finish_task_row writes its rows; a task whose keys are
//      split into chunks leaves one partial per chunk instead;
//   3. merge_chunks merges those partials in chunk order and writes the rows.
// Per key block, both kinds of task compute raw scores, run the row-logit step and the
// online softmax on them (task_rows_softmax: row_logits.hpp, online_softmax.hpp), then
// add P V.
//
// Work is cut into tasks: a block of query rows of some heads of one sequence. A task
// walks the key blocks its rows can see (a grid of kKeyBlock keys from each sequence's
// start, the last block ending at the sequence's key length: attention_problem::span, so
// no key row past a sequence's own keys is read): scores S = Q' K^T of the block (Q' = m scale
// Q, one multiplier per row; scale Q when the logit's extras transform the scores, whose
// epilogue then applies m), the
// row-logit step (epilogue, mask), the online-softmax update (running max and sum per row,
// rescaling the output accumulator), then O += P V.
//
// Two kinds of task:
// - prefill: kPrefillQueryBlock rows of one head, through a register-blocked GEMM on K^T
//   and V packed once per (sequence, kv head, key block), kPrefillStrip rows at a time
//   (prefill_strips.hpp: the strip's scores stay in L1); with bf16 q and k on AVX512-BF16,
//   where the call's bf16 method takes dot products (plan.bf16_dot_scores), the score GEMM is
//   vdpbf16ps on a pair-interleaved K^T (prefill_bf16.hpp), and with
//   the opt-in bf16 weights and bf16 v, P V is vdpbf16ps on a V pair-packed over keys
//   instead of the float V (gemm_bf16.hpp, bf16_values);
// - decode: at most kDotMaxRows rows of consecutive heads (whole GQA groups where they fit,
//   up to kDecodeScratchRows scratch rows in all: decode_heads), through dot products that read K
//   and V in place in kKeyStreams runs, each key and value vector loaded (and widened) once for a
//   register block of the query rows sharing its kv head (dot4_rows, axpy4_rows); with heads
//   adjacent in memory ([B, S, H, d]) each step reads every head of a key, so the cache streams the
//   tensors in order.
// Storage (plan.hpp storage_set, storage.hpp): everything is computed in T; q is widened
// into the scaled copy (setup_rows), K^T and V are widened while packing (pack_kt,
// pad_rows), except on the bf16 dot-product path, which packs the bf16 values as they are
// (prefill_bf16.hpp, gemm_bf16.hpp); decode reads 16-bit K and V in place and widens them in
// registers, as it does 8-bit K and V (key_streams.hpp, convert.hpp; an fp8 scale is folded into
// the queries and the output's factor), and only finish_row rounds, once, to a 16-bit out. A
// task with at most kSplitMaxRows rows and more key blocks than one chunk (kDecodeChunk keys of one
// head; for a group of h heads max(1, kDecodeChunk / kKeyBlock / h) blocks) splits its keys into
// chunks; chunks run in parallel and their (O, state) partials are merged in chunk order
// (flash-decoding).
//
// The decomposition depends only on the shapes and the mask, never on the thread count,
// and each piece is computed the same way whichever thread runs it: results are bitwise
// identical for any number of threads.
//
// Memory beyond inputs and outputs: when some query block is large enough for the GEMM
// (more than kDotMaxRows rows), K^T and V packed once per (sequence, kv head, key block)
// and shared by every query block and head of the group: about 2 * B * H_kv * n_k * d
// elements, the size of K and V; per thread O(kTaskScratchRows * d + kDecodeScratchRows *
// kKeyBlock); for split tasks rows * heads * chunks * d partial accumulators. Never n_q x n_k. All
// of it comes from the caller's attention_workspace. Decode packs nothing.
//
// Numerical contract: out = softmax(m z over the visible keys) V within the operator's bound
// (docs/numerics.md, "Attention"; tests/test_attention.cpp checks it against the double
// reference). Rows with no visible key are zeros with log-sum-exp -inf. Scores that
// overflow and non-finite inputs: online_softmax.hpp (tests/test_nonfinite.cpp).

#include <algorithm>

#include "../detail/parallel.hpp"
#include "fused_plan.hpp"
#include "gemm.hpp"
#include "key_streams.hpp"
#include "online_softmax.hpp"
#include "plan.hpp"
#include "prefill_bf16.hpp"
#include "prefill_strips.hpp"
#include "row_logits.hpp"

namespace ssmax::kernels {
namespace detail {

/// The kv heads a task reads and the scratch rows that read each (consecutive heads of a
/// GQA group share one); the rows' key and value pointers are set per key block.
template <class K, class V>  // storage types of the keys and of the values
struct task_kv_groups {
  kv_group<K> keys[kTaskScratchRows];
  kv_group<V> values[kTaskScratchRows];
  index_t kv_of[kTaskScratchRows];  ///< the kv head of each group
  index_t groups = 0;
};

/// A task's rows before its key blocks: each row's keys and scaled query (setup_rows),
/// its epilogue when the logit's extras transform the scores, zeroed accumulators and
/// states, and the kv
/// heads it reads.
template <class T, class Policy, class S>  // compute type; a length policy; storage_set
void setup_task(const attention_problem<T, Policy, S>& p, const fused_task& t,
                const fused_scratch<T>& sc, index_t dp,
                task_kv_groups<typename S::k, typename S::v>& kv) {
  const sequence_span seq = p.span(t.sequence);
  const index_t d = p.q.dim, rows = t.rows;
  for (index_t hh = 0; hh < t.heads; ++hh) {
    const index_t h = t.head + hh, g = p.kv_head(h);
    setup_rows(p, seq, h, t.q0, rows, sc.info + hh * rows, sc.qs + hh * rows * d);
    if (p.logit.transforms_scores())  // each row's epilogue, once for all its key blocks
      for (index_t r = hh * rows; r < (hh + 1) * rows; ++r)
        sc.logit[r] = row_logit_of(p, seq, h, t.query_of(r), sc.info[r]);
    if (kv.groups > 0 && kv.kv_of[kv.groups - 1] == g) {
      kv.keys[kv.groups - 1].count += rows;
    } else {
      kv.kv_of[kv.groups] = g;
      kv.keys[kv.groups++] = {hh * rows, rows, nullptr};
    }
  }
  for (index_t i = 0; i < kv.groups; ++i)
    kv.values[i] = {kv.keys[i].first, kv.keys[i].count, nullptr};
  std::fill(sc.o, sc.o + t.scratch_rows() * dp, T(0));
  std::fill(sc.state, sc.state + t.scratch_rows(), row_state<double>{});
}

/// The row-logit step (row_logits.hpp) and the online softmax (online_softmax.hpp) of
/// scratch rows [r0, r1) of task t over the keys [kb, kb + nk) of a block, row r's raw
/// scores at s + (r - r0) * ld, turned into its weights P; krows: where the block's key
/// rows are (a paged cache's offsets), for the rare recompute of overflowing scores.
template <class Arch, class T, class Policy, class S>  // tag; compute type; policy; storage_set
void task_rows_softmax(const attention_problem<T, Policy, S>& p, const fused_task& t,
                       const fused_scratch<T>& sc, index_t dp, index_t r0, index_t r1, index_t kb,
                       index_t nk, row_map krows, T* s, index_t ld) {
  const index_t b = p.span(t.sequence).tensor_batch;
  for (index_t r = r0; r < r1; ++r) {
    T* sr = s + (r - r0) * ld;
    const row_keys& rk = sc.info[r];
    const row_logit* logit = p.logit.transforms_scores() ? &sc.logit[r] : nullptr;
    if (!row_logits<Arch>(sr, kb, nk, rk, logit)) {
      std::fill(sr, sr + nk, T(0));
      continue;
    }
    const T flush = flush_threshold<T>(rk.visible);
    if (online_row<Arch>(sr, nk, sc.state[r], sc.o + r * dp, dp, flush)) continue;
    // +inf or NaN scores: the block's logits again, from scores that cannot overflow.
    const index_t h = t.head_of(r), i = t.query_of(r);
    recompute_row_logits<Arch>(sr, kb, nk, rk, logit, p.q.row(b, i, h),
                               p.k_row(b, kb, p.kv_head(h)), krows, p.q.dim,
                               query_factor(p, rk, h));
    online_row_nonfinite<Arch>(sr, nk, sc.state[r], sc.o + r * dp, dp, flush);
  }
}

/// One key block [kb, kb + nk) of a prefill task, kPrefillStrip query rows at a time
/// (prefill_strips.hpp has why): a strip's scores S = scores(Q', K^T), their row logits
/// and online softmax, then O += P V through values(P, V), for the keys [0, hi) some row of
/// the strip can see.
template <class Arch, class T, class Policy, class S, class Scores, class Values>
void prefill_block(const attention_problem<T, Policy, S>& p,
                   const fused_plan<Arch, T, Policy, S>& plan, const fused_task& t,
                   const fused_scratch<T>& sc, index_t kb, index_t nk, row_map krows,
                   const Scores& scores, const Values& values) {
  constexpr index_t W = ssmax::detail::simd<Arch, T>::width;
  for (index_t r0 = 0; r0 < t.rows; r0 += kPrefillStrip) {
    const index_t r1 = std::min(t.rows, r0 + kPrefillStrip);
    const index_t hi = visible_block_keys(sc.info + r0, r1 - r0, kb, nk);
    if (hi == 0) continue;
    scores(r0, r1 - r0, round_up(hi, W), sc.s, plan.score_ld);
    task_rows_softmax<Arch>(p, t, sc, plan.dp, r0, r1, kb, hi, krows, sc.s, plan.score_ld);
    values(r1 - r0, hi, sc.s, plan.score_ld, sc.o + r0 * plan.dp);
  }
}

/// prefill_block with P V on the packed V of block blk (kv head g): in bf16 pairs with the
/// opt-in bf16 weights, else in T.
template <class Arch, class T, class Policy, class S, class Scores>
void prefill_block_values(const attention_problem<T, Policy, S>& p,
                          const fused_plan<Arch, T, Policy, S>& plan, const fused_task& t,
                          const fused_scratch<T>& sc, index_t blk, index_t g, index_t kb,
                          index_t nk, row_map krows, const Scores& scores) {
  if constexpr (bf16_weights_path<Arch, T, S>)
    if (plan.bf16_weights)
      return prefill_block<Arch>(p, plan, t, sc, kb, nk, krows, scores,
                                 bf16_values{plan.v_bf16_block(p, t.sequence, g, blk), sc.p_pairs,
                                             kKeyBlock / 2, plan.dp});
  prefill_block<Arch>(p, plan, t, sc, kb, nk, krows, scores,
                      packed_values<Arch, T>{plan.v_block(p, t.sequence, g, blk), plan.dp});
}

/// A prefill task (more than kDotMaxRows rows of one head) over its key blocks [blk_lo,
/// blk_hi), on the K^T and V the plan packed: the scores by the float GEMM, or by
/// vdpbf16ps on the pair-packed K^T for bf16 q and k. Leaves the unnormalised output in
/// sc.o and the rows' states in sc.state.
template <class Arch, class T, class Policy, class S>  // tag; compute type; policy; storage_set
void prefill_task(const attention_problem<T, Policy, S>& p,
                  const fused_plan<Arch, T, Policy, S>& plan, const fused_task& t, index_t blk_lo,
                  index_t blk_hi, const fused_scratch<T>& sc) {
  task_kv_groups<typename S::k, typename S::v> kv;
  setup_task(p, t, sc, plan.dp, kv);
  const sequence_span seq = p.span(t.sequence);
  const index_t b = seq.tensor_batch, d = p.q.dim, g = kv.kv_of[0];  // one head
  if constexpr (bf16_prefill<Arch, T, S>)
    if (plan.bf16_dot_scores)
      pack_task_q_bf16(p, b, t.head, t.q0, t.rows, sc.info, sc.q_pairs, sc.row_factors);
  index_t offsets[kKeyBlock];  // a paged cache's key rows of the current block
  for (index_t blk = blk_lo; blk < blk_hi; ++blk) {
    const index_t kb = seq.k_begin + blk * kKeyBlock, nk = std::min(kKeyBlock, seq.k_end - kb);
    const row_map krows{p.k.stride_s, p.block_rows(b, kb, nk, offsets)};
    if constexpr (bf16_prefill<Arch, T, S>) {
      if (plan.bf16_dot_scores) {
        const index_t kp = bf16_pairs(d);
        prefill_block_values(
            p, plan, t, sc, blk, g, kb, nk, krows,
            bf16_scores{sc.q_pairs, sc.row_factors, plan.kt_bf16_block(p, t.sequence, g, blk), kp,
                        kp, kBf16KtStride});
        continue;
      }
    }
    prefill_block_values(
        p, plan, t, sc, blk, g, kb, nk, krows,
        packed_scores<Arch, T>{sc.qs, plan.kt_block(p, t.sequence, g, blk), d, plan.ldk});
  }
}

/// A decode task (at most kDotMaxRows rows of a group of heads) over its key blocks
/// [blk_lo, blk_hi): dot products that read K and V in place, in their storage type
/// (key_streams.hpp), each key row loaded once for every row of its kv head. Leaves the
/// unnormalised output in sc.o and the rows' states in sc.state.
template <class Arch, class T, class Policy, class S>  // tag; compute type; policy; storage_set
void decode_task(const attention_problem<T, Policy, S>& p,
                 const fused_plan<Arch, T, Policy, S>& plan, const fused_task& t, index_t blk_lo,
                 index_t blk_hi, const fused_scratch<T>& sc) {
  task_kv_groups<typename S::k, typename S::v> kv;
  setup_task(p, t, sc, plan.dp, kv);
  const sequence_span seq = p.span(t.sequence);
  const index_t b = seq.tensor_batch, d = p.q.dim, rows = t.scratch_rows();
  const bool keys_outer = p.k.stride_h < p.k.stride_s, values_outer = p.v.stride_h < p.v.stride_s;
  index_t offsets[kKeyBlock];  // a paged cache's key rows of the current block
  row_map krows{p.k.stride_s}, vrows{p.v.stride_s};
  q8_0_query q8[kDecodeScratchRows];  // the rows rounded to int8 blocks (plan.int8_scores)
  if constexpr (int8_scores_path<T, S>)
    if (plan.int8_scores)
      for (index_t r = 0; r < rows; ++r) {
        q8[r] = {sc.q8 + r * d, sc.q8_scales + r * (d / kQ8_0Block)};
        quantize_query_q8_0(sc.qs + r * d, d, sc.q8 + r * d, sc.q8_scales + r * (d / kQ8_0Block));
      }
  for (index_t blk = blk_lo; blk < blk_hi; ++blk) {
    const index_t kb = seq.k_begin + blk * kKeyBlock, nk = std::min(kKeyBlock, seq.k_end - kb);
    krows.offsets = vrows.offsets = p.block_rows(b, kb, nk, offsets);
    if (visible_block_keys(sc.info, rows, kb, nk) == 0) continue;
    for (index_t i = 0; i < kv.groups; ++i) {
      kv.keys[i].base = p.k_row(b, kb, kv.kv_of[i]);
      kv.values[i].base = p.v_row(b, kb, kv.kv_of[i]);
    }
    bool scored = false;
    if constexpr (int8_scores_path<T, S>)
      if (plan.int8_scores) {
        dot_scores_q8_0<Arch>(q8, d, kv.keys, kv.groups, krows, nk, keys_outer, sc.s,
                              plan.score_ld);
        scored = true;
      }
    if (!scored)
      dot_scores<Arch>(sc.qs, d, kv.keys, kv.groups, krows, nk, keys_outer, sc.s, plan.score_ld);
    task_rows_softmax<Arch>(p, t, sc, plan.dp, 0, rows, kb, nk, krows, sc.s, plan.score_ld);
    bool weighed = false;
    if constexpr (fold_v_scales_path<T, S>)
      if (plan.fold_v_scales) {
        dot_values<Arch, true>(sc.s, plan.score_ld, kv.values, kv.groups, vrows, nk, d,
                               values_outer, sc.o, plan.dp);
        weighed = true;
      }
    if (!weighed)
      dot_values<Arch>(sc.s, plan.score_ld, kv.values, kv.groups, vrows, nk, d, values_outer, sc.o,
                       plan.dp);
  }
}

/// Writes scratch row r of task t (query row t.query_of(r) of head t.head_of(r), whose
/// keys are `row`): the head's sink added (add_sink, which may rescale o),
/// out = o / sum, and the log-sum-exp. A row whose o overflowed (output_overflowed: n |v|
/// beyond T's range) is recomputed with normalised weights (recompute_normalised).
template <class Arch, class T, class Policy, class S>  // arch; compute type; policy; storage_set
void finish_task_row(const attention_problem<T, Policy, S>& p, const fused_task& t, index_t r, T* o,
                     row_state<double> state, const row_keys& row) {
  const index_t i = t.query_of(r), h = t.head_of(r);
  const sequence_span seq = p.span(t.sequence);
  add_sink(sink_logit(p, h, row), o, p.q.dim, state);
  const bool overflowed = output_overflowed(o, p.q.dim, state);
  if (overflowed) recompute_normalised<Arch>(p, seq, h, i, state, o);
  finish_row(p, seq.tensor_batch, h, i, o, state, overflowed);
}

/// Phase 1: packs K^T and V once per (sequence, kv head, key block) for the prefill tasks:
/// K^T in T (pack_kt) or pair-interleaved bf16 (pack_kt_bf16) for the bf16 score GEMM; V
/// zero-padded to dp in T (pad_rows) or pair-packed bf16 (pack_v_bf16) for the opt-in bf16
/// weights.
template <class Arch, class T, class Policy, class S>  // tag; compute type; policy; storage_set
void pack_keys_and_values(const attention_problem<T, Policy, S>& p,
                          const fused_plan<Arch, T, Policy, S>& plan) {
  constexpr index_t W = ssmax::detail::simd<Arch, T>::width;
  const index_t H_kv = p.k.heads, d = p.q.dim, dp = plan.dp;
  ssmax::detail::parallel_for(plan.n_blocks * H_kv, p.threads, [&](index_t item, int) {
    const index_t g = item % H_kv, global = item / H_kv;
    const index_t s =
        std::upper_bound(plan.first_block, plan.first_block + p.sequences() + 1, global) -
        plan.first_block - 1;
    const sequence_span seq = p.span(s);
    const index_t blk = global - plan.first_block[s], kb = seq.k_begin + blk * kKeyBlock;
    const index_t nk = std::min(kKeyBlock, seq.k_end - kb), b = seq.tensor_batch;
    index_t offsets[kKeyBlock];  // a paged cache's rows of the block
    const index_t* at = p.block_rows(b, kb, nk, offsets);
    const row_map krows{p.k.stride_s, at}, vrows{p.v.stride_s, at};
    if (plan.bf16_dot_scores) {
      if constexpr (bf16_prefill<Arch, T, S>)
        pack_kt_bf16(p.k_row(b, kb, g), krows, nk, d, round_up(nk, W), kBf16KtStride,
                     plan.kt_bf16_block(p, s, g, blk));
    } else {
      pack_kt<Arch>(p.k_row(b, kb, g), krows, nk, d, round_up(nk, W), plan.ldk,
                    plan.kt_block(p, s, g, blk));
    }
    if constexpr (bf16_weights_path<Arch, T, S>)
      if (plan.bf16_weights)
        return pack_v_bf16(p.v_row(b, kb, g), vrows, nk, d, dp, plan.v_bf16_block(p, s, g, blk));
    // V rows contiguous and zero-padded to dp: with [B, S, H, d] layouts a head's rows
    // are H * d apart (4 KiB at H = 8, d = 128) and would all share one L1 set.
    pad_rows<Arch>(p.v_row(b, kb, g), vrows, nk, d, dp, plan.v_block(p, s, g, blk));
  });
}

/// Phase 3: the rows of the tasks whose keys were split into chunks: each row's partials
/// (out, state) merged in chunk order (fixed: bitwise reproducible), then finished.
template <class Arch, class T, class Policy, class S>  // tag; compute type; policy; storage_set
void merge_chunks(const attention_problem<T, Policy, S>& p,
                  const fused_plan<Arch, T, Policy, S>& plan) {
  const index_t dp = plan.dp;
  ssmax::detail::parallel_for(plan.n_tasks, plan.threads, [&](index_t ti, int thread) {
    const fused_task& t = plan.tasks[ti];
    if (t.chunks == 1) return;
    const fused_scratch<T>& sc = plan.scratch[thread];
    const index_t rows = t.scratch_rows();
    const sequence_span seq = p.span(t.sequence);
    for (index_t r = 0; r < rows; ++r) {
      T* o = sc.o;
      std::fill(o, o + dp, T(0));
      row_state<double> acc;
      for (index_t c = 0; c < t.chunks; ++c) {
        const index_t at = t.partial_row(c, r);
        merge_partial(o, acc, plan.partial_o + at * dp, plan.partial_state[at], dp);
      }
      // The chunks' row keys went with their scratch; only the sink reads them.
      const row_keys row =
          p.logit.has_sinks() ? p.keys_of(seq, t.head_of(r), t.query_of(r)) : row_keys{};
      finish_task_row<Arch>(p, t, r, o, acc, row);
    }
  });
}

}  // namespace detail

/// Runs the fused kernel. Pre: p validated (attention.hpp), p.weights == null, and `ws`
/// reserved with at least fused_workspace_bytes<Arch>(p) bytes.
template <class Arch,    // xsimd architecture tag or scalar_arch
          class T,       // compute type: float or double
          class Policy,  // a length policy (length_policy.hpp)
          class S>       // storage types of q, k/v and out (plan.hpp, storage_set)
void attention_fused(const attention_problem<T, Policy, S>& p, attention_workspace& ws) {
  const auto plan = detail::carve_plan<detail::fused_plan<Arch, T, Policy, S>>(ws, p);
  const index_t dp = plan.dp;
  if (plan.packs_blocks) detail::pack_keys_and_values(p, plan);

  // Phase 2: every item, a task or one chunk of a split task's keys. A task's rows are
  // finished at once; a chunk's partials wait for phase 3.
  ssmax::detail::parallel_for(plan.n_items, plan.threads, [&](index_t item, int thread) {
    const detail::fused_item it = plan.items[item];
    const detail::fused_task& t = plan.tasks[it.task];
    const detail::fused_scratch<T>& sc = plan.scratch[thread];
    const index_t lo = t.blk_lo + it.chunk * t.chunk_blocks;
    const index_t hi = t.chunks > 1 ? std::min(t.blk_hi, lo + t.chunk_blocks) : t.blk_hi;
    if (t.rows > kDotMaxRows)
      detail::prefill_task(p, plan, t, lo, hi, sc);
    else
      detail::decode_task(p, plan, t, lo, hi, sc);
    const index_t rows = t.scratch_rows();
    if (t.chunks == 1) {
      for (index_t r = 0; r < rows; ++r)
        detail::finish_task_row<Arch>(p, t, r, sc.o + r * dp, sc.state[r], sc.info[r]);
    } else {
      const index_t at = t.partial_row(it.chunk, 0);  // the chunk's rows are consecutive
      std::copy(sc.o, sc.o + rows * dp, plan.partial_o + at * dp);
      std::copy(sc.state, sc.state + rows, plan.partial_state + at);
    }
  });
  if (plan.n_partial > 0) detail::merge_chunks(p, plan);
}

/// Workspace bytes attention_fused<Arch>(p, ...) needs.
template <class Arch, class T, class Policy, class S>  // tag; compute type; policy; storage_set
std::size_t fused_workspace_bytes(const attention_problem<T, Policy, S>& p) {
  return detail::plan_bytes<detail::fused_plan<Arch, T, Policy, S>>(p);
}

}  // namespace ssmax::kernels
