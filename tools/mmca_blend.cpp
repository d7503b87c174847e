// mmca-blend - multi-image multi-round training data from LLaVA and MIMIC-IT CGD files (SPEC §7).
//
//   mmca-blend --llava detail_23k.json --llava complex_reasoning_77k.json --max-group 3 --output blend.json
//   mmca-blend --mode llava_otter --llava conversation_58k.json --cgd CGD_instructions.json
//              --image-root coco/train2017 --output llava_otter.json
//
// Prints the counts of records read, samples written and records skipped (by reason). Exit status:
// 0 done, 1 the blend failed (nothing written), 2 bad command line. docs/chat.md, "Data blending",
// describes the input and output formats.
#include "mmca/data/blend.hpp"

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <iostream>
#include <string>

namespace {

const char* usage_text =
    "usage: mmca-blend [--mode random_concat|llava_otter] --llava FILE [--llava FILE ...] [--cgd FILE]\n"
    "                  --output FILE [--image-root DIR] [--max-group K] [--seed N] [--split-seed N]\n"
    "                  [--eval-fraction F] [--style letter_lower|letter_upper|ordinal|random]\n"
    "                  [--followup] [--max-images N] [--progress]\n"
    "\n"
    "  --mode           random_concat (default): groups of 1..K shuffled LLaVA samples;\n"
    "                   llava_otter: LLaVA rounds about each image of a CGD sample, then its CGD rounds\n"
    "  --llava          LLaVA-format JSON array (repeatable; all files form one pool)\n"
    "  --cgd            MIMIC-IT CGD_instructions.json (llava_otter)\n"
    "  --output         output JSON (written to a temporary file and renamed when complete)\n"
    "  --image-root     skip records whose image file is not under DIR\n"
    "  --max-group      K for random_concat (default 3, at most --max-images)\n"
    "  --seed           shuffle and per-sample draws (default 0)\n"
    "  --split-seed     train/eval split (default 1234)\n"
    "  --eval-fraction  share of samples in \"eval\" (default 0.1)\n"
    "  --style          image reference style (default random: drawn per sample)\n"
    "  --followup       llava_otter: one follow-up LLaVA conversation per image\n"
    "  --max-images     at most N images per sample (1..8, default 8)\n"
    "  --progress       print progress to stderr\n";

[[noreturn]] void usage_error(const std::string& message) {
    std::cerr << "mmca-blend: " << message << "\n\n" << usage_text;
    std::exit(2);
}

std::uint64_t parse_unsigned(const std::string& option, const std::string& value) {
    if (value.empty() || value.find_first_not_of("0123456789") != std::string::npos)
        usage_error(option + " needs a non-negative integer, got '" + value + "'");
    try {
        return std::stoull(value);
    } catch (const std::exception&) {
        usage_error(option + " value '" + value + "' is out of range");
    }
}

}  // namespace

int main(int argc, char** argv) {
    mmca::data::blend_options options;
    bool progress = false;
    for (int i = 1; i < argc; ++i) {
        const std::string arg = argv[i];
        auto value = [&]() -> std::string {
            if (i + 1 >= argc) usage_error(arg + " needs a value");
            return argv[++i];
        };
        try {
            if (arg == "-h" || arg == "--help") {
                std::cout << usage_text;
                return 0;
            } else if (arg == "--mode") {
                options.mode = mmca::data::parse_blend_mode(value());
            } else if (arg == "--llava") {
                options.llava_files.push_back(value());
            } else if (arg == "--cgd") {
                options.cgd_file = value();
            } else if (arg == "--output" || arg == "-o") {
                options.output = value();
            } else if (arg == "--image-root") {
                options.image_root = value();
            } else if (arg == "--max-group") {
                options.max_group = static_cast<std::int32_t>(std::min<std::uint64_t>(parse_unsigned(arg, value()), 1000));
            } else if (arg == "--seed") {
                options.seed = parse_unsigned(arg, value());
            } else if (arg == "--split-seed") {
                options.split_seed = parse_unsigned(arg, value());
            } else if (arg == "--eval-fraction") {
                const std::string v = value();
                std::size_t used = 0;
                options.eval_fraction = std::stod(v, &used);
                if (used != v.size()) usage_error("--eval-fraction needs a number, got '" + v + "'");
            } else if (arg == "--style") {
                options.style = mmca::data::parse_reference_style(value());
            } else if (arg == "--followup") {
                options.followup = true;
            } else if (arg == "--max-images") {
                options.max_images = static_cast<std::int32_t>(std::min<std::uint64_t>(parse_unsigned(arg, value()), 1000));
            } else if (arg == "--progress") {
                progress = true;
            } else {
                usage_error("unknown argument '" + arg + "'");
            }
        } catch (const std::invalid_argument& e) {
            usage_error(e.what());
        } catch (const std::out_of_range&) {
            usage_error(arg + ": value out of range");
        }
    }
    if (options.llava_files.empty()) usage_error("at least one --llava file is needed");
    if (options.output.empty()) usage_error("--output is needed");
    if (progress)
        options.progress = [](std::uint64_t done, std::uint64_t total) {
            if (done % 10000 == 0 || done == total) std::fprintf(stderr, "\rmmca-blend: %llu / %llu samples written",
                                                                 static_cast<unsigned long long>(done),
                                                                 static_cast<unsigned long long>(total));
            if (done == total) std::fputc('\n', stderr);
        };

    try {
        const mmca::data::blend_counts c = mmca::data::blend(options);
        std::cout << "read " << c.samples_read << " records\n"
                  << "wrote " << c.samples_written << " samples (train " << c.train_samples << ", eval "
                  << c.eval_samples << ") to " << options.output << "\n"
                  << "skipped " << c.skipped() << " records: malformed " << c.skipped_malformed
                  << ", missing image " << c.skipped_missing_image << ", too many images "
                  << c.skipped_too_many_images << ", no LLaVA conversation for an image "
                  << c.skipped_no_conversation << "\n";
        return 0;
    } catch (const std::exception& e) {
        std::cerr << "mmca-blend: " << e.what() << "\n";
        return 1;
    }
}
