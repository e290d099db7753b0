#pragma once
// Strided 4-D views of raw memory, the attention operator's inputs and outputs.
//
// A view always reads as [batch, seq, heads, dim] (element (b, s, h, c) lives at
// data + b*stride_b + s*stride_s + h*stride_h + c), whatever the memory order: the two
// common layouts are views of the same kind with different strides, so nothing is copied.
//   bshd_view(p, B, S, H, d)  memory [B, S, H, d] (PyTorch's (batch, seq, heads, dim))
//   bhsd_view(p, B, H, S, d)  memory [B, H, S, d] (heads-major, as after a transpose)
//   cache_view(p, B, capacity, H_kv, d, lengths)
//                             a batched KV cache: memory [B, capacity, H_kv, d], sequence b
//                             filled up to lengths[b]; the view spans the longest one and
//                             carries the lengths, which every call honours
// The head dimension is contiguous (stride 1): kernels read whole head rows as vectors.
// Keys and values may also be stored in an 8-bit format (storage.hpp): an fp8 view carries
// its scale (value = scale * fp8, `scale` below); a block_q8_0 view's elements are blocks
// of 32 values, so its dim is d / 32 and its strides count blocks (bshd_view(blocks, B, S,
// H, d / kQ8_0Block) for a [B, S, H, d] cache).
//
// Eigen helpers: head_matrix(view, b, h) maps one head's [seq, d] slice as a row-major
// Eigen matrix; head_view(matrix) views one row-major [seq, d] matrix as a 1-batch,
// 1-head tensor; bshd_view(matrix, B, H) views a row-major [B*S, H*d] activation matrix
// (the shape model code usually holds) as [B, S, H, d].

#include <Eigen/Core>
#include <type_traits>

#include "error.hpp"
#include "index_array.hpp"

namespace ssmax {

/// Row-major dynamic Eigen matrix: one head's [seq, d] slice.
template <class T>  // float, double, Eigen::bfloat16 or Eigen::half
using row_matrix = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

/// Reference to a row-major matrix with any row stride (Map, Matrix, block of either).
template <class T>  // an element type: float, double, Eigen::bfloat16 or Eigen::half
using const_matrix_ref = Eigen::Ref<const row_matrix<T>, 0, Eigen::OuterStride<>>;
/// Writable reference to a row-major matrix with any row stride.
template <class T>  // an element type: float, double, Eigen::bfloat16 or Eigen::half
using matrix_ref = Eigen::Ref<row_matrix<T>, 0, Eigen::OuterStride<>>;

/// The scale of an fp8 tensor (value = scale * fp8, vLLM's k_scale / v_scale): one float
/// for the whole tensor, or one per head (per_head: values[h] for head h). Read at the
/// call, which requires each in [2^-64, 2^64] (finite and > 0; vLLM's scales lie far inside).
struct value_scale {
  const float* values = nullptr;  ///< [1], or [heads] when per_head; null: no scale
  bool per_head = false;
  /// The scale of head h.
  float of_head(index_t h) const { return values[per_head ? h : 0]; }
};

/// A [batch, seq, heads, dim] view of strided memory. T may be const for inputs.
template <class T>  // an element type (float, double, Eigen::bfloat16, Eigen::half), possibly const
struct tensor_view {
  T* data = nullptr;     ///< element (0, 0, 0, 0)
  index_t batch = 0;     ///< B
  index_t seq = 0;       ///< tokens per batch entry (n_q or n_k)
  index_t heads = 0;     ///< H (queries) or H_kv (keys, values)
  index_t dim = 0;       ///< d, contiguous
  index_t stride_b = 0;  ///< elements between consecutive batch entries
  index_t stride_s = 0;  ///< elements between consecutive tokens
  index_t stride_h = 0;  ///< elements between consecutive heads
  /// Keys and values only: [batch] tokens each batch entry holds (cache_view), the rows
  /// past them padding that no call reads; null: every row of seq. The call honours them
  /// as the mask's key_lengths (mask.hpp), and refuses a mask whose key_lengths differ.
  index_array seq_lengths{};
  /// fp8 views only (and required there): the scale of the values. Null for other types.
  value_scale scale{};

  /// Pointer to the head row (b, s, h, 0..dim).
  T* row(index_t b, index_t s, index_t h) const {
    return data + b * stride_b + s * stride_s + h * stride_h;
  }
  /// Element (b, s, h, c).
  T& operator()(index_t b, index_t s, index_t h, index_t c) const { return row(b, s, h)[c]; }
  /// The same view, read-only.
  operator tensor_view<const T>() const {  // NOLINT: implicit by design
    return {data, batch, seq, heads, dim, stride_b, stride_s, stride_h, seq_lengths, scale};
  }
  /// Number of elements in the shape.
  index_t size() const { return batch * seq * heads * dim; }
};

/// View of contiguous memory laid out [B, S, H, d].
template <class T>  // an element type (float, double, Eigen::bfloat16, Eigen::half), possibly const
tensor_view<T> bshd_view(T* data, index_t batch, index_t seq, index_t heads, index_t dim) {
  return {data, batch, seq, heads, dim, seq * heads * dim, heads * dim, dim};
}

/// View of contiguous memory laid out [B, H, S, d] (still indexed (b, s, h, c)).
template <class T>  // an element type (float, double, Eigen::bfloat16, Eigen::half), possibly const
tensor_view<T> bhsd_view(T* data, index_t batch, index_t heads, index_t seq, index_t dim) {
  return {data, batch, seq, heads, dim, heads * seq * dim, dim, seq * dim};
}

/// View of a batched KV cache: memory [B, capacity, H_kv, d] (room for `capacity` tokens
/// per sequence), of which sequence b holds lengths[b] tokens (int32 or int64 values,
/// index_array.hpp). The view's seq is the longest length (at least 1), stride_b is
/// capacity * H_kv * d, and it carries the lengths (seq_lengths): a call honours them
/// whatever its mask (they become the mask's key_lengths; a mask with other key_lengths
/// is refused), so the rows past a sequence's own length are never read. Queries then sit
/// at the end of each sequence's own keys (mask.hpp); pair the view with
/// attention_mask::cache(lengths) or causal_mask() for causal decoding.
/// Pre (checked, argument_error naming it): data and lengths not null, every extent >= 1,
/// 0 <= lengths[b] <= capacity. lengths is read now and again at the call.
template <class T>  // an element type (float, double, Eigen::bfloat16, Eigen::half), possibly const
tensor_view<T> cache_view(T* data, index_t batch, index_t capacity, index_t kv_heads, index_t dim,
                          index_array lengths) {
  constexpr const char* fn = "cache_view";
  detail::require(data != nullptr, fn, "data", "must not be null");
  detail::require(lengths != nullptr, fn, "lengths", "must not be null");
  detail::require(batch >= 1, fn, "batch", "must be >= 1");
  detail::require(capacity >= 1, fn, "capacity", "must be >= 1");
  detail::require(kv_heads >= 1, fn, "kv_heads", "must be >= 1");
  detail::require(dim >= 1, fn, "dim", "must be >= 1");
  index_t longest = 1;
  for (index_t b = 0; b < batch; ++b) {
    detail::require(lengths[b] >= 0 && lengths[b] <= capacity, fn, "lengths",
                    "must each be in [0, capacity]");
    longest = lengths[b] > longest ? lengths[b] : longest;
  }
  return {data,           batch, longest, kv_heads, dim, capacity * kv_heads * dim,
          kv_heads * dim, dim,   lengths};
}

/// One head's [seq, d] slice of a view, as a row-major Eigen map (no copy).
template <class T>  // an element type (float, double, Eigen::bfloat16, Eigen::half), possibly const
auto head_matrix(const tensor_view<T>& view, index_t b, index_t h) {
  using Plain = row_matrix<std::remove_const_t<T>>;
  using Mapped = std::conditional_t<std::is_const<T>::value, const Plain, Plain>;
  return Eigen::Map<Mapped, 0, Eigen::OuterStride<>>(view.row(b, 0, h), view.seq, view.dim,
                                                     Eigen::OuterStride<>(view.stride_s));
}

namespace detail {
/// t, read-only whether or not its element type is const: what the overloads taking views
/// of any constness hand on.
template <class T>  // the view's element type, const or not
tensor_view<const std::remove_const_t<T>> read_only(const tensor_view<T>& t) {
  return t;
}
/// The view of one row-major matrix with contiguous rows (element type E, const for
/// read-only access) as a 1-batch, 1-head tensor.
template <class E, class M>  // the view's element type; an Eigen row-major dense object
tensor_view<E> head_view_of(const M& m) {
  static_assert(M::IsRowMajor,
                "ssmax::head_view: argument 'm' must be a row-major matrix (row_matrix, a Map "
                "or block of one, or an Eigen::Ref to one)");
  require(m.innerStride() == 1, "head_view", "m", "must have contiguous rows (inner stride 1)");
  E* data = const_cast<E*>(m.data());
  return {data, 1, m.rows(), 1, m.cols(), m.outerStride() * m.rows(), m.outerStride(), m.cols()};
}
/// True for Eigen dense objects with direct access to their memory (matrices, maps,
/// blocks of them, Refs): what head_view takes.
template <class M>  // an Eigen type
inline constexpr bool direct_access_v = (M::Flags & Eigen::DirectAccessBit) != 0;
}  // namespace detail

/// One row-major [seq, d] Eigen matrix (row_matrix, a Map or block of one, an Eigen::Ref to
/// one) of float, double, Eigen::bfloat16 or Eigen::half as a 1-batch, 1-head view, with no
/// copy: writable when the matrix is (an out argument), read-only when it is const. So
/// attention(head_view(q), head_view(k), head_view(v), head_view(out)) runs one head with
/// any mix of element types that ssmax::attention takes. The matrix must outlive the view.
/// Throws argument_error naming 'm' when its rows are not contiguous.
template <class Derived,  // an Eigen dense type with direct access (Matrix, Map, Block, Ref)
          std::enable_if_t<detail::direct_access_v<Derived>, int> = 0>
auto head_view(Eigen::DenseBase<Derived>& m) {
  using E = std::remove_pointer_t<decltype(m.derived().data())>;  // const for read-only blocks
  return detail::head_view_of<E>(m.derived());
}
/// head_view of a const matrix: a read-only view.
template <class Derived,  // an Eigen dense type with direct access
          std::enable_if_t<detail::direct_access_v<Derived>, int> = 0>
auto head_view(const Eigen::DenseBase<Derived>& m) {
  using E = const typename Derived::Scalar;
  return detail::head_view_of<E>(m.derived());
}
/// head_view of a temporary Map, Block or Ref (head_view(Eigen::Map<row_matrix<float>>(p,
/// n, d)) as an out argument, say): writable when the memory it refers to is.
template <class Derived,  // an Eigen expression with direct access that refers to memory
          std::enable_if_t<detail::direct_access_v<Derived> &&
                               !std::is_base_of<Eigen::PlainObjectBase<Derived>, Derived>::value,
                           int> = 0>
auto head_view(Eigen::DenseBase<Derived>&& m) {
  using E = std::remove_pointer_t<decltype(m.derived().data())>;
  return detail::head_view_of<E>(m.derived());
}

/// A row-major [B*S, H*d] activation matrix as a [B, S, H, d] view. Throws
/// argument_error when the matrix does not split into that shape.
template <class Matrix>  // row-major Eigen Matrix or Map (has data(), outerStride())
auto bshd_view(Matrix& m, index_t batch, index_t heads) {
  using T = std::remove_reference_t<decltype(*m.data())>;
  detail::require(batch >= 1 && m.rows() % batch == 0, "bshd_view", "batch",
                  "must be >= 1 and divide the matrix's rows");
  detail::require(heads >= 1 && m.cols() % heads == 0, "bshd_view", "heads",
                  "must be >= 1 and divide the matrix's columns");
  detail::require(Matrix::IsRowMajor || m.rows() == 1, "bshd_view", "m", "must be row-major");
  // Consecutive elements of a row must be adjacent: a strided Map, or a one-row block of a
  // column-major matrix (which passes the check above), is not.
  detail::require(m.colStride() == 1, "bshd_view", "m",
                  "must have contiguous rows (column stride 1)");
  const index_t seq = m.rows() / batch, dim = m.cols() / heads, row = m.rowStride();
  return tensor_view<T>{m.data(), batch, seq, heads, dim, seq * row, row, dim};
}

}  // namespace ssmax
