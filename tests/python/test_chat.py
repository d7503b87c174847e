"""The chat pipeline end to end on a small random model: mmca.ChatSession and the mmca-chat program
(interactive through a pipe and through a pseudo-terminal, and batch mode writing CSV).

Oracles: the prompt of each round is written out by hand here from SPEC §6 and tokenized; images
are preprocessed with PIL and numpy (resize shortest edge, centre crop, CLIP normalisation); the
answers are greedy continuations recomputed from scratch by visual_chat_oracle (PyTorch ViT and
projector, HF LLaMa). The tokenizer is a SentencePiece model trained in the test run by spm_train.
"""
from __future__ import annotations

import csv
import json
import os
import pty
import random
import select
import shutil
import subprocess
import time

import numpy as np
import pytest

import visual_chat_oracle as vo

S = vo.S
BASE_VOCAB = 400
VOCAB = BASE_VOCAB + 3          # + "### Image:", "<image>", "<PAD>"
IMAGE_TOKEN = BASE_VOCAB + 1
SYSTEM = ("You are a helpful language and vision assistant. You are able to understand the visual content that "
          "the user provides, and assist the user with a variety of tasks using natural language.\n\n")
MEAN = np.array([0.48145466, 0.4578275, 0.40821073])
STD = np.array([0.26862954, 0.26130258, 0.27577711])

pytestmark = pytest.mark.skipif(shutil.which("spm_train") is None, reason="spm_train (Debian package 'sentencepiece') is missing")


@pytest.fixture(scope="module")
def mm():
    import mmca
    return mmca


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A checkpoint folder with tokenizer.model, and two PNG images."""
    from PIL import Image

    d = tmp_path_factory.mktemp("chat")
    words = ("you are a helpful language and vision assistant able to understand the visual content that user "
             "provides assist with variety of tasks using natural what is in picture image question answer "
             "colour red blue shape circle square compare ### Image Question: Answer: 1 2 3 4 5 6 7 8 9 0 . , ?").split()
    rng = random.Random(3)
    (d / "corpus.txt").write_text("\n".join(" ".join(rng.choice(words) for _ in range(10)) for _ in range(2000)) + "\n")
    subprocess.run(["spm_train", f"--input={d / 'corpus.txt'}", f"--model_prefix={d / 'tokenizer'}",
                    "--model_type=bpe", f"--vocab_size={BASE_VOCAB}", "--byte_fallback=true", "--bos_id=1",
                    "--eos_id=2", "--unk_id=0", "--pad_id=-1", "--character_coverage=1.0", "--minloglevel=2"],
                   check=True, capture_output=True)
    info = vo.qwen_checkpoint(d, seed=21, vocab=VOCAB, image_token=IMAGE_TOKEN)
    g = np.random.default_rng(5)
    paths = []
    for i, (w, h) in enumerate([(80, 64), (50, 90)]):
        p = d / f"img{i + 1}.png"
        Image.fromarray(g.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(p)
        paths.append(str(p))
    return str(d), info, paths


def pil_pixels(path) -> np.ndarray:
    """(3, S, S) float32: shortest edge to S (PIL bicubic), centre crop, CLIP normalisation."""
    from PIL import Image

    img = Image.open(path).convert("RGB")
    w, h = img.size
    if w <= h:
        size = (S, int(S * h / w))
    else:
        size = (int(S * w / h), S)
    img = img.resize(size, Image.BICUBIC)
    w, h = img.size
    top, left = (h - S) // 2, (w - S) // 2
    a = np.asarray(img, dtype=np.float64)[top:top + S, left:left + S] / 255.0
    return ((a - MEAN) / STD).transpose(2, 0, 1).astype(np.float32)


def round_prompt(tok, question, first_image, n_images, first_round):
    text = SYSTEM if first_round else ""
    for i in range(n_images):
        text += f"### Image {first_image + i}:\n<image>\n"
    text += ("\n" if n_images else "") + f"### Question:\n{question}\n\n### Answer:\n"
    return [1] + tok.encode(text)


def model_and_session(mm, folder, info, **kw):
    model = mm.VisualChatModel(folder, **vo.load_kwargs(info))
    tok = mm.Tokenizer(os.path.join(folder, "tokenizer.model"))
    return model, tok, mm.ChatSession(model, tok, max_new_tokens=6, **kw)


def test_session_rounds_match_the_oracle(mm, setup):
    folder, info, paths = setup
    model, tok, chat = model_and_session(mm, folder, info)
    pieces, progress = [], []
    a1 = chat.ask("what is in the picture?", [paths[0]], on_text=pieces.append,
                  on_image=lambda d, t: progress.append((d, t)))
    assert progress == [(0, 1), (1, 1)]
    assert "".join(pieces) == a1["text"] == tok.decode([t for t in a1["tokens"] if t != 2])
    p1 = round_prompt(tok, "what is in the picture?", 1, 1, True)
    assert a1["prompt_tokens"] == len(p1)
    rows1 = vo.image_rows(info, pil_pixels(paths[0])[None])
    want1 = vo.greedy(info, p1, rows1, 6)
    assert a1["tokens"] == want1
    # Round 2: two images (the first shown again), numbered 2 and 3, no system prompt.
    a2 = chat.ask("compare the shape", [paths[1], paths[0]])
    p2 = round_prompt(tok, "compare the shape", 2, 2, False)
    rows = vo.image_rows(info, np.stack([pil_pixels(paths[0]), pil_pixels(paths[1]), pil_pixels(paths[0])]))
    assert a2["tokens"] == vo.greedy(info, p1 + want1 + p2, rows, 6)
    assert model.images_embedded == 2          # the repeated image came from the cache
    # Round 3 without images.
    a3 = chat.ask("what colour?")
    p3 = round_prompt(tok, "what colour?", 4, 0, False)
    assert a3["tokens"] == vo.greedy(info, p1 + want1 + p2 + a2["tokens"] + p3, rows, 6)
    assert (chat.rounds, chat.images_shown) == (3, 3)
    # A new conversation starts with the system prompt and image 1 again.
    chat.clear()
    assert chat.ask("what is in the picture?", [paths[0]])["tokens"] == want1


def test_session_refuses_bad_rounds_without_changing_anything(mm, setup, tmp_path):
    folder, info, paths = setup
    model = mm.VisualChatModel(folder, max_images=2, **vo.load_kwargs(info))
    chat = mm.ChatSession(model, mm.Tokenizer(os.path.join(folder, "tokenizer.model")), max_new_tokens=2)
    chat.ask("what is in the picture?", [paths[0]])
    state = (chat.rounds, chat.images_shown, model.length)
    with pytest.raises(ValueError, match=r"argument 'images'.*at most 2 images per conversation"):
        chat.ask("compare", [paths[0], paths[1]])
    with pytest.raises(ValueError, match="missing.png"):
        chat.ask("compare", [str(tmp_path / "missing.png")])
    cut = tmp_path / "cut.png"
    cut.write_bytes(open(paths[0], "rb").read()[:60])
    with pytest.raises(ValueError, match="cut.png"):
        chat.ask("compare", [str(cut)])
    with pytest.raises(ValueError, match="<image>"):
        chat.ask("a question with <image> inside")
    assert (chat.rounds, chat.images_shown, model.length) == state
    with pytest.raises(TypeError, match="VisualChatModel"):
        mm.ChatSession("model", mm.Tokenizer(os.path.join(folder, "tokenizer.model")))


def _chat_exe():
    exe = os.environ.get("MMCA_CHAT_EXE", "")
    if not exe or not os.path.exists(exe):
        pytest.skip("mmca-chat is not built (MMCA_CHAT_EXE)")
    return exe


def _reference_answers(mm, folder, info, rounds):
    """Answers of a ChatSession for [(question, [paths])...] (greedy, 6 tokens)."""
    _, _, chat = model_and_session(mm, folder, info)
    return [chat.ask(q, imgs)["text"] for q, imgs in rounds]


CLI_ARGS = ["--max-new-tokens", "6", "--image-size", str(S), "--vision-heads", "4", "--pool-heads", "2",
            "--projector-heads", "2", "--threads", "1"]


def test_cli_piped_input(mm, setup):
    exe = _chat_exe()
    folder, info, paths = setup
    script = f"/image {paths[0]}\nwhat is in the picture?\n/image {paths[1]}\ncompare the shape\n/clear\nwhat colour?\n/quit\n"
    out = subprocess.run([exe, "--model", folder, "--quiet"] + CLI_ARGS, input=script, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    want = _reference_answers(mm, folder, info, [("what is in the picture?", [paths[0]]),
                                                 ("compare the shape", [paths[1]])])
    want += _reference_answers(mm, folder, info, [("what colour?", [])])
    assert out.stdout == (f"[image 1: {paths[0]}]\n{want[0]}\n[image 2: {paths[1]}]\n{want[1]}\n"
                          f"[new conversation]\n{want[2]}\n")


def test_cli_through_a_pseudo_terminal(mm, setup):
    exe = _chat_exe()
    folder, info, paths = setup
    pid, fd = pty.fork()
    if pid == 0:  # the child: mmca-chat on the terminal
        os.execv(exe, [exe, "--model", folder] + CLI_ARGS)
    want = _reference_answers(mm, folder, info, [("what is in the picture?", [paths[0]])])[0]
    seen = b""

    def read_until(marker: bytes, timeout=240):
        nonlocal seen
        end = time.time() + timeout
        while marker not in seen and time.time() < end:
            r, _, _ = select.select([fd], [], [], 1.0)
            if r:
                try:
                    seen += os.read(fd, 4096)
                except OSError:
                    break
        return marker in seen

    try:
        assert read_until(b"> "), seen
        os.write(fd, f"/image {paths[0]}\n".encode())
        assert read_until(b"[image 1:"), seen
        os.write(fd, b"what is in the picture?\n")
        assert read_until(b"tokens,"), seen             # the stderr summary after the answer
        text = seen.decode(errors="replace").replace("\r\n", "\n")
        assert "[encoding image 1/1]" in text           # the progress indicator
        assert want in text
        os.write(fd, b"/quit\n")
        _, status = os.waitpid(pid, 0)
        assert os.WEXITSTATUS(status) == 0
    finally:
        try:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass
        os.close(fd)


def test_cli_batch_mode_writes_csv(mm, setup, tmp_path):
    exe = _chat_exe()
    folder, info, paths = setup
    images = os.path.dirname(paths[0])
    conv = [["what is in the picture?", "img1.png"], ["compare the shape", "img2.png img1.png"], ["what colour?"]]
    (tmp_path / "eval_one.json").write_text(json.dumps(conv))
    (tmp_path / "eval_two.json").write_text(json.dumps(conv[:1]))
    out_csv = tmp_path / "answers.csv"
    r = subprocess.run([exe, "--model", folder, "--quiet", "--batch", str(tmp_path / "eval_one.json"), "--batch",
                        str(tmp_path / "eval_two.json"), "--image-root", images, "--output", str(out_csv)] + CLI_ARGS,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    rows = list(csv.reader(open(out_csv, newline="")))
    assert rows[0] == ["test_name", "image_paths", "question", "answer"]
    want = _reference_answers(mm, folder, info, [("what is in the picture?", [paths[0]]),
                                                 ("compare the shape", [paths[1], paths[0]]), ("what colour?", [])])
    assert rows[1:4] == [["eval_one", f"{images}/img1.png", "what is in the picture?", want[0]],
                         ["eval_one", f"{images}/img2.png {images}/img1.png", "compare the shape", want[1]],
                         ["eval_one", "", "what colour?", want[2]]]
    assert rows[4] == ["eval_two", f"{images}/img1.png", "what is in the picture?", want[0]]
    # A malformed batch file stops the run before anything is written.
    (tmp_path / "bad.json").write_text('[["q", 3]]')
    bad_csv = tmp_path / "bad.csv"
    r = subprocess.run([exe, "--model", folder, "--quiet", "--batch", str(tmp_path / "bad.json"), "--output",
                        str(bad_csv)] + CLI_ARGS, capture_output=True, text=True, timeout=300)
    assert r.returncode == 1 and "round 0" in r.stderr and not bad_csv.exists()
