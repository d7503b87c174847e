// python/src/bind_visual_chat.cpp - mmca.VisualChatModel: images + token ids → logits, loss and chat rounds.
//
// Images cross as float32 C-contiguous (n, 3, S, S) arrays (preprocessed, e.g. by
// mmca.preprocess_image) and are read in place; token ids and labels are small integer sequences.
// Calls release the GIL; one call at a time per model (a mutex serialises them).
#include "array_args.hpp"
#include "text_args.hpp"
#include "bindings.hpp"
#include "lora_args.hpp"
#include "visual_chat_binding.hpp"
#include "visual_chat_object.hpp"

#include "mmca/chat/session.hpp"
#include "mmca/model/visual_chat_loader.hpp"
#include "mmca/model/visual_chat_train.hpp"

#include <pybind11/functional.h>
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <variant>
#include <vector>

namespace mmca::python {

namespace {

// visual_chat_object: visual_chat_object.hpp (shared with mmca.Trainer).


mmca::dtype kv_dtype_of(const char* where, const std::string& s) {
    if (s == "float32") return mmca::dtype::float32;
    if (s == "float16") return mmca::dtype::float16;
    if (s == "bfloat16") return mmca::dtype::bfloat16;
    raise_value_error(where, "kv_dtype", "'" + s + "'", "'float32', 'float16' or 'bfloat16'");
}

std::unique_ptr<visual_chat_object> make_model(const std::string& path, const std::string& config, const std::string& variant,
                                               const std::optional<std::string>& policy, const std::string& kv_dtype,
                                               std::int64_t batch, std::int64_t context, std::int32_t image_token_id,
                                               std::int64_t max_images, const std::string& image_order,
                                               std::int64_t image_cache, const std::string& clip_layer,
                                               std::int64_t image_size, std::int64_t vision_heads,
                                               std::int64_t pool_heads, std::int64_t projector_heads,
                                               std::int64_t projector_layer_heads, const std::string& projector_act,
                                               int num_threads) {
    const char* where = "mmca.VisualChatModel";
    const mmca::visual_chat_load_options load = parse_visual_chat_load(
        where, config, variant, policy, batch, context, image_token_id, max_images, image_order, image_cache, clip_layer,
        image_size, vision_heads, pool_heads, projector_heads, projector_layer_heads, projector_act, num_threads);
    const mmca::dtype kv = kv_dtype_of(where, kv_dtype);
    py::gil_scoped_release release;
    switch (kv) {
        case mmca::dtype::float16:
            return std::make_unique<visual_chat_object>(mmca::load_visual_chat_model<mmca::float16>(path, load));
        case mmca::dtype::bfloat16:
            return std::make_unique<visual_chat_object>(mmca::load_visual_chat_model<mmca::bfloat16>(path, load));
        case mmca::dtype::float32: break;
    }
    return std::make_unique<visual_chat_object>(mmca::load_visual_chat_model<float>(path, load));
}

py::dict loss_and_grads(visual_chat_object& self, py::list ids, py::object images, py::object labels, bool embedding,
                        bool projector, double normalizer, bool cross_blocks, py::object lora_obj, py::object lora_alpha) {
    const char* where = "mmca.VisualChatModel.loss_and_grads";
    std::vector<py::array> keep;
    const auto samples = samples_of(where, ids, images, labels, keep);
    if (normalizer < 0.0) raise_value_error(where, "normalizer", std::to_string(normalizer), "a count >= 0 (0: this batch's)");
    py::dict grads;
    mmca::loss_result r;
    const auto names = mmca::io::visual_chat_names();
    self.visit([&](auto& m) {
        const auto& c = m.language().config();
        if (cross_blocks && c.num_cross_blocks() == 0)
            raise_value_error(where, "cross_blocks", "True", "False for a decoder without gated cross-attention blocks");
        std::optional<mmca::llama_lora> lora;
        if (!lora_obj.is_none()) lora = lora_from_dict(where, lora_obj, lora_alpha, c, names.layer_prefix);
        mmca::visual_chat_grads g =
            mmca::make_visual_chat_grads(m, embedding, projector, cross_blocks, lora ? &*lora : nullptr);
        {
            py::gil_scoped_release release;
            std::lock_guard<std::mutex> lock(self.mutex());
            r = mmca::visual_chat_loss_and_gradients(m, samples, g, normalizer, -1, lora ? &*lora : nullptr);
        }
        if (lora) {
            const py::dict d = lora_to_dict(g.decoder.lora, names.layer_prefix);
            for (auto item : d) grads[item.first] = item.second;
        }
        cross_grads_to_dict(grads, g.decoder.cross_blocks, m.language().weights(), names.cross_prefix);
        if (!g.embed.empty()) {
            py::array_t<float> e({static_cast<py::ssize_t>(c.vocab_size), static_cast<py::ssize_t>(c.hidden_size)});
            std::copy(g.embed.begin(), g.embed.end(), e.mutable_data());
            grads["lang_embed.weight"] = e;
        }
        if (projector) {
            auto& tower = static_cast<mmca::encoder_projector_tower&>(m.tower());
            for (const auto& n : mmca::vision::named_projector_gradients(tower.projector(), g.projector)) {
                py::array_t<float> a(std::vector<py::ssize_t>(n.shape.begin(), n.shape.end()));
                std::copy(n.values->begin(), n.values->end(), a.mutable_data());
                grads[("projection." + n.name).c_str()] = a;
            }
        }
    });
    py::dict d;
    d["loss"] = r.count > 0 ? r.sum / (normalizer > 0.0 ? normalizer : static_cast<double>(r.count)) : 0.0;
    d["count"] = r.count;
    d["grads"] = grads;
    return d;
}

/// mmca.ChatSession: a conversation on a VisualChatModel (which it keeps alive, with the tokenizer).
class chat_session_object {
public:
    chat_session_object(py::object model, py::object tok, mmca::chat_session_options options)
        : model_obj_(std::move(model)), tok_obj_(std::move(tok)) {
        auto& m = model_obj_.cast<visual_chat_object&>();
        const auto& t = tok_obj_.cast<const mmca::text::tokenizer&>();
        m.locked([&](auto& vm) {
            using KV = typename std::decay_t<decltype(vm.language())>::kv_type;
            session_ = std::make_unique<mmca::chat_session<KV>>(vm, t, options);
        });
    }
    template <class F>
    decltype(auto) locked(F&& f) {
        std::lock_guard<std::mutex> lock(model_obj_.cast<visual_chat_object&>().mutex());
        return std::visit([&](auto& s) -> decltype(auto) { return f(*s); }, session_);
    }

private:
    py::object model_obj_, tok_obj_;
    std::variant<std::unique_ptr<mmca::chat_session<float>>, std::unique_ptr<mmca::chat_session<mmca::float16>>,
                 std::unique_ptr<mmca::chat_session<mmca::bfloat16>>>
        session_;
};

std::unique_ptr<chat_session_object> make_session(py::object model, py::object tok, bool system_prompt,
                                                  const std::string& numbering, const std::string& preset,
                                                  std::int64_t max_new_tokens, float temperature, std::int64_t top_k,
                                                  float top_p, float repetition_penalty, std::uint64_t seed,
                                                  const std::optional<std::vector<std::int32_t>>& eos_ids) {
    const char* where = "mmca.ChatSession";
    if (!py::isinstance<visual_chat_object>(model))
        raise_type_error(where, "model", python_type_text(model), "an mmca.VisualChatModel");
    if (!py::isinstance<mmca::text::tokenizer>(tok))
        raise_type_error(where, "tokenizer", python_type_text(tok), "an mmca.Tokenizer");
    mmca::chat_session_options o;
    o.conversation.system_prompt = system_prompt;
    o.conversation.numbering = parse_image_numbering(where, numbering);
    o.image = rethrow_as(where, [&] { return mmca::vision::image_preset(preset); });
    // A model whose encoder takes another image size gets the preset's resize rule at that size.
    const std::int64_t S = model.cast<visual_chat_object&>().visit([](auto& m) { return m.tower().image_size(); });
    if (o.image.output_size()[0] != S || o.image.output_size()[1] != S) o.image.size = o.image.crop_height = o.image.crop_width = S;
    o.generation =
        parse_generation_options(where, max_new_tokens, temperature, top_k, top_p, repetition_penalty, seed, eos_ids);
    return rethrow_as(where, [&] { return std::make_unique<chat_session_object>(model, tok, o); });
}

py::dict ask(chat_session_object& self, const std::string& question, py::object images,
             const std::optional<std::function<py::object(const std::string&)>>& on_text,
             const std::optional<std::function<void(std::int64_t, std::int64_t)>>& on_image) {
    const char* where = "mmca.ChatSession.ask";
    std::vector<mmca::vision::rgb_image> decoded;
    std::vector<std::string> paths;
    bool any_array = false;
    if (!images.is_none()) {
        for (py::handle item : py::iter(images)) {
            if (py::isinstance<py::str>(item) || py::hasattr(item, "__fspath__")) {
                paths.push_back(py::str(py::module_::import("os").attr("fspath")(item)));
                decoded.emplace_back();
                continue;
            }
            any_array = true;
            py::array a = require_tensor(item, {where, "images", 3, "(H, W, 3)"}, py::dtype::of<std::uint8_t>(), "uint8");
            if (a.shape(2) != 3) raise_value_error(where, "images", "shape " + shape_text(a), "(H, W, 3) RGB pixels");
            mmca::vision::rgb_image img;
            img.pixels = mmca::tensor<std::uint8_t, 3>({static_cast<std::size_t>(a.shape(0)),
                                                        static_cast<std::size_t>(a.shape(1)), std::size_t{3}});
            std::copy_n(static_cast<const std::uint8_t*>(a.data()), a.size(), img.pixels.data());
            decoded.push_back(std::move(img));
            paths.emplace_back();
        }
    }
    std::function<bool(const std::string&)> text_cb;
    if (on_text)
        text_cb = [&](const std::string& piece) {
            py::gil_scoped_acquire g;
            return (*on_text)(piece).ptr() != Py_False;  // only an explicit False stops
        };
    std::function<void(std::int64_t, std::int64_t)> image_cb;
    if (on_image) image_cb = [&](std::int64_t d, std::int64_t t) { py::gil_scoped_acquire g; (*on_image)(d, t); };
    mmca::chat_answer a;
    {
        py::gil_scoped_release release;
        a = self.locked([&](auto& s) {
            if (!any_array) return s.ask(question, paths, text_cb, image_cb);
            // Files are decoded first (errors before anything changes), then asked about as pixels.
            for (std::size_t i = 0; i < paths.size(); ++i)
                if (!paths[i].empty()) decoded[i] = mmca::vision::load_image(paths[i]);
            return s.ask(question, decoded, text_cb, image_cb);
        });
    }
    py::dict d;
    d["text"] = a.text;
    d["tokens"] = a.tokens;
    d["reason"] = mmca::to_string(a.reason);
    d["prompt_tokens"] = a.prompt_tokens;
    d["images"] = a.images;
    d["encode_seconds"] = a.encode_seconds;
    d["seconds"] = a.seconds;
    return d;
}

}  // namespace

void register_visual_chat(py::module_& m) {
    py::class_<visual_chat_object> cls(m, "VisualChatModel", R"doc(
The visual-chat model (SPEC §1, §6): a frozen vision encoder (QWen-VL ViT or CLIP), a projector, and
the LLaMa-2 decoder under an attention variant, from one checkpoint with the reference names
(vis_encoder.*, projection.*, lang_decoder.*, lang_embed.weight). The decoder's config.json is read
from next to the checkpoint unless `config` names it. Sizes of the encoder and projector come from
their tensors; what shapes cannot say has QWen-VL's / CLIP ViT-L's values unless given: image_size
(QWen: 448), vision_heads (QWen 16, CLIP width/64), pool_heads (32), projector_heads (perceiver,
0: H/128), projector_layer_heads (vit, 16) and projector_act (vit layer activation, "gelu"). Images are preprocessed float32 arrays
(n, 3, S, S); token ids carry one <image> placeholder (image_token_id) per image.
)doc");
    cls.def(py::init(&make_model), py::arg("path"), py::kw_only(), py::arg("config") = "",
             py::arg("variant") = "mmca", py::arg("policy") = py::none(), py::arg("kv_dtype") = "float32",
             py::arg("batch") = 1, py::arg("context") = 0, py::arg("image_token_id") = 32001,
             py::arg("max_images") = 8, py::arg("image_order") = "in_order", py::arg("image_cache") = 32,
             py::arg("clip_layer") = "last_hidden_state", py::arg("image_size") = 0, py::arg("vision_heads") = 0,
             py::arg("pool_heads") = 0, py::arg("projector_heads") = 0, py::arg("projector_layer_heads") = 0,
             py::arg("projector_act") = "gelu", py::arg("num_threads") = 0)
        .def_property_readonly("encoder", [](visual_chat_object& s) {
            return s.visit([](auto& m) {
                return std::string(mmca::to_string(static_cast<mmca::encoder_projector_tower&>(m.tower()).encoder_kind()));
            });
        })
        .def_property_readonly("projector", [](visual_chat_object& s) {
            return s.visit([](auto& m) {
                return std::string(mmca::vision::to_string(static_cast<mmca::encoder_projector_tower&>(m.tower()).projector().kind()));
            });
        })
        .def("loss_and_grads", &loss_and_grads, py::arg("ids"), py::arg("images") = py::none(),
             py::arg("labels") = py::none(), py::kw_only(), py::arg("embedding") = true, py::arg("projector") = true,
             py::arg("normalizer") = 0.0, py::arg("cross_blocks") = false, py::arg("lora") = py::none(),
             py::arg("lora_alpha") = py::none(),
             R"doc(Loss of a batch (same arguments as forward) and the gradients of the trainable parts: the token
embedding ('lang_embed.weight', when embedding) and every projector parameter ('projection.*', when
projector). The encoder and the decoder are frozen; gradients flow through the decoder to its input
rows. normalizer: the loss divisor (0: this batch's supervised token count). cross_blocks: also the
gradients of the gated cross-attention blocks' parameters ('lang_decoder.model.cross_blocks.N.*').
lora: LoRA adapters on the decoder's q/k/v/o (a dict as lora_adapters() returns, with lora_alpha);
the loss is the adapted model's and the dict's names get their gradients. Returns a dict: loss,
count, grads (name -> float32 array).)doc")
        .def("lora_adapters",
             [](visual_chat_object& self, std::int64_t rank, double alpha, const std::string& targets, std::uint64_t seed) {
                 return self.visit([&](auto& m) {
                     return new_lora_dict("mmca.VisualChatModel.lora_adapters", m.language().config(), rank, alpha,
                                          targets, seed, mmca::io::visual_chat_names().layer_prefix);
                 });
             },
             py::kw_only(), py::arg("rank") = 8, py::arg("alpha") = 16.0, py::arg("targets") = "qv", py::arg("seed") = 0,
             R"doc(Fresh LoRA adapters for the decoder's attention projections (targets: letters of 'qkvo' or 'all'):
a dict '...layers.N.self_attn.P_proj.lora_A.weight' (rank, in) uniform on +-1/sqrt(in) from seed,
'...lora_B.weight' (out, rank) zero. Pass them with lora_alpha=alpha to loss_and_grads.)doc");
    def_visual_chat_inference(cls);

    py::class_<chat_session_object>(m, "ChatSession", R"doc(
A multi-round, multi-image conversation (SPEC §6) on a VisualChatModel with a Tokenizer: each
ask() renders the round's template (system prompt on the first round; "### Image N:" numbered over
the conversation), decodes and preprocesses its images (preset; a model of another image size gets
the preset's rule at its size), and generates the answer on top of the model's KV cache. At most the model's max_images images per conversation; clear() starts over.
)doc")
        .def(py::init(&make_session), py::arg("model"), py::arg("tokenizer"), py::kw_only(),
             py::arg("system_prompt") = true, py::arg("numbering") = "string_level", py::arg("preset") = "visualchat-448",
             py::arg("max_new_tokens") = 256, py::arg("temperature") = 0.0f, py::arg("top_k") = 0, py::arg("top_p") = 1.0f,
             py::arg("repetition_penalty") = 1.0f, py::arg("seed") = 0, py::arg("eos_ids") = py::none())
        .def("ask", &ask, py::arg("question"), py::arg("images") = py::none(), py::kw_only(),
             py::arg("on_text") = py::none(), py::arg("on_image") = py::none(),
             R"doc(Answers a question about 0..n images (paths, or (H, W, 3) uint8 arrays). on_text(piece) streams
the answer (returning False stops; None goes on); on_image(done, total) reports image encoding. Returns a dict:
text, tokens, reason, prompt_tokens, images, encode_seconds, seconds.)doc")
        .def("clear", [](chat_session_object& s) { s.locked([](auto& c) { c.clear(); }); },
             "Starts a new conversation (the image cache stays).")
        .def_property_readonly("rounds", [](chat_session_object& s) { return s.locked([](auto& c) { return c.rounds(); }); })
        .def_property_readonly("images_shown",
                               [](chat_session_object& s) { return s.locked([](auto& c) { return c.images_shown(); }); });
}

}  // namespace mmca::python
