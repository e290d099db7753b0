#pragma once
// The fused prefill's bf16 score path: when q and k are both stored as Eigen::bfloat16, the
// compute type is float, the architecture has 16 float lanes and the build targets
// AVX512-BF16 (gemm_bf16.hpp), and the call's bf16 method takes dot products
// (attention_options::bf16; the plan's bf16_scores), the score GEMM of each strip runs
// vdpbf16ps on
// - K^T packed pair-interleaved once per (sequence, kv head, key block) (pack_kt_bf16),
//   pair rows kBf16KtStride bf16 apart;
// - the task's q rows packed as bf16 pairs (pack_task_q_bf16), once per task, with their
//   row factors f_r = query_factor (m_r scale, or scale alone when the logit's epilogue
//   transforms the scores) applied to the float scores after the dot products: q is never
//   scaled nor rounded. The softmax, the epilogue, the non-finite path (which recomputes
//   from the stored q and k) and P V are the float path's.
// Numerical contract: gemm_bf16.hpp's per score (the accumulation's rounding is within the
// float path's; vdpbf16ps reads bf16 denormals as zero and flushes float denormals, which
// adds |f_r| 2^-126 d (max|q_r| + max|k_j| + 2) per score); attention.hpp states the result.

#include <cstdint>
#include <type_traits>

#include "../detail/simd.hpp"
#include "gemm_bf16.hpp"
#include "online_softmax.hpp"
#include "plan.hpp"

namespace ssmax::kernels::detail {

/// True when the fused prefill of a problem of compute type T and storage S on Arch can
/// take the opt-in bf16 P V (attention_options::allow_bf16_weights): bf16 k and v, float
/// compute, 16 float lanes and an AVX512-BF16 build. The plan takes it when the problem
/// allows it (attention_problem::allow_bf16_weights) and its bf16 method takes dot
/// products (attention_problem::bf16_dot_products), and packs V pair-interleaved
/// (pack_v_bf16) instead of in float.
template <class Arch,  // xsimd architecture tag or scalar_arch
          class T,     // compute type
          class S>     // storage_set (plan.hpp)
inline constexpr bool bf16_weights_path =
    kHaveAvx512Bf16&& std::is_same<T, float>::value&&
        std::is_same<typename S::k, Eigen::bfloat16>::value&& std::is_same<
            typename S::v, Eigen::bfloat16>::value&& ssmax::detail::simd<Arch, float>::width == 16;

/// True when the fused prefill of a problem of compute type T and storage S on Arch can
/// take the bf16 score GEMM (see the top of the file): bf16_weights_path's conditions and
/// bf16 q. The plan takes it where the bf16 method takes dot products (bf16_dot_scores).
template <class Arch,  // xsimd architecture tag or scalar_arch
          class T,     // compute type
          class S>     // storage_set (plan.hpp)
inline constexpr bool bf16_prefill =
    bf16_weights_path<Arch, T, S>&& std::is_same<typename S::q, Eigen::bfloat16>::value;

/// Stride of the pair rows of a packed bf16 K^T block, in bf16: two per key of a block,
/// plus one 64-byte line so that the rows (1 KiB apart otherwise) do not alias in the cache.
inline constexpr index_t kBf16KtStride = 2 * kKeyBlock + 32;

/// Packs query rows q0.. q0 + rows of head h (batch b) of p as bf16 pairs into qp (rows
/// bf16_pairs(d) words apart) and their row factors into f.
template <class P>  // attention_problem with bf16 q
inline void pack_task_q_bf16(const P& p, index_t b, index_t h, index_t q0, index_t rows,
                             const row_keys* info, std::uint32_t* qp, float* f) {
  const index_t d = p.q.dim, kp = bf16_pairs(d);
  for (index_t r = 0; r < rows; ++r) {
    pack_q_bf16(p.q.row(b, q0 + r, h), d, qp + r * kp);
    f[r] = static_cast<float>(query_factor(p, info[r], h));
  }
}

}  // namespace ssmax::kernels::detail
