#!/usr/bin/env python3
"""Convert a DeepSpeed-VisualChat reference checkpoint (pytorch_model.bin) to safetensors.

    .venv/bin/python scripts/convert_reference_checkpoint.py pytorch_model.bin out_dir \
        [--config llama_config.json] [--dtype keep|float32|float16|bfloat16] [--shard-size 5GB]
        [--only-language] [--verify]

torch reads the pickle (``weights_only=True`` where torch supports it, so a checkpoint cannot run
code); the official ``safetensors`` package writes the result. Tensor names are kept as they are
(``lang_decoder.model.*``, ``lang_decoder.lm_head.weight``, ``lang_embed.weight``, ``vis_encoder.*``,
``projection.*``: SPEC §9), which is what ``mmca`` reads with ``names="visual_chat"``. A checkpoint
saved as {"module": state_dict} or {"state_dict": state_dict} is unwrapped. Tensors that share
storage are written as separate copies (safetensors stores no aliases). With --shard-size the
output is model-XXXXX-of-YYYYY.safetensors plus model.safetensors.index.json; otherwise one
model.safetensors. --config copies an HF LLaMa config.json next to it (mmca needs one to load the
language model). --verify reopens the output and compares every tensor bit for bit.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys

import torch

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def parse_size(text: str) -> int:
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMG]?B?)\s*", text.upper())
    if not m:
        raise argparse.ArgumentTypeError(f"--shard-size: got {text!r}; expected e.g. 500MB or 5GB")
    scale = {"": 1, "B": 1, "K": 2**10, "KB": 2**10, "M": 2**20, "MB": 2**20, "G": 2**30, "GB": 2**30}[m.group(2)]
    return int(float(m.group(1)) * scale)


def load_state_dict(path: str) -> dict:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except TypeError:  # torch without weights_only
        obj = torch.load(path, map_location="cpu")
    for key in ("module", "state_dict", "model"):
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            obj = obj[key]
    if not isinstance(obj, dict):
        raise SystemExit(f"{path}: got a {type(obj).__name__}; expected a state dict (name -> tensor)")
    tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    skipped = sorted(set(obj) - set(tensors))
    if skipped:
        print(f"skipping {len(skipped)} non-tensor entries: {skipped[:5]}{' ...' if len(skipped) > 5 else ''}")
    if not tensors:
        raise SystemExit(f"{path}: no tensors found")
    return tensors


def convert(src: str, out_dir: str, *, dtype: str = "keep", shard_size: int | None = None,
            only_language: bool = False, config: str | None = None, verify: bool = False) -> list[str]:
    from safetensors.torch import save_file

    state = load_state_dict(src)
    if only_language:
        state = {k: v for k, v in state.items() if k.startswith(("lang_decoder.", "lang_embed."))}
        if not state:
            raise SystemExit(f"{src}: no lang_decoder.* / lang_embed.* tensors")
    out = {}
    for name, t in state.items():
        t = t.detach()
        if dtype != "keep" and t.is_floating_point():
            t = t.to(DTYPES[dtype])
        out[name] = t.contiguous().clone()  # own storage: no aliasing between entries
    os.makedirs(out_dir, exist_ok=True)
    names = sorted(out)
    files = []
    if shard_size is None:
        save_file(out, os.path.join(out_dir, "model.safetensors"), metadata={"format": "pt", "source": os.path.basename(src)})
        files.append("model.safetensors")
        weight_map = None
    else:
        groups, current, size = [], [], 0
        for n in names:
            nbytes = out[n].numel() * out[n].element_size()
            if current and size + nbytes > shard_size:
                groups.append(current)
                current, size = [], 0
            current.append(n)
            size += nbytes
        groups.append(current)
        weight_map = {}
        for i, g in enumerate(groups):
            fname = f"model-{i + 1:05d}-of-{len(groups):05d}.safetensors"
            save_file({n: out[n] for n in g}, os.path.join(out_dir, fname), metadata={"format": "pt"})
            weight_map.update({n: fname for n in g})
            files.append(fname)
        total = sum(t.numel() * t.element_size() for t in out.values())
        with open(os.path.join(out_dir, "model.safetensors.index.json"), "w") as f:
            json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
    if config:
        shutil.copyfile(config, os.path.join(out_dir, "config.json"))
    if verify:
        from safetensors import safe_open

        seen = set()
        for fname in files:
            with safe_open(os.path.join(out_dir, fname), framework="pt") as f:
                for n in f.keys():
                    if not torch.equal(f.get_tensor(n), out[n]):
                        raise SystemExit(f"verify: tensor {n!r} in {fname} differs")
                    seen.add(n)
        if seen != set(out):
            raise SystemExit(f"verify: {len(set(out) - seen)} tensors missing from the output")
        print(f"verified {len(seen)} tensors")
    print(f"wrote {len(out)} tensors to {out_dir} ({', '.join(files)})")
    return files


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("src", help="the reference pytorch_model.bin")
    p.add_argument("out_dir", help="output folder")
    p.add_argument("--config", help="an HF LLaMa config.json to copy next to the weights")
    p.add_argument("--dtype", default="keep", choices=["keep", *DTYPES], help="cast floating-point tensors")
    p.add_argument("--shard-size", type=parse_size, default=None, help="write shards of at most this size (e.g. 5GB)")
    p.add_argument("--only-language", action="store_true", help="keep only lang_decoder.* and lang_embed.*")
    p.add_argument("--verify", action="store_true", help="reopen the output and compare every tensor")
    a = p.parse_args(argv)
    convert(a.src, a.out_dir, dtype=a.dtype, shard_size=a.shard_size, only_language=a.only_language,
            config=a.config, verify=a.verify)
    return 0


if __name__ == "__main__":
    sys.exit(main())
