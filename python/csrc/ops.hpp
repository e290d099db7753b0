#pragma once
// The torch-free half of the extension: one forward and one backward entry point per
// element type, over raw tensor views and a plain description of the call. Kept apart from
// bindings.cpp so that the heavy kernel instantiations (ops_float.cpp, ops_double.cpp)
// compile without torch's headers and in parallel.

#include <ssmax/error.hpp>
#include <ssmax/mask.hpp>
#include <ssmax/tensor_view.hpp>

namespace ssmax_torch {

using ssmax::index_t;

/// Which length policy a call uses (length_policy.hpp).
enum class policy_kind : int { softmax = 0, ssmax = 1, qwen_logn = 2, llama4 = 3, mistral = 4 };

/// Everything about a call except q, k, v and the outputs, the mask as the operator takes it.
/// Pointers are borrowed for the call; the bindings fill them from contiguous CPU tensors whose
/// sizes they checked.
struct call_spec {
  policy_kind policy = policy_kind::softmax;
  const double* s = nullptr;  ///< ssmax: [s_count] per-head s (s_count 0: use s_value)
  index_t s_count = 0;
  double s_value = 0.0;
  const double* b = nullptr;  ///< ssmax: [b_count] per-head b (b_count 0: use b_value)
  index_t b_count = 0;
  double b_value = 0.0;
  index_t fixed_length = 0;         ///< ssmax: 0 = visible count
  index_t train_length = 8192;      ///< qwen_logn
  index_t floor_scale = 8192;       ///< llama4
  double attn_scale = 0.1;          ///< llama4
  index_t original_length = 16384;  ///< mistral
  double beta = 0.1;                ///< mistral

  ssmax::attention_mask mask;  ///< borrowed arrays: key_lengths, cu_seqlens_q/k, allowed

  bool has_scale = false;
  double scale = 0.0;
  int threads = 0;
};

/// ssmax::attention on the fused path; lse [B, H, n_q] is always written.
template <class T>  // float or double
void forward(const call_spec& spec, ssmax::tensor_view<const T> q, ssmax::tensor_view<const T> k,
             ssmax::tensor_view<const T> v, ssmax::tensor_view<T> out, T* lse);

/// ssmax::attention_backward on the fused path. ds and db ([H] each), when not null, are
/// overwritten with the per-head gradients of the ssmax policy's s and b.
template <class T>  // float or double
void backward(const call_spec& spec, ssmax::tensor_view<const T> q, ssmax::tensor_view<const T> k,
              ssmax::tensor_view<const T> v, ssmax::tensor_view<const T> out,
              ssmax::tensor_view<const T> dout, const T* lse, ssmax::tensor_view<T> dq,
              ssmax::tensor_view<T> dk, ssmax::tensor_view<T> dv, double* ds, double* db);

}  // namespace ssmax_torch
