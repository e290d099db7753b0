// Must NOT compile: a length policy without validate() (tests/CMakeLists.txt expects the
// static_assert that names the missing member).
#include <ssmax/attention.hpp>
#include <vector>

struct no_validate_policy {
  double multiplier(const ssmax::row_position&) const { return 1.0; }
  ssmax::index_t heads() const { return 0; }
};

int main() {
  std::vector<float> x(8, 1.0f), y(8);
  ssmax::attention_options<no_validate_policy> options;
  const auto q = ssmax::bshd_view(static_cast<const float*>(x.data()), 1, 2, 1, 4);
  ssmax::attention(q, q, q, ssmax::bshd_view(y.data(), 1, 2, 1, 4), options);
}
