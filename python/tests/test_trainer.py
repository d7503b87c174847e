"""mmca.Trainer and mmca.ConversationData (docs/training.md, "The trainer"): a run stopped after a
few steps and resumed from its state file equals the uninterrupted run bit for bit; the blended
conversation format is read, tokenized and its images preprocessed; bad arguments are named."""
from __future__ import annotations

import json
import shutil
import struct
import subprocess
import zlib

import numpy as np
import pytest

import mmca
from test_llama_bindings import write_safetensors

S, H, V, IMG = 56, 32, 61, 60
CFG = dict(vocab_size=V, hidden_size=H, intermediate_size=40, num_hidden_layers=2, num_attention_heads=4,
           num_key_value_heads=2, max_position_embeddings=512, rms_norm_eps=1e-5, hidden_act="silu",
           bos_token_id=1, eos_token_id=2, cross_attention_every=1, cross_attention_intermediate=12)


def checkpoint(folder, vocab=V, seed=0, layers=2, projector="baseline", encoder="qwen"):
    """A small QWen ViT (4 queries of width 16), a projector (baseline; or vit, perceiver: see
    projector_tensors) and a LLaMa of `layers` layers with cross blocks, under the reference names.
    encoder="clip": an HF CLIP vision tower instead (width 32, 2 layers, 4 heads of 8, MLP 48; 16
    patches + CLS at S = 56), under vis_encoder.vision_model.*."""
    rng = np.random.default_rng(seed)
    t = {}

    def rnd(name, shape, s, mean=0.0):
        t[name] = (mean + s * rng.standard_normal(shape)).astype(np.float32)

    W, E, M, P = 32, 16, 48, 14
    p = "vis_encoder."
    rnd(p + "conv1.weight", (W, 3, P, P), 0.05)
    rnd(p + "positional_embedding", (9, W), 0.5)
    for n, d in [("ln_pre", W), ("attn_pool.ln_q", E), ("attn_pool.ln_kv", E), ("ln_post", E)]:
        rnd(p + n + ".weight", (d,), 0.2, 1.0), rnd(p + n + ".bias", (d,), 0.1)
    for l in range(2):
        b = f"{p}transformer.resblocks.{l}."
        for n in ("ln_1", "ln_2"):
            rnd(b + n + ".weight", (W,), 0.2, 1.0), rnd(b + n + ".bias", (W,), 0.1)
        rnd(b + "attn.in_proj.weight", (3 * W, W), 0.1), rnd(b + "attn.in_proj.bias", (3 * W,), 0.1)
        rnd(b + "attn.out_proj.weight", (W, W), 0.1), rnd(b + "attn.out_proj.bias", (W,), 0.1)
        rnd(b + "mlp.c_fc.weight", (M, W), 0.1), rnd(b + "mlp.c_fc.bias", (M,), 0.1)
        rnd(b + "mlp.c_proj.weight", (W, M), 0.1), rnd(b + "mlp.c_proj.bias", (W,), 0.1)
    rnd(p + "attn_pool.query", (4, E), 0.5)
    rnd(p + "attn_pool.kv_proj.weight", (E, W), 0.1)
    rnd(p + "attn_pool.attn.in_proj_weight", (3 * E, E), 0.1), rnd(p + "attn_pool.attn.in_proj_bias", (3 * E,), 0.1)
    rnd(p + "attn_pool.attn.out_proj.weight", (E, E), 0.1), rnd(p + "attn_pool.attn.out_proj.bias", (E,), 0.1)
    rnd("projection.0.weight", (H, E), 0.2), rnd("projection.0.bias", (H,), 0.1)
    rnd("projection.1.weight", (H,), 0.1, 1.0), rnd("projection.1.bias", (H,), 0.1)
    Dv = E
    if encoder == "clip":
        from test_vision_bindings import clip_tensors
        t = {k: v for k, v in t.items() if not k.startswith(p)}
        Dv = W
        clip = clip_tensors(rng, width=W, inter=48, layers=2, size=S, prefix=p + "vision_model.")
        t.update({k: v.astype(np.float32) for k, v in clip.items()})
        rnd("projection.0.weight", (H, Dv), 0.2)
    if projector != "baseline":
        t = {k: v for k, v in t.items() if not k.startswith("projection.")}
        t.update(projector_tensors(projector, Dv, seed))
    d = "lang_decoder.model."
    rnd("lang_embed.weight", (vocab, H), 1.0)
    t[d + "embed_tokens.weight"] = t["lang_embed.weight"].copy()
    rnd(d + "norm.weight", (H,), 0.1, 1.0)
    rnd("lang_decoder.lm_head.weight", (vocab, H), 0.1)
    for l in range(layers):
        q = f"{d}layers.{l}."
        rnd(q + "input_layernorm.weight", (H,), 0.1, 1.0), rnd(q + "post_attention_layernorm.weight", (H,), 0.1, 1.0)
        rnd(q + "self_attn.q_proj.weight", (H, H), 0.2), rnd(q + "self_attn.k_proj.weight", (16, H), 0.2)
        rnd(q + "self_attn.v_proj.weight", (16, H), 0.1), rnd(q + "self_attn.o_proj.weight", (H, H), 0.1)
        rnd(q + "mlp.gate_proj.weight", (40, H), 0.1), rnd(q + "mlp.up_proj.weight", (40, H), 0.1)
        rnd(q + "mlp.down_proj.weight", (H, 40), 0.1)
        c = f"{d}cross_blocks.{l}."
        rnd(c + "attn_norm.weight", (H,), 0.1, 1.0), rnd(c + "mlp_norm.weight", (H,), 0.1, 1.0)
        rnd(c + "q_proj.weight", (H, H), 0.2), rnd(c + "k_proj.weight", (16, H), 0.2)
        rnd(c + "v_proj.weight", (16, H), 0.1), rnd(c + "o_proj.weight", (H, H), 0.1)
        rnd(c + "mlp.gate_proj.weight", (12, H), 0.1), rnd(c + "mlp.up_proj.weight", (12, H), 0.1)
        rnd(c + "mlp.down_proj.weight", (H, 12), 0.1)
        t[c + "attn_gate"] = np.array([0.0], np.float32)
        t[c + "mlp_gate"] = np.array([0.0], np.float32)
    folder.mkdir(parents=True, exist_ok=True)
    write_safetensors(folder / "model.safetensors", t)
    (folder / "config.json").write_text(json.dumps(dict(CFG, vocab_size=vocab, num_hidden_layers=layers)))
    return str(folder)


def projector_tensors(kind, Dv, seed):
    """The tensors of a vit projector (an encoder layer of width Dv, MLP 24, then Linear + LayerNorm)
    or of a perceiver (4 queries, no kv_proj bias, the query positions generated), under projection.*."""
    rng = np.random.default_rng(seed + 100)
    t = {}

    def rnd(name, shape, s, mean=0.0):
        t["projection." + name] = (mean + s * rng.standard_normal(shape)).astype(np.float32)

    def norm(name, d):
        rnd(name + ".weight", (d,), 0.2, 1.0), rnd(name + ".bias", (d,), 0.1)

    if kind == "vit":
        norm("vis_layer.layer_norm1", Dv), norm("vis_layer.layer_norm2", Dv)
        for p in ("q_proj", "k_proj", "v_proj", "out_proj"):
            rnd(f"vis_layer.self_attn.{p}.weight", (Dv, Dv), 0.25), rnd(f"vis_layer.self_attn.{p}.bias", (Dv,), 0.1)
        rnd("vis_layer.mlp.fc1.weight", (24, Dv), 0.2), rnd("vis_layer.mlp.fc1.bias", (24,), 0.1)
        rnd("vis_layer.mlp.fc2.weight", (Dv, 24), 0.2), rnd("vis_layer.mlp.fc2.bias", (Dv,), 0.1)
        rnd("projection.0.weight", (H, Dv), 0.2), rnd("projection.0.bias", (H,), 0.1)
        norm("projection.1", H)
    else:
        rnd("query", (4, H), 0.5)
        rnd("kv_proj.weight", (H, Dv), 0.2)
        norm("ln_q", H), norm("ln_kv", H)
        rnd("attn.in_proj_weight", (3 * H, H), 0.2), rnd("attn.in_proj_bias", (3 * H,), 0.1)
        rnd("attn.out_proj.weight", (H, H), 0.2), rnd("attn.out_proj.bias", (H,), 0.1)
        norm("projection.0", H)
        rnd("projection.1.weight", (H, H), 0.2), rnd("projection.1.bias", (H,), 0.1)
    return t


PROJECTOR_KW = {"vit": dict(projector_layer_heads=4), "perceiver": dict(projector_heads=4)}


def model(path, image_token=IMG, variant="mmca", **kw):
    return mmca.VisualChatModel(path, variant=variant, batch=2, image_size=S, vision_heads=4, pool_heads=2,
                                image_token_id=image_token, num_threads=1, **kw)


def examples(n=7, seed=3):
    g = np.random.default_rng(seed)
    out = []
    for i in range(n):
        k = i % 3
        ids = [1, int(g.integers(3, 50))]
        for _ in range(k):
            ids += [IMG, int(g.integers(3, 50))]
        prompt = len(ids)
        ids += [51 + (i + j) % 8 for j in range(3)] + [2]
        labels = [-100] * prompt + ids[prompt:]
        out.append({"ids": ids, "labels": labels,
                    "images": g.standard_normal((k, 3, S, S)).astype(np.float32) if k else None})
    return out


OPTS = dict(lr=2e-2, micro_batch=2, accumulation=2, total_steps=6, max_grad_norm=0.5, seed=9, num_threads=1)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return checkpoint(tmp_path_factory.mktemp("trainer") / "ckpt")


@pytest.mark.parametrize("extra", [{}, {"cross_blocks": True, "lora": "qv", "lora_rank": 2,
                                        "loss_averaging": "token_mean"}])
def test_resume_is_bit_exact(ckpt, tmp_path, extra):
    data = examples()
    full = mmca.Trainer(model(ckpt), data, **OPTS, **extra)
    losses = [r["loss"] for r in full.run()]
    assert len(losses) == 6 and full.done and full.samples_seen == 24 and full.epoch == 5

    first = mmca.Trainer(model(ckpt), data, **OPTS, **extra)
    part = [r["loss"] for r in first.run(max_steps=2)]
    first.save(tmp_path / "state.safetensors", config={"note": "half"})
    resumed = mmca.Trainer(model(ckpt), data, **OPTS, **extra)
    assert resumed.load(tmp_path / "state.safetensors")["note"] == "half"
    assert resumed.step_count == 2
    part += [r["loss"] for r in resumed.run()]
    assert part == losses  # exact float equality
    assert resumed.names == full.names
    for name in full.names:
        for f in ("parameter", "exp_avg", "exp_avg_sq"):
            a, b = getattr(full, f)(name), getattr(resumed, f)(name)
            assert a.tobytes() == b.tobytes(), (f, name)
    assert resumed.epoch_order == full.epoch_order and resumed.data_position == full.data_position
    if extra:
        assert "lang_decoder.model.cross_blocks.0.attn_gate" in full.names
        assert "lang_decoder.model.layers.1.self_attn.q_proj.lora_A.weight" in full.names


def test_training_lowers_the_loss_and_the_model_uses_the_trained_copies(ckpt, tmp_path):
    data = examples()
    m = model(ckpt)
    t = mmca.Trainer(m, data, **dict(OPTS, total_steps=12, max_grad_norm=1.0))
    assert t.names == ["lang_embed.weight", "projection.0.weight", "projection.0.bias", "projection.1.weight",
                       "projection.1.bias"]
    before = t.evaluate()
    assert before["rounds"] == 7 and before["tokens"] == 28 and len(before["round_correct"]) == 7
    hist = t.run()
    assert [h["step"] for h in hist] == list(range(1, 13))
    assert hist[-1]["lr"] == t.lr_at(11) and hist[0]["lr"] == 0.0  # warm-up starts at 0
    after = t.evaluate()
    assert after["loss"] < before["loss"]
    # The model's own forward uses the trained embedding and projector.
    out = m.forward([data[1]["ids"]], [data[1]["images"]], labels=[data[1]["labels"]])
    assert abs(out["loss"] - mmca.Trainer(m, data, **OPTS).evaluate(data[1:2])["loss"]) < 1e-6
    t.save_weights(tmp_path / "w.safetensors")
    f = mmca.SafetensorsFile(str(tmp_path / "w.safetensors"))
    np.testing.assert_array_equal(f.tensor("projection.0.weight"), t.parameter("projection.0.weight"))


@pytest.mark.parametrize("kind", ["vit", "perceiver"])
def test_vit_and_perceiver_projectors_train(tmp_path, kind):
    """Every tensor of the vit and perceiver projectors trains under the name the loader reads it
    from; the loss falls; the saved weights carry those names. The gradients (loss_and_grads, the
    backward the trainer runs) match central differences of the loss of checkpoints with one element
    moved."""
    path = checkpoint(tmp_path / "ckpt", projector=kind)
    stored = mmca.SafetensorsFile(str(tmp_path / "ckpt" / "model.safetensors"))
    projector_names = sorted(n for n in stored.names() if n.startswith("projection."))
    data = examples()
    m = model(path, **PROJECTOR_KW[kind])
    t = mmca.Trainer(m, data, embedding=False, **dict(OPTS, total_steps=8, max_grad_norm=1.0))
    assert sorted(t.names) == projector_names
    if kind == "vit":
        assert "projection.vis_layer.self_attn.k_proj.weight" in t.names
        assert "projection.projection.1.bias" in t.names
    else:
        assert "projection.query" in t.names and "projection.attn.in_proj_weight" in t.names
        assert "projection.kv_proj.bias" not in t.names  # absent in the checkpoint
    before = t.evaluate()["loss"]
    hist = t.run()
    assert len(hist) == 8
    assert t.evaluate()["loss"] < before
    for name in t.names:
        assert np.abs(t.parameter(name) - stored.tensor(name)).max() > 0, name
    t.save_weights(tmp_path / "w.safetensors")
    f = mmca.SafetensorsFile(str(tmp_path / "w.safetensors"))
    assert sorted(f.names()) == projector_names
    for name in t.names:
        np.testing.assert_array_equal(f.tensor(name), t.parameter(name))

    # Finite differences of the checkpoint's loss against loss_and_grads.
    batch = data[1:3]  # one and two images
    ids, images, labels = [e["ids"] for e in batch], [e["images"] for e in batch], [e["labels"] for e in batch]
    out = model(path, **PROJECTOR_KW[kind]).loss_and_grads(ids, images, labels=labels, embedding=False)
    assert sorted(out["grads"]) == projector_names
    tensors = {n: np.array(stored.tensor(n)) for n in stored.names()}
    checks = (["projection.vis_layer.self_attn.q_proj.weight", "projection.vis_layer.layer_norm2.weight",
               "projection.projection.0.bias"] if kind == "vit" else
              ["projection.query", "projection.attn.in_proj_weight", "projection.ln_kv.bias"])
    for k, name in enumerate(checks):
        g = out["grads"][name]
        i = np.unravel_index(np.argmax(np.abs(g)), g.shape)
        v0 = tensors[name][i]
        h = np.float32(1e-2 * max(abs(float(v0)), 1.0))
        losses = []
        for sign in (1, -1):
            moved = dict(tensors)
            moved[name] = tensors[name].copy()
            moved[name][i] = v0 + sign * h
            folder = tmp_path / f"fd{k}{sign}"
            folder.mkdir()
            write_safetensors(folder / "model.safetensors", moved)
            shutil.copy(tmp_path / "ckpt" / "config.json", folder / "config.json")
            losses.append(model(str(folder), **PROJECTOR_KW[kind]).forward(ids, images, labels=labels)["loss"])
        step = float(np.float32(v0 + h)) - float(np.float32(v0 - h))
        fd = (losses[0] - losses[1]) / step
        assert abs(fd - g[i]) < 3e-5 + 1e-2 * abs(fd), (name, i, fd, g[i])


VARIANTS = [("causal", {}), ("mmca", {}), ("mmca_reference", {}), ("causal_cross", {"policy": "preceding"})]


def test_the_attention_variant_reaches_the_trainer(tmp_path):
    """The variant of the model is the one the trainer's forward, backward and evaluation run: with
    two layers every variant gives its own loss, gradient and update. With one layer, mmca,
    mmca_reference and causal_cross (preceding) compute the same output on every text row after
    the first image (SPEC §2.2-2.4), the only supervised rows here; they differ only on image rows
    and rows before the first image, which reach the loss through a later layer. So with one layer
    the three give the same losses and updates (to rounding), and causal does not. (Every example has
    an image before its answer: on a text row with no earlier image, mmca_reference's image term is
    the reference code's uniform average, not 0.)"""
    data = [e for e in examples(10) if e["images"] is not None]

    def run(path, variant, kw):
        t = mmca.Trainer(model(path, variant=variant, **kw), data, **dict(OPTS, total_steps=2))
        before = t.evaluate()["loss"]
        hist = t.run()
        return (np.array([before] + [h["loss"] for h in hist] + [h["grad_norm"] for h in hist]),
                t.parameter("projection.0.weight"), t.parameter("lang_embed.weight"))

    for layers in (2, 1):
        path = checkpoint(tmp_path / f"ckpt{layers}", seed=5, layers=layers)
        got = {v: run(path, v, kw) for v, kw in VARIANTS}
        for i, (a, _) in enumerate(VARIANTS):
            for b, _ in VARIANTS[i + 1:]:
                (sa, pa, ea), (sb, pb, eb) = got[a], got[b]
                rel = np.abs(sa - sb) / np.abs(sa)
                if layers == 1 and "causal" not in (a, b):
                    assert rel.max() < 1e-5, (layers, a, b, sa, sb)
                    assert np.abs(pa - pb).max() < 1e-5 and np.abs(ea - eb).max() < 1e-5, (layers, a, b)
                else:  # each of: loss before training, the step losses, the gradient norms
                    assert rel.min() > 1e-5 and rel.max() > 1e-3, (layers, a, b, sa, sb)
                    assert np.abs(pa - pb).max() > 1e-4, (layers, a, b)


def test_errors(ckpt, tmp_path):
    data = examples()
    with pytest.raises(ValueError, match="loss_averaging"):
        mmca.Trainer(model(ckpt), data, loss_averaging="sum")
    with pytest.raises(ValueError, match="micro_batch"):
        mmca.Trainer(model(ckpt), data, micro_batch=0)
    with pytest.raises(ValueError, match="dataset_size"):
        mmca.Trainer(model(ckpt), data[:3], micro_batch=2, accumulation=2)
    with pytest.raises(TypeError, match="data"):
        mmca.Trainer(model(ckpt), "data.json")
    with pytest.raises(TypeError, match="model"):
        mmca.Trainer("model", data)
    t = mmca.Trainer(model(ckpt), data, **OPTS)
    t.save(tmp_path / "s.safetensors")
    u = mmca.Trainer(model(ckpt), data, **dict(OPTS, micro_batch=1))
    with pytest.raises(ValueError, match="config.micro_batch = '2'"):
        u.load(tmp_path / "s.safetensors")
    with pytest.raises(ValueError, match="parameter"):
        t.parameter("nope")


def png(path, pixels):
    """An 8-bit RGB PNG (filter 0 on every row)."""
    h, w, _ = pixels.shape
    raw = b"".join(b"\x00" + pixels[y].tobytes() for y in range(h))

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


@pytest.mark.skipif(shutil.which("spm_train") is None, reason="spm_train (Debian package 'sentencepiece') is missing")
def test_conversation_data_from_the_blended_format(tmp_path):
    words = "what colour is the shape in image red blue green how many shapes are one two ### Question Answer".split()
    g = np.random.default_rng(1)
    (tmp_path / "corpus.txt").write_text("\n".join(" ".join(g.choice(words, 8)) for _ in range(500)) + "\n")
    subprocess.run(["spm_train", f"--input={tmp_path / 'corpus.txt'}", f"--model_prefix={tmp_path / 'tok'}",
                    "--model_type=bpe", "--vocab_size=300", "--byte_fallback=true", "--bos_id=1", "--eos_id=2",
                    "--unk_id=0", "--pad_id=-1", "--character_coverage=1.0", "--minloglevel=2"],
                   check=True, capture_output=True)
    tok = mmca.Tokenizer(str(tmp_path / "tok.model"))
    (tmp_path / "img").mkdir()
    for i in range(3):
        png(tmp_path / "img" / f"{i}.png", g.integers(0, 256, (S, S, 3), dtype=np.uint8))
    rounds = [{"question": "What colour is the shape in image 1?", "answer": "red", "images": 1},
              {"question": "How many shapes are in image 2?", "answer": "two", "images": 1}]
    blend = {"format": "mmca-blend", "version": 1,
             "train": [{"id": "a", "images": ["img/0.png", "img/1.png"], "rounds": rounds},
                       {"id": "b", "images": ["img/2.png"], "rounds": rounds[:1]}],
             "eval": [{"id": "c", "images": ["img/1.png"], "rounds": rounds[:1]}]}
    (tmp_path / "blend.json").write_text(json.dumps(blend))
    data = mmca.ConversationData(tmp_path / "blend.json", tok, image_size=S)
    assert len(data) == 2 and data.rounds(0) == 2 and data.image_paths(1) == ["img/2.png"]
    want = mmca.tokenize_conversation(tok, rounds)
    e = data.example(0)
    np.testing.assert_array_equal(e["ids"], want["input_ids"])
    np.testing.assert_array_equal(e["labels"], want["labels"])
    pix = mmca.preprocess_image(str(tmp_path / "img" / "1.png"), "visualchat-448", size=S, crop=S)
    assert e["images"].shape == (2, 3, S, S) and e["images"].dtype == np.float32
    np.testing.assert_array_equal(e["images"][1], pix)
    ev = mmca.ConversationData(tmp_path / "blend.json", tok, split="eval", image_size=S, system_prompt=False)
    assert len(ev) == 1
    # A trainer reads it (the checkpoint's vocabulary covers the tokenizer's).
    path = checkpoint(tmp_path / "ck", vocab=tok.vocab_size)
    t = mmca.Trainer(model(path, image_token=tok.image_id), data, total_steps=2)
    assert [r["step"] for r in t.run()] == [1, 2]
    assert t.evaluate(ev)["rounds"] == 1
    with pytest.raises(ValueError, match="split"):
        mmca.ConversationData(tmp_path / "blend.json", tok, split="test")
    (tmp_path / "bad.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(ValueError, match="mmca-blend"):
        mmca.ConversationData(tmp_path / "bad.json", tok)
