"""Suite-wide settings: CPU DeepSpeed, no wandb network, and (in CI) no silently skipped tests."""

import os
import sys

import pytest

os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# The Triton pooling kernels are defined when vregion_kernels.pool_visual is first imported, and only kernels
# defined under TRITON_INTERPRET=1 run on CPU tensors. Set it here, before any test module imports vregion (a
# package conftest is too late: modules of other packages collected earlier may import the kernels first).
if not os.environ.get("CUDA_VISIBLE_DEVICES") and not os.path.exists("/dev/nvidia0"):
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_sessionfinish(session, exitstatus):
    """With VREGION_NO_SKIPS=1 (set by .ci/run, which installs every asset) a skipped test fails the run:
    a test that skips because an asset is missing would otherwise pass CI without testing anything."""
    if os.environ.get("VREGION_NO_SKIPS") != "1" or exitstatus != 0:
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = reporter.stats.get("skipped", []) if reporter is not None else []
    if skipped:
        reporter.write_line(f"VREGION_NO_SKIPS: {len(skipped)} test(s) skipped; CI must run them all", red=True)
        session.exitstatus = 1


def pytest_unconfigure(config):
    """Tests that build a trainer in this process set up a one-rank gloo group; destroy it before the
    interpreter exits (a live group's threads can abort the process at finalisation: see
    vregion.distributed.shutdown)."""
    distributed = sys.modules.get("vregion.distributed")
    if distributed is not None:
        distributed.shutdown(wait_for_peers=False)


@pytest.fixture
def no_model(monkeypatch):
    """Building a model fails the test: a bad command-line value must be refused before that (and fast)."""

    def refuse(*args, **kwargs):
        raise AssertionError("a model was built before the bad value was refused")

    monkeypatch.setattr("vregion.models.vlm.build_vlm", refuse)
