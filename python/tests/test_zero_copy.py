"""Tensors cross the Python/C++ boundary without copies."""

import tracemalloc

import numpy as np
import pytest

import mmca
import sample_data


def data_pointer(a):
    return a.__array_interface__["data"][0]


def test_result_is_written_into_the_callers_buffer(qkv, batch):
    q, k, v = qkv
    out = np.full(q.shape, np.nan, dtype=np.float32)
    pointer = data_pointer(out)
    result = mmca.attention(q, k, v, batch["token_types"], "mmca", out=out)
    assert result is out
    assert data_pointer(result) == pointer
    assert np.shares_memory(result, out)
    assert not np.isnan(out).any()
    np.testing.assert_array_equal(out, mmca.attention(q, k, v, batch["token_types"], "mmca"))


def test_out_may_be_a_contiguous_view_into_a_larger_buffer(qkv, batch):
    q, k, v = qkv
    arena = np.zeros((3,) + q.shape, dtype=np.float32)
    out = arena[1]  # C-contiguous view
    result = mmca.attention(q, k, v, batch["token_types"], "causal", out=out)
    assert result is out and np.shares_memory(result, arena)
    assert not arena[0].any() and not arena[2].any()
    np.testing.assert_array_equal(arena[1], mmca.attention(q, k, v, batch["token_types"], "causal"))


def test_kv_cache_attention_writes_into_out(rng, batch):
    q, k, v = sample_data.random_qkv(rng)
    cache = mmca.KVCache(2, 2, 32, 16)
    cache.append(k, v, batch["token_types"])
    out = np.empty_like(q)
    assert cache.attention(q, "mmca", out=out) is out
    np.testing.assert_array_equal(out, mmca.attention(q, k, v, batch["token_types"], "mmca"))


@pytest.mark.parametrize("kv_dtype", [np.float32, np.float16])
def test_no_numpy_copies_of_large_inputs(rng, kv_dtype):
    """numpy reports its data allocations to tracemalloc: a converted or contiguous copy of q, k or
    v would show up as a peak of at least one input's size."""
    q, k, v = sample_data.random_qkv(rng, batch=1, q_heads=8, kv_heads=8, q_len=256, kv_len=256, dim=64)
    k, v = k.astype(kv_dtype), v.astype(kv_dtype)
    types = np.ones((1, 256), dtype=np.int8)
    types[0, 40:120] = 2
    out = np.empty_like(q)
    mmca.attention(q, k, v, types, "mmca", out=out)  # warm-up: first-call allocations of the module
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        mmca.attention(q, k, v, types, "mmca", out=out)
        with_out = tracemalloc.get_traced_memory()[1] - base
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        fresh = mmca.attention(q, k, v, types, "mmca")
        without_out = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    assert with_out < k.nbytes // 4, with_out
    assert fresh.nbytes <= without_out < fresh.nbytes + k.nbytes // 4, without_out


def test_cache_views_share_the_cache_storage(rng):
    cache = mmca.KVCache(1, 2, 8, 4)
    keys, values = cache.keys, cache.values
    assert keys.shape == values.shape == (1, 2, 8, 4)
    assert np.shares_memory(keys, cache.keys) and data_pointer(keys) == data_pointer(cache.keys)
    assert not np.shares_memory(keys, values)
    assert keys.base is cache and values.base is cache
    k = rng.standard_normal((1, 2, 3, 4), dtype=np.float32)
    cache.append(k, -k, np.ones((1, 3), dtype=np.int8))
    np.testing.assert_array_equal(keys[:, :, :3], k)  # the earlier view shows the append
    np.testing.assert_array_equal(values[:, :, :3], -k)
    assert not keys.flags.writeable
    with pytest.raises(ValueError, match="read-only"):
        keys[0, 0, 0, 0] = 1.0
