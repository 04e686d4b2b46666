"""Stage 1 from scratch (tools/backbone_pretraining.py): the boxes it classifies and that it learns, on conftest's
synthetic set (`synthetic_root`). How the trainer runs it before the VisTR steps: test_train_accelerate.py."""

from __future__ import annotations

import torch
from accelerate import Accelerator
from torchvision.ops import masks_to_boxes
from vistr.configuration_vistr import VisTRConfig
from vistr.modeling_vistr import VisTRForVideoInstanceSegmentation
from vistr.tools.backbone_pretraining import BoxClassifier, frame_boxes, pretrain_backbone
from vistr.tools.training_data import AugmentationOptions, ValidationTransform, VisTRClipDataset, collate_fn
from vistr.tools.youtube_vis import load_youtube_vis


def _batch(root, sizes=(64, 80)) -> dict:
    """Two clips of different sizes, so that the smaller one is padded."""
    dataset = load_youtube_vis(root)
    examples = []
    for index, size in enumerate(sizes):
        clips = VisTRClipDataset(dataset, 2, ValidationTransform(AugmentationOptions(eval_scale=size, eval_max_size=200)))
        examples.append(clips[index * 4])
    return collate_fn(examples)


def test_frame_boxes_are_the_visible_masks_boxes_in_padded_pixels(synthetic_root):
    batch = _batch(synthetic_root)
    frames, boxes, labels = frame_boxes(batch)
    assert frames.shape[0] == 4 and len(boxes) == 4
    expected_boxes, expected_labels = [], []
    for target in batch["labels"]:
        for frame in range(2):
            visible = target["valid"][:, frame]
            masks = target["masks"][visible, frame]
            # masks_to_boxes gives the last pixel's index; the box edge lies one pixel further
            expected_boxes.append(masks_to_boxes(masks) + torch.tensor([0, 0, 1, 1]))
            expected_labels.append(target["class_labels"][visible])
    assert sum(len(b) for b in boxes) > 0
    for actual, expected in zip(boxes, expected_boxes):
        torch.testing.assert_close(actual, expected, atol=1.5, rtol=0)  # resizing rounds mask edges
    assert torch.equal(labels, torch.cat(expected_labels))


def _small_model() -> VisTRForVideoInstanceSegmentation:
    config = VisTRConfig(backbone="test_resnet", backbone_norm="batch_norm", backbone_frozen_stages=-1, num_frames=2,
                         num_queries_per_frame=3, d_model=48, encoder_layers=1, decoder_layers=1, ffn_dim=64,
                         num_labels=7)  # fmt: skip
    return VisTRForVideoInstanceSegmentation(config)


def test_box_classification_learns_a_fixed_batch_and_trains_the_shared_backbone(synthetic_root):
    torch.manual_seed(0)
    model = _small_model()
    classifier = BoxClassifier(model.vistr.backbone, model.config.num_labels)
    before = {name: p.detach().clone() for name, p in model.vistr.backbone.named_parameters()}
    optimizer = torch.optim.AdamW(classifier.parameters(), lr=3e-3)
    history = pretrain_backbone(classifier, [_batch(synthetic_root)], optimizer, 40, Accelerator(cpu=True))
    assert [entry["step"] for entry in history] == list(range(1, 41))
    assert history[-1]["loss"] < 0.3 * history[0]["loss"]
    assert history[-1]["accuracy"] == 1.0
    changed = [name for name, p in model.vistr.backbone.named_parameters() if not torch.equal(p, before[name])]
    assert len(changed) == len(before)  # every backbone weight of the VisTR model itself was trained
