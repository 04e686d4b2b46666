"""The converter: every key of the real released R50/R101 structures, clear errors for bad files, and the
initialisation it hands the trainer from an original or a DETR checkpoint."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from fractions import Fraction

import pytest
import torch
from conftest import REPO_ROOT, require_parity_dir
from vistr.convert_checkpoint import (
    ConversionError,
    convert,
    convert_state_dict,
    initialization_state_dict,
    load_original_checkpoint,
    write_folder_atomically,
)
from vistr.tools.outputs import UsageError


def manifest_state(name: str) -> dict[str, torch.Tensor]:
    """Random tensors with the shapes of a released checkpoint's state-dict manifest."""
    manifest = json.loads((require_parity_dir() / name).read_text())
    generator = torch.Generator().manual_seed(0)
    return {key: torch.randn(spec["shape"], generator=generator) for key, spec in manifest.items()}


def released_args(backbone: str) -> argparse.Namespace:
    return argparse.Namespace(backbone=backbone, num_frames=36, dilation=False, dropout=0.1, aux_loss=True)


@pytest.fixture(scope="module")
def tiny_state(parity_dir):
    return load_original_checkpoint(parity_dir / "vistr_tiny_r50_original.pth")


@pytest.mark.parametrize(
    ("manifest", "backbone", "keys"), [("keys_r50_full.json", "resnet50", 503), ("keys_r101_full.json", "resnet101", 758)]
)
def test_every_key_of_the_released_structures_is_mapped(manifest, backbone, keys):
    state = manifest_state(manifest)
    assert len(state) == keys
    model = convert_state_dict(state, released_args(backbone), manifest)
    config = model.config
    assert (config.backbone, config.num_frames, config.num_queries_per_frame) == (backbone, 36, 10)
    assert (config.encoder_layers, config.decoder_layers, config.ffn_dim, config.num_labels) == (6, 6, 2048, 41)
    ours = model.state_dict()
    d = config.d_model
    packed = state["vistr.transformer.decoder.layers.5.multihead_attn.in_proj_weight"]
    assert torch.equal(ours["vistr.decoder.layers.5.encoder_attn.k_proj.weight"], packed[d : 2 * d])
    assert torch.equal(ours["instance_head.out_conv.weight"], state["insmask_head.9.weight"])
    assert torch.equal(ours["vistr.backbone.model.layer3.5.bn3.running_var"], state["vistr.backbone.0.body.layer3.5.bn3.running_var"])
    # every original value lands somewhere: the totals agree
    assert sum(t.numel() for t in ours.values()) == sum(t.numel() for t in state.values())


def test_released_checkpoint_with_41_class_outputs_converts():
    state = manifest_state("keys_r50_full.json")
    for key in ("vistr.class_embed.weight", "vistr.class_embed.bias"):
        state[key] = state[key][:41]
    assert convert_state_dict(state, released_args("resnet50"), "r50-40-classes").config.num_labels == 40


def test_checkpoint_without_args_needs_the_frame_count():
    state = manifest_state("keys_r50_full.json")
    with pytest.raises(ConversionError, match="Pass --num-frames"):
        convert_state_dict(state, None, "bare")
    assert convert_state_dict(state, None, "bare", num_frames=36).config.num_queries_per_frame == 10
    with pytest.raises(ConversionError, match="contradicts"):
        convert_state_dict(state, released_args("resnet50"), "r50", num_frames=12)


def test_missing_and_unknown_keys_are_listed(tiny_state):
    state, args = tiny_state
    state = dict(state)
    del state["mask_head.gn3.bias"]
    state["vistr.extra_head.weight"] = torch.zeros(3)
    with pytest.raises(ConversionError) as error:
        convert_state_dict(state, args, "edited.pth")
    message = str(error.value)
    assert "original keys with no mapping (1)" in message and "vistr.extra_head.weight" in message
    assert "model keys the checkpoint does not fill (1)" in message and "mask_head.gn3.bias" in message


def test_detr_checkpoints_are_recognised():
    detr_segm = {"detr.backbone.0.body.conv1.weight": torch.zeros(1), "mask_head.lay5.weight": torch.zeros(1)}
    with pytest.raises(ConversionError, match="DETR.*--init-from"):
        convert_state_dict(detr_segm, None, "detr-r50-panoptic.pth")
    detr = {"backbone.0.body.conv1.weight": torch.zeros(1), "query_embed.weight": torch.zeros(100, 256)}
    with pytest.raises(ConversionError, match="100 object queries"):
        convert_state_dict(detr, None, "detr-r50.pth")


def test_vistr_checkpoint_with_the_old_mask_head_is_recognised():
    state = {k: v for k, v in manifest_state("keys_r50_full.json").items() if not k.startswith(("insmask_head", "mask_head.dcn", "mask_head.conv_offset"))}
    state["mask_head.lay5.weight"] = torch.zeros(24, 48, 3, 3)
    state["mask_head.out_lay.weight"] = torch.zeros(1, 24, 3, 3)
    with pytest.raises(ConversionError, match="older code version"):
        convert_state_dict(state, released_args("resnet50"), "vistr_r50_old.pth")


def test_files_that_are_not_checkpoints(tmp_path, parity_dir):
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes((parity_dir / "vistr_tiny_r50_original.pth").read_bytes()[: 1 << 20])
    with pytest.raises(ConversionError, match="truncated"):
        convert(truncated)
    with pytest.raises(ConversionError, match="no such file"):
        convert(tmp_path / "missing.pth")
    pickled = tmp_path / "object.pth"
    torch.save({"model": {"x": torch.zeros(1)}, "optimizer": Fraction(1, 3)}, pickled)
    with pytest.raises(ConversionError, match=r"holds Python objects other than tensors \(fractions.Fraction\)") as error:
        convert(pickled)
    assert "weights_only" not in str(error.value)  # torch's advice would run the file's code
    listing = tmp_path / "list.pth"
    torch.save([torch.zeros(1)], listing)
    with pytest.raises(ConversionError, match="not a VisTR checkpoint"):
        convert(listing)


def test_output_folder_is_never_half_written(tmp_path):
    output = tmp_path / "model"
    output.mkdir()
    (output / "keep.txt").write_text("user data")
    with pytest.raises(UsageError, match="holds no config.json with model_type 'vistr'"):  # not ours: never replaced
        write_folder_atomically(output, overwrite=True, fill=lambda folder: None)
    (output / "keep.txt").unlink()
    (output / "config.json").write_text('{"model_type": "vistr"}')  # an earlier conversion: config and our card
    (output / "README.md").write_text("---\ntags:\n- vistr\n---\n# an earlier conversion\n")
    with pytest.raises(UsageError, match="--overwrite"):
        write_folder_atomically(output, overwrite=False, fill=lambda folder: None)

    def failing_fill(folder):
        (folder / "model.safetensors").write_text("partial")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        write_folder_atomically(output, overwrite=True, fill=failing_fill)
    assert sorted(p.name for p in output.iterdir()) == ["README.md", "config.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # no staging folder left behind

    write_folder_atomically(output, overwrite=True, fill=lambda folder: (folder / "new.txt").write_text("x"))
    assert [p.name for p in output.iterdir()] == ["new.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_command_line_converts_and_refuses_to_overwrite(tmp_path, parity_dir):
    output = tmp_path / "vistr-tiny"
    command = [sys.executable, str(REPO_ROOT / "convert_checkpoint.py"), "--checkpoint", str(parity_dir / "vistr_tiny_r50_original.pth"), "--output", str(output)]
    done = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert {"config.json", "model.safetensors", "modeling_vistr.py", "configuration_vistr.py", "deform_conv.py"} <= {p.name for p in output.iterdir()}
    assert json.loads((output / "config.json").read_text())["num_frames"] == 4
    again = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path)
    assert again.returncode != 0 and "--overwrite" in again.stderr


def test_detr_style_keys_map_onto_the_same_weights(parity_dir, tmp_path):
    """A DETR file (no `vistr.` prefix, DETR's own mask head) initialises backbone and transformer."""
    state, _ = load_original_checkpoint(parity_dir / "vistr_tiny_r50_original.pth")
    detr = {name.removeprefix("vistr."): tensor for name, tensor in state.items() if name.startswith("vistr.")}
    detr["mask_head.lay5.weight"] = torch.zeros(1)
    torch.save({"model": detr}, tmp_path / "detr.pth")
    mapped = initialization_state_dict(tmp_path / "detr.pth")
    reference = initialization_state_dict(parity_dir / "vistr_tiny_r50_original.pth")
    assert set(mapped) == {name for name in reference if not name.startswith(("mask_head.", "instance_head.", "bbox_attention."))}
    for name, tensor in mapped.items():
        assert torch.equal(tensor, reference[name]), name
