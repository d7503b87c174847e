#!/usr/bin/env python3
"""Ablation of mmca's attention variants on one interleaved text/image sequence.

Runs every variant on the same random inputs for a small sequence

    text 6, image 8, text 5, image 8, text 6      (33 tokens)

prints, per variant, how its output differs from the paper's MMCA (variant "mmca") on three
kinds of rows -- text before the first image, text after an image, image rows -- and draws the
attention weights of every variant as a grid of heat maps.

The weights come from the library itself: with V = identity (head dim D >= L, V[k] = e_k), output
row j is sum_k w_jk e_k, i.e. exactly the weight vector of row j. MMCA's text rows sum to 2 after
the first image (one softmax over text plus one over images); causal_cross leaves image rows empty.

    PYTHONPATH=build/python /usr/bin/python3 examples/ablation_attention.py --out ablation.png
"""

import argparse

import numpy as np

import mmca

SEGMENTS = [(1, 6), (2, 8), (1, 5), (2, 8), (1, 6)]  # (token type, count): 1 text, 2 image
VARIANTS = [  # (variant, image visibility policy)
    ("mmca", None),
    ("causal", None),
    ("mmca_reference", None),
    ("causal_cross", "all"),
    ("causal_cross", "preceding"),
    ("causal_cross", "latest"),
]
TYPE_LETTER = {0: "P", 1: "T", 2: "I"}
TYPE_COLOUR = {0: "grey", 1: "tab:blue", 2: "tab:orange"}


def token_types():
    """(L,) int8 token types of the example sequence."""
    return np.array([t for t, n in SEGMENTS for _ in range(n)], dtype=np.int8)


def row_kinds(types):
    """Boolean masks of the three kinds of rows compared in the table."""
    image_before = (np.cumsum(types == 2) - (types == 2)) > 0
    return {
        "text before first image": (types == 1) & ~image_before,
        "text after an image": (types == 1) & image_before,
        "image rows": types == 2,
    }


def label(variant, policy):
    return variant if policy is None else f"{variant} ({policy})"


def difference_table(rng, types, heads=4, kv_heads=2, dim=32):
    """Per variant and kind of row: max and mean |output - mmca output| over the rows of that kind."""
    length = len(types)
    q = rng.standard_normal((1, heads, length, dim), dtype=np.float32)
    k = rng.standard_normal((1, kv_heads, length, dim), dtype=np.float32)
    v = rng.standard_normal((1, kv_heads, length, dim), dtype=np.float32)
    tokens = types[None, :]
    baseline = mmca.attention(q, k, v, tokens, "mmca")
    rows = []
    for variant, policy in VARIANTS[1:]:
        out = mmca.attention(q, k, v, tokens, variant, policy=policy)
        for kind, mask in row_kinds(types).items():
            diff = np.abs(out[0][:, mask] - baseline[0][:, mask])
            rows.append((label(variant, policy), kind, float(diff.max()), float(diff.mean())))
    return rows


def print_table(rows):
    header = ("variant", "rows", "max |diff|", "mean |diff|")
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(2)]
    print("Difference from variant 'mmca' (paper MMCA), same random q, k, v:")
    print(f"{header[0]:<{widths[0]}}  {header[1]:<{widths[1]}}  {header[2]:>10}  {header[3]:>11}")
    print("-" * (widths[0] + widths[1] + 27))
    for variant, kind, max_diff, mean_diff in rows:
        print(f"{variant:<{widths[0]}}  {kind:<{widths[1]}}  {max_diff:>10.4f}  {mean_diff:>11.4f}")


def attention_weights(rng, types, dim=64):
    """{(variant, policy): (L, L) weights of one head}, computed by mmca with V = identity."""
    length = len(types)
    assert dim >= length, "V = identity needs head dim >= sequence length"
    q = rng.standard_normal((1, 1, length, dim), dtype=np.float32)
    k = rng.standard_normal((1, 1, length, dim), dtype=np.float32)
    v = np.zeros((1, 1, length, dim), dtype=np.float32)
    v[0, 0, np.arange(length), np.arange(length)] = 1.0  # V[k] = e_k
    tokens = types[None, :]
    return {
        (variant, policy): mmca.attention(q, k, v, tokens, variant, policy=policy)[0, 0, :, :length]
        for variant, policy in VARIANTS
    }


def plot(weights, types, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import PowerNorm

    length = len(types)
    boundaries = np.cumsum([n for _, n in SEGMENTS])[:-1] - 0.5
    fig, axes = plt.subplots(2, 3, figsize=(15, 10.5), constrained_layout=True)
    image = None
    for ax, ((variant, policy), w) in zip(axes.flat, weights.items()):
        # A square-root colour scale keeps small weights (the reference code's uniform rows) visible.
        image = ax.imshow(w, cmap="magma", norm=PowerNorm(gamma=0.5, vmin=0.0, vmax=1.0), interpolation="nearest")
        sums = w.sum(axis=1)
        ax.set_title(f"{label(variant, policy)}\nrow sums {sums.min():.0f}..{sums.max():.0f}", fontsize=11)
        ax.set_xlabel("key position (T text, I image)")
        ax.set_ylabel("query row (T text, I image)")
        ticks = np.arange(length)
        letters = [TYPE_LETTER[int(t)] for t in types]
        ax.set_xticks(ticks, letters, fontsize=6)
        ax.set_yticks(ticks, letters, fontsize=6)
        for tick_labels in (ax.get_xticklabels(), ax.get_yticklabels()):
            for tick, t in zip(tick_labels, types):
                tick.set_color(TYPE_COLOUR[int(t)])
        for b in boundaries:
            ax.axhline(b, color="white", linewidth=0.6, alpha=0.7)
            ax.axvline(b, color="white", linewidth=0.6, alpha=0.7)
    fig.colorbar(image, ax=axes, shrink=0.6, label="attention weight (one head, square-root scale)")
    fig.suptitle("mmca attention weights per variant: text 6, image 8, text 5, image 8, text 6", fontsize=13)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="ablation_attention.png", help="PNG file for the heat-map grid")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random inputs")
    args = parser.parse_args()

    rng = np.random.default_rng(args.seed)
    types = token_types()
    print_table(difference_table(rng, types))
    plot(attention_weights(rng, types), types, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
