"""Parts of the model against independent references, for configurations the golden data does not
cover (ResNet-101, DC5, pre-norm): torchvision's ResNet (what the original uses) and PyTorch's own
transformer layers (whose structure the original's layers share, without position embeddings)."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn
from torchvision.ops.misc import FrozenBatchNorm2d
from vistr.configuration_vistr import VisTRConfig
from vistr.convert_checkpoint import map_state_dict
from vistr.modeling_vistr import (
    VisTRConvBackbone,
    VisTRDecoderLayer,
    VisTREncoderLayer,
    VisTRForVideoInstanceSegmentation,
    VisTRSinePositionEmbedding,
    padding_to_attention_mask,
)


def randomize_(module: nn.Module, seed: int) -> None:
    """Random weights and batch-norm statistics, so that no layer is an identity. Values are
    float32-representable: the converter stores float32, and the comparison is in float64."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in module.state_dict().items():
            if tensor.is_floating_point():
                values = torch.randn(tensor.shape, generator=generator, dtype=torch.float64) * 0.1
                if name.endswith("running_var"):
                    values = values.abs() + 0.5
                tensor.copy_(values.float())


@pytest.mark.parametrize(("backbone", "dilation"), [("resnet50", True), ("resnet101", False), ("resnet18", False)])
def test_backbone_equals_torchvision_resnet_of_the_original(backbone, dilation):
    """The original builds torchvision's ResNet with frozen BN; timm's must compute the same with its weights."""
    reference = getattr(torchvision.models, backbone)(
        weights=None, replace_stride_with_dilation=[False, False, dilation], norm_layer=FrozenBatchNorm2d
    ).double().eval()
    randomize_(reference, seed=1)
    ours = VisTRConvBackbone(VisTRConfig(backbone=backbone, dilation=dilation)).double().eval()
    ours.model.load_state_dict({k: v for k, v in reference.state_dict().items() if not k.startswith("fc.")})
    frames = torch.randn(2, 3, 64, 96, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        levels = ours(frames)
        x = reference.maxpool(reference.relu(reference.bn1(reference.conv1(frames))))
        expected = []
        for stage in (reference.layer1, reference.layer2, reference.layer3, reference.layer4):
            x = stage(x)
            expected.append(x)
    assert [level.shape for level in levels] == [e.shape for e in expected]
    for level, reference_level in zip(levels, expected):
        assert (level - reference_level).abs().max() <= 1e-10 * reference_level.abs().max()


def transformer_config(pre_norm: bool) -> VisTRConfig:
    return VisTRConfig(encoder_layers=1, decoder_layers=1, ffn_dim=96, dropout=0.0, pre_norm=pre_norm)


def load_original_layer(ours: nn.Module, reference: nn.Module, original_prefix: str, our_prefix: str) -> None:
    """Load a PyTorch layer's weights into ours through the converter's key mapping (original names)."""
    mapped, unmapped = map_state_dict({original_prefix + k: v for k, v in reference.state_dict().items()})
    assert not unmapped
    ours.load_state_dict({k.removeprefix(our_prefix): v for k, v in mapped.items()})


@pytest.mark.parametrize("pre_norm", [False, True])
def test_encoder_layer_equals_pytorch_layer_without_position(pre_norm):
    config = transformer_config(pre_norm)
    reference = nn.TransformerEncoderLayer(384, 8, 96, dropout=0.0, norm_first=pre_norm).double().eval()
    randomize_(reference, seed=3)
    ours = VisTREncoderLayer(config).double().eval()
    load_original_layer(ours, reference, "vistr.transformer.encoder.layers.0.", "vistr.encoder.layers.0.")
    tokens = torch.randn(2, 30, 384, dtype=torch.float64)
    padding = torch.zeros(2, 30, dtype=torch.bool)
    padding[1, -7:] = True
    with torch.no_grad():
        expected = reference(tokens.transpose(0, 1), src_key_padding_mask=padding).transpose(0, 1)
        actual = ours(tokens, torch.zeros_like(tokens), padding_to_attention_mask(padding, tokens.dtype))
    assert (actual - expected).abs().max() <= 1e-10


@pytest.mark.parametrize("pre_norm", [False, True])
def test_decoder_layer_equals_pytorch_layer_without_position(pre_norm):
    config = transformer_config(pre_norm)
    reference = nn.TransformerDecoderLayer(384, 8, 96, dropout=0.0, norm_first=pre_norm).double().eval()
    randomize_(reference, seed=4)
    # PyTorch's decoder layer names its cross-attention like the original (multihead_attn)
    ours = VisTRDecoderLayer(config).double().eval()
    load_original_layer(ours, reference, "vistr.transformer.decoder.layers.0.", "vistr.decoder.layers.0.")
    queries = torch.randn(2, 12, 384, dtype=torch.float64)
    memory = torch.randn(2, 30, 384, dtype=torch.float64)
    padding = torch.zeros(2, 30, dtype=torch.bool)
    padding[0, :5] = True
    with torch.no_grad():
        expected = reference(queries.transpose(0, 1), memory.transpose(0, 1), memory_key_padding_mask=padding)
        mask = padding_to_attention_mask(padding, memory.dtype)
        actual = ours(queries, torch.zeros_like(queries), memory, memory, mask)  # memory_key = memory + 0
    assert (actual - expected.transpose(0, 1)).abs().max() <= 1e-10


def test_pre_norm_model_has_the_original_final_encoder_norm():
    state = VisTRForVideoInstanceSegmentation(VisTRConfig(pre_norm=True, encoder_layers=1, decoder_layers=1)).state_dict()
    assert "vistr.encoder.layernorm.weight" in state
    assert "vistr.encoder.layernorm.weight" not in VisTRForVideoInstanceSegmentation(transformer_config(False)).state_dict()


def test_position_encoding_matches_float64_formula():
    """3-D sine encoding against the paper's formula in float64 (no padding: positions 1..n)."""
    frames, h, w, d = 3, 4, 5, 384
    ours = VisTRSinePositionEmbedding(d, 10000.0)(torch.zeros(1, frames, h, w, dtype=torch.bool), torch.float64)
    feats = d // 3
    dim_t = 10000.0 ** (2 * (torch.arange(feats, dtype=torch.float64) // 2) / feats)
    expected = []
    for length, view in ((frames, (frames, 1, 1)), (h, (1, h, 1)), (w, (1, 1, w))):
        position = (torch.arange(1, length + 1, dtype=torch.float64) / (length + 1e-6) * 2 * torch.pi).view(*view, 1)
        angles = (position / dim_t).expand(frames, h, w, feats)
        encoded = torch.where(torch.arange(feats) % 2 == 0, angles.sin(), angles.cos())
        expected.append(encoded)
    expected = torch.cat(expected, dim=-1).permute(0, 3, 1, 2)[None]
    assert ours.shape == (1, frames, d, h, w)
    assert (ours - expected).abs().max() <= 1e-5  # the original computes it in float32


def test_hidden_states_gradients_and_checkpointing_on_a_small_config():
    config = VisTRConfig(backbone="resnet18", num_frames=2, encoder_layers=1, decoder_layers=2, ffn_dim=64)
    model = VisTRForVideoInstanceSegmentation(config).train()
    model.activation_checkpointing_enable()
    outputs = model(torch.randn(1, 2, 3, 64, 64), output_hidden_states=True)
    assert len(outputs.encoder_hidden_states) == 2 and len(outputs.decoder_hidden_states) == 3
    assert outputs.pred_masks.shape == (1, 20, 16, 16) and len(outputs.auxiliary_outputs) == 1
    (outputs.logits.sum() + outputs.pred_boxes.sum() + outputs.pred_masks.sum()).backward()
    for name in ("vistr.encoder.layers.0.self_attn.q_proj.weight", "mask_head.dcn.weight", "instance_head.conv1.weight"):
        assert model.get_parameter(name).grad.abs().sum() > 0, name
    assert model.get_parameter("vistr.backbone.model.conv1.weight").grad is None  # frozen stem, as the original
