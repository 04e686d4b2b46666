"""YouTube-VIS data: read the annotation format, load a local copy as a `datasets.Dataset`, make a synthetic one.

The original reads YouTube-VIS through a git-installed fork of cocoapi and hard-codes the 40 classes of
2019. Here the annotation JSON (YouTube-VIS 2019, 2021, OVIS, or a user's own categories) is the only
source of categories, and a folder in the YouTube-VIS layout

    ROOT/JPEGImages/<video>/<frame>.jpg
    ROOT/annotations.json          (or any path given as `annotation_file`)

becomes one dataset row per video, its frames decoded only when a row is read:

    dataset = load_youtube_vis("ROOT")
    splits = split_by_video_id(dataset, validation_fraction=0.1, seed=0)
    save_parquet(dataset, "ytvis.parquet")                    # frames embedded, so the file stands alone
    datasets.load_dataset("parquet", data_files="ytvis.parquet", split="train")   # same features back

The features record each category's id beside its name (`recorded_categories`), so a parquet file or a
Hub copy needs no annotation file; `vistr.tools.data_sources.open_training_data` opens any of these.

`make_synthetic` (the `vistr make-synthetic` command) writes such a folder of textured moving shapes,
for tests, the demo and small training runs:

    vistr make-synthetic OUT --videos 200 --seed 0
"""

from __future__ import annotations

import argparse
import json
import os
import reprlib
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image as PILImage
from pycocotools import mask as mask_utils
from tqdm.auto import tqdm
from vistr.tools.outputs import Outputs, dumps_json, positive_int
from vistr.video_io import VideoReadError, check_regular_file

if TYPE_CHECKING:
    import datasets  # imported where used: `vistr segment` reads annotations without it (0.2 s with pandas)


class YouTubeVISError(ValueError):
    """Input or options that cannot be used; the message says which and why."""


class AnnotationError(YouTubeVISError):
    """An annotation file that does not follow the YouTube-VIS format; the message names the entry."""


# ----------------------------------------------------------------------------------------------------------
# The annotation format
# ----------------------------------------------------------------------------------------------------------

# Fields each record must have for loading a dataset; the evaluator needs fewer (see its module).
LOADER_VIDEO_FIELDS = ("id", "width", "height", "file_names")
LOADER_ANNOTATION_FIELDS = ("id", "video_id", "category_id", "segmentations", "areas", "bboxes", "iscrowd")
LOADER_CATEGORY_FIELDS = ("id", "name")
_LIST_FIELDS = frozenset({"file_names", "segmentations", "areas", "bboxes"})
# Fields that hold ids, wherever a record has them: records are grouped and looked up by these.
_ID_FIELDS = ("id", "video_id", "category_id")


def read_json(path: str | os.PathLike, what: str) -> Any:
    """Parse a JSON file, turning a missing or malformed file into an error that names it and its role."""
    path = Path(path)
    if not path.is_file():
        raise YouTubeVISError(f"{what} {path} does not exist")
    try:
        with path.open("rb") as file:
            return json.load(file)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise YouTubeVISError(f"{what} {path} is not valid JSON: {error}") from None
    except RecursionError:  # Python's parser recurses once per nested array or object
        raise YouTubeVISError(
            f"{what} {path} nests arrays or objects too deeply to read (Python's limit is about "
            f"{sys.getrecursionlimit()} levels); a YouTube-VIS file needs a few, so check how it was written"
        ) from None


def is_integer(value: Any) -> bool:
    """An int or numpy integer, not a bool (a tuple isinstance: this runs once per mask side)."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def describe_value(value: Any) -> str:
    """A value of an input file as a message shows it: its repr, shortened (a bad entry can be huge or deep)."""
    return reprlib.repr(value)


def check_annotation_fields(
    data: Any,
    *,
    video_fields: Iterable[str],
    annotation_fields: Iterable[str],
    category_fields: Iterable[str],
    require_annotations: bool,
) -> None:
    """Fail on the first video, annotation or category record that lacks a field its user reads.

    Checked up front so that a bad file stops with the record's name instead of a KeyError deep in a loop.
    A test split (no ground truth) may have no "annotations" unless `require_annotations`.
    """
    if not isinstance(data, dict):
        raise AnnotationError(f"the annotation file must hold a JSON object, not {type(data).__name__}")
    sections = [("videos", "video", video_fields), ("categories", "category", category_fields)]
    if require_annotations or data.get("annotations") is not None:
        sections.append(("annotations", "annotation", annotation_fields))
    for section, kind, fields in sections:
        records = data.get(section)
        if not isinstance(records, list):
            raise AnnotationError(f'the annotation file has no "{section}" list')
        for index, record in enumerate(records):
            _check_record(record, index, kind, fields)
        if section != "annotations":  # the evaluator keeps duplicate annotation ids as the official index does
            check_unique_ids(records, kind)


def check_unique_ids(records: Sequence[Mapping], kind: str) -> None:
    """Refuse two records of one kind with the same id: records are looked up by id, so the second would
    silently replace or merge with the first."""
    seen = set()
    for record in records:
        if record["id"] in seen:
            raise AnnotationError(
                f"{kind} id {record['id']} appears twice in the annotation file; give each {kind} its own id"
            )
        seen.add(record["id"])


def _check_record(record: Any, index: int, kind: str, fields: Iterable[str]) -> None:
    if not isinstance(record, dict):
        raise AnnotationError(f"{kind} #{index} is not a JSON object")
    for field in _ID_FIELDS:
        if field in record and not is_integer(record[field]):
            raise AnnotationError(
                f'{kind} #{index}: "{field}" must be an integer id, not {describe_value(record[field])} '
                '(YouTube-VIS ids are integers: write 1, not "1")'
            )
    name = f"{kind} {record['id']}" if "id" in record else f"{kind} #{index}"
    if kind == "annotation" and "video_id" in record:
        name += f" (video {record['video_id']})"
    for field in fields:
        if field not in record:
            raise AnnotationError(f'{name} has no "{field}" field')
        if field in _LIST_FIELDS and not isinstance(record[field], list):
            raise AnnotationError(f'{name}: "{field}" must be a list, not {type(record[field]).__name__}')


# pycocotools 2.0.11 under numpy 2 raises OverflowError ("... out of bounds for uint8") from `area` when given
# more than 255 masks in one call, so areas are taken in batches no larger than that.
_AREA_BATCH = 255


def rle_areas(rles: Sequence[Mapping]) -> np.ndarray:
    """Pixel counts [N] (int64) of compressed RLE masks, as `pycocotools.mask.area` gives them, for any N."""
    batches = [mask_utils.area(list(rles[start : start + _AREA_BATCH])) for start in range(0, len(rles), _AREA_BATCH)]
    return np.concatenate(batches).astype(np.int64) if batches else np.zeros(0, dtype=np.int64)


def compress_rle(rle: Mapping) -> dict:
    """An RLE dict with string counts: uncompressed RLE (a list of counts, as in YouTube-VIS 2019 train) is
    re-encoded losslessly; compressed RLE is returned with bytes counts turned to text."""
    if isinstance(rle["counts"], list):
        height, width = rle["size"]
        rle = mask_utils.frPyObjects(dict(rle), height, width)
    counts = rle["counts"]
    counts = counts.decode() if isinstance(counts, bytes) else counts
    return {"size": [int(side) for side in rle["size"]], "counts": counts}


# ----------------------------------------------------------------------------------------------------------
# Loading a local copy as a datasets.Dataset
# ----------------------------------------------------------------------------------------------------------


# How `label`'s ClassLabel records the category ids: its free-form `id` attribute, which datasets keeps in
# the parquet schema, in `load_dataset` results and in a Hub card's YAML, so the ids travel with the names.
_CATEGORY_IDS_TAG = "category_ids="


def youtube_vis_features(categories: Mapping[int, str]) -> datasets.Features:
    """The dataset schema: one row per video, its frames as lazily decoded images, its instances as tracks.

    A frame's segmentation is null where the instance is not visible, else either RLE (`counts` + `size`)
    or `polygons` (flat x, y lists), as in the source file, so nothing is lost or re-rasterized. `label`
    indexes the category names ordered by id; `category_id` keeps the file's own id for writing results.
    The ids themselves are recorded with the names (`recorded_categories`): a category no instance uses
    would otherwise lose its id, and with it the model's class index, outside the annotation file.
    """
    import datasets

    category_ids = sorted(categories)
    label = datasets.ClassLabel(
        names=[categories[category_id] for category_id in category_ids],
        id=_CATEGORY_IDS_TAG + json.dumps(category_ids),
    )
    segmentation = {
        "counts": datasets.Value("string"),
        "size": datasets.List(datasets.Value("int32"), length=2),
        "polygons": datasets.List(datasets.List(datasets.Value("float64"))),
    }
    instance = {
        "id": datasets.Value("int64"),
        "category_id": datasets.Value("int64"),
        "label": label,
        "iscrowd": datasets.Value("int8"),
        "segmentations": datasets.List(segmentation),
        "bboxes": datasets.List(datasets.List(datasets.Value("float64"), length=4)),
        "areas": datasets.List(datasets.Value("float64")),
    }
    return datasets.Features(
        {
            "video_id": datasets.Value("int64"),
            "width": datasets.Value("int32"),
            "height": datasets.Value("int32"),
            "length": datasets.Value("int32"),
            "file_names": datasets.List(datasets.Value("string")),
            "frames": datasets.List(datasets.Image()),
            "instances": datasets.List(instance),
        }
    )


def recorded_categories(features: datasets.Features) -> dict[int, str] | None:
    """Category id -> name as `youtube_vis_features` recorded them; None where `features` has no such record
    (a dataset in another schema, or one written before the ids were recorded)."""
    import datasets

    instances = features.get("instances")
    instance = instances.feature if isinstance(instances, datasets.List) else None
    label = instance.get("label") if isinstance(instance, dict) else None
    if not isinstance(label, datasets.ClassLabel) or not (label.id or "").startswith(_CATEGORY_IDS_TAG):
        return None
    try:
        category_ids = json.loads(label.id.removeprefix(_CATEGORY_IDS_TAG))
    except json.JSONDecodeError:
        return None
    valid = (
        isinstance(category_ids, list)
        and all(type(category_id) is int for category_id in category_ids)
        and category_ids == sorted(set(category_ids))
        and len(category_ids) == len(label.names)
    )
    return dict(zip(category_ids, label.names)) if valid else None


def load_youtube_vis(
    root: str | os.PathLike,
    annotation_file: str | os.PathLike | None = None,
    *,
    image_dir: str | os.PathLike | None = None,
) -> datasets.Dataset:
    """Read a YouTube-VIS-layout folder into a `datasets.Dataset` (schema: `youtube_vis_features`).

    `annotation_file` defaults to ROOT/annotations.json and `image_dir` to ROOT/JPEGImages (the folder that
    the videos' `file_names` are relative to). Every frame file is checked now (`frame_files`: a regular
    file inside that folder), so a missing one is reported with its video instead of failing mid-training;
    pixels are decoded only when read.
    """
    import datasets

    root = Path(root)
    annotation_path = Path(annotation_file) if annotation_file is not None else root / "annotations.json"
    image_root = Path(image_dir) if image_dir is not None else root / "JPEGImages"
    data = read_json(annotation_path, "annotation file")
    check_annotation_fields(
        data,
        video_fields=LOADER_VIDEO_FIELDS,
        annotation_fields=LOADER_ANNOTATION_FIELDS,
        category_fields=LOADER_CATEGORY_FIELDS,
        require_annotations=False,
    )
    categories = _categories_by_id(data["categories"])
    instances_by_video = _group_annotations(data.get("annotations") or [], data["videos"])
    label_of = {category_id: label for label, category_id in enumerate(categories)}
    rows = [
        _video_row(video, instances_by_video[video["id"]], label_of, image_root)
        for video in tqdm(data["videos"], desc="videos", unit="video", disable=len(data["videos"]) < 1000)
    ]
    return datasets.Dataset.from_list(rows, features=youtube_vis_features(categories))


def _categories_by_id(records: list[dict]) -> dict[int, str]:
    """Category id -> name in id order, refusing duplicate names (a label must mean one thing; ids are unique
    by `check_annotation_fields`)."""
    names: dict[int, str] = {}
    for record in sorted(records, key=lambda record: record["id"]):
        if record["name"] in names.values():
            raise AnnotationError(f'category name "{record["name"]}" appears twice')
        names[record["id"]] = record["name"]
    return names


def _group_annotations(annotations: list[dict], videos: list[dict]) -> dict[int, list[dict]]:
    by_video: dict[int, list[dict]] = {video["id"]: [] for video in videos}
    for annotation in annotations:
        if annotation["video_id"] not in by_video:
            name = f"annotation {annotation['id']}"
            raise AnnotationError(f"{name} is for video {annotation['video_id']}, which is not listed")
        by_video[annotation["video_id"]].append(annotation)
    return by_video


def _video_row(video: dict, annotations: list[dict], label_of: Mapping[int, int], image_root: Path) -> dict:
    length = len(video["file_names"])
    if video.get("length", length) != length:
        raise AnnotationError(f"video {video['id']} has length {video['length']} but {length} file_names")
    frames = frame_files(video, image_root)
    _check_storable_names(video)
    return {
        "video_id": video["id"],
        "width": video["width"],
        "height": video["height"],
        "length": length,
        "file_names": video["file_names"],
        "frames": [str(frame) for frame in frames],
        "instances": [_instance(annotation, video, label_of) for annotation in annotations],
    }


def _check_storable_names(video: Mapping) -> None:
    """A dataset keeps file names as UTF-8 text, so a name that is not (Python reads a non-UTF-8 file name, and
    JSON can carry one, as lone surrogates) cannot be a row; it is named here instead of failing in Arrow."""
    for name in video["file_names"]:
        try:
            name.encode("utf-8")
        except UnicodeEncodeError:
            raise AnnotationError(
                f"video {video['id']}: file name {name!r} is not UTF-8, and a dataset stores names as UTF-8 text; "
                "rename the file and its file_names entry (`vistr segment --annotations` reads such names as they are)"
            ) from None


def check_file_names(video: Mapping) -> None:
    """`file_names` must be a list of strings: anything else is named now rather than failing as a path."""
    names = video["file_names"]
    if not isinstance(names, list):
        raise AnnotationError(f'video {video["id"]}: "file_names" must be a list of frame file names')
    bad = next((index for index, name in enumerate(names) if not isinstance(name, str)), None)
    if bad is not None:
        raise AnnotationError(
            f'video {video["id"]}: file_names entry #{bad} is {describe_value(names[bad])}, not a string; '
            "file_names are frame file paths relative to the image folder"
        )


def frame_files(video: Mapping, image_root: Path) -> list[Path]:
    """The video's frame files in `file_names` order, each a regular file inside `image_root`.

    The root is a wall: an annotation file may come from anyone, and a name that is absolute or leads out
    through `..` or a symlink (resolved) would read a file the user never gave; a pipe or device named as
    a frame would hang or misbehave the reader. Such a video is refused, naming it and the file. The one
    rule for every reader of YouTube-VIS frames (the dataset loader and the split job).
    """
    check_file_names(video)
    root = image_root.resolve()
    frames = []
    for name in video["file_names"]:
        path = image_root / name
        resolved = _resolve(path, name, video)
        if not resolved.is_relative_to(root):
            raise AnnotationError(
                f"video {video['id']}: file name {name!r} leaves the image folder {image_root} (it leads to "
                f"{resolved}); file_names must be paths inside it, and links in it must stay inside"
            )
        try:
            check_regular_file(path)
        except VideoReadError as error:
            raise AnnotationError(f"video {video['id']}: {error}") from None
        frames.append(path)
    return frames


def _resolve(path: Path, name: str, video: Mapping) -> Path:
    """`path` with every link followed; a name that cannot be followed is refused, naming the video."""
    try:
        return path.resolve()
    except (OSError, RuntimeError, ValueError) as error:  # RuntimeError: a link loop (Python < 3.13); ValueError: NUL
        raise AnnotationError(
            f"video {video['id']}: file name {name!r} cannot be followed ({error}); fix the name or the link"
        ) from None


def _instance(annotation: dict, video: dict, label_of: Mapping[int, int]) -> dict:
    name = f"annotation {annotation['id']} (video {video['id']})"
    if annotation["category_id"] not in label_of:
        raise AnnotationError(f"{name} has category {annotation['category_id']}, which is not listed")
    length = len(video["file_names"])
    for field in ("segmentations", "areas", "bboxes"):
        if len(annotation[field]) != length:
            raise AnnotationError(f'{name} has {len(annotation[field])} "{field}" for a video of {length} frames')
    return {
        "id": annotation["id"],
        "category_id": annotation["category_id"],
        "label": label_of[annotation["category_id"]],
        "iscrowd": int(annotation["iscrowd"]),
        "segmentations": [
            _frame_segmentation(segmentation, video, f"{name}, frame {frame}")
            for frame, segmentation in enumerate(annotation["segmentations"])
        ],
        "bboxes": annotation["bboxes"],
        "areas": annotation["areas"],
    }


def _frame_segmentation(segmentation: Any, video: dict, name: str) -> dict | None:
    """One frame's segmentation in the schema's form; falsy (None, []) means not visible, as in the official API."""
    if not segmentation:
        return None
    if isinstance(segmentation, list):
        if not all(isinstance(part, list) and len(part) >= 6 and len(part) % 2 == 0 for part in segmentation):
            raise AnnotationError(f"{name}: a polygon must be a flat list of at least 3 x, y pairs")
        return {"counts": None, "size": None, "polygons": segmentation}
    if not (isinstance(segmentation, dict) and "counts" in segmentation and "size" in segmentation):
        raise AnnotationError(f"{name}: a segmentation must be RLE (counts, size), polygons or null")
    size = segmentation["size"]
    if not isinstance(size, (list, tuple)) or list(size) != [video["height"], video["width"]]:
        raise AnnotationError(
            f"{name}: RLE size {describe_value(size)} is not the video's [height, width] "
            f"[{video['height']}, {video['width']}]"
        )
    return {**compress_rle(segmentation), "polygons": None}


def split_by_video_id(
    dataset: datasets.Dataset, validation_fraction: float = 0.1, seed: int = 0
) -> datasets.DatasetDict:
    """Split into "train" and "validation" by video, so no video's frames are on both sides.

    The validation videos are a seeded draw from the sorted video ids: the same ids for the same data and
    seed whatever the row order.
    """
    import datasets

    video_ids = np.asarray(dataset["video_id"])
    is_validation = np.isin(video_ids, validation_video_ids(video_ids, validation_fraction, seed))
    return datasets.DatasetDict(
        train=dataset.select(np.flatnonzero(~is_validation)),
        validation=dataset.select(np.flatnonzero(is_validation)),
    )


def validation_video_ids(video_ids: Sequence[int], validation_fraction: float, seed: int) -> np.ndarray:
    """The held-out videos of `split_by_video_id`: a seeded draw from the sorted distinct ids, so a streaming
    source, which can only list its ids, holds out the same videos as the map-style one."""
    if not 0.0 < validation_fraction < 1.0:
        raise YouTubeVISError(f"validation_fraction must be between 0 and 1, not {validation_fraction}")
    unique_ids = np.unique(np.asarray(video_ids))
    num_validation = int(round(validation_fraction * len(unique_ids)))
    if not 0 < num_validation < len(unique_ids):
        raise YouTubeVISError(
            f"a validation fraction of {validation_fraction} of {len(unique_ids)} videos leaves a split empty"
        )
    return np.random.default_rng(seed).permutation(unique_ids)[:num_validation]


def save_parquet(dataset: datasets.Dataset, path: str | os.PathLike, *, batch_size: int = 64) -> Path:
    """Write `dataset` to one parquet file with the frames' bytes embedded, so the file stands alone.

    The schema travels in the file's metadata: `datasets.load_dataset("parquet", data_files=path)` gives
    the same features back. Written to a temporary file and renamed, so a failure leaves no partial file;
    an existing file is never replaced.
    """
    import pyarrow.parquet as pq
    from datasets.table import embed_table_storage

    path = Path(path)
    if path.exists():
        raise YouTubeVISError(f"{path} already exists; remove it or choose another path")
    with Outputs() as outputs:
        temporary = outputs.file(path, "parquet file")
        with pq.ParquetWriter(temporary, schema=dataset.features.arrow_schema) as writer:
            for batch in dataset.with_format("arrow").iter(batch_size=batch_size):
                writer.write_table(embed_table_storage(batch))
    return path


# ----------------------------------------------------------------------------------------------------------
# Synthetic YouTube-VIS
# ----------------------------------------------------------------------------------------------------------

_SQRT3 = float(np.sqrt(3.0))


def _disc(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return u * u + v * v <= 1.0


def _square(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return np.maximum(np.abs(u), np.abs(v)) <= 0.75


def _triangle(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return (v >= -0.5) & (v <= 1.0 - _SQRT3 * u) & (v <= 1.0 + _SQRT3 * u)


def _ellipse(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return u * u + 4.0 * v * v <= 1.0


def _ring(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    squared_radius = u * u + v * v
    return (squared_radius <= 1.0) & (squared_radius >= 0.3)


def _cross(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    across, along = np.abs(u), np.abs(v)
    return ((across <= 0.3) & (along <= 1.0)) | ((along <= 0.3) & (across <= 1.0))


# Category name -> membership test in the shape's own unit frame (every shape fits in the unit disc).
SYNTHETIC_SHAPES: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "disc": _disc,
    "square": _square,
    "triangle": _triangle,
    "ellipse": _ellipse,
    "ring": _ring,
    "cross": _cross,
}


def synthetic_categories() -> list[dict]:
    """The synthetic set's categories in YouTube-VIS form (ids from 1, like the real sets)."""
    return [{"id": index + 1, "name": name, "supercategory": "shape"} for index, name in enumerate(SYNTHETIC_SHAPES)]


@dataclass(frozen=True)
class SyntheticOptions:
    """Size of the synthetic videos; the defaults are small enough to train on a CPU."""

    min_frames: int = 5
    max_frames: int = 15
    min_side: int = 96
    max_side: int = 192
    max_instances: int = 4

    def __post_init__(self) -> None:
        checks = [
            (1 <= self.min_frames <= self.max_frames, "need 1 <= min_frames <= max_frames"),
            (16 <= self.min_side <= self.max_side, "need 16 <= min_side <= max_side"),
            (self.max_instances >= 1, "need max_instances >= 1"),
        ]
        for passed, message in checks:
            if not passed:
                raise YouTubeVISError(f"{message} (got {self})")


@dataclass
class SyntheticVideo:
    """One synthetic video: its YouTube-VIS records and, when rendered, its RGB frames [T, H, W, 3] uint8."""

    video: dict
    annotations: list[dict]
    frames: np.ndarray | None


@dataclass
class _Track:
    """Where one instance is in each frame: centre (x, y), radius and angle in pixels/radians, and whether
    it is in the scene at all (instances enter and leave mid-video)."""

    category: int
    centers: np.ndarray
    radii: np.ndarray
    angles: np.ndarray
    in_scene: np.ndarray


def _plan_tracks(rng: np.random.Generator, length: int, height: int, width: int, max_instances: int) -> list[_Track]:
    """Random motion for each instance, listed front to back. Each passes a random inner point mid-video
    and drifts, so fast ones cross the border; half of them also appear late or vanish early."""
    side = min(height, width)
    steps = np.arange(length)[:, None]
    tracks = []
    for _ in range(int(rng.integers(1, max_instances + 1))):
        midpoint = rng.uniform([0.15 * width, 0.15 * height], [0.85 * width, 0.85 * height])
        velocity = rng.uniform(-1.0, 1.0, size=2) * side * rng.uniform(0.01, 0.07)
        radius = side * rng.uniform(0.12, 0.32)
        pulse = 1.0 + 0.15 * np.sin(rng.uniform(0.0, 0.5) * np.arange(length) + rng.uniform(0.0, 2 * np.pi))
        in_scene = np.ones(length, dtype=bool)
        if length > 2 and rng.random() < 0.5:
            enter = int(rng.integers(0, length // 2))
            leave = int(rng.integers(enter + max(1, length // 3), length + 1))
            in_scene[:enter] = in_scene[leave:] = False
        tracks.append(
            _Track(
                category=int(rng.integers(len(SYNTHETIC_SHAPES))),
                centers=midpoint + velocity * (steps - length // 2),
                radii=radius * pulse,
                angles=rng.uniform(0.0, 2 * np.pi) + rng.uniform(-0.15, 0.15) * np.arange(length),
                in_scene=in_scene,
            )
        )
    return tracks


@dataclass
class _Appearance:
    """Colours and textures: stripes that move with each shape, a drifting grating plus grain behind."""

    stripe_colors: np.ndarray  # [instances, 2, 3]
    stripe_frequency: np.ndarray  # [instances]
    stripe_direction: np.ndarray  # [instances]
    background_colors: np.ndarray  # [2, 3]
    background_wave: np.ndarray  # [3]: x, y frequency, drift per frame
    grain: np.ndarray  # [H, W, 1]


def _plan_appearance(rng: np.random.Generator, num_instances: int, height: int, width: int) -> _Appearance:
    return _Appearance(
        stripe_colors=rng.uniform(0, 255, size=(num_instances, 2, 3)).astype(np.float32),
        stripe_frequency=rng.uniform(3.0, 12.0, size=num_instances).astype(np.float32),
        stripe_direction=rng.uniform(0.0, np.pi, size=num_instances).astype(np.float32),
        background_colors=rng.uniform(0, 255, size=(2, 3)).astype(np.float32),
        background_wave=np.array([*rng.uniform(-0.15, 0.15, size=2), rng.uniform(-0.5, 0.5)], dtype=np.float32),
        grain=rng.normal(0.0, 12.0, size=(height, width, 1)).astype(np.float32),
    )


def _background(appearance: _Appearance, frame: int, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    fx, fy, drift = appearance.background_wave
    weight = (0.5 + 0.5 * np.sin(fx * xs + fy * ys + drift * frame))[..., None]
    low, high = appearance.background_colors
    return low * weight + high * (1.0 - weight) + appearance.grain


def _shape_window(track: _Track, frame: int, height: int, width: int) -> tuple[slice, slice] | None:
    """The rows and columns that can hold the shape (its unit disc, scaled), clipped to the frame."""
    (x, y), reach = track.centers[frame], 1.05 * track.radii[frame]
    rows = slice(max(0, int(y - reach)), min(height, int(y + reach) + 2))
    columns = slice(max(0, int(x - reach)), min(width, int(x + reach) + 2))
    if rows.start >= rows.stop or columns.start >= columns.stop:
        return None
    return rows, columns


def _shape_coordinates(track: _Track, frame: int, window: tuple[slice, slice]) -> tuple[np.ndarray, np.ndarray]:
    """Pixel centres of `window` in the shape's rotated unit frame."""
    rows, columns = window
    (x, y), radius, angle = track.centers[frame], track.radii[frame], track.angles[frame]
    dx = (np.arange(columns.start, columns.stop, dtype=np.float32) + 0.5 - x)[None, :]
    dy = (np.arange(rows.start, rows.stop, dtype=np.float32) + 0.5 - y)[:, None]
    cos, sin = np.cos(angle), np.sin(angle)
    return (dx * cos + dy * sin) / radius, (dy * cos - dx * sin) / radius


def _stripes(appearance: _Appearance, index: int, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    direction = appearance.stripe_direction[index]
    phase = appearance.stripe_frequency[index] * (u * np.cos(direction) + v * np.sin(direction))
    weight = (0.5 + 0.5 * np.sin(phase))[..., None]
    first, second = appearance.stripe_colors[index]
    return first * weight + second * (1.0 - weight)


def _draw(
    tracks: list[_Track], appearance: _Appearance | None, length: int, height: int, width: int
) -> tuple[np.ndarray, np.ndarray | None]:
    """Visible masks [instances, T, H, W] (what is not hidden by shapes in front) and, given an appearance,
    the frames [T, H, W, 3]. Shapes are drawn front to back, each only where nothing nearer already is."""
    masks = np.zeros((len(tracks), length, height, width), dtype=bool)
    frames = np.empty((length, height, width, 3), dtype=np.uint8) if appearance is not None else None
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    for frame in range(length):
        covered = np.zeros((height, width), dtype=bool)
        canvas = _background(appearance, frame, xs, ys) if appearance is not None else None
        for index, track in enumerate(tracks):
            window = _shape_window(track, frame, height, width) if track.in_scene[frame] else None
            if window is None:
                continue
            u, v = _shape_coordinates(track, frame, window)
            shape = SYNTHETIC_SHAPES[list(SYNTHETIC_SHAPES)[track.category]](u, v)
            visible = shape & ~covered[window]
            covered[window] |= shape
            masks[index, frame][window] = visible
            if canvas is not None:
                canvas[window][visible] = _stripes(appearance, index, u, v)[visible]
        if frames is not None:
            frames[frame] = np.clip(canvas, 0, 255)
    return masks, frames


def track_fields(instance_masks: np.ndarray) -> dict[str, list]:
    """An instance's per-frame `segmentations`, `areas` and `bboxes` from its masks [T, H, W] (None where empty)."""
    rles = mask_utils.encode(np.asfortranarray(instance_masks.transpose(1, 2, 0).astype(np.uint8)))
    areas = rle_areas(rles).tolist()
    boxes = mask_utils.toBbox(rles).tolist()
    return {
        "segmentations": [compress_rle(rle) if area else None for rle, area in zip(rles, areas)],
        "areas": [area if area else None for area in areas],
        "bboxes": [box if area else None for box, area in zip(boxes, areas)],
    }


def _annotation_records(masks: np.ndarray, tracks: list[_Track], video: dict, first_id: int) -> list[dict]:
    """YouTube-VIS annotation records for the instances visible in at least one frame."""
    records = []
    for instance_masks, track in zip(masks, tracks):
        fields = track_fields(instance_masks)
        if not any(fields["areas"]):
            continue
        records.append(
            {
                "id": first_id + len(records),
                "video_id": video["id"],
                "category_id": track.category + 1,
                **fields,
                "iscrowd": 0,
                "width": video["width"],
                "height": video["height"],
                "length": video["length"],
            }
        )
    return records


def synthetic_videos(
    num_videos: int, seed: int = 0, options: SyntheticOptions = SyntheticOptions(), *, render: bool = True
) -> Iterator[SyntheticVideo]:
    """Yield synthetic videos one at a time (ids 1..num_videos, annotation ids from 1).

    Deterministic for a seed, and video i does not depend on `num_videos`: each video draws from its own
    child of the seed, with motion and appearance on separate streams so that `render=False` (annotations
    only, much faster) gives exactly the instances of the rendered set.
    """
    if num_videos < 1:
        raise YouTubeVISError(f"need at least one video, not {num_videos}")
    next_annotation_id = 1
    for index, video_seed in enumerate(np.random.SeedSequence(seed).spawn(num_videos)):
        motion_rng, appearance_rng = (np.random.default_rng(child) for child in video_seed.spawn(2))
        length = int(motion_rng.integers(options.min_frames, options.max_frames + 1))
        height, width = (int(side) for side in motion_rng.integers(options.min_side, options.max_side + 1, size=2))
        name = f"synthetic_{index + 1:05d}"
        video = {
            "id": index + 1,
            "width": width,
            "height": height,
            "length": length,
            "file_names": [f"{name}/{frame:05d}.jpg" for frame in range(length)],
        }
        tracks = _plan_tracks(motion_rng, length, height, width, options.max_instances)
        appearance = _plan_appearance(appearance_rng, len(tracks), height, width) if render else None
        masks, frames = _draw(tracks, appearance, length, height, width)
        annotations = _annotation_records(masks, tracks, video, next_annotation_id)
        next_annotation_id += len(annotations)
        yield SyntheticVideo(video=video, annotations=annotations, frames=frames)


def _annotation_file(videos: list[dict], annotations: list[dict]) -> dict:
    return {
        "info": {"description": "synthetic YouTube-VIS: textured moving shapes"},
        "licenses": [],
        "videos": videos,
        "categories": synthetic_categories(),
        "annotations": annotations,
    }


def synthetic_annotations(num_videos: int, seed: int = 0, options: SyntheticOptions = SyntheticOptions()) -> dict:
    """The annotation file `make_synthetic` would write for these arguments, without drawing any pixels."""
    videos, annotations = [], []
    for synthetic in synthetic_videos(num_videos, seed, options, render=False):
        videos.append(synthetic.video)
        annotations.extend(synthetic.annotations)
    return _annotation_file(videos, annotations)


def make_synthetic(
    output_dir: str | os.PathLike,
    num_videos: int,
    seed: int = 0,
    options: SyntheticOptions = SyntheticOptions(),
    *,
    jpeg_quality: int = 90,
    progress: bool = True,
) -> Path:
    """Write a synthetic YouTube-VIS folder (JPEGImages/<video>/<frame>.jpg + annotations.json).

    Everything is written into a temporary folder beside `output_dir` and renamed at the end, so an
    interrupted run leaves nothing half-written; an existing non-empty `output_dir` is refused, never
    touched. Returns the annotation file's path.
    """
    output_dir = Path(output_dir)
    with Outputs() as outputs:
        _write_synthetic(outputs.folder(output_dir, "OUT"), num_videos, seed, options, jpeg_quality, progress)
    return output_dir / "annotations.json"


def _write_synthetic(
    folder: Path, num_videos: int, seed: int, options: SyntheticOptions, jpeg_quality: int, progress: bool
) -> None:
    videos, annotations = [], []
    generated = synthetic_videos(num_videos, seed, options, render=True)
    for synthetic in tqdm(generated, total=num_videos, desc="synthetic videos", unit="video", disable=not progress):
        for frame, file_name in zip(synthetic.frames, synthetic.video["file_names"]):
            path = folder / "JPEGImages" / file_name
            path.parent.mkdir(parents=True, exist_ok=True)
            PILImage.fromarray(frame).save(path, quality=jpeg_quality)
        videos.append(synthetic.video)
        annotations.extend(synthetic.annotations)
    text = dumps_json(_annotation_file(videos, annotations), "annotations.json", "report this bug with the options used")
    (folder / "annotations.json").write_text(text)


# ----------------------------------------------------------------------------------------------------------
# Command line: `vistr make-synthetic`
# ----------------------------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `vistr make-synthetic`."""
    defaults = SyntheticOptions()
    parser.add_argument("output", metavar="OUT", type=Path, help="new folder to write (must not exist or be empty)")
    parser.add_argument("--videos", type=positive_int, required=True, help="number of videos")
    parser.add_argument("--seed", type=int, default=0, help="random seed; the same seed gives the same files")
    parser.add_argument("--min-frames", type=positive_int, default=defaults.min_frames, help="shortest video, in frames")
    parser.add_argument("--max-frames", type=positive_int, default=defaults.max_frames, help="longest video, in frames")
    parser.add_argument("--min-side", type=positive_int, default=defaults.min_side, help="smallest frame height or width")
    parser.add_argument("--max-side", type=positive_int, default=defaults.max_side, help="largest frame height or width")
    parser.add_argument("--max-instances", type=positive_int, default=defaults.max_instances, help="most shapes per video")
    parser.add_argument("--jpeg-quality", type=int, default=90, help="JPEG quality of the frames (1-95)")


def run(args: argparse.Namespace) -> None:
    """Run `vistr make-synthetic` with parsed arguments."""
    options = SyntheticOptions(
        min_frames=args.min_frames,
        max_frames=args.max_frames,
        min_side=args.min_side,
        max_side=args.max_side,
        max_instances=args.max_instances,
    )
    if not 1 <= args.jpeg_quality <= 95:
        raise YouTubeVISError(f"--jpeg-quality must be between 1 and 95, not {args.jpeg_quality}")
    annotation_path = make_synthetic(args.output, args.videos, args.seed, options, jpeg_quality=args.jpeg_quality)
    print(f"wrote {args.videos} synthetic videos to {args.output} (annotations: {annotation_path})")
