"""Tests for core.data.imageio: every file is generated here, in memory, with known answers."""
from __future__ import annotations

import io
import random
import struct
import time
import warnings
import zipfile
import zlib

import numpy as np
import pytest
from PIL import Image, ImageFile, features

from core.errors import InputError
from core.data.imageio import (
    MAX_BYTES,
    MAX_PIXELS,
    decode_image,
    decode_many,
    image_fingerprint,
)

HAS_WEBP = features.check("webp")
needs_webp = pytest.mark.skipif(not HAS_WEBP, reason="Pillow built without WebP support")


# --------------------------------------------------------------------------- helpers

def encode(img: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kwargs)
    return buf.getvalue()


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    crc = zlib.crc32(kind + payload) & 0xFFFFFFFF
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)


def handmade_png(width: int, height: int, depth: int, color_type: int, raw: bytes) -> bytes:
    """A PNG written byte by byte: signature, IHDR, one IDAT of ``raw`` scanlines, IEND."""
    ihdr = struct.pack(">IIBBBBB", width, height, depth, color_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr)
            + png_chunk(b"IDAT", zlib.compress(raw)) + png_chunk(b"IEND", b""))


def pixels(img: Image.Image) -> np.ndarray:
    return np.asarray(img)


def noise(size: tuple[int, int], seed: int = 0, mode: str = "RGB") -> Image.Image:
    bands = len(mode)
    arr = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], bands), np.uint8)
    return Image.fromarray(arr if bands > 1 else arr[..., 0], mode)


def assert_loaded_rgb(img: Image.Image) -> None:
    assert isinstance(img, Image.Image)
    assert img.mode == "RGB"
    assert img.width > 0 and img.height > 0
    assert len(img.tobytes()) == img.width * img.height * 3  # pixels really in memory


def rejected(data: bytes, name: str = "bad.file") -> str:
    """Decode ``data`` expecting InputError; return the message (which names the file)."""
    with pytest.raises(InputError) as info:
        decode_image(data, name)
    message = str(info.value)
    assert name in message
    return message


# --------------------------------------------------------------------------- valid images

def test_rgb_png_and_jpeg_roundtrip():
    img = noise((17, 9), seed=1)
    out = decode_image(encode(img, "PNG"), "a.png")
    assert_loaded_rgb(out)
    assert np.array_equal(pixels(out), pixels(img))
    jpg = decode_image(encode(Image.new("RGB", (16, 8), (10, 200, 30)), "JPEG", quality=95))
    assert jpg.size == (16, 8)
    assert np.abs(pixels(jpg).astype(int) - (10, 200, 30)).max() <= 3


def test_wrong_extension_is_decoded_by_content():
    data = encode(Image.new("RGB", (3, 2), (1, 2, 3)), "PNG")
    out = decode_image(data, "holiday.jpg")
    assert out.getpixel((0, 0)) == (1, 2, 3)


def test_grayscale_value_is_repeated_in_each_channel():
    out = decode_image(encode(Image.new("L", (4, 3), 77), "PNG"))
    assert out.getpixel((2, 1)) == (77, 77, 77)


def test_one_bit_image():
    img = Image.new("1", (4, 2), 0)
    img.putpixel((1, 0), 1)
    out = decode_image(encode(img, "PNG"))
    assert out.getpixel((0, 0)) == (0, 0, 0)
    assert out.getpixel((1, 0)) == (255, 255, 255)


def test_16bit_grayscale_png_is_scaled_not_clipped():
    img = Image.new("I;16", (4, 1))
    for x, v in enumerate((65535, 32768, 77 * 257, 0)):
        img.putpixel((x, 0), v)
    data = encode(img, "PNG")
    assert data[24] == 16  # IHDR bit depth: really a 16-bit PNG
    out = pixels(decode_image(data))[0, :, 0]
    assert out[0] == 255
    assert abs(int(out[1]) - 128) <= 1
    assert out[2] == 77
    assert out[3] == 0


def test_16bit_rgb_png_handmade():
    row = b"\x00" + struct.pack(">HHH", 65535, 32768, 0)
    out = decode_image(handmade_png(1, 1, 16, 2, row))
    r, g, b = out.getpixel((0, 0))
    assert r == 255 and abs(g - 128) <= 1 and b == 0


def test_int32_image_outside_16bit_range_is_stretched():
    img = Image.fromarray(np.array([[-100, 49_950, 100_000]], dtype=np.int32))
    assert img.mode == "I"
    out = pixels(decode_image(encode(img, "TIFF")))[0, :, 0]
    assert list(out) == [0, 128, 255]


@pytest.mark.parametrize(
    "values, expected",
    [
        ([0.0, 0.5, 1.0], [0, 128, 255]),            # fractions of white
        ([0.0, 77.0, 200.0], [0, 77, 200]),          # 8-bit levels
        ([-1.0, 0.0, 1000.0], [0, 0, 255]),          # anything else: min-max
        ([float("nan"), 0.25, float("inf")], [0, 64, 255]),
    ],
)
def test_float_image(values, expected):
    img = Image.fromarray(np.array([values], dtype=np.float32))
    assert img.mode == "F"
    out = pixels(decode_image(encode(img, "TIFF")))[0, :, 0]
    assert np.abs(out.astype(int) - expected).max() <= 1


def test_rgba_transparent_and_half_alpha_over_white():
    img = Image.new("RGBA", (3, 1), (0, 0, 255, 255))
    img.putpixel((0, 0), (255, 0, 0, 0))      # fully transparent red
    img.putpixel((1, 0), (255, 0, 0, 128))    # half-transparent red
    out = decode_image(encode(img, "PNG"))
    assert out.getpixel((0, 0)) == (255, 255, 255)
    r, g, b = out.getpixel((1, 0))
    assert r == 255 and abs(g - 128) <= 1 and abs(b - 128) <= 1
    assert out.getpixel((2, 0)) == (0, 0, 255)


def test_la_image_over_white():
    img = Image.new("LA", (2, 1), (0, 255))
    img.putpixel((0, 0), (0, 0))
    out = decode_image(encode(img, "PNG"))
    assert out.getpixel((0, 0)) == (255, 255, 255)
    assert out.getpixel((1, 0)) == (0, 0, 0)


def test_palette_image_with_and_without_transparency():
    img = Image.new("P", (3, 1), 0)
    img.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * (253 * 3))
    img.putpixel((1, 0), 1)
    img.putpixel((2, 0), 2)
    plain = decode_image(encode(img, "PNG"))
    assert [plain.getpixel((x, 0)) for x in range(3)] == [(255, 0, 0), (0, 255, 0), (0, 0, 255)]
    data = encode(img, "PNG", transparency=1)
    assert Image.open(io.BytesIO(data)).mode == "P"
    out = decode_image(data)
    assert [out.getpixel((x, 0)) for x in range(3)] == [(255, 0, 0), (255, 255, 255), (0, 0, 255)]


def test_cmyk_jpeg_is_converted():
    data = encode(Image.new("CMYK", (16, 16), (0, 255, 255, 0)), "JPEG", quality=95)
    assert Image.open(io.BytesIO(data)).mode == "CMYK"
    out = decode_image(data)
    assert np.abs(pixels(out).astype(int) - (255, 0, 0)).max() <= 8


def test_exif_orientation_6_rotates_clockwise():
    img = Image.new("RGB", (40, 20), (0, 0, 255))
    img.paste((255, 0, 0), (0, 0, 8, 8))      # red block at the top-left corner
    exif = Image.Exif()
    exif[0x0112] = 6                          # Orientation: rotate 90 degrees clockwise
    out = decode_image(encode(img, "JPEG", quality=95, exif=exif.tobytes()), "phone.jpg")
    assert out.size == (20, 40)
    top_right = np.array(out.getpixel((17, 2)))
    assert np.abs(top_right - (255, 0, 0)).max() <= 20
    for corner in ((2, 2), (2, 37), (17, 37)):
        assert np.abs(np.array(out.getpixel(corner)) - (0, 0, 255)).max() <= 20


@needs_webp
def test_webp_lossless_and_alpha():
    img = noise((8, 6), seed=2)
    out = decode_image(encode(img, "WEBP", lossless=True), "x.webp")
    assert np.array_equal(pixels(out), pixels(img))
    rgba = Image.new("RGBA", (2, 1), (0, 255, 0, 255))
    rgba.putpixel((0, 0), (0, 0, 0, 0))
    out = decode_image(encode(rgba, "WEBP", lossless=True))
    assert out.getpixel((0, 0)) == (255, 255, 255)
    assert out.getpixel((1, 0)) == (0, 255, 0)


def test_animated_gif_gives_first_frame():
    frames = [Image.new("RGB", (6, 4), (255, 0, 0)), Image.new("RGB", (6, 4), (0, 0, 255))]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100)
    assert Image.open(io.BytesIO(data)).n_frames == 2
    out = decode_image(data, "anim.gif")
    assert_loaded_rgb(out)
    assert np.all(pixels(out) == (255, 0, 0))


def test_result_is_independent_of_the_input_buffer():
    data = bytearray(encode(Image.new("RGB", (2, 2), (9, 8, 7)), "PNG"))
    out = decode_image(data)
    data[:] = b"\x00" * len(data)
    assert out.getpixel((1, 1)) == (9, 8, 7)


# --------------------------------------------------------------------------- refusals

def test_zero_bytes():
    assert "empty" in rejected(b"", "empty.png")


def test_not_bytes():
    rejected(None, "nothing.png")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "data, hint",
    [
        (b"hello, this is a shopping list\nmilk\neggs\n", "text"),
        (b"%PDF-1.4\n1 0 obj\n<< /Type /Catalog >>\nendobj\ntrailer\n<<>>\n%%EOF\n", "PDF"),
        (b"<svg xmlns='http://www.w3.org/2000/svg'></svg>", "SVG"),
        (random.Random(7).randbytes(4096), "not an image"),
    ],
    ids=["text", "pdf", "svg", "random"],
)
def test_non_images(data, hint):
    assert hint in rejected(data, "thing.png")


def test_zip_archive():
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("image.png", "not really")
    assert "ZIP" in rejected(buf.getvalue(), "photos.zip")


def test_oversize_file():
    message = rejected(b"\x00" * (MAX_BYTES + 1), "huge.png")
    assert f"{MAX_BYTES // 2**20} MiB" in message


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_truncated_files_are_rejected(fmt):
    data = encode(noise((64, 64), seed=3), fmt)
    assert decode_image(data).size == (64, 64)
    message = rejected(data[: len(data) // 2], f"cut.{fmt.lower()}")
    assert "cut short" in message
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


@pytest.mark.parametrize(
    "width, height",
    [
        (10_000, 5_000),        # over our limit, under Pillow's warning threshold
        (10_000, 10_000),       # triggers Pillow's DecompressionBombWarning
        (100_000, 100_000),     # triggers Pillow's DecompressionBombError
    ],
)
def test_decompression_bomb_header_is_refused_before_decoding(width, height):
    data = handmade_png(width, height, 8, 0, b"\x00" * 16)
    start = time.perf_counter()
    message = rejected(data, "bomb.png")
    assert time.perf_counter() - start < 1.0
    assert f"{MAX_PIXELS:,}" in message


@pytest.mark.parametrize("action", ["error", "ignore", "default"])
def test_bomb_is_refused_whatever_the_warning_filters(action):
    data = handmade_png(10_000, 10_000, 8, 0, b"\x00" * 16)
    with warnings.catch_warnings():
        warnings.simplefilter(action)
        before = list(warnings.filters)
        rejected(data, "bomb.png")
        assert warnings.filters == before


# --------------------------------------------------------------------------- batch, hash

def test_decode_many_keeps_good_files_and_reports_each_bad_one():
    good = encode(Image.new("RGB", (2, 2), (1, 1, 1)), "PNG")
    files = [("a.png", good), ("b.txt", b"text"), ("c.png", good), ("d.png", b"")]
    images, errors = decode_many(files)
    assert [n for n, _ in images] == ["a.png", "c.png"]
    assert all(img.mode == "RGB" for _, img in images)
    assert [n for n, _ in errors] == ["b.txt", "d.png"]
    assert "'b.txt'" in errors[0][1] and "'d.png'" in errors[1][1]


def test_image_fingerprint():
    img = noise((5, 4), seed=4)
    fp = image_fingerprint(decode_image(encode(img, "PNG")))
    assert len(fp) == 16 and int(fp, 16) >= 0
    assert fp == image_fingerprint(img.copy())
    assert fp == image_fingerprint(decode_image(encode(img, "BMP")))
    other = img.copy()
    other.putpixel((0, 0), (0, 0, 0) if img.getpixel((0, 0)) != (0, 0, 0) else (1, 1, 1))
    assert image_fingerprint(other) != fp
    tall, wide = Image.new("RGB", (2, 3)), Image.new("RGB", (3, 2))
    assert image_fingerprint(tall) != image_fingerprint(wide)


# --------------------------------------------------------------------------- fuzz

def _fuzz_seeds() -> list[bytes]:
    base = noise((24, 16), seed=5, mode="RGBA")
    seeds = [
        encode(base, "PNG"),
        encode(base.convert("RGB"), "JPEG", quality=80),
        encode(base.convert("RGB"), "JPEG", quality=80, progressive=True),
        encode(base.convert("P"), "GIF", save_all=True,
               append_images=[noise((24, 16), seed=6).convert("P")]),
    ]
    if HAS_WEBP:
        seeds.append(encode(base, "WEBP", quality=70))
    return seeds


def _mutate(data: bytes, rng: random.Random) -> bytes:
    buf = bytearray(data or b"\x00")
    kind = rng.randrange(5)
    if kind == 0:                                   # flip a few random bits
        for _ in range(rng.randint(1, 8)):
            buf[rng.randrange(len(buf))] ^= 1 << rng.randrange(8)
    elif kind == 1:                                 # truncate anywhere
        del buf[rng.randrange(len(buf)):]
    elif kind == 2:                                 # insert random bytes
        at = rng.randrange(len(buf) + 1)
        buf[at:at] = rng.randbytes(rng.randint(1, 32))
    elif kind == 3:                                 # overwrite a run with random bytes
        at = rng.randrange(len(buf))
        n = rng.randint(1, 16)
        buf[at:at + n] = rng.randbytes(n)
    else:                                           # damage the header region
        for _ in range(rng.randint(1, 4)):
            buf[rng.randrange(min(len(buf), 64))] = rng.randrange(256)
    return bytes(buf)


def test_fuzz_mutated_files_only_give_rgb_or_input_error():
    rng = random.Random(20261125)
    seeds = _fuzz_seeds()
    outcomes = {"ok": 0, "input_error": 0}
    start = time.perf_counter()
    for case in range(300):
        data = _mutate(seeds[case % len(seeds)], rng)
        try:
            img = decode_image(data, f"fuzz-{case}")
        except InputError:
            outcomes["input_error"] += 1
            continue
        except Exception as exc:  # noqa: BLE001 - report which case broke the contract
            pytest.fail(f"case {case}: {type(exc).__name__} escaped: {exc}")
        assert_loaded_rgb(img)
        outcomes["ok"] += 1
    assert time.perf_counter() - start < 20
    assert outcomes["ok"] > 0 and outcomes["input_error"] > 0
