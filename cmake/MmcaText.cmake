# MmcaText.cmake - the optional target mmca::text: mmca::mmca plus SentencePiece, for the tokenizer
# (include/mmca/text/tokenizer.hpp). SentencePiece is a compiled library, so mmca::mmca never needs
# it; mmca::text exists only where it is found (Debian: libsentencepiece-dev).
#
#   MMCA_HAVE_SENTENCEPIECE      TRUE when found
#   mmca::sentencepiece          imported target of libsentencepiece (headers + library)
#   mmca::text                   INTERFACE: mmca::mmca + mmca::sentencepiece
#
# Installed as its own export set (share/cmake/mmca/mmcaTextTargets.cmake), which mmcaConfig.cmake
# loads only when it finds SentencePiece on the consumer's machine (find_package(mmca COMPONENTS text)).
include_guard(GLOBAL)

find_package(PkgConfig QUIET)
if(PKG_CONFIG_FOUND)
  pkg_check_modules(MMCA_PC_SENTENCEPIECE QUIET sentencepiece)
endif()
find_path(MMCA_SENTENCEPIECE_INCLUDE_DIR sentencepiece_processor.h HINTS ${MMCA_PC_SENTENCEPIECE_INCLUDE_DIRS})
find_library(MMCA_SENTENCEPIECE_LIBRARY sentencepiece HINTS ${MMCA_PC_SENTENCEPIECE_LIBRARY_DIRS})
mark_as_advanced(MMCA_SENTENCEPIECE_INCLUDE_DIR MMCA_SENTENCEPIECE_LIBRARY)

if(MMCA_SENTENCEPIECE_INCLUDE_DIR AND MMCA_SENTENCEPIECE_LIBRARY)
  set(MMCA_HAVE_SENTENCEPIECE TRUE)
  add_library(mmca::sentencepiece UNKNOWN IMPORTED GLOBAL)
  set_target_properties(mmca::sentencepiece PROPERTIES
    IMPORTED_LOCATION "${MMCA_SENTENCEPIECE_LIBRARY}"
    INTERFACE_INCLUDE_DIRECTORIES "${MMCA_SENTENCEPIECE_INCLUDE_DIR}")
  add_library(mmca_text INTERFACE)
  add_library(mmca::text ALIAS mmca_text)
  set_target_properties(mmca_text PROPERTIES EXPORT_NAME text)
  target_link_libraries(mmca_text INTERFACE mmca mmca::sentencepiece)
  install(TARGETS mmca_text EXPORT mmcaTextTargets COMPONENT devel)
  install(EXPORT mmcaTextTargets NAMESPACE mmca:: DESTINATION "${MMCA_INSTALL_CMAKEDIR}" COMPONENT devel)
  message(STATUS "mmca: SentencePiece found (${MMCA_SENTENCEPIECE_LIBRARY}); target mmca::text available")
else()
  set(MMCA_HAVE_SENTENCEPIECE FALSE)
  message(STATUS "mmca: SentencePiece not found (install libsentencepiece-dev); no mmca::text, no tokenizer")
endif()
