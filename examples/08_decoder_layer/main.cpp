// One decoder layer's attention step as current open models run it, over a paged KV cache
// stored in bfloat16 (ssmax/paged.hpp, the vLLM block-table convention; float queries and
// output, computed in float: storage.hpp):
//   - gpt-oss style: GQA 8:2, a sliding window of 128 keys and one learned sink per head;
//   - Gemma 2 style: GQA, a logit soft-cap of 50 (here a small one, so that it matters);
// with SSMax on top (s and b as trained: b < 0). Each decode step is checked against the
// double reference (ssmax/reference/attention.hpp) on the same tokens (the bf16 values,
// exact in float), under the bound of attention.hpp: |out - ref| <= 2 eps max|v| (2 (d + 2) Z + n +
// 64), Z bounding |m z|.

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <random>
#include <ssmax/paged.hpp>
#include <ssmax/reference/attention.hpp>
#include <vector>

namespace {

using ssmax::index_t;
constexpr index_t B = 2, H = 8, H_kv = 2, d = 64, block = 16, max_blocks = 40;

/// Runs one decode step (one query per sequence at the end of its cache) and checks it.
bool step(const char* name, const ssmax::attention_options<ssmax::ssmax_policy>& o,
          const ssmax::paged_kv_cache<Eigen::bfloat16>& cache, const std::vector<float>& k,
          const std::vector<float>& v, index_t L) {
  std::mt19937 rng(7);
  std::normal_distribution<float> dist(0.0f, 1.0f);
  std::vector<float> q(B * H * d), out(q.size());
  for (auto& x : q) x = dist(rng);
  const auto qv = ssmax::bshd_view(static_cast<const float*>(q.data()), B, 1, H, d);
  ssmax::paged_attention(qv, cache, ssmax::bshd_view(out.data(), B, 1, H, d), o);

  ssmax::attention_mask mask = o.mask;  // the reference on the contiguous tokens
  mask.key_lengths = cache.cache_lengths;
  const auto kv = ssmax::bshd_view(k.data(), B, L, H_kv, d);
  const auto vv = ssmax::bshd_view(v.data(), B, L, H_kv, d);
  const double scale = 1.0 / std::sqrt(double(d));
  const auto ref = ssmax::reference::attention(qv, kv, vv, o.policy, mask, scale, o.logit);
  double worst = 0.0, bound = 0.0, largest = 0.0;
  const double eps = std::numeric_limits<float>::epsilon();
  for (index_t b = 0; b < B; ++b)
    for (index_t h = 0; h < H; ++h) {
      const index_t n = cache.cache_lengths[b];
      const index_t seen = o.mask.window > 0 ? std::min(n, o.mask.window) : n;  // the row's n
      const double m = std::abs(o.policy.multiplier({seen, n - 1, h}));
      double z = 0.0;  // |m (scale q . k + sink)| summed by terms, over every key
      for (index_t j = 0; j < n; ++j) {
        double zj = 0.0;
        for (index_t c = 0; c < d; ++c)
          zj += std::abs(scale * q[(b * H + h) * d + c] * kv(b, j, h / 4, c));
        z = std::max(z, m * (zj + (o.logit.sinks ? std::abs(o.logit.sinks[h]) : 0.0)));
      }
      const double row_bound = 2 * eps * 4.0 * (2 * (d + 2) * z + n + 64);  // max|v| <= 4
      for (index_t c = 0; c < d; ++c) {
        const size_t at = static_cast<size_t>((b * H + h) * d + c);
        worst = std::max(worst, std::abs(out[at] - ref.out[at]) / row_bound);
        largest = std::max(largest, std::abs(out[at] - ref.out[at]));
      }
      bound = std::max(bound, row_bound);
    }
  std::printf("%-28s largest error %.2e, bound %.2e\n", name, largest, bound);
  return worst <= 1.0;
}

}  // namespace

int main() {
  // Two sequences of 500 and 217 tokens in a pool of 16-token blocks, scattered.
  const index_t lengths[B] = {500, 217}, L = 500, row = H_kv * d;
  std::mt19937 rng(3);
  std::normal_distribution<float> dist(0.0f, 1.0f);
  std::vector<float> k(B * L * row), v(k.size());
  for (auto& x : k) x = dist(rng);
  for (auto& x : v) x = std::clamp(dist(rng), -4.0f, 4.0f);
  for (auto* t : {&k, &v})  // the cache holds bf16: keep the float copy at the same values
    for (auto& x : *t) x = static_cast<float>(Eigen::bfloat16(x));
  for (index_t b = 0; b < B; ++b)  // rows past each sequence's length: zeros (never read)
    for (index_t t = lengths[b]; t < L; ++t)
      std::fill(&k[(b * L + t) * row], &k[(b * L + t) * row] + row, 0.0f),
          std::fill(&v[(b * L + t) * row], &v[(b * L + t) * row] + row, 0.0f);
  const index_t num_blocks = B * max_blocks;
  std::vector<index_t> table(B * max_blocks);
  for (index_t e = 0; e < num_blocks; ++e) table[e] = (e * 37) % num_blocks;  // a permutation
  std::vector<Eigen::bfloat16> k_pool(num_blocks * block * row), v_pool(k_pool.size());
  for (index_t b = 0; b < B; ++b)
    for (index_t t = 0; t < lengths[b]; ++t) {
      const index_t at = (table[b * max_blocks + t / block] * block + t % block) * row;
      const auto to_bf16 = [](float x) { return Eigen::bfloat16(x); };
      std::transform(&k[(b * L + t) * row], &k[(b * L + t) * row] + row, &k_pool[at], to_bf16);
      std::transform(&v[(b * L + t) * row], &v[(b * L + t) * row] + row, &v_pool[at], to_bf16);
    }
  const ssmax::paged_kv_cache<Eigen::bfloat16> cache{
      k_pool.data(), v_pool.data(), num_blocks, block, H_kv, d, table.data(), max_blocks, lengths};

  std::vector<float> sinks = {0.5f, 1.0f, -0.5f, 2.0f, 0.0f, 1.5f, -1.0f, 0.25f};
  ssmax::attention_options<ssmax::ssmax_policy> gpt_oss;
  gpt_oss.policy = ssmax::ssmax_policy(0.3, -0.4);  // as trained: b < 0
  gpt_oss.mask = ssmax::attention_mask::sliding_window(128);
  gpt_oss.logit.sinks = sinks.data(), gpt_oss.logit.sink_heads = H;

  ssmax::attention_options<ssmax::ssmax_policy> gemma;
  gemma.policy = ssmax::ssmax_policy(0.3, -0.4);
  gemma.mask = ssmax::attention_mask::causal_mask();
  gemma.logit.softcap = 2.0;

  const bool ok = step("sliding window 128 + sinks", gpt_oss, cache, k, v, L) &&
                  step("causal + soft-cap", gemma, cache, k, v, L);
  std::printf(ok ? "ok\n" : "FAILED\n");
  return ok ? 0 : 1;
}
