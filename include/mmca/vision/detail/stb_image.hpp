// mmca/vision/detail/stb_image.hpp - stb_image (Debian libstb-dev: <stb/stb_image.h>), compiled into
// every translation unit that decodes images, so that mmca stays header-only.
//
// By default the implementation is compiled here with STB_IMAGE_STATIC: every stbi_* function has
// internal linkage, so any number of translation units may include mmca's image headers without
// duplicate symbols. Only the JPEG and PNG decoders are compiled (STBI_ONLY_JPEG, STBI_ONLY_PNG),
// and files are read by mmca itself (STBI_NO_STDIO), which names the path in its errors.
//
// A program that compiles stb_image itself (STB_IMAGE_IMPLEMENTATION in one of its own sources)
// defines MMCA_EXTERNAL_STB_IMAGE before including mmca: mmca then only includes the declarations
// and uses that implementation. Without it, <stb/stb_image.h> must not be included before mmca's
// image headers in the same translation unit (the check below says so).
#pragma once

#if defined(MMCA_EXTERNAL_STB_IMAGE)

#include <stb/stb_image.h>

#else

#if defined(STBI_INCLUDE_STB_IMAGE_H) && !defined(MMCA_STB_IMAGE_COMPILED)
#error "mmca/vision: <stb/stb_image.h> was included before mmca's image headers; include mmca first, or define MMCA_EXTERNAL_STB_IMAGE and compile stb_image yourself"
#endif

#if !defined(MMCA_STB_IMAGE_COMPILED)
#define MMCA_STB_IMAGE_COMPILED 1

#define STB_IMAGE_STATIC
#define STBI_ONLY_JPEG
#define STBI_ONLY_PNG
#define STBI_NO_STDIO
#define STBI_NO_LINEAR
#define STBI_NO_HDR
#define STB_IMAGE_IMPLEMENTATION

// stb_image is third-party C code: its warnings are not mmca's.
#if defined(__clang__)
#pragma clang diagnostic push
#pragma clang diagnostic ignored "-Wunused-function"
#pragma clang diagnostic ignored "-Wimplicit-fallthrough"
#pragma clang diagnostic ignored "-Wsign-compare"
#pragma clang diagnostic ignored "-Wunused-parameter"
#pragma clang diagnostic ignored "-Wmissing-field-initializers"
#pragma clang diagnostic ignored "-Wshadow"
#pragma clang diagnostic ignored "-Wconversion"
#pragma clang diagnostic ignored "-Wsign-conversion"
#pragma clang diagnostic ignored "-Wcast-qual"
#pragma clang diagnostic ignored "-Wold-style-cast"
#elif defined(__GNUC__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wunused-function"
#pragma GCC diagnostic ignored "-Wimplicit-fallthrough"
#pragma GCC diagnostic ignored "-Wsign-compare"
#pragma GCC diagnostic ignored "-Wunused-parameter"
#pragma GCC diagnostic ignored "-Wmissing-field-initializers"
#pragma GCC diagnostic ignored "-Wshadow"
#pragma GCC diagnostic ignored "-Wconversion"
#pragma GCC diagnostic ignored "-Wsign-conversion"
#pragma GCC diagnostic ignored "-Wcast-qual"
#pragma GCC diagnostic ignored "-Wold-style-cast"
#endif

#include <stb/stb_image.h>

#if defined(__clang__)
#pragma clang diagnostic pop
#elif defined(__GNUC__)
#pragma GCC diagnostic pop
#endif

#undef STB_IMAGE_IMPLEMENTATION

#endif  // MMCA_STB_IMAGE_COMPILED

#endif  // MMCA_EXTERNAL_STB_IMAGE
