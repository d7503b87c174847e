"""mmca.cuda - mmca's CUDA attention on device tensors (present when mmca was built with CUDA).

Low level (no copies; outputs are tensors the caller allocated; asynchronous on ``stream``):

    mmca.cuda.attention(q, k, v, out, token_types, variant, ..., row_max=, row_sum=, group_out=)
    mmca.cuda.attention_backward(q, k, v, dout, row_max, row_sum, group_out, dq, dk, dv,
                                 token_types, variant, ...)

accept CUDA ``torch.Tensor`` (float32, float16, bfloat16) or any ``__cuda_array_interface__``
object (float32, float16), q (B, Hq, Lq, D), k and v (B, Hkv, Lk, D), head dim contiguous; token
metadata is host data as for :func:`mmca.attention`.

With PyTorch, :func:`attention_torch` is a differentiable function: it allocates the output and
the statistics on q's device and runs on PyTorch's current stream; its backward is mmca's fused
backward.

Models on the GPU, with numpy arrays on the host in and out as for their CPU counterparts:
:class:`LlamaModel` (the decoder), :class:`VisualChatModel` (decoder and vision encoder, QWen-VL
or CLIP, on the device), and the vision encoders alone, :class:`QwenViT` and :class:`ClipViT`.
"""
from __future__ import annotations

import numpy as np


try:
    from . import _cuda
    from ._cuda import ClipViT, CudaError, LlamaModel, QwenViT, VisualChatModel, available, device, synchronize
except ImportError as error:  # pragma: no cover - depends on the build
    raise ImportError("mmca.cuda: this mmca was built without CUDA (configure with -DMMCA_ENABLE_CUDA=ON "
                      "on a machine with nvcc)") from error


def _metadata(x, dtype, where: str, name: str):
    """Host integer metadata as a C-contiguous array of `dtype` (values checked to fit)."""
    if x is None:
        return None
    a = np.asarray(x.cpu() if hasattr(x, "cpu") else x)
    if a.dtype.kind not in "iu":
        raise TypeError(f"{where}: argument '{name}': got dtype {a.dtype}; expected an integer array")
    info = np.iinfo(dtype)
    if a.size and (a.min() < info.min or a.max() > info.max):
        raise ValueError(f"{where}: argument '{name}': got values in [{a.min()}, {a.max()}]; "
                         f"expected values that fit {np.dtype(dtype).name}")
    return np.ascontiguousarray(a, dtype=dtype)


def _tokens(where, token_types, image_ids, kv_lens, q_lens):
    return dict(token_types=_metadata(token_types, np.int8, where, "token_types"),
                image_ids=_metadata(image_ids, np.int32, where, "image_ids"),
                kv_lens=_metadata(kv_lens, np.int32, where, "kv_lens"),
                q_lens=_metadata(q_lens, np.int32, where, "q_lens"))


def attention(q, k, v, out, token_types, variant: str, *, image_ids=None, policy=None, scale=None, kv_lens=None,
              q_lens=None, row_max=None, row_sum=None, group_out=None, stream: int = 0) -> None:
    """Fused attention of ``variant`` into ``out`` (every variant of :func:`mmca.attention`); with
    row_max, row_sum (B, Hq, Lq, 2) and group_out (B, Hq, Lq, 2, D) float32 device tensors, also
    the statistics for :func:`attention_backward`. Asynchronous on ``stream`` (an int cudaStream_t)."""
    t = _tokens("mmca.cuda.attention", token_types, image_ids, kv_lens, q_lens)
    _cuda.attention(q, k, v, out, t["token_types"], variant, image_ids=t["image_ids"], policy=policy, scale=scale,
                    kv_lens=t["kv_lens"], q_lens=t["q_lens"], row_max=row_max, row_sum=row_sum,
                    group_out=group_out, stream=stream)


def attention_backward(q, k, v, dout, row_max, row_sum, group_out, dq, dk, dv, token_types, variant: str, *,
                       image_ids=None, policy=None, scale=None, kv_lens=None, q_lens=None, stream: int = 0,
                       kernel: str = "automatic") -> None:
    """dq, dk, dv (written in place) of attention for the upstream gradient ``dout``, from the
    statistics that :func:`attention` wrote for the same inputs. ``kernel``: ``"automatic"`` (the
    tensor-core kernels where they serve, else FFMA), ``"tensor_cores"`` (float16/bfloat16, head dim
    <= 128 and a multiple of 8, sm_80 or newer) or ``"ffma"``. Asynchronous on ``stream``."""
    t = _tokens("mmca.cuda.attention_backward", token_types, image_ids, kv_lens, q_lens)
    _cuda.attention_backward(q, k, v, dout, row_max, row_sum, group_out, dq, dk, dv, t["token_types"], variant,
                             image_ids=t["image_ids"], policy=policy, scale=scale, kv_lens=t["kv_lens"],
                             q_lens=t["q_lens"], stream=stream, kernel=kernel)

__all__ = ["ClipViT", "CudaError", "LlamaModel", "QwenViT", "VisualChatModel", "attention", "attention_backward",
           "attention_torch", "available", "device", "synchronize"]

_function = None


def _autograd_function():
    """The torch.autograd.Function behind attention_torch (made on first use: torch is imported lazily)."""
    global _function
    if _function is not None:
        return _function
    import torch

    class _Attention(torch.autograd.Function):
        @staticmethod
        def forward(ctx, q, k, v, token_types, variant, kwargs, backward_kernel):
            B, H, L, D = q.shape
            out = torch.empty_like(q, memory_format=torch.contiguous_format)
            row_max = torch.empty((B, H, L, 2), device=q.device, dtype=torch.float32)
            row_sum = torch.empty_like(row_max)
            group_out = torch.empty((B, H, L, 2, D), device=q.device, dtype=torch.float32)
            stream = torch.cuda.current_stream(q.device).cuda_stream
            attention(q, k, v, out, token_types, variant, row_max=row_max, row_sum=row_sum, group_out=group_out,
                      stream=stream, **kwargs)
            ctx.save_for_backward(q, k, v, row_max, row_sum, group_out)
            ctx.token_types, ctx.variant, ctx.kwargs = token_types, variant, kwargs
            ctx.backward_kernel = backward_kernel
            return out

        @staticmethod
        def backward(ctx, dout):
            q, k, v, row_max, row_sum, group_out = ctx.saved_tensors
            dout = dout.contiguous()
            dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
            stream = torch.cuda.current_stream(q.device).cuda_stream
            attention_backward(q, k, v, dout, row_max, row_sum, group_out, dq, dk, dv, ctx.token_types, ctx.variant,
                               stream=stream, kernel=ctx.backward_kernel, **ctx.kwargs)
            return dq, dk, dv, None, None, None, None

    _function = _Attention
    return _function


def attention_torch(q, k, v, token_types, variant: str = "mmca", *, image_ids=None, policy=None, scale=None,
                    kv_lens=None, q_lens=None, backward_kernel: str = "automatic"):
    """Differentiable attention of ``variant`` for CUDA torch tensors q (B, Hq, Lq, D), k and v
    (B, Hkv, Lk, D) (float32, float16 or bfloat16; last dimension contiguous). token_types (B, Lk)
    and the optional image_ids, kv_lens, q_lens are host integer arrays (numpy or lists), as for
    :func:`mmca.attention`. Returns out (B, Hq, Lq, D); out.backward() runs mmca's fused backward
    with ``backward_kernel`` (the ``kernel`` of :func:`attention_backward`).
    """
    if backward_kernel not in ("automatic", "tensor_cores", "ffma"):
        raise ValueError(f"mmca.cuda.attention_torch: argument 'backward_kernel': got {backward_kernel!r}; "
                         "expected 'automatic', 'tensor_cores' or 'ffma'")
    t = _tokens("mmca.cuda.attention_torch", token_types, image_ids, kv_lens, q_lens)
    kwargs = dict(image_ids=t["image_ids"], policy=policy, scale=scale, kv_lens=t["kv_lens"], q_lens=t["q_lens"])
    return _autograd_function().apply(q, k, v, t["token_types"], variant, kwargs, backward_kernel)
