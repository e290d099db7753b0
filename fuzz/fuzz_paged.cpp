// libFuzzer target for paged_attention (paged.hpp): fuzzed ragged batches over a paged KV
// cache as an inference engine hands it over. It draws the block size, the table's width
// (max_blocks), small shapes (a campaign runs a million inputs; see draw_cache),
// per-sequence cache lengths (0, multiples of the block size and one off them, the table's
// whole reach), a block table whose owned entries are distinct or shared (prefix sharing,
// a block used twice) and whose entries past each length hold anything (-1, huge ids,
// INT32_MIN, INT64_MIN, one past the pool, stale valid ids), pools sized exactly (ASan
// reports any read past them) whose unowned blocks and rows hold NaN, inf, huge values and
// raw bit patterns, int32 or int64 tables and lengths, n_q 1..6, GQA, the storage types of
// the pools (float, double, bfloat16, half with q and out as allowed; and, with float q and
// out, six pairs of K and V formats with an 8-bit one (eight_bit_combinations): block_q8_0
// (d 32 or 64), fp8_e4m3 and fp8_e5m2 (a scale per tensor or per kv head);
// unowned blocks hold NaN codes, NaN or inf Q8_0 scales and raw bytes), both paths (and
// automatic with weights), the opt-in int8 dot products, 1 or (rarely) 2 threads, Softmax
// and SSMax (shared or per-head
// s and b, either sign), scales, every logit extra (additive bias with -inf entries and
// broadcast strides, ALiBi slopes of either sign, soft-cap, sinks with -inf) and the mask
// kinds paged_attention takes (sliding window, local window, boolean mask with broadcast
// strides, n_override, query_offset). Checks, for each input:
//   - paged_attention's out, lse (and weights) equal, bit for bit, ssmax::attention's on a
//     contiguous cache_view copy of the same tokens whose padding holds NaN, with the same
//     options plus mask.causal = true (neither call may throw);
//   - with finite tokens, the contiguous result is within the reference bound of
//     tests/support/attention_check.hpp (16-bit outputs with their rounding, as the tests;
//     the weights only where that bound's first order holds: weights_past_linear_bound);
//   - now and then out or lse is placed over an array the call reads (the block table, the
//     lengths, a pool, q, the bias, the boolean mask, the ALiBi slopes or the sinks): the
//     call must throw argument_error naming the output and write nothing (the shared memory
//     and every output unchanged);
//   - now and then the cache is broken on purpose (a block-table entry inside a length
//     outside the pool, a length past the table's reach or negative, mask.key_lengths
//     set, an fp8 pool's scale missing or not finite and positive, a scale on a pool that
//     is not fp8): the call must throw argument_error naming it and write nothing.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <memory>
#include <ssmax/paged.hpp>
#include <ssmax/quantize.hpp>
#include <string>
#include <tuple>
#include <vector>

#include "fuzz_input.hpp"
#include "support/stored_attention.hpp"

namespace ssmax::fuzz {
namespace {

using testing::bf16;
using testing::f16;
using testing::f32;

/// One storage combination of a paged call: q, the K pool, the V pool, out.
template <class Q, class K, class V, class O>
struct combo {
  using q = Q;
  using k = K;
  using v = V;
  using out = O;
};

/// The storage combinations (q, pools, out) of one pool type: float, double, each 16-bit
/// pool with float q and out (the serving case), all-16-bit, and mixed 16-bit.
using combinations = std::tuple<combo<f32, f32, f32, f32>, combo<double, double, double, double>,
                                combo<f32, bf16, bf16, f32>, combo<f32, f16, f16, f32>,
                                combo<bf16, bf16, bf16, bf16>, combo<f16, f16, f16, f16>,
                                combo<bf16, f16, f16, f32>>;
/// The 8-bit pools, with float q and out (their serving case): each format as K and as V,
/// alone and beside another format. Each pair is one instantiation of the kernels per
/// architecture, so the list is short rather than every pair.
using eight_bit_combinations =
    std::tuple<combo<f32, block_q8_0, block_q8_0, f32>, combo<f32, fp8_e4m3, fp8_e4m3, f32>,
               combo<f32, fp8_e5m2, fp8_e5m2, f32>, combo<f32, block_q8_0, f16, f32>,
               combo<f32, bf16, fp8_e4m3, f32>, combo<f32, fp8_e5m2, block_q8_0, f32>>;

/// The widest architecture this binary targets and the portable one.
using paged_architectures =
    std::conditional_t<std::is_same<default_arch, scalar_arch>::value, std::tuple<scalar_arch>,
                       std::tuple<default_arch, scalar_arch>>;

/// The drawn case, printed with a finding.
std::string& drawn_case() {
  static std::string text;
  return text;
}
/// Prints the drawn case and the finding, and aborts (libFuzzer saves the input).
[[noreturn]] void paged_finding(const char* what, const char* detail = "") {
  std::fprintf(stderr, "ssmax fuzz_paged case: %s\n", drawn_case().c_str());
  finding(what, detail);
}
/// Aborts with `what` unless ok.
void expect(bool ok, const char* what, const char* detail = "") {
  if (!ok) paged_finding(what, detail);
}

/// x stored as S (rounded to nearest even for the 16-bit types).
template <class S>  // a storage type
S stored(double x) {
  return kernels::from_compute<S>(static_cast<compute_t<S>>(x));
}
/// The exact value of a stored element.
template <class S>  // a storage type
double exact_of(S x) {
  return static_cast<double>(kernels::to_compute(x));
}

/// token_value of the 16- and 32-bit types.
template <class S>  // a storage type (is_storage_type_v)
S plain_token_value(input& in) {
  using T = compute_t<S>;
  const std::uint8_t kind = in.byte();
  const double sign = (kind & 0x80) ? -1.0 : 1.0;
  switch (kind & 0x07) {
    case 0:
      return stored<S>(0.0);
    case 1:
      return stored<S>(sign * static_cast<double>(std::numeric_limits<T>::denorm_min()) *
                       static_cast<double>(1 + in.byte()));
    case 2:
      return stored<S>(sign * static_cast<double>(std::numeric_limits<T>::min()));
    case 3:
      return stored<S>(sign * static_cast<double>(in.byte()) * 4.0);
    default:
      return stored<S>(static_cast<double>(static_cast<std::int8_t>(in.byte())) / 128.0);
  }
}

/// A finite fp8 code of F: any byte but the NaN codes (and E5M2's infinities), which
/// become the largest finite of their sign.
template <class F>  // fp8_e4m3 or fp8_e5m2
F finite_code(std::uint8_t bits) {
  const F f{bits};
  return std::isfinite(to_float(f)) ? f : to_fp8<F>(std::copysign(1e30f, to_float(f)));
}

/// A finite Q8_0 block: a scale of each kind (zero, f16 subnormals, ordinary, the largest
/// f16, either sign) and any int8 codes (-128, which quantize_q8_0 does not write, too).
inline block_q8_0 finite_block(input& in) {
  block_q8_0 b;
  const std::uint8_t kind = in.byte();
  const double sign = (kind & 0x80) ? -1.0 : 1.0;
  switch (kind & 0x07) {
    case 0:
      b.d = Eigen::half(0.0f);
      break;
    case 1:  // a subnormal f16
      b.d = Eigen::numext::bit_cast<Eigen::half>(
          static_cast<std::uint16_t>((kind & 0x80) << 8 | (1 + in.byte() * 4)));
      break;
    case 2:
      b.d = Eigen::half(static_cast<float>(sign * 65504.0));
      break;
    case 3:
      b.d = Eigen::half(static_cast<float>(sign * static_cast<double>(1 + in.byte()) / 16.0));
      break;
    default:
      b.d = Eigen::half(static_cast<float>(sign * static_cast<double>(1 + in.byte()) / 32768.0));
      break;
  }
  for (auto& q : b.qs) q = static_cast<std::int8_t>(in.byte());
  return b;
}

/// A finite token value: zeros, subnormals and the smallest normal (of the compute type),
/// ordinary values in [-1, 1), and large ones with ties (fuzz_attention's mix); for the
/// 8-bit formats any finite code or block.
template <class S>  // a storage type
S token_value(input& in) {
  if constexpr (is_fp8_v<S>) {
    return finite_code<S>(in.byte());
  } else if constexpr (std::is_same<S, block_q8_0>::value) {
    return finite_block(in);
  } else {
    return plain_token_value<S>(in);
  }
}

/// garbage of the 16- and 32-bit types.
template <class S>  // a storage type (is_storage_type_v)
S plain_garbage(input& in) {
  switch (in.byte() % 8) {
    case 0:
      return stored<S>(std::numeric_limits<double>::quiet_NaN());
    case 1:
      return stored<S>(std::numeric_limits<double>::infinity());
    case 2:
      return stored<S>(-std::numeric_limits<double>::infinity());
    case 3:
      return stored<S>(1e30);
    case 4:
      return stored<S>(-60000.0);
    default: {
      S s;
      unsigned char bytes[sizeof(S)];
      for (auto& b : bytes) b = in.byte();
      std::memcpy(&s, bytes, sizeof(S));
      return s;
    }
  }
}

/// What no call may read: NaN, +-inf, huge values and raw bit patterns; for fp8 the NaN
/// codes (0x7f, 0xff), E5M2's infinities, the largest finite and raw bytes; for Q8_0 a NaN,
/// inf or largest f16 scale or raw bytes.
template <class S>  // a storage type
S garbage(input& in) {
  if constexpr (is_fp8_v<S>) {
    static const std::uint8_t codes[] = {0x7f, 0xff, 0x7c, 0xfc, 0x7e, 0xfe};
    const std::uint8_t kind = in.byte() % 8;
    return S{kind < 6 ? codes[kind] : in.byte()};
  } else if constexpr (std::is_same<S, block_q8_0>::value) {
    static const std::uint16_t scales[] = {0x7e00, 0xfe00, 0x7c00, 0xfc00, 0x7bff, 0x7fff};
    const std::uint8_t kind = in.byte() % 8;
    block_q8_0 b;
    std::uint16_t bits = scales[kind % 6];
    if (kind >= 6) bits = static_cast<std::uint16_t>(in.byte() << 8), bits |= in.byte();
    b.d = Eigen::numext::bit_cast<Eigen::half>(bits);
    for (auto& q : b.qs) q = static_cast<std::int8_t>(in.byte());
    return b;
  } else {
    return plain_garbage<S>(in);
  }
}

/// A NaN of S: the contiguous copy's padding, which no call may read.
template <class S>  // a K/V storage type
S nan_of() {
  if constexpr (is_fp8_v<S>) {
    return S{0x7f};
  } else if constexpr (std::is_same<S, block_q8_0>::value) {
    block_q8_0 b;
    b.d = Eigen::half(std::numeric_limits<float>::quiet_NaN());
    std::fill(std::begin(b.qs), std::end(b.qs), std::int8_t{1});
    return b;
  } else {
    return stored<S>(std::numeric_limits<double>::quiet_NaN());
  }
}

/// A token value of a batch with finite tokens, or now and then (non_finite) garbage.
template <class S>  // a storage type
S value(input& in, bool non_finite) {
  if (non_finite && in.byte() % 16 == 0) return garbage<S>(in);
  return token_value<S>(in);
}

/// The scale of an fp8 pool, one per tensor or per kv head (empty: not fp8).
inline value_scale scale_of(const std::vector<float>& scales) {
  if (scales.empty()) return {};
  return {scales.data(), scales.size() > 1};
}

/// The exact values [H_kv, d] of one pool row (elements of S, with the fp8 scales).
template <class S>  // a K/V storage type
void row_values(const S* row, index_t H_kv, index_t d, const std::vector<float>& scales,
                double* x) {
  for (index_t h = 0; h < H_kv; ++h)
    for (index_t c = 0; c < d; ++c) {
      double& e = x[h * d + c];
      if constexpr (is_fp8_v<S>) {
        const float scale = scales[scales.size() > 1 ? static_cast<size_t>(h) : 0];
        e = static_cast<double>(scale) * static_cast<double>(to_float(row[h * d + c]));
      } else if constexpr (std::is_same<S, block_q8_0>::value) {
        const block_q8_0& b = row[(h * d + c) / kQ8_0Block];
        e = static_cast<double>(static_cast<float>(b.d)) * b.qs[c % kQ8_0Block];
      } else {
        e = exact_of(row[h * d + c]);
      }
    }
}

/// Everything one fuzzed paged call reads, and its contiguous twin.
template <class C>  // combo<Q, K, V, O>
struct paged_case {
  using Q = typename C::q;
  using K = typename C::k;
  using V = typename C::v;
  using O = typename C::out;
  using R = compute_t<O>;
  static constexpr index_t k_per = values_per_element_v<K>, v_per = values_per_element_v<V>;

  index_t B = 1, n_q = 1, H = 1, H_kv = 1, d = 1;
  index_t block_size = 1, max_blocks = 1, num_blocks = 1;
  index_t L = 1;         // max(1, longest length): the logical key axis
  index_t capacity = 1;  // rows per sequence of the contiguous copy (>= L)
  bool table32 = false, lengths32 = false, non_finite = false;
  std::vector<index_t> lengths64, table64;
  std::vector<std::int32_t> lengths32v, table32v;
  // Q8_0 pools hold d / 32 blocks per head row.
  std::vector<K> k_pool;                  // [num_blocks, block_size, H_kv, d], exactly sized
  std::vector<V> v_pool;                  // [num_blocks, block_size, H_kv, d], exactly sized
  std::vector<K> k_cont;                  // [B, capacity, H_kv, d], NaN past each length
  std::vector<V> v_cont;                  // [B, capacity, H_kv, d], NaN past each length
  std::vector<float> k_scales, v_scales;  // fp8 pools: [1] or [H_kv]; empty otherwise
  std::vector<Q> q;                       // [B, n_q, H, d]
  std::unique_ptr<testing::attention_data<double>> exact;  // q, k, v [B, L, H_kv, d] exact

  // The mask's and the logit's arrays, each exactly sized.
  std::unique_ptr<bool[]> allowed;
  index_t allowed_count = 0;
  std::vector<float> bias, slopes, sinks;

  index_array lengths() const {
    if (lengths32) return index_array(lengths32v.data());
    return index_array(lengths64.data());
  }
  index_array table() const {
    if (table32) return index_array(table32v.data());
    return index_array(table64.data());
  }
  index_t length(index_t b) const { return lengths64[static_cast<size_t>(b)]; }
  paged_kv_cache<K, V> cache() const {
    paged_kv_cache<K, V> c;
    c.k_pool = k_pool.data();
    c.v_pool = v_pool.data();
    c.num_blocks = num_blocks;
    c.block_size = block_size;
    c.kv_heads = H_kv;
    c.dim = d;
    c.block_table = table();
    c.max_blocks = max_blocks;
    c.cache_lengths = lengths();
    c.k_scale = scale_of(k_scales);
    c.v_scale = scale_of(v_scales);
    return c;
  }
  tensor_view<const Q> qv() const { return bshd_view(q.data(), B, n_q, H, d); }
  /// The contiguous copy's views (cache_view, with the fp8 scales).
  tensor_view<const K> k_view() const {
    auto t = cache_view(k_cont.data(), B, capacity, H_kv, d / k_per, lengths());
    t.scale = scale_of(k_scales);
    return t;
  }
  tensor_view<const V> v_view() const {
    auto t = cache_view(v_cont.data(), B, capacity, H_kv, d / v_per, lengths());
    t.scale = scale_of(v_scales);
    return t;
  }
};

/// fp8 scales for a pool of S (none for the other formats): one, or one per kv head, each
/// a power of 2 or not, from 2^-8 to 2^4.
template <class S>  // a K/V storage type
std::vector<float> draw_scales(input& in, index_t H_kv) {
  if constexpr (!is_fp8_v<S>) {
    return {};
  } else {
    std::vector<float> scales(static_cast<size_t>(in.flag() ? H_kv : 1));
    for (float& x : scales)
      x = std::ldexp(1.0f + static_cast<float>(in.byte() % 4) / 4.0f,
                     static_cast<int>(in.between(-8, 4)));
    return scales;
  }
}

/// Draws the shapes, the lengths, the table, the pools and q; fills the contiguous copy
/// and the exact values.
template <class C>  // combo<Q, K, V, O>
void draw_cache(input& in, paged_case<C>& p) {
  using K = typename C::k;
  using V = typename C::v;
  using Q = typename C::q;
  // Small shapes keep an input cheap (a campaign runs a million): batches of at most 3
  // sequences and ~96 keys in all, at most 4 heads, d mostly 1, 2, 4 or 8 (now and then
  // 16 or an odd width for the SIMD tails), n_q mostly 1 or 2 (now and then up to 6: the
  // GEMM paths start past kDotMaxRows). Now and then (1 in 32) one long sequence of up to
  // 1100 keys over a tiny head: several key blocks of the fused kernel (kKeyBlock) and,
  // with 3 or 4 heads on one kv head, the key chunks a decode splits into
  // (kDecodeChunk / heads keys). A Q8_0 pool takes d = 32 (now and then 64).
  const bool long_keys = in.byte() % 32 == 0;
  p.B = long_keys ? 1 : in.between(1, 3);
  p.H_kv = long_keys ? 1 : in.between(1, 2);
  p.H = p.H_kv * (long_keys ? in.between(1, 4) : in.between(1, 2));
  static const index_t dims[] = {1, 1, 2, 2, 4, 4, 8, 16};
  p.d = long_keys ? in.between(1, 4) : (in.byte() % 8 == 0 ? in.between(1, 16) : dims[in.below(8)]);
  if (p.k_per > 1 || p.v_per > 1) p.d = kQ8_0Block * (!long_keys && in.byte() % 4 == 0 ? 2 : 1);
  p.n_q = in.byte() % 4 == 0 ? in.between(3, 6) : in.between(1, 2);
  p.non_finite = in.byte() % 16 == 0;
  static const index_t sizes[] = {1, 2, 3, 4, 5, 7, 8, 16, 32, 64};
  p.block_size = in.byte() % 4 == 0 ? in.between(1, 24) : sizes[in.below(10)];
  const index_t reach_cap = long_keys ? 1100 : (in.byte() % 4 == 0 ? 24 : 96 / p.B);
  p.max_blocks = in.between(1, std::max<index_t>(1, reach_cap / p.block_size));
  const index_t reach = p.max_blocks * p.block_size;

  p.lengths64.resize(static_cast<size_t>(p.B));
  index_t longest = 0;
  for (auto& len : p.lengths64) {
    const index_t bs = p.block_size;
    switch (in.byte() % 8) {
      case 0:
        len = 0;
        break;
      case 1:
        len = reach;
        break;
      case 2:
        len = bs * in.between(0, p.max_blocks);
        break;
      case 3:
        len = std::min(reach, bs * in.between(0, p.max_blocks) + 1);
        break;
      case 4:
        len = std::max<index_t>(0, bs * in.between(0, p.max_blocks) - 1);
        break;
      case 5:
        len = in.between(0, std::min<index_t>(reach, 24));
        break;
      default:
        len = in.between(0, reach);
        break;
    }
    longest = std::max(longest, len);
  }
  p.L = std::max<index_t>(1, longest);
  p.capacity = p.L + (in.byte() % 4 == 0 ? in.between(1, 3) : 0);

  // The table: owned entries distinct (a shuffled pool) or drawn with replacement (blocks
  // shared between sequences or used twice); entries past each length anything.
  index_t owned = 0;
  for (index_t len : p.lengths64) owned += (len + p.block_size - 1) / p.block_size;
  const bool distinct = in.flag();
  p.num_blocks = distinct ? std::max<index_t>(1, owned + in.between(0, 3))
                          : in.between(1, std::max<index_t>(1, owned + 3));
  std::vector<index_t> ids(static_cast<size_t>(p.num_blocks));
  for (index_t i = 0; i < p.num_blocks; ++i) ids[static_cast<size_t>(i)] = i;
  for (index_t i = p.num_blocks - 1; i > 0; --i)
    std::swap(ids[static_cast<size_t>(i)], ids[static_cast<size_t>(in.below(i + 1))]);
  p.table64.assign(static_cast<size_t>(p.B * p.max_blocks), 0);
  size_t next = 0;
  for (index_t b = 0; b < p.B; ++b) {
    const index_t blocks = (p.length(b) + p.block_size - 1) / p.block_size;
    for (index_t blk = 0; blk < p.max_blocks; ++blk) {
      index_t& entry = p.table64[static_cast<size_t>(b * p.max_blocks + blk)];
      if (blk < blocks) {
        entry = distinct ? ids[next++] : in.below(p.num_blocks);
        continue;
      }
      switch (in.byte() % 8) {
        case 0:
          entry = -1;
          break;
        case 1:
          entry = index_t(1) << 40;
          break;
        case 2:
          entry = std::numeric_limits<std::int32_t>::min();
          break;
        case 3:
          entry = std::numeric_limits<index_t>::min();
          break;
        case 4:
          entry = p.num_blocks;  // one past the pool
          break;
        case 5:
          entry = std::numeric_limits<std::int32_t>::max();
          break;
        default:
          entry = in.below(p.num_blocks);  // stale: a valid id of another or no sequence
          break;
      }
    }
  }
  p.table32 = in.flag();
  p.lengths32 = in.flag();
  for (index_t e : p.table64)  // as an engine holds it (huge ids wrap: still past the length)
    p.table32v.push_back(static_cast<std::int32_t>(e));
  for (index_t len : p.lengths64) p.lengths32v.push_back(static_cast<std::int32_t>(len));

  // The pools: garbage everywhere (a kind per row), then the tokens of every owned row.
  // Rows count elements: k_row and v_row (H_kv d values, d / 32 blocks per head for Q8_0).
  const index_t row = p.H_kv * p.d, pool_rows = p.num_blocks * p.block_size;
  const index_t k_row = row / p.k_per, v_row = row / p.v_per;
  p.k_scales = draw_scales<K>(in, p.H_kv);
  p.v_scales = draw_scales<V>(in, p.H_kv);
  p.k_pool.resize(static_cast<size_t>(pool_rows * k_row));
  p.v_pool.resize(static_cast<size_t>(pool_rows * v_row));
  for (index_t r = 0; r < pool_rows; ++r) {
    const K gk = garbage<K>(in);
    const V gv = garbage<V>(in);
    const bool mixed = in.byte() % 8 == 0;  // now and then a different value per element
    for (index_t e = r * k_row; e < (r + 1) * k_row; ++e)
      p.k_pool[static_cast<size_t>(e)] = mixed ? garbage<K>(in) : gk;
    for (index_t e = r * v_row; e < (r + 1) * v_row; ++e)
      p.v_pool[static_cast<size_t>(e)] = mixed ? garbage<V>(in) : gv;
  }
  std::vector<bool> written(static_cast<size_t>(pool_rows), false);
  // Sized by hand: the constructor's random fill (overwritten here) costs more than the
  // rest of the draw on the small shapes.
  p.exact.reset(new testing::attention_data<double>(0, 0, 0, 0, 0, 0));
  auto& x = *p.exact;
  x.B = p.B, x.n_q = p.n_q, x.n_k = p.L, x.H = p.H, x.H_kv = p.H_kv, x.d = p.d;
  x.q.assign(static_cast<size_t>(p.B * p.n_q * p.H * p.d), 0.0);
  x.k.assign(static_cast<size_t>(p.B * p.L * p.H_kv * p.d), 0.0);
  x.v.assign(x.k.size(), 0.0);
  p.k_cont.assign(static_cast<size_t>(p.B * p.capacity * k_row), nan_of<K>());
  p.v_cont.assign(static_cast<size_t>(p.B * p.capacity * v_row), nan_of<V>());
  for (index_t b = 0; b < p.B; ++b)
    for (index_t t = 0; t < p.length(b); ++t) {
      const index_t blk = p.table64[static_cast<size_t>(b * p.max_blocks + t / p.block_size)];
      const index_t r = blk * p.block_size + t % p.block_size;
      K* k = &p.k_pool[static_cast<size_t>(r * k_row)];
      V* v = &p.v_pool[static_cast<size_t>(r * v_row)];
      if (!written[static_cast<size_t>(r)]) {
        written[static_cast<size_t>(r)] = true;
        for (index_t e = 0; e < std::max(k_row, v_row); ++e) {
          if (e < k_row) k[e] = value<K>(in, p.non_finite);
          if (e < v_row) v[e] = value<V>(in, p.non_finite);
        }
      }
      std::copy(k, k + k_row, &p.k_cont[static_cast<size_t>((b * p.capacity + t) * k_row)]);
      std::copy(v, v + v_row, &p.v_cont[static_cast<size_t>((b * p.capacity + t) * v_row)]);
      const size_t xe = static_cast<size_t>((b * p.L + t) * row);
      row_values(k, p.H_kv, p.d, p.k_scales, &x.k[xe]);
      row_values(v, p.H_kv, p.d, p.v_scales, &x.v[xe]);
    }
  p.q.resize(x.q.size());
  for (size_t i = 0; i < p.q.size(); ++i) {
    p.q[i] = value<Q>(in, p.non_finite);
    x.q[i] = exact_of(p.q[i]);
  }
}

/// Draws the mask (the causal constraint paged_attention adds aside), the logit extras,
/// the scale, the threads and the path into o, their arrays into p.
template <class C>  // combo<Q, K, V, O>
void draw_options(input& in, paged_case<C>& p, attention_options<>& o) {
  attention_mask& m = o.mask;
  const int kind = in.byte() % 8;
  if (kind == 3 || kind == 6) m.window = in.between(1, p.L + 2);
  if (kind == 4 || kind == 7) {
    m.local = true;
    m.window_left = in.between(0, p.L + 1);
    m.window_right = in.between(0, 3);
  }
  if (kind >= 5) {  // a boolean mask over [B, H, n_q, n_k]; batch and head strides may broadcast
    m.allowed_stride_q = p.L;
    m.allowed_stride_h = in.flag() ? 0 : p.n_q * p.L;
    m.allowed_stride_b = in.flag() ? 0 : p.H * p.n_q * p.L;
    p.allowed_count = (p.B - 1) * m.allowed_stride_b + (p.H - 1) * m.allowed_stride_h +
                      (p.n_q - 1) * m.allowed_stride_q + p.L;
    p.allowed.reset(new bool[static_cast<size_t>(p.allowed_count)]);
    const int density = in.byte() % 4;  // 0: all hidden ... 3: mostly visible
    for (index_t i = 0; i < p.allowed_count; ++i)
      p.allowed[static_cast<size_t>(i)] = in.byte() % 4 < density;
    m.allowed = p.allowed.get();
  }
  if (in.byte() % 8 == 0) m.n_override = in.between(1, 1 << 16);
  if (in.byte() % 8 == 0) m.query_offset = in.between(0, p.L);

  logit_options& lo = o.logit;
  if (in.byte() % 3 == 0) {  // additive bias [B, H, n_q, n_k], -inf hiding some keys
    logit_bias& b = lo.bias;
    b.batch = p.B, b.heads = p.H, b.rows = p.n_q, b.keys = p.L;
    b.stride_k = 1, b.stride_q = p.L;
    b.stride_h = in.flag() ? 0 : p.n_q * p.L;
    b.stride_b = in.flag() ? 0 : p.H * p.n_q * p.L;
    const index_t extent =
        (p.B - 1) * b.stride_b + (p.H - 1) * b.stride_h + (p.n_q - 1) * b.stride_q + p.L;
    p.bias.resize(static_cast<size_t>(extent));
    const int hidden = in.byte() % 4;  // 0: none ... 3: often
    for (auto& x : p.bias) {
      const std::uint8_t v = in.byte();
      if (v % 8 < hidden)
        x = -std::numeric_limits<float>::infinity();
      else if (v % 8 == 7)
        x = static_cast<float>(static_cast<std::int8_t>(in.byte())) * 8.0f;  // large
      else
        x = static_cast<float>(static_cast<std::int8_t>(in.byte())) / 32.0f;
    }
    b.data = p.bias.data();
  }
  if (in.byte() % 4 == 0) {  // ALiBi: the standard slopes or any finite ones, either sign
    if (in.flag()) {
      p.slopes = alibi_slopes(p.H);
    } else {
      p.slopes.resize(static_cast<size_t>(p.H));
      for (auto& s : p.slopes) s = static_cast<float>(static_cast<std::int8_t>(in.byte())) / 64.0f;
    }
    lo.alibi_slopes = p.slopes.data(), lo.alibi_heads = p.H;
  }
  if (in.byte() % 4 == 0) {
    static const double caps[] = {1.5, 5.0, 30.0, 1e-3, 0.25};
    lo.softcap = in.flag() ? caps[in.below(5)] : static_cast<double>(1 + in.byte()) / 8.0;
  }
  if (in.byte() % 4 == 0) {  // sinks: finite, or -inf (no sink)
    p.sinks.resize(static_cast<size_t>(p.H));
    for (auto& s : p.sinks)
      s = in.byte() % 6 == 0 ? -std::numeric_limits<float>::infinity()
                             : static_cast<float>(static_cast<std::int8_t>(in.byte())) / 16.0f;
    lo.sinks = p.sinks.data(), lo.sink_heads = p.H;
  }

  const int scale_choice = in.byte() % 5;
  if (scale_choice == 1) o.scale = 0.0;
  if (scale_choice == 2) o.scale = 10.0;
  if (scale_choice == 3) o.scale = 1e-3;
  o.threads = in.byte() % 16 == 0 ? 2 : 1;  // rarely 2: starting threads is costly
  const int path = in.byte() % 3;
  o.path = path == 0   ? attention_path::fused
           : path == 1 ? attention_path::materialised
                       : attention_path::automatic;
  o.allow_bf16_weights = in.byte() % 4 == 0;
  o.bf16 = static_cast<bf16_method>(in.byte() % 3);  // automatic, dot_products, float_gemm
  o.allow_int8_dot_products = in.byte() % 4 == 0;
}

/// Bitwise equality of two arrays of the same length.
template <class T>  // an element type
bool same_bits(const T* a, const T* b, size_t count) {
  return count == 0 || std::memcmp(a, b, count * sizeof(T)) == 0;
}

/// What each call writes, every element set to a sentinel first.
template <class C>  // combo<Q, K, V, O>
struct outputs {
  using O = typename C::out;
  using R = compute_t<O>;
  std::vector<O> out;
  std::vector<R> lse, weights;
  outputs(const paged_case<C>& p, bool want_lse, bool want_weights)
      : out(static_cast<size_t>(p.B * p.n_q * p.H * p.d), stored<O>(-7.0)) {
    if (want_lse) lse.assign(static_cast<size_t>(p.B * p.H * p.n_q), R(-7));
    if (want_weights) weights.assign(static_cast<size_t>(p.B * p.H * p.n_q * p.L), R(-7));
  }
  attention_extras<R> extras() {
    return {lse.empty() ? nullptr : lse.data(), weights.empty() ? nullptr : weights.data()};
  }
  bool untouched() const {
    const O o = stored<O>(-7.0);
    for (const O& e : out)
      if (std::memcmp(&e, &o, sizeof(O)) != 0) return false;
    for (R e : lse)
      if (e != R(-7)) return false;
    for (R e : weights)
      if (e != R(-7)) return false;
    return true;
  }
};

/// Runs `call`, which must throw argument_error naming `argument`; `unchanged` must then
/// hold (nothing written).
template <class Call, class Unchanged>  // callables: () -> void, () -> bool
void expect_rejected(Call&& call, const char* argument, Unchanged&& unchanged) {
  try {
    call();
  } catch (const argument_error& error) {
    expect(error.argument() == argument, "wrong argument named; expected", argument);
    expect(unchanged(), "rejected paged_attention call wrote something:", error.what());
    return;
  }
  paged_finding("invalid paged_attention call accepted; expected an error naming", argument);
}

/// Places out or extras.lse over one array the call reads (a copy of it in a shared
/// arena, the call pointed at the copy): the call must throw argument_error naming the
/// output and leave the arena (the array and the output) and the other outputs unchanged.
template <class Arch, class C, class Policy>  // architecture; combo<Q, K, V, O>; policy
void check_overlap(input& in, const paged_case<C>& p, const attention_options<Policy>& o,
                   bool want_lse, bool want_weights) {
  using Q = typename C::q;
  using K = typename C::k;
  using V = typename C::v;
  using O = typename C::out;
  using R = compute_t<O>;
  paged_kv_cache<K, V> cache = p.cache();
  attention_options<Policy> opts = o;
  const Q* q = p.q.data();
  // The arrays a victim may be: (pointer, bytes).
  struct victim {
    const void* data;
    size_t bytes;
  };
  std::vector<victim> victims = {
      {cache.block_table.data(),
       static_cast<size_t>(p.B * p.max_blocks * cache.block_table.element_bytes())},
      {cache.cache_lengths.data(), static_cast<size_t>(p.B * cache.cache_lengths.element_bytes())},
      {p.k_pool.data(), p.k_pool.size() * sizeof(K)},
      {p.v_pool.data(), p.v_pool.size() * sizeof(V)},
      {p.q.data(), p.q.size() * sizeof(Q)}};
  if (!p.bias.empty()) victims.push_back({p.bias.data(), p.bias.size() * sizeof(float)});
  if (p.allowed) victims.push_back({p.allowed.get(), static_cast<size_t>(p.allowed_count)});
  if (!p.slopes.empty()) victims.push_back({p.slopes.data(), p.slopes.size() * sizeof(float)});
  if (!p.sinks.empty()) victims.push_back({p.sinks.data(), p.sinks.size() * sizeof(float)});
  if (!p.k_scales.empty())
    victims.push_back({p.k_scales.data(), p.k_scales.size() * sizeof(float)});
  if (!p.v_scales.empty())
    victims.push_back({p.v_scales.data(), p.v_scales.size() * sizeof(float)});
  const size_t which = static_cast<size_t>(in.below(static_cast<index_t>(victims.size())));
  const victim& v = victims[which];
  const bool over_lse = in.flag();
  const size_t out_bytes = over_lse ? static_cast<size_t>(p.B * p.H * p.n_q) * sizeof(R)
                                    : static_cast<size_t>(p.B * p.n_q * p.H * p.d) * sizeof(O);
  // Either the output starts inside the array or the array inside the output (8-byte
  // steps keep every element type aligned).
  size_t at_victim = 0, at_output = 0;
  if (in.flag())
    at_output = 8 * static_cast<size_t>(in.below(static_cast<index_t>((v.bytes + 7) / 8)));
  else
    at_victim = 8 * static_cast<size_t>(in.below(static_cast<index_t>((out_bytes + 7) / 8)));
  const size_t words = (std::max(at_victim + v.bytes, at_output + out_bytes) + 7) / 8;
  std::unique_ptr<std::uint64_t[]> arena(new std::uint64_t[words]);
  auto* base = reinterpret_cast<unsigned char*>(arena.get());
  std::memset(base, 0xA5, words * 8);
  std::memcpy(base + at_victim, v.data, v.bytes);
  const void* copy = base + at_victim;
  switch (which) {
    case 0:
      if (p.table32)
        cache.block_table = static_cast<const std::int32_t*>(copy);
      else
        cache.block_table = static_cast<const std::int64_t*>(copy);
      break;
    case 1:
      if (p.lengths32)
        cache.cache_lengths = static_cast<const std::int32_t*>(copy);
      else
        cache.cache_lengths = static_cast<const std::int64_t*>(copy);
      break;
    case 2:
      cache.k_pool = static_cast<const K*>(copy);
      break;
    case 3:
      cache.v_pool = static_cast<const V*>(copy);
      break;
    case 4:
      q = static_cast<const Q*>(copy);
      break;
    default:
      if (!p.k_scales.empty() && v.data == p.k_scales.data())
        cache.k_scale.values = static_cast<const float*>(copy);
      else if (!p.v_scales.empty() && v.data == p.v_scales.data())
        cache.v_scale.values = static_cast<const float*>(copy);
      else if (v.data == p.bias.data())
        opts.logit.bias.data = static_cast<const float*>(copy);
      else if (p.allowed && v.data == p.allowed.get())
        opts.mask.allowed = static_cast<const bool*>(copy);
      else if (v.data == p.slopes.data())
        opts.logit.alibi_slopes = static_cast<const float*>(copy);
      else
        opts.logit.sinks = static_cast<const float*>(copy);
      break;
  }
  const std::vector<std::uint64_t> before(arena.get(), arena.get() + words);
  outputs<C> separate(p, want_lse && !over_lse, want_weights);
  O* out = separate.out.data();
  attention_extras<R> extras = separate.extras();
  if (over_lse)
    extras.lse = reinterpret_cast<R*>(base + at_output);
  else
    out = reinterpret_cast<O*>(base + at_output);
  expect_rejected(
      [&] {
        paged_attention<Arch>(bshd_view(q, p.B, p.n_q, p.H, p.d), cache,
                              bshd_view(out, p.B, p.n_q, p.H, p.d), opts, extras);
      },
      over_lse ? "extras.lse" : "out",
      [&] {
        return std::memcmp(before.data(), arena.get(), words * 8) == 0 && separate.untouched();
      });
}

/// Breaks the cache (or the mask) on purpose: the call must throw argument_error naming
/// it and write nothing.
template <class Arch, class C, class Policy>  // architecture; combo<Q, K, V, O>; policy
void check_broken(input& in, paged_case<C>& p, const attention_options<Policy>& o, bool want_lse,
                  bool want_weights) {
  using K = typename C::k;
  using V = typename C::v;
  attention_options<Policy> opts = o;
  outputs<C> result(p, want_lse, want_weights);
  const char* argument = "";
  const index_t b = in.below(p.B);
  const int kind = in.byte() % 4;
  // For kind 3: a scale that is not finite and > 0, or none, on an fp8 pool; any scale on
  // a pool of another format.
  const float bad_scales[] = {0.0f, -1.0f, std::numeric_limits<float>::quiet_NaN(),
                              std::numeric_limits<float>::infinity()};
  const float bad_scale = bad_scales[in.below(4)];
  const bool missing = in.flag();
  auto break_scale = [&](std::vector<float>& scales, value_scale& scale, bool fp8) {
    static const float one = 1.0f;
    if (!fp8) {
      scale = {&one};
    } else if (missing) {
      scale.values = nullptr;
    } else {
      scales[static_cast<size_t>(in.below(static_cast<index_t>(scales.size())))] = bad_scale;
      scale = scale_of(scales);
    }
  };
  paged_kv_cache<K, V> cache = p.cache();
  if (kind == 0 && p.length(b) > 0) {  // an entry inside the length outside the pool
    const index_t blocks = (p.length(b) + p.block_size - 1) / p.block_size;
    const size_t at = static_cast<size_t>(b * p.max_blocks + in.below(blocks));
    const index_t bad = in.flag() ? -1 - in.below(3) : p.num_blocks + in.below(3);
    p.table64[at] = bad;
    p.table32v[at] = static_cast<std::int32_t>(bad);
    argument = "cache.block_table";
  } else if (kind == 1 || kind == 0) {  // a length past the table's reach, or negative
    const index_t bad = in.flag() ? -1 : p.max_blocks * p.block_size + 1 + in.below(3);
    p.lengths64[static_cast<size_t>(b)] = bad;
    p.lengths32v[static_cast<size_t>(b)] = static_cast<std::int32_t>(bad);
    argument = "cache.cache_lengths";
  } else if (kind == 3 && in.flag()) {
    break_scale(p.k_scales, cache.k_scale, is_fp8_v<K>);
    argument = "cache.k_scale";
  } else if (kind == 3) {
    break_scale(p.v_scales, cache.v_scale, is_fp8_v<V>);
    argument = "cache.v_scale";
  } else {
    opts.mask.key_lengths = p.lengths();
    argument = "options.mask.key_lengths";
  }
  cache.block_table = p.table();
  cache.cache_lengths = p.lengths();
  expect_rejected(
      [&] {
        paged_attention<Arch>(p.qv(), cache, bshd_view(result.out.data(), p.B, p.n_q, p.H, p.d),
                              opts, result.extras());
      },
      argument, [&] { return result.untouched(); });
}

/// Whether some row's weights are outside what the reference check's weight bound can
/// judge: it bounds |a_j - exact_j| by r exact_j with r = 2 eps (2 dz + 80), the first
/// order of a logit error, while a logit off by delta moves a weight by the factor
/// e^delta. Once r is no longer small (logits near 1e7 in float, say, whose rounding
/// alone is of order 1), the true error exact_j (e^delta - 1) exceeds r exact_j although
/// the logits are within their bound (a weight of 1.3e-14 for an exact 8.2e-19 at
/// eps Z = 11, found by this target). Mirrors expect_matches_reference's dz per row.
template <class Policy>  // policy
bool weights_past_linear_bound(const testing::attention_data<double>& data,
                               const attention_options<Policy>& o, double eps) {
  const double scale = o.scale ? *o.scale : 1.0 / std::sqrt(static_cast<double>(data.d));
  const auto q = data.qv(), k = data.kv();
  const index_t group = data.H / data.H_kv;
  for (index_t s = 0; s < sequence_count(o.mask, data.B); ++s) {
    const sequence_span seq = sequence_of(o.mask, s, data.n_q, data.n_k);
    const index_t b = seq.tensor_batch;
    for (index_t h = 0; h < data.H; ++h)
      for (index_t i = seq.q_begin; i < seq.q_end; ++i) {
        const row_keys row = visible_keys(o.mask, o.logit, seq, h, i);
        const double m_row = row.visible > 0 ? o.policy.multiplier({row.n, row.position, h}) : 0.0;
        double z = 0.0;
        for (index_t j = row.begin; j < row.end; ++j) {
          if (row.allowed != nullptr && !row.allowed[j]) continue;
          double zj = 0.0;
          for (index_t c = 0; c < data.d; ++c)
            zj += std::abs(m_row * scale * q(b, i, h, c) * k(b, j, h / group, c));
          zj += std::abs(m_row) *
                testing::logit_magnitude(o.logit, seq, b, h, i, j, row.position, o.mask);
          z = std::max(z, zj);
        }
        const double dz = 2.0 * (static_cast<double>(data.d) + 2.0) * z;
        if (!(2 * eps * (2 * dz + 80) <= 0.125)) return true;  // e^r - 1 > r (1 + 6%)
      }
  }
  return false;
}

/// The call with policy `policy`: paged against contiguous, bit for bit; the contiguous
/// one against the reference; then the overlap and broken calls.
template <class Arch, class C, class Policy>  // architecture; combo<Q, K, V, O>; policy
void run_and_check(input& in, paged_case<C>& p, const attention_options<>& base,
                   const Policy& policy) {
  using K = typename C::k;
  using V = typename C::v;
  using O = typename C::out;
  using R = compute_t<O>;
  attention_options<Policy> o;
  o.policy = policy;
  o.mask = base.mask;
  o.scale = base.scale;
  o.threads = base.threads;
  o.path = base.path;
  o.logit = base.logit;
  o.allow_bf16_weights = base.allow_bf16_weights;
  o.bf16 = base.bf16;
  o.allow_int8_dot_products = base.allow_int8_dot_products;
  const bool want_weights = o.path != attention_path::fused && in.flag();
  const bool want_lse = in.byte() % 4 != 0;
  drawn_case() +=
      std::string(" lse=") + (want_lse ? "1" : "0") + " weights=" + (want_weights ? "1" : "0");

  // The contiguous call: a cache_view of the same tokens, NaN past each length.
  attention_options<Policy> contiguous = o;
  contiguous.mask.causal = true;  // what paged_attention adds
  outputs<C> want(p, want_lse, want_weights);
  try {
    attention<Arch>(p.qv(), p.k_view(), p.v_view(),
                    bshd_view(want.out.data(), p.B, p.n_q, p.H, p.d), contiguous, want.extras());
  } catch (const argument_error& error) {
    paged_finding("valid contiguous attention call rejected:", error.what());
  }
  outputs<C> got(p, want_lse, want_weights);
  try {
    paged_attention<Arch>(p.qv(), p.cache(), bshd_view(got.out.data(), p.B, p.n_q, p.H, p.d), o,
                          got.extras());
  } catch (const argument_error& error) {
    paged_finding("valid paged_attention call rejected:", error.what());
  }
  expect(same_bits(got.out.data(), want.out.data(), got.out.size()),
         "paged out differs from the contiguous call's (bitwise)");
  expect(same_bits(got.lse.data(), want.lse.data(), got.lse.size()),
         "paged lse differs from the contiguous call's (bitwise)");
  expect(same_bits(got.weights.data(), want.weights.data(), got.weights.size()),
         "paged weights differ from the contiguous call's (bitwise)");

  if (!p.non_finite) {  // the contiguous result against the double reference
    testing::attention_run<R> run;
    for (O e : want.out) run.out.push_back(static_cast<R>(kernels::to_compute(e)));
    run.lse = want.lse;
    run.weights = want.weights;
    attention_options<Policy> ref = contiguous;
    ref.mask.key_lengths = p.lengths();
    // Rows whose logits are so large that the weight bound's first order no longer
    // holds: out and lse are still checked, the weights only against the paged call.
    if (!run.weights.empty() &&
        weights_past_linear_bound(*p.exact, ref, std::numeric_limits<R>::epsilon()))
      run.weights.clear();
    const bool fused = !detail::use_materialised(o, want.extras());
    bool flushed = false;
    double weights_unit = 0.0;
    if constexpr (std::is_same<R, float>::value) {
      flushed =
          fused &&
          kernels::detail::bf16_prefill<Arch, float, kernels::storage_set<typename C::q, K, V, O>>;
      if (fused && o.allow_bf16_weights && std::is_same<K, bf16>::value &&
          std::is_same<V, bf16>::value)
        weights_unit = std::ldexp(1.0, -8);
    }
    const bool int8_queries =
        fused && o.allow_int8_dot_products && std::is_same<K, block_q8_0>::value;
    testing::expect_matches_reference(*p.exact, ref, run, "fuzz_paged contiguous",
                                      testing::out_unit<O>(), testing::out_tiny<O>(), flushed,
                                      weights_unit, int8_queries);
    expect(!::testing::UnitTest::GetInstance()->ad_hoc_test_result().Failed(),
           "contiguous result outside the reference bound (see the failure above)");
  }

  if (in.byte() % 4 == 0) check_overlap<Arch>(in, p, o, want_lse, want_weights);
  if (in.byte() % 8 == 0) check_broken<Arch>(in, p, o, want_lse, want_weights);
}

/// The case in words: shapes, lengths, table, options (for a finding's report).
template <class Arch, class C>  // architecture; combo<Q, K, V, O>
std::string describe(const paged_case<C>& p, const attention_options<>& o) {
  using testing::type_name;
  auto name = [](auto x) -> std::string {
    using S = decltype(x);
    if constexpr (std::is_same<S, double>::value)
      return "f64";
    else if constexpr (is_8bit_v<S>)
      return storage_traits<S>::name;
    else
      return type_name(x);
  };
  auto scales = [](const std::vector<float>& s) {
    std::string t = s.empty() ? "" : " scale [";
    for (float x : s) t += " " + std::to_string(x);
    return s.empty() ? t : t + " ]";
  };
  std::string t = std::string(Arch::name()) + " q " + name(typename C::q{}) + " k " +
                  name(typename C::k{}) + scales(p.k_scales) + " v " + name(typename C::v{}) +
                  scales(p.v_scales) + " out " + name(typename C::out{}) +
                  " B=" + std::to_string(p.B) + " n_q=" + std::to_string(p.n_q) +
                  " H=" + std::to_string(p.H) + " H_kv=" + std::to_string(p.H_kv) +
                  " d=" + std::to_string(p.d) + " block_size=" + std::to_string(p.block_size) +
                  " max_blocks=" + std::to_string(p.max_blocks) +
                  " num_blocks=" + std::to_string(p.num_blocks) +
                  " capacity=" + std::to_string(p.capacity) + (p.table32 ? " int32" : " int64") +
                  " table," + (p.lengths32 ? " int32" : " int64") + " lengths [";
  for (index_t len : p.lengths64) t += " " + std::to_string(len);
  t += " ] table [";
  for (index_t e : p.table64) t += " " + std::to_string(e);
  const attention_mask& m = o.mask;
  t += " ] window=" + std::to_string(m.window) + " local=" + std::to_string(m.local) + "(" +
       std::to_string(m.window_left) + "," + std::to_string(m.window_right) +
       ") boolean=" + std::to_string(m.allowed != nullptr) +
       " n_override=" + std::to_string(m.n_override) +
       " query_offset=" + std::to_string(m.query_offset) +
       " bias=" + std::to_string(o.logit.bias.data != nullptr) +
       " alibi=" + std::to_string(o.logit.alibi_slopes != nullptr) +
       " softcap=" + std::to_string(o.logit.softcap) +
       " sinks=" + std::to_string(o.logit.sinks != nullptr) +
       " scale=" + (o.scale ? std::to_string(*o.scale) : std::string("default")) +
       " threads=" + std::to_string(o.threads) + " path=" + std::to_string(int(o.path)) +
       " bf16_weights=" + std::to_string(o.allow_bf16_weights) +
       " bf16_method=" + std::to_string(int(o.bf16)) +
       " int8_dots=" + std::to_string(o.allow_int8_dot_products) +
       " non_finite=" + std::to_string(p.non_finite);
  return t;
}

template <class Arch, class C>  // architecture; combo<Q, K, V, O>
void fuzz_one(input& in) {
  if (!cpu_supports<Arch>()) return;
  paged_case<C> p;
  draw_cache(in, p);
  attention_options<> base;
  draw_options(in, p, base);
  drawn_case() = describe<Arch>(p, base);
  // Softmax as ssmax_policy(0, 1) with an 8-bit pool: one policy type, one instantiation
  // of the kernels per pair of formats.
  constexpr bool eight_bit = is_8bit_v<typename C::k> || is_8bit_v<typename C::v>;
  switch (in.byte() % 4) {
    case 0:
      if constexpr (eight_bit)
        run_and_check<Arch>(in, p, base, ssmax_policy(0.0, 1.0));
      else
        run_and_check<Arch>(in, p, base, softmax_policy{});
      break;
    case 1: {  // any finite s and b, shared
      const double s = static_cast<double>(static_cast<std::int8_t>(in.byte())) / 64.0;
      const double b = static_cast<double>(static_cast<std::int8_t>(in.byte())) / 64.0;
      run_and_check<Arch>(in, p, base, ssmax_policy(s, b));
      break;
    }
    default: {  // per-head s and b, either sign
      std::vector<double> s(static_cast<size_t>(p.H)), b(s.size());
      for (auto& x : s) x = static_cast<double>(static_cast<std::int8_t>(in.byte())) / 64.0;
      for (auto& x : b) x = static_cast<double>(static_cast<std::int8_t>(in.byte())) / 64.0;
      run_and_check<Arch>(in, p, base, ssmax_policy(s, b));
      break;
    }
  }
}

/// Calls f(Combo{}) for the which-th combination.
template <class... Cs, class F>
void for_combination(std::tuple<Cs...>*, index_t which, F&& f) {
  index_t i = 0;
  ((i++ == which ? (f(Cs{}), 0) : 0), ...);
}

}  // namespace
}  // namespace ssmax::fuzz

// The inputs with 2 threads would otherwise leave libomp's worker spinning for its block
// time (200 ms) after each call: a core of a shared machine, and a third of the
// campaign's rate. A setting from the environment wins.
extern "C" int LLVMFuzzerInitialize(int*, char***) {
  setenv("KMP_BLOCKTIME", "0", 0);
  setenv("OMP_WAIT_POLICY", "passive", 0);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace ssmax::fuzz;
  using ssmax::index_t;
  input in(data, size);
  const auto arch = in.below(static_cast<index_t>(std::tuple_size<paged_architectures>::value));
  // Half the inputs take one of `combinations`, half one of eight_bit_combinations.
  const bool eight_bit = in.flag();
  const auto combination = in.below(static_cast<index_t>(std::tuple_size<combinations>::value));
  const auto pair = in.below(static_cast<index_t>(std::tuple_size<eight_bit_combinations>::value));
  for_architecture(static_cast<paged_architectures*>(nullptr), arch, [&](auto a) {
    using Arch = decltype(a);
    if (eight_bit)
      for_combination(static_cast<eight_bit_combinations*>(nullptr), pair,
                      [&](auto c) { fuzz_one<Arch, decltype(c)>(in); });
    else
      for_combination(static_cast<combinations*>(nullptr), combination,
                      [&](auto c) { fuzz_one<Arch, decltype(c)>(in); });
  });
  return 0;
}
