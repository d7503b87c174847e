"""LoRA adapters and gated cross-attention blocks in the training path of the Python API:
LlamaModel.lora_adapters / LlamaModel.backward and mmca.grad.lora_merge (docs/training.md). The
gradients are checked against central differences of the float32 forward (numpy only; the tight
torch autograd comparison is tests/python/test_train_lora_cross_torch.py)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from test_llama_bindings import write_safetensors

CFG = dict(vocab_size=23, hidden_size=16, intermediate_size=20, num_hidden_layers=2, num_attention_heads=4,
           num_key_value_heads=2, max_position_embeddings=32, rms_norm_eps=1e-5, hidden_act="silu",
           bos_token_id=1, eos_token_id=2, cross_attention_every=1, cross_attention_intermediate=12)
H, V = 16, 23


@pytest.fixture(scope="module")
def mm():
    import mmca
    return mmca


@pytest.fixture(scope="module")
def model(mm, tmp_path_factory):
    d = tmp_path_factory.mktemp("xllama")
    rng = np.random.default_rng(0)
    I, Ic, kv = 20, 12, 8
    t = {"model.embed_tokens.weight": rng.standard_normal((V, H)), "model.norm.weight": np.ones(H),
         "lm_head.weight": 0.3 * rng.standard_normal((V, H))}
    for l in range(2):
        p = f"model.layers.{l}."
        t.update({p + "input_layernorm.weight": np.ones(H), p + "post_attention_layernorm.weight": np.ones(H),
                  p + "self_attn.q_proj.weight": 0.3 * rng.standard_normal((H, H)),
                  p + "self_attn.k_proj.weight": 0.3 * rng.standard_normal((kv, H)),
                  p + "self_attn.v_proj.weight": 0.3 * rng.standard_normal((kv, H)),
                  p + "self_attn.o_proj.weight": 0.3 * rng.standard_normal((H, H)),
                  p + "mlp.gate_proj.weight": 0.3 * rng.standard_normal((I, H)),
                  p + "mlp.up_proj.weight": 0.3 * rng.standard_normal((I, H)),
                  p + "mlp.down_proj.weight": 0.3 * rng.standard_normal((H, I))})
        c = f"model.cross_blocks.{l}."
        t.update({c + "attn_norm.weight": np.ones(H), c + "mlp_norm.weight": np.ones(H),
                  c + "q_proj.weight": 0.3 * rng.standard_normal((H, H)),
                  c + "k_proj.weight": 0.3 * rng.standard_normal((kv, H)),
                  c + "v_proj.weight": 0.3 * rng.standard_normal((kv, H)),
                  c + "o_proj.weight": 0.3 * rng.standard_normal((H, H)),
                  c + "mlp.gate_proj.weight": 0.3 * rng.standard_normal((Ic, H)),
                  c + "mlp.up_proj.weight": 0.3 * rng.standard_normal((Ic, H)),
                  c + "mlp.down_proj.weight": 0.3 * rng.standard_normal((H, Ic)),
                  c + "attn_gate": np.array([0.8]), c + "mlp_gate": np.array([-0.5])})
    t = {k: v.astype(np.float32) for k, v in t.items()}
    write_safetensors(d / "model.safetensors", t)
    (d / "config.json").write_text(json.dumps(CFG))
    return mm.LlamaModel(str(d), variant="mmca"), t


TYPES = np.array([[1, 2, 2, 1, 1, 2, 2, 1, 1, 1]], dtype=np.int8)


def test_adapters_are_seeded_and_shaped(model):
    m, _ = model
    a = m.lora_adapters(rank=3, alpha=6.0, targets="qko", seed=4)
    assert len(a) == 2 * 3 * 2
    q = a["model.layers.1.self_attn.q_proj.lora_A.weight"]
    assert q.shape == (3, H) and q.dtype == np.float32 and np.abs(q).max() <= 1 / np.sqrt(H)
    assert a["model.layers.0.self_attn.k_proj.lora_B.weight"].shape == (8, 3)
    assert a["model.layers.0.self_attn.o_proj.lora_A.weight"].shape == (3, H)
    assert not any(v.any() for k, v in a.items() if "lora_B" in k)
    b = m.lora_adapters(rank=3, alpha=6.0, targets="qko", seed=4)
    c = m.lora_adapters(rank=3, alpha=6.0, targets="qko", seed=5)
    np.testing.assert_array_equal(q, b["model.layers.1.self_attn.q_proj.lora_A.weight"])
    assert not np.array_equal(q, c["model.layers.1.self_attn.q_proj.lora_A.weight"])
    assert set(m.lora_adapters(targets="all")) >= {"model.layers.0.self_attn.v_proj.lora_B.weight"}


def test_gradients_match_finite_differences(model):
    m, _ = model
    rng = np.random.default_rng(7)
    lora = m.lora_adapters(rank=2, alpha=4.0, targets="all", seed=1)
    for k in lora:
        if "lora_B" in k:
            lora[k] = (0.5 * rng.standard_normal(lora[k].shape)).astype(np.float32)
    emb = rng.standard_normal((1, 10, H)).astype(np.float32)
    dl = rng.standard_normal((1, 10, V)).astype(np.float32)
    out = m.backward(emb, TYPES, dl, lora=lora, lora_alpha=4.0)
    assert out["logits"].shape == (1, 10, V) and out["dembeddings"].shape == (1, 10, H)
    assert "model.cross_blocks.1.attn_gate" in out["grads"]
    assert out["grads"]["model.layers.0.self_attn.v_proj.lora_A.weight"].shape == (2, H)

    def s(e=emb, ad=lora):
        return float(np.sum(m.backward(e, TYPES, dl, cross_blocks=False, lora=ad, lora_alpha=4.0)["logits"]
                            .astype(np.float64) * dl))

    h = 1e-2
    # Directional derivatives along random directions (float32 forward: tolerance 2e-2).
    for name in ["model.layers.0.self_attn.q_proj.lora_A.weight", "model.layers.1.self_attn.o_proj.lora_B.weight",
                 "model.layers.0.self_attn.k_proj.lora_B.weight"]:
        u = rng.standard_normal(lora[name].shape).astype(np.float32)
        plus, minus = dict(lora), dict(lora)
        plus[name] = (lora[name] + h * u).astype(np.float32)
        minus[name] = (lora[name] - h * u).astype(np.float32)
        num = (s(ad=plus) - s(ad=minus)) / (2 * h)
        ana = float(np.sum(out["grads"][name].astype(np.float64) * u))
        assert abs(num - ana) <= 2e-2 * max(abs(ana), 1.0), (name, num, ana)
    u = rng.standard_normal(emb.shape).astype(np.float32)
    num = (s(e=(emb + h * u).astype(np.float32)) - s(e=(emb - h * u).astype(np.float32))) / (2 * h)
    ana = float(np.sum(out["dembeddings"].astype(np.float64) * u))
    assert abs(num - ana) <= 2e-2 * max(abs(ana), 1.0)


def test_merge(mm):
    rng = np.random.default_rng(2)
    w = rng.standard_normal((6, 5)).astype(np.float32)
    a = rng.standard_normal((2, 5)).astype(np.float32)
    b = rng.standard_normal((6, 2)).astype(np.float32)
    m = mm.grad.lora_merge(w, a, b, alpha=3.0)
    np.testing.assert_allclose(m, w + 1.5 * b @ a, rtol=1e-5, atol=1e-6)
    m16 = mm.grad.lora_merge(w.astype(np.float16), a, b, alpha=3.0)
    np.testing.assert_allclose(m16, w.astype(np.float16).astype(np.float32) + 1.5 * b @ a, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="lora_b"):
        mm.grad.lora_merge(w, a, b.T.copy(), alpha=3.0)
    with pytest.raises(TypeError, match="lora_a"):
        mm.grad.lora_merge(w, a.astype(np.float64), b, alpha=3.0)


def test_errors(model):
    m, _ = model
    emb = np.zeros((1, 10, H), np.float32)
    dl = np.zeros((1, 10, V), np.float32)
    with pytest.raises(ValueError, match="targets"):
        m.lora_adapters(targets="qx")
    with pytest.raises(ValueError, match="rank"):
        m.lora_adapters(rank=0)
    lora = m.lora_adapters(rank=2)
    with pytest.raises(ValueError, match="lora_alpha"):
        m.backward(emb, TYPES, dl, lora=lora)
    bad = dict(lora)
    bad["model.layers.1.self_attn.q_proj.lora_B.weight"] = np.zeros((H, 3), np.float32)
    with pytest.raises(ValueError, match=r"lora_B.weight' of shape \[16, 3\]"):
        m.backward(emb, TYPES, dl, lora=bad, lora_alpha=1.0)
    extra = dict(lora)
    extra["model.layers.0.mlp.lora_A.weight"] = np.zeros((2, H), np.float32)
    with pytest.raises(ValueError, match="mlp.lora_A"):
        m.backward(emb, TYPES, dl, lora=extra, lora_alpha=1.0)
    with pytest.raises(ValueError, match="dlogits"):
        m.backward(emb, TYPES, np.zeros((1, 10, V + 1), np.float32))
