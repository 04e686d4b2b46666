"""Options for training from scratch: trained backbone norms, every stage trained, narrow transformers.

The released shapes stay the original's (tests/test_modeling_parity.py); here: a from-scratch model is
built as asked, and every one of its weights receives a gradient from the training loss.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from transformers.models.detr.modeling_detr import DetrFrozenBatchNorm2d
from vistr.configuration_vistr import VisTRConfig
from vistr.modeling_vistr import VisTRForVideoInstanceSegmentation


def small_config(**overrides) -> VisTRConfig:
    settings = dict(
        backbone="test_resnet", num_frames=2, num_queries_per_frame=2, d_model=96, num_attention_heads=8,
        encoder_layers=1, decoder_layers=2, ffn_dim=64, dropout=0.0, id2label={0: "N/A", 1: "a", 2: "b"},
    )  # fmt: skip
    return VisTRConfig(**(settings | overrides))


def training_batch(config: VisTRConfig, height: int = 64, width: int = 96) -> tuple[torch.Tensor, list[dict]]:
    torch.manual_seed(0)
    frames = config.num_frames
    pixel_values = torch.randn(2, frames, 3, height, width)
    labels = []
    for _ in range(2):
        masks = torch.zeros(2, frames, height, width)
        masks[0, :, 8:40, 10:50] = 1
        masks[1, :, 30:60, 40:90] = 1
        boxes = torch.tensor([[0.31, 0.38, 0.42, 0.5], [0.68, 0.7, 0.52, 0.47]]).expand(frames, 2, 4).transpose(0, 1)
        labels.append({"class_labels": torch.tensor([1, 2]), "boxes": boxes.contiguous(), "masks": masks,
                       "valid": torch.ones(2, frames, dtype=torch.bool)})  # fmt: skip
    return pixel_values, labels


# DETR's first decoder layer attends over all-zero queries (tgt = 0, as in the original): every value is the
# same, so its self-attention weights (and the norm before it) get no gradient, in the original as here.
FIRST_DECODER_SELF_ATTENTION = ("vistr.decoder.layers.0.self_attn.", "vistr.decoder.layers.0.self_attn_layer_norm.")


def parameters_without_gradient(model: nn.Module, steps: int = 2) -> list[str]:
    """Weights (outside the first decoder self-attention) whose gradient stays zero over `steps` SGD steps.

    Two steps, because timm starts each residual block's last norm at zero (zero_init_last): the convs
    inside a block get their first gradient once that norm has moved.
    """
    pixel_values, labels = training_batch(model.config)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    reached = set()
    model.train()
    for _ in range(steps):
        model(pixel_values=pixel_values, labels=labels).loss.backward()
        reached |= {name for name, p in model.named_parameters() if p.grad is not None and p.grad.any()}
        optimizer.step()
        optimizer.zero_grad()
    return [name for name, p in model.named_parameters()
            if p.requires_grad and name not in reached and not name.startswith(FIRST_DECODER_SELF_ATTENTION)]


@pytest.mark.parametrize("norm", ["batch_norm", "group_norm"])
def test_from_scratch_model_trains_every_weight(norm):
    model = VisTRForVideoInstanceSegmentation(small_config(backbone_norm=norm, backbone_frozen_stages=-1))
    assert all(p.requires_grad for p in model.parameters())
    assert parameters_without_gradient(model) == []


def test_backbone_norm_kinds():
    def norm_types(config):
        return {type(m) for m in VisTRForVideoInstanceSegmentation(config).vistr.backbone.modules()}

    assert nn.BatchNorm2d in norm_types(small_config(backbone_norm="batch_norm"))
    group_norm_types = norm_types(small_config(backbone_norm="group_norm"))
    assert nn.GroupNorm in group_norm_types and nn.BatchNorm2d not in group_norm_types
    frozen_types = norm_types(small_config())
    # frozen norms, folded into their convolutions (frozen_batch_norm.py): a subclass that passes through
    assert any(issubclass(t, DetrFrozenBatchNorm2d) for t in frozen_types) and nn.BatchNorm2d not in frozen_types


@pytest.mark.parametrize("frozen_stages,first_trained", [(-1, "conv1"), (0, "layer1"), (1, "layer2"), (4, None)])
def test_frozen_stages_are_the_leading_ones(frozen_stages, first_trained):
    config = small_config(backbone_norm="batch_norm", backbone_frozen_stages=frozen_stages)
    backbone = VisTRForVideoInstanceSegmentation(config).vistr.backbone.model
    trained = [name for name, p in backbone.named_parameters() if p.requires_grad]
    assert (trained[0].split(".")[0] if trained else None) == first_trained
    frozen = [name for name, p in backbone.named_parameters() if not p.requires_grad]
    order = ["conv1", "bn1", "layer1", "layer2", "layer3", "layer4"]
    if trained and frozen:  # every frozen weight comes before every trained one
        assert max(order.index(n.split(".")[0]) for n in frozen) < order.index(trained[0].split(".")[0])


def test_the_original_recipe_freezes_stem_and_layer1_and_trains_the_rest():
    model = VisTRForVideoInstanceSegmentation(small_config())
    frozen = {name.split(".")[0] for name, p in model.vistr.backbone.model.named_parameters() if not p.requires_grad}
    assert frozen == {"conv1", "layer1"}  # the frozen norms have no parameters at all
    # ...and with frozen statistics, a fresh ResNet's zero-initialised last norms keep its residual
    # branches dead for good: why training from scratch needs backbone_norm="batch_norm"/"group_norm"
    assert any(name.startswith("vistr.backbone.model.layer2.") for name in parameters_without_gradient(model))


@pytest.mark.parametrize("d_model,heads,expected_groups", [(96, 8, [8, 8, 8, 4, 2]), (192, 8, [8, 8, 8, 8, 4]),
                                                           (384, 8, [8, 8, 8, 8, 8])])
def test_mask_head_groups_follow_the_width(d_model, heads, expected_groups):
    config = small_config(d_model=d_model, num_attention_heads=heads)
    head = VisTRForVideoInstanceSegmentation(config).mask_head
    norms = [head.gn1, head.gn2, head.gn3, head.gn4, head.gn5]
    assert [n.num_channels for n in norms] == [d_model + heads, d_model // 2, d_model // 4, d_model // 8, d_model // 16]
    assert [n.num_groups for n in norms] == expected_groups


@pytest.mark.parametrize("mask_head_width", [192, 384])
def test_a_wider_mask_head_than_the_transformer_is_built_and_trained(mask_head_width):
    """`mask_head_width` sets the mask head's stages (width/2 ... width/16) and the 3-D head's input; the
    transformer keeps d_model, and every weight of the wider model still receives a gradient."""
    config = small_config(backbone_norm="batch_norm", backbone_frozen_stages=-1, mask_head_width=mask_head_width)
    model = VisTRForVideoInstanceSegmentation(config)
    head = model.mask_head
    assert [n.num_channels for n in (head.gn1, head.gn2, head.gn3, head.gn4, head.gn5)] == [
        96 + 8, mask_head_width // 2, mask_head_width // 4, mask_head_width // 8, mask_head_width // 16]
    assert model.instance_head.conv1.in_channels == mask_head_width // 16
    assert model.class_labels_classifier.in_features == 96
    assert parameters_without_gradient(model) == []


def test_training_computes_the_masks_of_matched_slots_only_with_the_same_loss_and_gradients():
    """Loss and every gradient equal the full mask computation's (float64), while fewer slots run the mask head."""
    config = small_config(backbone_norm="group_norm", backbone_frozen_stages=-1, num_queries_per_frame=4, dropout=0.0)
    torch.manual_seed(0)
    model = VisTRForVideoInstanceSegmentation(config).double().train()
    pixel_values, labels = training_batch(config)
    labels[1] = {key: value[:1] for key, value in labels[1].items()}  # videos with 2 and 1 instances
    pixel_values = pixel_values.double()
    labels = [{k: v.double() if v.is_floating_point() else v for k, v in label.items()} for label in labels]

    head_batches = []
    hook = model.instance_head.register_forward_pre_hook(lambda module, args: head_batches.append(args[0].shape[0]))
    fast = model(pixel_values=pixel_values, labels=labels)
    fast.loss.backward()
    fast_grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    hook.remove()
    assert head_batches == [2 * 2]  # 2 videos x 2 matched slots (the 1-instance video padded), not 2 x 4

    model.zero_grad()
    model.eval()  # the full computation; dropout is 0 and group norms have no running state
    full = model(pixel_values=pixel_values, labels=labels)
    full.loss.backward()
    assert torch.allclose(fast.loss, full.loss, rtol=1e-12, atol=0)
    for name, value in full.loss_dict.items():
        assert torch.allclose(fast.loss_dict[name], value, rtol=1e-10, atol=1e-12), name
    for name, p in model.named_parameters():
        if p.grad is not None:
            assert torch.allclose(fast_grads[name], p.grad, rtol=1e-8, atol=1e-12), name
    matched = fast.pred_masks.flatten(2).abs().sum(-1) > 0  # [B, T*n]: the rows that were computed
    assert torch.equal(fast.pred_masks[matched], full.pred_masks[matched])
    assert matched.sum(1).tolist() == [2 * config.num_frames, 1 * config.num_frames]


def test_fresh_weights_follow_the_original_initialisation():
    """xavier for the transformer's matrices and the attention-map projections, kaiming (a=1) and zero biases
    for the mask head's convolutions, zero offsets (the deformable conv starts as a plain conv)."""
    torch.manual_seed(0)
    config = small_config(d_model=192, ffn_dim=384)
    model = VisTRForVideoInstanceSegmentation(config)
    q = model.vistr.encoder.layers[0].self_attn.q_proj.weight
    ffn = model.vistr.decoder.layers[1].ffn.fc1.weight
    for weight in (q, ffn, model.bbox_attention.q_linear.weight):
        bound = (6 / sum(weight.shape)) ** 0.5  # xavier uniform, gain 1
        assert weight.abs().max() <= bound and weight.abs().max() > 0.9 * bound
    assert not model.bbox_attention.k_linear.bias.any()
    lay1 = model.mask_head.lay1
    bound = (6 / ((1 + 1) * lay1.weight[0].numel())) ** 0.5  # kaiming uniform with a=1
    assert lay1.weight.abs().max() <= bound and lay1.weight.abs().max() > 0.9 * bound and not lay1.bias.any()
    assert not model.mask_head.conv_offset.weight.any() and not model.mask_head.conv_offset.bias.any()


def test_loading_keeps_the_saved_weights_over_the_initialisation(tmp_path):
    model = VisTRForVideoInstanceSegmentation(small_config())
    with torch.no_grad():
        model.mask_head.conv_offset.weight.fill_(0.25)
    model.save_pretrained(tmp_path)
    loaded = VisTRForVideoInstanceSegmentation.from_pretrained(tmp_path)
    for (name, saved), (_, again) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(saved, again), name
