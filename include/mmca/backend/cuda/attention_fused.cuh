// mmca/backend/cuda/attention_fused.cuh - the CUDA attention backend: every variant of SPEC §2 as a
// fused forward pass on the GPU (compile with nvcc; templates only, nothing to link but cudart).
//
//   mmca::cuda::attention_forward<T>(q, k, v, tokens, options, out, stream)      one call
//   mmca::cuda::attention_operator<T>  can_implement(args) / initialize(args) / run(stream)
//
// T is the element type of q, k, v and out: float, mmca::float16 or mmca::bfloat16 (or __half /
// __nv_bfloat16); all arithmetic is float32. q, k, v and out are DEVICE tensor_refs, (B, Hq, Lq, D),
// (B, Hkv, Lk, D), (B, Hkv, Lk, D), (B, Hq, Lq, D), head dimension contiguous; `tokens` is the same
// token_layout the CPU entry points take, in HOST memory. The call is validated with
// make_attention_problem (so errors name the argument exactly as on the CPU), planned on the host
// with plan_row() (attention_plan.hpp), and the plan arrays are uploaded before the launch; the
// kernels then compute exactly the rows the CPU reference computes, without any (L, L) mask.
//
// Kernels (kernels/): the tiled kernel (64 rows x 64 keys per step, tensor cores for 16-bit types,
// float32 FFMA for float; D <= 128, 16-byte aligned rows, sm_80 or newer), the row kernel with
// optional key splits (decode steps, D up to 256, any alignment) and a fill kernel for rows without a
// softmax. attention_config::kernel picks one; `automatic` takes the tiled kernel when it applies
// and some sequence has more than 16 active rows.
#pragma once

#include "mmca/attention/problem.hpp"
#include "mmca/attention/stats.hpp"
#include "mmca/attention/types.hpp"
#include "mmca/backend/cuda/attention_plan.hpp"
#include "mmca/backend/cuda/common.cuh"
#include "mmca/backend/cuda/kernels/attention_params.cuh"
#include "mmca/backend/cuda/kernels/attention_rows.cuh"
#include "mmca/backend/cuda/kernels/attention_tiled.cuh"
#include "mmca/core/error.hpp"
#include "mmca/core/tensor.hpp"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <string>

namespace mmca {
namespace cuda {

/// Which kernel computes the active rows.
enum class attention_kernel : std::uint8_t { automatic, tiled, rows };

inline const char* to_string(attention_kernel k) {
    switch (k) {
        case attention_kernel::automatic: return "automatic";
        case attention_kernel::tiled: return "tiled";
        case attention_kernel::rows: return "rows";
    }
    return "unknown";
}

/// The order in which the tiled kernel's CTAs (one per tile and query head) are dispatched.
/// tile_major: the heaviest tiles of every head first (longest-first scheduling: nothing long
/// starts last). head_major: every tile of head 0 (heaviest first), then head 1, ...: the CTAs
/// resident at one time read the K/V of a few heads, which then stay in L2. automatic: head_major
/// from head_major_ctas_per_sm CTAs per multiprocessor on (large batches of long sequences, where
/// L2 reuse pays and the tail is short against the whole), tile_major below (docs/cuda.md).
enum class cta_order : std::uint8_t { automatic, tile_major, head_major };

inline const char* to_string(cta_order o) {
    switch (o) {
        case cta_order::automatic: return "automatic";
        case cta_order::tile_major: return "tile_major";
        case cta_order::head_major: return "head_major";
    }
    return "unknown";
}

/// cta_order::automatic takes head_major from this many CTAs per multiprocessor on (measured on an
/// H200 with D = 128: neutral or better from 48 on, up to 30% slower below about 32).
constexpr std::int64_t head_major_ctas_per_sm = 48;

/// Launch choices (the defaults are right for ordinary use; tests force each kernel).
struct attention_config {
    attention_kernel kernel = attention_kernel::automatic;
    int splits = 0;  ///< rows kernel: key splits per row; 0 = enough CTAs to fill the device
    cta_order order = cta_order::automatic;  ///< tiled kernel: dispatch order of its CTAs
};

/// Why an operator cannot take a call (a status, not an exception: see can_implement).
enum class status : std::uint8_t {
    success,
    invalid_argument,     ///< make_attention_problem (or a pointer check) refused the arguments
    unsupported_layout,   ///< the tiled kernel was asked for but the shape or alignment excludes it
    unsupported_device,   ///< the tiled kernel needs sm_80 or newer (or more shared memory)
    no_device,            ///< no CUDA device is present
};

inline const char* to_string(status s) {
    switch (s) {
        case status::success: return "success";
        case status::invalid_argument: return "invalid_argument";
        case status::unsupported_layout: return "unsupported_layout";
        case status::unsupported_device: return "unsupported_device";
        case status::no_device: return "no_device";
    }
    return "unknown";
}

/// Everything one attention call needs.
template <class T>
struct attention_arguments {
    tensor_ref<const T, 4> q;     ///< (B, Hq, Lq, D) device
    tensor_ref<const T, 4> k;     ///< (B, Hkv, Lk, D) device
    tensor_ref<const T, 4> v;     ///< (B, Hkv, Lk, D) device
    token_layout tokens;          ///< host arrays, as for mmca::attention_forward
    attention_options options;    ///< variant, visibility policy, scale (num_threads is ignored)
    tensor_ref<T, 4> out;         ///< (B, Hq, Lq, D) device
    /// Optional: device float32 views that receive what the backward needs (all three or none;
    /// contiguous; see mmca/attention/stats.hpp and mmca/backend/cuda/attention_backward.cuh).
    attention_stats stats{};
};

namespace detail {

constexpr int max_devices = 64;  // devices whose shared-memory opt-in is cached per kernel

/// tiled_launch_memory_for (kernels/attention_tiled.cuh) on the current device.
template <class D>
tiled_launch_memory tiled_memory(const attention_plan& plan, int dp) {
    const auto limit = static_cast<std::size_t>(current_device_properties().max_shared_per_block);
    return tiled_launch_memory_for<D>(plan, dp, limit);
}

template <class U, std::size_t N>
bool rows_aligned(const tensor_ref<U, N>& t, std::int64_t chunk) {
    if (reinterpret_cast<std::uintptr_t>(t.data) % 16u != 0u) return false;
    for (std::size_t d = 0; d + 1 < N; ++d)
        if (t.shape[d] > 1 && t.strides[d] % chunk != 0) return false;
    return true;
}

/// A float view with the shape and strides of a view of another element type: lets
/// make_attention_problem (whose q and out are float on the CPU side) check shapes of any type.
template <class U>
tensor_ref<const float, 4> shape_view(const tensor_ref<U, 4>& t) {
    return tensor_ref<const float, 4>(reinterpret_cast<const float*>(t.data), t.shape, t.strides);
}
template <class U>
tensor_ref<float, 4> shape_view_mut(const tensor_ref<U, 4>& t) {
    return tensor_ref<float, 4>(reinterpret_cast<float*>(t.data), t.shape, t.strides);
}

/// Throws when p is not memory the device can read (plain host memory).
inline void check_device_pointer(const void* p, const char* where, const char* argument) {
    cudaPointerAttributes attributes{};
    const cudaError_t code = cudaPointerGetAttributes(&attributes, p);
    if (code != cudaSuccess) {
        cudaGetLastError();
        throw invalid_argument(where, argument, "a pointer the CUDA runtime does not know",
                               "device (or managed) memory");
    }
    if (attributes.type == cudaMemoryTypeUnregistered || attributes.type == cudaMemoryTypeHost)
        throw invalid_argument(where, argument, "a host pointer", "device (or managed) memory");
}

/// The CUDA kernels index the stats arrays as contiguous (B, Hq, Lq, 2[, D]) device memory.
template <class S>
void check_stats_layout(const char* where, const basic_attention_stats<S>& st) {
    MMCA_CHECK_ARG(st.row_max.contiguous(), where, "row_max", "a strided view", "a contiguous tensor");
    MMCA_CHECK_ARG(st.row_sum.contiguous(), where, "row_sum", "a strided view", "a contiguous tensor");
    MMCA_CHECK_ARG(st.group_out.contiguous(), where, "group_out", "a strided view", "a contiguous tensor");
    check_device_pointer(st.row_max.data, where, "row_max");
    check_device_pointer(st.row_sum.data, where, "row_sum");
    check_device_pointer(st.group_out.data, where, "group_out");
}

template <class D, class T>
void fill_tensor_params(attention_params<D>& params, const attention_arguments<T>& a) {
    params.q = reinterpret_cast<const D*>(a.q.data);
    params.k = reinterpret_cast<const D*>(a.k.data);
    params.v = reinterpret_cast<const D*>(a.v.data);
    params.out = reinterpret_cast<D*>(a.out.data);
    for (int d = 0; d < 3; ++d) {
        params.q_stride[d] = a.q.strides[d];
        params.k_stride[d] = a.k.strides[d];
        params.v_stride[d] = a.v.strides[d];
        params.out_stride[d] = a.out.strides[d];
    }
}

/// The device copies of a plan's arrays (uploaded by the caller) in the kernel arguments.
template <class D>
void set_plan_params(attention_params<D>& params, const attention_plan& plan, const device_buffer& rows,
                     const device_buffer& fills, const device_buffer& tiles, const device_buffer& key_codes,
                     const device_buffer& prefix, const device_buffer& seq_len) {
    set_plan_arrays(params, plan, rows.as<device_row_plan>(), fills.as<device_fill_row>(), tiles.as<device_tile>(),
                    key_codes.as<std::int32_t>(), prefix.as<std::int32_t>(), seq_len.as<std::int32_t>());
}

}  // namespace detail

/// The fused CUDA attention as an operator: plan once (initialize), launch many times (run).
/// The operator owns the device copies of the plan arrays; the tensors stay the caller's and must
/// outlive every run(). Non-copyable, movable.
template <class T>
class attention_operator {
public:
    using element_type = T;
    using device_type = device_type_t<T>;

    /// success when initialize(args, config) would accept the call; otherwise why not.
    static status can_implement(const attention_arguments<T>& args, const attention_config& config = {}) {
        if (!device_available()) return status::no_device;
        attention_problem problem;
        try {
            problem = validate(args);
        } catch (const mmca::invalid_argument&) {
            return status::invalid_argument;
        }
        if (config.kernel == attention_kernel::tiled) return tiled_status(args, problem);
        return status::success;
    }

    /// Validates (throws mmca::invalid_argument naming the argument), plans on the host and uploads
    /// the plan on `stream`. Throws cuda_error when the device refuses an allocation or copy.
    void initialize(const attention_arguments<T>& args, const attention_config& config = {},
                    cudaStream_t stream = nullptr, bool stream_ordered_buffers = false) {
        const attention_problem problem = validate(args);
        const char* where = "mmca::cuda::attention_forward";
        const status tiled = tiled_status(args, problem);
        if (config.kernel == attention_kernel::tiled && tiled != status::success)
            throw mmca::invalid_argument(where, "config.kernel",
                                         std::string("'tiled' (") + to_string(tiled) + ")",
                                         "'rows' or 'automatic' for this shape, alignment or device");
        plan_ = build_attention_plan(problem, detail::tiled_rows);
        kernel_ = config.kernel;
        if (kernel_ == attention_kernel::automatic)
            kernel_ = tiled == status::success && plan_.max_active_rows > 16 ? attention_kernel::tiled
                                                                             : attention_kernel::rows;
        tiled_dim_ = detail::tiled_head_dim(problem.head_dim);
        multiprocessors_ = std::max(1, current_device_properties().multiprocessors);

        params_ = {};
        detail::fill_tensor_params(params_, args);
        detail::set_problem_params(params_, problem);

        const bool ordered = stream_ordered_buffers;
        upload(rows_, plan_.rows, stream, ordered);
        upload(fills_, plan_.fills, stream, ordered);
        upload(key_codes_, plan_.key_codes, stream, ordered);
        upload(prefix_, plan_.type_prefix, stream, ordered);
        upload(seq_len_, plan_.seq_kv_len, stream, ordered);
        if (kernel_ == attention_kernel::tiled) upload(tiles_, plan_.tiles, stream, ordered);
        detail::set_plan_params(params_, plan_, rows_, fills_, tiles_, key_codes_, prefix_, seq_len_);
        if (!args.stats.row_max.empty()) {
            params_.stat_max = args.stats.row_max.data;
            params_.stat_sum = args.stats.row_sum.data;
            params_.stat_out = args.stats.group_out.data;
        }

        params_.splits = 1;
        order_ = cta_order::tile_major;
        if (kernel_ == attention_kernel::tiled) {
            const detail::tiled_launch_memory memory = detail::tiled_memory<device_type>(plan_, tiled_dim_);
            params_.bound_entries = memory.bound_entries;
            tiled_smem_ = memory.smem;
            tiled_smem_limit_ = memory.smem_limit;
            const std::int64_t ctas = static_cast<std::int64_t>(plan_.tiles.size()) * problem.q_heads;
            order_ = config.order;
            if (order_ == cta_order::automatic)
                order_ =
                    ctas >= head_major_ctas_per_sm * multiprocessors_ ? cta_order::head_major : cta_order::tile_major;
            params_.head_major = order_ == cta_order::head_major ? 1 : 0;
        }
        if (kernel_ == attention_kernel::rows && !plan_.rows.empty()) {
            int splits = config.splits;
            if (splits <= 0) {
                // Enough CTAs for two waves of the device, but no slice under 128 keys.
                const device_properties props = current_device_properties();
                const std::int64_t ctas = static_cast<std::int64_t>(plan_.rows.size()) * problem.q_heads;
                const std::int64_t mean_keys = plan_.active_keys / static_cast<std::int64_t>(plan_.rows.size());
                const std::int64_t want = detail::ceil_div(2 * props.multiprocessors, ctas);
                splits = static_cast<int>(std::max<std::int64_t>(1, std::min<std::int64_t>({want, mean_keys / 128, 32})));
            }
            params_.splits = std::max(1, std::min(splits, 64));
            if (params_.splits > 1) {
                const std::size_t floats = plan_.rows.size() * static_cast<std::size_t>(problem.q_heads) *
                                           static_cast<std::size_t>(params_.splits) * 2u *
                                           static_cast<std::size_t>(problem.head_dim + 2);
                if (partial_.bytes() < floats * sizeof(float)) {
                    if (ordered)
                        partial_.allocate(floats * sizeof(float), stream);
                    else
                        partial_.allocate(floats * sizeof(float));
                }
                params_.partial = partial_.as<float>();
            }
        }
        initialized_ = true;
    }

    /// Launches the kernels of the initialized call on `stream` (asynchronous; launch errors throw).
    void run(cudaStream_t stream = nullptr) const {
        if (!initialized_)
            throw mmca::invalid_argument("mmca::cuda::attention_operator::run", "this", "an operator never initialized",
                                         "initialize(args) before run()");
        const int Hq = params_.q_heads;
        if (params_.num_fills > 0) {
            constexpr int warps = detail::fill_kernel_threads / 32;
            const std::int64_t items = static_cast<std::int64_t>(params_.num_fills) * Hq;
            const std::int64_t blocks = std::min<std::int64_t>(detail::ceil_div(items, warps), 64LL * multiprocessors_);
            MMCA_CUDA_LAUNCH(detail::attention_fill_kernel<device_type>, static_cast<unsigned>(blocks),
                             detail::fill_kernel_threads, 0, stream, params_);
            MMCA_CUDA_CHECK(cudaGetLastError());
        }
        if (params_.num_rows == 0) return;
        if (kernel_ == attention_kernel::tiled) {
            switch (tiled_dim_) {
                case 64: launch_tiled<64>(stream); break;
                case 80: launch_tiled<80>(stream); break;
                case 112: launch_tiled<112>(stream); break;
                default: launch_tiled<128>(stream); break;
            }
        } else {
            const dim3 grid(params_.num_rows, Hq, params_.splits);
            if (params_.head_dim <= 64)
                MMCA_CUDA_LAUNCH((detail::attention_rows_kernel<device_type, 4>), grid, detail::rows_kernel_threads, 0,
                                 stream, params_);
            else if (params_.head_dim <= 128)
                MMCA_CUDA_LAUNCH((detail::attention_rows_kernel<device_type, 8>), grid, detail::rows_kernel_threads, 0,
                                 stream, params_);
            else
                MMCA_CUDA_LAUNCH((detail::attention_rows_kernel<device_type, 16>), grid, detail::rows_kernel_threads, 0,
                                 stream, params_);
            MMCA_CUDA_CHECK(cudaGetLastError());
            if (params_.splits > 1) {
                MMCA_CUDA_LAUNCH(detail::attention_combine_kernel<device_type>, dim3(params_.num_rows, Hq), 128, 0,
                                 stream, params_);
                MMCA_CUDA_CHECK(cudaGetLastError());
            }
        }
    }

    /// The kernel run() launches for the active rows (after initialize).
    attention_kernel kernel() const { return kernel_; }
    /// Key splits of the rows kernel (1 for the tiled kernel).
    int splits() const { return params_.splits; }
    /// The tiled kernel's CTA order of the initialized call (tile_major for the rows kernel).
    cta_order order() const { return order_; }
    /// The host plan of the initialized call.
    const attention_plan& plan() const { return plan_; }

private:
    static attention_problem validate(const attention_arguments<T>& a) {
        const char* where = "mmca::cuda::attention_forward";
        MMCA_CHECK_ARG(!a.out.empty(), where, "out", "no tensor", "a (B, Hq, Lq, D) device tensor");
        const attention_problem problem =
            make_attention_problem<T>(where, detail::shape_view(a.q), a.k, a.v, a.tokens, a.options,
                                      detail::shape_view_mut(a.out));
        detail::check_device_pointer(a.q.data, where, "q");
        detail::check_device_pointer(a.k.data, where, "k");
        detail::check_device_pointer(a.v.data, where, "v");
        detail::check_device_pointer(a.out.data, where, "out");
        const attention_stats& st = a.stats;
        if (!st.row_max.empty() || !st.row_sum.empty() || !st.group_out.empty()) {
            check_attention_stats(where, problem, st);
            detail::check_stats_layout(where, st);
        }
        return problem;
    }

    static status tiled_status(const attention_arguments<T>& a, const attention_problem& problem) {
        const int dp = detail::tiled_head_dim(problem.head_dim);
        constexpr std::int64_t chunk = 16 / static_cast<std::int64_t>(sizeof(device_type));
        if (dp == 0 || problem.head_dim % chunk != 0) return status::unsupported_layout;
        if (!detail::rows_aligned(a.q, chunk) || !detail::rows_aligned(a.k, chunk) ||
            !detail::rows_aligned(a.v, chunk) || !detail::rows_aligned(a.out, chunk))
            return status::unsupported_layout;
        const device_properties props = current_device_properties();
        if (props.compute_capability < 80) return status::unsupported_device;
        if (detail::tiled_smem_bytes<device_type>(dp) > static_cast<std::size_t>(props.max_shared_per_block))
            return status::unsupported_device;
        return status::success;
    }

    template <int DP>
    void launch_tiled(cudaStream_t stream) const {
        if (params_.stat_max != nullptr)
            launch_tiled_instance<DP, true>(stream);
        else
            launch_tiled_instance<DP, false>(stream);
    }

    template <int DP, bool STATS>
    void launch_tiled_instance(cudaStream_t stream) const {
        using shape = detail::tiled_shape<device_type, DP>;
        auto kernel = detail::attention_tiled_kernel<device_type, DP, STATS>;
        // The shared-memory opt-in is a per-device attribute of the kernel. It is set once per device
        // to the most any launch of this instance uses there (the base plus the largest boundary
        // table, within the device's limit), a value that does not depend on the call.
        static std::atomic<bool> opted_in[detail::max_devices] = {};
        int device = 0;
        MMCA_CUDA_CHECK(cudaGetDevice(&device));
        const bool cached = device < detail::max_devices;
        if (!cached || !opted_in[device].load(std::memory_order_acquire)) {
            MMCA_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                                 static_cast<int>(tiled_smem_limit_)));
            if (cached) opted_in[device].store(true, std::memory_order_release);
        }
        const std::int64_t blocks = static_cast<std::int64_t>(params_.num_tiles) * params_.q_heads;
        MMCA_CUDA_LAUNCH(kernel, static_cast<unsigned>(blocks), shape::threads, tiled_smem_, stream, params_);
        MMCA_CUDA_CHECK(cudaGetLastError());
    }

    attention_plan plan_;
    detail::attention_params<device_type> params_{};
    cta_order order_ = cta_order::tile_major;
    attention_kernel kernel_ = attention_kernel::automatic;
    int tiled_dim_ = 0;
    bool initialized_ = false;
    std::size_t tiled_smem_ = 0;        // dynamic shared memory of the tiled launch, bytes
    std::size_t tiled_smem_limit_ = 0;  // the kernel's opt-in limit on this device, bytes
    int multiprocessors_ = 1;
    device_buffer rows_, fills_, tiles_, key_codes_, prefix_, seq_len_, partial_;
};

/// Computes attention of the variant in `options` into out, on `stream` (asynchronous: the call
/// returns after the launches; its plan buffers are stream-ordered and freed behind them).
/// Throws mmca::invalid_argument before launching anything when the arguments are not valid.
template <class T>
void attention_forward(tensor_ref<const T, 4> q, tensor_ref<const T, 4> k, tensor_ref<const T, 4> v,
                       const token_layout& tokens, const attention_options& options, tensor_ref<T, 4> out,
                       cudaStream_t stream = nullptr, const attention_config& config = {}) {
    attention_operator<T> op;
    op.initialize(attention_arguments<T>{q, k, v, tokens, options, out}, config, stream, true);
    op.run(stream);
}

/// attention_forward that also writes the statistics the backward needs into `stats` (device
/// float32, contiguous: row_max and row_sum (B, Hq, Lq, 2), group_out (B, Hq, Lq, 2, D)).
template <class T>
void attention_forward_with_stats(tensor_ref<const T, 4> q, tensor_ref<const T, 4> k, tensor_ref<const T, 4> v,
                                  const token_layout& tokens, const attention_options& options, tensor_ref<T, 4> out,
                                  const attention_stats& stats, cudaStream_t stream = nullptr,
                                  const attention_config& config = {}) {
    MMCA_CHECK_ARG(!stats.row_max.empty(), "mmca::cuda::attention_forward_with_stats", "row_max", "no tensor",
                   "a (B, Hq, Lq, 2) float32 device tensor");
    attention_operator<T> op;
    op.initialize(attention_arguments<T>{q, k, v, tokens, options, out, stats}, config, stream, true);
    op.run(stream);
}

}  // namespace cuda
}  // namespace mmca
