"""images.load_image: every reference shape a data source gives, and every way an image can be bad."""

from __future__ import annotations

import base64
import io
import struct
import zlib
from pathlib import Path

import pytest
from PIL import Image

from vlmstress.data.images import MAX_PIXELS, ImageError, image_to_png_bytes, load_image


def png_bytes(
    size: tuple[int, int] = (6, 4), color: tuple[int, ...] = (200, 30, 40), mode: str = "RGB"
) -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, color).save(buf, format="PNG")
    return buf.getvalue()


def noisy_png() -> bytes:
    buf = io.BytesIO()
    Image.frombytes("RGB", (32, 32), bytes((i * 7919) % 251 for i in range(32 * 32 * 3))).save(
        buf, format="PNG"
    )
    return buf.getvalue()


def png_header_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims width x height: a decompression bomb as PIL sees it at open."""
    data = bytearray(png_bytes((1, 1)))
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))  # IHDR's CRC covers type + data
    return bytes(data)


def assert_red(img: Image.Image, size: tuple[int, int] = (6, 4)) -> None:
    assert img.mode == "RGB"
    assert img.size == size
    assert img.getpixel((0, 0)) == (200, 30, 40)


def test_pil_image_is_converted_to_rgb() -> None:
    img = load_image(Image.new("RGBA", (6, 4), (200, 30, 40, 128)))
    assert_red(img)


def test_raw_bytes_and_bytearray() -> None:
    assert_red(load_image(png_bytes()))
    assert_red(load_image(bytearray(png_bytes())))


def test_datasets_image_dict_prefers_bytes_then_path(tmp_path: Path) -> None:
    assert_red(load_image({"bytes": png_bytes(), "path": "does-not-exist.png"}))
    path = tmp_path / "red.png"
    path.write_bytes(png_bytes())
    assert_red(load_image({"bytes": None, "path": str(path)}))
    with pytest.raises(ImageError, match="neither bytes nor path"):
        load_image({"bytes": None, "path": None})


def test_base64_plain_and_data_url() -> None:
    b64 = base64.b64encode(png_bytes()).decode()
    assert_red(load_image(b64))
    assert_red(load_image(f"data:image/png;base64,{b64}"))
    # MMBench TSV cells may carry line breaks and lose their padding.
    assert_red(load_image(b64.rstrip("=")[:40] + "\n" + b64.rstrip("=")[40:]))


def test_paths_as_str_and_pathlike(tmp_path: Path) -> None:
    path = tmp_path / "red.png"
    path.write_bytes(png_bytes())
    assert_red(load_image(str(path)))
    assert_red(load_image(path))


def test_palette_and_grey_images_become_rgb() -> None:
    assert load_image(png_bytes(mode="L", color=128)).getpixel((0, 0)) == (128, 128, 128)
    buf = io.BytesIO()
    Image.new("RGB", (3, 3), (200, 30, 40)).convert("P").save(buf, format="PNG")
    assert load_image(buf.getvalue()).mode == "RGB"


@pytest.mark.parametrize(
    ("ref", "message"),
    [
        ("/no/such/dir/picture.jpg", "not found"),
        (Path("/no/such/picture.png"), "not found"),
        (b"definitely not an image", "not a recognised image"),
        (noisy_png()[:300], "corrupt"),  # a PNG cut short: header fine, pixel data missing
        ("data:image/png;base64,@@@not base64@@@", "invalid base64"),
        ("!!! neither a path nor base64 !!!", "not found"),
        (None, "no image"),
        (12345, "cannot read an image from a int"),
    ],
)
def test_bad_references_raise_one_line_image_error(ref: object, message: str) -> None:
    with pytest.raises(ImageError, match=message) as info:
        load_image(ref)
    assert "\n" not in str(info.value)
    assert isinstance(info.value, ValueError)


def test_pixel_cap_is_checked_from_the_header() -> None:
    with pytest.raises(ImageError, match="too large"):
        load_image(png_bytes((20, 20)), max_pixels=399)
    assert load_image(png_bytes((20, 20)), max_pixels=400).size == (20, 20)
    with pytest.raises(ImageError, match="too large"):
        load_image(Image.new("RGB", (20, 20)), max_pixels=100)


def test_default_cap_stops_a_bomb_below_pils_own_limit() -> None:
    # 9000 x 9000 = 81 Mpx: over our 64 Mpx cap, under PIL's warning threshold.
    assert MAX_PIXELS < 9000 * 9000
    with pytest.raises(ImageError, match="too large"):
        load_image(png_header_claiming(9000, 9000))


def test_pils_decompression_bomb_warning_and_error_become_image_error() -> None:
    # 10000^2 only warns in PIL (the warning is promoted); 20000^2 is PIL's hard error.
    with pytest.raises(ImageError, match="decompression bomb"):
        load_image(png_header_claiming(10000, 10000), max_pixels=10**10)
    with pytest.raises(ImageError, match="decompression bomb"):
        load_image(png_header_claiming(20000, 20000), max_pixels=10**10)


def test_png_bytes_round_trip_is_lossless() -> None:
    img = Image.new("RGB", (5, 3))
    img.putdata([(i * 10, 255 - i, i) for i in range(15)])
    again = load_image(image_to_png_bytes(img))
    assert again.tobytes() == img.tobytes()
    assert image_to_png_bytes(img).startswith(b"\x89PNG")
