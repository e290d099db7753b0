#pragma once
// AddressSanitizer's manual poisoning, when the build uses it (gcc: __SANITIZE_ADDRESS__,
// clang: __has_feature(address_sanitizer)); no-ops otherwise. The workspace arena
// (kernels/plan.hpp) leaves a poisoned gap after every buffer it carves, so that a write
// past a carved buffer is an ASan error instead of a silent write into the next buffer.

#include <cstddef>

#if defined(__SANITIZE_ADDRESS__)
#define SSMAX_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define SSMAX_ASAN 1
#endif
#endif

#ifdef SSMAX_ASAN
#include <sanitizer/asan_interface.h>
#endif

namespace ssmax::detail {

/// True in AddressSanitizer builds.
#ifdef SSMAX_ASAN
inline constexpr bool kAsan = true;
#else
inline constexpr bool kAsan = false;
#endif

/// Marks [p, p + bytes) unaddressable (AddressSanitizer builds only).
inline void poison(const void* p, std::size_t bytes) {
#ifdef SSMAX_ASAN
  ASAN_POISON_MEMORY_REGION(p, bytes);
#else
  (void)p, (void)bytes;
#endif
}

/// Marks [p, p + bytes) addressable again (AddressSanitizer builds only).
inline void unpoison(const void* p, std::size_t bytes) {
#ifdef SSMAX_ASAN
  ASAN_UNPOISON_MEMORY_REGION(p, bytes);
#else
  (void)p, (void)bytes;
#endif
}

}  // namespace ssmax::detail
