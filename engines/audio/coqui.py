"""CoquiSpeechEngine: Coqui TTS models (VITS, multi-speaker VITS, XTTS) behind the SpeechEngine protocol.

A model is a local folder holding Coqui's `config.json` and the weights: `model.pth` (or the file
named by `options.checkpoint`) for VITS; for XTTS, the folder as Coqui ships it (`model.pth`,
`vocab.json`, `speakers_xtts.pth`). `spec.path` may also name the weights file itself.

Options (all optional):

- `voices`: request voice names (OpenAI's `alloy`... and Novita's `Emily`...) mapped to the model's
  speakers. A target ending in `.wav` is a reference clip for voice cloning (XTTS), relative to the
  folder. Without it, `STANDARD_VOICES` are dealt out to the model's speakers in turn. A model's
  own speaker names are always accepted as they are.
- `languages`: request language codes mapped to the model's language names. Without it a code
  matches a model language equal to it, ignoring case ("zh-CN" -> "zh-cn"), or equal to its
  primary subtag ("en-US" -> "en").

Synthesis is seconds of CPU-bound work per long text: each sentence runs off the event loop, on
the engine's own worker thread, under a lock per model (a Coqui model keeps per-call state such as
VITS' length scale). One thread rather than whichever thread of a shared pool is free: torch's
OpenMP keeps a team of threads per calling thread, and sentences spread over several threads
each wake and contend with their own team. Sentences are synthesized one at a time as the caller pulls them, so a
response can stream while later sentences are still being spoken, and a caller that goes away
stops the work at the next sentence.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import gc
import logging
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, TypeVar

from engines.base import ModelSpec, SpeechAudio, SpeechJob
from engines.registry import CatalogError

log = logging.getLogger("omniserve.engines.coqui")

OPENAI_VOICES = ("alloy", "ash", "ballad", "coral", "echo", "fable", "onyx", "nova", "sage", "shimmer", "verse")
NOVITA_VOICES = ("Emily", "James", "Olivia", "Michael", "Sarah", "John")
STANDARD_VOICES = OPENAI_VOICES + NOVITA_VOICES
# Coqui's own pause between sentences (TTS.utils.synthesizer.PAD_SILENCE_SAMPLES), in samples.
SENTENCE_PAUSE_SAMPLES = 10000
_CHECKPOINT_NAMES = ("model.pth", "model_file.pth", "best_model.pth", "checkpoint.pth")
_WARMUP_TEXT = "Hello."
_T = TypeVar("_T")


def _primary(code: str) -> str:
    return code.replace("_", "-").split("-", 1)[0].lower()


class CoquiSpeechEngine:
    def __init__(self, spec: ModelSpec, *, device: str = "cpu") -> None:
        self.spec = spec
        self.device = device
        self._lock = threading.Lock()
        self._worker: concurrent.futures.ThreadPoolExecutor | None = None
        self._model: Any = None
        self._sample_rate = 0
        self._trim_silence = False
        self._length_scale = 1.0
        self._xtts = False  # XTTS takes speed as an argument; VITS through its length scale
        self._speakers: list[str] = []
        self._voices: dict[str, str | None] = {}  # request name -> speaker or reference clip; None: the only voice
        self._languages: list[str] = []
        self._language_map: dict[str, str] = {}
        self._segmenters: dict[str, Any] = {}

    # -- lifecycle ------------------------------------------------------------------------------

    async def _on_worker(self, function: Callable[..., _T], *args: Any) -> _T:
        """`function(*args)` on the engine's worker thread, started on first use."""
        if self._worker is None:
            self._worker = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix=f"coqui-{self.spec.name}")
        return await asyncio.get_running_loop().run_in_executor(self._worker, function, *args)

    async def load(self) -> None:
        if self._model is None:
            await self._on_worker(self._load)

    def _load(self) -> None:
        from TTS.config import load_config
        from TTS.tts.models import setup_model

        path = Path(self.spec.path)
        folder = path if path.is_dir() else path.parent
        log.info("loading speech model %s with Coqui TTS", self.spec.name)
        config = load_config(str(folder / "config.json"))
        model = setup_model(config)
        self._xtts = config.model.lower() == "xtts"
        if self._xtts:
            model.load_checkpoint(config, checkpoint_dir=str(folder), eval=True)
        else:
            model.load_checkpoint(config, checkpoint_path=str(self._checkpoint(path)), eval=True)
        model.to(self.device)
        audio = config.audio
        self._sample_rate = int(audio.get("output_sample_rate") or audio["sample_rate"])
        self._trim_silence = bool(audio.get("do_trim_silence")) and hasattr(model, "ap")
        self._length_scale = float(getattr(model, "length_scale", 1.0))
        self._speakers = _speaker_names(model)
        self._languages = _language_names(model, config)
        self._voices = self._voice_map(folder)
        self._language_map = self._language_options()
        self._model = model
        self._speak(_WARMUP_TEXT, self._voices[next(iter(self._voices))], self._languages[0], 1.0, 0)

    def _checkpoint(self, path: Path) -> Path:
        if path.is_file():
            return path
        name = self.spec.options.get("checkpoint")
        candidates = [path / name] if name else [path / candidate for candidate in _CHECKPOINT_NAMES]
        for candidate in candidates:
            if candidate.is_file():
                return candidate
        raise CatalogError(f"model {self.spec.name}: no checkpoint ({', '.join(c.name for c in candidates)})")

    def _voice_map(self, folder: Path) -> dict[str, str | None]:
        configured = self.spec.options.get("voices")
        if configured is None:
            names: list[str | None] = list(self._speakers) or [None]
            voices = {voice: names[i % len(names)] for i, voice in enumerate(STANDARD_VOICES)}
        elif isinstance(configured, dict):
            voices = {}
            for voice, target in configured.items():
                if isinstance(target, str) and target.endswith(".wav"):
                    clip = folder / target
                    if not clip.is_file():
                        raise CatalogError(f"model {self.spec.name}: voice {voice!r}: no clip {target!r}")
                    voices[voice] = str(clip)
                elif not target and not self._speakers:  # "": the one voice of a single-speaker model
                    voices[voice] = None
                elif target in self._speakers:
                    voices[voice] = target
                else:
                    raise CatalogError(f"model {self.spec.name}: voice {voice!r} maps to unknown speaker {target!r}")
        else:
            raise CatalogError(f"model {self.spec.name}: options.voices must map voice names to speakers")
        return {**voices, **{speaker: speaker for speaker in self._speakers}}

    def _language_options(self) -> dict[str, str]:
        configured = self.spec.options.get("languages", {})
        if not isinstance(configured, dict) or any(target not in self._languages for target in configured.values()):
            raise CatalogError(
                f"model {self.spec.name}: options.languages must map codes to the model's languages {self._languages}"
            )
        return {code.lower(): target for code, target in configured.items()}

    async def unload(self) -> None:
        self._model = None
        self._segmenters.clear()
        if self._worker is not None:
            self._worker.shutdown(wait=False)  # a sentence still running finishes on its own
            self._worker = None
        gc.collect()  # Coqui models hold reference cycles; free the weights now
        if self.device.startswith("cuda"):
            import torch

            torch.cuda.empty_cache()

    def memory_bytes(self) -> int:
        if self._model is None:
            return self.spec.memory_bytes
        return sum(t.numel() * t.element_size() for t in [*self._model.parameters(), *self._model.buffers()])

    async def health(self) -> bool:
        return self._model is not None

    # -- what a request may ask for -------------------------------------------------------------

    @property
    def sample_rate(self) -> int:
        return self._sample_rate

    def voices(self) -> list[str]:
        return sorted(self._voices)

    def languages(self) -> list[str]:
        return list(self._languages)

    def _model_language(self, code: str | None) -> str | None:
        if code is None:
            return self._languages[0]
        if self._language_map:
            return self._language_map.get(code.lower())
        by_name = {language.lower(): language for language in self._languages}
        return by_name.get(code.lower().replace("_", "-")) or by_name.get(_primary(code))

    def accepts_language(self, language: str) -> bool:
        return self._model_language(language) is not None

    def can_speak(self, text: str, language: str | None = None) -> bool:
        tokenizer = getattr(self._model, "tokenizer", None)
        if not text.strip():
            return False
        if tokenizer is None or not hasattr(tokenizer, "characters"):
            return True  # XTTS' BPE tokenizer has a token for any text
        characters = tokenizer.characters
        special = {getattr(characters, name, None) for name in ("pad", "blank", "bos", "eos")}
        speakable = set(characters.vocab) - special
        return any(char in speakable for char in text.lower()) or any(char in speakable for char in text)

    # -- synthesis ------------------------------------------------------------------------------

    def _check(self, job: SpeechJob) -> tuple[str | None, str]:
        if self._model is None:
            raise RuntimeError(f"model {self.spec.name} is not loaded")
        if job.voice not in self._voices:
            raise ValueError(f"unknown voice {job.voice!r}")
        language = self._model_language(job.language)
        if language is None:
            raise ValueError(f"unsupported language {job.language!r}")
        if not job.speed > 0:
            raise ValueError("speed must be positive")
        return self._voices[job.voice], language

    def _sentences(self, text: str, language: str) -> list[str]:
        import pysbd

        code = _primary(language)
        code = code if code in pysbd.languages.LANGUAGE_CODES else "en"
        segmenter = self._segmenters.get(code)
        if segmenter is None:
            segmenter = self._segmenters[code] = pysbd.Segmenter(language=code, clean=True)
        return [sentence.strip() for sentence in segmenter.segment(text) if sentence.strip()]

    async def stream(self, job: SpeechJob) -> AsyncIterator[SpeechAudio]:
        import numpy as np

        voice, language = self._check(job)
        sentences = await self._on_worker(self._sentences, job.text, language)
        spoken = [s for s in sentences if self.can_speak(s, language)]
        for index, sentence in enumerate(spoken):
            samples = await self._on_worker(self._speak, sentence, voice, language, job.speed, job.seed)
            if index < len(spoken) - 1:
                samples = np.concatenate([samples, np.zeros(SENTENCE_PAUSE_SAMPLES, dtype=np.float32)])
            yield SpeechAudio(samples=samples, sample_rate=self._sample_rate, text=sentence)

    async def synthesize(self, job: SpeechJob) -> SpeechAudio:
        import numpy as np

        chunks = [chunk.samples async for chunk in self.stream(job)]
        samples = np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.float32)
        return SpeechAudio(samples=samples, sample_rate=self._sample_rate, text=job.text)

    def _speak(self, text: str, voice: str | None, language: str, speed: float, seed: int) -> Any:
        """One sentence as float32 samples. Blocking: runs on a worker thread."""
        import numpy as np
        import torch

        model = self._model
        clip = voice if voice is not None and voice.endswith(".wav") else None
        kwargs: dict[str, Any] = {"speaker": None if clip else voice, "speaker_wav": clip, "language": language}
        xtts = self._xtts
        if xtts:
            kwargs["speed"] = speed
        with self._lock, torch.inference_mode(), torch.random.fork_rng(devices=[]):
            # Seeded: VITS draws noise at inference, and the same request should sound the same.
            torch.manual_seed(seed)
            if not xtts:
                model.length_scale = self._length_scale / speed
            try:
                outputs = model.synthesize(text, use_griffin_lim=True, **kwargs)
            finally:
                if not xtts:
                    model.length_scale = self._length_scale
        wav = outputs["wav"]
        if isinstance(wav, torch.Tensor):
            wav = wav.detach().cpu().numpy()
        samples = np.asarray(wav, dtype=np.float32).squeeze()
        if self._trim_silence:
            samples = samples[: model.ap.find_endpoint(samples)]
        return samples


def _speaker_names(model: Any) -> list[str]:
    manager = getattr(model, "speaker_manager", None)
    if manager is None:
        return []
    names = getattr(manager, "speaker_names", None) or list(getattr(manager, "speakers", None) or [])
    return [str(name) for name in names]


def _language_names(model: Any, config: Any) -> list[str]:
    if config.get("languages"):  # XTTS lists its languages in the config
        return [str(language) for language in config["languages"]]
    manager = getattr(model, "language_manager", None)
    names = list(getattr(manager, "language_names", None) or [])
    return [str(name) for name in names] or [str(config.get("phoneme_language") or "en")]
