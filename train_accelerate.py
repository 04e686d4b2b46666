"""Train or fine-tune VisTR on YouTube-VIS-layout data with accelerate.

    accelerate launch train_accelerate.py --data ytvis_2019/train --init-from vistr-r50 --output-dir runs/r50-ft
    accelerate launch train_accelerate.py --data ytvis_2019/train --init-from 384_coco_r50.pth --output-dir runs/r50

The --init-from model (a converted folder, a Hub id, an original VisTR .pth) decides the architecture and
the processor; a DETR .pth holds no VisTR architecture, so the options (default: the released R50) describe it.

One GPU, several (DDP, FSDP, DeepSpeed: `accelerate config`), or the CPU; bf16/fp16 through
`--mixed-precision` or the accelerate config. The defaults are the original recipe: AdamW (backbone
lr 1e-5, rest 1e-4, weight decay 1e-4), StepLR, gradient clipping 0.1, one clip per device. Training
is resumable exactly (`--resume-from-checkpoint`), evaluates on a held-out split of the videos with
the official YouTube-VIS metrics, logs to tensorboard, draws the loss curve, and ends with a model
folder (weights, config, processor, code, model card) that loads anywhere.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import math
import os
import shlex
import shutil
import sys
from collections.abc import Mapping
from functools import partial
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.data_loader import prepare_data_loader
from accelerate.utils import DataLoaderConfiguration, ProjectConfiguration, set_seed
from PIL import Image, ImageDraw
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers.utils import CONFIG_NAME
from vistr.configuration_vistr import VisTRConfig
from vistr.image_processing_vistr import VisTRVideoProcessor, processor_for_model
from vistr.tools.model_card import build_model_card, file_sha256, push_to_hub, save_model_card, save_model_folder
from vistr.modeling_vistr import VisTRForVideoInstanceSegmentation
from vistr.pipeline_vistr import VideoSegmenter
from vistr.tools.backbone_pretraining import BoxClassifier, pretrain_backbone
from vistr.tools.cli import debug_requested, run_reporting_errors
from vistr.tools.evaluation_youtube_vis import score_results
from vistr.tools.model_source import (
    ARCHITECTURE_FIELDS,
    build_config,
    check_mostly_loaded,
    classes_differ,
    load_fitting_weights,
    read_config_file,
    read_model_source,
)
from vistr.tools.outputs import (
    Outputs,
    UsageError,
    finite_or_none,
    foreign_model_folder,
    non_negative_int,
    positive_int,
    replace_folder,
)
from vistr.tools.training_data import AugmentationOptions, TrainTransform, VisTRClipDataset, VisTRClipStream, collate_fn
from vistr.tools.data_sources import open_training_data

LOGGER_NAME = "vistr.train"  # not __name__: run as a script, that is "__main__"
logger = get_logger(LOGGER_NAME)

STATE_FILE = "training_state.json"


# ------------------------------------------------------------------------------------------------- options

# VisTRConfig fields the command line sets, with the config's own defaults (the released R50 model).
MODEL_OPTIONS = (
    ("backbone", str, "timm ResNet"),
    ("backbone_norm", str, "frozen_batch_norm (the original, for pretrained weights), batch_norm or group_norm"),
    ("backbone_frozen_stages", int, "1: stem and layer1 not trained (the original); -1: train all (from scratch)"),
    ("num_frames", int, "frames per clip"),
    ("num_queries_per_frame", int, "instance slots per frame"),
    ("d_model", int, "transformer width, a multiple of 48"),
    ("num_attention_heads", int, "attention heads"),
    ("encoder_layers", int, "transformer encoder layers"),
    ("decoder_layers", int, "transformer decoder layers"),
    ("ffn_dim", int, "feed-forward width"),
    ("dropout", float, "transformer dropout"),
    ("mask_head_width", int, "width the mask head narrows from (/2 ... /16 channels; default d_model)"),
    ("instance_head_channels", int, "width of the 3-D instance head"),
    ("mask_loss_coefficient", float, "weight of the mask focal loss (raise it to favour sharper masks)"),
    ("dice_loss_coefficient", float, "weight of the mask dice loss"),
)
# VisTRConfig switches the command line sets (--name / --no-name).
SWITCH_OPTIONS = (
    ("pre_norm", "pre-norm transformer layers (steadier from scratch)"),
    ("dilation", "DC5: last ResNet stage dilated, stride 16 features"),
    ("absent_frame_mask_loss", "train masks to be empty where their instance is absent (the original: no loss there)"),
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    data = parser.add_argument_group("data")
    data.add_argument("--data", "--data-root", dest="data", required=True, metavar="SOURCE",
                      help="a YouTube-VIS folder (JPEGImages/ + annotations.json), a parquet file written by "
                           "save_parquet, or a dataset datasets.load_dataset opens (a local folder or a Hub id)")
    data.add_argument("--annotations", help="a folder's annotation JSON (default: SOURCE/annotations.json)")
    data.add_argument("--dataset-split", default="train", help="the split of a load_dataset source to train on")
    data.add_argument("--streaming", action="store_true", help="stream the source instead of loading it whole")
    data.add_argument("--validation-fraction", type=float, default=0.1, help="videos held out for evaluation")
    data.add_argument("--train-size", type=int, default=300, help="final shortest edge of training clips")
    data.add_argument("--train-max-size", type=int, default=540, help="final longest edge of training clips")
    data.add_argument("--scales", type=int, nargs="+", help="first multi-scale resize choices (default: the original's)")
    data.add_argument("--max-size", type=int, default=800, help="longest edge after the first resize")
    data.add_argument("--crop-scales", type=int, nargs="+", help="resize choices before the random crop")
    data.add_argument("--crop-min-size", type=int, default=384, help="smallest random crop side")
    data.add_argument("--crop-max-size", type=int, default=600, help="largest random crop side")
    data.add_argument("--num-workers", type=int, default=0)

    model = parser.add_argument_group(
        "model", "The --init-from model (or --config) decides the architecture and the processor; each option "
                 "below overrides one field of it (default: the source's value, else the released R50's)."
    )  # fmt: skip
    model.add_argument("--init-from", help="a model folder, a Hub id, or an original VisTR/DETR .pth to start from")
    model.add_argument("--config", help="a VisTR config.json describing the model to train from scratch")
    model.add_argument("--allow-partial-init", action="store_true",
                       help="train even when --init-from fills less than half of the model's weights")
    for name, kind, help_text in MODEL_OPTIONS:
        model.add_argument("--" + name.replace("_", "-"), type=kind, help=f"{help_text} ({getattr(VisTRConfig, name)})")
    for name, help_text in SWITCH_OPTIONS:
        model.add_argument("--" + name.replace("_", "-"), action=argparse.BooleanOptionalAction, help=help_text)
    model.add_argument("--activation-checkpointing", action="store_true", help="recompute layers in backward")

    optim = parser.add_argument_group("optimization")
    optim.add_argument("--epochs", type=int, default=18)
    optim.add_argument("--max-steps", type=int, help="stop after this many optimizer steps")
    optim.add_argument("--lr", type=float, default=1e-4)
    optim.add_argument("--lr-backbone", type=float, default=1e-5)
    optim.add_argument("--weight-decay", type=float, default=1e-4)
    optim.add_argument("--lr-drop", type=int, default=12, help="epochs between StepLR drops (x0.1)")
    optim.add_argument("--warmup-steps", type=int, default=0, help="linear learning-rate warmup, in optimizer steps")
    optim.add_argument("--clip-max-norm", type=float, default=0.1)
    optim.add_argument("--batch-size", type=int, default=1, help="clips per device")
    optim.add_argument("--gradient-accumulation-steps", type=int, default=1)
    optim.add_argument("--mixed-precision", choices=["no", "fp16", "bf16"], help="default: the accelerate config")
    optim.add_argument("--seed", type=int, default=42)
    optim.add_argument("--backbone-pretraining-steps", type=non_negative_int, default=0,
                       help="from scratch: first train the backbone this many steps to classify the ground-truth "
                            "boxes (tools/backbone_pretraining.py), then VisTR")  # fmt: skip
    optim.add_argument("--backbone-pretraining-lr", type=float, default=1e-3, help="learning rate of that stage")

    run = parser.add_argument_group("run")
    run.add_argument("--output-dir", required=True)
    run.add_argument("--checkpointing-steps", type=int, default=1000, help="save a resumable state every N steps")
    run.add_argument("--checkpoints-total-limit", type=positive_int,
                     help="keep only the newest N checkpoints (default: all)")
    run.add_argument("--resume-from-checkpoint", help="a checkpoint folder, or 'latest'")
    run.add_argument("--eval-every-epochs", type=int, default=1)
    run.add_argument("--logging-steps", type=int, default=10)
    run.add_argument("--report-to", default="tensorboard", help="accelerate tracker, or 'none'")
    run.add_argument("--push-to-hub", metavar="REPO", help="upload the final model folder to this Hub repo")
    run.add_argument("--debug", action="store_true", help=argparse.SUPPRESS)
    return parser


def model_overrides(args: argparse.Namespace) -> dict[str, object]:
    """The model fields given on the command line (None: not given, the source's value stays)."""
    names = [name for name, _, _ in MODEL_OPTIONS] + [name for name, _ in SWITCH_OPTIONS]
    return {name: getattr(args, name) for name in names if getattr(args, name) is not None}


def model_config(
    args: argparse.Namespace, category_names: Mapping[int, str], base: VisTRConfig | None = None
) -> tuple[VisTRConfig, list[str]]:
    """`base` (the source's architecture; the defaults where None) with the command line's overrides, and the
    data's classes: category ids used as indices (0 unused unless a category has id 0). Also what the
    overrides changed in `base`."""
    id2label = {index: category_names.get(index, "N/A") for index in range(max(category_names) + 1)}
    try:
        return build_config(base, model_overrides(args), id2label)
    except ValueError as error:  # the config lists its problems one per line, in its field names
        raise UsageError(f"the model options do not build a VisTR model: {as_options(error)}") from None


def as_options(error: ValueError) -> str:
    """A config's multi-line problem list as one line, each `field=value` written as the option `--field value`."""
    problems = [line.removeprefix("- ") for line in str(error).splitlines()[1:]] or [str(error)]
    message = "; ".join(problems)
    for name in [name for name, _, _ in MODEL_OPTIONS] + [name for name, _ in SWITCH_OPTIONS]:
        message = message.replace(f"{name}=", f"--{name.replace('_', '-')} ")
    return message


def initialize_no_object_prior(model: VisTRForVideoInstanceSegmentation, object_fraction: float) -> None:
    """Start the classifier at the data's prior: P(no object) = 1 - object_fraction, the rest uniform.

    RetinaNet's and Deformable DETR's initialisation for a from-scratch detector: without it the first
    thousands of steps only learn that most slots are empty.
    """
    classifier = model.class_labels_classifier
    classes = classifier.out_features - 1
    with torch.no_grad():
        classifier.bias.fill_(math.log(object_fraction / classes))
        classifier.bias[-1] = math.log(1.0 - object_fraction)


def object_fraction(instances_per_video: float, slots_per_frame: int) -> float:
    """Share of instance slots that hold an object: the data's instances per video over the model's slots."""
    return min(0.9, max(0.01, instances_per_video / slots_per_frame))


def augmentation_options(args: argparse.Namespace) -> AugmentationOptions:
    """The original's augmentation with the sizes of the command line (smaller ones for small models)."""
    sizes = {"scales": args.scales, "crop_scales": args.crop_scales}
    return AugmentationOptions(
        max_size=args.max_size, crop_min_size=args.crop_min_size, crop_max_size=args.crop_max_size,
        final_scales=(args.train_size,), final_max_size=args.train_max_size, eval_scale=args.train_size,
        eval_max_size=args.train_max_size, **{name: tuple(value) for name, value in sizes.items() if value},
    )  # fmt: skip


# ------------------------------------------------------------------------------------------------- model


def build_optimizer(model: torch.nn.Module, args: argparse.Namespace) -> torch.optim.Optimizer:
    """AdamW with the backbone at its own (lower) learning rate, as the original."""
    backbone, rest = [], []
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            (backbone if ".backbone." in f".{name}" else rest).append(parameter)
    groups = [{"params": rest, "lr": args.lr}, {"params": backbone, "lr": args.lr_backbone}]
    return torch.optim.AdamW(groups, lr=args.lr, weight_decay=args.weight_decay)


def learning_rate_schedule(args: argparse.Namespace, steps_per_epoch: int):
    """Factor of the learning rate after `step` optimizer steps: linear warmup, then the original's StepLR
    (x0.1 every `lr_drop` epochs)."""

    def factor(step: int) -> float:
        warmup = min(1.0, (step + 1) / args.warmup_steps) if args.warmup_steps > 0 else 1.0
        return warmup * 0.1 ** ((step // max(1, steps_per_epoch)) // args.lr_drop)

    return factor


# ------------------------------------------------------------------------------------------------- evaluation


@torch.no_grad()
def evaluate_model(model, processor: VisTRVideoProcessor, rows, annotations: Mapping, disable_progress: bool) -> dict:
    """Segment every held-out video like `vistr segment` and score it like `vistr evaluate`."""
    segmenter = VideoSegmenter(model.eval(), processor)
    results = []
    for row in tqdm(rows, desc="evaluating", unit="video", disable=disable_progress):
        results.extend(processor.to_youtube_vis_results([segmenter(row["frames"])["instances"]], [row["video_id"]]))
    model.train()
    return score_results(annotations, results)


# ------------------------------------------------------------------------------------------------- checkpoints


def save_checkpoint(
    accelerator: Accelerator, output_dir: Path, step: int, epoch: int, history: list[dict], model, processor,
    keep: int | None = None,
) -> None:
    """`accelerator.save_state` into a temporary folder, renamed into place once complete.

    The folder is also a complete model folder (config, processor and the code for `trust_remote_code`, as
    `save_model_folder` writes it), to evaluate, package or share a run while it trains. That rewrites the
    weights file `save_state` wrote with the same tensors, which `load_state` reads back when resuming."""
    final = output_dir / "checkpoints" / f"step-{step:08d}"
    staging = final.with_name(final.name + ".tmp")  # one name every process agrees on (save_state writes from all)
    if accelerator.is_main_process and staging.exists():
        shutil.rmtree(staging)  # left by a run that was killed while saving: ours, never complete
    accelerator.wait_for_everyone()
    try:
        accelerator.save_state(str(staging))
        if accelerator.is_main_process:
            state = finite_or_none({"step": step, "epoch": epoch, "history": history})  # a diverged loss: null
            (staging / STATE_FILE).write_text(json.dumps(state, allow_nan=False))
            save_model_folder(accelerator.unwrap_model(model), staging, processor)
            replace_folder(staging, final)  # the same step saved again replaces the old copy only once complete
    except OSError as error:
        shutil.rmtree(staging, ignore_errors=True)
        raise CheckpointError(f"cannot save checkpoint {final.name} in {final.parent} ({error.strerror or error}); "
                              "free space or fix the folder's permissions (--checkpoints-total-limit keeps fewer), "
                              "then resume from the last complete checkpoint") from None  # fmt: skip
    if accelerator.is_main_process and keep is not None:
        remove_old_checkpoints(output_dir, keep)
    accelerator.wait_for_everyone()


def remove_old_checkpoints(output_dir: Path, keep: int) -> None:
    """Delete all but the newest `keep` complete checkpoints: only folders this trainer wrote (step-N holding
    its state file), never anything else in the folder."""
    ours = [path for path in sorted((output_dir / "checkpoints").glob("step-*[0-9]")) if (path / STATE_FILE).is_file()]
    for path in ours[:-keep]:
        shutil.rmtree(path)


class CheckpointError(ValueError):
    """A checkpoint that cannot be written or resumed; the message names it and the fix."""


def check_resumable(path: Path, config: VisTRConfig) -> dict:
    """The checkpoint's training state, once its model is the one this run builds: a resume with other model
    options (or from another run's folder) would fail deep inside `load_state`, or load the wrong weights."""
    try:
        state = json.loads((path / STATE_FILE).read_text())
        saved = json.loads((path / CONFIG_NAME).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CheckpointError(f"{path} is not a complete checkpoint of this trainer ({error}); resume from another "
                              "step-N folder in the run's checkpoints/") from None  # fmt: skip
    differences = [f"{name} {there} there, {here} here" for name, there, here in _model_differences(saved, config)]
    if differences:
        raise CheckpointError(f"{path} holds another model ({'; '.join(differences)}); resume with the options and "
                              "data of the run that wrote it")  # fmt: skip
    if not isinstance(state, dict) or not all(isinstance(state.get(key), int) for key in ("step", "epoch")):
        raise CheckpointError(f"{path / STATE_FILE} is damaged (no step and epoch); resume from another checkpoint")
    return state


def _model_differences(saved: Mapping, config: VisTRConfig) -> list[tuple[str, str, str]]:
    """(field, saved value, this run's value) for each model field (and the classes) that differ, compared as JSON
    (a saved config's keys are strings)."""
    current = config.to_dict()
    compared = [(name, json.dumps(saved.get(name), sort_keys=True), json.dumps(current.get(name), sort_keys=True))
                for name in (*ARCHITECTURE_FIELDS, "id2label")]  # fmt: skip
    return [(name, there, here) for name, there, here in compared if there != here]


def load_failure(error: Exception) -> str:
    """Why a checkpoint did not load, in one line. Torch's message for a file its safe loader refuses is not
    passed on: it advises `weights_only=False`, which would run whatever code the file carries."""
    if "weights_only" in str(error):
        return "a file in it is damaged or holds objects other than tensors"
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def latest_checkpoint(output_dir: Path) -> Path:
    found = sorted((output_dir / "checkpoints").glob("step-*[0-9]"))
    if not found:
        raise FileNotFoundError(f"no checkpoint in {output_dir / 'checkpoints'} to resume from")
    return found[-1]


# ------------------------------------------------------------------------------------------------- pictures


def plot_loss_curve(history: list[dict], path: Path, size: tuple[int, int] = (800, 400)) -> None:
    """Training loss against step as a PNG (PIL only), so a run can be judged at a glance: every step's loss
    (light) and their running mean over a fiftieth of the run (dark)."""
    width, height = size
    margin = 50
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    points = [(entry["step"], entry["loss"]) for entry in history if entry["loss"] is not None and math.isfinite(entry["loss"])]
    draw.rectangle([margin, margin // 2, width - margin // 2, height - margin], outline="black")
    if len(points) >= 2:
        steps, losses = zip(*points)
        low, high = min(losses), max(losses)
        span = (high - low) or 1.0

        def to_pixel(step: float, loss: float) -> tuple[float, float]:
            x = margin + (step - steps[0]) / ((steps[-1] - steps[0]) or 1) * (width - 1.5 * margin)
            y = height - margin - (loss - low) / span * (height - 1.5 * margin)
            return x, y

        draw.line([to_pixel(*point) for point in points], fill=(174, 199, 232), width=1)
        window = max(1, len(points) // 50)  # per-step losses are noisy: the trend is their running mean
        totals = [0.0, *itertools.accumulate(losses)]  # prefix sums: one pass however long the run
        trend = [(steps[i], (totals[i + 1] - totals[max(0, i + 1 - window)]) / min(i + 1, window))
                 for i in range(len(points))]  # fmt: skip
        draw.line([to_pixel(*point) for point in trend], fill=(31, 119, 180), width=2)
        draw.text((5, margin // 2), f"{high:.3g}", fill="black")
        draw.text((5, height - margin - 10), f"{low:.3g}", fill="black")
        draw.text((margin, height - margin + 5), f"step {steps[0]}", fill="black")
        draw.text((width - 2 * margin, height - margin + 5), f"step {steps[-1]}", fill="black")
    draw.text((width // 2 - 40, 5), "training loss", fill="black")
    staging = path.with_name(path.name + ".tmp")
    image.save(staging, format="PNG")
    os.replace(staging, path)


# ------------------------------------------------------------------------------------------------- training


class Run:
    """Everything one training run holds, so the loop below stays readable."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.output_dir = Path(args.output_dir)
        self.accelerator = Accelerator(
            gradient_accumulation_steps=args.gradient_accumulation_steps,
            mixed_precision=args.mixed_precision,
            log_with=None if args.report_to == "none" else args.report_to,
            project_config=ProjectConfiguration(project_dir=str(self.output_dir), logging_dir=str(self.output_dir / "logs")),
            dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
            step_scheduler_with_optimizer=False,
        )
        check_world_size(self.accelerator.num_processes)
        set_seed(args.seed)
        self.data = open_training_data(args.data, args.annotations, streaming=args.streaming, split=args.dataset_split)
        split = self.data.split(args.validation_fraction, seed=args.seed)
        self.validation_rows, self.validation_truth = split.validation, split.validation_truth
        self.train_lengths = split.train_lengths
        self.source = read_model_source(args.init_from, args.num_frames) if args.init_from else None
        self.config, self.model = self._build_model(self.data.categories)
        if args.activation_checkpointing:
            self.model.activation_checkpointing_enable()
        self.processor = processor_for_model(self.config, self._source_processor())
        self.clips = self._clips(split.train, TrainTransform(augmentation_options(args)))
        self.step, self.epoch, self.history, self.pretraining_history = 0, 0, [], []

    def _clips(self, rows, transform: TrainTransform) -> VisTRClipDataset | VisTRClipStream:
        """The training clips: item i of epoch e is the same clip, augmented from (seed, e, i), from any source;
        a stream deals its items out to the processes itself."""
        num_frames, seed = self.config.num_frames, self.args.seed
        if not self.data.streaming:
            return VisTRClipDataset(rows, num_frames, transform, seed=seed)
        accelerator = self.accelerator
        return VisTRClipStream(rows, self.train_lengths, num_frames, transform, seed, rank=accelerator.process_index,
                               world_size=accelerator.num_processes, batch_size=self.args.batch_size)  # fmt: skip

    def _clip_loader(self, seed: int) -> DataLoader:
        """This process's batches of the clips, ready for the loop (on its device, closing the accumulation
        window at the end of an epoch). The sampler has its own generator: creating an iterator (as resuming
        does) must not draw from the global RNG, which dropout uses."""
        args = self.args
        if isinstance(self.clips, VisTRClipStream):  # already this process's share: accelerate must not split it
            loader = DataLoader(self.clips, batch_size=args.batch_size, collate_fn=collate_fn,
                                num_workers=args.num_workers)  # fmt: skip
            return prepare_data_loader(loader, self.accelerator.device, num_processes=1, process_index=0)
        loader = DataLoader(self.clips, batch_size=args.batch_size, shuffle=True, collate_fn=collate_fn,
                            num_workers=args.num_workers, generator=torch.Generator().manual_seed(seed))  # fmt: skip
        return self.accelerator.prepare(loader)

    def _build_model(self, categories: Mapping[int, str]) -> tuple[VisTRConfig, VisTRForVideoInstanceSegmentation]:
        """The architecture of --config or the source, with the options' overrides (each reported) and the
        data's classes; the source's weights where they fit (reported, refused when mostly missing)."""
        args, source = self.args, self.source
        base = read_config_file(args.config) if args.config else (source.config if source else None)
        config, changes = model_config(args, categories, base)
        for change in changes:
            logger.warning(f"option overrides the {'--config' if args.config else '--init-from'} model: {change}")
        model = VisTRForVideoInstanceSegmentation(config)
        if source is None:
            initialize_no_object_prior(model, object_fraction(self.data.instances_per_video,
                                                              config.num_queries_per_frame))
            return config, model
        drop_class_head = classes_differ(source.config, config)
        if drop_class_head:
            logger.warning(f"the data's {config.num_labels} classes are not the {source.config.num_labels} of "
                           f"{source.name}: the class head starts fresh")  # fmt: skip
        report = load_fitting_weights(model, source.weights, drop_class_head)
        logger.warning(report.summary(args.init_from))
        for line in report.details():
            logger.warning(f"  {line}")
        check_mostly_loaded(report, args.init_from, args.allow_partial_init)
        return config, model

    def _source_processor(self) -> VisTRVideoProcessor:
        """The source's processor (its inference settings: resize, test-time flips, score weighting), or one
        that resizes as the training clips are sized."""
        if self.source is not None and self.source.processor is not None:
            return self.source.processor
        return VisTRVideoProcessor(size={"shortest_edge": self.args.train_size, "longest_edge": self.args.train_max_size})

    def prepare(self) -> None:
        """Optimizer and schedule of the VisTR steps; model, loader and both through accelerate."""
        optimizer = build_optimizer(self.model, self.args)
        self.model, self.optimizer = self.accelerator.prepare(self.model, optimizer)
        self.loader = self._clip_loader(self.args.seed)
        # accelerate closes the accumulation window at the end of each epoch: the last step may take fewer batches
        self.steps_per_epoch = math.ceil(len(self.loader) / self.args.gradient_accumulation_steps)
        schedule = learning_rate_schedule(self.args, self.steps_per_epoch)
        self.scheduler = self.accelerator.prepare(torch.optim.lr_scheduler.LambdaLR(self.optimizer, schedule))
        self._log_layout()

    def _log_layout(self) -> None:
        """World size, per-device and effective batch: what one optimizer step sees."""
        args, accelerator = self.args, self.accelerator
        effective = args.batch_size * accelerator.num_processes * args.gradient_accumulation_steps
        logger.info(f"{accelerator.num_processes} process(es) on {accelerator.device.type}: {args.batch_size} clip(s) "
                    f"per process x {accelerator.num_processes} process(es) x {args.gradient_accumulation_steps} "
                    f"accumulated = {effective} clip(s) per optimizer step; {len(self.loader)} batches and "
                    f"{self.steps_per_epoch} optimizer steps per epoch")  # fmt: skip

    def pretrain_backbone(self) -> None:
        """Stage 1 from scratch: the backbone learns to classify the ground-truth boxes (see
        tools/backbone_pretraining.py for why); its weights stay in the model, the classifier is dropped."""
        args, accelerator = self.args, self.accelerator
        classifier = BoxClassifier(self.model.vistr.backbone, self.config.num_labels)
        optimizer = torch.optim.AdamW(classifier.parameters(), lr=args.backbone_pretraining_lr,
                                      weight_decay=args.weight_decay)  # fmt: skip
        classifier, optimizer = accelerator.prepare(classifier, optimizer)
        loader = self._clip_loader(args.seed + 1)
        progress = tqdm(total=args.backbone_pretraining_steps, desc="backbone pre-training", unit="step",
                        disable=not accelerator.is_local_main_process)  # fmt: skip

        def on_step(entry: dict) -> None:
            progress.update()
            progress.set_postfix(loss=f"{entry['loss']:.3f}", accuracy=f"{entry['accuracy']:.2f}")
            if entry["step"] % args.logging_steps == 0:
                accelerator.log({f"backbone_pretraining/{k}": entry[k] for k in ("loss", "accuracy")}, step=entry["step"])

        self.pretraining_history = pretrain_backbone(classifier, loader, optimizer, args.backbone_pretraining_steps,
                                                     accelerator, args.clip_max_norm, on_step)  # fmt: skip
        progress.close()
        accelerator.free_memory()  # the stage's wrappers go: checkpoints hold the VisTR model and optimizer only

    def resume(self, checkpoint: str) -> int:
        """Restore model, optimizer, scheduler, RNGs and position; returns the batches to skip this epoch."""
        path = latest_checkpoint(self.output_dir) if checkpoint == "latest" else Path(checkpoint)
        state = check_resumable(path, self.config)
        try:
            self.accelerator.load_state(str(path))
        except Exception as error:  # missing files or tensors, damaged ones: torch and accelerate raise many types
            raise CheckpointError(f"{path} cannot be resumed ({load_failure(error)}); resume from another "
                                  "checkpoint") from None  # fmt: skip
        self.step, self.epoch, self.history = state["step"], state["epoch"], state.get("history", [])
        return (self.step - self.epoch * self.steps_per_epoch) * self.args.gradient_accumulation_steps

    def train_step(self, batch: dict) -> dict[str, float] | None:
        """Forward, backward, clip and step (when the accumulation window closes); the logged terms."""
        with self.accelerator.accumulate(self.model):
            outputs = self.model(pixel_values=batch["pixel_values"], pixel_mask=batch["pixel_mask"], labels=batch["labels"])
            self.accelerator.backward(outputs.loss)
            if self.accelerator.sync_gradients and self.args.clip_max_norm > 0:
                self.accelerator.clip_grad_norm_(self.model.parameters(), self.args.clip_max_norm)
            self.optimizer.step()
            self.optimizer.zero_grad()
        if not self.accelerator.sync_gradients:
            return None
        self.scheduler.step()
        self.step += 1
        terms = {"loss": outputs.loss.detach()} | {k: v.detach() for k, v in outputs.loss_dict.items()}
        return {name: self.accelerator.reduce(value.float(), reduction="mean").item() for name, value in terms.items()}

    def finished(self) -> bool:
        return self.args.max_steps is not None and self.step >= self.args.max_steps

    def run_epoch(self, skip_batches: int) -> None:
        self.clips.set_epoch(self.epoch)
        self.loader.set_epoch(self.epoch)
        loader = self.loader
        if isinstance(self.clips, VisTRClipStream):
            self.clips.resume_at(self.epoch, skip_batches)  # skipped without making their clips
        elif skip_batches:
            loader = self.accelerator.skip_first_batches(self.loader, skip_batches)
        progress = tqdm(loader, desc=f"epoch {self.epoch}", unit="batch", disable=not self.accelerator.is_local_main_process)
        for batch in progress:
            logged = self.train_step(batch)
            if logged is None:
                continue
            self.history.append({"step": self.step, "epoch": self.epoch, "loss": logged["loss"]})
            progress.set_postfix(loss=f"{logged['loss']:.3f}")
            if self.step % self.args.logging_steps == 0:
                self.accelerator.log(logged | {"lr": self.scheduler.get_last_lr()[0]}, step=self.step)
            if self.step % self.args.checkpointing_steps == 0:
                self.save_checkpoint()
            if self.finished():
                return
        self.epoch += 1

    def save_checkpoint(self) -> None:
        save_checkpoint(self.accelerator, self.output_dir, self.step, self.epoch, self.history, self.model,
                        self.processor, keep=self.args.checkpoints_total_limit)  # fmt: skip

    def evaluate(self) -> dict[str, float]:
        """Held-out metrics, computed by the main process while the others wait."""
        metrics = {}
        if self.accelerator.is_main_process:
            model = self.accelerator.unwrap_model(self.model)
            metrics = evaluate_model(model, self.processor, self.validation_rows, self.validation_truth,
                                     disable_progress=False)  # fmt: skip
            self.accelerator.log({f"eval/{k}": v for k, v in metrics.items()}, step=self.step)
            shown = ", ".join(f"{name} {value:.4f}" for name, value in metrics.items())
            tqdm.write(f"evaluation after step {self.step} (epoch {self.epoch}): {shown}")
        self.accelerator.wait_for_everyone()
        return metrics

    def save_final(self, metrics: dict[str, float] | None) -> Path:
        """The model folder with its processor, code and card, written atomically (main process)."""
        final = self.output_dir / "model"
        if not self.accelerator.is_main_process:
            return final
        model = self.accelerator.unwrap_model(self.model)
        with Outputs(inputs=run_inputs(self.args)) as outputs:
            staging = outputs.folder(final, "--output-dir model folder", replace_unless=foreign_model_folder)
            save_model_folder(model, staging, self.processor)
            save_model_card(staging, build_model_card(
                model.config, name=self.args.push_to_hub or final.name, provenance=self._provenance(),
                datasets=None if Path(self.args.data).exists() else self.args.data,  # a Hub dataset's id, not a path
                metrics=metrics, metrics_split=f"{len(self.validation_rows)} held-out videos of the training data",
                base_model=self.source.name if self.source is not None and self.source.is_hub_model else None,
            ))  # fmt: skip
            plot_loss_curve(self.history, staging / "loss_curve.png")
        return final

    def _data_file(self) -> Path:
        """The file that holds the training data's annotations: a folder's annotation JSON, or the parquet file."""
        if Path(self.args.data).is_dir():
            return Path(self.args.annotations or Path(self.args.data) / "annotations.json")
        return Path(self.args.data)

    def _provenance(self) -> str:
        command = "accelerate launch train_accelerate.py " + shlex.join(sys.argv[1:])
        data = self._data_file()
        described = f"`{data}` (SHA-256 `{file_sha256(data)}`)" if data.is_file() else f"`{self.args.data}`"
        lines = [(f"Trained with `{command}` for {self.step} optimizer steps ({self.epoch} epochs) on {described}, "
                  f"{sum(self.train_lengths.values())} training clips from {len(self.train_lengths)} videos.")]
        if self.args.init_from:
            source = Path(self.args.init_from)
            digest = f" (SHA-256 `{file_sha256(source)}`)" if source.is_file() else ""
            lines.append(f"Initialised from `{source.name}`{digest}.")
        return " ".join(lines)


def run_inputs(args: argparse.Namespace) -> list[str]:
    """What a run reads, which none of its outputs may be or contain."""
    return [path for path in (args.data, args.annotations, args.init_from, args.config) if path and Path(path).exists()]


def check_outputs(args: argparse.Namespace) -> None:
    """Before any work: the model folder the run ends with can be written and endangers no input."""
    Outputs(inputs=run_inputs(args)).check_folder(Path(args.output_dir) / "model", "--output-dir model folder",
                                                  replace_unless=foreign_model_folder)  # fmt: skip


WORLD_SIZE_VARIABLES = ("WORLD_SIZE", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "MV2_COMM_WORLD_SIZE")
CPU_RECIPE = "ACCELERATE_USE_CPU=1 torchrun --nproc_per_node N train_accelerate.py ..."


def check_world_size(num_processes: int) -> None:
    """The processes accelerate joined are the ones the launcher started, or one line that says how to launch.

    Two launches go wrong without a word otherwise: `accelerate launch --cpu --num_processes 2` starts one
    process (its simple launcher sets MASTER_ADDR and nothing else), and `--multi_gpu` without GPUs starts
    several that each train alone and write the same files."""
    launched = next((int(os.environ[name]) for name in WORLD_SIZE_VARIABLES if os.environ.get(name)), None)
    if launched is None and os.environ.get("MASTER_ADDR") and num_processes == 1:
        raise UsageError(f"a launcher asked for several processes (MASTER_ADDR is set) but started this one only, "
                         f"as `accelerate launch --cpu` does; on CPU run `{CPU_RECIPE}`, or launch one process "
                         "without --num_processes")  # fmt: skip
    if launched is not None and launched != num_processes:
        raise UsageError(f"the launcher started {launched} processes but accelerate joined them as {num_processes} "
                         f"(no GPU for --multi_gpu?); on CPU run `{CPU_RECIPE}`")  # fmt: skip


def train(args: argparse.Namespace) -> Path:
    check_outputs(args)
    run = Run(args)
    accelerator = run.accelerator
    if args.report_to != "none":
        hyperparameters = {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in vars(args).items()}
        accelerator.init_trackers("vistr", config=hyperparameters)
    if args.backbone_pretraining_steps > 0 and not args.resume_from_checkpoint:
        run.pretrain_backbone()
    run.prepare()
    skip = run.resume(args.resume_from_checkpoint) if args.resume_from_checkpoint else 0
    metrics = None
    while run.epoch < args.epochs and not run.finished():
        run.run_epoch(skip)
        skip = 0
        if run.finished() or run.epoch % args.eval_every_epochs == 0 or run.epoch == args.epochs:
            metrics = run.evaluate()
    if metrics is None:
        metrics = run.evaluate()
    run.save_checkpoint()
    folder = run.save_final(metrics)
    if accelerator.is_main_process and args.push_to_hub:
        logger.info(f"uploaded: {push_to_hub(folder, args.push_to_hub)}")
    accelerator.end_training()
    return folder


def main(argv: list[str] | None = None) -> None:
    """Train; bad input (an unusable --output-dir, a missing dataset, model options the config rejects) ends
    in one `error: ...` line, as in the `vistr` commands; `--debug` or VISTR_DEBUG=1 shows the traceback."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(format="%(message)s", level=logging.WARNING)
    logging.getLogger(LOGGER_NAME).setLevel(logging.INFO)  # the run's layout and evaluations, not the libraries'
    checkpoints = Path(args.output_dir) / "checkpoints"
    interrupted = f"the checkpoints saved so far are in {checkpoints} (continue with --resume-from-checkpoint)"
    run_reporting_errors(partial(train, args), debug_requested(args), interrupted)


if __name__ == "__main__":
    main()
