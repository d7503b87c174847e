// mmca/vision/image.hpp - RGB images: decoding JPEG and PNG, and a content hash.
//
//   rgb_image                     8-bit RGB pixels, (height, width, 3) row-major
//   decode_image(bytes, size)     a JPEG or PNG held in memory → rgb_image
//   load_image(path)              the same for a file
//   image_hash(pixels)            64-bit FNV-1a of the shape and the pixels (encoder caches)
//
// Every image becomes RGB as PIL's Image.convert("RGB") makes it: grey (L) is replicated into
// the three channels, grey+alpha (LA) keeps the grey and drops alpha, RGBA drops alpha (no
// compositing onto a background), palette (P) images are looked up in their palette (a tRNS
// transparency entry is dropped). For PNG the result equals PIL's bit for bit; JPEG decoders
// differ in their inverse DCT and chroma upsampling (stb_image here, libjpeg-turbo in PIL), see
// docs/vision.md for the measured difference. 16-bit PNG channels keep their high byte. EXIF
// orientation is not applied (neither does Image.open). Decoding uses stb_image (JPEG baseline
// and progressive, PNG of every colour type and bit depth); other formats are refused.
//
// Errors are mmca::invalid_argument (ValueError in Python) naming the function, the argument
// ('path' or 'data'), what was seen (the path, stb_image's reason) and what was expected.
#pragma once

#include "mmca/core/error.hpp"
#include "mmca/core/hash.hpp"
#include "mmca/core/tensor.hpp"
#include "mmca/vision/detail/stb_image.hpp"

#include <cerrno>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <limits>
#include <memory>
#include <string>
#include <sys/stat.h>
#include <vector>

namespace mmca::vision {

/// An 8-bit RGB image. pixels has shape (height, width, 3), row-major: pixels(y, x, c) is channel
/// c (0 red, 1 green, 2 blue) of the pixel in row y (top to bottom) and column x (left to right).
struct rgb_image {
    tensor<std::uint8_t, 3> pixels;  // (H, W, 3)

    std::int64_t height() const { return static_cast<std::int64_t>(pixels.shape()[0]); }
    std::int64_t width() const { return static_cast<std::int64_t>(pixels.shape()[1]); }
    /// Read-only view (H, W, 3) for the functions that take pixels as a tensor_ref.
    tensor_ref<const std::uint8_t, 3> view() const {
        return tensor_ref<const std::uint8_t, 3>(pixels.data(), {height(), width(), 3});
    }
};

namespace detail {

struct stbi_free_deleter {
    void operator()(unsigned char* p) const { stbi_image_free(p); }
};

/// Decodes size bytes at data into RGB; errors are raised under `where` for `argument`, with
/// `seen_prefix` (e.g. "'photo.jpg': ") in front of what was seen.
inline rgb_image decode_rgb(const std::uint8_t* data, std::size_t size, const char* where, const char* argument,
                            const std::string& seen_prefix) {
    MMCA_CHECK_ARG(size > 0 && data != nullptr, where, argument, seen_prefix + "0 bytes", "a JPEG or PNG image");
    MMCA_CHECK_ARG(size <= static_cast<std::size_t>(std::numeric_limits<int>::max()), where, argument,
                   seen_prefix + std::to_string(size) + " bytes", "an encoded image of less than 2 GiB");
    int width = 0, height = 0, channels_in_file = 0;
    std::unique_ptr<unsigned char, stbi_free_deleter> decoded(
        stbi_load_from_memory(data, static_cast<int>(size), &width, &height, &channels_in_file, 3));
    if (!decoded) {
        const char* reason = stbi_failure_reason();
        throw invalid_argument(where, argument,
                               seen_prefix + std::to_string(size) + " bytes that stb_image could not decode (" +
                                   (reason ? std::string(reason) : std::string("no reason given")) + ")",
                               "a complete JPEG or PNG image");
    }
    MMCA_CHECK_ARG(width > 0 && height > 0, where, argument,
                   seen_prefix + "an image of " + std::to_string(width) + "x" + std::to_string(height) + " pixels",
                   "an image of at least 1x1 pixels");
    rgb_image result;
    result.pixels = tensor<std::uint8_t, 3>::from_shape(
        {static_cast<std::size_t>(height), static_cast<std::size_t>(width), std::size_t{3}});
    std::memcpy(result.pixels.data(), decoded.get(),
                static_cast<std::size_t>(width) * static_cast<std::size_t>(height) * 3);
    return result;
}

}  // namespace detail

/// Decodes a JPEG or PNG image held in memory (size bytes at data) into RGB.
inline rgb_image decode_image(const std::uint8_t* data, std::size_t size) {
    return detail::decode_rgb(data, size, "mmca::vision::decode_image", "data", "");
}

inline rgb_image decode_image(const std::vector<std::uint8_t>& bytes) { return decode_image(bytes.data(), bytes.size()); }

/// Reads and decodes a JPEG or PNG file into RGB. Errors name the path.
inline rgb_image load_image(const std::string& path) {
    const char* where = "mmca::vision::load_image";
    struct stat info {};
    if (::stat(path.c_str(), &info) != 0) {
        const int err = errno;
        throw invalid_argument(where, "path", "'" + path + "' (" + std::strerror(err) + ")",
                               "an existing JPEG or PNG file");
    }
    MMCA_CHECK_ARG(S_ISREG(info.st_mode), where, "path", "'" + path + "' (not a regular file)",
                   "an existing JPEG or PNG file");
    std::ifstream file(path, std::ios::binary);
    if (!file) {
        const int err = errno;
        throw invalid_argument(where, "path", "'" + path + "' (" + std::strerror(err) + ")", "a readable file");
    }
    std::vector<std::uint8_t> bytes(static_cast<std::size_t>(info.st_size));
    file.read(reinterpret_cast<char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
    MMCA_CHECK_ARG(file.gcount() == static_cast<std::streamsize>(bytes.size()), where, "path",
                   "'" + path + "' (read " + std::to_string(file.gcount()) + " of " + std::to_string(bytes.size()) +
                       " bytes)",
                   "a readable file");
    return detail::decode_rgb(bytes.data(), bytes.size(), where, "path", "'" + path + "': ");
}

/// 64-bit FNV-1a over the height and width (each as 8 little-endian bytes) followed by the
/// pixels in (row, column, channel) order. Equal pixels give equal hashes whatever the strides of
/// the view; an encoder cache keys on it to skip images it has already encoded.
inline std::uint64_t image_hash(tensor_ref<const std::uint8_t, 3> pixels) {
    const char* where = "mmca::vision::image_hash";
    MMCA_CHECK_ARG(pixels.shape[2] == 3 && pixels.shape[0] >= 0 && pixels.shape[1] >= 0, where, "pixels",
                   "shape " + pixels.shape_text(), "(H, W, 3)");
    std::uint64_t h = fnv1a64_u64(static_cast<std::uint64_t>(pixels.shape[0]));
    h = fnv1a64_u64(static_cast<std::uint64_t>(pixels.shape[1]), h);
    const std::int64_t W = pixels.shape[1];
    for (std::int64_t y = 0; y < pixels.shape[0]; ++y) {
        if (pixels.strides[1] == 3 && pixels.strides[2] == 1) {
            h = fnv1a64(pixels.ptr(y), static_cast<std::size_t>(W * 3), h);
        } else {
            for (std::int64_t x = 0; x < W; ++x)
                for (std::int64_t c = 0; c < 3; ++c) h = fnv1a64(&pixels(y, x, c), 1, h);
        }
    }
    return h;
}

inline std::uint64_t image_hash(const rgb_image& image) { return image_hash(image.view()); }

}  // namespace mmca::vision
