// KV caches: cache_view over a batched cache [B, capacity, H_kv, d]
// with per-sequence lengths, attention_mask::cache, and where each sequence's queries sit.
// The expected positions and n below are written out by hand from the convention in
// mask.hpp (row i of sequence b at max(0, L_b - n_q) + i), never computed by visible_keys.

#include <gtest/gtest.h>

#include <algorithm>
#include <map>
#include <memory>
#include <mutex>
#include <ssmax/attention.hpp>
#include <ssmax/reference/attention.hpp>
#include <utility>
#include <vector>

#include "support/expect_error.hpp"

namespace {

using namespace ssmax;
using ssmax::index_t;
using ssmax::testing::expect_rejects;

/// A length policy that records every (position, visible) the operator asks it about,
/// with a multiplier that depends on the position (so a wrong position changes out).
struct recording_policy {
  using seen_set = std::map<std::pair<index_t, index_t>, int>;
  std::shared_ptr<seen_set> seen = std::make_shared<seen_set>();
  std::shared_ptr<std::mutex> lock = std::make_shared<std::mutex>();

  double multiplier(const row_position& row) const {
    std::lock_guard<std::mutex> guard(*lock);
    (*seen)[{row.position, row.visible}] = 1;
    return 1.0 + 0.25 * static_cast<double>(row.position);
  }
  index_t heads() const { return 0; }
  void validate(const char* /*function*/) const {}
  static constexpr bool learnable = false;
};

std::vector<float> ramp(index_t count, float step) {
  std::vector<float> x(static_cast<size_t>(count));
  for (index_t i = 0; i < count; ++i)
    x[static_cast<size_t>(i)] = static_cast<float>(((i * 37) % 23) - 11) * step;
  return x;
}

/// The (position, visible) pairs a call asks its policy about.
std::vector<std::pair<index_t, index_t>> positions_of(tensor_view<const float> q,
                                                      tensor_view<const float> kv,
                                                      const attention_mask& mask,
                                                      attention_path path) {
  std::vector<float> out(static_cast<size_t>(q.size()));
  attention_options<recording_policy> o;
  o.mask = mask;
  o.path = path;
  o.threads = 1;
  attention(q, kv, kv, bshd_view(out.data(), q.batch, q.seq, q.heads, q.dim), o);
  std::vector<std::pair<index_t, index_t>> rows;
  for (const auto& e : *o.policy.seen) rows.push_back(e.first);
  return rows;
}

TEST(KvCache, CacheViewSpansTheLongestSequence) {
  std::vector<float> cache(3 * 8 * 2 * 4);
  const index_t lengths[] = {5, 2, 7};
  const auto v = cache_view(cache.data(), 3, 8, 2, 4, lengths);
  EXPECT_EQ(v.batch, 3);
  EXPECT_EQ(v.seq, 7);
  EXPECT_EQ(v.heads, 2);
  EXPECT_EQ(v.dim, 4);
  EXPECT_EQ(v.stride_b, 8 * 2 * 4);
  EXPECT_EQ(v.stride_s, 2 * 4);
  EXPECT_EQ(v.stride_h, 4);
  EXPECT_EQ(&v(2, 1, 1, 3), cache.data() + 2 * 64 + 1 * 8 + 1 * 4 + 3);
  const index_t empty[] = {0, 0, 0};
  EXPECT_EQ(cache_view(cache.data(), 3, 8, 2, 4, empty).seq, 1);
  const index_t too_long[] = {5, 9, 7};
  expect_rejects([&] { cache_view(cache.data(), 3, 8, 2, 4, too_long); }, "lengths");
  expect_rejects([&] { cache_view(cache.data(), 3, 0, 2, 4, lengths); }, "capacity");
  expect_rejects([&] { cache_view(cache.data(), 3, 8, 2, 4, static_cast<index_t*>(nullptr)); },
                 "lengths");
}

// A ragged decode batch: one new query per sequence, caches holding 4, 6 and 1 keys.
// Each query sits at its own sequence's last key: positions 3, 5, 0 with n = 4, 6, 1.
TEST(KvCache, RaggedDecodeQueriesSitAtTheirOwnLastKey) {
  const index_t B = 3, capacity = 8, d = 4, lengths[] = {4, 6, 1};
  const std::vector<float> cache = ramp(B * capacity * d, 0.125f), q = ramp(B * d, 0.25f);
  const auto kv = cache_view(cache.data(), B, capacity, 1, d, lengths);
  const auto qv = bshd_view(q.data(), B, 1, 1, d);
  const std::vector<std::pair<index_t, index_t>> expected = {{0, 1}, {3, 4}, {5, 6}};
  for (attention_path path : {attention_path::fused, attention_path::materialised})
    EXPECT_EQ(positions_of(qv, kv, attention_mask::cache(lengths), path), expected);
}

// A right-padded prefill: 5 query rows over 5 key rows, of which 3 and 5 are real. The
// queries keep positions 0..4; sequence 0's rows see min(p + 1, 3) keys.
TEST(KvCache, RightPaddedPrefillKeepsPositionsFromZero) {
  const index_t B = 2, n = 5, d = 4, lengths[] = {3, 5};
  const std::vector<float> k = ramp(B * n * d, 0.125f), q = ramp(B * n * d, 0.25f);
  const auto kv = bshd_view(k.data(), B, n, 1, d);
  const auto qv = bshd_view(q.data(), B, n, 1, d);
  const std::vector<std::pair<index_t, index_t>> expected = {{0, 1}, {1, 2}, {2, 3}, {3, 3},
                                                             {3, 4}, {4, 3}, {4, 5}};
  for (attention_path path : {attention_path::fused, attention_path::materialised})
    EXPECT_EQ(positions_of(qv, kv, attention_mask::cache(lengths), path), expected);
}

// The batched ragged decode equals one call per sequence over exactly its own keys (no
// key_lengths there: the query's position is the tensor's n_k - 1), with a position-
// dependent policy, on both paths and in the reference.
TEST(KvCache, RaggedDecodeEqualsOneCallPerSequence) {
  const index_t B = 3, capacity = 9, H = 4, H_kv = 2, d = 8, lengths[] = {9, 2, 5};
  const std::vector<float> k = ramp(B * capacity * H_kv * d, 0.0625f);
  const std::vector<float> v = ramp(B * capacity * H_kv * d, 0.5f);
  const std::vector<float> q = ramp(B * H * d, 0.125f);
  mistral_policy mistral;
  mistral.original_length = 2;
  mistral.beta = 0.5;
  attention_options<mistral_policy> o;
  o.policy = mistral;
  o.mask = attention_mask::cache(lengths);
  const auto kv = cache_view(k.data(), B, capacity, H_kv, d, lengths);
  const auto vv = cache_view(v.data(), B, capacity, H_kv, d, lengths);
  const auto qv = bshd_view(q.data(), B, 1, H, d);
  const auto ref = reference::attention(qv, kv, vv, o.policy, o.mask, 1.0 / std::sqrt(8.0));
  for (attention_path path : {attention_path::fused, attention_path::materialised}) {
    o.path = path;
    std::vector<float> out(q.size());
    attention(qv, kv, vv, bshd_view(out.data(), B, 1, H, d), o);
    for (index_t b = 0; b < B; ++b) {
      attention_options<mistral_policy> one = o;
      one.mask = attention_mask::causal_mask();
      const index_t off = b * capacity * H_kv * d;
      std::vector<float> alone(static_cast<size_t>(H * d));
      attention(bshd_view(q.data() + b * H * d, 1, 1, H, d),
                bshd_view(k.data() + off, 1, lengths[b], H_kv, d),
                bshd_view(v.data() + off, 1, lengths[b], H_kv, d),
                bshd_view(alone.data(), 1, 1, H, d), one);
      for (index_t e = 0; e < H * d; ++e) {
        const auto i = static_cast<size_t>(b * H * d + e);
        EXPECT_NEAR(out[i], alone[static_cast<size_t>(e)], 1e-5) << "b " << b << " e " << e;
        EXPECT_NEAR(ref.out[i], alone[static_cast<size_t>(e)], 1e-5) << "reference, b " << b;
      }
    }
  }
}

TEST(KvCache, SlidingWindowOfZeroIsRejected) {
  expect_rejects([] { attention_mask::sliding_window(0); }, "w");
  expect_rejects([] { attention_mask::sliding_window(-2); }, "w");
  EXPECT_EQ(attention_mask::sliding_window(1).window, 1);
}

// A causal query past the last key sees every key (documented in mask.hpp).
TEST(KvCache, CausalQueryPastTheKeysSeesEveryKey) {
  const index_t n_k = 3, d = 4;
  const std::vector<float> k = ramp(n_k * d, 0.125f), q = ramp(2 * d, 0.25f);
  const auto rows = positions_of(bshd_view(q.data(), 1, 2, 1, d), bshd_view(k.data(), 1, n_k, 1, d),
                                 attention_mask::causal_mask(7), attention_path::fused);
  const std::vector<std::pair<index_t, index_t>> expected = {{7, 3}, {8, 3}};
  EXPECT_EQ(rows, expected);
}

}  // namespace
