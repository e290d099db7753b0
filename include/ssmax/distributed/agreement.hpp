#pragma once
// The agreement of a ring call (ring_attention.hpp): before any ring message, every rank
// checks its own arguments, builds a fixed-size record of everything that must be the same
// on every rank, and all ranks exchange their records in one MPI_Allgather. A bad argument
// on any rank, or ranks whose records differ, then throws the same argument_error on EVERY
// rank (the checks run on the same gathered records in the same order), naming the argument
// and the rank; no rank is left waiting in a collective.
//
// The record holds the shapes and the layout, and every option value that changes the
// result: the mask (causal, window, local window, query_offset, n_override, a hash of the
// key lengths), the logit (scale, soft-cap, hashes of the ALiBi slopes, the sinks and the
// bias's presence and shape), the path, the policy's type and a hash of its parameters, and
// whether the backward all-reduces the policy's gradient. Options that do not change the
// result (threads) are left out. Arrays are hashed (FNV-1a over their bytes), so the record
// stays fixed-size. A built-in policy's parameters are hashed field by field (ssmax_policy's
// s and b head by head, and fixed_length). Any other policy is compared by its multipliers
// in a second exchange once N is known (agree_policy_values): at n and p + 1 in
// {1, 2, 4, ..., N} for every head, so two of its values that give the same multiplier on
// every row of that grid are not told apart.

#include <mpi.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <cstring>
#include <limits>
#include <string>
#include <type_traits>
#include <typeinfo>
#include <vector>

#include "../attention.hpp"
#include "../error.hpp"
#include "layout.hpp"

namespace ssmax::distributed::detail {

/// Fields of the record every rank contributes to the agreement (int64 each). A hash is
/// never 0; 0 in a hash field means the array is absent.
enum field : int {
  f_ok,            ///< 1 when the rank's local checks passed (the rest is then filled)
  f_batch,         ///< B
  f_heads,         ///< H
  f_kv_heads,      ///< H_kv
  f_dim,           ///< d
  f_q_seq,         ///< q rows (the rank's slice length)
  f_k_seq,         ///< k and v rows
  f_element,       ///< sizeof(T): ring messages are sized by it
  f_layout,        ///< ring_context::kind
  f_causal,        ///< options.mask.causal
  f_window,        ///< options.mask.window
  f_local,         ///< options.mask.local
  f_window_left,   ///< options.mask.window_left
  f_window_right,  ///< options.mask.window_right
  f_query_offset,  ///< options.mask.query_offset
  f_n_override,    ///< options.mask.n_override
  f_lengths,       ///< hash of options.mask.key_lengths (0: none)
  f_lengths_max,   ///< largest key length (-1: none)
  f_scale,         ///< options.scale's bits (-1: default 1/sqrt(d))
  f_softcap,       ///< options.logit.softcap's bits
  f_alibi,         ///< hash of options.logit.alibi_slopes (0: none)
  f_sinks,         ///< hash of options.logit.sinks (0: none)
  f_bias,          ///< hash of options.logit.bias's presence, batch and heads (0: none)
  f_path,          ///< the kernel path the call runs (automatic counts as fused)
  f_policy,        ///< hash of the policy's type name
  f_policy_value,  ///< hash of the policy's parameters (see the top of this header)
  f_policy_grad,   ///< backward: 1 when grads.policy is set (the ranks then all-reduce it)
  f_count
};
using record = std::array<std::int64_t, f_count>;

/// FNV-1a over bytes: a deterministic hash, the same on every rank of one build.
class fnv1a {
 public:
  /// Adds count bytes at data.
  void bytes(const void* data, std::size_t count) {
    const auto* p = static_cast<const unsigned char*>(data);
    for (std::size_t i = 0; i < count; ++i) h_ = (h_ ^ p[i]) * 1099511628211ull;
  }
  /// Adds an integer's bytes.
  void integer(std::int64_t x) { bytes(&x, sizeof(x)); }
  /// Adds a real's bytes (-0 as +0: they give the same results).
  void real(double x) {
    x = x == 0.0 ? 0.0 : x;
    bytes(&x, sizeof(x));
  }
  /// The hash, never 0.
  std::int64_t value() const { return static_cast<std::int64_t>(h_ | 1u); }

 private:
  std::uint64_t h_ = 1469598103934665603ull;
};

/// Hash of `count` reals at data, 0 when data is null.
inline std::int64_t hash_reals(const float* data, index_t count) {
  if (data == nullptr) return 0;
  fnv1a h;
  h.integer(count);
  for (index_t i = 0; i < count; ++i) h.real(static_cast<double>(data[i]));
  return h.value();
}

/// Hash of B key lengths (a pointer or index_array: anything indexed as index_t), 0 when
/// null.
template <class Lengths>  // the type of attention_mask::key_lengths
std::int64_t hash_lengths(const Lengths& lengths, index_t batch) {
  if (lengths == nullptr) return 0;
  fnv1a h;
  for (index_t b = 0; b < batch; ++b) h.integer(static_cast<std::int64_t>(lengths[b]));
  return h.value();
}

/// FNV-1a hash of a string (the policy's type name), never 0.
inline std::int64_t hash_text(const char* text) {
  fnv1a h;
  h.bytes(text, std::strlen(text));
  return h.value();
}

/// The bits of a real (-0 as +0).
inline std::int64_t bits_of(double x) {
  x = x == 0.0 ? 0.0 : x;
  std::int64_t bits = 0;
  std::memcpy(&bits, &x, sizeof(bits));
  return bits;
}

/// True for the built-in policies, whose parameters the record hashes field by field.
template <class Policy>  // a length policy
inline constexpr bool builtin_policy =
    std::is_same<Policy, softmax_policy>::value || std::is_same<Policy, ssmax_policy>::value ||
    std::is_same<Policy, qwen_logn_policy>::value ||
    std::is_same<Policy, llama4_temperature_policy>::value ||
    std::is_same<Policy, mistral_policy>::value;

/// A built-in policy's parameters, hashed for `heads` query heads. Pre: the policy passed
/// check_policy for that head count.
inline std::int64_t hash_policy(const softmax_policy&, index_t) { return fnv1a{}.value(); }
inline std::int64_t hash_policy(const ssmax_policy& p, index_t heads) {
  fnv1a h;
  for (index_t i = 0; i < heads; ++i) h.real(p.s[i]), h.real(p.b[i]);
  h.integer(p.fixed_length);
  return h.value();
}
inline std::int64_t hash_policy(const qwen_logn_policy& p, index_t) {
  fnv1a h;
  h.integer(p.train_length);
  return h.value();
}
inline std::int64_t hash_policy(const llama4_temperature_policy& p, index_t) {
  fnv1a h;
  h.integer(p.floor_scale);
  h.real(p.attn_scale);
  return h.value();
}
inline std::int64_t hash_policy(const mistral_policy& p, index_t) {
  fnv1a h;
  h.integer(p.original_length);
  h.real(p.beta);
  return h.value();
}

/// This rank's record. Pre: its local checks passed. forward: the call runs the forward's
/// kernels (options.path applies; the backward always runs the fused one).
template <class T, class Policy>  // element type; a length policy
record make_record(const tensor_view<const T>& q, const tensor_view<const T>& k,
                   const attention_options<Policy>& options, layout kind, bool forward,
                   bool policy_grad) {
  const attention_mask& m = options.mask;
  const logit_options& l = options.logit;
  record r{};
  r[f_ok] = 1;
  r[f_batch] = q.batch, r[f_heads] = q.heads, r[f_kv_heads] = k.heads, r[f_dim] = q.dim;
  r[f_q_seq] = q.seq, r[f_k_seq] = k.seq;
  r[f_element] = static_cast<std::int64_t>(sizeof(T));
  r[f_layout] = static_cast<std::int64_t>(kind);
  r[f_causal] = m.causal, r[f_window] = m.window;
  r[f_local] = m.local, r[f_window_left] = m.window_left, r[f_window_right] = m.window_right;
  r[f_query_offset] = m.query_offset, r[f_n_override] = m.n_override;
  r[f_lengths] = hash_lengths(m.key_lengths, q.batch);
  r[f_lengths_max] = -1;
  if (m.key_lengths != nullptr)
    for (index_t b = 0; b < q.batch; ++b)
      r[f_lengths_max] = std::max(r[f_lengths_max], m.key_lengths[b]);
  r[f_scale] = options.scale ? bits_of(*options.scale) : -1;
  r[f_softcap] = bits_of(l.softcap);
  r[f_alibi] = hash_reals(l.alibi_slopes, l.alibi_heads);
  r[f_sinks] = hash_reals(l.sinks, l.sink_heads);
  if (l.bias.data != nullptr) {  // refused by the ring's local checks; compared all the same
    fnv1a h;
    h.integer(l.bias.batch), h.integer(l.bias.heads);
    r[f_bias] = h.value();
  }
  const attention_path path = forward ? options.path : attention_path::fused;
  r[f_path] =
      static_cast<std::int64_t>(path == attention_path::automatic ? attention_path::fused : path);
  r[f_policy] = hash_text(typeid(Policy).name());
  if constexpr (builtin_policy<Policy>) r[f_policy_value] = hash_policy(options.policy, q.heads);
  r[f_policy_grad] = policy_grad ? 1 : 0;
  return r;
}

/// The problem text of an argument_error thrown by `fn` (what() without its prefix).
inline std::string problem_of(const argument_error& e, const char* fn) {
  const std::string prefix = std::string("ssmax::") + fn + ": argument '" + e.argument() + "' ";
  const std::string all = e.what();
  return all.compare(0, prefix.size(), prefix) == 0 ? all.substr(prefix.size()) : all;
}

/// Sends a string from `root` to every rank of comm (collective).
inline std::string broadcast_string(std::string s, int root, MPI_Comm comm) {
  int length = static_cast<int>(s.size());
  MPI_Bcast(&length, 1, MPI_INT, root, comm);
  s.resize(static_cast<size_t>(length));
  MPI_Bcast(s.data(), length, MPI_CHAR, root, comm);
  return s;
}

/// The agreement, collective over comm: runs local_check (which throws argument_error on a
/// bad local argument), then make_record, gathers every rank's record, and when any rank's
/// check failed, throws on EVERY rank the first failing rank's error (its argument and
/// problem, naming the rank). Returns the records, identical on every rank, for the
/// consistency checks (check_ring) that then run the same on every rank. No rank sends or
/// waits on ring data before this returns, so a bad argument anywhere can neither deadlock
/// nor write anything.
template <class LocalCheck, class MakeRecord>  // () -> void, throws argument_error; () -> record
std::vector<record> agree(const char* fn, MPI_Comm comm, LocalCheck&& local_check,
                          MakeRecord&& make) {
  record mine{};  // f_ok = 0 unless the checks pass
  std::string argument, problem;
  try {
    local_check();
    mine = make();
  } catch (const argument_error& e) {
    mine[f_ok] = 0;
    argument = e.argument();
    problem = problem_of(e, fn);
  }
  int ranks = 0;
  MPI_Comm_size(comm, &ranks);
  std::vector<record> all(static_cast<size_t>(ranks));
  MPI_Allgather(mine.data(), f_count, MPI_INT64_T, all.data(), f_count, MPI_INT64_T, comm);
  for (int r = 0; r < ranks; ++r)
    if (all[static_cast<size_t>(r)][f_ok] == 0) {
      argument = broadcast_string(argument, r, comm);
      problem = broadcast_string(problem, r, comm);
      ssmax::detail::fail(fn, argument.c_str(), problem + " (on rank " + std::to_string(r) + ")");
    }
  return all;
}

/// How require_same shows a field's values in its message.
enum class shown {
  value,  ///< the integer
  real,   ///< the double whose bits the field holds (-1: unset, the default)
  hash    ///< a hash (0: absent)
};

/// One field's value as require_same shows it.
inline std::string show(std::int64_t x, shown how) {
  if (how == shown::real) {
    if (x == -1) return "unset";
    double d = 0.0;
    std::memcpy(&d, &x, sizeof(d));
    return std::to_string(d);
  }
  if (how == shown::hash) return x == 0 ? "absent" : "hash " + std::to_string(x);
  return std::to_string(x);
}

/// Throws (the same on every rank) when field f differs between any rank and rank 0.
inline void require_same(const std::vector<record>& all, field f, const char* fn,
                         const char* argument, const char* what, shown how = shown::value) {
  for (size_t r = 1; r < all.size(); ++r)
    ssmax::detail::require_lazy(all[r][f] == all[0][f], fn, argument, [&] {
      return std::string("has ") + what + " " + show(all[r][f], how) + " on rank " +
             std::to_string(r) + " but " + show(all[0][f], how) +
             " on rank 0 (every rank must pass the same)";
    });
}

/// The checks that need every rank's record; the same on every rank. Returns the global
/// sequence length N. bytes_per_token: what one token of one rank's ring message holds.
inline index_t check_ring(const std::vector<record>& all, const char* fn,
                          std::int64_t bytes_per_token) {
  require_same(all, f_batch, fn, "q", "batch");
  require_same(all, f_heads, fn, "q", "heads");
  require_same(all, f_kv_heads, fn, "k", "heads");
  require_same(all, f_dim, fn, "q", "head dimension");
  require_same(all, f_element, fn, "q", "element size (float against double)");
  require_same(all, f_layout, fn, "context.kind", "layout");
  require_same(all, f_causal, fn, "options.mask.causal", "value");
  require_same(all, f_window, fn, "options.mask.window", "value");
  require_same(all, f_local, fn, "options.mask.local", "value");
  require_same(all, f_window_left, fn, "options.mask.window_left", "value");
  require_same(all, f_window_right, fn, "options.mask.window_right", "value");
  require_same(all, f_query_offset, fn, "options.mask.query_offset", "value");
  require_same(all, f_n_override, fn, "options.mask.n_override", "value");
  require_same(all, f_lengths, fn, "options.mask.key_lengths", "values", shown::hash);
  require_same(all, f_scale, fn, "options.scale", "value", shown::real);
  require_same(all, f_softcap, fn, "options.logit.softcap", "value", shown::real);
  require_same(all, f_alibi, fn, "options.logit.alibi_slopes", "values", shown::hash);
  require_same(all, f_sinks, fn, "options.logit.sinks", "values", shown::hash);
  require_same(all, f_bias, fn, "options.logit.bias", "shape", shown::hash);
  require_same(all, f_path, fn, "options.path", "value");
  require_same(all, f_policy, fn, "options.policy", "type", shown::hash);
  require_same(all, f_policy_value, fn, "options.policy", "parameters", shown::hash);
  require_same(all, f_policy_grad, fn, "grads.policy", "presence (1: set)");
  const int ranks = static_cast<int>(all.size());
  index_t total = 0, longest = 0;
  for (const record& r : all) total += r[f_q_seq], longest = std::max<index_t>(longest, r[f_q_seq]);
  const auto kind = static_cast<layout>(all[0][f_layout]);
  const char* name = kind == layout::zigzag ? "zigzag" : "contiguous";
  ssmax::detail::require_lazy(total >= chunk_count(kind, ranks), fn, "q", [&] {
    return "holds " + std::to_string(total) + " tokens over all ranks, fewer than the " +
           std::to_string(chunk_count(kind, ranks)) + " chunks of the " + name + " layout";
  });
  for (int r = 0; r < ranks; ++r) {
    const index_t expected = slice_of(kind, total, ranks, r).length();
    ssmax::detail::require_lazy(all[static_cast<size_t>(r)][f_q_seq] == expected, fn, "q", [&] {
      return "has " + std::to_string(all[static_cast<size_t>(r)][f_q_seq]) + " tokens on rank " +
             std::to_string(r) + ", but the " + name + " layout of " + std::to_string(total) +
             " tokens over " + std::to_string(ranks) + " ranks gives it " +
             std::to_string(expected) + " (ssmax::distributed::slice_of)";
    });
  }
  ssmax::detail::require(all[0][f_lengths_max] <= total, fn, "options.mask.key_lengths",
                         "has an entry above the sequence's length (over all ranks)");
  ssmax::detail::require(longest * bytes_per_token <= std::numeric_limits<int>::max(), fn, "k",
                         "makes one ring message exceed 2^31 - 1 bytes (MPI's int count)");
  return total;
}

/// The second exchange, for a policy that is not built in (collective; after check_ring, so
/// every rank reaches it): its multipliers at the rows n, p + 1 in {1, 2, 4, ..., N} (and
/// n = options.mask.n_override when set), every head, are hashed and compared; ranks whose
/// hashes differ all throw argument_error naming 'options.policy'. Pre: the records agreed.
template <class Policy>  // a length policy
void agree_policy_values(const char* fn, MPI_Comm comm, const Policy& policy, index_t heads,
                         index_t total, index_t n_override) {
  std::vector<index_t> grid;  // 1, 2, 4, ..., N
  for (index_t x = 1; x < total; x *= 2) grid.push_back(x);
  grid.push_back(total);
  std::vector<index_t> lengths = grid;
  if (n_override > 0) lengths.push_back(n_override);
  fnv1a h;
  for (index_t head = 0; head < heads; ++head)
    for (index_t n : lengths)
      for (index_t p : grid) h.real(policy.multiplier({n, p - 1, head}));
  const std::int64_t mine = h.value();
  int ranks = 0;
  MPI_Comm_size(comm, &ranks);
  std::vector<std::int64_t> all(static_cast<size_t>(ranks));
  MPI_Allgather(&mine, 1, MPI_INT64_T, all.data(), 1, MPI_INT64_T, comm);
  for (size_t r = 1; r < all.size(); ++r)
    ssmax::detail::require_lazy(all[r] == all[0], fn, "options.policy", [&] {
      return "gives other multipliers on rank " + std::to_string(r) + " than on rank 0 (hash " +
             std::to_string(all[r]) + " against " + std::to_string(all[0]) +
             "; every rank must pass the same)";
    });
}

}  // namespace ssmax::distributed::detail
