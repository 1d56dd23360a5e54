"""Image bytes or PIL images -> normalised (3, S, S) float tensors for the vision tower (PIL + numpy only).

How a non-square image becomes the tower's square input is the checkpoint's `model.vision.image_aspect`:
- `squash`: bicubic resize of the whole image to S x S (aspect ratio lost; vregion's default).
- `pad`: LLaVA-1.5's `image_aspect_ratio: pad`: expand to a square canvas (image centred) filled with the
  normalisation mean as a colour, `int(mean * 255)` per channel (so padding normalises to about 0), then resize.
- `crop`: llava-hf / CLIP processors: bicubic resize of the shortest side to S (long side `int(S * long / short)`),
  then the centred S x S crop (offsets rounded down).
"""

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


IMAGE_ASPECTS = ("squash", "pad", "crop")


def pad_colour(mean: Sequence[float]) -> tuple[int, int, int]:
    """LLaVA-1.5's padding colour: the normalisation mean in 0..255, truncated (CLIP: (122, 116, 104))."""
    return tuple(int(m * 255) for m in mean)


def expand_to_square(image: Image.Image, fill: tuple[int, int, int]) -> Image.Image:
    """The image centred on a square canvas of its longer side, filled with `fill` (offsets rounded down)."""
    width, height = image.size
    if width == height:
        return image
    side = max(width, height)
    canvas = Image.new(image.mode, (side, side), fill)
    canvas.paste(image, ((side - width) // 2, (side - height) // 2))
    return canvas


def resize_and_centre_crop(image: Image.Image, size: int) -> Image.Image:
    """Shortest side to `size` (bicubic), then the centred `size` x `size` crop."""
    width, height = image.size
    short, long = min(width, height), max(width, height)
    long = int(size * long / short)  # truncated, as Hugging Face's shortest-edge resize computes it
    new = (size, long) if width <= height else (long, size)  # (W, H)
    if new != image.size:
        image = image.resize(new, Image.BICUBIC)
    left, top = (new[0] - size) // 2, (new[1] - size) // 2
    return image.crop((left, top, left + size, top + size))


class ImageProcessor:
    """Decode, convert to RGB, make square by `aspect` (squash | pad | crop) at `image_size`, scale to [0, 1],
    normalise per channel."""

    def __init__(self, image_size: int, mean: Sequence[float] = CLIP_MEAN, std: Sequence[float] = CLIP_STD,
                 aspect: str = "squash"):
        if len(mean) != 3 or len(std) != 3:
            raise ValueError(f"mean and std need 3 channels, got {mean} and {std}")
        if aspect not in IMAGE_ASPECTS:
            raise ValueError(f"image aspect {aspect!r} is not valid; valid: {' | '.join(IMAGE_ASPECTS)}")
        self.image_size = image_size
        self.aspect = aspect
        self.fill = pad_colour(mean)
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)

    def __call__(self, image: bytes | Image.Image) -> torch.Tensor:
        """One image -> (3, S, S) float32. Raises ImageDecodeError on undecodable bytes."""
        if isinstance(image, (bytes, bytearray, memoryview)):
            image = decode_image(bytes(image))
        rgb = self.square(to_rgb(image))
        pixels = torch.from_numpy(np.asarray(rgb, dtype=np.float32) / 255.0).permute(2, 0, 1)  # (3, S, S)
        return (pixels - self.mean) / self.std

    def square(self, rgb: Image.Image) -> Image.Image:
        """The RGB image as the tower's S x S input, by this processor's aspect mode."""
        size = (self.image_size, self.image_size)
        if self.aspect == "crop":
            return resize_and_centre_crop(rgb, self.image_size)
        if self.aspect == "pad":
            rgb = expand_to_square(rgb, self.fill)
        return rgb if rgb.size == size else rgb.resize(size, Image.BICUBIC)


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
