#pragma once
// The score epilogue (logit.hpp, score_epilogue) with the soft-cap's tanh evaluated a vector
// of doubles at a time: the version the row-logit step runs (row_logits.hpp). Everything
// stays in double and is rounded once to T, as in logit.hpp; the only difference is
// xsimd's tanh in place of std::tanh, which agree within a few ulp of double (xsimd's
// stated accuracy), far below the half ulp of float (2^-24 relative) the final rounding
// adds for float calls and below the logit term of the operator's bound
// (docs/numerics.md) for double calls.
// Its cost against std::tanh per score: docs/performance.md, "Constants and the
// measurements behind them".

#include "../detail/simd.hpp"
#include "../logit.hpp"

namespace ssmax::kernels::detail {

/// score_epilogue(s, kb, nk, r) (logit.hpp) with the soft-cap vectorised on Arch.
template <class Arch,  // xsimd architecture tag or scalar_arch
          class T>     // compute type: float or double
inline void score_epilogue_simd(T* s, index_t kb, index_t nk, const row_logit& r) {
  using S = ssmax::detail::simd<Arch, double>;
  constexpr index_t W = S::width;
  if (!(r.cap > 0.0) || W == 1) {
    score_epilogue(s, kb, nk, r);
    return;
  }
  const auto cap = S::splat(r.cap);
  alignas(64) double x[W];
  index_t j = 0;
  for (; j + W <= nk; j += W) {
    for (index_t u = 0; u < W; ++u) x[u] = static_cast<double>(s[j + u]);
    S::store(x, cap * S::tanh(S::load(x) / cap));
    for (index_t u = 0; u < W; ++u) s[j + u] = finish_logit<T>(x[u], kb, j + u, r);
  }
  for (; j < nk; ++j)
    s[j] = finish_logit<T>(r.cap * std::tanh(static_cast<double>(s[j]) / r.cap), kb, j, r);
}

}  // namespace ssmax::kernels::detail
