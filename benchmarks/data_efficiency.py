#!/usr/bin/env python3
"""Data efficiency of the attention variants (docs/data_efficiency.md).

One command:

    PYTHONPATH=<build>/python .venv/bin/python benchmarks/data_efficiency.py --out /tmp/mmca-de

1. generates the synthetic multi-image multi-round task (mmca.synthetic_sample: shapes, colours,
   counts, positions; questions that name the image, comparisons across images), a training split
   and a held-out split (another seed), written as PNG images and the blended conversation format;
2. trains a SentencePiece tokenizer on the task's text, pretrains a tiny LLaMa (HF
   LlamaForCausalLM) on the text of the training conversations and a tiny QWen-VL ViT on the images'
   attributes (colour and shape of each grid cell), then freezes both (the paper's regime);
3. for each seed, trains the projector and the token embedding (plus the gated cross-attention
   blocks for that variant) with mmca.Trainer under causal, mmca, mmca_reference, causal_cross and
   gated cross-attention, with the same data order (the seed) and the same hyperparameters;
4. evaluates held-out loss and answer accuracy at fixed numbers of training samples seen and writes
   results.json, a Markdown table and a PNG plot.

Needs torch and transformers (the .venv of scripts/setup.sh) for stage 2, matplotlib for the plot,
and spm_train (Debian package sentencepiece). --smoke runs everything at toy size in well under a
minute (registered with CTest).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import struct
import subprocess
import sys
import time
import zlib

import numpy as np

import mmca

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The variants: (name, VisualChatModel keyword arguments, gated cross-attention blocks).
VARIANTS = [
    ("causal", dict(variant="causal"), False),
    ("mmca", dict(variant="mmca"), False),
    ("mmca_reference", dict(variant="mmca_reference"), False),
    ("causal_cross", dict(variant="causal_cross", policy="preceding"), False),
    ("gated_cross", dict(variant="causal"), True),
]

IMAGE_SIZE = 56
TASK = dict(image_size=IMAGE_SIZE, grid=2, max_images=3, max_shapes=3, max_rounds=2)


def log(*a):
    print(*a, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# 1. Data
# ---------------------------------------------------------------------------------------------

def write_png(path, pixels):
    """An 8-bit RGB PNG (filter 0 on every row)."""
    h, w, _ = pixels.shape
    raw = b"".join(b"\x00" + pixels[y].tobytes() for y in range(h))

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
                + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b""))


def make_data(out, n_train, n_eval, seed):
    """Writes <out>/data/blend.json and its images; returns the samples of each split."""
    folder = os.path.join(out, "data")
    os.makedirs(os.path.join(folder, "img"), exist_ok=True)
    splits = {}
    blend = {"format": "mmca-blend", "version": 1, "mode": "synthetic", "seed": seed}
    for split, s, n in (("train", seed, n_train), ("eval", seed + 1000, n_eval)):
        samples, entries = [], []
        for i in range(n):
            smp = mmca.synthetic_sample(s, i, **TASK)
            paths = []
            for k, img in enumerate(smp["images"]):
                rel = f"img/{split}-{i}-{k}.png"
                write_png(os.path.join(folder, rel), img)
                paths.append(rel)
            rounds = [{"question": r["question"], "answer": r["answer"], "images": r["images"]} for r in smp["rounds"]]
            entries.append({"id": f"{split}-{i}", "images": paths, "rounds": rounds})
            samples.append(smp)
        blend[split] = entries
        splits[split] = samples
    with open(os.path.join(folder, "blend.json"), "w") as f:
        json.dump(blend, f)
    return splits


def train_tokenizer(out, splits, vocab):
    """A byte-fallback BPE SentencePiece model on the task's text."""
    folder = os.path.join(out, "tokenizer")
    os.makedirs(folder, exist_ok=True)
    lines = []
    for smp in splits["train"]:
        for r in smp["rounds"]:
            lines += [r["question"], r["answer"]]
    lines += ["### Image 1:", "### Image 2:", "### Image 3:", "### Question:", "### Answer:"] * 50
    corpus = os.path.join(folder, "corpus.txt")
    with open(corpus, "w") as f:
        f.write("\n".join(lines) + "\n")
    subprocess.run(["spm_train", f"--input={corpus}", f"--model_prefix={os.path.join(folder, 'tokenizer')}",
                    "--model_type=bpe", f"--vocab_size={vocab}", "--byte_fallback=true", "--bos_id=1", "--eos_id=2",
                    "--unk_id=0", "--pad_id=-1", "--character_coverage=1.0", "--minloglevel=2"],
                   check=True, capture_output=True)
    return os.path.join(folder, "tokenizer.model")


# ---------------------------------------------------------------------------------------------
# 2. Frozen parts: tiny LLaMa on the text, tiny ViT on the image attributes
# ---------------------------------------------------------------------------------------------

def pretrain_llama(tok, splits, args, seed):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=tok.vocab_size, hidden_size=args.hidden, intermediate_size=2 * args.hidden,
                      num_hidden_layers=args.layers, num_attention_heads=4, num_key_value_heads=4,
                      max_position_embeddings=512, rms_norm_eps=1e-5, bos_token_id=1, eos_token_id=2,
                      tie_word_embeddings=False)
    model = LlamaForCausalLM(cfg).float()
    seqs = []
    for smp in splits["train"]:
        rounds = [{"question": r["question"], "answer": r["answer"], "images": r["images"]} for r in smp["rounds"]]
        seqs.append(np.asarray(mmca.tokenize_conversation(tok, rounds, system_prompt=False)["input_ids"], np.int64))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, betas=(0.9, 0.95), weight_decay=0.0)
    g = np.random.default_rng(seed)
    B = 32
    for step in range(args.lm_steps):
        batch = [seqs[i] for i in g.integers(0, len(seqs), B)]
        L = max(len(s) for s in batch)
        ids = torch.full((B, L), 2, dtype=torch.long)
        labels = torch.full((B, L), -100, dtype=torch.long)
        mask = torch.zeros((B, L), dtype=torch.long)
        for b, s in enumerate(batch):
            ids[b, :len(s)] = torch.from_numpy(s)
            labels[b, :len(s)] = torch.from_numpy(s)
            mask[b, :len(s)] = 1
        for p in opt.param_groups:
            p["lr"] = 3e-3 * min(1.0, (step + 1) / 20) * (0.5 * (1 + math.cos(math.pi * step / args.lm_steps)))
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % 100 == 0 or step == args.lm_steps - 1:
            log(f"[llama] step {step + 1}/{args.lm_steps} loss {loss.item():.4f}")
    state = {k: v.detach().float().contiguous() for k, v in model.state_dict().items() if "rotary_emb" not in k}
    return state, json.loads(cfg.to_json_string())


def cell_targets(shapes, grid=2):
    """Per grid cell: colour class (0 empty, 1..6) and shape class (0 empty, 1..3)."""
    colours = ["red", "green", "blue", "yellow", "purple", "orange"]
    kinds = ["circle", "square", "triangle"]
    c = np.zeros(grid * grid, np.int64)
    k = np.zeros(grid * grid, np.int64)
    for s in shapes:
        cell = s["row"] * grid + s["col"]
        c[cell] = colours.index(s["colour"]) + 1
        k[cell] = kinds.index(s["shape"]) + 1
    return c, k


def pretrain_vit(splits, args, seed):
    import torch

    sys.path.insert(0, os.path.join(ROOT, "tests", "python"))
    import qwen_vit_oracle as qo  # the PyTorch QWen-VL ViT the library is tested against

    E = args.vit_width
    state = qo.random_state(seed, width=args.vit_width, heads=4, layers=2, mlp_width=2 * args.vit_width,
                            pos_grid=IMAGE_SIZE // 14, output_dim=E, queries=4, std=0.05)
    state["attn_pool.pos_embed"] = state["attn_pool.pos_embed"]  # fixed sin-cos table, not trained
    params = {k: v.clone().requires_grad_(k != "attn_pool.pos_embed") for k, v in state.items()}
    # "joint": one linear head reads all four pooled tokens; "per_cell": a head shared by the tokens
    # reads token i alone for grid cell i (the tokens then line up with the cells).
    per_cell = getattr(args, "vit_head", "joint") == "per_cell"
    head = torch.nn.Linear(E if per_cell else 4 * E, 11 if per_cell else 4 * (7 + 4)).double()
    images, colours, kinds = [], [], []
    for smp in splits["train"]:
        for img, shapes in zip(smp["images"], smp["shapes"]):
            images.append(mmca.preprocess_image(np.ascontiguousarray(img), "visualchat-448", size=IMAGE_SIZE,
                                                crop=IMAGE_SIZE))
            c, k = cell_targets(shapes)
            colours.append(c)
            kinds.append(k)
    X = torch.from_numpy(np.stack(images))
    C = torch.from_numpy(np.stack(colours))
    K = torch.from_numpy(np.stack(kinds))
    opt = torch.optim.Adam([p for p in params.values() if p.requires_grad] + list(head.parameters()), lr=3e-3)
    g = np.random.default_rng(seed)
    for step in range(args.vit_steps):
        idx = torch.from_numpy(g.integers(0, len(X), 64))
        feats = qo.forward(params, X[idx], heads=4, pool_heads=2)          # (B, 4, E) float64
        logits = head(feats) if per_cell else head(feats.reshape(len(idx), -1)).reshape(len(idx), 4, 11)
        loss = (torch.nn.functional.cross_entropy(logits[..., :7].reshape(-1, 7), C[idx].reshape(-1))
                + torch.nn.functional.cross_entropy(logits[..., 7:].reshape(-1, 4), K[idx].reshape(-1)))
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 100 == 0 or step == args.vit_steps - 1:
            with torch.no_grad():
                acc = ((logits[..., :7].argmax(-1) == C[idx]).float().mean().item(),
                       (logits[..., 7:].argmax(-1) == K[idx]).float().mean().item())
            log(f"[vit] step {step + 1}/{args.vit_steps} loss {loss.item():.4f} cell colour acc {acc[0]:.3f} shape acc {acc[1]:.3f}")
    return {k: v.detach().float().contiguous() for k, v in params.items()}


def write_checkpoint(folder, vit, llama, llama_cfg, seed, cross, hidden):
    """The reference names (SPEC §9): vis_encoder.*, projection.* (fresh, from seed), lang_decoder.*,
    lang_embed.weight (a copy of the pretrained embedding); with `cross`, one gated cross-attention
    block per layer (fresh, gates 0: the decoder starts unchanged)."""
    from safetensors.numpy import save_file

    g = np.random.default_rng(10_000 + seed)
    E = vit["ln_post.weight"].shape[0]
    t = {"vis_encoder." + k: v.numpy() for k, v in vit.items()}
    t.update({"lang_decoder." + k: v.numpy() for k, v in llama.items()})
    t["lang_embed.weight"] = llama["model.embed_tokens.weight"].numpy().copy()
    bound = 1 / math.sqrt(E)
    t["projection.0.weight"] = g.uniform(-bound, bound, (hidden, E)).astype(np.float32)
    t["projection.0.bias"] = g.uniform(-bound, bound, hidden).astype(np.float32)
    t["projection.1.weight"] = np.ones(hidden, np.float32)
    t["projection.1.bias"] = np.zeros(hidden, np.float32)
    cfg = dict(llama_cfg)
    if cross:
        I = 2 * hidden
        for b in range(cfg["num_hidden_layers"]):
            p = f"lang_decoder.model.cross_blocks.{b}."
            for n, shape in [("q_proj.weight", (hidden, hidden)), ("k_proj.weight", (hidden, hidden)),
                             ("v_proj.weight", (hidden, hidden)), ("o_proj.weight", (hidden, hidden)),
                             ("mlp.gate_proj.weight", (I, hidden)), ("mlp.up_proj.weight", (I, hidden)),
                             ("mlp.down_proj.weight", (hidden, I))]:
                t[p + n] = (0.02 * g.standard_normal(shape)).astype(np.float32)
            t[p + "attn_norm.weight"] = np.ones(hidden, np.float32)
            t[p + "mlp_norm.weight"] = np.ones(hidden, np.float32)
            t[p + "attn_gate"] = np.zeros(1, np.float32)
            t[p + "mlp_gate"] = np.zeros(1, np.float32)
        cfg["cross_attention_every"] = 1
        cfg["cross_attention_intermediate"] = I
    os.makedirs(folder, exist_ok=True)
    save_file({k: np.ascontiguousarray(v) for k, v in t.items()}, os.path.join(folder, "model.safetensors"))
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(cfg, f)
    return folder


# ---------------------------------------------------------------------------------------------
# 3./4. Training under each variant, evaluation, report
# ---------------------------------------------------------------------------------------------

def round_kinds(samples):
    return [r["kind"] for smp in samples for r in smp["rounds"]]


def run_variant(ckpt, tok, blend, name, kwargs, cross, seed, args, eval_kinds):
    model = mmca.VisualChatModel(ckpt, batch=args.micro_batch, image_size=IMAGE_SIZE, vision_heads=4, pool_heads=2,
                                 image_token_id=tok.image_id, num_threads=args.threads, **kwargs)
    data = mmca.ConversationData(blend, tok, split="train", image_size=IMAGE_SIZE, system_prompt=False)
    held = mmca.ConversationData(blend, tok, split="eval", image_size=IMAGE_SIZE, system_prompt=False)
    trainer = mmca.Trainer(model, data, cross_blocks=cross, lr=args.lr, betas=(0.9, 0.95), weight_decay=0.0,
                           warmup_ratio=0.1, max_grad_norm=1.0, micro_batch=args.micro_batch, epochs=args.epochs,
                           seed=seed, num_threads=args.threads)
    total = trainer.total_steps
    points = sorted({0} | {max(1, round(total * f)) for f in (0.125, 0.25, 0.5, 0.75, 1.0)})
    curve = []
    t0 = time.time()
    for p in points:
        if p > trainer.step_count:
            trainer.run(max_steps=p - trainer.step_count)
        ev = trainer.evaluate(held)
        by_kind = {}
        for k, ok in zip(eval_kinds, ev["round_correct"]):
            by_kind.setdefault(k, []).append(ok)
        curve.append({"step": trainer.step_count, "samples": trainer.samples_seen, "loss": ev["loss"],
                      "accuracy": ev["accuracy"], "by_kind": {k: float(np.mean(v)) for k, v in by_kind.items()}})
        log(f"[{name} seed {seed}] step {trainer.step_count}/{total} samples {trainer.samples_seen} "
            f"held-out loss {ev['loss']:.4f} accuracy {ev['accuracy']:.3f} ({time.time() - t0:.0f} s)")
    return curve


def report(results, out, args, seconds, command):
    names = list(results)
    samples = [c["samples"] for c in next(iter(results.values()))[0]]
    lines = ["| variant | " + " | ".join(f"{s} samples" for s in samples) + " |",
             "|---|" + "---|" * len(samples)]
    for metric, fmt in (("accuracy", "{:.3f} ± {:.3f}"), ("loss", "{:.3f} ± {:.3f}")):
        lines.append(f"| **held-out {metric}** |" + " |" * len(samples))
        for n in names:
            vals = np.array([[c[metric] for c in curve] for curve in results[n]])
            cells = [fmt.format(vals[:, j].mean(), vals[:, j].std()) for j in range(len(samples))]
            lines.append(f"| {n} | " + " | ".join(cells) + " |")
    kinds = sorted(results[names[0]][0][-1]["by_kind"])
    lines += ["", "Held-out accuracy by question kind at the end of training (mean over seeds):", "",
              "| variant | " + " | ".join(kinds) + " |", "|---|" + "---|" * len(kinds)]
    for n in names:
        lines.append(f"| {n} | " + " | ".join(
            f"{np.mean([curve[-1]['by_kind'].get(k, float('nan')) for curve in results[n]]):.3f}" for k in kinds) + " |")
    table = "\n".join(lines)
    with open(os.path.join(out, "table.md"), "w") as f:
        f.write(table + "\n")
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump({"command": command, "seconds": seconds, "args": vars(args), "results": results}, f, indent=1)
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("matplotlib is missing: no plot")
        return table
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for n in names:
        acc = np.array([[c["accuracy"] for c in curve] for curve in results[n]])
        loss = np.array([[c["loss"] for c in curve] for curve in results[n]])
        for ax, v in ((axes[0], acc), (axes[1], loss)):
            ax.plot(samples, v.mean(0), marker="o", label=n)
            ax.fill_between(samples, v.mean(0) - v.std(0), v.mean(0) + v.std(0), alpha=0.15)
    axes[0].set_ylabel("held-out answer accuracy")
    axes[1].set_ylabel("held-out loss (token mean)")
    for ax in axes:
        ax.set_xlabel("training samples seen")
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.suptitle(f"mmca data efficiency: mean ± std over {len(results[names[0]])} seeds")
    fig.tight_layout()
    fig.savefig(args.plot or os.path.join(out, "data_efficiency.png"), dpi=110)
    return table


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="/tmp/mmca-data-efficiency", help="working folder (data, models, results)")
    ap.add_argument("--smoke", action="store_true", help="toy sizes, one seed (the CTest smoke test)")
    ap.add_argument("--train", type=int, default=1500, help="training conversations")
    ap.add_argument("--eval", type=int, default=200, help="held-out conversations")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--micro-batch", type=int, default=8)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--vit-width", type=int, default=64)
    ap.add_argument("--vocab", type=int, default=400)
    ap.add_argument("--lm-steps", type=int, default=400)
    ap.add_argument("--vit-steps", type=int, default=400)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--variants", default=",".join(v[0] for v in VARIANTS), help="comma-separated subset")
    ap.add_argument("--plot", default="", help="where the PNG goes (default <out>/data_efficiency.png)")
    args = ap.parse_args(argv)
    if args.smoke:
        args.train, args.eval, args.seeds, args.epochs = 24, 8, 1, 1
        args.lm_steps, args.vit_steps, args.vocab, args.micro_batch = 5, 5, 300, 4
    chosen = args.variants.split(",")
    for n in chosen:
        if n not in [v[0] for v in VARIANTS]:
            ap.error(f"--variants: got '{n}'; expected names from {[v[0] for v in VARIANTS]}")
    variants = [v for v in VARIANTS if v[0] in chosen]
    command = "python3 " + " ".join([os.path.relpath(os.path.abspath(__file__), ROOT)] + sys.argv[1:])
    if shutil.which("spm_train") is None:
        sys.exit("data_efficiency.py: spm_train (Debian package 'sentencepiece') is needed to make the tokenizer")
    t0 = time.time()
    os.makedirs(args.out, exist_ok=True)
    splits = make_data(args.out, args.train, args.eval, seed=0)
    blend = os.path.join(args.out, "data", "blend.json")
    tok = mmca.Tokenizer(train_tokenizer(args.out, splits, args.vocab))
    log(f"[data] {args.train} train / {args.eval} held-out conversations, tokenizer of {tok.vocab_size} ids "
        f"({time.time() - t0:.0f} s)")
    llama, llama_cfg = pretrain_llama(tok, splits, args, seed=0)
    vit = pretrain_vit(splits, args, seed=0)
    log(f"[pretrain] done ({time.time() - t0:.0f} s)")
    eval_kinds = round_kinds(splits["eval"])
    results = {}
    for seed in range(args.seeds):
        for name, kwargs, cross in variants:
            ckpt = write_checkpoint(os.path.join(args.out, f"ckpt-{'cross' if cross else 'plain'}-{seed}"), vit, llama,
                                    llama_cfg, seed, cross, args.hidden)
            shutil.copy(os.path.join(args.out, "tokenizer", "tokenizer.model"), os.path.join(ckpt, "tokenizer.model"))
            results.setdefault(name, []).append(run_variant(ckpt, tok, blend, name, kwargs, cross, seed, args, eval_kinds))
    seconds = time.time() - t0
    table = report(results, args.out, args, seconds, command)
    print(table)
    print(f"\ncommand: {command}\nrun time: {seconds:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
