"""mmca.KVCache: prefill in one go, in chunks or token by token gives the rows of a full prefill."""

import numpy as np
import pytest

import mmca
import mmca_oracle
import sample_data

RTOL, ATOL = 1e-5, 1e-6
NO_LOOKAHEAD = [("causal", None), ("mmca", None), ("causal_cross", "preceding"), ("causal_cross", "latest")]
IDS = [v if p is None else f"{v}-{p}" for v, p in NO_LOOKAHEAD]


def stored(values, dtype):
    """What a cache of `dtype` stores for float32 values, as float64 (the rounding is numpy's own)."""
    if dtype == "float32":
        return values.astype(np.float64)
    if dtype == "float16":
        return values.astype(np.float16).astype(np.float64)
    return mmca_oracle.bfloat16_to_float64(mmca_oracle.bfloat16_bits(values))


def decode(cache, q, k, v, types, variant, policy, chunks):
    """Appends the sequence in the given chunk sizes; returns the rows computed for each chunk."""
    out = np.zeros_like(q)
    start = 0
    for size in chunks:
        stop = start + size
        cache.append(np.ascontiguousarray(k[:, :, start:stop]), np.ascontiguousarray(v[:, :, start:stop]),
                     types[:, start:stop])
        out[:, :, start:stop] = cache.attention(np.ascontiguousarray(q[:, :, start:stop]), variant, policy=policy)
        start = stop
    return out


@pytest.mark.parametrize("variant,policy", NO_LOOKAHEAD, ids=IDS)
@pytest.mark.parametrize("chunks", [[27], [1] * 27, [5, 6, 1, 1, 14]], ids=["prefill", "tokens", "chunks"])
@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_decoding_equals_full_prefill(qkv, batch, variant, policy, chunks, dtype):
    q, k, v = qkv
    types = batch["token_types"]
    cache = mmca.KVCache(2, 2, 32, 16, dtype=dtype)
    got = decode(cache, q, k, v, types, variant, policy, chunks)
    assert cache.lengths.tolist() == [27, 27]
    assert cache.last_appended.tolist() == [chunks[-1]] * 2
    want = mmca_oracle.attention(q, stored(k, dtype), stored(v, dtype), types, variant, policy=policy)
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)
    if dtype == "float32":  # and the same as one mmca.attention call over the whole sequence
        full = mmca.attention(q, k, v, types, variant, policy=policy)
        np.testing.assert_allclose(got, full, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_storage_views_hold_the_rounded_values(rng, dtype):
    cache = mmca.KVCache(2, 2, 8, 16, dtype=dtype)
    k = rng.standard_normal((2, 2, 5, 16), dtype=np.float32)
    v = rng.standard_normal((2, 2, 5, 16), dtype=np.float32)
    cache.append(k, v, np.ones((2, 5), dtype=np.int8))
    expected_dtype = {"float32": np.float32, "float16": np.float16, "bfloat16": np.uint16}[dtype]
    assert cache.keys.dtype == expected_dtype and cache.values.dtype == expected_dtype
    keys = cache.keys[:, :, :5]
    if dtype == "bfloat16":
        np.testing.assert_array_equal(keys, mmca_oracle.bfloat16_bits(k))  # round to nearest even
        np.testing.assert_array_equal(cache.values[:, :, :5], mmca_oracle.bfloat16_bits(v))
    else:
        np.testing.assert_array_equal(keys, k.astype(expected_dtype))
        np.testing.assert_array_equal(cache.values[:, :, :5], v.astype(expected_dtype))


def test_ragged_appends_with_lens_and_image_ids(rng, batch):
    """Sequences of different lengths: lens picks the valid new tokens of each sequence."""
    q, k, v = sample_data.random_qkv(rng)
    types, ids = batch["token_types"], batch["image_ids"]
    cache = mmca.KVCache(2, 2, 40, 16)
    cache.append(k[:, :, :20].copy(), v[:, :, :20].copy(), types[:, :20], image_ids=ids[:, :20], lens=[20, 18])
    assert cache.lengths.tolist() == [20, 18] and [cache.length(0), cache.length(1)] == [20, 18]
    # The next step appends text token 20 of sequence 0 and text tokens 18..20 of sequence 1.
    step_k = np.zeros((2, 2, 3, 16), dtype=np.float32)
    step_v = np.zeros_like(step_k)
    step_types = np.zeros((2, 3), dtype=np.int8)
    step_ids = np.full((2, 3), -1)
    for b, (first, count) in enumerate([(20, 1), (18, 3)]):
        step_k[b, :, :count] = k[b, :, first:first + count]
        step_v[b, :, :count] = v[b, :, first:first + count]
        step_types[b, :count] = types[b, first:first + count]
        step_ids[b, :count] = ids[b, first:first + count]
    cache.append(step_k, step_v, step_types, image_ids=step_ids, lens=[1, 3])
    assert cache.lengths.tolist() == [21, 21] and cache.last_appended.tolist() == [1, 3]
    step_q = np.zeros((2, 4, 3, 16), dtype=np.float32)
    step_q[0, :, 0] = q[0, :, 20]
    step_q[1] = q[1, :, 18:21]
    got = cache.attention(step_q, "causal_cross", policy="latest")
    kv_lens, q_lens = [21, 21], [1, 3]
    q_oracle = np.zeros_like(step_q)
    q_oracle[0, :, 0], q_oracle[1] = step_q[0, :, 0], step_q[1]
    want = mmca_oracle.attention(q_oracle, k, v, types, "causal_cross", policy="latest", image_ids=ids,
                                 kv_lens=kv_lens, q_lens=q_lens)
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)
    assert not got[0, :, 1:].any()  # rows beyond the appended count are 0


def test_reference_impl_over_the_cache(qkv, batch):
    q, k, v = qkv
    cache = mmca.KVCache(2, 2, 27, 16)
    cache.append(k, v, batch["token_types"])
    np.testing.assert_allclose(cache.attention(q, "mmca_reference", impl="reference"),
                               cache.attention(q, "mmca_reference"), rtol=RTOL, atol=ATOL)


def test_clear_and_reuse(qkv, batch):
    q, k, v = qkv
    cache = mmca.KVCache(2, 2, 27, 16)
    cache.append(k, v, batch["token_types"])
    first = cache.attention(q, "mmca")
    cache.clear()
    assert cache.lengths.tolist() == [0, 0]
    cache.append(k, v, batch["token_types"])
    np.testing.assert_array_equal(cache.attention(q, "mmca"), first)


def test_properties_and_repr():
    cache = mmca.KVCache(3, 2, 17, 8, dtype="bfloat16")
    assert (cache.batch, cache.kv_heads, cache.capacity, cache.head_dim, cache.dtype) == (3, 2, 17, 8, "bfloat16")
    assert cache.keys.shape == (3, 2, 17, 8)
    assert repr(cache) == "mmca.KVCache(batch=3, kv_heads=2, capacity=17, head_dim=8, dtype='bfloat16')"
