#pragma once
// Length policies: how the number of visible keys n and the absolute position p of a
// query row become the multiplier m applied to that row's logits, softmax(m * z).
//
// This header is the one place that answers "what is m for this row?". Every policy is a
// small value type with
//   double multiplier(const row_position& row) const;  // m, finite (any sign)
//   index_t heads() const;   // 0 when its parameters serve any head count, else that count
//   void validate(const char* function) const;  // throws argument_error on bad parameters
// and is used as a template parameter by the row kernels and the attention operator, which
// check these three members where they are entered (a static_assert names a missing one).
// Multipliers are computed in double once per row, never per element.
//
// Gradients (attention_backward, policy_softmax_backward): a policy says how its multiplier
// depends on its trained parameters, or the backward pass does not compile:
//   static constexpr bool learnable = false;  // no trained parameters: zero partials
// or
//   static constexpr bool learnable = true;
//   multiplier_partials partials(const row_position& row) const;  // dm/ds_h, dm/db_h
// where s_h and b_h are the policy's (up to) two per-head parameters; the backward adds
// partials * dL/dm to policy_gradient::s[h] and ::b[h] (policy_gradient.hpp). Every
// built-in policy declares its own; ssmax_policy is the learnable one.
//
// Formulas (../shared/PAPER.md sections 1 and 3), natural logarithms throughout:
//   softmax_policy            m = 1
//   ssmax_policy              m = s_h log n + b_h      (n = fixed_length when set)
//   qwen_logn_policy          m = max(1, log(p + 1) / log(L_train))
//   llama4_temperature_policy m = attn_scale * log(1 + floor((p + 1) / floor_scale)) + 1
//   mistral_policy            m = 1 + beta * log(1 + floor(p / L_orig))

#include <algorithm>
#include <cmath>
#include <limits>
#include <memory>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "error.hpp"

namespace ssmax {

/// Where a query row stands: what its length policy may depend on.
struct row_position {
  index_t visible = 1;   ///< n: keys this row can see after masking (>= 1 when asked)
  index_t position = 0;  ///< p: absolute 0-based position of the query in its sequence
  index_t head = 0;      ///< h: query head, selects per-head parameters
};

/// dm/ds_h and dm/db_h of one row's multiplier (a learnable policy's `partials`).
struct multiplier_partials {
  double s = 0.0;  ///< dm/ds_h
  double b = 0.0;  ///< dm/db_h
};

/// Plain softmax: m = 1 for every row.
struct softmax_policy {
  static constexpr bool learnable = false;
  double multiplier(const row_position&) const { return 1.0; }
  index_t heads() const { return 0; }
  void validate(const char* /*function*/) const {}
  static constexpr const char* name() { return "softmax"; }
};

/// A policy parameter: one value shared by every head, or one value per head.
///
/// Per-head values are owned by default: the constructors copy them into a small shared
/// array, so a policy built from a vector that is destroyed before the call (the
/// "helper returns options" pattern) stays valid. A training loop that updates s in place
/// between steps takes a view instead, per_head::view(values, count), and keeps the array
/// alive while the policy is used. Copies share the owned array (no allocation per copy).
class per_head {
 public:
  /// The same value for every head.
  per_head(double all) : all_(all) {}  // NOLINT(google-explicit-constructor): 0.43 reads well
  /// One value per head, copied from values[0, count). Pre (checked by validate): count >= 1.
  per_head(const double* values, index_t count) { own(values, count); }
  /// One value per head, copied from v.
  per_head(const std::vector<double>& v)  // NOLINT(google-explicit-constructor)
      : per_head(v.data(), static_cast<index_t>(v.size())) {}

  /// One value per head, borrowed from values[0, count) (not copied): the caller keeps the
  /// array alive while the policy is used, and may change it between calls (training).
  static per_head view(const double* values, index_t count) {
    per_head p(0.0);
    p.values_ = values;
    p.count_ = count;
    p.shared_ = false;
    return p;
  }

  /// The value for head h (h < count() unless shared).
  double operator[](index_t h) const { return shared_ ? all_ : values_[h]; }
  /// Number of per-head values; 0 when one value is shared by all heads.
  index_t count() const { return shared_ ? 0 : count_; }
  bool shared() const { return shared_; }
  /// True when the per-head values are borrowed (per_head::view), not owned.
  bool borrowed() const { return !shared_ && owned_ == nullptr; }

  /// Throws argument_error naming `what` unless every value is finite (any sign: trained
  /// parameters, b in particular, are often negative).
  void validate(const char* function, const char* what) const {
    detail::require(shared() || (values_ != nullptr && count_ >= 1), function, what,
                    "must hold one value or a non-empty array of per-head values");
    for (index_t h = 0; h < (shared() ? 1 : count_); ++h)
      detail::require(std::isfinite((*this)[h]), function, what, "must be finite");
  }

 private:
  void own(const double* values, index_t count) {
    shared_ = false;
    count_ = count;
    if (values == nullptr || count < 1) return;  // validate() reports it
    std::shared_ptr<double[]> copy(new double[static_cast<std::size_t>(count)]);
    std::copy(values, values + count, copy.get());
    owned_ = std::move(copy);
    values_ = owned_.get();
  }

  double all_ = 0.0;
  const double* values_ = nullptr;
  index_t count_ = 0;
  bool shared_ = true;
  std::shared_ptr<const double[]> owned_;
};

/// Scalable-Softmax: m = s_h log(n) + b_h, with n the row's visible keys, or the
/// user's fixed_length when that is set (for example the training length).
///
/// s and b are each one value shared by every head or one value per head, any finite
/// values: s and b are trained, and a learned b is often negative, which makes m negative
/// on short rows (m = b at n = 1). A negative m rewards the least similar key; masked keys
/// stay masked whatever the sign of m (the kernels hide them after scaling). fixed_length
/// is 0 (use n) or >= 1.
struct ssmax_policy {
  static constexpr bool learnable = true;  ///< s and b are trained (partials below)
  per_head s = 0.43;                       ///< scale; the paper's Figure 1 uses 0.43
  per_head b = 0.0;                        ///< bias; 0 is the paper's default variant
  index_t fixed_length = 0;  ///< when >= 1, use this n for every row instead of the visible count

  ssmax_policy() = default;
  ssmax_policy(per_head scale, per_head bias = 0.0, index_t fixed = 0)  // NOLINT
      : s(scale), b(bias), fixed_length(fixed) {}

  /// The n that the multiplier uses for a row that sees `visible` keys.
  index_t effective_length(index_t visible) const {
    return fixed_length > 0 ? fixed_length : visible;
  }

  double multiplier(const row_position& row) const {
    const auto n = static_cast<double>(effective_length(row.visible));
    return s[row.head] * std::log(n) + b[row.head];
  }
  /// dm/ds_h = log(n), dm/db_h = 1, with n = effective_length(row.visible).
  multiplier_partials partials(const row_position& row) const {
    return {std::log(static_cast<double>(effective_length(row.visible))), 1.0};
  }

  index_t heads() const { return std::max(s.count(), b.count()); }

  void validate(const char* function) const {
    s.validate(function, "policy.s");
    b.validate(function, "policy.b");
    detail::require(s.shared() || b.shared() || s.count() == b.count(), function, "policy.b",
                    "must hold one value or as many as policy.s");
    detail::require(fixed_length >= 0, function, "policy.fixed_length",
                    "must be 0 (use the visible count) or >= 1");
  }
  static constexpr const char* name() { return "ssmax"; }
};

/// The s that makes SSMax equal Softmax at length n_train (m = s log n_train = 1), the
/// natural choice when replacing Softmax in a trained model. Requires n_train >= 2.
inline double ssmax_scale_matching_softmax(index_t n_train) {
  detail::require(n_train >= 2, "ssmax_scale_matching_softmax", "n_train",
                  "must be >= 2 (log 1 = 0 has no inverse)");
  return 1.0 / std::log(static_cast<double>(n_train));
}

/// Qwen's log-n attention scaling (inference only): m = max(1, log(p + 1) / log(L_train)).
/// train_length >= 2.
struct qwen_logn_policy {
  static constexpr bool learnable = false;
  index_t train_length = 8192;  ///< L_train: the context length the model was trained at

  double multiplier(const row_position& row) const {
    const double m = std::log(static_cast<double>(row.position) + 1.0) /
                     std::log(static_cast<double>(train_length));
    return m > 1.0 ? m : 1.0;
  }
  index_t heads() const { return 0; }
  void validate(const char* function) const {
    detail::require(train_length >= 2, function, "policy.train_length", "must be >= 2");
  }
  static constexpr const char* name() { return "qwen-logn"; }
};

/// Llama 4 attention temperature tuning:
/// m = attn_scale * log(1 + floor((p + 1) / floor_scale)) + 1.
/// floor_scale >= 1, attn_scale finite and >= 0.
struct llama4_temperature_policy {
  static constexpr bool learnable = false;
  index_t floor_scale = 8192;  ///< positions per temperature step
  double attn_scale = 0.1;     ///< growth of m per log step

  double multiplier(const row_position& row) const {
    const double steps =
        std::floor((static_cast<double>(row.position) + 1.0) / static_cast<double>(floor_scale));
    return attn_scale * std::log1p(steps) + 1.0;
  }
  index_t heads() const { return 0; }
  void validate(const char* function) const {
    detail::require(floor_scale >= 1, function, "policy.floor_scale", "must be >= 1");
    detail::require(std::isfinite(attn_scale) && attn_scale >= 0.0, function, "policy.attn_scale",
                    "must be finite and >= 0");
  }
  static constexpr const char* name() { return "llama4-temperature"; }
};

/// Mistral (Ministral 3) length scaling: m = 1 + beta * log(1 + floor(p / L_orig)).
/// original_length >= 1, beta finite and >= 0.
struct mistral_policy {
  static constexpr bool learnable = false;
  index_t original_length = 16384;  ///< L_orig: the pre-extension context length
  double beta = 0.1;                ///< growth of m per log step

  double multiplier(const row_position& row) const {
    const double steps =
        std::floor(static_cast<double>(row.position) / static_cast<double>(original_length));
    return 1.0 + beta * std::log1p(steps);
  }
  index_t heads() const { return 0; }
  void validate(const char* function) const {
    detail::require(original_length >= 1, function, "policy.original_length", "must be >= 1");
    detail::require(std::isfinite(beta) && beta >= 0.0, function, "policy.beta",
                    "must be finite and >= 0");
  }
  static constexpr const char* name() { return "mistral"; }
};

namespace detail {

template <class P, class = void>
struct has_multiplier : std::false_type {};
template <class P>
struct has_multiplier<
    P, std::enable_if_t<std::is_convertible<decltype(std::declval<const P&>().multiplier(
                                                std::declval<const row_position&>())),
                                            double>::value>> : std::true_type {};
template <class P, class = void>
struct has_heads : std::false_type {};
template <class P>
struct has_heads<P, std::enable_if_t<std::is_convertible<decltype(std::declval<const P&>().heads()),
                                                         index_t>::value>> : std::true_type {};
template <class P, class = void>
struct has_validate : std::false_type {};
template <class P>
struct has_validate<P, decltype(std::declval<const P&>().validate(std::declval<const char*>()))>
    : std::true_type {};
template <class P, class = void>
struct declares_learnable : std::false_type {};
template <class P>
struct declares_learnable<P,
                          std::enable_if_t<std::is_same<decltype(P::learnable), const bool>::value>>
    : std::true_type {};
template <class P, bool = declares_learnable<P>::value>
struct is_learnable : std::false_type {};
template <class P>
struct is_learnable<P, true> : std::integral_constant<bool, P::learnable> {};
template <class P, class = void>
struct has_partials : std::false_type {};
template <class P>
struct has_partials<P, std::enable_if_t<std::is_same<decltype(std::declval<const P&>().partials(
                                                         std::declval<const row_position&>())),
                                                     multiplier_partials>::value>>
    : std::true_type {};

/// Checks at compile time that Policy has the members of a length policy (the top of this
/// header), naming the missing one. Every operator that takes a Policy calls it.
template <class Policy>  // the type the caller gave as a length policy
constexpr bool require_length_policy() {
  static_assert(has_multiplier<Policy>::value,
                "ssmax: a length policy needs `double multiplier(const ssmax::row_position&) "
                "const` (length_policy.hpp)");
  static_assert(has_heads<Policy>::value,
                "ssmax: a length policy needs `ssmax::index_t heads() const` (0: serves any "
                "head count; length_policy.hpp)");
  static_assert(has_validate<Policy>::value,
                "ssmax: a length policy needs `void validate(const char* function) const` "
                "(length_policy.hpp)");
  return has_multiplier<Policy>::value && has_heads<Policy>::value && has_validate<Policy>::value;
}

/// Checks at compile time that a backward pass can give Policy's parameters their gradient:
/// the policy declares `learnable`, and a learnable one provides `partials`.
template <class Policy>  // a length policy
constexpr bool require_gradient_policy() {
  static_assert(declares_learnable<Policy>::value,
                "ssmax: a length policy used in a backward pass must declare `static constexpr "
                "bool learnable` (false: no trained parameters; true: and provide "
                "`multiplier_partials partials(const row_position&) const`; length_policy.hpp)");
  constexpr bool learnable = is_learnable<Policy>::value;
  static_assert(!learnable || has_partials<Policy>::value,
                "ssmax: a learnable length policy needs `ssmax::multiplier_partials "
                "partials(const ssmax::row_position&) const` (dm/ds_h, dm/db_h; "
                "length_policy.hpp)");
  return declares_learnable<Policy>::value && (!learnable || has_partials<Policy>::value);
}

/// True when a row's multiplier m is finite (any sign) and m * scale is finite in T (the
/// kernels scale the logits by it in T).
template <class T>  // float or double: the element type the multiplier must fit
inline bool multiplier_fits(double m, double scale) {
  const double largest = static_cast<double>(std::numeric_limits<T>::max());
  const double size = std::abs(m);
  return size <= largest && size * scale <= largest;
}

/// Throws argument_error naming 'policy' unless multiplier_fits<T>(m, scale): the one check
/// of the row API (policy_softmax, scale 1) and of the attention operator (every row, its
/// logit scale); the message names the row.
template <class T>  // float or double: the element type the multiplier must fit
inline void require_multiplier_fits(const char* function, double m, double scale,
                                    const row_position& row) {
  require_lazy(multiplier_fits<T>(m, scale), function, "policy", [&] {
    return "must give every row a finite multiplier m with m * scale finite in T, but gives m = " +
           real_to_string(m) + " (scale " + real_to_string(scale) +
           ") at n = " + std::to_string(row.visible) + ", position " +
           std::to_string(row.position) + ", head " + std::to_string(row.head);
  });
}

/// Validates a policy for use with `heads` query heads: its own parameters, and that its
/// per-head parameters (if any) number exactly `heads`.
template <class Policy>  // a length policy (see the top of this header)
inline void check_policy(const Policy& policy, index_t heads, const char* function) {
  if constexpr (has_validate<Policy>::value) policy.validate(function);  // else asserted
  const index_t described = policy.heads();
  require_lazy(described == 0 || described == heads, function, "policy", [&] {
    return "has parameters for " + std::to_string(described) + " heads, expected " +
           std::to_string(heads);
  });
}

}  // namespace detail
}  // namespace ssmax
