#!/usr/bin/env python3
"""Trains the demo visual-chat model of examples/demo_model from scratch (docs/demo_model.md).

    PYTHONPATH=build/python .venv/bin/python examples/train_demo_model.py --out examples/demo_model

The pipeline of benchmarks/data_efficiency.py at a larger size, under MMCA only:

1. the synthetic multi-image, multi-round task (mmca.synthetic_sample), training split seed 0 and a
   held-out split (seed 1000), as PNG files and the blended conversation format;
2. a SentencePiece tokenizer on the task's text, a tiny LLaMa pretrained on the text of the
   training conversations and a tiny QWen-VL ViT pretrained on the images' attributes, both then
   frozen;
3. mmca.Trainer under the `mmca` variant: the projector, the token embedding and LoRA adapters on
   q/k/v/o of every decoder layer;
4. the held-out loss and answer accuracy (all of them and by question kind), then the export: one
   float32 safetensors checkpoint with the reference names and the adapters merged into the decoder,
   its config.json and tokenizer.model, the demo conversation (two rounds over three generated
   images, the first sample of that shape from the generator's demo seed, written as PNG) and training.json (the command, the
   settings, the run time and the held-out results of the exported checkpoint).

Needs torch and transformers (the .venv of scripts/setup.sh), safetensors and spm_train (Debian
package sentencepiece). Deterministic for a given machine and thread count; another machine may
round differently and end at slightly different weights.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import time

import numpy as np

import mmca

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
import data_efficiency as de  # noqa: E402  (the task, the pretraining and the checkpoint layout)

# The demo conversation: sample DEMO_INDEX of the generator at DEMO_SEED (neither split's seed).
DEMO_SEED = 2024
VISION = dict(image_size=de.IMAGE_SIZE, vision_heads=4, pool_heads=2)


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def use_openblas():
    """Re-runs this script with Debian's OpenBLAS first on LD_LIBRARY_PATH when it is installed
    (package libopenblas0-pthread): Debian's torch takes libblas.so.3 from the alternatives system,
    and with the reference BLAS its matmuls are about 10x slower. MMCA_DEMO_BLAS=system keeps the
    machine's choice."""
    d = "/usr/lib/x86_64-linux-gnu/openblas-pthread"
    paths = [p for p in os.environ.get("LD_LIBRARY_PATH", "").split(":") if p]
    if os.environ.get("MMCA_DEMO_BLAS") == "system" or d in paths or not os.path.exists(os.path.join(d, "libblas.so.3")):
        return
    env = dict(os.environ, LD_LIBRARY_PATH=":".join([d] + paths))
    os.execve(sys.executable, [sys.executable, os.path.abspath(__file__)] + sys.argv[1:], env)


def merged_checkpoint(base_path, trainer, lora_scale):
    """The base checkpoint's tensors with the trained ones put in: the projector and lang_embed.weight
    replaced, the LoRA products added to the decoder's q/k/v/o weights (float32)."""
    from safetensors.numpy import load_file

    tensors = load_file(base_path)
    names = trainer.names
    for n in names:
        if ".lora_" in n:
            continue
        if n not in tensors:
            raise KeyError(f"trained tensor {n} is not in the base checkpoint {base_path}")
        tensors[n] = trainer.parameter(n).astype(np.float32)
    for n in names:
        if not n.endswith(".lora_A.weight"):
            continue
        stem = n[: -len(".lora_A.weight")]
        a = trainer.parameter(n).astype(np.float64)
        b = trainer.parameter(stem + ".lora_B.weight").astype(np.float64)
        w = stem + ".weight"
        tensors[w] = (tensors[w].astype(np.float64) + lora_scale * (b @ a)).astype(np.float32)
    return {k: np.ascontiguousarray(v) for k, v in tensors.items()}


def cached(work, name, key, make):
    """The frozen part `name` from <work>/pretrained-<name>.* when it was made with the same settings
    (`key`), else make() -> (tensors, extra), saved there. Pretraining is deterministic, so a cached
    part equals a fresh one; only the run time differs."""
    from safetensors.torch import load_file, save_file

    tensors, meta = (os.path.join(work, f"pretrained-{name}.{ext}") for ext in ("safetensors", "json"))
    if os.path.exists(tensors) and os.path.exists(meta):
        with open(meta) as f:
            saved = json.load(f)
        if saved["key"] == key:
            log(f"[pretrain] {name}: reusing {tensors}")
            return load_file(tensors), saved["extra"]
    state, extra = make()
    save_file({k: v.contiguous() for k, v in state.items()}, tensors)
    with open(meta, "w") as f:
        json.dump({"key": key, "extra": extra}, f)
    return state, extra


def by_kind(samples, correct):
    """Accuracy per question kind, and per kind and where the named image was shown: "single" (the
    conversation has shown one image), "latest" (several; the question names the last one) or
    "earlier"."""
    kinds, where = {}, {}
    rounds = []
    for smp in samples:
        shown = 0
        for r in smp["rounds"]:
            shown += r["images"]
            at = "single" if shown == 1 else ("latest" if all(a == shown - 1 for a in r["about"]) else "earlier")
            rounds.append((r["kind"], at))
    for (k, at), ok in zip(rounds, correct):
        kinds.setdefault(k, []).append(ok)
        where.setdefault(f"{k}/{at}", []).append(ok)
    stat = lambda v: {"rounds": len(v), "accuracy": float(np.mean(v))}  # noqa: E731
    return ({k: stat(v) for k, v in sorted(kinds.items())}, {k: stat(v) for k, v in sorted(where.items())})


def evaluate_folder(folder, blend, samples, tok, args):
    """Held-out loss, accuracy and the breakdowns of the checkpoint in `folder`, run from the file."""
    model = mmca.VisualChatModel(folder, batch=args.micro_batch, variant="mmca", image_token_id=tok.image_id,
                                 num_threads=args.threads, **VISION)
    held = mmca.ConversationData(blend, tok, split="eval", image_size=de.IMAGE_SIZE, system_prompt=False)
    check = mmca.Trainer(model, held, projector=True, embedding=False, micro_batch=args.micro_batch,
                         num_threads=args.threads)
    ev = check.evaluate(held)
    kinds, where = by_kind(samples, ev["round_correct"])
    log(f"[evaluate] {folder}: held-out loss {ev['loss']:.4f} accuracy {ev['accuracy']:.3f} " +
        " ".join(f"{k} {v['accuracy']:.3f}" for k, v in kinds.items()))
    return {"conversations": len(samples), "rounds": ev["rounds"], "loss": ev["loss"], "accuracy": ev["accuracy"],
            "by_kind": kinds, "by_kind_and_image": where}


def demo_conversation(folder, index):
    """Writes the demo's images and returns its rounds (question, images shown, expected answer)."""
    smp = mmca.synthetic_sample(DEMO_SEED, index, **de.TASK)
    os.makedirs(os.path.join(folder, "images"), exist_ok=True)
    paths = []
    for k, img in enumerate(smp["images"]):
        rel = f"images/image-{k + 1}.png"
        de.write_png(os.path.join(folder, rel), img)
        paths.append(rel)
    rounds, shown = [], 0
    for r in smp["rounds"]:
        rounds.append({"question": r["question"], "images": paths[shown:shown + r["images"]], "expected": r["answer"],
                       "kind": r["kind"]})
        shown += r["images"]
    return rounds, smp


# The question kinds the demo asks: those the model answers reliably on the held-out split
# (docs/demo_model.md has the accuracy of every kind; colour, shape and position are weak).
DEMO_KINDS = ("count", "compare")


def pick_demo(min_images=3, rounds=2):
    """The first generator sample at DEMO_SEED with `min_images` images over `rounds` rounds, one
    question of each of DEMO_KINDS (chosen by its structure only, before any model answers it)."""
    for i in range(10_000):
        smp = mmca.synthetic_sample(DEMO_SEED, i, **de.TASK)
        rs = smp["rounds"]
        if (len(smp["images"]) >= min_images and len(rs) == rounds
                and sorted(r["kind"] for r in rs) == sorted(DEMO_KINDS)):
            return i
    raise RuntimeError("no demo conversation found")


def main(argv=None):
    if argv is None:
        use_openblas()
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=os.path.join(ROOT, "examples", "demo_model"), help="where the model goes")
    ap.add_argument("--work", default="/tmp/mmca-demo-model", help="working folder (data, intermediate checkpoint)")
    ap.add_argument("--train", type=int, default=6000, help="training conversations")
    ap.add_argument("--eval", type=int, default=200, help="held-out conversations")
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--vit-width", type=int, default=64)
    ap.add_argument("--vocab", type=int, default=400)
    ap.add_argument("--lm-steps", type=int, default=800)
    ap.add_argument("--vit-steps", type=int, default=400)
    ap.add_argument("--vit-head", default="joint", choices=["per_cell", "joint"],
                    help="ViT pretraining head: per pooled token (token i = grid cell i) or over all tokens")
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--micro-batch", type=int, default=8)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--lora", default="qkvo")
    ap.add_argument("--lora-rank", type=int, default=16)
    ap.add_argument("--lora-alpha", type=float, default=32.0)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--smoke", action="store_true", help="toy sizes (a test of the pipeline, not a usable model)")
    ap.add_argument("--evaluate", default="", metavar="FOLDER",
                    help="only evaluate the model in FOLDER on the held-out split (accuracy by kind and image)")
    args = ap.parse_args(argv)
    if args.smoke:
        args.train, args.eval, args.hidden, args.layers, args.epochs = 24, 8, 32, 1, 1
        args.lm_steps, args.vit_steps, args.vocab, args.micro_batch, args.lora_rank = 5, 5, 300, 4, 4
    if args.evaluate:
        # Only the held-out evaluation of an existing model (its own tokenizer; the split is regenerated).
        splits = de.make_data(args.work, 0, args.eval, seed=0)
        tok = mmca.Tokenizer(os.path.join(args.evaluate, "tokenizer.model"))
        print(json.dumps(evaluate_folder(args.evaluate, os.path.join(args.work, "data", "blend.json"), splits["eval"],
                                         tok, args), indent=1))
        return 0
    if shutil.which("spm_train") is None:
        sys.exit("train_demo_model.py: spm_train (Debian package 'sentencepiece') is needed to make the tokenizer")
    command = "python3 " + " ".join([os.path.relpath(os.path.abspath(__file__), ROOT)] + (argv or sys.argv[1:]))
    t0 = time.time()
    os.makedirs(args.work, exist_ok=True)

    # 1.-2. Data, tokenizer, frozen parts.
    splits = de.make_data(args.work, args.train, args.eval, seed=0)
    blend = os.path.join(args.work, "data", "blend.json")
    tok_path = de.train_tokenizer(args.work, splits, args.vocab)
    tok = mmca.Tokenizer(tok_path)
    tok_hash = hashlib.sha256(open(tok_path, "rb").read()).hexdigest()
    llama, llama_cfg = cached(args.work, "llama", {"tokenizer": tok_hash, "train": args.train, "hidden": args.hidden,
                                                   "layers": args.layers, "steps": args.lm_steps},
                              lambda: de.pretrain_llama(tok, splits, args, seed=0))
    vit, _ = cached(args.work, "vit", {"train": args.train, "width": args.vit_width, "steps": args.vit_steps,
                                       "head": args.vit_head},
                    lambda: (de.pretrain_vit(splits, args, seed=0), {}))
    base = de.write_checkpoint(os.path.join(args.work, "base"), vit, llama, llama_cfg, 0, False, args.hidden)
    log(f"[pretrain] done ({time.time() - t0:.0f} s)")

    # 3. The visual stage under MMCA.
    model = mmca.VisualChatModel(base, batch=args.micro_batch, variant="mmca", image_token_id=tok.image_id,
                                 num_threads=args.threads, **VISION)
    data = mmca.ConversationData(blend, tok, split="train", image_size=de.IMAGE_SIZE, system_prompt=False)
    held = mmca.ConversationData(blend, tok, split="eval", image_size=de.IMAGE_SIZE, system_prompt=False)
    trainer = mmca.Trainer(model, data, lora=args.lora, lora_rank=args.lora_rank, lora_alpha=args.lora_alpha,
                           lr=args.lr, betas=(0.9, 0.95), weight_decay=0.0, warmup_ratio=0.1, max_grad_norm=1.0,
                           micro_batch=args.micro_batch, epochs=args.epochs, seed=0, num_threads=args.threads)
    total = trainer.total_steps
    for k in range(1, 5):
        trainer.run(max_steps=(total * k) // 4 - trainer.step_count)
        ev = trainer.evaluate(held)
        log(f"[train] step {trainer.step_count}/{total} held-out loss {ev['loss']:.4f} accuracy {ev['accuracy']:.3f} "
            f"({time.time() - t0:.0f} s)")

    # 4. Export and check the exported checkpoint on its own.
    os.makedirs(args.out, exist_ok=True)
    from safetensors.numpy import save_file

    tensors = merged_checkpoint(os.path.join(base, "model.safetensors"), trainer, args.lora_alpha / args.lora_rank)
    tmp = os.path.join(args.out, "model.safetensors.tmp")
    save_file(tensors, tmp, metadata={"format": "pt", "mmca": "demo visual-chat model (examples/train_demo_model.py)"})
    os.chmod(tmp, 0o644)
    os.replace(tmp, os.path.join(args.out, "model.safetensors"))
    shutil.copy(os.path.join(base, "config.json"), os.path.join(args.out, "config.json"))
    shutil.copy(tok_path, os.path.join(args.out, "tokenizer.model"))

    final = evaluate_folder(args.out, blend, splits["eval"], tok, args)

    index = pick_demo()
    rounds, _ = demo_conversation(args.out, index)
    demo = {"format": "mmca-demo", "version": 1, "variant": "mmca", "system_prompt": False,
            "preset": "visualchat-448", **VISION, "image_token_id": tok.image_id,
            "source": {"generator": "mmca.synthetic_sample", "seed": DEMO_SEED, "index": index, **de.TASK},
            "rounds": rounds}
    with open(os.path.join(args.out, "demo.json"), "w") as f:
        json.dump(demo, f, indent=1)
        f.write("\n")
    seconds = time.time() - t0
    info = {"command": command, "seconds": round(seconds), "settings": vars(args), "held_out": final,
            "llama": {k: llama_cfg[k] for k in ("hidden_size", "intermediate_size", "num_hidden_layers",
                                                  "num_attention_heads", "vocab_size")}}
    with open(os.path.join(args.out, "training.json"), "w") as f:
        json.dump(info, f, indent=1)
        f.write("\n")
    print(json.dumps(info["held_out"], indent=1))
    print(f"command: {command}\nrun time: {seconds:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
