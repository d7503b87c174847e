"""mmca.Projector: results of the baseline projector against a float64 numpy oracle (SPEC §4:
LayerNorm(x·Wᵀ + b), eps 1e-12), output shapes of every kind, and the argument rules of
docs/python.md (TypeError for dtypes, ValueError for shapes, values and checkpoint problems).
Checkpoints are written here with a few lines of numpy; the PyTorch oracles of every kind are in
tests/python/test_projectors.py."""
from __future__ import annotations

import json
import struct

import numpy as np
import pytest

import mmca


def write_safetensors(path, tensors: dict) -> str:
    header, blobs, off = {}, [], 0
    for name, a in tensors.items():
        a = np.ascontiguousarray(a)
        dt = {"float32": "F32", "float16": "F16"}[a.dtype.name]
        header[name] = {"dtype": dt, "shape": list(a.shape), "data_offsets": [off, off + a.nbytes]}
        blobs.append(a.tobytes())
        off += a.nbytes
    text = json.dumps(header).encode()
    text += b" " * ((8 - (8 + len(text)) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + b"".join(blobs))
    return str(path)


def _mat(rng, rows, cols, dtype=np.float32):
    return (rng.standard_normal((rows, cols)) / np.sqrt(cols)).astype(dtype)


def _norm(rng, n, dtype=np.float32):
    return (1.0 + 0.1 * rng.standard_normal(n)).astype(dtype), (0.1 * rng.standard_normal(n)).astype(dtype)


def baseline_tensors(dv, h, dtype=np.float32, prefix="projection.", seed=0):
    rng = np.random.default_rng(seed)
    w, b = _norm(rng, h, dtype)
    return {prefix + "0.weight": _mat(rng, h, dv, dtype), prefix + "0.bias": (0.1 * rng.standard_normal(h)).astype(dtype),
            prefix + "1.weight": w, prefix + "1.bias": b}


def vit_tensors(dv, h, mlp, seed=0):
    rng = np.random.default_rng(seed)
    t, p = {}, "projection.vis_layer."
    for ln in ("layer_norm1", "layer_norm2"):
        t[p + ln + ".weight"], t[p + ln + ".bias"] = _norm(rng, dv)
    for m in ("q_proj", "k_proj", "v_proj", "out_proj"):
        t[p + "self_attn." + m + ".weight"] = _mat(rng, dv, dv)
        t[p + "self_attn." + m + ".bias"] = _norm(rng, dv)[1]
    t[p + "mlp.fc1.weight"], t[p + "mlp.fc1.bias"] = _mat(rng, mlp, dv), _norm(rng, mlp)[1]
    t[p + "mlp.fc2.weight"], t[p + "mlp.fc2.bias"] = _mat(rng, dv, mlp), _norm(rng, dv)[1]
    t["projection.projection.0.weight"], t["projection.projection.0.bias"] = _mat(rng, h, dv), _norm(rng, h)[1]
    t["projection.projection.1.weight"], t["projection.projection.1.bias"] = _norm(rng, h)
    return t


def perceiver_tensors(dv, h, q, seed=0):
    rng = np.random.default_rng(seed)
    p = "projection."
    t = {p + "query": (0.5 * rng.standard_normal((q, h))).astype(np.float32),
         p + "kv_proj.weight": _mat(rng, h, dv), p + "kv_proj.bias": _norm(rng, h)[1],
         p + "attn.in_proj_weight": _mat(rng, 3 * h, h), p + "attn.in_proj_bias": _norm(rng, 3 * h)[1],
         p + "attn.out_proj.weight": _mat(rng, h, h), p + "attn.out_proj.bias": _norm(rng, h)[1],
         p + "projection.1.weight": _mat(rng, h, h), p + "projection.1.bias": _norm(rng, h)[1]}
    for ln in ("ln_q", "ln_kv", "projection.0"):
        t[p + ln + ".weight"], t[p + ln + ".bias"] = _norm(rng, h)
    return t


def baseline_oracle(x, t, prefix="projection."):
    y = x.astype(np.float64) @ t[prefix + "0.weight"].astype(np.float64).T + t[prefix + "0.bias"]
    mean = y.mean(-1, keepdims=True)
    var = ((y - mean) ** 2).mean(-1, keepdims=True)
    return (y - mean) / np.sqrt(var + 1e-12) * t[prefix + "1.weight"] + t[prefix + "1.bias"]


def _rel(a, b):
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


@pytest.fixture
def baseline_path(tmp_path):
    t = baseline_tensors(20, 12)
    return write_safetensors(tmp_path / "baseline.safetensors", t), t


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_baseline_matches_numpy(tmp_path, dtype):
    t = baseline_tensors(21, 13, dtype)
    p = mmca.Projector(write_safetensors(tmp_path / "b.safetensors", t))
    assert (p.kind, p.vision_dim, p.hidden) == ("baseline", 21, 13)
    assert p.config == {"kind": "baseline", "vision_dim": 21, "hidden": 13, "eps": pytest.approx(1e-12)}
    x = np.random.default_rng(1).standard_normal((3, 5, 21)).astype(np.float32)
    y = p.project(x)
    assert y.shape == (3, 5, 13) and y.dtype == np.float32
    assert _rel(y, baseline_oracle(x, t)) < 1e-5


def test_out_is_written_and_returned(baseline_path):
    path, t = baseline_path
    p = mmca.Projector(path, "projection.", "baseline")
    x = np.random.default_rng(2).standard_normal((2, 4, 20)).astype(np.float32)
    out = np.zeros((2, 4, 12), np.float32)
    assert p.project(x, out=out) is out
    np.testing.assert_array_equal(out, p.project(x))
    assert _rel(out, baseline_oracle(x, t)) < 1e-5


def test_prefix(tmp_path):
    t = baseline_tensors(8, 6, prefix="model.mm_projector.")
    path = write_safetensors(tmp_path / "p.safetensors", t)
    p = mmca.Projector(path, "model.mm_projector.")
    x = np.ones((1, 2, 8), np.float32)
    assert _rel(p.project(x), baseline_oracle(x, t, "model.mm_projector.")) < 1e-5
    with pytest.raises(ValueError, match=r"under the prefix 'projection\.'"):
        mmca.Projector(path)


def test_shapes_of_every_kind(tmp_path):
    vit = mmca.Projector(write_safetensors(tmp_path / "v.safetensors", vit_tensors(12, 10, 20)), vit_heads=3,
                         vit_act="quick_gelu")
    assert vit.kind == "vit" and vit.config["layer"]["mlp_width"] == 20 and vit.config["layer"]["heads"] == 3
    x = np.random.default_rng(3).standard_normal((2, 7, 12)).astype(np.float32)
    y = vit.project(x)
    assert y.shape == (2, 7, 10) and np.isfinite(y).all()
    assert vit.output_tokens(7) == 7

    path = write_safetensors(tmp_path / "q.safetensors", perceiver_tensors(12, 16, 4))
    per = mmca.Projector(path, heads=2, input_tokens=10, has_cls=True)
    assert per.kind == "perceiver" and per.output_tokens(10) == 4
    assert per.config["input_tokens"] == 10 and per.config["has_cls"] is True and per.config["queries"] == 4
    x = np.random.default_rng(4).standard_normal((3, 10, 12)).astype(np.float32)
    y = per.project(x)
    assert y.shape == (3, 4, 16) and np.isfinite(y).all()
    # The CLS row is dropped: changing it changes nothing.
    x2 = x.copy()
    x2[:, 0, :] = 100.0
    np.testing.assert_array_equal(per.project(x2), y)
    # Images are independent: one image alone gives the same rows, bit for bit.
    np.testing.assert_array_equal(per.project(np.ascontiguousarray(x[1:2])), y[1:2])


def test_perceiver_token_count(tmp_path):
    path = write_safetensors(tmp_path / "q.safetensors", perceiver_tensors(8, 16, 9))
    p = mmca.Projector(path, heads=4)  # 9 tokens (a 3 x 3 grid), no CLS
    with pytest.raises(ValueError, match=r"mmca.Projector.project: argument 'input_tokens': got 10; expected 9"):
        p.project(np.zeros((1, 10, 8), np.float32))
    with pytest.raises(ValueError, match=r"argument 'input_tokens': got 8"):
        p.output_tokens(8)
    with pytest.raises(ValueError, match=r"argument 'input_tokens': got 11 with a CLS token"):
        mmca.Projector(path, heads=4, input_tokens=11, has_cls=True)
    with pytest.raises(ValueError, match=r"argument 'heads'"):
        mmca.Projector(path)  # H = 16: H / 128 heads is none


def test_input_errors(baseline_path):
    p = mmca.Projector(baseline_path[0])
    with pytest.raises(TypeError, match=r"argument 'x': got dtype float64; expected float32"):
        p.project(np.zeros((1, 2, 20)))
    with pytest.raises(TypeError, match=r"argument 'x'"):
        p.project([[[0.0] * 20]])
    with pytest.raises(ValueError, match=r"argument 'x': got 2 dimensions"):
        p.project(np.zeros((2, 20), np.float32))
    with pytest.raises(ValueError, match=r"mmca.Projector.project: argument 'x': got shape \[1, 2, 19\]; expected \(N, T, 20\)"):
        p.project(np.zeros((1, 2, 19), np.float32))
    with pytest.raises(ValueError, match=r"C-contiguous"):
        p.project(np.zeros((1, 4, 40), np.float32)[:, :, ::2])
    with pytest.raises(ValueError, match=r"argument 'out': got shape \[1, 2, 11\]; expected shape \[1, 2, 12\]"):
        p.project(np.zeros((1, 2, 20), np.float32), out=np.zeros((1, 2, 11), np.float32))
    with pytest.raises(ValueError, match=r"argument 'out': got a read-only array"):
        o = np.zeros((1, 2, 12), np.float32)
        o.setflags(write=False)
        p.project(np.zeros((1, 2, 20), np.float32), out=o)
    with pytest.raises(TypeError, match=r"argument 'out': got dtype float16"):
        p.project(np.zeros((1, 2, 20), np.float32), out=np.zeros((1, 2, 12), np.float16))


def test_checkpoint_errors(tmp_path, baseline_path):
    path, t = baseline_path
    with pytest.raises(ValueError, match=r"argument 'kind': got \"mlp\""):
        mmca.Projector(path, kind="mlp")
    with pytest.raises(ValueError, match=r"no tensor 'projection.query'"):
        mmca.Projector(path, kind="perceiver")
    with pytest.raises(ValueError, match=r"argument 'hidden_act'"):
        mmca.Projector(path, vit_act="relu")
    with pytest.raises(ValueError, match=r"argument 'num_threads'"):
        mmca.Projector(path, num_threads=-1)
    t = dict(t)
    del t["projection.1.bias"]
    with pytest.raises(ValueError, match=r"mmca::io::load_projector: argument 'checkpoint': got no tensor 'projection.1.bias'"):
        mmca.Projector(write_safetensors(tmp_path / "missing.safetensors", t))
    t["projection.1.bias"] = np.zeros(11, np.float32)
    with pytest.raises(ValueError, match=r"tensor 'projection.1.bias' of shape \[11\]"):
        mmca.Projector(write_safetensors(tmp_path / "shape.safetensors", t))
    with pytest.raises(ValueError):
        mmca.Projector(str(tmp_path / "nothing.safetensors"))


def test_keyword_only_options(baseline_path):
    with pytest.raises(TypeError):
        mmca.Projector(baseline_path[0], "projection.", "baseline", 5)
    p = mmca.Projector(baseline_path[0])
    with pytest.raises(TypeError):
        p.project(np.zeros((1, 2, 20), np.float32), np.zeros((1, 2, 12), np.float32))
