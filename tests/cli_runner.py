"""Driving the real entry point, ``cpc_fast.cli.main``, from a test."""

from __future__ import annotations

import pytest
import soundfile as sf

from cpc_fast.cli import main


def run_main(args: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    """``main(args)``: (exit status, stdout, stderr). User mistakes and errors of the
    system end in one ``error:`` line and status 2."""
    try:
        main(args)
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def one_error_line(code: int, err: str) -> str:
    """The one ``error:`` line of a command that failed with status 2 and no traceback."""
    lines = [line for line in err.strip().splitlines() if line.startswith("error: ")]
    assert code == 2, err
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


class DecoderCalls:
    """Counts soundfile decodes (``SoundFile.read``) in this process."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.count = 0
        real = sf.SoundFile.read

        def counting(sound_file, *args, **kwargs):
            self.count += 1
            return real(sound_file, *args, **kwargs)

        monkeypatch.setattr(sf.SoundFile, "read", counting)
