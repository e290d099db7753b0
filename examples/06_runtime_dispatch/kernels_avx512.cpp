// ssmax_rows for AVX-512 (F, CD, DQ, BW): compiled with those -m flags (see CMakeLists.txt).
#include "kernels_impl.hpp"

SSMAX_EXAMPLE_INSTANTIATE(xsimd::avx512bw);
