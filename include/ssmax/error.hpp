#pragma once
// ssmax's one error type, and the checks every public function runs before touching
// memory. Kernels never validate: public functions do, then call them.

#include <cstddef>
#include <cstdio>
#include <stdexcept>
#include <string>

namespace ssmax {

/// Signed element count and position type. Signed so that a negative length passed by
/// mistake is detected and reported instead of wrapping to a huge size.
using index_t = std::ptrdiff_t;

/// Thrown for any precondition violation of the public API. what() reads
/// "ssmax::FUNCTION: argument 'NAME' PROBLEM", and argument() returns NAME.
/// Nothing has been written to any output when it is thrown.
class argument_error : public std::invalid_argument {
 public:
  argument_error(const std::string& function, const std::string& argument,
                 const std::string& problem)
      : std::invalid_argument("ssmax::" + function + ": argument '" + argument + "' " + problem),
        argument_(argument) {}

  /// Name of the offending argument, as spelled in the function's signature.
  const std::string& argument() const noexcept { return argument_; }

 private:
  std::string argument_;
};

namespace detail {

/// Throws argument_error(function, argument, problem).
[[noreturn]] inline void fail(const char* function, const char* argument,
                              const std::string& problem) {
  throw argument_error(function, argument, problem);
}

/// Throws argument_error(function, argument, problem) unless ok holds.
inline void require(bool ok, const char* function, const char* argument, const char* problem) {
  if (!ok) fail(function, argument, problem);
}

/// A real number for messages: at most 9 significant digits, exponent form when large or
/// small (1e+300, not 301 digits).
inline std::string real_to_string(double x) {
  char text[32];
  std::snprintf(text, sizeof text, "%.9g", x);
  return text;
}

/// As require, with a problem text built only on failure.
template <class MakeProblem>
inline void require_lazy(bool ok, const char* function, const char* argument,
                         MakeProblem&& make_problem) {
  if (!ok) fail(function, argument, make_problem());
}

/// True when [a, a + a_count) and [b, b + b_count) share a byte.
template <class A, class B>
inline bool overlaps(const A* a, index_t a_count, const B* b, index_t b_count) {
  const auto* a0 = reinterpret_cast<const char*>(a);
  const auto* b0 = reinterpret_cast<const char*>(b);
  const auto* a1 = a0 + a_count * static_cast<index_t>(sizeof(A));
  const auto* b1 = b0 + b_count * static_cast<index_t>(sizeof(B));
  return a_count > 0 && b_count > 0 && a0 < b1 && b0 < a1;
}

}  // namespace detail
}  // namespace ssmax
