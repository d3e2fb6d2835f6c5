"""``cpc-fast pretrain``: CPC pre-training on LibriSpeech, any audio folder, or the built-in
synthetic corpus, on one process, N local GPUs (``--gpus N``) or under torchrun.

    cpc-fast pretrain --out runs/demo --preset tiny                   # synthetic, CPU
    cpc-fast pretrain --data /data/LibriSpeech --out runs/ls100 --gpus 8
    torchrun --nnodes 2 --nproc-per-node 8 --rdzv-backend c10d --rdzv-endpoint $HEAD:29500 \\
        -m cpc_fast pretrain --data /data/LibriSpeech --out runs/ls100

Running the same command again resumes from the run folder's last checkpoint.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Annotated

import typer

from cpc_fast.cli.app import app, relaunched
from cpc_fast.training.config import CROPS, FORMATS, PRESETS, paper, tiny

_PAPER, _TINY = paper(), tiny()
_MAX_WARNINGS = 20  # bad files named one per line; beyond this, one summary line


def _default(name: str) -> str:
    """'(default: paper P, tiny T)' for a PretrainConfig field (no square brackets: the
    rich help would read them as markup)."""
    return f"(default: paper {getattr(_PAPER, name)}, tiny {getattr(_TINY, name)})"


class _IndexWarnings:
    """Prints the first bad files one per line, then counts the rest."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self, message: str) -> None:
        self.count += 1
        if self.count <= _MAX_WARNINGS:
            typer.echo(f"warning: {message}", err=True)

    def close(self) -> None:
        if self.count > _MAX_WARNINGS:
            typer.echo(
                f"warning: ... and {self.count - _MAX_WARNINGS} more files skipped "
                f"({self.count} in all)",
                err=True,
            )


def _open_data(config, env):
    """Rank 0 indexes the corpus (headers only) and sends the datasets to every rank."""
    from cpc_fast.data.pretrain_data import open_pretrain_data
    from cpc_fast.training import distributed

    def index():
        warn = _IndexWarnings()
        try:
            return open_pretrain_data(
                config.data,
                seed=config.seed,
                sample_rate=config.model.sample_rate,
                min_samples=config.min_samples,
                strict=config.strict,
                warn=warn,
            )
        finally:
            warn.close()

    return distributed.on_main_then_broadcast(env, index)


@app.command()
def pretrain(
    out: Annotated[Path, typer.Option("--out", help="Run folder (created; resumed if it exists).")],
    data: Annotated[
        Path | None,
        typer.Option(
            "--data",
            help="LibriSpeech root (or its LibriSpeech/ or subset folder) or any folder of "
            ".wav/.flac/.ogg files. Default: the built-in synthetic corpus.",
        ),
    ] = None,
    fmt: Annotated[
        str | None,
        typer.Option(
            "--format", help=f"One of {', '.join(FORMATS)}. Default: detected from --data."
        ),
    ] = None,
    subset: Annotated[
        str | None,
        typer.Option(
            "--subset",
            help="LibriSpeech subset folder(s), comma-separated. Default: train-clean-100.",
        ),
    ] = None,
    gpus: Annotated[
        int,
        typer.Option(
            "--gpus",
            help="Local processes, one GPU each; 0 = CPU. Without CUDA, N CPU processes (gloo). "
            "Under torchrun this is ignored for launching.",
        ),
    ] = 1,
    preset_name: Annotated[
        str, typer.Option("--preset", help=f"Base configuration: {', '.join(PRESETS)}.")
    ] = "paper",
    epochs: Annotated[
        int | None, typer.Option("--epochs", help=f"Epochs. {_default('epochs')}")
    ] = None,
    max_steps: Annotated[
        int | None,
        typer.Option(
            "--max-steps", help="Stop after this many optimizer steps. (default: no limit)"
        ),
    ] = None,
    batch_size: Annotated[
        int | None,
        typer.Option(
            "--batch-size", help=f"Utterances per process per step. {_default('batch_size')}"
        ),
    ] = None,
    lr: Annotated[
        float | None, typer.Option("--lr", help=f"Adam learning rate. {_default('lr')}")
    ] = None,
    weight_decay: Annotated[
        float | None,
        typer.Option("--weight-decay", help=f"Adam weight decay. {_default('weight_decay')}"),
    ] = None,
    window_seconds: Annotated[
        float | None,
        typer.Option(
            "--window-seconds",
            help="Training window; longer utterances cut, shorter repeat-padded. "
            + _default("window_seconds"),
        ),
    ] = None,
    crop: Annotated[
        str | None,
        typer.Option(
            "--crop",
            help=f"Where long utterances are cut: {' or '.join(CROPS)} (a random window each "
            "epoch). (default: start)",
        ),
    ] = None,
    seed: Annotated[int | None, typer.Option("--seed", help="Random seed. (default: 0)")] = None,
    workers: Annotated[
        int | None,
        typer.Option("--workers", help=f"DataLoader workers per process. {_default('workers')}"),
    ] = None,
    save_every: Annotated[
        int | None,
        typer.Option(
            "--save-every", help="Checkpoint every N steps. (default: each epoch and the end)"
        ),
    ] = None,
    valid_every: Annotated[
        int | None,
        typer.Option(
            "--valid-every", help="Validate every N steps. (default: each epoch and the end)"
        ),
    ] = None,
    log_every: Annotated[
        int | None,
        typer.Option(
            "--log-every", help=f"Train-metric rows every N steps. {_default('log_every')}"
        ),
    ] = None,
    max_minutes_per_speaker: Annotated[
        float | None,
        typer.Option(
            "--max-minutes-per-speaker",
            help="LibriSpeech: cap each speaker's training audio. (default: no cap)",
        ),
    ] = None,
    valid_fraction: Annotated[
        float | None,
        typer.Option(
            "--valid-fraction",
            help="Share of utterances held out (by a hash of the id). (default: 0.02)",
        ),
    ] = None,
    bf16: Annotated[
        bool | None,
        typer.Option(
            "--bf16/--no-bf16",
            help="bf16 autocast on CUDA. (default: on when the GPU supports it; CPU: fp32)",
        ),
    ] = None,
    restart: Annotated[
        bool,
        typer.Option("--restart", help="Start over, deleting the run folder's checkpoint files."),
    ] = False,
    strict: Annotated[
        bool,
        typer.Option("--strict", help="Stop at the first bad audio file instead of skipping it."),
    ] = False,
    progress: Annotated[
        bool, typer.Option("--progress/--no-progress", help="Progress bar and info lines (rank 0).")
    ] = True,
) -> None:
    """Pre-train a CPC model (Li et al. 2021): 10-s windows, Adam 2e-4, 8 per GPU."""
    from cpc_fast.training import distributed
    from cpc_fast.training.config import preset
    from cpc_fast.training.pretrain import pretrain as run_pretrain

    if relaunched(gpus):
        return
    base = preset(preset_name)
    data_config = replace(
        base.data,
        path=None if data is None else str(data),
        format=fmt,
        subset=subset,
        max_minutes_per_speaker=max_minutes_per_speaker,
        valid_fraction=base.data.valid_fraction if valid_fraction is None else valid_fraction,
    )
    config = base.replace(
        data=data_config,
        epochs=epochs,
        max_steps=max_steps,
        batch_size=batch_size,
        lr=lr,
        weight_decay=weight_decay,
        window_seconds=window_seconds,
        crop=crop,
        seed=seed,
        workers=workers,
        save_every=save_every,
        valid_every=valid_every,
        log_every=log_every,
        bf16=bf16,
        strict=strict or None,
    )
    env = distributed.init(gpus)
    try:
        train, valid, resolved = _open_data(config, env)
        config = config.replace(data=resolved)
        run_pretrain(config, train, valid, out, env=env, progress=progress, restart=restart)
    finally:
        distributed.shutdown()
