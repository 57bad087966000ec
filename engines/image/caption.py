"""CaptionerEngine: a transformers image-to-text model that describes an image (/v3 img2prompt).

Any folder that transformers' `AutoProcessor` and `AutoModelForImageTextToText` load works: BLIP
(Salesforce/blip-image-captioning-large, the catalog's usual choice), BLIP-2, GIT, and the
vision-language models with a chat template (SmolVLM, Qwen2-VL, ...). The caption is what the
model generates after its prompt, decoded without special tokens.

Catalog options:

- `prompt`: text the generation starts from, given to the processor with the image (BLIP's
  conditional captioning, e.g. "a picture of"); it is not part of the caption. Default: none.
- `instruction`: for a model whose processor has a chat template (a vision-language model),
  one user turn of the image and this text, rendered by that template ("Describe this image as
  a prompt for an image generator."). Default: none; `prompt` and `instruction` exclude each other.
- `max_new_tokens` (default 60), `min_new_tokens` (default 0), `num_beams` (default 1: greedy).

Generation runs on a worker thread in the scheduler's device turns (a DeviceSerialEngine), like
the safety classifier: the captioner competes with the image pipelines for the same device.
"""

from __future__ import annotations

import functools
import logging
import threading
from typing import Any, Literal

from engines.base import Caption, ModelSpec
from engines.image.devices import parameter_bytes, release_memory
from engines.registry import CatalogError
from engines.threads import run_cancellable
from engines.workpools import WorkPool, run_in

log = logging.getLogger("omniserve.engines.caption")

DEFAULT_MAX_NEW_TOKENS = 60
_INT_OPTIONS = {"max_new_tokens": DEFAULT_MAX_NEW_TOKENS, "min_new_tokens": 0, "num_beams": 1}


def generation_options(spec: ModelSpec) -> dict[str, int]:
    """The generate() arguments the catalog entry sets, checked (a mistake fails at startup)."""
    options = {}
    for name, default in _INT_OPTIONS.items():
        value = spec.options.get(name, default)
        if not isinstance(value, int) or isinstance(value, bool) or value < (1 if name != "min_new_tokens" else 0):
            raise CatalogError(f"model {spec.name}: options.{name} must be a positive whole number")
        options[name] = value
    if options["min_new_tokens"] > options["max_new_tokens"]:
        raise CatalogError(f"model {spec.name}: options.min_new_tokens is above options.max_new_tokens")
    for name in ("prompt", "instruction"):
        if not isinstance(spec.options.get(name, ""), str):
            raise CatalogError(f"model {spec.name}: options.{name} must be a string")
    if spec.options.get("prompt") and spec.options.get("instruction"):
        raise CatalogError(f"model {spec.name}: options.prompt and options.instruction exclude each other")
    return options


class CaptionerEngine:
    """One image-to-text model behind the CaptionEngine protocol."""

    device_serial: Literal[True] = True  # one job at a time on the device (DeviceSerialEngine)

    def __init__(self, spec: ModelSpec, *, device: str = "cpu") -> None:
        self.spec = spec
        self.device = device
        self.generation = generation_options(spec)
        self._model: Any = None
        self._processor: Any = None
        self._text: str | None = None  # the processor's text input, rendered once at load

    @property
    def loaded(self) -> bool:
        return self._model is not None

    async def load(self) -> None:
        if self._model is None:
            self._model, self._processor, self._text = await run_in(WorkPool.ENGINE, self._load)

    def _load(self) -> tuple[Any, Any, str | None]:
        import torch
        from transformers import AutoModelForImageTextToText, AutoProcessor

        log.info("loading captioner %s with transformers", self.spec.name)
        dtype = torch.float16 if self.device.startswith("cuda") else torch.float32
        processor = AutoProcessor.from_pretrained(self.spec.path)
        model = AutoModelForImageTextToText.from_pretrained(self.spec.path, dtype=dtype)
        instruction = self.spec.options.get("instruction")
        text: str | None = self.spec.options.get("prompt") or None
        if instruction:
            if not getattr(processor, "chat_template", None):
                message = "options.instruction needs a processor with a chat template"
                raise CatalogError(f"model {self.spec.name}: {message}")
            turn = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": instruction}]}]
            text = processor.apply_chat_template(turn, add_generation_prompt=True)
        return model.eval().to(self.device), processor, text

    async def unload(self) -> None:
        self._model, self._processor = None, None
        release_memory(self.device)

    def memory_bytes(self) -> int:
        if self._model is None:
            return self.spec.memory_bytes
        return parameter_bytes([self._model])

    async def health(self) -> bool:
        return self._model is not None

    async def caption(self, image: Any) -> Caption:
        if self._model is None:
            raise RuntimeError(f"model {self.spec.name} is not loaded")
        return await run_cancellable(functools.partial(self._run, image))

    def _run(self, image: Any, cancelled: threading.Event) -> Caption:
        import torch
        from transformers import StoppingCriteria, StoppingCriteriaList

        class _Stop(StoppingCriteria):
            # Checked after every token: a caller who left stops the generation there.
            def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
                return torch.full((input_ids.shape[0],), cancelled.is_set(), dtype=torch.bool)

        inputs = self._processor(images=image.convert("RGB"), text=self._text, return_tensors="pt")
        inputs = {name: value.to(self.device) for name, value in inputs.items()}
        if "pixel_values" in inputs:
            inputs["pixel_values"] = inputs["pixel_values"].to(self._model.dtype)
        with torch.inference_mode():
            output = self._model.generate(
                **inputs,
                **self.generation,
                stopping_criteria=StoppingCriteriaList([_Stop()]),
                return_dict_in_generate=True,
                output_scores=True,
            )
        # One score per generation step: the new tokens are the sequence's last that many, whatever
        # the model puts before them (BLIP its start token and prompt, a decoder-only VLM the whole prompt).
        steps = len(output.scores)
        new_tokens = output.sequences[0, output.sequences.shape[1] - steps :] if steps else output.sequences[0, :0]
        text = self._processor.decode(new_tokens, skip_special_tokens=True).strip()
        return Caption(text=text, generated_tokens=steps)
