// Must NOT compile: a bfloat16 q with double k and v (double calls are all-double).
#include <ssmax/attention.hpp>
#include <vector>

int main() {
  std::vector<Eigen::bfloat16> q(8), out(8);
  std::vector<double> kv(8);
  const auto k = ssmax::bshd_view(static_cast<const double*>(kv.data()), 1, 2, 1, 4);
  ssmax::attention(ssmax::bshd_view(static_cast<const Eigen::bfloat16*>(q.data()), 1, 2, 1, 4), k,
                   k, ssmax::bshd_view(out.data(), 1, 2, 1, 4));
}
