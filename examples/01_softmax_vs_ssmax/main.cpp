// Example 1: Softmax vs SSMax on one vector (the paper's Figure 1).
//
// The vector has n entries, all -2 except the last, which is +3. Softmax gives the last
// entry 1 / (1 + (n - 1) e^-5): its focus fades as n grows. SSMax multiplies the logits by
// m = s log n first, so the gap grows with n and the top weight
// 1 / (1 + (n - 1) e^(-5 m)) stays near 1. The program prints both and checks them
// against these closed forms; it exits non-zero if anything is off.
#include <cmath>
#include <cstdio>
#include <ssmax/softmax.hpp>
#include <vector>

namespace {

/// The closed-form top weight of softmax(m x) for x = (-2, ..., -2, 3) of length n.
double top_weight(double n, double m) { return 1.0 / (1.0 + (n - 1.0) * std::exp(-5.0 * m)); }

}  // namespace

int main() {
  const double s = 0.43;  // the paper's Figure 1 scale
  bool ok = true;
  std::printf("x = (-2, ..., -2, +3), SSMax scale s = %.2f\n\n", s);
  std::printf("%9s %8s %14s %14s\n", "n", "m=s*ln n", "softmax top", "SSMax top");
  for (ssmax::index_t n : {10, 100, 1000, 10000, 100000, 1000000}) {
    std::vector<float> x(static_cast<std::size_t>(n), -2.0f), y(x.size());
    x.back() = 3.0f;

    ssmax::softmax(x.data(), y.data(), n);
    const double softmax_top = y.back();
    ssmax::scalable_softmax(x.data(), y.data(), n, s);  // softmax((s log n) x)
    const double ssmax_top = y.back();

    const double m = s * std::log(static_cast<double>(n));
    std::printf("%9td %8.3f %14.6f %14.6f\n", n, m, softmax_top, ssmax_top);

    // Float results match the closed forms to a relative 1e-4 (the kernels' bound is a
    // few dozen float ulp here).
    const double softmax_exact = top_weight(static_cast<double>(n), 1.0);
    const double ssmax_exact = top_weight(static_cast<double>(n), m);
    if (std::abs(softmax_top - softmax_exact) > 1e-4 * softmax_exact ||
        std::abs(ssmax_top - ssmax_exact) > 1e-4 * ssmax_exact) {
      std::printf("  WRONG: expected softmax %.6f, SSMax %.6f\n", softmax_exact, ssmax_exact);
      ok = false;
    }
    // Past n = e^(1/s) (about 10) SSMax's multiplier exceeds 1 and it must focus harder.
    if (m > 1.0 && !(ssmax_top > softmax_top)) {
      std::printf("  WRONG: SSMax should keep more weight on the +3 entry than Softmax\n");
      ok = false;
    }
  }
  std::printf("\nSoftmax's top weight fades like 1/n; SSMax's stays near 1.\n");
  std::printf("%s\n", ok ? "OK" : "FAILED");
  return ok ? 0 : 1;
}
