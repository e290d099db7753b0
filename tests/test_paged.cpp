// Paged KV cache (paged.hpp): the identity block table and a shuffled one give the contiguous
// call's results bit for bit (decode and chunked prefill, GQA, policies, both paths), which
// test_attention checks against the reference; bad tables and lengths are refused naming
// the field, nothing written. bf16 pools (float q and out, the serving case) give the
// contiguous bf16 call's results bit for bit and match the double reference on the pools'
// exact values within attention.hpp's bound.

#include <gtest/gtest.h>

#include <algorithm>
#include <numeric>
#include <random>
#include <ssmax/paged.hpp>
#include <vector>

#include "support/expect_error.hpp"
#include "support/stored_attention.hpp"

namespace ssmax::testing {
namespace {

constexpr index_t B = 3, H = 4, H_kv = 2, d = 16, block = 8, max_blocks = 6;
const index_t lengths[B] = {37, 8, 1};

/// A contiguous cache [B, capacity, H_kv, d] and the same tokens in a pool of blocks.
struct caches {
  index_t capacity = max_blocks * block, num_blocks = B * max_blocks + 3;
  std::vector<float> k, v, k_pool, v_pool;
  std::vector<index_t> table;

  explicit caches(bool shuffled) : table(static_cast<size_t>(B * max_blocks)) {
    std::mt19937 rng(9);
    std::normal_distribution<float> dist(0.0f, 1.0f);
    const index_t row = H_kv * d;
    k.resize(static_cast<size_t>(B * capacity * row));
    v.resize(k.size());
    for (auto* x : {&k, &v})
      for (auto& e : *x) e = dist(rng);
    std::vector<index_t> order(static_cast<size_t>(num_blocks));
    std::iota(order.begin(), order.end(), 0);
    if (shuffled) std::shuffle(order.begin(), order.end(), rng);
    std::copy(order.begin(), order.begin() + B * max_blocks, table.begin());
    k_pool.assign(static_cast<size_t>(num_blocks * block * row), 99.0f);
    v_pool.assign(k_pool.size(), 99.0f);
    for (index_t b = 0; b < B; ++b)
      for (index_t t = 0; t < capacity; ++t) {
        const index_t at = (table[b * max_blocks + t / block] * block + t % block) * row;
        const index_t from = (b * capacity + t) * row;
        std::copy(&k[from], &k[from] + row, &k_pool[at]);
        std::copy(&v[from], &v[from] + row, &v_pool[at]);
      }
  }
  paged_kv_cache<float> paged() const {
    return {k_pool.data(), v_pool.data(), num_blocks, block, H_kv, d,
            table.data(),  max_blocks,    lengths};
  }
};

template <class Policy>
void expect_paged_equals_contiguous(index_t n_q, const attention_options<Policy>& base) {
  std::mt19937 rng(3);
  std::normal_distribution<float> dist(0.0f, 1.0f);
  std::vector<float> q(static_cast<size_t>(B * n_q * H * d));
  for (auto& e : q) e = dist(rng);
  const auto qv = bshd_view(static_cast<const float*>(q.data()), B, n_q, H, d);
  for (bool shuffled : {false, true})
    for (auto path : {attention_path::fused, attention_path::materialised}) {
      const caches c(shuffled);
      attention_options<Policy> o = base;
      o.path = path;
      std::vector<float> want(q.size()), got(q.size()), lse_w(B * H * n_q), lse_g(lse_w.size());
      // The contiguous call over the longest cache (what the paged call's copy holds).
      const index_t L = *std::max_element(lengths, lengths + B);
      std::vector<float> k(static_cast<size_t>(B * L * H_kv * d)), v(k.size());
      for (index_t b = 0; b < B; ++b)
        for (index_t t = 0; t < L; ++t)
          for (index_t e = 0; e < H_kv * d; ++e) {
            const bool real = t < lengths[b];
            k[(b * L + t) * H_kv * d + e] = real ? c.k[(b * c.capacity + t) * H_kv * d + e] : 0.0f;
            v[(b * L + t) * H_kv * d + e] = real ? c.v[(b * c.capacity + t) * H_kv * d + e] : 0.0f;
          }
      attention_options<Policy> contiguous = o;
      contiguous.mask.key_lengths = lengths;
      attention(qv, bshd_view(static_cast<const float*>(k.data()), B, L, H_kv, d),
                bshd_view(static_cast<const float*>(v.data()), B, L, H_kv, d),
                bshd_view(want.data(), B, n_q, H, d), contiguous, {lse_w.data(), nullptr});
      paged_attention(qv, c.paged(), bshd_view(got.data(), B, n_q, H, d), o,
                      {lse_g.data(), nullptr});
      EXPECT_EQ(got, want) << "n_q " << n_q << (shuffled ? " shuffled" : " identity");
      EXPECT_EQ(lse_g, lse_w);
    }
}

TEST(Paged, DecodeAndChunkedPrefillEqualTheContiguousCall) {
  attention_options<ssmax_policy> o;
  o.policy = ssmax_policy(0.43, -0.2);
  o.mask = attention_mask::causal_mask();  // queries at the end of each sequence's cache
  expect_paged_equals_contiguous(1, o);
  expect_paged_equals_contiguous(5, o);
  attention_options<softmax_policy> window;
  window.mask = attention_mask::sliding_window(9);
  expect_paged_equals_contiguous(3, window);
}

/// bf16 pools with float q and out: the identity and a shuffled table equal the contiguous
/// bf16 call bitwise, and both match the double reference on the stored values.
template <class Policy>
void expect_bf16_pools_match(index_t n_q, const attention_options<Policy>& base, bool shuffled) {
  const index_t L = *std::max_element(lengths, lengths + B), row = H_kv * d;
  const stored_data<combo<f32, bf16, f32>> data(B, n_q, L, H, H_kv, d, 5);
  // Rows past a sequence's length are zero in the contiguous copy too (the gather's).
  std::vector<bf16> k = data.k, v = data.v;
  for (index_t b = 0; b < B; ++b)
    for (index_t e = lengths[b] * row; e < L * row; ++e)
      k[b * L * row + e] = v[b * L * row + e] = bf16(0.0f);
  const index_t num_blocks = B * max_blocks + 3;
  std::vector<index_t> order(static_cast<size_t>(num_blocks));
  std::iota(order.begin(), order.end(), 0);
  std::mt19937 rng(11);
  if (shuffled) std::shuffle(order.begin(), order.end(), rng);
  std::vector<bf16> k_pool(static_cast<size_t>(num_blocks * block * row), bf16(99.0f));
  std::vector<bf16> v_pool(k_pool.size(), bf16(99.0f));
  for (index_t b = 0; b < B; ++b)
    for (index_t t = 0; t < lengths[b]; ++t) {
      const index_t at = (order[b * max_blocks + t / block] * block + t % block) * row;
      std::copy(&k[(b * L + t) * row], &k[(b * L + t) * row] + row, &k_pool[at]);
      std::copy(&v[(b * L + t) * row], &v[(b * L + t) * row] + row, &v_pool[at]);
    }
  const paged_kv_cache<bf16> cache{k_pool.data(), v_pool.data(), num_blocks, block, H_kv, d,
                                   order.data(),  max_blocks,    lengths};
  const std::string what = std::string("bf16 pools, n_q ") + std::to_string(n_q) +
                           (shuffled ? " shuffled" : " identity");
  for (auto path : {attention_path::fused, attention_path::materialised}) {
    attention_options<Policy> o = base;
    o.path = path;
    attention_run<float> got, want;
    got.out.assign(data.q.size(), -7.0f), want.out = got.out;
    got.lse.assign(static_cast<size_t>(B * H * n_q), -7.0f), want.lse = got.lse;
    const auto qv = bshd_view(data.q.data(), B, n_q, H, d);
    paged_attention(qv, cache, bshd_view(got.out.data(), B, n_q, H, d), o,
                    {got.lse.data(), nullptr});
    attention_options<Policy> contiguous = o;
    contiguous.mask.key_lengths = lengths;
    attention(qv, bshd_view(static_cast<const bf16*>(k.data()), B, L, H_kv, d),
              bshd_view(static_cast<const bf16*>(v.data()), B, L, H_kv, d),
              bshd_view(want.out.data(), B, n_q, H, d), contiguous, {want.lse.data(), nullptr});
    EXPECT_EQ(got.out, want.out) << what;
    EXPECT_EQ(got.lse, want.lse) << what;
    expect_matches_reference(data.exact, contiguous, got, what);
  }
}

TEST(Paged, Bf16PoolsMatchTheContiguousCallAndTheReference) {
  attention_options<ssmax_policy> o;
  o.policy = ssmax_policy(0.43, -0.2);
  o.mask = attention_mask::causal_mask();
  attention_options<softmax_policy> window;
  window.mask = attention_mask::sliding_window(9);
  for (bool shuffled : {false, true}) {
    expect_bf16_pools_match(1, o, shuffled);  // decode
    expect_bf16_pools_match(5, o, shuffled);  // chunked prefill
    expect_bf16_pools_match(3, window, shuffled);
  }
}

TEST(Paged, BadTablesAndLengthsAreRefused) {
  const caches c(true);
  std::vector<float> q(static_cast<size_t>(B * H * d), 1.0f), out(q.size(), 7.0f);
  const auto qv = bshd_view(static_cast<const float*>(q.data()), B, 1, H, d);
  auto call = [&](paged_kv_cache<float> cache) {
    paged_attention(qv, cache, bshd_view(out.data(), B, 1, H, d));
  };
  std::vector<index_t> table = c.table;
  table[1] = c.num_blocks;  // sequence 0's second block: outside the pool
  auto bad = c.paged();
  bad.block_table = table.data();
  expect_rejects([&] { call(bad); }, "cache.block_table");
  const index_t too_long[B] = {max_blocks * block + 1, 1, 1};
  bad = c.paged();
  bad.cache_lengths = too_long;
  expect_rejects([&] { call(bad); }, "cache.cache_lengths");
  bad = c.paged();
  bad.kv_heads = 3;
  expect_rejects([&] { call(bad); }, "cache.kv_heads");
  for (float x : out) ASSERT_EQ(x, 7.0f);
}

}  // namespace
}  // namespace ssmax::testing
