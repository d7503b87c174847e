"""Every refused argument raises TypeError or ValueError with a message naming the argument,
the value seen and what was expected."""

import re

import numpy as np
import pytest

import mmca
import sample_data


def call(qkv, batch, **changes):
    q, k, v = qkv
    args = dict(q=q, k=k, v=v, token_types=batch["token_types"], variant="mmca")
    args.update(changes)
    return mmca.attention(args.pop("q"), args.pop("k"), args.pop("v"), args.pop("token_types"),
                          args.pop("variant"), **args)


def raises(exception, *fragments):
    """pytest.raises matching every fragment (literally) in the message."""
    pattern = "".join(f"(?=.*{re.escape(f)})" for f in fragments)
    return pytest.raises(exception, match=re.compile(pattern, re.S))


# ---- dtypes: TypeError, never a conversion ---------------------------------------------------

@pytest.mark.parametrize("name", ["q", "k", "v"])
def test_float64_tensor_is_a_type_error(qkv, batch, name):
    q, k, v = qkv
    arrays = dict(q=q, k=k, v=v)
    arrays[name] = arrays[name].astype(np.float64)
    with raises(TypeError, "mmca.attention", f"argument '{name}'", "dtype float64", "float32"):
        call(qkv, batch, **arrays)


def test_k_and_v_dtypes_must_match(qkv, batch):
    q, k, v = qkv
    with raises(TypeError, "argument 'v'", "dtype float32", "float16 (the dtype of k)"):
        call(qkv, batch, k=k.astype(np.float16))


def test_out_dtype(qkv, batch):
    with raises(TypeError, "argument 'out'", "dtype float64", "float32"):
        call(qkv, batch, out=np.zeros(qkv[0].shape))


def test_uint16_needs_kv_dtype_bfloat16(qkv, batch):
    q, k, v = qkv
    bits_k, bits_v = k.view(np.uint16)[..., ::2].copy(), v.view(np.uint16)[..., ::2].copy()
    with raises(TypeError, "argument 'k'", "uint16", "kv_dtype='bfloat16'"):
        call(qkv, batch, k=bits_k, v=bits_v)
    call(qkv, batch, k=bits_k, v=bits_v, kv_dtype="bfloat16")  # accepted when asked for
    with raises(TypeError, "argument 'k'", "dtype float32", "uint16 holding bfloat16 bits"):
        call(qkv, batch, kv_dtype="bfloat16")
    with raises(TypeError, "argument 'k'", "dtype float32", "float16"):
        call(qkv, batch, kv_dtype="float16")
    with raises(ValueError, "argument 'kv_dtype'", "'int8'"):
        call(qkv, batch, kv_dtype="int8")


def test_byte_swapped_float32_is_a_type_error(qkv, batch):
    with raises(TypeError, "argument 'q'", ">f4"):
        call(qkv, batch, q=qkv[0].astype(">f4"))


def test_non_array_tensor_is_a_type_error(qkv, batch):
    with raises(TypeError, "argument 'q'", "type 'list'", "numpy.ndarray"):
        call(qkv, batch, q=qkv[0].tolist())


@pytest.mark.parametrize("bad", [np.zeros((2, 27)), np.zeros((2, 27), dtype=bool)], ids=["float", "bool"])
def test_non_integer_metadata_is_a_type_error(qkv, batch, bad):
    with raises(TypeError, "argument 'token_types'", "integer dtype"):
        call(qkv, batch, token_types=bad)
    with raises(TypeError, "argument 'image_ids'", "integer dtype"):
        call(qkv, batch, image_ids=bad)


# ---- layouts: ValueError, never a copy -------------------------------------------------------

@pytest.mark.parametrize("name", ["q", "k", "v", "out"])
def test_non_contiguous_tensor_is_a_value_error(qkv, batch, name):
    q, k, v = qkv
    arrays = dict(q=q, k=k, v=v, out=np.empty_like(q))
    arrays[name] = np.asfortranarray(arrays[name])
    with raises(ValueError, f"argument '{name}'", "not C-contiguous", "strides"):
        call(qkv, batch, **arrays)


def test_strided_view_is_a_value_error(rng, batch):
    q, k, v = sample_data.random_qkv(rng, kv_len=54)
    with raises(ValueError, "argument 'k'", "not C-contiguous"):
        mmca.attention(q, k[:, :, ::2], v[:, :, ::2], batch["token_types"], "mmca")


def test_read_only_out_is_a_value_error(qkv, batch):
    out = np.empty_like(qkv[0])
    out.setflags(write=False)
    with raises(ValueError, "argument 'out'", "read-only"):
        call(qkv, batch, out=out)


@pytest.mark.parametrize("alias", ["q", "k"])
def test_out_overlapping_an_input_is_a_value_error(rng, batch, alias):
    q, k, v = sample_data.random_qkv(rng, q_heads=2)  # k has q's shape here
    with raises(ValueError, "argument 'out'", f"overlaps argument '{alias}'"):
        mmca.attention(q, k, v, batch["token_types"], "mmca", out=q if alias == "q" else k)


def test_wrong_rank_is_a_value_error(qkv, batch):
    with raises(ValueError, "argument 'q'", "3 dimensions", "4 dimensions"):
        call(qkv, batch, q=qkv[0][0])
    with raises(ValueError, "argument 'token_types'", "1 dimensions", "2 dimensions"):
        call(qkv, batch, token_types=batch["token_types"][0])


# ---- shapes and values, checked by the C++ core (its messages are kept) ----------------------

def test_shape_mismatches(qkv, batch):
    q, k, v = qkv
    with raises(ValueError, "mmca::attention_forward", "argument 'v'", "[2, 2, 26, 16]", "the shape of k"):
        call(qkv, batch, v=np.ascontiguousarray(v[:, :, :26]))
    with raises(ValueError, "argument 'k'", "[2, 2, 27, 8]", "[2, Hkv, Lk, 16]"):
        call(qkv, batch, k=np.ascontiguousarray(k[..., :8]), v=np.ascontiguousarray(v[..., :8]))
    with raises(ValueError, "argument 'token_types'", "[2, 26]", "[2, 27] (B, Lk)"):
        call(qkv, batch, token_types=batch["token_types"][:, :26])
    with raises(ValueError, "argument 'out'", "[2, 4, 27, 8]", "the shape of q"):
        call(qkv, batch, out=np.empty((2, 4, 27, 8), dtype=np.float32))
    with raises(ValueError, "argument 'kv_lens'", "[3]"):
        call(qkv, batch, kv_lens=[27, 27, 27])


def test_query_heads_must_be_a_multiple_of_kv_heads(rng, batch):
    q, k, v = sample_data.random_qkv(rng, q_heads=3, kv_heads=2)
    with raises(ValueError, "argument 'k'", "2 kv heads for 3 query heads", "divides"):
        mmca.attention(q, k, v, batch["token_types"], "mmca")


def test_names(qkv, batch):
    with raises(ValueError, "mmca.attention", "argument 'variant'", "'flash'", "'mmca_reference'"):
        call(qkv, batch, variant="flash")
    with raises(ValueError, "argument 'policy'", "'newest'", "'latest'"):
        call(qkv, batch, variant="causal_cross", policy="newest")
    with raises(ValueError, "argument 'impl'", "'cuda'", "'fused' or 'reference'"):
        call(qkv, batch, impl="cuda")


@pytest.mark.parametrize("variant", ["causal", "mmca", "mmca_reference"])
def test_policy_only_for_causal_cross(qkv, batch, variant):
    with raises(ValueError, "argument 'policy'", f"'all' with variant '{variant}'", "causal_cross"):
        call(qkv, batch, variant=variant, policy="all")


def test_token_type_three(qkv, batch):
    types = batch["token_types"].copy()
    types[1, 9] = 3
    with raises(ValueError, "argument 'token_types'", "token_types[1, 9] = 3", "0 (pad), 1 (text) or 2 (image)"):
        call(qkv, batch, token_types=types)


def test_token_type_outside_int8(qkv, batch):
    types = batch["token_types"].copy()
    types[0, 4] = 258  # would wrap to 2 in int8: must be refused, not converted
    with raises(ValueError, "argument 'token_types'", "token_types[0, 4] = 258"):
        call(qkv, batch, token_types=types)


def test_image_id_out_of_range(qkv, batch):
    ids = batch["image_ids"].copy()
    ids[1, 2] = 27
    with raises(ValueError, "argument 'image_ids'", "image_ids[1, 2] = 27", "[0, 27)"):
        call(qkv, batch, image_ids=ids)
    ids[1, 2] = 2**40
    with raises(ValueError, "argument 'image_ids'", f"image_ids[1, 2] = {2**40}"):
        call(qkv, batch, image_ids=ids)


def test_lengths_out_of_range(qkv, batch):
    with raises(ValueError, "argument 'kv_lens'", "kv_lens[0] = 28"):
        call(qkv, batch, kv_lens=[28, 27])
    with raises(ValueError, "argument 'q_lens'", "q_lens[1] = 20"):
        call(qkv, batch, kv_lens=[27, 19], q_lens=[19, 20])


@pytest.mark.parametrize("scale", [0.0, -1.0, float("nan"), float("inf"), 1e300])
def test_bad_scale(qkv, batch, scale):
    with raises(ValueError, "argument 'scale'"):
        call(qkv, batch, scale=scale)


def test_negative_thread_count(qkv, batch):
    with raises(ValueError, "argument 'num_threads'", "-1"):
        call(qkv, batch, num_threads=-1)


def test_options_after_variant_are_keyword_only(qkv, batch):
    q, k, v = qkv
    with pytest.raises(TypeError):
        mmca.attention(q, k, v, batch["token_types"], "mmca", batch["image_ids"])


# ---- KVCache ---------------------------------------------------------------------------------

def test_cache_construction_errors():
    with raises(ValueError, "argument 'head_dim'", "300", "[1, 256]"):
        mmca.KVCache(1, 1, 8, 300)
    with raises(ValueError, "argument 'capacity'", "0"):
        mmca.KVCache(1, 1, 0, 8)
    with raises(ValueError, "mmca.KVCache", "argument 'dtype'", "'int8'", "'bfloat16'"):
        mmca.KVCache(1, 1, 8, 8, dtype="int8")
    assert mmca.KVCache(1, 1, 8, 8, dtype=np.float16).dtype == "float16"


def test_cache_overflow_leaves_the_cache_unchanged(rng):
    cache = mmca.KVCache(2, 1, 5, 4)
    k = rng.standard_normal((2, 1, 4, 4), dtype=np.float32)
    cache.append(k, k, np.ones((2, 4), dtype=np.int8))
    before = cache.keys.copy()
    with raises(ValueError, "argument 'k'", "2 new tokens for sequence 0 holding 4", "at most 1",
                "cache capacity 5"):
        cache.append(k[:, :, :2].copy(), k[:, :, :2].copy(), np.ones((2, 2), dtype=np.int8))
    assert cache.lengths.tolist() == [4, 4]
    np.testing.assert_array_equal(cache.keys, before)


def test_cache_append_errors(rng):
    cache = mmca.KVCache(1, 2, 8, 4)
    k = rng.standard_normal((1, 2, 3, 4), dtype=np.float32)
    with raises(TypeError, "mmca.KVCache.append", "argument 'k'", "dtype float16", "float32"):
        cache.append(k.astype(np.float16), k, [[1, 1, 1]])
    with raises(ValueError, "argument 'v'", "not C-contiguous"):
        cache.append(k, np.asfortranarray(k), [[1, 1, 1]])
    with raises(ValueError, "argument 'token_types'", "token_types[0, 1] = 3"):
        cache.append(k, k, [[1, 3, 1]])
    with raises(ValueError, "argument 'image_ids'", "image_ids[0, 2] = 8"):
        cache.append(k, k, [[1, 1, 2]], image_ids=[[-1, -1, 8]])
    with raises(ValueError, "argument 'k'", "[1, 1, 3, 4]"):
        cache.append(k[:, :1].copy(), k[:, :1].copy(), [[1, 1, 1]])
    with raises(ValueError, "argument 'lens'", "lens[0] = 4"):
        cache.append(k, k, [[1, 1, 1]], lens=[4])
    assert cache.lengths.tolist() == [0]


def test_cache_attention_errors(rng):
    cache = mmca.KVCache(1, 2, 8, 4)
    k = rng.standard_normal((1, 2, 3, 4), dtype=np.float32)
    cache.append(k, k, [[1, 2, 1]])
    q = rng.standard_normal((1, 4, 3, 4), dtype=np.float32)
    with raises(TypeError, "mmca.KVCache.attention", "argument 'q'", "float64"):
        cache.attention(q.astype(np.float64), "mmca")
    with raises(ValueError, "mmca.KVCache.attention", "argument 'policy'"):
        cache.attention(q, "causal", policy="latest")
    with raises(ValueError, "argument 'q_lens'", "q_lens[0] = 3", "Lq = 2"):
        cache.attention(np.ascontiguousarray(q[:, :, :2]), "mmca")
    with raises(ValueError, "argument 'out'", "overlaps argument 'q'"):
        cache.attention(q, "mmca", out=q)
    with pytest.raises(IndexError, match=re.escape("mmca.KVCache.length: argument 'b': got 1")):
        cache.length(1)
