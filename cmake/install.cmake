# Install rules: headers, exported target, CMake package config and a pkg-config file.
include(CMakePackageConfigHelpers)

set(SSMAX_CMAKE_DIR ${CMAKE_INSTALL_DATADIR}/cmake/ssmax)

install(DIRECTORY include/ DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
install(TARGETS ssmax EXPORT ssmaxTargets)
install(EXPORT ssmaxTargets NAMESPACE ssmax:: DESTINATION ${SSMAX_CMAKE_DIR})
# The mpi component in its own export set, loaded only when a consumer asks for it.
if(SSMAX_HAS_MPI)
  install(TARGETS ssmax_mpi EXPORT ssmaxMpiTargets)
  install(EXPORT ssmaxMpiTargets NAMESPACE ssmax:: DESTINATION ${SSMAX_CMAKE_DIR})
endif()

configure_package_config_file(cmake/ssmaxConfig.cmake.in
                              ${PROJECT_BINARY_DIR}/ssmaxConfig.cmake
                              INSTALL_DESTINATION ${SSMAX_CMAKE_DIR})
write_basic_package_version_file(${PROJECT_BINARY_DIR}/ssmaxConfigVersion.cmake
                                 COMPATIBILITY SameMajorVersion ARCH_INDEPENDENT)
install(FILES ${PROJECT_BINARY_DIR}/ssmaxConfig.cmake
              ${PROJECT_BINARY_DIR}/ssmaxConfigVersion.cmake
              cmake/ssmaxDependencies.cmake
        DESTINATION ${SSMAX_CMAKE_DIR})

# pkg-config: the compile flags a plain Makefile needs (Eigen comes through Requires;
# xsimd 8.1 ships no .pc file, and lives in the default include path on Debian).
if(SSMAX_WITH_OPENMP)
  set(SSMAX_PC_CFLAGS "-fopenmp")
  set(SSMAX_PC_LIBS "-fopenmp")
endif()
set(SSMAX_PC_DIR ${CMAKE_INSTALL_DATADIR}/pkgconfig)
file(RELATIVE_PATH SSMAX_PC_PREFIX_FROM_PCFILEDIR /prefix/${SSMAX_PC_DIR} /prefix)
string(REGEX REPLACE "/$" "" SSMAX_PC_PREFIX_FROM_PCFILEDIR "${SSMAX_PC_PREFIX_FROM_PCFILEDIR}")
configure_file(cmake/ssmax.pc.in ${PROJECT_BINARY_DIR}/ssmax.pc @ONLY)
install(FILES ${PROJECT_BINARY_DIR}/ssmax.pc DESTINATION ${SSMAX_PC_DIR})
