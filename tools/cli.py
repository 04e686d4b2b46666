"""The `vistr` command: one entry point for converting checkpoints and checking converted models.

    vistr convert --checkpoint vistr_r50.pth --output vistr-r50
    vistr inspect vistr-r50
    vistr segment                      # the bundled model on the bundled sample video -> vistr-output/
    vistr segment video.mp4 --model vistr-r50 --output results.json --overlay overlay.mp4
    vistr segment --annotations valid.json --frames-root valid/JPEGImages --model vistr-r50 --output results.json
    vistr make-synthetic synthetic-vis --videos 200 --seed 0
    vistr evaluate --annotations valid.json --results results.json
"""

from __future__ import annotations

import argparse
import logging
import sys
from functools import partial
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from vistr import convert_checkpoint
from vistr.tools import evaluation_youtube_vis, youtube_vis
from vistr.tools.youtube_vis import YouTubeVISError
from vistr.video_io import VideoReadError


class ModelNotFoundError(ValueError):
    """A --model that is neither a model folder nor a reachable Hub id."""


def _load_model(model_path: str, **kwargs):
    """The model of a folder or Hub id through the Auto class; one line naming the problem if there is none."""
    from transformers import AutoModelForInstanceSegmentation
    from vistr import modeling_vistr  # noqa: F401  (registers VisTR with the Auto classes)

    path = Path(model_path)
    looks_local = path.is_absolute() or model_path.startswith(".") or model_path.count("/") > 1
    if not path.is_dir() and looks_local:
        raise ModelNotFoundError(
            f"--model {model_path}: no such folder; pass a folder written by `vistr convert` or training"
        )
    hub_logger = logging.getLogger("huggingface_hub")
    level = hub_logger.level
    hub_logger.setLevel(logging.ERROR)  # its retry messages would bury the one line below
    try:
        return AutoModelForInstanceSegmentation.from_pretrained(model_path, **kwargs)
    except OSError as error:
        reason = str(error).strip().splitlines()[0]
        raise ModelNotFoundError(
            f"--model {model_path}: neither a model folder nor a reachable Hub model id ({reason}); pass a folder "
            "written by `vistr convert` or training, or a Hub id such as user/vistr-r50 (with network access)"
        ) from None
    finally:
        hub_logger.setLevel(level)


def _inspect(args: argparse.Namespace) -> None:
    """Load a converted folder through the Auto classes and run one random clip through it."""
    import torch

    model = _load_model(args.model).eval()
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


DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}
ASSETS = Path(__file__).resolve().parent.parent / "assets"  # the package root's assets/
BUNDLED_MODEL = ASSETS / "vistr-tiny-synthetic"
SAMPLE_VIDEO = ASSETS / "sample.mp4"
DEFAULT_OUTPUT_DIR = "vistr-output"


def _load_for_inference(model_path: str, device: str | None, dtype: str):
    """Model (eval, on device, in dtype) and its video processor (the default one if the folder has none)."""
    import torch
    from accelerate import PartialState
    from transformers import AutoVideoProcessor
    from vistr.image_processing_vistr import VisTRVideoProcessor

    # Under `accelerate launch` / torchrun each process takes its own GPU, or the CPU (gloo) when there is none.
    use_cpu = device == "cpu" or (device is None and not torch.cuda.is_available())
    state = PartialState(cpu=use_cpu)  # created before anything else asks for it, so the flag holds
    device = device or state.device
    model = _load_model(model_path, dtype=getattr(torch, DTYPES[dtype]))
    model = model.to(device).eval()
    try:
        processor = AutoVideoProcessor.from_pretrained(model_path)
    except (OSError, ValueError):
        processor = VisTRVideoProcessor(num_queries_per_frame=model.config.num_queries_per_frame)
    return model, processor


def _apply_demo_defaults(args: argparse.Namespace) -> None:
    """Without a model, input or output, `vistr segment` runs the bundled model on the bundled sample video
    and writes into DEFAULT_OUTPUT_DIR: the first command a new user runs needs no download."""
    if args.model is None:
        args.model = str(BUNDLED_MODEL)
        print(f"model: {BUNDLED_MODEL} (bundled; pass --model for another)")
    if not args.inputs and args.annotations is None:
        args.inputs = [str(SAMPLE_VIDEO)]
        print(f"input: {SAMPLE_VIDEO} (bundled sample video)")
    if args.output is None and args.annotations is None:
        args.output = str(Path(DEFAULT_OUTPUT_DIR) / "results.json")
        args.overlay = args.overlay or str(Path(DEFAULT_OUTPUT_DIR) / "overlay.mp4")


def _segment(args: argparse.Namespace) -> None:
    """`vistr segment`: the given videos, or with --annotations a whole YouTube-VIS split."""
    _apply_demo_defaults(args)
    split_job = args.annotations is not None
    if split_job and args.output is None:
        raise YouTubeVISError("with --annotations give --output, the results JSON to write")
    if split_job and (args.inputs or args.overlay or not args.frames_root):
        raise YouTubeVISError("with --annotations give --frames-root and no input videos or --overlay")
    if not split_job and (args.frames_root or args.zip or args.evaluate):
        raise YouTubeVISError("--frames-root, --zip and --evaluate go with --annotations (a YouTube-VIS split)")
    if not 0.0 <= args.threshold <= 1.0:
        raise YouTubeVISError(f"--threshold must be between 0 and 1, not {args.threshold}")
    model, processor = _load_for_inference(args.model, args.device, args.dtype)
    if split_job:
        from vistr.tools.youtube_vis_inference import run_split

        run_split(model, processor, args.annotations, args.frames_root, args.output, zip_path=args.zip,
                  score=args.evaluate, stride=args.stride, mask_threshold=args.mask_threshold, model_name=args.model)
    else:
        _segment_inputs(args, model, processor)


def _segment_inputs(args: argparse.Namespace, model, processor) -> None:
    """Segment each input, then write the YouTube-VIS results JSON and the overlays (all or nothing)."""
    import json

    from tqdm.auto import tqdm
    from vistr.pipeline_vistr import VideoSegmenter
    from vistr.tools.overlay import overlay_frames
    from vistr.tools.youtube_vis_inference import video_results
    from vistr.video_io import atomic_path, iter_frames, video_fps, write_video

    segmenter = VideoSegmenter(model, processor, stride=args.stride, mask_threshold=args.mask_threshold)
    videos = []
    with tqdm(args.inputs, desc="videos", unit="video") as bar:
        for source in bar:
            with tqdm(desc=f"clips of {Path(source).name}", unit="clip", leave=False) as clips:
                videos.append(segmenter(source, on_clip=clips.update))
    results = [result for video_id, video in enumerate(videos, start=1) for result in video_results(video_id, video)]
    with atomic_path(args.output) as temporary:
        temporary.write_text(json.dumps(results))
    for video_id, (source, video) in enumerate(zip(args.inputs, videos), start=1):
        _print_found(video_id, source, video, model.config.id2label, args.threshold)
    print(f"results: {args.output} (every instance slot, as the YouTube-VIS benchmark expects)")
    for source, video, path in zip(args.inputs, videos, _overlay_paths(args.overlay, args.inputs)):
        frames = overlay_frames(iter_frames(source), video["instances"], model.config.id2label, args.threshold)
        write_video(tqdm(frames, total=video["length"], desc=f"overlay {Path(path).name}", leave=False), path, video_fps(source))
        print(f"overlay: {path}")


def _print_found(video_id: int, source: str, video: dict, id2label: dict[int, str], threshold: float) -> None:
    """What the video holds: the instances scoring at least `threshold`, best first."""
    found = sorted((i for i in video["instances"] if i["score"] >= threshold), key=lambda i: -i["score"])
    print(f"video_id {video_id}: {source} ({video['length']} frames): {len(found)} instances with score >= "
          f"{threshold} (of {len(video['instances'])} slots)")
    for instance in found:
        frames = sum(rle is not None for rle in instance["segmentations"])
        name = id2label.get(instance["label"], str(instance["label"]))
        print(f"  instance {instance['id']}: {name} (label {instance['label']}), score {instance['score']:.3f}, "
              f"in {frames} frames")


def _overlay_paths(overlay: str | None, inputs: list[str]) -> list[Path]:
    """One overlay path per input: `--overlay` itself, or `<stem>-<input name><suffix>` for several inputs."""
    if overlay is None:
        return []
    overlay = Path(overlay)
    if len(inputs) == 1:
        return [overlay]
    return [overlay.with_name(f"{overlay.stem}-{Path(source).stem}{overlay.suffix}") for source in inputs]


class _DefaultsHelpFormatter(argparse.HelpFormatter):
    """`--help` shows each option's default, unless it has none or its help text already names it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text or action.default in (None, False, argparse.SUPPRESS) or not action.option_strings:
            return text
        return f"{text} (default: %(default)s)"


def _version() -> str:
    try:
        return version("vistr-hf")
    except PackageNotFoundError:  # run from a checkout that is not installed
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vistr", description="VisTR video instance segmentation",
                                     formatter_class=_DefaultsHelpFormatter)  # fmt: skip
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub_parser = partial(argparse.ArgumentParser, formatter_class=_DefaultsHelpFormatter)  # their --help shows defaults
    commands = parser.add_subparsers(dest="command", required=True, parser_class=sub_parser)

    convert = commands.add_parser("convert", help="convert an original VisTR .pth checkpoint")
    convert_checkpoint.add_arguments(convert)
    convert.set_defaults(handler=convert_checkpoint.run)

    inspect = commands.add_parser("inspect", help="load a converted model and print its output shapes")
    inspect.add_argument("model", help="converted model folder or Hub id")
    inspect.add_argument("--height", type=int, default=128, help="height of the random test clip")
    inspect.add_argument("--width", type=int, default=160, help="width of the random test clip")
    inspect.set_defaults(handler=_inspect)

    segment = commands.add_parser("segment", help="segment videos or frame folders; write YouTube-VIS results and overlays")
    segment.add_argument("inputs", nargs="*", help="video files or folders of frames (video_id = position, from 1)")
    segment.add_argument("--annotations", help="a YouTube-VIS annotation file: segment every video it lists")
    segment.add_argument("--frames-root", help="with --annotations: the folder its file_names are relative to")
    segment.add_argument("--zip", help="with --annotations: also write the submission archive (results.json inside)")
    segment.add_argument("--evaluate", action="store_true", help="with --annotations: score the results (needs ground truth)")
    segment.add_argument("--model", help="converted or trained model folder, or Hub id (default: the bundled model)")
    segment.add_argument("--output", help=f"results JSON (YouTube-VIS format); default {DEFAULT_OUTPUT_DIR}/results.json "
                                          f"with the overlay {DEFAULT_OUTPUT_DIR}/overlay.mp4")
    segment.add_argument("--overlay", help="overlay video (.gif, .mp4, ...); with several inputs, one file per input")
    segment.add_argument("--threshold", type=float, default=0.5,
                         help="score an instance needs to be drawn and listed (the results JSON keeps every slot)")
    segment.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    segment.add_argument("--dtype", choices=sorted(DTYPES), default="fp32", help="precision the model runs in")
    segment.add_argument("--stride", type=int, help="frames between clip starts for long videos (default: 3/4 of a clip)")
    segment.add_argument("--mask-threshold", type=float, default=0.5, help="mask probability a pixel needs")
    segment.set_defaults(handler=_segment)

    synthetic = commands.add_parser("make-synthetic", help="write a synthetic YouTube-VIS folder (frames + annotations)")
    youtube_vis.add_arguments(synthetic)
    synthetic.set_defaults(handler=youtube_vis.run)

    evaluate = commands.add_parser("evaluate", help="score YouTube-VIS results as the official evaluator does")
    evaluation_youtube_vis.add_arguments(evaluate)
    evaluate.set_defaults(handler=evaluation_youtube_vis.run)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        args.handler(args)
    except (convert_checkpoint.ConversionError, ModelNotFoundError, VideoReadError, YouTubeVISError) as error:
        sys.exit(f"error: {error}")


if __name__ == "__main__":
    main()
