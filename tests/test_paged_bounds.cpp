// Paged caches as inference engines hand them over (paged.hpp): a ragged batch whose
// block-table rows hold -1, huge or stale ids past each sequence's length, pools placed
// between PROT_NONE guard pages whose unowned blocks hold NaN and inf, int32 tables and
// lengths. Each sequence must read only its own table entries and pool rows: the result is
// bit for bit the contiguous call's on the same tokens (a cache_view whose padding holds
// NaN), on both paths, for decode and chunked prefill, every storage type, GQA and 1 or 2
// threads; a read outside the pools is a crash. Chunked prefill with default options is
// causal.

#include <gtest/gtest.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <numeric>
#include <random>
#include <ssmax/paged.hpp>
#include <string>
#include <vector>

#include "support/stored_attention.hpp"

namespace ssmax::testing {
namespace {

constexpr index_t H = 4, H_kv = 2, d = 16, row = H_kv * d;
constexpr index_t kBlock = 16, kMaxBlocks = 24;  // reach 384 tokens
const std::vector<index_t> kLengths = {300, 1, 37, 0, 257};

/// `count` elements of T whose last one ends where a PROT_NONE page begins, with another
/// PROT_NONE page before the first: any read past either end faults.
template <class T>
class guarded_array {
 public:
  explicit guarded_array(index_t count) : count_(count) {
    page_ = static_cast<size_t>(sysconf(_SC_PAGESIZE));
    const size_t bytes = static_cast<size_t>(count) * sizeof(T);
    const size_t body = (bytes + page_ - 1) / page_ * page_;
    total_ = body + 2 * page_;
    void* base = mmap(nullptr, total_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (base == MAP_FAILED) throw std::bad_alloc();
    base_ = static_cast<unsigned char*>(base);
    mprotect(base_, page_, PROT_NONE);
    mprotect(base_ + page_ + body, page_, PROT_NONE);
    data_ = reinterpret_cast<T*>(base_ + page_ + body - bytes);
  }
  guarded_array(const guarded_array&) = delete;
  guarded_array& operator=(const guarded_array&) = delete;
  ~guarded_array() { munmap(base_, total_); }
  T* data() const { return data_; }
  T& operator[](index_t i) const { return data_[i]; }
  index_t size() const { return count_; }

 private:
  index_t count_;
  size_t page_ = 0, total_ = 0;
  unsigned char* base_ = nullptr;
  T* data_ = nullptr;
};

/// What the table holds past a sequence's length, sequence by sequence.
enum class past_length { minus_one, huge, stale, int_min };

/// The batch's tokens (k, v [B, L, H_kv, d]) in guarded pools through a shuffled table.
/// Entries past each length hold -1, a huge id, a stale id of an unowned NaN block, or
/// the most negative value, in turn; unowned blocks hold NaN and inf.
template <class KV>  // storage type of the pools
struct engine_pool {
  index_t owned = 0, num_blocks = 0;
  std::vector<index_t> table;
  std::vector<std::int32_t> table32, lengths32;
  guarded_array<KV> k, v;

  static index_t owned_blocks() {
    index_t n = 0;
    for (index_t len : kLengths) n += (len + kBlock - 1) / kBlock;
    return n;
  }
  engine_pool(const std::vector<KV>& kc, const std::vector<KV>& vc, index_t L)
      : owned(owned_blocks()),
        num_blocks(owned + 4),
        k(num_blocks * kBlock * row),
        v(num_blocks * kBlock * row) {
    const KV nan = KV(std::numeric_limits<float>::quiet_NaN());
    const KV inf = KV(std::numeric_limits<float>::infinity());
    for (index_t e = 0; e < k.size(); ++e) k[e] = v[e] = (e / row) % 2 ? nan : inf;
    std::vector<index_t> ids(static_cast<size_t>(owned));
    std::iota(ids.begin(), ids.end(), 0);
    std::shuffle(ids.begin(), ids.end(), std::mt19937(5));
    const index_t B = static_cast<index_t>(kLengths.size());
    table.assign(static_cast<size_t>(B * kMaxBlocks), 0);
    size_t next = 0;
    for (index_t b = 0; b < B; ++b) {
      const index_t len = kLengths[b], blocks = (len + kBlock - 1) / kBlock;
      for (index_t blk = 0; blk < kMaxBlocks; ++blk) {
        index_t& entry = table[b * kMaxBlocks + blk];
        if (blk < blocks) {
          entry = ids[next++];
          continue;
        }
        switch (static_cast<past_length>(b % 4)) {
          case past_length::minus_one:
            entry = -1;
            break;
          case past_length::huge:
            entry = index_t(1) << 40;
            break;
          case past_length::stale:
            entry = owned + 1;
            break;  // an unowned NaN block
          case past_length::int_min:
            entry = std::numeric_limits<std::int32_t>::min();
            break;
        }
      }
      for (index_t t = 0; t < len; ++t) {
        const index_t at = (table[b * kMaxBlocks + t / kBlock] * kBlock + t % kBlock) * row;
        std::copy(&kc[(b * L + t) * row], &kc[(b * L + t) * row] + row, &k[at]);
        std::copy(&vc[(b * L + t) * row], &vc[(b * L + t) * row] + row, &v[at]);
      }
    }
    for (index_t e : table)  // int32 as vLLM holds it (huge ids wrap: still past the length)
      table32.push_back(static_cast<std::int32_t>(e));
    for (index_t len : kLengths) lengths32.push_back(static_cast<std::int32_t>(len));
  }
  paged_kv_cache<KV> cache(bool int32) const {
    paged_kv_cache<KV> c{k.data(), v.data(), num_blocks, kBlock, H_kv, d, {}, kMaxBlocks, {}};
    if (int32) {
      c.block_table = table32.data();
      c.cache_lengths = lengths32.data();
    } else {
      c.block_table = table.data();
      c.cache_lengths = kLengths.data();
    }
    return c;
  }
};

template <class T>  // an element type
std::vector<float> widened(const std::vector<T>& x) {
  std::vector<float> w;
  for (T e : x) w.push_back(static_cast<float>(kernels::to_compute(e)));
  return w;
}

/// Bitwise equality, element by element (NaN equal to NaN of the same bits).
template <class T>  // an element type
void expect_bitwise(const std::vector<T>& got, const std::vector<T>& want,
                    const std::string& what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  for (size_t i = 0; i < got.size(); ++i)
    ASSERT_EQ(std::memcmp(&got[i], &want[i], sizeof(T)), 0)
        << what << " element " << i << ": " << double(kernels::to_compute(got[i])) << " vs "
        << double(kernels::to_compute(want[i]));
}

/// paged_attention over the engine pool (int64 and int32 tables, both paths, 1 and 2
/// threads) against attention over a contiguous cache_view of the same tokens whose
/// padding is NaN, bit for bit; and the contiguous call against the double reference.
template <class C, class Policy>  // combo<Q, KV, O>; a length policy
void check_engine_batch(index_t n_q, const attention_options<Policy>& base,
                        const std::string& name) {
  using KV = typename C::kv;
  using O = typename C::out;
  using R = compute_t<O>;
  const index_t B = static_cast<index_t>(kLengths.size());
  const index_t L = *std::max_element(kLengths.begin(), kLengths.end());
  const stored_data<C> data(B, n_q, L, H, H_kv, d, 17);
  std::vector<KV> kc = data.k, vc = data.v;  // the contiguous cache: NaN past each length
  for (index_t b = 0; b < B; ++b)
    for (index_t e = kLengths[b] * row; e < L * row; ++e)
      kc[b * L * row + e] = vc[b * L * row + e] = KV(std::numeric_limits<float>::quiet_NaN());
  const engine_pool<KV> pool(kc, vc, L);
  const auto qv = bshd_view(data.q.data(), B, n_q, H, d);
  for (auto path : {attention_path::fused, attention_path::materialised})
    for (int threads : {1, 2}) {
      attention_options<Policy> o = base;
      o.path = path;
      o.threads = threads;
      const std::string what = name + " n_q " + std::to_string(n_q) +
                               (path == attention_path::fused ? " fused" : " materialised") +
                               " threads " + std::to_string(threads);
      std::vector<O> want(data.q.size(), O(-7.0f));
      std::vector<R> want_lse(static_cast<size_t>(B * H * n_q), R(-7));
      attention_options<Policy> contiguous = o;
      contiguous.mask.causal = true;  // what paged_attention adds
      attention(qv, cache_view(static_cast<const KV*>(kc.data()), B, L, H_kv, d, kLengths.data()),
                cache_view(static_cast<const KV*>(vc.data()), B, L, H_kv, d, kLengths.data()),
                bshd_view(want.data(), B, n_q, H, d), contiguous, {want_lse.data(), nullptr});
      for (bool int32 : {false, true}) {
        std::vector<O> got(data.q.size(), O(-7.0f));
        std::vector<R> got_lse(want_lse.size(), R(-7));
        paged_attention(qv, pool.cache(int32), bshd_view(got.data(), B, n_q, H, d), o,
                        {got_lse.data(), nullptr});
        const std::string which = what + (int32 ? " int32 table" : " int64 table");
        expect_bitwise(got, want, which + " out");
        expect_bitwise(got_lse, want_lse, which + " lse");
      }
      if (threads == 1) {  // the contiguous call against the reference on the exact values
        attention_run<float> run;
        run.out = widened(want);
        run.lse = widened(want_lse);
        attention_options<Policy> ref = contiguous;
        ref.mask.key_lengths = kLengths.data();
        expect_matches_reference(data.exact, ref, run, what, out_unit<O>(), out_tiny<O>(),
                                 path == attention_path::fused && flushed_dots<default_arch, C>());
      }
    }
}

/// Decode (1 row), a decode block (3 rows) and chunked prefill (4 and 20 rows: the GEMM
/// path), with SSMax and a trained negative b.
template <class C>  // combo<Q, KV, O>
void check_every_row_count(const std::string& name) {
  attention_options<ssmax_policy> o;  // default mask: paged_attention makes it causal
  o.policy = ssmax_policy(0.43, -0.2);
  for (index_t n_q : {1, 3, 4, 20}) check_engine_batch<C>(n_q, o, name);
}

TEST(PagedBounds, FloatPoolsReadOnlyTheirOwnBlocks) {
  check_every_row_count<combo<f32, f32, f32>>("f32");
}
TEST(PagedBounds, Bf16PoolsReadOnlyTheirOwnBlocks) {
  check_every_row_count<combo<f32, bf16, f32>>("bf16 pools");
  check_every_row_count<combo<bf16, bf16, bf16>>("bf16");
}
TEST(PagedBounds, HalfPoolsReadOnlyTheirOwnBlocks) {
  check_every_row_count<combo<f16, f16, f16>>("f16");
}
TEST(PagedBounds, DoublePoolsReadOnlyTheirOwnBlocks) {
  check_every_row_count<combo<double, double, double>>("f64");
}

TEST(PagedBounds, WindowsAndLogitExtrasReadOnlyTheirOwnBlocks) {
  const std::vector<float> slopes = alibi_slopes(H), sinks = {0.5f, -1.0f, 2.0f, 0.0f};
  attention_options<ssmax_policy> o;
  o.policy = ssmax_policy(0.43, -0.2);
  o.mask = attention_mask::sliding_window(40);
  o.logit.softcap = 5.0;
  o.logit.sinks = sinks.data(), o.logit.sink_heads = H;
  o.logit.alibi_slopes = slopes.data(), o.logit.alibi_heads = H;
  for (index_t n_q : {1, 20}) check_engine_batch<combo<f32, bf16, f32>>(n_q, o, "window extras");
  attention_options<softmax_policy> local;
  local.mask = attention_mask::local_window(50, 3);  // causal too: the right part is empty
  for (index_t n_q : {1, 20}) check_engine_batch<combo<f32, f32, f32>>(n_q, local, "local");
}

TEST(PagedBounds, ChunkedPrefillIsCausalWithDefaultOptions) {
  // paged_attention with default options against the contiguous call with the mask an
  // engine means, attention_mask::cache: the new tokens see the cache up to themselves.
  using C = combo<f32, f32, f32>;
  const index_t B = static_cast<index_t>(kLengths.size()), n_q = 6;
  const index_t L = *std::max_element(kLengths.begin(), kLengths.end());
  const stored_data<C> data(B, n_q, L, H, H_kv, d, 3);
  const engine_pool<f32> pool(data.k, data.v, L);
  const auto qv = bshd_view(data.q.data(), B, n_q, H, d);
  std::vector<float> got(data.q.size()), want(data.q.size());
  paged_attention(qv, pool.cache(false), bshd_view(got.data(), B, n_q, H, d));
  attention_options<softmax_policy> cache;
  cache.mask = attention_mask::cache(kLengths.data());
  attention(qv, bshd_view(data.k.data(), B, L, H_kv, d), bshd_view(data.v.data(), B, L, H_kv, d),
            bshd_view(want.data(), B, n_q, H, d), cache);
  expect_bitwise(got, want, "default options");
  // Written out: sequence 0's first new token (position 300 - 6 = 294) sees keys 0..294,
  // softmax of q.k / sqrt(d) over them, head 0 (kv head 0), in double.
  const index_t p0 = kLengths[0] - n_q;
  std::vector<double> z(static_cast<size_t>(p0 + 1)), o(static_cast<size_t>(d), 0.0);
  double top = -INFINITY, sum = 0.0;
  for (index_t j = 0; j <= p0; ++j) {
    double dot = 0.0;
    for (index_t c = 0; c < d; ++c) dot += double(data.q[c]) * double(data.k[j * row + c]);
    z[j] = dot / std::sqrt(double(d));
    top = std::max(top, z[j]);
  }
  for (index_t j = 0; j <= p0; ++j) {
    const double w = std::exp(z[j] - top);
    sum += w;
    for (index_t c = 0; c < d; ++c) o[c] += w * double(data.v[j * row + c]);
  }
  for (index_t c = 0; c < d; ++c)
    EXPECT_NEAR(got[c], o[c] / sum, 1e-5) << "written-out row, element " << c;
}

}  // namespace
}  // namespace ssmax::testing
