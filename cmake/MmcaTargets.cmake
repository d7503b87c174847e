# MmcaTargets.cmake - settings for mmca's own targets (tests, benchmarks, examples, bindings).
#
#   mmca_project_target(<target>)
#
# Links <target> to mmca::mmca and compiles its C++ sources with -Wall -Wextra -Werror, plus
# -march=native when MMCA_NATIVE is ON. For CUDA sources it adds the CCCL include folder of
# CUDA 13 (when present; CMake leaves it out of the command line where nvcc already adds it
# itself) and passes -march=native to the host compiler. All of it is PRIVATE to
# <target>: nothing here reaches projects that consume mmca::mmca.
include_guard(GLOBAL)

include(CheckCXXCompilerFlag)

if(MMCA_NATIVE)
  check_cxx_compiler_flag("-march=native" MMCA_HAVE_MARCH_NATIVE)
  if(NOT MMCA_HAVE_MARCH_NATIVE)
    message(STATUS "mmca: the C++ compiler does not accept -march=native; MMCA_NATIVE has no effect")
  endif()
endif()

function(mmca_project_target tgt)
  if(NOT TARGET "${tgt}")
    message(FATAL_ERROR "mmca_project_target: '${tgt}' is not a target")
  endif()
  get_target_property(_type "${tgt}" TYPE)
  if(_type STREQUAL "INTERFACE_LIBRARY")
    message(FATAL_ERROR "mmca_project_target: '${tgt}' is an INTERFACE library; it needs sources of its own")
  endif()

  target_link_libraries("${tgt}" PRIVATE mmca::mmca)
  set_target_properties("${tgt}" PROPERTIES CXX_EXTENSIONS OFF)

  if(CMAKE_CXX_COMPILER_ID MATCHES "GNU|Clang")
    target_compile_options("${tgt}" PRIVATE $<$<COMPILE_LANGUAGE:CXX>:-Wall -Wextra -Werror>)
    # GCC 12's AVX-512 intrinsics (_mm512_max_ps, _mm512_cvtph_ps, ... as Eigen's packets and
    # mmca's kernels use them) start from a self-initialised "undefined" vector that
    # -Wmaybe-uninitialized reports once inlined: with -march=native on an AVX-512 machine every
    # attention kernel would fail -Werror. (Checked with GCC 12; newer GCCs keep the warning.)
    if(CMAKE_CXX_COMPILER_ID STREQUAL "GNU" AND CMAKE_CXX_COMPILER_VERSION VERSION_LESS 13)
      target_compile_options("${tgt}" PRIVATE $<$<COMPILE_LANGUAGE:CXX>:-Wno-maybe-uninitialized>)
    endif()
  elseif(MSVC)
    target_compile_options("${tgt}" PRIVATE $<$<COMPILE_LANGUAGE:CXX>:/W4 /WX>)
  endif()

  if(MMCA_NATIVE AND MMCA_HAVE_MARCH_NATIVE)
    target_compile_options("${tgt}" PRIVATE
      $<$<COMPILE_LANGUAGE:CXX>:-march=native>
      $<$<COMPILE_LANGUAGE:CUDA>:-Xcompiler=-march=native>)
  endif()

  if(MMCA_ENABLE_CUDA AND MMCA_CUDA_CCCL_INCLUDE_DIR)
    target_include_directories("${tgt}" SYSTEM PRIVATE $<$<COMPILE_LANGUAGE:CUDA>:${MMCA_CUDA_CCCL_INCLUDE_DIR}>)
  endif()
endfunction()
