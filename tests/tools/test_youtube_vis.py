"""tools/youtube_vis.py, YouTube-VIS data: the synthetic generator, the folder loader, parquet round trip, splits,
bad input (the training sources made of them: test_data_sources.py).

Expected values come from the files themselves (decoded masks, JPEG pixels read with PIL) or from
hand-written annotation files, never from the loader's own output.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import datasets
import numpy as np
import pytest
from conftest import SYNTHETIC_SET_SEED as SEED
from conftest import SYNTHETIC_SET_VIDEOS as NUM_VIDEOS
from conftest import own_dataset, synthetic_set_options
from PIL import Image
from pycocotools import mask as mask_utils
from vistr.tools import cli as vistr_cli
from vistr.tools.outputs import UsageError
from vistr.tools.youtube_vis import (
    AnnotationError,
    SyntheticOptions,
    YouTubeVISError,
    load_youtube_vis,
    make_synthetic,
    save_parquet,
    split_by_video_id,
    synthetic_annotations,
    synthetic_categories,
)

def folder_bytes(root: Path) -> dict[str, bytes]:
    return {str(path.relative_to(root)): path.read_bytes() for path in sorted(root.rglob("*")) if path.is_file()}


def decode(rle: dict) -> np.ndarray:
    return mask_utils.decode(rle).astype(bool)


def bbox_of(mask: np.ndarray) -> list[float]:
    rows, columns = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    return [float(columns[0]), float(rows[0]), float(columns[-1] - columns[0] + 1), float(rows[-1] - rows[0] + 1)]


# ----------------------------------------------------------------------------------------------------------
# Synthetic generator
# ----------------------------------------------------------------------------------------------------------


def test_make_synthetic_is_deterministic_for_a_seed(tmp_path, synthetic_set):
    make_synthetic(tmp_path / "again", NUM_VIDEOS, SEED, synthetic_set_options(), progress=False)
    make_synthetic(tmp_path / "other", NUM_VIDEOS, SEED + 1, synthetic_set_options(), progress=False)
    assert folder_bytes(tmp_path / "again") == folder_bytes(synthetic_set)
    other = json.loads((tmp_path / "other" / "annotations.json").read_text())
    assert other["annotations"] != json.loads((synthetic_set / "annotations.json").read_text())["annotations"]


def test_synthetic_annotation_file_is_youtube_vis(synthetic_set, synthetic_set_json):
    assert synthetic_set_json["categories"] == synthetic_categories()
    assert [video["id"] for video in synthetic_set_json["videos"]] == list(range(1, NUM_VIDEOS + 1))
    videos = {video["id"]: video for video in synthetic_set_json["videos"]}
    for video in synthetic_set_json["videos"]:
        assert set(video) >= {"id", "width", "height", "length", "file_names"}
        assert len(video["file_names"]) == video["length"]
        for name in video["file_names"]:
            with Image.open(synthetic_set / "JPEGImages" / name) as image:
                assert (image.format, image.mode, image.size) == ("JPEG", "RGB", (video["width"], video["height"]))
    for annotation in synthetic_set_json["annotations"]:
        video = videos[annotation["video_id"]]
        assert annotation["iscrowd"] == 0
        assert 1 <= annotation["category_id"] <= len(synthetic_categories())
        for field in ("segmentations", "areas", "bboxes"):
            assert len(annotation[field]) == video["length"]
        for rle, area, bbox in zip(annotation["segmentations"], annotation["areas"], annotation["bboxes"]):
            if rle is None:
                assert area is None and bbox is None  # not visible: null everywhere, as in YouTube-VIS
                continue
            assert isinstance(rle["counts"], str) and rle["size"] == [video["height"], video["width"]]
            mask = decode(rle)
            assert area == int(mask.sum()) > 0
            assert bbox == bbox_of(mask)


def test_synthetic_set_has_what_a_tracker_must_handle(synthetic_set_json):
    videos = synthetic_set_json["videos"]
    annotations = synthetic_set_json["annotations"]
    assert len({video["length"] for video in videos}) > 2
    assert len({(video["height"], video["width"]) for video in videos}) > len(videos) // 2
    assert len({annotation["category_id"] for annotation in annotations}) >= 3
    # Instances enter or leave: some tracks have frames without a mask.
    assert any(rle is None for annotation in annotations for rle in annotation["segmentations"])
    # Occlusion: masks of one frame never overlap (the front shape hides the others), yet their boxes do.
    overlapping_boxes = False
    for video in videos:
        tracks = [annotation for annotation in annotations if annotation["video_id"] == video["id"]]
        for frame in range(video["length"]):
            present = [track for track in tracks if track["segmentations"][frame] is not None]
            masks = np.stack([decode(track["segmentations"][frame]) for track in present]) if present else None
            if masks is not None:
                assert masks.sum(axis=0).max() <= 1
            boxes = [track["bboxes"][frame] for track in present]
            overlapping_boxes |= any(
                a[0] < b[0] + b[2] and b[0] < a[0] + a[2] and a[1] < b[1] + b[3] and b[1] < a[1] + a[3]
                for i, a in enumerate(boxes)
                for b in boxes[i + 1 :]
            )
    assert overlapping_boxes


def test_synthetic_annotations_without_pixels_match_the_written_file(synthetic_set_json):
    assert synthetic_annotations(NUM_VIDEOS, SEED, synthetic_set_options()) == synthetic_set_json


def test_make_synthetic_refuses_a_non_empty_folder(tmp_path):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "keep.txt").write_text("mine")
    with pytest.raises(UsageError, match="already exists and is not empty"):
        make_synthetic(tmp_path / "taken", 1, progress=False)
    assert [path.name for path in tmp_path.iterdir()] == ["taken"]  # nothing half-written left beside it
    assert (tmp_path / "taken" / "keep.txt").read_text() == "mine"


def test_cli_make_synthetic(tmp_path, capsys):
    out = tmp_path / "cli-set"
    sizes = ["--min-frames", "2", "--max-frames", "4", "--min-side", "32", "--max-side", "48", "--max-instances", "2"]
    vistr_cli.main(["make-synthetic", str(out), "--videos", "3", "--seed", "7", *sizes])
    options = SyntheticOptions(min_frames=2, max_frames=4, min_side=32, max_side=48, max_instances=2)
    assert json.loads((out / "annotations.json").read_text()) == synthetic_annotations(3, 7, options)
    assert "wrote 3 synthetic videos" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:
        vistr_cli.main(["make-synthetic", str(out), "--videos", "3"])
    assert exit_info.value.code == 2  # an unusable output path is a bad argument
    assert capsys.readouterr().err == f"error: OUT {out} already exists and is not empty; choose a new folder\n"


# ----------------------------------------------------------------------------------------------------------
# Loader, splits, parquet
# ----------------------------------------------------------------------------------------------------------


def expected_segmentation(segmentation):
    if segmentation is None:
        return None
    return {"counts": segmentation["counts"], "size": segmentation["size"], "polygons": None}


def assert_rows_match_file(dataset: datasets.Dataset, data: dict, root: Path) -> None:
    names = [category["name"] for category in sorted(data["categories"], key=lambda category: category["id"])]
    assert dataset.features["instances"].feature["label"].names == names
    assert len(dataset) == len(data["videos"])
    for row, video in zip(dataset, data["videos"]):
        assert (row["video_id"], row["width"], row["height"]) == (video["id"], video["width"], video["height"])
        assert (row["length"], row["file_names"]) == (video["length"], video["file_names"])
        for frame, name in zip(row["frames"], video["file_names"], strict=True):
            with Image.open(root / "JPEGImages" / name) as image:
                assert np.array_equal(np.asarray(frame), np.asarray(image))
        annotations = [annotation for annotation in data["annotations"] if annotation["video_id"] == video["id"]]
        assert len(row["instances"]) == len(annotations)
        for instance, annotation in zip(row["instances"], annotations):
            assert instance["id"] == annotation["id"]
            assert instance["category_id"] == annotation["category_id"]
            assert names[instance["label"]] == names[annotation["category_id"] - 1]
            assert instance["segmentations"] == [expected_segmentation(rle) for rle in annotation["segmentations"]]
            assert instance["areas"] == annotation["areas"]
            assert instance["bboxes"] == annotation["bboxes"]


def test_loader_reads_the_synthetic_folder(synthetic_set, synthetic_set_json):
    dataset = load_youtube_vis(synthetic_set)
    assert_rows_match_file(dataset, synthetic_set_json, synthetic_set)


def test_parquet_round_trip_stands_alone(tmp_path, synthetic_set, synthetic_set_json):
    copy_root = tmp_path / "copy"
    shutil.copytree(synthetic_set, copy_root)
    dataset = load_youtube_vis(copy_root)
    path = save_parquet(dataset, tmp_path / "ytvis.parquet")
    shutil.rmtree(copy_root / "JPEGImages")  # the parquet file must carry the frames itself
    loaded = datasets.load_dataset("parquet", data_files=str(path), split="train", cache_dir=str(tmp_path / "cache"))
    assert loaded.features == dataset.features
    assert_rows_match_file(loaded, synthetic_set_json, synthetic_set)
    with pytest.raises(YouTubeVISError, match="already exists"):
        save_parquet(dataset, path)


def test_split_by_video_id_is_disjoint_and_seeded(synthetic_set):
    dataset = load_youtube_vis(synthetic_set)
    splits = split_by_video_id(dataset, validation_fraction=0.25, seed=1)
    train, validation = set(splits["train"]["video_id"]), set(splits["validation"]["video_id"])
    assert train.isdisjoint(validation) and train | validation == set(range(1, NUM_VIDEOS + 1))
    assert len(validation) == 2
    shuffled = dataset.shuffle(seed=0)
    assert set(split_by_video_id(shuffled, validation_fraction=0.25, seed=1)["validation"]["video_id"]) == validation
    with pytest.raises(YouTubeVISError, match="validation_fraction"):
        split_by_video_id(dataset, validation_fraction=1.5)


def test_categories_and_segmentation_forms_come_from_the_file(tmp_path):
    data = own_dataset(tmp_path)
    row = load_youtube_vis(tmp_path)[0]
    features = load_youtube_vis(tmp_path).features
    assert features["instances"].feature["label"].names == ["ant", "zebra"]  # ordered by id, named by the file
    zebra, ant = row["instances"]
    assert (zebra["category_id"], zebra["label"], ant["category_id"], ant["label"]) == (10, 1, 2, 0)
    polygons = data["annotations"][0]["segmentations"][0]
    assert zebra["segmentations"][0] == {"counts": None, "size": None, "polygons": polygons}
    assert zebra["segmentations"][1] is None and ant["segmentations"][0] is None
    expected = np.zeros((6, 8), dtype=bool)
    expected[1:4, 1] = True
    expected[0:3, 2] = True
    assert ant["segmentations"][1]["size"] == [6, 8]
    assert np.array_equal(decode(ant["segmentations"][1]), expected)  # compressed losslessly
    assert ant["iscrowd"] == 1 and ant["bboxes"] == [None, [1.0, 0.0, 2.0, 4.0]]


def drop_frame_file(root, data):
    (root / "JPEGImages" / "clip" / "1.jpg").unlink()


def unlisted_video(root, data):
    data["annotations"][1]["video_id"] = 9


def unlisted_category(root, data):
    data["annotations"][0]["category_id"] = 3


def no_file_names(root, data):
    del data["videos"][0]["file_names"]


def no_category_name(root, data):
    del data["categories"][1]["name"]


def wrong_rle_size(root, data):
    data["annotations"][1]["segmentations"][1] = {"size": [8, 6], "counts": [48]}


def too_few_areas(root, data):
    data["annotations"][0]["areas"] = [15.0]


def short_polygon(root, data):
    data["annotations"][0]["segmentations"][0] = [[1.0, 1.0, 6.0, 1.0]]


def file_name_outside(root, data):
    shutil.copy(root / "JPEGImages" / "clip" / "1.jpg", root / "outside.jpg")  # exists, but is not to be read
    data["videos"][0]["file_names"][1] = "../outside.jpg"


@pytest.mark.parametrize(
    "corrupt, message",
    [
        (drop_frame_file, r"video 5: .*clip/1.jpg does not exist"),
        (unlisted_video, "annotation 2 is for video 9, which is not listed"),
        (unlisted_category, r"annotation 1 \(video 5\) has category 3, which is not listed"),
        (no_file_names, 'video 5 has no "file_names" field'),
        (no_category_name, 'category 2 has no "name" field'),
        (wrong_rle_size, r"annotation 2 \(video 5\), frame 1: RLE size \[8, 6\] is not the video's"),
        (too_few_areas, r'annotation 1 \(video 5\) has 1 "areas" for a video of 2 frames'),
        (short_polygon, r"annotation 1 \(video 5\), frame 0: a polygon must be"),
        (file_name_outside, r"video 5: file name '../outside.jpg' leaves the image folder"),
    ],
)
def test_loader_errors_name_the_video_or_annotation(tmp_path, corrupt, message):
    data = own_dataset(tmp_path)
    corrupt(tmp_path, data)
    (tmp_path / "annotations.json").write_text(json.dumps(data))
    with pytest.raises(AnnotationError, match=message):
        load_youtube_vis(tmp_path)
