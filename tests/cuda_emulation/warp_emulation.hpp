// tests/cuda_emulation/warp_emulation.hpp - runs mmca's CUDA kernels on the CPU, compiled by the
// host compiler, with the warp-level behaviour of the GPU: ldmatrix and mma.sync m16n8k16 fragment
// layouts, shuffles, ballots, CTA barriers and (deferred) cp.async copies.
//
// Include this header BEFORE any mmca CUDA header. It defines MMCA_CUDA_WARP_EMULATION (so that
// kernels/mma_sm80.cuh leaves out its PTX versions and MMCA_CUDA_DYNAMIC_SHARED becomes a pointer
// to the emulated dynamic shared memory), maps the CUDA keywords and built-in variables onto the
// emulator, and provides host versions of every warp-level function the kernels call.
//
// mmca's launches (MMCA_CUDA_LAUNCH, mmca/backend/cuda/launch.cuh) call emulate_launch_on() under
// emulation; emulated_runtime.cpp supplies the CUDA runtime and cuBLAS calls of the host code.
//
// Execution model: emulate_launch() runs the CTAs of the grid one after the other (blockIdx z, y,
// x order). Each thread of a CTA is a fiber with its own stack; all fibers run on the calling OS
// thread and switch only at barriers, so everything between two barriers runs without interruption.
//   - __syncthreads*() is a CTA barrier: it opens when every thread that has not exited arrives.
//   - A warp-collective call (shuffle, ballot, ldmatrix, mma) is two warp barriers over the lanes of
//     its mask: each lane deposits its operand, waits until every lane of the mask has arrived at
//     the same collective with the same mask, computes its own result from all deposits, and waits
//     again (so the deposits stay valid while the other lanes read them). Lanes of one warp with
//     disjoint masks (e.g. two half-warp teams) form independent barriers.
//   - When no thread can proceed (e.g. a collective reached by only half of its mask while the other
//     half waits at __syncthreads) the launch throws emulation_error naming where every thread
//     waits; it never hangs. A lane that exits while others of its mask wait for it is an error too.
//   - cp.async copies snapshot their source at issue time and land in shared memory only at the
//     cp_async_wait<N>() that retires their group (or when the thread exits), so a kernel that reads
//     a buffer before waiting for its copy reads the poison below.
//   - Dynamic shared memory is a fresh 16-byte aligned buffer per CTA filled with 0xFF bytes (NaN as
//     float, __half and __nv_bfloat16), so reads of never-written shared memory show up as NaN.
//   - `__shared__` becomes `static`: static shared arrays are function statics shared by all the
//     fibers of the CTA (and kept between CTAs, which run one at a time).
// One emulated launch at a time per process (static shared arrays are process-wide).
#pragma once

#define MMCA_CUDA_WARP_EMULATION 1

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <sys/mman.h>
#include <unistd.h>

#if !defined(__x86_64__) || defined(MMCA_CUDA_EMULATION_UCONTEXT)
#include <ucontext.h>
#define MMCA_CUDA_EMULATION_FAST_SWITCH 0
#else
#define MMCA_CUDA_EMULATION_FAST_SWITCH 1
#endif

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <sstream>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

// ---------------------------------------------------------------------------------------------
// CUDA keywords for host compilation. cuda_runtime.h (crt/host_defines.h) has already made
// __host__, __device__, __global__ and __shared__ empty and __forceinline__ an always_inline
// inline for the host compiler; only __shared__ and __launch_bounds__ need a host meaning here.
// ---------------------------------------------------------------------------------------------
#undef __shared__
#define __shared__ static
// Kernels say `#pragma unroll`, which the host compiler does not know: translation units that
// include this header are compiled with -Wno-unknown-pragmas (a diagnostic pragma here does not
// reach the preprocessor's warning in GCC 12).
#ifndef __launch_bounds__
#define __launch_bounds__(...)
#endif

namespace mmca {
namespace cuda {
namespace emulation {

/// A kernel did something the GPU would not run as written (deadlock, a lane missing from a
/// collective, a misaligned ldmatrix row, __trap(), ...), or a launch was ill-formed.
class emulation_error : public std::runtime_error {
public:
    using std::runtime_error::runtime_error;
};

namespace detail {

constexpr int warp_lanes = 32;
constexpr std::size_t fiber_stack_bytes = 512u * 1024u;
/// The largest dynamic shared memory one CTA may opt in to on sm_90 (227 KiB).
constexpr std::size_t max_dynamic_shared_bytes = 232448u;
constexpr int max_block_threads = 1024;

// ---------------------------------------------------------------------------------------------
// Context switching: a few instructions on x86-64 (callee-saved registers, stack pointer and the
// floating-point control words), ucontext elsewhere (or with MMCA_CUDA_EMULATION_UCONTEXT).
// ---------------------------------------------------------------------------------------------
#if MMCA_CUDA_EMULATION_FAST_SWITCH

extern "C" void mmca_cuda_emulation_switch(void** save_sp, void* load_sp);
extern "C" void mmca_cuda_emulation_fiber_start();

// Weak symbols: every translation unit that includes this header emits the same two functions.
// mmca_cuda_emulation_switch pushes the callee-saved registers and the MXCSR / x87 control words on
// the current stack, stores the stack pointer to *save_sp and pops the same record from load_sp.
// mmca_cuda_emulation_fiber_start is where a new fiber's first switch returns to: it calls the
// entry function in r13 with the argument in r12 (set up by make_context).
asm(R"(
    .pushsection .text
    .weak mmca_cuda_emulation_switch
    .type mmca_cuda_emulation_switch, @function
mmca_cuda_emulation_switch:
    .cfi_startproc
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    subq $8, %rsp
    stmxcsr (%rsp)
    fnstcw 4(%rsp)
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    ldmxcsr (%rsp)
    fldcw 4(%rsp)
    addq $8, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .cfi_endproc
    .size mmca_cuda_emulation_switch, .-mmca_cuda_emulation_switch
    .weak mmca_cuda_emulation_fiber_start
    .type mmca_cuda_emulation_fiber_start, @function
mmca_cuda_emulation_fiber_start:
    .cfi_startproc
    .cfi_undefined rip
    movq %r12, %rdi
    callq *%r13
    ud2
    .cfi_endproc
    .size mmca_cuda_emulation_fiber_start, .-mmca_cuda_emulation_fiber_start
    .popsection
)");

struct machine_context {
    void* sp = nullptr;
};

inline void switch_context(machine_context& from, const machine_context& to) {
    mmca_cuda_emulation_switch(&from.sp, to.sp);
}

/// Prepares `c` so that the first switch to it calls entry(arg) on the given stack.
inline void make_context(machine_context& c, unsigned char* stack, std::size_t bytes, void (*entry)(void*),
                         void* arg) {
    auto top = reinterpret_cast<std::uintptr_t>(stack + bytes) & ~static_cast<std::uintptr_t>(15);
    auto* frame = reinterpret_cast<std::uint64_t*>(top - 10 * sizeof(std::uint64_t));  // 16-byte aligned
    frame[0] = 0x1F80u | (static_cast<std::uint64_t>(0x037Fu) << 32);  // default MXCSR, x87 control word
    frame[1] = 0;                                                     // r15
    frame[2] = 0;                                                     // r14
    frame[3] = reinterpret_cast<std::uint64_t>(entry);                // r13
    frame[4] = reinterpret_cast<std::uint64_t>(arg);                  // r12
    frame[5] = 0;                                                     // rbx
    frame[6] = 0;                                                     // rbp
    frame[7] = reinterpret_cast<std::uint64_t>(&mmca_cuda_emulation_fiber_start);  // return address
    frame[8] = 0;
    frame[9] = 0;
    c.sp = frame;  // after the switch returns, rsp = frame + 8 words: 16-byte aligned before the call
}

#else  // ucontext

struct machine_context {
    ucontext_t uc{};
};

inline void switch_context(machine_context& from, const machine_context& to) {
    if (swapcontext(&from.uc, &to.uc) != 0) throw emulation_error("mmca warp emulation: swapcontext failed");
}

inline void ucontext_entry(unsigned hi, unsigned lo, unsigned fhi, unsigned flo) {
    const auto arg = (static_cast<std::uintptr_t>(hi) << 32) | lo;
    const auto fn = (static_cast<std::uintptr_t>(fhi) << 32) | flo;
    reinterpret_cast<void (*)(void*)>(fn)(reinterpret_cast<void*>(arg));
}

inline void make_context(machine_context& c, unsigned char* stack, std::size_t bytes, void (*entry)(void*),
                         void* arg) {
    if (getcontext(&c.uc) != 0) throw emulation_error("mmca warp emulation: getcontext failed");
    c.uc.uc_stack.ss_sp = stack;
    c.uc.uc_stack.ss_size = bytes;
    c.uc.uc_link = nullptr;
    const auto a = reinterpret_cast<std::uintptr_t>(arg);
    const auto f = reinterpret_cast<std::uintptr_t>(entry);
    makecontext(&c.uc, reinterpret_cast<void (*)()>(&ucontext_entry), 4, static_cast<unsigned>(a >> 32),
                static_cast<unsigned>(a & 0xffffffffu), static_cast<unsigned>(f >> 32),
                static_cast<unsigned>(f & 0xffffffffu));
}

#endif

// ---------------------------------------------------------------------------------------------
// Fibers and the state of the running launch.
// ---------------------------------------------------------------------------------------------

enum class fiber_state : std::uint8_t { ready, at_block_barrier, at_warp_barrier, finished };

/// One cp.async copy: its source bytes (read at issue time) and where they land.
struct pending_copy {
    void* dst = nullptr;
    std::uint32_t bytes = 0;
    alignas(16) unsigned char data[16] = {};
};

struct fiber {
    machine_context context;
    unsigned char* stack = nullptr;  // fiber_stack_bytes usable, a guard page below
    uint3 thread_index{};
    int linear = 0;  // thread index in the CTA (x fastest)
    fiber_state state = fiber_state::finished;
    // The warp barrier this fiber waits at (state at_warp_barrier).
    unsigned warp_mask = 0;
    const char* warp_op = nullptr;
    // The operand of the current collective, read by the other lanes of the mask.
    alignas(16) unsigned char deposit[64] = {};
    // cp.async: copies issued, and the end (index into copies) of every committed group.
    std::vector<pending_copy> copies;
    std::vector<std::size_t> group_ends;
};

/// Stacks are mapped once and reused by every launch (a PROT_NONE page below each catches overflow).
class stack_pool {
public:
    stack_pool() = default;
    stack_pool(const stack_pool&) = delete;
    stack_pool& operator=(const stack_pool&) = delete;
    ~stack_pool() {
        for (unsigned char* base : mappings_) munmap(base, mapping_bytes());
    }
    unsigned char* stack(std::size_t index) {
        while (mappings_.size() <= index) {
            void* p = mmap(nullptr, mapping_bytes(), PROT_READ | PROT_WRITE,
                           MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
            if (p == MAP_FAILED) throw emulation_error("mmca warp emulation: cannot map a fiber stack");
            auto* base = static_cast<unsigned char*>(p);
            mprotect(base, page(), PROT_NONE);
            mappings_.push_back(base);
        }
        return mappings_[index] + page();
    }

private:
    static std::size_t page() { return static_cast<std::size_t>(sysconf(_SC_PAGESIZE)); }
    static std::size_t mapping_bytes() { return fiber_stack_bytes + page(); }
    std::vector<unsigned char*> mappings_;
};

struct launch_state {
    bool active = false;
    dim3 grid_dim{}, block_dim{};
    uint3 block_index{};
    int threads = 0;
    std::vector<fiber> fibers;
    fiber* current = nullptr;
    machine_context scheduler;
    void (*body)(const void*) = nullptr;  // runs the kernel for the current fiber
    const void* body_arg = nullptr;
    // Dynamic shared memory of the running CTA.
    std::vector<unsigned char> shared_storage;
    unsigned char* dynamic_shared = nullptr;
    std::size_t dynamic_shared_bytes = 0;
    // CTA barrier: arrivals, and the reductions of __syncthreads_or / _and / _count.
    int block_arrived = 0;
    int finished = 0;
    int reduce_or = 0, reduce_and = 1, reduce_count = 0;
    int result_or = 0, result_and = 1, result_count = 0;
    // The first error raised inside a fiber (the launch stops at it).
    bool failed = false;
    std::string error;
    stack_pool stacks;
};

inline launch_state& state() {
    static launch_state s;
    return s;
}

inline std::string format_index(const uint3& i) {
    return "(" + std::to_string(i.x) + ", " + std::to_string(i.y) + ", " + std::to_string(i.z) + ")";
}

inline std::string hex(unsigned mask) {
    char buf[16];
    std::snprintf(buf, sizeof buf, "0x%08x", mask);
    return buf;
}

/// The running fiber (only valid inside an emulated kernel).
inline fiber& self() {
    launch_state& s = state();
    if (s.current == nullptr)
        throw emulation_error("mmca warp emulation: a device built-in was used outside emulate_launch");
    return *s.current;
}

/// Throws from inside a kernel: the message names the CTA and thread.
[[noreturn]] inline void fail(const std::string& what) {
    launch_state& s = state();
    std::string where = "mmca warp emulation: block " + format_index(s.block_index);
    if (s.current != nullptr) where += " thread " + format_index(s.current->thread_index);
    throw emulation_error(where + ": " + what);
}

/// Switches from the running fiber back to the scheduler (which resumes it once it is ready).
inline void yield() {
    launch_state& s = state();
    fiber& f = *s.current;
    switch_context(f.context, s.scheduler);
}

/// Lands the copies of a fiber's committed groups except the `keep` most recent ones (keep < 0:
/// every copy, committed or not).
inline void retire_copies(fiber& f, int keep) {
    std::size_t end = 0;
    if (keep < 0) {
        end = f.copies.size();
        f.group_ends.clear();
    } else {
        const std::size_t groups = f.group_ends.size();
        if (groups <= static_cast<std::size_t>(keep)) return;
        const std::size_t retire = groups - static_cast<std::size_t>(keep);
        end = f.group_ends[retire - 1];
        f.group_ends.erase(f.group_ends.begin(), f.group_ends.begin() + static_cast<std::ptrdiff_t>(retire));
        for (std::size_t& e : f.group_ends) e -= end;
    }
    for (std::size_t i = 0; i < end; ++i) std::memcpy(f.copies[i].dst, f.copies[i].data, f.copies[i].bytes);
    f.copies.erase(f.copies.begin(), f.copies.begin() + static_cast<std::ptrdiff_t>(end));
}

// ---------------------------------------------------------------------------------------------
// Barriers.
// ---------------------------------------------------------------------------------------------

inline void release_block_barrier(launch_state& s) {
    s.result_or = s.reduce_or;
    s.result_and = s.reduce_and;
    s.result_count = s.reduce_count;
    s.reduce_or = 0;
    s.reduce_and = 1;
    s.reduce_count = 0;
    s.block_arrived = 0;
    for (int t = 0; t < s.threads; ++t) {
        fiber& f = s.fibers[static_cast<std::size_t>(t)];
        if (f.state == fiber_state::at_block_barrier) f.state = fiber_state::ready;
    }
}

/// __syncthreads with a predicate; the three reductions of the barrier are left in result_*.
inline void block_barrier(int predicate) {
    launch_state& s = state();
    fiber& f = self();
    f.state = fiber_state::at_block_barrier;
    ++s.block_arrived;
    if (predicate != 0) {
        s.reduce_or = 1;
        ++s.reduce_count;
    } else {
        s.reduce_and = 0;
    }
    if (s.block_arrived + s.finished == s.threads)
        release_block_barrier(s);
    else
        yield();
}

inline int lane_of(const fiber& f) { return f.linear % warp_lanes; }

inline fiber& lane_fiber(const fiber& f, int lane) {
    return state().fibers[static_cast<std::size_t>(f.linear - lane_of(f) + lane)];
}

/// Checks a collective's mask for the calling lane: it must hold the lane and only lanes that exist.
inline void check_mask(const char* op, unsigned mask) {
    const fiber& f = self();
    const int lane = lane_of(f);
    if (((mask >> lane) & 1u) == 0u)
        fail(std::string(op) + ": mask " + hex(mask) + " does not hold the calling lane " + std::to_string(lane));
    const int warp_base = f.linear - lane;
    const int lanes_here = std::min(warp_lanes, state().threads - warp_base);
    if (lanes_here < warp_lanes && (mask >> lanes_here) != 0u)
        fail(std::string(op) + ": mask " + hex(mask) + " names lanes past the last thread of the block");
}

/// Waits until every lane of `mask` waits at a warp barrier with the same mask and operation.
inline void warp_barrier(const char* op, unsigned mask) {
    fiber& me = self();
    me.state = fiber_state::at_warp_barrier;
    me.warp_mask = mask;
    me.warp_op = op;
    for (int lane = 0; lane < warp_lanes; ++lane) {
        if (((mask >> lane) & 1u) == 0u) continue;
        const fiber& other = lane_fiber(me, lane);
        if (other.state == fiber_state::finished)
            fail(std::string(op) + " (mask " + hex(mask) + "): lane " + std::to_string(lane) + " has already exited");
        if (other.state != fiber_state::at_warp_barrier || other.warp_mask != mask) {
            yield();  // the lane that completes the barrier makes this one ready
            return;
        }
    }
    // Every lane of the mask is here: the same collective?
    for (int lane = 0; lane < warp_lanes; ++lane) {
        if (((mask >> lane) & 1u) == 0u) continue;
        const fiber& other = lane_fiber(me, lane);
        if (std::strcmp(other.warp_op, op) != 0)
            fail(std::string("lanes of one mask (") + hex(mask) + ") meet at different collectives: " + op +
                 " and " + other.warp_op + " (lane " + std::to_string(lane) + ")");
    }
    for (int lane = 0; lane < warp_lanes; ++lane)
        if ((mask >> lane) & 1u) lane_fiber(me, lane).state = fiber_state::ready;
}

/// One warp collective: deposit, barrier, compute this lane's result from every deposit, barrier.
template <class Operand, class Compute>
auto warp_collective(const char* op, unsigned mask, const Operand& operand, Compute compute) {
    static_assert(std::is_trivially_copyable_v<Operand> && sizeof(Operand) <= sizeof(fiber::deposit),
                  "warp collective operand too large");
    check_mask(op, mask);
    fiber& me = self();
    std::memcpy(me.deposit, &operand, sizeof(Operand));
    warp_barrier(op, mask);
    auto deposit_of = [&me](int lane) {
        Operand value;
        std::memcpy(&value, lane_fiber(me, lane).deposit, sizeof(Operand));
        return value;
    };
    auto result = compute(lane_of(me), deposit_of);
    warp_barrier(op, mask);
    return result;
}

// ---------------------------------------------------------------------------------------------
// The scheduler.
// ---------------------------------------------------------------------------------------------

inline void fiber_main(void* arg) {
    launch_state& s = *static_cast<launch_state*>(arg);
    try {
        s.body(s.body_arg);
    } catch (const std::exception& e) {
        if (!s.failed) {
            s.failed = true;
            const std::string what = e.what();
            s.error = what.rfind("mmca warp emulation", 0) == 0
                          ? what
                          : "mmca warp emulation: block " + format_index(s.block_index) + " thread " +
                                format_index(s.current->thread_index) + ": " + what;
        }
    } catch (...) {
        if (!s.failed) {
            s.failed = true;
            s.error = "mmca warp emulation: block " + format_index(s.block_index) + " thread " +
                      format_index(s.current->thread_index) + ": unknown exception";
        }
    }
    fiber& f = *s.current;
    retire_copies(f, -1);  // copies in flight still land when a thread exits
    f.state = fiber_state::finished;
    switch_context(f.context, s.scheduler);
    std::abort();  // a finished fiber is never resumed
}

/// Where every unfinished thread waits, grouped by runs of threads that wait at the same place.
inline std::string describe_waits(const launch_state& s) {
    std::ostringstream os;
    int run_start = -1;
    std::string run_what;
    auto flush = [&](int end) {
        if (run_start < 0) return;
        os << "\n  threads " << run_start << "-" << end - 1 << " (warp " << run_start / warp_lanes << "): " << run_what;
        run_start = -1;
    };
    for (int t = 0; t < s.threads; ++t) {
        const fiber& f = s.fibers[static_cast<std::size_t>(t)];
        std::string what;
        switch (f.state) {
            case fiber_state::finished: what = "exited"; break;
            case fiber_state::ready: what = "ready"; break;
            case fiber_state::at_block_barrier: what = "__syncthreads"; break;
            case fiber_state::at_warp_barrier:
                what = std::string(f.warp_op) + " (mask " + hex(f.warp_mask) + ")";
                break;
        }
        if (run_start >= 0 && (what != run_what || t % warp_lanes == 0)) flush(t);
        if (run_start < 0) {
            run_start = t;
            run_what = what;
        }
    }
    flush(s.threads);
    return os.str();
}

/// A thread exited: the CTA barrier may now be complete, and no lane may wait for it in a collective.
inline void on_finished(launch_state& s, const fiber& f) {
    ++s.finished;
    for (int lane = 0; lane < warp_lanes; ++lane) {
        const int t = f.linear - lane_of(f) + lane;
        if (t >= s.threads) break;
        const fiber& other = s.fibers[static_cast<std::size_t>(t)];
        if (other.state == fiber_state::at_warp_barrier && ((other.warp_mask >> lane_of(f)) & 1u))
            throw emulation_error("mmca warp emulation: block " + format_index(s.block_index) + ": thread " +
                                  format_index(f.thread_index) + " exited while lane " + std::to_string(lane) +
                                  " waits for it at " + other.warp_op + " (mask " + hex(other.warp_mask) + ")" +
                                  describe_waits(s));
    }
    if (s.block_arrived > 0 && s.block_arrived + s.finished == s.threads) release_block_barrier(s);
}

inline void run_block(launch_state& s) {
    std::memset(s.dynamic_shared, 0xFF, s.dynamic_shared_bytes);
    s.block_arrived = 0;
    s.finished = 0;
    s.reduce_or = s.result_or = s.reduce_count = s.result_count = 0;
    s.reduce_and = s.result_and = 1;
    const unsigned bx = s.block_dim.x, by = s.block_dim.y;
    for (int t = 0; t < s.threads; ++t) {
        fiber& f = s.fibers[static_cast<std::size_t>(t)];
        const auto u = static_cast<unsigned>(t);
        f.thread_index = make_uint3(u % bx, (u / bx) % by, u / (bx * by));
        f.linear = t;
        f.state = fiber_state::ready;
        f.warp_mask = 0;
        f.warp_op = nullptr;
        f.copies.clear();
        f.group_ends.clear();
        if (f.stack == nullptr) f.stack = s.stacks.stack(static_cast<std::size_t>(t));
        make_context(f.context, f.stack, fiber_stack_bytes, &fiber_main, &s);
    }
    for (;;) {
        bool progress = false;
        for (int t = 0; t < s.threads; ++t) {
            fiber& f = s.fibers[static_cast<std::size_t>(t)];
            if (f.state != fiber_state::ready) continue;
            progress = true;
            s.current = &f;
            switch_context(s.scheduler, f.context);
            s.current = nullptr;
            if (s.failed) throw emulation_error(s.error);
            if (f.state == fiber_state::finished) on_finished(s, f);
        }
        if (s.finished == s.threads) return;
        if (!progress)
            throw emulation_error("mmca warp emulation: deadlock in block " + format_index(s.block_index) +
                                  ": no thread can proceed. Threads wait at:" + describe_waits(s));
    }
}

/// Runs body(arg) as the kernel of every thread of every CTA of the grid.
inline void run_grid(dim3 grid, dim3 block, std::size_t dynamic_smem, void (*body)(const void*), const void* arg) {
    launch_state& s = state();
    if (s.active) throw emulation_error("mmca warp emulation: emulate_launch called inside an emulated launch");
    const long long threads = static_cast<long long>(block.x) * block.y * block.z;
    if (threads <= 0 || threads > max_block_threads)
        throw emulation_error("mmca warp emulation: a block of " + std::to_string(threads) +
                              " threads (the GPU takes 1 to 1024)");
    if (grid.x == 0 || grid.y == 0 || grid.z == 0 || grid.y > 65535 || grid.z > 65535)
        throw emulation_error("mmca warp emulation: grid " + format_index(make_uint3(grid.x, grid.y, grid.z)) +
                              " is not launchable");
    if (dynamic_smem > max_dynamic_shared_bytes)
        throw emulation_error("mmca warp emulation: " + std::to_string(dynamic_smem) +
                              " bytes of dynamic shared memory (an sm_90 CTA takes at most " +
                              std::to_string(max_dynamic_shared_bytes) + ")");
    struct active_guard {
        launch_state& s;
        ~active_guard() {
            s.active = false;
            s.current = nullptr;
        }
    } guard{s};
    s.active = true;
    s.failed = false;
    s.error.clear();
    s.grid_dim = grid;
    s.block_dim = block;
    s.threads = static_cast<int>(threads);
    // Fibers (and their stacks) are kept between launches; a launch uses the first `threads`.
    if (s.fibers.size() < static_cast<std::size_t>(s.threads)) s.fibers.resize(static_cast<std::size_t>(s.threads));
    s.shared_storage.assign(dynamic_smem + 32, 0xFF);
    const auto base = reinterpret_cast<std::uintptr_t>(s.shared_storage.data());
    s.dynamic_shared = s.shared_storage.data() + ((16 - base % 16) % 16);
    s.dynamic_shared_bytes = dynamic_smem;
    s.body = body;
    s.body_arg = arg;
    for (unsigned z = 0; z < grid.z; ++z)
        for (unsigned y = 0; y < grid.y; ++y)
            for (unsigned x = 0; x < grid.x; ++x) {
                s.block_index = make_uint3(x, y, z);
                run_block(s);
            }
}

template <class Body>
void invoke_body(const void* body) {
    (*static_cast<const Body*>(body))();
}

/// Bit patterns of 16-bit floats as float.
inline float half_bits_to_float(std::uint16_t bits) {
    __half_raw raw;
    raw.x = bits;
    return __half2float(__half(raw));
}
inline float bfloat16_bits_to_float(std::uint16_t bits) {
    const std::uint32_t wide = static_cast<std::uint32_t>(bits) << 16;
    float f;
    std::memcpy(&f, &wide, sizeof f);
    return f;
}

inline std::uint32_t load_u32(const unsigned char* p) {
    std::uint32_t v;
    std::memcpy(&v, p, sizeof v);
    return v;
}
inline std::uint16_t load_u16(const unsigned char* p) {
    std::uint16_t v;
    std::memcpy(&v, p, sizeof v);
    return v;
}

}  // namespace detail

/// The dynamic shared memory of the running CTA (MMCA_CUDA_DYNAMIC_SHARED under emulation).
inline unsigned char* dynamic_shared() {
    detail::self();  // only inside a kernel
    return detail::state().dynamic_shared;
}

/// Runs kernel(params...) on the CPU for every thread of `grid` x `block`, with `dynamic_smem` bytes
/// of dynamic shared memory per CTA, as kernel<<<grid, block, dynamic_smem>>>(params...) would on
/// the GPU. Returns when every CTA has finished; throws emulation_error when a kernel deadlocks,
/// misuses a warp collective or raises (the first error stops the launch).
template <class Kernel, class... Params>
void emulate_launch(Kernel kernel, dim3 grid, dim3 block, std::size_t dynamic_smem, const Params&... params) {
    auto body = [&] { kernel(params...); };
    detail::run_grid(grid, block, dynamic_smem, &detail::invoke_body<decltype(body)>, &body);
}

/// MMCA_CUDA_LAUNCH under emulation (mmca/backend/cuda/launch.cuh): runs the grid now, on the calling
/// thread. Emulated work is synchronous, so the stream only has to be a stream.
template <class Stream, class Kernel, class... Args>
void emulate_launch_on(Stream stream, Kernel kernel, dim3 grid, dim3 block, std::size_t dynamic_smem,
                       const Args&... args) {
    static_assert(std::is_convertible<Stream, cudaStream_t>::value, "MMCA_CUDA_LAUNCH: the stream is a cudaStream_t");
    (void)stream;
    emulate_launch(kernel, grid, block, dynamic_smem, args...);
}

/// The launch state of the running kernel (the built-in variables below read it).
inline const uint3& thread_index() { return detail::self().thread_index; }
inline const uint3& block_index() { return detail::state().block_index; }
inline const dim3& block_dim() { return detail::state().block_dim; }
inline const dim3& grid_dim() { return detail::state().grid_dim; }

}  // namespace emulation

// ---------------------------------------------------------------------------------------------
// Host versions of kernels/mma_sm80.cuh (same names and signatures; that header leaves its PTX
// versions out under MMCA_CUDA_WARP_EMULATION).
// ---------------------------------------------------------------------------------------------
namespace detail {

/// The emulator has no separate shared window: the low 32 bits of the generic address.
inline std::uint32_t shared_address(const void* p) {
    return static_cast<std::uint32_t>(reinterpret_cast<std::uintptr_t>(p));
}

/// 16-byte cp.async: the source is read now, the bytes land at the cp_async_wait that retires them.
inline void cp_async_16(void* smem, const void* gmem) {
    namespace em = ::mmca::cuda::emulation::detail;
    if (reinterpret_cast<std::uintptr_t>(smem) % 16u != 0u || reinterpret_cast<std::uintptr_t>(gmem) % 16u != 0u)
        em::fail("cp_async_16: shared and global addresses must be 16-byte aligned");
    em::pending_copy c;
    c.dst = smem;
    c.bytes = 16;
    std::memcpy(c.data, gmem, 16);
    em::self().copies.push_back(c);
}

/// 4-byte cp.async (same deferral).
inline void cp_async_4(void* smem, const void* gmem) {
    namespace em = ::mmca::cuda::emulation::detail;
    if (reinterpret_cast<std::uintptr_t>(smem) % 4u != 0u || reinterpret_cast<std::uintptr_t>(gmem) % 4u != 0u)
        em::fail("cp_async_4: shared and global addresses must be 4-byte aligned");
    em::pending_copy c;
    c.dst = smem;
    c.bytes = 4;
    std::memcpy(c.data, gmem, 4);
    em::self().copies.push_back(c);
}

/// Closes the group of this thread's copies issued since the last commit.
inline void cp_async_commit() {
    namespace em = ::mmca::cuda::emulation::detail;
    em::fiber& f = em::self();
    f.group_ends.push_back(f.copies.size());
}

/// Lands every committed group of this thread but the `pending` most recent ones.
template <int pending>
inline void cp_async_wait() {
    static_assert(pending >= 0, "cp_async_wait: pending must be >= 0");
    ::mmca::cuda::emulation::detail::retire_copies(::mmca::cuda::emulation::detail::self(), pending);
}

/// ldmatrix.x4: lane l gives the address of row l % 8 of matrix l / 8; lane l receives, of each
/// matrix j, the 32-bit pair (row l / 4, columns 2 (l % 4) and 2 (l % 4) + 1).
inline void ldmatrix_x4(std::uint32_t (&r)[4], const void* smem_row) {
    namespace em = ::mmca::cuda::emulation::detail;
    if (reinterpret_cast<std::uintptr_t>(smem_row) % 16u != 0u)
        em::fail("ldmatrix_x4: row address not 16-byte aligned");
    struct result {
        std::uint32_t v[4];
    };
    const auto* row = static_cast<const unsigned char*>(smem_row);
    const result out = em::warp_collective("ldmatrix_x4", 0xffffffffu, row, [](int lane, auto deposit_of) {
        result x{};
        for (int j = 0; j < 4; ++j) x.v[j] = em::load_u32(deposit_of(j * 8 + lane / 4) + 4 * (lane % 4));
        return x;
    });
    for (int j = 0; j < 4; ++j) r[j] = out.v[j];
}

/// ldmatrix.x4.trans: lane l receives, of each matrix j, the elements (row 2 (l % 4), column l / 4)
/// (lower half) and (row 2 (l % 4) + 1, column l / 4) (upper half).
inline void ldmatrix_x4_trans(std::uint32_t (&r)[4], const void* smem_row) {
    namespace em = ::mmca::cuda::emulation::detail;
    if (reinterpret_cast<std::uintptr_t>(smem_row) % 16u != 0u)
        em::fail("ldmatrix_x4_trans: row address not 16-byte aligned");
    struct result {
        std::uint32_t v[4];
    };
    const auto* row = static_cast<const unsigned char*>(smem_row);
    const result out = em::warp_collective("ldmatrix_x4_trans", 0xffffffffu, row, [](int lane, auto deposit_of) {
        result x{};
        for (int j = 0; j < 4; ++j) {
            const std::uint32_t lo = em::load_u16(deposit_of(j * 8 + 2 * (lane % 4)) + 2 * (lane / 4));
            const std::uint32_t hi = em::load_u16(deposit_of(j * 8 + 2 * (lane % 4) + 1) + 2 * (lane / 4));
            x.v[j] = lo | (hi << 16);
        }
        return x;
    });
    for (int j = 0; j < 4; ++j) r[j] = out.v[j];
}

/// mma.sync m16n8k16 with float accumulators: c += a * b over the warp (fragment layout at the top
/// of kernels/mma_sm80.cuh). Products and sums in double, rounded to float once per call.
template <class T>
inline void mma_16816(float (&c)[4], const std::uint32_t (&a)[4], std::uint32_t b0, std::uint32_t b1) {
    static_assert(std::is_same_v<T, __half> || std::is_same_v<T, __nv_bfloat16>, "mma_16816: T is __half or bf16");
    namespace em = ::mmca::cuda::emulation::detail;
    struct fragments {
        std::uint32_t a[4];
        std::uint32_t b[2];
    };
    struct result {
        float c[4];
    };
    const fragments mine{{a[0], a[1], a[2], a[3]}, {b0, b1}};
    auto element = [](std::uint32_t reg, int half) {
        const auto bits = static_cast<std::uint16_t>(half ? reg >> 16 : reg & 0xffffu);
        if constexpr (std::is_same_v<T, __half>)
            return static_cast<double>(em::half_bits_to_float(bits));
        else
            return static_cast<double>(em::bfloat16_bits_to_float(bits));
    };
    const float c_in[4] = {c[0], c[1], c[2], c[3]};
    const result out = em::warp_collective("mma_16816", 0xffffffffu, mine, [&](int lane, auto deposit_of) {
        fragments all[em::warp_lanes];
        for (int l = 0; l < em::warp_lanes; ++l) all[l] = deposit_of(l);
        // A(r, k): lane 4 (r % 8) + (k % 8) / 2, register (r / 8) + 2 (k / 8), half k % 2.
        auto A = [&](int r, int k) { return element(all[4 * (r % 8) + (k % 8) / 2].a[(r / 8) + 2 * (k / 8)], k % 2); };
        // B(k, n): lane 4 n + (k % 8) / 2, register k / 8, half k % 2.
        auto B = [&](int k, int n) { return element(all[4 * n + (k % 8) / 2].b[k / 8], k % 2); };
        const int group = lane / 4, quad = lane % 4;
        result x{};
        for (int e = 0; e < 4; ++e) {
            const int row = group + (e >= 2 ? 8 : 0), col = 2 * quad + (e % 2);
            double sum = c_in[e];
            for (int k = 0; k < 16; ++k) sum += A(row, k) * B(k, col);
            x.c[e] = static_cast<float>(sum);
        }
        return x;
    });
    for (int e = 0; e < 4; ++e) c[e] = out.c[e];
}

}  // namespace detail
}  // namespace cuda
}  // namespace mmca

// ---------------------------------------------------------------------------------------------
// Built-in variables and device functions.
// ---------------------------------------------------------------------------------------------
#define threadIdx (::mmca::cuda::emulation::thread_index())
#define blockIdx (::mmca::cuda::emulation::block_index())
#define blockDim (::mmca::cuda::emulation::block_dim())
#define gridDim (::mmca::cuda::emulation::grid_dim())
#define warpSize 32

/// cuda_runtime.h's typed overload, which it declares for nvcc only.
template <class T>
inline cudaError_t cudaFuncSetAttribute(T* entry, cudaFuncAttribute attr, int value) {
    return ::cudaFuncSetAttribute(reinterpret_cast<const void*>(entry), attr, value);
}

// Correctly rounded arithmetic that the device compiler may not fuse into an FMA. The translation
// units of the emulator are built with -ffp-contract=off, so plain operators round the same way.
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline double __dadd_rn(double a, double b) { return a + b; }
inline double __dmul_rn(double a, double b) { return a * b; }

inline void __syncthreads() { ::mmca::cuda::emulation::detail::block_barrier(0); }
inline int __syncthreads_or(int predicate) {
    ::mmca::cuda::emulation::detail::block_barrier(predicate);
    return ::mmca::cuda::emulation::detail::state().result_or;
}
inline int __syncthreads_and(int predicate) {
    ::mmca::cuda::emulation::detail::block_barrier(predicate);
    return ::mmca::cuda::emulation::detail::state().result_and;
}
inline int __syncthreads_count(int predicate) {
    ::mmca::cuda::emulation::detail::block_barrier(predicate);
    return ::mmca::cuda::emulation::detail::state().result_count;
}

/// Waits for the lanes of `mask` (a warp barrier, no data).
inline void __syncwarp(unsigned mask = 0xffffffffu) {
    namespace em = ::mmca::cuda::emulation::detail;
    em::warp_collective("__syncwarp", mask, 0, [](int, auto) { return 0; });
}

inline unsigned __ballot_sync(unsigned mask, int predicate) {
    namespace em = ::mmca::cuda::emulation::detail;
    return em::warp_collective("__ballot_sync", mask, predicate != 0 ? 1 : 0, [mask](int, auto deposit_of) {
        unsigned bits = 0;
        for (int l = 0; l < em::warp_lanes; ++l)
            if (((mask >> l) & 1u) && deposit_of(l) != 0) bits |= 1u << l;
        return bits;
    });
}
inline int __any_sync(unsigned mask, int predicate) {
    namespace em = ::mmca::cuda::emulation::detail;
    return em::warp_collective("__any_sync", mask, predicate != 0 ? 1 : 0, [mask](int, auto deposit_of) {
        for (int l = 0; l < em::warp_lanes; ++l)
            if (((mask >> l) & 1u) && deposit_of(l) != 0) return 1;
        return 0;
    });
}
inline int __all_sync(unsigned mask, int predicate) {
    namespace em = ::mmca::cuda::emulation::detail;
    return em::warp_collective("__all_sync", mask, predicate != 0 ? 1 : 0, [mask](int, auto deposit_of) {
        for (int l = 0; l < em::warp_lanes; ++l)
            if (((mask >> l) & 1u) && deposit_of(l) == 0) return 0;
        return 1;
    });
}

namespace mmca {
namespace cuda {
namespace emulation {
namespace detail {

enum class shuffle_mode { index, up, down, xor_lanes };

/// The lane a shuffle reads (own lane when the source falls outside the lane's width segment).
inline int shuffle_source(shuffle_mode mode, int lane, int arg, int width) {
    const int base = lane & ~(width - 1);
    switch (mode) {
        case shuffle_mode::index: return base + (arg & (width - 1));
        case shuffle_mode::up: return lane - arg >= base ? lane - arg : lane;
        case shuffle_mode::down: return lane + arg < base + width ? lane + arg : lane;
        case shuffle_mode::xor_lanes: {
            const int src = lane ^ arg;
            return src < base + width ? src : lane;
        }
    }
    return lane;
}

template <class T>
T shuffle(const char* op, shuffle_mode mode, unsigned mask, T value, int arg, int width) {
    static_assert(std::is_trivially_copyable_v<T> && sizeof(T) <= 16, "shuffle: a value of at most 16 bytes");
    if (width <= 0 || width > warp_lanes || (width & (width - 1)) != 0)
        fail(std::string(op) + ": width " + std::to_string(width) + " is not a power of two in [1, 32]");
    return warp_collective(op, mask, value, [=](int lane, auto deposit_of) {
        const int src = shuffle_source(mode, lane, arg, width);
        if (((mask >> src) & 1u) == 0u)
            fail(std::string(op) + ": lane " + std::to_string(lane) + " reads lane " + std::to_string(src) +
                 ", which is not in the mask " + hex(mask));
        return deposit_of(src);
    });
}

}  // namespace detail
}  // namespace emulation
}  // namespace cuda
}  // namespace mmca

template <class T>
T __shfl_sync(unsigned mask, T var, int src_lane, int width = 32) {
    namespace em = ::mmca::cuda::emulation::detail;
    return em::shuffle("__shfl_sync", em::shuffle_mode::index, mask, var, src_lane, width);
}
template <class T>
T __shfl_up_sync(unsigned mask, T var, unsigned delta, int width = 32) {
    namespace em = ::mmca::cuda::emulation::detail;
    return em::shuffle("__shfl_up_sync", em::shuffle_mode::up, mask, var, static_cast<int>(delta), width);
}
template <class T>
T __shfl_down_sync(unsigned mask, T var, unsigned delta, int width = 32) {
    namespace em = ::mmca::cuda::emulation::detail;
    return em::shuffle("__shfl_down_sync", em::shuffle_mode::down, mask, var, static_cast<int>(delta), width);
}
template <class T>
T __shfl_xor_sync(unsigned mask, T var, int lane_mask, int width = 32) {
    namespace em = ::mmca::cuda::emulation::detail;
    return em::shuffle("__shfl_xor_sync", em::shuffle_mode::xor_lanes, mask, var, lane_mask, width);
}

/// Lanes of the calling warp that have not exited.
inline unsigned __activemask() {
    namespace em = ::mmca::cuda::emulation::detail;
    const em::fiber& me = em::self();
    unsigned bits = 0;
    for (int lane = 0; lane < em::warp_lanes; ++lane) {
        const int t = me.linear - em::lane_of(me) + lane;
        if (t >= em::state().threads) break;
        if (em::state().fibers[static_cast<std::size_t>(t)].state != em::fiber_state::finished) bits |= 1u << lane;
    }
    return bits;
}

// min / max of device code (CUDA declares them for the device only).
inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a < b ? b : a; }
inline unsigned min(unsigned a, unsigned b) { return a < b ? a : b; }
inline unsigned max(unsigned a, unsigned b) { return a < b ? b : a; }
inline long long min(long long a, long long b) { return a < b ? a : b; }
inline long long max(long long a, long long b) { return a < b ? b : a; }
inline unsigned long long min(unsigned long long a, unsigned long long b) { return a < b ? a : b; }
inline unsigned long long max(unsigned long long a, unsigned long long b) { return a < b ? b : a; }
inline float min(float a, float b) { return fminf(a, b); }
inline float max(float a, float b) { return fmaxf(a, b); }
inline double min(double a, double b) { return fmin(a, b); }
inline double max(double a, double b) { return fmax(a, b); }

[[noreturn]] inline void __trap() { ::mmca::cuda::emulation::detail::fail("__trap()"); }
inline void __threadfence() {}
inline void __threadfence_block() {}
template <class T>
T __ldg(const T* p) {
    return *p;
}

// Atomics: fibers switch only at barriers, so a plain read-modify-write is atomic here.
template <class T>
T atomicAdd(T* address, T value) {
    const T old = *address;
    *address = old + value;
    return old;
}
template <class T>
T atomicMax(T* address, T value) {
    const T old = *address;
    *address = old < value ? value : old;
    return old;
}
template <class T>
T atomicMin(T* address, T value) {
    const T old = *address;
    *address = value < old ? value : old;
    return old;
}
template <class T>
T atomicExch(T* address, T value) {
    const T old = *address;
    *address = value;
    return old;
}
template <class T>
T atomicCAS(T* address, T compare, T value) {
    const T old = *address;
    if (old == compare) *address = value;
    return old;
}
