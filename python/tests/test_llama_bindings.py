"""mmca.LlamaModel, mmca.SafetensorsFile and the LLaMa helpers: argument rules of docs/python.md
(TypeError for dtypes, ValueError for shapes/values, zero-copy views that keep their owner alive,
the GIL released). Checkpoints are written here with a few lines of numpy (the official writer and
the HF oracle are used in tests/python/test_llama_hf.py)."""
from __future__ import annotations

import gc
import importlib
import json
import os
import struct
import weakref

import numpy as np
import pytest


def _mmca():
    name = os.environ.get("MMCA_LLAMA_MODULE")
    if name:
        return importlib.import_module(name)
    import mmca

    if hasattr(mmca, "LlamaModel"):
        return mmca
    core = importlib.import_module("mmca._core")
    if hasattr(core, "LlamaModel"):
        return core
    pytest.skip("mmca was built without the LLaMa bindings (bind_llama)")


@pytest.fixture(scope="module")
def mm():
    return _mmca()


def write_safetensors(path, tensors: dict):
    header, blobs, off = {}, [], 0
    for name, a in tensors.items():
        a = np.ascontiguousarray(a)
        dt = {"float32": "F32", "float16": "F16", "int64": "I64"}[a.dtype.name]
        header[name] = {"dtype": dt, "shape": list(a.shape), "data_offsets": [off, off + a.nbytes]}
        blobs.append(a.tobytes())
        off += a.nbytes
    text = json.dumps(header).encode()
    text += b" " * ((8 - (8 + len(text)) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + b"".join(blobs))


CFG = dict(vocab_size=40, hidden_size=16, intermediate_size=24, num_hidden_layers=2, num_attention_heads=4,
           num_key_value_heads=2, max_position_embeddings=32, rms_norm_eps=1e-5, hidden_act="silu",
           bos_token_id=1, eos_token_id=2)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    d = tmp_path_factory.mktemp("llama")
    rng = np.random.default_rng(0)
    H, I, V, L = CFG["hidden_size"], CFG["intermediate_size"], CFG["vocab_size"], CFG["num_hidden_layers"]
    kv = CFG["num_key_value_heads"] * H // CFG["num_attention_heads"]
    t = {"model.embed_tokens.weight": rng.standard_normal((V, H)), "model.norm.weight": np.ones(H),
         "lm_head.weight": 0.1 * rng.standard_normal((V, H))}
    for l in range(L):
        p = f"model.layers.{l}."
        t.update({p + "input_layernorm.weight": np.ones(H), p + "post_attention_layernorm.weight": np.ones(H),
                  p + "self_attn.q_proj.weight": 0.2 * rng.standard_normal((H, H)),
                  p + "self_attn.k_proj.weight": 0.2 * rng.standard_normal((kv, H)),
                  p + "self_attn.v_proj.weight": 0.2 * rng.standard_normal((kv, H)),
                  p + "self_attn.o_proj.weight": 0.2 * rng.standard_normal((H, H)),
                  p + "mlp.gate_proj.weight": 0.2 * rng.standard_normal((I, H)),
                  p + "mlp.up_proj.weight": 0.2 * rng.standard_normal((I, H)),
                  p + "mlp.down_proj.weight": 0.2 * rng.standard_normal((H, I))})
    t = {k: v.astype(np.float32) for k, v in t.items()}
    t["position_ids"] = np.arange(4, dtype=np.int64)  # a non-float buffer, ignored by the model
    write_safetensors(d / "model.safetensors", t)
    (d / "config.json").write_text(json.dumps(CFG))
    return d, t


def test_forward_and_decode(mm, ckpt):
    d, _ = ckpt
    m = mm.LlamaModel(str(d), variant="causal")
    assert m.config["num_key_value_heads"] == 2 and m.context == 32 and m.kv_dtype == "float32"
    ids = np.array([[1, 5, 7, 9]], dtype=np.int32)
    full = m.forward_tokens(ids)
    assert full.shape == (1, 4, 40) and full.dtype == np.float32
    m.reset()
    steps = [m.forward_tokens(ids[:, i:i + 1], logits="last")[0, 0] for i in range(4)]
    np.testing.assert_allclose(np.stack(steps), full[0], rtol=1e-5, atol=1e-5)
    assert m.length() == 4
    # Embeddings + token types, with an out buffer that is returned as is.
    m.reset()
    e = m.embed(ids)
    assert e.shape == (1, 4, 16)
    out = np.empty((1, 4, 40), np.float32)
    assert m.forward(e, np.ones((1, 4), np.int8), out=out) is out
    np.testing.assert_allclose(out, full, rtol=1e-5, atol=1e-5)
    assert m.forward(e, [[1, 1, 1, 1]], logits="none") is None


def test_chat_rounds(mm, ckpt):
    d, _ = ckpt
    m = mm.LlamaModel(str(d), variant="causal")
    a, reason = m.chat([1, 5, 7], max_new_tokens=4, eos_ids=[-1])
    assert len(a) == 4 and reason == "max_new_tokens"
    n = m.length()
    b, _ = m.chat([1, 9], max_new_tokens=3, eos_ids=[-1])
    assert m.length() == n + 3 + 2  # pending token + prompt, then 2 fed answers
    ref = mm.LlamaModel(str(d), variant="causal")
    assert ref.chat([1, 5, 7] + a + [1, 9], max_new_tokens=3, eos_ids=[-1])[0] == b
    with pytest.raises(ValueError, match="temperature"):
        m.chat([1], temperature=-1.0)


def test_argument_errors(mm, ckpt, tmp_path):
    d, _ = ckpt
    m = mm.LlamaModel(str(d))
    e = np.zeros((1, 3, 16), np.float32)
    with pytest.raises(TypeError, match="embeddings"):
        m.forward(e.astype(np.float64), np.ones((1, 3), np.int8))
    with pytest.raises(TypeError, match="token_types"):
        m.forward(e, np.ones((1, 3), np.float32))
    with pytest.raises(ValueError, match="embeddings"):
        m.forward(np.zeros((1, 3, 15), np.float32), np.ones((1, 3), np.int8))
    with pytest.raises(ValueError, match="C-contiguous"):
        m.forward(np.zeros((1, 16, 3), np.float32).transpose(0, 2, 1), np.ones((1, 3), np.int8))
    with pytest.raises(ValueError, match="token_types\\[0, 1\\] = 3"):
        m.forward(e, [[1, 3, 1]])
    with pytest.raises(ValueError, match="logits"):
        m.forward(e, np.ones((1, 3), np.int8), logits="first")
    with pytest.raises(ValueError, match="ids\\[2\\] = 40"):
        m.embed([1, 2, 40])
    long = np.zeros((1, 33, 16), np.float32)
    with pytest.raises(ValueError, match="at most 32 tokens"):
        m.forward(long, np.ones((1, 33), np.int8))
    assert m.length() == 0
    with pytest.raises(ValueError, match="kv_dtype"):
        mm.LlamaModel(str(d), kv_dtype="int8")
    with pytest.raises(ValueError, match="No such file"):
        mm.LlamaModel(str(tmp_path / "nothing"))
    with pytest.raises(IndexError):
        m.length(3)


def test_safetensors_views_are_zero_copy(mm, ckpt):
    d, t = ckpt
    f = mm.SafetensorsFile(str(d / "model.safetensors"))
    assert "lm_head.weight" in f.names() and f.dtype("position_ids") == "I64"
    v = f.tensor("lm_head.weight")
    np.testing.assert_array_equal(v, t["lm_head.weight"])
    assert not v.flags.writeable and v.base is not None
    np.testing.assert_array_equal(f.tensor("position_ids"), np.arange(4))
    ref = weakref.ref(f)
    del f
    gc.collect()
    assert ref() is not None  # the view keeps the file (and its mapping) alive
    np.testing.assert_array_equal(v, t["lm_head.weight"])
    del v
    gc.collect()
    assert ref() is None
    with pytest.raises(KeyError):
        mm.SafetensorsFile(str(d / "model.safetensors")).tensor("nope")


def test_corrupted_file_is_a_value_error(mm, ckpt, tmp_path):
    d, _ = ckpt
    data = (d / "model.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[:-10])
    with pytest.raises(ValueError, match="past the end|cover the whole"):
        mm.SafetensorsFile(str(tmp_path / "cut.safetensors"))


def test_presets_and_memory(mm):
    c = mm.llama_preset("llama2-70b")
    assert (c["hidden_size"], c["num_hidden_layers"], c["num_attention_heads"], c["num_key_value_heads"]) == (8192, 80, 64, 8)
    est = mm.estimate_llama_memory("llama2-7b", weight_dtype="bfloat16", kv_dtype="float32", context=4096)
    assert est["parameters"] == 6738415616
    assert est["weight_bytes"] == 2 * 6738415616
    assert est["total_bytes"] > est["weight_bytes"] + est["kv_cache_bytes"]
    assert est["cross_kv_bytes"] == 0
    cross = dict(mm.llama_preset("llama2-7b"), cross_attention_every=4)
    est3 = mm.estimate_llama_memory(cross, weight_dtype="bfloat16", batch=2, context=4096, image_tokens=768)
    assert est3["cross_kv_bytes"] == 8 * 2 * 768 * (2 * 4096 * 4 + 12)
    est2 = mm.estimate_llama_memory(dict(CFG), weight_dtype="float32")
    assert est2["parameters"] > 0
    with pytest.raises(ValueError):
        mm.llama_preset("llama3")
