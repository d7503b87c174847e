// mmca/vision/image_preprocess.hpp - RGB pixels → the normalised (3, H, W) float32 input of a
// vision encoder, with the results of the reference pipelines.
//
// Two modes (preprocess_options::mode):
//   * shortest_edge_crop - HF transformers 4.33.3 CLIPImageProcessor (the DeepSpeed-VisualChat
//     reference, LLaVA, CLIP): resize so that the shorter side is `size` and the longer side is
//     int(size · long / short) (truncated; get_resize_output_image_size with
//     default_to_square=False; torchvision's Resize(int) computes the same), PIL bicubic; then a
//     centre crop of crop_height × crop_width whose top-left corner is ((h − crop_h) // 2,
//     (w − crop_w) // 2) with floor division (transformers' center_crop). torchvision's
//     CenterCrop rounds (h − crop_h) / 2 half to even instead, one pixel further down/right when
//     h − crop_h ≡ 3 (mod 4); the reference uses transformers. Where the resized image is smaller
//     than the crop, it is placed at ((crop_h − h) // 2, (crop_w − w) // 2) on zero pixels, as
//     transformers pads (which for an odd difference then returns a crop one pixel short; here
//     the crop always has the size asked for).
//   * direct_square - QWen-VL's own transform, torchvision Resize((size, size), BICUBIC) on a
//     PIL image: one PIL bicubic resize to size × size, no crop (the aspect ratio is not kept).
// Then every channel value p in 0..255 becomes (float(p · (1/255)) − mean[c]) / std[c] in float32,
// the arithmetic of transformers' rescale (float64 product rounded to float32) and normalize,
// and the result is laid out channels first: out(c, y, x).
//
// Presets: visualchat_448 (the SPEC's reference: shortest edge 448, crop 448), qwen_vl_448
// (direct 448 × 448), clip_224 and clip_336 (shortest edge + crop); all with CLIP's mean/std.
#pragma once

#include "mmca/core/error.hpp"
#include "mmca/core/tensor.hpp"
#include "mmca/vision/image.hpp"
#include "mmca/vision/image_resize.hpp"

#include <array>
#include <cmath>
#include <cstdint>
#include <string>
#include <utility>

namespace mmca::vision {

/// How the image is brought to the encoder's input size.
enum class resize_mode {
    shortest_edge_crop,  ///< shorter side to `size` (aspect kept), then a centre crop
    direct_square,       ///< straight to size × size (aspect not kept), no crop
};

inline const char* to_string(resize_mode m) {
    return m == resize_mode::direct_square ? "direct_square" : "shortest_edge_crop";
}

inline resize_mode parse_resize_mode(const std::string& name) {
    if (name == "shortest_edge_crop") return resize_mode::shortest_edge_crop;
    if (name == "direct_square") return resize_mode::direct_square;
    throw invalid_argument("mmca::vision::parse_resize_mode", "mode", "'" + name + "'",
                           "'shortest_edge_crop' or 'direct_square'");
}

/// CLIP's per-channel statistics (OpenAI CLIP, used by QWen-VL and DeepSpeed-VisualChat).
inline constexpr std::array<float, 3> clip_mean{0.48145466f, 0.4578275f, 0.40821073f};
inline constexpr std::array<float, 3> clip_std{0.26862954f, 0.26130258f, 0.27577711f};

struct preprocess_options {
    resize_mode mode = resize_mode::shortest_edge_crop;
    std::int64_t size = 448;         // shorter side after resizing (shortest_edge_crop) or the side (direct_square)
    std::int64_t crop_height = 448;  // centre crop (shortest_edge_crop only)
    std::int64_t crop_width = 448;
    std::array<float, 3> mean = clip_mean;   // per channel (R, G, B), of pixels rescaled to [0, 1]
    std::array<float, 3> stddev = clip_std;  // per channel
    int num_threads = 0;  // threads of the resize; 0 means default_num_threads()

    /// The (height, width) of the preprocessed image.
    std::array<std::int64_t, 2> output_size() const {
        if (mode == resize_mode::direct_square) return {size, size};
        return {crop_height, crop_width};
    }
};

/// The DeepSpeed-VisualChat reference (SPEC §3): shortest edge 448, centre crop 448 × 448.
inline preprocess_options visualchat_448() { return preprocess_options{}; }

/// QWen-VL's own transform: direct resize to 448 × 448.
inline preprocess_options qwen_vl_448() {
    preprocess_options o;
    o.mode = resize_mode::direct_square;
    return o;
}

/// OpenAI CLIP ViT-L/14 (224) and ViT-L/14-336 (LLaVA): shortest edge + centre crop.
inline preprocess_options clip_224() {
    preprocess_options o;
    o.size = o.crop_height = o.crop_width = 224;
    return o;
}
inline preprocess_options clip_336() {
    preprocess_options o;
    o.size = o.crop_height = o.crop_width = 336;
    return o;
}

/// Preset names accepted by image_preset().
inline constexpr std::array<const char*, 4> image_preset_names{"visualchat-448", "qwen-vl-448", "clip-224", "clip-336"};

inline preprocess_options image_preset(const std::string& name) {
    if (name == "visualchat-448") return visualchat_448();
    if (name == "qwen-vl-448") return qwen_vl_448();
    if (name == "clip-224") return clip_224();
    if (name == "clip-336") return clip_336();
    throw invalid_argument("mmca::vision::image_preset", "name", "'" + name + "'",
                           "'visualchat-448', 'qwen-vl-448', 'clip-224' or 'clip-336'");
}

/// (height, width) after resizing an image of (height, width) so that its shorter side is `size`:
/// the longer side is int(size · long / short) (both sides `size` for a square image).
inline std::array<std::int64_t, 2> shortest_edge_size(std::int64_t height, std::int64_t width, std::int64_t size) {
    using mmca::detail::to_text;
    const char* where = "mmca::vision::shortest_edge_size";
    MMCA_CHECK_ARG(height >= 1 && width >= 1, where, "height, width", to_text(height) + ", " + to_text(width),
                   "positive sizes");
    MMCA_CHECK_ARG(size >= 1, where, "size", to_text(size), "a positive size");
    const bool portrait = width <= height;
    const std::int64_t shorter = portrait ? width : height, longer = portrait ? height : width;
    // Python's int(size * long / short): a correctly rounded float64 quotient, truncated.
    const auto new_long = static_cast<std::int64_t>(static_cast<double>(size * longer) / static_cast<double>(shorter));
    return portrait ? std::array<std::int64_t, 2>{new_long, size} : std::array<std::int64_t, 2>{size, new_long};
}

/// Top (or left) offset of a centre crop of `crop` pixels from `extent` pixels: (extent − crop) // 2
/// when the crop fits; when it does not, minus the padding in front of the image,
/// −((crop − extent) // 2). Both are (extent − crop) / 2 rounded toward zero.
inline std::int64_t center_crop_offset(std::int64_t extent, std::int64_t crop) { return (extent - crop) / 2; }

namespace detail {

/// The float32 value of every pixel value 0..255 in every channel after rescale and normalise.
inline std::array<std::array<float, 256>, 3> normalisation_table(const std::array<float, 3>& mean,
                                                                   const std::array<float, 3>& stddev) {
    std::array<std::array<float, 256>, 3> table{};
    for (int c = 0; c < 3; ++c)
        for (int p = 0; p < 256; ++p) {
            const auto rescaled = static_cast<float>(static_cast<double>(p) * (1.0 / 255.0));
            table[static_cast<std::size_t>(c)][static_cast<std::size_t>(p)] =
                (rescaled - mean[static_cast<std::size_t>(c)]) / stddev[static_cast<std::size_t>(c)];
        }
    return table;
}

inline void check_mean_std(const std::array<float, 3>& mean, const std::array<float, 3>& stddev, const char* where) {
    using mmca::detail::to_text;
    for (std::size_t c = 0; c < 3; ++c) {
        MMCA_CHECK_ARG(std::isfinite(mean[c]), where, "mean", "mean[" + to_text(c) + "] = " + to_text(mean[c]),
                       "finite values");
        MMCA_CHECK_ARG(std::isfinite(stddev[c]) && stddev[c] > 0.0f, where, "std",
                       "std[" + to_text(c) + "] = " + to_text(stddev[c]), "finite values > 0");
    }
}

inline void check_preprocess_options(const preprocess_options& o, const char* where) {
    using mmca::detail::to_text;
    constexpr std::int64_t max_side = std::int64_t{1} << 16;
    MMCA_CHECK_ARG(o.size >= 1 && o.size <= max_side, where, "size", to_text(o.size), "1 to 65536 pixels");
    if (o.mode == resize_mode::shortest_edge_crop) {
        MMCA_CHECK_ARG(o.crop_height >= 1 && o.crop_height <= max_side, where, "crop_height", to_text(o.crop_height),
                       "1 to 65536 pixels");
        MMCA_CHECK_ARG(o.crop_width >= 1 && o.crop_width <= max_side, where, "crop_width", to_text(o.crop_width),
                       "1 to 65536 pixels");
    }
    check_mean_std(o.mean, o.stddev, where);
    MMCA_CHECK_ARG(o.num_threads >= 0, where, "num_threads", to_text(o.num_threads),
                   "a number of threads >= 1, or 0 for the default");
}

}  // namespace detail

/// The 8-bit image that preprocessing normalises: src (H, W, 3) resized and cropped (padded with
/// zeros where the crop is larger than the resized image), (out_h, out_w, 3).
inline tensor<std::uint8_t, 3> resize_and_crop(tensor_ref<const std::uint8_t, 3> src, const preprocess_options& options) {
    const char* where = "mmca::vision::resize_and_crop";
    MMCA_CHECK_ARG(src.data != nullptr && src.shape[0] >= 1 && src.shape[1] >= 1 && src.shape[2] == 3, where, "image",
                   "shape " + src.shape_text(), "(H, W, 3) with H, W >= 1");
    detail::check_preprocess_options(options, where);
    if (options.mode == resize_mode::direct_square)
        return resize_bicubic(src, options.size, options.size, options.num_threads);

    const auto [rh, rw] = shortest_edge_size(src.shape[0], src.shape[1], options.size);
    const std::int64_t ch = options.crop_height, cw = options.crop_width;
    const std::int64_t top = center_crop_offset(rh, ch), left = center_crop_offset(rw, cw);
    // The part of the crop that lies inside the resized image, in resized-image coordinates.
    const std::int64_t y0 = std::max<std::int64_t>(top, 0), y1 = std::min(top + ch, rh);
    const std::int64_t x0 = std::max<std::int64_t>(left, 0), x1 = std::min(left + cw, rw);
    tensor<std::uint8_t, 3> inside =
        resize_bicubic(src, rh, rw, pixel_window{y0, x0, y1 - y0, x1 - x0}, options.num_threads);
    if (top >= 0 && left >= 0) return inside;  // the crop lies wholly inside
    tensor<std::uint8_t, 3> out = xt::zeros<std::uint8_t>(
        std::array<std::size_t, 3>{static_cast<std::size_t>(ch), static_cast<std::size_t>(cw), std::size_t{3}});
    for (std::int64_t y = y0; y < y1; ++y)
        std::copy_n(inside.data() + (y - y0) * (x1 - x0) * 3, (x1 - x0) * 3,
                    out.data() + ((y - top) * cw + (x0 - left)) * 3);
    return out;
}

/// Rescales and normalises 8-bit RGB (H, W, 3) into out (3, H, W) float32 (see the file comment).
inline void normalize_image(tensor_ref<const std::uint8_t, 3> pixels, const std::array<float, 3>& mean,
                            const std::array<float, 3>& stddev, tensor_ref<float, 3> out) {
    const char* where = "mmca::vision::normalize_image";
    MMCA_CHECK_ARG(pixels.data != nullptr && pixels.shape[2] == 3, where, "pixels", "shape " + pixels.shape_text(),
                   "(H, W, 3)");
    MMCA_CHECK_ARG(out.data != nullptr && out.shape[0] == 3 && out.shape[1] == pixels.shape[0] &&
                       out.shape[2] == pixels.shape[1],
                   where, "out", "shape " + out.shape_text(),
                   "(3, " + std::to_string(pixels.shape[0]) + ", " + std::to_string(pixels.shape[1]) + ")");
    detail::check_mean_std(mean, stddev, where);
    const auto table = detail::normalisation_table(mean, stddev);
    const std::int64_t H = pixels.shape[0], W = pixels.shape[1];
    for (std::int64_t c = 0; c < 3; ++c) {
        const auto& lut = table[static_cast<std::size_t>(c)];
        for (std::int64_t y = 0; y < H; ++y) {
            const std::uint8_t* in = pixels.ptr(y) + c * pixels.strides[2];
            float* o = out.ptr(c, y);
            const std::int64_t in_step = pixels.strides[1], out_step = out.strides[2];
            for (std::int64_t x = 0; x < W; ++x) o[x * out_step] = lut[in[x * in_step]];
        }
    }
}

/// Preprocesses 8-bit RGB pixels (H, W, 3) into out, (3, oh, ow) float32 with (oh, ow) =
/// options.output_size().
inline void preprocess_image(tensor_ref<const std::uint8_t, 3> image, const preprocess_options& options,
                             tensor_ref<float, 3> out) {
    const char* where = "mmca::vision::preprocess_image";
    MMCA_CHECK_ARG(image.data != nullptr && image.shape[0] >= 1 && image.shape[1] >= 1 && image.shape[2] == 3, where,
                   "image", "shape " + image.shape_text(), "(H, W, 3) with H, W >= 1");
    detail::check_preprocess_options(options, where);
    const auto [oh, ow] = options.output_size();
    MMCA_CHECK_ARG(out.data != nullptr && out.shape[0] == 3 && out.shape[1] == oh && out.shape[2] == ow, where, "out",
                   "shape " + out.shape_text(), "(3, " + std::to_string(oh) + ", " + std::to_string(ow) + ")");
    const tensor<std::uint8_t, 3> pixels = resize_and_crop(image, options);
    normalize_image(tensor_ref<const std::uint8_t, 3>(pixels.data(), {oh, ow, 3}), options.mean, options.stddev, out);
}

/// Preprocesses 8-bit RGB pixels (H, W, 3); returns (3, oh, ow) float32.
inline tensor<float, 3> preprocess_image(tensor_ref<const std::uint8_t, 3> image,
                                         const preprocess_options& options = preprocess_options{}) {
    detail::check_preprocess_options(options, "mmca::vision::preprocess_image");
    const auto [oh, ow] = options.output_size();
    tensor<float, 3> out = tensor<float, 3>::from_shape(
        {std::size_t{3}, static_cast<std::size_t>(oh), static_cast<std::size_t>(ow)});
    preprocess_image(image, options, tensor_ref<float, 3>(out.data(), {3, oh, ow}));
    return out;
}

inline tensor<float, 3> preprocess_image(const rgb_image& image,
                                         const preprocess_options& options = preprocess_options{}) {
    return preprocess_image(image.view(), options);
}

}  // namespace mmca::vision
