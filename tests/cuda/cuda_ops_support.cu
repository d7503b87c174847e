// tests/cuda/cuda_ops_support.cu - definitions of cuda_ops_support.hpp (device code of the ops tests).
#include "cuda_ops_support.hpp"

#include "mmca/backend/cuda/ops/ops.cuh"
#include "mmca/core/dtype.hpp"

#include <array>
#include <cstdint>
#include <cstring>
#include <exception>
#include <stdexcept>
#include <string>
#include <vector>

namespace mmca_cuda_test {
namespace {

using mmca::cuda::device_buffer;

std::int64_t dim(const tensor2& t, std::size_t d) { return static_cast<std::int64_t>(t.shape()[d]); }
std::int64_t dim(const tensor4& t, std::size_t d) { return static_cast<std::int64_t>(t.shape()[d]); }

/// A (rows, cols) matrix of S on the device with a row stride of cols + padding elements.
template <class S>
struct device_matrix {
    device_buffer buffer;
    std::int64_t rows = 0, cols = 0, stride = 0;

    device_matrix(std::int64_t r, std::int64_t c, std::int64_t padding = 0) : rows(r), cols(c), stride(c + padding) {
        buffer.allocate(static_cast<std::size_t>(rows * stride) * sizeof(S));
        poison();
    }
    void poison() {
        if (buffer.bytes() == 0) return;
        MMCA_CUDA_CHECK(cudaMemset(buffer.data(), 0xff, buffer.bytes()));
        MMCA_CUDA_CHECK(cudaDeviceSynchronize());
    }
    static device_matrix upload(const tensor2& t, std::int64_t padding = 0) {
        device_matrix m(dim(t, 0), dim(t, 1), padding);
        std::vector<S> host(static_cast<std::size_t>(m.rows * m.stride), static_cast<S>(0.0f));
        for (std::int64_t r = 0; r < m.rows; ++r)
            for (std::int64_t c = 0; c < m.cols; ++c) host[r * m.stride + c] = static_cast<S>(t(r, c));
        if (!host.empty()) {
            MMCA_CUDA_CHECK(cudaMemcpy(m.buffer.data(), host.data(), host.size() * sizeof(S), cudaMemcpyHostToDevice));
            MMCA_CUDA_CHECK(cudaDeviceSynchronize());
        }
        return m;
    }
    tensor2 download() const {
        tensor2 t(std::array<std::size_t, 2>{static_cast<std::size_t>(rows), static_cast<std::size_t>(cols)});
        std::vector<S> host(static_cast<std::size_t>(rows * stride));
        if (!host.empty())
            MMCA_CUDA_CHECK(cudaMemcpy(host.data(), buffer.data(), host.size() * sizeof(S), cudaMemcpyDeviceToHost));
        for (std::int64_t r = 0; r < rows; ++r)
            for (std::int64_t c = 0; c < cols; ++c) t(r, c) = static_cast<float>(host[r * stride + c]);
        return t;
    }
    mmca::tensor_ref<S, 2> ref() const { return {buffer.as<S>(), {rows, cols}, {stride, 1}}; }
    mmca::tensor_ref<const S, 2> cref() const { return {buffer.as<const S>(), {rows, cols}, {stride, 1}}; }
};

/// A float32 vector on the device (nullptr when empty).
struct device_vector {
    device_buffer buffer;
    explicit device_vector(const std::vector<float>& v) {
        if (v.empty()) return;
        buffer.allocate(v.size() * sizeof(float));
        MMCA_CUDA_CHECK(cudaMemcpy(buffer.data(), v.data(), v.size() * sizeof(float), cudaMemcpyHostToDevice));
        MMCA_CUDA_CHECK(cudaDeviceSynchronize());
    }
    const float* get() const { return buffer.as<const float>(); }
};

/// Float32 (N, C, H, W) images on the device, row-major.
struct device_images {
    device_buffer buffer;
    std::array<std::int64_t, 4> shape{};
    explicit device_images(const tensor4& images) {
        for (std::size_t d = 0; d < 4; ++d) shape[d] = dim(images, d);
        buffer.allocate(images.size() * sizeof(float));
        MMCA_CUDA_CHECK(
            cudaMemcpy(buffer.data(), images.data(), images.size() * sizeof(float), cudaMemcpyHostToDevice));
        MMCA_CUDA_CHECK(cudaDeviceSynchronize());
    }
    mmca::tensor_ref<const float, 4> cref() const { return {buffer.as<const float>(), shape}; }
};

void finish() {
    MMCA_CUDA_CHECK(cudaDeviceSynchronize());
    MMCA_CUDA_CHECK(cudaGetLastError());
}

/// A non-blocking stream for one call.
struct own_stream {
    cudaStream_t stream = nullptr;
    own_stream() { MMCA_CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking)); }
    ~own_stream() { cudaStreamDestroy(stream); }
    void synchronize() const {
        MMCA_CUDA_CHECK(cudaStreamSynchronize(stream));
        MMCA_CUDA_CHECK(cudaGetLastError());
    }
};

}  // namespace

template <class S>
tensor2 cuda_rmsnorm(const tensor2& x, const std::vector<float>& weight, float eps, bool in_place) {
    auto dx = device_matrix<S>::upload(x, 3);
    device_matrix<S> dy(dim(x, 0), dim(x, 1), 1);
    const device_vector w(weight);
    mmca::cuda::rmsnorm_forward<S>(dx.cref(), w.get(), eps, in_place ? dx.ref() : dy.ref());
    finish();
    return in_place ? dx.download() : dy.download();
}

template <class S>
tensor2 cuda_layernorm(const tensor2& x, const std::vector<float>& weight, const std::vector<float>& bias, float eps,
                       bool in_place) {
    auto dx = device_matrix<S>::upload(x, 5);
    device_matrix<S> dy(dim(x, 0), dim(x, 1));
    const device_vector w(weight), b(bias);
    own_stream stream;
    mmca::cuda::layernorm_forward<S>(dx.cref(), w.get(), b.get(), eps, in_place ? dx.ref() : dy.ref(), stream.stream);
    stream.synchronize();
    return in_place ? dx.download() : dy.download();
}

template <class S>
tensor4 cuda_rope(const tensor4& x, const mmca::nn::rope_config& config, const std::vector<std::int64_t>& positions,
                  std::int64_t total_len, bool head_major_storage) {
    const std::int64_t B = dim(x, 0), L = dim(x, 1), H = dim(x, 2), D = dim(x, 3);
    // Element (b, h, l, d) of the (B, H, L, D) view lives at b·sb + h·sh + l·sl + d.
    const std::array<std::int64_t, 4> strides =
        head_major_storage ? std::array<std::int64_t, 4>{H * L * D, L * D, D, 1}
                           : std::array<std::int64_t, 4>{L * H * D, D, H * D, 1};
    const std::size_t n = x.size();
    std::vector<S> host(n);
    for (std::int64_t b = 0; b < B; ++b)
        for (std::int64_t l = 0; l < L; ++l)
            for (std::int64_t h = 0; h < H; ++h)
                for (std::int64_t d = 0; d < D; ++d)
                    host[b * strides[0] + h * strides[1] + l * strides[2] + d] = static_cast<S>(x(b, l, h, d));
    device_buffer buffer(n * sizeof(S));
    MMCA_CUDA_CHECK(cudaMemcpy(buffer.data(), host.data(), n * sizeof(S), cudaMemcpyHostToDevice));
    MMCA_CUDA_CHECK(cudaDeviceSynchronize());
    mmca::tensor_ref<S, 4> view(buffer.as<S>(), {B, H, L, D}, strides);
    own_stream stream;
    mmca::cuda::rope_apply<S>(view, config, positions.data(), static_cast<std::int64_t>(positions.size()), total_len,
                              stream.stream);
    stream.synchronize();
    MMCA_CUDA_CHECK(cudaMemcpy(host.data(), buffer.data(), n * sizeof(S), cudaMemcpyDeviceToHost));
    tensor4 out(x.shape());
    for (std::int64_t b = 0; b < B; ++b)
        for (std::int64_t l = 0; l < L; ++l)
            for (std::int64_t h = 0; h < H; ++h)
                for (std::int64_t d = 0; d < D; ++d)
                    out(b, l, h, d) = static_cast<float>(host[b * strides[0] + h * strides[1] + l * strides[2] + d]);
    return out;
}

template <class S>
tensor2 cuda_activation(mmca::nn::activation act, const tensor2& x) {
    const auto dx = device_matrix<S>::upload(x, 2);
    device_matrix<S> dy(dim(x, 0), dim(x, 1));
    mmca::cuda::activation_forward<S>(act, dx.cref(), dy.ref());
    finish();
    return dy.download();
}

template <class S>
tensor2 cuda_swiglu(const tensor2& gate, const tensor2& up, bool fused_layout) {
    const std::int64_t N = dim(gate, 0), I = dim(gate, 1);
    if (!fused_layout) {
        const auto dg = device_matrix<S>::upload(gate), du = device_matrix<S>::upload(up, 7);
        device_matrix<S> dout(N, I, 1);
        mmca::cuda::swiglu_forward<S>(dg.cref(), du.cref(), dout.ref());
        finish();
        return dout.download();
    }
    tensor2 both(std::array<std::size_t, 2>{static_cast<std::size_t>(N), static_cast<std::size_t>(2 * I)});
    for (std::int64_t r = 0; r < N; ++r)
        for (std::int64_t c = 0; c < I; ++c) {
            both(r, c) = gate(r, c);
            both(r, I + c) = up(r, c);
        }
    const auto d = device_matrix<S>::upload(both);
    const mmca::tensor_ref<S, 2> g(d.buffer.template as<S>(), {N, I}, {2 * I, 1});
    const mmca::tensor_ref<const S, 2> u(d.buffer.template as<const S>() + I, {N, I}, {2 * I, 1});
    mmca::cuda::swiglu_forward<S>(g, u, g);
    finish();
    const tensor2 all = d.download();
    tensor2 out(gate.shape());
    for (std::int64_t r = 0; r < N; ++r)
        for (std::int64_t c = 0; c < I; ++c) out(r, c) = all(r, c);
    return out;
}

template <class S>
tensor2 cuda_residual_add(const tensor2& h, const tensor2& delta, const std::vector<std::uint8_t>& rows) {
    auto dh = device_matrix<S>::upload(h, 1);
    const auto dd = device_matrix<S>::upload(delta, 4);
    mmca::cuda::device_buffer mask(rows.size());
    if (rows.empty()) {
        mmca::cuda::residual_add<S>(dh.ref(), dd.cref());
    } else {
        MMCA_CUDA_CHECK(cudaMemcpy(mask.data(), rows.data(), rows.size(), cudaMemcpyHostToDevice));
        mmca::cuda::residual_add<S>(dh.ref(), dd.cref(), mask.as<const std::uint8_t>());
    }
    finish();  // before the mask is freed
    return dh.download();
}

template <class S>
tensor2 cuda_embedding(const std::vector<std::int32_t>& ids, const tensor2& table, bool float_output) {
    const auto dt = device_matrix<S>::upload(table, 2);
    const std::int64_t n = static_cast<std::int64_t>(ids.size()), H = dim(table, 1);
    if (float_output) {
        device_matrix<float> dout(n, H, 3);
        mmca::cuda::embedding_forward<S, float>(ids.data(), n, dt.cref(), dout.ref());
        finish();
        return dout.download();
    }
    device_matrix<S> dout(n, H);
    own_stream stream;
    mmca::cuda::embedding_forward<S, S>(ids.data(), n, dt.cref(), dout.ref(), stream.stream);
    stream.synchronize();
    return dout.download();
}

template <class S>
tensor2 cuda_linear(const tensor2& x, const tensor2& weight, const std::vector<float>& bias, std::int64_t row_padding) {
    const auto dx = device_matrix<S>::upload(x, row_padding), dw = device_matrix<S>::upload(weight, row_padding);
    device_matrix<S> dy(dim(x, 0), dim(weight, 0), row_padding);
    const device_vector b(bias);
    const mmca::cuda::cublas_handle handle;
    own_stream stream;
    mmca::cuda::linear_forward<S>(handle, dx.cref(), dw.cref(), b.get(), dy.ref(), stream.stream);
    stream.synchronize();
    return dy.download();
}

template <class S>
tensor2 cuda_extract_patches(const tensor4& images, std::int64_t patch) {
    const device_images di(images);
    const std::int64_t rows = dim(images, 0) * (dim(images, 2) / patch) * (dim(images, 3) / patch);
    device_matrix<S> dp(rows, dim(images, 1) * patch * patch, 1);
    mmca::cuda::extract_patches<S>(di.cref(), patch, dp.ref());
    finish();
    return dp.download();
}

template <class S>
tensor2 cuda_patch_embedding(const tensor4& images, const tensor2& weight, std::int64_t patch) {
    const device_images di(images);
    const auto dw = device_matrix<S>::upload(weight);
    const std::int64_t rows = dim(images, 0) * (dim(images, 2) / patch) * (dim(images, 3) / patch);
    device_matrix<S> dout(rows, dim(weight, 0));
    const mmca::cuda::cublas_handle handle;
    own_stream stream;
    mmca::cuda::patch_embedding_forward<S>(handle, di.cref(), dw.cref(), patch, dout.ref(), stream.stream);
    stream.synchronize();
    return dout.download();
}

#define MMCA_CUDA_OPS_INSTANTIATE(S)                                                                                \
    template tensor2 cuda_rmsnorm<S>(const tensor2&, const std::vector<float>&, float, bool);                       \
    template tensor2 cuda_layernorm<S>(const tensor2&, const std::vector<float>&, const std::vector<float>&, float, \
                                       bool);                                                                       \
    template tensor4 cuda_rope<S>(const tensor4&, const mmca::nn::rope_config&, const std::vector<std::int64_t>&,   \
                                  std::int64_t, bool);                                                              \
    template tensor2 cuda_activation<S>(mmca::nn::activation, const tensor2&);                                      \
    template tensor2 cuda_swiglu<S>(const tensor2&, const tensor2&, bool);                                          \
    template tensor2 cuda_residual_add<S>(const tensor2&, const tensor2&, const std::vector<std::uint8_t>&);                                          \
    template tensor2 cuda_embedding<S>(const std::vector<std::int32_t>&, const tensor2&, bool);                     \
    template tensor2 cuda_linear<S>(const tensor2&, const tensor2&, const std::vector<float>&, std::int64_t);       \
    template tensor2 cuda_extract_patches<S>(const tensor4&, std::int64_t);                                         \
    template tensor2 cuda_patch_embedding<S>(const tensor4&, const tensor2&, std::int64_t);

MMCA_CUDA_OPS_INSTANTIATE(float)
MMCA_CUDA_OPS_INSTANTIATE(mmca::float16)
MMCA_CUDA_OPS_INSTANTIATE(mmca::bfloat16)

// ---- no device needed --------------------------------------------------------------------------

tensor2 host_unfold_emulation(const tensor4& images, std::int64_t patch) {
    const std::int64_t N = dim(images, 0), C = dim(images, 1), Hpx = dim(images, 2), Wpx = dim(images, 3);
    const std::int64_t Gh = Hpx / patch, Gw = Wpx / patch, K = C * patch * patch, rows = N * Gh * Gw;
    const mmca::cuda::ops_detail::unfold_shape s{C, patch, Gh, Gw, C * Hpx * Wpx, Hpx * Wpx, Wpx, 1};
    tensor2 out(std::array<std::size_t, 2>{static_cast<std::size_t>(rows), static_cast<std::size_t>(K)});
    for (std::int64_t e = 0; e < rows * K; ++e) {
        const auto rc = mmca::cuda::ops_detail::split_index(e, K);
        out(rc.row, rc.col) = images.data()[mmca::cuda::ops_detail::unfold_source(s, rc.row, rc.col)];
    }
    return out;
}

tensor4 host_rope_emulation(const tensor4& x, const mmca::nn::rope_config& config,
                            const std::vector<std::int64_t>& positions, std::int64_t total_len) {
    const std::int64_t B = dim(x, 0), L = dim(x, 1), H = dim(x, 2), D = dim(x, 3), half = D / 2;
    mmca::nn::rope_table table;
    mmca::nn::rope_build(config, positions.data(), static_cast<std::int64_t>(positions.size()), total_len, table);
    const std::int64_t table_batch_stride = table.rows == B * L ? L : 0;
    tensor4 out = x;
    float* data = out.data();
    for (std::int64_t p = 0; p < B * H * L * half; ++p) {
        // The token-major storage seen as (B, H, L, D): strides (L·H·D, D, H·D, 1).
        const auto s = mmca::cuda::ops_detail::rope_locate(p, H, L, half, L * H * D, D, H * D, table_batch_stride);
        const float c = table.cos[s.table_row * half + s.i], sn = table.sin[s.table_row * half + s.i];
        const float a = data[s.offset], b = data[s.offset + half];
        data[s.offset] = a * c - b * sn;
        data[s.offset + half] = b * c + a * sn;
    }
    return out;
}

tensor2 host_gemm_emulation(const tensor2& x, const tensor2& weight, std::int64_t row_padding) {
    const std::int64_t N = dim(x, 0), in = dim(x, 1), out = dim(weight, 0);
    const auto g = mmca::cuda::ops_detail::gemm_arguments(N, in, out, in + row_padding, in + row_padding,
                                                          out + row_padding);
    std::vector<float> A(static_cast<std::size_t>(out * g.lda), 0.0f), Bm(static_cast<std::size_t>(N * g.ldb), 0.0f),
        C(static_cast<std::size_t>(N * g.ldc), -1.0f);
    for (std::int64_t r = 0; r < out; ++r)
        for (std::int64_t c = 0; c < in; ++c) A[r * g.lda + c] = weight(r, c);
    for (std::int64_t r = 0; r < N; ++r)
        for (std::int64_t c = 0; c < in; ++c) Bm[r * g.ldb + c] = x(r, c);
    // Column-major BLAS: C(i, j) = sum_p opA(i, p) · opB(p, j); opA = Aᵀ, so opA(i, p) = A(p, i) =
    // A[p + i·lda]; opB = B, so opB(p, j) = B[p + j·ldb]; C(i, j) = C[i + j·ldc].
    for (std::int64_t j = 0; j < g.n; ++j)
        for (std::int64_t i = 0; i < g.m; ++i) {
            double acc = 0.0;
            for (std::int64_t p = 0; p < g.k; ++p)
                acc += static_cast<double>(A[p + i * g.lda]) * static_cast<double>(Bm[p + j * g.ldb]);
            C[i + j * g.ldc] = static_cast<float>(acc);
        }
    tensor2 y(std::array<std::size_t, 2>{static_cast<std::size_t>(N), static_cast<std::size_t>(out)});
    for (std::int64_t r = 0; r < N; ++r)
        for (std::int64_t c = 0; c < out; ++c) y(r, c) = C[r * g.ldc + c];
    return y;
}

namespace {

// Host arrays standing in for device memory: every case below fails before any pointer is used.
struct fake_memory {
    std::vector<float> f = std::vector<float>(4096, 0.0f);
    std::vector<mmca::bfloat16> h = std::vector<mmca::bfloat16>(4096);
};

void run_host_case(const std::string& name, fake_memory& m) {
    using mmca::tensor_ref;
    namespace cu = mmca::cuda;
    float* f = m.f.data();
    mmca::bfloat16* h = m.h.data();
    const std::vector<std::int32_t> ids{0, 3, 7, 2};
    if (name == "rmsnorm_y_shape")
        cu::rmsnorm_forward<float>(tensor_ref<const float, 2>(f, {4, 80}), f, 1e-5f, tensor_ref<float, 2>(f, {4, 81}));
    else if (name == "rmsnorm_eps")
        cu::rmsnorm_forward<float>(tensor_ref<const float, 2>(f, {4, 80}), f, 0.0f, tensor_ref<float, 2>(f, {4, 80}));
    else if (name == "rmsnorm_weight")
        cu::rmsnorm_forward<mmca::bfloat16>(tensor_ref<const mmca::bfloat16, 2>(h, {4, 80}), nullptr, 1e-5f,
                                            tensor_ref<mmca::bfloat16, 2>(h, {4, 80}));
    else if (name == "rmsnorm_x_strided")
        cu::rmsnorm_forward<float>(tensor_ref<const float, 2>(f, {4, 80}, {160, 2}), f, 1e-5f,
                                   tensor_ref<float, 2>(f, {4, 80}));
    else if (name == "layernorm_empty_rows")
        cu::layernorm_forward<float>(tensor_ref<const float, 2>(f, {4, 0}), nullptr, nullptr, 1e-6f,
                                     tensor_ref<float, 2>(f, {4, 0}));
    else if (name == "layernorm_eps")
        cu::layernorm_forward<float>(tensor_ref<const float, 2>(f, {4, 80}), nullptr, nullptr, -1.0f,
                                     tensor_ref<float, 2>(f, {4, 80}));
    else if (name == "layernorm_x_missing")
        cu::layernorm_forward<float>(tensor_ref<const float, 2>(), nullptr, nullptr, 1e-6f,
                                     tensor_ref<float, 2>(f, {4, 80}));
    else if (name == "rope_odd_head_dim") {
        mmca::nn::rope_config c;
        c.head_dim = 7;
        const std::vector<std::int64_t> pos{0, 1, 2};
        cu::rope_apply<float>(tensor_ref<float, 4>(f, {1, 2, 3, 7}), c, pos.data(), 3, 3);
    } else if (name == "rope_positions_count") {
        mmca::nn::rope_config c;
        c.head_dim = 8;
        const std::vector<std::int64_t> pos{0, 1, 2, 3, 4};
        cu::rope_apply<float>(tensor_ref<float, 4>(f, {2, 2, 3, 8}), c, pos.data(), 5, 5);
    } else if (name == "rope_head_dim_mismatch") {
        mmca::nn::rope_config c;
        c.head_dim = 16;
        const std::vector<std::int64_t> pos{0, 1, 2};
        cu::rope_apply<float>(tensor_ref<float, 4>(f, {1, 2, 3, 8}), c, pos.data(), 3, 3);
    } else if (name == "rope_table_rows") {
        cu::rope_device_table t;
        t.rows = 5;
        t.half = 4;
        cu::rope_apply<float>(tensor_ref<float, 4>(f, {2, 2, 3, 8}), t);
    } else if (name == "swiglu_up_shape")
        cu::swiglu_forward<float>(tensor_ref<const float, 2>(f, {3, 104}), tensor_ref<const float, 2>(f, {3, 103}),
                                  tensor_ref<float, 2>(f, {3, 104}));
    else if (name == "swiglu_out_shape")
        cu::swiglu_forward<float>(tensor_ref<const float, 2>(f, {3, 104}), tensor_ref<const float, 2>(f, {3, 104}),
                                  tensor_ref<float, 2>(f, {2, 104}));
    else if (name == "activation_kind")
        cu::activation_forward<float>(static_cast<mmca::nn::activation>(9), tensor_ref<const float, 2>(f, {3, 4}),
                                      tensor_ref<float, 2>(f, {3, 4}));
    else if (name == "activation_y_shape")
        cu::activation_forward<float>(mmca::nn::activation::gelu_erf, tensor_ref<const float, 2>(f, {3, 4}),
                                      tensor_ref<float, 2>(f, {4, 3}));
    else if (name == "residual_delta_shape")
        cu::residual_add<float>(tensor_ref<float, 2>(f, {3, 4}), tensor_ref<const float, 2>(f, {3, 5}));
    else if (name == "embedding_id_out_of_range") {
        const std::vector<std::int32_t> bad{0, 3, 8, 2};
        cu::embedding_forward<mmca::bfloat16, float>(bad.data(), 4, tensor_ref<const mmca::bfloat16, 2>(h, {8, 16}),
                                                     tensor_ref<float, 2>(f, {4, 16}));
    } else if (name == "embedding_negative_id") {
        const std::vector<std::int32_t> bad{-1};
        cu::embedding_forward<float, float>(bad.data(), 1, tensor_ref<const float, 2>(f, {8, 16}),
                                            tensor_ref<float, 2>(f, {1, 16}));
    } else if (name == "embedding_out_shape")
        cu::embedding_forward<float, float>(ids.data(), 4, tensor_ref<const float, 2>(f, {8, 16}),
                                            tensor_ref<float, 2>(f, {4, 15}));
    else if (name == "linear_x_shape")
        cu::ops_detail::check_linear_arguments<float>(tensor_ref<const float, 2>(f, {5, 63}),
                                                      tensor_ref<const float, 2>(f, {32, 64}),
                                                      tensor_ref<float, 2>(f, {5, 32}));
    else if (name == "linear_y_shape")
        cu::ops_detail::check_linear_arguments<mmca::bfloat16>(tensor_ref<const mmca::bfloat16, 2>(h, {5, 64}),
                                                               tensor_ref<const mmca::bfloat16, 2>(h, {32, 64}),
                                                               tensor_ref<mmca::bfloat16, 2>(h, {5, 33}));
    else if (name == "linear_weight_missing") {
        cu::ops_detail::check_linear_arguments<float>(tensor_ref<const float, 2>(f, {5, 64}),
                                                      tensor_ref<const float, 2>(),
                                                      tensor_ref<float, 2>(f, {5, 32}));
    } else if (name == "unfold_patch")
        cu::extract_patches<float>(tensor_ref<const float, 4>(f, {1, 3, 28, 28}), 5, tensor_ref<float, 2>(f, {1, 1}));
    else if (name == "unfold_patches_shape")
        cu::extract_patches<float>(tensor_ref<const float, 4>(f, {1, 3, 28, 28}), 14,
                                   tensor_ref<float, 2>(f, {4, 3 * 14 * 14 - 1}));
    else
        throw std::logic_error("unknown validation case " + name);
}

}  // namespace

std::vector<std::string> host_validation_cases() {
    return {"rmsnorm_y_shape",      "rmsnorm_eps",          "rmsnorm_weight",       "rmsnorm_x_strided",
            "layernorm_empty_rows", "layernorm_eps",        "layernorm_x_missing",  "rope_odd_head_dim",
            "rope_positions_count", "rope_head_dim_mismatch", "rope_table_rows",    "swiglu_up_shape",
            "swiglu_out_shape",     "activation_kind",      "activation_y_shape",   "residual_delta_shape",
            "embedding_id_out_of_range", "embedding_negative_id", "embedding_out_shape", "linear_x_shape",
            "linear_y_shape", "linear_weight_missing", "unfold_patch",
            "unfold_patches_shape"};
}

std::string host_validation_error(const std::string& name, std::string* argument) {
    fake_memory m;
    try {
        run_host_case(name, m);
    } catch (const mmca::invalid_argument& e) {
        if (argument != nullptr) *argument = e.argument();
        return e.what();
    } catch (const std::exception& e) {
        return std::string("other exception: ") + e.what();
    }
    return "";
}

std::string device_pointer_error(const std::string& op) {
    using mmca::tensor_ref;
    std::vector<float> host(64 * 64, 1.0f);
    device_matrix<float> dev(8, 64);
    const device_vector w(std::vector<float>(64, 1.0f));
    try {
        if (op == "rmsnorm")
            mmca::cuda::rmsnorm_forward<float>(tensor_ref<const float, 2>(host.data(), {8, 64}), w.get(), 1e-5f,
                                               dev.ref());
        else if (op == "linear") {
            const mmca::cuda::cublas_handle handle;
            mmca::cuda::linear_forward<float>(handle, dev.cref(), tensor_ref<const float, 2>(host.data(), {64, 64}),
                                              nullptr, tensor_ref<float, 2>(dev.ref().data, {8, 64}));
        } else if (op == "embedding") {
            const std::vector<std::int32_t> ids{1, 2};
            mmca::cuda::embedding_forward<float, float>(ids.data(), 2, dev.cref(),
                                                        tensor_ref<float, 2>(host.data(), {2, 64}));
        } else {
            throw std::logic_error("unknown op " + op);
        }
    } catch (const mmca::invalid_argument& e) {
        return e.what();
    }
    return "";
}

}  // namespace mmca_cuda_test
