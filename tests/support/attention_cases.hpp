#pragma once
// The case lists the attention tests iterate, in one place so that a mask kind, a length
// policy or a logit extra added here is tested by every file that sweeps them:
//   mask_cases        every mask kind, its data sized from the problem's shape;
//   for_each_policy   Softmax, SSMax (scalar, per-head, negative multipliers, fixed n) and
//                     the position-dependent peers (Qwen logn, Llama 4, Mistral);
//   logit_extras      the logit's additive bias, ALiBi slopes, soft-cap and sinks, by name;
//   for_each_mask_feature_policy  the three crossed (in full, or in full on some mask
//                     kinds and once on the others, for costly sweeps);
//   random_problem    q, k, v and dout in double drawn from a seed, and the rows of a
//                     problem each mask leaves a key (for_each_visible_row).

#include <algorithm>
#include <cmath>
#include <limits>
#include <memory>
#include <random>
#include <ssmax/attention.hpp>
#include <string>
#include <vector>

namespace ssmax::testing {

/// The sizes the cases are built for: batch entries, query and key rows, query heads.
struct case_shape {
  index_t B, n_q, n_k, H;
};

/// A mask kind with the data it points to.
struct mask_case {
  std::string name;
  attention_mask mask;
  bool packed = false;  ///< the data must be [1, total, H, d]
};

/// Every mask kind on one shape: none, causal (plain, with a query offset, with top-left
/// key padding, as a batched cache), a sliding window, bidirectional local windows (one
/// of width zero, one AND-ed with causality), key padding with an all-padding batch
/// entry, packed sequences (one with no query; causal or not), boolean masks (every entry,
/// one shared by the batch, one for all), n fixed for every row and n per row. The
/// boolean masks each hide one row entirely. It owns what the masks point to, so it
/// neither copies nor moves.
class mask_cases {
 public:
  explicit mask_cases(case_shape s, unsigned seed = 7)
      : shape_(s),
        padding_{s.n_k * 3 / 5, 0},
        partial_{s.n_k, s.n_k * 2 / 5},
        cache_{s.n_k - std::max<index_t>(1, s.n_k / 30), std::max<index_t>(1, s.n_k / 8)},
        cu_q_{0, s.n_q / 3, s.n_q / 3, s.n_q},
        cu_k_{0, s.n_k / 3, s.n_k / 2, s.n_k},
        row_n_(static_cast<size_t>(s.B * s.n_q)),
        allowed_(new bool[static_cast<size_t>(s.B * s.H * s.n_q * s.n_k)]) {
    const index_t plane = s.n_q * s.n_k, entries = s.B * s.H * plane;
    std::mt19937 gen(seed);
    for (index_t e = 0; e < entries; ++e) allowed_[static_cast<size_t>(e)] = gen() % 3 != 0;
    for (index_t j = 0; j < s.n_k; ++j)  // row 2 of the first plane sees nothing
      allowed_[static_cast<size_t>(std::min<index_t>(2, s.n_q - 1) * s.n_k + j)] = false;
    for (size_t e = 0; e < row_n_.size(); ++e)  // 0: the row's own count
      row_n_[e] =
          e % 4 == 1 ? 0 : static_cast<index_t>((e * 7) % static_cast<size_t>(4 * s.n_k)) + 1;

    const index_t window = std::max<index_t>(2, s.n_k / 7);
    attention_mask causal_padded = attention_mask::causal_mask(0);
    causal_padded.key_lengths = partial_;
    attention_mask local_causal = attention_mask::causal_mask();
    local_causal.local = true, local_causal.window_left = std::max<index_t>(2, s.n_k / 5);
    attention_mask per_row = attention_mask::causal_mask();
    per_row.row_n = row_n_.data();
    list_ = {
        {"none", attention_mask::none()},
        {"causal", attention_mask::causal_mask()},
        {"causal-offset", attention_mask::causal_mask(s.n_k / 5)},
        {"causal-padding", causal_padded},
        {"cache", attention_mask::cache(cache_)},
        {"window", attention_mask::sliding_window(window)},
        {"local", attention_mask::local_window(std::max<index_t>(1, s.n_k / 10), window)},
        {"local-zero-width", attention_mask::local_window(0, 0, 0)},
        {"local-causal", local_causal},
        {"padding", attention_mask::key_padding(padding_)},
        {"varlen", attention_mask::varlen(cu_q_, cu_k_, 3), true},
        {"varlen-causal", attention_mask::varlen(cu_q_, cu_k_, 3, true), true},
        {"boolean", attention_mask::boolean(allowed_.get(), s.n_k, s.H * plane, plane)},
        {"boolean-batch-shared", attention_mask::boolean(allowed_.get(), s.n_k, 0, plane)},
        {"boolean-all-shared", attention_mask::boolean(allowed_.get(), s.n_k)},
        {"n-override", attention_mask::causal_mask().with_n(4 * s.n_k)},
        {"row-n", per_row},
    };
  }
  mask_cases(const mask_cases&) = delete;
  mask_cases& operator=(const mask_cases&) = delete;

  const case_shape& shape() const { return shape_; }
  std::vector<mask_case>::const_iterator begin() const { return list_.begin(); }
  std::vector<mask_case>::const_iterator end() const { return list_.end(); }
  size_t size() const { return list_.size(); }
  /// The batch entries a case's tensors hold: 1 for packed sequences.
  index_t batch_of(const mask_case& mc) const { return mc.packed ? 1 : shape_.B; }

 private:
  case_shape shape_;
  index_t padding_[2], partial_[2], cache_[2], cu_q_[4], cu_k_[4];
  std::vector<index_t> row_n_;
  std::unique_ptr<bool[]> allowed_;
  std::vector<mask_case> list_;
};

/// Which policies for_each_policy calls (or-ed together).
enum policy_kind : unsigned {
  softmax_kind = 1u << 0,         ///< softmax_policy
  ssmax_kind = 1u << 1,           ///< SSMax with one s for every head
  ssmax_per_head_kind = 1u << 2,  ///< per-head s and b
  /// As trained, m < 0 on some rows: per head, m < 0 on short rows (b < 0, s > 0), on long
  /// rows (s < 0, b > 0), on none, on every row (b = -2).
  ssmax_negative_kind = 1u << 3,
  ssmax_fixed_n_kind = 1u << 4,  ///< per-head s and b with n fixed
  qwen_kind = 1u << 5,
  llama4_kind = 1u << 6,
  mistral_kind = 1u << 7,
  /// Softmax as ssmax_policy(0, 1) (m = 1 on every row): every policy an ssmax_policy,
  /// for tests that instantiate the kernels for that one policy type.
  softmax_as_ssmax = 1u << 8,
};
constexpr unsigned every_policy = softmax_kind | ssmax_kind | ssmax_per_head_kind |
                                  ssmax_negative_kind | ssmax_fixed_n_kind | qwen_kind |
                                  llama4_kind | mistral_kind;
/// Softmax and the SSMax family: the policies with learnable parameters, and Softmax.
constexpr unsigned softmax_and_ssmax =
    softmax_kind | ssmax_kind | ssmax_per_head_kind | ssmax_negative_kind | ssmax_fixed_n_kind;

/// The numbers the policies take for one test's sizes.
struct policy_sizes {
  index_t heads;
  index_t step;     ///< Qwen's train length, Llama 4's floor scale, Mistral's step: small,
                    ///< so that the multiplier changes within the tests' short rows
  index_t fixed_n;  ///< the n of ssmax_fixed_n_kind
};

/// Per-head s and b of SSMax, which the per-head policies view (not copy): a test may move
/// an entry and call again (finite differences).
struct ssmax_parameters {
  std::vector<double> s, b;
};

namespace detail {
inline std::vector<double> per_head_values(std::initializer_list<double> table, index_t heads) {
  std::vector<double> v(static_cast<size_t>(heads));
  for (size_t h = 0; h < v.size(); ++h) v[h] = table.begin()[h % table.size()];
  return v;
}
}  // namespace detail

/// Calls f(name, policy, parameters) for each policy in Kinds; parameters is the
/// ssmax_parameters the policy views, null for the policies without per-head s and b.
template <unsigned Kinds = every_policy, class F>
void for_each_policy_with_parameters(const policy_sizes& sizes, F&& f) {
  const index_t H = sizes.heads;
  ssmax_parameters initial{detail::per_head_values({0.43, 0.7, 0.5, 0.6}, H),
                           detail::per_head_values({0.0, 0.3, 0.1, 0.2}, H)};
  ssmax_parameters trained{detail::per_head_values({0.43, -0.3, 0.3, 0.1}, H),
                           detail::per_head_values({-1.0, 0.4, 0.5, -2.0}, H)};
  auto viewing = [&](ssmax_parameters& p, index_t fixed) {
    return ssmax_policy(per_head::view(p.s.data(), H), per_head::view(p.b.data(), H), fixed);
  };
  if constexpr ((Kinds & softmax_kind) != 0) {
    if constexpr ((Kinds & softmax_as_ssmax) != 0)
      f("softmax", ssmax_policy(0.0, 1.0), static_cast<ssmax_parameters*>(nullptr));
    else
      f("softmax", softmax_policy{}, static_cast<ssmax_parameters*>(nullptr));
  }
  if constexpr ((Kinds & ssmax_kind) != 0)
    f("ssmax", ssmax_policy(0.43), static_cast<ssmax_parameters*>(nullptr));
  if constexpr ((Kinds & ssmax_per_head_kind) != 0)
    f("ssmax-per-head", viewing(initial, 0), &initial);
  if constexpr ((Kinds & ssmax_negative_kind) != 0)
    f("ssmax-trained-negative", viewing(trained, 0), &trained);
  if constexpr ((Kinds & ssmax_fixed_n_kind) != 0)
    f("ssmax-fixed-n", viewing(initial, sizes.fixed_n), &initial);
  if constexpr ((Kinds & qwen_kind) != 0) {
    qwen_logn_policy qwen;
    qwen.train_length = sizes.step;
    f("qwen", qwen, static_cast<ssmax_parameters*>(nullptr));
  }
  if constexpr ((Kinds & llama4_kind) != 0)
    f("llama4", llama4_temperature_policy{sizes.step, 0.5},
      static_cast<ssmax_parameters*>(nullptr));
  if constexpr ((Kinds & mistral_kind) != 0)
    f("mistral", mistral_policy{sizes.step, 0.5}, static_cast<ssmax_parameters*>(nullptr));
}

/// Calls f(name, policy) for each policy in Kinds.
template <unsigned Kinds = every_policy, class F>
void for_each_policy(const policy_sizes& sizes, F&& f) {
  for_each_policy_with_parameters<Kinds>(
      sizes, [&](const char* name, const auto& policy, ssmax_parameters*) { f(name, policy); });
}

/// Calls f(mask case, feature, policy name, policy, parameters) (for_each_policy_with_
/// parameters) for every mask kind x feature x policy in Kinds; where `crossed` names mask
/// kinds, the others run one combination each, taking the next one in turn: every kind
/// is run, the costly product only for the named ones.
template <unsigned Kinds = every_policy, class F>
void for_each_mask_feature_policy(const mask_cases& masks, const std::vector<std::string>& features,
                                  const policy_sizes& sizes,
                                  const std::vector<std::string>& crossed, F&& f) {
  int policies = 0;
  for_each_policy_with_parameters<Kinds>(
      sizes, [&](const char*, const auto&, ssmax_parameters*) { ++policies; });
  const int combinations = static_cast<int>(features.size()) * policies;
  int others = 0;
  for (const mask_case& mc : masks) {
    const bool every =
        crossed.empty() || std::find(crossed.begin(), crossed.end(), mc.name) != crossed.end();
    const int chosen = every ? -1 : others++ % combinations;
    int combination = 0;
    for (const std::string& feature : features)
      for_each_policy_with_parameters<Kinds>(
          sizes, [&](const char* name, const auto& policy, ssmax_parameters* parameters) {
            if (every || combination == chosen) f(mc, feature, name, policy, parameters);
            ++combination;
          });
  }
}

/// Options with this policy and mask, the rest defaults.
template <class Policy>
attention_options<Policy> options_for(const Policy& policy, const attention_mask& mask) {
  attention_options<Policy> o;
  o.policy = policy;
  o.mask = mask;
  return o;
}

/// The logit's extras for one shape: a dense bias in [-2, 2] with some -inf entries (one
/// row hidden entirely), ALiBi slopes, per-head sinks and a soft-cap.
struct logit_extras {
  /// Every feature name; "all" sets every feature, a name joined by '+' several.
  static std::vector<std::string> features() {
    return {"none",  "bias",       "bias-shared",   "alibi", "softcap",
            "sinks", "bias+alibi", "softcap+sinks", "all"};
  }
  case_shape shape;
  std::vector<float> bias, slopes, sinks;
  double softcap;

  /// sinks: per-head values, repeated over the heads (a -inf sink is no sink).
  logit_extras(case_shape s, unsigned seed, std::vector<float> sink_values, double cap = 1.5)
      : shape(s),
        bias(static_cast<size_t>(s.B * s.H * s.n_q * s.n_k)),
        slopes(alibi_slopes(s.H)),
        sinks(static_cast<size_t>(s.H)),
        softcap(cap) {
    std::mt19937 gen(seed);
    std::uniform_real_distribution<float> u(-2.0f, 2.0f);
    for (auto& x : bias) x = gen() % 5 == 0 ? -std::numeric_limits<float>::infinity() : u(gen);
    for (index_t j = 0; j < s.n_k; ++j)  // row 2 of the first plane sees nothing
      bias[static_cast<size_t>(std::min<index_t>(2, s.n_q - 1) * s.n_k + j)] =
          -std::numeric_limits<float>::infinity();
    for (size_t h = 0; h < sinks.size(); ++h) sinks[h] = sink_values[h % sink_values.size()];
  }

  /// The features named in `feature` for `batch` entries.
  logit_options options(const std::string& feature, index_t batch) const {
    auto has = [&](const char* name) {
      return feature == "all" || feature.find(name) != std::string::npos;
    };
    logit_options o;
    const case_shape& s = shape;
    if (feature == "bias-shared")
      o.bias = logit_bias::shared(bias.data(), batch, s.H, s.n_q, s.n_k);
    else if (has("bias"))
      o.bias = logit_bias::dense(bias.data(), batch, s.H, s.n_q, s.n_k);
    if (has("alibi")) o.alibi_slopes = slopes.data(), o.alibi_heads = s.H;
    if (has("softcap")) o.softcap = softcap;
    if (has("sinks")) o.sinks = sinks.data(), o.sink_heads = s.H;
    return o;
  }
};

/// The inputs of one problem in double, [B, S, H, d] contiguous, drawn from N(0, 1) in the
/// order q, k, v, dout.
struct random_problem {
  index_t B, n_q, n_k, H, H_kv, d;
  std::vector<double> q, k, v, dout;

  random_problem(index_t batch, index_t nq, index_t nk, index_t heads, index_t kv_heads,
                 index_t dim, unsigned seed)
      : B(batch), n_q(nq), n_k(nk), H(heads), H_kv(kv_heads), d(dim) {
    std::mt19937 rng(seed);
    std::normal_distribution<double> dist(0.0, 1.0);
    auto fill = [&](std::vector<double>& x, index_t count) {
      x.resize(static_cast<size_t>(count));
      for (auto& e : x) e = dist(rng);
    };
    fill(q, B * n_q * H * d);
    fill(k, B * n_k * H_kv * d);
    fill(v, B * n_k * H_kv * d);
    fill(dout, B * n_q * H * d);
  }
  double scale() const { return 1.0 / std::sqrt(static_cast<double>(d)); }
  template <class T>
  tensor_view<const T> qv(const std::vector<T>& x) const {
    return bshd_view(x.data(), B, n_q, H, d);
  }
  template <class T>
  tensor_view<const T> kv(const std::vector<T>& x) const {
    return bshd_view(x.data(), B, n_k, H_kv, d);
  }
};

/// Calls f(b, h, i, row) for each query row i of head h that sees a key, b its tensor
/// batch entry and row its keys (mask.hpp's sequence_of and visible_keys).
template <class F>
void for_each_visible_row(const attention_mask& mask, const random_problem& x, F&& f) {
  for (index_t s = 0; s < sequence_count(mask, x.B); ++s) {
    const sequence_span seq = sequence_of(mask, s, x.n_q, x.n_k);
    for (index_t h = 0; h < x.H; ++h)
      for (index_t i = seq.q_begin; i < seq.q_end; ++i) {
        const row_keys row = visible_keys(mask, seq, h, i);
        if (row.visible > 0) f(seq.tensor_batch, h, i, row);
      }
  }
}

}  // namespace ssmax::testing
