"""Inputs shared by the tests: interleaved token layouts and random tensors."""

import numpy as np

# Runs of (token type, count); 0 pad, 1 text, 2 image.
# Sequence 0 starts with text (rows before the first image), has two images and right padding;
# sequence 1 starts with an image (image rows with no earlier text) and has two adjacent images
# that only image_ids tell apart.
SEQUENCE_0 = [(1, 5), (2, 6), (1, 4), (2, 5), (1, 3), (0, 4)]
SEQUENCE_1 = [(2, 4), (2, 3), (1, 6), (2, 4), (1, 10)]
IMAGE_IDS_0 = [-1] * 5 + [0] * 6 + [-1] * 4 + [1] * 5 + [-1] * 7
IMAGE_IDS_1 = [0] * 4 + [1] * 3 + [-1] * 6 + [2] * 4 + [-1] * 10
KV_LENS = [23, 27]
LENGTH = 27


def expand(runs):
    """Token types of a list of runs."""
    return np.array([t for t, n in runs for _ in range(n)], dtype=np.int64)


def make_batch():
    """Token metadata of a batch of two sequences of 27 keys (sequence 0 valid up to 23)."""
    return {
        "token_types": np.stack([expand(SEQUENCE_0), expand(SEQUENCE_1)]),
        "image_ids": np.array([IMAGE_IDS_0, IMAGE_IDS_1]),
        "kv_lens": np.array(KV_LENS),
    }


def random_qkv(rng, batch=2, q_heads=4, kv_heads=2, q_len=LENGTH, kv_len=LENGTH, dim=16):
    """Random float32 q (batch, q_heads, q_len, dim) and k, v (batch, kv_heads, kv_len, dim)."""
    q = rng.standard_normal((batch, q_heads, q_len, dim), dtype=np.float32)
    k = rng.standard_normal((batch, kv_heads, kv_len, dim), dtype=np.float32)
    v = rng.standard_normal((batch, kv_heads, kv_len, dim), dtype=np.float32)
    return q, k, v
