"""mmca's vision encoders against independent PyTorch implementations.

* HF CLIP: transformers 4.33.3 ``CLIPVisionModel`` itself (run in float64), in several small
  configs (odd widths, 28/42/56-pixel images with patch 14, the 224-pixel geometry of ViT-L/14 with a
  narrow width, exact and quick GELU, float16 storage): last_hidden_state and hidden_states[-2].
* QWen-VL ViT: qwen_vit_oracle.py, a plain PyTorch forward written from SPEC §3 (F.conv2d,
  F.interpolate bicubic for the position tables, explicit attention over the per-head interleaved
  qkv layout, torch's multi_head_attention_forward for the resampler), float64, with float32,
  bfloat16 and float16 checkpoints.
* The position tables: mmca.sincos_2d against a numpy formula and against the MAE-style code QWen-VL
  uses; mmca.bicubic_resize_table against F.interpolate.

Checkpoints are written during the run with the official ``safetensors`` package. Agreement:
max |mmca - oracle| / max |oracle| <= 1e-4.

Run with the interpreter of .venv and PYTHONPATH pointing at a build of the mmca package, e.g.
    PYTHONPATH=build/python .venv/bin/python -m pytest -q tests/python/test_vision_encoders.py
"""
from __future__ import annotations

import json
import os
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
safetensors_torch = pytest.importorskip("safetensors.torch")

sys.path.insert(0, os.path.dirname(__file__))
import qwen_vit_oracle as qwen_oracle  # noqa: E402

TOL = 1e-4
DTYPES = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16}


@pytest.fixture(scope="module")
def mm():
    try:
        import mmca
    except ImportError:
        pytest.skip("the mmca package is not importable (set PYTHONPATH to <build>/python)")
    if not hasattr(mmca, "QwenViT"):
        pytest.skip("mmca was built without the vision bindings (bind_vision)")
    return mmca


def rel_err(got, want) -> float:
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    return float(np.max(np.abs(got - want)) / np.max(np.abs(want)))


def images(seed: int, n: int, size: int, channels: int = 3) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-2.0, 2.0, (n, channels, size, size)).astype(np.float32)


# --------------------------------------------------------------------------------------------
# Position tables
# --------------------------------------------------------------------------------------------
def mae_sincos(embed_dim: int, grid_size: int) -> np.ndarray:
    """The 2D sin-cos table as QWen-VL's resampler builds it (MAE's get_2d_sincos_pos_embed): a
    meshgrid with the column coordinate first; the first half of the row encodes it, the second the
    row coordinate, each half [sin | cos] of pos · 10000^(-i / (embed_dim / 4))."""
    grid = np.meshgrid(np.arange(grid_size, dtype=np.float64), np.arange(grid_size, dtype=np.float64))
    grid = np.stack(grid, axis=0).reshape(2, -1)

    def one_d(dim, pos):
        omega = 1.0 / 10000 ** (np.arange(dim // 2, dtype=np.float64) / (dim / 2.0))
        out = np.einsum("m,d->md", pos, omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    return np.concatenate([one_d(embed_dim // 2, grid[0]), one_d(embed_dim // 2, grid[1])], axis=1)


@pytest.mark.parametrize("grid,dim", [(2, 8), (3, 32), (16, 4096), (5, 12)])
def test_sincos_2d(mm, grid, dim):
    got = mm.sincos_2d(grid, dim)
    assert got.shape == (grid * grid, dim) and got.dtype == np.float32
    np.testing.assert_allclose(got, qwen_oracle.sincos_2d(grid, dim), atol=2e-7, rtol=0)
    np.testing.assert_allclose(got, mae_sincos(dim, grid), atol=2e-7, rtol=0)


@pytest.mark.parametrize("grid_in,grid_out,dim", [(16, 32, 8), (3, 4, 5), (5, 3, 6), (2, 7, 3), (4, 4, 2), (1, 3, 4)])
def test_bicubic_resize_table(mm, grid_in, grid_out, dim):
    table = np.random.default_rng(grid_in * 10 + grid_out).standard_normal((grid_in * grid_in, dim)).astype(np.float32)
    got = mm.bicubic_resize_table(table, grid_out)
    img = torch.from_numpy(table).double().reshape(1, grid_in, grid_in, dim).permute(0, 3, 1, 2)
    want = torch.nn.functional.interpolate(img, size=(grid_out, grid_out), mode="bicubic", align_corners=False)
    want = want.permute(0, 2, 3, 1).reshape(grid_out * grid_out, dim).numpy()
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)


def test_qwen_pos_embed_sizes(mm):
    # QWen-VL's resampler: q positions 16×16 at 4096, k positions resized to the 32×32 patch grid.
    q = mm.sincos_2d(16, 4096)
    k = mm.bicubic_resize_table(q, 32)
    assert q.shape == (256, 4096) and k.shape == (1024, 4096)
    want = qwen_oracle.resize_table(torch.from_numpy(mae_sincos(4096, 16)), 32).numpy()
    assert rel_err(k, want) < 1e-5


# --------------------------------------------------------------------------------------------
# QWen-VL ViT
# --------------------------------------------------------------------------------------------
QWEN_CONFIGS = {
    # 4×4 patches, learned grid 3 -> 4 (upsampled), 4 queries (2×2 -> 4×4 key positions)
    "base": dict(shape=dict(width=64, heads=4, layers=2, mlp_width=96, pos_grid=3, output_dim=32, queries=4),
                 image=56, pool_heads=2),
    # odd sizes: 3×3 patches, learned grid 5 -> 3 (downsampled), 9 queries on a 3×3 grid (no key resize)
    "odd": dict(shape=dict(width=48, heads=3, layers=1, mlp_width=80, pos_grid=5, output_dim=24, queries=9),
                image=42, pool_heads=2),
    # 8×8 patches and 16 queries: images of a batch share the matrix products
    "batched": dict(shape=dict(width=32, heads=2, layers=2, mlp_width=64, pos_grid=3, output_dim=16, queries=16),
                    image=112, pool_heads=1),
}


def write_qwen(tmp_path, name, state, dtype, prefix="vis_encoder."):
    tensors = {prefix + k: v.to(DTYPES[dtype]).contiguous() for k, v in state.items()}
    tensors["lang_decoder.model.norm.weight"] = torch.ones(8)  # the rest of a visual-chat checkpoint
    path = str(tmp_path / f"{name}_{dtype}.safetensors")
    safetensors_torch.save_file(tensors, path)
    stored = safetensors_torch.load_file(path)
    return path, {k[len(prefix):]: v for k, v in stored.items() if k.startswith(prefix)}


@pytest.mark.parametrize("dtype", ["F32", "BF16", "F16"])
@pytest.mark.parametrize("name", sorted(QWEN_CONFIGS))
def test_qwen_vit_matches_oracle(mm, tmp_path, name, dtype):
    cfg = QWEN_CONFIGS[name]
    state = qwen_oracle.random_state(7, **cfg["shape"])
    path, stored = write_qwen(tmp_path, name, state, dtype)
    model = mm.QwenViT(path, image_size=cfg["image"], heads=cfg["shape"]["heads"], pool_heads=cfg["pool_heads"],
                       num_threads=2)
    c = model.config
    for key, value in cfg["shape"].items():
        assert c[key] == value, key
    assert c["image_size"] == cfg["image"] and c["tokens"] == (cfg["image"] // 14) ** 2
    x = images(3, 3, cfg["image"])
    got = model.encode(x)
    assert got.shape == (3, cfg["shape"]["queries"], cfg["shape"]["output_dim"]) and got.dtype == np.float32
    want = qwen_oracle.forward(stored, torch.from_numpy(x), heads=cfg["shape"]["heads"],
                               pool_heads=cfg["pool_heads"]).numpy()
    err = rel_err(got, want)
    print(f"qwen {name} {dtype}: rel err {err:.2e}")
    assert err <= TOL


def test_qwen_vit_without_stored_pos_embed(mm, tmp_path):
    # A checkpoint without attn_pool.pos_embed gets the same sin-cos table.
    cfg = QWEN_CONFIGS["base"]
    state = qwen_oracle.random_state(8, **cfg["shape"])
    with_path, stored = write_qwen(tmp_path, "with", state, "F32")
    no_pos = {k: v for k, v in state.items() if k != "attn_pool.pos_embed"}
    without_path, _ = write_qwen(tmp_path, "without", no_pos, "F32")
    kw = dict(image_size=cfg["image"], heads=4, pool_heads=2)
    x = images(4, 2, cfg["image"])
    a = mm.QwenViT(with_path, **kw).encode(x)
    b = mm.QwenViT(without_path, **kw).encode(x)
    np.testing.assert_array_equal(a, b)
    assert rel_err(a, qwen_oracle.forward(stored, torch.from_numpy(x), heads=4, pool_heads=2).numpy()) <= TOL


def test_qwen_vit_prefix_and_threads(mm, tmp_path):
    cfg = QWEN_CONFIGS["batched"]
    state = qwen_oracle.random_state(9, **cfg["shape"])
    path, _ = write_qwen(tmp_path, "prefixed", state, "BF16", prefix="transformer.visual.")
    model = mm.QwenViT(path, "transformer.visual.", image_size=cfg["image"], heads=2, pool_heads=1, num_threads=1)
    x = images(5, 3, cfg["image"])
    one = model.encode(x)
    model.num_threads = 2
    two = model.encode(x)
    np.testing.assert_array_equal(one, two)
    singles = np.concatenate([model.encode(x[i:i + 1]) for i in range(3)])
    np.testing.assert_array_equal(one, singles)


# --------------------------------------------------------------------------------------------
# HF CLIP
# --------------------------------------------------------------------------------------------
CLIP_CONFIGS = {
    "odd_28px": dict(hidden_size=36, intermediate_size=50, num_hidden_layers=3, num_attention_heads=3,
                     image_size=28, patch_size=14),
    "base_42px": dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                      image_size=42, patch_size=14),
    "gelu_56px": dict(hidden_size=40, intermediate_size=72, num_hidden_layers=2, num_attention_heads=5,
                      image_size=56, patch_size=14, hidden_act="gelu", layer_norm_eps=1e-6),
    "l14_224_geometry": dict(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=2,
                             image_size=224, patch_size=14),
}


def make_clip(seed: int, **kw):
    torch.manual_seed(seed)
    cfg = transformers.CLIPVisionConfig(**kw)
    model = transformers.CLIPVisionModel(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "layer_norm" in name or "layrnorm" in name or "layernorm" in name:
                p.copy_((1.0 if name.endswith("weight") else 0.0) + 0.2 * torch.randn_like(p))
            elif "embedding" in name:
                p.copy_(0.5 * torch.randn_like(p))
            else:
                p.copy_(0.1 * torch.randn_like(p))
    return model


def write_clip(model, path, dtype="F32"):
    state = {k: v.detach().to(DTYPES[dtype]).contiguous() for k, v in model.state_dict().items()
             if not k.endswith("position_ids")}
    safetensors_torch.save_file(state, path)
    with torch.no_grad():  # the oracle runs on the stored (rounded) values
        for k, v in safetensors_torch.load_file(path).items():
            model.state_dict()[k].copy_(v.float())
    return path


def clip_oracle(model, x):
    m = model.double()
    with torch.no_grad():
        out = m(pixel_values=torch.from_numpy(x).double(), output_hidden_states=True)
    return out.last_hidden_state.numpy(), out.hidden_states[-2].numpy()


def test_transformers_version():
    assert transformers.__version__ == "4.33.3"


@pytest.mark.parametrize("name", sorted(CLIP_CONFIGS))
def test_clip_matches_hf(mm, tmp_path, name):
    kw = CLIP_CONFIGS[name]
    model = make_clip(11, **kw)
    path = write_clip(model, str(tmp_path / f"{name}.safetensors"))
    config = dict(kw, hidden_act=kw.get("hidden_act", "quick_gelu"))
    enc = mm.ClipViT(path, config=config, num_threads=2)
    assert enc.config["tokens"] == (kw["image_size"] // 14) ** 2 + 1
    x = images(12, 3, kw["image_size"])
    last, penultimate = clip_oracle(model, x)
    got_last = enc.encode(x)
    got_pen = enc.encode(x, "penultimate")
    assert got_last.shape == last.shape and got_pen.shape == penultimate.shape
    e1, e2 = rel_err(got_last, last), rel_err(got_pen, penultimate)
    print(f"clip {name}: last_hidden_state {e1:.2e}, hidden_states[-2] {e2:.2e}")
    assert e1 <= TOL and e2 <= TOL


def test_clip_float16_storage_and_config_sources(mm, tmp_path):
    # Deduced config (heads = hidden / 64), a CLIPConfig-style config.json, and f16 weights.
    kw = dict(hidden_size=128, intermediate_size=80, num_hidden_layers=2, num_attention_heads=2,
              image_size=42, patch_size=14)
    model = make_clip(13, **kw)
    path = write_clip(model, str(tmp_path / "f16.safetensors"), "F16")
    x = images(14, 2, 42)
    last, penultimate = clip_oracle(model, x)
    deduced = mm.ClipViT(path)
    assert deduced.config["num_attention_heads"] == 2 and deduced.config["num_hidden_layers"] == 2
    cfg_path = tmp_path / "config.json"
    cfg_path.write_text(json.dumps({"model_type": "clip", "vision_config": dict(kw, hidden_act="quick_gelu")}))
    from_json = mm.ClipViT(path, config=str(cfg_path))
    for enc in (deduced, from_json):
        assert rel_err(enc.encode(x), last) <= TOL
        assert rel_err(enc.encode(x, output="penultimate"), penultimate) <= TOL


def test_clip_wrapped_prefix(mm, tmp_path):
    # A CLIPModel-like checkpoint that also holds other towers: the vision tensors under a longer prefix.
    kw = CLIP_CONFIGS["base_42px"]
    model = make_clip(15, **kw)
    state = {"model.vision_tower." + k: v.detach().contiguous() for k, v in model.state_dict().items()
             if not k.endswith("position_ids")}
    state["model.embed_tokens.weight"] = torch.zeros(4, 4)
    path = str(tmp_path / "wrapped.safetensors")
    safetensors_torch.save_file(state, path)
    enc = mm.ClipViT(path, "model.vision_tower.vision_model.", config=dict(kw))
    x = images(16, 2, kw["image_size"])
    assert rel_err(enc.encode(x), clip_oracle(model, x)[0]) <= TOL
