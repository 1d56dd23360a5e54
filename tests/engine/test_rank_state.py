"""Resumable rank state loads through torch's weights-only unpickler: RNGs restore exactly, old files (numpy's RNG
array inside) still load, and a file whose pickle would run code is refused with nothing run."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from vregion.engine import checkpoint


def draws() -> tuple:
    return random.random(), float(np.random.rand()), float(torch.rand(1))


def test_rank_state_round_trips_every_rng_under_weights_only(tmp_path):
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    torch.save({"data_position": 40, "skipped": {"decode": 2}, "rng": checkpoint._rng_state()}, tmp_path / "r.pt")
    expected = draws()
    torch.load(tmp_path / "r.pt", weights_only=True)  # plain data: the default restricted unpickler accepts it
    state = checkpoint.load_rank_state(tmp_path / "r.pt")
    checkpoint._set_rng_state(state.pop("rng"))
    assert draws() == expected
    assert state == {"data_position": 40, "skipped": {"decode": 2}}


def test_a_file_written_by_older_versions_still_loads(tmp_path):
    random.seed(4), np.random.seed(5), torch.manual_seed(6)
    old = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    torch.save({"data_position": 8, "skipped": {}, "rng": old}, tmp_path / "old.pt")
    expected = draws()
    state = checkpoint.load_rank_state(tmp_path / "old.pt")
    checkpoint._set_rng_state(state.pop("rng"))
    assert draws() == expected and state["data_position"] == 8


class WritesAMarker:
    """Unpickling this calls exec, which writes a file: what a malicious checkpoint would do."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').write('ran')",)


def test_a_rank_state_whose_pickle_runs_code_is_refused(tmp_path):
    marker = tmp_path / "marker"
    torch.save({"data_position": 1, "rng": WritesAMarker(marker)}, tmp_path / "evil.pt")
    with pytest.raises(RuntimeError, match=r"refusing to load .*evil.pt.*GLOBAL exec"):
        checkpoint.load_rank_state(tmp_path / "evil.pt")
    assert not marker.exists()
