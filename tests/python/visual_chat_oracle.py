"""Oracle pieces for the assembled visual-chat model: random checkpoints with the reference names
(SPEC §9) written with the `safetensors` package, and the model recomputed from code nobody here
wrote and from SPEC: the QWen-VL ViT in plain PyTorch (qwen_vit_oracle), HF transformers 4.33.3's
CLIPVisionModel, the projectors in PyTorch (projector_oracle), the splice of SPEC §6 in numpy, and
HF's LlamaForCausalLM under each attention variant (llama_hf_oracle). Nothing is shared with mmca.
"""
from __future__ import annotations

import json
import os

import numpy as np
import torch

import llama_hf_oracle as lo
import projector_oracle as po
import qwen_vit_oracle as qo

S = 56             # image size: a 4×4 grid of 14-pixel patches
H = 32             # the language model's hidden size


def _save(tensors: dict, folder: str, llama):
    from safetensors.torch import save_file

    os.makedirs(folder, exist_ok=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, os.path.join(folder, "model.safetensors"))
    cfg = json.loads(llama.config.to_json_string())
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(cfg, f)
    return folder


def _language(seed: int, vocab: int):
    """HF LLaMa (the oracle) and its tensors under the reference names, with a trained embedding
    copy (lang_embed.weight) that differs from the frozen one."""
    llama = lo.make_hf_model(seed, vocab=vocab, hidden=H, inter=40, layers=2, heads=4, kv_heads=2, max_pos=512)
    t = {}
    for k, v in llama.state_dict().items():
        if k.endswith("rotary_emb.inv_freq"):
            continue
        t["lang_decoder." + k] = v.float()
    g = torch.Generator().manual_seed(seed + 100)
    t["lang_embed.weight"] = torch.randn(vocab, H, generator=g)
    return llama, t


def qwen_checkpoint(folder, seed=0, projector="baseline", vocab=90, image_token=88, dtype=torch.float32):
    """QWen ViT (width 64, 4 heads, 2 layers, pool 4 queries of width 48 with 2 heads) + projector + LLaMa."""
    llama, t = _language(seed, vocab)
    vit = qo.random_state(seed, width=64, heads=4, layers=2, mlp_width=96, pos_grid=3, output_dim=48, queries=4)
    t.update({"vis_encoder." + k: v.to(dtype) for k, v in vit.items()})
    module = po.make_module(projector, 48, H, queries=4, heads=2, vit_heads=4, mlp=56, act="gelu", seed=seed)
    t.update(po.state_dict_as(module, "projection.", "f32"))
    _save(t, str(folder), llama)
    return dict(kind="qwen", vit=vit, proj=projector, proj_sd=po.state_dict_as(module, "projection.", "f32"),
                lang_embed=t["lang_embed.weight"], llama=llama, image_token=image_token)


def clip_checkpoint(folder, seed=0, projector="perceiver", vocab=90, image_token=88):
    """HF CLIP vision tower (width 64, 4 heads, 3 layers, 56 px) + projector + LLaMa."""
    from transformers import CLIPVisionConfig, CLIPVisionModel

    llama, t = _language(seed, vocab)
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
    _save(t, str(folder), llama)
    return dict(kind="clip", clip=clip, proj=projector, proj_sd=po.state_dict_as(module, "projection.", "f32"),
                lang_embed=t["lang_embed.weight"], llama=llama, image_token=image_token)


def load_kwargs(info) -> dict:
    """mmca.VisualChatModel keyword arguments for the test checkpoints (head counts shapes cannot say)."""
    return dict(image_size=S, vision_heads=4, pool_heads=2, projector_heads=2, projector_layer_heads=4,
                projector_act="quick_gelu" if info["kind"] == "clip" else "gelu", image_token_id=info["image_token"])


def image_rows(info, images: np.ndarray) -> np.ndarray:
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


def splice(info, ids, rows, order="in_order", first_image=0):
    """embeddings (L', H), token types, image ids and, per row, the index of its token id (−1: image)."""
    emb, types, img_ids, src = [], [], [], []
    n = 0 if rows is None else rows.shape[0]
    seen = 0
    table = info["lang_embed"].double().numpy()
    for i, t in enumerate(ids):
        if t == info["image_token"]:
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


def logits(info, variant, emb, types, img_ids, policy="preceding"):
    return lo.Oracle(info["llama"], variant, policy).step(emb.astype(np.float32), types, img_ids)


def greedy(info, ids, rows, max_new_tokens, eos=(2,), variant="mmca"):
    """Greedy continuation of the spliced sequence, recomputed from scratch for every token."""
    out = []
    ids = list(ids)
    for _ in range(max_new_tokens):
        emb, types, img_ids, _ = splice(info, ids, rows)
        t = int(np.argmax(logits(info, variant, emb, types, img_ids)[-1]))
        out.append(t)
        ids.append(t)
        if t in eos:
            break
    return out


# --------------------------------------------------------------------------------------------
# Gradients of the trainable parts (token embedding, baseline projector) by torch autograd
# --------------------------------------------------------------------------------------------
def _grad_safe_attention(self, hidden_states, attention_mask=None, position_ids=None,
                         past_key_value=None, output_attentions=False, use_cache=False, **kwargs):
    """llama_hf_oracle's two-softmax attention with fully masked groups handled without NaN in
    backward (their probabilities are exactly 0 and carry no gradient), and the scores of
    finfo.min-masked entries taken as constants (as in test_attention_backward_torch.py)."""
    import math

    from transformers.models.llama import modeling_llama as ml

    bsz, q_len, _ = hidden_states.size()
    q = self.q_proj(hidden_states).view(bsz, q_len, self.num_heads, self.head_dim).transpose(1, 2)
    k = self.k_proj(hidden_states).view(bsz, q_len, self.num_key_value_heads, self.head_dim).transpose(1, 2)
    v = self.v_proj(hidden_states).view(bsz, q_len, self.num_key_value_heads, self.head_dim).transpose(1, 2)
    cos, sin = self.rotary_emb(v, seq_len=q_len)
    q, k = ml.apply_rotary_pos_emb(q, k, cos, sin, position_ids)
    k = ml.repeat_kv(k, self.num_key_value_groups)
    v = ml.repeat_kv(v, self.num_key_value_groups)
    scores = torch.matmul(q, k.transpose(2, 3)) / math.sqrt(self.head_dim)
    out = torch.zeros_like(q)
    fmin = torch.finfo(torch.float32).min
    for mask in lo.CTX.masks:
        empty = torch.isneginf(mask).all(dim=-1, keepdim=True)
        # A score under a finfo.min entry (mmca_reference's masks) is absorbed in float32
        # (score + finfo.min == finfo.min): a constant of the computed function, no gradient.
        live = torch.where(mask > fmin / 2, scores, scores.detach())
        s = torch.where(empty, torch.zeros_like(scores), live + mask)
        p = torch.where(empty, torch.zeros_like(scores), torch.softmax(s, dim=-1))
        out = out + torch.matmul(p, v)
    out = out.transpose(1, 2).reshape(bsz, q_len, self.hidden_size)
    return self.o_proj(out), None, None


def loss_and_grads(info, variant, samples, policy="preceding"):
    """samples: [(ids, images (n, 3, S, S) or None, labels)]. Mean shifted cross-entropy over the
    batch's supervised tokens and its gradients w.r.t. lang_embed and the baseline projector."""
    import torch.nn.functional as F
    from transformers.models.llama import modeling_llama as ml

    assert info["proj"] == "baseline"
    sd = {k[len("projection."):]: v.detach().clone().float().requires_grad_() for k, v in info["proj_sd"].items()}
    table = info["lang_embed"].detach().clone().float().requires_grad_()
    model = info["llama"]
    total, count = 0.0, 0
    for ids, images, labels in samples:
        if images is not None and len(images):
            with torch.no_grad():
                feats = qo.forward(info["vit"], torch.from_numpy(images), heads=4, pool_heads=2).float()
            rows = F.layer_norm(F.linear(feats, sd["0.weight"], sd["0.bias"]), (H,), sd["1.weight"], sd["1.bias"], 1e-12)
        else:
            rows = None
        parts, k = [], 0
        for t in ids:
            if t == info["image_token"]:
                parts.append(rows[k])
                k += 1
            else:
                parts.append(table[t][None])
        emb = torch.cat(parts)[None]
        _, types, img_ids, src = splice(info, ids, None if rows is None else rows.detach().numpy())
        lab = torch.tensor([labels[s] if s >= 0 else -100 for s in src])
        L = emb.shape[1]
        pos = torch.arange(L)[None]
        old_attn, old_layer = ml.LlamaAttention.forward, ml.LlamaDecoderLayer.forward
        try:
            if variant != "causal":
                lo.CTX.masks = [m[None, None] for m in lo.group_masks(variant, types, img_ids, 0, L, policy)]
                lo.CTX.image_rows = torch.from_numpy(types == 2)[None] if variant == "causal_cross" else None
                ml.LlamaAttention.forward = _grad_safe_attention
                if variant == "causal_cross":
                    ml.LlamaDecoderLayer.forward = lo._keep_image_rows_layer
                logits = model(inputs_embeds=emb, position_ids=pos).logits[0]
            else:
                logits = model(inputs_embeds=emb, attention_mask=torch.ones(1, L, dtype=torch.long),
                               position_ids=pos).logits[0]
        finally:
            ml.LlamaAttention.forward, ml.LlamaDecoderLayer.forward = old_attn, old_layer
            lo.CTX.masks, lo.CTX.image_rows = None, None
        total = total + F.cross_entropy(logits[:-1], lab[1:], ignore_index=-100, reduction="sum")
        count += int((lab[1:] != -100).sum())
    loss = total / count
    loss.backward()
    grads = {"lang_embed.weight": table.grad.numpy()}
    grads.update({"projection." + k: v.grad.numpy() for k, v in sd.items()})
    return float(loss), count, grads
