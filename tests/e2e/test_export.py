"""Exported VisTR against the eager model: torch.export with a dynamic batch, height and width, ONNX Runtime on the
ONNX file, the traced deformable convolution against torchvision's, and `vistr export`'s refusals.

Every expected value comes from an independent computation: the eager model, torchvision's deformable convolution
in float64, `torch.nextafter`. The ONNX test needs the export extra (onnx, onnxscript, onnxruntime): without it it
skips, and with CI=true it fails instead (the rule of conftest's require_parity_dir). The model is traced once for
the module (the slowest step: tens of seconds).
"""

from __future__ import annotations

import importlib.util
import math
import os
import sys
from pathlib import Path

import pytest
import torch
import torchvision
from torch._dynamo.testing import CompileCounterWithBackend
from vistr.deform_conv import _next_up, deform_conv2d
from vistr.modeling_vistr import VisTRForVideoInstanceSegmentation
from vistr.tools import cli
from vistr.tools import export as model_export

MODEL = Path(__file__).resolve().parents[2] / "assets" / "vistr-tiny-synthetic"
OUTPUTS = ("logits", "pred_boxes", "pred_masks")
# (batch, height, width) to run at: neither the traced example's (2, 64, 96) nor one another's
SIZES = ((1, 128, 64), (3, 96, 160))


def require_export_extra() -> None:
    """Skip without the export extra; fail under CI=true, which must run the ONNX test."""
    missing = [name for name in model_export.ONNX_PACKAGES if importlib.util.find_spec(name) is None]
    if missing:
        message = f"the ONNX test needs the export extra ({', '.join(missing)}): pip install -e \".[export]\""
        if os.environ.get("CI") == "true":
            pytest.fail(message + "; CI must run it")
        pytest.skip(message)


@pytest.fixture(scope="module")
def model() -> VisTRForVideoInstanceSegmentation:
    return VisTRForVideoInstanceSegmentation.from_pretrained(MODEL).eval()


@pytest.fixture(scope="module")
def program(model) -> torch.export.ExportedProgram:
    return model_export.export_program(model)


def clip(model, batch: int, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Random frames with the bottom and right quarter marked as padding, so that pixel_mask matters."""
    generator = torch.Generator().manual_seed(batch * height + width)
    pixel_values = torch.randn(batch, model.config.num_frames, 3, height, width, generator=generator)
    pixel_mask = torch.ones(batch, model.config.num_frames, height, width, dtype=torch.long)
    pixel_mask[..., 3 * height // 4 :, :] = 0
    pixel_mask[..., 3 * width // 4 :] = 0
    return pixel_values, pixel_mask


def eager(model, pixel_values: torch.Tensor, pixel_mask: torch.Tensor) -> list[torch.Tensor]:
    with torch.no_grad():
        outputs = model(pixel_values=pixel_values, pixel_mask=pixel_mask)
    return [getattr(outputs, name) for name in OUTPUTS]


def assert_matches(got, expected) -> None:
    """float32 round-off through the network: a millionth-order share of each output's largest value."""
    for name, g, e in zip(OUTPUTS, got, expected):
        assert g.shape == e.shape, name
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-4 * float(e.abs().max()), msg=name)


# ------------------------------------------------------------------------------------------------ nextafter


def _bits_equal(got: torch.Tensor, want: torch.Tensor) -> torch.Tensor:
    """Equal bit for bit (so -0 differs from +0), NaN for NaN."""
    as_int = {2: torch.int16, 4: torch.int32, 8: torch.int64}[want.element_size()]
    return (got.view(as_int) == want.view(as_int)) | (got.isnan() & want.isnan())


def _edge_values(dtype: torch.dtype) -> torch.Tensor:
    """±0, ±inf, NaN, ±max, every power of two and its neighbours (subnormals included), integers and the
    -0.5 boundaries of the grid, large values, and random bit patterns."""
    finfo = torch.finfo(dtype)
    as_int = {4: torch.int32, 8: torch.int64}[finfo.bits // 8]
    exponents = torch.arange(round(math.log2(finfo.smallest_normal * finfo.eps)), round(math.log2(finfo.max)) + 1)
    powers = torch.exp2(exponents.to(torch.float64)).to(dtype)
    integers = torch.arange(-70000, 70000, dtype=dtype)
    around_half = torch.tensor([-0.5, 0.5, -1.5, -2.5, -1.0, 1.0, 2.0], dtype=dtype)
    special = torch.tensor([0.0, -0.0, math.inf, -math.inf, math.nan, finfo.max, -finfo.max, 1e30, -1e30, 3e38],
                           dtype=torch.float64).to(dtype)  # fmt: skip
    generator = torch.Generator().manual_seed(0)
    random_bits = torch.randint(torch.iinfo(as_int).min, torch.iinfo(as_int).max, (1 << 20,), dtype=torch.int64,
                                generator=generator).to(as_int).view(dtype)  # fmt: skip
    values = torch.cat([powers, integers, around_half, special, random_bits])
    values = torch.cat([values, -values])
    inf = values.new_tensor(math.inf)
    return torch.cat([values, torch.nextafter(values, inf), torch.nextafter(values, -inf)])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_next_up_is_nextafter_for_every_half_precision_value(dtype):
    values = torch.arange(-(1 << 15), 1 << 15, dtype=torch.int32).to(torch.int16).view(dtype)
    want = torch.nextafter(values, values.new_tensor(math.inf))
    assert bool(_bits_equal(_next_up(values), want).all())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_next_up_is_nextafter_at_the_edge_values(dtype):
    values = _edge_values(dtype)
    want = torch.nextafter(values, values.new_tensor(math.inf))
    equal = _bits_equal(_next_up(values), want)
    assert bool(equal.all()), values[~equal][:10]


# ------------------------------------------------------------------------------------------------ traced DCN


@pytest.mark.parametrize("dtype, tolerance", [(torch.float64, 1e-12), (torch.bfloat16, 2e-2)])
def test_traced_deformable_convolution_matches_torchvision(dtype, tolerance):
    """The path torch.compile and torch.export take (one pass over the batch, no size-dependent loop), at two
    batch and frame sizes in one graph (the eager path's chunk loop would fix both and compile again), against
    torchvision in float64 (offsets reaching past the border)."""
    compiles = CompileCounterWithBackend("eager")
    compiled = torch.compile(deform_conv2d, backend=compiles, dynamic=True, fullgraph=True)
    for batch, height, width in ((2, 7, 9), (5, 12, 6)):
        generator = torch.Generator().manual_seed(batch)
        input = torch.randn(batch, 4, height, width, generator=generator, dtype=torch.float64)
        offset = 3 * torch.randn(batch, 18, height, width, generator=generator, dtype=torch.float64)
        weight = torch.randn(6, 4, 3, 3, generator=generator, dtype=torch.float64)
        bias = torch.randn(6, generator=generator, dtype=torch.float64)
        want = torchvision.ops.deform_conv2d(input, offset, weight, bias, padding=1)
        got = compiled(input.to(dtype), offset.to(dtype), weight.to(dtype), bias.to(dtype), padding=1)
        torch.testing.assert_close(got.double(), want, rtol=tolerance, atol=tolerance * float(want.abs().max()))
    assert compiles.frame_count == 1


# ------------------------------------------------------------------------------------------------ torch.export


def test_the_exported_program_keeps_batch_height_and_width_dynamic(program):
    """export_program raises where torch.export fixes a marked size; the inputs' sizes are also symbols."""
    pixel_values = next(node for node in program.graph.nodes if node.name == "pixel_values").meta["val"]
    assert [isinstance(size, torch.SymInt) for size in pixel_values.shape] == [True, False, False, True, True]
    ranges = {str(symbol): (int(bound.lower), bound.upper) for symbol, bound in program.range_constraints.items()}
    assert sorted(lower for lower, _ in ranges.values()) == [1, 2, 2, 64, 64], ranges


@pytest.mark.parametrize("size", SIZES, ids=str)
def test_the_exported_program_equals_the_eager_model(model, program, size):
    inputs = clip(model, *size)
    assert_matches(program.module()(*inputs), eager(model, *inputs))


def test_onnx_runtime_equals_the_eager_model(model, program, tmp_path):
    require_export_extra()
    import onnxruntime

    path = tmp_path / "vistr.onnx"
    model_export.export_onnx(model, path, program)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    shapes = {value.name: value.shape for value in session.get_inputs()}
    assert [isinstance(size, str) for size in shapes["pixel_values"]] == [True, False, False, True, True], shapes
    for size in SIZES:
        pixel_values, pixel_mask = clip(model, *size)
        got = session.run(list(OUTPUTS), {"pixel_values": pixel_values.numpy(), "pixel_mask": pixel_mask.numpy()})
        assert_matches([torch.from_numpy(array) for array in got], eager(model, pixel_values, pixel_mask))


# ------------------------------------------------------------------------------------------------ vistr export


def run_cli(capsys, *args: str) -> tuple[int, str]:
    """`vistr ARGS` in this process: its exit code and what it printed to stderr."""
    with pytest.raises(SystemExit) as exit:
        cli.main(list(args))
    return exit.value.code, capsys.readouterr().err


def test_vistr_export_writes_a_program_that_loads_and_runs(model, program, tmp_path, monkeypatch, capsys):
    """The command's own steps (staging, saving, loading back, its check, the rename) on the module's program:
    the bundled model that the command loads is the one traced here."""
    monkeypatch.setattr(model_export, "export_program", lambda _: program)
    output = tmp_path / "vistr.pt2"
    cli.main(["export", "--output", str(output)])
    assert "exported:" in capsys.readouterr().out
    assert sorted(path.name for path in tmp_path.iterdir()) == ["vistr.pt2"]
    inputs = clip(model, *SIZES[1])
    assert_matches(torch.export.load(output).module()(*inputs), eager(model, *inputs))


@pytest.mark.parametrize("suffix", [".pt2", ".onnx"])
def test_vistr_export_refuses_to_overwrite(tmp_path, capsys, suffix):
    output = tmp_path / f"model{suffix}"
    output.write_text("precious")
    code, err = run_cli(capsys, "export", "--output", str(output))
    assert code == 2 and err.count("\n") == 1 and "already exists; pass --overwrite" in err, err
    assert output.read_text() == "precious" and sorted(tmp_path.iterdir()) == [output]


def test_vistr_export_names_a_missing_extra_in_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxscript", None)  # import onnxscript now raises ModuleNotFoundError
    code, err = run_cli(capsys, "export", "--output", str(tmp_path / "model.onnx"))
    assert code == 2 and err.count("\n") == 1, err
    assert "needs the package onnxscript" in err and 'pip install -e ".[export]"' in err, err
    assert list(tmp_path.iterdir()) == []


def test_vistr_export_refuses_an_unknown_format(tmp_path, capsys):
    code, err = run_cli(capsys, "export", "--output", str(tmp_path / "model.tflite"))
    assert code == 2 and err.count("\n") == 1 and "unknown format '.tflite'" in err, err
