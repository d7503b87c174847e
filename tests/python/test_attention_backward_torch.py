"""mmca.attention_backward against torch autograd through an explicit-mask two-softmax forward.

The oracle is written here from SPEC §2: per sequence and query head, one additive mask per key
group (0 inside the group, -inf outside), one softmax per mask, outputs summed; an empty group
contributes 0, pad rows output 0. For ``mmca_reference`` the masks are the reference code's
finfo.min masks, built by tests/python/llama_hf_oracle.py's ``group_masks``.

About the reference code's degenerate rows (a group whose every key is masked with finfo.min, so
the softmax is a uniform average): in float32, ``score + finfo.min`` rounds to finfo.min, so the
output of those rows does not depend on q or k at all, and its derivative with respect to q and k
is 0. Autograd through the addition would instead report the derivative of the unrounded sum. The
oracle therefore takes the scores of finfo.min-masked entries as constants (``detach``), which
changes nothing for entries whose weight is 0 and gives the uniform rows the true derivative; a
test below checks on the float32 formulation that those rows really do not move with q.
"""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
mmca = pytest.importorskip("mmca")
oracle = pytest.importorskip("llama_hf_oracle")

FMIN32 = torch.finfo(torch.float32).min
VARIANTS = [("causal", None), ("mmca", None), ("mmca_reference", None), ("causal_cross", "all"),
            ("causal_cross", "preceding"), ("causal_cross", "latest")]


# --------------------------------------------------------------------------------------------
# The oracle
# --------------------------------------------------------------------------------------------
def spec_masks(variant, types, ids, policy):
    """Two (L, L) additive masks of one sequence (0 in the group, -inf outside), from SPEC §2."""
    L = len(types)
    m = [torch.full((L, L), float("-inf"), dtype=torch.float64) for _ in range(2)]
    for j in range(L):
        tj = types[j]
        if tj == 0:
            continue
        earlier_images = [k for k in range(j) if types[k] == 2]
        for k in range(L):
            tk = types[k]
            if variant == "causal":
                if k <= j and tk != 0:
                    m[0][j, k] = 0.0
            elif variant == "mmca":
                if tj == 1:
                    if k <= j and tk == 1:
                        m[0][j, k] = 0.0
                    if k < j and tk == 2:
                        m[1][j, k] = 0.0
                elif k == j:
                    m[0][j, k] = 0.0  # an image row is V_j: a softmax over {j}
            elif variant == "causal_cross":
                if tj != 1:
                    continue
                if k <= j and tk == 1:
                    m[0][j, k] = 0.0
                if tk == 2:
                    if policy == "all":
                        visible = True
                    elif policy == "preceding":
                        visible = k < j
                    else:
                        visible = k < j and bool(earlier_images) and ids[k] == ids[earlier_images[-1]]
                    if visible:
                        m[1][j, k] = 0.0
            else:
                raise ValueError(variant)
    return m


def torch_attention(q, k, v, types, ids, kv_lens, variant, policy, scale):
    """float64 forward, differentiable in q, k, v: (B, Hq, L, D) from (B, Hkv, L, D) keys/values."""
    B, Hq, L, _ = q.shape
    G = Hq // k.shape[1]
    outs = []
    for b in range(B):
        n = int(kv_lens[b])
        out_b = torch.zeros(Hq, L, q.shape[3], dtype=torch.float64)
        if n > 0:
            t = np.asarray(types[b][:n])
            if variant == "mmca_reference":
                masks = [mk.double() for mk in oracle.group_masks(variant, t, np.asarray(ids[b][:n]), 0, n)]
            else:
                masks = spec_masks(variant, t, ids[b][:n], policy)
            kb = k[b, :, :n].repeat_interleave(G, dim=0)
            vb = v[b, :, :n].repeat_interleave(G, dim=0)
            s = q[b, :, :n] @ kb.transpose(1, 2) * scale  # (Hq, n, n)
            o = torch.zeros(Hq, n, q.shape[3], dtype=torch.float64)
            for mask in masks:
                # Scores under a finfo.min (or -inf) entry are constants of the computed function.
                live = mask > FMIN32 / 2
                z = torch.where(live, s, s.detach()) + mask
                empty = torch.isneginf(mask).all(dim=1, keepdim=True)  # an empty group contributes 0
                z = torch.where(empty, torch.zeros_like(z), z)
                p = torch.where(empty, torch.zeros_like(z), torch.softmax(z, dim=-1))
                o = o + p @ vb
            row_ok = torch.tensor(t != 0, dtype=torch.float64).view(1, n, 1)  # pad rows output 0
            out_b = torch.cat([o * row_ok, torch.zeros(Hq, L - n, q.shape[3], dtype=torch.float64)], dim=1)
        outs.append(out_b)
    return torch.stack(outs)


def torch_gradients(q, k, v, dout, types, ids, kv_lens, variant, policy, scale):
    tq, tk, tv = (torch.tensor(x, dtype=torch.float64, requires_grad=True) for x in (q, k, v))
    out = torch_attention(tq, tk, tv, types, ids, kv_lens, variant, policy, scale)
    (out * torch.tensor(dout, dtype=torch.float64)).sum().backward()
    return out.detach().numpy(), tq.grad.numpy(), tk.grad.numpy(), tv.grad.numpy()


# --------------------------------------------------------------------------------------------
# Layouts
# --------------------------------------------------------------------------------------------
def layout(spec):
    """Types and image ids from a string: T text, digits image id, '.' pad."""
    types = [1 if c == "T" else 0 if c == "." else 2 for c in spec]
    ids = [int(c) if c.isdigit() else -1 for c in spec]
    return types, ids


LAYOUTS = {
    # text before the first image, two images back to back (ids 0, 1), text, a third image, text
    "interleaved": ["TTTT000011TTT2222TTTTT", "11TTTTTT00000TTTTTTT..", "TTTTTTTTTTTTT........."],
    # image first, image-only sequence, a short sequence
    "image_first": ["000TTTTT1111TT2TTTTTTT", "0000001111111222222222", "TT0..................."],
}


def make_inputs(name, Hq, Hkv, D, seed):
    rows = LAYOUTS[name]
    B, L = len(rows), len(rows[0])
    types, ids = zip(*(layout(r) for r in rows))
    kv_lens = np.array([len(r.rstrip(".")) for r in rows], dtype=np.int32)
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((B, Hq, L, D)).astype(np.float32)
    k = rng.standard_normal((B, Hkv, L, D)).astype(np.float32)
    v = rng.standard_normal((B, Hkv, L, D)).astype(np.float32)
    dout = rng.standard_normal((B, Hq, L, D)).astype(np.float32)
    return q, k, v, dout, np.array(types, dtype=np.int8), np.array(ids, dtype=np.int32), kv_lens


def rel_err(a, b):
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30))


# --------------------------------------------------------------------------------------------
# Tests
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("variant,policy", VARIANTS)
@pytest.mark.parametrize("name", sorted(LAYOUTS))
@pytest.mark.parametrize("Hq,Hkv,D", [(4, 2, 32), (2, 2, 80)])
def test_gradients_match_torch_autograd(variant, policy, name, Hq, Hkv, D):
    q, k, v, dout, types, ids, kv_lens = make_inputs(name, Hq, Hkv, D, seed=Hq * 100 + D)
    scale = 1.0 / np.sqrt(D)
    out_t, dq_t, dk_t, dv_t = torch_gradients(q, k, v, dout, types.tolist(), ids.tolist(), kv_lens, variant, policy,
                                              scale)
    kw = dict(image_ids=ids, policy=policy, kv_lens=kv_lens, num_threads=2)
    out = mmca.attention(q, k, v, types, variant, **kw)
    assert rel_err(out, out_t) < 1e-5, "the oracle's forward differs from mmca.attention"
    for impl in ("fused", "reference"):
        dq, dk, dv = mmca.attention_backward(q, k, v, dout, types, variant, impl=impl, **kw)
        for got, want, what in ((dq, dq_t, "dq"), (dk, dk_t, "dk"), (dv, dv_t, "dv")):
            assert got.dtype == np.float32 and got.shape == want.shape
            assert np.max(np.abs(want)) > 0, what
            assert rel_err(got, want) < 1e-4, f"{impl} {what}: {rel_err(got, want):.3g}"


def test_uniform_rows_of_the_reference_code_do_not_depend_on_queries():
    # Image rows 0-2 come before any text: their text term is the reference code's uniform average.
    types, ids = layout("000TT11TT")
    n = len(types)
    rng = np.random.default_rng(3)
    q = torch.tensor(rng.standard_normal((n, 8)), dtype=torch.float32)
    k = torch.tensor(rng.standard_normal((n, 8)), dtype=torch.float32)
    v = torch.tensor(rng.standard_normal((n, 8)), dtype=torch.float32)
    masks = oracle.group_masks("mmca_reference", np.array(types), np.array(ids), 0, n)

    def forward(qq):
        s = qq @ k.T / np.sqrt(8)
        return sum(torch.softmax(s + m, dim=-1) @ v for m in masks)

    moved = q.clone()
    moved[:3] += 0.5
    assert torch.equal(forward(q)[:3], forward(moved)[:3])  # bitwise: the rows ignore q
    assert not torch.equal(forward(q)[3:], forward(q * 1.5)[3:])

    q4 = np.ascontiguousarray(q.numpy()[None, None])
    k4, v4 = (np.ascontiguousarray(x.numpy()[None, None]) for x in (k, v))
    dout = np.ones_like(q4)
    dq, dk, dv = mmca.attention_backward(q4, k4, v4, dout, np.array([types]), "mmca_reference")
    assert np.all(dq[0, 0, :3] == 0.0)
    assert np.any(dq[0, 0, 3:] != 0.0)


def test_saved_stats_give_the_same_gradients():
    q, k, v, dout, types, ids, kv_lens = make_inputs("interleaved", 4, 2, 32, seed=5)
    kw = dict(image_ids=ids, kv_lens=kv_lens)
    out, stats = mmca.attention_with_stats(q, k, v, types, "mmca", **kw)
    np.testing.assert_array_equal(out, mmca.attention(q, k, v, types, "mmca", **kw))
    row_max, row_sum, group_out = stats
    assert row_max.shape == (3, 4, 22, 2) and row_sum.shape == (3, 4, 22, 2)
    assert group_out.shape == (3, 4, 22, 2, 32)
    for s in stats:
        s.flags.writeable = False  # the backward only reads them
    with_stats = mmca.attention_backward(q, k, v, dout, types, "mmca", stats=stats, **kw)
    without = mmca.attention_backward(q, k, v, dout, types, "mmca", num_threads=1, **kw)
    for a, b in zip(with_stats, without):
        np.testing.assert_array_equal(a, b)


def test_errors_name_the_argument():
    q, k, v, dout, types, ids, kv_lens = make_inputs("interleaved", 2, 2, 16, seed=6)
    with pytest.raises(TypeError, match="mmca.attention_backward: argument 'dout'"):
        mmca.attention_backward(q, k, v, dout.astype(np.float64), types, "mmca")
    with pytest.raises(ValueError, match="mmca.attention_backward: argument 'dout'"):
        mmca.attention_backward(q, k, v, dout[:, :, :5].copy(), types, "mmca")
    with pytest.raises(ValueError, match="argument 'policy'"):
        mmca.attention_backward(q, k, v, dout, types, "mmca", policy="all")
    _, (row_max, row_sum, group_out) = mmca.attention_with_stats(q, k, v, types, "mmca")
    with pytest.raises(ValueError, match="argument 'row_sum'"):
        mmca.attention_backward(q, k, v, dout, types, "mmca", stats=(row_max, np.zeros_like(row_sum), group_out))
    with pytest.raises(TypeError, match="argument 'stats'"):
        mmca.attention_backward(q, k, v, dout, types, "mmca", stats=(row_max, row_sum))
