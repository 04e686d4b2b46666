"""tools/data_sources.py: the trainer's data from a YouTube-VIS folder, a parquet file or a `datasets` source;
the categories and the ground truth rebuilt from the rows; and a source that cannot train, named in one line.

Expected scores come from the annotation file itself (scored by the evaluator), never from the rows' own output.
"""

from __future__ import annotations

import json
import shutil

import datasets
import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import own_dataset
from pycocotools import mask as mask_utils
from vistr.tools.data_sources import DataSourceError, open_training_data, youtube_vis_annotations
from vistr.tools.evaluation_youtube_vis import score_results
from vistr.tools.youtube_vis import load_youtube_vis, save_parquet, split_by_video_id

def restricted(data: dict, video_ids: set[int]) -> dict:
    """The annotation file cut down to some videos, as the evaluator of a held-out split reads it."""
    return {
        **data,
        "videos": [video for video in data["videos"] if video["id"] in video_ids],
        "annotations": [annotation for annotation in data["annotations"] if annotation["video_id"] in video_ids],
    }


def imperfect_results(annotations: list[dict], num_categories: int) -> list[dict]:
    """Results made from ground truth, a third of them missing their first mask and a third in the wrong class,
    so that the scores are neither 0 nor 1."""
    results = []
    for number, annotation in enumerate(annotations):
        segmentations = list(annotation["segmentations"])
        if number % 3 == 1:
            first = next(frame for frame, segmentation in enumerate(segmentations) if segmentation)
            segmentations[first] = None
        category = annotation["category_id"] % num_categories + 1 if number % 3 == 2 else annotation["category_id"]
        score = 0.9 - 0.01 * number
        results.append({"video_id": annotation["video_id"], "category_id": category, "score": score,
                        "segmentations": segmentations})  # fmt: skip
    return results


def test_ground_truth_rebuilt_from_parquet_scores_as_the_annotation_file(tmp_path, synthetic_set, synthetic_set_json):
    path = save_parquet(load_youtube_vis(synthetic_set), tmp_path / "ytvis.parquet")
    reference = split_by_video_id(load_youtube_vis(synthetic_set), validation_fraction=0.5, seed=2)
    held_out = set(reference["validation"]["video_id"])
    truth = restricted(synthetic_set_json, held_out)
    results = imperfect_results(truth["annotations"], len(synthetic_set_json["categories"]))
    expected = score_results(truth, results)
    assert 0.0 < expected["AP"] < 1.0
    for streaming in (False, True):
        split = open_training_data(path, streaming=streaming, cache_dir=tmp_path / "cache").split(0.5, seed=2)
        assert set(split.validation["video_id"]) == held_out
        assert score_results(split.validation_truth, results) == expected


def test_parquet_keeps_every_category_id_and_segmentation_form(tmp_path):
    data = own_dataset(tmp_path / "own")
    data["categories"].append({"id": 7, "name": "yak"})  # no instance has it: only the features can keep its id
    (tmp_path / "own" / "annotations.json").write_text(json.dumps(data))
    dataset = load_youtube_vis(tmp_path / "own")
    path = save_parquet(dataset, tmp_path / "own.parquet")
    loaded = datasets.load_dataset("parquet", data_files=str(path), split="train", cache_dir=str(tmp_path / "cache"))
    assert loaded.features == dataset.features
    for source in (tmp_path / "own", path):
        opened = open_training_data(source, cache_dir=tmp_path / "cache")
        assert opened.categories == {2: "ant", 7: "yak", 10: "zebra"}
        assert opened.instances_per_video == 2.0
    mask = np.zeros((6, 8, 1), dtype=np.uint8)
    mask[1:4, 1:5] = 1  # most of the zebra's polygon (x 1..6, y 1..4)
    rle = mask_utils.encode(np.asfortranarray(mask))[0]
    segmentations = [{"size": rle["size"], "counts": rle["counts"].decode()}, None]
    results = [{"video_id": 5, "category_id": 10, "score": 0.8, "segmentations": segmentations}]
    expected = score_results(data, results)
    assert 0.0 < expected["AP"] < 1.0
    assert score_results(youtube_vis_annotations(opened.rows, opened.categories), results) == expected


def no_such_path(tmp_path, root):
    return tmp_path / "nowhere", None


def text_file(tmp_path, root):
    (tmp_path / "notes.txt").write_text("videos")
    return tmp_path / "notes.txt", None


def csv_folder(tmp_path, root):
    (tmp_path / "table").mkdir()
    (tmp_path / "table" / "rows.csv").write_text("a,b\n1,2\n")
    return tmp_path / "table", None


def frames_as_paths(tmp_path, root):
    dataset = load_youtube_vis(root)  # frames are paths into the folder: a parquet copy must not point there
    pq.write_table(dataset.with_format("arrow")[:].cast(dataset.features.arrow_schema), tmp_path / "paths.parquet")
    return tmp_path / "paths.parquet", None


def no_category_ids(tmp_path, root):
    dataset = load_youtube_vis(root)
    features = dataset.features.copy()
    features["instances"].feature["label"] = datasets.ClassLabel(names=features["instances"].feature["label"].names)
    return save_parquet(dataset.cast(features), tmp_path / "old.parquet"), None


def duplicate_video(tmp_path, root):
    dataset = load_youtube_vis(root)
    return save_parquet(datasets.concatenate_datasets([dataset, dataset.select([0])]), tmp_path / "twice.parquet"), None


def label_of_another_category(tmp_path, root):
    dataset = load_youtube_vis(root)

    def relabel(row: dict) -> dict:
        first = row["instances"][0]
        return {"instances": [{**first, "label": (first["label"] + 1) % 6}, *row["instances"][1:]]}

    return save_parquet(dataset.map(relabel), tmp_path / "relabelled.parquet"), None


def images_without_annotations(tmp_path, root):
    shutil.copytree(root / "JPEGImages", tmp_path / "frames_only" / "JPEGImages")
    return tmp_path / "frames_only", None


def annotations_with_parquet(tmp_path, root):
    return save_parquet(load_youtube_vis(root), tmp_path / "ytvis.parquet"), root / "annotations.json"


@pytest.mark.parametrize(
    "make, message",
    [
        (no_such_path, "nowhere does not exist; a training source is a YouTube-VIS folder"),
        (text_file, "notes.txt is a file but not a .parquet file; a training source is"),
        (csv_folder, "table has no video_id, width, height, length, file_names, frames, instances columns"),
        (frames_as_paths, "paths.parquet: a frame of video 1 is a path, not embedded bytes.*save_parquet"),
        (no_category_ids, r"old.parquet: its features do not record the category id.*save_parquet"),
        (duplicate_video, "twice.parquet: video id 1 is on several rows"),
        (label_of_another_category, "relabelled.parquet: instance 1 of video 1 has category_id .* but label"),
        (images_without_annotations, "frames_only has JPEGImages/ but no annotations.json"),
        (annotations_with_parquet, "an annotation file goes with a YouTube-VIS folder, and .*ytvis.parquet is not"),
    ],
)
def test_a_source_that_cannot_train_is_one_line_naming_it(tmp_path, synthetic_set, make, message):
    source, annotations = make(tmp_path, synthetic_set)
    with pytest.raises(DataSourceError, match=message) as raised:
        open_training_data(source, annotations, cache_dir=tmp_path / "cache")
    assert "\n" not in str(raised.value) and str(source) in str(raised.value)
