#pragma once
// Test data and the comparison of an attention call with the double reference, under
// the bound attention.hpp states. The bound is derived, not tuned (Higham's gamma_n
// bounds for the two dot products, plus the exp and the blocked sums):
//   |out - ref| <= 2 eps max|v| (2 (d + 2) Z + n + 64) + (n + d) denorm_min
//   |lse - ref| <= 2 eps (2 (d + 2) Z + |ref| + n + 64)
//   |a_j - ref| <= 2 eps ref_j (4 (d + 2) Z + 80) + (n + 16) min_normal
// with Z = max over visible keys of sum_c |m scale q_c k_jc| (bounds the logits' rounding
// error in units of eps, and so the weights' relative error), n the row's visible keys,
// 64/80 ulp for exp (2 ulp), the argument's roundings, and the blocked summation
// (kLanesPerBlock + log2(4 W) ulp). The leading factor 2 covers the reference's own
// rounding, of the same order in double, when the kernel under test is double too.
// The (n + 16) min_normal term covers weights the row kernel flushes to 0 instead of
// writing a subnormal (kernels/row_softmax.hpp, flush_threshold); the (n + d) denorm_min
// term the products a_j v_j that underflow into the subnormal range, where a relative
// bound cannot hold (each loses at most half a denorm_min, n of them per output).

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <random>
#include <ssmax/attention.hpp>
#include <ssmax/reference/attention.hpp>
#include <string>
#include <vector>

#include "architectures.hpp"

namespace ssmax::testing {

// Attention tests run on a subset of the architectures (scalar, the widest 512-bit, one
// 256-bit and the SSE2 baseline), each only when this binary is compiled for it: every
// register width and both tail paths are covered without compiling the operator for
// every tag in architectures.hpp.
using attention_candidates =
    std::tuple<scalar_arch, xsimd::avx512f, xsimd::fma3<xsimd::avx2>, xsimd::sse2, xsimd::neon64>;
using attention_architectures =
    typename detail::supported_only<std::tuple<>, attention_candidates>::type;
using attention_configs = typename detail::to_gtest<
    typename detail::cross<attention_architectures, float, double>::type>::type;

/// Random q, k, v in BSHD layout, uniform in [-1, 1].
template <class T>  // float or double
struct attention_data {
  index_t B, n_q, n_k, H, H_kv, d;
  std::vector<T> q, k, v;

  attention_data(index_t batch, index_t nq, index_t nk, index_t heads, index_t kv_heads,
                 index_t dim, unsigned seed = 1)
      : B(batch), n_q(nq), n_k(nk), H(heads), H_kv(kv_heads), d(dim) {
    std::mt19937 gen(seed);
    std::uniform_real_distribution<double> u(-1.0, 1.0);
    q.resize(static_cast<size_t>(B * n_q * H * d));
    k.resize(static_cast<size_t>(B * n_k * H_kv * d));
    v.resize(k.size());
    for (auto& x : q) x = static_cast<T>(u(gen));
    for (auto& x : k) x = static_cast<T>(u(gen));
    for (auto& x : v) x = static_cast<T>(u(gen));
  }
  tensor_view<const T> qv() const { return bshd_view(q.data(), B, n_q, H, d); }
  tensor_view<const T> kv() const { return bshd_view(k.data(), B, n_k, H_kv, d); }
  tensor_view<const T> vv() const { return bshd_view(v.data(), B, n_k, H_kv, d); }
  std::vector<T> make_out() const { return std::vector<T>(q.size(), T(-7)); }
  tensor_view<T> outv(std::vector<T>& o) const { return bshd_view(o.data(), B, n_q, H, d); }
};

/// Fills `to` with consecutive rows of `from`, whose batch entries lie end to end: its
/// queries from query row q_row of `from` on, its keys and values from key row k_row on
/// (a packed sequence, or one batch entry, cut out as a problem of its own).
/// Pre: to has from's H, H_kv and d; from holds to's rows after q_row and k_row.
template <class T>  // float or double
void copy_rows(const attention_data<T>& from, index_t q_row, index_t k_row, attention_data<T>& to) {
  const index_t q_at = q_row * from.H * from.d, k_at = k_row * from.H_kv * from.d;
  const auto q_count = static_cast<index_t>(to.q.size()),
             k_count = static_cast<index_t>(to.k.size());
  std::copy(from.q.begin() + q_at, from.q.begin() + q_at + q_count, to.q.begin());
  std::copy(from.k.begin() + k_at, from.k.begin() + k_at + k_count, to.k.begin());
  std::copy(from.v.begin() + k_at, from.v.begin() + k_at + k_count, to.v.begin());
}

/// What one kernel call produced.
template <class T>  // float or double
struct attention_run {
  std::vector<T> out, lse, weights;
};

/// Runs attention on `data` with the given options, returning out, lse (and weights on
/// the materialised path).
template <class Arch, class T, class Policy>  // architecture; float or double; policy
attention_run<T> run_attention(const attention_data<T>& data, attention_options<Policy> options,
                               attention_path path) {
  attention_run<T> r;
  r.out = data.make_out();
  r.lse.assign(static_cast<size_t>(data.B * data.H * data.n_q), T(-7));
  attention_extras<T> extras;
  extras.lse = r.lse.data();
  if (path == attention_path::materialised) {
    r.weights.assign(static_cast<size_t>(data.B * data.H * data.n_q * data.n_k), T(-7));
    extras.weights = r.weights.data();
  }
  options.path = path;
  attention<Arch>(data.qv(), data.kv(), data.vv(), data.outv(r.out), options, extras);
  return r;
}

/// |bias_ij| (additive and ALiBi) plus |sink_h| of row i, key j: the size of the logit's
/// extras, which the bound adds to Z. Hidden (-inf) and absent terms count 0.
inline double logit_magnitude(const logit_options& lo, const sequence_span& seq, index_t b,
                              index_t h, index_t i, index_t j, index_t position,
                              const attention_mask& mask) {
  double size = 0.0;
  if (lo.bias.data != nullptr) {
    const double x = lo.bias.row(b, h, i)[j * lo.bias.stride_k];
    if (std::isfinite(x)) size += std::abs(x);
  }
  if (lo.alibi_slopes != nullptr)
    size += std::abs(static_cast<double>(lo.alibi_slopes[h])) *
            std::abs(static_cast<double>(mask.key_offset + j - seq.k_begin - position));
  if (lo.sinks != nullptr && std::isfinite(lo.sinks[h])) size += std::abs(lo.sinks[h]);
  return size;
}

/// Expects `run` to match the reference within the bound above. `what` names the case.
/// A call in another storage type (a 16-bit one) passes its inputs' exact values as data
/// (double), its outputs widened exactly to the compute type C, and out's rounding: each
/// out element may further differ by out_unit relative (half an ULP of out's type) plus
/// out_tiny absolute (half its smallest denormal). flushed_dots: the scores came from
/// vdpbf16ps (bf16 q and k on AVX512-BF16, attention.hpp), which adds to each score at most
/// E = 2^-126 d |m scale| (max_c |q_c| + max_jc |k_jc| + 2) (its denormal flush): the bound
/// adds 4 E max|v| to out (the weights move by at most e^(2E) - 1) and E to lse.
/// int8_queries: the scores came from the opt-in int8 dot products (a Q8_0 k,
/// kernels/q8_0_dots.hpp), which move logit j by at most D_j = |m scale| sum_b max_{c in b}
/// |q_c| ||k_jb||_1 (1 / 254 (1 + 2^-19) + (d / 32 + 2) eps) (the query's rounding to
/// blocks of 32, and the blocks' float sum); with D the largest over the row's keys the
/// bound adds min(e^(2D) - 1, 2) max|v| to out (two weighted means of the same values
/// differ by at most 2 max|v|) and D to lse.
template <class T,       // float or double: the element type of data
          class Policy,  // policy
          class C>       // the compute type of the call (its eps bounds the error)
void expect_matches_reference(const attention_data<T>& data, const attention_options<Policy>& o,
                              const attention_run<C>& run, const std::string& what,
                              double out_unit = 0.0, double out_tiny = 0.0,
                              bool flushed_dots = false, double weights_unit = 0.0,
                              bool int8_queries = false) {
  const double eps = std::numeric_limits<C>::epsilon();
  const double scale = o.scale ? *o.scale : 1.0 / std::sqrt(static_cast<double>(data.d));
  const auto ref =
      reference::attention(data.qv(), data.kv(), data.vv(), o.policy, o.mask, scale, o.logit);
  const auto q = data.qv(), k = data.kv(), v = data.vv();
  const index_t group = data.H / data.H_kv;
  index_t failures = 0;
  for (index_t s = 0; s < sequence_count(o.mask, data.B); ++s) {
    const sequence_span seq = sequence_of(o.mask, s, data.n_q, data.n_k);
    const index_t b = seq.tensor_batch;
    for (index_t h = 0; h < data.H; ++h)
      for (index_t i = seq.q_begin; i < seq.q_end; ++i) {
        const row_keys row = visible_keys(o.mask, o.logit, seq, h, i);
        const index_t g = h / group;
        double z = 0.0, vmax = 0.0, qmax = 0.0, kmax = 0.0, shift = 0.0;
        for (index_t c = 0; c < data.d; ++c)
          qmax = std::max(qmax, std::abs(static_cast<double>(q(b, i, h, c))));
        const double m_row = row.visible > 0 ? o.policy.multiplier({row.n, row.position, h}) : 0.0;
        const double m = m_row * scale;
        for (index_t j = row.begin; j < row.end; ++j) {
          if (row.allowed != nullptr && !row.allowed[j]) continue;
          double zj = 0.0;
          for (index_t c = 0; c < data.d; ++c) {
            zj += std::abs(m * q(b, i, h, c) * k(b, j, g, c));
            vmax = std::max(vmax, std::abs(static_cast<double>(v(b, j, g, c))));
            kmax = std::max(kmax, std::abs(static_cast<double>(k(b, j, g, c))));
          }
          // The logit's extras (logit.hpp) add |m bias| (additive and ALiBi) and the sink
          // |m sink| to what the roundings are relative to; the soft-cap only shrinks.
          zj += std::abs(m_row) * logit_magnitude(o.logit, seq, b, h, i, j, row.position, o.mask);
          z = std::max(z, zj);
          if (int8_queries) {
            double dj = 0.0;
            for (index_t c0 = 0; c0 < data.d; c0 += 32) {
              double q_block = 0.0, k_block = 0.0;
              for (index_t c = c0; c < c0 + 32; ++c) {
                q_block = std::max(q_block, std::abs(static_cast<double>(q(b, i, h, c))));
                k_block += std::abs(static_cast<double>(k(b, j, g, c)));
              }
              dj += q_block * k_block;
            }
            const double blocks = static_cast<double>(data.d / 32);
            shift = std::max(
                shift, std::abs(m) * dj * ((1 + std::ldexp(1.0, -19)) / 254 + (blocks + 2) * eps));
          }
        }
        const double n = static_cast<double>(row.visible);
        const double dz = 2.0 * (static_cast<double>(data.d) + 2.0) * z;
        const double flush = flushed_dots ? std::ldexp(1.0, -126) * static_cast<double>(data.d) *
                                                std::abs(m) * (qmax + kmax + 2)
                                          : 0.0;
        const double out_bound = 2 * eps * vmax * (dz + n + 64) + 4 * flush * vmax +
                                 std::min(std::expm1(2 * shift), 2.0) * vmax +
                                 (n + static_cast<double>(data.d)) *
                                     static_cast<double>(std::numeric_limits<C>::denorm_min());
        const size_t row_at = static_cast<size_t>((b * data.H + h) * data.n_q + i);
        for (index_t c = 0; c < data.d; ++c) {
          const size_t at = static_cast<size_t>(((b * data.n_q + i) * data.H + h) * data.d + c);
          const double got = run.out[at], want = ref.out[at];
          // Weights rounded to a format of unit weights_unit before P V (the opt-in bf16
          // weights): each weight within weights_unit of itself, relative, or flushed
          // below 2^-126 with the products (attention.hpp).
          double weighted = 0.0;
          if (weights_unit > 0.0)
            for (index_t j = 0; j < data.n_k; ++j)
              weighted +=
                  ref.weights[row_at * static_cast<size_t>(data.n_k) + static_cast<size_t>(j)] *
                  std::abs(static_cast<double>(v(b, j, g, c)));
          const double rounded_weights =
              weights_unit > 0.0
                  ? weights_unit * weighted + std::ldexp(2.0 * n + 2.0, -126) * (vmax + 1)
                  : 0.0;
          const double row_bound = out_bound + rounded_weights;
          const double bound = row_bound + out_unit * (std::abs(want) + row_bound) + out_tiny;
          if (!(std::abs(got - want) <= bound) && failures++ < 5)
            ADD_FAILURE() << what << ": out(b=" << b << ", i=" << i << ", h=" << h << ", c=" << c
                          << ") = " << got << ", reference " << want << ", bound " << bound;
        }
        if (!run.lse.empty()) {
          const double got = run.lse[row_at], want = ref.lse[row_at];
          const bool ok = std::isinf(want)
                              ? got == want
                              : std::abs(got - want) <=
                                    2 * eps * (dz + std::abs(want) + n + 64) + flush + shift;
          if (!ok && failures++ < 5)
            ADD_FAILURE() << what << ": lse(b=" << b << ", h=" << h << ", i=" << i << ") = " << got
                          << ", reference " << want;
        }
        if (!run.weights.empty())
          for (index_t j = 0; j < data.n_k; ++j) {
            const size_t at = row_at * static_cast<size_t>(data.n_k) + static_cast<size_t>(j);
            const double got = run.weights[at], want = ref.weights[at];
            const double bound = 2 * eps * want * (2 * dz + 80) +
                                 (n + 16) * static_cast<double>(std::numeric_limits<C>::min());
            const bool ok = want == 0.0 ? got == 0.0 : std::abs(got - want) <= bound;
            if (!ok && failures++ < 5)
              ADD_FAILURE() << what << ": weight(b=" << b << ", h=" << h << ", i=" << i
                            << ", j=" << j << ") = " << got << ", reference " << want;
          }
      }
  }
  EXPECT_EQ(failures, 0) << what;
}

/// Runs both paths and checks each against the reference.
template <class Arch, class T, class Policy>  // architecture; float or double; policy
void check_both_paths(const attention_data<T>& data, const attention_options<Policy>& options,
                      const std::string& what) {
  for (auto path : {attention_path::fused, attention_path::materialised}) {
    const auto run = run_attention<Arch>(data, options, path);
    expect_matches_reference(
        data, options, run,
        what + (path == attention_path::fused ? " [fused]" : " [materialised]"));
  }
}

}  // namespace ssmax::testing
