// ssmax_rows for SSE2, the x86-64 baseline: compiled with no architecture flags.
#include "kernels_impl.hpp"

SSMAX_EXAMPLE_INSTANTIATE(xsimd::sse2);
