# MmcaInstall.cmake - `cmake --install` rules: headers, the exported CMake package and mmca.pc.
#
# Layout under the install prefix (everything is architecture independent: mmca is header-only):
#   include/mmca/...                        public headers (*.hpp, *.cuh)
#   share/cmake/mmca/mmcaConfig.cmake       find_package(mmca CONFIG) entry point
#   share/cmake/mmca/mmcaConfigVersion.cmake
#   share/cmake/mmca/mmcaTargets.cmake      imported target mmca::mmca
#   share/pkgconfig/mmca.pc                 relocatable (paths relative to the .pc file)
# All of it is the install component "devel" (`cmake --install <build> --component devel`);
# the Python package is the component "python" (python/CMakeLists.txt).
include_guard(GLOBAL)

include(CMakePackageConfigHelpers)

set(MMCA_INSTALL_CMAKEDIR "${CMAKE_INSTALL_DATADIR}/cmake/mmca" CACHE STRING
    "Where the mmca CMake package files are installed (relative to the prefix)")
set(MMCA_INSTALL_PKGCONFIGDIR "${CMAKE_INSTALL_DATADIR}/pkgconfig" CACHE STRING
    "Where mmca.pc is installed (relative to the prefix)")
mark_as_advanced(MMCA_INSTALL_CMAKEDIR MMCA_INSTALL_PKGCONFIGDIR)

install(DIRECTORY "${PROJECT_SOURCE_DIR}/include/"
        DESTINATION "${CMAKE_INSTALL_INCLUDEDIR}"
        COMPONENT devel
        FILES_MATCHING PATTERN "*.hpp" PATTERN "*.cuh")

install(TARGETS mmca EXPORT mmcaTargets COMPONENT devel)
install(EXPORT mmcaTargets NAMESPACE mmca:: DESTINATION "${MMCA_INSTALL_CMAKEDIR}" COMPONENT devel)

configure_package_config_file(
  "${PROJECT_SOURCE_DIR}/cmake/mmcaConfig.cmake.in"
  "${PROJECT_BINARY_DIR}/mmcaConfig.cmake"
  INSTALL_DESTINATION "${MMCA_INSTALL_CMAKEDIR}"
  NO_SET_AND_CHECK_MACRO)
write_basic_package_version_file(
  "${PROJECT_BINARY_DIR}/mmcaConfigVersion.cmake"
  VERSION "${PROJECT_VERSION}"
  COMPATIBILITY SameMajorVersion
  ARCH_INDEPENDENT)
install(FILES "${PROJECT_BINARY_DIR}/mmcaConfig.cmake" "${PROJECT_BINARY_DIR}/mmcaConfigVersion.cmake"
        DESTINATION "${MMCA_INSTALL_CMAKEDIR}" COMPONENT devel)

# pkg-config: every path is written relative to ${pcfiledir}, so the installed tree can move.
if(IS_ABSOLUTE "${MMCA_INSTALL_PKGCONFIGDIR}" OR IS_ABSOLUTE "${CMAKE_INSTALL_INCLUDEDIR}")
  message(FATAL_ERROR "mmca: MMCA_INSTALL_PKGCONFIGDIR and CMAKE_INSTALL_INCLUDEDIR must be relative "
                      "to the install prefix for the relocatable mmca.pc")
endif()
file(RELATIVE_PATH MMCA_PC_TO_PREFIX "/prefix/${MMCA_INSTALL_PKGCONFIGDIR}" "/prefix")
string(REGEX REPLACE "/$" "" MMCA_PC_TO_PREFIX "${MMCA_PC_TO_PREFIX}")
set(MMCA_PC_OPENMP_FLAGS "")
if(OpenMP_CXX_FOUND)
  set(MMCA_PC_OPENMP_FLAGS "${OpenMP_CXX_FLAGS}")
endif()
configure_file("${PROJECT_SOURCE_DIR}/cmake/mmca.pc.in" "${PROJECT_BINARY_DIR}/mmca.pc" @ONLY)
install(FILES "${PROJECT_BINARY_DIR}/mmca.pc" DESTINATION "${MMCA_INSTALL_PKGCONFIGDIR}" COMPONENT devel)

# The compiled CUDA library (when built): lib/libmmca_cuda.so and its own export set
# (share/cmake/mmca/mmcaCudaTargets.cmake, target mmca::cuda), which mmcaConfig.cmake includes for
# the component "cuda". Consumers compile with their C++ compiler only; the library finds the CUDA
# runtime it was built against through its RUNPATH.
if(TARGET mmca_cuda)
  include(GNUInstallDirs)
  set_target_properties(mmca_cuda PROPERTIES EXPORT_NAME cuda)
  if(CUDAToolkit_LIBRARY_DIR)
    set_property(TARGET mmca_cuda APPEND PROPERTY INSTALL_RPATH "${CUDAToolkit_LIBRARY_DIR}")
  endif()
  install(TARGETS mmca_cuda EXPORT mmcaCudaTargets
          LIBRARY DESTINATION "${CMAKE_INSTALL_LIBDIR}" COMPONENT devel)
  install(EXPORT mmcaCudaTargets NAMESPACE mmca:: DESTINATION "${MMCA_INSTALL_CMAKEDIR}" COMPONENT devel)
endif()
