"""Tests for qcnn.imageio: every BMP variant is built here byte by byte."""

from __future__ import annotations

import gc
import io
import pickle
import struct
import warnings

import numpy as np
import pytest
from PIL import Image, ImageFile

from qcnn import imageio
from qcnn.imageio import ImageLoadError, image_files, load_image

# 13 x 9 makes every bit depth need row padding to 4 bytes.
W, H = 13, 9
_rng = np.random.default_rng(1234)
RGB = _rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
ALPHA = _rng.integers(0, 256, (H, W), dtype=np.uint8)
ALPHA[0, :3] = (0, 255, 128)  # make sure the extremes are present
PALETTE = np.array(
    [(9, 99, 199), (255, 255, 255), (200, 30, 40), (20, 180, 60), (30, 50, 220), (250, 220, 10),
     (120, 0, 130), (0, 140, 150), (90, 90, 90), (255, 128, 0), (128, 255, 128), (10, 20, 30),
     (222, 111, 77), (1, 2, 3), (77, 177, 250), (160, 82, 45)],
    np.uint8,
)  # fmt: skip
# Indices with runs of equal pixels, so RLE encodes both runs and literals.
INDICES = ((np.arange(W)[None, :] // 3 + np.arange(H)[:, None] * 5) % 16).astype(np.uint8)


# --------------------------------------------------------------------------- BMP writer


def bmp_file(dib_header: bytes, pixels: bytes, extra: bytes = b"") -> bytes:
    """BITMAPFILEHEADER + DIB header + masks/palette + pixel data."""
    offset = 14 + len(dib_header) + len(extra)
    return (
        b"BM"
        + struct.pack("<IHHI", offset + len(pixels), 0, 0, offset)
        + dib_header
        + extra
        + pixels
    )


def info_header(size, width, height, bits, compression=0, colors=0, masks=()):
    """BITMAPINFOHEADER (40), V3 (56), V4 (108) or V5 (124); masks sit inside headers > 40."""
    header = struct.pack(
        "<IiiHHIIiiII", size, width, height, 1, bits, compression, 0, 2835, 2835, colors, 0
    )
    if size > 40:
        header += struct.pack("<4I", *(tuple(masks) + (0, 0, 0, 0))[:4])
    if size >= 108:
        header += b"BGRs"  # bV4CSType = LCS_sRGB
    return header.ljust(size, b"\0")


def core_header(width, height, bits):
    """OS/2 BITMAPCOREHEADER (12 bytes, 16-bit sizes)."""
    return struct.pack("<IHHHH", 12, width, height, 1, bits)


def palette_bytes(colours, entry_size=4):
    return b"".join(bytes((b, g, r)) + b"\0" * (entry_size - 3) for r, g, b in colours)


def raster(rows: list[bytes], top_down=False) -> bytes:
    padded = [row + b"\0" * (-len(row) % 4) for row in rows]
    return b"".join(padded if top_down else padded[::-1])


def index_rows(indices, bits) -> list[bytes]:
    bit_columns = np.unpackbits(indices[..., None], axis=-1)[..., 8 - bits :]
    return [np.packbits(row.ravel()).tobytes() for row in bit_columns]


def bgr_rows(rgb) -> list[bytes]:
    return [row[:, ::-1].tobytes() for row in rgb]


def value_rows(values, dtype) -> list[bytes]:
    return [row.astype(dtype).tobytes() for row in values]


def rle8_row(row) -> bytes:
    """A literal run of the first 3 pixels, then encoded runs of equal pixels."""
    out = bytearray((0, 3)) + bytes(row[:3]) + b"\0"  # literal runs are padded to 16 bits
    i = 3
    while i < len(row):
        j = i
        while j < len(row) and row[j] == row[i]:
            j += 1
        out += bytes((j - i, row[i]))
        i = j
    return bytes(out)


def rle4_row(row) -> bytes:
    """A literal run of the first 3 pixels, then runs of alternating pixel pairs."""
    out = bytearray((0, 3, row[0] << 4 | row[1], row[2] << 4))  # 2 data bytes: no padding
    i = 3
    while i < len(row):
        pair = (row[i], row[i + 1] if i + 1 < len(row) else 0)
        j = i
        while j < len(row) and row[j] == pair[(j - i) % 2]:
            j += 1
        out += bytes((j - i, pair[0] << 4 | pair[1]))
        i = j
    return bytes(out)


EOL, EOB = b"\0\0", b"\0\1"


def rle_stream(encode_row, indices) -> bytes:
    return b"".join(encode_row(row) + EOL for row in indices[::-1]) + EOB


def over_white(rgb, alpha):
    a = alpha.astype(int)[..., None]
    return ((rgb.astype(int) * a + 255 * (255 - a) + 127) // 255).astype(np.uint8)


def scale(values, top):
    """Ideal n-bit -> 8-bit scaling, rounded to nearest."""
    return np.round(values.astype(float) * 255 / top).astype(np.uint8)


def pixels(source) -> np.ndarray:
    image = load_image(source)
    assert image.mode == "RGB"
    return np.asarray(image)


def assert_pixels(source, expected, tolerance=0):
    got = pixels(source).astype(int)
    assert got.shape == expected.shape
    assert np.abs(got - expected.astype(int)).max() <= tolerance


# --------------------------------------------------------------------------- BMP variants

PACKED_RGB = RGB.astype(np.uint32)
BGRX = PACKED_RGB[..., 0] << 16 | PACKED_RGB[..., 1] << 8 | PACKED_RGB[..., 2]
BGRA = BGRX | ALPHA.astype(np.uint32) << 24
RGBA_ORDER = (
    PACKED_RGB[..., 0]
    | PACKED_RGB[..., 1] << 8
    | PACKED_RGB[..., 2] << 16
    | ALPHA.astype(np.uint32) << 24
)
Q5, Q6, Q4 = (
    (RGB >> 3).astype(np.uint32),
    (RGB >> 2).astype(np.uint32),
    (RGB >> 4).astype(np.uint32),
)


@pytest.mark.parametrize("bits", [1, 4, 8])
@pytest.mark.parametrize("header_size", [40, 108, 124])
def test_bmp_palette(bits, header_size):
    indices = INDICES % min(16, 1 << bits)
    colours = PALETTE[: 1 << bits]
    data = bmp_file(
        info_header(header_size, W, H, bits, colors=len(colours)),
        raster(index_rows(indices, bits)),
        palette_bytes(colours),
    )
    assert_pixels(data, colours[indices])


def test_bmp_1bit_black_and_white():
    bw = np.array([(0, 0, 0), (255, 255, 255)], np.uint8)
    data = bmp_file(
        info_header(40, W, H, 1, colors=2), raster(index_rows(INDICES % 2, 1)), palette_bytes(bw)
    )
    assert_pixels(data, bw[INDICES % 2])


def test_bmp_8bit_short_palette():
    # colors=16 but 8 bits per pixel: the palette has only 16 entries
    data = bmp_file(
        info_header(40, W, H, 8, colors=16), raster(index_rows(INDICES, 8)), palette_bytes(PALETTE)
    )
    assert_pixels(data, PALETTE[INDICES])


@pytest.mark.parametrize("bits", [1, 4, 8])
def test_bmp_os2_core_palette(bits):
    indices = INDICES % min(16, 1 << bits)
    colours = PALETTE[: 1 << bits]
    if bits == 8:  # OS/2 1.x palettes always have 2**bits three-byte entries
        colours = np.concatenate([colours, np.zeros((256 - len(colours), 3), np.uint8)])
    data = bmp_file(
        core_header(W, H, bits), raster(index_rows(indices, bits)), palette_bytes(colours, 3)
    )
    assert_pixels(data, colours[indices])


def test_bmp_os2_core_24bit():
    assert_pixels(bmp_file(core_header(W, H, 24), raster(bgr_rows(RGB))), RGB)


@pytest.mark.parametrize("header_size", [40, 56, 108, 124])
@pytest.mark.parametrize("top_down", [False, True])
def test_bmp_24bit(header_size, top_down):
    height = -H if top_down else H
    assert_pixels(
        bmp_file(info_header(header_size, W, height, 24), raster(bgr_rows(RGB), top_down)), RGB
    )


@pytest.mark.parametrize("top_byte", [0x00, 0xFF])
@pytest.mark.parametrize("header_size", [40, 124])
def test_bmp_32bit_without_alpha(top_byte, header_size):
    values = BGRX | np.uint32(top_byte << 24)
    data = bmp_file(info_header(header_size, W, H, 32), raster(value_rows(values, "<u4")))
    assert_pixels(data, RGB)


@pytest.mark.parametrize("header_size", [40, 108, 124])
def test_bmp_32bit_bi_rgb_with_alpha_byte(header_size):
    # The spec calls the 4th byte reserved, but many writers store alpha there.
    data = bmp_file(info_header(header_size, W, H, 32), raster(value_rows(BGRA, "<u4")))
    assert_pixels(data, over_white(RGB, ALPHA))


def test_bmp_32bit_bitfields_without_alpha_mask_ignores_top_byte():
    masks = struct.pack("<3I", 0xFF0000, 0xFF00, 0xFF)
    data = bmp_file(
        info_header(40, W, H, 32, compression=3), raster(value_rows(BGRA, "<u4")), masks
    )
    assert_pixels(data, RGB)


@pytest.mark.parametrize(
    "header_size, compression",
    [(40, 6), (56, 3), (108, 3), (124, 3), (124, 6)],  # 6 = BI_ALPHABITFIELDS
)
@pytest.mark.parametrize(
    "values, masks",
    [
        (BGRA, (0xFF0000, 0xFF00, 0xFF, 0xFF000000)),
        (RGBA_ORDER, (0xFF, 0xFF00, 0xFF0000, 0xFF000000)),
    ],
    ids=["BGRA", "RGBA"],
)
def test_bmp_32bit_bitfields_with_alpha(header_size, compression, values, masks):
    extra = struct.pack("<4I", *masks) if header_size == 40 else b""
    header = info_header(header_size, W, H, 32, compression, masks=masks)
    assert_pixels(
        bmp_file(header, raster(value_rows(values, "<u4")), extra), over_white(RGB, ALPHA)
    )


def test_bmp_32bit_bitfields_top_down():
    masks = (0xFF0000, 0xFF00, 0xFF, 0xFF000000)
    data = bmp_file(
        info_header(124, W, -H, 32, 3, masks=masks), raster(value_rows(BGRA, "<u4"), top_down=True)
    )
    assert_pixels(data, over_white(RGB, ALPHA))


def test_bmp_32bit_ten_bit_channels():
    ten = RGB.astype(np.uint32) * 4 + 3  # 10-bit samples whose top 8 bits are RGB
    values = ten[..., 0] << 20 | ten[..., 1] << 10 | ten[..., 2]
    header = info_header(124, W, H, 32, 3, masks=(0x3FF00000, 0xFFC00, 0x3FF))
    assert_pixels(bmp_file(header, raster(value_rows(values, "<u4"))), scale(ten, 1023))


V555 = Q5[..., 0] << 10 | Q5[..., 1] << 5 | Q5[..., 2]
V565 = Q5[..., 0] << 11 | Q6[..., 1] << 5 | Q5[..., 2]
E555 = scale(Q5, 31)
E565 = np.dstack([scale(Q5[..., 0], 31), scale(Q6[..., 1], 63), scale(Q5[..., 2], 31)])


@pytest.mark.parametrize("top_down", [False, True])
def test_bmp_16bit_bi_rgb_is_555(top_down):
    data = bmp_file(
        info_header(40, W, -H if top_down else H, 16), raster(value_rows(V555, "<u2"), top_down)
    )
    assert_pixels(data, E555)


@pytest.mark.parametrize("header_size", [40, 56, 108, 124])
@pytest.mark.parametrize(
    "values, masks, expected",
    [(V555, (0x7C00, 0x3E0, 0x1F), E555), (V565, (0xF800, 0x7E0, 0x1F), E565)],
    ids=["555", "565"],
)
def test_bmp_16bit_bitfields(header_size, values, masks, expected):
    extra = struct.pack("<3I", *masks) if header_size == 40 else b""
    header = info_header(header_size, W, H, 16, 3, masks=masks)
    assert_pixels(bmp_file(header, raster(value_rows(values, "<u2")), extra), expected)


def test_bmp_16bit_4444_with_alpha():
    a4 = ALPHA.astype(np.uint32) >> 4
    values = a4 << 12 | Q4[..., 0] << 8 | Q4[..., 1] << 4 | Q4[..., 2]
    header = info_header(124, W, H, 16, 3, masks=(0xF00, 0xF0, 0xF, 0xF000))
    expected = over_white(scale(Q4, 15), scale(a4, 15))
    assert_pixels(bmp_file(header, raster(value_rows(values, "<u2"))), expected)


def test_bmp_16bit_1555_with_alpha():
    a1 = (ALPHA >= 128).astype(np.uint32)
    header = info_header(124, W, H, 16, 3, masks=(0x7C00, 0x3E0, 0x1F, 0x8000))
    data = bmp_file(header, raster(value_rows(V555 | a1 << 15, "<u2")))
    expected = np.where(a1[..., None] == 1, E555, 255)
    assert_pixels(data, expected)


@pytest.mark.parametrize(
    "bits, compression, encode_row", [(8, 1, rle8_row), (4, 2, rle4_row)], ids=["RLE8", "RLE4"]
)
def test_bmp_rle(bits, compression, encode_row):
    stream = rle_stream(encode_row, INDICES)
    data = bmp_file(
        info_header(40, W, H, bits, compression, colors=16), stream, palette_bytes(PALETTE)
    )
    assert_pixels(data, PALETTE[INDICES])


def test_bmp_rle8_delta_and_early_end_of_bitmap():
    bottom_up = INDICES[::-1]
    # delta 3 right + 1 up, finish that row without its 3-pixel literal, two more rows, stop
    stream = b"\0\2\3\1" + rle8_row(bottom_up[1])[6:] + EOL
    stream += rle8_row(bottom_up[2]) + EOL + rle8_row(bottom_up[3]) + EOL + EOB
    expected = np.zeros((H, W), np.uint8)  # skipped pixels are palette index 0
    expected[1, 3:] = bottom_up[1, 3:]
    expected[2:4] = bottom_up[2:4]
    data = bmp_file(info_header(40, W, H, 8, 1, colors=16), stream, palette_bytes(PALETTE))
    assert_pixels(data, PALETTE[expected[::-1]])


def test_rle8_row_helper_layout():
    # the delta test relies on the literal taking exactly 6 bytes
    row = INDICES[::-1][1]
    assert rle8_row(row)[:6] == bytes((0, 3, *row[:3], 0))


# --------------------------------------------------------------------------- other formats


def encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


@pytest.mark.parametrize(
    "fmt, kwargs", [("PNG", {}), ("TIFF", {}), ("WEBP", {"lossless": True}), ("BMP", {})]
)
def test_lossless_round_trip(fmt, kwargs):
    assert_pixels(encode(Image.fromarray(RGB), fmt, **kwargs), RGB)


def test_jpeg_round_trip():
    smooth = np.zeros((32, 48, 3), np.uint8)
    smooth[..., 0] = np.linspace(0, 255, 48, dtype=np.uint8)
    smooth[..., 1] = np.linspace(0, 255, 32, dtype=np.uint8)[:, None]
    smooth[..., 2] = 90
    got = pixels(encode(Image.fromarray(smooth), "JPEG", quality=95)).astype(int)
    assert np.abs(got - smooth).mean() < 2 and np.abs(got - smooth).max() < 24


def test_gif_first_frame():
    frames = [Image.fromarray(PALETTE[INDICES]), Image.fromarray(PALETTE[(INDICES + 1) % 16])]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:])
    assert Image.open(io.BytesIO(data)).n_frames == 2
    assert_pixels(data, PALETTE[INDICES])


# --------------------------------------------------------------------------- modes

GREY = RGB[..., 0]


def grey_rgb(values):
    return np.repeat(values.astype(np.uint8)[..., None], 3, axis=-1)


def test_mode_l():
    assert_pixels(encode(Image.fromarray(GREY), "PNG"), grey_rgb(GREY))


def test_mode_la_over_white():
    la = Image.fromarray(np.dstack([GREY, ALPHA]))
    assert la.mode == "LA"
    assert_pixels(encode(la, "PNG"), over_white(grey_rgb(GREY), ALPHA))


def test_mode_p():
    image = Image.frombytes("P", (W, H), INDICES.tobytes())
    image.putpalette(PALETTE.tobytes())
    data = encode(image, "PNG")
    assert Image.open(io.BytesIO(data)).mode == "P"
    assert_pixels(data, PALETTE[INDICES])


def test_mode_p_with_transparency():
    image = Image.frombytes("P", (W, H), INDICES.tobytes())
    image.putpalette(PALETTE.tobytes())
    data = encode(image, "PNG", transparency=2)  # index 2 fully transparent
    expected = PALETTE[INDICES].copy()
    expected[INDICES == 2] = 255
    assert (INDICES == 2).any()
    assert_pixels(data, expected)


def test_mode_pa_over_white():
    image = Image.frombytes("PA", (W, H), np.dstack([INDICES, ALPHA]).tobytes())
    image.putpalette(PALETTE.tobytes())
    assert_pixels(encode(image, "TIFF"), over_white(PALETTE[INDICES], ALPHA))


def test_rgba_half_transparent_red_over_white_is_exact():
    image = Image.new("RGBA", (3, 2), (255, 0, 0, 128))
    # 128/255 red over white: G = B = 255 * 127 / 255 = 127
    assert pixels(encode(image, "PNG"))[0, 0].tolist() == [255, 127, 127]


def test_rgba_over_white():
    assert_pixels(encode(Image.fromarray(np.dstack([RGB, ALPHA])), "PNG"), over_white(RGB, ALPHA))


def test_mode_cmyk():
    cmyk = Image.frombytes(
        "CMYK", (4, 1), bytes([0, 0, 0, 0, 255, 0, 0, 0, 0, 255, 255, 0, 0, 0, 0, 255])
    )
    assert pixels(encode(cmyk, "TIFF"))[0].tolist() == [
        [255, 255, 255],
        [0, 255, 255],
        [255, 0, 0],
        [0, 0, 0],
    ]


def test_mode_ycbcr():
    ycc = Image.fromarray(RGB).convert("YCbCr")
    data = encode(ycc, "TIFF")
    assert Image.open(io.BytesIO(data)).mode == "YCbCr"
    assert_pixels(data, RGB, tolerance=3)


def test_mode_lab():
    # TIFF CIELab stores a*/b* signed and Pillow writes the bytes as given: 0 is neutral.
    # white, black, sRGB red (L* 53, a* 80, b* 67)
    lab = Image.frombytes("LAB", (3, 1), bytes([255, 0, 0, 0, 0, 0, 136, 80, 67]))
    data = encode(lab, "TIFF")
    assert Image.open(io.BytesIO(data)).mode == "LAB"
    got = pixels(data).astype(int)[0]
    assert np.abs(got[:2] - [[255] * 3, [0] * 3]).max() <= 2
    assert got[2, 0] > 235 and got[2, 1:].max() < 30


@pytest.mark.parametrize("mode", ["I;16", "I;16B"])
def test_mode_i16_shifts_right_by_8(mode):
    values = np.array([[0, 255, 256, 4660, 40000, 65535]], np.uint16)
    image = Image.frombytes(
        mode, (6, 1), values.astype("<u2" if mode == "I;16" else ">u2").tobytes()
    )
    data = encode(image, "TIFF")
    assert Image.open(io.BytesIO(data)).mode == mode
    assert_pixels(data, grey_rgb(values >> 8))


def test_16bit_png():
    values = (GREY.astype(np.uint16) << 8) | 0x7F
    image = Image.frombytes("I;16", (W, H), values.astype("<u2").tobytes())
    assert_pixels(encode(image, "PNG"), grey_rgb(GREY))


@pytest.mark.parametrize(
    "values, expected",
    [
        ([-5, 0, 7, 255], [0, 0, 7, 255]),  # fits 8 bits: clip
        ([0, 256, 4660, 65535], [0, 1, 18, 255]),  # 16-bit data: >> 8
        ([0, 1000, 500000, 1000000], [0, 0, 128, 255]),  # wider: scaled by the maximum
    ],
)
def test_mode_i(values, expected):
    image = Image.frombytes("I", (4, 1), np.array([values], "<i4").tobytes())
    data = encode(image, "TIFF")
    assert Image.open(io.BytesIO(data)).mode == "I"
    assert_pixels(data, grey_rgb(np.array([expected])))


@pytest.mark.parametrize(
    "values, expected",
    [
        ([0.0, 0.25, 0.5, 1.0], [0, 64, 128, 255]),  # normalised floats
        ([-3.0, 2.4, 100.6, 255.0], [0, 2, 101, 255]),  # 8-bit range: round and clip
        ([0.0, 256.0, float("nan"), 65535.0], [0, 1, 0, 255]),  # 16-bit range
    ],
)
def test_mode_f(values, expected):
    image = Image.frombytes("F", (4, 1), np.array([values], "<f4").tobytes())
    data = encode(image, "TIFF")
    assert Image.open(io.BytesIO(data)).mode == "F"
    assert_pixels(data, grey_rgb(np.array([expected])))


def test_premultiplied_and_hsv_modes():
    # These modes cannot be stored in a file, so the converter is tested directly.
    rgba = Image.new("RGBa", (1, 1), (64, 0, 0, 128))  # premultiplied: R = 64 * 255 / 128 = 127.5
    assert np.asarray(imageio._to_rgb(rgba))[0, 0].tolist() == [191, 127, 127]
    la = Image.new("La", (1, 1), (50, 100))  # L = 50 * 255 / 100 = 127.5
    assert np.abs(np.asarray(imageio._to_rgb(la))[0, 0].astype(int) - 205).max() <= 1
    assert np.asarray(imageio._to_rgb(Image.new("HSV", (1, 1), (0, 255, 255))))[0, 0].tolist() == [
        255,
        0,
        0,
    ]


def test_exif_orientation_is_applied():
    image = Image.new("RGB", (40, 20), (0, 0, 255))
    image.paste((255, 0, 0), (0, 0, 10, 10))  # red block at the top left
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    result = load_image(encode(image, "JPEG", exif=exif.tobytes(), quality=95))
    assert result.size == (20, 40)
    top_right = np.asarray(result)[2, 17].astype(int)  # the red block moved to the top right
    assert top_right[0] > 200 and top_right[2] < 60


# --------------------------------------------------------------------------- limits


def test_pixel_cap(monkeypatch):
    monkeypatch.setattr(imageio, "MAX_PIXELS", W * H - 1)
    for data in (
        encode(Image.fromarray(RGB), "PNG"),
        bmp_file(info_header(40, W, H, 32), raster(value_rows(BGRX, "<u4"))),
    ):
        with pytest.raises(ImageLoadError, match=f"too large: {W} x {H}"):
            load_image(data)
    monkeypatch.setattr(imageio, "MAX_PIXELS", W * H)
    assert_pixels(encode(Image.fromarray(RGB), "PNG"), RGB)


@pytest.mark.parametrize("bits", [24, 32])
def test_huge_header_is_refused_before_decoding(bits):
    # 30000 x 30000 claimed, but no pixel data: decoding would report truncation instead
    data = bmp_file(info_header(40, 30000, 30000, bits), b"")
    with pytest.raises(ImageLoadError, match="too large") as info:
        load_image(data)
    assert "900000000" in str(info.value).replace(",", "")


def test_pillow_bomb_warning_becomes_error(monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 50)  # warns above 50, errors above 100
    with pytest.raises(ImageLoadError, match="too large"):
        load_image(encode(Image.new("RGB", (9, 9)), "PNG"))


def test_truncated_images_are_not_globally_accepted():
    assert not ImageFile.LOAD_TRUNCATED_IMAGES


# --------------------------------------------------------------------------- broken input


def write(tmp_path, name, data: bytes):
    path = tmp_path / name
    path.write_bytes(data)
    return path


def jpeg_bytes():
    noise = _rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    return encode(Image.fromarray(noise), "JPEG", quality=90)


def expect_error(path, reason):
    with pytest.raises(ImageLoadError) as info:
        load_image(path)
    message = str(info.value)
    assert path.name in message and reason in message
    assert info.value.path == str(path) and reason in info.value.reason
    return message


def test_missing_file(tmp_path):
    expect_error(tmp_path / "nope.png", "file not found")


def test_directory(tmp_path):
    (tmp_path / "folder.png").mkdir()
    expect_error(tmp_path / "folder.png", "directory")


def test_empty_file(tmp_path):
    expect_error(write(tmp_path, "empty.bmp", b""), "empty file")


def test_text_file(tmp_path):
    expect_error(
        write(tmp_path, "notes.jpg", b"just some text\n" * 20), "not a recognised image format"
    )


@pytest.mark.parametrize(
    "name, data",
    [
        (
            "palette.bmp",
            bmp_file(
                info_header(40, W, H, 8, colors=16),
                raster(index_rows(INDICES, 8)),
                palette_bytes(PALETTE),
            ),
        ),
        ("rgb24.bmp", bmp_file(info_header(40, W, H, 24), raster(bgr_rows(RGB)))),
        ("rgb32.bmp", bmp_file(info_header(40, W, H, 32), raster(value_rows(BGRX, "<u4")))),
        ("rgb16.bmp", bmp_file(info_header(40, W, H, 16), raster(value_rows(V555, "<u2")))),
        (
            "rle8.bmp",
            bmp_file(
                info_header(40, W, H, 8, 1, colors=16),
                rle_stream(rle8_row, INDICES),
                palette_bytes(PALETTE),
            ),
        ),
        (
            "rle4.bmp",
            bmp_file(
                info_header(40, W, H, 4, 2, colors=16),
                rle_stream(rle4_row, INDICES),
                palette_bytes(PALETTE),
            ),
        ),
        (
            "image.png",
            encode(Image.fromarray(_rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)), "PNG"),
        ),
        ("image.jpg", jpeg_bytes()),
    ],
)
def test_truncated(tmp_path, name, data):
    assert load_image(data).size  # intact file is fine
    expect_error(
        write(tmp_path, name, data[: len(data) * 2 // 3]), "truncated or corrupt image data"
    )


@pytest.mark.parametrize("tail", [b"", b"\0\0", bytes(range(48)), b"\xff" * 200])
def test_bmp_magic_with_garbage(tmp_path, tail):
    expect_error(write(tmp_path, "garbage.bmp", b"BM" + tail), "image")


def test_corrupt_bmp_header_values(tmp_path):
    bad_width = bmp_file(info_header(40, 0, H, 32), raster(value_rows(BGRX, "<u4")))
    expect_error(write(tmp_path, "zero_width.bmp", bad_width), "invalid BMP size")
    bad_mask = bmp_file(
        info_header(124, W, H, 32, 3, masks=(0xF0F000, 0xFF00, 0xFF)),
        raster(value_rows(BGRX, "<u4")),
    )
    expect_error(write(tmp_path, "bad_mask.bmp", bad_mask), "bit mask")


def test_error_names_bytes_and_streams():
    with pytest.raises(ImageLoadError, match="cannot read image '<bytes>': empty file"):
        load_image(b"")
    with pytest.raises(ImageLoadError, match="'<stream>': not a recognised image format"):
        load_image(io.BytesIO(b"hello, world"))


def test_error_pickles():
    error = pickle.loads(pickle.dumps(ImageLoadError("photo.bmp", "truncated file")))
    assert (error.path, error.reason, str(error)) == (
        "photo.bmp",
        "truncated file",
        "cannot read image 'photo.bmp': truncated file",
    )


# --------------------------------------------------------------------------- sources and listing


class NonSeekable(io.RawIOBase):
    def __init__(self, data):
        self._inner = io.BytesIO(data)

    def readable(self):
        return True

    def readinto(self, buffer):
        return self._inner.readinto(buffer)


def test_sources(tmp_path):
    data = encode(Image.fromarray(RGB), "PNG")
    path = write(tmp_path, "image.png", data)
    for source in (path, str(path), data, bytearray(data), io.BytesIO(data), NonSeekable(data)):
        assert_pixels(source, RGB)
    with open(path, "rb") as stream:
        assert_pixels(stream, RGB)
        assert not stream.closed  # a caller's stream is left open
    stream = io.BytesIO(b"prefix" + data)
    stream.seek(6)
    assert_pixels(stream, RGB)  # read from the current position


@pytest.mark.parametrize("name", ["image.bmp", "image.png", "broken.png"])
def test_path_source_closes_the_file(tmp_path, name):
    data = encode(Image.fromarray(RGB), name.split(".")[-1].upper())
    path = write(tmp_path, name, data[:100] if name.startswith("broken") else data)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        try:
            load_image(path)
        except ImageLoadError:
            pass
        gc.collect()  # an unclosed file object warns when collected
    assert not [w for w in caught if issubclass(w.category, ResourceWarning)]


def test_image_files(tmp_path):
    for name in [
        "b.PNG",
        "a.jpg",
        "c.jpeg",
        "d.bmp",
        "e.dib",
        "f.tif",
        "g.tiff",
        "h.webp",
        "i.gif",
        "notes.txt",
        "noext",
    ]:
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "sub.png").mkdir()
    (tmp_path / "sub.png" / "inner.png").write_bytes(b"x")
    names = [p.name for p in image_files(tmp_path)]
    assert names == [
        "a.jpg",
        "b.PNG",
        "c.jpeg",
        "d.bmp",
        "e.dib",
        "f.tif",
        "g.tiff",
        "h.webp",
        "i.gif",
    ]
