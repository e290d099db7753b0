// Example 5: a variable-length batch, padded and packed.
//
// Three sequences of 5, 12 and 7 tokens, bidirectional (encoder) SSMax attention, laid out
// two ways:
//   padded  [B = 3, S = 12, heads, d]: each sequence padded to the longest; the mask's
//           key_lengths say which keys are real, so padding is never attended to and
//           never counts in n;
//   packed  [1, 24, heads, d]: the sequences back to back, with FlashAttention-style
//           cumulative offsets cu_seqlens = {0, 5, 17, 24}; positions and n restart at
//           each sequence.
// Either way every token of sequence b sees its n = L_b keys and gets m = s log L_b, as
// when the sequence runs alone (n = 12 for every row would be the classic bug). Causal
// attention works the same way (causal_mask() with key_lengths, varlen(..., true)).
// The program checks that the padded, packed and alone results all match the
// double-precision reference within the operator's error bound, whatever the padding
// holds, and exits non-zero if not.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>
#include <random>
#include <ssmax/reference/attention.hpp>
#include <ssmax/ssmax.hpp>
#include <vector>

int main() {
  const std::vector<ssmax::index_t> lengths = {5, 12, 7};
  const ssmax::index_t batch = 3, longest = 12, heads = 4, d = 16, row = heads * d;
  const double s = 0.43;
  std::vector<ssmax::index_t> cu_seqlens = {0};  // {0, 5, 17, 24}
  for (ssmax::index_t len : lengths) cu_seqlens.push_back(cu_seqlens.back() + len);
  const ssmax::index_t total = cu_seqlens.back();

  // Packed q, k, v: [1, total, heads, d], sequence b in rows [cu_seqlens[b], cu_seqlens[b+1]).
  std::mt19937 rng(5);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  auto random = [&] {
    std::vector<float> x(static_cast<std::size_t>(total * row));
    for (float& e : x) e = normal(rng);
    return x;
  };
  const std::vector<float> q = random(), k = random(), v = random();

  ssmax::attention_options<ssmax::ssmax_policy> options;
  options.policy = ssmax::ssmax_policy(s);

  // Packed: one call over all the tokens.
  std::vector<float> out_packed(q.size());
  ssmax::attention_options<ssmax::ssmax_policy> packed = options;
  packed.mask = ssmax::attention_mask::varlen(cu_seqlens.data(), cu_seqlens.data(), batch,
                                              /*is_causal=*/false);
  ssmax::attention(ssmax::bshd_view(q.data(), 1, total, heads, d),
                   ssmax::bshd_view(k.data(), 1, total, heads, d),
                   ssmax::bshd_view(v.data(), 1, total, heads, d),
                   ssmax::bshd_view(out_packed.data(), 1, total, heads, d), packed);

  // Padded: copy each sequence into a [batch, longest] slot; padding holds junk (finite).
  const std::size_t padded_size = static_cast<std::size_t>(batch * longest * row);
  std::vector<float> qp(padded_size, 1e3f), kp(padded_size, -1e3f), vp(padded_size, 1e3f);
  for (ssmax::index_t b = 0; b < batch; ++b) {
    const auto from = static_cast<std::ptrdiff_t>(cu_seqlens[b] * row);
    const auto count = static_cast<std::ptrdiff_t>(lengths[b] * row);
    const auto to = static_cast<std::ptrdiff_t>(b * longest * row);
    std::copy(q.begin() + from, q.begin() + from + count, qp.begin() + to);
    std::copy(k.begin() + from, k.begin() + from + count, kp.begin() + to);
    std::copy(v.begin() + from, v.begin() + from + count, vp.begin() + to);
  }
  std::vector<float> out_padded(padded_size);
  ssmax::attention_options<ssmax::ssmax_policy> padded = options;
  // Keys at positions >= lengths[b] are padding.
  padded.mask = ssmax::attention_mask::key_padding(lengths.data());
  ssmax::attention(ssmax::bshd_view(qp.data(), batch, longest, heads, d),
                   ssmax::bshd_view(kp.data(), batch, longest, heads, d),
                   ssmax::bshd_view(vp.data(), batch, longest, heads, d),
                   ssmax::bshd_view(out_padded.data(), batch, longest, heads, d), padded);

  // Alone: each sequence in a call of its own, no mask.
  std::vector<float> out_alone(q.size());
  ssmax::attention_options<ssmax::ssmax_policy> alone = options;
  for (ssmax::index_t b = 0; b < batch; ++b) {
    const ssmax::index_t at = cu_seqlens[b] * row;
    ssmax::attention(ssmax::bshd_view(q.data() + at, 1, lengths[b], heads, d),
                     ssmax::bshd_view(k.data() + at, 1, lengths[b], heads, d),
                     ssmax::bshd_view(v.data() + at, 1, lengths[b], heads, d),
                     ssmax::bshd_view(out_alone.data() + at, 1, lengths[b], heads, d), alone);
  }

  // The double-precision reference on the packed layout, and the operator's bound
  // eps max|v| (2 (d + 2) Z + n + 64), Z the largest sum_c |m scale q_c k_jc| over rows
  // and the keys they see.
  const auto qv = ssmax::bshd_view(q.data(), 1, total, heads, d);
  const auto kv = ssmax::bshd_view(k.data(), 1, total, heads, d);
  const double scale = 1.0 / std::sqrt(double(d));
  const auto exact = ssmax::reference::attention(
      qv, kv, ssmax::bshd_view(v.data(), 1, total, heads, d), packed.policy, packed.mask, scale);
  double Z = 0.0, v_max = 0.0;
  for (ssmax::index_t b = 0; b < batch; ++b)
    for (ssmax::index_t i = 0; i < lengths[b]; ++i)
      for (ssmax::index_t h = 0; h < heads; ++h)
        for (ssmax::index_t j = 0; j < lengths[b]; ++j) {
          double dot = 0.0;
          for (ssmax::index_t c = 0; c < d; ++c)
            dot += std::abs(qv(0, cu_seqlens[b] + i, h, c) * kv(0, cu_seqlens[b] + j, h, c));
          Z = std::max(Z, s * std::log(double(lengths[b])) * scale * dot);
        }
  for (float e : v) v_max = std::max(v_max, double(std::abs(e)));
  const double bound =
      std::numeric_limits<float>::epsilon() * v_max * (2.0 * (d + 2) * Z + longest + 64.0);

  std::printf("%9s %7s %12s %12s %12s %12s\n", "sequence", "length", "m = s ln L", "|packed-ref|",
              "|padded-ref|", "|alone-ref|");
  bool ok = true;
  for (ssmax::index_t b = 0; b < batch; ++b) {
    double e_packed = 0.0, e_padded = 0.0, e_alone = 0.0;
    for (ssmax::index_t i = 0; i < lengths[b]; ++i)
      for (ssmax::index_t c = 0; c < row; ++c) {
        const auto at = static_cast<std::size_t>((cu_seqlens[b] + i) * row + c);
        const auto at_padded = static_cast<std::size_t>((b * longest + i) * row + c);
        e_packed = std::max(e_packed, std::abs(out_packed[at] - exact.out[at]));
        e_padded = std::max(e_padded, std::abs(out_padded[at_padded] - exact.out[at]));
        e_alone = std::max(e_alone, std::abs(out_alone[at] - exact.out[at]));
      }
    std::printf("%9td %7td %12.4f %12.3e %12.3e %12.3e\n", b, lengths[b],
                s * std::log(double(lengths[b])), e_packed, e_padded, e_alone);
    ok = ok && e_packed <= bound && e_padded <= bound && e_alone <= bound;
  }
  std::printf("contract bound %.3e (the padding holds +-1000: it must change nothing)\n", bound);
  std::printf("%s\n", ok ? "OK" : "FAILED");
  return ok ? 0 : 1;
}
