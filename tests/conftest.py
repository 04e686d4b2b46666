"""Shared fixtures: the golden data of the ORIGINAL implementation in ../shared/parity.

Tests that need it skip with a reason when it is absent, and fail instead when CI=true, so a CI
run can never pass by skipping its parity checks.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parent.parent
PARITY_DIR = REPO_ROOT.parent / "shared" / "parity"
TINY_CHECKPOINT = PARITY_DIR / "vistr_tiny_r50_original.pth"

# case name -> (pixel key, padding-mask key) in inputs.pt
PARITY_CASES = {
    "unpadded": ("pixel_values", None),
    "padded": ("padded_pixel_values", "padded_pixel_mask"),
    "padded_small": ("padded_small_pixel_values", "padded_small_pixel_mask"),
}


def import_script(path: Path, name: str | None = None) -> ModuleType:
    """A file outside the package (a benchmark, an asset script, or a model file under a private `name`)
    imported by its path, without adding its folder to sys.path for every later import."""
    name = name or f"_script_{path.stem}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the file executes
    spec.loader.exec_module(module)
    return module


def require_parity_dir() -> Path:
    if not PARITY_DIR.is_dir():
        message = f"golden data not found at {PARITY_DIR} (../shared beside the repo)"
        if os.environ.get("CI") == "true":
            pytest.fail(message + "; CI must run the parity tests")
        pytest.skip(message)
    return PARITY_DIR


@pytest.fixture(scope="session")
def parity_dir() -> Path:
    return require_parity_dir()


@pytest.fixture(scope="session")
def parity_inputs(parity_dir):
    return torch.load(parity_dir / "inputs.pt", weights_only=True)


@pytest.fixture(scope="session")
def reference_fp64(parity_dir):
    return torch.load(parity_dir / "outputs_fp64.pt", weights_only=True)


@pytest.fixture(scope="session")
def tiny_model(parity_dir):
    """The tiny original checkpoint, converted (float32, eval mode)."""
    from vistr.convert_checkpoint import convert

    return convert(parity_dir / "vistr_tiny_r50_original.pth")


def case_inputs(parity_inputs, case: str, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One parity case as model inputs: pixel_values [1, T, 3, H, W] and pixel_mask (1 = real pixel)."""
    pixel_key, mask_key = PARITY_CASES[case]
    pixel_values = parity_inputs[pixel_key].to(dtype)[None]
    pixel_mask = None if mask_key is None else (~parity_inputs[mask_key]).long()[None]
    return pixel_values, pixel_mask
