// The attention operator against the double reference: every mask kind x every policy
// x GQA ratios, odd head dimensions, small and large (thousands) sizes, decode splits,
// rows with no visible key, both layouts, folded multiplier, packed = separate,
// padding = truncation, fused = materialised, thread-count independence, workspace
// reuse, and the Eigen entry points. Tolerances: tests/support/attention_check.hpp.

#include <gtest/gtest.h>

#include <ssmax/attention.hpp>
#include <ssmax/reference/attention.hpp>

#include "support/attention_cases.hpp"
#include "support/attention_check.hpp"

namespace {

using namespace ssmax;
using ssmax::index_t;
using namespace ssmax::testing;

template <class C>  // kernel_config<Arch, T>; skips an architecture the CPU lacks
using AttentionTest = kernel_test<C>;
TYPED_TEST_SUITE(AttentionTest, attention_configs, config_name);

/// Expects a == b: bitwise for the SIMD architectures (the same arithmetic on the same
/// values), and within a few ulp of the output's scale (max|v| = 1 here, n keys) for
/// scalar_arch, whose a * b + c the compiler may or may not contract into an FMA
/// depending on the shape of the surrounding loop (-ffp-contract=fast).
template <class Arch, class T>
void expect_same(T a, T b, index_t n, const std::string& what) {
  if (std::is_same<Arch, scalar_arch>::value)
    ASSERT_NEAR(a, b, 4 * std::numeric_limits<T>::epsilon() * static_cast<double>(n + 64)) << what;
  else
    ASSERT_EQ(a, b) << what;
}

/// Runs one path with one thread and with each of `counts`: the same out, lse and weights
/// bit for bit. Returns the one-thread run.
template <class Arch, class T, class Policy>
attention_run<T> expect_same_bits_for_thread_counts(const attention_data<T>& data,
                                                    attention_options<Policy> o,
                                                    attention_path path,
                                                    std::initializer_list<int> counts) {
  o.threads = 1;
  auto one = run_attention<Arch>(data, o, path);
  for (int t : counts) {
    o.threads = t;
    const auto many = run_attention<Arch>(data, o, path);
    EXPECT_EQ(one.out, many.out) << "threads " << t;
    EXPECT_EQ(one.lse, many.lse) << "threads " << t;
    EXPECT_EQ(one.weights, many.weights) << "threads " << t;
  }
  return one;
}

TYPED_TEST(AttentionTest, EveryMaskTimesEveryPolicyTimesGqa) {
  using Arch = typename TypeParam::arch;
  using T = typename TypeParam::value_type;
  const index_t B = 2, n_q = 13, n_k = 29, H = 4;
  const index_t dims[] = {1, 3, 8, 17, 64, 65};

  const mask_cases masks({B, n_q, n_k, H});

  int which = 0;
  for (const auto& mc : masks)
    for (index_t H_kv : {index_t(4), index_t(2), index_t(1)}) {
      for_each_policy({H, 4, 4096}, [&](const char* pname, const auto& policy) {
        const index_t d = dims[which++ % 6];
        attention_data<T> data(masks.batch_of(mc), n_q, n_k, H, H_kv, d,
                               static_cast<unsigned>(which));
        attention_options<std::decay_t<decltype(policy)>> o;
        o.policy = policy;
        o.mask = mc.mask;
        o.threads = 1;
        check_both_paths<Arch>(
            data, o,
            mc.name + " x " + pname + " H_kv=" + std::to_string(H_kv) + " d=" + std::to_string(d));
      });
    }
}

TYPED_TEST(AttentionTest, HeadDimensions) {
  using Arch = typename TypeParam::arch;
  using T = typename TypeParam::value_type;
  for (index_t d : {1, 3, 63, 64, 65, 128, 256})
    // the dot-product path (<= 3 rows), the GEMM path, and a kPrefillQueryBlock GEMM task
    // followed by a 3-row dot-product task
    for (index_t n_q : {2, 9, 70, 131}) {
      attention_data<T> data(1, n_q, 75, 2, 1, d, static_cast<unsigned>(d + n_q));
      attention_options<ssmax_policy> o;
      o.mask = attention_mask::causal_mask();
      check_both_paths<Arch>(data, o, "d=" + std::to_string(d) + " n_q=" + std::to_string(n_q));
    }
}

TYPED_TEST(AttentionTest, LargeSizesAndDecode) {
  using Arch = typename TypeParam::arch;
  using T = typename TypeParam::value_type;
  {  // decode over a long cache: keys split in chunks (flash-decoding), GQA 4:2
    attention_data<T> data(1, 1, 5000, 4, 2, 64, 11);
    attention_options<ssmax_policy> o;
    o.mask = attention_mask::causal_mask(4999);  // KV cache: query at T = 4999 over 5000 keys
    check_both_paths<Arch>(data, o, "decode n_k=5000");
  }
  {  // a few queries over a cache with an offset, padded batch
    attention_data<T> data(2, 3, 4500, 2, 1, 65, 12);
    const index_t lengths[] = {4500, 2100};
    attention_options<ssmax_policy> o;
    o.mask = attention_mask::causal_mask(4497);
    o.mask.key_lengths = lengths;
    check_both_paths<Arch>(data, o, "3 queries, offset 4497, padded");
  }
  {  // long prefill, n_q != n_k, KV-cache offset
    attention_data<T> data(1, 700, 1100, 2, 1, 64, 13);
    attention_options<ssmax_policy> o;
    o.mask = attention_mask::causal_mask();
    check_both_paths<Arch>(data, o, "prefill 700 x 1100 causal");
  }
  {  // more queries than keys, sliding window, single key case
    attention_data<T> data(1, 2100, 1500, 1, 1, 32, 14);
    attention_options<softmax_policy> o;
    o.mask = attention_mask::sliding_window(300, 0);
    check_both_paths<Arch>(data, o, "2100 x 1500 window 300");
    attention_data<T> one(1, 1, 1, 1, 1, 5, 15);
    check_both_paths<Arch>(one, attention_options<ssmax_policy>{}, "1 x 1");
  }
}

TYPED_TEST(AttentionTest, RowsWithNoVisibleKeyAreZero) {
  using Arch = typename TypeParam::arch;
  using T = typename TypeParam::value_type;
  attention_data<T> data(2, 5, 300, 2, 2, 16, 3);
  const index_t lengths[] = {0, 300};
  attention_options<ssmax_policy> o;
  o.mask = attention_mask::key_padding(lengths);
  for (auto path : {attention_path::fused, attention_path::materialised}) {
    const auto run = run_attention<Arch>(data, o, path);
    for (index_t i = 0; i < 5; ++i)
      for (index_t h = 0; h < 2; ++h) {
        for (index_t c = 0; c < 16; ++c)
          EXPECT_EQ(run.out[static_cast<size_t>((i * 2 + h) * 16 + c)], T(0));
        EXPECT_EQ(run.lse[static_cast<size_t>(h * 5 + i)], -std::numeric_limits<T>::infinity());
      }
    for (T x : run.out) EXPECT_FALSE(std::isnan(x));
  }
}

TYPED_TEST(AttentionTest, BothLayoutsGiveTheSameBits) {
  using Arch = typename TypeParam::arch;
  using T = typename TypeParam::value_type;
  // 40 queries take the GEMM path; 2 take the decode path, which walks keys outer and
  // heads inner for [B, S, H, d] and heads outer for [B, H, S, d] (the same arithmetic).
  const index_t B = 2, n_k = 600, H = 4, H_kv = 2, d = 24;
  for (index_t n_q : {40, 2}) {
    attention_data<T> data(B, n_q, n_k, H, H_kv, d, static_cast<unsigned>(5 + n_q));
    // The same tensors, stored [B, H, seq, d].
    auto to_bhsd = [&](const std::vector<T>& src, index_t seq, index_t heads) {
      std::vector<T> dst(src.size());
      auto in = bshd_view(src.data(), B, seq, heads, d);
      auto out = bhsd_view(dst.data(), B, heads, seq, d);
      for (index_t b = 0; b < B; ++b)
        for (index_t s = 0; s < seq; ++s)
          for (index_t h = 0; h < heads; ++h)
            for (index_t c = 0; c < d; ++c) out(b, s, h, c) = in(b, s, h, c);
      return dst;
    };
    const auto q2 = to_bhsd(data.q, n_q, H), k2 = to_bhsd(data.k, n_k, H_kv),
               v2 = to_bhsd(data.v, n_k, H_kv);
    attention_options<ssmax_policy> o;
    o.mask = attention_mask::causal_mask();
    for (auto path : {attention_path::fused, attention_path::materialised}) {
      o.path = path;
      const auto a = run_attention<Arch>(data, o, path);
      std::vector<T> out2(data.q.size());
      attention<Arch>(bhsd_view(q2.data(), B, H, n_q, d), bhsd_view(k2.data(), B, H_kv, n_k, d),
                      bhsd_view(v2.data(), B, H_kv, n_k, d), bhsd_view(out2.data(), B, H, n_q, d),
                      o);
      const auto back = bhsd_view(static_cast<const T*>(out2.data()), B, H, n_q, d);
      for (index_t b = 0; b < B; ++b)
        for (index_t s = 0; s < n_q; ++s)
          for (index_t h = 0; h < H; ++h)
            for (index_t c = 0; c < d; ++c)
              ASSERT_EQ(back(b, s, h, c),
                        a.out[static_cast<size_t>(((b * n_q + s) * H + h) * d + c)])
                  << "n_q " << n_q;
    }
  }
}

TYPED_TEST(AttentionTest, DecodeTasksTakeWholeHeadGroups) {
  using Arch = typename TypeParam::arch;
  using T = typename TypeParam::value_type;
  // Decode tasks (at most kDotMaxRows query rows) take whole GQA groups of heads, up to
  // kDecodeScratchRows scratch rows: 48 heads make several tasks per query block (the last
  // one smaller), and MQA a group larger than one task. n_k = 1001 ends in a block whose
  // key count is not a multiple of kKeyStreams; the keys split into chunks of a few
  // blocks; d = 19 leaves a vector tail.
  const index_t lengths[] = {1001, 517};
  unsigned seed = 100;
  for (index_t n_q : {1, 2, 3})
    for (index_t H_kv : {48, 6, 1}) {
      const index_t d = n_q == 2 ? 19 : 40;
      attention_data<T> data(2, n_q, 1001, 48, H_kv, d, seed++);
      attention_options<ssmax_policy> o;
      o.mask = attention_mask::causal_mask();
      o.mask.key_lengths = lengths;
      check_both_paths<Arch>(data, o,
                             "n_q=" + std::to_string(n_q) + " H_kv=" + std::to_string(H_kv));
    }
}

TYPED_TEST(AttentionTest, MultiplierFoldedIntoQueriesEqualsMultiplierOnScores) {
  using Arch = typename TypeParam::arch;
  using T = typename TypeParam::value_type;
  // SSMax with n fixed has one multiplier m for every row: plain softmax attention on
  // q' = m q must equal the reference that applies m to the scores.
  attention_data<T> data(1, 30, 50, 2, 1, 16, 21);
  attention_options<ssmax_policy> ss;
  ss.policy = ssmax_policy(0.43, 0.1, 1000);
  ss.mask = attention_mask::causal_mask();
  const double m = ss.policy.multiplier({1000, 0, 0});
  attention_data<T> folded = data;
  for (auto& x : folded.q) x = static_cast<T>(m * x);
  attention_options<softmax_policy> plain;
  plain.mask = ss.mask;
  for (auto path : {attention_path::fused, attention_path::materialised}) {
    auto run = run_attention<Arch>(folded, plain, path);
    run.weights.clear();
    run.lse.clear();  // the softmax call's lse is of the folded logits: compare outputs
    expect_matches_reference(data, ss, run, "folded q");
  }
}

TYPED_TEST(AttentionTest, PackedSequencesEqualEachSequenceAlone) {
  using Arch = typename TypeParam::arch;
  using T = typename TypeParam::value_type;
  const index_t cu_q[] = {0, 70, 71, 150}, cu_k[] = {0, 100, 400, 480};
  const index_t H = 4, H_kv = 2, d = 20;
  attention_data<T> packed(1, 150, 480, H, H_kv, d, 31);
  for (bool causal : {false, true})
    for (auto path : {attention_path::fused, attention_path::materialised}) {
      attention_options<ssmax_policy> o;
      o.mask = attention_mask::varlen(cu_q, cu_k, 3, causal);
      const auto all = run_attention<Arch>(packed, o, path);
      for (index_t s = 0; s < 3; ++s) {
        const index_t nq = cu_q[s + 1] - cu_q[s], nk = cu_k[s + 1] - cu_k[s];
        attention_data<T> one(1, nq, nk, H, H_kv, d);
        copy_rows(packed, cu_q[s], cu_k[s], one);
        attention_options<ssmax_policy> alone;
        alone.mask = causal ? attention_mask::causal_mask() : attention_mask::none();
        const auto r = run_attention<Arch>(one, alone, path);
        for (index_t e = 0; e < nq * H * d; ++e)
          expect_same<Arch>(r.out[static_cast<size_t>(e)],
                            all.out[static_cast<size_t>(cu_q[s] * H * d + e)], nk,
                            "sequence " + std::to_string(s) + " causal " + std::to_string(causal));
      }
    }
}

TYPED_TEST(AttentionTest, PaddingEqualsTruncation) {
  using Arch = typename TypeParam::arch;
  using T = typename TypeParam::value_type;
  const index_t n_q = 33, n_k = 600, H = 2, d = 12;
  const index_t lengths[] = {600, 257};
  attention_data<T> padded(2, n_q, n_k, H, H, d, 41);
  for (bool causal : {false, true})
    for (auto path : {attention_path::fused, attention_path::materialised}) {
      attention_options<ssmax_policy> o;
      o.mask = causal ? attention_mask::causal_mask(200) : attention_mask::none();
      o.mask.query_offset = 200;  // positions fixed, whatever the key count
      o.mask.key_lengths = lengths;
      const auto all = run_attention<Arch>(padded, o, path);
      attention_data<T> cut(1, n_q, lengths[1], H, H, d);
      copy_rows(padded, n_q, n_k, cut);  // batch entry 1, its first lengths[1] keys
      o.mask.key_lengths = nullptr;
      const auto r = run_attention<Arch>(cut, o, path);
      for (index_t e = 0; e < n_q * H * d; ++e)
        expect_same<Arch>(r.out[static_cast<size_t>(e)],
                          all.out[static_cast<size_t>(n_q * H * d + e)], n_k,
                          "causal " + std::to_string(causal));
    }
}

TYPED_TEST(AttentionTest, FusedEqualsMaterialised) {
  using Arch = typename TypeParam::arch;
  using T = typename TypeParam::value_type;
  attention_data<T> data(1, 130, 700, 2, 1, 64, 51);
  attention_options<ssmax_policy> o;
  o.mask = attention_mask::causal_mask();
  const auto f = run_attention<Arch>(data, o, attention_path::fused);
  const auto m = run_attention<Arch>(data, o, attention_path::materialised);
  // Each is within the reference bound B of the exact result, so they are within 2B of
  // each other; B here is at most 2 eps (2 (d+2) Z + n + 64) with Z <= m d / sqrt(d).
  const double eps = std::numeric_limits<T>::epsilon();
  const double z = ssmax_policy{}.multiplier({700, 0, 0}) * std::sqrt(64.0);
  const double bound = 2 * 2 * eps * (2 * 66 * z + 700 + 64);
  for (size_t e = 0; e < f.out.size(); ++e) ASSERT_NEAR(f.out[e], m.out[e], bound) << e;
  for (size_t e = 0; e < f.lse.size(); ++e) ASSERT_NEAR(f.lse[e], m.lse[e], bound * 8) << e;
}

TYPED_TEST(AttentionTest, ResultsDoNotDependOnTheThreadCount) {
  using Arch = typename TypeParam::arch;
  using T = typename TypeParam::value_type;
  attention_data<T> prefill(2, 150, 300, 4, 2, 32, 61), decode(1, 2, 9000, 4, 1, 64, 62);
  const auto o = options_for(ssmax_policy{}, attention_mask::causal_mask());
  for (const auto* data : {&prefill, &decode})
    for (auto path : {attention_path::fused, attention_path::materialised})
      expect_same_bits_for_thread_counts<Arch>(*data, o, path, {2, 3, 0});
}

// Policies as trained: m < 0 on long rows (s < 0: split decode chunks, the GEMM path) and
// on short ones (b < 0, n = 1 rows of a causal prefill), against the reference, and the
// same bits for any thread count.
TYPED_TEST(AttentionTest, NegativeMultipliersOnLongAndShortRows) {
  using Arch = typename TypeParam::arch;
  using T = typename TypeParam::value_type;
  attention_data<T> prefill(1, 70, 300, 2, 1, 32, 71), decode(1, 2, 5000, 4, 2, 64, 72);
  for (const auto& [data, policy] :
       {std::pair{&prefill, ssmax_policy(0.3, -1.5)}, {&decode, ssmax_policy(-0.2, 0.5)}})
    for (auto path : {attention_path::fused, attention_path::materialised}) {
      const auto o = options_for(policy, attention_mask::causal_mask());
      const auto one = expect_same_bits_for_thread_counts<Arch>(*data, o, path, {3});
      expect_matches_reference(*data, o, one, "negative m");
    }
}

TYPED_TEST(AttentionTest, WorkspaceIsReusedWithoutAllocating) {
  using Arch = typename TypeParam::arch;
  using T = typename TypeParam::value_type;
  attention_data<T> data(1, 1, 6000, 2, 2, 64, 71);
  attention_options<ssmax_policy> o;
  attention_workspace ws;
  auto out = data.make_out();
  const std::size_t need =
      attention_workspace_bytes<Arch>(data.qv(), data.kv(), data.vv(), data.outv(out), o);
  attention<Arch>(data.qv(), data.kv(), data.vv(), data.outv(out), o, {}, &ws);
  EXPECT_EQ(ws.growths(), 1);
  EXPECT_GE(ws.capacity(), need);
  const auto first = out;
  for (int rep = 0; rep < 3; ++rep)
    attention<Arch>(data.qv(), data.kv(), data.vv(), data.outv(out), o, {}, &ws);
  EXPECT_EQ(ws.growths(), 1);
  EXPECT_EQ(first, out);
  // The fused path's memory is O((n_q + n_k) d), never n_q x n_k.
  attention_data<T> big(1, 2048, 2048, 1, 1, 64, 72);
  auto big_out = big.make_out();
  const std::size_t fused =
      attention_workspace_bytes<Arch>(big.qv(), big.kv(), big.vv(), big.outv(big_out), o);
  EXPECT_LT(fused, sizeof(T) * 2048 * 2048 / 4);
}

TYPED_TEST(AttentionTest, EigenEntryPoints) {
  using Arch = typename TypeParam::arch;
  using T = typename TypeParam::value_type;
  const index_t n_q = 20, n_k = 45, H = 2, d = 16;
  attention_data<T> data(1, n_q, n_k, H, 1, d, 81);
  attention_options<ssmax_policy> o;
  o.mask = attention_mask::causal_mask();
  const auto want = run_attention<Arch>(data, o, attention_path::fused);
  // Whole tensors as [B*S, H*d] activation matrices.
  Eigen::Map<const row_matrix<T>> Q(data.q.data(), n_q, H * d), K(data.k.data(), n_k, d),
      V(data.v.data(), n_k, d);
  row_matrix<T> out(n_q, H * d);
  o.path = attention_path::fused;
  attention<Arch>(bshd_view(Q, 1, H), bshd_view(K, 1, 1), bshd_view(V, 1, 1), bshd_view(out, 1, H),
                  o);
  for (index_t i = 0; i < n_q; ++i)
    for (index_t c = 0; c < H * d; ++c)
      ASSERT_EQ(out(i, c), want.out[static_cast<size_t>(i * H * d + c)]);
  // One head at a time, through Eigen::Ref (head_matrix gives the strided per-head map).
  for (index_t h = 0; h < H; ++h) {
    row_matrix<T> head_out(n_q, d);
    attention<Arch>(head_matrix(data.qv(), 0, h), head_matrix(data.kv(), 0, 0),
                    head_matrix(data.vv(), 0, 0), head_out, o);
    for (index_t i = 0; i < n_q; ++i)
      for (index_t c = 0; c < d; ++c)
        ASSERT_EQ(head_out(i, c), want.out[static_cast<size_t>((i * H + h) * d + c)]);
  }
}

}  // namespace
