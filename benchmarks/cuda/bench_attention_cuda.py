#!/usr/bin/env python3
"""benchmarks/cuda/bench_attention_cuda.py - the fused CUDA MMCA forward against PyTorch.

In one process, on the same device and the same (B, H, S, D) bfloat16 tensors:
  sdpa      torch.nn.functional.scaled_dot_product_attention(is_causal=True), flash backend
  causal    mmca's fused CUDA kernel, variant `causal` (the same work as sdpa)
  mmca      mmca's fused CUDA kernel, variant `mmca` (paper MMCA) on a visual-chat token pattern:
            64 text tokens, then one 256-token image, repeated (SPEC §1: 256 tokens per image)
  two_sm    the reference code's method in PyTorch: explicit scores, two additive finfo.min masks
            plus the causal mask, two float32 softmaxes cast to bfloat16 and summed, then P @ V
            (SPEC §2.3); run where its (H, S, S) score tensors fit (in chunks of heads)

TFLOP/s count useful FLOPs only: 4 * D * H per (query row, key it attends to): S(S+1)/2 keys per
head for causal; for MMCA, text rows see earlier text and earlier images, image rows copy V_j (no
FLOPs). `ratio` is MMCA's TFLOP/s over SDPA's (the target is >= 0.5 at S = 4096); `speedup` is
SDPA's time over MMCA's (MMCA has less work).

The mmca kernels are reached through the ctypes shim libmmca_cuda_capi.so (mmca_cuda_capi.cu),
planned once per shape (host planning and the plan upload are not timed) and launched on PyTorch's
current stream. Times are medians of CUDA-event timings after warm-up.

Usage: python3 bench_attention_cuda.py --lib build/libmmca_cuda_capi.so [--batch 1 8] [--seq 1024 4096]
"""
from __future__ import annotations

import argparse
import ctypes
import math
import os
import statistics
import sys

import torch
import torch.nn.functional as F

VARIANT = {"causal": 0, "mmca": 1, "mmca_reference": 2, "causal_cross": 3}
TEXT, IMAGE = 1, 2


def load_library(path: str) -> ctypes.CDLL:
    lib = ctypes.CDLL(path)
    lib.mmca_cuda_plan.restype = ctypes.c_void_p
    lib.mmca_cuda_plan.argtypes = [ctypes.c_int] * 7 + [ctypes.c_void_p] * 8 + [
        ctypes.c_int, ctypes.c_int, ctypes.c_float, ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
    lib.mmca_cuda_run.restype = ctypes.c_int
    lib.mmca_cuda_run.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int]
    lib.mmca_cuda_kernel.restype = ctypes.c_int
    lib.mmca_cuda_kernel.argtypes = [ctypes.c_void_p]
    lib.mmca_cuda_useful_flops.restype = ctypes.c_double
    lib.mmca_cuda_useful_flops.argtypes = [ctypes.c_void_p]
    lib.mmca_cuda_plan_backward.restype = ctypes.c_void_p
    lib.mmca_cuda_plan_backward.argtypes = [ctypes.c_int] * 6 + [ctypes.c_void_p] * 9 + [
        ctypes.c_int, ctypes.c_int, ctypes.c_float, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
    lib.mmca_cuda_destroy.restype = None
    lib.mmca_cuda_destroy.argtypes = [ctypes.c_void_p]
    return lib


class MmcaCall:
    """One planned mmca::cuda::attention_operator<bfloat16> call on torch tensors."""

    def __init__(self, lib, q, k, v, out, types, variant: str, kernel: int = 0):
        self.lib = lib
        B, H, S, D = q.shape
        Hkv, Lk = k.shape[1], k.shape[2]
        self.types = types.contiguous()  # (B, Lk) int8 on the host; must outlive the call
        err = ctypes.create_string_buffer(1024)
        self.handle = lib.mmca_cuda_plan(
            2, B, H, Hkv, S, Lk, D, q.data_ptr(), k.data_ptr(), v.data_ptr(), out.data_ptr(),
            self.types.data_ptr(), None, None, None, VARIANT[variant], 1, 0.0, kernel, 0, err, len(err))
        if not self.handle:
            raise RuntimeError(f"mmca_cuda_plan: {err.value.decode()}")
        self.kernel = {1: "tiled", 2: "rows"}.get(lib.mmca_cuda_kernel(self.handle), "?")
        self.flops = lib.mmca_cuda_useful_flops(self.handle)
        self.err = err

    def __call__(self):
        stream = torch.cuda.current_stream().cuda_stream
        if self.lib.mmca_cuda_run(self.handle, ctypes.c_void_p(stream), self.err, len(self.err)) != 0:
            raise RuntimeError(f"mmca_cuda_run: {self.err.value.decode()}")

    def close(self):
        if self.handle:
            self.lib.mmca_cuda_destroy(self.handle)
            self.handle = None


class MmcaBackward(MmcaCall):
    """One planned mmca::cuda::attention_backward_operator<bfloat16> call (the forward's statistics
    are computed once when planning)."""

    KERNELS = {"automatic": 0, "tensor_cores": 1, "ffma": 2}

    def __init__(self, lib, q, k, v, out, dout, dq, dk, dv, types, variant: str, kernel: str = "automatic"):
        self.lib = lib
        B, H, S, D = q.shape
        Hkv, Lk = k.shape[1], k.shape[2]
        self.types = types.contiguous()
        err = ctypes.create_string_buffer(1024)
        self.handle = lib.mmca_cuda_plan_backward(
            B, H, Hkv, S, Lk, D, q.data_ptr(), k.data_ptr(), v.data_ptr(), out.data_ptr(), dout.data_ptr(),
            dq.data_ptr(), dk.data_ptr(), dv.data_ptr(), self.types.data_ptr(), VARIANT[variant], 1, 0.0,
            self.KERNELS[kernel], err, len(err))
        if not self.handle:
            raise RuntimeError(f"mmca_cuda_plan_backward: {err.value.decode()}")
        self.kernel = {1: "tensor_cores", 2: "ffma"}.get(lib.mmca_cuda_kernel(self.handle), "?")
        self.flops = lib.mmca_cuda_useful_flops(self.handle)
        self.err = err


def visual_chat_types(B: int, S: int, text: int = 64, image: int = 256) -> torch.Tensor:
    """(B, S) int8: text runs of `text` tokens and images of `image` tokens, alternating, text first."""
    row = []
    while len(row) < S:
        row += [TEXT] * text
        row += [IMAGE] * image
    return torch.tensor(row[:S], dtype=torch.int8).repeat(B, 1).contiguous()


def median_ms(fn, warmup: int, reps: int) -> float:
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def sdpa_causal(q, k, v):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)


def two_softmax_reference(q, k, v, types, head_chunk: int):
    """The reference code's MMCA (SPEC §2.3) for one sequence batch, in chunks of heads."""
    B, H, S, D = q.shape
    dev = q.device
    t = types.to(dev).long()
    out = torch.empty_like(q)
    low = torch.finfo(q.dtype).min
    j = torch.arange(S, device=dev)
    future = j[None, :] > j[:, None]  # (S, S): key after query
    for b in range(B):
        tq, tk = t[b][:, None], t[b][None, :]
        # First mask: text rows -> text keys; image rows -> themselves. Second: the other modality.
        first = torch.where(tq == TEXT, tk == TEXT, j[None, :] == j[:, None])
        second = torch.where(tq == TEXT, tk == IMAGE, tk == TEXT)
        extra = torch.where(future, low, 0.0) + torch.where(tk == 0, low, 0.0)  # causal + padding, in float32

        def additive(member):
            return (torch.where(member, 0.0, low) + extra).to(q.dtype)  # low + low overflows to -inf

        m1, m2 = additive(first), additive(second)
        for h0 in range(0, H, head_chunk):
            h1 = min(H, h0 + head_chunk)
            scores = torch.matmul(q[b, h0:h1], k[b, h0:h1].transpose(-1, -2)) / math.sqrt(D)
            p = torch.softmax(scores + m1, dim=-1, dtype=torch.float32).to(q.dtype)
            p = p + torch.softmax(scores + m2, dim=-1, dtype=torch.float32).to(q.dtype)
            out[b, h0:h1] = torch.matmul(p, v[b, h0:h1])
            del scores, p
    return out


def backward_rows(lib, args) -> list[str]:
    """SDPA's flash backward (causal) against mmca's MMCA backward (FFMA kernels and tensor-core
    kernels) and autograd through the two-softmax method, on the same tensors; one markdown row per
    shape. The first shape also checks mmca's causal backward (both kernels) against SDPA's."""
    dev = torch.device("cuda")
    out_rows = []
    checked = False
    for S in args.bwd_seq:
        for B in args.batch:
            H, D = args.heads, args.dim
            q, k, v = (torch.randn(B, H, S, D, device=dev, dtype=torch.bfloat16) for _ in range(3))
            g = torch.randn(B, H, S, D, device=dev, dtype=torch.bfloat16)
            types = visual_chat_types(B, S)
            qa, ka, va = (t.detach().clone().requires_grad_(True) for t in (q, k, v))
            o = sdpa_causal(qa, ka, va)
            t_sdpa = median_ms(lambda: torch.autograd.grad(o, (qa, ka, va), g, retain_graph=True),
                               args.warmup, args.reps)
            sdpa_flops = 2.5 * 4.0 * D * H * B * S * (S + 1) / 2
            out = torch.empty_like(q)
            dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
            mm = MmcaBackward(lib, q, k, v, out, g, dq, dk, dv, types, "mmca", "ffma")
            t_mmca = median_ms(mm, args.warmup, args.reps)
            mt = MmcaBackward(lib, q, k, v, out, g, dq, dk, dv, types, "mmca", "tensor_cores")
            t_mma = median_ms(mt, args.warmup, args.reps)
            if not checked:
                checked = True
                causal_types = torch.full((B, S), TEXT, dtype=torch.int8)
                ref = torch.autograd.grad(o, (qa, ka, va), g, retain_graph=True)
                scale = max(b.float().abs().max().item() for b in ref)
                for kernel in ("ffma", "tensor_cores"):
                    cq, ck, cv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
                    cb = MmcaBackward(lib, q, k, v, torch.empty_like(q), g, cq, ck, cv, causal_types, "causal",
                                      kernel)
                    cb()
                    torch.cuda.synchronize()
                    diffs = [(a.float() - b.float()).abs().max().item() for a, b in zip((cq, ck, cv), ref)]
                    print(f"check backward ({kernel}) B={B} S={S}: max|mmca causal - sdpa| dq {diffs[0]:.3e} "
                          f"dk {diffs[1]:.3e} dv {diffs[2]:.3e} (max|grad| {scale:.2f})", flush=True)
                    cb.close()
            t_ref = float("nan")
            if B * H * S * S <= args.ref_bwd_max_scores:
                chunk = max(1, min(H, int(2 ** 29 // (S * S))))
                rq, rk, rv = (t.detach().clone().requires_grad_(True) for t in (q, k, v))
                ro = two_softmax_reference(rq, rk, rv, types, chunk)
                t_ref = median_ms(lambda: torch.autograd.grad(ro, (rq, rk, rv), g, retain_graph=True), 1, 3)
                del ro, rq, rk, rv
            tf = lambda flops, ms: flops / (ms * 1e-3) / 1e12
            ratio = tf(mm.flops, t_mmca) / tf(sdpa_flops, t_sdpa)
            ref = f"{t_ref:.2f}" if t_ref == t_ref else "-"
            ratio_mma = tf(mt.flops, t_mma) / tf(sdpa_flops, t_sdpa)
            print(f"backward B={B} S={S}: sdpa {t_sdpa:.3f} ms, mmca ffma {t_mmca:.3f} ms, mmca tensor cores "
                  f"{t_mma:.3f} ms, two-softmax {ref} ms", flush=True)
            out_rows.append(f"| {B} | {S} | {t_sdpa:.3f} | {tf(sdpa_flops, t_sdpa):.1f} | {t_mmca:.3f} | "
                            f"{tf(mm.flops, t_mmca):.1f} | {ratio:.2f} | {t_mma:.3f} | {tf(mt.flops, t_mma):.1f} | "
                            f"{ratio_mma:.2f} | {t_sdpa / t_mma:.2f} | {ref} |")
            mm.close()
            mt.close()
            del q, k, v, g, qa, ka, va, o, out, dq, dk, dv
            torch.cuda.empty_cache()
    return out_rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lib", default=os.environ.get("MMCA_CUDA_CAPI", "libmmca_cuda_capi.so"))
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--seq", type=int, nargs="+", default=[1024, 2048, 4096, 8192, 16384])
    parser.add_argument("--heads", type=int, default=32)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--reps", type=int, default=10)
    parser.add_argument("--ref-max-scores", type=float, default=2.2e9,
                        help="run the two-softmax method only when B*H*S*S is at most this")
    parser.add_argument("--out", default="", help="also write the table (markdown) to this file")
    parser.add_argument("--no-backward", action="store_true", help="skip the backward comparison")
    parser.add_argument("--bwd-seq", type=int, nargs="+", default=[1024, 2048, 4096, 8192, 16384])
    parser.add_argument("--ref-bwd-max-scores", type=float, default=1.1e9,
                        help="run the two-softmax backward only when B*H*S*S is at most this")
    args = parser.parse_args()

    if not torch.cuda.is_available():
        print("no CUDA device: nothing to benchmark")
        return 0
    lib = load_library(args.lib)
    dev = torch.device("cuda")
    props = torch.cuda.get_device_properties(dev)
    header = (f"device: {props.name} ({props.multi_processor_count} SMs), torch {torch.__version__}, "
              f"bf16, H={args.heads}, D={args.dim}, pattern 64 text / 256 image")
    print(header, flush=True)

    torch.manual_seed(0)
    rows = []
    checked = False
    for S in args.seq:
        for B in args.batch:
            H, D = args.heads, args.dim
            q = torch.randn(B, H, S, D, device=dev, dtype=torch.bfloat16)
            k = torch.randn(B, H, S, D, device=dev, dtype=torch.bfloat16)
            v = torch.randn(B, H, S, D, device=dev, dtype=torch.bfloat16)
            out_causal = torch.empty_like(q)
            out_mmca = torch.empty_like(q)
            types = visual_chat_types(B, S)
            causal_types = torch.full((B, S), TEXT, dtype=torch.int8)

            sdpa_flops = 4.0 * D * H * B * S * (S + 1) / 2
            t_sdpa = median_ms(lambda: sdpa_causal(q, k, v), args.warmup, args.reps)
            causal = MmcaCall(lib, q, k, v, out_causal, causal_types, "causal")
            t_causal = median_ms(causal, args.warmup, args.reps)
            mmca = MmcaCall(lib, q, k, v, out_mmca, types, "mmca")
            t_mmca = median_ms(mmca, args.warmup, args.reps)

            t_ref = float("nan")
            if B * H * S * S <= args.ref_max_scores:
                chunk = max(1, min(H, int(2 ** 29 // (S * S))))
                t_ref = median_ms(lambda: two_softmax_reference(q, k, v, types, chunk), 1, 3)

            if not checked:
                # Same-run sanity: mmca causal vs SDPA; mmca_reference vs the two-softmax method.
                checked = True
                ref_sdpa = sdpa_causal(q, k, v)
                causal()
                out_ref = torch.empty_like(q)
                mref = MmcaCall(lib, q, k, v, out_ref, types, "mmca_reference")
                mref()
                two = two_softmax_reference(q, k, v, types, max(1, min(H, int(2 ** 29 // (S * S)))))
                torch.cuda.synchronize()
                d1 = (out_causal.float() - ref_sdpa.float()).abs().max().item()
                d2 = (out_ref.float() - two.float()).abs().max().item()
                print(f"check B={B} S={S}: max|mmca causal - sdpa| = {d1:.3e}, "
                      f"max|mmca_reference - two-softmax torch| = {d2:.3e} "
                      f"(max|out| {two.float().abs().max().item():.2f})", flush=True)
                mref.close()

            tf = lambda flops, ms: flops / (ms * 1e-3) / 1e12
            row = dict(B=B, S=S, sdpa_ms=t_sdpa, sdpa_tf=tf(sdpa_flops, t_sdpa),
                       causal_ms=t_causal, causal_tf=tf(causal.flops, t_causal),
                       mmca_ms=t_mmca, mmca_tf=tf(mmca.flops, t_mmca),
                       ref_ms=t_ref, ref_tf=tf(mmca.flops, t_ref) if t_ref == t_ref else float("nan"),
                       kernel=mmca.kernel)
            row["ratio"] = row["mmca_tf"] / row["sdpa_tf"]
            row["speedup"] = t_sdpa / t_mmca
            rows.append(row)
            print(f"B={B} S={S}: sdpa {t_sdpa:.3f} ms, causal {t_causal:.3f} ms, mmca {t_mmca:.3f} ms "
                  f"({mmca.kernel}), two-softmax {t_ref:.3f} ms", flush=True)
            causal.close()
            mmca.close()
            del q, k, v, out_causal, out_mmca
            torch.cuda.empty_cache()

    lines = [header, "",
             "| B | S | SDPA causal ms | TFLOP/s | mmca causal ms | TFLOP/s | MMCA ms | TFLOP/s | ratio | speedup "
             "| two-softmax ms | TFLOP/s |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ref = (f"{r['ref_ms']:.2f} | {r['ref_tf']:.1f}" if r["ref_ms"] == r["ref_ms"] else "- | -")
        lines.append(f"| {r['B']} | {r['S']} | {r['sdpa_ms']:.3f} | {r['sdpa_tf']:.1f} | {r['causal_ms']:.3f} | "
                     f"{r['causal_tf']:.1f} | {r['mmca_ms']:.3f} | {r['mmca_tf']:.1f} | {r['ratio']:.2f} | "
                     f"{r['speedup']:.2f} | {ref} |")
    if not args.no_backward:
        lines += ["", "Backward (dq, dk, dv from dout; FLOPs counted as 2.5x the forward's useful FLOPs):", "",
                  "| B | S | SDPA causal bwd ms | TFLOP/s | MMCA bwd ffma ms | TFLOP/s | ratio "
                  "| MMCA bwd tensor cores ms | TFLOP/s | ratio | speedup | two-softmax bwd ms |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        lines += backward_rows(lib, args)
    table = "\n".join(lines)
    print(table)
    if args.out:
        with open(args.out, "w") as f:
            f.write(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
