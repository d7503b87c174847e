"""Images: decoding and preprocessing against PIL (Debian's python3-pil, Pillow 9.4).

The oracle is PIL itself, used the way the reference pipelines use it:
  * decoding: Image.open(path).convert("RGB");
  * resizing: Image.resize((w, h), Image.BICUBIC);
  * shortest_edge_crop: transformers 4.33.3 CLIPImageProcessor's steps written out with PIL and
    numpy here (long side int(size * long / short), crop at ((h - ch) // 2, (w - cw) // 2),
    x * (1/255) in float64 cast to float32, then (x - mean) / std in float32); when transformers
    is importable (the .venv of scripts/setup.sh), CLIPImageProcessor itself as well;
  * direct_square: QWen-VL's torchvision Resize((448, 448), BICUBIC), which on a PIL image is
    img.resize((448, 448), Image.BICUBIC).
"""

import io
import os
import pathlib
import struct
import zlib

import numpy as np
import pytest

import mmca

PIL = pytest.importorskip("PIL")
from PIL import Image  # noqa: E402

CLIP_MEAN = np.array([0.48145466, 0.4578275, 0.40821073], dtype=np.float32)
CLIP_STD = np.array([0.26862954, 0.26130258, 0.27577711], dtype=np.float32)

SIZES = [(300, 200), (200, 300), (640, 480), (448, 448), (97, 131), (1000, 333), (100, 80)]  # (width, height)
MODES = ["L", "LA", "RGB", "RGBA", "P"]


def make_image(width, height, mode, content, seed=0):
    """A PIL image of the given mode: uniform noise or smooth gradients (with an alpha ramp)."""
    rng = np.random.default_rng(seed + width * 7 + height * 13)
    if content == "noise":
        rgba = rng.integers(0, 256, (height, width, 4), dtype=np.uint8)
    else:
        yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
        rgba = np.stack(
            [
                255 * xx / max(width - 1, 1),
                255 * yy / max(height - 1, 1),
                127.5 + 127.5 * np.sin(xx / 9.0 + yy / 13.0),
                255 * (xx + yy) / max(width + height - 2, 1),
            ],
            axis=-1,
        ).round().astype(np.uint8)
    image = Image.fromarray(rgba, "RGBA")
    if mode == "P":
        return image.convert("RGB").quantize(colors=97)
    return image.convert(mode)


def pil_rgb(path):
    with Image.open(path) as im:
        return im.convert("RGB")


def normalise(pixels_hwc_uint8, mean=CLIP_MEAN, std=CLIP_STD):
    """transformers' rescale + normalize: float64 product cast to float32, float32 (x - mean) / std; CHW."""
    rescaled = (pixels_hwc_uint8 * (1 / 255)).astype(np.float32)
    return ((rescaled - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)).transpose(2, 0, 1)


def shortest_edge_reference(rgb, size, crop):
    """The CLIPImageProcessor pipeline on a PIL RGB image, in uint8 HWC (before normalisation)."""
    width, height = rgb.size
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = size, int(size * long / short)
    new_h, new_w = (new_long, new_short) if width <= height else (new_short, new_long)
    resized = np.asarray(rgb.resize((new_w, new_h), Image.BICUBIC))
    top, left = (new_h - crop) // 2, (new_w - crop) // 2
    assert top >= 0 and left >= 0
    return resized[top : top + crop, left : left + crop]


@pytest.fixture(scope="module")
def image_files(tmp_path_factory):
    """PNG files of every (size, mode, content) and JPEG files of the modes JPEG can hold."""
    root = tmp_path_factory.mktemp("images")
    files = {}
    for width, height in SIZES:
        for mode in MODES:
            for content in ["noise", "gradient"]:
                image = make_image(width, height, mode, content)
                png = root / f"{width}x{height}_{mode}_{content}.png"
                image.save(png)
                files[(width, height, mode, content, "png")] = png
                if mode in ("L", "RGB"):
                    jpg = root / f"{width}x{height}_{mode}_{content}.jpg"
                    image.save(jpg, quality=90)
                    files[(width, height, mode, content, "jpg")] = jpg
    return files


# ------------------------------------------------------------------------------------------
# Decoding
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_png_decode_equals_pil_exactly(image_files, mode):
    for (w, h, m, content, ext), path in image_files.items():
        if m != mode or ext != "png":
            continue
        got = mmca.load_image(path)
        want = np.asarray(pil_rgb(path))
        assert got.dtype == np.uint8 and got.shape == (h, w, 3)
        np.testing.assert_array_equal(got, want, err_msg=str(path))


def test_png_with_transparency_and_16_bits(tmp_path):
    # A palette image with a transparent entry, and an RGBA image with alpha 0 everywhere: the
    # colours are kept (alpha dropped, not composited onto black or white).
    palette = make_image(40, 30, "P", "noise")
    palette.info["transparency"] = 3
    path = tmp_path / "p_trns.png"
    palette.save(path, transparency=3)
    np.testing.assert_array_equal(mmca.load_image(path), np.asarray(pil_rgb(path)))
    rgba = np.asarray(make_image(20, 10, "RGBA", "gradient")).copy()
    rgba[..., 3] = 0
    path = tmp_path / "clear.png"
    Image.fromarray(rgba, "RGBA").save(path)
    np.testing.assert_array_equal(mmca.load_image(path), rgba[..., :3])


# JPEG: stb_image and libjpeg-turbo (PIL) differ in their inverse DCT, chroma upsampling and
# colour conversion. Measured on the images of this file (quality 90, 4:2:0): grey at most 1
# level, colour at most 3 levels, mean difference below 0.11 levels.
JPEG_MAX_DIFF = {"L": 1, "RGB": 3}


@pytest.mark.parametrize("mode", ["L", "RGB"])
def test_jpeg_decode_close_to_pil(image_files, mode):
    worst, mean = 0, []
    for (w, h, m, content, ext), path in image_files.items():
        if m != mode or ext != "jpg":
            continue
        got = mmca.load_image(path).astype(np.int32)
        want = np.asarray(pil_rgb(path)).astype(np.int32)
        assert got.shape == want.shape == (h, w, 3)
        diff = np.abs(got - want)
        worst = max(worst, int(diff.max()))
        mean.append(diff.mean())
    print(f"JPEG {mode}: max |mmca - PIL| = {worst} levels, mean {max(mean):.3f}")
    assert worst <= JPEG_MAX_DIFF[mode]
    assert max(mean) < 0.15


@pytest.mark.parametrize("options", [dict(quality=95, subsampling=0), dict(quality=75, progressive=True)])
def test_jpeg_variants_close_to_pil(tmp_path, options):
    path = tmp_path / "variant.jpg"
    make_image(257, 143, "RGB", "gradient").save(path, **options)
    diff = np.abs(mmca.load_image(path).astype(int) - np.asarray(pil_rgb(path)).astype(int))
    assert diff.max() <= 3, diff.max()


def test_decode_from_memory_equals_file(image_files):
    path = image_files[(97, 131, "RGBA", "noise", "png")]
    data = pathlib.Path(path).read_bytes()
    want = mmca.load_image(path)
    for buffer in [data, bytearray(data), memoryview(data), np.frombuffer(data, dtype=np.uint8)]:
        np.testing.assert_array_equal(mmca.decode_image(buffer), want)
    np.testing.assert_array_equal(mmca.load_image(pathlib.Path(path)), want)  # os.PathLike
    np.testing.assert_array_equal(mmca.load_image(str(path)), want)


def png_bytes(width, height, color_type, rows):
    """A PNG written by hand (8-bit, no filtering), for headers PIL would not write."""

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, color_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def test_decode_errors(tmp_path):
    missing = tmp_path / "missing.png"
    with pytest.raises(ValueError, match=r"argument 'path': got '.*missing\.png' \(No such file"):
        mmca.load_image(missing)

    good = io.BytesIO()
    make_image(64, 64, "RGB", "noise").save(good, format="PNG")
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(good.getvalue()[: len(good.getvalue()) // 2])
    with pytest.raises(ValueError, match=r"truncated\.png': \d+ bytes that stb_image could not decode \(.+\)"):
        mmca.load_image(truncated)

    good_jpg = io.BytesIO()
    make_image(64, 64, "RGB", "noise").save(good_jpg, format="JPEG")
    with pytest.raises(ValueError, match=r"argument 'data': got \d+ bytes that stb_image could not decode"):
        mmca.decode_image(good_jpg.getvalue()[:1000])

    garbage = tmp_path / "garbage.jpg"
    garbage.write_bytes(b"definitely not an image")
    with pytest.raises(ValueError, match=r"garbage\.jpg': 23 bytes that stb_image could not decode"):
        mmca.load_image(garbage)

    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match=r"empty\.png': 0 bytes"):
        mmca.load_image(empty)
    with pytest.raises(ValueError, match=r"argument 'data': got 0 bytes"):
        mmca.decode_image(b"")

    zero = tmp_path / "zero.png"
    zero.write_bytes(png_bytes(0, 3, 0, b"\x00\x00\x00"))
    with pytest.raises(ValueError, match=r"zero\.png': .*0-pixel"):
        mmca.load_image(zero)

    with pytest.raises(ValueError, match="not a regular file"):
        mmca.load_image(tmp_path)
    with pytest.raises(TypeError, match=r"mmca.load_image: argument 'path'"):
        mmca.load_image(42)
    with pytest.raises(TypeError, match=r"mmca.decode_image: argument 'data'"):
        mmca.decode_image("not bytes")
    with pytest.raises(TypeError, match=r"itemsize 1"):
        mmca.decode_image(np.zeros(10, dtype=np.float32))


# ------------------------------------------------------------------------------------------
# Resizing and preprocessing
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("width,height", SIZES)
def test_resize_equals_pil_exactly(image_files, width, height):
    for content in ["noise", "gradient"]:
        rgb = pil_rgb(image_files[(width, height, "RGB", content, "png")])
        pixels = np.asarray(rgb)
        for out_w, out_h in [(448, 448), (224, 301), (width * 2 + 1, height + 3), (max(width // 3, 1), max(height // 5, 1))]:
            want = np.asarray(rgb.resize((out_w, out_h), Image.BICUBIC))
            got = mmca.resize_image(pixels, out_h, out_w)
            np.testing.assert_array_equal(got, want, err_msg=f"{width}x{height} -> {out_w}x{out_h} {content}")


def test_resize_tiny_and_extreme_aspects():
    rng = np.random.default_rng(3)
    for h, w, oh, ow in [(1, 1, 5, 3), (1, 9, 4, 2), (7, 1, 2, 6), (2, 2000, 3, 17), (5, 5, 1, 1)]:
        pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        want = np.asarray(Image.fromarray(pixels).resize((ow, oh), Image.BICUBIC))
        np.testing.assert_array_equal(mmca.resize_image(pixels, oh, ow, num_threads=2), want)


@pytest.mark.parametrize("width,height", SIZES)
@pytest.mark.parametrize("preset,size", [("visualchat-448", 448), ("clip-224", 224), ("clip-336", 336)])
def test_shortest_edge_crop_equals_pil_pipeline(image_files, width, height, preset, size):
    for mode in MODES:
        path = image_files[(width, height, mode, "noise", "png")]
        rgb = pil_rgb(path)
        want_pixels = shortest_edge_reference(rgb, size, size)
        want = normalise(want_pixels)
        got = mmca.preprocess_image(np.asarray(rgb), preset)
        assert got.dtype == np.float32 and got.shape == (3, size, size)
        # Same pixels before normalisation: a difference of one level would be 1/255/std >= 0.0142.
        assert np.abs(got - want).max() < 0.5 / 255 / CLIP_STD.max()
        # And the same float32 arithmetic as transformers: bit-identical.
        np.testing.assert_array_equal(got, want)
        # From the file: the decode is exact for PNG, so the result is too.
        np.testing.assert_array_equal(mmca.preprocess_image(path, preset), want)


@pytest.mark.parametrize("width,height", SIZES)
def test_direct_square_equals_torchvision_style_resize(image_files, width, height):
    rgb = pil_rgb(image_files[(width, height, "RGBA", "gradient", "png")])
    want = normalise(np.asarray(rgb.resize((448, 448), Image.BICUBIC)))
    np.testing.assert_array_equal(mmca.preprocess_image(np.asarray(rgb), "qwen-vl-448"), want)
    np.testing.assert_array_equal(mmca.preprocess_image(np.asarray(rgb), mode="direct_square", size=448), want)


def test_preprocess_jpeg_files_close_to_pil(image_files):
    """JPEG decoders differ by up to 3 levels; the bicubic resize can widen that a little.

    Each pass is a weighted sum whose weights add to 1 but whose absolute values add to at most
    about 1.2 (the negative lobes), and each pass rounds to 8 bits: a decode difference of 3
    becomes at most about 3 * 1.2 * 1.2 + 1 < 5.4 levels. Measured: 4 levels.
    """
    worst = 0.0
    for (w, h, mode, content, ext), path in image_files.items():
        if ext != "jpg":
            continue
        want = normalise(shortest_edge_reference(pil_rgb(path), 448, 448))
        got = mmca.preprocess_image(path)
        levels = np.abs(got - want) * CLIP_STD[:, None, None] * 255
        worst = max(worst, float(levels.max()))
    print(f"JPEG preprocess: max |mmca - PIL| = {worst:.2f} levels")
    assert worst <= 5.01


def test_preprocess_options_and_out(image_files):
    rgb = np.asarray(pil_rgb(image_files[(640, 480, "RGB", "gradient", "png")]))
    # A rectangular crop, custom statistics.
    mean, std = (0.5, 0.25, 0.0), (0.5, 0.5, 1.0)
    got = mmca.preprocess_image(rgb, size=256, crop=(200, 240), mean=mean, std=std)
    resized = np.asarray(Image.fromarray(rgb).resize((341, 256), Image.BICUBIC))  # int(256 * 640 / 480) = 341
    top, left = (256 - 200) // 2, (341 - 240) // 2
    want = normalise(resized[top : top + 200, left : left + 240], mean, std)
    np.testing.assert_array_equal(got, want)
    # out= is written in place and returned.
    out = np.full((3, 224, 224), np.nan, dtype=np.float32)
    result = mmca.preprocess_image(rgb, "clip-224", out=out)
    assert result is out
    np.testing.assert_array_equal(out, mmca.preprocess_image(rgb, "clip-224"))


def test_crop_offsets_round_down(image_files):
    """(h - crop) // 2: for 451 - 448 = 3 the crop starts at row 1 (torchvision would start at 2)."""
    rng = np.random.default_rng(5)
    pixels = rng.integers(0, 256, (451, 448, 3), dtype=np.uint8)
    got = mmca.preprocess_image(pixels, size=448, crop=448)
    # Shortest edge 448 keeps 451 x 448 (int(448 * 451 / 448) = 451): no resize, only the crop.
    np.testing.assert_array_equal(got, normalise(pixels[1:449]))


def test_padding_when_the_crop_is_larger():
    pixels = np.full((10, 10, 3), 200, dtype=np.uint8)
    got = mmca.preprocess_image(pixels, size=10, crop=(14, 12))
    padded = np.zeros((14, 12, 3), dtype=np.uint8)
    padded[2:12, 1:11] = 200  # placed at ((14 - 10) // 2, (12 - 10) // 2)
    np.testing.assert_array_equal(got, normalise(padded))


def test_matches_transformers_clip_image_processor(image_files):
    transformers = pytest.importorskip("transformers")
    for size in (224, 448):
        processor = transformers.CLIPImageProcessor(
            size={"shortest_edge": size}, crop_size={"height": size, "width": size}
        )
        for (w, h, mode, content, ext), path in image_files.items():
            if ext != "png" or content != "noise" or mode not in ("RGBA", "P"):
                continue
            with Image.open(path) as im:
                want = processor(im, return_tensors="np")["pixel_values"][0]
            np.testing.assert_array_equal(mmca.preprocess_image(path, size=size), want, err_msg=str(path))


def test_presets():
    assert mmca.image_presets == ("visualchat-448", "qwen-vl-448", "clip-224", "clip-336")
    p = mmca.image_preset("visualchat-448")
    assert p["mode"] == "shortest_edge_crop" and p["size"] == 448 and p["crop"] == (448, 448)
    np.testing.assert_allclose(p["mean"], CLIP_MEAN)
    np.testing.assert_allclose(p["std"], CLIP_STD)
    assert mmca.image_preset("qwen-vl-448")["mode"] == "direct_square"
    assert mmca.image_preset("clip-336")["output_size"] == (336, 336)
    with pytest.raises(ValueError, match=r"argument 'name': got 'clip-999'"):
        mmca.image_preset("clip-999")


def test_preprocess_errors():
    pixels = np.zeros((20, 30, 3), dtype=np.uint8)
    with pytest.raises(TypeError, match=r"mmca.preprocess_image: argument 'image': got dtype float32"):
        mmca.preprocess_image(pixels.astype(np.float32))
    with pytest.raises(ValueError, match=r"argument 'image': got shape \[20, 30, 4\]"):
        mmca.preprocess_image(np.zeros((20, 30, 4), dtype=np.uint8))
    with pytest.raises(ValueError, match=r"argument 'image': got 2 dimensions"):
        mmca.preprocess_image(np.zeros((20, 30), dtype=np.uint8))
    with pytest.raises(ValueError, match=r"argument 'image': got shape \[0, 30, 3\]"):
        mmca.preprocess_image(np.zeros((0, 30, 3), dtype=np.uint8))
    with pytest.raises(ValueError, match=r"not C-contiguous"):
        mmca.preprocess_image(np.zeros((30, 20, 3), dtype=np.uint8).transpose(1, 0, 2))
    with pytest.raises(TypeError, match=r"argument 'image'"):
        mmca.preprocess_image([[1, 2, 3]])
    with pytest.raises(ValueError, match=r"argument 'name': got 'clip-1'"):
        mmca.preprocess_image(pixels, "clip-1")
    with pytest.raises(ValueError, match=r"argument 'mode': got 'square'"):
        mmca.preprocess_image(pixels, mode="square")
    with pytest.raises(ValueError, match=r"argument 'size': got 0"):
        mmca.preprocess_image(pixels, size=0)
    with pytest.raises(ValueError, match=r"argument 'crop_width': got -1"):
        mmca.preprocess_image(pixels, crop=(5, -1))
    with pytest.raises(ValueError, match=r"argument 'std': got std\[2\] = 0"):
        mmca.preprocess_image(pixels, std=(1, 1, 0))
    with pytest.raises(ValueError, match=r"argument 'mean': got 2 values"):
        mmca.preprocess_image(pixels, mean=(1, 1))
    with pytest.raises(ValueError, match=r"argument 'out': got shape \[3, 448, 447\]"):
        mmca.preprocess_image(pixels, out=np.zeros((3, 448, 447), dtype=np.float32))
    with pytest.raises(TypeError, match=r"argument 'out': got dtype float64"):
        mmca.preprocess_image(pixels, out=np.zeros((3, 448, 448)))
    with pytest.raises(ValueError, match=r"argument 'out': got a read-only array"):
        out = np.zeros((3, 448, 448), dtype=np.float32)
        out.flags.writeable = False
        mmca.preprocess_image(pixels, out=out)
    with pytest.raises(ValueError, match=r"argument 'path': got '.*nowhere\.png'"):
        mmca.preprocess_image("/nonexistent/nowhere.png")
    with pytest.raises(ValueError, match=r"argument 'out_height': got 0"):
        mmca.resize_image(pixels, 0, 5)


# ------------------------------------------------------------------------------------------
# Hashing
# ------------------------------------------------------------------------------------------


def fnv1a_64(data):
    h = 0xCBF29CE484222325
    for byte in data:
        h = ((h ^ byte) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h


def test_image_hash_is_fnv1a_of_shape_and_pixels():
    rng = np.random.default_rng(11)
    pixels = rng.integers(0, 256, (9, 14, 3), dtype=np.uint8)
    expected = fnv1a_64(struct.pack("<QQ", 9, 14) + pixels.tobytes())
    assert mmca.image_hash(pixels) == expected
    changed = pixels.copy()
    changed[8, 13, 2] ^= 0x80
    assert mmca.image_hash(changed) != expected
    assert mmca.image_hash(pixels.reshape(14, 9, 3)) != expected  # same bytes, other shape
    with pytest.raises(TypeError, match=r"mmca.image_hash: argument 'image'"):
        mmca.image_hash(pixels.astype(np.int16))


def test_equal_images_hash_equal(image_files):
    path = image_files[(300, 200, "P", "gradient", "png")]
    a = mmca.load_image(path)
    b = mmca.decode_image(pathlib.Path(path).read_bytes())
    assert a is not b and mmca.image_hash(a) == mmca.image_hash(b)
