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
import gc
import json
import logging
import os
import sys
import traceback
from collections.abc import Callable
from contextlib import contextmanager
from functools import partial
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from vistr.tools.outputs import (
    OVERLAY_SUFFIXES,
    Outputs,
    UsageError,
    dumps_json,
    open_probability,
    positive_int,
    probability,
    shown,
)


class ModelNotFoundError(ValueError):
    """A --model that is not a loadable model folder, nor a reachable Hub id."""


FOLDER_HINT = "pass a folder written by `vistr convert` or training"


def _check_model_folder(folder: Path, name: str) -> None:
    """What from_pretrained would trip over with a misleading message: no config, or a foreign one (the weights and
    the config's values are `load_checked_model`'s)."""
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise ModelNotFoundError(f"--model {name} is a folder without config.json, so not a model folder; {FOLDER_HINT}")
    try:
        model_type = json.loads(config_file.read_text()).get("model_type")
    except (ValueError, UnicodeDecodeError, AttributeError):
        raise ModelNotFoundError(f"--model {name}: config.json is not valid JSON; restore it, or convert the model again") from None
    if model_type != "vistr":
        raise ModelNotFoundError(f"--model {name}: config.json is for model_type {model_type!r}, not 'vistr'; {FOLDER_HINT}")


def _hub_unreachable_reason(timeout: float = 3.0) -> str | None:
    """Why the Hub cannot answer now (offline mode, no connection), or None: checked once, in seconds, instead
    of letting each file request retry for half a minute."""
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE is set"
    endpoint = urlparse(constants.ENDPOINT)
    try:
        socket.create_connection((endpoint.hostname, endpoint.port or (443 if endpoint.scheme == "https" else 80)),
                                 timeout=timeout).close()  # fmt: skip
    except OSError as error:
        return f"cannot connect to {constants.ENDPOINT}: {error.strerror or error}"
    return None


@contextmanager
def _quiet_loading():
    """Silence the Hub's retry messages and transformers' loading report: the one line we raise says it all."""
    from transformers.utils import logging as transformers_logging

    hub_logger = logging.getLogger("huggingface_hub")
    hub_level, verbosity = hub_logger.level, transformers_logging.get_verbosity()
    hub_logger.setLevel(logging.ERROR)
    transformers_logging.set_verbosity_error()
    try:
        yield
    finally:
        hub_logger.setLevel(hub_level)
        transformers_logging.set_verbosity(verbosity)


def load_model(model_path: str, **kwargs):
    """The model of a folder or Hub id, exactly as stored (`load_checked_model`); one line naming the problem if
    there is none."""
    from vistr.tools.model_loading import load_checked_model

    path = Path(model_path)
    looks_local = path.is_absolute() or model_path.startswith(".") or model_path.count("/") != 1
    offline = None
    if path.is_dir():
        _check_model_folder(path, model_path)
    elif path.exists() or looks_local:
        problem = "is a file, not a folder" if path.exists() else "no such folder"
        raise ModelNotFoundError(f"--model {model_path}: {problem}; {FOLDER_HINT}")
    elif (offline := _hub_unreachable_reason()) is not None:
        kwargs["local_files_only"] = True  # the cache may still hold it
    with _quiet_loading():  # what the loading report would warn about, load_checked_model refuses
        try:
            return load_checked_model(model_path, f"--model {model_path}", **kwargs)[0]
        except OSError as error:
            reason = offline + " and it is not in the local cache" if offline else str(error).strip().splitlines()[0]
            raise ModelNotFoundError(
                f"--model {model_path}: neither a model folder nor a reachable Hub model id ({reason}); {FOLDER_HINT}, "
                "or a Hub id such as user/vistr-r50 (with network access)"
            ) from None


def _inspect(args: argparse.Namespace) -> None:
    """Load a converted folder through the Auto classes and run one random clip through it."""
    import torch

    model = load_model(args.model).eval()
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


def _check_device(device: str | None) -> None:
    """--device names a device this machine has; checked before any model is loaded."""
    import torch

    if device is None:
        return
    try:
        parsed = torch.device(device)
    except RuntimeError:
        raise UsageError(f"--device {device}: not a device name; use cpu, cuda or cuda:N") from None
    if parsed.type == "cuda":
        count = torch.cuda.device_count()
        if count == 0:
            raise UsageError(f"--device {device}: no CUDA GPU is visible here; use --device cpu (or leave --device out)")
        if parsed.index is not None and parsed.index >= count:
            raise UsageError(f"--device {device}: this machine has {count} GPU(s), cuda:0 to cuda:{count - 1}; pick one of them")
    elif parsed.type != "cpu":
        raise UsageError(f"--device {device}: only cpu and cuda devices are supported; use cpu, cuda or cuda:N")


def _check_stride(stride: int | None, model) -> None:
    frames = model.config.num_frames
    if stride is not None and stride > frames:
        raise UsageError(f"--stride {stride} is longer than the model's clips ({frames} frames), so frames would be "
                         f"skipped; use a stride from 1 to {frames}")  # fmt: skip


def load_for_inference(model_path: str, device: str | None, dtype: str):
    """Model (eval, on device, in dtype) and its video processor (the default one if the folder has none), as
    `vistr segment` and the browser demo load them."""
    import torch
    from accelerate import PartialState
    from transformers import AutoVideoProcessor
    from vistr.image_processing_vistr import VisTRVideoProcessor

    # Under `accelerate launch` / torchrun each process takes its own GPU, or the CPU (gloo) when there is none.
    use_cpu = device == "cpu" or (device is None and not torch.cuda.is_available())
    state = PartialState(cpu=use_cpu)  # created before anything else asks for it, so the flag holds
    device = device or state.device
    model = load_model(model_path, dtype=getattr(torch, DTYPES[dtype]))
    model = model.to(device).eval()
    try:
        with _quiet_loading():
            processor = AutoVideoProcessor.from_pretrained(model_path, local_files_only=Path(model_path).is_dir())
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


def _test_time_flips(names: list[str] | None) -> list[str] | None:
    """--test-time-flips as VideoSegmenter takes them: None (the model folder's processor decides), [] for
    `none` (one view), else the flips."""
    if names is None:
        return None
    if "none" in names:
        if len(names) > 1:
            raise UsageError(f"--test-time-flips {' '.join(names)}: `none` (one view) goes alone; name flips or none")
        return []
    try:
        from vistr.flip_averaging import check_flips

        return list(check_flips(names))
    except ValueError as error:
        raise UsageError(f"--test-time-flips {' '.join(names)}: {error}") from None


def _check_segment_options(args: argparse.Namespace) -> None:
    """Options that only work together; before anything is loaded or written."""
    args.test_time_flips = _test_time_flips(args.test_time_flips)
    if args.annotations is not None:
        if args.output is None:
            raise UsageError("with --annotations give --output, the results JSON to write")
        if args.inputs or args.overlay or not args.frames_root:
            raise UsageError("with --annotations give --frames-root and no input videos or --overlay")
    elif args.frames_root or args.zip or args.evaluate:
        raise UsageError("--frames-root, --zip and --evaluate go with --annotations (a YouTube-VIS split)")
    _check_device(args.device)


def _segment(args: argparse.Namespace) -> None:
    """`vistr segment`: the given videos, or with --annotations a whole YouTube-VIS split."""
    _apply_demo_defaults(args)
    _check_segment_options(args)
    if args.annotations is not None:
        _segment_split(args)
        return
    with Outputs(inputs=_read_paths(args)) as outputs:  # every output checked now, replaced only if all succeed
        results_file = outputs.file(args.output, "--output")
        overlays = _overlay_paths(args.overlay, args.inputs)
        overlay_files = [outputs.file(path, "--overlay", OVERLAY_SUFFIXES) for path in overlays]
        model, processor = load_for_inference(args.model, args.device, args.dtype)
        _check_stride(args.stride, model)
        _segment_inputs(args, model, processor, results_file, overlay_files)
    print(f"results: {shown(args.output)} (every instance, at most the best 100 per category: all that the YouTube-VIS evaluator scores)")
    for path in overlays:
        print(f"overlay: {shown(path)}")


def _read_paths(args: argparse.Namespace) -> list[str | Path]:
    """Everything `vistr segment` reads, which no output may be, lie in or contain: the videos, a split's
    annotation file and frames root, and the model folder when --model is one, with every file in it (each
    resolved where it links to, as the Hub cache's files do)."""
    reads = (*args.inputs, args.annotations, args.frames_root, *model_paths(args.model))
    return [path for path in reads if path is not None]


def model_paths(model: str) -> list[Path]:
    """What a command reads of `--model`, which no output may be, lie in or contain: the model folder with every
    file in it, or the model file; nothing for a Hub id."""
    path = Path(model)
    return [path, *path.iterdir()] if path.is_dir() else [path] if path.exists() else []


def _check_split_apart(args: argparse.Namespace) -> None:
    """The split job's outputs (results, their .parts folder, the archive) apart from all it reads, the model
    folder included; `check_split_outputs` checks the rest."""
    from vistr.tools.youtube_vis_inference import PartsFolder

    outputs = Outputs(inputs=_read_paths(args))
    parts = PartsFolder(Path(args.output), {}).folder
    for path, what in ((args.output, "--output"), (parts, "--output (its .parts folder)"), (args.zip, "--zip")):
        if path is not None:
            outputs.check_apart(path, what)


def _segment_split(args: argparse.Namespace) -> None:
    from vistr.tools.youtube_vis_inference import check_split_outputs, run_split

    _check_split_apart(args)
    check_split_outputs(args.annotations, args.frames_root, args.output, args.zip)
    model, processor = load_for_inference(args.model, args.device, args.dtype)
    _check_stride(args.stride, model)
    run_split(model, processor, args.annotations, args.frames_root, args.output, zip_path=args.zip,
              score=args.evaluate, stride=args.stride, mask_threshold=args.mask_threshold, model_name=args.model,
              test_time_flips=args.test_time_flips, mask_score_weighting=args.mask_score_weighting)  # fmt: skip


def _segment_inputs(args: argparse.Namespace, model, processor, results_file: Path, overlay_files: list[Path]) -> None:
    """Segment each input and write its overlay into its staged file, then the YouTube-VIS results JSON."""
    from tqdm.auto import tqdm
    from vistr.pipeline_vistr import VideoSegmenter
    from vistr.tools.overlay import segment_with_overlay
    from vistr.tools.youtube_vis_inference import NON_FINITE_FIX, video_results

    segmenter = VideoSegmenter(model, processor, stride=args.stride, mask_threshold=args.mask_threshold,
                               test_time_flips=args.test_time_flips, mask_score_weighting=args.mask_score_weighting)  # fmt: skip
    overlays = list(zip(_overlay_paths(args.overlay, args.inputs), overlay_files)) or [(None, None)] * len(args.inputs)
    videos = []
    with tqdm(args.inputs, desc="videos", unit="video") as bar:
        for source, (path, staged) in zip(bar, overlays):
            drawing = partial(tqdm, desc=f"overlay {shown(Path(path).name)}", leave=False) if path else iter
            with tqdm(desc=f"clips of {Path(source).name}", unit="clip", leave=False) as clips:
                videos.append(segment_with_overlay(segmenter, source, staged, path and Path(path).suffix,
                                                   model.config.id2label, args.threshold, clips.update, drawing))
    results = [result for video_id, video in enumerate(videos, start=1) for result in video_results(video_id, video)]
    results_file.write_text(dumps_json(results, f"--output {args.output}", NON_FINITE_FIX))
    for video_id, (source, video) in enumerate(zip(args.inputs, videos), start=1):
        _print_found(video_id, source, video, model.config.id2label, args.threshold)


def _print_found(video_id: int, source: str, video: dict, id2label: dict[int, str], threshold: float) -> None:
    """What the video holds: the instances scoring at least `threshold`, best first, and the frames they show in."""
    from vistr.tools.overlay import covered_frames, found_instances

    found = found_instances(video["instances"], threshold)
    print(f"video_id {video_id}: {source} ({video['length']} frames): {len(found)} instances with score >= "
          f"{threshold} (of {len(video['instances'])} slots)")
    for instance in found:
        frames = len(covered_frames(instance["segmentations"]))
        name = id2label.get(instance["label"], str(instance["label"]))
        print(f"  instance {instance['id']}: {name} (label {instance['label']}), score {instance['score']:.3f}, "
              f"in {frames} frames")


def _overlay_paths(overlay: str | None, inputs: list[str]) -> list[Path]:
    """One overlay path per input: `--overlay` itself, or `<stem>-<input name><suffix>` for several inputs
    (with `-<video_id>` added where two inputs share a name, so that no overlay overwrites another)."""
    if overlay is None:
        return []
    overlay = Path(overlay)
    if len(inputs) == 1:
        return [overlay]
    names = [Path(source).stem for source in inputs]
    return [overlay.with_name(f"{overlay.stem}-{name}{f'-{video_id}' if names.count(name) > 1 else ''}{overlay.suffix}")
            for video_id, name in enumerate(names, start=1)]  # fmt: skip


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


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad option is one line (`error: ...; see ... --help`), exit code 2, without the usage block."""

    def error(self, message: str):
        self.exit(2, f"error: {self.prog}: {message}; see `{self.prog} --help`\n")


def _convert_arguments(convert: argparse.ArgumentParser) -> None:
    from vistr import convert_checkpoint

    convert_checkpoint.add_arguments(convert)
    convert.set_defaults(handler=convert_checkpoint.run)


def _inspect_arguments(inspect: argparse.ArgumentParser) -> None:
    inspect.add_argument("model", help="converted model folder or Hub id")
    inspect.add_argument("--height", type=positive_int, default=128, help="height of the random test clip")
    inspect.add_argument("--width", type=positive_int, default=160, help="width of the random test clip")
    inspect.set_defaults(handler=_inspect)


def _segment_arguments(segment: argparse.ArgumentParser) -> None:
    from vistr.flip_averaging import FLIP_DIMS

    segment.add_argument("inputs", nargs="*", help="video files or folders of frames (video_id = position, from 1)")
    segment.add_argument("--annotations", help="a YouTube-VIS annotation file: segment every video it lists")
    segment.add_argument("--frames-root", help="with --annotations: the folder its file_names are relative to")
    segment.add_argument("--zip", help="with --annotations: also write the submission archive (results.json inside)")
    segment.add_argument("--evaluate", action="store_true", help="with --annotations: score the results (needs ground truth)")
    segment.add_argument("--model", help="converted or trained model folder, or Hub id (default: the bundled model)")
    segment.add_argument("--output", help=f"results JSON (YouTube-VIS format); default {DEFAULT_OUTPUT_DIR}/results.json "
                                          f"with the overlay {DEFAULT_OUTPUT_DIR}/overlay.mp4")
    segment.add_argument("--overlay", help=f"overlay video ({', '.join(OVERLAY_SUFFIXES)}); with several inputs, one "
                                           "file per input")
    segment.add_argument("--threshold", type=probability, default=0.5,
                         help="score an instance needs to be drawn and listed (the results JSON keeps every slot)")
    segment.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    segment.add_argument("--dtype", choices=sorted(DTYPES), default="fp32", help="precision the model runs in")
    segment.add_argument("--stride", type=positive_int,
                         help="frames between clip starts for long videos, 1 to the clip length (default: 3/4 of a clip)")
    segment.add_argument("--mask-threshold", type=open_probability, default=0.5,
                         help="mask probability a pixel needs, strictly between 0 and 1")
    segment.add_argument("--test-time-flips", nargs="+", choices=[*FLIP_DIMS, "none"], metavar="FLIP",
                         help="average each clip's predictions with these flipped views (horizontal, vertical, both), "
                              "or none for one view (default: the model folder's processor setting)")  # fmt: skip
    segment.add_argument("--mask-score-weighting", action=argparse.BooleanOptionalAction,
                         help="multiply each instance's score by its mean mask probability (Mask2Former's rule; "
                              "default: the model folder's processor setting)")  # fmt: skip
    segment.set_defaults(handler=_segment)


def _synthetic_arguments(synthetic: argparse.ArgumentParser) -> None:
    from vistr.tools import youtube_vis

    youtube_vis.add_arguments(synthetic)
    synthetic.set_defaults(handler=youtube_vis.run)


def _evaluate_arguments(evaluate: argparse.ArgumentParser) -> None:
    from vistr.tools import evaluation_youtube_vis

    evaluation_youtube_vis.add_arguments(evaluate)
    evaluate.set_defaults(handler=evaluation_youtube_vis.run)


def _export_arguments(export: argparse.ArgumentParser) -> None:
    from vistr.tools import export as model_export

    model_export.add_arguments(export)
    export.set_defaults(handler=model_export.run)


# name -> (help, what adds its arguments and handler): a command's modules (torch, transformers, datasets: seconds
# to import) are imported only when that command runs or shows its help, so `vistr --help` and `--version` are quick
COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None]]] = {
    "convert": ("convert an original VisTR .pth checkpoint", _convert_arguments),
    "inspect": ("load a converted model and print its output shapes", _inspect_arguments),
    "segment": ("segment videos or frame folders; write YouTube-VIS results and overlays", _segment_arguments),
    "make-synthetic": ("write a synthetic YouTube-VIS folder (frames + annotations)", _synthetic_arguments),
    "evaluate": ("score YouTube-VIS results as the official evaluator does", _evaluate_arguments),
    "export": ("write the model as a torch.export program (.pt2) or ONNX (.onnx)", _export_arguments),
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The `vistr` parser, with the arguments of `command` only, or of every command when it is None."""
    parser = _Parser(prog="vistr", description="VisTR video instance segmentation", formatter_class=_DefaultsHelpFormatter)
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error (or set VISTR_DEBUG=1)")
    sub_parser = partial(_Parser, formatter_class=_DefaultsHelpFormatter)  # their --help shows defaults
    commands = parser.add_subparsers(dest="command", required=True, parser_class=sub_parser)
    for name, (summary, add_arguments) in COMMANDS.items():
        subcommand = commands.add_parser(name, help=summary)
        if command in (None, name):
            add_arguments(subcommand)
        # `vistr segment ... --debug` works too
        subcommand.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    return parser


def _command_of(argv: list[str]) -> str:
    """The command named in `argv` (its first word that names one), or "" when there is none."""
    return next((word for word in argv if word in COMMANDS), "")


INTERRUPTED = "no output was replaced (outputs are written only when a command completes)"


def _one_line(error: BaseException) -> str:
    """The message of an error the user can act on; an unexpected one is named as such."""
    if isinstance(error, OSError) and error.strerror:
        return f"{error.filename}: {error.strerror}" if error.filename else error.strerror
    if isinstance(error, (ValueError, OSError)):
        return str(error)
    first_line = (str(error).strip().splitlines() or [""])[0]
    return f"unexpected {type(error).__name__}: {first_line} (rerun with --debug for the traceback, and please report it)"


def debug_requested(args: argparse.Namespace) -> bool:
    """`--debug` on the command line, or VISTR_DEBUG set to anything but 0."""
    return getattr(args, "debug", False) or os.environ.get("VISTR_DEBUG", "") not in ("", "0")


def run_reporting_errors(action: Callable[[], object], debug: bool, interrupted: str = INTERRUPTED) -> None:
    """Run a command's work so that user errors end in one `error: ...` line on stderr and exit code 2 (bad
    options, unusable output paths) or 1 (anything else), never a traceback; `debug` shows the traceback too.
    Shared by `vistr` and `train_accelerate.py`, so every command a user runs fails the same way."""
    try:
        action()
    except KeyboardInterrupt:
        if debug:
            raise
        print(f"error: interrupted; {interrupted}", file=sys.stderr)
        sys.exit(130)
    except Exception as error:
        if debug:
            traceback.print_exc()
        if isinstance(error, UsageError):
            print(f"error: {error}", file=sys.stderr)
            sys.exit(2)
        sys.exit(f"error: {_one_line(error)}")


def main(argv: list[str] | None = None) -> None:
    """Run a `vistr` command (errors as `run_reporting_errors` reports them; `--debug` or VISTR_DEBUG=1 shows
    the traceback). With no `argv` it is the program: the command line's arguments, and a quick exit after."""
    as_program = argv is None  # the `vistr` program, not a caller that goes on running
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(_command_of(argv)).parse_args(argv)
    run_reporting_errors(partial(args.handler, args), debug_requested(args))
    if as_program:
        # What is left is freed with the process: the interpreter's last garbage collections, over the objects
        # of torch, transformers and the model, took 1.2 s of a 6 s `vistr segment` on the sample (0.2 s
        # frozen). Exit handlers and the closing of modules still run; every output is written and closed.
        gc.freeze()


if __name__ == "__main__":
    main()
