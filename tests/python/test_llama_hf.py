"""mmca's LLaMa decoder against HF transformers 4.33.3 (see llama_hf_oracle.py).

Random checkpoints are written during the run by the official ``safetensors`` package in several
configs (grouped-query attention, odd sizes, linear and dynamic RoPE scaling, f16/bf16 storage,
sharded). Logits must agree within 1e-4 (max |mmca - oracle| / max |oracle|) for every attention
variant: full prefill, token-by-token decoding, and a multi-round conversation that reuses the cache
(also against mmca's own full recompute, where the variant makes the two equal).

Run with the interpreter of .venv (it has transformers and safetensors) and PYTHONPATH pointing at a
build of the mmca package with the LLaMa bindings, e.g.
    PYTHONPATH=build/python .venv/bin/python -m pytest -q tests/python
"""
from __future__ import annotations

import importlib
import os
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("safetensors")

sys.path.insert(0, os.path.dirname(__file__))
import llama_hf_oracle as oracle  # noqa: E402

TOL = 1e-4


def _mmca():
    name = os.environ.get("MMCA_LLAMA_MODULE")
    if name:
        return importlib.import_module(name)
    try:
        import mmca
    except ImportError:
        pytest.skip("the mmca package is not importable (set PYTHONPATH to <build>/python)")
    if hasattr(mmca, "LlamaModel"):
        return mmca
    core = importlib.import_module("mmca._core")
    if hasattr(core, "LlamaModel"):
        return core
    pytest.skip("mmca was built without the LLaMa bindings (bind_llama)")


@pytest.fixture(scope="module")
def mm():
    return _mmca()


def test_transformers_version():
    assert transformers.__version__ == "4.33.3"


CONFIGS = {
    "gqa": dict(),
    "odd": dict(vocab=97, hidden=36, inter=50, layers=3, heads=3, kv_heads=1),
    "linear_rope": dict(heads=4, kv_heads=4, rope_scaling={"type": "linear", "factor": 2.5}, rope_theta=500.0),
    "dynamic_rope": dict(max_pos=24, rope_scaling={"type": "dynamic", "factor": 2.0}),
}

# (variant, policy) pairs: every variant of the attention layer.
VARIANTS = [("causal", None), ("mmca", None), ("mmca_reference", None), ("causal_cross", "all"),
            ("causal_cross", "preceding"), ("causal_cross", "latest")]


def _types(layout):
    """[(type, count), ...] -> (types int8, image ids int32 by run)."""
    t = np.concatenate([np.full(n, ty, np.int8) for ty, n in layout])
    ids = np.full(len(t), -1, np.int32)
    img = -1
    for i in range(len(t)):
        if t[i] == 2:
            if i == 0 or t[i - 1] != 2:
                img += 1
            ids[i] = img
    return t, ids


LAYOUT = [(1, 5), (2, 6), (1, 4), (2, 5), (1, 6), (2, 3), (1, 3)]   # text before, between and after images


def _embeddings(model, types, seed):
    rng = np.random.default_rng(seed)
    V = model.config["vocab_size"]
    ids = rng.integers(0, V, size=len(types)).astype(np.int32)
    e = model.embed(ids)
    img = types == 2
    e[img] = rng.standard_normal((int(img.sum()), e.shape[1])).astype(np.float32)
    return np.ascontiguousarray(e)


def _setup(mm, tmp_path, case, variant, policy, seed=0, dtype=torch.float32, shards=1, kv_dtype="float32"):
    hf = oracle.make_hf_model(seed, **CONFIGS[case])
    folder = oracle.save_checkpoint(hf, str(tmp_path / f"{case}_{seed}"), dtype=dtype, shards=shards)
    if dtype != torch.float32:
        hf = hf.to(dtype).float()   # the oracle computes in float32 on the stored (rounded) weights
    # Dynamic NTK scaling exists to run past max_position_embeddings: ask for a longer context.
    context = 64 if case == "dynamic_rope" else 0
    ours = mm.LlamaModel(folder, variant=variant, policy=policy, kv_dtype=kv_dtype, context=context)
    return hf, ours, folder


def _prefix_consistent(variant, policy):
    """Variants whose rows only see earlier keys: caching equals recomputing."""
    return variant in ("causal", "mmca") or (variant == "causal_cross" and policy != "all")


@pytest.mark.parametrize("case", list(CONFIGS))
@pytest.mark.parametrize("variant,policy", VARIANTS)
def test_prefill_matches_hf(mm, tmp_path, case, variant, policy):
    hf, ours, _ = _setup(mm, tmp_path, case, variant, policy)
    types, ids = _types(LAYOUT)
    e = _embeddings(ours, types, 1)
    got = ours.forward(e[None], types[None])[0]
    want = oracle.Oracle(hf, variant, policy or "preceding").step(e, types, ids)
    assert oracle.rel_err(got, want) < TOL


@pytest.mark.parametrize("case", ["gqa", "odd", "dynamic_rope"])
@pytest.mark.parametrize("variant,policy", VARIANTS)
def test_token_by_token_matches_hf(mm, tmp_path, case, variant, policy):
    hf, ours, _ = _setup(mm, tmp_path, case, variant, policy, seed=3)
    types, ids = _types(LAYOUT)
    e = _embeddings(ours, types, 2)
    inc = oracle.Oracle(hf, variant, policy or "preceding")
    steps = []
    for i in range(len(types)):
        got = ours.forward(e[None, i:i + 1], types[None, i:i + 1], logits="last")[0, 0]
        want = inc.step(e[i:i + 1], types, ids)[0]
        assert oracle.rel_err(got, want) < TOL, f"token {i}"
        steps.append(got)
    if _prefix_consistent(variant, policy) and case != "dynamic_rope":
        fresh = oracle.make_hf_model(3, **CONFIGS[case])
        full = oracle.Oracle(fresh, variant, policy or "preceding").step(e, types, ids)
        assert oracle.rel_err(np.stack(steps), full) < TOL


@pytest.mark.parametrize("case", ["gqa", "odd"])
@pytest.mark.parametrize("variant,policy", VARIANTS)
def test_multi_round_cache_reuse(mm, tmp_path, case, variant, policy):
    """Round 1 (text, image, question), 3 decoded tokens, round 2 (new image and question), 3 more."""
    hf, ours, folder = _setup(mm, tmp_path, case, variant, policy, seed=5)
    types, ids = _types([(1, 6), (2, 5), (1, 4), (1, 3), (1, 2), (2, 4), (1, 5), (1, 3)])
    chunks = [(0, 15), (15, 16), (16, 17), (17, 18), (18, 29), (29, 30), (30, 31), (31, 32)]
    e = _embeddings(ours, types, 4)
    inc = oracle.Oracle(hf, variant, policy or "preceding")
    cached = []
    for a, b in chunks:
        got = ours.forward(e[None, a:b], types[None, a:b])[0]
        want = inc.step(e[a:b], types[:b], ids[:b])
        assert oracle.rel_err(got, want) < TOL, f"chunk {a}:{b}"
        cached.append(got)
        assert ours.length() == b
    cached = np.concatenate(cached)
    if _prefix_consistent(variant, policy):
        recompute = mm.LlamaModel(folder, variant=variant, policy=policy)
        full = recompute.forward(e[None], types[None])[0]
        assert oracle.rel_err(cached, full.astype(np.float64)) < TOL


def test_harness_equals_hf_for_causal(tmp_path):
    """The oracle's patched two-mask attention reproduces HF's own causal attention."""
    hf = oracle.make_hf_model(7)
    types, ids = _types(LAYOUT)
    x = np.random.default_rng(0).standard_normal((len(types), 32)).astype(np.float32)
    plain = oracle.Oracle(hf, "causal").step(x, types, ids)
    o = oracle.Oracle(hf, "mmca")
    with oracle.patched("mmca"):
        masks = oracle.group_masks("causal", types, ids, 0, len(types))
        oracle.CTX.masks = [m[None, None] for m in masks]
        with torch.no_grad():
            out = hf(inputs_embeds=torch.from_numpy(x)[None], position_ids=torch.arange(len(types))[None])
    del o
    assert oracle.rel_err(out.logits[0].numpy(), plain) < 1e-6


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_checkpoints_in_place(mm, tmp_path, dtype):
    hf, ours, _ = _setup(mm, tmp_path, "gqa", "mmca", None, seed=9, dtype=dtype)
    types, ids = _types(LAYOUT)
    e = _embeddings(ours, types, 6)
    got = ours.forward(e[None], types[None])[0]
    want = oracle.Oracle(hf, "mmca").step(e, types, ids)
    assert oracle.rel_err(got, want) < TOL


def test_sharded_checkpoint(mm, tmp_path):
    hf, ours, _ = _setup(mm, tmp_path, "odd", "causal", None, seed=11, shards=3)
    ids = np.arange(1, 20, dtype=np.int32)
    got = ours.forward_tokens(ids[None])[0]
    with torch.no_grad():
        want = hf(torch.from_numpy(ids.astype(np.int64))[None]).logits[0].numpy()
    assert oracle.rel_err(got, want) < TOL


@pytest.mark.parametrize("kv_dtype", ["float16", "bfloat16"])
def test_half_precision_kv_cache_stays_close(mm, tmp_path, kv_dtype):
    hf, ours, _ = _setup(mm, tmp_path, "gqa", "causal", None, seed=13, kv_dtype=kv_dtype)
    ids = np.arange(2, 30, dtype=np.int32)
    got = ours.forward_tokens(ids[None])[0]
    with torch.no_grad():
        want = hf(torch.from_numpy(ids.astype(np.int64))[None]).logits[0].numpy()
    assert oracle.rel_err(got, want) < (2e-2 if kv_dtype == "bfloat16" else 3e-3)


def test_tied_embeddings(mm, tmp_path):
    hf = oracle.make_hf_model(15, tie=True)
    folder = oracle.save_checkpoint(hf, str(tmp_path / "tied"))
    ours = mm.LlamaModel(folder, variant="causal")
    ids = np.arange(3, 17, dtype=np.int32)
    with torch.no_grad():
        want = hf(torch.from_numpy(ids.astype(np.int64))[None]).logits[0].numpy()
    assert oracle.rel_err(ours.forward_tokens(ids[None])[0], want) < TOL


# ---- exact greedy output on a fixed tiny checkpoint ------------------------------------------
# Also pinned in tests/cpp/test_llama_model.cpp (LlamaGreedy.FixedCheckpointOutputIsPinned).
FIXED_PROMPT = [1, 7, 30, 12, 5]


def _fixed_model(tmp_path):
    from safetensors.numpy import save_file

    cfg = oracle.FIXED_CONFIG
    state = oracle.fixed_state_dict(cfg)
    folder = tmp_path / "fixed"
    folder.mkdir()
    save_file(state, str(folder / "model.safetensors"))
    hcfg = transformers.LlamaConfig(**cfg, rms_norm_eps=1e-5, rope_theta=10000.0, bos_token_id=1, eos_token_id=2,
                                    tie_word_embeddings=False)
    hcfg.to_json_file(str(folder / "config.json"))
    hf = transformers.LlamaForCausalLM(hcfg).float().eval()
    missing = hf.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()}, strict=False)
    assert not missing.unexpected_keys and all(k.endswith("inv_freq") for k in missing.missing_keys)
    return hf, str(folder)


PINNED_GREEDY = [39, 39, 39, 17, 35, 54, 25, 35, 40, 20, 36, 15, 6, 39, 44, 22]


def test_greedy_output_is_pinned(mm, tmp_path):
    hf, folder = _fixed_model(tmp_path)
    ids = list(FIXED_PROMPT)
    hf_tokens = []
    with torch.no_grad():
        for _ in range(len(PINNED_GREEDY)):
            logits = hf(torch.tensor([ids])).logits[0, -1]
            top2 = torch.topk(logits, 2).values
            assert float(top2[0] - top2[1]) > 1e-3, "the pinned checkpoint must not have near-ties"
            nxt = int(torch.argmax(logits))
            hf_tokens.append(nxt)
            ids.append(nxt)
            if nxt == 2:
                break
    assert hf_tokens == PINNED_GREEDY
    ours = mm.LlamaModel(folder, variant="causal")
    tokens, reason = ours.chat(FIXED_PROMPT, max_new_tokens=len(PINNED_GREEDY))
    assert tokens == PINNED_GREEDY
    assert reason in ("eos", "max_new_tokens")


# ---- the reference checkpoint converter ------------------------------------------------------
def test_convert_reference_checkpoint(mm, tmp_path):
    """A reference-style pytorch_model.bin ({"module": state}, lang_decoder.* with an extended
    vocabulary, a trained lang_embed copy, vision/projection tensors) converted, sharded, loaded with
    the visual-chat names: the text embedding is lang_embed (SPEC §6) and logits match HF."""
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "scripts"))
    import convert_reference_checkpoint as conv

    base_vocab, extra = 97, 3
    hf = oracle.make_hf_model(17, vocab=base_vocab + extra)
    state = {"lang_decoder." + k: v for k, v in hf.state_dict().items() if not k.endswith("inv_freq")}
    trained = torch.randn(base_vocab + extra, 32)
    state["lang_embed.weight"] = trained
    state["vis_encoder.conv1.weight"] = torch.randn(8, 3, 2, 2)
    state["projection.0.weight"] = torch.randn(32, 8)
    state["projection.1.bias"] = torch.zeros(32)
    src = tmp_path / "pytorch_model.bin"
    torch.save({"module": state}, str(src))
    cfg = tmp_path / "llama_config.json"
    transformers.LlamaConfig(vocab_size=base_vocab, hidden_size=32, intermediate_size=45, num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                             rms_norm_eps=1e-5).to_json_file(str(cfg))
    out = tmp_path / "converted"
    files = conv.convert(str(src), str(out), shard_size=20000, config=str(cfg), verify=True, dtype="bfloat16")
    assert len(files) > 1 and (out / "model.safetensors.index.json").exists()
    ours = mm.LlamaModel(str(out), names="visual_chat", variant="causal")
    assert ours.config["vocab_size"] == base_vocab + extra
    ids = np.array([1, 5, 99, 42, 7], dtype=np.int32)
    want_embed = trained.to(torch.bfloat16).float().numpy()[ids]
    np.testing.assert_array_equal(ours.embed(ids), want_embed)
    with torch.no_grad():
        hf_b = hf.to(torch.bfloat16).float()
        x = torch.from_numpy(want_embed)[None]
        want = hf_b(inputs_embeds=x).logits[0].numpy()
    assert oracle.rel_err(ours.forward_tokens(ids[None])[0], want) < TOL
    # Only the language model, one file, float32 kept as is.
    conv.convert(str(src), str(tmp_path / "lang"), only_language=True)
    from safetensors import safe_open
    with safe_open(str(tmp_path / "lang" / "model.safetensors"), framework="pt") as f:
        assert not [k for k in f.keys() if not k.startswith(("lang_decoder.", "lang_embed."))]
