// mmca/backend/cuda/attention_backward.cuh - gradients of every attention variant on the GPU.
//
//   mmca::cuda::attention_forward_with_stats<T>(q, k, v, tokens, options, out, stats, stream)
//       (attention_fused.cuh) the forward, also writing the statistics the backward needs
//   mmca::cuda::attention_backward<T>(q, k, v, dout, tokens, options, stats, dq, dk, dv, stream)
//
// The same contract as the CPU mmca::attention_backward (mmca/attention/attention_backward.hpp):
// the gradients of L = sum(dout * out) with respect to q, k and v for the token layout and options of
// the forward, from that forward's statistics (row max and sum per group, per-group outputs; device
// float32, contiguous). A uniform-average group (mmca_reference's degenerate rows) sends gradient to
// V only; grouped-query kv heads sum the gradients of their query heads; pad rows and MMCA image rows
// (which copy V_j) get dq = 0 and send dout to dv at their own position. T is float, mmca::float16 or
// mmca::bfloat16 (or CUDA's types); arithmetic is float32 and each gradient element is rounded once.
// Head dims up to 256. Asynchronous on `stream`; the plan buffers are stream-ordered.
#pragma once

#include "mmca/attention/problem.hpp"
#include "mmca/attention/stats.hpp"
#include "mmca/attention/types.hpp"
#include "mmca/backend/cuda/attention_fused.cuh"
#include "mmca/backend/cuda/attention_plan.hpp"
#include "mmca/backend/cuda/backward_kernel.hpp"
#include "mmca/backend/cuda/common.cuh"
#include "mmca/backend/cuda/kernels/attention_backward.cuh"
#include "mmca/backend/cuda/kernels/attention_backward_mma.cuh"
#include "mmca/core/error.hpp"
#include "mmca/core/tensor.hpp"

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

namespace mmca {
namespace cuda {

/// Launch choices of the backward. The default takes the tensor-core kernels wherever they serve
/// (float16 / bfloat16, head dim <= 128 and a multiple of 8, 16-byte aligned rows, sm_80+, block 0
/// or 64) and the FFMA kernels otherwise, with the tile size picked by head dim and shared memory.
struct attention_backward_config {
    int block = 0;  ///< rows and keys per tile: 0 = automatic, 32 or 64 (64 needs D <= 128); 64 for tensor_cores
    backward_kernel kernel = backward_kernel::automatic;
};

namespace detail {

template <class DT, int DMAX, int BQ, int BK>
void launch_attention_backward(const attention_backward_params<DT>& params, std::int32_t num_tiles,
                               cudaStream_t stream) {
    using shape = bwd_shape<DMAX, BQ, BK>;
    const int smem = static_cast<int>(shape::smem_bytes);
    const attention_params<DT>& f = params.f;
    if (num_tiles > 0) {
        auto dq_kernel = attention_bwd_dq_kernel<DT, DMAX, BQ, BK>;
        MMCA_CUDA_CHECK(cudaFuncSetAttribute(dq_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
        MMCA_CUDA_LAUNCH(dq_kernel, dim3(static_cast<unsigned>(num_tiles), static_cast<unsigned>(f.q_heads)),
                         bwd_threads, smem, stream, params);
        MMCA_CUDA_CHECK(cudaGetLastError());
    }
    if (f.kv_len > 0 && f.batch > 0) {
        auto dkdv_kernel = attention_bwd_dkdv_kernel<DT, DMAX, BQ, BK>;
        MMCA_CUDA_CHECK(cudaFuncSetAttribute(dkdv_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
        const dim3 grid(static_cast<unsigned>(ceil_div(static_cast<std::int64_t>(f.kv_len), BK)),
                        static_cast<unsigned>(f.kv_heads), static_cast<unsigned>(f.batch));
        MMCA_CUDA_LAUNCH(dkdv_kernel, grid, bwd_threads, smem, stream, params);
        MMCA_CUDA_CHECK(cudaGetLastError());
    }
}

template <class DT, int DP>
void launch_attention_backward_mma(const attention_backward_params<DT>& params, std::int32_t num_tiles,
                                   cudaStream_t stream) {
    using shape = bwd_mma_shape<DT, DP>;
    const int smem = static_cast<int>(shape::smem_bytes);
    const attention_params<DT>& f = params.f;
    if (num_tiles > 0) {
        auto dq_kernel = attention_bwd_dq_mma_kernel<DT, DP>;
        MMCA_CUDA_CHECK(cudaFuncSetAttribute(dq_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
        MMCA_CUDA_LAUNCH(dq_kernel, dim3(static_cast<unsigned>(num_tiles), static_cast<unsigned>(f.q_heads)),
                         shape::threads, smem, stream, params);
        MMCA_CUDA_CHECK(cudaGetLastError());
    }
    if (f.kv_len > 0 && f.batch > 0) {
        auto dkdv_kernel = attention_bwd_dkdv_mma_kernel<DT, DP>;
        MMCA_CUDA_CHECK(cudaFuncSetAttribute(dkdv_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
        const dim3 grid(static_cast<unsigned>(ceil_div(static_cast<std::int64_t>(f.kv_len), shape::keys)),
                        static_cast<unsigned>(f.kv_heads), static_cast<unsigned>(f.batch));
        MMCA_CUDA_LAUNCH(dkdv_kernel, grid, shape::threads, smem, stream, params);
        MMCA_CUDA_CHECK(cudaGetLastError());
    }
}

/// Shared memory of the tensor-core backward for padded head dim dp (0 when no instance serves it).
template <class DT>
std::size_t backward_mma_smem_bytes(int dp) {
    if constexpr (sizeof(DT) != 2) {
        (void)dp;
        return 0;
    } else {
        switch (dp) {
            case 64: return bwd_mma_shape<DT, 64>::smem_bytes;
            case 80: return bwd_mma_shape<DT, 80>::smem_bytes;
            case 112: return bwd_mma_shape<DT, 112>::smem_bytes;
            case 128: return bwd_mma_shape<DT, 128>::smem_bytes;
            default: return 0;
        }
    }
}

/// Shared memory of the backward tiles for head dims up to dmax and `block` rows and keys.
inline std::size_t backward_smem_bytes(int dmax, int block) {
    if (dmax == 64) return bwd_shape<64, 64, 64>::smem_bytes;
    if (dmax == 128) return block == 64 ? bwd_shape<128, 64, 64>::smem_bytes : bwd_shape<128, 32, 32>::smem_bytes;
    return bwd_shape<256, 32, 32>::smem_bytes;
}

}  // namespace detail

/// Everything one backward call needs (device tensors; tokens in host memory).
template <class T>
struct attention_backward_arguments {
    tensor_ref<const T, 4> q, k, v;  ///< the forward's inputs
    tensor_ref<const T, 4> dout;     ///< (B, Hq, Lq, D) upstream gradient
    token_layout tokens;
    attention_options options;
    attention_stats_view stats;      ///< device float32, written by attention_forward_with_stats
    tensor_ref<T, 4> dq, dk, dv;     ///< outputs: q's, k's and v's shapes
};

/// The backward as an operator: plan once (initialize), launch many times (run). It owns the device
/// copies of its plan arrays and workspace; the tensors stay the caller's. Non-copyable, movable.
template <class T>
class attention_backward_operator {
public:
    using device_type = device_type_t<T>;

    /// Validates (throws mmca::invalid_argument naming the argument), plans on the host and uploads
    /// on `stream`; stream_ordered_buffers: allocate with cudaMallocAsync on `stream`.
    void initialize(const attention_backward_arguments<T>& a, const attention_backward_config& config = {},
                    cudaStream_t stream = nullptr, bool stream_ordered_buffers = false) {
        using DT = device_type;
        constexpr const char* where = "mmca::cuda::attention_backward";
        MMCA_CHECK_ARG(!a.dq.empty(), where, "dq", "no tensor", "a (B, Hq, Lq, D) device tensor");
        MMCA_CHECK_ARG(a.dq.shape == a.q.shape && a.dq.inner_contiguous(), where, "dq", a.dq.shape_text(),
                       "the shape of q " + a.q.shape_text() + " with a contiguous last dimension");
        const attention_problem problem = make_attention_problem<T>(where, detail::shape_view(a.q), a.k, a.v,
                                                                    a.tokens, a.options, detail::shape_view_mut(a.dq));
        MMCA_CHECK_ARG(!a.dout.empty(), where, "dout", "no tensor", "a (B, Hq, Lq, D) device tensor");
        MMCA_CHECK_ARG(a.dout.shape == a.q.shape && a.dout.inner_contiguous(), where, "dout", a.dout.shape_text(),
                       "the shape of q " + a.q.shape_text() + " with a contiguous last dimension");
        auto check_kv_grad = [&](const tensor_ref<T, 4>& grad, const char* name) {
            MMCA_CHECK_ARG(!grad.empty(), where, name, "no tensor", "a (B, Hkv, Lk, D) device tensor");
            MMCA_CHECK_ARG(grad.shape == a.k.shape && grad.inner_contiguous(), where, name, grad.shape_text(),
                           "the shape of k " + a.k.shape_text() + " with a contiguous last dimension");
        };
        check_kv_grad(a.dk, "dk");
        check_kv_grad(a.dv, "dv");
        MMCA_CHECK_ARG(problem.head_dim <= 256, where, "q", "head dim " + mmca::detail::to_text(problem.head_dim),
                       "a head dim of at most 256");
        MMCA_CHECK_ARG(config.block == 0 || config.block == 32 || (config.block == 64 && problem.head_dim <= 128),
                       where, "config.block", mmca::detail::to_text(config.block),
                       "0 (automatic), 32, or 64 with a head dim <= 128");
        check_attention_stats(where, problem, a.stats);
        detail::check_stats_layout(where, a.stats);
        detail::check_device_pointer(a.q.data, where, "q");
        detail::check_device_pointer(a.k.data, where, "k");
        detail::check_device_pointer(a.v.data, where, "v");
        detail::check_device_pointer(a.dout.data, where, "dout");
        detail::check_device_pointer(a.dq.data, where, "dq");
        detail::check_device_pointer(a.dk.data, where, "dk");
        detail::check_device_pointer(a.dv.data, where, "dv");

        const std::string unsupported =
            config.kernel != backward_kernel::ffma ? tensor_core_obstacle(a, problem) : std::string();
        MMCA_CHECK_ARG(config.kernel != backward_kernel::tensor_cores || unsupported.empty(), where, "config.kernel",
                       "'tensor_cores' (" + unsupported + ")", "'ffma' or 'automatic' for this call");
        MMCA_CHECK_ARG(config.kernel != backward_kernel::tensor_cores || config.block == 0 || config.block == 64, where,
                       "config.block", mmca::detail::to_text(config.block), "0 or 64 with the tensor-core kernels");
        // automatic: the tensor-core kernels wherever they serve (4.8-7.9x the FFMA kernels' speed on an
        // H200, docs/cuda.md), the FFMA kernels for float32, D > 128 and the rest.
        const bool tensor_cores = config.kernel == backward_kernel::tensor_cores ||
                                  (config.kernel == backward_kernel::automatic && unsupported.empty() &&
                                   (config.block == 0 || config.block == 64));
        kernel_ = tensor_cores ? backward_kernel::tensor_cores : backward_kernel::ffma;
        mma_dim_ = kernel_ == backward_kernel::tensor_cores ? detail::tiled_head_dim(problem.head_dim) : 0;

        dmax_ = problem.head_dim <= 64 ? 64 : problem.head_dim <= 128 ? 128 : 256;
        block_ = config.block;
        if (block_ == 0) {
            block_ = 64;
            if (dmax_ == 128 && detail::backward_smem_bytes(128, 64) >
                                    static_cast<std::size_t>(current_device_properties().max_shared_per_block))
                block_ = 32;
        }
        if (dmax_ == 64) block_ = 64;
        if (dmax_ == 256) block_ = 32;
        if (kernel_ == backward_kernel::tensor_cores) block_ = 64;

        plan_ = build_attention_plan(problem, block_);
        const std::int64_t Lk = problem.kv_len;
        std::vector<std::int32_t> self_rows(static_cast<std::size_t>(problem.batch * Lk), -1);
        for (const device_row_plan& r : plan_.rows)
            if (r.flags & plan_self_term) self_rows[static_cast<std::size_t>(r.batch * Lk + r.position)] = r.row;
        for (const device_fill_row& fr : plan_.fills)
            if (fr.source >= 0) self_rows[static_cast<std::size_t>(fr.batch * Lk + fr.source)] = fr.row;
        std::vector<device_tile> seq_tiles = plan_.tiles;
        std::stable_sort(seq_tiles.begin(), seq_tiles.end(), [](const device_tile& x, const device_tile& y) {
            return x.batch != y.batch ? x.batch < y.batch : x.first < y.first;
        });
        std::vector<std::int32_t> seq_begin(static_cast<std::size_t>(problem.batch + 1), 0);
        for (const device_tile& t : seq_tiles) ++seq_begin[static_cast<std::size_t>(t.batch) + 1];
        for (std::size_t b = 1; b < seq_begin.size(); ++b) seq_begin[b] += seq_begin[b - 1];

        const bool ordered = stream_ordered_buffers;
        upload(rows_, plan_.rows, stream, ordered);
        upload(fills_, plan_.fills, stream, ordered);
        upload(tiles_, plan_.tiles, stream, ordered);
        upload(seq_tiles_, seq_tiles, stream, ordered);
        upload(seq_begin_, seq_begin, stream, ordered);
        upload(codes_, plan_.key_codes, stream, ordered);
        upload(prefix_, plan_.type_prefix, stream, ordered);
        upload(seq_len_, plan_.seq_kv_len, stream, ordered);
        upload(self_rows_, self_rows, stream, ordered);
        const std::size_t term_bytes = plan_.rows.size() * static_cast<std::size_t>(problem.q_heads) * 2u * sizeof(float4);
        if (term_bytes > terms_.bytes()) {
            if (ordered)
                terms_.allocate(term_bytes, stream);
            else
                terms_.allocate(term_bytes);
        }

        params_ = {};
        detail::attention_params<DT>& f = params_.f;
        f.q = reinterpret_cast<const DT*>(a.q.data);
        f.k = reinterpret_cast<const DT*>(a.k.data);
        f.v = reinterpret_cast<const DT*>(a.v.data);
        params_.dout = reinterpret_cast<const DT*>(a.dout.data);
        params_.dq = reinterpret_cast<DT*>(a.dq.data);
        params_.dk = reinterpret_cast<DT*>(a.dk.data);
        params_.dv = reinterpret_cast<DT*>(a.dv.data);
        for (int d = 0; d < 3; ++d) {
            f.q_stride[d] = a.q.strides[d];
            f.k_stride[d] = a.k.strides[d];
            f.v_stride[d] = a.v.strides[d];
            params_.dout_stride[d] = a.dout.strides[d];
            params_.dq_stride[d] = a.dq.strides[d];
            params_.dk_stride[d] = a.dk.strides[d];
            params_.dv_stride[d] = a.dv.strides[d];
        }
        detail::set_problem_params(f, problem);
        detail::set_plan_params(f, plan_, rows_, fills_, tiles_, codes_, prefix_, seq_len_);
        params_.row_max = a.stats.row_max.data;
        params_.row_sum = a.stats.row_sum.data;
        params_.group_out = a.stats.group_out.data;
        params_.terms = terms_.as<float4>();
        params_.seq_tiles = seq_tiles_.as<device_tile>();
        params_.seq_tile_begin = seq_begin_.as<std::int32_t>();
        params_.self_rows = self_rows_.as<std::int32_t>();
        params_.scale = problem.scale;
        multiprocessors_ = std::max(1, current_device_properties().multiprocessors);
        initialized_ = true;
    }

    /// Launches the backward kernels on `stream` (asynchronous; launch errors throw).
    void run(cudaStream_t stream = nullptr) const {
        if (!initialized_)
            throw mmca::invalid_argument("mmca::cuda::attention_backward_operator::run", "this",
                                         "an operator never initialized", "initialize(args) before run()");
        const detail::attention_params<device_type>& f = params_.f;
        constexpr int warps = detail::bwd_threads / 32;
        auto blocks_for = [&](std::int64_t items) {
            return static_cast<unsigned>(std::min<std::int64_t>(detail::ceil_div(items, warps), 64LL * multiprocessors_));
        };
        if (f.num_rows > 0) {
            MMCA_CUDA_LAUNCH(detail::attention_bwd_terms_kernel<device_type>,
                             blocks_for(static_cast<std::int64_t>(f.num_rows) * f.q_heads), detail::bwd_threads, 0,
                             stream, params_);
            MMCA_CUDA_CHECK(cudaGetLastError());
        }
        if (f.num_fills > 0) {
            MMCA_CUDA_LAUNCH(detail::attention_bwd_zero_rows_kernel<device_type>,
                             blocks_for(static_cast<std::int64_t>(f.num_fills) * f.q_heads), detail::bwd_threads, 0,
                             stream, params_);
            MMCA_CUDA_CHECK(cudaGetLastError());
        }
        const std::int32_t num_tiles = f.num_tiles;
        if constexpr (sizeof(device_type) == 2) {
            if (kernel_ == backward_kernel::tensor_cores) {
                switch (mma_dim_) {
                    case 64: detail::launch_attention_backward_mma<device_type, 64>(params_, num_tiles, stream); break;
                    case 80: detail::launch_attention_backward_mma<device_type, 80>(params_, num_tiles, stream); break;
                    case 112: detail::launch_attention_backward_mma<device_type, 112>(params_, num_tiles, stream); break;
                    default: detail::launch_attention_backward_mma<device_type, 128>(params_, num_tiles, stream); break;
                }
                return;
            }
        }
        if (dmax_ == 64)
            detail::launch_attention_backward<device_type, 64, 64, 64>(params_, num_tiles, stream);
        else if (dmax_ == 128 && block_ == 64)
            detail::launch_attention_backward<device_type, 128, 64, 64>(params_, num_tiles, stream);
        else if (dmax_ == 128)
            detail::launch_attention_backward<device_type, 128, 32, 32>(params_, num_tiles, stream);
        else
            detail::launch_attention_backward<device_type, 256, 32, 32>(params_, num_tiles, stream);
    }

    /// Rows and keys per tile of the initialized call.
    int block() const { return block_; }
    /// The kernels of the initialized call (tensor_cores or ffma).
    backward_kernel kernel() const { return kernel_; }

    /// Empty when the tensor-core kernels can run this call; otherwise why not.
    static std::string tensor_core_obstacle(const attention_backward_arguments<T>& a,
                                            const attention_problem& problem) {
        if (sizeof(device_type) != 2) return "float32 inputs; the tensor-core kernels take float16 or bfloat16";
        const int dp = detail::tiled_head_dim(problem.head_dim);
        if (dp == 0 || problem.head_dim % 8 != 0)
            return "head dim " + mmca::detail::to_text(problem.head_dim) + "; they need at most 128, a multiple of 8";
        if (!detail::rows_aligned(a.q, 8) || !detail::rows_aligned(a.k, 8) || !detail::rows_aligned(a.v, 8) ||
            !detail::rows_aligned(a.dout, 8))
            return "rows of q, k, v or dout not 16-byte aligned";
        const device_properties props = current_device_properties();
        if (props.compute_capability < 80)
            return "compute capability " + mmca::detail::to_text(props.compute_capability) + "; they need 80 or more";
        if (detail::backward_mma_smem_bytes<device_type>(dp) > static_cast<std::size_t>(props.max_shared_per_block))
            return "not enough shared memory per block";
        return std::string();
    }
    /// The host plan of the initialized call.
    const attention_plan& plan() const { return plan_; }

private:
    attention_plan plan_;
    detail::attention_backward_params<device_type> params_{};
    int dmax_ = 0, block_ = 0, mma_dim_ = 0, multiprocessors_ = 1;
    backward_kernel kernel_ = backward_kernel::ffma;
    bool initialized_ = false;
    device_buffer rows_, fills_, tiles_, seq_tiles_, seq_begin_, codes_, prefix_, seq_len_, self_rows_, terms_;
};

/// dq (q's shape), dk and dv (k's shape) of attention for the upstream gradient dout, from the stats
/// that attention_forward_with_stats wrote for the same q, k, v, tokens and options. Every element
/// of dq, dk and dv is written. Throws mmca::invalid_argument (naming the argument, the value seen
/// and what was expected) before launching anything. Asynchronous; the plan buffers are
/// stream-ordered and freed behind the launches.
template <class T>
void attention_backward(tensor_ref<const T, 4> q, tensor_ref<const T, 4> k, tensor_ref<const T, 4> v,
                        tensor_ref<const T, 4> dout, const token_layout& tokens, const attention_options& options,
                        const attention_stats_view& stats, tensor_ref<T, 4> dq, tensor_ref<T, 4> dk,
                        tensor_ref<T, 4> dv, cudaStream_t stream = nullptr,
                        const attention_backward_config& config = {}) {
    attention_backward_operator<T> op;
    op.initialize(attention_backward_arguments<T>{q, k, v, dout, tokens, options, stats, dq, dk, dv}, config, stream,
                  true);
    op.run(stream);
}

}  // namespace cuda
}  // namespace mmca
