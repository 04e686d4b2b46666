"""The ORIGINAL VisTR's control flow, run with the weights of one of our models.

`original_forward(model, pixel_values, pixel_mask)` computes what github.com/Epiphqny/VisTR
(`models/segmentation.py: VisTRsegm.forward`) computes, the way it computes it, with the modules
of a `VisTRForVideoInstanceSegmentation` as its weights. It is the baseline of
`bench_forward.py`: same weights, same arithmetic, the original's execution:

* backbone: the plain module (timm ResNet, frozen batch norm as a separate multiply-add after
  every convolution, NCHW), all frames in one batch, as the original's Joiner;
* a padding mask and a 3-D sine position encoding for every backbone level (the original's
  Joiner encodes all four levels; only the last one is used);
* transformer in the original's sequence-first layout with `torch.nn.MultiheadAttention`
  (packed q/k/v projection, called with its default `need_weights=True`, which computes and
  head-averages the attention probabilities: the unfused path);
* mask head in a Python loop over frames, batch 1: per frame the attention maps of its 10
  queries, the encoder memory copied once per query (`_expand`), the FPN adapters run per frame
  and copied per query, and the deformable convolution of `torchvision.ops.deform_conv2d` (what
  the golden fixtures substituted for the original's CUDA-only DCN extension on CPU);
* 3-D instance head in a Python loop over instances, one [1, C, T, H, W] sequence at a time.

Batch size 1 only (the original hard-codes it). Inference only. Nothing here is used by the model.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import torchvision
from torch import nn


def _packed_attention(attention, num_heads: int) -> nn.MultiheadAttention:
    """An nn.MultiheadAttention (sequence-first, as the original) holding our q/k/v/out weights."""
    d_model = attention.q_proj.in_features
    packed = nn.MultiheadAttention(d_model, num_heads, dropout=attention.attention_dropout)
    packed = packed.to(device=attention.q_proj.weight.device, dtype=attention.q_proj.weight.dtype)
    with torch.no_grad():
        packed.in_proj_weight.copy_(torch.cat([attention.q_proj.weight, attention.k_proj.weight, attention.v_proj.weight]))
        packed.in_proj_bias.copy_(torch.cat([attention.q_proj.bias, attention.k_proj.bias, attention.v_proj.bias]))
        packed.out_proj.weight.copy_(attention.out_proj.weight)
        packed.out_proj.bias.copy_(attention.out_proj.bias)
    return packed.eval()


class OriginalFlow:
    """Holds the packed attention modules built from `model` (built once, outside any timing)."""

    def __init__(self, model):
        self.model = model
        config = model.config
        heads = config.num_attention_heads
        self.encoder_attention = [_packed_attention(layer.self_attn, heads) for layer in model.vistr.encoder.layers]
        self.decoder_attention = [
            (_packed_attention(layer.self_attn, heads), _packed_attention(layer.encoder_attn, heads))
            for layer in model.vistr.decoder.layers
        ]

    # ------------------------------------------------------------------ transformer (sequence-first)

    @staticmethod
    def _with_position(x, position):
        return x if position is None else x + position

    def _encoder_layer(self, layer, attention, src, position, key_padding_mask):
        if layer.pre_norm:
            src2 = layer.self_attn_layer_norm(src)
            q = k = self._with_position(src2, position)
            src = src + attention(q, k, value=src2, key_padding_mask=key_padding_mask)[0]
            src2 = layer.final_layer_norm(src)
            return src + layer.ffn(src2)
        q = k = self._with_position(src, position)
        src = layer.self_attn_layer_norm(src + attention(q, k, value=src, key_padding_mask=key_padding_mask)[0])
        return layer.final_layer_norm(src + layer.ffn(src))

    def _decoder_layer(self, layer, attentions, tgt, memory, position, query_position, key_padding_mask):
        self_attention, cross_attention = attentions
        if layer.pre_norm:
            tgt2 = layer.self_attn_layer_norm(tgt)
            q = k = self._with_position(tgt2, query_position)
            tgt = tgt + self_attention(q, k, value=tgt2)[0]
            tgt2 = layer.encoder_attn_layer_norm(tgt)
            tgt = tgt + cross_attention(
                query=self._with_position(tgt2, query_position), key=self._with_position(memory, position),
                value=memory, key_padding_mask=key_padding_mask)[0]
            return tgt + layer.ffn(layer.final_layer_norm(tgt))
        q = k = self._with_position(tgt, query_position)
        tgt = layer.self_attn_layer_norm(tgt + self_attention(q, k, value=tgt)[0])
        tgt = layer.encoder_attn_layer_norm(tgt + cross_attention(
            query=self._with_position(tgt, query_position), key=self._with_position(memory, position),
            value=memory, key_padding_mask=key_padding_mask)[0])
        return layer.final_layer_norm(tgt + layer.ffn(tgt))

    def _transformer(self, src, mask, query_embed, pos_embed):
        """src/pos [1, c, T, hw], mask [1, T, hw] -> hs [layers, 1, Q, c], memory [1, c, T, hw]."""
        vistr = self.model.vistr
        bs, c, h, w = src.shape
        src = src.flatten(2).permute(2, 0, 1)
        pos_embed = pos_embed.flatten(2).permute(2, 0, 1)
        query_embed = query_embed.unsqueeze(1).repeat(1, bs, 1)
        mask = mask.flatten(1)
        memory = src
        for layer, attention in zip(vistr.encoder.layers, self.encoder_attention):
            memory = self._encoder_layer(layer, attention, memory, pos_embed, mask)
        if vistr.encoder.layernorm is not None:
            memory = vistr.encoder.layernorm(memory)
        output = torch.zeros_like(query_embed)
        intermediate = []
        for layer, attentions in zip(vistr.decoder.layers, self.decoder_attention):
            output = self._decoder_layer(layer, attentions, output, memory, pos_embed, query_embed, mask)
            intermediate.append(vistr.decoder.layernorm(output))
        hs = torch.stack(intermediate)
        return hs.transpose(1, 2), memory.permute(1, 2, 0).view(bs, c, h, w)

    # ------------------------------------------------------------------ heads, per frame / per instance

    def _attention_map(self, q, k, mask):
        """The original's MHAttentionMap on one frame: q [1, n, d], k [1, d, h, w], mask [1, h, w]."""
        head = self.model.bbox_attention
        heads = head.num_heads
        q = head.q_linear(q)
        k = F.conv2d(k, head.k_linear.weight.unsqueeze(-1).unsqueeze(-1), head.k_linear.bias)
        qh = q.view(q.shape[0], q.shape[1], heads, q.shape[-1] // heads)
        kh = k.view(k.shape[0], heads, k.shape[1] // heads, k.shape[-2], k.shape[-1])
        weights = torch.einsum("bqnc,bnchw->bqnhw", qh * head.normalize_fact, kh)
        weights.masked_fill_(mask.unsqueeze(1).unsqueeze(1), float("-inf"))
        return F.softmax(weights.flatten(2), dim=-1).view_as(weights)

    @staticmethod
    def _expand(tensor, length: int):
        return tensor.unsqueeze(1).repeat(1, int(length), 1, 1, 1).flatten(0, 1)

    def _mask_head(self, x, bbox_mask, fpns):
        """The original MaskHeadSmallConv on one frame: x [1, d, h, w], bbox_mask [1, n, heads, h, w]."""
        head = self.model.mask_head
        x = torch.cat([self._expand(x, bbox_mask.shape[1]), bbox_mask.flatten(0, 1)], 1)
        x = F.relu(head.gn1(head.lay1(x)))
        x = F.relu(head.gn2(head.lay2(x)))
        for adapter, fpn, conv, norm in ((head.adapter1, fpns[0], head.lay3, head.gn3),
                                         (head.adapter2, fpns[1], head.lay4, head.gn4)):
            cur_fpn = adapter(fpn)
            if cur_fpn.size(0) != x.size(0):
                cur_fpn = self._expand(cur_fpn, x.size(0) // cur_fpn.size(0))
            x = cur_fpn + F.interpolate(x, size=cur_fpn.shape[-2:], mode="nearest")
            x = F.relu(norm(conv(x)))
        cur_fpn = head.adapter3(fpns[2])
        if cur_fpn.size(0) != x.size(0):
            cur_fpn = self._expand(cur_fpn, x.size(0) // cur_fpn.size(0))
        x = cur_fpn + F.interpolate(x, size=cur_fpn.shape[-2:], mode="nearest")
        offset = head.conv_offset(x)
        dcn = head.dcn
        x = torchvision.ops.deform_conv2d(x, offset, dcn.weight, dcn.bias, dcn.stride, dcn.padding, dcn.dilation)
        return F.relu(head.gn5(x))

    def _instance_head(self, x):
        head = self.model.instance_head
        x = F.relu(head.norm1(head.conv1(x)))
        x = F.relu(head.norm2(head.conv2(x)))
        x = F.relu(head.norm3(head.conv3(x)))
        return head.out_conv(x)

    # ------------------------------------------------------------------ the whole forward

    @torch.no_grad()
    def __call__(self, pixel_values: torch.Tensor, pixel_mask: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """pixel_values [1, T, 3, H, W] (our convention); returns pred_logits, pred_boxes, pred_masks."""
        model, vistr = self.model, self.model.vistr
        if pixel_values.shape[0] != 1:
            raise ValueError("the original runs one video at a time")
        num_frames = pixel_values.shape[1]
        samples = pixel_values[0]
        sample_mask = (torch.zeros(samples.shape[:1] + samples.shape[-2:], dtype=torch.bool, device=samples.device)
                       if pixel_mask is None else ~pixel_mask[0].bool())
        # Joiner: backbone on all frames, a mask and a position encoding per level
        features, masks, pos = [], [], []
        for x in vistr.backbone.model(samples):
            m = F.interpolate(sample_mask[None].float(), size=x.shape[-2:]).to(torch.bool)[0]
            features.append(x)
            masks.append(m)
            pos.append(vistr.position_embedding(m.reshape(1, num_frames, *m.shape[-2:]), x.dtype))
        src, mask = features[-1], masks[-1]
        src_proj = vistr.input_projection(src)
        n, c, s_h, s_w = src_proj.shape
        bs_f = n // num_frames
        src_proj = src_proj.reshape(bs_f, num_frames, c, s_h, s_w).permute(0, 2, 1, 3, 4).flatten(-2)
        mask = mask.reshape(bs_f, num_frames, s_h * s_w)
        pos_last = pos[-1].permute(0, 2, 1, 3, 4).flatten(-2)
        hs, memory = self._transformer(src_proj, mask, vistr.query_position_embeddings.weight, pos_last)
        outputs_class = model.class_labels_classifier(hs)
        outputs_coord = model.bbox_predictor(hs).sigmoid()
        fpn_levels = []
        for i in range(3):
            _, c_f, h, w = features[i].shape
            fpn_levels.append(features[i].reshape(bs_f, num_frames, c_f, h, w))
        n_f = model.config.num_queries_per_frame
        per_frame = []
        for i in range(num_frames):  # image level: one frame at a time
            hs_f = hs[-1][:, i * n_f:(i + 1) * n_f, :]
            memory_f = memory[:, :, i, :].reshape(bs_f, c, s_h, s_w)
            mask_f = mask[:, i, :].reshape(bs_f, s_h, s_w)
            bbox_mask_f = self._attention_map(hs_f, memory_f, mask_f)
            seg_masks_f = self._mask_head(
                memory_f, bbox_mask_f, [fpn_levels[2][:, i], fpn_levels[1][:, i], fpn_levels[0][:, i]])
            per_frame.append(seg_masks_f.view(bs_f, n_f, seg_masks_f.shape[1], *seg_masks_f.shape[-2:]))
        frame_masks = torch.cat(per_frame, dim=0)
        per_instance = []
        for i in range(frame_masks.size(1)):  # instance level: one 3-D sequence at a time
            mask_ins = frame_masks[:, i].unsqueeze(0).permute(0, 2, 1, 3, 4)
            per_instance.append(self._instance_head(mask_ins))
        masks_out = torch.cat(per_instance, 1).squeeze(0).permute(1, 0, 2, 3)
        masks_out = masks_out.reshape(1, num_frames * n_f, masks_out.size(-2), masks_out.size(-1))
        return {"pred_logits": outputs_class[-1], "pred_boxes": outputs_coord[-1], "pred_masks": masks_out,
                "aux_logits": outputs_class[:-1], "aux_boxes": outputs_coord[:-1]}
