// Example 3: a batched KV-cache decoding loop with causal SSMax and ragged lengths.
//
// Three sequences with prompts of different lengths share one cache laid out
// [B, capacity, H_kv, d]; lengths[b] says how many tokens sequence b holds. The calls:
//   keys and values   cache_view(cache, B, capacity, H_kv, d, lengths)  (tensor_view.hpp)
//   mask              attention_mask::cache(lengths): causal, keys past lengths[b] hidden,
//                     each sequence's queries at the end of ITS OWN keys (mask.hpp)
// Prefill runs the prompts as one right-padded batch (queries at positions 0..P-1, row p of
// sequence b sees min(p + 1, L_b) keys). Each decode step appends one token per sequence
// and runs the batch's B single queries: sequence b's query sits at L_b - 1 and sees
// n = L_b keys, so the SSMax multiplier m = s log n grows with each sequence's own length.
// Grouped-query attention (8 query heads share 2 KV heads) and a reused workspace (no
// allocation after the first call) are what a decoder uses.
//
// Beside the float cache, the same tokens go into an 8-bit one: ggml's Q8_0 (llama.cpp's
// cache type: blocks of 32 values, int8 with one f16 scale, 34 bytes), each token's K and
// V rows quantized as they are appended (quantize_q8_0, quantize.hpp), and each decode
// step runs the same queries on it too. A Q8_0 view counts blocks along d:
//   cache_view(blocks, B, capacity, H_kv, d / kQ8_0Block, lengths)
// (An fp8 cache, vLLM's, is the same with fp8_e4m3 elements, quantize_fp8 and the view's
// scale: view.scale = {scales, true} for one per kv head.)
//
// The checks: every decode output (and every real prefill row) equals the same row of one
// causal attention over that sequence alone, and both are within the operator's error
// bound of the double-precision reference; each 8-bit decode output is within the error
// that Q8_0's rounding bound (quantize.hpp) allows of the float cache's. The program exits
// non-zero if not.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>
#include <random>
#include <ssmax/reference/attention.hpp>
#include <ssmax/ssmax.hpp>
#include <vector>

int main() {
  using ssmax::index_t;
  const index_t batch = 3, heads = 8, kv_heads = 2, d = 64;  // GQA: 4 query heads per KV head
  const index_t prompt[batch] = {48, 17, 33}, steps = 40;
  const index_t longest_prompt = 48, capacity = longest_prompt + steps;
  const index_t q_row = heads * d, kv_row = kv_heads * d;  // floats per token
  const double s = 0.43;

  // A stand-in for the model: token t of sequence b has query, key and value rows
  // ([heads or kv_heads, d] each), which a real model computes from its hidden state.
  std::mt19937 rng(3);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  auto random = [&](index_t count) {
    std::vector<float> x(static_cast<std::size_t>(count));
    for (float& e : x) e = normal(rng);
    return x;
  };
  const std::vector<float> q_all = random(batch * capacity * q_row);  // [B, capacity, H, d]
  const std::vector<float> k_all = random(batch * capacity * kv_row);
  const std::vector<float> v_all = random(batch * capacity * kv_row);

  // The cache: room for `capacity` tokens per sequence, [B, capacity, H_kv, d].
  std::vector<float> k_cache(k_all.size()), v_cache(v_all.size());
  // The 8-bit cache, same layout: d / 32 blocks per head row (d a multiple of 32).
  constexpr index_t block = ssmax::kQ8_0Block;
  std::vector<ssmax::block_q8_0> k_q8(k_all.size() / block), v_q8(v_all.size() / block);
  index_t lengths[batch] = {0, 0, 0};
  auto append = [&](index_t b, index_t count) {  // the next `count` tokens of sequence b
    const index_t from = (b * capacity + lengths[b]) * kv_row, size = count * kv_row;
    std::copy(k_all.begin() + from, k_all.begin() + from + size, k_cache.begin() + from);
    std::copy(v_all.begin() + from, v_all.begin() + from + size, v_cache.begin() + from);
    ssmax::quantize_q8_0(k_all.data() + from, size, k_q8.data() + from / block);
    ssmax::quantize_q8_0(v_all.data() + from, size, v_q8.data() + from / block);
    lengths[b] += count;
  };
  std::vector<float> out(q_all.size());  // each token's attention output, [B, capacity, H, d]

  ssmax::attention_options<ssmax::ssmax_policy> options;
  options.policy = ssmax::ssmax_policy(s);
  options.mask = ssmax::attention_mask::cache(lengths);  // reads lengths at each call
  ssmax::attention_workspace workspace;
  auto keys = [&] {
    return ssmax::cache_view(k_cache.data(), batch, capacity, kv_heads, d, lengths);
  };
  auto values = [&] {
    return ssmax::cache_view(v_cache.data(), batch, capacity, kv_heads, d, lengths);
  };
  auto keys_q8 = [&] {
    return ssmax::cache_view(k_q8.data(), batch, capacity, kv_heads, d / block, lengths);
  };
  auto values_q8 = [&] {
    return ssmax::cache_view(v_q8.data(), batch, capacity, kv_heads, d / block, lengths);
  };
  std::vector<float> out_q8(q_all.size());  // the 8-bit cache's decode outputs, as `out`

  // Prefill: the prompts as one right-padded batch (rows past a prompt are ignored).
  for (index_t b = 0; b < batch; ++b) append(b, prompt[b]);
  std::vector<float> prefill(static_cast<std::size_t>(batch * longest_prompt * q_row));
  for (index_t b = 0; b < batch; ++b)
    std::copy(q_all.begin() + b * capacity * q_row,
              q_all.begin() + (b * capacity + longest_prompt) * q_row,
              prefill.begin() + b * longest_prompt * q_row);
  std::vector<float> prefill_out(prefill.size());
  ssmax::attention(ssmax::bshd_view(prefill.data(), batch, longest_prompt, heads, d), keys(),
                   values(), ssmax::bshd_view(prefill_out.data(), batch, longest_prompt, heads, d),
                   options, {}, &workspace);
  for (index_t b = 0; b < batch; ++b)
    std::copy(prefill_out.begin() + b * longest_prompt * q_row,
              prefill_out.begin() + (b * longest_prompt + prompt[b]) * q_row,
              out.begin() + b * capacity * q_row);
  std::printf("prefill: prompts of %td, %td, %td tokens in one right-padded batch\n", prompt[0],
              prompt[1], prompt[2]);

  // Decode: one token per sequence per step, the B queries in one call.
  std::printf("%6s %18s %26s\n", "step", "n per sequence", "m per sequence");
  std::vector<float> q_step(static_cast<std::size_t>(batch * q_row)), out_step(q_step.size());
  for (index_t t = 0; t < steps; ++t) {
    for (index_t b = 0; b < batch; ++b) {
      append(b, 1);
      const index_t token = b * capacity + lengths[b] - 1;
      std::copy(q_all.begin() + token * q_row, q_all.begin() + (token + 1) * q_row,
                q_step.begin() + b * q_row);
    }
    ssmax::attention(ssmax::bshd_view(q_step.data(), batch, 1, heads, d), keys(), values(),
                     ssmax::bshd_view(out_step.data(), batch, 1, heads, d), options, {},
                     &workspace);
    for (index_t b = 0; b < batch; ++b)
      std::copy(out_step.begin() + b * q_row, out_step.begin() + (b + 1) * q_row,
                out.begin() + (b * capacity + lengths[b] - 1) * q_row);
    // The same queries on the 8-bit cache.
    ssmax::attention(ssmax::bshd_view(q_step.data(), batch, 1, heads, d), keys_q8(), values_q8(),
                     ssmax::bshd_view(out_step.data(), batch, 1, heads, d), options, {},
                     &workspace);
    for (index_t b = 0; b < batch; ++b)
      std::copy(out_step.begin() + b * q_row, out_step.begin() + (b + 1) * q_row,
                out_q8.begin() + (b * capacity + lengths[b] - 1) * q_row);
    if (t % 10 == 0 || t == steps - 1)
      std::printf("%6td %6td %5td %5td %8.4f %8.4f %8.4f\n", t, lengths[0], lengths[1], lengths[2],
                  s * std::log(double(lengths[0])), s * std::log(double(lengths[1])),
                  s * std::log(double(lengths[2])));
  }
  std::printf("workspace: %zu bytes, reused by every call\n", workspace.capacity());

  // Q8_0's rounding bound (quantize.hpp) for the block of 32 values at x: every value of the
  // block moves by at most amax / 254 (1 + 2^-10) + 2^-18, amax the block's largest |x|.
  auto q8_error = [](const float* x) {
    float amax = 0.0f;
    for (index_t c = 0; c < block; ++c) amax = std::max(amax, std::abs(x[c]));
    return amax / 254.0 * (1.0 + std::ldexp(1.0, -10)) + std::ldexp(1.0, -18);
  };

  // Each sequence alone: one causal attention over all its tokens computes every row.
  const double scale = 1.0 / std::sqrt(double(d));
  double vs_alone = 0.0, vs_exact = 0.0, bound = 0.0;
  double q8_vs_float = 0.0, q8_bound = 0.0;
  bool q8_ok = true;
  for (index_t b = 0; b < batch; ++b) {
    const index_t L = lengths[b];
    const auto q = ssmax::bshd_view(q_all.data() + b * capacity * q_row, 1, L, heads, d);
    const auto k = ssmax::bshd_view(k_all.data() + b * capacity * kv_row, 1, L, kv_heads, d);
    const auto v = ssmax::bshd_view(v_all.data() + b * capacity * kv_row, 1, L, kv_heads, d);
    ssmax::attention_options<ssmax::ssmax_policy> alone = options;
    alone.mask = ssmax::attention_mask::causal_mask();
    std::vector<float> full(static_cast<std::size_t>(L * q_row));
    ssmax::attention(q, k, v, ssmax::bshd_view(full.data(), 1, L, heads, d), alone);
    const auto exact = ssmax::reference::attention(q, k, v, alone.policy, alone.mask, scale);

    // The operator's bound (attention.hpp): eps max|v| (2 (d + 2) Z + n + 64), with Z the
    // largest sum_c |m scale q_c k_jc| over rows p and their keys j <= p.
    double Z = 0.0, v_max = 0.0;
    for (index_t p = 0; p < L; ++p)
      for (index_t h = 0; h < heads; ++h)
        for (index_t j = 0; j <= p; ++j) {
          double dot = 0.0;
          for (index_t c = 0; c < d; ++c)
            dot += std::abs(q(0, p, h, c) * k(0, j, h / (heads / kv_heads), c));
          Z = std::max(Z, s * std::log(double(p + 1)) * scale * dot);
        }
    for (index_t i = 0; i < L * kv_row; ++i) v_max = std::max(v_max, double(std::abs(v.data[i])));
    bound = std::max(bound, std::numeric_limits<float>::epsilon() * v_max *
                                (2.0 * (d + 2) * Z + double(L) + 64.0));
    for (index_t i = 0; i < L * q_row; ++i) {
      const double got = out[static_cast<std::size_t>(b * capacity * q_row + i)];
      vs_alone = std::max(vs_alone, std::abs(got - full[static_cast<std::size_t>(i)]));
      vs_exact = std::max(vs_exact, std::abs(got - exact.out[static_cast<std::size_t>(i)]));
    }

    // The 8-bit decode rows against the float cache's. With a_j the exact weights and o the
    // exact output of row p, head h: a key's rounding moves its logit m scale q.k_j by at
    // most D = m scale sum_c |q_c| e_k (e_k the bound of k_jc's block), so each weight by a
    // factor within e^(+-2D), and the output by at most (e^(2D) - 1) sum_j a_j |v_jc - o_c|;
    // a value's rounding moves it by at most the largest e_v (the weights sum to 1). Each
    // call's own float rounding adds at most `bound`.
    for (index_t p = prompt[b]; p < L; ++p)
      for (index_t h = 0; h < heads; ++h) {
        const index_t g = h / (heads / kv_heads);
        const double m = s * std::log(double(p + 1));
        double D = 0.0, e_v = 0.0;
        for (index_t j = 0; j <= p; ++j) {
          double Dj = 0.0;
          for (index_t c0 = 0; c0 < d; c0 += block) {
            double q_sum = 0.0;
            for (index_t c = c0; c < c0 + block; ++c) q_sum += std::abs(q(0, p, h, c));
            Dj += m * scale * q_sum * q8_error(&k(0, j, g, c0));
            e_v = std::max(e_v, q8_error(&v(0, j, g, c0)));
          }
          D = std::max(D, Dj);
        }
        for (index_t c = 0; c < d; ++c) {
          const double o = exact.out[static_cast<std::size_t>((p * heads + h) * d + c)];
          double spread = 0.0;
          for (index_t j = 0; j <= p; ++j)
            spread += exact.weights[static_cast<std::size_t>((h * L + p) * L + j)] *
                      std::abs(v(0, j, g, c) - o);
          const double allowed = e_v + std::expm1(2.0 * D) * spread + 2.0 * bound;
          const std::size_t at = static_cast<std::size_t>((b * capacity + p) * q_row + h * d + c);
          const double error = std::abs(double(out_q8[at]) - double(out[at]));
          q8_vs_float = std::max(q8_vs_float, error);
          q8_bound = std::max(q8_bound, allowed);
          q8_ok = q8_ok && error <= allowed;
        }
      }
  }
  std::printf("max |batched cache - each sequence alone| = %.3e\n", vs_alone);
  std::printf("max |batched cache - double reference| = %.3e (contract bound %.3e)\n", vs_exact,
              bound);
  std::printf("cache bytes: float %zu, Q8_0 %zu\n",
              (k_cache.size() + v_cache.size()) * sizeof(float),
              (k_q8.size() + v_q8.size()) * sizeof(ssmax::block_q8_0));
  std::printf("max |Q8_0 cache decode - float cache decode| = %.3e (Q8_0 rounding bound %.3e)\n",
              q8_vs_float, q8_bound);
  const bool ok = vs_exact <= bound && vs_alone <= 2.0 * bound && q8_ok;
  std::printf("%s\n", ok ? "OK" : "FAILED");
  return ok ? 0 : 1;
}
