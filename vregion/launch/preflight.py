"""`vregion doctor`: check, before a multi-node job trains, that every node can join it and agrees on what to run.

Run by hand (`vregion doctor CONFIG`, or `srun -N2 --ntasks-per-node=1 vregion doctor CONFIG`) or by
train.sbatch before its training step. Under srun each task collects its facts (facts.py); task 0 binds the
rendezvous port (MASTER_PORT), which checks that it is free, and the other tasks connect to it and send their
reports, which checks that the master is reachable on that port. Task 0 compares the reports and prints one
table naming each node and what differs; every task exits 78 (EX_CONFIG) when anything does, within seconds,
instead of the job hanging in its first collective or failing an hour later on one node.

Output directory: task 0 writes a marker file into `run.output_dir` before it listens; each other task, once
connected, must read that same marker there. A node that sees another folder at that path (no shared
filesystem, a missing mount) fails here rather than writing its checkpoint shards where no one reads them.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from vregion.config import Config, load_config, resolve_config_path

from . import ports
from .compare import label, problems, table
from .facts import node_facts

PREFLIGHT_FAILED = 78  # EX_CONFIG: the nodes' set-up does not match; nothing was trained
MARKER = ".vregion-preflight"


@dataclass(frozen=True)
class Layout:
    """Who this task is in the check and where task 0 listens."""

    task: int
    tasks: int
    master_addr: str
    port: int | None
    check_id: str


def _first_node_addr() -> str:
    """The address the other nodes reach the first node of the step at: its SLURM NodeAddr (on most clusters
    its name; on the local test cluster 127.0.0.1), as train.sbatch computes MASTER_ADDR."""
    nodelist = os.environ.get("SLURM_STEP_NODELIST") or os.environ.get("SLURM_JOB_NODELIST", "")
    try:
        first = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True,
                               timeout=20).stdout.split()[0]
        node = subprocess.run(["scontrol", "show", "node", first], capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError, IndexError):
        return "127.0.0.1"
    for field in node.split():
        if field.startswith("NodeAddr="):
            return field.split("=", 1)[1]
    return first


def layout_from_env() -> Layout:
    tasks = int(os.environ.get("SLURM_STEP_NUM_TASKS", "1"))
    task = int(os.environ.get("SLURM_PROCID", "0")) if tasks > 1 else 0
    job = os.environ.get("SLURM_JOB_ID")
    port = os.environ.get("MASTER_PORT")
    if port:
        port_number = int(port)
    else:  # what train.sbatch tries first for this job; a plain local run picks any free port (local.sh)
        port_number = ports.default_port(int(job)) if job else None
    if tasks > 1:
        addr = os.environ.get("MASTER_ADDR") or _first_node_addr()
        # The same on every task of this step and different for the next one (and for a requeued attempt).
        check_id = f"{job}.{os.environ.get('SLURM_STEP_ID', '0')}.{os.environ.get('SLURM_RESTART_COUNT', '0')}"
    else:
        addr, check_id = os.environ.get("MASTER_ADDR", "127.0.0.1"), uuid.uuid4().hex
    return Layout(task, tasks, addr, port_number, check_id)


# ------------------------------------------------------------------------------------------- output directory
def write_marker(output_dir: Path, check_id: str) -> str:
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / MARKER).write_text(check_id)
        return "ok" if (output_dir / MARKER).read_text() == check_id else "NOT WRITABLE: the marker read back differs"
    except OSError as e:
        return f"NOT WRITABLE: {e}"


def read_marker(output_dir: Path, check_id: str, wait_s: float) -> str:
    """'ok' once task 0's marker is readable here; network filesystems may cache a missing file for a few
    seconds, so this polls for up to `wait_s`."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            if (output_dir / MARKER).read_text() == check_id:
                return "ok"
        except OSError:
            pass
        if time.monotonic() >= deadline:
            break
        time.sleep(0.2)
    if not output_dir.is_dir():
        return f"NOT VISIBLE: {output_dir} does not exist on this node"
    return f"NOT VISIBLE: the first node's marker did not appear in {output_dir} within {wait_s:g} s (not a " \
           "shared filesystem?)"


# ----------------------------------------------------------------------------------------- the exchange
def _port_note(port: int) -> str:
    return " (inside the ephemeral range: may collide)" if ports.in_ephemeral_range(port) else ""


def _serve(facts: dict, layout: Layout, timeout: float) -> int:
    """Task 0: listen on the rendezvous port, collect the others' reports, compare, print, tell them."""
    assert layout.port is not None
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        server.bind(("", layout.port))
    except OSError as e:
        facts["rendezvous"] = f"NOT FREE: port {layout.port}: {e.strerror}"
        print(table([facts]))
        print(f"vregion doctor: preflight FAILED: {label(facts)}: rendezvous port {layout.port} is in use "
              "(set MASTER_PORT to another port, or let train.sbatch choose one)")
        return PREFLIGHT_FAILED
    facts["rendezvous"] = f"{layout.master_addr}:{layout.port} free{_port_note(layout.port)}"
    reports, connections = {0: facts}, []
    deadline = time.monotonic() + timeout
    with server:
        server.listen(layout.tasks)
        while len(reports) < layout.tasks and time.monotonic() < deadline:
            server.settimeout(max(deadline - time.monotonic(), 0.01))
            try:
                conn, _ = server.accept()
                conn.settimeout(max(deadline - time.monotonic(), 0.01))
                report = json.loads(conn.makefile("r").readline())
            except (OSError, ValueError):
                continue  # a timeout, or a peer that died mid-report: it shows up as missing
            reports[int(report["task"])] = report
            connections.append(conn)
        ordered = [reports[t] for t in sorted(reports)]
        missing = [f"task {t}" for t in range(layout.tasks) if t not in reports]
        failed = problems(ordered)
        failed += [f"{m}: no report within {timeout:g} s (it could not reach {layout.master_addr}:{layout.port}, "
                     "or failed before it could)" for m in missing]
        verdict = b"fail\n" if failed else b"ok\n"
        for conn in connections:
            with conn:
                try:
                    conn.sendall(verdict)
                    conn.settimeout(5)
                    conn.recv(1)  # the peer closes first, so TIME_WAIT stays on its side, not on this port
                except OSError:
                    pass
    _print_result(ordered, missing, failed)
    return PREFLIGHT_FAILED if failed else 0


def _report_to_master(facts: dict, layout: Layout, output_dir: Path | None, timeout: float, fs_wait: float) -> int:
    """Any other task: connect to task 0 (retrying until it listens), then check the marker and report."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            conn = socket.create_connection((layout.master_addr, layout.port), timeout=5)
            break
        except OSError as e:
            if time.monotonic() >= deadline:
                print(f"vregion doctor: preflight FAILED: {label(facts)} cannot reach the first node at "
                      f"{layout.master_addr}:{layout.port} within {timeout:g} s ({e}): a firewall, a wrong "
                      "MASTER_ADDR, or the first node failed its own check")
                return PREFLIGHT_FAILED
            time.sleep(0.2)
    with conn:
        facts["rendezvous"] = f"reached {layout.master_addr}:{layout.port}"
        if output_dir is not None:
            facts["output_dir"] = read_marker(output_dir, layout.check_id, fs_wait)
        conn.sendall((json.dumps(facts) + "\n").encode())
        conn.settimeout(max(deadline - time.monotonic(), 5.0))
        try:
            verdict = conn.makefile("r").readline().strip()
        except OSError:
            verdict = ""
    if verdict == "ok":
        return 0
    print(f"vregion doctor: {label(facts)}: the preflight check failed (the first node's table says why)")
    return PREFLIGHT_FAILED


def _print_result(reports: list[dict], missing: list[str], failed: list[str]) -> None:
    print(table(reports, missing))
    nodes = len(reports) + len(missing)
    if failed:
        print(f"vregion doctor: preflight FAILED ({nodes} node(s)):")
        for problem in failed:
            print(f"  {problem}")
    else:
        print(f"vregion doctor: every check passed on {nodes} node(s)")


def run_doctor(config: str | None, overrides: list[str], timeout: float = 30.0, fs_wait: float = 10.0) -> int:
    """Check this node, or every task of the srun step; 0 when all agree, PREFLIGHT_FAILED otherwise."""
    cfg: Config | None = load_config(resolve_config_path(config), overrides) if config else None
    layout = layout_from_env()
    facts = {"task": str(layout.task), **node_facts(cfg)}
    output_dir = Path(cfg.run.output_dir).expanduser().resolve() if cfg is not None else None
    if layout.tasks > 1 and layout.task > 0:
        return _report_to_master(facts, layout, output_dir, timeout, fs_wait)
    if output_dir is not None:
        facts["output_dir"] = write_marker(output_dir, layout.check_id)
    try:
        if layout.tasks > 1:
            return _serve(facts, layout, timeout)
        if layout.port is None:
            facts["rendezvous"] = "MASTER_PORT not set (launch/local.sh picks a free port)"
        elif ports.is_free(layout.port):
            facts["rendezvous"] = f"{layout.master_addr}:{layout.port} free{_port_note(layout.port)}"
        else:
            facts["rendezvous"] = f"NOT FREE: port {layout.port} is in use"
        failed = problems([facts])
        if facts["rendezvous"].startswith("NOT"):
            failed.append(f"{label(facts)}: rendezvous port {layout.port} is in use")
        _print_result([facts], [], failed)
        return PREFLIGHT_FAILED if failed else 0
    finally:
        if output_dir is not None:
            (output_dir / MARKER).unlink(missing_ok=True)
