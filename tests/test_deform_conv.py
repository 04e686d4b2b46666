"""deform_conv.py against torchvision.ops.deform_conv2d, the independent reference.

The PyTorch paths (the corner-by-corner gather and, for DCNv1 without groups, the
gathered path eagerly and the grid-sample path traced) run in this process.  The Triton kernels run on CUDA tensors when
a GPU is present, and on CPU through Triton's interpreter otherwise; the
interpreter needs TRITON_INTERPRET=1 before triton is first imported (torchvision
imports it), so test_triton_kernels_in_interpreter re-runs the test_triton_*
tests of this file in a subprocess with that variable set. The bf16 DCNv1 path at the mask
head's full-size shape is checked against float64 on the same values.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import zlib
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
import torch
import torchvision
from conftest import import_script

ROOT = Path(__file__).resolve().parents[1]


def _load_deform_conv(name: str = "_deform_conv_under_test"):
    """../deform_conv.py under a private name, so a test can load it again under changed conditions."""
    return import_script(ROOT / "deform_conv.py", name)


dc = _load_deform_conv()
INTERPRETED = dc._INTERPRETED
TRITON_DEVICE = "cpu" if INTERPRETED else "cuda" if torch.cuda.is_available() and dc.triton is not None else None


@dataclass(frozen=True)
class Case:
    n: int = 2
    c_in: int = 4
    c_out: int = 6
    size: tuple[int, int] = (7, 9)
    kernel: tuple[int, int] = (3, 3)
    stride: int = 1
    padding: int = 1
    dilation: int = 1
    groups: int = 1
    offset_groups: int = 1
    mask: bool = True
    bias: bool = True
    offsets: str = "random"  # random | integer | border | far

    def seed(self) -> int:
        return zlib.crc32(repr(self).encode())

    def out_size(self) -> tuple[int, int]:
        return tuple(
            (s + 2 * self.padding - self.dilation * (k - 1) - 1) // self.stride + 1
            for s, k in zip(self.size, self.kernel)
        )


def _random_case(seed: int) -> Case:
    rng = random.Random(seed)
    kernel = rng.choice([1, 3, 5])
    groups, offset_groups = rng.choice([(1, 1), (2, 1), (1, 2), (2, 3), (3, 2)])
    c_in = groups * offset_groups * rng.choice([1, 2])
    while True:
        case = Case(
            n=rng.randint(1, 4), c_in=c_in, c_out=groups * rng.randint(1, 3),
            size=(rng.randint(3, 9), rng.randint(3, 9)), kernel=(kernel, kernel), stride=rng.choice([1, 2]),
            padding=rng.choice([0, 1, 2]), dilation=rng.choice([1, 2]), groups=groups, offset_groups=offset_groups,
            mask=rng.random() < 0.5, bias=rng.random() < 0.5,
            offsets=rng.choice(["random", "integer", "border", "far"]),
        )
        if min(case.out_size()) >= 1:
            return case


def _offsets(case: Case, generator: torch.Generator, dtype: torch.dtype) -> torch.Tensor:
    (ho, wo), (kh, kw) = case.out_size(), case.kernel
    shape = (case.n, case.offset_groups, kh * kw, 2, ho, wo)
    if case.offsets == "random":
        return 2 * torch.randn(shape, generator=generator, dtype=dtype)
    if case.offsets == "integer":
        return torch.randint(-3, 4, shape, generator=generator).to(dtype)
    if case.offsets == "far":
        sign = torch.randint(0, 2, shape, generator=generator).to(dtype) * 2 - 1
        return sign * (100 + torch.rand(shape, generator=generator, dtype=dtype))
    # border: land every sample exactly on -1, -0.5, 0, size-1, size-0.5 or size (per axis)
    rows, cols = (torch.arange(size) * case.stride - case.padding for size in (ho, wo))
    base_y = rows[None, :, None] + (torch.arange(kh) * case.dilation).repeat_interleave(kw)[:, None, None]
    base_x = cols[None, None, :] + (torch.arange(kw) * case.dilation).repeat(kh)[:, None, None]
    offsets = torch.empty(shape, dtype=dtype)
    for axis, (base, size) in enumerate(((base_y, case.size[0]), (base_x, case.size[1]))):
        targets = torch.tensor([-1, -0.5, 0, size - 1, size - 0.5, size], dtype=dtype)
        pick = torch.randint(0, len(targets), (case.n, case.offset_groups, kh * kw, ho, wo), generator=generator)
        offsets[:, :, :, axis] = targets[pick] - base.to(dtype)
    return offsets


def _inputs(case: Case, dtype: torch.dtype, seed: int, device: str = "cpu") -> dict:
    generator = torch.Generator().manual_seed(seed)
    (ho, wo), (kh, kw) = case.out_size(), case.kernel
    tensors = {
        "input": torch.randn(case.n, case.c_in, *case.size, generator=generator, dtype=dtype),
        "offset": _offsets(case, generator, dtype).reshape(case.n, 2 * case.offset_groups * kh * kw, ho, wo),
        "weight": torch.randn(case.c_out, case.c_in // case.groups, kh, kw, generator=generator, dtype=dtype),
        "bias": torch.randn(case.c_out, generator=generator, dtype=dtype) if case.bias else None,
        "mask": (torch.rand(case.n, case.offset_groups * kh * kw, ho, wo, generator=generator, dtype=dtype)
                 if case.mask else None),
    }
    return {k: None if v is None else v.to(device).requires_grad_() for k, v in tensors.items()}


def _run(fn, case: Case, tensors: dict, grad_out: torch.Tensor | None) -> dict:
    """Forward and all gradients; grad_out defaults to a fixed random tensor."""
    out = fn(tensors["input"], tensors["offset"], tensors["weight"], tensors["bias"],
             stride=case.stride, padding=case.padding, dilation=case.dilation, mask=tensors["mask"])
    if grad_out is None:
        grad_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=out.dtype).to(out.device)
    leaves = {k: v for k, v in tensors.items() if v is not None and v.requires_grad}
    grads = torch.autograd.grad(out, list(leaves.values()), grad_out)
    return {"output": out, **{f"grad_{k}": g for k, g in zip(leaves, grads)}}


def _on_cpu(tensors: dict, dtype: torch.dtype | None = None) -> dict:
    """Detached CPU copies (the reference always runs torchvision's CPU kernel)."""
    return {k: None if v is None else v.detach().to("cpu", dtype or v.dtype).requires_grad_()
            for k, v in tensors.items()}


def _assert_matches_torchvision(fn, case: Case, dtype: torch.dtype, tol: float, seed: int, device: str = "cpu"):
    tensors = _inputs(case, dtype, seed, device)
    expected = _run(torchvision.ops.deform_conv2d, case, _on_cpu(tensors), None)
    actual = _run(fn, case, tensors, None)
    for name, ref in expected.items():
        got = actual[name].cpu()
        assert got.shape == ref.shape and got.dtype == ref.dtype, name
        scale = ref.abs().max().item() if ref.numel() else 1.0
        err = (got - ref).abs().max().item() / (scale or 1.0) if ref.numel() else 0.0
        assert err <= tol, f"{name}: relative error {err:.3g} > {tol:g} for {case}"


TORCH_CASES = [_random_case(seed) for seed in range(40)] + [
    Case(),
    Case(kernel=(1, 3), padding=0, size=(5, 8)),
    Case(kernel=(5, 5), padding=2, stride=2, dilation=2, size=(9, 11)),
    Case(groups=2, offset_groups=2, c_in=4, c_out=4, offsets="integer"),
    Case(offset_groups=2, c_in=6, offsets="border", mask=False),
    Case(offsets="far", bias=False),
    Case(n=0),
]


@pytest.fixture
def torch_backend(monkeypatch):
    monkeypatch.setenv(dc._BACKEND_ENV, "torch")
    return dc.deform_conv2d


@pytest.fixture
def triton_backend(monkeypatch):
    if TRITON_DEVICE is None:
        pytest.skip("no GPU: these run through the interpreter in test_triton_kernels_in_interpreter")
    monkeypatch.setenv(dc._BACKEND_ENV, "triton")
    return dc.deform_conv2d


@pytest.mark.parametrize("case", TORCH_CASES, ids=str)
@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
def test_torch_matches_torchvision(torch_backend, case, dtype, tol):
    _assert_matches_torchvision(torch_backend, case, dtype, tol, seed=case.seed())


def test_torch_gradcheck(torch_backend):
    for case in (Case(n=2, c_in=2, c_out=2, size=(4, 5), kernel=(2, 2), padding=1, stride=2),
                 Case(n=1, c_in=4, c_out=2, size=(3, 4), kernel=(3, 3), groups=2, offset_groups=2, mask=False)):
        tensors = _inputs(case, torch.float64, seed=3)
        names = [k for k, v in tensors.items() if v is not None]

        def fn(*args, case=case, names=names):
            kw = dict(zip(names, args))
            return torch_backend(kw["input"], kw["offset"], kw["weight"], kw.get("bias"), case.stride,
                                 case.padding, case.dilation, kw.get("mask"))

        assert torch.autograd.gradcheck(fn, [tensors[k] for k in names])


def test_torch_chunking_bounds_memory_and_is_exact(torch_backend, monkeypatch):
    case = Case(n=5, offsets="border")
    expected = _run(torch_backend, case, _inputs(case, torch.float64, seed=5), None)
    vistr = dc._Geometry((1, 1), (1, 1), (1, 1), (3, 3), (75, 135), groups=1, offset_groups=1)
    chunks = dc._batch_chunks(torch.empty(360, 48, 75, 135, device="meta"), vistr)
    assert len(chunks) > 1 and (chunks[0].stop - chunks[0].start) * 48 * 9 * 75 * 135 * 4 <= dc._COLUMN_BUDGET_BYTES
    monkeypatch.setattr(dc, "_COLUMN_BUDGET_BYTES", 1)  # one sample per chunk
    actual = _run(torch_backend, case, _inputs(case, torch.float64, seed=5), None)
    for name in expected:
        torch.testing.assert_close(actual[name], expected[name], rtol=1e-13, atol=1e-13)


def _half_precision_errors(fn, case: Case, dtype: torch.dtype, device: str) -> dict:
    """Relative errors of a run on ``dtype`` inputs against torchvision on the same values in float32."""
    tensors = _inputs(case, torch.float32, seed=case.seed(), device=device)
    low = {k: None if v is None else v.detach().to(dtype).requires_grad_() for k, v in tensors.items()}
    grad_out = torch.randn(case.n, case.c_out, *case.out_size(), generator=torch.Generator().manual_seed(1))
    expected = _run(torchvision.ops.deform_conv2d, case, _on_cpu(low, torch.float32), grad_out)
    actual = _run(fn, case, low, grad_out.to(device, dtype))
    assert all(v.dtype == dtype for v in actual.values())
    return {k: ((actual[k].cpu().float() - ref).abs().max() / ref.abs().max()).item() for k, ref in expected.items()}


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_torch_half_precision_computes_in_float32(torch_backend, dtype):
    errors = _half_precision_errors(torch_backend, Case(), dtype, "cpu")
    assert max(errors.values()) <= 1e-2, errors


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_dcnv1_half_precision_computes_in_float32(training_path, dtype):
    errors = _half_precision_errors(training_path, Case(mask=False), dtype, "cpu")
    assert max(errors.values()) <= 1e-2, errors


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_dcnv1_inference_half_precision_computes_in_float32(inference_path, dtype):
    case = Case(n=2, c_in=48, c_out=24, size=(15, 27), mask=False)
    tensors = _inputs(case, torch.float32, seed=case.seed())
    low = {k: None if v is None else v.detach().to(dtype) for k, v in tensors.items()}
    expected = _run(torchvision.ops.deform_conv2d, case, _on_cpu(low, torch.float32), None)["output"]
    actual = _inference_output(inference_path, case, low)
    assert actual.dtype == dtype
    assert ((actual.float() - expected).abs().max() / expected.abs().max()).item() <= 1e-2


def test_non_contiguous_inputs_are_handled(torch_backend):
    case = Case(n=2, mask=True)
    tensors = _inputs(case, torch.float64, seed=11)
    expected = torch_backend(*(tensors[k] for k in ("input", "offset", "weight", "bias")), 1, 1, 1, tensors["mask"])
    strided = {k: v.detach().transpose(-1, -2).contiguous().transpose(-1, -2) if v.dim() == 4 else v.detach()
               for k, v in tensors.items()}
    assert not strided["input"].is_contiguous()
    actual = torch_backend(*(strided[k] for k in ("input", "offset", "weight", "bias")), 1, 1, 1, strided["mask"])
    torch.testing.assert_close(actual, expected, rtol=0, atol=0)


def test_empty_batch_returns_empty_output_and_grads(torch_backend):
    case = Case(n=0, size=(6, 8), stride=2)
    result = _run(torch_backend, case, _inputs(case, torch.float32, seed=0), None)
    assert result["output"].shape == (0, case.c_out, *case.out_size())
    assert result["grad_weight"].abs().max() == 0 and result["grad_bias"].abs().max() == 0
    assert result["grad_input"].shape == (0, case.c_in, *case.size)


def _call(**overrides):
    case = Case()
    tensors = {k: v.detach() for k, v in _inputs(case, torch.float32, seed=0).items()}
    tensors.update(overrides)
    return dc.deform_conv2d(tensors["input"], tensors["offset"], tensors["weight"], tensors["bias"], 1, 1, 1,
                            tensors["mask"])


@pytest.mark.parametrize("overrides, error, pattern", [
    (dict(offset=torch.zeros(2, 17, 7, 9)), ValueError, "offset has 17 channels"),
    (dict(offset=torch.zeros(2, 18, 6, 9)), ValueError, "offset must have shape"),
    (dict(mask=torch.zeros(2, 8, 7, 9)), ValueError, "mask must have shape"),
    (dict(weight=torch.zeros(6, 3, 3, 3)), ValueError, "does not fit an input with 4 channels"),
    (dict(weight=torch.zeros(5, 2, 3, 3)), ValueError, "multiple of groups"),
    (dict(bias=torch.zeros(5)), ValueError, "bias must have shape"),
    (dict(offset=torch.zeros(2, 18, 7, 9, dtype=torch.float64)), TypeError, r"offset has dtype .*\.to\("),
    (dict(input=torch.zeros(2, 4, 7, 9, dtype=torch.int64)), TypeError, "floating-point"),
    (dict(weight=torch.zeros(6, 4, 3, 3, device="meta")), ValueError, r"weight is on meta .*\.to\(input.device\)"),
    (dict(input=torch.zeros(4, 7, 9)), ValueError, "input must be 4-D"),
    (dict(input=torch.zeros(2, 4, 1, 1), weight=torch.zeros(6, 4, 5, 5)), ValueError, "too small"),
])
def test_bad_input_raises_a_clear_error(torch_backend, overrides, error, pattern):
    with pytest.raises(error, match=pattern):
        _call(**overrides)


def test_bad_backend_setting(monkeypatch):
    monkeypatch.setenv(dc._BACKEND_ENV, "cuda")
    with pytest.raises(ValueError, match="VISTR_DCN_BACKEND"):
        _call()
    if not INTERPRETED and dc.triton is not None:
        monkeypatch.setenv(dc._BACKEND_ENV, "triton")
        with pytest.raises(ValueError, match="TRITON_INTERPRET=1"):
            _call()


def test_module_imports_and_runs_without_triton(monkeypatch):
    monkeypatch.setitem(sys.modules, "triton", None)  # makes `import triton` raise ImportError
    monkeypatch.setitem(sys.modules, "triton.language", None)
    module = _load_deform_conv("_deform_conv_without_triton")
    assert module.triton is None
    monkeypatch.setenv(module._BACKEND_ENV, "triton")
    with pytest.raises(ImportError, match="triton could not be imported"):
        module.deform_conv2d(torch.zeros(1, 1, 3, 3), torch.zeros(1, 2, 3, 3), torch.zeros(1, 1, 1, 1))
    monkeypatch.delenv(module._BACKEND_ENV)
    assert module.deform_conv2d(torch.ones(1, 1, 3, 3), torch.zeros(1, 2, 3, 3), torch.ones(1, 1, 1, 1)).sum() == 9


def test_module_parameters_and_forward(torch_backend):
    layer = dc.DeformConv2d(48, 24, 3, padding=1, bias=False)
    assert list(layer.state_dict()) == ["weight"] and layer.bias is None
    assert layer.weight.shape == (24, 48, 3, 3)
    layer = dc.DeformConv2d(4, 6, (3, 1), stride=2, padding=(1, 0), groups=2, offset_groups=2).double()
    assert list(layer.state_dict()) == ["weight", "bias"] and layer.weight.shape == (6, 2, 3, 1)
    generator = torch.Generator().manual_seed(2)
    x = torch.randn(2, 4, 7, 5, generator=generator, dtype=torch.float64)
    offset = torch.randn(2, 12, 4, 3, generator=generator, dtype=torch.float64)
    mask = torch.rand(2, 6, 4, 3, generator=generator, dtype=torch.float64)
    expected = torchvision.ops.deform_conv2d(x, offset, layer.weight, layer.bias, 2, (1, 0), mask=mask)
    torch.testing.assert_close(layer(x, offset, mask), expected, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="offset has 6 channels"):
        layer(x, offset[:, :6], mask)


# ----------------------------------------------------------------------------------- DCNv1 paths
# DCNv1 without groups (the mask head's case), when no backend is forced: inference (no gradient wanted) as a
# 1x1 convolution and bilinear gathers (F.embedding_bag), training as F.grid_sample and matrix products
# differentiated by autograd.

DCNV1_CASES = [
    replace(_random_case(seed), groups=1, offset_groups=1, mask=False) for seed in range(100, 120)
] + [
    Case(mask=False),  # the mask head's call: 3x3, padding 1, stride 1; fractional offsets
    Case(n=2, c_in=48, c_out=24, size=(15, 27), mask=False, bias=False),  # ... and its channel widths
    Case(kernel=(5, 5), padding=2, stride=2, dilation=2, size=(9, 11), mask=False),
    Case(kernel=(2, 3), padding=0, size=(7, 8), mask=False),
    Case(kernel=(3, 1), stride=2, padding=2, dilation=2, size=(8, 5), mask=False),
    Case(mask=False, offsets="integer"),  # samples exactly on pixels
    Case(kernel=(5, 5), padding=2, stride=2, size=(9, 11), mask=False, offsets="integer"),
    Case(mask=False, offsets="border"),  # exactly on -1, -0.5, 0, size-1, size-0.5, size
    Case(size=(6, 10), kernel=(3, 5), padding=1, mask=False, offsets="border", bias=False),
    Case(size=(13, 3), stride=2, mask=False, offsets="border"),
    Case(mask=False, offsets="far"),
    Case(n=0, mask=False),
]



PATHS = {"gathered": "_gathered_deform_conv", "grid_sample": "_grid_sample_deform_conv", "torch": "_torch_deform_conv"}


def _recording_paths(monkeypatch) -> list[str]:
    """The names of the CPU paths deform_conv2d takes, in call order, with no backend forced."""
    monkeypatch.delenv(dc._BACKEND_ENV, raising=False)
    calls = []
    for name, attr in PATHS.items():
        fn = getattr(dc, attr)
        monkeypatch.setattr(dc, attr, lambda *args, fn=fn, name=name: calls.append(name) or fn(*args))
    return calls


@pytest.fixture
def training_path(monkeypatch):
    """deform_conv2d, failing the test unless every call takes the grid-sample (training) path."""
    calls = _recording_paths(monkeypatch)
    yield dc.deform_conv2d
    assert calls and set(calls) == {"grid_sample"}, calls


@pytest.fixture
def inference_path(monkeypatch):
    """deform_conv2d under torch.no_grad, failing the test unless every call takes the gathered path."""
    calls = _recording_paths(monkeypatch)

    def run(*args, **kwargs):
        with torch.no_grad():
            return dc.deform_conv2d(*args, **kwargs)

    yield run
    assert calls and set(calls) == {"gathered"}, calls


def _inference_output(fn, case: Case, tensors: dict) -> torch.Tensor:
    return fn(tensors["input"], tensors["offset"], tensors["weight"], tensors["bias"],
              stride=case.stride, padding=case.padding, dilation=case.dilation, mask=tensors["mask"])


def _assert_inference_matches_torchvision(fn, case: Case, tensors: dict, tol: float) -> torch.Tensor:
    expected = _run(torchvision.ops.deform_conv2d, case, _on_cpu(tensors), None)["output"]
    actual = _inference_output(fn, case, tensors)
    assert actual.shape == expected.shape and actual.dtype == expected.dtype and not actual.requires_grad
    err = (actual - expected).abs().max().item() / (expected.abs().max().item() or 1.0) if expected.numel() else 0.0
    assert err <= tol, f"output: relative error {err:.3g} > {tol:g} for {case}"
    return actual


@pytest.mark.parametrize("case", DCNV1_CASES, ids=str)
@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-9), (torch.float32, 1e-5)])
def test_dcnv1_training_matches_torchvision(training_path, case, dtype, tol):
    """Output and the gradients of input, offset, weight and bias."""
    _assert_matches_torchvision(training_path, case, dtype, tol, seed=case.seed())


@pytest.mark.parametrize("case", DCNV1_CASES, ids=str)
@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-9), (torch.float32, 1e-5)])
def test_dcnv1_inference_matches_torchvision(inference_path, case, dtype, tol):
    _assert_inference_matches_torchvision(inference_path, case, _inputs(case, dtype, case.seed()), tol)


@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-9), (torch.float32, 1e-5)])
def test_dcnv1_every_integer_position_matches_torchvision(monkeypatch, dtype, tol):
    """Samples on every integer position -1 .. size of an axis, for many sizes: the offset gradient jumps there,
    and the floor and the border must be torchvision's (see _integer_grid and _corner_bags)."""
    calls = _recording_paths(monkeypatch)
    for size in range(1, 70):
        for axis in (0, 1):
            targets = torch.arange(-1, size + 1, dtype=dtype)  # along `axis`; 0.5 across (between two pixels)
            shape = (size, 2) if axis == 0 else (2, size)
            case = Case(n=1, c_in=2, c_out=3, size=shape, kernel=(1, 1), padding=0)
            generator = torch.Generator().manual_seed(size)
            offset = torch.full((1, 2, *shape), 0.5, dtype=dtype)  # a (dy, dx) pair per output pixel
            positions = targets[torch.randint(0, len(targets), shape, generator=generator)]
            base = torch.arange(size, dtype=dtype).view((-1, 1) if axis == 0 else (1, -1))
            offset[0, axis] = positions - base
            offset[0, 1 - axis] -= torch.arange(2, dtype=dtype).view((1, -1) if axis == 0 else (-1, 1))
            tensors = {
                "input": torch.randn(1, 2, *shape, generator=generator, dtype=dtype).requires_grad_(),
                "offset": offset.requires_grad_(),
                "weight": torch.randn(3, 2, 1, 1, generator=generator, dtype=dtype).requires_grad_(),
                "bias": torch.randn(3, generator=generator, dtype=dtype).requires_grad_(),
                "mask": None,
            }
            expected = _run(torchvision.ops.deform_conv2d, case, _on_cpu(tensors), None)
            actual = _run(dc.deform_conv2d, case, tensors, None)
            with torch.no_grad():
                actual["inference output"] = _inference_output(dc.deform_conv2d, case, tensors)
            expected["inference output"] = expected["output"]
            for name, ref in expected.items():
                err = (actual[name] - ref).abs().max().item() / (ref.abs().max().item() or 1.0)
                assert err <= tol, f"{name}: relative error {err:.3g} for size {size} along axis {axis}"
    assert set(calls) == {"grid_sample", "gathered"}, set(calls)


def test_dcnv1_far_outside_the_image_gives_zero_values_and_gradients(monkeypatch):
    calls = _recording_paths(monkeypatch)
    case = Case(mask=False, offsets="far")
    result = _run(dc.deform_conv2d, case, _inputs(case, torch.float64, seed=7), None)
    tensors = _inputs(case, torch.float64, seed=7)
    assert torch.equal(result["output"], tensors["bias"].detach().view(1, -1, 1, 1).expand_as(result["output"]))
    for name in ("grad_input", "grad_offset", "grad_weight"):
        assert result[name].abs().max() == 0, name
    with torch.no_grad():
        assert torch.equal(_inference_output(dc.deform_conv2d, case, tensors), result["output"])
    assert calls == ["grid_sample", "gathered"]


def test_dcnv1_nan_offsets_sample_nothing_in_inference(inference_path):
    """A NaN position adds 0, as one far outside the image does; the other taps of the same output position
    still count.  (torchvision's result for NaN is undefined: it floors NaN into an integer index.)"""
    case = Case(n=1, mask=False)
    tensors = _inputs(case, torch.float64, seed=3)
    tensors["offset"] = tensors["offset"].detach().clone()
    tensors["offset"][0, 4:6] = float("nan")  # the third tap's (dy, dx) everywhere
    reference = _on_cpu(tensors)
    reference["offset"] = reference["offset"].detach().clone()
    reference["offset"][0, 4:6] = -1000.0  # far outside: torchvision's zero for that tap, without NaN
    expected = _run(torchvision.ops.deform_conv2d, case, reference, None)["output"]
    actual = _inference_output(inference_path, case, tensors)
    torch.testing.assert_close(actual, expected, rtol=1e-12, atol=1e-12)


def test_grid_sample_chunking_is_exact(training_path, monkeypatch):
    case = Case(n=5, mask=False, offsets="border")
    expected = _run(training_path, case, _inputs(case, torch.float64, seed=5), None)
    batches = []
    grid_sample = dc.F.grid_sample

    def recorded(input, *args, **kwargs):
        batches.append(input.shape[0])
        return grid_sample(input, *args, **kwargs)

    monkeypatch.setattr(dc.F, "grid_sample", recorded)
    monkeypatch.setattr(dc, "_COLUMN_BUDGET_BYTES", 1)  # one sample per chunk
    actual = _run(training_path, case, _inputs(case, torch.float64, seed=5), None)
    assert batches == [1] * case.n
    # Per sample the same arithmetic, but not always bit for bit: a BLAS may block a batched product differently
    # for another batch size (on an AMD EPYC the outputs differed in the last bits); the weight and bias
    # gradients are sums over the batch, in another order.
    for name in ("output", "grad_input", "grad_offset", "grad_weight", "grad_bias"):
        torch.testing.assert_close(actual[name], expected[name], rtol=1e-13, atol=1e-13, msg=name)


def test_gathered_chunking_is_exact(inference_path, monkeypatch):
    case = Case(n=5, mask=False, offsets="border")
    tensors = _inputs(case, torch.float64, seed=5)
    expected = _inference_output(inference_path, case, tensors)
    batches = []
    product_table = dc._product_table

    def recorded(input, *args, **kwargs):
        batches.append(input.shape[0])
        return product_table(input, *args, **kwargs)

    monkeypatch.setattr(dc, "_product_table", recorded)
    monkeypatch.setattr(dc, "_TABLE_BUDGET_BYTES", 1)  # one sample per chunk
    actual = _inference_output(inference_path, case, tensors)
    assert batches == [1] * case.n
    torch.testing.assert_close(actual, expected, rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("path", ["training", "inference"])
def test_dcnv1_channels_last_and_non_contiguous_inputs(monkeypatch, path):
    case = Case(n=3, mask=False)
    tensors = _inputs(case, torch.float64, seed=11)
    strided = {k: None if v is None else v.detach() for k, v in tensors.items()}
    strided["input"] = strided["input"].contiguous(memory_format=torch.channels_last)
    strided["offset"] = strided["offset"].transpose(-1, -2).contiguous().transpose(-1, -2)
    strided["weight"] = strided["weight"].contiguous(memory_format=torch.channels_last)
    assert not strided["input"].is_contiguous() and not strided["offset"].is_contiguous()
    strided = {k: None if v is None else v.requires_grad_() for k, v in strided.items()}
    calls = _recording_paths(monkeypatch)
    if path == "training":
        expected = _run(dc.deform_conv2d, case, tensors, None)
        actual = _run(dc.deform_conv2d, case, strided, None)
        for name in expected:
            assert torch.equal(actual[name], expected[name]), name
    else:
        with torch.no_grad():
            expected, actual = (_inference_output(dc.deform_conv2d, case, t) for t in (tensors, strided))
        torch.testing.assert_close(actual, expected, rtol=1e-13, atol=1e-13)  # the 1x1 product's blocking may differ
    assert set(calls) == {"grid_sample" if path == "training" else "gathered"}, calls


def test_dcnv1_empty_batch_returns_empty_output_and_grads(monkeypatch):
    calls = _recording_paths(monkeypatch)
    case = Case(n=0, size=(6, 8), stride=2, mask=False)
    tensors = _inputs(case, torch.float32, seed=0)
    result = _run(dc.deform_conv2d, case, tensors, None)
    assert result["output"].shape == (0, case.c_out, *case.out_size())
    assert result["grad_weight"].abs().max() == 0 and result["grad_bias"].abs().max() == 0
    assert result["grad_input"].shape == (0, case.c_in, *case.size)
    assert result["grad_offset"].shape == (0, 18, *case.out_size())
    with torch.no_grad():
        assert _inference_output(dc.deform_conv2d, case, tensors).shape == (0, case.c_out, *case.out_size())
    assert calls == ["grid_sample", "gathered"]


@pytest.mark.parametrize("case, dtype, backend, paths", [
    (Case(mask=False), torch.float32, None, ["gathered", "grid_sample"]),
    (Case(mask=False), torch.float64, None, ["gathered", "grid_sample"]),
    (Case(mask=False), torch.float64, "auto", ["gathered", "grid_sample"]),
    (Case(mask=True), torch.float32, None, ["torch", "torch"]),  # DCNv2
    (Case(mask=False, groups=2, c_out=4), torch.float32, None, ["torch", "torch"]),
    (Case(mask=False, offset_groups=2), torch.float32, None, ["torch", "torch"]),
    (Case(mask=False), torch.float16, None, ["gathered", "grid_sample"]),  # computed in float32
    (Case(mask=False), torch.bfloat16, None, ["gathered", "grid_sample"]),
    (Case(mask=False), torch.float32, "torch", ["torch", "torch"]),  # a forced backend is honoured
], ids=str)
def test_dcnv1_dispatch(monkeypatch, case, dtype, backend, paths):
    """Which CPU path runs for an inference call and for a training call (the module, then backward)."""
    calls = _recording_paths(monkeypatch)
    if backend is not None:
        monkeypatch.setenv(dc._BACKEND_ENV, backend)
    tensors = _inputs(case, dtype, seed=0)
    layer = dc.DeformConv2d(case.c_in, case.c_out, case.kernel, padding=case.padding, groups=case.groups,
                            offset_groups=case.offset_groups).to(dtype)
    with torch.no_grad():
        layer(tensors["input"], tensors["offset"], tensors["mask"])
    layer(tensors["input"], tensors["offset"], tensors["mask"]).sum().backward()
    assert calls == paths


# ----------------------------------------------------------------------------------- Triton kernels

TRITON_CASES = [
    Case(),
    Case(n=3, c_in=6, c_out=4, size=(8, 5), stride=2, padding=2, dilation=2, offset_groups=3, mask=False),
    Case(n=1, c_in=3, c_out=3, size=(5, 6), kernel=(1, 1), padding=0, groups=3, bias=False),
    Case(n=2, c_in=4, c_out=4, size=(9, 9), kernel=(5, 5), stride=2, padding=2, groups=2, offsets="integer"),
    Case(n=2, c_in=6, c_out=4, size=(6, 7), groups=2, offset_groups=3, offsets="border"),
    Case(n=1, c_in=4, c_out=2, size=(5, 4), offsets="far"),
    Case(n=4, c_in=2, c_out=20, size=(4, 6), kernel=(3, 1), padding=1, offsets="border", bias=False),
    # several pixel tiles, channel blocks and output-channel blocks per program
    Case(n=1, c_in=40, c_out=70, size=(9, 10), offset_groups=2),
    Case(n=0),
]


@pytest.mark.parametrize("case", TRITON_CASES, ids=str)
@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
def test_triton_matches_torchvision(triton_backend, case, dtype, tol):
    _assert_matches_torchvision(triton_backend, case, dtype, tol, seed=case.seed(), device=TRITON_DEVICE)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_triton_half_precision(triton_backend, dtype):
    errors = _half_precision_errors(triton_backend, Case(n=2, c_in=16, c_out=16, size=(6, 7)), dtype, TRITON_DEVICE)
    assert max(errors.values()) <= 3e-2, errors


def test_triton_only_requested_gradients(triton_backend):
    case = Case(n=1, mask=True)
    tensors = _inputs(case, torch.float32, seed=17, device=TRITON_DEVICE)
    reference = _on_cpu(tensors)
    for name in ("input", "weight"):
        tensors[name].requires_grad_(False)
        reference[name].requires_grad_(False)
    expected = _run(torchvision.ops.deform_conv2d, case, reference, None)
    actual = _run(triton_backend, case, tensors, None)
    assert set(actual) == set(expected) == {"output", "grad_offset", "grad_bias", "grad_mask"}
    for name, ref in expected.items():
        torch.testing.assert_close(actual[name].cpu(), ref, rtol=1e-5, atol=1e-5 * ref.abs().max().item())


def test_triton_model_outputs_equal_torch_path(monkeypatch):
    """A whole VisTR forward gives the same outputs with either DCN path (the model calls deform_conv itself)."""
    if TRITON_DEVICE is None:
        pytest.skip("no GPU: these run through the interpreter in test_triton_kernels_in_interpreter")
    from vistr.configuration_vistr import VisTRConfig
    from vistr.modeling_vistr import VisTRForVideoInstanceSegmentation

    torch.manual_seed(0)
    config = VisTRConfig(backbone="resnet18", num_frames=2, encoder_layers=1, decoder_layers=1, ffn_dim=64)
    model = VisTRForVideoInstanceSegmentation(config).eval().to(TRITON_DEVICE)
    torch.nn.init.normal_(model.mask_head.conv_offset.weight, std=0.5)  # zero offsets would hide the sampling
    clip = torch.randn(1, 2, 3, 64, 96, device=TRITON_DEVICE)
    outputs = {}
    for backend in ("torch", "triton"):
        monkeypatch.setenv(dc._BACKEND_ENV, backend)
        with torch.no_grad():
            outputs[backend] = model(pixel_values=clip).pred_masks.cpu()
    scale = outputs["torch"].abs().max().item()
    torch.testing.assert_close(outputs["triton"], outputs["torch"], rtol=1e-5, atol=1e-5 * scale)


@pytest.mark.skipif(INTERPRETED or dc.triton is None, reason="needs compiled (not interpreted) Triton kernels")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_kernels_compile_for_sm90(dtype):
    """Compile every kernel for an H100 without a GPU: catches what only the compiler rejects."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    case = Case(n=2, c_in=48, c_out=24, size=(15, 27))
    tensors = _inputs(case, dtype, seed=0, device="meta")
    geo = dc._geometry(*(tensors[k] for k in ("input", "offset", "weight", "bias", "mask")), 1, 1, 1)
    constants = dict(dc._launch_config(tensors["input"], tensors["weight"], geo).constants)
    options = {"num_warps": constants.pop("num_warps"), "num_stages": constants.pop("num_stages")}
    element = "*" + {torch.float32: "fp32", torch.bfloat16: "bf16"}[dtype]
    kernels = [
        (dc._forward_kernel, {}, dict(HAS_MASK=True, HAS_BIAS=True)),
        (dc._backward_data_kernel, {"gx_ptr": "*fp32"}, dict(HAS_MASK=True, NEED_GX=True)),
        (dc._backward_weight_kernel, {"partial_ptr": "*fp32"}, dict(HAS_MASK=False)),
        (dc._backward_bias_kernel, {"partial_ptr": "*fp32"}, dict(ACC=constants["ACC"], BLOCK_L=256)),
    ]
    for kernel, pointers, extra in kernels:
        names = kernel.arg_names
        kernel_constants = {k: v for k, v in {**constants, "BLOCK_L": 64, **extra}.items() if k in names}
        signature = {name: "constexpr" if name in kernel_constants else
                     pointers.get(name, element if name.endswith("_ptr") else "i32") for name in names}
        source = ASTSource(kernel, signature, kernel_constants)
        compiled = dc.triton.compile(source, target=GPUTarget("cuda", 90, 32), options=options)
        assert compiled.asm["cubin"], kernel.__name__


@pytest.mark.skipif(INTERPRETED, reason="already running inside the interpreter subprocess")
@pytest.mark.skipif(dc.triton is None, reason="triton is not importable")
def test_triton_kernels_in_interpreter():
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    env.pop(dc._BACKEND_ENV, None)
    command = [sys.executable, "-m", "pytest", __file__, "-q", "-k", "test_triton_ and not in_interpreter",
               "-p", "no:cacheprovider"]
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0 and " passed" in result.stdout, result.stdout[-6000:] + result.stderr[-3000:]
    assert "skipped" not in result.stdout, result.stdout[-3000:]


def test_deform_conv_bf16_at_the_full_mask_head_size():
    """The bf16 DCNv1 path at the mask head's size for 300x540 inputs (75x135, 48 -> 24 channels), against
    float64 on the same bf16 values: within one bf16 rounding (positions held in bf16 would be off by up to
    half a pixel at this width)."""
    generator = torch.Generator().manual_seed(0)
    input = torch.randn(2, 48, 75, 135, generator=generator).relu().to(torch.bfloat16)
    offset = (torch.randn(2, 18, 75, 135, generator=generator) * 2).to(torch.bfloat16)
    weight = (torch.randn(24, 48, 3, 3, generator=generator) * 0.1).to(torch.bfloat16)
    expected = dc.deform_conv2d(input.double(), offset.double(), weight.double(), padding=1)
    for layout in (torch.contiguous_format, torch.channels_last):  # the mask head hands it channels-last
        actual = dc.deform_conv2d(input.contiguous(memory_format=layout), offset.contiguous(memory_format=layout),
                                  weight, padding=1)
        assert actual.dtype == torch.bfloat16
        assert ((actual.double() - expected).abs().max() / expected.abs().max()).item() <= 1e-2
