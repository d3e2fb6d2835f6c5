"""The paper's Figure 1: t-SNE of utterance-level representations coloured by emotion.

Representations (one vector per utterance):

* from a pretrained CPC (``--pretrained``): the mean over time of its context vectors c_t;
* from a trained emotion model (``--model``): the recognizer's pooled u = [mean(U); std(U)].

Vectors are standardised per dimension, then embedded in 2-D with scikit-learn's t-SNE (PCA
initialisation, seeded). Needs the ``viz`` extra (matplotlib, scikit-learn).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from cpc_fast.data.labelled import EmotionCorpus
from cpc_fast.errors import UserInputError, naming
from cpc_fast.features.extract import cpc_contexts
from cpc_fast.io.atomic import check_writable_folder

EMOTION_NAMES = {
    # IEMOCAP
    "neu": "neutral",
    "hap": "happy",
    "exc": "excited",
    "ang": "angry",
    "sad": "sad",
    "fru": "frustrated",
    "sur": "surprised",
    "fea": "fearful",
    "dis": "disgusted",
    "oth": "other",
    "xxx": "no agreement",
    # MSP-Podcast EmoClass
    "N": "neutral",
    "H": "happy",
    "A": "angry",
    "S": "sad",
    "U": "surprised",
    "F": "fearful",
    "D": "disgusted",
    "C": "contempt",
    "O": "other",
    "X": "no agreement",
}


def require_viz():
    """(pyplot, TSNE), or a :class:`UserInputError` saying how to install them."""
    try:  # the optional `viz` extra: imported only when a figure is drawn
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from sklearn.manifold import TSNE
    except ImportError as exc:
        raise UserInputError(
            f"visualize needs matplotlib and scikit-learn: pip install 'cpc-fast[viz]' ({exc})"
        ) from exc
    return plt, TSNE


def check_figure_path(out: str | os.PathLike) -> Path:
    """Refuses, before any work, a figure file matplotlib cannot write (its suffix) or a
    folder where nothing can be written."""
    require_viz()
    from matplotlib.backend_bases import FigureCanvasBase  # the optional `viz` extra

    out = Path(out)
    formats = FigureCanvasBase.get_supported_filetypes()
    if out.suffix.lower().lstrip(".") not in formats:
        raise UserInputError(
            f"{out}: a figure file must end in one of "
            f"{', '.join('.' + f for f in sorted(formats))} (`out`)"
        )
    if out.is_dir():
        raise UserInputError(f"{out}: is a folder; `out` is the figure file to write")
    check_writable_folder(out.parent, "the folder of `out`")
    return out


def pick_utterances(corpus: EmotionCorpus, max_utterances: int, seed: int = 0) -> list[int]:
    """Utterances with a categorical label; a seeded random subset when there are more."""
    labelled = [i for i, r in enumerate(corpus.records) if r.emotion]
    if not labelled:
        raise UserInputError(f"{corpus.name}: no utterance has a categorical emotion to colour by")
    if len(labelled) <= max_utterances:
        return labelled
    rng = np.random.default_rng(seed)
    return sorted(int(i) for i in rng.choice(labelled, size=max_utterances, replace=False))


def cpc_representations(model: torch.nn.Module) -> Callable[[np.ndarray], np.ndarray]:
    """wave (n,) -> mean over time of the CPC contexts, (context_dim,)."""
    device = next(model.parameters()).device
    model.eval()
    return lambda wave: cpc_contexts(model, wave, device).mean(axis=0)


def tsne_2d(vectors: np.ndarray, seed: int = 0, perplexity: float = 30.0) -> np.ndarray:
    """(N, D) -> (N, 2) t-SNE of the standardised vectors."""
    _, TSNE = require_viz()
    n = vectors.shape[0]
    if n < 5:
        raise UserInputError(f"t-SNE needs at least 5 utterances, got {n}")
    x = (vectors - vectors.mean(0)) / (vectors.std(0) + 1e-8)
    tsne = TSNE(2, perplexity=min(perplexity, (n - 1) / 3), init="pca", random_state=seed)
    return tsne.fit_transform(x)


def plot_tsne(points: np.ndarray, emotions: list[str], out: str | os.PathLike, title: str) -> Path:
    """Scatter of (N, 2) points coloured by emotion, saved to ``out`` (PNG, PDF, SVG...)."""
    plt, _ = require_viz()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(6.4, 5.4), dpi=150)
    names = sorted(set(emotions), key=lambda e: (-emotions.count(e), e))
    cmap = plt.get_cmap("tab10")
    for k, emotion in enumerate(names):
        sel = np.array([e == emotion for e in emotions])
        label = f"{EMOTION_NAMES.get(emotion, emotion)} ({int(sel.sum())})"
        ax.scatter(points[sel, 0], points[sel, 1], s=9, alpha=0.75, color=cmap(k % 10), label=label)
    ax.set_title(title)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.legend(loc="best", fontsize=8, markerscale=1.5, frameon=False)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return out


def _representation(
    corpus: EmotionCorpus, index: int, represent: Callable[[np.ndarray], np.ndarray]
) -> np.ndarray:
    record = corpus.records[index]
    name = str(record.path or record.utt_id)
    try:
        vector = np.asarray(represent(corpus.wave(index)), np.float64)
    except UserInputError as exc:  # audio that fails when read, or too short for a frame
        raise UserInputError(naming(name, str(exc))) from None
    if not np.isfinite(vector).all():
        raise UserInputError(f"{name}: its representation is not finite")
    return vector


def visualize(
    corpus: EmotionCorpus,
    represent: Callable[[np.ndarray], np.ndarray],
    out: str | os.PathLike,
    *,
    title: str,
    max_utterances: int = 2000,
    seed: int = 0,
    progress: bool = False,
    skip_bad: bool = False,
    warn: Callable[[str], None] | None = None,
) -> tuple[Path, np.ndarray, list[int]]:
    """Writes the figure; returns (path, (N, 2) points, the utterance indices plotted).

    An utterance whose audio fails when read (or gives a non-finite representation) stops
    it with the error naming the file; with ``skip_bad`` it is left out and ``warn`` hears
    why."""
    check_figure_path(out)
    picked = pick_utterances(corpus, max_utterances, seed)
    loop = tqdm(picked, desc="representations", unit="utt", disable=not progress, leave=False)
    indices, vectors = [], []
    for i in loop:
        try:
            vectors.append(_representation(corpus, i, represent))
        except UserInputError as exc:
            if not skip_bad:
                raise UserInputError(f"{exc} (with `skip_bad=True` it would be skipped)") from None
            if warn is not None:
                warn(f"skipping {exc}")
            continue
        indices.append(i)
    points = tsne_2d(np.stack(vectors) if vectors else np.zeros((0, 1)), seed)
    emotions = [corpus.records[i].emotion for i in indices]
    return plot_tsne(points, emotions, out, title), points, indices


__all__ = [
    "EMOTION_NAMES",
    "check_figure_path",
    "cpc_representations",
    "pick_utterances",
    "plot_tsne",
    "tsne_2d",
    "visualize",
]
