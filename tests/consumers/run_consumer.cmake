# run_consumer.cmake - ctest step: configure, build and run one consumer project.
#
#   cmake -DNAME=<consumer> -DSOURCE_DIR=<project> -DBINARY_DIR=<scratch build dir>
#         -DGENERATOR=<generator> -DCXX_COMPILER=<c++> -DMAKE_PROGRAM=<ninja/make>
#         -DMMCA_SOURCE_DIR=<mmca source> -DDEPS_DIR=<MMCA_THIRD_PARTY_DIR>
#         [-DPREFIX_PATH=a|b|c] [-DPKG_CONFIG_DIRS=a|b] [-DPKG_CONFIG_EXECUTABLE=<pkg-config>]
#         -P run_consumer.cmake
# Lists use '|' as separator. The consumer is built without optimisation to stay quick.
foreach(_var NAME SOURCE_DIR BINARY_DIR GENERATOR CXX_COMPILER MMCA_SOURCE_DIR)
  if(NOT DEFINED ${_var})
    message(FATAL_ERROR "run_consumer.cmake: -D${_var}=... is required")
  endif()
endforeach()

string(REPLACE "|" ";" _prefix_path "${PREFIX_PATH}")
list(REMOVE_ITEM _prefix_path "")
set(_configure_args
    -S "${SOURCE_DIR}" -B "${BINARY_DIR}" -G "${GENERATOR}"
    "-DCMAKE_CXX_COMPILER=${CXX_COMPILER}"
    -DCMAKE_BUILD_TYPE=
    -DCMAKE_CXX_FLAGS=-O0
    "-DMMCA_SOURCE_DIR=${MMCA_SOURCE_DIR}"
    "-DMMCA_THIRD_PARTY_DIR=${DEPS_DIR}"
    -DMMCA_ENABLE_CUDA=OFF)
if(MAKE_PROGRAM)
  list(APPEND _configure_args "-DCMAKE_MAKE_PROGRAM=${MAKE_PROGRAM}")
endif()
if(_prefix_path)
  # A list does not survive a -D argument intact; an initial-cache script carries it.
  set(_init_cache "${BINARY_DIR}.init.cmake")
  file(WRITE "${_init_cache}" "set(CMAKE_PREFIX_PATH \"${_prefix_path}\" CACHE STRING \"\")\n")
  list(APPEND _configure_args -C "${_init_cache}")
endif()
if(PKG_CONFIG_DIRS)
  string(REPLACE "|" ":" _pc_path "${PKG_CONFIG_DIRS}")
  if(DEFINED ENV{PKG_CONFIG_PATH} AND NOT "$ENV{PKG_CONFIG_PATH}" STREQUAL "")
    string(APPEND _pc_path ":$ENV{PKG_CONFIG_PATH}")
  endif()
  set(ENV{PKG_CONFIG_PATH} "${_pc_path}")
  message(STATUS "PKG_CONFIG_PATH=$ENV{PKG_CONFIG_PATH}")
endif()
if(PKG_CONFIG_EXECUTABLE)
  list(APPEND _configure_args "-DPKG_CONFIG_EXECUTABLE=${PKG_CONFIG_EXECUTABLE}")
endif()

function(run_step what)
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE _rc)
  if(NOT _rc EQUAL 0)
    message(FATAL_ERROR "consumer '${NAME}': ${what} failed (${_rc})")
  endif()
endfunction()

file(REMOVE_RECURSE "${BINARY_DIR}")
run_step(configure "${CMAKE_COMMAND}" ${_configure_args})
run_step(build "${CMAKE_COMMAND}" --build "${BINARY_DIR}" --config Debug)

# Single-config generators put the program in BINARY_DIR, multi-config ones in BINARY_DIR/<config>.
find_program(_app NAMES mmca_consumer PATHS "${BINARY_DIR}" "${BINARY_DIR}/Debug" NO_DEFAULT_PATH NO_CACHE)
if(NOT _app)
  message(FATAL_ERROR "consumer '${NAME}': built, but mmca_consumer was not found under ${BINARY_DIR}")
endif()
run_step(run "${_app}")
message(STATUS "consumer '${NAME}': configured, built and ran ${_app}")
