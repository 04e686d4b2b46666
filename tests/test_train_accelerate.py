"""train_accelerate.py end to end on a tiny synthetic data set (CPU, a few optimizer steps)."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from test_bad_inputs_writers import assert_one_line_error, failed_command
from test_model_card import local_hub  # noqa: F401  (fixture: a local stand-in for the Hub API)
from transformers import AutoModelForInstanceSegmentation
from vistr import train_accelerate
from vistr.convert_checkpoint import initialization_state_dict, load_original_checkpoint
from vistr.loss_vistr import LossSettings
from vistr.modeling_vistr import VisTRForVideoInstanceSegmentation
from vistr.tools.youtube_vis import SyntheticOptions, make_synthetic

TINY_MODEL = ["--backbone", "resnet18", "--num-frames", "2", "--encoder-layers", "1", "--decoder-layers", "2",
              "--ffn-dim", "64", "--num-queries-per-frame", "3"]  # fmt: skip
SMALL_CLIPS = ["--train-size", "64", "--train-max-size", "96", "--scales", "64", "80", "--crop-min-size", "48",
               "--crop-max-size", "80", "--crop-scales", "72", "88"]  # fmt: skip


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("data") / "synthetic"
    options = SyntheticOptions(min_frames=3, max_frames=5, min_side=64, max_side=96, max_instances=2)
    make_synthetic(root, num_videos=6, seed=3, options=options, progress=False)
    return root


def train_arguments(root, output_dir, *extra: str) -> list[str]:
    return ["--data-root", str(root), "--output-dir", str(output_dir), "--validation-fraction", "0.34",
            "--report-to", "none", "--lr", "1e-3", "--seed", "5", *TINY_MODEL, *SMALL_CLIPS, *extra]  # fmt: skip


def test_training_writes_a_loadable_model_with_card_curve_and_checkpoint(synthetic_root, tmp_path, local_hub):
    folder = train_accelerate.train(
        train_accelerate.build_parser().parse_args(train_arguments(
            synthetic_root, tmp_path, "--max-steps", "3", "--report-to", "tensorboard", "--logging-steps", "1",
            "--push-to-hub", "someone/trained",
        ))
    )
    assert (local_hub / "someone" / "trained" / "README.md").read_text() == (folder / "README.md").read_text()
    assert list((tmp_path / "logs").rglob("events.out.tfevents*")), "no tensorboard events written"
    model = AutoModelForInstanceSegmentation.from_pretrained(folder)
    assert isinstance(model, VisTRForVideoInstanceSegmentation) and model.config.num_frames == 2
    assert model.config.id2label[1] != "N/A"  # classes are the data's category ids
    card = (folder / "README.md").read_text()
    assert "video-instance-segmentation" in card and "vistr" in card and "train_accelerate.py" in card
    assert "model-index" in card  # the held-out metrics were known
    with Image.open(folder / "loss_curve.png") as curve:
        assert curve.format == "PNG" and curve.size == (800, 400)
    (checkpoint,) = (tmp_path / "checkpoints").iterdir()
    state = json.loads((checkpoint / train_accelerate.STATE_FILE).read_text())
    assert state["step"] == 3 and len(state["history"]) == 3
    assert all(torch.isfinite(torch.tensor(entry["loss"])) for entry in state["history"])


@pytest.mark.parametrize("extra, mask_weight, dice_weight", [
    ([], 1.0, 1.0),  # the original's weights unless asked
    (["--mask-loss-coefficient", "2.5", "--dice-loss-coefficient", "4"], 2.5, 4.0),
])
def test_mask_loss_weights_reach_the_criterion(synthetic_root, tmp_path, extra, mask_weight, dice_weight):
    args = train_accelerate.build_parser().parse_args(train_arguments(synthetic_root, tmp_path, *extra))
    config = train_accelerate.model_config(args, {1: "disc", 2: "ring"})
    weights = LossSettings.from_config(config).weight_dict(auxiliary_layers=1)
    assert (weights["loss_mask"], weights["loss_dice"]) == (mask_weight, dice_weight)
    assert (weights["loss_bbox"], weights["loss_giou"]) == (5.0, 2.0)  # the other weights stay the original's


@pytest.mark.parametrize("extra, expected", [([], False), (["--absent-frame-mask-loss"], True)])
def test_absent_frame_mask_loss_reaches_the_criterion(synthetic_root, tmp_path, extra, expected):
    args = train_accelerate.build_parser().parse_args(train_arguments(synthetic_root, tmp_path, *extra))
    config = train_accelerate.model_config(args, {1: "disc", 2: "ring"})
    assert LossSettings.from_config(config).absent_frame_mask_loss is expected


@pytest.mark.parametrize("extra, mask_head_width, mask_channels, instance_channels", [
    ([], None, 24, 12),  # d_model (384) / 16 and the original's 12 unless asked
    (["--mask-head-width", "192", "--instance-head-channels", "16"], 192, 12, 16),
])
def test_mask_head_widths_reach_the_model(synthetic_root, tmp_path, extra, mask_head_width, mask_channels,
                                          instance_channels):
    args = train_accelerate.build_parser().parse_args(train_arguments(synthetic_root, tmp_path, *extra))
    config = train_accelerate.model_config(args, {1: "disc", 2: "ring"})
    assert (config.mask_head_width, config.mask_head_channels, config.instance_head_channels) == (
        mask_head_width, mask_channels, instance_channels)


@pytest.mark.parametrize("extra, piece, exit_code", [
    (["--mask-head-width", "200"], "--mask-head-width 200 must be a positive multiple of 16", 2),
    (["--data-root", "missing-folder"], "missing-folder", 1),
])  # fmt: skip
def test_bad_training_input_ends_in_one_line(synthetic_root, tmp_path, capsys, extra, piece, exit_code):
    extra = [str(tmp_path / a) if a == "missing-folder" else a for a in extra]
    arguments = train_arguments(synthetic_root, tmp_path / "run", *extra)
    code, message = failed_command(capsys, train_accelerate.main, *arguments)
    assert_one_line_error(message, piece)
    assert code == exit_code and not (tmp_path / "run").exists()


def test_an_output_folder_over_the_data_ends_in_one_line(synthetic_root, tmp_path, capsys):
    data = shutil.copytree(synthetic_root, tmp_path / "model")  # what --output-dir TMP would write its model into
    code, message = failed_command(capsys, train_accelerate.main, *train_arguments(data, tmp_path))
    assert_one_line_error(message, "is the input")
    assert code == 2 and sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_an_interrupted_training_names_its_checkpoints(synthetic_root, tmp_path, capsys, monkeypatch):
    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(train_accelerate, "train", interrupted)
    code, message = failed_command(capsys, train_accelerate.main, *train_arguments(synthetic_root, tmp_path / "run"))
    assert code == 130
    assert_one_line_error(message, f"checkpoints saved so far are in {tmp_path / 'run' / 'checkpoints'}")


def test_resuming_continues_exactly_like_an_uninterrupted_run(synthetic_root, tmp_path):
    def run(output_dir, *extra):
        arguments = train_arguments(synthetic_root, output_dir, "--checkpointing-steps", "2", *extra)
        return train_accelerate.train(train_accelerate.build_parser().parse_args(arguments))

    straight = run(tmp_path / "straight", "--max-steps", "5")
    run(tmp_path / "stopped", "--max-steps", "2")
    resumed = run(tmp_path / "stopped", "--max-steps", "5", "--resume-from-checkpoint", "latest")
    expected, actual = load_file(straight / "model.safetensors"), load_file(resumed / "model.safetensors")
    assert expected.keys() == actual.keys()
    for name in expected:
        assert torch.equal(expected[name], actual[name]), name


def test_initialising_from_an_original_checkpoint_drops_only_what_does_not_fit(parity_dir):
    state, _ = load_original_checkpoint(parity_dir / "vistr_tiny_r50_original.pth")
    config = train_accelerate.VisTRConfig(num_frames=3, encoder_layers=2, decoder_layers=2, ffn_dim=512, num_labels=5)
    model = VisTRForVideoInstanceSegmentation(config)
    left_out = train_accelerate.load_initial_weights(model, str(parity_dir / "vistr_tiny_r50_original.pth"))
    assert sorted(line.split()[0] for line in left_out) == [
        "class_labels_classifier.bias", "class_labels_classifier.weight", "vistr.query_position_embeddings.weight"]
    loaded = model.state_dict()
    assert torch.equal(loaded["vistr.input_projection.weight"], state["vistr.input_proj.weight"].float())
    assert torch.equal(loaded["mask_head.dcn.weight"], state["mask_head.dcn.weight"].float())


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
