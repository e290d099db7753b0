#pragma once
// Fused streaming attention (FlashAttention-style online softmax over key blocks).
//
// Work is cut into tasks: a block of query rows of some heads of one sequence. A task
// walks the key blocks its rows can see (a grid of kKeyBlock keys from each sequence's
// start, the last block ending at the sequence's key length: attention_problem::span, so
// no key row past a sequence's own keys is read): scores S = Q' K^T of the block (Q' = m * scale *
// Q, one multiplier per row), masking to -inf, the online-softmax update (running max and sum per
// row, rescaling the output accumulator), then O += P V.
//
// Two kinds of task:
// - prefill: kPrefillQueryBlock rows of one head, through a register-blocked GEMM on K^T
//   and V packed once per (sequence, kv head, key block), kPrefillStrip rows at a time
//   (prefill_strips.hpp: the strip's scores stay in L1); with bf16 q and k on AVX512-BF16
//   the score GEMM is vdpbf16ps on a pair-interleaved K^T (prefill_bf16.hpp), and with
//   the opt-in bf16 weights and bf16 v, P V is vdpbf16ps on a V pair-packed over keys
//   instead of the float V (gemm_bf16.hpp, bf16_values);
// - decode: at most kDotMaxRows rows of a group of heads (whole GQA groups, up to
//   kFusedQueryBlock scratch rows in all), through dot products that read K and V in
//   place in kKeyStreams runs, each key and value vector loaded (and widened) once for
//   a register block of the query rows sharing its kv head (dot4_rows, axpy4_rows); with
//   heads adjacent in memory ([B, S, H, d]) each step reads every head of a key, so the
//   cache streams the tensors in order.
// Storage (plan.hpp storage_set, storage.hpp): everything is computed in T; q is widened
// into the scaled copy (setup_rows), K^T and V are widened while packing (pack_kt,
// pad_rows), decode reads 16-bit K and V in place and widens them in registers
// (key_streams.hpp, convert.hpp), and only finish_row rounds, once, to a 16-bit out.
// A task with at most kSplitMaxRows rows and more key blocks than one chunk (kDecodeChunk
// keys of one head: kDecodeChunk / heads keys, whole blocks, for a group of heads)
// splits its keys into chunks; chunks run in parallel and their (O, state) partials are
// merged in chunk order (flash-decoding).
//
// The decomposition depends only on the shapes and the mask, never on the thread count,
// and each piece is computed the same way whichever thread runs it: results are bitwise
// identical for any number of threads.
//
// Memory beyond inputs and outputs: when some query block is large enough for the GEMM
// (more than kDotMaxRows rows), K^T and V packed once per (sequence, kv head, key block)
// and shared by every query block and head of the group: about 2 * B * H_kv * n_k * d
// elements, the size of K and V; per thread O(kFusedScratchRows * d + kFusedQueryBlock *
// kKeyBlock); for split tasks rows * heads * chunks * d partial accumulators. Never n_q x n_k. All
// of it comes from the caller's attention_workspace. Decode packs nothing.
//
// Numerical contract: out = softmax(m z over the visible keys) V within the operator's bound
// (docs/numerics.md, "Attention"; tests/test_attention.cpp checks it against the double
// reference). Rows with no visible key are zeros with log-sum-exp -inf. Scores that
// overflow and non-finite inputs: online_softmax.hpp (tests/test_nonfinite.cpp).

#include <algorithm>

#include "../detail/parallel.hpp"
#include "gemm.hpp"
#include "key_streams.hpp"
#include "online_softmax.hpp"
#include "plan.hpp"
#include "prefill_bf16.hpp"
#include "prefill_strips.hpp"
#include "score_epilogue.hpp"

namespace ssmax::kernels {
namespace detail {

/// A fused task: query rows [q0, q0 + rows) of heads [head, head + heads) in sequence seq,
/// over the key blocks [blk_lo, blk_hi) of the sequence's grid (block b holds keys
/// k_begin + b * kKeyBlock onwards): the blocks covering every key the rows can see.
/// Scratch row r + hh * rows holds query row q0 + r of head head + hh.
struct fused_task {
  index_t seq = 0, head = 0, heads = 1, q0 = 0, rows = 0, blk_lo = 0, blk_hi = 0;
  index_t chunk_blocks = 0;  ///< key blocks per chunk
  index_t chunks = 1;        ///< > 1: the blocks are split into chunks of chunk_blocks
  index_t partial = 0;       ///< first partial row (split tasks)

  index_t scratch_rows() const { return rows * heads; }
};
/// A unit of parallel work: one chunk of one task.
struct fused_item {
  index_t task = 0, chunk = 0;
};

/// Scratch rows per thread: a prefill task's rows or a decode task's rows of all its heads.
inline constexpr index_t kFusedScratchRows = std::max(kPrefillQueryBlock, kFusedQueryBlock);
/// Query rows of the task grid: the prefill block; a sequence's last piece of at most
/// kDotMaxRows rows is a decode task (as is every piece of a sequence that short).
inline constexpr index_t kFusedTaskRows = kPrefillQueryBlock;

/// Key blocks per chunk of a task of one head.
inline constexpr index_t kBlocksPerChunk = kDecodeChunk / kKeyBlock;
static_assert(kDecodeChunk % kKeyBlock == 0, "chunks hold whole key blocks");

/// Query heads per decode task of `rows` rows: whole GQA groups (heads sharing one kv
/// head) as long as they fit the kFusedQueryBlock scratch rows, else as many heads of one
/// group as fit.
inline index_t decode_heads(index_t rows, index_t heads, index_t kv_heads) {
  const index_t fit = std::max<index_t>(1, kFusedQueryBlock / rows), group = heads / kv_heads;
  return std::min(heads, fit >= group ? fit / group * group : fit);
}

/// Buffers of one thread.
template <class T>  // float or double
struct fused_scratch {
  T* qs;                     ///< [kFusedScratchRows, d] scaled queries
  T* s;                      ///< [kFusedQueryBlock, skp] scores / P (prefill: a strip's)
  T* o;                      ///< [kFusedScratchRows, dp] output accumulator
  row_state<double>* state;  ///< [kFusedScratchRows]
  row_keys* info;            ///< [kFusedScratchRows]
  row_logit* logit;          ///< [kFusedScratchRows] score epilogues (logit.hpp), or null
  std::uint32_t* qp;         ///< bf16 prefill: [kPrefillQueryBlock, pairs] q pairs, else null
  float* f;                  ///< bf16 prefill: [kPrefillQueryBlock] row factors, else null
  std::uint32_t* pp;         ///< bf16 weights: [kPrefillStrip, kKeyBlock / 2] P pairs, else null
};

/// The fused kernel's plan and buffers, carved from an arena (sizes only when its base is
/// null). K^T and V are packed once per (sequence, kv head, key block) and shared by every query
/// block and every head of the group, when some task is large enough to use the GEMM.
template <class Arch,                      // architecture tag
          class T,                         // compute type: float or double
          class Policy,                    // a length policy
          class S = storage_set<T, T, T>>  // storage types of q, k/v, out (plan.hpp)
struct fused_plan {
  index_t n_tasks = 0, n_items = 0, n_partial = 0, n_blocks = 0;
  bool gemm = false;          ///< some task has more than kDotMaxRows rows: K^T is packed
  bool bf16_weights = false;  ///< gemm, allowed and bf16_weights_path: P V in bf16 on vpb
  fused_task* tasks = nullptr;
  fused_item* items = nullptr;
  index_t* first_block = nullptr;  ///< [sequences + 1] grid blocks before each sequence
  T* kt = nullptr;                 ///< [n_blocks, H_kv, d, ldk] packed K^T
  std::uint16_t* ktb = nullptr;    ///< bf16 prefill: [n_blocks, H_kv, pairs, kBf16KtStride] K^T
  T* vpk = nullptr;                ///< [n_blocks, H_kv, kKeyBlock, dp] packed V
  std::uint16_t* vpb = nullptr;    ///< bf16 weights: [n_blocks, H_kv, kKeyBlock / 2, 2 dp] V pairs
  T* partial_o = nullptr;          ///< [n_partial, dp]
  row_state<double>* partial_state = nullptr;  ///< [n_partial]
  fused_scratch<T>* scratch = nullptr;         ///< [threads]
  index_t dp = 0, skp = 0, ldk = 0;
  int threads = 1;  ///< threads that run the items: p.threads, at most one per item or task

  /// Packed K^T of grid block blk of sequence s, kv head g: [d, ldk].
  T* kt_block(const attention_problem<T, Policy, S>& p, index_t s, index_t g, index_t blk) const {
    return kt + ((first_block[s] + blk) * p.k.heads + g) * p.q.dim * ldk;
  }

  /// Pair-interleaved bf16 K^T of grid block blk of sequence s, kv head g (bf16 prefill).
  std::uint16_t* ktb_block(const attention_problem<T, Policy, S>& p, index_t s, index_t g,
                           index_t blk) const {
    return ktb + ((first_block[s] + blk) * p.k.heads + g) * kt_pairs(p.q.dim) * kBf16KtStride;
  }

  /// Packed V of grid block blk of sequence s, kv head g: [kKeyBlock, dp].
  T* v_block(const attention_problem<T, Policy, S>& p, index_t s, index_t g, index_t blk) const {
    return vpk + ((first_block[s] + blk) * p.k.heads + g) * kKeyBlock * dp;
  }

  /// Pair-packed bf16 V of grid block blk of sequence s, kv head g (bf16 weights):
  /// [kKeyBlock / 2, 2 dp].
  std::uint16_t* vpb_block(const attention_problem<T, Policy, S>& p, index_t s, index_t g,
                           index_t blk) const {
    return vpb + ((first_block[s] + blk) * p.k.heads + g) * kKeyBlock * dp;
  }

  /// Counts the tasks, items, partial rows and grid blocks (the first pass).
  void count(const attention_problem<T, Policy, S>& p) {
    n_tasks = n_items = n_partial = n_blocks = 0;
    gemm = false;
    for_each_task(
        p, [&](index_t, index_t blocks) { n_blocks += blocks; },
        [&](const fused_task& t) {
          ++n_tasks;
          n_items += t.chunks;
          if (t.chunks > 1) n_partial += t.scratch_rows() * t.chunks;
          gemm = gemm || t.rows > kDotMaxRows;
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
      if (tx.seq != ty.seq) return tx.seq < ty.seq;
      if (tx.q0 != ty.q0) return tx.q0 < ty.q0;
      if (x.chunk != y.chunk) return x.chunk < y.chunk;
      return tx.head < ty.head;
    });
  }

  /// Counts (counting arena) or carves everything. Per-thread scratch only for the
  /// threads that can get work (threads()).
  void carve(const attention_problem<T, Policy, S>& p, arena& a) {
    constexpr index_t W = ssmax::detail::simd<Arch, T>::width;
    const index_t d = p.q.dim;
    dp = round_up(d, W);
    skp = score_stride(W);
    ldk = kt_stride(round_up(kKeyBlock, W), W);
    count(p);
    threads = ssmax::detail::threads_for(p.threads, std::max(n_items, n_tasks));
    tasks = a.take<fused_task>(n_tasks);
    items = a.take<fused_item>(n_items);
    first_block = a.take<index_t>(p.sequences() + 1);
    constexpr bool bf16 = bf16_prefill<Arch, T, S>;
    bf16_weights = gemm && bf16_weights_path<Arch, T, S> && p.allow_bf16_weights;
    const index_t kp = kt_pairs(d);
    kt = a.take<T>(gemm && !bf16 ? n_blocks * p.k.heads * packed_kt_elements(d, W) : 0);
    ktb = a.take<std::uint16_t>(gemm && bf16 ? n_blocks * p.k.heads * kp * kBf16KtStride : 0);
    vpk = a.take<T>(gemm && !bf16_weights ? n_blocks * p.k.heads * padded_v_elements(d, W) : 0);
    vpb = a.take<std::uint16_t>(bf16_weights ? n_blocks * p.k.heads * kKeyBlock * dp : 0);
    partial_o = a.take<T>(n_partial * dp);
    partial_state = a.take<row_state<double>>(n_partial);
    scratch = a.take<fused_scratch<T>>(threads);
    for (int t = 0; t < threads; ++t) {
      fused_scratch<T> sc;
      sc.qs = a.take<T>(kFusedScratchRows * d);
      sc.s = a.take<T>(std::max(kFusedQueryBlock, kPrefillStrip) * skp);
      sc.o = a.take<T>(kFusedScratchRows * dp);
      sc.state = a.take<row_state<double>>(kFusedScratchRows);
      sc.info = a.take<row_keys>(kFusedScratchRows);
      sc.logit = a.take<row_logit>(p.logit.transforms_scores() ? kFusedScratchRows : 0);
      sc.qp = a.take<std::uint32_t>(gemm && bf16 ? kPrefillQueryBlock * kp : 0);
      sc.f = a.take<float>(gemm && bf16 ? kPrefillQueryBlock : 0);
      sc.pp = a.take<std::uint32_t>(bf16_weights ? kPrefillStrip * kKeyBlock / 2 : 0);
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
      for (index_t q0 = seq.q_begin; q0 < seq.q_end; q0 += kFusedTaskRows) {
        const index_t rows = std::min(kFusedTaskRows, seq.q_end - q0);
        const index_t step = rows <= kDotMaxRows ? decode_heads(rows, p.q.heads, p.k.heads) : 1;
        index_t lo = 0, hi = 0;  // the same for every head
        block_key_range(p, seq, q0, rows, lo, hi);
        for (index_t h = 0; h < p.q.heads; h += step) {
          fused_task t;
          t.seq = s, t.head = h, t.q0 = q0, t.rows = rows;
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

/// Streams the key blocks [blk_lo, blk_hi) of task t through its query rows, leaving the
/// unnormalised accumulator in sc.o ([t.scratch_rows(), dp]) and the running state in
/// sc.state. Uses the plan's packed K^T and V when the task has more than kDotMaxRows rows;
/// otherwise reads K and V in place in their storage type (widened in registers).
template <class Arch, class T, class Policy, class S>  // tag; compute type; policy; storage_set
void fused_range(const attention_problem<T, Policy, S>& p,
                 const fused_plan<Arch, T, Policy, S>& plan, const fused_task& t, index_t blk_lo,
                 index_t blk_hi, const fused_scratch<T>& sc) {
  const sequence_span seq = p.span(t.seq);
  const index_t d = p.q.dim, b = seq.tensor_batch, dp = plan.dp, skp = plan.skp;
  const index_t rows = t.rows, all_rows = t.scratch_rows();
  // The scratch rows of each kv head the task reads (consecutive heads share one); the
  // rows' key and value pointers are set per block.
  head_rows<typename S::kv> keys[kFusedScratchRows], values[kFusedScratchRows];
  index_t kv_of[kFusedScratchRows];
  index_t groups = 0;
  const bool transforms = p.logit.transforms_scores();
  for (index_t hh = 0; hh < t.heads; ++hh) {
    const index_t h = t.head + hh;
    setup_rows(p, seq, h, t.q0, rows, sc.info + hh * rows, sc.qs + hh * rows * d);
    if (transforms)  // each row's epilogue, once for all its key blocks
      for (index_t r = hh * rows; r < (hh + 1) * rows; ++r)
        sc.logit[r] = row_logit_of(p, seq, h, t.q0 + r % rows, sc.info[r]);
    if (groups > 0 && kv_of[groups - 1] == p.kv_head(h)) {
      keys[groups - 1].count += rows;
    } else {
      kv_of[groups] = p.kv_head(h);
      keys[groups++] = {hh * rows, rows, nullptr};
    }
  }
  std::copy(keys, keys + groups, values);
#ifdef SSMAX_HAVE_AVX512BF16
  if constexpr (bf16_prefill<Arch, T, S>)
    if (rows > kDotMaxRows) pack_task_q_bf16(p, b, t.head, t.q0, rows, sc.info, sc.qp, sc.f);
#endif
  const bool keys_outer = p.k.stride_h < p.k.stride_s, values_outer = p.v.stride_h < p.v.stride_s;
  index_t offsets[kKeyBlock];  // a paged cache's key rows of the current block
  row_map krows{p.k.stride_s}, vrows{p.v.stride_s};
  std::fill(sc.o, sc.o + all_rows * dp, T(0));
  for (index_t r = 0; r < all_rows; ++r) sc.state[r] = row_state<double>{};
  // Masks and applies the online softmax to scratch rows [r0, r1) over keys [0, nk) of
  // the block at kb, the scores of row r at s + (r - r0) * skp.
  auto softmax = [&](index_t r0, index_t r1, index_t kb, index_t nk, T* s) {
    for (index_t r = r0; r < r1; ++r) {
      T* sr = s + (r - r0) * skp;
      const row_keys& rk = sc.info[r];
      if (transforms && rk.visible > 0)  // before the mask: m z, -inf kept
        score_epilogue_simd<Arch>(sr, kb, nk, sc.logit[r]);
      if (rk.visible == 0 || !mask_row(sr, kb, nk, rk)) {
        std::fill(sr, sr + nk, T(0));
        continue;
      }
      const T flush = flush_threshold<T>(rk.visible);
      if (online_row<Arch>(sr, nk, sc.state[r], sc.o + r * dp, dp, flush)) continue;
      // +inf or NaN scores: recomputed without overflow, then the epilogue and the mask.
      const index_t h = t.head + r / rows, i = t.q0 + r % rows;
      safe_scores(sr, nk, p.q.row(b, i, h), p.k_row(b, kb, p.kv_head(h)), krows, d,
                  query_factor(p, rk, h));
      if (transforms) score_epilogue(sr, kb, nk, sc.logit[r]);
      online_row_nonfinite<Arch>(sr, nk, kb, rk, sc.state[r], sc.o + r * dp, dp, flush);
    }
  };
  for (index_t blk = blk_lo; blk < blk_hi; ++blk) {
    const index_t kb = seq.k_begin + blk * kKeyBlock, nk = std::min(kKeyBlock, seq.k_end - kb);
    krows.offsets = vrows.offsets = p.block_rows(b, kb, nk, offsets);
    if (rows > kDotMaxRows) {  // one head: groups == 1; strips of rows (prefill_strips.hpp)
      auto strips = [&](const auto& scores) {
        auto run = [&](const auto& pv) {
          prefill_strips<Arch>(
              rows, sc.info, kb, nk, scores,
              [&](index_t r0, index_t r1, index_t hi, T* s) { softmax(r0, r1, kb, hi, s); }, pv, dp,
              sc.s, skp, sc.o);
        };
#ifdef SSMAX_HAVE_AVX512BF16
        if constexpr (bf16_weights_path<Arch, T, S>)
          if (plan.bf16_weights)
            return run(
                bf16_values{plan.vpb_block(p, t.seq, kv_of[0], blk), sc.pp, kKeyBlock / 2, dp});
#endif
        run(packed_values<Arch, T>{plan.v_block(p, t.seq, kv_of[0], blk), dp});
      };
      if constexpr (bf16_prefill<Arch, T, S>) {  // vdpbf16ps on the pair-packed K^T
#ifdef SSMAX_HAVE_AVX512BF16
        const index_t kp = kt_pairs(d);
        strips(bf16_scores{sc.qp, sc.f, plan.ktb_block(p, t.seq, kv_of[0], blk), kp, kp,
                           kBf16KtStride});
#endif
      } else {  // float on the packed K^T
        strips(packed_scores<Arch, T>{sc.qs, plan.kt_block(p, t.seq, kv_of[0], blk), d, plan.ldk});
      }
      continue;
    }
    if (detail::strip_keys(sc.info, all_rows, kb, nk) == 0) continue;
    for (index_t i = 0; i < groups; ++i) {
      keys[i].base = p.k_row(b, kb, kv_of[i]);
      values[i].base = p.v_row(b, kb, kv_of[i]);
    }
    dot_scores<Arch>(sc.qs, d, keys, groups, krows, nk, keys_outer, sc.s, skp);
    softmax(0, all_rows, kb, nk, sc.s);
    dot_values<Arch>(sc.s, skp, values, groups, vrows, nk, d, values_outer, sc.o, dp);
  }
}

/// Writes scratch row r of task t (query row t.q0 + r % t.rows of head t.head + r /
/// t.rows, whose keys are `row`): the head's sink added (add_sink, which may rescale o),
/// out = o / sum, and the log-sum-exp. A row whose o overflowed (output_overflowed: n |v|
/// beyond T's range) is recomputed with normalised weights (recompute_normalised).
template <class T, class Policy, class S>  // compute type; a length policy; storage_set
void finish_task_row(const attention_problem<T, Policy, S>& p, const fused_task& t, index_t r, T* o,
                     row_state<double> state, const row_keys& row) {
  const index_t i = t.q0 + r % t.rows, h = t.head + r / t.rows;
  const sequence_span seq = p.span(t.seq);
  add_sink(sink_logit(p, h, row), o, p.q.dim, state);
  const bool overflowed = output_overflowed(o, p.q.dim, state);
  if (overflowed) recompute_normalised(p, seq, h, i, state, o);
  finish_row(p, seq.tensor_batch, i, h, o, state, overflowed);
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

  // Pack K^T and V once per (sequence, kv head, key block).
  if (plan.gemm) {
    constexpr index_t W = ssmax::detail::simd<Arch, T>::width;
    const index_t H_kv = p.k.heads;
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
      if constexpr (detail::bf16_prefill<Arch, T, S>) {
#ifdef SSMAX_HAVE_AVX512BF16
        detail::pack_kt_bf16(p.k_row(b, kb, g), detail::row_map{p.k.stride_s, at}, nk, p.q.dim,
                             detail::round_up(nk, W), detail::kBf16KtStride,
                             plan.ktb_block(p, s, g, blk));
#endif
      } else {
        detail::pack_kt<Arch>(p.k_row(b, kb, g), detail::row_map{p.k.stride_s, at}, nk, p.q.dim,
                              detail::round_up(nk, W), plan.ldk, plan.kt_block(p, s, g, blk));
      }
#ifdef SSMAX_HAVE_AVX512BF16
      if constexpr (detail::bf16_weights_path<Arch, T, S>)
        if (plan.bf16_weights)
          return detail::pack_v_bf16(p.v_row(b, kb, g), detail::row_map{p.v.stride_s, at}, nk,
                                     p.q.dim, dp, plan.vpb_block(p, s, g, blk));
#endif
      // V rows contiguous and zero-padded to dp: with [B, S, H, d] layouts a head's rows
      // are H * d apart (4 KiB at H = 8, d = 128) and would all share one L1 set.
      detail::pad_rows<Arch>(p.v_row(b, kb, g), detail::row_map{p.v.stride_s, at}, nk, p.q.dim, dp,
                             plan.v_block(p, s, g, blk));
    });
  }

  ssmax::detail::parallel_for(plan.n_items, plan.threads, [&](index_t item, int thread) {
    const detail::fused_item it = plan.items[item];
    const detail::fused_task& t = plan.tasks[it.task];
    const detail::fused_scratch<T>& sc = plan.scratch[thread];
    const index_t lo = t.blk_lo + it.chunk * t.chunk_blocks;
    const index_t hi = t.chunks > 1 ? std::min(t.blk_hi, lo + t.chunk_blocks) : t.blk_hi;
    detail::fused_range(p, plan, t, lo, hi, sc);
    const index_t rows = t.scratch_rows();
    if (t.chunks == 1) {
      for (index_t r = 0; r < rows; ++r)
        detail::finish_task_row(p, t, r, sc.o + r * dp, sc.state[r], sc.info[r]);
    } else {
      const index_t at = t.partial + it.chunk * rows;
      std::copy(sc.o, sc.o + rows * dp, plan.partial_o + at * dp);
      std::copy(sc.state, sc.state + rows, plan.partial_state + at);
    }
  });
  if (plan.n_partial == 0) return;

  // Merge the chunks of split tasks in chunk order (fixed: bitwise reproducible).
  ssmax::detail::parallel_for(plan.n_tasks, plan.threads, [&](index_t ti, int thread) {
    const detail::fused_task& t = plan.tasks[ti];
    if (t.chunks == 1) return;
    const detail::fused_scratch<T>& sc = plan.scratch[thread];
    const index_t rows = t.scratch_rows();
    const sequence_span seq = p.span(t.seq);
    for (index_t r = 0; r < rows; ++r) {
      T* o = sc.o;
      std::fill(o, o + dp, T(0));
      row_state<double> acc;
      for (index_t c = 0; c < t.chunks; ++c) {
        const index_t at = t.partial + c * rows + r;
        merge_partial(o, acc, plan.partial_o + at * dp, plan.partial_state[at], dp);
      }
      // The chunks' row keys went with their scratch; only the sink reads them.
      const row_keys row =
          p.logit.has_sinks() ? p.keys_of(seq, t.head + r / t.rows, t.q0 + r % t.rows) : row_keys{};
      detail::finish_task_row(p, t, r, o, acc, row);
    }
  });
}

/// Workspace bytes attention_fused<Arch>(p, ...) needs.
template <class Arch, class T, class Policy, class S>  // tag; compute type; policy; storage_set
std::size_t fused_workspace_bytes(const attention_problem<T, Policy, S>& p) {
  return detail::plan_bytes<detail::fused_plan<Arch, T, Policy, S>>(p);
}

}  // namespace ssmax::kernels
