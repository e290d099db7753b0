# Configures a CMake project from scratch, builds it, and runs programs it built: what a
# user of ssmax does. Run as
#   cmake -DSOURCE=<project> -DBUILD=<build dir> -DRUN=<program> [-DCXX=<compiler>]
#         [-DCMAKE_PREFIX_PATH=...] [-DEXPECTED_SSMAX_DIR=...] [-DSSMAX_SOURCE_DIR=...]
#         -P build_and_run.cmake
# The optional variables are passed on to the project's configure step. RUN is relative
# to BUILD and must exit 0. Fails on the first error.
foreach(required SOURCE BUILD RUN)
  if(NOT DEFINED ${required})
    message(FATAL_ERROR "build_and_run.cmake: -D${required}=... is required")
  endif()
endforeach()

function(run_step what)
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE rc)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "${what} failed (${rc}): ${ARGN}")
  endif()
endfunction()

file(REMOVE_RECURSE "${BUILD}")
set(args -DCMAKE_BUILD_TYPE=Release)
if(CXX)
  list(APPEND args -DCMAKE_CXX_COMPILER=${CXX})
endif()
foreach(passed CMAKE_PREFIX_PATH EXPECTED_SSMAX_DIR SSMAX_SOURCE_DIR)
  if(DEFINED ${passed})
    list(APPEND args -D${passed}=${${passed}})
  endif()
endforeach()
run_step("configure" ${CMAKE_COMMAND} -S ${SOURCE} -B ${BUILD} ${args})
run_step("build" ${CMAKE_COMMAND} --build ${BUILD})
run_step("run" ${BUILD}/${RUN})
