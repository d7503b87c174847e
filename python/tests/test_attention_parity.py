"""mmca.attention against an independent float64 oracle (mmca_oracle, written from SPEC §2),
and the fused kernel against the C++ reference implementation (impl="reference")."""

import numpy as np
import pytest

import mmca
import mmca_oracle
import sample_data

# Every variant, and every image visibility policy of causal_cross (None: the default, 'preceding').
CASES = [
    ("causal", None),
    ("mmca", None),
    ("mmca_reference", None),
    ("causal_cross", None),
    ("causal_cross", "all"),
    ("causal_cross", "preceding"),
    ("causal_cross", "latest"),
]
CASE_IDS = [v if p is None else f"{v}-{p}" for v, p in CASES]
RTOL, ATOL = 1e-5, 1e-6


def kv_arrays(k, v, kv_dtype):
    """(k, v as passed to mmca, k, v as float64 values the oracle sees, kv_dtype keyword)."""
    if kv_dtype == "float32":
        return k, v, k.astype(np.float64), v.astype(np.float64), None
    if kv_dtype == "float16":
        k16, v16 = k.astype(np.float16), v.astype(np.float16)
        return k16, v16, k16.astype(np.float64), v16.astype(np.float64), None
    kb, vb = mmca_oracle.bfloat16_bits(k), mmca_oracle.bfloat16_bits(v)
    return kb, vb, mmca_oracle.bfloat16_to_float64(kb), mmca_oracle.bfloat16_to_float64(vb), "bfloat16"


def test_variant_and_policy_names():
    assert mmca.variants == ("causal", "mmca", "mmca_reference", "causal_cross")
    assert mmca.policies == ("all", "preceding", "latest")
    assert mmca.impls == ("fused", "reference")
    assert mmca.kv_dtypes == ("float32", "float16", "bfloat16")
    assert mmca.default_num_threads() >= 1


@pytest.mark.parametrize("variant,policy", CASES, ids=CASE_IDS)
@pytest.mark.parametrize("impl", ["fused", "reference"])
@pytest.mark.parametrize("kv_dtype", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("explicit", [False, True], ids=["runs", "ids+lens"])
def test_matches_oracle(qkv, batch, variant, policy, impl, kv_dtype, explicit):
    q, k, v = qkv
    k_in, v_in, k64, v64, kv_kw = kv_arrays(k, v, kv_dtype)
    extra = {}
    if explicit:  # explicit image ids and lengths (q_lens == kv_lens: the prompt phase)
        extra = dict(image_ids=batch["image_ids"], kv_lens=batch["kv_lens"], q_lens=batch["kv_lens"])
    got = mmca.attention(q, k_in, v_in, batch["token_types"], variant, policy=policy, impl=impl,
                         kv_dtype=kv_kw, **extra)
    want = mmca_oracle.attention(q, k64, v64, batch["token_types"], variant, policy=policy, **extra)
    assert got.dtype == np.float32 and got.shape == q.shape
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("variant,policy", CASES, ids=CASE_IDS)
def test_fused_matches_reference(rng, batch, variant, policy):
    q, k, v = sample_data.random_qkv(rng, q_heads=6, kv_heads=3, dim=40)
    args = (q, k, v, batch["token_types"], variant)
    fused = mmca.attention(*args, policy=policy, image_ids=batch["image_ids"], scale=0.21)
    reference = mmca.attention(*args, policy=policy, image_ids=batch["image_ids"], scale=0.21, impl="reference")
    np.testing.assert_allclose(fused, reference, rtol=RTOL, atol=ATOL)
    want = mmca_oracle.attention(q, k, v, batch["token_types"], variant, policy=policy,
                                 image_ids=batch["image_ids"], scale=0.21)
    np.testing.assert_allclose(fused, want, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("variant,policy", CASES, ids=CASE_IDS)
@pytest.mark.parametrize("impl", ["fused", "reference"])
def test_queries_are_the_last_tokens(rng, batch, variant, policy, impl):
    """With q_lens < kv_lens the queries are the last q_lens[b] valid tokens (a decode step)."""
    q, k, v = sample_data.random_qkv(rng, q_len=3)
    kv_lens, q_lens = np.array([20, 27]), np.array([2, 3])
    got = mmca.attention(q, k, v, batch["token_types"], variant, policy=policy, impl=impl,
                         kv_lens=kv_lens, q_lens=q_lens)
    want = mmca_oracle.attention(q, k, v, batch["token_types"], variant, policy=policy,
                                 kv_lens=kv_lens, q_lens=q_lens)
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)
    assert not got[0, :, 2].any()  # row beyond q_lens[0]


def test_oracle_causal_and_mmca_match_torch(qkv, batch):
    """Checks the oracle itself against a second, mask-based implementation in torch."""
    torch = pytest.importorskip("torch")
    q, k, v = (torch.from_numpy(a).double() for a in qkv)
    types = torch.from_numpy(batch["token_types"])
    group = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
    scores = q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5  # (B, H, L, L)
    n = types.shape[1]
    lower = torch.ones(n, n).tril().bool()
    strict = torch.ones(n, n).tril(-1).bool()
    row_t, col_t = types[:, None, :, None], types[:, None, None, :]

    def softmax_term(mask):
        weights = torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=-1).nan_to_num(0.0)
        return weights @ v

    causal = softmax_term(lower & (col_t != 0) & (row_t != 0))
    text_row = row_t == 1
    mmca_out = (softmax_term(text_row & lower & (col_t == 1)) + softmax_term(text_row & strict & (col_t == 2))
                + softmax_term((row_t == 2) & torch.eye(n).bool()))
    np.testing.assert_allclose(mmca_oracle.attention(*qkv, batch["token_types"], "causal"), causal.numpy(),
                               rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(mmca_oracle.attention(*qkv, batch["token_types"], "mmca"), mmca_out.numpy(),
                               rtol=1e-12, atol=1e-12)


def test_paper_and_reference_mmca_agree_only_after_the_first_image(qkv, batch):
    """SPEC §2.3: the two MMCA definitions coincide on text rows after the first image and
    differ on image rows and on rows before the first image."""
    q, k, v = qkv
    types = batch["token_types"]
    paper = mmca.attention(q, k, v, types, "mmca")
    reference = mmca.attention(q, k, v, types, "mmca_reference")
    for b in range(types.shape[0]):
        seen_image = np.cumsum(types[b] == 2) - (types[b] == 2) > 0  # an image strictly before the row
        text_after = (types[b] == 1) & seen_image
        text_before = (types[b] == 1) & ~seen_image
        image_rows = types[b] == 2
        np.testing.assert_allclose(paper[b][:, text_after], reference[b][:, text_after], rtol=RTOL, atol=ATOL)
        for rows in (text_before, image_rows):
            if rows.any():
                assert np.abs(paper[b][:, rows] - reference[b][:, rows]).max() > 1e-3


def test_mmca_reference_degenerate_text_row_is_a_uniform_average(qkv, batch):
    """Row 2 of sequence 0 (text, no earlier image): text softmax + mean of V over keys 0..2 and
    every later image token (SPEC §2.3), spelled out by hand."""
    q, k, v = qkv
    types = batch["token_types"]
    out = mmca.attention(q, k, v, types, "mmca_reference")
    h, hk, j = 1, 0, 2  # query head 1 uses kv head 0 (4 query heads, 2 kv heads)
    scores = (k[0, hk, : j + 1].astype(np.float64) @ q[0, h, j]) / 4.0  # D = 16
    text = np.exp(scores - scores.max())
    text /= text.sum()
    uniform_keys = [0, 1, 2] + [p for p in range(j + 1, 27) if types[0, p] == 2]
    expected = text @ v[0, hk, : j + 1] + v[0, hk, uniform_keys].astype(np.float64).mean(axis=0)
    np.testing.assert_allclose(out[0, h, j], expected, rtol=RTOL, atol=ATOL)


def test_mmca_image_rows_are_their_own_values(qkv, batch):
    q, k, v = qkv
    types = batch["token_types"]
    out = mmca.attention(q, k, v, types, "mmca")
    for b in range(2):
        rows = np.nonzero(types[b] == 2)[0]
        np.testing.assert_allclose(out[b][:, rows], np.repeat(v[b], 2, axis=0)[:, rows], rtol=RTOL, atol=ATOL)
        assert not out[b][:, types[b] == 0].any()  # pad rows are 0


@pytest.mark.parametrize("num_threads", [1, 2, 3])
def test_thread_count_does_not_change_results(qkv, batch, num_threads):
    q, k, v = qkv
    one = mmca.attention(q, k, v, batch["token_types"], "mmca", num_threads=1)
    np.testing.assert_array_equal(mmca.attention(q, k, v, batch["token_types"], "mmca", num_threads=num_threads), one)


def test_metadata_dtypes_and_lists_are_accepted(qkv, batch):
    q, k, v = qkv
    types = batch["token_types"]
    want = mmca.attention(q, k, v, types.astype(np.int8), "causal_cross", policy="latest",
                          image_ids=batch["image_ids"].astype(np.int32))
    for t, ids in [(types.astype(np.uint8), batch["image_ids"].astype(np.int16)),
                   (types.tolist(), batch["image_ids"].tolist()),
                   (np.asfortranarray(types), batch["image_ids"][:, ::1].astype(np.int64))]:
        got = mmca.attention(q, k, v, t, "causal_cross", policy="latest", image_ids=ids)
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("variant,policy", CASES, ids=CASE_IDS)
@pytest.mark.parametrize("impl", ["fused", "reference"])
def test_pad_tokens_inside_a_sequence_belong_to_no_group(rng, variant, policy, impl):
    """Pad columns are never attended to, wherever they are; pad rows are 0."""
    types = sample_data.expand([(1, 3), (0, 2), (2, 4), (0, 1), (1, 3), (2, 3), (0, 2), (1, 4)])[None, :]
    q, k, v = sample_data.random_qkv(rng, batch=1, q_len=types.shape[1], kv_len=types.shape[1])
    got = mmca.attention(q, k, v, types, variant, policy=policy, impl=impl)
    want = mmca_oracle.attention(q, k, v, types, variant, policy=policy)
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)
    assert not got[0][:, types[0] == 0].any()
