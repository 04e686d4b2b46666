"""`vistr segment --annotations`: a whole synthetic split, resumed, on two processes, with bad input."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from vistr.configuration_vistr import VisTRConfig
from vistr.tools.model_card import save_model_folder
from vistr.modeling_vistr import VisTRForVideoInstanceSegmentation
from vistr.tools import cli as vistr_cli
from vistr.tools import youtube_vis_inference
from vistr.tools.evaluation_youtube_vis import evaluate
from vistr.tools.youtube_vis import SyntheticOptions, make_synthetic, synthetic_categories

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def split(tmp_path_factory):
    root = tmp_path_factory.mktemp("split") / "synthetic"
    options = SyntheticOptions(min_frames=2, max_frames=6, min_side=48, max_side=80, max_instances=2)
    annotation_file = make_synthetic(root, num_videos=5, seed=7, options=options, progress=False)
    return annotation_file, root / "JPEGImages"


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory):
    """A small random VisTR whose masks are positive, so that every slot yields an instance."""
    torch.manual_seed(0)
    id2label = {0: "N/A"} | {c["id"]: c["name"] for c in synthetic_categories()}
    config = VisTRConfig(backbone="resnet18", num_frames=3, encoder_layers=1, decoder_layers=1, ffn_dim=64,
                         num_queries_per_frame=2, id2label=id2label)  # fmt: skip
    model = VisTRForVideoInstanceSegmentation(config).eval()
    with torch.no_grad():
        model.instance_head.out_conv.bias.fill_(1.0)
    folder = tmp_path_factory.mktemp("model") / "tiny"
    save_model_folder(model, folder)
    return folder


def segment_split(split, model_folder, output: Path, *extra: str) -> None:
    annotation_file, frames_root = split
    vistr_cli.main(["segment", "--annotations", str(annotation_file), "--frames-root", str(frames_root),
                    "--model", str(model_folder), "--output", str(output), "--device", "cpu", *extra])  # fmt: skip


def test_whole_split_results_zip_and_scores(split, model_folder, tmp_path, capsys):
    output = tmp_path / "results.json"
    segment_split(split, model_folder, output, "--zip", str(tmp_path / "results.zip"), "--evaluate")
    printed = capsys.readouterr().out.strip().splitlines()
    annotations = json.loads(split[0].read_text())
    results = json.loads(output.read_text())
    lengths = {video["id"]: len(video["file_names"]) for video in annotations["videos"]}
    assert {result["video_id"] for result in results} == set(lengths)
    for result in results:
        assert len(result["segmentations"]) == lengths[result["video_id"]]
        assert result["category_id"] in {c["id"] for c in annotations["categories"]} | {0}
    with zipfile.ZipFile(tmp_path / "results.zip") as archive:
        assert archive.namelist() == ["results.json"] and archive.read("results.json") == output.read_bytes()
    assert json.loads(printed[-1]) == evaluate(split[0], output)
    assert any("model-only FPS" in line for line in printed)
    assert not output.with_name("results.json.parts").exists()


def test_interrupted_run_resumes_and_writes_the_same_file(split, model_folder, tmp_path, monkeypatch):
    straight = tmp_path / "straight.json"
    segment_split(split, model_folder, straight)

    calls = []
    original_call = youtube_vis_inference.VideoSegmenter.__call__

    def interrupted(self, source, **kwargs):
        calls.append(source)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return original_call(self, source, **kwargs)

    resumed = tmp_path / "resumed.json"
    monkeypatch.setattr(youtube_vis_inference.VideoSegmenter, "__call__", interrupted)
    with pytest.raises(SystemExit) as exit_info:  # Ctrl-C: one line, exit code 130
        segment_split(split, model_folder, resumed)
    assert exit_info.value.code == 130
    assert not resumed.exists()
    assert len(list(resumed.with_name("resumed.json.parts").glob("video-*.json"))) == 2

    calls.clear()
    monkeypatch.setattr(youtube_vis_inference.VideoSegmenter, "__call__",
                        lambda self, source, **kw: calls.append(source) or original_call(self, source, **kw))
    segment_split(split, model_folder, resumed)
    assert len(calls) == 3  # only the videos not finished before
    assert resumed.read_bytes() == straight.read_bytes()


def test_two_processes_write_the_file_of_one(split, model_folder, tmp_path):
    single = tmp_path / "single.json"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each torchrun worker (OMP_NUM_THREADS=1): the same summation order
    try:
        segment_split(split, model_folder, single)
    finally:
        torch.set_num_threads(threads)
    double = tmp_path / "double.json"
    annotation_file, frames_root = split
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517",
               "-m", "vistr.tools.cli", "segment", "--annotations", str(annotation_file), "--frames-root", str(frames_root),
               "--model", str(model_folder), "--output", str(double), "--device", "cpu"]  # fmt: skip
    # one thread per worker, as for the reference above, whatever OMP_NUM_THREADS the caller has set
    env = {key: value for key, value in os.environ.items() if key not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env["OMP_NUM_THREADS"] = "1"
    finished = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert finished.returncode == 0, finished.stderr[-4000:]
    assert double.read_bytes() == single.read_bytes()
    assert "| 2 |" in finished.stdout  # the speed table counts both processes


def test_resuming_in_another_dtype_is_refused(split, model_folder, tmp_path, monkeypatch):
    output = tmp_path / "mixed.json"
    original_call = youtube_vis_inference.VideoSegmenter.__call__
    calls = []

    def interrupted(self, source, **kwargs):
        calls.append(source)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return original_call(self, source, **kwargs)

    monkeypatch.setattr(youtube_vis_inference.VideoSegmenter, "__call__", interrupted)
    with pytest.raises(SystemExit):
        segment_split(split, model_folder, output)  # fp32: one video done
    monkeypatch.setattr(youtube_vis_inference.VideoSegmenter, "__call__", original_call)
    message = segment_error(split, model_folder, output, "--dtype", "bf16")
    assert "dtype 'float32' there, 'bfloat16' now" in message and "delete it" in message
    assert not output.exists() and len(list(output.with_name("mixed.json.parts").glob("video-*.json"))) == 1


def segment_error(split, model_folder, output: Path, *extra: str) -> str:
    """The message `vistr segment` exits with."""
    with pytest.raises(SystemExit) as exit_info:
        segment_split(split, model_folder, output, *extra)
    return str(exit_info.value.code)


def test_bad_input_names_the_problem_and_leaves_nothing(split, model_folder, tmp_path):
    annotation_file, frames_root = split
    annotations = json.loads(annotation_file.read_text())
    no_videos = tmp_path / "no_videos.json"
    no_videos.write_text(json.dumps({"categories": annotations["categories"]}))
    assert 'no "videos" list' in segment_error((no_videos, frames_root), model_folder, tmp_path / "a.json")

    broken_root = tmp_path / "frames"
    shutil.copytree(frames_root, broken_root)
    victim = annotations["videos"][1]
    (broken_root / victim["file_names"][-1]).unlink()
    message = segment_error((annotation_file, broken_root), model_folder, tmp_path / "b.json")
    assert f"video {victim['id']}" in message and victim["file_names"][-1] in message
    assert not (tmp_path / "b.json").exists()

    (broken_root / victim["file_names"][-1]).write_bytes(b"not a jpeg")
    message = segment_error((annotation_file, broken_root), model_folder, tmp_path / "c.json")
    assert f"video {victim['id']}" in message and "unreadable frame" in message
    assert not (tmp_path / "c.json").exists()

    many_classes = {**annotations, "categories": annotations["categories"] + [{"id": 90, "name": "extra"}]}
    many_classes_file = tmp_path / "many_classes.json"
    many_classes_file.write_text(json.dumps(many_classes))
    assert "categories [90]" in segment_error((many_classes_file, frames_root), model_folder, tmp_path / "d.json")

    string_ids = {**annotations, "videos": [{**video, "id": str(video["id"])} for video in annotations["videos"]]}
    string_ids_file = tmp_path / "string_ids.json"
    string_ids_file.write_text(json.dumps(string_ids))
    message = segment_error((string_ids_file, frames_root), model_folder, tmp_path / "e.json")
    assert message.startswith("error: ") and "video #0 has \"id\" '1'" in message and "integers" in message
