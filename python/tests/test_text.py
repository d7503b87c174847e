"""mmca.Tokenizer, the conversation template and mmca.blend (docs/chat.md).

Token ids are checked against spm_encode, the SentencePiece command-line encoder (Debian package
'sentencepiece'), on a small BPE model trained here by spm_train with LLaMa's layout (0 <unk>,
1 <s>, 2 </s>, byte pieces 3..258) and no dummy prefix: no piece contains a newline, so the ids of
a multi-line text are those of its lines joined by the byte piece <0x0A> (id 13).
"""

import json
import os
import random
import shutil
import stat
import subprocess

import numpy as np
import pytest

import mmca

NEWLINE = 3 + 0x0A
SYSTEM = (
    "You are a helpful language and vision assistant. You are able to understand the visual content that the "
    "user provides, and assist the user with a variety of tasks using natural language.\n\n"
)

needs_spm = pytest.mark.skipif(
    shutil.which("spm_train") is None or shutil.which("spm_encode") is None,
    reason="spm_train/spm_encode (Debian package 'sentencepiece') are not installed",
)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    if shutil.which("spm_train") is None or shutil.which("spm_encode") is None:
        pytest.skip("spm_train/spm_encode (Debian package 'sentencepiece') are not installed")
    d = tmp_path_factory.mktemp("spm")
    words = (
        "the a cat dog sits on mat red chair what is shown in picture image question answer you are helpful "
        "language and vision assistant able to understand visual content that user provides assist with variety "
        "of tasks using natural ### Image Question: Answer: Image: You What The colour blue green 0 1 2 3 4 5 6 7 8 9 "
        ". , ? !"
    ).split()
    rng = random.Random(7)
    (d / "corpus.txt").write_text("\n".join(" ".join(rng.choice(words) for _ in range(12)) for _ in range(3000)) + "\n")
    subprocess.run(
        [
            "spm_train", f"--input={d / 'corpus.txt'}", f"--model_prefix={d / 'm'}", "--model_type=bpe",
            "--vocab_size=400", "--byte_fallback=true", "--bos_id=1", "--eos_id=2", "--unk_id=0", "--pad_id=-1",
            "--character_coverage=1.0", "--normalization_rule_name=identity", "--remove_extra_whitespaces=false",
            "--split_digits=true", "--allow_whitespace_only_pieces=true", "--add_dummy_prefix=false",
            "--minloglevel=2",
        ],
        check=True,
        capture_output=True,
    )
    return str(d / "m.model")


def spm_ids(model_path, text):
    """spm_encode's ids of text, line by line, joined by the newline byte piece."""
    lines = text.split("\n")
    out = subprocess.run(
        ["spm_encode", f"--model={model_path}", "--output_format=id"],
        input="".join(line + "\n" for line in lines).encode(),
        check=True,
        capture_output=True,
    ).stdout.decode()
    rows = out.split("\n")[: len(lines)]
    assert len(rows) == len(lines)
    ids = []
    for i, row in enumerate(rows):
        if i:
            ids.append(NEWLINE)
        ids.extend(int(x) for x in row.split())
    return ids


# --- Tokenizer ---------------------------------------------------------------------------------


@needs_spm
def test_tokenizer_vocabulary(model):
    tok = mmca.Tokenizer(model)
    assert (tok.base_vocab_size, tok.vocab_size) == (400, 403)
    assert (tok.unk_id, tok.bos_id, tok.eos_id, tok.pad_id) == (0, 1, 2, 2)
    assert (tok.image_header_id, tok.image_id, tok.pad_token_id) == (400, 401, 402)
    assert [tok.id_to_piece(i) for i in (400, 401, 402)] == ["### Image:", "<image>", "<PAD>"]
    assert tok.piece_to_id("<0x0A>") == NEWLINE
    assert tok.piece_to_id("nothing like it") == -1
    assert isinstance(mmca.Tokenizer(os.fspath(model)), mmca.Tokenizer)


@needs_spm
def test_tokenizer_encode_against_spm_encode(model):
    tok = mmca.Tokenizer(model)
    for text in ["the cat sits on the red mat.", "What is shown in picture 12?", "zebra \u20ac x", "### Image 3:"]:
        assert tok.encode(text) == spm_ids(model, text), text
    assert tok.encode("### Image:\n<image>\nthe cat<PAD>") == [400, NEWLINE, 401, NEWLINE] + spm_ids(model, "the cat") + [402]
    assert tok.encode("the cat", add_bos=True, add_eos=True) == [1] + spm_ids(model, "the cat") + [2]
    assert tok.encode("\u20ac") == [3 + 0xE2, 3 + 0x82, 3 + 0xAC]


@needs_spm
def test_tokenizer_decode(model):
    tok = mmca.Tokenizer(model)
    for text in ["the cat.", "### Image 1:\n<image>\n\n### Question:\nzebra \u20ac?\n\n### Answer:\n", "<image><PAD>"]:
        assert tok.decode(tok.encode(text)) == text
    assert tok.decode([1] + tok.encode("the cat") + [2, 402]) == "<s>the cat</s><PAD>"
    assert tok.decode([1] + tok.encode("the cat") + [2, 402], skip_special=True) == "the cat"


@needs_spm
def test_tokenizer_errors(model, tmp_path):
    with pytest.raises(ValueError, match="model_path"):
        mmca.Tokenizer(tmp_path / "missing.model")
    tok = mmca.Tokenizer(model)
    with pytest.raises(ValueError, match=r"ids\[1\] = 403"):
        tok.decode([5, 403])
    with pytest.raises(TypeError):
        tok.encode(5)


# --- Conversation template ---------------------------------------------------------------------

ROUNDS = [
    {"question": "What is shown?", "answer": "Two cats.", "images": 2},
    {"question": "What colour is the mat?", "answer": "Red."},
    ("And now?", "A dog.", 1),
]


def test_render_conversation_by_hand():
    expected = (
        SYSTEM
        + "### Image 1:\n<image>\n### Image 2:\n<image>\n\n### Question:\nWhat is shown?\n\n### Answer:\nTwo cats."
        + "### Question:\nWhat colour is the mat?\n\n### Answer:\nRed."
        + "### Image 3:\n<image>\n\n### Question:\nAnd now?\n\n### Answer:\nA dog."
    )
    assert mmca.render_conversation(ROUNDS) == expected
    assert (
        mmca.render_conversation([("Q?", "A.", 1)], system_prompt=False, numbering="token_level")
        == "### Image:\n<image>\n\n### Question:\nQ?\n\n### Answer:\nA."
    )
    assert mmca.render_conversation([("Q?", "A.", 1)], system_prompt=False, first_image_number=5).startswith("### Image 5:")


@needs_spm
def test_tokenize_conversation(model):
    tok = mmca.Tokenizer(model)
    out = mmca.tokenize_conversation(tok, ROUNDS)
    parts = [
        ([1] + spm_ids(model, SYSTEM + "### Image 1:\n") + [401] + spm_ids(model, "\n### Image 2:\n") + [401]
         + spm_ids(model, "\n\n### Question:\nWhat is shown?\n\n### Answer:\n"), False),
        (spm_ids(model, "Two cats.") + [2], True),
        ([1] + spm_ids(model, "### Question:\nWhat colour is the mat?\n\n### Answer:\n"), False),
        (spm_ids(model, "Red.") + [2], True),
        ([1] + spm_ids(model, "### Image 3:\n") + [401] + spm_ids(model, "\n\n### Question:\nAnd now?\n\n### Answer:\n"), False),
        (spm_ids(model, "A dog.") + [2], True),
    ]
    ids = [i for p, _ in parts for i in p]
    labels = [i if sup else -100 for p, sup in parts for i in p]
    assert out["input_ids"].dtype == np.int32 and out["labels"].dtype == np.int32
    assert out["input_ids"].tolist() == ids
    assert out["labels"].tolist() == labels
    assert out["num_images"] == 3
    assert out["image_positions"].tolist() == [i for i, x in enumerate(ids) if x == 401]
    n0 = len(parts[0][0]) + len(parts[1][0])
    assert out["round_starts"].tolist() == [0, n0, n0 + len(parts[2][0]) + len(parts[3][0])]

    token = mmca.tokenize_conversation(tok, ROUNDS[:1], numbering="token_level")
    assert token["input_ids"].tolist() == (
        [1] + spm_ids(model, SYSTEM) + spm_ids(model, "### Image 1:") + [NEWLINE, 401, NEWLINE]
        + spm_ids(model, "### Image 2:") + [NEWLINE, 401]
        + spm_ids(model, "\n\n### Question:\nWhat is shown?\n\n### Answer:\n") + spm_ids(model, "Two cats.") + [2]
    )


@needs_spm
def test_conversation_errors(model):
    tok = mmca.Tokenizer(model)
    with pytest.raises(ValueError, match=r"rounds\[0\]\.question"):
        mmca.tokenize_conversation(tok, [("see <image>", "a", 0)])
    with pytest.raises(ValueError, match="numbering"):
        mmca.render_conversation(ROUNDS, numbering="fancy")
    with pytest.raises(ValueError, match=r"rounds\[0\]\.num_images"):
        mmca.render_conversation([("q", "a", 9)])
    with pytest.raises(TypeError, match=r"rounds\[1\]"):
        mmca.render_conversation([("q", "a", 0), 5])
    with pytest.raises(TypeError, match="rounds"):
        mmca.render_conversation("not rounds")
    with pytest.raises(ValueError, match=r"rounds\[0\]"):
        mmca.render_conversation([{"question": "q", "answer": "a", "image": 1}])


# --- Blending ----------------------------------------------------------------------------------


def llava_samples(n, rounds=2):
    samples = []
    for i in range(n):
        conv = []
        for r in range(rounds):
            conv.append({"from": "human", "value": ("<image>\n" if r == 0 else "") + f"Q{i}.{r}"})
            conv.append({"from": "gpt", "value": f"A{i}.{r} about IMAGE#1"})
        samples.append({"id": f"s{i}", "image": f"{i}.jpg", "conversations": conv})
    return samples


@pytest.fixture
def llava_file(tmp_path):
    path = tmp_path / "llava.json"
    path.write_text(json.dumps(llava_samples(60), indent=1))
    return path


def test_blend_determinism(llava_file, tmp_path):
    outputs = []
    for name, seed in [("a.json", 3), ("b.json", 3), ("c.json", 4)]:
        mmca.blend([llava_file], tmp_path / name, seed=seed)
        outputs.append((tmp_path / name).read_bytes())
    assert outputs[0] == outputs[1]
    assert outputs[0] != outputs[2]


def test_blend_counts_and_format(llava_file, tmp_path):
    out = tmp_path / "out.json"
    counts = mmca.blend([str(llava_file)], str(out), max_group=3, seed=1, style="ordinal")
    data = json.loads(out.read_text())
    assert counts["samples_read"] == 60
    assert counts["samples_written"] == len(data["train"]) + len(data["eval"])
    assert counts["train_samples"] == len(data["train"]) and counts["eval_samples"] == len(data["eval"])
    assert sum(v for k, v in counts.items() if k.startswith("skipped")) == 0
    assert data["format"] == "mmca-blend" and data["version"] == 1
    images = []
    for sample in data["train"] + data["eval"]:
        assert 1 <= len(sample["images"]) <= 3
        assert sum(r["images"] for r in sample["rounds"]) == len(sample["images"])
        assert sample["reference_style"] == "ordinal"
        for k, image in enumerate(sample["images"]):
            i = int(image.split(".")[0])
            first = sample["rounds"][2 * k]
            assert first["question"] == f"Q{i}.0" and first["images"] == 1
            ordinal = ["first", "second", "third"][k]
            assert first["answer"] == f"A{i}.0 about the {ordinal} image"
        images += sample["images"]
    assert sorted(images) == sorted(f"{i}.jpg" for i in range(60)), "every sample is used once; no group is dropped"
    # The rounds of the output are what the template renders.
    text = mmca.render_conversation(data["train"][0]["rounds"])
    assert text.count("<image>") == len(data["train"][0]["images"])


def test_blend_ninety_ten_split(llava_file, tmp_path):
    counts = mmca.blend([llava_file], tmp_path / "out.json", max_group=1)
    assert (counts["train_samples"], counts["eval_samples"]) == (54, 6)
    data = json.loads((tmp_path / "out.json").read_text())
    train = {s["id"] for s in data["train"]}
    evals = {s["id"] for s in data["eval"]}
    assert len(train) == 54 and len(evals) == 6 and not train & evals
    other = mmca.blend([llava_file], tmp_path / "other.json", max_group=1, split_seed=99)
    assert other["eval_samples"] == 6
    assert {s["id"] for s in json.loads((tmp_path / "other.json").read_text())["eval"]} != evals


def test_blend_skips_with_reasons(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "0.jpg").write_bytes(b"jpeg")
    good = llava_samples(1)
    samples = good + [
        {"id": "missing", "image": "9.jpg", "conversations": good[0]["conversations"]},
        {"id": "odd", "image": "0.jpg", "conversations": good[0]["conversations"][:1]},
        {"id": "noimage", "conversations": good[0]["conversations"]},
        "a string",
    ]
    (tmp_path / "in.json").write_text(json.dumps(samples))
    counts = mmca.blend([tmp_path / "in.json"], tmp_path / "out.json", image_root=tmp_path / "images")
    assert counts["samples_read"] == 5
    assert counts["skipped_missing_image"] == 1
    assert counts["skipped_malformed"] == 3
    assert counts["samples_written"] == 1


def test_blend_llava_otter(tmp_path):
    (tmp_path / "llava.json").write_text(json.dumps([
        {"id": "l1", "image": "1.jpg", "conversations": [{"from": "human", "value": "<image>\nLq"}, {"from": "gpt", "value": "La"}]},
    ]))
    (tmp_path / "cgd.json").write_text(json.dumps({"meta": {}, "data": {
        "c1": {"instruction": "Compare IMAGE#1 with IMAGE#2.", "answer": "Alike.", "image_ids": ["CGD_IMG_1", "CGD_IMG_2"],
               "rel_ins_ids": []},
        "c2": {"instruction": "Nine.", "answer": "x", "image_ids": [f"CGD_IMG_{i}" for i in range(9)], "rel_ins_ids": []},
    }}))
    counts = mmca.blend([tmp_path / "llava.json"], tmp_path / "out.json", mode="llava_otter", cgd_file=tmp_path / "cgd.json",
                        style="letter_upper", eval_fraction=0.0)
    assert counts["samples_read"] == 3 and counts["skipped_too_many_images"] == 1 and counts["samples_written"] == 1
    sample = json.loads((tmp_path / "out.json").read_text())["train"][0]
    assert sample["images"] == ["1.jpg", "2.jpg"]
    assert sample["rounds"] == [
        {"question": "Lq", "answer": "La", "images": 1},
        {"question": "Compare image A with image B.", "answer": "Alike.", "images": 1},
    ]


def test_blend_failure_leaves_no_partial_output(llava_file, tmp_path):
    out = tmp_path / "out.json"
    out.write_text("previous")
    seen = []

    def progress(done, total):
        seen.append((done, total))
        if done == 4:
            raise KeyError("stop here")

    with pytest.raises(KeyError, match="stop here"):
        mmca.blend([llava_file], out, progress=progress)
    assert [d for d, _ in seen] == [1, 2, 3, 4]
    assert out.read_text() == "previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["llava.json", "out.json"], "no temporary file is left"

    bad = tmp_path / "bad.json"
    bad.write_text('[{"id": "a"}, {"id": ')
    with pytest.raises(ValueError, match="bad.json"):
        mmca.blend([bad], tmp_path / "new.json")
    assert not (tmp_path / "new.json").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_blend_read_only_folder(llava_file, tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(stat.S_IRUSR | stat.S_IXUSR)
    try:
        with pytest.raises(ValueError, match="output"):
            mmca.blend([llava_file], ro / "out.json")
        assert list(ro.iterdir()) == []
    finally:
        ro.chmod(stat.S_IRWXU)


def test_blend_option_errors(llava_file, tmp_path):
    with pytest.raises(ValueError, match="mode"):
        mmca.blend([llava_file], tmp_path / "o.json", mode="zip")
    with pytest.raises(ValueError, match="style"):
        mmca.blend([llava_file], tmp_path / "o.json", style="bold")
    with pytest.raises(ValueError, match="max_group"):
        mmca.blend([llava_file], tmp_path / "o.json", max_group=0)
    with pytest.raises(ValueError, match="cgd_file"):
        mmca.blend([llava_file], tmp_path / "o.json", mode="llava_otter")
    with pytest.raises(TypeError, match="llava_files"):
        mmca.blend(str(llava_file), tmp_path / "o.json")
    assert not (tmp_path / "o.json").exists()
