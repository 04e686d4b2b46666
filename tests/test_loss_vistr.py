"""The training loss against the ORIGINAL criterion with the matcher's valid-flag bug fixed.

Golden values: `../shared/parity/criterion_fixed.pt` (the original `HungarianMatcher` and
`SetCriterion` run on the fixture outputs, with the one-index fix described in its README, 7b).
"""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
import torchvision
from conftest import case_inputs
from vistr.configuration_vistr import VisTRConfig
from vistr.loss_vistr import LossSettings, match_sequences, prepare_targets, sequence_cost_matrix, vistr_loss
from vistr.modeling_vistr import VisTRForVideoInstanceSegmentation

FRAMES, INSTANCES = 4, 3
SETTINGS = LossSettings.from_config(VisTRConfig(num_frames=FRAMES, num_queries_per_frame=10))  # 41 classes, original costs
WEIGHTED_TERMS = ("loss_ce", "loss_bbox", "loss_giou", "loss_mask", "loss_dice", "loss_ce_0", "loss_bbox_0", "loss_giou_0")


@pytest.fixture(scope="module")
def criterion(parity_dir):
    return torch.load(parity_dir / "criterion_fixed.pt", weights_only=True)


def fixture_labels(criterion) -> list[dict]:
    """The original's instance-major target entries (e = instance * T + t) in our per-video format."""
    target = criterion["targets"][0]
    valid = target["valid"].view(INSTANCES, FRAMES).bool()
    return [{
        "class_labels": target["labels"].view(INSTANCES, FRAMES).max(1).values,
        "boxes": target["boxes"].view(INSTANCES, FRAMES, 4),
        "masks": target["masks"].view(INSTANCES, FRAMES, *target["masks"].shape[-2:]),
        "valid": valid,
    }]  # fmt: skip


def fixture_outputs(parity_dir, dtype_name: str) -> dict:
    outputs = torch.load(parity_dir / f"outputs_{'fp64' if dtype_name == 'float64' else 'fp32'}.pt", weights_only=True)
    case = outputs["unpadded"]
    auxiliary = [{"logits": layer["pred_logits"], "pred_boxes": layer["pred_boxes"]} for layer in case["aux_outputs"]]
    return {"logits": case["pred_logits"], "pred_boxes": case["pred_boxes"], "pred_masks": case["pred_masks"],
            "auxiliary_outputs": auxiliary}  # fmt: skip


def run_loss(outputs: dict, labels: list[dict], settings: LossSettings = SETTINGS):
    return vistr_loss(outputs["logits"], outputs["pred_boxes"], outputs["pred_masks"], outputs["auxiliary_outputs"],
                      labels, settings)  # fmt: skip


def test_float64_terms_and_total_equal_fixed_original(parity_dir, criterion):
    total, loss_dict = run_loss(fixture_outputs(parity_dir, "float64"), fixture_labels(criterion))
    reference = criterion["float64"]
    assert set(loss_dict) == set(reference["loss_dict"])
    for name, expected in reference["loss_dict"].items():
        assert abs(loss_dict[name].item() - expected.item()) <= 1e-9, (name, loss_dict[name].item(), expected.item())
    assert abs(total.item() - reference["total_loss"].item()) <= 1e-9
    assert total.dtype == torch.float64


def test_float32_terms_close_to_fixed_original(parity_dir, criterion):
    total, loss_dict = run_loss(fixture_outputs(parity_dir, "float32"), fixture_labels(criterion))
    reference = criterion["float32"]
    for name in WEIGHTED_TERMS:
        assert abs(loss_dict[name].item() - reference["loss_dict"][name].item()) <= 1e-5, name
    assert abs(total.item() - reference["total_loss"].item()) <= 1e-4


@pytest.mark.parametrize("layer", ["final", "aux_0"])
def test_matcher_costs_and_indices_equal_fixed_original(parity_dir, criterion, layer):
    outputs = fixture_outputs(parity_dir, "float64")
    if layer == "aux_0":
        outputs = {**outputs, **outputs["auxiliary_outputs"][0]}
    targets = prepare_targets(fixture_labels(criterion), FRAMES, batch_size=1)
    cost = sequence_cost_matrix(outputs["logits"][0], outputs["pred_boxes"][0], targets[0], SETTINGS)
    expected_cost = criterion["float64"]["cost_matrices"][layer][0]
    assert (cost - expected_cost).abs().max().item() <= 1e-12
    (queries, entries), = match_sequences(outputs["logits"], outputs["pred_boxes"], targets, SETTINGS)
    expected_queries, expected_entries = criterion["float64"]["indices"][layer][0]
    assert queries.tolist() == expected_queries.tolist() and entries.tolist() == expected_entries.tolist()


def test_model_forward_with_labels_returns_the_fixed_original_loss(tiny_model, parity_inputs, criterion):
    model = copy.deepcopy(tiny_model).double().eval()
    pixel_values, _ = case_inputs(parity_inputs, "unpadded", torch.float64)
    with torch.no_grad():
        outputs = model(pixel_values, labels=fixture_labels(criterion))
    assert abs(outputs.loss.item() - criterion["float64"]["total_loss"].item()) <= 1e-9
    assert abs(outputs.loss_dict["loss_mask"].item() - criterion["float64"]["loss_dict"]["loss_mask"].item()) <= 1e-9


def test_instance_order_does_not_change_the_loss(parity_dir, criterion):
    """The fix: frames supervised follow the assigned instance, so listing instances in another order
    gives the same loss (the original's criterion.pt would not: its matched frames follow the order)."""
    outputs = fixture_outputs(parity_dir, "float64")
    labels = fixture_labels(criterion)[0]
    reordered = {name: value[[2, 0, 1]] for name, value in labels.items()}
    total, _ = run_loss(outputs, [labels])
    total_reordered, _ = run_loss(outputs, [reordered])
    assert abs(total.item() - total_reordered.item()) <= 1e-12


def test_batch_of_identical_videos_gives_the_single_video_loss(parity_dir, criterion):
    outputs = fixture_outputs(parity_dir, "float64")
    doubled = {
        "logits": outputs["logits"].repeat(2, 1, 1), "pred_boxes": outputs["pred_boxes"].repeat(2, 1, 1),
        "pred_masks": outputs["pred_masks"].repeat(2, 1, 1, 1),
        "auxiliary_outputs": [{k: v.repeat(2, 1, 1) for k, v in layer.items()} for layer in outputs["auxiliary_outputs"]],
    }  # fmt: skip
    labels = fixture_labels(criterion)
    total, single = run_loss(outputs, labels)
    total_doubled, batched = run_loss(doubled, labels * 2)
    for name in WEIGHTED_TERMS:
        assert abs(batched[name].item() - single[name].item()) <= 1e-12, name
    assert abs(total_doubled.item() - total.item()) <= 1e-12


def test_video_without_instances_only_pushes_towards_no_object(parity_dir):
    outputs = fixture_outputs(parity_dir, "float64")
    empty = [{"class_labels": torch.zeros(0, dtype=torch.long), "boxes": torch.zeros(0, FRAMES, 4),
              "masks": torch.zeros(0, FRAMES, 128, 160, dtype=torch.bool), "valid": torch.zeros(0, FRAMES, dtype=torch.bool)}]
    _, loss_dict = run_loss(outputs, empty)
    for name in ("loss_bbox", "loss_giou", "loss_mask", "loss_dice"):
        assert loss_dict[name].item() == 0.0, name
    log_probabilities = outputs["logits"][0].double().log_softmax(-1)
    assert abs(loss_dict["loss_ce"].item() + log_probabilities[:, -1].mean().item()) <= 1e-12


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda l: l.pop("valid"), "lacks \\['valid'\\]"),
        (lambda l: l.update(boxes=l["boxes"][:, :2]), "boxes has shape \\[3, 2, 4\\], expected \\[N, 4, 4\\]"),
        (lambda l: l.update(masks=l["masks"][0]), "masks has shape"),
        (lambda l: l.update(class_labels=l["class_labels"][:2]), "class_labels has shape \\[2\\]"),
    ],
)
def test_malformed_labels_are_named(criterion, change, message):
    labels = fixture_labels(criterion)[0]
    change(labels)
    with pytest.raises(ValueError, match=message):
        prepare_targets([labels], FRAMES, batch_size=1)
    with pytest.raises(ValueError, match="one dict per video"):
        prepare_targets(fixture_labels(criterion), FRAMES, batch_size=2)


def test_loss_backpropagates_through_every_head():
    config = VisTRConfig(backbone="resnet18", num_frames=2, encoder_layers=1, decoder_layers=2, ffn_dim=64, num_labels=5)
    model = VisTRForVideoInstanceSegmentation(config).train()
    masks = torch.zeros(2, 2, 64, 64, dtype=torch.bool)
    masks[0, :, 10:30, 12:40] = True
    masks[1, 1, 40:60, 5:20] = True
    labels = [{"class_labels": torch.tensor([1, 3]), "masks": masks, "valid": torch.tensor([[True, True], [False, True]]),
               "boxes": torch.tensor([[[0.4, 0.3, 0.4, 0.3]] * 2, [[0, 0, 0, 0], [0.2, 0.8, 0.25, 0.3]]])}]
    outputs = model(torch.randn(1, 2, 3, 64, 64), labels=labels)
    assert {"loss_ce_0", "loss_bbox_0", "loss_giou_0"} <= set(outputs.loss_dict)
    outputs.loss.backward()
    for name in ("class_labels_classifier.weight", "bbox_predictor.layers.2.weight", "mask_head.dcn.weight",
                 "instance_head.out_conv.weight", "vistr.query_position_embeddings.weight"):
        assert model.get_parameter(name).grad.abs().sum() > 0, name


def test_absent_frame_mask_loss_asks_for_empty_masks_where_the_instance_is_absent():
    """With the option, a matched slot's masks in its instance's absent frames enter the focal and dice terms
    with an empty target; without it (the original) only visible frames do. Reference: torchvision's focal
    loss and the dice formula in float64, over the pairs the matcher chose."""
    torch.manual_seed(0)
    frames, slots, size = 3, 4, (12, 16)
    config = VisTRConfig(num_frames=frames, num_queries_per_frame=slots, num_labels=5, absent_frame_mask_loss=True)
    settings = LossSettings.from_config(config)
    masks = torch.zeros(2, frames, *size, dtype=torch.bool)
    masks[0, :, 2:8, 3:9] = True
    masks[1, :2, 5:11, 8:15] = True  # instance 1 has left by frame 2
    valid = torch.tensor([[True, True, True], [True, True, False]])
    boxes = torch.tensor([[[0.375, 0.4167, 0.375, 0.5]] * 3, [[0.7188, 0.6667, 0.4375, 0.5]] * 2 + [[0.0] * 4]])
    labels = [{"class_labels": torch.tensor([1, 3]), "boxes": boxes, "masks": masks, "valid": valid}]
    logits = torch.randn(1, frames * slots, 6, dtype=torch.float64)
    pred_boxes = torch.rand(1, frames * slots, 4, dtype=torch.float64) * 0.5 + 0.25
    pred_masks = torch.randn(1, frames * slots, *size, dtype=torch.float64) * 3
    query, entry = match_sequences(logits, pred_boxes, prepare_targets(labels, frames, 1), settings)[0]
    pairs = {(int(q) % slots, int(e) // frames) for q, e in zip(query, entry)}
    entries = valid.numel()

    def expected_terms(every_frame: bool) -> tuple[float, float]:
        focal = dice = 0.0
        for slot, instance in pairs:
            for frame in range(frames):
                if every_frame or valid[instance, frame]:
                    x, y = pred_masks[0, frame * slots + slot].flatten(), masks[instance, frame].flatten().double()
                    focal += torchvision.ops.sigmoid_focal_loss(x, y, alpha=0.25, gamma=2.0, reduction="mean").item()
                    p = x.sigmoid()
                    dice += 1 - (2 * (p * y).sum().item() + 1) / (p.sum().item() + y.sum().item() + 1)
        return focal / entries, dice / entries

    results = {}
    for every_frame in (True, False):
        run_settings = dataclasses.replace(settings, absent_frame_mask_loss=every_frame)
        _, results[every_frame] = vistr_loss(logits, pred_boxes, pred_masks, None, labels, run_settings)
        focal, dice = expected_terms(every_frame)
        assert abs(results[every_frame]["loss_mask"].item() - focal) <= 1e-12
        assert abs(results[every_frame]["loss_dice"].item() - dice) <= 1e-12
    assert results[True]["loss_dice"] > results[False]["loss_dice"]  # the absent frame adds a term
    for name in ("loss_ce", "loss_bbox", "loss_giou"):
        assert results[True][name].item() == results[False][name].item(), name
