# Finds what ssmax's headers need. Shared by the build tree and by the installed
# ssmaxConfig.cmake, so a consumer sees exactly what our own tests see.
#
# Debian bookworm's xsimd 8.1 package exports a target whose INTERFACE_LINK_LIBRARIES
# names `xtl` without finding it (xtensor-stack/xsimd#869), so linking it fails with
# `cannot find -lxtl`. xsimd's headers never need xtl unless XSIMD_ENABLE_XTL_COMPLEX is
# set, so an empty imported target of that name satisfies the link line.
include(CMakeFindDependencyMacro)

if(NOT TARGET xtl)
  add_library(xtl INTERFACE IMPORTED)
endif()

find_dependency(Eigen3 3.3 NO_MODULE)
find_dependency(xsimd 8.0)

# Threading is optional: without OpenMP the operator runs single-threaded and gives the
# same results (see include/ssmax/detail/parallel.hpp).
if(SSMAX_WITH_OPENMP)
  find_dependency(OpenMP COMPONENTS CXX)
endif()
