// Must NOT compile: float inputs with double gradients.
#include <ssmax/attention_backward.hpp>
#include <vector>

int main() {
  std::vector<float> x(8, 1.0f), lse(2);
  std::vector<double> g(24);
  const auto in = ssmax::bshd_view(static_cast<const float*>(x.data()), 1, 2, 1, 4);
  ssmax::attention_gradients<double> grads{ssmax::bshd_view(g.data(), 1, 2, 1, 4),
                                           ssmax::bshd_view(g.data() + 8, 1, 2, 1, 4),
                                           ssmax::bshd_view(g.data() + 16, 1, 2, 1, 4)};
  ssmax::attention_backward(in, in, in, in, in, lse.data(), grads);
}
