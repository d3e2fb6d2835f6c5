"""One process at a time in a run folder: a lock file that names its owner.

    with FolderLock(run_dir):   # refused with one line while another process holds it
        ...
    lock.acquire(wait=True)     # or waits for it (a cache that another process is filling)

The lock is an ``flock`` on ``<folder>/.lock``, which holds the owner's host and pid for
the message. The operating system releases it when the owner exits in any way (SIGKILL
included), so a lock left by a dead run is stale by construction and the next run takes it
over. Where ``fcntl`` does not exist (Windows) nothing is locked.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

from cpc_fast.errors import UserInputError
from cpc_fast.io.atomic import file_mode, named_os_error

try:
    import fcntl
except ImportError:  # not POSIX: no locking
    fcntl = None

LOCK_NAME = ".lock"
_HELD: set[int] = set()  # this process's lock descriptors


def _close_in_child() -> None:
    # A forked child (a DataLoader worker) must not keep the lock alive after its parent
    # dies: the lock lasts while any copy of the descriptor is open.
    for fd in _HELD:
        os.close(fd)
    _HELD.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_close_in_child)


class FolderLock:
    """An exclusive lock on ``folder`` (module docstring); ``what`` names it in the error."""

    def __init__(self, folder: str | os.PathLike, what: str = "run folder") -> None:
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self.what = what
        self._fd: int | None = None

    def acquire(self, wait: bool = False, on_wait: Callable[[str], None] | None = None) -> None:
        """Takes the lock. While another process holds it: raises :class:`UserInputError`
        naming the owner, or with ``wait`` tells ``on_wait`` who it is and waits."""
        if fcntl is None or self._fd is not None:
            return
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            while self._fd is None:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, file_mode())
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    if not wait:
                        os.close(fd)
                        raise UserInputError(self._held_message()) from None
                    try:
                        if on_wait is not None:
                            on_wait(f"{self.folder}: waiting for {self._owner()}, which uses it")
                        fcntl.flock(fd, fcntl.LOCK_EX)
                    except BaseException:  # Ctrl-C while waiting: leave no descriptor open
                        os.close(fd)
                        raise
                if self._same_file(fd):
                    os.ftruncate(fd, 0)
                    owner = {"host": socket.gethostname(), "pid": os.getpid()}
                    os.write(fd, (json.dumps(owner) + "\n").encode())
                    self._fd = fd
                    _HELD.add(fd)
                else:  # the owner removed the file as we opened it: lock the new one
                    os.close(fd)
        except OSError as exc:
            raise named_os_error(exc, self.path) from exc

    def release(self) -> None:
        """Removes the lock file and lets go (removing first: whoever opens it next opens a
        new file and finds it unlocked)."""
        if self._fd is None:
            return
        self.path.unlink(missing_ok=True)
        _HELD.discard(self._fd)
        os.close(self._fd)
        self._fd = None

    def _same_file(self, fd: int) -> bool:
        try:
            return os.stat(self.path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            return False

    def _owner(self) -> str:
        try:
            owner = json.loads(self.path.read_text())
            return f"process {owner['pid']} on {owner['host']}"
        except (OSError, ValueError, KeyError, TypeError):
            return "another process"

    def _held_message(self) -> str:
        return (
            f"{self.folder}: this {self.what} is in use by {self._owner()}; wait for it to "
            "finish (or stop it), or use another folder"
        )

    def __enter__(self) -> FolderLock:
        self.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.release()


__all__ = ["LOCK_NAME", "FolderLock"]
