#pragma once
// What the CPU running a test has, for tests of paths a build may target without the CPU
// having them (they skip there).

#include <fstream>
#include <string>

namespace ssmax::testing {

/// True when /proc/cpuinfo lists avx512_bf16 (Linux; elsewhere false: the tests skip).
inline bool cpu_has_avx512_bf16() {
  std::ifstream in("/proc/cpuinfo");
  std::string word;
  while (in >> word)
    if (word == "avx512_bf16") return true;
  return false;
}

}  // namespace ssmax::testing
