// Example 3: a KV-cache decoding loop with causal SSMax.
//
// Prefill runs the prompt's queries over the prompt's keys with a causal mask (row p sees
// n = p + 1 keys). Each decode step appends one token's key and value to the cache and
// runs its single query over the T + 1 cached keys: the mask's default query offset puts
// that query at the end of the keys, so n = T + 1 grows by one per step and the SSMax
// multiplier m = s log n with it. Grouped-query attention (8 query heads share 2 KV heads)
// and a reused workspace (no allocation after the first call) are what a decoder uses.
//
// The check: every decode output equals the same row of one causal attention over the
// whole sequence, and both are within the operator's error bound of the double-precision
// reference. The program exits non-zero if not.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>
#include <random>
#include <ssmax/reference/attention.hpp>
#include <ssmax/ssmax.hpp>
#include <vector>

int main() {
  const ssmax::index_t heads = 8, kv_heads = 2, d = 64;  // GQA: 4 query heads per KV head
  const ssmax::index_t prompt = 48, steps = 80, max_len = prompt + steps;
  const double s = 0.43;

  // A stand-in for the model: token t's query, key and value rows ([heads or kv_heads, d]
  // each), which a real model computes from the token's hidden state.
  std::mt19937 rng(3);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  auto random = [&](ssmax::index_t count) {
    std::vector<float> x(static_cast<std::size_t>(count));
    for (float& e : x) e = normal(rng);
    return x;
  };
  const std::vector<float> q_all = random(max_len * heads * d);
  const std::vector<float> k_all = random(max_len * kv_heads * d);
  const std::vector<float> v_all = random(max_len * kv_heads * d);
  const ssmax::index_t q_row = heads * d, kv_row = kv_heads * d;  // floats per token

  // The cache: room for max_len tokens, [seq, kv_heads, d]; the first T rows are filled.
  std::vector<float> k_cache(k_all.size()), v_cache(v_all.size());
  auto append = [&](ssmax::index_t from, ssmax::index_t to) {  // tokens [from, to) into the cache
    std::copy(k_all.begin() + from * kv_row, k_all.begin() + to * kv_row,
              k_cache.begin() + from * kv_row);
    std::copy(v_all.begin() + from * kv_row, v_all.begin() + to * kv_row,
              v_cache.begin() + from * kv_row);
  };
  std::vector<float> out(q_all.size());  // each position's attention output, [seq, heads, d]

  ssmax::attention_options<ssmax::ssmax_policy> options;
  options.policy = ssmax::ssmax_policy(s);
  options.mask = ssmax::attention_mask::causal_mask();  // queries at the end of the keys
  ssmax::attention_workspace workspace;

  // Prefill: the prompt's queries over the prompt's keys.
  append(0, prompt);
  ssmax::attention(ssmax::bshd_view(q_all.data(), 1, prompt, heads, d),
                   ssmax::bshd_view(k_cache.data(), 1, prompt, kv_heads, d),
                   ssmax::bshd_view(v_cache.data(), 1, prompt, kv_heads, d),
                   ssmax::bshd_view(out.data(), 1, prompt, heads, d), options, {}, &workspace);
  std::printf("prefill: %td tokens, causal: row p sees n = p + 1 keys\n", prompt);

  // Decode: one token per step; its query sees the T + 1 cached keys.
  std::printf("%6s %8s %8s\n", "step", "n", "m");
  for (ssmax::index_t t = prompt; t < max_len; ++t) {
    append(t, t + 1);
    const ssmax::index_t cached = t + 1;
    ssmax::attention(ssmax::bshd_view(q_all.data() + t * q_row, 1, 1, heads, d),
                     ssmax::bshd_view(k_cache.data(), 1, cached, kv_heads, d),
                     ssmax::bshd_view(v_cache.data(), 1, cached, kv_heads, d),
                     ssmax::bshd_view(out.data() + t * q_row, 1, 1, heads, d), options, {},
                     &workspace);
    if ((t - prompt) % 16 == 0 || t == max_len - 1)
      std::printf("%6td %8td %8.4f\n", t - prompt, cached, s * std::log(double(cached)));
  }
  std::printf("workspace: %zu bytes, reused by every call\n", workspace.capacity());

  // One causal attention over the whole sequence computes every row at once.
  const auto q = ssmax::bshd_view(q_all.data(), 1, max_len, heads, d);
  const auto k = ssmax::bshd_view(k_all.data(), 1, max_len, kv_heads, d);
  const auto v = ssmax::bshd_view(v_all.data(), 1, max_len, kv_heads, d);
  std::vector<float> full(out.size());
  ssmax::attention(q, k, v, ssmax::bshd_view(full.data(), 1, max_len, heads, d), options);
  const double scale = 1.0 / std::sqrt(double(d));
  const auto exact = ssmax::reference::attention(q, k, v, options.policy, options.mask, scale);

  // The operator's bound (attention.hpp): eps max|v| (2 (d + 2) Z + n + 64), with Z the
  // largest sum_c |m scale q_c k_jc| over rows p and their keys j <= p.
  double Z = 0.0;
  for (ssmax::index_t p = 0; p < max_len; ++p)
    for (ssmax::index_t h = 0; h < heads; ++h)
      for (ssmax::index_t j = 0; j <= p; ++j) {
        double dot = 0.0;
        for (ssmax::index_t c = 0; c < d; ++c)
          dot += std::abs(q(0, p, h, c) * k(0, j, h / (heads / kv_heads), c));
        Z = std::max(Z, s * std::log(double(p + 1)) * scale * dot);
      }
  double v_max = 0.0;
  for (float e : v_all) v_max = std::max(v_max, double(std::abs(e)));
  const double bound =
      std::numeric_limits<float>::epsilon() * v_max * (2.0 * (d + 2) * Z + max_len + 64.0);

  double decode_vs_full = 0.0, decode_vs_exact = 0.0;
  for (std::size_t i = 0; i < out.size(); ++i) {
    decode_vs_full = std::max(decode_vs_full, double(std::abs(out[i] - full[i])));
    decode_vs_exact = std::max(decode_vs_exact, std::abs(out[i] - exact.out[i]));
  }
  std::printf("max |decode - one causal call| = %.3e\n", decode_vs_full);
  std::printf("max |decode - double reference| = %.3e (contract bound %.3e)\n", decode_vs_exact,
              bound);
  const bool ok = decode_vs_exact <= bound && decode_vs_full <= 2.0 * bound;
  std::printf("%s\n", ok ? "OK" : "FAILED");
  return ok ? 0 : 1;
}
