"""engines/audio/decoding.py on real files: the samples faster-whisper would read, and a duration
limit that holds against a container lying about its length."""

from __future__ import annotations

import io
import time
import tracemalloc

import numpy as np
import pytest

from engines.audio.decoding import SAMPLE_RATE, check_declared, declared_duration, decode_upload
from engines.errors import InvalidJob, JobProblem
from tests.audio_inputs import CONTAINERS, encode, lying_mp3, tone

DECLARED_S = 2.0
HELD_S = 180.0  # what the lying file holds: 11.5 MB of float32 samples once decoded
LIMIT_S = 5.0


@pytest.fixture(scope="module")
def lying() -> bytes:
    return lying_mp3(DECLARED_S, HELD_S)


@pytest.mark.parametrize("container", ["wav", *CONTAINERS])
def test_samples_are_faster_whispers(container: str) -> None:
    from faster_whisper import decode_audio

    source = tone(2.5, rate=22050)
    upload = source if container == "wav" else encode(source, container)
    ours = decode_upload(upload, max_duration_s=60)
    theirs = decode_audio(io.BytesIO(upload), sampling_rate=SAMPLE_RATE)
    assert ours.dtype == np.float32
    np.testing.assert_array_equal(ours, theirs)


def test_the_lying_file_declares_seconds_and_holds_minutes(lying: bytes) -> None:
    assert declared_duration(lying) == pytest.approx(DECLARED_S, abs=0.1)
    assert check_declared(lying, max_duration_s=LIMIT_S) == pytest.approx(DECLARED_S, abs=0.1)
    # Under a limit it meets, all of it is decoded: the buffer sized from the header grows, in
    # place, so memory never holds more than the limit's worth of samples.
    limit_s = HELD_S + 10
    tracemalloc.start()
    try:
        samples = decode_upload(lying, max_duration_s=limit_s)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(samples) / SAMPLE_RATE == pytest.approx(DECLARED_S + HELD_S, abs=0.2)
    assert samples.flags.owndata and samples.base is None
    assert peak < limit_s * SAMPLE_RATE * 4 + 1_000_000, peak


def test_a_lying_file_is_refused_at_the_limit_without_decoding_the_rest(lying: bytes) -> None:
    full_decode_bytes = int(HELD_S * SAMPLE_RATE) * 4
    tracemalloc.start()
    try:
        started = time.perf_counter()
        with pytest.raises(InvalidJob) as refused:
            decode_upload(lying, max_duration_s=LIMIT_S)
        elapsed = time.perf_counter() - started
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # The limit's worth of samples (320 kB) and the decoder's small change, not the whole file.
    assert peak < full_decode_bytes / 8, (peak, full_decode_bytes)
    assert elapsed < 5.0
    assert refused.value.problem is JobProblem.AUDIO_FILE and refused.value.field == "audio"
    assert f"more than {LIMIT_S:g} s" in str(refused.value)


def test_audio_exactly_at_the_limit_passes() -> None:
    assert len(decode_upload(tone(5.0), max_duration_s=5.0)) == 5 * SAMPLE_RATE
    with pytest.raises(InvalidJob, match=r"at most 4\.99 s"):
        decode_upload(tone(5.0), max_duration_s=4.99)


def test_a_container_that_admits_its_length_is_refused_from_its_header() -> None:
    with pytest.raises(InvalidJob, match=r"file is 3\.0 s long"):
        check_declared(tone(3.0), max_duration_s=2.0)
    with pytest.raises(InvalidJob, match=r"clip is 3\.0 s long"):
        decode_upload(tone(3.0), max_duration_s=2.0, label="clip")


@pytest.mark.parametrize(
    ("upload", "message"),
    [
        (b"", "file is empty."),
        (b"not audio at all " * 20, "not a readable audio file"),
        (tone(1.0)[:44], "holds no audio samples"),
    ],
)
def test_what_is_not_audio_is_an_audio_file_problem(upload: bytes, message: str) -> None:
    with pytest.raises(InvalidJob, match=message) as refused:
        decode_upload(upload, max_duration_s=60)
    assert refused.value.problem is JobProblem.AUDIO_FILE
