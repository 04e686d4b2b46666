"""Model cards written by save_pretrained, the converter and the trainer; --push-to-hub against a local stand-in."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import huggingface_hub
import pytest
import yaml
from vistr import convert_checkpoint
from vistr.configuration_vistr import VisTRConfig
from vistr.modeling_vistr import VisTRForVideoInstanceSegmentation


class LocalHub:
    """Stands in for `huggingface_hub.HfApi`: repos are folders under `root`, uploads are copies."""

    root: Path

    def create_repo(self, repo_id, repo_type="model", private=False, exist_ok=False):
        path = self.root / repo_id
        if path.exists() and not exist_ok:
            raise FileExistsError(repo_id)
        path.mkdir(parents=True, exist_ok=True)

    def upload_folder(self, folder_path, repo_id, repo_type="model", commit_message=""):
        shutil.copytree(folder_path, self.root / repo_id, dirs_exist_ok=True)
        return f"local://{repo_id}/commit"


@pytest.fixture
def local_hub(tmp_path, monkeypatch):
    LocalHub.root = tmp_path / "hub"
    monkeypatch.setattr(huggingface_hub, "HfApi", LocalHub)
    return LocalHub.root


def card_metadata(folder: Path) -> dict:
    text = (folder / "README.md").read_text()
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n")[1])


def test_save_pretrained_writes_a_card_and_keeps_an_existing_one(tmp_path):
    model = VisTRForVideoInstanceSegmentation(
        VisTRConfig(backbone="test_resnet", num_frames=2, encoder_layers=1, decoder_layers=1, ffn_dim=64)
    )
    model.save_pretrained(tmp_path / "fresh")
    metadata = card_metadata(tmp_path / "fresh")
    assert metadata["license"] == "apache-2.0" and {"video-instance-segmentation", "vistr"} <= set(metadata["tags"])
    text = (tmp_path / "fresh" / "README.md").read_text()
    assert "trust_remote_code=True" in text and "Intended use and limits" in text
    (tmp_path / "kept").mkdir()
    (tmp_path / "kept" / "README.md").write_text("my own card")
    model.save_pretrained(tmp_path / "kept")
    assert (tmp_path / "kept" / "README.md").read_text() == "my own card"


def test_converter_card_names_the_source_and_its_hash_and_pushes(parity_dir, tmp_path, local_hub, capsys):
    checkpoint = parity_dir / "vistr_tiny_r50_original.pth"
    convert_checkpoint.main(["--checkpoint", str(checkpoint), "--output", str(tmp_path / "converted"),
                             "--push-to-hub", "someone/vistr-tiny"])  # fmt: skip
    digest = hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    text = (tmp_path / "converted" / "README.md").read_text()
    assert digest in text and checkpoint.name in text
    assert "youtube_vis" in card_metadata(tmp_path / "converted")["datasets"]
    pushed = local_hub / "someone" / "vistr-tiny"
    assert (pushed / "README.md").read_text() == text
    assert {"model.safetensors", "config.json", "modeling_vistr.py"} <= {p.name for p in pushed.iterdir()}
    assert "local://someone/vistr-tiny/commit" in capsys.readouterr().out
