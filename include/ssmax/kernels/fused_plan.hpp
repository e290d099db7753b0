#pragma once
// The fused kernel's plan (attention_fused.hpp runs it): the tasks (a block of query rows
// of some heads of one sequence, over the key blocks they can see), their split into
// chunks of keys, and every buffer the kernel uses (packed K^T and V, split tasks'
// partials, per-thread scratch), carved from the caller's attention_workspace. The plan
// depends only on the shapes and the mask, never on the thread count.

#include <algorithm>
#include <cstdint>

#include "../detail/parallel.hpp"
#include "online_softmax.hpp"
#include "plan.hpp"
#include "prefill_bf16.hpp"
#include "prefill_strips.hpp"
#include "q8_0_dots.hpp"

namespace ssmax::kernels::detail {

/// A fused task: query rows [q0, q0 + rows) of heads [head, head + heads) in sequence seq,
/// over the key blocks [blk_lo, blk_hi) of the sequence's grid (block b holds keys
/// k_begin + b * kKeyBlock onwards): the blocks covering every key the rows can see.
/// Scratch row r + hh * rows holds query row q0 + r of head head + hh.
struct fused_task {
  index_t sequence = 0, head = 0, heads = 1, q0 = 0, rows = 0, blk_lo = 0, blk_hi = 0;
  index_t chunk_blocks = 0;  ///< key blocks per chunk
  index_t chunks = 1;        ///< > 1: the blocks are split into chunks of chunk_blocks
  index_t partial = 0;       ///< split tasks: where the task's partial rows start
                             ///< (plan.partial_o, partial_state): partial_row

  index_t scratch_rows() const { return rows * heads; }
  /// The head of scratch row r.
  index_t head_of(index_t r) const { return head + r / rows; }
  /// The query row (tensor index) of scratch row r.
  index_t query_of(index_t r) const { return q0 + r % rows; }
  /// Split tasks: the partial row (of plan.partial_o, partial_state) of chunk c's scratch
  /// row r.
  index_t partial_row(index_t c, index_t r) const { return partial + c * scratch_rows() + r; }
};
/// A unit of parallel work: one chunk of one task.
struct fused_item {
  index_t task = 0, chunk = 0;
};

/// Scratch rows per thread: a prefill task's rows or a decode task's rows of all its heads.
inline constexpr index_t kTaskScratchRows = std::max(kPrefillQueryBlock, kDecodeScratchRows);

/// Key blocks per chunk of a task of one head.
inline constexpr index_t kBlocksPerChunk = kDecodeChunk / kKeyBlock;
static_assert(kDecodeChunk % kKeyBlock == 0, "chunks hold whole key blocks");

/// Query heads per decode task of `rows` rows: whole GQA groups (heads sharing one kv
/// head) as long as they fit the kDecodeScratchRows scratch rows, else as many consecutive
/// heads as fit, which may straddle two groups (setup_task then reads both kv heads).
inline index_t decode_heads(index_t rows, index_t heads, index_t kv_heads) {
  const index_t fit = std::max<index_t>(1, kDecodeScratchRows / rows), group = heads / kv_heads;
  return std::min(heads, fit >= group ? fit / group * group : fit);
}

/// Buffers of one thread.
template <class T>  // float or double
struct fused_scratch {
  T* qs;  ///< [kTaskScratchRows, d] scaled queries
  T* s;   ///< [max(kDecodeScratchRows, kPrefillStrip), score_ld] scores / P (prefill: a strip's)
  T* o;   ///< [kTaskScratchRows, dp] output accumulator
  row_state<double>* state;  ///< [kTaskScratchRows]
  row_keys* info;            ///< [kTaskScratchRows]
  row_logit* logit;          ///< [kTaskScratchRows] score epilogues (logit.hpp), or null
  std::uint32_t* q_pairs;    ///< bf16 prefill: [kPrefillQueryBlock, pairs] q pairs, else null
  float* row_factors;        ///< bf16 prefill: [kPrefillQueryBlock] row factors, else null
  std::uint32_t* p_pairs;    ///< bf16 weights: [kPrefillStrip, kKeyBlock / 2] P pairs, else null
  std::int8_t* q8;           ///< int8 scores: [kDecodeScratchRows, d] rounded queries, else null
  float* q8_scales;          ///< int8 scores: [kDecodeScratchRows, d / 32] their scales, else null
};

/// The fused kernel's plan and buffers, carved from an arena (sizes only when its base is
/// null). K^T and V are packed once per (sequence, kv head, key block) and shared by every query
/// block and every head of the group, when some task is large enough to use the GEMM.
template <class Arch,                         // architecture tag
          class T,                            // compute type: float or double
          class Policy,                       // a length policy
          class S = storage_set<T, T, T, T>>  // storage types of q, k, v, out (plan.hpp)
struct fused_plan {
  index_t n_tasks = 0, n_items = 0, n_partial = 0, n_blocks = 0;
  bool packs_blocks = false;     ///< some task has more than kDotMaxRows rows: K^T and V are packed
  bool int8_scores = false;      ///< Q8_0 k, allow_int8_dot_products: decode's integer scores
  bool fold_v_scales = false;    ///< Q8_0 v, allow_int8_dot_products: scales fold into weights
  bool bf16_dot_scores = false;  ///< packs_blocks, bf16_prefill, dot products: Q K^T by vdpbf16ps
  bool bf16_weights = false;     ///< packs_blocks, bf16_weights_path, allowed, dot products: P V
                                 ///< by vdpbf16ps (with float or bf16 scores, as q is)
  fused_task* tasks = nullptr;
  fused_item* items = nullptr;
  index_t* first_block = nullptr;    ///< [sequences + 1] grid blocks before each sequence
  T* kt = nullptr;                   ///< [n_blocks, H_kv, d, ldk] packed K^T
  std::uint16_t* kt_bf16 = nullptr;  ///< bf16 prefill: [n_blocks, H_kv, pairs, kBf16KtStride] K^T
  T* v_packed = nullptr;             ///< [n_blocks, H_kv, kKeyBlock, dp] packed V
  std::uint16_t* v_bf16 = nullptr;  ///< bf16 weights: [n_blocks, H_kv, kKeyBlock / 2, 2 dp] V pairs
  T* partial_o = nullptr;           ///< [n_partial, dp]
  row_state<double>* partial_state = nullptr;  ///< [n_partial]
  fused_scratch<T>* scratch = nullptr;         ///< [threads]
  index_t dp = 0;        ///< d padded to the vector width: rows of o, packed V, partials
  index_t score_ld = 0;  ///< row stride of the scores / weights scratch (score_stride)
  index_t ldk = 0;       ///< row stride of a packed K^T block (kt_stride)
  int threads = 1;       ///< threads that run the items: p.threads, at most one per item or task

  /// Packed K^T of grid block blk of sequence s, kv head g: [d, ldk].
  T* kt_block(const attention_problem<T, Policy, S>& p, index_t s, index_t g, index_t blk) const {
    return kt + ((first_block[s] + blk) * p.k.heads + g) * p.q.dim * ldk;
  }

  /// Pair-interleaved bf16 K^T of grid block blk of sequence s, kv head g (bf16 prefill).
  std::uint16_t* kt_bf16_block(const attention_problem<T, Policy, S>& p, index_t s, index_t g,
                               index_t blk) const {
    return kt_bf16 + ((first_block[s] + blk) * p.k.heads + g) * bf16_pairs(p.q.dim) * kBf16KtStride;
  }

  /// Packed V of grid block blk of sequence s, kv head g: [kKeyBlock, dp].
  T* v_block(const attention_problem<T, Policy, S>& p, index_t s, index_t g, index_t blk) const {
    return v_packed + ((first_block[s] + blk) * p.k.heads + g) * kKeyBlock * dp;
  }

  /// Pair-packed bf16 V of grid block blk of sequence s, kv head g (bf16 weights):
  /// [kKeyBlock / 2, 2 dp].
  std::uint16_t* v_bf16_block(const attention_problem<T, Policy, S>& p, index_t s, index_t g,
                              index_t blk) const {
    return v_bf16 + ((first_block[s] + blk) * p.k.heads + g) * kKeyBlock * dp;
  }

  /// Counts the tasks, items, partial rows and grid blocks (the first pass).
  void count(const attention_problem<T, Policy, S>& p) {
    n_tasks = n_items = n_partial = n_blocks = 0;
    packs_blocks = false;
    for_each_task(
        p, [&](index_t, index_t blocks) { n_blocks += blocks; },
        [&](const fused_task& t) {
          ++n_tasks;
          n_items += t.chunks;
          if (t.chunks > 1) n_partial += t.scratch_rows() * t.chunks;
          packs_blocks = packs_blocks || t.rows > kDotMaxRows;
        });
  }

  /// Fills the carved tasks, items and first_block (the second pass), items in
  /// chunk-major, head-minor order: the tasks of one key chunk run one after the other, so
  /// with [B, S, H, d] layouts the pages (and TLB entries) a chunk touches serve every head
  /// instead of being walked once per head. The order changes no result: items are
  /// independent.
  void fill(const attention_problem<T, Policy, S>& p) const {
    index_t task = 0, item = 0, partial = 0, blocks = 0;
    for_each_task(
        p, [&](index_t s, index_t seq_blocks) { first_block[s] = blocks, blocks += seq_blocks; },
        [&](fused_task t) {
          t.partial = partial;
          tasks[task] = t;
          for (index_t c = 0; c < t.chunks; ++c) items[item + c] = {task, c};
          ++task;
          item += t.chunks;
          if (t.chunks > 1) partial += t.scratch_rows() * t.chunks;
        });
    first_block[p.sequences()] = blocks;
    std::sort(items, items + n_items, [&](const fused_item& x, const fused_item& y) {
      const fused_task &tx = tasks[x.task], &ty = tasks[y.task];
      if (tx.sequence != ty.sequence) return tx.sequence < ty.sequence;
      if (tx.q0 != ty.q0) return tx.q0 < ty.q0;
      if (x.chunk != y.chunk) return x.chunk < y.chunk;
      return tx.head < ty.head;
    });
  }

  /// Counts (counting arena) or carves everything. Per-thread scratch only for the
  /// threads that can get work (threads, set here).
  void carve(const attention_problem<T, Policy, S>& p, arena& a) {
    constexpr index_t W = ssmax::detail::simd<Arch, T>::width;
    const index_t d = p.q.dim;
    dp = round_up(d, W);
    score_ld = score_stride(W);
    ldk = kt_stride(round_up(kKeyBlock, W), W);
    count(p);
    threads = ssmax::detail::threads_for(p.threads, std::max(n_items, n_tasks));
    tasks = a.take<fused_task>(n_tasks);
    items = a.take<fused_item>(n_items);
    first_block = a.take<index_t>(p.sequences() + 1);
    bf16_dot_scores = packs_blocks && bf16_prefill<Arch, T, S> && p.bf16_dot_products;
    bf16_weights = packs_blocks && bf16_weights_path<Arch, T, S> && p.bf16_dot_products &&
                   p.allow_bf16_weights;
    int8_scores = int8_scores_path<T, S> && p.allow_int8_dot_products;
    fold_v_scales = fold_v_scales_path<T, S> && p.allow_int8_dot_products;
    const index_t kp = bf16_pairs(d);
    kt = a.take<T>(
        !bf16_dot_scores && packs_blocks ? n_blocks * p.k.heads * packed_kt_elements(d, W) : 0);
    kt_bf16 =
        a.take<std::uint16_t>(bf16_dot_scores ? n_blocks * p.k.heads * kp * kBf16KtStride : 0);
    v_packed = a.take<T>(
        packs_blocks && !bf16_weights ? n_blocks * p.k.heads * padded_v_elements(d, W) : 0);
    v_bf16 = a.take<std::uint16_t>(bf16_weights ? n_blocks * p.k.heads * kKeyBlock * dp : 0);
    partial_o = a.take<T>(n_partial * dp);
    partial_state = a.take<row_state<double>>(n_partial);
    scratch = a.take<fused_scratch<T>>(threads);
    for (int t = 0; t < threads; ++t) {
      fused_scratch<T> sc;
      sc.qs = a.take<T>(kTaskScratchRows * d);
      sc.s = a.take<T>(std::max(kDecodeScratchRows, kPrefillStrip) * score_ld);
      sc.o = a.take<T>(kTaskScratchRows * dp);
      sc.state = a.take<row_state<double>>(kTaskScratchRows);
      sc.info = a.take<row_keys>(kTaskScratchRows);
      sc.logit = a.take<row_logit>(p.logit.transforms_scores() ? kTaskScratchRows : 0);
      sc.q_pairs = a.take<std::uint32_t>(bf16_dot_scores ? kPrefillQueryBlock * kp : 0);
      sc.row_factors = a.take<float>(bf16_dot_scores ? kPrefillQueryBlock : 0);
      sc.p_pairs = a.take<std::uint32_t>(bf16_weights ? kPrefillStrip * kKeyBlock / 2 : 0);
      sc.q8 = a.take<std::int8_t>(int8_scores ? kDecodeScratchRows * d : 0);
      sc.q8_scales = a.take<float>(int8_scores ? kDecodeScratchRows * d / kQ8_0Block : 0);
      if (!a.counting()) scratch[t] = sc;
    }
    if (!a.counting()) fill(p);
  }

 private:
  /// Calls on_sequence(s, blocks) for each sequence s with its grid's key block count,
  /// then on_task(task) for each of its tasks (task.partial left 0), in task order.
  template <class OnSequence, class OnTask>  // callables as above
  static void for_each_task(const attention_problem<T, Policy, S>& p, OnSequence&& on_sequence,
                            OnTask&& on_task) {
    for (index_t s = 0; s < p.sequences(); ++s) {
      const sequence_span seq = p.span(s);
      on_sequence(s, (seq.k_end - seq.k_begin + kKeyBlock - 1) / kKeyBlock);
      // Pieces of kPrefillQueryBlock query rows; a piece of at most kDotMaxRows rows (a
      // sequence's last, or all of a short one) is a decode task of several heads.
      for (index_t q0 = seq.q_begin; q0 < seq.q_end; q0 += kPrefillQueryBlock) {
        const index_t rows = std::min(kPrefillQueryBlock, seq.q_end - q0);
        const index_t step = rows <= kDotMaxRows ? decode_heads(rows, p.q.heads, p.k.heads) : 1;
        index_t lo = 0, hi = 0;  // the same for every head
        block_key_range(p, seq, q0, rows, lo, hi);
        for (index_t h = 0; h < p.q.heads; h += step) {
          fused_task t;
          t.sequence = s, t.head = h, t.q0 = q0, t.rows = rows;
          t.heads = std::min(step, p.q.heads - h);
          t.blk_lo = (lo - seq.k_begin) / kKeyBlock;
          t.blk_hi = hi > lo ? (hi - seq.k_begin + kKeyBlock - 1) / kKeyBlock : t.blk_lo;
          const index_t blocks = t.blk_hi - t.blk_lo;
          t.chunk_blocks = std::max<index_t>(1, kBlocksPerChunk / t.heads);
          t.chunks = t.rows <= kSplitMaxRows && blocks > t.chunk_blocks
                         ? (blocks + t.chunk_blocks - 1) / t.chunk_blocks
                         : 1;
          on_task(t);
        }
      }
    }
  }
};

}  // namespace ssmax::kernels::detail
