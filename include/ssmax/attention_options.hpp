#pragma once
// The options and optional outputs of an attention call (attention.hpp): which kernel runs,
// the length policy, the mask, the scale, threads, the logit's extras, the bf16 method and
// the opt-in bf16 weights; the log-sum-exp and the weights a call may also write.

#include <optional>

#include "length_policy.hpp"
#include "logit.hpp"
#include "mask.hpp"

namespace ssmax {

/// Which kernel runs.
enum class attention_path {
  automatic,    ///< materialised when weights are requested, else fused
  fused,        ///< streaming online softmax (cannot return weights)
  materialised  ///< full score rows
};

/// How a fused prefill over bf16 q and k multiplies them, and whether the opt-in bf16
/// weights (bf16 v, q of any type) may apply, where the build has AVX512-BF16 (elsewhere
/// it is always float_gemm). Both are exact: each score is the float sum of
/// exact products, and only the rounding of the accumulation differs (docs/numerics.md).
enum class bf16_method {
  automatic,     ///< what is faster on this CPU: dot_products on AMD, float_gemm elsewhere
  dot_products,  ///< vdpbf16ps on bf16 pairs (and the opt-in bf16 weights may apply)
  float_gemm     ///< q and k widened to float while packing, the float GEMM (no bf16 weights)
};

/// Everything about an attention call except the tensors.
template <class Policy = softmax_policy>  // a length policy (length_policy.hpp)
struct attention_options {
  static_assert(detail::require_length_policy<Policy>(),
                "ssmax::attention_options: Policy is not a length policy (length_policy.hpp)");
  Policy policy{};              ///< how (n, p, head) become the multiplier m
  attention_mask mask{};        ///< which keys each row sees (mask.hpp)
  std::optional<double> scale;  ///< logit scale; default 1/sqrt(d)
  int threads = 0;              ///< 0 = all; at most 4096; results do not depend on it
  attention_path path = attention_path::automatic;
  logit_options logit{};  ///< additive bias, ALiBi, soft-cap, sinks (logit.hpp); none by default
  /// Opt-in reduced precision (off by default): lets the fused prefill round the softmax
  /// weights to bf16 for P V when v is bf16 on an AVX512-BF16 build (vdpbf16ps for both
  /// GEMMs), which widens each output element's bound by about 2^-8 relative
  /// (docs/numerics.md, "Opt-in bf16 weights"). A permission, not a demand: other paths,
  /// and bf16_method::float_gemm (chosen or automatic), compute as without it.
  bool allow_bf16_weights = false;
  /// Opt-in reduced precision (off by default): with a Q8_0 k (block_q8_0), lets the fused
  /// kernel's dot-product path (decode: tasks of at most 3 query rows) round each scaled
  /// query row to int8 blocks of 32 with a float scale each and sum q . k in integers
  /// (VNNI where the CPU has it), as ggml does; with a Q8_0 v it also multiplies each
  /// weight by the value block's scale (rounded once) instead of each value. Each logit
  /// moves by about |m scale| sum_b max_{c in b} |q_c| ||k_b||_1 / 254 at most, over the
  /// blocks b of 32 (exactly: docs/numerics.md, "Opt-in int8 dot products"). A permission,
  /// not a demand: other paths and types compute as without it.
  bool allow_int8_dot_products = false;
  /// The bf16 prefill's arithmetic (see bf16_method); results differ between the two
  /// methods within the bound, and never with the thread count.
  bf16_method bf16 = bf16_method::automatic;
};

/// Optional outputs. Both are contiguous; indices are the tensors' (b, h, i, j). They are
/// in the call's compute type (storage.hpp): float for every call with a 16-bit tensor.
template <class T>  // float or double: compute_t of the call's element types
struct attention_extras {
  T* lse = nullptr;      ///< [B, H, n_q] per-row log-sum-exp of the scaled logits, or null
  T* weights = nullptr;  ///< [B, H, n_q, n_k] attention weights (materialised path), or null
};

}  // namespace ssmax
