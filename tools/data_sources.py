"""Training data from any YouTube-VIS source: a folder, a parquet file, or what `datasets.load_dataset` opens.

    data = open_training_data("ytvis_2019/train")                     # folder: JPEGImages/ + annotations.json
    data = open_training_data("ytvis.parquet")                         # written by youtube_vis.save_parquet
    data = open_training_data("user/ytvis", streaming=True)            # a Hub id or local dataset folder
    split = data.split(validation_fraction=0.1, seed=0)
    split.train, split.validation, split.validation_truth              # rows, held-out rows, their ground truth

Whatever the source, the rows are in the schema of `youtube_vis.youtube_vis_features`, the categories
come from the features (which record each category's id with its name), and the evaluator's ground truth
is rebuilt from the held-out rows (`youtube_vis_annotations`), so the same data gives the same clips,
classes and metrics from every source. Sources other than a folder must embed their frames (as
`save_parquet` and `push_to_hub` do): a frame given only by a path would be read from wherever it points.
A streaming source is read once to list its videos (frames not decoded) and once more to keep its
held-out videos in memory; training then streams the rest (`training_data.VisTRClipStream`).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from vistr.tools.youtube_vis import (
    YouTubeVISError,
    load_youtube_vis,
    recorded_categories,
    split_by_video_id,
    validation_video_ids,
    youtube_vis_features,
)


class DataSourceError(YouTubeVISError):
    """A training data source that cannot be used; the message names it and what would work."""


ACCEPTED = (
    "a YouTube-VIS folder (JPEGImages/ + annotations.json), a parquet file written by save_parquet, or a "
    "dataset datasets.load_dataset opens (a local folder of data files or a Hub id) in the YouTube-VIS schema"
)
_HUB_ID = re.compile(r"[\w.-]+(/[\w.-]+)?")
_UNDECODED_FRAMES = datasets.List(datasets.Image(decode=False))
_INDEX_BATCH = 256


@dataclass(frozen=True)
class VideoIndex:
    """One entry per row (video), in row order: its id, frames and instances."""

    video_ids: np.ndarray
    lengths: np.ndarray
    instance_counts: np.ndarray


@dataclass(frozen=True)
class TrainingSplit:
    """Training rows, held-out rows and the held-out ground truth.

    `train`: a `datasets.Dataset` (for `VisTRClipDataset`) or, from a streaming source, a
    `datasets.IterableDataset` with undecoded frames (for `VisTRClipStream`). `train_lengths`: video id ->
    frames of the training videos in row order, which numbers their clips. `validation`: always a
    `datasets.Dataset`, so evaluating never streams the source again. `validation_truth`: the YouTube-VIS
    annotation file of the held-out videos, for `evaluation_youtube_vis.score_results`.
    """

    train: datasets.Dataset | datasets.IterableDataset
    train_lengths: dict[int, int]
    validation: datasets.Dataset
    validation_truth: dict


@dataclass(frozen=True)
class TrainingData:
    """Rows in the `youtube_vis_features` schema, their categories (id -> name, ids as the model's class
    indices) and the index of their videos."""

    source: str
    rows: datasets.Dataset | datasets.IterableDataset
    categories: dict[int, str]
    videos: VideoIndex

    @property
    def streaming(self) -> bool:
        """Whether the rows are a `datasets.IterableDataset` (train with `VisTRClipStream`)."""
        return isinstance(self.rows, datasets.IterableDataset)

    @property
    def instances_per_video(self) -> float:
        """Mean instance count over all videos (crowd ones included, as in the annotation file)."""
        return float(self.videos.instance_counts.mean())

    def split(self, validation_fraction: float, seed: int) -> TrainingSplit:
        """Hold out the videos `split_by_video_id` holds out (the same ids, streaming or not)."""
        held_out = validation_video_ids(self.videos.video_ids, validation_fraction, seed)
        is_train = ~np.isin(self.videos.video_ids, held_out)
        train_lengths = dict(zip(self.videos.video_ids[is_train].tolist(), self.videos.lengths[is_train].tolist()))
        if self.streaming:
            undecoded = self.rows.cast_column("frames", _UNDECODED_FRAMES)
            held = set(held_out.tolist())
            train = undecoded.filter(_is_held_out, input_columns="video_id", fn_kwargs={"held": held, "wanted": False})
            kept = undecoded.filter(_is_held_out, input_columns="video_id", fn_kwargs={"held": held, "wanted": True})
            validation = datasets.Dataset.from_list(list(kept), features=self.rows.features)
        else:
            splits = split_by_video_id(self.rows, validation_fraction, seed)
            train, validation = splits["train"], splits["validation"]
        truth = youtube_vis_annotations(validation, self.categories)
        return TrainingSplit(train=train, train_lengths=train_lengths, validation=validation, validation_truth=truth)


def _is_held_out(video_id: int, held: set[int], wanted: bool) -> bool:
    """Whether the video's being held out is `wanted`: a stream filter, a module function so that DataLoader
    workers can unpickle it."""
    return (video_id in held) == wanted


def open_training_data(
    source: str | os.PathLike,
    annotations: str | os.PathLike | None = None,
    *,
    streaming: bool = False,
    split: str = "train",
    cache_dir: str | os.PathLike | None = None,
) -> TrainingData:
    """Open `source` (see `ACCEPTED`) as training data, map-style or `streaming`.

    `annotations`: a folder's annotation file when it is not FOLDER/annotations.json; other sources carry
    their annotations in their rows. `split`: the split of a `load_dataset` source to train on (the held-out
    videos are drawn from it by `TrainingData.split`). `cache_dir`: datasets' cache for `load_dataset`.
    """
    name = str(source)
    path = Path(source)
    is_folder = path.is_dir() and (annotations is not None or (path / "annotations.json").is_file())
    if not is_folder and (path / "JPEGImages").is_dir():
        raise DataSourceError(f"{name} has JPEGImages/ but no annotations.json; give its annotation file")
    if annotations is not None and not is_folder:
        raise DataSourceError(f"an annotation file goes with a YouTube-VIS folder, and {name} is not one")
    if is_folder:
        rows = load_youtube_vis(path, annotations)
        rows = rows.to_iterable_dataset() if streaming else rows
    else:
        rows = _load_dataset(name, path, streaming=streaming, split=split, cache_dir=cache_dir)
    categories = _categories(rows.features, name)
    videos = _video_index(rows, categories, name, embedded_frames=not is_folder)
    return TrainingData(source=name, rows=rows, categories=categories, videos=videos)


def _load_dataset(
    name: str, path: Path, *, streaming: bool, split: str, cache_dir: str | os.PathLike | None
) -> datasets.Dataset | datasets.IterableDataset:
    """`datasets.load_dataset` on a parquet file, a local dataset folder or a Hub id; anything else, and any
    failure to load, is one `DataSourceError` naming the source."""
    if path.is_file() and path.suffix == ".parquet":
        arguments = {"path": "parquet", "data_files": str(path)}
    elif path.is_dir() or (not path.exists() and _HUB_ID.fullmatch(name) and not name.startswith(".")):
        arguments = {"path": name}
    else:
        problem = "is a file but not a .parquet file" if path.exists() else "does not exist"
        raise DataSourceError(f"{name} {problem}; a training source is {ACCEPTED}")
    cache = None if cache_dir is None else str(cache_dir)
    try:
        return datasets.load_dataset(**arguments, split=split, streaming=streaming, cache_dir=cache)
    except (FileNotFoundError, ValueError, ConnectionError) as error:
        cause = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise DataSourceError(f"datasets cannot open {name} ({cause}); a training source is {ACCEPTED}") from None


def _categories(features: datasets.Features | None, name: str) -> dict[int, str]:
    """The recorded categories, once the features are the YouTube-VIS schema's."""
    columns = list(youtube_vis_features({}))
    missing = [column for column in columns if features is None or column not in features]
    if missing:
        raise DataSourceError(
            f"{name} has no {', '.join(missing)} column{'s' if len(missing) > 1 else ''}; a training source is "
            f"{ACCEPTED}"
        )
    categories = recorded_categories(features)
    if categories is None:
        raise DataSourceError(
            f"{name}: its features do not record the category id of each instances.label name; rewrite it with "
            "save_parquet from load_youtube_vis, or cast it to youtube_vis_features({id: name, ...})"
        )
    expected = youtube_vis_features(categories)
    different = [column for column in columns if features[column] != expected[column]]
    if different:
        raise DataSourceError(
            f"{name}: column{'s' if len(different) > 1 else ''} {', '.join(different)} "
            "differ from the types of youtube_vis_features; rewrite it with save_parquet from load_youtube_vis"
        )
    return categories


def _video_index(
    rows: datasets.Dataset | datasets.IterableDataset, categories: dict[int, str], name: str, *, embedded_frames: bool
) -> VideoIndex:
    """One pass over the rows without decoding frames: ids, lengths and instance counts, checking on the way
    that video ids are unique, instances' labels match their category ids and (`embedded_frames`) every
    frame's bytes are in the data."""
    ids, lengths, counts = [], [], []
    category_ids = np.asarray(list(categories), dtype=np.int64)
    columns = ["video_id", "length", "instances", "frames"]
    for table in rows.select_columns(columns).with_format("arrow").iter(batch_size=_INDEX_BATCH):
        _check_labels(table, category_ids, name)
        if embedded_frames:
            _check_embedded_frames(table, name)
        ids.append(table["video_id"].to_numpy())
        lengths.append(table["length"].to_numpy())
        counts.append(pc.list_value_length(table["instances"]).to_numpy(zero_copy_only=False))
    if not ids:
        raise DataSourceError(f"{name} holds no videos")
    index = VideoIndex(*(np.concatenate(parts).astype(np.int64) for parts in (ids, lengths, counts)))
    unique, occurrences = np.unique(index.video_ids, return_counts=True)
    if (occurrences > 1).any():
        duplicate = unique[occurrences > 1][0]
        raise DataSourceError(f"{name}: video id {duplicate} is on several rows; video ids must be unique")
    return index


def _check_labels(table: pa.Table, category_ids: np.ndarray, name: str) -> None:
    """An instance's `label` must name its `category_id`: the clips train on the id, the results carry it."""
    instances = table["instances"].combine_chunks()
    flat = pc.list_flatten(instances)
    labels = pc.struct_field(flat, "label").to_numpy(zero_copy_only=False)
    ids = pc.struct_field(flat, "category_id").to_numpy(zero_copy_only=False)
    matches = (labels >= 0) & (labels < len(category_ids))
    matches[matches] = category_ids[labels[matches]] == ids[matches]
    bad = np.flatnonzero(~matches)
    if bad.size:
        video = table["video_id"][pc.list_parent_indices(instances)[int(bad[0])].as_py()].as_py()
        instance = pc.struct_field(flat, "id")[int(bad[0])].as_py()
        raise DataSourceError(
            f"{name}: instance {instance} of video {video} has category_id {ids[bad[0]]} but label {labels[bad[0]]}, "
            "which is another category; rebuild the rows with load_youtube_vis"
        )


def _check_embedded_frames(table: pa.Table, name: str) -> None:
    frames = table["frames"].combine_chunks()
    missing = pc.is_null(pc.struct_field(pc.list_flatten(frames), "bytes"))
    if pc.any(missing).as_py():
        first = int(np.flatnonzero(missing.to_numpy(zero_copy_only=False))[0])
        video = table["video_id"][pc.list_parent_indices(frames)[first].as_py()].as_py()
        raise DataSourceError(
            f"{name}: a frame of video {video} is a path, not embedded bytes, and only a YouTube-VIS folder's frame "
            "paths are read; write the data with save_parquet, which embeds the frames"
        )


def youtube_vis_annotations(rows: datasets.Dataset, categories: dict[int, str]) -> dict:
    """The YouTube-VIS annotation file of `rows` (frames not decoded): the ground truth the evaluator reads,
    equal for scoring to the file the rows were loaded from, restricted to their videos."""
    videos, annotations = [], []
    for row in rows.remove_columns("frames"):
        size = {key: row[key] for key in ("width", "height", "length")}
        videos.append({"id": row["video_id"], **size, "file_names": row["file_names"]})
        annotations.extend(_annotation(instance, row["video_id"], size) for instance in row["instances"])
    return {
        "videos": videos,
        "categories": [{"id": category_id, "name": name} for category_id, name in categories.items()],
        "annotations": annotations,
    }


def _annotation(instance: dict, video_id: int, size: dict) -> dict:
    return {
        "id": instance["id"],
        "video_id": video_id,
        "category_id": instance["category_id"],
        "iscrowd": instance["iscrowd"],
        "segmentations": [_segmentation(segmentation) for segmentation in instance["segmentations"]],
        "areas": instance["areas"],
        "bboxes": instance["bboxes"],
        **size,
    }


def _segmentation(segmentation: dict | None) -> dict | list | None:
    """The schema's segmentation back in the annotation file's form: null, polygons, or RLE."""
    if segmentation is None:
        return None
    if segmentation["polygons"] is not None:
        return segmentation["polygons"]
    return {"size": segmentation["size"], "counts": segmentation["counts"]}
