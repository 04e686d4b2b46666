"""Publishing a VisTR folder: its model card (`README.md` beside the weights), the files that make it usable
anywhere (video processor, pipeline entry and code) and the upload to the Hub.

A folder on the Hub without a card tells its users nothing about where the weights came from; the
card says how the model was made (converted from which file, or trained with which command on which
data), what it scores when that is known, how to load it and what it is not for.

The model does not import this module: the `vistr` package hands it to the model classes as their
`folder_publisher` (see `vistr/__init__.py`), so that `model.save_pretrained` and `model.push_to_hub` complete
the folder they write, while the model files stay free of processor, pipeline and card code.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from huggingface_hub import ModelCard, ModelCardData
from transformers.dynamic_module_utils import custom_object_save
from transformers.utils import CONFIG_NAME, VIDEO_PROCESSOR_NAME

from vistr.image_processing_vistr import processor_for_model
from vistr.optional_dependencies import FULL_INSTALL, OPTIONAL_PACKAGES, REQUIRED_INSTALL
from vistr.pipeline_vistr import CUSTOM_PIPELINES, TASK, VideoInstanceSegmentationPipeline

PAPER = "https://arxiv.org/abs/2011.14503"
TAGS = [TASK, "vistr", "transformers"]
# The card's `pipeline_tag` must be one of the Hub's tasks (huggingface.js, packages/tasks/src/pipelines.ts), which
# have no video segmentation: instance segmentation is filed under image segmentation. TASK (the transformers
# pipeline's name) is a tag.
HUB_PIPELINE_TAG = "image-segmentation"
# all the metadata of the template card transformers' `push_to_hub` writes for a repository without a card
TEMPLATE_CARD_KEYS = {"library_name", "tags"}


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _architecture(config) -> str:
    return (
        f"{config.backbone}{' (DC5)' if config.dilation else ''} backbone, d_model {config.d_model}, "
        f"{config.encoder_layers} encoder + {config.decoder_layers} decoder layers, {config.num_frames} frames x "
        f"{config.num_queries_per_frame} queries per frame, {config.num_labels} class indices + no-object"
    )


def _existing_metrics(metrics: Mapping[str, float] | None) -> dict[str, float]:
    """The metrics that exist: the YouTube-VIS evaluator reports -1 for one that does not exist on the split (as
    pycocotools does: no instance in an area range, say), and a card must not state it as a score."""
    return {name: float(value) for name, value in (metrics or {}).items() if math.isfinite(value) and value != -1}


def _metrics_table(metrics: Mapping[str, float], split: str) -> str:
    rows = "\n".join(f"| {name} | {value:.4f} |" for name, value in metrics.items())
    return f"YouTube-VIS mask metrics (`vistr evaluate`) on {split}:\n\n| metric | value |\n|---|---|\n{rows}\n"


def _model_index(name: str, metrics: Mapping[str, float], dataset: str, split: str) -> list[dict]:
    return [{
        "name": name,
        "results": [{
            "task": {"type": "video-instance-segmentation", "name": "Video Instance Segmentation"},
            "dataset": {"type": dataset, "name": dataset, "split": split},
            "metrics": [{"type": key, "value": float(value), "name": f"mask {key}"} for key, value in metrics.items()],
        }],
    }]  # fmt: skip


def _installation() -> str:
    features = "\n".join(f"- `{package}`: {feature}" for package, feature in OPTIONAL_PACKAGES.items())
    return (f"`{FULL_INSTALL}` installs all that this card uses. The model, its processor and the post-processing of "
            f"a video of one clip need only `{REQUIRED_INSTALL}`; the other packages each serve a few features, and "
            f"a feature whose package is missing names it:\n\n{features}")


def build_model_card(
    config,
    *,
    name: str,
    provenance: str,
    datasets: str | Sequence[str] | None = None,
    metrics: Mapping[str, float] | None = None,
    metrics_split: str = "held-out split",
    base_model: str | None = None,
    tags: Sequence[str] = (),
) -> ModelCard:
    """A card with license, tags, datasets, metrics (when known), provenance, installation, use, limits and loading
    code.

    Args:
        config: the model's config.
        name: the model's Hub id (or folder name), used in the loading code.
        provenance: how the model was made (markdown): converted from which file, trained with which command.
        datasets: Hub ids or names of the datasets the model was trained on (e.g. "youtube_vis" or
            "someone/my-videos"), the card's `datasets` metadata, which the Hub links to dataset pages. Never a local
            folder's name (such as "data"): none is written by default.
        metrics: name -> value on `metrics_split`; those that do not exist (-1 or not finite) are left out.
        metrics_split: the data the metrics were computed on, in words.
        base_model: the Hub id of the model this one was fine-tuned from (`base_model` metadata).
        tags: tags besides the card's own (`push_to_hub(tags=...)`'s).
    """
    name, provenance = _valid_text(name), _valid_text(provenance)
    datasets = [datasets] if isinstance(datasets, str) else list(datasets or [])
    metrics = _existing_metrics(metrics)
    data = ModelCardData(
        license="apache-2.0",
        library_name="transformers",
        pipeline_tag=HUB_PIPELINE_TAG,
        tags=[*TAGS, *(tag for tag in tags if tag not in TAGS)],
        datasets=datasets or None,
        base_model=base_model,
        model_name=name,
        eval_results=None,
    )
    metadata = data.to_dict()
    if metrics:
        metadata["model-index"] = _model_index(name, metrics, (datasets or ["custom"])[0], metrics_split)
    body = f"""
# {name}

VisTR ([End-to-End Video Instance Segmentation with Transformers]({PAPER}), Wang et al., CVPR 2021) for
Hugging Face transformers: {_architecture(config)}.

## Provenance

{provenance}

## Evaluation

{_metrics_table(metrics, metrics_split) if metrics else "Not evaluated when this card was written."}

## Installation

{_installation()}

## How to use

```python
import torch
from transformers import AutoModelForInstanceSegmentation, AutoVideoProcessor, pipeline

segmenter = pipeline("{TASK}", model="{name}", trust_remote_code=True)
instances = segmenter("video.mp4", threshold=0.5)   # id, score, label, label_name and per-frame masks

# step by step, for a video of any length (clips of {config.num_frames} frames, stitched back together):
model = AutoModelForInstanceSegmentation.from_pretrained("{name}", trust_remote_code=True).eval()
processor = AutoVideoProcessor.from_pretrained("{name}", trust_remote_code=True)
inputs = processor("video.mp4", return_tensors="pt")
with torch.no_grad():
    outputs = model(**inputs)
instances = processor.post_process_instance_segmentation(outputs, clip_layout=inputs, id2label=model.config.id2label)[0]
```

or from the command line: `vistr segment video.mp4 --model {name} --output results.json --overlay overlay.mp4`.

## Intended use and limits

Video instance segmentation (segment, classify and track every instance through a clip) of the classes
listed in `config.json` (`id2label`). The model sees clips of exactly {config.num_frames} frames; longer
videos are cut into overlapping clips whose instances are linked by mask IoU, shorter ones repeat frames.
It knows only its training classes and data: expect lower quality on other domains, small objects and
long occlusions. It is not meant for decisions about people (identification, surveillance).
"""
    return ModelCard(f"---\n{_yaml(metadata)}---\n{body}")


def _valid_text(text: str) -> str:
    """`text` as valid UTF-8, which a card is: a folder's name (the card's default name, a source path) may hold
    bytes that are not, which Python keeps as lone surrogates (`os.fsdecode`) and cannot write as text; each
    such byte becomes U+FFFD."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _yaml(metadata: Mapping) -> str:
    import yaml

    return yaml.safe_dump(dict(metadata), sort_keys=False)


def save_model_card(folder: str | os.PathLike, card: ModelCard) -> Path:
    path = Path(folder) / "README.md"
    card.save(path)
    return path


def complete_saved_folder(folder: str | os.PathLike, config) -> None:
    """Complete a folder the model's `save_pretrained` wrote, so that it loads anywhere with the Auto classes
    and `pipeline(..., trust_remote_code=True)`: the pipeline entry in its config and the pipeline's code, the
    default video processor for the model (with its code) and a card where the folder has none. A processor or
    card written by the user, the converter or the trainer (which know the provenance) is kept."""
    folder = Path(folder)
    _add_pipeline_entry(folder / CONFIG_NAME)
    custom_object_save(VideoInstanceSegmentationPipeline, folder)
    if not (folder / VIDEO_PROCESSOR_NAME).exists():
        processor_for_model(config).save_pretrained(folder)
    if not (folder / "README.md").exists():
        save_model_card(folder, _default_model_card(config, folder.name))


def complete_upload(folder: str | os.PathLike, config, repo_id: str) -> None:
    """Complete a folder that transformers' `push_to_hub` (or `save_pretrained(push_to_hub=True)`) is about to
    upload to `repo_id`, as `complete_saved_folder` does, and put our card in place of transformers' template.

    Just before uploading, transformers writes the card the repository already has (kept) or, for a repository
    without one, its template, which has none of the provenance, license, installation and loading code of ours
    (only `library_name` and the tags it was given, which our card takes over)."""
    complete_saved_folder(folder, config)
    metadata = ModelCard((Path(folder) / "README.md").read_text()).data.to_dict()
    if metadata.get("library_name") == "transformers" and set(metadata) <= TEMPLATE_CARD_KEYS:
        save_model_card(folder, _default_model_card(config, repo_id, tags=metadata.get("tags") or ()))


def _default_model_card(config, name: str, tags: Sequence[str] = ()) -> ModelCard:
    """The card of a model saved from Python: its provenance is what it was loaded from (or that it was not)."""
    source = getattr(config, "_name_or_path", "") or "weights created in Python"
    provenance = f"Saved with `save_pretrained`; loaded from or initialised as: `{source}`."
    return build_model_card(config, name=name, provenance=provenance, tags=tags)


def _add_pipeline_entry(config_file: Path) -> None:
    """`custom_pipelines` in a saved config, as `Pipeline.save_pretrained` writes it, where it is missing."""
    settings = json.loads(config_file.read_text())
    pipelines = settings.get("custom_pipelines") or {}
    if TASK not in pipelines:
        settings["custom_pipelines"] = {**pipelines, **CUSTOM_PIPELINES}
        config_file.write_text(json.dumps(settings, indent=2, sort_keys=True) + "\n")


def push_to_hub(folder: str | os.PathLike, repo_id: str, api=None, private: bool = False) -> str:
    """Create `repo_id` if needed and upload the folder (weights, config, code, card); returns the commit URL.

    `api` defaults to `huggingface_hub.HfApi()` (token from `hf auth login` or `HF_TOKEN`); tests pass a
    local stand-in with the same two methods.
    """
    if api is None:
        from huggingface_hub import HfApi

        api = HfApi()
    api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
    commit = api.upload_folder(folder_path=str(folder), repo_id=repo_id, repo_type="model",
                               commit_message="Upload VisTR model")  # fmt: skip
    return str(getattr(commit, "commit_url", commit))


def save_model_folder(model, folder: str | os.PathLike, processor=None) -> None:
    """Write everything a model folder needs to be used anywhere: weights, config (with `auto_map` and
    `custom_pipelines`), the video processor config, and the code files for `trust_remote_code`
    (the pipeline's `save_pretrained` takes the model's, the processor's and its own code along)."""
    pipe = VideoInstanceSegmentationPipeline(model=model, video_processor=processor, device=model.device)
    pipe.save_pretrained(folder)


__all__ = [
    "build_model_card", "complete_saved_folder", "complete_upload", "file_sha256", "push_to_hub", "save_model_card",
    "save_model_folder",
]
