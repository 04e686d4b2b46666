"""Training clips: sampling, targets and augmentations against independent references.

References used: the frame-selection formula with Python list indexing, the annotation file decoded
with pycocotools directly, the frames read with PIL from disk, axis-aligned rectangles (whose box is
known under any flip, resize and crop), `colorsys` for the HSV conversion, and the resize size rule
written out by hand.
"""

from __future__ import annotations

import colorsys
import functools
import json
import random

import datasets
import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils
from vistr.image_processing_vistr import VisTRVideoProcessor
from vistr.tools.data_sources import open_training_data
from vistr.tools.training_data import (
    AugmentationOptions,
    Clip,
    TrainingDataError,
    TrainTransform,
    ValidationTransform,
    VisTRClipDataset,
    VisTRClipStream,
    bgr_to_hsv,
    clip_frame_indices,
    clip_to_example,
    collate_fn,
    crop_clip,
    hflip_clip,
    hsv_to_bgr,
    make_clip,
    photometric_distort,
    random_size_crop,
    resize_clip,
)
from vistr.tools.youtube_vis import (
    SyntheticOptions,
    load_youtube_vis,
    make_synthetic,
    save_parquet,
    split_by_video_id,
)

MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)

# Small sizes, so that a clip of 48..80-pixel frames goes through every step quickly.
SMALL = AugmentationOptions(
    scales=(40, 48, 56, 64),
    max_size=100,
    crop_scales=(64, 72),
    crop_min_size=40,
    crop_max_size=60,
    final_scales=(48,),
    final_max_size=80,
    eval_scale=48,
    eval_max_size=80,
)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    """(annotation file as JSON, image folder, dataset) of a tiny synthetic YouTube-VIS set."""
    root = tmp_path_factory.mktemp("ytvis") / "data"
    # This seed has 2-frame videos (shorter than the 3-frame clips below) and instances absent from some clips.
    options = SyntheticOptions(min_frames=2, max_frames=9, min_side=48, max_side=80, max_instances=3)
    annotation_path = make_synthetic(root, num_videos=5, seed=2, options=options, progress=False)
    return json.loads(annotation_path.read_text()), root / "JPEGImages", load_youtube_vis(root)


def normalized(image: Image.Image) -> torch.Tensor:
    pixels = (np.asarray(image.convert("RGB"), dtype=np.float32) / 255 - MEAN) / STD
    return torch.from_numpy(pixels).permute(2, 0, 1)


def mask_box(mask: torch.Tensor) -> np.ndarray:
    """(x0, y0, x1, y1) pixel edges of a non-empty mask's extent (the YouTube-VIS box convention)."""
    rows, columns = np.nonzero(mask.numpy())
    return np.array([columns.min(), rows.min(), columns.max() + 1, rows.max() + 1], dtype=np.float64)


Rectangle = tuple[int, int, int, int]


def rectangle_clip(height: int, width: int, rectangles: list[list[Rectangle | None]], seed: int = 0) -> Clip:
    """A clip of noise frames whose instances are axis-aligned rectangles: rectangles[n][t] = (x0, y0, x1, y1)
    or None where absent. A rectangle's box is its mask's extent under any flip, resize or crop."""
    rng = np.random.default_rng(seed)
    num_frames = len(rectangles[0])
    frames = [Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)) for _ in range(num_frames)]
    boxes = torch.zeros(len(rectangles), num_frames, 4)
    masks = torch.zeros(len(rectangles), num_frames, height, width, dtype=torch.bool)
    valid = torch.zeros(len(rectangles), num_frames, dtype=torch.bool)
    for n, track in enumerate(rectangles):
        for t, rectangle in enumerate(track):
            if rectangle is not None:
                x0, y0, x1, y1 = rectangle
                boxes[n, t] = torch.tensor(rectangle, dtype=torch.float32)
                masks[n, t, y0:y1, x0:x1] = True
                valid[n, t] = True
    class_labels = torch.arange(1, len(rectangles) + 1)
    return Clip(frames=frames, class_labels=class_labels, boxes=boxes, masks=masks, valid=valid)


def assert_boxes_follow_masks(clip: Clip, tolerance: float = 1.0, *, exact: bool = True) -> int:
    """Every valid frame's box is its mask's extent within `tolerance` pixels (or, not `exact`, contains
    it: nearest-neighbour downscaling may skip a thin tip of a shape); returns how many were checked."""
    checked = 0
    for n, t in clip.valid.nonzero().tolist():
        if clip.masks[n, t].any():
            box, extent = clip.boxes[n, t].numpy(), mask_box(clip.masks[n, t])
            if exact:
                np.testing.assert_allclose(box, extent, atol=tolerance)
            else:
                assert np.all(extent[:2] >= box[:2] - tolerance) and np.all(extent[2:] <= box[2:] + tolerance)
            checked += 1
    return checked


# ---------------------------------------------------------------------------------------------- sampling


def test_clip_frame_indices_follow_the_original_formula_with_python_wrap_around():
    for length in range(1, 8):
        for num_frames in range(1, 11):
            for frame_id in range(length):
                steps = [i % length for i in range(num_frames)][::-1]
                expected = [list(range(length))[frame_id - step] for step in steps]  # Python's negative indexing
                assert clip_frame_indices(frame_id, length, num_frames) == expected
    assert clip_frame_indices(4, 10, 4) == [1, 2, 3, 4]  # enough history: the T frames up to frame_id
    assert clip_frame_indices(0, 10, 3) == [8, 9, 0]  # frame_id < T - 1: earlier frames wrap to the end
    assert clip_frame_indices(1, 5, 8) == [4, 0, 1, 2, 3, 4, 0, 1]  # shorter than the clip: repeats
    assert clip_frame_indices(0, 1, 3) == [0, 0, 0]


@pytest.mark.parametrize("arguments", [(5, 5, 3), (-1, 5, 3), (0, 0, 3), (0, 5, 0)])
def test_clip_frame_indices_refuse_impossible_arguments(arguments):
    with pytest.raises(TrainingDataError):
        clip_frame_indices(*arguments)


def test_dataset_has_one_item_per_frame_of_every_video(synthetic):
    annotations, _, dataset = synthetic
    clips = VisTRClipDataset(dataset, num_frames=4, transform=ValidationTransform(SMALL))
    expected = [(v, f) for v, video in enumerate(annotations["videos"]) for f in range(len(video["file_names"]))]
    assert clips.items == expected and len(clips) == len(expected)


# ---------------------------------------------------------------------------------------------- targets


def test_untransformed_clips_match_the_frames_and_annotations_on_disk(synthetic):
    """Frames from the JPEG files and targets decoded from annotations.json, at the formula's frames."""
    annotations, image_dir, dataset = synthetic
    num_frames = 3
    assert min(len(video["file_names"]) for video in annotations["videos"]) < num_frames  # exercises repeats
    clips = VisTRClipDataset(dataset, num_frames=num_frames, transform=lambda clip: clip)
    absent_frames = dropped_instances = 0
    for index, (video_index, frame_id) in enumerate(clips.items):
        video = annotations["videos"][video_index]
        length, height, width = len(video["file_names"]), video["height"], video["width"]
        frames = [list(range(length))[frame_id - step] for step in [i % length for i in range(num_frames)][::-1]]
        example = clips[index]
        expected_pixels = torch.stack([normalized(Image.open(image_dir / video["file_names"][f])) for f in frames])
        torch.testing.assert_close(example["pixel_values"], expected_pixels)

        tracks = [a for a in annotations["annotations"] if a["video_id"] == video["id"]]
        present = [a for a in tracks if any(a["bboxes"][f] is not None for f in frames)]
        dropped_instances += len(tracks) - len(present)
        labels = example["labels"]
        assert labels["class_labels"].tolist() == [a["category_id"] for a in present]
        for n, annotation in enumerate(present):
            for t, f in enumerate(frames):
                box = annotation["bboxes"][f]
                assert bool(labels["valid"][n, t]) == (box is not None)
                if box is None:
                    absent_frames += 1
                    assert not labels["masks"][n, t].any() and not labels["boxes"][n, t].any()
                    continue
                x, y, w, h = box
                expected_box = [(x + w / 2) / width, (y + h / 2) / height, w / width, h / height]
                torch.testing.assert_close(labels["boxes"][n, t], torch.tensor(expected_box))
                segmentation = annotation["segmentations"][f]
                expected_mask = mask_utils.decode({**segmentation, "counts": segmentation["counts"].encode()})
                assert torch.equal(labels["masks"][n, t], torch.from_numpy(expected_mask.astype(bool)))
    assert absent_frames > 0 and dropped_instances > 0, "the synthetic set must exercise absent frames and instances"


def test_crowd_instances_are_left_out_and_polygons_are_decoded(synthetic):
    _, _, dataset = synthetic
    row = dataset[0]
    length, height, width = row["length"], row["height"], row["width"]
    polygon = {"counts": None, "size": None, "polygons": [[10.0, 12.0, 30.0, 12.0, 30.0, 25.0, 10.0, 25.0]]}
    extra = {
        "id": 999, "category_id": 6, "label": 5, "iscrowd": 0, "areas": [1.0] * length,
        "segmentations": [polygon] * length, "bboxes": [[10.0, 12.0, 20.0, 13.0]] * length,
    }  # fmt: skip
    crowd = {**row["instances"][0], "iscrowd": 1}
    clip = make_clip({**row, "instances": [crowd, extra]}, [0, 0])
    assert clip.class_labels.tolist() == [6]
    assert clip.masks.shape == (1, 2, height, width)
    np.testing.assert_allclose(mask_box(clip.masks[0, 0]), [10, 12, 30, 25], atol=1)


def test_boxes_are_clamped_to_the_frame(synthetic):
    _, _, dataset = synthetic
    row = dataset[0]
    outside = {**row["instances"][0], "bboxes": [[-5.0, -3.0, 1000.0, 1000.0]] * row["length"]}
    clip = make_clip({**row, "instances": [outside]}, [0])
    assert clip.boxes[0, 0].tolist() == [0.0, 0.0, float(row["width"]), float(row["height"])]


# ---------------------------------------------------------------------------------------------- geometry


def test_hflip_mirrors_boxes_with_masks(synthetic):
    _, _, dataset = synthetic
    row = dataset[1]
    clip = make_clip(row, list(range(row["length"])))
    flipped = hflip_clip(clip)
    assert assert_boxes_follow_masks(flipped, tolerance=0) > 0
    assert np.array_equal(np.asarray(flipped.frames[0]), np.asarray(clip.frames[0])[:, ::-1])
    assert torch.equal(hflip_clip(flipped).boxes, clip.boxes)


@pytest.mark.parametrize("shortest_edge, longest_edge", [(31, None), (97, None), (150, 170), (64, 64)])
def test_resize_moves_boxes_with_masks_within_a_pixel(synthetic, shortest_edge, longest_edge):
    _, _, dataset = synthetic
    for row in dataset.select(range(3)):
        clip = make_clip(row, list(range(row["length"])))
        resized = resize_clip(clip, shortest_edge, longest_edge)
        assert assert_boxes_follow_masks(clip, tolerance=0) > 0  # the annotation boxes are the masks' extents
        upscaled = min(resized.size) > min(clip.size)
        assert assert_boxes_follow_masks(resized, tolerance=1.0, exact=upscaled) > 0
        rectangles = rectangle_clip(*clip.size, [[(3, 5, 17, 30), (0, 0, 9, 4)], [(20, 11, 44, 40), None]])
        assert assert_boxes_follow_masks(resize_clip(rectangles, shortest_edge, longest_edge), tolerance=1.0) == 3
        # Masks: nearest neighbour as the original's interpolate (source index = floor(target index * in / out)).
        (height, width), (new_height, new_width) = clip.size, resized.size
        rows = np.floor(np.arange(new_height) * (height / new_height)).astype(int)
        columns = np.floor(np.arange(new_width) * (width / new_width)).astype(int)
        assert np.array_equal(resized.masks.numpy(), clip.masks.numpy()[:, :, rows][:, :, :, columns])
        expected_frame = clip.frames[0].resize((new_width, new_height), Image.BILINEAR)
        assert np.array_equal(np.asarray(resized.frames[0]), np.asarray(expected_frame))
        height, width = resized.size
        assert resized.masks.shape[-2:] == (height, width)
        assert all(frame.size == (width, height) for frame in resized.frames)


def test_crop_clips_boxes_and_invalidates_instances_cropped_out():
    rectangles = [
        [(2, 2, 10, 10), (4, 2, 12, 10), None],  # cropped out in every frame
        [(20, 20, 40, 35), (25, 22, 45, 37), (30, 24, 50, 39)],  # cut by the crop's right edge in frame 2
        [(14, 14, 30, 30), (44, 2, 50, 8), (16, 16, 32, 32)],  # inside, cropped out in frame 1
    ]
    clip = rectangle_clip(50, 60, rectangles)
    cropped = crop_clip(clip, top=12, left=12, height=30, width=34)
    assert cropped.size == (30, 34)
    assert cropped.valid.tolist() == [[False, False, False], [True, True, True], [True, False, True]]
    assert cropped.boxes[1, 2].tolist() == [18, 12, 34, 27]  # (30..50, 24..39) shifted by 12 and cut at x = 34
    assert assert_boxes_follow_masks(cropped, tolerance=0) == 5
    labels = clip_to_example(cropped)["labels"]
    assert labels["class_labels"].tolist() == [2, 3]  # the instance with no valid frame is dropped
    assert cropped.boxes[2, 1].any()  # degenerate, not zero: (32, 0, 34, 0)
    assert not labels["masks"][1, 1].any() and not labels["boxes"][1, 1].any()


def test_random_size_crop_draws_sides_and_positions_in_range():
    """Frames whose red and green values are their row and column, so a crop shows where it was taken."""
    clip = rectangle_clip(70, 90, [[(10, 10, 40, 40)]])
    rows, columns = np.mgrid[0:70, 0:90]
    coordinates = np.stack([rows, columns, np.zeros_like(rows)], axis=-1).astype(np.uint8)
    clip = Clip(**{**vars(clip), "frames": [Image.fromarray(coordinates)]})
    generator = torch.Generator().manual_seed(0)
    sizes, corners = set(), set()
    for _ in range(40):
        cropped = random_size_crop(clip, 40, 60, generator)
        (height, width), pixels = cropped.size, np.asarray(cropped.frames[0])
        top, left = int(pixels[0, 0, 0]), int(pixels[0, 0, 1])
        assert np.array_equal(pixels, coordinates[top : top + height, left : left + width])
        assert torch.equal(cropped.masks, clip.masks[..., top : top + height, left : left + width])
        sizes.add((height, width))
        corners.add((top, left))
    assert all(40 <= h <= 60 and 40 <= w <= 60 for h, w in sizes) and len(sizes) > 5
    assert len({top for top, _ in corners}) > 5 and len({left for _, left in corners}) > 5
    with pytest.raises(TrainingDataError, match="cannot crop"):
        random_size_crop(rectangle_clip(30, 90, [[None]]), 40, 60)


@pytest.mark.parametrize("seed", range(6))
def test_training_transform_moves_boxes_with_masks(seed):
    """Flip, crop and one (final) resize: all other resizes are identities at these sizes, so the
    rectangles' boxes must stay their masks' extents within a pixel."""
    options = AugmentationOptions(
        scales=(64,), max_size=None, crop_scales=(64,), crop_min_size=36, crop_max_size=60,
        final_scales=(48,), final_max_size=None, photometric_distort=False,
    )  # fmt: skip
    rectangles = [[(5, 8, 30, 40), (10, 8, 35, 40)], [(40, 30, 76, 60), None], [(0, 0, 12, 12), (2, 0, 14, 12)]]
    clip = rectangle_clip(64, 80, rectangles, seed=seed)
    transformed = TrainTransform(options)(clip, torch.Generator().manual_seed(seed))
    assert min(transformed.size) == 48
    assert_boxes_follow_masks(transformed, tolerance=1.0)
    # Frames whose rectangle the crop left out are invalid.
    for n, t in (~transformed.valid).nonzero().tolist():
        assert not transformed.masks[n, t].any() or rectangles[n][t] is None


def expected_size(height: int, width: int, shortest_edge: int, longest_edge: int) -> tuple[int, int]:
    """The original's resize rule written out: shortest edge to `shortest_edge`, reduced (rounded) first if
    the longest would pass `longest_edge`; the other side scaled and truncated."""
    if max(height, width) / min(height, width) * shortest_edge > longest_edge:
        shortest_edge = int(round(longest_edge * min(height, width) / max(height, width)))
    if height <= width:
        return shortest_edge, int(shortest_edge * width / height)
    return int(shortest_edge * height / width), shortest_edge


@functools.cache
def final_sizes_after_default_crop() -> frozenset[tuple[int, int]]:
    """Every size the default training transform can end with: crops of 384..600 a side, resized to 300/540."""
    return frozenset(expected_size(h, w, 300, 540) for h in range(384, 601) for w in range(384, 601))


@pytest.mark.parametrize("photometric", [False, True])
def test_every_frame_gets_the_same_geometric_transform(synthetic, photometric):
    """A clip of one frame repeated: each output frame must have the same boxes and masks, and without
    the (per-frame) photometric distortion the same pixels."""
    _, _, dataset = synthetic
    row = dataset[2]
    clip = make_clip(row, [1] * 5)
    options = AugmentationOptions(photometric_distort=photometric)  # the original sizes
    for seed in range(3):
        transformed = TrainTransform(options)(clip, torch.Generator().manual_seed(seed))
        assert transformed.size in final_sizes_after_default_crop()
        assert all(torch.equal(transformed.masks[:, 0], transformed.masks[:, t]) for t in range(1, 5))
        assert all(torch.equal(transformed.boxes[:, 0], transformed.boxes[:, t]) for t in range(1, 5))
        assert all(torch.equal(transformed.valid[:, 0], transformed.valid[:, t]) for t in range(1, 5))
        if not photometric:
            assert all(np.array_equal(np.asarray(transformed.frames[0]), np.asarray(f)) for f in transformed.frames)


def test_validation_transform_output_size_and_pixels():
    """Shortest edge 300 unless the longest would pass 540 (then longest 540), truncated, PIL bilinear."""
    for height, width in [(48, 80), (100, 400), (720, 1280), (300, 360), (401, 257)]:
        expected = expected_size(height, width, 300, 540)
        clip = rectangle_clip(height, width, [[(1, 1, 10, 12)]])
        example = clip_to_example(ValidationTransform()(clip))
        assert example["pixel_values"].shape == (1, 3, *expected)
        assert min(expected) == 300 or max(expected) == 540
        assert max(expected) <= 540 or min(expected) == 300
        resized = clip.frames[0].resize(expected[::-1], Image.BILINEAR)
        torch.testing.assert_close(example["pixel_values"][0], normalized(resized))
        assert example["labels"]["masks"].shape == (1, 1, *expected)


# ---------------------------------------------------------------------------------------------- photometric


def test_hsv_conversion_matches_colorsys():
    rgb = np.random.default_rng(0).uniform(0, 255, size=(500, 3)).astype(np.float32)
    rgb[:5] = [[0, 0, 0], [255, 255, 255], [80, 80, 80], [255, 0, 0], [0, 0, 255]]
    hsv = bgr_to_hsv(rgb[:, ::-1].copy())
    expected = np.array([colorsys.rgb_to_hsv(*(pixel / 255)) for pixel in rgb.astype(np.float64)])
    expected[:, 0] *= 360
    expected[:, 2] *= 255
    np.testing.assert_allclose(hsv[:, 1:], expected[:, 1:], atol=1e-4)
    hue_error = np.abs(hsv[:, 0] - expected[:, 0])
    assert np.minimum(hue_error, 360 - hue_error).max() < 1e-2
    np.testing.assert_allclose(hsv_to_bgr(hsv)[:, ::-1], rgb, atol=1e-2)
    back = np.array([colorsys.hsv_to_rgb(h / 360, s, v) for h, s, v in hsv.astype(np.float64)])
    np.testing.assert_allclose(hsv_to_bgr(hsv)[:, ::-1], back, atol=1e-2)


def test_photometric_distortion_draws_per_frame_and_never_wraps_around():
    """A gray frame stays gray (saturation, hue and channel swaps leave it), and brightness then at most
    one contrast keep it within (250 - 32) * 0.5 .. 255; a uint8 wrap-around would give values near 0."""
    gray = Image.new("RGB", (8, 6), (250, 250, 250))
    clip = Clip(
        frames=[gray] * 8,
        class_labels=torch.zeros(0, dtype=torch.int64),
        boxes=torch.zeros(0, 8, 4),
        masks=torch.zeros(0, 8, 6, 8, dtype=torch.bool),
        valid=torch.zeros(0, 8, dtype=torch.bool),
    )
    generator = torch.Generator().manual_seed(0)
    values = []
    for _ in range(10):
        for frame in photometric_distort(clip, generator).frames:
            pixels = np.asarray(frame)
            assert frame.size == gray.size and np.all(pixels == pixels[0, 0, 0])
            values.append(int(pixels[0, 0, 0]))
    assert min(values) >= 109 and max(values) == 255
    assert len(set(values)) > 10  # frames of one clip draw independently


# ---------------------------------------------------------------------------------------------- batches


def test_collate_pads_pixels_masks_and_marks_real_pixels():
    first = clip_to_example(rectangle_clip(30, 50, [[(1, 2, 20, 25), None]], seed=1))
    second = clip_to_example(rectangle_clip(44, 36, [[(3, 3, 30, 30), (4, 4, 31, 31)], [None, (0, 0, 5, 5)]], seed=2))
    batch = collate_fn([first, second])
    assert batch["pixel_values"].shape == (2, 2, 3, 44, 50)
    assert batch["pixel_mask"].shape == (2, 2, 44, 50) and batch["pixel_mask"].dtype == torch.long
    for index, (example, (height, width)) in enumerate([(first, (30, 50)), (second, (44, 36))]):
        expected_mask = torch.zeros(2, 44, 50, dtype=torch.long)
        expected_mask[:, :height, :width] = 1
        assert torch.equal(batch["pixel_mask"][index], expected_mask)
        assert torch.equal(batch["pixel_values"][index, :, :, :height, :width], example["pixel_values"])
        assert not batch["pixel_values"][index].masked_select(expected_mask[:, None].expand(-1, 3, -1, -1) == 0).any()
        labels = batch["labels"][index]
        assert labels["masks"].shape[-2:] == (44, 50) and labels["masks"].dtype == torch.bool
        assert torch.equal(labels["masks"][..., :height, :width], example["labels"]["masks"])
        assert not labels["masks"][..., height:, :].any() and not labels["masks"][..., width:].any()
        for key in ("class_labels", "boxes", "valid"):
            assert torch.equal(labels[key], example["labels"][key])
    with pytest.raises(ValueError, match="same number of frames"):
        collate_fn([first, clip_to_example(rectangle_clip(30, 50, [[None, None, None]]))])


# ---------------------------------------------------------------------------------------------- randomness


def test_augmentation_is_deterministic_given_a_seed_and_uses_only_torch_rng(synthetic):
    _, _, dataset = synthetic
    clips = VisTRClipDataset(dataset, num_frames=3, transform=TrainTransform(SMALL))

    def draw(seed: int, index: int) -> dict:
        torch.manual_seed(seed)
        return clips[index]

    def same(a: dict, b: dict) -> bool:
        return torch.equal(a["pixel_values"], b["pixel_values"]) and all(
            torch.equal(a["labels"][key], b["labels"][key]) for key in a["labels"]
        )

    python_state, numpy_state = random.getstate(), np.random.get_state()
    assert all(same(draw(seed, index), draw(seed, index)) for seed in (0, 1) for index in (0, 7))
    assert not all(same(draw(0, index), draw(1, index)) for index in range(4))
    assert random.getstate() == python_state  # no draw from Python's or numpy's global RNG
    assert np.array_equal(np.random.get_state()[1], numpy_state[1]) and np.random.get_state()[2] == numpy_state[2]

    # The global RNG and an explicit generator with the same seed give the same augmentation.
    clip = make_clip(dataset[0], [0, 1, 2])
    torch.manual_seed(5)
    from_global = TrainTransform(SMALL)(clip)
    from_generator = TrainTransform(SMALL)(clip, torch.Generator().manual_seed(5))
    assert torch.equal(from_global.masks, from_generator.masks)
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(from_global.frames, from_generator.frames))


# ---------------------------------------------------------------------------------------------- errors


def _same_example(a: dict, b: dict) -> bool:
    return torch.equal(a["pixel_values"], b["pixel_values"]) and all(
        torch.equal(a["labels"][key], b["labels"][key]) for key in a["labels"]
    )


def test_seeded_dataset_draws_per_item_whatever_the_global_rng_and_order(synthetic):
    """With a seed, item i of epoch e is one fixed augmentation: resuming mid-epoch or with other
    DataLoader workers redraws exactly the same clips."""
    _, _, dataset = synthetic
    clips = VisTRClipDataset(dataset, num_frames=3, transform=TrainTransform(SMALL), seed=11)
    torch.manual_seed(0)
    forward = [clips[index] for index in range(4)]
    torch.manual_seed(123)
    backward = [clips[index] for index in reversed(range(4))][::-1]
    assert all(_same_example(a, b) for a, b in zip(forward, backward))
    clips.set_epoch(1)
    assert not all(_same_example(a, clips[index]) for index, a in enumerate(forward))


def test_a_video_without_frames_is_refused_with_the_fix(synthetic):
    _, _, dataset = synthetic
    empty = {
        "video_id": 77, "width": 10, "height": 10, "length": 0, "file_names": [], "frames": [], "instances": [],
    }  # fmt: skip
    broken = datasets.concatenate_datasets([dataset, datasets.Dataset.from_list([empty], features=dataset.features)])
    with pytest.raises(TrainingDataError, match=r"no frames \(ids \[77\]\).*filter"):
        VisTRClipDataset(broken, num_frames=3, transform=ValidationTransform())
    with pytest.raises(TrainingDataError, match="video 77 has no frames"):
        make_clip(empty, [0])


def test_options_that_cannot_crop_are_refused():
    with pytest.raises(TrainingDataError, match="crop_min_size must not exceed"):
        AugmentationOptions(crop_scales=(300, 500), crop_min_size=384)
    with pytest.raises(TrainingDataError, match="scales must be"):
        AugmentationOptions(scales=())


# ---------------------------------------------------------------------------------------------- sources


@pytest.fixture(scope="module")
def sources(synthetic, tmp_path_factory) -> dict:
    """The synthetic set as each kind of source: its folder, a `save_parquet` file, a dataset folder holding
    that file (which `datasets.load_dataset` opens as parquet), and a datasets cache for them."""
    _, images, dataset = synthetic
    folder = tmp_path_factory.mktemp("sources")
    (folder / "dataset").mkdir()
    parquet = save_parquet(dataset, folder / "dataset" / "train.parquet")
    return {"root": images.parent, "parquet": parquet, "dataset folder": parquet.parent, "cache": folder / "cache"}


def test_every_source_gives_the_clips_of_the_folder(sources):
    """Item by item, under one seed and epoch: the same held-out videos, frames, targets and augmentation from
    the folder, the parquet file (as a file and as a dataset folder) and both streamed, against the map-style
    clips of the folder loaded and split as before."""
    reference_split = split_by_video_id(load_youtube_vis(sources["root"]), validation_fraction=0.4, seed=1)
    reference = VisTRClipDataset(reference_split["train"], num_frames=3, transform=TrainTransform(SMALL), seed=11)
    reference.set_epoch(1)
    expected = [reference[index] for index in range(len(reference))]
    cache = sources["cache"]
    opened = {
        "folder": open_training_data(sources["root"]),
        "parquet file": open_training_data(sources["parquet"], cache_dir=cache),
        "dataset folder": open_training_data(sources["dataset folder"], cache_dir=cache),
        "streamed parquet file": open_training_data(sources["parquet"], streaming=True, cache_dir=cache),
        "streamed folder": open_training_data(sources["root"], streaming=True),
    }
    for name, data in opened.items():
        split = data.split(validation_fraction=0.4, seed=1)
        assert list(split.validation["video_id"]) == list(reference_split["validation"]["video_id"]), name
        if data.streaming:
            clips = VisTRClipStream(split.train, split.train_lengths, 3, TrainTransform(SMALL), 11, shuffle_buffer=4)
            clips.set_epoch(1)
            examples = list(clips)
            by_index = {example["item_index"]: example for example in examples}
            assert len(examples) == len(by_index) == len(expected), name
        else:
            clips = VisTRClipDataset(split.train, num_frames=3, transform=TrainTransform(SMALL), seed=11)
            clips.set_epoch(1)
            by_index = {index: clips[index] for index in range(len(clips))}
        assert sorted(by_index) == list(range(len(expected))), name
        assert all(_same_example(by_index[index], example) for index, example in enumerate(expected)), name


def test_the_stream_order_is_seeded_and_dealt_out_to_processes_and_workers(sources):
    # the streamed folder: a streamed parquet file gives the same order (above) but datasets pauses 5 s per pass
    data = open_training_data(sources["root"], streaming=True)
    split = data.split(validation_fraction=0.4, seed=1)
    total = sum(split.train_lengths.values())

    def stream(seed: int = 11, epoch: int = 0, start_batch: int = 0, **options) -> VisTRClipStream:
        clips = VisTRClipStream(split.train, split.train_lengths, 2, lambda clip, generator: clip, seed, **options)
        clips.set_epoch(epoch)
        clips.resume_at(epoch, start_batch)
        return clips

    def order(**options) -> list[int]:
        return [example["item_index"] for example in stream(**options)]

    whole = order()
    assert sorted(whole) == list(range(total)) and whole != sorted(whole)  # every clip once, shuffled
    assert order() == whole and order(epoch=1) != whole and order(seed=12) != whole
    # two processes: alternate positions of the one-process order, as many for each
    dealt = total // 2 * 2
    first, second = order(rank=0, world_size=2), order(rank=1, world_size=2)
    assert (first, second) == (whole[0:dealt:2], whole[1:dealt:2]) and len(stream(rank=1, world_size=2)) == total // 2
    # a resume skips this process's batches already used
    assert order(rank=1, world_size=2, batch_size=2, start_batch=2) == second[4:]
    resumed = stream(start_batch=2)
    resumed.set_epoch(1)  # the next epoch starts at its beginning
    assert [example["item_index"] for example in resumed] == order(epoch=1)
    # DataLoader workers share the batches out without changing the loader's order
    loader = torch.utils.data.DataLoader(
        stream(batch_size=2), batch_size=2, num_workers=2, collate_fn=lambda batch: [e["item_index"] for e in batch]
    )
    assert [index for batch in loader for index in batch] == whole


def test_a_stream_refuses_lengths_that_are_not_its_videos(sources):
    data = open_training_data(sources["root"], streaming=True)
    lengths = dict(zip(data.videos.video_ids.tolist(), data.videos.lengths.tolist()))
    first_video = next(iter(lengths))
    wrong = {**lengths, first_video: lengths[first_video] + 1}
    with pytest.raises(TrainingDataError, match=f"video {first_video} has .* frames in the stream but"):
        list(VisTRClipStream(data.rows, wrong, 2, lambda clip, generator: clip, seed=0))
    with pytest.raises(TrainingDataError, match="need 0 <= rank < world_size"):
        VisTRClipStream(data.rows, lengths, 2, lambda clip, generator: clip, seed=0, rank=2, world_size=2)


def test_training_scales_pixels_exactly_as_the_processor():
    from vistr.tools.training_data import _normalized_pixels

    rng = np.random.default_rng(0)
    frames = [Image.fromarray(rng.integers(0, 256, (9, 13, 3), dtype=np.uint8)) for _ in range(2)]
    batch = VisTRVideoProcessor(num_frames=2)(videos=frames, do_resize=False)
    assert torch.equal(batch["pixel_values"][0], _normalized_pixels(frames))
