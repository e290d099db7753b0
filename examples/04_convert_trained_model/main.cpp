// Example 4: converting a model trained with Softmax to SSMax after training.
//
// Choose s = 1 / log(n_train) (ssmax::ssmax_scale_matching_softmax): a row that sees
// n keys gets the multiplier m = s log n = log n / log n_train, so
//   - at n = n_train, m = 1: SSMax is the trained Softmax, nothing changes;
//   - beyond n_train, m > 1: attention is sharper, which keeps a "needle" key as
//     prominent in a long context as it was at the training length;
//   - below n_train (short prompts, early causal rows), m < 1: attention is softer than
//     what the model was trained with. qwen_logn_policy{n_train}, m = max(1, ...), keeps
//     Softmax there and is SSMax beyond n_train.
// The program shows the three, checks each against closed forms, and exits non-zero if
// anything is off.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <random>
#include <ssmax/softmax.hpp>
#include <vector>

namespace {

bool ok = true;

void check(bool condition, const char* what) {
  if (!condition) {
    std::printf("  WRONG: %s\n", what);
    ok = false;
  }
}

/// Weight of a needle scored e^gap times a haystack key, among n keys:
/// e^(m gap) / (e^(m gap) + n - 1) for the multiplier m.
double needle_weight(double n, double gap, double m) {
  const double needle = std::exp(m * gap);
  return needle / (needle + n - 1.0);
}

}  // namespace

int main() {
  const ssmax::index_t n_train = 1024;  // the context length the model was trained at
  const double s = ssmax::ssmax_scale_matching_softmax(n_train);  // 1 / log(n_train)
  std::printf("trained at n_train = %td: s = 1 / log(n_train) = %.6f\n\n", n_train, s);

  // 1. At the training length SSMax is the Softmax the model was trained with.
  {
    std::mt19937 rng(42);
    std::normal_distribution<float> logit(0.0f, 2.0f);
    std::vector<float> x(static_cast<std::size_t>(n_train)), soft(x.size()), scal(x.size());
    for (float& v : x) v = logit(rng);
    ssmax::softmax(x.data(), soft.data(), n_train);
    ssmax::scalable_softmax(x.data(), scal.data(), n_train, s);
    double worst = 0.0;
    for (std::size_t i = 0; i < x.size(); ++i)
      worst = std::max(worst, std::abs(double(scal[i]) - soft[i]) / soft[i]);
    std::printf("1. n = n_train, random logits: max relative |SSMax - Softmax| = %.2e\n", worst);
    // m = s log n_train rounds to 1 (or its neighbour) in float: a few ulp at most.
    check(worst <= 1e-5, "SSMax must equal Softmax at the training length");
  }

  // 2. Beyond the training length: a needle that Softmax weighted 1/2 at n_train, among
  //    haystack keys scoring 0 (gap = log(n_train - 1)).
  {
    const double gap = std::log(static_cast<double>(n_train - 1));
    std::printf("\n2. needle %.3f above a haystack of zeros (weight 1/2 at n_train)\n", gap);
    std::printf("%9s %8s %16s %16s\n", "n", "m", "Softmax needle", "SSMax needle");
    for (ssmax::index_t n : {256, 1024, 4096, 16384, 65536, 262144}) {
      std::vector<float> x(static_cast<std::size_t>(n), 0.0f), y(x.size());
      x[0] = static_cast<float>(gap);
      ssmax::softmax(x.data(), y.data(), n);
      const double soft = y[0];
      ssmax::scalable_softmax(x.data(), y.data(), n, s);
      const double scal = y[0];
      const double m = s * std::log(static_cast<double>(n));
      std::printf("%9td %8.3f %16.6f %16.6f\n", n, m, soft, scal);

      const double nd = static_cast<double>(n);
      check(std::abs(soft - needle_weight(nd, gap, 1.0)) <= 1e-4 * soft, "Softmax closed form");
      check(std::abs(scal - needle_weight(nd, gap, m)) <= 1e-4 * scal, "SSMax closed form");
      if (n > n_train) check(scal > 2.0 * soft, "SSMax must keep the needle beyond n_train");
      // e^(m gap) = (n_train - 1)^(log n / log n_train), about n: the weight stays near 1/2.
      check(scal > 0.45, "SSMax's needle weight should stay near 1/2 at every length");
    }
  }

  // 3. Causal rows: row p sees n = p + 1 keys. SSMax is softer than the trained Softmax
  //    for every row before n_train; qwen_logn_policy keeps m = 1 there instead.
  {
    const ssmax::ssmax_policy ssmax_rows(s);
    const ssmax::qwen_logn_policy clamped{n_train};
    std::printf("\n3. causal rows: multiplier of row p (n = p + 1)\n");
    std::printf("%9s %12s %16s\n", "p + 1", "SSMax m", "max(1, SSMax m)");
    for (ssmax::index_t n : {16, 256, 1024, 4096, 65536}) {
      const ssmax::row_position row{n, n - 1, 0};
      const double m = ssmax_rows.multiplier(row), m_clamped = clamped.multiplier(row);
      std::printf("%9td %12.4f %16.4f\n", n, m, m_clamped);
      check(std::abs(m_clamped - std::max(1.0, m)) <= 1e-12, "qwen-logn is max(1, s log n)");
      check((n < n_train) == (m < 1.0 - 1e-12), "SSMax is softer exactly before n_train");
    }
  }

  std::printf("\n%s\n", ok ? "OK" : "FAILED");
  return ok ? 0 : 1;
}
