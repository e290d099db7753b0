#pragma once
// The attention logit's extras, one home: the additive bias, ALiBi, the soft-cap and the
// attention sinks (attention.hpp states the formula they enter), their checks, which keys a
// row sees once the bias hides some (its n), and the per-row score epilogue both forward
// kernels and the fused backward apply to the raw scores scale q . k.
//
//   z_ij = softcap(scale q_i . k_j) + bias_ij,      softcap(x) = c tanh(x / c) when c > 0
//   bias_ij = additive_ij - slope_h |key_pos_j - query_pos_i|
//
// A key whose additive bias is -inf is hidden exactly as the boolean mask hides it: it is
// not counted in n and weighs 0 whatever the sign of m (engines that give every mask as an
// additive -inf tensor get SSMax's n right). The sink is a per-head logit that joins every
// row's softmax with a zero value: it is not a key and is not counted in n.
//
// Without bias, ALiBi or soft-cap the kernels fold m * scale into q; with any of them they
// fold only scale and the epilogue computes m z.

#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "error.hpp"
#include "mask.hpp"

namespace ssmax {

/// An additive float bias [B, H, n_q, n_k] (tensor indices: with packed sequences batch 1
/// and total_q x total_k), bias(b, h, i, j) = data[b stride_b + h stride_h + i stride_q +
/// j stride_k]; a stride of 0 broadcasts (one bias for every batch entry or head). -inf
/// hides the key. data null: no bias.
struct logit_bias {
  const float* data = nullptr;  ///< the bias, or null for none
  index_t batch = 0;            ///< B (the tensors' batch)
  index_t heads = 0;            ///< H (query heads)
  index_t rows = 0;             ///< n_q (the tensors' query rows)
  index_t keys = 0;             ///< n_k (the tensors' key rows)
  index_t stride_b = 0;         ///< elements between batch entries (0: broadcast)
  index_t stride_h = 0;         ///< elements between heads (0: broadcast)
  index_t stride_q = 0;         ///< elements between query rows
  index_t stride_k = 1;         ///< elements between keys

  /// A contiguous [B, H, n_q, n_k] bias.
  static logit_bias dense(const float* data, index_t B, index_t H, index_t n_q, index_t n_k) {
    return {data, B, H, n_q, n_k, H * n_q * n_k, n_q * n_k, n_k, 1};
  }
  /// One contiguous [n_q, n_k] bias for every batch entry and head (stride 0 over both).
  static logit_bias shared(const float* data, index_t B, index_t H, index_t n_q, index_t n_k) {
    return {data, B, H, n_q, n_k, 0, 0, n_k, 1};
  }
  /// The bias row of query row i of head h in batch entry b, indexed by key j * stride_k.
  const float* row(index_t b, index_t h, index_t i) const {
    return data + b * stride_b + h * stride_h + i * stride_q;
  }
};

/// The logit's extras (attention_options::logit). Every pointer is borrowed for the call.
struct logit_options {
  logit_bias bias;                      ///< additive bias; bias.data null = none
  const float* alibi_slopes = nullptr;  ///< [alibi_heads] ALiBi slope per query head, or null
  index_t alibi_heads = 0;              ///< entries of alibi_slopes (must be H)
  double softcap = 0.0;                 ///< c > 0: z = c tanh(scale q . k / c) + bias; 0 = none
  const float* sinks = nullptr;         ///< [sink_heads] sink logit per query head, or null
  index_t sink_heads = 0;               ///< entries of sinks (must be H)

  /// True when the raw scores go through the epilogue (bias, ALiBi or soft-cap).
  bool transforms_scores() const {
    return bias.data != nullptr || alibi_slopes != nullptr || softcap > 0.0;
  }
  bool has_sinks() const { return sinks != nullptr; }
};

/// The standard ALiBi slopes for H heads (Press et al.): for H a power of two,
/// slope_h = 2^(-8 (h + 1) / H); otherwise the slopes of the largest power of two P < H,
/// then every other slope of 2P for the remaining H - P heads. Pre (checked): H >= 1.
inline std::vector<float> alibi_slopes(index_t heads) {
  detail::require(heads >= 1, "alibi_slopes", "heads", "must be >= 1");
  auto geometric = [](index_t count, std::vector<float>& out, index_t step, index_t take) {
    for (index_t h = 0; h < count && take > 0; h += step, --take)
      out.push_back(static_cast<float>(std::exp2(-8.0 * static_cast<double>(h + 1) / count)));
  };
  index_t power = 1;
  while (power * 2 <= heads) power *= 2;
  std::vector<float> slopes;
  geometric(power, slopes, 1, power);
  if (power < heads) geometric(2 * power, slopes, 2, heads - power);
  return slopes;
}

namespace detail {

/// Throws argument_error naming the bad field of o for tensors of batch B, H heads, n_q
/// query rows and n_k key rows (the tensors' extents); writes nothing.
inline void check_logit(const char* fn, const logit_options& o, index_t B, index_t H, index_t n_q,
                        index_t n_k) {
  const logit_bias& b = o.bias;
  if (b.data != nullptr) {
    require_lazy(b.batch == B && b.heads == H && b.rows == n_q && b.keys == n_k, fn,
                 "options.logit.bias", [&] {
                   return "has shape [" + std::to_string(b.batch) + ", " + std::to_string(b.heads) +
                          ", " + std::to_string(b.rows) + ", " + std::to_string(b.keys) +
                          "], expected [B, H, n_q, n_k] = [" + std::to_string(B) + ", " +
                          std::to_string(H) + ", " + std::to_string(n_q) + ", " +
                          std::to_string(n_k) + "]";
                 });
    require(b.stride_b >= 0 && b.stride_h >= 0 && b.stride_q >= 0 && b.stride_k >= 0, fn,
            "options.logit.bias", "must have non-negative strides");
  }
  if (o.alibi_slopes != nullptr) {
    require_lazy(o.alibi_heads == H, fn, "options.logit.alibi_slopes", [&] {
      return "has " + std::to_string(o.alibi_heads) + " slopes, expected one per head (" +
             std::to_string(H) + ")";
    });
    for (index_t h = 0; h < H; ++h)
      require(std::isfinite(o.alibi_slopes[h]), fn, "options.logit.alibi_slopes", "must be finite");
  }
  require(std::isfinite(o.softcap) && o.softcap >= 0.0, fn, "options.logit.softcap",
          "must be finite and >= 0 (0: no soft-cap)");
  if (o.sinks != nullptr) {
    require_lazy(o.sink_heads == H, fn, "options.logit.sinks", [&] {
      return "has " + std::to_string(o.sink_heads) + " sinks, expected one per head (" +
             std::to_string(H) + ")";
    });
    for (index_t h = 0; h < H; ++h)
      require(!std::isnan(o.sinks[h]) && o.sinks[h] != std::numeric_limits<float>::infinity(), fn,
              "options.logit.sinks", "must be finite or -inf (no sink)");
  }
}

/// Throws argument_error naming `argument` when the output [p, p + count) overlaps one of
/// o's arrays (the bias's extent, the ALiBi slopes, the sinks): the kernels read those
/// while they write the outputs.
template <class U>  // element type of the output
inline void require_disjoint_from_logit(const U* p, index_t count, const char* fn,
                                        const char* argument, const logit_options& o) {
  const logit_bias& b = o.bias;
  if (b.data != nullptr) {
    const index_t extent = (b.batch - 1) * b.stride_b + (b.heads - 1) * b.stride_h +
                           (b.rows - 1) * b.stride_q + (b.keys - 1) * b.stride_k + 1;
    require(!overlaps(p, count, b.data, extent), fn, argument, "overlaps 'options.logit.bias'");
  }
  if (o.alibi_slopes != nullptr)
    require(!overlaps(p, count, o.alibi_slopes, o.alibi_heads), fn, argument,
            "overlaps 'options.logit.alibi_slopes'");
  if (o.sinks != nullptr)
    require(!overlaps(p, count, o.sinks, o.sink_heads), fn, argument,
            "overlaps 'options.logit.sinks'");
}

}  // namespace detail

/// visible_keys (mask.hpp) with the bias's hidden keys: which keys row i (tensor query
/// row) of head h in batch entry b = seq.tensor_batch sees and its n, when a key with a
/// -inf additive bias is hidden as the boolean mask hides it (counted out of visible and
/// of n). Without a bias, visible_keys itself.
inline row_keys visible_keys(const attention_mask& mask, const logit_options& logit,
                             const sequence_span& seq, index_t head, index_t i) {
  row_keys r = visible_keys(mask, seq, head, i);
  if (logit.bias.data == nullptr || r.visible == 0) return r;
  const float* bias = logit.bias.row(seq.tensor_batch, head, i);
  const float ninf = -std::numeric_limits<float>::infinity();
  index_t visible = 0;
  for (index_t j = r.begin; j < r.end; ++j)
    visible += (r.allowed == nullptr || r.allowed[j]) && bias[j * logit.bias.stride_k] != ninf;
  r.visible = visible;
  r.n = policy_length(mask, seq, i, visible);
  return r;
}

/// One row's score epilogue: what turns its raw scores x_j = scale q . k_j into m z_j.
struct row_logit {
  double m = 1.0;                  ///< the row's multiplier
  double cap = 0.0;                ///< soft-cap c (0: none)
  const float* bias = nullptr;     ///< the row's additive bias, by tensor key j * bias_stride
  index_t bias_stride = 1;         ///< elements between keys of bias
  double slope = 0.0;              ///< ALiBi slope (0: none)
  index_t query_position = 0;      ///< the query's position
  index_t first_key_position = 0;  ///< the position of tensor key 0 (key_offset - k_begin)
};

/// The epilogue of row i of head h (row = visible_keys(mask, logit, ...)) with multiplier m.
inline row_logit logit_of_row(const logit_options& logit, const attention_mask& mask,
                              const sequence_span& seq, index_t h, index_t i, const row_keys& row,
                              double m) {
  row_logit r;
  r.m = m;
  r.cap = logit.softcap;
  if (logit.bias.data != nullptr) {
    r.bias = logit.bias.row(seq.tensor_batch, h, i);
    r.bias_stride = logit.bias.stride_k;
  }
  if (logit.alibi_slopes != nullptr) r.slope = logit.alibi_slopes[h];
  r.query_position = row.position;
  r.first_key_position = mask.key_offset - seq.k_begin;
  return r;
}

/// Score j of the epilogue below from its capped raw score x (softcap(x_j), or x_j without
/// a soft-cap): m (x + bias_j - slope |key_pos_j - query_pos|), in double, rounded once to
/// T; -inf when the additive bias is -inf, whatever the sign of m.
template <class T>  // float or double
inline T finish_logit(double x, index_t kb, index_t j, const row_logit& r) {
  const double ninf = -std::numeric_limits<double>::infinity();
  double bias = r.bias != nullptr ? static_cast<double>(r.bias[(kb + j) * r.bias_stride]) : 0.0;
  if (r.slope != 0.0) {
    const index_t distance = r.first_key_position + kb + j - r.query_position;
    bias -= r.slope * static_cast<double>(distance < 0 ? -distance : distance);
  }
  return bias == ninf ? static_cast<T>(ninf) : static_cast<T>(r.m * (x + bias));
}

/// The score epilogue on the raw scores s[0, nk) of tensor keys kb..kb+nk-1:
///   s_j = m (softcap(s_j) + bias_j - slope |key_pos_j - query_pos|),
/// computed in double and rounded once to T; a key whose additive bias is -inf gets -inf
/// whatever the sign of m (hidden, as mask_row hides keys). NaN scores stay NaN. The
/// kernels run it in their row-logit step (kernels/row_logits.hpp), with the soft-cap's
/// tanh a vector at a time (kernels/score_epilogue.hpp).
template <class T>  // float or double
inline void score_epilogue(T* s, index_t kb, index_t nk, const row_logit& r) {
  for (index_t j = 0; j < nk; ++j) {
    double x = static_cast<double>(s[j]);
    if (r.cap > 0.0) x = r.cap * std::tanh(x / r.cap);
    s[j] = finish_logit<T>(x, kb, j, r);
  }
}

/// softcap'(x) = 1 - tanh^2(x / c) for raw scores x (1 without a soft-cap): the backward's
/// factor on dL/dx.
inline double softcap_slope(double x, double cap) {
  if (!(cap > 0.0)) return 1.0;
  const double t = std::tanh(x / cap);
  return 1.0 - t * t;
}

}  // namespace ssmax
