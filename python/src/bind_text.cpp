// python/src/bind_text.cpp - the text side of the chat pipeline: mmca.Tokenizer, the conversation
// template (mmca.render_conversation, mmca.tokenize_conversation) and data blending (mmca.blend).
//
// Follows docs/python.md: bad values raise ValueError whose message names the argument, the value
// seen and what was expected; a wrong Python type is a TypeError. Token ids come back as lists
// (encode) or int32 numpy arrays (tokenize_conversation). The GIL is released while blend runs;
// its progress callback runs with the GIL held, and an exception raised there aborts the blend
// (leaving no output file) and propagates.
#include "array_args.hpp"
#include "text_args.hpp"

#include "mmca/data/blend.hpp"
#include "mmca/text/conversation.hpp"
#include "mmca/text/tokenizer.hpp"

#include <pybind11/functional.h>
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace mmca::python {

namespace py = pybind11;

namespace {

/// Rounds from a sequence of dicts {"question", "answer", "images" (default 0)} or of
/// (question, answer[, images]) tuples.
std::vector<mmca::text::chat_round> parse_rounds(const char* where, const py::handle& obj) {
    if (py::isinstance<py::str>(obj) || !py::isinstance<py::sequence>(obj))
        raise_type_error(where, "rounds", python_type_text(obj),
                         "a sequence of dicts {'question': str, 'answer': str, 'images': int}");
    std::vector<mmca::text::chat_round> rounds;
    const auto seq = py::reinterpret_borrow<py::sequence>(obj);
    for (std::size_t i = 0; i < seq.size(); ++i) {
        const py::handle item = seq[i];
        const std::string name = "rounds[" + std::to_string(i) + "]";
        mmca::text::chat_round r;
        try {
            if (py::isinstance<py::dict>(item)) {
                const auto d = py::reinterpret_borrow<py::dict>(item);
                for (auto kv : d) {
                    const std::string key = py::str(kv.first);
                    if (key != "question" && key != "answer" && key != "images")
                        raise_value_error(where, name, "a key '" + key + "'", "only 'question', 'answer' and 'images'");
                }
                if (!d.contains("question") || !d.contains("answer"))
                    raise_value_error(where, name, "a dict without 'question' or 'answer'",
                                      "{'question': str, 'answer': str, 'images': int}");
                r.question = d["question"].cast<std::string>();
                r.answer = d["answer"].cast<std::string>();
                if (d.contains("images")) r.num_images = d["images"].cast<std::int32_t>();
            } else if (py::isinstance<py::tuple>(item) && (py::len(item) == 2 || py::len(item) == 3)) {
                const auto t = py::reinterpret_borrow<py::tuple>(item);
                r.question = t[0].cast<std::string>();
                r.answer = t[1].cast<std::string>();
                if (t.size() == 3) r.num_images = t[2].cast<std::int32_t>();
            } else {
                raise_type_error(where, name, python_type_text(item),
                                 "a dict {'question': str, 'answer': str, 'images': int} or a tuple (question, answer, images)");
            }
        } catch (const py::cast_error&) {
            raise_type_error(where, name, py::repr(item).cast<std::string>(),
                             "str question and answer and an int number of images");
        }
        rounds.push_back(std::move(r));
    }
    return rounds;
}

mmca::text::conversation_options parse_conversation_options(const char* where, bool system_prompt,
                                                            const std::string& numbering, std::int32_t first_image_number) {
    mmca::text::conversation_options o;
    o.system_prompt = system_prompt;
    o.numbering = parse_image_numbering(where, numbering);
    if (first_image_number < 0)
        raise_value_error(where, "first_image_number", std::to_string(first_image_number), "a number >= 0");
    o.first_image_number = first_image_number;
    return o;
}

template <class T>
py::array_t<T> to_numpy(const std::vector<T>& v) {
    py::array_t<T> a(static_cast<py::ssize_t>(v.size()));
    std::copy(v.begin(), v.end(), a.mutable_data());
    return a;
}

py::dict counts_to_dict(const mmca::data::blend_counts& c) {
    py::dict d;
    d["samples_read"] = c.samples_read;
    d["samples_written"] = c.samples_written;
    d["train_samples"] = c.train_samples;
    d["eval_samples"] = c.eval_samples;
    d["skipped_malformed"] = c.skipped_malformed;
    d["skipped_missing_image"] = c.skipped_missing_image;
    d["skipped_too_many_images"] = c.skipped_too_many_images;
    d["skipped_no_conversation"] = c.skipped_no_conversation;
    return d;
}

std::string fspath(const py::handle& p) { return py::str(py::module_::import("os").attr("fspath")(p)); }

}  // namespace

void register_text(py::module_& m) {
    using mmca::text::tokenizer;
    py::class_<tokenizer>(m, "Tokenizer",
                          "LLaMa SentencePiece tokenizer with the added tokens '### Image:' (base_vocab_size + 0),\n"
                          "'<image>' (+1) and '<PAD>' (+2), which are matched as whole pieces before SentencePiece\n"
                          "sees the text. Padding uses EOS (pad_id == eos_id). See docs/chat.md.")
        .def(py::init([](const py::object& path, bool strip) {
                 return tokenizer(fspath(path), mmca::text::tokenizer_options{strip});
             }),
             py::arg("path"), py::kw_only(), py::arg("strip_whitespace_around_added_tokens") = false,
             "Loads a SentencePiece model (LLaMa's tokenizer.model).\n\n"
             "Parameters\n----------\npath : str or os.PathLike\n"
             "strip_whitespace_around_added_tokens : bool\n"
             "    Drop whitespace next to added tokens, as transformers <= 4.33 did (reference checkpoints).\n\n"
             "Raises\n------\nValueError\n    The file cannot be loaded, or the model lacks BOS/EOS.")
        .def("encode", [](const tokenizer& t, const std::string& text, bool add_bos, bool add_eos) {
                 return t.encode(text, add_bos, add_eos);
             },
             py::arg("text"), py::kw_only(), py::arg("add_bos") = false, py::arg("add_eos") = false,
             "Token ids of text (a list of int); BOS first / EOS last when asked.")
        .def("decode", [](const tokenizer& t, const std::vector<std::int32_t>& ids, bool skip_special) {
                 return t.decode(ids, skip_special);
             },
             py::arg("ids"), py::kw_only(), py::arg("skip_special") = false,
             "Text of ids. Byte-fallback pieces are joined into UTF-8; BOS, EOS and '<PAD>' are dropped\n"
             "with skip_special=True, else written '<s>', '</s>', '<PAD>'.\n\n"
             "Raises\n------\nValueError\n    An id outside [0, vocab_size).")
        .def("id_to_piece", &tokenizer::id_to_piece, py::arg("id"), "The piece of an id ('▁the', '<0x0A>', '<image>').")
        .def("piece_to_id", [](const tokenizer& t, const std::string& piece) { return t.piece_to_id(piece); },
             py::arg("piece"), "The id of a piece or added token, or -1.")
        .def_property_readonly("vocab_size", &tokenizer::vocab_size, "Pieces plus the 3 added tokens (32003 for LLaMa).")
        .def_property_readonly("base_vocab_size", &tokenizer::base_vocab_size, "SentencePiece pieces (32000 for LLaMa).")
        .def_property_readonly("bos_id", &tokenizer::bos_id, "Id of BOS '<s>'.")
        .def_property_readonly("eos_id", &tokenizer::eos_id, "Id of EOS '</s>'.")
        .def_property_readonly("unk_id", &tokenizer::unk_id, "Id of '<unk>'.")
        .def_property_readonly("pad_id", &tokenizer::pad_id, "Padding id: EOS.")
        .def_property_readonly("image_header_id", &tokenizer::image_header_id, "Id of '### Image:'.")
        .def_property_readonly("image_id", &tokenizer::image_id, "Id of '<image>'.")
        .def_property_readonly("pad_token_id", &tokenizer::pad_token_id, "Id of '<PAD>'.");

    m.def("render_conversation",
          [](const py::object& rounds, bool system_prompt, const std::string& numbering, std::int32_t first_image_number) {
              const char* where = "mmca.render_conversation";
              const auto r = parse_rounds(where, rounds);
              return mmca::text::render_conversation(r, parse_conversation_options(where, system_prompt, numbering, first_image_number));
          },
          py::arg("rounds"), py::kw_only(), py::arg("system_prompt") = true, py::arg("numbering") = "string_level",
          py::arg("first_image_number") = 1,
          "The text of a conversation in the DeepSpeed-VisualChat template (SPEC §6).\n\n"
          "Parameters\n----------\nrounds : sequence of dict\n"
          "    {'question': str, 'answer': str, 'images': int} (the rounds of mmca.blend's output), or\n"
          "    (question, answer, images) tuples.\n"
          "system_prompt : bool\n    Start the first round with the system prompt.\n"
          "numbering : str\n    'string_level' ('### Image N:' in the text) or 'token_level' (bare '### Image:').\n"
          "first_image_number : int\n\n"
          "Raises\n------\nValueError\n    A round with more than 8 images, or text containing '<image>' / '### Image:'.");

    m.def("tokenize_conversation",
          [](const tokenizer& tok, const py::object& rounds, bool system_prompt, const std::string& numbering,
             std::int32_t first_image_number) {
              const char* where = "mmca.tokenize_conversation";
              const auto r = parse_rounds(where, rounds);
              const auto o = parse_conversation_options(where, system_prompt, numbering, first_image_number);
              const auto out = mmca::text::tokenize_conversation(tok, r, o);
              py::dict d;
              d["input_ids"] = to_numpy(out.input_ids);
              d["labels"] = to_numpy(out.labels);
              d["image_positions"] = to_numpy(out.image_positions);
              d["round_starts"] = to_numpy(out.round_starts);
              d["num_images"] = out.num_images;
              return d;
          },
          py::arg("tokenizer"), py::arg("rounds"), py::kw_only(), py::arg("system_prompt") = true,
          py::arg("numbering") = "string_level", py::arg("first_image_number") = 1,
          "Token ids and labels of a conversation (SPEC §6): per round BOS, instruction, answer, EOS;\n"
          "labels -100 on BOS and the instruction, the answer ids and EOS supervised.\n\n"
          "Returns\n-------\ndict\n    input_ids (L,) int32, labels (L,) int32, image_positions (num_images,) int64\n"
          "    (positions of '<image>'), round_starts (rounds,) int64, num_images int.");

    m.def("blend",
          [](const py::object& llava_files, const py::object& output, const std::string& mode,
             const std::optional<py::object>& cgd_file, const std::optional<py::object>& image_root, std::int32_t max_group,
             std::uint64_t seed, std::uint64_t split_seed, double eval_fraction, const std::string& style, bool followup,
             std::int32_t max_images, const std::optional<py::function>& progress) {
              const char* where = "mmca.blend";
              mmca::data::blend_options o;
              o.mode = rethrow_as(where, [&] { return mmca::data::parse_blend_mode(mode); });
              o.style = rethrow_as(where, [&] { return mmca::data::parse_reference_style(style); });
              if (py::isinstance<py::str>(llava_files) || py::isinstance<py::bytes>(llava_files) ||
                  py::hasattr(llava_files, "__fspath__") || !py::isinstance<py::sequence>(llava_files))
                  raise_type_error(where, "llava_files", python_type_text(llava_files), "a list of paths");
              for (const auto& f : py::reinterpret_borrow<py::sequence>(llava_files)) o.llava_files.push_back(fspath(f));
              o.output = fspath(output);
              if (cgd_file) o.cgd_file = fspath(*cgd_file);
              if (image_root) o.image_root = fspath(*image_root);
              o.max_group = max_group;
              o.seed = seed;
              o.split_seed = split_seed;
              o.eval_fraction = eval_fraction;
              o.followup = followup;
              o.max_images = max_images;
              if (progress) {
                  py::function callback = *progress;
                  o.progress = [callback](std::uint64_t done, std::uint64_t total) {
                      py::gil_scoped_acquire gil;
                      callback(done, total);
                  };
              }
              mmca::data::blend_counts counts;
              {
                  py::gil_scoped_release release;
                  counts = mmca::data::blend(o);
              }
              return counts_to_dict(counts);
          },
          py::arg("llava_files"), py::arg("output"), py::kw_only(), py::arg("mode") = "random_concat",
          py::arg("cgd_file") = py::none(), py::arg("image_root") = py::none(), py::arg("max_group") = 3,
          py::arg("seed") = 0, py::arg("split_seed") = 1234, py::arg("eval_fraction") = 0.1, py::arg("style") = "random",
          py::arg("followup") = false, py::arg("max_images") = 8, py::arg("progress") = py::none(),
          "Multi-image multi-round training data from LLaVA (and MIMIC-IT CGD) JSON files (SPEC §7).\n"
          "Input and output formats: docs/chat.md, 'Data blending'.\n\n"
          "Parameters\n----------\nllava_files : list of path\n    LLaVA JSON arrays, one pool.\n"
          "output : path\n    Output JSON; written to a temporary file in its folder and renamed when complete.\n"
          "mode : str\n    'random_concat' or 'llava_otter'.\n"
          "cgd_file : path, optional\n    MIMIC-IT CGD_instructions.json (llava_otter).\n"
          "image_root : path, optional\n    Skip records whose image file is missing under it.\n"
          "max_group : int\n    random_concat groups of 1..max_group samples.\n"
          "seed, split_seed : int\n    Blend draws; train/eval split.\n"
          "eval_fraction : float\n    Share of samples in 'eval' (rounded to nearest).\n"
          "style : str\n    'letter_lower', 'letter_upper', 'ordinal' or 'random' (per sample).\n"
          "followup : bool\n    llava_otter: a follow-up LLaVA conversation per image.\n"
          "max_images : int\n    1..8.\n"
          "progress : callable(done, total), optional\n    Called after each written sample; raising aborts.\n\n"
          "Returns\n-------\ndict\n    samples_read, samples_written, train_samples, eval_samples, skipped_malformed,\n"
          "    skipped_missing_image, skipped_too_many_images, skipped_no_conversation.\n\n"
          "Raises\n------\nValueError\n    Bad options, or an input that is not JSON of the expected form (nothing is written).");
}

}  // namespace mmca::python
