"""CompressionController: the one place that turns `cfg.compress` + the model depth into pooling settings."""

from __future__ import annotations

import pytest

from vregion.compress import UNCOMPRESSED, CompressionController
from vregion.config import CompressConfig


def test_training_follows_the_schedule_and_inference_keeps_its_last_setting():
    c = CompressionController(CompressConfig(schedule="last-stage-compression"), num_layers=8)
    # phases 2/16, 16/16, 16/4 over 12 steps; K scaled from 32 to 8 layers (2 -> 1 (0.5 rounds up), 16 -> 4)
    assert [(s.index, s.layer, s.stride) for s in (c.at(0, 12), c.at(4, 12), c.at(11, 12))] == [
        (0, 1, 16), (1, 4, 16), (2, 4, 4)]
    assert (c.inference.layer, c.inference.stride) == (4, 4)


def test_no_schedule_trains_uncompressed_and_an_explicit_inference_setting_only_evaluates():
    c = CompressionController(CompressConfig(schedule=None, inference="16/2"), num_layers=8)
    assert c.schedule is None and c.at(3, 10) == UNCOMPRESSED
    assert (c.inference.layer, c.inference.stride) == (4, 2)
    assert CompressionController(CompressConfig(), num_layers=8).inference == UNCOMPRESSED


@pytest.mark.parametrize("flag,expected", [("auto", (4, 4)), ("none", (None, None)), ("8/2", (2, 2))])
def test_from_a_checkpoint_config_with_the_eval_flag(flag, expected):
    config = {"compress": {"schedule": "last-stage-compression"}}
    setting = CompressionController.from_config_dict(config, 8, inference=flag).inference
    assert (setting.layer, setting.stride) == expected
