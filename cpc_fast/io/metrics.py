"""A small metrics logger: CSV always, TensorBoard when it is installed.

Only rank 0 should create one. Rows are appended and flushed at once, so a killed run keeps
every row it logged; a resumed run appends to the same file.
"""

from __future__ import annotations

import csv
import importlib.util
import math
import os
import warnings
from collections.abc import Mapping
from pathlib import Path

from cpc_fast.io.atomic import atomic_write, named_os_error


class MetricsLogger:
    """Appends ``{name: value}`` rows for a ``split`` ("train", "valid", ...) at a ``step``.

    The CSV has the columns ``step, split, name, value`` (long format), so new metric names
    never invalidate the header.
    """

    def __init__(self, folder: str | os.PathLike, tensorboard: bool = True) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.csv_path = self.folder / "metrics.csv"
        new = not self.csv_path.exists() or self.csv_path.stat().st_size == 0
        self._fh = open(self.csv_path, "a", newline="")  # noqa: SIM115 - lives with the logger
        self._csv = csv.writer(self._fh)
        if new:
            self._csv.writerow(["step", "split", "name", "value"])
            self._fh.flush()
        self._tb = None
        if tensorboard and importlib.util.find_spec("tensorboard") is not None:  # the `tb` extra
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(log_dir=str(self.folder / "tensorboard"))
            except Exception as exc:  # installed but broken: say so, keep the CSV
                warnings.warn(f"TensorBoard logging is off: {exc}", stacklevel=2)

    def log(self, step: int, split: str, values: Mapping[str, float]) -> None:
        try:
            for name, value in values.items():
                value = float(value)
                row = [step, split, name, repr(value) if math.isfinite(value) else value]
                self._csv.writerow(row)
                if self._tb is not None:
                    self._tb.add_scalar(f"{split}/{name}", value, step)
            self._fh.flush()
        except OSError as exc:  # a full disk: name the file
            raise named_os_error(exc, self.csv_path) from exc

    def close(self) -> None:
        try:
            self._fh.close()
        except OSError as exc:  # the last buffered bytes did not fit
            raise named_os_error(exc, self.csv_path) from exc
        finally:
            if self._tb is not None:
                self._tb.close()

    def __enter__(self) -> MetricsLogger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_metrics(path: str | os.PathLike) -> list[dict[str, object]]:
    """Reads a metrics CSV back as rows ``{"step": int, "split": str, "name": str,
    "value": float}``."""
    rows = []
    with open(path, newline="") as fh:
        for row in csv.DictReader(fh):
            rows.append(
                {
                    "step": int(row["step"]),
                    "split": row["split"],
                    "name": row["name"],
                    "value": float(row["value"]),
                }
            )
    return rows


def truncate_metrics(path: str | os.PathLike, max_step: int) -> int:
    """Drops the rows logged after ``max_step`` (atomically); returns how many were dropped.

    A run resumed from the checkpoint at ``max_step`` repeats the steps after it, so rows a
    killed run logged past its last checkpoint would otherwise appear twice.
    """
    path = Path(path)
    if not path.is_file():
        return 0
    with open(path, newline="") as fh:
        rows = list(csv.reader(fh))
    if not rows:
        return 0
    header, body = rows[0], rows[1:]
    # A SIGKILL can cut the last row short: keep only complete rows.
    keep = [r for r in body if len(r) == len(header) and r[0].isdigit() and int(r[0]) <= max_step]
    dropped = len(body) - len(keep)
    if dropped:

        def _write(tmp: str) -> None:
            with open(tmp, "w", newline="") as out:
                csv.writer(out).writerows([header, *keep])

        atomic_write(path, _write)
    return dropped
