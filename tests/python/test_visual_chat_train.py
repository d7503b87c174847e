"""Gradients of the visual-chat model's trainable parts (mmca.VisualChatModel.loss_and_grads: the
token embedding lang_embed and the projector, through the frozen LLaMa decoder) against torch
autograd through the oracle of visual_chat_oracle.py (QWen ViT features, baseline projector, HF
LlamaForCausalLM under the attention variant)."""
from __future__ import annotations

import numpy as np
import pytest

import llama_hf_oracle as lo
import visual_chat_oracle as vo

TOL = 1e-4
IMG = 88


@pytest.fixture(scope="module")
def mm():
    import mmca
    return mmca


def rel(a, b):
    return float(np.max(np.abs(a.astype(np.float64) - b)) / max(np.max(np.abs(b)), 1e-30))


@pytest.mark.parametrize("variant", ["mmca", "causal", "causal_cross", "mmca_reference"])
def test_gradients_match_torch_autograd(mm, tmp_path, variant):
    info = vo.qwen_checkpoint(tmp_path / "ckpt", seed=31)
    model = mm.VisualChatModel(str(tmp_path / "ckpt"), variant=variant, batch=2, **vo.load_kwargs(info))
    g = np.random.default_rng(2)
    imgs = g.standard_normal((3, 3, vo.S, vo.S)).astype(np.float32)
    ids = [[1, 5, 7, IMG, 9, 11, IMG, 13, 17, 19, 2], [1, 4, IMG, 21, 22, 23, 2]]
    labels = [[-100] * 7 + [13, 17, 19, 2], [-100, -100, -100, 21, 22, 23, 2]]
    got = model.loss_and_grads(ids, [imgs[:2], imgs[2:]], labels)
    loss, count, want = vo.loss_and_grads(info, variant, [(ids[0], imgs[:2], labels[0]), (ids[1], imgs[2:], labels[1])])
    assert got["count"] == count == 8
    assert abs(got["loss"] - loss) < 1e-5 * abs(loss)
    # The loss equals forward()'s.
    assert abs(model.forward(ids, [imgs[:2], imgs[2:]], labels=labels)["loss"] - got["loss"]) < 1e-6 * abs(loss)
    assert set(got["grads"]) == set(want)
    for name, w in want.items():
        assert got["grads"][name].shape == w.shape, name
        assert rel(got["grads"][name], w) < TOL, (name, rel(got["grads"][name], w))
    # Tokens never seen get no embedding gradient.
    unseen = sorted(set(range(vo.H)) - set(ids[0]) - set(ids[1]))
    assert not got["grads"]["lang_embed.weight"][unseen].any()


def test_frozen_parts_and_nothing_supervised(mm, tmp_path):
    info = vo.qwen_checkpoint(tmp_path / "ckpt", seed=32)
    model = mm.VisualChatModel(str(tmp_path / "ckpt"), **vo.load_kwargs(info))
    imgs = np.random.default_rng(3).standard_normal((1, 3, vo.S, vo.S)).astype(np.float32)
    ids, labels = [[1, 4, IMG, 21, 22, 2]], [[-100, -100, -100, 21, 22, 2]]
    only_proj = model.loss_and_grads(ids, [imgs], labels, embedding=False)
    assert "lang_embed.weight" not in only_proj["grads"] and "projection.0.weight" in only_proj["grads"]
    only_emb = model.loss_and_grads(ids, [imgs], labels, projector=False)
    assert set(only_emb["grads"]) == {"lang_embed.weight"}
    none = model.loss_and_grads(ids, [imgs], [[-100] * 6])
    assert none["count"] == 0 and none["loss"] == 0.0
    assert all(not v.any() for v in none["grads"].values())
    # Micro-batches with a shared normalizer add up to the whole batch.
    both = mm.VisualChatModel(str(tmp_path / "ckpt"), batch=2, **vo.load_kwargs(info))
    ids2, labels2 = [1, 9, 10, 2], [-100, 9, 10, 2]
    full = both.loss_and_grads([ids[0], ids2], [imgs, None], [labels[0], labels2])
    a = model.loss_and_grads(ids, [imgs], labels, normalizer=6)
    b = model.loss_and_grads([ids2], [None], [labels2], normalizer=6)
    for name in full["grads"]:
        assert rel(a["grads"][name] + b["grads"][name], full["grads"][name]) < 1e-5, name


def test_lora_adapters_through_the_visual_chat_model(mm, tmp_path):
    """loss_and_grads with LoRA adapters: fresh adapters (B = 0) leave the loss and the other
    gradients unchanged; with B != 0 the adapters' gradients equal directional derivatives of the
    loss (float32 forward, central differences)."""
    info = vo.qwen_checkpoint(tmp_path / "ckpt", seed=33)
    model = mm.VisualChatModel(str(tmp_path / "ckpt"), **vo.load_kwargs(info))
    imgs = np.random.default_rng(4).standard_normal((1, 3, vo.S, vo.S)).astype(np.float32)
    ids, labels = [[1, 4, IMG, 21, 22, 23, 2]], [[-100, -100, -100, 21, 22, 23, 2]]
    base = model.loss_and_grads(ids, [imgs], labels)
    lora = model.lora_adapters(rank=2, alpha=4.0, targets="qkvo", seed=3)
    fresh = model.loss_and_grads(ids, [imgs], labels, lora=lora, lora_alpha=4.0)
    assert fresh["loss"] == base["loss"]
    np.testing.assert_array_equal(fresh["grads"]["projection.0.weight"], base["grads"]["projection.0.weight"])
    assert set(fresh["grads"]) == set(base["grads"]) | set(lora)
    rng = np.random.default_rng(8)
    for k in lora:
        if "lora_B" in k:
            lora[k] = (0.3 * rng.standard_normal(lora[k].shape)).astype(np.float32)
    got = model.loss_and_grads(ids, [imgs], labels, lora=lora, lora_alpha=4.0)
    assert got["loss"] != base["loss"]
    h = 1e-2
    for name in ["lang_decoder.model.layers.0.self_attn.q_proj.lora_A.weight",
                 "lang_decoder.model.layers.1.self_attn.o_proj.lora_B.weight"]:
        u = rng.standard_normal(lora[name].shape).astype(np.float32)
        plus, minus = dict(lora), dict(lora)
        plus[name] = (lora[name] + h * u).astype(np.float32)
        minus[name] = (lora[name] - h * u).astype(np.float32)
        num = (model.loss_and_grads(ids, [imgs], labels, embedding=False, projector=False, lora=plus, lora_alpha=4.0)["loss"]
               - model.loss_and_grads(ids, [imgs], labels, embedding=False, projector=False, lora=minus,
                                      lora_alpha=4.0)["loss"]) / (2 * h)
        ana = float(np.sum(got["grads"][name].astype(np.float64) * u))
        assert abs(num - ana) <= 2e-2 * max(abs(ana), 1e-2), (name, num, ana)
    with pytest.raises(ValueError, match="cross_blocks"):
        model.loss_and_grads(ids, [imgs], labels, cross_blocks=True)
