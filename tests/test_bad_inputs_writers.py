"""Bad options and unusable output paths: one `error:` line, the right exit code, and nothing a user owns touched.

To add a case, add a row to CASES: the command line (`{video}`, `{model}`, `{tmp}` and `{checkpoint}` are
filled in), a piece of the one-line message, and the exit code (2: a bad argument, found before any work;
1: a failure). `test_bad_command_line` runs it and checks, besides the message, that the input video is
unchanged and that no temporary file is left anywhere under the test folder. Cases that need more than a
command line (a damaged file, a signal, a second run) are the focused tests below the table.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from conftest import TINY_CHECKPOINT, require_parity_dir
from PIL import Image
from safetensors.torch import save_file
from vistr.configuration_vistr import VisTRConfig
from vistr.model_card import save_model_folder
from vistr.modeling_vistr import VisTRForVideoInstanceSegmentation
from vistr.tools import cli as vistr_cli
from vistr.tools.outputs import NonFiniteError, Outputs, UsageError, atomic_path, dumps_json
from vistr.tools.video_writer import write_video

ROOT = Path(__file__).resolve().parents[1]
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
    ("segment {video} --model {tmp} --output {tmp}/o.json", "is a folder without config.json", 1),
    ("segment {video} --model {video} --output {tmp}/o.json", "is a file, not a folder", 1),
    ("inspect {model} --height 0", "argument --height: must be at least 1", 2),
    ("make-synthetic {tmp}/syn --videos 0", "argument --videos: must be at least 1, not 0", 2),
    ("make-synthetic {tmp} --videos 1", "already exists and is not empty", 2),
    ("convert --checkpoint {checkpoint} --output {tmp}/ckpt --overwrite", "contains the input", 2),
    ("convert --checkpoint {checkpoint} --output {tmp}/ckpt/checkpoint.pth", "is the input", 2),
    ("convert --checkpoint {checkpoint} --output {tmp}/x --num-frames 0", "argument --num-frames: must be at least 1", 2),
    ("convert --checkpoint {video} --output {tmp}/x", "not a readable PyTorch checkpoint", 1),
]  # fmt: skip


def vistr(capsys, *args: str) -> tuple[int, str]:
    """(exit code, the error message) of `vistr ARGS`, run in this process; progress bars before it are dropped."""
    return failed_command(capsys, vistr_cli.main, *args)


def failed_command(capsys, main, *args: str) -> tuple[int, str]:
    """(exit code, the error message) of a command's `main(ARGS)` that must fail without a traceback."""
    with pytest.raises(SystemExit) as exit_info:
        main(list(args))
    code, printed = exit_info.value.code, capsys.readouterr().err
    assert "Traceback" not in printed, printed
    return (1, code) if isinstance(code, str) else (code, printed.strip().splitlines()[-1])


def assert_one_line_error(message: str, piece: str) -> None:
    assert message.startswith("error: ") and "\n" not in message and "Traceback" not in message, message
    assert piece in message, message


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
    before = {path: path.read_bytes() for path in (video, checkpoint, tmp_path / "a.json")}
    if "--device cuda" in command and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    arguments = command.format(video=video, model=model_folder, tmp=tmp_path, checkpoint=checkpoint).split()
    exit_code, message = vistr(capsys, *arguments)
    assert_one_line_error(message, piece)
    assert exit_code == code
    assert all(path.read_bytes() == content for path, content in before.items())
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
    assert_one_line_error(message, "which JSON cannot hold; the model's weights probably hold NaN")
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
        Outputs().folder(".", replace_if="config.json")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UsageError, match="holds no config.json"):
        Outputs().folder(tmp_path / "data", replace_if="config.json")
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
