# Cross-compiling for 64-bit ARM Linux with Debian's g++-aarch64-linux-gnu. The programs
# run on an x86-64 host under qemu-user (Debian's qemu-user), through
# CMAKE_CROSSCOMPILING_EMULATOR: ctest and gtest_discover_tests call it for each binary.
set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR aarch64)

set(CMAKE_C_COMPILER aarch64-linux-gnu-gcc)
set(CMAKE_CXX_COMPILER aarch64-linux-gnu-g++)

# The target's libraries (libstdc++, libgomp, the dynamic loader) live under this prefix.
set(ssmax_aarch64_sysroot /usr/aarch64-linux-gnu)
set(CMAKE_CROSSCOMPILING_EMULATOR qemu-aarch64 -L ${ssmax_aarch64_sysroot})

# Headers-only dependencies (Eigen, xsimd) come from the host's /usr/include; libraries and
# CMake packages must be the target's, never the host's x86-64 ones.
set(CMAKE_FIND_ROOT_PATH ${ssmax_aarch64_sysroot})
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
set(CMAKE_FIND_ROOT_PATH_MODE_LIBRARY ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_INCLUDE BOTH)
set(CMAKE_FIND_ROOT_PATH_MODE_PACKAGE BOTH)

# xsimd is headers only, but Debian installs its CMake package under the host's multiarch
# directory, which a search for the target's packages does not look in.
set(xsimd_DIR /usr/lib/${CMAKE_HOST_SYSTEM_PROCESSOR}-linux-gnu/cmake/xsimd
    CACHE PATH "xsimd's CMake package (headers only: the host's serves the target)")
