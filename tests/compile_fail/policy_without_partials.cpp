// Must NOT compile: a length policy that says nothing about its parameters, used in a
// backward pass (it would silently get zero gradients).
#include <ssmax/attention_backward.hpp>
#include <vector>

struct silent_policy {
  double s = 0.5;
  double multiplier(const ssmax::row_position& row) const { return s * (row.visible + 1.0); }
  ssmax::index_t heads() const { return 0; }
  void validate(const char*) const {}
};

int main() {
  std::vector<float> x(8, 1.0f), g(24), lse(2);
  ssmax::attention_options<silent_policy> options;
  const auto in = ssmax::bshd_view(static_cast<const float*>(x.data()), 1, 2, 1, 4);
  ssmax::attention_gradients<float> grads{ssmax::bshd_view(g.data(), 1, 2, 1, 4),
                                          ssmax::bshd_view(g.data() + 8, 1, 2, 1, 4),
                                          ssmax::bshd_view(g.data() + 16, 1, 2, 1, 4)};
  ssmax::attention_backward(in, in, in, in, in, lse.data(), grads, options);
}
