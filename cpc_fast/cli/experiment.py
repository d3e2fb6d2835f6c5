"""``cpc-fast experiment``: the paper's emotion-recognition experiments (Table 1)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cpc_fast.cli.app import app, relaunched
from cpc_fast.errors import UserInputError


def _default(name: str) -> str:
    """'(paper P, tiny T)' for an ExperimentConfig field; no square brackets (rich markup)."""
    from cpc_fast.emotion.config import ExperimentConfig

    paper, tiny = ExperimentConfig.paper(), ExperimentConfig.tiny()
    return f"(paper {getattr(paper, name)}, tiny {getattr(tiny, name)})"


def _int_list(text: str | None, option: str) -> tuple[int, ...] | None:
    if text is None:
        return None
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise UserInputError(f"{option} takes a comma list of numbers, got {text!r}") from None


@app.command()
def experiment(
    dataset: Annotated[
        str,
        typer.Option(help="iemocap | msp-podcast | manifest | synthetic (built in, no --root)."),
    ],
    out: Annotated[
        Path,
        typer.Option(
            help="Experiment folder: results.md, results.json, one folder per (setup, fold, "
            "run). Re-running the same command resumes."
        ),
    ],
    root: Annotated[
        str | None,
        typer.Option(help="IEMOCAP_full_release folder, MSP-Podcast root, or the manifest CSV."),
    ] = None,
    setups: Annotated[str, typer.Option(help="Comma list of sup, joint, mini, pre.")] = (
        "sup,joint,mini,pre"
    ),
    pretrained: Annotated[
        str | None, typer.Option(help="CPC run folder (or model.safetensors) for 'pre'.")
    ] = None,
    preset: Annotated[
        str, typer.Option(help="paper (the paper's recipe) or tiny (minutes on a CPU).")
    ] = "paper",
    runs: Annotated[
        int | None, typer.Option(help=f"Runs (seeds) per setup {_default('runs')}.")
    ] = None,
    epochs: Annotated[
        int | None, typer.Option(help=f"Recognizer epochs {_default('epochs')}.")
    ] = None,
    batch_size: Annotated[
        int | None, typer.Option(help=f"Utterances per batch {_default('batch_size')}.")
    ] = None,
    lr: Annotated[float | None, typer.Option(help=f"Adam learning rate {_default('lr')}.")] = None,
    weight_decay: Annotated[
        float | None, typer.Option(help=f"Adam weight decay {_default('weight_decay')}.")
    ] = None,
    joint_lambda: Annotated[
        float | None,
        typer.Option(help=f"λ in the joint loss CCC + λ·InfoNCE {_default('joint_lambda')}."),
    ] = None,
    joint_lr: Annotated[
        float | None,
        typer.Option(help=f"Adam lr of the joint setup, when not --lr {_default('joint_lr')}."),
    ] = None,
    validation: Annotated[
        str, typer.Option(help="speaker (hold out one training speaker) or random (10 %).")
    ] = "speaker",
    folds: Annotated[
        str | None, typer.Option(help="Run only these 1-based folds, e.g. 1,2.")
    ] = None,
    subset: Annotated[
        str,
        typer.Option(
            help="IEMOCAP: paper (neu,hap,exc,ang,sad: 5,531 utterances), all, or a list."
        ),
    ] = "paper",
    test_set: Annotated[
        str, typer.Option(help="MSP-Podcast test set: Test1, Test2 or Test3.")
    ] = "Test1",
    skip_bad: Annotated[
        bool,
        typer.Option("--skip-bad", help="Skip (and count) bad label rows instead of stopping."),
    ] = False,
    mini_epochs: Annotated[
        int | None,
        typer.Option(help="Epochs of the mini setup's CPC pre-training (default: its preset's)."),
    ] = None,
    seed: Annotated[
        int, typer.Option(help="Base seed; run r of fold k (0-based) uses seed + 100 (r - 1) + k.")
    ] = 0,
    data_seed: Annotated[int, typer.Option(help="Seed of the synthetic corpus.")] = 0,
    cache_dir: Annotated[
        str | None, typer.Option(help="Feature cache folder (default OUT/cache).")
    ] = None,
    gpus: Annotated[
        int, typer.Option(help="Processes, one GPU each; 0 = CPU. As in `cpc-fast pretrain`.")
    ] = 1,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")] = False,
) -> None:
    """Train and test the recognizer in the paper's setups; print Table 1 (CCC mean ± std)."""
    from cpc_fast.emotion.config import ExperimentConfig
    from cpc_fast.training import distributed

    overrides = {
        k: v
        for k, v in {
            "runs": runs,
            "epochs": epochs,
            "batch_size": batch_size,
            "lr": lr,
            "weight_decay": weight_decay,
            "joint_lambda": joint_lambda,
            "joint_lr": joint_lr,
            "mini_epochs": mini_epochs,
        }.items()
        if v is not None
    }
    config = ExperimentConfig.from_preset(
        preset,
        dataset=dataset,
        root=root,
        out=str(out),
        setups=tuple(s.strip() for s in setups.split(",") if s.strip()),
        pretrained=pretrained,
        validation=validation,
        folds=_int_list(folds, "--folds"),
        subset=subset,
        test_set=test_set,
        skip_bad=skip_bad,
        seed=seed,
        data_seed=data_seed,
        cache_dir=cache_dir,
        gpus=gpus,
        **overrides,
    )
    config.validate()
    if relaunched(gpus):  # rank 0 of the launched processes prints the table
        return
    from cpc_fast.emotion.experiment import run_experiment
    from cpc_fast.emotion.report import render_markdown

    env = distributed.init(gpus)
    try:
        results = run_experiment(config, progress=not quiet, env=env)
    finally:
        distributed.shutdown()
    if env.is_main:
        typer.echo(render_markdown(results))
        typer.echo(f"results: {out / 'results.md'}, {out / 'results.json'}")
