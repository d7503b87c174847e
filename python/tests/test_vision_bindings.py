"""mmca.QwenViT, mmca.ClipViT and the position tables from Python: hand-computable cases in numpy,
shapes, outputs written in place, and refused arguments. (Agreement with PyTorch / HF transformers
is tests/python/test_vision_encoders.py.)"""
from __future__ import annotations

import json
import struct

import numpy as np
import pytest

import mmca


def write_safetensors(path, tensors: dict):
    header, blobs, off = {}, [], 0
    for name, a in tensors.items():
        a = np.ascontiguousarray(a, dtype=np.float32)
        header[name] = {"dtype": "F32", "shape": list(a.shape), "data_offsets": [off, off + a.nbytes]}
        blobs.append(a.tobytes())
        off += a.nbytes
    text = json.dumps(header).encode()
    text += b" " * ((8 - (8 + len(text)) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + b"".join(blobs))
    return str(path)


def layer_norm(x, w, b, eps):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * w + b


def patches(images, p):
    """(N, C, S, S) -> (N, G², C·P·P) in (c, kh, kw) order."""
    n, c, s, _ = images.shape
    g = s // p
    x = images.reshape(n, c, g, p, g, p).transpose(0, 2, 4, 1, 3, 5)
    return x.reshape(n, g * g, c * p * p)


# --------------------------------------------------------------------------------------------
# Position tables
# --------------------------------------------------------------------------------------------
def test_sincos_2d_by_hand():
    # dim 4: one frequency (ω = 1); row r·2 + c = [sin c, cos c, sin r, cos r].
    t = mmca.sincos_2d(2, 4)
    want = np.array([[np.sin(c), np.cos(c), np.sin(r), np.cos(r)] for r in range(2) for c in range(2)])
    np.testing.assert_allclose(t, want, atol=1e-7)
    with pytest.raises(ValueError, match="dim"):
        mmca.sincos_2d(2, 6)


def test_bicubic_resize_table_by_hand():
    rng = np.random.default_rng(0)
    t = rng.standard_normal((9, 5)).astype(np.float32)
    np.testing.assert_allclose(mmca.bicubic_resize_table(t, 3), t, atol=1e-6)   # same grid: unchanged
    const = np.full((4, 3), 2.5, np.float32)                                       # the weights sum to 1
    np.testing.assert_allclose(mmca.bicubic_resize_table(const, 5), np.full((25, 3), 2.5), atol=1e-6)
    with pytest.raises(ValueError, match="table"):
        mmca.bicubic_resize_table(np.zeros((5, 3), np.float32), 2)
    with pytest.raises(TypeError, match="float32"):
        mmca.bicubic_resize_table(np.zeros((4, 3)), 2)


# --------------------------------------------------------------------------------------------
# QWen-VL ViT
# --------------------------------------------------------------------------------------------
W, E, Q, P, S = 16, 8, 4, 14, 28   # 2×2 patches, 2×2 queries: no table is resized


def qwen_tensors(rng, layers=0, prefix="vis_encoder."):
    t = {"conv1.weight": 0.05 * rng.standard_normal((W, 3, P, P)),
         "positional_embedding": 0.5 * rng.standard_normal((4, W)),
         "ln_pre.weight": 1 + 0.2 * rng.standard_normal(W), "ln_pre.bias": 0.1 * rng.standard_normal(W),
         "attn_pool.query": rng.standard_normal((Q, E)),
         "attn_pool.pos_embed": mmca.sincos_2d(2, E),
         "attn_pool.kv_proj.weight": 0.3 * rng.standard_normal((E, W)),
         "attn_pool.ln_q.weight": np.ones(E), "attn_pool.ln_q.bias": np.zeros(E),
         "attn_pool.ln_kv.weight": 1 + 0.2 * rng.standard_normal(E), "attn_pool.ln_kv.bias": 0.1 * rng.standard_normal(E),
         "attn_pool.attn.in_proj_weight": 0.3 * rng.standard_normal((3 * E, E)),
         "attn_pool.attn.in_proj_bias": 0.1 * rng.standard_normal(3 * E),
         "attn_pool.attn.out_proj.weight": 0.3 * rng.standard_normal((E, E)),
         "attn_pool.attn.out_proj.bias": 0.1 * rng.standard_normal(E),
         "ln_post.weight": 1 + 0.2 * rng.standard_normal(E), "ln_post.bias": 0.1 * rng.standard_normal(E)}
    for l in range(layers):
        p = f"transformer.resblocks.{l}."
        t.update({p + "ln_1.weight": np.ones(W), p + "ln_1.bias": np.zeros(W), p + "ln_2.weight": np.ones(W),
                  p + "ln_2.bias": np.zeros(W), p + "attn.in_proj.weight": 0.2 * rng.standard_normal((3 * W, W)),
                  p + "attn.in_proj.bias": np.zeros(3 * W), p + "attn.out_proj.weight": 0.2 * rng.standard_normal((W, W)),
                  p + "attn.out_proj.bias": np.zeros(W), p + "mlp.c_fc.weight": 0.2 * rng.standard_normal((24, W)),
                  p + "mlp.c_fc.bias": np.zeros(24), p + "mlp.c_proj.weight": 0.2 * rng.standard_normal((W, 24)),
                  p + "mlp.c_proj.bias": np.zeros(W)})
    return {prefix + k: v for k, v in t.items()}


def test_qwen_uniform_attention_by_hand(tmp_path):
    # No blocks, and a zero query projection: every query attends uniformly to the 4 patch tokens, so
    # each output row is ln_post(out_proj(mean over tokens of v_proj(LN_kv(kv_proj(x)))).
    rng = np.random.default_rng(1)
    t = qwen_tensors(rng)
    t["vis_encoder.attn_pool.attn.in_proj_weight"][:E] = 0.0
    t["vis_encoder.attn_pool.attn.in_proj_bias"][:E] = 0.0
    enc = mmca.QwenViT(write_safetensors(tmp_path / "q.safetensors", t), image_size=S, heads=2, pool_heads=2)
    assert enc.config["layers"] == 0 and enc.output_shape == (Q, E)
    x = rng.uniform(-1, 1, (2, 3, S, S)).astype(np.float32)
    g = lambda k: t["vis_encoder." + k].astype(np.float64)  # noqa: E731
    tokens = patches(x.astype(np.float64), P) @ g("conv1.weight").reshape(W, -1).T + g("positional_embedding")
    tokens = layer_norm(tokens, g("ln_pre.weight"), g("ln_pre.bias"), 1e-6)
    kv = layer_norm(tokens @ g("attn_pool.kv_proj.weight").T, g("attn_pool.ln_kv.weight"), g("attn_pool.ln_kv.bias"), 1e-6)
    v = kv @ g("attn_pool.attn.in_proj_weight")[2 * E:].T + g("attn_pool.attn.in_proj_bias")[2 * E:]
    pooled = v.mean(axis=1) @ g("attn_pool.attn.out_proj.weight").T + g("attn_pool.attn.out_proj.bias")
    want = layer_norm(pooled, g("ln_post.weight"), g("ln_post.bias"), 1e-6)
    got = enc.encode(x)
    assert got.shape == (2, Q, E)
    np.testing.assert_allclose(got, np.repeat(want[:, None, :], Q, axis=1), atol=2e-5)


def test_qwen_out_and_errors(tmp_path):
    rng = np.random.default_rng(2)
    t = qwen_tensors(rng, layers=2)
    path = write_safetensors(tmp_path / "q.safetensors", t)
    enc = mmca.QwenViT(path, image_size=S, heads=2, pool_heads=2, num_threads=1)
    assert enc.config == dict(image_size=S, patch_size=P, width=W, layers=2, heads=2, mlp_width=24, output_dim=E,
                              queries=Q, pool_heads=2, pos_grid=2, eps=pytest.approx(1e-6), tokens=4)
    x = rng.uniform(-1, 1, (3, 3, S, S)).astype(np.float32)
    out = np.full((3, Q, E), np.nan, np.float32)
    assert enc.encode(x, out=out) is out
    np.testing.assert_array_equal(out, enc.encode(x))
    np.testing.assert_array_equal(out[1:2], enc.encode(x[1:2]))
    with pytest.raises(TypeError, match="images.*float64"):
        enc.encode(x.astype(np.float64))
    with pytest.raises(ValueError, match=r"images.*\[3, 3, 42, 42\].*\(N, 3, 28, 28\)"):
        enc.encode(np.zeros((3, 3, 42, 42), np.float32))
    with pytest.raises(ValueError, match="images.*4"):
        enc.encode(np.zeros((1, 4, S, S), np.float32))
    with pytest.raises(ValueError, match="C-contiguous"):
        enc.encode(np.zeros((1, 3, S, 2 * S), np.float32)[..., ::2])
    with pytest.raises(ValueError, match="out"):
        enc.encode(x, out=np.zeros((3, Q, E + 1), np.float32))
    with pytest.raises(ValueError, match="num_threads"):
        enc.num_threads = -1
    with pytest.raises(ValueError, match="heads"):
        mmca.QwenViT(path, image_size=S, heads=3, pool_heads=2)
    with pytest.raises(ValueError, match="image_size"):
        mmca.QwenViT(path, image_size=30, heads=2, pool_heads=2)
    del t["vis_encoder.transformer.resblocks.1.mlp.c_fc.bias"]
    broken = write_safetensors(tmp_path / "broken.safetensors", t)
    with pytest.raises(ValueError, match=r"vis_encoder\.transformer\.resblocks\.1\.mlp\.c_fc\.bias"):
        mmca.QwenViT(broken, image_size=S, heads=2, pool_heads=2)
    with pytest.raises(ValueError, match=r"transformer\.visual\.conv1\.weight"):
        mmca.QwenViT(path, "transformer.visual.", image_size=S, heads=2, pool_heads=2)


# --------------------------------------------------------------------------------------------
# CLIP
# --------------------------------------------------------------------------------------------
def clip_tensors(rng, width=12, inter=20, layers=1, size=28, channels=3, prefix="vision_model."):
    T = (size // P) ** 2 + 1
    t = {"embeddings.class_embedding": rng.standard_normal(width),
         "embeddings.patch_embedding.weight": 0.05 * rng.standard_normal((width, channels, P, P)),
         "embeddings.position_embedding.weight": 0.5 * rng.standard_normal((T, width)),
         "pre_layrnorm.weight": 1 + 0.2 * rng.standard_normal(width), "pre_layrnorm.bias": 0.1 * rng.standard_normal(width)}
    for l in range(layers):
        p = f"encoder.layers.{l}."
        for n in ("layer_norm1", "layer_norm2"):
            t[p + n + ".weight"], t[p + n + ".bias"] = np.ones(width), np.zeros(width)
        for n in ("q_proj", "k_proj", "v_proj", "out_proj"):
            t[p + "self_attn." + n + ".weight"] = 0.2 * rng.standard_normal((width, width))
            t[p + "self_attn." + n + ".bias"] = 0.1 * rng.standard_normal(width)
        t[p + "mlp.fc1.weight"], t[p + "mlp.fc1.bias"] = 0.2 * rng.standard_normal((inter, width)), np.zeros(inter)
        t[p + "mlp.fc2.weight"], t[p + "mlp.fc2.bias"] = 0.2 * rng.standard_normal((width, inter)), np.zeros(width)
    return {prefix + k: v for k, v in t.items()}


def test_clip_embeddings_by_hand(tmp_path):
    # With one layer, 'penultimate' is hidden_states[0]: pre_layrnorm([cls; patches·Wᵀ] + positions).
    rng = np.random.default_rng(3)
    t = clip_tensors(rng)
    enc = mmca.ClipViT(write_safetensors(tmp_path / "c.safetensors", t), config=dict(
        hidden_size=12, intermediate_size=20, num_hidden_layers=1, num_attention_heads=3, image_size=28, patch_size=14))
    x = rng.uniform(-1, 1, (2, 3, 28, 28)).astype(np.float32)
    g = lambda k: t["vision_model." + k].astype(np.float64)  # noqa: E731
    emb = patches(x.astype(np.float64), P) @ g("embeddings.patch_embedding.weight").reshape(12, -1).T
    emb = np.concatenate([np.broadcast_to(g("embeddings.class_embedding"), (2, 1, 12)), emb], axis=1)
    want = layer_norm(emb + g("embeddings.position_embedding.weight"), g("pre_layrnorm.weight"),
                      g("pre_layrnorm.bias"), 1e-5)
    got = enc.encode(x, "penultimate")
    assert got.shape == (2, 5, 12)
    np.testing.assert_allclose(got, want, atol=2e-5)
    assert not np.allclose(enc.encode(x), got)   # the last hidden state went through the layer


def test_clip_configs_and_errors(tmp_path):
    rng = np.random.default_rng(4)
    t = clip_tensors(rng, width=128, inter=64, layers=2, size=42)
    path = write_safetensors(tmp_path / "c.safetensors", t)
    enc = mmca.ClipViT(path)   # deduced: heads = 128 / 64
    c = enc.config
    assert (c["hidden_size"], c["num_attention_heads"], c["num_hidden_layers"], c["image_size"], c["tokens"]) == \
        (128, 2, 2, 42, 10)
    assert c["hidden_act"] == "quick_gelu" and c["layer_norm_eps"] == pytest.approx(1e-5)
    assert mmca.clip_vit_preset("vit-l-14-336")["tokens"] == 577
    assert mmca.clip_vit_preset("vit-l-14-224")["hidden_size"] == 1024
    x = rng.uniform(-1, 1, (2, 3, 42, 42)).astype(np.float32)
    out = np.zeros((2, 10, 128), np.float32)
    assert enc.encode(x, "last_hidden_state", out=out) is out
    with pytest.raises(ValueError, match="output.*pooled"):
        enc.encode(x, "pooled")
    with pytest.raises(ValueError, match=r"images.*\(N, 3, 42, 42\)"):
        enc.encode(np.zeros((1, 3, 28, 28), np.float32))
    with pytest.raises(TypeError, match="images"):
        enc.encode([[1.0]])
    with pytest.raises(ValueError, match="name"):
        mmca.clip_vit_preset("vit-b-32")
    with pytest.raises(TypeError, match="config"):
        mmca.ClipViT(path, config=3)
    with pytest.raises(ValueError, match=r"patch_embedding\.weight.*\[128, 3, 14, 14\]"):
        mmca.ClipViT(path, config="vit-l-14-224")     # the preset's shapes are not this checkpoint's
    with pytest.raises(ValueError, match="hidden_act"):
        mmca.ClipViT(path, config=dict(hidden_size=128, hidden_act="relu"))
