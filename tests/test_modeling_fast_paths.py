"""The speed-ups of modeling_vistr.py compute what the plain modules compute (float64, round-off only).

* backbone: frozen batch norms folded into the convolutions once (frozen_batch_norm.py), channels-last on
  CPU (values and gradients), checkpoint names unchanged, nothing folded where the data flow does not allow it;
* mask head: lay1 split into a per-frame memory share and a per-query attention-map share, the FPN
  sums as one broadcast add;
* instance head: channels-last 3-D convolutions and the output convolution as a matrix product.

The deformable convolution's CPU grid-sample path is tested against torchvision in test_deform_conv.py.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from conftest import REPO_ROOT, import_script
from torch import nn
from transformers.backbone_utils import load_backbone
from transformers.models.detr.modeling_detr import DetrFrozenBatchNorm2d, replace_batch_norm
from vistr import modeling_vistr as mv
from vistr.configuration_vistr import VisTRConfig
from vistr.frozen_batch_norm import FrozenBatchNormConv2d, fold_frozen_batch_norms

TOL = 1e-10


def _close(actual: torch.Tensor, expected: torch.Tensor, tol: float = TOL) -> None:
    assert actual.shape == expected.shape
    scale = max(1.0, expected.abs().max().item())
    assert (actual - expected).abs().max().item() <= tol * scale


# ------------------------------------------------------------------ backbone


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
            _close(a, b)


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
            _close(a, b)


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
        _close(grads[0][name], grads[1][name])


@pytest.mark.parametrize("norm", ["frozen_batch_norm", "batch_norm", "group_norm"])
def test_only_frozen_norms_are_folded(norm):
    backbone = mv.VisTRConvBackbone(VisTRConfig(backbone="resnet18", backbone_norm=norm))
    folds = sum(isinstance(module, FrozenBatchNormConv2d) for module in backbone.modules())
    assert folds == (20 if norm == "frozen_batch_norm" else 0)


@pytest.mark.parametrize("norm", ["batch_norm", "group_norm"])
def test_trained_norm_backbones_run_channels_last_with_the_same_values_and_gradients(norm):
    config = VisTRConfig(backbone="resnet10t", backbone_norm=norm, backbone_frozen_stages=-1)
    channels_last = mv.VisTRConvBackbone(config).double().train()
    channels_first = copy.deepcopy(channels_last)
    channels_first.channels_last_on_cpu = False  # timm's own layout: the reference
    frames = torch.randn(2, 3, 64, 96, dtype=torch.float64)
    levels, grads = [], []
    for backbone in (channels_last, channels_first):
        levels.append(backbone(frames))
        sum(level.square().mean() for level in levels[-1]).backward()
        grads.append({n: p.grad for n, p in backbone.named_parameters()})
    assert all(level.is_contiguous(memory_format=torch.channels_last) for level in levels[0])
    for a, b in zip(*levels, strict=True):
        _close(a.detach(), b.detach())
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        _close(grads[0][name], grads[1][name])


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


# ------------------------------------------------------------------ heads


def _small_config() -> VisTRConfig:
    return VisTRConfig(backbone="resnet18", num_frames=3, encoder_layers=1, decoder_layers=1, ffn_dim=64)


def test_mask_head_first_conv_equals_convolving_the_concatenation():
    torch.manual_seed(0)
    config = _small_config()
    head = mv.VisTRMaskHeadSmallConv(config, [64, 128, 256]).double()
    memory = torch.randn(3, config.d_model, 4, 5, dtype=torch.float64)
    maps = torch.rand(3, 7, config.num_attention_heads, 4, 5, dtype=torch.float64)
    with torch.no_grad():
        split = head._first_conv(memory, maps)
        whole = head.lay1(torch.cat([memory.repeat_interleave(7, dim=0), maps.flatten(0, 1)], dim=1))
    _close(split, whole)


@pytest.mark.parametrize("level_size", [(8, 10), (9, 11)])  # exactly twice the input, and not
def test_fpn_sum_equals_nearest_upsampling_then_add(level_size):
    torch.manual_seed(0)
    x = torch.randn(6, 5, 4, 5, dtype=torch.float64)  # 2 frames x 3 slots
    adapted = torch.randn(2, 5, *level_size, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    expected = (adapted.unsqueeze(1) + F.interpolate(x, size=level_size, mode="nearest").unflatten(0, (2, 3))).flatten(0, 1)
    assert torch.equal(mv.VisTRMaskHeadSmallConv._add_fpn(x, adapted, 3), expected)


def test_instance_head_cpu_path_equals_its_modules():
    torch.manual_seed(0)
    head = mv.VisTRInstanceHead(VisTRConfig()).double()
    x = torch.randn(2, head.conv1.in_channels, 3, 6, 7, dtype=torch.float64)
    with torch.no_grad():
        expected = head.out_conv(F.relu(head.norm3(head.conv3(F.relu(head.norm2(head.conv2(
            F.relu(head.norm1(head.conv1(x))))))))))
        _close(head(x), expected)
        _close(copy.deepcopy(head).float()(x.float()).double(), expected, tol=1e-5)


def test_whole_model_equals_the_original_control_flow_with_deformed_sampling():
    """Random weights with real (non-zero) DCN offsets, padding, float64: our forward against the
    original's per-frame / per-instance control flow of benchmarks/original_flow.py."""
    OriginalFlow = import_script(REPO_ROOT / "benchmarks" / "original_flow.py").OriginalFlow

    torch.manual_seed(0)
    model = mv.VisTRForVideoInstanceSegmentation(_small_config()).double().eval()
    with torch.no_grad():
        torch.nn.init.normal_(model.mask_head.conv_offset.weight, std=0.5)
    clip = torch.randn(1, 3, 3, 64, 96, dtype=torch.float64)
    mask = torch.ones(1, 3, 64, 96, dtype=torch.long)
    mask[..., 50:, :] = 0
    mask[..., 80:] = 0
    with torch.no_grad():
        ours = model(pixel_values=clip, pixel_mask=mask)
    theirs = OriginalFlow(copy.deepcopy(model))(clip, mask)
    for name, key in (("logits", "pred_logits"), ("pred_boxes", "pred_boxes"), ("pred_masks", "pred_masks")):
        _close(getattr(ours, name), theirs[key], tol=1e-9)


def test_inference_forward_traces_in_one_graph():
    """The fast paths keep the forward traceable by torch.compile without graph breaks (CPU, no grad)."""
    torch.manual_seed(0)
    model = mv.VisTRForVideoInstanceSegmentation(_small_config()).eval()
    with torch.no_grad():
        explanation = torch._dynamo.explain(model)(pixel_values=torch.randn(1, 3, 3, 64, 96))
    assert explanation.graph_break_count == 0, [str(b.reason).splitlines()[0] for b in explanation.break_reasons]
    assert explanation.graph_count == 1
