"""The converted tiny checkpoint against the ORIGINAL implementation's outputs (../shared/parity).

float64 model vs float64 golden outputs: 1e-9 on outputs and intermediates (the original's own
two-thread rerun moves them by 9e-13). float32 model vs the same float64 reference: the
tolerances of the issue, ~3x the original's own float32-vs-float64 differences.
"""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import PARITY_CASES, case_inputs
from vistr.modeling_vistr import VisTRForVideoInstanceSegmentation, downsample_padding_mask

FP64_TOLERANCE = 1e-9
FP32_TOLERANCE = {"logits": 1.5e-3, "pred_boxes": 1e-4, "pred_masks": 5e-3}
OUTPUT_TO_REFERENCE = {"logits": "pred_logits", "pred_boxes": "pred_boxes", "pred_masks": "pred_masks"}


# every attention implementation that runs on CPU; transformers' default for this model is "sdpa"
ATTENTION_IMPLEMENTATIONS = ("eager", "sdpa")


@pytest.fixture(scope="module")
def model_fp64(tiny_model):
    return copy.deepcopy(tiny_model).double()


@pytest.fixture(scope="module", params=ATTENTION_IMPLEMENTATIONS)
def model_fp64_each_attention(tiny_model, request):
    """The float64 model with `request.param` as its attention implementation."""
    model = copy.deepcopy(tiny_model).double()
    model.set_attn_implementation(request.param)
    assert model.vistr.encoder.layers[0].self_attn.config._attn_implementation == request.param
    return model


def max_abs_diff(actual: torch.Tensor, expected: torch.Tensor) -> float:
    assert actual.shape == expected.shape, f"shape {tuple(actual.shape)} != reference {tuple(expected.shape)}"
    return (actual.double() - expected.double()).abs().max().item()


def run_with_intermediates(model: VisTRForVideoInstanceSegmentation, pixel_values, pixel_mask) -> tuple:
    """Forward pass that also records the tensors the golden file summarizes, via forward hooks."""
    captured = {}

    def keep(name, pick):
        def hook(module, inputs, output):
            captured[name] = pick(inputs, output)

        return hook

    hooks = [
        (model.vistr.backbone, "backbone", lambda i, o: [level.detach() for level in o]),
        (model.vistr.position_embedding, "position", lambda i, o: o),
        (model.vistr.input_projection, "input_proj", lambda i, o: o),
        (model.bbox_attention, "bbox_attention", lambda i, o: o),
        (model.mask_head, "frame_masks", lambda i, o: o),
        (model.mask_head.dcn, "dcn", lambda i, o: (i[0], i[1], o)),
    ]
    handles = [module.register_forward_hook(keep(name, pick)) for module, name, pick in hooks]
    try:
        with torch.no_grad():
            outputs = model(pixel_values, pixel_mask)
    finally:
        for handle in handles:
            handle.remove()
    return outputs, captured


@pytest.mark.parametrize("case", list(PARITY_CASES))
def test_float64_outputs_equal_original(model_fp64_each_attention, parity_inputs, reference_fp64, case):
    reference = reference_fp64[case]
    with torch.no_grad():
        outputs = model_fp64_each_attention(*case_inputs(parity_inputs, case, torch.float64))
    for ours, theirs in OUTPUT_TO_REFERENCE.items():
        assert max_abs_diff(getattr(outputs, ours), reference[theirs]) <= FP64_TOLERANCE, ours
    assert len(outputs.auxiliary_outputs) == len(reference["aux_outputs"])
    for aux, aux_reference in zip(outputs.auxiliary_outputs, reference["aux_outputs"]):
        assert max_abs_diff(aux["logits"], aux_reference["pred_logits"]) <= FP64_TOLERANCE
        assert max_abs_diff(aux["pred_boxes"], aux_reference["pred_boxes"]) <= FP64_TOLERANCE


@pytest.mark.parametrize("case", list(PARITY_CASES))
def test_float64_intermediates_equal_original(model_fp64, parity_inputs, reference_fp64, case):
    reference = reference_fp64[case]
    pixel_values, pixel_mask = case_inputs(parity_inputs, case, torch.float64)
    outputs, captured = run_with_intermediates(model_fp64, pixel_values, pixel_mask)
    padding = torch.zeros(pixel_values.shape[:2] + pixel_values.shape[-2:], dtype=torch.bool)
    if pixel_mask is not None:
        padding = ~pixel_mask.bool()
    frames, slots = model_fp64.config.num_frames, model_fp64.config.num_queries_per_frame

    compared = {}
    for level, feature in enumerate(captured["backbone"]):
        prefix = f"backbone.level{level}"
        compared[f"{prefix}.channel_mean"] = feature.mean(dim=(-2, -1))
        compared[f"{prefix}.position_sum"] = feature.sum(dim=1)
        compared[f"{prefix}.position_sumsq"] = (feature**2).sum(dim=1)
        if f"{prefix}.first8ch" in reference:
            compared[f"{prefix}.first8ch"] = feature[:, :8]
        mask = downsample_padding_mask(padding, feature.shape[-2:])[0]
        assert torch.equal(mask, reference[f"{prefix}.mask"]), f"{prefix}.mask"
    compared["position_embedding.level3"] = captured["position"]
    compared["input_proj"] = captured["input_proj"]
    h, w = captured["input_proj"].shape[-2:]
    compared["transformer.memory"] = outputs.encoder_last_hidden_state.transpose(1, 2).reshape(1, -1, frames, h * w)
    compared["transformer.hs"] = outputs.intermediate_hidden_states
    compared["bbox_attention"] = captured["bbox_attention"].unsqueeze(1)
    frame_masks = captured["frame_masks"].unflatten(0, (frames, slots))
    compared["mask_head.frame_masks.channel_mean"] = frame_masks.mean(dim=(-2, -1))
    if "mask_head.frame_masks.slot0" in reference:
        compared["mask_head.frame_masks.slot0"] = frame_masks[:, 0]
        dcn_input, dcn_offset, dcn_output = captured["dcn"]
        compared["mask_head.dcn.input.frame0_slot0"] = dcn_input[0]
        compared["mask_head.dcn.offset.frame0_slot0"] = dcn_offset[0]
        compared["mask_head.dcn.output.frame0_slot0"] = dcn_output[0]

    assert len(compared) >= 18  # every summarized intermediate of the case is compared
    failures = {name: diff for name, value in compared.items() if (diff := max_abs_diff(value, reference[name])) > FP64_TOLERANCE}
    assert not failures, failures


@pytest.mark.parametrize("case", list(PARITY_CASES))
def test_float32_within_tolerance_of_original_float64(tiny_model, parity_inputs, reference_fp64, case):
    reference = reference_fp64[case]
    with torch.no_grad():
        outputs = tiny_model(*case_inputs(parity_inputs, case, torch.float32))
    for ours, theirs in OUTPUT_TO_REFERENCE.items():
        assert max_abs_diff(getattr(outputs, ours), reference[theirs]) <= FP32_TOLERANCE[ours], ours


def test_batch_of_three_videos_equals_each_alone(model_fp64, parity_inputs, reference_fp64):
    """Batch > 1 (which the original could not run) gives every video its own golden outputs."""
    cases = list(PARITY_CASES)
    pixel_values, pixel_masks = [], []
    for case in cases:
        values, mask = case_inputs(parity_inputs, case, torch.float64)
        pixel_values.append(values)
        pixel_masks.append(torch.ones(values.shape[:2] + values.shape[-2:], dtype=torch.long) if mask is None else mask)
    with torch.no_grad():
        outputs = model_fp64(torch.cat(pixel_values), torch.cat(pixel_masks))
    for index, case in enumerate(cases):
        for ours, theirs in OUTPUT_TO_REFERENCE.items():
            diff = max_abs_diff(getattr(outputs, ours)[index : index + 1], reference_fp64[case][theirs])
            assert diff <= FP64_TOLERANCE, (case, ours, diff)


def test_save_and_load_gives_identical_outputs(tiny_model, parity_inputs, tmp_path):
    from transformers import AutoModelForInstanceSegmentation

    tiny_model.save_pretrained(tmp_path)
    reloaded = AutoModelForInstanceSegmentation.from_pretrained(tmp_path).eval()
    assert type(reloaded) is VisTRForVideoInstanceSegmentation
    inputs = case_inputs(parity_inputs, "padded_small", torch.float32)
    with torch.no_grad():
        before, after = tiny_model(*inputs), reloaded(*inputs)
    for name in OUTPUT_TO_REFERENCE:
        assert torch.equal(getattr(before, name), getattr(after, name)), name


def test_wrong_frame_count_is_rejected_with_the_fix(tiny_model):
    with pytest.raises(ValueError, match=r"num_frames=4.*got \[1, 3, 3, 64, 64\]"):
        tiny_model(torch.randn(1, 3, 3, 64, 64))
    with pytest.raises(ValueError, match="pixel_mask must have shape"):
        tiny_model(torch.randn(1, 4, 3, 64, 64), torch.ones(1, 4, 32, 32))
