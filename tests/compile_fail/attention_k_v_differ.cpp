// Must NOT compile: k in bfloat16, v in half (k and v share one storage type).
#include <ssmax/attention.hpp>
#include <vector>

int main() {
  std::vector<Eigen::bfloat16> k(8);
  std::vector<Eigen::half> v(8);
  std::vector<float> q(8), out(8);
  ssmax::attention(ssmax::bshd_view(static_cast<const float*>(q.data()), 1, 2, 1, 4),
                   ssmax::bshd_view(static_cast<const Eigen::bfloat16*>(k.data()), 1, 2, 1, 4),
                   ssmax::bshd_view(static_cast<const Eigen::half*>(v.data()), 1, 2, 1, 4),
                   ssmax::bshd_view(out.data(), 1, 2, 1, 4));
}
