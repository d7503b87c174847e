"""An independent float64 numpy implementation of the attention variants of SPEC §2.

Written from the specification's row rules, one query row at a time, so that it shares no code
(and no structure) with the C++ library: it is the oracle for mmca.attention and mmca.KVCache.

Notation as in SPEC §2: query row j, key column k, t = token type (0 pad, 1 text, 2 image).
Each row gets a list of terms; a term is a set of key positions with a weighting:
  "softmax"  softmax of the scores restricted to the set,
  "uniform"  equal weights over the set (the reference code's rows whose scores vanish next to
             finfo.min).
The row's output is the sum over its non-empty terms of (weights @ V). An empty term adds 0.
"""

import numpy as np

PAD, TEXT, IMAGE = 0, 1, 2


def bfloat16_bits(x):
    """float32 array -> uint16 bfloat16 bit patterns, rounded to nearest even."""
    bits = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
    return rounded.astype(np.uint16)


def bfloat16_to_float64(bits):
    """uint16 bfloat16 bit patterns -> float64 values (exact)."""
    return (np.asarray(bits, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32).astype(np.float64)


def image_index(types, image_ids=None):
    """Image index of every image token of one sequence (-1 elsewhere). Without explicit ids,
    each maximal run of image tokens is one image, numbered from 0."""
    types = np.asarray(types)
    if image_ids is not None:
        return np.where(types == IMAGE, np.asarray(image_ids), -1)
    ids = np.full(len(types), -1)
    current = -1
    for pos, t in enumerate(types):
        if t == IMAGE:
            if pos == 0 or types[pos - 1] != IMAGE:
                current += 1
            ids[pos] = current
    return ids


def row_terms(variant, policy, types, ids, j):
    """The terms [(kind, positions)] of the row at position j of a sequence with token types `types`."""
    n = len(types)
    pos = np.arange(n)
    t = np.asarray(types)
    tj = t[j]
    if tj == PAD:
        return []
    at_or_before = pos <= j
    before = pos < j
    after = pos > j
    real = t != PAD

    def where(mask):
        return np.nonzero(mask)[0]

    if variant == "causal":
        return [("softmax", where(at_or_before & real))]

    if variant == "mmca":
        if tj == IMAGE:
            return [("softmax", np.array([j]))]  # attends to itself only: O_j = V_j
        return [("softmax", where(at_or_before & (t == TEXT))),
                ("softmax", where(before & (t == IMAGE)))]

    if variant == "mmca_reference":
        other = IMAGE if tj == TEXT else TEXT
        first = ("softmax", where(at_or_before & (t == TEXT))) if tj == TEXT else ("softmax", np.array([j]))
        if np.any(before & (t == other)):
            second = ("softmax", where(before & (t == other)))
        else:
            # No earlier token of the other modality: a uniform average over every real token up to
            # and including j, plus the later tokens of the other modality.
            second = ("uniform", where((at_or_before & real) | (after & (t == other))))
        return [first, second]

    if variant == "causal_cross":
        if tj != TEXT:
            return []  # image rows are removed from the query side
        text = ("softmax", where(at_or_before & (t == TEXT)))
        images = t == IMAGE
        if policy == "all":
            visible = images
        elif policy == "preceding":
            visible = images & before
        elif policy == "latest":
            earlier = where(images & before)
            if len(earlier) == 0:
                visible = np.zeros(n, dtype=bool)
            else:
                latest = ids[earlier[-1]]
                visible = images & before & (ids == latest)
        else:
            raise ValueError(policy)
        return [text, ("softmax", where(visible))]

    raise ValueError(variant)


def attention(q, k, v, token_types, variant, image_ids=None, policy=None, scale=None, kv_lens=None, q_lens=None):
    """Float64 attention of SPEC §2. q (B, Hq, Lq, D); k, v (B, Hkv, Lk, D) as float64-convertible
    values (widen float16 / bfloat16 first); token_types (B, Lk). Returns (B, Hq, Lq, D) float64;
    rows that are padding (beyond q_lens, or pad tokens) are 0."""
    q = np.asarray(q, dtype=np.float64)
    k = np.asarray(k, dtype=np.float64)
    v = np.asarray(v, dtype=np.float64)
    token_types = np.asarray(token_types)
    batch, q_heads, q_len, dim = q.shape
    kv_heads, kv_len = k.shape[1], k.shape[2]
    group = q_heads // kv_heads
    scale = 1.0 / np.sqrt(dim) if scale is None else scale
    policy = "preceding" if policy is None else policy
    out = np.zeros(q.shape, dtype=np.float64)
    for b in range(batch):
        length = kv_len if kv_lens is None else int(kv_lens[b])
        rows = q_len if q_lens is None else int(q_lens[b])
        types = token_types[b, :length]
        ids = image_index(types, None if image_ids is None else np.asarray(image_ids)[b, :length])
        keys = np.repeat(k[b, :, :length], group, axis=0)    # (Hq, length, D)
        values = np.repeat(v[b, :, :length], group, axis=0)  # (Hq, length, D)
        for i in range(rows):
            j = length - rows + i
            scores = np.einsum("hd,hkd->hk", q[b, :, i], keys) * scale  # (Hq, length)
            for kind, positions in row_terms(variant, policy, types, ids, j):
                if len(positions) == 0:
                    continue
                if kind == "uniform":
                    weights = np.full((q_heads, len(positions)), 1.0 / len(positions))
                else:
                    s = scores[:, positions]
                    e = np.exp(s - s.max(axis=1, keepdims=True))
                    weights = e / e.sum(axis=1, keepdims=True)
                out[b, :, i] += np.einsum("hk,hkd->hd", weights, values[:, positions])
    return out
