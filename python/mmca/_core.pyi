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
    def backward(
        self,
        embeddings: NDArray[np.float32],
        token_types: ArrayLike,
        dlogits: NDArray[np.float32],
        *,
        image_ids: Optional[ArrayLike] = None,
        lens: Optional[ArrayLike] = None,
        cross_blocks: bool = True,
        lora: Optional[Dict[str, NDArray[np.float32]]] = None,
        lora_alpha: Optional[float] = None,
    ) -> Dict[str, Any]:
        """The training path (whole sequences, no cache): logits (B, L, V), dembeddings (B, L, H) and
        grads (gated cross-attention blocks' parameters 'model.cross_blocks.N.*' when cross_blocks,
        LoRA '...lora_A.weight' / '...lora_B.weight' when lora) for the gradient dlogits."""
    def lora_adapters(
        self, *, rank: int = 8, alpha: float = 16.0, targets: str = "qv", seed: int = 0,
    ) -> Dict[str, NDArray[np.float32]]:
        """Fresh LoRA adapters on q/k/v/o: 'model.layers.N.self_attn.P_proj.lora_A.weight' (rank, in),
        uniform on +-1/sqrt(in) from seed, and '...lora_B.weight' (out, rank), zero."""
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

class Projector:
    """A projector from image features to the language model's width (SPEC §4: 'baseline', 'vit',
    'perceiver'), read from a safetensors checkpoint by the reference model's tensor names."""

    def __init__(
        self,
        path: str,
        prefix: str = "projection.",
        kind: str = "auto",
        *,
        input_tokens: Optional[int] = None,
        has_cls: bool = False,
        heads: int = 0,
        vit_heads: int = 16,
        vit_act: str = "gelu",
        vit_eps: float = 1e-5,
        num_threads: int = 0,
    ) -> None: ...
    @property
    def kind(self) -> str:
        """'baseline', 'vit' or 'perceiver'."""
    @property
    def vision_dim(self) -> int:
        """Width of the image features (Dv)."""
    @property
    def hidden(self) -> int:
        """Width of the output rows (H)."""
    @property
    def num_threads(self) -> int:
        """Threads per call (0: the default)."""
    @property
    def config(self) -> Dict[str, Any]:
        """The projector's config as a dict."""
    def output_tokens(self, input_tokens: int) -> int:
        """Rows out per image for input_tokens rows in (T for baseline/vit, Q for perceiver)."""
    def project(self, x: NDArray[np.float32], *, out: Optional[NDArray[np.float32]] = None) -> NDArray[np.float32]:
        """Projects image features x (N, T, Dv) float32 to (N, T', H) float32 (written into out when given)."""

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
    image_tokens: int = -1,
) -> Dict[str, int]:
    """Bytes a model and its KV cache need (a preset name or config dict), before loading anything."""

# Images (bind_image.cpp; docs/vision.md, "Images").

image_presets: Tuple[str, ...]
"""Preprocessing presets: ('visualchat-448', 'qwen-vl-448', 'clip-224', 'clip-336')."""

import os

UInt8Array = npt.NDArray[np.uint8]
PathLike = Union[str, "os.PathLike[str]"]

def load_image(path: PathLike) -> UInt8Array:
    """Decode a JPEG or PNG file into (H, W, 3) uint8 RGB, as PIL's Image.open(path).convert("RGB").

    PNG results equal PIL's exactly; JPEG results differ by a few levels (different decoders).

    Raises:
        TypeError: path is not a str or os.PathLike.
        ValueError: a missing or unreadable file, data that is not a complete JPEG/PNG (the
            message names the path and the decoder's reason), or a zero-sized image.
    """

def decode_image(data: Union[bytes, bytearray, memoryview, UInt8Array]) -> UInt8Array:
    """Decode a JPEG or PNG held in memory into (H, W, 3) uint8 RGB (as load_image).

    Raises:
        TypeError: data is not a buffer of bytes.
        ValueError: data that is not a complete JPEG/PNG, or a zero-sized image.
    """

def resize_image(image: UInt8Array, height: int, width: int, *, num_threads: int = 0) -> UInt8Array:
    """Resize (H, W, 3) uint8 pixels with PIL's bicubic resampling; equal to Pillow 9.4's
    Image.resize((width, height), Image.BICUBIC) bit for bit.

    Raises:
        TypeError: image is not a uint8 numpy array.
        ValueError: a bad shape, layout or size.
    """

def preprocess_image(
    image: Union[UInt8Array, PathLike],
    preset: str = "visualchat-448",
    *,
    mode: Optional[str] = None,
    size: Optional[int] = None,
    crop: Optional[Union[int, Tuple[int, int]]] = None,
    mean: Optional[Sequence[float]] = None,
    std: Optional[Sequence[float]] = None,
    num_threads: int = 0,
    out: Optional[Float32Array] = None,
) -> Float32Array:
    """RGB pixels (H, W, 3) uint8, or an image file, to the normalised (3, H, W) float32 encoder input.

    Args:
        image: (H, W, 3) uint8 C-contiguous array (used in place), or a path.
        preset: one of image_presets; the keywords below override its options.
        mode: 'shortest_edge_crop' (shorter side to size, long side int(size * long / short),
            then a centre crop at ((h - ch) // 2, (w - cw) // 2), as transformers'
            CLIPImageProcessor) or 'direct_square' (size x size, as QWen-VL).
        size: shorter side, or the side of the square; without crop, the crop becomes size x size.
        crop: int or (height, width) of the centre crop.
        mean, std: 3 numbers each (R, G, B), for pixels rescaled to [0, 1].
        num_threads: threads of the resize; 0 means default_num_threads().
        out: float32, C-contiguous, writeable (3, H, W) array written in place and returned.

    Raises:
        TypeError: image is neither a uint8 array nor a path; out of the wrong dtype.
        ValueError: a bad shape or layout, an unknown preset or mode, a non-positive size or
            crop, std <= 0, or a file that cannot be decoded.
    """

def image_hash(image: UInt8Array) -> int:
    """64-bit FNV-1a of the height, width (8 little-endian bytes each) and pixels of (H, W, 3) uint8."""

def image_preset(name: str) -> Dict[str, Any]:
    """The options of a preset: mode, size, crop (h, w), mean, std, output_size (h, w)."""

# --- The text side of the chat pipeline (bind_text.cpp, docs/chat.md) ---------------------------

import os
from typing import Callable

Round = Union[Dict[str, Any], Tuple[str, str], Tuple[str, str, int]]

class Tokenizer:
    """LLaMa SentencePiece tokenizer with the added tokens '### Image:' (base_vocab_size + 0),
    '<image>' (+1) and '<PAD>' (+2), matched as whole pieces before SentencePiece sees the text.
    Padding uses EOS (pad_id == eos_id)."""

    def __init__(self, path: Union[str, "os.PathLike[str]"], *, strip_whitespace_around_added_tokens: bool = False) -> None:
        """Loads a SentencePiece model (LLaMa's tokenizer.model); ValueError when it cannot."""
    def encode(self, text: str, *, add_bos: bool = False, add_eos: bool = False) -> List[int]:
        """Token ids of text; BOS first / EOS last when asked."""
    def decode(self, ids: Sequence[int], *, skip_special: bool = False) -> str:
        """Text of ids (byte pieces joined into UTF-8); BOS/EOS/'<PAD>' dropped with skip_special."""
    def id_to_piece(self, id: int) -> str:
        """The piece of an id."""
    def piece_to_id(self, piece: str) -> int:
        """The id of a piece or added token, or -1."""
    @property
    def vocab_size(self) -> int:
        """Pieces plus the 3 added tokens (32003 for LLaMa)."""
    @property
    def base_vocab_size(self) -> int:
        """SentencePiece pieces (32000 for LLaMa)."""
    @property
    def bos_id(self) -> int: ...
    @property
    def eos_id(self) -> int: ...
    @property
    def unk_id(self) -> int: ...
    @property
    def pad_id(self) -> int:
        """Padding id: EOS."""
    @property
    def image_header_id(self) -> int:
        """Id of '### Image:'."""
    @property
    def image_id(self) -> int:
        """Id of '<image>'."""
    @property
    def pad_token_id(self) -> int:
        """Id of '<PAD>'."""

def render_conversation(
    rounds: Sequence[Round],
    *,
    system_prompt: bool = True,
    numbering: str = "string_level",
    first_image_number: int = 1,
) -> str:
    """The text of a conversation in the DeepSpeed-VisualChat template (SPEC §6).

    Args:
        rounds: dicts {'question': str, 'answer': str, 'images': int} (the rounds of mmca.blend's
            output) or (question, answer[, images]) tuples.
        system_prompt: start the first round with the system prompt.
        numbering: 'string_level' ('### Image N:' in the text) or 'token_level' (bare '### Image:').
        first_image_number: N of the first image.
    """

def tokenize_conversation(
    tokenizer: Tokenizer,
    rounds: Sequence[Round],
    *,
    system_prompt: bool = True,
    numbering: str = "string_level",
    first_image_number: int = 1,
) -> Dict[str, Any]:
    """Token ids and labels: per round BOS, instruction, answer, EOS; labels -100 except on the
    answer and its EOS. Returns input_ids (L,) int32, labels (L,) int32, image_positions
    (num_images,) int64, round_starts (rounds,) int64 and num_images (int)."""

def blend(
    llava_files: Sequence[Union[str, "os.PathLike[str]"]],
    output: Union[str, "os.PathLike[str]"],
    *,
    mode: str = "random_concat",
    cgd_file: Optional[Union[str, "os.PathLike[str]"]] = None,
    image_root: Optional[Union[str, "os.PathLike[str]"]] = None,
    max_group: int = 3,
    seed: int = 0,
    split_seed: int = 1234,
    eval_fraction: float = 0.1,
    style: str = "random",
    followup: bool = False,
    max_images: int = 8,
    progress: Optional[Callable[[int, int], None]] = None,
) -> Dict[str, int]:
    """Multi-image multi-round training data from LLaVA (and MIMIC-IT CGD) files (SPEC §7); the
    formats are in docs/chat.md. The output is written to a temporary file and renamed when
    complete. Returns the counts samples_read, samples_written, train_samples, eval_samples,
    skipped_malformed, skipped_missing_image, skipped_too_many_images, skipped_no_conversation."""

class QwenViT:
    """The QWen-VL vision encoder (SPEC §3) from a safetensors checkpoint: images (N, 3, S, S) ->
    features (N, Q, E) (QWen-VL: S 448, Q 256, E 4096). Widths, patch size, layers, position grid and
    queries come from the tensor shapes; heads, pool_heads (0: E / 128), image_size and eps from here."""

    def __init__(
        self,
        path: str,
        prefix: str = "vis_encoder.",
        *,
        image_size: int = 448,
        heads: int = 16,
        pool_heads: int = 0,
        eps: float = 1e-6,
        num_threads: int = 0,
    ) -> None: ...
    @property
    def config(self) -> Dict[str, Any]:
        """The encoder's shape as a dict (tokens: patch tokens per image)."""
    @property
    def image_size(self) -> int:
        """Input side S in pixels."""
    @property
    def output_shape(self) -> Tuple[int, int]:
        """(Q, E): the features of one image."""
    @property
    def num_threads(self) -> int:
        """Threads per call (0: the default)."""
    @num_threads.setter
    def num_threads(self, value: int) -> None: ...
    def encode(self, images: Float32Array, *, out: Optional[Float32Array] = None) -> Float32Array:
        """Features (N, Q, E) float32 of normalised images (N, 3, S, S) float32 (C-contiguous, never copied)."""

class ClipViT:
    """The vision tower of HF CLIP (CLIPVisionModel) from a safetensors checkpoint: images (N, C, S, S)
    -> hidden states (N, 1 + (S/P)², W), CLS row first. config: None (shapes from the tensors, heads
    hidden_size / 64, eps 1e-5, quick_gelu), a preset name, a config.json path or a dict of HF keys."""

    def __init__(
        self,
        path: str,
        prefix: str = "vision_model.",
        *,
        config: Union[None, str, Dict[str, Any]] = None,
        num_threads: int = 0,
    ) -> None: ...
    @property
    def config(self) -> Dict[str, Any]:
        """The tower's config as a dict (HF key names; tokens: 1 + (S/P)²)."""
    @property
    def image_size(self) -> int:
        """Input side S in pixels."""
    @property
    def num_threads(self) -> int:
        """Threads per call (0: the default)."""
    @num_threads.setter
    def num_threads(self, value: int) -> None: ...
    def encode(
        self, images: Float32Array, output: str = "last_hidden_state", *, out: Optional[Float32Array] = None
    ) -> Float32Array:
        """Hidden states (N, 1 + (S/P)², W) float32: 'last_hidden_state' (the last layer's output, no
        post_layernorm) or 'penultimate' (hidden_states[-2], one layer less is run)."""

def clip_vit_preset(name: str) -> Dict[str, Any]:
    """The config of 'vit-l-14-224' or 'vit-l-14-336' as a dict (HF key names)."""

def sincos_2d(grid: int, dim: int) -> Float32Array:
    """The (grid², dim) 2D sin-cos table (SPEC §3): row r·grid + c is [sin(c·ω), cos(c·ω), sin(r·ω),
    cos(r·ω)] with ω_i = 10000^(−i/(dim/4))."""

def bicubic_resize_table(table: Float32Array, grid_out: int) -> Float32Array:
    """A (g², D) float32 position table resampled to (grid_out², D) as F.interpolate(mode="bicubic",
    align_corners=False) does on its (D, g, g) image."""

# The visual-chat model (bind_visual_chat.cpp; docs/vision.md, "The visual-chat model").

class VisualChatModel:
    """Encoder (QWen-VL ViT or CLIP) + projector + LLaMa-2 decoder from one checkpoint with the
    reference names (vis_encoder.*, projection.*, lang_decoder.*, lang_embed.weight)."""

    def __init__(
        self,
        path: str,
        *,
        config: str = "",
        variant: str = "mmca",
        policy: Optional[str] = None,
        kv_dtype: str = "float32",
        batch: int = 1,
        context: int = 0,
        image_token_id: int = 32001,
        max_images: int = 8,
        image_order: str = "in_order",
        image_cache: int = 32,
        clip_layer: str = "last_hidden_state",
        image_size: int = 0,
        vision_heads: int = 0,
        pool_heads: int = 0,
        projector_heads: int = 0,
        projector_layer_heads: int = 0,
        projector_act: str = "gelu",
        num_threads: int = 0,
    ) -> None: ...
    @property
    def image_size(self) -> int: ...
    @property
    def tokens_per_image(self) -> int: ...
    @property
    def hidden_size(self) -> int: ...
    @property
    def vocab_size(self) -> int: ...
    @property
    def batch(self) -> int: ...
    @property
    def context(self) -> int: ...
    @property
    def image_token_id(self) -> int: ...
    @property
    def encoder(self) -> str:
        """'qwen_vit' or 'clip_vit'."""
    @property
    def projector(self) -> str:
        """'baseline', 'vit' or 'perceiver'."""
    @property
    def images_embedded(self) -> int:
        """Images run through the vision tower so far (cache hits do not count)."""
    @property
    def cached_images(self) -> int: ...
    @property
    def images_in_context(self) -> int: ...
    @property
    def length(self) -> int:
        """Tokens cached for sequence 0 (after splicing)."""
    def embed_images(self, images: NDArray[np.float32]) -> NDArray[np.float32]:
        """(n, T, H): the projector's rows of preprocessed images (n, 3, S, S)."""
    def forward(
        self,
        ids: Sequence[ArrayLike],
        images: Optional[Sequence[Optional[NDArray[np.float32]]]] = None,
        labels: Optional[Sequence[ArrayLike]] = None,
    ) -> Dict[str, Any]:
        """Runs up to `batch` sequences from scratch: logits (B, L, V), loss, count, lengths,
        token_types, image_ids, labels of the spliced sequences."""
    def loss_and_grads(
        self,
        ids: Sequence[ArrayLike],
        images: Optional[Sequence[Optional[NDArray[np.float32]]]] = None,
        labels: Optional[Sequence[ArrayLike]] = None,
        *,
        embedding: bool = True,
        projector: bool = True,
        normalizer: float = 0.0,
        cross_blocks: bool = False,
        lora: Optional[Dict[str, NDArray[np.float32]]] = None,
        lora_alpha: Optional[float] = None,
    ) -> Dict[str, Any]:
        """Loss of a batch and the gradients of the token embedding ('lang_embed.weight') and the
        projector ('projection.*') through the frozen decoder: loss, count, grads. cross_blocks adds
        the gated cross-attention blocks' parameters ('lang_decoder.model.cross_blocks.N.*'); lora
        (with lora_alpha) runs the decoder with adapters and adds their gradients."""
    def lora_adapters(
        self, *, rank: int = 8, alpha: float = 16.0, targets: str = "qv", seed: int = 0,
    ) -> Dict[str, NDArray[np.float32]]:
        """Fresh LoRA adapters for the decoder ('lang_decoder.model.layers.N.self_attn.P_proj.lora_A.weight'
        (rank, in) uniform on +-1/sqrt(in), '...lora_B.weight' (out, rank) zero)."""
    def append(self, ids: ArrayLike, images: Optional[NDArray[np.float32]] = None) -> NDArray[np.float32]:
        """Appends a chunk to the cache; the last token's logits (V,)."""
    def chat(
        self,
        ids: ArrayLike,
        images: Optional[NDArray[np.float32]] = None,
        *,
        max_new_tokens: int = 128,
        temperature: float = 0.0,
        top_k: int = 0,
        top_p: float = 1.0,
        repetition_penalty: float = 1.0,
        seed: int = 0,
        eos_ids: Optional[List[int]] = None,
        on_token: Optional[Callable[[int], bool]] = None,
    ) -> Tuple[List[int], str]:
        """One chat round on the cache; returns (tokens, stop reason)."""
    def reset(self) -> None:
        """Forgets the conversation (the image cache stays)."""
    def clear_image_cache(self) -> None: ...

class _GradModule:
    """mmca.grad: backward passes of the trainable path (docs/training.md). All results are float32."""
    def linear_backward(
        self, x: NDArray[np.float32], weight: NDArray[Any], dy: NDArray[np.float32], *,
        weight_grad: bool = True, bias_grad: bool = True, num_threads: int = 0,
    ) -> Tuple[NDArray[np.float32], Optional[NDArray[np.float32]], Optional[NDArray[np.float32]]]: ...
    def rmsnorm_backward(
        self, x: NDArray[np.float32], weight: NDArray[np.float32], dy: NDArray[np.float32], *,
        eps: float = 1e-5, num_threads: int = 0,
    ) -> Tuple[NDArray[np.float32], NDArray[np.float32]]: ...
    def layernorm_backward(
        self, x: NDArray[np.float32], weight: NDArray[np.float32], dy: NDArray[np.float32], *,
        eps: float = 1e-5, num_threads: int = 0,
    ) -> Tuple[NDArray[np.float32], NDArray[np.float32], NDArray[np.float32]]: ...
    def swiglu_backward(
        self, x: NDArray[np.float32], gate: NDArray[Any], up: NDArray[Any], down: NDArray[Any],
        dy: NDArray[np.float32], *, num_threads: int = 0,
    ) -> Tuple[NDArray[np.float32], NDArray[np.float32], NDArray[np.float32], NDArray[np.float32]]: ...
    def rope_backward(
        self, dy: NDArray[np.float32], positions: ArrayLike, *, heads: int, head_dim: int, theta: float = 10000.0,
        scaling: str = "none", factor: float = 1.0, max_positions: int = 2048, total_len: Optional[int] = None,
    ) -> NDArray[np.float32]: ...
    def activation_backward(
        self, x: NDArray[np.float32], dy: NDArray[np.float32], *, activation: str = "gelu", num_threads: int = 0,
    ) -> NDArray[np.float32]: ...
    def cross_entropy(
        self, logits: NDArray[np.float32], labels: ArrayLike, *, normalizer: float = 0.0, num_threads: int = 0,
    ) -> Tuple[float, NDArray[np.float32]]: ...
    def embedding_backward(
        self, ids: ArrayLike, dy: NDArray[np.float32], *, vocab: int, num_threads: int = 0,
    ) -> NDArray[np.float32]: ...
    def dense_attention_backward(
        self, q: NDArray[np.float32], k: NDArray[np.float32], v: NDArray[np.float32], dout: NDArray[np.float32], *,
        heads: int, scale: Optional[float] = None, num_threads: int = 0,
    ) -> Tuple[NDArray[np.float32], NDArray[np.float32], NDArray[np.float32]]: ...
    def projector_backward(
        self, path: str, x: NDArray[np.float32], dy: NDArray[np.float32], *, prefix: str = "projection.",
        kind: str = "auto", input_tokens: Optional[int] = None, has_cls: bool = False, heads: int = 0,
        vit_heads: int = 16, vit_act: str = "gelu", vit_eps: float = 1e-5, num_threads: int = 0,
    ) -> Tuple[NDArray[np.float32], NDArray[np.float32], Dict[str, NDArray[np.float32]]]: ...
    def lora_merge(
        self, weight: NDArray[Any], lora_a: NDArray[np.float32], lora_b: NDArray[np.float32], *, alpha: float,
    ) -> NDArray[np.float32]:
        """W + (alpha / r) * B @ A as a new float32 [out, in] array."""

grad: _GradModule

AttentionStats = Tuple[Float32Array, Float32Array, Float32Array]
"""(row_max (B, Hq, Lq, 2), row_sum (B, Hq, Lq, 2), group_out (B, Hq, Lq, 2, D)), float32."""

def attention_with_stats(
    q: Float32Array,
    k: Float32Array,
    v: Float32Array,
    token_types: IntArrayLike,
    variant: str,
    *,
    image_ids: Optional[IntArrayLike] = None,
    policy: Optional[str] = None,
    scale: Optional[float] = None,
    kv_lens: Optional[IntArrayLike] = None,
    q_lens: Optional[IntArrayLike] = None,
    num_threads: int = 0,
) -> Tuple[Float32Array, AttentionStats]:
    """mmca.attention (fused, float32 K/V) that also returns (out, stats) for attention_backward.

    stats per query row and key group g (0: own-modality/causal, 1: other-modality/cross):
    row_max, the largest scaled score (0 for a uniform group, -inf when empty); row_sum, the sum of
    exp(S - row_max); group_out, the group's term of the output.
    """

def attention_backward(
    q: Float32Array,
    k: Float32Array,
    v: Float32Array,
    dout: Float32Array,
    token_types: IntArrayLike,
    variant: str,
    *,
    image_ids: Optional[IntArrayLike] = None,
    policy: Optional[str] = None,
    scale: Optional[float] = None,
    kv_lens: Optional[IntArrayLike] = None,
    q_lens: Optional[IntArrayLike] = None,
    num_threads: int = 0,
    impl: str = "fused",
    stats: Optional[AttentionStats] = None,
) -> Tuple[Float32Array, Float32Array, Float32Array]:
    """(dq, dk, dv): gradients of sum(dout * attention(q, k, v, ...)), float32, shapes of q, k, v.

    stats: from attention_with_stats for the same inputs; None runs the forward with stats first.
    impl: 'fused' (default) or 'reference' (explicit masks in double precision; ignores stats).
    Uniform-average groups (mmca_reference's degenerate rows) send gradient to v only.
    """

# ---- training: optimizer, schedule, clipping, checkpoints (bind_train.cpp) ----

class AdamW:
    """AdamW (decoupled weight decay) as torch.optim.AdamW, updating float32 arrays in place."""

    def __init__(
        self,
        params: Union[Dict[str, NDArray[np.float32]], Sequence[NDArray[np.float32]]],
        *,
        lr: float = 1e-3,
        betas: Tuple[float, float] = (0.9, 0.95),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        no_decay: List[str] = ...,
        num_threads: int = 0,
    ) -> None: ...
    def step(
        self,
        grads: Union[Dict[str, NDArray[np.float32]], Sequence[NDArray[np.float32]]],
        *,
        lr: Optional[float] = None,
    ) -> None:
        """One update of every parameter in place (lr: this update's rate; default self.lr)."""
    @property
    def step_count(self) -> int: ...
    @step_count.setter
    def step_count(self, value: int) -> None: ...
    @property
    def lr(self) -> float: ...
    @lr.setter
    def lr(self, value: float) -> None: ...
    @property
    def betas(self) -> Tuple[float, float]: ...
    @property
    def eps(self) -> float: ...
    @property
    def weight_decay(self) -> float: ...
    @property
    def names(self) -> List[str]: ...
    @property
    def params(self) -> Dict[str, NDArray[np.float32]]: ...
    def exp_avg(self, name: str) -> NDArray[np.float32]:
        """A view of the first moment of a parameter."""
    def exp_avg_sq(self, name: str) -> NDArray[np.float32]:
        """A view of the second moment of a parameter."""

def lr_schedule(
    step: int,
    base_lr: float,
    total_steps: int,
    *,
    warmup_steps: int = 0,
    warmup_ratio: Optional[float] = None,
    min_lr: float = 0.0,
    num_cycles: float = 0.5,
) -> float:
    """Linear warm-up then cosine decay, as transformers.get_cosine_schedule_with_warmup."""

def warmup_steps_from_ratio(ratio: float, total_steps: int) -> int:
    """ceil(ratio * total_steps)."""

def clip_grad_norm(
    grads: Union[Dict[str, NDArray[np.float32]], Sequence[NDArray[np.float32]]],
    max_norm: float,
    *,
    num_threads: int = 0,
) -> float:
    """Clips in place by the global L2 norm (torch.nn.utils.clip_grad_norm_); returns the norm."""

def save_safetensors(
    path: str,
    tensors: Dict[str, NDArray[Any]],
    metadata: Optional[Dict[str, str]] = None,
    *,
    dtypes: Optional[Dict[str, str]] = None,
) -> None:
    """Writes arrays as a safetensors file atomically ('BF16' in dtypes for uint16 bfloat16 bits)."""

def save_train_state(
    path: str,
    optimizer: AdamW,
    *,
    epoch: int = 0,
    data_position: int = 0,
    rng_state: Optional[str] = None,
    config: Optional[Dict[str, str]] = None,
) -> None:
    """Saves parameters, AdamW moments and step, epoch, data position, RNG state and config."""

def load_train_state(path: str, optimizer: AdamW) -> Dict[str, Any]:
    """Loads a train state into the optimizer; returns step, epoch, data_position, rng_state, config."""

# The synthetic task (bind_data.cpp; docs/training.md).

def synthetic_sample(
    seed: int,
    index: int,
    *,
    image_size: int = 56,
    grid: int = 2,
    max_images: int = 4,
    max_shapes: int = 3,
    max_rounds: int = 3,
) -> Dict[str, Any]:
    """Sample `index` of the synthetic multi-image task: images, shapes, rounds."""

class ChatSession:
    """A multi-round, multi-image conversation on a VisualChatModel with a Tokenizer (docs/chat.md)."""

    def __init__(
        self,
        model: VisualChatModel,
        tokenizer: Tokenizer,
        *,
        system_prompt: bool = True,
        numbering: str = "string_level",
        preset: str = "visualchat-448",
        max_new_tokens: int = 256,
        temperature: float = 0.0,
        top_k: int = 0,
        top_p: float = 1.0,
        repetition_penalty: float = 1.0,
        seed: int = 0,
        eos_ids: Optional[List[int]] = None,
    ) -> None: ...
    def ask(
        self,
        question: str,
        images: Optional[Sequence[Union[str, "os.PathLike[str]", NDArray[np.uint8]]]] = None,
        *,
        on_text: Optional[Callable[[str], Optional[bool]]] = None,
        on_image: Optional[Callable[[int, int], None]] = None,
    ) -> Dict[str, Any]:
        """Answers a question about 0..n images: text, tokens, reason, prompt_tokens, images,
        encode_seconds, seconds."""
    def clear(self) -> None:
        """Starts a new conversation (the image cache stays)."""
    @property
    def rounds(self) -> int: ...
    @property
    def images_shown(self) -> int: ...

# The trainer (bind_trainer.cpp; docs/training.md, "The trainer").

class ConversationData:
    """Training examples from the blended conversation format (mmca.blend's JSON): one split,
    tokenized with the SPEC §6 template; images preprocessed (preset's rule at image_size) when an
    example is built, from image_root/<path> (default: the JSON file's folder)."""

    def __init__(
        self,
        path: PathLike,
        tokenizer: Tokenizer,
        *,
        split: str = "train",
        image_root: Optional[PathLike] = None,
        image_size: int = 448,
        preset: str = "visualchat-448",
        system_prompt: bool = True,
        numbering: str = "string_level",
        limit: int = 0,
    ) -> None: ...
    def __len__(self) -> int: ...
    def example(self, index: int) -> Dict[str, Any]:
        """ids, labels (int32) and images (n, 3, S, S) float32."""
    def rounds(self, index: int) -> int: ...
    def image_paths(self, index: int) -> List[str]: ...

TrainingData = Union[ConversationData, Sequence[Dict[str, Any]]]

class Trainer:
    """Trains a VisualChatModel's projector and token embedding (optionally its gated
    cross-attention blocks and LoRA adapters on q/k/v/o) with AdamW, warm-up + cosine, clipping and
    gradient accumulation; save()/load() resume bit for bit. The model then uses the trained
    float32 copies. data: a ConversationData or a list of dicts {ids, labels, images}."""

    def __init__(
        self,
        model: VisualChatModel,
        data: TrainingData,
        *,
        projector: bool = True,
        embedding: bool = True,
        cross_blocks: bool = False,
        lora: Optional[str] = None,
        lora_rank: int = 8,
        lora_alpha: float = 16.0,
        lora_seed: int = 0,
        lr: float = 1e-3,
        betas: Tuple[float, float] = (0.9, 0.95),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        warmup_ratio: float = 0.1,
        warmup_steps: Optional[int] = None,
        min_lr: float = 0.0,
        max_grad_norm: float = 1.0,
        micro_batch: int = 1,
        accumulation: int = 1,
        loss_averaging: str = "micro_batch_mean",
        epochs: int = 1,
        total_steps: int = 0,
        seed: int = 0,
        shuffle: bool = True,
        num_threads: int = -1,
        progress: Optional[str] = None,
        log_every: int = 10,
    ) -> None: ...
    def step(self) -> Dict[str, Any]:
        """One optimizer step: {step, loss, lr, grad_norm, samples, tokens, skipped}."""
    def run(self, max_steps: int = 0) -> List[Dict[str, Any]]:
        """Steps until total_steps (at most max_steps more when > 0)."""
    def evaluate(self, data: Optional[TrainingData] = None, limit: int = 0) -> Dict[str, Any]:
        """loss, tokens, rounds, correct, accuracy, round_correct, example_rounds (greedy answers)."""
    def save(self, path: PathLike, config: Optional[Dict[str, str]] = None) -> None: ...
    def load(self, path: PathLike) -> Dict[str, str]: ...
    def save_weights(self, path: PathLike, metadata: Optional[Dict[str, str]] = None) -> None: ...
    def parameter(self, name: str) -> NDArray[np.float32]: ...
    def exp_avg(self, name: str) -> NDArray[np.float32]: ...
    def exp_avg_sq(self, name: str) -> NDArray[np.float32]: ...
    def lr_at(self, step: int) -> float: ...
    @property
    def names(self) -> List[str]: ...
    @property
    def step_count(self) -> int: ...
    @property
    def total_steps(self) -> int: ...
    @property
    def steps_per_epoch(self) -> int: ...
    @property
    def samples_seen(self) -> int: ...
    @property
    def epoch(self) -> int: ...
    @property
    def data_position(self) -> int: ...
    @property
    def done(self) -> bool: ...
    @property
    def epoch_order(self) -> List[int]: ...
    @property
    def history(self) -> List[Dict[str, Any]]: ...
