"""VisTR: End-to-End Video Instance Segmentation with Transformers (Wang et al., CVPR 2021).

A faithful port of the original implementation (a fork of DETR): converted checkpoints give the
original outputs to float64 round-off. Where the original looped over frames and instances with
batch size 1 hard-coded, this port runs every frame and instance of every video at once; the
arithmetic per element is unchanged, so a batch equals its videos run one by one.

Speed (benchmarks/bench_forward.py against the original's control flow), each path beside what it
speeds up: the frozen batch norms are folded into the backbone's convolutions once, at construction
(frozen_batch_norm.py; channels-last on CPU); the mask head's first convolution takes the encoder memory's
share once per frame instead of once per query; the deformable convolution's CPU and GPU paths live in
deform_conv.py; the 3-D instance head runs channels-last on CPU. Each equals the plain computation to
round-off (tests/test_modeling_vistr.py).

Conventions: `pixel_values` [B, T, 3, H, W], `pixel_mask` [B, T, H, W] with 1 = real pixel;
queries are frame-major (query `t * n + slot`); the same slot across frames is one instance.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar, Protocol

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.backbone_utils import load_backbone
from transformers.loss.loss_utils import LOSS_MAPPING
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutput
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.models.detr.modeling_detr import DetrFrozenBatchNorm2d, eager_attention_forward, replace_batch_norm
from transformers.processing_utils import Unpack
from transformers.utils import ModelOutput, TransformersKwargs, can_return_tuple
from transformers.utils.output_capturing import OutputRecorder, capture_outputs

from .configuration_vistr import VisTRConfig
from .deform_conv import DeformConv2d
from .frozen_batch_norm import fold_frozen_batch_norms
from .loss_vistr import ForVideoInstanceSegmentationLoss


@dataclass
class VisTRModelOutput(ModelOutput):
    r"""
    last_hidden_state (`torch.FloatTensor` of shape `(batch_size, num_queries, d_model)`):
        Output of the last decoder layer (after the decoder's final layer norm).
    intermediate_hidden_states (`torch.FloatTensor` of shape `(decoder_layers, batch_size, num_queries, d_model)`):
        Every decoder layer's output after the shared final layer norm (the original's `hs`).
    encoder_last_hidden_state (`torch.FloatTensor` of shape `(batch_size, num_frames * h * w, d_model)`):
        Encoder output (memory), tokens frame-major: `t * h * w + y * w + x`.
    feature_maps (`tuple[torch.FloatTensor]`):
        The four backbone levels, each `(batch_size, num_frames, channels, h_k, w_k)`.
    memory_padding_mask (`torch.BoolTensor` of shape `(batch_size, num_frames, h, w)`):
        True where the last backbone level is padding.
    encoder_hidden_states, decoder_hidden_states (`tuple[torch.FloatTensor]`, *optional*):
        Inputs of every layer plus the final output, when `output_hidden_states=True`.
    encoder_attentions (`tuple[torch.FloatTensor]`, *optional*):
        One per encoder layer, `(batch_size, num_attention_heads, num_frames * h * w, num_frames * h * w)`: the
        self-attention weights after the softmax, when `output_attentions=True` (attention implementations that
        return weights, e.g. `attn_implementation="eager"`; empty under SDPA, which computes none).
    decoder_attentions (`tuple[torch.FloatTensor]`, *optional*):
        One per decoder layer, `(batch_size, num_attention_heads, num_queries, num_queries)`: the queries'
        self-attention weights, when `output_attentions=True` (as above).
    cross_attentions (`tuple[torch.FloatTensor]`, *optional*):
        One per decoder layer, `(batch_size, num_attention_heads, num_queries, num_frames * h * w)`: the queries'
        attention over the encoder memory, when `output_attentions=True` (as above).
    """

    last_hidden_state: torch.FloatTensor | None = None
    intermediate_hidden_states: torch.FloatTensor | None = None
    encoder_last_hidden_state: torch.FloatTensor | None = None
    feature_maps: tuple[torch.FloatTensor, ...] | None = None
    memory_padding_mask: torch.BoolTensor | None = None
    encoder_hidden_states: tuple[torch.FloatTensor, ...] | None = None
    decoder_hidden_states: tuple[torch.FloatTensor, ...] | None = None
    encoder_attentions: tuple[torch.FloatTensor, ...] | None = None
    decoder_attentions: tuple[torch.FloatTensor, ...] | None = None
    cross_attentions: tuple[torch.FloatTensor, ...] | None = None


@dataclass
class VisTRVideoInstanceSegmentationOutput(ModelOutput):
    r"""
    loss (`torch.FloatTensor` of shape `()`, *optional*):
        Weighted total of the matching losses, when `labels` are given.
    loss_dict (`dict[str, torch.FloatTensor]`, *optional*):
        Every loss term under the original's names (`loss_ce`, `loss_bbox`, `loss_giou`, `loss_mask`,
        `loss_dice`, `loss_ce_0`, ...) plus the logged `class_error` and `cardinality_error*`.
    logits (`torch.FloatTensor` of shape `(batch_size, num_frames * num_queries_per_frame, num_labels + 1)`):
        Class logits including no-object (last), query `t * n + slot`.
    pred_boxes (`torch.FloatTensor` of shape `(batch_size, num_frames * num_queries_per_frame, 4)`):
        Boxes `(center_x, center_y, width, height)` normalized by the unpadded frame size.
    pred_masks (`torch.FloatTensor` of shape `(batch_size, num_frames * num_queries_per_frame, H / 4, W / 4)`):
        Mask logits at stride 4 of the (padded) input. In training mode with `labels`, only the slots the
        loss matched are computed (the loss reads no others); the rest are 0.
    auxiliary_outputs (`list[dict]`, *optional*):
        `{"logits", "pred_boxes"}` of every decoder layer but the last, when `config.auxiliary_loss`.
    last_hidden_state, intermediate_hidden_states, encoder_last_hidden_state, encoder_hidden_states,
    decoder_hidden_states, encoder_attentions, decoder_attentions, cross_attentions: see [`VisTRModelOutput`].
    """

    loss: torch.FloatTensor | None = None
    loss_dict: dict[str, torch.FloatTensor] | None = None
    logits: torch.FloatTensor | None = None
    pred_boxes: torch.FloatTensor | None = None
    pred_masks: torch.FloatTensor | None = None
    auxiliary_outputs: list[dict[str, torch.Tensor]] | None = None
    last_hidden_state: torch.FloatTensor | None = None
    intermediate_hidden_states: torch.FloatTensor | None = None
    encoder_last_hidden_state: torch.FloatTensor | None = None
    encoder_hidden_states: tuple[torch.FloatTensor, ...] | None = None
    decoder_hidden_states: tuple[torch.FloatTensor, ...] | None = None
    encoder_attentions: tuple[torch.FloatTensor, ...] | None = None
    decoder_attentions: tuple[torch.FloatTensor, ...] | None = None
    cross_attentions: tuple[torch.FloatTensor, ...] | None = None


@dataclass
class VisTRDecoderOutput(ModelOutput):
    r"""
    last_hidden_state (`torch.FloatTensor` of shape `(batch_size, num_queries, d_model)`):
        Output of the last decoder layer after the final layer norm.
    intermediate_hidden_states (`torch.FloatTensor` of shape `(decoder_layers, batch_size, num_queries, d_model)`):
        Every layer's output after the final layer norm: the class and box heads read all of them.
    hidden_states, attentions, cross_attentions (`tuple[torch.FloatTensor]`, *optional*):
        Recorded by `capture_outputs`; see `decoder_hidden_states`, `decoder_attentions` and `cross_attentions`
        of [`VisTRModelOutput`].
    """

    last_hidden_state: torch.FloatTensor | None = None
    intermediate_hidden_states: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None
    cross_attentions: tuple[torch.FloatTensor, ...] | None = None


# Keys of the video processor's output (`image_processing_vistr.py`) that describe the clip layout for
# post-processing. `model(**inputs)` passes them along; the model reads none of them.
PROCESSOR_LAYOUT_KEYS = frozenset({"clip_video_indices", "clip_frame_indices", "original_sizes", "processed_sizes"})


def check_layout_keys(method: str, kwargs: dict) -> None:
    """Accept the processor's layout keys and nothing else: a misspelt argument raises instead of being ignored."""
    unknown = sorted(set(kwargs) - PROCESSOR_LAYOUT_KEYS)
    if unknown:
        raise TypeError(
            f"{method}() got unexpected keyword arguments {unknown}; besides its named arguments it accepts only "
            f"the video processor's layout keys {sorted(PROCESSOR_LAYOUT_KEYS)}, which it ignores"
        )


def padding_to_attention_mask(padding_mask: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """Key padding [B, L] (True = padded) -> additive mask [B, 1, 1, L] for every attention implementation.

    The dtype's minimum rather than -inf: the softmax gives padded keys exactly 0 either way, and the
    eager sum `scores + mask` stays finite.
    """
    if padding_mask is None:
        return None
    mask = torch.zeros(padding_mask.shape, dtype=dtype, device=padding_mask.device)
    return mask.masked_fill(padding_mask, torch.finfo(dtype).min)[:, None, None, :]


def downsample_padding_mask(padding_mask: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Padding mask [B, T, H, W] -> [B, T, h, w], nearest-neighbour as the original does per level."""
    return F.interpolate(padding_mask.float(), size=size, mode="nearest").bool()


def _is_plain(module: nn.Module | None, cls: type) -> bool:
    """Exactly a `cls` (no wrapper or subclass, e.g. an adapter) with no hooks: its forward may be inlined."""
    return type(module) is cls and not (module._forward_hooks or module._forward_pre_hooks)


class VisTRLinear(nn.Linear):
    """`nn.Linear` whose float32 products on CPU run as a 1x1 convolution, through oneDNN.

    The same product either way (rows as the pixels of a channels-last image, no copy), but the library
    differs: `F.linear` calls the BLAS of `torch.mm`, which on an AMD EPYC (MKL) reached 200-220 GFLOP/s
    at the transformer's shapes, against 450-470 for oneDNN's convolution (benchmarks/bench_roofline.py).
    Other dtypes (bf16 already goes to oneDNN; float64, which oneDNN does not do), other devices, and
    traced graphs (torch.export, ONNX) keep `F.linear`.
    """

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if (torch.compiler.is_compiling() or input.dtype != torch.float32 or input.device.type != "cpu"
                or input.numel() == 0 or not torch.backends.mkldnn.is_available()):
            return F.linear(input, self.weight, self.bias)
        rows = input.reshape(-1, self.in_features).contiguous()
        count = rows.shape[0]
        pixels = rows.as_strided((1, self.in_features, 1, count), (rows.numel(), 1, rows.numel(), self.in_features))
        out = F.conv2d(pixels, self.weight[:, :, None, None], self.bias)  # [1, out, 1, rows], channels-last
        return out.permute(0, 2, 3, 1).reshape(*input.shape[:-1], self.out_features)


# The original's initialisation of freshly created weights, by leaf module: transformers initialises module by
# module from the leaves up and skips weights already set, so a rule on a parent (say "xavier for every matrix
# of a transformer layer") would never reach its leaves. Each rule is attached to the leaves it covers.
ORIGINAL_INIT = "_vistr_original_init"


# A frozen batch norm's identity: what its buffers hold before loading (`_init_weights`).
_FROZEN_NORM_IDENTITY = {
    "weight": init.ones_, "bias": init.zeros_, "running_mean": init.zeros_, "running_var": init.ones_,
}  # fmt: skip


def use_original_init(module: nn.Module, rule: str, kinds: tuple[type, ...]) -> None:
    """Mark every `kinds` leaf of `module` for `rule` ("xavier", "xavier, zero bias", "kaiming, zero bias",
    "zeros"), applied by `VisTRPreTrainedModel._init_weights`."""
    for leaf in module.modules():
        if isinstance(leaf, kinds):
            setattr(leaf, ORIGINAL_INIT, rule)


# ----------------------------------------------------------------------------------- backbone


def _replace_batch_norm_by_group_norm(module: nn.Module) -> None:
    """Every BatchNorm2d of `module` becomes a GroupNorm over the same channels (at most 32 groups)."""
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            channels = child.num_features
            setattr(module, name, nn.GroupNorm(math.gcd(32, channels), channels, eps=child.eps))
        else:
            _replace_batch_norm_by_group_norm(child)


def _as_initialised_as(model: nn.Module, backbone: nn.Module) -> None:
    """Mark the frozen norms of `model` initialised exactly when `backbone` (transformers' backbone model) was.

    They replace its batch norms holding their values, so `_init_weights` leaves them alone where those were set (a
    fresh ResNet keeps timm's zero-initialised last norms) and fills them where they were not: a model built on the
    meta device, or under `from_pretrained`, whose checkpoint lacks them.
    """
    initialised = getattr(backbone, "_is_hf_initialized", False)
    for module in model.modules():
        if isinstance(module, DetrFrozenBatchNorm2d):
            module._is_hf_initialized = initialised


# The parameter-name prefixes of the backbone's stages, in order: 0 = the stem, then layer1..layer4.
_BACKBONE_STAGE_PREFIXES = (("conv1.", "bn1."), ("layer1.",), ("layer2.",), ("layer3.",), ("layer4.",))


class VisTRConvBackbone(nn.Module):
    """A timm ResNet (through transformers' backbone API), returning its four stages.

    With the default `backbone_norm="frozen_batch_norm"` this is DETR's backbone for pretrained
    weights: batch norms with fixed statistics, stem and first stage not trained. Training from
    scratch uses trained norms (`"batch_norm"`, `"group_norm"`) and `backbone_frozen_stages=-1`.
    """

    def __init__(self, config: VisTRConfig):
        super().__init__()
        backbone = load_backbone(config)
        with torch.no_grad():
            if config.backbone_norm == "frozen_batch_norm":
                replace_batch_norm(backbone)
            elif config.backbone_norm == "group_norm":
                _replace_batch_norm_by_group_norm(backbone)
        self.channels: list[int] = list(backbone.channels)
        self.model = backbone._backbone
        frozen = tuple(p for stage in _BACKBONE_STAGE_PREFIXES[: config.backbone_frozen_stages + 1] for p in stage)
        for name, parameter in self.model.named_parameters():
            if name.startswith(frozen):
                parameter.requires_grad_(False)
        # speed (frozen_batch_norm.py): each frozen norm folded into the convolution before it, same weights
        if config.backbone_norm == "frozen_batch_norm":
            fold_frozen_batch_norms(self.model)
            _as_initialised_as(self.model, backbone)
        # oneDNN runs convolutions, norms and pooling fastest channels-last (NHWC) on CPU, with the same values:
        # a training step with trained norms takes less time, the max pool most of all (docs/benchmarks.md).
        # A switch, so the benchmark can time the channels-first layout it replaced.
        self.channels_last_on_cpu = True

    def forward(self, frames: torch.Tensor) -> list[torch.Tensor]:
        """frames [N, 3, H, W] -> the four stages' feature maps (channels-last on CPU: same values)."""
        if self.channels_last_on_cpu and frames.device.type == "cpu":
            frames = frames.contiguous(memory_format=torch.channels_last)
        return list(self.model(frames))


# ----------------------------------------------------------------------------------- 3-D position encoding


class VisTRSinePositionEmbedding(nn.Module):
    """3-D sine position encoding over (time, y, x): d_model/3 channels per axis, in that order.

    Computed in float32 whatever the model dtype, then cast, exactly as the original (which does
    its cumsum and frequencies in float32 even for a float64 model).
    """

    def __init__(self, d_model: int, temperature: float):
        super().__init__()
        self.num_pos_feats = d_model // 3
        self.temperature = temperature

    def forward(self, padding_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """padding_mask [B, T, h, w] (True = padded) -> [B, T, d_model, h, w]."""
        not_mask = ~padding_mask
        eps, scale = 1e-6, 2 * math.pi
        axes = []
        for dim in (1, 2, 3):  # time, y, x
            embed = not_mask.cumsum(dim, dtype=torch.float32)
            last = embed.narrow(dim, embed.shape[dim] - 1, 1)
            axes.append(embed / (last + eps) * scale)
        dim_t = torch.arange(self.num_pos_feats, dtype=torch.float32, device=padding_mask.device)
        dim_t = self.temperature ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / self.num_pos_feats)
        encoded = []
        for embed in axes:
            pos = embed[..., None] / dim_t
            encoded.append(torch.stack((pos[..., 0::2].sin(), pos[..., 1::2].cos()), dim=5).flatten(4))
        return torch.cat(encoded, dim=4).permute(0, 1, 4, 2, 3).to(dtype)


# ----------------------------------------------------------------------------------- transformer


class VisTRAttention(nn.Module):
    """Multi-head attention with separate q/k/v projections (the original's packed projection, split).

    The product itself goes through transformers' attention interface, so `config._attn_implementation`
    (`attn_implementation=` at `from_pretrained`, "sdpa" by default, "eager" to get the weights) chooses
    the kernel. Returns the output and the weights (None where the kernel computes none).
    """

    def __init__(self, config: VisTRConfig):
        super().__init__()
        self.config = config
        self.head_dim = config.d_model // config.num_attention_heads
        self.scaling = self.head_dim**-0.5
        self.attention_dropout = config.dropout
        self.is_causal = False  # read by the SDPA interface: every query sees every (unpadded) key
        self.q_proj = VisTRLinear(config.d_model, config.d_model)
        self.k_proj = VisTRLinear(config.d_model, config.d_model)
        self.v_proj = VisTRLinear(config.d_model, config.d_model)
        self.out_proj = VisTRLinear(config.d_model, config.d_model)

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        return x.view(*x.shape[:-1], -1, self.head_dim).transpose(1, 2)

    def forward(
        self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """query [B, Lq, d], key/value [B, Lk, d], attention_mask additive [B, 1, 1, Lk] -> [B, Lq, d], weights."""
        attention: Callable = ALL_ATTENTION_FUNCTIONS.get_interface(
            self.config._attn_implementation, eager_attention_forward
        )
        out, weights = attention(
            self,
            self._split_heads(self.q_proj(query)),
            self._split_heads(self.k_proj(key)),
            self._split_heads(self.v_proj(value)),
            attention_mask,
            dropout=self.attention_dropout if self.training else 0.0,
            scaling=self.scaling,
        )
        return self.out_proj(out.flatten(2)), weights


class VisTRFeedForward(nn.Module):
    def __init__(self, config: VisTRConfig):
        super().__init__()
        self.fc1 = VisTRLinear(config.d_model, config.ffn_dim)
        self.fc2 = VisTRLinear(config.ffn_dim, config.d_model)
        self.dropout = nn.Dropout(config.dropout)
        self.activation = ACT2FN[config.activation_function]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.dropout(self.activation(self.fc1(x))))


class VisTREncoderLayer(GradientCheckpointingLayer):
    """DETR encoder layer: position added to queries and keys only; post-norm unless `pre_norm`."""

    def __init__(self, config: VisTRConfig):
        super().__init__()
        self.pre_norm = config.pre_norm
        self.self_attn = VisTRAttention(config)
        self.self_attn_layer_norm = nn.LayerNorm(config.d_model)
        self.ffn = VisTRFeedForward(config)
        self.final_layer_norm = nn.LayerNorm(config.d_model)
        self.dropout = nn.Dropout(config.dropout)
        use_original_init(self, "xavier", (nn.Linear,))  # the original's transformer: xavier for every matrix

    def forward(
        self, hidden_states: torch.Tensor, position: torch.Tensor, attention_mask: torch.Tensor | None
    ) -> torch.Tensor:
        normed = self.self_attn_layer_norm(hidden_states) if self.pre_norm else hidden_states
        query_key = normed + position
        attended, _ = self.self_attn(query_key, query_key, normed, attention_mask)
        hidden_states = hidden_states + self.dropout(attended)
        if not self.pre_norm:
            hidden_states = self.self_attn_layer_norm(hidden_states)
        normed = self.final_layer_norm(hidden_states) if self.pre_norm else hidden_states
        hidden_states = hidden_states + self.dropout(self.ffn(normed))
        return hidden_states if self.pre_norm else self.final_layer_norm(hidden_states)


class VisTRDecoderLayer(GradientCheckpointingLayer):
    """DETR decoder layer: self-attention over queries, cross-attention to the memory, FFN."""

    def __init__(self, config: VisTRConfig):
        super().__init__()
        self.pre_norm = config.pre_norm
        self.self_attn = VisTRAttention(config)
        self.self_attn_layer_norm = nn.LayerNorm(config.d_model)
        self.encoder_attn = VisTRAttention(config)
        self.encoder_attn_layer_norm = nn.LayerNorm(config.d_model)
        self.ffn = VisTRFeedForward(config)
        self.final_layer_norm = nn.LayerNorm(config.d_model)
        self.dropout = nn.Dropout(config.dropout)
        use_original_init(self, "xavier", (nn.Linear,))

    def _residual(self, hidden_states: torch.Tensor, norm: nn.LayerNorm, block: Callable) -> torch.Tensor:
        """Apply `block` with the layer's norm placement (pre- or post-norm)."""
        if self.pre_norm:
            return hidden_states + self.dropout(block(norm(hidden_states)))
        return norm(hidden_states + self.dropout(block(hidden_states)))

    def forward(
        self,
        hidden_states: torch.Tensor,
        query_position: torch.Tensor,
        memory: torch.Tensor,
        memory_key: torch.Tensor,
        memory_attention_mask: torch.Tensor | None,
    ) -> torch.Tensor:
        """`memory_key` = memory + its position, computed once for all layers; `memory_attention_mask` additive."""

        def self_attention(x: torch.Tensor) -> torch.Tensor:
            query_key = x + query_position
            return self.self_attn(query_key, query_key, x)[0]

        def cross_attention(x: torch.Tensor) -> torch.Tensor:
            return self.encoder_attn(x + query_position, memory_key, memory, memory_attention_mask)[0]

        hidden_states = self._residual(hidden_states, self.self_attn_layer_norm, self_attention)
        hidden_states = self._residual(hidden_states, self.encoder_attn_layer_norm, cross_attention)
        return self._residual(hidden_states, self.final_layer_norm, self.ffn)


# ----------------------------------------------------------------------------------- encoder, decoder, base model


class FolderPublisher(Protocol):
    """Completes a model folder for sharing: see `VisTRPreTrainedModel.folder_publisher`."""

    def complete_saved_folder(self, folder: str | os.PathLike, config: VisTRConfig) -> None: ...

    def complete_upload(self, folder: str | os.PathLike, config: VisTRConfig, repo_id: str) -> None: ...


class VisTRPreTrainedModel(PreTrainedModel):
    config_class = VisTRConfig
    config: VisTRConfig
    base_model_prefix = "vistr"
    main_input_name = "pixel_values"
    input_modalities = ("video",)
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _no_split_modules = [r"VisTRConvBackbone", r"VisTREncoderLayer", r"VisTRDecoderLayer"]

    # What completes a folder this model saves or uploads (a model card, the video processor, the pipeline) when
    # the `vistr` package is installed: the package sets it to its publishing module. The model knows only that a
    # folder may be completed; without a publisher (remote code alone) it saves what transformers saves.
    folder_publisher: ClassVar[FolderPublisher | None] = None

    def save_pretrained(self, save_directory, *args, **kwargs):
        """transformers' `save_pretrained`, then the folder completed by the `folder_publisher`."""
        super().save_pretrained(save_directory, *args, **kwargs)
        if self.folder_publisher is not None and kwargs.get("is_main_process", True):
            self.folder_publisher.complete_saved_folder(save_directory, self.config)

    def _upload_modified_files(self, working_dir, repo_id: str, *args, **kwargs):
        """transformers' upload to the Hub (the last step of `push_to_hub` and `save_pretrained(push_to_hub=True)`),
        of a folder the `folder_publisher` completes just before, after transformers has written its template card."""
        if self.folder_publisher is not None:
            self.folder_publisher.complete_upload(working_dir, self.config, repo_id)
        return super()._upload_modified_files(working_dir, repo_id, *args, **kwargs)

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """transformers' defaults, then the original's rule where the module carries one (`use_original_init`).

        transformers' defaults miss the frozen batch norms (`DetrFrozenBatchNorm2d` and the folded ones are no
        `nn.BatchNorm2d`) and the deformable convolution: without them, the tensors of a model built on the meta
        device, or loaded without them, keep whatever memory they were given, and the model outputs NaN. The
        frozen norms get the identity, as transformers' DETR-family backbones reset their batch norms. (Matched by
        class, not by a name holding "BatchNorm": `FrozenBatchNormConv2d` is a convolution.)
        """
        super()._init_weights(module)
        if isinstance(module, DetrFrozenBatchNorm2d):
            for name, fill in _FROZEN_NORM_IDENTITY.items():
                fill(getattr(module, name))
        elif isinstance(module, DeformConv2d):  # no `nn.Conv2d`: its own rule (transformers guards it like `init`)
            module.reset_parameters()
        rule = getattr(module, ORIGINAL_INIT, None)
        if rule is None:
            return
        if rule == "zeros":
            init.zeros_(module.weight)
        elif rule.startswith("xavier"):
            init.xavier_uniform_(module.weight, gain=self.config.init_xavier_std)
        elif rule.startswith("kaiming"):
            init.kaiming_uniform_(module.weight, a=1)
        if module.bias is not None and (rule == "zeros" or rule.endswith("zero bias")):
            init.zeros_(module.bias)


class VisTREncoder(VisTRPreTrainedModel):
    """The DETR encoder over all frames' tokens at once. A model of its own (as transformers' `DetrEncoder`)
    so that `capture_outputs` records its layers' outputs and attention weights under their own keys."""

    _can_record_outputs = {"hidden_states": VisTREncoderLayer, "attentions": VisTRAttention}

    def __init__(self, config: VisTRConfig):
        super().__init__(config)
        self.layers = nn.ModuleList(VisTREncoderLayer(config) for _ in range(config.encoder_layers))
        # the original has a final encoder norm only in the pre-norm variant
        self.layernorm = nn.LayerNorm(config.d_model) if config.pre_norm else None
        # no `post_init`: `VisTRModel` initializes every weight in one pass, in the order the original's
        # seeded initialization draws them

    @capture_outputs
    def forward(
        self,
        tokens: torch.Tensor,
        position: torch.Tensor,
        attention_mask: torch.Tensor | None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> BaseModelOutput:
        """tokens, position [B, L, d]; attention_mask additive [B, 1, 1, L]. `kwargs`: the `output_*` flags."""
        for layer in self.layers:
            tokens = layer(tokens, position, attention_mask)
        if self.layernorm is not None:
            tokens = self.layernorm(tokens)
        return BaseModelOutput(last_hidden_state=tokens)


class VisTRDecoder(VisTRPreTrainedModel):
    """The DETR decoder: the queries start at zero, their positions are the learned query embeddings."""

    _can_record_outputs = {
        "hidden_states": VisTRDecoderLayer,
        "attentions": OutputRecorder(VisTRAttention, index=1, layer_name="self_attn"),
        "cross_attentions": OutputRecorder(VisTRAttention, index=1, layer_name="encoder_attn"),
    }

    def __init__(self, config: VisTRConfig):
        super().__init__(config)
        self.layers = nn.ModuleList(VisTRDecoderLayer(config) for _ in range(config.decoder_layers))
        self.layernorm = nn.LayerNorm(config.d_model)
        # no `post_init`, as in `VisTREncoder`

    @capture_outputs
    def forward(
        self,
        query_position: torch.Tensor,
        memory: torch.Tensor,
        memory_position: torch.Tensor,
        memory_attention_mask: torch.Tensor | None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> VisTRDecoderOutput:
        """Every layer's output after the shared final norm: `intermediate_hidden_states` [layers, B, Q, d]."""
        hidden = torch.zeros_like(query_position)
        memory_key = memory + memory_position  # the same keys' input in every layer
        intermediate = []
        for layer in self.layers:
            hidden = layer(hidden, query_position, memory, memory_key, memory_attention_mask)
            intermediate.append(self.layernorm(hidden))
        return VisTRDecoderOutput(
            last_hidden_state=intermediate[-1], intermediate_hidden_states=torch.stack(intermediate)
        )


class VisTRModel(VisTRPreTrainedModel):
    """Backbone, input projection, 3-D position encoding and the DETR encoder-decoder."""

    # loading the base model from a full segmentation checkpoint drops the heads quietly
    _keys_to_ignore_on_load_unexpected = [r"^(class_labels_classifier|bbox_predictor|bbox_attention|mask_head|instance_head)\."]

    def __init__(self, config: VisTRConfig):
        super().__init__(config)
        self.backbone = VisTRConvBackbone(config)
        self.input_projection = nn.Conv2d(self.backbone.channels[-1], config.d_model, kernel_size=1)
        self.position_embedding = VisTRSinePositionEmbedding(config.d_model, config.position_embedding_temperature)
        self.query_position_embeddings = nn.Embedding(config.num_queries, config.d_model)
        self.encoder = VisTREncoder(config)
        self.decoder = VisTRDecoder(config)
        self.post_init()

    def _output_flags(self, output_attentions: bool | None, output_hidden_states: bool | None) -> dict[str, bool]:
        """The encoder's and decoder's `output_*` flags, config defaults resolved here: `capture_outputs` takes
        an explicit None as False. Their outputs always as dataclasses (this forward reads them by name)."""
        config = self.config
        return {
            "output_attentions": config.output_attentions if output_attentions is None else output_attentions,
            "output_hidden_states": config.output_hidden_states if output_hidden_states is None else output_hidden_states,
            "return_dict": True,
        }

    def _check_inputs(self, pixel_values: torch.Tensor, pixel_mask: torch.Tensor | None) -> None:
        expected_frames, channels = self.config.num_frames, self.config.num_channels
        if pixel_values.dim() != 5 or pixel_values.shape[1] != expected_frames or pixel_values.shape[2] != channels:
            raise ValueError(
                f"pixel_values must have shape [batch, {expected_frames} frames, {channels}, height, width] for this "
                f"model (config.num_frames={expected_frames}), got {list(pixel_values.shape)}. Cut or repeat frames "
                "to clips of num_frames (the video processor does this), or convert the checkpoint for another "
                "frame count."
            )
        if pixel_mask is not None and pixel_mask.shape != pixel_values.shape[:2] + pixel_values.shape[3:]:
            raise ValueError(
                f"pixel_mask must have shape {list(pixel_values.shape[:2] + pixel_values.shape[3:])} "
                f"([batch, frames, height, width]), got {list(pixel_mask.shape)}"
            )

    @can_return_tuple
    def forward(
        self,
        pixel_values: torch.Tensor,
        pixel_mask: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        **layout_keys,
    ) -> VisTRModelOutput:
        r"""
        pixel_values (`torch.FloatTensor` of shape `(batch_size, num_frames, num_channels, height, width)`):
            Normalized frames, padded to a common size.
        pixel_mask (`torch.LongTensor` of shape `(batch_size, num_frames, height, width)`, *optional*):
            1 for real pixels, 0 for padding. All ones when not given.
        output_attentions (`bool`, *optional*):
            Return the encoder, decoder and cross-attention weights (needs an implementation that computes
            them, e.g. `attn_implementation="eager"`). Defaults to `config.output_attentions`.
        output_hidden_states (`bool`, *optional*):
            Return every encoder and decoder layer's input plus the final output. Defaults to
            `config.output_hidden_states`.
        return_dict (`bool`, *optional*):
            A [`VisTRModelOutput`] (default, `config.return_dict`) or a tuple of its non-None fields.
        layout_keys:
            The video processor's clip-layout keys (`model(**inputs)`), ignored; any other keyword raises.
        """
        check_layout_keys(f"{type(self).__name__}.forward", layout_keys)
        self._check_inputs(pixel_values, pixel_mask)
        flags = self._output_flags(output_attentions, output_hidden_states)
        batch, frames = pixel_values.shape[:2]
        padding_mask = (
            torch.zeros((batch, frames) + pixel_values.shape[-2:], dtype=torch.bool, device=pixel_values.device)
            if pixel_mask is None
            else ~pixel_mask.bool()
        )
        feature_maps = [f.unflatten(0, (batch, frames)) for f in self.backbone(pixel_values.flatten(0, 1))]
        last_level = feature_maps[-1]
        memory_padding_mask = downsample_padding_mask(padding_mask, last_level.shape[-2:])
        position = self.position_embedding(memory_padding_mask, last_level.dtype)

        projected = self.input_projection(last_level.flatten(0, 1)).unflatten(0, (batch, frames))
        # frame-major tokens: [B, T*h*w, d] with index t*h*w + y*w + x
        tokens = projected.permute(0, 1, 3, 4, 2).flatten(1, 3)
        token_position = position.permute(0, 1, 3, 4, 2).flatten(1, 3)
        attention_mask = padding_to_attention_mask(memory_padding_mask.flatten(1), tokens.dtype)

        encoder_outputs = self.encoder(tokens, token_position, attention_mask, **flags)
        memory = encoder_outputs.last_hidden_state
        query_position = self.query_position_embeddings.weight.unsqueeze(0).expand(batch, -1, -1)
        decoder_outputs = self.decoder(query_position, memory, token_position, attention_mask, **flags)

        return VisTRModelOutput(
            last_hidden_state=decoder_outputs.last_hidden_state,
            intermediate_hidden_states=decoder_outputs.intermediate_hidden_states,
            encoder_last_hidden_state=memory,
            feature_maps=tuple(feature_maps),
            memory_padding_mask=memory_padding_mask,
            encoder_hidden_states=encoder_outputs.hidden_states,
            decoder_hidden_states=decoder_outputs.hidden_states,
            encoder_attentions=encoder_outputs.attentions,
            decoder_attentions=decoder_outputs.attentions,
            cross_attentions=decoder_outputs.cross_attentions,
        )


# ----------------------------------------------------------------------------------- heads


class VisTRMLPPredictionHead(nn.Module):
    """Box regression MLP (d_model -> d_model -> 4), ReLU between layers."""

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int):
        super().__init__()
        dims = [input_dim] + [hidden_dim] * (num_layers - 1)
        self.layers = nn.ModuleList(VisTRLinear(a, b) for a, b in zip(dims, dims[1:] + [output_dim]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = F.relu(x)
        return x


class VisTRMHAttentionMap(nn.Module):
    """Attention maps of each query over its frame's memory (no values).

    One softmax over heads x h x w together, as the original: the maps of all heads of a query sum to 1.
    """

    def __init__(self, d_model: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.q_linear = VisTRLinear(d_model, d_model)
        self.k_linear = VisTRLinear(d_model, d_model)
        self.normalize_fact = float(d_model / num_heads) ** -0.5
        use_original_init(self, "xavier, zero bias", (nn.Linear,))

    def forward(self, queries: torch.Tensor, memory: torch.Tensor, padding_mask: torch.Tensor | None) -> torch.Tensor:
        """queries [F, n, d], memory [F, d, h, w], padding_mask [F, h, w] -> [F, n, heads, h, w]."""
        q = self.q_linear(queries)
        k = F.conv2d(memory, self.k_linear.weight[:, :, None, None], self.k_linear.bias)
        qh = q.view(q.shape[0], q.shape[1], self.num_heads, -1)
        kh = k.view(k.shape[0], self.num_heads, -1, k.shape[-2], k.shape[-1])
        weights = torch.einsum("bqnc,bnchw->bqnhw", qh * self.normalize_fact, kh)
        if padding_mask is not None:
            weights = weights.masked_fill(padding_mask[:, None, None], float("-inf"))
        return F.softmax(weights.flatten(2), dim=-1).view_as(weights)


class VisTRMaskHeadSmallConv(nn.Module):
    """Per-frame FPN mask head: memory + attention maps, refined with backbone levels 3..1, ending
    in a deformable 3x3 conv (DCNv1, no bias). Outputs `config.mask_head_channels` (d_model/16 in the
    original) at stride 4.

    Group norms have 8 groups as in the original wherever the width allows (every released width),
    gcd(8, width) for the narrow widths of small models."""

    def __init__(self, config: VisTRConfig, fpn_channels: list[int]):
        super().__init__()
        dim = config.d_model + config.num_attention_heads
        widths = [dim, *config.mask_head_widths]
        self.lay1 = nn.Conv2d(dim, dim, 3, padding=1)
        self.gn1 = nn.GroupNorm(math.gcd(8, dim), dim)
        self.lay2 = nn.Conv2d(dim, widths[1], 3, padding=1)
        self.gn2 = nn.GroupNorm(math.gcd(8, widths[1]), widths[1])
        self.lay3 = nn.Conv2d(widths[1], widths[2], 3, padding=1)
        self.gn3 = nn.GroupNorm(math.gcd(8, widths[2]), widths[2])
        self.lay4 = nn.Conv2d(widths[2], widths[3], 3, padding=1)
        self.gn4 = nn.GroupNorm(math.gcd(8, widths[3]), widths[3])
        self.conv_offset = nn.Conv2d(widths[3], 2 * 3 * 3, 1)
        self.dcn = DeformConv2d(widths[3], widths[4], 3, padding=1, bias=False)
        self.gn5 = nn.GroupNorm(math.gcd(8, widths[4]), widths[4])
        # FPN adapters for backbone levels 2, 1, 0 (strides 16, 8, 4)
        self.adapter1 = nn.Conv2d(fpn_channels[2], widths[1], 1)
        self.adapter2 = nn.Conv2d(fpn_channels[1], widths[2], 1)
        self.adapter3 = nn.Conv2d(fpn_channels[0], widths[3], 1)
        use_original_init(self, "kaiming, zero bias", (nn.Conv2d,))
        # zero offsets: the deformable conv starts as a plain 3x3 conv, as in the original
        use_original_init(self.conv_offset, "zeros", (nn.Conv2d,))

    def _first_conv(self, memory: torch.Tensor, attention_maps: torch.Tensor) -> torch.Tensor:
        """lay1 over [memory, maps of one query], for every query: [F, d, h, w], [F, n, heads, h, w] -> [F*n, dim, h, w].

        The input is the frame's memory (the same for its n queries) next to the query's attention
        maps, and a convolution is linear in its input channels: the memory's share is computed once
        per frame and added to each query's share of the maps, instead of convolving n copies of the
        memory (the original's per-query repeat).
        """
        if not _is_plain(self.lay1, nn.Conv2d):  # wrapped or hooked: call it on the concatenation
            x = torch.cat([memory.repeat_interleave(attention_maps.shape[1], dim=0), attention_maps.flatten(0, 1)], dim=1)
            return self.lay1(x)
        d = memory.shape[1]
        from_memory = F.conv2d(memory, self.lay1.weight[:, :d], self.lay1.bias, padding=self.lay1.padding)
        from_maps = F.conv2d(attention_maps.flatten(0, 1), self.lay1.weight[:, d:], None, padding=self.lay1.padding)
        return (from_memory.unsqueeze(1) + from_maps.unflatten(0, attention_maps.shape[:2])).flatten(0, 1)

    @staticmethod
    def _add_fpn(x: torch.Tensor, adapted: torch.Tensor, slots: int) -> torch.Tensor:
        """x [F*n, c, h, w] upsampled (nearest) onto the frame's adapted FPN level [F, c, H, W]."""
        frames, (height, width), (h, w) = adapted.shape[0], adapted.shape[-2:], x.shape[-2:]
        if (height, width) == (2 * h, 2 * w):
            # exactly twice the size: nearest upsampling repeats each pixel 2 x 2, so the sum is one
            # broadcast add, without materializing the upsampled x
            level = adapted.unflatten(-1, (w, 2)).unflatten(-3, (h, 2))[:, None]  # [F, 1, c, h, 2, w, 2]
            pixels = x.unflatten(0, (frames, slots))[:, :, :, :, None, :, None]  # [F, n, c, h, 1, w, 1]
            return (level + pixels).reshape(frames * slots, x.shape[1], height, width)
        x = F.interpolate(x, size=(height, width), mode="nearest")
        return (adapted.unsqueeze(1) + x.unflatten(0, (frames, slots))).flatten(0, 1)

    def forward(self, memory: torch.Tensor, attention_maps: torch.Tensor, fpns: list[torch.Tensor]) -> torch.Tensor:
        """memory [F, d, h, w], attention_maps [F, n, heads, h, w], fpns = levels (0, 1, 2) as [F, C, H, W].

        Returns [F * n, mask_head_channels, H0, W0], frame f's slot s at row `f * n + s`.
        """
        slots = attention_maps.shape[1]
        x = F.relu(self.gn1(self._first_conv(memory, attention_maps)), inplace=True)
        x = F.relu(self.gn2(self.lay2(x)), inplace=True)
        x = self._add_fpn(x, self.adapter1(fpns[2]), slots)
        x = F.relu(self.gn3(self.lay3(x)), inplace=True)
        x = self._add_fpn(x, self.adapter2(fpns[1]), slots)
        x = F.relu(self.gn4(self.lay4(x)), inplace=True)
        x = self._add_fpn(x, self.adapter3(fpns[0]), slots)
        x = self.dcn(x, self.conv_offset(x))
        return F.relu(self.gn5(x), inplace=True)


class VisTRInstanceHead(nn.Module):
    """3-D conv head over time for one instance sequence:
    [N, mask_head_channels, T, H, W] -> mask logits [N, 1, T, H, W].

    Group norms normalize over channels and all frames of the instance.
    """

    def __init__(self, config: VisTRConfig):
        super().__init__()
        hidden, groups = config.instance_head_channels, config.instance_head_groups
        self.conv1 = nn.Conv3d(config.mask_head_channels, hidden, 3, padding=2, dilation=2)
        self.norm1 = nn.GroupNorm(groups, hidden)
        self.conv2 = nn.Conv3d(hidden, hidden, 3, padding=2, dilation=2)
        self.norm2 = nn.GroupNorm(groups, hidden)
        self.conv3 = nn.Conv3d(hidden, hidden, 3, padding=2, dilation=2)
        self.norm3 = nn.GroupNorm(groups, hidden)
        self.out_conv = nn.Conv3d(hidden, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        on_cpu = x.device.type == "cpu"
        if on_cpu:  # NDHWC: oneDNN's native layout for 3-D convolutions, much faster on CPU than NCDHW
            x = x.contiguous(memory_format=torch.channels_last_3d)
        x = F.relu(self.norm1(self.conv1(x)), inplace=True)
        x = F.relu(self.norm2(self.conv2(x)), inplace=True)
        x = F.relu(self.norm3(self.conv3(x)), inplace=True)
        if not (on_cpu and _is_plain(self.out_conv, nn.Conv3d)):
            return self.out_conv(x)
        # the 1x1x1 convolution to one channel as a matrix product over the (innermost) channels
        out = F.linear(x.movedim(1, -1), self.out_conv.weight.flatten(1), self.out_conv.bias)
        return out.movedim(-1, 1)


# ----------------------------------------------------------------------------------- the full model


class VisTRForVideoInstanceSegmentation(VisTRPreTrainedModel):
    """VisTR with class, box and mask heads: segments and tracks up to `num_queries_per_frame`
    instances through a clip of `num_frames` frames."""

    def __init__(self, config: VisTRConfig):
        super().__init__(config)
        self.vistr = VisTRModel(config)
        self.class_labels_classifier = VisTRLinear(config.d_model, config.num_labels + 1)
        self.bbox_predictor = VisTRMLPPredictionHead(config.d_model, config.d_model, 4, num_layers=3)
        self.bbox_attention = VisTRMHAttentionMap(config.d_model, config.num_attention_heads)
        self.mask_head = VisTRMaskHeadSmallConv(config, self.vistr.backbone.channels)
        self.instance_head = VisTRInstanceHead(config)
        self.post_init()

    def _predict_masks(self, outputs: VisTRModelOutput, slots: torch.Tensor | None = None) -> torch.Tensor:
        """Mask logits [B, T*k, H, W] of the k slots `slots` [B, k] of each video (all n slots by default),
        frame-major like the queries: row t*k + j is slot slots[b, j] in frame t.

        All frames and instances at once: the original loops over frames, then over slots. Every slot's
        masks depend on that slot's queries only (its attention maps, per-sample group norms, its own
        3-D sequence), so a subset of slots gets exactly the masks it gets among all.
        """
        batch, frames = outputs.memory_padding_mask.shape[:2]
        h, w = outputs.memory_padding_mask.shape[-2:]
        queries = outputs.last_hidden_state.view(batch, frames, self.config.num_queries_per_frame, -1)
        if slots is not None:
            queries = queries.gather(2, slots[:, None, :, None].expand(-1, frames, -1, queries.shape[-1]))
        slot_count = queries.shape[2]
        memory = outputs.encoder_last_hidden_state.view(batch, frames, h, w, -1).permute(0, 1, 4, 2, 3).flatten(0, 1)
        padding = outputs.memory_padding_mask.flatten(0, 1)
        attention_maps = self.bbox_attention(queries.flatten(0, 1), memory, padding)
        fpns = [level.flatten(0, 1) for level in outputs.feature_maps[:3]]
        frame_masks = self.mask_head(memory, attention_maps, fpns)  # [B*T*k, c, H, W]
        # one 3-D sequence per instance: [B*k, c, T, H, W]
        sequences = frame_masks.unflatten(0, (batch, frames, slot_count)).permute(0, 2, 3, 1, 4, 5).flatten(0, 1)
        masks = self.instance_head(sequences)  # [B*k, 1, T, H, W]
        return masks.view(batch, slot_count, frames, *masks.shape[-2:]).transpose(1, 2).flatten(1, 2)

    def _matched_masks(self, outputs: VisTRModelOutput, indices: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        """[B, T*n, H, W] with the masks of the matched slots (the loss's `pair_entries` indices) and zeros elsewhere.

        The loss reads matched slots only, so training computes only those: the mask branch, most of a
        training step on CPU, then costs in proportion to the instances instead of the slots.
        """
        slots = self.config.num_queries_per_frame
        matched = [torch.unique(query % slots) for query, _ in indices]
        count = max(1, max(len(m) for m in matched))
        # pad each video's list to `count` slots; padded entries are computed but never read
        slot_index = torch.stack([torch.cat([m, m.new_zeros(count - len(m))]) for m in matched])
        partial = self._predict_masks(outputs, slot_index)
        batch, frames = outputs.memory_padding_mask.shape[:2]
        full = partial.new_zeros(batch, frames * slots, *partial.shape[-2:])
        frame = torch.arange(frames, device=partial.device)
        for video, video_slots in enumerate(matched):
            if len(video_slots):
                position = torch.arange(len(video_slots), device=partial.device)
                source = (frame[:, None] * count + position).flatten()
                target = (frame[:, None] * slots + video_slots.to(partial.device)).flatten()
                full[video, target] = partial[video, source]
        return full

    def _loss(
        self,
        outputs: VisTRModelOutput,
        logits: torch.Tensor,
        boxes: torch.Tensor,
        auxiliary_outputs: list[dict[str, torch.Tensor]] | None,
        labels: list[dict[str, torch.Tensor]],
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
        """`self.loss_function` (the loss registered for this class) and the masks it read.

        In training the mask branch runs after the matching, for the matched slots only (the loss reads no
        others); in evaluation the loss gets every slot's masks, as the caller does.
        """
        pred_masks = None

        def matched_masks(indices: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
            nonlocal pred_masks
            pred_masks = self._matched_masks(outputs, indices)
            return pred_masks

        masks = matched_masks if self.training else self._predict_masks(outputs)
        loss, loss_dict = self.loss_function(logits, boxes, masks, auxiliary_outputs, labels, self.config)
        return loss, loss_dict, masks if pred_masks is None else pred_masks

    @can_return_tuple
    def forward(
        self,
        pixel_values: torch.Tensor,
        pixel_mask: torch.Tensor | None = None,
        labels: list[dict[str, torch.Tensor]] | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        **layout_keys,
    ) -> VisTRVideoInstanceSegmentationOutput:
        r"""
        pixel_values (`torch.FloatTensor` of shape `(batch_size, num_frames, num_channels, height, width)`):
            Normalized frames, padded to a common size.
        pixel_mask (`torch.LongTensor` of shape `(batch_size, num_frames, height, width)`, *optional*):
            1 for real pixels, 0 for padding. All ones when not given.
        labels (`list[dict]`, *optional*):
            One dict per video for training: `class_labels` `[N]`, `boxes` `[N, T, 4]` (normalized cx, cy,
            w, h), `masks` `[N, T, H, W]` at the padded input size, `valid` `[N, T]` (False where the
            instance is absent). See `loss_vistr.py`. In training mode the mask branch then runs for
            the matched slots only.
        output_attentions, output_hidden_states, return_dict, layout_keys:
            See [`VisTRModel.forward`].
        """
        check_layout_keys(f"{type(self).__name__}.forward", layout_keys)
        outputs = self.vistr(
            pixel_values, pixel_mask, output_attentions, output_hidden_states, return_dict=True
        )
        logits = self.class_labels_classifier(outputs.intermediate_hidden_states)
        boxes = self.bbox_predictor(outputs.intermediate_hidden_states).sigmoid()
        auxiliary_outputs = None
        if self.config.auxiliary_loss:
            auxiliary_outputs = [{"logits": c, "pred_boxes": b} for c, b in zip(logits[:-1], boxes[:-1])]
        loss = loss_dict = None
        if labels is not None:
            loss, loss_dict, pred_masks = self._loss(outputs, logits[-1], boxes[-1], auxiliary_outputs, labels)
        else:
            pred_masks = self._predict_masks(outputs)
        return VisTRVideoInstanceSegmentationOutput(
            loss=loss,
            loss_dict=loss_dict,
            logits=logits[-1],
            pred_boxes=boxes[-1],
            pred_masks=pred_masks,
            auxiliary_outputs=auxiliary_outputs,
            last_hidden_state=outputs.last_hidden_state,
            intermediate_hidden_states=outputs.intermediate_hidden_states,
            encoder_last_hidden_state=outputs.encoder_last_hidden_state,
            encoder_hidden_states=outputs.encoder_hidden_states,
            decoder_hidden_states=outputs.decoder_hidden_states,
            encoder_attentions=outputs.encoder_attentions,
            decoder_attentions=outputs.decoder_attentions,
            cross_attentions=outputs.cross_attentions,
        )


# `PreTrainedModel.loss_function` looks the loss up by class name (`self.loss_type`), set at construction
LOSS_MAPPING[VisTRForVideoInstanceSegmentation.__name__] = ForVideoInstanceSegmentationLoss

VisTRModel.register_for_auto_class("AutoModel")
VisTRForVideoInstanceSegmentation.register_for_auto_class("AutoModelForInstanceSegmentation")


__all__ = [
    "VisTRForVideoInstanceSegmentation",
    "VisTRModel",
    "VisTRModelOutput",
    "VisTRPreTrainedModel",
    "VisTRVideoInstanceSegmentationOutput",
]
