// Must NOT compile: the ring computes in float or double; bfloat16 views are refused with one
// static_assert.
#include <ssmax/distributed/ring_attention.hpp>
#include <vector>

int main() {
  std::vector<Eigen::bfloat16> x(8), out(8);
  std::vector<float> lse(2);
  const auto view = ssmax::bshd_view(static_cast<const Eigen::bfloat16*>(x.data()), 1, 2, 1, 4);
  ssmax::distributed::ring_attention(view, view, view, ssmax::bshd_view(out.data(), 1, 2, 1, 4),
                                     ssmax::attention_options<>{}, lse.data(),
                                     ssmax::distributed::ring_context{});
}
