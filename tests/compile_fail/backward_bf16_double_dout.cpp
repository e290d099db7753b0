// Must NOT compile: a bfloat16 dout in an all-double backward.
#include <ssmax/attention_backward.hpp>
#include <vector>

int main() {
  std::vector<double> x(8, 1.0), lse(2), g(24);
  std::vector<Eigen::bfloat16> dout(8);
  const auto in = ssmax::bshd_view(static_cast<const double*>(x.data()), 1, 2, 1, 4);
  ssmax::attention_gradients<double> grads{ssmax::bshd_view(g.data(), 1, 2, 1, 4),
                                           ssmax::bshd_view(g.data() + 8, 1, 2, 1, 4),
                                           ssmax::bshd_view(g.data() + 16, 1, 2, 1, 4)};
  ssmax::attention_backward(
      in, in, in, in,
      ssmax::bshd_view(static_cast<const Eigen::bfloat16*>(dout.data()), 1, 2, 1, 4), lse.data(),
      grads);
}
