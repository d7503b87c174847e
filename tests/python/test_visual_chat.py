"""The assembled visual-chat model (mmca.VisualChatModel) against the oracle of
visual_chat_oracle.py: the QWen-VL ViT in plain PyTorch, HF transformers 4.33.3's CLIPVisionModel,
the projectors in PyTorch, the splice of SPEC §6 in numpy and HF's LlamaForCausalLM under each
attention variant, on random checkpoints with the reference names written in the test run.
"""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import llama_hf_oracle as lo
import visual_chat_oracle as vo

TOL = 1e-4
S = vo.S
IMAGE_TOKEN = 88


@pytest.fixture(scope="module")
def mm():
    import mmca
    return mmca


def qwen_checkpoint(tmp_path, seed=0, projector="baseline"):
    folder = tmp_path / f"qwen_{projector}_{seed}"
    return str(folder), vo.qwen_checkpoint(folder, seed, projector)


def clip_checkpoint(tmp_path, seed=0, projector="perceiver"):
    folder = tmp_path / f"clip_{projector}_{seed}"
    return str(folder), vo.clip_checkpoint(folder, seed, projector)


def load(mm, folder, info, **kw):
    return mm.VisualChatModel(folder, **dict(vo.load_kwargs(info), **kw))


oracle_image_rows = vo.image_rows
oracle_splice = vo.splice
oracle_logits = vo.logits


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
