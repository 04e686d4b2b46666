"""Package a trained VisTR (a trainer's checkpoint or model folder) as the bundled model in assets/.

    python assets/package_bundled_model.py RUN/checkpoints/step-00020000 --run RUN   # -> assets/vistr-tiny-synthetic
    python assets/package_bundled_model.py RUN/checkpoints/step-00020000 --evaluate-only

Scores the model on a held-out synthetic split that training never saw (`vistr make-synthetic` with the
default settings and another seed, scored by `vistr evaluate`'s evaluator), then writes the folder: float16
weights (the config keeps float32 as the dtype to load in, so CPUs run it in float32), config, processor,
code, a model card with the held-out metrics and the training command, and the run's loss curve.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import torch
from vistr.model_card import build_model_card, save_model_card, save_model_folder
from vistr.modeling_vistr import VisTRForVideoInstanceSegmentation
from vistr.tools.youtube_vis import make_synthetic
from vistr.tools.youtube_vis_inference import run_split
from vistr.train_accelerate import STATE_FILE, plot_loss_curve

ASSETS = Path(__file__).resolve().parent
BUNDLED = ASSETS / "vistr-tiny-synthetic"
HELD_OUT_SEED = 2000
HELD_OUT_VIDEOS = 100


def held_out_split(seed: int, videos: int) -> str:
    return f"{videos} videos of `vistr make-synthetic OUT --videos {videos} --seed {seed}` (default settings, never trained on)"


def evaluate_folder(folder: Path, seed: int = HELD_OUT_SEED, videos: int = HELD_OUT_VIDEOS) -> dict[str, float]:
    """The 12 YouTube-VIS metrics of the model in `folder` on the held-out synthetic split."""
    from transformers import AutoVideoProcessor

    model = VisTRForVideoInstanceSegmentation.from_pretrained(folder, dtype=torch.float32).eval()
    processor = AutoVideoProcessor.from_pretrained(folder)
    with tempfile.TemporaryDirectory() as scratch:
        data = Path(scratch) / "heldout"
        make_synthetic(data, videos, seed, progress=False)
        return run_split(model, processor, data / "annotations.json", data / "JPEGImages", Path(scratch) / "results.json",
                         score=True, model_name=str(folder))  # fmt: skip


def package(source: Path, run: Path, output: Path, metrics: dict[str, float], seed: int, videos: int) -> None:
    """Write the bundled folder next to `output` and rename it into place (an existing one is replaced)."""
    from transformers import AutoVideoProcessor

    model = VisTRForVideoInstanceSegmentation.from_pretrained(source, dtype=torch.float32).eval()
    processor = AutoVideoProcessor.from_pretrained(source)
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
    card = build_model_card(model.config, name=output.name, provenance=provenance, datasets=["synthetic-youtube-vis"],
                            metrics=metrics, metrics_split=held_out_split(seed, videos))  # fmt: skip
    save_model_card(staging, card)
    if state.get("history"):
        plot_loss_curve(state["history"], staging / "loss_curve.png")
    shutil.rmtree(output, ignore_errors=True)
    staging.rename(output)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("source", type=Path, help="a trainer checkpoint folder (with config.json) or model folder")
    parser.add_argument("--run", type=Path, help="the training run's output folder: command.txt (how it was trained, markdown), wall_time.txt")
    parser.add_argument("--output", type=Path, default=BUNDLED)
    parser.add_argument("--seed", type=int, default=HELD_OUT_SEED)
    parser.add_argument("--videos", type=int, default=HELD_OUT_VIDEOS)
    parser.add_argument("--evaluate-only", action="store_true")
    args = parser.parse_args()
    start = time.perf_counter()
    metrics = evaluate_folder(args.source, args.seed, args.videos)
    print(json.dumps({"source": str(args.source), "seconds": round(time.perf_counter() - start, 1), **metrics}))
    if not args.evaluate_only:
        package(args.source, args.run or args.source.parent.parent, args.output, metrics, args.seed, args.videos)
        print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
