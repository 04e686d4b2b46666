"""VisTR configuration.

Every number the original code hard-coded (24 instance-head channels, 10 queries per frame,
41 classes, batch size 1) is either a field here or derived from one, and combinations the
architecture cannot build are rejected at construction, so a bad config fails before any
weights are allocated.
"""

from __future__ import annotations

import math
import reprlib

from transformers import AutoConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec

# YouTube-VIS 2019 categories, in category-id order (ids 1..40). The original uses category ids
# directly as class indices, so index 0 is unused and the no-object class comes last.
YOUTUBE_VIS_2019_CATEGORIES = (
    "person", "giant_panda", "lizard", "parrot", "skateboard", "sedan", "ape", "dog", "snake",
    "monkey", "hand", "rabbit", "duck", "cat", "cow", "fish", "train", "horse", "turtle", "bear",
    "motorbike", "giraffe", "leopard", "fox", "deer", "owl", "surfboard", "airplane", "truck",
    "zebra", "tiger", "elephant", "snowboard", "boat", "shark", "mouse", "frog", "eagle",
    "earless_seal", "tennis_racket",
)  # fmt: skip
UNUSED_CLASS_NAME = "N/A"

# timm ResNets. The released models use resnet50/101; `resnet10t` and timm's tiny `test_resnet` (0.4M
# parameters) make models small enough to train on a CPU and ship in a repository.
SUPPORTED_BACKBONES = ("test_resnet", "resnet10t", "resnet18", "resnet34", "resnet50", "resnet101", "resnet152")

# How the ResNet normalizes: the original's frozen statistics, or trained norms for training from scratch.
BACKBONE_NORMS = ("frozen_batch_norm", "batch_norm", "group_norm")

# Written into every saved config so that a folder loads with `trust_remote_code=True` where this
# project is not installed (the code files travel with the weights, as on the Hub).
REMOTE_CODE_AUTO_MAP = {
    "AutoConfig": "configuration_vistr.VisTRConfig",
    "AutoModel": "modeling_vistr.VisTRModel",
    "AutoModelForInstanceSegmentation": "modeling_vistr.VisTRForVideoInstanceSegmentation",
}


# The type each field must have, by its annotation, and how a message names it. A bool is no number here, though
# Python counts it as one: `"num_frames": true` in a config.json is a mistake, not 1 frame.
_FIELD_TYPES = {
    "int": ((int,), "an integer"),
    "int | None": ((int, type(None)), "an integer or null"),
    "float": ((int, float), "a finite number"),
    "bool": ((bool,), "true or false"),
    "str": ((str,), "a string"),
}

# The dtypes a model may be stored and run in (`dtype` in config.json).
FLOAT_DTYPES = ("float16", "bfloat16", "float32", "float64")

# Generous bounds (the released models: 36 frames x 10 queries, d_model 384, 6 + 6 layers, ffn 2048, 41 classes).
# A config past them is a typo or a hostile file, and would allocate its weights before anything else fails.
FIELD_MAXIMA = {
    "num_channels": 64, "num_frames": 1024, "num_queries_per_frame": 1024, "d_model": 4096, "num_attention_heads": 256,
    "encoder_layers": 64, "decoder_layers": 64, "ffn_dim": 65536, "mask_head_width": 4096,
    "instance_head_channels": 1024, "num_labels": 100_000,
}  # fmt: skip
# The transformer, queries, class head and mask head's first convolution together: 4 GB in float32, about 30 times
# the released R50's (the backbone, at most a ResNet-152, comes on top).
MAX_WEIGHTS = 10**9


def config_problems(error: Exception) -> str:
    """The problems a config error lists, in one line: the lines after its heading (VisTRConfig's "- ..." list, or
    huggingface_hub's field validation), or its only line."""
    lines = [line.strip().removeprefix("- ") for line in str(error).splitlines()]
    return "; ".join(line for line in lines[1:] if line) or (lines[0] if lines else type(error).__name__)


def has_field_type(value: object, annotation: str) -> bool:
    """`value` is of the type `annotation` names (no bool for a number; numbers finite)."""
    allowed, _ = _FIELD_TYPES[annotation]
    if isinstance(value, bool) and bool not in allowed:
        return False
    return isinstance(value, allowed) and not (isinstance(value, float) and not math.isfinite(value))


def _label_map_problem(id2label: object) -> str | None:
    """Why `id2label` is not a map of every class index 0..n-1 to a name (JSON keys are strings), or None."""
    example = 'e.g. {"0": "N/A", "1": "person"}'
    if not isinstance(id2label, dict):
        return f"id2label={reprlib.repr(id2label)} must map class indices to names, {example}"
    keys = [key if isinstance(key, int) and not isinstance(key, bool) else str(key) for key in id2label]
    if sorted(int(key) if str(key).isdigit() else -1 for key in keys) != list(range(len(keys))):
        return f"id2label keys {reprlib.repr(keys)} must be the class indices 0 to {len(keys) - 1}, {example}"
    if not all(isinstance(name, str) for name in id2label.values()):
        return f"id2label names {reprlib.repr(list(id2label.values()))} must be strings, {example}"
    return None


def _raise_if_any(problems: list[str]) -> None:
    if problems:
        raise ValueError("Invalid VisTRConfig:\n- " + "\n- ".join(problems))


def youtube_vis_2019_id2label(num_labels: int = 41) -> dict[int, str]:
    """Class index -> name with the original's convention (index = category id, 0 unused)."""
    names = (UNUSED_CLASS_NAME,) + YOUTUBE_VIS_2019_CATEGORIES
    return {i: names[i] if i < len(names) else f"class_{i}" for i in range(num_labels)}


class VisTRConfig(PreTrainedConfig):
    r"""
    Configuration of a VisTR model (End-to-End Video Instance Segmentation with Transformers).

    Defaults reproduce the released VisTR-R50 model (YouTube-VIS 2019, 36 frames).

    Args:
        backbone (`str`): timm ResNet name, loaded through transformers' backbone API.
        dilation (`bool`): replace the stride of the last ResNet stage by dilation (DC5).
        backbone_config (`dict` or `PreTrainedConfig`, *optional*): built from `backbone` and
            `dilation` when not given.
        num_frames (`int`): frames per clip `T`; the model always runs clips of exactly this length.
        num_queries_per_frame (`int`): instance slots `n` per frame; the model has `T * n` queries.
        d_model (`int`): transformer width (384 in the paper). Must be a multiple of 48: the 3-D
            position encoding splits it in three even parts and the mask head narrows it to
            `d_model / 16` channels. Each mask-head group norm has gcd(8, its width) groups: 8 for
            every released width, fewer for narrow models (e.g. 4 groups of 3 for d_model 192).
        backbone_norm (`str`): normalization in the ResNet. `"frozen_batch_norm"` (the original's, for
            pretrained or converted weights: fixed statistics), `"batch_norm"` (trained, batch
            statistics) or `"group_norm"` (trained, 32 groups or fewer; independent of batch size).
            Training from scratch needs a trained one: frozen norms of a fresh ResNet are identities.
        backbone_frozen_stages (`int`): leading backbone stages whose weights are not trained, counted as
            in mmdetection: 1 = the stem and layer1 (the original's), 0 = the stem only, -1 = none
            (training from scratch), up to 4.
        num_attention_heads, encoder_layers, decoder_layers, ffn_dim, dropout, activation_function,
        pre_norm: the DETR transformer.
        mask_head_width (`int`, *optional*): the width the per-frame mask head narrows from: its FPN
            stages have `mask_head_width` / 2, / 4 and / 8 channels and it ends with / 16. `None` (the
            original) is `d_model`; a small model can give its masks more channels than its
            transformer has. A multiple of 16.
        instance_head_channels (`int`): width of the 3-D instance head (12 in the original).
        instance_head_groups (`int`): its group-norm groups (4 in the original).
        position_embedding_temperature (`float`): of the sine encoding.
        class_cost, bbox_cost, giou_cost: Hungarian matcher weights.
        bbox_loss_coefficient, giou_loss_coefficient, mask_loss_coefficient, dice_loss_coefficient,
        eos_coefficient, focal_alpha, focal_gamma: loss weights.
        absent_frame_mask_loss (`bool`): also train a matched slot's mask to be empty in the frames where
            its instance is absent. The original (`False`) leaves those masks without a loss, so a model
            draws "ghost" masks there, which cost video IoU (docs/training-from-scratch.md).
        auxiliary_loss (`bool`): also supervise every intermediate decoder layer.
        init_std, init_xavier_std: initialisation of freshly created weights.
    """

    model_type = "vistr"
    sub_configs_defaults = {
        "backbone_config": SubConfigSpec(config_class=AutoConfig, model_type="timm_backbone"),
    }
    attribute_map = {
        "hidden_size": "d_model",
        "num_hidden_layers": "encoder_layers",
    }

    backbone: str = "resnet50"
    dilation: bool = False
    backbone_config: dict | PreTrainedConfig | None = None
    backbone_norm: str = "frozen_batch_norm"
    backbone_frozen_stages: int = 1
    num_channels: int = 3
    num_frames: int = 36
    num_queries_per_frame: int = 10
    d_model: int = 384
    num_attention_heads: int = 8
    encoder_layers: int = 6
    decoder_layers: int = 6
    ffn_dim: int = 2048
    dropout: float = 0.1
    activation_function: str = "relu"
    pre_norm: bool = False
    mask_head_width: int | None = None
    instance_head_channels: int = 12
    instance_head_groups: int = 4
    position_embedding_temperature: float = 10000.0
    auxiliary_loss: bool = True
    class_cost: float = 1.0
    bbox_cost: float = 5.0
    giou_cost: float = 2.0
    bbox_loss_coefficient: float = 5.0
    giou_loss_coefficient: float = 2.0
    mask_loss_coefficient: float = 1.0
    dice_loss_coefficient: float = 1.0
    eos_coefficient: float = 0.1
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0
    absent_frame_mask_loss: bool = False
    init_std: float = 0.02
    init_xavier_std: float = 1.0
    is_encoder_decoder: bool = True

    def __post_init__(self, **kwargs):
        _raise_if_any(self._type_problems(kwargs.get("torch_dtype")))
        if self.id2label is None and kwargs.get("num_labels") is None:
            self.id2label = youtube_vis_2019_id2label()
        if self.backbone_config is None:
            self.backbone_config = self._timm_backbone_config()
        super().__post_init__(**kwargs)
        # transformers 5 derives `label2id` only where it makes up `id2label` from `num_labels`; a config given
        # `id2label` (every VisTR config) would be saved with `label2id: null`
        self.label2id = {label: index for index, label in self.id2label.items()}
        self.auto_map = {**REMOTE_CODE_AUTO_MAP, **(getattr(self, "auto_map", None) or {})}
        self._check_architecture()

    def _type_problems(self, legacy_dtype: object = None) -> list[str]:
        """Each field of the wrong type (a config.json edited by hand: "5" for 5, a list for id2label, "int8" for the
        dtype: `legacy_dtype` is the older `torch_dtype` key), named before the arithmetic on it fails with a message
        about the arithmetic."""
        problems = [
            f"{name}={reprlib.repr(getattr(self, name))} must be {_FIELD_TYPES[annotation][1]}"
            for name, annotation in VisTRConfig.__annotations__.items()
            if annotation in _FIELD_TYPES and not has_field_type(getattr(self, name), annotation)
        ]
        if self.id2label is not None and (label_problem := _label_map_problem(self.id2label)) is not None:
            problems.append(label_problem)
        dtype = self.dtype if self.dtype is not None else legacy_dtype
        if dtype is not None and str(dtype).removeprefix("torch.") not in FLOAT_DTYPES:
            problems.append(f"dtype={reprlib.repr(dtype)} must be one of the floating-point dtypes {FLOAT_DTYPES}")
        return problems

    def _timm_backbone_config(self) -> dict:
        """The DETR port's way: a timm ResNet returning all four stages through the backbone API."""
        config = {
            "model_type": "timm_backbone",
            "backbone": self.backbone,
            "num_channels": self.num_channels,
            "features_only": True,
            "use_pretrained_backbone": False,
            "out_indices": [1, 2, 3, 4],
        }
        if self.dilation:
            config["output_stride"] = 16
        return config

    @property
    def num_queries(self) -> int:
        """Total number of instance queries, frame-major: query `t * n + slot`."""
        return self.num_frames * self.num_queries_per_frame

    @property
    def mask_head_widths(self) -> tuple[int, int, int, int]:
        """Channels of the mask head's stages at strides 16, 8 and 4 and of its output (192, 96, 48, 24
        for the original at d_model 384)."""
        width = self.mask_head_width or self.d_model
        return width // 2, width // 4, width // 8, width // 16

    @property
    def mask_head_channels(self) -> int:
        """Channels of the per-frame mask features fed to the 3-D head (24 for d_model 384)."""
        return self.mask_head_widths[-1]

    @property
    def approximate_weight_count(self) -> int:
        """The weights of the transformer, the queries, the class head and the mask head's first convolution (the
        parts whose size the config sets freely), known before any is allocated."""
        d, ffn = self.d_model, self.ffn_dim
        layers = self.encoder_layers * (4 * d * d + 2 * d * ffn) + self.decoder_layers * (8 * d * d + 2 * d * ffn)
        return layers + (self.num_queries + self.num_labels) * d + 9 * (d + self.num_attention_heads) ** 2

    def _size_problems(self) -> list[str]:
        """Sizes past any VisTR model's (`FIELD_MAXIMA`, `MAX_WEIGHTS`): refused before the weights are allocated."""
        problems = [f"{name}={getattr(self, name)} is over the limit of {maximum}"
                    for name, maximum in FIELD_MAXIMA.items() if (getattr(self, name) or 0) > maximum]  # fmt: skip
        if not problems and self.approximate_weight_count > MAX_WEIGHTS:
            problems.append(
                f"d_model, ffn_dim, the layers, queries and classes make about {self.approximate_weight_count:.2g} "
                f"weights, over the limit of {MAX_WEIGHTS:.0g}"
            )
        return problems

    def _check_architecture(self) -> None:
        problems = self._size_problems()
        if self.backbone not in SUPPORTED_BACKBONES:
            problems.append(f"backbone={self.backbone!r} is not a ResNet; use one of {SUPPORTED_BACKBONES}")
        if self.d_model <= 0 or self.d_model % 48:
            problems.append(
                f"d_model={self.d_model} must be a positive multiple of 48 (three equal even parts for "
                "the time/y/x position encoding, and d_model/16 channels at the end of the mask head)"
            )
        if self.num_attention_heads <= 0 or self.d_model % self.num_attention_heads:
            problems.append(f"d_model={self.d_model} is not divisible by num_attention_heads={self.num_attention_heads}")
        if self.backbone_norm not in BACKBONE_NORMS:
            problems.append(f"backbone_norm={self.backbone_norm!r} must be one of {BACKBONE_NORMS}")
        if not -1 <= self.backbone_frozen_stages <= 4:
            problems.append(
                f"backbone_frozen_stages={self.backbone_frozen_stages} must be between -1 (train everything) and 4"
            )
        if self.mask_head_width is not None and (self.mask_head_width <= 0 or self.mask_head_width % 16):
            problems.append(
                f"mask_head_width={self.mask_head_width} must be a positive multiple of 16 (or None: d_model)"
            )
        if self.instance_head_groups <= 0 or self.instance_head_channels % self.instance_head_groups:
            problems.append(
                f"instance_head_channels={self.instance_head_channels} is not divisible by "
                f"instance_head_groups={self.instance_head_groups}"
            )
        for name in ("num_frames", "num_queries_per_frame", "encoder_layers", "decoder_layers", "ffn_dim"):
            if getattr(self, name) < 1:
                problems.append(f"{name}={getattr(self, name)} must be at least 1")
        if self.activation_function not in ("relu", "gelu"):
            problems.append(f"activation_function={self.activation_function!r} must be 'relu' or 'gelu'")
        if not 0.0 <= self.dropout < 1.0:
            problems.append(f"dropout={self.dropout} must be in [0, 1)")
        if self.num_labels < 1:
            problems.append("the model needs at least one class (num_labels / id2label)")
        _raise_if_any(problems)


VisTRConfig.register_for_auto_class()

__all__ = ["VisTRConfig", "config_problems", "has_field_type", "youtube_vis_2019_id2label"]
