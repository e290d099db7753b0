#pragma once
// Definitions of ops.hpp's entry points; included by ops_float.cpp and ops_double.cpp,
// each of which instantiates one element type.

#include <algorithm>
#include <ssmax/ssmax.hpp>

#include "ops.hpp"

namespace ssmax_torch {
namespace detail {

inline ssmax::per_head per_head_of(const double* values, index_t count, double value) {
  return count > 0 ? ssmax::per_head::view(values, count) : ssmax::per_head(value);
}

template <class Policy>  // a length policy
ssmax::attention_options<Policy> options_of(const call_spec& c, Policy policy) {
  ssmax::attention_options<Policy> o;
  o.policy = std::move(policy);
  o.mask = c.mask;
  if (c.has_scale) o.scale = c.scale;
  o.threads = c.threads;
  o.path = ssmax::attention_path::fused;
  return o;
}

/// Calls body(policy) with the call's policy as its concrete type.
template <class Body>  // callable with every length policy
void with_policy(const call_spec& c, Body&& body) {
  switch (c.policy) {
    case policy_kind::softmax:
      body(ssmax::softmax_policy{});
      break;
    case policy_kind::ssmax:
      body(ssmax::ssmax_policy(per_head_of(c.s, c.s_count, c.s_value),
                               per_head_of(c.b, c.b_count, c.b_value), c.fixed_length));
      break;
    case policy_kind::qwen_logn:
      body(ssmax::qwen_logn_policy{c.train_length});
      break;
    case policy_kind::llama4:
      body(ssmax::llama4_temperature_policy{c.floor_scale, c.attn_scale});
      break;
    case policy_kind::mistral:
      body(ssmax::mistral_policy{c.original_length, c.beta});
      break;
  }
}

}  // namespace detail

template <class T>
void forward(const call_spec& spec, ssmax::tensor_view<const T> q, ssmax::tensor_view<const T> k,
             ssmax::tensor_view<const T> v, ssmax::tensor_view<T> out, T* lse) {
  detail::with_policy(spec, [&](auto policy) {
    ssmax::attention_extras<T> extras;
    extras.lse = lse;
    ssmax::attention<ssmax::default_arch, T>(q, k, v, out, detail::options_of(spec, policy),
                                             extras);
  });
}

template <class T>
void backward(const call_spec& spec, ssmax::tensor_view<const T> q, ssmax::tensor_view<const T> k,
              ssmax::tensor_view<const T> v, ssmax::tensor_view<const T> out,
              ssmax::tensor_view<const T> dout, const T* lse, ssmax::tensor_view<T> dq,
              ssmax::tensor_view<T> dk, ssmax::tensor_view<T> dv, double* ds, double* db) {
  ssmax::policy_gradient policy_grad(q.heads);
  ssmax::attention_gradients<T> grads;
  grads.dq = dq;
  grads.dk = dk;
  grads.dv = dv;
  if (ds != nullptr || db != nullptr) grads.policy = &policy_grad;
  detail::with_policy(spec, [&](auto policy) {
    ssmax::attention_backward<ssmax::default_arch, T>(q, k, v, out, dout, lse, grads,
                                                      detail::options_of(spec, policy));
  });
  if (ds != nullptr) std::copy(policy_grad.s.begin(), policy_grad.s.end(), ds);
  if (db != nullptr) std::copy(policy_grad.b.begin(), policy_grad.b.end(), db);
}

}  // namespace ssmax_torch

/// Explicit instantiation of forward and backward for one element type (ops_<type>.cpp).
#define SSMAX_TORCH_INSTANTIATE(T)                                                                \
  template void ssmax_torch::forward<T>(const ssmax_torch::call_spec&,                            \
                                        ssmax::tensor_view<const T>, ssmax::tensor_view<const T>, \
                                        ssmax::tensor_view<const T>, ssmax::tensor_view<T>, T*);  \
  template void ssmax_torch::backward<T>(                                                         \
      const ssmax_torch::call_spec&, ssmax::tensor_view<const T>, ssmax::tensor_view<const T>,    \
      ssmax::tensor_view<const T>, ssmax::tensor_view<const T>, ssmax::tensor_view<const T>,      \
      const T*, ssmax::tensor_view<T>, ssmax::tensor_view<T>, ssmax::tensor_view<T>, double*,     \
      double*)
