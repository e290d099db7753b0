#pragma once
// Element types: how tensors are stored, and the type the kernels compute in for each.
//
//   storage type       compute type   notes
//   float              float
//   double             double         an all-double call stays all-double
//   Eigen::bfloat16    float          the top 16 bits of a float (8-bit exponent)
//   Eigen::half        float          IEEE binary16 (5-bit exponent, denormals)
//
// This is the one place that says "16-bit computes in float": every kernel takes its
// compute type from compute_t<S>. The two 16-bit types are Eigen 3.4's (users already have
// them); a buffer of raw uint16_t bits is viewed as them with as_bfloat16 / as_half.
//
// K/V cache formats, read by the forward kernels only (values in float):
//   fp8_e4m3, fp8_e5m2   one byte per value; the view carries the scale (value = scale *
//                        fp8: tensor_view::scale, one per tensor or per head)
//   block_q8_0           ggml's Q8_0: one element is a block of 32 values (int8 and an f16
//                        scale, 34 bytes): a view's dim and strides count blocks
// quantize.hpp states their rounding and has the helpers that fill them.
//
// One attention call reads q, k and v and writes out. The supported combinations
// (attention_storage below):
//   q and out in {float, bfloat16, half}, k and v each in {float, bfloat16, half, fp8_e4m3,
//   fp8_e5m2, block_q8_0} (k and v may differ: a q8_0 k with a half v): compute in float;
//   q, k, v and out all double: compute in double.
// 16-bit and 8-bit values are exact inputs (widened exactly to float; an 8-bit value's
// scale applied as the formats say: kernels/convert.hpp); only the final store to a
// 16-bit out rounds (to nearest, ties to even). The backward (attention_backward_storage)
// also reads out and dout and writes dq, dk, dv, each of them float, bfloat16 or half in a
// float call (the gradients rounded once, on the store); its k and v are one 16- or 32-bit
// type.

#include <Eigen/Core>
#include <cstddef>
#include <cstdint>
#include <type_traits>

namespace ssmax {

/// OCP FP8 E4M3 ("e4m3fn": no infinities, S.1111.111 is NaN; largest finite 448).
struct fp8_e4m3 {
  std::uint8_t bits = 0;
};
/// OCP FP8 E5M2 (IEEE-style infinities and NaN; largest finite 57344).
struct fp8_e5m2 {
  std::uint8_t bits = 0;
};

/// Values per Q8_0 block.
inline constexpr std::ptrdiff_t kQ8_0Block = 32;
/// ggml's Q8_0 block: value c of the block is float(d) * qs[c] (exact in float: an 11-bit
/// significand times a 7-bit integer).
struct block_q8_0 {
  Eigen::half d;
  std::int8_t qs[kQ8_0Block];
};
static_assert(sizeof(block_q8_0) == 34 && alignof(block_q8_0) == 2,
              "block_q8_0 has ggml's 34-byte layout");

/// What the library knows about a storage type; `known` is false for anything else.
template <class S>  // a candidate element type (cv-unqualified)
struct storage_traits {
  static constexpr bool known = false;
};
template <>
struct storage_traits<float> {
  static constexpr bool known = true;
  using compute = float;  ///< the type kernels compute in
  static constexpr const char* name = "float";
};
template <>
struct storage_traits<double> {
  static constexpr bool known = true;
  using compute = double;
  static constexpr const char* name = "double";
};
template <>
struct storage_traits<Eigen::bfloat16> {
  static constexpr bool known = true;
  using compute = float;
  static constexpr const char* name = "bfloat16";
};
template <>
struct storage_traits<Eigen::half> {
  static constexpr bool known = true;
  using compute = float;
  static constexpr const char* name = "half";
};
template <>
struct storage_traits<fp8_e4m3> {
  static constexpr bool known = true;
  using compute = float;
  static constexpr const char* name = "fp8_e4m3";
};
template <>
struct storage_traits<fp8_e5m2> {
  static constexpr bool known = true;
  using compute = float;
  static constexpr const char* name = "fp8_e5m2";
};
template <>
struct storage_traits<block_q8_0> {
  static constexpr bool known = true;
  using compute = float;
  static constexpr const char* name = "block_q8_0";
};

/// True for the two fp8 formats (const or not).
template <class S>  // any type
inline constexpr bool is_fp8_v = std::is_same<std::remove_const_t<S>, fp8_e4m3>::value ||
                                 std::is_same<std::remove_const_t<S>, fp8_e5m2>::value;

/// True for the 8-bit K/V cache formats: fp8_e4m3, fp8_e5m2, block_q8_0 (const or not).
template <class S>  // any type
inline constexpr bool is_8bit_v =
    is_fp8_v<S> || std::is_same<std::remove_const_t<S>, block_q8_0>::value;

/// Values one element of S holds along d: kQ8_0Block for block_q8_0, else 1.
template <class S>  // a storage type
inline constexpr std::ptrdiff_t values_per_element_v =
    std::is_same<std::remove_const_t<S>, block_q8_0>::value ? kQ8_0Block : 1;

/// True for the element types of every tensor (float, double, bfloat16, half), const or
/// not.
template <class S>  // any type
inline constexpr bool is_storage_type_v =
    storage_traits<std::remove_const_t<S>>::known && !is_8bit_v<S>;

/// True for the element types k and v may have: is_storage_type_v's and the 8-bit formats.
template <class S>  // any type
inline constexpr bool is_kv_storage_type_v = storage_traits<std::remove_const_t<S>>::known;

/// True for the two 16-bit storage types (const or not).
template <class S>  // any type
inline constexpr bool is_16bit_v = std::is_same<std::remove_const_t<S>, Eigen::bfloat16>::value ||
                                   std::is_same<std::remove_const_t<S>, Eigen::half>::value;

/// The compute type of a storage type (const ignored): double for double, float for the
/// others.
template <class S>  // a storage type (is_storage_type_v)
using compute_t = typename storage_traits<std::remove_const_t<S>>::compute;

/// Whether one attention call may read q (Q), k (K) and v (V) and write out (O): see the
/// table at the top. `compute` is the type of the call's arithmetic and of its lse and
/// weights outputs (float for every 16-bit call), or void when unsupported. The `*_ok`
/// flags say which argument is at fault (the first false one, in the order q, k, v, out),
/// for the one static_assert that reports it.
template <class Q,  // element type of q (const or not)
          class K,  // element type of k
          class V,  // element type of v
          class O>  // element type of out (must not be const)
struct attention_storage {
  using q_type = std::remove_const_t<Q>;
  using k_type = std::remove_const_t<K>;
  using v_type = std::remove_const_t<V>;
  static constexpr bool q_double = std::is_same<q_type, double>::value;
  static constexpr bool k_double = std::is_same<k_type, double>::value;
  static constexpr bool v_double = std::is_same<v_type, double>::value;
  static constexpr bool out_double = std::is_same<std::remove_const_t<O>, double>::value;
  static constexpr bool q_ok = is_storage_type_v<Q> && (!q_double || k_double);
  static constexpr bool k_ok = is_kv_storage_type_v<K> && k_double == q_double;
  static constexpr bool v_ok = is_kv_storage_type_v<V> && v_double == q_double;
  static constexpr bool out_ok =
      !std::is_const<O>::value && is_storage_type_v<O> && out_double == q_double;
  static constexpr bool supported = q_ok && k_ok && v_ok && out_ok;
  using compute = std::conditional_t<!supported, void, std::conditional_t<q_double, double, float>>;
};

/// Whether one attention_backward call may read q (Q), k (K), v (V), out (O) and dout (D)
/// and write the gradients dq, dk, dv (G, one type for the three): q, k, v and out as the
/// forward (attention_storage, out read here) but k and v one type of is_storage_type_v,
/// dout and the gradients in {float, bfloat16, half}, computed and accumulated in float; or
/// all six double. `compute` (float or double;
/// void when unsupported) is lse's type. The `*_ok` flags name the first argument at fault,
/// in the order q, k, v, out, dout, grads.
template <class Q,  // element type of q (const or not)
          class K,  // element type of k
          class V,  // element type of v
          class O,  // element type of out (an input here)
          class D,  // element type of dout
          class G>  // element type of the gradients (must not be const)
struct attention_backward_storage {
  using forward = attention_storage<Q, K, V, std::remove_const_t<O>>;
  static constexpr bool q_double = forward::q_double;
  static constexpr bool q_ok = forward::q_ok;
  static constexpr bool k_ok = forward::k_ok && is_storage_type_v<K>;
  static constexpr bool v_ok =
      forward::v_ok && std::is_same<std::remove_const_t<K>, std::remove_const_t<V>>::value;
  static constexpr bool out_ok = forward::out_ok;
  static constexpr bool dout_ok =
      is_storage_type_v<D> && std::is_same<std::remove_const_t<D>, double>::value == q_double;
  static constexpr bool grads_ok = !std::is_const<G>::value && is_storage_type_v<G> &&
                                   std::is_same<std::remove_const_t<G>, double>::value == q_double;
  static constexpr bool supported = q_ok && k_ok && v_ok && out_ok && dout_ok && grads_ok;
  using compute = std::conditional_t<!supported, void, std::conditional_t<q_double, double, float>>;
};

/// Raw 16-bit buffers (bits as another framework stores them) viewed as the library's
/// 16-bit types, without a copy: both are standard-layout structs of one uint16_t.
inline const Eigen::bfloat16* as_bfloat16(const std::uint16_t* bits) {
  return reinterpret_cast<const Eigen::bfloat16*>(bits);
}
inline Eigen::bfloat16* as_bfloat16(std::uint16_t* bits) {
  return reinterpret_cast<Eigen::bfloat16*>(bits);
}
inline const Eigen::half* as_half(const std::uint16_t* bits) {
  return reinterpret_cast<const Eigen::half*>(bits);
}
inline Eigen::half* as_half(std::uint16_t* bits) { return reinterpret_cast<Eigen::half*>(bits); }

static_assert(sizeof(Eigen::bfloat16) == 2 && sizeof(Eigen::half) == 2 &&
                  std::is_trivially_copyable<Eigen::bfloat16>::value &&
                  std::is_trivially_copyable<Eigen::half>::value,
              "ssmax views Eigen's 16-bit types as their raw bits");

}  // namespace ssmax
