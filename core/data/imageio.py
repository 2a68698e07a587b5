"""Decoding of user-supplied image files into loaded RGB images.

Every file a user drops in goes through :func:`decode_image`, which either returns a
fully loaded ``RGB`` :class:`PIL.Image.Image` or raises :class:`~core.errors.InputError`
with a message that names the file, says what is wrong and what to do. No other
exception type escapes.

Policy
------
* The format is detected from the content, never from the file name, and only a fixed
  set of common raster formats is accepted (:data:`ALLOWED_FORMATS`); formats that run
  external programs (EPS through Ghostscript) or that match almost any byte string
  (TGA) are refused.
* Size limits are checked before any pixel is decoded: :data:`MAX_BYTES` on the raw
  file, :data:`MAX_PIXELS` on the width x height declared in the header. Pillow's own
  decompression-bomb guard is turned into :class:`InputError` as well.
* Truncated files are rejected: ``ImageFile.LOAD_TRUNCATED_IMAGES`` is never set.
* Conversion to RGB: EXIF orientation is applied; transparency (alpha channel, palette
  or colour-key ``tRNS``) is composited over white; 16-bit data is scaled (not clipped)
  to 8 bits; animated files give their first frame.

Deviations: colour profiles (ICC) are ignored, so CMYK is converted with Pillow's naive
formula. Float images are mapped to 0..255 by a range heuristic (see
:func:`_float_to_uint8`).
"""
from __future__ import annotations

import hashlib
import io
import logging
import re
import warnings
from typing import Final

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from core.errors import InputError

logger = logging.getLogger(__name__)

MAX_BYTES: Final[int] = 25 * 1024 * 1024
"""Largest accepted file, in bytes (the same as ``server.maxUploadSize = 25`` MiB)."""

MAX_PIXELS: Final[int] = 40_000_000
"""Largest accepted width x height, checked on the header before decoding."""

ALLOWED_FORMATS: Final[tuple[str, ...]] = (
    "PNG", "JPEG", "GIF", "WEBP", "BMP", "TIFF", "PPM", "ICO", "AVIF",
)
"""Pillow format names tried when opening a file (JPEG also covers MPO photos)."""

_FORMATS_HINT = "PNG, JPEG, GIF, WebP, BMP or TIFF"
_WHITE = (255, 255, 255, 255)
_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})


def decode_image(data: bytes, name: str = "upload") -> Image.Image:
    """Decode the bytes of an image file into a fully loaded RGB image.

    Parameters
    ----------
    data : bytes
        The whole file content (``bytes``, ``bytearray`` or ``memoryview``).
    name : str
        The file name, used only in error messages (the format is sniffed from content).

    Returns
    -------
    PIL.Image.Image
        A new, loaded image of mode ``"RGB"``, not tied to any file.

    Raises
    ------
    InputError
        For anything that is not a usable image: empty, too large (bytes or pixels),
        not an image, unsupported format, truncated or damaged. Never anything else.
    """
    name = str(name)
    try:
        return _decode(data, name)
    except InputError:
        raise
    except MemoryError as exc:
        raise _error(name, "needs more memory to decode than is available",
                     "use a smaller image") from exc
    except Exception as exc:  # noqa: BLE001 - the contract is: InputError only
        raise _error(name, f"is damaged or cut short and cannot be decoded ({_short(exc)})",
                     f"re-export or re-download it, or save it again as {_FORMATS_HINT}"
                     ) from exc


def decode_many(
    files: list[tuple[str, bytes]],
) -> tuple[list[tuple[str, Image.Image]], list[tuple[str, str]]]:
    """Decode a batch of files; each bad file gets its own error, good ones go through.

    Parameters
    ----------
    files : list of (str, bytes)
        ``(name, content)`` pairs, e.g. from ``st.file_uploader(accept_multiple_files=True)``.

    Returns
    -------
    images : list of (str, PIL.Image.Image)
        The decoded RGB images, in input order.
    errors : list of (str, str)
        ``(name, message)`` for every file that could not be used, in input order.
    """
    images: list[tuple[str, Image.Image]] = []
    errors: list[tuple[str, str]] = []
    for name, data in files:
        try:
            images.append((name, decode_image(data, name)))
        except InputError as exc:
            errors.append((name, str(exc)))
    return images, errors


def image_fingerprint(img: Image.Image) -> str:
    """Short content hash of an image: sha256 of mode, size and pixel bytes, 16 hex chars.

    Two images with the same pixels give the same fingerprint whatever file they came
    from; the size is included so that e.g. 2x3 and 3x2 images never collide.
    """
    h = hashlib.sha256()
    h.update(f"{img.mode}:{img.width}x{img.height}:".encode())
    h.update(img.tobytes())
    return h.hexdigest()[:16]


# --------------------------------------------------------------------------- decoding

def _decode(data: bytes, name: str) -> Image.Image:
    raw = _check_bytes(data, name)
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        logger.warning("PIL.ImageFile.LOAD_TRUNCATED_IMAGES is True (set elsewhere): "
                       "truncated files may be accepted")
    # Pillow has no per-call switch for its bomb warning, so the warning filters are
    # changed for the duration of this call (process-wide state; restored on exit).
    # Other Pillow warnings are recorded and logged instead of failing the decode.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            with Image.open(io.BytesIO(raw), formats=ALLOWED_FORMATS) as im:
                _check_pixels(im.size, name)
                im.load()
                _check_pixels(im.size, name)
                rgb = _to_rgb(_apply_orientation(im, name), name)
                if rgb is im:
                    rgb = im.copy()
        except UnidentifiedImageError as exc:
            raise _error(name, _describe_unknown(raw),
                         f"upload a {_FORMATS_HINT} image") from exc
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise _too_many_pixels(name, _bomb_detail(exc)) from exc
    for w in caught:
        logger.debug("%s: Pillow warning while decoding: %s", name, w.message)
    return rgb


def _check_bytes(data: bytes, name: str) -> bytes:
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise _error(name, f"was given as {type(data).__name__}, not as file bytes",
                     "pass the file's content as bytes")
    size = memoryview(data).nbytes  # checked before any copy is made
    if size == 0:
        raise _error(name, "is empty (0 bytes)", "check the file and upload it again")
    if size > MAX_BYTES:
        raise _error(name, f"is {size:,} bytes ({size / 2**20:.1f} MiB), over the "
                           f"limit of {MAX_BYTES:,} bytes ({MAX_BYTES / 2**20:g} MiB)",
                     "resize or recompress it (e.g. save as JPEG) and upload it again")
    return bytes(data)


def _check_pixels(size: tuple[int, int], name: str) -> None:
    w, h = size
    if w <= 0 or h <= 0:
        raise _error(name, f"declares an empty image ({w}x{h} pixels)",
                     "re-export the image")
    if w * h > MAX_PIXELS:
        raise _too_many_pixels(name, f"it declares {w}x{h} = {w * h:,} pixels")


def _bomb_detail(exc: Exception) -> str:
    """'it declares N pixels' from Pillow's bomb message (the image object is not ours)."""
    found = re.search(r"\((\d+) pixels\)", str(exc))
    if found:
        return f"it declares {int(found.group(1)):,} pixels"
    return "its declared size is beyond Pillow's decompression-bomb limit"


def _too_many_pixels(name: str, detail: str) -> InputError:
    return _error(name, f"is too large: {detail}; the limit is {MAX_PIXELS:,} pixels "
                        f"(about {MAX_PIXELS / 1e6:.0f} megapixels)",
                  "resize it below the limit and upload it again")


def _error(name: str, what: str, todo: str) -> InputError:
    return InputError(f"'{name}' {what}. Please {todo}.")


def _short(exc: BaseException, limit: int = 120) -> str:
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) <= limit else text[: limit - 3] + "..."


_MAGIC: Final[tuple[tuple[bytes, str], ...]] = (
    (b"\x89PNG", "a PNG"), (b"\xff\xd8", "a JPEG"), (b"GIF8", "a GIF"),
    (b"II*\x00", "a TIFF"), (b"MM\x00*", "a TIFF"), (b"BM", "a BMP"),
)


def _describe_unknown(raw: bytes) -> str:
    """What an unidentified file looks like, for the error message."""
    head = raw[:64]
    for magic, kind in _MAGIC:
        if head.startswith(magic):
            return f"looks like {kind} file but its header is damaged or cut short"
    if head.startswith(b"RIFF") and head[8:12] == b"WEBP":
        return "looks like a WebP file but its header is damaged or cut short"
    if head.startswith(b"%PDF"):
        return "is a PDF document, not an image"
    if head.startswith(b"PK\x03\x04") or head.startswith(b"PK\x05\x06"):
        return "is a ZIP archive (or an Office document), not an image"
    if head[4:8] == b"ftyp" and head[8:12] in (b"heic", b"heix", b"mif1", b"msf1"):
        return "is a HEIC/HEIF photo, which is not supported (export it as JPEG)"
    try:
        text = raw[:4096].decode("utf-8")
    except UnicodeDecodeError:
        return "is not an image in a supported format"
    if "<svg" in text.lower():
        return "is an SVG drawing, which is not supported (export it as PNG)"
    return "is a text file, not an image"


# --------------------------------------------------------------------------- conversion

def _apply_orientation(im: Image.Image, name: str) -> Image.Image:
    """Rotate/flip as the EXIF Orientation tag says; keep the image as is if EXIF is bad."""
    try:
        return ImageOps.exif_transpose(im)
    except Exception as exc:  # noqa: BLE001 - a broken EXIF block must not lose the image
        logger.info("%s: ignoring unreadable EXIF orientation (%s)", name, _short(exc))
        return im


def _to_rgb(im: Image.Image, name: str) -> Image.Image:
    """Convert a loaded image of any Pillow mode to RGB (see the module docstring)."""
    mode = im.mode
    if mode == "RGB" and "transparency" not in im.info:
        return im
    if mode.startswith("I"):
        return Image.fromarray(_int_to_uint8(np.asarray(im))).convert("RGB")
    if mode == "F":
        return Image.fromarray(_float_to_uint8(np.asarray(im))).convert("RGB")
    if mode in _ALPHA_MODES or "transparency" in im.info:
        return _over_white(im.convert("RGBA"))
    try:
        return im.convert("RGB")
    except ValueError as exc:
        raise _error(name, f"uses the colour mode {mode!r}, which cannot be converted to RGB",
                     "save it as an 8-bit RGB or grayscale image") from exc


def _over_white(rgba: Image.Image) -> Image.Image:
    background = Image.new("RGBA", rgba.size, _WHITE)
    return Image.alpha_composite(background, rgba).convert("RGB")


def _int_to_uint8(arr: np.ndarray) -> np.ndarray:
    """Integer samples to uint8: 0..65535 scaled as 16-bit data, anything else min-max."""
    a = arr.astype(np.int64)
    lo, hi = int(a.min()), int(a.max())
    if lo >= 0 and hi <= 65535:
        return ((a * 255 + 32767) // 65535).astype(np.uint8)
    return _stretch(a.astype(np.float64), lo, hi)


def _float_to_uint8(arr: np.ndarray) -> np.ndarray:
    """Float samples to uint8.

    Values within [0, 1] are taken as fractions of white, values within [0, 255] as
    8-bit levels, anything else is stretched min-max. NaN and -inf become 0, +inf 255.
    """
    a = arr.astype(np.float64)
    finite = np.isfinite(a)
    if not finite.any():
        return np.where(a == np.inf, 255, 0).astype(np.uint8)
    lo, hi = float(a[finite].min()), float(a[finite].max())
    if lo >= 0.0 and hi <= 1.0:
        out = np.rint(np.where(finite, a, 0.0) * 255.0)
    elif lo >= 0.0 and hi <= 255.0:
        out = np.rint(np.where(finite, a, 0.0))
    else:
        out = _stretch(np.where(finite, a, lo), lo, hi).astype(np.float64)
    out = np.where(a == np.inf, 255.0, out)
    return np.clip(out, 0, 255).astype(np.uint8)


def _stretch(a: np.ndarray, lo: float, hi: float) -> np.ndarray:
    if hi <= lo:
        return np.zeros(a.shape, dtype=np.uint8)
    return np.clip(np.rint((a - lo) * (255.0 / (hi - lo))), 0, 255).astype(np.uint8)
