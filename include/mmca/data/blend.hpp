// mmca/data/blend.hpp - multi-image multi-round training data from single-image data (SPEC §7).
//
// Two modes (docs/chat.md, "Data blending", has the formats and an example):
//   random_concat  LLaVA samples (one image, several rounds each) shuffled and cut into groups of
//                  1..max_group; a group's rounds, concatenated, make one sample whose images are
//                  numbered 1..n in order. Every group is kept (the reference drops the first one).
//   llava_otter    per MIMIC-IT CGD sample (an instruction with image_ids plus its rel_ins_ids): first
//                  1..m LLaVA conversations about each image (0..m for the last), each image shown
//                  on its first round, then 1..r of the CGD rounds, the first of which shows the
//                  images not shown yet; optionally one follow-up LLaVA conversation per image whose
//                  rounds start "In <image reference>, ".
// Image references written "IMAGE#N" in the input text (N = 1-based image of that input record;
// always 1 for LLaVA) are rewritten per output sample into one of three styles, "image a".."image h",
// "image A".."image H" or "the first image".."the eighth image", capitalised at a sentence start.
//
// Memory: inputs are read element by element (mmca/data/json_stream.hpp); only byte offsets of
// valid records (16 bytes per LLaVA sample), group boundaries and the split permutation stay in
// memory, and samples are read again by offset while the output is written.
//
// Randomness: std::mt19937_64 (whose output the C++ standard fixes) with the integer mapping of
// blend_rng below, so a seed gives the same bytes with every standard library. The shuffle uses
// mt19937_64(seed); each output sample draws from mt19937_64(splitmix64(seed, sample index)); the
// split uses mt19937_64(split_seed).
//
// The output is written to a temporary file in the output's folder and renamed over the output
// only when complete: a failure (bad input, full disk, an exception from the progress callback)
// leaves no partial file and an existing output unchanged.
#pragma once

#include "mmca/core/error.hpp"
#include "mmca/data/json_stream.hpp"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cerrno>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <functional>
#include <limits>
#include <memory>
#include <numeric>
#include <random>
#include <string>
#include <unordered_map>
#include <vector>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

namespace mmca::data {

enum class blend_mode { random_concat, llava_otter };

/// How image references are written in an output sample.
enum class reference_style {
    letter_lower,  ///< "image a" .. "image h"
    letter_upper,  ///< "image A" .. "image H"
    ordinal,       ///< "the first image" .. "the eighth image"
    random,        ///< one of the three above, drawn per output sample
};

inline std::string to_string(blend_mode m) { return m == blend_mode::random_concat ? "random_concat" : "llava_otter"; }

inline std::string to_string(reference_style s) {
    switch (s) {
        case reference_style::letter_lower: return "letter_lower";
        case reference_style::letter_upper: return "letter_upper";
        case reference_style::ordinal: return "ordinal";
        default: return "random";
    }
}

inline blend_mode parse_blend_mode(const std::string& name) {
    if (name == "random_concat") return blend_mode::random_concat;
    if (name == "llava_otter") return blend_mode::llava_otter;
    throw invalid_argument("mmca::data::parse_blend_mode", "mode", "'" + name + "'", "'random_concat' or 'llava_otter'");
}

inline reference_style parse_reference_style(const std::string& name) {
    for (auto s : {reference_style::letter_lower, reference_style::letter_upper, reference_style::ordinal, reference_style::random})
        if (name == to_string(s)) return s;
    throw invalid_argument("mmca::data::parse_reference_style", "style", "'" + name + "'",
                           "'letter_lower', 'letter_upper', 'ordinal' or 'random'");
}

struct blend_options {
    blend_mode mode = blend_mode::random_concat;
    std::vector<std::string> llava_files;  ///< LLaVA-format JSON arrays (one pool)
    std::string cgd_file;                  ///< MIMIC-IT CGD instructions JSON (llava_otter only)
    std::string image_root;                ///< when set, records whose image file is missing under it are skipped
    std::string output;                    ///< output JSON path
    std::int32_t max_group = 3;            ///< random_concat: groups of 1..max_group samples
    std::uint64_t seed = 0;                ///< shuffle, group sizes and per-sample draws
    std::uint64_t split_seed = 1234;       ///< train/eval split
    double eval_fraction = 0.1;            ///< share of output samples in "eval" (rounded to nearest)
    reference_style style = reference_style::random;
    bool followup = false;                 ///< llava_otter: one follow-up LLaVA conversation per image
    std::int32_t max_images = 8;           ///< records needing more images are skipped (1..8)
    /// Called after each written output sample with (written so far, total); may throw to abort.
    std::function<void(std::uint64_t, std::uint64_t)> progress;
};

struct blend_counts {
    std::uint64_t samples_read = 0;             ///< input records (LLaVA samples + CGD entries)
    std::uint64_t samples_written = 0;          ///< output samples (train + eval)
    std::uint64_t train_samples = 0;
    std::uint64_t eval_samples = 0;
    std::uint64_t skipped_malformed = 0;        ///< records that do not have the documented form
    std::uint64_t skipped_missing_image = 0;    ///< records whose image file is not under image_root
    std::uint64_t skipped_too_many_images = 0;  ///< CGD records (with their related ones) above max_images
    std::uint64_t skipped_no_conversation = 0;  ///< CGD records with an image (not the last) that no LLaVA sample shows
    std::uint64_t skipped() const {
        return skipped_malformed + skipped_missing_image + skipped_too_many_images + skipped_no_conversation;
    }
};

/// splitmix64's output function: a 64-bit mixer, used to derive per-sample seeds.
inline std::uint64_t splitmix64(std::uint64_t x) {
    x += 0x9E3779B97F4A7C15ull;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
    return x ^ (x >> 31);
}

/// mt19937_64 with a fixed mapping to integer ranges (rejection sampling on the top of the range,
/// then modulo), independent of the standard library's distributions.
class blend_rng {
public:
    explicit blend_rng(std::uint64_t seed) : engine_(seed) {}
    /// Uniform in [0, n), n >= 1.
    std::uint64_t below(std::uint64_t n) {
        const std::uint64_t limit = std::numeric_limits<std::uint64_t>::max() - std::numeric_limits<std::uint64_t>::max() % n;
        std::uint64_t x;
        do x = engine_();
        while (x >= limit);
        return x % n;
    }
    /// Uniform in [lo, hi], lo <= hi.
    std::uint64_t uniform(std::uint64_t lo, std::uint64_t hi) { return lo + below(hi - lo + 1); }
    /// Fisher-Yates shuffle (from the back: element i swaps with one of [0, i]).
    template <class T>
    void shuffle(std::vector<T>& v) {
        for (std::size_t i = v.size(); i > 1; --i) std::swap(v[i - 1], v[static_cast<std::size_t>(below(i))]);
    }
    /// k distinct values of [0, n) in draw order (partial Fisher-Yates from the front).
    std::vector<std::uint32_t> sample(std::uint32_t n, std::uint32_t k) {
        std::vector<std::uint32_t> idx(n);
        std::iota(idx.begin(), idx.end(), 0u);
        for (std::uint32_t i = 0; i < k; ++i) std::swap(idx[i], idx[static_cast<std::size_t>(uniform(i, n - 1))]);
        idx.resize(k);
        return idx;
    }

private:
    std::mt19937_64 engine_;
};

/// The generator of output sample `index`.
inline blend_rng sample_rng(std::uint64_t seed, std::uint64_t index) { return blend_rng(splitmix64(seed ^ splitmix64(index))); }

/// "image c" / "image C" / "the third image" for image number n (1..8), capitalised when asked.
inline std::string image_reference(reference_style style, int n, bool capital) {
    static const char* ordinals[] = {"first", "second", "third", "fourth", "fifth", "sixth", "seventh", "eighth"};
    std::string s;
    if (style == reference_style::ordinal)
        s = std::string("the ") + ordinals[n - 1] + " image";
    else
        s = std::string("image ") + static_cast<char>((style == reference_style::letter_upper ? 'A' : 'a') + n - 1);
    if (capital) s[0] = static_cast<char>(s[0] - 'a' + 'A');
    return s;
}

namespace detail {

/// Positions and numbers of the "IMAGE#N" references in text (N of 1..3 digits).
struct reference_match {
    std::size_t pos, len;
    int number;
};
inline std::vector<reference_match> find_references(const std::string& text) {
    std::vector<reference_match> found;
    for (std::size_t pos = text.find("IMAGE#"); pos != std::string::npos; pos = text.find("IMAGE#", pos + 1)) {
        std::size_t end = pos + 6;
        int n = 0;
        while (end < text.size() && end - pos < 9 && text[end] >= '0' && text[end] <= '9') n = n * 10 + (text[end++] - '0');
        if (end > pos + 6) found.push_back({pos, end - pos, n});
    }
    return found;
}

/// Whether all references of text name images 1..count.
inline bool references_within(const std::string& text, int count) {
    for (const auto& m : find_references(text))
        if (m.number < 1 || m.number > count) return false;
    return true;
}

/// text with "IMAGE#N" replaced by the reference of image map(N) in `style` (a concrete style),
/// capitalised at the start of the text, of a line, or after ". ", "? ", "! ".
template <class Map>
std::string rewrite_references(const std::string& text, reference_style style, Map&& map) {
    const auto found = find_references(text);
    if (found.empty()) return text;
    std::string out;
    std::size_t last = 0;
    for (const auto& m : found) {
        out.append(text, last, m.pos - last);
        const bool sentence_start = m.pos == 0 || text[m.pos - 1] == '\n' ||
                                    (m.pos >= 2 && (text[m.pos - 1] == ' ' || text[m.pos - 1] == '\t') &&
                                     (text[m.pos - 2] == '.' || text[m.pos - 2] == '?' || text[m.pos - 2] == '!'));
        out += image_reference(style, map(m.number), sentence_start);
        last = m.pos + m.len;
    }
    out.append(text, last, std::string::npos);
    return out;
}

inline std::string trim(const std::string& s) {
    const char* ws = " \t\n\r\v\f";
    const auto b = s.find_first_not_of(ws);
    if (b == std::string::npos) return {};
    return s.substr(b, s.find_last_not_of(ws) - b + 1);
}

/// A question without "<image>" markers and without surrounding whitespace.
inline std::string clean_question(std::string q) {
    for (auto p = q.find("<image>"); p != std::string::npos; p = q.find("<image>")) q.erase(p, 7);
    return trim(q);
}

/// Text the conversation template can hold: no "<image>" or "### Image:" of its own.
inline bool template_safe(const std::string& s) {
    return s.find("<image>") == std::string::npos && s.find("### Image:") == std::string::npos;
}

struct round_text {
    std::string question, answer;
};

struct llava_record {
    std::string id, image;
    std::vector<round_text> rounds;
};

enum class record_status { ok, malformed, missing_image };

/// Image root check: true when no root is given or root/image exists.
inline bool image_present(const std::string& root, const std::string& image) {
    if (root.empty()) return true;
    std::error_code ec;
    return std::filesystem::exists(std::filesystem::path(root) / image, ec);
}

inline std::string id_text(const nlohmann::json& j) {
    if (j.is_string()) return j.get<std::string>();
    return j.dump();
}

/// A LLaVA sample: {"id": str|int (optional), "image": str, "conversations": [{"from": "human",
/// "value": str}, {"from": "gpt", "value": str}, ...]} with alternating turns, human first.
inline record_status parse_llava(const nlohmann::json& j, const std::string& image_root, llava_record& out) {
    if (!j.is_object()) return record_status::malformed;
    if (!j.contains("image") || !j["image"].is_string() || j["image"].get_ref<const std::string&>().empty())
        return record_status::malformed;
    if (j.contains("id") && !(j["id"].is_string() || j["id"].is_number_integer())) return record_status::malformed;
    if (!j.contains("conversations") || !j["conversations"].is_array()) return record_status::malformed;
    const auto& conv = j["conversations"];
    if (conv.empty() || conv.size() % 2 != 0) return record_status::malformed;
    out.rounds.clear();
    for (std::size_t t = 0; t < conv.size(); t += 2) {
        const auto& h = conv[t];
        const auto& g = conv[t + 1];
        if (!h.is_object() || !g.is_object() || h.value("from", std::string()) != "human" ||
            g.value("from", std::string()) != "gpt" || !h.contains("value") || !h["value"].is_string() ||
            !g.contains("value") || !g["value"].is_string())
            return record_status::malformed;
        round_text r{clean_question(h["value"].get<std::string>()), g["value"].get<std::string>()};
        if (!template_safe(r.question) || !template_safe(r.answer) || !references_within(r.question, 1) ||
            !references_within(r.answer, 1))
            return record_status::malformed;
        out.rounds.push_back(std::move(r));
    }
    out.image = j["image"].get<std::string>();
    out.id = j.contains("id") ? id_text(j["id"]) : std::string();
    if (!image_present(image_root, out.image)) return record_status::missing_image;
    return record_status::ok;
}

struct cgd_record {
    std::vector<std::string> images;  ///< image file names, in image_ids order
    std::vector<std::string> related;
    round_text round;
};

/// File name of a MIMIC-IT CGD image id: "CGD_IMG_000000123456" -> "000000123456.jpg" (the COCO
/// train2017 name), any other id -> id + ".jpg".
inline std::string cgd_image_file(const std::string& id) {
    const std::string prefix = "CGD_IMG_";
    if (id.compare(0, prefix.size(), prefix) == 0) return id.substr(prefix.size()) + ".jpg";
    return id + ".jpg";
}

/// A CGD entry: {"instruction": str, "answer": str, "image_ids": [str, ...] (non-empty, distinct),
/// "rel_ins_ids": [str, ...] (optional)}; other keys are ignored.
inline bool parse_cgd(const nlohmann::json& j, cgd_record& out) {
    if (!j.is_object() || !j.contains("instruction") || !j["instruction"].is_string() || !j.contains("answer") ||
        !j["answer"].is_string() || !j.contains("image_ids") || !j["image_ids"].is_array() || j["image_ids"].empty())
        return false;
    out.images.clear();
    out.related.clear();
    for (const auto& id : j["image_ids"]) {
        if (!id.is_string()) return false;
        out.images.push_back(cgd_image_file(id.get<std::string>()));
    }
    for (std::size_t a = 0; a < out.images.size(); ++a)
        for (std::size_t b = a + 1; b < out.images.size(); ++b)
            if (out.images[a] == out.images[b]) return false;
    if (j.contains("rel_ins_ids")) {
        if (!j["rel_ins_ids"].is_array()) return false;
        for (const auto& id : j["rel_ins_ids"]) {
            if (!id.is_string()) return false;
            out.related.push_back(id.get<std::string>());
        }
    }
    out.round = {clean_question(j["instruction"].get<std::string>()), j["answer"].get<std::string>()};
    const int n = static_cast<int>(out.images.size());
    return template_safe(out.round.question) && template_safe(out.round.answer) &&
           references_within(out.round.question, n) && references_within(out.round.answer, n);
}

/// Where a valid record lies: bytes [offset, offset + length) of input file `file`.
struct record_ref {
    std::uint64_t offset;
    std::uint32_t length;
    std::uint32_t file;
};

/// The output file, written under a temporary name in its folder and renamed when complete.
class atomic_output {
public:
    explicit atomic_output(const std::string& path) : path_(path) {
        const char* where = "mmca::data::blend";
        std::filesystem::path p(path);
        MMCA_CHECK_ARG(!path.empty() && p.has_filename(), where, "output", "'" + path + "'", "a file path");
        const std::string dir = p.has_parent_path() ? p.parent_path().string() : std::string(".");
        std::string tmpl = dir + "/." + p.filename().string() + ".tmp-XXXXXX";
        std::vector<char> name(tmpl.begin(), tmpl.end());
        name.push_back('\0');
        const int fd = ::mkstemp(name.data());
        MMCA_CHECK_ARG(fd >= 0, where, "output",
                       "'" + path + "' (cannot create a temporary file in '" + dir + "': " + std::strerror(errno) + ")",
                       "a path in an existing, writable folder");
        tmp_ = name.data();
        ::fchmod(fd, 0644);
        file_ = ::fdopen(fd, "wb");
        if (!file_) {
            ::close(fd);
            ::unlink(tmp_.c_str());
            MMCA_CHECK_ARG(false, where, "output", "'" + path + "' (fdopen failed)", "a writable file");
        }
    }
    atomic_output(const atomic_output&) = delete;
    atomic_output& operator=(const atomic_output&) = delete;
    ~atomic_output() {
        if (file_) std::fclose(file_);
        if (!committed_) ::unlink(tmp_.c_str());
    }
    const std::string& temporary_path() const { return tmp_; }

    void write(const std::string& s) {
        if (std::fwrite(s.data(), 1, s.size(), file_) != s.size()) fail("write");
    }
    void commit() {
        if (std::fflush(file_) != 0) fail("flush");
        if (::fsync(::fileno(file_)) != 0) fail("fsync");
        const int rc = std::fclose(file_);
        file_ = nullptr;
        if (rc != 0) fail("close");
        if (std::rename(tmp_.c_str(), path_.c_str()) != 0) fail("rename onto the output");
        committed_ = true;
    }

private:
    [[noreturn]] void fail(const char* step) {
        throw invalid_argument("mmca::data::blend", "output",
                               "'" + path_ + "' (" + step + " failed: " + std::strerror(errno) + ")",
                               "a writable output path with enough free space");
    }
    std::string path_, tmp_;
    std::FILE* file_ = nullptr;
    bool committed_ = false;
};

inline nlohmann::ordered_json round_json(const std::string& q, const std::string& a, int images) {
    nlohmann::ordered_json r;
    r["question"] = q;
    r["answer"] = a;
    r["images"] = images;
    return r;
}

inline reference_style draw_style(reference_style style, blend_rng& rng) {
    if (style != reference_style::random) return style;
    return static_cast<reference_style>(rng.below(3));
}

inline llava_record read_llava(std::vector<std::unique_ptr<file_ranges>>& files, const record_ref& ref) {
    const nlohmann::json j = nlohmann::json::parse(files[ref.file]->read(ref.offset, ref.length));
    llava_record rec;
    if (parse_llava(j, std::string(), rec) != record_status::ok)
        throw invalid_argument("mmca::data::blend", "llava_files", "a record at byte " + std::to_string(ref.offset) +
                                   " that changed since it was read", "input files that do not change during the blend");
    return rec;
}

}  // namespace detail

/// Runs a blend (see the file comment) and returns its counts. Throws mmca::invalid_argument for bad
/// options and for input files that are not JSON of the expected top-level form; records of the
/// wrong form are skipped and counted.
inline blend_counts blend(const blend_options& o) {
    using detail::record_ref;
    const char* where = "mmca::data::blend";
    MMCA_CHECK_ARG(!o.llava_files.empty(), where, "llava_files", "an empty list", "at least one LLaVA JSON file");
    MMCA_CHECK_ARG(o.max_images >= 1 && o.max_images <= 8, where, "max_images", std::to_string(o.max_images), "1..8");
    if (o.mode == blend_mode::random_concat)
        MMCA_CHECK_ARG(o.max_group >= 1 && o.max_group <= o.max_images, where, "max_group", std::to_string(o.max_group),
                       "1..max_images (" + std::to_string(o.max_images) + ")");
    else
        MMCA_CHECK_ARG(!o.cgd_file.empty(), where, "cgd_file", "an empty path", "a MIMIC-IT CGD instructions JSON file");
    MMCA_CHECK_ARG(o.eval_fraction >= 0.0 && o.eval_fraction <= 1.0, where, "eval_fraction",
                   mmca::detail::to_text(o.eval_fraction), "a fraction in [0, 1]");
    MMCA_CHECK_ARG(!o.output.empty(), where, "output", "an empty path", "an output file path");
    if (!o.image_root.empty())
        MMCA_CHECK_ARG(std::filesystem::is_directory(o.image_root), where, "image_root", "'" + o.image_root + "'",
                       "an existing folder (or an empty string for no image check)");

    blend_counts counts;

    // Pass 1: LLaVA records (offsets of the valid ones).
    std::vector<record_ref> llava;
    std::unordered_map<std::string, std::vector<std::uint32_t>> by_image;  // llava_otter: image -> records
    for (std::size_t f = 0; f < o.llava_files.size(); ++f) {
        const std::string argument = "llava_files[" + std::to_string(f) + "]";
        detail::llava_record rec;
        for_each_array_element(o.llava_files[f], where, argument, [&](std::uint64_t, std::uint64_t at, const std::string& text) {
            ++counts.samples_read;
            const nlohmann::json j = nlohmann::json::parse(text, nullptr, false);
            if (j.is_discarded())
                throw invalid_argument(where, argument, "'" + o.llava_files[f] + "' that is not valid JSON: the element at byte " +
                                                            std::to_string(at),
                                       "a JSON array of LLaVA samples");
            const auto status = detail::parse_llava(j, o.image_root, rec);
            if (status == detail::record_status::malformed) { ++counts.skipped_malformed; return; }
            if (status == detail::record_status::missing_image) { ++counts.skipped_missing_image; return; }
            MMCA_CHECK_ARG(text.size() <= std::numeric_limits<std::uint32_t>::max(), where, argument,
                           "a sample of " + std::to_string(text.size()) + " bytes", "samples below 4 GiB");
            if (o.mode == blend_mode::llava_otter) by_image[rec.image].push_back(static_cast<std::uint32_t>(llava.size()));
            llava.push_back({at, static_cast<std::uint32_t>(text.size()), static_cast<std::uint32_t>(f)});
        });
    }
    std::vector<std::unique_ptr<file_ranges>> llava_files;
    for (std::size_t f = 0; f < o.llava_files.size(); ++f)
        llava_files.push_back(std::make_unique<file_ranges>(o.llava_files[f], where, "llava_files[" + std::to_string(f) + "]"));

    // Output samples: group g is records [group_start[g], group_start[g + 1]) of `members`.
    std::vector<std::uint64_t> group_start;
    std::vector<record_ref> cgd;                 // llava_otter: the valid CGD records, file order
    std::vector<std::uint32_t> cgd_members;      // llava_otter: group members (indices into cgd)
    std::unique_ptr<file_ranges> cgd_file;
    if (o.mode == blend_mode::random_concat) {
        blend_rng rng(o.seed);
        rng.shuffle(llava);
        for (std::uint64_t p = 0; p < llava.size();) {
            group_start.push_back(p);
            p = std::min<std::uint64_t>(llava.size(), p + rng.uniform(1, static_cast<std::uint64_t>(o.max_group)));
        }
        group_start.push_back(llava.size());
    } else {
        // Pass 2: CGD records. Only keys, related keys and offsets stay in memory.
        struct cgd_entry {
            std::string key;
            std::vector<std::string> related;
            std::uint32_t images;
            bool valid;
        };
        std::vector<cgd_entry> entries;
        std::vector<record_ref> entry_refs;
        detail::cgd_record rec;
        for_each_object_member(o.cgd_file, "data", where, "cgd_file", [&](const std::string& key, std::uint64_t at, const std::string& text) {
            ++counts.samples_read;
            const nlohmann::json j = nlohmann::json::parse(text, nullptr, false);
            if (j.is_discarded())
                throw invalid_argument(where, "cgd_file", "'" + o.cgd_file + "' that is not valid JSON: the value at byte " + std::to_string(at),
                                       "a MIMIC-IT instructions file {\"data\": {id: {...}}}");
            const bool valid = detail::parse_cgd(j, rec);
            if (!valid) ++counts.skipped_malformed;
            entries.push_back({key, valid ? rec.related : std::vector<std::string>{}, static_cast<std::uint32_t>(rec.images.size()), valid});
            entry_refs.push_back({at, static_cast<std::uint32_t>(text.size()), 0});
        });
        cgd_file = std::make_unique<file_ranges>(o.cgd_file, where, "cgd_file");
        std::unordered_map<std::string, std::uint32_t> index;
        for (std::uint32_t i = 0; i < entries.size(); ++i) index.emplace(entries[i].key, i);
        // Groups in file order: a record and those of its rel_ins_ids not taken yet (the reference's rule).
        std::vector<bool> taken(entries.size(), false);
        std::vector<std::uint32_t> members;
        for (std::uint32_t i = 0; i < entries.size(); ++i) {
            if (taken[i] || !entries[i].valid) continue;
            members.assign(1, i);
            taken[i] = true;
            for (const auto& rel : entries[i].related) {
                auto it = index.find(rel);
                if (it == index.end() || taken[it->second] || !entries[it->second].valid) continue;
                taken[it->second] = true;
                members.push_back(it->second);
            }
            const nlohmann::json head = nlohmann::json::parse(cgd_file->read(entry_refs[i].offset, entry_refs[i].length));
            detail::parse_cgd(head, rec);
            const auto n = static_cast<std::uint64_t>(members.size());
            if (rec.images.size() > static_cast<std::size_t>(o.max_images)) { counts.skipped_too_many_images += n; continue; }
            bool present = true, conversations = true;
            for (std::size_t m = 0; m < rec.images.size(); ++m) {
                present = present && detail::image_present(o.image_root, rec.images[m]);
                if (m + 1 < rec.images.size() && by_image.find(rec.images[m]) == by_image.end()) conversations = false;
            }
            if (!present) { counts.skipped_missing_image += n; continue; }
            if (!conversations) { counts.skipped_no_conversation += n; continue; }
            // Related records may name more images than the head shows: their references must fit.
            bool fits = true;
            for (std::size_t m = 1; m < members.size(); ++m) fits = fits && entries[members[m]].images <= rec.images.size();
            if (!fits) { counts.skipped_malformed += n; continue; }
            group_start.push_back(cgd_members.size());
            for (auto m : members) {
                cgd_members.push_back(static_cast<std::uint32_t>(cgd.size()));
                cgd.push_back(entry_refs[m]);
            }
        }
        group_start.push_back(cgd_members.size());
    }

    // The split: groups shuffled with split_seed; the first ones are "train", the rest "eval".
    const std::uint64_t n_groups = group_start.size() - 1;
    std::vector<std::uint64_t> order(n_groups);
    std::iota(order.begin(), order.end(), std::uint64_t(0));
    blend_rng split_rng(o.split_seed);
    split_rng.shuffle(order);
    const auto n_eval = static_cast<std::uint64_t>(std::floor(static_cast<double>(n_groups) * o.eval_fraction + 0.5));
    counts.eval_samples = std::min(n_eval, n_groups);
    counts.train_samples = n_groups - counts.eval_samples;

    auto build_sample = [&](std::uint64_t g) {
        blend_rng rng = sample_rng(o.seed, g);
        const reference_style style = detail::draw_style(o.style, rng);
        nlohmann::ordered_json sample;
        nlohmann::ordered_json images = nlohmann::ordered_json::array();
        nlohmann::ordered_json rounds = nlohmann::ordered_json::array();
        std::string id;
        if (o.mode == blend_mode::random_concat) {
            for (std::uint64_t m = group_start[g]; m < group_start[g + 1]; ++m) {
                const detail::llava_record rec = detail::read_llava(llava_files, llava[m]);
                const int number = static_cast<int>(m - group_start[g]) + 1;
                id += (id.empty() ? "" : "+") + rec.id;
                images.push_back(rec.image);
                for (std::size_t r = 0; r < rec.rounds.size(); ++r) {
                    auto map = [&](int) { return number; };
                    rounds.push_back(detail::round_json(detail::rewrite_references(rec.rounds[r].question, style, map),
                                                        detail::rewrite_references(rec.rounds[r].answer, style, map), r == 0 ? 1 : 0));
                }
            }
        } else {
            const auto first = group_start[g], last = group_start[g + 1];
            auto read_cgd = [&](std::uint64_t m) {
                detail::cgd_record rec;
                const record_ref& ref = cgd[cgd_members[m]];
                detail::parse_cgd(nlohmann::json::parse(cgd_file->read(ref.offset, ref.length)), rec);
                return rec;
            };
            const detail::cgd_record head = read_cgd(first);
            const int n = static_cast<int>(head.images.size());
            id = "cgd";
            int shown = 0;
            for (int i = 0; i < n; ++i) {
                images.push_back(head.images[static_cast<std::size_t>(i)]);
                auto it = by_image.find(head.images[static_cast<std::size_t>(i)]);
                if (it == by_image.end()) continue;
                const auto count = static_cast<std::uint32_t>(it->second.size());
                const auto draws = static_cast<std::uint32_t>(rng.uniform(i + 1 < n ? 1 : 0, count));
                for (std::uint32_t c : rng.sample(count, draws)) {
                    const detail::llava_record rec = detail::read_llava(llava_files, llava[it->second[c]]);
                    auto map = [&](int) { return i + 1; };
                    for (const auto& r : rec.rounds) {
                        const bool show = shown == i;
                        rounds.push_back(detail::round_json(detail::rewrite_references(r.question, style, map),
                                                            detail::rewrite_references(r.answer, style, map), show ? 1 : 0));
                        if (show) ++shown;
                    }
                }
            }
            const auto m_count = static_cast<std::uint32_t>(last - first);
            const auto draws = static_cast<std::uint32_t>(rng.uniform(1, m_count));
            for (std::uint32_t c : rng.sample(m_count, draws)) {
                const detail::cgd_record rec = read_cgd(first + c);
                auto map = [](int k) { return k; };
                rounds.push_back(detail::round_json(detail::rewrite_references(rec.round.question, style, map),
                                                    detail::rewrite_references(rec.round.answer, style, map), n - shown));
                shown = n;
            }
            if (o.followup) {
                for (int i = 0; i < n; ++i) {
                    auto it = by_image.find(head.images[static_cast<std::size_t>(i)]);
                    if (it == by_image.end()) continue;
                    const auto c = static_cast<std::uint32_t>(rng.below(it->second.size()));
                    const detail::llava_record rec = detail::read_llava(llava_files, llava[it->second[c]]);
                    auto lower_first = [](std::string s) {
                        if (!s.empty() && s.compare(0, 6, "IMAGE#") != 0 && s[0] >= 'A' && s[0] <= 'Z') s[0] = static_cast<char>(s[0] - 'A' + 'a');
                        return s;
                    };
                    auto map = [&](int) { return i + 1; };
                    const std::string tag = "In IMAGE#" + std::to_string(i + 1) + ", ";
                    for (const auto& r : rec.rounds)
                        rounds.push_back(detail::round_json(detail::rewrite_references(tag + lower_first(r.question), style, map),
                                                            detail::rewrite_references(tag + lower_first(r.answer), style, map), 0));
                }
            }
            id += "-" + std::to_string(g);
        }
        sample["id"] = id;
        sample["images"] = std::move(images);
        sample["rounds"] = std::move(rounds);
        sample["reference_style"] = to_string(style);
        return sample;
    };

    detail::atomic_output out(o.output);
    {
        nlohmann::ordered_json header;
        header["format"] = "mmca-blend";
        header["version"] = 1;
        header["mode"] = to_string(o.mode);
        header["seed"] = o.seed;
        header["split_seed"] = o.split_seed;
        header["eval_fraction"] = o.eval_fraction;
        header["max_group"] = o.max_group;
        header["style"] = to_string(o.style);
        std::string text = header.dump();
        text.pop_back();  // the closing '}': the splits follow
        out.write(text);
    }
    std::uint64_t written = 0;
    for (int split = 0; split < 2; ++split) {
        const std::uint64_t begin = split == 0 ? 0 : counts.train_samples;
        const std::uint64_t end = split == 0 ? counts.train_samples : n_groups;
        out.write(split == 0 ? ",\n\"train\": [" : "],\n\"eval\": [");
        for (std::uint64_t k = begin; k < end; ++k) {
            out.write((k == begin ? "\n" : ",\n") + build_sample(order[k]).dump());
            ++written;
            if (o.progress) o.progress(written, n_groups);
        }
        if (end > begin) out.write("\n");
    }
    out.write("]}\n");
    out.commit();
    counts.samples_written = written;
    return counts;
}

}  // namespace mmca::data
