// Scores that overflow and non-finite inputs, on both forward paths
// (attention.hpp's contract, kernels/online_softmax.hpp safe_score): a score is
// the dot product; where it overflows although q_i and k_j are finite, it takes
// the exact product's value (+-inf with its sign when that overflows too); +inf
// scores share the row's weight equally (lse +inf); NaN in q_i or in a key the
// row sees, or an inf that makes a score NaN or +inf, makes the row's output
// and lse NaN, whatever the row's length (n = 1 included). (An inf whose scores
// are all -inf weighs nothing, as a masked key: see
// kernels/online_softmax.hpp.)

#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <ssmax/attention.hpp>
#include <ssmax/attention_backward.hpp>
#include <vector>

namespace ssmax {
namespace {

constexpr attention_path kPaths[] = {attention_path::fused, attention_path::materialised};

/// out [n_q, d] and lse [n_q] of one head: q [n_q, d], k and v [n_k, d]; the weights
/// [n_q, n_k] on the materialised path (empty on the fused one).
struct result {
  std::vector<float> out, lse, weights;
};
template <class Policy = softmax_policy>  // a length policy
result run(const std::vector<float>& q, const std::vector<float>& k, const std::vector<float>& v,
           index_t d, attention_path path, attention_options<Policy> o = {}) {
  const index_t n_q = static_cast<index_t>(q.size()) / d, n_k = static_cast<index_t>(k.size()) / d;
  result r{std::vector<float>(q.size()), std::vector<float>(static_cast<size_t>(n_q))};
  o.path = path;
  attention_extras<float> x;
  x.lse = r.lse.data();
  if (path == attention_path::materialised) {
    r.weights.assign(static_cast<size_t>(n_q * n_k), -7.0f);
    x.weights = r.weights.data();
  }
  attention(bshd_view(q.data(), 1, n_q, 1, d), bshd_view(k.data(), 1, n_k, 1, d),
            bshd_view(v.data(), 1, n_k, 1, d), bshd_view(r.out.data(), 1, n_q, 1, d), o, x);
  return r;
}

// q = k = 1e30: q . k = 2e60 overflows float. Keys 0 and 2 give +inf (exact
// product positive and beyond float), key 1 gives -inf, key 3 a finite score:
// the row is the mean of v_0 and v_2, its lse +inf. n_q = 1 (decode, dot
// products) and 8 (prefill, GEMM); n_k past one key block and past the split-KV
// chunk (the +inf keys in different chunks).
TEST(NonFinite, OverflowingScoresGetTheExactSign) {
  const index_t d = 2;
  for (const index_t n_q : {1, 8})
    for (const index_t n_k : {4, 300, 5000})
      for (const attention_path path : kPaths) {
        std::vector<float> q(static_cast<size_t>(n_q * d), 1e30f), k(static_cast<size_t>(n_k * d));
        std::vector<float> v(k.size());
        for (index_t j = 0; j < n_k; ++j) {
          k[j * d] = k[j * d + 1] = 1e-3f;  // finite scores elsewhere
          v[j * d] = static_cast<float>(j), v[j * d + 1] = 1.0f;
        }
        const index_t pos1 = n_k - 1, neg = 1;
        k[0] = k[1] = 1e30f;
        k[pos1 * d] = k[pos1 * d + 1] = 1e30f;
        k[neg * d] = k[neg * d + 1] = -1e30f;
        const result r = run(q, k, v, d, path);
        for (index_t i = 0; i < n_q; ++i) {
          EXPECT_EQ(r.out[i * d], 0.5f * static_cast<float>(pos1))
              << "n_q " << n_q << " n_k " << n_k << " path " << int(path);
          EXPECT_EQ(r.out[i * d + 1], 1.0f);
          EXPECT_EQ(r.lse[i], std::numeric_limits<float>::infinity());
        }
      }
}

// The products overflow term by term but cancel: q . k_0 = 1e60 - 1e60 = 0
// exactly, and q . k_1 = 2e30 is finite. Key 1 takes all the weight; lse = 2e30
// / sqrt(2).
TEST(NonFinite, CancellingOverflowGivesTheFiniteScore) {
  const index_t d = 2;
  for (const index_t n_q : {1, 8})
    for (const attention_path path : kPaths) {
      std::vector<float> q(static_cast<size_t>(n_q * d), 1e30f);
      const std::vector<float> k{1e30f, -1e30f, 1.0f, 1.0f}, v{1.0f, 2.0f, 3.0f, 4.0f};
      const result r = run(q, k, v, d, path);
      for (index_t i = 0; i < n_q; ++i) {
        EXPECT_EQ(r.out[i * d], 3.0f) << "n_q " << n_q << " path " << int(path);
        EXPECT_EQ(r.out[i * d + 1], 4.0f);
        EXPECT_FLOAT_EQ(r.lse[i], static_cast<float>(2e30 / std::sqrt(2.0)));
      }
    }
}

// NaN in q_i makes row i NaN and no other; NaN or inf in a key makes every row
// that sees it NaN (causal: the rows at and after it). Rows with n = 1 too
// (before: zeros, lse -inf, on the fused path), with Softmax and SSMax (whose
// multiplier is 0 at n = 1).
TEST(NonFinite, NanOrInfInputsMakeTheirRowsNan) {
  const index_t d = 4, n = 6;
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const float inf = std::numeric_limits<float>::infinity();
  std::vector<float> q(n * d), k(n * d), v(n * d);
  for (index_t x = 0; x < n * d; ++x) {
    q[x] = 0.1f * static_cast<float>(x % 7);
    k[x] = 0.2f * static_cast<float>(x % 5);
    v[x] = static_cast<float>(x % 3);
  }
  for (const bool ssmax : {false, true})
    for (const attention_path path : kPaths) {
      for (const index_t bad_row : {index_t(0), index_t(3)}) {
        auto qb = q;
        qb[bad_row * d + 1] = nan;
        attention_options<ssmax_policy> o;
        o.policy = ssmax_policy(ssmax ? 0.4 : 0.0, ssmax ? 0.0 : 1.0);
        o.mask = attention_mask::causal_mask();
        const result r = run(qb, k, v, d, path, o);
        for (index_t i = 0; i < n; ++i) {
          EXPECT_EQ(std::isnan(r.lse[i]), i == bad_row) << "row " << i << " bad " << bad_row;
          for (index_t c = 0; c < d; ++c) EXPECT_EQ(std::isnan(r.out[i * d + c]), i == bad_row);
          // The keys a row cannot see weigh exactly 0, a NaN row's too (a NaN row once got
          // NaN there from the sink rescaling, with no sink).
          for (index_t j = i + 1; j < static_cast<index_t>(r.weights.size()) / n; ++j)
            EXPECT_EQ(r.weights[static_cast<size_t>(i * n + j)], 0.0f)
                << "row " << i << " hidden key " << j << " bad " << bad_row;
        }
      }
      for (const float bad : {nan, inf}) {
        auto kb = k;
        kb[2 * d + 1] = bad;  // key 2: rows 2.. see it
        attention_options<ssmax_policy> o;
        o.policy = ssmax_policy(ssmax ? 0.4 : 0.0, ssmax ? 0.0 : 1.0);
        o.mask = attention_mask::causal_mask();
        const result r = run(q, kb, v, d, path, o);
        for (index_t i = 0; i < n; ++i)
          EXPECT_EQ(std::isnan(r.lse[i]), i >= 2) << "row " << i << " key value " << bad;
      }
    }
}

// The backward of the overflowing rows of OverflowingScoresGetTheExactSign: the
// weights do not depend on q or k there (a_j = 1/2 on the two +inf keys), so dq
// = dk = 0 and dL/dm = 0, and dv_j = sum_i a_ij dout_i.
TEST(NonFinite, BackwardOfInfiniteRows) {
  const index_t d = 2, n_q = 8;
  for (const index_t n_k : {4, 300})
    for (const attention_path path : kPaths) {
      std::vector<float> q(static_cast<size_t>(n_q * d), 1e30f), k(static_cast<size_t>(n_k * d));
      std::vector<float> v(k.size()), dout(q.size());
      for (index_t j = 0; j < n_k; ++j) {
        k[j * d] = k[j * d + 1] = 1e-3f;
        v[j * d] = static_cast<float>(j), v[j * d + 1] = 1.0f;
      }
      for (index_t x = 0; x < n_q * d; ++x) dout[x] = 0.25f * static_cast<float>(x + 1);
      const index_t pos1 = n_k - 1;
      k[0] = k[1] = k[pos1 * d] = k[pos1 * d + 1] = 1e30f;
      k[d] = k[d + 1] = -1e30f;
      attention_options<ssmax_policy> o;
      o.policy = ssmax_policy(0.4, 1.0);
      o.path = path;
      const result fwd = run(q, k, v, d, path, o);
      std::vector<float> dq(q.size(), 9.0f), dk(k.size(), 9.0f), dv(k.size(), 9.0f);
      std::vector<double> dm(static_cast<size_t>(n_q), 9.0);
      attention_gradients<float> g{bshd_view(dq.data(), 1, n_q, 1, d),
                                   bshd_view(dk.data(), 1, n_k, 1, d),
                                   bshd_view(dv.data(), 1, n_k, 1, d)};
      g.d_multiplier = dm.data();
      attention_backward(bshd_view(q.data(), 1, n_q, 1, d), bshd_view(k.data(), 1, n_k, 1, d),
                         bshd_view(v.data(), 1, n_k, 1, d), bshd_view(fwd.out.data(), 1, n_q, 1, d),
                         bshd_view(dout.data(), 1, n_q, 1, d), fwd.lse.data(), g, o);
      for (float x : dq) EXPECT_EQ(x, 0.0f) << "n_k " << n_k << " path " << int(path);
      for (float x : dk) EXPECT_EQ(x, 0.0f) << "n_k " << n_k << " path " << int(path);
      for (double x : dm) EXPECT_EQ(x, 0.0);
      for (index_t j = 0; j < n_k; ++j)
        for (index_t c = 0; c < d; ++c) {
          float expected = 0.0f;
          if (j == 0 || j == pos1)
            for (index_t i = 0; i < n_q; ++i) expected += 0.5f * dout[i * d + c];
          EXPECT_FLOAT_EQ(dv[j * d + c], expected) << "key " << j << " path " << int(path);
        }
    }
}

}  // namespace
}  // namespace ssmax
