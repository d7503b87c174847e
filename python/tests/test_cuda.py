"""mmca.cuda: the CUDA attention and its backward from Python, on CUDA torch tensors.

Oracles: a float64 PyTorch implementation of SPEC §2's masks written here (causal and paper MMCA)
with autograd for the gradients, and, where the package's CPU module is importable, mmca.attention
/ mmca.attention_backward for every variant. Skipped without a CUDA build, PyTorch or a GPU.
"""
import importlib

import numpy as np
import pytest

torch = pytest.importorskip("torch")
try:
    cuda = importlib.import_module("mmca.cuda")
except ImportError:
    pytest.skip("mmca was built without CUDA", allow_module_level=True)

pytestmark = pytest.mark.skipif(not (torch.cuda.is_available() and cuda.available()), reason="no CUDA device")

TEXT, IMAGE = 1, 2


def chat_types(length, text=5, image=7):
    row = []
    while len(row) < length:
        row += [TEXT] * text + [IMAGE] * image
    return np.array([row[:length]], dtype=np.int8)


def spec_reference(q, k, v, types, variant):
    """float64 attention from explicit masks (SPEC §2): causal, or paper MMCA (text rows: softmax over
    earlier text plus softmax over earlier images; image rows: V at their own position)."""
    q, k, v = q.double(), k.double(), v.double()
    B, H, L, D = q.shape
    G = H // k.shape[1]
    k, v = k.repeat_interleave(G, dim=1), v.repeat_interleave(G, dim=1)
    t = torch.as_tensor(types, device=q.device).long()
    scores = q @ k.transpose(-1, -2) / D ** 0.5
    j = torch.arange(L, device=q.device)
    earlier = j[None, :] <= j[:, None]
    out = torch.zeros_like(q)
    for b in range(B):
        tq, tk = t[b][:, None], t[b][None, :]
        if variant == "causal":
            groups = [earlier & (tk != 0) & (tq != 0)]
        else:
            groups = [earlier & (tq == TEXT) & (tk == TEXT), earlier & (tq == TEXT) & (tk == IMAGE)]
        for mask in groups:
            s = scores[b].masked_fill(~mask, float("-inf"))
            p = torch.softmax(s, dim=-1).nan_to_num(0.0)  # rows with no member key: 0
            out[b] = out[b] + p @ v[b]
        if variant == "mmca":
            image = (t[b] == IMAGE)[None, :, None]
            out[b] = torch.where(image, v[b], out[b])
    return out


@pytest.mark.parametrize("variant", ["causal", "mmca"])
@pytest.mark.parametrize("dtype,tol,backward_kernel", [(torch.float32, 1e-5, "automatic"),
                                                       (torch.bfloat16, 3e-2, "automatic"),
                                                       (torch.bfloat16, 3e-2, "tensor_cores"),
                                                       (torch.float16, 1e-2, "tensor_cores")])
def test_forward_and_backward_match_spec_oracle(variant, dtype, tol, backward_kernel):
    torch.manual_seed(0)
    B, H, Hkv, L, D = 1, 4, 2, 77, 64
    dev = torch.device("cuda")
    q = torch.randn(B, H, L, D, device=dev).to(dtype).requires_grad_(True)
    k = torch.randn(B, Hkv, L, D, device=dev).to(dtype).requires_grad_(True)
    v = torch.randn(B, Hkv, L, D, device=dev).to(dtype).requires_grad_(True)
    types = chat_types(L)
    out = cuda.attention_torch(q, k, v, types, variant, backward_kernel=backward_kernel)
    g = torch.randn_like(out)
    grads = torch.autograd.grad(out, (q, k, v), g)

    q64, k64, v64 = (x.detach().double().requires_grad_(True) for x in (q, k, v))
    ref = spec_reference(q64, k64, v64, types, variant)
    ref_grads = torch.autograd.grad(ref, (q64, k64, v64), g.double())

    def close(a, b):
        scale = b.abs().max().item()
        return (a.double() - b).abs().max().item() <= tol * max(scale, 1e-30)

    assert close(out, ref)
    for name, a, b in zip(("dq", "dk", "dv"), grads, ref_grads):
        assert close(a, b), name


def test_low_level_entry_points_write_caller_tensors_and_stats():
    dev = torch.device("cuda")
    B, H, L, D = 1, 2, 40, 32
    q, k, v = (torch.randn(B, H, L, D, device=dev) for _ in range(3))
    types = chat_types(L)
    out = torch.full_like(q, float("nan"))
    row_max = torch.full((B, H, L, 2), float("nan"), device=dev)
    row_sum = torch.full_like(row_max, float("nan"))
    group_out = torch.full((B, H, L, 2, D), float("nan"), device=dev)
    cuda.attention(q, k, v, out, types, "mmca", row_max=row_max, row_sum=row_sum, group_out=group_out)
    cuda.synchronize()
    assert torch.isfinite(out).all()
    assert torch.allclose(out.double(), spec_reference(q, k, v, types, "mmca"), atol=1e-5)
    # Image rows have no softmax: both groups empty.
    image = torch.as_tensor(types[0] == IMAGE, device=dev)
    assert torch.isinf(row_max[0, :, image]).all() and (row_sum[0, :, image] == 0).all()
    dq, dk, dv = (torch.full_like(x, float("nan")) for x in (q, k, v))
    g = torch.randn_like(out)
    cuda.attention_backward(q, k, v, g, row_max, row_sum, group_out, dq, dk, dv, types, "mmca")
    cuda.synchronize()
    assert all(torch.isfinite(x).all() for x in (dq, dk, dv))


def test_every_variant_against_the_cpu_module():
    mmca = pytest.importorskip("mmca")
    if not hasattr(mmca, "attention_backward"):
        pytest.skip("the CPU module is not built")
    rng = np.random.default_rng(3)
    B, H, L, D = 1, 2, 50, 32
    q, k, v, g = (rng.standard_normal((B, H, L, D)).astype(np.float32) for _ in range(4))
    types = chat_types(L, text=6, image=9)
    dev = torch.device("cuda")
    for variant in ["causal", "mmca", "mmca_reference", "causal_cross"]:
        tq, tk, tv = (torch.tensor(x, device=dev, requires_grad=True) for x in (q, k, v))
        out = cuda.attention_torch(tq, tk, tv, types, variant)
        grads = torch.autograd.grad(out, (tq, tk, tv), torch.tensor(g, device=dev))
        ref = mmca.attention(q, k, v, types, variant, impl="reference")
        np.testing.assert_allclose(out.detach().cpu().numpy(), ref, atol=1e-5 * np.abs(ref).max())
        ref_grads = mmca.attention_backward(q, k, v, g, types, variant, impl="reference")
        for a, b in zip(grads, ref_grads):
            b = np.asarray(b)
            np.testing.assert_allclose(a.cpu().numpy(), b, atol=1e-5 * max(np.abs(b).max(), 1e-30))


def test_errors_name_the_argument():
    dev = torch.device("cuda")
    q = torch.randn(1, 2, 8, 16, device=dev)
    k = torch.randn(1, 2, 8, 16, device=dev, dtype=torch.float16)
    out = torch.empty_like(q)
    types = chat_types(8)
    with pytest.raises(ValueError, match="'k'"):
        cuda.attention(q, k, k, out, types, "mmca")
    with pytest.raises(ValueError, match="'q'.*CUDA device"):
        cuda.attention(q.cpu(), q, q, out, types, "mmca")
    with pytest.raises(TypeError, match="'v'"):
        cuda.attention(q, q, np.zeros((1, 2, 8, 16), np.float32), out, types, "mmca")
    row_max = torch.zeros(1, 2, 8, 2, device=dev)
    group_out = torch.zeros(1, 2, 8, 2, 16, device=dev)
    with pytest.raises(ValueError, match="'config.kernel'.*float32"):  # tensor cores take 16-bit inputs
        cuda.attention_backward(q, q, q, q, row_max, row_max, group_out, q, q, q, types, "mmca",
                                kernel="tensor_cores")


def _write_llama(d, rng, H=128, I=160, V=50, layers=2, heads=2, kv_heads=1):
    """A random LLaMa checkpoint (head dim 64) written with the official safetensors package."""
    st = pytest.importorskip("safetensors.numpy")
    import json

    D = H // heads
    t = {"model.embed_tokens.weight": rng.standard_normal((V, H)), "model.norm.weight": 1 + 0.1 * rng.standard_normal(H),
         "lm_head.weight": 0.1 * rng.standard_normal((V, H))}
    for l in range(layers):
        p = f"model.layers.{l}."
        t.update({p + "input_layernorm.weight": 1 + 0.1 * rng.standard_normal(H),
                  p + "post_attention_layernorm.weight": 1 + 0.1 * rng.standard_normal(H),
                  p + "self_attn.q_proj.weight": 0.15 * rng.standard_normal((heads * D, H)),
                  p + "self_attn.k_proj.weight": 0.15 * rng.standard_normal((kv_heads * D, H)),
                  p + "self_attn.v_proj.weight": 0.1 * rng.standard_normal((kv_heads * D, H)),
                  p + "self_attn.o_proj.weight": 0.1 * rng.standard_normal((H, heads * D)),
                  p + "mlp.gate_proj.weight": 0.1 * rng.standard_normal((I, H)),
                  p + "mlp.up_proj.weight": 0.1 * rng.standard_normal((I, H)),
                  p + "mlp.down_proj.weight": 0.1 * rng.standard_normal((H, I))})
    st.save_file({k: v.astype(np.float32) for k, v in t.items()}, str(d / "model.safetensors"))
    cfg = dict(vocab_size=V, hidden_size=H, intermediate_size=I, num_hidden_layers=layers, num_attention_heads=heads,
               num_key_value_heads=kv_heads, max_position_embeddings=96, rms_norm_eps=1e-5, hidden_act="silu",
               bos_token_id=1, eos_token_id=2)
    (d / "config.json").write_text(json.dumps(cfg))
    return cfg


def test_llama_model_matches_the_cpu_model(tmp_path):
    """mmca.cuda.LlamaModel (float32) against mmca.LlamaModel, the same layer code on the CPU: a
    prompt with images over a batch of two, then decode steps on top of the device caches."""
    mmca = pytest.importorskip("mmca")
    if not hasattr(mmca, "LlamaModel"):
        pytest.skip("the CPU module is not built")
    rng = np.random.default_rng(11)
    cfg = _write_llama(tmp_path, rng)
    H = cfg["hidden_size"]
    types = np.ones((2, 40), np.int8)
    types[0, 4:20] = IMAGE
    types[1, 0:16] = IMAGE
    lens = np.array([40, 29], np.int32)
    e = rng.standard_normal((2, 40, H)).astype(np.float32)
    for variant in ["causal", "mmca", "mmca_reference", "causal_cross"]:
        cpu = mmca.LlamaModel(str(tmp_path), variant=variant, batch=2)
        gpu = cuda.LlamaModel(str(tmp_path), dtype="float32", variant=variant, batch=2)
        assert gpu.dtype == "float32" and gpu.batch == 2 and gpu.context == 96
        want = cpu.forward(e, types, lens=lens)
        got = gpu.forward(e, types, lens=lens)
        for b in range(2):
            n = lens[b]
            np.testing.assert_allclose(got[b, :n], want[b, :n], atol=1e-4 * np.abs(want[b, :n]).max())
        for _ in range(3):
            ids = rng.integers(3, cfg["vocab_size"], (2, 1)).astype(np.int32)
            want = cpu.forward_tokens(ids, logits="last")
            got = gpu.forward_tokens(ids, logits="last")
            np.testing.assert_allclose(got, want, atol=1e-4 * np.abs(want).max())
        assert gpu.length(0) == 43 and gpu.length(1) == 32


def test_llama_model_chat_and_16_bit(tmp_path):
    """Greedy chat rounds give the CPU model's tokens (float32); bfloat16 and float16 logits stay
    within their storage precision of the float32 ones."""
    mmca = pytest.importorskip("mmca")
    if not hasattr(mmca, "LlamaModel"):
        pytest.skip("the CPU module is not built")
    _write_llama(tmp_path, np.random.default_rng(12))
    cpu = mmca.LlamaModel(str(tmp_path), variant="causal")
    gpu = cuda.LlamaModel(str(tmp_path), variant="causal")
    for prompt in ([1, 5, 7, 9], [1, 11, 4]):
        assert gpu.chat(prompt, max_new_tokens=6, eos_ids=[-1]) == cpu.chat(prompt, max_new_tokens=6, eos_ids=[-1])
    ids = np.array([[1, 5, 7, 9, 13, 21, 8, 3]], np.int32)
    ref = cuda.LlamaModel(str(tmp_path)).forward_tokens(ids)
    for dtype, tol in (("float16", 1e-2), ("bfloat16", 6e-2)):
        got = cuda.LlamaModel(str(tmp_path), dtype=dtype).forward_tokens(ids)
        np.testing.assert_allclose(got, ref, atol=tol * np.abs(ref).max())
    with pytest.raises(ValueError, match="'dtype'"):
        cuda.LlamaModel(str(tmp_path), dtype="float64")


def test_visual_chat_model_matches_the_cpu_model(tmp_path):
    """mmca.cuda.VisualChatModel (QWen-VL encoder and decoder on the GPU) against mmca.VisualChatModel
    on one checkpoint (tests/test_trainer.py's: a small QWen ViT, a projector, a LLaMa with cross
    blocks): a batch forward with labels, greedy chat rounds with images, one more append; then the
    16-bit forward within its storage precision."""
    mmca = pytest.importorskip("mmca")
    if not hasattr(mmca, "VisualChatModel"):
        pytest.skip("the CPU module is not built")
    from test_trainer import IMG, S, checkpoint
    path = checkpoint(tmp_path / "vc", seed=4)
    kw = dict(image_size=S, vision_heads=4, pool_heads=2, image_token_id=IMG, num_threads=1)
    rng = np.random.default_rng(5)
    images = [rng.standard_normal((2, 3, S, S)).astype(np.float32), rng.standard_normal((1, 3, S, S)).astype(np.float32)]
    ids = [[1, 5, IMG, 9, 12, IMG, 4, 2], [1, IMG, 7, 8]]
    labels = [[-100, -100, -100, -100, 12, -100, 4, 2], [-100, -100, 7, 8]]
    cpu = mmca.VisualChatModel(path, batch=2, **kw)
    gpu = cuda.VisualChatModel(path, batch=2, dtype="float32", **kw)
    assert gpu.encoder_on_device and gpu.dtype == "float32"
    want, got = cpu.forward(ids, images, labels), gpu.forward(ids, images, labels)
    np.testing.assert_allclose(got["logits"], want["logits"], atol=1e-4 * np.abs(want["logits"]).max())
    assert got["count"] == want["count"] and abs(got["loss"] - want["loss"]) < 1e-4 * max(1.0, abs(want["loss"]))
    np.testing.assert_allclose(gpu.embed_images(images[0]), cpu.embed_images(images[0]), rtol=0, atol=1e-4 * np.abs(
        cpu.embed_images(images[0])).max())

    cpu1, gpu1 = mmca.VisualChatModel(path, **kw), cuda.VisualChatModel(path, **kw)
    for prompt, imgs in (([1, 7, IMG, 9], images[1]), ([1, 4, IMG, IMG, 5, 6], images[0])):
        assert gpu1.chat(prompt, imgs, max_new_tokens=4, eos_ids=[-1]) == cpu1.chat(prompt, imgs, max_new_tokens=4,
                                                                                    eos_ids=[-1])
    a, b = cpu1.append([3, 4]), gpu1.append([3, 4])
    np.testing.assert_allclose(b, a, atol=1e-4 * np.abs(a).max())
    assert gpu1.length == cpu1.length and gpu1.images_in_context == 3

    for dtype, tol in (("float16", 1e-2), ("bfloat16", 6e-2)):
        low = cuda.VisualChatModel(path, batch=2, dtype=dtype, **kw).forward(ids, images, labels)
        np.testing.assert_allclose(low["logits"], want["logits"], atol=tol * np.abs(want["logits"]).max())
    with pytest.raises(ValueError, match="'dtype'"):
        cuda.VisualChatModel(path, dtype="float64", **kw)


def test_visual_chat_model_runs_a_clip_encoder_on_the_device(tmp_path):
    """A visual-chat checkpoint with an HF CLIP vision tower (test_trainer's, encoder="clip"): the GPU
    model runs the CLIP encoder on the device, for both of its outputs, and its image rows and batch
    forward match mmca.VisualChatModel's (float32 1e-4; bfloat16 within its storage precision)."""
    mmca = pytest.importorskip("mmca")
    if not hasattr(mmca, "VisualChatModel"):
        pytest.skip("the CPU module is not built")
    from test_trainer import IMG, S, checkpoint
    path = checkpoint(tmp_path / "clip", seed=6, encoder="clip")
    rng = np.random.default_rng(7)
    images = [rng.standard_normal((2, 3, S, S)).astype(np.float32), rng.standard_normal((1, 3, S, S)).astype(np.float32)]
    ids = [[1, 5, IMG, 9, 12, IMG, 4, 2], [1, IMG, 7, 8]]
    for layer in ("last_hidden_state", "penultimate"):
        kw = dict(image_size=S, vision_heads=4, image_token_id=IMG, num_threads=1, clip_layer=layer)
        cpu = mmca.VisualChatModel(path, batch=2, **kw)
        gpu = cuda.VisualChatModel(path, batch=2, dtype="float32", **kw)
        assert cpu.encoder == "clip_vit" and gpu.encoder_on_device
        want_rows = cpu.embed_images(images[0])
        np.testing.assert_allclose(gpu.embed_images(images[0]), want_rows, rtol=0, atol=1e-4 * np.abs(want_rows).max())
        want, got = cpu.forward(ids, images), gpu.forward(ids, images)
        np.testing.assert_allclose(got["logits"], want["logits"], atol=1e-4 * np.abs(want["logits"]).max())
        low = cuda.VisualChatModel(path, batch=2, dtype="bfloat16", **kw).forward(ids, images)
        np.testing.assert_allclose(low["logits"], want["logits"], atol=6e-2 * np.abs(want["logits"]).max())


def test_vision_encoders_match_the_cpu_encoders(tmp_path):
    """mmca.cuda.QwenViT / ClipViT against mmca.QwenViT / ClipViT on the same checkpoints: 9 images
    (more than one device batch of 8), float32 within 1e-4 of the largest value, float16 and
    bfloat16 within their storage precision; out= is written in place; bad images name the argument."""
    mmca = pytest.importorskip("mmca")
    if not hasattr(mmca, "QwenViT"):
        pytest.skip("the CPU module is not built")
    from test_vision_bindings import S, clip_tensors, qwen_tensors, write_safetensors
    rng = np.random.default_rng(11)
    qpath = write_safetensors(tmp_path / "q.safetensors", qwen_tensors(rng, layers=2))
    cpath = write_safetensors(tmp_path / "c.safetensors", clip_tensors(rng, width=128, inter=64, layers=2, size=42))
    images = rng.uniform(-1, 1, (9, 3, S, S)).astype(np.float32)
    clip_images = rng.uniform(-1, 1, (9, 3, 42, 42)).astype(np.float32)
    kw = dict(image_size=S, heads=2, pool_heads=2)
    want = mmca.QwenViT(qpath, num_threads=1, **kw).encode(images)
    cpu_clip = mmca.ClipViT(cpath, num_threads=1)
    for dtype, tol in (("float32", 1e-4), ("float16", 1e-2), ("bfloat16", 6e-2)):
        q = cuda.QwenViT(qpath, dtype=dtype, **kw)
        assert q.dtype == dtype and q.output_shape == want.shape[1:] and q.config["layers"] == 2
        np.testing.assert_allclose(q.encode(images), want, rtol=0, atol=tol * np.abs(want).max())
        c = cuda.ClipViT(cpath, dtype=dtype)
        assert c.config == cpu_clip.config
        for output in ("last_hidden_state", "penultimate"):
            ref = cpu_clip.encode(clip_images, output)
            np.testing.assert_allclose(c.encode(clip_images, output), ref, rtol=0, atol=tol * np.abs(ref).max())
    q = cuda.QwenViT(qpath, **kw)
    out = np.full(want.shape, np.nan, np.float32)
    assert q.encode(images, out=out) is out
    np.testing.assert_allclose(out, want, rtol=0, atol=1e-4 * np.abs(want).max())
    with pytest.raises(ValueError, match=r"images.*\(N, 3, 28, 28\)"):
        q.encode(np.zeros((1, 3, 42, 42), np.float32))
    with pytest.raises(TypeError, match="images"):
        q.encode(images.astype(np.float64))
    with pytest.raises(ValueError, match="output.*pooled"):
        cuda.ClipViT(cpath).encode(clip_images, "pooled")
