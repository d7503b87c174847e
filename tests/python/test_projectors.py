"""mmca's projectors (SPEC §4) against PyTorch oracles (projector_oracle.py).

Random checkpoints are written during the run by the official ``safetensors`` package from the
state_dict() of torch module trees named like the reference model's projector, in several configs
(odd sizes, with and without a CLS token, key grids equal to and different from the query grid,
stored and computed positions, f32/f16/bf16 weights). Outputs must agree within 1e-4
(max |mmca - oracle| / max |oracle|).

    PYTHONPATH=build/python .venv/bin/python -m pytest -q tests/python/test_projectors.py
"""
from __future__ import annotations

import os
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
safetensors_torch = pytest.importorskip("safetensors.torch")

sys.path.insert(0, os.path.dirname(__file__))
import projector_oracle as oracle  # noqa: E402

TOL = 1e-4


@pytest.fixture(scope="module")
def mm():
    try:
        import mmca
    except ImportError:
        pytest.skip("the mmca package is not importable (set PYTHONPATH to <build>/python)")
    if not hasattr(mmca, "Projector"):
        pytest.skip("mmca was built without the projector bindings")
    return mmca


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(a.astype(np.float64) - b)) / np.max(np.abs(b)))


def _write(tmp_path, name: str, sd: dict) -> str:
    path = str(tmp_path / f"{name}.safetensors")
    safetensors_torch.save_file(sd, path)
    return path


def _features(n: int, t: int, dv: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, t, dv)).astype(np.float32)


BASELINE = {
    "f32": dict(dv=24, h=40, t=7, n=2, dtype="f32"),
    "odd_bf16": dict(dv=33, h=17, t=5, n=3, dtype="bf16"),
    "f16_one_token": dict(dv=16, h=9, t=1, n=2, dtype="f16"),
}


@pytest.mark.parametrize("name", sorted(BASELINE))
def test_baseline(mm, tmp_path, name):
    c = BASELINE[name]
    sd = oracle.state_dict_as(oracle.make_module("baseline", c["dv"], c["h"], seed=1), "projection.", c["dtype"])
    p = mm.Projector(_write(tmp_path, name, sd))
    assert (p.kind, p.vision_dim, p.hidden) == ("baseline", c["dv"], c["h"])
    x = _features(c["n"], c["t"], c["dv"], 2)
    got = p.project(x)
    want = oracle.baseline(x, sd)
    assert got.shape == want.shape == (c["n"], c["t"], c["h"])
    assert _rel(got, want) < TOL


def test_baseline_other_prefix(mm, tmp_path):
    sd = oracle.state_dict_as(oracle.make_module("baseline", 12, 8, seed=3), "model.proj.", "f32")
    p = mm.Projector(_write(tmp_path, "prefix", sd), "model.proj.", "baseline")
    x = _features(2, 3, 12, 4)
    assert _rel(p.project(x), oracle.baseline(x, sd, "model.proj.")) < TOL


VIT = {
    "quick_gelu_f32": dict(dv=24, h=20, heads=3, mlp=50, act="quick_gelu", eps=1e-5, t=10, n=2, dtype="f32"),
    "gelu_bf16": dict(dv=32, h=21, heads=4, mlp=40, act="gelu", eps=1e-5, t=9, n=2, dtype="bf16"),
    "odd_f16": dict(dv=15, h=7, heads=5, mlp=31, act="gelu", eps=1e-6, t=13, n=1, dtype="f16"),
}


@pytest.mark.parametrize("name", sorted(VIT))
def test_vit(mm, tmp_path, name):
    c = VIT[name]
    module = oracle.make_module("vit", c["dv"], c["h"], vit_heads=c["heads"], mlp=c["mlp"], act=c["act"],
                                vit_eps=c["eps"], seed=5)
    sd = oracle.state_dict_as(module, "projection.", c["dtype"])
    p = mm.Projector(_write(tmp_path, name, sd), vit_heads=c["heads"], vit_act=c["act"], vit_eps=c["eps"])
    assert p.kind == "vit"
    assert p.config["layer"] == dict(width=c["dv"], heads=c["heads"], mlp_width=c["mlp"],
                                     eps=pytest.approx(c["eps"]),
                                     act={"gelu": "gelu_erf", "quick_gelu": "quick_gelu"}[c["act"]])
    x = _features(c["n"], c["t"], c["dv"], 6)
    got = p.project(x)
    want = oracle.vit(x, sd, heads=c["heads"], act=c["act"], eps=c["eps"])
    assert got.shape == want.shape == (c["n"], c["t"], c["h"])
    assert _rel(got, want) < TOL


# queries form a √Q × √Q grid; the key grid is √(T − CLS); positions stored or computed.
PERCEIVER = {
    "cls_grid4_q9_f32": dict(dv=20, h=24, heads=3, q=9, t=17, cls=True, pos=False, n=2, dtype="f32"),
    "no_cls_same_grid_bf16": dict(dv=18, h=16, heads=2, q=16, t=16, cls=False, pos=True, n=2, dtype="bf16"),
    "cls_grid5_stored_pos_f16": dict(dv=13, h=20, heads=5, q=9, t=26, cls=True, pos=True, n=1, dtype="f16"),
    "no_cls_smaller_grid_f32": dict(dv=12, h=8, heads=1, q=25, t=9, cls=False, pos=False, n=3, dtype="f32"),
    "default_heads_h256": dict(dv=16, h=256, heads=0, q=4, t=5, cls=True, pos=True, n=2, dtype="f32"),
}


@pytest.mark.parametrize("name", sorted(PERCEIVER))
def test_perceiver(mm, tmp_path, name):
    c = PERCEIVER[name]
    heads = c["heads"] or c["h"] // 128
    module = oracle.make_module("perceiver", c["dv"], c["h"], queries=c["q"], heads=heads, pos_embed=c["pos"], seed=7)
    sd = oracle.state_dict_as(module, "projection.", c["dtype"])
    assert ("projection.pos_embed" in sd) == c["pos"]
    p = mm.Projector(_write(tmp_path, name, sd), input_tokens=c["t"], has_cls=c["cls"], heads=c["heads"])
    assert p.kind == "perceiver"
    assert p.config["heads"] == heads and p.config["queries"] == c["q"]
    assert p.output_tokens(c["t"]) == c["q"]
    x = _features(c["n"], c["t"], c["dv"], 8)
    got = p.project(x)
    want = oracle.perceiver(x, sd, heads=heads, has_cls=c["cls"])
    assert got.shape == want.shape == (c["n"], c["q"], c["h"])
    assert _rel(got, want) < TOL


def test_perceiver_default_input_tokens(mm, tmp_path):
    sd = oracle.state_dict_as(oracle.make_module("perceiver", 10, 12, queries=9, heads=2, seed=9), "projection.", "f32")
    path = _write(tmp_path, "default_tokens", sd)
    assert mm.Projector(path, heads=2).output_tokens(9) == 9
    assert mm.Projector(path, heads=2, has_cls=True).config["input_tokens"] == 10


@pytest.mark.parametrize("cls", [False, True])
def test_perceiver_formula_matches_torch_mha(cls):
    """The oracle's formula against torch.nn.MultiheadAttention's own forward on the same module."""
    module = oracle.make_module("perceiver", 14, 24, queries=9, heads=3, pos_embed=True, seed=11)
    sd = oracle.state_dict_as(module, "projection.", "f32")
    t = 16 + (1 if cls else 0)
    x = _features(2, t, 14, 12)
    a = oracle.perceiver(x, sd, heads=3, has_cls=cls)
    b = oracle.perceiver_with_torch_mha(x, module, has_cls=cls)
    assert _rel(a, b) < 1e-10


def test_oracle_sincos_matches_reference_layout():
    """The oracle's table: first quarter sin(c·ω) with c the column, third quarter sin(r·ω)."""
    tab = oracle.sincos_2d(4, 8)
    r, c = 2, 3
    row = tab[r * 4 + c]
    omega = 1.0 / 10000.0 ** (np.arange(2) / 2)
    np.testing.assert_allclose(row, np.concatenate([np.sin(c * omega), np.cos(c * omega),
                                                    np.sin(r * omega), np.cos(r * omega)]))
