#pragma once
// The MPI plumbing of context-parallel attention (ring_attention.hpp): the communicator and
// layout a call runs on, per-rank timing and the non-blocking ring exchange. The agreement
// on arguments that precedes every ring call is in agreement.hpp.

#include <mpi.h>

#include <chrono>
#include <cstdint>

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
