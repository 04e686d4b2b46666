"""What a training run starts from, and how much of the new model it fills.

The transformers convention: the source (a converted or trained model folder, a Hub id, an original VisTR
`.pth`, or a config file) decides the architecture and the processor; a command-line option overrides one
field, and every override is reported. A DETR `.pth` (the authors' COCO pretraining) holds no VisTR
architecture: the options and the defaults describe the model, and the file fills what fits.

Loading copies every tensor whose name and shape fit, drops the class head when the data's classes are not
the source's, and reports what started fresh and why. A model that would mostly start from random values is
refused unless the caller allows it: that is the silent way to train a different model than the one asked for.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from pathlib import Path

import torch
from vistr.configuration_vistr import VisTRConfig, config_problems
from vistr.convert_checkpoint import (
    ConversionError,
    check_is_vistr,
    infer_config,
    initialization_weights,
    load_original_checkpoint,
)
from vistr.image_processing_vistr import VisTRVideoProcessor
from vistr.tools.model_loading import ModelWeightsError, load_checked_model
from vistr.tools.outputs import UsageError

# Config fields that describe the model (and its loss); everything else a saved config holds is bookkeeping.
# The backbone's own config is always derived from `backbone` and `dilation`.
ARCHITECTURE_FIELDS = tuple(name for name in VisTRConfig.__annotations__ if name != "backbone_config")
CLASS_HEAD = ("class_labels_classifier.weight", "class_labels_classifier.bias")
# More than this share of the model's weights starting from random values is refused unless allowed.
MOST_OF_THE_MODEL = 0.5


@dataclasses.dataclass
class ModelSource:
    """A starting point: `config` is None where the source holds no architecture (a DETR `.pth`), `processor`
    None where it holds no processor (original checkpoints, config files), `weights` empty for a config file."""

    name: str
    config: VisTRConfig | None
    processor: VisTRVideoProcessor | None = None
    weights: dict[str, torch.Tensor] = dataclasses.field(default_factory=dict)
    is_hub_model: bool = False


@dataclasses.dataclass
class LoadReport:
    """What `load_fitting_weights` copied, and why the rest started fresh."""

    loaded: int
    total: int
    fresh_fraction: float
    fresh: dict[str, str]
    unused: dict[str, str]

    def summary(self, source: str) -> str:
        return (f"--init-from {source}: loaded {self.loaded} of {self.total} tensors; "
                f"{self.fresh_fraction:.1%} of the weights start fresh")  # fmt: skip

    def details(self, shown: int = 8) -> list[str]:
        """One line per reason: how many tensors, and the first `shown` names."""
        lines = []
        for what, reasons in (("started fresh", self.fresh), ("not used", self.unused)):
            for reason in dict.fromkeys(reasons.values()):
                names = [name for name, why in reasons.items() if why == reason]
                more = f" and {len(names) - shown} more" if len(names) > shown else ""
                lines.append(f"{what}, {reason} ({len(names)}): {', '.join(names[:shown])}{more}")
        return lines


# ------------------------------------------------------------------------------------------------- reading


def read_model_source(source: str, num_frames: int | None = None) -> ModelSource:
    """A folder or Hub id (`from_pretrained`), or an original VisTR/DETR `.pth` (read as the converter reads
    it; `num_frames` is used only where the file does not record its frame count)."""
    path = Path(source)
    if path.is_file():
        return _read_original_checkpoint(path, num_frames)
    if path.is_dir() or _looks_like_hub_id(source):
        return _read_pretrained(source, is_hub_model=not path.is_dir())
    raise UsageError(f"--init-from {source}: no such file or folder; pass a model folder, a Hub id "
                     "(owner/name) or an original VisTR/DETR .pth")  # fmt: skip


def read_config_file(path: str | os.PathLike) -> VisTRConfig:
    """`--config config.json`: a VisTR config as `save_pretrained` writes it, or just the fields to change."""
    try:
        fields = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise UsageError(f"--config {path}: not a readable JSON file ({error})") from None
    if not isinstance(fields, dict):
        raise UsageError(f"--config {path}: must hold a JSON object of VisTRConfig fields")
    if fields.get("model_type", "vistr") != "vistr":
        raise UsageError(f"--config {path} describes a {fields['model_type']!r} model, not VisTR")
    unknown = sorted(set(fields) - set(ARCHITECTURE_FIELDS) - set(VisTRConfig().to_dict()))
    if unknown:
        raise UsageError(f"--config {path}: unknown fields {unknown}; see VisTRConfig for the ones that exist")
    return _config({name: value for name, value in fields.items() if name in ARCHITECTURE_FIELDS}, f"--config {path}")


def _looks_like_hub_id(source: str) -> bool:
    parts = source.split("/")
    return len(parts) <= 2 and all(parts) and not source.startswith((".", "~")) and not source.endswith(".pth")


def _read_original_checkpoint(path: Path, num_frames: int | None) -> ModelSource:
    try:
        state, stored_args = load_original_checkpoint(path)
        weights = initialization_weights(state, path)
    except ConversionError as error:
        raise UsageError(f"--init-from {error}") from None
    try:
        check_is_vistr(state, str(path))
    except ConversionError:  # a DETR file: backbone and transformer only, no VisTR architecture
        return ModelSource(name=path.name, config=None, weights=weights)
    frames = None if getattr(stored_args, "num_frames", None) is not None else num_frames
    try:
        config = infer_config(state, stored_args, str(path), num_frames=frames)
    except ConversionError as error:
        raise UsageError(f"--init-from {error}") from None
    return ModelSource(name=path.name, config=config, weights=weights)


def _read_pretrained(source: str, is_hub_model: bool) -> ModelSource:
    """The source's weights as stored: missing ones are left out (reported and bounded by `load_fitting_weights`
    and `check_mostly_loaded`); unexpected or reshaped tensors, non-float dtypes and non-finite values are refused,
    as for inference (`load_checked_model`)."""
    try:
        model, never_stored = load_checked_model(source, f"--init-from {source}", allow_missing=True)
    except ModelWeightsError as error:
        raise UsageError(str(error)) from None
    except (OSError, ValueError) as error:
        raise UsageError(f"--init-from {source}: not a VisTR model folder or a reachable Hub model "
                         f"({str(error).splitlines()[0] if str(error) else type(error).__name__})") from None  # fmt: skip
    # filled with random values by from_pretrained: not the source's
    weights = {name: tensor for name, tensor in model.state_dict().items() if name not in never_stored}
    return ModelSource(name=source, config=model.config, processor=_read_processor(source), weights=weights,
                       is_hub_model=is_hub_model)  # fmt: skip


def _read_processor(source: str) -> VisTRVideoProcessor | None:
    try:
        return VisTRVideoProcessor.from_pretrained(source)
    except OSError:  # a folder with weights and config only: the trainer's own processor serves
        return None


# ------------------------------------------------------------------------------------------------- the config


def build_config(
    base: VisTRConfig | None, overrides: Mapping[str, object], id2label: Mapping[int, str]
) -> tuple[VisTRConfig, list[str]]:
    """`base`'s architecture (the defaults where None) with `overrides` and the data's classes; also the list
    of fields the overrides changed from `base`, as `name: old -> new`. An impossible combination raises the
    config's own ValueError, which lists every problem in field names."""
    fields = {name: getattr(base, name) for name in ARCHITECTURE_FIELDS} if base is not None else {}
    changes = [f"{name}: {fields[name]!r} -> {value!r}" for name, value in overrides.items()
               if base is not None and fields[name] != value]  # fmt: skip
    return VisTRConfig(**{**fields, **overrides, "id2label": dict(id2label)}), changes


def _config(fields: Mapping[str, object], what: str) -> VisTRConfig:
    try:
        return VisTRConfig(**fields)
    except (ValueError, TypeError) as error:  # the config lists its problems one per line, in its field names
        raise UsageError(f"{what} do not build a VisTR model: {config_problems(error)}") from None


def classes_differ(source: VisTRConfig | None, config: VisTRConfig) -> bool:
    """The class head means other classes: the data's names are not the source's, index for index."""
    return source is not None and dict(source.id2label) != dict(config.id2label)


# ------------------------------------------------------------------------------------------------- loading


def load_fitting_weights(
    model: torch.nn.Module, weights: Mapping[str, torch.Tensor], drop_class_head: bool = False
) -> LoadReport:
    """Copy every tensor of `weights` whose name and shape fit `model` (and the class head only when its
    classes are the model's); report what started fresh and what was not used, each with its reason."""
    own = model.state_dict()
    unused = {}
    for name, tensor in weights.items():
        if name not in own:
            unused[name] = "not in this model"
        elif tensor.shape != own[name].shape:
            unused[name] = "another shape"
        elif drop_class_head and name in CLASS_HEAD:
            unused[name] = "the data's classes are not the source's"
    fitting = {name: tensor for name, tensor in weights.items() if name not in unused}
    model.load_state_dict(fitting, strict=False)
    fresh = {name: unused.get(name, "not in the source") for name in own if name not in fitting}
    total_values = sum(tensor.numel() for tensor in own.values())
    fresh_values = sum(own[name].numel() for name in fresh)
    unused = {name: reason for name, reason in unused.items() if name not in own}
    return LoadReport(len(fitting), len(own), fresh_values / max(1, total_values), fresh, unused)


def check_mostly_loaded(report: LoadReport, source: str, allow_partial: bool) -> None:
    """Refuse a start that is mostly random unless `allow_partial` (--allow-partial-init) says it is meant."""
    if report.fresh_fraction > MOST_OF_THE_MODEL and not allow_partial:
        raise UsageError(
            f"--init-from {source} fills only {report.loaded} of the model's {report.total} tensors "
            f"({report.fresh_fraction:.0%} of its weights would start from random values); check that it is the "
            "model you meant and the options you changed, or pass --allow-partial-init"
        )


__all__ = [
    "ARCHITECTURE_FIELDS", "LoadReport", "ModelSource", "build_config", "check_mostly_loaded", "classes_differ",
    "load_fitting_weights", "read_config_file", "read_model_source",
]  # fmt: skip
