"""mmca's trainer building blocks against PyTorch 1.13, transformers 4.33.3 and safetensors.

* mmca.AdamW against torch.optim.AdamW over 20 steps of random gradients (several betas, weight
  decays, a learning rate that changes every step): parameters and both moments within 1e-6
  (max |mmca - torch| / max |torch| per tensor and step);
* mmca.lr_schedule against transformers.get_cosine_schedule_with_warmup (equal bits), and
  mmca.warmup_steps_from_ratio against TrainingArguments.get_warmup_steps;
* mmca.clip_grad_norm against torch.nn.utils.clip_grad_norm_;
* files of mmca.save_safetensors and mmca.save_train_state read by the safetensors package
  (safe_open, safetensors.numpy.load_file) with identical values, dtypes and metadata (bfloat16
  through torch), and a bit-exact resume of a toy regression through save/load.

Run with the interpreter of .venv and PYTHONPATH pointing at a build of the mmca package, e.g.
    PYTHONPATH=build/python .venv/bin/python -m pytest -q tests/python/test_train_torch.py
"""
from __future__ import annotations

import os
import types

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
safetensors = pytest.importorskip("safetensors")
import safetensors.numpy  # noqa: E402
from safetensors import safe_open  # noqa: E402

TOL = 1e-6


@pytest.fixture(scope="module")
def mm():
    try:
        import mmca
    except ImportError:
        pytest.skip("the mmca package is not importable (set PYTHONPATH to <build>/python)")
    if not hasattr(mmca, "AdamW"):
        pytest.skip("mmca was built without the training bindings (bind_train)")
    return mmca


def rel_err(a, b):
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    scale = max(np.max(np.abs(b)), 1e-30)
    return float(np.max(np.abs(a - b)) / scale)


SHAPES = {"w": (7, 5), "b": (3,), "e": (2, 3, 4)}


@pytest.mark.parametrize(
    "betas,weight_decay,eps",
    [((0.9, 0.95), 0.0, 1e-8), ((0.9, 0.999), 0.1, 1e-8), ((0.8, 0.9), 0.01, 1e-6), ((0.5, 0.99), 0.3, 1e-3)],
)
def test_adamw_matches_torch(mm, betas, weight_decay, eps):
    rng = np.random.default_rng(11)
    init = {k: rng.standard_normal(s).astype(np.float32) for k, s in SHAPES.items()}
    params = {k: v.copy() for k, v in init.items()}
    opt = mm.AdamW(params, lr=1e-3, betas=betas, eps=eps, weight_decay=weight_decay)
    tparams = {k: torch.nn.Parameter(torch.from_numpy(v.copy())) for k, v in init.items()}
    topt = torch.optim.AdamW(list(tparams.values()), lr=1e-3, betas=betas, eps=eps, weight_decay=weight_decay)
    for step in range(20):
        lr = 1e-3 * (0.5 + 0.5 * np.cos(step / 7.0))  # a rate that changes every step
        grads = {k: (rng.standard_normal(s) * 10.0 ** rng.integers(-3, 2)).astype(np.float32) for k, s in SHAPES.items()}
        if step == 5:
            grads["b"][:] = 0.0  # a zero gradient: the moments decay, the update continues
        opt.step(grads, lr=lr)
        for group in topt.param_groups:
            group["lr"] = lr
        for k, p in tparams.items():
            p.grad = torch.from_numpy(grads[k].copy())
        topt.step()
        for k, p in tparams.items():
            st = topt.state[p]
            assert rel_err(params[k], p.detach().numpy()) <= TOL, (step, k, "param")
            assert rel_err(opt.exp_avg(k), st["exp_avg"].numpy()) <= TOL, (step, k, "exp_avg")
            assert rel_err(opt.exp_avg_sq(k), st["exp_avg_sq"].numpy()) <= TOL, (step, k, "exp_avg_sq")
    assert opt.step_count == 20
    # The caller's arrays were updated in place (views, not copies).
    for k in SHAPES:
        assert opt.params[k] is params[k]
        assert not np.array_equal(params[k], init[k])


def test_adamw_list_params_and_no_decay(mm):
    rng = np.random.default_rng(3)
    w = rng.standard_normal((4, 4)).astype(np.float32)
    b = rng.standard_normal(4).astype(np.float32)
    w0, b0 = w.copy(), b.copy()
    opt = mm.AdamW([w, b], lr=0.01, weight_decay=0.5, no_decay=["1"])
    assert opt.names == ["0", "1"]
    tw, tb = torch.nn.Parameter(torch.from_numpy(w0.copy())), torch.nn.Parameter(torch.from_numpy(b0.copy()))
    topt = torch.optim.AdamW([{"params": [tw]}, {"params": [tb], "weight_decay": 0.0}],
                             lr=0.01, betas=(0.9, 0.95), weight_decay=0.5)
    for _ in range(3):
        gw, gb = rng.standard_normal((4, 4)).astype(np.float32), rng.standard_normal(4).astype(np.float32)
        opt.step([gw, gb])
        tw.grad, tb.grad = torch.from_numpy(gw.copy()), torch.from_numpy(gb.copy())
        topt.step()
    assert rel_err(w, tw.detach().numpy()) <= TOL
    assert rel_err(b, tb.detach().numpy()) <= TOL


def test_adamw_errors(mm):
    p = np.zeros((2, 3), np.float32)
    with pytest.raises(TypeError, match=r"mmca.AdamW: argument 'params\['0'\]': got dtype float64"):
        mm.AdamW([np.zeros(3)])
    with pytest.raises(ValueError, match=r"not C-contiguous"):
        mm.AdamW([np.zeros((4, 4), np.float32)[:, ::2]])
    ro = np.zeros(3, np.float32)
    ro.setflags(write=False)
    with pytest.raises(ValueError, match=r"read-only"):
        mm.AdamW([ro])
    with pytest.raises(ValueError, match=r"sharing memory"):
        mm.AdamW({"a": p, "b": p[1]})
    with pytest.raises(ValueError, match=r"mmca.AdamW: argument 'beta1'"):
        mm.AdamW([p], betas=(1.0, 0.9))
    opt = mm.AdamW({"p": p})
    with pytest.raises(ValueError, match=r"mmca.AdamW.step: argument 'grads\['p'\]': got shape \[3, 2\]"):
        opt.step({"p": np.zeros((3, 2), np.float32)})
    with pytest.raises(ValueError, match=r"a gradient for 'q'"):
        opt.step({"q": np.zeros((2, 3), np.float32)})
    with pytest.raises(ValueError, match=r"2 gradients"):
        opt.step([p, p])
    with pytest.raises(TypeError, match=r"float32"):
        opt.step([np.zeros((2, 3))])
    with pytest.raises(KeyError):
        opt.exp_avg("nope")
    assert opt.step_count == 0  # failed calls changed nothing
    assert not p.any()


@pytest.mark.parametrize("warmup,total", [(0, 10), (3, 20), (10, 100), (7, 7), (1, 2), (25, 1000)])
def test_lr_schedule_matches_transformers(mm, warmup, total):
    base = 3e-4
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=base)
    sched = transformers.get_cosine_schedule_with_warmup(opt, num_warmup_steps=warmup, num_training_steps=total)
    for step in range(total + 3):  # past the end too (the formula is kept as is)
        want = sched.get_last_lr()[0]
        got = mm.lr_schedule(step, base, total, warmup_steps=warmup)
        assert got == want, (step, got, want)
        opt.step()
        sched.step()


def test_warmup_ratio_matches_training_arguments(mm):
    get = transformers.TrainingArguments.get_warmup_steps
    for ratio in (0.0, 0.03, 0.1, 0.25, 1.0):
        for total in (1, 7, 15, 100, 1234):
            args = types.SimpleNamespace(warmup_steps=0, warmup_ratio=ratio)
            assert mm.warmup_steps_from_ratio(ratio, total) == get(args, total), (ratio, total)
            w = get(args, total)
            assert mm.lr_schedule(w // 2, 1e-3, total, warmup_ratio=ratio) == mm.lr_schedule(w // 2, 1e-3, total, warmup_steps=w)
    with pytest.raises(ValueError, match=r"either warmup_steps or warmup_ratio"):
        mm.lr_schedule(0, 1e-3, 10, warmup_steps=2, warmup_ratio=0.1)
    assert mm.lr_schedule(100, 1e-3, 100, warmup_steps=10, min_lr=1e-4) == pytest.approx(1e-4, rel=1e-12)


@pytest.mark.parametrize("max_norm", [0.5, 3.0, 1e4])
def test_clip_grad_norm_matches_torch(mm, max_norm):
    rng = np.random.default_rng(int(max_norm * 10))
    grads = [rng.standard_normal(s).astype(np.float32) for s in [(40, 30), (7,), (3, 3, 3), (100003,)]]
    grads[1] *= 1e-3
    tparams = [torch.nn.Parameter(torch.zeros(g.shape)) for g in grads]
    for p, g in zip(tparams, grads):
        p.grad = torch.from_numpy(g.copy())
    before = [g.copy() for g in grads]
    want = float(torch.nn.utils.clip_grad_norm_(tparams, max_norm))
    got = mm.clip_grad_norm(grads, max_norm)
    assert abs(got - want) <= TOL * want
    for g, p in zip(grads, tparams):
        assert rel_err(g, p.grad.numpy()) <= TOL
    if max_norm > want:
        for g, b in zip(grads, before):
            assert np.array_equal(g, b)  # not clipped: the same bits
    # Thread counts do not change the result.
    g1 = [b.copy() for b in before]
    g2 = [b.copy() for b in before]
    assert mm.clip_grad_norm(g1, max_norm, num_threads=1) == mm.clip_grad_norm(g2, max_norm, num_threads=2)
    for a, b in zip(g1, g2):
        assert np.array_equal(a, b)
    with pytest.raises(ValueError, match=r"argument 'max_norm'"):
        mm.clip_grad_norm(g1, 0.0)


def test_save_safetensors_read_by_safetensors(mm, tmp_path):
    rng = np.random.default_rng(5)
    bf16 = torch.from_numpy(rng.standard_normal((3, 5)).astype(np.float32)).to(torch.bfloat16)
    arrays = {
        "f32": rng.standard_normal((4, 6)).astype(np.float32),
        "f16": rng.standard_normal((5,)).astype(np.float16),
        "f64": rng.standard_normal((2, 2)),
        "i64": np.array([-(2 ** 40), 0, 7], np.int64),
        "i32": np.arange(6, dtype=np.int32).reshape(2, 3),
        "u8": np.array([1, 2, 250], np.uint8),
        "flag": np.array([True, False]),
        "scalar": np.array(3.5, np.float32),
        "empty": np.zeros((0, 3), np.float32),
        "bf16": bf16.view(torch.int16).numpy().view(np.uint16),
    }
    meta = {"format": "pt", "note": "ünïcode \"quoted\""}
    # Without bfloat16 (numpy has none): safetensors.numpy.load_file.
    plain = {k: a for k, a in arrays.items() if k != "bf16"}
    path_np = str(tmp_path / "np.safetensors")
    mm.save_safetensors(path_np, plain, meta)
    loaded = safetensors.numpy.load_file(path_np)
    assert sorted(loaded) == sorted(plain)
    for k, a in plain.items():
        assert loaded[k].dtype == a.dtype, k
        assert loaded[k].shape == a.shape, k
        assert np.array_equal(loaded[k], a), k
    # With bfloat16: safe_open through torch.
    path = str(tmp_path / "a.safetensors")
    mm.save_safetensors(path, arrays, meta, dtypes={"bf16": "BF16"})
    assert sorted(os.listdir(tmp_path)) == ["a.safetensors", "np.safetensors"]
    with safe_open(path, framework="pt") as f:
        assert f.metadata() == meta
        assert sorted(f.keys()) == sorted(arrays)
        t = f.get_tensor("bf16")
        assert t.dtype == torch.bfloat16
        assert torch.equal(t, bf16)
        for k, a in plain.items():
            assert torch.equal(f.get_tensor(k), torch.from_numpy(a)), k
    # mmca's own reader agrees.
    st = mm.SafetensorsFile(path)
    assert st.dtype("bf16") == "BF16" and st.dtype("i64") == "I64" and st.dtype("f16") == "F16"
    assert st.metadata == meta


def test_save_safetensors_errors_and_atomicity(mm, tmp_path):
    path = str(tmp_path / "m.safetensors")
    mm.save_safetensors(path, {"a": np.ones(3, np.float32)})
    before = open(path, "rb").read()
    with pytest.raises(ValueError, match=r"mmca.save_safetensors: argument 'dtypes'"):
        mm.save_safetensors(path, {"a": np.ones(3, np.float32)}, dtypes={"a": "BF16"})
    with pytest.raises(ValueError, match=r"argument 'dtypes'"):
        mm.save_safetensors(path, {"a": np.ones(3, np.float32)}, dtypes={"b": "F32"})
    with pytest.raises(ValueError, match=r"not C-contiguous"):
        mm.save_safetensors(path, {"a": np.ones((4, 4), np.float32)[::2]})
    with pytest.raises(TypeError, match=r"dtype complex64"):
        mm.save_safetensors(path, {"a": np.ones(2, np.complex64)})
    with pytest.raises(ValueError, match=r"mmca.save_safetensors: argument 'path'.*cannot create"):
        mm.save_safetensors(str(tmp_path / "no" / "x.safetensors"), {"a": np.ones(3, np.float32)})
    os.mkdir(tmp_path / "dir")
    os.mkdir(tmp_path / "dir" / "x")
    with pytest.raises(ValueError, match=r"renaming"):
        mm.save_safetensors(str(tmp_path / "dir"), {"a": np.ones(3, np.float32)})
    assert open(path, "rb").read() == before
    assert sorted(os.listdir(tmp_path)) == ["dir", "m.safetensors"]


def _toy_problem():
    rng = np.random.default_rng(21)
    x = rng.standard_normal((64, 6)).astype(np.float32)
    w_true = rng.standard_normal((6, 2)).astype(np.float32)
    y = x @ w_true + 0.1 * rng.standard_normal((64, 2)).astype(np.float32)
    return x, y


def _new_run(mm, seed_value):
    params = {"w": np.full((6, 2), seed_value, np.float32), "b": np.zeros(2, np.float32)}
    opt = mm.AdamW(params, lr=0.05, weight_decay=0.01, no_decay=["b"])
    return params, opt


def _train(mm, params, opt, data, steps, position, total=12, accum=2, micro=4):
    """Linear regression, mean squared error; batches walk the data in order from `position`."""
    x, y = data
    for _ in range(steps):
        gw = np.zeros_like(params["w"])
        gb = np.zeros_like(params["b"])
        for _ in range(accum):
            idx = np.arange(position, position + micro) % len(x)
            position += micro
            err = x[idx] @ params["w"] + params["b"] - y[idx]  # (micro, 2)
            scale = np.float32(2.0 / (micro * 2 * accum))      # d mean / d err, averaged over micro-batches
            gw += x[idx].T @ err * scale
            gb += err.sum(axis=0) * scale
        mm.clip_grad_norm({"w": gw, "b": gb}, 0.5)
        opt.step({"w": gw, "b": gb}, lr=mm.lr_schedule(opt.step_count, 0.05, total, warmup_steps=3))
    return position


def test_train_state_resume_is_bit_exact(mm, tmp_path):
    data = _toy_problem()
    params, opt = _new_run(mm, 0.1)
    pos = _train(mm, params, opt, data, 12, 0)
    straight = {k: v.copy() for k, v in params.items()}

    params1, opt1 = _new_run(mm, 0.1)
    pos1 = _train(mm, params1, opt1, data, 5, 0)
    path = str(tmp_path / "state.safetensors")
    mm.save_train_state(path, opt1, epoch=1, data_position=pos1, config={"lr": "0.05", "model": "toy"})

    params2, opt2 = _new_run(mm, -3.0)  # other values, overwritten by the load
    state = mm.load_train_state(path, opt2)
    assert state["step"] == 5 and opt2.step_count == 5
    assert state["epoch"] == 1 and state["data_position"] == pos1
    assert state["config"] == {"lr": "0.05", "model": "toy"}
    assert isinstance(state["rng_state"], str)
    assert np.array_equal(params2["w"], params1["w"])
    pos2 = _train(mm, params2, opt2, data, 7, state["data_position"])
    assert pos2 == pos
    for k in straight:
        assert np.array_equal(params2[k], straight[k]), k
        assert np.array_equal(opt2.exp_avg(k), opt.exp_avg(k)), k
        assert np.array_equal(opt2.exp_avg_sq(k), opt.exp_avg_sq(k)), k
    # The RNG state round-trips.
    mm.save_train_state(path, opt2, rng_state=state["rng_state"])
    assert mm.load_train_state(path, opt2)["rng_state"] == state["rng_state"]


def test_train_state_file_read_by_safetensors(mm, tmp_path):
    data = _toy_problem()
    params, opt = _new_run(mm, 0.1)
    pos = _train(mm, params, opt, data, 2, 0)
    path = str(tmp_path / "state.safetensors")
    mm.save_train_state(path, opt, epoch=3, data_position=pos, config={"a": "b"})
    loaded = safetensors.numpy.load_file(path)
    assert set(loaded) == {"w", "b", "optimizer.exp_avg.w", "optimizer.exp_avg.b", "optimizer.exp_avg_sq.w",
                           "optimizer.exp_avg_sq.b", "train.step", "train.epoch", "train.data_position"}
    assert loaded["w"].dtype == np.float32 and np.array_equal(loaded["w"], params["w"])
    assert np.array_equal(loaded["optimizer.exp_avg_sq.b"], opt.exp_avg_sq("b"))
    assert loaded["train.step"].dtype == np.int64 and loaded["train.step"].shape == () and int(loaded["train.step"]) == 2
    assert int(loaded["train.epoch"]) == 3 and int(loaded["train.data_position"]) == pos
    with safe_open(path, framework="np") as f:
        meta = f.metadata()
    assert meta["format"] == "mmca.train_state" and meta["format_version"] == "1"
    assert float(meta["adamw.beta2"]) == 0.95 and float(meta["adamw.weight_decay"]) == 0.01
    assert meta["config.a"] == "b"

    # Loader errors name the problem and change nothing.
    other = {"w": np.zeros((2, 6), np.float32), "b": np.zeros(2, np.float32)}
    opt_other = mm.AdamW(other, lr=0.05, weight_decay=0.01)
    with pytest.raises(ValueError, match=r"mmca.load_train_state: argument 'path'.*tensor 'w' of shape \[6, 2\]"):
        mm.load_train_state(path, opt_other)
    assert not other["w"].any() and opt_other.step_count == 0
    opt_wd = mm.AdamW({"w": np.zeros((6, 2), np.float32), "b": np.zeros(2, np.float32)}, weight_decay=0.5)
    with pytest.raises(ValueError, match=r"adamw.weight_decay = 0.01"):
        mm.load_train_state(path, opt_wd)
    raw = open(path, "rb").read()
    trunc = str(tmp_path / "trunc.safetensors")
    open(trunc, "wb").write(raw[:-16])
    with pytest.raises(ValueError, match=r"truncated file"):
        mm.load_train_state(trunc, opt)
    with pytest.raises(ValueError, match=r"argument 'rng_state'"):
        mm.save_train_state(path, opt, rng_state="not a state")
