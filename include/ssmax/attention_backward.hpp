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
template <class T>  // float or double
struct attention_gradients {
  tensor_view<T> dq;                  ///< [B, n_q, H, d], q's shape
  tensor_view<T> dk;                  ///< [B, n_k, H_kv, d], k's shape
  tensor_view<T> dv;                  ///< [B, n_k, H_kv, d], v's shape
  double* d_multiplier = nullptr;     ///< [B, H, n_q] dL/dm per row, or null
  policy_gradient* policy = nullptr;  ///< per-head ds, db (H entries), or null
  double* d_sinks = nullptr;  ///< [H] dL/dsink_h, overwritten (options.logit.sinks), or null
};

namespace detail {

/// Step of check_attention_backward: the three gradient views, each of its input's shape,
/// with distinct elements, and overlapping no input and no other gradient.
template <class T>
inline void check_gradient_views(const char* fn, const attention_gradients<T>& grads,
                                 const tensor_view<const T>* const (&inputs)[5], const T* lse) {
  const tensor_view<T>* outs[3] = {&grads.dq, &grads.dk, &grads.dv};
  const char* names[3] = {"grads.dq", "grads.dk", "grads.dv"};
  const char* input_names[5] = {"q", "k", "v", "out", "dout"};
  const tensor_view<const T>& q = *inputs[0];
  const index_t rows = q.batch * q.heads * q.seq;
  for (int a = 0; a < 3; ++a) {
    const tensor_view<const T>& like = *inputs[a];
    check_view(*outs[a], fn, names[a]);
    require(outs[a]->batch == like.batch && outs[a]->seq == like.seq &&
                outs[a]->heads == like.heads && outs[a]->dim == like.dim,
            fn, names[a], "must have the shape of its input");
    require(distinct_elements(*outs[a]), fn, names[a],
            "has strides that make elements share memory");
    const index_t count = last_offset(*outs[a]) + 1;
    for (int in = 0; in < 5; ++in)
      require_lazy(!overlaps(outs[a]->data, count, inputs[in]->data, last_offset(*inputs[in]) + 1),
                   fn, names[a],
                   [&] { return std::string("overlaps input '") + input_names[in] + "'"; });
    require(!overlaps(outs[a]->data, count, lse, rows), fn, names[a], "overlaps input 'lse'");
    for (int other = 0; other < a; ++other)
      require_lazy(
          !overlaps(outs[a]->data, count, outs[other]->data, last_offset(*outs[other]) + 1), fn,
          names[a], [&] { return std::string("overlaps '") + names[other] + "'"; });
  }
  if (grads.d_multiplier != nullptr) {
    for (int a = 0; a < 3; ++a)
      require(!overlaps(grads.d_multiplier, rows, outs[a]->data, last_offset(*outs[a]) + 1), fn,
              "grads.d_multiplier", "overlaps another gradient output");
    for (int in = 0; in < 5; ++in)
      require_lazy(
          !overlaps(grads.d_multiplier, rows, inputs[in]->data, last_offset(*inputs[in]) + 1), fn,
          "grads.d_multiplier",
          [&] { return std::string("overlaps input '") + input_names[in] + "'"; });
    require(!overlaps(grads.d_multiplier, rows, lse, rows), fn, "grads.d_multiplier",
            "overlaps input 'lse'");
  }
  if (grads.d_sinks != nullptr) {
    for (int a = 0; a < 3; ++a)
      require(!overlaps(grads.d_sinks, q.heads, outs[a]->data, last_offset(*outs[a]) + 1), fn,
              "grads.d_sinks", "overlaps another gradient output");
    for (int in = 0; in < 5; ++in)
      require(!overlaps(grads.d_sinks, q.heads, inputs[in]->data, last_offset(*inputs[in]) + 1), fn,
              "grads.d_sinks", "overlaps an input");
    require(!overlaps(grads.d_sinks, q.heads, grads.d_multiplier,
                      grads.d_multiplier != nullptr ? rows : 0),
            fn, "grads.d_sinks", "overlaps 'grads.d_multiplier'");
  }
  if (grads.policy != nullptr)
    require_lazy(grads.policy->heads() == q.heads, fn, "grads.policy", [&] {
      return "has " + std::to_string(grads.policy->heads()) + " heads, q has " +
             std::to_string(q.heads);
    });
}

template <class T, class Policy>
inline kernels::attention_backward_problem<T, Policy> check_attention_backward(
    const char* fn, const tensor_view<const T>& q, const tensor_view<const T>& k,
    const tensor_view<const T>& v, const tensor_view<const T>& out,
    const tensor_view<const T>& dout, const T* lse, const attention_gradients<T>& grads,
    const attention_options<Policy>& o) {
  // The forward's checks, on the forward's arguments (out read-only here, lse an input).
  const double scale = check_attention(fn, q, k, v, out, o, lse, static_cast<const T*>(nullptr));
  require(lse != nullptr, fn, "lse", "must not be null (the forward's extras.lse)");
  check_view(dout, fn, "dout");
  require(dout.batch == q.batch && dout.seq == q.seq && dout.heads == q.heads && dout.dim == q.dim,
          fn, "dout", "must have q's shape");
  const tensor_view<const T>* inputs[5] = {&q, &k, &v, &out, &dout};
  check_gradient_views(fn, grads, inputs, lse);
  require(grads.d_sinks == nullptr || o.logit.has_sinks(), fn, "grads.d_sinks",
          "needs options.logit.sinks (the sinks it is the gradient of)");

  kernels::attention_backward_problem<T, Policy> p;
  p.forward = make_problem(q, k, v, tensor_view<T>{}, o, attention_extras<T>{}, scale);
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

}  // namespace detail

/// Backward of ssmax::attention (see the top of this header). q, k, v, options: the
/// forward's; out and lse: what the forward wrote (lse via attention_extras::lse);
/// dout = dL/dout. workspace: reuse one across calls to allocate nothing after the first.
template <class Arch = default_arch,      // xsimd architecture tag or scalar_arch
          class T,                        // float or double
          class Policy = softmax_policy,  // a length policy
          std::enable_if_t<!std::is_const<T>::value, int> = 0>  // grads writable
void attention_backward(detail::identity_t<tensor_view<const T>> q,
                        detail::identity_t<tensor_view<const T>> k,
                        detail::identity_t<tensor_view<const T>> v,
                        detail::identity_t<tensor_view<const T>> out,
                        detail::identity_t<tensor_view<const T>> dout,
                        detail::identity_t<const T*> lse, attention_gradients<T> grads,
                        const attention_options<Policy>& options = {},
                        attention_workspace* workspace = nullptr) {
  const auto p = detail::check_attention_backward("attention_backward", q, k, v, out, dout, lse,
                                                  grads, options);
  attention_workspace local;
  attention_workspace& ws = workspace != nullptr ? *workspace : local;
  const detail::workspace_lease lease(ws, "attention_backward");
  const bool materialised = options.path == attention_path::materialised;
  ws.reserve(kernels::attention_backward_workspace_bytes<Arch>(p, materialised));
  if (materialised)
    kernels::attention_backward_materialised<Arch>(p, ws, grads.policy);
  else
    kernels::attention_backward_fused<Arch>(p, ws, grads.policy);
}

/// Arguments whose element types disagree (float q with double gradients, ...): one
/// readable compile error instead of a failed match against the overload above.
template <class Arch = default_arch,  // xsimd architecture tag or scalar_arch
          class Q, class K, class V,  // the element types of q, k, v (should be const G)
          class O, class D,           // the element types of out and dout (should be const G)
          class L,                    // lse's type (should be const G*)
          class G,                    // the element type of grads (should be float or double)
          class... Rest,              // options, workspace
          std::enable_if_t<!(detail::views_agree<Q, K, V, G>::value &&
                             detail::views_agree<O, D, D, G>::value),
                           int> = 0>
void attention_backward(const tensor_view<Q>&, const tensor_view<K>&, const tensor_view<V>&,
                        const tensor_view<O>&, const tensor_view<D>&, const L&,
                        const attention_gradients<G>&, const Rest&...) {
  static_assert(detail::views_agree<Q, K, V, G>::value && detail::views_agree<O, D, D, G>::value,
                "ssmax::attention_backward: q, k, v, out and dout must be tensor_view<const T> "
                "(or tensor_view<T>) with the gradients' element type T: check for a float "
                "view passed with double gradients");
}

}  // namespace ssmax
