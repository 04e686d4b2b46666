"""Bad options and unusable output paths: one `error:` line, the right exit code, and nothing a user owns touched.

To add a case, add a row to CASES: the command line (`{video}`, `{model}`, `{tmp}` and `{checkpoint}` are
filled in), a piece of the one-line message, and the exit code (2: a bad argument, found before any work;
1: a failure). `test_bad_command_line` runs it and checks, besides the message, that the inputs (the video,
the checkpoint, the model folder), another model's folder (`{tmp}/bert`) and a named pipe (`{tmp}/fifo`) are
unchanged and that no temporary file is left anywhere under the test folder. Cases that need more than a
command line (a damaged file, a signal, a second run, a full disk) are the focused tests below the table.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from conftest import TINY_CHECKPOINT, assert_one_line_error, failed_command, require_parity_dir
from PIL import Image
from safetensors import SafetensorError
from safetensors.torch import save_file
from vistr import convert_checkpoint
from vistr.configuration_vistr import VisTRConfig
from vistr.tools.model_card import save_model_folder
from vistr.modeling_vistr import VisTRForVideoInstanceSegmentation
from vistr.tools import cli as vistr_cli
from vistr.tools import youtube_vis_inference
from vistr.tools.outputs import (
    NonFiniteError,
    Outputs,
    UsageError,
    atomic_path,
    dumps_json,
    foreign_model_folder,
    replace_folder,
)
from vistr.tools.video_writer import write_video

ROOT = Path(__file__).resolve().parents[2]
LONG_NAME = "n" * 300 + ".json"

CASES = [  # (command line, piece of the message, exit code)
    ("segment {video} --model {model} --output {tmp}/o.json --stride 0", "argument --stride: must be at least 1, not 0", 2),
    ("segment {video} --model {model} --output {tmp}/o.json --stride -3", "must be at least 1", 2),
    ("segment {video} --model {model} --output {tmp}/o.json --mask-threshold 2", "strictly between 0 and 1, not 2", 2),
    ("segment {video} --model {model} --output {tmp}/o.json --mask-threshold 1", "strictly between 0 and 1, not 1", 2),
    ("segment {video} --model {model} --output {tmp}/o.json --mask-threshold -1", "strictly between 0 and 1", 2),
    ("segment {video} --model {model} --output {tmp}/o.json --mask-threshold nan", "strictly between 0 and 1, not nan", 2),
    ("segment {video} --model {model} --output {tmp}/o.json --threshold nan", "between 0 and 1, not nan", 2),
    ("segment {video} --model {model} --output {video}", "is the input", 2),
    ("segment {video} --model {model} --output {tmp}/o.json --overlay {video}", "is the input", 2),
    ("segment {video} --model {model} --output {tmp}/link.mp4", "is the input", 2),  # a symlink to the video
    ("segment {video} --model {model} --output {tmp}/ckpt", "is a folder; give a file name inside it", 2),
    ("segment {video} --model {model} --output {tmp}/o.json --overlay {tmp}/o.xyz", "unknown format '.xyz'", 2),
    ("segment {video} --model {model} --output {tmp}/o.json --overlay {tmp}/o.json", "collides with another output", 2),
    ("segment {video} --model {model} --output {video}/o.json", "is inside the input", 2),
    ("segment {video} --model {model} --output {tmp}/link.mp4/o.json", "is inside the input", 2),
    ("segment {video} --model {model} --output {tmp}/a.json/o.json", "is a file, not a folder", 2),
    ("segment {video} --model {model} --output {tmp}/" + LONG_NAME, "longer than the file system allows", 2),
    ("segment {video} --model {model} --output {tmp}/o.json --device banana", "not a device name", 2),
    ("segment {video} --model {model} --output {tmp}/o.json --stride 5", "longer than the model's clips (4 frames)", 2),
    ("segment --annotations {tmp}/a.json --model {model} --output {tmp}/o.json", "give --frames-root", 2),
    ("segment --annotations {tmp}/a.json --frames-root {tmp} --model {model} --output {tmp}/a.json", "is the input", 2),
    ("segment {video} --model {tmp}/empty --output {tmp}/o.json", "is a folder without config.json", 1),
    ("segment {video} --model {video} --output {tmp}/o.json", "is a file, not a folder", 1),
    ("inspect {model} --height 0", "argument --height: must be at least 1", 2),
    ("make-synthetic {tmp}/syn --videos 0", "argument --videos: must be at least 1, not 0", 2),
    ("make-synthetic {tmp} --videos 1", "already exists and is not empty", 2),
    ("convert --checkpoint {checkpoint} --output {tmp}/ckpt --overwrite", "contains the input", 2),
    ("convert --checkpoint {checkpoint} --output {tmp}/ckpt/checkpoint.pth", "is the input", 2),
    ("convert --checkpoint {checkpoint} --output {tmp}/x --num-frames 0", "argument --num-frames: must be at least 1", 2),
    ("convert --checkpoint {video} --output {tmp}/x", "not a readable PyTorch checkpoint", 1),
    # the model folder is an input: every file in it
    ("segment {video} --model {model} --output {model}/model.safetensors", "is inside the input", 2),
    ("segment {video} --model {model} --output {model}", "is the input", 2),
    ("segment {video} --model {model} --output {tmp}/o.json --overlay {model}/ov.gif", "is inside the input", 2),
    ("segment --annotations {tmp}/a.json --frames-root {tmp}/ckpt --model {model} --output {model}/config.json",
     "is inside the input", 2),
    ("segment --annotations {tmp}/a.json --frames-root {tmp}/ckpt --model {model} --output {tmp}/o.json "
     "--zip {model}/r.zip", "is inside the input", 2),
    ("segment --annotations {tmp}/a.json --frames-root {tmp}/r.json.parts/frames --model {model} --output {tmp}/r.json",
     "(its .parts folder) {tmp}/r.json.parts contains the input", 2),
    # --overwrite replaces only a model folder this project wrote
    ("convert --checkpoint {checkpoint} --output {tmp}/bert --overwrite", "holds a config.json of model_type 'bert'", 2),
    ("convert --checkpoint {checkpoint} --output {tmp}/bert", "model_type 'bert', not 'vistr'", 2),
    # only new paths and regular files are written
    ("segment {video} --model {model} --output {tmp}/fifo", "is a named pipe, not a regular file", 2),
    ("segment {video} --model {model} --output {tmp}/fifo/o.json", "is a named pipe, not a folder", 2),
    ("convert --checkpoint {checkpoint} --output {tmp}/fifo", "is a named pipe, not a folder", 2),
    # a link that leads nowhere is never written through ({tmp}/gone -> {tmp}/elsewhere/deep, which does not exist)
    ("segment {video} --model {model} --output {tmp}/gone", "{tmp}/gone is a link to {tmp}/elsewhere/deep, which "
     "does not exist", 2),
    ("segment {video} --model {model} --output {tmp}/o.json --overlay {tmp}/gone/ov.gif",
     "--overlay {tmp}/gone/ov.gif: {tmp}/gone is a link to", 2),
    ("convert --checkpoint {checkpoint} --output {tmp}/gone --overwrite", "{tmp}/gone is a link to", 2),
    ("segment --annotations {tmp}/a.json --frames-root {tmp}/ckpt --model {model} --output {tmp}/gone/r.json",
     "{tmp}/gone is a link to", 2),
    # a folder that merely has the name of the split job's parts folder is never used (nor deleted)
    ("segment --annotations {tmp}/a.json --frames-root {tmp}/ckpt --model {model} --output {tmp}/mine.json",
     "(its .parts folder) {tmp}/mine.json.parts holds no run.json of a segment job, so it is not one this project "
     "wrote", 2),
]  # fmt: skip


def vistr(capsys, *args: str) -> tuple[int, str]:
    """(exit code, the error message) of `vistr ARGS`, run in this process; progress bars before it are dropped."""
    return failed_command(capsys, vistr_cli.main, *args)


def leftovers(folder: Path) -> list[Path]:
    """Temporary files or folders a writer left behind."""
    return [path for path in folder.rglob(".*") if "vistr-tmp" in path.name or path.name.endswith(".tmp")]


def write_mp4(path: Path, frames: int = 4, size: tuple[int, int] = (48, 32), value: int = 90) -> Path:
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("mpeg4", rate=Fraction(10))
        stream.width, stream.height, stream.pix_fmt = *size, "yuv420p"
        for index in range(frames):
            pixels = np.full((size[1], size[0], 3), (value + 10 * index) % 256, np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def tiny_model(folder: Path, num_frames: int = 4, poison: bool = False) -> Path:
    torch.manual_seed(0)
    config = VisTRConfig(backbone="resnet18", num_frames=num_frames, encoder_layers=1, decoder_layers=1, ffn_dim=64,
                         num_queries_per_frame=2, id2label={0: "N/A", 1: "shape"})  # fmt: skip
    model = VisTRForVideoInstanceSegmentation(config).eval()
    if poison:
        with torch.no_grad():
            model.class_labels_classifier.bias.fill_(float("nan"))
    save_model_folder(model, folder)
    return folder


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory) -> Path:
    return tiny_model(tmp_path_factory.mktemp("model") / "tiny")


@pytest.fixture
def video(tmp_path) -> Path:
    return write_mp4(tmp_path / "precious.mp4")


@pytest.mark.parametrize("command, piece, code", CASES, ids=[case[0].split(" --")[0][:20] + f"-{i}" for i, case in enumerate(CASES)])
def test_bad_command_line(command, piece, code, model_folder, video, tmp_path, capsys):
    (tmp_path / "link.mp4").symlink_to(video)
    (tmp_path / "a.json").write_text(json.dumps({"videos": [{"id": 1, "file_names": ["precious.mp4"]}]}))
    (tmp_path / "ckpt").mkdir()
    checkpoint = tmp_path / "ckpt" / "checkpoint.pth"
    torch.save({"model": {"vistr.query_embed.weight": torch.zeros(8, 4)}}, checkpoint)
    (tmp_path / "ckpt" / "config.json").write_text("{}")  # looks like a model folder: --overwrite would replace it
    (tmp_path / "bert").mkdir()
    (tmp_path / "bert" / "config.json").write_text(json.dumps({"model_type": "bert"}))  # another model's folder
    (tmp_path / "bert" / "notes.txt").write_text("mine")
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "empty").mkdir()
    (tmp_path / "gone").symlink_to(tmp_path / "elsewhere" / "deep")
    (tmp_path / "mine.json.parts").mkdir()
    (tmp_path / "mine.json.parts" / "notes.txt").write_text("mine")
    files = (video, checkpoint, tmp_path / "a.json", tmp_path / "bert" / "config.json", tmp_path / "bert" / "notes.txt",
             tmp_path / "mine.json.parts" / "notes.txt")  # fmt: skip
    before = {path: path.read_bytes() for path in files}
    model_before = sorted((path.name, path.stat().st_mtime_ns) for path in model_folder.iterdir())
    if "--device cuda" in command and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    arguments = command.format(video=video, model=model_folder, tmp=tmp_path, checkpoint=checkpoint).split()
    exit_code, message = vistr(capsys, *arguments)
    assert_one_line_error(message, piece.format(tmp=tmp_path))
    assert exit_code == code
    assert all(path.read_bytes() == content for path, content in before.items())
    assert sorted((path.name, path.stat().st_mtime_ns) for path in model_folder.iterdir()) == model_before
    assert sorted(path.name for path in (tmp_path / "bert").iterdir()) == ["config.json", "notes.txt"]
    assert stat.S_ISFIFO((tmp_path / "fifo").lstat().st_mode)
    assert not (tmp_path / "elsewhere").exists() and os.listdir(tmp_path / "mine.json.parts") == ["notes.txt"]
    assert not leftovers(tmp_path) and not (tmp_path / "o.json").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_cuda_without_a_gpu_is_one_line(model_folder, video, tmp_path, capsys):
    exit_code, message = vistr(capsys, "segment", str(video), "--model", str(model_folder), "--output",
                               str(tmp_path / "o.json"), "--device", "cuda")  # fmt: skip
    assert_one_line_error(message, "--device cuda: no CUDA GPU is visible here; use --device cpu")
    assert exit_code == 2


# ------------------------------------------------------------------------------------------------- model folders


def test_damaged_model_folders_are_one_line(model_folder, video, tmp_path, capsys):
    corrupted = tmp_path / "corrupted"
    tiny_model(corrupted)
    weights = corrupted / "model.safetensors"
    weights.write_bytes(b"\xff" * 8 + weights.read_bytes()[8:])  # the header length is now absurd
    edited = tmp_path / "edited"
    tiny_model(edited)
    config = json.loads((edited / "config.json").read_text())
    (edited / "config.json").write_text(json.dumps(config | {"num_frames": 5}))
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "config.json").write_text(json.dumps({"model_type": "bert"}))
    for folder, piece in ((corrupted, "model.safetensors is damaged"),
                          (edited, "its weights do not fit its config.json"),
                          (foreign, "config.json is for model_type 'bert', not 'vistr'")):  # fmt: skip
        exit_code, message = vistr(capsys, "segment", str(video), "--model", str(folder), "--output", str(tmp_path / "o.json"))
        assert_one_line_error(message, f"--model {folder}")
        assert piece in message and exit_code == 1


def test_a_hub_id_without_network_fails_fast(tmp_path):
    """One connection probe, then the local cache only: the Hub client's own retries (about 30 s) never start."""
    done = subprocess.run([sys.executable, "-m", "vistr.tools.cli", "inspect", "someone/not-there"], capture_output=True,
                          text=True, cwd=tmp_path, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(ROOT), "HF_ENDPOINT": "http://127.0.0.1:9",
                               "HF_HUB_OFFLINE": "0", "HF_HOME": str(tmp_path / "hf")})  # fmt: skip
    assert done.returncode == 1
    # "not in the local cache" is said only on the local_files_only path, which makes no request
    assert_one_line_error(done.stderr.strip(), "cannot connect to http://127.0.0.1:9")
    assert "and it is not in the local cache" in done.stderr


def test_debug_shows_the_traceback(tmp_path, capsys, monkeypatch):
    arguments = ["segment", "v.mp4", "--model", str(tmp_path / "missing"), "--output", str(tmp_path / "o.json")]
    for switch in (["--debug"], []):
        monkeypatch.setenv("VISTR_DEBUG", "0" if switch else "1")
        with pytest.raises(SystemExit):
            vistr_cli.main(arguments + switch)
        assert "Traceback (most recent call last)" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------- all or nothing


def test_a_failing_overlay_leaves_the_old_results(model_folder, tmp_path, capsys):
    frames = tmp_path / "frames"
    frames.mkdir()
    for index in range(3):
        Image.new("RGB", (1, 1), (index, 0, 0)).save(frames / f"{index}.png")
    results = tmp_path / "out.json"
    results.write_text("old results")
    exit_code, message = vistr(capsys, "segment", str(frames), "--model", str(model_folder), "--output", str(results),
                               "--overlay", str(tmp_path / "ov.mp4"))  # fmt: skip
    assert_one_line_error(message, "frames of 1x1 pixels are too small for a .mp4 video")
    assert exit_code == 1
    assert results.read_text() == "old results" and not (tmp_path / "ov.mp4").exists() and not leftovers(tmp_path)


def test_inputs_with_one_name_get_one_overlay_each(model_folder, tmp_path, capsys):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first, second = write_mp4(tmp_path / "a" / "good.mp4", value=20), write_mp4(tmp_path / "b" / "good.mp4", value=200)
    vistr_cli.main(["segment", str(first), str(second), "--model", str(model_folder), "--output", str(tmp_path / "o.json"),
                    "--overlay", str(tmp_path / "ov.gif"), "--threshold", "1"])  # fmt: skip
    overlays = sorted(path.name for path in tmp_path.glob("ov*.gif"))
    assert overlays == ["ov-good-1.gif", "ov-good-2.gif"]
    assert np.asarray(Image.open(tmp_path / "ov-good-1.gif").convert("L"))[0, 0] < 60  # the first video's, not the second's


def test_nan_weights_write_no_invalid_json(tmp_path, video, capsys):
    poisoned = tiny_model(tmp_path / "poisoned", poison=True)
    exit_code, message = vistr(capsys, "segment", str(video), "--model", str(poisoned), "--output", str(tmp_path / "o.json"))
    # refused when loaded, before any video is read (`test_json_with_non_finite_numbers_is_refused`: the writer's guard)
    assert_one_line_error(message, "1 tensors hold NaN or infinite values (first: class_labels_classifier.bias)")
    assert exit_code == 1 and not (tmp_path / "o.json").exists()


def test_sigterm_removes_the_staged_files(tmp_path):
    script = ("import sys, time\nfrom vistr.tools.outputs import Outputs\n"
              "with Outputs() as outputs:\n"
              "    outputs.file(sys.argv[1]).write_text('half')\n    print('staged', flush=True)\n    time.sleep(60)\n")  # fmt: skip
    process = subprocess.Popen([sys.executable, "-c", script, str(tmp_path / "out.json")], stdout=subprocess.PIPE,
                               text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})  # fmt: skip
    assert process.stdout.readline().strip() == "staged"
    assert len(list(tmp_path.iterdir())) == 1  # the hidden temporary file
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=30) == 128 + signal.SIGTERM
    assert list(tmp_path.iterdir()) == []


def test_outputs_are_committed_together_or_not_at_all(tmp_path):
    (tmp_path / "a.json").write_text("old a")
    with pytest.raises(RuntimeError), Outputs() as outputs:
        outputs.file(tmp_path / "a.json").write_text("new a")
        outputs.file(tmp_path / "b.json").write_text("new b")
        raise RuntimeError("the second writer failed")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["a.json"] and (tmp_path / "a.json").read_text() == "old a"
    with Outputs() as outputs:
        outputs.file(tmp_path / "new" / "a.json").write_text("new a")
    assert (tmp_path / "new" / "a.json").read_text() == "new a"
    assert oct((tmp_path / "new" / "a.json").stat().st_mode & 0o777) != oct(0o600)  # an ordinary file, not private


def test_a_legal_name_near_the_limit_gets_a_temporary_file(tmp_path):
    target = tmp_path / ("r" * 250 + ".json")
    with atomic_path(target) as temporary:
        temporary.write_text("[]")
    assert target.read_text() == "[]"


def test_a_folder_output_never_replaces_a_folder_holding_an_input_or_user_files(tmp_path, monkeypatch):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "mine.txt").write_text("user file")
    monkeypatch.chdir(tmp_path / "data")
    with pytest.raises(UsageError, match="is the current folder or above it"):
        Outputs().folder(".", replace_unless=foreign_model_folder)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UsageError, match="holds no config.json with model_type 'vistr'"):
        Outputs().folder(tmp_path / "data", replace_unless=foreign_model_folder)
    assert (tmp_path / "data" / "mine.txt").read_text() == "user file"


def test_json_with_non_finite_numbers_is_refused():
    with pytest.raises(NonFiniteError, match=r"results: \[0\]\['score'\] is nan, which JSON cannot hold; retrain"):
        dumps_json([{"score": float("nan")}], "results", "retrain")
    assert json.loads(dumps_json([{"score": 0.5}], "results", "retrain")) == [{"score": 0.5}]


def test_gif_keeps_every_frame(tmp_path):
    frames = [Image.new("RGB", (8, 6), (40, 80, 120))] * 14  # a still scene: Pillow would merge them into one frame
    assert write_video(frames, tmp_path / "still.gif", fps=25) == 14
    with Image.open(tmp_path / "still.gif") as image:
        assert image.n_frames == 14


# ------------------------------------------------------------------------------------------------- converter, trainer


def test_convert_refuses_nan_weights(tmp_path, capsys):
    require_parity_dir()
    checkpoint = torch.load(TINY_CHECKPOINT, map_location="cpu", weights_only=False)
    checkpoint["model"]["vistr.class_embed.bias"][0] = float("nan")
    damaged = tmp_path / "nan.pth"
    torch.save(checkpoint, damaged)
    exit_code, message = vistr(capsys, "convert", "--checkpoint", str(damaged), "--output", str(tmp_path / "out"))
    assert_one_line_error(message, "1 tensors hold NaN or infinite values (first: vistr.class_embed.bias)")
    assert exit_code == 1 and sorted(path.name for path in tmp_path.iterdir()) == ["nan.pth"]


def test_convert_never_deletes_the_folder_of_its_checkpoint(tmp_path, capsys, monkeypatch):
    folder = tmp_path / "downloads"
    folder.mkdir()
    checkpoint = folder / "vistr.pth"
    save_file({"x": torch.zeros(1)}, folder / "other.safetensors")
    checkpoint.write_bytes((require_parity_dir() / TINY_CHECKPOINT.name).read_bytes())  # one that converts
    monkeypatch.chdir(folder)
    for output in (".", str(folder)):
        exit_code, message = vistr(capsys, "convert", "--checkpoint", str(checkpoint), "--output", output, "--overwrite")
        assert_one_line_error(message, "contains the input")
        assert exit_code == 2
    assert sorted(path.name for path in folder.iterdir()) == ["other.safetensors", "vistr.pth"]


def test_a_non_checkpoint_pickle_never_suggests_weights_only_false(tmp_path, capsys):
    payload = tmp_path / "payload.pth"
    torch.save({"model": {}, "run": Fraction(1, 3)}, payload)
    exit_code, message = vistr(capsys, "convert", "--checkpoint", str(payload), "--output", str(tmp_path / "out"))
    assert_one_line_error(message, "holds Python objects other than tensors (fractions.Fraction)")
    assert "weights_only" not in message and exit_code == 1


def test_training_refuses_a_model_folder_over_its_data(tmp_path):
    from vistr import train_accelerate as trainer

    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "annotations.json").write_text("{}")
    arguments = trainer.build_parser().parse_args(["--data-root", str(tmp_path / "model"), "--output-dir", str(tmp_path)])
    with pytest.raises(UsageError, match="is the input"):
        trainer.check_outputs(arguments)


# ------------------------------------------------------------------------------------------------- whose folder


def our_model_folder(folder: Path, model_folder: Path) -> Path:
    """A model folder as this project writes it (config, card, weights), without copying every file."""
    folder.mkdir(parents=True)
    for name in ("config.json", "README.md", "video_preprocessor_config.json", "modeling_vistr.py"):
        shutil.copy(model_folder / name, folder / name)
    save_file({"x": torch.zeros(1)}, folder / "model.safetensors")
    return folder


@pytest.mark.parametrize("change, piece", [
    (lambda folder: (folder / "notes.txt").write_text("mine"), "holds notes.txt, which this project does not write"),
    (lambda folder: (folder / "README.md").write_text("# my notes\n"), "holds no VisTR model card (README.md)"),
    (lambda folder: (folder / "config.json").write_text('{"model_type": "bert"}'), "model_type 'bert', not 'vistr'"),
    (lambda folder: (folder / "config.json").write_text("[1]"), "holds no config.json with model_type 'vistr'"),
    (lambda folder: (folder / "data").symlink_to(folder.parent), "holds data, which is a link"),
    (lambda folder: os.mkfifo(folder / "pipe"), "holds pipe, which is a named pipe"),
    (lambda folder: (folder / ".git").mkdir(), "holds .git, which is a folder"),
], ids=["user-file", "other-card", "other-model", "bad-config", "link", "fifo", "subfolder"])  # fmt: skip
def test_overwrite_replaces_only_a_model_folder_this_project_wrote(change, piece, model_folder, tmp_path):
    output = our_model_folder(tmp_path / "out", model_folder)
    change(output)
    before = sorted(path.name for path in output.iterdir())
    with pytest.raises(UsageError, match=re.escape(piece)):
        convert_checkpoint.write_folder_atomically(output, overwrite=True, fill=lambda folder: None)
    assert sorted(path.name for path in output.iterdir()) == before and not leftovers(tmp_path)


def test_overwrite_replaces_our_own_model_folder(model_folder, tmp_path):
    output = our_model_folder(tmp_path / "out", model_folder)
    (output / "loss_curve.png").write_bytes(b"png")  # the trainer's
    with pytest.raises(UsageError, match="already exists and is not empty; pass --overwrite"):
        convert_checkpoint.write_folder_atomically(output, overwrite=False, fill=lambda folder: None)

    def fill(folder: Path) -> None:
        (folder / "new").write_text("x")

    convert_checkpoint.write_folder_atomically(output, overwrite=True, fill=fill)
    assert [path.name for path in output.iterdir()] == ["new"] and not leftovers(tmp_path)


def test_training_never_replaces_another_models_folder(model_folder, tmp_path):
    from vistr import train_accelerate as trainer

    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "annotations.json").write_text("{}")
    other = tmp_path / "run" / "model"
    other.mkdir(parents=True)
    (other / "config.json").write_text(json.dumps({"model_type": "bert"}))
    save_file({"x": torch.zeros(1)}, other / "model.safetensors")
    arguments = trainer.build_parser().parse_args(["--data", str(tmp_path / "data"), "--output-dir", str(other.parent)])
    with pytest.raises(UsageError, match="--output-dir model folder .* model_type 'bert', not 'vistr'"):
        trainer.check_outputs(arguments)
    shutil.rmtree(other)
    our_model_folder(other, model_folder)
    trainer.check_outputs(arguments)  # the model folder of an earlier run may be replaced


def test_a_file_the_model_folder_links_to_is_an_input(model_folder, video, tmp_path, capsys):
    linked = tmp_path / "snapshot"  # as the Hub cache keeps a model: links to the files
    linked.mkdir()
    for path in model_folder.iterdir():
        (linked / path.name).symlink_to(path)
    weights = model_folder / "model.safetensors"
    before = weights.stat().st_mtime_ns
    exit_code, message = vistr(capsys, "segment", str(video), "--model", str(linked), "--output", str(weights))
    assert_one_line_error(message, f"is the input {weights}")
    assert exit_code == 2 and weights.stat().st_mtime_ns == before


@pytest.mark.skipif(os.geteuid() != 0, reason="making a device node needs root")
def test_a_device_is_never_written_over(model_folder, video, tmp_path, capsys):
    device = tmp_path / "null"
    os.mknod(device, stat.S_IFCHR | 0o666, os.makedev(1, 3))  # a copy of /dev/null
    (tmp_path / "link.json").symlink_to(device)
    commands = [("segment", str(video), "--model", str(model_folder), "--output", str(device)),
                ("segment", str(video), "--model", str(model_folder), "--output", str(tmp_path / "link.json")),
                ("convert", "--checkpoint", str(video), "--output", str(device), "--overwrite")]  # fmt: skip
    for command, piece in zip(commands, ("not a regular file", "not a regular file", "not a folder")):
        exit_code, message = vistr(capsys, *command)
        assert_one_line_error(message, f"is a character device, {piece}")
        assert exit_code == 2 and stat.S_ISCHR(device.lstat().st_mode)
    assert not leftovers(tmp_path)


# ------------------------------------------------------------------------------------------------- parts folders


def our_parts_folder(output: Path) -> Path:
    """The parts folder of an interrupted split job: its settings, finished videos, a speed report and the
    temporary file of a process killed while writing."""
    parts = youtube_vis_inference.PartsFolder(output, {"annotations": "/data/a.json", "stride": None})
    parts.prepare()
    parts.save(1, [])
    parts.save(-2, [])
    parts.save_speed(0, youtube_vis_inference.SpeedReport())
    (parts.folder / ".video-3.k2j9x0aq.vistr-tmp.json").write_text("[")
    return parts.folder


@pytest.mark.parametrize("change, piece", [
    (lambda folder: (folder / "notes.txt").write_text("mine"), "holds notes.txt, which this project does not write"),
    (lambda folder: (folder / "run.json").write_text('{"mine": 1}'), "holds no run.json of a segment job"),
    (lambda folder: (folder / "run.json").unlink(), "holds no run.json of a segment job"),
    (lambda folder: (folder / "data").symlink_to(folder.parent), "holds data, which is a link"),
    (lambda folder: os.mkfifo(folder / "video-4.json"), "holds video-4.json, which is a named pipe"),
    (lambda folder: (folder / "photos").mkdir(), "holds photos, which is a folder"),
], ids=["user-file", "other-run-file", "no-run-file", "link", "fifo", "subfolder"])  # fmt: skip
def test_a_parts_folder_is_resumed_only_if_the_split_job_wrote_it(change, piece, tmp_path):
    (tmp_path / "a.json").write_text("{}")
    output = tmp_path / "results.json"
    folder = our_parts_folder(output)
    youtube_vis_inference.check_split_outputs(tmp_path / "a.json", tmp_path / "frames", output, None)  # ours: resumed
    change(folder)
    before = sorted(path.name for path in folder.iterdir())
    with pytest.raises(UsageError, match=re.escape(f"(its .parts folder) {folder} {piece}")):
        youtube_vis_inference.check_split_outputs(tmp_path / "a.json", tmp_path / "frames", output, None)
    assert sorted(path.name for path in folder.iterdir()) == before


def test_the_split_job_deletes_only_the_files_it_wrote(tmp_path):
    output = tmp_path / "results.json"
    folder = our_parts_folder(output)
    (folder / "notes.txt").write_text("put there during the run")
    parts = youtube_vis_inference.PartsFolder(output, {})
    parts.remove()
    assert os.listdir(folder) == ["notes.txt"]
    (folder / "notes.txt").unlink()
    our_parts_folder(output)
    parts.remove()
    assert not folder.exists()


# ------------------------------------------------------------------------------------------------- full disks


def fail_saving_weights(monkeypatch, message: str) -> None:
    """safetensors' writer fails as it does on a full disk (its Rust error names no file), after writing part."""

    def save(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"part of the weights")
        raise SafetensorError(f"Error while serializing: I/O error: {message}")

    monkeypatch.setattr("transformers.modeling_utils.safe_save_file", save)


@pytest.mark.parametrize("entry, message, piece", [
    (vistr_cli.main, "No space left on device (os error 28)", "the disk is full; free space on the disk of"),
    (convert_checkpoint.main, "No space left on device (os error 28)", "the disk is full; free space on the disk of"),
    (vistr_cli.main, "Permission denied (os error 13)", "permission denied; make"),
], ids=["vistr-convert-full", "convert-script-full", "vistr-convert-permission"])  # fmt: skip
def test_convert_failing_to_write_is_one_line_and_leaves_nothing(entry, message, piece, model_folder, tmp_path, capsys,
                                                                  monkeypatch):
    checkpoint = require_parity_dir() / TINY_CHECKPOINT.name
    output = our_model_folder(tmp_path / "out", model_folder)
    fail_saving_weights(monkeypatch, message)
    before = {path.name: path.read_bytes() for path in output.iterdir()}
    arguments = ["--checkpoint", str(checkpoint), "--output", str(output), "--overwrite"]
    exit_code, message = failed_command(capsys, entry, *(["convert"] if entry is vistr_cli.main else []), *arguments)
    assert_one_line_error(message, f"cannot write --output {output}: {piece}")
    assert exit_code == 1
    assert {path.name: path.read_bytes() for path in output.iterdir()} == before and not leftovers(tmp_path)


def test_a_full_disk_while_copying_the_code_names_the_output_not_the_source(tmp_path, capsys, monkeypatch):
    checkpoint = require_parity_dir() / TINY_CHECKPOINT.name

    def copy(source, target, *args, **kwargs):  # shutil's error names both ends; the source is not the problem
        raise OSError(errno.ENOSPC, "No space left on device", str(source), None, str(target))

    monkeypatch.setattr(shutil, "copy", copy)
    monkeypatch.setattr(shutil, "copyfile", copy)
    exit_code, message = vistr(capsys, "convert", "--checkpoint", str(checkpoint), "--output", str(tmp_path / "out"))
    assert_one_line_error(message, f"cannot write --output {tmp_path / 'out'}: the disk is full")
    assert exit_code == 1 and sorted(tmp_path.iterdir()) == []


def test_segment_on_a_full_disk_keeps_the_old_results(model_folder, video, tmp_path, capsys, monkeypatch):
    results = tmp_path / "out.json"
    results.write_text("old results")
    write_text = Path.write_text

    def full(path, *args, **kwargs):  # Python's file writes name no file when the disk fills up
        if "vistr-tmp" in path.name:
            raise OSError(errno.ENOSPC, "No space left on device")
        return write_text(path, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", full)
    exit_code, message = vistr(capsys, "segment", str(video), "--model", str(model_folder), "--output", str(results))
    assert_one_line_error(message, f"cannot write --output {results}: the disk is full; free space on the disk of "
                                   f"{tmp_path}, or choose a path on another disk")
    assert exit_code == 1 and results.read_text() == "old results" and not leftovers(tmp_path)


# ------------------------------------------------------------------------------------------------- odd file names


def test_names_that_are_not_utf8_work_like_any_other(model_folder, video, tmp_path, capsys):
    results, overlay = tmp_path / os.fsdecode(b"r\xff.json"), tmp_path / os.fsdecode(b"\xfeov.gif")
    vistr_cli.main(["segment", str(video), "--model", str(model_folder), "--output", str(results),
                    "--overlay", str(overlay)])  # fmt: skip
    assert json.loads(results.read_bytes()) and overlay.stat().st_size > 0
    assert sorted(os.listdir(os.fsencode(tmp_path))) == [b"precious.mp4", b"r\xff.json", b"\xfeov.gif"]
    assert "r\\xff.json" in capsys.readouterr().out  # shown escaped: printing the raw name would fail


def test_converting_into_a_name_that_is_not_utf8_and_replacing_it(tmp_path, capsys):
    checkpoint = require_parity_dir() / TINY_CHECKPOINT.name
    output = tmp_path / os.fsdecode(b"vistr-\xff")
    for extra in ([], ["--overwrite"]):  # the second run recognises the folder as one this project wrote
        vistr_cli.main(["convert", "--checkpoint", str(checkpoint), "--output", str(output), *extra])
    assert (output / "model.safetensors").is_file() and os.listdir(os.fsencode(tmp_path)) == [b"vistr-\xff"]
    assert "vistr-\\xff" in capsys.readouterr().out


def test_a_model_saves_into_a_folder_whose_name_is_not_utf8(tmp_path):
    config = VisTRConfig(backbone="resnet18", num_frames=2, encoder_layers=1, decoder_layers=1, ffn_dim=32,
                         num_queries_per_frame=1, id2label={0: "N/A", 1: "shape"})  # fmt: skip
    model = VisTRForVideoInstanceSegmentation(config)
    model.config._name_or_path = os.fsdecode(b"/models/source-\xfe")  # the card names where it came from
    folder = tmp_path / os.fsdecode(b"vistr-\xff")
    model.save_pretrained(folder)
    card = (folder / "README.md").read_text(encoding="utf-8")
    assert "# vistr-\ufffd" in card and "`/models/source-\ufffd`" in card
    assert foreign_model_folder(folder) is None  # a folder of ours: --overwrite may replace it


def test_a_folder_with_a_long_multibyte_name_is_replaced(tmp_path):
    target = tmp_path / ("漢" * 84)  # 252 bytes: legal, but not with a prefix and suffix added to its 84 characters
    target.mkdir()
    (target / "old").write_text("old")
    new = tmp_path / "new"
    new.mkdir()
    (new / "fresh").write_text("new")
    replace_folder(new, target)
    assert [path.name for path in target.iterdir()] == ["fresh"] and sorted(tmp_path.iterdir()) == [target]
