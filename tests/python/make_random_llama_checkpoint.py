#!/usr/bin/env python3
"""Writes a random LLaMa-2-shaped safetensors checkpoint of any size without holding it in memory.

    /usr/bin/python3 tests/python/make_random_llama_checkpoint.py OUT_DIR [--preset llama2-7b]
        [--dtype BF16|F16|F32] [--layers N]

The file is streamed tensor by tensor (the header is computed first), so a 13.5 GB LLaMa-2-7B bf16
checkpoint needs about 100 MB of memory to write. Values are a random block of 2^22 elements
repeated with a shifting offset (N(0, 0.02) for matrices, 1 for norms): good enough for memory and
speed measurements, not for accuracy. Used for the 7B-shaped run reported in docs/llama.md.
"""
from __future__ import annotations

import argparse
import json
import os
import struct

import numpy as np

PRESETS = {
    "llama2-7b": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                      num_key_value_heads=32),
    "llama2-13b": dict(hidden_size=5120, intermediate_size=13824, num_hidden_layers=40, num_attention_heads=40,
                       num_key_value_heads=40),
    "llama2-70b": dict(hidden_size=8192, intermediate_size=28672, num_hidden_layers=80, num_attention_heads=64,
                       num_key_value_heads=8),
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out_dir")
    p.add_argument("--preset", default="llama2-7b", choices=sorted(PRESETS))
    p.add_argument("--dtype", default="BF16", choices=["BF16", "F16", "F32"])
    p.add_argument("--layers", type=int, default=None, help="override the number of layers")
    a = p.parse_args()
    cfg = dict(PRESETS[a.preset], vocab_size=32000, max_position_embeddings=4096, rms_norm_eps=1e-5,
               rope_theta=10000.0, hidden_act="silu", bos_token_id=1, eos_token_id=2, model_type="llama",
               tie_word_embeddings=False)
    if a.layers:
        cfg["num_hidden_layers"] = a.layers
    H, I, V = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    D = H // cfg["num_attention_heads"]
    kv = cfg["num_key_value_heads"] * D
    shapes = {"model.embed_tokens.weight": (V, H), "model.norm.weight": (H,), "lm_head.weight": (V, H)}
    for l in range(cfg["num_hidden_layers"]):
        q = f"model.layers.{l}."
        shapes.update({q + "input_layernorm.weight": (H,), q + "post_attention_layernorm.weight": (H,),
                       q + "self_attn.q_proj.weight": (H, H), q + "self_attn.k_proj.weight": (kv, H),
                       q + "self_attn.v_proj.weight": (kv, H), q + "self_attn.o_proj.weight": (H, H),
                       q + "mlp.gate_proj.weight": (I, H), q + "mlp.up_proj.weight": (I, H),
                       q + "mlp.down_proj.weight": (H, I)})
    size = {"BF16": 2, "F16": 2, "F32": 4}[a.dtype]
    header, off = {}, 0
    for name, shape in shapes.items():
        n = int(np.prod(shape)) * size
        header[name] = {"dtype": a.dtype, "shape": list(shape), "data_offsets": [off, off + n]}
        off += n
    text = json.dumps(header).encode()
    text += b" " * ((8 - (8 + len(text)) % 8) % 8)
    rng = np.random.default_rng(0)
    block = (0.02 * rng.standard_normal(1 << 22)).astype(np.float32)
    if a.dtype == "BF16":
        raw = (block.view(np.uint32) >> 16).astype(np.uint16)
    elif a.dtype == "F16":
        raw = block.astype(np.float16)
    else:
        raw = block
    ones = {"BF16": np.full(1, 0x3F80, np.uint16), "F16": np.ones(1, np.float16), "F32": np.ones(1, np.float32)}[a.dtype]
    os.makedirs(a.out_dir, exist_ok=True)
    with open(os.path.join(a.out_dir, "model.safetensors"), "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text)
        shift = 0
        for name, shape in shapes.items():
            n = int(np.prod(shape))
            if name.endswith("norm.weight"):
                f.write(np.repeat(ones, n).tobytes())
                continue
            written = 0
            while written < n:
                k = min(n - written, raw.size - shift)
                f.write(raw[shift:shift + k].tobytes())
                written += k
                shift = (shift + k + 7919) % (raw.size // 2)
    with open(os.path.join(a.out_dir, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
    print(f"wrote {off / 2**30:.2f} GiB to {a.out_dir}")


if __name__ == "__main__":
    main()
