"""Image -> network input, as each model's training pipeline expects it."""
from __future__ import annotations

import math
from dataclasses import dataclass, asdict

import numpy as np
from PIL import Image

_RESAMPLE = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}
_SUPPORT = {"bicubic": 2.0, "bilinear": 1.0}       # Pillow's filter radius, in output pixels


@dataclass(frozen=True)
class Preprocess:
    """Resize (short side to `resize`, or both sides when `warp`), centre-crop `crop`, then
    (pixel - mean) / std per channel in `channel_order`."""

    resize: int = 256
    crop: int = 224
    mean: tuple[float, float, float] = (127.0, 127.0, 127.0)
    std: tuple[float, float, float] = (128.0, 128.0, 128.0)
    channel_order: str = "RGB"
    resample: str = "bicubic"
    warp: bool = False

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Preprocess":
        return cls(**{**d, "mean": tuple(d["mean"]), "std": tuple(d["std"])})

    def crop_image(self, img: Image.Image) -> Image.Image:
        """The RGB image the network sees, before normalisation (what the app displays)."""
        if img.mode != "RGB":
            img = img.convert("RGB")
        w, h = img.size
        if self.warp:
            size = (max(self.crop, self.resize),) * 2
        else:
            s = self.resize / min(w, h)
            size = (max(self.crop, round(w * s)), max(self.crop, round(h * s)))
        left = (size[0] - self.crop) // 2
        top = (size[1] - self.crop) // 2
        return _resized_window(img, size, (left, top), self.crop, self.resample)

    def __call__(self, img: Image.Image) -> np.ndarray:
        """(1, crop, crop, 3) float32 NHWC."""
        x = np.asarray(self.crop_image(img), dtype=np.float32)
        if self.channel_order == "BGR":
            x = x[..., ::-1]
        x = (x - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        return x[None].astype(np.float32, copy=False)


def _resized_window(img: Image.Image, size: tuple[int, int], corner: tuple[int, int], crop: int,
                    resample: str) -> Image.Image:
    """`img.resize(size).crop((left, top, left + crop, top + crop))`, computing only the crop.

    Resizing the whole image first would make a 1 x 20000 photo 256 x 5,120,000 pixels (5 GB) to
    keep 224 x 224 of them.  Here the horizontal pass runs on the source rows the vertical filter
    reads for the crop (its support, widened when shrinking) and makes only the crop's columns, the
    vertical pass only its rows: memory crop x (rows read), whatever the aspect ratio.  The pixels
    are those of a full two-pass resize, horizontal first, then cropped (within one level where
    Pillow's float32 box rounds): what Pillow always did up to version 12; 13 sometimes runs the
    vertical pass first, which moves some pixels by a few levels."""
    w, h = img.size
    sx, sy = w / size[0], h / size[1]
    left, top = corner
    reach = _SUPPORT[resample] * max(sy, 1.0) + 1.0
    y0 = max(0, math.floor(top * sy - reach))
    y1 = min(h, math.ceil((top + crop) * sy + reach))
    band = img.crop((0, y0, w, y1))
    band = band.resize((crop, y1 - y0), _RESAMPLE[resample], box=(left * sx, 0, min(w, (left + crop) * sx), y1 - y0))
    return band.resize((crop, crop), _RESAMPLE[resample],
                       box=(0, top * sy - y0, crop, min(y1 - y0, (top + crop) * sy - y0)))
