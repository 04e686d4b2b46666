"""Seconds from model outputs to the YouTube-VIS results JSON of one video, on CPU.

A 36-frame 1280x720 video with 10 instance slots: synthetic outputs of the model's shapes for
the processor's default inference size (shortest edge 300: frames resized to 300x533, padded to
300x540, masks at stride 4: 75x135), through `post_process_video_instance_segmentation`
(bilinear upsampling to 720x1280, threshold, scores and labels) + `to_youtube_vis_results`
(compressed RLE) + `json.dumps`. Two kinds of mask logits:

* blobs: each slot an ellipse drifting over the frames (what a model predicts; every slot non-empty);
* noise: independent random logits per cell (many short runs: the worst case for RLE encoding).

"before" is the straightforward computation the processor did until it got faster (and the original
inference.py does): upsample every mask to 720x1280, sigmoid, threshold, a column-major uint8 copy
of each mask for pycocotools. Both rows must give the same JSON text.

Goal: < 0.5 s per video. Medians over repeats; the machine is shared, so timings are noisy.

    python benchmarks/bench_postprocess.py [--repeats 7 --threads 2]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from types import SimpleNamespace

import numpy as np
import torch
import torch.nn.functional as F
from pycocotools import mask as mask_utils

from bench_forward import cpu_name
from vistr.image_processing_vistr import VisTRVideoProcessor, resized_size

FRAMES, SLOTS, CLASSES = 36, 10, 41
ORIGINAL = (720, 1280)


def synthetic_outputs(kind: str, padded: tuple[int, int], seed: int = 0) -> SimpleNamespace:
    g = torch.Generator().manual_seed(seed)
    h4, w4 = padded[0] // 4, padded[1] // 4
    logits = torch.randn(1, FRAMES * SLOTS, CLASSES + 1, generator=g) * 3
    if kind == "noise":
        masks = torch.randn(1, FRAMES * SLOTS, h4, w4, generator=g) * 4
    else:
        ys, xs = torch.arange(h4).view(-1, 1).float(), torch.arange(w4).view(1, -1).float()
        start = torch.rand(SLOTS, 2, generator=g) * torch.tensor([h4, w4])
        velocity = (torch.rand(SLOTS, 2, generator=g) - 0.5) * 1.5
        radius = 4 + torch.rand(SLOTS, 2, generator=g) * torch.tensor([h4 / 4, w4 / 4])
        masks = torch.empty(FRAMES, SLOTS, h4, w4)
        for t in range(FRAMES):
            center = start + velocity * t
            for s in range(SLOTS):
                d = ((ys - center[s, 0]) / radius[s, 0]) ** 2 + ((xs - center[s, 1]) / radius[s, 1]) ** 2
                masks[t, s] = 6 * (1 - d)
        masks = masks.flatten(0, 1)[None] + torch.randn(1, FRAMES * SLOTS, h4, w4, generator=g) * 0.3
    return SimpleNamespace(logits=logits, pred_masks=masks)


def results_json(processor: VisTRVideoProcessor, outputs, processed: tuple[int, int]) -> str:
    instances = processor.post_process_video_instance_segmentation(
        outputs, target_sizes=[ORIGINAL], processed_sizes=[processed])
    return json.dumps(processor.to_youtube_vis_results(instances, video_ids=[1]))


def before_results_json(outputs, processed: tuple[int, int]) -> str:
    """The plain computation: every mask upsampled, sigmoid, threshold; RLE of a Fortran-order uint8 copy."""
    scores, labels = VisTRVideoProcessor.frame_class_scores(outputs.logits[0], FRAMES)
    rows, cols = -(-processed[0] // 4), -(-processed[1] // 4)
    masks = outputs.pred_masks[0].reshape(FRAMES, SLOTS, *outputs.pred_masks.shape[-2:])[..., :rows, :cols]
    upsampled = F.interpolate(masks.reshape(-1, 1, rows, cols), size=ORIGINAL, mode="bilinear", align_corners=False)
    binary = (upsampled.sigmoid() > 0.5).reshape(FRAMES, SLOTS, *ORIGINAL)
    results = []
    for slot in range(SLOTS):
        if not binary[:, slot].any():
            continue
        segmentations = []
        for t in range(FRAMES):
            if scores[t, slot] < 0.001:
                segmentations.append(None)
                continue
            rle = mask_utils.encode(np.asfortranarray(binary[t, slot].numpy().astype(np.uint8)))
            rle["counts"] = rle["counts"].decode("ascii")
            segmentations.append(rle)
        results.append({"video_id": 1, "score": float(scores[:, slot].mean()),
                        "category_id": VisTRVideoProcessor.majority_label(labels[:, slot]), "segmentations": segmentations})
    return json.dumps(results)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    processor = VisTRVideoProcessor()
    processed = resized_size(*ORIGINAL, processor.size["shortest_edge"])
    padded = (-(-processed[0] // 4) * 4, 540)
    print(f"machine: {cpu_name()}, {args.threads} torch threads, torch {torch.__version__}")
    print(f"video: {FRAMES} frames of {ORIGINAL[1]}x{ORIGINAL[0]}, {SLOTS} slots; model input {processed[1]}x"
          f"{processed[0]} padded to {padded[1]}x{padded[0]}, mask logits {padded[1] // 4}x{padded[0] // 4}")
    print()
    print("| mask logits | post-processing | instances | JSON MB | s median | s min | speedup | goal < 0.5 s |")
    print("|---|---|---|---|---|---|---|---|")
    for kind in ("blobs", "noise"):
        outputs = synthetic_outputs(kind, padded)
        runners = {"before (upsample all, sigmoid)": lambda: before_results_json(outputs, processed),
                   "now (processor)": lambda: results_json(processor, outputs, processed)}
        times = {name: [] for name in runners}
        texts = {}
        for name, fn in runners.items():  # one row after the other: the plain computation's 1.3 GB of
            texts[name] = fn()  # floats would otherwise make the next row fault its memory in afresh
            for _ in range(args.repeats):
                start = time.perf_counter()
                texts[name] = fn()
                times[name].append(time.perf_counter() - start)
        base = statistics.median(times["before (upsample all, sigmoid)"])
        for name in runners:
            median = statistics.median(times[name])
            print(f"| {kind} | {name} | {len(json.loads(texts[name]))} | {len(texts[name]) / 2**20:.2f} | {median:.3f} | "
                  f"{min(times[name]):.3f} | {base / median:.2f}x | {'yes' if median < 0.5 else 'NO'} |", flush=True)
        if len(set(texts.values())) != 1:
            print(f"MISMATCH: the {kind} results JSON differs between the rows")
            sys.exit(1)
    print()
    print("identical results JSON in both rows: yes")


if __name__ == "__main__":
    main()
