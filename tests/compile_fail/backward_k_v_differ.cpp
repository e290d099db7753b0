// Must NOT compile: k in bfloat16, v in half (k and v share one storage type), in a
// bfloat16 backward.
#include <ssmax/attention_backward.hpp>
#include <vector>

int main() {
  std::vector<Eigen::bfloat16> x(8), g(24);
  std::vector<Eigen::half> v(8);
  std::vector<float> lse(2);
  const auto in = ssmax::bshd_view(static_cast<const Eigen::bfloat16*>(x.data()), 1, 2, 1, 4);
  ssmax::attention_gradients<Eigen::bfloat16> grads{ssmax::bshd_view(g.data(), 1, 2, 1, 4),
                                                    ssmax::bshd_view(g.data() + 8, 1, 2, 1, 4),
                                                    ssmax::bshd_view(g.data() + 16, 1, 2, 1, 4)};
  ssmax::attention_backward(in, in,
                            ssmax::bshd_view(static_cast<const Eigen::half*>(v.data()), 1, 2, 1, 4),
                            in, in, lse.data(), grads);
}
