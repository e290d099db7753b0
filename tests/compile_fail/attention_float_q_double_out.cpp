// Must NOT compile: float q, k, v with a double out.
#include <ssmax/attention.hpp>
#include <vector>

int main() {
  std::vector<float> x(8, 1.0f);
  std::vector<double> y(8);
  const auto q = ssmax::bshd_view(x.data(), 1, 2, 1, 4);
  ssmax::attention(q, q, q, ssmax::bshd_view(y.data(), 1, 2, 1, 4));
}
