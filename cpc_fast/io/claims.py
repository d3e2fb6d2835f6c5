"""Claim files: many workers, on one host or many, share a list of tasks through a folder.

    board = ClaimBoard(out / ".claims", launch="3f2a...")
    claim = board.try_claim("sup.fold1.run1")   # None: another live worker holds it
    if claim is not None:
        with claim:                               # heartbeats while held, removed on exit
            ...

A claim is ``<folder>/<task>.claim``, created with ``O_CREAT | O_EXCL`` (one creator wins,
on a local disk and on NFSv3+), holding the owner's host, pid, process start time, launch
and a random token. While held, a thread touches it every ``heartbeat_s`` seconds.

A claim whose owner is dead is taken over:

* same host: the pid no longer runs (or is a zombie), or runs another process (its start
  time differs);
* another host: its heartbeat (the file's mtime) has not moved for ``stale_after_s`` seconds
  *of this host's clock*, as watched by this board, so clocks need not agree;
* a claim marked failed (:meth:`Claim.fail`) by a worker of another launch: a re-run retries
  what failed before, while the workers of the failing launch leave it alone.

The takeover is atomic: the taker first creates ``<task>.takeover-<token of the dead
claim>`` with ``O_EXCL`` (one taker per dead claim wins), then replaces the claim with its own
by ``os.replace``. A taker that lost sees the marker and moves on.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from cpc_fast.io.atomic import atomic_write_bytes, file_mode, named_os_error

SUFFIX = ".claim"


def _stat_fields(pid: int) -> list[str] | None:
    """The fields of ``/proc/<pid>/stat`` after the command name (Linux), or None."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after its last ")".
    return stat.rpartition(")")[2].split()


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (Linux), None where unknown."""
    fields = _stat_fields(pid)
    return fields[19] if fields is not None and len(fields) > 19 else None


def process_alive(pid: int, started: str | None = None) -> bool:
    """Whether process ``pid`` of this host still runs: a zombie counts as dead, and with
    ``started`` (its :func:`_start_time`) so does another process that reused the pid."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    fields = _stat_fields(pid)
    if fields is None:
        return True  # not Linux: the signal is all there is
    if fields[0] in ("Z", "X"):  # exited, not yet reaped by its parent: dead
        return False
    now = fields[19] if len(fields) > 19 else None
    return started is None or now is None or now == started


@dataclass(frozen=True)
class Owner:
    """Who holds a claim (what the file says)."""

    host: str
    pid: int
    started: str | None
    launch: str
    token: str
    failed: str | None = None

    def describe(self) -> str:
        return f"process {self.pid} on {self.host}"


class Claim:
    """A held claim: heartbeats until :meth:`release` (or :meth:`fail`)."""

    def __init__(
        self, path: Path, owner: Owner, heartbeat_s: float, took_over: Owner | None = None
    ) -> None:
        self.path = path
        self.owner = owner
        self.took_over = took_over  # the dead (or failed) owner this claim replaced
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._beat, args=(heartbeat_s,), name=f"heartbeat {path.name}", daemon=True
        )
        self._thread.start()

    def _beat(self, every: float) -> None:
        while not self._stop.wait(every):
            try:
                os.utime(self.path)
            except OSError:
                pass  # taken over, or the disk is gone: the owner finds out on release

    def _stop_beating(self) -> None:
        self._stop.set()
        if self._thread is not threading.current_thread():
            self._thread.join()

    def release(self) -> None:
        """Stops the heartbeat and removes the claim (the task is done)."""
        self._stop_beating()
        self.path.unlink(missing_ok=True)

    def fail(self, why: str) -> None:
        """Stops the heartbeat and leaves the claim marked failed with ``why`` (one line):
        this launch's workers skip the task, a later launch retries it."""
        self._stop_beating()
        owner = {**self.owner.__dict__, "failed": why.splitlines()[0] if why else "failed"}
        atomic_write_bytes(self.path, (json.dumps(owner) + "\n").encode())

    def __enter__(self) -> Claim:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if exc is None:
            self.release()
        elif isinstance(exc, Exception):
            self.fail(f"{type(exc).__name__}: {exc}")
        else:  # KeyboardInterrupt, SystemExit: nothing failed, the worker stops; free it
            self.release()


class ClaimBoard:
    """The claims of one folder, seen by one worker (module docstring)."""

    def __init__(
        self,
        folder: str | os.PathLike,
        launch: str,
        *,
        heartbeat_s: float = 30.0,
        stale_after_s: float = 300.0,
    ) -> None:
        self.folder = Path(folder)
        self.launch = launch
        self.heartbeat_s = heartbeat_s
        self.stale_after_s = stale_after_s
        self.host = socket.gethostname()
        self._seen: dict[str, tuple[tuple[int, int], float]] = {}  # path -> (beat, first seen)

    def path(self, task: str) -> Path:
        return self.folder / f"{task}{SUFFIX}"

    def _new_owner(self) -> Owner:
        pid = os.getpid()
        return Owner(self.host, pid, _start_time(pid), self.launch, secrets.token_hex(8))

    def owner(self, task: str) -> Owner | None:
        """Who holds ``task`` (None: nobody, or a claim still being written)."""
        try:
            data: dict[str, Any] = json.loads(self.path(task).read_text())
            return Owner(**data)
        except (OSError, ValueError, TypeError):
            return None

    def try_claim(self, task: str) -> Claim | None:
        """Claims ``task``, taking over a dead owner's claim; None while a live worker (or a
        failed one of this launch) holds it."""
        path = self.path(task)
        owner = self._new_owner()
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, file_mode())
        except FileExistsError:
            return self._take_over(task, owner)
        except OSError as exc:
            raise named_os_error(exc, path) from exc
        try:
            os.write(fd, (json.dumps(owner.__dict__) + "\n").encode())
        finally:
            os.close(fd)
        return Claim(path, owner, self.heartbeat_s)

    def _take_over(self, task: str, owner: Owner) -> Claim | None:
        path = self.path(task)
        held = self.owner(task)
        if held is None or not self.is_dead(task, held):
            return None
        marker = self.folder / f"{task}.takeover-{held.token}"
        try:
            os.close(os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_EXCL, file_mode()))
        except FileExistsError:
            return None  # another worker took this dead claim over
        except OSError as exc:
            raise named_os_error(exc, marker) from exc
        atomic_write_bytes(path, (json.dumps(owner.__dict__) + "\n").encode())
        return Claim(path, owner, self.heartbeat_s, took_over=held)

    def is_dead(self, task: str, held: Owner) -> bool:
        """Whether ``held``'s claim on ``task`` may be taken over (module docstring)."""
        if held.failed is not None:
            return held.launch != self.launch
        if held.host == self.host:
            return not process_alive(held.pid, held.started)
        path = str(self.path(task))
        try:
            st = os.stat(path)
        except FileNotFoundError:
            return False
        beat = (st.st_ino, st.st_mtime_ns)
        now = time.monotonic()
        seen = self._seen.get(path)
        if seen is None or seen[0] != beat:
            self._seen[path] = (beat, now)
            return False
        return now - seen[1] >= self.stale_after_s

    def live_owners(self) -> list[Owner]:
        """The owners of the claims here that are neither dead nor failed."""
        owners = []
        for path in sorted(self.folder.glob(f"*{SUFFIX}")):
            task = path.name[: -len(SUFFIX)]
            held = self.owner(task)
            if held is not None and held.failed is None and not self.is_dead(task, held):
                owners.append(held)
        return owners


def new_launch_id() -> str:
    """A random id shared by the workers of one launch."""
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(4)}"


__all__ = ["SUFFIX", "Claim", "ClaimBoard", "Owner", "new_launch_id"]
