"""mmca.grad (the backward passes of docs/training.md) against PyTorch autograd.

The oracle runs each forward in float64 torch with requires_grad leaves (weights read back from their
stored dtype, so f16/bf16 rounding is included) and calls .backward(dy); mmca computes in float32.
Gradients must agree within 1e-4 of max |oracle gradient| (the measure of docs/training.md).
The projectors are written as random safetensors checkpoints (projector_oracle.py) and differentiated
through the torch modules they come from (transformers' CLIPEncoderLayer for vit).

    PYTHONPATH=build/python .venv/bin/python -m pytest -q tests/python/test_nn_backward_torch.py
"""
from __future__ import annotations

import math
import os
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional

sys.path.insert(0, os.path.dirname(__file__))

TOL = 1e-4


@pytest.fixture(scope="module")
def g():
    try:
        import mmca
    except ImportError:
        pytest.skip("the mmca package is not importable (set PYTHONPATH to <build>/python)")
    if not hasattr(mmca, "grad"):
        pytest.skip("mmca was built without the grad bindings")
    return mmca.grad


def _rel(got, want) -> float:
    want = want.detach().numpy() if isinstance(want, torch.Tensor) else want
    return float(np.max(np.abs(np.asarray(got, np.float64) - want)) / max(np.max(np.abs(want)), 1e-300))


def _rand(rng, *shape, scale=1.0):
    return (scale * rng.standard_normal(shape)).astype(np.float32)


def _leaf(a):
    return torch.from_numpy(np.asarray(a, np.float64)).requires_grad_(True)


def _stored(w: np.ndarray, dtype: str):
    """(array passed to mmca, float64 values it holds)."""
    t = torch.from_numpy(w)
    if dtype == "f32":
        return w, w.astype(np.float64)
    if dtype == "f16":
        h = t.half()
        return h.numpy(), h.double().numpy()
    b = t.bfloat16()
    return b.view(torch.int16).numpy().view(np.uint16), b.double().numpy()


@pytest.mark.parametrize("dtype", ["f32", "f16", "bf16"])
@pytest.mark.parametrize("shape", [(5, 37, 19), (11, 131, 130), (1, 300, 7)])
def test_linear(g, dtype, shape):
    n, i, o = shape
    rng = np.random.default_rng(n + i + o)
    x, w, b, dy = _rand(rng, n, i), _rand(rng, o, i, scale=0.2), _rand(rng, o), _rand(rng, n, o)
    w_arg, w64 = _stored(w, dtype)
    dx, dw, db = g.linear_backward(x, w_arg, dy)
    xt, wt, bt = _leaf(x), _leaf(w64), _leaf(b)
    F.linear(xt, wt, bt).backward(torch.from_numpy(dy).double())
    assert _rel(dx, xt.grad) < TOL and _rel(dw, wt.grad) < TOL and _rel(db, bt.grad) < TOL
    dx2, dw2, db2 = g.linear_backward(x, w_arg, dy, weight_grad=False, bias_grad=False, num_threads=2)
    assert dw2 is None and db2 is None and np.array_equal(dx2, dx)


def test_linear_rejects_bad_arguments(g):
    x = np.zeros((2, 3), np.float32)
    with pytest.raises(TypeError, match="'weight'"):
        g.linear_backward(x, np.zeros((4, 3)), np.zeros((2, 4), np.float32))
    with pytest.raises(ValueError, match="'x'"):
        g.linear_backward(np.zeros((2, 5), np.float32), np.zeros((4, 3), np.float32), np.zeros((2, 4), np.float32))


@pytest.mark.parametrize("shape", [(3, 17), (70, 64)])
def test_rmsnorm(g, shape):
    rng = np.random.default_rng(1)
    x, w, dy = _rand(rng, *shape), 1 + _rand(rng, shape[1], scale=0.1), _rand(rng, *shape)
    dx, dw = g.rmsnorm_backward(x, w, dy, eps=1e-5)
    xt, wt = _leaf(x), _leaf(w)
    (wt * xt * torch.rsqrt(xt.pow(2).mean(-1, keepdim=True) + 1e-5)).backward(torch.from_numpy(dy).double())
    assert _rel(dx, xt.grad) < TOL and _rel(dw, wt.grad) < TOL


@pytest.mark.parametrize("shape,eps", [((4, 23), 1e-12), ((65, 48), 1e-6)])
def test_layernorm(g, shape, eps):
    rng = np.random.default_rng(2)
    x, w, b, dy = _rand(rng, *shape, scale=3), 1 + _rand(rng, shape[1], scale=0.1), _rand(rng, shape[1]), _rand(rng, *shape)
    dx, dw, db = g.layernorm_backward(x, w, dy, eps=eps)
    xt, wt, bt = _leaf(x), _leaf(w), _leaf(b)
    F.layer_norm(xt, (shape[1],), wt, bt, eps).backward(torch.from_numpy(dy).double())
    assert _rel(dx, xt.grad) < TOL and _rel(dw, wt.grad) < TOL and _rel(db, bt.grad) < TOL


@pytest.mark.parametrize("dtype", ["f32", "bf16"])
def test_swiglu(g, dtype):
    rng = np.random.default_rng(3)
    n, h, i = 6, 20, 33
    x, dy = _rand(rng, n, h), _rand(rng, n, h)
    ws = [_stored(_rand(rng, *s, scale=0.3), dtype) for s in [(i, h), (i, h), (h, i)]]
    dx, dg_, du, dd = g.swiglu_backward(x, ws[0][0], ws[1][0], ws[2][0], dy)
    xt, gt, ut, dt = _leaf(x), _leaf(ws[0][1]), _leaf(ws[1][1]), _leaf(ws[2][1])
    F.linear(F.silu(F.linear(xt, gt)) * F.linear(xt, ut), dt).backward(torch.from_numpy(dy).double())
    for got, want in [(dx, xt), (dg_, gt), (du, ut), (dd, dt)]:
        assert _rel(got, want.grad) < TOL


def _rope_torch(x, pos, heads, d, theta, scaling, factor, max_pos, total):
    if scaling == "dynamic" and total > max_pos:
        theta = theta * (factor * total / max_pos - (factor - 1)) ** (d / (d - 2))
    inv = 1.0 / theta ** (torch.arange(0, d, 2, dtype=torch.float64) / d)
    t = torch.tensor(pos, dtype=torch.float64)
    if scaling == "linear":
        t = t / factor
    ang = torch.outer(t, inv)
    cos, sin = torch.cat([ang.cos()] * 2, -1), torch.cat([ang.sin()] * 2, -1)
    xs = x.reshape(len(pos), heads, d)
    rot = torch.cat([-xs[..., d // 2:], xs[..., : d // 2]], -1)
    return (xs * cos[:, None] + rot * sin[:, None]).reshape(len(pos), heads * d)


@pytest.mark.parametrize("scaling", ["none", "linear", "dynamic"])
def test_rope(g, scaling):
    rng = np.random.default_rng(4)
    heads, d = 3, 16
    pos = [0, 5, 1, 40, 13, 77]
    dy = _rand(rng, len(pos), heads * d)
    dx = g.rope_backward(dy, np.array(pos), heads=heads, head_dim=d, scaling=scaling, factor=2.0, max_positions=32)
    xt = _leaf(_rand(rng, len(pos), heads * d))
    _rope_torch(xt, pos, heads, d, 10000.0, scaling, 2.0, 32, max(pos) + 1).backward(torch.from_numpy(dy).double())
    assert _rel(dx, xt.grad) < TOL


@pytest.mark.parametrize("act", ["gelu", "gelu_pytorch_tanh", "quick_gelu", "silu"])
def test_activation(g, act):
    rng = np.random.default_rng(5)
    x, dy = _rand(rng, 999, scale=3), _rand(rng, 999)
    dx = g.activation_backward(x, dy, activation=act)
    xt = _leaf(x)
    f = {"gelu": F.gelu, "gelu_pytorch_tanh": lambda v: F.gelu(v, approximate="tanh"),
         "quick_gelu": lambda v: v * torch.sigmoid(1.702 * v), "silu": F.silu}[act]
    f(xt).backward(torch.from_numpy(dy).double())
    assert _rel(dx, xt.grad) < TOL


@pytest.mark.parametrize("case", ["mixed", "all_supervised", "long_vocab"])
def test_cross_entropy(g, case):
    rng = np.random.default_rng(6)
    L, V = {"mixed": (9, 31), "all_supervised": (5, 7), "long_vocab": (4, 32003)}[case]
    logits = _rand(rng, L, V, scale=4)
    labels = rng.integers(0, V, L).astype(np.int64)
    if case == "mixed":
        labels[[0, 2, 3, 7]] = -100
    loss, dl = g.cross_entropy(logits, labels)
    lt = _leaf(logits)
    ref = F.cross_entropy(lt[:-1], torch.from_numpy(labels[1:]), ignore_index=-100)
    ref.backward()
    assert abs(loss - ref.item()) < 1e-5 * max(1.0, abs(ref.item()))
    assert _rel(dl, lt.grad) < TOL


def test_cross_entropy_nothing_supervised(g):
    logits = np.ones((3, 5), np.float32)
    loss, dl = g.cross_entropy(logits, [4, -100, -100])
    assert loss == 0.0 and not np.any(dl)
    with pytest.raises(ValueError, match="'labels'"):
        g.cross_entropy(logits, [0, 5, 1])


def test_embedding(g):
    rng = np.random.default_rng(7)
    ids = np.array([3, 0, 3, 9, 3, 1], np.int32)
    dy = _rand(rng, len(ids), 13)
    table = _leaf(_rand(rng, 10, 13))
    F.embedding(torch.from_numpy(ids.astype(np.int64)), table).backward(torch.from_numpy(dy).double())
    assert _rel(g.embedding_backward(ids, dy, vocab=10), table.grad) < 1e-6


@pytest.mark.parametrize("shape", [(7, 5, 2, 6), (130, 140, 3, 8), (1, 9, 1, 4)])
def test_dense_attention(g, shape):
    lq, lk, heads, d = shape
    rng = np.random.default_rng(lq)
    q, k, v, do = _rand(rng, lq, heads * d), _rand(rng, lk, heads * d), _rand(rng, lk, heads * d), _rand(rng, lq, heads * d)
    dq, dk, dv = g.dense_attention_backward(q, k, v, do, heads=heads)
    qt, kt, vt = _leaf(q), _leaf(k), _leaf(v)
    split = lambda t, n: t.reshape(n, heads, d).transpose(0, 1)  # noqa: E731
    p = torch.softmax(split(qt, lq) @ split(kt, lk).transpose(1, 2) / math.sqrt(d), -1)
    (p @ split(vt, lk)).transpose(0, 1).reshape(lq, heads * d).backward(torch.from_numpy(do).double())
    assert _rel(dq, qt.grad) < TOL and _rel(dk, kt.grad) < TOL and _rel(dv, vt.grad) < TOL


# ---- projectors ----

def _projector_setup(tmp_path, kind, dtype, **kw):
    oracle = pytest.importorskip("projector_oracle")
    st = pytest.importorskip("safetensors.torch")
    module = oracle.make_module(kind, kw["dv"], kw["h"], **kw.get("make", {}), seed=11)
    sd = oracle.state_dict_as(module, "projection.", dtype)
    path = str(tmp_path / f"{kind}_{dtype}.safetensors")
    st.save_file(sd, path)
    leaves = {k[len("projection."):]: v.double().clone().requires_grad_(k != "projection.pos_embed")
              for k, v in sd.items()}
    return oracle, path, leaves


def _check_grads(grads, leaves, dx, xt):
    assert _rel(dx, xt.grad) < TOL
    trainable = {k: v for k, v in leaves.items() if v.requires_grad}
    assert sorted(grads) == sorted(trainable)
    scale = max(float(np.max(np.abs(v))) for v in grads.values())
    for name, t in trainable.items():
        assert grads[name].shape == tuple(t.shape), name
        if name.endswith("k_proj.bias"):  # a key bias shifts every score of a row equally: gradient 0
            assert float(np.max(np.abs(grads[name]))) < 1e-6 * scale, name
        else:
            assert _rel(grads[name], t.grad) < TOL, name


@pytest.mark.parametrize("dtype", ["f32", "bf16"])
def test_projector_baseline(g, tmp_path, dtype):
    oracle, path, t = _projector_setup(tmp_path, "baseline", dtype, dv=21, h=18)
    rng = np.random.default_rng(8)
    x, dy = _rand(rng, 2, 5, 21), _rand(rng, 2, 5, 18)
    y, dx, grads = g.projector_backward(path, x, dy)
    xt = _leaf(x)
    out = F.layer_norm(F.linear(xt, t["0.weight"], t["0.bias"]), (18,), t["1.weight"], t["1.bias"], 1e-12)
    assert _rel(y, out) < TOL
    out.backward(torch.from_numpy(dy).double())
    _check_grads(grads, t, dx, xt)


@pytest.mark.parametrize("act", ["gelu", "quick_gelu"])
def test_projector_vit(g, tmp_path, act):
    from transformers.models.clip.modeling_clip import CLIPEncoderLayer

    dv, h, heads, mlp = 24, 20, 3, 37
    oracle, path, t = _projector_setup(tmp_path, "vit", "f32", dv=dv, h=h,
                                       make=dict(vit_heads=heads, mlp=mlp, act=act, vit_eps=1e-5))
    rng = np.random.default_rng(9)
    x, dy = _rand(rng, 2, 7, dv), _rand(rng, 2, 7, h)
    y, dx, grads = g.projector_backward(path, x, dy, vit_heads=heads, vit_act=act, vit_eps=1e-5)
    layer = CLIPEncoderLayer(oracle.vit_layer_config(dv, heads, mlp, act, 1e-5)).double()
    with torch.no_grad():
        for name, p in layer.named_parameters():
            p.copy_(t["vis_layer." + name])
    xt = _leaf(x)
    z = layer(xt, None, None)[0]
    out = F.layer_norm(F.linear(z, t["projection.0.weight"], t["projection.0.bias"]), (h,),
                       t["projection.1.weight"], t["projection.1.bias"], 1e-12)
    assert _rel(y, out) < TOL
    out.backward(torch.from_numpy(dy).double())
    for name, p in layer.named_parameters():  # the layer's own copies hold its gradients
        t["vis_layer." + name].grad = p.grad
    _check_grads(grads, t, dx, xt)


@pytest.mark.parametrize("cfg", [dict(dv=20, h=24, heads=3, q=9, t=17, cls=True, pos=False, dtype="f32"),
                                 dict(dv=18, h=16, heads=2, q=16, t=16, cls=False, pos=True, dtype="bf16")])
def test_projector_perceiver(g, tmp_path, cfg):
    h, heads, q = cfg["h"], cfg["heads"], cfg["q"]
    oracle, path, t = _projector_setup(tmp_path, "perceiver", cfg["dtype"], dv=cfg["dv"], h=h,
                                       make=dict(queries=q, heads=heads, pos_embed=cfg["pos"]))
    rng = np.random.default_rng(10)
    n = 2
    x, dy = _rand(rng, n, cfg["t"], cfg["dv"]), _rand(rng, n, q, h)
    y, dx, grads = g.projector_backward(path, x, dy, input_tokens=cfg["t"], has_cls=cfg["cls"], heads=heads)
    xt = _leaf(x)
    xs = xt[:, 1:] if cfg["cls"] else xt
    tk = xs.shape[1]
    pos_q = t["pos_embed"] if "pos_embed" in t else torch.from_numpy(oracle.sincos_2d(math.isqrt(q), h))
    pos_k = oracle.resize_table(pos_q.detach(), math.isqrt(tk))
    ln = lambda v, p: F.layer_norm(v, (h,), t[p + ".weight"], t[p + ".bias"], 1e-12)  # noqa: E731
    kv = ln(F.linear(xs, t["kv_proj.weight"], t["kv_proj.bias"]), "ln_kv")
    qq = ln(t["query"], "ln_q") + pos_q
    wq, wk, wv = t["attn.in_proj_weight"].split(h)
    bq, bk, bv = t["attn.in_proj_bias"].split(h)
    d = h // heads
    qp = F.linear(qq, wq, bq).reshape(q, heads, d).permute(1, 0, 2)
    kp = F.linear(kv + pos_k, wk, bk).reshape(n, tk, heads, d).permute(0, 2, 1, 3)
    vp = F.linear(kv, wv, bv).reshape(n, tk, heads, d).permute(0, 2, 1, 3)
    s = torch.einsum("hqd,nhkd->nhqk", qp, kp) / math.sqrt(d)
    o = torch.einsum("nhqk,nhkd->nqhd", torch.softmax(s, -1), vp).reshape(n, q, h)
    o = F.linear(o, t["attn.out_proj.weight"], t["attn.out_proj.bias"])
    out = F.linear(ln(o, "projection.0"), t["projection.1.weight"], t["projection.1.bias"])
    assert _rel(y, out) < TOL
    out.backward(torch.from_numpy(dy).double())
    _check_grads(grads, t, dx, xt)
