// tests/cpp/text_test_util.hpp - small SentencePiece models trained by spm_train for the text tests,
// and spm_encode (the SentencePiece command-line encoder) as the oracle for token ids.
//
// Two BPE models with LLaMa's layout (0 <unk>, 1 <s>, 2 </s>, 3..258 byte pieces, identity
// normalisation, split digits, byte fallback), trained once per test run on generated text:
//   plain  --add_dummy_prefix=false: SentencePiece adds no "▁" in front of a text. No piece contains
//          "\n" (spm_train reads lines), so the ids of a text are those of its lines, joined by the
//          byte piece <0x0A> (id 13): multi-line texts can be checked against spm_encode line by line.
//   llama  --add_dummy_prefix=true, as LLaMa's tokenizer.model; checked against spm_encode on
//          single-line texts.
#pragma once

#include <gtest/gtest.h>

#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include <unistd.h>

namespace mmca_text_test {

struct spm_models {
    std::string dir;
    std::string plain;  ///< no dummy prefix
    std::string llama;  ///< dummy prefix, as LLaMa
    ~spm_models() {
        std::error_code ec;
        if (!dir.empty()) std::filesystem::remove_all(dir, ec);
    }
};

inline bool have_spm_tools() {
    return std::system("command -v spm_train >/dev/null 2>&1 && command -v spm_encode >/dev/null 2>&1") == 0;
}

inline std::string make_temp_dir(const std::string& stem) {
    std::string tmpl = "/tmp/" + stem + "-XXXXXX";
    std::vector<char> name(tmpl.begin(), tmpl.end());
    name.push_back('\0');
    const char* made = ::mkdtemp(name.data());
    return made ? std::string(made) : std::string();
}

/// The two models (trained on the first call), or nullptr when spm_train/spm_encode are missing.
inline const spm_models* trained_models() {
    static const std::unique_ptr<spm_models> models = []() -> std::unique_ptr<spm_models> {
        if (!have_spm_tools()) return nullptr;
        auto m = std::make_unique<spm_models>();
        m->dir = make_temp_dir("mmca-text-test");
        if (m->dir.empty()) return nullptr;
        // Words of the template and of the tests; no 'x', 'z', 'é' or '€', so those need byte pieces.
        const std::vector<std::string> words = {
            "the", "a", "cat", "dog", "sits", "on", "mat", "red", "chair", "what", "is", "shown", "in",
            "picture", "image", "question", "answer", "you", "are", "helpful", "language", "and", "vision",
            "assistant", "able", "to", "understand", "visual", "content", "that", "user", "provides",
            "assist", "with", "variety", "of", "tasks", "using", "natural", "###", "Image", "Question:",
            "Answer:", "Image:", "You", "What", "The", "colour", "blue", "green", "small", "large", "left",
            "right", "two", "people", "street", "car", "0", "1", "2", "3", "4", "5", "6", "7", "8", "9",
            ".", ",", "?", "!", "<", ">", "PAD", "/"};
        std::mt19937 rng(12345);
        std::ofstream corpus(m->dir + "/corpus.txt");
        for (int line = 0; line < 3000; ++line) {
            for (int w = 0; w < 12; ++w) corpus << (w ? " " : "") << words[rng() % words.size()];
            corpus << "\n";
        }
        corpus.close();
        const std::string common =
            " --input=" + m->dir + "/corpus.txt --model_type=bpe --vocab_size=500 --byte_fallback=true"
            " --bos_id=1 --eos_id=2 --unk_id=0 --pad_id=-1 --character_coverage=1.0"
            " --normalization_rule_name=identity --remove_extra_whitespaces=false --split_digits=true"
            " --allow_whitespace_only_pieces=true --minloglevel=2";
        m->plain = m->dir + "/plain";
        m->llama = m->dir + "/llama";
        if (std::system(("spm_train" + common + " --add_dummy_prefix=false --model_prefix=" + m->plain + " >/dev/null 2>&1").c_str()) != 0 ||
            std::system(("spm_train" + common + " --add_dummy_prefix=true --model_prefix=" + m->llama + " >/dev/null 2>&1").c_str()) != 0)
            return nullptr;
        m->plain += ".model";
        m->llama += ".model";
        return m;
    }();
    return models.get();
}

/// Id of the byte piece <0x0A> ("\n") in LLaMa's layout.
inline constexpr std::int32_t newline_id = 3 + 0x0A;

/// spm_encode's ids of `text`, one line at a time, the lines joined by newline_id (see the file comment).
inline std::vector<std::int32_t> spm_encode_ids(const std::string& model, const std::string& text) {
    static int counter = 0;
    const std::string dir = trained_models()->dir;
    const std::string in = dir + "/in" + std::to_string(counter) + ".txt";
    const std::string out = dir + "/out" + std::to_string(counter++) + ".txt";
    std::vector<std::string> lines;
    std::string::size_type start = 0;
    for (;;) {
        const auto nl = text.find('\n', start);
        lines.push_back(text.substr(start, nl == std::string::npos ? std::string::npos : nl - start));
        if (nl == std::string::npos) break;
        start = nl + 1;
    }
    {
        std::ofstream f(in, std::ios::binary);
        for (const auto& l : lines) f << l << "\n";
    }
    const std::string cmd = "spm_encode --model=" + model + " --output_format=id < " + in + " > " + out;
    EXPECT_EQ(std::system(cmd.c_str()), 0) << cmd;
    std::ifstream f(out, std::ios::binary);
    std::vector<std::int32_t> ids;
    std::string line;
    std::size_t n = 0;
    while (std::getline(f, line)) {
        if (n++ > 0) ids.push_back(newline_id);
        std::istringstream is(line);
        for (std::int32_t id; is >> id;) ids.push_back(id);
    }
    EXPECT_EQ(n, lines.size()) << "spm_encode wrote " << n << " lines for " << lines.size();
    return ids;
}

/// a + b + c ... of id lists.
inline std::vector<std::int32_t> concat(std::initializer_list<std::vector<std::int32_t>> parts) {
    std::vector<std::int32_t> all;
    for (const auto& p : parts) all.insert(all.end(), p.begin(), p.end());
    return all;
}

}  // namespace mmca_text_test

#define MMCA_REQUIRE_SPM_MODELS()                                                                       \
    do {                                                                                                \
        if (!::mmca_text_test::trained_models())                                                        \
            GTEST_SKIP() << "spm_train/spm_encode (Debian package 'sentencepiece') are not installed, " \
                            "or training the test tokenizer failed";                                   \
    } while (0)
