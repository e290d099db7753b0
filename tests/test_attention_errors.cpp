// Bad input to the attention operator: each case throws argument_error naming the
// argument, and leaves the output (and the optional outputs) untouched.

#include <gtest/gtest.h>

#include <Eigen/Core>
#include <cmath>
#include <ssmax/attention.hpp>
#include <vector>

#include "support/expect_error.hpp"

namespace {

using namespace ssmax;
using ssmax::index_t;
using ssmax::testing::expect_rejects;

/// A valid call (B = 2, n_q = 4, n_k = 6, H = 4, H_kv = 2, d = 8) that each test breaks once.
struct call {
  index_t B = 2, n_q = 4, n_k = 6, H = 4, H_kv = 2, d = 8;
  std::vector<float> q, k, v, out, lse, weights;
  tensor_view<const float> qv, kv, vv;
  tensor_view<float> ov;
  attention_options<ssmax_policy> options;
  attention_extras<float> extras;

  call()
      : q(static_cast<size_t>(B * n_q * H * d), 0.5f),
        k(static_cast<size_t>(B * n_k * H_kv * d), 0.25f),
        v(k.size(), 1.0f),
        out(q.size(), 7.0f),
        lse(static_cast<size_t>(B * H * n_q), 7.0f),
        weights(static_cast<size_t>(B * H * n_q * n_k), 7.0f) {
    qv = bshd_view(q.data(), B, n_q, H, d);
    kv = bshd_view(k.data(), B, n_k, H_kv, d);
    vv = bshd_view(v.data(), B, n_k, H_kv, d);
    ov = bshd_view(out.data(), B, n_q, H, d);
    extras.lse = lse.data();
    extras.weights = weights.data();
  }
  void run() { attention(qv, kv, vv, ov, options, extras); }
  bool untouched() const {
    for (float x : out)
      if (x != 7.0f) return false;
    for (float x : lse)
      if (x != 7.0f) return false;
    for (float x : weights)
      if (x != 7.0f) return false;
    return true;
  }
};

/// Expects the broken call to be rejected naming `argument`, with nothing written.
template <class Break>
void expect_bad(const std::string& argument, Break&& breaking) {
  call c;
  breaking(c);
  expect_rejects([&] { c.run(); }, argument);
  EXPECT_TRUE(c.untouched()) << argument;
}

TEST(AttentionErrors, TheValidCallRuns) {
  call c;
  c.run();
  EXPECT_FALSE(c.untouched());
}

TEST(AttentionErrors, Shapes) {
  expect_bad("k", [](call& c) { c.kv.dim = 7; });         // d differs between q and k
  expect_bad("v", [](call& c) { c.vv.dim = 4; });         // d differs between q and v
  expect_bad("k", [](call& c) { c.kv.heads = 3; });       // H_kv does not divide H
  expect_bad("k", [](call& c) { c.kv.batch = 1; });       // batch mismatch
  expect_bad("v", [](call& c) { c.vv.seq = 5; });         // v's keys differ from k's
  expect_bad("out", [](call& c) { c.ov.seq = 3; });       // out's shape differs from q's
  expect_bad("q", [](call& c) { c.qv.seq = 0; });         // empty extent
  expect_bad("q", [](call& c) { c.qv.stride_s = -1; });   // negative stride
  expect_bad("out", [](call& c) { c.ov.stride_h = 4; });  // out's heads share memory
}

TEST(AttentionErrors, NullData) {
  expect_bad("q", [](call& c) { c.qv.data = nullptr; });
  expect_bad("k", [](call& c) { c.kv.data = nullptr; });
  expect_bad("v", [](call& c) { c.vv.data = nullptr; });
  expect_bad("out", [](call& c) { c.ov.data = nullptr; });
}

TEST(AttentionErrors, OverlappingOutput) {
  expect_bad("out", [](call& c) { c.qv.data = c.out.data(); });  // out is q
  expect_bad("out", [](call& c) { c.vv.data = c.out.data() + 3; });
  expect_bad("extras.weights", [](call& c) { c.extras.weights = c.q.data(); });
  expect_bad("extras.lse", [](call& c) { c.extras.lse = const_cast<float*>(c.kv.data); });
  expect_bad("extras.lse", [](call& c) { c.extras.lse = c.weights.data() + 2; });
}

TEST(AttentionErrors, Masks) {
  static const index_t too_long[] = {6, 7}, negative[] = {-1, 6};
  expect_bad("options.mask.key_lengths",
             [](call& c) { c.options.mask = attention_mask::key_padding(too_long); });
  expect_bad("options.mask.key_lengths",
             [](call& c) { c.options.mask = attention_mask::key_padding(negative); });
  static const index_t cu_q_late[] = {1, 2, 3, 4}, cu_k_dec[] = {0, 4, 2, 6},
                       cu_q3[] = {0, 2, 3, 4}, cu_k_short[] = {0, 2, 3, 5}, cu_k[] = {0, 2, 3, 6};
  // Packed sequences need batch 1.
  expect_bad("q", [](call& c) { c.options.mask = attention_mask::varlen(cu_q3, cu_k, 3); });
  auto packed = [](call& c) {
    c.qv = bshd_view(c.q.data(), 1, 4, 4, 8);
    c.kv = bshd_view(c.k.data(), 1, 6, 2, 8);
    c.vv = bshd_view(c.v.data(), 1, 6, 2, 8);
    c.ov = bshd_view(c.out.data(), 1, 4, 4, 8);
    c.extras.weights = nullptr;
  };
  expect_bad("options.mask.cu_seqlens_k", [&](call& c) {  // offsets that decrease
    packed(c);
    c.options.mask = attention_mask::varlen(cu_q3, cu_k_dec, 3);
  });
  expect_bad("options.mask.cu_seqlens_k", [&](call& c) {  // do not cover the tensor
    packed(c);
    c.options.mask = attention_mask::varlen(cu_q3, cu_k_short, 3);
  });
  expect_bad("options.mask.cu_seqlens_q", [&](call& c) {  // does not start at 0
    packed(c);
    c.options.mask = attention_mask::varlen(cu_q_late, cu_k, 3);
  });
  expect_bad("options.mask.window", [](call& c) { c.options.mask.window = 3; });  // not causal
  expect_bad("options.mask.window", [](call& c) {
    c.options.mask = attention_mask::causal_mask();
    c.options.mask.window = -2;
  });
  expect_bad("options.mask.query_offset", [](call& c) { c.options.mask.query_offset = -5; });
  expect_bad("options.mask.query_offset", [](call& c) {
    c.options.mask = attention_mask::causal_mask(std::numeric_limits<index_t>::max() - 1);
  });
  expect_bad("options.mask.n_override", [](call& c) { c.options.mask.n_override = -1; });
  // A slice of keys at global positions key_offset.. (context parallelism).
  expect_bad("options.mask.key_offset", [](call& c) { c.options.mask.key_offset = -1; });
  expect_bad("options.mask.key_offset",
             [](call& c) { c.options.mask.key_offset = std::numeric_limits<index_t>::max() - 2; });
  static const index_t beyond_slice[] = {6, 13};  // key_offset 6 + 6 keys: at most 12
  expect_bad("options.mask.key_lengths", [](call& c) {
    c.options.mask = attention_mask::key_padding(beyond_slice);
    c.options.mask.key_offset = 6;
  });
  static const index_t bad_row_n[8] = {1, 2, 0, 4, 5, 6, -1, 8};  // [B = 2, n_q = 4]
  expect_bad("options.mask.row_n", [](call& c) { c.options.mask.row_n = bad_row_n; });
}

TEST(AttentionErrors, SliceMaskFieldsAccepted) {
  // Global key lengths up to key_offset + n_k, and row_n entries of 0 (visible count).
  static const index_t lengths[] = {3, 12}, row_n[8] = {0, 2, 0, 4, 100, 6, 0, 8};
  call c;
  c.options.mask = attention_mask::key_padding(lengths);
  c.options.mask.key_offset = 6;
  c.options.mask.row_n = row_n;
  c.run();
  EXPECT_FALSE(c.untouched());
}

TEST(AttentionErrors, LogitAndLocalWindow) {
  static const std::vector<float> bias(2 * 4 * 4 * 6, 0.0f), three(3, 0.1f), nan_sinks(4, NAN);
  expect_bad("options.logit.bias", [](call& c) {
    c.options.logit.bias = logit_bias::dense(bias.data(), 2, 4, 4, 5);  // n_k is 6
  });
  expect_bad("options.logit.bias", [](call& c) {
    c.options.logit.bias = logit_bias::dense(bias.data(), 2, 2, 4, 6);  // H is 4
  });
  expect_bad("options.logit.bias", [](call& c) {
    c.options.logit.bias = logit_bias::dense(bias.data(), 2, 4, 4, 6);
    c.options.logit.bias.stride_q = -6;
  });
  expect_bad("options.logit.softcap", [](call& c) { c.options.logit.softcap = -1.0; });
  expect_bad("options.logit.softcap", [](call& c) { c.options.logit.softcap = NAN; });
  expect_bad("options.logit.sinks",
             [](call& c) { c.options.logit.sinks = three.data(), c.options.logit.sink_heads = 3; });
  expect_bad("options.logit.sinks", [](call& c) {
    c.options.logit.sinks = nan_sinks.data(), c.options.logit.sink_heads = 4;
  });
  expect_bad("options.logit.alibi_slopes", [](call& c) {
    c.options.logit.alibi_slopes = three.data(), c.options.logit.alibi_heads = 3;
  });
  expect_bad("options.mask.window_left",
             [](call& c) { c.options.mask.local = true, c.options.mask.window_left = -1; });
  expect_bad("options.mask.window_right",
             [](call& c) { c.options.mask.local = true, c.options.mask.window_right = -2; });
  expect_rejects([] { attention_mask::local_window(-1, 0); }, "left");
  expect_rejects([] { attention_mask::local_window(0, -1); }, "right");
  expect_rejects([] { alibi_slopes(0); }, "heads");
}

TEST(AttentionErrors, OutputsOverlappingTheLogitArrays) {
  // The kernels read the bias, slopes and sinks while they write the outputs.
  expect_bad("out",
             [](call& c) { c.options.logit.bias = logit_bias::dense(c.out.data(), 2, 4, 4, 6); });
  expect_bad("out", [](call& c) {
    c.options.logit.sinks = c.out.data() + 100, c.options.logit.sink_heads = 4;
  });
  expect_bad("extras.weights", [](call& c) {
    c.options.logit.alibi_slopes = c.weights.data() + 3, c.options.logit.alibi_heads = 4;
  });
  expect_bad("extras.lse", [](call& c) {
    c.options.logit.sinks = c.lse.data() + 20, c.options.logit.sink_heads = 4;  // lse holds 32
  });
}

TEST(AttentionErrors, Options) {
  static const std::vector<double> three{0.1, 0.2, 0.3};  // H = 4 heads
  expect_bad("policy", [](call& c) { c.options.policy = ssmax_policy(three); });
  expect_bad("policy.s", [](call& c) { c.options.policy = ssmax_policy(std::nan("")); });
  expect_bad("options.scale", [](call& c) { c.options.scale = -1.0; });
  expect_bad("options.threads", [](call& c) { c.options.threads = -2; });
  expect_bad("extras.weights", [](call& c) { c.options.path = attention_path::fused; });
}

// bshd_view of an Eigen matrix whose rows are not contiguous: a one-row block of a
// column-major matrix (it passes the row-major check) and a row-major Map with an inner
// stride. Before the inner-stride check both were read as contiguous: a silent wrong
// answer, and writes through out landed outside the block.
TEST(AttentionErrors, EigenViewsWithInnerStridesRefused) {
  Eigen::MatrixXf col_major = Eigen::MatrixXf::Zero(3, 8);
  auto one_row = col_major.block(0, 0, 1, 8);
  expect_rejects([&] { bshd_view(one_row, 1, 2); }, "m");
  std::vector<float> data(64, 0.0f);
  Eigen::Map<Eigen::Matrix<float, 2, 8, Eigen::RowMajor>, 0, Eigen::Stride<Eigen::Dynamic, 2>>
      strided(data.data(), Eigen::Stride<Eigen::Dynamic, 2>(16, 2));
  expect_rejects([&] { bshd_view(strided, 1, 2); }, "m");
  Eigen::Matrix<float, 2, 8, Eigen::RowMajor> plain =
      Eigen::Matrix<float, 2, 8, Eigen::RowMajor>::Zero();
  EXPECT_EQ(bshd_view(plain, 1, 2).dim, 4);
}

}  // namespace
