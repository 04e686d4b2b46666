"""Package a trained VisTR (a trainer's checkpoint or model folder) as the bundled model in assets/.

    python assets/package_bundled_model.py RUN/checkpoints/step-00020000 --run RUN   # -> assets/vistr-tiny-synthetic
    python assets/package_bundled_model.py RUN/checkpoints/step-00020000 --evaluate-only
    python assets/package_bundled_model.py CHECKPOINT --run RUN --inference-sizes 128x224 160x288 176x304 \
        --test-time-flips horizontal vertical both --mask-score-weighting

With `--test-time-flips`, the processor asks `VideoSegmenter` to average each clip's predictions with these
flipped views (flip_averaging.py); with `--mask-score-weighting`, post-processing multiplies scores by mask
confidence. Every score below is then with them, and the card also gives the held-out AP of the original's
inference (one view, class scores only). With `--inference-sizes`, the processor's resize (shortest x longest edge) is first
chosen among the candidates by AP on a tuning split (another seed, `TUNING_SEED`), never on the held-out one. Then the model is scored on
a held-out synthetic split that training never saw (`vistr make-synthetic` with the default settings and
another seed, scored by `vistr evaluate`'s evaluator), and the folder is written: float16
weights (the config keeps float32 as the dtype to load in, so CPUs run it in float32), config, processor,
code, a model card with the held-out metrics and the training command, and the run's loss curve.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
from vistr.flip_averaging import FLIP_DIMS, check_flips
from vistr.tools.model_card import build_model_card, save_model_card, save_model_folder
from vistr.modeling_vistr import VisTRForVideoInstanceSegmentation
from vistr.tools.youtube_vis import make_synthetic
from vistr.tools.youtube_vis_inference import run_split
from vistr.train_accelerate import STATE_FILE, plot_loss_curve

ASSETS = Path(__file__).resolve().parent
BUNDLED = ASSETS / "vistr-tiny-synthetic"
HELD_OUT_SEED = 2000
HELD_OUT_VIDEOS = 100
TUNING_SEED = 3000  # picks the inference size; never the held-out seed


def held_out_split(seed: int, videos: int) -> str:
    return f"{videos} videos of `vistr make-synthetic OUT --videos {videos} --seed {seed}` (default settings, never trained on)"


@dataclass(frozen=True)
class InferenceSettings:
    """What the bundled processor sets for running the model; None keeps the source folder's setting."""

    size: tuple[int, int] | None = None  # (shortest, longest edge)
    flips: list[str] | None = None  # test-time flips averaged with each clip
    mask_score_weighting: bool | None = None

    def processor(self, folder: Path):
        """The folder's video processor with these settings."""
        from transformers import AutoVideoProcessor

        processor = AutoVideoProcessor.from_pretrained(folder)
        if self.size is not None:
            processor.size = {"shortest_edge": self.size[0], "longest_edge": self.size[1]}
        if self.flips is not None:
            processor.test_time_flips = list(check_flips(self.flips)) or None
        if self.mask_score_weighting is not None:
            processor.mask_score_weighting = self.mask_score_weighting or None
        return processor


ORIGINAL_INFERENCE = InferenceSettings(flips=[], mask_score_weighting=False)  # one view, class scores only


def evaluate_folder(folder: Path, seed: int = HELD_OUT_SEED, videos: int = HELD_OUT_VIDEOS,
                    settings: InferenceSettings = InferenceSettings()) -> dict[str, float]:  # fmt: skip
    """The 12 YouTube-VIS metrics of the model in `folder` on the synthetic split of `seed`, run with `settings`."""
    model = VisTRForVideoInstanceSegmentation.from_pretrained(folder, dtype=torch.float32).eval()
    with tempfile.TemporaryDirectory() as scratch:
        data = Path(scratch) / "heldout"
        make_synthetic(data, videos, seed, progress=False)
        return run_split(model, settings.processor(folder), data / "annotations.json", data / "JPEGImages",
                         Path(scratch) / "results.json", score=True, model_name=str(folder))  # fmt: skip


def choose_inference_size(folder: Path, sizes: list[tuple[int, int]], videos: int,
                          settings: InferenceSettings) -> tuple[int, int]:  # fmt: skip
    """The candidate size with the best AP on the tuning split, with the other `settings` (one line per size)."""
    scores = {}
    for size in sizes:
        scores[size] = evaluate_folder(folder, TUNING_SEED, videos, replace(settings, size=size))["AP"]
        print(json.dumps({"tuning_seed": TUNING_SEED, "size": list(size), "AP": scores[size]}))
    return max(sizes, key=scores.__getitem__)


def parse_size(text: str) -> tuple[int, int]:
    """'160x288' -> (160, 288): shortest and longest edge."""
    try:
        shortest, longest = (int(side) for side in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not SHORTESTxLONGEST, e.g. 160x288") from None
    if not 0 < shortest <= longest:
        raise argparse.ArgumentTypeError(f"{text!r}: need 0 < shortest <= longest")
    return shortest, longest


def package(source: Path, run: Path, output: Path, metrics: dict[str, float], seed: int, videos: int,
            settings: InferenceSettings, original_inference_ap: float | None = None) -> None:  # fmt: skip
    """Write the bundled folder next to `output` and rename it into place (an existing one is replaced)."""
    model = VisTRForVideoInstanceSegmentation.from_pretrained(source, dtype=torch.float32).eval()
    processor = settings.processor(source)
    size = settings.size
    state = json.loads((source / STATE_FILE).read_text()) if (source / STATE_FILE).is_file() else {}
    staging = output.with_name(output.name + ".tmp")
    shutil.rmtree(staging, ignore_errors=True)
    model.half()
    save_model_folder(model, staging, processor)
    config_path = staging / "config.json"
    config = json.loads(config_path.read_text())
    config["dtype"] = "float32"  # load (and run) in float32; the file stores float16 to stay small
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    command = (run / "command.txt").read_text().strip() if (run / "command.txt").is_file() else "(not recorded)"
    wall = (run / "wall_time.txt").read_text().strip() if (run / "wall_time.txt").is_file() else "(not recorded)"
    provenance = (f"Trained from scratch on this project's CPU machine: {command} VisTR trained for "
                  f"{state.get('step', '?')} optimizer steps ({wall}), on `vistr make-synthetic` data (default settings, "
                  "seed and size in the command). No pretrained weights.")  # fmt: skip
    if size is not None:
        provenance += (f" The processor resizes to shortest edge {size[0]}, longest {size[1]}: the best AP of the "
                       f"candidate sizes on {held_out_split(TUNING_SEED, videos)}, a tuning split.")  # fmt: skip
    if processor.test_time_flips:
        provenance += (f" `vistr segment` (also with `--annotations ... --evaluate`) and the pipeline average each clip's "
                       f"predictions with those of its flipped views (the processor's `test_time_flips`: "
                       f"{', '.join(processor.test_time_flips)}; `--test-time-flips none` runs one view).")  # fmt: skip
    if processor.mask_score_weighting:
        provenance += (" Post-processing multiplies each instance's score by the mean probability inside its masks "
                       "(the processor's `mask_score_weighting`, Mask2Former's rule).")  # fmt: skip
    if original_inference_ap is not None:
        provenance += (f" The metrics below are with these settings; run as the original runs a model (one view, "
                       f"class scores only), it scores AP {original_inference_ap:.3f} on the same held-out split.")  # fmt: skip
    card = build_model_card(model.config, name=output.name, provenance=provenance, datasets=["synthetic-youtube-vis"],
                            metrics=metrics, metrics_split=held_out_split(seed, videos))  # fmt: skip
    save_model_card(staging, card)
    if state.get("history"):
        plot_loss_curve(state["history"], staging / "loss_curve.png")
    link_code_to_package(staging, output)
    shutil.rmtree(output, ignore_errors=True)
    staging.rename(output)


def link_code_to_package(staging: Path, output: Path) -> None:
    """Replace the code files `save_model_folder` copied by relative links to the package's own files, so the
    repository holds the model's code once and the bundled folder always runs the code beside it. The links are
    relative to where the folder will be, `output` (`staging` is its sibling)."""
    package_root = Path(__file__).resolve().parents[1]
    for code in staging.glob("*.py"):
        code.unlink()
        code.symlink_to(os.path.relpath(package_root / code.name, output.resolve()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("source", type=Path, help="a trainer checkpoint folder (with config.json) or model folder")
    parser.add_argument("--run", type=Path, help="the training run's output folder: command.txt (how it was trained, markdown), wall_time.txt")
    parser.add_argument("--output", type=Path, default=BUNDLED)
    parser.add_argument("--seed", type=int, default=HELD_OUT_SEED)
    parser.add_argument("--videos", type=int, default=HELD_OUT_VIDEOS)
    parser.add_argument("--evaluate-only", action="store_true")
    parser.add_argument("--inference-sizes", nargs="+", type=parse_size, metavar="SHORTESTxLONGEST",
                        help="candidate processor sizes, chosen by AP on the tuning split (default: the source's)")  # fmt: skip
    parser.add_argument("--test-time-flips", nargs="+", choices=list(FLIP_DIMS), metavar="FLIP",
                        help="flips the processor averages with each clip (horizontal, vertical, both; default: the source's)")  # fmt: skip
    parser.add_argument("--mask-score-weighting", action=argparse.BooleanOptionalAction,
                        help="scores times mask confidence in post-processing (default: the source's)")  # fmt: skip
    args = parser.parse_args()
    start = time.perf_counter()
    settings = InferenceSettings(flips=args.test_time_flips, mask_score_weighting=args.mask_score_weighting)
    if args.inference_sizes:
        settings = replace(settings, size=choose_inference_size(args.source, args.inference_sizes, args.videos, settings))
    metrics = evaluate_folder(args.source, args.seed, args.videos, settings)
    processor = settings.processor(args.source)
    original_inference_ap = None
    if processor.test_time_flips or processor.mask_score_weighting:
        original = replace(ORIGINAL_INFERENCE, size=settings.size)
        original_inference_ap = evaluate_folder(args.source, args.seed, args.videos, original)["AP"]
    print(json.dumps({"source": str(args.source), "settings": asdict(settings), "original_inference_AP": original_inference_ap,
                      "seconds": round(time.perf_counter() - start, 1), **metrics}))  # fmt: skip
    if not args.evaluate_only:
        package(args.source, args.run or args.source.parent.parent, args.output, metrics, args.seed, args.videos,
                settings, original_inference_ap)  # fmt: skip
        print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
