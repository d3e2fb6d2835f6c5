"""The built-in unlabeled corpus: multi-speaker speech-like audio generated on the fly.

It is what ``cpc-fast pretrain`` trains on when no ``--data`` is given, so pre-training,
tests and the demo run anywhere without downloads. Item ``i`` belongs to speaker
``i // utterances_per_speaker``; its length, mild neutral prosody variation and samples all
derive from ``(seed, speaker, utterance)``, so every index is reproducible in any worker, in
any order. Speakers alternate female/male, with voices from
:func:`cpc_fast.data.speech_synth.voice_for_speaker`.

Usage::

    corpus = SyntheticSpeechCorpus(num_speakers=24, utterances_per_speaker=60, seconds=(4, 14))
    wave = corpus[0]  # (n,) float32 at 16 kHz
    held_out = corpus.held_out(2)  # 2 other utterances of each same speaker
"""

from __future__ import annotations

import hashlib

import numpy as np
from torch.utils.data import Dataset

from cpc_fast.data.speech_synth import SAMPLE_RATE, Prosody, Voice, synthesize, voice_for_speaker
from cpc_fast.errors import UserInputError

# Generated items are kept while their total stays under this: a small corpus (the tiny
# preset's, the demo's) is synthesised once instead of once per epoch; a large one is
# regenerated as needed.
MEMO_BYTES = 256 << 20


class SyntheticSpeechCorpus(Dataset):
    """``num_speakers * utterances_per_speaker`` utterances of ``seconds=(min, max)`` s.

    Attributes:
        speakers: the speaker ids ("synth-000", ...), index order.
        voices: their :class:`~cpc_fast.data.speech_synth.Voice`.
        skipped: always empty (nothing here can be bad); present for the run summary.
        description: one line saying what this is (recorded in config.json).
    """

    def __init__(
        self,
        num_speakers: int = 24,
        utterances_per_speaker: int = 60,
        seconds: tuple[float, float] = (4.0, 14.0),
        seed: int = 0,
        *,
        first_utterance: int = 0,
        sample_rate: int = SAMPLE_RATE,
    ) -> None:
        if num_speakers < 1 or utterances_per_speaker < 0:
            raise UserInputError(
                "a synthetic corpus needs at least 1 speaker and 0 or more utterances each, "
                f"got {num_speakers} and {utterances_per_speaker}"
            )
        low, high = (float(s) for s in seconds)
        if not 0 < low <= high:
            raise UserInputError(f"seconds must be (min, max) with 0 < min <= max, got {seconds}")
        self.num_speakers = num_speakers
        self.utterances_per_speaker = utterances_per_speaker
        self.seconds = (low, high)
        self.seed = seed
        self.first_utterance = first_utterance
        self.sample_rate = sample_rate
        self.speakers = [f"synth-{i:03d}" for i in range(num_speakers)]
        self.voices: list[Voice] = [
            voice_for_speaker(s, seed, gender="female" if i % 2 else "male")
            for i, s in enumerate(self.speakers)
        ]
        self.skipped: list = []
        self._memo: dict[int, np.ndarray] = {}
        self._memo_bytes = 0
        self.description = (
            f"synthetic {num_speakers} speakers x {utterances_per_speaker} utterances of "
            f"{low:g}-{high:g} s (seed {seed}, first utterance {first_utterance})"
        )

    def __len__(self) -> int:
        return self.num_speakers * self.utterances_per_speaker

    def fingerprint(self) -> str:
        """A digest of what defines every item (its size, seed and rate): the same
        fingerprint means the same audio."""
        key = f"{self.description}\n{self.sample_rate}\n"
        return hashlib.sha256(key.encode()).hexdigest()

    def speaker_of(self, index: int) -> str:
        """The speaker id of item ``index``."""
        return self.speakers[self._locate(index)[0]]

    def utterance_id(self, index: int) -> str:
        speaker, utterance = self._locate(index)
        return f"{self.speakers[speaker]}-{utterance:05d}"

    def _locate(self, index: int) -> tuple[int, int]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} utterances")
        index %= len(self)
        speaker, j = divmod(index, self.utterances_per_speaker)
        return speaker, self.first_utterance + j

    def _rng(self, index: int) -> np.random.Generator:
        speaker, utterance = self._locate(index)
        return np.random.default_rng([self.seed, speaker, utterance])

    def duration(self, index: int) -> float:
        """Length of item ``index`` in seconds (without generating it)."""
        return self._draw_duration(self._rng(index))

    def _draw_duration(self, rng: np.random.Generator) -> float:
        return float(rng.uniform(*self.seconds))

    def __getitem__(self, index: int) -> np.ndarray:
        self._locate(index)  # range check
        key = index % len(self)
        wave = self._memo.get(key)
        if wave is None:
            wave = self._generate(key)
            if self._memo_bytes + wave.nbytes <= MEMO_BYTES:
                self._memo[key] = wave
                self._memo_bytes += wave.nbytes
        return wave

    def _generate(self, index: int) -> np.ndarray:
        rng = self._rng(index)
        duration = self._draw_duration(rng)
        # Mild neutral variation: no two utterances of a speaker share the exact prosody.
        prosody = Prosody(
            rate=float(rng.uniform(0.85, 1.15)),
            loudness_db=float(rng.uniform(-4.0, 4.0)),
            pitch_shift_semitones=float(rng.uniform(-1.0, 1.0)),
            pitch_range=float(rng.uniform(0.7, 1.3)),
            spectral_tilt_db_per_octave=float(rng.uniform(-1.0, 1.0)),
        )
        voice = self.voices[self._locate(index)[0]]
        return synthesize(duration, voice, prosody, rng=rng, sample_rate=self.sample_rate)

    def held_out(self, utterances_per_speaker: int) -> SyntheticSpeechCorpus:
        """Other utterances of the same speakers (e.g. for validation): they follow this
        corpus's utterance numbers, so no item of the two corpora coincides."""
        return SyntheticSpeechCorpus(
            self.num_speakers,
            utterances_per_speaker,
            self.seconds,
            self.seed,
            first_utterance=self.first_utterance + self.utterances_per_speaker,
            sample_rate=self.sample_rate,
        )


__all__ = ["SyntheticSpeechCorpus"]
