"""Image bytes or PIL images -> normalised (3, S, S) float tensors for the vision tower (PIL + numpy only)."""

from __future__ import annotations

import io
from typing import Sequence

import numpy as np
import torch
from PIL import Image, ImageOps

# CLIP's statistics; SigLIP and others pass their own.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class ImageDecodeError(ValueError):
    """Bytes that PIL cannot decode (corrupt, truncated, or not an image)."""


class ImageProcessor:
    """Decode, convert to RGB, bicubic-resize to `image_size` square, scale to [0, 1], normalise per channel."""

    def __init__(self, image_size: int, mean: Sequence[float] = CLIP_MEAN, std: Sequence[float] = CLIP_STD):
        if len(mean) != 3 or len(std) != 3:
            raise ValueError(f"mean and std need 3 channels, got {mean} and {std}")
        self.image_size = image_size
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)

    def __call__(self, image: bytes | Image.Image) -> torch.Tensor:
        """One image -> (3, S, S) float32. Raises ImageDecodeError on undecodable bytes."""
        if isinstance(image, (bytes, bytearray, memoryview)):
            image = decode_image(bytes(image))
        rgb = to_rgb(image).resize((self.image_size, self.image_size), Image.BICUBIC)
        pixels = torch.from_numpy(np.asarray(rgb, dtype=np.float32) / 255.0).permute(2, 0, 1)  # (3, S, S)
        return (pixels - self.mean) / self.std


def decode_image(data: bytes) -> Image.Image:
    """PIL image from encoded bytes, fully loaded so truncated files fail here and not later, turned upright by
    its EXIF orientation (a phone photo tagged Orientation=6 is stored sideways; transformers' `load_image`,
    which serves exported models, rotates it too)."""
    try:
        image = Image.open(io.BytesIO(data))
        image.load()  # PIL decodes lazily; force it so corrupt data raises now
        return ImageOps.exif_transpose(image)
    except Exception as e:  # PIL raises several types (UnidentifiedImageError, OSError, SyntaxError, ...)
        raise ImageDecodeError(f"cannot decode image ({len(data)} bytes): {e}") from e


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB view of any PIL mode: transparency is composited on white (a plain convert would keep whatever
    colour the transparent pixels happen to hold, often black), 16-bit grayscale is scaled by its bit depth
    (65535 -> 255, so a dark 16-bit image stays dark), float images are read as [0, 1]."""
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        image = image.convert("RGBA")
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, image).convert("RGB")
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        values = np.asarray(image, dtype=np.float32)
        # PIL opens 16-bit PNG/TIFF grayscale as I;16* or as 32-bit "I" holding 16-bit values; "F" is float.
        full_scale = 1.0 if image.mode == "F" else 65535.0
        scaled = np.round(values * (255.0 / full_scale))
        image = Image.fromarray(np.clip(scaled, 0, 255).astype(np.uint8), mode="L")
    return image if image.mode == "RGB" else image.convert("RGB")
