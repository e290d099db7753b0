#pragma once
// The MPI plumbing of context-parallel attention (ring_attention.hpp): the communicator and
// layout a call runs on, per-rank timing, the agreement on arguments that makes every rank
// throw the same argument_error before any ring step, the non-blocking ring exchange, and
// the merge of partial attention results.

#include <mpi.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "../error.hpp"
#include "layout.hpp"

namespace ssmax::distributed {

/// What one rank did during a ring call (added to, so one object can sum several calls).
struct ring_stats {
  double compute_seconds = 0.0;  ///< attention kernels and merges
  double wait_seconds = 0.0;     ///< blocked on messages after the compute: not hidden
  double total_seconds = 0.0;    ///< the whole call, agreement included
  std::int64_t bytes_sent = 0;   ///< payload this rank sent
  std::int64_t messages = 0;     ///< messages this rank sent
};

/// Where a ring call runs: its communicator (every rank of it calls, in the same order),
/// the layout of the slices, and optional per-rank statistics.
struct ring_context {
  MPI_Comm comm = MPI_COMM_WORLD;    ///< the ring: rank r sends to r + 1, receives from r - 1
  layout kind = layout::contiguous;  ///< which tokens each rank holds (layout.hpp)
  ring_stats* stats = nullptr;       ///< this rank's statistics, added to; null = none
};

namespace detail {

/// Seconds on a steady clock.
inline double now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

/// Fields of the record every rank contributes to the agreement (int64 each).
enum field : int {
  f_ok,           ///< 1 when the rank's local checks passed
  f_batch,        ///< B
  f_heads,        ///< H
  f_kv_heads,     ///< H_kv
  f_dim,          ///< d
  f_q_seq,        ///< q rows (the rank's slice length)
  f_k_seq,        ///< k and v rows
  f_layout,       ///< ring_context::kind
  f_causal,       ///< options.mask.causal
  f_window,       ///< options.mask.window
  f_n_override,   ///< options.mask.n_override
  f_lengths,      ///< FNV-1a hash of options.mask.key_lengths (0: none)
  f_lengths_max,  ///< largest key length (-1: none)
  f_element,      ///< sizeof(T): ring messages are sized by it
  f_policy,       ///< FNV-1a hash of the policy's type name (its values are not compared)
  f_scale,        ///< options.scale's bits (-1: default 1/sqrt(d))
  f_policy_grad,  ///< backward: 1 when grads.policy is set (the ranks then all-reduce it)
  f_count
};
using record = std::array<std::int64_t, f_count>;

/// Hash of B key lengths, so that ranks can check they were given the same ones.
inline std::int64_t hash_lengths(const index_t* lengths, index_t batch) {
  if (lengths == nullptr) return 0;
  std::uint64_t h = 1469598103934665603ull;
  for (index_t b = 0; b < batch; ++b) {
    h ^= static_cast<std::uint64_t>(lengths[b]);
    h *= 1099511628211ull;
  }
  return static_cast<std::int64_t>(h | 1u);  // never 0
}

/// FNV-1a hash of a string (the policy's type name), never 0.
inline std::int64_t hash_text(const char* text) {
  std::uint64_t h = 1469598103934665603ull;
  for (; *text != '\0'; ++text) {
    h ^= static_cast<unsigned char>(*text);
    h *= 1099511628211ull;
  }
  return static_cast<std::int64_t>(h | 1u);
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
/// bad local argument), gathers every rank's record, and when any rank's check failed,
/// throws on EVERY rank the first failing rank's error (its argument and problem, naming
/// the rank). Returns the records, identical on every rank, for consistency checks that
/// then run the same on every rank. No rank sends or waits on ring data before this
/// returns, so a bad argument anywhere can neither deadlock nor write anything.
template <class LocalCheck>  // callable () -> void, throws argument_error
std::vector<record> agree(const char* fn, MPI_Comm comm, record mine, LocalCheck&& local_check) {
  std::string argument, problem;
  try {
    local_check();
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

/// Throws (the same on every rank) when field f differs between any rank and rank 0.
inline void require_same(const std::vector<record>& all, field f, const char* fn,
                         const char* argument, const char* what) {
  for (size_t r = 1; r < all.size(); ++r)
    ssmax::detail::require_lazy(all[r][f] == all[0][f], fn, argument, [&] {
      return std::string("has ") + what + " " + std::to_string(all[r][f]) + " on rank " +
             std::to_string(r) + " but " + std::to_string(all[0][f]) +
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
  require_same(all, f_layout, fn, "context.kind", "layout");
  require_same(all, f_causal, fn, "options.mask.causal", "value");
  require_same(all, f_window, fn, "options.mask.window", "value");
  require_same(all, f_n_override, fn, "options.mask.n_override", "value");
  require_same(all, f_lengths, fn, "options.mask.key_lengths", "hash");
  require_same(all, f_element, fn, "q", "element size (float against double)");
  require_same(all, f_policy, fn, "options.policy", "type hash");
  require_same(all, f_scale, fn, "options.scale", "bits (-1: default)");
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

/// A non-blocking exchange around the ring: send a buffer to rank + 1 while receiving one
/// from rank - 1, with the time blocked in wait() and the bytes sent counted.
class ring_channel {
 public:
  ring_channel(MPI_Comm comm, int tag, ring_stats& stats) : comm_(comm), tag_(tag), stats_(stats) {
    MPI_Comm_rank(comm, &rank_);
    MPI_Comm_size(comm, &ranks_);
  }
  int rank() const { return rank_; }
  int ranks() const { return ranks_; }
  /// Starts receiving recv_bytes from the left neighbour into recv.
  void receive(void* recv, std::int64_t recv_bytes) {
    MPI_Irecv(recv, static_cast<int>(recv_bytes), MPI_BYTE, (rank_ + ranks_ - 1) % ranks_, tag_,
              comm_, &requests_[0]);
  }
  /// Starts sending send_bytes of send to the right neighbour.
  void send(const void* send, std::int64_t send_bytes) {
    MPI_Isend(send, static_cast<int>(send_bytes), MPI_BYTE, (rank_ + 1) % ranks_, tag_, comm_,
              &requests_[1]);
    stats_.bytes_sent += send_bytes;
    stats_.messages += 1;
  }
  /// Lets MPI progress the transfers (called between compute pieces).
  void progress() {
    int done = 0;
    MPI_Testall(2, requests_, &done, MPI_STATUSES_IGNORE);
  }
  /// Waits for the receive (and the send, when both) to complete.
  void wait_receive() { timed_wait(&requests_[0], 1); }
  void wait_send() { timed_wait(&requests_[1], 1); }
  void wait() { timed_wait(requests_, 2); }

 private:
  void timed_wait(MPI_Request* r, int count) {
    const double t0 = now();
    MPI_Waitall(count, r, MPI_STATUSES_IGNORE);
    stats_.wait_seconds += now() - t0;
  }
  MPI_Comm comm_;
  int tag_, rank_ = 0, ranks_ = 1;
  ring_stats& stats_;
  MPI_Request requests_[2] = {MPI_REQUEST_NULL, MPI_REQUEST_NULL};
};

}  // namespace detail
}  // namespace ssmax::distributed
