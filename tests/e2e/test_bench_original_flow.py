"""benchmarks/original_flow.py (the baseline of bench_forward.py) reproduces the ORIGINAL's outputs.

The runner re-executes the original's control flow (per-frame mask head, per-instance 3-D head,
sequence-first nn.MultiheadAttention, torchvision DCN) with a converted model's weights; in
float64 it must give the golden outputs as exactly as the model itself does.
"""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import PARITY_CASES, REPO_ROOT, case_inputs, import_script

OriginalFlow = import_script(REPO_ROOT / "benchmarks" / "original_flow.py").OriginalFlow

FP64_TOLERANCE = 1e-9


@pytest.fixture(scope="module")
def flow_fp64(tiny_model):
    return OriginalFlow(copy.deepcopy(tiny_model).double())


@pytest.mark.parametrize("case", list(PARITY_CASES))
def test_original_flow_gives_the_golden_outputs(flow_fp64, parity_inputs, reference_fp64, case):
    reference = reference_fp64[case]
    outputs = flow_fp64(*case_inputs(parity_inputs, case, torch.float64))
    for name in ("pred_logits", "pred_boxes", "pred_masks"):
        assert outputs[name].shape == reference[name].shape, name
        assert (outputs[name] - reference[name]).abs().max().item() <= FP64_TOLERANCE, name
    for index, aux in enumerate(reference["aux_outputs"]):
        assert (outputs["aux_logits"][index] - aux["pred_logits"]).abs().max().item() <= FP64_TOLERANCE
        assert (outputs["aux_boxes"][index] - aux["pred_boxes"]).abs().max().item() <= FP64_TOLERANCE
