"""torch.compile against eager for a VisTR forward on CPU: compile time, seconds per clip, speed-up, and what a
second frame size costs.

Models (`--models`): the bundled model (5 frames) and the R50 configuration (VisTRConfig defaults: 36 frames,
6 + 6 layers, 360 queries; random weights, `conv_offset` small-random so that the deformable convolution samples
off the grid, as a trained one does). Compiled variants (`--variants`), each after `torch._dynamo.reset()`:

* static: `torch.compile(model)`, PyTorch's default (dynamic=None): the first call compiles for its sizes; a new
  size compiles again, then with the sizes that changed symbolic ("automatic dynamic");
* dynamic: the same, with the input's height and width marked dynamic (`torch._dynamo.mark_dynamic`) before the
  first call, so that the first compilation already covers every frame size.

Columns: eager s/clip and compiled s/clip (medians of `--repeats` runs, timed alternately so that load from other
processes hits both alike), compile s (the first compiled call, compilation included), speed-up (eager / compiled),
then the second size (`--second-size`): how many times it compiled again and its first call's seconds. The
compiled output is checked against eager (largest mask-logit difference, printed).

    python benchmarks/bench_compile.py [--models bundled,r50 --variants static,dynamic --repeats 3]
        [--bundled-size 160x288 --r50-size 96x160 --second-size 192x320 --threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch._dynamo.testing import CompileCounterWithBackend
from vistr.configuration_vistr import VisTRConfig
from vistr.modeling_vistr import VisTRForVideoInstanceSegmentation

BUNDLED = Path(__file__).resolve().parent.parent / "assets" / "vistr-tiny-synthetic"


@dataclass
class Row:
    model: str
    variant: str
    eager: float
    compile: float
    compiled: float
    recompiles: int
    second_call: float
    difference: float


def size(text: str) -> tuple[int, int]:
    height, width = (int(part) for part in text.lower().split("x"))
    return height, width


def load_model(name: str) -> VisTRForVideoInstanceSegmentation:
    if name == "bundled":
        return VisTRForVideoInstanceSegmentation.from_pretrained(BUNDLED).eval()
    torch.manual_seed(0)
    model = VisTRForVideoInstanceSegmentation(VisTRConfig()).eval()
    with torch.no_grad():
        model.mask_head.conv_offset.weight.normal_(0, 0.01)
    return model


def clip(model, hw: tuple[int, int]) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    return torch.randn(1, model.config.num_frames, 3, *hw, generator=generator)


def timed(fn: Callable[[], torch.Tensor]) -> tuple[float, torch.Tensor]:
    start = time.perf_counter()
    with torch.no_grad():
        result = fn()
    return time.perf_counter() - start, result


def measure(name: str, model, variant: str, first: tuple[int, int], second: tuple[int, int], repeats: int) -> Row:
    """One compiled variant against eager on the same clip; then the second size."""
    torch._dynamo.reset()
    counter = CompileCounterWithBackend("inductor")
    compiled = torch.compile(model, backend=counter)
    pixel_values = clip(model, first)
    if variant == "dynamic":
        torch._dynamo.mark_dynamic(pixel_values, 3)
        torch._dynamo.mark_dynamic(pixel_values, 4)
    compile_seconds, masks = timed(lambda: compiled(pixel_values=pixel_values).pred_masks)
    eager_runs, compiled_runs = [], []
    for _ in range(repeats):
        seconds, expected = timed(lambda: model(pixel_values=pixel_values).pred_masks)
        eager_runs.append(seconds)
        compiled_runs.append(timed(lambda: compiled(pixel_values=pixel_values).pred_masks)[0])
    compiles = counter.frame_count
    second_seconds, _ = timed(lambda: compiled(pixel_values=clip(model, second)).pred_masks)
    return Row(name, variant, statistics.median(eager_runs), compile_seconds, statistics.median(compiled_runs),
               counter.frame_count - compiles, second_seconds, float((masks - expected).abs().max()))  # fmt: skip


def print_table(rows: list[Row], sizes: dict[str, tuple[int, int]], second: tuple[int, int]) -> None:
    print(f"| model, size | variant | eager s/clip | compile s | compiled s/clip | speed-up | {second[0]}x{second[1]}: "
          "compiles again, first call s | max mask-logit difference |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    for row in rows:
        height, width = sizes[row.model]
        print(f"| {row.model}, {height}x{width} | {row.variant} | {row.eager:.3f} | {row.compile:.1f} | "
              f"{row.compiled:.3f} | {row.eager / row.compiled:.2f}x | {row.recompiles}, {row.second_call:.1f} | "
              f"{row.difference:.1e} |")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="bundled,r50")
    parser.add_argument("--variants", default="static,dynamic")
    parser.add_argument("--bundled-size", type=size, default=(160, 288))
    parser.add_argument("--r50-size", type=size, default=(96, 160))
    parser.add_argument("--second-size", type=size, default=(192, 320))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    sizes = {"bundled": args.bundled_size, "r50": args.r50_size}
    rows = []
    for name in args.models.split(","):
        model = load_model(name)
        for variant in args.variants.split(","):
            rows.append(measure(name, model, variant, sizes[name], args.second_size, args.repeats))
            print(rows[-1], flush=True)
    print(f"\ntorch {torch.__version__}, {args.threads} threads")
    print_table(rows, sizes, args.second_size)


if __name__ == "__main__":
    main()
