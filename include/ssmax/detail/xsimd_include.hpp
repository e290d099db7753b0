#pragma once
// <xsimd/xsimd.hpp>, included so that users who put the library's headers on a plain -I
// (not -isystem) get no warning from it under -Wall -Wextra: GCC 12 reports
// -Wmaybe-uninitialized inside its own AVX-512 intrinsic headers (avx512fintrin.h,
// _mm512_undefined_*; GCC PR 105593, fixed in GCC 13) wherever xsimd's batch operations
// are inlined into a caller. The suppression covers only the text of the included headers.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#endif
#include <xsimd/xsimd.hpp>
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif
