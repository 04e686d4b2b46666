"""Deformable convolution (DCNv1, and modulated DCNv2) with no build step.

VisTR's mask head uses a deformable convolution.  ``torchvision.ops.deform_conv2d``
needs torchvision's compiled extension; this module provides the same operator
(same signature, same numerics) as Triton kernels for CUDA tensors and as a
vectorized PyTorch implementation for CPU tensors, so the model runs anywhere
PyTorch does.

The backend is chosen per call: CUDA tensors use Triton, everything else uses
PyTorch: DCNv1 without groups (VisTR's case) for inference as a 1x1 convolution and
bilinear gathers (``F.embedding_bag``), for training as ``grid_sample`` and matrix
products (their backward is the faster), the general case (DCNv2 masks, groups) as a
corner-by-corner gather.  ``VISTR_DCN_BACKEND=triton|torch`` forces Triton or the
gather path; with ``triton`` and
``TRITON_INTERPRET=1`` (set before this module is imported) the Triton kernels
run on CPU tensors through Triton's interpreter.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable
from torch.nn import functional as F

try:
    import triton
    import triton.language as tl
except Exception:  # Triton missing or broken: only the PyTorch path is available.
    triton = tl = None

# Triton decides when a kernel is decorated (at import) whether it is compiled or interpreted.
_INTERPRETED = triton is not None and os.environ.get("TRITON_INTERPRET", "").strip().lower() in ("1", "true", "on")

__all__ = ["deform_conv2d", "DeformConv2d"]

# Upper bound on the bytes of one im2col chunk in the PyTorch path.  The
# backward recomputes a chunk under autograd and keeps about four column-sized
# temporaries alive, so the peak working set stays near 256 MB.
_COLUMN_BUDGET_BYTES = 64 << 20
_BACKEND_ENV = "VISTR_DCN_BACKEND"


def _pair(value: int | tuple[int, int], name: str) -> tuple[int, int]:
    pair = (value, value) if isinstance(value, int) else tuple(value)
    if len(pair) != 2 or not all(isinstance(v, int) for v in pair):
        raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}")
    return pair


@dataclass(frozen=True)
class _Geometry:
    """Static description of one deformable convolution call."""

    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    kernel: tuple[int, int]
    out_size: tuple[int, int]
    groups: int
    offset_groups: int


def _check_tensors(input: Tensor, offset: Tensor, weight: Tensor, bias: Tensor | None, mask: Tensor | None) -> None:
    named = {"input": input, "offset": offset, "weight": weight, "bias": bias, "mask": mask}
    for name, tensor in named.items():
        if tensor is not None and not isinstance(tensor, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}")
    if not input.is_floating_point():
        raise TypeError(f"input must be a floating-point tensor, got {input.dtype}")
    for name, tensor in named.items():
        if tensor is None:
            continue
        if tensor.dtype != input.dtype:
            raise TypeError(
                f"{name} has dtype {tensor.dtype} but input has {input.dtype}; cast it with .to({input.dtype})")
        if tensor.device != input.device:
            raise ValueError(
                f"{name} is on {tensor.device} but input is on {input.device}; move it with .to(input.device)")
    for name, ndim in (("input", 4), ("offset", 4), ("weight", 4), ("mask", 4), ("bias", 1)):
        tensor = named[name]
        if tensor is not None and tensor.dim() != ndim:
            raise ValueError(f"{name} must be {ndim}-D, got shape {tuple(tensor.shape)}")


def _output_size(in_size: tuple[int, int], weight: Tensor, stride, padding, dilation) -> tuple[int, int]:
    size = []
    for length, k, s, p, d in zip(in_size, weight.shape[2:], stride, padding, dilation):
        size.append((length + 2 * p - d * (k - 1) - 1) // s + 1)
    if min(size) <= 0:
        raise ValueError(
            f"input of spatial size {tuple(in_size)} is too small for kernel {tuple(weight.shape[2:])} with "
            f"padding {padding} and dilation {dilation}; the output would be {tuple(size)}"
        )
    return size[0], size[1]


def _geometry(input: Tensor, offset: Tensor, weight: Tensor, bias: Tensor | None, mask: Tensor | None,
              stride, padding, dilation) -> _Geometry:
    """Validate every argument and derive the groups and output size."""
    _check_tensors(input, offset, weight, bias, mask)
    stride, padding, dilation = _pair(stride, "stride"), _pair(padding, "padding"), _pair(dilation, "dilation")
    if min(stride) < 1 or min(dilation) < 1 or min(padding) < 0:
        raise ValueError(f"need stride >= 1, dilation >= 1, padding >= 0; got {stride}, {dilation}, {padding}")
    n, channels = input.shape[:2]
    out_channels, group_channels, kh, kw = weight.shape
    if group_channels == 0 or channels % group_channels or out_channels % (channels // group_channels):
        raise ValueError(
            f"weight of shape {tuple(weight.shape)} does not fit an input with {channels} channels: "
            "weight.shape[1] must be in_channels // groups and weight.shape[0] a multiple of groups"
        )
    groups = channels // group_channels
    taps = kh * kw
    out_size = _output_size(input.shape[2:], weight, stride, padding, dilation)
    offset_groups = offset.shape[1] // (2 * taps)
    if offset.shape[1] != offset_groups * 2 * taps or offset_groups == 0 or channels % offset_groups:
        raise ValueError(
            f"offset has {offset.shape[1]} channels; it needs 2 * offset_groups * kernel_h * kernel_w "
            f"= 2 * offset_groups * {taps} channels, with offset_groups dividing the {channels} input channels"
        )
    expected = (n, offset.shape[1], *out_size)
    if tuple(offset.shape) != expected:
        raise ValueError(f"offset must have shape {expected} (batch, channels, output size), got {tuple(offset.shape)}")
    if mask is not None and tuple(mask.shape) != (n, offset_groups * taps, *out_size):
        raise ValueError(
            f"mask must have shape {(n, offset_groups * taps, *out_size)} (offset_groups * kernel_h * kernel_w "
            f"channels), got {tuple(mask.shape)}"
        )
    if bias is not None and tuple(bias.shape) != (out_channels,):
        raise ValueError(f"bias must have shape ({out_channels},), got {tuple(bias.shape)}")
    return _Geometry(stride, padding, dilation, (kh, kw), out_size, groups, offset_groups)


# --------------------------------------------------------------------------- PyTorch path


def _tap_grid(geo: _Geometry, device: torch.device, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """Undeformed sampling rows [taps, Ho, 1] and columns [taps, 1, Wo] of every kernel tap."""
    (kh, kw), (ho, wo) = geo.kernel, geo.out_size
    rows = torch.arange(ho, device=device, dtype=dtype) * geo.stride[0] - geo.padding[0]
    cols = torch.arange(wo, device=device, dtype=dtype) * geo.stride[1] - geo.padding[1]
    tap_rows = (torch.arange(kh, device=device, dtype=dtype) * geo.dilation[0]).repeat_interleave(kw)
    tap_cols = (torch.arange(kw, device=device, dtype=dtype) * geo.dilation[1]).repeat(kh)
    return (tap_rows[:, None, None] + rows[None, :, None]), (tap_cols[:, None, None] + cols[None, None, :])


def _sample_columns(input: Tensor, offset: Tensor, mask: Tensor | None, geo: _Geometry) -> Tensor:
    """Deformable im2col: bilinear samples [n, C, taps, Ho*Wo], modulated by ``mask``."""
    n, channels, height, width = input.shape
    taps, length, groups = geo.kernel[0] * geo.kernel[1], geo.out_size[0] * geo.out_size[1], geo.offset_groups
    base_y, base_x = _tap_grid(geo, input.device, input.dtype)
    offset = offset.view(n, groups, taps, 2, *geo.out_size)
    y, x = offset[:, :, :, 0] + base_y, offset[:, :, :, 1] + base_x
    y0, x0 = y.floor(), x.floor()
    frac_y, frac_x = y - y0, x - x0
    planes = input.view(n, groups, channels // groups, height * width)
    columns = None
    for dy, weight_y in ((0, 1 - frac_y), (1, frac_y)):
        for dx, weight_x in ((0, 1 - frac_x), (1, frac_x)):
            yy, xx = y0 + dy, x0 + dx
            valid = (yy >= 0) & (yy <= height - 1) & (xx >= 0) & (xx <= width - 1)
            corner_weight = torch.where(valid, weight_y * weight_x, 0.0)
            if mask is not None:
                corner_weight = corner_weight * mask.view_as(corner_weight)
            index = (yy.clamp(0, height - 1) * width + xx.clamp(0, width - 1)).long()
            index = index.view(n, groups, 1, taps * length).expand(-1, -1, planes.shape[2], -1)
            term = planes.gather(3, index) * corner_weight.view(n, groups, 1, taps * length)
            columns = term if columns is None else columns + term
    return columns.view(n, channels, taps, length)


def _torch_forward_chunk(input: Tensor, offset: Tensor, mask: Tensor | None, weight: Tensor, geo: _Geometry) -> Tensor:
    """Deformable convolution (no bias) of one batch chunk, differentiable through autograd."""
    dtype = input.dtype
    if dtype in (torch.float16, torch.bfloat16):
        input, offset, weight = input.float(), offset.float(), weight.float()
        mask = None if mask is None else mask.float()
    columns = _sample_columns(input, offset, mask, geo)
    n, channels, taps, length = columns.shape
    out_channels, groups = weight.shape[0], geo.groups
    columns = columns.view(n, groups, channels // groups * taps, length)
    out = torch.matmul(weight.reshape(groups, out_channels // groups, -1), columns)
    return out.view(n, out_channels, *geo.out_size).to(dtype)


def _batch_chunks(input: Tensor, geo: _Geometry) -> list[slice]:
    """Batch slices whose im2col buffer fits the column budget (one slice even for an empty batch).

    Traced (torch.compile, torch.export) the whole batch is one slice: a chunk count computed from the
    sizes would fix the batch and frame size of the graph to the example's.
    """
    if torch.compiler.is_compiling():
        return [slice(None)]
    taps, length = geo.kernel[0] * geo.kernel[1], geo.out_size[0] * geo.out_size[1]
    itemsize = max(input.element_size(), 4)
    chunk = max(1, _COLUMN_BUDGET_BYTES // (input.shape[1] * taps * length * itemsize))
    return [slice(start, start + chunk) for start in range(0, max(input.shape[0], 1), chunk)]


def _torch_chunk_grads(tensors: list[Tensor | None], needs: tuple[bool, ...], grad_out: Tensor, geo: _Geometry):
    """Recompute one chunk under autograd and return the gradients of (input, offset, mask, weight)."""
    leaves = [None if t is None else t.detach().requires_grad_(need) for t, need in zip(tensors, needs)]
    with torch.enable_grad():
        out = _torch_forward_chunk(*leaves, geo)
    wanted = [t for t in leaves if t is not None and t.requires_grad]
    grads = iter(torch.autograd.grad(out, wanted, grad_out))
    return [next(grads) if t is not None and t.requires_grad else None for t in leaves]


class _TorchDeformConv(torch.autograd.Function):
    """Chunked deformable convolution whose backward recomputes each chunk, bounding memory."""

    @staticmethod
    def forward(ctx, input: Tensor, offset: Tensor, mask: Tensor | None, weight: Tensor, geo: _Geometry) -> Tensor:
        ctx.geo = geo
        ctx.save_for_backward(input, offset, mask, weight)
        chunks = _batch_chunks(input, geo)
        mask_chunk = (lambda s: None) if mask is None else (lambda s: mask[s])
        return torch.cat([_torch_forward_chunk(input[s], offset[s], mask_chunk(s), weight, geo) for s in chunks])

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: Tensor):
        input, offset, mask, weight = ctx.saved_tensors
        needs = tuple(ctx.needs_input_grad[:4])
        per_chunk = []
        for s in _batch_chunks(input, ctx.geo):
            sliced = [input[s], offset[s], None if mask is None else mask[s], weight]
            per_chunk.append(_torch_chunk_grads(sliced, needs, grad_out[s], ctx.geo))
        grads = [None if g[0] is None else torch.cat(g) for g in zip(*(c[:3] for c in per_chunk))]
        grad_weight = None if not needs[3] else sum(c[3] for c in per_chunk)
        return (*grads, grad_weight, None)


def _torch_deform_conv(input, offset, mask, weight, bias, geo) -> Tensor:
    out = _TorchDeformConv.apply(input, offset, mask, weight, geo)
    return out if bias is None else out + bias.view(1, -1, 1, 1)


# --------------------------------------------------------------------------- DCNv1 path (CPU)


def _dcnv1_applies(input: Tensor, mask: Tensor | None, geo: _Geometry) -> bool:
    """DCNv1 without groups (any float dtype): the case VisTR's mask head has, inference and training alike."""
    return mask is None and geo.groups == 1 and geo.offset_groups == 1


def _dcnv1_deform_conv(input: Tensor, offset: Tensor, weight: Tensor, bias: Tensor | None, geo: _Geometry) -> Tensor:
    """DCNv1 without groups: inference by ``_gathered_deform_conv``, training by ``_grid_sample_deform_conv``.

    The gathered path is the faster forward (at the mask head's shape on a 2-core AMD EPYC, 4x in float32
    and 1.4x in bf16), but autograd through ``F.embedding_bag`` made forward and backward together 1.7x
    (float32) and 2.5x (bf16) slower than grid_sample's vectorized backward; so a call that autograd will
    differentiate takes the grid-sample path.  Traced (torch.compile, torch.export) both take
    ``_grid_sample_traced``: embedding_bag with per-sample weights has no ONNX form, and the eager paths'
    chunk loops would fix the batch and frame size of a graph.
    """
    if torch.compiler.is_compiling():
        return _grid_sample_traced(input, offset, weight, bias, geo)
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (input, offset, weight, bias)):
        return _grid_sample_deform_conv(input, offset, weight, bias, geo)
    return _gathered_deform_conv(input, offset, weight, bias, geo)


# Bytes of one chunk's product table in ``_gathered_deform_conv``: small enough to stay in cache between the
# product and its gathers.  On this project's 2-core AMD EPYC, at the mask head's shape (2.9 MB a frame at
# 160 x 288 inputs), tables of two frames were fastest, one and four frames 10-20 % slower.
_TABLE_BUDGET_BYTES = 8 << 20
# Zero pixels around the input in the product table: a sample's corners stay inside the table for every
# position from -2 to size + 1, and positions outside are moved there (see ``_corner_bags``).
_TABLE_BORDER = 2


def _position_dtype(dtype: torch.dtype) -> torch.dtype:
    """Sampling positions in float32 or better: in bf16 they would be off by up to half a pixel."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _gathered_deform_conv(input: Tensor, offset: Tensor, weight: Tensor, bias: Tensor | None, geo: _Geometry) -> Tensor:
    """DCNv1 inference as a 1x1 convolution and four bilinear gathers per chunk of samples, with no per-tap loop.

    Bilinear sampling weighs every channel of a pixel alike, so it commutes with the product over channels:
    W_tap @ sample(x) = sample(W_tap @ x).  A chunk's products come first: one 1x1 convolution (oneDNN, in
    the input's dtype, bf16 included) of the input, padded by a zero border, with every tap's weights gives
    a table of taps x C_out values per pixel (``_product_table``).  Then, for each bilinear corner, one
    ``F.embedding_bag`` gathers the table rows of that corner of every tap's sampling position, weighs them
    by their bilinear weights and sums them per output position (``_corner_bags``): sampling and the sum
    over taps in one pass, in float32 or better, rounded once to the input's dtype.  VisTR's mask head
    gathers 24 output channels per sample instead of 48 input channels, and the table of a chunk (about two
    of its frames) stays in cache between its product and its gathers.  The error in half precision is
    that of one rounding of the products to the input's dtype.
    """
    batch, (out_h, out_w), out_channels = input.shape[0], geo.out_size, weight.shape[0]
    chunk = max(1, _TABLE_BUDGET_BYTES // max(1, _table_bytes(input.shape[2:], weight)))
    dtype = _position_dtype(input.dtype)
    # written in place, chunk by chunk: one buffer, no concatenation; channels-last once permuted
    sampled = input.new_empty((batch, out_h, out_w, out_channels), dtype=dtype)
    widened = None  # half precision: the float32 table, one buffer for every chunk (fresh memory for each cost 4x)
    if input.dtype != dtype:
        widened = input.new_empty((min(chunk, batch) * _table_rows(input.shape[2:], weight), out_channels), dtype=dtype)
    layout = _BagLayout.of(input, weight, geo, chunk)
    for start in range(0, batch, chunk):
        stop = min(start + chunk, batch)
        _gathered_chunk(input[start:stop], offset[start:stop], weight, layout, sampled[start:stop], widened)
    output = sampled.permute(0, 3, 1, 2)
    if bias is not None:
        output = output + bias.to(dtype).view(1, -1, 1, 1)
    return output.to(input.dtype)


def _gathered_chunk(input: Tensor, offset: Tensor, weight: Tensor, layout: _BagLayout, out: Tensor,
                    widened: Tensor | None) -> None:
    """One chunk of ``_gathered_deform_conv``, written into ``out`` [n, Ho, Wo, C_out] (float32 or better).

    A function of its own so that its table is freed before the next chunk's is made: the allocator then
    hands the next chunk the same, cache-warm memory (with the table kept alive across the loop's
    iterations, the forward took 1.5x as long at the mask head's shape).
    """
    corners = _corner_bags(offset, layout)
    table = _product_table(input, weight, widened)  # after the bags: still in cache for the gathers
    out = out.view(-1, weight.shape[0])
    (first_rows, first_weights), *others = corners
    out.copy_(F.embedding_bag(first_rows, table, per_sample_weights=first_weights, mode="sum"))
    for rows, row_weights in others:
        out.add_(F.embedding_bag(rows, table, per_sample_weights=row_weights, mode="sum"))


def _table_rows(in_size, weight: Tensor) -> int:
    """Rows of one sample's product table: a row per padded pixel and tap."""
    height, width = (length + 2 * _TABLE_BORDER for length in in_size)
    return height * width * weight.shape[2] * weight.shape[3]


def _table_bytes(in_size, weight: Tensor) -> int:
    """Bytes of one sample's product table (float32 or better)."""
    return _table_rows(in_size, weight) * weight.shape[0] * max(weight.element_size(), 4)


def _product_table(input: Tensor, weight: Tensor, widened: Tensor | None = None) -> Tensor:
    """Rows [n * (H + 4) * (W + 4) * taps, C_out]: each padded pixel's product with each tap's weights, in
    float32 or better (half precision: copied into the first rows of ``widened``)."""
    out_channels, channels, kh, kw = weight.shape
    padded = F.pad(input, (_TABLE_BORDER,) * 4).contiguous(memory_format=torch.channels_last)
    tap_weights = weight.permute(2, 3, 0, 1).reshape(kh * kw * out_channels, channels, 1, 1)  # tap-major
    products = F.conv2d(padded, tap_weights)  # channels-last: a pixel's taps x C_out values are contiguous
    products = products.permute(0, 2, 3, 1).reshape(-1, out_channels)
    return products if widened is None else widened[:products.shape[0]].copy_(products)


@dataclass(frozen=True)
class _BagLayout:
    """What every chunk's ``_corner_bags`` shares, computed once a call: the undeformed positions, the bounds,
    and where a sample's rows start in the product table."""

    base: Tensor  # [Ho, Wo, taps, 2]: each tap's undeformed (y, x) position in pixels
    limit: Tensor  # [2]: (H, W), the positions' upper bound
    row_start: Tensor  # [chunk, 1, 1, taps]: the table row of pixel (0, 0) for each sample and tap
    down: int  # rows from a pixel to the one below it (the right one is `taps` rows on)

    @classmethod
    def of(cls, input: Tensor, weight: Tensor, geo: _Geometry, chunk: int) -> _BagLayout:
        device, dtype, taps = input.device, _position_dtype(input.dtype), geo.kernel[0] * geo.kernel[1]
        rows, cols = _tap_grid(geo, device, dtype)  # [taps, Ho, 1], [taps, 1, Wo]
        base = torch.stack(torch.broadcast_tensors(rows, cols), dim=-1).permute(1, 2, 0, 3).contiguous()
        table_w, sample_rows = input.shape[3] + 2 * _TABLE_BORDER, _table_rows(input.shape[2:], weight)
        corner = _TABLE_BORDER * (table_w + 1) * taps  # the row of pixel (0, 0), tap 0, in a sample's table
        row_start = torch.arange(chunk, device=device).view(chunk, 1, 1, 1) * sample_rows + corner
        return cls(base, torch.tensor(input.shape[2:], device=device, dtype=dtype),
                   row_start + torch.arange(taps, device=device), table_w * taps)


def _corner_bags(offset: Tensor, layout: _BagLayout) -> list[tuple[Tensor, Tensor]]:
    """For each bilinear corner: the product-table rows [n * Ho * Wo, taps] that each output position gathers
    for its taps, and their weights.

    Positions are computed in pixels, as torchvision does, and their floor is torchvision's.  torchvision
    gives a sample at -1 or left of it, or at the size or right of it, the value 0; so do the table's zero
    border and these moves: positions left of -1 (and NaN) go to -2, whose corners -2 and -1 are both zero
    pixels, and positions right of the size go to the size, whose corners are too.  Both axes are computed
    together, in as few whole-tensor steps as the arithmetic allows: at the mask head's shape a chunk is
    small, and each step costs its dispatch.
    """
    n, (out_h, out_w, taps, _) = offset.shape[0], layout.base.shape
    # (dy, dx) per tap, position-major: a copy unless the offsets are channels-last already
    deform = offset.permute(0, 2, 3, 1).to(layout.base.dtype).contiguous().view(n, out_h, out_w, taps, 2)
    position = deform + layout.base
    position = torch.minimum(torch.where(position >= -1, position, -2.0), layout.limit)
    low = position.floor()
    high_weight = position - low
    low_weight = 1 - high_weight
    low = low.long()
    first = low[..., 0] * layout.down
    first += low[..., 1] * taps
    first += layout.row_start[:n]
    (wy0, wx0), (wy1, wx1) = low_weight.unbind(-1), high_weight.unbind(-1)
    down, right, shape = layout.down, taps, (n * out_h * out_w, taps)
    return [(first.view(shape), (wy0 * wx0).view(shape)), ((first + right).view(shape), (wy0 * wx1).view(shape)),
            ((first + down).view(shape), (wy1 * wx0).view(shape)),
            ((first + (down + right)).view(shape), (wy1 * wx1).view(shape))]


# --------------------------------------------------------------------------- grid-sample path (DCNv1 training, traced)

# Bytes of one chunk's float32 products in the half-precision grid-sample path: small enough to stay
# in cache between the product and its sampling (VisTR's mask head: one sample at a time).
_HALF_PRECISION_BUDGET_BYTES = 4 << 20


def _integer_grid(size: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    """``grid_sample`` coordinates (align_corners=False) of the pixel positions -2, -1, ..., size + 1 of an axis.

    grid_sample maps a coordinate g back to the pixel position ((g + 1) * size - 1) / 2, rounded (in one
    rounding on some kernels, in several on others).  The floor of that position decides which two
    pixels a sample's offset gradient differences, and at an integer n the plain (2n + 1) / size - 1
    can come back a rounding error below n, the wrong side of the jump: the gradient of the pixel
    pair to the left, or a nonzero one on the border (n = -1 and n = size count one zero pixel).
    Each entry is therefore raised by one ulp of g + 1 where (g + 1) * size < 2n + 1 exactly, which
    makes the position come back >= n under any rounding.
    """
    n = torch.arange(-2, size + 2, device=device, dtype=dtype)
    grid = (n * 2 + 1) / size - 1
    unit = grid + 1  # what grid_sample computes first, in the same precision
    if dtype == torch.float64:  # unit * size exactly, as two products of 26 and 27 significant bits (size < 2**26)
        high = (unit.view(torch.int64) & ~((1 << 27) - 1)).view(torch.float64)
        below = (high * size - (n * 2 + 1)) + (unit - high) * size < 0
    else:  # float32: the product is exact in float64
        below = unit.double() * size < (n * 2 + 1).double()
    # one ulp more for g + 1: below -0.5 the ulp of g is the step of g + 1, above it that of g + 1 is
    raised = torch.where(grid < -0.5, _next_up(grid), _next_up(unit) - 1)
    return torch.where(below, raised, grid)


def _next_up(x: Tensor) -> Tensor:
    """``torch.nextafter(x, inf)`` bit for bit, in additions and products only, which ONNX can express.

    u(1 + 2u)|x| (u = eps / 2), rounded, is more than half and less than 5/4 of the gap from x to the
    next float above it, so x plus it rounds to nearest onto that float, as long as the product is a
    normal number: smaller magnitudes are first scaled up by 2**p (p significant bits; exact), and where
    the gap is the smallest subnormal (|x| < 2 * tiny) that gap is added, written -(-x - s) so that -s
    steps to -0 as nextafter does.  -inf steps to -max; +inf and NaN stay.
    """
    finfo = torch.finfo(x.dtype)
    precision = round(-math.log2(finfo.eps)) + 1
    subnormal_step = finfo.smallest_normal * finfo.eps
    magnitude = x.abs()
    scale = torch.where(magnitude < finfo.smallest_normal * 2.0 ** (precision + 1), 2.0**precision, 1.0).to(x.dtype)
    scaled = x * scale
    stepped = (scaled + scaled.abs() * (finfo.eps / 2 * (1 + finfo.eps))) / scale
    stepped = torch.where(magnitude < 2 * finfo.smallest_normal, -(-x - subnormal_step), stepped)
    return torch.where(x == -math.inf, -finfo.max, stepped)


def _grid_coordinates(position: Tensor, integer_grid: Tensor) -> Tensor:
    """Normalized coordinates of pixel positions: the integer part's entry of ``_integer_grid``, plus the fraction.

    Adding the nonnegative fraction cannot round below the integer's entry, so a position comes back
    with the floor torchvision uses (one within the coordinates' resolution, about size * 2**-24 pixels
    in float32, below an integer can still round up onto it).  Positions left of -2 or right of
    size + 1 are moved into [-2, -1) and [size + 1, size + 2): as far out, they still sample zero with
    zero gradients.
    """
    size = integer_grid.numel() - 4
    floor = position.detach().floor()
    # the integer clamp keeps a NaN position's index in range (its coordinate stays NaN through the fraction)
    index = floor.clamp(-2, size + 1).add_(2).int().clamp_(0, size + 3)
    whole = integer_grid.index_select(0, index.view(-1)).view(index.shape)
    return torch.add(whole, position - floor, alpha=2 / size)


def _grid_sample_deform_conv(input: Tensor, offset: Tensor, weight: Tensor, bias: Tensor | None, geo: _Geometry) -> Tensor:
    """DCNv1 as ``F.grid_sample`` and matrix products, differentiable by autograd.

    grid_sample's bilinear, zero-padded sampling is DCNv1's (a corner outside the image counts 0), and
    PyTorch's CPU kernels for it and for its backward are vectorized: several times faster than the
    corner-by-corner gather of ``_sample_columns`` in both directions.  The deformed positions are
    computed in pixels, as torchvision does, and converted by ``_grid_coordinates``, always in float32
    or better: sampling positions in bf16 would be off by up to half a pixel.  float32/float64 sample
    the input (``_grid_sample_full_precision``); half precision takes the product first
    (``_grid_sample_half_precision``).
    """
    if input.dtype in (torch.float16, torch.bfloat16):
        return _grid_sample_half_precision(input, offset, weight, bias, geo)
    bias = None if bias is None else bias.contiguous()
    return _grid_sample_full_precision(input.contiguous(), offset.contiguous(), weight.contiguous(), bias, geo)


def _sampling_grid(offset: Tensor, rows: Tensor, cols: Tensor, rows_grid: Tensor, cols_grid: Tensor,
                   geo: _Geometry) -> Tensor:
    """grid_sample's grid [N * taps, Ho, Wo, 2] (x, y) of the deformed positions, tap-major per sample."""
    (out_h, out_w), taps = geo.out_size, geo.kernel[0] * geo.kernel[1]
    deform = offset.view(offset.shape[0], taps, 2, out_h, out_w)  # (dy, dx) per tap
    grid = torch.stack((_grid_coordinates(deform[:, :, 1] + cols, cols_grid),
                        _grid_coordinates(deform[:, :, 0] + rows, rows_grid)), dim=-1)
    return grid.view(offset.shape[0] * taps, out_h, out_w, 2)


def _grid_sample_half_precision(input: Tensor, offset: Tensor, weight: Tensor, bias: Tensor | None,
                                geo: _Geometry) -> Tensor:
    """``_grid_sample_deform_conv`` on float16/bfloat16 tensors: each tap's product before its sampling.

    Bilinear sampling weighs the pixels of every channel alike, so it commutes with a product over
    channels: W_tap @ sample(x) = sample(W_tap @ x).  The per-tap products run first, in the input's
    dtype (bf16 on AMX, float32 accumulation), over channels-last pixels (the mask head's layout: no
    copy of the input), and grid_sample then samples C_out channels per tap instead of C_in (VisTR:
    24 instead of 48) in float32, channels-last, on float32 positions; the taps are summed in float32
    and rounded once.  The error is that of one rounding of the products to the input's dtype.
    """
    batch, channels, height, width = input.shape
    (out_h, out_w), taps = geo.out_size, geo.kernel[0] * geo.kernel[1]
    out_channels = weight.shape[0]
    rows, cols = _tap_grid(geo, input.device, torch.float32)
    rows_grid, cols_grid = (_integer_grid(size, input.device, torch.float32) for size in (height, width))
    tap_weight = weight.flatten(2).permute(2, 1, 0)  # [taps, C, C_out]
    pixels = input.permute(0, 2, 3, 1).reshape(batch, 1, height * width, channels)  # a view when channels-last
    offset = offset.to(torch.float32, memory_format=torch.contiguous_format)
    bias = None if bias is None else bias.float().view(1, -1, 1, 1)
    chunk = max(1, _HALF_PRECISION_BUDGET_BYTES // max(1, taps * out_channels * height * width * 4))
    outputs = []
    for start in range(0, max(batch, 1), chunk):  # an empty batch is one empty chunk, still differentiable
        stop = min(start + chunk, batch)
        products = torch.matmul(pixels[start:stop], tap_weight).float()  # [n, taps, H*W, C_out]
        products = products.view((stop - start) * taps, height, width, out_channels).permute(0, 3, 1, 2)
        grid = _sampling_grid(offset[start:stop], rows, cols, rows_grid, cols_grid, geo)
        sampled = F.grid_sample(products, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        summed = sampled.view(stop - start, taps, out_channels, out_h, out_w).sum(1)
        outputs.append((summed if bias is None else summed + bias).to(input.dtype))
    return torch.cat(outputs) if len(outputs) > 1 else outputs[0]


def _grid_sample_full_precision(input: Tensor, offset: Tensor, weight: Tensor, bias: Tensor | None, geo: _Geometry) -> Tensor:
    """``_grid_sample_deform_conv`` on float32/float64 tensors."""
    batch, channels, height, width = input.shape
    (out_h, out_w), taps = geo.out_size, geo.kernel[0] * geo.kernel[1]
    rows, cols = _tap_grid(geo, input.device, input.dtype)
    rows_grid, cols_grid = (_integer_grid(size, input.device, input.dtype) for size in (height, width))
    flat_weight = weight.reshape(weight.shape[0], channels * taps)  # column index: channel * taps + tap
    chunk = max(1, _COLUMN_BUDGET_BYTES // max(1, channels * taps * out_h * out_w * input.element_size()))
    outputs = []
    for start in range(0, max(batch, 1), chunk):  # an empty batch is one empty chunk, still differentiable
        stop = min(start + chunk, batch)
        grid = _sampling_grid(offset[start:stop], rows, cols, rows_grid, cols_grid, geo)
        columns = F.grid_sample(input[start:stop], grid.view(stop - start, taps * out_h, out_w, 2),
                                mode="bilinear", padding_mode="zeros", align_corners=False)
        # bmm, not matmul: matmul would fold the batch into a transposed copy of the columns
        columns = columns.view(stop - start, channels * taps, out_h * out_w)
        outputs.append(torch.bmm(flat_weight.expand(stop - start, -1, -1), columns))
    output = (torch.cat(outputs) if len(outputs) > 1 else outputs[0]).view(batch, weight.shape[0], out_h, out_w)
    return output if bias is None else output + bias.view(1, -1, 1, 1)


def _grid_sample_traced(input: Tensor, offset: Tensor, weight: Tensor, bias: Tensor | None, geo: _Geometry) -> Tensor:
    """DCNv1 under torch.compile and torch.export: ``F.grid_sample`` and products, with no loop whose length
    depends on a size.

    The eager path loops over batch chunks whose count follows from the batch and frame size; traced,
    that loop would fix both to the example's values.  This path loops over the kernel taps instead, a
    constant: each tap's samples, as large as the input, enter the output before the next tap's are
    drawn, so no buffer holds the samples of all taps at once.  grid_sample's bilinear, zero-padded
    sampling is DCNv1's; the positions are computed in pixels and converted by ``_grid_coordinates``.
    Full precision samples, then multiplies; half precision multiplies in the input's dtype, then samples
    and sums in float32, as the eager grid-sample paths do.
    """
    batch, channels, height, width = input.shape
    (out_h, out_w), taps = geo.out_size, geo.kernel[0] * geo.kernel[1]
    half = input.dtype in (torch.float16, torch.bfloat16)
    position_dtype = _position_dtype(input.dtype)
    rows, cols = _tap_grid(geo, input.device, position_dtype)
    rows_grid, cols_grid = (_integer_grid(size, input.device, position_dtype) for size in (height, width))
    offset = offset.to(position_dtype, memory_format=torch.contiguous_format)
    grid = _sampling_grid(offset, rows, cols, rows_grid, cols_grid, geo).unflatten(0, (batch, taps))
    pixels = input.permute(0, 2, 3, 1).reshape(batch, height * width, channels) if half else None
    output = None
    for tap, tap_weight in enumerate(weight.flatten(2).unbind(2)):  # tap_weight [C_out, C]
        if half:
            products = torch.matmul(pixels, tap_weight.t()).float().view(batch, height, width, -1).permute(0, 3, 1, 2)
            term = F.grid_sample(products, grid[:, tap], mode="bilinear", padding_mode="zeros", align_corners=False)
        else:
            sampled = F.grid_sample(input, grid[:, tap], mode="bilinear", padding_mode="zeros", align_corners=False)
            term = torch.matmul(tap_weight, sampled.flatten(2)).view(batch, -1, out_h, out_w)
        output = term if output is None else output + term
    if bias is not None:
        output = output + bias.to(output.dtype).view(1, -1, 1, 1)
    return output.to(input.dtype)


# --------------------------------------------------------------------------- Triton path
#
# Layouts: input [N, C, H, W]; offset [N, G_off, taps, 2, L]; mask [N, G_off, taps, L] with L = Ho*Wo;
# the weight is handed to the kernels transposed to [groups, taps, C/groups, C_out/groups] so that
# a tile of output channels is contiguous.  A channel block never straddles a conv group or an
# offset group: the kernels walk the intersections of the two partitions of the input channels.


def _jit(fn):
    return fn if triton is None else triton.jit(fn)


@_jit
def _tap_corners(off_tap, l, lmask, L, Wo, H, W, tap_y, tap_x, SH, SW, PH, PW, ACC: tl.constexpr):
    """Top-left pixel index, the four corner masks and the fractional position of one tap's samples."""
    y = ((l // Wo) * SH - PH + tap_y).to(ACC) + tl.load(off_tap + l, mask=lmask, other=0.0).to(ACC)
    x = ((l % Wo) * SW - PW + tap_x).to(ACC) + tl.load(off_tap + L + l, mask=lmask, other=0.0).to(ACC)
    y = tl.minimum(tl.maximum(y, -2.0), H + 1.0)  # keeps the integer conversion finite, changes no valid corner
    x = tl.minimum(tl.maximum(x, -2.0), W + 1.0)
    y0, x0 = tl.floor(y), tl.floor(x)
    iy, ix = y0.to(tl.int32), x0.to(tl.int32)
    top, bottom = lmask & (iy >= 0) & (iy < H), lmask & (iy >= -1) & (iy < H - 1)
    left, right = (ix >= 0) & (ix < W), (ix >= -1) & (ix < W - 1)
    return iy * W + ix, top & left, top & right, bottom & left, bottom & right, y - y0, x - x0


@_jit
def _tap_weights(off_ptr, mask_ptr, tap, l, lmask, L, Wo, H, W, tap_y, tap_x, SH, SW, PH, PW,
                 HAS_MASK: tl.constexpr, ACC: tl.constexpr):
    """One tap's top-left pixel index, corner masks and four bilinear weights (times the DCNv2 mask)."""
    pix, ok00, ok01, ok10, ok11, fy, fx = _tap_corners(
        off_ptr + tap * 2 * L, l, lmask, L, Wo, H, W, tap_y, tap_x, SH, SW, PH, PW, ACC)
    w00, w01, w10, w11 = (1 - fy) * (1 - fx), (1 - fy) * fx, fy * (1 - fx), fy * fx
    if HAS_MASK:
        m = tl.load(mask_ptr + tap * L + l, mask=lmask, other=0.0).to(ACC)
        w00, w01, w10, w11 = w00 * m, w01 * m, w10 * m, w11 * m
    return pix, ok00, ok01, ok10, ok11, w00, w01, w10, w11


@_jit
def _corner(plane, chan, cmask, HW, pix, ok, ACC: tl.constexpr):
    """Gather one bilinear corner for a block of pixels x channels; zero where the corner is outside."""
    return tl.load(plane + chan[None, :] * HW + pix[:, None], mask=ok[:, None] & cmask[None, :], other=0.0).to(ACC)


@_jit
def _sampled_block(plane, chan, cmask, HW, W, pix, ok00, ok01, ok10, ok11, w00, w01, w10, w11, ACC: tl.constexpr):
    """Bilinear samples [pixels, channels] from per-pixel corner weights."""
    value = w00[:, None] * _corner(plane, chan, cmask, HW, pix, ok00, ACC)
    value += w01[:, None] * _corner(plane, chan, cmask, HW, pix + 1, ok01, ACC)
    value += w10[:, None] * _corner(plane, chan, cmask, HW, pix + W, ok10, ACC)
    value += w11[:, None] * _corner(plane, chan, cmask, HW, pix + W + 1, ok11, ACC)
    return value


@_jit
def _forward_kernel(
    x_ptr, off_ptr, mask_ptr, w_ptr, b_ptr, out_ptr,
    C, H, W, Wo, L, G, Cg, Og, Cog, G_off,
    SH, SW, PH, PW, DH, DW,
    KH: tl.constexpr, KW: tl.constexpr, HAS_MASK: tl.constexpr, HAS_BIAS: tl.constexpr,
    ACC: tl.constexpr, DOT: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_L: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_O: tl.constexpr,
):
    """Implicit GEMM: out[n, g, o-tile, l-tile] = sum over (channel, tap) of samples x weight."""
    n, g = tl.program_id(0) // G, tl.program_id(0) % G
    l = tl.program_id(1) * BLOCK_L + tl.arange(0, BLOCK_L)
    o = tl.program_id(2) * BLOCK_O + tl.arange(0, BLOCK_O)
    lmask, omask = l < L, o < Og
    n64 = n.to(tl.int64)
    plane = x_ptr + n64 * C * H * W
    acc = tl.zeros((BLOCK_L, BLOCK_O), ACC)
    c_lo, c_hi = g * Cg, g * Cg + Cg
    for og in range(c_lo // Cog, (c_hi - 1) // Cog + 1):
        s_lo, s_hi = tl.maximum(c_lo, og * Cog), tl.minimum(c_hi, og * Cog + Cog)
        for k in range(KH * KW):
            pix, ok00, ok01, ok10, ok11, w00, w01, w10, w11 = _tap_weights(
                off_ptr, mask_ptr, (n64 * G_off + og) * KH * KW + k, l, lmask, L, Wo, H, W, (k // KW) * DH,
                (k % KW) * DW, SH, SW, PH, PW, HAS_MASK, ACC)
            for c0 in range(s_lo, s_hi, BLOCK_C):
                chan = c0 + tl.arange(0, BLOCK_C)
                cmask = chan < s_hi
                cols = _sampled_block(plane, chan, cmask, H * W, W, pix, ok00, ok01, ok10, ok11,
                                      w00, w01, w10, w11, ACC)
                w_tile = tl.load(w_ptr + ((g * KH * KW + k) * Cg + chan - c_lo)[:, None] * Og + o[None, :],
                                 mask=cmask[:, None] & omask[None, :], other=0.0)
                acc += tl.dot(cols.to(DOT), w_tile.to(DOT), input_precision=PRECISION, out_dtype=ACC)
    if HAS_BIAS:
        acc += tl.load(b_ptr + g * Og + o, mask=omask, other=0.0).to(ACC)[None, :]
    out = out_ptr + n64 * G * Og * L + (g * Og + o)[None, :] * L + l[:, None]
    tl.store(out, acc.to(out_ptr.dtype.element_ty), mask=lmask[:, None] & omask[None, :])


@_jit
def _backward_data_kernel(
    x_ptr, off_ptr, mask_ptr, w_ptr, gout_ptr, gx_ptr, goff_ptr, gmask_ptr,
    C, H, W, Wo, L, G, Cg, Og, Cog, G_off,
    SH, SW, PH, PW, DH, DW,
    KH: tl.constexpr, KW: tl.constexpr, HAS_MASK: tl.constexpr, NEED_GX: tl.constexpr,
    ACC: tl.constexpr, DOT: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_L: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_O: tl.constexpr,
):
    """Per (sample, offset group, pixel tile): column gradients W^T grad_out, reduced over channels into
    offset and mask gradients, and scattered with atomics into the input gradient."""
    n, og = tl.program_id(0) // G_off, tl.program_id(0) % G_off
    l = tl.program_id(1) * BLOCK_L + tl.arange(0, BLOCK_L)
    lmask = l < L
    n64 = n.to(tl.int64)
    plane, grad_plane = x_ptr + n64 * C * H * W, gx_ptr + n64 * C * H * W
    gout = gout_ptr + n64 * G * Og * L
    c_lo, c_hi = og * Cog, og * Cog + Cog
    for k in range(KH * KW):
        tap = (n64 * G_off + og) * KH * KW + k
        pix, ok00, ok01, ok10, ok11, fy, fx = _tap_corners(
            off_ptr + tap * 2 * L, l, lmask, L, Wo, H, W, (k // KW) * DH, (k % KW) * DW, SH, SW, PH, PW, ACC)
        m = tl.load(mask_ptr + tap * L + l, mask=lmask, other=0.0).to(ACC) if HAS_MASK else 1.0
        grad_y = tl.zeros((BLOCK_L,), ACC)
        grad_x = tl.zeros((BLOCK_L,), ACC)
        grad_m = tl.zeros((BLOCK_L,), ACC)
        for g in range(c_lo // Cg, (c_hi - 1) // Cg + 1):
            s_lo, s_hi = tl.maximum(c_lo, g * Cg), tl.minimum(c_hi, g * Cg + Cg)
            for c0 in range(s_lo, s_hi, BLOCK_C):
                chan = c0 + tl.arange(0, BLOCK_C)
                cmask = chan < s_hi
                grad_col = tl.zeros((BLOCK_L, BLOCK_C), ACC)
                for o0 in range(0, Og, BLOCK_O):
                    o = o0 + tl.arange(0, BLOCK_O)
                    omask = o < Og
                    go = tl.load(gout + (g * Og + o)[None, :] * L + l[:, None], mask=lmask[:, None] & omask[None, :],
                                 other=0.0)
                    w_tile = tl.load(w_ptr + ((g * KH * KW + k) * Cg + chan - g * Cg)[None, :] * Og + o[:, None],
                                     mask=omask[:, None] & cmask[None, :], other=0.0)
                    grad_col += tl.dot(go.to(DOT), w_tile.to(DOT), input_precision=PRECISION, out_dtype=ACC)
                v00 = _corner(plane, chan, cmask, H * W, pix, ok00, ACC)
                v01 = _corner(plane, chan, cmask, H * W, pix + 1, ok01, ACC)
                v10 = _corner(plane, chan, cmask, H * W, pix + W, ok10, ACC)
                v11 = _corner(plane, chan, cmask, H * W, pix + W + 1, ok11, ACC)
                ry, rx = 1 - fy[:, None], 1 - fx[:, None]
                sample = ry * (rx * v00 + fx[:, None] * v01) + fy[:, None] * (rx * v10 + fx[:, None] * v11)
                grad_m += tl.sum(grad_col * sample, axis=1)
                grad_y += tl.sum(grad_col * (rx * (v10 - v00) + fx[:, None] * (v11 - v01)), axis=1)
                grad_x += tl.sum(grad_col * (ry * (v01 - v00) + fy[:, None] * (v11 - v10)), axis=1)
                if NEED_GX:
                    scaled = grad_col * m[:, None] if HAS_MASK else grad_col
                    target = grad_plane + chan[None, :] * H * W + pix[:, None]
                    both = cmask[None, :]
                    tl.atomic_add(target, scaled * (ry * rx), mask=ok00[:, None] & both, sem="relaxed")
                    tl.atomic_add(target + 1, scaled * (ry * fx[:, None]), mask=ok01[:, None] & both, sem="relaxed")
                    tl.atomic_add(target + W, scaled * (fy[:, None] * rx), mask=ok10[:, None] & both, sem="relaxed")
                    tl.atomic_add(target + W + 1, scaled * (fy[:, None] * fx[:, None]), mask=ok11[:, None] & both,
                                  sem="relaxed")
        out_ty = goff_ptr.dtype.element_ty
        tl.store(goff_ptr + tap * 2 * L + l, (grad_y * m).to(out_ty), mask=lmask)
        tl.store(goff_ptr + tap * 2 * L + L + l, (grad_x * m).to(out_ty), mask=lmask)
        if HAS_MASK:
            tl.store(gmask_ptr + tap * L + l, grad_m.to(out_ty), mask=lmask)


@_jit
def _backward_weight_kernel(
    x_ptr, off_ptr, mask_ptr, gout_ptr, partial_ptr,
    C, H, W, Wo, L, G, Cg, Og, Cog, G_off,
    SH, SW, PH, PW, DH, DW, N, SPLIT,
    KH: tl.constexpr, KW: tl.constexpr, HAS_MASK: tl.constexpr,
    ACC: tl.constexpr, DOT: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_L: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_O: tl.constexpr,
):
    """Per (group, out-channel tile, tap, split): partial grad_weight = grad_out x samples^T over a
    strided share of the (sample, pixel tile) pairs; the partials are summed afterwards."""
    o_tiles = tl.cdiv(Og, BLOCK_O)
    g, o = tl.program_id(0) // o_tiles, (tl.program_id(0) % o_tiles) * BLOCK_O + tl.arange(0, BLOCK_O)
    k, split = tl.program_id(1), tl.program_id(2)
    omask = o < Og
    l_tiles = tl.cdiv(L, BLOCK_L)
    partial = partial_ptr + split.to(tl.int64) * G * KH * KW * Cg * Og
    c_lo, c_hi = g * Cg, g * Cg + Cg
    for og in range(c_lo // Cog, (c_hi - 1) // Cog + 1):
        s_lo, s_hi = tl.maximum(c_lo, og * Cog), tl.minimum(c_hi, og * Cog + Cog)
        for c0 in range(s_lo, s_hi, BLOCK_C):
            chan = c0 + tl.arange(0, BLOCK_C)
            cmask = chan < s_hi
            acc = tl.zeros((BLOCK_O, BLOCK_C), ACC)
            for item in range(split, N * l_tiles, SPLIT):
                n64 = (item // l_tiles).to(tl.int64)
                l = (item % l_tiles) * BLOCK_L + tl.arange(0, BLOCK_L)
                lmask = l < L
                pix, ok00, ok01, ok10, ok11, w00, w01, w10, w11 = _tap_weights(
                    off_ptr, mask_ptr, (n64 * G_off + og) * KH * KW + k, l, lmask, L, Wo, H, W, (k // KW) * DH,
                    (k % KW) * DW, SH, SW, PH, PW, HAS_MASK, ACC)
                cols = _sampled_block(x_ptr + n64 * C * H * W, chan, cmask, H * W, W, pix, ok00, ok01, ok10, ok11,
                                      w00, w01, w10, w11, ACC)
                go = tl.load(gout_ptr + n64 * G * Og * L + (g * Og + o)[:, None] * L + l[None, :],
                             mask=omask[:, None] & lmask[None, :], other=0.0)
                acc += tl.dot(go.to(DOT), cols.to(DOT), input_precision=PRECISION, out_dtype=ACC)
            dest = partial + ((g * KH * KW + k) * Cg + chan - c_lo)[None, :] * Og + o[:, None]
            tl.store(dest, acc, mask=omask[:, None] & cmask[None, :])


@_jit
def _backward_bias_kernel(gout_ptr, partial_ptr, N, Cout, L, SPLIT, ACC: tl.constexpr, BLOCK_L: tl.constexpr):
    """Per (out channel, split): partial sum of grad_out over a strided share of the samples."""
    c, split = tl.program_id(0), tl.program_id(1)
    acc = tl.zeros((BLOCK_L,), ACC)
    for n in range(split, N, SPLIT):
        row = gout_ptr + (n * Cout + c).to(tl.int64) * L
        for l0 in range(0, L, BLOCK_L):
            l = l0 + tl.arange(0, BLOCK_L)
            acc += tl.load(row + l, mask=l < L, other=0.0).to(ACC)
    tl.store(partial_ptr + split * Cout + c, tl.sum(acc, axis=0))


@dataclass(frozen=True)
class _Tiles:
    """Tile sizes and launch options of the forward and backward kernels.

    They set each program's registers and shared memory, whose limits differ between GPU generations,
    so ``_select_tiles`` takes the architecture; benchmarks/gpu_check.py --compile-only compiles every
    choice it can make for each architecture and checks the result against that architecture's limits.
    """

    block_l: int
    block_c: int
    block_o: int
    num_warps: int
    num_stages: int
    max_registers: int  # per thread: ptxas's ceiling (``maxnreg``)


# The architecture whose tiles the interpreter runs: it has no limits of its own.
_INTERPRETER_ARCH = 90


def _select_tiles(arch: int, dtype: torch.dtype, group_out: int) -> _Tiles:
    """Tiles for compute capability ``arch`` (sm_86 is 86), the tensors' dtype and C_out / groups.

    A pure function of its arguments, so that the launch code and gpu_check's compile table make the
    same choice.  One choice currently fits every architecture from sm_75 to sm_100 in every dtype (the
    compile table in docs/benchmarks.md); a choice that must differ belongs here.  An output-channel
    tile covers C_out / groups up to 64.  The tiles were chosen from ptxas statistics (registers,
    spills, shared memory), not tuned by timing on a GPU.
    """
    block_o = min(64, max(16, triton.next_power_of_2(group_out)))
    # 8 warps of 255 registers fit a block's register file (64K registers from sm_75 to sm_100).  Without an
    # explicit ceiling ptxas may stop at 128 registers and spill instead.
    return _Tiles(block_l=64, block_c=16, block_o=block_o, num_warps=8, num_stages=1, max_registers=255)


def _device_arch(device: torch.device) -> int:
    """Compute capability of a CUDA device as one number (8.6 is 86); the interpreter's stand-in elsewhere."""
    if device.type != "cuda":
        return _INTERPRETER_ARCH
    major, minor = torch.cuda.get_device_capability(device)
    return 10 * major + minor


@dataclass(frozen=True)
class _Launch:
    """Arguments shared by the kernels: runtime scalars (in kernel order) and compile-time constants."""

    scalars: tuple
    constants: dict
    length: int  # Ho * Wo
    group_out: int  # C_out / groups
    block_l: int


def _launch_config(input: Tensor, weight: Tensor, geo: _Geometry, arch: int | None = None) -> _Launch:
    """The kernels' arguments for ``arch`` (by default the architecture of the input's device)."""
    channels, height, width = input.shape[1:]
    out_channels, group_channels = weight.shape[:2]
    length, group_out = geo.out_size[0] * geo.out_size[1], out_channels // geo.groups
    acc = tl.float64 if input.dtype == torch.float64 else tl.float32
    dot = {torch.float16: tl.float16, torch.bfloat16: tl.bfloat16}.get(input.dtype, acc)
    if _INTERPRETED and dot == tl.bfloat16:
        dot = tl.float32  # Triton's interpreter miscomputes bf16 tl.dot; GPUs multiply in bf16
    scalars = (
        channels, height, width, geo.out_size[1], length, geo.groups, group_channels, group_out,
        channels // geo.offset_groups, geo.offset_groups, *geo.stride, *geo.padding, *geo.dilation,
    )
    tiles = _select_tiles(_device_arch(input.device) if arch is None else arch, input.dtype, group_out)
    constants = dict(
        KH=geo.kernel[0], KW=geo.kernel[1], ACC=acc, DOT=dot, PRECISION="ieee", BLOCK_C=tiles.block_c,
        BLOCK_O=tiles.block_o, num_warps=tiles.num_warps, num_stages=tiles.num_stages, maxnreg=tiles.max_registers,
    )
    return _Launch(scalars, constants, length, group_out, tiles.block_l)


@dataclass(frozen=True)
class _KernelCall:
    """One kernel launch as data: what the dispatcher launches is what gpu_check compiles for other GPUs."""

    kernel: object
    grid: tuple[int, ...]
    args: tuple
    kwargs: dict


def _launch(call: _KernelCall) -> None:
    call.kernel[call.grid](*call.args, **call.kwargs)


def _accumulator_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _split_count(tiles: int, work: int, device: torch.device) -> int:
    """How many programs share one reduction so that the grid fills the device."""
    programs = 4 * torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 16
    return max(1, min(work, triton.cdiv(programs, tiles)))


def _transposed_weight(weight: Tensor, groups: int) -> Tensor:
    """[C_out, C/groups, kh, kw] -> [groups, taps, C/groups, C_out/groups], contiguous."""
    out_channels, group_channels = weight.shape[:2]
    return weight.reshape(groups, out_channels // groups, group_channels, -1).permute(0, 3, 2, 1).contiguous()


def _triton_forward(input, offset, mask, weight_t, bias, geo: _Geometry, cfg: _Launch,
                    launch: Callable[[_KernelCall], None] = _launch) -> Tensor:
    n = input.shape[0]
    out = input.new_empty((n, geo.groups * cfg.group_out, *geo.out_size))
    if n:
        o_tiles = triton.cdiv(cfg.group_out, cfg.constants["BLOCK_O"])
        grid = (n * geo.groups, triton.cdiv(cfg.length, cfg.block_l), o_tiles)
        launch(_KernelCall(_forward_kernel, grid, (
            input, offset, offset if mask is None else mask, weight_t, offset if bias is None else bias, out,
            *cfg.scalars), dict(HAS_MASK=mask is not None, HAS_BIAS=bias is not None, BLOCK_L=cfg.block_l,
                                **cfg.constants)))
    return out


def _triton_backward_data(input, offset, mask, weight_t, grad_out, geo: _Geometry, cfg: _Launch, need_input: bool,
                          launch: Callable[[_KernelCall], None] = _launch):
    """Gradients of input, offset and mask (the input one only when ``need_input``)."""
    grad_input = torch.zeros(input.shape, dtype=_accumulator_dtype(input.dtype), device=input.device)
    grad_offset, grad_mask = torch.empty_like(offset), None if mask is None else torch.empty_like(mask)
    if input.shape[0]:
        grid = (input.shape[0] * geo.offset_groups, triton.cdiv(cfg.length, cfg.block_l))
        launch(_KernelCall(_backward_data_kernel, grid, (
            input, offset, offset if mask is None else mask, weight_t, grad_out, grad_input, grad_offset,
            grad_offset if mask is None else grad_mask, *cfg.scalars),
            dict(HAS_MASK=mask is not None, NEED_GX=need_input, BLOCK_L=cfg.block_l, **cfg.constants)))
    return grad_input.to(input.dtype), grad_offset, grad_mask


def _triton_backward_weight(input, offset, mask, grad_out, geo: _Geometry, cfg: _Launch,
                            launch: Callable[[_KernelCall], None] = _launch) -> Tensor:
    """Weight gradient: per-program partial sums, reduced here."""
    groups, taps, group_channels = geo.groups, geo.kernel[0] * geo.kernel[1], input.shape[1] // geo.groups
    o_tiles = triton.cdiv(cfg.group_out, cfg.constants["BLOCK_O"])
    work = input.shape[0] * triton.cdiv(cfg.length, cfg.block_l)
    split = _split_count(groups * o_tiles * taps, work, input.device)
    partial = input.new_zeros((split, groups, taps, group_channels, cfg.group_out),
                              dtype=_accumulator_dtype(input.dtype))
    if work:
        launch(_KernelCall(_backward_weight_kernel, (groups * o_tiles, taps, split), (
            input, offset, offset if mask is None else mask, grad_out, partial, *cfg.scalars, input.shape[0], split),
            dict(HAS_MASK=mask is not None, BLOCK_L=cfg.block_l, **cfg.constants)))
    grad = partial.sum(0).permute(0, 3, 2, 1).reshape(groups * cfg.group_out, group_channels, *geo.kernel)
    return grad.to(input.dtype)


def _triton_backward_bias(grad_out: Tensor, launch: Callable[[_KernelCall], None] = _launch) -> Tensor:
    """Bias gradient: per-program partial sums over the batch, reduced here."""
    n, out_channels = grad_out.shape[:2]
    split = _split_count(out_channels, n, grad_out.device)
    partial = grad_out.new_zeros((split, out_channels), dtype=_accumulator_dtype(grad_out.dtype))
    if n:
        launch(_KernelCall(_backward_bias_kernel, (out_channels, split), (
            grad_out, partial, n, out_channels, grad_out.shape[2] * grad_out.shape[3], split),
            dict(ACC=tl.float64 if grad_out.dtype == torch.float64 else tl.float32, BLOCK_L=256)))
    return partial.sum(0).to(grad_out.dtype)


def _on_device(tensor: Tensor):
    """Launch on the tensor's GPU (Triton launches on the current device)."""
    return torch.cuda.device(tensor.device) if tensor.is_cuda else contextlib.nullcontext()


class _TritonDeformConv(torch.autograd.Function):
    """Deformable convolution whose forward and backward are the Triton kernels above."""

    @staticmethod
    def forward(ctx, input, offset, mask, weight, bias, geo: _Geometry) -> Tensor:
        cfg = _launch_config(input, weight, geo)
        weight_t = _transposed_weight(weight, geo.groups)
        ctx.geo, ctx.cfg = geo, cfg
        ctx.save_for_backward(input, offset, mask, weight_t)
        with _on_device(input):
            return _triton_forward(input, offset, mask, weight_t, bias, geo, cfg)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: Tensor):
        input, offset, mask, weight_t = ctx.saved_tensors
        need_input, need_offset, need_mask, need_weight, need_bias = ctx.needs_input_grad[:5]
        grad_out = grad_out.contiguous()
        grads = [None] * 6
        with _on_device(input):
            if need_input or need_offset or need_mask:
                data = _triton_backward_data(input, offset, mask, weight_t, grad_out, ctx.geo, ctx.cfg, need_input)
                grads[:3] = [g if need else None for g, need in zip(data, (need_input, need_offset, need_mask))]
            if need_weight:
                grads[3] = _triton_backward_weight(input, offset, mask, grad_out, ctx.geo, ctx.cfg)
            if need_bias:
                grads[4] = _triton_backward_bias(grad_out)
        return tuple(grads)


_TRITON_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _triton_deform_conv(input, offset, mask, weight, bias, geo) -> Tensor:
    if triton is None:
        raise ImportError(
            f"{_BACKEND_ENV}=triton but triton could not be imported; install triton or set {_BACKEND_ENV}=torch")
    if not input.is_cuda and not _INTERPRETED:
        raise ValueError(
            f"the Triton backend needs CUDA tensors (got {input.device}); to run it on CPU set TRITON_INTERPRET=1 "
            f"before importing this module, or set {_BACKEND_ENV}=torch"
        )
    if input.dtype not in _TRITON_DTYPES:
        raise TypeError(f"the Triton backend supports {_TRITON_DTYPES}, got {input.dtype}")
    return _TritonDeformConv.apply(input, offset, mask, weight, bias, geo)


# --------------------------------------------------------------------------- dispatch and public API


def _backend(input: Tensor) -> str:
    forced = os.environ.get(_BACKEND_ENV, "").strip().lower()
    if forced not in ("", "auto", "torch", "triton"):
        raise ValueError(f"{_BACKEND_ENV}={forced!r} is not understood; use 'triton', 'torch' or leave it unset")
    if forced in ("torch", "triton"):
        return forced
    # float64 stays on the PyTorch path on GPUs: Triton's fp64 dot support varies by architecture.
    use_triton = input.is_cuda and triton is not None and input.dtype != torch.float64
    return "triton" if use_triton else "auto"


def deform_conv2d(
    input: Tensor,
    offset: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    stride: int | tuple[int, int] = 1,
    padding: int | tuple[int, int] = 0,
    dilation: int | tuple[int, int] = 1,
    mask: Tensor | None = None,
) -> Tensor:
    """Deformable convolution, a drop-in for ``torchvision.ops.deform_conv2d``.

    Shapes: input [N, C, H, W]; offset [N, 2*G_off*kh*kw, Ho, Wo] with (dy, dx)
    interleaved per kernel tap; weight [C_out, C/groups, kh, kw]; mask
    [N, G_off*kh*kw, Ho, Wo] (DCNv2) or None (DCNv1); bias [C_out] or None.
    Returns [N, C_out, Ho, Wo].
    """
    geo = _geometry(input, offset, weight, bias, mask, stride, padding, dilation)
    backend = _backend(input)
    if backend == "auto" and _dcnv1_applies(input, mask, geo):  # reads any memory layout
        return _dcnv1_deform_conv(input, offset, weight, bias, geo)
    input, offset, weight = input.contiguous(), offset.contiguous(), weight.contiguous()
    mask = None if mask is None else mask.contiguous()
    bias = None if bias is None else bias.contiguous()
    if backend == "triton":
        return _triton_deform_conv(input, offset, mask, weight, bias, geo)
    return _torch_deform_conv(input, offset, mask, weight, bias, geo)


class DeformConv2d(nn.Module):
    """Deformable convolution layer; parameters ``weight`` [out, in/groups, kh, kw] and ``bias`` [out]."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] = 0,
        dilation: int | tuple[int, int] = 1,
        groups: int = 1,
        offset_groups: int = 1,
        bias: bool = True,
    ) -> None:
        super().__init__()
        if in_channels % groups or out_channels % groups:
            raise ValueError(
                f"in_channels ({in_channels}) and out_channels ({out_channels}) must be divisible by groups ({groups})")
        if in_channels % offset_groups:
            raise ValueError(f"in_channels ({in_channels}) must be divisible by offset_groups ({offset_groups})")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size = _pair(kernel_size, "kernel_size")
        self.stride, self.padding = _pair(stride, "stride"), _pair(padding, "padding")
        self.dilation = _pair(dilation, "dilation")
        self.groups, self.offset_groups = groups, offset_groups
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels // groups, *self.kernel_size))
        if bias:
            self.bias = nn.Parameter(torch.empty(out_channels))
        else:
            self.register_parameter("bias", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            bound = 1 / math.sqrt(self.weight[0].numel())
            nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, input: Tensor, offset: Tensor, mask: Tensor | None = None) -> Tensor:
        taps = self.kernel_size[0] * self.kernel_size[1]
        if offset.dim() == 4 and offset.shape[1] != 2 * self.offset_groups * taps:
            raise ValueError(
                f"offset has {offset.shape[1]} channels but this layer (offset_groups={self.offset_groups}, "
                f"kernel {self.kernel_size}) needs {2 * self.offset_groups * taps}"
            )
        weight, bias = self.weight, self.bias
        device_type = input.device.type
        if torch.is_autocast_enabled(device_type):  # mixed precision: everything in the autocast dtype
            dtype = torch.get_autocast_dtype(device_type)
            input, offset, weight = input.to(dtype), offset.to(dtype), weight.to(dtype)
            bias = None if bias is None else bias.to(dtype)
            mask = None if mask is None else mask.to(dtype)
        return deform_conv2d(input, offset, weight, bias, self.stride, self.padding, self.dilation, mask)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
            f"padding={self.padding}, dilation={self.dilation}, groups={self.groups}, "
            f"offset_groups={self.offset_groups}, bias={self.bias is not None}"
        )
