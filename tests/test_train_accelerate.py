"""train_accelerate.py end to end on a tiny synthetic data set (CPU, a few optimizer steps); conftest holds the
set (`synthetic_root`) and the tiny model's arguments (`train_arguments`)."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from conftest import REPO_ROOT, SMALL_CLIPS, TINY_MODEL, assert_one_line_error, failed_command, train_arguments
from PIL import Image
from safetensors.torch import load_file
from transformers import AutoModelForInstanceSegmentation
from vistr import train_accelerate
from vistr.configuration_vistr import VisTRConfig
from vistr.image_processing_vistr import VisTRVideoProcessor, processor_for_model
from vistr.loss_vistr import LossSettings
from vistr.tools.model_card import save_model_folder
from vistr.modeling_vistr import VisTRForVideoInstanceSegmentation
from vistr.tools.youtube_vis import SyntheticOptions, load_youtube_vis, make_synthetic, save_parquet


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
    config, _ = train_accelerate.model_config(args, {1: "disc", 2: "ring"})
    weights = LossSettings.from_config(config).weight_dict(auxiliary_layers=1)
    assert (weights["loss_mask"], weights["loss_dice"]) == (mask_weight, dice_weight)
    assert (weights["loss_bbox"], weights["loss_giou"]) == (5.0, 2.0)  # the other weights stay the original's


@pytest.mark.parametrize("extra, expected", [([], False), (["--absent-frame-mask-loss"], True)])
def test_absent_frame_mask_loss_reaches_the_criterion(synthetic_root, tmp_path, extra, expected):
    args = train_accelerate.build_parser().parse_args(train_arguments(synthetic_root, tmp_path, *extra))
    config, _ = train_accelerate.model_config(args, {1: "disc", 2: "ring"})
    assert LossSettings.from_config(config).absent_frame_mask_loss is expected


@pytest.mark.parametrize("extra, mask_head_width, mask_channels, instance_channels", [
    ([], None, 24, 12),  # d_model (384) / 16 and the original's 12 unless asked
    (["--mask-head-width", "192", "--instance-head-channels", "16"], 192, 12, 16),
])
def test_mask_head_widths_reach_the_model(synthetic_root, tmp_path, extra, mask_head_width, mask_channels,
                                          instance_channels):
    args = train_accelerate.build_parser().parse_args(train_arguments(synthetic_root, tmp_path, *extra))
    config, _ = train_accelerate.model_config(args, {1: "disc", 2: "ring"})
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


def assert_same_weights(expected_folder, actual_folder, atol: float = 0.0) -> None:
    expected, actual = load_file(expected_folder / "model.safetensors"), load_file(actual_folder / "model.safetensors")
    assert expected.keys() == actual.keys()
    for name in expected:
        if atol == 0.0:
            assert torch.equal(expected[name], actual[name]), name
        else:
            torch.testing.assert_close(actual[name], expected[name], atol=atol, rtol=0, msg=name)


def assert_resume_is_exact(arguments_of, tmp_path, stop: int, end: int) -> None:
    """A run stopped after step `stop` and resumed to `end` ends with the uninterrupted run's weights."""
    def run(output_dir, *extra):
        return train_accelerate.train(train_accelerate.build_parser().parse_args(arguments_of(output_dir, *extra)))

    straight = run(tmp_path / "straight", "--max-steps", str(end))
    run(tmp_path / "stopped", "--max-steps", str(stop))
    resumed = run(tmp_path / "stopped", "--max-steps", str(end), "--resume-from-checkpoint", "latest")
    assert_same_weights(straight, resumed)


def test_resuming_continues_exactly_like_an_uninterrupted_run(synthetic_root, tmp_path):
    def arguments_of(output_dir, *extra):
        return train_arguments(synthetic_root, output_dir, "--checkpointing-steps", "2", *extra)

    assert_resume_is_exact(arguments_of, tmp_path, stop=2, end=5)


# ------------------------------------------------------------------------------------------------- the source decides


@pytest.fixture(scope="module")
def source_folder(synthetic_root, tmp_path_factory):
    """A trained-looking model folder: an architecture none of the trainer's defaults describe, the data's
    classes, and a processor with inference settings of its own."""
    categories = json.loads((synthetic_root / "annotations.json").read_text())["categories"]
    id2label = {index: "N/A" for index in range(max(c["id"] for c in categories) + 1)}
    id2label.update({c["id"]: c["name"] for c in categories})
    config = VisTRConfig(backbone="resnet18", num_frames=2, num_queries_per_frame=3, d_model=96, num_attention_heads=4,
                         encoder_layers=1, decoder_layers=2, ffn_dim=64, dropout=0.0, mask_head_width=64,
                         id2label=id2label)  # fmt: skip
    torch.manual_seed(0)
    model = VisTRForVideoInstanceSegmentation(config)
    processor = VisTRVideoProcessor(size={"shortest_edge": 80, "longest_edge": 112}, test_time_flips=["horizontal"],
                                    mask_score_weighting=True)  # fmt: skip
    folder = tmp_path_factory.mktemp("source") / "vistr-source"
    save_model_folder(model, folder, processor_for_model(config, processor))
    return folder


def trained_config(folder) -> dict:
    return json.loads((folder / "config.json").read_text())


def test_init_from_a_folder_keeps_its_architecture_and_processor(synthetic_root, source_folder, tmp_path, caplog):
    arguments = ["--data-root", str(synthetic_root), "--output-dir", str(tmp_path), "--validation-fraction", "0.34",
                 "--report-to", "none", "--max-steps", "1", "--init-from", str(source_folder), *SMALL_CLIPS]
    with caplog.at_level("INFO", logger=train_accelerate.LOGGER_NAME):
        folder = train_accelerate.train(train_accelerate.build_parser().parse_args(arguments))
    source, trained = trained_config(source_folder), trained_config(folder)
    for field in ("backbone", "num_frames", "num_queries_per_frame", "d_model", "num_attention_heads", "encoder_layers",
                  "decoder_layers", "ffn_dim", "dropout", "mask_head_width", "id2label"):
        assert trained[field] == source[field], field
    processor = json.loads((folder / "video_preprocessor_config.json").read_text())
    assert processor["size"] == {"shortest_edge": 80, "longest_edge": 112}
    assert processor["test_time_flips"] == ["horizontal"] and processor["mask_score_weighting"] is True
    total = len(load_file(source_folder / "model.safetensors"))
    assert f"loaded {total} of {total} tensors" in caplog.text


def test_an_option_overrides_one_field_of_the_source_and_says_so(synthetic_root, source_folder, tmp_path, caplog):
    arguments = ["--data-root", str(synthetic_root), "--output-dir", str(tmp_path), "--report-to", "none",
                 "--validation-fraction", "0.34", "--init-from", str(source_folder), "--dropout", "0.2"]
    with caplog.at_level("WARNING", logger=train_accelerate.LOGGER_NAME):
        run = train_accelerate.Run(train_accelerate.build_parser().parse_args(arguments))
    assert run.config.dropout == 0.2 and run.config.d_model == 96 and run.config.num_frames == 2
    assert "dropout: 0.0 -> 0.2" in caplog.text


def test_init_from_that_would_mostly_start_fresh_is_refused_unless_allowed(synthetic_root, source_folder, tmp_path,
                                                                           capsys):
    arguments = ["--data-root", str(synthetic_root), "--output-dir", str(tmp_path / "run"), "--report-to", "none",
                 "--validation-fraction", "0.34", "--init-from", str(source_folder), "--backbone", "resnet50",
                 "--max-steps", "1"]
    code, message = failed_command(capsys, train_accelerate.main, *arguments)
    assert_one_line_error(message, "--allow-partial-init")
    assert code == 2 and not (tmp_path / "run" / "model").exists()
    run = train_accelerate.Run(train_accelerate.build_parser().parse_args([*arguments, "--allow-partial-init"]))
    assert run.config.backbone == "resnet50"


def test_init_from_an_original_checkpoint_takes_its_architecture(synthetic_root, parity_dir, tmp_path, caplog):
    checkpoint = parity_dir / "vistr_tiny_r50_original.pth"
    arguments = ["--data-root", str(synthetic_root), "--output-dir", str(tmp_path), "--report-to", "none",
                 "--validation-fraction", "0.34", "--init-from", str(checkpoint)]
    with caplog.at_level("WARNING", logger=train_accelerate.LOGGER_NAME):
        run = train_accelerate.Run(train_accelerate.build_parser().parse_args(arguments))
    # the golden data's configuration (parity README, section 3), not the trainer's defaults
    assert (run.config.d_model, run.config.ffn_dim, run.config.encoder_layers, run.config.num_frames) == (384, 512, 2, 4)
    assert "the class head starts fresh" in caplog.text  # YouTube-VIS 2019's classes, not the synthetic data's


def test_a_config_file_describes_a_model_from_scratch(synthetic_root, tmp_path):
    described = {"backbone": "resnet18", "num_frames": 2, "num_queries_per_frame": 4, "d_model": 96,
                 "num_attention_heads": 4, "encoder_layers": 1, "decoder_layers": 1, "ffn_dim": 64}
    (tmp_path / "config.json").write_text(json.dumps(described))
    arguments = ["--data-root", str(synthetic_root), "--output-dir", str(tmp_path / "run"), "--report-to", "none",
                 "--validation-fraction", "0.34", "--config", str(tmp_path / "config.json"), "--decoder-layers", "2"]
    run = train_accelerate.Run(train_accelerate.build_parser().parse_args(arguments))
    assert {name: getattr(run.config, name) for name in described} == {**described, "decoder_layers": 2}


# ------------------------------------------------------------------------------------------------- resume, processes


@pytest.fixture(scope="module")
def square_root(tmp_path_factory):
    """12 training clips of one size (4 videos x 3 frames, 64 x 64; 2 more videos held out): batches need no
    padding, so one process with a batch of 2 computes what two processes with one clip each compute."""
    root = tmp_path_factory.mktemp("square") / "synthetic"
    options = SyntheticOptions(min_frames=3, max_frames=3, min_side=64, max_side=64, max_instances=2)
    make_synthetic(root, num_videos=6, seed=4, options=options, progress=False)
    return root


ONE_SIZE_CLIPS = ["--train-size", "64", "--train-max-size", "64", "--scales", "64", "--max-size", "64",
                  "--crop-scales", "64", "--crop-min-size", "64", "--crop-max-size", "64"]  # fmt: skip


def square_arguments(root, output_dir, *extra: str) -> list[str]:
    return ["--data-root", str(root), "--output-dir", str(output_dir), "--validation-fraction", "0.34",
            "--report-to", "none", "--lr", "1e-3", "--seed", "5", "--dropout", "0", *TINY_MODEL, *ONE_SIZE_CLIPS,
            *extra]  # fmt: skip


def test_resuming_after_an_epoch_boundary_with_accumulation_is_exact(square_root, tmp_path):
    """12 batches an epoch, 5 accumulated: the epoch's third step takes 2 batches; stopped at step 4 (5
    batches into epoch 1) and resumed, the weights are those of the uninterrupted run, bit for bit."""
    def arguments_of(output_dir, *extra):
        return square_arguments(square_root, output_dir, "--gradient-accumulation-steps", "5", *extra)

    assert_resume_is_exact(arguments_of, tmp_path, stop=4, end=5)


def launch_processes(processes: int, *arguments: str) -> str:
    """The trainer under torchrun on CPU (gloo), as the README's recipe runs it; returns what it printed."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes),
               str(REPO_ROOT / "train_accelerate.py"), *arguments]  # fmt: skip
    environment = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, env=environment, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-4000:]
    return result.stdout + result.stderr


def test_two_processes_train_what_one_process_trains_with_their_batch_and_resume_exactly(square_root, tmp_path):
    """2 processes x 1 clip = 1 process x 2 clips: the same clips and augmentation, the losses normalised over
    both processes (2 steps of 4 accumulated batches: the second ends epoch 0 with 2). Later steps drift
    apart at rounding level through the deformable convolution's sampling, so they are compared to their
    own uninterrupted run: stopped after step 3 (inside epoch 1) and resumed, bit for bit."""
    common = ["--gradient-accumulation-steps", "4", "--checkpointing-steps", "1", "--backbone-norm", "group_norm",
              "--backbone-frozen-stages", "-1"]  # trained norms that do not depend on the batch: the README's advice
    one = train_accelerate.train(train_accelerate.build_parser().parse_args(
        square_arguments(square_root, tmp_path / "one", "--batch-size", "2", "--max-steps", "2", *common)))
    printed = launch_processes(2, *square_arguments(square_root, tmp_path / "two", "--max-steps", "4", *common))
    assert "2 process(es) on cpu: 1 clip(s) per process x 2 process(es) x 4 accumulated = 8 clip(s)" in printed
    assert_same_weights(one, tmp_path / "two" / "checkpoints" / "step-00000002", atol=1e-5)
    launch_processes(2, *square_arguments(square_root, tmp_path / "resumed", "--max-steps", "4", *common,
                                          "--resume-from-checkpoint", str(tmp_path / "two" / "checkpoints" / "step-00000003")))
    assert_same_weights(tmp_path / "two" / "model", tmp_path / "resumed" / "model")


def test_a_cpu_launch_that_starts_fewer_processes_than_asked_ends_in_one_line(square_root, tmp_path):
    command = [sys.executable, "-m", "accelerate.commands.launch", "-q", "--cpu", "--num_processes", "2",
               str(REPO_ROOT / "train_accelerate.py"), *square_arguments(square_root, tmp_path / "run")]  # fmt: skip
    result = subprocess.run(command, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                            timeout=600)  # fmt: skip
    assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert_one_line_error(result.stderr.strip().splitlines()[-1], "torchrun --nproc_per_node N")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("environment, joined, piece", [
    ({"WORLD_SIZE": "2"}, 1, "started 2 processes but accelerate joined them as 1"),
    ({"MASTER_ADDR": "127.0.0.1"}, 1, "started this one only"),
])  # fmt: skip
def test_a_world_size_other_than_launched_is_refused(monkeypatch, environment, joined, piece):
    for name in train_accelerate.WORLD_SIZE_VARIABLES + ("MASTER_ADDR",):
        monkeypatch.delenv(name, raising=False)
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(train_accelerate.UsageError, match=piece):
        train_accelerate.check_world_size(joined)
    monkeypatch.setenv("WORLD_SIZE", "1")
    train_accelerate.check_world_size(1)  # what torchrun with one process sets: fine


def test_old_checkpoints_beyond_the_limit_are_removed_and_evaluations_printed(synthetic_root, tmp_path, capsys):
    (tmp_path / "checkpoints" / "notes").mkdir(parents=True)  # not a checkpoint: never touched
    arguments = train_arguments(synthetic_root, tmp_path, "--max-steps", "3", "--checkpointing-steps", "1",
                                "--checkpoints-total-limit", "2")  # fmt: skip
    train_accelerate.train(train_accelerate.build_parser().parse_args(arguments))
    assert sorted(path.name for path in (tmp_path / "checkpoints").iterdir()) == ["notes", "step-00000002",
                                                                                 "step-00000003"]
    assert "evaluation after step 3" in capsys.readouterr().out


# ------------------------------------------------------------------------------------------------- data sources


def test_a_parquet_source_trains_the_model_its_folder_trains(square_root, tmp_path):
    parquet = save_parquet(load_youtube_vis(square_root), tmp_path / "ytvis.parquet")

    def run(source, output_dir):
        arguments = square_arguments(square_root, output_dir, "--max-steps", "2")
        arguments[arguments.index("--data-root") + 1] = str(source)
        return train_accelerate.train(train_accelerate.build_parser().parse_args(arguments))

    assert_same_weights(run(square_root, tmp_path / "folder"), run(parquet, tmp_path / "parquet"))


def test_a_streamed_source_trains_and_resumes_exactly(square_root, tmp_path):
    def arguments_of(output_dir, *extra):
        return square_arguments(square_root, output_dir, "--streaming", "--gradient-accumulation-steps", "5", *extra)

    assert_resume_is_exact(arguments_of, tmp_path, stop=4, end=5)


# ------------------------------------------------------------------------------------------------- bad checkpoints


@pytest.fixture(scope="module")
def one_checkpoint(synthetic_root, tmp_path_factory):
    """A run of one step: its checkpoint folder, to resume from (copied by each test that damages it)."""
    output_dir = tmp_path_factory.mktemp("run")
    train_accelerate.train(train_accelerate.build_parser().parse_args(
        train_arguments(synthetic_root, output_dir, "--max-steps", "1")))
    (checkpoint,) = (output_dir / "checkpoints").iterdir()
    return checkpoint


def damaged_copy(checkpoint, tmp_path, damage) -> str:
    copy = shutil.copytree(checkpoint, tmp_path / checkpoint.name)
    damage(copy)
    return str(copy)


@pytest.mark.parametrize("extra, damage, piece", [
    (["--ffn-dim", "32"], lambda folder: None, "ffn_dim 64 there, 32 here"),  # resumed with another model option
    ([], lambda folder: (folder / "model.safetensors").unlink(), "cannot be resumed"),
    ([], lambda folder: (folder / train_accelerate.STATE_FILE).write_text("{"), "not a complete checkpoint"),
    ([], lambda folder: (folder / "optimizer.bin").write_bytes(b"not a pickle"), "damaged or holds objects other"),
])  # fmt: skip
def test_a_checkpoint_that_cannot_be_resumed_ends_in_one_line(synthetic_root, one_checkpoint, tmp_path, capsys, extra,
                                                              damage, piece):
    checkpoint = damaged_copy(one_checkpoint, tmp_path, damage)
    arguments = train_arguments(synthetic_root, tmp_path / "run", "--max-steps", "2", "--resume-from-checkpoint",
                                checkpoint, *extra)  # fmt: skip
    code, message = failed_command(capsys, train_accelerate.main, *arguments)
    assert_one_line_error(message, piece)
    assert code == 1 and "weights_only" not in message


def test_a_full_disk_while_saving_a_checkpoint_ends_in_one_line_and_leaves_no_staging(synthetic_root, tmp_path, capsys,
                                                                                       monkeypatch):
    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(train_accelerate, "save_model_folder", no_space)
    arguments = train_arguments(synthetic_root, tmp_path, "--max-steps", "1")
    code, message = failed_command(capsys, train_accelerate.main, *arguments)
    assert_one_line_error(message, "No space left on device")
    assert code == 1 and list((tmp_path / "checkpoints").iterdir()) == []


# ---------------------------------------------------------------------------------------- backbone pre-training stage


def test_the_trainer_runs_the_stage_first_then_trains_vistr_alone(synthetic_root, tmp_path):
    arguments = train_arguments(synthetic_root, tmp_path / "run", "--backbone-norm", "batch_norm",
                                "--backbone-frozen-stages", "-1", "--backbone-pretraining-steps", "3")  # fmt: skip
    run = train_accelerate.Run(train_accelerate.build_parser().parse_args(arguments))
    backbone = {name: p.detach().clone() for name, p in run.model.vistr.backbone.named_parameters()}
    run.pretrain_backbone()
    assert len(run.pretraining_history) == 3
    assert any(not torch.equal(p, backbone[name]) for name, p in run.model.vistr.backbone.named_parameters())
    run.prepare()
    assert len(run.accelerator._models) == 1 and len(run.accelerator._optimizers) == 1  # the stage left nothing
    logged = run.train_step(next(iter(run.loader)))
    assert logged is not None and torch.isfinite(torch.tensor(logged["loss"]))


def test_negative_stage_length_is_refused(synthetic_root, tmp_path):
    arguments = train_arguments(synthetic_root, tmp_path / "run", "--backbone-pretraining-steps", "-1")
    with pytest.raises(SystemExit):
        train_accelerate.main(arguments)
