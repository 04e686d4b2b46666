"""modeling_vistr.py: the model against the original, against independent references, its fast paths, transformers'
plumbing, the options for training from scratch, and bf16 inference on CPU.

Every test that builds a small model of its own builds it with `VisTRModelTester` (transformers' DetrModelTester,
for VisTR): the tiny sizes are set once, there. The numbers against the original come from ../shared/parity
through conftest's fixtures. Folding the frozen batch norms: test_frozen_batch_norm.py; the deformable
convolution: test_deform_conv.py; the loss: test_loss_vistr.py.
"""

from __future__ import annotations

import copy
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import torchvision
from conftest import (
    PARITY_CASES,
    REPO_ROOT,
    SAMPLE,
    assert_close_scaled,
    assert_same_slots,
    case_inputs,
    import_script,
    mask_iou,
    slot_masks_and_labels,
)
from torch import nn
from torchvision.ops.misc import FrozenBatchNorm2d
from transformers import PreTrainedModel
from transformers.activations import ACT2FN
from transformers.models.detr.modeling_detr import DetrFrozenBatchNorm2d
from vistr import modeling_vistr as mv
from vistr.configuration_vistr import VisTRConfig
from vistr.convert_checkpoint import map_state_dict
from vistr.frozen_batch_norm import FrozenBatchNormConv2d
from vistr.loss_vistr import ForVideoInstanceSegmentationLoss
from vistr.modeling_vistr import (
    PROCESSOR_LAYOUT_KEYS,
    VisTRConvBackbone,
    VisTRDecoderLayer,
    VisTREncoderLayer,
    VisTRForVideoInstanceSegmentation,
    VisTRModel,
    VisTRModelOutput,
    VisTRSinePositionEmbedding,
    downsample_padding_mask,
    padding_to_attention_mask,
)


class VisTRModelTester:
    """The tiny VisTR of the modeling tests, as transformers' DetrModelTester: its sizes are set once, here. A test
    that needs another size names it (`VisTRModelTester(num_frames=3)`, `get_config(pre_norm=True)`)."""

    def __init__(self, batch_size: int = 1, num_frames: int = 2, num_queries_per_frame: int = 2, d_model: int = 96,
                 num_attention_heads: int = 8, encoder_layers: int = 1, decoder_layers: int = 2, ffn_dim: int = 64,
                 dropout: float = 0.0, backbone: str = "test_resnet", id2label: dict[int, str] | None = None,
                 height: int = 64, width: int = 96):  # fmt: skip
        self.batch_size = batch_size
        self.num_frames = num_frames
        self.num_queries_per_frame = num_queries_per_frame
        self.d_model = d_model
        self.num_attention_heads = num_attention_heads
        self.encoder_layers = encoder_layers
        self.decoder_layers = decoder_layers
        self.ffn_dim = ffn_dim
        self.dropout = dropout
        self.backbone = backbone
        self.id2label = {0: "N/A", 1: "a", 2: "b"} if id2label is None else id2label
        self.height, self.width = height, width

    def get_config(self, **overrides) -> VisTRConfig:
        settings = dict(
            backbone=self.backbone, num_frames=self.num_frames, num_queries_per_frame=self.num_queries_per_frame,
            d_model=self.d_model, num_attention_heads=self.num_attention_heads, encoder_layers=self.encoder_layers,
            decoder_layers=self.decoder_layers, ffn_dim=self.ffn_dim, dropout=self.dropout, id2label=self.id2label,
        )  # fmt: skip
        return VisTRConfig(**(settings | overrides))

    def _pixel_values(self, num_frames: int) -> torch.Tensor:
        """Seeded clips [batch_size, T, 3, height, width] in float64."""
        generator = torch.Generator().manual_seed(1)
        return torch.randn(self.batch_size, num_frames, 3, self.height, self.width, generator=generator).double()

    def prepare_config_and_inputs(self, **overrides) -> tuple[VisTRConfig, torch.Tensor]:
        """`get_config(**overrides)` and seeded pixel values for it (float64)."""
        config = self.get_config(**overrides)
        return config, self._pixel_values(config.num_frames)

    def create_model(self, **overrides) -> VisTRForVideoInstanceSegmentation:
        """The model of `get_config(**overrides)`: seeded weights, float64, eval mode."""
        torch.manual_seed(0)
        return VisTRForVideoInstanceSegmentation(self.get_config(**overrides)).double().eval()

    def clip(self, model: nn.Module) -> torch.Tensor:
        """Seeded pixel values for `model` (its clip length), float64."""
        return self._pixel_values(model.config.num_frames)

    def training_batch(self, config: VisTRConfig) -> tuple[torch.Tensor, list[dict]]:
        """Two videos of two instances each and their labels, seeded."""
        height, width = self.height, self.width
        torch.manual_seed(0)
        frames = config.num_frames
        pixel_values = torch.randn(2, frames, 3, height, width)
        labels = []
        for _ in range(2):
            masks = torch.zeros(2, frames, height, width)
            masks[0, :, 8:40, 10:50] = 1
            masks[1, :, 30:60, 40:90] = 1
            boxes = torch.tensor([[0.31, 0.38, 0.42, 0.5], [0.68, 0.7, 0.52, 0.47]])
            boxes = boxes.expand(frames, 2, 4).transpose(0, 1)
            labels.append({"class_labels": torch.tensor([1, 2]), "boxes": boxes.contiguous(), "masks": masks,
                           "valid": torch.ones(2, frames, dtype=torch.bool)})  # fmt: skip
        return pixel_values, labels


model_tester = VisTRModelTester()


# ==========================================================================================================
# The converted tiny checkpoint against the ORIGINAL implementation's outputs (../shared/parity).
#
# float64 model vs float64 golden outputs: 1e-9 on outputs and intermediates (the original's own
# two-thread rerun moves them by 9e-13). float32 model vs the same float64 reference: the
# tolerances of the issue, ~3x the original's own float32-vs-float64 differences.
# ==========================================================================================================

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


# ==========================================================================================================
# Parts of the model against independent references, for configurations the golden data does not
# cover (ResNet-101, DC5, pre-norm): torchvision's ResNet (what the original uses) and PyTorch's own
# transformer layers (whose structure the original's layers share, without position embeddings).
# ==========================================================================================================


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
    config = VisTRModelTester(backbone="resnet18", num_queries_per_frame=10).get_config()
    model = VisTRForVideoInstanceSegmentation(config).train()
    model.activation_checkpointing_enable()
    outputs = model(torch.randn(1, 2, 3, 64, 64), output_hidden_states=True)
    assert len(outputs.encoder_hidden_states) == 2 and len(outputs.decoder_hidden_states) == 3
    assert outputs.pred_masks.shape == (1, 20, 16, 16) and len(outputs.auxiliary_outputs) == 1
    (outputs.logits.sum() + outputs.pred_boxes.sum() + outputs.pred_masks.sum()).backward()
    for name in ("vistr.encoder.layers.0.self_attn.q_proj.weight", "mask_head.dcn.weight", "instance_head.conv1.weight"):
        assert model.get_parameter(name).grad.abs().sum() > 0, name
    assert model.get_parameter("vistr.backbone.model.conv1.weight").grad is None  # frozen stem, as the original


# ==========================================================================================================
# The speed-ups of modeling_vistr.py compute what the plain modules compute (float64, round-off only):
#
# * backbone: channels-last on CPU (values and gradients), nothing folded but frozen norms (the folding
#   itself: test_frozen_batch_norm.py);
# * mask head: lay1 split into a per-frame memory share and a per-query attention-map share, the FPN
#   sums as one broadcast add;
# * instance head: channels-last 3-D convolutions and the output convolution as a matrix product.
#
# The deformable convolution's CPU grid-sample path is tested against torchvision in test_deform_conv.py.
# ==========================================================================================================


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
        assert_close_scaled(a.detach(), b.detach())
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        assert_close_scaled(grads[0][name], grads[1][name])


def test_mask_head_first_conv_equals_convolving_the_concatenation():
    torch.manual_seed(0)
    config = VisTRModelTester(num_frames=3).get_config()
    head = mv.VisTRMaskHeadSmallConv(config, [64, 128, 256]).double()
    memory = torch.randn(3, config.d_model, 4, 5, dtype=torch.float64)
    maps = torch.rand(3, 7, config.num_attention_heads, 4, 5, dtype=torch.float64)
    with torch.no_grad():
        split = head._first_conv(memory, maps)
        whole = head.lay1(torch.cat([memory.repeat_interleave(7, dim=0), maps.flatten(0, 1)], dim=1))
    assert_close_scaled(split, whole)


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
        assert_close_scaled(head(x), expected)
        assert_close_scaled(copy.deepcopy(head).float()(x.float()).double(), expected, tol=1e-5)


def test_whole_model_equals_the_original_control_flow_with_deformed_sampling():
    """Random weights with real (non-zero) DCN offsets, padding, float64: our forward against the
    original's per-frame / per-instance control flow of benchmarks/original_flow.py."""
    OriginalFlow = import_script(REPO_ROOT / "benchmarks" / "original_flow.py").OriginalFlow

    torch.manual_seed(0)
    model = mv.VisTRForVideoInstanceSegmentation(VisTRModelTester(num_frames=3).get_config()).double().eval()
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
        assert_close_scaled(getattr(ours, name), theirs[key], tol=1e-9)


def test_inference_forward_traces_in_one_graph():
    """The fast paths keep the forward traceable by torch.compile without graph breaks (CPU, no grad)."""
    torch.manual_seed(0)
    model = mv.VisTRForVideoInstanceSegmentation(VisTRModelTester(num_frames=3).get_config()).eval()
    with torch.no_grad():
        explanation = torch._dynamo.explain(model)(pixel_values=torch.randn(1, 3, 3, 64, 96))
    assert explanation.graph_break_count == 0, [str(b.reason).splitlines()[0] for b in explanation.break_reasons]
    assert explanation.graph_count == 1


# ==========================================================================================================
# transformers' plumbing: attention implementations, recorded outputs, `return_dict`, keyword checks, the
# registered loss and the optional scipy.
# ==========================================================================================================


def test_sdpa_is_the_default_and_eager_gives_the_same_outputs():
    model = model_tester.create_model()
    assert model.config._attn_implementation == "sdpa"
    pixel_values = model_tester.clip(model)
    with torch.no_grad():
        sdpa = model(pixel_values)
        model.set_attn_implementation("eager")
        eager = model(pixel_values)
    for name in ("logits", "pred_boxes", "pred_masks"):
        assert (getattr(sdpa, name) - getattr(eager, name)).abs().max() <= 1e-12, name


def test_attn_implementation_is_chosen_at_from_pretrained(tmp_path):
    model_tester.create_model().save_pretrained(tmp_path)
    model = VisTRForVideoInstanceSegmentation.from_pretrained(tmp_path, attn_implementation="eager")
    attentions = [m for m in model.modules() if isinstance(m, mv.VisTRAttention)]
    assert model.config._attn_implementation == "eager"
    assert attentions and all(m.config._attn_implementation == "eager" for m in attentions)


def test_output_attentions_returns_every_layer_with_the_documented_shapes():
    model = model_tester.create_model(decoder_layers=2)
    model.set_attn_implementation("eager")
    config = model.config
    with torch.no_grad():
        outputs = model(model_tester.clip(model), output_attentions=True)
    tokens = config.num_frames * 2 * 3  # a 64 x 96 frame is 2 x 3 at stride 32
    heads, queries = config.num_attention_heads, config.num_queries
    assert [a.shape for a in outputs.encoder_attentions] == [(1, heads, tokens, tokens)] * config.encoder_layers
    assert [a.shape for a in outputs.decoder_attentions] == [(1, heads, queries, queries)] * config.decoder_layers
    assert [a.shape for a in outputs.cross_attentions] == [(1, heads, queries, tokens)] * config.decoder_layers
    for attention in outputs.encoder_attentions + outputs.decoder_attentions + outputs.cross_attentions:
        assert torch.allclose(attention.sum(-1), torch.ones((), dtype=attention.dtype))


def test_no_attentions_or_hidden_states_unless_asked():
    model = model_tester.create_model()
    with torch.no_grad():
        outputs = model(model_tester.clip(model))
    names = ("encoder_attentions", "decoder_attentions", "cross_attentions")
    names += ("encoder_hidden_states", "decoder_hidden_states")
    assert all(getattr(outputs, name) is None for name in names)


def test_config_output_flags_are_the_defaults():
    model = model_tester.create_model()
    model.set_attn_implementation("eager")
    model.config.output_attentions = model.config.output_hidden_states = True
    with torch.no_grad():
        outputs = model(model_tester.clip(model))
    assert len(outputs.cross_attentions) == model.config.decoder_layers
    assert len(outputs.decoder_hidden_states) == model.config.decoder_layers + 1


def test_hidden_states_are_layer_inputs_then_the_final_output():
    # the pre-norm encoder ends in a norm: its last entry is after it
    model = model_tester.create_model(pre_norm=True)
    with torch.no_grad():
        outputs = model(model_tester.clip(model), output_hidden_states=True)
    encoder, decoder = outputs.encoder_hidden_states, outputs.decoder_hidden_states
    assert len(encoder) == model.config.encoder_layers + 1 and len(decoder) == model.config.decoder_layers + 1
    assert torch.equal(encoder[-1], outputs.encoder_last_hidden_state)
    assert torch.equal(decoder[-1], outputs.last_hidden_state)
    assert not decoder[0].any()  # the decoder starts from zero queries


@pytest.mark.parametrize("model_class", [VisTRModel, VisTRForVideoInstanceSegmentation])
def test_return_dict_false_gives_the_tuple_of_the_output(model_class):
    config, pixel_values = model_tester.prepare_config_and_inputs()
    torch.manual_seed(0)
    model = model_class(config).double().eval()
    with torch.no_grad():
        as_dict = model(pixel_values)
        as_tuple = model(pixel_values, return_dict=False)
        model.config.return_dict = False
        from_config = model(pixel_values)
    for result in (as_tuple, from_config):
        assert isinstance(result, tuple) and len(result) == len(as_dict.to_tuple())
        assert all(torch.equal(a, b) for a, b in zip(result, as_dict.to_tuple()) if isinstance(a, torch.Tensor))


@pytest.mark.parametrize("model_class", [VisTRModel, VisTRForVideoInstanceSegmentation])
def test_unknown_keywords_raise_and_the_processor_layout_keys_are_ignored(model_class):
    config, pixel_values = model_tester.prepare_config_and_inputs()
    torch.manual_seed(0)
    model = model_class(config).double().eval()
    layout = {key: torch.zeros(1, dtype=torch.long) for key in PROCESSOR_LAYOUT_KEYS}
    with torch.no_grad():
        assert torch.equal(model(pixel_values, **layout).last_hidden_state, model(pixel_values).last_hidden_state)
        with pytest.raises(TypeError, match="output_attention"):
            model(pixel_values, output_attention=True)  # misspelt: must not be ignored


def test_the_loss_goes_through_the_registered_loss_function():
    model = VisTRForVideoInstanceSegmentation(model_tester.get_config()).train()
    assert model.loss_function is ForVideoInstanceSegmentationLoss
    calls = []

    def spy(*args):
        calls.append(args)
        return ForVideoInstanceSegmentationLoss(*args)

    model.loss_function = spy
    pixel_values, labels = model_tester.training_batch(model.config)
    outputs = model(pixel_values, labels=labels)
    assert len(calls) == 1 and calls[0][-1] is model.config and outputs.loss.isfinite()


def test_training_step_keeps_the_matched_slots_fast_path():
    model = VisTRForVideoInstanceSegmentation(model_tester.get_config()).train()
    pixel_values, labels = model_tester.training_batch(model.config)
    slot_lists = []
    original = model._predict_masks
    model._predict_masks = lambda outputs, slots=None: slot_lists.append(slots) or original(outputs, slots)
    model(pixel_values, labels=labels).loss.backward()
    assert len(slot_lists) == 1 and slot_lists[0] is not None  # the matched slots, never all of them


def test_init_weights_runs_without_gradient_tracking(monkeypatch):
    grad_modes = []
    base = PreTrainedModel._init_weights
    record = lambda self, module: grad_modes.append(torch.is_grad_enabled()) or base(self, module)  # noqa: E731
    monkeypatch.setattr(PreTrainedModel, "_init_weights", record)
    model = VisTRForVideoInstanceSegmentation(model_tester.get_config())
    grad_modes.clear()
    model._init_weights(nn.Linear(2, 2))  # called with gradients enabled: the decorator turns them off
    assert grad_modes == [False]


@pytest.mark.parametrize("activation", ["relu", "gelu"])
def test_feed_forward_activation_comes_from_act2fn(activation):
    model = VisTRForVideoInstanceSegmentation(model_tester.get_config(activation_function=activation))
    assert type(model.vistr.encoder.layers[0].ffn.activation) is type(ACT2FN[activation])


def test_inference_needs_no_scipy_and_the_loss_says_so(tmp_path):
    config = model_tester.get_config()  # the tester's config and batch, handed to the fresh interpreter as files
    config.save_pretrained(tmp_path)
    torch.save(model_tester.training_batch(config), tmp_path / "batch.pt")
    script = textwrap.dedent(
        """
        import sys
        sys.modules["scipy"] = None  # as if scipy were not installed: any import of it raises ImportError
        import torch
        from vistr.configuration_vistr import VisTRConfig
        from vistr.modeling_vistr import VisTRForVideoInstanceSegmentation
        model = VisTRForVideoInstanceSegmentation(VisTRConfig.from_pretrained(sys.argv[1])).eval()
        pixel_values, labels = torch.load(sys.argv[2], weights_only=True)
        with torch.no_grad():
            model(pixel_values)
        try:
            model(pixel_values, labels=labels)
        except ImportError as error:
            print("loss needs scipy:", error)
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path), str(tmp_path / "batch.pt")], capture_output=True, text=True,
        timeout=300, cwd=Path(__file__).parent.parent,
    )
    assert result.returncode == 0, result.stderr
    assert "loss needs scipy" in result.stdout


# ==========================================================================================================
# Options for training from scratch: trained backbone norms, every stage trained, narrow transformers.
#
# The released shapes stay the original's (the parity tests above); here: a from-scratch model is
# built as asked, and every one of its weights receives a gradient from the training loss.
# ==========================================================================================================

# DETR's first decoder layer attends over all-zero queries (tgt = 0, as in the original): every value is the
# same, so its self-attention weights (and the norm before it) get no gradient, in the original as here.
FIRST_DECODER_SELF_ATTENTION = ("vistr.decoder.layers.0.self_attn.", "vistr.decoder.layers.0.self_attn_layer_norm.")


def parameters_without_gradient(model: nn.Module, steps: int = 2) -> list[str]:
    """Weights (outside the first decoder self-attention) whose gradient stays zero over `steps` SGD steps.

    Two steps, because timm starts each residual block's last norm at zero (zero_init_last): the convs
    inside a block get their first gradient once that norm has moved.
    """
    pixel_values, labels = model_tester.training_batch(model.config)
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
    model = VisTRForVideoInstanceSegmentation(model_tester.get_config(backbone_norm=norm, backbone_frozen_stages=-1))
    assert all(p.requires_grad for p in model.parameters())
    assert parameters_without_gradient(model) == []


def test_backbone_norm_kinds():
    def norm_types(config):
        return {type(m) for m in VisTRForVideoInstanceSegmentation(config).vistr.backbone.modules()}

    assert nn.BatchNorm2d in norm_types(model_tester.get_config(backbone_norm="batch_norm"))
    group_norm_types = norm_types(model_tester.get_config(backbone_norm="group_norm"))
    assert nn.GroupNorm in group_norm_types and nn.BatchNorm2d not in group_norm_types
    frozen_types = norm_types(model_tester.get_config())
    # frozen norms, folded into their convolutions (frozen_batch_norm.py): a subclass that passes through
    assert any(issubclass(t, DetrFrozenBatchNorm2d) for t in frozen_types) and nn.BatchNorm2d not in frozen_types


@pytest.mark.parametrize("frozen_stages,first_trained", [(-1, "conv1"), (0, "layer1"), (1, "layer2"), (4, None)])
def test_frozen_stages_are_the_leading_ones(frozen_stages, first_trained):
    config = model_tester.get_config(backbone_norm="batch_norm", backbone_frozen_stages=frozen_stages)
    backbone = VisTRForVideoInstanceSegmentation(config).vistr.backbone.model
    trained = [name for name, p in backbone.named_parameters() if p.requires_grad]
    assert (trained[0].split(".")[0] if trained else None) == first_trained
    frozen = [name for name, p in backbone.named_parameters() if not p.requires_grad]
    order = ["conv1", "bn1", "layer1", "layer2", "layer3", "layer4"]
    if trained and frozen:  # every frozen weight comes before every trained one
        assert max(order.index(n.split(".")[0]) for n in frozen) < order.index(trained[0].split(".")[0])


def test_the_original_recipe_freezes_stem_and_layer1_and_trains_the_rest():
    model = VisTRForVideoInstanceSegmentation(model_tester.get_config())
    frozen = {name.split(".")[0] for name, p in model.vistr.backbone.model.named_parameters() if not p.requires_grad}
    assert frozen == {"conv1", "layer1"}  # the frozen norms have no parameters at all
    # ...and with frozen statistics, a fresh ResNet's zero-initialised last norms keep its residual
    # branches dead for good: why training from scratch needs backbone_norm="batch_norm"/"group_norm"
    assert any(name.startswith("vistr.backbone.model.layer2.") for name in parameters_without_gradient(model))


@pytest.mark.parametrize("d_model,heads,expected_groups", [(96, 8, [8, 8, 8, 4, 2]), (192, 8, [8, 8, 8, 8, 4]),
                                                           (384, 8, [8, 8, 8, 8, 8])])
def test_mask_head_groups_follow_the_width(d_model, heads, expected_groups):
    config = model_tester.get_config(d_model=d_model, num_attention_heads=heads)
    head = VisTRForVideoInstanceSegmentation(config).mask_head
    norms = [head.gn1, head.gn2, head.gn3, head.gn4, head.gn5]
    assert [n.num_channels for n in norms] == [d_model + heads, d_model // 2, d_model // 4, d_model // 8, d_model // 16]
    assert [n.num_groups for n in norms] == expected_groups


@pytest.mark.parametrize("mask_head_width", [192, 384])
def test_a_wider_mask_head_than_the_transformer_is_built_and_trained(mask_head_width):
    """`mask_head_width` sets the mask head's stages (width/2 ... width/16) and the 3-D head's input; the
    transformer keeps d_model, and every weight of the wider model still receives a gradient."""
    config = model_tester.get_config(backbone_norm="batch_norm", backbone_frozen_stages=-1,
                                     mask_head_width=mask_head_width)
    model = VisTRForVideoInstanceSegmentation(config)
    head = model.mask_head
    assert [n.num_channels for n in (head.gn1, head.gn2, head.gn3, head.gn4, head.gn5)] == [
        96 + 8, mask_head_width // 2, mask_head_width // 4, mask_head_width // 8, mask_head_width // 16]
    assert model.instance_head.conv1.in_channels == mask_head_width // 16
    assert model.class_labels_classifier.in_features == 96
    assert parameters_without_gradient(model) == []


def test_training_computes_the_masks_of_matched_slots_only_with_the_same_loss_and_gradients():
    """Loss and every gradient equal the full mask computation's (float64), while fewer slots run the mask head."""
    config = model_tester.get_config(backbone_norm="group_norm", backbone_frozen_stages=-1, num_queries_per_frame=4,
                                     dropout=0.0)
    torch.manual_seed(0)
    model = VisTRForVideoInstanceSegmentation(config).double().train()
    pixel_values, labels = model_tester.training_batch(config)
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
    config = model_tester.get_config(d_model=192, ffn_dim=384)
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
    model = VisTRForVideoInstanceSegmentation(model_tester.get_config())
    with torch.no_grad():
        model.mask_head.conv_offset.weight.fill_(0.25)
    model.save_pretrained(tmp_path)
    loaded = VisTRForVideoInstanceSegmentation.from_pretrained(tmp_path)
    for (name, saved), (_, again) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(saved, again), name


# ==========================================================================================================
# bf16 inference on CPU (`--dtype bf16`): the same instances as float32.
#
# Accuracy tests, not timing tests (the speed is measured by benchmarks/bench_forward.py). A model loaded in
# bf16 and fed bf16 pixels, as `vistr segment --dtype bf16`, the pipeline and the split inference do, must
# find the instances float32 finds: the same label per slot and mask IoU >= 0.98 per instance it reports (score
# at least the pipeline's default threshold 0.5; conftest's assert_same_slots).
#
# * The bundled model (trained weights) meets that on the whole forward, on every clip of the sample video
#   (through VideoSegmenter, with and without flips: test_pipeline_vistr.py).
# * The converted tiny checkpoint has seeded random weights, and its random R50 is chaotic: rounding only
#   the input pixels to bf16 already moves float32's masks to an IoU of about 0.8. Its test therefore
#   gives the bf16 heads (mask head with the deformable convolution, 3-D head, class head) the float32
#   trunk's outputs rounded to bf16 and bounds what the bf16 arithmetic of the heads adds.
# * The deformable convolution's bf16 path at the mask head's full-size shape: test_deform_conv.py.
# ==========================================================================================================


def test_bundled_model_bf16_finds_the_fp32_instances(bundled):
    """Whole forward, every clip of the sample video: labels equal, reported slots' mask IoU >= 0.98."""
    model, low, processor = bundled
    frames = model.config.num_frames
    clips = list(processor.video_clips(SAMPLE, num_frames=frames, stride=frames))
    assert len(clips) >= 2
    for _, pixels in clips:
        with torch.inference_mode():
            assert_same_slots(model(pixel_values=pixels[None]), low(pixel_values=pixels[None].to(torch.bfloat16)), frames)


def cast_floats(outputs: VisTRModelOutput, dtype: torch.dtype) -> VisTRModelOutput:
    """The trunk's outputs with every floating-point tensor (also inside lists, as the feature maps) in `dtype`."""

    def cast(value):
        if isinstance(value, torch.Tensor):
            return value.to(dtype) if value.is_floating_point() else value
        if isinstance(value, (list, tuple)):
            return type(value)(cast(v) for v in value)
        return value

    return VisTRModelOutput(**{key: cast(value) for key, value in outputs.items()})


@pytest.mark.parametrize("case", ["unpadded", "padded"])
def test_converted_heads_bf16_add_little_to_the_rounding_of_their_inputs(tiny_model, parity_inputs, case):
    """Converted weights: the bf16 heads on the float32 trunk's outputs rounded to bf16, against float32 heads.

    The labels must be equal. The masks are the speckle of random weights (a third of the pixels on, many
    near the threshold), so the float32 heads on the same rounded inputs already reach only about 0.985;
    the bf16 heads (measured 0.965) must stay within 0.03 of that.
    """
    low = copy.deepcopy(tiny_model).to(torch.bfloat16)
    pixel_values, pixel_mask = case_inputs(parity_inputs, case, torch.float32)
    frames = tiny_model.config.num_frames
    with torch.inference_mode():
        trunk = tiny_model.vistr(pixel_values, pixel_mask, return_dict=True)
        rounded = cast_floats(trunk, torch.bfloat16)
        reference = tiny_model._predict_masks(trunk)[0]
        floor = tiny_model._predict_masks(cast_floats(rounded, torch.float32))[0]
        computed = low._predict_masks(rounded)[0]
        logits_a = tiny_model.class_labels_classifier(trunk.last_hidden_state)[0]
        logits_b = low.class_labels_classifier(rounded.last_hidden_state)[0]
    masks_a, labels_a = slot_masks_and_labels(logits_a, reference, frames)
    masks_b, labels_b = slot_masks_and_labels(logits_b, computed, frames)
    masks_floor, _ = slot_masks_and_labels(logits_a, floor, frames)
    assert computed.dtype == torch.bfloat16
    assert torch.equal(labels_a, labels_b)
    assert mask_iou(masks_a, masks_b).min() >= mask_iou(masks_a, masks_floor).min() - 0.03


# ----------------------------------------------------------------------------------- VisTRLinear


@pytest.mark.parametrize("shape", [(2, 37, 24), (5, 24), (3, 1, 24), (0, 24)], ids=str)
def test_linear_layers_run_float32_through_a_convolution_and_equal_the_product(monkeypatch, shape):
    """float32 on CPU: the 1x1 convolution (oneDNN), equal to the product in float64 within float32 rounding,
    with its gradients; float64: `F.linear` itself, bit for bit."""
    generator = torch.Generator().manual_seed(0)
    layer = mv.VisTRLinear(24, 40)
    x = torch.randn(shape, generator=generator).transpose(0, -1).contiguous().transpose(0, -1)  # not contiguous
    convolutions = []
    conv2d = F.conv2d
    monkeypatch.setattr(mv.F, "conv2d", lambda *args, **kwargs: convolutions.append(1) or conv2d(*args, **kwargs))
    out = layer(x.requires_grad_())
    expected = x.double() @ layer.weight.double().t() + layer.bias.double()
    assert out.shape == (*shape[:-1], 40) and out.dtype == torch.float32
    torch.testing.assert_close(out.double(), expected, rtol=1e-6, atol=1e-5)
    assert len(convolutions) == (1 if x.numel() else 0)
    if x.numel():
        out.sum().backward()
        torch.testing.assert_close(x.grad.double(), layer.weight.double().sum(0).expand(shape), rtol=1e-6, atol=1e-5)
    wide = copy.deepcopy(layer).double()
    assert torch.equal(wide(x.detach().double()), F.linear(x.detach().double(), wide.weight, wide.bias))
    assert len(convolutions) == (1 if x.numel() else 0)  # float64 took F.linear
