"""``cpc-fast predict`` and ``cpc-fast visualize``: use a trained emotion model or a CPC."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Annotated, Any

import torch
import typer
from tqdm.auto import tqdm

from cpc_fast.cli.app import app
from cpc_fast.cli.options import FLAGS, Quiet, ShowProgress, shows_progress
from cpc_fast.config.common import CPUPlan
from cpc_fast.data.audio import Conversions
from cpc_fast.data.corpora import open_emotion_corpus
from cpc_fast.emotion.batch_predict import (
    MAX_ITEMS,
    MAX_SAMPLES,
    Result,
    expand_inputs,
    index_files,
    predict_clips,
    total_seconds,
)
from cpc_fast.emotion.model_io import DIMENSIONS, load_cpc_checked, load_model
from cpc_fast.emotion.onnx_export import ONNX_NAME, OnnxEmotionRunner
from cpc_fast.emotion.visualize import check_figure_path, cpc_representations
from cpc_fast.emotion.visualize import visualize as draw
from cpc_fast.errors import UserInputError
from cpc_fast.io.atomic import atomic_write_bytes, check_writable_folder, json_text
from cpc_fast.io.cpus import available_cpus, intra_op_threads
from cpc_fast.models.hub import model_folder

FLAGS["predict"] = {
    "cpc_path": "--cpc",
    "upstream_path": "--upstream",
    "folder": "--model",
    "skip_bad": "--skip-bad",
    "threads": "--threads",
    "runtime": "--runtime",
    "output": "--output",
    "output_format": "--format",
    "batch_size": "--batch-size",
}
FLAGS["visualize"] = {
    "root": "--root",
    "dataset": "--dataset",
    "subset": "--subset",
    "skip_bad": "--skip-bad",
    "out": "--out",
}
FORMATS = ("table", "csv", "jsonl", "json")
_SUFFIX_FORMATS = {".csv": "csv", ".jsonl": "jsonl", ".json": "json"}
RUNTIMES = ("torch", "onnxruntime")


def _warn(message: str) -> None:
    typer.echo(f"warning: {message}", err=True)


def _row(result: Result) -> dict[str, Any]:
    row: dict[str, Any] = {"file": str(result.clip.path)}
    if result.error is None:
        return {**row, **dict(zip(DIMENSIONS, map(float, result.values), strict=True))}
    return {**row, **dict.fromkeys(DIMENSIONS), "error": result.error}


def _render(rows: list[dict[str, Any]], output_format: str) -> str:
    if output_format == "json":
        return json_text(rows) + "\n"
    if output_format == "jsonl":
        return "".join(json.dumps(r, allow_nan=False) + "\n" for r in rows)
    if output_format == "csv":
        text = io.StringIO()
        writer = csv.DictWriter(text, ["file", *DIMENSIONS, "error"], lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        return text.getvalue()
    good = [r for r in rows if "error" not in r]
    width = max(len(r["file"]) for r in good)
    lines = [f"{'file'.ljust(width)}  activation  valence  dominance"]
    lines += [
        f"{r['file'].ljust(width)}  {r['activation']:10.3f}  {r['valence']:7.3f}  "
        f"{r['dominance']:9.3f}"
        for r in good
    ]
    return "\n".join(lines) + "\n"


def _format_of(output_format: str | None, as_json: bool, output: Path | None) -> str:
    if as_json and output_format not in (None, "json"):
        raise UserInputError(f"`as_json` and `output_format={output_format}` disagree: give one")
    if as_json:
        return "json"
    if output_format is not None:
        if output_format not in FORMATS:
            raise UserInputError(f"`output_format` must be one of {', '.join(FORMATS)}")
        return output_format
    if output is not None:
        return _SUFFIX_FORMATS.get(output.suffix.lower(), "csv")
    return "table"


@app.command()
def predict(
    inputs: Annotated[
        list[Path],
        typer.Argument(
            metavar="FILES...",
            help="Audio files in any format soundfile reads, at any rate and channel count "
            "(averaged to mono and resampled to 16 kHz); folders (every audio file below, "
            "recursively); manifests (.csv with a path column, or .txt/.lst with one path a "
            "line; relative to the manifest's folder).",
        ),
    ],
    model: Annotated[
        str,
        typer.Option(
            help="A model folder: an experiment's run folder OUT/<setup>/<fold>/run<r>, or "
            "one written by cpc-fast export (or a Hugging Face Hub repo id owner/name)."
        ),
    ],
    cpc: Annotated[
        Path | None, typer.Option(help="Where the frozen CPC of a mini/pre model is now, if moved.")
    ] = None,
    upstream: Annotated[
        Path | None,
        typer.Option(help="Where the Hugging Face model of an ssl model is now, if moved."),
    ] = None,
    output_format: Annotated[
        str | None,
        typer.Option(
            "--format",
            help="table, csv, jsonl (one JSON object a line) or json (a list). Default: "
            "table, or from the --output file's suffix.",
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="The same as --format json.")] = False,
    output: Annotated[
        Path | None,
        typer.Option(help="Write the predictions to this file (atomically) instead of stdout."),
    ] = None,
    skip_bad: Annotated[
        bool, typer.Option("--skip-bad", help="Skip (and count) files that fail when read.")
    ] = False,
    runtime: Annotated[
        str,
        typer.Option(
            help="torch, or onnxruntime (the model folder's model.onnx: cpc-fast export --onnx)."
        ),
    ] = "torch",
    threads: Annotated[
        int | None,
        typer.Option(help="CPU threads. Default: the cores this process may use."),
    ] = None,
    batch_size: Annotated[
        int | None,
        typer.Option(
            help=f"Files a batch, of similar lengths (at most {MAX_SAMPLES // 16000} s padded; "
            f"a longer file runs alone). Default: {MAX_ITEMS} with torch, 1 with onnxruntime."
        ),
    ] = None,
    progress: ShowProgress = True,
    quiet: Quiet = False,
) -> None:
    """Activation, valence and dominance of each file, on the training labels' scale.

    Files run in batches of similar length. A file that fails stops the command with its
    name; with --skip-bad it is warned about and, in csv/json/jsonl, listed with empty
    values and its "error"."""
    output_format = _format_of(output_format, as_json, output)
    if runtime not in RUNTIMES:
        raise UserInputError(f"`runtime` must be one of {', '.join(RUNTIMES)}, got {runtime!r}")
    if threads is not None and threads < 1:
        raise UserInputError("`threads` must be at least 1")
    if batch_size is not None and batch_size < 1:
        raise UserInputError("`batch_size` must be at least 1")
    threads = threads or available_cpus()
    before = torch.get_num_threads()  # a command called in-process leaves it as it was
    try:
        _predict(
            inputs,
            model,
            cpc,
            upstream,
            output_format,
            output,
            skip_bad,
            runtime,
            threads,
            batch_size,
            shows_progress(progress, quiet),
            quiet,
        )
    finally:
        torch.set_num_threads(before)


def _predict(
    inputs: list[Path],
    model: str,
    cpc: Path | None,
    upstream: Path | None,
    output_format: str,
    output: Path | None,
    skip_bad: bool,
    runtime: str,
    threads: int,
    batch_size: int | None,
    show: bool,
    quiet: bool,
) -> None:
    if output is not None:  # before any work
        check_writable_folder(output.parent, "`output`")
    folder = model_folder(model)
    if runtime == "onnxruntime":
        if cpc is not None or upstream is not None:
            flag = "`cpc_path`" if cpc is not None else "`upstream_path`"
            raise UserInputError(f"{flag} is for the torch runtime: the graph holds its CPC")
        if not (folder / ONNX_NAME).is_file():
            raise UserInputError(
                f"{folder}: no {ONNX_NAME}; write one with cpc-fast export {folder} --out "
                "FOLDER --onnx"
            )
        # One file a run, `threads` runs at once on one thread each: on a CPU the graph's
        # padded batches cost more than they save (its attention is quadratic in the
        # padded length; bench/bench_predict.py), and runs in parallel beat one run's
        # threads.
        runner = OnnxEmotionRunner(folder / ONNX_NAME, threads=1)
        predict_batch, sample_rate = runner.predict_batch, runner.sample_rate
        min_samples = runner.hop
        workers, use_threads = threads, None
        batch_size = batch_size or 1
        what = f"onnxruntime: {threads} run(s) at a time"
    else:
        emotion_model = load_model(folder, cpc_path=cpc, upstream_path=upstream)
        predict_batch, sample_rate, min_samples = (
            emotion_model.predict_batch,
            emotion_model.sample_rate,
            emotion_model.min_samples,
        )
        workers, use_threads = threads, torch.set_num_threads
        batch_size = batch_size or MAX_ITEMS
        what = f"torch, {emotion_model.config['setup']}: {threads} batch(es) at a time"
    files = expand_inputs(inputs)
    conversions = Conversions(sample_rate)
    clips = index_files(files, sample_rate, conversions)
    seconds = total_seconds(clips, sample_rate)
    if not quiet:
        typer.echo(
            f"predict: {len(clips)} file(s), {seconds:,.1f} s of audio, on {threads} CPU "
            f"thread(s) ({what}; up to {batch_size} files a batch)",
            err=True,
        )
    bar = tqdm(
        total=round(seconds, 1),
        unit="s",
        desc="audio",
        disable=not show,
        dynamic_ncols=True,
        leave=False,
    )
    by_clip: dict[int, Result] = {}
    try:
        for result in predict_clips(
            predict_batch,
            clips,
            sample_rate=sample_rate,
            min_samples=min_samples,
            max_items=batch_size,
            workers=workers,
            use_threads=use_threads,
            on_batch=lambda s: bar.update(round(s, 1)),
        ):
            if result.error is not None:
                if not skip_bad:
                    raise UserInputError(
                        f"{result.error} (with `skip_bad=True` it would be skipped)"
                    )
                _warn(f"skipping {result.error}")
            by_clip[id(result.clip)] = result
    finally:
        bar.close()
    rows = [_row(by_clip[id(clip)]) for clip in clips]
    if conversions.summary():
        typer.echo(f"note: {conversions.summary()}", err=True)
    skipped = sum("error" in r for r in rows)
    if skipped == len(rows):
        raise UserInputError(f"every one of the {skipped} file(s) was skipped")
    if skipped:
        _warn(f"{skipped} of {len(rows)} file(s) skipped")
    text = _render(rows, output_format)
    if output is None:
        typer.echo(text, nl=False)
    else:
        atomic_write_bytes(output, text.encode())
        if not quiet:
            typer.echo(f"predictions of {len(rows) - skipped} file(s): {output}", err=True)


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
