"""mmca.synthetic_sample: images redrawn here with numpy from the returned shape specs (pixel
centres inside a disc, square or upward triangle filling 70% of the cell), answers recomputed from
the specs, determinism per (seed, index)."""
import numpy as np
import pytest

import mmca

COLOURS = {"red": (220, 40, 40), "green": (40, 180, 60), "blue": (40, 70, 220), "yellow": (230, 210, 40),
           "purple": (150, 60, 190), "orange": (240, 140, 30)}
WORDS = ["zero", "one", "two", "three", "four"]


def draw(shapes, size=56, grid=2):
    img = np.full((size, size, 3), 128, np.uint8)
    cell = size / grid
    half = 0.35 * cell
    y, x = np.mgrid[0:size, 0:size] + 0.5
    for s in shapes:
        dy, dx = y - (s["row"] + 0.5) * cell, x - (s["col"] + 0.5) * cell
        if s["shape"] == "circle":
            m = dx * dx + dy * dy <= half * half
        elif s["shape"] == "square":
            m = (np.abs(dx) <= half) & (np.abs(dy) <= half)
        else:
            m = (dy >= -half) & (dy <= half) & (np.abs(dx) <= (dy + half) / 2)
        img[m] = COLOURS[s["colour"]]
    return img


@pytest.mark.parametrize("seed", [0, 5])
def test_images_and_answers_follow_the_specs(seed):
    for index in range(60):
        s = mmca.synthetic_sample(seed, index)
        assert len(s["images"]) == len(s["shapes"]) == sum(r["images"] for r in s["rounds"])
        for img, shapes in zip(s["images"], s["shapes"]):
            assert img.dtype == np.uint8 and img.shape == (56, 56, 3)
            np.testing.assert_array_equal(img, draw(shapes))
        shown = 0
        for r in s["rounds"]:
            shown += r["images"]
            assert max(r["about"]) < shown
            a = s["shapes"][r["about"][0]]
            if r["kind"] == "colour":
                assert r["answer"] == a[0]["colour"]
            elif r["kind"] == "shape":
                assert r["answer"] == a[0]["shape"]
            elif r["kind"] == "count":
                assert r["answer"] == WORDS[len(a)]
            elif r["kind"] == "compare":
                i, j = r["about"]
                assert r["answer"] == f"image {(i if len(s['shapes'][i]) > len(s['shapes'][j]) else j) + 1}"


def test_deterministic_and_checked():
    a, b = mmca.synthetic_sample(3, 17), mmca.synthetic_sample(3, 17)
    assert a["rounds"] == b["rounds"] and all((x == y).all() for x, y in zip(a["images"], b["images"]))
    assert mmca.synthetic_sample(4, 17)["rounds"] != a["rounds"] or mmca.synthetic_sample(4, 17)["shapes"] != a["shapes"]
    with pytest.raises(ValueError, match="max_shapes"):
        mmca.synthetic_sample(0, 0, max_shapes=5)
