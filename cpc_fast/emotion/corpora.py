"""Opens the corpus an experiment names and picks its folds."""

from __future__ import annotations

from cpc_fast.data.emotion import EmotionCorpus, Fold
from cpc_fast.emotion.config import ExperimentConfig
from cpc_fast.errors import UserInputError


def load_corpus(
    dataset: str,
    root: str | None = None,
    *,
    subset: str = "paper",
    test_set: str = "Test1",
    skip_bad: bool = False,
    synthetic_size: str = "default",
    data_seed: int = 0,
) -> EmotionCorpus:
    """``iemocap`` | ``msp-podcast`` | ``manifest`` (``root`` required) | ``synthetic``."""
    if dataset == "synthetic":
        from cpc_fast.data.synthetic_emotion import load_synthetic

        return load_synthetic(synthetic_size, seed=data_seed)
    if not root:
        raise UserInputError(f"--dataset {dataset} needs --root")
    if dataset == "iemocap":
        from cpc_fast.data.iemocap import load_iemocap

        return load_iemocap(root, subset=subset, skip_bad=skip_bad)
    if dataset == "msp-podcast":
        from cpc_fast.data.msp_podcast import load_msp_podcast

        return load_msp_podcast(root, test_set=test_set, skip_bad=skip_bad)
    if dataset == "manifest":
        from cpc_fast.data.manifest import load_manifest

        return load_manifest(root, skip_bad=skip_bad)
    raise UserInputError(f"unknown dataset {dataset!r}")


def corpus_for(config: ExperimentConfig) -> EmotionCorpus:
    return load_corpus(
        config.dataset,
        config.root,
        subset=config.subset,
        test_set=config.test_set,
        skip_bad=config.skip_bad,
        synthetic_size=config.synthetic_size,
        data_seed=config.data_seed,
    )


def folds_for(corpus: EmotionCorpus, config: ExperimentConfig) -> list[Fold]:
    """The corpus's folds, restricted to ``config.folds`` (1-based) when given."""
    folds = corpus.folds(config.validation, seed=config.split_seed)
    if config.folds is None:
        return folds
    too_big = [f for f in config.folds if f > len(folds)]
    if too_big:
        raise UserInputError(f"--folds {too_big}: {corpus.name} has {len(folds)} fold(s)")
    return [folds[f - 1] for f in sorted(set(config.folds))]


__all__ = ["corpus_for", "folds_for", "load_corpus"]
