"""The CPU forward against this machine's limit: work per part, time per part, and the share of peak.

The peak is measured in the same run, in each dtype: the faster of a 4096 x 4096 matrix product and a 1x1
convolution of 1024 channels (the same product, done by oneDNN; on some CPUs the two libraries differ by more than
2x), the median of `--repeats`: what the matrix units reach in practice. The work per part is counted by torch's FlopCounterMode; the deformable
convolution's by formula (its matrix product, 2 * N * Cout * Cin/groups * k*k * Hout * Wout; the bilinear
sampling is not counted), because its sampling ops are not counted by torch. Times come from forward hooks
on the same modules, the median over `--repeats` forwards after one warm-up. Then the operations that take
the most time in one forward (torch.profiler, self CPU time).

    python benchmarks/bench_roofline.py                      # R50 configuration (random weights), 36 x 160 x 288
    python benchmarks/bench_roofline.py --model assets/vistr-tiny-synthetic --height 128 --width 224
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from bench_forward import cpu_name
from torch.utils.flop_counter import FlopCounterMode
from vistr.configuration_vistr import VisTRConfig
from vistr.deform_conv import DeformConv2d
from vistr.modeling_vistr import VisTRForVideoInstanceSegmentation

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
PEAK_SIZE = 4096
PEAK_CONV_INPUT = (8, 1024, 28, 28)  # batch, channels, height, width
# the parts of the table: name -> the model's modules whose work and time it sums (a leading "-" subtracts)
PARTS = {
    "backbone": ["vistr.backbone"],
    "transformer": ["vistr", "-vistr.backbone", "class_labels_classifier", "bbox_predictor", "bbox_attention"],
    "mask head (without the DCN)": ["mask_head", "-mask_head.dcn"],
    "deformable conv": ["mask_head.dcn"],
    "3-D instance head": ["instance_head"],
}


def _gflops(operation: Callable[[], torch.Tensor], gflop: float, repeats: int) -> float:
    operation()
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        operation()
        seconds.append(time.perf_counter() - start)
    return gflop / statistics.median(seconds)


def peaks(dtype: torch.dtype, repeats: int) -> dict[str, float]:
    """GFLOP/s in `dtype` of a PEAK_SIZE^2 matrix product and of a 1x1 convolution (a matrix product by oneDNN)."""
    a, b = (torch.randn(PEAK_SIZE, PEAK_SIZE).to(dtype) for _ in range(2))
    pixels = torch.randn(*PEAK_CONV_INPUT).to(dtype).contiguous(memory_format=torch.channels_last)
    kernel = torch.randn(PEAK_CONV_INPUT[1], PEAK_CONV_INPUT[1], 1, 1).to(dtype)
    conv_gflop = 2 * pixels.numel() * PEAK_CONV_INPUT[1] / 1e9
    return {"matrix product": _gflops(lambda: torch.mm(a, b), 2 * PEAK_SIZE**3 / 1e9, repeats),
            "1x1 convolution": _gflops(lambda: F.conv2d(pixels, kernel), conv_gflop, repeats)}  # fmt: skip


def deform_conv_gflop(model: torch.nn.Module, pixel_values: torch.Tensor) -> dict[str, float]:
    """Per deformable convolution module, its matrix product's GFLOP in one forward, by formula."""
    counted: dict[str, float] = defaultdict(float)
    names = {module: name for name, module in model.named_modules() if isinstance(module, DeformConv2d)}

    def count(module: DeformConv2d, args, output: torch.Tensor) -> None:
        batch, out_channels, height, width = output.shape
        kernel = module.weight.shape[-2] * module.weight.shape[-1]
        counted[names[module]] += 2 * batch * out_channels * module.weight.shape[1] * kernel * height * width / 1e9

    handles = [module.register_forward_hook(count) for module in names]
    try:
        model(pixel_values=pixel_values)
    finally:
        for handle in handles:
            handle.remove()
    return counted


def counted_gflop(model: torch.nn.Module, pixel_values: torch.Tensor) -> dict[str, float]:
    """GFLOP per module name (relative to the model; "" for the whole) in one forward, DCN by formula."""
    with FlopCounterMode(display=False) as counter:
        model(pixel_values=pixel_values)
    root = type(model).__name__
    gflop = {name.removeprefix(root).removeprefix("."): sum(ops.values()) / 1e9
             for name, ops in counter.get_flop_counts().items() if name.startswith(root)}  # fmt: skip
    for name, formula in deform_conv_gflop(model, pixel_values).items():
        difference = formula - gflop.get(name, 0.0)
        for prefix in _prefixes(name):  # the enclosing modules hold the counted value too
            gflop[prefix] = gflop.get(prefix, 0.0) + difference
    return gflop


def _prefixes(name: str) -> Iterator[str]:
    parts = name.split(".")
    yield ""
    for end in range(1, len(parts) + 1):
        yield ".".join(parts[:end])


@contextmanager
def module_timers(model: torch.nn.Module, names: set[str]) -> Iterator[dict[str, float]]:
    """Seconds spent in each named module (summed over its calls) while the context is open."""
    spent: dict[str, float] = defaultdict(float)
    started: dict[str, list[float]] = defaultdict(list)
    handles = []
    for name, module in model.named_modules():
        if name in names:
            handles.append(module.register_forward_pre_hook(
                lambda module, args, name=name: started[name].append(time.perf_counter())))
            handles.append(module.register_forward_hook(
                lambda module, args, output, name=name: spent.__setitem__(
                    name, spent[name] + time.perf_counter() - started[name].pop())))  # fmt: skip
    try:
        yield spent
    finally:
        for handle in handles:
            handle.remove()


def part_values(values: dict[str, float]) -> dict[str, float]:
    """Module values summed into the table's parts."""
    return {part: sum(-values.get(name[1:], 0.0) if name.startswith("-") else values.get(name, 0.0)
                      for name in names) for part, names in PARTS.items()}  # fmt: skip


def timed_forward(model: torch.nn.Module, pixel_values: torch.Tensor, repeats: int) -> dict[str, float]:
    """Median seconds per part and for the whole forward ("whole forward") over `repeats` forwards."""
    names = {name.lstrip("-") for names in PARTS.values() for name in names}
    model(pixel_values=pixel_values)  # warm-up: allocations, oneDNN primitive creation
    runs = []
    for _ in range(repeats):
        with module_timers(model, names) as spent:
            start = time.perf_counter()
            model(pixel_values=pixel_values)
            whole = time.perf_counter() - start
        runs.append({**part_values(spent), "whole forward": whole})
    return {key: statistics.median(run[key] for run in runs) for key in runs[0]}


def top_operations(model: torch.nn.Module, pixel_values: torch.Tensor, count: int) -> list[tuple[str, int, float]]:
    """(operation, calls, self CPU seconds) of the `count` operations with the most self time in one forward."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profiler:
        model(pixel_values=pixel_values)
    events = sorted(profiler.key_averages(), key=lambda event: -event.self_cpu_time_total)[:count]
    return [(event.key, event.count, event.self_cpu_time_total / 1e6) for event in events]


def build_model(args: argparse.Namespace) -> VisTRForVideoInstanceSegmentation:
    if args.model:
        return VisTRForVideoInstanceSegmentation.from_pretrained(args.model)
    return VisTRForVideoInstanceSegmentation(VisTRConfig(num_frames=args.frames))


def roofline_rows(gflop: dict[str, float], seconds: dict[str, float], peak: float) -> list[tuple[str, float, float, float]]:
    """(part, GFLOP, seconds, % of peak) for each part and the whole forward."""
    work = {**part_values(gflop), "whole forward": gflop[""]}
    return [(part, work[part], seconds[part], 100 * work[part] / seconds[part] / peak) for part in work]


def print_table(title: str, header: list[str], rows: list[tuple], formats: list[Callable[[object], str]]) -> None:
    print(f"\n{title}\n\n| {' | '.join(header)} |\n|{'---|' * len(header)}")
    for row in rows:
        print(f"| {' | '.join(fmt(value) for fmt, value in zip(formats, row))} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", help="a model folder (default: the R50 configuration with random weights)")
    parser.add_argument("--frames", type=int, default=36, help="frames of the R50 configuration (with no --model)")
    parser.add_argument("--height", type=int, default=160)
    parser.add_argument("--width", type=int, default=288)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dtypes", default="fp32,bf16", help=f"comma-separated, of {', '.join(DTYPES)}")
    parser.add_argument("--top", type=int, default=8, help="operations listed by self time, per dtype")
    args = parser.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    model = build_model(args).eval().requires_grad_(False)  # FlopCounterMode's module tracker needs no grad tensors
    frames = model.config.num_frames
    pixel_values = torch.randn(1, frames, 3, args.height, args.width)
    print(f"# roofline: {cpu_name()}, {args.threads} threads, torch {torch.__version__}, "
          f"{args.model or 'R50 configuration (random weights)'}, {frames} x {args.height} x {args.width}")
    gflop = counted_gflop(model, pixel_values)
    for name in args.dtypes.split(","):
        dtype = DTYPES[name]
        measured = peaks(dtype, args.repeats)
        peak = max(measured.values())
        typed, inputs = model.to(dtype), pixel_values.to(dtype)
        with torch.no_grad():
            seconds = timed_forward(typed, inputs, args.repeats)
            operations = top_operations(typed, inputs, args.top)
        sources = ", ".join(f"{source} {value:,.0f}" for source, value in measured.items())
        print_table(f"## {name}: peak {peak:,.0f} GFLOP/s (the faster of: {sources})",
                    ["part", "GFLOP", "s", "% of peak"], roofline_rows(gflop, seconds, peak),
                    [str, "{:.1f}".format, "{:.3f}".format, "{:.0f} %".format])  # fmt: skip
        print_table(f"### {name}: top operations by self CPU time (one forward)", ["operation", "calls", "self s"],
                    operations, [lambda key: f"`{key}`", str, "{:.3f}".format])  # fmt: skip


if __name__ == "__main__":
    main()
