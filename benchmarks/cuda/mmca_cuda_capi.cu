// benchmarks/cuda/mmca_cuda_capi.cu - a C interface to the CUDA attention operator for the Python
// benchmark (ctypes, no pybind11): plan once on tensors that PyTorch allocated, run many times on
// PyTorch's current stream, so that MMCA and torch's SDPA are timed in the same process.
//
// Build (what scripts/device_check.sh does):
//   nvcc -std=c++17 -O3 -arch=sm_90 -shared -Xcompiler -fPIC -DEIGEN_NO_CUDA -Iinclude -isystem <eigen3>
//        -isystem <xtensor/xtl prefix> benchmarks/cuda/mmca_cuda_capi.cu -o libmmca_cuda_capi.so
#include "mmca/backend/cuda/attention_backward.cuh"
#include "mmca/backend/cuda/attention_fused.cuh"

#include <array>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <exception>
#include <memory>
#include <string>

namespace {

/// Type-erased planned call (the shim is built for bfloat16, the type of the comparison with SDPA;
/// define MMCA_CAPI_FLOAT16 to add float16 at the cost of a second set of kernels).
struct handle_base {
    virtual ~handle_base() = default;
    virtual void run(cudaStream_t stream) = 0;
    virtual int kernel() const = 0;
    virtual double useful_flops() const = 0;
};

/// 4 * D * Hq FLOPs per (row, member key) of a plan: Q.K and P.V, multiply and add each.
double plan_useful_flops(const mmca::cuda::attention_plan& plan, std::int64_t head_dim, std::int64_t q_heads) {
    const std::int64_t prefix_len = plan.kv_len + 1;
    double keys = 0.0;
    for (const auto& row : plan.rows) {
        const std::int32_t* prefix = plan.type_prefix.data() + row.batch * 2 * prefix_len;
        const std::int8_t* types = plan.key_types.data() + row.batch * plan.kv_len;
        const std::int32_t* ids = plan.key_image_ids.data() + row.batch * plan.kv_len;
        for (const auto& group : row.range)
            for (const auto& kr : group) {
                if (kr.types == 0u) continue;
                if (kr.image_id < 0) {
                    keys += mmca::cuda::count_keys(prefix, static_cast<std::int32_t>(prefix_len), kr.lo, kr.hi, kr.types);
                } else {
                    for (std::int32_t k = kr.lo; k <= kr.hi; ++k)
                        keys += mmca::cuda::range_contains(kr, k, types[k], ids[k]) ? 1.0 : 0.0;
                }
            }
    }
    return 4.0 * static_cast<double>(head_dim) * static_cast<double>(q_heads) * keys;
}

template <class T>
struct handle final : handle_base {
    mmca::cuda::attention_operator<T> op;
    std::int64_t head_dim = 0, q_heads = 0;
    void run(cudaStream_t stream) override { op.run(stream); }
    int kernel() const override { return static_cast<int>(op.kernel()); }
    double useful_flops() const override { return plan_useful_flops(op.plan(), head_dim, q_heads); }
};

/// A planned backward: the forward's statistics are computed once at planning (untimed).
template <class T>
struct backward_handle final : handle_base {
    mmca::cuda::device_buffer row_max, row_sum, group_out;
    mmca::cuda::attention_backward_operator<T> op;
    std::int64_t head_dim = 0, q_heads = 0;
    void run(cudaStream_t stream) override { op.run(stream); }
    int kernel() const override { return static_cast<int>(op.kernel()); }
    /// The backward's five products against the forward's two: 2.5 x the forward's useful FLOPs.
    double useful_flops() const override { return 2.5 * plan_useful_flops(op.plan(), head_dim, q_heads); }
};

void write_error(char* err, int err_len, const char* text) {
    if (err == nullptr || err_len <= 0) return;
    std::snprintf(err, static_cast<std::size_t>(err_len), "%s", text);
}

template <class T>
handle_base* make_handle(int B, int Hq, int Hkv, int Lq, int Lk, int D, const void* q, const void* k, const void* v,
                         void* out, const std::int8_t* types, const std::int32_t* image_ids,
                         const std::int32_t* kv_lens, const std::int32_t* q_lens, int variant, int visibility,
                         float scale, int kernel, int splits) {
    auto h = std::make_unique<handle<T>>();
    mmca::cuda::attention_arguments<T> args;
    args.q = mmca::tensor_ref<const T, 4>(static_cast<const T*>(q), {B, Hq, Lq, D});
    args.k = mmca::tensor_ref<const T, 4>(static_cast<const T*>(k), {B, Hkv, Lk, D});
    args.v = mmca::tensor_ref<const T, 4>(static_cast<const T*>(v), {B, Hkv, Lk, D});
    args.out = mmca::tensor_ref<T, 4>(static_cast<T*>(out), {B, Hq, Lq, D});
    args.tokens.types = mmca::tensor_ref<const std::int8_t, 2>(types, {B, Lk});
    if (image_ids != nullptr) args.tokens.image_ids = mmca::tensor_ref<const std::int32_t, 2>(image_ids, {B, Lk});
    if (kv_lens != nullptr) args.tokens.kv_lens = mmca::tensor_ref<const std::int32_t, 1>(kv_lens, {B});
    if (q_lens != nullptr) args.tokens.q_lens = mmca::tensor_ref<const std::int32_t, 1>(q_lens, {B});
    args.options.variant = static_cast<mmca::attention_variant>(variant);
    args.options.visibility = static_cast<mmca::image_visibility>(visibility);
    args.options.scale = scale;
    mmca::cuda::attention_config config;
    config.kernel = static_cast<mmca::cuda::attention_kernel>(kernel);
    config.splits = splits;
    h->op.initialize(args, config);
    MMCA_CUDA_CHECK(cudaDeviceSynchronize());
    h->head_dim = D;
    h->q_heads = Hq;
    return h.release();
}

template <class T>
handle_base* make_backward_handle(int B, int Hq, int Hkv, int Lq, int Lk, int D, const void* q, const void* k,
                                  const void* v, void* out, const void* dout, void* dq, void* dk, void* dv,
                                  const std::int8_t* types, int variant, int visibility, float scale, int kernel) {
    auto h = std::make_unique<backward_handle<T>>();
    const std::array<std::int64_t, 4> qs{B, Hq, Lq, D}, ks{B, Hkv, Lk, D}, rows{B, Hq, Lq, 2};
    const std::array<std::int64_t, 5> outs{B, Hq, Lq, 2, D};
    const auto n = static_cast<std::size_t>(B) * Hq * Lq * 2;
    h->row_max.allocate(n * sizeof(float));
    h->row_sum.allocate(n * sizeof(float));
    h->group_out.allocate(n * static_cast<std::size_t>(D) * sizeof(float));
    const mmca::attention_stats stats(mmca::tensor_ref<float, 4>(h->row_max.template as<float>(), rows),
                                      mmca::tensor_ref<float, 4>(h->row_sum.template as<float>(), rows),
                                      mmca::tensor_ref<float, 5>(h->group_out.template as<float>(), outs));
    mmca::token_layout tokens;
    tokens.types = mmca::tensor_ref<const std::int8_t, 2>(types, {B, Lk});
    mmca::attention_options options;
    options.variant = static_cast<mmca::attention_variant>(variant);
    options.visibility = static_cast<mmca::image_visibility>(visibility);
    options.scale = scale;
    const mmca::tensor_ref<const T, 4> tq(static_cast<const T*>(q), qs), tk(static_cast<const T*>(k), ks),
        tv(static_cast<const T*>(v), ks);
    mmca::cuda::attention_forward_with_stats<T>(tq, tk, tv, tokens, options, mmca::tensor_ref<T, 4>(static_cast<T*>(out), qs),
                                                stats);
    h->op.initialize({tq, tk, tv, mmca::tensor_ref<const T, 4>(static_cast<const T*>(dout), qs), tokens, options,
                      mmca::attention_stats_view(stats), mmca::tensor_ref<T, 4>(static_cast<T*>(dq), qs),
                      mmca::tensor_ref<T, 4>(static_cast<T*>(dk), ks), mmca::tensor_ref<T, 4>(static_cast<T*>(dv), ks)},
                     mmca::cuda::attention_backward_config{0, static_cast<mmca::cuda::backward_kernel>(kernel)});
    MMCA_CUDA_CHECK(cudaDeviceSynchronize());
    h->head_dim = D;
    h->q_heads = Hq;
    return h.release();
}

}  // namespace

extern "C" {

/// Plans one backward call (bfloat16): runs the forward with statistics once into `out`, then
/// plans the backward of dout into dq, dk, dv; mmca_cuda_run launches the backward. Arguments as
/// for mmca_cuda_plan (types: host (B, Lk) int8; no image ids or lengths); kernel: 0 automatic,
/// 1 tensor cores, 2 ffma (mmca::cuda::backward_kernel).
void* mmca_cuda_plan_backward(int B, int Hq, int Hkv, int Lq, int Lk, int D, const void* q, const void* k,
                              const void* v, void* out, const void* dout, void* dq, void* dk, void* dv,
                              const std::int8_t* types, int variant, int visibility, float scale, int kernel,
                              char* err, int err_len) {
    try {
        return make_backward_handle<mmca::bfloat16>(B, Hq, Hkv, Lq, Lk, D, q, k, v, out, dout, dq, dk, dv, types,
                                                    variant, visibility, scale, kernel);
    } catch (const std::exception& e) {
        write_error(err, err_len, e.what());
    }
    return nullptr;
}

/// Plans one attention call. dtype: 2 bfloat16 (1 float16 with MMCA_CAPI_FLOAT16). variant: 0 causal, 1 mmca,
/// 2 mmca_reference, 3 causal_cross; visibility: 0 all, 1 preceding, 2 latest; kernel: 0 automatic,
/// 1 tiled, 2 rows. q/k/v/out: contiguous device tensors; types, image_ids, kv_lens, q_lens: host
/// arrays (the last three may be null). Returns a handle, or null with a message in err.
void* mmca_cuda_plan(int dtype, int B, int Hq, int Hkv, int Lq, int Lk, int D, const void* q, const void* k,
                     const void* v, void* out, const std::int8_t* types, const std::int32_t* image_ids,
                     const std::int32_t* kv_lens, const std::int32_t* q_lens, int variant, int visibility, float scale,
                     int kernel, int splits, char* err, int err_len) {
    try {
#if defined(MMCA_CAPI_FLOAT16)
        if (dtype == 1)
            return make_handle<mmca::float16>(B, Hq, Hkv, Lq, Lk, D, q, k, v, out, types, image_ids, kv_lens, q_lens,
                                              variant, visibility, scale, kernel, splits);
#endif
        if (dtype == 2)
            return make_handle<mmca::bfloat16>(B, Hq, Hkv, Lq, Lk, D, q, k, v, out, types, image_ids, kv_lens,
                                               q_lens, variant, visibility, scale, kernel, splits);
        write_error(err, err_len, "dtype must be 2 (bfloat16), or 1 (float16) in a build with MMCA_CAPI_FLOAT16");
    } catch (const std::exception& e) {
        write_error(err, err_len, e.what());
    }
    return nullptr;
}

/// Launches the planned call on `stream` (a cudaStream_t, e.g. torch.cuda.current_stream().cuda_stream).
int mmca_cuda_run(void* h, void* stream, char* err, int err_len) {
    try {
        static_cast<handle_base*>(h)->run(static_cast<cudaStream_t>(stream));
        return 0;
    } catch (const std::exception& e) {
        write_error(err, err_len, e.what());
        return 1;
    }
}

/// The kernel the call runs: 1 tiled, 2 rows.
int mmca_cuda_kernel(void* h) { return static_cast<handle_base*>(h)->kernel(); }

/// FLOPs of the keys the rows actually attend to (4 * D * Hq per row and member key).
double mmca_cuda_useful_flops(void* h) { return static_cast<handle_base*>(h)->useful_flops(); }

void mmca_cuda_destroy(void* h) { delete static_cast<handle_base*>(h); }

}  // extern "C"
