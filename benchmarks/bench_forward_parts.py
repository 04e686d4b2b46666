"""Each speed-up of the forward pass alone: the optimized part against what it replaced, same inputs.

Shapes of the full R50 configuration at 36 x 160 x 288 (fp32, CPU, inference): backbone on 36
frames, mask-head first convolution on 360 (frame, query) pairs at stride 32, its last FPN sum, the deformable
convolution on 360 x 48 x 40 x 72 with random offsets, the 3-D instance head on 10 sequences of
36 frames, the decoder on 360 queries over 1620 memory tokens. Variants of one part are timed
alternately (load from other processes hits them alike); medians are printed, with the largest
difference between the variants' outputs.

    python benchmarks/bench_forward_parts.py [--repeats 3 --parts backbone,dcn,...]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
import torchvision
from transformers.backbone_utils import load_backbone
from transformers.models.detr.modeling_detr import replace_batch_norm

from bench_forward import cpu_name
from vistr import modeling_vistr as mv
from vistr.configuration_vistr import VisTRConfig
from vistr.deform_conv import deform_conv2d


def _unfolded(config: VisTRConfig, backbone: mv.VisTRConvBackbone) -> torch.nn.Module:
    """The same timm backbone and weights with its frozen batch norms as ops (not folded)."""
    features = load_backbone(config)
    with torch.no_grad():
        replace_batch_norm(features)
    features._backbone.load_state_dict(backbone.model.state_dict())
    return features._backbone.eval()


def _instance_head_ncdhw(head, x):
    """The instance head as before: NCDHW, out-of-place ReLUs, Conv3d output layer."""
    x = F.relu(head.norm1(head.conv1(x)))
    x = F.relu(head.norm2(head.conv2(x)))
    x = F.relu(head.norm3(head.conv3(x)))
    return head.out_conv(x)


def _decoder_layer_before(layer, hidden, query_position, memory, memory_position, padding):
    """The decoder layer as before: memory + position per layer, x + query position twice."""
    query_key = hidden + query_position
    hidden = layer.self_attn_layer_norm(hidden + layer.self_attn(query_key, query_key, hidden)[0])
    hidden = layer.encoder_attn_layer_norm(
        hidden + layer.encoder_attn(hidden + query_position, memory + memory_position, memory, padding)[0])
    return layer.final_layer_norm(hidden + layer.ffn(hidden))


def _decoder_before(decoder, query_position, memory, memory_position, padding):
    hidden = torch.zeros_like(query_position)
    for layer in decoder.layers:
        hidden = _decoder_layer_before(layer, hidden, query_position, memory, memory_position, padding)
    return decoder.layernorm(hidden)


def build_parts(config: VisTRConfig, frames: int, height: int, width: int):
    torch.manual_seed(0)
    model = mv.VisTRForVideoInstanceSegmentation(config).eval()
    with torch.no_grad():
        torch.nn.init.normal_(model.mask_head.conv_offset.weight, std=0.02)
    g = torch.Generator().manual_seed(0)
    h32, w32, h4, w4 = height // 32, width // 32, height // 4, width // 4
    slots, d = config.num_queries_per_frame, config.d_model
    clip = torch.randn(frames, 3, height, width, generator=g)
    backbone = model.vistr.backbone
    unfolded = _unfolded(config, backbone)
    head = model.mask_head
    memory = torch.randn(frames, d, h32, w32, generator=g)
    maps = torch.rand(frames, slots, config.num_attention_heads, h32, w32, generator=g)
    dcn_in = torch.rand(frames * slots, head.dcn.in_channels, h4, w4, generator=g)
    dcn_offset = torch.randn(frames * slots, 18, h4, w4, generator=g)
    dcn = head.dcn
    sequences = torch.rand(slots, config.mask_head_channels, frames, h4, w4, generator=g)
    tokens = torch.randn(1, frames * h32 * w32, d, generator=g)
    position = torch.randn(1, frames * h32 * w32, d, generator=g)
    padding = mv.padding_to_attention_mask(torch.zeros(1, frames * h32 * w32, dtype=torch.bool), torch.float32)
    query_position = model.vistr.query_position_embeddings.weight[None]
    decoder = model.vistr.decoder

    cl = torch.channels_last
    fpn_x = torch.rand(frames * slots, head.lay4.out_channels, h4 // 2, w4 // 2, generator=g).contiguous(memory_format=cl)
    fpn_level = torch.rand(frames, head.lay4.out_channels, h4, w4, generator=g).contiguous(memory_format=cl)

    def fpn_interpolate_then_add():
        up = F.interpolate(fpn_x, size=fpn_level.shape[-2:], mode="nearest")
        return (fpn_level.unsqueeze(1) + up.unflatten(0, (frames, slots))).flatten(0, 1)

    def lay1_concat():
        return head.lay1(torch.cat([memory.repeat_interleave(slots, dim=0), maps.flatten(0, 1)], dim=1))

    return {
        "backbone (36 frames)": {
            "timm forward, frozen BN as ops (before)": lambda: list(unfolded(clip)),
            "BN folded into conv, NCHW": lambda: list(backbone.model(clip)),
            "BN folded, channels-last (now)": lambda: backbone(clip),
        },
        "mask head lay1 (360 pairs)": {
            "conv of [memory repeated per query, maps] (before)": lay1_concat,
            "memory share per frame + maps share per query (now)": lambda: head._first_conv(memory, maps),
        },
        "mask head FPN sum (360 x 48 x 20 x 36 onto 40 x 72)": {
            "nearest interpolate, then add (before)": fpn_interpolate_then_add,
            "one broadcast add (now)": lambda: head._add_fpn(fpn_x, fpn_level, slots),
        },
        "deformable conv (360 x 48 x 40 x 72)": {
            "deform_conv.py PyTorch path (before)": lambda: deform_conv2d(dcn_in, dcn_offset, dcn.weight, None, 1, 1),
            "torchvision.ops.deform_conv2d (the original's, on CPU)":
                lambda: torchvision.ops.deform_conv2d(dcn_in, dcn_offset, dcn.weight, None, 1, 1),
            "grid_sample + one matmul (now)": lambda: dcn(dcn_in, dcn_offset),
        },
        "instance head (10 x 24 x 36 x 40 x 72)": {
            "NCDHW, Conv3d output (before)": lambda: _instance_head_ncdhw(model.instance_head, sequences),
            "NDHWC, in-place ReLU, matmul output (now)": lambda: model.instance_head(sequences),
        },
        "decoder (360 queries, 1620 tokens)": {
            "memory + position per layer (before)":
                lambda: _decoder_before(decoder, query_position, tokens, position, padding),
            "memory + position once (now)": lambda: decoder(query_position, tokens, position, padding).last_hidden_state,
        },
    }


def _first(output):
    return output[-1] if isinstance(output, list) else output


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=36)
    parser.add_argument("--height", type=int, default=160)
    parser.add_argument("--width", type=int, default=288)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--parts", default="", help="comma-separated prefixes of the parts to run (default: all)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    config = VisTRConfig(num_frames=args.frames)
    parts = build_parts(config, args.frames, args.height, args.width)
    wanted = [p.strip() for p in args.parts.split(",") if p.strip()]

    print(f"machine: {cpu_name()}, {args.threads} torch threads, torch {torch.__version__}; fp32 CPU inference, "
          f"medians of {args.repeats} alternating runs after 1 warm-up")
    print()
    print("| part | variant | s median | s min | vs first row | max abs diff to first row |")
    print("|---|---|---|---|---|---|")
    with torch.inference_mode():
        for part, variants in parts.items():
            if wanted and not any(part.startswith(w) for w in wanted):
                continue
            times = {name: [] for name in variants}
            outputs = {}
            for step in range(1 + args.repeats):
                for name, fn in variants.items():
                    start = time.perf_counter()
                    outputs[name] = _first(fn())
                    if step:
                        times[name].append(time.perf_counter() - start)
            first = next(iter(variants))
            for name in variants:
                median = statistics.median(times[name])
                diff = (outputs[name] - outputs[first]).abs().max().item()
                print(f"| {part} | {name} | {median:.3f} | {min(times[name]):.3f} | "
                      f"{statistics.median(times[first]) / median:.2f}x | {diff:.1e} |", flush=True)


if __name__ == "__main__":
    main()
