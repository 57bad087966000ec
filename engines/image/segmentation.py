"""SegmentationEngine on transformers: the foreground of an image as a soft alpha mask.

Two model families, chosen by the catalog entry:

- Semantic segmenters (the default): any folder that transformers' `AutoModelForSemanticSegmentation`
  loads (SegFormer, BEiT, DPT, MobileViT, UperNet ... with a semantic head). The mask is the softmax
  probability of the foreground classes, per pixel: `options.foreground_labels` names them (labels of
  the config's `id2label`); by default every class but one named "background". The input size, mean
  and std come from the folder's `preprocessor_config.json` (`size`, `image_mean`, `image_std`);
  the options below override them. The engine resizes and normalises itself: transformers' image
  processors for these models want torchvision, which this install does not have.
- Dichotomous / matting models that ship their own code (briaai/RMBG-1.4, ZhengPeng7/BiRefNet,
  briaai/RMBG-2.0), loaded by `AutoModelForImageSegmentation` with `options.trust_remote_code = true`.
  Running a model's own Python is the operator's explicit choice: without that option such a folder
  is refused at load. They have no image processor, so the entry states their input convention:
  `input_size` ([width, height], default [1024, 1024]), `mean` and `std` (default ImageNet's), which
  output tensor is the mask (`output_path`: indexes into the nested outputs, default [-1], BiRefNet's
  finest map; RMBG-1.4's is [0, 0]), whether it still needs a sigmoid (`output_activation`: "sigmoid",
  the default, or "none" for RMBG-1.4, which applies it itself) and whether it is stretched to the full
  0..1 range as RMBG-1.4's own post-processing does (`rescale_output`, default false).

Either way the mask is resized to the image's own size (bilinear), so it can be the image's alpha
channel as it is. Segmentation runs on a worker thread in the scheduler's device turns (the engine is
a DeviceSerialEngine), like the diffusers pipelines and the safety classifier.
"""

from __future__ import annotations

import functools
import json
import logging
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from engines.base import ModelSpec
from engines.image.devices import parameter_bytes, release_memory
from engines.registry import CatalogError
from engines.threads import run_cancellable
from engines.workpools import WorkPool, run_in

log = logging.getLogger("omniserve.engines.segmentation")

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DEFAULT_INPUT_SIZE = (1024, 1024)
ACTIVATIONS = ("sigmoid", "none")

Triple = tuple[float, float, float]


class _Cancelled(Exception):
    """The caller went away before the model ran."""


def _triple(name: str, key: str, value: Any) -> Triple:
    if not isinstance(value, Sequence) or len(value) != 3 or not all(isinstance(v, int | float) for v in value):
        raise CatalogError(f"model {name}: {key} must be three numbers (R, G, B)")
    if key.endswith("std") and any(v <= 0 for v in value):
        raise CatalogError(f"model {name}: {key} must be positive")
    return float(value[0]), float(value[1]), float(value[2])


def _size(name: str, key: str, value: Any) -> tuple[int, int]:
    if isinstance(value, Mapping) and {"height", "width"} <= value.keys():
        value = [value["width"], value["height"]]  # transformers' preprocessor_config.json spelling
    if not isinstance(value, Sequence) or len(value) != 2 or not all(isinstance(v, int) and v > 0 for v in value):
        raise CatalogError(f"model {name}: {key} must be [width, height], positive integers")
    return int(value[0]), int(value[1])


class InputConvention:
    """How the model wants its pixels: resized to ``size`` (width, height), scaled to 0..1,
    then normalised by ``mean`` and ``std``."""

    def __init__(self, name: str, options: Mapping[str, Any], defaults: Mapping[str, Any]) -> None:
        def pick(option: str, default_key: str, fallback: Any) -> tuple[str, Any]:
            if option in options:
                return f"options.{option}", options[option]
            if default_key in defaults:
                return f"preprocessor_config.json {default_key}", defaults[default_key]
            return option, fallback

        self.size = _size(name, *pick("input_size", "size", DEFAULT_INPUT_SIZE))
        self.mean = _triple(name, *pick("mean", "image_mean", IMAGENET_MEAN))
        self.std = _triple(name, *pick("std", "image_std", IMAGENET_STD))

    def pixels(self, rgb: Any) -> Any:
        """A (1, 3, height, width) float tensor of ``rgb`` (PIL)."""
        import numpy as np
        import torch
        from PIL import Image

        resized = rgb.resize(self.size, Image.Resampling.BILINEAR)
        pixels = torch.from_numpy(np.asarray(resized, dtype=np.float32) / 255.0).permute(2, 0, 1)
        mean = torch.tensor(self.mean).view(3, 1, 1)
        std = torch.tensor(self.std).view(3, 1, 1)
        return ((pixels - mean) / std).unsqueeze(0)


class RemoteOutput:
    """Which of a custom-code model's outputs is the mask, and how to read it."""

    def __init__(self, spec: ModelSpec) -> None:
        path = spec.options.get("output_path", [-1])
        if not isinstance(path, list) or not all(isinstance(v, int) for v in path):
            raise CatalogError(f"model {spec.name}: options.output_path must be a list of integer indexes")
        self.path: list[int] = path
        activation = spec.options.get("output_activation", "sigmoid")
        if activation not in ACTIVATIONS:
            raise CatalogError(f"model {spec.name}: options.output_activation must be one of {ACTIVATIONS}")
        self.activation: str = activation
        self.rescale = bool(spec.options.get("rescale_output", False))

    def probabilities(self, name: str, output: Any) -> Any:
        """The (1, 1, h, w) foreground probabilities in the model's ``output``."""
        import torch

        for index in self.path:
            output = output[index]
        if not isinstance(output, torch.Tensor):
            raise RuntimeError(f"model {name}: options.output_path does not lead to a tensor")
        mask = output.float()
        while mask.dim() < 4:  # (h, w) or (1, h, w) -> (1, 1, h, w)
            mask = mask.unsqueeze(0)
        mask = mask[:1, :1]
        if self.activation == "sigmoid":
            mask = mask.sigmoid()
        if self.rescale:  # RMBG-1.4's post-processing: the map stretched to the full range
            low, high = mask.min(), mask.max()
            mask = (mask - low) / (high - low) if high > low else torch.zeros_like(mask)
        return mask


class TransformersSegmentationEngine:
    """One transformers segmentation model behind the SegmentationEngine protocol."""

    device_serial: Literal[True] = True  # one job at a time on the device (DeviceSerialEngine)

    def __init__(self, spec: ModelSpec, *, device: str = "cpu") -> None:
        self.spec = spec
        self.device = device
        options = spec.options
        trust = options.get("trust_remote_code", False)
        if not isinstance(trust, bool):
            raise CatalogError(f"model {spec.name}: options.trust_remote_code must be true or false")
        self.trust_remote_code = trust
        # Catalog mistakes fail at startup, not in the first request.
        self.remote_output = RemoteOutput(spec) if trust else None
        labels = options.get("foreground_labels")
        if labels is not None and (
            not isinstance(labels, list) or not labels or not all(isinstance(label, str) for label in labels)
        ):
            raise CatalogError(f"model {spec.name}: options.foreground_labels must be a non-empty list of labels")
        if labels is not None and trust:
            raise CatalogError(f"model {spec.name}: foreground_labels is for semantic segmenters, not remote code")
        self._foreground_labels: list[str] | None = labels
        if trust:
            InputConvention(spec.name, options, {})  # checked now; the same again at load
        self._foreground: list[int] = []
        self._inputs: InputConvention | None = None
        self._model: Any = None

    @property
    def loaded(self) -> bool:
        return self._model is not None

    async def load(self) -> None:
        if self._model is None:
            self._model, self._inputs, self._foreground = await run_in(WorkPool.ENGINE, self._load)

    def _load(self) -> tuple[Any, InputConvention, list[int]]:
        import torch

        log.info("loading segmentation model %s with transformers", self.spec.name)
        if self.trust_remote_code:
            from transformers import AutoModelForImageSegmentation

            model = AutoModelForImageSegmentation.from_pretrained(
                self.spec.path, trust_remote_code=True, dtype=torch.float32
            )
            return model.eval().to(self.device), InputConvention(self.spec.name, self.spec.options, {}), []
        from transformers import AutoModelForSemanticSegmentation

        try:
            # trust_remote_code=False outright: left unset, transformers would ask on stdin.
            model = AutoModelForSemanticSegmentation.from_pretrained(
                self.spec.path, trust_remote_code=False, dtype=torch.float32
            )
        except ValueError as exc:  # a custom-code folder, or a config of no semantic-segmentation class
            raise CatalogError(
                f"model {self.spec.name}: not a semantic-segmentation model transformers knows ({exc}); "
                "a model that ships its own code needs options.trust_remote_code = true"
            ) from None
        inputs = InputConvention(self.spec.name, self.spec.options, self._preprocessor_config())
        return model.eval().to(self.device), inputs, self._foreground_classes(model.config.id2label)

    def _preprocessor_config(self) -> dict[str, Any]:
        path = Path(self.spec.path, "preprocessor_config.json")
        if not path.is_file():
            return {}
        config = json.loads(path.read_text())
        return config if isinstance(config, dict) else {}

    def _foreground_classes(self, id2label: Mapping[int, str]) -> list[int]:
        by_label = {label: int(index) for index, label in id2label.items()}
        if self._foreground_labels is None:
            classes = [index for label, index in by_label.items() if label.lower() != "background"]
            if not classes or len(classes) == len(by_label):
                raise CatalogError(
                    f"model {self.spec.name}: no class is named 'background'; "
                    f"name the foreground classes in options.foreground_labels (labels: {sorted(by_label)})"
                )
            return sorted(classes)
        unknown = [label for label in self._foreground_labels if label not in by_label]
        if unknown:
            raise CatalogError(
                f"model {self.spec.name}: options.foreground_labels names {unknown}, "
                f"but the model's labels are {sorted(by_label)}"
            )
        return sorted(by_label[label] for label in self._foreground_labels)

    async def unload(self) -> None:
        self._model, self._inputs = None, None
        release_memory(self.device)

    def memory_bytes(self) -> int:
        if self._model is None:
            return self.spec.memory_bytes
        return parameter_bytes([self._model])

    async def health(self) -> bool:
        return self._model is not None

    async def segment(self, image: Any) -> Any:
        """The foreground of ``image`` (PIL) as an "L" mask of its size (255: foreground)."""
        if self._model is None or self._inputs is None:
            raise RuntimeError(f"model {self.spec.name} is not loaded")
        return await run_cancellable(functools.partial(self._run, self._inputs, image))

    def _run(self, inputs: InputConvention, image: Any, cancelled: threading.Event) -> Any:
        import torch

        rgb = image.convert("RGB")
        batch = inputs.pixels(rgb).to(self.device)
        if cancelled.is_set():
            raise _Cancelled
        with torch.inference_mode():
            output = self._model(batch) if self.remote_output is not None else self._model(pixel_values=batch)
            if self.remote_output is not None:
                probabilities = self.remote_output.probabilities(self.spec.name, output)
            else:
                classes = output.logits.float().softmax(dim=1)
                probabilities = classes[:, self._foreground].sum(dim=1, keepdim=True)
            # (1, 1, h, w) at the model's resolution -> the image's own size.
            resized = torch.nn.functional.interpolate(
                probabilities.float().cpu(), size=(rgb.height, rgb.width), mode="bilinear", align_corners=False
            )
        return _mask_image(resized[0, 0].clamp(0, 1))


def _mask_image(probabilities: Any) -> Any:
    """A (h, w) tensor of 0..1 as an "L" PIL image."""
    import torch
    from PIL import Image

    values = (probabilities * 255).round().to(dtype=torch.uint8).numpy()
    return Image.fromarray(values)  # 2-D uint8: mode "L"
