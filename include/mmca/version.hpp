// mmca/version.hpp - library version (kept equal to the CMake project version).
#pragma once

#define MMCA_VERSION_MAJOR 0
#define MMCA_VERSION_MINOR 1
#define MMCA_VERSION_PATCH 0
#define MMCA_VERSION_STRING "0.1.0"

namespace mmca {
inline constexpr const char* version = MMCA_VERSION_STRING;
}  // namespace mmca
