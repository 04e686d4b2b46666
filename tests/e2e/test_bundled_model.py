"""The bundled model (assets/vistr-tiny-synthetic) and the README's first command.

The demo runs as a new user runs it: `vistr segment` with no arguments, in a fresh interpreter, in an empty
working directory, with nothing from ../shared. The held-out check re-scores the bundled model on the split
its card names and compares with the AP the card states.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
import yaml
from conftest import REPO_ROOT, import_script
from vistr.video_io import iter_frames

ASSETS = REPO_ROOT / "assets"
BUNDLED = ASSETS / "vistr-tiny-synthetic"
SAMPLE = ASSETS / "sample.mp4"
SAMPLE_TRUTH = ASSETS / "sample_annotations.json"


def card_metadata() -> dict:
    text = (BUNDLED / "README.md").read_text()
    return yaml.safe_load(text.split("---\n")[1])


def card_ap() -> float:
    metrics = card_metadata()["model-index"][0]["results"][0]["metrics"]
    return next(metric["value"] for metric in metrics if metric["type"] == "AP")


def test_bundled_files_are_small_and_complete():
    names = {path.name for path in BUNDLED.iterdir()}
    assert {"config.json", "model.safetensors", "video_preprocessor_config.json", "README.md", "modeling_vistr.py"} <= names
    assert (BUNDLED / "model.safetensors").stat().st_size <= 15 * 2**20
    assert SAMPLE.stat().st_size <= 500 * 2**10
    from safetensors import safe_open

    with safe_open(BUNDLED / "model.safetensors", "pt") as weights:
        assert {str(weights.get_slice(name).get_dtype()) for name in weights.keys()} <= {"F16", "I64"}  # noqa: SIM118 (safe_open is not iterable)


def test_readme_first_command_segments_the_sample_video(tmp_path):
    """`vistr segment` with no arguments: results JSON + overlay in ./vistr-output, found instances printed."""
    environment = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    completed = subprocess.run(
        [sys.executable, "-c", "import sys; sys.argv = ['vistr', 'segment']; from vistr.tools import cli; cli.main()"],
        check=False, cwd=tmp_path, env=environment | {"PYTHONPATH": str(REPO_ROOT)}, capture_output=True, text=True,
        timeout=600,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    output = tmp_path / "vistr-output"
    results = json.loads((output / "results.json").read_text())
    length = sum(1 for _ in iter_frames(SAMPLE))
    assert results and all(len(result["segmentations"]) == length for result in results)
    assert {result["video_id"] for result in results} == {1}
    overlay_frames = list(iter_frames(output / "overlay.mp4"))
    assert len(overlay_frames) == length
    assert overlay_frames[0].size == next(iter_frames(SAMPLE)).size
    assert "instances with score >=" in completed.stdout and "results:" in completed.stdout
    scored = subprocess.run(
        [sys.executable, "-m", "vistr.tools.cli", "evaluate", "--annotations", str(SAMPLE_TRUTH),
         "--results", str(output / "results.json")],
        check=False, cwd=tmp_path, env=environment | {"PYTHONPATH": str(REPO_ROOT)}, capture_output=True, text=True,
        timeout=600,
    )  # fmt: skip
    assert scored.returncode == 0, scored.stderr[-3000:]
    assert 0.0 <= json.loads(scored.stdout.strip().splitlines()[-1])["AP"] <= 1.0


def test_sample_ground_truth_describes_the_written_video():
    """The H.264 writer keeps even sides only: the ground truth must have the decoded video's size and masks."""
    import numpy as np
    from pycocotools import mask as mask_utils

    truth = json.loads(SAMPLE_TRUTH.read_text())
    width, height = next(iter_frames(SAMPLE)).size
    length = sum(1 for _ in iter_frames(SAMPLE))
    assert [(video["width"], video["height"], video["length"]) for video in truth["videos"]] == [(width, height, length)]
    for annotation in truth["annotations"]:
        assert (annotation["width"], annotation["height"]) == (width, height)
        for rle, area in zip(annotation["segmentations"], annotation["areas"]):
            if rle is not None:
                assert rle["size"] == [height, width]
                assert area == int(np.asarray(mask_utils.decode(rle)).sum())


@pytest.mark.slow
def test_bundled_model_keeps_the_ap_of_its_card(tmp_path):
    """Scored again on the card's held-out split (made by the generator, scored by our official-equal evaluator)."""
    packaging = import_script(ASSETS / "package_bundled_model.py")

    split = card_metadata()["model-index"][0]["results"][0]["dataset"]["split"]
    assert split == packaging.held_out_split(packaging.HELD_OUT_SEED, packaging.HELD_OUT_VIDEOS)
    metrics = packaging.evaluate_folder(BUNDLED, packaging.HELD_OUT_SEED, packaging.HELD_OUT_VIDEOS)
    assert metrics["AP"] >= card_ap() - 0.02


def test_the_bundled_code_is_the_package_code_held_once():
    """The folder's code files link to the package's own (so the repository holds every line once), and they
    are all the code `save_pretrained` would copy beside the weights."""
    from vistr.tools.outputs import _model_code_files, foreign_model_folder

    code = sorted(path for path in BUNDLED.iterdir() if path.suffix == ".py")
    assert [path.name for path in code] == sorted(_model_code_files())
    for path in code:
        assert path.is_symlink() and path.resolve() == REPO_ROOT / path.name, path
    assert foreign_model_folder(BUNDLED) is None  # repackaging may replace it


def test_a_model_folder_whose_code_links_elsewhere_is_not_ours(tmp_path):
    from vistr.tools.outputs import foreign_model_folder

    folder = shutil.copytree(BUNDLED, tmp_path / "model")  # the code as copies, as save_pretrained writes it
    assert foreign_model_folder(folder) is None
    (tmp_path / "modeling_vistr.py").write_text("# someone else's code\n")
    (folder / "modeling_vistr.py").unlink()
    (folder / "modeling_vistr.py").symlink_to(tmp_path / "modeling_vistr.py")
    assert "modeling_vistr.py, which is a link" in foreign_model_folder(folder)
