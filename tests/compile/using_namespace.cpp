// Compiles and runs: the public names do not collide with the C library's under
// `using namespace ssmax;` (POSIX index() from <strings.h>, and no function named like the
// namespace), with float attention, softmax, scalable_softmax and index_t.
#include <strings.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <ssmax/ssmax.hpp>
#include <vector>

using namespace ssmax;

int main() {
  const index_t n = 4;
  float x[n] = {0.0f, 1.0f, 2.0f, 3.0f}, y[n], z[n];
  softmax(x, y, n);
  scalable_softmax(x, z, n, 0.43);
  std::vector<float> q(static_cast<size_t>(2 * n), 0.5f), out(q.size());
  const auto view = bshd_view(static_cast<const float*>(q.data()), 1, 2, 1, n);
  attention(view, view, view, bshd_view(out.data(), 1, 2, 1, n));
  const bool ok = std::abs(y[0] + y[1] + y[2] + y[3] - 1.0f) < 1e-5f && out[0] == 0.5f &&
                  std::strlen("ssmax") == 5 && index("ssmax", 'm') != nullptr;
  std::printf("%s\n", ok ? "OK" : "WRONG");
  return ok ? 0 : 1;
}
