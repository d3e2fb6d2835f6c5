"""Reading audio with soundfile: any rate and channel count converted to 16 kHz mono, 16 kHz
mono untouched, and the errors for bad files."""

from __future__ import annotations

import errno
import io
import os

import numpy as np
import pytest
import soundfile as sf

from cpc_fast.data.audio import AudioInfo, AudioReadError, Conversions, audio_info, read_audio
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


def test_other_rates_and_channel_counts_are_converted_to_16k_mono(tmp_path):
    t = np.arange(8000) / 8000
    slow = tmp_path / "8k.wav"
    tone = (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    sf.write(slow, tone, 8000, subtype="FLOAT")
    wave = read_audio(slow)
    assert wave.dtype == np.float32 and wave.shape == (16000,)
    # a 440 Hz tone stays a 440 Hz tone of the same amplitude (well inside the passband)
    spectrum = np.abs(np.fft.rfft(wave))
    assert np.argmax(spectrum) == 440
    assert np.abs(wave[1000:-1000]).max() == pytest.approx(0.5, rel=2e-3)
    np.testing.assert_array_equal(read_audio(slow, sample_rate=8000), tone)  # its own rate
    assert audio_info(slow).samples_at(16000) == 16000
    stereo = tmp_path / "stereo.wav"
    left, right = np.full(100, 1000, np.int16), np.full(100, -3000, np.int16)
    sf.write(stereo, np.stack([left, right], axis=1), 16000)
    np.testing.assert_array_equal(read_audio(stereo), np.full(100, -1000 / 32768, np.float32))
    np.testing.assert_array_equal(read_audio(stereo, dtype="int16"), np.full(100, -1000))
    assert read_audio(stereo, dtype="auto").dtype == np.float32  # converted: float


def test_16k_mono_is_returned_as_decoded(tmp_path):
    rng = np.random.default_rng(1)
    pcm = (rng.standard_normal(5000) * 3000).astype(np.int16)
    path = tmp_path / "a.flac"
    sf.write(path, pcm, 16000, subtype="PCM_16")
    np.testing.assert_array_equal(read_audio(path), sf.read(path, dtype="float32")[0])
    auto = read_audio(path, dtype="auto")
    assert auto.dtype == np.int16
    np.testing.assert_array_equal(auto, pcm)
    floats = tmp_path / "f.wav"
    sf.write(floats, pcm / 32768.0, 16000, subtype="FLOAT")
    assert read_audio(floats, dtype="auto").dtype == np.float32  # not 16-bit PCM


def test_conversions_are_counted_from_headers_and_summed_up_in_one_line(tmp_path):
    conversions = Conversions(16000)
    for rate, channels, count in ((44100, 2, 2), (48000, 1, 1), (16000, 2, 1), (16000, 1, 3)):
        conversions_file = tmp_path / f"{rate}-{channels}.wav"
        sf.write(conversions_file, np.zeros((400, channels)), rate)
        for _ in range(count):
            conversions.add(audio_info(conversions_file))
    assert conversions.summary() == (
        "4 of 7 audio files converted to 16000 Hz mono when read (resampled 2 from 44100 Hz, "
        "1 from 48000 Hz; averaged to mono 3 from 2 channels)"
    )
    assert Conversions(16000).summary() is None


def test_every_format_soundfile_writes_is_read(tmp_path):
    """MP3, Ogg/Vorbis and Opus (lossy: compared by correlation), FLAC; 48 kHz stereo."""
    t = np.arange(48000) / 48000
    tone = 0.3 * np.sin(2 * np.pi * 300 * t)
    expected = 0.3 * np.sin(2 * np.pi * 300 * np.arange(16000) / 16000)
    for name, fmt, subtype in (
        ("a.mp3", "MP3", "MPEG_LAYER_III"),
        ("a.ogg", "OGG", "VORBIS"),
        ("a.opus", "OGG", "OPUS"),
        ("a.flac", "FLAC", "PCM_16"),
    ):
        path = tmp_path / name
        sf.write(path, np.stack([tone, tone], axis=1), 48000, format=fmt, subtype=subtype)
        wave = read_audio(path)
        assert abs(wave.shape[0] - 16000) <= 600, name  # MP3 pads its frames
        lag = int(np.argmax(np.correlate(wave[:2000], expected[:1000], "valid")))
        got = wave[lag : lag + 15000]
        assert np.corrcoef(got, expected[: got.shape[0]])[0, 1] > 0.99, name


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
