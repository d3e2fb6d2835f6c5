"""cpc_fast._C against its NumPy fallback (bit for bit) and against a per-sample reference."""

from __future__ import annotations

import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch

from cpc_fast.data import _batching_numpy as numpy_backend
from cpc_fast.data import batching
from cpc_fast.errors import UserInputError


@pytest.fixture(scope="module")
def cpp():
    if not batching.extension_available():
        pytest.fail(
            f"{batching.backend_reason()}; build it with "
            "`CPC_FAST_STRICT_BUILD=1 pip install --no-build-isolation -e .`"
        )
    return batching._EXTENSION


@pytest.fixture(autouse=True)
def _cpp_enabled(monkeypatch):
    monkeypatch.delenv(batching.DISABLE_ENV, raising=False)
    monkeypatch.delenv(batching.THREADS_ENV, raising=False)


def _bits(a) -> bytes:
    return np.ascontiguousarray(a).view(np.uint32).tobytes()


def _reference_row(w: np.ndarray, length: int, off: int) -> np.ndarray:
    """Per-sample definition: w[off + j] when the wave is long enough, else w[j mod n]."""
    x = w.astype(np.float64) / 32768 if w.dtype == np.int16 else w.astype(np.float64)
    n = x.shape[0]
    j = np.arange(length)
    return (x[off + j] if n >= length else x[j % n]).astype(np.float32)


def _reference_normalized(y: np.ndarray) -> np.ndarray:
    y = y.astype(np.float64)
    return (y - y.mean()) / np.sqrt(y.var() + batching.NORM_EPS)


def _random_wave(rng: np.random.Generator, n: int) -> np.ndarray:
    if rng.random() < 0.5:
        w = (rng.standard_normal(n) * rng.choice([1e-4, 0.3, 3e3])).astype(np.float32)
    else:
        w = rng.integers(-32768, 32768, size=n).astype(np.int16)
    layout = rng.integers(4)
    if layout == 1:  # strided view
        w = np.repeat(w, 2)[::2]
    elif layout == 2:  # reversed view
        w = w[::-1].copy()[::-1]
    return w


def _random_batch(rng: np.random.Generator, length: int) -> list[np.ndarray]:
    sizes = [n for n in (1, 2, 7, length - 1, length, length + 1, 3 * length + 5) if n > 0]
    count = int(rng.integers(1, 7))
    return [
        _random_wave(
            rng, int(rng.choice(sizes)) if rng.random() < 0.6 else int(rng.integers(1, 4 * length))
        )
        for _ in range(count)
    ]


def _random_offsets(rng: np.random.Generator, waves, length: int) -> np.ndarray:
    return np.array(
        [rng.integers(0, max(w.shape[0] - length, 0) + 1) for w in waves], dtype=np.int64
    )


# --- agreement and correctness ---------------------------------------------------------------


@pytest.mark.parametrize("normalize", [False, True])
def test_repeat_pad_backends_agree_bitwise_and_match_reference(cpp, normalize):
    rng = np.random.default_rng(1)
    for trial in range(120):
        length = int(rng.choice([1, 2, 5, 97, 1000]))
        waves = _random_batch(rng, length)
        offsets = _random_offsets(rng, waves, length)
        threads = int(rng.integers(0, 4))
        got = cpp.repeat_pad(waves, length, offsets, normalize, None, threads)
        want = numpy_backend.repeat_pad(waves, length, offsets, normalize, None, 0)
        assert got.shape == (len(waves), length) and got.dtype == np.float32
        assert _bits(got) == _bits(want), f"trial {trial}"
        for i, (w, off) in enumerate(zip(waves, offsets, strict=True)):
            ref = _reference_row(w, length, int(off))
            if normalize:
                np.testing.assert_allclose(got[i], _reference_normalized(ref), rtol=1e-5, atol=2e-5)
            else:
                np.testing.assert_array_equal(got[i], ref)


@pytest.mark.parametrize("normalize", [False, True])
def test_pad_collate_backends_agree_bitwise_and_match_reference(cpp, normalize):
    rng = np.random.default_rng(2)
    for trial in range(80):
        waves = _random_batch(rng, int(rng.choice([3, 160, 999])))
        multiple_of = int(rng.choice([1, 7, 160]))
        got, got_lengths = cpp.pad_collate(
            waves, multiple_of, normalize, None, int(rng.integers(0, 4))
        )
        want, want_lengths = numpy_backend.pad_collate(waves, multiple_of, normalize, None, 0)
        assert _bits(got) == _bits(want), f"trial {trial}"
        np.testing.assert_array_equal(got_lengths, want_lengths)
        lengths = [w.shape[0] for w in waves]
        assert got_lengths.dtype == np.int64 and got_lengths.tolist() == lengths
        width = -(-max(lengths) // multiple_of) * multiple_of
        assert got.shape == (len(waves), width)
        for i, w in enumerate(waves):
            ref = _reference_row(w, w.shape[0], 0)
            if normalize:
                np.testing.assert_allclose(
                    got[i, : len(w)], _reference_normalized(ref), rtol=1e-5, atol=2e-5
                )
            else:
                np.testing.assert_array_equal(got[i, : len(w)], ref)
            assert not got[i, len(w) :].any()


def test_large_batches_take_the_streaming_path_and_still_agree(cpp):
    # > 8 MiB of output selects streaming stores; an odd row length puts every row start at
    # a different 16-byte alignment, so the plain head and tail around the vectors run too.
    rng = np.random.default_rng(3)
    length = 700_001
    waves = [
        rng.standard_normal(length + 12345).astype(np.float32),
        rng.integers(-32768, 32768, length + 9).astype(np.int16),
        rng.standard_normal(1001).astype(np.float32),
        rng.integers(-32768, 32768, 333).astype(np.int16),
    ]
    offsets = _random_offsets(rng, waves, length)
    got = cpp.repeat_pad(waves, length, offsets, False, None, 2)
    assert _bits(got) == _bits(numpy_backend.repeat_pad(waves, length, offsets, False, None, 0))
    for i, (w, off) in enumerate(zip(waves, offsets, strict=True)):
        np.testing.assert_array_equal(got[i], _reference_row(w, length, int(off)))
    batch, _ = cpp.pad_collate(waves[::-1], 3, False, None, 2)
    assert _bits(batch) == _bits(numpy_backend.pad_collate(waves[::-1], 3, False, None, 0)[0])


@pytest.mark.parametrize("dtype", ["float32", "int16"])
@pytest.mark.parametrize("n", [1, 999, 1000, 1001, 50_000])
def test_edge_lengths_single_utterance(cpp, dtype, n):
    length = 1000
    rng = np.random.default_rng(n)
    w = (rng.standard_normal(n) * 1000).astype(dtype)
    off = n - length if n >= length else 0
    for offsets in (np.array([0]), np.array([off])):
        for normalize in (False, True):
            got = cpp.repeat_pad([w], length, offsets, normalize, None, 1)
            assert _bits(got) == _bits(
                numpy_backend.repeat_pad([w], length, offsets, normalize, None, 0)
            )
            if not normalize:
                np.testing.assert_array_equal(got[0], _reference_row(w, length, int(offsets[0])))


def test_int16_extremes_scale_by_one_over_32768(cpp):
    w = np.array([-32768, -1, 0, 1, 32767], dtype=np.int16)
    expected = np.array([-1.0, -1 / 32768, 0.0, 1 / 32768, 32767 / 32768], dtype=np.float32)
    for backend in (cpp, numpy_backend):
        np.testing.assert_array_equal(
            backend.repeat_pad([w], 5, np.zeros(1, np.int64), False, None, 1)[0], expected
        )
        batch, lengths = backend.pad_collate([w, w[:2]], 4, False, None, 1)
        np.testing.assert_array_equal(batch[0], [*expected, 0, 0, 0])
        np.testing.assert_array_equal(batch[1], [-1.0, -1 / 32768, 0, 0, 0, 0, 0, 0])
    row = cpp.repeat_pad([w], 12, np.zeros(1, np.int64), False, None, 1)[0]
    np.testing.assert_array_equal(row, np.tile(expected, 3)[:12])


def test_normalisation_statistics(cpp):
    rng = np.random.default_rng(4)
    waves = [
        (rng.standard_normal(3000) * 0.01 + 0.5).astype(np.float32),
        np.full(500, 7.0, dtype=np.float32),  # constant: epsilon keeps it finite, gives zeros
        rng.integers(-300, 300, 700).astype(np.int16),
    ]
    out = cpp.repeat_pad(waves, 2000, np.array([1000, 0, 0]), True, None, 2)
    np.testing.assert_allclose(out[[0, 2]].mean(axis=1), 0.0, atol=1e-6)
    raw = cpp.repeat_pad(waves, 2000, np.array([1000, 0, 0]), False, None, 2).astype(np.float64)
    var = raw.var(axis=1)[[0, 2]]  # the epsilon shrinks quiet rows slightly below unit variance
    np.testing.assert_allclose(out[[0, 2]].var(axis=1), var / (var + batching.NORM_EPS), rtol=1e-4)
    assert not out[1].any()
    batch, _ = cpp.pad_collate(waves, 160, True, None, 2)
    for i, w in enumerate(waves):  # statistics over the valid samples; padding stays zero
        np.testing.assert_allclose(
            batch[i, : len(w)], _reference_normalized(_reference_row(w, len(w), 0)), atol=2e-5
        )
        assert not batch[i, len(w) :].any()


# --- the public wrapper ----------------------------------------------------------------------


def test_wrapper_uses_cpp_and_env_switch_selects_numpy(cpp, monkeypatch):
    assert batching.active_backend() == "cpp"
    assert "C++" in batching.backend_reason()
    waves = [np.arange(5, dtype=np.float32), np.arange(300, dtype=np.int16)]
    with_cpp = batching.repeat_pad(waves, 100, "random", rng=5, normalize=True)
    monkeypatch.setenv(batching.DISABLE_ENV, "1")
    assert batching.active_backend() == "numpy"
    assert batching.DISABLE_ENV in batching.backend_reason()
    assert batching.extension_available()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # choosing the fallback on purpose does not warn
        with_numpy = batching.repeat_pad(waves, 100, "random", rng=5, normalize=True)
    assert _bits(with_cpp) == _bits(with_numpy)


def test_missing_extension_warns_once(monkeypatch):
    monkeypatch.setattr(batching, "_EXTENSION", None)
    monkeypatch.setattr(
        batching, "_LOAD_PROBLEM", "the C++ extension cpc_fast._C is not built (test)"
    )
    monkeypatch.setattr(batching, "_warned_missing", False)
    assert not batching.extension_available()
    assert batching.active_backend() == "numpy"
    assert "not built" in batching.backend_reason()
    with pytest.warns(RuntimeWarning, match="falls back to NumPy"):
        batching.repeat_pad([np.ones(3, np.float32)], 4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        batching.pad_collate([np.ones(3, np.float32)])


def test_missing_extension_in_a_fresh_process():
    code = (
        "import sys, warnings; sys.modules['cpc_fast._C'] = None\n"
        "import numpy as np\n"
        "from cpc_fast.data import batching\n"
        "assert not batching.extension_available() and batching.active_backend() == 'numpy'\n"
        "with warnings.catch_warnings(record=True) as caught:\n"
        "    warnings.simplefilter('always')\n"
        "    for _ in range(3): batching.repeat_pad([np.ones(5, np.float32)], 8)\n"
        "print(len(caught), batching.backend_reason())\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    count, reason = result.stdout.split(" ", 1)
    assert count == "1" and "not built" in reason


def test_offsets_start_random_and_explicit(cpp):
    waves = [np.arange(n, dtype=np.float32) for n in (50, 100, 130, 400)]
    start = batching.repeat_pad(waves, 100, "start")
    assert start[:, 0].tolist() == [0, 0, 0, 0]
    a = batching.repeat_pad(waves, 100, "random", rng=7)
    b = batching.repeat_pad(waves, 100, "random", rng=np.random.default_rng(7))
    np.testing.assert_array_equal(a, b)
    firsts = set()
    for seed in range(200):
        row = batching.repeat_pad(waves, 100, "random", rng=seed)
        assert row[0, 0] == 0 and row[1, 0] == 0  # short or exact: no freedom
        off = int(row[3, 0])
        np.testing.assert_array_equal(row[3], np.arange(off, off + 100))
        firsts.add(int(row[2, 0]))
    assert firsts == set(range(31))  # every offset in [0, n - length] is drawn
    explicit = batching.repeat_pad(waves, 100, [0, 0, 30, 300])
    assert explicit[:, 0].tolist() == [0, 0, 30, 300]


def test_caller_buffers_numpy_and_torch_are_written_and_returned(cpp):
    rng = np.random.default_rng(5)
    waves = [rng.standard_normal(n).astype(np.float32) for n in (10, 2000, 700)]
    want = batching.repeat_pad(waves, 1000, "random", rng=3)
    out = np.full((3, 1000), np.nan, np.float32)
    assert batching.repeat_pad(waves, 1000, "random", rng=3, out=out) is out
    np.testing.assert_array_equal(out, want)
    tensor = torch.full((3, 1000), float("nan"))
    assert batching.repeat_pad(waves, 1000, "random", rng=3, out=tensor) is tensor
    np.testing.assert_array_equal(tensor.numpy(), want)
    padded, lengths = batching.pad_collate(waves, 160)
    tensor = torch.full(padded.shape, float("nan"))
    got, got_lengths = batching.pad_collate(waves, 160, out=tensor)
    assert got is tensor
    np.testing.assert_array_equal(tensor.numpy(), padded)
    np.testing.assert_array_equal(got_lengths, lengths)


def test_inputs_may_be_tensors_generators_or_a_2d_array(cpp):
    rows = np.random.default_rng(6).standard_normal((3, 500)).astype(np.float32)
    want = batching.repeat_pad(list(rows), 800)
    np.testing.assert_array_equal(batching.repeat_pad(rows, 800), want)
    np.testing.assert_array_equal(batching.repeat_pad((r for r in rows), 800), want)
    np.testing.assert_array_equal(
        batching.repeat_pad([torch.from_numpy(r) for r in rows], 800), want
    )
    np.testing.assert_array_equal(batching.wave_lengths(rows), [500, 500, 500])


def test_results_do_not_depend_on_the_thread_count(cpp, monkeypatch):
    rng = np.random.default_rng(8)
    waves = [rng.standard_normal(int(n)).astype(np.float32) for n in rng.integers(1, 90_000, 9)]
    offsets = _random_offsets(rng, waves, 40_000)
    first = cpp.repeat_pad(waves, 40_000, offsets, True, None, 1)
    for threads in (2, 3, 7):
        assert _bits(cpp.repeat_pad(waves, 40_000, offsets, True, None, threads)) == _bits(first)
    monkeypatch.setenv(batching.THREADS_ENV, "3")
    assert batching.default_num_threads() == 3
    monkeypatch.setenv(batching.THREADS_ENV, "many")
    with pytest.raises(UserInputError, match=batching.THREADS_ENV):
        batching.repeat_pad(waves, 10)


def test_dropped_results_are_recycled_but_live_ones_never(cpp):
    waves = [np.arange(200_000, dtype=np.float32), np.arange(7, dtype=np.int16)]
    first = batching.repeat_pad(waves, 160_000)
    address = first.ctypes.data
    del first
    second = batching.repeat_pad(waves, 160_000)
    assert second.ctypes.data == address  # the same memory, without new page faults
    held = torch.from_numpy(second)
    del second
    third = batching.repeat_pad(waves, 160_000, [1000, 0])
    assert third.ctypes.data != address  # the tensor still holds the old array
    assert held[0, 0] == 0 and third[0, 0] == 1000
    np.testing.assert_array_equal(third[1, :9], [0, 1, 2, 3, 4, 5, 6, 0, 1] / np.float32(32768))
    del third
    batching.release_buffers()
    assert batching.repeat_pad(waves, 160_000)[0, 5] == 5


# --- bad input: same error, same message, from both backends ---------------------------------


def _same_error(call_cpp, call_numpy, exc_type, match):
    with pytest.raises(exc_type, match=match) as from_cpp:
        call_cpp()
    with pytest.raises(exc_type, match=match) as from_numpy:
        call_numpy()
    assert type(from_cpp.value) is type(from_numpy.value)
    assert str(from_cpp.value) == str(from_numpy.value)


_F = np.ones(10, dtype=np.float32)
_BIG_ENDIAN = np.ones(10, dtype=">f4")
_BAD_REPEAT = [
    # (waves, length, offsets, exception, message)
    (np.ones(3, np.float32), 4, None, TypeError, "waves must be a list or tuple"),
    ([], 4, None, ValueError, "waves is empty"),
    ([_F], 0, None, ValueError, "length must be positive, got 0"),
    ([_F], -3, None, ValueError, "length must be positive, got -3"),
    ([_F, _F], 2**62, None, ValueError, r"an output of shape \(2, 4611686018427387904\) is too"),
    ([_F, _F], 4, np.zeros(2, np.int32), TypeError, "offsets must be an int64 numpy array"),
    ([_F, _F], 4, [0, 0], TypeError, "offsets must be an int64 numpy array, got list"),
    ([_F, _F], 4, np.zeros((2, 1), np.int64), ValueError, "offsets must be 1-D"),
    ([_F, _F], 4, np.zeros(3, np.int64), ValueError, "offsets has 3 entries for 2 waveforms"),
    (
        [_F, _F, [1.0, 2.0]],
        4,
        None,
        TypeError,
        r"waves\[2\]: expected a 1-D numpy array .* got list",
    ),
    (
        [_F, np.ones((2, 5), np.float32)],
        4,
        None,
        ValueError,
        r"waves\[1\]: expected a 1-D array, got shape \(2, 5\)",
    ),
    ([_F, np.ones(4)], 4, None, TypeError, r"waves\[1\]: dtype float64 is not supported"),
    ([_F, np.ones(4, np.int32)], 4, None, TypeError, r"waves\[1\]: dtype int32"),
    ([_BIG_ENDIAN], 4, None, TypeError, r"waves\[0\]: dtype >f4"),
    ([_F, _F, _F, np.ones(0, np.float32)], 4, None, ValueError, r"waves\[3\]: empty waveform"),
    ([_F, _F], 4, np.array([0, 7]), ValueError, r"waves\[1\]: offset 7 is out of range \[0, 6\]"),
    ([_F], 4, np.array([-1]), ValueError, r"waves\[0\]: offset -1 is out of range"),
    ([_F, _F], 20, np.array([0, 1]), ValueError, r"waves\[1\]: offset 1 is out of range \[0, 0\]"),
    (
        [_F, _F, np.array([0, 1, np.nan], np.float32)],
        3,
        None,
        ValueError,
        r"waves\[2\]: sample 2 is nan",
    ),
    ([np.array([0, np.inf], np.float32)], 8, None, ValueError, r"waves\[0\]: sample 1 is inf"),
    (
        [_F, np.array([-np.inf, 0], np.float32)],
        1,
        None,
        ValueError,
        r"waves\[1\]: sample 0 is -inf",
    ),
]


@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize(("waves", "length", "offsets", "exc", "match"), _BAD_REPEAT)
def test_repeat_pad_rejects_bad_input_identically(
    cpp, waves, length, offsets, exc, match, normalize
):
    if offsets is None:
        offsets = np.zeros(len(waves) if isinstance(waves, list) else 0, np.int64)
    _same_error(
        lambda: cpp.repeat_pad(waves, length, offsets, normalize, None, 2),
        lambda: numpy_backend.repeat_pad(waves, length, offsets, normalize, None, 0),
        exc,
        match,
    )


_BAD_OUT = [
    ([1.0], TypeError, "out must be a float32 numpy array .*got list"),
    (np.zeros((2, 4)), TypeError, "out must have dtype float32, got float64"),
    (np.zeros((2, 5), np.float32), ValueError, r"out has shape \(2, 5\), expected \(2, 4\)"),
    (np.zeros(8, np.float32), ValueError, r"out has shape \(8,\), expected \(2, 4\)"),
    (np.zeros((4, 2), np.float32).T, ValueError, "out must be C-contiguous"),
    (np.frombuffer(bytearray(40), np.float32, 8, 2).reshape(2, 4), ValueError, "aligned"),
    (np.frombuffer(bytes(32), np.float32).reshape(2, 4), ValueError, "out is read-only"),
]


@pytest.mark.parametrize(("out", "exc", "match"), _BAD_OUT)
def test_bad_out_buffers_are_rejected_identically(cpp, out, exc, match):
    waves = [np.ones(6, np.float32), np.ones(3, np.int16)]
    _same_error(
        lambda: cpp.repeat_pad(waves, 4, np.array([1, 0]), False, out, 1),
        lambda: numpy_backend.repeat_pad(waves, 4, np.array([1, 0]), False, out, 1),
        exc,
        match,
    )
    longer = [np.ones(4, np.float32), np.ones(3, np.int16)]
    _same_error(
        lambda: cpp.pad_collate(longer, 2, False, out, 1),
        lambda: numpy_backend.pad_collate(longer, 2, False, out, 1),
        exc,
        match,
    )


def test_out_sharing_memory_with_an_input_is_rejected(cpp):
    out = np.zeros((2, 10), np.float32)
    waves = [np.ones(10, np.float32), out[1, 2:7]]
    _same_error(
        lambda: cpp.repeat_pad(waves, 10, np.zeros(2, np.int64), False, out, 1),
        lambda: numpy_backend.repeat_pad(waves, 10, np.zeros(2, np.int64), False, out, 1),
        ValueError,
        r"waves\[1\]: shares memory with out",
    )


def test_pad_collate_rejects_bad_input_identically(cpp):
    cases = [
        ([_F], 0, ValueError, "multiple_of must be positive, got 0"),
        ((), 4, ValueError, "waves is empty"),
        ([_F, "wave"], 4, TypeError, r"waves\[1\]: expected a 1-D numpy array .* got str"),
        ([_F, np.array([1, np.nan], np.float32)], 1, ValueError, r"waves\[1\]: sample 1 is nan"),
        ([_F], 2**62, ValueError, r"an output of shape \(1, 4611686018427387904\) is too large"),
    ]
    for waves, multiple_of, exc, match in cases:
        for normalize in (False, True):
            _same_error(
                lambda w=waves, m=multiple_of, n=normalize: cpp.pad_collate(w, m, n, None, 1),
                lambda w=waves, m=multiple_of, n=normalize: numpy_backend.pad_collate(
                    w, m, n, None, 1
                ),
                exc,
                match,
            )
    _same_error(
        lambda: cpp.repeat_pad([_F], 4, np.zeros(1, np.int64), False, None, -1),
        lambda: numpy_backend.repeat_pad([_F], 4, np.zeros(1, np.int64), False, None, -1),
        ValueError,
        "num_threads must be >= 0",
    )


def test_validation_happens_before_any_write(cpp):
    out = np.full((3, 4), 5.0, np.float32)
    waves = [np.ones(9, np.float32), np.ones(4, np.int16), np.ones(2, np.float64)]
    for backend in (cpp, numpy_backend):
        with pytest.raises(TypeError, match=r"waves\[2\]"):
            backend.repeat_pad(waves, 4, np.zeros(3, np.int64), False, out, 2)
        with pytest.raises(ValueError, match=r"waves\[0\]: offset 6"):
            backend.repeat_pad(waves[:2] + [_F], 4, np.array([6, 0, 0]), False, out, 2)
        assert (out == 5.0).all()
    nan_last = [np.ones(9, np.float32), np.ones(4, np.int16), np.array([1, np.nan], np.float32)]
    with pytest.raises(ValueError, match=r"waves\[2\]: sample 1 is nan"):
        cpp.repeat_pad(nan_last, 4, np.zeros(3, np.int64), True, out, 2)
    assert (out == 5.0).all()  # normalisation checks every row before writing


def test_nan_outside_the_crop_is_not_read(cpp):
    w = np.arange(20, dtype=np.float32)
    w[0] = np.nan
    for backend in (cpp, numpy_backend):
        row = backend.repeat_pad([w], 10, np.array([5]), False, None, 1)
        np.testing.assert_array_equal(row[0], np.arange(5, 15))


def test_wrapper_argument_errors():
    waves = [np.ones(10, np.float32)]
    with pytest.raises(TypeError, match="length must be an integer, got float"):
        batching.repeat_pad(waves, 4.0)
    with pytest.raises(ValueError, match="length is out of range"):
        batching.repeat_pad(waves, 2**70)
    with pytest.raises(ValueError, match="offsets must be 'start', 'random' or integers"):
        batching.repeat_pad(waves, 4, "middle")
    with pytest.raises(TypeError, match="offsets must be integers, got dtype float64"):
        batching.repeat_pad(waves, 4, [0.5])
    with pytest.raises(ValueError, match="num_threads must be >= 1"):
        batching.repeat_pad(waves, 4, num_threads=0)
    with pytest.raises(TypeError, match="out must have dtype float32, got torch.float64"):
        batching.repeat_pad(waves, 4, out=torch.zeros(1, 4, dtype=torch.float64))
    with pytest.raises(ValueError, match="out must not require grad"):
        batching.repeat_pad(waves, 4, out=torch.zeros(1, 4, requires_grad=True))
    with pytest.raises(TypeError, match=r"waves\[0\]: dtype torch.bfloat16 is not supported"):
        batching.repeat_pad([torch.zeros(4, dtype=torch.bfloat16)], 4)
    with pytest.raises(TypeError, match="waves must be a list or tuple"):
        batching.repeat_pad(5, 4)
    with pytest.raises(ValueError, match=r"waves\[0\]: offset 7 is out of range"):
        batching.repeat_pad(waves, 4, np.array([7], dtype=np.uint8))
