// The synthetic multi-image task (mmca/data/synthetic_task.hpp): exact rendering of hand-placed
// shapes, answers recomputed here from the image specs, image references only to images already
// shown, determinism per (seed, index), and that every question kind occurs.
#include "mmca/data/synthetic_task.hpp"

#include <gtest/gtest.h>

#include <map>
#include <set>
#include <string>

namespace {

using mmca::data::image_spec;
using mmca::data::shape_kind;
using mmca::data::shape_spec;

std::array<int, 3> pixel(const mmca::tensor<std::uint8_t, 3>& p, int y, int x) {
    return {p(y, x, 0), p(y, x, 1), p(y, x, 2)};
}

TEST(SyntheticTask, RendersShapesExactly) {
    // 56 px, 2 × 2 cells of 28 px; shapes fill 0.35 · 28 = 9.8 px around the cell centre.
    image_spec img;
    img.shapes = {shape_spec{shape_kind::circle, 0, 0, 0}, shape_spec{shape_kind::square, 2, 1, 1},
                  shape_spec{shape_kind::triangle, 3, 0, 1}};
    const auto p = mmca::data::render_image(img);
    const std::array<int, 3> red{220, 40, 40}, blue{40, 70, 220}, yellow{230, 210, 40}, grey{128, 128, 128};
    EXPECT_EQ(pixel(p, 14, 14), red);       // circle centre (14, 14)
    EXPECT_EQ(pixel(p, 23, 14), red);       // pixel centre 9.5 below: inside
    EXPECT_EQ(pixel(p, 24, 14), grey);      // 10.5 below: outside
    EXPECT_EQ(pixel(p, 21, 21), grey);      // diagonal (7.5, 7.5): 10.6 from the centre
    EXPECT_EQ(pixel(p, 42, 42), blue);      // square centre
    EXPECT_EQ(pixel(p, 32, 32), blue);      // (−9.5, −9.5): inside the square's corner
    EXPECT_EQ(pixel(p, 31, 42), grey);      // −10.5: outside
    EXPECT_EQ(pixel(p, 5, 42), yellow);     // triangle near its apex: dy = −8.5, |dx| = 0.5 ≤ 0.65
    EXPECT_EQ(pixel(p, 5, 43), grey);       // |dx| = 1.5 > 0.65
    EXPECT_EQ(pixel(p, 23, 33), yellow);    // near the base: dy = 9.5, |dx| = 8.5 ≤ 9.65
    EXPECT_EQ(pixel(p, 0, 0), grey);
    EXPECT_EQ(pixel(p, 42, 14), grey);      // the empty cell
    image_spec bad;
    bad.shapes = {shape_spec{shape_kind::circle, 0, 2, 0}};
    EXPECT_THROW(mmca::data::render_image(bad), mmca::invalid_argument);
}

std::string words(int n) {
    const char* w[] = {"zero", "one", "two", "three", "four"};
    return w[n];
}

TEST(SyntheticTask, AnswersFollowFromTheImages) {
    const mmca::data::synthetic_options o;
    std::map<std::string, int> kinds;
    for (std::uint64_t i = 0; i < 3000; ++i) {
        const auto s = mmca::data::make_synthetic_sample(7, i, o);
        ASSERT_GE(s.images.size(), 1u);
        ASSERT_LE(s.images.size(), 4u);
        ASSERT_GE(s.rounds.size(), 1u);
        ASSERT_GE(s.rounds[0].images, 1);
        int shown = 0;
        for (const auto& r : s.rounds) {
            shown += r.images;
            ++kinds[r.kind];
            ASSERT_FALSE(r.about.empty());
            for (int a : r.about) ASSERT_LT(a, shown) << r.question;  // only images already shown
            const auto& im = s.images[static_cast<std::size_t>(r.about[0])];
            const std::string name = "image " + std::to_string(r.about[0] + 1);
            ASSERT_NE(r.question.find(name), std::string::npos) << r.question;
            if (r.kind == "colour") {
                ASSERT_EQ(im.shapes.size(), 1u);
                EXPECT_EQ(r.answer, mmca::data::colour_names[static_cast<std::size_t>(im.shapes[0].colour)]);
            } else if (r.kind == "shape") {
                ASSERT_EQ(im.shapes.size(), 1u);
                EXPECT_EQ(r.answer, mmca::data::to_string(im.shapes[0].kind));
            } else if (r.kind == "count") {
                EXPECT_EQ(r.answer, words(static_cast<int>(im.shapes.size())));
            } else if (r.kind == "position") {
                int matches = 0;
                for (const auto& sh : im.shapes) {
                    const std::string what = std::string(mmca::data::colour_names[static_cast<std::size_t>(sh.colour)]) +
                                             " " + mmca::data::to_string(sh.kind) + " ";
                    if (r.question.find(what) == std::string::npos) continue;
                    ++matches;
                    const std::string where = std::string(sh.row == 0 ? "top" : "bottom") + (sh.col == 0 ? " left" : " right");
                    EXPECT_EQ(r.answer, where) << r.question;
                }
                EXPECT_EQ(matches, 1) << r.question;
            } else {
                ASSERT_EQ(r.kind, "compare");
                ASSERT_EQ(r.about.size(), 2u);
                const auto na = s.images[static_cast<std::size_t>(r.about[0])].shapes.size();
                const auto nb = s.images[static_cast<std::size_t>(r.about[1])].shapes.size();
                ASSERT_NE(na, nb);
                EXPECT_EQ(r.answer, "image " + std::to_string((na > nb ? r.about[0] : r.about[1]) + 1));
            }
        }
        ASSERT_EQ(shown, static_cast<int>(s.images.size()));
    }
    for (const char* k : {"colour", "shape", "count", "position", "compare"}) EXPECT_GT(kinds[k], 100) << k;
}

TEST(SyntheticTask, DeterministicPerSeedAndIndex) {
    auto key = [](const mmca::data::synthetic_sample& s) {
        std::string t;
        for (const auto& im : s.images)
            for (const auto& sh : im.shapes) t += std::to_string(int(sh.kind)) + std::to_string(sh.colour) + std::to_string(sh.row) + std::to_string(sh.col);
        for (const auto& r : s.rounds) t += "|" + r.question + "=" + r.answer + "/" + std::to_string(r.images);
        return t;
    };
    const auto a = key(mmca::data::make_synthetic_sample(3, 41));
    EXPECT_EQ(a, key(mmca::data::make_synthetic_sample(3, 41)));
    std::set<std::string> distinct;
    for (std::uint64_t i = 0; i < 200; ++i) distinct.insert(key(mmca::data::make_synthetic_sample(3, i)));
    EXPECT_GT(distinct.size(), 190u);
    EXPECT_NE(a, key(mmca::data::make_synthetic_sample(4, 41)));  // another seed, another data set
    mmca::data::synthetic_options bad;
    bad.max_shapes = 5;
    EXPECT_THROW(mmca::data::make_synthetic_sample(0, 0, bad), mmca::invalid_argument);
}

}  // namespace
