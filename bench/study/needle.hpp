#pragma once
// Study table 2: attention on a needle, through the multi-head operator (attention.hpp,
// materialised path, which returns the weights).
//
// Setup, per head h of H (each head an independent trial):
//   queries  n_q rows at the end of the context (decode-style), causal mask, so the row
//            at position p sees n = p + 1 keys; the rows of a head are orthogonal and of
//            norm sqrt(d);
//   haystack keys with N(0, 1) entries, so every haystack logit q.k / sqrt(d) is N(0, 1);
//   needle   one key at depth `depth` of the context (position round(depth (n_k - n_q)),
//            which every query row sees), k = (margin / sqrt(d)) sum_i q_i, so that its
//            logit is exactly `margin` for every query row of the head.
// Measured per row (ssmax/analysis.hpp) and averaged over the H x n_q rows: the weight on
// the needle, the largest weight and the entropy of the row.
//
// Expected (the paper's attention-score analysis): under Softmax the needle's weight is
// about e^margin / (e^margin + n e^(1/2)), falling like 1/n, and the entropy grows like
// log n; SSMax with a large enough s keeps the needle's weight high at every n.

#include <algorithm>
#include <cmath>
#include <random>
#include <ssmax/analysis.hpp>
#include <ssmax/attention.hpp>
#include <vector>

namespace ssmax::study {

/// Sizes and seed of a needle experiment.
struct needle_setup {
  index_t dim = 64;     ///< d: head dimension
  index_t heads = 4;    ///< H: independent trials, one per head
  index_t queries = 4;  ///< n_q: query rows per head, at the end of the context
  double margin = 5.0;  ///< the needle's logit; haystack logits are N(0, 1)
  unsigned seed = 2025;
};

/// One measurement: averages over the H x n_q query rows.
struct needle_point {
  index_t keys = 0;           ///< n_k: context length (the last row sees all of it)
  double depth = 0;           ///< needle position / (n_k - n_q)
  index_t needle = 0;         ///< needle position
  double weight = 0;          ///< mean weight on the needle
  double weight_min = 0;      ///< smallest weight on the needle over the rows
  double weight_max = 0;      ///< largest weight on the needle over the rows
  double largest = 0;         ///< mean largest weight of a row
  double entropy = 0;         ///< mean entropy of a row, nats
  double effective_keys = 0;  ///< mean exp(entropy)
  double needle_is_top = 0;   ///< fraction of rows whose largest weight is the needle
};

/// The queries and a haystack of up to max_keys keys for a needle experiment, in float.
/// measure() plants the needle, runs the operator on the first n_k keys and removes it.
class needle_haystack {
 public:
  /// Draws the queries and max_keys haystack keys. Pre (checked): dim >= 1, heads >= 1,
  /// 1 <= queries <= dim (orthogonal rows), max_keys >= queries, margin finite.
  needle_haystack(const needle_setup& setup, index_t max_keys)
      : setup_(setup), max_keys_(max_keys) {
    constexpr const char* fn = "needle_haystack";
    ssmax::detail::require(setup.dim >= 1, fn, "setup.dim", "must be >= 1");
    ssmax::detail::require(setup.heads >= 1, fn, "setup.heads", "must be >= 1");
    ssmax::detail::require(setup.queries >= 1 && setup.queries <= setup.dim, fn, "setup.queries",
                           "must be in [1, dim] (the rows are made orthogonal)");
    ssmax::detail::require(std::isfinite(setup.margin), fn, "setup.margin", "must be finite");
    ssmax::detail::require(max_keys >= setup.queries, fn, "max_keys", "must be >= setup.queries");
    const index_t d = setup.dim, H = setup.heads, n_q = setup.queries;
    std::mt19937_64 rng(setup.seed);
    std::normal_distribution<float> normal(0.0f, 1.0f);

    // Queries [1, n_q, H, d]: Gram-Schmidt per head (in double), then norm sqrt(d).
    q_.assign(static_cast<size_t>(n_q * H * d), 0.0f);
    needle_.assign(static_cast<size_t>(H * d), 0.0f);
    for (index_t h = 0; h < H; ++h) {
      std::vector<std::vector<double>> rows;
      for (index_t i = 0; i < n_q; ++i) {
        std::vector<double> r(static_cast<size_t>(d));
        for (auto& x : r) x = normal(rng);
        for (const auto& prev : rows) {
          double dot = 0;
          for (index_t c = 0; c < d; ++c) dot += r[c] * prev[c];
          for (index_t c = 0; c < d; ++c) r[c] -= dot * prev[c];
        }
        double norm = 0;
        for (double x : r) norm += x * x;
        for (auto& x : r) x /= std::sqrt(norm);
        rows.push_back(r);
        for (index_t c = 0; c < d; ++c) {
          q_[static_cast<size_t>((i * H + h) * d + c)] =
              static_cast<float>(r[c] * std::sqrt(static_cast<double>(d)));
          // sum_i q_i * margin / sqrt(d) = margin * sum_i r_i (unit rows r_i).
          needle_[static_cast<size_t>(h * d + c)] += static_cast<float>(setup.margin * r[c]);
        }
      }
    }
    // Haystack keys [1, max_keys, H, d].
    k_.resize(static_cast<size_t>(max_keys * H * d));
    for (auto& x : k_) x = normal(rng);
    zero_v_.assign(static_cast<size_t>(d), 0.0f);
  }

  const needle_setup& setup() const { return setup_; }
  index_t max_keys() const { return max_keys_; }

  /// Runs attention (materialised path, weights returned) with `policy` and a causal
  /// mask over the first n_k keys, the needle planted at `depth` in [0, 1].
  /// Pre (checked): setup.queries <= n_k <= max_keys; depth in [0, 1].
  template <class Policy>  // a length policy (length_policy.hpp)
  needle_point measure(const Policy& policy, index_t n_k, double depth) {
    constexpr const char* fn = "needle_haystack::measure";
    const index_t d = setup_.dim, H = setup_.heads, n_q = setup_.queries;
    ssmax::detail::require(n_k >= n_q && n_k <= max_keys_, fn, "n_k",
                           "must be in [queries, max_keys]");
    ssmax::detail::require(depth >= 0.0 && depth <= 1.0, fn, "depth", "must be in [0, 1]");
    needle_point r;
    r.keys = n_k;
    r.depth = depth;
    r.needle = static_cast<index_t>(std::llround(depth * static_cast<double>(n_k - n_q)));

    // Plant the needle in every head (keeping the haystack keys to restore them).
    float* planted = k_.data() + r.needle * H * d;
    const std::vector<float> saved(planted, planted + H * d);
    std::copy(needle_.begin(), needle_.end(), planted);

    out_.assign(static_cast<size_t>(n_q * H * d), 0.0f);
    weights_.resize(static_cast<size_t>(H * n_q * n_k));
    attention_options<Policy> options;
    options.policy = policy;
    options.mask = attention_mask::causal_mask();
    options.path = attention_path::materialised;
    attention_extras<float> extras;
    extras.weights = weights_.data();
    // Values play no part in the weights: one zero row, read through zero strides.
    const tensor_view<const float> v{zero_v_.data(), 1, n_k, H, d, 0, 0, 0};
    attention(bshd_view<const float>(q_.data(), 1, n_q, H, d),
              bshd_view<const float>(k_.data(), 1, n_k, H, d), v,
              bshd_view(out_.data(), 1, n_q, H, d), options, extras, &workspace_);
    std::copy(saved.begin(), saved.end(), planted);

    const index_t rows = H * n_q;
    r.weight_min = 1.0;
    for (index_t row = 0; row < rows; ++row) {
      const float* w = weights_.data() + row * n_k;
      const double on = weight_on(w, n_k, r.needle);
      const largest<float> top = largest_weight(w, n_k);
      const double h = entropy(w, n_k);
      r.weight += on / rows;
      r.weight_min = std::min(r.weight_min, on);
      r.weight_max = std::max(r.weight_max, on);
      r.largest += static_cast<double>(top.weight) / rows;
      r.entropy += h / rows;
      r.effective_keys += std::exp(h) / rows;
      r.needle_is_top += (top.key == r.needle ? 1.0 : 0.0) / rows;
    }
    return r;
  }

 private:
  needle_setup setup_;
  index_t max_keys_;
  std::vector<float> q_, k_, needle_, zero_v_, out_, weights_;
  attention_workspace workspace_;
};

}  // namespace ssmax::study
