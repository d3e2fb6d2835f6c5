"""``cpc-fast predict`` and ``cpc-fast visualize``: use a trained emotion model or a CPC."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import numpy as np
import typer

from cpc_fast.cli.app import app
from cpc_fast.cli.options import FLAGS, Quiet, ShowProgress, shows_progress
from cpc_fast.config.common import CPUPlan
from cpc_fast.data.audio import Conversions, audio_info, read_audio
from cpc_fast.data.corpora import open_emotion_corpus
from cpc_fast.emotion.model_io import EmotionModel, load_cpc_checked, load_model
from cpc_fast.emotion.visualize import check_figure_path, cpc_representations
from cpc_fast.emotion.visualize import visualize as draw
from cpc_fast.errors import UserInputError, naming
from cpc_fast.io.atomic import json_text
from cpc_fast.io.cpus import available_cpus, intra_op_threads

FLAGS["predict"] = {
    "cpc_path": "--cpc",
    "upstream_path": "--upstream",
    "folder": "--model",
    "skip_bad": "--skip-bad",
}
FLAGS["visualize"] = {
    "root": "--root",
    "dataset": "--dataset",
    "subset": "--subset",
    "skip_bad": "--skip-bad",
    "out": "--out",
}
DIMENSIONS = ("activation", "valence", "dominance")
SAMPLE_RATE = 16000  # every model here (LFBE and CPC front ends) takes 16 kHz


def _warn(message: str) -> None:
    typer.echo(f"warning: {message}", err=True)


def _predict_file(model: EmotionModel, path: Path, conversions: Conversions) -> dict[str, float]:
    """The three predictions for one file (converted to the model's rate and mono, counted
    in ``conversions``); a :class:`UserInputError` naming it when its audio fails or the
    prediction is not finite."""
    try:
        wave = read_audio(path, sample_rate=conversions.sample_rate)
        conversions.add(audio_info(path))  # after the read: a bad file is not counted
        values = model.predict(wave)
    except UserInputError as exc:
        raise UserInputError(naming(str(path), str(exc))) from None
    if not np.isfinite(values).all():
        raise UserInputError(f"{path}: the prediction is not finite ({values.tolist()})")
    return dict(zip(DIMENSIONS, map(float, values), strict=True))


@app.command()
def predict(
    files: Annotated[
        list[Path],
        typer.Argument(
            help="Audio files in any format soundfile reads, at any rate and channel count "
            "(averaged to mono and resampled to 16 kHz)."
        ),
    ],
    model: Annotated[
        Path, typer.Option(help="A run folder of an experiment: OUT/<setup>/<fold>/run<r>.")
    ],
    cpc: Annotated[
        Path | None, typer.Option(help="Where the frozen CPC of a mini/pre model is now, if moved.")
    ] = None,
    upstream: Annotated[
        Path | None,
        typer.Option(help="Where the Hugging Face model of an ssl model is now, if moved."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
    skip_bad: Annotated[
        bool, typer.Option("--skip-bad", help="Skip (and count) files that fail when read.")
    ] = False,
) -> None:
    """Activation, valence and dominance of each FILE, on the training labels' scale.

    A file that fails stops the command with its name; with --skip-bad it is warned about
    and, in the JSON, listed with null values and its "error"."""
    emotion_model = load_model(model, cpc_path=cpc, upstream_path=upstream)
    conversions = Conversions(SAMPLE_RATE)
    rows = []
    for path in files:
        try:
            rows.append({"file": str(path), **_predict_file(emotion_model, path, conversions)})
        except UserInputError as exc:
            if not skip_bad:
                raise UserInputError(f"{exc} (with `skip_bad=True` it would be skipped)") from None
            _warn(f"skipping {exc}")
            rows.append({"file": str(path), **dict.fromkeys(DIMENSIONS), "error": str(exc)})
    if conversions.summary():
        typer.echo(f"note: {conversions.summary()}", err=True)
    skipped = sum("error" in r for r in rows)
    if skipped == len(rows):
        raise UserInputError(f"every one of the {skipped} file(s) was skipped")
    if skipped:
        _warn(f"{skipped} of {len(rows)} file(s) skipped")
    if as_json:
        typer.echo(json_text(rows))
        return
    width = max(len(r["file"]) for r in rows)
    typer.echo(f"{'file'.ljust(width)}  activation  valence  dominance")
    for r in rows:
        if "error" not in r:
            typer.echo(
                f"{r['file'].ljust(width)}  {r['activation']:10.3f}  {r['valence']:7.3f}  "
                f"{r['dominance']:9.3f}"
            )


@app.command()
def visualize(
    out: Annotated[Path, typer.Option(help="Figure file (.png, .pdf, .svg).")],
    dataset: Annotated[str, typer.Option(help="iemocap | msp-podcast | manifest | synthetic.")],
    root: Annotated[str | None, typer.Option(help="The dataset's root (or manifest CSV).")] = None,
    model: Annotated[
        Path | None, typer.Option(help="An emotion model folder: plot its pooled u.")
    ] = None,
    pretrained: Annotated[
        Path | None, typer.Option(help="A CPC run folder: plot mean-pooled context vectors.")
    ] = None,
    subset: Annotated[str, typer.Option(help="IEMOCAP subset: paper, all or a list.")] = "paper",
    synthetic_size: Annotated[
        str, typer.Option(help="Synthetic corpus size: default or tiny.")
    ] = "default",
    max_utterances: Annotated[
        int, typer.Option(help="Plot at most this many (a seeded sample).")
    ] = 2000,
    seed: Annotated[int, typer.Option(help="Sampling and t-SNE seed.")] = 0,
    skip_bad: Annotated[
        bool,
        typer.Option(
            "--skip-bad", help="Skip (and count) bad label rows and files that fail when read."
        ),
    ] = False,
    progress: ShowProgress = True,
    quiet: Quiet = False,
) -> None:
    """t-SNE of utterance representations coloured by categorical emotion (the paper's Fig. 1)."""
    if (model is None) == (pretrained is None):
        raise UserInputError("give exactly one of --model DIR or --pretrained RUN_DIR")
    if max_utterances < 5:
        raise UserInputError("--max-utterances must be at least 5")
    check_figure_path(out)  # before anything is computed
    cores = available_cpus()  # the representations and the t-SNE use every core here
    if shows_progress(progress, quiet):
        plan = CPUPlan(processes=1, threads=cores, cores=cores)
        typer.echo(f"visualize: {plan.describe('process')}", err=True)
    corpus = open_emotion_corpus(
        dataset, root, subset=subset, synthetic_size=synthetic_size, skip_bad=skip_bad
    )
    if corpus.conversions is not None and corpus.conversions.summary():
        typer.echo(f"note: {corpus.conversions.summary()}", err=True)
    if model is not None:
        emotion_model = load_model(model)
        represent = emotion_model.embed
        title = f"{corpus.name}: recognizer embeddings ({emotion_model.config['setup']})"
    else:
        represent = cpc_representations(load_cpc_checked(pretrained))
        title = f"{corpus.name}: mean CPC context ({pretrained.name})"
    with intra_op_threads(cores):
        path, points, _ = draw(
            corpus,
            represent,
            out,
            title=title,
            max_utterances=max_utterances,
            seed=seed,
            progress=shows_progress(progress, quiet),
            skip_bad=skip_bad,
            warn=_warn,
        )
    typer.echo(f"t-SNE of {points.shape[0]} utterances: {path}")
