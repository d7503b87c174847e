// mmca-chat - multi-round, multi-image chat with a visual-chat checkpoint (SPEC §1, §6).
//
// Interactive (the default): each line is a question, answered with the tokens streamed as they are
// generated. Commands:
//   /image PATH   show an image with the next question (repeat for several; at most --max-images
//                 over a conversation)
//   /clear        start a new conversation
//   /quit         leave (end of input does the same)
//
// Batch: --batch FILE (repeatable) replays conversations in the reference's evaluation format, a
// JSON list of rounds, each [question] or [question, "img1.jpg img2.jpg"] (image paths separated
// by spaces, relative to --image-root or else to the JSON file's folder), one conversation per
// file, and writes a CSV with the columns test_name, image_paths, question, answer (RFC 4180
// quoting; test_name is the file's name without its extension).
//
// Exit status: 0 done, 1 a model or file could not be loaded (or a batch file is malformed),
// 2 bad command line.
#include "mmca/chat/session.hpp"
#include "mmca/model/visual_chat_loader.hpp"

#include <nlohmann/json.hpp>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <fstream>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

namespace {

const char* usage_text =
    "usage: mmca-chat --model PATH [--tokenizer FILE] [--config FILE] [options]\n"
    "       mmca-chat --model PATH --batch FILE [--batch FILE ...] --output FILE.csv [options]\n"
    "\n"
    "  --model            checkpoint with the reference names: a .safetensors file, a folder or an index\n"
    "  --tokenizer        SentencePiece tokenizer.model (default: next to the checkpoint)\n"
    "  --config           the LLaMa config.json (default: next to the checkpoint)\n"
    "  --variant          causal | mmca (default) | mmca_reference | causal_cross\n"
    "  --policy           all | preceding | latest (causal_cross only)\n"
    "  --image-order      in_order (default) | reverse (the reference code's pairing)\n"
    "  --preset           image preprocessing: visualchat-448 (default), qwen-vl-448, clip-224, clip-336;\n"
    "                     a model whose image size differs uses shortest-edge resize + crop to its size\n"
    "  --max-images       images per conversation (default 8)\n"
    "  --no-system-prompt leave the system prompt out of the first round (models trained without it,\n"
    "                     such as examples/demo_model)\n"
    "  --max-new-tokens   answer length limit (default 256)\n"
    "  --temperature T    0 (default): greedy\n"
    "  --top-k K          --top-p P   --repetition-penalty R   --seed N\n"
    "  --context N        tokens a conversation may hold (default: the model's max positions)\n"
    "  --threads N        threads (default: OpenMP's)\n"
    "  --image-size S     QWen ViT input size when not 448; --vision-heads N, --pool-heads N,\n"
    "                     --projector-heads N: head counts of checkpoints not shaped like the reference's\n"
    "  --batch FILE       replay a conversation file (repeatable); --output names the CSV\n"
    "  --image-root DIR   folder of the batch files' images (default: each file's folder)\n"
    "  --quiet            no progress on stderr\n";

[[noreturn]] void usage_error(const std::string& message) {
    std::cerr << "mmca-chat: " << message << "\n\n" << usage_text;
    std::exit(2);
}

std::int64_t parse_int(const std::string& option, const std::string& value) {
    try {
        std::size_t used = 0;
        const long long v = std::stoll(value, &used);
        if (used != value.size()) throw std::invalid_argument(value);
        return v;
    } catch (const std::exception&) {
        usage_error(option + " needs an integer, got '" + value + "'");
    }
}

double parse_real(const std::string& option, const std::string& value) {
    try {
        std::size_t used = 0;
        const double v = std::stod(value, &used);
        if (used != value.size()) throw std::invalid_argument(value);
        return v;
    } catch (const std::exception&) {
        usage_error(option + " needs a number, got '" + value + "'");
    }
}

std::string folder_of(const std::string& path) {
    const auto slash = path.find_last_of('/');
    return slash == std::string::npos ? std::string(".") : path.substr(0, slash);
}

std::string stem_of(const std::string& path) {
    const auto slash = path.find_last_of('/');
    std::string name = slash == std::string::npos ? path : path.substr(slash + 1);
    const auto dot = name.find_last_of('.');
    return dot == std::string::npos || dot == 0 ? name : name.substr(0, dot);
}

std::string csv_field(const std::string& s) {
    if (s.find_first_of(",\"\r\n") == std::string::npos) return s;
    std::string out = "\"";
    for (char c : s) {
        if (c == '"') out += '"';
        out += c;
    }
    return out + "\"";
}

std::vector<std::string> split_spaces(const std::string& s) {
    std::vector<std::string> out;
    std::istringstream in(s);
    for (std::string w; in >> w;) out.push_back(w);
    return out;
}

struct round_spec {
    std::string question;
    std::vector<std::string> images;
};

/// A batch file: a JSON list of rounds, each [question] or [question, "img1 img2"].
std::vector<round_spec> read_batch_file(const std::string& path, const std::string& image_root) {
    std::ifstream in(path);
    if (!in) throw std::runtime_error("cannot open batch file '" + path + "'");
    nlohmann::json j;
    try {
        in >> j;
    } catch (const std::exception& e) {
        throw std::runtime_error("batch file '" + path + "' is not valid JSON: " + e.what());
    }
    if (!j.is_array()) throw std::runtime_error("batch file '" + path + "': expected a JSON list of rounds");
    const std::string root = image_root.empty() ? folder_of(path) : image_root;
    std::vector<round_spec> rounds;
    for (std::size_t r = 0; r < j.size(); ++r) {
        const auto& e = j[r];
        const std::string at = "batch file '" + path + "', round " + std::to_string(r);
        if (!e.is_array() || e.empty() || e.size() > 2 || !e[0].is_string() || (e.size() == 2 && !e[1].is_string()))
            throw std::runtime_error(at + ": expected [question] or [question, \"image paths\"]");
        round_spec s;
        s.question = e[0].get<std::string>();
        if (e.size() == 2)
            for (const auto& name : split_spaces(e[1].get<std::string>()))
                s.images.push_back(!name.empty() && name[0] == '/' ? name : root + "/" + name);
        rounds.push_back(std::move(s));
    }
    return rounds;
}

template <class KV>
int run(mmca::visual_chat_model<KV>& model, const mmca::text::tokenizer& tok, mmca::chat_session_options options,
        const std::vector<std::string>& batch_files, const std::string& output, const std::string& image_root,
        bool quiet) {
    mmca::chat_session<KV> chat(model, tok, options);
    auto progress = [&](std::int64_t done, std::int64_t total) {
        if (quiet) return;
        std::cerr << "\r[encoding image " << std::min(done + 1, total) << "/" << total << "]"
                  << (done == total ? " done\n" : "") << std::flush;
    };

    if (!batch_files.empty()) {
        // Read every file first: a malformed one stops the run before any work.
        std::vector<std::vector<round_spec>> convs;
        for (const auto& f : batch_files) convs.push_back(read_batch_file(f, image_root));
        const std::string tmp = output + ".partial";
        {
            std::ofstream csv(tmp, std::ios::binary | std::ios::trunc);
            if (!csv) throw std::runtime_error("cannot write '" + tmp + "'");
            csv << "test_name,image_paths,question,answer\n";
            for (std::size_t c = 0; c < convs.size(); ++c) {
                chat.clear();
                const std::string name = stem_of(batch_files[c]);
                for (const auto& r : convs[c]) {
                    if (!quiet) std::cerr << "[" << name << "] " << r.question << "\n";
                    const mmca::chat_answer a = chat.ask(r.question, r.images, {}, progress);
                    std::string paths;
                    for (const auto& p : r.images) paths += (paths.empty() ? "" : " ") + p;
                    csv << csv_field(name) << ',' << csv_field(paths) << ',' << csv_field(r.question) << ','
                        << csv_field(a.text) << '\n';
                }
            }
            if (!csv.flush()) throw std::runtime_error("writing '" + tmp + "' failed");
        }
        if (std::rename(tmp.c_str(), output.c_str()) != 0)
            throw std::runtime_error("cannot rename '" + tmp + "' to '" + output + "'");
        if (!quiet) std::cerr << "wrote " << output << "\n";
        return 0;
    }

    std::vector<std::string> pending;
    std::string line;
    if (!quiet) std::cerr << "mmca-chat: /image PATH adds an image, /clear starts over, /quit leaves\n";
    while (true) {
        if (!quiet) std::cerr << "> " << std::flush;
        if (!std::getline(std::cin, line)) break;
        if (line == "/quit" || line == "/exit") break;
        if (line == "/clear") {
            chat.clear();
            pending.clear();
            std::cout << "[new conversation]\n" << std::flush;
            continue;
        }
        if (line.rfind("/image", 0) == 0) {
            const auto path = line.size() > 7 ? line.substr(7) : std::string();
            if (path.empty()) {
                std::cerr << "usage: /image PATH\n";
                continue;
            }
            pending.push_back(path);
            std::cout << "[image " << chat.images_shown() + static_cast<std::int64_t>(pending.size()) << ": " << path
                      << "]\n"
                      << std::flush;
            continue;
        }
        if (line.empty()) continue;
        try {
            const mmca::chat_answer a = chat.ask(line, pending, [](const std::string& piece) {
                std::cout << piece << std::flush;
                return true;
            }, progress);
            std::cout << "\n" << std::flush;
            if (!quiet)
                std::cerr << "[" << a.tokens.size() << " tokens, " << a.seconds << " s, "
                          << mmca::to_string(a.reason) << "]\n";
        } catch (const std::exception& e) {
            // Nothing changed: the round was refused before the cache was touched.
            std::cout << "[error] " << e.what() << "\n" << std::flush;
        }
        pending.clear();
    }
    return 0;
}

}  // namespace

int main(int argc, char** argv) {
    std::string model_path, tokenizer_path, config_path, variant = "mmca", policy, order = "in_order";
    std::string preset = "visualchat-448", output, image_root;
    std::vector<std::string> batch_files;
    mmca::visual_chat_load_options load;
    mmca::chat_session_options options;
    options.generation.max_new_tokens = 256;
    bool quiet = false;
    std::int64_t threads = 0;
    for (int i = 1; i < argc; ++i) {
        const std::string arg = argv[i];
        auto value = [&]() -> std::string {
            if (i + 1 >= argc) usage_error(arg + " needs a value");
            return argv[++i];
        };
        if (arg == "-h" || arg == "--help") {
            std::cout << usage_text;
            return 0;
        } else if (arg == "--model") model_path = value();
        else if (arg == "--tokenizer") tokenizer_path = value();
        else if (arg == "--config") config_path = value();
        else if (arg == "--variant") variant = value();
        else if (arg == "--policy") policy = value();
        else if (arg == "--image-order") order = value();
        else if (arg == "--preset") preset = value();
        else if (arg == "--max-images") load.options.max_images = parse_int(arg, value());
        else if (arg == "--max-new-tokens") options.generation.max_new_tokens = parse_int(arg, value());
        else if (arg == "--temperature") options.generation.sampling.temperature = static_cast<float>(parse_real(arg, value()));
        else if (arg == "--top-k") options.generation.sampling.top_k = parse_int(arg, value());
        else if (arg == "--top-p") options.generation.sampling.top_p = static_cast<float>(parse_real(arg, value()));
        else if (arg == "--repetition-penalty")
            options.generation.sampling.repetition_penalty = static_cast<float>(parse_real(arg, value()));
        else if (arg == "--seed") options.generation.sampling.seed = static_cast<std::uint64_t>(parse_int(arg, value()));
        else if (arg == "--context") load.options.language.context = parse_int(arg, value());
        else if (arg == "--threads") threads = parse_int(arg, value());
        else if (arg == "--image-size") load.qwen.image_size = parse_int(arg, value());
        else if (arg == "--vision-heads") load.qwen.heads = load.clip.num_heads = parse_int(arg, value());
        else if (arg == "--pool-heads") load.qwen.pool_heads = parse_int(arg, value());
        else if (arg == "--projector-heads") load.projector.heads = parse_int(arg, value());
        else if (arg == "--batch") batch_files.push_back(value());
        else if (arg == "--output" || arg == "-o") output = value();
        else if (arg == "--image-root") image_root = value();
        else if (arg == "--no-system-prompt") options.conversation.system_prompt = false;
        else if (arg == "--quiet" || arg == "-q") quiet = true;
        else usage_error("unknown argument '" + arg + "'");
    }
    if (model_path.empty()) usage_error("--model is required");
    if (!batch_files.empty() && output.empty()) usage_error("--batch needs --output FILE.csv");
    if (threads < 0) usage_error("--threads needs a count >= 0");
    try {
        auto& lang = load.options.language;
        lang.attention.variant = mmca::parse_attention_variant(variant);
        if (!policy.empty()) lang.attention.visibility = mmca::parse_image_visibility(policy);
        lang.attention.num_threads = lang.num_threads = static_cast<int>(threads);
        if (order == "reverse")
            load.options.order = mmca::image_order::reverse;
        else if (order != "in_order")
            usage_error("--image-order is in_order or reverse, got '" + order + "'");
        options.generation.sampling.validate("mmca-chat");
        load.config_path = config_path;
        if (tokenizer_path.empty())
            tokenizer_path = mmca::io::detail::join_path(
                mmca::io::detail::is_directory(model_path) ? model_path : mmca::io::detail::parent_directory(model_path),
                "tokenizer.model");
        const mmca::text::tokenizer tok(tokenizer_path);
        load.options.image_token_id = tok.image_id();
        if (!quiet) std::cerr << "loading " << model_path << "\n";
        auto model = mmca::load_visual_chat_model<float>(model_path, load);
        options.image = mmca::vision::image_preset(preset);
        const std::int64_t S = model->tower().image_size();
        if (options.image.output_size()[0] != S || options.image.output_size()[1] != S) {
            options.image.size = S;
            options.image.crop_height = options.image.crop_width = S;
        }
        options.image.num_threads = static_cast<int>(threads);
        return run(*model, tok, options, batch_files, output, image_root, quiet);
    } catch (const std::exception& e) {
        std::cerr << "mmca-chat: " << e.what() << "\n";
        return 1;
    }
}
