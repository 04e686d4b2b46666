"""Every GPU check of the project in one command, for the first session that is lent an accelerator.

    python benchmarks/gpu_check.py OUT_DIR                 # on the GPU machine: real shapes, ~5 minutes on an H200
    python benchmarks/gpu_check.py OUT_DIR --dry-run       # anywhere: tiny shapes, Triton's interpreter, CPU
    python benchmarks/gpu_check.py OUT_DIR --compile-only  # anywhere: check 2 alone (no GPU, no interpreter)

Writes OUT_DIR/gpu_check.md (one markdown table per check) and OUT_DIR/gpu_check.json, and prints the
markdown. Installs nothing; every check runs even when an earlier one failed (its row says why).

1. GPU-only tests: `tests/test_deform_conv.py -k triton` (the Triton kernels compiled for real, forward
   and every gradient against `torchvision.ops.deform_conv2d` on CUDA).
2. Triton targets: every kernel of deform_conv.py compiled, with Triton's bundled ptxas, for sm_75, 80, 86,
   89, 90 and 100, in every dtype and every launch configuration the dispatcher chooses there (at the mask
   head's shape and at a DCNv2 shape per tile choice): registers, spills and shared memory against each
   architecture's per-block limits. Goal: every row OK, no spills in the forward kernel at the mask head's
   shape. --compile-only exits 1 when a row is not OK; --archs narrows it (the dry run compiles sm_75 alone).
3. DCN speed at the mask head's shape (360 x 48 -> 24, 3x3, 75 x 135): Triton vs torchvision, forward and
   forward + backward, fp32 and bf16. Goal: fwd+bwd >= 2x torchvision.
4. Model-only frames per second of the full R50 at 36 x 300 x 540 (random weights, offsets re-initialised
   off the grid as trained ones are): fp32, fp16, bf16, bf16 + torch.compile, bf16 + CUDA graphs
   (compile mode "reduce-overhead"); per-slot mask IoU and label agreement against fp32. Goal: >= 1,000 FPS
   in bf16 on an H100/H200 with mask IoU >= 0.98.
5. Peak memory of one training step at the paper's setting (R50, 36 frames, 300 x 540, bf16 autocast,
   activation checkpointing). Goal: <= 16 GB.

The dry run uses the same code on tiny shapes (test_resnet, 2 frames, 64 x 96) so that it cannot rot;
tests/e2e/test_gpu_check.py runs it, and tests/e2e/test_triton_targets.py runs --compile-only.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import io
import json
import multiprocessing
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

TARGET_ARCHS = (75, 80, 86, 89, 90, 100)
# Opt-in maximum of shared memory per block in bytes (compute-capability table of NVIDIA's CUDA C++ programming guide).
SHARED_MEMORY_PER_BLOCK = {75: 64 << 10, 80: 163 << 10, 86: 99 << 10, 89: 99 << 10, 90: 227 << 10, 100: 227 << 10}
REGISTERS_PER_BLOCK = 64 << 10  # 32-bit registers, on each architecture above
# The C_out / groups values over which the dispatcher's tile choices are collected: far past the widest channel tile.
GROUP_OUT_RANGE = range(1, 4097)


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
    compile_archs: tuple[int, ...]


REAL = Sizes("resnet50", 36, 300, 540, 360, (48, 24), (75, 135), 20, "cuda", TARGET_ARCHS)
DRY = Sizes("test_resnet", 2, 64, 96, 2, (8, 4), (9, 13), 1, "cpu", (75,))


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


# ------------------------------------------------------------------------------------------------- Triton targets
# Every Triton kernel of deform_conv.py compiled (Triton's bundled ptxas included, no GPU needed) for each GPU
# generation the model may meet, with the launch configurations the dispatcher chooses there.

_PTXAS_REGISTERS = re.compile(r"Used (\d+) registers")
_PTXAS_SPILLS = re.compile(r"(\d+) bytes spill stores, (\d+) bytes spill loads")


@dataclass(frozen=True)
class DcnShape:
    """One deformable convolution (3x3, stride 1, padding 1) whose forward and backward launches are compiled."""

    name: str
    batch: int
    in_channels: int
    out_channels: int
    size: tuple[int, int]
    groups: int = 1
    offset_groups: int = 1
    mask: bool = False
    bias: bool = False


def mask_head_shape(sizes: Sizes) -> DcnShape:
    """The model's deformable convolution (the mask head's last FPN conv) at the default config and REAL's clip."""
    from vistr.configuration_vistr import VisTRConfig

    config = VisTRConfig(backbone=sizes.backbone, num_frames=sizes.frames)
    in_channels, out_channels = config.mask_head_widths[2:]
    size = (-(-sizes.height // 4), -(-sizes.width // 4))  # the backbone's stride-4 level
    return DcnShape("mask head", config.num_queries, in_channels, out_channels, size)


def general_shape(group_out: int) -> DcnShape:
    """A DCNv2 with bias, conv and offset groups: every flag of the kernels on, and no size that Triton's launcher
    specialises (1 becomes a constant, a multiple of 16 an alignment hint), so the kernels compile in general form."""
    return DcnShape(f"DCNv2 + bias, 2 groups, C_out/groups {group_out}", 2, 40, 2 * group_out, (13, 21), groups=2,
                    offset_groups=2, mask=True, bias=True)


def _specialised(value: int) -> bool:
    return value == 1 or value % 16 == 0


def dispatcher_shapes(arch: int, dtype) -> list[DcnShape]:
    """The mask head, and a general shape for each tile choice `_select_tiles` makes for (arch, dtype)."""
    from vistr import deform_conv

    chosen_for = {}
    for group_out in GROUP_OUT_RANGE:
        chosen_for.setdefault(deform_conv._select_tiles(arch, dtype, group_out), []).append(group_out)
    representatives = [min(values, key=lambda g: (_specialised(g), g)) for values in chosen_for.values()]
    return [mask_head_shape(REAL), *map(general_shape, representatives)]


def kernel_calls(shape: DcnShape, dtype, arch: int) -> list:
    """The launches of one forward and backward (every gradient) of `shape`, as the dispatcher builds them for
    `arch`, on meta tensors: nothing is allocated and nothing runs."""
    import torch
    from vistr import deform_conv as dc

    (height, width), taps, meta = shape.size, 9, dict(device="meta", dtype=dtype)
    input = torch.empty(shape.batch, shape.in_channels, height, width, **meta)
    offset = torch.empty(shape.batch, 2 * shape.offset_groups * taps, height, width, **meta)
    mask = torch.empty(shape.batch, shape.offset_groups * taps, height, width, **meta) if shape.mask else None
    weight = torch.empty(shape.out_channels, shape.in_channels // shape.groups, 3, 3, **meta)
    bias = torch.empty(shape.out_channels, **meta) if shape.bias else None
    geo = dc._geometry(input, offset, weight, bias, mask, 1, 1, 1)
    cfg = dc._launch_config(input, weight, geo, arch)
    weight_t = dc._transposed_weight(weight, geo.groups)
    calls = []
    out = dc._triton_forward(input, offset, mask, weight_t, bias, geo, cfg, calls.append)
    grad_out = torch.empty_like(out)
    dc._triton_backward_data(input, offset, mask, weight_t, grad_out, geo, cfg, True, calls.append)
    dc._triton_backward_weight(input, offset, mask, grad_out, geo, cfg, calls.append)
    if bias is not None:
        dc._triton_backward_bias(grad_out, calls.append)
    return calls


@dataclass(frozen=True)
class CompileJob:
    """What Triton's launcher would compile for one call on `arch`: kernel, specialised signature, options."""

    kernel: str
    arch: int
    signature: dict
    constexprs: dict
    attrs: dict
    options: dict

    def key(self) -> str:
        return repr((self.kernel, self.arch, self.signature, self.constexprs, self.attrs, self.options))

    def config(self) -> str:
        """The launch configuration: the kernel's tile sizes, warps and pipeline stages."""
        names = list(self.signature)
        blocks = [f"{names[index]}={value}" for (index,), value in self.constexprs.items()
                  if names[index].startswith("BLOCK_")]
        ceiling = [] if self.options["maxnreg"] is None else [f"maxnreg={self.options['maxnreg']}"]
        launch = [f"warps={self.options['num_warps']}", f"stages={self.options['num_stages']}", *ceiling]
        return " ".join([*blocks, *launch])


def compile_job(call, arch: int) -> CompileJob:
    """Bind `call`'s arguments the way Triton's launcher does (integers equal to 1 and multiples of 16 specialised,
    pointer alignment) for a GPU of compute capability `arch`."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import make_backend
    from triton.runtime.jit import create_function_from_signature

    kernel, backend = call.kernel, make_backend(GPUTarget("cuda", arch, 32))
    binder = create_function_from_signature(kernel.signature, kernel.params, backend)
    bound, specialization, options = binder(*call.args, **call.kwargs)
    options, signature, constexprs, attrs = kernel._pack_args(backend, call.kwargs, bound, specialization, options)
    return CompileJob(kernel.__name__, arch, signature, constexprs, attrs, dict(options.__dict__))


def compile_for_target(job: CompileJob) -> dict:
    """Compile one job; registers and spills from ptxas's report, shared memory from Triton's metadata."""
    import triton
    from triton import knobs
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from vistr import deform_conv

    source = ASTSource(getattr(deform_conv, job.kernel), job.signature, job.constexprs, job.attrs)
    report = io.StringIO()
    # always compile: a cached kernel would skip ptxas and its report
    with knobs.compilation.scope(), knobs.nvidia.scope(), contextlib.redirect_stdout(report):
        knobs.compilation.always_compile, knobs.nvidia.dump_ptxas_log = True, True
        try:
            compiled = triton.compile(source, target=GPUTarget("cuda", job.arch, 32), options=job.options)
        except Exception as error:
            return {"error": f"{type(error).__name__}: {str(error).strip().splitlines()[0][:200]}"}
    log = report.getvalue()
    stores, loads = (int(value) for value in _PTXAS_SPILLS.search(log).groups())
    return {"registers": int(_PTXAS_REGISTERS.search(log).group(1)), "spill stores (bytes)": stores,
            "spill loads (bytes)": loads, "shared (bytes)": compiled.metadata.shared}


def verdict(row: dict) -> str:
    """"OK", or why the kernel cannot launch on the architecture (or, at the mask head's shape, why the forward
    kernel would be slow: register spills)."""
    if "error" in row:
        return "does not compile: " + row["error"]
    problems = []
    if row["shared (bytes)"] > row["shared limit (bytes)"]:
        problems.append(f"needs {row['shared (bytes)']} bytes of shared memory, {row['arch']} allows "
                        f"{row['shared limit (bytes)']} per block")
    if row["registers"] * row["threads"] > REGISTERS_PER_BLOCK:
        problems.append(f"{row['registers']} registers x {row['threads']} threads exceed the "
                        f"{REGISTERS_PER_BLOCK} of a block")
    spills = row["spill stores (bytes)"] + row["spill loads (bytes)"]
    if spills and row["kernel"] == "_forward_kernel" and row["shape"] == "mask head":
        problems.append("spills registers in the forward kernel at the mask head's shape")
    if problems:
        return "; ".join(problems)
    return "OK, spills registers" if spills else "OK"


def _compile_jobs(jobs: list[CompileJob], workers: int) -> dict[str, dict]:
    """Each distinct job compiled once, by `workers` processes (forked: they share the imported modules)."""
    unique = {job.key(): job for job in jobs}
    if workers <= 1:
        return {key: compile_for_target(job) for key, job in unique.items()}
    context = multiprocessing.get_context("fork")
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=context) as pool:
        return dict(zip(unique, pool.map(compile_for_target, unique.values())))


def compile_table(archs: tuple[int, ...] = TARGET_ARCHS, workers: int = 1) -> list[dict]:
    """One row per (kernel, dtype, arch, configuration, shape) the dispatcher can launch."""
    from vistr import deform_conv

    planned = []
    for arch in archs:
        for dtype in deform_conv._TRITON_DTYPES:
            for shape in dispatcher_shapes(arch, dtype):
                planned += [(dtype, shape, compile_job(call, arch)) for call in kernel_calls(shape, dtype, arch)]
    results = _compile_jobs([job for _, _, job in planned], workers)
    rows = []
    for dtype, shape, job in planned:
        row = {"kernel": job.kernel, "dtype": str(dtype).removeprefix("torch."), "arch": f"sm_{job.arch}",
               "config": job.config(), "shape": shape.name, "threads": 32 * job.options["num_warps"],
               **results[job.key()], "shared limit (bytes)": SHARED_MEMORY_PER_BLOCK[job.arch]}
        rows.append({**row, "result": verdict(row)})
    return rows


def toolchain() -> str:
    """Triton's version and the ptxas releases it compiles with."""
    import triton
    from triton.backends.nvidia.compiler import get_ptxas

    archs_of = {}
    for arch in TARGET_ARCHS:
        tool = get_ptxas(arch)
        archs_of.setdefault(f"{Path(tool.path).name} {tool.version}", []).append(f"sm_{arch}")
    tools = ", ".join(f"{tool} ({', '.join(archs)})" for tool, archs in archs_of.items())
    return f"triton {triton.__version__}, {tools}"


def check_triton_targets(sizes: Sizes) -> list[dict]:
    """The compile table, in a process of its own: this one may run the kernels in Triton's interpreter."""
    environment = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    with tempfile.TemporaryDirectory() as folder:
        command = [sys.executable, __file__, folder, "--compile-only", "--archs", *map(str, sizes.compile_archs)]
        done = subprocess.run(command, cwd=REPO, env=environment, capture_output=True, text=True, timeout=900)
        table = Path(folder) / "gpu_check.json"
        if not table.exists():  # a row that is not OK still writes the table (exit status 1): it says why
            raise RuntimeError(f"--compile-only exited with {done.returncode}: {done.stderr.strip()[-300:]}")
        return json.loads(table.read_text())["triton targets"]


CHECKS = {"gpu tests": check_gpu_tests, "triton targets": check_triton_targets, "dcn speed": check_dcn_speed,
          "fps": check_fps, "training memory": check_training_memory}  # fmt: skip


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


def _compile_only(archs: tuple[int, ...], output: Path) -> int:
    """Check 2 alone, in this process: exit status 1 when a row is not OK."""
    from vistr import deform_conv

    if deform_conv.triton is None:
        print("error: triton could not be imported; --compile-only needs it (pip install triton)", file=sys.stderr)
        return 2
    workers = len(os.sched_getaffinity(0))
    rows = compile_table(archs, workers)
    results = {"triton targets": rows}
    output.mkdir(parents=True, exist_ok=True)
    report = markdown(results, f"# gpu_check (compile only): {toolchain()}")
    (output / "gpu_check.md").write_text(report)
    (output / "gpu_check.json").write_text(json.dumps(results, indent=1))
    print(report)
    failed = [row for row in rows if not row["result"].startswith("OK")]
    if failed:
        print(f"error: {len(failed)} of {len(rows)} compiled kernels are not OK (see the result column)",
              file=sys.stderr)
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("output", type=Path, help="folder for gpu_check.md and gpu_check.json")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--dry-run", action="store_true", help="tiny shapes on CPU, Triton's interpreter")
    mode.add_argument("--compile-only", action="store_true",
                      help="only the Triton targets table: compile the kernels for each GPU target, no GPU needed")
    parser.add_argument("--checks", nargs="+", choices=sorted(CHECKS), help="the checks to run (default: all)")
    parser.add_argument("--archs", nargs="+", type=int, choices=TARGET_ARCHS,
                        help="with --compile-only: the compute capabilities to compile for (default: all)")
    args = parser.parse_args(argv)
    if args.output.exists() and not args.output.is_dir():
        parser.error(f"{args.output} exists and is not a folder")
    if args.compile_only and args.checks:
        parser.error("--checks does not apply to --compile-only (it is the triton targets check alone)")
    if args.archs and not args.compile_only:
        parser.error("--archs applies to --compile-only only")
    if args.compile_only:  # before Triton is imported: interpreted kernels cannot be compiled
        os.environ.pop("TRITON_INTERPRET", None)
    if args.dry_run:  # before Triton is imported: kernels are decorated interpreted or compiled at import
        os.environ["TRITON_INTERPRET"] = "1"
    _import_checkout_as_vistr()
    if args.compile_only:
        return _compile_only(tuple(args.archs or TARGET_ARCHS), args.output)
    import torch

    sizes = DRY if args.dry_run else REAL
    if sizes.device == "cuda" and not torch.cuda.is_available():
        print("error: no CUDA device here; run with --dry-run or --compile-only on a machine without a GPU",
              file=sys.stderr)
        return 2
    results = {}
    for name in args.checks or CHECKS:
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
