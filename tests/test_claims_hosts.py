"""Claims across hosts (:mod:`cpc_fast.io.claims`): two experiment workers made to report
different host names share one folder, with a short ``stale_after_s``.

While host A trains a unit, host B, idle, watches A's claim for longer than ``stale_after_s``
and leaves it alone: A's heartbeat moves. Then host A disappears (SIGKILL: no clean-up, the
heartbeat stops, and from host B its pid means nothing): B takes the unit over once the
claim has been still for ``stale_after_s``, resumes it from its last epoch and finishes it.
Every unit is trained to the end exactly once.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

STALE, HEARTBEAT = 1.0, 0.2
# One worker as if on host argv[1], its claims timed as above, each of its training batches
# argv[2] seconds slower (so that host A is still training while B has nothing left to do).
_WORKER = f"""
import socket, sys, time
socket.gethostname = lambda: sys.argv[1]
from cpc_fast.emotion import train
from cpc_fast.io import claims
board = claims.ClaimBoard.__init__
claims.ClaimBoard.__init__ = lambda self, folder, launch, **_: board(
    self, folder, launch, heartbeat_s={HEARTBEAT}, stale_after_s={STALE})
step, delay = train._Fitting._step, float(sys.argv[2])
train._Fitting._step = lambda self, *a: (time.sleep(delay), step(self, *a))[1]
from cpc_fast.cli import main
main(sys.argv[3:])
"""
ARGS = ["experiment", "--dataset", "synthetic", "--preset", "tiny", "--setups", "sup"]
ARGS += ["--folds", "1", "--runs", "2", "--epochs", "6", "--cpu-processes", "1", "--quiet"]


def wait_for(ready, proc: subprocess.Popen, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while not ready():
        assert proc.poll() is None, proc.stderr.read()[-3000:]
        assert time.monotonic() < deadline, f"not within {seconds} s"
        time.sleep(0.02)


def _events(out: Path) -> list[list[str]]:
    """[event, task, host, pid] of each line of events.log."""
    path = out / ".claims" / "events.log"
    return [line.split()[1:] for line in path.read_text().splitlines()] if path.exists() else []


def _owner_host(claim: Path) -> str | None:
    try:
        return claim.read_text().split('"host": "')[1].split('"')[0]
    except (OSError, IndexError):
        return None


def test_a_vanished_hosts_unit_is_taken_over_after_stale_after_s_and_trained_once(tmp_path):
    out = tmp_path / "exp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def worker(host: str, delay: float) -> subprocess.Popen:
        command = [sys.executable, "-c", _WORKER, host, str(delay), *ARGS, "--out", str(out)]
        return subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True)

    a = worker("host-a", 0.15)
    b = None
    try:
        wait_for(lambda: any(e[0] == "start" and "run" in e[1] for e in _events(out)), a)
        (held,) = [e[1] for e in _events(out) if e[0] == "start" and "run" in e[1]]
        b = worker("host-b", 0.0)
        wait_for(lambda: any(e[0] == "done" and e[2] == "host-b" for e in _events(out)), b)
        time.sleep(2 * STALE)  # B has nothing to do but watch A's claim
        assert a.poll() is None and not (out / held.replace(".", "/") / "done").exists()
        assert not any(e[0].startswith("takeover") for e in _events(out))  # A's beat moves
        assert (out / held.replace(".", "/") / "state.pt").exists()  # an epoch to resume
        a.send_signal(signal.SIGKILL)  # host A is gone
        vanished = time.monotonic()
        claim = out / ".claims" / f"{held}.claim"
        wait_for(lambda: _owner_host(claim) == "host-b", b)
        assert time.monotonic() - vanished >= STALE - HEARTBEAT
        assert b.wait(timeout=120) == 0, b.stderr.read()[-3000:]
    finally:
        for proc in (a, b):
            if proc is not None:
                proc.kill()
                proc.wait()
    events = _events(out)
    assert [f"takeover-from:host-a:{a.pid}", held, "host-b", str(b.pid)] in events
    for unit in ("sup.fold1.run1", "sup.fold1.run2"):
        assert [e[0] for e in events if e[1] == unit].count("done") == 1, events
    assert [e[2] for e in events if e[1] == held and e[0] == "start"] == ["host-a", "host-b"]
    assert (out / "results.json").is_file()
