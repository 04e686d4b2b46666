"""transformers' plumbing: attention implementations, recorded outputs, `return_dict`, keyword checks, the
registered loss and the optional scipy. Numbers against the original: tests/test_modeling_parity.py."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from test_from_scratch import small_config, training_batch
from torch import nn
from transformers import PreTrainedModel
from transformers.activations import ACT2FN
from vistr import modeling_vistr
from vistr.loss_vistr import ForVideoInstanceSegmentationLoss
from vistr.modeling_vistr import PROCESSOR_LAYOUT_KEYS, VisTRForVideoInstanceSegmentation, VisTRModel


def small_model(**overrides) -> VisTRForVideoInstanceSegmentation:
    torch.manual_seed(0)
    return VisTRForVideoInstanceSegmentation(small_config(**overrides)).double().eval()


def clip(model: VisTRForVideoInstanceSegmentation) -> torch.Tensor:
    return torch.randn(1, model.config.num_frames, 3, 64, 96, generator=torch.Generator().manual_seed(1)).double()


def test_sdpa_is_the_default_and_eager_gives_the_same_outputs():
    model = small_model()
    assert model.config._attn_implementation == "sdpa"
    pixel_values = clip(model)
    with torch.no_grad():
        sdpa = model(pixel_values)
        model.set_attn_implementation("eager")
        eager = model(pixel_values)
    for name in ("logits", "pred_boxes", "pred_masks"):
        assert (getattr(sdpa, name) - getattr(eager, name)).abs().max() <= 1e-12, name


def test_attn_implementation_is_chosen_at_from_pretrained(tmp_path):
    small_model().save_pretrained(tmp_path)
    model = VisTRForVideoInstanceSegmentation.from_pretrained(tmp_path, attn_implementation="eager")
    attentions = [m for m in model.modules() if isinstance(m, modeling_vistr.VisTRAttention)]
    assert model.config._attn_implementation == "eager"
    assert attentions and all(m.config._attn_implementation == "eager" for m in attentions)


def test_output_attentions_returns_every_layer_with_the_documented_shapes():
    model = small_model(decoder_layers=2)
    model.set_attn_implementation("eager")
    config = model.config
    with torch.no_grad():
        outputs = model(clip(model), output_attentions=True)
    tokens = config.num_frames * 2 * 3  # a 64 x 96 frame is 2 x 3 at stride 32
    heads, queries = config.num_attention_heads, config.num_queries
    assert [a.shape for a in outputs.encoder_attentions] == [(1, heads, tokens, tokens)] * config.encoder_layers
    assert [a.shape for a in outputs.decoder_attentions] == [(1, heads, queries, queries)] * config.decoder_layers
    assert [a.shape for a in outputs.cross_attentions] == [(1, heads, queries, tokens)] * config.decoder_layers
    for attention in outputs.encoder_attentions + outputs.decoder_attentions + outputs.cross_attentions:
        assert torch.allclose(attention.sum(-1), torch.ones((), dtype=attention.dtype))


def test_no_attentions_or_hidden_states_unless_asked():
    model = small_model()
    with torch.no_grad():
        outputs = model(clip(model))
    names = ("encoder_attentions", "decoder_attentions", "cross_attentions")
    names += ("encoder_hidden_states", "decoder_hidden_states")
    assert all(getattr(outputs, name) is None for name in names)


def test_config_output_flags_are_the_defaults():
    model = small_model()
    model.set_attn_implementation("eager")
    model.config.output_attentions = model.config.output_hidden_states = True
    with torch.no_grad():
        outputs = model(clip(model))
    assert len(outputs.cross_attentions) == model.config.decoder_layers
    assert len(outputs.decoder_hidden_states) == model.config.decoder_layers + 1


def test_hidden_states_are_layer_inputs_then_the_final_output():
    model = small_model(pre_norm=True)  # the pre-norm encoder ends in a norm: its last entry is after it
    with torch.no_grad():
        outputs = model(clip(model), output_hidden_states=True)
    encoder, decoder = outputs.encoder_hidden_states, outputs.decoder_hidden_states
    assert len(encoder) == model.config.encoder_layers + 1 and len(decoder) == model.config.decoder_layers + 1
    assert torch.equal(encoder[-1], outputs.encoder_last_hidden_state)
    assert torch.equal(decoder[-1], outputs.last_hidden_state)
    assert not decoder[0].any()  # the decoder starts from zero queries


@pytest.mark.parametrize("model_class", [VisTRModel, VisTRForVideoInstanceSegmentation])
def test_return_dict_false_gives_the_tuple_of_the_output(model_class):
    torch.manual_seed(0)
    model = model_class(small_config()).double().eval()
    pixel_values = clip(model)
    with torch.no_grad():
        as_dict = model(pixel_values)
        as_tuple = model(pixel_values, return_dict=False)
        model.config.return_dict = False
        from_config = model(pixel_values)
    for result in (as_tuple, from_config):
        assert isinstance(result, tuple) and len(result) == len(as_dict.to_tuple())
        assert all(torch.equal(a, b) for a, b in zip(result, as_dict.to_tuple()) if isinstance(a, torch.Tensor))


@pytest.mark.parametrize("model_class", [VisTRModel, VisTRForVideoInstanceSegmentation])
def test_unknown_keywords_raise_and_the_processor_layout_keys_are_ignored(model_class):
    torch.manual_seed(0)
    model = model_class(small_config()).double().eval()
    pixel_values = clip(model)
    layout = {key: torch.zeros(1, dtype=torch.long) for key in PROCESSOR_LAYOUT_KEYS}
    with torch.no_grad():
        assert torch.equal(model(pixel_values, **layout).last_hidden_state, model(pixel_values).last_hidden_state)
        with pytest.raises(TypeError, match="output_attention"):
            model(pixel_values, output_attention=True)  # misspelt: must not be ignored


def test_the_loss_goes_through_the_registered_loss_function():
    model = VisTRForVideoInstanceSegmentation(small_config()).train()
    assert model.loss_function is ForVideoInstanceSegmentationLoss
    calls = []

    def spy(*args):
        calls.append(args)
        return ForVideoInstanceSegmentationLoss(*args)

    model.loss_function = spy
    pixel_values, labels = training_batch(model.config)
    outputs = model(pixel_values, labels=labels)
    assert len(calls) == 1 and calls[0][-1] is model.config and outputs.loss.isfinite()


def test_training_step_keeps_the_matched_slots_fast_path():
    model = VisTRForVideoInstanceSegmentation(small_config()).train()
    pixel_values, labels = training_batch(model.config)
    slot_lists = []
    original = model._predict_masks
    model._predict_masks = lambda outputs, slots=None: slot_lists.append(slots) or original(outputs, slots)
    model(pixel_values, labels=labels).loss.backward()
    assert len(slot_lists) == 1 and slot_lists[0] is not None  # the matched slots, never all of them


def test_init_weights_runs_without_gradient_tracking(monkeypatch):
    grad_modes = []
    base = PreTrainedModel._init_weights
    record = lambda self, module: grad_modes.append(torch.is_grad_enabled()) or base(self, module)  # noqa: E731
    monkeypatch.setattr(PreTrainedModel, "_init_weights", record)
    model = VisTRForVideoInstanceSegmentation(small_config())
    grad_modes.clear()
    model._init_weights(nn.Linear(2, 2))  # called with gradients enabled: the decorator turns them off
    assert grad_modes == [False]


@pytest.mark.parametrize("activation", ["relu", "gelu"])
def test_feed_forward_activation_comes_from_act2fn(activation):
    model = VisTRForVideoInstanceSegmentation(small_config(activation_function=activation))
    assert type(model.vistr.encoder.layers[0].ffn.activation) is type(ACT2FN[activation])


def test_inference_needs_no_scipy_and_the_loss_says_so():
    script = textwrap.dedent(
        """
        import sys
        sys.modules["scipy"] = None  # as if scipy were not installed: any import of it raises ImportError
        sys.path[:0] = [".", "tests"]
        import torch
        from test_from_scratch import small_config, training_batch
        from vistr.modeling_vistr import VisTRForVideoInstanceSegmentation
        model = VisTRForVideoInstanceSegmentation(small_config()).eval()
        pixel_values, labels = training_batch(model.config)
        with torch.no_grad():
            model(pixel_values)
        try:
            model(pixel_values, labels=labels)
        except ImportError as error:
            print("loss needs scipy:", error)
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300, cwd=Path(__file__).parent.parent
    )
    assert result.returncode == 0, result.stderr
    assert "loss needs scipy" in result.stdout
