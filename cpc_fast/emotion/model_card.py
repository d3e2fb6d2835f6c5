"""The model card (``README.md``) of an exported emotion model, from its config.

What the card reports comes from the config's own fields (setup, data set, fold, run, the
front end) and from what ``cpc-fast export`` adds from the experiment's records: ``"test"``
(the CCC on the fold's test split, ``result.json``) and ``"training"`` (the data set's
description and protocol, the split sizes, the epochs, the command). A field that is not
known is shown as "-", never guessed. The licence is left for the owner to fill in.
"""

from __future__ import annotations

from typing import Any

from cpc_fast.config.experiment import SETUP_NAMES
from cpc_fast.models.hub import LIBRARY, card_front_matter, card_table

_SETUPS = {
    "sup": "the recognizer on 40-d log mel filterbank energies (25 ms window, 10 ms hop)",
    "joint": "a CPC model and the recognizer trained end to end from the waveform "
    "(CCC loss + λ InfoNCE)",
    "mini": "the recognizer on the contexts of a frozen CPC pre-trained on the fold's "
    "training audio",
    "pre": "the recognizer on the contexts of a frozen CPC pre-trained on other audio",
}


def _ccc(test: dict[str, float]) -> str:
    if "ccc_avg" not in test:
        return "-"
    parts = (
        f"{name} {test[key]:.3f}"
        for name, key in (
            ("activation", "ccc_act"),
            ("valence", "ccc_val"),
            ("dominance", "ccc_dom"),
        )
        if key in test
    )
    return f"**{test['ccc_avg']:.3f}** average ({', '.join(parts)})"


def _front_end(config: dict[str, Any]) -> str:
    features = config["features"]
    if features["kind"] == "lfbe":
        return "LFBE, computed from the waveform (no model)"
    if features["kind"] == "joint":
        cpc = features["cpc_config"]
        return (
            f"CPC (encoder {cpc['encoder_dim']}, GRU {cpc['context_dim']}), in `model.safetensors`"
        )
    if features["kind"] == "ssl":
        ssl = features["ssl"]
        where = (
            f"`{ssl['folder']}/`" if "folder" in ssl else f"`{ssl['source']}` (not in this folder)"
        )
        return (
            f"frozen {ssl.get('model_type', '?')} upstream ({ssl.get('hidden_size', '?')} wide, "
            f"hidden states {ssl['layers']}), {where}, weight digest `{ssl['digest'][:16]}…`"
        )
    cpc = features["cpc"]
    where = (
        f"`{cpc['file']}`" if "file" in cpc else f"`{cpc.get('path', '?')}` (not in this folder)"
    )
    return f"frozen CPC, {where}, weight digest `{cpc['digest'][:16]}…`"


def _setup_text(config: dict[str, Any]) -> str:
    if config["features"]["kind"] == "ssl":
        return "the recognizer on the frozen hidden states of a speech SSL model"
    return _SETUPS.get(config["setup"], "-")


def emotion_card(config: dict[str, Any]) -> str:
    """The card's Markdown: YAML header, what the model is, how well it did, how to use it."""
    setup = config["setup"]
    training = config.get("training") or {}
    labels = config.get("label_range")
    scale = f"{labels[0]:g}–{labels[1]:g}" if labels else "the training labels' own scale"
    split = "-"
    if "num_train" in training:
        split = (
            f"{training['num_train']} train, {training.get('num_validation', '?')} validation, "
            f"{training.get('num_test', '?')} test utterances"
        )
    epochs = "-"
    if "epochs" in training:
        epochs = (
            f"{training['epochs']} (best validation CCC at epoch {training.get('best_epoch', '?')})"
        )
    rows = [
        ("setup", f"`{setup}` ({SETUP_NAMES.get(setup, setup)}): {_setup_text(config)}"),
        ("data set", f"{config.get('dataset', '-')}: {training.get('data', '-')}"),
        ("protocol", str(training.get("protocol", "-"))),
        ("fold, run", f"{config.get('fold', '-')}, run {config.get('run', '-')}"),
        ("split", split),
        ("test CCC", _ccc(config.get("test") or {})),
        ("epochs", epochs),
        ("front end", _front_end(config)),
        ("trained by", f"`{training['command']}`" if "command" in training else "-"),
        ("licence", "not set: fill in `license:` in the header above"),
    ]
    tags = ["audio", "speech-emotion-recognition", "dimensional-emotion", "regression"]
    title = f"{SETUP_NAMES.get(setup, setup)} speech emotion recognizer"
    where = ", ".join(str(config[k]) for k in ("dataset", "fold") if config.get(k))
    return "\n".join(
        [
            card_front_matter([*tags, LIBRARY]),
            f"# {title}" + (f" ({where}, run {config.get('run')})" if where else ""),
            "",
            "Predicts **activation, valence and dominance** of a speech recording, in the "
            f"units of its training labels ({scale}): the attention-pooling recognizer of Li "
            "et al., *Contrastive Unsupervised Learning for Speech Emotion Recognition*, "
            "ICASSP 2021 ([paper](https://arxiv.org/abs/2102.06357)). Made with cpc-fast.",
            "",
            card_table(rows),
            "## Use",
            "",
            "```bash",
            "cpc-fast predict --model THIS_FOLDER a.wav clips/ --format csv",
            "```",
            "",
            "```python",
            "from cpc_fast.emotion import EmotionModel",
            "",
            'model = EmotionModel.from_pretrained("THIS_FOLDER")  # or the Hub repo id',
            "activation, valence, dominance = model.predict(wave)  # (n,) float32 at 16 kHz",
            "y = model(waves, lengths)  # a zero-padded batch (B, T), lengths (B,) -> (B, 3)",
            "```",
            "",
            "Any audio works with `cpc-fast predict` (averaged to mono, resampled to 16 kHz); "
            "the Python calls take 16 kHz mono float waveforms. With `model.onnx` in the "
            "folder (`cpc-fast export ... --onnx`), onnxruntime alone runs the whole model: "
            "inputs `wave` (B, T) float32 and `lengths` (B,) int64 samples, outputs "
            "`activation`, `valence`, `dominance` (B,) in the units above.",
            "",
        ]
    )


__all__ = ["emotion_card"]
