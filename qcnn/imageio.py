"""Robust image loading: a photo in one of the formats of :data:`FORMATS` -> a fully loaded RGB image.

Every failure (missing file, not a regular file, not an image, a format not on the list,
truncated data, too many pixels, ...) is reported as :class:`ImageLoadError`, naming the file and
the reason.

Only the formats of :data:`FORMATS` are ever tried: Pillow would otherwise hand, say, an EPS file
named ``.jpg`` to Ghostscript, an interpreter that runs whatever the file says (one endless loop
and the caller hangs).  The list is the photo formats users have, whose Pillow decoders are plain
parsers: BMP/DIB, PNG, JPEG (with its multi-picture MPO variant), TIFF, WebP, GIF and PPM/PGM/PBM.

BMP is decoded by Pillow except for the variants it rejects or mis-reads, which
are decoded here with numpy:

* 16- and 32-bit direct colour (BI_RGB, BI_BITFIELDS, BI_ALPHABITFIELDS):
  Pillow knows only a handful of fixed mask layouts (no 4444, 1555 alpha,
  10-10-10, ...), rejects BI_ALPHABITFIELDS and ignores the alpha byte of
  32-bit BI_RGB files.
* RLE4 / RLE8: Pillow fails on an end-of-bitmap marker before the last row,
  which the format allows (the skipped pixels are left at palette index 0).
"""

from __future__ import annotations

import io
import os
import struct
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .files import NotARegularFile, open_regular

__all__ = ["MAX_PIXELS", "FORMATS", "IMAGE_EXTENSIONS", "ImageLoadError", "load_image", "image_files"]

#: Images with more pixels than this are refused before their pixels are decoded.
#: Pillow's own limit (``PIL.Image.MAX_IMAGE_PIXELS``) applies as well.
MAX_PIXELS = 100_000_000

#: Pillow format names tried when decoding; anything else is refused unopened.
FORMATS = ("BMP", "DIB", "PNG", "JPEG", "TIFF", "WEBP", "GIF", "PPM")   # JPEG includes MPO

#: Suffixes (lower case) that :func:`image_files` picks up: those of :data:`FORMATS`.
IMAGE_EXTENSIONS = frozenset(
    {".bmp", ".dib", ".png", ".jpg", ".jpeg", ".tif", ".tiff", ".webp", ".gif", ".ppm", ".pgm", ".pbm", ".pnm"}
)

Source = Union[str, "os.PathLike[str]", bytes, bytearray, memoryview, BinaryIO]


class ImageLoadError(Exception):
    """An image could not be read; ``path`` names the source, ``reason`` says why."""

    def __init__(self, path: str, reason: str) -> None:
        # Both values go into args so the exception survives pickling
        # (e.g. when raised in a worker process).
        super().__init__(path, reason)
        self.path = path
        self.reason = reason

    def __str__(self) -> str:
        return f"cannot read image '{self.path}': {self.reason}"


def load_image(source: Source) -> Image.Image:
    """Read an image and return it as a fully loaded ``"RGB"`` image.

    ``source`` is a path, the encoded bytes, or a binary file object (read from
    its current position; it is not closed). The first frame of animations is
    used, EXIF orientation is applied, and transparency is composited over white.
    Grey levels deeper than 8 bits are reduced as described in :func:`_wide_to_8bit`.
    """
    if isinstance(source, (bytes, bytearray, memoryview)):
        return _decode(io.BytesIO(source), "<bytes>")
    if isinstance(source, (str, os.PathLike)):
        name = os.fsdecode(source)
        try:
            fp = open_regular(source)      # a FIFO would block here forever, a device never end
        except FileNotFoundError:
            raise ImageLoadError(name, "file not found") from None
        except NotARegularFile as exc:
            raise ImageLoadError(name, exc.strerror) from None
        except ValueError:                   # a NUL byte in the name (from a labels file, say)
            raise ImageLoadError(name, "the file name contains a NUL byte") from None
        except OSError as exc:
            # Windows reports a directory as PermissionError, POSIX as IsADirectoryError.
            reason = (
                "is a directory"
                if os.path.isdir(source)
                else f"cannot open file ({exc.strerror or exc})"
            )
            raise ImageLoadError(name, reason) from None
        with fp:
            return _decode(fp, name)
    name = getattr(source, "name", None)
    return _decode(source, name if isinstance(name, str) else "<stream>")


def image_files(folder: str | os.PathLike[str]) -> list[Path]:
    """Image files directly inside ``folder`` (by suffix, case-insensitive), sorted."""
    return sorted(
        p for p in Path(folder).iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()
    )


# --------------------------------------------------------------------------- decoding

_FORMAT_NAMES = "BMP, PNG, JPEG, TIFF, WebP, GIF, PPM"

# Pillow warns (UserWarning) about damage it reads past, e.g. "Corrupt EXIF data": the file is
# either decoded or refused with an ImageLoadError, so the warning would only be noise on stderr.
warnings.filterwarnings("ignore", category=UserWarning, module=r"PIL\.")

# warnings.catch_warnings() swaps process-wide state; serialise our own use of it.
_warnings_lock = threading.Lock()


def _decode(fp: BinaryIO, name: str) -> Image.Image:
    try:
        return _decode_unchecked(fp, name)
    except ImageLoadError:
        raise
    except UnidentifiedImageError:
        raise ImageLoadError(name, f"not a recognised image format (supported: {_FORMAT_NAMES})") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageLoadError(name, f"image too large: {exc}") from None
    except MemoryError:
        raise ImageLoadError(name, "not enough memory to decode the image") from None
    except Exception as exc:  # Pillow plugins raise all sorts of types for bad data
        detail = str(exc) or "no details"
        kind = (
            "unsupported image variant"
            if "unsupported" in detail.lower()
            else "truncated or corrupt image data"
        )
        raise ImageLoadError(name, f"{kind}: {detail}") from None


def _decode_unchecked(fp: BinaryIO, name: str) -> Image.Image:
    # Pillow rewinds to offset 0, so a stream positioned elsewhere is copied.
    if not (hasattr(fp, "seekable") and fp.seekable()) or fp.tell() != 0:
        fp = io.BytesIO(fp.read())
    magic = fp.read(2)
    if not magic:
        raise ImageLoadError(name, "empty file")
    fp.seek(0)

    if magic == b"BM":
        data = fp.read()
        info = _own_bmp_info(data)
        if info is not None:
            _check_size(info.width, abs(info.height), name)
            decode = _bmp_rle if info.compression in (_BI_RLE8, _BI_RLE4) else _bmp_direct
            return _to_rgb(decode(data, info))
        fp = io.BytesIO(data)

    with _warnings_lock, warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        image = Image.open(fp, formats=FORMATS)
    with image:
        _check_size(*image.size, name)  # before any pixel is decoded
        image.load()
        try:
            ImageOps.exif_transpose(image, in_place=True)
        except Exception:
            pass  # a broken EXIF block should not make good pixels unreadable
        return _to_rgb(image)  # always a new image, so closing `image` is safe


def _check_size(width: int, height: int, name: str) -> None:
    if width * height > MAX_PIXELS:
        raise ImageLoadError(
            name,
            f"image too large: {width} x {height} = {width * height:,} pixels "
            f"exceeds the limit of {MAX_PIXELS:,}",
        )


# --------------------------------------------------------------------------- modes


def _to_rgb(image: Image.Image) -> Image.Image:
    """Convert any Pillow mode to a new RGB image (transparency over white)."""
    mode = image.mode
    if mode == "La":  # Pillow cannot go from premultiplied La straight to RGBA
        image, mode = image.convert("LA"), "LA"
    if mode in ("LA", "PA", "RGBA", "RGBa") or (
        mode in ("1", "L", "P", "RGB") and "transparency" in image.info
    ):
        return _over_white(np.asarray(image.convert("RGBA")))
    if mode.startswith("I;16"):
        return _grey(np.asarray(image) >> 8)
    if mode in ("I", "F"):
        return _grey(_wide_to_8bit(np.asarray(image)))
    return image.convert("RGB")  # 1, L, P, RGB, CMYK, YCbCr, LAB, HSV


def _over_white(rgba: np.ndarray) -> Image.Image:
    alpha = rgba[..., 3:].astype(np.uint16)
    rgb = rgba[..., :3].astype(np.uint16)  # 255 * 255 + 127 still fits in 16 bits
    return Image.fromarray(((rgb * alpha + 255 * (255 - alpha) + 127) // 255).astype(np.uint8))


def _grey(values: np.ndarray) -> Image.Image:
    return Image.fromarray(values.astype(np.uint8)).convert("RGB")


def _wide_to_8bit(values: np.ndarray) -> np.ndarray:
    """Map ``I`` (int32) or ``F`` (float32) samples to 0..255.

    The rule depends on the largest sample ``m`` (non-finite samples count as 0):

    * ``F`` with ``m <= 1``: float data normalised to 0..1, multiplied by 255;
    * ``m <= 255``: already 8-bit, rounded, negatives clipped to 0;
    * ``m <= 65535``: 16-bit data (e.g. a 16-bit PNG/TIFF read as ``I``),
      shifted right by 8 like ``I;16``;
    * otherwise: scaled by ``255 / m``.
    """
    a = np.nan_to_num(values.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    m = a.max(initial=0.0)
    if values.dtype.kind == "f" and m <= 1.0:
        a = a * 255.0
    elif m > 65535:
        a = a * (255.0 / m)
    elif m > 255:
        a = np.floor(a / 256.0)
    return np.clip(np.rint(a), 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------- BMP

_BI_RGB, _BI_RLE8, _BI_RLE4, _BI_BITFIELDS, _BI_ALPHABITFIELDS = 0, 1, 2, 3, 6
_DEFAULT_MASKS = {16: (0x7C00, 0x03E0, 0x001F, 0), 32: (0xFF0000, 0xFF00, 0xFF, 0xFF000000)}


@dataclass(frozen=True)
class _BmpInfo:
    width: int
    height: int  # negative: rows are stored top-down
    bits: int
    compression: int
    masks: tuple[int, int, int, int]  # r, g, b, a (direct colour only)
    palette: np.ndarray  # 256 x 3 uint8 (RLE only)
    offset: int  # start of the pixel data


def _own_bmp_info(data: bytes) -> _BmpInfo | None:
    """Parse a BMP header; None if Pillow decodes this variant correctly itself."""
    if len(data) < 18 or len(data) < 14 + struct.unpack_from("<I", data, 14)[0]:
        raise ValueError("BMP header is incomplete")
    offset, hsize = struct.unpack_from("<II", data, 10)
    if hsize not in (40, 52, 56, 108, 124):  # OS/2 headers and unknown sizes: Pillow
        return None
    width, height, _planes, bits, compression = struct.unpack_from("<iiHHI", data, 18)
    (colors,) = struct.unpack_from("<I", data, 46)
    direct = bits in (16, 32) and compression in (_BI_RGB, _BI_BITFIELDS)
    if not (direct or compression in (_BI_RLE8, _BI_RLE4, _BI_ALPHABITFIELDS)):
        return None

    if width <= 0 or height in (0, -(2**31)):
        raise ValueError(f"invalid BMP size {width} x {height}")
    if (compression == _BI_RLE8 and bits != 8) or (compression == _BI_RLE4 and bits != 4):
        raise ValueError(f"BMP RLE compression with {bits} bits per pixel")
    if compression == _BI_ALPHABITFIELDS and bits not in (16, 32):
        raise ValueError(f"unsupported BMP bit fields with {bits} bits per pixel")

    masks = _DEFAULT_MASKS.get(bits, (0, 0, 0, 0))
    palette = np.zeros((256, 3), np.uint8)
    if compression in (_BI_BITFIELDS, _BI_ALPHABITFIELDS):
        # A plain 40-byte header is followed by the masks; larger headers contain them.
        count = 4 if hsize >= 56 or compression == _BI_ALPHABITFIELDS else 3
        if len(data) < 54 + 4 * count:
            raise ValueError("BMP bit masks are incomplete")
        found = struct.unpack_from(f"<{count}I", data, 54) + (0,) * (4 - count)
        if any(found[:3]):  # all-zero masks are invalid; assume the defaults
            masks = found
    elif not direct:  # RLE: read the BGRX palette
        count = min(colors or 1 << bits, 1 << bits)
        raw = data[14 + hsize : 14 + hsize + 4 * count]
        if len(raw) < 4 * count:
            raise ValueError("BMP palette is incomplete")
        palette[:count] = np.frombuffer(raw, np.uint8).reshape(count, 4)[:, 2::-1]
    if offset < 14 + hsize:
        raise ValueError(f"invalid BMP pixel data offset {offset}")
    return _BmpInfo(width, height, bits, compression, masks, palette, offset)


def _bmp_direct(data: bytes, info: _BmpInfo) -> Image.Image:
    """16/32-bit pixels with arbitrary bit masks."""
    width, height, bpp = info.width, abs(info.height), info.bits // 8
    stride = (width * bpp + 3) & ~3
    needed = stride * (height - 1) + width * bpp  # the last row's padding may be missing
    if len(data) - info.offset < needed:
        raise ValueError(
            f"truncated BMP pixel data ({max(0, len(data) - info.offset)} of {needed} bytes)"
        )
    values = np.ndarray(
        (height, width), "<u2" if bpp == 2 else "<u4", data, info.offset, (stride, bpp)
    ).astype(np.uint32)
    if info.height > 0:  # stored bottom-up
        values = values[::-1]
    r, g, b, a = (_bmp_channel(values, mask) for mask in info.masks)
    # An alpha channel that is zero everywhere means "unused" (the usual case for
    # 32-bit BI_RGB, where the byte is reserved), not "fully transparent".
    channels = [r, g, b, a] if a.any() else [r, g, b]
    return Image.fromarray(np.dstack(channels))


def _bmp_channel(values: np.ndarray, mask: int) -> np.ndarray:
    if mask == 0:
        return np.zeros(values.shape, np.uint8)
    shift = (mask & -mask).bit_length() - 1
    top = mask >> shift
    if top & (top + 1):
        raise ValueError(f"non-contiguous BMP bit mask {mask:#x}")
    channel = (values & np.uint32(mask)) >> np.uint32(shift)
    if top == 255:
        return channel.astype(np.uint8)
    return ((channel.astype(np.uint64) * 255 + top // 2) // top).astype(np.uint8)


def _bmp_rle(data: bytes, info: _BmpInfo) -> Image.Image:
    """RLE8 / RLE4 palette images."""
    width, height = info.width, abs(info.height)
    rle4 = info.compression == _BI_RLE4
    # Pixels the stream skips (delta moves, early end of bitmap) keep palette index 0.
    out = bytearray(width * height)
    pos, x, y = info.offset, 0, 0

    def put(pixels: bytes) -> None:
        if y < height and x < width:
            n = min(len(pixels), width - x)
            out[y * width + x : y * width + x + n] = pixels[:n]

    while True:
        if pos + 2 > len(data):
            if y >= height or (y == height - 1 and x >= width):
                break  # every row is there, only the end-of-bitmap marker is missing
            raise ValueError("truncated BMP RLE data")
        count, code = data[pos], data[pos + 1]
        pos += 2
        if count:  # encoded run: `code` repeated (RLE4: its two nibbles alternate)
            unit = bytes((code >> 4, code & 15)) if rle4 else bytes((code,))
            put((unit * count)[:count])
            x += count
        elif code == 0:  # end of line
            x, y = 0, y + 1
        elif code == 1:  # end of bitmap
            break
        elif code == 2:  # delta: move right and up (the rows are stored bottom-up)
            if pos + 2 > len(data):
                raise ValueError("truncated BMP RLE data")
            x, y = x + data[pos], y + data[pos + 1]
            pos += 2
        else:  # absolute run of `code` literal pixels, padded to a 16-bit boundary
            size = (code + 1) // 2 if rle4 else code
            literal = data[pos : pos + size]
            if len(literal) < size:
                raise ValueError("truncated BMP RLE data")
            if rle4:
                literal = bytes(v for byte in literal for v in (byte >> 4, byte & 15))[:code]
            put(literal)
            x += code
            pos += size + (size & 1)

    indices = np.frombuffer(out, np.uint8).reshape(height, width)
    if info.height > 0:
        indices = indices[::-1]
    return Image.fromarray(info.palette[indices])
