"""Frozen batch norms folded into the convolutions before them: one pass over each activation instead of three.

A frozen batch norm (transformers' `DetrFrozenBatchNorm2d`, DETR's pretrained backbone) is a fixed affine
map per channel, y = x * s + (b - mean * s) with s = weight * rsqrt(var + 1e-5), so

    norm(conv(x, W, c)) == conv(x, W * s, c * s + b - mean * s).

`fold_frozen_batch_norms` is the one step that applies this, once, when the backbone is built: it finds
every convolution whose output goes only into a frozen batch norm by tracing the backbone's data flow
(torch.fx), not by the module names or classes of one backbone family, and rewires each pair: the
convolution (`FrozenBatchNormConv2d`) convolves with the folded weights, the norm (`FoldedFrozenBatchNorm2d`)
passes its input through. Every parameter and buffer keeps its name and its tensor, so checkpoints,
`from_pretrained`, `.to()` and `save_pretrained` see the backbone they saw before. The folded weights are
computed from the current weights at each call (a product over the weights, small beside the
activations): weights loaded after construction are used as they are, and the convolutions still train
through the fold (DETR trains them under frozen norms). Trainable norms (`BatchNorm2d`, `GroupNorm`) are
never folded.
"""

from __future__ import annotations

from collections import Counter

import torch
import torch.fx
from torch import nn
from transformers.models.detr.modeling_detr import DetrFrozenBatchNorm2d

__all__ = ["FoldedFrozenBatchNorm2d", "FrozenBatchNormConv2d", "fold_frozen_batch_norms", "folded_weights"]


def folded_weights(conv: nn.Conv2d, norm: DetrFrozenBatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """The weight and bias of the one convolution that computes norm(conv(x))."""
    scale = norm.weight * (norm.running_var + 1e-5).rsqrt()  # the norm's own formula, in its order
    shift = norm.bias - norm.running_mean * scale
    bias = shift if conv.bias is None else conv.bias * scale + shift
    return conv.weight * scale.view(-1, 1, 1, 1), bias


class FrozenBatchNormConv2d(nn.Conv2d):
    """A convolution that also applies the frozen batch norm after it (`folded_norm`, which then passes through).

    The norm stays registered where it was (its buffers keep their checkpoint names); this module only
    refers to it, outside its own submodules.
    """

    folded_norm: DetrFrozenBatchNorm2d

    @classmethod
    def folding(cls, conv: nn.Conv2d, norm: DetrFrozenBatchNorm2d) -> FrozenBatchNormConv2d:
        """`conv` with the same settings and the same parameter tensors, folding `norm`."""
        folded = cls(
            conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation,
            conv.groups, conv.bias is not None, conv.padding_mode, device="meta",  # no weights to initialise
        )  # fmt: skip
        folded.weight, folded.bias = conv.weight, conv.bias
        folded.__dict__["folded_norm"] = norm  # a plain reference: not a submodule, no second state-dict key
        return folded

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight, bias = folded_weights(self, self.folded_norm)
        return self._conv_forward(x, weight, bias)


class FoldedFrozenBatchNorm2d(DetrFrozenBatchNorm2d):
    """A frozen batch norm that the convolution before it applies (`FrozenBatchNormConv2d`): the identity here."""

    @classmethod
    def of(cls, norm: DetrFrozenBatchNorm2d) -> FoldedFrozenBatchNorm2d:
        """A pass-through norm holding `norm`'s buffer tensors under their names."""
        folded = cls(norm.weight.shape[0])
        for name, buffer in norm.named_buffers(recurse=False):
            setattr(folded, name, buffer)
        return folded

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


class _ConvAndNormLeaves(torch.fx.Tracer):
    """Traces down to convolutions and frozen norms, which stay single nodes of the graph."""

    def is_leaf_module(self, module: nn.Module, qualified_name: str) -> bool:
        return isinstance(module, (nn.Conv2d, DetrFrozenBatchNorm2d)) or super().is_leaf_module(module, qualified_name)


def _conv_norm_pairs(model: nn.Module) -> list[tuple[str, str]]:
    """(convolution, frozen norm) names where the norm's input is the convolution's output and nothing else
    reads that output; each module called once. Empty when the model's forward cannot be traced."""
    try:
        graph = _ConvAndNormLeaves().trace(model)
    except Exception:  # noqa: BLE001 - a backbone fx cannot trace keeps its own, unfolded forward (correct, slower)
        return []
    modules = dict(model.named_modules())
    calls = Counter(node.target for node in graph.nodes if node.op == "call_module")
    pairs = []
    for node in graph.nodes:
        if node.op != "call_module" or type(modules[node.target]) is not DetrFrozenBatchNorm2d or len(node.args) != 1:
            continue
        source = node.args[0]
        if (isinstance(source, torch.fx.Node) and source.op == "call_module"
                and type(modules[source.target]) is nn.Conv2d and len(source.users) == 1
                and calls[source.target] == calls[node.target] == 1):
            pairs.append((source.target, node.target))
    return pairs


def _replace(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent), child, module)


def fold_frozen_batch_norms(model: nn.Module) -> int:
    """Fold every frozen batch norm of `model` that directly follows a convolution into it; returns how many.

    In place, once (a folded pair is no longer a plain convolution and frozen norm, so a second call folds
    nothing). Hooks registered later on a folded norm see its input already normalized.
    """
    pairs = _conv_norm_pairs(model)
    for conv_name, norm_name in pairs:
        # the convolution refers to the norm that stays registered, so `.to()` and loading reach what it reads
        norm = FoldedFrozenBatchNorm2d.of(model.get_submodule(norm_name))
        _replace(model, norm_name, norm)
        _replace(model, conv_name, FrozenBatchNormConv2d.folding(model.get_submodule(conv_name), norm))
    return len(pairs)
