"""The batched decode behind WhisperEngine's cross-request batching (the queue that gathers the
jobs is engines/batch_queue.py): short jobs that waited for the model together are decoded together.

Why: Whisper's decoder writes one token at a time, and for one short clip that step is a small
matrix product that leaves most of the device idle, so eight clips decoded as one batch cost far
less than eight decodes (the encoder gains less: one window is already a large product). Jobs of
a model queue anyway while a decode runs, so the jobs that gather during one decode make the next
batch: the wait turns into shared work. No timer holds a job back: a job that finds the model
free runs at once, alone (`batch_wait_ms` may trade a little latency for fuller batches).

Which jobs: audio of at most one Whisper window (30 s), not streamed; a stream wants its segments
as they come, and longer audio has its own batched pipeline. Jobs share a call when the call
itself is the same for them: task, beam size, prompt and word timestamps; and the language,
which a job without one only has once its audio is encoded. So a batch is encoded once, the
languages it lacks are read from that same encoder output (detection costs no second encode, as
it does in faster-whisper's own transcribe), and the jobs are decoded in one call per language.
A batch that splits by language encodes each part again (CTranslate2 offers no way to take rows
out of an encoder output on the device): the price of mixed languages arriving together. The
voice activity filter and the temperature schedule act per job, before and after the call, so
they do not split batches.

What a job gets: the batched call decodes each window once at temperature 0, as faster-whisper's
sequential decoder does first, and splits it into segments the same way; when that window ends
cleanly the result is the sequential decoder's. Where the sequential decoder would decode again
(the window's text stops before the audio does, or with the temperature schedule the text fails
its checks: too repetitive, too improbable), the job gets None and goes to the sequential decoder
whole, so a job reads the same batched or not.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

import numpy as np

from engines.audio.decoding import SAMPLE_RATE
from engines.base import TranscriptionJob


@functools.cache
def transcribe_default(name: str) -> Any:
    """WhisperModel.transcribe's default for `name`: what the sequential decoder uses, since the
    engine leaves it unset."""
    from faster_whisper import WhisperModel

    return inspect.signature(WhisperModel.transcribe).parameters[name].default


class WindowJob:
    """A job of at most one window, with what the engine resolved for it."""

    def __init__(
        self, job: TranscriptionJob, samples: np.ndarray, *, beam_size: int, vad_filter: bool, may_fall_back: bool
    ) -> None:
        self.job = job
        self.samples = samples
        self.beam_size = beam_size
        self.vad_filter = vad_filter
        # With the temperature schedule, a window that fails its checks is decoded again.
        self.may_fall_back = may_fall_back

    @property
    def key(self) -> tuple[str, int, str | None, bool]:
        """What the decoder call takes: jobs with equal keys may share one (the language aside)."""
        return self.job.task.value, self.beam_size, self.job.prompt or None, self.job.word_timestamps


class WindowResult:
    """One job's transcript: faster-whisper Segments, times relative to the job's audio."""

    def __init__(self, language: str, language_probability: float, duration: float, segments: list[Any]) -> None:
        self.language = language
        self.language_probability = language_probability
        self.duration = duration
        self.segments = segments


class _Row:
    """One job's window, ready for the encoder: the speech alone when the job filters it."""

    def __init__(self, model: Any, job: WindowJob) -> None:
        from faster_whisper.audio import pad_or_trim
        from faster_whisper.vad import VadOptions, collect_chunks, get_speech_timestamps

        self.job = job
        audio = job.samples
        self.speech: list[dict[str, int]] | None = None
        if job.vad_filter:
            self.speech = get_speech_timestamps(audio, VadOptions())
            audio = np.concatenate(collect_chunks(audio, self.speech)[0])
        features = model.feature_extractor(audio)
        self.frames = features.shape[-1] - 1  # the last frame is past the end of the audio
        self.features = pad_or_trim(features[:, : self.frames])


def decode_windows(model: Any, jobs: list[WindowJob], on_call: Callable[[int], None]) -> list[WindowResult | None]:
    """Jobs with one key, each within one window, decoded in one call per language. `model` is a
    faster-whisper WhisperModel; `on_call` hears the size of each decoder call."""
    rows = [_Row(model, job) for job in jobs]
    encoded = model.encode(np.stack([row.features for row in rows]))
    languages = _languages(model, rows, encoded)
    by_language: dict[str, list[int]] = {}
    for index, (language, _) in enumerate(languages):
        by_language.setdefault(language, []).append(index)
    results: list[WindowResult | None] = [None] * len(rows)
    for language, indices in by_language.items():
        part = [rows[i] for i in indices]
        whole = len(part) == len(rows)
        part_encoded = encoded if whole else model.encode(np.stack([row.features for row in part]))
        on_call(len(part))
        for index, segments in zip(indices, _decode(model, part, part_encoded, language), strict=True):
            if segments is not None:
                duration = len(rows[index].job.samples) / SAMPLE_RATE
                results[index] = WindowResult(language, languages[index][1], duration, segments)
    return results


def _languages(model: Any, rows: list[_Row], encoded: Any) -> list[tuple[str, float]]:
    """(language, probability) per row: the job's own, or the most likely one for its window."""
    if not model.model.is_multilingual:
        return [("en", 1.0)] * len(rows)
    detected = None
    if any(row.job.job.language is None for row in rows):
        detected = model.model.detect_language(encoded)
    languages = []
    for index, row in enumerate(rows):
        if row.job.job.language is not None:
            languages.append((row.job.job.language, 1.0))
        else:
            assert detected is not None
            token, probability = detected[index][0]
            languages.append((token[2:-2], float(probability)))  # "<|en|>" -> "en"
    return languages


def _decode(model: Any, rows: list[_Row], encoded: Any, language: str) -> list[list[Any] | None]:
    from faster_whisper.tokenizer import Tokenizer
    from faster_whisper.transcribe import get_suppressed_tokens

    task, beam_size, prompt, word_timestamps = rows[0].job.key
    tokenizer = Tokenizer(model.hf_tokenizer, model.model.is_multilingual, task=task, language=language)
    # The sequential decoder's first window: the prompt as previous text, timestamps on.
    previous = tokenizer.encode(" " + prompt.strip()) if prompt else []
    prompt_tokens = model.get_prompt(tokenizer, previous, without_timestamps=False)
    outputs = model.model.generate(
        encoded,
        [list(prompt_tokens) for _ in rows],
        beam_size=beam_size,
        patience=transcribe_default("patience"),
        length_penalty=transcribe_default("length_penalty"),
        repetition_penalty=transcribe_default("repetition_penalty"),
        no_repeat_ngram_size=transcribe_default("no_repeat_ngram_size"),
        max_length=model.max_length,
        return_scores=True,
        return_no_speech_prob=True,
        suppress_blank=transcribe_default("suppress_blank"),
        suppress_tokens=get_suppressed_tokens(tokenizer, list(transcribe_default("suppress_tokens"))),
    )
    windows = [_window(model, tokenizer, row, output) for row, output in zip(rows, outputs, strict=True)]
    if word_timestamps:
        _add_words(model, tokenizer, encoded, rows, windows)
    return [_segments(tokenizer, row, window) for row, window in zip(rows, windows, strict=True)]


class _Window:
    """One row's decoder output, judged as the sequential decoder judges a window."""

    def __init__(self, avg_logprob: float, compression_ratio: float, no_speech_prob: float) -> None:
        self.avg_logprob = avg_logprob
        self.compression_ratio = compression_ratio
        self.no_speech_prob = no_speech_prob
        self.pieces: list[dict[str, Any]] = []  # _split_segments_by_timestamps' segments
        self.redo = False  # the sequential decoder would decode (part of) it again


def _window(model: Any, tokenizer: Any, row: _Row, output: Any) -> _Window:
    from faster_whisper.transcribe import get_compression_ratio

    tokens = list(output.sequences_ids[0])
    length_penalty = transcribe_default("length_penalty")
    avg_logprob = output.scores[0] * len(tokens) ** length_penalty / (len(tokens) + 1)
    compression_ratio = get_compression_ratio(tokenizer.decode(tokens).strip())
    window = _Window(avg_logprob, compression_ratio, output.no_speech_prob)
    log_prob_threshold = transcribe_default("log_prob_threshold")
    silent = output.no_speech_prob > transcribe_default("no_speech_threshold") and avg_logprob < log_prob_threshold
    if silent or row.frames == 0:
        return window  # no segments, as the sequential decoder skips such a window
    failed = compression_ratio > transcribe_default("compression_ratio_threshold") or avg_logprob < log_prob_threshold
    pieces, _, single_timestamp_ending = model._split_segments_by_timestamps(
        tokenizer=tokenizer,
        tokens=tokens,
        time_offset=0.0,
        segment_size=row.frames,
        segment_duration=row.frames * model.feature_extractor.time_per_frame,
        seek=0,
    )
    window.redo = (failed and row.job.may_fall_back) or not single_timestamp_ending
    window.pieces = [] if window.redo else pieces
    return window


class _OneAlignment:
    """Stands in for the model in WhisperModel.add_word_timestamps, handing it one row's alignment.
    The alignment is computed for the whole batch at once; the word timing rules after it carry a
    "last speech" time from segment to segment, which must start afresh for each job."""

    def __init__(self, model: Any, alignment: list[dict[str, Any]]) -> None:
        self.frames_per_second = model.frames_per_second
        self._alignment = alignment

    def find_alignment(self, *_: Any) -> list[list[dict[str, Any]]]:
        return [self._alignment]


def _add_words(model: Any, tokenizer: Any, encoded: Any, rows: list[_Row], windows: list[_Window]) -> None:
    from faster_whisper import WhisperModel

    # Text tokens per row as add_word_timestamps gathers them (every row: the call is batched).
    text_tokens = [[t for piece in w.pieces for t in piece["tokens"] if t < tokenizer.eot] for w in windows]
    alignments = model.find_alignment(tokenizer, text_tokens, encoded, [row.frames for row in rows])
    for row, window, alignment in zip(rows, windows, alignments, strict=True):
        if window.pieces:
            WhisperModel.add_word_timestamps(
                _OneAlignment(model, alignment),
                [window.pieces],
                tokenizer,
                encoded,
                row.frames,
                transcribe_default("prepend_punctuations"),
                transcribe_default("append_punctuations"),
                0.0,
            )


def _segments(tokenizer: Any, row: _Row, window: _Window) -> list[Any] | None:
    """faster-whisper Segments, as the sequential decoder yields them; None: decode it again."""
    from faster_whisper.transcribe import Segment, Word, restore_speech_timestamps

    if window.redo:
        return None
    segments: list[Any] = []
    for piece in window.pieces:
        text = tokenizer.decode(piece["tokens"])
        if piece["start"] == piece["end"] or not text.strip():
            continue
        segments.append(
            Segment(
                id=len(segments) + 1,
                seek=0,
                start=piece["start"],
                end=piece["end"],
                text=text,
                tokens=piece["tokens"],
                avg_logprob=window.avg_logprob,
                compression_ratio=window.compression_ratio,
                no_speech_prob=window.no_speech_prob,
                words=[Word(**word) for word in piece["words"]] if row.job.job.word_timestamps else None,
                temperature=0.0,
            )
        )
    if row.speech is not None:  # times in the speech alone -> times in the job's audio
        segments = list(restore_speech_timestamps(segments, row.speech, SAMPLE_RATE))
    return segments
