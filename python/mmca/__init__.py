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
    Projector,
    SafetensorsFile,
    estimate_llama_memory,
    llama_preset,
    read_llama_config,
    __version__,
    attention,
    decode_image,
    default_num_threads,
    image_hash,
    image_preset,
    image_presets,
    impls,
    load_image,
    preprocess_image,
    resize_image,
    kv_dtypes,
    policies,
    variants,
)

__all__ = [
    "KVCache",
    "LlamaModel",
    "Projector",
    "SafetensorsFile",
    "estimate_llama_memory",
    "llama_preset",
    "read_llama_config",
    "__version__",
    "attention",
    "decode_image",
    "default_num_threads",
    "image_hash",
    "image_preset",
    "image_presets",
    "impls",
    "load_image",
    "preprocess_image",
    "resize_image",
    "kv_dtypes",
    "policies",
    "variants",
]

# The text side of the chat pipeline (docs/chat.md): tokenizer, conversation template, data blending.
from ._core import Tokenizer, blend, render_conversation, tokenize_conversation  # noqa: E402

__all__ += ["Tokenizer", "blend", "render_conversation", "tokenize_conversation"]

# The vision encoders (docs/vision.md): QWen-VL ViT and HF CLIP vision towers.
from ._core import ClipViT, QwenViT, bicubic_resize_table, clip_vit_preset, sincos_2d  # noqa: E402

__all__ += ["ClipViT", "QwenViT", "bicubic_resize_table", "clip_vit_preset", "sincos_2d"]

# The assembled visual-chat model (docs/vision.md): encoder + projector + LLaMa decoder.
from ._core import VisualChatModel  # noqa: E402

__all__ += ["VisualChatModel"]
from ._core import ChatSession  # noqa: E402

__all__ += ["ChatSession"]

# Backward passes of the trainable path (docs/training.md): mmca.grad.linear_backward, ...
from ._core import grad  # noqa: E402

__all__ += ["grad"]

# Attention gradients for training (docs/attention.md, "Backward").
from ._core import attention_backward, attention_with_stats  # noqa: E402

__all__ += ["attention_backward", "attention_with_stats"]

# Training building blocks (docs/training.md, "Optimizer, schedule and checkpoints").
from ._core import (  # noqa: E402
    AdamW,
    clip_grad_norm,
    load_train_state,
    lr_schedule,
    save_safetensors,
    save_train_state,
    warmup_steps_from_ratio,
)

__all__ += [
    "AdamW",
    "clip_grad_norm",
    "load_train_state",
    "lr_schedule",
    "save_safetensors",
    "save_train_state",
    "warmup_steps_from_ratio",
]

# The synthetic multi-image task of the data-efficiency benchmark (docs/training.md).
from ._core import synthetic_sample  # noqa: E402

__all__ += ["synthetic_sample"]

# The training loop (docs/training.md, "The trainer") and its data from the blended format.
from ._core import ConversationData, Trainer  # noqa: E402

__all__ += ["ConversationData", "Trainer"]
