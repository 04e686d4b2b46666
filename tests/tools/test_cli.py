"""tools/cli.py, the `vistr` command: what a new user meets first (--version, defaults in --help, one-line
errors for a bad --model, a license), `vistr segment` writing results and overlays and refusing bad videos, and
its test-time flip options. The commands other modules implement are tested with them (`vistr evaluate`:
test_evaluation_youtube_vis.py, `vistr make-synthetic`: test_youtube_vis.py, `vistr segment --annotations`:
test_youtube_vis_inference.py); bad command lines: e2e/test_bad_inputs_*.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import tomllib
from PIL import Image
from vistr.tools import cli as vistr_cli
from vistr.tools.video_writer import write_video
from vistr.video_io import VideoReadError, iter_frames

ROOT = Path(__file__).resolve().parents[2]


def vistr(*args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vistr.tools.cli", *args], capture_output=True, text=True, cwd=cwd,
                          env={**os.environ, "PYTHONPATH": str(ROOT), **env}, timeout=300)  # fmt: skip


def printed(capsys, *args: str) -> str:
    """What `vistr ARGS` prints before it exits (--help, --version)."""
    with pytest.raises(SystemExit):
        vistr_cli.main(list(args))
    return " ".join(capsys.readouterr().out.split())


def test_version_is_the_package_version(capsys):
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert printed(capsys, "--version") == f"vistr {version}"


def test_help_and_version_import_neither_torch_nor_transformers():
    """So that they answer at once (benchmarks/bench_segment.py times them): each command's modules are imported
    only when it runs or shows its own help."""
    script = ("import sys\nfrom vistr.tools import cli\nfor argv in (['--version'], ['--help']):\n"
              "    try:\n        cli.main(argv)\n    except SystemExit:\n        pass\n"
              "print('heavy:', sorted(name for name in ('torch', 'transformers', 'datasets') if name in sys.modules))")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT / "tests",
                          timeout=120)  # fmt: skip
    assert done.stdout.strip().splitlines()[-1] == "heavy: []", done.stdout[-2000:] + done.stderr[-2000:]


def test_help_lists_every_command_and_each_command_has_its_own_help(capsys):
    text = printed(capsys, "--help")
    for name, (summary, _) in vistr_cli.COMMANDS.items():
        assert name in text and " ".join(summary.split()) in text, name
        assert printed(capsys, name, "--help").startswith(f"usage: vistr {name} [-h]"), name


def test_help_shows_the_defaults(capsys):
    text = printed(capsys, "segment", "--help")
    assert "(default: 0.5)" in text and "(default: fp32)" in text and "(default: the bundled model)" in text
    assert "(default: 128)" in printed(capsys, "inspect", "--help")


def test_a_model_that_is_neither_a_folder_nor_a_hub_id_is_one_line(tmp_path):
    for model, reason in ((str(tmp_path / "no-such-folder"), "no such folder"),
                          ("someone/not-there", "neither a model folder nor a reachable Hub model id")):  # fmt: skip
        done = vistr("segment", "video.mp4", "--model", model, "--output", "out.json", cwd=tmp_path, HF_HUB_OFFLINE="1")
        assert done.returncode != 0
        assert done.stderr.strip().splitlines() == [done.stderr.strip()] and reason in done.stderr, done.stderr[-2000:]
        assert done.stderr.startswith(f"error: --model {model}")


def test_the_license_file_is_the_apache_license_the_metadata_names():
    text = (ROOT / "LICENSE").read_text()
    assert text.split()[:4] == ["Apache", "License", "Version", "2.0,"]
    assert "TERMS AND CONDITIONS FOR USE, REPRODUCTION, AND DISTRIBUTION" in text
    assert tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["license"] == "Apache-2.0"


# ----------------------------------------------------------------------------------------------------------
# vistr segment
# ----------------------------------------------------------------------------------------------------------


def write_mp4(path, frames: np.ndarray) -> None:
    write_video((Image.fromarray(frame) for frame in frames), path, fps=5)


def run_cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "vistr.tools.cli", *map(str, args)], capture_output=True, text=True, cwd=cwd)


def test_cli_writes_results_and_overlays(fixture_model_folder, parity_inputs, tmp_path):
    video = parity_inputs["raw_video_uint8"].numpy()
    write_mp4(tmp_path / "clip.mp4", np.concatenate([video, video[::-1]]))  # 8 frames: two clips of the 4-frame model
    frames = tmp_path / "frames"
    frames.mkdir()
    for index, frame in enumerate(video[:3]):
        Image.fromarray(frame).save(frames / f"{index:05d}.jpg")
    done = run_cli("segment", tmp_path / "clip.mp4", frames, "--model", fixture_model_folder, "--output", tmp_path / "out" / "results.json",
                   "--overlay", tmp_path / "out" / "overlay.gif", "--threshold", "0", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert {r["video_id"] for r in results} == {1, 2}
    for result in results:
        length = 8 if result["video_id"] == 1 else 3
        assert len(result["segmentations"]) == length and 0 <= result["score"] <= 1
        assert all(s is None or s["size"] == [200, 250] and isinstance(s["counts"], str) for s in result["segmentations"])
    for name, length in (("overlay-clip.gif", 8), ("overlay-frames.gif", 3)):
        decoded = list(iter_frames(tmp_path / "out" / name))
        assert len(decoded) == length and decoded[0].size == (250, 200)

    mp4 = run_cli("segment", tmp_path / "clip.mp4", "--model", fixture_model_folder, "--output", tmp_path / "one.json",
                  "--overlay", tmp_path / "one.mp4", cwd=tmp_path)
    assert mp4.returncode == 0, mp4.stderr[-2000:]
    decoded = list(iter_frames(tmp_path / "one.mp4"))
    assert len(decoded) == 8 and decoded[0].size == (250, 200)


def test_cli_refuses_bad_videos_and_writes_nothing(fixture_model_folder, tmp_path):
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 8)
    empty = tmp_path / "empty.mp4"
    with av.open(str(empty), mode="w") as container:  # a valid container holding no frame
        stream = container.add_stream("mpeg4", rate=Fraction(5))
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        container.start_encoding()
    folder = tmp_path / "no-frames"
    folder.mkdir()
    for bad, message in ((corrupt, "cannot open video|decoding failed"), (empty, "no frames"), (folder, "no frames found")):
        output = tmp_path / f"{bad.stem}.json"
        done = run_cli("segment", bad, "--model", fixture_model_folder, "--output", output, "--overlay", tmp_path / "o.gif", cwd=tmp_path)
        assert done.returncode != 0
        assert "error:" in done.stderr and any(m in done.stderr for m in message.split("|")), done.stderr[-500:]
        assert not output.exists() and not (tmp_path / "o.gif").exists()
    with pytest.raises(VideoReadError):
        list(iter_frames(corrupt))


@pytest.mark.parametrize(("given", "problem"), [(["none", "horizontal"], "goes alone"), (["both", "both"], "at most once")])
def test_cli_flips_that_contradict_each_other_are_one_line(capsys, tmp_path, given, problem):
    with pytest.raises(SystemExit) as exit_info:
        vistr_cli.main(["segment", "video.mp4", "--output", str(tmp_path / "out.json"), "--test-time-flips", *given])
    error = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and error.splitlines() == [error] and problem in error
    assert not (tmp_path / "out.json").exists()
