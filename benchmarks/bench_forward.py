"""Seconds per clip and peak memory of a VisTR forward pass (inference, no grad).

Default: the full released R50 configuration (36 frames, 6+6 layers, 360 queries) at 160x288,
fp32, on CPU, with random weights (a converted checkpoint gives the same cost). Peak memory is
the process's peak resident set size, read from the OS; "activations" is that peak minus the
resident size after the model was built.

    python benchmarks/bench_forward.py [--frames 36 --height 160 --width 288 --repeats 3]
"""

from __future__ import annotations

import argparse
import platform
import resource
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from configuration_vistr import VisTRConfig  # noqa: E402
from modeling_vistr import VisTRForVideoInstanceSegmentation  # noqa: E402


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def current_rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbone", default="resnet50")
    parser.add_argument("--frames", type=int, default=36)
    parser.add_argument("--height", type=int, default=160)
    parser.add_argument("--width", type=int, default=288)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    config = VisTRConfig(backbone=args.backbone, num_frames=args.frames)
    model = VisTRForVideoInstanceSegmentation(config).eval()
    clip = torch.randn(1, args.frames, 3, args.height, args.width, generator=torch.Generator().manual_seed(0))
    built_rss = current_rss_mib()

    times = []
    with torch.inference_mode():
        for step in range(args.warmup + args.repeats):
            start = time.perf_counter()
            model(pixel_values=clip)
            if step >= args.warmup:
                times.append(time.perf_counter() - start)
    peak = peak_rss_mib()

    print(f"machine: {platform.machine()} {platform.processor() or ''}, {args.threads} torch threads, torch {torch.__version__}")
    print(f"model: {args.backbone}, {config.num_frames} frames x {config.num_queries_per_frame} queries, "
          f"{config.encoder_layers}+{config.decoder_layers} layers, d_model {config.d_model}, fp32, CPU")
    print()
    print("| input (T x H x W) | s/clip median | s/clip min | frames/s | peak RSS MiB | activations MiB |")
    print("|---|---|---|---|---|---|")
    median = statistics.median(times)
    print(f"| {args.frames} x {args.height} x {args.width} | {median:.2f} | {min(times):.2f} | "
          f"{args.frames / median:.1f} | {peak:.0f} | {peak - built_rss:.0f} |")


if __name__ == "__main__":
    main()
