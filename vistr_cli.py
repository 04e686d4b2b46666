"""The `vistr` command: one entry point for converting checkpoints and checking converted models.

    vistr convert --checkpoint vistr_r50.pth --output vistr-r50
    vistr inspect vistr-r50
"""

from __future__ import annotations

import argparse
import sys

import convert_checkpoint


def _inspect(args: argparse.Namespace) -> None:
    """Load a converted folder through the Auto classes and run one random clip through it."""
    import torch
    from transformers import AutoModelForInstanceSegmentation

    import modeling_vistr  # noqa: F401  (registers VisTR with the Auto classes)

    model = AutoModelForInstanceSegmentation.from_pretrained(args.model).eval()
    config = model.config
    generator = torch.Generator().manual_seed(0)
    clip = torch.randn(1, config.num_frames, 3, args.height, args.width, generator=generator)
    with torch.no_grad():
        outputs = model(pixel_values=clip)
    print(f"{type(model).__name__} from {args.model}: {config.num_frames} frames x {config.num_queries_per_frame} queries")
    print(f"  input pixel_values {list(clip.shape)}")
    for name in ("logits", "pred_boxes", "pred_masks"):
        print(f"  {name:<10} {list(getattr(outputs, name).shape)}")
    if outputs.auxiliary_outputs:
        print(f"  auxiliary_outputs: {len(outputs.auxiliary_outputs)} decoder layers x (logits, pred_boxes)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vistr", description="VisTR video instance segmentation")
    commands = parser.add_subparsers(dest="command", required=True)

    convert = commands.add_parser("convert", help="convert an original VisTR .pth checkpoint")
    convert_checkpoint.add_arguments(convert)
    convert.set_defaults(handler=convert_checkpoint.run)

    inspect = commands.add_parser("inspect", help="load a converted model and print its output shapes")
    inspect.add_argument("model", help="converted model folder or Hub id")
    inspect.add_argument("--height", type=int, default=128)
    inspect.add_argument("--width", type=int, default=160)
    inspect.set_defaults(handler=_inspect)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        args.handler(args)
    except convert_checkpoint.ConversionError as error:
        sys.exit(f"error: {error}")


if __name__ == "__main__":
    main()
