"""Stage 1 of training from scratch: teach the backbone what the objects look like before VisTR trains on it.

Why a stage of its own: VisTR, like DETR, starts from an ImageNet-trained backbone. From random weights,
its only class signal comes through Hungarian matching of queries that are not localized yet, and the
backbone never learns the classes. Measured on `vistr make-synthetic` data (6 shapes): after 5,000 VisTR
steps a linear probe on the backbone's last level, ROI-aligned at the ground-truth boxes, classified the
shapes at chance (0.175 held-out accuracy; chance 0.167) and `loss_ce` had not moved from the prior.

This stage is the ImageNet step done on the user's own data: every visible instance of every frame of
a batch of training clips is ROI-aligned (2 x 2 bins) on the backbone's last level and classified by a
linear layer (cross-entropy). Only the backbone is kept; `train_accelerate.py --backbone-pretraining-steps N`
runs it before the VisTR steps.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import box_convert, roi_align

ROI_BINS = 2


class BoxClassifier(nn.Module):
    """The backbone (shared with the VisTR model, trained in place) and a linear classifier over the
    last level's features at each ground-truth box."""

    def __init__(self, backbone: nn.Module, num_labels: int):
        super().__init__()
        self.backbone = backbone
        self.classifier = nn.Linear(backbone.channels[-1] * ROI_BINS * ROI_BINS, num_labels)

    def forward(self, frames: torch.Tensor, boxes: list[torch.Tensor]) -> torch.Tensor:
        """frames [N, 3, H, W]; boxes: per frame [k, 4] xyxy in pixels of the padded frame -> logits [sum k, C]."""
        level = self.backbone(frames)[-1]
        scale = level.shape[-1] / frames.shape[-1]
        features = roi_align(level, [b.to(level.dtype) for b in boxes], ROI_BINS, spatial_scale=scale, aligned=True)
        return self.classifier(features.flatten(1))


def frame_boxes(batch: dict) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor]:
    """A collated training batch as frames [B*T, 3, H, W], each frame's visible instance boxes (xyxy, pixels)
    and their class labels (concatenated in frame order)."""
    pixel_values = batch["pixel_values"]
    frames = pixel_values.flatten(0, 1)
    boxes, labels = [], []
    for video, target in enumerate(batch["labels"]):
        # boxes are normalized by the clip's own (unpadded) size; the clip sits at the top left of the batch
        mask = batch["pixel_mask"][video, 0]
        height, width = int(mask[:, 0].sum()), int(mask[0].sum())
        size = torch.tensor([width, height, width, height], dtype=torch.float32, device=frames.device)
        for frame in range(pixel_values.shape[1]):
            visible = target["valid"][:, frame]
            boxes.append(box_convert(target["boxes"][visible, frame], "cxcywh", "xyxy") * size)
            labels.append(target["class_labels"][visible])
    return frames, boxes, torch.cat(labels)


def _forever(loader: Iterable) -> Iterator:
    """Batches over and over, each pass with its own shuffle and augmentation draws."""
    epoch = 0
    while True:
        for owner in (loader, getattr(loader, "dataset", None)):
            if hasattr(owner, "set_epoch"):
                owner.set_epoch(epoch)
        yield from loader
        epoch += 1


def pretrain_backbone(model: BoxClassifier, loader: Iterable, optimizer: torch.optim.Optimizer, steps: int,
                      accelerator, clip_max_norm: float = 1.0, on_step=None) -> list[dict]:  # fmt: skip
    """`steps` optimizer steps of box classification; returns [{"step", "loss", "accuracy"}] per step.

    `model`, `loader` and `optimizer` come prepared by `accelerator`; `on_step(entry)` is called after each step
    (progress bars, logging). Batches without a visible instance are skipped (they hold no signal).
    """
    history = []
    model.train()
    batches = _forever(loader)
    while len(history) < steps:
        frames, boxes, labels = frame_boxes(next(batches))
        if labels.numel() == 0:
            continue
        logits = model(frames, boxes)
        loss = F.cross_entropy(logits, labels)
        accelerator.backward(loss)
        if clip_max_norm > 0:
            accelerator.clip_grad_norm_(model.parameters(), clip_max_norm)
        optimizer.step()
        optimizer.zero_grad()
        accuracy = (logits.argmax(1) == labels).float().mean()
        entry = {"step": len(history) + 1, "loss": accelerator.reduce(loss.detach(), reduction="mean").item(),
                 "accuracy": accelerator.reduce(accuracy, reduction="mean").item()}  # fmt: skip
        history.append(entry)
        if on_step is not None:
            on_step(entry)
    return history


__all__ = ["BoxClassifier", "frame_boxes", "pretrain_backbone"]
