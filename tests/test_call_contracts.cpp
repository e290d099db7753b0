// What a call promises its caller beyond the numbers: lengths a view carries are honoured
// (or a mask that contradicts them refused), lengths, offsets and block tables are read as
// int32 or int64 in place, no output may overlap any array the call reads (named as the
// caller wrote it), and head_view takes the matrices docs/api.md shows. Expected values are
// written out: a cache whose values are all 1 has output 1 (within the float bound)
// whatever its padding holds.

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <ssmax/attention_backward.hpp>
#include <ssmax/paged.hpp>
#include <string>
#include <vector>

#include "support/expect_error.hpp"

namespace ssmax::testing {
namespace {

constexpr index_t B = 3, H = 2, d = 8, capacity = 40;
const std::vector<index_t> kLengths = {5, 40, 1};

/// A cache [B, capacity, H, d] whose real rows hold `value` (keys from a ramp) and whose
/// padding holds `pad`.
struct padded_cache {
  std::vector<float> k, v;
  padded_cache(float value, float pad) {
    k.assign(static_cast<size_t>(B * capacity * H * d), pad);
    v = k;
    for (index_t b = 0; b < B; ++b)
      for (index_t t = 0; t < kLengths[b]; ++t)
        for (index_t e = 0; e < H * d; ++e) {
          const size_t at = static_cast<size_t>((b * capacity + t) * H * d + e);
          k[at] = 0.1f * static_cast<float>((t * 7 + e) % 5) - 0.2f;
          v[at] = value;
        }
  }
};

template <class Lengths>  // index_t or std::int32_t
std::vector<float> run_cache(const padded_cache& c, const Lengths* lengths,
                             const attention_mask& mask, attention_path path, index_t n_q = 2) {
  std::vector<float> q(static_cast<size_t>(B * n_q * H * d), 0.3f), out(q.size(), -7.0f);
  attention_options<ssmax_policy> o;
  o.policy = ssmax_policy(0.5, -0.1);
  o.mask = mask;
  o.path = path;
  const float* k = c.k.data();
  const float* v = c.v.data();
  attention(bshd_view(static_cast<const float*>(q.data()), B, n_q, H, d),
            cache_view(k, B, capacity, H, d, lengths), cache_view(v, B, capacity, H, d, lengths),
            bshd_view(out.data(), B, n_q, H, d), o);
  return out;
}

/// attention.hpp's float bound for out when every value is 1: eps (2 (d + 2) Z + n + 64),
/// Z = max_j sum_c |m scale q_c k_jc| <= d |m| scale max|q| max|k| (q 0.3, |k| <= 0.2,
/// m = 0.5 log n - 0.1 with n <= capacity).
double unit_values_bound() {
  const double m = 0.5 * std::log(double(capacity)) - 0.1, scale = 1.0 / std::sqrt(double(d));
  const double Z = d * m * scale * 0.3 * 0.2;
  return std::numeric_limits<float>::epsilon() * (2.0 * (d + 2) * Z + capacity + 64);
}

TEST(ViewLengths, ACacheViewsLengthsAreHonouredWhateverTheMask) {
  // Every real value is 1, the padding 100 (or NaN): out is 1 within the float bound on
  // every row that sees a key, whatever the mask, since the padding is never attended.
  for (float pad : {100.0f, std::numeric_limits<float>::quiet_NaN()})
    for (auto path : {attention_path::fused, attention_path::materialised})
      for (const attention_mask& mask :
           {attention_mask::none(), attention_mask::causal_mask(),
            attention_mask::local_window(3, 0), attention_mask::cache(kLengths.data())}) {
        const padded_cache c(1.0f, pad);
        for (float x : run_cache(c, kLengths.data(), mask, path))
          ASSERT_NEAR(x, 1.0f, unit_values_bound()) << pad;
      }
}

TEST(ViewLengths, Int32LengthsGiveTheInt64Result) {
  const padded_cache c(0.0f, 3.0f);
  padded_cache ramp = c;
  for (size_t i = 0; i < ramp.v.size(); ++i) ramp.v[i] = static_cast<float>(i % 13) * 0.1f;
  const std::vector<std::int32_t> lengths32(kLengths.begin(), kLengths.end());
  for (auto path : {attention_path::fused, attention_path::materialised}) {
    EXPECT_EQ(run_cache(ramp, lengths32.data(), attention_mask::causal_mask(), path),
              run_cache(ramp, kLengths.data(), attention_mask::causal_mask(), path));
    attention_mask m32 = attention_mask::key_padding(lengths32.data());
    m32.causal = true;
    EXPECT_EQ(run_cache(ramp, kLengths.data(), m32, path),
              run_cache(ramp, kLengths.data(), attention_mask::causal_mask(), path));
  }
}

TEST(ViewLengths, VarlenTakesInt32Offsets) {
  // Two packed sequences of 3 and 5 tokens, all values 1 in the first and 2 in the second.
  const std::vector<std::int32_t> cu32 = {0, 3, 8};
  const std::vector<index_t> cu64 = {0, 3, 8};
  std::vector<float> q(8 * H * d, 0.2f), k(q.size()), v(q.size()), a(q.size()), b(q.size());
  for (size_t i = 0; i < k.size(); ++i) {
    k[i] = static_cast<float>(i % 7) * 0.05f;
    v[i] = i < static_cast<size_t>(3 * H * d) ? 1.0f : 2.0f;
  }
  attention_options<> o;
  o.mask = attention_mask::varlen(cu32.data(), cu32.data(), 2, true);
  attention(bshd_view(static_cast<const float*>(q.data()), 1, 8, H, d),
            bshd_view(static_cast<const float*>(k.data()), 1, 8, H, d),
            bshd_view(static_cast<const float*>(v.data()), 1, 8, H, d),
            bshd_view(a.data(), 1, 8, H, d), o);
  o.mask = attention_mask::varlen(cu64.data(), cu64.data(), 2, true);
  attention(bshd_view(static_cast<const float*>(q.data()), 1, 8, H, d),
            bshd_view(static_cast<const float*>(k.data()), 1, 8, H, d),
            bshd_view(static_cast<const float*>(v.data()), 1, 8, H, d),
            bshd_view(b.data(), 1, 8, H, d), o);
  EXPECT_EQ(a, b);
  // Within the float bound eps max|v| (2 (d + 2) Z + n + 64), Z <= d 0.3^2 / sqrt(d).
  const double bound = std::numeric_limits<float>::epsilon() * 2.0 *
                       (2.0 * (d + 2) * d * 0.09 / std::sqrt(double(d)) + 8 + 64);
  for (size_t i = 0; i < a.size(); ++i)
    ASSERT_NEAR(a[i], i < static_cast<size_t>(3 * H * d) ? 1.0f : 2.0f, bound) << i;
}

TEST(ViewLengths, ContradictingLengthsAreRefused) {
  const padded_cache c(1.0f, 100.0f);
  std::vector<float> q(static_cast<size_t>(B * H * d), 0.3f), out(q.size(), -7.0f);
  const auto qv = bshd_view(static_cast<const float*>(q.data()), B, 1, H, d);
  const float* k = c.k.data();
  const float* v = c.v.data();
  const auto kv = cache_view(k, B, capacity, H, d, kLengths.data());
  const auto vv = cache_view(v, B, capacity, H, d, kLengths.data());
  const auto ov = bshd_view(out.data(), B, 1, H, d);
  const std::vector<index_t> other = {5, 39, 1};
  attention_options<> o;
  o.mask = attention_mask::cache(other.data());
  expect_rejects([&] { attention(qv, kv, vv, ov, o); }, "options.mask.key_lengths");
  expect_rejects([&] { attention(qv, kv, cache_view(v, B, capacity, H, d, other.data()), ov); },
                 "v");
  expect_rejects([&] { attention(qv, kv, bshd_view(v, B, capacity, H, d), ov); }, "v");
  try {  // the message says what v lacks, and how to fix it
    attention(qv, kv, bshd_view(v, B, capacity, H, d), ov);
  } catch (const argument_error& e) {
    EXPECT_NE(std::string(e.what()).find("carries no seq_lengths"), std::string::npos) << e.what();
  }
  // Lengths grown past the longest one the view was made with: make the view again.
  std::vector<index_t> grown = {6, 2, 1};
  const auto small_view = cache_view(k, B, capacity, H, d, grown.data());  // seq 6
  grown[0] = 7;
  try {
    attention(qv, small_view, small_view, ov);
    ADD_FAILURE() << "no error for grown lengths";
  } catch (const argument_error& e) {
    EXPECT_EQ(e.argument(), "k");
    EXPECT_NE(std::string(e.what()).find("make the view again"), std::string::npos) << e.what();
  }
  expect_rejects([&] { attention(qv, bshd_view(k, B, capacity, H, d), vv, ov); }, "k");
  const std::vector<index_t> cu = {0, 1, 2, 3};
  o.mask = attention_mask::varlen(cu.data(), cu.data(), 3);
  expect_rejects([&] { attention(qv, kv, vv, ov, o); }, "k");
  for (float x : out) ASSERT_EQ(x, -7.0f);
}

TEST(ViewLengths, TheBackwardHonoursThemAndZeroesThePaddingsGradients) {
  const padded_cache nan(1.0f, std::numeric_limits<float>::quiet_NaN());
  padded_cache zero(1.0f, 0.0f);
  const index_t n_q = 2;
  std::vector<float> q(static_cast<size_t>(B * n_q * H * d), 0.3f), dout(q.size());
  for (size_t i = 0; i < dout.size(); ++i) dout[i] = static_cast<float>(i % 5) - 2.0f;
  auto run = [&](const padded_cache& c, bool view_lengths) {
    const float* k = c.k.data();
    const float* v = c.v.data();
    attention_options<> o;
    o.mask = attention_mask::causal_mask();
    auto kv = view_lengths ? cache_view(k, B, capacity, H, d, kLengths.data())
                           : bshd_view(k, B, capacity, H, d);
    auto vv = view_lengths ? cache_view(v, B, capacity, H, d, kLengths.data())
                           : bshd_view(v, B, capacity, H, d);
    if (!view_lengths) o.mask.key_lengths = kLengths.data();
    std::vector<float> out(q.size()), lse(static_cast<size_t>(B * H * n_q));
    std::vector<float> dq(q.size()), dk(c.k.size(), -7.0f), dv(c.k.size(), -7.0f);
    const auto qv = bshd_view(static_cast<const float*>(q.data()), B, n_q, H, d);
    attention(qv, kv, vv, bshd_view(out.data(), B, n_q, H, d), o, {lse.data(), nullptr});
    attention_gradients<float> g{bshd_view(dq.data(), B, n_q, H, d),
                                 bshd_view(dk.data(), B, capacity, H, d),
                                 bshd_view(dv.data(), B, capacity, H, d)};
    g.dk.seq = g.dv.seq = kv.seq;  // the view's rows: the longest length
    g.dk.stride_b = g.dv.stride_b = capacity * H * d;
    attention_backward(qv, kv, vv, bshd_view(static_cast<const float*>(out.data()), B, n_q, H, d),
                       bshd_view(static_cast<const float*>(dout.data()), B, n_q, H, d),
                       static_cast<const float*>(lse.data()), g, o);
    std::vector<float> all = dq;
    for (index_t b = 0; b < B; ++b)
      for (index_t t = 0; t < kv.seq; ++t)
        for (index_t e = 0; e < H * d; ++e) {
          const size_t at = static_cast<size_t>((b * capacity + t) * H * d + e);
          if (t >= kLengths[b]) {
            EXPECT_EQ(dk[at], 0.0f) << b << " " << t;
            EXPECT_EQ(dv[at], 0.0f) << b << " " << t;
          }
          all.push_back(dk[at]);
          all.push_back(dv[at]);
        }
    return all;
  };
  EXPECT_EQ(run(nan, true), run(zero, false));
}

// Outputs must not overlap any array the call reads; the error names both as the caller
// wrote them, and nothing is written.
TEST(Overlaps, OutputsOverlappingTheMasksArraysAreRefused) {
  const index_t n_q = 4, n_k = 6;
  std::vector<float> q(static_cast<size_t>(B * n_q * H * d), 0.5f), k(B * n_k * H * d, 0.25f);
  // One buffer holds out, then lse, then room for the arrays placed inside them below.
  std::vector<float> buf(q.size() + B * H * n_q + 64, -7.0f);
  const auto qv = bshd_view(static_cast<const float*>(q.data()), B, n_q, H, d);
  const auto kv = bshd_view(static_cast<const float*>(k.data()), B, n_k, H, d);
  const auto ov = bshd_view(buf.data(), B, n_q, H, d);
  float* lse = buf.data() + q.size();
  auto expect_refused = [&](const attention_options<>& o, const char* argument, const char* input) {
    std::vector<float> before = buf;
    try {
      attention(qv, kv, kv, ov, o, {lse, nullptr});
      ADD_FAILURE() << "no error for " << argument << " over " << input;
    } catch (const argument_error& e) {
      EXPECT_EQ(e.argument(), argument) << e.what();
      EXPECT_NE(std::string(e.what()).find(input), std::string::npos) << e.what();
    }
    // The arrays placed in buf are the only change: nothing written by the call.
    EXPECT_EQ(buf, before);
  };
  // key_lengths stored inside lse's memory.
  auto* in_lse = reinterpret_cast<index_t*>(lse);
  in_lse[0] = 6, in_lse[1] = 2, in_lse[2] = 3;
  attention_options<> o;
  o.mask = attention_mask::key_padding(in_lse);
  expect_refused(o, "extras.lse", "options.mask.key_lengths");
  // The same as int32, inside out.
  auto* in_out = reinterpret_cast<std::int32_t*>(buf.data() + 5);
  in_out[0] = 6, in_out[1] = 2, in_out[2] = 3;
  o.mask = attention_mask::key_padding(in_out);
  expect_refused(o, "out", "options.mask.key_lengths");
  // row_n, a boolean mask and packed offsets inside out.
  o = {};
  auto* row_n = reinterpret_cast<index_t*>(buf.data() + 2);
  std::fill(row_n, row_n + B * n_q, index_t(3));
  o.mask.row_n = row_n;
  expect_refused(o, "out", "options.mask.row_n");
  o = {};
  auto* allowed = reinterpret_cast<bool*>(buf.data() + 40);
  std::fill(allowed, allowed + n_q * n_k, true);
  o.mask = attention_mask::boolean(allowed, n_k);
  expect_refused(o, "out", "options.mask.allowed");
}

TEST(Overlaps, PackedOffsetsInsideOutAreRefused) {
  std::vector<float> q(8 * H * d, 0.5f), buf(8 * H * d, -7.0f);
  auto* cu = reinterpret_cast<std::int32_t*>(buf.data() + 9);
  cu[0] = 0, cu[1] = 3, cu[2] = 8;
  attention_options<> o;
  o.mask = attention_mask::varlen(cu, cu, 2, true);
  expect_rejects(
      [&] {
        attention(bshd_view(static_cast<const float*>(q.data()), 1, 8, H, d),
                  bshd_view(static_cast<const float*>(q.data()), 1, 8, H, d),
                  bshd_view(static_cast<const float*>(q.data()), 1, 8, H, d),
                  bshd_view(buf.data(), 1, 8, H, d), o);
      },
      "out");
}

TEST(Overlaps, GradientsOverlappingTheKeyLengthsAreRefused) {
  const index_t n = 4;
  std::vector<float> q(static_cast<size_t>(B * n * H * d), 0.5f), out(q.size()), dout(q.size());
  std::vector<float> lse(static_cast<size_t>(B * H * n)), dq(q.size()), dk(q.size()), dv(q.size());
  const auto view = [&](std::vector<float>& x) { return bshd_view(x.data(), B, n, H, d); };
  const auto cview = [&](const std::vector<float>& x) {
    return bshd_view(static_cast<const float*>(x.data()), B, n, H, d);
  };
  std::vector<index_t> small = {4, 2, 1};
  attention_options<> o;
  o.mask = attention_mask::key_padding(small.data());
  attention(cview(q), cview(q), cview(q), view(out), o, {lse.data(), nullptr});
  auto* in_dk = reinterpret_cast<index_t*>(dk.data() + 8);
  std::copy(small.begin(), small.end(), in_dk);
  o.mask.key_lengths = in_dk;
  try {
    attention_backward(cview(q), cview(q), cview(q), cview(out), cview(dout),
                       static_cast<const float*>(lse.data()),
                       attention_gradients<float>{view(dq), view(dk), view(dv)}, o);
    ADD_FAILURE() << "no error";
  } catch (const argument_error& e) {
    EXPECT_EQ(e.argument(), "grads.dk") << e.what();
    EXPECT_NE(std::string(e.what()).find("options.mask.key_lengths"), std::string::npos);
  }
}

TEST(Overlaps, PagedOutputsAreCheckedAgainstTheCacheByItsNames) {
  const index_t block = 4, blocks = 6, row = H * d;
  std::vector<float> pool(static_cast<size_t>(blocks * block * row), 0.5f);
  std::vector<float> q(static_cast<size_t>(B * row), 0.5f), out(q.size(), -7.0f);
  std::vector<index_t> table = {0, 1, 2, 3, 4, 5}, lengths = {4, 8, 1};
  paged_kv_cache<float> c{pool.data(), pool.data(),  blocks, block,         H,
                          d,           table.data(), 2,      lengths.data()};
  const auto qv = bshd_view(static_cast<const float*>(q.data()), B, 1, H, d);
  auto expect_names = [&](const paged_kv_cache<float>& cache, float* o, float* lse,
                          const char* argument, const char* input) {
    try {
      paged_attention(qv, cache, bshd_view(o, B, 1, H, d), attention_options<>{}, {lse, nullptr});
      ADD_FAILURE() << "no error for " << argument << " over " << input;
    } catch (const argument_error& e) {
      EXPECT_EQ(e.argument(), argument) << e.what();
      EXPECT_NE(std::string(e.what()).find(std::string("'") + input + "'"), std::string::npos)
          << e.what();
    }
  };
  expect_names(c, pool.data() + 5, nullptr, "out", "cache.k_pool");
  paged_kv_cache<float> split = c;
  std::vector<float> vpool = pool;
  split.v_pool = vpool.data();
  expect_names(split, vpool.data() + 5, nullptr, "out", "cache.v_pool");
  // The block table and the lengths stored inside out, then inside lse.
  std::vector<float> room(q.size() + 64, 0.0f);
  auto* t = reinterpret_cast<index_t*>(room.data() + 4);
  std::copy(table.begin(), table.end(), t);
  paged_kv_cache<float> in_out = c;
  in_out.block_table = t;
  expect_names(in_out, room.data(), nullptr, "out", "cache.block_table");
  std::vector<float> lse(static_cast<size_t>(B * H) + 16);
  auto* l = reinterpret_cast<std::int32_t*>(lse.data() + 1);
  l[0] = 4, l[1] = 8, l[2] = 1;
  paged_kv_cache<float> in_lse = c;
  in_lse.cache_lengths = l;
  expect_names(in_lse, out.data(), lse.data(), "extras.lse", "cache.cache_lengths");
  for (float x : out) ASSERT_EQ(x, -7.0f);
}

TEST(Overlaps, BlocksSharedBySeveralLogicalBlocksLeaveMemoryAfterThePoolFree) {
  // One token per block, a pool of one block that the table uses twice (a sequence of 2
  // tokens): the logical keys outnumber the pool's rows, and the weights and lse placed
  // right after the pool's single row overlap nothing the call reads.
  std::vector<float> k_buf(4, 0.5f), v_pool(1, 0.25f), q(1, 1.0f), out(1, -7.0f);
  const std::int64_t table[] = {0, 0}, lengths[] = {2};
  paged_kv_cache<float> c{k_buf.data(), v_pool.data(), 1, 1, 1, 1, table, 2, lengths};
  attention_options<> o;
  o.path = attention_path::materialised;
  float* weights = k_buf.data() + 1;
  float* lse = k_buf.data() + 3;
  paged_attention(bshd_view(q.data(), 1, 1, 1, 1), c, bshd_view(out.data(), 1, 1, 1, 1), o,
                  {lse, weights});
  // Two equal keys: weights 1/2 each, out the value 0.25, lse = 2 * 0.5 + log 2 (scale 1).
  EXPECT_EQ(weights[0], 0.5f);
  EXPECT_EQ(weights[1], 0.5f);
  EXPECT_EQ(out[0], 0.25f);
  EXPECT_NEAR(lse[0], 0.5 + std::log(2.0), 4 * std::numeric_limits<float>::epsilon());
}

TEST(Overlaps, PoolSizesBeyondTheIndexTypeAreRefusedByName) {
  std::vector<float> pool(8, 0.5f), q(8, 0.5f), out(8, -7.0f);
  const std::int64_t table[] = {0, 0}, lengths[] = {0};
  paged_kv_cache<float> c{pool.data(), pool.data(), index_t(1) << 40, index_t(1) << 30, 1, 8,
                          table,       2,           lengths};
  expect_rejects(
      [&] {
        paged_attention(bshd_view(q.data(), 1, 1, 1, 8), c, bshd_view(out.data(), 1, 1, 1, 8));
      },
      "cache.num_blocks");
  c.num_blocks = 1, c.block_size = 4, c.max_blocks = std::numeric_limits<index_t>::max() / 2;
  expect_rejects(
      [&] {
        paged_attention(bshd_view(q.data(), 1, 1, 1, 8), c, bshd_view(out.data(), 1, 1, 1, 8));
      },
      "cache.max_blocks");
  for (float x : out) ASSERT_EQ(x, -7.0f);
}

TEST(HeadView, TakesRowMatricesConstOrNotForMixedTypeCalls) {
  // One head with bf16 q, k, v and a float out, each wrapped with head_view: the call
  // docs/api.md shows. Every value 1: out is exactly 1.
  row_matrix<Eigen::bfloat16> q(3, d), k(5, d), v(5, d);
  q.setConstant(Eigen::bfloat16(0.5f));
  k.setConstant(Eigen::bfloat16(0.25f));
  v.setConstant(Eigen::bfloat16(1.0f));
  const row_matrix<Eigen::bfloat16>& k_const = k;
  row_matrix<float> out(3, d);
  out.setConstant(-7.0f);
  attention(head_view(q), head_view(k_const), head_view(v), head_view(out));
  for (index_t i = 0; i < out.size(); ++i) ASSERT_NEAR(out.data()[i], 1.0f, unit_values_bound());
  // A block of a matrix and a temporary Map as the output.
  std::vector<float> buf(static_cast<size_t>(3 * d), -7.0f);
  attention(head_view(q), head_view(k.topRows(4)), head_view(v.topRows(4)),
            head_view(Eigen::Map<row_matrix<float>>(buf.data(), 3, d)));
  for (float x : buf) ASSERT_NEAR(x, 1.0f, unit_values_bound());
  const auto view = head_view(q);
  static_assert(!std::is_const<std::remove_pointer_t<decltype(view.data)>>::value,
                "a non-const matrix gives a writable view");
  static_assert(std::is_const<std::remove_pointer_t<decltype(head_view(k_const).data)>>::value,
                "a const matrix gives a read-only view");
}

}  // namespace
}  // namespace ssmax::testing
