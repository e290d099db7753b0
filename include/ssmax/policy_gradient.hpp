#pragma once
// How a row's multiplier gradient dL/dm becomes the gradient of a length policy's
// learnable parameters (../shared/PAPER.md section 5):
//   SSMax, m = s_h log n + b_h:   dL/ds_h += log(n) dL/dm,   dL/db_h += dL/dm,
// summed over every row of head h, with n the policy's effective length for that row
// (ssmax_policy::effective_length: the visible count, or fixed_length when set). Policies
// without learnable parameters (Softmax, Qwen, Llama 4, Mistral) have zero partials; a
// user policy states its own (length_policy.hpp: `learnable` and `partials`).
// The row backward (softmax_backward.hpp) and the attention backward both use this.

#include <algorithm>
#include <cmath>
#include <vector>

#include "error.hpp"
#include "length_policy.hpp"

namespace ssmax {

/// dm/ds_h and dm/db_h of one row's multiplier: the policy's own `partials` when it is
/// learnable, zeros when it declares `learnable = false` (length_policy.hpp; a policy that
/// declares neither does not compile here, rather than train with silent zero gradients).
template <class Policy>  // a length policy that declares `learnable` (length_policy.hpp)
multiplier_partials partials_of(const Policy& policy, const row_position& row) {
  detail::require_gradient_policy<Policy>();
  if constexpr (detail::is_learnable<Policy>::value)
    return policy.partials(row);
  else
    return {};
}

/// The gradient of one row's loss through its multiplier: dL/dm and what it gives the
/// policy's parameters of that row's head.
struct row_gradient {
  double multiplier = 0.0;  ///< dL/dm
  double s = 0.0;           ///< dL/ds_h = dm/ds_h * dL/dm (0 for policies without s)
  double b = 0.0;           ///< dL/db_h = dm/db_h * dL/dm (0 for policies without b)
};

/// row_gradient of a row with the given dL/dm.
template <class Policy>  // a length policy (length_policy.hpp)
row_gradient gradient_of(const Policy& policy, const row_position& row, double d_multiplier) {
  const multiplier_partials d = partials_of(policy, row);
  return {d_multiplier, d.s * d_multiplier, d.b * d_multiplier};
}

/// Per-head sums of dL/ds_h and dL/db_h, what an optimizer needs for per-head s and b
/// (sum the entries for a shared s or b).
struct policy_gradient {
  std::vector<double> s;  ///< dL/ds_h, one per head
  std::vector<double> b;  ///< dL/db_h, one per head

  /// Zeros for `heads` heads. Pre (checked): heads >= 0.
  explicit policy_gradient(index_t heads = 1) : s(checked_heads(heads), 0.0), b(s.size(), 0.0) {}
  /// Adds one row's contribution to head h.
  void add(index_t head, const row_gradient& g) {
    s[static_cast<size_t>(head)] += g.s;
    b[static_cast<size_t>(head)] += g.b;
  }
  /// Zeroes every entry (between optimizer steps).
  void zero() {
    std::fill(s.begin(), s.end(), 0.0);
    std::fill(b.begin(), b.end(), 0.0);
  }
  index_t heads() const { return static_cast<index_t>(s.size()); }

 private:
  static size_t checked_heads(index_t heads) {
    detail::require(heads >= 0, "policy_gradient", "heads", "must be >= 0");
    return static_cast<size_t>(heads);
  }
};

}  // namespace ssmax
