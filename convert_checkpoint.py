"""Convert an original VisTR checkpoint (`vistr_r50.pth`, `vistr_r101.pth`, ...) to a transformers folder.

The configuration is read off the tensors (ResNet depth, widths, layer and query counts, classes,
pre-norm) and the training `args` stored beside them. Every original key must land on exactly one
model key; anything left over on either side stops the conversion with the list, because a
silently dropped tensor would give a model that loads but is not the paper's.

    python convert_checkpoint.py --checkpoint vistr_r50.pth --output vistr-r50
"""

from __future__ import annotations

import argparse
import os
import re
import zipfile
from collections.abc import Callable, Iterable, Mapping
from functools import partial
from pathlib import Path

import torch
from vistr.configuration_vistr import (
    FLOAT_DTYPES,
    VisTRConfig,
    config_problems,
    has_field_type,
    youtube_vis_2019_id2label,
)
from vistr.tools.model_card import build_model_card, file_sha256, push_to_hub, save_model_card, save_model_folder
from vistr.modeling_vistr import VisTRForVideoInstanceSegmentation
from vistr.tools.outputs import Outputs, foreign_model_folder, positive_int, shown


class ConversionError(ValueError):
    """A checkpoint that cannot be converted; the message says why and what to do."""


# Original name -> our name, applied in order to every key (first match wins).
# The packed attention projections (`in_proj_*`) are split separately.
_KEY_RULES: list[tuple[str, str]] = [
    (r"^vistr\.backbone\.0\.body\.(.+)$", r"vistr.backbone.model.\1"),
    (r"^vistr\.input_proj\.(weight|bias)$", r"vistr.input_projection.\1"),
    (r"^vistr\.query_embed\.weight$", r"vistr.query_position_embeddings.weight"),
    (r"^vistr\.transformer\.encoder\.norm\.(weight|bias)$", r"vistr.encoder.layernorm.\1"),
    (r"^vistr\.transformer\.decoder\.norm\.(weight|bias)$", r"vistr.decoder.layernorm.\1"),
    (r"^vistr\.transformer\.(encoder|decoder)\.layers\.(\d+)\.self_attn\.out_proj\.(weight|bias)$",
     r"vistr.\1.layers.\2.self_attn.out_proj.\3"),
    (r"^vistr\.transformer\.decoder\.layers\.(\d+)\.multihead_attn\.out_proj\.(weight|bias)$",
     r"vistr.decoder.layers.\1.encoder_attn.out_proj.\2"),
    (r"^vistr\.transformer\.(encoder|decoder)\.layers\.(\d+)\.linear1\.(weight|bias)$", r"vistr.\1.layers.\2.ffn.fc1.\3"),
    (r"^vistr\.transformer\.(encoder|decoder)\.layers\.(\d+)\.linear2\.(weight|bias)$", r"vistr.\1.layers.\2.ffn.fc2.\3"),
    (r"^vistr\.transformer\.(encoder|decoder)\.layers\.(\d+)\.norm1\.(weight|bias)$",
     r"vistr.\1.layers.\2.self_attn_layer_norm.\3"),
    (r"^vistr\.transformer\.encoder\.layers\.(\d+)\.norm2\.(weight|bias)$", r"vistr.encoder.layers.\1.final_layer_norm.\2"),
    (r"^vistr\.transformer\.decoder\.layers\.(\d+)\.norm2\.(weight|bias)$",
     r"vistr.decoder.layers.\1.encoder_attn_layer_norm.\2"),
    (r"^vistr\.transformer\.decoder\.layers\.(\d+)\.norm3\.(weight|bias)$", r"vistr.decoder.layers.\1.final_layer_norm.\2"),
    (r"^vistr\.class_embed\.(weight|bias)$", r"class_labels_classifier.\1"),
    (r"^vistr\.bbox_embed\.layers\.(\d+)\.(weight|bias)$", r"bbox_predictor.layers.\1.\2"),
    (r"^bbox_attention\.(q_linear|k_linear)\.(weight|bias)$", r"bbox_attention.\1.\2"),
    (r"^mask_head\.(lay[1-4]|gn[1-5]|conv_offset|adapter[1-3])\.(weight|bias)$", r"mask_head.\1.\2"),
    (r"^mask_head\.dcn\.weight$", r"mask_head.dcn.weight"),
    (r"^insmask_head\.0\.(weight|bias)$", r"instance_head.conv1.\1"),
    (r"^insmask_head\.1\.(weight|bias)$", r"instance_head.norm1.\1"),
    (r"^insmask_head\.3\.(weight|bias)$", r"instance_head.conv2.\1"),
    (r"^insmask_head\.4\.(weight|bias)$", r"instance_head.norm2.\1"),
    (r"^insmask_head\.6\.(weight|bias)$", r"instance_head.conv3.\1"),
    (r"^insmask_head\.7\.(weight|bias)$", r"instance_head.norm3.\1"),
    (r"^insmask_head\.9\.(weight|bias)$", r"instance_head.out_conv.\1"),
]  # fmt: skip
_PACKED_ATTENTION = re.compile(
    r"^vistr\.transformer\.(encoder|decoder)\.layers\.(\d+)\.(self_attn|multihead_attn)\.in_proj_(weight|bias)$"
)
# Buffers the original may carry that hold no model state (FrozenBatchNorm2d drops them too).
_IGNORED = re.compile(r"\.num_batches_tracked$")
# What a checkpoint may unpack to, and its weights stand for: the released VisTR-R101 with its optimizer state is
# under 1 GB. Past it the file is damaged or crafted (a deflated record or an expanded tensor of a few MB can stand
# for any size), and converting it would allocate that much.
MAX_CHECKPOINT_BYTES = 4 * 2**30
# The stored training args `infer_config` reads, with the types the original's argparse gives them.
_STORED_ARGS = {
    "num_frames": "int", "backbone": "str", "dilation": "bool", "aux_loss": "bool", "dropout": "float",
    "set_cost_class": "float", "set_cost_bbox": "float", "set_cost_giou": "float", "bbox_loss_coef": "float",
    "giou_loss_coef": "float", "mask_loss_coef": "float", "dice_loss_coef": "float", "eos_coef": "float",
}  # fmt: skip

# ResNet stage block counts -> timm name; basic-block ResNets have no `conv3`.
_RESNET_DEPTHS = {
    ((3, 4, 6, 3), True): "resnet50",
    ((3, 4, 23, 3), True): "resnet101",
    ((3, 8, 36, 3), True): "resnet152",
    ((2, 2, 2, 2), False): "resnet18",
    ((3, 4, 6, 3), False): "resnet34",
}


def load_original_checkpoint(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], argparse.Namespace | None]:
    """Load `{'model': state_dict, 'args': Namespace, ...}` (or a bare state dict) without running
    arbitrary pickled code: only tensors, containers and `argparse.Namespace` are allowed."""
    path = Path(path)
    if not path.is_file():
        raise ConversionError(f"{path}: no such file. Pass the original VisTR .pth file with --checkpoint.")
    _check_unpacked_size(path)
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for damaged or foreign files
        raise ConversionError(_unreadable_reason(path, error)) from None
    if isinstance(checkpoint, Mapping) and isinstance(checkpoint.get("model"), Mapping):
        state, args = dict(checkpoint["model"]), checkpoint.get("args")
    elif isinstance(checkpoint, Mapping) and checkpoint and all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        state, args = dict(checkpoint), None
    else:
        raise ConversionError(
            f"{path}: not a VisTR checkpoint (expected a dict with a 'model' state dict, or a state dict; "
            f"found {type(checkpoint).__name__} with keys {list(checkpoint)[:5] if isinstance(checkpoint, Mapping) else '-'})."
        )
    if args is not None and not isinstance(args, argparse.Namespace):
        args = None
    check_tensors(state, path)
    _check_stored_args(args, path)
    return state, args


def _check_stored_args(args: argparse.Namespace | None, path: Path) -> None:
    """The stored training args `infer_config` reads hold the types the original gave them: another (a hand-edited
    "36") would fail in its arithmetic, or become another setting without a word."""
    wrong = [f"{name}={getattr(args, name)!r:.40}" for name, annotation in _STORED_ARGS.items()
             if hasattr(args, name) and not has_field_type(getattr(args, name), annotation)]  # fmt: skip
    if wrong:
        raise ConversionError(f"{path}: its stored training args hold values of the wrong type ({', '.join(wrong)}); "
                              "the file is damaged: use the original checkpoint")  # fmt: skip


def _check_unpacked_size(path: Path) -> None:
    """Refuse a zip checkpoint (torch.save's format) whose records unpack to more than `MAX_CHECKPOINT_BYTES`, before
    `torch.load` allocates them: torch also reads deflated records, which a small file can inflate to any size."""
    if not zipfile.is_zipfile(path):
        return  # the legacy format, or no checkpoint at all: torch.load says which
    with zipfile.ZipFile(path) as archive:
        unpacked = sum(record.file_size for record in archive.infolist())
    if unpacked > MAX_CHECKPOINT_BYTES:
        raise ConversionError(f"{path} unpacks to {unpacked / 2**30:.1f} GiB, over the limit of "
                              f"{MAX_CHECKPOINT_BYTES / 2**30:.0f} GiB for a VisTR checkpoint; the file is damaged or "
                              "not a checkpoint: use the original one")  # fmt: skip


def _unreadable_reason(path: Path, error: Exception) -> str:
    """One line for a file torch cannot load safely. Torch's own message is not passed on: it advises
    `weights_only=False`, which would run whatever code the file carries."""
    refused = re.search(r"GLOBAL (\S+)", str(error))
    if refused:
        return (f"{path} holds Python objects other than tensors ({refused.group(1)}), which are refused because "
                "loading them could run code; pass an original VisTR checkpoint (tensors and training args only)")
    return (f"{path}: not a readable PyTorch checkpoint ({type(error).__name__}); the file may be truncated (download "
            "it again and compare its size) or not a .pth file at all")


def _first(names: list[str]) -> str:
    return ", ".join(names[:3]) + (" ..." if len(names) > 3 else "")


def check_tensors(state: Mapping[str, object], path: str | os.PathLike) -> None:
    """Refuse, before any weight is copied or converted, what would give a wrong model or unbounded work: values
    that are no tensors, weights stored in a dtype that is not floating point (`.float()` would silently make other
    weights of them), tensors standing for more than `MAX_CHECKPOINT_BYTES` (an expanded view of a few bytes can
    stand for gigabytes, which `.float()` would allocate) and NaN or infinite values (the model would load and then
    write NaN scores for every video)."""
    weights = {name: value for name, value in state.items() if not _IGNORED.search(name)}
    foreign = [f"{name} ({type(value).__name__})" for name, value in weights.items()
               if not isinstance(value, torch.Tensor)]  # fmt: skip
    if foreign:
        raise ConversionError(f"{path}: {len(foreign)} entries of its state dict are no tensors ({_first(foreign)}); "
                              "the file is not a VisTR checkpoint: use the original one")  # fmt: skip
    not_float = [f"{name} ({dtype})" for name, t in weights.items()  # `.float()` would make other numbers of them
                 if (dtype := str(t.dtype).removeprefix("torch.")) not in FLOAT_DTYPES]  # fmt: skip
    if not_float:
        raise ConversionError(f"{path}: {len(not_float)} tensors are not floating point ({_first(not_float)}), so they "
                              "are not VisTR's weights: use the original checkpoint")  # fmt: skip
    values = sum(t.numel() * t.element_size() for t in weights.values())
    if values > MAX_CHECKPOINT_BYTES:
        name, largest = max(weights.items(), key=lambda item: item[1].numel())
        raise ConversionError(
            f"{path}: its tensors stand for {values / 2**30:.1f} GiB of values, over the limit of "
            f"{MAX_CHECKPOINT_BYTES / 2**30:.0f} GiB ({name} alone is {list(largest.shape)}, stored in "
            f"{largest.untyped_storage().nbytes()} bytes); the file is damaged or crafted: use the original checkpoint"
        )
    broken = [name for name, tensor in weights.items() if not torch.isfinite(tensor).all()]
    if broken:
        raise ConversionError(f"{path}: {len(broken)} tensors hold NaN or infinite values (first: {', '.join(broken[:3])}); "
                              "the file is damaged or from a diverged run: use another checkpoint")  # fmt: skip


def check_is_vistr(state: Mapping[str, torch.Tensor], path: str) -> None:
    """Recognise DETR files and early VisTR mask heads, which would otherwise fail with a long key list."""
    keys = set(state)
    has_detr_mask_head = any(k.startswith(("mask_head.lay5", "mask_head.out_lay")) for k in keys)
    if any(k.startswith("detr.") for k in keys) or (has_detr_mask_head and not any(k.startswith("vistr.") for k in keys)):
        raise ConversionError(
            f"{path} is a DETR (COCO) checkpoint, not VisTR. It cannot be converted into a video model; to start "
            "training from it use `train_accelerate.py --init-from` instead."
        )
    if not any(k.startswith("vistr.") for k in keys):
        queries = state.get("query_embed.weight")
        if queries is not None and queries.shape[0] == 100:
            raise ConversionError(
                f"{path} is a DETR checkpoint (100 object queries, no 'vistr.' keys), not VisTR. It cannot be "
                "converted into a video model; to start training from it use `train_accelerate.py --init-from`."
            )
        raise ConversionError(
            f"{path} is not a VisTR segmentation checkpoint: it has no 'vistr.*' keys (first keys: "
            f"{sorted(keys)[:5]}). Only checkpoints of the original VisTRsegm model (trained with --masks) convert."
        )
    if has_detr_mask_head or "mask_head.dcn.weight" not in keys or not any(k.startswith("insmask_head.") for k in keys):
        raise ConversionError(
            f"{path} has a VisTR mask head of an older code version (DETR's mask_head.lay5/out_lay, no deformable "
            "conv 'mask_head.dcn' or 3-D 'insmask_head'), which does not match the released VisTR code. Use the "
            "checkpoint released with the code (commit 445c9e4 or later)."
        )


def _block_counts(state: Mapping[str, torch.Tensor]) -> tuple[tuple[int, ...], bool]:
    prefix = "vistr.backbone.0.body."
    counts = []
    for stage in range(1, 5):
        blocks = {int(m.group(1)) for k in state if (m := re.match(rf"{re.escape(prefix)}layer{stage}\.(\d+)\.", k))}
        counts.append(len(blocks))
    bottleneck = f"{prefix}layer1.0.conv3.weight" in state
    return tuple(counts), bottleneck


def _layer_count(state: Mapping[str, torch.Tensor], part: str) -> int:
    return len({int(m.group(1)) for k in state if (m := re.match(rf"vistr\.transformer\.{part}\.layers\.(\d+)\.", k))})


def _frame_count(num_queries: int, args: argparse.Namespace | None, num_frames: int | None, path: str) -> int:
    stored = getattr(args, "num_frames", None)
    if num_frames is not None and stored is not None and num_frames != stored:
        raise ConversionError(
            f"--num-frames {num_frames} contradicts the checkpoint's own args.num_frames={stored}: the query "
            "embeddings and the position encoding were trained for that many frames. Drop --num-frames."
        )
    frames = num_frames or stored
    if frames is None:
        raise ConversionError(
            f"{path} stores no training args, so the frame count is unknown ({num_queries} queries = frames x "
            "queries per frame). Pass --num-frames (36 for the released models)."
        )
    if num_queries % frames:
        raise ConversionError(f"{num_queries} queries do not split into {frames} frames; check --num-frames.")
    return frames


def infer_config(
    state: Mapping[str, torch.Tensor],
    args: argparse.Namespace | None,
    path: str,
    num_frames: int | None = None,
    dilation: bool | None = None,
) -> VisTRConfig:
    """Build the config from the tensors, and from `args` for what tensors cannot tell. A missing tensor, or sizes
    no VisTR model has (the config's own checks and limits), are one ConversionError line."""
    counts, bottleneck = _block_counts(state)
    backbone = _RESNET_DEPTHS.get((counts, bottleneck))
    if backbone is None:
        raise ConversionError(f"{path}: unknown ResNet layout (blocks per stage {counts}, bottleneck={bottleneck}).")
    stored_backbone = getattr(args, "backbone", None)
    if stored_backbone is not None and stored_backbone != backbone:
        raise ConversionError(f"{path}: args.backbone={stored_backbone!r} but the tensors are a {backbone}.")
    d_model = _size(state, "vistr.input_proj.weight", 0, path)
    num_heads = _size(state, "mask_head.lay1.weight", 1, path) - d_model  # lay1 sees memory + one map per head
    num_queries = _size(state, "vistr.query_embed.weight", 0, path)
    frames = _frame_count(num_queries, args, num_frames, path)
    num_labels = _size(state, "vistr.class_embed.weight", 0, path) - 1
    ffn_dim = _size(state, "vistr.transformer.encoder.layers.0.linear1.weight", 0, path)
    instance_head_channels = _size(state, "insmask_head.0.weight", 0, path)
    dilation = bool(getattr(args, "dilation", False)) if dilation is None else dilation
    try:  # the config's own checks, which also bound every size before any weight is allocated
        return VisTRConfig(
            backbone=backbone,
            dilation=dilation,
            num_frames=frames,
            num_queries_per_frame=num_queries // frames,
            d_model=d_model,
            num_attention_heads=num_heads,
            encoder_layers=_layer_count(state, "encoder"),
            decoder_layers=_layer_count(state, "decoder"),
            ffn_dim=ffn_dim,
            dropout=float(getattr(args, "dropout", 0.1)),
            pre_norm="vistr.transformer.encoder.norm.weight" in state,
            instance_head_channels=instance_head_channels,
            auxiliary_loss=bool(getattr(args, "aux_loss", True)),
            class_cost=float(getattr(args, "set_cost_class", 1)),
            bbox_cost=float(getattr(args, "set_cost_bbox", 5)),
            giou_cost=float(getattr(args, "set_cost_giou", 2)),
            bbox_loss_coefficient=float(getattr(args, "bbox_loss_coef", 5)),
            giou_loss_coefficient=float(getattr(args, "giou_loss_coef", 2)),
            mask_loss_coefficient=float(getattr(args, "mask_loss_coef", 1)),
            dice_loss_coefficient=float(getattr(args, "dice_loss_coef", 1)),
            eos_coefficient=float(getattr(args, "eos_coef", 0.1)),
            id2label=youtube_vis_2019_id2label(num_labels),
        )
    except ValueError as error:  # VisTRConfig's: every problem, one per line
        problems = config_problems(error)
        raise ConversionError(f"{path}: its tensors describe a model VisTR cannot build: {problems}") from None


def _size(state: Mapping[str, torch.Tensor], key: str, axis: int, path: str) -> int:
    """`state[key].shape[axis]`, or one line saying the checkpoint lacks the tensor the config is read from."""
    if key not in state or state[key].dim() <= axis:
        raise ConversionError(f"{path}: {key} is missing or has fewer than {axis + 1} dimensions, so the checkpoint is "
                              "incomplete or not VisTR's: use the released one")  # fmt: skip
    return state[key].shape[axis]


def _split_packed(name: str, tensor: torch.Tensor) -> dict[str, torch.Tensor]:
    """`in_proj_weight` [3d, d] / `in_proj_bias` [3d] -> q/k/v projections (the order torch packs them)."""
    part, layer, attention, kind = _PACKED_ATTENTION.match(name).groups()
    ours = "self_attn" if attention == "self_attn" else "encoder_attn"
    q, k, v = tensor.chunk(3, dim=0)
    return {f"vistr.{part}.layers.{layer}.{ours}.{p}_proj.{kind}": t for p, t in zip("qkv", (q, k, v))}


def _rename(name: str) -> str | None:
    for pattern, replacement in _KEY_RULES:
        if re.match(pattern, name):
            return re.sub(pattern, replacement, name)
    return None


def map_state_dict(state: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Original state dict -> ours (float32). Returns the mapped dict and the original keys no rule took."""
    mapped, unmapped = {}, []
    for name, tensor in state.items():
        if _IGNORED.search(name):
            continue
        if _PACKED_ATTENTION.match(name):
            mapped.update({k: t.float() for k, t in _split_packed(name, tensor).items()})
        elif (ours := _rename(name)) is not None:
            mapped[ours] = tensor.float()
        else:
            unmapped.append(name)
    return mapped, unmapped


def check_complete(model: torch.nn.Module, mapped: Mapping[str, torch.Tensor], unmapped: list[str], path: str) -> None:
    """Every original key mapped, every model tensor filled, every shape equal: or one error listing all."""
    expected = model.state_dict()
    unfilled = sorted(set(expected) - set(mapped))
    unexpected = sorted(set(mapped) - set(expected))
    wrong_shapes = [
        f"{k}: checkpoint {list(mapped[k].shape)} vs model {list(expected[k].shape)}"
        for k in sorted(set(mapped) & set(expected))
        if mapped[k].shape != expected[k].shape
    ]
    sections = [
        ("original keys with no mapping", unmapped),
        ("mapped keys the model does not have", unexpected),
        ("model keys the checkpoint does not fill", unfilled),
        ("shape mismatches", wrong_shapes),
    ]
    problems = [f"{title} ({len(items)}):\n    " + "\n    ".join(items) for title, items in sections if items]
    if problems:
        raise ConversionError(f"{path} does not match the VisTR architecture inferred from it:\n" + "\n".join(problems))


def convert_state_dict(
    state: Mapping[str, torch.Tensor],
    args: argparse.Namespace | None,
    source: str,
    num_frames: int | None = None,
    dilation: bool | None = None,
) -> VisTRForVideoInstanceSegmentation:
    """Original state dict (+ args) -> model with every weight filled (eval mode). `source` names it in errors."""
    check_is_vistr(state, source)
    config = infer_config(state, args, source, num_frames=num_frames, dilation=dilation)
    mapped, unmapped = map_state_dict(state)
    model = VisTRForVideoInstanceSegmentation(config)
    check_complete(model, mapped, unmapped, source)
    model.load_state_dict(mapped, strict=True)
    return model.eval()


def convert(
    checkpoint: str | os.PathLike, num_frames: int | None = None, dilation: bool | None = None
) -> VisTRForVideoInstanceSegmentation:
    """Original checkpoint file -> `VisTRForVideoInstanceSegmentation` with every weight filled (eval mode)."""
    state, args = load_original_checkpoint(checkpoint)
    return convert_state_dict(state, args, str(checkpoint), num_frames=num_frames, dilation=dilation)


_DETR_TOP_LEVEL = ("backbone.", "transformer.", "input_proj.", "query_embed.", "class_embed.", "bbox_embed.")


def initialization_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Weights to start training from, in our key names: a VisTR .pth, or a DETR (COCO) .pth such as the
    authors' 384-d pretraining file, whose `detr.`-prefixed or bare transformer keys are read as VisTR's.

    Unlike `convert`, nothing has to be complete: the caller loads what fits (a DETR file has no VisTR
    mask head, and its class and query embeddings have other shapes) and reports the rest.
    """
    state, _ = load_original_checkpoint(path)
    return initialization_weights(state, path)


def initialization_weights(state: Mapping[str, torch.Tensor], path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """`initialization_state_dict` of a checkpoint already loaded (`load_original_checkpoint`)."""
    renamed = {}
    for name, tensor in state.items():
        name = name.removeprefix("detr.")
        if name.startswith(_DETR_TOP_LEVEL):
            name = "vistr." + name
        renamed[name] = tensor
    mapped, unmapped = map_state_dict(renamed)
    if not mapped:
        raise ConversionError(f"{path}: none of its keys is a VisTR or DETR weight (first keys: {sorted(state)[:5]}).")
    return mapped


def write_folder_atomically(
    output: str | os.PathLike, overwrite: bool, fill: Callable[[Path], None], inputs: Iterable[str | os.PathLike] = ()
) -> Path:
    """Build the folder next to `output` with `fill`, then rename it into place.

    An existing non-empty folder is replaced only with `overwrite`, only if it is a model folder this project
    wrote (`foreign_model_folder`), never if it is or holds one of `inputs` (the checkpoint), and only once the
    new one is complete, so a failed run never leaves a half-written model where a good one was.
    """
    with Outputs(inputs) as outputs:  # the checks (UsageError) come before `fill` does any work
        fill(outputs.folder(output, "--output", replace_unless=foreign_model_folder, overwrite=overwrite,
                            if_not_empty="pass --overwrite to replace it, or choose another --output"))
    return Path(output).resolve()


def main(argv: list[str] | None = None) -> None:
    """`python convert_checkpoint.py`: fails as `vistr convert` does (one `error:` line, exit code 2 for a bad
    --output, 1 for a failure during the work; VISTR_DEBUG=1 shows the traceback)."""
    from vistr.tools.cli import debug_requested, run_reporting_errors

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    run_reporting_errors(partial(run, args), debug_requested(args))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, help="original VisTR .pth file")
    parser.add_argument("--output", required=True, help="folder to write (weights, configs, processor, code)")
    parser.add_argument("--num-frames", type=positive_int, default=None, help="frames per clip, for files without args")
    parser.add_argument("--dilation", action="store_true", default=None, help="DC5 backbone, for files without args")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an --output model folder this project wrote (never another folder)")
    parser.add_argument("--push-to-hub", metavar="REPO", help="also upload the folder to this Hub repo")


def run(args: argparse.Namespace) -> None:
    """`vistr convert`: --output is checked (and staged) first, so no conversion runs for a path it cannot write."""
    model = None

    def fill(folder: Path) -> None:
        nonlocal model
        model = _convert_into(args, folder)

    output = write_folder_atomically(args.output, args.overwrite, fill, inputs=[args.checkpoint])
    c = model.config
    print(
        f"Converted {shown(args.checkpoint)} -> {shown(output)}\n"
        f"  {c.backbone}{' DC5' if c.dilation else ''}, d_model {c.d_model}, {c.encoder_layers}+{c.decoder_layers} "
        f"layers, {c.num_frames} frames x {c.num_queries_per_frame} queries, {c.num_labels} classes + no-object"
    )
    if args.push_to_hub:
        print(f"  uploaded: {push_to_hub(output, args.push_to_hub)}")


def _convert_into(args: argparse.Namespace, folder: Path) -> VisTRForVideoInstanceSegmentation:
    model = convert(args.checkpoint, num_frames=args.num_frames, dilation=args.dilation)
    card = build_model_card(
        model.config, name=args.push_to_hub or shown(Path(args.output).name), datasets=["youtube_vis"],
        provenance=(
            f"Converted with `convert_checkpoint.py` from the original VisTR checkpoint `{Path(args.checkpoint).name}` "
            f"(SHA-256 `{file_sha256(args.checkpoint)}`); outputs equal the original implementation's "
            "(float64 parity tests against golden data of the original code)."
        ),
    )  # fmt: skip

    save_model_folder(model, folder)
    save_model_card(folder, card)
    return model


if __name__ == "__main__":
    main()
