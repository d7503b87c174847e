// mmca/backend/cuda/library.cu - the one translation unit of the compiled CUDA library (CMake target
// mmca_cuda): the functions of library.hpp, each dispatching to the header templates for float32,
// float16 and bfloat16. Consumers that compile with nvcc can use the templates directly instead.
#include "mmca/backend/cuda/library.hpp"

#include "mmca/backend/cuda/attention_backward.cuh"
#include "mmca/backend/cuda/attention_fused.cuh"
#include "mmca/backend/cuda/llama_backend.cuh"
#include "mmca/backend/cuda/vision.cuh"
#include "mmca/core/error.hpp"

#include <memory>
#include <string>
#include <utility>
#include <variant>

namespace mmca {
namespace cuda {
namespace lib {
namespace {

template <class T>
tensor_ref<const T, 4> as_const(const device_view& v) {
    return tensor_ref<const T, 4>(static_cast<const T*>(v.data), v.shape, v.strides);
}

template <class T>
tensor_ref<T, 4> as_mutable(const device_view& v) {
    return tensor_ref<T, 4>(static_cast<T*>(v.data), v.shape, v.strides);
}

void check_type(const char* where, const char* name, const device_view& v, element want) {
    if (v.data == nullptr) return;  // the templates report a missing tensor
    MMCA_CHECK_ARG(v.type == want, where, name, to_string(v.type),
                   std::string("the element type of q (") + to_string(want) + ")");
}

/// Runs f with the storage type of e (float, mmca::float16, mmca::bfloat16); CUDA failures become
/// lib::runtime_error so that callers need no CUDA header. An e outside the enumeration is an
/// invalid_argument of `where` naming `arg`.
template <class F>
void dispatch(element e, F&& f, const char* where = "mmca::cuda::lib", const char* arg = "q") {
    try {
        switch (e) {
            case element::float32: f(float{}); return;
            case element::float16: f(float16{}); return;
            case element::bfloat16: f(bfloat16{}); return;
        }
    } catch (const cuda_error& err) {
        throw runtime_error(err.what());
    }
    throw mmca::invalid_argument(where, arg, "an unknown element type", "float32, float16 or bfloat16");
}

}  // namespace

bool device_available() noexcept { return mmca::cuda::device_available(); }

std::string device_description() {
    if (!device_available()) return "";
    int dev = 0;
    cudaDeviceProp prop{};
    if (cudaGetDevice(&dev) != cudaSuccess || cudaGetDeviceProperties(&prop, dev) != cudaSuccess) return "";
    return std::string(prop.name) + " (sm_" + std::to_string(prop.major) + std::to_string(prop.minor) + ", " +
           std::to_string(prop.multiProcessorCount) + " SMs)";
}

void synchronize(void* stream) {
    const cudaError_t code = cudaStreamSynchronize(static_cast<cudaStream_t>(stream));
    if (code != cudaSuccess) throw runtime_error(cuda_error("cudaStreamSynchronize", code).what());
}

void attention_forward(const device_view& q, const device_view& k, const device_view& v, const token_layout& tokens,
                       const attention_options& options, const device_view& out, void* stream,
                       const attention_stats* stats) {
    constexpr const char* where = "mmca::cuda::attention_forward";
    check_type(where, "k", k, q.type);
    check_type(where, "v", v, q.type);
    check_type(where, "out", out, q.type);
    dispatch(q.type, [&](auto tag) {
        using T = decltype(tag);
        const auto s = static_cast<cudaStream_t>(stream);
        if (stats != nullptr)
            mmca::cuda::attention_forward_with_stats<T>(as_const<T>(q), as_const<T>(k), as_const<T>(v), tokens, options,
                                                        as_mutable<T>(out), *stats, s);
        else
            mmca::cuda::attention_forward<T>(as_const<T>(q), as_const<T>(k), as_const<T>(v), tokens, options,
                                             as_mutable<T>(out), s);
    });
}

void attention_backward(const device_view& q, const device_view& k, const device_view& v, const device_view& dout,
                        const token_layout& tokens, const attention_options& options,
                        const attention_stats_view& stats, const device_view& dq, const device_view& dk,
                        const device_view& dv, void* stream, backward_kernel kernel) {
    constexpr const char* where = "mmca::cuda::attention_backward";
    check_type(where, "k", k, q.type);
    check_type(where, "v", v, q.type);
    check_type(where, "dout", dout, q.type);
    check_type(where, "dq", dq, q.type);
    check_type(where, "dk", dk, q.type);
    check_type(where, "dv", dv, q.type);
    dispatch(q.type, [&](auto tag) {
        using T = decltype(tag);
        mmca::cuda::attention_backward<T>(as_const<T>(q), as_const<T>(k), as_const<T>(v), as_const<T>(dout), tokens,
                                          options, stats, as_mutable<T>(dq), as_mutable<T>(dk), as_mutable<T>(dv),
                                          static_cast<cudaStream_t>(stream), attention_backward_config{0, kernel});
    });
}

// ---- the decoder ---------------------------------------------------------------------------------

struct llama_model::impl {
    std::variant<mmca::cuda::llama_model<float>, mmca::cuda::llama_model<float16>,
                 mmca::cuda::llama_model<bfloat16>>
        model;
    element type;

    template <class F>
    decltype(auto) visit(F&& f) {
        return std::visit(std::forward<F>(f), model);
    }
    template <class F>
    decltype(auto) visit(F&& f) const {
        return std::visit(std::forward<F>(f), model);
    }
};

namespace {

/// Runs f, turning CUDA failures into lib::runtime_error.
template <class F>
decltype(auto) translated(F&& f) {
    try {
        return f();
    } catch (const cuda_error& err) {
        throw runtime_error(err.what());
    }
}

template <class T>
std::unique_ptr<llama_model::impl> make_impl(const llama_config& config, const llama_weights& weights,
                                             const llama_model_options& options, element type) {
    return std::unique_ptr<llama_model::impl>(
        new llama_model::impl{mmca::cuda::llama_model<T>(config, weights, options), type});
}

}  // namespace

llama_model::llama_model(const llama_config& config, const llama_weights& weights, const llama_model_options& options,
                         element type) {
    dispatch(
        type, [&](auto tag) { impl_ = make_impl<decltype(tag)>(config, weights, options, type); },
        "mmca::cuda::lib::llama_model", "type");
}
llama_model::llama_model(llama_model&&) noexcept = default;
llama_model& llama_model::operator=(llama_model&&) noexcept = default;
llama_model::~llama_model() = default;

element llama_model::type() const { return impl_->type; }
const llama_config& llama_model::config() const {
    return impl_->visit([](const auto& m) -> const llama_config& { return m.config(); });
}
const llama_model_options& llama_model::options() const {
    return impl_->visit([](const auto& m) -> const llama_model_options& { return m.options(); });
}
std::int64_t llama_model::batch() const { return options().batch; }
std::int64_t llama_model::context() const { return options().context; }
std::int64_t llama_model::length(std::int64_t b) const {
    return impl_->visit([&](const auto& m) { return m.length(b); });
}
void llama_model::reset() {
    impl_->visit([](auto& m) { m.reset(); });
}
void llama_model::set_attention(const attention_options& a) {
    impl_->visit([&](auto& m) { m.set_attention(a); });
}
void llama_model::forward(tensor_ref<const float, 3> embeddings, tensor_ref<const std::int8_t, 2> types,
                          tensor_ref<const std::int32_t, 2> image_ids, tensor_ref<const std::int32_t, 1> lens,
                          tensor_ref<float, 3> logits, logits_mode mode) {
    translated([&] { impl_->visit([&](auto& m) { m.forward(embeddings, types, image_ids, lens, logits, mode); }); });
}
void llama_model::forward_tokens(tensor_ref<const std::int32_t, 2> ids, tensor_ref<const std::int32_t, 1> lens,
                                 tensor_ref<float, 3> logits, logits_mode mode) {
    translated([&] { impl_->visit([&](auto& m) { m.forward_tokens(ids, lens, logits, mode); }); });
}
void llama_model::embed(const std::int32_t* ids, std::int64_t n, tensor_ref<float, 2> out) const {
    impl_->visit([&](const auto& m) { m.embed(ids, n, out); });
}

// ---- the vision encoders ---------------------------------------------------------------------------

struct qwen_vit::impl {
    std::variant<std::unique_ptr<mmca::cuda::qwen_vit<float>>, std::unique_ptr<mmca::cuda::qwen_vit<float16>>,
                 std::unique_ptr<mmca::cuda::qwen_vit<bfloat16>>>
        encoder;
    element type;
};

struct clip_vit::impl {
    std::variant<std::unique_ptr<mmca::cuda::clip_vit<float>>, std::unique_ptr<mmca::cuda::clip_vit<float16>>,
                 std::unique_ptr<mmca::cuda::clip_vit<bfloat16>>>
        encoder;
    element type;
};

namespace {

/// A new Impl whose encoder (a variant over Encoder of the three element types) is built from
/// `host` as `type`.
template <class Impl, template <class> class Encoder, class Host>
std::unique_ptr<Impl> make_encoder_impl(const char* where, const Host& host, element type) {
    std::unique_ptr<Impl> made;
    dispatch(
        type, [&](auto tag) { made.reset(new Impl{std::make_unique<Encoder<decltype(tag)>>(host), type}); }, where,
        "type");
    return made;
}

}  // namespace

qwen_vit::qwen_vit(const vision::qwen_vit& host, element type)
    : impl_(make_encoder_impl<impl, mmca::cuda::qwen_vit>("mmca::cuda::lib::qwen_vit", host, type)) {}
qwen_vit::qwen_vit(qwen_vit&&) noexcept = default;
qwen_vit& qwen_vit::operator=(qwen_vit&&) noexcept = default;
qwen_vit::~qwen_vit() = default;
element qwen_vit::type() const { return impl_->type; }
const vision::qwen_vit_config& qwen_vit::config() const {
    return std::visit([](const auto& e) -> const vision::qwen_vit_config& { return e->config(); }, impl_->encoder);
}
void qwen_vit::encode(tensor_ref<const float, 4> images, tensor_ref<float, 3> out) {
    translated([&] { std::visit([&](auto& e) { e->encode(images, out); }, impl_->encoder); });
}

clip_vit::clip_vit(const vision::clip_vit& host, element type)
    : impl_(make_encoder_impl<impl, mmca::cuda::clip_vit>("mmca::cuda::lib::clip_vit", host, type)) {}
clip_vit::clip_vit(clip_vit&&) noexcept = default;
clip_vit& clip_vit::operator=(clip_vit&&) noexcept = default;
clip_vit::~clip_vit() = default;
element clip_vit::type() const { return impl_->type; }
const vision::clip_vit_config& clip_vit::config() const {
    return std::visit([](const auto& e) -> const vision::clip_vit_config& { return e->config(); }, impl_->encoder);
}
void clip_vit::encode(tensor_ref<const float, 4> images, tensor_ref<float, 3> out, vision::clip_output which) {
    translated([&] { std::visit([&](auto& e) { e->encode(images, out, which); }, impl_->encoder); });
}

// ---- the visual-chat model -----------------------------------------------------------------------

namespace {

/// The device tower of element type T, with CUDA failures turned into lib::runtime_error.
template <class T>
class library_tower : public vision_tower {
public:
    explicit library_tower(std::unique_ptr<mmca::encoder_projector_tower> host)
        : tower_(translated([&] { return mmca::cuda::encoder_projector_tower<T>(std::move(host)); })) {}
    std::int64_t image_size() const override { return tower_.image_size(); }
    std::int64_t tokens_per_image() const override { return tower_.tokens_per_image(); }
    std::int64_t width() const override { return tower_.width(); }
    void embed(tensor_ref<const float, 4> images, tensor_ref<float, 3> out, int num_threads) override {
        translated([&] { tower_.embed(images, out, num_threads); });
    }
    bool encoder_on_device() const { return tower_.encoder_on_device(); }

private:
    mmca::cuda::encoder_projector_tower<T> tower_;
};

}  // namespace

std::unique_ptr<visual_chat_model> load_visual_chat_model(const std::string& path, const visual_chat_load_options& load,
                                                          element type) {
    visual_chat_parts parts = load_visual_chat_parts(path, load);
    std::unique_ptr<vision_tower> tower;
    switch (type) {
        case element::float16: tower = std::make_unique<library_tower<float16>>(std::move(parts.tower)); break;
        case element::bfloat16: tower = std::make_unique<library_tower<bfloat16>>(std::move(parts.tower)); break;
        case element::float32: tower = std::make_unique<library_tower<float>>(std::move(parts.tower)); break;
        default:
            throw mmca::invalid_argument("mmca::cuda::lib::load_visual_chat_model", "type", "an unknown element type",
                                         "float32, float16 or bfloat16");
    }
    llama_model language(parts.config, parts.weights, load.options.language, type);
    return std::make_unique<visual_chat_model>(std::move(tower), std::move(language), load.options);
}

bool encoder_on_device(const visual_chat_model& model) {
    const vision_tower* t = &model.tower();
    if (const auto* f = dynamic_cast<const library_tower<float>*>(t)) return f->encoder_on_device();
    if (const auto* h = dynamic_cast<const library_tower<float16>*>(t)) return h->encoder_on_device();
    if (const auto* b = dynamic_cast<const library_tower<bfloat16>*>(t)) return b->encoder_on_device();
    return false;
}

}  // namespace lib
}  // namespace cuda
}  // namespace mmca
