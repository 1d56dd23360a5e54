"""Image aspect modes (squash | pad | crop): each equals a hand computation on a non-square image, `pad` follows
LLaVA-1.5's expand-to-square rule, and Hugging Face's processors (what `vregion export` writes) agree."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from vregion.data import IMAGE_ASPECTS, ImageProcessor
from vregion.data.image import expand_to_square, pad_colour
from vregion.models.backbones import CLIP_MEAN, CLIP_STD

MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.5)


def normalise(array: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 -> (3, H, W) normalised with MEAN/STD, computed by hand."""
    pixels = torch.tensor(array, dtype=torch.float32) / 255
    return ((pixels - torch.tensor(MEAN)) / torch.tensor(STD)).permute(2, 0, 1)


def columns_image(width: int, height: int) -> np.ndarray:
    """(H, W, 3): column x has colour (10 + 20x, 200 - 20x, 7x); every row is the same."""
    row = np.array([[10 + 20 * x, 200 - 20 * x, 7 * x] for x in range(width)], dtype=np.uint8)  # (W, 3)
    return np.repeat(row[None], height, axis=0)


def test_modes_are_the_documented_ones():
    assert IMAGE_ASPECTS == ("squash", "pad", "crop")
    with pytest.raises(ValueError, match="'stretch' is not valid; valid: squash | pad | crop"):
        ImageProcessor(4, MEAN, STD, "stretch")


def test_pad_places_a_wide_image_in_the_middle_of_a_mean_coloured_square():
    image = columns_image(4, 2)  # W 4, H 2: one row of padding above, one below
    got = ImageProcessor(4, MEAN, STD, "pad")(Image.fromarray(image))
    fill = np.array([int(m * 255) for m in MEAN], dtype=np.uint8)  # (127, 102, 76)
    expected = np.empty((4, 4, 3), dtype=np.uint8)
    expected[:] = fill
    expected[1:3] = image  # offset (4 - 2) // 2 = 1
    torch.testing.assert_close(got, normalise(expected), atol=1e-6, rtol=0)


def test_pad_places_a_tall_odd_image_with_the_offset_rounded_down():
    image = columns_image(3, 6)  # W 3, H 6
    got = ImageProcessor(6, MEAN, STD, "pad")(Image.fromarray(image))
    expected = np.empty((6, 6, 3), dtype=np.uint8)
    expected[:] = [int(m * 255) for m in MEAN]
    expected[:, 1:4] = image  # offset (6 - 3) // 2 = 1 on the left, 2 columns on the right
    torch.testing.assert_close(got, normalise(expected), atol=1e-6, rtol=0)


def test_crop_keeps_the_centre_of_the_long_side():
    image = columns_image(7, 4)  # W 7, H 4: the shortest side is already 4, no resize
    got = ImageProcessor(4, MEAN, STD, "crop")(Image.fromarray(image))
    torch.testing.assert_close(got, normalise(image[:, 1:5]), atol=1e-6, rtol=0)  # left (7 - 4) // 2 = 1


def test_squash_keeps_every_column_and_stretches_the_rows():
    image = columns_image(4, 2)  # constant down each column: a vertical resize keeps each column's colour
    got = ImageProcessor(4, MEAN, STD, "squash")(Image.fromarray(image))
    torch.testing.assert_close(got, normalise(np.repeat(image[:1], 4, axis=0)), atol=1e-6, rtol=0)


def test_the_three_modes_differ_on_a_non_square_image():
    image = Image.fromarray(columns_image(8, 4))
    outs = {mode: ImageProcessor(4, MEAN, STD, mode)(image) for mode in IMAGE_ASPECTS}
    assert not torch.allclose(outs["squash"], outs["pad"]) and not torch.allclose(outs["pad"], outs["crop"])
    assert not torch.allclose(outs["squash"], outs["crop"])


def llava_expand2square(image: Image.Image, background: tuple) -> Image.Image:
    """LLaVA-1.5's rule as its paper code states it: wide images pasted at (0, (W - H) // 2), tall ones at
    ((H - W) // 2, 0), on a canvas of the processor mean times 255 (int)."""
    width, height = image.size
    if width == height:
        return image
    if width > height:
        result = Image.new(image.mode, (width, width), background)
        result.paste(image, (0, (width - height) // 2))
        return result
    result = Image.new(image.mode, (height, height), background)
    result.paste(image, ((height - width) // 2, 0))
    return result


@pytest.mark.parametrize("size", [(9, 4), (4, 9), (5, 5)])
def test_pad_matches_llava_expand2square(size):
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    background = tuple(int(x * 255) for x in CLIP_MEAN)
    assert pad_colour(CLIP_MEAN) == background == (122, 116, 104)
    assert np.array_equal(np.asarray(expand_to_square(image, background)),
                          np.asarray(llava_expand2square(image, background)))
    ours = ImageProcessor(12, CLIP_MEAN, CLIP_STD, "pad")(image)
    square = llava_expand2square(image, background).resize((12, 12), Image.BICUBIC)
    reference = (torch.tensor(np.asarray(square), dtype=torch.float32) / 255 - torch.tensor(CLIP_MEAN)) \
        / torch.tensor(CLIP_STD)
    torch.testing.assert_close(ours, reference.permute(2, 0, 1), atol=1e-6, rtol=0)


@pytest.mark.parametrize("aspect", IMAGE_ASPECTS)
def test_exported_processor_reproduces_each_mode(aspect):
    from vregion.config import VisionConfig
    from vregion.models.backbones import build_vision_backbone
    from vregion.models.hf_export import image_processor

    vision = build_vision_backbone(VisionConfig(type="clip", tiny={}, image_aspect=aspect))  # 32 px
    rng = np.random.default_rng(1)
    image = Image.fromarray(rng.integers(0, 256, (20, 50, 3), dtype=np.uint8))  # W 50, H 20
    ours = ImageProcessor(vision.image_size, vision.image_mean, vision.image_std, aspect)(image)
    theirs = image_processor(vision)(images=image, return_tensors="pt")["pixel_values"][0]
    assert theirs.shape == ours.shape == (3, 32, 32)
    # Both resize with PIL's bicubic; HF rescales in float after it, so values agree to a uint8 rounding step.
    torch.testing.assert_close(theirs, ours, atol=0.02, rtol=0)
