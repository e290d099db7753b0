// ssmax_rows for AVX2 with FMA: compiled with -mavx2 -mfma (see CMakeLists.txt).
#include "kernels_impl.hpp"

SSMAX_EXAMPLE_INSTANTIATE(xsimd::fma3<xsimd::avx2>);
