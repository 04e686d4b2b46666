"""Benchmark deform_conv.deform_conv2d against torchvision.ops.deform_conv2d.

Prints forward and forward+backward wall time (median), achieved GB/s and TFLOP/s at
VisTR's shape (N=360, 48->24 channels, 3x3, 75x135) and a generic one (N=8, 256->256,
3x3, 64x64).  On CPU it compares the PyTorch fallback with torchvision's CPU kernel
(with a smaller default batch so it finishes quickly); on a GPU it compares the Triton
kernels with torchvision's CUDA kernel in fp32, fp16 and bf16.

GB/s is the compulsory traffic (every tensor read or written once per pass) divided by
time; TFLOP/s counts the GEMM work only: 2*N*C_out*Ho*Wo*(C_in/groups)*kh*kw for the
forward, three times that for forward+backward.

    python benchmarks/bench_deform_conv.py                      # defaults for the device
    python benchmarks/bench_deform_conv.py --shapes vistr --batch 4 --repeats 3
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import dataclass
from typing import Callable

import torch
from vistr import deform_conv  # noqa: E402


@dataclass(frozen=True)
class Shape:
    n: int
    c_in: int
    c_out: int
    height: int
    width: int
    kernel: int = 3
    padding: int = 1


SHAPES = {"vistr": Shape(360, 48, 24, 75, 135), "generic": Shape(8, 256, 256, 64, 64)}
CPU_BATCH = {"vistr": 8, "generic": 2}
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16, "fp64": torch.float64}


def _parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--shapes", nargs="+", choices=sorted(SHAPES), default=["vistr", "generic"])
    parser.add_argument("--batch", type=int, help="batch size for every shape (default: the shape's own on GPU, "
                                                  f"{CPU_BATCH} on CPU)")
    parser.add_argument("--dtypes", nargs="+", choices=sorted(DTYPES),
                        help="default: fp32 fp16 bf16 on GPU, fp32 on CPU")
    parser.add_argument("--mask", action="store_true", help="modulated (DCNv2) convolution")
    parser.add_argument("--repeats", type=int, help="timed runs (median reported); default 20 on GPU, 2 on CPU")
    parser.add_argument("--warmup", type=int, help="untimed runs first; default 3 on GPU, 1 on CPU")
    args = parser.parse_args()
    gpu = args.device.startswith("cuda")
    args.dtypes = args.dtypes or (["fp32", "fp16", "bf16"] if gpu else ["fp32"])
    args.repeats = args.repeats or (20 if gpu else 2)
    args.warmup = args.warmup if args.warmup is not None else (3 if gpu else 1)
    return args


def _inputs(shape: Shape, dtype: torch.dtype, device: str, mask: bool) -> dict:
    generator = torch.Generator().manual_seed(0)
    taps = shape.kernel * shape.kernel
    spatial = (shape.n, taps, shape.height, shape.width)  # padding keeps the size for 3x3, stride 1
    tensors = {
        "input": torch.randn(shape.n, shape.c_in, shape.height, shape.width, generator=generator),
        "offset": torch.randn(shape.n, 2 * taps, shape.height, shape.width, generator=generator),
        "weight": torch.randn(shape.c_out, shape.c_in, shape.kernel, shape.kernel, generator=generator) / taps,
        "mask": torch.rand(spatial, generator=generator) if mask else None,
    }
    return {k: None if v is None else v.to(device, dtype) for k, v in tensors.items()}


def _synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


def _median_seconds(fn: Callable[[], None], device: str, warmup: int, repeats: int) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        _synchronize(device)
        start = time.perf_counter()
        fn()
        _synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _measure(op: Callable, shape: Shape, tensors: dict, args: argparse.Namespace) -> tuple[float, float]:
    """Median seconds of a forward pass (no autograd) and of a forward+backward pass."""
    call = lambda t: op(t["input"], t["offset"], t["weight"], None, 1, shape.padding, 1, t["mask"])  # noqa: E731
    leaves = {k: None if v is None else v.detach().requires_grad_() for k, v in tensors.items()}
    grad_out = torch.randn_like(call(tensors))

    def forward() -> None:
        with torch.no_grad():
            call(tensors)

    def forward_backward() -> None:
        for leaf in leaves.values():
            if leaf is not None:
                leaf.grad = None
        call(leaves).backward(grad_out)

    return (_median_seconds(forward, args.device, args.warmup, args.repeats),
            _median_seconds(forward_backward, args.device, args.warmup, args.repeats))


def _work(shape: Shape, tensors: dict) -> tuple[float, float, float, float]:
    """(forward bytes, forward+backward bytes, forward FLOPs, forward+backward FLOPs)."""
    size = lambda t: 0 if t is None else t.numel() * t.element_size()  # noqa: E731
    inputs = sum(size(t) for t in tensors.values())
    output = shape.n * shape.c_out * shape.height * shape.width * tensors["input"].element_size()
    forward_bytes = inputs + output
    # backward reads grad_out and the inputs again, and writes one gradient per input
    backward_bytes = output + 2 * inputs
    flops = 2.0 * shape.n * shape.c_out * shape.height * shape.width * shape.c_in * shape.kernel ** 2
    return forward_bytes, forward_bytes + backward_bytes, flops, 3 * flops


def _implementations(sample: torch.Tensor) -> dict[str, Callable]:
    import torchvision

    return {f"ours ({deform_conv._backend(sample)})": deform_conv.deform_conv2d,
            "torchvision": torchvision.ops.deform_conv2d}


def main() -> None:
    args = _parse_args()
    gpu = args.device.startswith("cuda")
    header = (f"{'shape':<28} {'dtype':<5} {'implementation':<15} {'fwd ms':>9} {'GB/s':>7} {'TFLOP/s':>8} "
              f"{'fwd+bwd ms':>11} {'GB/s':>7} {'TFLOP/s':>8}")
    device_name = torch.cuda.get_device_name(args.device) if gpu else f"CPU, {torch.get_num_threads()} threads"
    print(f"device: {device_name}; mask: {args.mask}; median of {args.repeats} after {args.warmup} warm-up")
    print(header)
    print("-" * len(header))
    for name in args.shapes:
        base = SHAPES[name]
        batch = args.batch or (base.n if gpu else CPU_BATCH[name])
        shape = Shape(batch, base.c_in, base.c_out, base.height, base.width, base.kernel, base.padding)
        label = f"{name} N={shape.n} {shape.c_in}->{shape.c_out} {shape.height}x{shape.width}"
        for dtype_name in args.dtypes:
            tensors = _inputs(shape, DTYPES[dtype_name], args.device, args.mask)
            fwd_bytes, total_bytes, fwd_flops, total_flops = _work(shape, tensors)
            for impl, op in _implementations(tensors["input"]).items():
                try:
                    fwd, total = _measure(op, shape, tensors, args)
                except (RuntimeError, NotImplementedError) as error:  # e.g. torchvision has no bf16 kernel
                    print(f"{label:<28} {dtype_name:<5} {impl:<15} unsupported: ...{str(error).splitlines()[0][-55:]}")
                    continue
                print(f"{label:<28} {dtype_name:<5} {impl:<15} {fwd * 1e3:>9.2f} {fwd_bytes / fwd / 1e9:>7.1f} "
                      f"{fwd_flops / fwd / 1e12:>8.3f} {total * 1e3:>11.2f} {total_bytes / total / 1e9:>7.1f} "
                      f"{total_flops / total / 1e12:>8.3f}")


if __name__ == "__main__":
    main()
