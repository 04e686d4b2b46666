from __future__ import annotations

import pytest
from transformers import AutoConfig
from vistr.configuration_vistr import VisTRConfig


def test_defaults_are_the_released_r50_model():
    config = VisTRConfig()
    assert (config.backbone, config.d_model, config.num_attention_heads) == ("resnet50", 384, 8)
    assert (config.encoder_layers, config.decoder_layers, config.ffn_dim) == (6, 6, 2048)
    assert (config.num_frames, config.num_queries_per_frame, config.num_queries) == (36, 10, 360)
    assert config.num_labels == 41 and config.id2label[0] == "N/A" and config.id2label[1] == "person"
    assert config.id2label[40] == "tennis_racket"
    assert (config.class_cost, config.bbox_cost, config.giou_cost) == (1, 5, 2)
    assert (config.bbox_loss_coefficient, config.giou_loss_coefficient, config.eos_coefficient) == (5, 2, 0.1)
    assert config.mask_head_channels == 24 and not config.pre_norm and config.auxiliary_loss
    assert (config.backbone_norm, config.backbone_frozen_stages) == ("frozen_batch_norm", 1)
    assert config.backbone_config.backbone == "resnet50"
    assert list(config.backbone_config.out_indices) == [1, 2, 3, 4]


def test_dilation_sets_output_stride_16():
    assert VisTRConfig(dilation=True).backbone_config.output_stride == 16
    assert VisTRConfig().backbone_config.output_stride is None


def test_round_trip_through_auto_config(tmp_path):
    config = VisTRConfig(num_frames=8, encoder_layers=2, pre_norm=True, num_labels=3)
    config.save_pretrained(tmp_path)
    loaded = AutoConfig.from_pretrained(tmp_path)
    assert type(loaded) is VisTRConfig
    assert (loaded.num_frames, loaded.encoder_layers, loaded.pre_norm, loaded.num_labels) == (8, 2, True, 3)
    assert loaded.auto_map["AutoModelForInstanceSegmentation"] == "modeling_vistr.VisTRForVideoInstanceSegmentation"
    assert (tmp_path / "configuration_vistr.py").is_file()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"d_model": 256}, "multiple of 48"),
        ({"d_model": 0}, "multiple of 48"),
        ({"num_attention_heads": 7}, "not divisible by num_attention_heads"),
        ({"backbone_norm": "layer_norm"}, "backbone_norm='layer_norm'"),
        ({"backbone_frozen_stages": 5}, "backbone_frozen_stages=5"),
        ({"backbone_frozen_stages": -2}, "backbone_frozen_stages=-2"),
        ({"instance_head_channels": 10}, "instance_head_groups"),
        ({"mask_head_width": 200}, "mask_head_width=200 must be a positive multiple of 16"),
        ({"mask_head_width": 0}, "mask_head_width=0"),
        ({"num_frames": 0}, "num_frames=0"),
        ({"backbone": "vit_base"}, "not a ResNet"),
        ({"activation_function": "swish"}, "'relu' or 'gelu'"),
    ],
)
def test_impossible_configs_fail_at_construction_saying_what_to_change(kwargs, message):
    with pytest.raises(ValueError, match=message):
        VisTRConfig(**kwargs)
