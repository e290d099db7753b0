// Must NOT compile: a read-only out view.
#include <ssmax/attention.hpp>
#include <vector>

int main() {
  std::vector<float> x(8, 1.0f), y(8);
  const auto q = ssmax::bshd_view(static_cast<const float*>(x.data()), 1, 2, 1, 4);
  const auto out = ssmax::bshd_view(static_cast<const float*>(y.data()), 1, 2, 1, 4);
  ssmax::attention(q, q, q, out);
}
