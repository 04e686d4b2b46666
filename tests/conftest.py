"""Shared fixtures and helpers of the test suite (its layout: each source file's tests in the test file of its name,
tests/tools/ for tools/, tests/e2e/ for what crosses many modules).

* The golden data of the ORIGINAL implementation in ../shared/parity. Tests that need it skip with a reason when
  it is absent, and fail instead when CI=true, so a CI run can never pass by skipping its parity checks.
* Scripts outside the package (benchmarks, asset scripts) imported by their path.
* What several test files build: a synthetic training set and the trainer's arguments for it, a local stand-in
  for the Hub, the tiny parity model as a folder, a stand-in model that links clips, the bf16-vs-float32 slot
  comparison, and the one-line error checks of the commands.

Test modules import these helpers from here (`from conftest import ...`), never from one another.
"""

from __future__ import annotations

import ast
import copy
import importlib.util
import json
import os
import shutil
import sys
from pathlib import Path
from types import ModuleType, SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

REPO_ROOT = Path(__file__).resolve().parent.parent
PARITY_DIR = REPO_ROOT.parent / "shared" / "parity"
TINY_CHECKPOINT = PARITY_DIR / "vistr_tiny_r50_original.pth"
ASSETS = REPO_ROOT / "assets"
BUNDLED = ASSETS / "vistr-tiny-synthetic"
SAMPLE = ASSETS / "sample.mp4"

# case name -> (pixel key, padding-mask key) in inputs.pt
PARITY_CASES = {
    "unpadded": ("pixel_values", None),
    "padded": ("padded_pixel_values", "padded_pixel_mask"),
    "padded_small": ("padded_small_pixel_values", "padded_small_pixel_mask"),
}


# ----------------------------------------------------------------------------------------------------------
# Scripts outside the package
# ----------------------------------------------------------------------------------------------------------

_LOADING: set[Path] = set()


def _sibling_imports(path: Path) -> list[Path]:
    """The files beside `path` that it imports at its top level by their plain names, as a script run from its
    folder does (`from original_flow import OriginalFlow` in benchmarks/bench_forward.py)."""
    names = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            names.add(node.module.split(".")[0])
    siblings = (path.parent / f"{name}.py" for name in sorted(names))
    return [sibling for sibling in siblings if sibling.is_file() and sibling.resolve() != path.resolve()]


def import_script(path: Path, name: str | None = None) -> ModuleType:
    """A file outside the package (a benchmark, an asset script, or a model file under a private `name`)
    imported by its path, without adding its folder to sys.path for every later import. The siblings it imports
    by their plain names (`from bench_forward import ...`) are imported the same way first, under those names."""
    name = name or f"_script_{path.stem}"
    if name in sys.modules:
        return sys.modules[name]
    _LOADING.add(path.resolve())
    try:
        for sibling in _sibling_imports(path):
            if sibling.stem not in sys.modules and sibling.resolve() not in _LOADING:
                sys.modules[sibling.stem] = import_script(sibling)
    finally:
        _LOADING.discard(path.resolve())
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the file executes
    spec.loader.exec_module(module)
    return module


# ----------------------------------------------------------------------------------------------------------
# Golden data of the original implementation (../shared/parity)
# ----------------------------------------------------------------------------------------------------------


def require_parity_dir() -> Path:
    if not PARITY_DIR.is_dir():
        message = f"golden data not found at {PARITY_DIR} (../shared beside the repo)"
        if os.environ.get("CI") == "true":
            pytest.fail(message + "; CI must run the parity tests")
        pytest.skip(message)
    return PARITY_DIR


@pytest.fixture(scope="session")
def parity_dir() -> Path:
    return require_parity_dir()


@pytest.fixture(scope="session")
def parity_inputs(parity_dir):
    return torch.load(parity_dir / "inputs.pt", weights_only=True)


@pytest.fixture(scope="session")
def reference_fp64(parity_dir):
    return torch.load(parity_dir / "outputs_fp64.pt", weights_only=True)


@pytest.fixture(scope="session")
def tiny_model(parity_dir):
    """The tiny original checkpoint, converted (float32, eval mode)."""
    from vistr.convert_checkpoint import convert

    return convert(parity_dir / "vistr_tiny_r50_original.pth")


def case_inputs(parity_inputs, case: str, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One parity case as model inputs: pixel_values [1, T, 3, H, W] and pixel_mask (1 = real pixel)."""
    pixel_key, mask_key = PARITY_CASES[case]
    pixel_values = parity_inputs[pixel_key].to(dtype)[None]
    pixel_mask = None if mask_key is None else (~parity_inputs[mask_key]).long()[None]
    return pixel_values, pixel_mask


@pytest.fixture(scope="session")
def fixture_model_folder(tiny_model, tmp_path_factory):
    """The tiny parity model saved as a complete folder (weights, processor, code), for the pipeline and the CLI."""
    from vistr.image_processing_vistr import VisTRVideoProcessor
    from vistr.tools.model_card import save_model_folder

    folder = tmp_path_factory.mktemp("vistr-tiny")
    save_model_folder(tiny_model, folder, VisTRVideoProcessor(size={"shortest_edge": 128, "longest_edge": 640}))
    return folder


# ----------------------------------------------------------------------------------------------------------
# Numbers
# ----------------------------------------------------------------------------------------------------------


def assert_close_scaled(actual: torch.Tensor, expected: torch.Tensor, tol: float = 1e-10) -> None:
    """Equal shapes, and within `tol` of the reference scaled by its largest magnitude (at least 1): float64
    round-off of a fast path against the plain computation."""
    assert actual.shape == expected.shape
    scale = max(1.0, expected.abs().max().item())
    assert (actual - expected).abs().max().item() <= tol * scale


# ----------------------------------------------------------------------------------------------------------
# bf16 against float32: the same slots (modeling and pipeline tests)
# ----------------------------------------------------------------------------------------------------------

MIN_IOU = 0.98
# Flip-averaged masks keep the views' disagreement as logits near 0: on the sample, the two reported slots whose
# views disagree (scores 0.52 and 0.82) have 400 and 325 pixels within 0.5 of the threshold (10-101 for the
# others) and move to IoU 0.939 and 0.957 in bf16. Over the held-out split bf16 loses nothing: AP 0.571 against
# float32's 0.569 (`vistr segment --annotations ... --evaluate --dtype bf16`).
MIN_IOU_FLIPS = 0.9


@pytest.fixture(scope="session")
def bundled():
    """The bundled model in float32 and a bf16 copy, and its processor."""
    from vistr.image_processing_vistr import VisTRVideoProcessor
    from vistr.modeling_vistr import VisTRForVideoInstanceSegmentation

    model = VisTRForVideoInstanceSegmentation.from_pretrained(BUNDLED).eval()
    return model, copy.deepcopy(model).to(torch.bfloat16), VisTRVideoProcessor.from_pretrained(BUNDLED)


def slot_masks_and_labels(logits: torch.Tensor, mask_logits: torch.Tensor, frames: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One clip's [T*n, C+1] logits and [T*n, h, w] mask logits -> per slot: masks [n, T*h*w] (logit > 0), majority label [n]."""
    labels = logits.float().softmax(-1)[:, :-1].argmax(-1).view(frames, -1)
    masks = (mask_logits.float() > 0).view(frames, -1, *mask_logits.shape[-2:]).transpose(0, 1).flatten(1)
    return masks, torch.mode(labels, 0).values


def mask_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row-wise IoU of bool [n, P] masks; 1 where both are empty."""
    union = (a | b).sum(1)
    return torch.where(union > 0, (a & b).sum(1) / union.clamp(min=1), 1.0)


def assert_same_slots(reference, computed, frames: int, dtype: torch.dtype = torch.bfloat16,
                      min_iou: float = MIN_IOU) -> None:  # fmt: skip
    """One clip's bf16 outputs against float32: every slot with a mask, labels equal, and mask IoU >= 0.98 for
    every slot that float32 scores at least PIPELINE_DEFAULTS' threshold (the instances `vistr segment` reports).

    A slot below it is the model's own doubt: its mask sits near the logit threshold (on the retrained bundled
    model, a 0.35 slot has 54 pixels within 0.5 of it against 8-28 for the confident ones) and drifted to IoU 0.92.
    `dtype`: of the computed masks (bf16; flip-averaged outputs are averaged in float32); `min_iou` as above.
    """
    from vistr.image_processing_vistr import VisTRVideoProcessor
    from vistr.pipeline_vistr import PIPELINE_DEFAULTS

    assert computed.pred_masks.dtype == dtype
    masks_a, labels_a = slot_masks_and_labels(reference.logits[0], reference.pred_masks[0], frames)
    masks_b, labels_b = slot_masks_and_labels(computed.logits[0], computed.pred_masks[0], frames)
    assert torch.equal(labels_a, labels_b)
    frame_scores, _ = VisTRVideoProcessor.frame_class_scores(reference.logits[0].float(), frames)
    reported = frame_scores.mean(0) >= PIPELINE_DEFAULTS["threshold"]  # the instance score, as post-processing's
    assert reported.any()
    assert masks_a[reported].any(1).all()  # every reported slot has a mask: the IoU is not that of two empty masks
    assert mask_iou(masks_a, masks_b)[reported].min() >= min_iou


# ----------------------------------------------------------------------------------------------------------
# A stand-in model whose clips only linking by mask IoU can keep apart (clip linking and pipeline tests)
# ----------------------------------------------------------------------------------------------------------

RED_STEP = 60  # instance k is painted with red = 60 * k on a black background


class OracleModel(nn.Module):
    """Stands in for VisTR: reads each instance's mask from its colour, but puts the instances in
    different slots in every clip, so that only linking by mask IoU can keep their ids."""

    def __init__(self, num_frames: int, slots: int = 5, instances: int = 3):
        from vistr.configuration_vistr import VisTRConfig

        super().__init__()
        self.config = VisTRConfig(num_frames=num_frames, num_queries_per_frame=slots, num_labels=instances + 1)
        self.instances = instances
        self.anchor = nn.Parameter(torch.zeros(()))
        self.clips = 0

    def forward(self, pixel_values, pixel_mask=None):
        frames, slots = self.config.num_frames, self.config.num_queries_per_frame
        red = (pixel_values[0, :, 0] * 0.229 + 0.485) * 255
        order = torch.randperm(slots, generator=torch.Generator().manual_seed(self.clips))
        self.clips += 1
        h4, w4 = -(-red.shape[-2] // 4), -(-red.shape[-1] // 4)
        logits = torch.full((frames, slots, self.instances + 2), -10.0)
        logits[..., -1] = 10.0
        masks = torch.full((frames, slots, h4, w4), -10.0)
        for k in range(1, self.instances + 1):
            present = (red - RED_STEP * k).abs() < 20
            coarse = F.avg_pool2d(present.float()[:, None], 4, ceil_mode=True)[:, 0] > 0.5
            slot = order[k - 1]
            masks[:, slot] = torch.where(coarse, 10.0, -10.0)
            logits[:, slot, k] = 10.0
            logits[:, slot, -1] = torch.where(present.flatten(1).any(1), -10.0, 12.0)
        boxes = torch.full((1, frames * slots, 4), 0.5)  # not read by the segmenter
        return SimpleNamespace(logits=logits.reshape(1, frames * slots, -1), pred_masks=masks.reshape(1, frames * slots, h4, w4),
                               pred_boxes=boxes)  # fmt: skip


# ----------------------------------------------------------------------------------------------------------
# Commands: one-line errors
# ----------------------------------------------------------------------------------------------------------


def failed_command(capsys, main, *args: str) -> tuple[int, str]:
    """(exit code, the error message) of a command's `main(ARGS)` that must fail without a traceback."""
    with pytest.raises(SystemExit) as exit_info:
        main(list(args))
    code, printed = exit_info.value.code, capsys.readouterr().err
    assert "Traceback" not in printed, printed
    return (1, code) if isinstance(code, str) else (code, printed.strip().splitlines()[-1])


def assert_one_line_error(message: str, piece: str) -> None:
    assert message.startswith("error: ") and "\n" not in message and "Traceback" not in message, message
    assert piece in message, message


# ----------------------------------------------------------------------------------------------------------
# Training: a tiny synthetic set and the trainer's arguments for a tiny model on it
# ----------------------------------------------------------------------------------------------------------

TINY_MODEL = ["--backbone", "resnet18", "--num-frames", "2", "--encoder-layers", "1", "--decoder-layers", "2",
              "--ffn-dim", "64", "--num-queries-per-frame", "3"]  # fmt: skip
SMALL_CLIPS = ["--train-size", "64", "--train-max-size", "96", "--scales", "64", "80", "--crop-min-size", "48",
               "--crop-max-size", "80", "--crop-scales", "72", "88"]  # fmt: skip


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory):
    from vistr.tools.youtube_vis import SyntheticOptions, make_synthetic

    root = tmp_path_factory.mktemp("data") / "synthetic"
    options = SyntheticOptions(min_frames=3, max_frames=5, min_side=64, max_side=96, max_instances=2)
    make_synthetic(root, num_videos=6, seed=3, options=options, progress=False)
    return root


# the synthetic YouTube-VIS set of the data tools' tests (tests/tools): eight short videos of few instances
SYNTHETIC_SET_VIDEOS, SYNTHETIC_SET_SEED = 8, 3


def synthetic_set_options():
    from vistr.tools.youtube_vis import SyntheticOptions

    return SyntheticOptions(min_frames=2, max_frames=7, min_side=32, max_side=72, max_instances=4)


@pytest.fixture(scope="module")
def synthetic_set(tmp_path_factory) -> Path:
    from vistr.tools.youtube_vis import make_synthetic

    root = tmp_path_factory.mktemp("synthetic") / "set"
    make_synthetic(root, SYNTHETIC_SET_VIDEOS, SYNTHETIC_SET_SEED, synthetic_set_options(), progress=False)
    return root


@pytest.fixture(scope="module")
def synthetic_set_json(synthetic_set) -> dict:
    return json.loads((synthetic_set / "annotations.json").read_text())


def train_arguments(root, output_dir, *extra: str) -> list[str]:
    return ["--data-root", str(root), "--output-dir", str(output_dir), "--validation-fraction", "0.34",
            "--report-to", "none", "--lr", "1e-3", "--seed", "5", *TINY_MODEL, *SMALL_CLIPS, *extra]  # fmt: skip


def own_dataset(root: Path) -> dict:
    """A user's own two-frame video with categories in no particular order and every segmentation form."""
    (root / "JPEGImages" / "clip").mkdir(parents=True)
    for frame in range(2):
        pixels = np.full((6, 8, 3), 40 * frame, dtype=np.uint8)
        Image.fromarray(pixels).save(root / "JPEGImages" / "clip" / f"{frame}.jpg")
    polygon = [[1.0, 1.0, 6.0, 1.0, 6.0, 4.0, 1.0, 4.0]]
    uncompressed = {"size": [6, 8], "counts": [7, 3, 2, 3, 33]}  # column-major: column 1 rows 1-3, column 2 rows 0-2
    data = {
        "videos": [{"id": 5, "width": 8, "height": 6, "length": 2, "file_names": ["clip/0.jpg", "clip/1.jpg"]}],
        "categories": [{"id": 10, "name": "zebra"}, {"id": 2, "name": "ant"}],
        "annotations": [
            {
                "id": 1, "video_id": 5, "category_id": 10, "iscrowd": 0,
                "segmentations": [polygon, None], "areas": [15.0, None], "bboxes": [[1, 1, 5, 3], None],
            },
            {
                "id": 2, "video_id": 5, "category_id": 2, "iscrowd": 1,
                "segmentations": [None, uncompressed], "areas": [None, 6.0], "bboxes": [None, [1, 0, 2, 4]],
            },
        ],
    }
    (root / "annotations.json").write_text(json.dumps(data))
    return data


# ----------------------------------------------------------------------------------------------------------
# A local stand-in for the Hub
# ----------------------------------------------------------------------------------------------------------


class LocalHub:
    """Stands in for `huggingface_hub.HfApi` and transformers' `hf_api()`: repos are folders under `root`, uploads
    and commits are copies."""

    root: Path

    def __init__(self, **kwargs):
        pass

    def create_repo(self, repo_id, repo_type="model", private=False, exist_ok=False, **kwargs):
        path = self.root / repo_id
        if path.exists() and not exist_ok:
            raise FileExistsError(repo_id)
        path.mkdir(parents=True, exist_ok=True)
        return SimpleNamespace(repo_id=repo_id)

    def upload_folder(self, folder_path, repo_id, repo_type="model", commit_message=""):
        shutil.copytree(folder_path, self.root / repo_id, dirs_exist_ok=True)
        return f"local://{repo_id}/commit"

    def create_commit(self, repo_id, operations, **kwargs):
        for operation in operations:
            target = self.root / repo_id / operation.path_in_repo
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(operation.path_or_fileobj, target)
        return f"local://{repo_id}/commit"


def load_local_card(card_class, repo_id, **kwargs):
    """`ModelCard.load` of a stand-in repo: its README.md, or EntryNotFoundError (a repo without a card)."""
    from huggingface_hub.errors import EntryNotFoundError

    card = LocalHub.root / repo_id / "README.md"
    if not card.is_file():
        raise EntryNotFoundError(f"{repo_id} has no README.md")
    return card_class(card.read_text())


@pytest.fixture
def local_hub(tmp_path, monkeypatch):
    import huggingface_hub
    from huggingface_hub import ModelCard
    from transformers.utils import hub as transformers_hub

    LocalHub.root = tmp_path / "hub"
    monkeypatch.setattr(huggingface_hub, "HfApi", LocalHub)
    monkeypatch.setattr(transformers_hub, "_hf_api", LocalHub())
    monkeypatch.setattr(ModelCard, "load", classmethod(load_local_card))
    return LocalHub.root
