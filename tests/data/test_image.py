"""ImageProcessor: mode conversion, resize, normalisation, and a clear error on undecodable bytes."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from vregion.data import ImageDecodeError, ImageProcessor

from .conftest import png_bytes

MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.5)


def expected(rgb) -> torch.Tensor:
    return (torch.tensor(rgb, dtype=torch.float32) / 255 - torch.tensor(MEAN)) / torch.tensor(STD)


def encode(image: Image.Image, fmt: str = "PNG") -> bytes:
    out = io.BytesIO()
    image.save(out, format=fmt)
    return out.getvalue()


def test_solid_colour_is_resized_and_normalised():
    pixels = ImageProcessor(8, MEAN, STD)(png_bytes((220, 30, 90), size=5))
    assert pixels.shape == (3, 8, 8) and pixels.dtype == torch.float32
    torch.testing.assert_close(pixels, expected((220, 30, 90)).view(3, 1, 1).expand(3, 8, 8), atol=1e-5, rtol=0)


def test_resize_keeps_layout():
    array = np.zeros((16, 32, 3), dtype=np.uint8)
    array[:, 16:] = 255  # right half white
    pixels = ImageProcessor(8, (0, 0, 0), (1, 1, 1))(Image.fromarray(array))
    assert pixels.shape == (3, 8, 8)
    assert pixels[:, :, :3].max() < 0.05 and pixels[:, :, 5:].min() > 0.95


@pytest.mark.parametrize("mode,value,rgb", [
    ("L", 100, (100, 100, 100)),
    ("P", 0, None),  # palette index 0 -> whatever the palette holds, checked below
    ("RGBA", (10, 20, 30, 0), (255, 255, 255)),  # fully transparent -> white, not the stored colour
    ("LA", (40, 255), (40, 40, 40)),
    ("CMYK", (0, 0, 0, 0), (255, 255, 255)),
])
def test_modes_become_rgb(mode, value, rgb):
    image = Image.new(mode, (4, 4), value)
    if mode == "P":
        image.putpalette([12, 34, 56] * 256)
        rgb = (12, 34, 56)
    pixels = ImageProcessor(4, MEAN, STD)(image)
    torch.testing.assert_close(pixels[:, 0, 0], expected(rgb), atol=1e-5, rtol=0)


def test_palette_transparency_and_16_bit_grey():
    image = Image.new("P", (4, 4), 1)
    image.putpalette([0, 0, 0] + [200, 0, 0] * 255)
    image.info["transparency"] = 1
    pixels = ImageProcessor(4, MEAN, STD)(encode(image))
    torch.testing.assert_close(pixels[:, 0, 0], expected((255, 255, 255)), atol=1e-5, rtol=0)


@pytest.mark.parametrize("value,grey", [(0, 0), (1000, 4), (32896, 128), (65535, 255)])
def test_16_bit_grey_is_scaled_by_its_bit_depth_not_by_its_own_maximum(value, grey):
    """A uniformly dark 16-bit image stays dark (scaling by the image's maximum made every flat image white)."""
    image = Image.fromarray(np.full((4, 4), value, dtype=np.uint16))  # PIL: mode I;16
    pixels = ImageProcessor(4, MEAN, STD)(encode(image))
    torch.testing.assert_close(pixels[:, 0, 0], expected((grey, grey, grey)), atol=1e-5, rtol=0)


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_exif_orientation_is_applied_like_transformers_load_image(tmp_path, orientation):
    """A phone photo stored sideways with an EXIF Orientation tag is seen upright, as transformers'
    `load_image` (how exported models are usually served) sees it."""
    from transformers.image_utils import load_image

    array = np.zeros((8, 16, 3), dtype=np.uint8)  # stored 16 wide, 8 high
    array[:, :8] = (255, 0, 0)  # left half red, right half blue
    array[:, 8:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / "photo.png"
    Image.fromarray(array).save(path, exif=exif)
    upright = load_image(str(path))
    assert upright.size == ((8, 16) if orientation in (6, 8) else (16, 8))  # really rotated
    processor = ImageProcessor(16, (0, 0, 0), (1, 1, 1))
    torch.testing.assert_close(processor(path.read_bytes()), processor(upright), atol=1e-6, rtol=0)
    assert not torch.allclose(processor(path.read_bytes()), processor(Image.fromarray(array)), atol=0.1)


@pytest.mark.parametrize("data", [b"", b"not an image at all", png_bytes(size=16)[:60]])
def test_undecodable_bytes_raise_a_clear_error(data):
    with pytest.raises(ImageDecodeError, match="cannot decode image"):
        ImageProcessor(8)(data)
