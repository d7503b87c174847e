// Data blending (SPEC §7): random concatenation, the LLaVA-Otter blend, reference styles, the
// split, the counts, malformed input and the all-or-nothing output.
#include "mmca/data/blend.hpp"

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include <unistd.h>

namespace {

namespace fs = std::filesystem;
using nlohmann::json;

class Blend : public ::testing::Test {
protected:
    void SetUp() override {
        std::string tmpl = (fs::temp_directory_path() / "mmca-blend-test-XXXXXX").string();
        std::vector<char> name(tmpl.begin(), tmpl.end());
        name.push_back('\0');
        ASSERT_NE(::mkdtemp(name.data()), nullptr);
        dir_ = name.data();
    }
    void TearDown() override {
        std::error_code ec;
        fs::permissions(dir_, fs::perms::owner_all, fs::perm_options::add, ec);
        fs::remove_all(dir_, ec);
    }
    std::string path(const std::string& name) const { return (fs::path(dir_) / name).string(); }
    std::string write(const std::string& name, const std::string& text) const {
        std::ofstream(path(name), std::ios::binary) << text;
        return path(name);
    }
    static std::string read(const std::string& p) {
        std::ifstream f(p, std::ios::binary);
        std::stringstream s;
        s << f.rdbuf();
        return s.str();
    }
    /// n LLaVA samples "s<i>" with image "img<i>.jpg" and (i % 3) + 1 rounds.
    std::string llava_file(const std::string& name, int n) const {
        json a = json::array();
        for (int i = 0; i < n; ++i) {
            json conv = json::array();
            for (int r = 0; r <= i % 3; ++r) {
                conv.push_back({{"from", "human"}, {"value", (r == 0 ? "<image>\n" : "") + std::string("Q") + std::to_string(i) + "." + std::to_string(r)}});
                conv.push_back({{"from", "gpt"}, {"value", "A" + std::to_string(i) + "." + std::to_string(r)}});
            }
            a.push_back({{"id", "s" + std::to_string(i)}, {"image", "img" + std::to_string(i) + ".jpg"}, {"conversations", conv}});
        }
        return write(name, a.dump(1));
    }
    std::vector<std::string> files_in_dir() const {
        std::vector<std::string> names;
        for (const auto& e : fs::directory_iterator(dir_)) names.push_back(e.path().filename().string());
        return names;
    }
    std::string dir_;
};

TEST_F(Blend, RandomConcatKeepsEverySampleOnce) {
    mmca::data::blend_options o;
    o.llava_files = {llava_file("a.json", 7), llava_file("b.json", 6)};
    o.output = path("out.json");
    o.max_group = 3;
    o.seed = 5;
    const auto c = mmca::data::blend(o);
    EXPECT_EQ(c.samples_read, 13u);
    EXPECT_EQ(c.skipped(), 0u);
    const json out = json::parse(read(o.output));
    EXPECT_EQ(out["format"], "mmca-blend");
    EXPECT_EQ(out["version"], 1);
    EXPECT_EQ(out["train"].size() + out["eval"].size(), c.samples_written);
    EXPECT_EQ(out["train"].size(), c.train_samples);
    EXPECT_EQ(out["eval"].size(), c.eval_samples);

    // Every input image appears exactly once (no group dropped), each group has 1..3 images, and
    // each member's rounds follow in order with its image shown on its first round.
    std::multiset<std::string> images;
    for (const char* split : {"train", "eval"}) {
        for (const auto& s : out[split]) {
            ASSERT_GE(s["images"].size(), 1u);
            ASSERT_LE(s["images"].size(), 3u);
            int shown = 0;
            std::size_t r = 0;
            for (const auto& img : s["images"]) {
                images.insert(img.get<std::string>());
                const int i = std::stoi(img.get<std::string>().substr(3));
                for (int k = 0; k <= i % 3; ++k, ++r) {
                    ASSERT_LT(r, s["rounds"].size());
                    const auto& round = s["rounds"][r];
                    EXPECT_EQ(round["question"], "Q" + std::to_string(i) + "." + std::to_string(k));
                    EXPECT_EQ(round["answer"], "A" + std::to_string(i) + "." + std::to_string(k));
                    EXPECT_EQ(round["images"], k == 0 ? 1 : 0);
                    shown += round["images"].get<int>();
                }
            }
            EXPECT_EQ(r, s["rounds"].size());
            EXPECT_EQ(shown, static_cast<int>(s["images"].size()));
        }
    }
    std::multiset<std::string> expected;
    for (int i = 0; i < 7; ++i) expected.insert("img" + std::to_string(i) + ".jpg");
    for (int i = 0; i < 6; ++i) expected.insert("img" + std::to_string(i) + ".jpg");
    EXPECT_EQ(images, expected);
}

TEST_F(Blend, SameSeedSameBytesOtherSeedOtherBytes) {
    mmca::data::blend_options o;
    o.llava_files = {llava_file("a.json", 40)};
    o.output = path("one.json");
    o.seed = 11;
    mmca::data::blend(o);
    o.output = path("two.json");
    mmca::data::blend(o);
    EXPECT_EQ(read(path("one.json")), read(path("two.json")));
    o.output = path("three.json");
    o.seed = 12;
    mmca::data::blend(o);
    EXPECT_NE(read(path("one.json")), read(path("three.json")));
}

TEST_F(Blend, NinetyTenSplit) {
    mmca::data::blend_options o;
    o.llava_files = {llava_file("a.json", 100)};
    o.output = path("out.json");
    o.max_group = 1;
    const auto c = mmca::data::blend(o);
    EXPECT_EQ(c.samples_written, 100u);
    EXPECT_EQ(c.train_samples, 90u);
    EXPECT_EQ(c.eval_samples, 10u);
    const json out = json::parse(read(o.output));
    std::set<std::string> train, eval;
    for (const auto& s : out["train"]) train.insert(s["id"]);
    for (const auto& s : out["eval"]) eval.insert(s["id"]);
    EXPECT_EQ(train.size(), 90u);
    EXPECT_EQ(eval.size(), 10u);
    for (const auto& id : eval) EXPECT_EQ(train.count(id), 0u) << id;
    // Another blend seed: the same 90/10 sizes; another split seed: another eval set.
    o.seed = 99;
    o.output = path("out2.json");
    EXPECT_EQ(mmca::data::blend(o).eval_samples, 10u);
    o.seed = 0;
    o.split_seed = 4321;
    o.output = path("out3.json");
    mmca::data::blend(o);
    const json out3 = json::parse(read(o.output));
    std::set<std::string> eval3;
    for (const auto& s : out3["eval"]) eval3.insert(s["id"]);
    EXPECT_EQ(eval3.size(), 10u);
    EXPECT_NE(eval3, eval);
}

TEST_F(Blend, SkippedRecordsAreCountedByReason) {
    const std::string text = R"([
      {"id": "ok1", "image": "present.jpg", "conversations": [{"from": "human", "value": "<image>\nQ"}, {"from": "gpt", "value": "A"}]},
      {"id": "gone", "image": "absent.jpg", "conversations": [{"from": "human", "value": "Q"}, {"from": "gpt", "value": "A"}]},
      {"id": "odd", "image": "present.jpg", "conversations": [{"from": "human", "value": "Q"}]},
      {"id": "order", "image": "present.jpg", "conversations": [{"from": "gpt", "value": "A"}, {"from": "human", "value": "Q"}]},
      {"id": "noimage", "conversations": [{"from": "human", "value": "Q"}, {"from": "gpt", "value": "A"}]},
      {"id": "badref", "image": "present.jpg", "conversations": [{"from": "human", "value": "Q"}, {"from": "gpt", "value": "see IMAGE#2"}]},
      {"id": "marker", "image": "present.jpg", "conversations": [{"from": "human", "value": "Q"}, {"from": "gpt", "value": "an <image> here"}]},
      [1, 2, 3],
      "text",
      {"id": 7, "image": "present.jpg", "conversations": [{"from": "human", "value": "Q \" ] } ["}, {"from": "gpt", "value": "A"}]}
    ])";
    fs::create_directory(path("images"));
    write("images/present.jpg", "jpeg");
    mmca::data::blend_options o;
    o.llava_files = {write("in.json", text)};
    o.image_root = path("images");
    o.output = path("out.json");
    o.eval_fraction = 0.0;
    const auto c = mmca::data::blend(o);
    EXPECT_EQ(c.samples_read, 10u);
    EXPECT_EQ(c.skipped_missing_image, 1u);
    EXPECT_EQ(c.skipped_malformed, 7u);
    EXPECT_EQ(c.skipped_too_many_images, 0u);
    const json out = json::parse(read(o.output));
    std::set<std::string> questions;
    for (const auto& s : out["train"])
        for (const auto& r : s["rounds"]) questions.insert(r["question"]);
    EXPECT_EQ(questions, (std::set<std::string>{"Q", "Q \" ] } ["}));
}

TEST_F(Blend, ReferenceStyles) {
    const std::string text = R"([
      {"id": "x", "image": "x.jpg", "conversations": [{"from": "human", "value": "<image>\nIMAGE#1 shows what?"},
                                                     {"from": "gpt", "value": "It is red. IMAGE#1 also shows a mat; in IMAGE#1 too."}]}
    ])";
    const std::map<mmca::data::reference_style, std::string> expected = {
        {mmca::data::reference_style::letter_lower, "Image a shows what?|It is red. Image a also shows a mat; in image a too."},
        {mmca::data::reference_style::letter_upper, "Image A shows what?|It is red. Image A also shows a mat; in image A too."},
        {mmca::data::reference_style::ordinal,
         "The first image shows what?|It is red. The first image also shows a mat; in the first image too."},
    };
    for (const auto& [style, want] : expected) {
        mmca::data::blend_options o;
        o.llava_files = {write("in.json", text)};
        o.output = path("out.json");
        o.style = style;
        o.eval_fraction = 0.0;
        mmca::data::blend(o);
        const json s = json::parse(read(o.output))["train"][0];
        EXPECT_EQ(s["rounds"][0]["question"].get<std::string>() + "|" + s["rounds"][0]["answer"].get<std::string>(), want);
        EXPECT_EQ(s["reference_style"], mmca::data::to_string(style));
    }
    EXPECT_EQ(mmca::data::image_reference(mmca::data::reference_style::ordinal, 8, false), "the eighth image");
    EXPECT_EQ(mmca::data::image_reference(mmca::data::reference_style::letter_upper, 8, false), "image H");
}

TEST_F(Blend, ConcatenatedReferencesNameTheImageInTheSample) {
    // With groups of two, the second member's IMAGE#1 is the sample's second image.
    json a = json::array();
    for (int i = 0; i < 2; ++i)
        a.push_back({{"id", std::to_string(i)}, {"image", std::to_string(i) + ".jpg"},
                     {"conversations", {{{"from", "human"}, {"value", "Q"}}, {{"from", "gpt"}, {"value", "in IMAGE#1"}}}}});
    mmca::data::blend_options o;
    o.llava_files = {write("in.json", a.dump())};
    o.output = path("out.json");
    o.max_group = 2;
    o.style = mmca::data::reference_style::letter_upper;
    o.eval_fraction = 0.0;
    // Find a seed whose first group has both samples.
    for (o.seed = 0; o.seed < 50; ++o.seed) {
        mmca::data::blend(o);
        const json s = json::parse(read(o.output))["train"][0];
        if (s["images"].size() != 2) continue;
        EXPECT_EQ(s["rounds"][0]["answer"], "in image A");
        EXPECT_EQ(s["rounds"][1]["answer"], "in image B");
        return;
    }
    FAIL() << "no seed in 0..49 made a group of two";
}

TEST_F(Blend, LlavaOtterBlend) {
    // LLaVA conversations for images 1.jpg (two samples) and 2.jpg (one); none for 3.jpg.
    const std::string llava = R"([
      {"id": "l1", "image": "1.jpg", "conversations": [{"from": "human", "value": "<image>\nL1 q0"}, {"from": "gpt", "value": "L1 a0"},
                                                      {"from": "human", "value": "L1 q1"}, {"from": "gpt", "value": "L1 a1"}]},
      {"id": "l2", "image": "1.jpg", "conversations": [{"from": "human", "value": "L2 q0\n<image>"}, {"from": "gpt", "value": "L2 a0"}]},
      {"id": "l3", "image": "2.jpg", "conversations": [{"from": "human", "value": "<image>\nL3 q0"}, {"from": "gpt", "value": "L3 a0"}]}
    ])";
    // CGD: c1 (images 1, 2) with related c2; c3 (images 3, 1): its first image has no LLaVA sample;
    // c4 with nine images; c5 malformed.
    const std::string cgd = R"({"meta": {"version": "0.0.1", "nested": [1, {"a": "}"}]},
      "data": {
        "c1": {"instruction": "<image>What differs between IMAGE#1 and IMAGE#2?", "answer": "IMAGE#2 is bluer.",
               "image_ids": ["CGD_IMG_1", "CGD_IMG_2"], "rel_ins_ids": ["c2", "missing"]},
        "c2": {"instruction": "Which is larger?", "answer": "The one in IMAGE#1.",
               "image_ids": ["CGD_IMG_1", "CGD_IMG_2"], "rel_ins_ids": ["c1"]},
        "c3": {"instruction": "Compare.", "answer": "Same.", "image_ids": ["CGD_IMG_3", "CGD_IMG_1"], "rel_ins_ids": []},
        "c4": {"instruction": "Many.", "answer": "Yes.", "image_ids": ["a", "b", "c", "d", "e", "f", "g", "h", "i"]},
        "c5": {"instruction": 5, "answer": "x", "image_ids": ["CGD_IMG_1"]}
      }})";
    mmca::data::blend_options o;
    o.mode = mmca::data::blend_mode::llava_otter;
    o.llava_files = {write("llava.json", llava)};
    o.cgd_file = write("cgd.json", cgd);
    o.output = path("out.json");
    o.eval_fraction = 0.0;
    o.style = mmca::data::reference_style::ordinal;
    std::set<std::string> seen_shapes;
    for (o.seed = 0; o.seed < 30; ++o.seed) {
        const auto c = mmca::data::blend(o);
        EXPECT_EQ(c.samples_read, 8u);
        EXPECT_EQ(c.samples_written, 1u);
        EXPECT_EQ(c.skipped_no_conversation, 1u);
        EXPECT_EQ(c.skipped_too_many_images, 1u);
        EXPECT_EQ(c.skipped_malformed, 1u);
        const json s = json::parse(read(o.output))["train"][0];
        EXPECT_EQ(s["images"], json({"1.jpg", "2.jpg"}));
        // LLaVA rounds of image 1 (at least one conversation), then of image 2 (zero or more), then
        // one or two CGD rounds; image 1 shown on the first round, image 2 on its first LLaVA round
        // or on the first CGD round.
        const auto& rounds = s["rounds"];
        std::string shape;
        int shown = 0;
        std::size_t r = 0;
        ASSERT_EQ(rounds[0]["images"], 1);
        for (; r < rounds.size() && rounds[r]["question"].get<std::string>()[0] == 'L'; ++r) {
            const std::string q = rounds[r]["question"];
            shape += q.substr(0, 2) + ",";
            if (rounds[r]["images"] == 1) ++shown;
            if (q.compare(0, 2, "L3") == 0) EXPECT_EQ(shown, 2) << "image 2 shown before its LLaVA rounds";
            else EXPECT_EQ(shown, 1);
        }
        ASSERT_LT(r, rounds.size());
        EXPECT_EQ(rounds[r]["images"], 2 - shown);
        const std::size_t cgd_rounds = rounds.size() - r;
        EXPECT_GE(cgd_rounds, 1u);
        EXPECT_LE(cgd_rounds, 2u);
        for (; r < rounds.size(); ++r) {
            const std::string q = rounds[r]["question"], a = rounds[r]["answer"];
            EXPECT_TRUE((q == "What differs between the first image and the second image?" && a == "The second image is bluer.") ||
                        (q == "Which is larger?" && a == "The one in the first image."))
                << q << " | " << a;
        }
        seen_shapes.insert(shape + std::to_string(cgd_rounds));
    }
    EXPECT_GE(seen_shapes.size(), 4u) << "the draws should vary with the seed";
}

TEST_F(Blend, LlavaOtterFollowup) {
    const std::string llava = R"([
      {"id": "l1", "image": "1.jpg", "conversations": [{"from": "human", "value": "What is it?"}, {"from": "gpt", "value": "A cat."}]},
      {"id": "l2", "image": "2.jpg", "conversations": [{"from": "human", "value": "Where?"}, {"from": "gpt", "value": "Outside."}]}
    ])";
    const std::string cgd = R"({"data": {"c1": {"instruction": "Compare.", "answer": "Alike.", "image_ids": ["CGD_IMG_1", "CGD_IMG_2"]}}})";
    mmca::data::blend_options o;
    o.mode = mmca::data::blend_mode::llava_otter;
    o.llava_files = {write("llava.json", llava)};
    o.cgd_file = write("cgd.json", cgd);
    o.output = path("out.json");
    o.eval_fraction = 0.0;
    o.followup = true;
    o.style = mmca::data::reference_style::letter_lower;
    mmca::data::blend(o);
    const json rounds = json::parse(read(o.output))["train"][0]["rounds"];
    ASSERT_GE(rounds.size(), 4u);
    const auto n = rounds.size();
    EXPECT_EQ(rounds[n - 2]["question"], "In image a, what is it?");
    EXPECT_EQ(rounds[n - 2]["answer"], "In image a, a cat.");
    EXPECT_EQ(rounds[n - 1]["question"], "In image b, where?");
    EXPECT_EQ(rounds[n - 1]["images"], 0);
}

TEST_F(Blend, UnparsableInputIsAnErrorAndWritesNothing) {
    const std::vector<std::pair<std::string, std::string>> bad = {
        {"not an array", R"({"id": 1})"},
        {"truncated", R"([{"id": "a", "image": "a.jpg", "conversations": [)"},
        {"missing comma", R"([{"a": 1} {"b": 2}])"},
        {"bad element", R"([{"a": tru}])"},
        {"trailing text", R"([] x)"},
        {"unterminated string", R"(["abc)"},
    };
    for (const auto& [what, text] : bad) {
        mmca::data::blend_options o;
        o.llava_files = {write("bad.json", text)};
        o.output = path("out.json");
        try {
            mmca::data::blend(o);
            ADD_FAILURE() << what << ": no exception";
        } catch (const mmca::invalid_argument& e) {
            EXPECT_EQ(e.argument(), "llava_files[0]") << what;
            EXPECT_NE(std::string(e.what()).find("bad.json"), std::string::npos) << e.what();
        }
        EXPECT_FALSE(fs::exists(o.output)) << what;
    }
    mmca::data::blend_options o;
    o.llava_files = {path("does-not-exist.json")};
    o.output = path("out.json");
    EXPECT_THROW(mmca::data::blend(o), mmca::invalid_argument);
}

TEST_F(Blend, FailureMidWayLeavesNoPartialOutput) {
    mmca::data::blend_options o;
    o.llava_files = {llava_file("in.json", 30)};
    o.output = path("out.json");
    write("out.json", "previous contents");
    std::uint64_t calls = 0;
    o.progress = [&](std::uint64_t done, std::uint64_t) {
        ++calls;
        if (done == 3) throw std::runtime_error("stop");
    };
    EXPECT_THROW(mmca::data::blend(o), std::runtime_error);
    EXPECT_EQ(calls, 3u);
    EXPECT_EQ(read(o.output), "previous contents");
    std::vector<std::string> names = files_in_dir();
    std::sort(names.begin(), names.end());
    EXPECT_EQ(names, (std::vector<std::string>{"in.json", "out.json"})) << "a temporary file was left behind";

    // A read-only folder: the temporary file cannot be made; nothing is written.
    if (::geteuid() != 0) {
        fs::create_directory(path("ro"));
        fs::permissions(path("ro"), fs::perms::owner_read | fs::perms::owner_exec);
        o.progress = nullptr;
        o.output = path("ro/out.json");
        EXPECT_THROW(mmca::data::blend(o), mmca::invalid_argument);
        EXPECT_FALSE(fs::exists(o.output));
    }
}

TEST_F(Blend, OptionErrors) {
    mmca::data::blend_options o;
    o.output = path("out.json");
    EXPECT_THROW(mmca::data::blend(o), mmca::invalid_argument);  // no input
    o.llava_files = {llava_file("in.json", 3)};
    o.max_group = 9;
    try {
        mmca::data::blend(o);
        FAIL() << "no exception";
    } catch (const mmca::invalid_argument& e) {
        EXPECT_EQ(e.argument(), "max_group");
    }
    o.max_group = 2;
    o.eval_fraction = 1.5;
    EXPECT_THROW(mmca::data::blend(o), mmca::invalid_argument);
    o.eval_fraction = 0.1;
    o.mode = mmca::data::blend_mode::llava_otter;
    EXPECT_THROW(mmca::data::blend(o), mmca::invalid_argument);  // no cgd_file
    EXPECT_THROW(mmca::data::parse_reference_style("fancy"), mmca::invalid_argument);
    EXPECT_EQ(mmca::data::parse_blend_mode("llava_otter"), mmca::data::blend_mode::llava_otter);
}

TEST(BlendRng, FixedSequence) {
    // mt19937_64's 10000th output for the default seed is fixed by the C++ standard; the mapping to
    // ranges is ours and must not change either.
    std::mt19937_64 engine;
    engine.discard(9999);
    EXPECT_EQ(engine(), 9981545732273789042ull);
    mmca::data::blend_rng a(42), b(42);
    std::vector<std::uint64_t> xs, ys;
    for (int i = 0; i < 100; ++i) {
        xs.push_back(a.uniform(1, 3));
        ys.push_back(b.uniform(1, 3));
        EXPECT_GE(xs.back(), 1u);
        EXPECT_LE(xs.back(), 3u);
    }
    EXPECT_EQ(xs, ys);
    const auto s = mmca::data::blend_rng(7).sample(10, 10);
    EXPECT_EQ(std::set<std::uint32_t>(s.begin(), s.end()).size(), 10u);
}

}  // namespace
