"""PyTorch oracles of the projectors of SPEC §4, in float64, and random checkpoints under the reference
model's tensor names.

The checkpoints are the ``state_dict()`` of torch module trees with the reference model's attribute
names (``projection`` = the projector module of the visual-chat model), so the names are those torch
gives them:

    baseline   projection = Sequential(Linear(Dv, H), LayerNorm(H))
    vit        projection.vis_layer = transformers' CLIPEncoderLayer (width Dv)
               projection.projection = Sequential(Linear(Dv, H), LayerNorm(H))
    perceiver  projection.{query (Q, H), pos_embed (Q, H) optional, kv_proj = Linear(Dv, H),
               attn = MultiheadAttention(H, heads), ln_q, ln_kv = LayerNorm(H),
               projection = Sequential(LayerNorm(H), Linear(H, H))}

The forward functions are written from SPEC §4 (the vit layer is transformers' CLIPEncoderLayer,
4.33.3). They read the weights back from the stored tensors, so f16/bf16 rounding is included.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from transformers import CLIPVisionConfig
from transformers.models.clip.modeling_clip import CLIPEncoderLayer

EPS = 1e-12
DTYPES = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}


def sincos_2d(grid: int, dim: int) -> np.ndarray:
    """(grid², dim): row p = r·grid + c is [sin(c·ω), cos(c·ω), sin(r·ω), cos(r·ω)], ω_i = 10000^(−i/(dim/4))."""
    quarter = dim // 4
    omega = 1.0 / 10000.0 ** (np.arange(quarter, dtype=np.float64) / quarter)
    rows, cols = np.meshgrid(np.arange(grid, dtype=np.float64), np.arange(grid, dtype=np.float64), indexing="ij")
    r = rows.reshape(-1, 1) * omega
    c = cols.reshape(-1, 1) * omega
    return np.concatenate([np.sin(c), np.cos(c), np.sin(r), np.cos(r)], axis=1)


def resize_table(table: torch.Tensor, grid_out: int) -> torch.Tensor:
    """(g², D) -> (grid_out², D) with torch's bicubic interpolation (align_corners=False)."""
    g = math.isqrt(table.shape[0])
    if g == grid_out:
        return table
    img = table.reshape(1, g, g, -1).permute(0, 3, 1, 2)
    out = F.interpolate(img, size=(grid_out, grid_out), mode="bicubic", align_corners=False)
    return out.permute(0, 2, 3, 1).reshape(grid_out * grid_out, -1)


def _randomize(module: nn.Module, gen: torch.Generator) -> None:
    """Random weights with the scale of a trained layer: matrices ~ 1/sqrt(in), norms ~ 1 ± 0.1."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith("pos_embed"):
                continue
            if name.endswith("query"):
                p.copy_(0.5 * torch.randn(p.shape, generator=gen))
            elif p.dim() == 2:
                p.copy_(torch.randn(p.shape, generator=gen) / math.sqrt(p.shape[1]))
            else:  # LayerNorm weights (the only 1-D weights) near 1, biases near 0
                base = 1.0 if name.endswith("weight") else 0.0
                p.copy_(base + 0.1 * torch.randn(p.shape, generator=gen))


def vit_layer_config(dv: int, heads: int, mlp: int, act: str, eps: float) -> CLIPVisionConfig:
    return CLIPVisionConfig(hidden_size=dv, intermediate_size=mlp, num_attention_heads=heads, hidden_act=act,
                            layer_norm_eps=eps)


def make_module(kind: str, dv: int, h: int, *, queries: int = 256, heads: int = 0, vit_heads: int = 16,
                mlp: int = 0, act: str = "gelu", vit_eps: float = 1e-5, pos_embed: bool = False,
                seed: int = 0) -> nn.Module:
    """A module tree whose state_dict() has the reference projector's names (without 'projection.')."""
    gen = torch.Generator().manual_seed(seed)
    m = nn.Module()
    if kind == "baseline":
        m = nn.Sequential(nn.Linear(dv, h), nn.LayerNorm(h, eps=EPS))
    elif kind == "vit":
        m.vis_layer = CLIPEncoderLayer(vit_layer_config(dv, vit_heads, mlp, act, vit_eps))
        m.projection = nn.Sequential(nn.Linear(dv, h), nn.LayerNorm(h, eps=EPS))
    elif kind == "perceiver":
        if pos_embed:
            m.pos_embed = nn.Parameter(torch.from_numpy(sincos_2d(math.isqrt(queries), h)).float(),
                                       requires_grad=False)
        m.query = nn.Parameter(torch.zeros(queries, h))
        m.kv_proj = nn.Linear(dv, h)
        m.attn = nn.MultiheadAttention(h, heads or h // 128)
        m.ln_q = nn.LayerNorm(h, eps=EPS)
        m.ln_kv = nn.LayerNorm(h, eps=EPS)
        m.projection = nn.Sequential(nn.LayerNorm(h, eps=EPS), nn.Linear(h, h))
    else:
        raise ValueError(kind)
    _randomize(m, gen)
    return m


def state_dict_as(module: nn.Module, prefix: str, dtype: str) -> dict:
    """The module's tensors under prefix, stored as dtype (contiguous, for safetensors)."""
    return {prefix + k: v.detach().to(DTYPES[dtype]).contiguous() for k, v in module.state_dict().items()}


def _stored(sd: dict, prefix: str) -> dict:
    """The stored tensors below prefix, widened to float64."""
    return {k[len(prefix):]: v.to(torch.float64) for k, v in sd.items() if k.startswith(prefix)}


def _ln(x, w, b):
    return F.layer_norm(x, (x.shape[-1],), w, b, EPS)


def baseline(x: np.ndarray, sd: dict, prefix: str = "projection.") -> np.ndarray:
    """LayerNorm(Linear(x)), eps 1e-12."""
    t = _stored(sd, prefix)
    y = F.linear(torch.from_numpy(x).double(), t["0.weight"], t["0.bias"])
    return _ln(y, t["1.weight"], t["1.bias"]).numpy()


def vit(x: np.ndarray, sd: dict, *, heads: int, act: str, eps: float, prefix: str = "projection.") -> np.ndarray:
    """CLIPEncoderLayer (transformers) -> Linear -> LayerNorm (1e-12)."""
    t = _stored(sd, prefix)
    dv = t["vis_layer.layer_norm1.weight"].shape[0]
    mlp = t["vis_layer.mlp.fc1.weight"].shape[0]
    layer = CLIPEncoderLayer(vit_layer_config(dv, heads, mlp, act, eps)).double()
    layer.load_state_dict({k[len("vis_layer."):]: v for k, v in t.items() if k.startswith("vis_layer.")})
    with torch.no_grad():
        z = layer(torch.from_numpy(x).double(), None, None)[0]
        y = F.linear(z, t["projection.0.weight"], t["projection.0.bias"])
        return _ln(y, t["projection.1.weight"], t["projection.1.bias"]).numpy()


def perceiver(x: np.ndarray, sd: dict, *, heads: int, has_cls: bool, prefix: str = "projection.") -> np.ndarray:
    """SPEC §4: kv = LN_kv(kv_proj(x')), q = LN_q(query) + pos_q, k = kv + pos_k, v = kv; multi-head
    attention (in_proj rows q | k | v, softmax scale 1/sqrt(H/heads), out_proj); LayerNorm; Linear.
    pos_q is the stored pos_embed when there is one, else the sin-cos table of the query grid; pos_k
    is pos_q bicubic-resized to the grid of the image tokens."""
    t = _stored(sd, prefix)
    q_rows, h = t["query"].shape
    xs = torch.from_numpy(x).double()
    if has_cls:
        xs = xs[:, 1:, :]
    n, tk, _ = xs.shape
    pos_q = t["pos_embed"] if "pos_embed" in t else torch.from_numpy(sincos_2d(math.isqrt(q_rows), h))
    grid_k = math.isqrt(tk)
    assert grid_k * grid_k == tk
    pos_k = resize_table(pos_q, grid_k)
    kv = _ln(F.linear(xs, t["kv_proj.weight"], t["kv_proj.bias"]), t["ln_kv.weight"], t["ln_kv.bias"])
    q = _ln(t["query"], t["ln_q.weight"], t["ln_q.bias"]) + pos_q
    k = kv + pos_k
    wq, wk, wv = t["attn.in_proj_weight"].split(h)
    bq, bk, bv = t["attn.in_proj_bias"].split(h)
    d = h // heads
    qp = F.linear(q, wq, bq).reshape(q_rows, heads, d).permute(1, 0, 2)            # (heads, Q, d)
    kp = F.linear(k, wk, bk).reshape(n, tk, heads, d).permute(0, 2, 1, 3)          # (n, heads, T, d)
    vp = F.linear(kv, wv, bv).reshape(n, tk, heads, d).permute(0, 2, 1, 3)
    s = torch.einsum("hqd,nhkd->nhqk", qp, kp) / math.sqrt(d)
    o = torch.einsum("nhqk,nhkd->nqhd", torch.softmax(s, dim=-1), vp).reshape(n, q_rows, h)
    o = F.linear(o, t["attn.out_proj.weight"], t["attn.out_proj.bias"])
    o = _ln(o, t["projection.0.weight"], t["projection.0.bias"])
    return F.linear(o, t["projection.1.weight"], t["projection.1.bias"]).numpy()


def perceiver_with_torch_mha(x: np.ndarray, module: nn.Module, *, has_cls: bool) -> np.ndarray:
    """The same computation through torch.nn.MultiheadAttention's own forward (sequence-first), on
    the float64 copy of a perceiver module tree (a second, independent check of the formula)."""
    m = module.double()
    xs = torch.from_numpy(x).double()
    if has_cls:
        xs = xs[:, 1:, :]
    q_rows, h = m.query.shape
    pos_q = m.pos_embed if hasattr(m, "pos_embed") else torch.from_numpy(sincos_2d(math.isqrt(q_rows), h))
    pos_k = resize_table(pos_q, math.isqrt(xs.shape[1]))
    with torch.no_grad():
        kv = m.ln_kv(m.kv_proj(xs)).permute(1, 0, 2)                                 # (T, N, H)
        q = (m.ln_q(m.query) + pos_q).unsqueeze(1).repeat(1, xs.shape[0], 1)      # (Q, N, H)
        out = m.attn(q, kv + pos_k.unsqueeze(1), kv, need_weights=False)[0]
        return m.projection(out.permute(1, 0, 2)).numpy()
