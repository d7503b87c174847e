"""Oracle for mmca's QWen-VL vision encoder: a plain PyTorch forward pass written from SPEC §3.

Everything is computed in float64 from the tensors of a state dict (names without the
"vis_encoder." prefix, SPEC §9):

    conv1.weight [W, 3, P, P]            Conv2d, stride P, no bias
    positional_embedding [g0², W]        learned table, bicubic-resized to the patch grid
    ln_pre.{weight,bias}
    transformer.resblocks.N.ln_1 / ln_2, attn.in_proj (per-head interleaved q|k|v),
        attn.out_proj, mlp.c_fc, mlp.c_proj (exact GELU)
    attn_pool.{query, pos_embed, kv_proj.weight, ln_q, ln_kv, attn.in_proj_weight,
        attn.in_proj_bias, attn.out_proj}  resampler (torch's multi-head attention)
    ln_post.{weight,bias}

Also the two position tables of SPEC §3 (2D sin-cos, bicubic resize) in numpy / torch, and a
random checkpoint maker. Nothing here is shared with mmca.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F


def sincos_2d(grid: int, dim: int) -> np.ndarray:
    """(grid², dim) float64: for p = r·grid + c and ω_i = 10000^(−i/(dim/4)):
    [sin(c·ω), cos(c·ω), sin(r·ω), cos(r·ω)]."""
    quarter = dim // 4
    omega = 1.0 / 10000.0 ** (np.arange(quarter, dtype=np.float64) / quarter)
    r, c = np.meshgrid(np.arange(grid, dtype=np.float64), np.arange(grid, dtype=np.float64), indexing="ij")
    r, c = r.reshape(-1, 1), c.reshape(-1, 1)
    return np.concatenate([np.sin(c * omega), np.cos(c * omega), np.sin(r * omega), np.cos(r * omega)], axis=1)


def resize_table(table: torch.Tensor, grid_out: int) -> torch.Tensor:
    """(g², D) -> (grid_out², D) with F.interpolate(bicubic, align_corners=False); unchanged when g == grid_out."""
    g = int(round(math.sqrt(table.shape[0])))
    if g == grid_out:
        return table
    img = table.reshape(1, g, g, -1).permute(0, 3, 1, 2)
    out = F.interpolate(img, size=(grid_out, grid_out), mode="bicubic", align_corners=False)
    return out.permute(0, 2, 3, 1).reshape(grid_out * grid_out, -1)


def forward(state: dict, images: torch.Tensor, *, heads: int, pool_heads: int, eps: float = 1e-6) -> torch.Tensor:
    """images (N, 3, S, S) -> (N, Q, E), float64."""
    s = {k: v.double() for k, v in state.items()}
    x = images.double()
    conv = s["conv1.weight"]
    W, P = conv.shape[0], conv.shape[2]
    x = F.conv2d(x, conv, stride=P)                      # (N, W, G, G)
    N, _, G, _ = x.shape
    x = x.flatten(2).transpose(1, 2)                     # (N, T, W)
    T = G * G
    x = x + resize_table(s["positional_embedding"], G)
    x = F.layer_norm(x, (W,), s["ln_pre.weight"], s["ln_pre.bias"], eps)
    D = W // heads
    layer = 0
    while f"transformer.resblocks.{layer}.ln_1.weight" in s:
        p = f"transformer.resblocks.{layer}."
        h = F.layer_norm(x, (W,), s[p + "ln_1.weight"], s[p + "ln_1.bias"], eps)
        qkv = F.linear(h, s[p + "attn.in_proj.weight"], s[p + "attn.in_proj.bias"])   # (N, T, 3W)
        qkv = qkv.view(N, T, heads, 3 * D)
        q, k, v = (t.permute(0, 2, 1, 3) for t in qkv.split(D, dim=-1))             # (N, heads, T, D)
        att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(D), dim=-1) @ v
        att = att.permute(0, 2, 1, 3).reshape(N, T, W)
        x = x + F.linear(att, s[p + "attn.out_proj.weight"], s[p + "attn.out_proj.bias"])
        h = F.layer_norm(x, (W,), s[p + "ln_2.weight"], s[p + "ln_2.bias"], eps)
        h = F.gelu(F.linear(h, s[p + "mlp.c_fc.weight"], s[p + "mlp.c_fc.bias"]))
        x = x + F.linear(h, s[p + "mlp.c_proj.weight"], s[p + "mlp.c_proj.bias"])
        layer += 1

    query = s["attn_pool.query"]
    Q, E = query.shape
    kv = F.linear(x, s["attn_pool.kv_proj.weight"]) if "attn_pool.kv_proj.weight" in s else x
    kv = F.layer_norm(kv, (E,), s["attn_pool.ln_kv.weight"], s["attn_pool.ln_kv.bias"], eps)
    q = F.layer_norm(query, (E,), s["attn_pool.ln_q.weight"], s["attn_pool.ln_q.bias"], eps)
    pos_q = s["attn_pool.pos_embed"]
    pos_k = resize_table(pos_q, G)
    qs = (q + pos_q).unsqueeze(1).expand(Q, N, E)        # (Q, N, E): torch's sequence-first layout
    ks = (kv + pos_k).transpose(0, 1)                    # (T, N, E)
    vs = kv.transpose(0, 1)
    out, _ = F.multi_head_attention_forward(
        qs, ks, vs, E, pool_heads, s["attn_pool.attn.in_proj_weight"], s["attn_pool.attn.in_proj_bias"],
        None, None, False, 0.0, s["attn_pool.attn.out_proj.weight"], s["attn_pool.attn.out_proj.bias"],
        training=False, need_weights=False)
    out = out.transpose(0, 1)                            # (N, Q, E)
    return F.layer_norm(out, (E,), s["ln_post.weight"], s["ln_post.bias"], eps)


def random_state(seed: int, *, width=64, heads=4, layers=2, mlp_width=96, patch=14, pos_grid=3, output_dim=32,
                 queries=4, kv_proj=True, std=0.1) -> dict:
    """A random float32 state dict of the shapes of SPEC §3 (names without prefix)."""
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, scale=std):
        return scale * torch.randn(*shape, generator=g)

    def norm(n):
        return 1.0 + 0.2 * torch.randn(n, generator=g), 0.1 * torch.randn(n, generator=g)

    W, E = width, output_dim
    s = {"conv1.weight": rnd(W, 3, patch, patch, scale=0.05), "positional_embedding": rnd(pos_grid ** 2, W, scale=0.5)}
    s["ln_pre.weight"], s["ln_pre.bias"] = norm(W)
    for l in range(layers):
        p = f"transformer.resblocks.{l}."
        s[p + "ln_1.weight"], s[p + "ln_1.bias"] = norm(W)
        s[p + "ln_2.weight"], s[p + "ln_2.bias"] = norm(W)
        s[p + "attn.in_proj.weight"], s[p + "attn.in_proj.bias"] = rnd(3 * W, W), rnd(3 * W)
        s[p + "attn.out_proj.weight"], s[p + "attn.out_proj.bias"] = rnd(W, W), rnd(W)
        s[p + "mlp.c_fc.weight"], s[p + "mlp.c_fc.bias"] = rnd(mlp_width, W), rnd(mlp_width)
        s[p + "mlp.c_proj.weight"], s[p + "mlp.c_proj.bias"] = rnd(W, mlp_width), rnd(W)
    pool_grid = int(round(math.sqrt(queries)))
    s["attn_pool.query"] = rnd(queries, E, scale=0.5)
    s["attn_pool.pos_embed"] = torch.from_numpy(sincos_2d(pool_grid, E)).float()
    if kv_proj:
        s["attn_pool.kv_proj.weight"] = rnd(E, W)
    s["attn_pool.ln_q.weight"], s["attn_pool.ln_q.bias"] = norm(E)
    s["attn_pool.ln_kv.weight"], s["attn_pool.ln_kv.bias"] = norm(E)
    s["attn_pool.attn.in_proj_weight"], s["attn_pool.attn.in_proj_bias"] = rnd(3 * E, E), rnd(3 * E)
    s["attn_pool.attn.out_proj.weight"], s["attn_pool.attn.out_proj.bias"] = rnd(E, E), rnd(E)
    s["ln_post.weight"], s["ln_post.bias"] = norm(E)
    return s
