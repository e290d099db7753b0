#pragma once
// Library version, kept equal to project(VERSION) in CMakeLists.txt by a test.

#define SSMAX_VERSION_MAJOR 0
#define SSMAX_VERSION_MINOR 1
#define SSMAX_VERSION_PATCH 0

namespace ssmax {
/// "MAJOR.MINOR.PATCH" of this ssmax.
inline constexpr const char* version = "0.1.0";
}  // namespace ssmax
