"""What a new `vistr` user meets first: --version, defaults in --help, one-line errors for a bad --model, a license."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib
from vistr.tools import cli as vistr_cli

ROOT = Path(__file__).resolve().parents[1]


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
