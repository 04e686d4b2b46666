"""Sharing a VisTR folder: its model card (`README.md` beside the weights) and the upload to the Hub.

A folder on the Hub without a card tells its users nothing about where the weights came from; the
card says how the model was made (converted from which file, or trained with which command on which
data), what it scores when that is known, how to load it and what it is not for.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path

from huggingface_hub import ModelCard, ModelCardData
from transformers.utils import CONFIG_NAME, VIDEO_PROCESSOR_NAME

# Relative imports of a model file's modules travel with it: every `save_pretrained` of the model (and the
# Hub's remote-code loader) takes the pipeline's and the processor's code along, so its folder always holds them.
from .image_processing_vistr import processor_for_model
from .pipeline_vistr import CUSTOM_PIPELINES, TASK, VideoInstanceSegmentationPipeline

PAPER = "https://arxiv.org/abs/2011.14503"
TAGS = [TASK, "vistr", "transformers"]


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


def build_model_card(
    config,
    *,
    name: str,
    provenance: str,
    datasets: list[str] | None = None,
    metrics: Mapping[str, float] | None = None,
    metrics_split: str = "held-out split",
) -> ModelCard:
    """A card with license, tags, datasets, metrics (when known), provenance, use, limits and loading code."""
    data = ModelCardData(
        license="apache-2.0",
        library_name="transformers",
        tags=TAGS,
        datasets=datasets or None,
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


def _yaml(metadata: Mapping) -> str:
    import yaml

    return yaml.safe_dump(dict(metadata), sort_keys=False)


def save_model_card(folder: str | os.PathLike, card: ModelCard) -> Path:
    path = Path(folder) / "README.md"
    card.save(path)
    return path


def save_default_model_card(folder: str | os.PathLike, config) -> None:
    """Complete a folder the model's `save_pretrained` wrote, so that it loads anywhere with the Auto classes
    and `pipeline(..., trust_remote_code=True)`: the pipeline entry in its config (the code came along), the
    default video processor for the model and a card where the folder has none. A processor or card written
    by the user, the converter or the trainer (which know the provenance) is kept."""
    folder = Path(folder)
    _add_pipeline_entry(folder / CONFIG_NAME)
    if not (folder / VIDEO_PROCESSOR_NAME).exists():
        processor_for_model(config).save_pretrained(folder)
    if (folder / "README.md").exists():
        return
    source = getattr(config, "_name_or_path", "") or "weights created in Python"
    provenance = f"Saved with `save_pretrained`; loaded from or initialised as: `{source}`."
    save_model_card(folder, build_model_card(config, name=folder.name, provenance=provenance))


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
    "build_model_card", "file_sha256", "push_to_hub", "save_default_model_card", "save_model_card", "save_model_folder",
]
