# check_installed_cuda.cmake - ctest step: `cmake --install --component python` into a fresh
# prefix, then import mmca.cuda from there (not from the build tree) and check that mmca._cuda and
# libmmca_cuda came from the prefix. Needs no GPU: mmca.cuda.available() is False without one.
#
#   cmake -DBUILD_DIR=<build> -DPREFIX=<dir> -DPYTHON=<python> -DPACKAGE_DIR=<relative site dir> -P check_installed_cuda.cmake
foreach(_var BUILD_DIR PREFIX PYTHON PACKAGE_DIR)
  if(NOT DEFINED ${_var})
    message(FATAL_ERROR "check_installed_cuda.cmake: -D${_var}=... is required")
  endif()
endforeach()
file(REMOVE_RECURSE "${PREFIX}")
execute_process(COMMAND "${CMAKE_COMMAND}" --install "${BUILD_DIR}" --prefix "${PREFIX}" --component python
                RESULT_VARIABLE _rc)
if(NOT _rc EQUAL 0)
  message(FATAL_ERROR "cmake --install ${BUILD_DIR} --component python failed (${_rc})")
endif()
set(_site "${PREFIX}/${PACKAGE_DIR}")
set(_code "import sys, os
sys.path.insert(0, sys.argv[1])
import mmca, mmca.cuda, mmca._cuda
prefix = os.path.realpath(sys.argv[1])
for m in (mmca, mmca._cuda):
    assert os.path.realpath(m.__file__).startswith(prefix), (m.__name__, m.__file__)
maps = open('/proc/self/maps').read()
lib = [l.split()[-1] for l in maps.splitlines() if 'libmmca_cuda' in l]
assert lib and all(os.path.realpath(p).startswith(prefix) for p in lib), lib
print('installed mmca.cuda imports; device available:', mmca.cuda.available())")
execute_process(COMMAND "${CMAKE_COMMAND}" -E env --unset=PYTHONPATH "${PYTHON}" -c "${_code}" "${_site}"
                RESULT_VARIABLE _rc)
if(NOT _rc EQUAL 0)
  message(FATAL_ERROR "the installed mmca.cuda did not import from ${_site} (${_rc})")
endif()
