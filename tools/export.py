"""`vistr export`: a VisTR model as a torch.export program (.pt2) or an ONNX model (.onnx), for any batch size and
any frame size that is a multiple of 32.

    vistr export --output vistr.onnx                       # the bundled model
    vistr export --model vistr-r50 --output vistr-r50.pt2

    program = export_program(model)                        # torch.export.ExportedProgram
    export_onnx(model, "vistr.onnx", program)              # the same program, as ONNX

Inputs: `pixel_values` [batch, num_frames, 3, height, width] (float32) and `pixel_mask` [batch, num_frames, height,
width] (int64, 1 = real pixel), as the video processor gives them; outputs: `logits`, `pred_boxes` and
`pred_masks`, what its post-processing reads. The frame count is the model's (`config.num_frames`).

Why multiples of 32: the mask head adds each backbone level to the next coarser one, with a shortcut where the
finer level is exactly twice as large (a broadcast add instead of an upsampled copy), a choice made on the sizes.
A traced program keeps the choice of its example for every size, so the sizes it accepts must all make the same
one: at multiples of 32 each level is exactly half the one before it, for backbones of stride 16 (dilated) and
32 alike. The video processor pads to them with `pad_size_divisor=32`.
"""

from __future__ import annotations

import argparse
import math
import operator
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import Tensor, nn
from vistr.optional_dependencies import require
from vistr.tools.outputs import Outputs, UsageError, shown

INPUT_NAMES = ("pixel_values", "pixel_mask")
OUTPUT_NAMES = ("logits", "pred_boxes", "pred_masks")
SIZE_MULTIPLE = 32
SUFFIXES = (".pt2", ".onnx")
# what ONNX export and its check need: the `export` extra of pyproject.toml
ONNX_PACKAGES = ("onnx", "onnxscript", "onnxruntime")
# The example the program is traced with: every dynamic size at least 2 and all of them distinct, so that the
# tracer takes none of them for a constant (sizes 0 and 1 are special-cased) or for another (equal sizes).
EXAMPLE_BATCH, EXAMPLE_SIZE = 2, (2 * SIZE_MULTIPLE, 3 * SIZE_MULTIPLE)
# The size `vistr export` checks the written file at against the model: other than the example's.
CHECK_BATCH, CHECK_SIZE = 1, (3 * SIZE_MULTIPLE, 4 * SIZE_MULTIPLE)
# largest difference from the model the check accepts, relative to the largest output value (float32 round-off
# through a few dozen layers is far below it, a wrong operator far above it)
CHECK_TOLERANCE = 1e-4


class _Segmentation(nn.Module):
    """The model with an exported program's signature: (pixel_values, pixel_mask) -> (logits, pred_boxes,
    pred_masks). The model's own output also holds the hidden states and every decoder layer's predictions, which
    an exported file would otherwise carry as a dozen unnamed outputs."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, pixel_values: Tensor, pixel_mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        outputs = self.model(pixel_values=pixel_values, pixel_mask=pixel_mask)
        return tuple(getattr(outputs, name) for name in OUTPUT_NAMES)


def example_inputs(model: nn.Module, batch: int = EXAMPLE_BATCH, size: tuple[int, int] = EXAMPLE_SIZE,
                   seed: int = 0) -> tuple[Tensor, Tensor]:  # fmt: skip
    """Random `pixel_values` and an all-ones `pixel_mask` of `batch` clips of `size`, on the model's device."""
    parameter = next(model.parameters())
    frames = model.config.num_frames
    generator = torch.Generator().manual_seed(seed)
    pixel_values = torch.randn(batch, frames, model.config.num_channels, *size, generator=generator)
    pixel_mask = torch.ones(batch, frames, *size, dtype=torch.long)
    return pixel_values.to(parameter.device, parameter.dtype), pixel_mask.to(parameter.device)


def dynamic_shapes() -> dict[str, dict[int, object]]:
    """The dynamic axes of both inputs: the batch (from 1) and the height and width (multiples of 32 from 64;
    32 itself would make the coarsest level 1 pixel, a size the tracer treats as a constant)."""
    from torch.export import Dim

    batch = Dim("batch", min=1)
    height, width = (SIZE_MULTIPLE * Dim(f"{axis}_blocks", min=2) for axis in ("height", "width"))
    return {"pixel_values": {0: batch, 3: height, 4: width}, "pixel_mask": {0: batch, 2: height, 3: width}}


def export_program(model: nn.Module) -> torch.export.ExportedProgram:
    """`model` (a `VisTRForVideoInstanceSegmentation` in eval mode) traced by `torch.export` with a dynamic batch,
    height and width, ready for `torch.export.save`. Raises torch.export's error where a size would be fixed to
    the example's."""
    if model.training:
        raise ValueError("the model is in training mode; call model.eval() first (exported programs are for inference)")
    program = torch.export.export(_Segmentation(model), example_inputs(model), dynamic_shapes=dynamic_shapes(),
                                  strict=False)  # fmt: skip
    _integer_ceilings(program)
    return program


def _integer_ceilings(program: torch.export.ExportedProgram) -> None:
    """Rewrite each ceil(a / b) of sizes in `program` as -((-a) // b), in place.

    timm's "same"-padded max pooling (the small test backbones) pads by ceil(size / stride) of the traced size,
    and `torch.export.save` cannot write a `math.ceil` node; it writes negation and floor division, which give
    the same integer.
    """
    graph = program.graph_module.graph
    for node in list(graph.nodes):
        quotient = node.args[0] if node.target is math.ceil else None
        if getattr(quotient, "target", None) is not operator.truediv:
            continue
        dividend, divisor = quotient.args
        if not all(isinstance(_value(arg), (int, torch.SymInt)) for arg in (dividend, divisor)):
            continue  # not a quotient of integers: left as it is
        with graph.inserting_before(node):
            ceiling = dividend
            for function, args in ((operator.neg, ()), (operator.floordiv, (divisor,)), (operator.neg, ())):
                ceiling = graph.call_function(function, (ceiling, *args))
                ceiling.meta["val"] = function(*(_value(arg) for arg in ceiling.args))
        node.replace_all_uses_with(ceiling)
        graph.erase_node(node)
    graph.eliminate_dead_code()
    program.graph_module.recompile()


def _value(argument: object) -> object:
    """A graph argument's traced value: a node's symbolic integer, or the constant itself."""
    return argument.meta["val"] if isinstance(argument, torch.fx.Node) else argument


def require_onnx_packages() -> None:
    """Import the packages ONNX export needs; a missing one is one line naming it and the `export` extra."""
    for package in ONNX_PACKAGES:
        try:
            require(package, "ONNX export")
        except ImportError as error:
            raise ImportError(f'{error}; the export extra has all it needs: pip install -e ".[export]"') from None


def export_onnx(model: nn.Module, path: str | Path, program: torch.export.ExportedProgram | None = None) -> None:
    """Write `model` to `path` as an ONNX model with a dynamic batch, height and width (one file, weights inside),
    converted from `program` (`export_program(model)`, traced here when not given)."""
    require_onnx_packages()
    program = export_program(model) if program is None else program
    # the example and dynamic shapes only name the ONNX inputs' axes: an exported program is not traced again;
    # both inputs share their axes, which torch.onnx would warn about for each axis
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="# The axis name", category=UserWarning)
        torch.onnx.export(program, example_inputs(model), path, dynamo=True, external_data=False, verbose=False,
                          dynamic_shapes=dynamic_shapes(), input_names=INPUT_NAMES,
                          output_names=OUTPUT_NAMES)  # fmt: skip


def run_onnx(path: str | Path) -> Callable[[Tensor, Tensor], tuple[Tensor, ...]]:
    """An ONNX file as a function of (pixel_values, pixel_mask) -> outputs, run by ONNX Runtime on the CPU."""
    onnxruntime = require("onnxruntime", "running an exported ONNX model")
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])

    def run(pixel_values: Tensor, pixel_mask: Tensor) -> tuple[Tensor, ...]:
        feed = {"pixel_values": pixel_values.cpu().numpy(), "pixel_mask": pixel_mask.cpu().numpy()}
        return tuple(torch.from_numpy(array) for array in session.run(list(OUTPUT_NAMES), feed))

    return run


def largest_difference(model: nn.Module, run: Callable[[Tensor, Tensor], Sequence[Tensor]],
                       inputs: tuple[Tensor, Tensor]) -> float:  # fmt: skip
    """The largest difference between `run`'s outputs and the model's on `inputs`, relative to the largest
    output value of the model."""
    with torch.no_grad():
        expected = _Segmentation(model)(*inputs)
        got = run(*inputs)
    scale = max(float(tensor.abs().max()) for tensor in expected)
    return max(float((g.to(e) - e).abs().max()) for g, e in zip(got, expected)) / max(scale, 1.0)


# ----------------------------------------------------------------------------------------------------- command


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments of `vistr export`."""
    parser.add_argument("--model", help="converted or trained model folder, or Hub id (default: the bundled model)")
    parser.add_argument("--output", required=True,
                        help="the file to write: .pt2 (torch.export) or .onnx (needs the export extra)")
    parser.add_argument("--overwrite", action="store_true", help="replace --output if it exists")


def _check_output(outputs: Outputs, args: argparse.Namespace) -> None:
    """--output is a .pt2 or .onnx file this command may write: new, or existing with --overwrite."""
    target = outputs.check_file(args.output, "--output", SUFFIXES)
    if target.exists() and not args.overwrite:
        raise UsageError(f"--output {args.output} already exists; pass --overwrite to replace it, or choose a new path")
    if target.suffix.lower() == ".onnx":
        try:
            require_onnx_packages()
        except ImportError as error:
            raise UsageError(str(error)) from None


def run(args: argparse.Namespace) -> None:
    """`vistr export`: trace the model, write it staged, check the written file against the model, then rename it
    into place."""
    from vistr.tools import cli  # the command's model loading and defaults; imported late, cli imports this module

    model_path = args.model or str(cli.BUNDLED_MODEL)
    with Outputs(inputs=cli.model_paths(model_path)) as outputs:
        _check_output(outputs, args)
        staged = outputs.file(args.output, "--output", SUFFIXES)
        model = cli.load_model(model_path, dtype=torch.float32).eval()
        print(f"model: {model_path}; tracing with a dynamic batch, height and width ...")
        program = export_program(model)
        if staged.suffix.lower() == ".onnx":
            export_onnx(model, staged, program)
            written = run_onnx(staged)
        else:
            torch.export.save(program, staged)
            written = torch.export.load(staged).module()
        difference = largest_difference(model, written, example_inputs(model, CHECK_BATCH, CHECK_SIZE))
        if not difference <= CHECK_TOLERANCE:
            raise ValueError(f"the exported file's outputs differ from the model's by {difference:.1e} of their "
                             f"largest value (more than {CHECK_TOLERANCE:.0e}); nothing was written")  # fmt: skip
    frames = model.config.num_frames
    print(f"exported: {shown(args.output)}: pixel_values [batch, {frames}, 3, height, width] and pixel_mask [batch, "
          f"{frames}, height, width], height and width multiples of {SIZE_MULTIPLE} from {2 * SIZE_MULTIPLE} -> "
          f"{', '.join(OUTPUT_NAMES)} (checked against the model at batch {CHECK_BATCH}, {CHECK_SIZE[0]} x "
          f"{CHECK_SIZE[1]}: largest difference {difference:.1e} of the largest output)")  # fmt: skip
