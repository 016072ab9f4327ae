"""Write a small Motion-JPEG AVI in pure Python, so the video path is testable without ffmpeg.

An AVI is a RIFF file: a header list (`hdrl`: main header, one video stream header and its
BITMAPINFOHEADER), a `movi` list of `00dc` chunks (here: one JPEG per frame, as Pillow encodes it)
and an `idx1` index of those chunks.  QtMultimedia's bundled FFmpeg decodes it like any camera
recording.
"""
from __future__ import annotations

import io
import struct
from pathlib import Path
from typing import Iterable

from PIL import Image

AVIF_HASINDEX = 0x10
AVIIF_KEYFRAME = 0x10


def _chunk(fourcc: bytes, data: bytes) -> bytes:
    pad = b"\0" if len(data) % 2 else b""      # RIFF chunks are word aligned
    return fourcc + struct.pack("<I", len(data)) + data + pad


def _list(kind: bytes, payload: bytes) -> bytes:
    return b"LIST" + struct.pack("<I", len(payload) + 4) + kind + payload


def encode_jpeg(image: Image.Image, quality: int = 85) -> bytes:
    buf = io.BytesIO()
    image.convert("RGB").save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def write_mjpeg_avi(path: str | Path, frames: Iterable[Image.Image], fps: int = 10) -> Path:
    """Write `frames` (PIL images, all the size of the first) to `path` as an MJPEG AVI."""
    jpegs = [encode_jpeg(f) for f in frames]
    if not jpegs:
        raise ValueError("no frames")
    width, height = Image.open(io.BytesIO(jpegs[0])).size
    n = len(jpegs)
    biggest = max(map(len, jpegs))

    avih = struct.pack("<14I", 1_000_000 // fps, biggest * fps, 0, AVIF_HASINDEX, n, 0, 1, biggest,
                       width, height, 0, 0, 0, 0)
    strh = struct.pack("<4s4sIHHIIIIIIIIhhhh", b"vids", b"MJPG", 0, 0, 0, 0, 1, fps, 0, n, biggest,
                       0xFFFFFFFF, 0, 0, 0, width, height)
    strf = struct.pack("<IiiHH4sIiiII", 40, width, height, 1, 24, b"MJPG", width * height * 3, 0, 0, 0, 0)
    hdrl = _list(b"hdrl", _chunk(b"avih", avih) + _list(b"strl", _chunk(b"strh", strh) + _chunk(b"strf", strf)))

    movi_chunks, index, offset = [], [], 4      # idx1 offsets count from the 'movi' fourcc
    for jpeg in jpegs:
        chunk = _chunk(b"00dc", jpeg)
        index.append(struct.pack("<4sIII", b"00dc", AVIIF_KEYFRAME, offset, len(jpeg)))
        movi_chunks.append(chunk)
        offset += len(chunk)
    movi = _list(b"movi", b"".join(movi_chunks))
    idx1 = _chunk(b"idx1", b"".join(index))

    body = b"AVI " + hdrl + movi + idx1
    path = Path(path)
    path.write_bytes(b"RIFF" + struct.pack("<I", len(body)) + body)
    return path


def moving_frames(photos: list[Image.Image], count: int = 20, size: tuple[int, int] = (320, 240)):
    """`count` frames panning slowly across the given photos (so consecutive frames differ)."""
    out = []
    for i in range(count):
        photo = photos[(i * len(photos)) // count].convert("RGB")
        w, h = photo.size
        scale = max(size[0] / w, size[1] / h) * 1.2
        big = photo.resize((max(size[0], round(w * scale)), max(size[1], round(h * scale))))
        dx = (big.width - size[0]) * (i % 5) // 5
        out.append(big.crop((dx, 0, dx + size[0], size[1])))
    return out
