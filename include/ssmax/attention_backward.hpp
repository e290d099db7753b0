#pragma once
// The attention operator's backward pass, for training (with a learnable SSMax s and b).
//
// Given the forward's inputs q, k, v, its output out and per-row log-sum-exp lse
// (attention_extras::lse), and dout = dL/dout, computes
//   dq, dk, dv       the gradients of the inputs (dk, dv summed over the query heads that
//                    share a key/value head: GQA, MQA);
//   d_multiplier     optional, [B, H, n_q]: dL/dm of every row's multiplier m;
//   policy           optional, per head: dL/ds_h += sum over the rows of head h of
//                    log(n) dL/dm and dL/db_h += sum of dL/dm (policy_gradient.hpp; n the
//                    policy's n for the row: the visible count, the mask's n_override, or
//                    the policy's fixed_length). Added to what the object holds, so one
//                    object can collect a whole model's step.
// With z_j = scale q_i . k_j over the keys row i sees, a = softmax(m z), u_j = dout_i . v_j:
//   dq_i = m scale sum_j a_j (u_j - D) k_j,  D = dout_i . out_i = sum_j a_j u_j
//   dk_j = m scale sum_i a_ij (u_ij - D_i) q_i,   dv_j = sum_i a_ij dout_i
//   dL/dm_i = sum_j z_j a_j (u_j - D_i)
// Rows that see no key contribute nothing.
// With options.logit (logit.hpp): z_j = softcap(x_j) + bias_j with x_j = scale q_i . k_j;
// dq and dk take m dy_j softcap'(x_j) (softcap'(x) = 1 - tanh^2(x / c)) where the plain
// formula has m dy_j; the additive bias and the ALiBi slopes get no gradient; the sink is
// one more logit with a zero value: dL/dm_i gains sink_h dy_sink with dy_sink = -a_sink D,
// and d_sinks[h] = sum over the rows of head h of m dy_sink.
//
// Storage (storage.hpp, attention_backward_storage): q, k/v and out as the forward took
// them, dout float, Eigen::bfloat16 or Eigen::half, the gradients dq, dk, dv (one type G)
// float, bfloat16 or half, lse float: computed and accumulated in float; or all double.
// 16-bit inputs are exact values widened as they are read (K^T and V while packing, q and
// dout into their float copies, in registers on the dot-product paths); no intermediate
// is rounded to 16 bits; each 16-bit gradient is rounded once, to nearest even, on its
// store; ds, db, d_multiplier and d_sinks stay double. Bound, per output element: with E
// the float path's error on the exact input values (eps the float epsilon; tests/
// test_attention_backward.cpp states it) and u_X = 2^-8 (bfloat16) or 2^-11 (half), t_X
// = 2^-25 (half's denormals), both 0 for float:
//   |g - exact| <= E' + u_G (|exact| + E') + t_G   (the double outputs: E'),
// where E' = E for the materialised path, which never reads out (its D = sum_j a_j u_j
// comes from the recomputed weights). The fused path's D_i = dout_i . out_i reads out as
// stored: its rounding |out_c - out*_c| <= u_O |out*_c| + t_O (plus the forward's own
// float error, attention.hpp) moves D_i by at most
//   e_i = sum_c |dout_ic| (u_O |out_ic| + t_O) <= (u_O max_j |v_j| + t_O) sum_c |dout_ic|
// (out is a convex combination of the v_j), and each dy_j = a_j (u_j - D_i) by a_j e_i
// (sum_j a_j = 1 with the sink); so E' = E plus
//   dq_ic: |m| scale e_i sum_j a_ij |k_jc| <= |m| scale e_i max_j |k_jc|
//   dk_jc: scale sum_i |m_i| e_i a_ij |q_ic|,   dv: nothing (dv_j = sum_i a_ij dout_i)
//   dL/dm_i: e_i sum_j a_ij |z_ij - z_0| <= 2 e_i max_j |z_ij|  (ds_h, db_h: the rows'
//            terms times |log n| and 1),  d_sinks_h: sum_i |m_i| a_i,sink e_i
// (softcap' <= 1 adds no factor). With bfloat16 out this is a relative 2^-8 of
// |dout| |v| |k| m scale, the size of the gradients' own rounding; pass a float out (the
// storage allows it) where that matters.
// Paths (options.path): fused (the default for automatic) recomputes the scores block by
// block from q, k and lse and keeps memory O((n_q + n_k) d); materialised recomputes each
// row's weights with the row kernel and ignores lse. Same results within rounding; each is
// bitwise identical for any thread count. Every argument is validated first (throwing
// ssmax::argument_error naming it; nothing is written then).

#include <string>

#include "attention.hpp"
#include "kernels/attention_backward_materialised.hpp"
#include "policy_gradient.hpp"

namespace ssmax {

/// Outputs of attention_backward. dq, dk, dv are overwritten; d_multiplier, when set,
/// is overwritten; policy, when set, is added to.
template <class T>  // float, double, Eigen::bfloat16 or Eigen::half (storage.hpp)
struct attention_gradients {
  tensor_view<T> dq;                  ///< [B, n_q, H, d], q's shape
  tensor_view<T> dk;                  ///< [B, n_k, H_kv, d], k's shape
  tensor_view<T> dv;                  ///< [B, n_k, H_kv, d], v's shape
  double* d_multiplier = nullptr;     ///< [B, H, n_q] dL/dm per row, or null
  policy_gradient* policy = nullptr;  ///< per-head ds, db (H entries), or null
  double* d_sinks = nullptr;  ///< [H] dL/dsink_h, overwritten (options.logit.sinks), or null
};

namespace detail {

/// The bytes a view spans (first to last element), for the overlap checks of views of
/// different element types.
struct byte_span {
  const unsigned char* data;
  index_t bytes;
  index_t batch, seq, heads, dim;  ///< the view's shape
};
template <class U>  // the view's element type
inline byte_span span_of(const tensor_view<U>& t) {
  return {reinterpret_cast<const unsigned char*>(t.data),
          (last_offset(t) + 1) * static_cast<index_t>(sizeof(U)),
          t.batch,
          t.seq,
          t.heads,
          t.dim};
}

/// Step of check_attention_backward: the three gradient views, each of its input's shape,
/// with distinct elements, and overlapping no input (q, k, v, out, dout) and no other
/// gradient. C: lse's type (the compute type).
template <class G, class C>  // the gradients' element type; lse's
inline void check_gradient_views(const char* fn, const attention_gradients<G>& grads,
                                 const byte_span (&inputs)[5], const C* lse,
                                 const logit_options& logit, const read_arrays& reads) {
  const tensor_view<G>* outs[3] = {&grads.dq, &grads.dk, &grads.dv};
  const char* names[3] = {"grads.dq", "grads.dk", "grads.dv"};
  const char* input_names[5] = {"q", "k", "v", "out", "dout"};
  const byte_span& q = inputs[0];
  const index_t rows = q.batch * q.heads * q.seq;
  for (int a = 0; a < 3; ++a) {
    const byte_span& like = inputs[a];
    check_view(*outs[a], fn, names[a]);
    require_lazy(outs[a]->batch == like.batch && outs[a]->seq == like.seq &&
                     outs[a]->heads == like.heads && outs[a]->dim == like.dim,
                 fn, names[a], [&] {
                   return "has shape " + shape_of(*outs[a]) + ", but its input '" + input_names[a] +
                          "' has [" + std::to_string(like.batch) + ", " + std::to_string(like.seq) +
                          ", " + std::to_string(like.heads) + ", " + std::to_string(like.dim) +
                          "]: a gradient has its input's shape";
                 });
    require(distinct_elements(*outs[a]), fn, names[a],
            "has strides that make elements share memory");
    const index_t count = last_offset(*outs[a]) + 1;
    for (int in = 0; in < 5; ++in)
      require_lazy(!overlaps(outs[a]->data, count, inputs[in].data, inputs[in].bytes), fn, names[a],
                   [&] { return std::string("overlaps input '") + input_names[in] + "'"; });
    require(!overlaps(outs[a]->data, count, lse, rows), fn, names[a], "overlaps input 'lse'");
    for (int other = 0; other < a; ++other)
      require_lazy(
          !overlaps(outs[a]->data, count, outs[other]->data, last_offset(*outs[other]) + 1), fn,
          names[a], [&] { return std::string("overlaps '") + names[other] + "'"; });
    require_disjoint_from_logit(outs[a]->data, count, fn, names[a], logit);
    require_disjoint_from_reads(outs[a]->data, count, fn, names[a], reads);
  }
  if (grads.d_multiplier != nullptr) {
    for (int a = 0; a < 3; ++a)
      require(!overlaps(grads.d_multiplier, rows, outs[a]->data, last_offset(*outs[a]) + 1), fn,
              "grads.d_multiplier", "overlaps another gradient output");
    for (int in = 0; in < 5; ++in)
      require_lazy(!overlaps(grads.d_multiplier, rows, inputs[in].data, inputs[in].bytes), fn,
                   "grads.d_multiplier",
                   [&] { return std::string("overlaps input '") + input_names[in] + "'"; });
    require(!overlaps(grads.d_multiplier, rows, lse, rows), fn, "grads.d_multiplier",
            "overlaps input 'lse'");
    require_disjoint_from_logit(grads.d_multiplier, rows, fn, "grads.d_multiplier", logit);
    require_disjoint_from_reads(grads.d_multiplier, rows, fn, "grads.d_multiplier", reads);
  }
  if (grads.d_sinks != nullptr) {
    for (int a = 0; a < 3; ++a)
      require(!overlaps(grads.d_sinks, q.heads, outs[a]->data, last_offset(*outs[a]) + 1), fn,
              "grads.d_sinks", "overlaps another gradient output");
    for (int in = 0; in < 5; ++in)
      require(!overlaps(grads.d_sinks, q.heads, inputs[in].data, inputs[in].bytes), fn,
              "grads.d_sinks", "overlaps an input");
    require(!overlaps(grads.d_sinks, q.heads, grads.d_multiplier,
                      grads.d_multiplier != nullptr ? rows : 0),
            fn, "grads.d_sinks", "overlaps 'grads.d_multiplier'");
    require(!overlaps(grads.d_sinks, q.heads, lse, rows), fn, "grads.d_sinks",
            "overlaps input 'lse'");
    require_disjoint_from_logit(grads.d_sinks, q.heads, fn, "grads.d_sinks", logit);
    require_disjoint_from_reads(grads.d_sinks, q.heads, fn, "grads.d_sinks", reads);
  }
  if (grads.policy != nullptr)
    require_lazy(grads.policy->heads() == q.heads, fn, "grads.policy", [&] {
      return "has " + std::to_string(grads.policy->heads()) + " heads, q has " +
             std::to_string(q.heads);
    });
}

/// The kernels' problem of a backward call: compute type compute_t<G>, the views' storage.
template <class Q, class KV, class O, class D, class G, class Policy>  // view types; policy
using backward_problem_of =
    kernels::attention_backward_problem<compute_t<G>, Policy,
                                        kernels::backward_storage_set<Q, KV, O, D, G>>;

/// Checks every argument of a backward call (a supported attention_backward_storage) and
/// builds its problem; throws argument_error naming the first bad one.
template <class Q, class KV, class O, class D, class G, class Policy>  // view types; policy
inline backward_problem_of<Q, KV, O, D, G, Policy> check_attention_backward(
    const char* fn, const tensor_view<const Q>& q, const tensor_view<const KV>& k,
    const tensor_view<const KV>& v, const tensor_view<const O>& out,
    const tensor_view<const D>& dout, const compute_t<G>* lse, const attention_gradients<G>& grads,
    const attention_options<Policy>& o) {
  using C = compute_t<G>;
  // The forward's checks, on the forward's arguments (out read-only here, lse an input).
  const double scale =
      check_attention_views(fn, q, k, v, out, o, lse, static_cast<const C*>(nullptr));
  require(lse != nullptr, fn, "lse", "must not be null (the forward's extras.lse)");
  check_view(dout, fn, "dout");
  require(dout.batch == q.batch && dout.seq == q.seq && dout.heads == q.heads && dout.dim == q.dim,
          fn, "dout", "must have q's shape");
  const byte_span inputs[5] = {span_of(q), span_of(k), span_of(v), span_of(out), span_of(dout)};
  check_gradient_views(fn, grads, inputs, lse, o.logit, call_reads(o.mask, q, k));
  require(grads.d_sinks == nullptr || o.logit.has_sinks(), fn, "grads.d_sinks",
          "needs options.logit.sinks (the sinks it is the gradient of)");

  backward_problem_of<Q, KV, O, D, G, Policy> p;
  p.forward = make_problem(q, k, v, tensor_view<O>{}, o, attention_extras<C>{}, scale);
  p.out = out;
  p.dout = dout;
  p.lse = lse;
  p.dq = grads.dq;
  p.dk = grads.dk;
  p.dv = grads.dv;
  p.d_multiplier = grads.d_multiplier;
  p.d_sinks = grads.d_sinks;
  return p;
}

/// The backward for any supported storage (checks, workspace, path).
template <class Arch, class Q, class KV, class O, class D, class G, class Policy>
void attention_backward_of(const tensor_view<const Q>& q, const tensor_view<const KV>& k,
                           const tensor_view<const KV>& v, const tensor_view<const O>& out,
                           const tensor_view<const D>& dout, const compute_t<G>* lse,
                           const attention_gradients<G>& grads,
                           const attention_options<Policy>& options,
                           attention_workspace* workspace) {
  constexpr const char* fn = "attention_backward";
  with_view_lengths(fn, q, k, v, out, options, [&](const auto& o) {
    const auto p = check_attention_backward(fn, q, k, v, out, dout, lse, grads, o);
    attention_workspace local;
    attention_workspace& ws = workspace != nullptr ? *workspace : local;
    const workspace_lease lease(ws, fn);
    const bool materialised = o.path == attention_path::materialised;
    ws.reserve(kernels::attention_backward_workspace_bytes<Arch>(p, materialised));
    if (materialised)
      kernels::attention_backward_materialised<Arch>(p, ws, grads.policy);
    else
      kernels::attention_backward_fused<Arch>(p, ws, grads.policy);
  });
}

/// True when the six element types differ (after const) but form a supported backward
/// (storage.hpp): the mixed-storage overload below.
template <class Q, class K, class V, class O, class D, class G>
inline constexpr bool mixed_backward_v =
    attention_backward_storage<Q, K, V, O, D, G>::supported &&
    !(views_agree<Q, K, V, G>::value && views_agree<O, D, D, G>::value);

}  // namespace detail

/// Backward of ssmax::attention (see the top of this header). q, k, v, options: the
/// forward's; out and lse: what the forward wrote (lse via attention_extras::lse, in the
/// compute type: float for 16-bit calls); dout = dL/dout. workspace: reuse one across
/// calls to allocate nothing after the first. This overload: one element type T for the
/// five inputs and the gradients (float, double, Eigen::bfloat16 or Eigen::half).
template <class Arch = default_arch,      // xsimd architecture tag or scalar_arch
          class T,                        // float, double, Eigen::bfloat16 or Eigen::half
          class Policy = softmax_policy,  // a length policy
          std::enable_if_t<!std::is_const<T>::value, int> = 0>  // grads writable
void attention_backward(detail::identity_t<tensor_view<const T>> q,
                        detail::identity_t<tensor_view<const T>> k,
                        detail::identity_t<tensor_view<const T>> v,
                        detail::identity_t<tensor_view<const T>> out,
                        detail::identity_t<tensor_view<const T>> dout,
                        detail::identity_t<const compute_t<T>*> lse, attention_gradients<T> grads,
                        const attention_options<Policy>& options = {},
                        attention_workspace* workspace = nullptr) {
  detail::attention_backward_of<Arch>(q, k, v, out, dout, lse, grads, options, workspace);
}

/// Backward over views of different element types (storage.hpp,
/// attention_backward_storage): q, k/v and out as the forward took them, dout float,
/// Eigen::bfloat16 or Eigen::half, the gradients G float, Eigen::bfloat16 or Eigen::half
/// (accumulated in float, each rounded once when stored); lse float. Otherwise as above.
template <class Arch = default_arch,      // xsimd architecture tag or scalar_arch
          class Q,                        // element type of q (const or not)
          class K,                        // element type of k
          class V,                        // element type of v (k's)
          class O,                        // element type of out
          class D,                        // element type of dout
          class G,                        // element type of the gradients
          class Policy = softmax_policy,  // a length policy
          std::enable_if_t<detail::mixed_backward_v<Q, K, V, O, D, G>, int> = 0>
void attention_backward(const tensor_view<Q>& q, const tensor_view<K>& k, const tensor_view<V>& v,
                        const tensor_view<O>& out, const tensor_view<D>& dout,
                        const compute_t<G>* lse, attention_gradients<G> grads,
                        const attention_options<Policy>& options = {},
                        attention_workspace* workspace = nullptr) {
  detail::attention_backward_of<Arch>(detail::read_only(q), detail::read_only(k),
                                      detail::read_only(v), detail::read_only(out),
                                      detail::read_only(dout), lse, grads, options, workspace);
}

/// Element types no backward supports (float inputs with double gradients, k and v of
/// different types, ...): one readable compile error naming the argument instead of a
/// failed match against the overloads above.
template <class Arch = default_arch,  // xsimd architecture tag or scalar_arch
          class Q, class K, class V,  // the element types of q, k, v
          class O, class D,           // the element types of out and dout
          class L,                    // lse's type (should be const compute type*)
          class G,                    // the element type of grads
          class... Rest,              // options, workspace
          std::enable_if_t<!attention_backward_storage<Q, K, V, O, D, G>::supported, int> = 0>
void attention_backward(const tensor_view<Q>&, const tensor_view<K>&, const tensor_view<V>&,
                        const tensor_view<O>&, const tensor_view<D>&, const L&,
                        const attention_gradients<G>&, const Rest&...) {
  using A = attention_backward_storage<Q, K, V, O, D, G>;
  static_assert(A::q_ok,
                "ssmax::attention_backward: argument 'q' must view float, Eigen::bfloat16 or "
                "Eigen::half, or double when every other argument is double too");
  static_assert(!A::q_ok || A::k_ok,
                "ssmax::attention_backward: argument 'k' must view float, Eigen::bfloat16 or "
                "Eigen::half, or double when q is double");
  static_assert(!A::q_ok || !A::k_ok || A::v_ok,
                "ssmax::attention_backward: argument 'v' must have k's element type");
  static_assert(!A::q_ok || !A::k_ok || !A::v_ok || A::out_ok,
                "ssmax::attention_backward: argument 'out' must view float, Eigen::bfloat16 or "
                "Eigen::half, or double when q is double");
  static_assert(!A::q_ok || !A::k_ok || !A::v_ok || !A::out_ok || A::dout_ok,
                "ssmax::attention_backward: argument 'dout' must view float, Eigen::bfloat16 or "
                "Eigen::half, or double when q is double");
  static_assert(!A::q_ok || !A::k_ok || !A::v_ok || !A::out_ok || !A::dout_ok || A::grads_ok,
                "ssmax::attention_backward: q, k, v, out and dout must be double exactly when "
                "argument 'grads' is (attention_gradients<double>: an all-double call); "
                "otherwise grads must be float, Eigen::bfloat16 or Eigen::half");
}

}  // namespace ssmax
