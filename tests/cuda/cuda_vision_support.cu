// tests/cuda/cuda_vision_support.cu - the GPU vision encoder, dense attention and visual-chat model
// for the tests (see cuda_vision_support.hpp).
#include "cuda_vision_support.hpp"

#include "mmca/backend/cuda/ops/dense_attention.cuh"
#include "mmca/backend/cuda/visual_chat.cuh"
#include "mmca/backend/cuda/vision.cuh"
#include "mmca/core/dtype.hpp"


namespace mmca_cuda_test {

namespace {

template <class S>
mmca::cuda::device_buffer upload_as(const std::vector<float>& values) {
    std::vector<S> converted(values.size());
    for (std::size_t i = 0; i < values.size(); ++i) converted[i] = S(values[i]);
    mmca::cuda::device_buffer d(converted.size() * sizeof(S));
    MMCA_CUDA_CHECK(cudaMemcpy(d.data(), converted.data(), converted.size() * sizeof(S), cudaMemcpyHostToDevice));
    return d;
}

}  // namespace

template <class S>
std::vector<float> cuda_dense_attention_run(const host_heads& q, const host_heads& k, const host_heads& v,
                                            std::int64_t heads, std::int64_t head_dim, float scale, bool fused) {
    const mmca::cuda::device_buffer dq = upload_as<S>(q.values), dk = upload_as<S>(k.values), dv = upload_as<S>(v.values);
    const std::int64_t W = heads * head_dim;
    mmca::cuda::device_buffer dout(static_cast<std::size_t>(q.rows * W) * sizeof(S));
    auto heads_of = [](const host_heads& h, const mmca::cuda::device_buffer& b) {
        return mmca::cuda::device_heads<S>{b.as<const S>(), h.rows, h.row_stride, h.head_stride, h.offset};
    };
    mmca::cuda::cublas_handle handle;
    mmca::cuda::dense_attention_scratch scratch;
    scratch.fused = fused;
    mmca::cuda::dense_attention<S>(handle, heads_of(q, dq), heads_of(k, dk), heads_of(v, dv), heads, head_dim, scale,
                                   mmca::tensor_ref<S, 2>(dout.as<S>(), {q.rows, W}), scratch, nullptr);
    std::vector<S> host(static_cast<std::size_t>(q.rows * W));
    MMCA_CUDA_CHECK(cudaMemcpy(host.data(), dout.data(), host.size() * sizeof(S), cudaMemcpyDeviceToHost));
    std::vector<float> out(host.size());
    for (std::size_t i = 0; i < host.size(); ++i) out[i] = static_cast<float>(host[i]);
    return out;
}

template <class S>
std::vector<float> cuda_qwen_encode(const mmca::vision::qwen_vit& host, const std::vector<float>& images,
                                    std::int64_t n) {
    const auto& c = host.config();
    mmca::cuda::qwen_vit<S> vit(host);
    std::vector<float> out(static_cast<std::size_t>(n * c.queries * c.output_dim));
    vit.encode(mmca::tensor_ref<const float, 4>(images.data(), {n, 3, c.image_size, c.image_size}),
               mmca::tensor_ref<float, 3>(out.data(), {n, c.queries, c.output_dim}));
    return out;
}

template <class S>
std::vector<float> cuda_clip_encode(const mmca::vision::clip_vit& host, const std::vector<float>& images,
                                    std::int64_t n, mmca::vision::clip_output which,
                                    std::int64_t size) {
    const auto& c = host.config();
    mmca::cuda::clip_vit<S> vit(host);
    std::vector<float> out(static_cast<std::size_t>(n * c.tokens() * c.hidden_size));
    const std::int64_t side = size > 0 ? size : c.image_size;
    vit.encode(mmca::tensor_ref<const float, 4>(images.data(), {n, c.num_channels, side, side}),
               mmca::tensor_ref<float, 3>(out.data(), {n, c.tokens(), c.hidden_size}), which);
    return out;
}

template <class S>
std::vector<float> cuda_tower_embed(std::unique_ptr<mmca::encoder_projector_tower> host,
                                    const std::vector<float>& images, std::int64_t n, bool* on_device) {
    mmca::cuda::encoder_projector_tower<S> tower(std::move(host));
    *on_device = tower.encoder_on_device();
    const std::int64_t s = tower.image_size(), t = tower.tokens_per_image(), w = tower.width();
    std::vector<float> out(static_cast<std::size_t>(n * t * w));
    tower.embed(mmca::tensor_ref<const float, 4>(images.data(), {n, 3, s, s}),
                mmca::tensor_ref<float, 3>(out.data(), {n, t, w}), 1);
    return out;
}

template <class S>
chat_script_result cuda_chat_script(const std::string& path, const mmca::visual_chat_load_options& load,
                                    std::int32_t P, std::int64_t image_size, const std::vector<float>& images) {
    mmca::visual_chat_load_options two = load, one = load;
    two.options.language.batch = 2;
    one.options.language.batch = 1;
    auto batch2 = mmca::cuda::load_visual_chat_model<S>(path, two);
    auto batch1 = mmca::cuda::load_visual_chat_model<S>(path, one);
    return run_chat_script(*batch2, *batch1, P, image_size, images);
}

#define MMCA_VISION_SUPPORT(S)                                                                                   \
    template std::vector<float> cuda_dense_attention_run<S>(const host_heads&, const host_heads&,              \
                                                            const host_heads&, std::int64_t, std::int64_t, float,  \
                                                            bool);                                                 \
    template std::vector<float> cuda_qwen_encode<S>(const mmca::vision::qwen_vit&, const std::vector<float>&,  \
                                                    std::int64_t);                                              \
    template std::vector<float> cuda_clip_encode<S>(const mmca::vision::clip_vit&, const std::vector<float>&,  \
                                                    std::int64_t, mmca::vision::clip_output, std::int64_t);     \
    template std::vector<float> cuda_tower_embed<S>(std::unique_ptr<mmca::encoder_projector_tower>,             \
                                                    const std::vector<float>&, std::int64_t, bool*);           \
    template chat_script_result cuda_chat_script<S>(const std::string&, const mmca::visual_chat_load_options&,  \
                                                    std::int32_t, std::int64_t, const std::vector<float>&);

MMCA_VISION_SUPPORT(float)
MMCA_VISION_SUPPORT(mmca::float16)
MMCA_VISION_SUPPORT(mmca::bfloat16)

}  // namespace mmca_cuda_test
