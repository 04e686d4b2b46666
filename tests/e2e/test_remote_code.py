"""A converted folder loads through the Auto classes where our modules are NOT importable.

The check runs in a fresh interpreter (`python -I`, empty working directory) whose import system
refuses our module names, as on a machine that only has the folder (or its Hub copy). It must
still reproduce the original's float64 outputs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

from pathlib import Path

import pytest
from vistr.tools.model_card import save_model_folder

BUNDLED = Path(__file__).resolve().parents[2] / "assets" / "vistr-tiny-synthetic"

SCRIPT = textwrap.dedent(
    """
    import importlib.abc, json, sys
    OURS = {"configuration_vistr", "modeling_vistr", "deform_conv", "image_processing_vistr", "pipeline_vistr",
            "flip_averaging", "video_io", "overlay", "convert_checkpoint", "vistr_cli"}

    class RefuseOurModules(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name in OURS or name.split(".")[0] == "vistr":
                raise ModuleNotFoundError(f"{name} is not installed here")

    sys.meta_path.insert(0, RefuseOurModules())
    import torch
    from transformers import AutoConfig, AutoModel, AutoModelForInstanceSegmentation, AutoVideoProcessor, pipeline

    folder, parity = sys.argv[1], sys.argv[2]
    config = AutoConfig.from_pretrained(folder, trust_remote_code=True)
    model = AutoModelForInstanceSegmentation.from_pretrained(folder, trust_remote_code=True).eval().double()
    base = AutoModel.from_pretrained(folder, trust_remote_code=True)
    inputs = torch.load(f"{parity}/inputs.pt", weights_only=True)
    reference = torch.load(f"{parity}/outputs_fp64.pt", weights_only=True)["padded_small"]
    with torch.no_grad():
        out = model(inputs["padded_small_pixel_values"].double()[None], (~inputs["padded_small_pixel_mask"]).long()[None])
    processor = AutoVideoProcessor.from_pretrained(folder, trust_remote_code=True)
    segment = pipeline("video-instance-segmentation", model=folder, trust_remote_code=True)
    instances = segment(inputs["raw_video_uint8"].numpy()[:2], threshold=0.0)
    print(json.dumps({
        "processor": type(processor).__name__,
        "pipeline": type(segment).__name__,
        "mask_shapes": sorted({tuple(i["masks"].shape) for i in instances}),
        "config": type(config).__module__ + "." + type(config).__name__,
        "model": type(model).__module__ + "." + type(model).__name__,
        "base": type(base).__name__,
        "ours_imported": sorted(OURS & set(sys.modules)),
        "logits": (out.logits - reference["pred_logits"]).abs().max().item(),
        "masks": (out.pred_masks - reference["pred_masks"]).abs().max().item(),
    }))
    """
)


@pytest.fixture(scope="module")
def converted_folder(tiny_model, tmp_path_factory):
    folder = tmp_path_factory.mktemp("converted")
    save_model_folder(tiny_model, folder)
    return folder


def test_loads_with_trust_remote_code_without_our_modules(converted_folder, parity_dir, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env["HF_MODULES_CACHE"] = str(tmp_path / "modules")
    done = subprocess.run(
        [sys.executable, "-I", "-c", SCRIPT, str(converted_folder), str(parity_dir)],
        capture_output=True, text=True, cwd=tmp_path, env=env,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["config"].startswith("transformers_modules.") and result["config"].endswith(".VisTRConfig")
    assert result["model"].startswith("transformers_modules.")
    assert result["model"].endswith(".VisTRForVideoInstanceSegmentation")
    assert result["base"] == "VisTRModel"
    assert result["ours_imported"] == []
    assert result["processor"] == "VisTRVideoProcessor" and result["pipeline"] == "VideoInstanceSegmentationPipeline"
    assert result["mask_shapes"] == [[2, 200, 250]]
    assert result["logits"] <= 1e-9 and result["masks"] <= 1e-9


def test_installed_modules_register_with_the_auto_classes(converted_folder):
    from transformers import AutoConfig, AutoModel, AutoModelForInstanceSegmentation
    from vistr.configuration_vistr import VisTRConfig
    from vistr.modeling_vistr import VisTRForVideoInstanceSegmentation, VisTRModel

    assert type(AutoConfig.from_pretrained(converted_folder)) is VisTRConfig
    assert type(AutoModel.from_pretrained(converted_folder)) is VisTRModel
    assert type(AutoModelForInstanceSegmentation.from_pretrained(converted_folder)) is VisTRForVideoInstanceSegmentation


WITHOUT_OPTIONAL_PACKAGES = textwrap.dedent(
    """
    import importlib.machinery, json, pathlib, sys
    MISSING = {"scipy", "pycocotools", "av"}

    class PathFinderWithout(importlib.machinery.PathFinder):
        # the path finder of a machine without MISSING: an import of one fails as if it were not installed
        @classmethod
        def find_spec(cls, name, path=None, target=None):
            return None if name.split(".")[0] in MISSING else super().find_spec(name, path, target)

    sys.meta_path[:] = [PathFinderWithout if f is importlib.machinery.PathFinder else f for f in sys.meta_path]
    import numpy as np, torch
    from transformers import AutoModelForInstanceSegmentation, AutoVideoProcessor, pipeline
    from transformers.dynamic_module_utils import check_imports

    folder = sys.argv[1]
    for code in sorted(pathlib.Path(folder).glob("*.py")):  # what loading from a Hub repo checks in each file
        check_imports(code)
    model = AutoModelForInstanceSegmentation.from_pretrained(folder, trust_remote_code=True).eval()
    processor = AutoVideoProcessor.from_pretrained(folder, trust_remote_code=True)
    frames = np.random.default_rng(0).integers(0, 255, (model.config.num_frames + 2, 40, 48, 3), dtype=np.uint8)

    def segment(video, **options):
        inputs = processor(video)
        with torch.no_grad():
            outputs = model(**inputs)
        return processor.post_process_instance_segmentation(outputs, threshold=0.0, clip_layout=inputs, **options)

    def error(run):
        try:
            run()
        except ImportError as raised:
            return str(raised)

    one_clip = frames[: model.config.num_frames]
    segmenter = pipeline("video-instance-segmentation", model=folder, trust_remote_code=True, device="cpu")
    print(json.dumps({
        "frames": [len(instance["frame_scores"]) for instance in segment(one_clip)[0]],
        "pipeline_frames": sorted({len(i["frame_scores"]) for i in segmenter(one_clip, test_time_flips=[])}),
        "rle": error(lambda: segment(one_clip, mask_format="rle")),
        "clip_linking": error(lambda: segment(frames)),
        "flips": error(lambda: segmenter(one_clip)),
        "imported": sorted(MISSING & {name.split(".")[0] for name in sys.modules}),
    }))
    """
)


def test_one_clip_runs_without_scipy_pycocotools_and_av_and_other_features_name_theirs(tmp_path):
    """A Hub user with only torch, transformers and timm (numpy and Pillow come with them) loads the bundled folder's
    model, processor and pipeline and segments a video of one clip; RLE masks, linking clips and test-time flips
    each say in one line which package they need."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("PYTHON")}
    env["HF_MODULES_CACHE"] = str(tmp_path / "modules")
    done = subprocess.run([sys.executable, "-I", "-c", WITHOUT_OPTIONAL_PACKAGES, str(BUNDLED)],
                          capture_output=True, text=True, cwd=tmp_path, env=env, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["frames"] and set(result["frames"]) == {5} and result["pipeline_frames"] == [5]
    assert result["imported"] == []
    for feature, package in (("rle", "pycocotools"), ("clip_linking", "scipy"), ("flips", "scipy")):
        message = result[feature]
        assert message and "\n" not in message and package in message, (feature, message)
        assert message.endswith(f"pip install {package}"), (feature, message)
