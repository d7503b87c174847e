"""Type stubs of the private extension module mmca._core (re-exported by the mmca package)."""

from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

from numpy.typing import ArrayLike, NDArray

import numpy as np
import numpy.typing as npt

__version__: str
"""The package version; equal to the CMake project version."""

_header_version: str
"""MMCA_VERSION_STRING of the C++ headers the module was built from."""

variants: Tuple[str, ...]
"""Attention variant names: ('causal', 'mmca', 'mmca_reference', 'causal_cross')."""

policies: Tuple[str, ...]
"""Image visibility policies of 'causal_cross': ('all', 'preceding', 'latest')."""

impls: Tuple[str, ...]
"""Implementations: ('fused', 'reference')."""

kv_dtypes: Tuple[str, ...]
"""Storage types of keys and values: ('float32', 'float16', 'bfloat16')."""

Float32Array = npt.NDArray[np.float32]
KVArray = Union[npt.NDArray[np.float32], npt.NDArray[np.float16], npt.NDArray[np.uint16]]
IntArrayLike = npt.ArrayLike

def default_num_threads() -> int:
    """Number of threads a call with num_threads=0 uses (OpenMP's default; 1 without OpenMP)."""

def attention(
    q: Float32Array,
    k: KVArray,
    v: KVArray,
    token_types: IntArrayLike,
    variant: str,
    *,
    image_ids: Optional[IntArrayLike] = None,
    policy: Optional[str] = None,
    scale: Optional[float] = None,
    impl: str = "fused",
    kv_lens: Optional[IntArrayLike] = None,
    q_lens: Optional[IntArrayLike] = None,
    num_threads: int = 0,
    out: Optional[Float32Array] = None,
    kv_dtype: Optional[str] = None,
) -> Float32Array:
    """Multi-modal attention of one layer for a batch of interleaved text/image sequences.

    Args:
        q: float32, C-contiguous, (B, Hq, Lq, D). Query row i of sequence b is the token at
            position kv_lens[b] - q_lens[b] + i.
        k, v: (B, Hkv, Lk, D), C-contiguous, float32 or float16 (the same dtype), or uint16
            bfloat16 bits with kv_dtype="bfloat16". Hq % Hkv == 0; D <= 256.
        token_types: integer (B, Lk): 0 pad, 1 text, 2 image (converted to int8).
        variant: one of mmca.variants.
        image_ids: integer (B, Lk) image index per image token (default: each run of image
            tokens is one image).
        policy: 'all', 'preceding' (default) or 'latest'; for variant 'causal_cross' only.
        scale: score scale (default 1/sqrt(D)).
        impl: 'fused' (default) or 'reference' (the explicit-mask oracle).
        kv_lens, q_lens: integer (B,) valid keys / query rows per sequence.
        num_threads: threads of the fused kernel; 0 means default_num_threads().
        out: float32, C-contiguous, writeable (B, Hq, Lq, D) buffer written in place and returned;
            must not overlap an input.
        kv_dtype: 'float32', 'float16' or 'bfloat16' (default: the dtype of k).

    Returns:
        out, or a new float32 array of q's shape.

    Raises:
        TypeError: a tensor of the wrong dtype (never converted) or non-integer metadata.
        ValueError: a non-C-contiguous or read-only tensor, a bad shape, name or value.
    """

class KVCache:
    """Keys, values and token metadata of past tokens, for decoding (mmca::kv_cache<T>).

    Holds per sequence up to `capacity` tokens: keys and values (batch, kv_heads, capacity,
    head_dim) stored as float32, float16 or bfloat16, with token types and image indices.
    append() adds new tokens; attention() computes attention for exactly those new tokens over
    everything cached.
    """

    def __init__(
        self,
        batch: int,
        kv_heads: int,
        capacity: int,
        head_dim: int,
        dtype: Union[str, npt.DTypeLike] = "float32",
    ) -> None:
        """dtype: 'float32', 'float16', 'bfloat16' (or numpy.float32 / numpy.float16)."""
    def append(
        self,
        k: Float32Array,
        v: Float32Array,
        token_types: IntArrayLike,
        *,
        image_ids: Optional[IntArrayLike] = None,
        lens: Optional[IntArrayLike] = None,
    ) -> None:
        """Appends new tokens: k, v float32 C-contiguous (batch, kv_heads, Ln, head_dim);
        token_types and image_ids integer (batch, Ln); sequence b takes its first lens[b] tokens.

        Everything is checked before anything is written (a failed append leaves the cache as
        it was). Without image_ids each run of image tokens is a new image.
        """
    def attention(
        self,
        q: Float32Array,
        variant: str,
        *,
        policy: Optional[str] = None,
        scale: Optional[float] = None,
        impl: str = "fused",
        num_threads: int = 0,
        out: Optional[Float32Array] = None,
    ) -> Float32Array:
        """Attention for the tokens of the latest append() over everything cached.

        q: float32 (batch, Hq, Lq, head_dim), row i of sequence b is its i-th new token; Lq at
        least the largest count appended. Other arguments as for mmca.attention. Rows beyond a
        sequence's appended count are 0.
        """
    def length(self, b: int) -> int:
        """Tokens cached for sequence b (IndexError outside [0, batch))."""
    def clear(self) -> None:
        """Forgets every cached token (the capacity and storage stay)."""
    @property
    def lengths(self) -> npt.NDArray[np.int64]:
        """Tokens cached per sequence: a new int64 array (batch,)."""
    @property
    def last_appended(self) -> npt.NDArray[np.int64]:
        """Tokens added per sequence by the latest append(): a new int64 array (batch,)."""
    @property
    def keys(self) -> KVArray:
        """Read-only view (no copy) of the key storage (batch, kv_heads, capacity, head_dim):
        float32, float16, or uint16 holding bfloat16 bits. Keeps the cache alive."""
    @property
    def values(self) -> KVArray:
        """Read-only view (no copy) of the value storage; see keys."""
    @property
    def capacity(self) -> int:
        """Tokens each sequence can hold."""
    @property
    def batch(self) -> int:
        """Number of sequences."""
    @property
    def kv_heads(self) -> int:
        """Number of key/value heads."""
    @property
    def head_dim(self) -> int:
        """Head dimension D."""
    @property
    def dtype(self) -> str:
        """Storage type name: 'float32', 'float16' or 'bfloat16'."""

class LlamaModel:
    """A LLaMa-2 decoder read from a safetensors checkpoint (memory-mapped, viewed in place), with a
    KV cache per layer and a chat generator whose cache survives across rounds."""

    def __init__(
        self,
        path: str,
        *,
        kv_dtype: str = "float32",
        context: int = 0,
        batch: int = 1,
        variant: str = "mmca",
        policy: Optional[str] = None,
        impl: str = "fused",
        num_threads: int = 0,
        names: str = "auto",
        config_path: str = "",
    ) -> None: ...
    @property
    def config(self) -> Dict[str, Any]:
        """The model's config as a dict (HF key names)."""
    @property
    def batch(self) -> int:
        """Sequences per call (B)."""
    @property
    def context(self) -> int:
        """Tokens each sequence may hold."""
    @property
    def kv_dtype(self) -> str:
        """Storage dtype of the KV cache."""
    def length(self, b: int = 0) -> int:
        """Tokens cached for sequence b."""
    def reset(self) -> None:
        """Forgets every cached token (a new conversation)."""
    def forward(
        self,
        embeddings: NDArray[np.float32],
        token_types: ArrayLike,
        *,
        image_ids: Optional[ArrayLike] = None,
        lens: Optional[ArrayLike] = None,
        logits: str = "all",
        out: Optional[NDArray[np.float32]] = None,
    ) -> Optional[NDArray[np.float32]]:
        """Runs new tokens (B, L, H) through the decoder, appending them to the cache; returns logits
        for all rows (B, L, V), the last new token (B, 1, V), or None."""
    def forward_tokens(
        self,
        ids: ArrayLike,
        *,
        lens: Optional[ArrayLike] = None,
        logits: str = "all",
        out: Optional[NDArray[np.float32]] = None,
    ) -> Optional[NDArray[np.float32]]:
        """Embeds text token ids (B, L) and runs forward()."""
    def embed(self, ids: ArrayLike) -> NDArray[np.float32]:
        """Token embeddings (..., H) float32 of ids (L,) or (B, L)."""
    def chat(
        self,
        prompt: Sequence[int],
        *,
        max_new_tokens: int = 128,
        temperature: float = 0.0,
        top_k: int = 0,
        top_p: float = 1.0,
        repetition_penalty: float = 1.0,
        seed: int = 0,
        eos_ids: Optional[Sequence[int]] = None,
    ) -> Tuple[List[int], str]:
        """One chat round (batch 1): prefills only the new prompt tokens on top of the cached
        conversation, then generates until EOS or max_new_tokens (temperature 0: greedy).
        Returns (tokens, reason) with reason 'eos', 'max_new_tokens' or 'context_full'."""

class SafetensorsFile:
    """A safetensors file, memory-mapped and validated on opening; tensor(name) is a read-only
    zero-copy numpy view (bfloat16 as uint16 bit patterns) that keeps the file open."""

    def __init__(self, path: str) -> None: ...
    def names(self) -> List[str]:
        """Tensor names in file order."""
    @property
    def metadata(self) -> Dict[str, str]:
        """The '__metadata__' map."""
    def dtype(self, name: str) -> str:
        """The safetensors dtype of a tensor ('F32', 'F16', 'BF16')."""
    def tensor(self, name: str) -> NDArray[Any]:
        """A read-only zero-copy numpy view of a tensor."""

def llama_preset(name: str) -> Dict[str, Any]:
    """The config of 'llama2-7b', 'llama2-13b' or 'llama2-70b' as a dict."""

def read_llama_config(path: str) -> Dict[str, Any]:
    """Parses an HF LLaMa config.json into a dict of the keys mmca uses."""

def estimate_llama_memory(
    config: Union[str, Dict[str, Any]],
    *,
    weight_dtype: str = "bfloat16",
    kv_dtype: str = "float32",
    batch: int = 1,
    context: int = 0,
    prefill_tokens: int = 512,
) -> Dict[str, int]:
    """Bytes a model and its KV cache need (a preset name or config dict), before loading anything."""
