"""VisTR for Hugging Face transformers: the `vistr` package.

The repository root is this package. Its modules fall in two groups:

* the files that travel with the weights (Hub remote code, flat in one folder, importing each other
  relatively): the model (`configuration_vistr`, `modeling_vistr`, `loss_vistr`, `deform_conv`,
  `frozen_batch_norm`), and above it the video processor (`image_processing_vistr`, `video_io`,
  `clip_linking`, `mask_upsampling`, `flip_averaging`) and the pipeline (`pipeline_vistr`);
* the tools, which import the model by its absolute name: `convert_checkpoint` and `train_accelerate`
  (scripts at the root, as documented) and the `vistr.tools` package (the `vistr` command, model cards and
  publishing, YouTube-VIS data, training clips, evaluation, split inference, overlays).

This package wires them together, the one place this happens (`_wire`): VisTR is registered with
transformers' Auto classes and the "video-instance-segmentation" pipeline, and the model classes get their
folder publisher (`vistr.tools.model_card`: the card, processor and pipeline a saved folder needs). A folder
loaded with `trust_remote_code=True` needs no registration (its config's `auto_map` names the classes).

Importing the package costs nothing (`vistr --help` needs neither torch nor transformers, whose imports take
seconds): the classes below load on first use, and the wiring runs as soon as transformers is imported, by
anyone, or at once if it already is, so that ``import vistr`` followed by
``AutoModelForInstanceSegmentation.from_pretrained(...)`` works as it always did.
"""

from __future__ import annotations

import importlib
import sys
from types import ModuleType

_EXPORTS = {
    "TASK": "pipeline_vistr",
    "VideoInstanceSegmentationPipeline": "pipeline_vistr",
    "VisTRConfig": "configuration_vistr",
    "VisTRForVideoInstanceSegmentation": "modeling_vistr",
    "VisTRModel": "modeling_vistr",
    "VisTRVideoProcessor": "image_processing_vistr",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


def _wire() -> None:
    """Register VisTR with transformers and give the model classes their folder publisher."""
    from transformers import AutoConfig, AutoModel, AutoModelForInstanceSegmentation, AutoVideoProcessor
    from transformers.pipelines import PIPELINE_REGISTRY

    from .configuration_vistr import VisTRConfig
    from .image_processing_vistr import VisTRVideoProcessor
    from .modeling_vistr import VisTRForVideoInstanceSegmentation, VisTRModel, VisTRPreTrainedModel
    from .pipeline_vistr import TASK, VideoInstanceSegmentationPipeline
    from .tools import model_card

    AutoConfig.register("vistr", VisTRConfig, exist_ok=True)
    AutoModel.register(VisTRConfig, VisTRModel, exist_ok=True)
    AutoModelForInstanceSegmentation.register(VisTRConfig, VisTRForVideoInstanceSegmentation, exist_ok=True)
    AutoVideoProcessor.register(VisTRConfig, VisTRVideoProcessor, exist_ok=True)
    PIPELINE_REGISTRY.register_pipeline(
        TASK, pipeline_class=VideoInstanceSegmentationPipeline, pt_model=AutoModelForInstanceSegmentation, type="video"
    )
    VisTRPreTrainedModel.folder_publisher = model_card


_wired = False


def _loading(module: ModuleType | None) -> bool:
    """Whether a module is still being executed by its import (the import system's own mark)."""
    return module is not None and getattr(getattr(module, "__spec__", None), "_initializing", False)


def _wire_when_possible(finished: str = "") -> None:
    """`_wire` once transformers is imported and none of this package's modules is half-imported.

    A module of ours that imports transformers is still running when transformers finishes; wiring then
    would import it a second time, half done.  So the wiring waits for that module to finish (`finished`
    names the module whose import just ended, still marked as loading).
    """
    global _wired
    if _wired or "transformers" not in sys.modules:
        return
    prefix = f"{__name__}."
    busy = [name for name, module in list(sys.modules.items())
            if name != finished and (name == "transformers" or name.startswith(prefix)) and _loading(module)]
    if busy:
        return
    _wired = True
    _wire()


class _WireAfterImports:
    """Finds transformers and this package's modules as the other finders do, and runs `_wire_when_possible`
    when each has been executed."""

    @classmethod
    def find_spec(cls, fullname: str, path=None, target=None):
        if fullname != "transformers" and not fullname.startswith(f"{__name__}."):
            return None
        for finder in sys.meta_path:
            if finder is cls or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                break
        else:
            return None
        if spec.loader is not None and hasattr(spec.loader, "exec_module"):
            spec.loader = _WiringLoader(spec.loader)
        return spec


class _WiringLoader:
    """A module's own loader, with `_wire_when_possible` after its execution."""

    def __init__(self, loader) -> None:
        self._loader = loader

    def __getattr__(self, name: str):  # get_source, get_filename, is_package, ...: the loader's own
        return getattr(self._loader, name)

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        self._loader.exec_module(module)
        _wire_when_possible(finished=module.__name__)


if not any(finder is _WireAfterImports for finder in sys.meta_path):
    sys.meta_path.insert(0, _WireAfterImports)
_wire_when_possible()
