"""mmca.cuda on a machine without a usable GPU: the arguments of the CUDA decoder, the CUDA
visual-chat model and the CUDA vision encoders are still checked, and constructing any of them
raises mmca.cuda.CudaError naming the missing device instead of failing inside cuBLAS. Skipped
where mmca was built without CUDA, or where a GPU is present (test_cuda.py runs there)."""
import importlib
import json

import numpy as np
import pytest

from test_llama_bindings import write_safetensors

try:
    cuda = importlib.import_module("mmca.cuda")
except ImportError:
    pytest.skip("mmca was built without CUDA", allow_module_level=True)

pytestmark = pytest.mark.skipif(cuda.available(), reason="a CUDA device is present")


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    d = tmp_path_factory.mktemp("llama_nodevice")
    rng = np.random.default_rng(0)
    H, I, V = 16, 24, 20
    t = {"model.embed_tokens.weight": rng.standard_normal((V, H)), "model.norm.weight": np.ones(H),
         "lm_head.weight": rng.standard_normal((V, H))}
    p = "model.layers.0."
    for name, shape in [("input_layernorm.weight", (H,)), ("post_attention_layernorm.weight", (H,)),
                        ("self_attn.q_proj.weight", (H, H)), ("self_attn.k_proj.weight", (H, H)),
                        ("self_attn.v_proj.weight", (H, H)), ("self_attn.o_proj.weight", (H, H)),
                        ("mlp.gate_proj.weight", (I, H)), ("mlp.up_proj.weight", (I, H)),
                        ("mlp.down_proj.weight", (H, I))]:
        t[p + name] = rng.standard_normal(shape)
    write_safetensors(d / "model.safetensors", {k: v.astype(np.float32) for k, v in t.items()})
    (d / "config.json").write_text(json.dumps(dict(
        vocab_size=V, hidden_size=H, intermediate_size=I, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=2, max_position_embeddings=16, rms_norm_eps=1e-5, hidden_act="silu")))
    return d


def test_llama_model_without_a_device_is_a_cuda_error(ckpt):
    with pytest.raises(cuda.CudaError, match="no (usable )?CUDA device"):
        cuda.LlamaModel(str(ckpt), dtype="bfloat16")  # the device is checked before cuBLAS starts


def test_llama_model_arguments_are_checked_first(ckpt, tmp_path):
    with pytest.raises(ValueError, match="'dtype'.*'float64'"):
        cuda.LlamaModel(str(ckpt), dtype="float64")
    with pytest.raises(ValueError, match="'variant'"):
        cuda.LlamaModel(str(ckpt), variant="sideways")
    with pytest.raises(ValueError, match="'path'.*missing"):
        cuda.LlamaModel(str(tmp_path / "missing"))


def test_visual_chat_model_without_a_device_is_a_cuda_error(tmp_path):
    from test_trainer import IMG, S, checkpoint
    path = checkpoint(tmp_path / "vc")
    kw = dict(image_size=S, vision_heads=4, pool_heads=2, image_token_id=IMG)
    with pytest.raises(ValueError, match="'dtype'.*'float64'"):
        cuda.VisualChatModel(path, dtype="float64", **kw)
    with pytest.raises(ValueError, match="'image_order'"):
        cuda.VisualChatModel(path, image_order="sideways", **kw)
    with pytest.raises(cuda.CudaError, match="no (usable )?CUDA device"):
        cuda.VisualChatModel(path, dtype="bfloat16", **kw)


def test_vision_encoders_check_arguments_then_need_a_device(tmp_path):
    from test_vision_bindings import S, clip_tensors, qwen_tensors, write_safetensors
    rng = np.random.default_rng(0)
    qpath = write_safetensors(tmp_path / "q.safetensors", qwen_tensors(rng, layers=1))
    cpath = write_safetensors(tmp_path / "c.safetensors", clip_tensors(rng, width=128, inter=64, size=42))
    kw = dict(image_size=S, heads=2, pool_heads=2)
    with pytest.raises(ValueError, match="'dtype'.*'float64'"):
        cuda.QwenViT(qpath, dtype="float64", **kw)
    with pytest.raises(ValueError, match="'image_size'.*-1"):
        cuda.QwenViT(qpath, image_size=-1)
    with pytest.raises(ValueError, match="'path'.*missing"):
        cuda.QwenViT(str(tmp_path / "missing"), **kw)
    with pytest.raises(ValueError, match="'dtype'"):
        cuda.ClipViT(cpath, dtype="int8")
    with pytest.raises(TypeError, match="config"):
        cuda.ClipViT(cpath, config=3)
    with pytest.raises(cuda.CudaError, match="no (usable )?CUDA device"):
        cuda.QwenViT(qpath, dtype="bfloat16", **kw)
    with pytest.raises(cuda.CudaError, match="no (usable )?CUDA device"):
        cuda.ClipViT(cpath)


def test_backward_kernel_choice_is_checked_before_the_tensors():
    types = np.ones((1, 8), np.int8)
    with pytest.raises(ValueError, match="'kernel'.*'sideways'"):
        cuda.attention_backward(None, None, None, None, None, None, None, None, None, None, types, "mmca",
                                kernel="sideways")
    with pytest.raises(ValueError, match="'backward_kernel'.*'sideways'"):
        cuda.attention_torch(None, None, None, types, "mmca", backward_kernel="sideways")
