#pragma once
// How a sequence of N tokens is split over the P ranks of a context-parallel ring
// (ring_attention.hpp). Each rank holds the q, k and v rows of its slice, in the order below.
//
//   contiguous  rank r holds one run of tokens: the N tokens cut into P runs whose lengths
//               differ by at most one (the first N mod P runs are one longer).
//   zigzag      the N tokens cut the same way into 2P chunks; rank r holds chunks r and
//               2P - 1 - r, in that order (the load-balanced layout for causal attention:
//               an early chunk, which sees few keys, with a late one, which sees many, so
//               every rank does the same work; Megatron-LM's and ring-flash-attention's).
//
// No MPI here: a caller splits its tensors with slice_of before calling the ring.

#include <algorithm>

#include "../error.hpp"

namespace ssmax::distributed {

/// Which tokens each rank holds (see the top of this header).
enum class layout {
  contiguous,  ///< one run per rank
  zigzag       ///< chunks r and 2P - 1 - r of 2P per rank
};

/// A run of tokens: global positions [begin, begin + length).
struct chunk {
  index_t begin = 0;   ///< global position of the first token
  index_t length = 0;  ///< tokens
};

/// The tokens one rank holds: one chunk (contiguous) or two (zigzag), stored in that order.
struct slice {
  chunk parts[2];  ///< the chunks, in the rank's storage order
  int count = 0;   ///< 1 (contiguous) or 2 (zigzag)

  /// Tokens in the slice.
  index_t length() const { return parts[0].length + (count > 1 ? parts[1].length : 0); }
  /// Row of the rank's tensors where chunk c starts.
  index_t local_begin(int c) const { return c == 0 ? 0 : parts[0].length; }
};

/// Chunk c of `total` tokens cut into `pieces` runs differing by at most one token.
inline chunk even_chunk(index_t total, index_t pieces, index_t c) {
  const index_t base = total / pieces, extra = total % pieces;
  return {c * base + std::min(c, extra), base + (c < extra ? 1 : 0)};
}

/// Chunks of the layout over all ranks: P (contiguous) or 2P (zigzag).
inline index_t chunk_count(layout l, int ranks) {
  return l == layout::zigzag ? 2 * static_cast<index_t>(ranks) : ranks;
}

/// The slice rank `rank` of `ranks` holds of a sequence of `total` tokens. Pre: 0 <= rank <
/// ranks; every chunk is non-empty when total >= chunk_count(l, ranks).
inline slice slice_of(layout l, index_t total, int ranks, int rank) {
  slice s;
  if (l == layout::contiguous) {
    s.parts[0] = even_chunk(total, ranks, rank);
    s.count = 1;
  } else {
    const index_t pieces = chunk_count(l, ranks);
    s.parts[0] = even_chunk(total, pieces, rank);
    s.parts[1] = even_chunk(total, pieces, pieces - 1 - rank);
    s.count = 2;
  }
  return s;
}

}  // namespace ssmax::distributed
