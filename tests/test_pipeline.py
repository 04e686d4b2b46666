"""Videos of any length: clip linking against known tracks, the pipeline and `vistr segment` end to end."""

from __future__ import annotations

import json
import subprocess
import sys
from fractions import Fraction
from types import SimpleNamespace

import av
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from vistr.configuration_vistr import VisTRConfig
from vistr.image_processing_vistr import VisTRVideoProcessor
from vistr.tools.model_card import save_model_folder
from vistr.modeling_vistr import VisTRForVideoInstanceSegmentation
from vistr.pipeline_vistr import VideoInstanceSegmentationPipeline, VideoSegmenter, decode_masks
from vistr.tools.video_writer import write_video
from vistr.video_io import VideoReadError, iter_frames

RED_STEP = 60  # instance k is painted with red = 60 * k on a black background


class OracleModel(nn.Module):
    """Stands in for VisTR: reads each instance's mask from its colour, but puts the instances in
    different slots in every clip, so that only linking by mask IoU can keep their ids."""

    def __init__(self, num_frames: int, slots: int = 5, instances: int = 3):
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


def moving_squares(length: int, height: int = 64, width: int = 96) -> tuple[np.ndarray, dict[int, np.ndarray]]:
    """Three squares in their own rows moving right; 2 enters at frame 2, 3 enters half way and leaves before the end."""
    video = np.zeros((length, height, width, 3), dtype=np.uint8)
    truth = {k: np.zeros((length, height, width), dtype=bool) for k in (1, 2, 3)}
    lifetimes = {1: range(length), 2: range(min(2, length - 1), length), 3: range(length // 2, max(length // 2 + 1, length - 1))}
    for k, frames in lifetimes.items():
        for t in frames:
            x = (5 + 4 * t + 10 * k) % (width - 20)
            y = 2 + (k - 1) * 21
            video[t, y : y + 18, x : x + 18, 0] = RED_STEP * k
            truth[k][t, y : y + 18, x : x + 18] = True
    return video, truth


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 0.0


@pytest.mark.parametrize("flips", [None, ["horizontal", "vertical", "both"]])
@pytest.mark.parametrize("length", [1, 3, 4, 7, 9, 13])
def test_clips_are_linked_into_one_track_per_instance(length, flips):
    """Also with test-time flips: every view puts the instances in other slots, so the views' slots must be
    matched before they are averaged."""
    video, truth = moving_squares(length)
    model = OracleModel(num_frames=4)
    processor = VisTRVideoProcessor(size={"shortest_edge": 64}, test_time_flips=flips)
    segmenter = VideoSegmenter(model, processor, stride=3)
    result = segmenter(video)
    assert model.clips == segmenter.clip_count(length) * (1 + len(flips or []))
    assert (result["length"], result["height"], result["width"]) == (length, 64, 96)
    tracks = {inst["id"]: decode_masks(inst["segmentations"], 64, 96) for inst in result["instances"]}
    labels = {inst["id"]: inst["label"] for inst in result["instances"]}
    present = {k: m for k, m in truth.items() if m.any()}
    assert len(tracks) == len(present), "one track per instance, no duplicates"
    for k, masks in present.items():
        frames = [t for t in range(length) if masks[t].any()]
        owners = {track_id for t in frames for track_id, track in tracks.items() if iou(track[t], masks[t]) > 0.5}
        assert len(owners) == 1, f"instance {k} is split over tracks {owners}"
        owner = owners.pop()
        assert labels[owner] == k
        assert all(iou(tracks[owner][t], masks[t]) > 0.6 for t in frames)


def test_every_clip_covers_the_model_length_and_the_video_end():
    segmenter = VideoSegmenter(OracleModel(num_frames=4), VisTRVideoProcessor(), stride=3)
    assert [segmenter.clip_count(n) for n in (1, 4, 5, 7, 8, 10)] == [1, 1, 2, 2, 3, 3]
    with pytest.raises(ValueError, match="stride=5"):
        VideoSegmenter(OracleModel(num_frames=4), VisTRVideoProcessor(), stride=5)


@pytest.fixture(scope="module")
def fixture_model_folder(tiny_model, tmp_path_factory):
    folder = tmp_path_factory.mktemp("vistr-tiny")
    save_model_folder(tiny_model, folder, VisTRVideoProcessor(size={"shortest_edge": 128, "longest_edge": 640}))
    return folder


def test_pipeline_on_the_parity_video_gives_the_original_results(fixture_model_folder, parity_inputs, parity_dir):
    from transformers import pipeline

    pipe = pipeline("video-instance-segmentation", model=str(fixture_model_folder), dtype=torch.float64, trust_remote_code=True)
    instances = pipe(parity_inputs["raw_video_uint8"], mask_format="rle", threshold=0.0)  # every slot, as the original
    expected = json.loads((parity_dir / "postprocess.json").read_text())
    assert len(instances) == len(expected)
    for ours, theirs in zip(instances, expected):
        assert ours["label"] == theirs["category_id"] and ours["segmentations"] == theirs["segmentations"]
        assert abs(ours["score"] - theirs["score"]) <= 1e-9
        assert ours["label_name"] == pipe.model.config.id2label[theirs["category_id"]]


def test_pipeline_lists_frames_and_dtype(fixture_model_folder, parity_inputs):
    pipe = VideoInstanceSegmentationPipeline(
        model=VisTRForVideoInstanceSegmentation.from_pretrained(fixture_model_folder).eval(),
        video_processor=VisTRVideoProcessor(size={"shortest_edge": 128}), device="cpu",
    )  # fmt: skip
    video = parity_inputs["raw_video_uint8"].numpy()
    results = pipe([video, video[:2]], threshold=0.0)
    assert len(results) == 2 and results[1][0]["masks"].shape == (2, 200, 250)
    as_frames = pipe([Image.fromarray(frame) for frame in video[:3]], threshold=0.0)  # a list of frames is one video
    assert as_frames and as_frames[0]["masks"].shape == (3, 200, 250)
    pipe.model.to(torch.bfloat16)
    low_precision = pipe(video, threshold=0.0)
    assert low_precision and low_precision[0]["masks"].dtype == torch.bool


def write_mp4(path, frames: np.ndarray) -> None:
    write_video((Image.fromarray(frame) for frame in frames), path, fps=5)


def run_cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "vistr.tools.cli", *map(str, args)], capture_output=True, text=True, cwd=cwd)


def test_cli_writes_results_and_overlays(fixture_model_folder, parity_inputs, tmp_path):
    video = parity_inputs["raw_video_uint8"].numpy()
    write_mp4(tmp_path / "clip.mp4", np.concatenate([video, video[::-1]]))  # 8 frames: two clips of the 4-frame model
    frames = tmp_path / "frames"
    frames.mkdir()
    for index, frame in enumerate(video[:3]):
        Image.fromarray(frame).save(frames / f"{index:05d}.jpg")
    done = run_cli("segment", tmp_path / "clip.mp4", frames, "--model", fixture_model_folder, "--output", tmp_path / "out" / "results.json",
                   "--overlay", tmp_path / "out" / "overlay.gif", "--threshold", "0", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert {r["video_id"] for r in results} == {1, 2}
    for result in results:
        length = 8 if result["video_id"] == 1 else 3
        assert len(result["segmentations"]) == length and 0 <= result["score"] <= 1
        assert all(s is None or s["size"] == [200, 250] and isinstance(s["counts"], str) for s in result["segmentations"])
    for name, length in (("overlay-clip.gif", 8), ("overlay-frames.gif", 3)):
        decoded = list(iter_frames(tmp_path / "out" / name))
        assert len(decoded) == length and decoded[0].size == (250, 200)

    mp4 = run_cli("segment", tmp_path / "clip.mp4", "--model", fixture_model_folder, "--output", tmp_path / "one.json",
                  "--overlay", tmp_path / "one.mp4", cwd=tmp_path)
    assert mp4.returncode == 0, mp4.stderr[-2000:]
    decoded = list(iter_frames(tmp_path / "one.mp4"))
    assert len(decoded) == 8 and decoded[0].size == (250, 200)


def test_cli_refuses_bad_videos_and_writes_nothing(fixture_model_folder, tmp_path):
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 8)
    empty = tmp_path / "empty.mp4"
    with av.open(str(empty), mode="w") as container:  # a valid container holding no frame
        stream = container.add_stream("mpeg4", rate=Fraction(5))
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        container.start_encoding()
    folder = tmp_path / "no-frames"
    folder.mkdir()
    for bad, message in ((corrupt, "cannot open video|decoding failed"), (empty, "no frames"), (folder, "no frames found")):
        output = tmp_path / f"{bad.stem}.json"
        done = run_cli("segment", bad, "--model", fixture_model_folder, "--output", output, "--overlay", tmp_path / "o.gif", cwd=tmp_path)
        assert done.returncode != 0
        assert "error:" in done.stderr and any(m in done.stderr for m in message.split("|")), done.stderr[-500:]
        assert not output.exists() and not (tmp_path / "o.gif").exists()
    with pytest.raises(VideoReadError):
        list(iter_frames(corrupt))
