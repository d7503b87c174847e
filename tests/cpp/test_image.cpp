// Images: decoding (JPEG/PNG in every colour type), PIL-style bicubic resizing, centre crop,
// normalisation and hashing. Expected values are worked out by hand in the comments; PIL parity
// on many sizes and modes is in python/tests/test_image.py.
#include "mmca/vision/image.hpp"
#include "mmca/vision/image_preprocess.hpp"
#include "mmca/vision/image_resize.hpp"

// stb_image_write makes the test images; static, so it cannot clash with another test file.
#define STB_IMAGE_WRITE_STATIC
#define STB_IMAGE_WRITE_IMPLEMENTATION
#if defined(__GNUC__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wunused-function"
#pragma GCC diagnostic ignored "-Wmissing-field-initializers"
#pragma GCC diagnostic ignored "-Wsign-compare"
#endif
#include <stb/stb_image_write.h>
#if defined(__GNUC__)
#pragma GCC diagnostic pop
#endif

#include <gtest/gtest.h>

#include <array>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <unistd.h>
#include <vector>

namespace {

using mmca::vision::rgb_image;
namespace fs = std::filesystem;

// ------------------------------------------------------------------------------------------
// Helpers
// ------------------------------------------------------------------------------------------

std::string temp_path(const std::string& name) {
    const fs::path dir = fs::temp_directory_path() / ("mmca_test_image_" + std::to_string(::getpid()));
    fs::create_directories(dir);
    return (dir / name).string();
}

void write_bytes(const std::string& path, const std::vector<std::uint8_t>& bytes) {
    std::ofstream f(path, std::ios::binary);
    f.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
}

void append_to_vector(void* context, void* data, int size) {
    auto* v = static_cast<std::vector<std::uint8_t>*>(context);
    const auto* p = static_cast<const std::uint8_t*>(data);
    v->insert(v->end(), p, p + size);
}

/// A PNG of w × h pixels with `comp` channels (1 grey, 2 grey+alpha, 3 RGB, 4 RGBA), from stb_image_write.
std::vector<std::uint8_t> encode_png(int w, int h, int comp, const std::vector<std::uint8_t>& pixels) {
    std::vector<std::uint8_t> out;
    EXPECT_NE(stbi_write_png_to_func(append_to_vector, &out, w, h, comp, pixels.data(), w * comp), 0);
    return out;
}

std::vector<std::uint8_t> encode_jpeg(int w, int h, int comp, const std::vector<std::uint8_t>& pixels, int quality) {
    std::vector<std::uint8_t> out;
    EXPECT_NE(stbi_write_jpg_to_func(append_to_vector, &out, w, h, comp, pixels.data(), quality), 0);
    return out;
}

std::uint32_t crc32(const std::uint8_t* p, std::size_t n) {
    std::uint32_t c = 0xffffffffu;
    for (std::size_t i = 0; i < n; ++i) {
        c ^= p[i];
        for (int k = 0; k < 8; ++k) c = (c >> 1) ^ (0xedb88320u & (0u - (c & 1u)));
    }
    return ~c;
}

void put_be32(std::vector<std::uint8_t>& v, std::uint32_t x) {
    for (int s = 24; s >= 0; s -= 8) v.push_back(static_cast<std::uint8_t>(x >> s));
}

void put_chunk(std::vector<std::uint8_t>& png, const char* type, const std::vector<std::uint8_t>& data) {
    put_be32(png, static_cast<std::uint32_t>(data.size()));
    std::vector<std::uint8_t> body(type, type + 4);
    body.insert(body.end(), data.begin(), data.end());
    png.insert(png.end(), body.begin(), body.end());
    put_be32(png, crc32(body.data(), body.size()));
}

/// An 8-bit PNG written chunk by chunk: colour type 3 (palette) with `palette` (RGB triples)
/// and optional tRNS alphas, or any colour type with raw (unfiltered) rows.
std::vector<std::uint8_t> handmade_png(std::uint32_t w, std::uint32_t h, std::uint8_t color_type,
                                       const std::vector<std::uint8_t>& rows_with_filter_bytes,
                                       const std::vector<std::uint8_t>& palette = {},
                                       const std::vector<std::uint8_t>& alphas = {}) {
    std::vector<std::uint8_t> png{0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
    std::vector<std::uint8_t> ihdr;
    put_be32(ihdr, w);
    put_be32(ihdr, h);
    ihdr.insert(ihdr.end(), {8, color_type, 0, 0, 0});
    put_chunk(png, "IHDR", ihdr);
    if (!palette.empty()) put_chunk(png, "PLTE", palette);
    if (!alphas.empty()) put_chunk(png, "tRNS", alphas);
    int zlen = 0;
    std::vector<std::uint8_t> raw = rows_with_filter_bytes;
    unsigned char* z = stbi_zlib_compress(raw.data(), static_cast<int>(raw.size()), &zlen, 8);
    put_chunk(png, "IDAT", std::vector<std::uint8_t>(z, z + zlen));
    STBIW_FREE(z);
    put_chunk(png, "IEND", {});
    return png;
}

std::uint8_t pattern(int x, int y, int c) { return static_cast<std::uint8_t>((x * 37 + y * 91 + c * 53) % 256); }

/// Runs f and returns the message of the mmca::invalid_argument it throws (fails if none).
template <class F>
std::string error_of(F&& f) {
    try {
        f();
    } catch (const mmca::invalid_argument& e) {
        return e.what();
    }
    ADD_FAILURE() << "no mmca::invalid_argument was thrown";
    return "";
}

rgb_image constant_image(std::int64_t h, std::int64_t w, std::array<std::uint8_t, 3> rgb) {
    rgb_image img;
    img.pixels = mmca::tensor<std::uint8_t, 3>::from_shape({static_cast<std::size_t>(h), static_cast<std::size_t>(w), 3});
    for (std::int64_t y = 0; y < h; ++y)
        for (std::int64_t x = 0; x < w; ++x)
            for (int c = 0; c < 3; ++c) img.pixels(y, x, c) = rgb[static_cast<std::size_t>(c)];
    return img;
}

rgb_image pattern_image(std::int64_t h, std::int64_t w) {
    rgb_image img;
    img.pixels = mmca::tensor<std::uint8_t, 3>::from_shape({static_cast<std::size_t>(h), static_cast<std::size_t>(w), 3});
    for (std::int64_t y = 0; y < h; ++y)
        for (std::int64_t x = 0; x < w; ++x)
            for (int c = 0; c < 3; ++c) img.pixels(y, x, c) = pattern(static_cast<int>(x), static_cast<int>(y), c);
    return img;
}

// ------------------------------------------------------------------------------------------
// Decoding
// ------------------------------------------------------------------------------------------

// Every colour type becomes RGB the way PIL's convert("RGB") does: grey replicated, alpha dropped.
TEST(ImageDecode, PngColourTypesBecomeRgb) {
    const int w = 5, h = 3;
    for (int comp = 1; comp <= 4; ++comp) {
        std::vector<std::uint8_t> src(static_cast<std::size_t>(w * h * comp));
        for (int y = 0; y < h; ++y)
            for (int x = 0; x < w; ++x)
                for (int c = 0; c < comp; ++c) src[static_cast<std::size_t>((y * w + x) * comp + c)] = pattern(x, y, c);
        const rgb_image img = mmca::vision::decode_image(encode_png(w, h, comp, src));
        ASSERT_EQ(img.height(), h);
        ASSERT_EQ(img.width(), w);
        for (int y = 0; y < h; ++y)
            for (int x = 0; x < w; ++x)
                for (int c = 0; c < 3; ++c) {
                    // comp 1, 2: grey is channel 0 of the source; comp 3, 4: channel c.
                    const std::uint8_t expected = comp <= 2 ? pattern(x, y, 0) : pattern(x, y, c);
                    ASSERT_EQ(img.pixels(y, x, c), expected) << "comp " << comp << " at " << y << "," << x << "," << c;
                }
    }
}

TEST(ImageDecode, PalettePngIsLookedUpAndTransparencyDropped) {
    // 3 × 2 image with indices [[0 1 2] [2 1 0]] into red, green, (10, 20, 30); index 1 transparent.
    const std::vector<std::uint8_t> palette{255, 0, 0, 0, 255, 0, 10, 20, 30};
    const std::vector<std::uint8_t> rows{0, 0, 1, 2, 0, 2, 1, 0};  // a filter byte (0) before each row
    for (bool with_alpha : {false, true}) {
        const auto png = handmade_png(3, 2, 3, rows, palette, with_alpha ? std::vector<std::uint8_t>{255, 0, 128}
                                                                         : std::vector<std::uint8_t>{});
        const rgb_image img = mmca::vision::decode_image(png);
        ASSERT_EQ(img.height(), 2);
        ASSERT_EQ(img.width(), 3);
        const int index[2][3] = {{0, 1, 2}, {2, 1, 0}};
        for (int y = 0; y < 2; ++y)
            for (int x = 0; x < 3; ++x)
                for (int c = 0; c < 3; ++c)
                    EXPECT_EQ(img.pixels(y, x, c), palette[static_cast<std::size_t>(index[y][x] * 3 + c)]);
    }
}

TEST(ImageDecode, FileAndMemoryAgree) {
    std::vector<std::uint8_t> src(7 * 4 * 3);
    for (std::size_t i = 0; i < src.size(); ++i) src[i] = static_cast<std::uint8_t>(i * 5);
    const auto png = encode_png(7, 4, 3, src);
    const std::string path = temp_path("rgb.png");
    write_bytes(path, png);
    const rgb_image a = mmca::vision::load_image(path);
    const rgb_image b = mmca::vision::decode_image(png.data(), png.size());
    EXPECT_EQ(a.pixels, b.pixels);
    EXPECT_EQ(std::vector<std::uint8_t>(a.pixels.begin(), a.pixels.end()), src);
}

// JPEG is lossy: a flat image decodes to its colour within the quantisation error.
TEST(ImageDecode, JpegGreyAndColour) {
    const int w = 16, h = 16;
    std::vector<std::uint8_t> grey(static_cast<std::size_t>(w * h), 77);
    std::vector<std::uint8_t> rgb(static_cast<std::size_t>(w * h * 3));
    for (std::size_t i = 0; i < rgb.size(); i += 3) rgb[i] = 200, rgb[i + 1] = 120, rgb[i + 2] = 40;
    const rgb_image g = mmca::vision::decode_image(encode_jpeg(w, h, 1, grey, 95));
    const rgb_image c = mmca::vision::decode_image(encode_jpeg(w, h, 3, rgb, 95));
    ASSERT_EQ(g.height(), h);
    ASSERT_EQ(c.width(), w);
    for (int y = 0; y < h; ++y)
        for (int x = 0; x < w; ++x) {
            for (int k = 0; k < 3; ++k) EXPECT_NEAR(g.pixels(y, x, k), 77, 1);
            EXPECT_NEAR(c.pixels(y, x, 0), 200, 3);
            EXPECT_NEAR(c.pixels(y, x, 1), 120, 3);
            EXPECT_NEAR(c.pixels(y, x, 2), 40, 3);
        }
}

TEST(ImageDecode, MissingFileNamesThePath) {
    const std::string path = temp_path("does_not_exist.png");
    const std::string msg = error_of([&] { mmca::vision::load_image(path); });
    EXPECT_NE(msg.find("mmca::vision::load_image"), std::string::npos) << msg;
    EXPECT_NE(msg.find("argument 'path'"), std::string::npos) << msg;
    EXPECT_NE(msg.find(path), std::string::npos) << msg;
    EXPECT_NE(msg.find("No such file"), std::string::npos) << msg;
}

TEST(ImageDecode, DirectoryIsRefused) {
    const std::string dir = fs::path(temp_path("x")).parent_path().string();
    const std::string msg = error_of([&] { mmca::vision::load_image(dir); });
    EXPECT_NE(msg.find("not a regular file"), std::string::npos) << msg;
}

TEST(ImageDecode, TruncatedPngNamesPathAndReason) {
    std::vector<std::uint8_t> src(32 * 32 * 3);
    for (std::size_t i = 0; i < src.size(); ++i) src[i] = static_cast<std::uint8_t>(i * 7 + i / 97);
    auto png = encode_png(32, 32, 3, src);
    png.resize(png.size() / 2);
    const std::string path = temp_path("truncated.png");
    write_bytes(path, png);
    const std::string msg = error_of([&] { mmca::vision::load_image(path); });
    EXPECT_NE(msg.find("argument 'path'"), std::string::npos) << msg;
    EXPECT_NE(msg.find(path), std::string::npos) << msg;
    EXPECT_NE(msg.find("could not decode ("), std::string::npos) << msg;  // followed by stb_image's reason
    // From memory the argument is 'data'.
    const std::string mem = error_of([&] { mmca::vision::decode_image(png); });
    EXPECT_NE(mem.find("mmca::vision::decode_image: argument 'data'"), std::string::npos) << mem;
}

TEST(ImageDecode, TruncatedJpegIsRefused) {
    std::vector<std::uint8_t> src(64 * 64 * 3);
    for (std::size_t i = 0; i < src.size(); ++i) src[i] = static_cast<std::uint8_t>(i * 13 + i / 101);
    auto jpg = encode_jpeg(64, 64, 3, src, 90);
    jpg.resize(jpg.size() / 3);
    const std::string msg = error_of([&] { mmca::vision::decode_image(jpg); });
    EXPECT_NE(msg.find("argument 'data'"), std::string::npos) << msg;
}

TEST(ImageDecode, GarbageAndEmptyFiles) {
    const std::string garbage = temp_path("garbage.jpg");
    write_bytes(garbage, std::vector<std::uint8_t>{'n', 'o', 't', ' ', 'a', 'n', ' ', 'i', 'm', 'a', 'g', 'e'});
    std::string msg = error_of([&] { mmca::vision::load_image(garbage); });
    EXPECT_NE(msg.find(garbage), std::string::npos) << msg;
    EXPECT_NE(msg.find("12 bytes that stb_image could not decode"), std::string::npos) << msg;

    const std::string empty = temp_path("empty.png");
    write_bytes(empty, {});
    msg = error_of([&] { mmca::vision::load_image(empty); });
    EXPECT_NE(msg.find(empty), std::string::npos) << msg;
    EXPECT_NE(msg.find("0 bytes"), std::string::npos) << msg;

    msg = error_of([&] { mmca::vision::decode_image(nullptr, 0); });
    EXPECT_NE(msg.find("argument 'data': got 0 bytes"), std::string::npos) << msg;
}

TEST(ImageDecode, ZeroSizedPngIsRefused) {
    // A well-formed PNG whose header says 0 × 2 pixels.
    const auto png = handmade_png(0, 2, 2, std::vector<std::uint8_t>{0, 0});
    const std::string path = temp_path("zero.png");
    write_bytes(path, png);
    const std::string msg = error_of([&] { mmca::vision::load_image(path); });
    EXPECT_NE(msg.find(path), std::string::npos) << msg;
    EXPECT_NE(msg.find("0-pixel"), std::string::npos) << msg;
}

// ------------------------------------------------------------------------------------------
// Resizing
// ------------------------------------------------------------------------------------------

TEST(ImageResize, KernelValues) {
    using mmca::vision::detail::bicubic_kernel;
    // k(x) = 1.5|x|³ − 2.5|x|² + 1 for |x| < 1, −0.5(|x|³ − 5|x|² + 8|x| − 4) for 1 <= |x| < 2.
    EXPECT_DOUBLE_EQ(bicubic_kernel(0.0), 1.0);
    EXPECT_DOUBLE_EQ(bicubic_kernel(0.5), 0.5625);
    EXPECT_DOUBLE_EQ(bicubic_kernel(-0.5), 0.5625);
    EXPECT_DOUBLE_EQ(bicubic_kernel(1.0), 0.0);
    EXPECT_DOUBLE_EQ(bicubic_kernel(1.5), -0.0625);
    EXPECT_DOUBLE_EQ(bicubic_kernel(2.0), 0.0);
    EXPECT_DOUBLE_EQ(bicubic_kernel(3.0), 0.0);
}

TEST(ImageResize, TapsOfAnUpscaleAndADownscale) {
    // 4 → 8: output 3 is centred on 1.75; taps 0..3 at distances −1.25, −0.25, 0.75, 1.75:
    // k = −0.0703125, 0.8671875, 0.2265625, −0.0234375 (sum 1), times 2^22.
    auto up = mmca::vision::detail::bicubic_taps(4, 8, 3, 1);
    ASSERT_EQ(up.start[0], 0);
    ASSERT_EQ(up.length[0], 4);
    EXPECT_EQ(up.weights[0], -294912);
    EXPECT_EQ(up.weights[1], 3637248);
    EXPECT_EQ(up.weights[2], 950272);
    EXPECT_EQ(up.weights[3], -98304);
    // 8 → 2 (scale 4): the kernel is widened 4 times (support 8); output 0 is centred on 2 and
    // uses inputs [0, 8) with weights k((i − 1.5)/4): the antialiasing filter spans all of them.
    auto down = mmca::vision::detail::bicubic_taps(8, 2, 0, 2);
    EXPECT_EQ(down.ksize, 8 * 2 + 1);
    EXPECT_EQ(down.start[0], 0);
    EXPECT_EQ(down.length[0], 8);
    EXPECT_EQ(down.start[1], 0);
    EXPECT_EQ(down.length[1], 8);
}

TEST(ImageResize, StepEdgeUpscaledByHand) {
    // The row [0 0 255 255] widened to 8: output 3 = 255·(0.2265625 − 0.0234375) = 51.8 → 52 in
    // fixed point ((255·851968 + 2^21) >> 22); by symmetry output 4 = 255 − 52 = 203.
    rgb_image img = constant_image(1, 4, {0, 0, 0});
    for (int x = 2; x < 4; ++x)
        for (int c = 0; c < 3; ++c) img.pixels(0, x, c) = 255;
    const auto out = mmca::vision::resize_bicubic(img.view(), 1, 8, 1);
    ASSERT_EQ(out.shape()[1], 8u);
    for (int c = 0; c < 3; ++c) {
        EXPECT_EQ(out(0, 0, c), 0);
        EXPECT_EQ(out(0, 3, c), 52);
        EXPECT_EQ(out(0, 4, c), 203);
        EXPECT_EQ(out(0, 7, c), 255);
    }
}

TEST(ImageResize, ConstantStaysConstant) {
    const std::array<std::array<std::int64_t, 4>, 7> cases{{
        {300, 200, 448, 672}, {200, 300, 672, 448}, {1, 9, 1, 448}, {9, 1, 5, 3}, {1, 1, 7, 3}, {97, 131, 31, 1000}, {80, 100, 448, 448},
    }};
    for (const auto& [h, w, oh, ow] : cases) {
        const rgb_image img = constant_image(h, w, {17, 128, 250});
        const auto out = mmca::vision::resize_bicubic(img.view(), oh, ow, 2);
        ASSERT_EQ(out.shape()[0], static_cast<std::size_t>(oh));
        ASSERT_EQ(out.shape()[1], static_cast<std::size_t>(ow));
        for (std::int64_t y = 0; y < oh; ++y)
            for (std::int64_t x = 0; x < ow; ++x) {
                ASSERT_EQ(out(y, x, 0), 17) << h << "x" << w << " → " << oh << "x" << ow;
                ASSERT_EQ(out(y, x, 1), 128);
                ASSERT_EQ(out(y, x, 2), 250);
            }
    }
}

TEST(ImageResize, SameSizeIsTheIdentity) {
    const rgb_image img = pattern_image(13, 11);
    EXPECT_EQ(mmca::vision::resize_bicubic(img.view(), 13, 11), img.pixels);
}

TEST(ImageResize, WindowEqualsCropOfFullResize) {
    const rgb_image img = pattern_image(37, 53);
    for (const auto& [oh, ow] : std::array<std::array<std::int64_t, 2>, 3>{{{20, 30}, {80, 90}, {37, 20}}}) {
        const auto full = mmca::vision::resize_bicubic(img.view(), oh, ow, 1);
        const mmca::vision::pixel_window win{3, 5, oh - 7, ow - 9};
        const auto part = mmca::vision::resize_bicubic(img.view(), oh, ow, win, 2);
        for (std::int64_t y = 0; y < win.height; ++y)
            for (std::int64_t x = 0; x < win.width; ++x)
                for (int c = 0; c < 3; ++c) ASSERT_EQ(part(y, x, c), full(y + win.top, x + win.left, c));
    }
}

TEST(ImageResize, StridedInputEqualsContiguous) {
    // The same pixels seen through a (W, H, 3) buffer transposed into (H, W, 3) strides.
    const rgb_image img = pattern_image(21, 34);
    std::vector<std::uint8_t> transposed(21 * 34 * 3);
    for (int y = 0; y < 21; ++y)
        for (int x = 0; x < 34; ++x)
            for (int c = 0; c < 3; ++c) transposed[static_cast<std::size_t>((x * 21 + y) * 3 + c)] = img.pixels(y, x, c);
    const mmca::tensor_ref<const std::uint8_t, 3> view(transposed.data(), {21, 34, 3}, {3, 21 * 3, 1});
    EXPECT_EQ(mmca::vision::resize_bicubic(view, 15, 50), mmca::vision::resize_bicubic(img.view(), 15, 50));
    EXPECT_EQ(mmca::vision::image_hash(view), mmca::vision::image_hash(img));
}

TEST(ImageResize, BadArguments) {
    const rgb_image img = pattern_image(4, 4);
    std::string msg = error_of([&] { mmca::vision::resize_bicubic(img.view(), 0, 4); });
    EXPECT_NE(msg.find("argument 'out_height': got 0"), std::string::npos) << msg;
    msg = error_of([&] { mmca::vision::resize_bicubic(img.view(), 8, 8, mmca::vision::pixel_window{4, 0, 5, 8}); });
    EXPECT_NE(msg.find("argument 'window'"), std::string::npos) << msg;
    const mmca::tensor_ref<const std::uint8_t, 3> empty(img.pixels.data(), {0, 4, 3});
    msg = error_of([&] { mmca::vision::resize_bicubic(empty, 2, 2); });
    EXPECT_NE(msg.find("argument 'src': got shape [0, 4, 3]"), std::string::npos) << msg;
}

// ------------------------------------------------------------------------------------------
// Preprocessing
// ------------------------------------------------------------------------------------------

TEST(ImagePreprocess, ShortestEdgeSizes) {
    using mmca::vision::shortest_edge_size;
    using hw = std::array<std::int64_t, 2>;
    EXPECT_EQ(shortest_edge_size(200, 300, 448), (hw{448, 672}));   // 448·300/200 = 672
    EXPECT_EQ(shortest_edge_size(300, 200, 448), (hw{672, 448}));
    EXPECT_EQ(shortest_edge_size(131, 97, 448), (hw{605, 448}));    // 448·131/97 = 605.03
    EXPECT_EQ(shortest_edge_size(333, 1000, 448), (hw{448, 1345}));  // 448·1000/333 = 1345.35
    EXPECT_EQ(shortest_edge_size(480, 640, 224), (hw{224, 298}));   // 224·640/480 = 298.67 (truncated)
    EXPECT_EQ(shortest_edge_size(80, 100, 448), (hw{448, 560}));
    EXPECT_EQ(shortest_edge_size(5, 5, 3), (hw{3, 3}));
}

TEST(ImagePreprocess, CropOffsets) {
    using mmca::vision::center_crop_offset;
    EXPECT_EQ(center_crop_offset(672, 448), 112);
    EXPECT_EQ(center_crop_offset(605, 448), 78);  // 157 // 2: floor (torchvision would round 78.5 to 78 too)
    EXPECT_EQ(center_crop_offset(451, 448), 1);   // 3 // 2 = 1 (torchvision: round(1.5) = 2)
    EXPECT_EQ(center_crop_offset(448, 448), 0);
    EXPECT_EQ(center_crop_offset(5, 8), -1);      // padded: the image starts (8 − 5) // 2 = 1 rows down
    EXPECT_EQ(center_crop_offset(4, 8), -2);
}

TEST(ImagePreprocess, CropKeepsTheCentre) {
    // A 6 × 6 image at shortest edge 6 (no resize) cropped to 3 × 4 starts at ((6−3)//2, (6−4)//2) = (1, 1).
    const rgb_image img = pattern_image(6, 6);
    mmca::vision::preprocess_options o;
    o.size = 6;
    o.crop_height = 3;
    o.crop_width = 4;
    const auto out = mmca::vision::resize_and_crop(img.view(), o);
    ASSERT_EQ(out.shape()[0], 3u);
    ASSERT_EQ(out.shape()[1], 4u);
    for (int y = 0; y < 3; ++y)
        for (int x = 0; x < 4; ++x)
            for (int c = 0; c < 3; ++c) EXPECT_EQ(out(y, x, c), pattern(x + 1, y + 1, c));
}

TEST(ImagePreprocess, SmallImagesArePaddedWithZeros) {
    // 4 × 4 at shortest edge 4 into a 7 × 6 crop: the image sits at ((7−4)//2, (6−4)//2) = (1, 1).
    const rgb_image img = pattern_image(4, 4);
    mmca::vision::preprocess_options o;
    o.size = 4;
    o.crop_height = 7;
    o.crop_width = 6;
    const auto out = mmca::vision::resize_and_crop(img.view(), o);
    ASSERT_EQ(out.shape()[0], 7u);
    ASSERT_EQ(out.shape()[1], 6u);
    for (int y = 0; y < 7; ++y)
        for (int x = 0; x < 6; ++x)
            for (int c = 0; c < 3; ++c) {
                const bool inside = y >= 1 && y < 5 && x >= 1 && x < 5;
                EXPECT_EQ(out(y, x, c), inside ? pattern(x - 1, y - 1, c) : 0) << y << "," << x;
            }
}

TEST(ImagePreprocess, NormalisationOfKnownValues) {
    // A 1 × 3 image of the values 0, 255 and 51 in all channels: (p/255 − mean) / std.
    rgb_image img = constant_image(1, 3, {0, 0, 0});
    for (int c = 0; c < 3; ++c) img.pixels(0, 1, c) = 255, img.pixels(0, 2, c) = 51;
    mmca::tensor<float, 3> out = mmca::tensor<float, 3>::from_shape({3, 1, 3});
    mmca::vision::normalize_image(img.view(), mmca::vision::clip_mean, mmca::vision::clip_std, out);
    const double mean[3] = {0.48145466, 0.4578275, 0.40821073};
    const double stdv[3] = {0.26862954, 0.26130258, 0.27577711};
    const double values[3] = {0.0, 1.0, 0.2};
    for (int c = 0; c < 3; ++c)
        for (int x = 0; x < 3; ++x) EXPECT_NEAR(out(c, 0, x), (values[x] - mean[c]) / stdv[c], 1e-6) << c << "," << x;
    // The red channel at 0 is −0.48145466 / 0.26862954 = −1.79226...
    EXPECT_NEAR(out(0, 0, 0), -1.7922625, 1e-6);
}

TEST(ImagePreprocess, ConstantImageGivesConstantPlanes) {
    const rgb_image img = constant_image(300, 200, {255, 0, 51});
    for (const auto& options : {mmca::vision::visualchat_448(), mmca::vision::qwen_vl_448(), mmca::vision::clip_336()}) {
        const auto out = mmca::vision::preprocess_image(img, options);
        const auto [oh, ow] = options.output_size();
        ASSERT_EQ(out.shape()[0], 3u);
        ASSERT_EQ(out.shape()[1], static_cast<std::size_t>(oh));
        ASSERT_EQ(out.shape()[2], static_cast<std::size_t>(ow));
        const float expected[3] = {(1.0f - 0.48145466f) / 0.26862954f, (0.0f - 0.4578275f) / 0.26130258f,
                                   (0.2f - 0.40821073f) / 0.27577711f};
        for (int c = 0; c < 3; ++c)
            for (std::int64_t y = 0; y < oh; y += 37)
                for (std::int64_t x = 0; x < ow; x += 41) ASSERT_NEAR(out(c, y, x), expected[c], 1e-5);
    }
}

TEST(ImagePreprocess, PresetsAndModes) {
    EXPECT_EQ(mmca::vision::image_preset("qwen-vl-448").mode, mmca::vision::resize_mode::direct_square);
    EXPECT_EQ(mmca::vision::image_preset("visualchat-448").mode, mmca::vision::resize_mode::shortest_edge_crop);
    EXPECT_EQ(mmca::vision::image_preset("clip-224").crop_width, 224);
    EXPECT_EQ(mmca::vision::image_preset("clip-336").size, 336);
    EXPECT_EQ((mmca::vision::qwen_vl_448().output_size()), (std::array<std::int64_t, 2>{448, 448}));
    std::string msg = error_of([] { mmca::vision::image_preset("clip-999"); });
    EXPECT_NE(msg.find("argument 'name': got 'clip-999'"), std::string::npos) << msg;
    msg = error_of([] { mmca::vision::parse_resize_mode("square"); });
    EXPECT_NE(msg.find("'shortest_edge_crop' or 'direct_square'"), std::string::npos) << msg;
}

TEST(ImagePreprocess, BadArguments) {
    const rgb_image img = pattern_image(5, 5);
    mmca::vision::preprocess_options o;
    o.size = 0;
    std::string msg = error_of([&] { mmca::vision::preprocess_image(img, o); });
    EXPECT_NE(msg.find("argument 'size': got 0"), std::string::npos) << msg;
    o = {};
    o.stddev[1] = 0.0f;
    msg = error_of([&] { mmca::vision::preprocess_image(img, o); });
    EXPECT_NE(msg.find("argument 'std': got std[1] = 0"), std::string::npos) << msg;
    o = {};
    o.crop_width = -3;
    msg = error_of([&] { mmca::vision::preprocess_image(img, o); });
    EXPECT_NE(msg.find("argument 'crop_width': got -3"), std::string::npos) << msg;
    const mmca::tensor_ref<const std::uint8_t, 3> four_channels(img.pixels.data(), {5, 1, 4});
    msg = error_of([&] { mmca::vision::preprocess_image(four_channels); });
    EXPECT_NE(msg.find("argument 'image': got shape [5, 1, 4]"), std::string::npos) << msg;
    mmca::tensor<float, 3> wrong = mmca::tensor<float, 3>::from_shape({3, 448, 447});
    msg = error_of([&] { mmca::vision::preprocess_image(img.view(), o = {}, wrong); });
    EXPECT_NE(msg.find("argument 'out': got shape [3, 448, 447]; expected (3, 448, 448)"), std::string::npos) << msg;
}

// ------------------------------------------------------------------------------------------
// Hashing
// ------------------------------------------------------------------------------------------

TEST(ImageHash, Fnv1aByHand) {
    // FNV-1a 64 of the 16 bytes 01 00.. (height 1) 02 00.. (width 2) and the pixels 0..5.
    rgb_image img = constant_image(1, 2, {0, 0, 0});
    for (int i = 0; i < 6; ++i) img.pixels.data()[i] = static_cast<std::uint8_t>(i);
    std::vector<std::uint8_t> bytes(16, 0);
    bytes[0] = 1;
    bytes[8] = 2;
    for (int i = 0; i < 6; ++i) bytes.push_back(static_cast<std::uint8_t>(i));
    std::uint64_t h = 0xcbf29ce484222325ull;
    for (std::uint8_t b : bytes) h = (h ^ b) * 0x100000001b3ull;
    EXPECT_EQ(mmca::vision::image_hash(img), h);
}

TEST(ImageHash, DistinguishesShapeAndContent) {
    const rgb_image a = pattern_image(4, 6);
    rgb_image b = pattern_image(4, 6);
    EXPECT_EQ(mmca::vision::image_hash(a), mmca::vision::image_hash(b));
    b.pixels(3, 5, 2) ^= 1;
    EXPECT_NE(mmca::vision::image_hash(a), mmca::vision::image_hash(b));
    // The same 72 bytes as 6 × 4 pixels hash differently.
    const mmca::tensor_ref<const std::uint8_t, 3> reshaped(a.pixels.data(), {6, 4, 3});
    EXPECT_NE(mmca::vision::image_hash(a), mmca::vision::image_hash(reshaped));
}

}  // namespace
