"""``cpc-fast demo``: the whole paper at toy scale on the built-in synthetic corpora, one CPU.

Three stages, each resumable (re-running the same command skips what is finished):

1. preCPC: pre-train a tiny CPC on the unlabeled synthetic speech corpus (other speakers
   than the emotion corpus, no labels) — the stand-in for LibriSpeech train-clean-100.
2. Table 1: train the four setups (Sup, jointCPC, miniCPC, preCPC) with several runs under
   leave-one-session-out cross-validation on the synthetic IEMOCAP-like emotion corpus.
3. Figures: Figure 1 (t-SNE of utterance-level preCPC representations coloured by emotion)
   and the training curves (CPC InfoNCE loss and accuracy; recognizer validation CCC).

Everything lands in one folder::

    OUT/results.md  results.json  tsne.png  training_curves.png
    OUT/cpc/         the pre-trained CPC run (model.safetensors, metrics.csv, ...)
    OUT/experiment/  one folder per (setup, fold, run), the experiment's own results

The numbers come from synthetic data: they show the pipeline runs end to end, not the
paper's results. ``REAL_COMMANDS`` are the commands for the real thing.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from cpc_fast.config import experiment as experiment_presets
from cpc_fast.config import pretrain as pretrain_presets
from cpc_fast.config.experiment import SETUP_NAMES, SETUPS, ExperimentConfig
from cpc_fast.config.pretrain import PretrainConfig
from cpc_fast.emotion.experiment import open_corpus
from cpc_fast.emotion.launch import run_experiment
from cpc_fast.emotion.report import render_markdown
from cpc_fast.emotion.visualize import cpc_representations, require_viz, visualize
from cpc_fast.errors import UserInputError
from cpc_fast.io.atomic import atomic_write_bytes, check_writable_folder, write_json
from cpc_fast.io.cpus import intra_op_threads
from cpc_fast.io.metrics import read_metrics
from cpc_fast.models.loading import load_cpc
from cpc_fast.training.data import open_pretrain_data
from cpc_fast.training.pretrain import pretrain

SYNTHETIC_NOTICE = (
    "These numbers come from SYNTHETIC data (the built-in speech-like corpora), at toy scale "
    "on a CPU. They show that the pipeline runs end to end; they are not the paper's results "
    "and say nothing about real emotional speech."
)

REAL_COMMANDS = """\
# 1. Pre-train CPC on LibriSpeech train-clean-100 (the paper: 8 GPUs x 8 utterances of 10 s)
cpc-fast pretrain --data /data/LibriSpeech --preset paper --gpus 8 --out runs/librispeech100

# 2. IEMOCAP: 5-fold leave-one-session-out, the four setups, 5 runs each
cpc-fast experiment --dataset iemocap --root /data/IEMOCAP_full_release \\
    --setups sup,joint,mini,pre --pretrained runs/librispeech100 \\
    --runs 5 --epochs 50 --gpus 8 --out experiments/iemocap

# 3. MSP-Podcast v1.6: the official Train / Validation / Test1 split
cpc-fast experiment --dataset msp-podcast --root /data/MSP-Podcast \\
    --setups sup,joint,mini,pre --pretrained runs/librispeech100 \\
    --runs 5 --epochs 50 --gpus 8 --out experiments/msp-podcast"""


@dataclass(frozen=True)
class DemoSettings:
    """What the demo runs: the preCPC pre-training and the four-setup experiment."""

    pretrain: PretrainConfig
    experiment: ExperimentConfig
    tsne_utterances: int = 2000
    label: str = "full"

    def to_dict(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "pretrain": self.pretrain.to_dict(),
            "experiment": self.experiment.to_dict(),
            "tsne_utterances": self.tsne_utterances,
        }


def demo_settings(out: str | Path, quick: bool = False) -> DemoSettings:
    """The full demo (5-13 min on 2 CPU cores, by CPU) or ``quick`` (2-4 min: shorter training).

    Both run all four setups, 2 runs each, over the 5 leave-one-session-out folds of the
    tiny synthetic emotion corpus, with the experiment's CPU default: one worker process per
    core, one thread each (the fastest schedule on a CPU: units are small);
    ``quick`` trains the CPC and the recognizers for fewer steps, so its numbers are lower
    and noisier.
    """
    out = Path(out)
    pretrain = pretrain_presets.tiny()
    experiment = experiment_presets.tiny(
        dataset="synthetic",
        out=str(out / "experiment"),
        pretrained=str(out / "cpc"),
        setups=SETUPS,
        runs=2,
        gpus=0,
    )
    if not quick:
        return DemoSettings(pretrain=pretrain, experiment=experiment, label="full")
    return DemoSettings(
        pretrain=replace(pretrain, epochs=max(1, pretrain.epochs // 3)),
        experiment=replace(
            experiment,
            epochs=max(2, experiment.epochs // 3),
            mini_epochs=max(1, pretrain.epochs // 5),
        ),
        label="quick",
    )


@dataclass
class DemoResult:
    """Where the demo's outputs are, and the experiment's results dict."""

    out: Path
    results: dict[str, Any]
    files: dict[str, Path] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)


def _stage(progress: bool, number: int, total: int, text: str) -> None:
    if progress:
        print(f"\n[{number}/{total}] {text}", flush=True)


def pretrain_stage(settings: DemoSettings, out: Path, progress: bool) -> Path:
    """Stage 1: the tiny CPC on the unlabeled synthetic corpus (resumes when re-run)."""
    config = settings.pretrain
    train, valid, resolved = open_pretrain_data(
        config.data, seed=config.seed, sample_rate=config.model.sample_rate
    )
    config = replace(config, data=resolved)
    with intra_op_threads(config.cpu_plan(1).threads):  # every core this process may use
        return pretrain(config, train, valid, out / "cpc", progress=progress)


def experiment_stage(settings: DemoSettings, progress: bool) -> dict[str, Any]:
    """Stage 2: the four setups under cross-validation (finished runs are skipped)."""
    results = run_experiment(settings.experiment, progress=progress)
    if results is None:  # each failed task's worker has printed why
        raise UserInputError(
            f"{settings.experiment.out}: some experiment tasks failed (see above); run the "
            "demo again to retry them"
        )
    return results


def tsne_figure(settings: DemoSettings, cpc_dir: Path, out: Path, progress: bool) -> Path:
    """Figure 1: t-SNE of mean-pooled preCPC contexts of the emotion corpus."""
    corpus = open_corpus(settings.experiment)
    path, _, _ = visualize(
        corpus,
        cpc_representations(load_cpc(cpc_dir)),
        out,
        title="preCPC utterance representations (synthetic corpus), t-SNE",
        max_utterances=settings.tsne_utterances,
        progress=progress,
    )
    return path


def _series(rows: list[dict[str, Any]], split: str, name: str) -> tuple[list[int], list[float]]:
    points = sorted(
        (r["step"], r["value"]) for r in rows if r["split"] == split and r["name"] == name
    )
    return [p[0] for p in points], [p[1] for p in points]


def _mean_validation_curve(run_dirs: list[Path]) -> tuple[list[int], list[float]]:
    """Validation CCC (avg) per epoch, averaged over the runs that reached that epoch."""
    by_epoch: dict[int, list[float]] = {}
    for run_dir in run_dirs:
        steps, values = _series(read_metrics(run_dir / "metrics.csv"), "validation", "ccc_avg")
        for step, value in zip(steps, values, strict=True):
            by_epoch.setdefault(step, []).append(value)
    epochs = sorted(by_epoch)
    return epochs, [sum(by_epoch[e]) / len(by_epoch[e]) for e in epochs]


def training_curves_figure(cpc_dir: Path, experiment_dir: Path, out: Path) -> Path:
    """CPC train/validation InfoNCE loss and accuracy per step; recognizer validation CCC."""
    plt, _ = require_viz()
    cpc_rows = read_metrics(cpc_dir / "metrics.csv")
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8), dpi=130)
    for ax, name, label in (
        (axes[0], "loss", "InfoNCE loss"),
        (axes[1], "accuracy", "top-1 accuracy (mean over k)"),
    ):
        for split, style in (("train", "-"), ("valid", "o-")):
            steps, values = _series(cpc_rows, split, name)
            if steps:
                ax.plot(steps, values, style, markersize=3, label=split)
        ax.set_xlabel("CPC step")
        ax.set_title(f"preCPC pre-training: {label}")
        ax.legend(frameon=False)
    for setup in SETUPS:
        run_dirs = sorted(p.parent for p in (experiment_dir / setup).glob("*/*/metrics.csv"))
        epochs, values = _mean_validation_curve(run_dirs)
        if epochs:
            axes[2].plot(epochs, values, "-", label=SETUP_NAMES[setup])
    axes[2].set_xlabel("recognizer epoch")
    axes[2].set_title("validation CCC (avg), mean over folds and runs")
    axes[2].legend(frameon=False)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return out


def render_demo_markdown(
    results: dict[str, Any], settings: DemoSettings, seconds: dict[str, float]
) -> str:
    """``results.md``: the notice, Table 1 on the synthetic corpus, the figures, the real runs."""
    total = sum(seconds.values())
    timing = ", ".join(f"{k} {v:.0f} s" for k, v in seconds.items())
    return "\n".join(
        [
            f"# cpc-fast demo ({settings.label})",
            "",
            f"> {SYNTHETIC_NOTICE}",
            "",
            render_markdown(results).replace("# CCC on", "## CCC on", 1).strip(),
            "",
            "## Figures",
            "",
            "![t-SNE of preCPC representations](tsne.png)",
            "",
            "![training curves](training_curves.png)",
            "",
            f"Time: {total:.0f} s ({timing}) in this run of `cpc-fast demo"
            f"{' --quick' if settings.label == 'quick' else ''}`; stages finished in an earlier "
            "run count 0 s.",
            "",
            "## The real experiments",
            "",
            "```bash",
            REAL_COMMANDS,
            "```",
            "",
        ]
    )


def _write_outputs(
    out: Path, results: dict[str, Any], settings: DemoSettings, seconds: dict[str, float]
) -> dict[str, Path]:
    md = out / "results.md"
    text = render_demo_markdown(results, settings, seconds)
    atomic_write_bytes(md, text.encode())
    js = out / "results.json"
    write_json(
        js,
        {
            **results,
            "synthetic": True,
            "notice": SYNTHETIC_NOTICE,
            "demo": {**settings.to_dict(), "seconds": seconds},
        },
    )
    return {"results_md": md, "results_json": js}


def run_demo(
    out: str | Path = "cpc_fast_demo",
    *,
    quick: bool = False,
    progress: bool = True,
    settings: DemoSettings | None = None,
) -> DemoResult:
    """Runs the three stages into ``out`` and returns where everything is."""
    out = check_writable_folder(out, "`out`")
    settings = settings or demo_settings(out, quick)
    write_json(out / "demo.json", settings.to_dict())
    seconds: dict[str, float] = {}

    _stage(progress, 1, 3, "preCPC: pre-training a tiny CPC on the unlabeled synthetic corpus")
    start = time.perf_counter()
    cpc_dir = pretrain_stage(settings, out, progress)
    seconds["pre-training"] = time.perf_counter() - start

    _stage(progress, 2, 3, "Table 1: Sup, jointCPC, miniCPC, preCPC under cross-validation")
    start = time.perf_counter()
    results = experiment_stage(settings, progress)
    seconds["experiment"] = time.perf_counter() - start

    _stage(progress, 3, 3, "Figures: t-SNE of preCPC representations, training curves")
    start = time.perf_counter()
    files = {
        "tsne": tsne_figure(settings, cpc_dir, out / "tsne.png", progress),
        "training_curves": training_curves_figure(
            cpc_dir, Path(settings.experiment.out), out / "training_curves.png"
        ),
    }
    seconds["figures"] = time.perf_counter() - start

    files.update(_write_outputs(out, results, settings, seconds))
    files["cpc_run"] = cpc_dir
    files["experiment"] = Path(settings.experiment.out)
    return DemoResult(out=out, results=results, files=files, seconds=seconds)


def summary_text(result: DemoResult) -> str:
    """What the CLI prints at the end: the notice, the table, the outputs, the real commands."""
    table = [line for line in render_markdown(result.results).splitlines() if line.startswith("|")]
    where = [f"  {name:<16} {path}" for name, path in result.files.items()]
    total = sum(result.seconds.values())
    return "\n".join(
        [
            "",
            "=" * 78,
            f"NOTE: {SYNTHETIC_NOTICE}",
            "=" * 78,
            "",
            "CCC on the synthetic emotion corpus (mean ± std over runs):",
            *table,
            "",
            f"Finished in {total:.0f} s. Outputs:",
            *where,
            "",
            "The real thing (LibriSpeech pre-training, then IEMOCAP and MSP-Podcast):",
            "",
            REAL_COMMANDS,
            "",
        ]
    )


__all__ = [
    "REAL_COMMANDS",
    "SYNTHETIC_NOTICE",
    "DemoResult",
    "DemoSettings",
    "demo_settings",
    "render_demo_markdown",
    "run_demo",
    "summary_text",
]
