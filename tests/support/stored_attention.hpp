#pragma once
// Attention with 16-bit storage (storage.hpp) against the double reference: inputs stored
// in each tensor's type, the reference run on their exact values, and the bound
// attention.hpp states (the float bound plus half an ULP of out's type). Shared by
// tests/test_attention_16bit.cpp (every combination on the widest architecture) and
// tests/test_attention_16bit_archs.cpp (the pairwise combinations on the others).

#include <gtest/gtest.h>

#include <limits>
#include <memory>
#include <random>
#include <ssmax/attention.hpp>
#include <ssmax/kernels/convert.hpp>
#include <ssmax/kernels/prefill_bf16.hpp>
#include <string>
#include <tuple>

#include "attention_cases.hpp"
#include "attention_check.hpp"

namespace ssmax::testing {

using bf16 = Eigen::bfloat16;
using f16 = Eigen::half;
using f32 = float;

/// One storage combination: q, k and v, out.
template <class Q, class KV, class O>
struct combo {
  using q = Q;
  using kv = KV;
  using out = O;
};

/// Half an ULP of out's type, relative (0 for float: the float bound holds it), and half
/// its smallest denormal: what the final rounded store may add.
template <class O>
double out_unit() {
  if (std::is_same<O, bf16>::value) return std::ldexp(1.0, -8);
  if (std::is_same<O, f16>::value) return std::ldexp(1.0, -11);
  return 0.0;
}
template <class O>
double out_tiny() {
  if (std::is_same<O, bf16>::value) return std::ldexp(1.0, -134);
  if (std::is_same<O, f16>::value) return std::ldexp(1.0, -25);
  return 0.0;
}

inline const char* type_name(float) { return "f32"; }
inline const char* type_name(bf16) { return "bf16"; }
inline const char* type_name(f16) { return "f16"; }

/// Random inputs stored in q's and k/v's types, and their exact values (the reference's
/// inputs) in an attention_data<double> of the same shape.
template <class C>  // combo<Q, KV, O>
struct stored_data {
  using Q = typename C::q;
  using KV = typename C::kv;
  attention_data<double> exact;
  std::vector<Q> q;
  std::vector<KV> k, v;

  stored_data(index_t B, index_t n_q, index_t n_k, index_t H, index_t H_kv, index_t d,
              unsigned seed)
      : exact(B, n_q, n_k, H, H_kv, d, seed) {
    store(exact.q, q);
    store(exact.k, k);
    store(exact.v, v);
  }
  template <class S>
  static void store(std::vector<double>& values, std::vector<S>& stored) {
    stored.resize(values.size());
    for (size_t i = 0; i < values.size(); ++i) {
      stored[i] = kernels::from_compute<S>(static_cast<float>(values[i]));
      values[i] = kernels::to_compute(stored[i]);  // exact
    }
  }
};

/// Runs attention on the stored data; out widened (exactly) to float.
template <class Arch, class C, class Policy>
attention_run<float> run_stored(const stored_data<C>& data, attention_options<Policy> o,
                                attention_path path) {
  using O = typename C::out;
  const attention_data<double>& x = data.exact;
  std::vector<O> out(x.q.size(), kernels::from_compute<O>(-7.0f));
  attention_run<float> r;
  r.lse.assign(static_cast<size_t>(x.B * x.H * x.n_q), -7.0f);
  attention_extras<float> extras;
  extras.lse = r.lse.data();
  if (path == attention_path::materialised) {
    r.weights.assign(static_cast<size_t>(x.B * x.H * x.n_q * x.n_k), -7.0f);
    extras.weights = r.weights.data();
  }
  o.path = path;
  attention<Arch>(bshd_view(data.q.data(), x.B, x.n_q, x.H, x.d),
                  bshd_view(data.k.data(), x.B, x.n_k, x.H_kv, x.d),
                  bshd_view(data.v.data(), x.B, x.n_k, x.H_kv, x.d),
                  bshd_view(out.data(), x.B, x.n_q, x.H, x.d), o, extras);
  for (O e : out) r.out.push_back(kernels::to_compute(e));
  return r;
}

/// True when the fused prefill of combination C on Arch computes its scores with
/// vdpbf16ps (kernels/prefill_bf16.hpp): its bound adds the denormal flush.
template <class Arch, class C>
constexpr bool flushed_dots() {
  return kernels::detail::bf16_prefill<
      Arch, float,
      kernels::storage_set<typename C::q, typename C::kv, typename C::kv, typename C::out>>;
}

/// Both paths against the reference on the exact inputs.
template <class Arch, class C, class Policy>
void check_stored(const stored_data<C>& data, const attention_options<Policy>& o,
                  const std::string& what) {
  using O = typename C::out;
  const std::string types = std::string(" [q ") + type_name(typename C::q{}) + ", kv " +
                            type_name(typename C::kv{}) + ", out " + type_name(O{}) + "]";
  for (auto path : {attention_path::fused, attention_path::materialised}) {
    const auto run = run_stored<Arch>(data, o, path);
    expect_matches_reference(
        data.exact, o, run,
        what + types + (path == attention_path::fused ? " fused" : " materialised"), out_unit<O>(),
        out_tiny<O>(), path == attention_path::fused && flushed_dots<Arch, C>());
  }
}

/// The bf16 prefill paths' cases: every mask kind (attention_cases.hpp) over 2 batch
/// entries of n_q queries and n_k keys, 4 heads, and the logit features' data (a dense bias
/// with -inf entries, ALiBi slopes, four finite sinks).
struct logit_cases {
  static constexpr index_t B = 2, H = 4;
  index_t n_q, n_k;
  mask_cases masks;
  logit_extras extras;

  logit_cases(index_t queries, index_t keys, unsigned seed)
      : n_q(queries),
        n_k(keys),
        masks({B, queries, keys, H}, seed),
        extras({B, queries, keys, H}, seed, {0.5f, -1.0f, 2.0f, -3.0f}) {}
};

/// Calls check(data, options, what) for every mask kind x feature x Softmax (as
/// ssmax_policy(0, 1): one policy type, one instantiation of the kernels), SSMax with
/// per-head s and b, and SSMax with negative s and b (m < 0 on some rows): data of
/// combination C with GQA 4:2, d = 37 and 64 in turn, seeds from seed + 1 on. Crossed in
/// full on no mask, causal, a window, a cache, packed causal sequences and a boolean mask;
/// every other kind takes one feature x policy, in turn.
template <class C, class Check>  // combo<Q, KV, O>
void check_signed_logit_cases(const logit_cases& cases, const std::vector<std::string>& features,
                              unsigned seed, Check&& check) {
  for_each_mask_feature_policy<softmax_kind | softmax_as_ssmax | ssmax_per_head_kind |
                               ssmax_negative_kind>(
      cases.masks, features, {logit_cases::H, 4, 32},
      {"none", "causal", "window", "cache", "varlen-causal", "boolean"},
      [&](const mask_case& mc, const std::string& feature, const char* name,
          const ssmax_policy& policy, ssmax_parameters*) {
        const index_t batch = cases.masks.batch_of(mc), d = seed % 2 ? 64 : 37;
        stored_data<C> data(batch, cases.n_q, cases.n_k, logit_cases::H, 2, d, ++seed);
        attention_options<ssmax_policy> o = options_for(policy, mc.mask);
        o.logit = cases.extras.options(feature, batch);
        check(data, o, mc.name + " x " + feature + " x " + name + " d=" + std::to_string(d));
      });
}

/// Sets key row `key` of data (batch 0, KV head 0) to 3e38, and makes each query's entries
/// positive where positive(e) (q . k_key overflows to +inf: all the weight on that key) and
/// negative elsewhere (-inf: that key weighs 0).
template <class C, class P>
void make_overflowing_key(stored_data<C>& data, index_t key, P positive) {
  const index_t d = data.exact.d;
  for (index_t c = 0; c < d; ++c) {
    auto& stored = data.k[static_cast<size_t>(key * d + c)];
    stored = kernels::from_compute<typename C::kv>(3e38f);
    data.exact.k[static_cast<size_t>(key * d + c)] = kernels::to_compute(stored);
  }
  for (size_t e = 0; e < data.q.size(); ++e) {
    const float x = std::abs(kernels::to_compute(data.q[e])) * (positive(e) ? 1.0f : -1.0f);
    data.q[e] = kernels::from_compute<typename C::q>(x);
    data.exact.q[e] = kernels::to_compute(data.q[e]);
  }
}

/// Expects each row of `got` whose `want` lse is infinite to be infinite too with the same
/// out, bit for bit, and the other rows' out within finite_tolerance(want) of want's.
/// Returns the count of infinite rows.
template <class F>
int expect_overflowing_rows_match(const attention_run<float>& got, const attention_run<float>& want,
                                  index_t d, F finite_tolerance) {
  int overflowing = 0;
  for (size_t i = 0; i < want.lse.size(); ++i) {
    const bool inf_row = std::isinf(want.lse[i]);
    overflowing += inf_row;
    EXPECT_EQ(std::isinf(got.lse[i]), inf_row) << "row " << i;
    for (index_t c = 0; c < d; ++c) {
      const float g = got.out[i * static_cast<size_t>(d) + static_cast<size_t>(c)];
      const float w = want.out[i * static_cast<size_t>(d) + static_cast<size_t>(c)];
      if (inf_row)  // all the weight on the overflowing key: its value, exactly
        EXPECT_EQ(g, w) << "row " << i;
      else
        EXPECT_NEAR(g, w, finite_tolerance(w)) << "row " << i;
    }
  }
  return overflowing;
}

/// Every mask kind x Softmax, SSMax and SSMax with bias, decode (1 to 3 rows, some over
/// several key blocks) and prefill, GQA 4:2 and 4:4, for one combination.
template <class Arch, class C>
void check_combination() {
  const index_t B = 2, H = 4;
  const index_t n_k = 520;  // three key blocks, the last one partial
  const index_t lengths[] = {517, 3};
  const index_t cu_q[] = {0, 2, 2, 3};  // packed decode-sized sequences, one with no query
  const index_t cu_k[] = {0, 260, 270, 520};
  const index_t cu_q_prefill[] = {0, 12, 20};
  const index_t cu_k_prefill[] = {0, 260, 520};
  std::mt19937 gen(3);
  std::unique_ptr<bool[]> allowed(new bool[static_cast<size_t>(B * H * 20 * n_k)]);
  for (index_t e = 0; e < B * H * 20 * n_k; ++e) allowed[static_cast<size_t>(e)] = gen() % 3 != 0;
  std::vector<double> s = {0.3, 0.4, 0.5, 0.6}, b = {0.0, 0.2, 0.4, 0.6};
  int which = 0;
  for (index_t n_q : {1, 3, 20}) {  // decode: dot products; prefill: the packed GEMM
    std::vector<mask_case> masks;
    masks.push_back({"none", attention_mask::none()});
    masks.push_back({"causal", attention_mask::causal_mask()});
    masks.push_back({"window", attention_mask::sliding_window(100)});
    masks.push_back({"cache", attention_mask::cache(lengths)});
    masks.push_back(
        n_q <= 3 ? mask_case{"packed", attention_mask::varlen(cu_q, cu_k, 3), true}
                 : mask_case{"packed-causal",
                             attention_mask::varlen(cu_q_prefill, cu_k_prefill, 2, true), true});
    masks.push_back(
        {"boolean", attention_mask::boolean(allowed.get(), n_k, H * n_q * n_k, n_q * n_k)});
    for (const auto& mc : masks) {
      if (mc.packed && n_q == 1) continue;  // cu_q holds 3 queries
      const index_t H_kv = which % 2 == 0 ? 2 : 4, d = which % 3 == 0 ? 37 : 64;
      const index_t rows = mc.packed ? (n_q <= 3 ? 3 : 20) : n_q;
      stored_data<C> data(mc.packed ? 1 : B, rows, n_k, H, H_kv, d, static_cast<unsigned>(++which));
      const std::string what = mc.name + " n_q=" + std::to_string(rows) +
                               " H_kv=" + std::to_string(H_kv) + " d=" + std::to_string(d);
      // Softmax as ssmax_policy(0, 1) (m = 1 on every row: the kernels do not tell the
      // policy types apart; softmax_policy itself runs in LongDecodeSplitsAndGqa), SSMax,
      // and SSMax with a per-head bias.
      attention_options<ssmax_policy> o;
      o.mask = mc.mask;
      o.policy = ssmax_policy(0.0, 1.0);
      check_stored<Arch>(data, o, what + " softmax");
      o.policy = ssmax_policy(0.43);
      check_stored<Arch>(data, o, what + " ssmax");
      o.policy = ssmax_policy(s, b);
      check_stored<Arch>(data, o, what + " ssmax-bias");
    }
  }
}

template <class Arch, class... Cs>
void check_all(std::tuple<Cs...>) {
  (check_combination<Arch, Cs>(), ...);
}

/// Every (q, k/v, out) combination of float, bfloat16 and half.
using every_combination = std::tuple<
    combo<f32, f32, bf16>, combo<f32, f32, f16>, combo<f32, bf16, f32>, combo<f32, bf16, bf16>,
    combo<f32, bf16, f16>, combo<f32, f16, f32>, combo<f32, f16, bf16>, combo<f32, f16, f16>,
    combo<bf16, f32, f32>, combo<bf16, f32, bf16>, combo<bf16, f32, f16>, combo<bf16, bf16, f32>,
    combo<bf16, bf16, bf16>, combo<bf16, bf16, f16>, combo<bf16, f16, f32>, combo<bf16, f16, bf16>,
    combo<bf16, f16, f16>, combo<f16, f32, f32>, combo<f16, f32, bf16>, combo<f16, f32, f16>,
    combo<f16, bf16, f32>, combo<f16, bf16, bf16>, combo<f16, bf16, f16>, combo<f16, f16, f32>,
    combo<f16, f16, bf16>, combo<f16, f16, f16>>;
/// Nine combinations holding every pair of types of every two of (q, k/v, out): a Latin
/// square, so each conversion path meets each other one.
using pairwise_combinations =
    std::tuple<combo<f32, bf16, f16>, combo<f32, f16, bf16>, combo<bf16, f32, bf16>,
               combo<bf16, bf16, f32>, combo<bf16, f16, f16>, combo<f16, f32, f16>,
               combo<f16, bf16, bf16>, combo<f16, f16, f32>, combo<f32, f32, f32>>;

/// The widest architecture this binary has (every combination runs on it), and the
/// others (the pairwise combinations run on them; scalar_arch alone when there is none).
using widest_architecture =
    std::tuple_element_t<(std::tuple_size<attention_architectures>::value > 1 ? 1 : 0),
                         attention_architectures>;
template <class Tuple>
struct all_but_second {
  using type = Tuple;
};
template <class A, class B, class... Rest>
struct all_but_second<std::tuple<A, B, Rest...>> {
  using type = std::tuple<A, Rest...>;
};
using other_architectures = typename all_but_second<attention_architectures>::type;

/// The tests both files run, per architecture: long decodes split in chunks with GQA, a
/// prefill of several query blocks, and non-finite inputs.
template <class Arch>
void check_long_decode_and_prefill() {
  using C = combo<bf16, bf16, bf16>;
  stored_data<C> data(1, 1, 5000, 8, 2, 128, 21);
  attention_options<ssmax_policy> o;
  o.mask = attention_mask::causal_mask(4999);
  check_stored<Arch>(data, o, "decode n_k=5000 GQA 8:2");
  stored_data<combo<f16, f16, f16>> half_data(1, 2, 4200, 4, 4, 128, 22);
  attention_options<softmax_policy> plain;
  plain.mask = attention_mask::causal_mask();
  check_stored<Arch>(half_data, plain, "decode 2 rows n_k=4200 softmax");
  stored_data<combo<bf16, f16, f32>> prefill(1, 300, 300, 2, 1, 128, 24);
  check_stored<Arch>(prefill, plain, "prefill 300 causal softmax");
}

template <class Arch>
void check_non_finite_inputs() {
  using C = combo<bf16, f16, bf16>;
  stored_data<C> data(1, 2, 40, 1, 1, 16, 23);
  // A NaN key makes every row that sees it NaN.
  data.k[5 * 16 + 3] = kernels::from_compute<f16>(std::numeric_limits<float>::quiet_NaN());
  for (auto path : {attention_path::fused, attention_path::materialised}) {
    const auto run = run_stored<Arch>(data, attention_options<softmax_policy>{}, path);
    for (float x : run.out) EXPECT_TRUE(std::isnan(x));
    for (float x : run.lse) EXPECT_TRUE(std::isnan(x));
  }
}

}  // namespace ssmax::testing
