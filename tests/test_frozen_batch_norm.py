"""frozen_batch_norm.py: the backbone's frozen batch norms folded into their convolutions compute what the plain
modules compute (float64, round-off only): checkpoint names unchanged, the weights read when they run, gradients,
and nothing folded where the data flow does not allow it. Which backbones fold: test_modeling_vistr.py."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import assert_close_scaled
from torch import nn
from transformers.backbone_utils import load_backbone
from transformers.models.detr.modeling_detr import DetrFrozenBatchNorm2d, replace_batch_norm
from vistr.configuration_vistr import VisTRConfig
from vistr.frozen_batch_norm import fold_frozen_batch_norms


def _frozen_timm_backbone(backbone: str, **config) -> nn.Module:
    """The timm backbone VisTR builds, frozen norms not folded, with non-trivial statistics to fold."""
    torch.manual_seed(0)
    features = load_backbone(VisTRConfig(backbone=backbone, **config))
    with torch.no_grad():
        replace_batch_norm(features)
        for norm in features.modules():
            if isinstance(norm, DetrFrozenBatchNorm2d):
                norm.weight.uniform_(0.5, 1.5)
                norm.bias.normal_(0, 0.1)
                norm.running_mean.normal_(0, 0.1)
                norm.running_var.uniform_(0.5, 2.0)
    return features._backbone.double().eval()


def _frozen_norms(model: nn.Module) -> int:
    return sum(isinstance(module, DetrFrozenBatchNorm2d) for module in model.modules())


@pytest.mark.parametrize(
    "backbone,config", [("resnet50", {}), ("resnet18", {}), ("resnet50", {"dilation": True}), ("resnet10t", {})]
)
def test_folding_keeps_every_name_and_the_outputs(backbone, config):
    plain = _frozen_timm_backbone(backbone, **config)
    folded = copy.deepcopy(plain)
    assert fold_frozen_batch_norms(folded) == _frozen_norms(plain)  # every norm follows a convolution
    assert fold_frozen_batch_norms(folded) == 0  # once
    assert not any(type(module) is DetrFrozenBatchNorm2d for module in folded.modules())
    assert list(folded.state_dict()) == list(plain.state_dict())
    frames = torch.randn(2, 3, 64, 96, dtype=torch.float64)
    with torch.no_grad():
        for a, b in zip(folded(frames.contiguous(memory_format=torch.channels_last)), plain(frames), strict=True):
            assert_close_scaled(a, b)


def test_folded_convolutions_read_the_weights_loaded_after_folding():
    """from_pretrained and .to() change the tensors after construction: the fold uses the current ones."""
    plain = _frozen_timm_backbone("resnet18")
    folded = copy.deepcopy(plain).float()
    with torch.no_grad():
        for norm in folded.modules():
            if isinstance(norm, DetrFrozenBatchNorm2d):
                norm.running_mean.fill_(5.0)  # statistics that only stale tensors would still hold
    fold_frozen_batch_norms(folded)
    folded.double()  # new buffer tensors
    folded.load_state_dict(plain.state_dict())  # copied into them
    frames = torch.randn(1, 3, 64, 64, dtype=torch.float64)
    with torch.no_grad():
        for a, b in zip(folded(frames), plain(frames), strict=True):
            assert_close_scaled(a, b)


def test_folded_backbone_gradients_equal_timm_forward():
    plain = _frozen_timm_backbone("resnet18")
    folded = copy.deepcopy(plain)
    fold_frozen_batch_norms(folded)
    frames = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    grads = []
    for model in (folded, plain):
        sum(level.square().mean() for level in model(frames)).backward()
        grads.append({n: p.grad for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and any(n.startswith("layer4") for n in grads[0])
    for name in grads[0]:
        assert_close_scaled(grads[0][name], grads[1][name])


class _ConvReadTwice(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.norm = nn.Conv2d(3, 4, 3), DetrFrozenBatchNorm2d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return self.norm(y) + y  # the norm's input is read again: folding it would change the sum


class _DataDependent(_ConvReadTwice):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.conv(x)) if x.sum() > 0 else x  # fx cannot trace a branch on values


def test_a_norm_is_folded_only_where_it_alone_reads_its_convolution():
    assert fold_frozen_batch_norms(nn.Sequential(nn.Conv2d(3, 4, 3), DetrFrozenBatchNorm2d(4))) == 1
    assert fold_frozen_batch_norms(_ConvReadTwice()) == 0
    model = _DataDependent()
    assert fold_frozen_batch_norms(model) == 0  # left as it is: its own forward, unfolded
    model(torch.ones(1, 3, 5, 5))
