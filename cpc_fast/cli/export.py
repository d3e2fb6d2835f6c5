"""``cpc-fast export``: a trained model as a self-contained folder in the Hugging Face Hub
layout, with ONNX graphs on request (:mod:`cpc_fast.emotion.export`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cpc_fast.cli.app import app
from cpc_fast.cli.options import FLAGS, Quiet
from cpc_fast.emotion.export import Exported, export_models
from cpc_fast.errors import UserInputError
from cpc_fast.models.hub import upload_folder

FLAGS["export"] = {
    "out": "--out",
    "onnx": "--onnx",
    "int8": "--int8",
    "cpc_path": "--cpc",
    "push_to_hub": "--push-to-hub",
}


def _line(item: Exported) -> str:
    files = ", ".join(sorted(p.name for p in item.folder.iterdir()))
    line = f"{item.folder} ({item.what}): {files}"
    if item.onnx_difference is not None:
        line += f"; onnxruntime within {item.onnx_difference:.1e} of PyTorch"
    if item.shares_cpc_with is not None:
        line += f"; cpc.safetensors linked to {item.shares_cpc_with}'s"
    if item.note is not None:
        line += f"; {item.note}"
    return line


@app.command("export")
def export(
    source: Annotated[
        Path,
        typer.Argument(
            metavar="MODEL_DIR",
            help="An experiment's run folder (OUT/<setup>/<fold>/run<r>), a whole experiment "
            "folder (every finished run), a CPC run folder (or its model.safetensors), or a "
            "folder exported before.",
        ),
    ],
    out: Annotated[
        Path,
        typer.Option(
            help="The folder to write; for an experiment, one folder per run below it at "
            "<setup>/<fold>/run<r>."
        ),
    ],
    onnx: Annotated[
        bool,
        typer.Option(
            "--onnx",
            help="Also write model.onnx: the whole model from a 16 kHz waveform batch, for "
            "onnxruntime (checked against PyTorch before it is kept).",
        ),
    ] = False,
    int8: Annotated[
        bool,
        typer.Option(
            "--int8",
            help="With --onnx, also model.int8.onnx, onnxruntime's dynamic int8 "
            "quantization (its measured speed and CCC change: docs/export.md).",
        ),
    ] = False,
    cpc: Annotated[
        Path | None, typer.Option(help="Where the frozen CPC of a mini/pre model is now, if moved.")
    ] = None,
    push_to_hub: Annotated[
        str | None,
        typer.Option(
            metavar="OWNER/NAME",
            help="Then upload the folder to this Hugging Face Hub model repository (one "
            "model; needs a token: huggingface-cli login).",
        ),
    ] = None,
    quiet: Quiet = False,
) -> None:
    """Write a trained model as a folder in the Hugging Face Hub layout (config.json,
    model.safetensors, README.md model card; the frozen CPC of mini/pre included) that
    `cpc-fast predict --model` and `from_pretrained` load anywhere."""
    exported = export_models(source, out, onnx=onnx, int8=int8, cpc_path=cpc)
    if push_to_hub is not None and len(exported) != 1:
        raise UserInputError(
            f"`push_to_hub` uploads one model; {source} holds {len(exported)} (they are "
            f"written under {out}): push each folder on its own"
        )
    if not quiet:
        for item in exported:
            typer.echo(_line(item))
    if push_to_hub is not None:
        typer.echo(f"uploaded: {upload_folder(exported[0].folder, push_to_hub)}")
