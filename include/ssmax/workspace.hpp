#pragma once
// The caller-owned scratch memory of an attention call (attention.hpp,
// attention_backward.hpp).

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <utility>

#include "detail/sanitizer.hpp"
#include "error.hpp"

namespace ssmax {
namespace detail {
class workspace_lease;

/// Alignment of the workspace's storage and of every buffer carved from it (one cache
/// line, and the widest vector: AVX-512).
inline constexpr std::size_t kWorkspaceAlignment = 64;
}  // namespace detail

/// Scratch memory an attention call carves its buffers from. Keep one per calling thread
/// and pass it to every call: it grows to the largest size asked for, so repeated calls
/// of the same (or smaller) shapes allocate nothing.
///
/// One call at a time: a call (attention, attention_backward) holds the workspace for its
/// whole run, and a second call given the same workspace meanwhile (from another thread,
/// or from inside a policy's callback) throws argument_error naming 'workspace' and writes
/// nothing. Moving or destroying a workspace while a call holds it is undefined.
class attention_workspace {
 public:
  attention_workspace() = default;
  attention_workspace(const attention_workspace&) = delete;
  attention_workspace& operator=(const attention_workspace&) = delete;
  /// Takes other's storage; other is left empty. Not in use.
  attention_workspace(attention_workspace&& other) noexcept { *this = std::move(other); }
  /// Frees this storage and takes other's; other is left empty.
  attention_workspace& operator=(attention_workspace&& other) noexcept {
    if (this == &other) return *this;
    release();
    storage_ = std::move(other.storage_);
    bytes_ = std::exchange(other.bytes_, 0);
    growths_ = other.growths_;
    return *this;
  }
  ~attention_workspace() { release(); }

  /// Bytes available without growing.
  std::size_t capacity() const { return bytes_; }
  /// Ensures at least `bytes` bytes; reallocates (losing the contents) only when growing.
  void reserve(std::size_t bytes) {
    if (bytes <= bytes_) return;
    release();
    storage_.reset(new unsigned char[bytes + kAlign]);
    bytes_ = bytes;
    ++growths_;
  }
  /// Start of the storage, aligned to detail::kWorkspaceAlignment bytes (null before the
  /// first reserve).
  unsigned char* data() {
    if (!storage_) return nullptr;
    const auto at = reinterpret_cast<std::uintptr_t>(storage_.get());
    return storage_.get() + ((kAlign - at % kAlign) % kAlign);
  }
  /// How many times reserve() has allocated: tests check that reuse allocates nothing.
  index_t growths() const { return growths_; }
  /// True while a call holds the workspace.
  bool in_use() const { return in_use_.load(std::memory_order_acquire); }

 private:
  friend class detail::workspace_lease;
  static constexpr std::size_t kAlign = detail::kWorkspaceAlignment;
  // Frees the storage, first unpoisoning what the arena poisoned (sanitizer builds).
  void release() {
    if (storage_) detail::unpoison(storage_.get(), bytes_ + kAlign);
    storage_.reset();
    bytes_ = 0;
  }
  std::unique_ptr<unsigned char[]> storage_;
  std::size_t bytes_ = 0;
  index_t growths_ = 0;
  std::atomic<bool> in_use_{false};
};

namespace detail {

/// A call's claim on a workspace, from construction to destruction (RAII). Claiming a
/// workspace that another call holds throws argument_error(function, "workspace", ...):
/// public calls take the lease after validating their other arguments and before
/// writing anything.
class workspace_lease {
 public:
  workspace_lease(attention_workspace& ws, const char* function) : ws_(ws) {
    if (ws_.in_use_.exchange(true, std::memory_order_acq_rel))
      throw argument_error(function, "workspace",
                           "is in use by another call (one workspace per calling thread; calls "
                           "sharing one must not overlap)");
  }
  workspace_lease(const workspace_lease&) = delete;
  workspace_lease& operator=(const workspace_lease&) = delete;
  ~workspace_lease() { ws_.in_use_.store(false, std::memory_order_release); }

 private:
  attention_workspace& ws_;
};

}  // namespace detail

}  // namespace ssmax
