"""The Hugging Face Hub's model layout for the library's models: a folder of ``config.json``,
``model.safetensors`` and a ``README.md`` model card, loaded with ``from_pretrained`` and
published with ``push_to_hub``.

    model = CPCModel.from_pretrained("exports/ls100")     # a folder (or a Hub repo id)
    model.save_pretrained("exports/ls100-copy")           # config.json, model.safetensors, card
    model.push_to_hub("me/cpc-ls100")                     # needs the network and a token

The methods keep the names and keyword arguments of huggingface_hub's ``ModelHubMixin``, so
code written for Hub models reads the same, but a local folder needs nothing beyond
safetensors: huggingface_hub is imported only to download a repository or to upload one
(the ``export`` extra), and a missing one is asked for by name. A class says how its folder
is written and read (``_save_folder``, ``_from_folder``) and what its card says
(``model_card``).
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path
from typing import Any, TypeVar

from cpc_fast.errors import UserInputError, require_extra
from cpc_fast.io.atomic import atomic_write_bytes, read_json, write_json
from cpc_fast.io.checkpoint import CONFIG_NAME, WEIGHTS_NAME

CARD_NAME = "README.md"
LIBRARY = "cpc-fast"
EXTRA = "export"
_REPO_ID = re.compile(r"^[\w.-]+/[\w.-]+$")
_T = TypeVar("_T", bound="HubMixin")


def huggingface_hub() -> Any:
    """The ``huggingface_hub`` module, or a :class:`UserInputError` naming the extra."""
    return require_extra("huggingface_hub", "the Hugging Face Hub", EXTRA)


def card_front_matter(tags: list[str], extra: dict[str, str] | None = None) -> str:
    """The card's YAML header. ``license`` is left empty for the owner to fill: the terms of
    trained weights follow those of their training data, which only the owner knows."""
    lines = ["---", f"library_name: {LIBRARY}"]
    lines.append("license:  # yours to fill in (e.g. apache-2.0, cc-by-nc-4.0, other)")
    lines += ["tags:", *(f"- {tag}" for tag in tags)]
    lines += [f"{key}: {value}" for key, value in (extra or {}).items()]
    return "\n".join([*lines, "---", ""])


def model_folder(
    name_or_path: str | Path,
    *,
    force_download: bool = False,
    token: str | bool | None = None,
    cache_dir: str | Path | None = None,
    local_files_only: bool = False,
    revision: str | None = None,
) -> Path:
    """``name_or_path`` when it exists here; else the Hub repository ``owner/name``,
    downloaded (or found, with ``local_files_only``) in the Hugging Face cache."""
    path = Path(name_or_path)
    if path.exists():
        return path
    name = str(name_or_path)
    if not _REPO_ID.match(name):
        raise UserInputError(f"{name}: no such folder (nor a Hub repository id owner/name)")
    try:
        hub = huggingface_hub()
    except UserInputError as exc:  # a mistyped folder reads as a repository id too
        raise UserInputError(f"{name}: no such folder; as a Hub repository id, {exc}") from None
    try:
        folder = hub.snapshot_download(
            name,
            revision=revision,
            cache_dir=cache_dir,
            token=token,
            force_download=force_download,
            local_files_only=local_files_only,
            library_name=LIBRARY,
        )
    except (OSError, ValueError) as exc:  # huggingface_hub's errors derive from these
        raise UserInputError(
            f"{name}: no such folder, and the Hub repository fails ({exc})"
        ) from None
    return Path(folder)


class HubMixin:
    """``from_pretrained`` / ``save_pretrained`` / ``push_to_hub`` over a class's own folder
    format (module docstring)."""

    @classmethod
    def from_pretrained(
        cls: type[_T],
        pretrained_model_name_or_path: str | Path,
        *,
        force_download: bool = False,
        token: str | bool | None = None,
        cache_dir: str | Path | None = None,
        local_files_only: bool = False,
        revision: str | None = None,
        **model_kwargs: Any,
    ) -> _T:
        """The model in a local folder, or in the Hub repository ``owner/name`` (downloaded
        into the Hugging Face cache by huggingface_hub; ``local_files_only`` reads the cache
        only). ``model_kwargs`` go to the class's loader (``map_location``)."""
        path = model_folder(
            pretrained_model_name_or_path,
            force_download=force_download,
            token=token,
            cache_dir=cache_dir,
            local_files_only=local_files_only,
            revision=revision,
        )
        return cls._from_folder(path, **model_kwargs)

    def save_pretrained(
        self,
        save_directory: str | Path,
        *,
        repo_id: str | None = None,
        push_to_hub: bool = False,
        **push_to_hub_kwargs: Any,
    ) -> str | None:
        """Writes the folder (each file atomically); with ``push_to_hub``, also uploads it to
        ``repo_id`` (default: the folder's name) and returns the commit's URL."""
        folder = Path(save_directory)
        folder.mkdir(parents=True, exist_ok=True)
        self._save_folder(folder)
        atomic_write_bytes(folder / CARD_NAME, self.model_card().encode())
        if push_to_hub:
            return self.push_to_hub(repo_id or folder.name, **push_to_hub_kwargs)
        return None

    def push_to_hub(
        self,
        repo_id: str,
        *,
        commit_message: str = "Upload a cpc-fast model",
        private: bool | None = None,
        token: str | None = None,
        branch: str | None = None,
        create_pr: bool | None = None,
    ) -> str:
        """Uploads the folder :meth:`save_pretrained` writes to the model repository
        ``repo_id`` (created if missing) in one commit; returns the commit's URL."""
        with tempfile.TemporaryDirectory() as tmp:
            self.save_pretrained(tmp)
            return upload_folder(
                tmp,
                repo_id,
                commit_message=commit_message,
                private=private,
                token=token,
                branch=branch,
                create_pr=create_pr,
            )

    # -- what a class provides ----------------------------------------------------------------

    @classmethod
    def _from_folder(cls: type[_T], folder: Path, **model_kwargs: Any) -> _T:
        raise NotImplementedError

    def _save_folder(self, folder: Path) -> None:
        raise NotImplementedError

    def model_card(self) -> str:
        raise NotImplementedError


def upload_folder(
    folder: str | Path,
    repo_id: str,
    *,
    commit_message: str = "Upload a cpc-fast model",
    private: bool | None = None,
    token: str | None = None,
    branch: str | None = None,
    create_pr: bool | None = None,
) -> str:
    """Uploads ``folder`` to the model repository ``repo_id`` (created if missing) in one
    commit, with huggingface_hub; returns the commit's URL."""
    api = huggingface_hub().HfApi(token=token)
    repo_id = api.create_repo(repo_id=repo_id, private=private, exist_ok=True).repo_id
    commit = api.upload_folder(
        repo_id=repo_id,
        repo_type="model",
        folder_path=str(folder),
        commit_message=commit_message,
        revision=branch,
        create_pr=create_pr,
    )
    return str(commit)


def card_table(rows: list[tuple[str, str]]) -> str:
    """A two-column Markdown table of (what, value) rows."""
    return "\n".join(["| | |", "| --- | --- |", *(f"| {k} | {v} |" for k, v in rows), ""])


def cpc_card(config: dict[str, Any], training: dict[str, Any] | None) -> str:
    """The model card of a CPC model: its sizes and, when known, how it was trained."""
    training = training or {}
    rows = [
        (
            "architecture",
            f"encoder of {len(config['strides'])} strided convolutions (strides "
            f"{_commas(config['strides'])}, kernels {_commas(config['kernel_sizes'])}, "
            f"{config['encoder_dim']} channels, norm {config['encoder_norm']}), a GRU of "
            f"{config['context_dim']}, {config['prediction_steps']} linear predictors",
        ),
        (
            "input",
            f"{config['sample_rate']} Hz mono float waveform; one frame per "
            f"{_product(config['strides'])} samples",
        ),
    ]
    if "data" in training:
        rows.append(("trained on", str(training["data"])))
    if "steps" in training:
        rows.append(
            (
                "training",
                f"{training['steps']} steps, {training.get('epochs', 0):.2f} epochs, "
                f"{training.get('audio_hours', 0):.2f} h of audio",
            )
        )
    valid = training.get("validation") or {}
    if "loss" in valid:
        rows.append(
            (
                "final validation",
                f"InfoNCE loss {valid['loss']:.4f}, accuracy {valid.get('accuracy', 0):.3f}",
            )
        )
    rows.append(("trained by", f"`{training['command']}`" if "command" in training else "-"))
    rows.append(("licence", "not set: fill in `license:` in the header above"))
    tags = ["audio", "speech", "self-supervised-learning", "contrastive-predictive-coding"]
    return "\n".join(
        [
            card_front_matter([*tags, LIBRARY]),
            "# CPC speech encoder",
            "",
            "Contrastive predictive coding (van den Oord et al. 2018), as in Li et al., "
            "ICASSP 2021: a strided convolutional encoder gives latent frames z, a GRU "
            "gives contexts c, and the predictors were trained with InfoNCE to tell the "
            "next frames from negatives ([paper](https://arxiv.org/abs/2102.06357)). Made "
            "with cpc-fast.",
            "",
            card_table(rows),
            "## Use",
            "",
            "```python",
            "from cpc_fast.models import CPCModel",
            "",
            'model = CPCModel.from_pretrained("THIS_FOLDER")  # or the Hub repo id',
            f"z = model.encode(wave)  # (B, T) at {config['sample_rate']} Hz -> (B, L, "
            f"{config['encoder_dim']})",
            f"c = model.context(wave)  # (B, T) -> (B, L, {config['context_dim']})",
            "```",
            "",
            "With `model.onnx` in the folder (`cpc-fast export ... --onnx`): inputs `wave` "
            "(B, T) float32 and `lengths` (B,) int64 samples of a zero-padded batch; outputs "
            "`z`, `c` and `frames` (B,), each row's valid frame count.",
            "",
        ]
    )


def _commas(values: list[int]) -> str:
    return ", ".join(map(str, values))


def _product(values: list[int]) -> int:
    out = 1
    for v in values:
        out *= v
    return out


def read_hub_config(folder: Path, model_type: str) -> dict[str, Any] | None:
    """A folder's ``config.json`` when it is a Hub config of ``model_type``, else None (a
    training run's folder holds its run configuration there)."""
    path = folder / CONFIG_NAME
    if not path.is_file():
        return None
    config = read_json(path)
    return config if isinstance(config, dict) and config.get("model_type") == model_type else None


def write_hub_config(folder: Path, model_type: str, config: dict[str, Any]) -> None:
    write_json(folder / CONFIG_NAME, {"model_type": model_type, **config})


__all__ = [
    "CARD_NAME",
    "CONFIG_NAME",
    "HubMixin",
    "WEIGHTS_NAME",
    "card_front_matter",
    "card_table",
    "cpc_card",
    "huggingface_hub",
    "model_folder",
    "read_hub_config",
    "upload_folder",
    "write_hub_config",
]
