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

# MPI, only for the optional mpi component (ssmax::mpi, context-parallel attention) and only
# when asked for (SSMAX_FIND_MPI): the core never needs it. Its C API only, without the
# deprecated MPI C++ bindings. SSMAX_MPIEXEC_FLAGS: how ssmax's tests and examples launch,
# oversubscribed (CI machines have 2 cores) and, for Open MPI, allowed to run as root (CI's
# containers; Open MPI refuses otherwise).
if(SSMAX_FIND_MPI)
  set(MPI_CXX_SKIP_MPICXX ON)
  find_package(MPI COMPONENTS CXX QUIET)
  if(MPI_CXX_FOUND)
    set(SSMAX_MPIEXEC_FLAGS ${MPIEXEC_PREFLAGS})
    execute_process(COMMAND ${MPIEXEC_EXECUTABLE} --version OUTPUT_VARIABLE _ssmax_mpiexec
                    ERROR_QUIET)
    if(_ssmax_mpiexec MATCHES "Open MPI|OpenRTE")
      list(APPEND SSMAX_MPIEXEC_FLAGS --oversubscribe --allow-run-as-root)
    endif()
  endif()
endif()
