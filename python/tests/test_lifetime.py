"""Ownership: views keep their KVCache alive; nothing leaks references."""

import gc
import sys
import weakref

import numpy as np
import pytest

import mmca


def filled_cache(rng):
    cache = mmca.KVCache(2, 3, 10, 8, dtype="float16")
    k = rng.standard_normal((2, 3, 6, 8), dtype=np.float32)
    v = rng.standard_normal((2, 3, 6, 8), dtype=np.float32)
    cache.append(k, v, np.ones((2, 6), dtype=np.int8))
    return cache, k, v


@pytest.mark.parametrize("attribute", ["keys", "values"])
def test_view_keeps_the_cache_alive(rng, attribute):
    cache, k, v = filled_cache(rng)
    alive = weakref.ref(cache)
    view = getattr(cache, attribute)
    del cache
    gc.collect()
    assert alive() is not None
    expected = (k if attribute == "keys" else v).astype(np.float16)
    np.testing.assert_array_equal(view[:, :, :6], expected)  # still readable and correct
    del view
    gc.collect()
    assert alive() is None


def test_cache_without_views_is_freed(rng):
    cache, _, _ = filled_cache(rng)
    alive = weakref.ref(cache)
    assert sys.getrefcount(cache) == 2  # the name and getrefcount's argument
    cache.attention(rng.standard_normal((2, 3, 6, 8), dtype=np.float32), "mmca")
    _ = cache.lengths, cache.capacity
    assert sys.getrefcount(cache) == 2
    del cache
    assert alive() is None  # freed by reference counting alone, no cycle collection needed


def test_each_view_holds_one_reference(rng):
    cache, _, _ = filled_cache(rng)
    views = [cache.keys, cache.values, cache.keys]
    assert sys.getrefcount(cache) == 2 + len(views)
    del views
    assert sys.getrefcount(cache) == 2


def test_attention_leaks_no_references(qkv, batch):
    q, k, v = qkv
    types = batch["token_types"]
    out = np.empty_like(q)
    arrays = (q, k, v, types, out)
    before = [sys.getrefcount(a) for a in arrays]
    for _ in range(3):
        mmca.attention(q, k, v, types, "mmca", out=out)
        with pytest.raises(ValueError):
            mmca.attention(q, k, v, types, "mmca", out=out, policy="all")
        with pytest.raises(TypeError):
            mmca.attention(q, k, v.astype(np.float16), types, "mmca", out=out)
    assert [sys.getrefcount(a) for a in arrays] == before
    result = mmca.attention(q, k, v, types, "mmca")
    assert sys.getrefcount(result) == 2  # a new array owned by the caller alone
    assert result.base is None or result.flags.owndata
