#pragma once
// Attention over a paged KV cache, the FlashAttention / vLLM convention:
//   k_pool, v_pool   [num_blocks, block_size, H_kv, d], contiguous
//   block_table      [B, max_blocks]: sequence b's token t lives in pool block
//                    block_table[b * max_blocks + t / block_size], row t % block_size
//   cache_lengths    [B]: sequence b holds cache_lengths[b] tokens (the new ones included)
// The n_q >= 1 queries of each sequence sit at the end of its own cache (decode: n_q = 1;
// chunked prefill: n_q > 1), positions cache_lengths[b] - n_q + i, as attention_mask::
// cache does; options.mask's other constraints (causal, windows, ...) apply as given, and
// its key_lengths must be null (the cache lengths take its place).
//
// Storage types: the pools may be float, double, Eigen::bfloat16 or Eigen::half, with q
// and out as ssmax::attention allows (storage.hpp; a bf16 pool with float q and out is the
// usual serving case).
//
// The fused path reads the pools in place: the kernels find key row j of sequence b through
// the block table (kernels/plan.hpp kv_pages: one offset per key of the current key block),
// in the dot-product (decode) path, in the K^T / V packing of the GEMM (prefill) path and in
// the non-finite fallback. Keys are visited, and sums formed, in exactly the contiguous
// call's order: results equal ssmax::attention's on the same tokens in a contiguous cache,
// bit for bit, for any block size and table, every policy, GQA and storage type. Extra
// memory: the fused path's workspace (whose packed K^T / V, for query blocks of more than
// kDotMaxRows rows, spans the keys those blocks read) and one kKeyBlock offset array on the
// stack; no copy of the cache for decode.
// The materialised path (extras.weights, or options.path = materialised) gathers each
// sequence's blocks into a contiguous [B, max_len, H_kv, d] copy (max_len the longest
// cache, 2 B max_len H_kv d elements in the pools' storage type, allocated per call) and
// runs ssmax::attention on it, with the same bitwise guarantee.

#include <algorithm>
#include <string>
#include <vector>

#include "attention.hpp"

namespace ssmax {

/// A paged KV cache (see the top of this header). Pointers are borrowed for the call.
template <class T>  // storage type of the pools: float, double, Eigen::bfloat16 or Eigen::half
struct paged_kv_cache {
  const T* k_pool = nullptr;               ///< [num_blocks, block_size, H_kv, d]
  const T* v_pool = nullptr;               ///< [num_blocks, block_size, H_kv, d]
  index_t num_blocks = 0;                  ///< blocks in each pool
  index_t block_size = 0;                  ///< tokens per block
  index_t kv_heads = 0;                    ///< H_kv
  index_t dim = 0;                         ///< d
  const index_t* block_table = nullptr;    ///< [B, max_blocks] pool block of each logical block
  index_t max_blocks = 0;                  ///< entries per row of block_table
  const index_t* cache_lengths = nullptr;  ///< [B] tokens per sequence
};

namespace detail {

/// Checks a paged cache for queries q [B, n_q, H, d]; throws argument_error naming the bad
/// field ("cache.<field>"), before anything is written.
template <class Q, class KV>  // element type of q; storage type of the pools
inline void check_paged(const char* fn, const tensor_view<const Q>& q,
                        const paged_kv_cache<KV>& c) {
  require(c.k_pool != nullptr, fn, "cache.k_pool", "must not be null");
  require(c.v_pool != nullptr, fn, "cache.v_pool", "must not be null");
  require(c.num_blocks >= 1, fn, "cache.num_blocks", "must be >= 1");
  require(c.block_size >= 1, fn, "cache.block_size", "must be >= 1");
  require(c.kv_heads >= 1 && q.heads % c.kv_heads == 0, fn, "cache.kv_heads",
          "must be >= 1 and divide q's heads");
  require(c.dim == q.dim, fn, "cache.dim", "must equal q's head dimension");
  require(c.block_table != nullptr && c.max_blocks >= 1, fn, "cache.block_table",
          "must not be null, with max_blocks >= 1");
  require(c.cache_lengths != nullptr, fn, "cache.cache_lengths", "must not be null");
  for (index_t b = 0; b < q.batch; ++b) {
    const index_t len = c.cache_lengths[b];
    require_lazy(len >= 0 && len <= c.max_blocks * c.block_size, fn, "cache.cache_lengths", [&] {
      return "entry " + std::to_string(b) + " is " + std::to_string(len) + ", outside [0, " +
             std::to_string(c.max_blocks * c.block_size) + "] (the block table's reach)";
    });
    for (index_t blk = 0; blk * c.block_size < len; ++blk) {
      const index_t at = c.block_table[b * c.max_blocks + blk];
      require_lazy(at >= 0 && at < c.num_blocks, fn, "cache.block_table", [&] {
        return "entry [" + std::to_string(b) + ", " + std::to_string(blk) + "] is " +
               std::to_string(at) + ", outside the pool [0, " + std::to_string(c.num_blocks) + ")";
      });
    }
  }
}

/// Copies sequence b's tokens of one pool into dst [max_len, H_kv, d] (rows past its
/// length zero).
template <class T>  // storage type of the pools
inline void gather_sequence(const paged_kv_cache<T>& c, const T* pool, index_t b, index_t max_len,
                            T* dst) {
  const index_t row = c.kv_heads * c.dim, len = c.cache_lengths[b];
  for (index_t t = 0; t < len; ++t) {
    const index_t blk = c.block_table[b * c.max_blocks + t / c.block_size];
    const T* src = pool + (blk * c.block_size + t % c.block_size) * row;
    std::copy(src, src + row, dst + t * row);
  }
  std::fill(dst + len * row, dst + max_len * row, T(0));
}

}  // namespace detail

namespace detail {

/// The fused path over the pools in place: validated like ssmax::attention on the pools
/// (out, lse disjoint from them) and on the logical keys [B, max_len, H_kv, d] (the mask),
/// then the kernels find each key block's rows through the block table (kernels/plan.hpp
/// kv_pages). Q, KV, O: element types of q, of the pools, of out.
template <class Arch, class Q, class KV, class O, class Policy>
void paged_fused(const tensor_view<const Q>& q, const paged_kv_cache<KV>& cache,
                 const tensor_view<O>& out, const attention_options<Policy>& options,
                 const attention_extras<compute_t<O>>& extras, attention_workspace* workspace,
                 index_t max_len) {
  constexpr const char* fn = "paged_attention";
  const index_t row = cache.kv_heads * cache.dim;
  // The pools as views (rows stride row apart, heads dim apart, batch unused): exactly
  // the pools' memory, for the overlap checks.
  const auto pool = [&](const KV* data, index_t seq) {
    return tensor_view<const KV>{data, q.batch, seq, cache.kv_heads, cache.dim, 0, row, cache.dim};
  };
  const index_t pool_rows = cache.num_blocks * cache.block_size;
  attention_options<Policy> local = options;
  local.mask.key_lengths = cache.cache_lengths;
  check_shapes(fn, q, pool(cache.k_pool, pool_rows), pool(cache.v_pool, pool_rows),
               tensor_view<const O>(out));
  const tensor_view<const KV> k = pool(cache.k_pool, max_len), v = pool(cache.v_pool, max_len);
  check_mask(fn, local.mask, q, k);
  const double scale = check_options<compute_t<O>>(fn, local, q, k);
  check_extras(fn, local.logit, local.path == attention_path::fused, extras.lse, extras.weights, q,
               pool(cache.k_pool, pool_rows), pool(cache.v_pool, pool_rows),
               tensor_view<const O>(out));
  auto p = make_problem(q, k, v, out, local, extras, scale);
  p.pages = {cache.block_table, cache.max_blocks, cache.block_size};
  attention_workspace scratch;
  attention_workspace& ws = workspace != nullptr ? *workspace : scratch;
  const workspace_lease lease(ws, fn);
  ws.reserve(kernels::fused_workspace_bytes<Arch>(p));
  kernels::attention_fused<Arch>(p, ws);
}

}  // namespace detail

/// Attention of q [B, n_q, H, d] over the paged cache (see the top of this header), into
/// out [B, n_q, H, d]; options, extras and workspace as ssmax::attention (options.mask's
/// key_lengths must be null). Element types as ssmax::attention's (storage.hpp): all float,
/// all double, or any mix of float, Eigen::bfloat16 and Eigen::half computed in float (a
/// bf16 pool with float queries and output, say). The fused path (the default unless
/// extras.weights is set or options.path asks for the materialised one) reads the pools in
/// place; the materialised path gathers first (see the top of this header). The key axis
/// of options.logit.bias [B, H, n_q, n_k] and of extras.weights [B, H, n_q, n_k] is the
/// logical one, n_k = max(1, max_b cache_lengths[b]). Throws argument_error naming the bad
/// argument ("paged_attention", or "attention" for checks shared with it), nothing written.
template <class Arch = default_arch,      // xsimd architecture tag or scalar_arch
          class Q,                        // element type of q (const or not)
          class KV,                       // storage type of both pools
          class O,                        // element type of out
          class Policy = softmax_policy>  // a length policy
void paged_attention(const tensor_view<Q>& q, const paged_kv_cache<KV>& cache,
                     const tensor_view<O>& out, const attention_options<Policy>& options = {},
                     attention_extras<compute_t<O>> extras = {},
                     attention_workspace* workspace = nullptr) {
  static_assert(attention_storage<Q, KV, KV, O>::supported,
                "paged_attention: q, the pools and out must form a combination ssmax::attention "
                "supports (storage.hpp)");
  constexpr const char* fn = "paged_attention";
  const auto qc = detail::read_only(q);
  detail::check_view(qc, fn, "q");
  detail::check_paged(fn, qc, cache);
  detail::require(options.mask.key_lengths == nullptr, fn, "options.mask.key_lengths",
                  "must be null: the cache lengths take its place");
  detail::require(!options.mask.packed(), fn, "options.mask.cu_seqlens_q",
                  "is not supported with a paged cache (one sequence per batch entry)");
  index_t max_len = 1;  // the views need one key row even when every cache is empty
  for (index_t b = 0; b < q.batch; ++b) max_len = std::max(max_len, cache.cache_lengths[b]);
  if (!detail::use_materialised(options, extras)) {
    detail::paged_fused<Arch>(qc, cache, out, options, extras, workspace, max_len);
    return;
  }
  const index_t row = cache.kv_heads * cache.dim;
  std::vector<KV> k(static_cast<size_t>(q.batch * max_len * row));
  std::vector<KV> v(k.size());
  for (index_t b = 0; b < q.batch; ++b) {
    detail::gather_sequence(cache, cache.k_pool, b, max_len, k.data() + b * max_len * row);
    detail::gather_sequence(cache, cache.v_pool, b, max_len, v.data() + b * max_len * row);
  }
  attention_options<Policy> local = options;
  local.mask.key_lengths = cache.cache_lengths;
  const KV* kp = k.data();
  const KV* vp = v.data();
  detail::attention_of<Arch>(qc, bshd_view(kp, q.batch, max_len, cache.kv_heads, cache.dim),
                             bshd_view(vp, q.batch, max_len, cache.kv_heads, cache.dim), out, local,
                             extras, workspace);
}

}  // namespace ssmax
