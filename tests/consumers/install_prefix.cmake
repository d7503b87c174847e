# install_prefix.cmake - ctest step: install the library part of the current build (install
# component "devel": headers, CMake package, mmca.pc) into a fresh prefix.
#
#   cmake -DBUILD_DIR=<mmca build> -DPREFIX=<empty dir to create> [-DCONFIG=<config>] -P install_prefix.cmake
foreach(_var BUILD_DIR PREFIX)
  if(NOT DEFINED ${_var})
    message(FATAL_ERROR "install_prefix.cmake: -D${_var}=... is required")
  endif()
endforeach()

file(REMOVE_RECURSE "${PREFIX}")
set(_config_args "")
if(CONFIG)
  set(_config_args --config "${CONFIG}")
endif()
execute_process(COMMAND "${CMAKE_COMMAND}" --install "${BUILD_DIR}" --prefix "${PREFIX}" --component devel ${_config_args}
                RESULT_VARIABLE _rc)
if(NOT _rc EQUAL 0)
  message(FATAL_ERROR "cmake --install ${BUILD_DIR} --prefix ${PREFIX} failed (${_rc})")
endif()

# What the consumers rely on must be there.
file(GLOB_RECURSE _config RELATIVE "${PREFIX}" "${PREFIX}/*/mmcaConfig.cmake")
file(GLOB_RECURSE _pc RELATIVE "${PREFIX}" "${PREFIX}/*/mmca.pc")
foreach(_required "include/mmca/mmca.hpp" "include/mmca/version.hpp")
  if(NOT EXISTS "${PREFIX}/${_required}")
    message(FATAL_ERROR "installed tree lacks ${_required}")
  endif()
endforeach()
if(NOT _config OR NOT _pc)
  message(FATAL_ERROR "installed tree lacks mmcaConfig.cmake (${_config}) or mmca.pc (${_pc})")
endif()
file(GLOB_RECURSE _stray RELATIVE "${PREFIX}/include" "${PREFIX}/include/*")
list(FILTER _stray EXCLUDE REGEX "\\.(hpp|cuh)$")
if(_stray)
  message(FATAL_ERROR "installed include/ holds files other than *.hpp/*.cuh: ${_stray}")
endif()
message(STATUS "installed to ${PREFIX}: ${_config}, ${_pc}")
