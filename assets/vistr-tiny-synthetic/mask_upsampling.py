"""Mask logits at stride 4 -> thresholded masks at the frame size: the original's bilinear upsampling and
sigmoid threshold, fast on CPU.

`upsample_and_threshold` is the operation: `sigmoid(F.interpolate(logits, size, "bilinear")) > threshold`.
On the CPU it decides whole input cells whose four corners are all clearly on one side of the threshold
and interpolates only the cells along mask edges, with the bilinear kernel's own weights and arithmetic
(bit for bit: which arithmetic this PyTorch build's kernel uses is found once, on a probe), so the masks
are the plain path's, several times faster (benchmarks/bench_postprocess.py). The masks come out
column-major, as pycocotools encodes them.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["bilinear_arithmetic", "upsample_and_threshold", "upsample_and_threshold_by_cells"]


def upsample_and_threshold(
    logits: torch.Tensor, size: tuple[int, int], threshold: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """sigmoid(bilinear upsampling of logits [N, h, w] to `size`) > threshold -> (masks [N, H, W] bool,
    nonempty [N]: whether each mask has a True pixel)."""
    fast = upsample_and_threshold_by_cells(logits, size, threshold)
    if fast is not None:
        return fast
    upsampled = F.interpolate(logits[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
    masks = upsampled.sigmoid() > threshold
    return masks, masks.flatten(1).any(1)


def _fma(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """float32 a * b + c rounded once, as a fused multiply-add (float32 products are exact in float64)."""
    return (a.double() * b.double() + c.double()).float()


def _combine(p: torch.Tensor, q: torch.Tensor, wp: torch.Tensor, wq: torch.Tensor, fused: bool) -> torch.Tensor:
    """p * wp + q * wq; with `fused`, the first product and the sum rounded once, as a compiler contracts it."""
    return _fma(p, wp, q * wq) if fused else p * wp + q * wq


def _linear_weights(out_size: int, in_size: int, dtype: torch.dtype, fused: bool) -> tuple[torch.Tensor, ...]:
    """First input index and the two weights of each output index of F.interpolate(mode="bilinear",
    align_corners=False), computed as its CPU kernel computes them: ratio in/out and source index
    ratio * (i + 0.5) - 0.5 in the input's float type, clamped at 0, floorf."""
    if out_size == in_size:
        return torch.arange(out_size), torch.ones(out_size, dtype=dtype), torch.zeros(out_size, dtype=dtype)
    ratio = torch.tensor(in_size, dtype=dtype) / out_size
    centers = torch.arange(out_size, dtype=dtype) + 0.5
    source = _fma(ratio, centers, torch.tensor(-0.5)) if fused else ratio * centers - 0.5
    source = source.clamp(min=0)
    index0 = source.float().floor().long().clamp(max=in_size - 1)
    lambda1 = (source - index0.to(dtype)).clamp(0, 1)
    return index0, 1 - lambda1, lambda1


def _bilinear(logits: torch.Tensor, size: tuple[int, int], fused: bool) -> torch.Tensor:
    """The whole upsampling [N, h, w] -> [N, H, W] with `_linear_weights` and `_combine` (for the probe)."""
    h, w = logits.shape[-2:]
    rows0, row_w0, row_w1 = _linear_weights(size[0], h, logits.dtype, fused)
    cols0, col_w0, col_w1 = _linear_weights(size[1], w, logits.dtype, fused)
    rows1, cols1 = (rows0 + 1).clamp(max=h - 1), (cols0 + 1).clamp(max=w - 1)
    upper = _combine(logits[:, rows0][:, :, cols0], logits[:, rows0][:, :, cols1], col_w0, col_w1, fused)
    lower = _combine(logits[:, rows1][:, :, cols0], logits[:, rows1][:, :, cols1], col_w0, col_w1, fused)
    return _combine(upper, lower, row_w0[:, None], row_w1[:, None], fused)


_BILINEAR_ARITHMETIC: dict[torch.dtype, bool | None] = {}


def bilinear_arithmetic(dtype: torch.dtype) -> bool | None:
    """Whether this PyTorch build's CPU bilinear kernel fuses its multiply-adds (True) or not (False), found
    by reproducing it bit for bit on a probe; None if neither does (then the kernel itself is used).
    float64 is only tried unfused (an exact float64 FMA is not at hand)."""
    if dtype not in _BILINEAR_ARITHMETIC:
        probe = torch.randn(3, 11, 13, generator=torch.Generator().manual_seed(0), dtype=dtype) * 4
        size = (70, 90)  # H + W > 128: the kernel's generic path, as for frame-sized outputs
        expected = F.interpolate(probe[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
        candidates = (True, False) if dtype == torch.float32 else (False,)
        _BILINEAR_ARITHMETIC[dtype] = next((f for f in candidates if torch.equal(_bilinear(probe, size, f), expected)), None)
    return _BILINEAR_ARITHMETIC[dtype]


def _output_chunks(index0: torch.Tensor, in_size: int, out_size: int) -> tuple[int, torch.Tensor, ...]:
    """Output indices reading input index i as their first tap, cut into runs of at most `g`.

    Returns g, the number of runs of each input index [in], its first run [in], and each run's start and
    length. Interior runs are whole; the border ones, longer (the kernel clamps there), are cut in two.
    """
    count = torch.bincount(index0, minlength=in_size)
    start = count.cumsum(0) - count
    g = -(-out_size // in_size)
    pieces = -(-count // g)
    first = pieces.cumsum(0) - pieces
    source = torch.repeat_interleave(torch.arange(in_size), pieces)
    run_start = start[source] + (torch.arange(len(source)) - first[source]) * g
    run_length = torch.minimum(torch.tensor(g), start[source] + count[source] - run_start)
    return g, pieces, first, run_start, run_length


def upsample_and_threshold_by_cells(logits: torch.Tensor, size: tuple[int, int], threshold: float):
    """sigmoid(bilinear upsampling of logits [N, h, w] to `size`) > threshold, deciding whole cells at once.

    An output pixel interpolates the 4 corners of one input cell with non-negative weights, so it lies
    between their minimum and maximum: a cell whose 4 corners are all clearly above (below) the
    threshold's logit makes all its output pixels True (False) without computing them. Only the pixels
    of the remaining cells (along mask edges) are interpolated with the kernel's own weights and
    arithmetic (bit for bit, checked once on a probe: `bilinear_arithmetic`) and passed through the
    sigmoid as before. Returns (masks [N, H, W] bool, stored
    column-major per mask as pycocotools wants them; nonempty [N]), or None where the plain path is the
    better one: other devices or dtypes, extreme thresholds, non-finite logits, downsampling or small
    outputs, or mostly undecided cells (noise-like logits).
    """
    n, h, w = logits.shape
    height, width = size
    if (logits.device.type != "cpu" or logits.dtype not in (torch.float32, torch.float64) or not 0.01 <= threshold <= 0.99
            or n == 0 or height < h or width < w or height * width < 16 * h * w or height + width <= 128):
        return None
    fused = bilinear_arithmetic(logits.dtype)
    if fused is None:
        return None
    magnitude = float(logits.abs().amax())
    if not math.isfinite(magnitude):
        return None
    dtype = logits.dtype
    rows0, row_w0, row_w1 = _linear_weights(height, h, dtype, fused)
    cols0, col_w0, col_w1 = _linear_weights(width, w, dtype, fused)
    # cell (i, j) has corners at rows i, min(i + 1, h - 1) and columns j, min(j + 1, w - 1); when upsampling
    # every cell is some pixel's
    below_row = torch.cat([logits[:, 1:], logits[:, -1:]], dim=1)
    low, high = torch.minimum(logits, below_row), torch.maximum(logits, below_row)
    low = torch.minimum(low, torch.cat([low[:, :, 1:], low[:, :, -1:]], dim=2))
    high = torch.maximum(high, torch.cat([high[:, :, 1:], high[:, :, -1:]], dim=2))
    boundary = math.log(threshold / (1 - threshold))
    # far beyond any rounding of the interpolation (relative) and of the sigmoid (absolute)
    margin = 1e-3 * (1 + abs(boundary)) + 1e-5 * magnitude
    above = low > boundary + margin
    undecided = (high >= boundary - margin) & ~above
    cells = undecided.nonzero()  # [K, 3]: (mask, i, j)
    if cells.shape[0] > 0.25 * n * h * w:
        return None  # mostly undecided: plain upsampling is cheaper
    # decided cells to pixels, in column-major storage [N, W, H] (numpy's repeat copies whole runs)
    row_count, col_count = torch.bincount(rows0, minlength=h), torch.bincount(cols0, minlength=w)
    expanded = np.repeat(above.transpose(1, 2).contiguous().numpy(), row_count.numpy(), axis=2)  # [N, w, H]
    masks_t = torch.from_numpy(np.repeat(expanded, col_count.numpy(), axis=1))  # [N, W, H]
    nonempty = above.flatten(1).any(1)
    if cells.shape[0]:
        # the pixels of undecided cells, as blocks of row runs x column runs of the cell
        g_rows, row_pieces, row_first, row_start, row_length = _output_chunks(rows0, h, height)
        g_cols, col_pieces, col_first, col_start, col_length = _output_chunks(cols0, w, width)
        index, i, j = cells.unbind(1)
        blocks = row_pieces[i] * col_pieces[j]  # 1 but at the borders
        if bool((blocks != 1).any()):
            cell = torch.repeat_interleave(torch.arange(len(index)), blocks)
            local = torch.arange(len(cell)) - torch.repeat_interleave(blocks.cumsum(0) - blocks, blocks)
            row_run = row_first[i[cell]] + torch.div(local, col_pieces[j[cell]], rounding_mode="floor")
            col_run = col_first[j[cell]] + local % col_pieces[j[cell]]
            index, i, j = index[cell], i[cell], j[cell]
        else:
            row_run, col_run = row_first[i], col_first[j]
        # runs padded to g by repeating their last pixel (recomputed and rewritten with the same value)
        r = row_start[row_run, None] + torch.minimum(torch.arange(g_rows), row_length[row_run, None] - 1)  # [K, gr]
        c = col_start[col_run, None] + torch.minimum(torch.arange(g_cols), col_length[col_run, None] - 1)  # [K, gc]
        next_i, next_j = (i + 1).clamp(max=h - 1), (j + 1).clamp(max=w - 1)
        v00, v01 = logits[index, i, j, None], logits[index, i, next_j, None]
        v10, v11 = logits[index, next_i, j, None], logits[index, next_i, next_j, None]
        w0, w1 = col_w0[c], col_w1[c]  # [K, gc]
        # the CPU kernel's order: (v00 * w0 + v01 * w1) * h0 + (v10 * w0 + v11 * w1) * h1
        upper, lower = _combine(v00, v01, w0, w1, fused), _combine(v10, v11, w0, w1, fused)
        values = _combine(upper[:, :, None], lower[:, :, None], row_w0[r][:, None, :], row_w1[r][:, None, :], fused)
        decided = values.sigmoid() > threshold
        masks_t[index[:, None, None], c[:, :, None], r[:, None, :]] = decided
        nonempty[index[decided.flatten(1).any(1)]] = True
    return masks_t.transpose(1, 2), nonempty
