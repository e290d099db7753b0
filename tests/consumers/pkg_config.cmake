# Consumer that uses pkg-config and a plain compiler command line, as a Makefile would:
#   g++ -std=c++17 consumer.cpp $(pkg-config --cflags --libs ssmax)
# with PKG_CONFIG_PATH pointing into the install prefix. Run as
#   cmake -DPKG_CONFIG=<pkg-config> -DPREFIX=<install prefix> -DCXX=<compiler>
#         -DSOURCE=<consumer.cpp> -DBUILD=<dir> -DVERSION=<x.y.z> [-DEXPECT_OPENMP=ON]
#         -P pkg_config.cmake
set(ENV{PKG_CONFIG_PATH} "${PREFIX}/share/pkgconfig")

function(pkg_config out)
  execute_process(COMMAND ${PKG_CONFIG} ${ARGN} ssmax RESULT_VARIABLE rc
                  OUTPUT_VARIABLE text OUTPUT_STRIP_TRAILING_WHITESPACE)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "pkg-config ${ARGN} ssmax failed (${rc}) with PKG_CONFIG_PATH=$ENV{PKG_CONFIG_PATH}")
  endif()
  set(${out} "${text}" PARENT_SCOPE)
endfunction()

pkg_config(found_version --modversion)
if(NOT found_version STREQUAL VERSION)
  message(FATAL_ERROR "pkg-config reports ssmax ${found_version}, expected ${VERSION}")
endif()
pkg_config(flags --cflags --libs)
message(STATUS "pkg-config --cflags --libs ssmax: ${flags}")
separate_arguments(flags UNIX_COMMAND "${flags}")
# The first -I must be the prefix's include directory (the .pc file is relocatable: its
# paths are relative to where it lies, so they need not be spelled as PREFIX is).
list(FILTER flags INCLUDE REGEX "^-I")
list(GET flags 0 include_flag)
string(SUBSTRING "${include_flag}" 2 -1 include_dir)
file(REAL_PATH "${include_dir}" include_dir)
file(REAL_PATH "${PREFIX}/include" expected_dir)
if(NOT include_dir STREQUAL expected_dir)
  message(FATAL_ERROR "pkg-config's -I points at ${include_dir}, not ${expected_dir}")
endif()
pkg_config(flags --cflags --libs)
separate_arguments(flags UNIX_COMMAND "${flags}")

set(defines)
if(EXPECT_OPENMP)
  set(defines -DSSMAX_EXPECT_OPENMP)
endif()
file(REMOVE_RECURSE "${BUILD}")
file(MAKE_DIRECTORY "${BUILD}")
execute_process(COMMAND ${CXX} -std=c++17 -O2 ${defines} ${SOURCE} ${flags} -o ${BUILD}/consumer
                RESULT_VARIABLE rc)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "compiling with pkg-config's flags failed (${rc})")
endif()
execute_process(COMMAND ${BUILD}/consumer RESULT_VARIABLE rc)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "the pkg-config consumer failed (${rc})")
endif()
