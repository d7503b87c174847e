"""The committed demo model (examples/demo_model, docs/demo_model.md) from Python.

The oracle is the synthetic task's generator: the demo's images must be the pixels it draws for the
recorded seed and index, and the model must give the answers it knows to be right.
"""

import json
import os

import numpy as np
import pytest

import mmca

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEMO = os.environ.get("MMCA_DEMO_MODEL", os.path.join(ROOT, "examples", "demo_model"))  # or a retrained one

pytestmark = pytest.mark.skipif(not os.path.exists(os.path.join(DEMO, "model.safetensors")),
                                reason="examples/demo_model is not in this tree")


@pytest.fixture(scope="module")
def demo():
    with open(os.path.join(DEMO, "demo.json")) as f:
        return json.load(f)


@pytest.fixture(scope="module")
def tokenizer():
    if not hasattr(mmca, "Tokenizer"):
        pytest.skip("mmca was built without SentencePiece")
    return mmca.Tokenizer(os.path.join(DEMO, "tokenizer.model"))


def load_model(demo, tok, variant=None):
    return mmca.VisualChatModel(DEMO, variant=variant or demo["variant"], image_size=demo["image_size"],
                                vision_heads=demo["vision_heads"], pool_heads=demo["pool_heads"],
                                image_token_id=tok.image_id, num_threads=1)


def test_the_demo_images_and_answers_are_the_generators(demo):
    src = demo["source"]
    task = {k: src[k] for k in ("image_size", "grid", "max_images", "max_shapes", "max_rounds")}
    sample = mmca.synthetic_sample(src["seed"], src["index"], **task)
    paths = [p for r in demo["rounds"] for p in r["images"]]
    assert len(paths) == len(sample["images"]) >= 2
    for path, pixels in zip(paths, sample["images"]):
        np.testing.assert_array_equal(mmca.load_image(os.path.join(DEMO, path)), pixels)
    assert [r["question"] for r in demo["rounds"]] == [r["question"] for r in sample["rounds"]]
    assert [r["expected"] for r in demo["rounds"]] == [r["answer"] for r in sample["rounds"]]
    assert [len(r["images"]) for r in demo["rounds"]] == [r["images"] for r in sample["rounds"]]


def test_the_demo_model_answers_its_conversation(demo, tokenizer):
    model = load_model(demo, tokenizer)
    chat = mmca.ChatSession(model, tokenizer, system_prompt=demo["system_prompt"], preset=demo["preset"],
                            max_new_tokens=16)
    streamed = []
    for r in demo["rounds"]:
        pieces = []
        a = chat.ask(r["question"], [os.path.join(DEMO, p) for p in r["images"]], on_text=pieces.append)
        streamed.append("".join(pieces))
        assert a["text"] == r["expected"], r["question"]
        assert a["reason"] == "eos"
    assert streamed == [r["expected"] for r in demo["rounds"]]


def test_pixels_and_files_give_the_same_conversation(demo, tokenizer):
    model = load_model(demo, tokenizer)
    chat = mmca.ChatSession(model, tokenizer, system_prompt=demo["system_prompt"], preset=demo["preset"],
                            max_new_tokens=16)
    for r in demo["rounds"]:
        pixels = [mmca.load_image(os.path.join(DEMO, p)) for p in r["images"]]
        assert chat.ask(r["question"], pixels)["text"] == r["expected"]


def test_the_variant_matters_for_the_demo_model(demo, tokenizer):
    """The model was trained under MMCA: its first answer's logits move when the same checkpoint runs
    under causal attention (so the demo exercises the variant, not only the weights)."""
    r = demo["rounds"][0]
    conv = [{"question": r["question"], "answer": r["expected"], "images": len(r["images"])}]
    ids = np.asarray(mmca.tokenize_conversation(tokenizer, conv, system_prompt=False)["input_ids"], np.int32)
    S = demo["image_size"]
    pixels = np.stack([mmca.preprocess_image(mmca.load_image(os.path.join(DEMO, p)), demo["preset"], size=S, crop=S)
                       for p in r["images"]]).astype(np.float32)
    logits = {}
    for variant in ("mmca", "causal"):
        logits[variant] = np.asarray(load_model(demo, tokenizer, variant).forward([ids], [pixels])["logits"])
    assert np.abs(logits["mmca"] - logits["causal"]).max() > 1e-3
