"""Oracle for mmca's LLaMa decoder: HF transformers 4.33.3 LlamaForCausalLM.

* ``causal``: HF's own LlamaForCausalLM, untouched (its own mask, cache and RoPE).
* the other attention variants: the same HF model (embeddings, decoder layers, RoPE, norms,
  lm_head, cache handling) with only the mask-and-softmax step of ``LlamaAttention`` replaced by the
  two-softmax form of SPEC §2: two 4-D additive masks per call, one softmax per mask, outputs
  summed. ``mmca_reference`` builds its masks the way the reference code does (finfo.min masks
  added to HF's causal and padding masks, so degenerate rows become uniform averages by float
  overflow); ``mmca`` and ``causal_cross`` use exact sets (-inf, an empty group contributes 0).
  For ``causal_cross`` image rows keep their input hidden state through each decoder layer.

Everything here is written from SPEC.md and HF's public classes; nothing is shared with mmca.
"""
from __future__ import annotations

import contextlib
import json
import math
import os

import numpy as np
import torch
import transformers
from transformers.models.llama import modeling_llama as ml

NEG_INF = float("-inf")


# --------------------------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------------------------
def make_hf_model(seed: int, *, vocab=97, hidden=32, inter=45, layers=2, heads=4, kv_heads=2,
                  max_pos=128, rope_scaling=None, rope_theta=10000.0, std=0.08, tie=False):
    torch.manual_seed(seed)
    cfg = transformers.LlamaConfig(
        vocab_size=vocab, hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=kv_heads, max_position_embeddings=max_pos,
        rms_norm_eps=1e-5, rope_theta=rope_theta, rope_scaling=rope_scaling, initializer_range=std,
        tie_word_embeddings=tie, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    model = transformers.LlamaForCausalLM(cfg).float().eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
            elif "embed_tokens" in name:
                p.copy_(torch.randn_like(p))
            else:
                p.copy_(std * torch.randn_like(p))
    return model


def save_checkpoint(model, folder: str, dtype=torch.float32, shards: int = 1):
    """Writes model.safetensors (or shards + index) with the official safetensors package, and
    config.json. Returns the folder."""
    from safetensors.torch import save_file

    os.makedirs(folder, exist_ok=True)
    state = {k: v.detach().to(dtype).contiguous() for k, v in model.state_dict().items()
             if not k.endswith("rotary_emb.inv_freq")}
    if model.config.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    if shards == 1:
        save_file(state, os.path.join(folder, "model.safetensors"), metadata={"format": "pt"})
    else:
        names = sorted(state)
        weight_map = {}
        for s in range(shards):
            part = names[s::shards]
            fname = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
            save_file({n: state[n] for n in part}, os.path.join(folder, fname), metadata={"format": "pt"})
            weight_map.update({n: fname for n in part})
        with open(os.path.join(folder, "model.safetensors.index.json"), "w") as f:
            json.dump({"metadata": {"total_size": 0}, "weight_map": weight_map}, f)
    model.config.to_json_file(os.path.join(folder, "config.json"))
    return folder


# --------------------------------------------------------------------------------------------
# Masks (SPEC §2), per call: queries are absolute positions past .. past+q-1 over keys 0 .. kv-1
# --------------------------------------------------------------------------------------------
def group_masks(variant: str, types: np.ndarray, image_ids: np.ndarray, past: int, q: int,
                policy: str = "preceding"):
    """Two additive masks (q, kv) for one sequence of token types (kv,), as float32 tensors."""
    kv = past + q
    t = types[:kv]
    fmin = torch.finfo(torch.float32).min
    m = [torch.full((q, kv), NEG_INF), torch.full((q, kv), NEG_INF)]
    if variant == "mmca_reference":
        causal = torch.zeros(q, kv)
        if q > 1:  # HF 4.33 adds its causal mask only when more than one query is processed
            for i in range(q):
                causal[i, past + i + 1:] = fmin
        padm = torch.zeros(q, kv)
        padm[:, t == 0] = fmin
        base = causal + padm  # min + min overflows to -inf
        for i in range(q):
            j = past + i
            text_mask = torch.where(torch.tensor(t == 1), 0.0, fmin)
            if t[j] == 2:
                img_mask = torch.full((kv,), fmin)
                img_mask[j] = 0.0
            else:
                img_mask = torch.where(torch.tensor(t == 2), 0.0, fmin)
            m[0][i] = (base[i] + text_mask).float()
            m[1][i] = (base[i] + img_mask).float()
        return m
    for i in range(q):
        j = past + i
        if t[j] == 0:
            continue
        for k in range(kv):
            if variant == "causal":
                if k <= j and t[k] != 0:
                    m[0][i, k] = 0.0
            elif variant == "mmca":
                if t[j] == 1:
                    if k <= j and t[k] == 1:
                        m[0][i, k] = 0.0
                    if k < j and t[k] == 2:
                        m[1][i, k] = 0.0
                elif k == j:
                    m[0][i, k] = 0.0
            elif variant == "causal_cross":
                if t[j] != 1:
                    continue
                if k <= j and t[k] == 1:
                    m[0][i, k] = 0.0
                if t[k] == 2:
                    earlier = [kk for kk in range(j) if t[kk] == 2]
                    if policy == "all":
                        ok = True
                    elif policy == "preceding":
                        ok = k < j
                    else:  # latest
                        ok = k < j and bool(earlier) and image_ids[k] == image_ids[earlier[-1]]
                    if ok:
                        m[1][i, k] = 0.0
            else:
                raise ValueError(variant)
    return m


class _Context:
    masks = None        # list of two (B, 1, q, kv) tensors for the current call
    image_rows = None   # (B, q) bool: rows that keep their input (causal_cross)


CTX = _Context()


def _two_softmax_attention(self, hidden_states, attention_mask=None, position_ids=None,
                           past_key_value=None, output_attentions=False, use_cache=False, **kwargs):
    bsz, q_len, _ = hidden_states.size()
    q = self.q_proj(hidden_states).view(bsz, q_len, self.num_heads, self.head_dim).transpose(1, 2)
    k = self.k_proj(hidden_states).view(bsz, q_len, self.num_key_value_heads, self.head_dim).transpose(1, 2)
    v = self.v_proj(hidden_states).view(bsz, q_len, self.num_key_value_heads, self.head_dim).transpose(1, 2)
    kv_seq_len = k.shape[-2] + (past_key_value[0].shape[-2] if past_key_value is not None else 0)
    cos, sin = self.rotary_emb(v, seq_len=kv_seq_len)
    q, k = ml.apply_rotary_pos_emb(q, k, cos, sin, position_ids)
    if past_key_value is not None:
        k = torch.cat([past_key_value[0], k], dim=2)
        v = torch.cat([past_key_value[1], v], dim=2)
    present = (k, v) if use_cache else None
    k = ml.repeat_kv(k, self.num_key_value_groups)
    v = ml.repeat_kv(v, self.num_key_value_groups)
    scores = torch.matmul(q, k.transpose(2, 3)) / math.sqrt(self.head_dim)
    out = torch.zeros_like(q)
    for mask in CTX.masks:
        p = torch.softmax((scores + mask).float(), dim=-1)
        p = torch.nan_to_num(p, nan=0.0)  # an empty group (all -inf) contributes 0
        out = out + torch.matmul(p.to(q.dtype), v)
    out = out.transpose(1, 2).reshape(bsz, q_len, self.hidden_size)
    return self.o_proj(out), None, present


_orig_layer_forward = ml.LlamaDecoderLayer.forward


def _keep_image_rows_layer(self, hidden_states, *args, **kwargs):
    outputs = _orig_layer_forward(self, hidden_states, *args, **kwargs)
    if CTX.image_rows is not None and CTX.image_rows.any():
        h = outputs[0].clone()
        h[CTX.image_rows] = hidden_states[CTX.image_rows]
        outputs = (h,) + tuple(outputs[1:])
    return outputs


@contextlib.contextmanager
def patched(variant: str):
    """Replaces the attention's mask/softmax step (and, for causal_cross, the image rows' update)."""
    if variant == "causal":
        yield
        return
    old_attn = ml.LlamaAttention.forward
    old_layer = ml.LlamaDecoderLayer.forward
    ml.LlamaAttention.forward = _two_softmax_attention
    if variant == "causal_cross":
        ml.LlamaDecoderLayer.forward = _keep_image_rows_layer
    try:
        yield
    finally:
        ml.LlamaAttention.forward = old_attn
        ml.LlamaDecoderLayer.forward = old_layer
        CTX.masks = None
        CTX.image_rows = None


class Oracle:
    """Runs chunks of one sequence (batch 1) through HF with a cache, returning logits per chunk."""

    def __init__(self, model, variant: str, policy: str = "preceding"):
        self.model, self.variant, self.policy = model, variant, policy
        self.past = None
        self.length = 0

    def step(self, embeds: np.ndarray, types_all: np.ndarray, image_ids_all: np.ndarray) -> np.ndarray:
        """embeds (q, H) of the new tokens; types/image ids of the whole sequence so far (kv,)."""
        q = embeds.shape[0]
        pos = torch.arange(self.length, self.length + q)[None]
        x = torch.from_numpy(np.ascontiguousarray(embeds, dtype=np.float32))[None]
        with torch.no_grad(), patched(self.variant):
            if self.variant != "causal":
                masks = group_masks(self.variant, types_all, image_ids_all, self.length, q, self.policy)
                CTX.masks = [mm[None, None] for mm in masks]
                CTX.image_rows = (torch.from_numpy(types_all[self.length:self.length + q] == 2)[None]
                                  if self.variant == "causal_cross" else None)
                out = self.model(inputs_embeds=x, position_ids=pos, past_key_values=self.past, use_cache=True)
            else:
                attn = torch.ones(1, self.length + q, dtype=torch.long)
                out = self.model(inputs_embeds=x, attention_mask=attn, position_ids=pos,
                                 past_key_values=self.past, use_cache=True)
        self.past = out.past_key_values
        self.length += q
        return out.logits[0].float().numpy()


def rel_err(a: np.ndarray, b: np.ndarray) -> float:
    """max |a - b| / max |b| (a norm-wise relative error: logits near 0 do not blow it up)."""
    return float(np.max(np.abs(a.astype(np.float64) - b)) / max(np.max(np.abs(b)), 1e-30))


# --------------------------------------------------------------------------------------------
# The fixed tiny checkpoint of the greedy regression test (also built by tests/cpp/test_llama_model.cpp)
# --------------------------------------------------------------------------------------------
FIXED_CONFIG = dict(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)


def fixed_values(tensor_index: int, n: int) -> np.ndarray:
    """Uniform values in [-1, 1) from an integer hash of (tensor index, element index)."""
    i = np.arange(n, dtype=np.uint64)
    m32 = np.uint64(0xFFFFFFFF)
    h = (i * np.uint64(2654435761) + np.uint64(tensor_index) * np.uint64(40503) + np.uint64(12345)) & m32
    h ^= h >> np.uint64(15)
    h = (h * np.uint64(2246822519)) & m32
    h ^= h >> np.uint64(13)
    return (h.astype(np.float64) / 2.0**32 * 2.0 - 1.0).astype(np.float32)


def fixed_state_dict(cfg: dict) -> dict:
    H, I, V = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    Hq, Hkv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    D = H // Hq
    shapes = {"model.embed_tokens.weight": (V, H), "model.norm.weight": (H,), "lm_head.weight": (V, H)}
    for l in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{l}."
        shapes.update({p + "input_layernorm.weight": (H,), p + "post_attention_layernorm.weight": (H,),
                       p + "self_attn.q_proj.weight": (Hq * D, H), p + "self_attn.k_proj.weight": (Hkv * D, H),
                       p + "self_attn.v_proj.weight": (Hkv * D, H), p + "self_attn.o_proj.weight": (H, Hq * D),
                       p + "mlp.gate_proj.weight": (I, H), p + "mlp.up_proj.weight": (I, H),
                       p + "mlp.down_proj.weight": (H, I)})
    out = {}
    for idx, name in enumerate(sorted(shapes)):
        shape = shapes[name]
        u = fixed_values(idx, int(np.prod(shape))).reshape(shape)
        if name.endswith("norm.weight"):
            u = 1.0 + 0.25 * u
        elif "embed_tokens" in name:
            u = 1.0 * u
        else:
            u = 0.3 * u
        out[name] = u.astype(np.float32)
    return out
