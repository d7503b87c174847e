"""Package metadata, stubs and docstrings, and GIL release."""

import ast
import pathlib
import re
import threading

import numpy as np
import pytest

import mmca
import sample_data

REPO = pathlib.Path(__file__).resolve().parents[2]


def test_version_is_the_cmake_project_version():
    text = (REPO / "CMakeLists.txt").read_text()
    match = re.search(r"project\(\s*mmca\s+VERSION\s+([0-9]+\.[0-9]+\.[0-9]+)", text)
    assert match, "no 'project(mmca VERSION x.y.z' in the top-level CMakeLists.txt"
    assert mmca.__version__ == match.group(1)
    assert mmca._core._header_version == match.group(1)  # mmca/version.hpp agrees


def stub_tree():
    path = pathlib.Path(mmca.__file__).parent / "_core.pyi"
    assert path.exists(), "the stubs must be installed next to the extension module"
    return ast.parse(path.read_text())


def test_stubs_cover_the_public_api():
    tree = stub_tree()
    names = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.AnnAssign):
            names.add(node.target.id)
    assert set(mmca.__all__) <= names
    stub_class = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "KVCache")
    stub_members = {n.name for n in stub_class.body if isinstance(n, ast.FunctionDef)}
    public = {n for n in dir(mmca.KVCache) if not n.startswith("_")} | {"__init__"}
    assert public == stub_members


def test_stub_signatures_match_the_module():
    """Parameter names in the stubs are those pybind11 reports for the extension."""
    tree = stub_tree()
    stub_fn = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "attention")
    stub_params = [a.arg for a in stub_fn.args.args] + [a.arg for a in stub_fn.args.kwonlyargs]
    first_line = mmca.attention.__doc__.splitlines()[0]
    assert re.findall(r"(\w+): ", first_line[first_line.index("(") :]) == stub_params


def test_everything_public_has_a_docstring():
    assert "without copies" in mmca.__doc__
    for name in ["attention", "default_num_threads", "KVCache"]:
        assert getattr(mmca, name).__doc__, name
    assert "Parameters" in mmca.attention.__doc__ and "TypeError" in mmca.attention.__doc__
    for member in ["append", "attention", "length", "clear", "lengths", "last_appended", "keys", "values",
                   "capacity", "batch", "kv_heads", "head_dim", "dtype"]:
        assert getattr(mmca.KVCache, member).__doc__, member


def test_core_is_private_and_reexported():
    assert mmca.attention is mmca._core.attention and mmca.KVCache is mmca._core.KVCache


def test_gil_is_released_during_attention(rng):
    """Another Python thread runs while mmca.attention computes.

    The worker fills `out` with NaN and calls mmca.attention, which overwrites it: the first
    element early, the last element at the very end. Around each call it sets `phase` to +n
    (call n running) and -n (returned). The main thread reads phase, out's first element, out's
    last element and phase again, each read a single step under the GIL. Seeing the same +n
    twice, a written first element and a NaN last element proves that the main thread ran in the
    middle of the C++ computation. Were the GIL held for the whole call, inside one +n window
    `out` could only go from all NaN to all written at once, and that pair could never be seen.
    The worker repeats the call until the main thread has seen it, at most 50 times.
    """
    q, k, v = sample_data.random_qkv(rng, batch=1, q_heads=8, kv_heads=8, q_len=384, kv_len=384, dim=64)
    types = np.ones((1, 384), dtype=np.int8)
    out = np.empty_like(q)
    phase = [0]
    seen_inside = threading.Event()
    done = threading.Event()

    def worker():
        try:
            for n in range(1, 51):
                out.fill(np.nan)
                phase[0] = n
                mmca.attention(q, k, v, types, "causal", out=out, impl="reference", num_threads=1)
                phase[0] = -n
                if seen_inside.is_set():
                    break
        finally:
            done.set()

    thread = threading.Thread(target=worker)
    thread.start()
    while not done.is_set():
        before = phase[0]
        first = out[0, 0, 0, 0]
        last = out[0, -1, -1, -1]
        after = phase[0]
        if before > 0 and before == after and not np.isnan(first) and np.isnan(last):
            seen_inside.set()
        done.wait(0.0002)
    thread.join()
    assert seen_inside.is_set(), "the main thread never ran while attention was computing"


def test_concurrent_calls_give_the_serial_results(rng, batch):
    """With the GIL released, calls from several threads run at once; results do not mix."""
    inputs = [sample_data.random_qkv(rng) for _ in range(4)]
    types = batch["token_types"]
    serial = [mmca.attention(q, k, v, types, "mmca_reference") for q, k, v in inputs]
    cache = mmca.KVCache(2, 2, 27, 16)
    cache.append(inputs[0][1], inputs[0][2], types)
    cache_serial = [cache.attention(q, "mmca") for q, _, _ in inputs]
    results = {}

    def run(i):
        q, k, v = inputs[i]
        for _ in range(5):
            results[i] = (mmca.attention(q, k, v, types, "mmca_reference"), cache.attention(q, "mmca"),
                          cache.lengths.tolist())

    threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i in range(4):
        np.testing.assert_array_equal(results[i][0], serial[i])
        np.testing.assert_array_equal(results[i][1], cache_serial[i])
        assert results[i][2] == [27, 27]
