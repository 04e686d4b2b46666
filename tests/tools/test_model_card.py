"""Model cards written by save_pretrained, the converter and the trainer; --push-to-hub and the model's
`push_to_hub` against a local stand-in (conftest's `local_hub`)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import yaml
from vistr import convert_checkpoint
from vistr.configuration_vistr import VisTRConfig
from vistr.tools.model_card import build_model_card
from vistr.modeling_vistr import VisTRForVideoInstanceSegmentation


def card_metadata(folder: Path) -> dict:
    text = (folder / "README.md").read_text()
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n")[1])


def small_model(**config) -> VisTRForVideoInstanceSegmentation:
    return VisTRForVideoInstanceSegmentation(
        VisTRConfig(backbone="test_resnet", num_frames=2, encoder_layers=1, decoder_layers=1, ffn_dim=64, **config)
    )


def test_save_pretrained_writes_a_card_and_keeps_an_existing_one(tmp_path):
    model = small_model()
    model.save_pretrained(tmp_path / "fresh")
    metadata = card_metadata(tmp_path / "fresh")
    assert metadata["license"] == "apache-2.0" and {"video-instance-segmentation", "vistr"} <= set(metadata["tags"])
    assert "datasets" not in metadata and "base_model" not in metadata  # none to name: nothing made up
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
    config = json.loads((tmp_path / "converted" / "config.json").read_text())
    assert config["label2id"] == {name: int(index) for index, name in config["id2label"].items()}
    assert (config["label2id"]["person"], config["label2id"]["tennis_racket"]) == (1, 40)  # YouTube-VIS category ids
    assert "youtube_vis" in card_metadata(tmp_path / "converted")["datasets"]
    pushed = local_hub / "someone" / "vistr-tiny"
    assert (pushed / "README.md").read_text() == text
    assert {"model.safetensors", "config.json", "modeling_vistr.py"} <= {p.name for p in pushed.iterdir()}
    assert "local://someone/vistr-tiny/commit" in capsys.readouterr().out


def test_model_push_to_hub_uploads_our_card_not_transformers_template(tmp_path, local_hub):
    model = small_model()
    model.save_pretrained(tmp_path / "vistr-pushed-copy")
    model.push_to_hub("someone/vistr-pushed")
    pushed = (local_hub / "someone" / "vistr-pushed" / "README.md").read_text()
    assert "Model Card for Model ID" not in pushed  # transformers' template
    # the card save_pretrained writes, for the repo's name
    assert pushed.replace("someone/vistr-pushed", "vistr-pushed-copy") == (
        tmp_path / "vistr-pushed-copy" / "README.md"
    ).read_text()
    assert 'model="someone/vistr-pushed"' in pushed and card_metadata(local_hub / "someone" / "vistr-pushed")["license"]

    model.push_to_hub("someone/tagged", tags=["my-tag"])
    assert {"my-tag", "vistr"} <= set(card_metadata(local_hub / "someone" / "tagged")["tags"])
    model.save_pretrained(tmp_path / "saved", push_to_hub=True, repo_id="someone/saved")
    uploaded = local_hub / "someone" / "saved"
    assert (uploaded / "README.md").read_text() == (tmp_path / "saved" / "README.md").read_text()
    assert card_metadata(uploaded)["license"] == "apache-2.0"
    assert (uploaded / "video_preprocessor_config.json").is_file()  # completed before the upload, not after


def test_model_push_to_hub_keeps_the_card_the_repo_has(local_hub):
    (local_hub / "someone" / "carded").mkdir(parents=True)
    (local_hub / "someone" / "carded" / "README.md").write_text("---\nlicense: mit\n---\nmy own card\n")
    small_model().push_to_hub("someone/carded")
    assert card_metadata(local_hub / "someone" / "carded") == {"license": "mit"}
    assert "my own card" in (local_hub / "someone" / "carded" / "README.md").read_text()


def test_saved_config_carries_label2id(tmp_path):
    small_model(id2label={0: "N/A", 1: "disc", 2: "ring"}).save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["label2id"] == {"N/A": 0, "disc": 1, "ring": 2}


def test_card_metadata_names_task_base_model_datasets_and_only_existing_metrics():
    card = build_model_card(
        small_model().config, name="someone/tuned", provenance="Fine-tuned.", datasets="someone/my-videos",
        base_model="someone/vistr-r50", metrics={"AP": 0.5, "APs": -1.0, "AR1": float("nan"), "AR10": 0.25},
    )  # fmt: skip
    metadata = yaml.safe_load(str(card).split("---\n")[1])
    assert metadata["pipeline_tag"] == "image-segmentation"  # the Hub's task list has no video segmentation
    assert (metadata["library_name"], metadata["base_model"]) == ("transformers", "someone/vistr-r50")
    assert metadata["datasets"] == ["someone/my-videos"]
    metrics = metadata["model-index"][0]["results"][0]["metrics"]
    assert [(metric["type"], metric["value"]) for metric in metrics] == [("AP", 0.5), ("AR10", 0.25)]
    assert "| AP | 0.5000 |" in card.text and "| AR10 | 0.2500 |" in card.text
    assert "APs" not in card.text and "| AR1 |" not in card.text and "-1" not in card.text
    assert 'pip install "transformers>=5.0,<6" torch timm av scipy pycocotools' in card.text
    assert '`pip install "transformers>=5.0,<6" torch timm`' in card.text
