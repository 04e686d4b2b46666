"""Every GPU check of the project in one command, for the first session that is lent an accelerator.

    python benchmarks/gpu_check.py OUT_DIR              # on the GPU machine: real shapes, ~5 minutes on an H200
    python benchmarks/gpu_check.py OUT_DIR --dry-run    # anywhere: tiny shapes, Triton's interpreter, CPU

Writes OUT_DIR/gpu_check.md (one markdown table per check) and OUT_DIR/gpu_check.json, and prints the
markdown. Installs nothing; every check runs even when an earlier one failed (its row says why).

1. GPU-only tests: `tests/test_deform_conv.py -k triton` (the Triton kernels compiled for real, forward
   and every gradient against `torchvision.ops.deform_conv2d` on CUDA).
2. DCN speed at the mask head's shape (360 x 48 -> 24, 3x3, 75 x 135): Triton vs torchvision, forward and
   forward + backward, fp32 and bf16. Goal: fwd+bwd >= 2x torchvision.
3. Model-only frames per second of the full R50 at 36 x 300 x 540 (random weights, offsets re-initialised
   off the grid as trained ones are): fp32, fp16, bf16, bf16 + torch.compile, bf16 + CUDA graphs
   (compile mode "reduce-overhead"); per-slot mask IoU and label agreement against fp32. Goal: >= 1,000 FPS
   in bf16 on an H100/H200 with mask IoU >= 0.98.
4. Peak memory of one training step at the paper's setting (R50, 36 frames, 300 x 540, bf16 autocast,
   activation checkpointing). Goal: <= 16 GB.

The dry run uses the same code on tiny shapes (test_resnet, 2 frames, 64 x 96) so that it cannot rot;
tests/test_gpu_check.py runs it.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Sizes:
    """The shapes of one mode: real (GPU) or dry (CPU, tiny)."""

    backbone: str
    frames: int
    height: int
    width: int
    dcn_batch: int
    dcn_channels: tuple[int, int]
    dcn_size: tuple[int, int]
    repeats: int
    device: str


REAL = Sizes("resnet50", 36, 300, 540, 360, (48, 24), (75, 135), 20, "cuda")
DRY = Sizes("test_resnet", 2, 64, 96, 2, (8, 4), (9, 13), 1, "cpu")


def _time(fn: Callable[[], object], repeats: int, synchronize: Callable[[], None]) -> float:
    """Median seconds of `fn` after one warm-up call."""
    fn()
    synchronize()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _synchronizer(device: str) -> Callable[[], None]:
    import torch

    return torch.cuda.synchronize if device == "cuda" else (lambda: None)


# ------------------------------------------------------------------------------------------------- checks


def check_gpu_tests(sizes: Sizes) -> list[dict]:
    """The Triton tests of tests/test_deform_conv.py (skipped there without a GPU)."""
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_deform_conv.py", "-k", "triton"]
    if sizes.device == "cpu":  # the interpreter subprocess test is the slow one: a quick subset proves the call works
        command[-1] = "triton and half"
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=480)
    summary = (done.stdout.strip().splitlines() or ["(no output)"])[-1]
    return [{"check": "pytest " + " ".join(command[5:]), "result": summary, "exit code": done.returncode}]


def check_dcn_speed(sizes: Sizes) -> list[dict]:
    """Triton (ours) against torchvision's deformable convolution, forward and forward + backward."""
    import torch
    import torchvision
    from vistr import deform_conv

    os.environ[deform_conv._BACKEND_ENV] = "triton"
    synchronize = _synchronizer(sizes.device)
    (c_in, c_out), (height, width) = sizes.dcn_channels, sizes.dcn_size
    rows = []
    for dtype_name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        generator = torch.Generator().manual_seed(0)
        x = torch.randn(sizes.dcn_batch, c_in, height, width, generator=generator).to(sizes.device, dtype)
        offset = (torch.randn(sizes.dcn_batch, 18, height, width, generator=generator) * 2).to(sizes.device, dtype)
        weight = (torch.randn(c_out, c_in, 3, 3, generator=generator) * 0.1).to(sizes.device, dtype)
        implementations = {"triton (ours)": deform_conv.deform_conv2d, "torchvision": torchvision.ops.deform_conv2d}
        seconds = {}
        for name, op in implementations.items():
            leaves = [t.detach().requires_grad_() for t in (x, offset, weight)]

            def forward(op=op):
                with torch.no_grad():
                    return op(x, offset, weight, padding=1)

            def forward_backward(op=op, leaves=leaves):
                op(leaves[0], leaves[1], leaves[2], padding=1).float().sum().backward()

            try:
                seconds[name] = (_time(forward, sizes.repeats, synchronize), _time(forward_backward, sizes.repeats, synchronize))
            except Exception as error:  # torchvision has no bf16 CPU kernel, say
                seconds[name] = None
                rows.append({"dtype": dtype_name, "implementation": name, "error": f"{type(error).__name__}: {error}"})
        for name, result in seconds.items():
            if result is None:
                continue
            reference = seconds.get("torchvision")
            row = {"dtype": dtype_name, "implementation": name, "fwd ms": round(result[0] * 1e3, 3),
                   "fwd+bwd ms": round(result[1] * 1e3, 3)}
            if reference and name != "torchvision":
                row["fwd+bwd speed-up vs torchvision"] = round(reference[1] / result[1], 2)
            rows.append(row)
    os.environ.pop(deform_conv._BACKEND_ENV)
    return rows


def _model(sizes: Sizes, **overrides):
    import torch
    from vistr.configuration_vistr import VisTRConfig
    from vistr.modeling_vistr import VisTRForVideoInstanceSegmentation

    torch.manual_seed(0)
    config = VisTRConfig(backbone=sizes.backbone, num_frames=sizes.frames, **overrides)
    model = VisTRForVideoInstanceSegmentation(config)
    with torch.no_grad():  # sample off the grid, as a trained model's deformable convolution does
        torch.nn.init.normal_(model.mask_head.conv_offset.weight, std=0.02)
    return model.to(sizes.device)


def _agreement(reference, outputs) -> dict:
    """Per-slot mask IoU (logits > 0, slots non-empty in either) and label agreement against fp32."""

    truth, mask = reference.pred_masks > 0, outputs.pred_masks.float() > 0
    union = (truth | mask).flatten(2).sum(-1)
    iou = ((truth & mask).flatten(2).sum(-1).float() / union.clamp(min=1))[union > 0]
    labels = (reference.logits.argmax(-1) == outputs.logits.float().argmax(-1)).float().mean().item()
    return {"mask IoU mean": round(iou.mean().item(), 4) if iou.numel() else None,
            "mask IoU min": round(iou.min().item(), 4) if iou.numel() else None,
            "labels equal": round(labels, 4), "max |box diff|": round(
                (reference.pred_boxes - outputs.pred_boxes.float()).abs().max().item(), 5)}  # fmt: skip


def check_fps(sizes: Sizes) -> list[dict]:
    """Model-only frames per second by dtype and compilation, with agreement against fp32."""
    import torch

    synchronize = _synchronizer(sizes.device)
    model = _model(sizes).eval()
    clip = torch.randn(1, sizes.frames, 3, sizes.height, sizes.width, generator=torch.Generator().manual_seed(1))
    clip = clip.to(sizes.device)
    with torch.inference_mode():
        reference = model(pixel_values=clip)
    variants = [("fp32", torch.float32, None), ("fp16", torch.float16, None), ("bf16", torch.bfloat16, None)]
    if sizes.device == "cuda":
        variants += [("bf16 + torch.compile", torch.bfloat16, "default"), ("bf16 + CUDA graphs", torch.bfloat16, "reduce-overhead")]
    rows = []
    for name, dtype, compile_mode in variants:
        try:
            typed = model.to(dtype)
            run = typed if compile_mode is None else torch.compile(typed, mode=compile_mode)
            inputs = clip.to(dtype)

            def forward(run=run, inputs=inputs):
                with torch.inference_mode():
                    return run(pixel_values=inputs)

            seconds = _time(forward, sizes.repeats, synchronize)
            rows.append({"variant": name, "s/clip": round(seconds, 4), "frames/s": round(sizes.frames / seconds, 1),
                         **_agreement(reference, forward())})  # fmt: skip
        except Exception as error:
            rows.append({"variant": name, "error": f"{type(error).__name__}: {error}".splitlines()[0][:200]})
    model.float()
    return rows


def check_training_memory(sizes: Sizes) -> list[dict]:
    """One training step (bf16 autocast, activation checkpointing): seconds and peak memory."""
    import torch

    model = _model(sizes).train()
    model.activation_checkpointing_enable()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    frames, height, width = sizes.frames, sizes.height, sizes.width
    masks = torch.zeros(2, frames, height, width, device=sizes.device)
    masks[0, :, height // 8: height // 2, width // 8: width // 2] = 1
    masks[1, :, height // 3:, width // 2:] = 1
    boxes = torch.tensor([[0.3, 0.3, 0.4, 0.4], [0.75, 0.65, 0.5, 0.7]], device=sizes.device)[:, None].expand(2, frames, 4)
    labels = [{"class_labels": torch.tensor([1, 2], device=sizes.device), "boxes": boxes.contiguous(), "masks": masks,
               "valid": torch.ones(2, frames, dtype=torch.bool, device=sizes.device)}]  # fmt: skip
    clip = torch.randn(1, frames, 3, height, width, device=sizes.device)

    def step():
        with torch.autocast(sizes.device, dtype=torch.bfloat16):
            loss = model(pixel_values=clip, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()

    if sizes.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    seconds = _time(step, 1, _synchronizer(sizes.device))
    peak = torch.cuda.max_memory_allocated() / 2**30 if sizes.device == "cuda" else None
    return [{"setting": f"{sizes.backbone}, {frames} x {height} x {width}, bf16 autocast, activation checkpointing",
             "s/step": round(seconds, 3), "peak GiB": None if peak is None else round(peak, 2)}]  # fmt: skip


CHECKS = {"gpu tests": check_gpu_tests, "dcn speed": check_dcn_speed, "fps": check_fps,
          "training memory": check_training_memory}  # fmt: skip


# ------------------------------------------------------------------------------------------------- report


def markdown(results: dict[str, list[dict]], header: str) -> str:
    lines = [header, ""]
    for name, rows in results.items():
        columns = list(dict.fromkeys(key for row in rows for key in row))
        lines += [f"## {name}", "", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
        lines += ["| " + " | ".join(str(row.get(column, "")) for column in columns) + " |" for row in rows]
        lines.append("")
    return "\n".join(lines)


def machine(sizes: Sizes) -> str:
    import torch

    if sizes.device == "cuda":
        return f"{torch.cuda.get_device_name()}, torch {torch.__version__}, CUDA {torch.version.cuda}"
    return f"CPU (dry run), torch {torch.__version__}"


def _import_checkout_as_vistr() -> None:
    """The device machine gets the checkout but no install: import the repository root as the package `vistr`."""
    import importlib.util

    if importlib.util.find_spec("vistr") is not None:
        return
    spec = importlib.util.spec_from_file_location("vistr", REPO / "__init__.py", submodule_search_locations=[str(REPO)])
    package = importlib.util.module_from_spec(spec)
    sys.modules["vistr"] = package
    spec.loader.exec_module(package)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("output", type=Path, help="folder for gpu_check.md and gpu_check.json")
    parser.add_argument("--dry-run", action="store_true", help="tiny shapes on CPU, Triton's interpreter")
    parser.add_argument("--checks", nargs="+", choices=sorted(CHECKS), default=list(CHECKS))
    args = parser.parse_args(argv)
    if args.dry_run:  # before Triton is imported: kernels are decorated interpreted or compiled at import
        os.environ["TRITON_INTERPRET"] = "1"
    _import_checkout_as_vistr()
    import torch

    sizes = DRY if args.dry_run else REAL
    if sizes.device == "cuda" and not torch.cuda.is_available():
        print("error: no CUDA device here; run with --dry-run on a machine without a GPU", file=sys.stderr)
        return 2
    results = {}
    for name in args.checks:
        start = time.perf_counter()
        try:
            results[name] = CHECKS[name](sizes)
        except Exception as error:
            results[name] = [{"error": f"{type(error).__name__}: {error}", "traceback": traceback.format_exc(limit=3)[-300:]}]
        print(f"{name}: {time.perf_counter() - start:.1f} s", file=sys.stderr)
    args.output.mkdir(parents=True, exist_ok=True)
    report = markdown(results, f"# gpu_check ({'dry run' if args.dry_run else 'real shapes'}): {machine(sizes)}")
    (args.output / "gpu_check.md").write_text(report)
    (args.output / "gpu_check.json").write_text(json.dumps(results, indent=1))
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
