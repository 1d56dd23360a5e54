"""`vregion doctor` without SLURM: one node, and two real processes exchanging reports as srun's tasks would;
the port choice, the run directory helper and the report comparison."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.engine.launch import REPO, free_port, train_env
from vregion.launch import ports
from vregion.launch.compare import problems, table
from vregion.launch.paths import run_directory
from vregion.launch.preflight import MARKER, PREFLIGHT_FAILED


def _doctor(*args: str, env: dict | None = None, **popen) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "vregion.cli", "doctor", *args], cwd=REPO,
                            env={**train_env(), "PYTHONPATH": str(REPO), **(env or {})}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, **popen)


def test_doctor_on_one_node_reports_versions_and_checks_the_output_folder_and_shards(tmp_path):
    port = ports.choose_port(os.getpid())
    proc = _doctor("tiny", f"run.output_dir={tmp_path}/run", env={"MASTER_PORT": str(port)})
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out
    rows = dict(line.split(None, 1) for line in out.splitlines()[1:] if line and not line.startswith("vregion"))
    import torch
    import transformers

    assert rows["torch"].strip() == torch.__version__ and rows["transformers"].strip() == transformers.__version__
    assert rows["output_dir"].strip() == "ok" and rows["accelerators"].strip() == "none (CPU)"
    assert rows["rendezvous"].strip() == f"127.0.0.1:{port} free"
    assert not (tmp_path / "run" / MARKER).exists()  # the marker is removed after the check

    missing = _doctor("tiny", f"run.output_dir={tmp_path}/run", f"data.train_shards={tmp_path}/none.tar")
    out, _ = missing.communicate(timeout=120)
    assert missing.returncode == PREFLIGHT_FAILED
    assert "shards: MISSING data.train_shards: shard not found" in out

    # A port the kernel may hand to any outgoing connection is still usable, and flagged.
    ephemeral = free_port()
    assert ports.in_ephemeral_range(ephemeral)
    flagged = _doctor(env={"MASTER_PORT": str(ephemeral)})
    out, _ = flagged.communicate(timeout=120)
    assert flagged.returncode == 0 and f"{ephemeral} free (inside the ephemeral range: may collide)" in out

    bad = _doctor("tiny", "--timeout", "-1")
    out, _ = bad.communicate(timeout=60)
    assert bad.returncode == 2 and "--timeout must be > 0" in out


def test_doctor_fails_on_a_busy_rendezvous_port(tmp_path):
    with socket.socket() as busy:
        busy.bind(("", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = _doctor(env={"MASTER_PORT": str(port)})
        out, _ = proc.communicate(timeout=120)
    assert proc.returncode == PREFLIGHT_FAILED, out
    assert f"rendezvous port {port} is in use" in out


def test_two_tasks_exchange_reports_and_the_one_with_another_transformers_is_named(tmp_path):
    """Two processes with srun's variables (task 0 and 1 of a step): task 1 sees transformers 9.9.9 first on its
    path. Both exit 78; task 0 prints the table naming node b and the difference."""
    shim = tmp_path / "site"
    (shim / "transformers-9.9.9.dist-info").mkdir(parents=True)
    (shim / "transformers-9.9.9.dist-info" / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: transformers\nVersion: 9.9.9\n")
    port = free_port()
    common = {"SLURM_STEP_NUM_TASKS": "2", "SLURM_JOB_ID": "7", "SLURM_STEP_ID": "0", "MASTER_ADDR": "127.0.0.1",
              "MASTER_PORT": str(port)}
    args = ("tiny", f"run.output_dir={tmp_path}/run")
    first = _doctor(*args, env={**common, "SLURM_PROCID": "0", "SLURMD_NODENAME": "a"})
    second = _doctor(*args, env={**common, "SLURM_PROCID": "1", "SLURMD_NODENAME": "b",
                                 "PYTHONPATH": f"{shim}{os.pathsep}{REPO}"})
    out0, _ = first.communicate(timeout=120)
    out1, _ = second.communicate(timeout=120)
    assert first.returncode == PREFLIGHT_FAILED and second.returncode == PREFLIGHT_FAILED, (out0, out1)
    assert "b (task 1): transformers is '9.9.9', the first node has '" in out0
    header = next(line for line in out0.splitlines() if line.startswith("check "))
    assert header.split() == ["check", "a", "(task", "0)", "b", "(task", "1)"]
    assert "output_dir" in out0 and "NOT VISIBLE" not in out0  # the same folder: the marker was read
    assert "the first node's table says why" in out1


def test_reports_that_agree_pass_and_a_node_that_cannot_see_the_folder_is_named():
    a = {"task": "0", "node": "n1", "python": "3.11.7", "output_dir": "ok", "shards": "2 files, 10 bytes, ab"}
    b = {**a, "task": "1", "node": "n2"}
    assert problems([a, b]) == []
    c = {**b, "output_dir": "NOT VISIBLE: /r does not exist on this node"}
    assert problems([a, c]) == ["n2 (task 1): output_dir is 'NOT VISIBLE: /r does not exist on this node', "
                                "the first node has 'ok'"]
    both_missing = [{**a, "shards": "MISSING x"}, {**b, "shards": "MISSING x"}]
    assert problems(both_missing) == ["n1 (task 0): shards: MISSING x", "n2 (task 1): shards: MISSING x"]
    assert "* NOT VISIBLE" in table([a, c])


def test_ports_stay_outside_the_ephemeral_range_and_skip_a_busy_one():
    linux = (32768, 60999)
    window = ports.port_window(linux)
    assert (window.start, window.stop) == (20000, 32768)
    assert all(not ports.in_ephemeral_range(ports.default_port(j, linux), linux) for j in range(0, 200000, 997))
    assert ports.default_port(12345, linux) == ports.default_port(12345, linux) != ports.default_port(12346, linux)
    # A kernel that hands out ports from 10000 up: the window moves above its range; with none left, say so.
    assert ports.port_window((10000, 60000)) == range(60001, 65536)
    with pytest.raises(RuntimeError, match="set MASTER_PORT"):
        ports.port_window((1024, 65535))
    job = 4242
    port = ports.default_port(job)
    with socket.socket() as busy:
        busy.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            busy.bind(("", port))
        except OSError:
            pytest.skip(f"port {port} is already taken on this machine")
        busy.listen()
        assert not ports.is_free(port)
        assert ports.choose_port(job) == window[(window.index(port) + 1) % len(window)]


def test_run_directory_is_the_configs_output_dir_resolved_like_the_ranks_do(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert run_directory("tiny", []) == tmp_path / "runs" / "tiny"
    assert run_directory("tiny", ["run.output_dir=~/x"]) == Path.home() / "x"
    proc = subprocess.run([sys.executable, "-m", "vregion.launch.paths", "tiny", "nosuch.key=1"], cwd=REPO,
                          env={**train_env(), "PYTHONPATH": str(REPO)}, capture_output=True, text=True)
    assert proc.returncode == 2 and "nosuch" in proc.stderr
