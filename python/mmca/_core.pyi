"""Type stubs of the private extension module mmca._core (re-exported by the mmca package)."""

from typing import Optional, Tuple, Union

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
