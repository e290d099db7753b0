#pragma once
// Compensated summation, shared by the kernels (one add per block of elements) and the
// double reference (one add per element).

#include <cmath>

namespace ssmax::detail {

/// Neumaier's compensated sum in double: about 2 ulp of error whatever the count of terms.
/// The kernels add one partial sum per block into it; the reference uses it per element.
class compensated_sum {
 public:
  void add(double v) {
    const double t = sum_ + v;
    carry_ += std::abs(sum_) >= std::abs(v) ? (sum_ - t) + v : (v - t) + sum_;
    sum_ = t;
  }
  double value() const { return sum_ + carry_; }

 private:
  double sum_ = 0.0;
  double carry_ = 0.0;
};

}  // namespace ssmax::detail
