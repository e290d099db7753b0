#pragma once
// Reference multi-head attention in double precision: the oracle the attention tests
// compare both kernels against. Written for reading, not for speed.
//
// Shapes (tensor_view indices (b, s, h, c)):
//   q       [B, n_q, H, d]      k, v   [B, n_k, H_kv, d]      g(h) = h / (H / H_kv)
//   out     [B, n_q, H, d]      lse    [B, H, n_q]            weights [B, H, n_q, n_k]
// For each sequence, head h and query row i:
//   row      = visible_keys(mask, ...)          which keys the mask lets it see (mask.hpp)
//   bias_j   = logit.bias(b, h, i, j) - slope_h |key_pos_j - p|   (0 without them)
//   seen     = the keys of row whose additive bias is not -inf; n = policy_length(seen count)
//   m        = policy.multiplier({n, p, h})     once per row, in double
//   z_j      = softcap(scale * (q_i . k_j)) + bias_j   for seen j, -inf otherwise
//   a        = softmax(m [z, sink_h])           reference::scaled_softmax (m on the scores;
//                                               the sink an extra logit with a zero value)
//   out_i    = sum_j a_j v_j                    lse_i = log (sum_j exp(m z_j) + exp(m sink_h))
// A row with no seen key gives zeros and lse = -inf. The logit is computed here from the
// formula of attention.hpp, independently of logit.hpp's kernels' epilogue.

#include <cmath>
#include <limits>
#include <vector>

#include "../length_policy.hpp"
#include "../logit.hpp"
#include "../mask.hpp"
#include "../tensor_view.hpp"
#include "softmax.hpp"

namespace ssmax::reference {

/// The reference's outputs, flat and in double.
struct attention_result {
  std::vector<double> out;      ///< [B, n_q, H, d]
  std::vector<double> lse;      ///< [B, H, n_q]
  std::vector<double> weights;  ///< [B, H, n_q, n_k]
};

/// Whether a row sees key j (a tensor key index): in [begin, end) and allowed.
inline bool sees(const row_keys& row, index_t j) {
  return j >= row.begin && j < row.end && (row.allowed == nullptr || row.allowed[j]);
}

/// One query row against the whole key axis, in double:
///   out_j = scale * (x(b, i, h, :) . y(b, j, g, :))   for the keys j the row sees,
///   out_j = hidden                                    for the others.
/// The scores are row_products(q, k, ..., scale, -inf, z); the backward's upstream
/// u_j = dout_i . v_j is row_products(dout, v, ..., 1, 0, u). Pre: out has y.seq entries.
template <class T>  // element type of the inputs (float or double), widened exactly
void row_products(const tensor_view<const T>& x, const tensor_view<const T>& y, index_t b,
                  index_t i, index_t h, index_t g, const row_keys& row, double scale, double hidden,
                  std::vector<double>& out) {
  for (index_t j = 0; j < y.seq; ++j) {
    if (!sees(row, j)) {
      out[static_cast<size_t>(j)] = hidden;
      continue;
    }
    double dot = 0.0;
    for (index_t c = 0; c < x.dim; ++c)
      dot += static_cast<double>(x(b, i, h, c)) * static_cast<double>(y(b, j, g, c));
    out[static_cast<size_t>(j)] = scale * dot;
  }
}

/// Calls f(b, h, g, i, row) for every query row that sees at least one key, sequence by
/// sequence, head by head, row by row: i is the row's tensor seq index in batch entry b, h
/// its head, g = h / (H / H_kv) the key/value head it reads, row = visible_keys(...).
template <class T,  // element type of the inputs (float or double)
          class F>  // callable (index b, index h, index g, index i, const row_keys& row)
void for_each_visible_row(const tensor_view<const T>& q, const tensor_view<const T>& k,
                          const attention_mask& mask, F&& f) {
  const index_t group = q.heads / k.heads;
  for (index_t s = 0; s < sequence_count(mask, q.batch); ++s) {
    const sequence_span seq = sequence_of(mask, s, q.seq, k.seq);
    for (index_t h = 0; h < q.heads; ++h)
      for (index_t i = seq.q_begin; i < seq.q_end; ++i) {
        const row_keys row = visible_keys(mask, seq, h, i);
        if (row.visible > 0) f(seq.tensor_batch, h, h / group, i, row);
      }
  }
}

/// The logits z_j = softcap(scale q_i . k_j) + bias_j of one row over the whole key axis,
/// -inf where the row does not see key j (outside `row`, or an additive bias of -inf);
/// returns the number of keys it sees. Computed from attention.hpp's formula.
template <class T>  // element type of the inputs (float or double), widened exactly
index_t row_logits(const tensor_view<const T>& q, const tensor_view<const T>& k,
                   const attention_mask& mask, const logit_options& logit, const sequence_span& seq,
                   index_t b, index_t i, index_t h, index_t g, const row_keys& row, double scale,
                   std::vector<double>& z) {
  const double inf = std::numeric_limits<double>::infinity();
  row_products(q, k, b, i, h, g, row, scale, -inf, z);
  index_t seen = 0;
  for (index_t j = 0; j < k.seq; ++j) {
    double& zj = z[static_cast<size_t>(j)];
    if (!sees(row, j)) continue;
    double bias = 0.0;
    if (logit.bias.data != nullptr) {
      const logit_bias& lb = logit.bias;
      bias = lb.data[b * lb.stride_b + h * lb.stride_h + i * lb.stride_q + j * lb.stride_k];
    }
    if (logit.alibi_slopes != nullptr)
      bias -= static_cast<double>(logit.alibi_slopes[h]) *
              std::abs(static_cast<double>(mask.key_offset + j - seq.k_begin - row.position));
    if (bias == -inf) {
      zj = -inf;
      continue;
    }
    if (logit.softcap > 0.0) zj = logit.softcap * std::tanh(zj / logit.softcap);
    zj += bias;
    ++seen;
  }
  return seen;
}

/// Calls f(b, h, g, i, row, z) for every query row that sees at least one key once the
/// additive bias has hidden its -inf keys, in for_each_visible_row's order: row.visible
/// and row.n count the keys seen (n: policy_length), z holds row_logits.
template <class T,  // element type of the inputs (float or double)
          class F>  // callable (b, h, g, i, const row_keys&, const std::vector<double>& z)
void for_each_logit_row(const tensor_view<const T>& q, const tensor_view<const T>& k,
                        const attention_mask& mask, const logit_options& logit, double scale,
                        F&& f) {
  const index_t group = q.heads / k.heads;
  std::vector<double> z(static_cast<size_t>(k.seq));
  for (index_t s = 0; s < sequence_count(mask, q.batch); ++s) {
    const sequence_span seq = sequence_of(mask, s, q.seq, k.seq);
    for (index_t h = 0; h < q.heads; ++h)
      for (index_t i = seq.q_begin; i < seq.q_end; ++i) {
        row_keys row = visible_keys(mask, seq, h, i);
        if (row.visible == 0) continue;
        const index_t b = seq.tensor_batch;
        row.visible = row_logits(q, k, mask, logit, seq, b, i, h, h / group, row, scale, z);
        if (row.visible == 0) continue;
        row.n = policy_length(mask, seq, i, row.visible);
        f(b, h, h / group, i, row, z);
      }
  }
}

/// The row's logits with head h's sink appended (when logit has sinks): the vector softmax
/// and log-sum-exp run over, the sink last with a zero value.
inline std::vector<double> with_sink(const std::vector<double>& z, const logit_options& logit,
                                     index_t h) {
  std::vector<double> all = z;
  if (logit.sinks != nullptr) all.push_back(static_cast<double>(logit.sinks[h]));
  return all;
}

/// Reference attention. Pre: arguments valid as ssmax::attention requires.
template <class T,       // element type of the inputs (float or double), widened exactly
          class Policy>  // a length policy (length_policy.hpp)
attention_result attention(const tensor_view<const T>& q, const tensor_view<const T>& k,
                           const tensor_view<const T>& v, const Policy& policy,
                           const attention_mask& mask, double scale,
                           const logit_options& logit = {}) {
  const index_t B = q.batch, n_q = q.seq, H = q.heads, d = q.dim, n_k = k.seq;
  const double inf = std::numeric_limits<double>::infinity();
  attention_result r;  // rows that see no key keep zeros and lse -inf
  r.out.assign(static_cast<size_t>(B * n_q * H * d), 0.0);
  r.lse.assign(static_cast<size_t>(B * H * n_q), -inf);
  r.weights.assign(static_cast<size_t>(B * H * n_q * n_k), 0.0);

  for_each_logit_row(q, k, mask, logit, scale,
                     [&](index_t b, index_t h, index_t g, index_t i, const row_keys& row,
                         const std::vector<double>& z) {
                       const double m = policy.multiplier({row.n, row.position, h});
                       // z over the whole key axis (-inf where hidden), the sink last.
                       const std::vector<double> all = with_sink(z, logit, h);
                       const auto count = static_cast<index_t>(all.size());
                       const std::vector<double> a = scaled_softmax(all.data(), count, m);
                       const index_t row_at = (b * H + h) * n_q + i;
                       r.lse[static_cast<size_t>(row_at)] = log_sum_exp(all.data(), count, m);
                       for (index_t j = 0; j < n_k; ++j)
                         r.weights[static_cast<size_t>(row_at * n_k + j)] =
                             a[static_cast<size_t>(j)];

                       double* o = &r.out[static_cast<size_t>(((b * n_q + i) * H + h) * d)];
                       for (index_t j = 0; j < n_k; ++j) {
                         if (a[static_cast<size_t>(j)] == 0.0) continue;
                         for (index_t c = 0; c < d; ++c)
                           o[c] += a[static_cast<size_t>(j)] * static_cast<double>(v(b, j, g, c));
                       }
                     });
  return r;
}

}  // namespace ssmax::reference
