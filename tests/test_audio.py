"""Reading 16 kHz mono audio with soundfile, and the errors for everything else."""

from __future__ import annotations

import errno
import io
import os

import numpy as np
import pytest
import soundfile as sf

from cpc_fast.data.audio import AudioFormatError, AudioInfo, AudioReadError, audio_info, read_audio
from cpc_fast.errors import UserInputError


@pytest.fixture
def pcm16(tmp_path):
    samples = np.array([-32768, -1, 0, 1, 32767, 1234, -4321], dtype=np.int16)
    path = tmp_path / "pcm16.wav"
    sf.write(path, samples, 16000, subtype="PCM_16")
    return path, samples


def test_reads_pcm16_as_int16_and_scaled_float32(pcm16):
    path, samples = pcm16
    as_int = read_audio(path, dtype="int16")
    assert as_int.dtype == np.int16 and as_int.shape == (7,)
    np.testing.assert_array_equal(as_int, samples)
    as_float = read_audio(path)
    assert as_float.dtype == np.float32 and as_float.flags.c_contiguous
    np.testing.assert_array_equal(as_float, samples.astype(np.float32) / 32768)


def test_reads_float_flac_and_info_from_the_header(tmp_path):
    wave = np.random.default_rng(0).uniform(-0.9, 0.9, 16000 * 2 + 3).astype(np.float32)
    path = tmp_path / "a.wav"
    sf.write(path, wave, 16000, subtype="FLOAT")
    np.testing.assert_array_equal(read_audio(str(path)), wave)
    info = audio_info(path)
    assert info == AudioInfo(frames=32003, sample_rate=16000, channels=1)
    assert info.duration == pytest.approx(2.0001875)
    flac = tmp_path / "b.flac"
    sf.write(flac, (wave * 32767).astype(np.int16), 16000)
    np.testing.assert_array_equal(read_audio(flac, dtype="int16"), (wave * 32767).astype(np.int16))


def test_other_sample_rates_and_channel_counts_are_rejected(tmp_path):
    slow = tmp_path / "8k.wav"
    sf.write(slow, np.zeros(800, np.int16), 8000)
    with pytest.raises(AudioFormatError, match=r"8k\.wav: sample rate is 8000 Hz, expected 16000"):
        read_audio(slow)
    assert read_audio(slow, sample_rate=8000).shape == (800,)
    assert audio_info(slow).sample_rate == 8000  # the header alone is fine
    stereo = tmp_path / "stereo.wav"
    sf.write(stereo, np.zeros((100, 2), np.int16), 16000)
    with pytest.raises(AudioFormatError, match=r"stereo\.wav: has 2 channels, expected mono"):
        read_audio(stereo)
    assert issubclass(AudioFormatError, UserInputError)


def test_missing_unreadable_empty_and_non_finite_files(tmp_path):
    with pytest.raises(AudioReadError, match=r"nope\.wav: no such audio file"):
        read_audio(tmp_path / "nope.wav")
    with pytest.raises(AudioReadError, match="no such audio file"):
        audio_info(tmp_path)  # a directory
    garbage = tmp_path / "garbage.wav"
    garbage.write_bytes(b"this is not audio" * 10)
    with pytest.raises(AudioReadError, match=r"garbage\.wav: cannot decode"):
        read_audio(garbage)
    with pytest.raises(AudioReadError, match=r"garbage\.wav: cannot read the audio header"):
        audio_info(garbage)
    empty = tmp_path / "empty.wav"
    sf.write(empty, np.zeros(0, np.int16), 16000)
    with pytest.raises(AudioReadError, match=r"empty\.wav: holds no samples"):
        read_audio(empty)
    broken = tmp_path / "nan.wav"
    sf.write(broken, np.array([0.0, 0.5, np.nan], np.float32), 16000, subtype="FLOAT")
    with pytest.raises(AudioReadError, match=r"nan\.wav: sample 2 is nan"):
        read_audio(broken)
    assert issubclass(AudioReadError, UserInputError)


def test_rejects_unknown_dtypes(pcm16):
    with pytest.raises(ValueError, match="dtype must be one of"):
        read_audio(pcm16[0], dtype="float64")


@pytest.mark.parametrize("read", [read_audio, audio_info])
def test_a_failing_read_is_a_bad_file_and_the_machines_limits_are_not(pcm16, monkeypatch, read):
    path, _ = pcm16
    code = {"errno": errno.EIO}

    class Failing(io.FileIO):
        def read(self, size=-1):
            raise OSError(code["errno"], os.strerror(code["errno"]))

    monkeypatch.setattr("cpc_fast.data.audio.open", lambda p, *a, **k: Failing(p), raising=False)
    with pytest.raises(AudioReadError, match=r"pcm16\.wav: cannot read the audio file \(Input/"):
        read(path)
    code["errno"] = errno.ENOMEM
    with pytest.raises(OSError, match=r"Cannot allocate memory: '.*pcm16\.wav'") as caught:
        read(path)
    assert not isinstance(caught.value, AudioReadError)


def test_the_decoders_reason_is_given_without_its_descriptor(tmp_path):
    garbage = tmp_path / "garbage.wav"
    garbage.write_bytes(b"RIFF" + b"x" * 100)
    with pytest.raises(
        AudioReadError, match=r"garbage\.wav: cannot decode the audio \(\w"
    ) as caught:
        read_audio(garbage)
    assert "Error opening" not in str(caught.value)
