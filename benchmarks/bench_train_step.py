"""Seconds per optimizer step of the bundled model's training configuration, on this machine.

One step = forward with labels, backward, gradient clipping, AdamW step, on a batch like the trainer's
(4 clips of 5 frames at 128 x 160, two instances each). Variants, timed alternately so that load from
other processes hits them alike (medians of --repeats steps each, after one warm-up step):

- `before`: the training step as it was: the deformable convolution's corner-by-corner gather path
  (`VISTR_DCN_BACKEND=torch`) and the mask branch run for every slot;
- `grid-sample DCN`: the grid-sample CPU path (`deform_conv._grid_sample_deform_conv`), every slot;
- `+ matched slots only`: today's default: the mask branch runs for the slots the loss matched;
- `+ bf16 autocast`: the same under `torch.autocast("cpu", torch.bfloat16)`, what `--mixed-precision bf16`
  does on a CPU (AMX where the CPU has it);
- `+ channels-last backbone`: today's default layout (the variants above run the backbone channels-first,
  timm's layout, as trained-norm backbones did before); once in float32 and once under bf16 autocast.

The loss of the first step is printed for each variant (same weights and batch), so bf16's effect on
the loss shows next to its speed.

    python benchmarks/bench_train_step.py [--model assets/vistr-tiny-synthetic] [--repeats 5] [--threads 1]
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import os
import statistics
import time
from pathlib import Path

import torch

from bench_forward import cpu_name
from vistr.configuration_vistr import VisTRConfig
from vistr.modeling_vistr import VisTRForVideoInstanceSegmentation

BUNDLED = Path(__file__).resolve().parent.parent / "assets" / "vistr-tiny-synthetic"


def bundled_config(model: Path) -> VisTRConfig:
    """The shipped model's config, or (before one is shipped) the recipe's."""
    if (model / "config.json").is_file():
        return VisTRConfig.from_pretrained(model)
    return VisTRConfig(
        backbone="test_resnet", backbone_norm="batch_norm", backbone_frozen_stages=-1, num_frames=5,
        num_queries_per_frame=5, d_model=96, num_attention_heads=8, encoder_layers=2, decoder_layers=3, ffn_dim=384,
        dropout=0.0, pre_norm=True, id2label={i: f"class_{i}" for i in range(7)},
    )  # fmt: skip


def training_batch(config: VisTRConfig, batch: int, height: int, width: int) -> tuple[torch.Tensor, list[dict]]:
    generator = torch.Generator().manual_seed(0)
    frames = config.num_frames
    pixel_values = torch.randn(batch, frames, 3, height, width, generator=generator)
    labels = []
    for _ in range(batch):
        masks = torch.zeros(2, frames, height, width)
        masks[0, :, height // 8: height // 2, width // 8: width // 2] = 1
        masks[1, :, height // 3: height - 4, width // 2: width - 4] = 1
        boxes = torch.rand(2, frames, 4, generator=generator) * 0.4 + 0.3
        labels.append({"class_labels": torch.tensor([1, 2]), "boxes": boxes, "masks": masks,
                       "valid": torch.ones(2, frames, dtype=torch.bool)})  # fmt: skip
    return pixel_values, labels


class Variant:
    def __init__(self, name: str, model, dcn_backend: str | None, autocast: bool, every_slot: bool,
                 channels_last: bool = False):
        self.name, self.model, self.dcn_backend, self.autocast = name, model, dcn_backend, autocast
        model.vistr.backbone.channels_last_on_cpu = channels_last
        if every_slot:  # the loss gets every slot's masks, as before
            model._matched_masks = lambda outputs, indices: model._predict_masks(outputs)
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
        self.times: list[float] = []
        self.first_loss: float | None = None

    def step(self, pixel_values, labels) -> None:
        previous = os.environ.pop("VISTR_DCN_BACKEND", None)
        if self.dcn_backend:
            os.environ["VISTR_DCN_BACKEND"] = self.dcn_backend
        precision = torch.autocast("cpu", dtype=torch.bfloat16) if self.autocast else contextlib.nullcontext()
        try:
            start = time.perf_counter()
            with precision:
                loss = self.model(pixel_values=pixel_values, labels=labels).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
            self.optimizer.step()
            self.optimizer.zero_grad()
            self.times.append(time.perf_counter() - start)
        finally:
            os.environ.pop("VISTR_DCN_BACKEND", None)
            if previous is not None:
                os.environ["VISTR_DCN_BACKEND"] = previous
        if self.first_loss is None:
            self.first_loss = loss.item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, default=BUNDLED, help="folder whose config.json to train")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--height", type=int, default=128)
    parser.add_argument("--width", type=int, default=160)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    config = bundled_config(args.model)
    torch.manual_seed(0)
    base = VisTRForVideoInstanceSegmentation(config).train()
    variants = [
        Variant("before (gather DCN, every slot's masks)", copy.deepcopy(base), "torch", False, True),
        Variant("grid-sample DCN", copy.deepcopy(base), None, False, True),
        Variant("+ matched slots only (default)", copy.deepcopy(base), None, False, False),
        Variant("+ bf16 autocast", copy.deepcopy(base), None, True, False),
        Variant("+ channels-last backbone (default), float32", copy.deepcopy(base), None, False, False, True),
        Variant("+ channels-last backbone (default), bf16 autocast", copy.deepcopy(base), None, True, False, True),
    ]
    pixel_values, labels = training_batch(config, args.batch, args.height, args.width)
    for variant in variants:  # warm-up, and the first-step loss of identical weights
        variant.step(pixel_values, labels)
        variant.times.clear()
    for _ in range(args.repeats):
        for variant in variants:
            variant.step(pixel_values, labels)
    baseline = statistics.median(variants[0].times)
    print(f"# training step, {config.backbone} d_model={config.d_model}, batch {args.batch} x {config.num_frames} frames "
          f"at {args.height}x{args.width}; {cpu_name()}, {args.threads} thread(s), median of {args.repeats}")
    print("| variant | s/step | speed-up | first-step loss |")
    print("|---|---|---|---|")
    for variant in variants:
        median = statistics.median(variant.times)
        print(f"| {variant.name} | {median:.3f} | {baseline / median:.2f}x | {variant.first_loss:.4f} |")


if __name__ == "__main__":
    main()
