"""Image -> network input, as each model's training pipeline expects it."""
from __future__ import annotations

from dataclasses import dataclass, asdict

import numpy as np
from PIL import Image

_RESAMPLE = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}


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
        img = img.convert("RGB")
        w, h = img.size
        if self.warp:
            size = (self.resize, self.resize)
        else:
            s = self.resize / min(w, h)
            size = (max(self.crop, round(w * s)), max(self.crop, round(h * s)))
        img = img.resize(size, _RESAMPLE[self.resample])
        left = (size[0] - self.crop) // 2
        top = (size[1] - self.crop) // 2
        return img.crop((left, top, left + self.crop, top + self.crop))

    def __call__(self, img: Image.Image) -> np.ndarray:
        """(1, crop, crop, 3) float32 NHWC."""
        x = np.asarray(self.crop_image(img), dtype=np.float32)
        if self.channel_order == "BGR":
            x = x[..., ::-1]
        x = (x - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        return x[None].astype(np.float32, copy=False)
