#pragma once
// index_array: a borrowed array of integers that the caller holds as 32-bit or 64-bit
// signed values, read as index_t without a copy. Lengths, offsets and block tables arrive
// from inference engines in either width (vLLM's and FlashAttention's are int32 tensors,
// ssmax's own are index_t): every such argument of the library (mask.hpp's key_lengths and
// cu_seqlens, tensor_view.hpp's seq_lengths, paged.hpp's block_table and cache_lengths) is
// an index_array, built implicitly from `const int32_t*`, `const int64_t*` (index_t) or
// nullptr.

#include <cstddef>
#include <cstdint>
#include <type_traits>

#include "error.hpp"

namespace ssmax {

/// A borrowed pointer to 32-bit or 64-bit signed integers (or null). Entries are read as
/// index_t; the pointer must stay valid for the call that reads it.
class index_array {
 public:
  constexpr index_array() = default;
  constexpr index_array(std::nullptr_t) {}  // NOLINT: implicit by design
  /// Any signed integer type of 4 or 8 bytes (int32_t, int64_t, long, long long).
  template <class I,  // a signed integer type of 4 or 8 bytes
            std::enable_if_t<std::is_integral<I>::value && std::is_signed<I>::value &&
                                 (sizeof(I) == 4 || sizeof(I) == 8),
                             int> = 0>
  constexpr index_array(const I* data)  // NOLINT: implicit by design
      : data_(data), wide_(sizeof(I) == 8) {}

  /// Entry i, widened to index_t. Pre: not null, i inside the caller's array.
  index_t operator[](index_t i) const {
    return wide_ ? static_cast<const std::int64_t*>(data_)[i]
                 : static_cast<const std::int32_t*>(data_)[i];
  }
  /// The caller's pointer, for overlap checks.
  const void* data() const { return data_; }
  /// Bytes per entry: 4 or 8.
  index_t element_bytes() const { return wide_ ? 8 : 4; }
  /// True when the first `count` entries lie in [p, p + bytes) or overlap it.
  bool overlaps_bytes(const void* p, index_t bytes, index_t count) const {
    if (data_ == nullptr || p == nullptr || bytes <= 0 || count <= 0) return false;
    const auto* a0 = static_cast<const unsigned char*>(data_);
    const auto* b0 = static_cast<const unsigned char*>(p);
    return a0 < b0 + bytes && b0 < a0 + count * element_bytes();
  }

  friend bool operator==(const index_array& a, std::nullptr_t) { return a.data_ == nullptr; }
  friend bool operator!=(const index_array& a, std::nullptr_t) { return a.data_ != nullptr; }
  friend bool operator==(std::nullptr_t, const index_array& a) { return a.data_ == nullptr; }
  friend bool operator!=(std::nullptr_t, const index_array& a) { return a.data_ != nullptr; }
  /// Same pointer and width.
  friend bool operator==(const index_array& a, const index_array& b) {
    return a.data_ == b.data_ && (a.data_ == nullptr || a.wide_ == b.wide_);
  }
  friend bool operator!=(const index_array& a, const index_array& b) { return !(a == b); }

 private:
  const void* data_ = nullptr;
  bool wide_ = true;
};

}  // namespace ssmax
