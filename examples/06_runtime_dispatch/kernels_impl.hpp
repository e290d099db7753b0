#pragma once
// The definition of ssmax_rows, included only by the per-architecture translation units.

#include "kernels.hpp"

template <class Arch>  // the xsimd architecture tag this translation unit is compiled for
void ssmax_rows::operator()(Arch, const float* x, float* y, ssmax::index_t rows, ssmax::index_t n,
                            double s) const {
  static_assert(Arch::supported(), "compile this translation unit with Arch's flags");
  for (ssmax::index_t r = 0; r < rows; ++r)
    ssmax::scalable_softmax<Arch>(x + r * n, y + r * n, n, s);
}

/// Instantiates ssmax_rows for Arch in the translation unit that expands it.
#define SSMAX_EXAMPLE_INSTANTIATE(...)                                                 \
  template void ssmax_rows::operator()<__VA_ARGS__>(__VA_ARGS__, const float*, float*, \
                                                    ssmax::index_t, ssmax::index_t, double) const
