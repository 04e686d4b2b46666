"""Seconds per clip and peak memory of a VisTR forward pass (inference), ours in fp32 and bf16 vs the original's way.

Default: the full released R50 configuration (36 frames, 6+6 layers, 360 queries) at 160x288 on CPU,
with random weights (a converted checkpoint gives the same cost; `conv_offset` is re-initialized
small-random so that the deformable convolution samples off the grid, as a trained one does). Rows,
same weights, same input:

* ours fp32 / ours bf16 (`--dtypes`): `VisTRForVideoInstanceSegmentation.forward`, the model and the
  pixel values cast to the dtype, as `vistr segment --dtype` does;
* original (fp32): `original_flow.OriginalFlow`, the original's control flow (per-frame mask head with the
  memory copied per query, per-instance 3-D head, sequence-first nn.MultiheadAttention, frozen
  batch norm as separate ops, torchvision's DCN as in the golden fixtures) with our model's modules.

The rows are timed alternately (ours fp32, ours bf16, original, ours fp32, ...), so that load from other
processes hits all alike; speedups are given from the medians, from the minima (the least disturbed runs)
and as the median over consecutive run pairs. Peak memory: the process's resident high-water mark during
the forward (reset before each run through /proc/self/clear_refs), minus the resident size before it.
The script then checks that ours fp32 and the original agree within the fp32 tolerances of the parity
tests (logits 1.5e-3, boxes 1e-4, mask logits 5e-3, max abs) and exits non-zero if they do not.

Accuracy of the low-precision rows against fp32 (`accuracy_rows`): per instance (slot) of a clip, the IoU
of its masks over all frames (mask logit > 0), its label (majority of the per-frame classes) and its score
(mean per-frame class probability), on trained weights (the bundled model on assets/sample.mp4) and,
where ../shared/parity exists, on the converted tiny checkpoint (seeded random weights) with the parity
input, next to fp32 run on the same pixels rounded to the dtype: what the rounding of the input alone costs.

    python benchmarks/bench_forward.py [--frames 36 --height 160 --width 288 --repeats 3 --dtypes fp32,bf16 --only ours]
"""

from __future__ import annotations

import argparse
import copy
import ctypes
import platform
import re
import statistics
import sys
import time
from pathlib import Path

import torch

from original_flow import OriginalFlow
from vistr.configuration_vistr import VisTRConfig
from vistr.modeling_vistr import VisTRForVideoInstanceSegmentation

REPO_ROOT = Path(__file__).resolve().parent.parent
BUNDLED = REPO_ROOT / "assets" / "vistr-tiny-synthetic"
SAMPLE = REPO_ROOT / "assets" / "sample.mp4"
PARITY = REPO_ROOT.parent / "shared" / "parity"
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
FP32_TOLERANCE = {"logits": 1.5e-3, "pred_boxes": 1e-4, "pred_masks": 5e-3}
ORIGINAL_KEY = {"logits": "pred_logits", "pred_boxes": "pred_boxes", "pred_masks": "pred_masks"}


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        return int(re.search(rf"^{field}:\s+(\d+) kB", f.read(), re.M).group(1))


def _reset_peak_rss() -> bool:
    """Give freed heap back to the OS and reset the resident high-water mark (Linux)."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def timed_run(fn) -> tuple[float, float, object]:
    """(seconds, peak MiB above the resident size before the call, result)."""
    resettable = _reset_peak_rss()
    before = _status_kib("VmRSS")
    start = time.perf_counter()
    result = fn()
    seconds = time.perf_counter() - start
    peak = (_status_kib("VmHWM") - before) / 1024 if resettable else float("nan")
    return seconds, peak, result


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return re.search(r"^model name\s*:\s*(.+)$", f.read(), re.M).group(1)
    except (OSError, AttributeError):
        return platform.processor() or platform.machine()


def slot_summary(outputs, frames: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per slot of clip 0: score (mean per-frame best class probability), label (majority) and masks [n, T*h*w]."""
    probabilities = outputs.logits[0].float().softmax(-1)[:, :-1]
    scores, labels = probabilities.view(frames, -1, probabilities.shape[-1]).max(-1)
    masks = outputs.pred_masks[0].float() > 0
    masks = masks.view(frames, -1, *masks.shape[-2:]).transpose(0, 1).flatten(1)
    return scores.mean(0), torch.mode(labels, 0).values, masks


def compare(reference, other, frames: int) -> dict[str, float]:
    """Per-slot agreement of two forwards: min / mean mask IoU (1 where both are empty), labels, score and box differences."""
    scores_a, labels_a, masks_a = slot_summary(reference, frames)
    scores_b, labels_b, masks_b = slot_summary(other, frames)
    union = (masks_a | masks_b).sum(1)
    iou = torch.where(union > 0, (masks_a & masks_b).sum(1) / union.clamp(min=1), 1.0)
    return {"min IoU": iou.min().item(), "mean IoU": iou.mean().item(),
            "labels equal": f"{int((labels_a == labels_b).sum())}/{len(labels_a)}",
            "max |score diff|": (scores_a - scores_b).abs().max().item(),
            "max |box diff|": (reference.pred_boxes.float() - other.pred_boxes.float()).abs().max().item()}


def dtype_agreement(model, pixel_values: torch.Tensor, pixel_mask: torch.Tensor | None, dtype: torch.dtype) -> tuple[dict, dict]:
    """(model in `dtype` vs fp32, fp32 on the pixels rounded to `dtype` vs fp32) on one clip."""
    low = copy.deepcopy(model).to(dtype)
    with torch.inference_mode():
        reference = model(pixel_values=pixel_values, pixel_mask=pixel_mask)
        computed = low(pixel_values=pixel_values.to(dtype), pixel_mask=pixel_mask)
        rounded = model(pixel_values=pixel_values.to(dtype).float(), pixel_mask=pixel_mask)
    frames = model.config.num_frames
    return compare(reference, computed, frames), compare(reference, rounded, frames)


def accuracy_inputs() -> list[tuple[str, object, torch.Tensor, torch.Tensor | None]]:
    """(description, fp32 model, pixel values, pixel mask): the bundled model's sample clips, the converted tiny checkpoint."""
    from vistr.image_processing_vistr import VisTRVideoProcessor

    bundled = VisTRForVideoInstanceSegmentation.from_pretrained(BUNDLED).eval()
    processor = VisTRVideoProcessor.from_pretrained(BUNDLED)
    frames = bundled.config.num_frames
    cases = [(f"bundled model (trained), sample.mp4 clip {index}", bundled, pixels[None], None)
             for index, (_, pixels) in enumerate(processor.video_clips(SAMPLE, num_frames=frames, stride=frames))]
    if PARITY.is_dir():
        from vistr.convert_checkpoint import convert

        inputs = torch.load(PARITY / "inputs.pt", weights_only=True)
        tiny = convert(PARITY / "vistr_tiny_r50_original.pth")
        cases.append(("converted tiny R50 (seeded random weights), parity input", tiny, inputs["pixel_values"][None], None))
        cases.append(("converted tiny R50 (seeded random weights), padded parity input", tiny,
                      inputs["padded_pixel_values"][None], (~inputs["padded_pixel_mask"]).long()[None]))
    return cases


def print_accuracy(dtype_names: list[str]) -> None:
    """The accuracy table of each low-precision dtype against fp32."""
    columns = ("min IoU", "mean IoU", "labels equal", "max |score diff|", "max |box diff|")
    print()
    print("| weights, input | dtype | " + " | ".join(columns) + " | fp32 on rounded pixels: min IoU | labels equal |")
    print("|---|---|" + "---|" * (len(columns) + 2))
    for description, model, pixel_values, pixel_mask in accuracy_inputs():
        for name in dtype_names:
            computed, rounded = dtype_agreement(model, pixel_values, pixel_mask, DTYPES[name])
            cells = [f"{computed[c]:.4f}" if isinstance(computed[c], float) else computed[c] for c in columns]
            print(f"| {description} | {name} | " + " | ".join(cells) +
                  f" | {rounded['min IoU']:.4f} | {rounded['labels equal']} |")


def speedups(times: dict[str, list[float]], name: str, baseline: str) -> str:
    """`name` against `baseline`: from the medians, from the minima, and the median over run pairs."""
    if baseline not in times or baseline == name:
        return "- | - | -"
    pairs = statistics.median(b / t for b, t in zip(times[baseline], times[name]))
    return (f"{statistics.median(times[baseline]) / statistics.median(times[name]):.2f}x | "
            f"{min(times[baseline]) / min(times[name]):.2f}x | {pairs:.2f}x")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbone", default="resnet50")
    parser.add_argument("--frames", type=int, default=36)
    parser.add_argument("--height", type=int, default=160)
    parser.add_argument("--width", type=int, default=288)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--dtypes", default="fp32,bf16",
                        help="comma-separated dtypes of our rows, from fp32, bf16, fp16 (the original runs in fp32)")
    parser.add_argument("--only", choices=("ours", "original"), help="time our rows or the original only (no agreement check)")
    parser.add_argument("--no-accuracy", action="store_true", help="skip the accuracy table of the low-precision rows")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    dtype_names = args.dtypes.split(",")
    if unknown := set(dtype_names) - set(DTYPES):
        parser.error(f"--dtypes: unknown {sorted(unknown)}; choose from {sorted(DTYPES)}")

    torch.manual_seed(0)
    config = VisTRConfig(backbone=args.backbone, num_frames=args.frames)
    model = VisTRForVideoInstanceSegmentation(config).eval()
    with torch.no_grad():
        torch.nn.init.normal_(model.mask_head.conv_offset.weight, std=0.02)
    clip = torch.randn(1, args.frames, 3, args.height, args.width, generator=torch.Generator().manual_seed(0))
    runners = {}
    if args.only != "original":
        for name in dtype_names:
            dtype = DTYPES[name]
            typed = model if dtype == torch.float32 else copy.deepcopy(model).to(dtype)
            runners[f"ours {name}"] = lambda typed=typed, pixels=clip.to(dtype): torch.inference_mode()(typed)(pixel_values=pixels)
    if args.only != "ours":
        original = OriginalFlow(model)
        runners["original"] = lambda: torch.inference_mode()(original)(clip)

    times = {name: [] for name in runners}
    peaks = {name: [] for name in runners}
    results = {}
    for step in range(args.warmup + args.repeats):
        for name, fn in runners.items():
            seconds, peak, results[name] = timed_run(fn)
            if step >= args.warmup:
                times[name].append(seconds)
                peaks[name].append(peak)

    print(f"machine: {cpu_name()}, {args.threads} torch threads, torch {torch.__version__}, "
          f"Python {platform.python_version()}")
    print(f"model: {args.backbone}, {config.num_frames} frames x {config.num_queries_per_frame} queries, "
          f"{config.encoder_layers}+{config.decoder_layers} layers, d_model {config.d_model}, CPU; "
          f"{args.repeats} alternating runs after {args.warmup} warm-up")
    print()
    print("| forward | input (T x H x W) | s/clip median | s/clip min | frames/s (median) | peak MiB above start | "
          "vs original: medians | mins | run pairs | vs ours fp32: medians | mins | run pairs |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for name in runners:
        median = statistics.median(times[name])
        print(f"| {name} | {args.frames} x {args.height} x {args.width} | {median:.2f} | {min(times[name]):.2f} | "
              f"{args.frames / median:.2f} | {max(peaks[name]):.0f} | {speedups(times, name, 'original')} | "
              f"{speedups(times, name, 'ours fp32')} |")
    print()
    print("runs (s): " + "; ".join(f"{name} " + " ".join(f"{t:.2f}" for t in ts) for name, ts in times.items()))
    low_precision = [name for name in dtype_names if name != "fp32"]
    if low_precision and not args.no_accuracy:
        print_accuracy(low_precision)

    if not {"ours fp32", "original"} <= results.keys():
        return 0
    ours, theirs = results["ours fp32"], results["original"]
    failed = False
    for name, tolerance in FP32_TOLERANCE.items():
        diff = (getattr(ours, name) - theirs[ORIGINAL_KEY[name]]).abs().max().item()
        scale = theirs[ORIGINAL_KEY[name]].abs().max().item()
        ok = diff <= tolerance
        failed |= not ok
        print(f"agreement {name}: max |ours - original| = {diff:.2e} (tolerance {tolerance:g}, max |value| "
              f"{scale:.3g}) {'ok' if ok else 'FAIL'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
