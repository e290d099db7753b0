#pragma once
// Attention over a paged KV cache, the FlashAttention / vLLM convention:
//   k_pool, v_pool   [num_blocks, block_size, H_kv, d], contiguous
//   block_table      [B, max_blocks]: sequence b's token t lives in pool block
//                    block_table[b * max_blocks + t / block_size], row t % block_size
//   cache_lengths    [B]: sequence b holds cache_lengths[b] tokens (the new ones included)
// The block table and the lengths may be int32 (as vLLM and FlashAttention hold them) or
// int64 (index_t) arrays, read in place (index_array.hpp).
//
// Which keys each query sees. The n_q >= 1 queries of sequence b are its newest tokens, at
// the end of its own cache (decode: n_q = 1; chunked prefill: n_q > 1), at positions
// cache_lengths[b] - n_q + i, and every query is causal: paged_attention ANDs "key
// position <= query position" into options.mask, whatever the mask says, so the default
// options give causal chunked prefill (attention_mask::cache's meaning) and decode alike.
// options.mask's other constraints (a sliding or local window, a boolean mask, row_n, ...)
// apply as given; its key_lengths must be null (the cache lengths take their place) and
// it must not be packed.
//
// What is read. Sequence b reads only the block-table entries [b * max_blocks,
// b * max_blocks + ceil(cache_lengths[b] / block_size)) and, through them, the pool rows of
// its first cache_lengths[b] tokens: the entries past its length and the pool blocks no
// sequence owns may hold anything (-1, stale ids, NaN, inf) and change nothing.
//
// Storage types: the pools may be float, double, Eigen::bfloat16 or Eigen::half, or an
// 8-bit cache format (fp8_e4m3 and fp8_e5m2 with their scales k_scale / v_scale, one per
// pool or per kv head; block_q8_0, d / 32 blocks per head row), the K and V pools each its
// own, with q and out as ssmax::attention allows (storage.hpp; a bf16 pool with float q
// and out is the usual serving case, q8_0 K with half V an engine's mix).
//
// Both paths read the pools in place: the kernels find key row j of sequence b through the
// block table (kernels/plan.hpp kv_pages and key_rows), in the dot-product (decode) path, in
// the K^T / V packing of the GEMM (prefill) path, in the materialised path's score and
// value blocks and in the non-finite fallback; paged_attention validates the call once and
// runs the same kernels as ssmax::attention. Keys are visited, and sums formed, in exactly the
// contiguous call's order: results equal ssmax::attention's on the same tokens in a contiguous
// cache (cache_view with the same lengths and a causal mask), bit for bit, for any block size and
// table, every policy, GQA and storage type. Extra memory: the fused path's workspace
// (whose packed K^T / V, for query blocks of more than kDotMaxRows rows, spans the keys
// those blocks read) and one kKeyBlock offset array on the stack; the materialised path's
// (extras.weights, or options.path = materialised) holds one row offset per key of each
// task. No copy of the cache.

#include <algorithm>
#include <limits>
#include <string>

#include "attention.hpp"

namespace ssmax {

/// A paged KV cache (see the top of this header). Pointers are borrowed for the call.
template <class K,      // storage type of the key pool (storage.hpp: a K/V storage type)
          class V = K>  // storage type of the value pool
struct paged_kv_cache {
  const K* k_pool = nullptr;    ///< [num_blocks, block_size, H_kv, d] (d / 32 Q8_0 blocks)
  const V* v_pool = nullptr;    ///< [num_blocks, block_size, H_kv, d] (d / 32 Q8_0 blocks)
  index_t num_blocks = 0;       ///< blocks in each pool
  index_t block_size = 0;       ///< tokens per block
  index_t kv_heads = 0;         ///< H_kv
  index_t dim = 0;              ///< d, the head dimension in values (a multiple of 32 for Q8_0)
  index_array block_table{};    ///< [B, max_blocks] pool block of each logical block
  index_t max_blocks = 0;       ///< entries per row of block_table
  index_array cache_lengths{};  ///< [B] tokens per sequence
  value_scale k_scale{};        ///< fp8 k_pool only (and required there): its scale
  value_scale v_scale{};        ///< fp8 v_pool only (and required there): its scale
};

namespace detail {

/// Checks a paged cache for queries q [B, n_q, H, d]; throws argument_error naming the bad
/// field ("cache.<field>"), before anything is written.
template <class Q, class K, class V>  // element type of q; storage types of the pools
inline void check_paged(const char* fn, const tensor_view<const Q>& q,
                        const paged_kv_cache<K, V>& c) {
  require(c.k_pool != nullptr, fn, "cache.k_pool", "must not be null");
  require(c.v_pool != nullptr, fn, "cache.v_pool", "must not be null");
  require(c.num_blocks >= 1, fn, "cache.num_blocks", "must be >= 1");
  require(c.block_size >= 1, fn, "cache.block_size", "must be >= 1");
  require(c.kv_heads >= 1 && c.dim >= 1, fn, c.kv_heads >= 1 ? "cache.dim" : "cache.kv_heads",
          "must be >= 1");
  constexpr index_t largest = std::numeric_limits<index_t>::max();
  require(c.num_blocks <= largest / c.block_size / c.kv_heads / c.dim, fn, "cache.num_blocks",
          "times block_size, kv_heads and dim (the pool's elements) overflows the index type");
  require(c.max_blocks <= largest / c.block_size, fn, "cache.max_blocks",
          "times block_size (the table's reach in tokens) overflows the index type");
  require(c.kv_heads >= 1 && q.heads % c.kv_heads == 0, fn, "cache.kv_heads",
          "must be >= 1 and divide q's heads");
  require(c.dim == q.dim, fn, "cache.dim", "must equal q's head dimension");
  require(c.dim % values_per_element_v<K> == 0 && c.dim % values_per_element_v<V> == 0, fn,
          "cache.dim", "must be a multiple of 32 for a block_q8_0 pool");
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

}  // namespace detail

namespace detail {

/// Pool rows [0, rows) of one pool (data, of element type P, with `scale` when fp8) as a
/// view (rows H_kv head rows apart, batch unused).
template <class P>  // storage type of the pool
inline tensor_view<const P> pool_view(index_t kv_heads, index_t dim, const P* data,
                                      value_scale scale, index_t batch, index_t rows) {
  const index_t elements = dim / values_per_element_v<P>, row = kv_heads * elements;
  return {data, batch, rows, kv_heads, elements, 0, row, elements, {}, scale};
}

}  // namespace detail

/// Attention of q [B, n_q, H, d] over the paged cache (see the top of this header: every
/// query causal, at the end of its sequence's cache), into out [B, n_q, H, d]; options,
/// extras and workspace as ssmax::attention (options.mask's key_lengths must be null and
/// the mask not packed). Element types as ssmax::attention's (storage.hpp): all float, all
/// double, or float, Eigen::bfloat16 and Eigen::half q and out with pools of those or of the
/// 8-bit formats, computed in float (a bf16 pool with float queries and output, say). The fused
/// path (the default unless extras.weights is set or options.path asks for the materialised one)
/// reads the pools in place, as the materialised one does (see the top of this header). The key
/// axis of options.logit.bias [B, H, n_q, n_k] and of extras.weights [B, H, n_q, n_k] is the
/// logical one, n_k = max(1, max_b cache_lengths[b]). Throws argument_error naming the bad
/// argument as the caller wrote it ("cache.k_pool", "cache.block_table", ...), nothing
/// written; out, extras.lse and extras.weights may overlap nothing the call reads (q, the
/// pools, the block table, the lengths, the mask's and the logit options' arrays).
template <class Arch = default_arch,      // xsimd architecture tag or scalar_arch
          class Q,                        // element type of q (const or not)
          class K,                        // storage type of the key pool
          class V,                        // storage type of the value pool
          class O,                        // element type of out
          class Policy = softmax_policy>  // a length policy
void paged_attention(const tensor_view<Q>& q, const paged_kv_cache<K, V>& cache,
                     const tensor_view<O>& out, const attention_options<Policy>& options = {},
                     attention_extras<compute_t<O>> extras = {},
                     attention_workspace* workspace = nullptr) {
  using A = attention_storage<Q, K, V, O>;
  static_assert(A::q_ok,
                "ssmax::paged_attention: argument 'q' must view float, Eigen::bfloat16 or "
                "Eigen::half, or double when the pools and out are double too");
  static_assert(!A::q_ok || A::k_ok,
                "ssmax::paged_attention: argument 'cache.k_pool' must hold float, "
                "Eigen::bfloat16, Eigen::half, fp8_e4m3, fp8_e5m2 or block_q8_0, or double "
                "when q, v and out are double too");
  static_assert(!A::q_ok || !A::k_ok || A::v_ok,
                "ssmax::paged_attention: argument 'cache.v_pool' must hold float, "
                "Eigen::bfloat16, Eigen::half, fp8_e4m3, fp8_e5m2 or block_q8_0, or double "
                "when q, k and out are double too");
  static_assert(!A::q_ok || !A::k_ok || !A::v_ok || A::out_ok,
                "ssmax::paged_attention: argument 'out' must be a writable view of float, "
                "Eigen::bfloat16 or Eigen::half, or of double when q and the pools are double");
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
  attention_options<Policy> local = options;
  local.mask.key_lengths = cache.cache_lengths;
  local.mask.causal = true;

  // Validated as ssmax::attention on the logical keys [B, max_len, H_kv, d], with out,
  // lse and weights disjoint from the whole pools and the cache's arrays.
  const detail::input_names names{"q", "cache.k_pool", "cache.v_pool", "cache.k_scale",
                                  "cache.v_scale"};
  const index_t pool_rows = cache.num_blocks * cache.block_size, H_kv = cache.kv_heads;
  const auto k_all =
      detail::pool_view(H_kv, cache.dim, cache.k_pool, cache.k_scale, q.batch, pool_rows);
  const auto v_all =
      detail::pool_view(H_kv, cache.dim, cache.v_pool, cache.v_scale, q.batch, pool_rows);
  const auto k = detail::pool_view(H_kv, cache.dim, cache.k_pool, cache.k_scale, q.batch, max_len);
  const auto v = detail::pool_view(H_kv, cache.dim, cache.v_pool, cache.v_scale, q.batch, max_len);
  const tensor_view<const O> out_c = out;
  detail::check_shapes(fn, qc, k_all, v_all, out_c, names);
  detail::check_mask(fn, local.mask, qc, k);
  const double scale = detail::check_options<compute_t<O>>(fn, local, qc, k);
  auto reads =
      detail::mask_arrays(local.mask, q.batch, q.heads, q.seq, max_len, "cache.cache_lengths");
  reads.add(cache.block_table, q.batch * cache.max_blocks, "cache.block_table");
  reads.add(k_all.data, (detail::last_offset(k_all) + 1) * index_t(sizeof(K)), "cache.k_pool");
  reads.add(v_all.data, (detail::last_offset(v_all) + 1) * index_t(sizeof(V)), "cache.v_pool");
  reads.add_scale(k_all, "cache.k_scale");
  reads.add_scale(v_all, "cache.v_scale");
  detail::check_extras(fn, local.logit, local.path == attention_path::fused, extras.lse,
                       extras.weights, qc, k_all, v_all, out_c, max_len, reads, names);

  auto p = detail::make_problem(qc, k, v, out, local, extras, scale);
  p.pages = {cache.block_table, cache.max_blocks, cache.block_size};
  detail::run_problem<Arch>(p, detail::use_materialised(local, extras), workspace, fn);
}

}  // namespace ssmax
