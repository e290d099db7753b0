#pragma once
// Building blocks shared by the two attention kernels (attention_fused.hpp,
// attention_materialised.hpp): the validated problem, the caller-owned workspace, a
// register-blocked GEMM micro-kernel, and the per-block steps (scores of a key block,
// masking, the online-softmax row update, accumulation of P V).
//
// Nothing here validates: the public API (attention.hpp) has checked every argument.
// Inputs are assumed finite; non-finite q, k or v give unspecified (NaN or inf) rows.

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <memory>

#include "../detail/simd.hpp"
#include "../length_policy.hpp"
#include "../mask.hpp"
#include "../row_state.hpp"
#include "../tensor_view.hpp"
#include "row_softmax.hpp"

namespace ssmax {

/// Scratch memory an attention call carves its buffers from. Keep one per calling thread
/// and pass it to every call: it grows to the largest size asked for, so repeated calls
/// of the same (or smaller) shapes allocate nothing. Not thread-safe: one call at a time.
class attention_workspace {
 public:
  /// Bytes available without growing.
  std::size_t capacity() const { return bytes_; }
  /// Ensures at least `bytes` bytes; reallocates (losing the contents) only when growing.
  void reserve(std::size_t bytes) {
    if (bytes <= bytes_) return;
    storage_.reset(new unsigned char[bytes + kAlign]);
    bytes_ = bytes;
    ++growths_;
  }
  /// Start of the storage, aligned to 64 bytes (null before the first reserve).
  unsigned char* data() {
    if (!storage_) return nullptr;
    const auto at = reinterpret_cast<std::uintptr_t>(storage_.get());
    return storage_.get() + ((kAlign - at % kAlign) % kAlign);
  }
  /// How many times reserve() has allocated: tests check that reuse allocates nothing.
  index_t growths() const { return growths_; }

 private:
  static constexpr std::size_t kAlign = 64;
  std::unique_ptr<unsigned char[]> storage_;
  std::size_t bytes_ = 0;
  index_t growths_ = 0;
};

namespace kernels {

/// Query rows per task of the fused kernel.
inline constexpr index_t kFusedQueryBlock = 64;
/// Query rows per task of the materialised kernel.
inline constexpr index_t kMaterialisedQueryBlock = 32;
/// Keys per block: the inner loop of both kernels.
inline constexpr index_t kKeyBlock = 256;
/// Keys per chunk when a task with few rows splits its keys (flash-decoding). A multiple
/// of kKeyBlock, fixed, so that results never depend on the thread count.
inline constexpr index_t kDecodeChunk = 2048;
/// Tasks with at most this many rows split their keys into chunks.
inline constexpr index_t kSplitMaxRows = 16;
/// Blocks with at most this many rows use dot products instead of the packed GEMM.
inline constexpr index_t kDotMaxRows = 3;

/// A validated attention call, as the kernels receive it.
template <class T,       // float or double
          class Policy>  // a length policy (length_policy.hpp)
struct attention_problem {
  tensor_view<const T> q;  ///< [B, n_q, H, d]
  tensor_view<const T> k;  ///< [B, n_k, H_kv, d]
  tensor_view<const T> v;  ///< [B, n_k, H_kv, d]
  tensor_view<T> out;      ///< [B, n_q, H, d]
  const Policy* policy = nullptr;
  attention_mask mask;
  double scale = 1.0;    ///< logit scale (1/sqrt(d) by default)
  T* lse = nullptr;      ///< [B, H, n_q] or null
  T* weights = nullptr;  ///< [B, H, n_q, n_k] or null (materialised only)
  int threads = 1;       ///< threads to use (>= 1)

  index_t sequences() const { return sequence_count(mask, q.batch); }
  sequence_span span(index_t s) const { return sequence_of(mask, s, q.seq, k.seq); }
  index_t kv_head(index_t h) const { return h / (q.heads / k.heads); }  ///< g(h)
  index_t lse_at(index_t b, index_t h, index_t i) const { return (b * q.heads + h) * q.seq + i; }
};

namespace detail {

/// Bump allocator over a workspace; with a null base it only counts bytes.
class arena {
 public:
  explicit arena(unsigned char* base) : base_(base) {}
  template <class U>  // trivially constructible element type
  U* take(index_t count) {
    used_ = (used_ + 63) / 64 * 64;
    U* p = base_ != nullptr ? reinterpret_cast<U*>(base_ + used_) : nullptr;
    used_ += static_cast<std::size_t>(count) * sizeof(U);
    return p;
  }
  std::size_t used() const { return used_ + 64; }
  /// True when the arena only counts bytes (no base): take() returns null.
  bool counting() const { return base_ == nullptr; }

 private:
  unsigned char* base_;
  std::size_t used_ = 0;
};

/// A kernel's plan with its buffers carved from ws, which must hold plan_bytes<Plan>(args...)
/// bytes. Plan::carve(args..., arena&) lays the buffers out, and only counts them when the
/// arena is counting.
template <class Plan, class... Args>  // a kernel's plan; the arguments of its carve
inline Plan carve_plan(attention_workspace& ws, const Args&... args) {
  Plan plan;
  arena a(ws.data());
  plan.carve(args..., a);
  return plan;
}

/// Workspace bytes carve_plan<Plan>(ws, args...) needs.
template <class Plan, class... Args>  // a kernel's plan; the arguments of its carve
inline std::size_t plan_bytes(const Args&... args) {
  Plan plan;
  arena a(nullptr);
  plan.carve(args..., a);
  return a.used();
}

/// n rounded up to a multiple of w.
inline index_t round_up(index_t n, index_t w) { return (n + w - 1) / w * w; }

/// Register tile: C[MR x NV*W] (+)= A[MR x kc] B[kc x NV*W]. A element (r, p) is
/// a[r*lda + p] (broadcast), B rows are ldb apart, C rows ldc apart.
template <class Arch,  // xsimd architecture tag or scalar_arch
          class T,     // float or double
          int MR,      // rows of the tile (accumulators MR x NV must fit the registers)
          int NV>      // vectors per tile row
inline void gemm_tile(index_t kc, const T* a, index_t lda, const T* b, index_t ldb, T* c,
                      index_t ldc, bool accumulate) {
  using S = ssmax::detail::simd<Arch, T>;
  using V = typename S::vec;
  constexpr index_t W = S::width;
  V acc[MR][NV];
  for (int r = 0; r < MR; ++r)
    for (int v = 0; v < NV; ++v)
      acc[r][v] = accumulate ? S::load(c + r * ldc + v * W) : S::splat(T(0));
  for (index_t p = 0; p < kc; ++p) {
    V bv[NV];
    for (int v = 0; v < NV; ++v) bv[v] = S::load(b + p * ldb + v * W);
    for (int r = 0; r < MR; ++r) {
      const V av = S::splat(a[r * lda + p]);
      for (int v = 0; v < NV; ++v) acc[r][v] = S::fma(av, bv[v], acc[r][v]);
    }
  }
  for (int r = 0; r < MR; ++r)
    for (int v = 0; v < NV; ++v) S::store(c + r * ldc + v * W, acc[r][v]);
}

/// gemm_tile with a run-time row count mr in [1, 8].
template <class Arch,  // xsimd architecture tag or scalar_arch
          class T,     // float or double
          int NV>      // vectors per tile row
inline void gemm_rows(index_t mr, index_t kc, const T* a, index_t lda, const T* b, index_t ldb,
                      T* c, index_t ldc, bool accumulate) {
  switch (mr) {
    case 1:
      return gemm_tile<Arch, T, 1, NV>(kc, a, lda, b, ldb, c, ldc, accumulate);
    case 2:
      return gemm_tile<Arch, T, 2, NV>(kc, a, lda, b, ldb, c, ldc, accumulate);
    case 3:
      return gemm_tile<Arch, T, 3, NV>(kc, a, lda, b, ldb, c, ldc, accumulate);
    case 4:
      return gemm_tile<Arch, T, 4, NV>(kc, a, lda, b, ldb, c, ldc, accumulate);
    case 5:
      return gemm_tile<Arch, T, 5, NV>(kc, a, lda, b, ldb, c, ldc, accumulate);
    case 6:
      return gemm_tile<Arch, T, 6, NV>(kc, a, lda, b, ldb, c, ldc, accumulate);
    case 7:
      return gemm_tile<Arch, T, 7, NV>(kc, a, lda, b, ldb, c, ldc, accumulate);
    default:
      return gemm_tile<Arch, T, 8, NV>(kc, a, lda, b, ldb, c, ldc, accumulate);
  }
}

/// Tile shape per architecture: MR rows x NV vectors of accumulators, sized to the
/// register file (32 vector registers for 512-bit x86, 16 otherwise). 8 x 2 measured
/// fastest on AVX-512 (Zen 5: about 195 GFLOP/s per core for the tile alone, 6 x 4 and
/// 8 x 3 within 2%, 4 x 4 at 80) and divides the query blocks evenly.
template <class Arch, class T>  // xsimd architecture tag or scalar_arch; float or double
struct tile_shape {
  static constexpr index_t bytes = ssmax::detail::simd<Arch, T>::width * index_t(sizeof(T));
  static constexpr int rows = bytes >= 64 ? 8 : (bytes == sizeof(T) ? 4 : 6);
  static constexpr int vectors = bytes >= 64 ? 2 : (bytes == sizeof(T) ? 4 : 2);
};

/// C[m x n] (+)= A[m x kc] B[kc x n], all row-major; n a multiple of the vector width.
/// Each C element is one fma chain over p = 0..kc-1 in order (deterministic).
template <class Arch,  // xsimd architecture tag or scalar_arch
          class T>     // float or double
inline void gemm(index_t m, index_t n, index_t kc, const T* a, index_t lda, const T* b, index_t ldb,
                 T* c, index_t ldc, bool accumulate) {
  constexpr index_t W = ssmax::detail::simd<Arch, T>::width;
  constexpr int MR = tile_shape<Arch, T>::rows, NV = tile_shape<Arch, T>::vectors;
  index_t j = 0;
  for (; j + NV * W <= n; j += NV * W)
    for (index_t i = 0; i < m; i += MR)
      gemm_rows<Arch, T, NV>(std::min<index_t>(MR, m - i), kc, a + i * lda, lda, b + j, ldb,
                             c + i * ldc + j, ldc, accumulate);
  for (; j < n; j += W)
    for (index_t i = 0; i < m; i += MR)
      gemm_rows<Arch, T, 1>(std::min<index_t>(MR, m - i), kc, a + i * lda, lda, b + j, ldb,
                            c + i * ldc + j, ldc, accumulate);
}

/// Four dot products of a[0, d) with the rows b0..b3, written to out[0..3].
template <class Arch, class T>  // xsimd architecture tag or scalar_arch; float or double
inline void dot4(const T* a, const T* b0, const T* b1, const T* b2, const T* b3, index_t d,
                 T* out) {
  using S = ssmax::detail::simd<Arch, T>;
  using V = typename S::vec;
  constexpr index_t W = S::width;
  V s0 = S::splat(T(0)), s1 = s0, s2 = s0, s3 = s0;
  index_t c = 0;
  for (; c + W <= d; c += W) {
    const V av = S::load(a + c);
    s0 = S::fma(av, S::load(b0 + c), s0);
    s1 = S::fma(av, S::load(b1 + c), s1);
    s2 = S::fma(av, S::load(b2 + c), s2);
    s3 = S::fma(av, S::load(b3 + c), s3);
  }
  T r0 = S::reduce_add(s0), r1 = S::reduce_add(s1), r2 = S::reduce_add(s2), r3 = S::reduce_add(s3);
  for (; c < d; ++c) {  // tail: fewer than W elements, never read past d
    r0 += a[c] * b0[c];
    r1 += a[c] * b1[c];
    r2 += a[c] * b2[c];
    r3 += a[c] * b3[c];
  }
  out[0] = r0, out[1] = r1, out[2] = r2, out[3] = r3;
}

/// The dot product of a[0, d) and b[0, d), summed as dot4 sums each of its four.
template <class Arch, class T>  // xsimd architecture tag or scalar_arch; float or double
inline T dot(const T* a, const T* b, index_t d) {
  T out[4];
  dot4<Arch>(a, b, b, b, b, d, out);
  return out[0];
}

/// y[0, d) += alpha * x[0, d).
template <class Arch, class T>  // xsimd architecture tag or scalar_arch; float or double
inline void axpy(T* y, T alpha, const T* x, index_t d) {
  using S = ssmax::detail::simd<Arch, T>;
  constexpr index_t W = S::width;
  const auto va = S::splat(alpha);
  index_t c = 0;
  for (; c + W <= d; c += W) S::store(y + c, S::fma(va, S::load(x + c), S::load(y + c)));
  for (; c < d; ++c) y[c] += alpha * x[c];
}

/// y[0, d) += w[0] x0 + w[1] x1 + w[2] x2 + w[3] x3, one fma chain per element in that
/// order.
template <class Arch, class T>  // xsimd architecture tag or scalar_arch; float or double
inline void axpy4(T* y, const T* w, const T* x0, const T* x1, const T* x2, const T* x3, index_t d) {
  using S = ssmax::detail::simd<Arch, T>;
  using V = typename S::vec;
  constexpr index_t W = S::width;
  const V w0 = S::splat(w[0]), w1 = S::splat(w[1]), w2 = S::splat(w[2]), w3 = S::splat(w[3]);
  index_t c = 0;
  for (; c + W <= d; c += W) {
    V acc = S::fma(w0, S::load(x0 + c), S::load(y + c));
    acc = S::fma(w1, S::load(x1 + c), acc);
    acc = S::fma(w2, S::load(x2 + c), acc);
    S::store(y + c, S::fma(w3, S::load(x3 + c), acc));
  }
  for (; c < d; ++c) y[c] = y[c] + w[0] * x0[c] + w[1] * x1[c] + w[2] * x2[c] + w[3] * x3[c];
}

/// Key runs the dot-product path walks side by side: a key block of nk keys is read as
/// kKeyStreams contiguous runs of nk / kKeyStreams keys, one step of each per iteration,
/// so that several memory streams are in flight. Measured on one core of the development
/// machine (AMD EPYC, AVX2), reading 256 MiB of [S, H, d] keys and values for 8 heads: 16
/// to 19 GB/s with 4 runs, 13 to 15 GB/s with one, 15 to 18 with 8, 13 with 16; software
/// prefetching on top of 4 runs gained nothing.
inline constexpr index_t kKeyStreams = 4;

/// Query rows of a dot-product block that share one kv head: scratch rows [first, first +
/// count) read the keys (or values) rows base + j * stride, j < nk, of that head.
template <class T>  // float or double
struct head_rows {
  index_t first = 0;        ///< first scratch row
  index_t count = 0;        ///< scratch rows reading this head
  const T* base = nullptr;  ///< the head's row for key 0 of the block
};

/// Visits every (scratch row, key) pair of a block of nk keys in kKeyStreams runs. For
/// each row r of each group, step(r, t, run, x) for t < run = nk / kKeyStreams covers the
/// keys t + u * run, whose rows are x[u] = group.base + (t + u * run) * stride (u <
/// kKeyStreams); tail(r, j, x) covers each leftover key j >= kKeyStreams * run, row x. With
/// keys_outer the groups are the inner loop (use it when the heads of one key are adjacent
/// in memory, as in [S, H, d]: each step then reads kKeyStreams contiguous runs across
/// heads); otherwise each group's keys are walked in turn. Rows and keys are visited in the
/// same order within each row either way.
template <class T,     // float or double
          class Step,  // callable (index r, index t, index run, const T* const* x)
          class Tail>  // callable (index r, index j, const T* x)
inline void walk_key_streams(const head_rows<T>* groups, index_t n_groups, index_t stride,
                             index_t nk, bool keys_outer, Step&& step, Tail&& tail) {
  const index_t run = nk / kKeyStreams;
  const auto visit = [&](index_t g, index_t t) {
    const head_rows<T>& hr = groups[g];
    const T* x[kKeyStreams];
    for (index_t u = 0; u < kKeyStreams; ++u) x[u] = hr.base + (t + u * run) * stride;
    for (index_t r = hr.first; r < hr.first + hr.count; ++r) step(r, t, run, x);
  };
  if (keys_outer) {
    for (index_t t = 0; t < run; ++t)
      for (index_t g = 0; g < n_groups; ++g) visit(g, t);
  } else {
    for (index_t g = 0; g < n_groups; ++g)
      for (index_t t = 0; t < run; ++t) visit(g, t);
  }
  for (index_t g = 0; g < n_groups; ++g)
    for (index_t j = kKeyStreams * run; j < nk; ++j)
      for (index_t r = groups[g].first; r < groups[g].first + groups[g].count; ++r)
        tail(r, j, groups[g].base + j * stride);
}

/// Scores by dot products: s[r*lds + j] = qs[r*d, +d) . key(j) for every scratch row r of
/// every group, j < nk, key(j) = group.base + j * kstride.
template <class Arch, class T>  // xsimd architecture tag or scalar_arch; float or double
inline void dot_scores(const T* qs, index_t d, const head_rows<T>* groups, index_t n_groups,
                       index_t kstride, index_t nk, bool keys_outer, T* s, index_t lds) {
  static_assert(kKeyStreams == 4, "dot4 reads one key of each run");
  walk_key_streams(
      groups, n_groups, kstride, nk, keys_outer,
      [&](index_t r, index_t t, index_t run, const T* const* k) {
        T out[kKeyStreams];
        dot4<Arch>(qs + r * d, k[0], k[1], k[2], k[3], d, out);
        for (index_t u = 0; u < kKeyStreams; ++u) s[r * lds + t + u * run] = out[u];
      },
      [&](index_t r, index_t j, const T* k) { s[r * lds + j] = dot<Arch>(qs + r * d, k, d); });
}

/// Values by scaled sums: o[r*dp, +d) += sum_j p[r*ldp + j] * value(j) for every scratch
/// row r of every group, j < nk, value(j) = group.base + j * vstride. Keys whose weights
/// are all zero are skipped (masked or flushed keys cost no reads).
template <class Arch, class T>  // xsimd architecture tag or scalar_arch; float or double
inline void dot_values(const T* p, index_t ldp, const head_rows<T>* groups, index_t n_groups,
                       index_t vstride, index_t nk, index_t d, bool keys_outer, T* o, index_t dp) {
  static_assert(kKeyStreams == 4, "axpy4 reads one value of each run");
  walk_key_streams(
      groups, n_groups, vstride, nk, keys_outer,
      [&](index_t r, index_t t, index_t run, const T* const* v) {
        const T* pr = p + r * ldp + t;
        const T w[kKeyStreams] = {pr[0], pr[run], pr[2 * run], pr[3 * run]};
        if (w[0] != T(0) || w[1] != T(0) || w[2] != T(0) || w[3] != T(0))
          axpy4<Arch>(o + r * dp, w, v[0], v[1], v[2], v[3], d);
      },
      [&](index_t r, index_t j, const T* v) {
        const T w = p[r * ldp + j];
        if (w != T(0)) axpy<Arch>(o + r * dp, w, v, d);
      });
}

/// Row stride of the packed K^T for a block of nkp keys: nkp plus one vector.
inline index_t kt_stride(index_t nkp, index_t w) { return nkp + w; }

/// Packs K^T of keys k0 + j*kstride (j < nk) into kt [d, ldk], zero-padded to nkp
/// columns. Tiles of 16 keys (one cache line of floats per write) and a row stride padded
/// past a multiple of 1 KiB (kt_stride) keep the columns from aliasing in the cache: a
/// plain transpose at stride 256 floats ran 10x slower.
template <class T>  // float or double
inline void pack_kt(const T* k0, index_t kstride, index_t nk, index_t d, index_t nkp, index_t ldk,
                    T* kt) {
  constexpr index_t kTile = 16;
  index_t j0 = 0;
  for (; j0 + kTile <= nk; j0 += kTile)
    for (index_t c = 0; c < d; ++c)
      for (index_t jj = 0; jj < kTile; ++jj) kt[c * ldk + j0 + jj] = k0[(j0 + jj) * kstride + c];
  for (index_t c = 0; c < d; ++c) {
    for (index_t j = j0; j < nk; ++j) kt[c * ldk + j] = k0[j * kstride + c];
    for (index_t j = nk; j < nkp; ++j) kt[c * ldk + j] = T(0);
  }
}

/// Scores of one key block: s[r*lds + j] = qs[r*d, +d) . key(j) for r < rows, j < nk,
/// where key(j) = k0 + j*kstride. Uses dot products for rows <= kDotMaxRows, else packs
/// the block's K^T into kt (d x kt_stride(round_up(nk, W), W)) and runs the GEMM (which also writes
/// the padding columns [nk, round_up(nk, W)) of s: lds must leave room for them).
template <class Arch, class T>  // xsimd architecture tag or scalar_arch; float or double
inline void block_scores(const T* qs, index_t rows, index_t d, const T* k0, index_t kstride,
                         index_t nk, T* s, index_t lds, T* kt) {
  constexpr index_t W = ssmax::detail::simd<Arch, T>::width;
  if (rows <= kDotMaxRows) {
    const head_rows<T> all{0, rows, k0};
    dot_scores<Arch>(qs, d, &all, 1, kstride, nk, false, s, lds);
    return;
  }
  const index_t nkp = round_up(nk, W), ldk = kt_stride(nkp, W);
  pack_kt(k0, kstride, nk, d, nkp, ldk, kt);
  gemm<Arch>(rows, nkp, d, qs, d, kt, ldk, s, lds, false);
}

/// o[r*dp, +d) += sum_j p[r*ldp + j] * value(j) for r < rows, j < nk, value(j) =
/// v0 + j*vstride. For rows > kDotMaxRows the GEMM runs over dp columns: when d < dp the
/// block is first copied, zero-padded, into vp (nk x dp), and o's padding stays 0.
template <class Arch, class T>  // xsimd architecture tag or scalar_arch; float or double
inline void block_values(const T* p, index_t ldp, index_t rows, const T* v0, index_t vstride,
                         index_t nk, index_t d, index_t dp, T* o, T* vp) {
  if (rows <= kDotMaxRows) {
    const head_rows<T> all{0, rows, v0};
    dot_values<Arch>(p, ldp, &all, 1, vstride, nk, d, false, o, dp);
    return;
  }
  const T* b = v0;
  index_t ldb = vstride;
  if (d != dp) {
    for (index_t j = 0; j < nk; ++j) {
      std::copy(v0 + j * vstride, v0 + j * vstride + d, vp + j * dp);
      std::fill(vp + j * dp + d, vp + (j + 1) * dp, T(0));
    }
    b = vp;
    ldb = dp;
  }
  gemm<Arch>(rows, dp, nk, p, ldp, b, ldb, o, dp, true);
}

/// Masks one row of scores for keys kb..kb+nk-1 (tensor indices): entries outside the
/// row's [begin, end) or hidden by its boolean row become -inf. Returns false (and leaves
/// s untouched) when no key of the block can be visible.
template <class T>  // float or double
inline bool mask_row(T* s, index_t kb, index_t nk, const row_keys& row) {
  const index_t lo = std::max(row.begin, kb) - kb, hi = std::min(row.end, kb + nk) - kb;
  if (hi <= lo) return false;
  const T ninf = -std::numeric_limits<T>::infinity();
  std::fill(s, s + lo, ninf);
  std::fill(s + hi, s + nk, ninf);
  if (row.allowed != nullptr)
    for (index_t j = lo; j < hi; ++j)
      if (!row.allowed[kb + j]) s[j] = ninf;
  return true;
}

/// Online-softmax update of one row with one block of (scaled, masked) logits s[0, nk):
/// turns s into P = exp(s - M') with M' the new running max, rescales the row's output
/// accumulator o[0, dp) by exp(M - M'), and merges the block into the state. A block
/// whose entries are all -inf leaves everything unchanged and zeroes s. Weights whose
/// exp argument is below flush_below (flush_threshold(n) of the row's visible count n)
/// are written as exact zeros, as the row kernel does.
template <class Arch, class T>  // xsimd architecture tag or scalar_arch; float or double
inline void online_row(T* s, index_t nk, row_state<double>& state, T* o, index_t dp,
                       T flush_below) {
  const T block_max = row_max<Arch>(s, nk);
  if (block_max == -std::numeric_limits<T>::infinity()) {
    std::fill(s, s + nk, T(0));
    return;
  }
  const double new_max = std::max(state.max, static_cast<double>(block_max));
  const double block_sum = exp_and_sum<Arch>(s, s, nk, T(1), static_cast<T>(new_max), flush_below);
  if (!state.empty() && state.max != new_max)
    scale_row<Arch>(o, dp, static_cast<T>(std::exp(state.max - new_max)));
  state = merge(state, row_state<double>{new_max, block_sum});
}

/// The policy's multiplier m of a row of head h (0 for a row that sees no key).
template <class T, class Policy>  // float or double; a length policy
inline double row_multiplier(const attention_problem<T, Policy>& p, const row_keys& row,
                             index_t h) {
  return row.visible > 0 ? p.policy->multiplier({row.n, row.position, h}) : 0.0;
}

/// Per-row setup of a block of query rows q0..q0+rows-1 of head h: which keys each row
/// sees (info), and the scaled queries qs[r*d, +d) = (m_r * scale) * q_r, with m_r the
/// policy's multiplier computed once per row in double (0 for rows that see no key).
template <class T, class Policy>  // float or double; a length policy
inline void setup_rows(const attention_problem<T, Policy>& p, const sequence_span& seq, index_t h,
                       index_t q0, index_t rows, row_keys* info, T* qs) {
  const index_t d = p.q.dim;
  for (index_t r = 0; r < rows; ++r) {
    info[r] = visible_keys(p.mask, seq, h, q0 + r);
    const T f = static_cast<T>(row_multiplier(p, info[r], h) * p.scale);
    const T* qr = p.q.row(seq.tensor_batch, q0 + r, h);
    for (index_t c = 0; c < d; ++c) qs[r * d + c] = f * qr[c];
  }
}

/// Key range [lo, hi) covering every row of a block, the same for every head: it ignores
/// the boolean mask (the only constraint that may differ between heads).
template <class T, class Policy>  // float or double; a length policy
inline void block_key_range(const attention_problem<T, Policy>& p, const sequence_span& seq,
                            index_t q0, index_t rows, index_t& lo, index_t& hi) {
  lo = std::numeric_limits<index_t>::max();
  hi = std::numeric_limits<index_t>::min();
  for (index_t r = 0; r < rows; ++r) {
    const row_keys k = visible_keys(p.mask, seq, 0, q0 + r, false);
    if (k.end > k.begin) lo = std::min(lo, k.begin), hi = std::max(hi, k.end);
  }
  if (lo >= hi) lo = hi = seq.k_begin;
}

/// Writes one finished row: out = o / sum (zeros when the state is empty), lse.
template <class T, class Policy>  // float or double; a length policy
inline void finish_row(const attention_problem<T, Policy>& p, index_t b, index_t i, index_t h,
                       const T* o, const row_state<double>& state) {
  T* dst = p.out.row(b, i, h);
  const index_t d = p.q.dim;
  if (state.empty()) {
    std::fill(dst, dst + d, T(0));
  } else {
    const T inv = static_cast<T>(1.0 / state.sum);
    for (index_t c = 0; c < d; ++c) dst[c] = o[c] * inv;
  }
  if (p.lse != nullptr) p.lse[p.lse_at(b, h, i)] = static_cast<T>(state.log_sum_exp());
}

}  // namespace detail
}  // namespace kernels
}  // namespace ssmax
