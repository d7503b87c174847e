"""The decoder's training path with LoRA adapters on q/k/v/o and gated cross-attention blocks
(mmca.LlamaModel.backward, docs/training.md) against torch autograd through a LLaMa written here in
plain PyTorch from SPEC §2.5 and §5 (RMSNorm, HF rotate-half RoPE, causal attention with grouped
kv heads, SwiGLU, the tanh-gated cross-attention block and gated MLP over the image rows of the
input, 'preceding' visibility), in float64. Nothing is shared with mmca but the checkpoint file."""
from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest
import torch

V, H, I, IC, LAYERS, HEADS, KV_HEADS = 37, 16, 24, 20, 2, 4, 2
D = H // HEADS
EPS = 1e-5
TOL = 1e-4


@pytest.fixture(scope="module")
def mm():
    import mmca
    return mmca


def make_checkpoint(folder, seed, every):
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, s=0.3, mean=0.0):
        return (mean + s * torch.randn(*shape, generator=g)).float()

    t = {"model.embed_tokens.weight": rnd(V, H, s=1.0), "model.norm.weight": rnd(H, s=0.1, mean=1.0),
         "lm_head.weight": rnd(V, H)}
    for l in range(LAYERS):
        p = f"model.layers.{l}."
        t[p + "input_layernorm.weight"] = rnd(H, s=0.1, mean=1.0)
        t[p + "post_attention_layernorm.weight"] = rnd(H, s=0.1, mean=1.0)
        t[p + "self_attn.q_proj.weight"] = rnd(HEADS * D, H)
        t[p + "self_attn.k_proj.weight"] = rnd(KV_HEADS * D, H)
        t[p + "self_attn.v_proj.weight"] = rnd(KV_HEADS * D, H)
        t[p + "self_attn.o_proj.weight"] = rnd(H, HEADS * D)
        t[p + "mlp.gate_proj.weight"] = rnd(I, H)
        t[p + "mlp.up_proj.weight"] = rnd(I, H)
        t[p + "mlp.down_proj.weight"] = rnd(H, I)
    blocks = (LAYERS + every - 1) // every
    for b in range(blocks):
        p = f"model.cross_blocks.{b}."
        t[p + "attn_norm.weight"] = rnd(H, s=0.1, mean=1.0)
        t[p + "q_proj.weight"] = rnd(HEADS * D, H)
        t[p + "k_proj.weight"] = rnd(KV_HEADS * D, H)
        t[p + "v_proj.weight"] = rnd(KV_HEADS * D, H)
        t[p + "o_proj.weight"] = rnd(H, HEADS * D)
        t[p + "attn_gate"] = torch.tensor([0.7 - 0.3 * b])
        t[p + "mlp_norm.weight"] = rnd(H, s=0.1, mean=1.0)
        t[p + "mlp.gate_proj.weight"] = rnd(IC, H)
        t[p + "mlp.up_proj.weight"] = rnd(IC, H)
        t[p + "mlp.down_proj.weight"] = rnd(H, IC)
        t[p + "mlp_gate"] = torch.tensor([-0.4])
    os.makedirs(folder, exist_ok=True)
    save_file(t, os.path.join(folder, "model.safetensors"))
    cfg = dict(vocab_size=V, hidden_size=H, intermediate_size=I, num_hidden_layers=LAYERS,
               num_attention_heads=HEADS, num_key_value_heads=KV_HEADS, max_position_embeddings=64,
               rms_norm_eps=EPS, rope_theta=10000.0, bos_token_id=1, eos_token_id=2, tie_word_embeddings=False,
               hidden_act="silu", model_type="llama", rope_scaling=None, cross_attention_every=every,
               cross_attention_intermediate=IC)
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(cfg, f)
    return {k: v.double() for k, v in t.items()}


def rms(x, w):
    return x * torch.rsqrt((x * x).mean(-1, keepdim=True) + EPS) * w


def rope(x, heads):
    L = x.shape[0]
    x = x.view(L, heads, D)
    half = D // 2
    inv = 10000.0 ** (-torch.arange(half, dtype=torch.float64) * 2 / D)
    ang = torch.arange(L, dtype=torch.float64)[:, None] * inv
    cos, sin = ang.cos()[:, None, :], ang.sin()[:, None, :]
    x0, x1 = x[..., :half], x[..., half:]
    return torch.cat([x0 * cos - x1 * sin, x1 * cos + x0 * sin], -1).reshape(L, heads * D)


def attend(q, k, v, allowed):
    """q (L, Hq·D), k/v (M, Hkv·D), allowed (L, M) bool; rows with no allowed key give 0."""
    L, M = allowed.shape
    qh = q.view(L, HEADS, D).transpose(0, 1)
    kh = k.view(M, KV_HEADS, D).transpose(0, 1).repeat_interleave(HEADS // KV_HEADS, 0)
    vh = v.view(M, KV_HEADS, D).transpose(0, 1).repeat_interleave(HEADS // KV_HEADS, 0)
    s = qh @ kh.transpose(1, 2) / math.sqrt(D)
    s = s.masked_fill(~allowed, -math.inf)
    any_key = allowed.any(-1)
    p = torch.softmax(torch.where(any_key[:, None], s, torch.zeros_like(s)), -1) * any_key[:, None]
    return (p @ vh).transpose(0, 1).reshape(L, HEADS * D)


def forward(t, lora, alpha, emb, types, every):
    """logits (B, L, V) of the decoder; lora: name -> tensor (or empty)."""
    out = []
    for b in range(emb.shape[0]):
        x0, ty = emb[b], types[b]
        L = x0.shape[0]
        h = x0
        text = torch.from_numpy(ty == 1)[:, None]
        image = torch.from_numpy(ty == 2)
        causal = torch.tril(torch.ones(L, L, dtype=torch.bool))
        preceding = torch.tril(torch.ones(L, L, dtype=torch.bool), -1) & image[None, :]

        def proj(x, l, p, w):
            y = x @ w.T
            a = lora.get(f"model.layers.{l}.self_attn.{p}_proj.lora_A.weight")
            if a is not None:
                bm = lora[f"model.layers.{l}.self_attn.{p}_proj.lora_B.weight"]
                y = y + (alpha / a.shape[0]) * (x @ a.T) @ bm.T
            return y

        for l in range(LAYERS):
            if l % every == 0:
                p = f"model.cross_blocks.{l // every}."
                q = rms(h, t[p + "attn_norm.weight"]) @ t[p + "q_proj.weight"].T
                k, v = x0 @ t[p + "k_proj.weight"].T, x0 @ t[p + "v_proj.weight"].T
                c = attend(q, k, v, preceding)
                h = h + text * torch.tanh(t[p + "attn_gate"]) * (c @ t[p + "o_proj.weight"].T)
                xm = rms(h, t[p + "mlp_norm.weight"])
                m = (torch.nn.functional.silu(xm @ t[p + "mlp.gate_proj.weight"].T) *
                     (xm @ t[p + "mlp.up_proj.weight"].T)) @ t[p + "mlp.down_proj.weight"].T
                h = h + text * torch.tanh(t[p + "mlp_gate"]) * m
            p = f"model.layers.{l}."
            xn = rms(h, t[p + "input_layernorm.weight"])
            q = rope(proj(xn, l, "q", t[p + "self_attn.q_proj.weight"]), HEADS)
            k = rope(proj(xn, l, "k", t[p + "self_attn.k_proj.weight"]), KV_HEADS)
            v = proj(xn, l, "v", t[p + "self_attn.v_proj.weight"])
            h = h + proj(attend(q, k, v, causal), l, "o", t[p + "self_attn.o_proj.weight"])
            xm = rms(h, t[p + "post_attention_layernorm.weight"])
            h = h + (torch.nn.functional.silu(xm @ t[p + "mlp.gate_proj.weight"].T) *
                     (xm @ t[p + "mlp.up_proj.weight"].T)) @ t[p + "mlp.down_proj.weight"].T
        out.append(rms(h, t["model.norm.weight"]) @ t["lm_head.weight"].T)
    return torch.stack(out)


def rel(a, b):
    b = b.detach().numpy() if isinstance(b, torch.Tensor) else b
    return float(np.max(np.abs(a.astype(np.float64) - b)) / max(np.max(np.abs(b)), 1e-30))


@pytest.mark.parametrize("every,targets", [(1, "all"), (2, "qv"), (1, "o")])
def test_lora_and_cross_block_gradients_match_torch(mm, tmp_path, every, targets):
    t = make_checkpoint(str(tmp_path / "ckpt"), seed=40 + every, every=every)
    model = mm.LlamaModel(str(tmp_path / "ckpt"), variant="causal")
    alpha = 6.0
    lora = model.lora_adapters(rank=3, alpha=alpha, targets=targets, seed=9)
    rng = np.random.default_rng(5)
    for name in lora:  # B starts at 0; give it values so that dA is not 0
        if name.endswith("lora_B.weight"):
            lora[name] = (0.5 * rng.standard_normal(lora[name].shape)).astype(np.float32)
    types = np.array([[1, 1, 2, 2, 2, 1, 1, 2, 2, 1, 1, 1], [2, 2, 1, 1, 1, 2, 2, 2, 1, 1, 1, 1]], dtype=np.int8)
    emb = rng.standard_normal((2, 12, H)).astype(np.float32)
    dlogits = rng.standard_normal((2, 12, V)).astype(np.float32)
    got = model.backward(emb, types, dlogits, lora=lora, lora_alpha=alpha)

    params = {k: v.clone().requires_grad_() for k, v in t.items() if "cross_blocks" in k}
    tt = dict(t)
    tt.update(params)
    lt = {k: torch.from_numpy(v).double().requires_grad_() for k, v in lora.items()}
    e = torch.from_numpy(emb).double().requires_grad_()
    logits = forward(tt, lt, alpha, e, types, every)
    (logits * torch.from_numpy(dlogits).double()).sum().backward()

    assert rel(got["logits"], logits) < TOL
    assert rel(got["dembeddings"], e.grad) < TOL
    want = {k: v.grad for k, v in params.items()}
    want.update({k: v.grad for k, v in lt.items()})
    assert set(got["grads"]) == set(want)
    for name, w in want.items():
        assert got["grads"][name].shape == tuple(w.shape), name
        assert rel(got["grads"][name], w) < TOL, (name, rel(got["grads"][name], w))

    # Merged weights (mmca.grad.lora_merge) give the adapted model in the ordinary forward.
    merged = {k: v.clone() for k, v in t.items()}
    for l in range(LAYERS):
        for p in "qkvo":
            a = lora.get(f"model.layers.{l}.self_attn.{p}_proj.lora_A.weight")
            if a is None:
                continue
            w = f"model.layers.{l}.self_attn.{p}_proj.weight"
            m = mm.grad.lora_merge(t[w].float().numpy(), a, lora[w.replace(".weight", ".lora_B.weight")], alpha=alpha)
            ref = t[w] + alpha / a.shape[0] * torch.from_numpy(lora[w.replace(".weight", ".lora_B.weight")]).double() @ \
                torch.from_numpy(a).double()
            assert rel(m, ref) < 1e-6
            merged[w] = torch.from_numpy(m).double()
    assert rel(got["logits"], forward(merged, {}, alpha, e.detach(), types, every)) < TOL


def test_frozen_blocks_and_no_adapters(mm, tmp_path):
    make_checkpoint(str(tmp_path / "ckpt"), seed=3, every=1)
    model = mm.LlamaModel(str(tmp_path / "ckpt"), variant="causal")
    rng = np.random.default_rng(1)
    types = np.array([[1, 2, 2, 1, 1, 1]], dtype=np.int8)
    emb = rng.standard_normal((1, 6, H)).astype(np.float32)
    dl = rng.standard_normal((1, 6, V)).astype(np.float32)
    a = model.backward(emb, types, dl)
    b = model.backward(emb, types, dl, cross_blocks=False)
    assert b["grads"] == {} and len(a["grads"]) == 2 * 11
    np.testing.assert_array_equal(a["dembeddings"], b["dembeddings"])
    # Fresh adapters (B = 0) change nothing.
    c = model.backward(emb, types, dl, cross_blocks=False, lora=model.lora_adapters(rank=2), lora_alpha=4.0)
    np.testing.assert_array_equal(a["logits"], c["logits"])
