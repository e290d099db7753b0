#pragma once
// What the fuzz targets share: reading sizes, choices and floating-point values out of
// libFuzzer's bytes (with the extreme values over-represented), and reporting a finding.
//
// A finding prints what went wrong and aborts, which libFuzzer records as a crash and
// saves the input that caused it.

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <ssmax/error.hpp>
#include <tuple>
#include <type_traits>

namespace ssmax::fuzz {

/// Prints a finding and aborts (libFuzzer saves the input).
[[noreturn]] inline void finding(const char* what, const char* detail = "") {
  std::fprintf(stderr, "ssmax fuzz finding: %s %s\n", what, detail);
  std::abort();
}

/// Aborts with `what` unless ok.
inline void require(bool ok, const char* what, const char* detail = "") {
  if (!ok) finding(what, detail);
}

/// Consumes libFuzzer's bytes front to back; once they run out, a fixed pseudo-random
/// stream takes over, so short inputs still describe long rows and every read is defined.
class input {
 public:
  input(const std::uint8_t* data, std::size_t size) : data_(data), size_(size) {}

  std::uint8_t byte() {
    if (at_ < size_) return data_[at_++];
    state_ = state_ * 6364136223846793005ULL + 1442695040888963407ULL;
    return static_cast<std::uint8_t>(state_ >> 56);
  }
  /// Uniform-ish in [0, count).
  index_t below(index_t count) {
    std::uint32_t v = 0;
    for (int i = 0; i < 4; ++i) v = (v << 8) | byte();
    return static_cast<index_t>(v % static_cast<std::uint32_t>(count));
  }
  /// In [lo, hi].
  index_t between(index_t lo, index_t hi) { return lo + below(hi - lo + 1); }
  bool flag() { return (byte() & 1) != 0; }
  bool exhausted() const { return at_ >= size_; }

  /// Any bit pattern of T (NaN payloads, subnormals and infinities included).
  template <class T>  // float or double
  T raw() {
    using U = std::conditional_t<sizeof(T) == 4, std::uint32_t, std::uint64_t>;
    U bits = 0;
    for (std::size_t i = 0; i < sizeof(T); ++i) bits = (bits << 8) | byte();
    T v;
    std::memcpy(&v, &bits, sizeof(T));
    return v;
  }

  /// A value of T drawn mostly from ordinary logits, with every extreme class present:
  /// 0, +-inf, NaN, +-1e30, +-max, +-min normal, subnormals, and raw bit patterns.
  template <class T>  // float or double
  T value() {
    using lim = std::numeric_limits<T>;
    const std::uint8_t kind = byte();
    const T sign = (kind & 0x80) ? T(-1) : T(1);
    switch (kind & 0x0F) {
      case 0:
        return T(0);
      case 1:
        return sign * lim::infinity();
      case 2:
        return lim::quiet_NaN();
      case 3:
        return sign * T(1e30);
      case 4:
        return sign * lim::max();
      case 5:
        return sign * lim::min();
      case 6:
        return sign * lim::denorm_min() * static_cast<T>(1 + byte());
      case 7:
        return raw<T>();
      case 8:
        return sign * static_cast<T>(byte()) * T(1000);  // large, with ties
      default:  // ordinary logits: a 16-bit fixed-point value in about [-64, 64)
        return static_cast<T>(static_cast<std::int16_t>((byte() << 8) | byte())) / T(512);
    }
  }

  /// A non-negative parameter (multiplier, scale, bias) over its whole range, invalid ones
  /// (negative, inf, NaN) included now and then.
  double parameter() {
    const std::uint8_t kind = byte();
    switch (kind % 16) {
      case 0:
        return 0.0;
      case 1:
        return 1.0;
      case 2:
        return std::numeric_limits<double>::denorm_min();
      case 3:
        return 1e-300;
      case 4:
        return 1e-30;
      case 5:
        return 1e30;
      case 6:
        return 1e38;
      case 7:
        return std::numeric_limits<double>::max();
      case 8:
        return std::numeric_limits<double>::infinity();
      case 9:
        return std::numeric_limits<double>::quiet_NaN();
      case 10:
        return -static_cast<double>(byte()) / 16.0;
      case 11:
        return raw<double>();
      default:
        return static_cast<double>(byte()) / 64.0;  // [0, 4): the usual range
    }
  }

 private:
  const std::uint8_t* data_;
  std::size_t size_;
  std::size_t at_ = 0;
  std::uint64_t state_ = 0x9E3779B97F4A7C15ULL;
};

/// Calls f(Arch{}) for the which-th architecture Arch of the tuple (nothing when which is
/// out of range).
template <class... Archs, class F>  // architecture tags; a callable taking any of them
void for_architecture(std::tuple<Archs...>*, index_t which, F&& f) {
  index_t i = 0;
  ((i++ == which ? (f(Archs{}), 0) : 0), ...);
}

/// The body of LLVMFuzzerTestOneInput: the input's first bytes choose an architecture of
/// the tuple Archs and the element type (float or double), then f(in, Arch{}, T{}) runs the
/// target on the rest of the input.
template <class Archs,  // std::tuple of the architecture tags the target covers
          class F>      // callable (input&, Arch, T) for every Arch of Archs, T float or double
int run_one_input(const std::uint8_t* data, std::size_t size, F&& f) {
  input in(data, size);
  const auto which = in.below(static_cast<index_t>(std::tuple_size<Archs>::value));
  const bool is_double = in.flag();
  for_architecture(static_cast<Archs*>(nullptr), which, [&](auto arch) {
    if (is_double)
      f(in, arch, double{});
    else
      f(in, arch, float{});
  });
  return 0;
}

}  // namespace ssmax::fuzz
