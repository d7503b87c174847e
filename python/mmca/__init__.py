"""mmca: multi-modal causal attention (DeepSpeed-VisualChat, arXiv 2309.14327) for numpy arrays.

The attention variants of the C++ library, for ablation experiments:

    import numpy as np, mmca
    out = mmca.attention(q, k, v, token_types, "mmca")            # [B, Hq, Lq, D] float32
    out = mmca.attention(q, k, v, token_types, "causal_cross", policy="latest")

Conventions (docs/python.md):

* Tensors (q, k, v, out, KVCache inputs) cross without copies. They must be numpy arrays of the
  exact dtype (float32; k/v also float16, or uint16 bfloat16 bits with kv_dtype="bfloat16"),
  C-contiguous and aligned. A wrong dtype is a TypeError, a wrong layout a ValueError: nothing
  is converted behind your back.
* Metadata (token_types, image_ids, lengths) may be any integer array-like; it is small and is
  converted to int8/int32 after a range check.
* Bad arguments raise ValueError/TypeError whose message names the argument, the value seen and
  what was expected.
* The GIL is released while attention runs; KVCache.keys/.values are read-only views of the
  cache's storage that keep the cache alive.
"""

from ._core import (
    KVCache,
    LlamaModel,
    SafetensorsFile,
    estimate_llama_memory,
    llama_preset,
    read_llama_config,
    __version__,
    attention,
    default_num_threads,
    impls,
    kv_dtypes,
    policies,
    variants,
)

__all__ = [
    "KVCache",
    "LlamaModel",
    "SafetensorsFile",
    "estimate_llama_memory",
    "llama_preset",
    "read_llama_config",
    "__version__",
    "attention",
    "default_num_threads",
    "impls",
    "kv_dtypes",
    "policies",
    "variants",
]
