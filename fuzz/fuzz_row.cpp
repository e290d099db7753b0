// libFuzzer target for the row API (softmax.hpp): every public row function, on every
// architecture this binary is compiled for, with fuzzed lengths, values (+-inf, NaN,
// +-1e30, +-max, subnormals, raw bit patterns), multipliers, length policies, positions
// and aliasing. For each call it checks:
//   - the call is rejected (argument_error) exactly when its preconditions are violated,
//     as predicted here independently, and then nothing was written;
//   - a NaN input makes every weight and the log-sum-exp NaN; otherwise no weight is NaN or
//     subnormal and each is within the row bound (tests/support/row_bound.hpp) of
//     reference::scaled_softmax;
//   - the returned state's log-sum-exp matches reference::log_sum_exp.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <ssmax/reference/softmax.hpp>
#include <ssmax/softmax.hpp>
#include <string>
#include <vector>

#include "fuzz_input.hpp"
#include "support/architectures.hpp"
#include "support/row_bound.hpp"

namespace ssmax::fuzz {
namespace {

/// The rows' multiplier m in double and whether the call's arguments are valid.
struct expectation {
  bool valid = true;
  double m = 1.0;
};

/// A length policy chosen by the input, with its validity and multiplier predicted here
/// from the formulas in length_policy.hpp (not from the policy's own validate()).
template <class T, class Policy>  // float or double; a length policy
expectation predict(const Policy& policy, bool params_ok, row_position where, index_t n) {
  expectation e;
  if (where.visible == -1) where.visible = n;
  if (where.position == -1) where.position = n - 1;
  e.valid = params_ok && where.visible >= 1 && where.position >= 0 && where.head >= 0;
  if (e.valid) {
    e.m = policy.multiplier(where);
    e.valid = std::abs(e.m) <= static_cast<double>(std::numeric_limits<T>::max());  // any sign
  }
  return e;
}

bool finite_non_negative(double v) { return std::isfinite(v) && v >= 0.0; }
bool finite(double v) { return std::isfinite(v); }

/// Runs one fuzzed call on architecture Arch and element type T, and checks it.
template <class Arch,  // xsimd architecture tag or scalar_arch
          class T>     // float or double
void fuzz_one(input& in) {
  if (!cpu_supports<Arch>()) return;
  constexpr index_t W = ::ssmax::detail::simd<Arch, T>::width;
  const index_t n = in.flag() ? in.between(1, 64) : in.between(1, 5000);
  const int operation = in.byte() % 6;
  const int aliasing = in.byte() % 8;  // 0: in place, 1: y overlaps x partly, else apart

  std::vector<T> x(static_cast<size_t>(n));
  for (auto& v : x) v = in.value<T>();
  const std::vector<T> input_row = x;  // x may be overwritten in place

  // Storage for x and y together, so that y can be x, overlap it, or stand apart.
  std::vector<T> memory(static_cast<size_t>(2 * n + 1), T(-42));
  T* const xp = memory.data();
  std::copy(x.begin(), x.end(), xp);
  T* yp = xp + n + 1;
  bool overlap = false;
  if (aliasing == 0) yp = xp;
  if (aliasing == 1 && n >= 2) {
    yp = xp + in.between(1, n - 1);
    overlap = true;
  }
  const std::vector<T> before(memory);

  expectation e;
  row_state<T> state;
  bool writes = true;
  const char* name = "";
  try {
    switch (operation) {
      case 0: {
        name = "scaled_softmax";
        const T m = static_cast<T>(in.parameter());
        e = {std::isfinite(m), static_cast<double>(m)};
        e.valid = e.valid && !overlap;
        state = scaled_softmax<Arch>(static_cast<const T*>(xp), yp, n, m);
        break;
      }
      case 1:
        name = "softmax";
        e = {!overlap, 1.0};
        state = softmax<Arch>(static_cast<const T*>(xp), yp, n);
        break;
      case 2: {
        name = "ssmax";
        const double s = in.parameter(), b = in.parameter();
        const double largest_T = static_cast<double>(std::numeric_limits<T>::max());
        e = predict<T>(ssmax_policy(s, b), finite(s) && finite(b) && std::abs(b) <= largest_T,
                       {-1, -1, 0}, n);
        e.valid = e.valid && !overlap;
        state = scalable_softmax<Arch>(static_cast<const T*>(xp), yp, n, s, b);
        break;
      }
      case 3: {
        name = "policy_softmax";
        row_position where{-1, -1, 0};
        const int v = in.byte() % 4, p = in.byte() % 4;
        if (v == 1) where.visible = in.between(-3, 2 * n);
        if (v == 2) where.visible = std::numeric_limits<index_t>::max();
        if (p == 1) where.position = in.between(-3, 100000);
        if (p == 2) where.position = std::numeric_limits<index_t>::max();
        if (in.byte() % 4 == 0) where.head = in.between(-2, 3);
        auto call = [&](const auto& policy, bool params_ok) {
          e = predict<T>(policy, params_ok, where, n);
          e.valid = e.valid && !overlap;
          state = policy_softmax<Arch>(policy, static_cast<const T*>(xp), yp, n, where);
        };
        switch (in.byte() % 5) {
          case 0:
            call(softmax_policy{}, true);
            break;
          case 1: {
            const double s = in.parameter(), b = in.parameter();
            const index_t fixed = in.flag() ? 0 : in.between(-1, 1 << 20);
            call(ssmax_policy(s, b, fixed), finite(s) && finite(b) && fixed >= 0);
            break;
          }
          case 2: {
            qwen_logn_policy policy;
            policy.train_length = in.between(-1, 1 << 16);
            call(policy, policy.train_length >= 2);
            break;
          }
          case 3: {
            llama4_temperature_policy policy;
            policy.floor_scale = in.between(-1, 1 << 16);
            policy.attn_scale = in.parameter();
            call(policy, policy.floor_scale >= 1 && finite_non_negative(policy.attn_scale));
            break;
          }
          default: {
            mistral_policy policy;
            policy.original_length = in.between(-1, 1 << 16);
            policy.beta = in.parameter();
            call(policy, policy.original_length >= 1 && finite_non_negative(policy.beta));
            break;
          }
        }
        break;
      }
      default: {
        const T m = static_cast<T>(in.parameter());
        e = {std::isfinite(m), static_cast<double>(m)};
        writes = false;
        if (operation == 4) {
          name = "log_sum_exp";
          const T lse = log_sum_exp<Arch>(static_cast<const T*>(xp), n, m);
          state = {lse, T(1)};  // log_sum_exp() of {lse, 1} is lse
        } else {
          name = "row_state_of";
          state = row_state_of<Arch>(static_cast<const T*>(xp), n, m);
        }
        break;
      }
    }
  } catch (const argument_error& error) {
    require(!e.valid, "valid call rejected:", error.what());
    require(std::memcmp(memory.data(), before.data(), memory.size() * sizeof(T)) == 0,
            "rejected call wrote memory:", error.what());
    return;
  }
  require(e.valid, "invalid call accepted by", name);

  // The multiplier the kernel ran with is m rounded to T; the reference gets exactly that.
  const double m = static_cast<double>(static_cast<T>(e.m));
  const bool has_nan =
      std::any_of(input_row.begin(), input_row.end(), [](T v) { return std::isnan(v); });
  const double lse_ref = reference::log_sum_exp(input_row.data(), n, m);
  const double lse = static_cast<double>(state.log_sum_exp());
  if (has_nan) {
    require(std::isnan(lse), "NaN row gave a log-sum-exp that is not NaN:", name);
  } else if (std::isinf(lse_ref)) {
    require(lse == lse_ref, "log-sum-exp should be infinite:", name);
  } else if (std::abs(lse_ref) > static_cast<double>(std::numeric_limits<T>::max())) {
    // m * max overflows T: the state's max is +-inf (documented), or the nearest finite.
    require(std::isinf(lse) || std::abs(lse) >= static_cast<double>(std::numeric_limits<T>::max()),
            "log-sum-exp beyond T's range is neither +-inf nor +-max:", name);
  } else {
    const auto r = reference::scaled_softmax(input_row.data(), n, m);
    const double eps = std::numeric_limits<T>::epsilon();
    const double tolerance =
        eps * (std::abs(lse_ref) + testing::sum_ulp(W) + testing::kExpUlp + 4.0 +
               2.0 * testing::mean_abs_argument(input_row.data(), n, m, r));
    if (!(std::abs(lse - lse_ref) <= tolerance)) {
      std::fprintf(stderr, "n = %td, m = %g: lse %.17g, reference %.17g, tolerance %g\n", n, m, lse,
                   lse_ref, tolerance);
      finding("log-sum-exp outside its bound:", name);
    }
  }
  if (!writes) {
    require(std::memcmp(memory.data(), before.data(), memory.size() * sizeof(T)) == 0,
            "a function without output wrote memory:", name);
    return;
  }

  // Nothing outside y[0, n) changed.
  for (index_t i = 0; i < static_cast<index_t>(memory.size()); ++i)
    if (memory.data() + i < yp || memory.data() + i >= yp + n)
      require(std::memcmp(&memory[static_cast<size_t>(i)], &before[static_cast<size_t>(i)],
                          sizeof(T)) == 0,
              "wrote outside y:", name);
  if (has_nan) {
    for (index_t i = 0; i < n; ++i)
      require(std::isnan(yp[i]), "NaN row gave a non-NaN weight:", name);
    return;
  }
  const auto r = reference::scaled_softmax(input_row.data(), n, m);
  const testing::row_bound<T> bound(input_row.data(), n, m, r, W);
  for (index_t i = 0; i < n; ++i) {
    require(!std::isnan(yp[i]), "NaN weight from a row without NaN:", name);
    require(std::fpclassify(yp[i]) != FP_SUBNORMAL, "subnormal weight:", name);
    const double err = std::abs(static_cast<double>(yp[i]) - r[static_cast<size_t>(i)]);
    if (!(err <= bound(i))) {
      std::fprintf(stderr, "%s<%s>: n = %td, m = %g, y[%td] = %.9g, reference %.17g, bound %g\n",
                   name, Arch::name(), n, m, i, static_cast<double>(yp[i]),
                   r[static_cast<size_t>(i)], bound(i));
      finding("weight outside the row bound:", name);
    }
  }
}

}  // namespace
}  // namespace ssmax::fuzz

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  return ssmax::fuzz::run_one_input<ssmax::testing::tested_architectures>(
      data, size, [](ssmax::fuzz::input& in, auto arch, auto zero) {
        ssmax::fuzz::fuzz_one<decltype(arch), decltype(zero)>(in);
      });
}
