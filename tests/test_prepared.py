"""The prepared corpus: decoded once into memory-mapped shards, the same samples as reading
the files, checked when opened (truncated, foreign), never complete after a failed write,
shared safely by two processes; and the pre-training command on it (killed while preparing,
resumed; a second run that decodes nothing)."""

from __future__ import annotations

import errno
import json
import multiprocessing
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from cli_runner import DecoderCalls, run_main
from safetensors.torch import load_file

from cpc_fast.data import prepared as prepared_module
from cpc_fast.data.audio import AudioReadError, read_audio
from cpc_fast.data.corpora.folder import load_folder
from cpc_fast.data.prepared import MARKER, prepare_corpus
from cpc_fast.data.windows import WindowCollate, WindowDataset
from cpc_fast.errors import UserInputError
from cpc_fast.io.lock import FolderLock

pytestmark = pytest.mark.usefixtures("one_torch_thread")
ROOT = Path(__file__).resolve().parents[1]


def _corpus(folder: Path, count: int = 9, seconds: float = 0.25) -> Path:
    """16 kHz 16-bit FLACs, 44.1 kHz stereo float WAVs and 48 kHz 24-bit FLACs in turn,
    plus nan.wav, which indexes (its header is fine) but fails when decoded."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(count):
        kind = i % 3
        rate = (16000, 44100, 48000)[kind]
        wave = 0.1 * rng.standard_normal(int(seconds * rate))
        if kind == 0:
            sf.write(folder / f"u{i:03d}.flac", wave, rate, subtype="PCM_16")
        elif kind == 1:
            sf.write(folder / f"u{i:03d}.wav", np.stack([wave, -wave / 2], 1), rate, "FLOAT")
        else:
            sf.write(folder / f"u{i:03d}.flac", wave, rate, subtype="PCM_24")
    sf.write(folder / "nan.wav", np.full(800, np.nan), 16000, subtype="FLOAT")
    return folder


def test_prepared_items_are_the_decoded_samples(tmp_path, monkeypatch) -> None:
    train, _ = load_folder(_corpus(tmp_path / "audio"), valid_fraction=0.0)
    calls = DecoderCalls(monkeypatch)
    prepared = prepare_corpus(train, tmp_path / "cache", progress=False)
    assert prepared.decoded == len(train) == calls.count == 10
    assert prepared.fingerprint() == train.fingerprint() and prepared.items == train.items
    for i, item in enumerate(train.items):
        if item.path.endswith("nan.wav"):
            with pytest.raises(AudioReadError, match=r"nan\.wav: sample 0 is nan"):
                prepared[i]
            continue
        got = prepared[i]
        assert isinstance(got, np.memmap)  # a view of the shard, not a copy
        if item.path.endswith(".flac") and sf.info(item.path).subtype == "PCM_16":
            assert got.dtype == np.int16  # 16-bit PCM kept as such: nothing lost
            np.testing.assert_array_equal(got, read_audio(item.path, dtype="int16"))
            np.testing.assert_array_equal(got / np.float32(32768), read_audio(item.path))
        else:
            assert got.dtype == np.float32
            np.testing.assert_array_equal(got, read_audio(item.path))
    calls.count = 0
    again = prepare_corpus(train, tmp_path / "cache", progress=False)
    assert again.decoded == 0 and calls.count == 0  # the second time decodes nothing
    # parallel workers write the same shards
    parallel = prepare_corpus(train, tmp_path / "cache2", workers=2, progress=False)
    for name in sorted(os.listdir(prepared.folder)):
        if name.startswith("shard-") and not name.endswith(".json"):
            assert (parallel.folder / name).read_bytes() == (prepared.folder / name).read_bytes()


def test_truncated_foreign_and_garbled_files_are_named_and_rebuilt(tmp_path) -> None:
    train, _ = load_folder(_corpus(tmp_path / "audio", count=30), valid_fraction=0.0)
    build = dict(progress=False, items_per_shard=8)
    first = prepare_corpus(train, tmp_path / "cache", **build)
    good = [i for i, item in enumerate(train.items) if not item.path.endswith("nan.wav")]
    expected = {i: first[i].copy() for i in good}
    shard = first.folder / "shard-00001.f32"
    with open(shard, "r+b") as fh:
        fh.truncate(os.path.getsize(shard) - 4)
    notes: list[str] = []
    second = prepare_corpus(train, tmp_path / "cache", info=notes.append, **build)
    assert any("shard-00001.f32 holds" in n and "(a truncated file)" in n for n in notes), notes
    assert second.decoded == 8  # that shard alone
    # a shard of another corpus (other key in its header) in its place
    _corpus(tmp_path / "other", count=30)
    (tmp_path / "other" / "extra.flac").write_bytes((tmp_path / "audio" / "u000.flac").read_bytes())
    other, _ = load_folder(tmp_path / "other", valid_fraction=0.0)
    foreign = prepare_corpus(other, tmp_path / "cache", **build)
    (second.folder / "shard-00002.i16").write_bytes(
        (foreign.folder / "shard-00002.i16").read_bytes()
    )
    notes.clear()
    third = prepare_corpus(train, tmp_path / "cache", info=notes.append, **build)
    assert any("shard-00002.i16 is not this corpus's shard" in n for n in notes), notes
    (third.folder / MARKER).write_text("{not json")
    notes.clear()
    fourth = prepare_corpus(train, tmp_path / "cache", info=notes.append, **build)
    assert any("rebuilding the prepared corpus" in n and MARKER in n for n in notes), notes
    assert fourth.decoded == 0  # every shard still checked out: only the marker was rewritten
    for i, wave in expected.items():
        np.testing.assert_array_equal(fourth[i], wave)


def test_a_full_disk_leaves_no_cache_that_passes_as_complete(tmp_path, monkeypatch) -> None:
    train, _ = load_folder(_corpus(tmp_path / "audio", count=30), valid_fraction=0.0)
    real = prepared_module.atomic_write
    writes = []

    def full_after_three(path, write):
        writes.append(path)
        if len(writes) > 3:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        real(path, write)

    monkeypatch.setattr(prepared_module, "atomic_write", full_after_three)
    with pytest.raises(UserInputError, match=r"No space left on device.*`--no-cache`") as info:
        prepare_corpus(train, tmp_path / "cache", progress=False, items_per_shard=8)
    assert str(writes[-1]) in str(info.value)  # names the file it could not write
    folder = next((tmp_path / "cache").iterdir())
    assert not (folder / MARKER).exists()
    assert not [p for p in folder.iterdir() if p.name.endswith(".tmp")]
    monkeypatch.setattr(prepared_module, "atomic_write", real)
    notes: list[str] = []
    done = prepare_corpus(
        train, tmp_path / "cache", progress=False, items_per_shard=8, info=notes.append
    )
    assert any("1 of 4 shards done" in n for n in notes), notes  # shard 0 was whole
    assert done.decoded == len(train) - 8 and (folder / MARKER).is_file()


def _prepare_in_child(folder: str, cache: str, queue) -> None:
    train, _ = load_folder(folder, valid_fraction=0.0)
    queue.put(prepare_corpus(train, cache, progress=False, items_per_shard=4).decoded)


def test_two_processes_preparing_the_same_corpus_decode_it_once(tmp_path) -> None:
    audio = _corpus(tmp_path / "audio", count=24)
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    children = [
        context.Process(target=_prepare_in_child, args=(str(audio), str(tmp_path / "c"), queue))
        for _ in range(2)
    ]
    for child in children:
        child.start()
    decoded = sorted(queue.get(timeout=120) for _ in children)
    for child in children:
        child.join(timeout=60)
        assert child.exitcode == 0
    assert decoded == [0, 25]  # one prepared everything, the other waited and read it


def test_a_held_lock_is_waited_for_and_named(tmp_path) -> None:
    train, _ = load_folder(_corpus(tmp_path / "audio", count=3), valid_fraction=0.0)
    key = prepared_module.cache_key(train)
    holder = FolderLock(tmp_path / "cache" / key[:32])
    holder.acquire()
    notes: list[str] = []
    result = {}
    thread = threading.Thread(
        target=lambda: result.update(
            p=prepare_corpus(train, tmp_path / "cache", progress=False, info=notes.append)
        )
    )
    thread.start()
    time.sleep(0.5)
    assert thread.is_alive() and "p" not in result  # waiting, not preparing alongside
    assert any(f"waiting for process {os.getpid()}" in n for n in notes), notes
    holder.release()
    thread.join(timeout=60)
    assert result["p"].decoded == len(train)


def test_pretrain_killed_while_preparing_resumes_and_a_second_run_decodes_nothing(
    tmp_path, monkeypatch, capsys
) -> None:
    audio = tmp_path / "audio"
    audio.mkdir()
    rng = np.random.default_rng(1)
    for i in range(5 * prepared_module.ITEMS_PER_SHARD):  # 5 shards
        wave = 0.1 * rng.standard_normal((11025, 2))  # 0.25 s at 44.1 kHz, stereo
        sf.write(audio / f"u{i:04d}.wav", wave, 44100, subtype="FLOAT")
    cache = tmp_path / "cache"
    args = ["pretrain", "--preset", "tiny", "--max-steps", "2", "--valid-fraction", "0"]
    args += ["--data", str(audio), "--cache-dir", str(cache), "--workers", "0"]
    command = [sys.executable, "-m", "cpc_fast", *args, "--out", str(tmp_path / "run")]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    child = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while not list(cache.glob("*/shard-00000.json")):
        assert child.poll() is None, child.stdout.read().decode()
        assert time.monotonic() < deadline, "preparation did not start"
        time.sleep(0.005)
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    folder = next(cache.iterdir())
    assert not (folder / MARKER).exists(), "killed too late: preparation had finished"
    first_shard = (folder / "shard-00000.f32").stat().st_ino
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "resuming the preparation in" in done.stdout
    assert (folder / "shard-00000.f32").stat().st_ino == first_shard  # kept, not rebuilt
    assert (folder / MARKER).is_file() and not list(folder.glob(".*.tmp"))
    # a second run on the same data, in this process: not one file decoded
    calls = DecoderCalls(monkeypatch)
    code, out, err = run_main([*args, "--out", str(tmp_path / "second")], capsys)
    assert code == 0, err
    assert calls.count == 0 and "nothing to decode" in out
    summary = json.loads((tmp_path / "second" / "summary.json").read_text())
    assert summary["steps"] == 2 and summary["skipped_files_reading"] == 0
    # --no-cache reads the files, as before
    code, out, err = run_main([*args, "--no-cache", "--out", str(tmp_path / "third")], capsys)
    assert code == 0, err
    assert calls.count > 0


@pytest.mark.parametrize("normalize", [False, True])
def test_cached_windows_are_the_batches_read_from_the_files(tmp_path, normalize) -> None:
    """Cropped and repeat-padded from the memory-mapped shards (views, nothing copied in
    Python), the batches are the bits of the on-the-fly path (--no-cache)."""
    train, _ = load_folder(_corpus(tmp_path / "audio", count=12, seconds=0.5), valid_fraction=0)
    prepared = prepare_corpus(train, tmp_path / "cache", progress=False)
    window = 6000  # shorter than the 0.5-s utterances (8000 samples) and than nan.wav
    collate = WindowCollate(window, normalize=normalize)
    cached = WindowDataset(prepared, window, crop="random", seed=3)
    direct = WindowDataset(train, window, crop="random", seed=3)
    for epoch in range(3):
        cached.set_epoch(epoch)
        direct.set_epoch(epoch)
        items = [cached[i] for i in range(len(cached))]
        got, expected = collate(items), collate([direct[i] for i in range(len(direct))])
        assert got["skipped"] == expected["skipped"] and len(got["skipped"]) == 1  # nan.wav
        torch.testing.assert_close(got["wave"], expected["wave"], rtol=0, atol=0)
        for i, (wave, _) in enumerate(items):
            if wave is not None:  # a view into the shard's map
                assert np.shares_memory(wave, prepared[i])


def test_a_run_on_the_cache_trains_the_weights_of_a_run_without_it(tmp_path, capsys) -> None:
    """16 kHz mono data: the prepared corpus changes nothing in what is trained."""
    audio = tmp_path / "audio"
    audio.mkdir()
    rng = np.random.default_rng(2)
    for i in range(12):
        wave = (rng.standard_normal(int(16000 * rng.uniform(0.3, 1.0))) * 3000).astype(np.int16)
        sf.write(audio / f"u{i:02d}.flac", wave, 16000, subtype="PCM_16")
    args = ["pretrain", "--preset", "tiny", "--max-steps", "4", "--valid-fraction", "0.2"]
    args += ["--data", str(audio), "--crop", "random", "--no-progress"]
    weights = {}
    for flag in ("--cache", "--no-cache"):
        out = tmp_path / flag.strip("-")
        code, _, err = run_main([*args, flag, "--out", str(out)], capsys)
        assert code == 0, err
        weights[flag] = load_file(out / "model.safetensors")
        summary = json.loads((out / "summary.json").read_text())
        assert summary["final_validation"]  # the validation set went through it too
    assert weights["--cache"].keys() == weights["--no-cache"].keys()
    for name, tensor in weights["--cache"].items():
        assert torch.equal(tensor, weights["--no-cache"][name]), name


@pytest.mark.slow
def test_two_gloo_ranks_share_one_prepared_corpus(tmp_path) -> None:
    """Every rank opens the cache; the lock makes the first prepare and the other wait."""
    audio = tmp_path / "audio"
    audio.mkdir()
    rng = np.random.default_rng(4)
    for i in range(16):
        wave = 0.1 * rng.standard_normal((22050, 2))  # 0.5 s at 44.1 kHz, stereo
        sf.write(audio / f"u{i:02d}.wav", wave, 44100, subtype="PCM_16")
    cache = tmp_path / "cache"
    cmd = [sys.executable, "-m", "cpc_fast", "pretrain", "--preset", "tiny", "--max-steps", "2"]
    cmd += ["--cpu-processes", "2", "--data", str(audio), "--cache-dir", str(cache)]
    cmd += ["--valid-fraction", "0", "--out", str(tmp_path / "run")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    folders = list(cache.iterdir())
    assert len(folders) == 1 and (folders[0] / MARKER).is_file()
    assert proc.stdout.count("converted to 16000 Hz mono") == 1
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["steps"] == 2
    assert summary["skipped_files_reading"] == 0
