"""tools/model_source.py: what a training run starts from (`--init-from`) and how much of the model it fills.
The trainer's use of it (architecture and processor taken from the source, options overriding it, partial
initialisation refused): test_train_accelerate.py; bad sources: e2e/test_bad_inputs_readers.py."""

from __future__ import annotations

import torch
from vistr.configuration_vistr import VisTRConfig
from vistr.convert_checkpoint import load_original_checkpoint
from vistr.modeling_vistr import VisTRForVideoInstanceSegmentation
from vistr.tools.model_source import load_fitting_weights, read_model_source


def test_initialising_from_an_original_checkpoint_drops_only_what_does_not_fit(parity_dir):
    state, _ = load_original_checkpoint(parity_dir / "vistr_tiny_r50_original.pth")
    config = VisTRConfig(num_frames=3, encoder_layers=2, decoder_layers=2, ffn_dim=512, num_labels=5)
    model = VisTRForVideoInstanceSegmentation(config)
    source = read_model_source(str(parity_dir / "vistr_tiny_r50_original.pth"))
    report = load_fitting_weights(model, source.weights)
    assert sorted(report.fresh) == [
        "class_labels_classifier.bias", "class_labels_classifier.weight", "vistr.query_position_embeddings.weight"]
    loaded = model.state_dict()
    assert torch.equal(loaded["vistr.input_projection.weight"], state["vistr.input_proj.weight"].float())
    assert torch.equal(loaded["mask_head.dcn.weight"], state["mask_head.dcn.weight"].float())
