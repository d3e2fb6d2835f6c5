"""One unit of the experiment: the recognizer of one (setup, fold, run) trained, tested, and
its folder ``<out>/<setup>/<fold>/run<r>`` written.

The folder gets the best model, its test predictions, ``metrics.csv``, ``result.json`` (no
time in it, so that it is the same whoever ran the unit), ``timing.json`` (who ran it, how
long) and ``done``, written last. An unfinished unit resumes from its last epoch
(``state.pt``, removed when the unit is done); an interrupted attempt's files from before
its first checkpoint are removed first.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from cpc_fast.config.experiment import ExperimentConfig
from cpc_fast.data.labelled import EmotionCorpus, Fold, LabelScaler
from cpc_fast.emotion.joint import JointModel
from cpc_fast.emotion.model_io import save_model
from cpc_fast.emotion.report import write_predictions
from cpc_fast.emotion.train import (
    FeatureBatches,
    TrainSettings,
    WaveBatches,
    ccc_scores,
    fit,
    predict_indices,
)
from cpc_fast.features.cache import FeatureSet, frame_statistics
from cpc_fast.features.extract import cpc_contexts
from cpc_fast.io.atomic import atomic_write_bytes, write_json
from cpc_fast.io.metrics import MetricsLogger, truncate_metrics
from cpc_fast.models.cpc import CPCModel
from cpc_fast.models.recognizer import EmotionRecognizer, RecognizerConfig
from cpc_fast.models.ssl_layers import LayerSumRecognizer, WeightedLayerSum
from cpc_fast.training.checkpointer import Checkpointer
from cpc_fast.training.distributed import DistEnv, barrier

# What a (setup, fold, run) folder holds besides ``done`` (written last). result.json holds
# no time, so that it is the same whoever ran the unit; timing.json says who and how long.
UNIT_FILES = (
    "metrics.csv",
    "model.safetensors",
    "config.json",
    "predictions.csv",
    "result.json",
    "timing.json",
)


@dataclass(frozen=True)
class UnitPlace:
    """What the units a worker runs share: the experiment, its corpus, the worker's device
    and where it prints and writes."""

    config: ExperimentConfig
    corpus: EmotionCorpus
    env: DistEnv
    out: Path
    progress: bool
    host: str


def run_unit(
    place: UnitPlace, setup: str, fold_index: int, fold: Fold, run: int, prepared: dict
) -> dict:
    """Trains the recognizer of (``setup``, ``fold``, ``run``) from its inputs ``prepared``
    (:meth:`cpc_fast.emotion.experiment.Runner.prepare`: features and their reference; none
    for ``joint``), writes its folder, ``done`` last, and returns its ``result.json``."""
    cfg = place.config
    cpc_config = cfg.pretrain_config()  # the joint setup's CPC and its loss
    seed = cfg.seed + 100 * (run - 1) + fold_index
    torch.manual_seed(seed)
    unit = place.out / setup / fold.name / f"run{run}"
    scaler = LabelScaler.fit(place.corpus.labels(fold.train))
    targets = scaler.transform(place.corpus.labels())
    joint = setup == "joint"
    cpc = None
    stacked = 0  # SSL hidden states that a learned weighted sum combines (0: none)
    if joint:
        cpc = CPCModel(cpc_config.model)
        data = WaveBatches(place.corpus, targets, hop=cpc.frame_hop)
        recognizer = EmotionRecognizer(RecognizerConfig(input_dim=cpc.config.context_dim))
        stats = frame_statistics(_initial_contexts(place.corpus, cpc, fold.train))
        model: torch.nn.Module = JointModel(cpc, recognizer)
    else:
        features: FeatureSet = prepared["features"]
        data = FeatureBatches(features, targets)
        stacked = prepared.get("stacked_states", 0)
        recognizer = EmotionRecognizer(RecognizerConfig(input_dim=features.dim // (stacked or 1)))
        stats = features.mean_std(fold.train)
        model = recognizer
    mean, std = (torch.as_tensor(a, dtype=torch.float32) for a in stats)
    std = torch.where(std > 1e-6, std, torch.ones_like(std))
    layer_sum = None
    if stacked:
        # Each state standardised before the sum; the sum enters the recognizer as it is.
        layer_sum = WeightedLayerSum(stacked, recognizer.config.input_dim)
        layer_sum.set_normalization(mean, std)
        model = LayerSumRecognizer(layer_sum, recognizer)
    else:
        recognizer.set_input_normalization(mean, std)
    settings = TrainSettings(
        epochs=cfg.epochs,
        batch_size=cfg.batch_size,
        lr=cfg.joint_lr if joint and cfg.joint_lr is not None else cfg.lr,
        weight_decay=cfg.weight_decay,
        seed=seed,
        joint_lambda=cfg.joint_lambda,
        loss=cpc_config.loss,
    )
    checkpoint = Checkpointer(unit, place.env)
    # Collectives, so every rank asks: rank 0's answer reaches all of them.
    resumed_epoch = checkpoint.saved("epoch") if checkpoint.exists() else None
    logger = None
    if place.env.is_main:
        unit.mkdir(parents=True, exist_ok=True)
        if resumed_epoch is not None:  # rows logged after that epoch are logged again
            truncate_metrics(unit / "metrics.csv", resumed_epoch)
        else:  # an interrupted attempt's leftovers, from before its first checkpoint
            for name in UNIT_FILES:
                (unit / name).unlink(missing_ok=True)
        logger = MetricsLogger(unit, tensorboard=False)
    bar = None
    if place.progress:
        bar = tqdm(
            total=cfg.epochs,
            desc=f"{setup} {fold.name} run{run}",
            leave=False,
            unit="epoch",
            dynamic_ncols=True,
        )

    def on_epoch(epoch: int, scores: dict[str, float]) -> None:
        if bar is not None:
            bar.set_postfix(val_ccc=f"{scores['ccc_avg']:.3f}")
            bar.update()

    try:
        model, result = fit(
            model,
            data,
            fold.train,
            fold.validation,
            settings,
            place.env,
            joint=joint,
            log=logger.log if logger else None,
            on_epoch=on_epoch,
            checkpoint=checkpoint,
        )
    finally:
        if bar is not None:
            bar.close()
        if logger is not None:
            logger.close()
    scaled = predict_indices(model, data, fold.test, place.env, joint=joint)
    pred = scaler.inverse(scaled)
    labels = place.corpus.labels(fold.test)
    test = ccc_scores(pred, labels)
    summary = {
        "setup": setup,
        "fold": fold.name,
        "run": run,
        "seed": seed,
        "best_epoch": result.best_epoch,
        "epochs": cfg.epochs,
        "validation": result.best_validation,
        "test": test,
        "num_train": len(fold.train),
        "num_validation": len(fold.validation),
        "num_test": len(fold.test),
    }
    if layer_sum is not None:  # which hidden states the recognizer learned to weigh
        summary["layer_weights"] = [round(w, 6) for w in layer_sum.softmax_weights().tolist()]
    if place.env.is_main:
        model_config = {
            "setup": setup,
            "dataset": place.corpus.name,
            "fold": fold.name,
            "run": run,
            "features": prepared.get("reference") or _joint_reference(cpc),
            "recognizer": recognizer.config.to_dict(),
            "label_scaler": scaler.to_dict(),
            "label_range": list(place.corpus.label_range) if place.corpus.label_range else None,
        }
        save_model(unit, recognizer, model_config, cpc=cpc if joint else None, layer_sum=layer_sum)
        ids = [place.corpus.records[i].utt_id for i in fold.test]
        write_predictions(unit / "predictions.csv", ids, pred, labels)
        write_json(unit / "result.json", summary)
        write_json(
            unit / "timing.json",
            {
                "train_seconds": round(result.seconds, 2),
                "host": place.host,
                "pid": os.getpid(),
                "device": str(place.env.device),
            },
        )
        atomic_write_bytes(unit / "done", f"{time.strftime('%Y-%m-%dT%H:%M:%S')}\n".encode())
    checkpoint.remove()  # the unit is done: nothing to resume
    barrier()
    return summary


def _initial_contexts(corpus: EmotionCorpus, cpc: torch.nn.Module, train: tuple[int, ...]):
    """Contexts of the freshly initialised CPC on (up to 256) training utterances."""
    cpc.eval()
    for i in train[:: max(1, len(train) // 256)]:
        yield cpc_contexts(cpc, corpus.wave(i), torch.device("cpu"))
    cpc.train()


def _joint_reference(cpc) -> dict:
    return {"kind": "joint", "cpc_config": cpc.config.to_dict()}


__all__ = ["UNIT_FILES", "UnitPlace", "run_unit"]
