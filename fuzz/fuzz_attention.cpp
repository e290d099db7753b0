// libFuzzer target for the attention operator (attention.hpp): fuzzed shapes (d = 1, GQA and
// MQA groups, far more keys than queries), masks (causal, sliding window, query offset, key
// padding down to fully masked rows, packed variable-length sequences with empty ones, a
// boolean mask with broadcast strides, a fixed n), length policies (Softmax, SSMax with
// per-head scales, Qwen's log-n), scales, thread counts, both kernels, optional log-sum-exp and
// weights, and finite values from subnormal to large. Each valid call is compared with
// reference::attention under the bound of tests/support/attention_check.hpp (the same
// comparison the unit tests make; a failure there is a finding), and must give finite
// outputs and a log-sum-exp that is finite or -inf (no visible key). Now and then one
// argument is broken on purpose: the call must then throw argument_error naming it and
// leave every output untouched.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <memory>
#include <optional>
#include <ssmax/attention.hpp>
#include <string>
#include <vector>

#include "fuzz_input.hpp"
#include "support/attention_check.hpp"

namespace ssmax::fuzz {
namespace {

/// A finite value (the operator's inputs must be finite): zeros, subnormals and the smallest
/// normal (when `tiny`), ordinary values in [-1, 1), and large ones with ties. (Subnormal v
/// once broke the bound, which had no absolute term for products a_j v_j that underflow; it
/// now has (n + d) denorm_min.)
template <class T>  // float or double
T finite_value(input& in, bool tiny) {
  const std::uint8_t kind = in.byte();
  const T sign = (kind & 0x80) ? T(-1) : T(1);
  switch (kind & 0x07) {
    case 0:
      return T(0);
    case 1:
      if (!tiny) return sign;
      return sign * std::numeric_limits<T>::denorm_min() * static_cast<T>(1 + in.byte());
    case 2:
      return tiny ? sign * std::numeric_limits<T>::min() : T(0);
    case 3:
      return sign * static_cast<T>(in.byte()) * T(4);  // large logits, ties
    default:
      return static_cast<T>(static_cast<std::int8_t>(in.byte())) / T(128);
  }
}

/// Everything a fuzzed call needs that must outlive the options (the mask borrows it).
struct mask_storage {
  std::vector<index_t> key_lengths, cu_q, cu_k;
  std::unique_ptr<bool[]> allowed;
};

/// The one argument a broken call gets wrong, and the name the error must give.
struct breakage {
  int kind = 0;  // 0: none
  const char* argument = "";
};

template <class Arch,    // xsimd architecture tag or scalar_arch
          class T,       // float or double
          class Policy>  // a length policy
void run_and_check(input& in, testing::attention_data<T>& data, attention_options<Policy> options,
                   const breakage& broken) {
  const index_t rows = data.B * data.H * data.n_q;
  const auto path_choice = in.byte() % 3;
  options.path = path_choice == 0   ? attention_path::fused
                 : path_choice == 1 ? attention_path::materialised
                                    : attention_path::automatic;
  if (broken.kind == 9) options.path = attention_path::fused;  // with weights: rejected
  const bool want_weights = options.path != attention_path::fused && in.flag();
  const bool want_lse = in.byte() % 4 != 0;

  testing::attention_run<T> run;
  const T sentinel = T(-7);
  run.out.assign(data.q.size(), sentinel);
  if (want_lse) run.lse.assign(static_cast<size_t>(rows), sentinel);
  if (want_weights) run.weights.assign(static_cast<size_t>(rows * data.n_k), sentinel);
  if (broken.kind == 9) run.weights.assign(static_cast<size_t>(rows * data.n_k), sentinel);
  attention_extras<T> extras;
  extras.lse = want_lse ? run.lse.data() : nullptr;
  extras.weights = run.weights.empty() ? nullptr : run.weights.data();
  tensor_view<T> out = data.outv(run.out);
  if (broken.kind == 10) out.dim += 1;  // shape differs from q's

  try {
    attention<Arch>(data.qv(), data.kv(), data.vv(), out, options, extras);
  } catch (const argument_error& error) {
    require(broken.kind != 0, "valid attention call rejected:", error.what());
    require(error.argument() == broken.argument, "wrong argument named:", error.what());
    auto untouched = [&](const std::vector<T>& v) {
      return std::all_of(v.begin(), v.end(), [&](T x) { return x == sentinel; });
    };
    require(untouched(run.out) && untouched(run.lse) && untouched(run.weights),
            "rejected attention call wrote an output:", error.what());
    return;
  }
  require(broken.kind == 0, "invalid attention call accepted; expected an error naming",
          broken.argument);

  for (T v : run.out) require(std::isfinite(v), "non-finite attention output");
  for (T v : run.lse)
    require(std::isfinite(v) || v == -std::numeric_limits<T>::infinity(),
            "log-sum-exp neither finite nor -inf");
  for (T v : run.weights) require(std::isfinite(v) && v >= T(0), "weight not finite and >= 0");

  testing::expect_matches_reference(data, options, run, "fuzz");
  require(!::testing::UnitTest::GetInstance()->ad_hoc_test_result().Failed(),
          "attention result outside the reference bound (see the failure above)");
}

/// Draws a policy and runs the call with it.
template <class Arch, class T>  // architecture; float or double
void with_policy(input& in, testing::attention_data<T>& data, attention_options<> base,
                 const breakage& broken) {
  auto with = [&](auto policy) {
    attention_options<decltype(policy)> o;
    o.policy = policy;
    o.mask = base.mask;
    o.scale = base.scale;
    o.threads = base.threads;
    run_and_check<Arch, T>(in, data, o, broken);
  };
  std::vector<double> scales(static_cast<size_t>(data.H));  // per-head s, outlives the call
  for (auto& s : scales) s = static_cast<double>(in.byte()) / 128.0;
  // Softmax, SSMax (shared or per-head s, with b) and one position-dependent policy: the
  // operator treats every policy alike (m per row, in double), so the other position
  // policies, fuzzed at the row level by fuzz_row, would only add compile time here.
  switch (broken.kind == 8 ? 1 : in.byte() % 4) {
    case 0:
      with(softmax_policy{});
      break;
    case 1: {
      // Any finite s and b are valid (trained ones take either sign); broken: s = NaN.
      const double s = broken.kind == 8
                           ? std::numeric_limits<double>::quiet_NaN()
                           : static_cast<double>(static_cast<std::int8_t>(in.byte())) / 64.0;
      with(ssmax_policy(s, static_cast<double>(static_cast<std::int8_t>(in.byte())) / 64.0));
      break;
    }
    case 2:
      with(ssmax_policy(per_head(scales), 0.0));
      break;
    default:
      with(qwen_logn_policy{in.between(2, 64)});
      break;
  }
}

template <class Arch, class T>  // architecture; float or double
void fuzz_one(input& in) {
  if (!cpu_supports<Arch>()) return;
  const bool packed = in.byte() % 4 == 0;
  const index_t sequences = in.between(1, 3);
  const index_t H_kv = in.between(1, 3), H = H_kv * in.between(1, 3);
  const index_t d = in.flag() ? 1 : in.between(1, 20);

  attention_options<> o;
  mask_storage storage;
  attention_mask& mask = o.mask;
  index_t B = sequences, n_q = in.between(1, 8), n_k = in.between(1, 24);
  if (in.byte() % 4 == 0) n_k = in.between(1, 400);  // far more keys than queries
  if (packed) {
    storage.cu_q.push_back(0);
    storage.cu_k.push_back(0);
    for (index_t s = 0; s < sequences; ++s) {  // empty sequences included
      storage.cu_q.push_back(storage.cu_q.back() + in.between(0, 5));
      storage.cu_k.push_back(storage.cu_k.back() + in.between(0, 30));
    }
    B = 1;
    n_q = std::max<index_t>(1, storage.cu_q.back());
    n_k = std::max<index_t>(1, storage.cu_k.back());
    storage.cu_q.back() = n_q;  // the last sequence takes the padding row if all were empty
    storage.cu_k.back() = n_k;
    mask = attention_mask::varlen(storage.cu_q.data(), storage.cu_k.data(), sequences);
  }
  mask.causal = in.flag();
  if (mask.causal && in.flag()) mask.window = in.between(1, n_k + 2);
  if (in.flag()) mask.query_offset = in.between(0, n_k);
  if (in.byte() % 3 == 0) {  // key padding, down to 0 keys: fully masked rows
    for (index_t s = 0; s < sequences; ++s) {
      const index_t len =
          packed ? storage.cu_k[static_cast<size_t>(s + 1)] - storage.cu_k[static_cast<size_t>(s)]
                 : n_k;
      storage.key_lengths.push_back(in.between(0, len));
    }
    mask.key_lengths = storage.key_lengths.data();
  }
  if (in.byte() % 3 == 0) {  // a boolean mask; batch and head strides may broadcast
    const index_t count = B * H * n_q * n_k;
    storage.allowed.reset(new bool[static_cast<size_t>(count)]);
    const int density = in.byte() % 4;  // 0: all hidden ... 3: mostly visible
    for (index_t i = 0; i < count; ++i)
      storage.allowed[static_cast<size_t>(i)] = in.byte() % 4 < density;
    mask.allowed = storage.allowed.get();
    mask.allowed_stride_q = n_k;
    mask.allowed_stride_h = in.flag() ? 0 : n_q * n_k;
    mask.allowed_stride_b = in.flag() ? 0 : H * n_q * n_k;
  }
  if (in.byte() % 4 == 0) mask.n_override = in.between(1, 1 << 16);
  const int scale_choice = in.byte() % 5;
  if (scale_choice == 1) o.scale = 0.0;
  if (scale_choice == 2) o.scale = 10.0;
  if (scale_choice == 3) o.scale = 1e-3;
  o.threads = static_cast<int>(in.between(0, 3));

  testing::attention_data<T> data(B, n_q, n_k, H, H_kv, d);
  for (auto* tensor : {&data.q, &data.k, &data.v})
    for (auto& x : *tensor) x = finite_value<T>(in, true);

  // Now and then break one argument on purpose.
  breakage broken;
  if (in.byte() % 8 == 0) {
    broken.kind = 1 + in.byte() % 10;
    switch (broken.kind) {
      case 1:
        mask.window = -1, broken.argument = "options.mask.window";
        break;
      case 2:
        mask.causal = false, mask.window = 2, broken.argument = "options.mask.window";
        break;
      case 3:
        mask.n_override = -1, broken.argument = "options.mask.n_override";
        break;
      case 4:
        o.threads = -1, broken.argument = "options.threads";
        break;
      case 5:
        o.scale = -1.0, broken.argument = "options.scale";
        break;
      case 6:
        mask.query_offset = -2, broken.argument = "options.mask.query_offset";
        break;
      case 7:
        if (packed || mask.key_lengths == nullptr) {
          storage.key_lengths.assign(static_cast<size_t>(sequences), 0);
          mask.key_lengths = storage.key_lengths.data();
        }
        storage.key_lengths[0] = (packed ? storage.cu_k[1] : n_k) + 1;
        broken.argument = "options.mask.key_lengths";
        break;
      case 8:
        broken.argument = "policy.s";
        break;  // with_policy gives s = NaN
      case 9:
        o.path = attention_path::fused, broken.argument = "extras.weights";
        break;
      default:
        broken.argument = "out";
        break;  // run_and_check gives out a wrong shape
    }
  }
  with_policy<Arch, T>(in, data, o, broken);
}

}  // namespace
}  // namespace ssmax::fuzz

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  return ssmax::fuzz::run_one_input<ssmax::testing::attention_architectures>(
      data, size, [](ssmax::fuzz::input& in, auto arch, auto zero) {
        ssmax::fuzz::fuzz_one<decltype(arch), decltype(zero)>(in);
      });
}
