"""VisTR's training loss: instance-sequence Hungarian matching and the original loss terms.

VisTR matches whole instance *sequences* to ground truth: slot `s` of every frame (queries
`t * n + s`) is one predicted sequence, and the assignment is solved once per video over costs
averaged across frames. The matched (query, frame) pairs then get DETR's losses: class
cross-entropy with a down-weighted no-object class, L1 and GIoU on boxes, sigmoid focal and dice
on masks, and the same (without masks) for every auxiliary decoder layer.

Everything here reproduces the original numbers (`../shared/parity/criterion_fixed.pt`, float64
to 1e-9) with one deliberate change: after the assignment, the original expands pair `j` to the
frames where *instance j* is visible instead of where the *assigned* instance is visible, so the
supervised frames depend on the order of instances in the annotation file. We use the frames of
the assigned instance (the README lists this difference).

Labels, one dict per video (`T` = frames, `N` = instances, absent frames have `valid` False):

* `class_labels`: LongTensor `[N]` (or `[N, T]`), class indices (YouTube-VIS category ids);
* `boxes`: `[N, T, 4]` normalized `(cx, cy, w, h)`; ignored (taken as 0) where not valid;
* `masks`: `[N, T, H, W]` at the (padded) input resolution, bool or float;
* `valid`: bool `[N, T]`.

Target tensors keep their own dtype (float32 from the data pipeline), as in the original, where
target-only box arithmetic stays in float32 even for a float64 model.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from .optional_dependencies import require

LOSS_KEYS = ("loss_ce", "loss_bbox", "loss_giou", "loss_mask", "loss_dice")


@dataclass
class VideoTargets:
    """One video's ground truth, instance-major: entry `i * T + t` is instance `i` in frame `t`."""

    frame_labels: Tensor  # [N, T] long; 0 where absent, as the original's targets
    boxes: Tensor  # [N, T, 4]; zeros where absent
    masks: Tensor  # [N, T, H, W]
    valid: Tensor  # [N, T] bool

    @property
    def num_instances(self) -> int:
        return self.valid.shape[0]


@dataclass(frozen=True)
class LossSettings:
    """The matcher costs and loss coefficients of a `VisTRConfig` (its defaults are the original's)."""

    num_labels: int
    num_frames: int
    num_queries_per_frame: int
    class_cost: float
    bbox_cost: float
    giou_cost: float
    bbox_loss_coefficient: float
    giou_loss_coefficient: float
    mask_loss_coefficient: float
    dice_loss_coefficient: float
    eos_coefficient: float
    focal_alpha: float
    focal_gamma: float
    absent_frame_mask_loss: bool = False

    @classmethod
    def from_config(cls, config) -> LossSettings:
        names = [name for name in cls.__dataclass_fields__ if name != "num_labels"]
        return cls(num_labels=config.num_labels, **{name: getattr(config, name) for name in names})

    def weight_dict(self, auxiliary_layers: int) -> dict[str, float]:
        """Loss name -> weight, with `_i` copies for auxiliary decoder layer i (as the original builds it)."""
        weights = {
            "loss_ce": 1.0,
            "loss_bbox": self.bbox_loss_coefficient,
            "loss_giou": self.giou_loss_coefficient,
            "loss_mask": self.mask_loss_coefficient,
            "loss_dice": self.dice_loss_coefficient,
        }
        for layer in range(auxiliary_layers):
            weights.update({f"{name}_{layer}": weight for name, weight in list(weights.items()) if name in LOSS_KEYS})
        return weights


# ------------------------------------------------------------------------------------------------- labels


def prepare_targets(labels: list[dict], num_frames: int, batch_size: int) -> list[VideoTargets]:
    """Check the user's label dicts against the clip and bring them into `VideoTargets` form."""
    if len(labels) != batch_size:
        raise ValueError(f"got {len(labels)} label dicts for a batch of {batch_size} videos; pass one dict per video")
    return [_video_targets(video_labels, num_frames, index) for index, video_labels in enumerate(labels)]


def _video_targets(labels: dict, num_frames: int, index: int) -> VideoTargets:
    missing = [key for key in ("class_labels", "boxes", "masks", "valid") if key not in labels]
    if missing:
        raise ValueError(f"labels[{index}] lacks {missing}; each video needs class_labels, boxes, masks and valid")
    valid = torch.as_tensor(labels["valid"]).bool()
    boxes, masks = labels["boxes"], labels["masks"]
    class_labels = torch.as_tensor(labels["class_labels"]).long().to(valid.device)
    instances = valid.shape[0] if valid.dim() > 0 else 0
    if class_labels.dim() == 1 and class_labels.shape[0] == instances:
        class_labels = class_labels[:, None].expand(-1, num_frames)
    problems = [
        f"{name} has shape {list(shape)}, expected [{expected}]"
        for name, shape, expected, ok in (
            ("valid", valid.shape, f"N, {num_frames}", tuple(valid.shape) == (instances, num_frames)),
            ("class_labels", class_labels.shape, "N", tuple(class_labels.shape) == (instances, num_frames)),
            ("boxes", boxes.shape, f"N, {num_frames}, 4", tuple(boxes.shape) == (instances, num_frames, 4)),
            ("masks", masks.shape, f"N, {num_frames}, H, W", masks.dim() == 4 and tuple(masks.shape[:2]) == (instances, num_frames)),
        )
        if not ok
    ]
    if problems:
        raise ValueError(f"labels[{index}] does not fit a clip of {num_frames} frames: " + "; ".join(problems))
    boxes = boxes.masked_fill(~valid[..., None].to(boxes.device), 0)
    return VideoTargets(class_labels.masked_fill(~valid, 0), boxes, masks, valid)


# ------------------------------------------------------------------------------------------------- boxes


def box_cxcywh_to_xyxy(boxes: Tensor) -> Tensor:
    center_x, center_y, width, height = boxes.unbind(-1)
    return torch.stack(
        [center_x - 0.5 * width, center_y - 0.5 * height, center_x + 0.5 * width, center_y + 0.5 * height], dim=-1
    )


def _area(boxes: Tensor) -> Tensor:
    return (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])


def smoothed_box_iou(boxes1: Tensor, boxes2: Tensor) -> tuple[Tensor, Tensor]:
    """Elementwise (broadcast) IoU of xyxy boxes with VisTR's +1e-6 smoothing, and the union.

    The smoothing makes two empty boxes (absent frames) an IoU of 1 rather than NaN.
    """
    top_left = torch.max(boxes1[..., :2], boxes2[..., :2])
    bottom_right = torch.min(boxes1[..., 2:], boxes2[..., 2:])
    overlap = (bottom_right - top_left).clamp(min=0)
    intersection = overlap[..., 0] * overlap[..., 1]
    union = _area(boxes1) + _area(boxes2) - intersection
    return (intersection + 1e-6) / (union + 1e-6), union


def smoothed_generalized_box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """Elementwise GIoU with the same smoothing on the enclosing-box term."""
    iou, union = smoothed_box_iou(boxes1, boxes2)
    top_left = torch.min(boxes1[..., :2], boxes2[..., :2])
    bottom_right = torch.max(boxes1[..., 2:], boxes2[..., 2:])
    enclosing = (bottom_right - top_left).clamp(min=0)
    enclosing_area = enclosing[..., 0] * enclosing[..., 1]
    return iou - ((enclosing_area - union) + 1e-6) / (enclosing_area + 1e-6)


# ------------------------------------------------------------------------------------------------- matching


def sequence_cost_matrix(logits: Tensor, boxes: Tensor, targets: VideoTargets, settings: LossSettings) -> Tensor:
    """`[slots, instances]` matching costs of one video, each term averaged over the frames.

    Absent frames take part with class 0 and box zeros, as in the original (its costs are kept
    bit for bit; only the expansion to frames after the assignment differs).
    """
    frames, slots = settings.num_frames, settings.num_queries_per_frame
    probabilities = logits.softmax(-1).view(frames, slots, -1).transpose(0, 1)  # [n, T, C+1]
    frame_index = torch.arange(frames, device=logits.device).expand_as(targets.frame_labels)
    class_cost = -probabilities[:, frame_index, targets.frame_labels].mean(-1)  # [n, N]
    predicted = boxes.view(frames, slots, 4).transpose(0, 1)[:, None]  # [n, 1, T, 4]
    truth = targets.boxes[None]  # [1, N, T, 4]
    bbox_cost = (predicted - truth).abs().mean((-1, -2))
    iou_cost = -smoothed_box_iou(box_cxcywh_to_xyxy(predicted), box_cxcywh_to_xyxy(truth))[0].mean(-1)
    return settings.class_cost * class_cost + settings.bbox_cost * bbox_cost + settings.giou_cost * iou_cost


def _linear_sum_assignment(cost: Tensor) -> tuple:
    """scipy's Hungarian solver, imported when a loss is computed: inference needs no scipy."""
    return require("scipy.optimize", "the training loss (Hungarian matching)").linear_sum_assignment(cost)


@torch.no_grad()
def assign_sequences(
    logits: Tensor, boxes: Tensor, targets: list[VideoTargets], settings: LossSettings
) -> list[tuple[Tensor, Tensor]]:
    """Per video, the Hungarian assignment of slots to whole instance sequences: (slot ids, ascending; their
    instance ids)."""
    assignments = []
    for video, video_targets in enumerate(targets):
        if video_targets.num_instances == 0:
            empty = torch.zeros(0, dtype=torch.long, device=logits.device)
            assignments.append((empty, empty))
            continue
        cost = sequence_cost_matrix(logits[video], boxes[video], video_targets, settings)
        slot_ids, instance_ids = _linear_sum_assignment(cost.cpu())
        assignments.append((torch.as_tensor(slot_ids, dtype=torch.long, device=logits.device),
                            torch.as_tensor(instance_ids, dtype=torch.long, device=logits.device)))  # fmt: skip
    return assignments


def pair_entries(
    assignments: list[tuple[Tensor, Tensor]], targets: list[VideoTargets], settings: LossSettings,
    every_frame: bool = False,
) -> list[tuple[Tensor, Tensor]]:
    """Per video, (query indices, target entry indices) of the frames of each assigned (slot, instance) pair.

    The frames are those where the instance is visible (the original's), or with `every_frame` all `T`, the
    absent ones pairing the slot with an empty target mask: queries `t * n + slot_j`, entries
    `instance_j * T + t`, pairs in slot order, frames ascending.
    """
    indices = []
    for (slot_ids, instance_ids), video_targets in zip(assignments, targets):
        frames = video_targets.valid[instance_ids].to(slot_ids.device)  # [pairs, T]
        if every_frame:
            frames = torch.ones_like(frames)
        pair, frame = frames.nonzero(as_tuple=True)
        query = frame * settings.num_queries_per_frame + slot_ids[pair]
        entry = instance_ids[pair] * settings.num_frames + frame
        indices.append((query, entry))
    return indices


@torch.no_grad()
def match_sequences(
    logits: Tensor, boxes: Tensor, targets: list[VideoTargets], settings: LossSettings
) -> list[tuple[Tensor, Tensor]]:
    """Per video, (query indices, target entry indices) of the matched (query, frame) pairs: each assigned
    pair's frames where its instance is visible (`pair_entries`)."""
    return pair_entries(assign_sequences(logits, boxes, targets, settings), targets, settings)


# ------------------------------------------------------------------------------------------------- losses


def _batch_and_query(indices: list[tuple[Tensor, Tensor]]) -> tuple[Tensor, Tensor]:
    batch = torch.cat([torch.full_like(query, video) for video, (query, _) in enumerate(indices)])
    return batch, torch.cat([query for query, _ in indices])


def _matched_entries(values: list[Tensor], indices: list[tuple[Tensor, Tensor]]) -> Tensor:
    """Concatenate, over videos, the matched entries of flattened per-video target tensors."""
    return torch.cat([value[entry.to(value.device)] for value, (_, entry) in zip(values, indices)])


def classification_losses(
    logits: Tensor, targets: list[VideoTargets], indices, settings: LossSettings, log: bool
) -> dict[str, Tensor]:
    """Weighted cross-entropy over every query (unmatched → no-object, weight `eos_coefficient`)."""
    batch_query = _batch_and_query(indices)
    matched_classes = _matched_entries([t.frame_labels.flatten() for t in targets], indices).to(logits.device)
    target_classes = torch.full(logits.shape[:2], settings.num_labels, dtype=torch.long, device=logits.device)
    target_classes[batch_query] = matched_classes
    # built in float32 then cast, as the original's buffer (0.1 is not exact in float32)
    class_weights = torch.ones(settings.num_labels + 1)
    class_weights[-1] = settings.eos_coefficient
    class_weights = class_weights.to(logits)
    loss = F.cross_entropy(logits.transpose(1, 2), target_classes, class_weights)
    # a weighted mean over this process's queries; rescaled so that the mean over processes (DDP) is the weighted
    # mean over all their queries, as one process with their whole batch computes it (the factor is 1 alone)
    weight_sum = class_weights[target_classes].sum().detach()
    losses = {"loss_ce": loss * (weight_sum / average_over_processes(weight_sum))}
    if log:
        losses["class_error"] = _class_error(logits[batch_query], matched_classes)
    return losses


@torch.no_grad()
def _class_error(matched_logits: Tensor, matched_classes: Tensor) -> Tensor:
    """100 - top-1 accuracy (%) of the matched queries; 100 when nothing is matched, as DETR logs it."""
    if matched_classes.numel() == 0:
        return torch.tensor(100.0, device=matched_logits.device)
    accuracy = (matched_logits.argmax(-1) == matched_classes).float().mean() * 100
    return 100 - accuracy


@torch.no_grad()
def cardinality_error(logits: Tensor, targets: list[VideoTargets]) -> Tensor:
    """Mean |#queries not predicting no-object - #target entries| (entries include absent frames)."""
    predicted = (logits.argmax(-1) != logits.shape[-1] - 1).sum(1).float()
    expected = torch.tensor([float(t.valid.numel()) for t in targets], device=logits.device)
    return F.l1_loss(predicted, expected)


def box_losses(pred_boxes: Tensor, targets: list[VideoTargets], indices, num_boxes: float) -> dict[str, Tensor]:
    matched_predictions = pred_boxes[_batch_and_query(indices)]
    matched_targets = _matched_entries([t.boxes.flatten(0, 1) for t in targets], indices).to(pred_boxes.device)
    giou = smoothed_generalized_box_iou(box_cxcywh_to_xyxy(matched_predictions), box_cxcywh_to_xyxy(matched_targets))
    return {
        "loss_bbox": F.l1_loss(matched_predictions, matched_targets, reduction="none").sum() / num_boxes,
        "loss_giou": (1 - giou).sum() / num_boxes,
    }


def _pad_masks(masks: list[Tensor]) -> list[Tensor]:
    """Zero-pad every video's masks to the largest height and width of the batch (bottom and right)."""
    height = max(mask.shape[-2] for mask in masks)
    width = max(mask.shape[-1] for mask in masks)
    return [F.pad(mask, (0, width - mask.shape[-1], 0, height - mask.shape[-2])) for mask in masks]


def mask_losses(
    pred_masks: Tensor, targets: list[VideoTargets], indices, num_boxes: float, settings: LossSettings
) -> dict[str, Tensor]:
    """Sigmoid focal and dice losses of the matched masks, predictions upsampled to the target size."""
    target_masks = _pad_masks([t.masks.flatten(0, 1) for t in targets])
    matched_targets = _matched_entries(target_masks, indices).to(pred_masks)
    matched_predictions = pred_masks[_batch_and_query(indices)]
    matched_predictions = F.interpolate(
        matched_predictions[:, None], size=matched_targets.shape[-2:], mode="bilinear", align_corners=False
    )[:, 0]
    logits, truth = matched_predictions.flatten(1), matched_targets.flatten(1)
    return {
        "loss_mask": sigmoid_focal_loss(logits, truth, num_boxes, settings.focal_alpha, settings.focal_gamma),
        "loss_dice": dice_loss(logits, truth, num_boxes),
    }


def sigmoid_focal_loss(logits: Tensor, truth: Tensor, num_boxes: float, alpha: float, gamma: float) -> Tensor:
    """Focal loss per pixel, averaged over pixels, summed over masks, divided by `num_boxes`."""
    probability = logits.sigmoid()
    cross_entropy = F.binary_cross_entropy_with_logits(logits, truth, reduction="none")
    p_t = probability * truth + (1 - probability) * (1 - truth)
    loss = cross_entropy * ((1 - p_t) ** gamma)
    if alpha >= 0:
        loss = (alpha * truth + (1 - alpha) * (1 - truth)) * loss
    return loss.mean(1).sum() / num_boxes


def dice_loss(logits: Tensor, truth: Tensor, num_boxes: float) -> Tensor:
    probability = logits.sigmoid()
    numerator = 2 * (probability * truth).sum(1)
    denominator = probability.sum(-1) + truth.sum(-1)
    return (1 - (numerator + 1) / (denominator + 1)).sum() / num_boxes


def normalizer(targets: list[VideoTargets], device: torch.device) -> float:
    """Target entries (absent frames included, as the original counts them), averaged over processes."""
    count = torch.tensor([float(sum(t.valid.numel() for t in targets))], device=device)
    return torch.clamp(average_over_processes(count), min=1).item()


def average_over_processes(value: Tensor) -> Tensor:
    """`value` averaged over the processes of a distributed run (itself when there is one)."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return value
    total = value.clone()
    torch.distributed.all_reduce(total)
    return total / torch.distributed.get_world_size()


def _layer_losses(logits, boxes, targets, settings, num_boxes, log: bool):
    assignments = assign_sequences(logits, boxes, targets, settings)
    indices = pair_entries(assignments, targets, settings)
    losses = classification_losses(logits, targets, indices, settings, log=log)
    losses.update(box_losses(boxes, targets, indices, num_boxes))
    losses["cardinality_error"] = cardinality_error(logits, targets)
    return losses, assignments, indices


def vistr_loss(
    logits: Tensor,
    pred_boxes: Tensor,
    pred_masks: Tensor | Callable[[list[tuple[Tensor, Tensor]]], Tensor],
    auxiliary_outputs: list[dict[str, Tensor]] | None,
    labels: list[dict],
    settings: LossSettings,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Weighted total and every term (`loss_ce`, ..., `loss_ce_0`, ...; `*_error` are logged only).

    `pred_masks` is `[B, T*n, H, W]`, or a function of the matching (`pair_entries`' indices: the pairs'
    visible frames, or all frames with `absent_frame_mask_loss`) that returns them: the matching needs no
    masks, so a model can compute the masks of matched slots only.
    """
    targets = prepare_targets(labels, settings.num_frames, logits.shape[0])
    num_boxes = normalizer(targets, logits.device)
    loss_dict, assignments, indices = _layer_losses(logits, pred_boxes, targets, settings, num_boxes, log=True)
    if settings.absent_frame_mask_loss:
        indices = pair_entries(assignments, targets, settings, every_frame=True)
    if callable(pred_masks):
        pred_masks = pred_masks(indices)
    loss_dict.update(mask_losses(pred_masks, targets, indices, num_boxes, settings))
    for layer, outputs in enumerate(auxiliary_outputs or []):
        layer_losses, _, _ = _layer_losses(
            outputs["logits"], outputs["pred_boxes"], targets, settings, num_boxes, log=False
        )
        loss_dict.update({f"{name}_{layer}": value for name, value in layer_losses.items()})
    weights = settings.weight_dict(len(auxiliary_outputs or []))
    total = sum(loss_dict[name] * weights[name] for name in loss_dict if name in weights)
    return total, loss_dict


def ForVideoInstanceSegmentationLoss(
    logits: Tensor,
    pred_boxes: Tensor,
    pred_masks: Tensor | Callable[[list[tuple[Tensor, Tensor]]], Tensor],
    auxiliary_outputs: list[dict[str, Tensor]] | None,
    labels: list[dict],
    config,
) -> tuple[Tensor, dict[str, Tensor]]:
    """`vistr_loss` with the settings of a `VisTRConfig`: the form `PreTrainedModel.loss_function` is called in
    (transformers' losses take the config, as `ForObjectDetectionLoss`); registered in `LOSS_MAPPING` by
    `modeling_vistr.py` under the model's class name."""
    return vistr_loss(logits, pred_boxes, pred_masks, auxiliary_outputs, labels, LossSettings.from_config(config))


__all__ = [
    "ForVideoInstanceSegmentationLoss",
    "LossSettings",
    "VideoTargets",
    "assign_sequences",
    "match_sequences",
    "pair_entries",
    "prepare_targets",
    "sequence_cost_matrix",
    "vistr_loss",
]
