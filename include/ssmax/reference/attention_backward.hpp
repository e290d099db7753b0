#pragma once
// Reference attention backward in double precision: the oracle both backward kernels are
// compared with, itself checked against central finite differences of reference::
// attention in tests/test_attention_backward.cpp. Written for reading, not for speed.
//
// Shapes (tensor_view indices (b, s, h, c)), as reference/attention.hpp:
//   q, dq  [B, n_q, H, d]     k, v, dk, dv  [B, n_k, H_kv, d]    g(h) = h / (H / H_kv)
//   dout   [B, n_q, H, d]     d_multiplier  [B, H, n_q]          ds, db  [H]
// For each sequence, head h and query row i that sees at least one key
// (../shared/PAPER.md section 5, FlashAttention's backward):
//   z_j  = scale (q_i . k_j) (visible j),   m = policy.multiplier({n, p, h}),  a = softmax(m z)
//   u_j  = dout_i . v_j                          (dL/da_j)
//   D    = sum_j a_j u_j                         (= dout_i . out_i)
//   dy_j = a_j (u_j - D)                         (dL/d(m z_j))
//   dq_i     += m scale sum_j dy_j k_j
//   dk_j     += m scale dy_j q_i                 (summed over the heads sharing g(h))
//   dv_j     += a_j dout_i
//   dL/dm_i   = sum_j z_j dy_j = sum_j a_j (z_j - zbar)(u_j - D)
//   ds_h += log(n) dL/dm_i,  db_h += dL/dm_i    (policy_gradient.hpp: partials_of)
// A row that sees no key contributes nothing.
// With the logit's extras (logit.hpp; z_j = softcap(x_j) + bias_j, x_j = scale q_i . k_j):
//   dq_i, dk_j take dL/dx_j = m dy_j softcap'(x_j) (softcap'(x) = 1 - tanh^2(x / c)) in
//   place of m dy_j; the bias has no gradient; the sink is one more logit with u = 0:
//   dy_sink = a_sink (0 - D), dL/dm_i gains sink_h dy_sink, d_sink_h += m dy_sink.

#include <cmath>
#include <limits>
#include <vector>

#include "../length_policy.hpp"
#include "../mask.hpp"
#include "../policy_gradient.hpp"
#include "../tensor_view.hpp"
#include "attention.hpp"
#include "softmax.hpp"
#include "softmax_backward.hpp"

namespace ssmax::reference {

/// The reference backward's outputs, flat and in double.
struct attention_backward_result {
  std::vector<double> dq;            ///< [B, n_q, H, d]
  std::vector<double> dk;            ///< [B, n_k, H_kv, d]
  std::vector<double> dv;            ///< [B, n_k, H_kv, d]
  std::vector<double> d_multiplier;  ///< [B, H, n_q] dL/dm per row (0 for empty rows)
  policy_gradient policy{1};         ///< ds_h, db_h per head (zeros for other policies)
  std::vector<double> d_sinks;       ///< [H] dL/dsink_h (zeros without sinks)
};

/// Reference attention backward. Pre: arguments valid as ssmax::attention_backward
/// requires; dout has q's shape.
template <class T,       // element type of the inputs (float or double), widened exactly
          class Policy>  // a length policy (length_policy.hpp)
attention_backward_result attention_backward(const tensor_view<const T>& q,
                                             const tensor_view<const T>& k,
                                             const tensor_view<const T>& v,
                                             const tensor_view<const T>& dout, const Policy& policy,
                                             const attention_mask& mask, double scale,
                                             const logit_options& logit = {}) {
  const index_t B = q.batch, n_q = q.seq, H = q.heads, d = q.dim, n_k = k.seq, H_kv = k.heads;
  attention_backward_result r;
  r.dq.assign(static_cast<size_t>(B * n_q * H * d), 0.0);
  r.dk.assign(static_cast<size_t>(B * n_k * H_kv * d), 0.0);
  r.dv.assign(static_cast<size_t>(B * n_k * H_kv * d), 0.0);
  r.d_multiplier.assign(static_cast<size_t>(B * H * n_q), 0.0);
  r.d_sinks.assign(static_cast<size_t>(H), 0.0);
  r.policy = policy_gradient(H);
  auto at_q = [&](index_t b, index_t i, index_t h) { return ((b * n_q + i) * H + h) * d; };
  auto at_k = [&](index_t b, index_t j, index_t g) { return ((b * n_k + j) * H_kv + g) * d; };

  std::vector<double> x(static_cast<size_t>(n_k)), u(static_cast<size_t>(n_k));
  for_each_logit_row(
      q, k, mask, logit, scale,
      [&](index_t b, index_t h, index_t g, index_t i, const row_keys& row,
          const std::vector<double>& z) {
        const row_position where{row.n, row.position, h};
        const double m = policy.multiplier(where);

        // Logits z (-inf where hidden) with the sink last, raw scores x = scale q . k, and
        // upstream u_j = dout_i . v_j (0 where hidden, and for the sink).
        const std::vector<double> all = with_sink(z, logit, h);
        const auto count = static_cast<index_t>(all.size());
        row_products(q, k, b, i, h, g, row, scale, 0.0, x);
        row_products(dout, v, b, i, h, g, row, 1.0, 0.0, u);
        std::vector<double> u_all = u;
        u_all.resize(all.size(), 0.0);
        const std::vector<double> a = scaled_softmax(all.data(), count, m);
        // dz_j = m dy_j and dL/dm, by the row reference (reference/softmax_backward.hpp).
        const row_backward_result row_grad =
            softmax_backward_from_weights(a.data(), all.data(), u_all.data(), count, m);

        for (index_t j = 0; j < n_k; ++j) {
          const double aj = a[static_cast<size_t>(j)];
          if (aj == 0.0) continue;
          double dx = row_grad.dz[static_cast<size_t>(j)];
          if (logit.softcap > 0.0) {
            const double t = std::tanh(x[static_cast<size_t>(j)] / logit.softcap);
            dx *= 1.0 - t * t;
          }
          for (index_t c = 0; c < d; ++c) {
            r.dq[at_q(b, i, h) + c] += scale * dx * static_cast<double>(k(b, j, g, c));
            r.dk[at_k(b, j, g) + c] += scale * dx * static_cast<double>(q(b, i, h, c));
            r.dv[at_k(b, j, g) + c] += aj * static_cast<double>(dout(b, i, h, c));
          }
        }
        if (count > n_k) r.d_sinks[static_cast<size_t>(h)] += row_grad.dz.back();
        r.d_multiplier[static_cast<size_t>((b * H + h) * n_q + i)] = row_grad.d_multiplier;
        r.policy.add(h, gradient_of(policy, where, row_grad.d_multiplier));
      });
  return r;
}

}  // namespace ssmax::reference
