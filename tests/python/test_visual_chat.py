"""The assembled visual-chat model (mmca.VisualChatModel) against an oracle built from code nobody
here wrote and from SPEC: the QWen-VL ViT in plain PyTorch (qwen_vit_oracle), HF transformers
4.33.3's CLIPVisionModel, the projectors in PyTorch (projector_oracle), the splice of SPEC §6 in
numpy, and HF's LlamaForCausalLM under each attention variant (llama_hf_oracle). Random checkpoints
with the reference names (SPEC §9) are written with the `safetensors` package in the test run.
"""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import llama_hf_oracle as lo
import projector_oracle as po
import qwen_vit_oracle as qo

TOL = 1e-4
S = 56             # image size: a 4×4 grid of 14-pixel patches
VOCAB = 90
IMAGE_TOKEN = VOCAB - 2
H = 32             # the language model's hidden size


def _mmca():
    import mmca
    return mmca


@pytest.fixture(scope="module")
def mm():
    return _mmca()


def _save(tensors: dict, folder: str, llama):
    from safetensors.torch import save_file

    os.makedirs(folder, exist_ok=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, os.path.join(folder, "model.safetensors"))
    cfg = json.loads(llama.config.to_json_string())
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(cfg, f)
    return folder


def _language(seed: int):
    """HF LLaMa (the oracle) and its tensors under the reference names, with a trained embedding
    copy (lang_embed.weight) that differs from the frozen one."""
    llama = lo.make_hf_model(seed, vocab=VOCAB, hidden=H, inter=40, layers=2, heads=4, kv_heads=2, max_pos=256)
    t = {}
    for k, v in llama.state_dict().items():
        if k.endswith("rotary_emb.inv_freq"):
            continue
        t["lang_decoder." + k] = v.float()
    g = torch.Generator().manual_seed(seed + 100)
    t["lang_embed.weight"] = torch.randn(VOCAB, H, generator=g)
    return llama, t


def qwen_checkpoint(tmp_path, seed=0, projector="baseline", dtype=torch.float32):
    """QWen ViT (width 64, 4 heads, 2 layers, pool 4 queries of width 48 with 2 heads) + projector + LLaMa."""
    llama, t = _language(seed)
    vit = qo.random_state(seed, width=64, heads=4, layers=2, mlp_width=96, pos_grid=3, output_dim=48, queries=4)
    t.update({"vis_encoder." + k: v.to(dtype) for k, v in vit.items()})
    module = po.make_module(projector, 48, H, queries=4, heads=2, vit_heads=4, mlp=56, act="gelu", seed=seed)
    t.update(po.state_dict_as(module, "projection.", "f32"))
    folder = _save(t, str(tmp_path / f"qwen_{projector}_{seed}"), llama)
    info = dict(kind="qwen", vit=vit, proj=projector, proj_sd=po.state_dict_as(module, "projection.", "f32"),
                lang_embed=t["lang_embed.weight"], llama=llama)
    return folder, info


def clip_checkpoint(tmp_path, seed=0, projector="perceiver"):
    """HF CLIP vision tower (width 64, 4 heads, 3 layers, 56 px) + projector + LLaMa."""
    from transformers import CLIPVisionConfig, CLIPVisionModel

    llama, t = _language(seed)
    torch.manual_seed(seed)
    cfg = CLIPVisionConfig(hidden_size=64, intermediate_size=80, num_hidden_layers=3, num_attention_heads=4,
                           image_size=S, patch_size=14, hidden_act="quick_gelu", layer_norm_eps=1e-5)
    clip = CLIPVisionModel(cfg).float().eval()
    with torch.no_grad():
        for name, p in clip.named_parameters():
            p.copy_((1.0 if name.endswith("norm.weight") or "layrnorm.weight" in name else 0.0)
                    + 0.1 * torch.randn_like(p))
    t.update({"vis_encoder." + k: v.float() for k, v in clip.state_dict().items() if not k.endswith("position_ids")})
    module = po.make_module(projector, 64, H, queries=4, heads=2, vit_heads=4, mlp=56, act="quick_gelu", seed=seed)
    t.update(po.state_dict_as(module, "projection.", "f32"))
    folder = _save(t, str(tmp_path / f"clip_{projector}_{seed}"), llama)
    info = dict(kind="clip", clip=clip, proj=projector, proj_sd=po.state_dict_as(module, "projection.", "f32"),
                lang_embed=t["lang_embed.weight"], llama=llama)
    return folder, info


def load(mm, folder, info, **kw):
    extra = dict(image_size=S, vision_heads=4, pool_heads=2, projector_heads=2, projector_layer_heads=4,
                 projector_act="quick_gelu" if info["kind"] == "clip" else "gelu", image_token_id=IMAGE_TOKEN)
    extra.update(kw)
    return mm.VisualChatModel(folder, **extra)


def oracle_image_rows(info, images: np.ndarray) -> np.ndarray:
    """(n, T, H) float64: projector(encoder(images))."""
    x = torch.from_numpy(images)
    with torch.no_grad():
        if info["kind"] == "qwen":
            feats = qo.forward(info["vit"], x, heads=4, pool_heads=2).numpy()
            has_cls = False
        else:
            feats = info["clip"](pixel_values=x).last_hidden_state.double().numpy()
            has_cls = True
    sd = info["proj_sd"]
    if info["proj"] == "baseline":
        return po.baseline(feats, sd)
    if info["proj"] == "vit":
        return po.vit(feats, sd, heads=4, act="quick_gelu" if info["kind"] == "clip" else "gelu", eps=1e-5)
    return po.perceiver(feats, sd, heads=2, has_cls=has_cls)


def oracle_splice(info, ids, rows, order="in_order", first_image=0):
    """embeddings (L', H), token types, image ids, labels position map (SPEC §6)."""
    emb, types, img_ids, src = [], [], [], []
    n = rows.shape[0]
    seen = 0
    table = info["lang_embed"].double().numpy()
    for i, t in enumerate(ids):
        if t == IMAGE_TOKEN:
            k = n - 1 - seen if order == "reverse" else seen
            emb.extend(rows[k])
            types.extend([2] * rows.shape[1])
            img_ids.extend([first_image + seen] * rows.shape[1])
            src.extend([-1] * rows.shape[1])
            seen += 1
        else:
            emb.append(table[t])
            types.append(1)
            img_ids.append(-1)
            src.append(i)
    return np.array(emb), np.array(types, dtype=np.int8), np.array(img_ids, dtype=np.int32), src


def oracle_logits(info, variant, emb, types, img_ids, policy="preceding"):
    return lo.Oracle(info["llama"], variant, policy).step(emb.astype(np.float32), types, img_ids)


def images_of(n, seed):
    return np.random.default_rng(seed).standard_normal((n, 3, S, S)).astype(np.float32)


PROMPT = [1, 5, IMAGE_TOKEN, 7, 9, 11, IMAGE_TOKEN, 13, 17, 2]


@pytest.mark.parametrize("variant", ["mmca", "causal", "mmca_reference", "causal_cross"])
def test_qwen_baseline_forward_matches_oracle(mm, tmp_path, variant):
    folder, info = qwen_checkpoint(tmp_path)
    model = load(mm, folder, info, variant=variant)
    assert (model.encoder, model.projector, model.tokens_per_image) == ("qwen_vit", "baseline", 4)
    imgs = images_of(2, 1)
    out = model.forward([PROMPT], [imgs])
    rows = oracle_image_rows(info, imgs)
    emb, types, img_ids, _ = oracle_splice(info, PROMPT, rows)
    want = oracle_logits(info, variant, emb, types, img_ids)
    got = out["logits"][0, : len(types)]
    assert out["lengths"] == [len(types)]
    np.testing.assert_array_equal(out["token_types"][0, : len(types)], types)
    np.testing.assert_array_equal(out["image_ids"][0, : len(types)], img_ids)
    assert lo.rel_err(got, want) < TOL


@pytest.mark.parametrize("projector", ["baseline", "vit", "perceiver"])
def test_every_projector_with_both_encoders(mm, tmp_path, projector):
    for make in (qwen_checkpoint, clip_checkpoint):
        folder, info = make(tmp_path, seed=3, projector=projector)
        model = load(mm, folder, info)
        imgs = images_of(2, 2)
        got_rows = model.embed_images(imgs)
        want_rows = oracle_image_rows(info, imgs)
        assert got_rows.shape == want_rows.shape
        assert lo.rel_err(got_rows, want_rows) < TOL, (info["kind"], projector)
        out = model.forward([PROMPT], [imgs])
        emb, types, img_ids, _ = oracle_splice(info, PROMPT, want_rows)
        want = oracle_logits(info, "mmca", emb, types, img_ids)
        assert lo.rel_err(out["logits"][0, : len(types)], want) < TOL, (info["kind"], projector)


def test_loss_and_labels_match_torch_cross_entropy(mm, tmp_path):
    folder, info = qwen_checkpoint(tmp_path, seed=4)
    model = load(mm, folder, info, batch=2)
    imgs = images_of(3, 5)
    ids = [PROMPT, [1, IMAGE_TOKEN, 21, 22, 23, 2]]
    labels = [[-100] * 7 + [13, 17, 2], [-100, -100, -100, 22, 23, 2]]
    out = model.forward(ids, [imgs[:2], imgs[2:]], labels=labels)
    total, count = 0.0, 0
    for b in range(2):
        rows = oracle_image_rows(info, imgs[:2] if b == 0 else imgs[2:])
        emb, types, img_ids, src = oracle_splice(info, ids[b], rows)
        logits = oracle_logits(info, "mmca", emb, types, img_ids)
        lab = np.array([labels[b][s] if s >= 0 else -100 for s in src])
        np.testing.assert_array_equal(out["labels"][b, : len(lab)], lab)
        assert lo.rel_err(out["logits"][b, : len(lab)], logits) < TOL
        loss = F.cross_entropy(torch.from_numpy(logits[:-1]).double(), torch.from_numpy(lab[1:]).long(),
                               ignore_index=-100, reduction="sum")
        total += float(loss)
        count += int((lab[1:] != -100).sum())
    assert out["count"] == count == 6
    assert abs(out["loss"] - total / count) < 1e-4 * abs(total / count)
    # Nothing supervised: loss 0, no NaN.
    none = model.forward(ids, [imgs[:2], imgs[2:]], labels=[[-100] * 10, [-100] * 6])
    assert none["count"] == 0 and none["loss"] == 0.0


def test_reverse_pairing_is_the_reference_option(mm, tmp_path):
    folder, info = qwen_checkpoint(tmp_path, seed=6)
    model = load(mm, folder, info, image_order="reverse")
    imgs = images_of(2, 7)
    out = model.forward([PROMPT], [imgs])
    emb, types, img_ids, _ = oracle_splice(info, PROMPT, oracle_image_rows(info, imgs), order="reverse")
    want = oracle_logits(info, "mmca", emb, types, img_ids)
    assert lo.rel_err(out["logits"][0, : len(types)], want) < TOL
    # In order gives different logits on this prompt (the images differ).
    inorder = load(mm, folder, info).forward([PROMPT], [imgs])["logits"]
    assert lo.rel_err(inorder[0, : len(types)], want) > 1e-3


def test_multi_round_chat_reuses_cache_and_images(mm, tmp_path):
    folder, info = qwen_checkpoint(tmp_path, seed=8)
    model = load(mm, folder, info)
    imgs = images_of(3, 9)
    r1 = [1, 4, IMAGE_TOKEN, 6, IMAGE_TOKEN, 8]
    r2 = [1, 10, IMAGE_TOKEN, 12]
    last1 = model.append(r1, imgs[:2])
    assert model.images_embedded == 2 and model.images_in_context == 2
    last2 = model.append(r2, imgs[2:])
    assert model.images_embedded == 3 and model.images_in_context == 3
    rows = oracle_image_rows(info, imgs)
    emb, types, img_ids, _ = oracle_splice(info, r1 + r2, rows)
    want = oracle_logits(info, "mmca", emb, types, img_ids)
    n1 = len(r1) + 2 * 3
    assert lo.rel_err(last1, want[n1 - 1]) < TOL
    assert lo.rel_err(last2, want[-1]) < TOL
    assert model.length == len(types)
    # The same image again in a new conversation is not encoded again.
    model.reset()
    model.append([1, IMAGE_TOKEN], imgs[1:2])
    assert model.images_embedded == 3


def test_greedy_chat_streams_tokens(mm, tmp_path):
    folder, info = qwen_checkpoint(tmp_path, seed=10)
    model = load(mm, folder, info)
    imgs = images_of(1, 11)
    streamed = []
    tokens, reason = model.chat([1, 3, IMAGE_TOKEN, 5], imgs, max_new_tokens=5, eos_ids=[-1],
                                on_token=lambda t: streamed.append(t) or True)
    assert tokens == streamed and len(tokens) == 5 and reason == "max_new_tokens"
    # Oracle: greedy continuation of the full sequence in HF.
    emb, types, img_ids, _ = oracle_splice(info, [1, 3, IMAGE_TOKEN, 5], oracle_image_rows(info, imgs))
    seq_emb, seq_types, seq_ids = list(emb), list(types), list(img_ids)
    table = info["lang_embed"].double().numpy()
    for t in tokens:
        logits = oracle_logits(info, "mmca", np.array(seq_emb), np.array(seq_types, dtype=np.int8),
                               np.array(seq_ids, dtype=np.int32))
        assert int(np.argmax(logits[-1])) == t
        seq_emb.append(table[t])
        seq_types.append(1)
        seq_ids.append(-1)


def test_bad_input_is_refused_and_changes_nothing(mm, tmp_path):
    folder, info = qwen_checkpoint(tmp_path, seed=12)
    model = load(mm, folder, info, max_images=3, context=64)
    imgs = images_of(4, 13)
    model.append([1, IMAGE_TOKEN, 5], imgs[:1])
    before = (model.length, model.images_in_context, model.images_embedded)
    with pytest.raises(ValueError, match=r"argument 'images': got 2 images; expected 1 \(the number of <image>"):
        model.append([IMAGE_TOKEN, 4], imgs[:2])
    with pytest.raises(ValueError, match=r"at most 3 \(max_images\)"):
        model.append([IMAGE_TOKEN] * 3, imgs[:3])
    with pytest.raises(ValueError, match=r"argument 'images'.*\(N, 3, 56, 56\)"):
        model.append([IMAGE_TOKEN], np.zeros((1, 3, 28, 28), np.float32))
    with pytest.raises(TypeError, match="float32"):
        model.append([IMAGE_TOKEN], imgs[:1].astype(np.float64))
    with pytest.raises(ValueError, match="room left in the context"):
        model.append([5] * 70)
    assert (model.length, model.images_in_context, model.images_embedded) == before
    with pytest.raises(ValueError, match="image_order"):
        load(mm, folder, info, image_order="backwards")
    # A checkpoint without a projector names what it looked for.
    from safetensors.torch import load_file, save_file
    t = {k: v for k, v in load_file(os.path.join(folder, "model.safetensors")).items() if not k.startswith("projection.")}
    broken = tmp_path / "no_projector"
    broken.mkdir()
    save_file(t, str(broken / "model.safetensors"))
    with open(os.path.join(folder, "config.json")) as f, open(broken / "config.json", "w") as g:
        g.write(f.read())
    with pytest.raises(ValueError, match="projection.0.weight"):
        load(mm, str(broken), info)
