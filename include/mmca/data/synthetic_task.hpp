// mmca/data/synthetic_task.hpp - a procedurally drawn interleaved multi-image, multi-round task.
//
// The data-efficiency comparison of the attention variants (SPEC §8) needs a task whose answers
// depend on the right image of a conversation. Each sample here shows 1..max_images images over
// 1..max_rounds rounds; an image holds 1..max_shapes shapes (circle, square, triangle) in distinct
// cells of a grid × grid layout, each in one of six colours, on a grey background. Every question
// names the image it is about, or two of them:
//   colour    "What colour is the shape in image 2?"                       → "red"      (one shape)
//   shape     "What shape is in image 1?"                                 → "circle"   (one shape)
//   count     "How many shapes are in image 3?"                           → "two"
//   position  "Where is the blue square in image 2?"                      → "top left" (2 × 2 grid)
//   compare   "Which image has more shapes, image 1 or image 3?"          → "image 3"  (counts differ)
// Images are introduced over the rounds (each round shows 0..2 new ones, the first at least one),
// and a question may be about any image shown so far, so the answer needs attention to the right
// image rows, possibly from an earlier round.
//
// Sample i of a data set with seed s is drawn from its own generator (std::mt19937_64 seeded with a
// splitmix64 mix of s and i, with mmca's own integer mapping), so a sample does not depend on how
// many were drawn before it, on the platform or on the standard library. Held-out data use another
// seed. Images are rendered exactly (no anti-aliasing): a pixel belongs to a shape when its centre
// lies inside it.
#pragma once

#include "mmca/core/error.hpp"
#include "mmca/core/tensor.hpp"

#include <algorithm>
#include <array>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

namespace mmca::data {

enum class shape_kind : std::uint8_t { circle, square, triangle };

inline const char* to_string(shape_kind k) {
    switch (k) {
        case shape_kind::square: return "square";
        case shape_kind::triangle: return "triangle";
        case shape_kind::circle: break;
    }
    return "circle";
}

/// The six colours (name, RGB) and the background.
inline constexpr std::array<const char*, 6> colour_names{"red", "green", "blue", "yellow", "purple", "orange"};
inline constexpr std::array<std::array<std::uint8_t, 3>, 6> colour_rgb{{
    {220, 40, 40}, {40, 180, 60}, {40, 70, 220}, {230, 210, 40}, {150, 60, 190}, {240, 140, 30}}};
inline constexpr std::array<std::uint8_t, 3> background_rgb{128, 128, 128};

struct shape_spec {
    shape_kind kind = shape_kind::circle;
    int colour = 0;  ///< index into colour_names
    int row = 0;     ///< grid cell
    int col = 0;
};

struct image_spec {
    std::vector<shape_spec> shapes;
};

struct synthetic_round {
    std::string question;
    std::string answer;
    int images = 0;           ///< images shown with this question (appended to the sample's list)
    std::string kind;         ///< colour, shape, count, position, compare
    std::vector<int> about;   ///< 0-based indices of the images the question is about
};

struct synthetic_sample {
    std::vector<image_spec> images;
    std::vector<synthetic_round> rounds;
};

struct synthetic_options {
    int image_size = 56;   ///< pixels per side
    int grid = 2;          ///< cells per side (positions are named for grid 2: top/bottom left/right)
    int max_images = 4;    ///< per sample (≤ 8)
    int max_shapes = 3;    ///< per image (≤ grid²)
    int max_rounds = 3;    ///< per sample

    void validate(const char* where) const {
        using mmca::detail::to_text;
        MMCA_CHECK_ARG(grid >= 1 && grid <= 4, where, "grid", to_text(grid), "1 to 4 cells per side");
        MMCA_CHECK_ARG(image_size >= 4 * grid, where, "image_size", to_text(image_size),
                       "at least " + to_text(4 * grid) + " pixels (4 per grid cell)");
        MMCA_CHECK_ARG(max_images >= 1 && max_images <= 8, where, "max_images", to_text(max_images), "1 to 8");
        MMCA_CHECK_ARG(max_shapes >= 1 && max_shapes <= grid * grid, where, "max_shapes", to_text(max_shapes),
                       "1 to " + to_text(grid * grid) + " (one shape per grid cell)");
        MMCA_CHECK_ARG(max_rounds >= 1 && max_rounds <= 16, where, "max_rounds", to_text(max_rounds), "1 to 16");
    }
};

namespace detail {

inline std::uint64_t splitmix64(std::uint64_t x) {
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

/// Uniform integer in [lo, hi] from 64-bit draws (rejection sampling: no modulo bias).
inline int uniform(std::mt19937_64& g, int lo, int hi) {
    const std::uint64_t n = static_cast<std::uint64_t>(hi - lo) + 1;
    const std::uint64_t limit = ~std::uint64_t{0} - (~std::uint64_t{0} % n);
    std::uint64_t x;
    do x = g();
    while (x >= limit);
    return lo + static_cast<int>(x % n);
}

inline const char* number_word(int n) {
    static constexpr std::array<const char*, 10> words{"zero", "one", "two", "three", "four",
                                                        "five", "six", "seven", "eight", "nine"};
    return n >= 0 && n < 10 ? words[static_cast<std::size_t>(n)] : "many";
}

inline std::string position_name(int row, int col, int grid) {
    if (grid == 2) return std::string(row == 0 ? "top" : "bottom") + " " + (col == 0 ? "left" : "right");
    return "row " + std::to_string(row + 1) + " column " + std::to_string(col + 1);
}

inline image_spec random_image(std::mt19937_64& g, const synthetic_options& o) {
    image_spec img;
    const int n = uniform(g, 1, o.max_shapes);
    std::vector<int> cells(static_cast<std::size_t>(o.grid * o.grid));
    for (std::size_t i = 0; i < cells.size(); ++i) cells[i] = static_cast<int>(i);
    for (int i = 0; i < n; ++i) {  // the first n cells of a partial Fisher-Yates shuffle
        const int j = uniform(g, i, static_cast<int>(cells.size()) - 1);
        std::swap(cells[static_cast<std::size_t>(i)], cells[static_cast<std::size_t>(j)]);
        shape_spec s;
        s.kind = static_cast<shape_kind>(uniform(g, 0, 2));
        s.colour = uniform(g, 0, static_cast<int>(colour_names.size()) - 1);
        s.row = cells[static_cast<std::size_t>(i)] / o.grid;
        s.col = cells[static_cast<std::size_t>(i)] % o.grid;
        img.shapes.push_back(s);
    }
    return img;
}

}  // namespace detail

/// The pixels of an image: (size, size, 3) uint8. Each shape fills 70% of its cell: a disc, a
/// square, or an upward triangle (apex at the top centre, base at the bottom), centred in the cell.
inline tensor<std::uint8_t, 3> render_image(const image_spec& image, const synthetic_options& o = {}) {
    o.validate("mmca::data::render_image");
    const int S = o.image_size;
    tensor<std::uint8_t, 3> px({static_cast<std::size_t>(S), static_cast<std::size_t>(S), std::size_t{3}});
    for (int y = 0; y < S; ++y)
        for (int x = 0; x < S; ++x)
            for (int c = 0; c < 3; ++c) px(y, x, c) = background_rgb[static_cast<std::size_t>(c)];
    const double cell = static_cast<double>(S) / o.grid, half = 0.35 * cell;
    for (const shape_spec& s : image.shapes) {
        MMCA_CHECK_ARG(s.row >= 0 && s.row < o.grid && s.col >= 0 && s.col < o.grid && s.colour >= 0 &&
                           s.colour < static_cast<int>(colour_names.size()),
                       "mmca::data::render_image", "image",
                       "a shape at cell (" + std::to_string(s.row) + ", " + std::to_string(s.col) + ") of colour " +
                           std::to_string(s.colour),
                       "cells inside the " + std::to_string(o.grid) + "x" + std::to_string(o.grid) +
                           " grid and colours 0..5");
        const double cy = (s.row + 0.5) * cell, cx = (s.col + 0.5) * cell;
        const auto& rgb = colour_rgb[static_cast<std::size_t>(s.colour)];
        for (int y = 0; y < S; ++y)
            for (int x = 0; x < S; ++x) {
                const double dy = y + 0.5 - cy, dx = x + 0.5 - cx;
                bool inside = false;
                switch (s.kind) {
                    case shape_kind::circle: inside = dx * dx + dy * dy <= half * half; break;
                    case shape_kind::square: inside = dx >= -half && dx <= half && dy >= -half && dy <= half; break;
                    case shape_kind::triangle:
                        // Apex (0, −half), base y = +half from x = −half to +half.
                        inside = dy >= -half && dy <= half && (dx < 0 ? -dx : dx) <= (dy + half) / 2.0;
                        break;
                }
                if (inside)
                    for (int c = 0; c < 3; ++c) px(y, x, c) = rgb[static_cast<std::size_t>(c)];
            }
    }
    return px;
}

/// Sample `index` of the data set with seed `seed`.
inline synthetic_sample make_synthetic_sample(std::uint64_t seed, std::uint64_t index, const synthetic_options& o = {}) {
    o.validate("mmca::data::make_synthetic_sample");
    std::mt19937_64 g(detail::splitmix64(seed ^ detail::splitmix64(index + 0x51ed)));
    synthetic_sample s;
    const int n_images = detail::uniform(g, 1, o.max_images);
    const int n_rounds = detail::uniform(g, 1, o.max_rounds);
    for (int i = 0; i < n_images; ++i) s.images.push_back(detail::random_image(g, o));
    // Images shown per round: the first round shows at least one; the last round shows the rest.
    int shown = 0;
    for (int r = 0; r < n_rounds; ++r) {
        synthetic_round round;
        const int left = n_images - shown;
        if (r == n_rounds - 1)
            round.images = left;
        else
            round.images = std::min(left, detail::uniform(g, r == 0 ? 1 : 0, 2));
        shown += round.images;
        // A question about images shown so far; compare needs two images with different counts.
        std::vector<int> kinds;
        for (int k = 0; k < 5; ++k) kinds.push_back(k);
        while (true) {
            const int kind = kinds[static_cast<std::size_t>(detail::uniform(g, 0, static_cast<int>(kinds.size()) - 1))];
            const int a = detail::uniform(g, 0, shown - 1);
            const image_spec& im = s.images[static_cast<std::size_t>(a)];
            const std::string name = "image " + std::to_string(a + 1);
            if (kind == 0 && im.shapes.size() == 1) {
                round.kind = "colour";
                round.question = "What colour is the shape in " + name + "?";
                round.answer = colour_names[static_cast<std::size_t>(im.shapes[0].colour)];
            } else if (kind == 1 && im.shapes.size() == 1) {
                round.kind = "shape";
                round.question = "What shape is in " + name + "?";
                round.answer = to_string(im.shapes[0].kind);
            } else if (kind == 2) {
                round.kind = "count";
                round.question = "How many shapes are in " + name + "?";
                round.answer = detail::number_word(static_cast<int>(im.shapes.size()));
            } else if (kind == 3) {
                const shape_spec& sh = im.shapes[static_cast<std::size_t>(
                    detail::uniform(g, 0, static_cast<int>(im.shapes.size()) - 1))];
                round.kind = "position";
                round.question = std::string("Where is the ") + colour_names[static_cast<std::size_t>(sh.colour)] + " " +
                                 to_string(sh.kind) + " in " + name + "?";
                // Ambiguous when the image holds two shapes of that colour and kind: draw again.
                int same = 0;
                for (const auto& t : im.shapes) same += t.colour == sh.colour && t.kind == sh.kind;
                if (same > 1) continue;
                round.answer = detail::position_name(sh.row, sh.col, o.grid);
            } else if (kind == 4 && shown >= 2) {
                int b = detail::uniform(g, 0, shown - 2);
                if (b >= a) ++b;
                const auto na = s.images[static_cast<std::size_t>(a)].shapes.size();
                const auto nb = s.images[static_cast<std::size_t>(b)].shapes.size();
                if (na == nb) continue;
                const int lo = std::min(a, b), hi = std::max(a, b);
                round.kind = "compare";
                round.question = "Which image has more shapes, image " + std::to_string(lo + 1) + " or image " +
                                 std::to_string(hi + 1) + "?";
                round.answer = "image " + std::to_string((na > nb ? a : b) + 1);
                round.about = {lo, hi};
                break;
            } else {
                continue;
            }
            round.about = {a};
            break;
        }
        s.rounds.push_back(std::move(round));
    }
    return s;
}

}  // namespace mmca::data
