// Paged KV cache (paged.hpp). Both paths read the pools in place through the block table
// and must give the contiguous call's results bit for bit (the identity table and a
// shuffled one; pages smaller than, straddling and larger than a key block; decode split
// into chunks; decode and chunked prefill, GQA, policies, logit extras, threads), for float
// and bf16 pools (float q and out, the serving case), and match the double reference on the
// pools' exact values within the operator's bound (the opt-in bf16 weights within their
// looser one). Bad tables and lengths are refused naming the field, nothing written.

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>
#include <ssmax/paged.hpp>
#include <string>
#include <vector>

#include "support/expect_error.hpp"
#include "support/stored_attention.hpp"

namespace ssmax::testing {
namespace {

constexpr index_t H = 4, H_kv = 2, d = 16, row = H_kv * d;

/// A cache's page size, table width and per-sequence lengths.
struct geometry {
  index_t block, max_blocks;
  std::vector<index_t> lengths;
  index_t batch() const { return static_cast<index_t>(lengths.size()); }
  index_t longest() const { return *std::max_element(lengths.begin(), lengths.end()); }
};
const geometry small{8, 6, {37, 8, 1}};
const geometry straddling{7, 100, {613, 300, 1}};      // pages cross key blocks (kKeyBlock 256)
const geometry long_decode{16, 160, {2500, 17, 256}};  // decode split into kDecodeChunk chunks
const geometry big_pages{512, 2, {700, 3, 512}};       // pages larger than a key block

/// The tokens of `data` (k, v [B, L, H_kv, d], rows past each length zeroed) in a pool of
/// blocks through the identity or a shuffled table, two spare blocks filled with 99.
template <class KV>  // storage type of the pools
struct pool {
  index_t num_blocks;
  std::vector<KV> k, v;
  std::vector<index_t> table;

  pool(const geometry& g, const std::vector<KV>& kc, const std::vector<KV>& vc, bool shuffled)
      : num_blocks(g.batch() * g.max_blocks + 2) {
    table.resize(static_cast<size_t>(num_blocks));
    std::iota(table.begin(), table.end(), 0);
    std::mt19937 rng(11);
    if (shuffled) std::shuffle(table.begin(), table.end(), rng);
    k.assign(static_cast<size_t>(num_blocks * g.block * row), KV(99.0f));
    v.assign(k.size(), KV(99.0f));
    const index_t L = g.longest();
    for (index_t b = 0; b < g.batch(); ++b)
      for (index_t t = 0; t < g.lengths[b]; ++t) {
        const index_t at = (table[b * g.max_blocks + t / g.block] * g.block + t % g.block) * row;
        std::copy(&kc[(b * L + t) * row], &kc[(b * L + t) * row] + row, &k[at]);
        std::copy(&vc[(b * L + t) * row], &vc[(b * L + t) * row] + row, &v[at]);
      }
  }
  paged_kv_cache<KV> cache(const geometry& g) const {
    return {k.data(), v.data(),     num_blocks,   g.block,         H_kv,
            d,        table.data(), g.max_blocks, g.lengths.data()};
  }
};

/// paged_attention against the contiguous call (bitwise) and the reference, for both
/// tables, both paths and 1 or 2 threads.
template <class KV, class Policy, class Q = f32>  // pools' type; a policy; q's type
void check_paged(const geometry& g, index_t n_q, const attention_options<Policy>& base,
                 const std::string& name) {
  const index_t B = g.batch(), L = g.longest();
  const stored_data<combo<Q, KV, f32>> data(B, n_q, L, H, H_kv, d, 5);
  std::vector<KV> k = data.k, v = data.v;  // rows past a length zero (the gather's)
  for (index_t b = 0; b < B; ++b)
    for (index_t e = g.lengths[b] * row; e < L * row; ++e)
      k[b * L * row + e] = v[b * L * row + e] = KV(0.0f);
  const auto qv = bshd_view(data.q.data(), B, n_q, H, d);
  for (bool shuffled : {false, true}) {
    const pool<KV> pl(g, k, v, shuffled);
    for (auto path : {attention_path::fused, attention_path::materialised})
      for (int threads : {1, 2}) {
        const std::string what = name + " n_q " + std::to_string(n_q) +
                                 (shuffled ? " shuffled" : " identity") +
                                 (path == attention_path::fused ? " fused" : " materialised") +
                                 " threads " + std::to_string(threads);
        attention_options<Policy> o = base;
        o.path = path;
        o.threads = threads;
        attention_run<float> got, want;
        for (attention_run<float>* r : {&got, &want}) {
          r->out.assign(data.q.size(), -7.0f);
          r->lse.assign(static_cast<size_t>(B * H * n_q), -7.0f);
        }
        paged_attention(qv, pl.cache(g), bshd_view(got.out.data(), B, n_q, H, d), o,
                        {got.lse.data(), nullptr});
        attention_options<Policy> contiguous = o;
        contiguous.mask.key_lengths = g.lengths.data();
        attention(qv, bshd_view(static_cast<const KV*>(k.data()), B, L, H_kv, d),
                  bshd_view(static_cast<const KV*>(v.data()), B, L, H_kv, d),
                  bshd_view(want.out.data(), B, n_q, H, d), contiguous, {want.lse.data(), nullptr});
        EXPECT_EQ(got.out, want.out) << what;
        EXPECT_EQ(got.lse, want.lse) << what;
        // The opt-in bf16 weights loosen the bound by 2^-8 sum_j a_ij |v_jc| (attention.hpp).
        const double weights_unit = o.allow_bf16_weights ? std::ldexp(1.0, -8) : 0.0;
        if (threads == 1)
          expect_matches_reference(data.exact, contiguous, got, what, 0.0, 0.0, false,
                                   weights_unit);
      }
  }
}

/// Decode (n_q = 1), a decode block of 3 rows and chunked prefill (5 and 20 rows: the
/// GEMM path) over every geometry, for one storage type.
template <class KV>
void check_every_geometry(const char* type) {
  attention_options<ssmax_policy> ss;
  ss.policy = ssmax_policy(0.43, -0.2);  // as trained: b < 0
  ss.mask = attention_mask::causal_mask();
  attention_options<softmax_policy> window;
  window.mask = attention_mask::sliding_window(300);
  attention_options<qwen_logn_policy> logn;
  logn.policy.train_length = 64;
  logn.mask = attention_mask::causal_mask();
  const std::string t = type;
  for (const geometry* g : {&small, &straddling, &long_decode, &big_pages}) {
    const std::string name = t + " block " + std::to_string(g->block);
    for (index_t n_q : {1, 3, 5, 20}) check_paged<KV>(*g, n_q, ss, name + " ssmax");
    check_paged<KV>(*g, 1, window, name + " softmax window");
    check_paged<KV>(*g, 5, logn, name + " qwen-logn");
  }
}

TEST(Paged, FloatPoolsEqualTheContiguousCallAndMatchTheReference) {
  check_every_geometry<float>("f32");
}

TEST(Paged, Bf16PoolsEqualTheContiguousCallAndMatchTheReference) {
  check_every_geometry<bf16>("bf16");
}

TEST(Paged, LogitExtrasThroughTheTable) {
  const std::vector<float> slopes = alibi_slopes(H), sinks = {0.5f, -1.0f, 2.0f, 0.0f};
  attention_options<ssmax_policy> o;
  o.policy = ssmax_policy(0.43, -0.2);
  o.mask = attention_mask::causal_mask();
  o.logit.softcap = 5.0;
  o.logit.sinks = sinks.data(), o.logit.sink_heads = H;
  o.logit.alibi_slopes = slopes.data(), o.logit.alibi_heads = H;
  for (index_t n_q : {1, 20}) check_paged<bf16>(straddling, n_q, o, "bf16 extras");
}

TEST(Paged, Bf16QueriesAndPoolsTakeTheBf16ScoreGemmThroughTheTable) {
  // bf16 q and k: on AVX512-BF16 builds the prefill's scores are vdpbf16ps products of the
  // pair-packed K^T, packed through the block table (kernels/prefill_bf16.hpp).
  attention_options<ssmax_policy> o;
  o.policy = ssmax_policy(0.43, -0.2);
  o.mask = attention_mask::causal_mask();
  for (const geometry* g : {&straddling, &big_pages})
    for (index_t n_q : {1, 20, 130}) check_paged<bf16, ssmax_policy, bf16>(*g, n_q, o, "bf16 q");
}

TEST(Paged, Bf16WeightsThroughTheTable) {
  // The opt-in bf16 P V (attention_options::allow_bf16_weights): on AVX512-BF16 builds the
  // prefill's V is pair-packed through the block table (gemm_bf16.hpp, pack_v_bf16); the
  // shuffled table's result must still equal the contiguous call's bit for bit. Other
  // builds compute as without the permission, which the tests above cover.
  if (!kernels::detail::kHaveAvx512Bf16) GTEST_SKIP() << "no bf16 P V in this build";
  attention_options<ssmax_policy> o;
  o.policy = ssmax_policy(0.43, -0.2);
  o.mask = attention_mask::causal_mask();
  o.allow_bf16_weights = true;
  o.bf16 = bf16_method::dot_products;
  for (const geometry* g : {&straddling, &big_pages})
    for (index_t n_q : {20, 130}) {
      check_paged<bf16, ssmax_policy, bf16>(*g, n_q, o, "bf16 weights, bf16 q");
      check_paged<bf16>(*g, n_q, o, "bf16 weights, f32 q");
    }
}

TEST(Paged, BadTablesAndLengthsAreRefused) {
  const geometry& g = small;
  const index_t B = g.batch();
  std::vector<float> kc(static_cast<size_t>(B * g.longest() * row), 1.0f);
  const pool<float> pl(g, kc, kc, true);
  std::vector<float> q(static_cast<size_t>(B * H * d), 1.0f), out(q.size(), 7.0f);
  const auto qv = bshd_view(static_cast<const float*>(q.data()), B, 1, H, d);
  auto call = [&](paged_kv_cache<float> cache) {
    paged_attention(qv, cache, bshd_view(out.data(), B, 1, H, d));
  };
  std::vector<index_t> table = pl.table;
  table[1] = pl.num_blocks;  // sequence 0's second block: outside the pool
  auto bad = pl.cache(g);
  bad.block_table = table.data();
  expect_rejects([&] { call(bad); }, "cache.block_table");
  const index_t too_long[3] = {g.max_blocks * g.block + 1, 1, 1};
  bad = pl.cache(g);
  bad.cache_lengths = too_long;
  expect_rejects([&] { call(bad); }, "cache.cache_lengths");
  bad = pl.cache(g);
  bad.kv_heads = 3;
  expect_rejects([&] { call(bad); }, "cache.kv_heads");
  // out overlapping a pool: refused by the in-place path's own overlap check.
  expect_rejects(
      [&] {
        paged_attention(qv, pl.cache(g), bshd_view(const_cast<float*>(pl.v.data()), B, 1, H, d));
      },
      "out");
  for (float x : out) ASSERT_EQ(x, 7.0f);
}

}  // namespace
}  // namespace ssmax::testing
