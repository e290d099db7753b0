// Must NOT compile: double q, k, v with a 16-bit out (16-bit calls compute in float; a
// double call is all-double).
#include <ssmax/attention.hpp>
#include <vector>

int main() {
  std::vector<double> x(8, 1.0);
  std::vector<Eigen::bfloat16> y(8);
  const auto q = ssmax::bshd_view(static_cast<const double*>(x.data()), 1, 2, 1, 4);
  ssmax::attention(q, q, q, ssmax::bshd_view(y.data(), 1, 2, 1, 4));
}
