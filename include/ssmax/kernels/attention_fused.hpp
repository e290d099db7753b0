#pragma once
// Fused streaming attention (FlashAttention-style online softmax over key blocks).
//
// Work is cut into tasks (sequence, head, block of kFusedQueryBlock query rows). A task
// walks the key blocks its rows can see (a grid of kKeyBlock keys from each sequence's
// start): scores S = Q' K^T of the block
// (Q' = m * scale * Q, one multiplier per row), masking to -inf, the online-softmax update
// (running max and sum per row, rescaling the output accumulator), then O += P V. A task
// with at most kSplitMaxRows rows and more than kDecodeChunk keys (decode, or a short
// final query block) splits its keys into fixed chunks of kDecodeChunk; chunks run in
// parallel and their (O, state) partials are merged in chunk order (flash-decoding).
//
// The decomposition depends only on the shapes and the mask, never on the thread count,
// and each piece is computed the same way whichever thread runs it: results are bitwise
// identical for any number of threads.
//
// Memory beyond inputs and outputs: when some query block is large enough for the GEMM
// (more than kDotMaxRows rows), K^T and V packed once per (sequence, kv head, key block)
// and shared by every query block and head of the group: about 2 * B * H_kv * n_k * d
// elements, the size of K and V; per thread O(kFusedQueryBlock * (kKeyBlock + d)); for
// split tasks rows * chunks * d partial accumulators. Never n_q x n_k. All of it comes
// from the caller's attention_workspace. Decode (at most kDotMaxRows rows per block)
// packs nothing and reads K and V in place.
//
// Numerical contract: out = softmax(m scale q K^T over the visible keys) V; per element,
// |error| <= eps * max|v| * (2 (d + 2) Z + n + 64) where Z = max_j sum_c |m scale q_c k_jc|
// (the dot products' and the exp's rounding, and the accumulation of n weighted values);
// tests/test_attention.cpp checks this bound against the double reference. Rows with no
// visible key are zeros with log-sum-exp -inf.

#include <algorithm>

#include "../detail/parallel.hpp"
#include "attention_blocks.hpp"

namespace ssmax::kernels {
namespace detail {

/// A fused task: query rows [q0, q0 + rows) of head h in sequence seq, over the key
/// blocks [blk_lo, blk_hi) of the sequence's grid (block b holds keys k_begin + b *
/// kKeyBlock onwards): the blocks covering every key the rows can see.
struct fused_task {
  index seq = 0, head = 0, q0 = 0, rows = 0, blk_lo = 0, blk_hi = 0;
  index chunks = 1;   ///< > 1: blocks split into chunks of kDecodeChunk / kKeyBlock
  index partial = 0;  ///< first partial row (split tasks)
};
/// A unit of parallel work: one chunk of one task.
struct fused_item {
  index task = 0, chunk = 0;
};

/// Key blocks per decode chunk.
inline constexpr index kBlocksPerChunk = kDecodeChunk / kKeyBlock;
static_assert(kDecodeChunk % kKeyBlock == 0, "chunks hold whole key blocks");

/// Buffers of one thread.
template <class T>  // float or double
struct fused_scratch {
  T* qs;                     ///< [kFusedQueryBlock, d] scaled queries
  T* s;                      ///< [kFusedQueryBlock, skp] scores / P
  T* vp;                     ///< [kKeyBlock, dp] padded V (when d is not a multiple of W)
  T* o;                      ///< [kFusedQueryBlock, dp] output accumulator
  row_state<double>* state;  ///< [kFusedQueryBlock]
  row_keys* info;            ///< [kFusedQueryBlock]
};

/// The fused kernel's plan and buffers, carved from an arena (sizes only when its base is
/// null). K^T and V are packed once per (sequence, kv head, key block) and shared by every query
/// block and every head of the group, when some task is large enough to use the GEMM.
template <class Arch, class T, class Policy>  // architecture tag; float or double; policy
struct fused_plan {
  index n_tasks = 0, n_items = 0, n_partial = 0, n_blocks = 0;
  bool gemm = false;  ///< some task has more than kDotMaxRows rows: K^T is packed
  fused_task* tasks = nullptr;
  fused_item* items = nullptr;
  index* first_block = nullptr;                ///< [sequences + 1] grid blocks before each sequence
  T* kt = nullptr;                             ///< [n_blocks, H_kv, d, ldk] packed K^T
  T* vpk = nullptr;                            ///< [n_blocks, H_kv, kKeyBlock, dp] packed V
  T* partial_o = nullptr;                      ///< [n_partial, dp]
  row_state<double>* partial_state = nullptr;  ///< [n_partial]
  fused_scratch<T>* scratch = nullptr;         ///< [threads]
  index dp = 0, skp = 0, ldk = 0;

  /// Packed K^T of grid block blk of sequence s, kv head g: [d, ldk].
  T* kt_block(const attention_problem<T, Policy>& p, index s, index g, index blk) const {
    return kt + ((first_block[s] + blk) * p.k.heads + g) * p.q.dim * ldk;
  }

  /// Packed V of grid block blk of sequence s, kv head g: [kKeyBlock, dp].
  T* v_block(const attention_problem<T, Policy>& p, index s, index g, index blk) const {
    return vpk + ((first_block[s] + blk) * p.k.heads + g) * kKeyBlock * dp;
  }

  /// Walks the tasks; fills the arrays when they are allocated.
  void walk(const attention_problem<T, Policy>& p) {
    n_tasks = n_items = n_partial = n_blocks = 0;
    gemm = false;
    for (index s = 0; s < p.sequences(); ++s) {
      const sequence_span seq = p.span(s);
      if (first_block != nullptr) first_block[s] = n_blocks;
      n_blocks += (seq.k_end - seq.k_begin + kKeyBlock - 1) / kKeyBlock;
      for (index h = 0; h < p.q.heads; ++h)
        for (index q0 = seq.q_begin; q0 < seq.q_end; q0 += kFusedQueryBlock) {
          fused_task t;
          t.seq = s, t.head = h, t.q0 = q0;
          t.rows = std::min(kFusedQueryBlock, seq.q_end - q0);
          index lo = 0, hi = 0;
          block_key_range(p, seq, h, q0, t.rows, lo, hi);
          t.blk_lo = (lo - seq.k_begin) / kKeyBlock;
          t.blk_hi = hi > lo ? (hi - seq.k_begin + kKeyBlock - 1) / kKeyBlock : t.blk_lo;
          const index blocks = t.blk_hi - t.blk_lo;
          t.chunks = t.rows <= kSplitMaxRows && blocks > kBlocksPerChunk
                         ? (blocks + kBlocksPerChunk - 1) / kBlocksPerChunk
                         : 1;
          t.partial = n_partial;
          gemm = gemm || t.rows > kDotMaxRows;
          if (tasks != nullptr) {
            tasks[n_tasks] = t;
            for (index c = 0; c < t.chunks; ++c) items[n_items + c] = {n_tasks, c};
          }
          ++n_tasks;
          n_items += t.chunks;
          if (t.chunks > 1) n_partial += t.rows * t.chunks;
        }
    }
    if (first_block != nullptr) first_block[p.sequences()] = n_blocks;
  }

  /// Counts (arena without base) or carves (arena with base) everything.
  void carve(const attention_problem<T, Policy>& p, arena& a, bool fill) {
    constexpr index W = ssmax::detail::simd<Arch, T>::width;
    const index d = p.q.dim;
    dp = round_up(d, W);
    skp = round_up(kKeyBlock, W) + W;  // padded: rows 1 KiB apart alias in the cache
    ldk = kt_stride(round_up(kKeyBlock, W), W);
    tasks = nullptr, items = nullptr, first_block = nullptr;
    walk(p);  // counts
    tasks = a.take<fused_task>(n_tasks);
    items = a.take<fused_item>(n_items);
    first_block = a.take<index>(p.sequences() + 1);
    kt = a.take<T>(gemm ? n_blocks * p.k.heads * d * ldk : 0);
    vpk = a.take<T>(gemm ? n_blocks * p.k.heads * kKeyBlock * dp : 0);
    partial_o = a.take<T>(n_partial * dp);
    partial_state = a.take<row_state<double>>(n_partial);
    scratch = a.take<fused_scratch<T>>(p.threads);
    for (int t = 0; t < p.threads; ++t) {
      fused_scratch<T> sc;
      sc.qs = a.take<T>(kFusedQueryBlock * d);
      sc.s = a.take<T>(kFusedQueryBlock * skp);
      sc.vp = a.take<T>(kKeyBlock * dp);
      sc.o = a.take<T>(kFusedQueryBlock * dp);
      sc.state = a.take<row_state<double>>(kFusedQueryBlock);
      sc.info = a.take<row_keys>(kFusedQueryBlock);
      if (fill) scratch[t] = sc;
    }
    if (fill) {
      walk(p);
      // Chunk-major, head-minor order: the heads of one key chunk run one after the
      // other, so with [B, S, H, d] layouts the pages (and TLB entries) a chunk touches
      // serve every head instead of being walked once per head (2x faster decode).
      // The order changes no result: items are independent.
      std::sort(items, items + n_items, [&](const fused_item& x, const fused_item& y) {
        const fused_task &tx = tasks[x.task], &ty = tasks[y.task];
        if (tx.seq != ty.seq) return tx.seq < ty.seq;
        if (tx.q0 != ty.q0) return tx.q0 < ty.q0;
        if (x.chunk != y.chunk) return x.chunk < y.chunk;
        return tx.head < ty.head;
      });
    }
  }
};

/// Streams the key blocks [blk_lo, blk_hi) of sequence seq through a block of query
/// rows, leaving the unnormalised accumulator in sc.o ([rows, dp]) and the running state
/// in sc.state. Uses the plan's packed K^T when the block has more than kDotMaxRows rows.
template <class Arch, class T, class Policy>  // architecture tag; float or double; policy
void fused_range(const attention_problem<T, Policy>& p, const fused_plan<Arch, T, Policy>& plan,
                 index s, const sequence_span& seq, index h, index q0, index rows, index blk_lo,
                 index blk_hi, const fused_scratch<T>& sc) {
  const index d = p.q.dim, g = p.kv_head(h), b = seq.tensor_batch, dp = plan.dp, skp = plan.skp;
  constexpr index W = ssmax::detail::simd<Arch, T>::width;
  setup_rows(p, seq, h, q0, rows, sc.info, sc.qs);
  std::fill(sc.o, sc.o + rows * dp, T(0));
  for (index r = 0; r < rows; ++r) sc.state[r] = row_state<double>{};
  for (index blk = blk_lo; blk < blk_hi; ++blk) {
    const index kb = seq.k_begin + blk * kKeyBlock, nk = std::min(kKeyBlock, seq.k_end - kb);
    bool any = false;
    for (index r = 0; r < rows; ++r)
      any = any || (sc.info[r].visible > 0 && sc.info[r].begin < kb + nk && sc.info[r].end > kb);
    if (!any) continue;
    if (rows > kDotMaxRows)
      gemm<Arch>(rows, round_up(nk, W), d, sc.qs, d, plan.kt_block(p, s, g, blk), plan.ldk, sc.s,
                 skp, false);
    else
      block_scores<Arch>(sc.qs, rows, d, p.k.row(b, kb, g), p.k.stride_s, nk, sc.s, skp,
                         static_cast<T*>(nullptr));
    for (index r = 0; r < rows; ++r) {
      T* sr = sc.s + r * skp;
      if (sc.info[r].visible > 0 && mask_row(sr, kb, nk, sc.info[r]))
        online_row<Arch>(sr, nk, sc.state[r], sc.o + r * dp, dp,
                         flush_threshold<T>(sc.info[r].visible));
      else
        std::fill(sr, sr + nk, T(0));
    }
    if (rows > kDotMaxRows)
      gemm<Arch>(rows, dp, nk, sc.s, skp, plan.v_block(p, s, g, blk), dp, sc.o, dp, true);
    else
      block_values<Arch>(sc.s, skp, rows, p.v.row(b, kb, g), p.v.stride_s, nk, d, dp, sc.o, sc.vp);
  }
}

}  // namespace detail

/// Runs the fused kernel. Pre: p validated (attention.hpp), p.weights == null, and `ws`
/// reserved with at least fused_workspace_bytes<Arch>(p) bytes.
template <class Arch,    // xsimd architecture tag or scalar_arch
          class T,       // float or double
          class Policy>  // a length policy (length_policy.hpp)
void attention_fused(const attention_problem<T, Policy>& p, attention_workspace& ws) {
  detail::fused_plan<Arch, T, Policy> plan;
  detail::arena a(ws.data());
  plan.carve(p, a, true);
  const index dp = plan.dp;

  // Pack K^T and V once per (sequence, kv head, key block).
  if (plan.gemm) {
    constexpr index W = ssmax::detail::simd<Arch, T>::width;
    const index H_kv = p.k.heads;
    ssmax::detail::parallel_for(plan.n_blocks * H_kv, p.threads, [&](index item, int) {
      const index g = item % H_kv, global = item / H_kv;
      const index s =
          std::upper_bound(plan.first_block, plan.first_block + p.sequences() + 1, global) -
          plan.first_block - 1;
      const sequence_span seq = p.span(s);
      const index blk = global - plan.first_block[s], kb = seq.k_begin + blk * kKeyBlock;
      const index nk = std::min(kKeyBlock, seq.k_end - kb);
      detail::pack_kt(p.k.row(seq.tensor_batch, kb, g), p.k.stride_s, nk, p.q.dim,
                      detail::round_up(nk, W), plan.ldk, plan.kt_block(p, s, g, blk));
      // V rows contiguous and zero-padded to dp: with [B, S, H, d] layouts a head's rows
      // are H * d apart (4 KiB at H = 8, d = 128) and would all share one L1 set.
      T* vb = plan.v_block(p, s, g, blk);
      const index d = p.q.dim;
      for (index j = 0; j < nk; ++j) {
        const T* vr = p.v.row(seq.tensor_batch, kb + j, g);
        std::copy(vr, vr + d, vb + j * dp);
        std::fill(vb + j * dp + d, vb + (j + 1) * dp, T(0));
      }
    });
  }

  ssmax::detail::parallel_for(plan.n_items, p.threads, [&](index item, int thread) {
    const detail::fused_item it = plan.items[item];
    const detail::fused_task& t = plan.tasks[it.task];
    const detail::fused_scratch<T>& sc = plan.scratch[thread];
    const sequence_span seq = p.span(t.seq);
    const index lo = t.blk_lo + it.chunk * detail::kBlocksPerChunk;
    const index hi = t.chunks > 1 ? std::min(t.blk_hi, lo + detail::kBlocksPerChunk) : t.blk_hi;
    detail::fused_range(p, plan, t.seq, seq, t.head, t.q0, t.rows, lo, hi, sc);
    if (t.chunks == 1) {
      for (index r = 0; r < t.rows; ++r)
        detail::finish_row(p, seq.tensor_batch, t.q0 + r, t.head, sc.o + r * dp, sc.state[r]);
    } else {
      const index at = t.partial + it.chunk * t.rows;
      std::copy(sc.o, sc.o + t.rows * dp, plan.partial_o + at * dp);
      std::copy(sc.state, sc.state + t.rows, plan.partial_state + at);
    }
  });
  if (plan.n_partial == 0) return;

  // Merge the chunks of split tasks in chunk order (fixed: bitwise reproducible).
  ssmax::detail::parallel_for(plan.n_tasks, p.threads, [&](index ti, int thread) {
    const detail::fused_task& t = plan.tasks[ti];
    if (t.chunks == 1) return;
    const detail::fused_scratch<T>& sc = plan.scratch[thread];
    const sequence_span seq = p.span(t.seq);
    for (index r = 0; r < t.rows; ++r) {
      T* o = sc.o;
      std::fill(o, o + dp, T(0));
      row_state<double> acc;
      for (index c = 0; c < t.chunks; ++c) {
        const index at = t.partial + c * t.rows + r;
        const row_state<double>& part = plan.partial_state[at];
        if (part.empty()) continue;
        const row_state<double> merged = merge(acc, part);
        if (!acc.empty() && acc.max != merged.max)
          scale_row<Arch>(o, dp, static_cast<T>(std::exp(acc.max - merged.max)));
        detail::axpy<Arch>(o, static_cast<T>(std::exp(part.max - merged.max)),
                           plan.partial_o + at * dp, dp);
        acc = merged;
      }
      detail::finish_row(p, seq.tensor_batch, t.q0 + r, t.head, o, acc);
    }
  });
}

/// Workspace bytes attention_fused<Arch>(p, ...) needs.
template <class Arch, class T, class Policy>  // architecture tag; float or double; policy
std::size_t fused_workspace_bytes(const attention_problem<T, Policy>& p) {
  detail::fused_plan<Arch, T, Policy> plan;
  detail::arena a(nullptr);
  plan.carve(p, a, false);
  return a.used();
}

}  // namespace ssmax::kernels
