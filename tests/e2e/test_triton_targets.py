"""The Triton kernels of deform_conv.py compiled for real GPU targets on a machine without a GPU.

`benchmarks/gpu_check.py OUT --compile-only` compiles every kernel (Triton's bundled ptxas included) for sm_75, 80,
86, 89, 90 and 100, in every dtype of the Triton path and every launch configuration the dispatcher chooses there.
Its table is checked here against NVIDIA's per-block limits, written out below rather than read from the script,
and its coverage against the dispatcher's own selection function and the model's own deformable convolution.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import import_script

from vistr import deform_conv

REPO = Path(__file__).resolve().parents[2]
gpu_check = import_script(REPO / "benchmarks" / "gpu_check.py")

# Opt-in maximum shared memory per block, KB: the compute-capability table of NVIDIA's CUDA C++ programming guide.
SHARED_KB = {75: 64, 80: 163, 86: 99, 89: 99, 90: 227, 100: 227}
REGISTER_FILE = 65536  # 32-bit registers one block may use, on each of these architectures

pytestmark = pytest.mark.skipif(deform_conv.triton is None or deform_conv._INTERPRETED,
                                reason="needs triton, compiling (TRITON_INTERPRET unset)")


def _run_script(folder: Path, *options: str) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "VISTR_DCN_BACKEND")}
    return subprocess.run([sys.executable, "benchmarks/gpu_check.py", str(folder), *options], cwd=REPO,
                          env=environment | {"OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=1500)


@pytest.fixture(scope="module")
def table(tmp_path_factory) -> list[dict]:
    """The full table, compiled once for this module by the script itself."""
    folder = tmp_path_factory.mktemp("triton_targets")
    done = _run_script(folder, "--compile-only")
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-3000:]
    rows = json.loads((folder / "gpu_check.json").read_text())["triton targets"]
    assert (folder / "gpu_check.md").read_text().count("\n| _") == len(rows) > 0
    return rows


def _config(text: str) -> dict:
    return dict(item.split("=") for item in text.split())


def _launched_kernels() -> set[str]:
    """The module's kernels: the jitted functions a launch names (the others are helpers they call)."""
    jitted = {name for name, value in vars(deform_conv).items() if isinstance(value, deform_conv.triton.JITFunction)}
    return {name for name in jitted if name.endswith("_kernel")}


@pytest.mark.slow
def test_every_kernel_dtype_arch_and_configuration_is_compiled(table):
    dtypes = {str(dtype).removeprefix("torch.") for dtype in deform_conv._TRITON_DTYPES}
    assert {row["kernel"] for row in table} == _launched_kernels()
    assert {(row["dtype"], row["arch"]) for row in table} == {(d, f"sm_{a}") for d in dtypes for a in SHARED_KB}
    for arch in SHARED_KB:
        for dtype in deform_conv._TRITON_DTYPES:
            compiled = {(row["kernel"], row["config"]) for row in table
                        if row["arch"] == f"sm_{arch}" and row["dtype"] == str(dtype).removeprefix("torch.")}
            chosen = {deform_conv._select_tiles(arch, dtype, group_out) for group_out in range(1, 4097)}
            for tiles in chosen:
                expected = {"BLOCK_L": str(tiles.block_l), "BLOCK_C": str(tiles.block_c),
                            "BLOCK_O": str(tiles.block_o), "warps": str(tiles.num_warps),
                            "stages": str(tiles.num_stages), "maxnreg": str(tiles.max_registers)}
                for kernel in ("_forward_kernel", "_backward_data_kernel", "_backward_weight_kernel"):
                    assert any(name == kernel and _config(config) == expected for name, config in compiled), \
                        (kernel, arch, dtype, tiles)


@pytest.mark.slow
def test_every_compiled_kernel_fits_its_architecture(table):
    for row in table:
        arch = int(row["arch"].removeprefix("sm_"))
        assert "error" not in row, row
        assert row["shared limit (bytes)"] == SHARED_KB[arch] * 1024, row
        assert row["shared (bytes)"] <= SHARED_KB[arch] * 1024, row
        assert row["registers"] * row["threads"] <= REGISTER_FILE, row
        assert row["result"].startswith("OK"), row


@pytest.mark.slow
def test_forward_kernel_does_not_spill_at_the_mask_heads_shape(table):
    rows = [row for row in table if row["kernel"] == "_forward_kernel" and row["shape"] == "mask head"]
    assert len(rows) == len(SHARED_KB) * len(deform_conv._TRITON_DTYPES)
    for row in rows:
        assert row["spill stores (bytes)"] == row["spill loads (bytes)"] == 0, row


def test_mask_head_shape_is_the_models_deformable_convolution():
    from vistr.configuration_vistr import VisTRConfig
    from vistr.modeling_vistr import VisTRMaskHeadSmallConv

    sizes = gpu_check.REAL
    config = VisTRConfig(backbone=sizes.backbone, num_frames=sizes.frames)
    dcn = VisTRMaskHeadSmallConv(config, [256, 512, 1024]).dcn
    shape = gpu_check.mask_head_shape(sizes)
    assert (shape.in_channels, shape.out_channels) == (dcn.in_channels, dcn.out_channels)
    assert (dcn.kernel_size, dcn.stride, dcn.padding, dcn.dilation) == ((3, 3), (1, 1), (1, 1), (1, 1))
    assert (dcn.groups, dcn.offset_groups, dcn.bias is None) == (shape.groups, shape.offset_groups, not shape.bias)
    assert shape.batch == sizes.frames * config.num_queries_per_frame
    # ResNet's stride-4 level: the 7x7 stride-2 conv, then the 3x3 stride-2 max pool, both padded
    stem = torch.nn.Sequential(torch.nn.Conv2d(1, 1, 7, 2, 3), torch.nn.MaxPool2d(3, 2, 1))
    assert shape.size == tuple(stem(torch.zeros(1, 1, sizes.height, sizes.width)).shape[-2:])


def test_a_block_too_large_for_sm75_is_reported():
    """A forward tile far larger than the dispatcher's, compiled for real: its shared memory exceeds sm_75's 64 KB."""
    call = gpu_check.kernel_calls(gpu_check.mask_head_shape(gpu_check.REAL), torch.float64, 75)[0]
    # the dot's operands go through shared memory: 256 x 64 float64 samples alone are 128 KB
    oversized = dataclasses.replace(call, kwargs=call.kwargs | {"BLOCK_L": 256, "BLOCK_O": 64, "BLOCK_C": 64})
    job = gpu_check.compile_job(oversized, 75)
    result = gpu_check.compile_for_target(job)
    row = {"kernel": job.kernel, "arch": "sm_75", "shape": "mask head", "threads": 256, **result,
           "shared limit (bytes)": SHARED_KB[75] * 1024}
    assert result["shared (bytes)"] > SHARED_KB[75] * 1024
    assert "shared memory" in gpu_check.verdict(row) and not gpu_check.verdict(row).startswith("OK")


FITTING = {"kernel": "_backward_data_kernel", "arch": "sm_80", "shape": "mask head", "threads": 256, "registers": 200,
           "spill stores (bytes)": 0, "spill loads (bytes)": 0, "shared (bytes)": 1024, "shared limit (bytes)": 4096}


@pytest.mark.parametrize("change, reason", [
    ({"shared (bytes)": 4097}, "shared memory"),
    ({"registers": 257}, "registers"),
    ({"error": "PTXASError: ptxas failed"}, "does not compile"),
    ({"kernel": "_forward_kernel", "spill stores (bytes)": 4}, "spills"),
])
def test_verdict_names_what_does_not_fit(change, reason):
    verdict = gpu_check.verdict(FITTING | change)
    assert reason in verdict and not verdict.startswith("OK")


def test_verdict_passes_a_fitting_kernel_and_flags_spills_elsewhere():
    assert gpu_check.verdict(FITTING) == "OK"
    assert gpu_check.verdict(FITTING | {"spill loads (bytes)": 8}) == "OK, spills registers"
    general_forward = FITTING | {"kernel": "_forward_kernel", "shape": "DCNv2", "spill stores (bytes)": 4}
    assert gpu_check.verdict(general_forward) == "OK, spills registers"


def test_an_unknown_architecture_is_one_clear_line(tmp_path):
    done = _run_script(tmp_path, "--compile-only", "--archs", "61")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "invalid choice: 61" in done.stderr.strip().splitlines()[-1]
