"""Seconds per clip and peak memory of a VisTR forward pass (inference), ours vs the original's way.

Default: the full released R50 configuration (36 frames, 6+6 layers, 360 queries) at 160x288,
fp32, on CPU, with random weights (a converted checkpoint gives the same cost; `conv_offset` is
re-initialized small-random so that the deformable convolution samples off the grid, as a trained
one does). Two rows, same weights, same input:

* ours: `VisTRForVideoInstanceSegmentation.forward`;
* original: `original_flow.OriginalFlow`, the original's control flow (per-frame mask head with the
  memory copied per query, per-instance 3-D head, sequence-first nn.MultiheadAttention, frozen
  batch norm as separate ops, torchvision's DCN as in the golden fixtures) with our model's modules.

The two are timed alternately (ours, original, ours, ...), so that load from other processes hits
both alike; the speedup is given from the medians, from the minima (the least disturbed runs) and
as the median over consecutive (ours, original) pairs. Peak memory: the process's resident high-water mark during the
forward (reset before each run through /proc/self/clear_refs), minus the resident size before it.
The script then checks that the two outputs agree within the fp32 tolerances of the parity tests
(logits 1.5e-3, boxes 1e-4, mask logits 5e-3, max abs) and exits non-zero if they do not.

    python benchmarks/bench_forward.py [--frames 36 --height 160 --width 288 --repeats 3 --only ours]
"""

from __future__ import annotations

import argparse
import ctypes
import platform
import re
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from original_flow import OriginalFlow  # noqa: E402
from vistr.configuration_vistr import VisTRConfig  # noqa: E402
from vistr.modeling_vistr import VisTRForVideoInstanceSegmentation  # noqa: E402

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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbone", default="resnet50")
    parser.add_argument("--frames", type=int, default=36)
    parser.add_argument("--height", type=int, default=160)
    parser.add_argument("--width", type=int, default=288)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--only", choices=("ours", "original"), help="time one row only (no agreement check)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    config = VisTRConfig(backbone=args.backbone, num_frames=args.frames)
    model = VisTRForVideoInstanceSegmentation(config).eval()
    with torch.no_grad():
        torch.nn.init.normal_(model.mask_head.conv_offset.weight, std=0.02)
    clip = torch.randn(1, args.frames, 3, args.height, args.width, generator=torch.Generator().manual_seed(0))
    original = OriginalFlow(model)
    runners = {
        "ours": lambda: torch.inference_mode()(model)(pixel_values=clip),
        "original": lambda: torch.inference_mode()(original)(clip),
    }
    if args.only:
        runners = {args.only: runners[args.only]}

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
          f"{config.encoder_layers}+{config.decoder_layers} layers, d_model {config.d_model}, fp32, CPU; "
          f"{args.repeats} alternating runs after {args.warmup} warm-up")
    print()
    print("| forward | input (T x H x W) | s/clip median | s/clip min | frames/s (median) | peak MiB above start | "
          "speedup (medians) | speedup (mins) | speedup (median of run pairs) |")
    print("|---|---|---|---|---|---|---|---|---|")
    both = "original" in times
    for name in runners:
        median = statistics.median(times[name])
        if both:
            pairs = statistics.median(o / t for o, t in zip(times["original"], times[name]))
            speedups = (f"{statistics.median(times['original']) / median:.2f}x | {min(times['original']) / min(times[name]):.2f}x"
                        f" | {pairs:.2f}x")
        else:
            speedups = "- | - | -"
        print(f"| {name} | {args.frames} x {args.height} x {args.width} | {median:.2f} | {min(times[name]):.2f} | "
              f"{args.frames / median:.2f} | {max(peaks[name]):.0f} | {speedups} |")
    print()
    print("runs (s): " + "; ".join(f"{name} " + " ".join(f"{t:.2f}" for t in ts) for name, ts in times.items()))

    if len(results) < 2:
        return 0
    ours, theirs = results["ours"], results["original"]
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
