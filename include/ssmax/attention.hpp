#pragma once
// The multi-head attention operator: what model code calls.
//
//   out[b, i, h, :] = sum_j a[b, h, i, j] v[b, j, g(h), :]
//   z_ij = softcap(scale q_i . k_j) + bias_ij,      softcap(x) = c tanh(x / c) when c > 0
//   bias_ij = additive_ij - alibi_slope_h |key_pos_j - query_pos_i|
//   a_ij = exp(m_i z_ij) / (sum over the keys j' row i sees of exp(m_i z_ij')
//                           + [sinks] exp(m_i sink_h))
//
// with g(h) = h / (H / H_kv) (MHA, GQA, MQA), q_i = q[b, i, h, :], k_j = k[b, j, g(h), :],
// scale = 1/sqrt(d) unless given, and m_i = policy.multiplier({n_i, p_i, h}) where n_i, the
// keys row i sees (inside every mask constraint AND with a finite additive bias), and p_i
// come from the mask (mask.hpp: visible_keys, and logit.hpp's overload for the bias). The
// soft-cap c, the additive bias (float; -inf hides the key exactly as the boolean mask
// does: the same n and zero weight, though not the same bits, since m is then applied to
// the scores instead of being folded into q), the ALiBi slopes and the sinks are
// options.logit (logit.hpp); without them z_ij = scale q_i . k_j. The sink is a per-head
// logit with a zero value: not a key, not counted in n, it enters the log-sum-exp (lse_i =
// log of the denominator above). Rows that see no key output zeros and log-sum-exp -inf
// (with or without a sink). A logit m_i z_ij that is -inf in the compute type (a -inf
// score, or a finite bias such as -3e38 times m overflowing) weighs 0 like a hidden key;
// a row whose keys all weigh 0 outputs zeros with lse -inf, or lse m_i sink_h with a sink.
//
// KV cache and decode: keys and values live in a cache [B, capacity, H_kv, d] of which
// sequence b holds lengths[b] tokens (the new ones appended first); each step calls
//   attention(bshd_view(q, B, n_q, H, d),                         // n_q = 1 when decoding
//             cache_view(k_cache, B, capacity, H_kv, d, lengths), // tensor_view.hpp
//             cache_view(v_cache, B, capacity, H_kv, d, lengths),
//             bshd_view(out, B, n_q, H, d), options, {}, &ws);
// with options.mask = attention_mask::cache(lengths) (mask.hpp): causal, and sequence b's
// queries at the end of its own keys (positions lengths[b] - n_q + i), so position
// policies see each sequence's true position. The views carry the lengths (seq_lengths),
// which the call honours whatever the mask: rows past lengths[b] are never read, and a
// mask whose key_lengths differ is refused. Reuse one workspace per thread
// (examples/03_kv_cache_decode). A paged cache (vLLM's pools and block table) goes through
// paged_attention (paged.hpp): the fused path finds each key row through the block table
// in place, with this call's results bit for bit.
//
// Every array the call reads (the views, the mask's lengths, offsets, row_n and boolean
// mask, the logit options' bias, slopes and sinks) must not overlap out, extras.lse or
// extras.weights: argument_error names both. Lengths and offsets may be int32 or int64
// (index_array.hpp).
//
// Every function validates all its arguments first (attention_checks.hpp) and throws
// ssmax::argument_error naming the offending one; nothing is written then. Two kernels do the work:
//   fused        (kernels/attention_fused.hpp) online softmax over key blocks, never forms
//                n_q x n_k, splits the keys of tasks with few query rows into fixed
//                chunks that run in parallel (flash-decoding);
//   materialised (kernels/attention_materialised.hpp) full score rows, and the only path
//                that can return the attention weights.
// attention_path::automatic picks materialised when weights are requested, else fused.
//
// Numerical contract (both paths, every storage type): docs/numerics.md states the error
// bounds of out, the log-sum-exp and the weights once, with what 16-bit storage, bf16
// scores and the opt-in bf16 weights add; tests/support/attention_check.hpp computes them
// and every test compares against the double reference under them. In short: each output
// element within eps max|v| (2 (d + 2) Z + n + 64) + (n + d) denorm_min of the exact one
// (Z the largest logit magnitude sum of a visible key), results bitwise identical for any
// thread count, 16-bit inputs widened exactly and only a 16-bit out rounded (once, to
// nearest even). Overflowing scores take the exact product's sign; NaN in q or a visible
// key gives a NaN row (kernels/online_softmax.hpp).
// Opt-in bf16 weights (options.allow_bf16_weights, off by default): with bf16 k and v on an
// AVX512-BF16 build, the fused prefill rounds each unnormalised weight to bf16 and runs P V
// through vdpbf16ps (kernels/gemm_bf16.hpp), about 2^-8 relative error where the float path
// has a few float ULPs: for inference that accepts it, in exchange for both GEMMs at the
// bf16 rate (docs/performance.md). Decode, the materialised path and every other storage
// compute as without it (tests/test_attention_bf16_weights.cpp).
// bf16 arithmetic (options.bf16): with bf16 q and k on an AVX512-BF16 build the fused
// prefill's scores come from vdpbf16ps, or from the float GEMM on q and k widened while
// packing, whichever the CPU runs faster (bf16_method::automatic: vdpbf16ps on AMD, the
// float GEMM on Intel, where vdpbf16ps has half the FMA's rate; detail/cpu.hpp), so a bf16
// call is never slower than the float one. The opt-in bf16 weights need vdpbf16ps.

#include <type_traits>

#include "attention_checks.hpp"
#include "attention_options.hpp"
#include "detail/cpu.hpp"
#include "detail/parallel.hpp"
#include "detail/simd.hpp"
#include "error.hpp"
#include "kernels/attention_fused.hpp"
#include "kernels/attention_materialised.hpp"
#include "length_policy.hpp"
#include "logit.hpp"
#include "mask.hpp"
#include "storage.hpp"
#include "tensor_view.hpp"
#include "workspace.hpp"

namespace ssmax {

namespace detail {

template <class U>
struct identity {
  using type = U;
};
/// Blocks template argument deduction (q, k, v take their type from out).
template <class U>
using identity_t = typename identity<U>::type;

/// True when q, k and v view out's element type (const or not) and out is writable: the
/// types one attention call needs. Q, K, V, O: the element types of the four views.
template <class Q, class K, class V, class O>
struct views_agree
    : std::integral_constant<bool, !std::is_const<O>::value &&
                                       std::is_same<std::remove_const_t<Q>, O>::value &&
                                       std::is_same<std::remove_const_t<K>, O>::value &&
                                       std::is_same<std::remove_const_t<V>, O>::value> {};

/// Checks every argument of an attention call (out only read: its shape and where it
/// lies); throws argument_error naming the first bad one. Returns the resolved scale.
/// Q, K, V, O: the element types of q, k, v, out (a supported attention_storage);
/// lse and weights are in their compute type.
template <class Q, class K, class V, class O, class Policy>
inline double check_attention_views(const char* fn, const tensor_view<const Q>& q,
                                    const tensor_view<const K>& k, const tensor_view<const V>& v,
                                    const tensor_view<const O>& out,
                                    const attention_options<Policy>& o, const compute_t<O>* lse,
                                    const compute_t<O>* weights) {
  check_shapes(fn, q, k, v, out);
  check_mask(fn, o.mask, q, k);
  const double scale = check_options<compute_t<O>>(fn, o, q, k);
  read_arrays reads = call_reads(o.mask, q, k);
  reads.add_scale(k, "k.scale");
  reads.add_scale(v, "v.scale");
  check_extras(fn, o.logit, o.path == attention_path::fused, lse, weights, q, k, v, out, k.seq,
               reads);
  return scale;
}

/// run(options'), where options' is `options` with the key lengths k and v carry
/// (tensor_view::seq_lengths, cache_view) as its mask's key_lengths (mask_with_view_lengths
/// checks they agree); `options` itself when no view carries lengths. The kernels' problem
/// points into options', so run must finish the call.
template <class Q, class K, class V, class O, class Policy,
          class Run>  // view types; policy; callable
inline decltype(auto) with_view_lengths(const char* fn, const tensor_view<const Q>& q,
                                        const tensor_view<const K>& k,
                                        const tensor_view<const V>& v,
                                        const tensor_view<const O>& out,
                                        const attention_options<Policy>& options, Run&& run) {
  if (!views_carry_lengths(q, k, v, out)) return run(options);
  attention_options<Policy> local = options;
  local.mask = mask_with_view_lengths(fn, options.mask, q, k, v, out);
  return run(static_cast<const attention_options<Policy>&>(local));
}

/// check_attention_views for a call whose tensors share one element type T.
template <class T, class Policy>
inline double check_attention(const char* fn, const tensor_view<const T>& q,
                              const tensor_view<const T>& k, const tensor_view<const T>& v,
                              const tensor_view<const T>& out, const attention_options<Policy>& o,
                              const compute_t<T>* lse, const compute_t<T>* weights) {
  return check_attention_views(fn, q, k, v, out, o, lse, weights);
}

/// The kernels' problem: compute type compute_t<O>, the storage types of the views.
template <class Q, class K, class V, class O, class Policy>  // view element types; a length policy
inline kernels::attention_problem<compute_t<O>, Policy, kernels::storage_set<Q, K, V, O>>
make_problem(const tensor_view<const Q>& q, const tensor_view<const K>& k,
             const tensor_view<const V>& v, const tensor_view<O>& out,
             const attention_options<Policy>& o, const attention_extras<compute_t<O>>& x,
             double scale) {
  kernels::attention_problem<compute_t<O>, Policy, kernels::storage_set<Q, K, V, O>> p;
  p.q = q, p.k = k, p.v = v, p.out = out;
  p.policy = &o.policy;
  p.mask = o.mask;
  p.logit = o.logit;
  p.scale = scale;
  p.lse = x.lse;
  p.weights = x.weights;
  p.threads = resolve_threads(o.threads);
  p.allow_bf16_weights = o.allow_bf16_weights;
  p.allow_int8_dot_products = o.allow_int8_dot_products;
  p.bf16_dot_products = o.bf16 == bf16_method::dot_products ||
                        (o.bf16 == bf16_method::automatic && bf16_dot_products_outrun_fma());
  return p;
}

template <class T, class Policy>
inline bool use_materialised(const attention_options<Policy>& o, const attention_extras<T>& x) {
  return o.path == attention_path::materialised ||
         (o.path == attention_path::automatic && x.weights != nullptr);
}

/// Validates a call and builds its problem (steps shared by attention and
/// attention_workspace_bytes). Q, K, V, O: element types of q, k, v, out.
template <class Q, class K, class V, class O, class Policy>
inline auto checked_problem(const char* fn, const tensor_view<const Q>& q,
                            const tensor_view<const K>& k, const tensor_view<const V>& v,
                            const tensor_view<O>& out, const attention_options<Policy>& options,
                            const attention_extras<compute_t<O>>& extras) {
  const double scale = check_attention_views(fn, q, k, v, tensor_view<const O>(out), options,
                                             extras.lse, extras.weights);
  return make_problem(q, k, v, out, options, extras, scale);
}

/// attention_workspace_bytes for any supported element types.
template <class Arch, class Q, class K, class V, class O, class Policy>
std::size_t workspace_bytes_of(const tensor_view<const Q>& q, const tensor_view<const K>& k,
                               const tensor_view<const V>& v, const tensor_view<O>& out,
                               const attention_options<Policy>& options,
                               const attention_extras<compute_t<O>>& extras) {
  constexpr const char* fn = "attention_workspace_bytes";
  return with_view_lengths(fn, q, k, v, tensor_view<const O>(out), options, [&](const auto& o) {
    const auto p = checked_problem(fn, q, k, v, out, o, extras);
    return use_materialised(o, extras) ? kernels::materialised_workspace_bytes<Arch>(p)
                                       : kernels::fused_workspace_bytes<Arch>(p);
  });
}

/// Runs a validated problem on the materialised or the fused kernel, in the caller's
/// workspace (a local one when null), reserving what the kernel needs.
template <class Arch, class T, class Policy, class S>  // tag; compute type; policy; storage_set
void run_problem(const kernels::attention_problem<T, Policy, S>& p, bool materialised,
                 attention_workspace* workspace, const char* fn) {
  attention_workspace local;
  attention_workspace& ws = workspace != nullptr ? *workspace : local;
  const workspace_lease lease(ws, fn);
  if (materialised) {
    ws.reserve(kernels::materialised_workspace_bytes<Arch>(p));
    kernels::attention_materialised<Arch>(p, ws);
  } else {
    ws.reserve(kernels::fused_workspace_bytes<Arch>(p));
    kernels::attention_fused<Arch>(p, ws);
  }
}

/// attention for any supported element types.
template <class Arch, class Q, class K, class V, class O, class Policy>
void attention_of(const tensor_view<const Q>& q, const tensor_view<const K>& k,
                  const tensor_view<const V>& v, const tensor_view<O>& out,
                  const attention_options<Policy>& options,
                  const attention_extras<compute_t<O>>& extras, attention_workspace* workspace) {
  constexpr const char* fn = "attention";
  with_view_lengths(fn, q, k, v, tensor_view<const O>(out), options, [&](const auto& o) {
    run_problem<Arch>(checked_problem(fn, q, k, v, out, o, extras), use_materialised(o, extras),
                      workspace, fn);
  });
}

/// True when the four views' element types differ (after const) but form a supported
/// combination: the mixed-storage overloads below.
template <class Q, class K, class V, class O>
inline constexpr bool mixed_storage_v =
    attention_storage<Q, K, V, O>::supported && !views_agree<Q, K, V, O>::value;

}  // namespace detail

/// Workspace bytes an attention call with these arguments needs (what `attention` will
/// reserve in the workspace it is given). Validates like `attention`.
template <class Arch = default_arch,      // xsimd architecture tag or scalar_arch
          class T,                        // float, double, Eigen::bfloat16 or Eigen::half
          class Policy = softmax_policy>  // a length policy
std::size_t attention_workspace_bytes(detail::identity_t<tensor_view<const T>> q,
                                      detail::identity_t<tensor_view<const T>> k,
                                      detail::identity_t<tensor_view<const T>> v,
                                      tensor_view<T> out,
                                      const attention_options<Policy>& options = {},
                                      attention_extras<compute_t<T>> extras = {}) {
  return detail::workspace_bytes_of<Arch>(q, k, v, out, options, extras);
}

/// attention_workspace_bytes for views of different element types (storage.hpp).
template <class Arch = default_arch,      // xsimd architecture tag or scalar_arch
          class Q,                        // element type of q (const or not)
          class K,                        // element type of k
          class V,                        // element type of v
          class O,                        // element type of out
          class Policy = softmax_policy,  // a length policy
          std::enable_if_t<detail::mixed_storage_v<Q, K, V, O>, int> = 0>
std::size_t attention_workspace_bytes(const tensor_view<Q>& q, const tensor_view<K>& k,
                                      const tensor_view<V>& v, const tensor_view<O>& out,
                                      const attention_options<Policy>& options = {},
                                      attention_extras<compute_t<O>> extras = {}) {
  return detail::workspace_bytes_of<Arch>(detail::read_only(q), detail::read_only(k),
                                          detail::read_only(v), out, options, extras);
}

/// Multi-head attention over strided views (see the top of this header for the formula).
///   q [B, n_q, H, d], k and v [B, n_k, H_kv, d] with H_kv dividing H, out [B, n_q, H, d]
///   (any strides with a contiguous head dimension: bshd_view, bhsd_view, Eigen helpers).
/// Element types (storage.hpp): all float, all double, or any mix of float,
/// Eigen::bfloat16 and Eigen::half, with k and v each also one of the 8-bit cache formats
/// (fp8_e4m3, fp8_e5m2 with the view's scale; block_q8_0), computed in float; this
/// overload takes one type T for all four, the next one a mix.
/// extras.lse, when set, receives the per-row log-sum-exp [B, H, n_q]; extras.weights
/// the attention weights [B, H, n_q, n_k] (materialised path); both in the compute type
/// (float for 16-bit calls). workspace: reuse one
/// across calls to allocate nothing after the first; null allocates a temporary one. One
/// call at a time per workspace: a call given a workspace that another call holds throws
/// argument_error naming 'workspace' (keep one workspace per calling thread).
/// Throws argument_error (naming the argument, nothing written) on any bad argument.
template <class Arch = default_arch,      // xsimd architecture tag or scalar_arch
          class T,                        // float, double, Eigen::bfloat16 or Eigen::half
          class Policy = softmax_policy,  // a length policy
          std::enable_if_t<!std::is_const<T>::value, int> = 0>  // out writable (see below)
void attention(detail::identity_t<tensor_view<const T>> q,
               detail::identity_t<tensor_view<const T>> k,
               detail::identity_t<tensor_view<const T>> v, tensor_view<T> out,
               const attention_options<Policy>& options = {},
               attention_extras<compute_t<T>> extras = {},
               attention_workspace* workspace = nullptr) {
  detail::attention_of<Arch>(q, k, v, out, options, extras, workspace);
}

/// Multi-head attention over views of different element types: q and out each float,
/// Eigen::bfloat16 or Eigen::half, k and v each one of them or an 8-bit cache format
/// (storage.hpp), computed in float; otherwise as the overload above.
template <class Arch = default_arch,      // xsimd architecture tag or scalar_arch
          class Q,                        // element type of q (const or not)
          class K,                        // element type of k
          class V,                        // element type of v
          class O,                        // element type of out
          class Policy = softmax_policy,  // a length policy
          std::enable_if_t<detail::mixed_storage_v<Q, K, V, O>, int> = 0>
void attention(const tensor_view<Q>& q, const tensor_view<K>& k, const tensor_view<V>& v,
               const tensor_view<O>& out, const attention_options<Policy>& options = {},
               attention_extras<compute_t<O>> extras = {},
               attention_workspace* workspace = nullptr) {
  detail::attention_of<Arch>(detail::read_only(q), detail::read_only(k), detail::read_only(v), out,
                             options, extras, workspace);
}

/// Views whose element types no call supports (a double q with a float out, an fp8 q, a
/// const out, ...): one readable compile error naming the argument
/// instead of a failed match against every overload above.
template <class Arch = default_arch,  // xsimd architecture tag or scalar_arch
          class Q, class K, class V,  // the element types of q, k, v
          class O,                    // the element type of out
          class... Rest,              // options, extras, workspace
          std::enable_if_t<!attention_storage<Q, K, V, O>::supported, int> = 0>
void attention(const tensor_view<Q>&, const tensor_view<K>&, const tensor_view<V>&,
               const tensor_view<O>&, const Rest&...) {
  using A = attention_storage<Q, K, V, O>;
  static_assert(A::q_ok,
                "ssmax::attention: argument 'q' must view float, Eigen::bfloat16 or Eigen::half, "
                "or double when k, v and out are double too");
  static_assert(!A::q_ok || A::k_ok,
                "ssmax::attention: argument 'k' must view float, Eigen::bfloat16, Eigen::half, "
                "fp8_e4m3, fp8_e5m2 or block_q8_0, or double when q, v and out are double too");
  static_assert(!A::q_ok || !A::k_ok || A::v_ok,
                "ssmax::attention: argument 'v' must view float, Eigen::bfloat16, Eigen::half, "
                "fp8_e4m3, fp8_e5m2 or block_q8_0, or double when q, k and out are double too");
  static_assert(!A::q_ok || !A::k_ok || !A::v_ok || A::out_ok,
                "ssmax::attention: argument 'out' must be a writable view (not const) of float, "
                "Eigen::bfloat16 or Eigen::half, or of double when q, k and v are double");
}

/// One head: q [n_q, d], k and v [n_k, d], out [n_q, d], as row-major Eigen matrices
/// (Matrix, Map, or blocks of them). extras.lse is [n_q], extras.weights [n_q, n_k].
template <class Arch = default_arch,      // xsimd architecture tag or scalar_arch
          class Policy = softmax_policy>  // a length policy
void attention(const const_matrix_ref<float>& q, const const_matrix_ref<float>& k,
               const const_matrix_ref<float>& v, matrix_ref<float> out,
               const attention_options<Policy>& options = {}, attention_extras<float> extras = {},
               attention_workspace* workspace = nullptr) {
  attention<Arch, float>(head_view(q), head_view(k), head_view(v), head_view(out), options, extras,
                         workspace);
}
/// One head, double (as the float overload).
template <class Arch = default_arch,      // xsimd architecture tag or scalar_arch
          class Policy = softmax_policy>  // a length policy
void attention(const const_matrix_ref<double>& q, const const_matrix_ref<double>& k,
               const const_matrix_ref<double>& v, matrix_ref<double> out,
               const attention_options<Policy>& options = {}, attention_extras<double> extras = {},
               attention_workspace* workspace = nullptr) {
  attention<Arch, double>(head_view(q), head_view(k), head_view(v), head_view(out), options, extras,
                          workspace);
}
/// One head, 16 bits (storage.hpp): q, k, v and out all Eigen::bfloat16 (computed in
/// float; lse and weights float).
template <class Arch = default_arch,      // xsimd architecture tag or scalar_arch
          class Policy = softmax_policy>  // a length policy
void attention(const const_matrix_ref<Eigen::bfloat16>& q,
               const const_matrix_ref<Eigen::bfloat16>& k,
               const const_matrix_ref<Eigen::bfloat16>& v, matrix_ref<Eigen::bfloat16> out,
               const attention_options<Policy>& options = {}, attention_extras<float> extras = {},
               attention_workspace* workspace = nullptr) {
  attention<Arch, Eigen::bfloat16>(head_view(q), head_view(k), head_view(v), head_view(out),
                                   options, extras, workspace);
}
/// One head, all Eigen::half (as the bfloat16 overload).
template <class Arch = default_arch,      // xsimd architecture tag or scalar_arch
          class Policy = softmax_policy>  // a length policy
void attention(const const_matrix_ref<Eigen::half>& q, const const_matrix_ref<Eigen::half>& k,
               const const_matrix_ref<Eigen::half>& v, matrix_ref<Eigen::half> out,
               const attention_options<Policy>& options = {}, attention_extras<float> extras = {},
               attention_workspace* workspace = nullptr) {
  attention<Arch, Eigen::half>(head_view(q), head_view(k), head_view(v), head_view(out), options,
                               extras, workspace);
}

}  // namespace ssmax
