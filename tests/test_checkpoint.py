"""Checkpoint files: atomic writes, weights with their config, weights-only training state
with RNG states, and metrics rows after a kill."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch
from optional_deps import need

from cpc_fast.errors import UserInputError
from cpc_fast.io.atomic import atomic_write, read_json, write_json
from cpc_fast.io.checkpoint import load_state, load_weights, save_state, save_weights
from cpc_fast.io.metrics import MetricsLogger, read_metrics, truncate_metrics
from cpc_fast.training.checkpointer import rng_state, set_rng_state
from cpc_fast.training.seeds import derive_seed


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path) -> None:
    target = tmp_path / "config.json"
    write_json(target, {"a": 1})

    def failing(tmp: str) -> None:
        with open(tmp, "w") as fh:
            fh.write('{"a": 2, "trunc')
        raise RuntimeError("killed mid-write")

    with pytest.raises(RuntimeError):
        atomic_write(target, failing)
    assert read_json(target) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["config.json"]  # no temp file left


def test_weights_round_trip_with_config_and_kind(tmp_path) -> None:
    tensors = {"w": torch.randn(3, 4), "b": torch.arange(5)}
    save_weights(tmp_path / "m.safetensors", tensors, {"dim": 4, "names": ["x"]}, kind="cpc")
    loaded, config = load_weights(tmp_path / "m.safetensors", expected_kind="cpc")
    assert config == {"dim": 4, "names": ["x"]}
    for key in tensors:
        torch.testing.assert_close(loaded[key], tensors[key])
    with pytest.raises(UserInputError, match="holds a 'cpc' model, expected 'recognizer'"):
        load_weights(tmp_path / "m.safetensors", expected_kind="recognizer")


def test_the_same_weights_give_the_same_bytes(tmp_path) -> None:
    """safetensors writes its metadata in a hash map's order, different from one save to
    the next; the files a run writes must not depend on it."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    tensors = {"w": torch.randn(3, 4), "b": torch.arange(5), "h": torch.ones(7).half()}
    config = {"dim": 4, "name": "é", "nested": {"x": [1, 2]}}
    blobs = set()
    for i in range(12):
        path = tmp_path / f"m{i}.safetensors"
        save_weights(path, tensors, config, kind="cpc", stamp="abc")
        blobs.add(path.read_bytes())
    assert len(blobs) == 1
    (blob,) = blobs
    assert int.from_bytes(blob[:8], "little") % 8 == 0  # the data stays 8-byte aligned
    # safetensors' own reader takes it: the tensors and the metadata as saved
    loaded = load_file(path)
    assert all(torch.equal(loaded[k], tensors[k]) for k in tensors)
    with safe_open(str(path), framework="pt") as fh:
        assert fh.metadata() == {
            "config": json.dumps(config),
            "format": "pt",
            "kind": "cpc",
            "stamp": "abc",
        }


def test_training_state_with_rng_loads_weights_only_and_restores(tmp_path) -> None:
    torch.manual_seed(3)
    np.random.seed(4)  # noqa: NPY002 (the global RNG is what the state saves)
    random.seed(5)
    state = {"step": 7, "model": {"w": torch.randn(2)}, "rng": rng_state(), "note": None}
    expected = (torch.rand(3), np.random.rand(3), [random.random() for _ in range(3)])  # noqa: NPY002
    save_state(tmp_path / "state.pt", state)
    loaded = load_state(tmp_path / "state.pt")  # torch.load(weights_only=True) inside
    torch.load(tmp_path / "state.pt", weights_only=True)
    assert loaded["step"] == 7 and loaded["note"] is None
    torch.rand(10), np.random.rand(10), random.random()  # noqa: NPY002 (move every RNG on)
    set_rng_state(loaded["rng"])
    again = (torch.rand(3), np.random.rand(3), [random.random() for _ in range(3)])  # noqa: NPY002
    torch.testing.assert_close(again[0], expected[0], rtol=0, atol=0)
    np.testing.assert_array_equal(again[1], expected[1])
    assert again[2] == expected[2]


def test_corrupt_files_are_named(tmp_path) -> None:
    save_state(tmp_path / "state.pt", {"step": 1, "x": torch.zeros(1000)})
    data = (tmp_path / "state.pt").read_bytes()
    (tmp_path / "state.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(UserInputError, match=r"state\.pt: corrupt or unreadable"):
        load_state(tmp_path / "state.pt")
    (tmp_path / "config.json").write_text('{"a": ')
    with pytest.raises(UserInputError, match=r"config\.json: not a readable JSON"):
        read_json(tmp_path / "config.json")


def test_truncate_metrics_drops_later_and_partial_rows(tmp_path) -> None:
    with MetricsLogger(tmp_path, tensorboard=False) as log:
        for step in (5, 10, 15):
            log.log(step, "train", {"loss": 1.0 / step, "accuracy": 0.1})
    with open(tmp_path / "metrics.csv", "a") as fh:
        fh.write("20,train,lo")  # a row cut short by SIGKILL
    assert truncate_metrics(tmp_path / "metrics.csv", 10) == 3  # two rows at 15, one cut
    rows = read_metrics(tmp_path / "metrics.csv")
    assert sorted({r["step"] for r in rows}) == [5, 10] and len(rows) == 4
    with MetricsLogger(tmp_path, tensorboard=False) as log:
        log.log(15, "train", {"loss": 0.5})
    rows = read_metrics(tmp_path / "metrics.csv")
    assert [r["step"] for r in rows] == [5, 5, 10, 10, 15]
    assert truncate_metrics(tmp_path / "missing.csv", 3) == 0


def test_metrics_reach_tensorboard_when_the_tb_extra_is_installed(tmp_path) -> None:
    event_accumulator = need("tensorboard.backend.event_processing.event_accumulator")
    with MetricsLogger(tmp_path) as log:
        log.log(3, "train", {"loss": 0.25})
        log.log(4, "train", {"loss": 0.125})
    events = event_accumulator.EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("train/loss")] == [(3, 0.25), (4, 0.125)]
    assert len(read_metrics(tmp_path / "metrics.csv")) == 2


def test_derived_seeds_are_stable_and_distinct() -> None:
    assert derive_seed(0, "negatives", 5, 1) == derive_seed(0, "negatives", 5, 1)
    seeds = {derive_seed(0, "negatives", step, rank) for step in range(50) for rank in range(4)}
    assert len(seeds) == 200 and all(0 <= s < 2**63 for s in seeds)
    assert json.dumps(derive_seed("a")) == str(derive_seed("a"))
