"""Decode an image reference (as a data source gives it) into an RGB PIL image, or fail in one line.

Loaders keep references undecoded (see schema.ImageRef) so that one broken image becomes one error
record at run time instead of a crashed load. This module is where that decoding happens.
"""

from __future__ import annotations

import base64
import binascii
import io
import os
import re
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, BinaryIO

from PIL import Image, UnidentifiedImageError

# 64 Mpx is well above any benchmark image (V* tops out near 8 Mpx) and far below what exhausts
# memory once decoded to RGB (~200 MB). Checked before decoding, from the header alone.
MAX_PIXELS = 64_000_000

_DATA_URL = re.compile(r"^data:image/[\w.+-]+;base64,", re.IGNORECASE)
_BASE64_CHARS = re.compile(r"^[A-Za-z0-9+/_\-\s]+={0,2}\s*$")


class ImageError(ValueError):
    """An image that cannot be used: missing file, corrupt data, or too many pixels."""


def load_image(ref: Any, *, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Return `ref` as an RGB image.

    `ref` may be a PIL image, raw bytes, a datasets image dict (`{"bytes": ..., "path": ...}`), a
    filesystem path, or a base64 string (plain, as MMBench TSVs and MME-RealWorld hold them, or a
    `data:image/...;base64,` URL). Raises ImageError with a one-line message otherwise.
    """
    if isinstance(ref, Image.Image):
        _check_pixels(ref.size, max_pixels)
        return ref.convert("RGB")
    if isinstance(ref, bytes | bytearray | memoryview):
        return _decode(io.BytesIO(bytes(ref)), "image bytes", max_pixels)
    if isinstance(ref, Mapping):
        # datasets' Image(decode=False) value: bytes win, the path is only a name when bytes exist.
        if ref.get("bytes") is not None:
            return load_image(ref["bytes"], max_pixels=max_pixels)
        if ref.get("path"):
            return load_image(os.fspath(ref["path"]), max_pixels=max_pixels)
        raise ImageError("image dict has neither bytes nor path")
    if isinstance(ref, os.PathLike):
        return _open_path(Path(ref), max_pixels)
    if isinstance(ref, str):
        return _load_str(ref, max_pixels)
    if ref is None:
        raise ImageError("sample has no image")
    raise ImageError(f"cannot read an image from a {type(ref).__name__}")


def load_images(refs: Sequence[Any], *, max_pixels: int = MAX_PIXELS) -> list[Image.Image]:
    """Every image of a multi-image sample, in order. The first that cannot be used fails them all
    (a question about "the second image" cannot be asked without it), its message saying which."""
    if len(refs) == 1:  # the one-image path, as load_image has it
        return [load_image(refs[0], max_pixels=max_pixels)]
    decoded = []
    for k, ref in enumerate(refs, 1):
        try:
            decoded.append(load_image(ref, max_pixels=max_pixels))
        except ImageError as exc:
            raise ImageError(f"{exc} (image {k} of {len(refs)})") from None
    return decoded


def image_to_png_bytes(img: Image.Image) -> bytes:
    """Encode an image as PNG (lossless, so a written sample reloads pixel for pixel)."""
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _load_str(ref: str, max_pixels: int) -> Image.Image:
    text = ref.strip()
    match = _DATA_URL.match(text)
    if match:
        return _decode(io.BytesIO(_b64decode(text[match.end() :])), "base64 image", max_pixels)
    # A '.' never occurs in base64, so a string with one (a file extension) is a path. Short strings
    # without a dot are paths only if they exist; anything else long is taken as base64.
    path = Path(text)
    if "." in text or (len(text) <= 255 and _is_file(path)):
        return _open_path(path, max_pixels)
    if _BASE64_CHARS.match(text):
        return _decode(io.BytesIO(_b64decode(text)), "base64 image", max_pixels)
    raise ImageError(f"image file not found: {_short(text)}")


def _b64decode(text: str) -> bytes:
    try:
        # urlsafe alphabets and missing padding both occur in the wild; normalise before decoding.
        cleaned = re.sub(r"\s+", "", text).replace("-", "+").replace("_", "/")
        return base64.b64decode(cleaned + "=" * (-len(cleaned) % 4), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ImageError(f"invalid base64 image data: {exc}") from None


def _is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except OSError:  # e.g. a name too long for the filesystem
        return False


def _open_path(path: Path, max_pixels: int) -> Image.Image:
    """Decode from the open file, never read whole first: PIL reads the header, so a file that is
    no image (or too many pixels) fails after a few bytes, however big it is."""
    if not _is_file(path):
        raise ImageError(f"image file not found: {_short(str(path))}")
    what = f"image file {_short(str(path))}"
    try:
        size = path.stat().st_size
        if size > max_file_bytes(max_pixels):
            raise ImageError(f"{what} is too large: {size} bytes (the cap is {max_file_bytes(max_pixels)})")
        with path.open("rb") as stream:
            return _decode(stream, what, max_pixels)
    except OSError as exc:
        raise ImageError(f"cannot read {what}: {exc.strerror or exc}") from None


def max_file_bytes(max_pixels: int) -> int:
    """No image within the pixel cap needs a bigger file: 8 bytes a pixel is 16-bit RGBA, uncompressed."""
    return 8 * max_pixels + 1024**2


def _decode(stream: BinaryIO, what: str, max_pixels: int) -> Image.Image:
    try:
        with warnings.catch_warnings():
            # PIL only warns between MAX_IMAGE_PIXELS and twice that; treat the warning as the error.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(stream)  # reads the header only
            _check_pixels(img.size, max_pixels)
            img.load()
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError(f"{what} is too large (decompression bomb guard): {_one_line(exc)}") from None
    except UnidentifiedImageError:
        raise ImageError(f"{what} is not a recognised image format") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        # PIL reports truncated or corrupt data with any of these.
        raise ImageError(f"{what} is corrupt: {_one_line(exc)}") from None
    return img.convert("RGB")


def _check_pixels(size: tuple[int, int], max_pixels: int) -> None:
    width, height = size
    if width * height > max_pixels:
        raise ImageError(f"image is too large: {width}x{height} pixels exceeds the cap of {max_pixels}")


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _short(text: str, limit: int = 120) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."
