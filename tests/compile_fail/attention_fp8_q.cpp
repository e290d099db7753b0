// Must NOT compile: q in fp8 (the 8-bit formats are for k and v only).
#include <ssmax/attention.hpp>
#include <vector>

int main() {
  std::vector<ssmax::fp8_e4m3> q(8);
  std::vector<float> k(8), v(8), out(8);
  ssmax::attention(ssmax::bshd_view(static_cast<const ssmax::fp8_e4m3*>(q.data()), 1, 2, 1, 4),
                   ssmax::bshd_view(static_cast<const float*>(k.data()), 1, 2, 1, 4),
                   ssmax::bshd_view(static_cast<const float*>(v.data()), 1, 2, 1, 4),
                   ssmax::bshd_view(out.data(), 1, 2, 1, 4));
}
