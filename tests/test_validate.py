"""Whole-config validation at load: every bad value exits 2 from the CLI, naming its key and the valid values,
before any run directory, model or data exists."""

from pathlib import Path

import pytest

from vregion.cli import main, resolve_config_path
from vregion.config import ConfigError, load_config
from vregion.validate import load_and_validate

# (override, text the message must hold: the key, then a valid value or the range)
BAD_VALUES = [
    ("region.strategy=foo", ["region.strategy", "'foo'", "uniform", "metric"]),
    ("stages.1.region.strategy=foo", ["stages.1.region.strategy", "'foo'", "bottom-top"]),
    ("model.projector.type=mlp3", ["model.projector.type", "'mlp3'", "linear | mlp2x_gelu"]),
    ("model.vision.type=nope", ["model.vision.type", "'nope'", "clip", "siglip"]),
    ("model.template=nope", ["model.template", "'nope'", "vicuna-v1", "chatml"]),
    ("deepspeed.zero_stage=7", ["deepspeed.zero_stage", "7", "0 | 1 | 2 | 3"]),
    ("deepspeed.precision=fp8", ["deepspeed.precision", "'fp8'", "bf16 | fp16 | fp32"]),
    ("train.micro_batch_size=0", ["train.micro_batch_size", "0", ">= 1"]),
    ("train.max_steps=-5", ["train.max_steps", "-5", ">= 1"]),
    ("stages.1.train.max_steps=0", ["stages.1.train.max_steps", ">= 1"]),
    ("stages.5.optim.lr=1", ["stages.5", "out of range", "2 entries"]),
    ("stages.x.optim.lr=1", ["stages.x", "must be an index", "2 entries"]),
    ("optim.lr.x=1", ["optim.lr.x", "not a section"]),
    ("compress.schedule=fastest", ["compress.schedule", "'fastest'", "four-wider-then-deeper", "[K, S, fraction]"]),
    ("compress.schedule=[[2,8,0.5]]", ["compress.schedule", "sum to 1", "last-stage-compression"]),
    ("compress.schedule=[[3]]", ["compress.schedule", "expected (K, S, fraction)"]),
    ("stages.0.compress.schedule=[[40,2,1.0]]", ["stages.0.compress.schedule", "K must be", "two"]),
    ("compress.inference=fast", ["compress.inference", "'fast'", "auto | none | K/S"]),
    ("compress.impl=cuda", ["compress.impl", "'cuda'", "auto | triton | torch"]),
    ("optim.schedule=linear", ["optim.schedule", "'linear'", "cosine | constant"]),
    ("region.mode=qlora", ["region.mode", "'qlora'", "full | lora"]),
    ("region.fraction=1.5", ["region.fraction", "1.5", "> 0 and <= 1"]),
    ("region.fraction=0", ["region.fraction", "> 0 and <= 1"]),
    ("region.count=-2", ["region.count", "-2", ">= 1"]),
    ("region.metric=nope", ["region.metric", "'nope'", "angular"]),
    ("region.strategy=list", ["region.layers", "non-empty"]),
    ("region.layers=[1,1]", ["region.layers", "distinct"]),
    ("region.strategy=metric", ["region.scores", "vregion analyze"]),
    ("optim.betas=[0.9]", ["optim.betas", "two numbers in [0, 1)"]),
    ("optim.warmup_ratio=2", ["optim.warmup_ratio", "<= 1"]),
    ("data.num_workers=-1", ["data.num_workers", ">= 0"]),
    ("run.wandb.mode=cloud", ["run.wandb.mode", "offline | online | disabled"]),
    ("model.llm.tiny.family=gpt9", ["model.llm.tiny.family", "'gpt9'", "qwen2"]),
    ("model.projector.type=linear model.projector.hidden_size=8", ["model.projector.hidden_size", "mlp2x_gelu"]),
]


@pytest.mark.parametrize("override, expected", BAD_VALUES, ids=[o for o, _ in BAD_VALUES])
def test_cli_refuses_bad_value_before_any_work(override, expected, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "tiny", *override.split(), f"run.output_dir={out}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("vregion: config error:"), err
    for text in expected:
        assert text in err, (text, err)
    assert "Traceback" not in err
    assert not out.exists()  # refused before the run directory was made


@pytest.mark.parametrize("verb", [["transfer", "tiny"], ["bench", "tiny", "--plan"]])
def test_every_config_verb_validates(verb, tmp_path, capsys):
    assert main([*verb, "region.strategy=foo", f"run.output_dir={tmp_path / 'run'}"]) == 2
    assert "region.strategy: 'foo' is not valid" in capsys.readouterr().err


def test_replicate_validates(tmp_path, capsys):
    assert main(["replicate", "--config", "tiny", "--out", str(tmp_path / "rep"), "compress.impl=cuda"]) == 2
    assert "compress.impl: 'cuda'" in capsys.readouterr().err


def test_all_problems_reported_at_once():
    with pytest.raises(ConfigError) as err:
        load_and_validate("configs/tiny.yaml", ["model.template=x", "compress.impl=y", "stages.0.region.strategy=z"])
    message = str(err.value)
    assert "model.template" in message and "compress.impl" in message and "stages.0.region.strategy" in message


def test_stage_value_is_named_by_its_stage_only_when_the_stage_sets_it():
    cfg = load_config("configs/tiny.yaml", ["stages.1.optim.lr=0.25"])
    assert cfg.stage_key(1, "optim.lr") == "stages.1.optim.lr"
    assert cfg.stage_key(0, "optim.lr") == "optim.lr"
    assert cfg.stage_key(0, "region.strategy") == "stages.0.region.strategy"  # align sets strategy: none


def test_override_into_config_without_stages_names_the_index():
    with pytest.raises(ConfigError, match=r"stages.0: index out of range; stages has 0 entries"):
        load_config(None, ["stages.0.optim.lr=1"])


def test_bool_is_not_an_integer_choice():
    with pytest.raises(ConfigError, match="deepspeed.zero_stage: True is not valid"):
        load_config(None, ["deepspeed.zero_stage=true"])


@pytest.mark.parametrize("name", sorted(p.stem for p in (Path(__file__).parents[1] / "configs").glob("*.yaml")))
def test_shipped_configs_validate(name):
    assert load_and_validate(resolve_config_path(name)).stage_configs()


def test_folder_named_like_a_shipped_config_is_not_a_config(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tiny").mkdir()
    path = resolve_config_path("tiny")
    assert path.is_file() and path.name == "tiny.yaml" and path.parent != tmp_path
    (tmp_path / "mine").write_text("optim: {lr: 0.5}\n")  # a file does shadow the shipped names
    assert resolve_config_path("mine") == tmp_path.joinpath("mine").relative_to(tmp_path)


def test_packing_needs_several_samples_per_micro_batch():
    with pytest.raises(ConfigError, match=r"data.packing: .*train.micro_batch_size is 1: nothing to pack"):
        load_and_validate("configs/tiny.yaml", ["data.packing=true", "train.micro_batch_size=1"])
    assert load_and_validate("configs/tiny.yaml", ["data.packing=true", "data.group_by_length=4"]).data.packing
    with pytest.raises(ConfigError, match="data.group_by_length"):
        load_and_validate("configs/tiny.yaml", ["data.group_by_length=-1"])
