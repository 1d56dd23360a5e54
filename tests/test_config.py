"""Config loading: strict keys, overrides, stages."""

import subprocess
import sys

import pytest

from vregion.cli import main
from vregion.config import ConfigError, load_config, resolve_config_path


def test_unknown_key_names_itself_and_the_valid_keys(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("optim:\n  lrr: 0.1\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    message = str(err.value)
    assert "optim.lrr" in message
    assert "did you mean 'lr'" in message
    assert "projector_lr" in message and "warmup_ratio" in message


def test_unknown_top_level_section():
    with pytest.raises(ConfigError, match="unknown config key 'regoin'.*valid keys in the top level: run, model"):
        load_config(None, ["regoin.count=3"])


def test_wrong_type_is_rejected():
    with pytest.raises(ConfigError, match="train.max_steps: expected an integer"):
        load_config(None, ["train.max_steps=ten"])


def test_overrides_keep_types_and_scientific_notation():
    cfg = load_config(None, ["optim.lr=1e-3", "region.count=8", "region.layers=[1, 2]", "train.max_steps=5"])
    assert cfg.optim.lr == pytest.approx(1e-3)
    assert cfg.region.count == 8 and cfg.region.layers == [1, 2]
    assert cfg.train.max_steps == 5


def test_stages_override_defaults_and_are_validated_early():
    cfg = load_config(None, ["optim.lr=0.5", "stages=[{name: a, region: {strategy: none}}, {name: b}]"])
    a, b = cfg.stage_configs()
    assert (a.stage_name, a.region.strategy, a.optim.lr) == ("a", "none", 0.5)
    assert (b.stage_name, b.region.strategy) == ("b", "uniform")
    with pytest.raises(ConfigError, match=r"stage 'x': unknown config key 'stages.0.region.stratgy'"):
        load_config(None, ["stages=[{name: x, region: {stratgy: none}}]"])
    with pytest.raises(ConfigError, match="unique"):
        load_config(None, ["stages=[{name: x}, {name: x}]"])


def test_stage_override_by_index():
    cfg = load_config("configs/tiny.yaml", ["stages.1.optim.lr=0.25"])
    assert cfg.stage_configs()[1].optim.lr == 0.25
    assert cfg.stage_configs()[0].optim.lr == pytest.approx(3e-3)


@pytest.mark.parametrize("name", ["tiny", "demo", "demo-transfer", "demo-all", "llava-1.5-7b", "llava-1.5-13b",
                                  "bunny-llama-3-8b-v"])
def test_shipped_configs_load(name):
    cfg = load_config(resolve_config_path(name))
    assert cfg.stage_configs()


def test_llava_recipes_pad_images_and_the_default_squashes():
    """LLaVA-1.5 trained with image_aspect_ratio: pad; vregion's own recipes keep squash."""
    for name in ("llava-1.5-7b", "llava-1.5-13b"):
        assert load_config(f"configs/{name}.yaml").model.vision.image_aspect == "pad"
    assert load_config("configs/tiny.yaml").model.vision.image_aspect == "squash"
    with pytest.raises(ConfigError, match=r"model.vision.image_aspect: 'letterbox' is not valid; valid: squash \| pad"):
        load_config("configs/tiny.yaml", ["model.vision.image_aspect=letterbox"])


def test_cli_reports_config_errors_without_traceback(capsys):
    assert main(["train", "tiny", "optim.nope=1"]) == 2
    err = capsys.readouterr().err
    assert "optim.nope" in err and "valid keys in optim" in err


def test_the_program_exits_with_mains_code():
    """`python -m vregion.cli` (what the launchers run) goes through `run`, which must keep main's exit code."""
    proc = subprocess.run([sys.executable, "-m", "vregion.cli", "train", "tiny", "optim.nope=1"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "optim.nope" in proc.stderr and "Traceback" not in proc.stderr
